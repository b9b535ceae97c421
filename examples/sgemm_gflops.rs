//! GFLOPS of the forward's products on the SmolLM2-135M projection shapes, on the kernel class
//! `TYR_KERNEL` picks (the best one when unset): `cargo run --release --example sgemm_gflops
//! [rows]`. Each shape runs until 0.5 s have passed; the median call is reported, and the
//! GFLOPS per CPU-second of the process (what the cores delivered while this ran, which other
//! load on a shared machine does not lower).
//!
//! `sgemm_gflops tile M N K REPS` instead times one small product on the calling thread, the
//! way attention runs its products (`matmul_prefix_into`, one task per head and tile), e.g.
//! `tile 64 64 512 3000` for a 64-query tile's `probabilities · V` over 512 keys: the kernel
//! and its operand handling without the thread pool.

use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use tyr::eval::bench::process_cpu_seconds;
use tyr::model::cpu_kernel::kernel;
use tyr::model::sgemm::PackedWeight;

/// Deterministic operands: the weight `[n, k]` and the activations `[m, k]`.
fn operands(m: usize, n: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let x: Vec<f32> = (0..m * k)
        .map(|i| ((i * 104_729) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    (w, x)
}

/// The `tile M N K REPS` mode.
fn tile(args: &[String]) {
    let dims: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let [m, n, k, reps] = dims[..] else {
        eprintln!("usage: sgemm_gflops tile M N K REPS (four positive integers)");
        std::process::exit(2);
    };
    if m == 0 || n == 0 || k == 0 || reps == 0 || m.saturating_mul(n).saturating_mul(k) > 1 << 34 {
        eprintln!("sgemm_gflops tile: M, N, K and REPS must be positive and M·N·K at most 2^34");
        std::process::exit(2);
    }
    let (w, x) = operands(m, n, k);
    let p = PackedWeight::from_out_in_rows(&w, n, k);
    let mut out = vec![MaybeUninit::new(0f32); m * n];
    let t = Instant::now();
    for _ in 0..reps {
        p.matmul_prefix_into(&x, (m, k), n, &mut out, n);
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "kernel {}, {m}×{n}×{k}: {:.1} GFLOPS on one thread",
        kernel().name(),
        2.0 * (m * n * k * reps) as f64 / s / 1e9
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("tile") {
        return tile(&args[1..]);
    }
    let m: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(512);
    println!(
        "kernel {}, rows {m}, threads {}",
        kernel().name(),
        rayon::current_num_threads()
    );
    let shapes = [
        ("q|k|v", 960, 576),
        ("o_proj", 576, 576),
        ("gate|up", 3072, 576),
        ("down_proj", 576, 1536),
        ("lm_head", 49152, 576),
    ];
    let (mut flops, mut secs) = (0.0, 0.0);
    for (name, n, k) in shapes {
        let (w, x) = operands(m, n, k);
        let p = PackedWeight::from_out_in_rows(&w, n, k);
        std::hint::black_box(p.matmul(&x));
        let mut times = Vec::new();
        let cpu0 = process_cpu_seconds().unwrap_or(0.0);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(500) || times.len() < 3 {
            let t = Instant::now();
            std::hint::black_box(p.matmul(&x));
            times.push(t.elapsed().as_secs_f64());
        }
        let cpu = process_cpu_seconds().unwrap_or(0.0) - cpu0;
        let per_cpu_s = 2.0 * (m * n * k * times.len()) as f64 / cpu / 1e9;
        times.sort_by(f64::total_cmp);
        let t = times[times.len() / 2];
        let f = 2.0 * (m * n * k) as f64;
        if name != "lm_head" {
            flops += f;
            secs += t;
        }
        println!(
            "{name:>10} {n:>6}×{k:<5} {:>8.3} ms {:>7.1} GFLOPS {per_cpu_s:>7.1} per CPU-s",
            t * 1e3,
            f / t / 1e9
        );
    }
    println!("projections (no lm_head): {:.1} GFLOPS", flops / secs / 1e9);
}

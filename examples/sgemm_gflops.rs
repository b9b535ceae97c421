//! GFLOPS of the forward's products on the SmolLM2-135M projection shapes, on the kernel class
//! `TYR_KERNEL` picks (the best one when unset): `cargo run --release --example sgemm_gflops
//! [rows]`. Each shape runs until 0.5 s have passed; the median call is reported, and the
//! GFLOPS per CPU-second of the process (what the cores delivered while this ran, which other
//! load on a shared machine does not lower).

use std::time::{Duration, Instant};

use tyr::eval::bench::process_cpu_seconds;
use tyr::model::cpu_kernel::kernel;
use tyr::model::sgemm::PackedWeight;

fn main() {
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
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 104_729) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
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

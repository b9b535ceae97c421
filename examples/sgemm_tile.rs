//! GFLOPS of one small product on the calling thread, the way attention runs its products
//! (`PackedWeight::matmul_prefix_into`, one task per head and tile): `cargo run --release
//! --example sgemm_tile -- M N K REPS`, e.g. `64 64 512 3000` for a 64-query tile's
//! `probabilities · V` over 512 keys. Single-threaded, so it measures the kernel and its
//! operand handling, not the thread pool; the kernel class is the one `TYR_KERNEL` picks.

use std::mem::MaybeUninit;
use std::time::Instant;

use tyr::model::cpu_kernel::kernel;
use tyr::model::sgemm::PackedWeight;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let [m, n, k, reps] = args[..] else {
        eprintln!("usage: sgemm_tile M N K REPS (four positive integers)");
        std::process::exit(2);
    };
    if m == 0 || n == 0 || k == 0 || reps == 0 || m.saturating_mul(n).saturating_mul(k) > 1 << 34
    {
        eprintln!("sgemm_tile: M, N, K and REPS must be positive and M·N·K at most 2^34");
        std::process::exit(2);
    }
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let x: Vec<f32> = (0..m * k)
        .map(|i| ((i * 104_729) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let p = PackedWeight::from_out_in_rows(&w, n, k);
    let mut out = vec![MaybeUninit::new(0f32); m * n];
    let t = Instant::now();
    for _ in 0..reps {
        p.matmul_prefix_into(&x, k, n, &mut out, n);
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "kernel {}, {m}×{n}×{k}: {:.1} GFLOPS on one thread",
        kernel().name(),
        2.0 * (m * n * k * reps) as f64 / s / 1e9
    );
}

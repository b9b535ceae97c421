use std::time::Instant;
use tyr::model::sgemm::PackedWeight;
fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let (m, n, k, reps) = (args[0], args[1], args[2], args[3]);
    let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 104_729) % 1000) as f32 / 1000.0 - 0.5).collect();
    let p = PackedWeight::from_out_in_rows(&w, n, k);
    let mut out = vec![std::mem::MaybeUninit::new(0f32); m * n];
    let t = Instant::now();
    for _ in 0..reps { p.matmul_prefix_into(&x, k, n, &mut out, n); }
    let s = t.elapsed().as_secs_f64();
    println!("{m}x{n}x{k}: {:.1} GFLOPS", 2.0 * (m * n * k * reps) as f64 / s / 1e9);
}

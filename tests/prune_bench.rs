//! Timings of one local prune at SmolLM2-135M sizes. Ignored by default; run with
//! `cargo test --release --test prune_bench -- --ignored --nocapture`.

use std::time::Instant;

use tyr::prune::local::{LocalPruneOptions, ModulePruner, ModuleWeight, PruneContext, local_prune};
use tyr::prune::stats::Hessian;
use tyr::prune::{ModuleKind, UnitLayout};
use tyr::rng::Stream;

fn setup(d_in: usize, d_out: usize, tokens: usize) -> (Hessian, Vec<f32>) {
    let mut s = Stream::new(1, "bench", &[d_in as u64]);
    let x: Vec<f32> = (0..tokens * d_in).map(|_| s.normal() as f32).collect();
    let t = Instant::now();
    let mut h = Hessian::zeros(d_in);
    for batch in x.chunks(512 * d_in) {
        h.accumulate_rows(batch).unwrap();
    }
    eprintln!(
        "H accumulation d={d_in}, {tokens} tokens: {:.3} s",
        t.elapsed().as_secs_f64()
    );
    (h, (0..d_out * d_in).map(|_| s.normal() as f32).collect())
}

#[test]
#[ignore]
fn bench_local_prune_smollm2_ffn_half_sixteen_passes() {
    let (h, w) = setup(1536, 576, 4096);
    let module = ModuleWeight {
        weight: &w,
        d_out: 576,
        layout: UnitLayout::channels(1536),
    };
    let ctx = PruneContext {
        layer: 0,
        module: ModuleKind::Ffn,
    };
    let t = Instant::now();
    let v = local_prune(&ctx, &h, &module, 768, &LocalPruneOptions::ffn_default()).unwrap();
    eprintln!(
        "FFN 1536→576 at 768/1536, 16 passes: {:.3} s (rel error {:.4}, H digest {}, weight digest {})",
        t.elapsed().as_secs_f64(),
        v.metrics.rel_error,
        &h.digest().to_hex()[..16],
        &blake3::hash(
            &v.weight
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<u8>>()
        )
        .to_hex()[..16],
    );
}

#[test]
#[ignore]
fn bench_local_prune_smollm2_attention_nine_heads() {
    let (h, w) = setup(576, 576, 4096);
    let module = ModuleWeight {
        weight: &w,
        d_out: 576,
        layout: UnitLayout::heads(9, 64),
    };
    let ctx = PruneContext {
        layer: 0,
        module: ModuleKind::Attn,
    };
    for level in [1, 4, 8] {
        let t = Instant::now();
        let v = local_prune(&ctx, &h, &module, level, &LocalPruneOptions::attn_default()).unwrap();
        eprintln!(
            "attn 9×64→576 at level {level}, 1 head per pass: {:.3} s (rel error {:.4})",
            t.elapsed().as_secs_f64(),
            v.metrics.rel_error
        );
    }
}

#[test]
#[ignore]
fn bench_spd_inverse_1536() {
    use tyr::prune::linalg::spd_inverse;
    let (h, _) = setup(1536, 1, 2048);
    let (hl, _) = h.damped(0.01);
    let t = Instant::now();
    let inv = spd_inverse(&hl).unwrap();
    eprintln!(
        "spd_inverse 1536: {:.3} s ({})",
        t.elapsed().as_secs_f64(),
        inv.get(0, 0)
    );
}

#[test]
#[ignore]
fn bench_gemm_f64_1536_for_calibration() {
    use tyr::prune::linalg::{Mat, Op, matmul};
    let a = Mat::from_vec(
        1536,
        1536,
        (0..1536 * 1536).map(|i| (i % 7) as f64).collect(),
    );
    let t = Instant::now();
    let c = matmul(Op::N(&a), Op::T(&a));
    let s = t.elapsed().as_secs_f64();
    eprintln!(
        "gemm f64 1536³: {s:.3} s = {:.2} GFLOP/s ({})",
        2.0 * 1536f64.powi(3) / s / 1e9,
        c.get(0, 0)
    );
}

#[test]
#[ignore]
fn bench_supernet_levels_of_one_smollm2_ffn_module() {
    let (h, w) = setup(1536, 576, 4096);
    let module = ModuleWeight {
        weight: &w,
        d_out: 576,
        layout: UnitLayout::channels(1536),
    };
    let ctx = PruneContext {
        layer: 0,
        module: ModuleKind::Ffn,
    };
    let t = Instant::now();
    let pruner = ModulePruner::new(ctx, &h, module, LocalPruneOptions::ffn_default()).unwrap();
    for k in 0..=8 {
        pruner.prune(k * 192).unwrap();
    }
    eprintln!(
        "FFN 1536→576, all 9 lattice levels (shared start): {:.3} s",
        t.elapsed().as_secs_f64()
    );
}

#[test]
#[ignore]
fn bench_phases_of_one_smollm2_ffn_prune() {
    use tyr::prune::linalg::Mat;
    use tyr::prune::obs::{FirstOrder, ObsState, refit};
    let (h, w) = setup(1536, 576, 4096);
    let layout = UnitLayout::channels(1536);
    let (hl, _) = h.damped(0.01);
    let t = Instant::now();
    let mut state = ObsState::new(&hl, Mat::from_f32(576, 1536, &w).transpose()).unwrap();
    eprintln!("phase start (Hλ⁻¹, G): {:.3} s", t.elapsed().as_secs_f64());
    let (mut t_score, mut t_remove) = (0.0, 0.0);
    let mut remaining: Vec<usize> = (0..1536).collect();
    for _ in 0..16 {
        let t = Instant::now();
        let scores = state
            .unit_scores(&layout, &remaining, FirstOrder::Signed, true)
            .unwrap();
        t_score += t.elapsed().as_secs_f64();
        let mut order: Vec<usize> = (0..remaining.len()).collect();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        let mut chosen: Vec<usize> = order[..48].iter().map(|&a| remaining[a]).collect();
        chosen.sort_unstable();
        let t = Instant::now();
        state.remove(&chosen).unwrap();
        t_remove += t.elapsed().as_secs_f64();
        remaining.retain(|u| chosen.binary_search(u).is_err());
    }
    eprintln!("phase scores: {t_score:.3} s, removals: {t_remove:.3} s");
    let t = Instant::now();
    refit(&hl, state.g(), state.kept_channels()).unwrap();
    eprintln!("phase refit: {:.3} s", t.elapsed().as_secs_f64());
}

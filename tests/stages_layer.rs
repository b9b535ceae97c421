//! The pieces the layer stages are built from, on a tiny random model: batching pieces of
//! different lengths, the expectation identity (one forward with the averaged weight equals the
//! weighted average of the variants' outputs, ALGORITHM.md §7), and a physically sliced block
//! equal to the masked dense block.

mod common;

use candle_core::{Device, IndexOp, Tensor};
use tyr::model::random::random_source;
use tyr::prune::expectation::{Expectation, ExpectationWeights, expectation_weights};
use tyr::prune::local::{LocalPruneOptions, ModulePruner, ModuleWeight, PruneContext};
use tyr::prune::{ModuleKind, UnitLayout};
use tyr::supernet::acts::Acts;
use tyr::supernet::layer::{Collect, DenseLayer, assemble_block, collect_stats};

fn acts(lengths: &[usize], hidden: usize) -> Acts {
    let n: usize = lengths.iter().sum();
    let v: Vec<f32> = (0..n * hidden)
        .map(|i| ((i as f32) * 0.731).sin())
        .collect();
    Acts {
        x: Tensor::from_vec(v, (n, hidden), &Device::Cpu).unwrap(),
        lengths: lengths.to_vec(),
    }
}

fn setup() -> (tyr::model::ModelConfig, DenseLayer, Acts) {
    let cfg = common::uniform_config();
    let src = random_source(&cfg, 3).unwrap();
    let dense = DenseLayer::load(&cfg, 1, &src).unwrap();
    let x = acts(&[7, 3, 7, 2, 7], cfg.hidden_size);
    (cfg, dense, x)
}

#[test]
fn batched_forward_equals_each_piece_alone() {
    let (cfg, dense, x) = setup();
    let block = dense.block_with(&cfg, None, None).unwrap();
    let batched = x.map_batches(|xb| block.forward(xb)).unwrap();
    let mut at = 0;
    for &len in &x.lengths {
        let piece = x.x.i(at..at + len).unwrap().unsqueeze(0).unwrap();
        let alone = block.forward(&piece).unwrap().squeeze(0).unwrap();
        let got = batched.x.i(at..at + len).unwrap();
        assert!(common::max_abs_diff(&alone, &got) < 1e-5);
        at += len;
    }
}

#[test]
fn averaged_weight_forward_equals_the_density_weighted_average_of_variant_outputs() {
    let (cfg, dense, x) = setup();
    let block = dense.block_with(&cfg, None, None).unwrap();
    let collect = Collect {
        o_proj: true,
        down_proj: false,
    };
    let (h_o, _) = collect_stats(&block, &x, collect).unwrap();
    let h_o = h_o.unwrap();
    let layout = dense.attn_layout();
    let o0 = dense.o_proj().unwrap();
    let pruner = ModulePruner::new(
        PruneContext {
            layer: 1,
            module: ModuleKind::Attn,
        },
        &h_o,
        ModuleWeight {
            weight: &o0,
            d_out: cfg.hidden_size,
            layout,
        },
        LocalPruneOptions::attn_default(),
    )
    .unwrap();
    let levels = [0usize, 1, 2, 3, 4];
    let variants: Vec<_> = levels.iter().map(|&l| pruner.prune(l).unwrap()).collect();
    let ExpectationWeights::Levels(w) =
        expectation_weights(Expectation::DensityWeighted, &levels, 4, 2).unwrap()
    else {
        panic!("density weighting gave the dense module")
    };
    // w_e ∝ 1 − s_e: 4/10, 3/10, 2/10, 1/10, 0.
    for (got, want) in w.iter().zip([0.4, 0.3, 0.2, 0.1, 0.0]) {
        assert!((got - want).abs() < 1e-12);
    }
    let compact: Vec<_> = variants.iter().map(|v| v.compact()).collect();
    let o_bar =
        tyr::prune::expectation::averaged_weight(&compact, &w, cfg.hidden_size, layout).unwrap();
    // o_proj is linear, so the identity holds for the attention branch; the FFN after it is
    // not, which is why the FFN gets its own averaged down_proj. Compare without the FFN.
    let mut dims = dense.dims.clone();
    dims.d_ff = 0;
    let mut weights = dense.weights.clone();
    weights.mlp = None;
    let dense = DenseLayer {
        layer: dense.layer,
        dims,
        weights,
        hidden: dense.hidden,
        head_dim: dense.head_dim,
        compute: dense.compute.clone(),
        device_rows: Default::default(),
    };
    let xb = x.x.i(0..7).unwrap().unsqueeze(0).unwrap();
    let one_pass = dense
        .block_with(&cfg, Some(&o_bar), None)
        .unwrap()
        .forward(&xb)
        .unwrap();
    let mut avg = (one_pass.zeros_like()).unwrap();
    for (v, &we) in variants.iter().zip(&w) {
        let padded = v.padded_weight(layout).unwrap();
        let out = dense
            .block_with(&cfg, Some(&padded), None)
            .unwrap()
            .forward(&xb)
            .unwrap();
        avg = (avg + out.affine(we, 0.0).unwrap()).unwrap();
    }
    assert!(common::max_abs_diff(&one_pass, &avg) < 1e-4);
}

#[test]
fn assembled_pruned_block_matches_the_masked_dense_block() {
    let (cfg, dense, x) = setup();
    let block = dense.block_with(&cfg, None, None).unwrap();
    let all = Collect {
        o_proj: true,
        down_proj: true,
    };
    let (h_o, h_d) = collect_stats(&block, &x, all).unwrap();
    let (h_o, h_d) = (h_o.unwrap(), h_d.unwrap());
    let prune = |kind, h, w: &[f32], layout: UnitLayout, level, opts| {
        ModulePruner::new(
            PruneContext {
                layer: 1,
                module: kind,
            },
            h,
            ModuleWeight {
                weight: w,
                d_out: cfg.hidden_size,
                layout,
            },
            opts,
        )
        .unwrap()
        .prune(level)
        .unwrap()
    };
    let (o0, d0) = (dense.o_proj().unwrap(), dense.down_proj().unwrap());
    // Removing heads 2 of 4 (GQA 2 groups) and 20 of 48 channels.
    let attn = prune(
        ModuleKind::Attn,
        &h_o,
        &o0,
        dense.attn_layout(),
        2,
        LocalPruneOptions::attn_default(),
    );
    let ffn = prune(
        ModuleKind::Ffn,
        &h_d,
        &d0,
        dense.ffn_layout(),
        20,
        LocalPruneOptions::ffn_default(),
    );
    let sliced = assemble_block(&cfg, &dense, &attn, &ffn).unwrap();
    assert_eq!(sliced.dims().n_q, 2);
    assert_eq!(sliced.dims().d_ff, 28);
    let masked = dense
        .block_with(
            &cfg,
            Some(&attn.padded_weight(dense.attn_layout()).unwrap()),
            Some(&ffn.padded_weight(dense.ffn_layout()).unwrap()),
        )
        .unwrap();
    let xb = x.x.i(0..7).unwrap().unsqueeze(0).unwrap();
    let a = sliced.forward(&xb).unwrap();
    let b = masked.forward(&xb).unwrap();
    assert!(common::max_abs_diff(&a, &b) < 1e-4);
}

//! Slicing a chosen configuration (ALGORITHM.md §10): the physically smaller model computes
//! exactly what the dense-shaped model computes with the removed units masked and the refit
//! weights in place.

mod common;
mod export_common;

use export_common::{choices, dense_config, det, logits, masked_dense, max_abs_diff};
use tyr::export::{slice_model, sliced_config};
use tyr::model::TensorSource;
use tyr::model::random::random_source;

#[test]
fn pruned_model_matches_masked_dense_model() {
    let cfg = dense_config();
    let dense = random_source(&cfg, 7).unwrap();
    let ch = choices(&cfg);
    let (small_cfg, small) = slice_model(&cfg, &dense, &ch).unwrap();
    let want = logits(&cfg, &masked_dense(&cfg, &dense, &ch));
    let got = logits(&small_cfg, &small);
    let d = max_abs_diff(&want, &got);
    assert!(d < 1e-4, "max |Δlogit| = {d}");
    // The masked model is not trivially equal to the dense one.
    assert!(max_abs_diff(&want, &logits(&cfg, &dense)) > 1e-2);
}

#[test]
fn sliced_dims_drop_unused_kv_heads_and_group_heads_by_kv() {
    let cfg = dense_config();
    let s = sliced_config(&cfg, &choices(&cfg)).unwrap();
    let dims: Vec<(usize, usize, usize)> =
        s.layers.iter().map(|d| (d.n_q, d.n_kv, d.d_ff)).collect();
    assert_eq!(dims, vec![(3, 2, 6), (2, 1, 0), (0, 0, 8), (4, 2, 1)]);
    assert_eq!(s.layers[0].kv_map, vec![0, 0, 1]);
    // Layer 3 kept heads 1,2,3,5 with K/V 1,0,1,1: written as 2 | 1,3,5.
    assert_eq!(s.layers[3].kv_map, vec![0, 1, 1, 1]);
    assert!(s.decoder_params() < cfg.decoder_params());
}

#[test]
fn removed_branches_have_no_tensors() {
    let cfg = dense_config();
    let dense = random_source(&cfg, 7).unwrap();
    let (_, small) = slice_model(&cfg, &dense, &choices(&cfg)).unwrap();
    let names = small.names();
    assert!(!names.iter().any(|n| n.starts_with("model.layers.1.mlp.")));
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("model.layers.2.self_attn."))
    );
    assert!(names.contains(&"model.layers.2.input_layernorm.weight".to_string()));
    let q = small
        .tensor("model.layers.1.self_attn.q_proj.bias")
        .unwrap();
    assert_eq!(q.dims(), &[2 * cfg.head_dim]);
}

#[test]
fn a_choice_with_unsorted_indices_or_a_wrong_weight_shape_is_an_error() {
    let cfg = dense_config();
    let mut ch = choices(&cfg);
    ch[0].attn.kept = vec![2, 0, 4];
    let e = sliced_config(&cfg, &ch).unwrap_err().to_string();
    assert!(
        e.contains("layer 0 attention") && e.contains("ascending"),
        "{e}"
    );
    let mut ch = choices(&cfg);
    ch[2].ffn.weight = det(cfg.hidden_size, 3, 0.5).into();
    let e = sliced_config(&cfg, &ch).unwrap_err().to_string();
    assert!(e.contains("layer 2 ffn") && e.contains("shape"), "{e}");
    let mut ch = choices(&cfg);
    ch[1].attn.kept = vec![3, 6];
    assert!(sliced_config(&cfg, &ch).is_err());
}

//! Baseline scores (ALGORITHM.md §12) and slicing (§2): magnitude and wanda-sp rank the units
//! they should, K/V heads go only with their whole group, and a sliced layer equals the masked
//! dense layer.

use tyr::prune::UnitLayout;
use tyr::prune::baselines::{
    kept_after_removing_lowest, magnitude_channel_scores, magnitude_head_scores, wanda_sp_scores,
};
use tyr::prune::slice::{
    AttnDims, AttnWeights, FfnWeights, pad_columns, slice_attention, slice_ffn,
};
use tyr::prune::stats::Hessian;
use tyr::rng::Stream;

fn normals(s: &mut Stream, n: usize) -> Vec<f32> {
    (0..n).map(|_| s.normal() as f32).collect()
}

#[test]
fn lowest_scores_are_removed_with_ties_to_the_lower_index() {
    assert_eq!(
        kept_after_removing_lowest(&[3.0, 1.0, 1.0, 2.0], 1).unwrap(),
        vec![0, 2, 3]
    );
    assert_eq!(
        kept_after_removing_lowest(&[3.0, 1.0, 1.0, 2.0], 2).unwrap(),
        vec![0, 3]
    );
    assert_eq!(
        kept_after_removing_lowest(&[f64::NAN, 5.0], 1).unwrap(),
        vec![0]
    );
    assert_eq!(
        kept_after_removing_lowest(&[1.0, 2.0], 0).unwrap(),
        vec![0, 1]
    );
    assert!(kept_after_removing_lowest(&[1.0], 2).is_err());
}

#[test]
fn magnitude_scores_are_l2_norms_of_everything_removed_with_the_unit() {
    // 2 heads of width 1, hidden 2: q [2, 2], o [2, 2].
    let q = [3.0f32, 0.0, 1.0, 0.0];
    let o = [4.0f32, 1.0, 0.0, 0.0];
    let s = magnitude_head_scores(&q, &o, 2, UnitLayout::heads(2, 1)).unwrap();
    assert_eq!(s, vec![5.0, 2.0f64.sqrt()]);
    // d_ff 2, hidden 1: gate/up [2, 1], down [1, 2].
    let c = magnitude_channel_scores(&[1.0, 0.0], &[2.0, 0.0], &[2.0, 3.0], 1, 2).unwrap();
    assert_eq!(c, vec![3.0, 3.0]);
    assert!(magnitude_channel_scores(&[1.0], &[2.0, 0.0], &[2.0, 3.0], 1, 2).is_err());
}

#[test]
fn wanda_sp_weighs_column_magnitude_by_input_scale() {
    // H = diag(4, 1, 0): channel 2 never fires.
    let mut d = vec![0.0f32; 9];
    d[0] = 4.0;
    d[4] = 1.0;
    let h = Hessian::from_parts(3, d, 1).unwrap();
    let w = [1.0f32, -3.0, 100.0, 1.0, 1.0, 100.0]; // down_proj [2, 3]
    let s = wanda_sp_scores(&h, &w, 2, UnitLayout::channels(3)).unwrap();
    assert_eq!(s, vec![2.0 * 2.0, 4.0, 0.0]);
    assert_eq!(kept_after_removing_lowest(&s, 1).unwrap(), vec![0, 1]);
    // Heads of width 3 sum their channels.
    let sh = wanda_sp_scores(&h, &w, 2, UnitLayout::heads(1, 3)).unwrap();
    assert_eq!(sh, vec![8.0]);
}

#[test]
fn kv_heads_go_only_when_their_whole_group_is_gone() {
    // 4 query heads, 2 K/V heads (groups {0,1}, {2,3}), head_dim 1, hidden 2.
    let dims = AttnDims {
        hidden: 2,
        head_dim: 1,
        n_q: 4,
        n_kv: 2,
    };
    let q: Vec<f32> = (0..8).map(|x| x as f32).collect();
    let k = [10.0f32, 11.0, 12.0, 13.0];
    let v = [20.0f32, 21.0, 22.0, 23.0];
    let o: Vec<f32> = (0..8).map(|x| 100.0 + x as f32).collect();
    let kb = [0.5f32, 0.7];
    let w = AttnWeights {
        q: &q,
        k: &k,
        v: &v,
        o: &o,
        q_bias: None,
        k_bias: Some(&kb),
        v_bias: None,
    };
    let s = slice_attention(&w, &dims, &[0, 0, 1, 1], &[1, 2, 3]).unwrap();
    assert_eq!(s.kept_kv, vec![0, 1]);
    assert_eq!(s.kv_map, vec![0, 1, 1]);
    assert_eq!(s.q, vec![2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    assert_eq!(s.o, vec![101.0, 102.0, 103.0, 105.0, 106.0, 107.0]);
    let s = slice_attention(&w, &dims, &[0, 0, 1, 1], &[2]).unwrap();
    assert_eq!(s.kept_kv, vec![1]);
    assert_eq!(s.kv_map, vec![0]);
    assert_eq!(s.k, vec![12.0, 13.0]);
    assert_eq!(s.v, vec![22.0, 23.0]);
    assert_eq!(s.k_bias, Some(vec![0.7]));
    let none = slice_attention(&w, &dims, &[0, 0, 1, 1], &[]).unwrap();
    assert!(none.kept_kv.is_empty() && none.q.is_empty() && none.k.is_empty() && none.o.is_empty());
    assert!(slice_attention(&w, &dims, &[0, 0, 1, 1], &[2, 1]).is_err());
    assert!(slice_attention(&w, &dims, &[0, 0, 2, 1], &[1]).is_err());
}

#[test]
fn sliced_ffn_equals_masked_dense_ffn() {
    let (hidden, d_ff) = (4, 6);
    let mut s = Stream::new(1, "slice-ffn", &[]);
    let (gate, up, down) = (
        normals(&mut s, d_ff * hidden),
        normals(&mut s, d_ff * hidden),
        normals(&mut s, hidden * d_ff),
    );
    let x = normals(&mut s, hidden);
    let kept = [0u32, 3, 5];
    let ffn = |g: &[f32], u: &[f32], d: &[f32], width: usize, mask: Option<&[u32]>| -> Vec<f32> {
        let act: Vec<f32> = (0..width)
            .map(|c| {
                let dot = |w: &[f32]| (0..hidden).map(|j| w[c * hidden + j] * x[j]).sum::<f32>();
                let a = dot(g);
                let on = mask.is_none_or(|m| m.contains(&(c as u32)));
                if on {
                    a / (1.0 + (-a).exp()) * dot(u)
                } else {
                    0.0
                }
            })
            .collect();
        (0..hidden)
            .map(|i| (0..width).map(|c| d[i * width + c] * act[c]).sum())
            .collect()
    };
    let masked = ffn(&gate, &up, &down, d_ff, Some(&kept));
    let sl = slice_ffn(
        &FfnWeights {
            gate: &gate,
            up: &up,
            down: &down,
        },
        hidden,
        d_ff,
        &kept,
    )
    .unwrap();
    let sliced = ffn(&sl.gate, &sl.up, &sl.down, kept.len(), None);
    for (a, b) in masked.iter().zip(&sliced) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    // Padding the sliced down_proj back gives the dense one with removed columns zeroed.
    let padded = pad_columns(&sl.down, &kept, hidden, UnitLayout::channels(d_ff)).unwrap();
    for i in 0..hidden {
        for c in 0..d_ff {
            let want = if kept.contains(&(c as u32)) {
                down[i * d_ff + c]
            } else {
                0.0
            };
            assert_eq!(padded[i * d_ff + c], want);
        }
    }
}

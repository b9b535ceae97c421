//! Shared builders for the integration tests: tiny Llama configs (uniform, heterogeneous, GQA
//! with uneven groups), random token batches, unit slicing of a block, tensor comparison.
#![allow(dead_code)]

use candle_core::{Device, IndexOp, Tensor};
use tyr::model::{AttnWeights, BlockWeights, LayerDims, MlpWeights, ModelConfig};

/// hidden 32 = 4 heads × 8, so candle-transformers' Llama (head_dim = hidden / heads) agrees.
pub fn tiny_config(layers: Vec<LayerDims>) -> ModelConfig {
    ModelConfig {
        hidden_size: 32,
        head_dim: 8,
        vocab_size: 61,
        layers,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 256,
        tie_word_embeddings: false,
        attention_bias: false,
        mlp_bias: false,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    }
}

/// Three dense layers: 4 query heads, 2 K/V heads, d_ff 48.
pub fn uniform_config() -> ModelConfig {
    tiny_config(vec![LayerDims::dense(4, 2, 48); 3])
}

/// Per-layer widths: uneven GQA groups, a removed attention, a removed FFN, a lone K/V head.
pub fn hetero_config() -> ModelConfig {
    tiny_config(vec![
        LayerDims {
            n_q: 5,
            n_kv: 3,
            kv_map: vec![0, 0, 0, 1, 2],
            d_ff: 40,
        },
        LayerDims {
            n_q: 0,
            n_kv: 0,
            kv_map: vec![],
            d_ff: 24,
        },
        LayerDims {
            n_q: 3,
            n_kv: 2,
            kv_map: vec![1, 0, 1],
            d_ff: 0,
        },
        LayerDims {
            n_q: 1,
            n_kv: 1,
            kv_map: vec![0],
            d_ff: 7,
        },
    ])
}

/// Token ids `[batch, seq]` below `vocab`, deterministic in `seed`.
pub fn random_ids(batch: usize, seq: usize, vocab: usize, seed: u64) -> Tensor {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let ids: Vec<u32> = (0..batch * seq)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) % vocab as u64) as u32
        })
        .collect();
    Tensor::from_vec(ids, (batch, seq), &Device::Cpu).unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    max_abs(&(a - b).unwrap())
}

/// The largest magnitude in an f32 tensor.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn idx(v: &[usize]) -> Tensor {
    Tensor::from_vec(
        v.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        v.len(),
        &Device::Cpu,
    )
    .unwrap()
}

/// Rows `head·dh..(head+1)·dh` for each head in `heads`, as one index list.
fn head_rows(heads: &[usize], dh: usize) -> Vec<usize> {
    heads.iter().flat_map(|&h| h * dh..(h + 1) * dh).collect()
}

/// `w` with the blocks of `dh` columns of `heads` set to zero (an `o_proj` with heads masked).
pub fn zero_columns(w: &Tensor, cols: &[usize]) -> Tensor {
    let n = w.dim(1).unwrap();
    let mask: Vec<f32> = (0..n)
        .map(|c| if cols.contains(&c) { 0.0 } else { 1.0 })
        .collect();
    w.broadcast_mul(&Tensor::from_vec(mask, (1, n), &Device::Cpu).unwrap())
        .unwrap()
}

/// The weights of a layer with query heads `drop_heads` and channels `drop_channels` masked:
/// the `o_proj` columns of the heads and the `down_proj` columns of the channels are zero.
pub fn masked_layer(
    w: &BlockWeights,
    dh: usize,
    drop_heads: &[usize],
    drop_channels: &[usize],
) -> BlockWeights {
    let mut w = w.clone();
    if let Some(a) = &mut w.attn {
        a.o_proj = zero_columns(&a.o_proj, &head_rows(drop_heads, dh));
    }
    if let Some(m) = &mut w.mlp {
        m.down_proj = zero_columns(&m.down_proj, drop_channels);
    }
    w
}

/// The physically smaller layer: heads `drop_heads` and channels `drop_channels` sliced out, K/V
/// heads no kept query head reads removed, and the K/V map renumbered.
pub fn sliced_layer(
    w: &BlockWeights,
    dims: &LayerDims,
    dh: usize,
    drop_heads: &[usize],
    drop_channels: &[usize],
) -> (LayerDims, BlockWeights) {
    let keep_q: Vec<usize> = (0..dims.n_q).filter(|h| !drop_heads.contains(h)).collect();
    let mut keep_kv: Vec<usize> = keep_q.iter().map(|&h| dims.kv_map[h]).collect();
    keep_kv.sort();
    keep_kv.dedup();
    let keep_f: Vec<usize> = (0..dims.d_ff)
        .filter(|c| !drop_channels.contains(c))
        .collect();
    let kv_map: Vec<usize> = keep_q
        .iter()
        .map(|&h| keep_kv.iter().position(|&j| j == dims.kv_map[h]).unwrap())
        .collect();
    let new = LayerDims {
        n_q: keep_q.len(),
        n_kv: keep_kv.len(),
        kv_map,
        d_ff: keep_f.len(),
    };
    let rows = |t: &Tensor, r: &[usize]| t.index_select(&idx(r), 0).unwrap();
    let cols = |t: &Tensor, c: &[usize]| t.index_select(&idx(c), 1).unwrap();
    let attn = match (&w.attn, keep_q.is_empty()) {
        (Some(a), false) => {
            let (qr, kr) = (head_rows(&keep_q, dh), head_rows(&keep_kv, dh));
            Some(AttnWeights {
                q_proj: rows(&a.q_proj, &qr),
                k_proj: rows(&a.k_proj, &kr),
                v_proj: rows(&a.v_proj, &kr),
                o_proj: cols(&a.o_proj, &qr),
                q_bias: a.q_bias.as_ref().map(|b| rows(b, &qr)),
                k_bias: a.k_bias.as_ref().map(|b| rows(b, &kr)),
                v_bias: a.v_bias.as_ref().map(|b| rows(b, &kr)),
                o_bias: a.o_bias.clone(),
            })
        }
        _ => None,
    };
    let mlp = match (&w.mlp, keep_f.is_empty()) {
        (Some(m), false) => Some(MlpWeights {
            gate_proj: rows(&m.gate_proj, &keep_f),
            up_proj: rows(&m.up_proj, &keep_f),
            down_proj: cols(&m.down_proj, &keep_f),
            gate_bias: m.gate_bias.as_ref().map(|b| rows(b, &keep_f)),
            up_bias: m.up_bias.as_ref().map(|b| rows(b, &keep_f)),
            down_bias: m.down_bias.clone(),
        }),
        _ => None,
    };
    let w = BlockWeights {
        input_layernorm: w.input_layernorm.clone(),
        post_attention_layernorm: w.post_attention_layernorm.clone(),
        attn,
        mlp,
    };
    (new, w)
}

/// Position `p` of logits `[batch, seq, vocab]` → `[batch, vocab]`.
pub fn at_position(logits: &Tensor, p: usize) -> Tensor {
    logits.i((.., p, ..)).unwrap().contiguous().unwrap()
}

/// Hidden states `[batch, seq, hidden]` with entries in [-1, 1), deterministic in `seed`.
pub fn random_hidden(batch: usize, seq: usize, hidden: usize, seed: u64) -> Tensor {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    let v: Vec<f32> = (0..batch * seq * hidden)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, (batch, seq, hidden), &Device::Cpu).unwrap()
}

mod cli;
mod engine;
mod tiny_pipeline;
#[allow(unused_imports)]
pub use cli::*;
#[allow(unused_imports)]
pub use engine::*;
#[allow(unused_imports)]
pub use tiny_pipeline::*;

//! Shared by the export tests: a small dense model with interleaved K/V groups, a set of layer
//! choices covering every slicing case, the masked dense-shaped reference and logits.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use tyr::export::{LayerChoice, ModuleChoice};
use tyr::model::{LayerDims, Llama, MemorySource, ModelConfig, TensorSource};

use crate::common;

/// Four layers of 6 query heads (dh 8) and 24 channels; layer 3 has interleaved K/V groups so
/// slicing must reorder its heads.
pub fn dense_config() -> ModelConfig {
    let mut layers = vec![LayerDims::dense(6, 2, 24); 4];
    layers[3].kv_map = vec![0, 1, 0, 1, 0, 1];
    let mut cfg = common::tiny_config(layers);
    cfg.hidden_size = 48;
    cfg.attention_bias = true;
    cfg
}

/// A deterministic matrix that differs by `salt`.
pub fn det(rows: usize, cols: usize, salt: f32) -> Tensor {
    let v: Vec<f32> = (0..rows * cols)
        .map(|i| 0.2 * ((i as f32 + 1.0) * salt).sin())
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

fn choice(kept: &[u32], hidden: usize, width: usize, salt: f32) -> ModuleChoice {
    ModuleChoice {
        kept: kept.to_vec(),
        weight: det(hidden, kept.len() * width, salt).into(),
    }
}

/// Uneven groups (layer 0), a removed K/V head and a removed FFN (layer 1), a removed attention
/// (layer 2), reordered heads and a single channel (layer 3).
pub fn choices(cfg: &ModelConfig) -> Vec<LayerChoice> {
    let (h, dh) = (cfg.hidden_size, cfg.head_dim);
    vec![
        LayerChoice {
            attn: choice(&[0, 2, 4], h, dh, 0.37),
            ffn: choice(&[1, 3, 5, 7, 8, 20], h, 1, 0.51),
        },
        LayerChoice {
            attn: choice(&[3, 5], h, dh, 0.73),
            ffn: choice(&[], h, 1, 0.1),
        },
        LayerChoice {
            attn: choice(&[], h, dh, 0.2),
            ffn: choice(&[0, 1, 2, 3, 4, 5, 6, 23], h, 1, 0.91),
        },
        LayerChoice {
            attn: choice(&[1, 2, 3, 5], h, dh, 1.13),
            ffn: choice(&[2], h, 1, 1.37),
        },
    ]
}

/// The dense-shaped model with the removed units' output columns zeroed and the refit weights at
/// the kept columns.
pub fn masked_dense(
    cfg: &ModelConfig,
    dense: &MemorySource,
    choices: &[LayerChoice],
) -> MemorySource {
    let mut m = dense.clone();
    let (h, dh) = (cfg.hidden_size, cfg.head_dim);
    for (l, c) in choices.iter().enumerate() {
        for (name, width, units, ch) in [
            ("self_attn.o_proj", dh, cfg.layers[l].n_q, &c.attn),
            ("mlp.down_proj", 1, cfg.layers[l].d_ff, &c.ffn),
        ] {
            let mut full = vec![vec![0f32; units * width]; h];
            if !ch.kept.is_empty() {
                let w: Vec<Vec<f32>> = ch.weight.tensor().unwrap().to_vec2().unwrap();
                for (i, &u) in ch.kept.iter().enumerate() {
                    for r in 0..h {
                        for k in 0..width {
                            full[r][u as usize * width + k] = w[r][i * width + k];
                        }
                    }
                }
            }
            let flat: Vec<f32> = full.into_iter().flatten().collect();
            let t = Tensor::from_vec(flat, (h, units * width), &Device::Cpu).unwrap();
            m.insert(format!("model.layers.{l}.{name}.weight"), t);
        }
    }
    m
}

pub fn logits(cfg: &ModelConfig, src: &dyn TensorSource) -> Vec<f32> {
    let model = Llama::load(cfg, src).unwrap();
    let rows = [vec![3u32, 17, 5, 42, 8, 9, 60, 1, 33, 12]];
    let t = Tensor::from_vec(rows[0].clone(), (1, rows[0].len()), &Device::Cpu).unwrap();
    model
        .forward(&t)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

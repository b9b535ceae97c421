//! A random Llama with given (possibly per-layer) dims, deterministic in its seed: the `random`
//! model source of tiny pipelines and the builder behind every test model.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::{MemorySource, ModelConfig};
use crate::Result;
use crate::rng::Stream;

/// Random weights for `cfg`: linear weights N(0, 0.02²)·scale, norms 1 + N(0, 0.1²), biases
/// N(0, 0.02²). Each tensor has its own stream keyed by its name, so adding a tensor does not
/// change the others.
pub fn random_source(cfg: &ModelConfig, seed: u64) -> Result<MemorySource> {
    let (h, dh, v) = (cfg.hidden_size, cfg.head_dim, cfg.vocab_size);
    // Tensors are listed first and drawn in parallel: each has its own stream, so the bits do
    // not depend on the order or the thread count (a Llama-3.1-8B shape is ~8 G draws).
    let mut specs: Vec<(String, Vec<usize>, f32, f32)> = Vec::new();
    let mut put = |name: String, shape: &[usize], base: f32, std: f32| -> Result<()> {
        specs.push((name, shape.to_vec(), base, std));
        Ok(())
    };
    put("model.embed_tokens.weight".into(), &[v, h], 0.0, 0.5)?;
    for (l, d) in cfg.layers.iter().enumerate() {
        let p = format!("model.layers.{l}");
        put(format!("{p}.input_layernorm.weight"), &[h], 1.0, 0.1)?;
        put(
            format!("{p}.post_attention_layernorm.weight"),
            &[h],
            1.0,
            0.1,
        )?;
        if d.n_q > 0 {
            let w = 1.0 / (h as f32).sqrt();
            put(
                format!("{p}.self_attn.q_proj.weight"),
                &[d.n_q * dh, h],
                0.0,
                w,
            )?;
            put(
                format!("{p}.self_attn.k_proj.weight"),
                &[d.n_kv * dh, h],
                0.0,
                w,
            )?;
            put(
                format!("{p}.self_attn.v_proj.weight"),
                &[d.n_kv * dh, h],
                0.0,
                w,
            )?;
            put(
                format!("{p}.self_attn.o_proj.weight"),
                &[h, d.n_q * dh],
                0.0,
                w,
            )?;
            if cfg.attention_bias {
                put(
                    format!("{p}.self_attn.q_proj.bias"),
                    &[d.n_q * dh],
                    0.0,
                    0.02,
                )?;
                put(
                    format!("{p}.self_attn.k_proj.bias"),
                    &[d.n_kv * dh],
                    0.0,
                    0.02,
                )?;
                put(
                    format!("{p}.self_attn.v_proj.bias"),
                    &[d.n_kv * dh],
                    0.0,
                    0.02,
                )?;
            }
        }
        if d.d_ff > 0 {
            let w = 1.0 / (h as f32).sqrt();
            put(format!("{p}.mlp.gate_proj.weight"), &[d.d_ff, h], 0.0, w)?;
            put(format!("{p}.mlp.up_proj.weight"), &[d.d_ff, h], 0.0, w)?;
            put(
                format!("{p}.mlp.down_proj.weight"),
                &[h, d.d_ff],
                0.0,
                1.0 / (d.d_ff as f32).sqrt(),
            )?;
        }
    }
    put("model.norm.weight".into(), &[h], 1.0, 0.1)?;
    if !cfg.tie_word_embeddings {
        put(
            "lm_head.weight".into(),
            &[v, h],
            0.0,
            1.0 / (h as f32).sqrt(),
        )?;
    }
    let tensors = specs
        .into_par_iter()
        .map(|(name, shape, base, std)| {
            let n: usize = shape.iter().product();
            let mut s = Stream::new(seed, &format!("random-model/{name}"), &[]);
            let data: Vec<f32> = (0..n).map(|_| base + std * s.normal() as f32).collect();
            Ok((name, Tensor::from_vec(data, shape, &Device::Cpu)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut src = MemorySource::new();
    for (name, t) in tensors {
        src.insert(name, t);
    }
    Ok(src)
}

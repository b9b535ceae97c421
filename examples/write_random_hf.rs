//! Writes a random Llama as a Hugging Face directory in bf16, as real checkpoints come:
//! `config.json` and one `model.safetensors`, no tokenizer (tyr then reads text as bytes). By
//! default the layers have Llama-3.1-8B's shape (hidden 4096, 32 query / 8 K/V heads of 128, FFN
//! 14336); five more numbers give another. For memory and time measurements of whole pipelines
//! (`scripts/bench_8b_shape.sh`, `scripts/bench_memory.sh`): a `random` model spec rebuilds every
//! weight in memory in each stage that opens it, which a memory-mapped file does not.
//!
//! cargo run --release --example write_random_hf -- OUT_DIR LAYERS VOCAB
//!     [HIDDEN HEAD_DIM HEADS KV_HEADS D_FF]

use anyhow::{Context, bail};
use candle_core::DType;
use tyr::eval::bench::llama31_8b_config;
use tyr::model::random::random_source;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: write_random_hf OUT_DIR LAYERS VOCAB [HIDDEN HEAD_DIM HEADS KV_HEADS D_FF]";
    let (out, layers, vocab, shape) = match args.as_slice() {
        [o, l, v] => (o, l, v, None),
        [o, l, v, rest @ ..] if rest.len() == 5 => (o, l, v, Some(rest)),
        _ => bail!(usage),
    };
    let layers: usize = layers.parse().context("LAYERS")?;
    let vocab: usize = vocab.parse().context("VOCAB")?;
    if !(1..=128).contains(&layers) || !(256..=262_144).contains(&vocab) {
        bail!("LAYERS must be 1–128 and VOCAB 256–262144");
    }
    let mut cfg = llama31_8b_config(layers, vocab);
    if let Some(s) = shape {
        let n: Vec<usize> = s
            .iter()
            .map(|x| x.parse::<usize>().context("a shape number"))
            .collect::<anyhow::Result<_>>()?;
        let [hidden, head_dim, heads, kv_heads, d_ff] = n[..] else {
            bail!(usage)
        };
        if hidden == 0
            || hidden > 16_384
            || head_dim == 0
            || heads == 0
            || heads * head_dim > 16_384
            || kv_heads == 0
            || heads % kv_heads != 0
            || d_ff == 0
            || d_ff > 65_536
        {
            bail!(
                "shape out of range: hidden ≤ 16384, heads·head_dim ≤ 16384, kv_heads divides heads, d_ff ≤ 65536"
            );
        }
        cfg.hidden_size = hidden;
        cfg.head_dim = head_dim;
        cfg.layers = vec![tyr::model::LayerDims::dense(heads, kv_heads, d_ff); layers];
    }
    let out = std::path::Path::new(out);
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let tensors: std::collections::HashMap<String, candle_core::Tensor> = random_source(&cfg, 1)?
        .into_map()
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_dtype(DType::BF16)?)))
        .collect::<anyhow::Result<_>>()?;
    candle_core::safetensors::save(&tensors, out.join("model.safetensors"))?;
    let d = &cfg.layers[0];
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": d.d_ff,
        "num_hidden_layers": layers,
        "num_attention_heads": d.n_q,
        "num_key_value_heads": d.n_kv,
        "head_dim": cfg.head_dim,
        "vocab_size": vocab,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192
        },
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": false,
        "torch_dtype": "bfloat16"
    });
    std::fs::write(out.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    println!("wrote {}", out.display());
    Ok(())
}

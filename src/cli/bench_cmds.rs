//! `tyr bench forward`: tokens/s of the full-sequence forward; `tyr bench decode`: prefill and
//! greedy-decode tokens/s with the KV cache. On any model file or on random weights of the
//! SmolLM2-135M shape.

use std::path::PathBuf;

use crate::eval::bench::{
    BenchSpec, bench_decode, bench_forward, llama31_8b_config, smollm2_135m_config,
};
use crate::model::Llama;
use crate::model::open::open_model;
use crate::model::random::random_source;
use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchWhat {
    /// Full-sequence forward speed.
    Forward(ForwardArgs),
    /// Prefill and greedy-decode speed of one sequence with the KV cache.
    Decode(DecodeArgs),
}

#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    /// A GGUF file, a Hugging Face directory or a model saved by tyr [default: random weights
    /// of `--shape`].
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub random: RandomShape,
    #[command(flatten)]
    pub on: super::DeviceArgs,
    /// Prompt tokens (prefilled in one forward).
    #[arg(long, default_value_t = 128)]
    pub prompt_len: usize,
    /// Tokens generated one at a time after the prompt.
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Timed repetitions after one warm-up (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ForwardArgs {
    /// A GGUF file, a Hugging Face directory or a model saved by tyr [default: random weights
    /// of `--shape`].
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub random: RandomShape,
    #[command(flatten)]
    pub on: super::DeviceArgs,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub batch: Vec<usize>,
    /// Untimed forwards before each batch size.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed forwards per batch size (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// Also compute logits of every position (final norm + lm_head).
    #[arg(long)]
    pub logits: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The random model timed when no `--model` is given.
#[derive(Debug, Clone, clap::Args)]
pub struct RandomShape {
    /// `smollm2-135m` or `llama-3.1-8b` (its layer shape).
    #[arg(long, default_value = "smollm2-135m")]
    pub shape: String,
    /// Decoder layers [the shape's own: 30 for SmolLM2, 32 for Llama-3.1-8B].
    #[arg(long)]
    pub layers: Option<usize>,
    /// Vocabulary size [the shape's own].
    #[arg(long)]
    pub vocab: Option<usize>,
}

impl RandomShape {
    fn config(&self) -> anyhow::Result<crate::model::ModelConfig> {
        let mut cfg = match self.shape.as_str() {
            "smollm2-135m" => smollm2_135m_config(),
            "llama-3.1-8b" => llama31_8b_config(32, 128_256),
            other => {
                anyhow::bail!("--shape `{other}` is not one of \"smollm2-135m\", \"llama-3.1-8b\"")
            }
        };
        if let Some(l) = self.layers {
            if l == 0 || l > 256 {
                anyhow::bail!("--layers {l} is not in 1..=256");
            }
            cfg.layers = vec![cfg.layers[0].clone(); l];
        }
        if let Some(v) = self.vocab {
            if !(2..=1 << 20).contains(&v) {
                anyhow::bail!("--vocab {v} is not in 2..=1048576");
            }
            cfg.vocab_size = v;
        }
        Ok(cfg)
    }
}

pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    match &args.what {
        BenchWhat::Forward(a) => forward(a),
        BenchWhat::Decode(a) => decode(a),
    }
}

/// The model to time, placed for `on`, and how to name it.
fn load(
    model: &Option<PathBuf>,
    random: &RandomShape,
    on: &super::DeviceArgs,
) -> anyhow::Result<(Llama, String)> {
    let compute = on.compute()?;
    let (llama, name) = match model {
        Some(path) => {
            let m = open_model(path)?;
            (
                Llama::load_on(&m.config, m.source.as_ref(), &compute)?,
                path.display().to_string(),
            )
        }
        None => {
            let cfg = random.config()?;
            let src = random_source(&cfg, 0).context("building random weights")?;
            (
                Llama::load_on(&cfg, &src, &compute)?,
                format!(
                    "random {} shape, {} layers, vocab {}",
                    random.shape,
                    cfg.n_layers(),
                    cfg.vocab_size
                ),
            )
        }
    };
    Ok((llama, format!("{name}, on {}", compute.describe())))
}

fn decode(a: &DecodeArgs) -> anyhow::Result<()> {
    if a.prompt_len == 0 {
        anyhow::bail!("--prompt-len must be positive");
    }
    let (model, name) = load(&a.model, &a.random, &a.on)?;
    if a.prompt_len + a.new_tokens > model.config().max_position_embeddings {
        anyhow::bail!(
            "--prompt-len + --new-tokens exceed the model's context of {}",
            model.config().max_position_embeddings
        );
    }
    let r = bench_decode(&model, a.prompt_len, a.new_tokens, a.iters)?;
    let threads = candle_core::utils::get_num_threads();
    let kernel = crate::model::cpu_kernel::kernel();
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "model": name, "threads": threads, "kernel": kernel, "result": r })
        );
    } else {
        println!(
            "decode benchmark: {name}, {threads} threads, {} kernels: prefill {} tokens {:.1} tokens/s, \
             decode {} tokens {:.1} tokens/s",
            kernel.name(),
            r.prompt_tokens,
            r.prefill_tokens_per_s,
            r.new_tokens,
            r.decode_tokens_per_s
        );
    }
    Ok(())
}

fn forward(a: &ForwardArgs) -> anyhow::Result<()> {
    if a.seq_len == 0 || a.batch.contains(&0) {
        anyhow::bail!("--seq-len and every --batch must be positive");
    }
    let (model, name) = load(&a.model, &a.random, &a.on)?;
    if a.seq_len > model.config().max_position_embeddings {
        anyhow::bail!(
            "--seq-len {} exceeds the model's context of {}",
            a.seq_len,
            model.config().max_position_embeddings
        );
    }
    let spec = BenchSpec {
        seq_len: a.seq_len,
        batches: a.batch.clone(),
        warmup: a.warmup,
        iters: a.iters,
        logits: a.logits,
    };
    let results = bench_forward(&model, &spec)?;
    let threads = candle_core::utils::get_num_threads();
    let kernel = crate::model::cpu_kernel::kernel();
    if a.json {
        let v = serde_json::json!({
            "model": name, "threads": threads, "kernel": kernel, "results": results
        });
        println!("{v}");
    } else {
        println!(
            "forward benchmark: {name}, {threads} threads, {} kernels, logits: {}",
            kernel.name(),
            a.logits
        );
        println!(
            "{:>6} {:>8} {:>10} {:>10} {:>10} {:>10} {:>12} {:>11}",
            "batch",
            "seq_len",
            "median_s",
            "min_s",
            "tokens/s",
            "cpu_s",
            "tokens/cpu_s",
            "proj_TFLOPs"
        );
        for r in &results {
            let cpu = r.median_cpu_s.map_or("-".into(), |c| format!("{c:.2}"));
            let per_cpu = r.tokens_per_cpu_s.map_or("-".into(), |t| format!("{t:.1}"));
            println!(
                "{:>6} {:>8} {:>10.3} {:>10.3} {:>10.1} {cpu:>10} {per_cpu:>12} {:>11.3}",
                r.batch, r.seq_len, r.median_s, r.min_s, r.tokens_per_s, r.proj_tflops
            );
        }
    }
    Ok(())
}

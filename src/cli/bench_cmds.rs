//! `tyr bench forward`: tokens/s of the full-sequence forward, on a model directory or on random
//! weights of the SmolLM2-135M shape.

use std::path::PathBuf;

use crate::eval::bench::{BenchSpec, bench_forward, smollm2_135m_config};
use crate::model::random::random_source;
use crate::model::{Llama, open_hf_dir};
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
}

#[derive(Debug, clap::Args)]
pub struct ForwardArgs {
    /// A Hugging Face directory or a model saved by tyr [default: random SmolLM2-135M weights].
    #[arg(long)]
    pub model: Option<PathBuf>,
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

pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    match &args.what {
        BenchWhat::Forward(a) => forward(a),
    }
}

fn forward(a: &ForwardArgs) -> anyhow::Result<()> {
    if a.seq_len == 0 || a.batch.contains(&0) {
        anyhow::bail!("--seq-len and every --batch must be positive");
    }
    let (model, name) = match &a.model {
        Some(dir) => {
            let (cfg, src) = open_hf_dir(dir)?;
            (Llama::load(&cfg, src.as_ref())?, dir.display().to_string())
        }
        None => {
            let cfg = smollm2_135m_config();
            let src = random_source(&cfg, 0).context("building random weights")?;
            (
                Llama::load(&cfg, &src)?,
                "random SmolLM2-135M shape".to_string(),
            )
        }
    };
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
    if a.json {
        let v = serde_json::json!({ "model": name, "threads": threads, "results": results });
        println!("{v}");
    } else {
        println!(
            "forward benchmark: {name}, {threads} threads, logits: {}",
            a.logits
        );
        println!(
            "{:>6} {:>8} {:>10} {:>10} {:>10} {:>10} {:>12}",
            "batch", "seq_len", "median_s", "min_s", "tokens/s", "cpu_s", "tokens/cpu_s"
        );
        for r in &results {
            let cpu = r.median_cpu_s.map_or("-".into(), |c| format!("{c:.2}"));
            let per_cpu = r.tokens_per_cpu_s.map_or("-".into(), |t| format!("{t:.1}"));
            println!(
                "{:>6} {:>8} {:>10.3} {:>10.3} {:>10.1} {cpu:>10} {per_cpu:>12}",
                r.batch, r.seq_len, r.median_s, r.min_s, r.tokens_per_s
            );
        }
    }
    Ok(())
}

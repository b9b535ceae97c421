//! `tyr eval | generate | inspect`: commands that work on one model (a GGUF file, a Hugging Face
//! directory or a model saved by tyr).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::json;

use crate::eval::generate::{GenerateOptions, Sampling, generate};
use crate::eval::perplexity::{PerplexityOptions, perplexity, windows};
use crate::eval::tasks::{TaskReadOptions, parse_task_specs, read_task};
use crate::eval::zeroshot::{ZeroShotOptions, score_task};
use crate::model::llama::Llama;
use crate::model::open::{OpenedModel, open_model};
use crate::model::tokenizer::Tokenizer;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A GGUF file, a Hugging Face directory, or a model saved by tyr.
    #[arg(long)]
    pub model: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub on: super::DeviceArgs,
    /// A GGUF file, a Hugging Face directory, or a model saved by tyr.
    #[arg(long)]
    pub model: PathBuf,
    /// Perplexity: a plain UTF-8 text file, tokenized as one stream.
    #[arg(long, required_unless_present = "tasks", conflicts_with = "tasks")]
    pub data: Option<PathBuf>,
    /// Tokens per non-overlapping window (perplexity).
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Keep only the first N tokens of the text [default: all] (perplexity).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Zero-shot accuracy: TASK=FILE pairs, comma-separated or repeated (JSONL, or parquet by
    /// the `.parquet` extension). Tasks: arc-easy, arc-challenge, hellaswag, piqa, winogrande,
    /// boolq, openbookqa, lambada, generic. `TASK:LABEL=FILE` names a second file of one task.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub tasks: Vec<String>,
    /// Score only the first N examples of each task.
    #[arg(long, requires = "tasks")]
    pub limit: Option<usize>,
    /// Put between a task's context and each answer (lm-eval's target delimiter).
    #[arg(long, default_value = " ", requires = "tasks")]
    pub target_delimiter: String,
    /// Padded tokens per forward when scoring tasks (rows × longest row).
    #[arg(long, default_value_t = 2048, requires = "tasks")]
    pub batch_tokens: usize,
    /// Put the model's BOS token before every task context (lm-eval does for tokenizers that add
    /// BOS by default, e.g. Llama 2/3; not for SmolLM2's).
    #[arg(long, requires = "tasks")]
    pub add_bos: bool,
    /// With --json, list every example's log-likelihoods and choices.
    #[arg(long, requires = "tasks")]
    pub per_example: bool,
    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    pub json: bool,
    /// A `tokenizer.json` to use instead of the model's own.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub on: super::DeviceArgs,
    /// A GGUF file, a Hugging Face directory, or a model saved by tyr.
    #[arg(long)]
    pub model: PathBuf,
    /// The text to continue (encoded without BOS or a chat template).
    #[arg(long)]
    pub prompt: String,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sample with this temperature instead of greedy decoding.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Seed of the sampling stream (with --temperature).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A `tokenizer.json` to use instead of the model's own.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

fn open(path: &Path) -> anyhow::Result<OpenedModel> {
    open_model(path).with_context(|| format!("cannot open model {}", path.display()))
}

/// The model's tokenizer, or the `--tokenizer` file when one is given.
fn tokenizer_for(m: &mut OpenedModel, over: Option<&Path>) -> anyhow::Result<Tokenizer> {
    if let Some(p) = over {
        m.tokenizer = Some(Tokenizer::from_file(p)?);
    }
    Ok(m.tokenizer()?.clone())
}

pub fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let m = open(&args.model)?;
    let cfg = &m.config;
    let layers: Vec<_> = cfg
        .layers
        .iter()
        .enumerate()
        .map(|(l, d)| json!({"layer": l, "n_q": d.n_q, "n_kv": d.n_kv, "kv_map": d.kv_map, "d_ff": d.d_ff, "params": cfg.layer_params(l), "attn_params": cfg.attn_params(d.n_q, d.n_kv), "ffn_params": cfg.ffn_params(d.d_ff)}))
        .collect();
    // The split of the prunable linear parameters between attention and FFN.
    let (attn, ffn) = cfg.linear_params();
    let tokenizer = m
        .tokenizer
        .as_ref()
        .map(|t| json!({"vocab_size": t.vocab_size(), "path": t.path()}));
    if args.json {
        let out = json!({
            "model": args.model,
            "format": m.format,
            "config": cfg,
            "layers": layers,
            "decoder_params": cfg.decoder_params(),
            "attn_params": attn,
            "ffn_params": ffn,
            "total_params": cfg.total_params(),
            "tensors": m.source.names().len(),
            "tokenizer": tokenizer,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("model       {} ({:?})", args.model.display(), m.format);
    println!(
        "hidden {}  head_dim {}  vocab {}  layers {}  rope_theta {}  rms_eps {:e}  context {}  tied {}",
        cfg.hidden_size,
        cfg.head_dim,
        cfg.vocab_size,
        cfg.n_layers(),
        cfg.rope_theta,
        cfg.rms_norm_eps,
        cfg.max_position_embeddings,
        cfg.tie_word_embeddings
    );
    if let Some(s) = &cfg.rope_scaling {
        println!("rope scaling llama3: {s:?}");
    }
    println!(
        "{:>5} {:>5} {:>5} {:>7} {:>12} {:>12} {:>12}",
        "layer", "n_q", "n_kv", "d_ff", "attn", "ffn", "params"
    );
    for (l, d) in cfg.layers.iter().enumerate() {
        println!(
            "{l:>5} {:>5} {:>5} {:>7} {:>12} {:>12} {:>12}",
            d.n_q,
            d.n_kv,
            d.d_ff,
            cfg.attn_params(d.n_q, d.n_kv),
            cfg.ffn_params(d.d_ff),
            cfg.layer_params(l)
        );
    }
    let share = |x: usize| 100.0 * x as f64 / (attn + ffn).max(1) as f64;
    println!(
        "decoder params {}  total params {}  attention {} ({:.1}%)  FFN {} ({:.1}%)",
        cfg.decoder_params(),
        cfg.total_params(),
        attn,
        share(attn),
        ffn,
        share(ffn)
    );
    match &m.tokenizer {
        Some(t) => println!(
            "tokenizer   {} tokens ({})",
            t.vocab_size(),
            t.path().display()
        ),
        None => println!(
            "tokenizer   none: {}",
            m.tokenizer()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        ),
    }
    Ok(())
}

/// Read `path` as the evaluation text: UTF-8, not blank.
fn read_text(path: &Path) -> anyhow::Result<String> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read text file {}", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("text file {} is not UTF-8: {e}", path.display()))?;
    if text.trim().is_empty() {
        bail!("text file {} is empty", path.display());
    }
    Ok(text)
}

pub fn eval(args: &EvalArgs) -> anyhow::Result<()> {
    let Some(data) = &args.data else {
        return eval_tasks(args);
    };
    let started = Instant::now();
    let text = read_text(data)?;
    let mut m = open(&args.model)?;
    let tokenizer = tokenizer_for(&mut m, args.tokenizer.as_deref())?;
    let tokens = tokenizer
        .encode(&text)
        .with_context(|| format!("tokenizing {}", data.display()))?;
    let opts = PerplexityOptions {
        seq_len: args.seq_len,
        max_tokens: args.max_tokens,
    };
    // Check the text is long enough before loading any weights.
    windows(&tokens, &opts).with_context(|| format!("text file {}", data.display()))?;
    if args.seq_len > m.config.max_position_embeddings {
        bail!(
            "--seq-len {} exceeds the model's context of {} positions",
            args.seq_len,
            m.config.max_position_embeddings
        );
    }
    let model = Llama::load_on(&m.config, m.source.as_ref(), &args.on.compute()?)
        .with_context(|| format!("loading weights of {}", args.model.display()))?;
    let report = perplexity(&model, &tokens, &opts)?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let out = json!({
            "model": args.model,
            "data": data,
            "perplexity": report.perplexity,
            "mean_nll": report.mean_nll,
            "tokens": report.tokens,
            "windows": report.windows,
            "seq_len": report.seq_len,
            "predictions": report.predictions,
            "text_tokens": tokens.len(),
            "max_tokens": args.max_tokens,
            "seconds": seconds,
        });
        println!("{out}");
    } else {
        println!(
            "perplexity {:.4} on {} ({} windows of {} tokens, {} of {} text tokens), model {}, {:.1} s",
            report.perplexity,
            data.display(),
            report.windows,
            report.seq_len,
            report.tokens,
            tokens.len(),
            args.model.display(),
            seconds
        );
    }
    Ok(())
}

/// `tyr eval --tasks`: read every task file first (so a bad file fails before any weights load),
/// then score each task with `eval::zeroshot::score_task`.
fn eval_tasks(args: &EvalArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let specs = parse_task_specs(&args.tasks)?;
    let read_opts = TaskReadOptions {
        target_delimiter: args.target_delimiter.clone(),
        limit: args.limit,
    };
    if args.batch_tokens == 0 {
        bail!("--batch-tokens must be at least 1");
    }
    let tasks = specs
        .iter()
        .map(|s| read_task(s, &read_opts).with_context(|| format!("task {}", s.name)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut m = open(&args.model)?;
    let tokenizer = tokenizer_for(&mut m, args.tokenizer.as_deref())?;
    let model = Llama::load_on(&m.config, m.source.as_ref(), &args.on.compute()?)
        .with_context(|| format!("loading weights of {}", args.model.display()))?;
    let opts = ZeroShotOptions {
        batch_tokens: args.batch_tokens,
        add_bos: args.add_bos,
    };
    let mut results = Vec::new();
    for task in &tasks {
        let mut r = score_task(&model, &tokenizer, task, &opts)
            .with_context(|| format!("task {}", task.name))?;
        if !args.per_example {
            r.examples.clear();
        }
        results.push(r);
    }
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let by_name: serde_json::Map<String, serde_json::Value> = results
            .iter()
            .map(|r| Ok((r.name.clone(), serde_json::to_value(r)?)))
            .collect::<anyhow::Result<_>>()?;
        let out = json!({
            "model": args.model,
            "tasks": by_name,
            "limit": args.limit,
            "target_delimiter": args.target_delimiter,
            "add_bos": args.add_bos,
            "seconds": seconds,
        });
        println!("{out}");
        return Ok(());
    }
    let pct = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.2}", 100.0 * v));
    println!(
        "{:<20} {:>6} {:>7} {:>6} {:>9} {:>6} {:>9}",
        "task", "n", "acc%", "±", "acc_norm%", "±", "ppl"
    );
    for r in &results {
        println!(
            "{:<20} {:>6} {:>7} {:>6} {:>9} {:>6} {:>9}",
            r.name,
            r.n,
            pct(Some(r.acc)),
            pct(r.acc_stderr),
            pct(r.acc_norm),
            pct(r.acc_norm_stderr),
            r.perplexity.map_or("-".to_string(), |p| format!("{p:.3}"))
        );
    }
    println!("model {}, {seconds:.1} s", args.model.display());
    Ok(())
}

pub fn generate_cmd(args: &GenerateArgs) -> anyhow::Result<()> {
    let mut m = open(&args.model)?;
    let tokenizer = tokenizer_for(&mut m, args.tokenizer.as_deref())?;
    let model = Llama::load_on(&m.config, m.source.as_ref(), &args.on.compute()?)
        .with_context(|| format!("loading weights of {}", args.model.display()))?;
    let sampling = match args.temperature {
        None => Sampling::Greedy,
        Some(temperature) => Sampling::Temperature {
            temperature,
            seed: args.seed,
        },
    };
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling,
        eos_token_id: m.config.eos_token_id,
    };
    let g = generate(&model, &tokenizer, &args.prompt, &opts)?;
    println!("{}{}", args.prompt, g.text);
    Ok(())
}

//! Zero-shot accuracy by log-likelihood, in lm-eval-harness's conventions (docs/ALGORITHM.md
//! §11.1): how a (context, continuation) pair becomes tokens, the batched forward that sums the
//! continuation's log-probabilities (log-softmax only at continuation positions) and checks
//! whether greedy decoding would give it, and the metrics `acc`, `acc_norm`, `acc_bytes`, their
//! standard errors and LAMBADA's perplexity. `score_task` is the one call a command or a
//! pipeline stage needs; the task files are read by `tasks.rs`.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{D, DType, Tensor};
use serde::{Deserialize, Serialize};

use super::perplexity::LOGIT_ROWS_PER_CHUNK;
use super::tasks::{Request, Scoring, Task, TaskKind};
use crate::model::llama::Llama;
use crate::model::tokenizer::Encode;
use crate::model::{Block, Embeddings, Head, ModelConfig};
use crate::{Error, Result};

/// Bumped whenever a change to the scoring changes a result (part of `eval-tasks`' key).
pub const ZEROSHOT_VERSION: u32 = 1;

/// How to run the scoring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZeroShotOptions {
    /// Padded tokens per forward at most (rows × the longest row); a row longer than this runs
    /// alone.
    pub batch_tokens: usize,
    /// Put the model's BOS token before every context. lm-eval encodes with the Hugging Face
    /// tokenizer's default, which adds BOS for Llama-2/3 tokenizers and nothing for GPT-2-style
    /// ones such as SmolLM2's; tyr's tokenizer never adds it, so say so for the former.
    pub add_bos: bool,
}

impl Default for ZeroShotOptions {
    fn default() -> Self {
        ZeroShotOptions {
            batch_tokens: 2048,
            add_bos: false,
        }
    }
}

/// The scores of one example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExampleScore {
    /// Its line (JSONL) or row (parquet) in the task file.
    pub line: usize,
    pub gold: usize,
    /// Summed log-likelihood of each request's continuation (nats).
    pub loglikelihoods: Vec<f64>,
    /// Whether greedy decoding reproduces each continuation token for token.
    pub greedy: Vec<bool>,
    /// Tokens of each continuation.
    pub continuation_tokens: Vec<usize>,
    /// argmax of `loglikelihoods` (the first on ties, as numpy's argmax).
    pub pred: usize,
    /// argmax of the log-likelihood per character of the answer (`Choices` tasks).
    pub pred_norm: Option<usize>,
    /// argmax of the log-likelihood per UTF-8 byte of the answer (`Choices` tasks).
    pub pred_bytes: Option<usize>,
}

/// What one task scored. Accuracies are fractions in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub name: String,
    pub kind: TaskKind,
    pub path: PathBuf,
    pub scoring: Scoring,
    /// Examples scored.
    pub n: usize,
    /// `Choices`, `Contexts`: the gold answer has the highest log-likelihood. `LastWord`: greedy
    /// decoding gives the last word.
    pub acc: f64,
    /// Standard error of the mean, `sqrt(acc·(1−acc)/(n−1))`; none for one example.
    pub acc_stderr: Option<f64>,
    /// lm-eval's `acc_norm`: log-likelihood divided by the answer's length in characters.
    pub acc_norm: Option<f64>,
    pub acc_norm_stderr: Option<f64>,
    /// lm-eval's `acc_bytes`: log-likelihood divided by the answer's length in UTF-8 bytes (the
    /// same as `acc_norm` on ASCII text).
    pub acc_bytes: Option<f64>,
    pub acc_bytes_stderr: Option<f64>,
    /// `LastWord`: `exp(−mean log-likelihood of the last word)` over the examples.
    pub perplexity: Option<f64>,
    /// Continuations scored.
    pub requests: usize,
    /// Tokens run through the model, padding included.
    pub forward_tokens: usize,
    pub forwards: usize,
    pub seconds: f64,
    /// Per-example scores, in file order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<ExampleScore>,
}

/// lm-eval's split of a pair into tokens: whitespace at the end of the context moves to the front
/// of the continuation, then `context + continuation` is encoded whole and the continuation is
/// what follows the context's own token count. Neither side gets special tokens.
pub fn encode_pair(
    tokenizer: &dyn Encode,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let ctx = context.trim_end();
    let cont = format!("{}{continuation}", &context[ctx.len()..]);
    let whole = tokenizer.encode_text(&format!("{ctx}{cont}"))?;
    let ctx_ids = tokenizer.encode_text(ctx)?;
    let split = ctx_ids.len().min(whole.len());
    Ok((ctx_ids, whole[split..].to_vec()))
}

/// The context and continuation tokens of `req` as lm-eval forms them. An empty (or blank)
/// context becomes the BOS token (EOS when the model has none), or the continuation's first
/// token when that is already it; `bos` goes before every other context when `add_bos`.
pub fn request_tokens(
    tokenizer: &dyn Encode,
    req: &Request,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let (ctx, cont) = if req.context.trim().is_empty() {
        let cont = tokenizer.encode_text(&format!("{}{}", req.context, req.continuation))?;
        let prefix = bos.or(eos).ok_or_else(|| {
            Error::EvalSetting(
                "an empty context is scored after the BOS (or EOS) token, and the model has neither"
                    .into(),
            )
        })?;
        if cont.first() == Some(&prefix) {
            (cont[..1].to_vec(), cont[1..].to_vec())
        } else {
            (vec![prefix], cont)
        }
    } else {
        let (mut ctx, cont) = encode_pair(tokenizer, &req.context, &req.continuation)?;
        if add_bos {
            let b = bos.ok_or_else(|| {
                Error::EvalSetting("--add-bos: the model has no BOS token id".into())
            })?;
            ctx.insert(0, b);
        }
        (ctx, cont)
    };
    if cont.is_empty() {
        return Err(Error::EvalSetting(format!(
            "the continuation {:?} encodes to no tokens after the context",
            req.continuation
        )));
    }
    Ok((ctx, cont))
}

/// Log-probabilities of `targets` under `logits` (`[n, vocab]`, one row per target; log-softmax
/// in f32) and whether each target is the row's argmax.
pub fn target_log_probs(
    logits: &Tensor,
    targets: &[u32],
) -> candle_core::Result<(Vec<f32>, Vec<bool>)> {
    let (rows, _) = logits.dims2()?;
    if rows != targets.len() {
        candle_core::bail!("{rows} rows of logits for {} targets", targets.len());
    }
    let lp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    let idx = Tensor::from_slice(targets, (rows, 1), lp.device())?;
    let picked: Vec<f32> = lp.gather(&idx, 1)?.flatten_all()?.to_vec1()?;
    let best: Vec<u32> = lp.argmax(D::Minus1)?.to_vec1()?;
    let greedy = best.iter().zip(targets).map(|(b, t)| b == t).collect();
    Ok((picked, greedy))
}

/// Work done by `continuation_loglikelihoods`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardStats {
    pub forwards: usize,
    /// Token positions run, padding included.
    pub tokens: usize,
}

/// A model as the zero-shot scorer runs it: its settings, its head, and the last block's hidden
/// states of batches of token ids. `Llama` runs each batch through the whole model in memory;
/// `LayerByLayer` holds one layer at a time and runs a group of batches through it.
pub trait ScoringModel {
    fn config(&self) -> &ModelConfig;
    fn head(&self) -> &Head;
    /// Bytes of hidden states one call of `hidden` may hold (0: one batch per call).
    fn group_bytes(&self) -> usize {
        0
    }
    /// The hidden states after the last block, `[rows, len, hidden]`, of each batch of ids.
    fn hidden(&self, batches: &[Tensor]) -> Result<Vec<Tensor>>;
}

impl ScoringModel for Llama {
    fn config(&self) -> &ModelConfig {
        Llama::config(self)
    }
    fn head(&self) -> &Head {
        Llama::head(self)
    }
    fn hidden(&self, batches: &[Tensor]) -> Result<Vec<Tensor>> {
        batches.iter().map(|ids| Llama::hidden(self, ids)).collect()
    }
}

/// A model read one decoder layer at a time (`block(l)` builds layer l's block, and is called
/// once per group of batches): memory holds one layer, the embeddings, the head and a group's
/// hidden states (at most `group_bytes`, at least one batch). Every batch runs through the same
/// blocks in the same order as in the whole model, so the scores are the same to the bit.
pub struct LayerByLayer<'a, F: Fn(usize) -> Result<Block>> {
    pub config: &'a ModelConfig,
    pub embeddings: &'a Embeddings,
    pub head: &'a Head,
    pub block: F,
    pub group_bytes: usize,
}

impl<F: Fn(usize) -> Result<Block>> ScoringModel for LayerByLayer<'_, F> {
    fn config(&self) -> &ModelConfig {
        self.config
    }
    fn head(&self) -> &Head {
        self.head
    }
    fn group_bytes(&self) -> usize {
        self.group_bytes
    }
    fn hidden(&self, batches: &[Tensor]) -> Result<Vec<Tensor>> {
        let mut xs = batches
            .iter()
            .map(|ids| self.embeddings.forward(ids))
            .collect::<Result<Vec<_>>>()?;
        for l in 0..self.config.n_layers() {
            let b = (self.block)(l)?;
            for x in xs.iter_mut() {
                *x = b.forward(x)?;
            }
        }
        Ok(xs)
    }
}

/// For each `(context, continuation)` token pair, the summed log-likelihood of the continuation
/// given the context and whether greedy decoding reproduces it. The model reads
/// `context + continuation` without its last token, left-truncated to its context window as
/// lm-eval does. Rows are sorted by length and run `batch_tokens` padded tokens at a time,
/// padded on the right (causal attention never looks at the padding); the `lm_head` and the
/// log-softmax run only at the positions that predict continuation tokens.
pub fn continuation_loglikelihoods(
    model: &dyn ScoringModel,
    pairs: &[(Vec<u32>, Vec<u32>)],
    batch_tokens: usize,
) -> Result<(Vec<(f64, bool)>, ForwardStats)> {
    let max_len = model.config().max_position_embeddings;
    let mut inputs: Vec<Vec<u32>> = Vec::with_capacity(pairs.len());
    for (ctx, cont) in pairs {
        if ctx.is_empty() || cont.is_empty() {
            return Err(Error::EvalSetting(
                "a scored pair needs at least one context and one continuation token".into(),
            ));
        }
        if cont.len() > max_len {
            return Err(Error::EvalSetting(format!(
                "a continuation of {} tokens is longer than the model's context of {max_len}",
                cont.len()
            )));
        }
        let all: Vec<u32> = ctx.iter().chain(cont).copied().collect();
        let start = all.len().saturating_sub(max_len + 1);
        inputs.push(all[start..all.len() - 1].to_vec());
    }
    // Longest first, so each batch's padding is small and the first batch shows the peak memory.
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(inputs[i].len()));
    let mut out = vec![(0.0f64, false); pairs.len()];
    let mut stats = ForwardStats::default();
    // The batches: rows of equal padded length, longest first.
    let mut batches: Vec<(&[usize], usize)> = Vec::new();
    let mut at = 0;
    while at < order.len() {
        let len = inputs[order[at]].len();
        let rows = (batch_tokens / len.max(1)).clamp(1, order.len() - at);
        batches.push((&order[at..at + rows], len));
        at += rows;
    }
    // Groups of batches whose hidden states fit the model's group (one batch when it has none).
    let hidden_size = model.config().hidden_size;
    let mut groups: Vec<&[(&[usize], usize)]> = Vec::new();
    let mut start = 0;
    while start < batches.len() {
        let mut end = start + 1;
        let mut bytes = batches[start].0.len() * batches[start].1 * hidden_size * 4;
        while end < batches.len() {
            let more = batches[end].0.len() * batches[end].1 * hidden_size * 4;
            if bytes + more > model.group_bytes() {
                break;
            }
            bytes += more;
            end += 1;
        }
        groups.push(&batches[start..end]);
        start = end;
    }
    let mut done = 0;
    for group in groups {
        let ids = group
            .iter()
            .map(|&(batch, len)| {
                let mut ids = vec![0u32; batch.len() * len];
                for (j, &r) in batch.iter().enumerate() {
                    ids[j * len..j * len + inputs[r].len()].copy_from_slice(&inputs[r]);
                }
                Tensor::from_vec(ids, (batch.len(), len), &candle_core::Device::Cpu)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let hiddens = model.hidden(&ids)?;
        for (&(batch, len), hidden) in group.iter().zip(hiddens) {
            let rows = batch.len();
            done += rows;
            score_batch(model.head(), &hidden, batch, len, &inputs, pairs, &mut out)?;
            stats.forwards += 1;
            stats.tokens += rows * len;
            tracing::debug!(rows, len, done, of = order.len(), "zero-shot batch");
        }
    }
    Ok((out, stats))
}

/// Scores one batch from its last hidden states `[rows, len, hidden]`: adds each row's
/// continuation log-likelihood and greedy match into `out`.
fn score_batch(
    head: &Head,
    hidden: &Tensor,
    batch: &[usize],
    len: usize,
    inputs: &[Vec<u32>],
    pairs: &[(Vec<u32>, Vec<u32>)],
    out: &mut [(f64, bool)],
) -> Result<()> {
    let rows = batch.len();
    let h = hidden.dim(2)?;
    let flat = hidden.reshape((rows * len, h))?;
    // The positions that predict each continuation token, and whose they are.
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    let mut owners = Vec::new();
    for (j, &r) in batch.iter().enumerate() {
        let cont = &pairs[r].1;
        let first = inputs[r].len() - cont.len();
        for (k, &t) in cont.iter().enumerate() {
            positions.push((j * len + first + k) as u32);
            targets.push(t);
            owners.push(r);
        }
    }
    for r in batch {
        out[*r] = (0.0, true);
    }
    for start in (0..positions.len()).step_by(LOGIT_ROWS_PER_CHUNK) {
        let end = (start + LOGIT_ROWS_PER_CHUNK).min(positions.len());
        let idx = Tensor::from_slice(&positions[start..end], end - start, flat.device())?;
        let picked = flat.index_select(&idx, 0)?.unsqueeze(0)?;
        let logits = head.logits(&picked)?.squeeze(0)?;
        let (lps, greedy) = target_log_probs(&logits, &targets[start..end])?;
        for ((&r, lp), g) in owners[start..end].iter().zip(lps).zip(greedy) {
            out[r].0 += lp as f64;
            out[r].1 &= g;
        }
    }
    Ok(())
}

/// The index of the largest value, the first of equals (numpy's `argmax`).
fn argmax(xs: impl IntoIterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, x) in xs.into_iter().enumerate() {
        if x > best.1 || i == 0 {
            best = (i, x);
        }
    }
    best.0
}

/// Standard error of the mean of `xs` as lm-eval reports it: the sample standard deviation
/// over `sqrt(n)` (for 0/1 scores, `sqrt(p(1−p)/(n−1))`); none for fewer than two values.
pub fn mean_stderr(xs: &[f64]) -> Option<f64> {
    let n = xs.len();
    if n < 2 {
        return None;
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    Some((var / n as f64).sqrt())
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

/// Score every example of `task` with `model` and return the task's metrics and per-example
/// scores. This is the library entry point (`tyr eval --tasks` calls it once per task).
pub fn score_task(
    model: &dyn ScoringModel,
    tokenizer: &dyn Encode,
    task: &Task,
    opts: &ZeroShotOptions,
) -> Result<TaskResult> {
    let started = Instant::now();
    let cfg = model.config();
    let mut pairs = Vec::new();
    for ex in &task.examples {
        for req in &ex.requests {
            let p = request_tokens(
                tokenizer,
                req,
                cfg.bos_token_id,
                cfg.eos_token_id,
                opts.add_bos,
            )
            .map_err(|e| Error::EvalTaskFile {
                path: task.path.clone(),
                location: Some(format!("{} {}", task.unit, ex.line)),
                reason: e.to_string(),
            })?;
            pairs.push(p);
        }
    }
    tracing::info!(
        task = %task.name,
        examples = task.examples.len(),
        requests = pairs.len(),
        "scoring zero-shot task"
    );
    let (scores, stats) = continuation_loglikelihoods(model, &pairs, opts.batch_tokens)?;

    let scoring = task.kind.scoring();
    let mut examples = Vec::with_capacity(task.examples.len());
    let mut next = 0;
    for ex in &task.examples {
        let k = ex.requests.len();
        let mine = &scores[next..next + k];
        let conts: Vec<usize> = pairs[next..next + k].iter().map(|p| p.1.len()).collect();
        next += k;
        let lls: Vec<f64> = mine.iter().map(|s| s.0).collect();
        let greedy: Vec<bool> = mine.iter().map(|s| s.1).collect();
        let per = |len: fn(&str) -> usize| -> Option<usize> {
            (scoring == Scoring::Choices).then(|| {
                argmax(
                    lls.iter()
                        .zip(&ex.choices)
                        .map(|(ll, c)| ll / len(c) as f64),
                )
            })
        };
        examples.push(ExampleScore {
            line: ex.line,
            gold: ex.gold,
            pred: argmax(lls.iter().copied()),
            pred_norm: per(|c| c.chars().count()),
            pred_bytes: per(str::len),
            loglikelihoods: lls,
            greedy,
            continuation_tokens: conts,
        });
    }

    let hits = |f: &dyn Fn(&ExampleScore) -> bool| -> Vec<f64> {
        examples.iter().map(|e| f64::from(u8::from(f(e)))).collect()
    };
    let acc_scores = match scoring {
        Scoring::LastWord => hits(&|e| e.greedy[0]),
        Scoring::Choices | Scoring::Contexts => hits(&|e| e.pred == e.gold),
    };
    let (norm, bytes) = if scoring == Scoring::Choices {
        (
            Some(hits(&|e| e.pred_norm == Some(e.gold))),
            Some(hits(&|e| e.pred_bytes == Some(e.gold))),
        )
    } else {
        (None, None)
    };
    let perplexity = (scoring == Scoring::LastWord).then(|| {
        let lls: Vec<f64> = examples.iter().map(|e| e.loglikelihoods[0]).collect();
        (-mean(&lls)).exp()
    });
    let result = TaskResult {
        name: task.name.clone(),
        kind: task.kind,
        path: task.path.clone(),
        scoring,
        n: examples.len(),
        acc: mean(&acc_scores),
        acc_stderr: mean_stderr(&acc_scores),
        acc_norm: norm.as_deref().map(mean),
        acc_norm_stderr: norm.as_deref().and_then(mean_stderr),
        acc_bytes: bytes.as_deref().map(mean),
        acc_bytes_stderr: bytes.as_deref().and_then(mean_stderr),
        perplexity,
        requests: pairs.len(),
        forward_tokens: stats.tokens,
        forwards: stats.forwards,
        seconds: started.elapsed().as_secs_f64(),
        examples,
    };
    tracing::info!(task = %task.name, acc = result.acc, acc_norm = ?result.acc_norm, seconds = result.seconds, "zero-shot task scored");
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn stderr_of_a_proportion_matches_the_closed_form() {
        let xs = [1.0, 0.0, 1.0, 1.0, 0.0];
        let p: f64 = 0.6;
        let want = (p * (1.0 - p) / 4.0).sqrt();
        assert!((mean_stderr(&xs).unwrap() - want).abs() < 1e-12);
        assert_eq!(mean_stderr(&[1.0]), None);
    }

    #[test]
    fn argmax_takes_the_first_of_equals() {
        assert_eq!(argmax([-3.0, -1.0, -1.0, -2.0]), 1);
        assert_eq!(argmax([f64::NEG_INFINITY, f64::NEG_INFINITY]), 0);
    }

    #[test]
    fn target_log_probs_picks_targets_and_flags_the_argmax() -> candle_core::Result<()> {
        // Row 0: p(1) = 3/5 and 1 is the argmax. Row 1: target 2 has p = 1/(e^2 + 2), not the max.
        let l = Tensor::new(&[[0f32, 3f32.ln(), 0.0], [2.0, 0.0, 0.0]], &Device::Cpu)?;
        let (lp, g) = target_log_probs(&l, &[1, 2])?;
        assert!((lp[0] as f64 - (3.0f64 / 5.0).ln()).abs() < 1e-6);
        let z = 2f64.exp() + 2.0;
        assert!((lp[1] as f64 + z.ln()).abs() < 1e-6);
        assert_eq!(g, vec![true, false]);
        Ok(())
    }
}

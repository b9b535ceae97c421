//! Perplexity by the ALGORITHM.md §11 protocol: the text as one token stream (no BOS), cut to
//! `max_tokens`, split into non-overlapping windows of `seq_len` (the partial tail dropped), each
//! window scored on its `seq_len − 1` next-token predictions with an f32 log-softmax, and
//! `ppl = exp(mean NLL)` over all predictions. This equals averaging transformers' `loss` with
//! `labels = input_ids` over the windows.

use candle_core::{D, DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::Block;
use crate::model::llama::{Embeddings, Head, Llama};
use crate::{Error, Result};

/// What to score.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerplexityOptions {
    /// Tokens per window (S), at least 2.
    pub seq_len: usize,
    /// Keep only the first `max_tokens` tokens of the stream; `None` keeps all.
    pub max_tokens: Option<usize>,
}

/// The result, with everything needed to report it honestly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerplexityReport {
    pub perplexity: f64,
    /// Mean negative log-likelihood per prediction (nats).
    pub mean_nll: f64,
    /// Tokens scored as windows: `windows · seq_len`.
    pub tokens: usize,
    /// Tokens in the stream after the `max_tokens` cut (before dropping the partial tail).
    pub stream_tokens: usize,
    pub windows: usize,
    pub seq_len: usize,
    /// Next-token predictions scored: `windows · (seq_len − 1)`.
    pub predictions: usize,
}

/// The windows of `tokens` the protocol scores: `[i·S, (i+1)·S)` for `i < ⌊N/S⌋`, after the
/// `max_tokens` cut. An error if not even one window fits.
pub fn windows<'a>(tokens: &'a [u32], opts: &PerplexityOptions) -> Result<Vec<&'a [u32]>> {
    if opts.seq_len < 2 {
        return Err(Error::EvalSetting(format!(
            "--seq-len must be at least 2, got {}",
            opts.seq_len
        )));
    }
    let n = opts
        .max_tokens
        .map_or(tokens.len(), |m| m.min(tokens.len()));
    if n < opts.seq_len {
        return Err(Error::TextTooShort {
            tokens: n,
            seq_len: opts.seq_len,
        });
    }
    Ok(tokens[..n].chunks_exact(opts.seq_len).collect())
}

/// Rows of logits computed at once when scoring a window with a model: peak memory is
/// `rows × vocab` floats instead of `seq_len × vocab` (800 MB for S = 4096 and a 49k vocab).
pub const LOGIT_ROWS_PER_CHUNK: usize = 512;

/// Sum of the NLL of `targets` under `logits` (`[n, vocab]`, one row per target, any float dtype;
/// the log-softmax is taken in f32), as f64.
pub fn targets_nll(logits: &Tensor, targets: &[u32]) -> candle_core::Result<f64> {
    let (rows, _vocab) = logits.dims2()?;
    if rows != targets.len() {
        candle_core::bail!("{rows} rows of logits for {} targets", targets.len());
    }
    let log_probs = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    let idx =
        Tensor::from_slice(targets, (rows, 1), &Device::Cpu)?.to_device(log_probs.device())?;
    let picked: Vec<f32> = log_probs.gather(&idx, 1)?.flatten_all()?.to_vec1()?;
    Ok(picked.iter().map(|&lp| -(lp as f64)).sum())
}

/// Sum of the NLL of `window[1..]` under the window's `logits` (`[S, vocab]`); the last row
/// predicts past the window and is not scored.
pub fn window_nll(logits: &Tensor, window: &[u32]) -> candle_core::Result<f64> {
    let s = window.len();
    if logits.dim(0)? != s {
        candle_core::bail!(
            "logits have {} rows for a window of {s} tokens",
            logits.dim(0)?
        );
    }
    targets_nll(&logits.narrow(0, 0, s - 1)?, &window[1..])
}

/// Sum of the NLL of `window[1..]` under `model`, run on the window from position 0 (no cache).
/// The `lm_head` runs on `LOGIT_ROWS_PER_CHUNK` positions at a time.
pub fn model_window_nll(model: &Llama, window: &[u32]) -> Result<f64> {
    let ids = Tensor::new(window, &Device::Cpu)?.unsqueeze(0)?;
    // [1, S, hidden]
    let hidden = model.hidden(&ids)?;
    hidden_window_nll(model.head(), &hidden, window)
}

/// The NLL sum of `window[1..]` from the window's final hidden states (`[1, S, hidden]`).
fn hidden_window_nll(head: &Head, hidden: &Tensor, window: &[u32]) -> Result<f64> {
    let predictions = window.len() - 1;
    let mut total = 0.0;
    let mut start = 0;
    while start < predictions {
        let rows = LOGIT_ROWS_PER_CHUNK.min(predictions - start);
        // [1, rows, hidden] → [rows, vocab]
        let logits = head.logits(&hidden.narrow(1, start, rows)?)?.squeeze(0)?;
        total += targets_nll(&logits, &window[start + 1..start + 1 + rows])?;
        start += rows;
    }
    Ok(total)
}

/// Score `tokens` by the protocol; `nll_of(window)` returns the NLL sum of `window[1..]` with
/// the window run as a fresh sequence (see `model_window_nll`, `window_nll`).
pub fn perplexity_with<F>(
    tokens: &[u32],
    opts: &PerplexityOptions,
    mut nll_of: F,
) -> Result<PerplexityReport>
where
    F: FnMut(&[u32]) -> Result<f64>,
{
    let wins = windows(tokens, opts)?;
    let mut sums = Vec::with_capacity(wins.len());
    for w in &wins {
        sums.push(nll_of(w)?);
    }
    Ok(report(tokens, opts, &wins, &sums))
}

/// Perplexity of a model given layer by layer: `block(l)` builds decoder layer `l` when asked,
/// and each is dropped after it has run on the windows, so memory holds one layer, the
/// embeddings, the head and the hidden states of a group of windows (at most `group_bytes`,
/// at least one window) instead of the whole model. Every window runs alone through the same
/// blocks as in `perplexity`, so the result is the same to the bit. With several groups each
/// block is built once per group.
pub fn perplexity_layer_by_layer<F>(
    embeddings: &Embeddings,
    n_layers: usize,
    mut block: F,
    head: &Head,
    tokens: &[u32],
    opts: &PerplexityOptions,
    group_bytes: usize,
) -> Result<PerplexityReport>
where
    F: FnMut(usize) -> Result<Block>,
{
    let wins = windows(tokens, opts)?;
    let hidden_size = embeddings.weight().dim(1)?;
    let per_window = (opts.seq_len * hidden_size * 4).max(1);
    let group = (group_bytes / per_window).clamp(1, wins.len());
    let mut sums = Vec::with_capacity(wins.len());
    for ws in wins.chunks(group) {
        let mut xs = ws
            .iter()
            .map(|w| embeddings.forward(&Tensor::new(*w, &Device::Cpu)?.unsqueeze(0)?))
            .collect::<Result<Vec<Tensor>>>()?;
        for l in 0..n_layers {
            let b = block(l)?;
            for x in xs.iter_mut() {
                *x = b.forward(x)?;
            }
        }
        for (w, x) in ws.iter().zip(&xs) {
            sums.push(hidden_window_nll(head, x, w)?);
        }
    }
    Ok(report(tokens, opts, &wins, &sums))
}

/// The report of windows `wins` of `tokens` with NLL sums `sums`, added in window order.
fn report(
    tokens: &[u32],
    opts: &PerplexityOptions,
    wins: &[&[u32]],
    sums: &[f64],
) -> PerplexityReport {
    let mut nll = 0.0f64;
    for (i, (w, &sum)) in wins.iter().zip(sums).enumerate() {
        tracing::debug!(
            window = i,
            mean_nll = sum / (w.len() - 1) as f64,
            "perplexity window"
        );
        nll += sum;
    }
    let predictions = wins.len() * (opts.seq_len - 1);
    let mean_nll = nll / predictions as f64;
    PerplexityReport {
        perplexity: mean_nll.exp(),
        mean_nll,
        tokens: wins.len() * opts.seq_len,
        stream_tokens: opts
            .max_tokens
            .map_or(tokens.len(), |m| m.min(tokens.len())),
        windows: wins.len(),
        seq_len: opts.seq_len,
        predictions,
    }
}

/// Perplexity of `model` on `tokens` by the protocol.
pub fn perplexity(
    model: &Llama,
    tokens: &[u32],
    opts: &PerplexityOptions,
) -> Result<PerplexityReport> {
    perplexity_with(tokens, opts, |w| model_window_nll(model, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(seq_len: usize, max_tokens: Option<usize>) -> PerplexityOptions {
        PerplexityOptions {
            seq_len,
            max_tokens,
        }
    }

    #[test]
    fn windows_drop_the_partial_tail_and_respect_max_tokens() -> Result<()> {
        let toks: Vec<u32> = (0..10).collect();
        assert_eq!(
            windows(&toks, &opts(4, None))?,
            vec![&toks[0..4], &toks[4..8]]
        );
        assert_eq!(windows(&toks, &opts(3, Some(7)))?.len(), 2);
        Ok(())
    }

    #[test]
    fn a_text_shorter_than_one_window_is_an_error() {
        let toks: Vec<u32> = (0..5).collect();
        assert!(matches!(
            windows(&toks, &opts(6, None)),
            Err(Error::TextTooShort {
                tokens: 5,
                seq_len: 6
            })
        ));
        assert!(matches!(
            windows(&toks, &opts(1, None)),
            Err(Error::EvalSetting(_))
        ));
    }

    #[test]
    fn uniform_logits_give_the_vocab_size_as_perplexity() -> Result<()> {
        let toks: Vec<u32> = vec![1, 2, 3, 0, 1, 2, 3, 0, 1];
        let r = perplexity_with(&toks, &opts(4, None), |w| {
            let uniform = Tensor::zeros((w.len(), 7), DType::F32, &Device::Cpu)?;
            Ok(window_nll(&uniform, w)?)
        })?;
        assert_eq!(
            (r.windows, r.tokens, r.predictions, r.stream_tokens),
            (2, 8, 6, 9)
        );
        // ln 7 in f32, exponentiated.
        assert!((r.perplexity - 7.0).abs() < 1e-5, "{}", r.perplexity);
        Ok(())
    }

    #[test]
    fn nll_scores_only_next_token_predictions() -> candle_core::Result<()> {
        // Row 0 predicts token 1 with logit ln 3 against two zeros: p = 3/5. Row 1 (the last) is
        // never scored, so its huge logit must not matter.
        let l = Tensor::new(&[[0f32, 3f32.ln(), 0.0], [100.0, 0.0, 0.0]], &Device::Cpu)?;
        let nll = window_nll(&l, &[2, 1])?;
        assert!((nll - (5.0f64 / 3.0).ln()).abs() < 1e-6, "{nll}");
        Ok(())
    }
}

//! Perplexity by the ALGORITHM.md §11 protocol: the text as one token stream (no BOS), cut to
//! `max_tokens`, split into non-overlapping windows of `seq_len` (the partial tail dropped), each
//! window scored on its `seq_len − 1` next-token predictions with an f32 log-softmax, and
//! `ppl = exp(mean NLL)` over all predictions. This equals averaging transformers' `loss` with
//! `labels = input_ids` over the windows.

use candle_core::{D, DType, Device, Tensor};
use serde::{Deserialize, Serialize};

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

/// Sum of the NLL of `window[1..]` under `logits` (`[S, vocab]`, any float dtype; the
/// log-softmax is taken in f32), as f64.
pub fn window_nll(logits: &Tensor, window: &[u32]) -> candle_core::Result<f64> {
    let s = window.len();
    let (rows, _vocab) = logits.dims2()?;
    if rows != s {
        candle_core::bail!("logits have {rows} rows for a window of {s} tokens");
    }
    // [S-1, vocab]: the predictions for tokens 1..S.
    let logits = logits.narrow(0, 0, s - 1)?.to_dtype(DType::F32)?;
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let targets = Tensor::from_slice(&window[1..], (s - 1, 1), &Device::Cpu)?
        .to_device(log_probs.device())?;
    let picked: Vec<f32> = log_probs.gather(&targets, 1)?.flatten_all()?.to_vec1()?;
    Ok(picked.iter().map(|&lp| -(lp as f64)).sum())
}

/// Score `tokens` by the protocol. `logits_of(window)` returns the `[S, vocab]` logits of one
/// window run from position 0 (a fresh sequence, no cache).
pub fn perplexity<F>(
    tokens: &[u32],
    opts: &PerplexityOptions,
    mut logits_of: F,
) -> Result<PerplexityReport>
where
    F: FnMut(&[u32]) -> Result<Tensor>,
{
    let wins = windows(tokens, opts)?;
    let mut nll = 0.0f64;
    for (i, w) in wins.iter().enumerate() {
        let logits = logits_of(w)?;
        let sum = window_nll(&logits, w)?;
        tracing::debug!(
            window = i,
            mean_nll = sum / (w.len() - 1) as f64,
            "perplexity window"
        );
        nll += sum;
    }
    let predictions = wins.len() * (opts.seq_len - 1);
    let mean_nll = nll / predictions as f64;
    Ok(PerplexityReport {
        perplexity: mean_nll.exp(),
        mean_nll,
        tokens: wins.len() * opts.seq_len,
        stream_tokens: opts
            .max_tokens
            .map_or(tokens.len(), |m| m.min(tokens.len())),
        windows: wins.len(),
        seq_len: opts.seq_len,
        predictions,
    })
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
        let r = perplexity(&toks, &opts(4, None), |w| {
            Ok(Tensor::zeros((w.len(), 7), DType::F32, &Device::Cpu)?)
        })?;
        assert_eq!(
            (r.windows, r.tokens, r.predictions, r.stream_tokens),
            (2, 8, 6, 9)
        );
        assert!((r.perplexity - 7.0).abs() < 1e-9, "{}", r.perplexity);
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

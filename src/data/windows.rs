//! Evaluation windows (ALGORITHM.md §11): the held-out text tokenized as one stream with no
//! special tokens, optionally cut to `max_tokens`, split into non-overlapping windows
//! `[i·S, (i+1)·S)` for i < ⌊N/S⌋; the trailing partial window is dropped.

use serde::{Deserialize, Serialize};

use crate::data::pool::Tokenize;
use crate::{Error, Result};

/// The windows to score, with the numbers a perplexity report must state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalWindows {
    /// S, tokens per window.
    pub seq_len: usize,
    /// Tokens in the stream before any cut.
    pub stream_tokens: usize,
    /// Tokens covered by the windows (`windows.len() · seq_len`).
    pub tokens: usize,
    pub windows: Vec<Vec<u32>>,
}

/// Join `documents` with `separator` (WikiText-2 test: its rows with `"\n\n"`) and tokenize the
/// result once, as one stream.
pub fn token_stream(
    documents: &[String],
    separator: &str,
    tokenize: Tokenize<'_>,
) -> Result<Vec<u32>> {
    tokenize(&documents.join(separator))
}

/// Cut `stream` to `max_tokens` (if given) and split it into windows of `seq_len`.
pub fn eval_windows(
    stream: &[u32],
    seq_len: usize,
    max_tokens: Option<usize>,
) -> Result<EvalWindows> {
    if seq_len < 2 {
        // A window of one token has no next-token prediction to score.
        return Err(Error::DataParam {
            field: "seq-len".into(),
            reason: format!("is {seq_len}; a window needs at least 2 tokens"),
        });
    }
    let used = match max_tokens {
        Some(m) => &stream[..stream.len().min(m)],
        None => stream,
    };
    if used.len() < seq_len {
        return Err(Error::DataTooShort {
            tokens: used.len(),
            seq_len,
        });
    }
    let windows: Vec<Vec<u32>> = used.chunks_exact(seq_len).map(<[u32]>::to_vec).collect();
    Ok(EvalWindows {
        seq_len,
        stream_tokens: stream.len(),
        tokens: windows.len() * seq_len,
        windows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trailing_partial_window_is_dropped() {
        let s: Vec<u32> = (0..10).collect();
        let w = eval_windows(&s, 3, None).unwrap();
        assert_eq!(w.windows, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8]]);
        assert_eq!((w.tokens, w.stream_tokens), (9, 10));
    }

    #[test]
    fn max_tokens_cuts_the_stream_first() {
        let s: Vec<u32> = (0..10).collect();
        let w = eval_windows(&s, 3, Some(7)).unwrap();
        assert_eq!(w.windows.len(), 2);
        assert_eq!(w.windows[1], vec![3, 4, 5]);
    }

    #[test]
    fn a_stream_shorter_than_one_window_says_how_long_it_was() {
        let s: Vec<u32> = (0..5).collect();
        let err = eval_windows(&s, 8, None).unwrap_err();
        assert!(err.to_string().contains("5 tokens"), "{err}");
        let err = eval_windows(&s, 4, Some(3)).unwrap_err();
        assert!(err.to_string().contains("3 tokens"), "{err}");
    }
}

//! The calibration pool (ALGORITHM.md §4): documents shuffled with the seed, tokenized without
//! special tokens, cut into `seq_len` pieces with each document's leftover tail kept as a shorter
//! piece, until `calib_tokens` tokens are collected. The same pool feeds the statistics, the
//! teacher and the search, so it is deterministic and carries a digest.

use serde::{Deserialize, Serialize};

use crate::rng::Stream;
use crate::{Error, Result};

/// Turns text into token ids, with no special tokens (no BOS). Given by the model layer.
pub type Tokenize<'a> = &'a dyn Fn(&str) -> Result<Vec<u32>>;

/// What shapes the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolParams {
    /// Longest piece, in tokens (each piece is forwarded alone from position 0).
    pub seq_len: usize,
    /// Tokens wanted in the whole pool.
    pub calib_tokens: usize,
    /// Seed of the document shuffle (stream purpose `"calib-pool"`).
    pub seed: u64,
}

/// Token pieces, in the order they are forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub pieces: Vec<Vec<u32>>,
}

/// How the pool came out, for the stage manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolReport {
    pub requested_tokens: usize,
    pub total_tokens: usize,
    pub pieces: usize,
    /// Pieces shorter than `seq_len` (document tails and the final cut piece).
    pub short_pieces: usize,
    pub documents_used: usize,
    pub documents_total: usize,
    /// True when the corpus ran out before `calib_tokens`: the pool holds all of it.
    pub corpus_exhausted: bool,
}

impl Pool {
    pub fn total_tokens(&self) -> usize {
        self.pieces.iter().map(Vec::len).sum()
    }

    /// BLAKE3 (hex) over the piece count, each piece's length and its tokens (little-endian):
    /// equal exactly when the pieces are equal.
    pub fn digest(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"tyr-pool-v1");
        h.update(&(self.pieces.len() as u64).to_le_bytes());
        for piece in &self.pieces {
            h.update(&(piece.len() as u64).to_le_bytes());
            for t in piece {
                h.update(&t.to_le_bytes());
            }
        }
        h.finalize().to_hex().to_string()
    }
}

/// Build the pool from `documents`. Documents are tokenized lazily in shuffled order, so a huge
/// corpus costs only the documents the pool needs.
pub fn build_pool(
    documents: &[String],
    tokenize: Tokenize<'_>,
    params: &PoolParams,
) -> Result<(Pool, PoolReport)> {
    if params.seq_len == 0 {
        return Err(param("seq-len", "must be at least 1 token"));
    }
    if params.calib_tokens == 0 {
        return Err(param("calib-tokens", "must be at least 1 token"));
    }
    let mut order: Vec<usize> = (0..documents.len()).collect();
    Stream::new(params.seed, "calib-pool", &[]).shuffle(&mut order);

    let mut pieces = Vec::new();
    let mut total = 0usize;
    let mut documents_used = 0usize;
    for &d in &order {
        if total == params.calib_tokens {
            break;
        }
        let tokens = tokenize(&documents[d])?;
        if tokens.is_empty() {
            continue;
        }
        documents_used += 1;
        for chunk in tokens.chunks(params.seq_len) {
            let room = params.calib_tokens - total;
            let take = chunk.len().min(room);
            pieces.push(chunk[..take].to_vec());
            total += take;
            if total == params.calib_tokens {
                break;
            }
        }
    }
    if total == 0 {
        return Err(param(
            "calib",
            &format!(
                "the {} calibration documents tokenize to no tokens",
                documents.len()
            ),
        ));
    }
    let corpus_exhausted = total < params.calib_tokens;
    if corpus_exhausted {
        tracing::warn!(
            requested = params.calib_tokens,
            available = total,
            "calibration corpus is smaller than calib-tokens: using all of it"
        );
    }
    let report = PoolReport {
        requested_tokens: params.calib_tokens,
        total_tokens: total,
        pieces: pieces.len(),
        short_pieces: pieces.iter().filter(|p| p.len() < params.seq_len).count(),
        documents_used,
        documents_total: documents.len(),
        corpus_exhausted,
    };
    Ok((Pool { pieces }, report))
}

fn param(field: &str, reason: &str) -> Error {
    Error::DataParam {
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per byte: lengths are easy to reason about.
    fn bytes(s: &str) -> Result<Vec<u32>> {
        Ok(s.bytes().map(u32::from).collect())
    }

    fn docs(lens: &[usize]) -> Vec<String> {
        lens.iter()
            .enumerate()
            .map(|(i, &n)| std::iter::repeat_n(char::from(b'a' + i as u8), n).collect())
            .collect()
    }

    #[test]
    fn tails_are_kept_as_shorter_pieces() {
        let d = docs(&[10]);
        let p = PoolParams {
            seq_len: 4,
            calib_tokens: 100,
            seed: 0,
        };
        let (pool, report) = build_pool(&d, &bytes, &p).unwrap();
        let lens: Vec<usize> = pool.pieces.iter().map(Vec::len).collect();
        assert_eq!(lens, vec![4, 4, 2]);
        assert!(report.corpus_exhausted);
        assert_eq!(report.total_tokens, 10);
        assert_eq!(report.short_pieces, 1);
    }

    #[test]
    fn the_pool_stops_at_exactly_calib_tokens() {
        let d = docs(&[7, 9, 5, 11]);
        let p = PoolParams {
            seq_len: 4,
            calib_tokens: 13,
            seed: 3,
        };
        let (pool, report) = build_pool(&d, &bytes, &p).unwrap();
        assert_eq!(pool.total_tokens(), 13);
        assert!(!report.corpus_exhausted);
        assert!(pool.pieces.iter().all(|x| !x.is_empty() && x.len() <= 4));
        // Every piece comes from one document: all its tokens are equal.
        assert!(pool.pieces.iter().all(|x| x.iter().all(|&t| t == x[0])));
    }

    #[test]
    fn zero_lengths_are_rejected() {
        let d = docs(&[3]);
        let p = PoolParams {
            seq_len: 0,
            calib_tokens: 4,
            seed: 0,
        };
        assert!(build_pool(&d, &bytes, &p).is_err());
    }
}

//! The calibration pool (ALGORITHM.md §4): documents shuffled with the seed, tokenized without
//! special tokens, cut into `seq_len` pieces with each document's leftover tail kept as a shorter
//! piece, until `calib_tokens` tokens are collected. The same pool feeds the statistics, the
//! teacher and the search, so it is deterministic and carries a digest.
//!
//! A pool may mix several corpora ([`build_mixed_pool`]): each gets a share of `calib_tokens`
//! by its weight, drawn as above from its own seeded shuffle; a corpus that runs out hands what
//! it could not fill to the others by their weights; the pieces of all of them are then shuffled
//! together, so every prefix of the pool (what the search's early selection stages score) holds
//! each corpus in about its share. One corpus gives exactly [`build_pool`]'s pool.
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
    /// Per corpus, in pipeline order (one entry for a single corpus).
    pub sources: Vec<SourceShare>,
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
    check(params)?;
    let share = draw(
        documents,
        tokenize,
        params.seq_len,
        params.calib_tokens,
        Stream::new(params.seed, "calib-pool", &[]),
    )?;
    if share.tokens == 0 {
        return Err(no_tokens(documents.len()));
    }
    let sources = vec![share.report(documents.len(), params.calib_tokens)];
    Ok(finish(params, share.pieces, sources))
}

/// One corpus of a mix: its documents and its weight (any positive finite number; the shares
/// are the weights over their sum).
pub struct MixPart<'a> {
    pub documents: &'a [String],
    pub weight: f64,
}

/// Build one pool from several corpora (see the module docs). `parts` in pipeline order; a
/// single part gives exactly [`build_pool`]'s result.
pub fn build_mixed_pool(
    parts: &[MixPart<'_>],
    tokenize: Tokenize<'_>,
    params: &PoolParams,
) -> Result<(Pool, PoolReport)> {
    check(params)?;
    if let [one] = parts {
        return build_pool(one.documents, tokenize, params);
    }
    if parts.is_empty() {
        return Err(param("calib", "needs at least one source"));
    }
    for (i, p) in parts.iter().enumerate() {
        if !(p.weight > 0.0 && p.weight.is_finite()) {
            return Err(param(
                "calib",
                &format!("source {}: weight {} must be positive", i + 1, p.weight),
            ));
        }
    }
    // Shares by weight; a corpus that runs out passes the rest of its share to the others.
    // Drawing more from a corpus extends its earlier draw (same shuffle, same cut), so each
    // pass only grows the open corpora's quotas, and at most one pass per corpus is needed.
    let weights: Vec<f64> = parts.iter().map(|p| p.weight).collect();
    let by_weight = split(params.calib_tokens, &weights, &vec![true; parts.len()]);
    let mut quota = by_weight.clone();
    let mut shares: Vec<Option<Share>> = (0..parts.len()).map(|_| None).collect();
    let mut closed = vec![false; parts.len()];
    loop {
        let mut total = 0;
        for (i, p) in parts.iter().enumerate() {
            if shares[i].as_ref().is_none_or(|s| s.requested != quota[i]) {
                let stream = Stream::new(params.seed, "calib-pool", &[i as u64]);
                shares[i] = Some(draw(
                    p.documents,
                    tokenize,
                    params.seq_len,
                    quota[i],
                    stream,
                )?);
            }
            let s = shares[i].as_ref().expect("drawn above");
            closed[i] |= s.tokens < s.requested;
            total += s.tokens;
        }
        let short = params.calib_tokens.saturating_sub(total);
        if short == 0 || closed.iter().all(|&c| c) {
            break;
        }
        let open: Vec<bool> = closed.iter().map(|c| !c).collect();
        for (q, e) in quota.iter_mut().zip(split(short, &weights, &open)) {
            *q += e;
        }
    }
    let shares: Vec<Share> = shares.into_iter().map(|s| s.expect("drawn")).collect();
    if shares.iter().all(|s| s.tokens == 0) {
        let docs: usize = parts.iter().map(|p| p.documents.len()).sum();
        return Err(no_tokens(docs));
    }
    let mut sources = Vec::with_capacity(parts.len());
    let mut pieces = Vec::new();
    for (i, ((s, p), w)) in shares.into_iter().zip(parts).zip(by_weight).enumerate() {
        if s.tokens < w {
            tracing::warn!(
                source = i + 1,
                share = w,
                available = s.tokens,
                "calibration source is smaller than its share: the others fill the rest"
            );
        }
        sources.push(s.report(p.documents.len(), w));
        pieces.extend(s.pieces);
    }
    Stream::new(params.seed, "calib-mix", &[]).shuffle(&mut pieces);
    Ok(finish(params, pieces, sources))
}

/// The pool and its report from the pieces in their final order and each source's share; warns
/// when the sources together held fewer than `calib-tokens`.
fn finish(
    params: &PoolParams,
    pieces: Vec<Vec<u32>>,
    sources: Vec<SourceShare>,
) -> (Pool, PoolReport) {
    let total_tokens: usize = sources.iter().map(|s| s.tokens).sum();
    let corpus_exhausted = total_tokens < params.calib_tokens;
    if corpus_exhausted {
        tracing::warn!(
            requested = params.calib_tokens,
            available = total_tokens,
            "calibration data is smaller than calib-tokens: using all of it"
        );
    }
    let report = PoolReport {
        requested_tokens: params.calib_tokens,
        total_tokens,
        pieces: pieces.len(),
        short_pieces: pieces.iter().filter(|p| p.len() < params.seq_len).count(),
        documents_used: sources.iter().map(|s| s.documents_used).sum(),
        documents_total: sources.iter().map(|s| s.documents_total).sum(),
        corpus_exhausted,
        sources,
    };
    (Pool { pieces }, report)
}

/// What one corpus contributed to a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceShare {
    /// Its share of `calib-tokens` by weight.
    pub requested_tokens: usize,
    /// What it gave (more than the share when another corpus ran out, less when it did).
    pub tokens: usize,
    pub pieces: usize,
    pub documents_used: usize,
    pub documents_total: usize,
}

/// One corpus's draw: up to `requested` tokens in pieces.
struct Share {
    requested: usize,
    tokens: usize,
    documents_used: usize,
    pieces: Vec<Vec<u32>>,
}

impl Share {
    fn report(&self, documents_total: usize, share: usize) -> SourceShare {
        SourceShare {
            requested_tokens: share,
            tokens: self.tokens,
            pieces: self.pieces.len(),
            documents_used: self.documents_used,
            documents_total,
        }
    }
}

fn check(params: &PoolParams) -> Result<()> {
    if params.seq_len == 0 {
        return Err(param("seq-len", "must be at least 1 token"));
    }
    if params.calib_tokens == 0 {
        return Err(param("calib-tokens", "must be at least 1 token"));
    }
    Ok(())
}

fn no_tokens(documents: usize) -> Error {
    param(
        "calib",
        &format!("the {documents} calibration documents tokenize to no tokens"),
    )
}

/// Up to `want` tokens of `documents`, in their order under `stream`'s shuffle, cut into pieces
/// of at most `seq_len`.
fn draw(
    documents: &[String],
    tokenize: Tokenize<'_>,
    seq_len: usize,
    want: usize,
    mut stream: Stream,
) -> Result<Share> {
    let mut order: Vec<usize> = (0..documents.len()).collect();
    stream.shuffle(&mut order);
    let mut pieces = Vec::new();
    let mut total = 0usize;
    let mut documents_used = 0usize;
    for &d in &order {
        if total == want {
            break;
        }
        let tokens = tokenize(&documents[d])?;
        if tokens.is_empty() {
            continue;
        }
        documents_used += 1;
        for chunk in tokens.chunks(seq_len) {
            let take = chunk.len().min(want - total);
            pieces.push(chunk[..take].to_vec());
            total += take;
            if total == want {
                break;
            }
        }
    }
    Ok(Share {
        requested: want,
        tokens: total,
        documents_used,
        pieces,
    })
}

/// `total` split by `weights` over the entries where `open` holds (largest remainder, ties to
/// the earlier entry), so the parts sum to `total` exactly.
fn split(total: usize, weights: &[f64], open: &[bool]) -> Vec<usize> {
    let sum: f64 = weights
        .iter()
        .zip(open)
        .filter(|(_, o)| **o)
        .map(|(w, _)| w)
        .sum();
    let mut out = vec![0usize; weights.len()];
    if sum <= 0.0 {
        return out;
    }
    let mut rem: Vec<(f64, usize)> = Vec::new();
    let mut given = 0usize;
    for i in 0..weights.len() {
        if !open[i] {
            continue;
        }
        let exact = total as f64 * weights[i] / sum;
        let floor = (exact.floor() as usize).min(total);
        out[i] = floor;
        given += floor;
        rem.push((exact - floor as f64, i));
    }
    rem.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in rem.iter().cycle().take(total.saturating_sub(given)) {
        out[i] += 1;
    }
    out
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

    /// Documents of one letter each, `n` documents of `len` bytes: which corpus a piece came
    /// from is its letter.
    fn corpus(letter: u8, n: usize, len: usize) -> Vec<String> {
        (0..n)
            .map(|_| std::iter::repeat_n(char::from(letter), len).collect())
            .collect()
    }

    fn tokens_of(pool: &Pool, letter: u8) -> usize {
        pool.pieces
            .iter()
            .filter(|p| p[0] == u32::from(letter))
            .map(Vec::len)
            .sum()
    }

    #[test]
    fn a_mix_gives_each_corpus_its_weighted_share_interleaved() {
        let (a, b, c) = (
            corpus(b'a', 50, 10),
            corpus(b'b', 50, 10),
            corpus(b'c', 50, 10),
        );
        let parts = [
            MixPart {
                documents: &a,
                weight: 2.0,
            },
            MixPart {
                documents: &b,
                weight: 1.0,
            },
            MixPart {
                documents: &c,
                weight: 1.0,
            },
        ];
        let p = PoolParams {
            seq_len: 4,
            calib_tokens: 201,
            seed: 5,
        };
        let (pool, report) = build_mixed_pool(&parts, &bytes, &p).unwrap();
        assert_eq!(pool.total_tokens(), 201);
        // 100.5 / 50.25 / 50.25: the largest remainder goes to the first.
        assert_eq!(
            [
                tokens_of(&pool, b'a'),
                tokens_of(&pool, b'b'),
                tokens_of(&pool, b'c')
            ],
            [101, 50, 50]
        );
        let shares: Vec<usize> = report.sources.iter().map(|s| s.tokens).collect();
        assert_eq!(shares, vec![101, 50, 50]);
        // Shuffled together, not one corpus after another: the first third holds every one.
        let head = &pool.pieces[..pool.pieces.len() / 3];
        for letter in [b'a', b'b', b'c'] {
            assert!(head.iter().any(|x| x[0] == u32::from(letter)));
        }
        // Same inputs, same pool; another seed, another order.
        assert_eq!(build_mixed_pool(&parts, &bytes, &p).unwrap().0, pool);
        let other = PoolParams { seed: 6, ..p };
        assert_ne!(build_mixed_pool(&parts, &bytes, &other).unwrap().0, pool);
    }

    #[test]
    fn a_corpus_that_runs_out_leaves_its_share_to_the_others() {
        let (a, b, c) = (
            corpus(b'a', 2, 10),
            corpus(b'b', 100, 10),
            corpus(b'c', 100, 10),
        );
        let parts = [
            MixPart {
                documents: &a,
                weight: 1.0,
            },
            MixPart {
                documents: &b,
                weight: 1.0,
            },
            MixPart {
                documents: &c,
                weight: 2.0,
            },
        ];
        let p = PoolParams {
            seq_len: 8,
            calib_tokens: 400,
            seed: 0,
        };
        let (pool, report) = build_mixed_pool(&parts, &bytes, &p).unwrap();
        assert_eq!(pool.total_tokens(), 400);
        assert!(!report.corpus_exhausted);
        // `a` holds 20 of its 100; the 80 left go 1:2 to `b` and `c`.
        assert_eq!(tokens_of(&pool, b'a'), 20);
        assert_eq!(tokens_of(&pool, b'b') + tokens_of(&pool, b'c'), 380);
        assert_eq!(tokens_of(&pool, b'b'), 100 + 27);
        assert_eq!(report.sources[0].requested_tokens, 100);
        // Everything runs out: the pool is the whole of every corpus.
        let small = PoolParams {
            calib_tokens: 10_000,
            ..p
        };
        let (pool, report) = build_mixed_pool(&parts, &bytes, &small).unwrap();
        assert_eq!(pool.total_tokens(), 2020);
        assert!(report.corpus_exhausted);
    }

    #[test]
    fn one_corpus_in_a_mix_is_the_plain_pool_and_bad_weights_are_refused() {
        let d = docs(&[7, 9, 5, 11]);
        let p = PoolParams {
            seq_len: 4,
            calib_tokens: 13,
            seed: 3,
        };
        let one = [MixPart {
            documents: &d,
            weight: 0.3,
        }];
        assert_eq!(
            build_mixed_pool(&one, &bytes, &p).unwrap(),
            build_pool(&d, &bytes, &p).unwrap()
        );
        for w in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let two = [
                MixPart {
                    documents: &d,
                    weight: 1.0,
                },
                MixPart {
                    documents: &d,
                    weight: w,
                },
            ];
            let e = build_mixed_pool(&two, &bytes, &p).unwrap_err().to_string();
            assert!(e.contains("source 2") && e.contains("weight"), "{e}");
        }
    }
}

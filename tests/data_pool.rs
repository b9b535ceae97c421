//! The calibration pool (§4) and evaluation windows (§11) with a stand-in tokenizer (one token
//! per whitespace-separated word, its id the word's number), so counts are easy to check.

use tyr::data::{PoolParams, build_pool, eval_windows, token_stream};

/// Words are `w<id>`; anything else is an error, as a real tokenizer may fail.
fn words(s: &str) -> tyr::Result<Vec<u32>> {
    s.split_whitespace()
        .map(|w| {
            w.strip_prefix('w')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| tyr::Error::msg(format!("bad word {w}")))
        })
        .collect()
}

/// Document `d` has `len` words with ids `1000·d + i`, so each token names its document.
fn corpus(lens: &[usize]) -> Vec<String> {
    lens.iter()
        .enumerate()
        .map(|(d, &n)| {
            (0..n)
                .map(|i| format!("w{}", 1000 * d + i))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn params(seq_len: usize, calib_tokens: usize, seed: u64) -> PoolParams {
    PoolParams {
        seq_len,
        calib_tokens,
        seed,
    }
}

#[test]
fn the_same_seed_gives_the_same_pool_and_digest() {
    let docs = corpus(&[30, 5, 17, 0, 12, 40, 9]);
    let (a, ra) = build_pool(&docs, &words, &params(8, 60, 11)).unwrap();
    let (b, rb) = build_pool(&docs, &words, &params(8, 60, 11)).unwrap();
    assert_eq!(a, b);
    assert_eq!(ra, rb);
    assert_eq!(a.digest(), b.digest());
    let (c, _) = build_pool(&docs, &words, &params(8, 60, 12)).unwrap();
    assert_ne!(
        a.pieces, c.pieces,
        "another seed should shuffle differently"
    );
    assert_ne!(a.digest(), c.digest());
}

#[test]
fn the_pool_holds_exactly_calib_tokens_when_the_corpus_has_enough() {
    let docs = corpus(&[30, 5, 17, 12, 40, 9]);
    for calib in [1, 7, 8, 9, 50, 112] {
        let (pool, report) = build_pool(&docs, &words, &params(8, calib, 5)).unwrap();
        assert_eq!(pool.total_tokens(), calib);
        assert_eq!(report.total_tokens, calib);
        assert!(!report.corpus_exhausted);
        assert!(pool.pieces.iter().all(|p| !p.is_empty() && p.len() <= 8));
    }
}

#[test]
fn documents_are_cut_into_full_pieces_with_their_tails_kept() {
    let docs = corpus(&[19, 8, 3]);
    let (pool, report) = build_pool(&docs, &words, &params(8, 1_000, 1)).unwrap();
    assert!(report.corpus_exhausted);
    assert_eq!(report.total_tokens, 30);
    assert_eq!(report.documents_used, 3);
    // Group the pieces by document (token id / 1000): each document gives its pieces in order,
    // full ones first, then its tail.
    let mut by_doc: Vec<Vec<usize>> = vec![Vec::new(); 3];
    for p in &pool.pieces {
        let d = (p[0] / 1000) as usize;
        assert!(
            p.iter().all(|&t| (t / 1000) as usize == d),
            "piece crosses documents"
        );
        by_doc[d].push(p.len());
    }
    assert_eq!(by_doc, vec![vec![8, 8, 3], vec![8], vec![3]]);
    assert_eq!(report.short_pieces, 2);
    // The pieces of one document stay contiguous and in order.
    let doc0: Vec<u32> = pool
        .pieces
        .iter()
        .filter(|p| p[0] < 1000)
        .flatten()
        .copied()
        .collect();
    assert_eq!(doc0, (0..19).collect::<Vec<u32>>());
}

#[test]
fn a_tokenizer_error_reaches_the_caller() {
    let docs = vec!["w1 oops".to_string()];
    let err = build_pool(&docs, &words, &params(4, 10, 0)).unwrap_err();
    assert!(err.to_string().contains("oops"), "{err}");
}

#[test]
fn a_corpus_with_no_tokens_is_an_error() {
    let docs = vec![String::new(), " ".to_string()];
    assert!(build_pool(&docs, &words, &params(4, 10, 0)).is_err());
}

#[test]
fn the_pool_round_trips_through_serde_with_the_same_digest() {
    let docs = corpus(&[10, 10]);
    let (pool, _) = build_pool(&docs, &words, &params(4, 15, 2)).unwrap();
    let json = serde_json::to_string(&pool).unwrap();
    let back: tyr::data::Pool = serde_json::from_str(&json).unwrap();
    assert_eq!(back.digest(), pool.digest());
}

#[test]
fn evaluation_windows_follow_the_protocol() {
    let docs = corpus(&[6, 5]);
    let stream = token_stream(&docs, "\n\n", &words).unwrap();
    assert_eq!(stream.len(), 11);
    let w = eval_windows(&stream, 4, None).unwrap();
    assert_eq!(w.windows.len(), 2);
    assert_eq!(w.windows[0], vec![0, 1, 2, 3]);
    assert_eq!(w.windows[1], vec![4, 5, 1000, 1001]);
    assert_eq!((w.seq_len, w.tokens, w.stream_tokens), (4, 8, 11));
    let cut = eval_windows(&stream, 4, Some(7)).unwrap();
    assert_eq!(cut.windows.len(), 1);
    let err = eval_windows(&stream, 12, None).unwrap_err().to_string();
    assert!(err.contains("11 tokens") && err.contains("12"), "{err}");
}

proptest::proptest! {
    /// For any corpus and sizes: the pool holds min(calib_tokens, corpus tokens); every piece is
    /// non-empty, at most seq_len long and from one document; each used document contributes a
    /// prefix of itself, cut only at multiples of seq_len (or at the final cut).
    #[test]
    fn pool_invariants_hold_for_any_corpus(
        lens in proptest::collection::vec(0usize..40, 1..12),
        seq_len in 1usize..10,
        calib_tokens in 1usize..200,
        seed in 0u64..1000,
    ) {
        let docs = corpus(&lens);
        let available: usize = lens.iter().sum();
        let result = build_pool(&docs, &words, &params(seq_len, calib_tokens, seed));
        if available == 0 {
            proptest::prop_assert!(result.is_err());
            return Ok(());
        }
        let (pool, report) = result.unwrap();
        proptest::prop_assert_eq!(pool.total_tokens(), calib_tokens.min(available));
        proptest::prop_assert_eq!(report.corpus_exhausted, calib_tokens > available);
        let mut per_doc: Vec<Vec<Vec<u32>>> = vec![Vec::new(); lens.len()];
        for p in &pool.pieces {
            proptest::prop_assert!(!p.is_empty() && p.len() <= seq_len);
            let d = (p[0] / 1000) as usize;
            proptest::prop_assert!(p.iter().all(|&t| (t / 1000) as usize == d));
            per_doc[d].push(p.clone());
        }
        let mut short_not_last = 0;
        for (d, pieces) in per_doc.iter().enumerate() {
            let flat: Vec<u32> = pieces.iter().flatten().copied().collect();
            let prefix: Vec<u32> = (0..flat.len() as u32).map(|i| 1000 * d as u32 + i).collect();
            proptest::prop_assert_eq!(&flat, &prefix);
            short_not_last += pieces[..pieces.len().saturating_sub(1)]
                .iter()
                .filter(|p| p.len() < seq_len)
                .count();
        }
        proptest::prop_assert_eq!(short_not_last, 0);
    }
}

//! Deterministic random streams. Every use of randomness (pool shuffling, mutations, minibatches,
//! random test models) draws from its own ChaCha8 stream seeded with
//! BLAKE3(seed, purpose, indices…), so a resumed run replays exactly the same draws and no two
//! uses share a stream (ALGORITHM.md §8). `StdRng` is never used: its algorithm may change.

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

/// One named random stream.
pub struct Stream(ChaCha8Rng);

impl Stream {
    /// The stream for `purpose` (e.g. `"mutation"`) at `indices` (e.g. `[round, generation]`).
    pub fn new(seed: u64, purpose: &str, indices: &[u64]) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"tyr-rng-v1");
        h.update(&seed.to_le_bytes());
        h.update(&(purpose.len() as u64).to_le_bytes());
        h.update(purpose.as_bytes());
        for i in indices {
            h.update(&i.to_le_bytes());
        }
        Stream(ChaCha8Rng::from_seed(*h.finalize().as_bytes()))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..n` without modulo bias. `n` must be > 0.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Stream::below(0)");
        let n = n as u64;
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return (x % n) as usize;
            }
        }
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i + 1);
            xs.swap(i, j);
        }
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_and_purpose_give_the_same_stream() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut s = Stream::new(7, "x", &[1, 2]);
                move |_| s.next_u64()
            })
            .collect();
        let mut s = Stream::new(7, "x", &[1, 2]);
        let b: Vec<u64> = (0..4).map(|_| s.next_u64()).collect();
        assert_eq!(a, b);
        let mut other = Stream::new(7, "x", &[1, 3]);
        assert_ne!(a[0], other.next_u64());
    }

    #[test]
    fn below_stays_in_range_and_shuffle_is_a_permutation() {
        let mut s = Stream::new(1, "t", &[]);
        assert!((0..1000).all(|_| s.below(7) < 7));
        let mut v: Vec<u32> = (0..50).collect();
        s.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }
}

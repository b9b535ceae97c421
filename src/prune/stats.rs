//! Hessian statistics for local pruning (ALGORITHM.md §4): `H = XᵀX` accumulated in f32 over
//! row batches in the order given, shard sums, the content digest used in variant keys, damping
//! `Hλ = H + λI`, and dead channels.
//!
//! Bit-reproducibility: for the same sequence of batches (same boundaries, same order) H is
//! bit-identical on the same machine, because each batch is one `gemm` call whose inner-dimension
//! order is fixed, and batches and shards are added in call order.

use candle_core::{DType, Device, Tensor};
use gemm::{Parallelism, gemm};

use super::linalg::Mat;
use crate::{Error, Result};

/// `H = XᵀX` (d × d, row-major f32) summed over `tokens` rows of X.
#[derive(Debug, Clone, PartialEq)]
pub struct Hessian {
    dim: usize,
    data: Vec<f32>,
    tokens: u64,
}

impl Hessian {
    pub fn zeros(dim: usize) -> Self {
        Hessian {
            dim,
            data: vec![0.0; dim * dim],
            tokens: 0,
        }
    }

    /// Rebuilds a Hessian from stored parts (e.g. a checkpoint).
    pub fn from_parts(dim: usize, data: Vec<f32>, tokens: u64) -> Result<Self> {
        if data.len() != dim * dim {
            return Err(shape_err("Hessian data", dim * dim, data.len()));
        }
        Ok(Hessian { dim, data, tokens })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row-major d × d values.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Rows of X accumulated so far.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Adds `XᵀX` for a batch `rows` of shape [n, d] (row-major).
    pub fn accumulate_rows(&mut self, rows: &[f32]) -> Result<()> {
        let d = self.dim;
        if d == 0 || !rows.len().is_multiple_of(d) {
            return Err(shape_err(
                "activation batch length (a multiple of d)",
                d,
                rows.len(),
            ));
        }
        let n = rows.len() / d;
        if n == 0 {
            return Ok(());
        }
        let threads = if d * d * n < 1 << 18 {
            Parallelism::None
        } else {
            Parallelism::Rayon(0)
        };
        // SAFETY: H is d×d row-major (row stride d, column stride 1); Xᵀ is read from the n×d
        // row-major batch with row stride 1 and column stride d; X likewise with (d, 1). All
        // indices stay below d·d and n·d, which the checks above guarantee.
        unsafe {
            gemm(
                d,
                d,
                n,
                self.data.as_mut_ptr(),
                1,
                d as isize,
                true,
                rows.as_ptr(),
                d as isize,
                1,
                rows.as_ptr(),
                1,
                d as isize,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                threads,
            );
        }
        self.tokens += n as u64;
        Ok(())
    }

    /// Adds `XᵀX` for a tensor whose last dimension is d (leading dimensions are flattened into
    /// rows). On CPU this is exactly `accumulate_rows`; on an accelerator the product is taken
    /// there in f32 and the d × d result is added here.
    pub fn accumulate_tensor(&mut self, x: &Tensor) -> Result<()> {
        let d = self.dim;
        let dims = x.dims();
        if dims.last() != Some(&d) {
            return Err(shape_err(
                "activation tensor last dimension",
                d,
                *dims.last().unwrap_or(&0),
            ));
        }
        let x = x.to_dtype(DType::F32)?.reshape(((), d))?;
        if matches!(x.device(), Device::Cpu) {
            let rows = x.flatten_all()?.to_vec1::<f32>()?;
            return self.accumulate_rows(&rows);
        }
        let n = x.dim(0)?;
        let gram = x
            .t()?
            .matmul(&x)?
            .flatten_all()?
            .to_device(&Device::Cpu)?
            .to_vec1::<f32>()?;
        for (h, g) in self.data.iter_mut().zip(&gram) {
            *h += g;
        }
        self.tokens += n as u64;
        Ok(())
    }

    /// Adds another shard (same d). Shards must be added in a fixed order for bit-identity.
    pub fn add(&mut self, other: &Hessian) -> Result<()> {
        if other.dim != self.dim {
            return Err(shape_err("Hessian shard dimension", self.dim, other.dim));
        }
        for (h, g) in self.data.iter_mut().zip(&other.data) {
            *h += g;
        }
        self.tokens += other.tokens;
        Ok(())
    }

    /// BLAKE3 of the bytes (little-endian f32), dtype and shape (§6 variant keys). The token
    /// count is not part of it: H alone determines the variants.
    pub fn digest(&self) -> blake3::Hash {
        let mut h = blake3::Hasher::new();
        h.update(b"tyr-hessian-v1\0f32\0");
        h.update(&(self.dim as u64).to_le_bytes());
        h.update(&(self.dim as u64).to_le_bytes());
        for x in &self.data {
            h.update(&x.to_le_bytes());
        }
        h.finalize()
    }

    /// `mean(diag H)` in f64.
    pub fn diag_mean(&self) -> f64 {
        if self.dim == 0 {
            return 0.0;
        }
        let s: f64 = (0..self.dim)
            .map(|i| self.data[i * self.dim + i] as f64)
            .sum();
        s / self.dim as f64
    }

    /// Channels with `H_ii = 0`: they never fired on the calibration data.
    pub fn dead_channels(&self) -> Vec<usize> {
        (0..self.dim)
            .filter(|&i| self.data[i * self.dim + i] == 0.0)
            .collect()
    }

    /// `Hλ = H + λI` in f64 (symmetrised), and λ = `damping_lambda(mean(diag H), damping)`.
    pub fn damped(&self, damping: f64) -> (Mat, f64) {
        let lambda = damping_lambda(self.diag_mean(), damping);
        (self.plus_identity(lambda), lambda)
    }

    /// `H + λI` in f64, symmetrised.
    pub fn plus_identity(&self, lambda: f64) -> Mat {
        let mut m = Mat::from_f32(self.dim, self.dim, &self.data);
        m.symmetrize();
        for i in 0..self.dim {
            m.set(i, i, m.get(i, i) + lambda);
        }
        m
    }
}

/// `λ = damping · mean(diag H)`, or 1 when that mean is 0 (§4).
pub fn damping_lambda(diag_mean: f64, damping: f64) -> f64 {
    if diag_mean == 0.0 {
        1.0
    } else {
        damping * diag_mean
    }
}

fn shape_err(what: &str, expected: usize, got: usize) -> Error {
    Error::PruneShape {
        what: what.into(),
        expected: expected.to_string(),
        got: got.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulated_hessian_is_the_gram_matrix() {
        // X = [[1, 2], [3, 4], [0, -1]] → XᵀX = [[10, 14], [14, 21]].
        let mut h = Hessian::zeros(2);
        h.accumulate_rows(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        h.accumulate_rows(&[0.0, -1.0]).unwrap();
        assert_eq!(h.data(), &[10.0, 14.0, 14.0, 21.0]);
        assert_eq!(h.tokens(), 3);
    }

    #[test]
    fn tensor_and_rows_accumulate_identically() {
        let rows: Vec<f32> = (0..60).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut a = Hessian::zeros(6);
        a.accumulate_rows(&rows).unwrap();
        let mut b = Hessian::zeros(6);
        let t = Tensor::from_vec(rows.clone(), (2, 5, 6), &Device::Cpu).unwrap();
        b.accumulate_tensor(&t).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.digest(), b.digest());
    }

    #[test]
    fn shards_sum_and_digest_tracks_values() {
        let mut a = Hessian::zeros(2);
        a.accumulate_rows(&[1.0, 0.0]).unwrap();
        let mut b = Hessian::zeros(2);
        b.accumulate_rows(&[0.0, 2.0]).unwrap();
        let before = a.digest();
        a.add(&b).unwrap();
        assert_eq!(a.data(), &[1.0, 0.0, 0.0, 4.0]);
        assert_ne!(before, a.digest());
        assert!(a.add(&Hessian::zeros(3)).is_err());
    }

    #[test]
    fn damping_uses_the_mean_diagonal_or_one_and_dead_channels_are_found() {
        let h = Hessian::from_parts(2, vec![4.0, 0.0, 0.0, 0.0], 1).unwrap();
        let (m, lambda) = h.damped(0.01);
        assert_eq!(lambda, 0.02);
        assert_eq!(m.get(1, 1), 0.02);
        assert_eq!(h.dead_channels(), vec![1]);
        let (_, lambda0) = Hessian::zeros(3).damped(0.01);
        assert_eq!(lambda0, 1.0);
        assert!(Hessian::zeros(2).accumulate_rows(&[1.0; 3]).is_err());
    }
}

//! Dense f64 linear algebra for local pruning (ALGORITHM.md §5 "Numerics"): a row-major matrix,
//! matrix products through the `gemm` crate (the kernel candle itself uses), and a recursive
//! blocked Cholesky factorisation with triangular solves, SPD solve and SPD inverse built on it.
//!
//! The recursion splits a matrix in halves until a block is at most `BLOCK` wide, so nearly all
//! of the O(n³) work is in large `gemm` calls and the small base cases stay in cache. Every
//! routine is deterministic: `gemm` parallelises over output tiles only, never over the inner
//! dimension, so the summation order of each element does not depend on the thread count.

use gemm::{Parallelism, gemm};

/// Base-case width of the recursive factorisation and solves.
const BLOCK: usize = 48;

/// A pivot at or below this fraction of the largest diagonal entry counts as a failure.
pub const PIVOT_REL_TOL: f64 = 1e-12;

/// A factorisation failed: the matrix is not (numerically) positive definite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotPositiveDefinite;

/// A dense row-major f64 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Mat {
    rows: usize,
    cols: usize,
    data: Vec<f64>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Mat {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    pub fn identity(n: usize) -> Self {
        let mut m = Mat::zeros(n, n);
        for i in 0..n {
            m.data[i * n + i] = 1.0;
        }
        m
    }

    /// Wraps row-major data; `data.len()` must be `rows * cols`.
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f64>) -> Self {
        assert_eq!(
            data.len(),
            rows * cols,
            "Mat::from_vec: length does not match the shape"
        );
        Mat { rows, cols, data }
    }

    /// Widens row-major f32 data.
    pub fn from_f32(rows: usize, cols: usize, data: &[f32]) -> Self {
        assert_eq!(
            data.len(),
            rows * cols,
            "Mat::from_f32: length does not match the shape"
        );
        Mat {
            rows,
            cols,
            data: data.iter().map(|&x| x as f64).collect(),
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn data(&self) -> &[f64] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [f64] {
        &mut self.data
    }

    pub fn into_vec(self) -> Vec<f64> {
        self.data
    }

    #[inline]
    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }

    #[inline]
    pub fn set(&mut self, i: usize, j: usize, v: f64) {
        self.data[i * self.cols + j] = v;
    }

    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    pub fn row_mut(&mut self, i: usize) -> &mut [f64] {
        &mut self.data[i * self.cols..(i + 1) * self.cols]
    }

    pub fn transpose(&self) -> Mat {
        let mut t = Mat::zeros(self.cols, self.rows);
        // Tiles keep both the reads and the writes within cache lines.
        const T: usize = 32;
        for i0 in (0..self.rows).step_by(T) {
            for j0 in (0..self.cols).step_by(T) {
                for i in i0..(i0 + T).min(self.rows) {
                    for j in j0..(j0 + T).min(self.cols) {
                        t.data[j * self.rows + i] = self.data[i * self.cols + j];
                    }
                }
            }
        }
        t
    }

    /// The submatrix with the given rows and columns (each in the order given).
    pub fn select(&self, rows: &[usize], cols: &[usize]) -> Mat {
        let mut m = Mat::zeros(rows.len(), cols.len());
        for (a, &i) in rows.iter().enumerate() {
            let src = self.row(i);
            let dst = m.row_mut(a);
            for (b, &j) in cols.iter().enumerate() {
                dst[b] = src[j];
            }
        }
        m
    }

    /// The given rows, all columns.
    pub fn select_rows(&self, rows: &[usize]) -> Mat {
        let mut m = Mat::zeros(rows.len(), self.cols);
        for (a, &i) in rows.iter().enumerate() {
            m.row_mut(a).copy_from_slice(self.row(i));
        }
        m
    }

    /// The contiguous block `[r0, r0+nr) × [c0, c0+nc)`.
    pub fn block(&self, r0: usize, c0: usize, nr: usize, nc: usize) -> Mat {
        let mut m = Mat::zeros(nr, nc);
        for a in 0..nr {
            let s = (r0 + a) * self.cols + c0;
            m.row_mut(a).copy_from_slice(&self.data[s..s + nc]);
        }
        m
    }

    /// Writes `b` at `(r0, c0)`.
    pub fn set_block(&mut self, r0: usize, c0: usize, b: &Mat) {
        for a in 0..b.rows {
            let s = (r0 + a) * self.cols + c0;
            self.data[s..s + b.cols].copy_from_slice(b.row(a));
        }
    }

    /// Replaces the matrix with `(A + Aᵀ)/2`. Square matrices only.
    pub fn symmetrize(&mut self) {
        let n = self.rows;
        for i in 0..n {
            for j in 0..i {
                let v = 0.5 * (self.data[i * n + j] + self.data[j * n + i]);
                self.data[i * n + j] = v;
                self.data[j * n + i] = v;
            }
        }
    }

    /// `Σ_ij A_ij·B_ij` with a fixed (row-major) summation order.
    pub fn frobenius_dot(&self, other: &Mat) -> f64 {
        assert_eq!((self.rows, self.cols), (other.rows, other.cols));
        self.data.iter().zip(&other.data).map(|(a, b)| a * b).sum()
    }
}

/// One operand of a product: row-major data with a possible transpose.
#[derive(Clone, Copy)]
pub enum Op<'a> {
    N(&'a Mat),
    T(&'a Mat),
}

impl Op<'_> {
    fn shape(&self) -> (usize, usize) {
        match self {
            Op::N(m) => (m.rows, m.cols),
            Op::T(m) => (m.cols, m.rows),
        }
    }

    /// (data, row stride, column stride) of the logical matrix.
    fn raw(&self) -> (&[f64], isize, isize) {
        match self {
            Op::N(m) => (&m.data, m.cols as isize, 1),
            Op::T(m) => (&m.data, 1, m.cols as isize),
        }
    }
}

/// `dst = alpha·dst + beta·op(a)·op(b)`; with `alpha = 0` the old `dst` is not read.
pub fn gemm_into(dst: &mut Mat, alpha: f64, a: Op, b: Op, beta: f64) {
    let (m, k) = a.shape();
    let (k2, n) = b.shape();
    assert_eq!(k, k2, "gemm_into: inner dimensions differ");
    assert_eq!((dst.rows, dst.cols), (m, n), "gemm_into: destination shape");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst.data.iter_mut().for_each(|x| *x *= alpha);
        return;
    }
    let (ad, a_rs, a_cs) = a.raw();
    let (bd, b_rs, b_cs) = b.raw();
    let threads = if m * n * k < 1 << 18 {
        Parallelism::None
    } else {
        Parallelism::Rayon(0)
    };
    // SAFETY: the shapes were checked above, every operand owns rows·cols elements, and the
    // strides describe exactly those row-major buffers; dst does not alias a or b (borrows).
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            1,
            n as isize,
            alpha != 0.0,
            ad.as_ptr(),
            a_cs,
            a_rs,
            bd.as_ptr(),
            b_cs,
            b_rs,
            alpha,
            beta,
            false,
            false,
            false,
            threads,
        );
    }
}

/// `op(a)·op(b)`.
pub fn matmul(a: Op, b: Op) -> Mat {
    let mut c = Mat::zeros(a.shape().0, b.shape().1);
    gemm_into(&mut c, 0.0, a, b, 1.0);
    c
}

/// Lower Cholesky factor L (A = L·Lᵀ) of a symmetric matrix, reading its lower triangle.
/// Fails when a pivot is not above `PIVOT_REL_TOL` times the largest diagonal entry, or is not
/// finite.
pub fn cholesky(a: &Mat) -> Result<Mat, NotPositiveDefinite> {
    assert_eq!(a.rows, a.cols, "cholesky: square matrix required");
    let max_diag = (0..a.rows).map(|i| a.get(i, i)).fold(0.0f64, f64::max);
    if !max_diag.is_finite() {
        return Err(NotPositiveDefinite);
    }
    let tol = PIVOT_REL_TOL * max_diag;
    cholesky_rec(a.clone(), tol)
}

fn cholesky_rec(mut a: Mat, tol: f64) -> Result<Mat, NotPositiveDefinite> {
    let n = a.rows;
    if n <= BLOCK {
        for j in 0..n {
            let (_, lower) = a.data.split_at_mut(j * n);
            let (rj, rows_below) = lower.split_at_mut(n);
            let d = rj[j] - rj[..j].iter().map(|x| x * x).sum::<f64>();
            if d.is_nan() || d <= tol || d.is_infinite() {
                return Err(NotPositiveDefinite);
            }
            let ljj = d.sqrt();
            rj[j] = ljj;
            for x in rj[j + 1..].iter_mut() {
                *x = 0.0;
            }
            let rj: &[f64] = rj;
            for i in 0..n - j - 1 {
                let ri = &mut rows_below[i * n..(i + 1) * n];
                let s: f64 = ri[..j].iter().zip(&rj[..j]).map(|(x, y)| x * y).sum();
                ri[j] = (ri[j] - s) / ljj;
            }
        }
        return Ok(a);
    }
    let n1 = split_point(n);
    let n2 = n - n1;
    let l11 = cholesky_rec(a.block(0, 0, n1, n1), tol)?;
    let l21 = solve_x_lt(&l11, &a.block(n1, 0, n2, n1));
    let mut s = a.block(n1, n1, n2, n2);
    gemm_into(&mut s, 1.0, Op::N(&l21), Op::T(&l21), -1.0);
    let l22 = cholesky_rec(s, tol)?;
    a.data.iter_mut().for_each(|x| *x = 0.0);
    a.set_block(0, 0, &l11);
    a.set_block(n1, 0, &l21);
    a.set_block(n1, n1, &l22);
    Ok(a)
}

/// Halves, rounded to a multiple of `BLOCK` so base cases are full width.
fn split_point(n: usize) -> usize {
    let half = n / 2;
    (half.div_ceil(BLOCK) * BLOCK).min(n - 1).max(1)
}

/// Solves `X·Lᵀ = B` for X (m × n), with L lower triangular (n × n).
pub fn solve_x_lt(l: &Mat, b: &Mat) -> Mat {
    let n = l.rows;
    assert_eq!(b.cols, n, "solve_x_lt: shape");
    if n <= BLOCK {
        // Row by row: L·xᵀ = bᵀ is a forward substitution.
        let mut x = b.clone();
        for r in 0..b.rows {
            let xr = x.row_mut(r);
            for j in 0..n {
                let lj = l.row(j);
                let s: f64 = lj[..j].iter().zip(&xr[..j]).map(|(p, q)| p * q).sum();
                xr[j] = (xr[j] - s) / lj[j];
            }
        }
        return x;
    }
    let n1 = split_point(n);
    let n2 = n - n1;
    let m = b.rows;
    let xa = solve_x_lt(&l.block(0, 0, n1, n1), &b.block(0, 0, m, n1));
    let mut bb = b.block(0, n1, m, n2);
    gemm_into(
        &mut bb,
        1.0,
        Op::N(&xa),
        Op::T(&l.block(n1, 0, n2, n1)),
        -1.0,
    );
    let xb = solve_x_lt(&l.block(n1, n1, n2, n2), &bb);
    let mut x = Mat::zeros(m, n);
    x.set_block(0, 0, &xa);
    x.set_block(0, n1, &xb);
    x
}

/// Solves `X·L = B` for X (m × n), with L lower triangular (n × n).
pub fn solve_x_l(l: &Mat, b: &Mat) -> Mat {
    let n = l.rows;
    assert_eq!(b.cols, n, "solve_x_l: shape");
    if n <= BLOCK {
        // Row by row: Lᵀ·xᵀ = bᵀ is a back substitution.
        let mut x = b.clone();
        for r in 0..b.rows {
            let xr = x.row_mut(r);
            for j in (0..n).rev() {
                let mut s = 0.0;
                for (k, xk) in xr.iter().enumerate().skip(j + 1) {
                    s += xk * l.data[k * n + j];
                }
                xr[j] = (xr[j] - s) / l.data[j * n + j];
            }
        }
        return x;
    }
    let n1 = split_point(n);
    let n2 = n - n1;
    let m = b.rows;
    let xb = solve_x_l(&l.block(n1, n1, n2, n2), &b.block(0, n1, m, n2));
    let mut ba = b.block(0, 0, m, n1);
    gemm_into(
        &mut ba,
        1.0,
        Op::N(&xb),
        Op::N(&l.block(n1, 0, n2, n1)),
        -1.0,
    );
    let xa = solve_x_l(&l.block(0, 0, n1, n1), &ba);
    let mut x = Mat::zeros(m, n);
    x.set_block(0, 0, &xa);
    x.set_block(0, n1, &xb);
    x
}

/// Solves `A·X = B` for symmetric positive definite A (k × k), B (k × m). Returns Xᵀ (m × k),
/// which is the layout callers want (HF `[out, in]`).
pub fn spd_solve_t(a: &Mat, b: &Mat) -> Result<Mat, NotPositiveDefinite> {
    let l = cholesky(a)?;
    // A·X = B ⇔ Xᵀ·L·Lᵀ = Bᵀ: first Yᵀ·Lᵀ = Bᵀ, then Xᵀ·L = Yᵀ.
    let yt = solve_x_lt(&l, &b.transpose());
    Ok(solve_x_l(&l, &yt))
}

/// The inverse of a symmetric positive definite matrix, exactly symmetric: `A⁻¹ = L⁻ᵀ·L⁻¹`,
/// about n³ multiply-adds in all (n³/3 each for the factor, its inverse and the product).
pub fn spd_inverse(a: &Mat) -> Result<Mat, NotPositiveDefinite> {
    let l = cholesky(a)?;
    let mut inv = lower_gram(&lower_inverse(&l));
    inv.symmetrize();
    Ok(inv)
}

/// `L⁻¹` of a lower triangular L, recursively:
/// `[[A, 0], [B, C]]⁻¹ = [[A⁻¹, 0], [−C⁻¹·B·A⁻¹, C⁻¹]]`.
pub fn lower_inverse(l: &Mat) -> Mat {
    let n = l.rows;
    if n <= BLOCK {
        return solve_x_l(l, &Mat::identity(n));
    }
    let n1 = split_point(n);
    let n2 = n - n1;
    let ai = lower_inverse(&l.block(0, 0, n1, n1));
    let ci = lower_inverse(&l.block(n1, n1, n2, n2));
    let cb = matmul(Op::N(&ci), Op::N(&l.block(n1, 0, n2, n1)));
    let mut bi = Mat::zeros(n2, n1);
    gemm_into(&mut bi, 0.0, Op::N(&cb), Op::N(&ai), -1.0);
    let mut x = Mat::zeros(n, n);
    x.set_block(0, 0, &ai);
    x.set_block(n1, 0, &bi);
    x.set_block(n1, n1, &ci);
    x
}

/// `Xᵀ·X` of a lower triangular X, recursively:
/// `[[A, 0], [B, C]]ᵀ·[[A, 0], [B, C]] = [[AᵀA + BᵀB, BᵀC], [CᵀB, CᵀC]]`.
fn lower_gram(x: &Mat) -> Mat {
    let n = x.rows;
    if n <= BLOCK {
        return matmul(Op::T(x), Op::N(x));
    }
    let n1 = split_point(n);
    let n2 = n - n1;
    let b = x.block(n1, 0, n2, n1);
    let c = x.block(n1, n1, n2, n2);
    let mut tl = lower_gram(&x.block(0, 0, n1, n1));
    gemm_into(&mut tl, 1.0, Op::T(&b), Op::N(&b), 1.0);
    let bl = matmul(Op::T(&c), Op::N(&b));
    let mut g = Mat::zeros(n, n);
    g.set_block(0, 0, &tl);
    g.set_block(n1, 0, &bl);
    g.set_block(0, n1, &bl.transpose());
    g.set_block(n1, n1, &lower_gram(&c));
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spd(n: usize, seed: u64) -> Mat {
        let mut s = crate::rng::Stream::new(seed, "linalg-test", &[n as u64]);
        let x = Mat::from_vec(n + 3, n, (0..(n + 3) * n).map(|_| s.normal()).collect());
        let mut a = matmul(Op::T(&x), Op::N(&x));
        for i in 0..n {
            a.set(i, i, a.get(i, i) + 0.1);
        }
        a
    }

    fn max_abs_diff(a: &Mat, b: &Mat) -> f64 {
        a.data()
            .iter()
            .zip(b.data())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn cholesky_reproduces_the_matrix_across_block_sizes() {
        for n in [1, 5, 48, 49, 130] {
            let a = spd(n, 1);
            let l = cholesky(&a).unwrap();
            let back = matmul(Op::N(&l), Op::T(&l));
            assert!(max_abs_diff(&a, &back) < 1e-9 * n as f64, "n = {n}");
            for i in 0..n {
                for j in i + 1..n {
                    assert_eq!(l.get(i, j), 0.0);
                }
            }
        }
    }

    #[test]
    fn spd_inverse_times_matrix_is_identity() {
        for n in [3, 100, 200] {
            let a = spd(n, 2);
            let inv = spd_inverse(&a).unwrap();
            let id = matmul(Op::N(&a), Op::N(&inv));
            assert!(max_abs_diff(&id, &Mat::identity(n)) < 1e-8, "n = {n}");
        }
    }

    #[test]
    fn lower_inverse_inverts_a_triangular_factor() {
        let l = cholesky(&spd(150, 5)).unwrap();
        let id = matmul(Op::N(&lower_inverse(&l)), Op::N(&l));
        assert!(max_abs_diff(&id, &Mat::identity(150)) < 1e-9);
    }

    #[test]
    fn spd_solve_matches_inverse_product() {
        let a = spd(97, 3);
        let mut s = crate::rng::Stream::new(4, "b", &[]);
        let b = Mat::from_vec(97, 7, (0..97 * 7).map(|_| s.normal()).collect());
        let xt = spd_solve_t(&a, &b).unwrap();
        let x = matmul(Op::N(&spd_inverse(&a).unwrap()), Op::N(&b));
        assert!(max_abs_diff(&xt.transpose(), &x) < 1e-8);
    }

    #[test]
    fn cholesky_rejects_indefinite_and_singular_matrices() {
        let a = Mat::from_vec(2, 2, vec![1.0, 2.0, 2.0, 1.0]);
        assert_eq!(cholesky(&a), Err(NotPositiveDefinite));
        let z = Mat::from_vec(2, 2, vec![1.0, 1.0, 1.0, 1.0]);
        assert_eq!(cholesky(&z), Err(NotPositiveDefinite));
        let nan = Mat::from_vec(1, 1, vec![f64::NAN]);
        assert_eq!(cholesky(&nan), Err(NotPositiveDefinite));
    }
}

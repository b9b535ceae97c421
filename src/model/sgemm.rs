//! The f32 matrix product of the forward pass, `y = x · Wᵀ` for a fixed weight `W`, with the
//! weight packed once when the model is built.
//!
//! Why our own: every projection and `lm_head` multiply activations by a weight that never
//! changes, so the weight can be laid out once in exactly the order the inner kernel reads it
//! (column panels of `NR`, blocks of `KC` rows), instead of being re-packed on every call as a
//! general GEMM must. The kernel is the classic 6×16 register tile (12 AVX2 accumulators, FMA),
//! picked at run time when the CPU has AVX2 and FMA; elsewhere a portable kernel with the same
//! packed layout runs. On the 2-core AVX2 machine of the notes this runs the SmolLM2 shapes
//! 5–25% faster than the `gemm` crate behind candle's matmul (paired medians; see the issue note).
//!
//! Determinism: the work is split into fixed (row block, column block) tiles and every output
//! element sums its `KC` blocks in order inside one tile, so the result does not depend on the
//! number of threads.

use candle_core::Tensor;
use rayon::prelude::*;

use super::llama_kernels::{tensor_from, with_f32};
use crate::Result;

/// Rows of the register tile (one broadcast per row per step).
const MR: usize = 6;
/// Columns of the register tile (two 8-wide vectors).
const NR: usize = 16;
/// Depth of a block: a `KC × NR` weight panel (16 KiB) stays in L1 while a row block runs.
const KC: usize = 256;
/// Rows of a tile: a `MC × KC` block of packed activations (144 KiB) stays in L2.
const MC: usize = 144;
/// Columns of a tile.
const NC: usize = 128;

/// A weight `W` `[n, k]` (HF `[out, in]`) packed for `x · Wᵀ`: for each block of `KC` input
/// rows, for each panel of `NR` outputs, `kc` rows of `NR` values (zero past `n`).
#[derive(Clone)]
pub struct PackedWeight {
    k: usize,
    n: usize,
    data: Vec<f32>,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight[out {}, in {}]", self.n, self.k)
    }
}

impl PackedWeight {
    /// Packs HF-layout weights `[out_i, in]` stacked along `out` (q|k|v, gate|up, or one).
    pub fn from_out_in(parts: &[&Tensor]) -> Result<Self> {
        let mut rows: Vec<f32> = Vec::new();
        let mut k = None;
        for t in parts {
            let (n_i, k_i) = t.dims2()?;
            if *k.get_or_insert(k_i) != k_i {
                return Err(crate::Error::msg(format!(
                    "internal: stacked weights of input widths {} and {k_i}",
                    k.unwrap_or(0)
                )));
            }
            if n_i > 0 {
                rows.extend(
                    t.to_dtype(candle_core::DType::F32)?
                        .flatten_all()?
                        .to_vec1::<f32>()?,
                );
            }
        }
        let k = k.unwrap_or(0);
        let n = rows.len().checked_div(k).unwrap_or(0);
        Ok(Self::from_out_in_rows(&rows, n, k))
    }

    /// Packs `W` given as row-major `[in, out]` data (`k` rows of `n`), e.g. the values of
    /// attention, which multiply the probabilities over positions.
    pub fn from_in_out_rows(w: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(w.len(), k * n, "internal: weight data of the wrong length");
        Self::pack(w, k, n, n, 1)
    }

    /// Packs `W` given as row-major `[out, in]` data (`n` rows of `k`), e.g. the keys of
    /// attention, whose dot products with the queries are the scores.
    pub fn from_out_in_rows(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), k * n, "internal: weight data of the wrong length");
        Self::pack(w, k, n, 1, k)
    }

    /// Packs the `k × n` weight whose element (input `p`, output `j`) is `w[p·sp + j·sj]`.
    fn pack(w: &[f32], k: usize, n: usize, sp: usize, sj: usize) -> Self {
        let np = n.div_ceil(NR);
        let mut data = vec![0f32; k * np * NR];
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            for j in 0..np {
                let base = p0 * np * NR + j * kc * NR;
                for p in 0..kc {
                    for c in 0..NR.min(n - j * NR) {
                        data[base + p * NR + c] = w[(p0 + p) * sp + (j * NR + c) * sj];
                    }
                }
            }
        }
        PackedWeight { k, n, data }
    }

    /// Input width `k`.
    pub fn in_dim(&self) -> usize {
        self.k
    }

    /// Output width `n`.
    pub fn out_dim(&self) -> usize {
        self.n
    }

    /// Outputs `[start, start + len)` back in HF layout `[len, in]` (exactly the packed values).
    pub fn out_in(&self, start: usize, len: usize) -> Result<Tensor> {
        let (k, np) = (self.k, self.n.div_ceil(NR));
        if start + len > self.n {
            return Err(crate::Error::msg(format!(
                "internal: rows {start}..{} of a weight with {} outputs",
                start + len,
                self.n
            )));
        }
        let mut w = vec![0f32; len * k];
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            for (r, row) in w.chunks_exact_mut(k.max(1)).enumerate() {
                let (j, c) = ((start + r) / NR, (start + r) % NR);
                let base = p0 * np * NR + j * kc * NR + c;
                for p in 0..kc {
                    row[p0 + p] = self.data[base + p * NR];
                }
            }
        }
        Ok(Tensor::from_vec(w, (len, k), &candle_core::Device::Cpu)?)
    }

    /// `x · Wᵀ` for a CPU f32 tensor `x` `[rows, in]`: `[rows, out]`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, k) = x.dims2()?;
        if k != self.k {
            return Err(crate::Error::msg(format!(
                "internal: input width {k} for a weight of input width {}",
                self.k
            )));
        }
        Ok(tensor_from(
            with_f32(x, |x| self.matmul(x))?,
            (rows, self.n),
        )?)
    }

    /// `x · Wᵀ` for row-major `x` `[m, k]`; returns `[m, n]` row-major.
    pub fn matmul(&self, x: &[f32]) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        let m = x.len().checked_div(k).unwrap_or(0);
        debug_assert_eq!(x.len(), m * k);
        if m == 0 || n == 0 || k == 0 {
            return vec![0f32; m * n];
        }
        // Not zeroed: the first depth block of every tile overwrites all its elements, and the
        // tiles cover `y` (zeroing the 100 MB logits of a 512-token window costs measurably).
        let mut y: Vec<f32> = Vec::with_capacity(m * n);
        let job = Job {
            xp: &pack_rows(x, m, k, true),
            m,
            k,
            w: self,
            n,
            out: SendPtr(y.as_mut_ptr()),
            ldc: n,
            kernel: Kernel::detect(),
        };
        (0..job.tiles()).into_par_iter().for_each(|t| {
            // SAFETY: y has room for m·n values, and tasks write disjoint tiles.
            unsafe { job.tile(t) }
        });
        // SAFETY: every element of the m×n output was written by the p0 = 0 pass of its tile.
        unsafe { y.set_len(m * n) };
        y
    }

    /// `out[i·ldc + j] = Σ_{p<k} x[i·k + p] · W[j, p]` for the first `n ≤ out_dim` outputs and
    /// the first `k ≤ in_dim` inputs of the weight, on the calling thread: the small products
    /// inside attention, which already runs one task per head and tile.
    pub fn matmul_prefix_into(&self, x: &[f32], k: usize, n: usize, out: &mut [f32], ldc: usize) {
        let m = x.len().checked_div(k).unwrap_or(0);
        assert!(
            k <= self.k && n <= self.n && n <= ldc,
            "internal: product outside the weight"
        );
        assert!(
            m == 0 || out.len() >= (m - 1) * ldc + n,
            "internal: output too short"
        );
        // k = 0 leaves m = 0: with no inputs the rows cannot be counted, so nothing is written.
        if m == 0 || n == 0 {
            return;
        }
        let job = Job {
            xp: &pack_rows(x, m, k, false),
            m,
            k,
            w: self,
            n,
            out: SendPtr(out.as_mut_ptr()),
            ldc,
            kernel: Kernel::detect(),
        };
        for t in 0..job.tiles() {
            // SAFETY: out addresses m rows of ldc ≥ n values (asserted above).
            unsafe { job.tile(t) }
        }
    }
}

/// One product `out = xp · Wᵀ` cut into (row block, column block) tiles.
struct Job<'a> {
    /// `x` packed by `pack_rows` with depth `k`.
    xp: &'a [f32],
    m: usize,
    /// Depth used: the first `k` inputs of `w`.
    k: usize,
    w: &'a PackedWeight,
    /// Outputs used: the first `n` of `w`.
    n: usize,
    out: SendPtr,
    ldc: usize,
    kernel: Kernel,
}

impl Job<'_> {
    fn tiles(&self) -> usize {
        self.m.div_ceil(MC) * self.n.div_ceil(NC)
    }

    /// Computes tile `t`: rows `[ic·MC, …)` × columns `[jc·NC, …)`, all depth blocks in order.
    ///
    /// # Safety
    /// `out` must address `m` rows of `ldc ≥ n` writable values, and no other thread may touch
    /// this tile's elements meanwhile.
    unsafe fn tile(&self, t: usize) {
        let (m, n, k) = (self.m, self.n, self.k);
        let n_jc = n.div_ceil(NC);
        let (ic, jc) = (t / n_jc, t % n_jc);
        let (mp, np_used, np_w) = (m.div_ceil(MR), n.div_ceil(NR), self.w.n.div_ceil(NR));
        let (i_lo, i_hi) = (ic * MC / MR, ((ic + 1) * MC / MR).min(mp));
        let (j_lo, j_hi) = (jc * NC / NR, ((jc + 1) * NC / NR).min(np_used));
        for p0 in (0..k).step_by(KC) {
            // The activations were packed with depth k, the weight with its own depth.
            let (kc, kc_w) = (KC.min(k - p0), KC.min(self.w.k - p0));
            for j in j_lo..j_hi {
                let b = &self.w.data[p0 * np_w * NR + j * kc_w * NR..][..kc * NR];
                for i in i_lo..i_hi {
                    let a = &self.xp[p0 * mp * MR + i * kc * MR..][..kc * MR];
                    let tile = Tile {
                        rows: MR.min(m - i * MR),
                        cols: NR.min(n - j * NR),
                        // SAFETY: row i·MR < m, column j·NR < n ≤ ldc (caller's contract).
                        c: unsafe { self.out.0.add(i * MR * self.ldc + j * NR) },
                        ldc: self.ldc,
                        accumulate: p0 > 0,
                    };
                    // SAFETY: a holds kc·MR values, b kc·NR, and `tile` is valid (above).
                    unsafe { self.kernel.run(kc, a, b, &tile) };
                }
            }
        }
    }
}

/// Packs `x` `[m, k]` for the kernel: for each `KC` block, for each panel of `MR` rows, `kc`
/// steps of `MR` values (zero past `m`).
fn pack_rows(x: &[f32], m: usize, k: usize, parallel: bool) -> Vec<f32> {
    let mp = m.div_ceil(MR);
    let mut out = vec![0f32; mp * MR * k];
    // Panel i of block p0 sits at p0·mp·MR + i·kc·MR: gather each panel's pieces per task.
    let dst = SendPtr(out.as_mut_ptr());
    let panel = |i: usize| {
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            let base = p0 * mp * MR + i * kc * MR;
            for r in 0..MR.min(m - i * MR) {
                let src = &x[(i * MR + r) * k + p0..][..kc];
                for (p, &v) in src.iter().enumerate() {
                    // SAFETY: base + p·MR + r < (p0 + kc)·mp·MR ≤ out.len(), and panel i's
                    // slots are written by this task only.
                    unsafe { *dst.get().add(base + p * MR + r) = v };
                }
            }
        }
    };
    if parallel {
        (0..mp).into_par_iter().with_min_len(8).for_each(panel);
    } else {
        (0..mp).for_each(panel);
    }
    out
}

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the tasks holding copies write disjoint elements (see the callers).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Where one kernel call writes: `rows × cols` (≤ MR × NR) at `c` with row stride `ldc`,
/// overwriting (first block) or adding to it.
struct Tile {
    rows: usize,
    cols: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
}

impl Tile {
    /// Writes row `i` of the register tile `acc` (NR values) to the output.
    ///
    /// # Safety
    /// `self` must address `rows × cols` writable values, initialised when `accumulate`.
    #[inline(always)]
    unsafe fn put(&self, i: usize, acc: &[f32; NR]) {
        let dst = unsafe { self.c.add(i * self.ldc) };
        if self.accumulate {
            // Initialised by the first depth block.
            let row = unsafe { std::slice::from_raw_parts_mut(dst, self.cols) };
            for (o, a) in row.iter_mut().zip(acc) {
                *o += a;
            }
        } else {
            // May be uninitialised: written through the pointer, never read.
            unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), dst, self.cols) };
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if super::llama_kernels::avx2_fma() {
            return Kernel::Avx2Fma;
        }
        Kernel::Portable
    }

    /// # Safety
    /// `a` holds `kc·MR`, `b` `kc·NR` values; `tile` addresses writable memory.
    unsafe fn run(self, kc: usize, a: &[f32], b: &[f32], tile: &Tile) {
        debug_assert!(a.len() >= kc * MR && b.len() >= kc * NR);
        macro_rules! by_rows {
            ($f:ident) => {
                match tile.rows {
                    6 => $f::<6>(kc, a, b, tile),
                    5 => $f::<5>(kc, a, b, tile),
                    4 => $f::<4>(kc, a, b, tile),
                    3 => $f::<3>(kc, a, b, tile),
                    2 => $f::<2>(kc, a, b, tile),
                    _ => $f::<1>(kc, a, b, tile),
                }
            };
        }
        match self {
            Kernel::Portable => unsafe { by_rows!(portable) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => unsafe { by_rows!(avx2_fma) },
        }
    }
}

/// The same product as the AVX2 kernel in plain Rust (the compiler vectorises the `NR` loop).
unsafe fn portable<const R: usize>(kc: usize, a: &[f32], b: &[f32], tile: &Tile) {
    let mut acc = [[0f32; NR]; R];
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kc) {
        for i in 0..R {
            for (o, &w) in acc[i].iter_mut().zip(bp) {
                *o += ap[i] * w;
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        unsafe { tile.put(i, row) };
    }
}

/// The 6×16 register tile: per step two loads of the weight panel, one broadcast per row and
/// two FMAs per row; unrolled by four.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_fma<const R: usize>(kc: usize, a: &[f32], b: &[f32], tile: &Tile) {
    use std::arch::x86_64::*;
    // How far ahead (in floats) to prefetch the activation panel, which streams from L2.
    const PREFETCH: usize = 64;
    let (mut ap, mut bp) = (a.as_ptr(), b.as_ptr());
    let mut lo = [_mm256_setzero_ps(); R];
    let mut hi = [_mm256_setzero_ps(); R];
    macro_rules! step {
        ($s:expr) => {{
            let b0 = _mm256_loadu_ps(bp.add($s * NR));
            let b1 = _mm256_loadu_ps(bp.add($s * NR + 8));
            for i in 0..R {
                let ai = _mm256_broadcast_ss(&*ap.add($s * MR + i));
                lo[i] = _mm256_fmadd_ps(ai, b0, lo[i]);
                hi[i] = _mm256_fmadd_ps(ai, b1, hi[i]);
            }
        }};
    }
    // SAFETY: the loops read kc steps of MR (a) and NR (b) values, within the slices; the
    // prefetch address may point past `a`, which prefetching tolerates (it never faults), and
    // is computed with wrapping arithmetic.
    unsafe {
        for _ in 0..kc / 4 {
            _mm_prefetch(ap.wrapping_add(PREFETCH) as *const i8, _MM_HINT_T0);
            step!(0);
            step!(1);
            step!(2);
            step!(3);
            ap = ap.add(4 * MR);
            bp = bp.add(4 * NR);
        }
        for _ in 0..kc % 4 {
            step!(0);
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
        let mut row = [0f32; NR];
        for i in 0..R {
            _mm256_storeu_ps(row.as_mut_ptr(), lo[i]);
            _mm256_storeu_ps(row.as_mut_ptr().add(8), hi[i]);
            tile.put(i, &row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn data(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i + seed) * 2_654_435_761) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// x · Wᵀ in f64, the reference.
    fn naive(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
        let mut y = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k)
                    .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                    .sum();
            }
        }
        y
    }

    /// Every edge: rows not a multiple of MR or MC, outputs not a multiple of NR or NC, depth
    /// across KC blocks with a short last block, and the 1-row (decode) case.
    #[test]
    fn matches_the_naive_product_on_every_edge_and_with_both_kernels() {
        let mut kernels = vec![Kernel::Portable];
        if Kernel::detect() != Kernel::Portable {
            kernels.push(Kernel::detect());
        }
        for &(m, n, k) in &[
            (1, 1, 1),
            (1, 17, 5),
            (5, 33, 300),
            (7, 16, 256),
            (13, 130, 513),
            (150, 300, 700),
        ] {
            let (x, w) = (data(m * k, 1), data(n * k, 7));
            let want = naive(&x, &w, m, n, k);
            let packed = PackedWeight::from_out_in_rows(&w, n, k);
            let got = packed.matmul(&x);
            let err = got
                .iter()
                .zip(&want)
                .map(|(&g, &r)| (g as f64 - r).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-4 * k as f64, "{m}×{n}×{k}: max error {err}");
            // Both kernels on one tile agree with the reference too.
            let rows = m.min(MR);
            let kc = k.min(KC);
            let xp = pack_rows(&x[..rows * k], rows, k, false);
            for &kern in &kernels {
                let mut c = vec![0f32; rows * NR];
                let tile = Tile {
                    rows,
                    cols: n.min(NR),
                    c: c.as_mut_ptr(),
                    ldc: NR,
                    accumulate: false,
                };
                unsafe { kern.run(kc, &xp, &packed.data, &tile) };
                for i in 0..rows {
                    for j in 0..n.min(NR) {
                        let r: f64 = (0..kc)
                            .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                            .sum();
                        let e = (c[i * NR + j] as f64 - r).abs();
                        assert!(e < 1e-4 * kc as f64, "{kern:?} {m}×{n}×{k} ({i},{j}): {e}");
                    }
                }
            }
        }
    }

    #[test]
    fn weights_come_back_exactly_and_stacked_parts_split_where_they_were_joined() {
        let (k, n1, n2) = (300, 20, 9);
        let a = Tensor::from_vec(data(n1 * k, 3), (n1, k), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(data(n2 * k, 4), (n2, k), &Device::Cpu).unwrap();
        let p = PackedWeight::from_out_in(&[&a, &b]).unwrap();
        assert_eq!((p.in_dim(), p.out_dim()), (k, n1 + n2));
        let back_a = p.out_in(0, n1).unwrap().to_vec2::<f32>().unwrap();
        let back_b = p.out_in(n1, n2).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(back_a, a.to_vec2::<f32>().unwrap());
        assert_eq!(back_b, b.to_vec2::<f32>().unwrap());
        assert!(p.out_in(n1, n2 + 1).is_err());
    }

    #[test]
    fn both_row_layouts_pack_the_same_weight_and_prefix_products_use_only_the_prefix() {
        let (n, k) = (37, 300);
        let w = data(n * k, 9); // [n, k]
        let mut wt = vec![0f32; k * n]; // [k, n]
        for j in 0..n {
            for p in 0..k {
                wt[p * n + j] = w[j * k + p];
            }
        }
        let a = PackedWeight::from_out_in_rows(&w, n, k);
        let b = PackedWeight::from_in_out_rows(&wt, k, n);
        assert_eq!(a.data, b.data);
        // First 20 outputs over the first 270 inputs, into a wider output.
        let (m, kk, nn, ldc) = (9, 270, 20, 24);
        let x = data(m * kk, 3);
        let mut out = vec![f32::NAN; m * ldc];
        a.matmul_prefix_into(&x, kk, nn, &mut out, ldc);
        for i in 0..m {
            for j in 0..ldc {
                let got = out[i * ldc + j];
                if j >= nn {
                    assert!(got.is_nan(), "({i},{j}) written outside the prefix");
                    continue;
                }
                let r: f64 = (0..kk)
                    .map(|p| x[i * kk + p] as f64 * w[j * k + p] as f64)
                    .sum();
                assert!((got as f64 - r).abs() < 1e-3, "({i},{j}): {got} vs {r}");
            }
        }
    }

    #[test]
    fn the_result_does_not_depend_on_the_thread_count() {
        let (m, n, k) = (300, 200, 600);
        let (x, w) = (data(m * k, 2), data(n * k, 5));
        let p = PackedWeight::from_out_in_rows(&w, n, k);
        let many = p.matmul(&x);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| p.matmul(&x));
        assert!(
            many.iter()
                .zip(&one)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
    }
}

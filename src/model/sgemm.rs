//! The f32 matrix product of the forward pass, `y = x · Wᵀ` for a fixed weight `W`, with the
//! weight packed once when the model is built.
//!
//! Why our own: every projection and `lm_head` multiply activations by a weight that never
//! changes, so the weight can be laid out once in exactly the order the inner kernel reads it
//! (column panels of `NR` = 16, blocks of `KC` rows), instead of being re-packed on every call as
//! a general GEMM must. The activations are read where they are, row-major: packing them into
//! row panels on every call, as GEMMs do, cost more than it saved (5% of a SmolLM2 forward, and
//! as much as the product itself for attention's `probabilities · V`). Three kernels read that
//! one layout, chosen at run time (`cpu_kernel::kernel`, `TYR_KERNEL` to force one):
//!
//! - AVX-512: a 12×32 register tile (12 activation rows × two weight panels, 24 of the 32 zmm
//!   registers), 1.5–1.7× the AVX2 kernel's GFLOPS on the 2-core AVX-512 Xeon of issue 15;
//! - AVX2 + FMA: the classic 6×16 tile (12 ymm accumulators); on the 2-core AVX2 machine of the
//!   notes it runs the SmolLM2 shapes 5–25% faster than the `gemm` crate behind candle's matmul;
//! - portable Rust: the 6×16 tile with `f32::mul_add`.
//!
//! Same bits on every CPU: each output element is computed the same way by every kernel (see
//! `run_kernel`): per `KC` block a sum from 0 over the depth in order, one fused multiply-add per
//! step, then the blocks added in order. So AVX-512, AVX2 and portable results are identical
//! (tested bit for bit); the price is a portable kernel that is slow on a CPU without FMA, where
//! `mul_add` is a libm call.
//!
//! Determinism: the work is split into fixed (row block, column block) tiles, the same for every
//! kernel, and every output element sums its `KC` blocks in order inside one tile, so the result
//! does not depend on the number of threads either.

use std::mem::MaybeUninit;

use candle_core::Tensor;
use rayon::prelude::*;

use super::cpu_kernel::{KernelClass, kernel};
use super::llama_kernels::{tensor_from, with_f32};
use crate::Result;

/// Rows of the AVX2 and portable register tile (one broadcast per row per step); AVX-512 runs two.
const MR: usize = 6;
/// Columns of the register tile (two 8-wide vectors).
const NR: usize = 16;
/// Depth of a block: a `KC × NR` weight panel (16 KiB) stays in L1 while a row block runs.
const KC: usize = 256;
/// Rows of a tile: its `MC × KC` block of activations (144 KiB) stays in L2.
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
        self.matmul_on(x, kernel())
    }

    /// `matmul` on a given kernel class (one the CPU runs).
    fn matmul_on(&self, x: &[f32], kernel: KernelClass) -> Vec<f32> {
        // Cheap (std caches CPUID), and what makes running the class's kernels sound.
        assert!(
            kernel.supported(),
            "internal: {kernel:?} kernels on this CPU"
        );
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
            x,
            m,
            k,
            w: self,
            n,
            out: SendPtr(y.as_mut_ptr()),
            ldc: n,
            kernel,
        };
        (0..job.tiles()).into_par_iter().for_each(|t| {
            // SAFETY: y has room for m·n values, and tasks write disjoint tiles.
            unsafe { job.tile(t) }
        });
        // SAFETY: every element of the m×n output was written by the p0 = 0 pass of its tile.
        unsafe { y.set_len(m * n) };
        y
    }

    /// `out[i·ldc + j] = Σ_{p<k} x[i·k + p] · W[j, p]` for the `m` rows of `x` `[m, k]`, the
    /// first `n ≤ out_dim` outputs and the first `k ≤ in_dim` inputs of the weight, on the
    /// calling thread: the small products inside attention, which already runs one task per
    /// head and tile. Every `out[i·ldc + j]` (`i < m`, `j < n`) is written (0 when `k = 0`) and
    /// nothing else, so `out` may be uninitialised.
    pub fn matmul_prefix_into(
        &self,
        x: &[f32],
        (m, k): (usize, usize),
        n: usize,
        out: &mut [MaybeUninit<f32>],
        ldc: usize,
    ) {
        self.matmul_prefix_into_on(x, (m, k, n), (out, ldc), kernel());
    }

    /// `matmul_prefix_into` on a given kernel class (one the CPU runs).
    fn matmul_prefix_into_on(
        &self,
        x: &[f32],
        (m, k, n): (usize, usize, usize),
        (out, ldc): (&mut [MaybeUninit<f32>], usize),
        kernel: KernelClass,
    ) {
        assert!(
            kernel.supported(),
            "internal: {kernel:?} kernels on this CPU"
        );
        assert!(
            k <= self.k && n <= self.n && n <= ldc && x.len() >= m * k,
            "internal: product outside the weight or the input"
        );
        assert!(
            m == 0 || out.len() >= (m - 1) * ldc + n,
            "internal: output too short"
        );
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            // A sum over no depth: the tiles would write nothing, and the caller reads it all.
            for row in out.chunks_mut(ldc).take(m) {
                row[..n].fill(MaybeUninit::new(0.0));
            }
            return;
        }
        let job = Job {
            x,
            m,
            k,
            w: self,
            n,
            out: SendPtr(out.as_mut_ptr().cast()),
            ldc,
            kernel,
        };
        for t in 0..job.tiles() {
            // SAFETY: out addresses m rows of ldc ≥ n values (asserted above); the kernels write
            // each element before they read it (the p0 = 0 pass overwrites).
            unsafe { job.tile(t) }
        }
    }
}

/// One product `out = x · Wᵀ` cut into (row block, column block) tiles.
struct Job<'a> {
    /// The activations, row-major `[m, k]`, read in place by the kernels (packing them into
    /// row panels first cost 5% of a forward, more than it saved).
    x: &'a [f32],
    m: usize,
    /// Depth used: the first `k` inputs of `w`.
    k: usize,
    w: &'a PackedWeight,
    /// Outputs used: the first `n` of `w`.
    n: usize,
    out: SendPtr,
    ldc: usize,
    kernel: KernelClass,
}

impl Job<'_> {
    fn tiles(&self) -> usize {
        self.m.div_ceil(MC) * self.n.div_ceil(NC)
    }

    /// The (row block, column block) of tile `t`. Row blocks go in groups whose
    /// activations fit in half of L2; a group's tiles run column block by column block, so each
    /// weight slab is read from memory once per group and each activation block stays in L2
    /// meanwhile. (Row-major order re-read all of `lm_head`, 113 MB for SmolLM2, once per 144
    /// rows.) The order changes no bit: every element sums its depth blocks in order in one
    /// tile whatever runs when.
    fn tile_at(&self, t: usize) -> (usize, usize) {
        let (n_ic, n_jc) = (self.m.div_ceil(MC), self.n.div_ceil(NC));
        let block_bytes = (MC * self.k * std::mem::size_of::<f32>()).max(1);
        grouped_tile(t, n_ic, n_jc, l2_bytes() / 2 / block_bytes)
    }

    /// Computes tile `t`: rows `[ic·MC, …)` × columns `[jc·NC, …)`, all depth blocks in order,
    /// in kernel calls of as many `MR`-row and `NR`-column panels as the kernel covers.
    ///
    /// # Safety
    /// `out` must address `m` rows of `ldc ≥ n` writable values, and no other thread may touch
    /// this tile's elements meanwhile.
    unsafe fn tile(&self, t: usize) {
        let (m, n, k) = (self.m, self.n, self.k);
        let (ic, jc) = self.tile_at(t);
        let (mp, np_used, np_w) = (m.div_ceil(MR), n.div_ceil(NR), self.w.n.div_ceil(NR));
        let (i_lo, i_hi) = (ic * MC / MR, ((ic + 1) * MC / MR).min(mp));
        let (j_lo, j_hi) = (jc * NC / NR, ((jc + 1) * NC / NR).min(np_used));
        let (row_panels, col_panels) = kernel_cover(self.kernel);
        for p0 in (0..k).step_by(KC) {
            // The activations have the product's depth k, the weight its own (k ≤ its depth).
            let (kc, kc_w) = (KC.min(k - p0), KC.min(self.w.k - p0));
            for i in (i_lo..i_hi).step_by(row_panels) {
                for j in (j_lo..j_hi).step_by(col_panels) {
                    let panels = col_panels.min(j_hi - j);
                    let ops = Operands {
                        kc,
                        a: &self.x[i * MR * k + p0..],
                        lda: k,
                        b: &self.w.data[p0 * np_w * NR + j * kc_w * NR..],
                        b_next: kc_w * NR,
                    };
                    let tile = Tile {
                        rows: (row_panels.min(i_hi - i) * MR).min(m - i * MR),
                        cols: (panels * NR).min(n - j * NR),
                        // SAFETY: row i·MR < m, column j·NR < n ≤ ldc (caller's contract).
                        c: unsafe { self.out.0.add(i * MR * self.ldc + j * NR) },
                        ldc: self.ldc,
                        accumulate: p0 > 0,
                    };
                    // SAFETY: the CPU runs the job's kernel (checked where jobs are made),
                    // `ops` holds what the tile needs (its `rows` rows of x from column p0,
                    // inside x's m·k values; the packed weight holds every panel below np_w),
                    // and `tile` is valid (above).
                    unsafe { run_kernel(self.kernel, &ops, &tile) };
                }
            }
        }
    }
}

/// Tile `t` of `n_ic × n_jc` tiles in groups of `group` row blocks (at least 1), each group
/// column block by column block: its (row block, column block).
fn grouped_tile(t: usize, n_ic: usize, n_jc: usize, group: usize) -> (usize, usize) {
    let group = group.clamp(1, n_ic.max(1));
    let (g, r) = (t / (group * n_jc), t % (group * n_jc));
    // Every group but the last is full, so only the last one's height differs.
    let rows = group.min(n_ic - g * group);
    (g * group + r % rows, r / rows)
}

/// This CPU's L2 cache per core in bytes (Linux sysfs), 1 MiB where it cannot be read. It only
/// shapes the order of the tiles, never a result.
fn l2_bytes() -> usize {
    static L2: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *L2.get_or_init(|| {
        let read = |i: usize, f: &str| {
            std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu0/cache/index{i}/{f}"))
                .map(|s| s.trim().to_string())
                .ok()
        };
        (0..8)
            .find(|&i| read(i, "level").as_deref() == Some("2"))
            .and_then(|i| read(i, "size"))
            .and_then(|s| match s.strip_suffix('K') {
                Some(kib) => kib.parse::<usize>().ok().map(|v| v << 10),
                None => s.strip_suffix('M')?.parse::<usize>().ok().map(|v| v << 20),
            })
            .filter(|&b| b >= 64 << 10)
            .unwrap_or(1 << 20)
    })
}

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the tasks holding copies write disjoint elements (see the callers).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// What one kernel call multiplies: `kc` depth steps of up to `2·MR` activation rows (row `i`
/// starts at `a[i·lda]`) and of several `NR`-column weight panels (each `b_next` values after
/// the previous one).
struct Operands<'a> {
    kc: usize,
    a: &'a [f32],
    lda: usize,
    b: &'a [f32],
    b_next: usize,
}

/// Where one kernel call writes: `rows × cols` (at most the kernel's cover) at `c` with row
/// stride `ldc`, overwriting (first depth block) or adding to it.
struct Tile {
    rows: usize,
    cols: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
}

impl Tile {
    /// Writes row `i` of a one-panel register tile `acc` (NR values) to the output.
    ///
    /// # Safety
    /// `self` must address `rows × cols` writable values, initialised when `accumulate`, with
    /// `i < rows` and `cols ≤ NR`.
    #[inline(always)]
    unsafe fn put(&self, i: usize, acc: &[f32; NR]) {
        // SAFETY: row i of the tile is inside the output (caller's contract).
        let dst = unsafe { self.c.add(i * self.ldc) };
        if self.accumulate {
            // SAFETY: the row's cols values are initialised by the first depth block.
            let row = unsafe { std::slice::from_raw_parts_mut(dst, self.cols) };
            for (o, a) in row.iter_mut().zip(acc) {
                *o += a;
            }
        } else {
            // SAFETY: may be uninitialised: written through the pointer, never read.
            unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), dst, self.cols) };
        }
    }
}

/// Activation and weight panels one call of the class's kernel covers: AVX-512 computes a
/// 12×32 tile (two panels each way, 24 of its 32 registers), the others 6×16.
fn kernel_cover(kernel: KernelClass) -> (usize, usize) {
    match kernel {
        KernelClass::Avx512 => (2, 2),
        KernelClass::Avx2 | KernelClass::Portable => (1, 1),
    }
}

/// Runs `kernel` on one tile.
///
/// Every kernel computes each output element the same way, which is what makes their results
/// bit-identical: a sum starting at 0 over the `kc` depth steps of the block in order, each
/// step one fused multiply-add `acc = x·w + acc` (rounded once), then one plain addition to
/// the output for every block after the first. Only how many elements run side by side
/// differs.
///
/// # Safety
/// The CPU must run `kernel`; `ops` must hold `kc` steps of every panel the tile touches
/// (`tile.rows.div_ceil(MR)` activation panels, `tile.cols.div_ceil(NR)` weight panels, at most
/// the class's cover); `tile` must address writable memory, initialised when `accumulate`.
unsafe fn run_kernel(kernel: KernelClass, ops: &Operands, tile: &Tile) {
    let (rp, cp) = kernel_cover(kernel);
    debug_assert!(tile.rows >= 1 && tile.rows <= rp * MR && tile.cols >= 1 && tile.cols <= cp * NR);
    debug_assert!(ops.a.len() >= (tile.rows - 1) * ops.lda + ops.kc);
    debug_assert!(ops.b.len() >= (tile.cols.div_ceil(NR) - 1) * ops.b_next + ops.kc * NR);
    macro_rules! by_rows {
        ($f:ident $(, $c:literal)?) => {
            match tile.rows {
                6 => $f::<6 $(, $c)?>(ops, tile),
                5 => $f::<5 $(, $c)?>(ops, tile),
                4 => $f::<4 $(, $c)?>(ops, tile),
                3 => $f::<3 $(, $c)?>(ops, tile),
                2 => $f::<2 $(, $c)?>(ops, tile),
                _ => $f::<1 $(, $c)?>(ops, tile),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    macro_rules! by_rows_wide {
        ($c:literal) => {
            match tile.rows {
                12 => avx512::<12, $c>(ops, tile),
                11 => avx512::<11, $c>(ops, tile),
                10 => avx512::<10, $c>(ops, tile),
                9 => avx512::<9, $c>(ops, tile),
                8 => avx512::<8, $c>(ops, tile),
                7 => avx512::<7, $c>(ops, tile),
                _ => by_rows!(avx512, $c),
            }
        };
    }
    match kernel {
        // SAFETY (all arms): the operands and tile are as the kernels require (caller's
        // contract), and the CPU has the features of the class it runs (caller's contract).
        KernelClass::Portable => unsafe { by_rows!(portable) },
        #[cfg(target_arch = "x86_64")]
        KernelClass::Avx2 => unsafe { by_rows!(avx2_fma) },
        #[cfg(target_arch = "x86_64")]
        KernelClass::Avx512 => unsafe {
            if tile.cols > NR {
                by_rows_wide!(2)
            } else {
                by_rows_wide!(1)
            }
        },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unsafe { by_rows!(portable) },
    }
}

/// The 6×16 product of the other kernels in plain Rust, one fused multiply-add per step like
/// theirs (`f32::mul_add`, which on a CPU without FMA is a libm call: correct, but slow).
///
/// # Safety
/// As `run_kernel`, with `R = tile.rows ≤ MR` and `tile.cols ≤ NR`.
unsafe fn portable<const R: usize>(ops: &Operands, tile: &Tile) {
    let mut acc = [[0f32; NR]; R];
    let rows: [&[f32]; R] = std::array::from_fn(|i| &ops.a[i * ops.lda..][..ops.kc]);
    for (p, bp) in ops.b[..ops.kc * NR].chunks_exact(NR).enumerate() {
        for i in 0..R {
            let x = rows[i][p];
            for (o, &w) in acc[i].iter_mut().zip(bp) {
                *o = x.mul_add(w, *o);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        // SAFETY: i < R = tile.rows, and the tile is valid (caller's contract).
        unsafe { tile.put(i, row) };
    }
}

/// How far ahead (in floats) the SIMD kernels prefetch each weight panel, which streams from L2
/// while the kernel's activation rows stay in L1 (they are reused across a tile's columns).
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = 64;

/// The 6×16 register tile: per step two loads of the weight panel, one broadcast per row and
/// two FMAs per row; unrolled by four.
///
/// # Safety
/// The CPU must have AVX2 and FMA; otherwise as `portable`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_fma<const R: usize>(ops: &Operands, tile: &Tile) {
    use std::arch::x86_64::*;
    let (kc, lda) = (ops.kc, ops.lda);
    let (mut ap, mut bp) = (ops.a.as_ptr(), ops.b.as_ptr());
    let mut lo = [_mm256_setzero_ps(); R];
    let mut hi = [_mm256_setzero_ps(); R];
    macro_rules! step {
        ($s:expr) => {{
            let b0 = _mm256_loadu_ps(bp.add($s * NR));
            let b1 = _mm256_loadu_ps(bp.add($s * NR + 8));
            for i in 0..R {
                let ai = _mm256_broadcast_ss(&*ap.add(i * lda + $s));
                lo[i] = _mm256_fmadd_ps(ai, b0, lo[i]);
                hi[i] = _mm256_fmadd_ps(ai, b1, hi[i]);
            }
        }};
    }
    // SAFETY: the loops read kc steps of R rows (a, lda apart) and of NR values (b), within
    // the slices; the prefetch address may point past `b`, which prefetching tolerates (it
    // never faults), and is computed with wrapping arithmetic.
    unsafe {
        for _ in 0..kc / 4 {
            _mm_prefetch(bp.wrapping_add(PREFETCH) as *const i8, _MM_HINT_T0);
            step!(0);
            step!(1);
            step!(2);
            step!(3);
            ap = ap.add(4);
            bp = bp.add(4 * NR);
        }
        for _ in 0..kc % 4 {
            step!(0);
            ap = ap.add(1);
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

/// The AVX-512 register tile: `R ≤ 12` rows (two activation panels) × `C ≤ 2` weight panels
/// of 16, one zmm accumulator each (24 at most). Per step one load per weight panel, one
/// broadcast per row and `C` FMAs per row; unrolled by four. Partial columns are written with
/// masked stores.
///
/// # Safety
/// The CPU must have AVX-512F; `ops` holds `kc` steps of `R.div_ceil(MR)` activation and `C`
/// weight panels; `tile` has `R` rows and `(C − 1)·NR < cols ≤ C·NR` columns and is valid.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn avx512<const R: usize, const C: usize>(ops: &Operands, tile: &Tile) {
    use std::arch::x86_64::*;
    let (kc, lda) = (ops.kc, ops.lda);
    // The second weight panel is only read when C > 1; wrapping arithmetic keeps the unused
    // pointer harmless.
    let mut a = ops.a.as_ptr();
    let mut b = [ops.b.as_ptr(), ops.b.as_ptr().wrapping_add(ops.b_next)];
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    macro_rules! step {
        ($s:expr) => {{
            let mut w = [_mm512_setzero_ps(); C];
            for q in 0..C {
                w[q] = _mm512_loadu_ps(b[q].add($s * NR));
            }
            for i in 0..R {
                let x = _mm512_set1_ps(*a.add(i * lda + $s));
                for q in 0..C {
                    acc[i][q] = _mm512_fmadd_ps(x, w[q], acc[i][q]);
                }
            }
        }};
    }
    macro_rules! advance {
        ($steps:expr) => {{
            a = a.add($steps);
            for p in b.iter_mut().take(C) {
                *p = p.add($steps * NR);
            }
        }};
    }
    // SAFETY: the loops read kc steps of R activation rows (lda apart) and of NR values from
    // each used weight panel, all within the slices (caller's contract); the prefetch
    // addresses may point past them, which prefetching tolerates (it never faults).
    unsafe {
        for _ in 0..kc / 4 {
            for p in b.iter().take(C) {
                _mm_prefetch(p.wrapping_add(PREFETCH) as *const i8, _MM_HINT_T0);
            }
            step!(0);
            step!(1);
            step!(2);
            step!(3);
            advance!(4);
        }
        for _ in 0..kc % 4 {
            step!(0);
            advance!(1);
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (q, &v) in row.iter().enumerate() {
            let left = tile.cols - q * NR;
            let mask: __mmask16 = if left >= NR { !0 } else { (1 << left) - 1 };
            // SAFETY: row i < rows and the first `left.min(NR)` columns of panel q are inside
            // the tile (caller's contract); masked-off lanes are neither read nor written, and
            // the read happens only when the first depth block has initialised the values.
            unsafe {
                let dst = tile.c.add(i * tile.ldc + q * NR);
                let v = if tile.accumulate {
                    // The same addition `out + acc` as `Tile::put`.
                    _mm512_add_ps(_mm512_maskz_loadu_ps(mask, dst), v)
                } else {
                    v
                };
                _mm512_mask_storeu_ps(dst, mask, v);
            }
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

    /// An initialised buffer seen as one the prefix products may write (f32 values only).
    fn as_uninit(v: &mut [f32]) -> &mut [MaybeUninit<f32>] {
        // SAFETY: MaybeUninit<f32> has f32's layout, and only f32 values are written through it.
        unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), v.len()) }
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
    const SHAPES: [(usize, usize, usize); 10] = [
        (1, 1, 1),
        (1, 17, 5),
        (1, 40, 300),
        (5, 33, 300),
        (7, 16, 256),
        (12, 31, 1),
        (13, 130, 513),
        (25, 47, 257),
        (3, 5, 1030),
        (150, 300, 700),
    ];

    #[test]
    fn matches_the_naive_product_on_every_edge() {
        for &(m, n, k) in &SHAPES {
            let (x, w) = (data(m * k, 1), data(n * k, 7));
            let want = naive(&x, &w, m, n, k);
            let got = PackedWeight::from_out_in_rows(&w, n, k).matmul(&x);
            let err = got
                .iter()
                .zip(&want)
                .map(|(&g, &r)| (g as f64 - r).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-4 * k as f64, "{m}×{n}×{k}: max error {err}");
        }
    }

    /// The portable kernel against every other one the CPU runs, bit for bit; the portable one
    /// itself against a scalar sum written out here (fused steps per KC block, blocks added).
    #[test]
    fn every_kernel_gives_the_bits_of_the_portable_one_on_every_edge() {
        for &(m, n, k) in &SHAPES {
            let (x, w) = (data(m * k, 1), data(n * k, 7));
            let packed = PackedWeight::from_out_in_rows(&w, n, k);
            let want = packed.matmul_on(&x, KernelClass::Portable);
            for (i, j) in [(0, 0), (m - 1, n - 1), (m / 2, n / 3)] {
                let mut total = 0f32;
                for p0 in (0..k).step_by(KC) {
                    let mut acc = 0f32;
                    for p in p0..(p0 + KC).min(k) {
                        acc = x[i * k + p].mul_add(w[j * k + p], acc);
                    }
                    total = if p0 == 0 { acc } else { total + acc };
                }
                assert_eq!(
                    want[i * n + j].to_bits(),
                    total.to_bits(),
                    "{m}×{n}×{k} ({i},{j})"
                );
            }
            for kern in KernelClass::available() {
                let got = packed.matmul_on(&x, kern);
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{kern:?} differs from portable on {m}×{n}×{k}");
            }
        }
    }

    /// Attention's products: a prefix of the depth (so weight panels are deeper than the
    /// activation panels) and of the outputs, into a wider output.
    #[test]
    fn prefix_products_give_the_same_bits_on_every_kernel() {
        let (n_w, k_w) = (75, 600);
        let w = data(n_w * k_w, 9);
        let packed = PackedWeight::from_out_in_rows(&w, n_w, k_w);
        for (m, kk, nn, ldc) in [
            (9, 270, 20, 24),
            (64, 600, 75, 80),
            (1, 1, 1, 1),
            (13, 513, 33, 33),
        ] {
            let x = data(m * kk, 3);
            let run = |kern| {
                let mut out = vec![f32::NAN; m * ldc];
                packed.matmul_prefix_into_on(&x, (m, kk, nn), (as_uninit(&mut out), ldc), kern);
                out
            };
            let want = run(KernelClass::Portable);
            for kern in KernelClass::available() {
                let got = run(kern);
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{kern:?} differs from portable on {m}×{kk}→{nn}");
            }
        }
    }

    /// A product over no depth is zero, and it is written: attention reads every output.
    #[test]
    fn a_prefix_product_over_no_depth_writes_zeros() {
        let packed = PackedWeight::from_out_in_rows(&data(8 * 4, 1), 8, 4);
        let (m, n, ldc) = (3, 5, 7);
        let mut out = vec![f32::NAN; m * ldc];
        packed.matmul_prefix_into(&[], (m, 0), n, as_uninit(&mut out), ldc);
        for (i, row) in out.chunks(ldc).enumerate() {
            assert!(row[..n].iter().all(|&v| v == 0.0), "row {i}: {row:?}");
            assert!(
                row[n..].iter().all(|v| v.is_nan()),
                "row {i} written past n"
            );
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
        a.matmul_prefix_into(&x, (m, kk), nn, as_uninit(&mut out), ldc);
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

    /// Every tile is computed exactly once whatever the group height (a tile left out would
    /// leave its outputs unwritten): full and short last groups, one row or column block.
    #[test]
    fn grouped_tiles_cover_every_tile_once() {
        for (n_ic, n_jc) in [(1, 1), (1, 7), (5, 1), (4, 384), (29, 24), (7, 3)] {
            for group in [0, 1, 2, 3, 4, 6, 29, 100] {
                let mut seen = vec![0u8; n_ic * n_jc];
                for t in 0..n_ic * n_jc {
                    let (ic, jc) = grouped_tile(t, n_ic, n_jc, group);
                    assert!(ic < n_ic && jc < n_jc, "{n_ic}×{n_jc}/{group}: tile {t}");
                    seen[ic * n_jc + jc] += 1;
                }
                assert!(
                    seen.iter().all(|&c| c == 1),
                    "{n_ic}×{n_jc} in groups of {group}"
                );
            }
        }
        assert!(l2_bytes() >= 64 << 10);
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

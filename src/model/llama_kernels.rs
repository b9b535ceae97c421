//! Fused CPU kernels of the forward pass that candle has no single op for: SwiGLU on the fused
//! gate/up output, and the bridge between candle tensors and the f32 slices the kernels (and
//! `attention.rs`) work on. Each kernel reads its input once and writes one contiguous output.

use std::mem::MaybeUninit;

use candle_core::{Device, Shape, Storage, Tensor};
use rayon::prelude::*;

/// Defines `fn $name(args)` that runs `$body` (an `#[inline(always)]` fn with the same
/// arguments) compiled for the process's kernel class (`cpu_kernel::kernel`), and `fn $on(class,
/// args)` that runs it for a given class (the cross-kernel tests): AVX-512, AVX2 + FMA, or as
/// built. The crate is built for baseline x86-64 (SSE2), so the compiler vectorises element-wise
/// loops 4 wide; inside the AVX2 copy the same loops run 8 wide, inside the AVX-512 copy 16
/// wide. The arithmetic is the same in every copy: Rust never fuses a multiply and an add on its
/// own, and the bodies fix their own reduction order (lane-wise accumulators of a set width, not
/// the vector width), so all copies give bit-identical results.
macro_rules! kernel_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) = $body:ident via $on:ident;) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) {
            $on($crate::model::cpu_kernel::kernel(), $($arg),*)
        }

        /// The same, on kernel class `class` (which the CPU must run: asserted).
        #[allow(dead_code)]
        fn $on(class: $crate::model::cpu_kernel::KernelClass, $($arg: $ty),*) {
            assert!(class.supported(), "internal: {class:?} kernels on this CPU");
            #[cfg(target_arch = "x86_64")]
            {
                use $crate::model::cpu_kernel::KernelClass;
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    $body($($arg),*)
                }
                match class {
                    // SAFETY: the CPU runs `class` (asserted above, by CPUID), so it has the
                    // features each copy was compiled for.
                    KernelClass::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    KernelClass::Avx2 => return unsafe { avx2($($arg),*) },
                    KernelClass::Portable => {}
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use kernel_dispatch;

/// Calls `f` with the contiguous f32 data of a CPU tensor (made contiguous first if needed).
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let t = if t.is_contiguous() {
        t.clone()
    } else {
        t.contiguous()?
    };
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("tyr's forward runs on the CPU only")
    };
    let data = cpu.as_slice::<f32>()?;
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("internal: tensor not contiguous after contiguous()")
    };
    Ok(f(&data[start..end]))
}

/// A CPU f32 tensor of `shape` from `data`.
pub(crate) fn tensor_from(data: Vec<f32>, shape: impl Into<Shape>) -> candle_core::Result<Tensor> {
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// `e^x` to about 2e-7 relative error, written so the compiler vectorises loops over it (no
/// libm call, no branch): `e^x = 2^k · e^r` with `k = round(x / ln 2)`, `|r| ≤ ln2 / 2`, and a
/// degree-6 Taylor polynomial for `e^r`. Inputs are clamped to [-87, 88] (f32's normal range).
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    const SHIFTER: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to the nearest integer
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    // t = SHIFTER + k exactly (its ulp is 1), so t's low mantissa bits hold k: 2^k is built from
    // them with integer operations that vectorise, where `k as i32` (a saturating conversion)
    // would be done one lane at a time.
    let t = x * std::f32::consts::LOG2_E + SHIFTER;
    let k = t - SHIFTER;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // k + 127 is in [1, 254] for the clamped range, a normal exponent.
    let pow2_k = (t
        .to_bits()
        .wrapping_sub(SHIFTER.to_bits())
        .wrapping_add(127))
        << 23;
    f32::from_bits(pow2_k) * p
}

/// `silu(g) · u` where each row of `gu` is `[g (d_ff) | u (d_ff)]`; returns `[rows, d_ff]` data.
pub(crate) fn swiglu(gu: &[f32], d_ff: usize) -> Vec<f32> {
    let rows = gu.len().checked_div(2 * d_ff).unwrap_or(0);
    // Not zeroed first: every row is written whole below.
    let mut out = Vec::with_capacity(rows * d_ff);
    if d_ff > 0 {
        out.spare_capacity_mut()[..rows * d_ff]
            .par_chunks_mut(d_ff)
            .zip(gu.par_chunks(2 * d_ff))
            .with_min_len(8)
            .for_each(|(o, x)| {
                let (g, u) = x.split_at(d_ff);
                swiglu_row(o, g, u);
            });
    }
    // SAFETY: the rows·d_ff values were written by swiglu_row, one row each.
    unsafe { out.set_len(rows * d_ff) };
    out
}

kernel_dispatch! {
    fn swiglu_row(out: &mut [MaybeUninit<f32>], gate: &[f32], up: &[f32]) = swiglu_row_body via swiglu_row_on;
}

/// Writes every element of `out` (the length of `gate` and `up`).
#[inline(always)]
fn swiglu_row_body(out: &mut [MaybeUninit<f32>], gate: &[f32], up: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        o.write(g / (1.0 + fast_exp(-g)) * u);
    }
}

kernel_dispatch! {
    /// In-place softmax of `row[..valid]`; entries from `valid` on (future positions) become 0.
    pub(crate) fn masked_softmax(row: &mut [f32], valid: usize) = masked_softmax_body via masked_softmax_on;
}

#[inline(always)]
fn masked_softmax_body(row: &mut [f32], valid: usize) {
    const LANES: usize = 8;
    let (live, dead) = row.split_at_mut(valid);
    // Lane-wise max and sum so the loops vectorise; the lanes are combined at the end.
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut chunks = live.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            mx[l] = mx[l].max(c[l]);
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&mx)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let mut acc = [0f32; LANES];
    let mut chunks = live.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            c[l] = fast_exp(c[l] - max);
            acc[l] += c[l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for x in chunks.into_remainder() {
        *x = fast_exp(*x - max);
        sum += *x;
    }
    let inv = 1.0 / sum;
    for x in live.iter_mut() {
        *x *= inv;
    }
    dead.fill(0.0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpu_kernel::KernelClass;

    /// Values from -100 to 100 (past fast_exp's clamp both ways), in an irregular order.
    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i + seed) * 2_654_435_761) % 20_001) as f32 / 100.0 - 100.0)
            .collect()
    }

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    /// Lengths below, at and past every vector width and the softmax lane count.
    const LENGTHS: [usize; 10] = [1, 3, 7, 8, 15, 16, 17, 33, 100, 1001];

    #[test]
    fn swiglu_gives_the_same_bits_on_every_kernel() {
        for len in LENGTHS {
            let (g, u) = (values(len, 1), values(len, 2));
            let run = |k| {
                let mut out = Vec::with_capacity(len);
                swiglu_row_on(k, &mut out.spare_capacity_mut()[..len], &g, &u);
                // SAFETY: swiglu_row writes every element.
                unsafe { out.set_len(len) };
                out
            };
            let want = run(KernelClass::Portable);
            for k in KernelClass::available() {
                assert!(same_bits(&run(k), &want), "{k:?}, length {len}");
            }
        }
    }

    #[test]
    fn softmax_gives_the_same_bits_on_every_kernel() {
        for len in LENGTHS {
            for valid in [1, len / 2 + 1, len] {
                // Scores of attention's range, so the exponentials do not all underflow.
                let row: Vec<f32> = values(len, 3).iter().map(|x| x / 10.0).collect();
                let mut want = row.clone();
                masked_softmax_on(KernelClass::Portable, &mut want, valid);
                for k in KernelClass::available() {
                    let mut got = row.clone();
                    masked_softmax_on(k, &mut got, valid);
                    assert!(same_bits(&got, &want), "{k:?}, length {len}, valid {valid}");
                }
            }
        }
    }

    #[test]
    fn fast_exp_agrees_with_exp_to_float_precision() {
        for i in -8700..8799 {
            let x = i as f32 / 100.0 + 0.003;
            let (a, b) = (fast_exp(x), x.exp());
            assert!(((a - b) / b).abs() < 5e-7, "x {x}: {a} vs {b}");
        }
        assert_eq!(fast_exp(0.0), 1.0);
        assert!(fast_exp(-1000.0) < 1e-37);
    }

    #[test]
    fn swiglu_multiplies_silu_of_gate_by_up() {
        let gu = [0.0, 1.0, 2.0, 3.0, -1.0, 4.0, 0.5, 2.0];
        let out = swiglu(&gu, 2);
        let silu = |x: f32| x / (1.0 + (-x).exp());
        assert_eq!(out.len(), 4);
        assert!((out[0] - silu(0.0) * 2.0).abs() < 1e-6);
        assert!((out[1] - silu(1.0) * 3.0).abs() < 1e-6);
        assert!((out[2] - silu(-1.0) * 0.5).abs() < 1e-6);
        assert!((out[3] - silu(4.0) * 2.0).abs() < 1e-6);
    }

    #[test]
    fn masked_softmax_zeroes_future_positions_and_sums_to_one() {
        let mut row = [1.0, 2.0, 3.0, 100.0];
        masked_softmax(&mut row, 3);
        assert_eq!(row[3], 0.0);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(row[2] > row[1] && row[1] > row[0]);
        // Longer than one lane group, with the maximum in the remainder.
        let mut row: Vec<f32> = (0..21).map(|i| (i as f32 * 0.37).sin()).collect();
        row[19] = 5.0;
        let want: Vec<f32> = {
            let z: f32 = row[..20].iter().map(|x| (x - 5.0).exp()).sum();
            row[..20].iter().map(|x| (x - 5.0).exp() / z).collect()
        };
        masked_softmax(&mut row, 20);
        for (a, b) in row.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6);
        }
        assert_eq!(row[20], 0.0);
    }
}

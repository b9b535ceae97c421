//! Fused CPU kernels of the forward pass that candle has no single op for: SwiGLU on the fused
//! gate/up output, and the bridge between candle tensors and the f32 slices the kernels (and
//! `attention.rs`) work on. Each kernel reads its input once and writes one contiguous output.

use candle_core::{Device, Shape, Storage, Tensor};
use rayon::prelude::*;

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

/// `silu(g) · u` where each row of `gu` is `[g (d_ff) | u (d_ff)]`; returns `[rows, d_ff]` data.
pub(crate) fn swiglu(gu: &[f32], d_ff: usize) -> Vec<f32> {
    let rows = gu.len() / (2 * d_ff);
    let mut out = vec![0f32; rows * d_ff];
    out.par_chunks_mut(d_ff)
        .zip(gu.par_chunks(2 * d_ff))
        .with_min_len(8)
        .for_each(|(o, x)| {
            let (g, u) = x.split_at(d_ff);
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        });
    out
}

/// In-place softmax of `row[..valid]`; entries from `valid` on (future positions) become 0.
#[inline]
pub(crate) fn masked_softmax(row: &mut [f32], valid: usize) {
    let (live, dead) = row.split_at_mut(valid);
    let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for x in live.iter_mut() {
        *x = (*x - max).exp();
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
    }
}

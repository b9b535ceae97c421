//! Rotary position embeddings in the Hugging Face layout (rotate-half: dimension `i` pairs with
//! `i + head_dim/2`), including Llama-3.1 `rope_scaling` of type `llama3`. Tables are computed in
//! f32 the way transformers does (`inv_freq · position`, then cos/sin), for the positions a call
//! needs.

use super::llama_kernels::kernel_dispatch;
use super::{Llama3RopeScaling, ModelConfig};

/// The inverse frequencies of one model; cheap to clone and to turn into tables.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

/// cos/sin for positions `offset..offset + len`, each row `head_dim / 2` wide.
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub offset: usize,
    pub len: usize,
    pub half: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl Rope {
    pub fn new(cfg: &ModelConfig) -> Self {
        let dh = cfg.head_dim;
        let theta = cfg.rope_theta as f32;
        // transformers: 1 / base^(arange(0, dim, 2) / dim), in f32.
        let mut inv_freq: Vec<f32> = (0..dh / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / dh as f32))
            .collect();
        if let Some(s) = &cfg.rope_scaling {
            inv_freq = llama3_scale(&inv_freq, s);
        }
        Rope { inv_freq }
    }

    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    pub fn tables(&self, offset: usize, len: usize) -> RopeTables {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for p in offset..offset + len {
            for &f in &self.inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        RopeTables {
            offset,
            len,
            half,
            cos,
            sin,
        }
    }
}

/// Llama-3.1 frequency scaling: long wavelengths are divided by `factor`, short ones kept, and
/// the band between them interpolated (transformers' `_compute_llama3_parameters`).
fn llama3_scale(inv_freq: &[f32], s: &Llama3RopeScaling) -> Vec<f32> {
    let old = s.original_max_position_embeddings as f32;
    let (lo, hi, factor) = (
        s.low_freq_factor as f32,
        s.high_freq_factor as f32,
        s.factor as f32,
    );
    let low_freq_wavelen = old / lo;
    let high_freq_wavelen = old / hi;
    inv_freq
        .iter()
        .map(|&f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen < high_freq_wavelen {
                f
            } else if wavelen > low_freq_wavelen {
                f / factor
            } else {
                let smooth = (old / wavelen - lo) / (hi - lo);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

impl RopeTables {
    /// Rotates one head vector `x` (length `2·half`) at table row `row`, writing into `out`.
    #[inline]
    pub fn rotate(&self, row: usize, x: &[f32], out: &mut [f32]) {
        let h = self.half;
        rotate_half(
            &self.cos[row * h..(row + 1) * h],
            &self.sin[row * h..(row + 1) * h],
            x,
            out,
        );
    }
}

kernel_dispatch! {
    fn rotate_half(c: &[f32], s: &[f32], x: &[f32], out: &mut [f32]) = rotate_half_body via rotate_half_on;
}

#[inline(always)]
fn rotate_half_body(c: &[f32], s: &[f32], x: &[f32], out: &mut [f32]) {
    let h = c.len();
    let (x1, x2) = x.split_at(h);
    let (o1, o2) = out.split_at_mut(h);
    for i in 0..h {
        o1[i] = x1[i] * c[i] - x2[i] * s[i];
        o2[i] = x2[i] * c[i] + x1[i] * s[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(scaling: Option<Llama3RopeScaling>) -> ModelConfig {
        ModelConfig {
            hidden_size: 8,
            head_dim: 8,
            vocab_size: 4,
            layers: vec![],
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: scaling,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
            attention_bias: false,
            mlp_bias: false,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    #[test]
    fn position_zero_is_identity() {
        let t = Rope::new(&cfg(None)).tables(0, 1);
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let mut o = [0.0; 8];
        t.rotate(0, &x, &mut o);
        assert_eq!(o, x);
    }

    #[test]
    fn rotation_pairs_dimension_i_with_i_plus_half() {
        let r = Rope::new(&cfg(None));
        let t = r.tables(3, 1);
        let mut x = [0.0f32; 8];
        x[0] = 1.0;
        let mut o = [0.0; 8];
        t.rotate(0, &x, &mut o);
        let a = 3.0f32 * r.inv_freq()[0];
        assert!((o[0] - a.cos()).abs() < 1e-6 && (o[4] - a.sin()).abs() < 1e-6);
        assert_eq!(o[1], 0.0);
    }

    #[test]
    fn rotation_gives_the_same_bits_on_every_kernel() {
        use crate::model::cpu_kernel::KernelClass;
        let v = |len: usize, seed: usize| -> Vec<f32> {
            (0..len)
                .map(|i| (((i + seed) * 2_654_435_761) % 2001) as f32 / 1000.0 - 1.0)
                .collect()
        };
        for h in [1, 3, 8, 17, 32, 64, 100] {
            let (c, s, x) = (v(h, 1), v(h, 2), v(2 * h, 3));
            let mut want = vec![0f32; 2 * h];
            rotate_half_on(KernelClass::Portable, &c, &s, &x, &mut want);
            for k in KernelClass::available() {
                let mut got = vec![f32::NAN; 2 * h];
                rotate_half_on(k, &c, &s, &x, &mut got);
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{k:?}, half {h}");
            }
        }
    }

    #[test]
    fn llama3_scaling_divides_low_frequencies_and_keeps_high_ones() {
        let s = Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 32,
        };
        let plain = Rope::new(&cfg(None));
        let scaled = Rope::new(&cfg(Some(s)));
        // wavelength 2π < 32/4: kept; the lowest frequency (wavelength ≫ 32): divided by 8.
        assert_eq!(scaled.inv_freq()[0], plain.inv_freq()[0]);
        let last = plain.inv_freq().len() - 1;
        assert!((scaled.inv_freq()[last] - plain.inv_freq()[last] / 8.0).abs() < 1e-9);
    }
}

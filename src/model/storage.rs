//! The dtype a stage stores its big outputs in (`[prune] activation-dtype`, `variant-dtype`):
//! f32, or a 16-bit float that halves the disk and the bytes read back. Compute stays f32: a
//! value is rounded to the storage dtype once, where it is made, and read back as f32, so what a
//! stage uses and what a resumed or a downstream stage reads are the same numbers.

use candle_core::{DType, Tensor};
use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use crate::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageDtype {
    #[default]
    F32,
    Bf16,
    F16,
}

impl StorageDtype {
    /// Whether this is the default (kept out of stage keys, so adding the option changed none).
    pub fn is_f32(&self) -> bool {
        *self == StorageDtype::F32
    }

    pub fn name(self) -> &'static str {
        match self {
            StorageDtype::F32 => "f32",
            StorageDtype::Bf16 => "bf16",
            StorageDtype::F16 => "f16",
        }
    }

    /// Bytes per stored value.
    pub fn bytes(self) -> u64 {
        match self {
            StorageDtype::F32 => 4,
            StorageDtype::Bf16 | StorageDtype::F16 => 2,
        }
    }

    pub fn candle(self) -> DType {
        match self {
            StorageDtype::F32 => DType::F32,
            StorageDtype::Bf16 => DType::BF16,
            StorageDtype::F16 => DType::F16,
        }
    }

    /// Rounds every value to the nearest one this dtype holds (ties to even; out of f16's range
    /// gives ±inf, as a cast does). A no-op for f32.
    pub fn round(self, v: &mut [f32]) {
        match self {
            StorageDtype::F32 => {}
            StorageDtype::Bf16 => v.iter_mut().for_each(|x| *x = bf16::from_f32(*x).to_f32()),
            StorageDtype::F16 => v.iter_mut().for_each(|x| *x = f16::from_f32(*x).to_f32()),
        }
    }

    /// The 16-bit patterns of `v` (`None` for f32). Exact when `v` was `round`ed first.
    pub fn bits(self, v: &[f32]) -> Option<Vec<u16>> {
        match self {
            StorageDtype::F32 => None,
            StorageDtype::Bf16 => Some(v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect()),
            StorageDtype::F16 => Some(v.iter().map(|&x| f16::from_f32(x).to_bits()).collect()),
        }
    }

    /// The values of 16-bit patterns `b` stored in this dtype (f32 holds none: empty).
    pub fn from_bits(self, b: &[u16]) -> Vec<f32> {
        match self {
            StorageDtype::F32 => Vec::new(),
            StorageDtype::Bf16 => b.iter().map(|&x| bf16::from_bits(x).to_f32()).collect(),
            StorageDtype::F16 => b.iter().map(|&x| f16::from_bits(x).to_f32()).collect(),
        }
    }

    /// `t` in this dtype, for storing (no copy for f32 when `t` is f32 already).
    pub fn store(self, t: &Tensor) -> Result<Tensor> {
        Ok(t.to_dtype(self.candle())?)
    }
}

/// A stored tensor back in f32 (no copy when it is f32).
pub fn load_f32(t: Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_then_bits_round_trips_exactly() {
        let v = [1.0f32, -1.234567, 1e-3, 65504.0, 0.0, -0.0, 1e30];
        for d in [StorageDtype::Bf16, StorageDtype::F16] {
            let mut r = v.to_vec();
            d.round(&mut r);
            let back = d.from_bits(&d.bits(&r).unwrap());
            assert_eq!(
                back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                r.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{d:?}"
            );
            // Rounding moved the non-representable ones, and is idempotent.
            assert_ne!(r[1], v[1]);
            let mut again = r.clone();
            d.round(&mut again);
            assert_eq!(again, r);
        }
        assert!(StorageDtype::F16.from_bits(&[0x7c00])[0].is_infinite());
        let mut f = v.to_vec();
        StorageDtype::F32.round(&mut f);
        assert_eq!(f, v);
        assert_eq!(StorageDtype::F32.bits(&v), None);
    }

    #[test]
    fn candle_casts_agree_with_the_rounding() {
        let v: Vec<f32> = (0..257).map(|i| (i as f32 * 0.731).sin() * 7.3).collect();
        for d in [StorageDtype::Bf16, StorageDtype::F16] {
            let t = Tensor::from_vec(v.clone(), v.len(), &candle_core::Device::Cpu).unwrap();
            let via_candle = load_f32(d.store(&t).unwrap())
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let mut r = v.clone();
            d.round(&mut r);
            assert_eq!(via_candle, r, "{d:?}");
        }
    }
}

//! Where the forward runs and in what precision: `Compute`, made from the pipeline's
//! `[pipeline] device` / `dtype` (or a command's `--device` / `--dtype`).
//!
//! - `Compute::Packed`: tyr's own f32 CPU kernels (`sgemm.rs`, `attention.rs`); the default,
//!   and the fastest path on a CPU.
//! - `Compute::Device`: the same block written as candle ops (`device_block.rs`), on any candle
//!   device — CUDA (cuBLAS matmuls) when built with `--features cuda`, or the CPU, which is how
//!   the device path is tested without a GPU — in f32 or bf16.
//!
//! A CUDA device is opened once per ordinal and shared: candle refuses to combine tensors of two
//! separately opened handles of the same GPU.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// How a model's blocks, embeddings and head run.
#[derive(Debug, Clone, Default)]
pub enum Compute {
    /// The packed f32 CPU kernels.
    #[default]
    Packed,
    /// candle ops on `device`, weights and activations in `dtype` (norm statistics, softmax and
    /// logits in f32).
    Device { device: Device, dtype: DType },
}

impl Compute {
    /// Parses a device (`cpu`, `cpu-candle`, `cuda`, `cuda:N`) and a dtype (`f32`, `bf16`).
    /// `cpu` with `f32` is the packed path; `cpu-candle` is the device path on the CPU (for
    /// comparisons); `cpu` with `bf16` also takes the device path, since the packed kernels are
    /// f32 only.
    pub fn parse(device: &str, dtype: &str) -> Result<Compute> {
        let dt = parse_dtype(dtype)?;
        match device {
            "cpu" if dt == DType::F32 => Ok(Compute::Packed),
            "cpu" | "cpu-candle" => Ok(Compute::Device {
                device: Device::Cpu,
                dtype: dt,
            }),
            _ => {
                let ordinal = cuda_ordinal(device)?;
                Ok(Compute::Device {
                    device: cuda_device(ordinal)?,
                    dtype: dt,
                })
            }
        }
    }

    /// The device path on `device` in `dtype`.
    pub fn device(device: Device, dtype: DType) -> Compute {
        Compute::Device { device, dtype }
    }

    pub fn is_packed(&self) -> bool {
        matches!(self, Compute::Packed)
    }

    /// Where tensors of this compute live (the CPU for the packed path).
    pub fn candle_device(&self) -> Device {
        match self {
            Compute::Packed => Device::Cpu,
            Compute::Device { device, .. } => device.clone(),
        }
    }

    /// The dtype weights and activations are held in.
    pub fn dtype(&self) -> DType {
        match self {
            Compute::Packed => DType::F32,
            Compute::Device { dtype, .. } => *dtype,
        }
    }

    /// `t` on this compute's device in its dtype (no copy when it already is).
    pub fn place(&self, t: &Tensor) -> Result<Tensor> {
        let dev = self.candle_device();
        let t = if t.device().same_device(&dev) {
            t.clone()
        } else {
            t.to_device(&dev)?
        };
        Ok(t.to_dtype(self.dtype())?)
    }

    /// A short name for logs and reports: `cpu`, `cpu-candle/f32`, `cuda:0/bf16`.
    pub fn describe(&self) -> String {
        match self {
            Compute::Packed => "cpu".into(),
            Compute::Device { device, dtype } => {
                let d = match device {
                    Device::Cpu => "cpu-candle".to_string(),
                    Device::Cuda(_) => match device.location() {
                        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
                        _ => "cuda".into(),
                    },
                    Device::Metal(_) => "metal".into(),
                };
                format!("{d}/{}", dtype_name(*dtype))
            }
        }
    }
}

/// Checks a device name's form (`cpu`, `cpu-candle`, `cuda`, `cuda:N`) without opening it.
pub fn check_device_name(device: &str) -> Result<()> {
    match device {
        "cpu" | "cpu-candle" => Ok(()),
        _ => cuda_ordinal(device).map(|_| ()),
    }
}

/// `f32` or `bf16`; anything else is an error naming the value.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        other => Err(Error::msg(format!(
            "dtype `{other}` is not supported: use \"f32\" or \"bf16\""
        ))),
    }
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "other",
    }
}

/// `cuda` → 0, `cuda:N` → N; anything else is an error naming the value.
fn cuda_ordinal(device: &str) -> Result<usize> {
    let bad = || {
        Error::msg(format!(
            "device `{device}` is not one of \"cpu\", \"cpu-candle\", \"cuda\", \"cuda:N\""
        ))
    };
    match device.strip_prefix("cuda") {
        Some("") => Ok(0),
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n < 64)
            .ok_or_else(bad),
        None => Err(bad()),
    }
}

/// The shared handle of GPU `ordinal`, opened on first use.
fn cuda_device(ordinal: usize) -> Result<Device> {
    if !candle_core::utils::cuda_is_available() {
        return Err(Error::msg(format!(
            "device `cuda:{ordinal}` needs a build with CUDA: `scripts/build-cuda.sh` \
             (cargo build --release --features cuda); this binary runs on the CPU only"
        )));
    }
    static OPEN: OnceLock<Mutex<HashMap<usize, Device>>> = OnceLock::new();
    let mut open = OPEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(d) = open.get(&ordinal) {
        return Ok(d.clone());
    }
    let d = Device::new_cuda(ordinal)
        .map_err(|e| Error::msg(format!("opening GPU cuda:{ordinal}: {e}")))?;
    open.insert(ordinal, d.clone());
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_dtypes_parse_or_name_the_bad_value() {
        assert!(Compute::parse("cpu", "f32").unwrap().is_packed());
        let c = Compute::parse("cpu-candle", "bf16").unwrap();
        assert_eq!(c.dtype(), DType::BF16);
        assert_eq!(c.describe(), "cpu-candle/bf16");
        assert!(!Compute::parse("cpu", "bf16").unwrap().is_packed());
        let e = Compute::parse("cpu", "f16").unwrap_err().to_string();
        assert!(e.contains("`f16`"), "{e}");
        for bad in ["gpu", "cuda:x", "cuda:", "cuda0", "cuda:99"] {
            let e = Compute::parse(bad, "f32").unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")), "{bad}: {e}");
        }
        if !candle_core::utils::cuda_is_available() {
            let e = Compute::parse("cuda:0", "f32").unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}

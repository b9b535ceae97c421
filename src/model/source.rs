//! Where weights come from. Every loader (GGUF, HF safetensors, our saved format, a random model
//! in tests) implements `TensorSource`; the forward pass asks it for tensors by HF name, one layer
//! at a time, so a model larger than memory is never materialised whole.

use candle_core::Tensor;

use crate::Result;

/// A read-only store of named weights.
///
/// Contract: names are Hugging Face Llama names (`model.embed_tokens.weight`,
/// `model.layers.{l}.self_attn.q_proj.weight`, …, `model.norm.weight`, `lm_head.weight`);
/// tensors come back as f32 on the CPU in HF layout (linear weights `[out, in]`), with Q/K rows
/// already in HF order (loaders undo llama.cpp's RoPE permutation).
pub trait TensorSource: Send + Sync {
    /// The tensor `name`; an error naming the tensor and the file when it is missing.
    fn tensor(&self, name: &str) -> Result<Tensor>;
    /// Whether `name` exists.
    fn contains(&self, name: &str) -> bool;
    /// Every tensor name, sorted.
    fn names(&self) -> Vec<String>;
    /// Where `name` lives (the file holding it), for error messages.
    fn location(&self, _name: &str) -> String {
        String::from("in-memory model")
    }
    /// The tensor `name` in the float dtype it is stored in, where that is bf16, f16 or f32
    /// (other formats, such as GGUF's quantized blocks, come as `tensor` gives them): for the
    /// big tables kept whole (embeddings, `lm_head`), which are then converted a slice at a time
    /// as they are used, never upcast whole.
    fn tensor_stored(&self, name: &str) -> Result<Tensor> {
        self.tensor(name)
    }
}

/// Weights held in memory, by HF name. Used for random test models and small converted models.
#[derive(Debug, Clone, Default)]
pub struct MemorySource {
    tensors: std::collections::BTreeMap<String, Tensor>,
}

impl MemorySource {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) {
        self.tensors.insert(name.into(), t);
    }

    pub fn into_map(self) -> std::collections::BTreeMap<String, Tensor> {
        self.tensors
    }
}

impl TensorSource for MemorySource {
    fn tensor(&self, name: &str) -> Result<Tensor> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| crate::Error::msg(format!("in-memory model: no tensor named `{name}`")))
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
}

/// Reads `name` from `src` as f32 and checks its shape: a missing tensor or a wrong shape is an
/// error naming the tensor and where it was looked for.
pub fn read_checked(src: &dyn TensorSource, name: &str, shape: &[usize]) -> Result<Tensor> {
    Ok(checked(src, name, shape, |s| s.tensor(name))?.to_dtype(candle_core::DType::F32)?)
}

/// `read_checked` in the dtype the source stores `name` in (`TensorSource::tensor_stored`).
pub fn read_checked_stored(src: &dyn TensorSource, name: &str, shape: &[usize]) -> Result<Tensor> {
    checked(src, name, shape, |s| s.tensor_stored(name))
}

fn checked(
    src: &dyn TensorSource,
    name: &str,
    shape: &[usize],
    read: impl FnOnce(&dyn TensorSource) -> Result<Tensor>,
) -> Result<Tensor> {
    if !src.contains(name) {
        return Err(crate::Error::MissingTensor {
            tensor: name.into(),
            location: src.location(name),
        });
    }
    let t = read(src)?;
    if t.dims() != shape {
        return Err(crate::Error::TensorShape {
            tensor: name.into(),
            location: src.location(name),
            expected: shape.to_vec(),
            found: t.dims().to_vec(),
        });
    }
    Ok(t)
}

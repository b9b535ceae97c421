//! Llama-family models with per-layer widths: config, loaders (GGUF, safetensors), tokenizer,
//! our saved format, and the f32 CPU forward built from candle ops.

pub mod config;
pub mod source;

pub use config::{LayerDims, Llama3RopeScaling, ModelConfig};
pub use source::TensorSource;
pub mod random;

pub use source::MemorySource;
pub mod gguf;
pub mod tokenizer;
pub mod open;

//! Llama-family models with per-layer widths: config, loaders (GGUF, safetensors), tokenizer,
//! our saved format, and the f32 CPU forward built from candle ops.

pub mod attention;
pub mod config;
pub mod cpu_kernel;
pub mod gguf;
pub mod hf;
pub mod llama;
pub mod llama_block;
mod llama_kernels;
pub mod open;
pub mod random;
pub mod rope;
pub mod saved;
pub mod sgemm;
pub mod source;
pub mod tokenizer;

pub use attention::LayerKv;
pub use config::{LayerDims, Llama3RopeScaling, ModelConfig};
pub use cpu_kernel::KernelClass;
pub use hf::{HfConfig, SafetensorsSource, open_hf_dir};
pub use llama::{Embeddings, Head, KvCache, Llama};
pub use llama_block::{AttnWeights, Block, BlockTaps, BlockWeights, MlpWeights};
pub use rope::Rope;
pub use saved::{SaveOptions, save_llama, save_model};
pub use source::{MemorySource, TensorSource};

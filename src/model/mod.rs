//! Llama-family models with per-layer widths: config, loaders (GGUF, safetensors), tokenizer,
//! our saved format, and the f32 CPU forward built from candle ops.

pub mod attention;
pub mod compute;
pub mod config;
pub mod cpu_kernel;
mod device_block;
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
pub mod storage;
pub mod tokenizer;

/// Version of the forward's arithmetic: bump it whenever any output bit of the embedding, a
/// block, the head or the kernels under them can change (a new kernel, another order of
/// summation, a fused multiply-add where there was none). Every stage that runs the forward
/// folds it into its key (`Stage::code_versions`), so a store never serves results of an older
/// forward as if they were the current one's.
///
/// 1: the packed f32 kernels of `sgemm.rs` and `attention.rs` (commits 40b8742, 630b725), with
///    one fused multiply-add per depth step in the same order in every kernel class
///    (`cpu_kernel.rs`: AVX-512, AVX2, portable), so every CPU gives the same bits and the key
///    needs no kernel class. The first version keyed: stores from before it rerun their
///    forward stages once.
pub const FORWARD_VERSION: u32 = 1;

/// The code versions of a stage that runs the forward, as `Stage::code_versions` returns them.
///
/// Test hook: `TYR_TEST_FORWARD_VERSION=N` stands in for a bumped constant, so a test can watch
/// what a new forward does to an existing store without building a second binary.
pub fn forward_code_versions() -> Vec<(&'static str, u32)> {
    let version = std::env::var("TYR_TEST_FORWARD_VERSION")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(FORWARD_VERSION);
    vec![("forward", version)]
}

pub use attention::LayerKv;
pub use compute::Compute;
pub use config::{LayerDims, Llama3RopeScaling, ModelConfig};
pub use cpu_kernel::KernelClass;
pub use device_block::to_host_f32;
pub use hf::{HfConfig, SafetensorsSource, open_hf_dir};
pub use llama::{Embeddings, Head, KvCache, Llama};
pub use llama_block::{AttnWeights, Block, BlockTaps, BlockWeights, MlpWeights};
pub use rope::Rope;
pub use saved::{SaveOptions, save_llama, save_model};
pub use source::{MemorySource, TensorSource};
pub use storage::StorageDtype;

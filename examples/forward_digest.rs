//! The BLAKE3 of a whole forward's logits on a random model of the SmolLM2-135M shape (4 layers,
//! batch 2, seq 300 so attention spans several tiles), on the kernel class `TYR_KERNEL` picks:
//! `cargo run --release --example forward_digest`. A change to the kernels that must keep the
//! forward's bits (and so `model::FORWARD_VERSION`) is checked by running this before and after;
//! a differing digest means the change needs a version bump.

use candle_core::{Device, Tensor};
use tyr::eval::bench::smollm2_135m_config;
use tyr::model::Llama;
use tyr::model::cpu_kernel::kernel;
use tyr::model::random::random_source;

fn main() -> tyr::Result<()> {
    let mut cfg = smollm2_135m_config();
    cfg.layers.truncate(4);
    let model = Llama::load(&cfg, &random_source(&cfg, 7)?)?;
    let (b, s) = (2usize, 300usize);
    let ids: Vec<u32> = (0..(b * s) as u64)
        .map(|i| ((i * 2_654_435_761) % cfg.vocab_size as u64) as u32)
        .collect();
    let ids = Tensor::from_vec(ids, (b, s), &Device::Cpu)?;
    let logits = model.forward(&ids)?.flatten_all()?.to_vec1::<f32>()?;
    let mut h = blake3::Hasher::new();
    for x in &logits {
        h.update(&x.to_bits().to_le_bytes());
    }
    println!(
        "kernel {} logits {} blake3 {}",
        kernel().name(),
        logits.len(),
        h.finalize()
    );
    Ok(())
}

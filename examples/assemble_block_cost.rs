//! Time to assemble one pruned block of a random Llama-3.1-8B-shaped layer (half its heads and
//! half its FFN channels kept) for the device path in bf16, with the layer's rows placed once on
//! the device and selected there (`assemble_block` on a device `DenseLayer`), against slicing
//! the block on the host (as the packed path does, which also packs it), reading its weights back
//! and placing them. Runs on the CPU device (`cpu-candle`), so it measures the host-side work:
//! `cargo run --release --example assemble_block_cost`.

use std::time::Instant;

use candle_core::{DType, Device};
use tyr::eval::bench::llama31_8b_config;
use tyr::model::random::random_source;
use tyr::model::{Block, Compute, StorageDtype};
use tyr::prune::local::Variant;
use tyr::supernet::layer::{DenseLayer, assemble_block, unmeasured_metrics};

fn main() -> tyr::Result<()> {
    let cfg = llama31_8b_config(1, 8);
    let src = random_source(&cfg, 0)?;
    let (h, dh, d) = (cfg.hidden_size, cfg.head_dim, &cfg.layers[0]);
    let variant = |kept: Vec<u32>, width: usize| Variant {
        level: 0,
        d_out: h,
        weight: vec![0.01; h * kept.len() * width],
        kept,
        storage: StorageDtype::F32,
        metrics: unmeasured_metrics(),
    };
    let attn = variant((0..d.n_q as u32).step_by(2).collect(), dh);
    let ffn = variant((0..d.d_ff as u32).step_by(2).collect(), 1);
    let compute = Compute::device(Device::Cpu, DType::BF16);
    let host = DenseLayer::load(&cfg, 0, &src)?;
    let dev = DenseLayer::load_on(&cfg, 0, &src, &compute)?;
    assemble_block(&cfg, &dev, &attn, &ffn)?; // places the layer's rows once
    let reps = 5;
    let t = Instant::now();
    for _ in 0..reps {
        let b = assemble_block(&cfg, &host, &attn, &ffn)?;
        Block::from_weights_on(&cfg, 0, b.dims().clone(), b.weights()?, &compute)?;
    }
    let sliced = t.elapsed().as_secs_f64() / reps as f64;
    let t = Instant::now();
    for _ in 0..reps {
        assemble_block(&cfg, &dev, &attn, &ffn)?;
    }
    let selected = t.elapsed().as_secs_f64() / reps as f64;
    println!(
        "8B layer, half kept, bf16 on the CPU device, per block: sliced and packed on the host, \
         then placed {sliced:.3} s; selected from placed rows {selected:.3} s"
    );
    Ok(())
}

//! The forward speed benchmark: tokens per second of a full-sequence forward at given batch sizes
//! and sequence length, with or without `lm_head`, on a model (or on random weights of a given
//! shape — random weights run at the same speed). Speed is measured here, never asserted in tests.

use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::Result;
use crate::model::{LayerDims, Llama, ModelConfig};

/// The SmolLM2-135M shape: 30 layers, hidden 576, 9 query / 3 K/V heads of 64, d_ff 1536,
/// vocabulary 49152, tied embeddings, RoPE θ 100000.
pub fn smollm2_135m_config() -> ModelConfig {
    ModelConfig {
        hidden_size: 576,
        head_dim: 64,
        vocab_size: 49152,
        layers: vec![LayerDims::dense(9, 3, 1536); 30],
        rms_norm_eps: 1e-5,
        rope_theta: 100_000.0,
        rope_scaling: None,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        attention_bias: false,
        mlp_bias: false,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    }
}

/// Llama-3.1-8B's shape (hidden 4096, 32 query / 8 K/V heads of 128, FFN 14336, llama3 RoPE)
/// with `layers` decoder layers and a vocabulary of `vocab` (128256 in the real model): random
/// weights of this shape time the forward of real 8B layers without the checkpoint.
pub fn llama31_8b_config(layers: usize, vocab: usize) -> ModelConfig {
    ModelConfig {
        hidden_size: 4096,
        head_dim: 128,
        vocab_size: vocab,
        layers: vec![LayerDims::dense(32, 8, 14336); layers],
        rms_norm_eps: 1e-5,
        rope_theta: 500_000.0,
        rope_scaling: Some(crate::model::Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        }),
        max_position_embeddings: 131_072,
        tie_word_embeddings: false,
        attention_bias: false,
        mlp_bias: false,
        bos_token_id: Some(128_000),
        eos_token_id: Some(128_001),
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    pub seq_len: usize,
    pub batches: Vec<usize>,
    /// Untimed forwards before measuring each batch size.
    pub warmup: usize,
    /// Timed forwards per batch size; the median is reported.
    pub iters: usize,
    /// Include the final norm and `lm_head` over every position.
    pub logits: bool,
}

/// One batch size's result.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub batch: usize,
    pub seq_len: usize,
    pub logits: bool,
    pub iters: usize,
    pub median_s: f64,
    pub min_s: f64,
    pub tokens_per_s: f64,
    /// Median CPU time of the process (all threads) per forward; on a shared machine this
    /// measures the work where wall time mostly measures the other tenants. Linux only.
    pub median_cpu_s: Option<f64>,
    pub tokens_per_cpu_s: Option<f64>,
    /// Matrix-product rate of the decoder's projections alone, 2 · decoder weights · tokens /
    /// median time, in TFLOP/s (attention scores, `lm_head` and element-wise work not counted:
    /// a lower bound on the work done).
    pub proj_tflops: f64,
}

/// User + system CPU seconds of this process so far, from `/proc/self/stat` (Linux).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Times `model` on deterministic token ids for each batch size of `spec`.
pub fn bench_forward(model: &Llama, spec: &BenchSpec) -> Result<Vec<BenchResult>> {
    let vocab = model.config().vocab_size as u64;
    let mut out = Vec::new();
    for &b in &spec.batches {
        let n = b * spec.seq_len;
        let ids: Vec<u32> = (0..n as u64)
            .map(|i| ((i * 2_654_435_761) % vocab) as u32)
            .collect();
        let ids = Tensor::from_vec(ids, (b, spec.seq_len), &Device::Cpu)?;
        // GPU work is queued: the timer stops when the device has finished it.
        let run = || -> Result<()> {
            let out = if spec.logits {
                model.forward(&ids)?
            } else {
                model.hidden(&ids)?
            };
            out.device().synchronize()?;
            Ok(())
        };
        for _ in 0..spec.warmup {
            run()?;
        }
        let mut times = Vec::with_capacity(spec.iters);
        let mut cpu = Vec::with_capacity(spec.iters);
        for _ in 0..spec.iters.max(1) {
            let (t, c) = (Instant::now(), process_cpu_seconds());
            run()?;
            times.push(t.elapsed().as_secs_f64());
            if let (Some(c0), Some(c1)) = (c, process_cpu_seconds()) {
                cpu.push(c1 - c0);
            }
        }
        let median_cpu = (cpu.len() == times.len()).then(|| median(&mut cpu));
        let med = median(&mut times); // sorts: times[0] is the minimum
        tracing::info!(
            batch = b,
            seq_len = spec.seq_len,
            median_s = med,
            "forward benchmark"
        );
        out.push(BenchResult {
            batch: b,
            seq_len: spec.seq_len,
            logits: spec.logits,
            iters: times.len(),
            median_s: med,
            min_s: times[0],
            tokens_per_s: n as f64 / med,
            median_cpu_s: median_cpu,
            tokens_per_cpu_s: median_cpu.map(|c| n as f64 / c),
            proj_tflops: 2.0 * model.config().decoder_params() as f64 * n as f64 / med / 1e12,
        });
    }
    Ok(out)
}

/// Prefill and decode speed of one sequence (batch 1) with the KV cache.
#[derive(Debug, Clone, Serialize)]
pub struct DecodeResult {
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub iters: usize,
    /// Median seconds of the prompt forward.
    pub prefill_s: f64,
    pub prefill_tokens_per_s: f64,
    /// Median seconds of the `new_tokens` one-token steps.
    pub decode_s: f64,
    pub decode_tokens_per_s: f64,
}

/// Times a prompt of `prompt_tokens` deterministic ids, then `new_tokens` greedy steps, `iters`
/// times after one untimed warm-up; medians are reported.
pub fn bench_decode(
    model: &Llama,
    prompt_tokens: usize,
    new_tokens: usize,
    iters: usize,
) -> Result<DecodeResult> {
    use crate::model::KvCache;
    let vocab = model.config().vocab_size as u64;
    let ids: Vec<u32> = (0..prompt_tokens as u64)
        .map(|i| ((i * 2_654_435_761 + 12_345) % vocab) as u32)
        .collect();
    let prompt = Tensor::from_vec(ids, (1, prompt_tokens), &Device::Cpu)?;
    let mut pre = Vec::new();
    let mut dec = Vec::new();
    for it in 0..=iters.max(1) {
        let mut cache = KvCache::new(model.blocks().len());
        let t0 = std::time::Instant::now();
        let mut logits = model.forward_step(&prompt, &mut cache)?;
        logits.device().synchronize()?;
        let t1 = std::time::Instant::now();
        for _ in 0..new_tokens {
            let next = logits
                .argmax(candle_core::D::Minus1)?
                .to_dtype(candle_core::DType::U32)?;
            logits = model.forward_step(&next.reshape((1, 1))?, &mut cache)?;
        }
        logits.device().synchronize()?;
        let t2 = std::time::Instant::now();
        if it > 0 {
            pre.push((t1 - t0).as_secs_f64());
            dec.push((t2 - t1).as_secs_f64());
        }
    }
    let (p, d) = (median(&mut pre), median(&mut dec));
    Ok(DecodeResult {
        prompt_tokens,
        new_tokens,
        iters: iters.max(1),
        prefill_s: p,
        prefill_tokens_per_s: prompt_tokens as f64 / p,
        decode_s: d,
        decode_tokens_per_s: new_tokens as f64 / d,
    })
}

/// The median of non-empty `v` (the upper one of an even count); sorts `v`.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smollm2_shape_has_the_published_parameter_count() {
        assert_eq!(smollm2_135m_config().decoder_params(), 106_202_880);
        assert_eq!(smollm2_135m_config().total_params(), 134_515_008);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_cpu_time_is_read_and_grows_with_work() {
        let a = process_cpu_seconds().unwrap();
        let mut x = 0u64;
        let t = Instant::now();
        while t.elapsed().as_millis() < 60 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(process_cpu_seconds().unwrap() > a);
    }
}

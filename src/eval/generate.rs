//! Text generation from a prompt: greedy by default, or temperature sampling from a seeded
//! `rng::Stream`. Decoding feeds the prompt once and then one token at a time through the
//! model's K/V cache; it stops at `max_new_tokens` or at the end-of-sequence token.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::llama::{KvCache, Llama};
use crate::model::tokenizer::Tokenizer;
use crate::rng::Stream;
use crate::{Error, Result};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sampling {
    /// The most likely token (ties: the lowest id).
    Greedy,
    /// Sample from `softmax(logits / temperature)` with a stream seeded by `seed`.
    Temperature { temperature: f64, seed: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Stop when this token is produced (it is not included in the output).
    pub eos_token_id: Option<u32>,
}

/// What was generated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub prompt_tokens: Vec<u32>,
    pub new_tokens: Vec<u32>,
    /// The decoded new tokens (special tokens skipped).
    pub text: String,
    /// Whether generation stopped at the end-of-sequence token.
    pub stopped_at_eos: bool,
}

/// Continue `prompt_tokens` with `model`.
pub fn generate_tokens(
    model: &Llama,
    prompt_tokens: &[u32],
    opts: &GenerateOptions,
) -> Result<(Vec<u32>, bool)> {
    if prompt_tokens.is_empty() {
        return Err(Error::EvalSetting("the prompt encodes to no tokens".into()));
    }
    let max_pos = model.config().max_position_embeddings;
    if prompt_tokens.len() + opts.max_new_tokens > max_pos {
        return Err(Error::EvalSetting(format!(
            "prompt ({} tokens) + --max-new-tokens {} exceeds the model's context of {max_pos}",
            prompt_tokens.len(),
            opts.max_new_tokens
        )));
    }
    let mut stream = match &opts.sampling {
        Sampling::Greedy => None,
        Sampling::Temperature { temperature, seed } => {
            if temperature.is_nan() || *temperature <= 0.0 {
                return Err(Error::EvalSetting(format!(
                    "temperature must be > 0, got {temperature}"
                )));
            }
            Some(Stream::new(*seed, "generate", &[]))
        }
    };
    let mut cache = KvCache::new(model.config().n_layers());
    let mut out = Vec::with_capacity(opts.max_new_tokens);
    let mut input = Tensor::new(prompt_tokens, &Device::Cpu)?.unsqueeze(0)?;
    for _ in 0..opts.max_new_tokens {
        // [1, vocab] → [vocab]
        let logits: Vec<f32> = model
            .forward_step(&input, &mut cache)?
            .squeeze(0)?
            .to_vec1()?;
        let next = match (&opts.sampling, stream.as_mut()) {
            (Sampling::Temperature { temperature, .. }, Some(s)) => {
                sample(&logits, *temperature, s)
            }
            _ => argmax(&logits),
        };
        if Some(next) == opts.eos_token_id {
            return Ok((out, true));
        }
        out.push(next);
        input = Tensor::new(&[next], &Device::Cpu)?.unsqueeze(0)?;
    }
    Ok((out, false))
}

/// Encode `prompt`, continue it, decode the continuation.
pub fn generate(
    model: &Llama,
    tokenizer: &Tokenizer,
    prompt: &str,
    opts: &GenerateOptions,
) -> Result<Generation> {
    let prompt_tokens = tokenizer.encode(prompt)?;
    let (new_tokens, stopped_at_eos) = generate_tokens(model, &prompt_tokens, opts)?;
    let text = tokenizer.decode(&new_tokens, true)?;
    Ok(Generation {
        prompt_tokens,
        new_tokens,
        text,
        stopped_at_eos,
    })
}

/// Index of the largest logit; the first one on ties (NaN never wins).
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// Draw from `softmax(logits / t)` by inverting the CDF with one uniform draw.
fn sample(logits: &[f32], t: f64, s: &mut Stream) -> u32 {
    let max = logits
        .iter()
        .copied()
        .filter(|x| !x.is_nan())
        .fold(f32::NEG_INFINITY, f32::max) as f64;
    let weights: Vec<f64> = logits
        .iter()
        .map(|&x| {
            if x.is_nan() {
                0.0
            } else {
                ((x as f64 - max) / t).exp()
            }
        })
        .collect();
    let total: f64 = weights.iter().sum();
    let mut u = s.next_f64() * total;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i as u32;
        }
        u -= w;
    }
    argmax(logits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_equal_maxima() {
        assert_eq!(argmax(&[0.0, 2.0, 2.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }

    #[test]
    fn sampling_at_low_temperature_is_greedy() {
        let mut s = Stream::new(7, "test", &[]);
        for _ in 0..20 {
            assert_eq!(sample(&[0.0, 5.0, 1.0], 0.01, &mut s), 1);
        }
    }
}

//! The resolved model configuration: one `LayerDims` per decoder layer, so a pruned model with
//! per-layer widths is described exactly. Loaders fill it from HF `config.json` (see `HfConfig`)
//! or GGUF metadata; nothing optional is left once it is built.

use serde::{Deserialize, Serialize};

/// The widths of one decoder layer. A count of 0 means the branch is removed: `n_q == 0` (and
/// then `n_kv == 0`) drops attention, `d_ff == 0` drops the FFN; the removed branch adds exactly
/// zero to the residual stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerDims {
    /// Query heads kept in this layer.
    pub n_q: usize,
    /// K/V heads kept in this layer.
    pub n_kv: usize,
    /// For each kept query head (in storage order), the index of the K/V head it reads, `< n_kv`.
    /// Groups may have different sizes.
    pub kv_map: Vec<usize>,
    /// FFN intermediate channels kept in this layer.
    pub d_ff: usize,
}

impl LayerDims {
    /// The dense layout: `n_q / n_kv` consecutive query heads share each K/V head.
    pub fn dense(n_q: usize, n_kv: usize, d_ff: usize) -> Self {
        let group = n_q.checked_div(n_kv).unwrap_or(1);
        LayerDims {
            n_q,
            n_kv,
            kv_map: (0..n_q).map(|h| h / group.max(1)).collect(),
            d_ff,
        }
    }
}

/// Llama-3.1 style RoPE frequency scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// A Llama-family decoder, fully resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub hidden_size: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub layers: Vec<LayerDims>,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl ModelConfig {
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Parameters of decoder layer `l` (projections, norms and biases), ALGORITHM.md §3.
    pub fn layer_params(&self, l: usize) -> usize {
        let d = &self.layers[l];
        self.attn_params(d.n_q, d.n_kv) + self.ffn_params(d.d_ff) + 2 * self.hidden_size
    }

    /// Parameters of an attention block with `n_q` query and `n_kv` K/V heads: the q, k, v and
    /// o projections and their biases.
    pub fn attn_params(&self, n_q: usize, n_kv: usize) -> usize {
        let (h, dh) = (self.hidden_size, self.head_dim);
        let mut p = h * dh * (2 * n_q + 2 * n_kv);
        if self.attention_bias {
            p += dh * (n_q + 2 * n_kv);
        }
        p
    }

    /// Parameters of a gated FFN with `d_ff` channels: gate, up and down, and their biases.
    pub fn ffn_params(&self, d_ff: usize) -> usize {
        let h = self.hidden_size;
        let mut p = 3 * h * d_ff;
        if self.mlp_bias {
            p += 2 * d_ff + if d_ff > 0 { h } else { 0 };
        }
        p
    }

    /// The prunable linear parameters of all decoder layers, split (attention, FFN): the q, k,
    /// v, o projections and the gate, up, down projections, with their biases.
    pub fn linear_params(&self) -> (usize, usize) {
        self.layers.iter().fold((0, 0), |(a, f), d| {
            (
                a + self.attn_params(d.n_q, d.n_kv),
                f + self.ffn_params(d.d_ff),
            )
        })
    }

    /// Parameters of all decoder layers.
    pub fn decoder_params(&self) -> usize {
        (0..self.n_layers()).map(|l| self.layer_params(l)).sum()
    }

    /// Decoder + embeddings + final norm + an untied `lm_head`.
    pub fn total_params(&self) -> usize {
        let emb = self.vocab_size * self.hidden_size;
        self.decoder_params()
            + emb
            + self.hidden_size
            + if self.tie_word_embeddings { 0 } else { emb }
    }
}

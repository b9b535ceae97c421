//! The form a model with per-layer dims takes in a GGUF file for llama.cpp (ALGORITHM.md §10b),
//! decided per layer before any tensor is written: even GQA groups by K/V duplication, and which
//! removed branches are omitted and which are padded with one zero-output unit.
//!
//! llama.cpp's `deci` graph (its Nemotron-51B architecture) reads per-layer head counts and FFN
//! widths and skips a branch whose count is 0, with three limits this module works around:
//! - the head dim is derived only when layer 0 has heads, so layer 0 never has 0 heads;
//! - a layer with `feed_forward_length = 0` skips the rest of the layer including the residual
//!   add of its attention output, so an FFN is omitted only where attention is omitted too;
//! - the last layer's output-row selection is applied after the FFN, so its FFN is never omitted.
//!
//! Each padded unit has zero output columns (and zero inputs), so it adds exactly zero.

use crate::model::saved::{group_sizes, grouped_head_order};
use crate::model::{LayerDims, ModelConfig};

/// What to do with a branch that has 0 units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ZeroWidth {
    /// Omit the branch (count 0, no tensors) wherever llama.cpp's `deci` graph computes it
    /// correctly; pad it where it does not.
    #[default]
    Omit,
    /// Always write one head / channel with zero output columns, for runtimes that reject 0.
    PadOne,
}

/// How one layer is written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GgufLayerForm {
    /// Query heads written (the layer's, or 1 when padded).
    pub n_q: usize,
    /// K/V heads written, after duplication to even groups.
    pub n_kv: usize,
    /// FFN channels written (the layer's, or 1 when padded).
    pub d_ff: usize,
    /// Query heads per K/V head in the written layer (0 when attention is omitted).
    pub group: usize,
    /// For each written K/V head, the K/V head of the sliced layer it copies.
    pub kv_source: Vec<usize>,
    /// Query heads of the sliced layer in written order (grouped by K/V head).
    pub head_order: Vec<usize>,
    pub padded_attention: bool,
    pub padded_ffn: bool,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The written form of layer `l < cfg.n_layers()` of `cfg`, whose dims pass
/// `llama_block::validate_dims` (`write_gguf` checks both).
pub fn layer_form(cfg: &ModelConfig, l: usize, zero_width: ZeroWidth) -> GgufLayerForm {
    let d: &LayerDims = &cfg.layers[l];
    let last = l + 1 == cfg.n_layers();
    let pad_attn = d.n_q == 0 && (zero_width == ZeroWidth::PadOne || l == 0);
    let (n_q, n_kv, group, kv_source, head_order) = if pad_attn {
        (1, 1, 1, vec![0], Vec::new())
    } else if d.n_q == 0 {
        (0, 0, 0, Vec::new(), Vec::new())
    } else {
        let sizes = group_sizes(d);
        let g = sizes.iter().fold(0, |a, &c| gcd(a, c));
        let kv_source: Vec<usize> = sizes
            .iter()
            .enumerate()
            .flat_map(|(j, &c)| std::iter::repeat_n(j, c / g))
            .collect();
        (d.n_q, kv_source.len(), g, kv_source, grouped_head_order(d))
    };
    let pad_ffn = d.d_ff == 0 && (zero_width == ZeroWidth::PadOne || n_q > 0 || last);
    GgufLayerForm {
        n_q,
        n_kv,
        d_ff: if pad_ffn { 1 } else { d.d_ff },
        group,
        kv_source,
        head_order,
        padded_attention: pad_attn,
        padded_ffn: pad_ffn,
    }
}

/// The config of the model as written: dims after padding and K/V duplication (dense maps).
pub fn written_config(cfg: &ModelConfig, zero_width: ZeroWidth) -> ModelConfig {
    let mut w = cfg.clone();
    w.layers = (0..cfg.n_layers())
        .map(|l| {
            let f = layer_form(cfg, l, zero_width);
            LayerDims::dense(f.n_q, f.n_kv, f.d_ff)
        })
        .collect();
    w
}

/// Whether every written layer has the same widths, none zero: llama.cpp's plain `llama`
/// architecture then takes the model.
pub fn is_uniform(written: &ModelConfig) -> bool {
    let first = written.layers.first();
    first.is_some_and(|f| f.n_q > 0 && f.d_ff > 0)
        && written
            .layers
            .iter()
            .all(|d| first.is_some_and(|f| (d.n_q, d.n_kv, d.d_ff) == (f.n_q, f.n_kv, f.d_ff)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(layers: Vec<LayerDims>) -> ModelConfig {
        ModelConfig {
            hidden_size: 8,
            head_dim: 4,
            vocab_size: 10,
            layers,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
            attention_bias: false,
            mlp_bias: false,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    #[test]
    fn uneven_groups_duplicate_kv_heads_by_the_gcd() {
        // Groups of 2 and 4 query heads: g = 2, K/V head 0 once, K/V head 1 twice.
        let d = LayerDims {
            n_q: 6,
            n_kv: 2,
            kv_map: vec![0, 1, 1, 0, 1, 1],
            d_ff: 3,
        };
        let f = layer_form(&cfg(vec![d]), 0, ZeroWidth::Omit);
        assert_eq!((f.n_q, f.n_kv, f.group), (6, 3, 2));
        assert_eq!(f.kv_source, vec![0, 1, 1]);
        assert_eq!(f.head_order, vec![0, 3, 1, 2, 4, 5]);
    }

    #[test]
    fn removed_branches_are_padded_only_where_deci_needs_it() {
        let none = LayerDims {
            n_q: 0,
            n_kv: 0,
            kv_map: vec![],
            d_ff: 0,
        };
        let c = cfg(vec![
            none.clone(),
            LayerDims::dense(2, 1, 0),
            none.clone(),
            LayerDims::dense(0, 0, 4),
            none,
        ]);
        let forms: Vec<_> = (0..5).map(|l| layer_form(&c, l, ZeroWidth::Omit)).collect();
        // Layer 0 keeps one head (llama.cpp derives the head dim from it); its FFN follows.
        assert!(forms[0].padded_attention && forms[0].padded_ffn);
        // Attention without FFN: the FFN is padded so the attention output is added.
        assert!(!forms[1].padded_attention && forms[1].padded_ffn);
        // A fully removed middle layer is omitted.
        assert_eq!((forms[2].n_q, forms[2].d_ff), (0, 0));
        assert_eq!((forms[3].n_q, forms[3].d_ff), (0, 4));
        // The last layer always has an FFN.
        assert_eq!((forms[4].n_q, forms[4].d_ff), (0, 1));
        let pad: Vec<_> = (0..5)
            .map(|l| layer_form(&c, l, ZeroWidth::PadOne))
            .collect();
        assert!(pad.iter().all(|f| f.n_q >= 1 && f.d_ff >= 1));
    }
}

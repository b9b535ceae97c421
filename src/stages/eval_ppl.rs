//! `eval-ppl` stage: perplexity (ALGORITHM.md §11) of the dense model, or of a pruned model
//! assembled in memory from per-layer variants.
//!
//! Inputs: `model`, `windows` (an `eval-text` stage) and, when `choice` is given or
//! `from-search` is set (the choice then comes from input `search`), `layers` (one
//! stage per decoder layer, in order, each exposing `attn-{level}` / `ffn-{level}` variant
//! records: `supernet-layer` or `baseline-layer`). `choice[l] = [attn level, ffn level]` picks
//! layer l's variants; each block is then physically sliced (heads, K/V heads still read, FFN
//! channels) with the variant's weight as `o_proj`/`down_proj`. The model runs layer by layer
//! over the windows (`perplexity_layer_by_layer`): one decoder layer is in memory at a time.
//!
//! Outputs: record `ppl` (`PerplexityRecord`), the same as JSON bytes published at
//! `ppl/{label}.json` (`ppl/{text}/{label}.json` when the pipeline names its texts), metrics `perplexity`, `tokens`, `decoder_params`. Invalidated by: params,
//! the model record, the windows, the chosen layer stages' outputs.

use serde::{Deserialize, Serialize};

use super::model_ref::{ModelRecord, open};
use super::{Chosen, choice_slots};
use crate::data::EvalWindows;
use crate::engine::{InputSlot, Outputs, Stage, StageContext};
use crate::eval::perplexity::{PerplexityOptions, perplexity_layer_by_layer};
use crate::model::{Block, Compute, Embeddings, Head, LayerDims, ModelConfig, TensorSource};
use crate::supernet::layer::{DenseLayer, assemble_block};
use crate::vocab::LayerLevels;
use crate::{Error, Result};

/// Decoder layer `l` as evaluated, for `compute`: dense, or sliced to the chosen variants of its
/// layer stage.
pub(crate) fn build_block(
    cfg: &ModelConfig,
    src: &dyn TensorSource,
    chosen: Option<&Chosen>,
    l: usize,
    compute: &Compute,
) -> Result<Block> {
    match chosen {
        None => Block::load_on(cfg, l, src, compute),
        Some(c) => {
            let (attn, ffn) = c.layer(l)?;
            assemble_block(
                cfg,
                &DenseLayer::load_on(cfg, l, src, compute)?,
                &attn,
                &ffn,
            )
        }
    }
}

/// Hidden states of the windows run through the layers together, at most.
pub(crate) const GROUP_BYTES: usize = 256 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EvalPplParams {
    /// Names the published report (`ppl/{label}.json`).
    pub label: String,
    /// Per layer `[attn level, ffn level]`; absent = the dense model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice: Option<Vec<LayerLevels>>,
    /// Take the choice from input `search` (a `search` stage) instead [false].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_search: bool,
    /// The held-out text's name, when the pipeline has several (`ppl/{text}/{label}.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// What `eval-ppl` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerplexityRecord {
    pub label: String,
    /// The held-out text's name, when the pipeline names its texts.
    pub text: Option<String>,
    pub perplexity: f64,
    pub mean_nll: f64,
    pub tokens: usize,
    pub windows: usize,
    pub seq_len: usize,
    pub decoder_params: usize,
    pub total_params: usize,
    pub choice: Option<Vec<LayerLevels>>,
}

pub struct EvalPpl(EvalPplParams);

impl Stage for EvalPpl {
    const KIND: &'static str = "eval-ppl";
    // 2: the record carries the text's name.
    const VERSION: u32 = 2;
    type Params = EvalPplParams;

    fn new(p: EvalPplParams) -> Result<Self> {
        if p.choice.is_some() && p.from_search {
            return Err(Error::msg(format!(
                "eval-ppl `{}`: give `choice` or `from-search`, not both",
                p.label
            )));
        }
        if p.label.is_empty()
            || !p
                .label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(Error::msg(format!(
                "label `{}`: use letters, digits, `-`, `_`, `.`",
                p.label
            )));
        }
        if let Some(t) = &p.text
            && (t.is_empty()
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
        {
            return Err(Error::msg(format!(
                "eval-ppl `{}`: text name `{t}`: use letters, digits, `-`, `_`",
                p.label
            )));
        }
        Ok(Self(p))
    }

    fn code_versions(&self) -> Vec<(&'static str, u32)> {
        crate::model::forward_code_versions()
    }

    fn inputs(&self) -> Vec<InputSlot> {
        let mut v = vec![InputSlot::one("model"), InputSlot::one("windows")];
        v.extend(choice_slots(self.0.choice.is_some(), self.0.from_search));
        v
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outputs> {
        let record: ModelRecord = ctx.input("model")?.record("model")?;
        let windows: EvalWindows = ctx.input("windows")?.record("windows")?;
        let model = open(&record)?;
        let cfg = &model.config;
        let src = model.source.as_ref();
        // The layer stages of the choice, checked up front; each layer's variants are read when
        // its block is built.
        let what = format!("eval-ppl `{}`", self.0.label);
        let chosen = Chosen::resolve(
            ctx,
            &what,
            &self.0.choice,
            self.0.from_search,
            cfg.n_layers(),
        )?;
        // One decoder layer at a time: the model is never held whole.
        let mut dims: Vec<Option<LayerDims>> = vec![None; cfg.n_layers()];
        let compute = ctx.compute()?;
        let block = |l: usize| -> Result<Block> {
            let b = build_block(cfg, src, chosen.as_ref(), l, &compute)?;
            dims[l] = Some(b.dims().clone());
            Ok(b)
        };
        let emb = Embeddings::load_on(cfg, src, &compute)?;
        let head = Head::load_on(cfg, src, &emb, &compute)?;
        let stream: Vec<u32> = windows.windows.iter().flatten().copied().collect();
        let opts = PerplexityOptions {
            seq_len: windows.seq_len,
            max_tokens: None,
        };
        let report = perplexity_layer_by_layer(
            &emb,
            cfg.n_layers(),
            block,
            &head,
            &stream,
            &opts,
            GROUP_BYTES,
        )?;
        let mut pruned_cfg = cfg.clone();
        pruned_cfg.layers = dims
            .into_iter()
            .map(|d| d.ok_or_else(|| Error::msg("eval-ppl: a layer was never built")))
            .collect::<Result<_>>()?;
        let pruned_cfg = &pruned_cfg;
        let rec = PerplexityRecord {
            label: self.0.label.clone(),
            text: self.0.text.clone(),
            perplexity: report.perplexity,
            mean_nll: report.mean_nll,
            tokens: report.tokens,
            windows: report.windows,
            seq_len: report.seq_len,
            decoder_params: pruned_cfg.decoder_params(),
            total_params: pruned_cfg.total_params(),
            choice: chosen.as_ref().map(|c| c.levels().to_vec()),
        };
        tracing::info!(
            label = %rec.label,
            text = rec.text.as_deref().unwrap_or(""),
            perplexity = rec.perplexity,
            "perplexity"
        );
        let mut o = Outputs::new();
        o.metric("perplexity", rec.perplexity);
        o.metric("tokens", rec.tokens as f64);
        o.metric("decoder_params", rec.decoder_params as f64);
        o.record("ppl", &rec)?;
        let json = serde_json::to_vec_pretty(&rec)
            .map_err(|e| Error::msg(format!("encoding the perplexity report: {e}")))?;
        let at = match &self.0.text {
            Some(t) => format!("ppl/{t}/{}.json", self.0.label),
            None => format!("ppl/{}.json", self.0.label),
        };
        o.bytes("report", json).publish(at);
        Ok(o)
    }
}

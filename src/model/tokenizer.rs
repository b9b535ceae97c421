//! The text ↔ token-id mapping of a model, from a `tokenizer.json` or rebuilt from GGUF metadata
//! (`tokenizer.ggml.*`). We always encode without special tokens (no BOS): the perplexity
//! protocol (ALGORITHM.md §11) and calibration sampling want the bare token stream.
//!
//! From GGUF we rebuild byte-level BPE as the original Hugging Face tokenizer does, chosen by
//! `tokenizer.ggml.pre`: e.g. SmolLM (`smollm`) splits every digit on its own before the GPT-2
//! byte-level split, and no prefix space is added (candle's GGUF fallback adds one and skips the
//! digit split, which shifts token ids).

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::gguf::GgufFile;
use crate::{Error, Result};

/// llama.cpp's `tokenizer.ggml.token_type` values we act on.
const TOKEN_TYPE_CONTROL: u64 = 3;
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

/// Llama-3 style split: contractions, letters, digits in groups of up to three, punctuation runs,
/// newline runs, other whitespace.
const REGEX_LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2 style split: as Llama-3 but every digit alone.
const REGEX_QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A tokenizer and the file it came from (for error messages).
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Load a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::Tokenizer {
                path: path.to_path_buf(),
                reason: "no such file".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Tokenizer {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(Tokenizer {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// Rebuild the tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let path = file.path().to_path_buf();
        let err = |reason: String| Error::Tokenizer {
            path: path.clone(),
            reason,
        };
        let string = |key: &str| -> Result<Option<String>> {
            match file.metadata(key) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(v) => Err(err(format!("`{key}` is not a string: {v:?}"))),
            }
        };
        let model = string("tokenizer.ggml.model")?
            .ok_or_else(|| err("no `tokenizer.ggml.model` in the metadata".into()))?;
        if model != "gpt2" {
            return Err(err(format!(
                "tokenizer model `{model}` is not supported from GGUF (only byte-level BPE, `gpt2`); put a tokenizer.json beside the model instead"
            )));
        }
        let tokens = string_array(file, "tokenizer.ggml.tokens").map_err(err)?;
        let merges = string_array(file, "tokenizer.ggml.merges")
            .map_err(err)?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| err(format!("merge `{m}` has no space")))
            })
            .collect::<Result<Vec<_>>>()?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| err(format!("building BPE: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre = string("tokenizer.ggml.pre")?.unwrap_or_else(|| "default".into());
        let (normalize_nfc, pre_tokenizer, trim_offsets) = pre_tokenizer(&pre).map_err(err)?;
        if normalize_nfc {
            inner
                .with_normalizer(Some(NFC))
                .map_err(|e| err(format!("normalizer: {e}")))?;
        }
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::new(false, trim_offsets, true)));

        let types = match file.metadata("tokenizer.ggml.token_type") {
            Some(Value::Array(vs)) => vs.iter().map(value_u64).collect::<Vec<_>>(),
            _ => Vec::new(),
        };
        let mut special = Vec::new();
        let mut user = Vec::new();
        for (i, ty) in types.iter().enumerate() {
            let Some(tok) = tokens.get(i) else { break };
            match ty {
                Some(TOKEN_TYPE_CONTROL) => special.push(AddedToken::from(tok.clone(), true)),
                Some(TOKEN_TYPE_USER_DEFINED) => user.push(AddedToken::from(tok.clone(), false)),
                _ => {}
            }
        }
        inner
            .add_special_tokens(special)
            .map_err(|e| err(format!("adding special tokens: {e}")))?;
        inner
            .add_tokens(user)
            .map_err(|e| err(format!("adding user tokens: {e}")))?;
        Ok(Tokenizer { inner, path })
    }

    /// Token ids of `text`, with no special tokens added (no BOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                reason: format!("encoding: {e}"),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids`; special tokens are dropped when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                reason: format!("decoding: {e}"),
            })
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Write as a Hugging Face `tokenizer.json` (our saved format carries one).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, false).map_err(|e| Error::Tokenizer {
            path: path.to_path_buf(),
            reason: format!("writing: {e}"),
        })
    }

    /// Where it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying `tokenizers` object.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

fn value_u64(v: &Value) -> Option<u64> {
    match v {
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::U32(x) => Some(*x as u64),
        Value::I64(x) => u64::try_from(*x).ok(),
        Value::U64(x) => Some(*x),
        Value::U8(x) => Some(*x as u64),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::U16(x) => Some(*x as u64),
        Value::I16(x) => u64::try_from(*x).ok(),
        _ => None,
    }
}

fn string_array(file: &GgufFile, key: &str) -> std::result::Result<Vec<String>, String> {
    match file.metadata(key) {
        Some(Value::Array(vs)) => vs
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!("`{key}` holds a non-string {other:?}")),
            })
            .collect(),
        Some(v) => Err(format!("`{key}` is not an array: {v:?}")),
        None => Err(format!("no `{key}` in the metadata")),
    }
}

/// The pre-tokenizer (and whether to NFC-normalize first, and whether the decoder trims offsets)
/// for llama.cpp's `tokenizer.ggml.pre` name, matching the Hugging Face tokenizer it came from.
fn pre_tokenizer(pre: &str) -> std::result::Result<(bool, PreTokenizerWrapper, bool), String> {
    let regex_then_bytes = |regex: &str| -> std::result::Result<PreTokenizerWrapper, String> {
        let split = Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| format!("pre-tokenizer regex: {e}"))?;
        Ok(Sequence::new(vec![
            split.into(),
            ByteLevel::new(false, false, false).into(),
        ])
        .into())
    };
    match pre {
        // GPT-2: byte-level with its own regex, no prefix space.
        "default" | "gpt2" | "gpt-2" => Ok((false, ByteLevel::new(false, true, true).into(), true)),
        // SmolLM / SmolLM2 (and StarCoder): every digit alone, then the GPT-2 byte-level split.
        "smollm" | "starcoder" => {
            let seq = Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ]);
            Ok((false, seq.into(), true))
        }
        "llama3" | "llama-bpe" | "smaug-bpe" => Ok((false, regex_then_bytes(REGEX_LLAMA3)?, true)),
        "qwen2" => Ok((true, regex_then_bytes(REGEX_QWEN2)?, false)),
        other => Err(format!(
            "pre-tokenizer `{other}` (tokenizer.ggml.pre) is not supported from GGUF; put a tokenizer.json beside the model instead"
        )),
    }
}

/// Anything that turns text into token ids without special tokens: a model's tokenizer, or the
/// byte-level codec of random test models. The zero-shot scorer takes one.
pub trait Encode {
    fn encode_text(&self, text: &str) -> Result<Vec<u32>>;
}

impl Encode for Tokenizer {
    fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        self.encode(text)
    }
}

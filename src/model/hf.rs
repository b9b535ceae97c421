//! Hugging Face model directories: the `config.json` mirror (lenient: unknown keys are ignored)
//! resolved into a `ModelConfig`, and a memory-mapped safetensors source (one `model.safetensors`
//! or shards listed in `model.safetensors.index.json`; bf16/f16/f32 converted to f32 when a
//! tensor is read, so only the layer being processed is ever in memory, or kept in its 16 bits
//! by `tensor_stored`, for the vocabulary tables). Our saved format
//! (`saved.rs`) is such a directory whose `config.json` adds a `pruning` object with per-layer
//! widths; it opens through the same `open_hf_dir`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use super::{LayerDims, Llama3RopeScaling, ModelConfig, TensorSource};
use crate::{Error, Result};

/// Architectures whose tensors and forward are the Llama ones.
const SUPPORTED: [&str; 2] = ["LlamaForCausalLM", "MistralForCausalLM"];
const SUPPORTED_TYPES: [&str; 2] = ["llama", "mistral"];

/// The keys of an HF `config.json` that tyr reads; every other key is ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    /// transformers' `LlamaConfig` default.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<HfRopeScaling>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub torch_dtype: Option<String>,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Per-layer widths of a model pruned by tyr (ALGORITHM.md §10a).
    #[serde(default)]
    pub pruning: Option<PruningInfo>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> usize {
    2048
}

/// `eos_token_id` is a single id or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

/// `rope_scaling`; transformers spells the kind `rope_type` (older files: `type`).
#[derive(Debug, Clone, Deserialize)]
pub struct HfRopeScaling {
    #[serde(default)]
    pub rope_type: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

/// The `pruning` object of our saved format. After export the query heads of a layer are
/// ordered so that those sharing a K/V head are contiguous, so the group sizes give the map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruningInfo {
    pub num_attention_heads_per_layer: Vec<usize>,
    pub num_key_value_heads_per_layer: Vec<usize>,
    pub kv_group_sizes_per_layer: Vec<Vec<usize>>,
    pub intermediate_size_per_layer: Vec<usize>,
    pub head_dim: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_sparsity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub achieved_sparsity: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digests: BTreeMap<String, String>,
}

impl HfConfig {
    /// Parses `config.json` text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let cfg: HfConfig = serde_json::from_str(text).map_err(|e| Error::ModelConfig {
            path: path.into(),
            msg: format!("not a usable model config: {e}"),
        })?;
        Ok(cfg)
    }

    /// Checks the architecture and resolves every default into a `ModelConfig`.
    pub fn resolve(&self, path: &Path) -> Result<ModelConfig> {
        let bad = |msg: String| Error::ModelConfig {
            path: path.into(),
            msg,
        };
        let arch_ok = if self.architectures.is_empty() {
            self.model_type
                .as_deref()
                .is_some_and(|t| SUPPORTED_TYPES.contains(&t))
        } else {
            self.architectures
                .iter()
                .any(|a| SUPPORTED.contains(&a.as_str()))
        };
        if !arch_ok {
            let architecture = if self.architectures.is_empty() {
                self.model_type.clone().unwrap_or_else(|| "unknown".into())
            } else {
                self.architectures.join(", ")
            };
            return Err(Error::UnsupportedArchitecture {
                path: path.into(),
                architecture,
            });
        }
        if let Some(w) = self
            .sliding_window
            .filter(|&w| w < self.max_position_embeddings)
        {
            tracing::warn!(path = %path.display(), sliding_window = w,
                "sliding-window attention is not implemented; sequences longer than the window differ");
        }
        let n_heads = self.num_attention_heads;
        let n_kv = self.num_key_value_heads.unwrap_or(n_heads);
        let head_dim = match (&self.pruning, self.head_dim) {
            (Some(p), _) => p.head_dim,
            (None, Some(d)) => d,
            (None, None) if n_heads > 0 && self.hidden_size.is_multiple_of(n_heads) => {
                self.hidden_size / n_heads
            }
            _ => {
                return Err(bad(format!(
                    "hidden_size {} is not a multiple of num_attention_heads {n_heads}",
                    self.hidden_size
                )));
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(bad(format!(
                "head_dim {head_dim} must be even and positive for RoPE"
            )));
        }
        let layers = match &self.pruning {
            Some(p) => p.layers(self.num_hidden_layers).map_err(bad)?,
            None => {
                if n_kv == 0 || !n_heads.is_multiple_of(n_kv) {
                    return Err(bad(format!(
                        "num_attention_heads {n_heads} is not a multiple of num_key_value_heads {n_kv}"
                    )));
                }
                vec![
                    LayerDims::dense(n_heads, n_kv, self.intermediate_size);
                    self.num_hidden_layers
                ]
            }
        };
        let rope_scaling = match &self.rope_scaling {
            None => None,
            Some(s) => {
                match s.rope_type.as_deref().or(s.kind.as_deref()) {
                    None | Some("default") => None,
                    Some("llama3") => {
                        let need = |v: Option<f64>, k: &str| {
                            v.ok_or_else(|| bad(format!("rope_scaling llama3 needs `{k}`")))
                        };
                        Some(Llama3RopeScaling {
                        factor: need(s.factor, "factor")?,
                        low_freq_factor: need(s.low_freq_factor, "low_freq_factor")?,
                        high_freq_factor: need(s.high_freq_factor, "high_freq_factor")?,
                        original_max_position_embeddings: s
                            .original_max_position_embeddings
                            .ok_or_else(|| bad("rope_scaling llama3 needs `original_max_position_embeddings`".into()))?,
                    })
                    }
                    Some(other) => {
                        return Err(bad(format!(
                            "rope_scaling type `{other}` is not supported (only `llama3`)"
                        )));
                    }
                }
            }
        };
        Ok(ModelConfig {
            hidden_size: self.hidden_size,
            head_dim,
            vocab_size: self.vocab_size,
            layers,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            rope_scaling,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            attention_bias: self.attention_bias,
            mlp_bias: self.mlp_bias,
            bos_token_id: self.bos_token_id,
            eos_token_id: match &self.eos_token_id {
                Some(TokenIds::One(i)) => Some(*i),
                Some(TokenIds::Many(v)) => v.first().copied(),
                None => None,
            },
        })
    }
}

impl PruningInfo {
    /// Per-layer dims from the lists; the map gives group j the next `sizes[j]` query heads.
    pub fn layers(&self, n_layers: usize) -> std::result::Result<Vec<LayerDims>, String> {
        let lens = [
            (
                "num_attention_heads_per_layer",
                self.num_attention_heads_per_layer.len(),
            ),
            (
                "num_key_value_heads_per_layer",
                self.num_key_value_heads_per_layer.len(),
            ),
            (
                "kv_group_sizes_per_layer",
                self.kv_group_sizes_per_layer.len(),
            ),
            (
                "intermediate_size_per_layer",
                self.intermediate_size_per_layer.len(),
            ),
        ];
        if let Some((k, n)) = lens.iter().find(|(_, n)| *n != n_layers) {
            return Err(format!("pruning.{k} has {n} entries for {n_layers} layers"));
        }
        (0..n_layers)
            .map(|l| {
                let (nq, nkv) = (self.num_attention_heads_per_layer[l], self.num_key_value_heads_per_layer[l]);
                let sizes = &self.kv_group_sizes_per_layer[l];
                if sizes.len() != nkv || sizes.iter().sum::<usize>() != nq {
                    return Err(format!(
                        "layer {l}: kv group sizes {sizes:?} do not describe {nq} query heads over {nkv} K/V heads"
                    ));
                }
                let kv_map = sizes.iter().enumerate().flat_map(|(j, &c)| std::iter::repeat_n(j, c)).collect();
                Ok(LayerDims { n_q: nq, n_kv: nkv, kv_map, d_ff: self.intermediate_size_per_layer[l] })
            })
            .collect()
    }
}

/// Where one tensor's bytes are.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// Tensors of one or more safetensors files, read (and converted to f32) by name. Each read is
/// a positioned read of that tensor's bytes, not a memory map kept open: a map's touched pages
/// count in the process's resident set (and a cgroup's memory) until it is unmapped, so a stage
/// that walks every layer would hold the whole file (16 GB for an 8B model in bf16) by its end.
#[derive(Debug)]
pub struct SafetensorsSource {
    files: Vec<(PathBuf, std::fs::File)>,
    entries: BTreeMap<String, Entry>,
}

impl SafetensorsSource {
    /// Maps `paths` and indexes their headers (later files win on a duplicate name).
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut entries = BTreeMap::new();
        for (i, path) in paths.iter().enumerate() {
            let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            // The header is parsed from a map of the whole file (the parser checks the data
            // offsets against the file's length), which is dropped at once: only the header's
            // pages are touched.
            // SAFETY: the map is read-only and lives only for the parse; like every mmap-based
            // loader we rely on the file not being truncated meanwhile.
            let mmap = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
            let (n, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| Error::ModelConfig {
                path: path.clone(),
                msg: format!("not a safetensors file: {e}"),
            })?;
            drop(mmap);
            let base = 8 + n;
            for (name, info) in meta.tensors() {
                let (s, e) = info.data_offsets;
                entries.insert(
                    name,
                    Entry {
                        file: i,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        start: base + s,
                        end: base + e,
                    },
                );
            }
            files.push((path.clone(), f));
        }
        Ok(SafetensorsSource { files, entries })
    }

    /// The stored shape of `name` without reading it.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }
}

impl SafetensorsSource {
    /// The bytes and entry of `name`, checked against its shape and dtype.
    fn raw(&self, name: &str) -> Result<(Vec<u8>, &Entry)> {
        let e = self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            tensor: name.into(),
            location: self.location(name),
        })?;
        let bad = |msg: String| Error::TensorData {
            tensor: name.into(),
            location: self.location(name),
            msg,
        };
        let n: usize = e.shape.iter().product();
        let width = match e.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => {
                return Err(bad(format!(
                    "dtype {other:?} is not supported (bf16, f16, f32 are)"
                )));
            }
        };
        // The parser checked the offsets against the file's length when it was opened.
        let len = e.end - e.start;
        if Some(len) != n.checked_mul(width) {
            return Err(bad(format!(
                "{len} bytes for shape {:?} of {:?}",
                e.shape, e.dtype
            )));
        }
        let (path, file) = &self.files[e.file];
        let mut bytes = vec![0u8; len];
        std::os::unix::fs::FileExt::read_exact_at(file, &mut bytes, e.start as u64).map_err(
            |err| match err.kind() {
                std::io::ErrorKind::UnexpectedEof => {
                    bad("data runs past the end of the file (was it truncated?)".into())
                }
                _ => Error::io(path, err),
            },
        )?;
        Ok((bytes, e))
    }
}

impl TensorSource for SafetensorsSource {
    fn tensor(&self, name: &str) -> Result<Tensor> {
        let (bytes, e) = self.raw(name)?;
        let data: Vec<f32> = match e.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            _ => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        };
        Ok(Tensor::from_vec(data, e.shape.as_slice(), &Device::Cpu)?)
    }

    fn tensor_stored(&self, name: &str) -> Result<Tensor> {
        let (bytes, e) = self.raw(name)?;
        let shape = e.shape.as_slice();
        Ok(match e.dtype {
            Dtype::F16 => {
                let v: Vec<half::f16> = bytes
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
                    .collect();
                Tensor::from_vec(v, shape, &Device::Cpu)?
            }
            Dtype::BF16 => {
                let v: Vec<half::bf16> = bytes
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]))
                    .collect();
                Tensor::from_vec(v, shape, &Device::Cpu)?
            }
            _ => self.tensor(name)?,
        })
    }

    fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    fn location(&self, name: &str) -> String {
        match self.entries.get(name) {
            Some(e) => self.files[e.file].0.display().to_string(),
            None => self
                .files
                .iter()
                .map(|(p, _)| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// Reads and parses `dir/config.json`; also returns the raw JSON object (its keys are kept when
/// a pruned model is saved).
pub fn read_hf_config(
    dir: &Path,
) -> Result<(HfConfig, serde_json::Map<String, serde_json::Value>)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let cfg = HfConfig::parse(&text, &path)?;
    let raw = match serde_json::from_str(&text) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => {
            return Err(Error::ModelConfig {
                path,
                msg: "config.json is not a JSON object".into(),
            });
        }
    };
    Ok((cfg, raw))
}

/// The safetensors files of `dir`: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json` (in first-appearance order of its `weight_map`).
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::ModelConfig {
            path: index.clone(),
            msg: format!("bad index: {e}"),
        })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::ModelConfig {
                path: index.clone(),
                msg: "no `weight_map` object".into(),
            })?;
        let mut files: Vec<PathBuf> = Vec::new();
        for f in map.values() {
            let f = f.as_str().ok_or_else(|| Error::ModelConfig {
                path: index.clone(),
                msg: "a shard name is not a string".into(),
            })?;
            let p = dir.join(f);
            if !files.contains(&p) {
                files.push(p);
            }
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(Error::ModelConfig {
        path: dir.into(),
        msg: "no model.safetensors or model.safetensors.index.json in this directory".into(),
    })
}

/// Opens a Hugging Face model directory (or one saved by tyr): its resolved config and a lazy
/// tensor source (each tensor read when asked for). Shapes are checked against the config when
/// blocks are built.
pub fn open_hf_dir(dir: &Path) -> Result<(ModelConfig, Box<dyn TensorSource>)> {
    let (hf, _) = read_hf_config(dir)?;
    let cfg = hf.resolve(&dir.join("config.json"))?;
    let src = SafetensorsSource::open(&safetensors_files(dir)?)?;
    Ok((cfg, Box::new(src)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ModelConfig> {
        HfConfig::parse(text, Path::new("config.json"))?.resolve(Path::new("config.json"))
    }

    const SMOL: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":576,"intermediate_size":1536,
        "num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,"vocab_size":49152,
        "rms_norm_eps":1e-5,"rope_theta":100000,"max_position_embeddings":8192,"tie_word_embeddings":true,
        "torch_dtype":"bfloat16","bos_token_id":1,"eos_token_id":[2,3],"some_new_key":{"x":1}}"#;

    #[test]
    fn smollm2_config_resolves_with_extra_keys_ignored() {
        let c = parse(SMOL).unwrap();
        assert_eq!((c.head_dim, c.n_layers(), c.vocab_size), (64, 30, 49152));
        assert_eq!(c.layers[0], LayerDims::dense(9, 3, 1536));
        assert_eq!(c.eos_token_id, Some(2));
        assert!(c.tie_word_embeddings);
        assert_eq!(c.total_params(), 134_515_008);
    }

    #[test]
    fn llama3_rope_scaling_is_read() {
        let t = SMOL.replace(
            r#""torch_dtype""#,
            r#""rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192,"rope_type":"llama3"},"head_dim":32,"torch_dtype""#,
        );
        let c = parse(&t).unwrap();
        assert_eq!(c.rope_scaling.unwrap().factor, 8.0);
        assert_eq!(c.head_dim, 32);
    }

    #[test]
    fn unsupported_architecture_names_the_file() {
        let t = SMOL.replace("LlamaForCausalLM", "GPT2LMHeadModel");
        let e = parse(&t).unwrap_err().to_string();
        assert!(
            e.contains("config.json") && e.contains("GPT2LMHeadModel"),
            "{e}"
        );
    }

    #[test]
    fn unknown_rope_scaling_is_an_error() {
        let t = SMOL.replace(
            r#""torch_dtype""#,
            r#""rope_scaling":{"type":"yarn","factor":4.0},"torch_dtype""#,
        );
        assert!(parse(&t).unwrap_err().to_string().contains("yarn"));
    }

    #[test]
    fn pruning_lists_give_per_layer_dims_with_contiguous_groups() {
        let p = PruningInfo {
            num_attention_heads_per_layer: vec![3, 0],
            num_key_value_heads_per_layer: vec![2, 0],
            kv_group_sizes_per_layer: vec![vec![1, 2], vec![]],
            intermediate_size_per_layer: vec![5, 0],
            head_dim: 8,
            target_sparsity: None,
            achieved_sparsity: None,
            seed: None,
            digests: BTreeMap::new(),
        };
        let l = p.layers(2).unwrap();
        assert_eq!(l[0].kv_map, vec![0, 1, 1]);
        assert_eq!(
            l[1],
            LayerDims {
                n_q: 0,
                n_kv: 0,
                kv_map: vec![],
                d_ff: 0
            }
        );
        assert!(p.layers(3).unwrap_err().contains("3 layers"));
    }
}

//! GGUF files (llama.cpp's format): the `llama.*` metadata resolved into a `ModelConfig`, and a
//! lazy `TensorSource` that maps GGUF tensor names to HF names, dequantizes any quant type candle
//! reads to f32 one tensor at a time, and undoes llama.cpp's Q/K row permutation so the forward
//! has a single (HF, half-split) RoPE code path.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::{Device, Tensor};

use super::{LayerDims, Llama3RopeScaling, ModelConfig, TensorSource};
use crate::{Error, Result};

/// GGUF's magic number, the bytes `GGUF` read as a little-endian u32.
const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// An opened GGUF file: its header (metadata and tensor directory) without tensor data.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
}

impl GgufFile {
    /// Read the header of `path`. A file that is not GGUF, or whose header or tensor data is cut
    /// short, is an error naming the file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut reader = BufReader::new(file);
        let mut magic = [0u8; 4];
        if file_len < 8 || reader.read_exact(&mut magic).is_err() || magic != GGUF_MAGIC {
            return Err(Error::GgufRead {
                path: path.to_path_buf(),
                reason: "not a GGUF file (it does not start with the bytes `GGUF`)".into(),
            });
        }
        reader.rewind().map_err(|e| Error::io(path, e))?;
        let content = Content::read(&mut reader).map_err(|e| Error::GgufRead {
            path: path.to_path_buf(),
            reason: format!("unreadable header, the file may be truncated: {e}"),
        })?;
        for (name, info) in &content.tensor_infos {
            let end =
                tensor_end(info, content.tensor_data_offset).ok_or_else(|| Error::GgufRead {
                    path: path.to_path_buf(),
                    reason: format!(
                        "tensor `{name}` has {} elements, not a whole number of blocks",
                        info.shape.elem_count()
                    ),
                })?;
            if end > file_len {
                return Err(Error::GgufRead {
                    path: path.to_path_buf(),
                    reason: format!(
                        "truncated: tensor `{name}` ends at byte {end} but the file has {file_len} bytes"
                    ),
                });
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            content,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The metadata value `key`, if present.
    pub fn metadata(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// The GGUF tensor names, sorted.
    pub fn tensor_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.content.tensor_infos.keys().cloned().collect();
        names.sort();
        names
    }

    /// The dims of GGUF tensor `name` in candle order (`[out, in]` for a linear weight).
    pub fn tensor_dims(&self, name: &str) -> Option<&[usize]> {
        self.content.tensor_infos.get(name).map(|i| i.shape.dims())
    }

    /// Resolve the model configuration from the `<arch>.*` metadata and the tensor directory.
    pub fn config(&self) -> Result<ModelConfig> {
        config_from_gguf(self)
    }

    /// A lazy source of HF-named f32 tensors; consumes the header.
    pub fn into_source(self, cfg: &ModelConfig) -> Result<GgufSource> {
        GgufSource::new(self, cfg)
    }

    fn meta_err(&self, key: &str, reason: impl Into<String>) -> Error {
        Error::ModelMetadata {
            path: self.path.clone(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn required(&self, key: &str) -> Result<&Value> {
        self.metadata(key)
            .ok_or_else(|| self.meta_err(key, "missing"))
    }

    fn usize_of(&self, key: &str, v: &Value) -> Result<usize> {
        value_as_u64(v)
            .map(|x| x as usize)
            .ok_or_else(|| self.meta_err(key, format!("expected an integer, found {v:?}")))
    }

    fn f64_of(&self, key: &str) -> Result<Option<f64>> {
        match self.metadata(key) {
            None => Ok(None),
            Some(v) => value_as_f64(v)
                .map(Some)
                .ok_or_else(|| self.meta_err(key, format!("expected a number, found {v:?}"))),
        }
    }

    /// A per-layer count given either as one scalar for every layer or as an array of length
    /// `n_layers`.
    fn per_layer(&self, key: &str, n_layers: usize) -> Result<Vec<usize>> {
        match self.required(key)? {
            Value::Array(vs) => {
                if vs.len() != n_layers {
                    return Err(self.meta_err(
                        key,
                        format!("has {} entries for {n_layers} layers", vs.len()),
                    ));
                }
                vs.iter().map(|v| self.usize_of(key, v)).collect()
            }
            v => Ok(vec![self.usize_of(key, v)?; n_layers]),
        }
    }
}

/// Where the data of a tensor ends, relative to the file start; `None` when its element count is
/// not a whole number of quant blocks.
fn tensor_end(info: &TensorInfo, data_offset: u64) -> Option<u64> {
    let (elems, block) = (info.shape.elem_count(), info.ggml_dtype.block_size());
    if elems % block != 0 {
        return None;
    }
    let bytes = (elems / block * info.ggml_dtype.type_size()) as u64;
    data_offset.checked_add(info.offset)?.checked_add(bytes)
}

fn value_as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(*x as u64),
        Value::U16(x) => Some(*x as u64),
        Value::U32(x) => Some(*x as u64),
        Value::U64(x) => Some(*x),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    }
}

fn value_as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::F32(x) => Some(*x as f64),
        Value::F64(x) => Some(*x),
        other => value_as_u64(other).map(|x| x as f64),
    }
}

/// The architectures whose tensors and metadata follow llama.cpp's `llama` layout. `deci` (what
/// tyr's GGUF export writes for per-layer dims) adds per-layer count arrays and omits the norm of
/// a removed branch.
const LLAMA_ARCHS: &[&str] = &["llama", "deci"];

fn config_from_gguf(g: &GgufFile) -> Result<ModelConfig> {
    let arch = match g.required("general.architecture")? {
        Value::String(s) => s.clone(),
        v => {
            return Err(g.meta_err(
                "general.architecture",
                format!("expected a string, found {v:?}"),
            ));
        }
    };
    if !LLAMA_ARCHS.contains(&arch.as_str()) {
        return Err(Error::UnsupportedArchitecture {
            path: g.path.clone(),
            architecture: arch,
        });
    }
    let key = |k: &str| format!("{arch}.{k}");
    let n_layers = g.usize_of(&key("block_count"), g.required(&key("block_count"))?)?;
    let hidden_size = g.usize_of(
        &key("embedding_length"),
        g.required(&key("embedding_length"))?,
    )?;
    let n_q = g.per_layer(&key("attention.head_count"), n_layers)?;
    let n_kv = match g.metadata(&key("attention.head_count_kv")) {
        Some(_) => g.per_layer(&key("attention.head_count_kv"), n_layers)?,
        None => n_q.clone(),
    };
    let d_ff = g.per_layer(&key("feed_forward_length"), n_layers)?;
    let head_dim = match g.metadata(&key("attention.key_length")) {
        Some(v) => g.usize_of(&key("attention.key_length"), v)?,
        None => {
            let h0 = n_q.iter().copied().find(|&n| n > 0).unwrap_or(0);
            if h0 == 0 || hidden_size % h0 != 0 {
                return Err(g.meta_err(
                    &key("attention.head_count"),
                    "cannot derive the head dim (no key_length)",
                ));
            }
            hidden_size / h0
        }
    };
    if head_dim % 2 != 0 {
        return Err(g.meta_err(
            &key("attention.key_length"),
            format!("head dim {head_dim} is odd"),
        ));
    }
    if let Some(v) = g.metadata(&key("rope.dimension_count")) {
        let rope_dim = g.usize_of(&key("rope.dimension_count"), v)?;
        if rope_dim != head_dim {
            return Err(g.meta_err(
                &key("rope.dimension_count"),
                format!("partial RoPE ({rope_dim} of {head_dim} dims) is not supported"),
            ));
        }
    }
    let mut layers = Vec::with_capacity(n_layers);
    for l in 0..n_layers {
        if n_kv[l] > n_q[l]
            || (n_kv[l] == 0) != (n_q[l] == 0)
            || (n_kv[l] > 0 && n_q[l] % n_kv[l] != 0)
        {
            return Err(g.meta_err(
                &key("attention.head_count_kv"),
                format!(
                    "layer {l}: {} K/V heads for {} query heads",
                    n_kv[l], n_q[l]
                ),
            ));
        }
        layers.push(LayerDims::dense(n_q[l], n_kv[l], d_ff[l]));
    }
    let embd = g
        .tensor_dims("token_embd.weight")
        .ok_or_else(|| Error::ModelTensor {
            path: g.path.clone(),
            name: "token_embd.weight".into(),
            reason: "missing".into(),
        })?;
    let vocab_size = embd[0];
    let rms_norm_eps = g
        .f64_of(&key("attention.layer_norm_rms_epsilon"))?
        .unwrap_or(1e-5);
    let rope_theta = g.f64_of(&key("rope.freq_base"))?.unwrap_or(10_000.0);
    let max_position_embeddings = match g.metadata(&key("context_length")) {
        Some(v) => g.usize_of(&key("context_length"), v)?,
        None => 2048,
    };
    let rope_scaling = rope_scaling(g, &arch, head_dim, rope_theta)?;
    let token_id = |k: &str| -> Result<Option<u32>> {
        match g.metadata(k) {
            None => Ok(None),
            Some(v) => Ok(Some(g.usize_of(k, v)? as u32)),
        }
    };
    Ok(ModelConfig {
        hidden_size,
        head_dim,
        vocab_size,
        layers,
        rms_norm_eps,
        rope_theta,
        rope_scaling,
        max_position_embeddings,
        tie_word_embeddings: g.tensor_dims("output.weight").is_none(),
        attention_bias: g.tensor_dims("blk.0.attn_q.bias").is_some(),
        mlp_bias: g.tensor_dims("blk.0.ffn_up.bias").is_some(),
        bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
        eos_token_id: token_id("tokenizer.ggml.eos_token_id")?,
    })
}

/// Llama-3 RoPE scaling. llama.cpp's converter does not keep the HF `rope_scaling` fields: it
/// stores the per-frequency divisors as the tensor `rope_freqs.weight` (and sometimes
/// `rope.scaling.*` keys). We recover the HF parameters — factor = the largest divisor, the
/// Llama-3.1 defaults for the rest unless metadata says otherwise — and accept them only if they
/// reproduce the stored divisors, so the one RoPE code path computes the same frequencies.
fn rope_scaling(
    g: &GgufFile,
    arch: &str,
    head_dim: usize,
    theta: f64,
) -> Result<Option<Llama3RopeScaling>> {
    let Some(dims) = g.tensor_dims("rope_freqs.weight") else {
        return Ok(None);
    };
    let name = "rope_freqs.weight";
    let terr = |reason: String| Error::ModelTensor {
        path: g.path.clone(),
        name: name.into(),
        reason,
    };
    if dims.iter().product::<usize>() != head_dim / 2 {
        return Err(terr(format!(
            "has shape {dims:?}, expected {} divisors",
            head_dim / 2
        )));
    }
    let mut reader = BufReader::new(File::open(&g.path).map_err(|e| Error::io(&g.path, e))?);
    let stored: Vec<f32> = g
        .content
        .tensor(&mut reader, name, &Device::Cpu)
        .and_then(|q| q.dequantize(&Device::Cpu))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .map_err(|e| terr(e.to_string()))?;
    let factor = stored.iter().copied().fold(1.0f32, f32::max) as f64;
    let orig_key = format!("{arch}.rope.scaling.original_context_length");
    let original = match g.metadata(&orig_key) {
        Some(v) => g.usize_of(&orig_key, v)?,
        None => 8192,
    };
    let s = Llama3RopeScaling {
        factor,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: original,
    };
    for (i, &d) in stored.iter().enumerate() {
        let freq = 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
        let want = llama3_divisor(&s, freq);
        if (want - d as f64).abs() > 1e-3 * want.abs().max(1.0) {
            return Err(terr(format!(
                "divisor {i} is {d}, but Llama-3 scaling with factor {factor}, low/high 1/4 and original context {original} gives {want}; these RoPE factors are not supported"
            )));
        }
    }
    Ok(Some(s))
}

/// The divisor Llama-3 scaling applies to frequency `freq` (llama.cpp stores these).
fn llama3_divisor(s: &Llama3RopeScaling, freq: f64) -> f64 {
    let orig = s.original_max_position_embeddings as f64;
    let low_wavelen = orig / s.low_freq_factor;
    let high_wavelen = orig / s.high_freq_factor;
    let wavelen = 2.0 * std::f64::consts::PI / freq;
    if wavelen < high_wavelen {
        1.0
    } else if wavelen > low_wavelen {
        s.factor
    } else {
        let smooth =
            (orig / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        1.0 / ((1.0 - smooth) / s.factor + smooth)
    }
}

/// How one HF tensor is read from the file.
#[derive(Debug, Clone)]
struct Entry {
    gguf_name: String,
    /// `Some(heads)` for Q/K weights and biases, whose rows llama.cpp permuted per head.
    unpermute_heads: Option<usize>,
    /// `Some(hidden)` for the norm of a removed branch that the file omits (`deci`): it is never
    /// used, and is served as ones so every layer has both norms.
    unused_norm: Option<usize>,
}

/// The HF name of a GGUF tensor name and, for Q/K, which per-layer head count it is permuted by.
fn hf_name(gguf: &str) -> Option<(String, Option<Permuted>)> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(n) = fixed {
        return Some((n.to_string(), None));
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let (hf, perm) = match module {
        "attn_norm" => ("input_layernorm", None),
        "ffn_norm" => ("post_attention_layernorm", None),
        "attn_q" => ("self_attn.q_proj", Some(Permuted::Query)),
        "attn_k" => ("self_attn.k_proj", Some(Permuted::Key)),
        "attn_v" => ("self_attn.v_proj", None),
        "attn_output" => ("self_attn.o_proj", None),
        "ffn_gate" => ("mlp.gate_proj", None),
        "ffn_up" => ("mlp.up_proj", None),
        "ffn_down" => ("mlp.down_proj", None),
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{hf}.{suffix}"), perm))
}

#[derive(Debug, Clone, Copy)]
enum Permuted {
    Query,
    Key,
}

/// HF-named f32 tensors read lazily from a GGUF file. Each `tensor` call reads and dequantizes
/// one tensor; nothing is cached.
pub struct GgufSource {
    path: PathBuf,
    content: Content,
    entries: BTreeMap<String, Entry>,
    head_dim: usize,
}

impl GgufSource {
    fn new(file: GgufFile, cfg: &ModelConfig) -> Result<Self> {
        let GgufFile { path, content } = file;
        let mut entries = BTreeMap::new();
        let mut names: Vec<&String> = content.tensor_infos.keys().collect();
        names.sort();
        for gguf_name in names {
            // Tensors outside the HF model (llama.cpp's `rope_freqs`) are not exposed.
            let Some((hf, perm)) = hf_name(gguf_name) else {
                continue;
            };
            let unpermute_heads = match perm {
                None => None,
                Some(p) => {
                    let layer = layer_of(&hf)
                        .and_then(|l| cfg.layers.get(l))
                        .ok_or_else(|| Error::ModelTensor {
                            path: path.clone(),
                            name: gguf_name.clone(),
                            reason: format!(
                                "layer out of range for a {}-layer model",
                                cfg.n_layers()
                            ),
                        })?;
                    Some(match p {
                        Permuted::Query => layer.n_q,
                        Permuted::Key => layer.n_kv,
                    })
                }
            };
            entries.insert(
                hf,
                Entry {
                    gguf_name: gguf_name.clone(),
                    unpermute_heads,
                    unused_norm: None,
                },
            );
        }
        for (l, d) in cfg.layers.iter().enumerate() {
            for (removed, norm) in [
                (d.n_q == 0, "input_layernorm"),
                (d.d_ff == 0, "post_attention_layernorm"),
            ] {
                let hf = format!("model.layers.{l}.{norm}.weight");
                if removed && !entries.contains_key(&hf) {
                    let e = Entry {
                        gguf_name: format!("(none: branch removed in layer {l})"),
                        unpermute_heads: None,
                        unused_norm: Some(cfg.hidden_size),
                    };
                    entries.insert(hf, e);
                }
            }
        }
        Ok(GgufSource {
            path,
            content,
            entries,
            head_dim: cfg.head_dim,
        })
    }

    fn read(&self, e: &Entry) -> candle_core::Result<Tensor> {
        if let Some(h) = e.unused_norm {
            return Tensor::ones(h, candle_core::DType::F32, &Device::Cpu);
        }
        let file = File::open(&self.path)?;
        let mut reader = BufReader::new(file);
        let t = self
            .content
            .tensor(&mut reader, &e.gguf_name, &Device::Cpu)?
            .dequantize(&Device::Cpu)?;
        match e.unpermute_heads {
            None => Ok(t),
            Some(heads) => unpermute_rows(&t, heads, self.head_dim),
        }
    }
}

fn layer_of(hf: &str) -> Option<usize> {
    hf.strip_prefix("model.layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Undo llama.cpp's `permute` of Q/K rows. Per head, llama.cpp stores row `2i + j` what HF keeps
/// at row `j·dh/2 + i` (interleaved pairs vs. split halves), for weights `[heads·dh, in]` and
/// biases `[heads·dh]` alike.
pub fn unpermute_rows(t: &Tensor, heads: usize, head_dim: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let cols: usize = dims[1..].iter().product();
    // [heads·dh, cols] → [heads, dh/2, 2, cols] → swap the pair and half axes → [heads, 2, dh/2, cols]
    t.reshape((heads, head_dim / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

/// llama.cpp's `permute` (HF layout → interleaved), the inverse of `unpermute_rows`. Writers of
/// GGUF files (export, tests) apply it to Q/K.
pub fn permute_rows(t: &Tensor, heads: usize, head_dim: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let cols: usize = dims[1..].iter().product();
    t.reshape((heads, 2, head_dim / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

impl TensorSource for GgufSource {
    fn tensor(&self, name: &str) -> Result<Tensor> {
        let e = self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            tensor: name.into(),
            location: self.path.display().to_string(),
        })?;
        self.read(e).map_err(|err| Error::ModelTensor {
            path: self.path.clone(),
            name: format!("{name} (GGUF `{}`)", e.gguf_name),
            reason: err.to_string(),
        })
    }

    fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }
}

/// Open a GGUF model: its configuration and a lazy tensor source.
pub fn open_gguf(path: &Path) -> Result<(ModelConfig, GgufSource)> {
    let file = GgufFile::open(path)?;
    let cfg = file.config()?;
    let src = file.into_source(&cfg)?;
    Ok((cfg, src))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() -> candle_core::Result<()> {
        // 2 heads of dim 4, 3 input columns.
        let t = Tensor::arange(0f32, 24.0, &Device::Cpu)?.reshape((8, 3))?;
        let p = permute_rows(&t, 2, 4)?;
        // llama.cpp: head 0 rows [0,1,2,3] become [0,2,1,3] (pairs from the two halves).
        let rows: Vec<Vec<f32>> = p.to_vec2()?;
        assert_eq!(rows[1], vec![6.0, 7.0, 8.0]);
        assert_eq!(rows[2], vec![3.0, 4.0, 5.0]);
        let back = unpermute_rows(&p, 2, 4)?;
        assert_eq!(back.to_vec2::<f32>()?, t.to_vec2::<f32>()?);
        Ok(())
    }

    #[test]
    fn gguf_names_map_to_hf_names() {
        let (n, p) = hf_name("blk.3.attn_k.weight").unwrap_or_default();
        assert_eq!(n, "model.layers.3.self_attn.k_proj.weight");
        assert!(matches!(p, Some(Permuted::Key)));
        assert_eq!(
            hf_name("output.weight").map(|x| x.0).as_deref(),
            Some("lm_head.weight")
        );
        assert!(hf_name("rope_freqs.weight").is_none());
    }

    #[test]
    fn llama31_divisors_are_one_for_high_and_factor_for_low_frequencies() {
        let s = Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        assert_eq!(llama3_divisor(&s, 1.0), 1.0);
        assert_eq!(llama3_divisor(&s, 1e-6), 8.0);
    }
}

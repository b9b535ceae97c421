//! Writes a model with per-layer dims as a GGUF file for llama.cpp (ALGORITHM.md §10b): arch
//! `llama` when every layer has the same widths, otherwise `deci` with per-layer arrays for
//! `attention.head_count`, `attention.head_count_kv` and `feed_forward_length` and explicit
//! key/value lengths. Layer forms (K/V duplication, padding) come from `gguf_form`; Q/K rows get
//! llama.cpp's per-head RoPE permutation with each layer's written counts. Tokenizer metadata is
//! copied from a source GGUF. Large tensors are f32 or f16; norms and biases stay f32. The file
//! is written in two passes over the tensors (shapes for the header, then the data), one tensor
//! in memory at a time, with exactly the bytes of candle's `gguf_file::write`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::gguf_form::{GgufLayerForm, ZeroWidth, is_uniform, layer_form, written_config};
use crate::model::gguf::permute_rows;
use crate::model::llama_block::validate_dims;
use crate::model::{BlockWeights, ModelConfig, TensorSource};
use crate::{Error, Result};

/// Element type of the matrices in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GgufDtype {
    #[default]
    F32,
    F16,
}

/// What to write besides the weights, and how.
#[derive(Debug, Clone, Default)]
pub struct GgufExportOptions {
    pub zero_width: ZeroWidth,
    pub dtype: GgufDtype,
    /// A GGUF whose `tokenizer.*` metadata (and `general.name`) is copied.
    pub metadata_from: Option<PathBuf>,
    /// `general.name`; overrides the copied one.
    pub name: Option<String>,
}

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GgufExportReport {
    pub path: PathBuf,
    /// `llama` or `deci`.
    pub architecture: String,
    pub layers: Vec<GgufLayerForm>,
    /// Decoder / total parameters of the model given (per-layer dims, no duplication).
    pub decoder_params: usize,
    pub total_params: usize,
    /// The same counts as written (K/V heads duplicated to even groups, padded units).
    pub decoder_params_written: usize,
    pub total_params_written: usize,
}

/// Writes `cfg`'s model from `src` to `path` (atomically: temp file, fsync, rename).
pub fn write_gguf(
    path: &Path,
    cfg: &ModelConfig,
    src: &dyn TensorSource,
    opts: &GgufExportOptions,
) -> Result<GgufExportReport> {
    let werr = |msg: String| Error::GgufWrite {
        path: path.to_path_buf(),
        msg,
    };
    for (l, d) in cfg.layers.iter().enumerate() {
        validate_dims(l, d)?;
    }
    let Layout {
        written,
        arch,
        forms,
        metadata,
    } = layout(cfg, opts)?;

    // Two passes over the tensors, so none is held longer than it takes to write it: the first
    // learns every tensor's name, shape and type for the header, the second writes the data.
    let dtype_of = |matrix: bool| element_type(matrix, opts.dtype);
    let mut infos: Vec<TensorInfo> = Vec::new();
    each_tensor(cfg, src, &forms, &mut |name, t, matrix| {
        infos.push(TensorInfo {
            name,
            dims: t.dims().to_vec(),
            dtype: dtype_of(matrix),
        });
        Ok(())
    })?;

    let tmp = path.with_extension("gguf.tmp");
    let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut out = BufWriter::with_capacity(1 << 22, file);
    let io = |e| Error::io(&tmp, e);
    out.write_all(&header(&metadata, &infos).map_err(|e| werr(e.to_string()))?)
        .map_err(io)?;
    let mut next = infos.iter();
    each_tensor(cfg, src, &forms, &mut |name, t, matrix| {
        let Some(info) = next.next() else {
            return Err(werr(format!("`{name}` was not in the first pass")));
        };
        if info.name != name || info.dims != t.dims() || info.dtype != dtype_of(matrix) {
            return Err(werr(format!(
                "`{name}` {:?} differs from the first pass's `{}` {:?}",
                t.dims(),
                info.name,
                info.dims
            )));
        }
        let t = t.to_dtype(DType::F32)?.contiguous()?;
        let q = QTensor::quantize(&t, info.dtype).map_err(|e| werr(format!("`{name}`: {e}")))?;
        let data = q.data().map_err(|e| werr(format!("`{name}`: {e}")))?;
        if data.len() != info.size() {
            return Err(werr(format!(
                "`{name}`: {} bytes of data, {} planned",
                data.len(),
                info.size()
            )));
        }
        out.write_all(&data).map_err(io)?;
        out.write_all(&[0u8; ALIGN][..pad(data.len())])
            .map_err(io)?;
        Ok(())
    })?;
    if next.next().is_some() {
        return Err(werr(
            "the second pass wrote fewer tensors than the first".into(),
        ));
    }
    let file = out
        .into_inner()
        .map_err(|e| Error::io(&tmp, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    tracing::info!(path = %path.display(), arch, "wrote GGUF");
    Ok(GgufExportReport {
        path: path.to_path_buf(),
        architecture: arch.into(),
        layers: forms,
        decoder_params: cfg.decoder_params(),
        total_params: cfg.total_params(),
        decoder_params_written: written.decoder_params(),
        total_params_written: written.total_params(),
    })
}

/// What the file holds besides the tensors' data: the written counts, the architecture, each
/// layer's form and the metadata.
struct Layout {
    written: ModelConfig,
    arch: &'static str,
    forms: Vec<GgufLayerForm>,
    metadata: Vec<(String, Value)>,
}

fn layout(cfg: &ModelConfig, opts: &GgufExportOptions) -> Result<Layout> {
    let written = written_config(cfg, opts.zero_width);
    let arch = if is_uniform(&written) {
        "llama"
    } else {
        "deci"
    };
    let forms = (0..cfg.n_layers())
        .map(|l| layer_form(cfg, l, opts.zero_width))
        .collect();
    let metadata = metadata(cfg, &written, arch, opts)?;
    Ok(Layout {
        written,
        arch,
        forms,
        metadata,
    })
}

/// The element type of a tensor in the file: matrices as asked, everything else f32.
fn element_type(matrix: bool, dtype: GgufDtype) -> GgmlDType {
    match (matrix, dtype) {
        (true, GgufDtype::F16) => GgmlDType::F16,
        _ => GgmlDType::F32,
    }
}

/// Calls `f` with every tensor of the file in order, `(name, tensor, is a matrix)`, one layer's
/// weights loaded at a time.
fn each_tensor(
    cfg: &ModelConfig,
    src: &dyn TensorSource,
    forms: &[GgufLayerForm],
    f: &mut dyn FnMut(String, &Tensor, bool) -> Result<()>,
) -> Result<()> {
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    f(
        "token_embd.weight".into(),
        &read(src, "model.embed_tokens.weight", &[v, h])?,
        true,
    )?;
    for (l, (d, form)) in cfg.layers.iter().zip(forms).enumerate() {
        let w = BlockWeights::load(cfg, l, d, src)?;
        for (name, t, matrix) in layer_tensors(cfg, l, &w, form)? {
            f(name, &t, matrix)?;
        }
    }
    f(
        "output_norm.weight".into(),
        &read(src, "model.norm.weight", &[h])?,
        false,
    )?;
    if !cfg.tie_word_embeddings {
        f(
            "output.weight".into(),
            &read(src, "lm_head.weight", &[v, h])?,
            true,
        )?;
    }
    if let Some(s) = &cfg.rope_scaling {
        let d: Vec<f32> = (0..cfg.head_dim / 2)
            .map(|i| {
                let freq = 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.head_dim as f64);
                llama3_divisor(s, freq) as f32
            })
            .collect();
        let n = d.len();
        f(
            "rope_freqs.weight".into(),
            &Tensor::from_vec(d, n, &Device::Cpu)?,
            false,
        )?;
    }
    Ok(())
}

/// GGUF aligns the tensor data, and each tensor in it, to 32 bytes.
const ALIGN: usize = 32;

/// Zero bytes that bring `n` to the alignment.
fn pad(n: usize) -> usize {
    (ALIGN - n % ALIGN) % ALIGN
}

/// One tensor's entry in the GGUF header.
struct TensorInfo {
    name: String,
    dims: Vec<usize>,
    dtype: GgmlDType,
}

impl TensorInfo {
    /// Bytes of its data.
    fn size(&self) -> usize {
        let n: usize = self.dims.iter().product();
        n / self.dtype.block_size() * self.dtype.type_size()
    }

    /// GGML's number for the type (the GGUF specification's; only the two written here).
    fn type_id(&self) -> u32 {
        match self.dtype {
            GgmlDType::F16 => 1,
            _ => 0,
        }
    }
}

/// Everything before the first tensor's data: candle's GGUF header and metadata (its writer,
/// given no tensors, with the count put back), then each tensor's name, dimensions (innermost
/// first), type and offset, then zeros to the alignment — the bytes `gguf_file::write` writes
/// for the same tensors.
fn header(metadata: &[(String, Value)], infos: &[TensorInfo]) -> candle_core::Result<Vec<u8>> {
    let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut probe = MetadataEnd::default();
    gguf_file::write(&mut probe, &meta, &[])?;
    let end = probe.end.ok_or_else(|| {
        candle_core::Error::Msg("the GGUF writer never asked its position".into())
    })?;
    let mut out = probe.bytes;
    out.truncate(end);
    // magic (4), version (4), tensor count (8), metadata count (8).
    out[8..16].copy_from_slice(&(infos.len() as u64).to_le_bytes());
    let mut offset = 0usize;
    for info in infos {
        out.extend((info.name.len() as u64).to_le_bytes());
        out.extend(info.name.as_bytes());
        out.extend((info.dims.len() as u32).to_le_bytes());
        for &d in info.dims.iter().rev() {
            out.extend((d as u64).to_le_bytes());
        }
        out.extend(info.type_id().to_le_bytes());
        out.extend((offset as u64).to_le_bytes());
        offset += info.size() + pad(info.size());
    }
    out.resize(out.len() + pad(out.len()), 0);
    Ok(out)
}

/// A writer that keeps what is written and the position at which it was first asked where it
/// is: with no tensors, `gguf_file::write` asks right after the metadata.
#[derive(Default)]
struct MetadataEnd {
    bytes: Vec<u8>,
    end: Option<usize>,
}

impl Write for MetadataEnd {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.bytes.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::io::Seek for MetadataEnd {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        match pos {
            std::io::SeekFrom::Current(0) => {
                self.end.get_or_insert(self.bytes.len());
                Ok(self.bytes.len() as u64)
            }
            _ => Err(std::io::Error::other("only the position is asked")),
        }
    }
}

fn read(src: &dyn TensorSource, name: &str, shape: &[usize]) -> Result<Tensor> {
    let t = src.tensor(name)?;
    if t.dims() != shape {
        return Err(Error::TensorShape {
            tensor: name.into(),
            location: src.location(name),
            expected: shape.to_vec(),
            found: t.dims().to_vec(),
        });
    }
    Ok(t)
}

/// Rows `idx` of `t`.
fn rows(t: &Tensor, idx: &[usize]) -> Result<Tensor> {
    select(t, 0, idx)
}

/// Entries `idx` of `t` along `dim`, contiguous.
fn select(t: &Tensor, dim: usize, idx: &[usize]) -> Result<Tensor> {
    let idx: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
    let n = idx.len();
    let ids = Tensor::from_vec(idx, n, &Device::Cpu)?;
    Ok(t.contiguous()?.index_select(&ids, dim)?.contiguous()?)
}

/// Row indices of whole heads, in the given head order.
fn head_rows(heads: &[usize], dh: usize) -> Vec<usize> {
    heads.iter().flat_map(|&q| q * dh..(q + 1) * dh).collect()
}

/// The GGUF tensors of layer `l` in its written form: `(name, tensor, is a matrix)`.
fn layer_tensors(
    cfg: &ModelConfig,
    l: usize,
    w: &BlockWeights,
    form: &GgufLayerForm,
) -> Result<Vec<(String, Tensor, bool)>> {
    let (h, dh) = (cfg.hidden_size, cfg.head_dim);
    let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu);
    let b = |m: &str, s: &str| format!("blk.{l}.{m}.{s}");
    let mut out = Vec::new();
    if form.n_q > 0 {
        out.push((b("attn_norm", "weight"), w.input_layernorm.clone(), false));
        match &w.attn {
            Some(a) => {
                let q_rows = head_rows(&form.head_order, dh);
                let kv_rows = head_rows(&form.kv_source, dh);
                let q = permute_rows(&rows(&a.q_proj, &q_rows)?, form.n_q, dh)?;
                let k = permute_rows(&rows(&a.k_proj, &kv_rows)?, form.n_kv, dh)?;
                out.push((b("attn_q", "weight"), q, true));
                out.push((b("attn_k", "weight"), k, true));
                out.push((b("attn_v", "weight"), rows(&a.v_proj, &kv_rows)?, true));
                let o = select(&a.o_proj, 1, &q_rows)?;
                out.push((b("attn_output", "weight"), o, true));
                if let Some(t) = &a.q_bias {
                    let t = permute_rows(&rows(t, &q_rows)?, form.n_q, dh)?;
                    out.push((b("attn_q", "bias"), t, false));
                }
                if let Some(t) = &a.k_bias {
                    let t = permute_rows(&rows(t, &kv_rows)?, form.n_kv, dh)?;
                    out.push((b("attn_k", "bias"), t, false));
                }
                if let Some(t) = &a.v_bias {
                    out.push((b("attn_v", "bias"), rows(t, &kv_rows)?, false));
                }
                if let Some(t) = &a.o_bias {
                    out.push((b("attn_output", "bias"), t.clone(), false));
                }
            }
            None => {
                // One padding head: zero projections in, zero columns out.
                for m in ["attn_q", "attn_k", "attn_v"] {
                    out.push((b(m, "weight"), zeros(&[dh, h])?, true));
                    if cfg.attention_bias {
                        out.push((b(m, "bias"), zeros(&[dh])?, false));
                    }
                }
                out.push((b("attn_output", "weight"), zeros(&[h, dh])?, true));
            }
        }
    }
    if form.d_ff > 0 {
        out.push((
            b("ffn_norm", "weight"),
            w.post_attention_layernorm.clone(),
            false,
        ));
        match &w.mlp {
            Some(m) => {
                out.push((b("ffn_gate", "weight"), m.gate_proj.clone(), true));
                out.push((b("ffn_up", "weight"), m.up_proj.clone(), true));
                out.push((b("ffn_down", "weight"), m.down_proj.clone(), true));
                for (name, t) in [
                    ("ffn_gate", &m.gate_bias),
                    ("ffn_up", &m.up_bias),
                    ("ffn_down", &m.down_bias),
                ] {
                    if let Some(t) = t {
                        out.push((b(name, "bias"), t.clone(), false));
                    }
                }
            }
            None => {
                out.push((b("ffn_gate", "weight"), zeros(&[1, h])?, true));
                out.push((b("ffn_up", "weight"), zeros(&[1, h])?, true));
                out.push((b("ffn_down", "weight"), zeros(&[h, 1])?, true));
                if cfg.mlp_bias {
                    out.push((b("ffn_gate", "bias"), zeros(&[1])?, false));
                    out.push((b("ffn_up", "bias"), zeros(&[1])?, false));
                    out.push((b("ffn_down", "bias"), zeros(&[h])?, false));
                }
            }
        }
    }
    Ok(out)
}

/// The divisor Llama-3 RoPE scaling applies to frequency `freq`, as llama.cpp stores it.
fn llama3_divisor(s: &crate::model::Llama3RopeScaling, freq: f64) -> f64 {
    let orig = s.original_max_position_embeddings as f64;
    let wavelen = 2.0 * std::f64::consts::PI / freq;
    if wavelen < orig / s.high_freq_factor {
        1.0
    } else if wavelen > orig / s.low_freq_factor {
        s.factor
    } else {
        let smooth =
            (orig / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        1.0 / ((1.0 - smooth) / s.factor + smooth)
    }
}

/// The header metadata, in write order.
fn metadata(
    cfg: &ModelConfig,
    written: &ModelConfig,
    arch: &str,
    opts: &GgufExportOptions,
) -> Result<Vec<(String, Value)>> {
    let mut m: Vec<(String, Value)> = Vec::new();
    let u32v = |x: usize| Value::U32(x as u32);
    let key = |k: &str| format!("{arch}.{k}");
    let copied = match &opts.metadata_from {
        Some(p) => copied_metadata(p)?,
        None => BTreeMap::new(),
    };
    m.push(("general.architecture".into(), Value::String(arch.into())));
    let name = opts
        .name
        .clone()
        .or_else(|| match copied.get("general.name") {
            Some(Value::String(s)) => Some(format!("{s} (pruned by tyr)")),
            _ => None,
        });
    if let Some(n) = name {
        m.push(("general.name".into(), Value::String(n)));
    }
    let file_type = match opts.dtype {
        GgufDtype::F32 => 0,
        GgufDtype::F16 => 1,
    };
    m.push(("general.file_type".into(), Value::U32(file_type)));
    m.push((key("block_count"), u32v(cfg.n_layers())));
    m.push((key("context_length"), u32v(cfg.max_position_embeddings)));
    m.push((key("embedding_length"), u32v(cfg.hidden_size)));
    let per_layer = |f: fn(&crate::model::LayerDims) -> usize| -> Value {
        if arch == "llama" {
            u32v(written.layers.first().map_or(0, f))
        } else {
            Value::Array(written.layers.iter().map(|d| u32v(f(d))).collect())
        }
    };
    m.push((key("feed_forward_length"), per_layer(|d| d.d_ff)));
    m.push((key("attention.head_count"), per_layer(|d| d.n_q)));
    m.push((key("attention.head_count_kv"), per_layer(|d| d.n_kv)));
    m.push((key("attention.key_length"), u32v(cfg.head_dim)));
    m.push((key("attention.value_length"), u32v(cfg.head_dim)));
    m.push((key("rope.dimension_count"), u32v(cfg.head_dim)));
    m.push((key("rope.freq_base"), Value::F32(cfg.rope_theta as f32)));
    m.push((
        key("attention.layer_norm_rms_epsilon"),
        Value::F32(cfg.rms_norm_eps as f32),
    ));
    m.push((key("vocab_size"), u32v(cfg.vocab_size)));
    if let Some(s) = &cfg.rope_scaling {
        m.push((
            key("rope.scaling.original_context_length"),
            u32v(s.original_max_position_embeddings),
        ));
    }
    let mut have_tokenizer = false;
    for (k, v) in &copied {
        if k.starts_with("tokenizer.") {
            have_tokenizer = true;
            m.push((k.clone(), v.clone()));
        }
    }
    if !have_tokenizer {
        if let Some(b) = cfg.bos_token_id {
            m.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(b)));
        }
        if let Some(e) = cfg.eos_token_id {
            m.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(e)));
        }
    }
    Ok(m)
}

/// The metadata of the GGUF at `p`, sorted by key.
fn copied_metadata(p: &Path) -> Result<BTreeMap<String, Value>> {
    let f = File::open(p).map_err(|e| Error::io(p, e))?;
    let content = Content::read(&mut BufReader::new(f)).map_err(|e| Error::GgufRead {
        path: p.to_path_buf(),
        reason: format!("unreadable header: {e}"),
    })?;
    Ok(content.metadata.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::random::random_source;
    use crate::model::{LayerDims, Llama3RopeScaling};

    /// What candle's `gguf_file::write` makes of the same tensors gathered in memory (how this
    /// file wrote GGUF before it streamed).
    fn gathered(cfg: &ModelConfig, src: &dyn TensorSource, opts: &GgufExportOptions) -> Vec<u8> {
        let l = layout(cfg, opts).unwrap();
        let mut tensors = Vec::new();
        each_tensor(cfg, src, &l.forms, &mut |name, t, matrix| {
            let t = t.to_dtype(DType::F32)?.contiguous()?;
            tensors.push((
                name,
                QTensor::quantize(&t, element_type(matrix, opts.dtype))?,
            ));
            Ok(())
        })
        .unwrap();
        let meta = l.metadata;
        let m: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let t: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        let mut out = std::io::Cursor::new(Vec::new());
        gguf_file::write(&mut out, &m, &t).unwrap();
        out.into_inner()
    }

    #[test]
    fn the_streamed_file_is_the_bytes_of_candles_writer() {
        // Uneven layers (a `deci` file), an untied head, llama3 RoPE scaling, both dtypes.
        let mut layers = vec![LayerDims::dense(4, 2, 24), LayerDims::dense(2, 1, 8)];
        layers[0].kv_map = vec![0, 0, 0, 1];
        let cfg = ModelConfig {
            hidden_size: 16,
            head_dim: 4,
            vocab_size: 40,
            layers,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: Some(Llama3RopeScaling {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64,
            }),
            max_position_embeddings: 256,
            tie_word_embeddings: false,
            attention_bias: false,
            mlp_bias: false,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        };
        let src = random_source(&cfg, 3).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for dtype in [GgufDtype::F32, GgufDtype::F16] {
            let opts = GgufExportOptions {
                dtype,
                name: Some("t".into()),
                ..Default::default()
            };
            let path = dir.path().join("m.gguf");
            let r = write_gguf(&path, &cfg, &src, &opts).unwrap();
            assert_eq!(r.architecture, "deci");
            let ours = std::fs::read(&path).unwrap();
            assert!(ours == gathered(&cfg, &src, &opts), "{dtype:?}");
        }
    }
}

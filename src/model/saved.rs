//! Our saved format (ALGORITHM.md §10a): a Hugging Face style directory with `model.safetensors`
//! (HF names, real per-layer shapes, f32) and a `config.json` that keeps the source model's keys
//! and adds a `pruning` object with the per-layer widths, plus `tokenizer.json` when one is given
//! and a `tokenizer_config.json` naming its BOS/EOS tokens (transformers' tokenizer reads them only
//! from there; without them lm-eval cannot score a loglikelihood request). Query heads are written
//! ordered by K/V head, so per-layer group sizes give the map. Tensors are streamed to disk one
//! layer at a time; files appear atomically (temp → fsync → rename). The directory opens through
//! `hf::open_hf_dir`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::{Map, Value, json};

use super::hf::PruningInfo;
use super::llama_block::{BlockWeights, validate_dims};
use super::llama_kernels::with_f32;
use super::source::read_checked;
use super::{LayerDims, Llama, MemorySource, ModelConfig, TensorSource};
use crate::{Error, Result};

/// What to write besides the weights.
#[derive(Debug, Clone, Default)]
pub struct SaveOptions {
    /// The source model's `config.json` object; its keys are kept unless tyr owns them.
    pub source_config: Option<Map<String, Value>>,
    /// A `tokenizer.json` to copy next to the model.
    pub tokenizer_json: Option<std::path::PathBuf>,
    pub target_sparsity: Option<f64>,
    pub achieved_sparsity: Option<Value>,
    pub seed: Option<u64>,
    /// Named BLAKE3 digests (e.g. of the source model and the stage outputs).
    pub digests: BTreeMap<String, String>,
}

/// The order in which a layer's query heads are written: by K/V head, then by position.
pub fn grouped_head_order(dims: &LayerDims) -> Vec<usize> {
    let mut order: Vec<usize> = (0..dims.n_q).collect();
    order.sort_by_key(|&h| (dims.kv_map[h], h));
    order
}

/// Query heads per K/V head.
pub fn group_sizes(dims: &LayerDims) -> Vec<usize> {
    let mut sizes = vec![0; dims.n_kv];
    for &j in &dims.kv_map {
        sizes[j] += 1;
    }
    sizes
}

/// The weights of a layer with query heads reordered by `order` (q rows and `o_proj` columns
/// move together, so the block computes the same function).
fn reorder_heads(w: &mut BlockWeights, order: &[usize], dh: usize) -> Result<()> {
    if order.iter().enumerate().all(|(i, &h)| i == h) {
        return Ok(());
    }
    let rows: Vec<u32> = order
        .iter()
        .flat_map(|&h| (h * dh) as u32..((h + 1) * dh) as u32)
        .collect();
    let idx = Tensor::from_vec(rows.clone(), rows.len(), &Device::Cpu)?;
    if let Some(a) = &mut w.attn {
        a.q_proj = a.q_proj.index_select(&idx, 0)?;
        a.o_proj = a.o_proj.index_select(&idx, 1)?;
        if let Some(b) = &a.q_bias {
            a.q_bias = Some(b.index_select(&idx, 0)?);
        }
    }
    Ok(())
}

/// Writes `cfg`'s model from `src` into `dir` (created if needed).
pub fn save_model(
    dir: &Path,
    cfg: &ModelConfig,
    src: &dyn TensorSource,
    opts: &SaveOptions,
) -> Result<()> {
    for (l, d) in cfg.layers.iter().enumerate() {
        validate_dims(l, d)?;
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_weights(dir, cfg, src)?;
    let config = config_json(cfg, opts);
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::msg(format!("config.json: {e}")))?;
    crate::atomic_file::write(&dir.join("config.json"), text.as_bytes())?;
    if let Some(tok) = &opts.tokenizer_json {
        let bytes = std::fs::read(tok).map_err(|e| Error::io(tok, e))?;
        crate::atomic_file::write(&dir.join("tokenizer.json"), &bytes)?;
        let tokenizer: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::msg(format!("{}: not JSON: {e}", tok.display())))?;
        let text = serde_json::to_string_pretty(&tokenizer_config_json(cfg, &tokenizer))
            .map_err(|e| Error::msg(format!("tokenizer_config.json: {e}")))?;
        crate::atomic_file::write(&dir.join("tokenizer_config.json"), text.as_bytes())?;
    }
    tracing::info!(dir = %dir.display(), layers = cfg.n_layers(), "saved model");
    Ok(())
}

/// The `tokenizer_config.json` transformers' `AutoTokenizer` reads beside `tokenizer.json`: a
/// fast tokenizer, with the BOS and EOS tokens of `cfg` spelled as `tokenizer.json` spells them
/// (an id it does not name is left out).
fn tokenizer_config_json(cfg: &ModelConfig, tokenizer: &Value) -> Value {
    let spelled = |id: u32| -> Option<String> {
        let added = tokenizer.get("added_tokens").and_then(Value::as_array);
        let from_added = added.into_iter().flatten().find_map(|t| {
            (t.get("id")?.as_u64()? == u64::from(id))
                .then(|| t.get("content")?.as_str().map(str::to_string))
                .flatten()
        });
        from_added.or_else(|| {
            let vocab = tokenizer.pointer("/model/vocab")?.as_object()?;
            vocab
                .iter()
                .find(|(_, v)| v.as_u64() == Some(u64::from(id)))
                .map(|(k, _)| k.clone())
        })
    };
    let mut m = Map::new();
    m.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    m.insert(
        "model_max_length".into(),
        json!(cfg.max_position_embeddings),
    );
    m.insert("clean_up_tokenization_spaces".into(), json!(false));
    for (key, id) in [
        ("bos_token", cfg.bos_token_id),
        ("eos_token", cfg.eos_token_id),
    ] {
        if let Some(s) = id.and_then(spelled) {
            m.insert(key.into(), json!(s));
        }
    }
    Value::Object(m)
}

/// Saves a model held in memory.
pub fn save_llama(dir: &Path, model: &Llama, opts: &SaveOptions) -> Result<()> {
    save_model(dir, model.config(), &model.to_source()?, opts)
}

fn config_json(cfg: &ModelConfig, opts: &SaveOptions) -> Value {
    let mut m = opts.source_config.clone().unwrap_or_default();
    let max = |f: fn(&LayerDims) -> usize| cfg.layers.iter().map(f).max().unwrap_or(0).max(1);
    m.entry("architectures")
        .or_insert_with(|| json!(["LlamaForCausalLM"]));
    m.entry("model_type").or_insert_with(|| json!("llama"));
    // Dense-looking counts for tools that need them; the per-layer lists are authoritative.
    m.entry("num_attention_heads")
        .or_insert_with(|| json!(max(|d| d.n_q)));
    m.entry("num_key_value_heads")
        .or_insert_with(|| json!(max(|d| d.n_kv)));
    m.entry("intermediate_size")
        .or_insert_with(|| json!(max(|d| d.d_ff)));
    if let Some(b) = cfg.bos_token_id {
        m.entry("bos_token_id").or_insert_with(|| json!(b));
    }
    if let Some(e) = cfg.eos_token_id {
        m.entry("eos_token_id").or_insert_with(|| json!(e));
    }
    m.insert("hidden_size".into(), json!(cfg.hidden_size));
    m.insert("num_hidden_layers".into(), json!(cfg.n_layers()));
    m.insert("vocab_size".into(), json!(cfg.vocab_size));
    m.insert("head_dim".into(), json!(cfg.head_dim));
    m.insert("rms_norm_eps".into(), json!(cfg.rms_norm_eps));
    m.insert("rope_theta".into(), json!(cfg.rope_theta));
    m.insert(
        "max_position_embeddings".into(),
        json!(cfg.max_position_embeddings),
    );
    m.insert("tie_word_embeddings".into(), json!(cfg.tie_word_embeddings));
    m.insert("attention_bias".into(), json!(cfg.attention_bias));
    m.insert("mlp_bias".into(), json!(cfg.mlp_bias));
    m.insert("torch_dtype".into(), json!("float32"));
    m.insert(
        "rope_scaling".into(),
        match &cfg.rope_scaling {
            Some(s) => json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            }),
            None => Value::Null,
        },
    );
    // transformers 5.24's LlamaConfig validates the global head count, which a config with
    // per-layer head counts only allows with this flag; the global values are the dense-looking
    // maxima above, and transformers logs a warning whenever one is read.
    const GLOBAL_ACCESS: &str = "allow_global_per_layer_attribute_access";
    match per_layer_config(cfg, &m) {
        Some(per_layer) => {
            m.insert("per_layer_config".into(), per_layer);
            m.insert(GLOBAL_ACCESS.into(), json!(true));
        }
        None => {
            m.remove("per_layer_config");
            m.remove(GLOBAL_ACCESS);
        }
    }
    let pruning = PruningInfo {
        num_attention_heads_per_layer: cfg.layers.iter().map(|d| d.n_q).collect(),
        num_key_value_heads_per_layer: cfg.layers.iter().map(|d| d.n_kv).collect(),
        kv_group_sizes_per_layer: cfg.layers.iter().map(group_sizes).collect(),
        intermediate_size_per_layer: cfg.layers.iter().map(|d| d.d_ff).collect(),
        head_dim: cfg.head_dim,
        target_sparsity: opts.target_sparsity,
        achieved_sparsity: opts.achieved_sparsity.clone(),
        seed: opts.seed,
        digests: opts.digests.clone(),
    };
    m.insert(
        "pruning".into(),
        serde_json::to_value(pruning).unwrap_or(Value::Null),
    );
    Value::Object(m)
}

/// transformers' `per_layer_config` (5.24+, `HeterogeneousConfigMixin`): for each layer whose
/// widths differ from the global `num_attention_heads` / `num_key_value_heads` /
/// `intermediate_size` in `m`, those that differ; a module pruned to zero width is listed in
/// `skip` (`self_attn`, `mlp`, the Llama sub-block names) instead. Layers equal to the global
/// values are left out, as transformers itself leaves them out; `None` when every layer is.
/// Keys are layer indices zero-padded to one width, as transformers writes them, so that they
/// sort in layer order.
fn per_layer_config(cfg: &ModelConfig, m: &Map<String, Value>) -> Option<Value> {
    let global = |k: &str| m.get(k).and_then(Value::as_u64);
    let width = cfg.n_layers().saturating_sub(1).to_string().len();
    let mut layers = Map::new();
    for (l, d) in cfg.layers.iter().enumerate() {
        let mut o = Map::new();
        let mut skip = Vec::new();
        let mut put = |key: &str, v: usize| {
            if global(key) != Some(v as u64) {
                o.insert(key.into(), json!(v));
            }
        };
        if d.n_q == 0 {
            skip.push("self_attn");
        } else {
            put("num_attention_heads", d.n_q);
            put("num_key_value_heads", d.n_kv);
        }
        if d.d_ff == 0 {
            skip.push("mlp");
        } else {
            put("intermediate_size", d.d_ff);
        }
        if !skip.is_empty() {
            o.insert("skip".into(), json!(skip));
        }
        if !o.is_empty() {
            layers.insert(format!("{l:0width$}"), Value::Object(o));
        }
    }
    (!layers.is_empty()).then_some(Value::Object(layers))
}

/// The tensors of the file, in write order, with their shapes: what `BlockWeights::load` reads.
fn plan(cfg: &ModelConfig, src: &dyn TensorSource) -> Vec<(String, Vec<usize>)> {
    let (h, dh, v) = (cfg.hidden_size, cfg.head_dim, cfg.vocab_size);
    let mut p = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for (l, d) in cfg.layers.iter().enumerate() {
        let pre = format!("model.layers.{l}");
        p.push((format!("{pre}.input_layernorm.weight"), vec![h]));
        p.push((format!("{pre}.post_attention_layernorm.weight"), vec![h]));
        let mut opt = |name: String, shape: Vec<usize>| {
            if src.contains(&name) {
                p.push((name, shape));
            }
        };
        if d.n_q > 0 {
            let (q, kv, a) = (d.n_q * dh, d.n_kv * dh, format!("{pre}.self_attn"));
            opt(format!("{a}.q_proj.weight"), vec![q, h]);
            opt(format!("{a}.k_proj.weight"), vec![kv, h]);
            opt(format!("{a}.v_proj.weight"), vec![kv, h]);
            opt(format!("{a}.o_proj.weight"), vec![h, q]);
            opt(format!("{a}.q_proj.bias"), vec![q]);
            opt(format!("{a}.k_proj.bias"), vec![kv]);
            opt(format!("{a}.v_proj.bias"), vec![kv]);
            opt(format!("{a}.o_proj.bias"), vec![h]);
        }
        if d.d_ff > 0 {
            let (f, m) = (d.d_ff, format!("{pre}.mlp"));
            opt(format!("{m}.gate_proj.weight"), vec![f, h]);
            opt(format!("{m}.up_proj.weight"), vec![f, h]);
            opt(format!("{m}.down_proj.weight"), vec![h, f]);
            opt(format!("{m}.gate_proj.bias"), vec![f]);
            opt(format!("{m}.up_proj.bias"), vec![f]);
            opt(format!("{m}.down_proj.bias"), vec![h]);
        }
    }
    p.push(("model.norm.weight".to_string(), vec![h]));
    if !cfg.tie_word_embeddings {
        p.push(("lm_head.weight".to_string(), vec![v, h]));
    }
    p
}

/// Streams the safetensors file: header from the plan, then each layer's data as it is read.
fn write_weights(dir: &Path, cfg: &ModelConfig, src: &dyn TensorSource) -> Result<()> {
    let plan = plan(cfg, src);
    let mut header = Map::new();
    header.insert(
        "__metadata__".into(),
        json!({"format": "pt", "writer": "tyr"}),
    );
    let mut offset = 0usize;
    for (name, shape) in &plan {
        let bytes = 4 * shape.iter().product::<usize>();
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut head = serde_json::to_vec(&Value::Object(header))
        .map_err(|e| Error::msg(format!("safetensors header: {e}")))?;
    // Pad the header with spaces so the data starts 8-byte aligned.
    head.resize(head.len().div_ceil(8) * 8, b' ');

    let path = dir.join("model.safetensors");
    let tmp = dir.join("model.safetensors.tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 22, file);
    let io = |e| Error::io(&tmp, e);
    out.write_all(&(head.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&head).map_err(io)?;

    let mut next = plan.iter();
    let mut put =
        |out: &mut std::io::BufWriter<std::fs::File>, name: &str, t: &Tensor| -> Result<()> {
            let Some((want, shape)) = next.next() else {
                return Err(Error::msg(format!(
                    "internal: `{name}` is not in the write plan"
                )));
            };
            if want != name || t.dims() != shape.as_slice() {
                return Err(Error::msg(format!(
                    "internal: wrote `{name}` {:?}, planned `{want}` {shape:?}",
                    t.dims()
                )));
            }
            with_f32(t, |d| -> std::io::Result<()> {
                let mut buf = Vec::with_capacity(d.len() * 4);
                for x in d {
                    buf.extend_from_slice(&x.to_le_bytes());
                }
                out.write_all(&buf)
            })?
            .map_err(io)
        };
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    put(
        &mut out,
        "model.embed_tokens.weight",
        &read_checked(src, "model.embed_tokens.weight", &[v, h])?,
    )?;
    for (l, d) in cfg.layers.iter().enumerate() {
        let mut w = BlockWeights::load(cfg, l, d, src)?;
        reorder_heads(&mut w, &grouped_head_order(d), cfg.head_dim)?;
        for (name, t) in w.named_tensors(l) {
            put(&mut out, &name, &t)?;
        }
    }
    put(
        &mut out,
        "model.norm.weight",
        &read_checked(src, "model.norm.weight", &[h])?,
    )?;
    if !cfg.tie_word_embeddings {
        put(
            &mut out,
            "lm_head.weight",
            &read_checked(src, "lm_head.weight", &[v, h])?,
        )?;
    }
    let file = out
        .into_inner()
        .map_err(|e| Error::io(&tmp, e.into_error()))?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    Ok(())
}

impl Llama {
    /// Every weight under its HF name in f32 (shared storage, no copy, for f32 weights), e.g. to
    /// save the model.
    pub fn to_source(&self) -> Result<MemorySource> {
        let mut src = MemorySource::new();
        src.insert(
            "model.embed_tokens.weight",
            self.embeddings()
                .weight()
                .to_dtype(candle_core::DType::F32)?,
        );
        for (l, b) in self.blocks().iter().enumerate() {
            for (name, t) in b.weights()?.named_tensors(l) {
                src.insert(name, t);
            }
        }
        src.insert("model.norm.weight", self.head().norm_weight().clone());
        if !self.config().tie_word_embeddings {
            let w = self.head().lm_head_weight();
            src.insert("lm_head.weight", w.to_dtype(candle_core::DType::F32)?);
        }
        Ok(src)
    }
}

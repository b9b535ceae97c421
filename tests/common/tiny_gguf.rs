//! Test builder: a tiny random Llama written as a GGUF file the way llama.cpp's converter writes
//! one (GGUF tensor names, Q/K rows permuted for interleaved RoPE, `llama.*` metadata and a small
//! byte-level BPE tokenizer in `tokenizer.ggml.*`).
#![allow(dead_code)]

use std::path::Path;

use candle_core::Tensor;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use tyr::model::{LayerDims, MemorySource, ModelConfig, TensorSource};

/// Extra tokens after the 256 byte tokens, and the merges that build them.
pub const MERGES: &[(&str, &str)] = &[
    ("h", "e"),
    ("l", "l"),
    ("he", "ll"),
    ("hell", "o"),
    ("Ġ", "w"),
    ("o", "r"),
];
pub const SPECIAL: &str = "<|endoftext|>";

/// GPT-2's byte → printable character map.
pub fn byte_chars() -> Vec<char> {
    let mut out = vec!['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        out[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            let c = char::from_u32(next).unwrap();
            next += 1;
            c
        };
    }
    out
}

/// Token strings: the special token (id 0), the 256 byte tokens, then one per merge.
pub fn vocab() -> Vec<String> {
    let mut v = vec![SPECIAL.to_string()];
    v.extend(byte_chars().into_iter().map(|c| c.to_string()));
    v.extend(MERGES.iter().map(|(a, b)| format!("{a}{b}")));
    v
}

/// A tiny config whose vocab is the test tokenizer's. `hetero` gives each layer its own widths.
pub fn tiny_config(hetero: bool, tied: bool) -> ModelConfig {
    let layers = if hetero {
        vec![
            LayerDims::dense(4, 2, 64),
            LayerDims::dense(2, 1, 32),
            LayerDims::dense(4, 4, 48),
        ]
    } else {
        vec![LayerDims::dense(4, 2, 64); 2]
    };
    config_with(32, 8, layers, tied)
}

/// A config with the test tokenizer's vocab and the given widths.
pub fn config_with(
    hidden_size: usize,
    head_dim: usize,
    layers: Vec<LayerDims>,
    tied: bool,
) -> ModelConfig {
    ModelConfig {
        hidden_size,
        head_dim,
        vocab_size: vocab().len(),
        layers,
        // GGUF stores the epsilon as f32.
        rms_norm_eps: 1e-5f32 as f64,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 512,
        tie_word_embeddings: tied,
        attention_bias: false,
        mlp_bias: false,
        bos_token_id: Some(0),
        eos_token_id: Some(0),
    }
}

/// llama.cpp's `permute`, as its converter writes it:
/// `w.reshape(n_head, 2, rows/n_head/2, *rest).swapaxes(1, 2).reshape(w.shape)`.
pub fn llama_cpp_permute(w: &Tensor, n_head: usize) -> Tensor {
    let dims = w.dims().to_vec();
    let rest: usize = dims[1..].iter().product();
    w.reshape((n_head, 2, dims[0] / n_head / 2, rest))
        .and_then(|t| t.transpose(1, 2))
        .and_then(|t| t.contiguous())
        .and_then(|t| t.reshape(dims))
        .unwrap()
}

fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (l, rest) = rest.split_once('.').unwrap();
    let (module, suffix) = rest.rsplit_once('.').unwrap();
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => panic!("unexpected module {other}"),
    };
    format!("blk.{l}.{g}.{suffix}")
}

/// Options for `write_tiny_gguf`.
pub struct GgufOptions {
    pub arch: &'static str,
    /// Quant type of 2-D weights (1-D norms are always F32, as llama.cpp writes them).
    pub dtype: GgmlDType,
    pub with_tokenizer: bool,
    /// llama.cpp's `rope_freqs.weight` (Llama-3 RoPE divisors), when the model has RoPE scaling.
    pub rope_freqs: Option<Vec<f32>>,
}

impl Default for GgufOptions {
    fn default() -> Self {
        GgufOptions {
            arch: "llama",
            dtype: GgmlDType::F32,
            with_tokenizer: true,
            rope_freqs: None,
        }
    }
}

/// Write `src` (HF names, HF layout) as a llama.cpp-style GGUF file. Returns the quantized
/// tensors written, by GGUF name, before any permutation is undone.
pub fn write_tiny_gguf(
    path: &Path,
    cfg: &ModelConfig,
    src: &MemorySource,
    opts: &GgufOptions,
) -> Vec<(String, QTensor)> {
    let mut tensors = Vec::new();
    for name in src.names() {
        let mut t = src.tensor(&name).unwrap();
        let layer: Option<usize> = name
            .strip_prefix("model.layers.")
            .and_then(|r| r.split('.').next())
            .and_then(|l| l.parse().ok());
        if name.contains("q_proj") {
            t = llama_cpp_permute(&t, cfg.layers[layer.unwrap()].n_q);
        } else if name.contains("k_proj") {
            t = llama_cpp_permute(&t, cfg.layers[layer.unwrap()].n_kv);
        }
        let dtype = if t.rank() == 1 {
            GgmlDType::F32
        } else {
            opts.dtype
        };
        tensors.push((gguf_name(&name), QTensor::quantize(&t, dtype).unwrap()));
    }
    if let Some(f) = &opts.rope_freqs {
        let t = Tensor::new(f.as_slice(), &candle_core::Device::Cpu).unwrap();
        tensors.push((
            "rope_freqs.weight".into(),
            QTensor::quantize(&t, GgmlDType::F32).unwrap(),
        ));
    }
    let a = opts.arch;
    let per_layer = |f: &dyn Fn(&LayerDims) -> usize| {
        let vs: Vec<usize> = cfg.layers.iter().map(f).collect();
        if vs.iter().all(|&v| v == vs[0]) {
            Value::U32(vs[0] as u32)
        } else {
            Value::Array(vs.into_iter().map(|v| Value::U32(v as u32)).collect())
        }
    };
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        (
            format!("{a}.block_count"),
            Value::U32(cfg.n_layers() as u32),
        ),
        (
            format!("{a}.context_length"),
            Value::U32(cfg.max_position_embeddings as u32),
        ),
        (
            format!("{a}.embedding_length"),
            Value::U32(cfg.hidden_size as u32),
        ),
        (format!("{a}.feed_forward_length"), per_layer(&|d| d.d_ff)),
        (format!("{a}.attention.head_count"), per_layer(&|d| d.n_q)),
        (
            format!("{a}.attention.head_count_kv"),
            per_layer(&|d| d.n_kv),
        ),
        (
            format!("{a}.attention.key_length"),
            Value::U32(cfg.head_dim as u32),
        ),
        (
            format!("{a}.rope.dimension_count"),
            Value::U32(cfg.head_dim as u32),
        ),
        (
            format!("{a}.rope.freq_base"),
            Value::F32(cfg.rope_theta as f32),
        ),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
    ];
    if opts.with_tokenizer {
        let v = vocab();
        let types: Vec<Value> = (0..v.len())
            .map(|i| Value::I32(if i == 0 { 3 } else { 1 }))
            .collect();
        meta.extend([
            (
                "tokenizer.ggml.model".to_string(),
                Value::String("gpt2".into()),
            ),
            (
                "tokenizer.ggml.pre".to_string(),
                Value::String("smollm".into()),
            ),
            (
                "tokenizer.ggml.tokens".to_string(),
                Value::Array(v.into_iter().map(Value::String).collect()),
            ),
            ("tokenizer.ggml.token_type".to_string(), Value::Array(types)),
            (
                "tokenizer.ggml.merges".to_string(),
                Value::Array(
                    MERGES
                        .iter()
                        .map(|(x, y)| Value::String(format!("{x} {y}")))
                        .collect(),
                ),
            ),
            ("tokenizer.ggml.bos_token_id".to_string(), Value::U32(0)),
            ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(0)),
        ]);
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
    tensors
}

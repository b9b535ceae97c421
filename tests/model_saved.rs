//! Our saved format and the HF directory loader: a heterogeneous model (uneven, non-contiguous
//! K/V groups, removed branches) written and read back is the same model; sharded directories
//! load; bad directories fail with errors naming the file and tensor.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::*;
use tyr::model::hf::read_hf_config;
use tyr::model::random::random_source;
use tyr::model::{Llama, SaveOptions, open_hf_dir, save_model};

fn logits_of_dir(dir: &Path, ids: &Tensor) -> tyr::Result<Tensor> {
    let (cfg, src) = open_hf_dir(dir)?;
    Llama::load(&cfg, src.as_ref())?.forward(ids)
}

#[test]
fn saved_model_reads_back_as_the_same_model() {
    let mut cfg = hetero_config();
    cfg.attention_bias = true;
    let src = random_source(&cfg, 21).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("source-tokenizer.json");
    // BOS spelled by an added token, EOS only by the vocabulary.
    std::fs::write(
        &tok,
        br#"{"added_tokens":[{"id":1,"content":"<s>","special":true}],
            "model":{"type":"BPE","vocab":{"a":0,"<s>":1,"</s>":2}}}"#,
    )
    .unwrap();
    cfg.bos_token_id = Some(1);
    cfg.eos_token_id = Some(2);
    let mut source_config = serde_json::Map::new();
    source_config.insert(
        "architectures".into(),
        serde_json::json!(["LlamaForCausalLM"]),
    );
    source_config.insert("num_attention_heads".into(), serde_json::json!(4));
    source_config.insert("custom_key".into(), serde_json::json!("kept"));
    let opts = SaveOptions {
        source_config: Some(source_config),
        tokenizer_json: Some(tok),
        target_sparsity: Some(0.5),
        seed: Some(7),
        ..Default::default()
    };
    let out = dir.path().join("model");
    save_model(&out, &cfg, &src, &opts).unwrap();

    let (back, _) = open_hf_dir(&out).unwrap();
    // Same widths; layer 2's map [1, 0, 1] comes back grouped: [0, 1, 1].
    for (a, b) in cfg.layers.iter().zip(&back.layers) {
        assert_eq!((a.n_q, a.n_kv, a.d_ff), (b.n_q, b.n_kv, b.d_ff));
    }
    assert_eq!(back.layers[2].kv_map, vec![0, 1, 1]);
    let mut same = cfg.clone();
    same.layers = back.layers.clone();
    assert_eq!(back, same);

    let ids = random_ids(2, 11, cfg.vocab_size, 21);
    let want = Llama::load(&cfg, &src).unwrap().forward(&ids).unwrap();
    let got = logits_of_dir(&out, &ids).unwrap();
    assert!(max_abs_diff(&want, &got) < 1e-5);

    let (_, raw) = read_hf_config(&out).unwrap();
    assert_eq!(raw["custom_key"], "kept");
    assert_eq!(
        raw["pruning"]["kv_group_sizes_per_layer"][0],
        serde_json::json!([3, 1, 1])
    );
    assert_eq!(raw["pruning"]["intermediate_size_per_layer"][2], 0);
    assert_eq!(raw["pruning"]["seed"], 7);
    // transformers' per_layer_config gives each layer's widths over the global values (the
    // source's `num_attention_heads` = 4 is kept as the global one), and names the removed
    // branches in `skip`.
    let plc: std::collections::BTreeMap<usize, &serde_json::Value> = raw["per_layer_config"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.parse().unwrap(), v))
        .collect();
    assert_eq!(raw["allow_global_per_layer_attribute_access"], true);
    for (l, d) in cfg.layers.iter().enumerate() {
        let over = plc.get(&l).copied();
        let width = |k: &str| {
            over.and_then(|o| o.get(k))
                .unwrap_or(&raw[k])
                .as_u64()
                .unwrap() as usize
        };
        let skip: Vec<&str> = over
            .and_then(|o| o.get("skip"))
            .map(|s| {
                s.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            skip.contains(&"self_attn"),
            d.n_q == 0,
            "layer {l}: {over:?}"
        );
        assert_eq!(skip.contains(&"mlp"), d.d_ff == 0, "layer {l}: {over:?}");
        if d.n_q > 0 {
            assert_eq!(width("num_attention_heads"), d.n_q, "layer {l}");
            assert_eq!(width("num_key_value_heads"), d.n_kv, "layer {l}");
        }
        if d.d_ff > 0 {
            assert_eq!(width("intermediate_size"), d.d_ff, "layer {l}");
        }
    }
    assert_eq!(raw["num_attention_heads"], 4);
    assert!(out.join("tokenizer.json").exists());
    let tok_cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(tok_cfg["bos_token"], "<s>");
    assert_eq!(tok_cfg["eos_token"], "</s>");
    assert_eq!(tok_cfg["tokenizer_class"], "PreTrainedTokenizerFast");
    // A removed branch's tensors are omitted.
    let names = open_hf_dir(&out).unwrap().1.names();
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("model.layers.1.self_attn"))
    );
    assert!(!names.iter().any(|n| n.starts_with("model.layers.2.mlp")));
}

/// Writes `tensors` as an f32/bf16 HF directory with a plain (dense) config.json.
fn write_hf_dir(dir: &Path, cfg_json: serde_json::Value, shards: &[Vec<(String, Tensor)>]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec(&cfg_json).unwrap(),
    )
    .unwrap();
    if shards.len() == 1 {
        candle_core::safetensors::save(
            &shards[0].iter().cloned().collect::<HashMap<_, _>>(),
            dir.join("model.safetensors"),
        )
        .unwrap();
        return;
    }
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards.len());
        for (n, _) in shard {
            weight_map.insert(n.clone(), serde_json::json!(file));
        }
        candle_core::safetensors::save(
            &shard.iter().cloned().collect::<HashMap<_, _>>(),
            dir.join(&file),
        )
        .unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

fn dense_config_json() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
        "intermediate_size": 48, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 61, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 256, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
        "bos_token_id": 1, "eos_token_id": 2, "unused_future_key": [1, 2, 3]
    })
}

#[test]
fn sharded_bf16_directory_loads_like_the_f32_weights_rounded_to_bf16() {
    let cfg = uniform_config();
    let src = random_source(&cfg, 31).unwrap();
    // Round through bf16 so the expected model is exactly what the file holds.
    let rounded: Vec<(String, Tensor)> = src
        .into_map()
        .into_iter()
        .map(|(n, t)| (n, t.to_dtype(DType::BF16).unwrap()))
        .collect();
    let (a, b) = rounded.split_at(rounded.len() / 2);
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(dir.path(), dense_config_json(), &[a.to_vec(), b.to_vec()]);
    let (got_cfg, got_src) = open_hf_dir(dir.path()).unwrap();
    assert_eq!(got_cfg, cfg);
    let mut want_src = tyr::model::MemorySource::new();
    for (n, t) in &rounded {
        want_src.insert(n.clone(), t.to_dtype(DType::F32).unwrap());
    }
    let ids = random_ids(1, 8, cfg.vocab_size, 31);
    let want_model = Llama::load(&cfg, &want_src).unwrap();
    let got_model = Llama::load(&got_cfg, got_src.as_ref()).unwrap();
    let want = want_model.forward(&ids).unwrap();
    let got = got_model.forward(&ids).unwrap();
    assert_eq!(max_abs_diff(&want, &got), 0.0);
    // The vocabulary tables stay in bf16 in memory (half the bytes of an f32 upcast); their rows
    // are converted as they are used, with the same bits.
    assert_eq!(got_model.embeddings().weight().dtype(), DType::BF16);
    assert_eq!(got_model.head().lm_head_weight().dtype(), DType::BF16);
    let hidden = want_model.hidden(&ids).unwrap();
    let rows = Tensor::new(&[3u32, 0, 60, 17], &Device::Cpu).unwrap();
    let (w, g) = (
        want_model.head().logits_rows(&hidden, &rows).unwrap(),
        got_model.head().logits_rows(&hidden, &rows).unwrap(),
    );
    assert_eq!(max_abs_diff(&w, &g), 0.0);
}

#[test]
fn wrong_shape_in_safetensors_names_tensor_and_file() {
    let cfg = uniform_config();
    let mut map = random_source(&cfg, 32).unwrap().into_map();
    map.insert(
        "model.layers.0.self_attn.o_proj.weight".into(),
        Tensor::zeros((32, 24), DType::F32, &Device::Cpu).unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(
        dir.path(),
        dense_config_json(),
        &[map.into_iter().collect()],
    );
    let e = logits_of_dir(dir.path(), &random_ids(1, 4, 61, 1))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.layers.0.self_attn.o_proj.weight") && e.contains("model.safetensors"),
        "{e}"
    );
    assert!(e.contains("[32, 24]") && e.contains("[32, 32]"), "{e}");
}

#[test]
fn missing_tensor_names_tensor_and_file() {
    let cfg = uniform_config();
    let mut map = random_source(&cfg, 33).unwrap().into_map();
    map.remove("model.layers.2.mlp.down_proj.weight");
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(
        dir.path(),
        dense_config_json(),
        &[map.into_iter().collect()],
    );
    let e = logits_of_dir(dir.path(), &random_ids(1, 4, 61, 1))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.layers.2.mlp.down_proj.weight") && e.contains("model.safetensors"),
        "{e}"
    );
}

#[test]
fn unsupported_architecture_names_the_config_file() {
    let cfg = uniform_config();
    let mut json = dense_config_json();
    json["architectures"] = serde_json::json!(["FalconForCausalLM"]);
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(
        dir.path(),
        json,
        &[random_source(&cfg, 34)
            .unwrap()
            .into_map()
            .into_iter()
            .collect()],
    );
    let e = open_hf_dir(dir.path()).err().unwrap().to_string();
    assert!(
        e.contains("config.json") && e.contains("FalconForCausalLM"),
        "{e}"
    );
}

#[test]
fn directory_without_weights_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_vec(&dense_config_json()).unwrap(),
    )
    .unwrap();
    let e = open_hf_dir(dir.path()).err().unwrap().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}

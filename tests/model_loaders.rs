//! Loaders: GGUF round trips (tensors, config, logits, every quant type), bad GGUF files, the
//! tokenizer from GGUF metadata and from tokenizer.json, and the real SmolLM2 GGUF against
//! numbers obtained from Hugging Face transformers.

#[path = "common/smollm2.rs"]
mod smollm2;
#[path = "common/tiny_gguf.rs"]
mod tiny_gguf;

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use tiny_gguf::{GgufOptions, config_with, tiny_config, write_tiny_gguf};
use tyr::eval::perplexity::{PerplexityOptions, perplexity};
use tyr::model::gguf::{GgufFile, open_gguf};
use tyr::model::llama::Llama;
use tyr::model::open::{ModelFormat, open_model};
use tyr::model::random::random_source;
use tyr::model::tokenizer::Tokenizer;
use tyr::model::{LayerDims, TensorSource};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    a.sub(b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn round_trip(hetero: bool, tied: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let cfg = tiny_config(hetero, tied);
    let src = random_source(&cfg, 11).unwrap();
    write_tiny_gguf(&path, &cfg, &src, &GgufOptions::default());

    let (got_cfg, got) = open_gguf(&path).unwrap();
    assert_eq!(got_cfg, cfg);
    assert_eq!(got.names(), src.names());
    for name in src.names() {
        let (a, b) = (src.tensor(&name).unwrap(), got.tensor(&name).unwrap());
        assert_eq!(a.dims(), b.dims(), "{name}");
        assert_eq!(
            max_abs_diff(&a, &b),
            0.0,
            "{name} differs after the GGUF round trip"
        );
    }

    let ids = Tensor::new(&[[5u32, 80, 140, 7, 33, 200, 262, 1]], &Device::Cpu).unwrap();
    let want = Llama::load(&cfg, &src).unwrap().forward(&ids).unwrap();
    let have = Llama::load(&got_cfg, &got).unwrap().forward(&ids).unwrap();
    assert_eq!(max_abs_diff(&want, &have), 0.0);
}

#[test]
fn gguf_round_trip_gives_identical_tensors_config_and_logits() {
    round_trip(false, false);
}

#[test]
fn gguf_round_trip_keeps_per_layer_widths_and_tied_embeddings() {
    round_trip(true, true);
}

#[test]
fn every_quant_type_candle_writes_dequantizes_to_what_candle_reads() {
    // K-quants need rows of 256: a one-layer model 256 wide.
    let cfg = config_with(256, 64, vec![LayerDims::dense(4, 2, 256)], false);
    let src = random_source(&cfg, 3).unwrap();
    let types = [
        GgmlDType::F16,
        GgmlDType::BF16,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q2K,
        GgmlDType::Q3K,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ];
    let dir = tempfile::tempdir().unwrap();
    for dtype in types {
        let path = dir.path().join(format!("{dtype:?}.gguf"));
        let written = write_tiny_gguf(
            &path,
            &cfg,
            &src,
            &GgufOptions {
                dtype,
                ..Default::default()
            },
        );
        let (_, got) = open_gguf(&path).unwrap();
        // q_proj: the loader's f32 must be candle's own dequantization, un-permuted.
        let (_, q) = written
            .iter()
            .find(|(n, _)| n == "blk.0.attn_q.weight")
            .unwrap();
        let deq = q.dequantize(&Device::Cpu).unwrap();
        let want = tyr::model::gguf::unpermute_rows(&deq, 4, 64).unwrap();
        let have = got
            .tensor("model.layers.0.self_attn.q_proj.weight")
            .unwrap();
        assert_eq!(max_abs_diff(&want, &have), 0.0, "{dtype:?}");
        // And it is close to the original weights (quantization error only; a row mix-up would
        // give a relative RMS error near 1.4).
        let orig = src
            .tensor("model.layers.0.self_attn.q_proj.weight")
            .unwrap();
        let rms = |t: &Tensor| -> f32 {
            t.sqr()
                .unwrap()
                .mean_all()
                .unwrap()
                .sqrt()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let rel = rms(&orig.sub(&have).unwrap()) / rms(&orig);
        assert!(rel < 0.6, "{dtype:?}: relative RMS error {rel}");
    }
}

#[test]
fn truncated_gguf_is_a_clear_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    let cfg = tiny_config(false, false);
    write_tiny_gguf(
        &path,
        &cfg,
        &random_source(&cfg, 1).unwrap(),
        &GgufOptions::default(),
    );
    let bytes = std::fs::read(&path).unwrap();
    for keep in [bytes.len() - 100, bytes.len() / 2, 200, 10] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let err = open_model(&path).unwrap_err().to_string();
        assert!(err.contains("cut.gguf"), "{keep} bytes: {err}");
        assert!(err.contains("truncated"), "{keep} bytes: {err}");
    }
}

#[test]
fn a_file_that_is_not_gguf_is_a_clear_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "just some text, not a model\n").unwrap();
    let err = open_model(&path).unwrap_err().to_string();
    assert!(
        err.contains("notes.txt") && err.contains("not GGUF"),
        "{err}"
    );
    let err = GgufFile::open(&path).err().unwrap().to_string();
    assert!(
        err.contains("notes.txt") && err.contains("not a GGUF file"),
        "{err}"
    );
}

#[test]
fn a_missing_model_path_is_an_error_naming_it() {
    let err = open_model(std::path::Path::new("/nonexistent/model.gguf"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
}

#[test]
fn an_unsupported_architecture_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.gguf");
    let cfg = tiny_config(false, false);
    write_tiny_gguf(
        &path,
        &cfg,
        &random_source(&cfg, 1).unwrap(),
        &GgufOptions {
            arch: "gpt2",
            ..Default::default()
        },
    );
    let err = open_model(&path).unwrap_err().to_string();
    assert!(
        err.contains("other.gguf") && err.contains("unsupported architecture `gpt2`"),
        "{err}"
    );
}

fn tiny_tokenizer() -> (tempfile::TempDir, Tokenizer) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tok.gguf");
    let cfg = tiny_config(false, false);
    write_tiny_gguf(
        &path,
        &cfg,
        &random_source(&cfg, 1).unwrap(),
        &GgufOptions::default(),
    );
    let t = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    (dir, t)
}

#[test]
fn gguf_tokenizer_applies_merges_splits_digits_and_adds_no_prefix_space() {
    let (_dir, t) = tiny_tokenizer();
    let id = |s: &str| t.token_to_id(s).unwrap();
    // "hello" merges to one token; " world" starts with the merged "Ġw", then "or", "l", "d".
    assert_eq!(
        t.encode("hello world").unwrap(),
        vec![id("hello"), id("Ġw"), id("or"), id("l"), id("d")]
    );
    // SmolLM's pre-tokenizer: every digit alone, whitespace before digits kept apart.
    assert_eq!(
        t.encode("a 12").unwrap(),
        vec![id("a"), id("Ġ"), id("1"), id("2")]
    );
    // The control token is matched whole; no BOS is added.
    assert_eq!(t.encode("<|endoftext|>he").unwrap(), vec![0, id("he")]);
    let text = "naïve café 🙂\n\n  x = 3.14\t";
    assert_eq!(t.decode(&t.encode(text).unwrap(), false).unwrap(), text);
}

#[test]
fn tokenizer_json_round_trip_keeps_token_ids() {
    let (dir, t) = tiny_tokenizer();
    let json = dir.path().join("tokenizer.json");
    t.save(&json).unwrap();
    let back = Tokenizer::from_file(&json).unwrap();
    for text in [
        "hello world",
        "a 12 <|endoftext|> b",
        "  spaces\n\nand lines 🙂",
    ] {
        assert_eq!(
            back.encode(text).unwrap(),
            t.encode(text).unwrap(),
            "{text:?}"
        );
    }
    let err = Tokenizer::from_file(&dir.path().join("missing.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.json"), "{err}");
}

#[test]
fn open_model_finds_the_single_gguf_in_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(false, false);
    write_tiny_gguf(
        &dir.path().join("m.gguf"),
        &cfg,
        &random_source(&cfg, 1).unwrap(),
        &GgufOptions::default(),
    );
    let m = open_model(dir.path()).unwrap();
    assert_eq!(m.format, ModelFormat::Gguf);
    assert_eq!(m.config, cfg);
    assert!(m.tokenizer().is_ok());
}

/// Token ids of `smollm2::TOKENIZER_TEXTS` from transformers' GGUF tokenizer, except where it
/// departs from SmolLM2's own pre-tokenizer (see `smollm2.rs`).
#[test]
fn smollm2_gguf_tokenizer_matches_the_reference_token_ids() {
    let Some(path) = smollm2::gguf_path() else {
        return;
    };
    let t = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    for (text, want) in smollm2::TOKENIZER_TEXTS.iter().zip(smollm2::REFERENCE_IDS) {
        assert_eq!(t.encode(text).unwrap(), want.to_vec(), "{text:?}");
        assert_eq!(t.decode(want, false).unwrap(), *text);
    }
}

#[test]
fn smollm2_gguf_perplexity_matches_transformers() {
    let Some(path) = smollm2::gguf_path() else {
        return;
    };
    let m = open_model(&path).unwrap();
    assert_eq!(
        (
            m.config.n_layers(),
            m.config.hidden_size,
            m.config.vocab_size
        ),
        (30, 576, 49152)
    );
    let text = include_str!("data/model_loaders_text.txt");
    let tokens = m.tokenizer().unwrap().encode(text).unwrap();
    assert_eq!(
        &tokens[..smollm2::TEXT_PREFIX_IDS.len()],
        smollm2::TEXT_PREFIX_IDS
    );
    assert_eq!(tokens.len(), smollm2::TEXT_TOKENS);
    let model = Llama::load(&m.config, m.source.as_ref()).unwrap();
    let opts = PerplexityOptions {
        seq_len: 128,
        max_tokens: Some(256),
    };
    let r = perplexity(&model, &tokens, &opts).unwrap();
    assert_eq!(r.windows, 2);
    let diff = (r.perplexity - smollm2::TRANSFORMERS_PPL_2X128).abs();
    assert!(
        diff < 0.01,
        "tyr {} vs transformers {}",
        r.perplexity,
        smollm2::TRANSFORMERS_PPL_2X128
    );
}

#[test]
fn a_gguf_model_saved_by_tyr_reopens_as_saved_format_with_the_same_logits_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("m.gguf");
    let cfg = tiny_config(true, false);
    write_tiny_gguf(
        &gguf,
        &cfg,
        &random_source(&cfg, 9).unwrap(),
        &GgufOptions::default(),
    );
    let m = open_model(&gguf).unwrap();
    let tok_json = dir.path().join("tokenizer.json");
    m.tokenizer().unwrap().save(&tok_json).unwrap();
    let out = dir.path().join("saved");
    let opts = tyr::model::SaveOptions {
        tokenizer_json: Some(tok_json),
        ..Default::default()
    };
    tyr::model::save_model(&out, &m.config, m.source.as_ref(), &opts).unwrap();

    let back = open_model(&out).unwrap();
    assert_eq!(back.format, ModelFormat::Saved);
    assert_eq!(back.config.layers, m.config.layers);
    let text = "hello world 42 <|endoftext|>";
    let ids = m.tokenizer().unwrap().encode(text).unwrap();
    assert_eq!(back.tokenizer().unwrap().encode(text).unwrap(), ids);
    let x = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let a = Llama::load(&m.config, m.source.as_ref())
        .unwrap()
        .forward(&x)
        .unwrap();
    let b = Llama::load(&back.config, back.source.as_ref())
        .unwrap()
        .forward(&x)
        .unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}

#[test]
fn a_directory_without_config_or_gguf_is_not_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let err = open_model(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("not a model") && err.contains(dir.path().to_str().unwrap()),
        "{err}"
    );
}

/// llama.cpp's converter: the per-frequency divisors of Llama-3 RoPE scaling.
fn llama3_rope_freqs(theta: f64, head_dim: usize, factor: f64, orig: f64) -> Vec<f32> {
    let (low, high) = (1.0, 4.0);
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < orig / high {
                1.0
            } else if wavelen > orig / low {
                factor as f32
            } else {
                let smooth = (orig / wavelen - low) / (high - low);
                (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
            }
        })
        .collect()
}

#[test]
fn llama3_rope_scaling_is_recovered_from_rope_freqs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l3.gguf");
    let mut cfg = tiny_config(false, false);
    cfg.rope_theta = 500_000.0;
    let freqs = llama3_rope_freqs(cfg.rope_theta, cfg.head_dim, 8.0, 8192.0);
    // The tiny head (8 dims) covers all three bands: kept, smoothed and divided by the factor.
    assert!(
        freqs[0] == 1.0 && freqs[2] > 1.0 && freqs[2] < 8.0 && freqs[3] == 8.0,
        "{freqs:?}"
    );
    let src = random_source(&cfg, 2).unwrap();
    let opts = GgufOptions {
        rope_freqs: Some(freqs),
        ..Default::default()
    };
    write_tiny_gguf(&path, &cfg, &src, &opts);
    let (got, source) = open_gguf(&path).unwrap();
    let s = got.rope_scaling.clone().expect("rope scaling");
    assert_eq!(
        (
            s.factor,
            s.low_freq_factor,
            s.high_freq_factor,
            s.original_max_position_embeddings
        ),
        (8.0, 1.0, 4.0, 8192)
    );
    assert!(!source.contains("rope_freqs.weight"));

    // Divisors no Llama-3 setting produces are refused, naming the tensor.
    let bad = GgufOptions {
        rope_freqs: Some(vec![1.0, 3.0, 1.0, 2.0]),
        ..Default::default()
    };
    write_tiny_gguf(&path, &cfg, &src, &bad);
    let err = open_gguf(&path).err().unwrap().to_string();
    assert!(
        err.contains("l3.gguf") && err.contains("rope_freqs.weight"),
        "{err}"
    );
}

#[test]
fn chunked_lm_head_scores_a_long_window_like_full_logits() {
    use tyr::eval::perplexity::{LOGIT_ROWS_PER_CHUNK, model_window_nll, window_nll};
    let cfg = tiny_config(false, false);
    let model = Llama::load(&cfg, &random_source(&cfg, 4).unwrap()).unwrap();
    let n = LOGIT_ROWS_PER_CHUNK + 77;
    let window: Vec<u32> = (0..n as u32)
        .map(|i| (i * 37 + 11) % cfg.vocab_size as u32)
        .collect();
    let chunked = model_window_nll(&model, &window).unwrap();
    let ids = Tensor::new(window.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let full = window_nll(&model.forward(&ids).unwrap().squeeze(0).unwrap(), &window).unwrap();
    assert!(
        (chunked - full).abs() < 1e-6 * full.abs(),
        "{chunked} vs {full}"
    );
}

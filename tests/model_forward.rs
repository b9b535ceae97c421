//! The forward pass: parity with candle-transformers' Llama on the same weights, slicing parity
//! (masked units ≡ physically removed units, down to whole branches and K/V heads), block taps,
//! incremental decoding, and shape errors naming the tensor.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama as reference;
use common::*;
use tyr::model::random::random_source;
use tyr::model::{
    Block, Embeddings, Head, KvCache, Llama, Llama3RopeScaling, MemorySource, ModelConfig,
    TensorSource,
};

fn reference_config(cfg: &ModelConfig) -> reference::Config {
    let d = &cfg.layers[0];
    reference::Config {
        hidden_size: cfg.hidden_size,
        intermediate_size: d.d_ff,
        vocab_size: cfg.vocab_size,
        num_hidden_layers: cfg.n_layers(),
        num_attention_heads: d.n_q,
        num_key_value_heads: d.n_kv,
        use_flash_attn: false,
        rms_norm_eps: cfg.rms_norm_eps,
        rope_theta: cfg.rope_theta as f32,
        bos_token_id: None,
        eos_token_id: None,
        rope_scaling: cfg
            .rope_scaling
            .as_ref()
            .map(|s| reference::Llama3RopeConfig {
                factor: s.factor as f32,
                low_freq_factor: s.low_freq_factor as f32,
                high_freq_factor: s.high_freq_factor as f32,
                original_max_position_embeddings: s.original_max_position_embeddings,
                rope_type: reference::Llama3RopeType::Llama3,
            }),
        max_position_embeddings: cfg.max_position_embeddings,
        tie_word_embeddings: cfg.tie_word_embeddings,
    }
}

fn reference_model(cfg: &ModelConfig, src: &MemorySource) -> reference::Llama {
    let map: HashMap<String, Tensor> = src.clone().into_map().into_iter().collect();
    let vb = VarBuilder::from_tensors(map, DType::F32, &Device::Cpu);
    reference::Llama::load(vb, &reference_config(cfg)).unwrap()
}

/// Our logits at every position against the reference fed a prompt and then one token at a
/// time through its KV cache (it only returns the last position's logits).
fn assert_matches_reference(cfg: &ModelConfig, seed: u64) {
    let src = random_source(cfg, seed).unwrap();
    let ours = Llama::load(cfg, &src).unwrap();
    let theirs = reference_model(cfg, &src);
    let (b, s) = (2, 12);
    let ids = random_ids(b, s, cfg.vocab_size, seed);
    let logits = ours.forward(&ids).unwrap();
    let mut cache =
        reference::Cache::new(true, DType::F32, &reference_config(cfg), &Device::Cpu).unwrap();
    let prompt = 5;
    let first = theirs
        .forward(&ids.narrow(1, 0, prompt).unwrap(), 0, &mut cache)
        .unwrap();
    let mut worst = max_abs_diff(&first, &at_position(&logits, prompt - 1));
    for p in prompt..s {
        let step = theirs
            .forward(&ids.narrow(1, p, 1).unwrap(), p, &mut cache)
            .unwrap();
        worst = worst.max(max_abs_diff(&step, &at_position(&logits, p)));
    }
    assert!(worst < 1e-4, "max abs logit difference {worst}");
}

#[test]
fn forward_matches_candle_transformers_llama_with_gqa() {
    assert_matches_reference(&uniform_config(), 7);
}

#[test]
fn forward_matches_candle_transformers_llama_with_tied_embeddings_and_llama3_rope() {
    let mut cfg = uniform_config();
    cfg.tie_word_embeddings = true;
    // A short original context so all three frequency bands occur for head_dim 8 (inverse
    // frequencies 1, 0.1, 0.01, 0.001: kept, interpolated, divided, divided).
    cfg.rope_scaling = Some(Llama3RopeScaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 64,
    });
    assert_matches_reference(&cfg, 8);
}

#[test]
fn forward_matches_candle_transformers_llama_with_multi_head_attention() {
    let mut cfg = uniform_config();
    cfg.layers = vec![tyr::model::LayerDims::dense(4, 4, 16); 2];
    assert_matches_reference(&cfg, 9);
}

/// Builds the masked model (units zeroed, original widths) and the sliced model (units removed)
/// from the same random weights, with per-layer `(heads, channels)` to drop.
fn masked_and_sliced(
    cfg: &ModelConfig,
    drops: &[(Vec<usize>, Vec<usize>)],
    seed: u64,
) -> (Llama, Llama) {
    let src = random_source(cfg, seed).unwrap();
    let emb = Embeddings::load(cfg, &src).unwrap();
    let head = Head::load(cfg, &src, &emb).unwrap();
    let (mut masked, mut sliced) = (vec![], vec![]);
    for (l, (heads, chans)) in drops.iter().enumerate() {
        let w = Block::load(cfg, l, &src).unwrap().weights().unwrap();
        let dims = cfg.layers[l].clone();
        let mw = masked_layer(&w, cfg.head_dim, heads, chans);
        masked.push(Block::from_weights(cfg, l, dims.clone(), mw).unwrap());
        let (sd, sw) = sliced_layer(&w, &dims, cfg.head_dim, heads, chans);
        sliced.push(Block::from_weights(cfg, l, sd, sw).unwrap());
    }
    (
        Llama::from_parts(cfg, emb.clone(), masked, head.clone()),
        Llama::from_parts(cfg, emb, sliced, head),
    )
}

#[test]
fn pruned_model_matches_masked_dense_model() {
    let cfg = hetero_config();
    // Layer 0: heads 1 and 3 go (K/V head 0 keeps head 0, K/V head 1 loses its only head),
    // channels 0, 5, 39; layer 1: half the FFN; layer 2: the lone head on K/V 0; layer 3: nothing.
    let drops = vec![
        (vec![1, 3], vec![0, 5, 39]),
        (vec![], (0..12).collect()),
        (vec![1], vec![]),
        (vec![], vec![]),
    ];
    let (masked, sliced) = masked_and_sliced(&cfg, &drops, 11);
    assert_eq!(
        sliced.config().layers[0].n_kv,
        2,
        "an unused K/V head is removed"
    );
    assert_eq!(sliced.config().layers[2].n_kv, 1);
    let ids = random_ids(2, 20, cfg.vocab_size, 3);
    let d = max_abs_diff(
        &masked.forward(&ids).unwrap(),
        &sliced.forward(&ids).unwrap(),
    );
    assert!(d < 1e-5, "max abs logit difference {d}");
}

#[test]
fn fully_removed_branches_match_zeroed_branches() {
    let cfg = hetero_config();
    let drops = vec![
        ((0..5).collect(), (0..40).collect()), // the whole layer 0
        (vec![], (0..24).collect()),           // layer 1: attention already gone, FFN too now
        ((0..3).collect(), vec![]),            // layer 2: attention
        (vec![], (0..7).collect()),            // layer 3: FFN
    ];
    let (masked, sliced) = masked_and_sliced(&cfg, &drops, 12);
    for d in &sliced.config().layers {
        assert!(d.n_q == 0 || d.d_ff == 0);
    }
    assert_eq!(
        sliced.config().layers[0],
        tyr::model::LayerDims {
            n_q: 0,
            n_kv: 0,
            kv_map: vec![],
            d_ff: 0
        }
    );
    let ids = random_ids(1, 9, cfg.vocab_size, 4);
    let d = max_abs_diff(
        &masked.forward(&ids).unwrap(),
        &sliced.forward(&ids).unwrap(),
    );
    assert!(d < 1e-5, "max abs logit difference {d}");
}

#[test]
fn block_without_branches_is_the_identity() {
    let cfg = tiny_config(vec![tyr::model::LayerDims {
        n_q: 0,
        n_kv: 0,
        kv_map: vec![],
        d_ff: 0,
    }]);
    let src = random_source(&cfg, 1).unwrap();
    let block = Block::load(&cfg, 0, &src).unwrap();
    let x = random_hidden(2, 5, 32, 1);
    let y = block.forward(&x).unwrap();
    assert_eq!(max_abs_diff(&x, &y), 0.0);
}

#[test]
fn observed_inputs_reproduce_the_branch_outputs() {
    let cfg = hetero_config();
    let src = random_source(&cfg, 5).unwrap();
    let x = random_hidden(2, 7, 32, 2);
    for l in 0..cfg.n_layers() {
        let block = Block::load(&cfg, l, &src).unwrap();
        let (y, taps) = block.forward_observed(&x).unwrap();
        assert_eq!(max_abs_diff(&y, &block.forward(&x).unwrap()), 0.0);
        let d = &cfg.layers[l];
        assert_eq!(taps.o_proj_input.is_some(), d.n_q > 0);
        assert_eq!(taps.down_proj_input.is_some(), d.d_ff > 0);
        // Zeroing down_proj removes exactly down_proj_input · down_projᵀ from the output.
        if let Some(act) = &taps.down_proj_input {
            assert_eq!(act.dims(), &[2, 7, d.d_ff]);
            let mut w = block.weights().unwrap();
            let m = w.mlp.as_mut().unwrap();
            let down = m.down_proj.clone();
            m.down_proj = down.zeros_like().unwrap();
            let without = Block::from_weights(&cfg, l, d.clone(), w)
                .unwrap()
                .forward(&x)
                .unwrap();
            let contrib = act.broadcast_matmul(&down.t().unwrap()).unwrap();
            let diff = max_abs_diff(&(without + contrib).unwrap(), &y);
            assert!(diff < 1e-5, "layer {l}: {diff}");
        }
        if let Some(att) = &taps.o_proj_input {
            assert_eq!(att.dims(), &[2, 7, d.n_q * cfg.head_dim]);
            let mut w = block.weights().unwrap();
            let a = w.attn.as_mut().unwrap();
            let o = a.o_proj.clone();
            a.o_proj = o.zeros_like().unwrap();
            let without = Block::from_weights(&cfg, l, d.clone(), w)
                .unwrap()
                .forward(&x)
                .unwrap();
            // With the attention output gone the FFN sees a different input, so compare only
            // when there is no FFN after it.
            if d.d_ff == 0 {
                let contrib = att.broadcast_matmul(&o.t().unwrap()).unwrap();
                let diff = max_abs_diff(&(without + contrib).unwrap(), &y);
                assert!(diff < 1e-5, "layer {l}: {diff}");
            }
        }
    }
}

#[test]
fn incremental_decoding_matches_the_full_forward() {
    let cfg = hetero_config();
    let model = Llama::load(&cfg, &random_source(&cfg, 6).unwrap()).unwrap();
    let ids = random_ids(2, 10, cfg.vocab_size, 6);
    let full = model.forward(&ids).unwrap();
    let mut cache = KvCache::new(cfg.n_layers());
    let first = model
        .forward_step(&ids.narrow(1, 0, 4).unwrap(), &mut cache)
        .unwrap();
    let mut worst = max_abs_diff(&first, &at_position(&full, 3));
    for p in 4..10 {
        let step = model
            .forward_step(&ids.narrow(1, p, 1).unwrap(), &mut cache)
            .unwrap();
        worst = worst.max(max_abs_diff(&step, &at_position(&full, p)));
    }
    assert_eq!(cache.len(), 10);
    assert!(worst < 1e-4, "max abs logit difference {worst}");
}

#[test]
fn logits_of_selected_rows_equal_those_rows_of_the_full_logits() {
    let cfg = uniform_config();
    let model = Llama::load(&cfg, &random_source(&cfg, 2).unwrap()).unwrap();
    let ids = random_ids(1, 6, cfg.vocab_size, 2);
    let h = model.hidden(&ids).unwrap();
    let rows = Tensor::new(&[3u32, 0, 60], &Device::Cpu).unwrap();
    let sub = model.head().logits_rows(&h, &rows).unwrap();
    let full = model
        .head()
        .logits(&h)
        .unwrap()
        .index_select(&rows, 2)
        .unwrap();
    assert!(max_abs_diff(&sub, &full) < 1e-5);
}

#[test]
fn wrong_shape_or_missing_tensor_is_an_error_naming_the_tensor() {
    let cfg = uniform_config();
    let mut src = random_source(&cfg, 3).unwrap();
    src.insert(
        "model.layers.1.mlp.up_proj.weight",
        Tensor::zeros((47, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    let e = Block::load(&cfg, 1, &src).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.1.mlp.up_proj.weight") && e.contains("47"),
        "{e}"
    );
    let mut map = random_source(&cfg, 3).unwrap().into_map();
    map.remove("model.layers.2.self_attn.k_proj.weight");
    let mut src = MemorySource::new();
    for (k, v) in map {
        src.insert(k, v);
    }
    assert!(!src.contains("model.layers.2.self_attn.k_proj.weight"));
    let e = Llama::load(&cfg, &src).unwrap_err().to_string();
    assert!(e.contains("model.layers.2.self_attn.k_proj.weight"), "{e}");
}

#[test]
fn token_id_outside_the_vocabulary_is_an_error() {
    let cfg = uniform_config();
    let model = Llama::load(&cfg, &random_source(&cfg, 2).unwrap()).unwrap();
    let ids = Tensor::new(&[[1u32, 61]], &Device::Cpu).unwrap();
    assert!(model.forward(&ids).unwrap_err().to_string().contains("61"));
}

/// The kernel class is chosen once per process, so each class runs in a child: this test
/// re-runs itself with `TYR_KERNEL` set and this variable naming where to write the logits.
const FORWARD_BITS_OUT: &str = "TYR_TEST_FORWARD_BITS_OUT";

/// Every kernel class the CPU runs gives the portable kernels' bits for a whole forward, on
/// widths that are multiples of no tile size, a depth past one block (d_ff 300) and attention
/// over more than one block of positions (seq 300).
#[test]
fn forward_gives_the_same_bits_on_every_kernel_class() {
    let mut cfg = hetero_config();
    cfg.layers[0].d_ff = 300;
    cfg.max_position_embeddings = 512;
    if let Some(out) = std::env::var_os(FORWARD_BITS_OUT) {
        let forced = std::env::var("TYR_KERNEL").unwrap();
        assert_eq!(tyr::model::cpu_kernel::kernel().name(), forced);
        let model = Llama::load(&cfg, &random_source(&cfg, 8).unwrap()).unwrap();
        let logits = model
            .forward(&random_ids(2, 300, cfg.vocab_size, 8))
            .unwrap();
        let bits: Vec<u8> = logits
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .flat_map(|x| x.to_bits().to_le_bytes())
            .collect();
        std::fs::write(out, bits).unwrap();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut runs = Vec::new();
    for class in tyr::model::KernelClass::available() {
        let out = dir.path().join(class.name());
        let status = std::process::Command::new(&exe)
            .args([
                "--exact",
                "forward_gives_the_same_bits_on_every_kernel_class",
                "--test-threads=1",
            ])
            .env("TYR_KERNEL", class.name())
            .env(FORWARD_BITS_OUT, &out)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{} child failed", class.name());
        runs.push((class, std::fs::read(&out).unwrap()));
    }
    let (_, want) = &runs[0];
    assert_eq!(want.len(), 2 * 300 * cfg.vocab_size * 4);
    for (class, got) in &runs[1..] {
        let differing = got
            .chunks_exact(4)
            .zip(want.chunks_exact(4))
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(differing, 0, "{class:?}: logits differing from portable");
    }
}

#[test]
fn perplexity_layer_by_layer_equals_the_whole_model_bit_for_bit() {
    use tyr::eval::perplexity::{PerplexityOptions, perplexity, perplexity_layer_by_layer};
    use tyr::model::{Block, Embeddings, Head, Llama};
    let cfg = hetero_config();
    let src = random_source(&cfg, 11).unwrap();
    let model = Llama::load(&cfg, &src).unwrap();
    let tokens: Vec<u32> = (0..100u32)
        .map(|i| (i * 13 + 5) % cfg.vocab_size as u32)
        .collect();
    let opts = PerplexityOptions {
        seq_len: 16,
        max_tokens: Some(90),
    };
    let whole = perplexity(&model, &tokens, &opts).unwrap();
    let emb = Embeddings::load(&cfg, &src).unwrap();
    let head = Head::load(&cfg, &src, &emb).unwrap();
    // One window per group (each block built five times), and every window in one group.
    for group_bytes in [1, 1 << 30] {
        let mut built = 0;
        let r = perplexity_layer_by_layer(
            &emb,
            cfg.n_layers(),
            |l| {
                built += 1;
                Block::load(&cfg, l, &src)
            },
            &head,
            &tokens,
            &opts,
            group_bytes,
        )
        .unwrap();
        assert_eq!(r.perplexity.to_bits(), whole.perplexity.to_bits());
        assert_eq!(r, whole);
        let groups = if group_bytes == 1 { whole.windows } else { 1 };
        assert_eq!(built, groups * cfg.n_layers());
    }
}

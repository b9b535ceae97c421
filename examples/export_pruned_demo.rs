//! Exports a hand-pruned copy of a Llama GGUF (e.g. SmolLM2-135M) in both formats, for checking
//! the GGUF in llama.cpp against `tyr eval` (see `scripts/llamacpp_check.py`). The choice covers
//! every export case: uneven GQA groups, removed K/V heads, one layer without attention, one
//! without FFN. Kept units keep their dense `o_proj`/`down_proj` columns (no refit).
//!
//! cargo run --release --example export_pruned_demo -- MODEL.gguf OUT_DIR TEXT [MAX_TOKENS [omit|pad-one [layer0-no-attention]]]
//!
//! Writes OUT_DIR/saved/ (our format), OUT_DIR/pruned.gguf, OUT_DIR/tokens.json (the text's
//! token ids, no BOS) and prints the export report.

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};
use tyr::export::{
    GgufExportOptions, LayerChoice, ModuleChoice, SlicedSource, ZeroWidth, write_gguf,
};
use tyr::model::open::open_model;
use tyr::model::{ModelConfig, SaveOptions, TensorSource, save_model};

fn columns(t: &Tensor, idx: &[usize]) -> anyhow::Result<Tensor> {
    let ids: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
    let n = ids.len();
    Ok(t.index_select(&Tensor::from_vec(ids, n, &Device::Cpu)?, 1)?)
}

/// Kept query heads and FFN channels of layer `l` for a dense layer of `n_q` heads, `d_ff`
/// channels.
fn kept(l: usize, n_q: usize, d_ff: usize, layer0_empty: bool) -> (Vec<usize>, Vec<usize>) {
    let first = |n: usize| (0..n).collect::<Vec<_>>();
    match l {
        // Optionally no attention in layer 0 (written as one padding head for llama.cpp).
        0 if layer0_empty => (vec![], first(d_ff)),
        // Uneven groups (2 + 1) and a removed K/V head.
        10 => (vec![0, 1, 3], first(d_ff * 3 / 4)),
        // No attention.
        14 => (vec![], first(d_ff)),
        // Neither attention nor FFN.
        16 => (vec![], vec![]),
        // No FFN, groups 3 + 2 + 1.
        20 => (
            [0, 1, 2, 4, 5, 8]
                .into_iter()
                .filter(|&h| h < n_q)
                .collect(),
            vec![],
        ),
        // Only the middle K/V group.
        25 => ((n_q / 3..2 * n_q / 3).collect(), first(d_ff)),
        _ => (first(n_q), first(d_ff * 7 / 8)),
    }
}

fn choices(
    cfg: &ModelConfig,
    src: &dyn TensorSource,
    layer0_empty: bool,
) -> anyhow::Result<Vec<LayerChoice>> {
    let dh = cfg.head_dim;
    let mut out = Vec::new();
    for (l, d) in cfg.layers.iter().enumerate() {
        let (heads, chans) = kept(l, d.n_q, d.d_ff, layer0_empty);
        let o = src.tensor(&format!("model.layers.{l}.self_attn.o_proj.weight"))?;
        let down = src.tensor(&format!("model.layers.{l}.mlp.down_proj.weight"))?;
        let o_cols: Vec<usize> = heads.iter().flat_map(|&h| h * dh..(h + 1) * dh).collect();
        out.push(LayerChoice {
            attn: ModuleChoice {
                kept: heads.iter().map(|&h| h as u32).collect(),
                weight: columns(&o, &o_cols)?.into(),
            },
            ffn: ModuleChoice {
                kept: chans.iter().map(|&c| c as u32).collect(),
                weight: columns(&down, &chans)?.into(),
            },
        });
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        bail!(
            "usage: export_pruned_demo MODEL.gguf OUT_DIR TEXT [MAX_TOKENS [omit|pad-one [layer0-no-attention]]]"
        );
    }
    let (model, out, text) = (
        std::path::Path::new(&args[0]),
        std::path::Path::new(&args[1]),
        std::path::Path::new(&args[2]),
    );
    let max_tokens: usize = args.get(3).map_or(Ok(4096), |s| s.parse())?;
    std::fs::create_dir_all(out)?;
    let m = open_model(model).with_context(|| format!("opening {}", model.display()))?;
    let tok = m.tokenizer()?;
    let text = std::fs::read_to_string(text)?;
    let mut ids = tok.encode(&text)?;
    ids.truncate(max_tokens);
    std::fs::write(out.join("tokens.json"), serde_json::to_string(&ids)?)?;
    let tok_json = out.join("tokenizer.json");
    tok.save(&tok_json)?;

    let layer0_empty = args.get(5).is_some_and(|a| a == "layer0-no-attention");
    let ch = choices(&m.config, m.source.as_ref(), layer0_empty)?;
    let sliced = SlicedSource::new(&m.config, m.source.as_ref(), &ch)?;
    let cfg = sliced.config().clone();
    // Materialise once: the GGUF source dequantizes on every read.
    let mem = sliced.to_memory()?;
    let saved = out.join("saved");
    let save_opts = SaveOptions {
        tokenizer_json: Some(tok_json),
        ..Default::default()
    };
    save_model(&saved, &cfg, &mem, &save_opts)?;
    let zero_width = match args.get(4).map(String::as_str) {
        None | Some("omit") => ZeroWidth::Omit,
        Some("pad-one") => ZeroWidth::PadOne,
        Some(other) => bail!("zero-width must be omit or pad-one, not {other}"),
    };
    let gguf_opts = GgufExportOptions {
        metadata_from: Some(model.to_path_buf()),
        zero_width,
        ..Default::default()
    };
    let report = write_gguf(&out.join("pruned.gguf"), &cfg, &mem, &gguf_opts)?;
    let dims: Vec<(usize, usize, usize)> =
        cfg.layers.iter().map(|d| (d.n_q, d.n_kv, d.d_ff)).collect();
    println!(
        "{}",
        serde_json::json!({
            "sliced_dims": dims,
            "dense_decoder_params": m.config.decoder_params(),
            "gguf": report,
            "tokens": ids.len(),
        })
    );
    Ok(())
}

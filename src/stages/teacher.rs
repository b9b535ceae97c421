//! `teacher-topk` stage: the dense model's top-k next-token logits (ids + values) at every
//! position of the calibration pool, computed once and checkpointed (ALGORITHM.md §8). Every
//! round's search and every target share it: its key is the model, the pool and k.
//!
//! Inputs: `model`, `pool`. Params: `top-k`. Output: record `teacher` (`TeacherTopK`, rows in
//! pool order, piece after piece). About once a minute the rows computed since the last save are
//! saved as a new progress part (`StageContext::save_progress_part`), so a killed run resumes
//! near where it stopped and nothing saved is written twice (the single progress record this
//! replaced was the whole growing record, rewritten every minute).

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::model_ref::{ModelRecord, open};
use crate::data::Pool;
use crate::engine::{InputSlot, Outputs, Stage, StageContext};
use crate::model::Llama;
use crate::search::TeacherTopK;
use crate::{Error, Result};

/// Most tokens per teacher forward (the logits of a batch are `tokens × vocab` f32).
pub const BATCH_TOKENS: usize = 1024;

fn d_top_k() -> usize {
    8192
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TeacherParams {
    /// k [8192]; clamped to the vocabulary.
    #[serde(default = "d_top_k")]
    pub top_k: usize,
}

/// One progress part: the rows of pieces `..pieces_end` not in an earlier part.
#[derive(Serialize, Deserialize)]
struct Part {
    pieces_end: usize,
    rows: TeacherTopK,
}

/// How often the rows computed since the last part are saved as a new part.
const PART_SECONDS: u64 = 60;

/// `PART_SECONDS`, or the test hook `TYR_TEST_TEACHER_PART_SECONDS` (0: a part after every
/// batch, so a test can kill the stage between parts).
fn part_seconds() -> u64 {
    std::env::var("TYR_TEST_TEACHER_PART_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(PART_SECONDS)
}

pub struct TeacherStage(TeacherParams);

impl Stage for TeacherStage {
    const KIND: &'static str = "teacher-topk";
    // 2: the record's arrays are little-endian byte strings (`le_bytes`), progress in parts.
    const VERSION: u32 = 2;
    type Params = TeacherParams;

    fn new(p: TeacherParams) -> Result<Self> {
        if p.top_k == 0 {
            return Err(Error::msg("`top-k` must be at least 1"));
        }
        Ok(Self(p))
    }

    fn code_versions(&self) -> Vec<(&'static str, u32)> {
        crate::model::forward_code_versions()
    }

    fn inputs(&self) -> Vec<InputSlot> {
        vec![InputSlot::one("model"), InputSlot::one("pool")]
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outputs> {
        let record: ModelRecord = ctx.input("model")?.record("model")?;
        let pool: Pool = ctx.input("pool")?.record("pool")?;
        let model = open(&record)?;
        let llama = Llama::load_on(&model.config, model.source.as_ref(), &ctx.compute()?)?;
        let vocab = model.config.vocab_size;
        let saved: Vec<Part> = ctx.load_progress_parts()?;
        let (mut done, mut teacher, mut parts) = resume(saved, &pool, self.0.top_k, vocab)?;
        ctx.truncate_progress_parts(parts)?;
        if done > 0 {
            tracing::info!(pieces = done, parts, "resuming the teacher");
        }
        // Rows since the last part; saved as the next part every PART_SECONDS, so nothing
        // saved is ever written again.
        let mut pending = TeacherTopK::new(self.0.top_k, vocab)?;
        let total = pool.pieces.len() as u64;
        let every = part_seconds();
        let mut last_save = std::time::Instant::now();
        while done < pool.pieces.len() {
            // Consecutive pieces of one length, up to BATCH_TOKENS tokens: pool order is kept.
            let len = pool.pieces[done].len();
            let mut end = done + 1;
            while end < pool.pieces.len()
                && pool.pieces[end].len() == len
                && (end + 1 - done) * len <= BATCH_TOKENS
            {
                end += 1;
            }
            if len > 0 {
                let ids: Vec<u32> = pool.pieces[done..end].iter().flatten().copied().collect();
                let b = end - done;
                let logits = llama.forward(&Tensor::from_vec(ids, (b, len), &Device::Cpu)?)?;
                pending.push_logits(&logits.reshape((b * len, vocab))?)?;
            }
            done = end;
            if last_save.elapsed().as_secs() >= every && done < pool.pieces.len() {
                let part = Part {
                    pieces_end: done,
                    rows: pending,
                };
                ctx.save_progress_part(parts, &part)?;
                parts += 1;
                teacher.append(&part.rows)?;
                pending = TeacherTopK::new(self.0.top_k, vocab)?;
                last_save = std::time::Instant::now();
            }
            ctx.report(done as u64, total);
        }
        teacher.append(&pending)?;
        drop(pending);
        let mut o = Outputs::new();
        o.metric("rows", teacher.rows() as f64);
        o.metric("k", teacher.k() as f64);
        o.record("teacher", &teacher)?;
        Ok(o)
    }
}

/// The pieces done, the rows so far and the next part's index, from the parts an interrupted
/// attempt saved (each dropped once appended, so the rows are held once). Parts come from
/// attempts of this same key (same model, pool and k), so they fit unless damaged; the first
/// that does not fit, and every part after it, is recomputed.
fn resume(
    saved: Vec<Part>,
    pool: &Pool,
    k: usize,
    vocab: usize,
) -> Result<(usize, TeacherTopK, usize)> {
    let mut teacher = TeacherTopK::new(k, vocab)?;
    let mut done = 0;
    let mut used = 0;
    for p in saved {
        let fits = p.pieces_end > done
            && p.pieces_end <= pool.pieces.len()
            && (p.rows.k(), p.rows.vocab()) == (teacher.k(), vocab)
            && p.rows.rows()
                == pool.pieces[done..p.pieces_end]
                    .iter()
                    .map(Vec::len)
                    .sum::<usize>();
        if !fits {
            tracing::warn!(
                part = used,
                "a saved teacher part does not fit; recomputing from it"
            );
            break;
        }
        teacher.append(&p.rows)?;
        done = p.pieces_end;
        used += 1;
    }
    Ok((done, teacher, used))
}

//! `teacher-topk` stage: the dense model's top-k next-token logits (ids + values) at every
//! position of the calibration pool, computed once and checkpointed (ALGORITHM.md §8). Every
//! round's search and every target share it: its key is the model, the pool and k.
//!
//! Inputs: `model`, `pool`. Params: `top-k`. Output: record `teacher` (`TeacherTopK`, rows in
//! pool order, piece after piece). A progress record (at most once a minute) lets a killed run resume
//! near where it stopped.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::model_ref::{ModelRecord, open};
use crate::data::Pool;
use crate::engine::{InputSlot, Outputs, Stage, StageContext};
use crate::model::Llama;
use crate::search::TeacherTopK;
use crate::{Error, Result};

/// Most tokens per teacher forward (the logits of a batch are `tokens × vocab` f32).
const BATCH_TOKENS: usize = 1024;

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

/// Saved after each batch: the rows of the pieces done so far.
#[derive(Serialize, Deserialize)]
struct Progress {
    pieces_done: usize,
    teacher: TeacherTopK,
}

pub struct TeacherStage(TeacherParams);

impl Stage for TeacherStage {
    const KIND: &'static str = "teacher-topk";
    const VERSION: u32 = 1;
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
        let llama = Llama::load(&model.config, model.source.as_ref())?;
        let vocab = model.config.vocab_size;
        let (mut done, mut teacher) = match ctx.load_progress::<Progress>()? {
            Some(p)
                if p.pieces_done <= pool.pieces.len()
                    && p.teacher.k() == self.0.top_k.min(vocab) =>
            {
                tracing::info!(pieces = p.pieces_done, "resuming the teacher");
                (p.pieces_done, p.teacher)
            }
            _ => (0, TeacherTopK::new(self.0.top_k, vocab)?),
        };
        let total = pool.pieces.len() as u64;
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
                teacher.push_logits(&logits.reshape((b * len, vocab))?)?;
            }
            done = end;
            // The record grows with the pool, so it is written at most once a minute.
            if last_save.elapsed().as_secs() >= 60 && done < pool.pieces.len() {
                ctx.save_progress(&Progress {
                    pieces_done: done,
                    teacher: teacher.clone(),
                })?;
                last_save = std::time::Instant::now();
            }
            ctx.report(done as u64, total);
        }
        let mut o = Outputs::new();
        o.metric("rows", teacher.rows() as f64);
        o.metric("k", teacher.k() as f64);
        o.record("teacher", &teacher)?;
        Ok(o)
    }
}

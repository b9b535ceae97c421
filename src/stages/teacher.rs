//! `teacher-topk` stage: the dense model's top-k next-token logits (ids + values) at every
//! position of the calibration pool, computed once and checkpointed (ALGORITHM.md §8). Every
//! round's search and every target share it: its key is the model, the pool and k.
//!
//! Inputs: `model`, `pool`. Params: `top-k`, `shard-tokens`. Outputs: chunked `teacher`, one
//! chunk per shard (a bincode `Shard`: the rows of consecutive pool pieces), and record
//! `teacher-index` (`TeacherIndex`: k, V and where each shard ends). A shard is written as soon
//! as it is complete, so a killed run resumes after the last shard on disk and nothing is
//! written twice; the search reads only the shards of the pieces it scores (`Shards`).

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::model_ref::{ModelRecord, open};
use crate::data::Pool;
use crate::engine::{ArtifactSet, InputSlot, Outputs, Stage, StageContext};
use crate::model::Llama;
use crate::search::TeacherTopK;
use crate::search::fitness::piece_offsets;
use crate::supernet::scorer::TeacherSource;
use crate::{Error, Result};

/// Most tokens per teacher forward (the logits of a batch are `tokens × vocab` f32).
pub const BATCH_TOKENS: usize = 1024;

/// Default shard size: rows are added batch by batch until a shard holds this many bytes
/// (8 bytes a top-k entry at most).
const SHARD_BYTES: usize = 32 << 20;

fn d_top_k() -> usize {
    8192
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TeacherParams {
    /// k [8192]; clamped to the vocabulary.
    #[serde(default = "d_top_k")]
    pub top_k: usize,
    /// Tokens after which a shard is closed (at the end of a forward batch); default: as many
    /// as make 32 MiB of top-k entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_tokens: Option<usize>,
}

/// One chunk of the output: the rows of pieces `first_piece..end_piece`.
#[derive(Serialize, Deserialize)]
struct Shard {
    first_piece: usize,
    end_piece: usize,
    rows: TeacherTopK,
}

/// The output's table of contents.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TeacherIndex {
    pub k: usize,
    pub vocab: usize,
    /// Rows in all (pool tokens).
    pub rows: usize,
    /// The piece each shard ends before, ascending; the last is the pool's piece count.
    pub shard_ends: Vec<usize>,
}

/// The teacher's forward batches: consecutive pieces of one length, up to `BATCH_TOKENS`
/// tokens, in pool order, as `start..end` piece ranges.
fn batches(pool: &Pool) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut done = 0;
    while done < pool.pieces.len() {
        let len = pool.pieces[done].len();
        let mut end = done + 1;
        while end < pool.pieces.len()
            && pool.pieces[end].len() == len
            && (end + 1 - done) * len <= BATCH_TOKENS
        {
            end += 1;
        }
        out.push(done..end);
        done = end;
    }
    out
}

/// The batches grouped into shards: a shard is closed after the batch that brings it to
/// `shard_tokens` tokens.
fn shards(pool: &Pool, shard_tokens: usize) -> Vec<Vec<std::ops::Range<usize>>> {
    let mut out: Vec<Vec<std::ops::Range<usize>>> = vec![Vec::new()];
    let mut tokens = 0;
    for b in batches(pool) {
        tokens += pool.pieces[b.clone()].iter().map(Vec::len).sum::<usize>();
        out.last_mut().expect("one shard at least").push(b);
        if tokens >= shard_tokens {
            out.push(Vec::new());
            tokens = 0;
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

pub struct TeacherStage(TeacherParams);

impl Stage for TeacherStage {
    const KIND: &'static str = "teacher-topk";
    // 2: the record's arrays are little-endian byte strings (`le_bytes`), progress in parts.
    // 3: shards (a chunked output) and an index.
    const VERSION: u32 = 3;
    type Params = TeacherParams;

    fn new(p: TeacherParams) -> Result<Self> {
        if p.top_k == 0 {
            return Err(Error::msg("`top-k` must be at least 1"));
        }
        if p.shard_tokens == Some(0) {
            return Err(Error::msg("`shard-tokens` must be at least 1"));
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
        let k = TeacherTopK::new(self.0.top_k, vocab)?.k();
        let shard_tokens = self
            .0
            .shard_tokens
            .unwrap_or((SHARD_BYTES / (8 * k)).max(1));
        let plan = shards(&pool, shard_tokens);
        let mut w = ctx.chunk_writer("teacher")?;
        if w.written() > 0 {
            tracing::info!(
                shards = w.written(),
                of = plan.len(),
                "resuming the teacher"
            );
        }
        let total = pool.pieces.len() as u64;
        for shard in plan.iter().skip(w.written()) {
            let mut rows = TeacherTopK::new(self.0.top_k, vocab)?;
            for b in shard {
                let len = pool.pieces[b.start].len();
                if len > 0 {
                    let ids: Vec<u32> = pool.pieces[b.clone()].iter().flatten().copied().collect();
                    let n = b.len();
                    let logits = llama.forward(&Tensor::from_vec(ids, (n, len), &Device::Cpu)?)?;
                    rows.push_logits(&logits.reshape((n * len, vocab))?)?;
                }
                ctx.report(b.end as u64, total);
            }
            let shard = Shard {
                first_piece: shard[0].start,
                end_piece: shard[shard.len() - 1].end,
                rows,
            };
            let bytes = bincode::serialize(&shard)
                .map_err(|e| Error::msg(format!("encoding a teacher shard: {e}")))?;
            w.push_bytes(&bytes)?;
        }
        let index = TeacherIndex {
            k,
            vocab,
            rows: pool.pieces.iter().map(Vec::len).sum(),
            shard_ends: plan.iter().map(|s| s[s.len() - 1].end).collect(),
        };
        let mut o = Outputs::new();
        o.metric("rows", index.rows as f64);
        o.metric("k", k as f64);
        o.metric("shards", plan.len() as f64);
        o.record("teacher-index", &index)?;
        o.chunks("teacher", w.finish());
        Ok(o)
    }
}

/// The teacher as the search reads it: shard by shard, only those it is asked for.
pub struct Shards<'a> {
    set: &'a ArtifactSet,
    index: TeacherIndex,
    /// First row of every piece.
    offsets: Vec<usize>,
}

impl<'a> Shards<'a> {
    /// The `teacher-topk` stage's outputs in `set`, for the pool of `lengths` it was computed on.
    pub fn open(set: &'a ArtifactSet, lengths: &[usize]) -> Result<Self> {
        let index: TeacherIndex = set.record("teacher-index")?;
        let chunks = set.chunk_count("teacher")?;
        let sorted = index.shard_ends.windows(2).all(|w| w[0] < w[1]);
        if chunks != index.shard_ends.len()
            || !sorted
            || index.shard_ends.last() != Some(&lengths.len())
            || index.rows != lengths.iter().sum::<usize>()
        {
            return Err(Error::EngineArtifact {
                stage: set.stage().to_string(),
                output: "teacher-index".into(),
                message: format!(
                    "{chunks} shards ending at pieces {:?} do not cover a pool of {} pieces",
                    index.shard_ends,
                    lengths.len()
                ),
            });
        }
        Ok(Self {
            set,
            index,
            offsets: piece_offsets(lengths),
        })
    }

    fn shard(&self, i: usize) -> Result<Shard> {
        let bytes = self.set.chunk_bytes("teacher", i)?;
        let bad = |m: String| Error::EngineArtifact {
            stage: self.set.stage().to_string(),
            output: "teacher".into(),
            message: format!("shard {i}: {m}"),
        };
        let s: Shard = bincode::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let first = if i == 0 {
            0
        } else {
            self.index.shard_ends[i - 1]
        };
        let end = self.index.shard_ends[i];
        let rows = self.row_of(end) - self.row_of(first);
        if (s.first_piece, s.end_piece) != (first, end)
            || (s.rows.k(), s.rows.vocab()) != (self.index.k, self.index.vocab)
            || s.rows.rows() != rows
        {
            return Err(bad(format!(
                "holds pieces {}..{} with {} rows of k = {}, the index says {first}..{end} \
                 with {rows}",
                s.first_piece,
                s.end_piece,
                s.rows.rows(),
                s.rows.k()
            )));
        }
        Ok(s)
    }

    fn row_of(&self, piece: usize) -> usize {
        self.offsets.get(piece).copied().unwrap_or(self.index.rows)
    }
}

impl TeacherSource for Shards<'_> {
    fn rows(&self) -> usize {
        self.index.rows
    }

    fn k(&self) -> usize {
        self.index.k
    }

    fn piece_rows(&self, asks: &[(usize, usize, usize)]) -> Result<Vec<TeacherTopK>> {
        let shard_of = |piece: usize| self.index.shard_ends.partition_point(|&e| e <= piece);
        // Each shard read once, in order; the asked rows cut out of it and the shard dropped.
        let mut order: Vec<usize> = (0..asks.len()).collect();
        order.sort_by_key(|&i| shard_of(asks[i].0));
        let mut out: Vec<Option<TeacherTopK>> = vec![None; asks.len()];
        let mut held: Option<(usize, Shard)> = None;
        for i in order {
            let (piece, at, len) = asks[i];
            let si = shard_of(piece);
            if si >= self.index.shard_ends.len() {
                return Err(Error::msg(format!(
                    "piece {piece} is past the teacher's pool"
                )));
            }
            if held.as_ref().is_none_or(|(h, _)| *h != si) {
                held = Some((si, self.shard(si)?));
            }
            let (_, s) = held.as_ref().expect("just read");
            let from = at.checked_sub(self.row_of(s.first_piece)).ok_or_else(|| {
                Error::msg(format!(
                    "row {at} of piece {piece} is before teacher shard {si}, which starts at \
                     row {}",
                    self.row_of(s.first_piece)
                ))
            })?;
            out[i] = Some(s.rows.slice(from, len)?);
        }
        Ok(out
            .into_iter()
            .map(|r| r.expect("every ask answered"))
            .collect())
    }
}

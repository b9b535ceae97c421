//! `teacher-topk` stage: the dense model's top-k next-token logits (ids + values) at every
//! position of the calibration pool, computed once and checkpointed (ALGORITHM.md §8). Every
//! round's search and every target share it: its key is the model, the pool and k.
//!
//! Inputs: `model`, `pool`. Params: `top-k`, `shard-tokens`. Outputs: chunked `teacher`, one
//! chunk per shard (a bincode `Shard`: the rows of consecutive pool pieces), and record
//! `teacher-index` (`TeacherIndex`: k, V and where each shard ends). A shard is written as soon
//! as it is complete, so a killed run resumes after the last shard on disk and nothing is
//! written twice; the search reads only the shards of the pieces it scores (`Shards`).
//!
//! The model runs layer by layer over a group of shards (`GROUP_BYTES` of hidden states), so
//! only one decoder layer is in memory at a time, as in `eval-ppl`.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::model_ref::{ModelRecord, open};
use crate::data::Pool;
use crate::engine::{ArtifactSet, InputSlot, Outputs, Stage, StageContext};
use crate::model::llama_block::validate_dims;
use crate::model::{Block, Compute, Embeddings, Head, ModelConfig, TensorSource};
use crate::search::TeacherTopK;
use crate::search::fitness::piece_offsets;
use crate::supernet::scorer::TeacherSource;
use crate::{Error, Result};

/// Most tokens per teacher forward (the logits of a batch are `tokens × vocab` f32).
pub const BATCH_TOKENS: usize = 1024;

/// Most bytes of hidden states (f32) the teacher advances through the decoder together. Each
/// layer is read once per group, so the teacher holds one layer, the vocabulary tables and this.
pub const GROUP_BYTES: usize = 1 << 30;

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

/// The dense model as the teacher runs it: the vocabulary tables held, decoder layers read one
/// at a time.
struct TeacherModel<'a> {
    cfg: &'a ModelConfig,
    src: &'a dyn TensorSource,
    compute: &'a Compute,
    emb: &'a Embeddings,
    head: &'a Head,
}

/// The top-k rows of every shard of `group`, handed to `on_shard` in order with the shard's
/// index in `group`: all its batches
/// through layer 0, then layer 1, …, so one decoder layer is in memory at a time (`on_layer(l)`
/// after each); then the logits shard by shard, so one shard's rows are held, not the group's
/// (for a pool that fits one group that would be the whole record: 1.6 GB at 32k tokens and
/// top-k 8192). Each batch goes through the same operations as in a whole-model forward, so its
/// rows are the same bits.
fn group_rows(
    m: &TeacherModel<'_>,
    pool: &Pool,
    group: &[Vec<std::ops::Range<usize>>],
    top_k: usize,
    on_layer: &mut dyn FnMut(usize),
    on_shard: &mut dyn FnMut(usize, TeacherTopK) -> Result<()>,
) -> Result<()> {
    let mut xs: Vec<Vec<Tensor>> = group
        .iter()
        .map(|shard| {
            shard
                .iter()
                .filter(|b| !pool.pieces[b.start].is_empty())
                .map(|b| {
                    let ids: Vec<u32> = pool.pieces[b.clone()].iter().flatten().copied().collect();
                    let len = pool.pieces[b.start].len();
                    m.emb
                        .forward(&Tensor::from_vec(ids, (b.len(), len), &Device::Cpu)?)
                })
                .collect()
        })
        .collect::<Result<_>>()?;
    for l in 0..m.cfg.n_layers() {
        let block = Block::load_on(m.cfg, l, m.src, m.compute)?;
        for x in xs.iter_mut().flatten() {
            *x = block.forward(x)?;
        }
        on_layer(l);
    }
    let vocab = m.cfg.vocab_size;
    for (i, hidden) in xs.into_iter().enumerate() {
        let mut rows = TeacherTopK::new(top_k, vocab)?;
        for x in hidden {
            let (n, len, _) = x.dims3()?;
            rows.push_logits(&m.head.logits(&x)?.reshape((n * len, vocab))?)?;
        }
        on_shard(i, rows)?;
    }
    Ok(())
}

/// Consecutive shards whose hidden states (`token_bytes` a token) fit `group_bytes` together
/// (one shard at least): the teacher advances a group through the decoder layer by layer.
fn groups<'p>(
    pool: &Pool,
    shards: &'p [Vec<std::ops::Range<usize>>],
    token_bytes: usize,
    group_bytes: usize,
) -> Vec<&'p [Vec<std::ops::Range<usize>>]> {
    let tokens = |s: &Vec<std::ops::Range<usize>>| -> usize {
        s.iter()
            .map(|b| pool.pieces[b.clone()].iter().map(Vec::len).sum::<usize>())
            .sum()
    };
    let mut out = Vec::new();
    let mut start = 0;
    while start < shards.len() {
        let mut end = start + 1;
        let mut bytes = tokens(&shards[start]) * token_bytes;
        while end < shards.len() && bytes + tokens(&shards[end]) * token_bytes <= group_bytes {
            bytes += tokens(&shards[end]) * token_bytes;
            end += 1;
        }
        out.push(&shards[start..end]);
        start = end;
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
        let (cfg, src, compute) = (&model.config, model.source.as_ref(), ctx.compute()?);
        for (l, d) in cfg.layers.iter().enumerate() {
            validate_dims(l, d)?;
        }
        let emb = Embeddings::load_on(cfg, src, &compute)?;
        let head = Head::load_on(cfg, src, &emb, &compute)?;
        let model_parts = TeacherModel {
            cfg,
            src,
            compute: &compute,
            emb: &emb,
            head: &head,
        };
        let vocab = cfg.vocab_size;
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
        let groups = groups(
            &pool,
            &plan[w.written()..],
            cfg.hidden_size * 4,
            GROUP_BYTES,
        );
        // Progress: a step per layer of each group and one per shard written.
        let steps = groups
            .iter()
            .map(|g| cfg.n_layers() + g.len())
            .sum::<usize>() as u64;
        let step = std::cell::Cell::new(0);
        let tick = || {
            step.set(step.get() + 1);
            ctx.report(step.get(), steps);
        };
        for group in groups {
            group_rows(
                &model_parts,
                &pool,
                group,
                self.0.top_k,
                &mut |_| tick(),
                &mut |i, rows| {
                    tick();
                    let shard = &group[i];
                    let shard = Shard {
                        first_piece: shard[0].start,
                        end_piece: shard[shard.len() - 1].end,
                        rows,
                    };
                    let bytes = bincode::serialize(&shard)
                        .map_err(|e| Error::msg(format!("encoding a teacher shard: {e}")))?;
                    w.push_bytes(&bytes)
                },
            )?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::random::random_source;
    use crate::model::{LayerDims, Llama};

    #[test]
    fn layer_by_layer_groups_give_the_rows_of_whole_model_forwards() {
        let cfg = ModelConfig {
            hidden_size: 32,
            head_dim: 8,
            vocab_size: 61,
            layers: vec![LayerDims::dense(4, 2, 48); 3],
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: 256,
            tie_word_embeddings: false,
            attention_bias: false,
            mlp_bias: false,
            bos_token_id: None,
            eos_token_id: None,
        };
        let src = random_source(&cfg, 3).unwrap();
        // Pieces of three lengths, so batches differ in shape; shards of ~40 tokens.
        let pool = Pool {
            pieces: (0..12u32)
                .map(|i| {
                    (0..[16, 16, 16, 9][i as usize % 4])
                        .map(|t| (i * 7 + t) % 61)
                        .collect()
                })
                .collect(),
        };
        let plan = shards(&pool, 40);
        assert!(plan.len() >= 3, "{plan:?}");
        let compute = Compute::Packed;
        let emb = Embeddings::load_on(&cfg, &src, &compute).unwrap();
        let head = Head::load_on(&cfg, &src, &emb, &compute).unwrap();
        let m = TeacherModel {
            cfg: &cfg,
            src: &src,
            compute: &compute,
            emb: &emb,
            head: &head,
        };
        // Reference: each batch through the whole model at once.
        let llama = Llama::load(&cfg, &src).unwrap();
        let want: Vec<TeacherTopK> = plan
            .iter()
            .map(|shard| {
                let mut rows = TeacherTopK::new(5, 61).unwrap();
                for b in shard {
                    let len = pool.pieces[b.start].len();
                    let ids: Vec<u32> = pool.pieces[b.clone()].iter().flatten().copied().collect();
                    let t = Tensor::from_vec(ids, (b.len(), len), &Device::Cpu).unwrap();
                    let logits = llama.forward(&t).unwrap();
                    rows.push_logits(&logits.reshape((b.len() * len, 61)).unwrap())
                        .unwrap();
                }
                rows
            })
            .collect();
        // One group of every shard, and one group per shard.
        for group_bytes in [usize::MAX, 1] {
            let mut got = Vec::new();
            let mut layers = 0;
            for g in groups(&pool, &plan, 32 * 4, group_bytes) {
                let mut in_group = 0;
                group_rows(&m, &pool, g, 5, &mut |_| layers += 1, &mut |i, rows| {
                    assert_eq!(i, in_group, "shards are handed over in order");
                    in_group += 1;
                    got.push(rows);
                    Ok(())
                })
                .unwrap();
                assert_eq!(in_group, g.len());
            }
            assert_eq!(got, want, "group bytes {group_bytes}");
            let n_groups = if group_bytes == 1 { plan.len() } else { 1 };
            assert_eq!(layers, 3 * n_groups);
        }
    }
}

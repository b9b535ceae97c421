//! The model behind the search's fitness (ALGORITHM.md §8, §14): a candidate configuration is a
//! choice of one variant per module; its fitness on a minibatch is the mean KL(teacher ‖
//! student) over the minibatch's positions (the last position of each piece excluded).
//!
//! Incremental evaluation: per (generation, selection stage) the parent's hidden state at every
//! layer input is cached; a candidate starts at its first changed layer from the parent's state
//! there, so unchanged leading layers cost nothing. The computation from that point is the same
//! as a full forward's (same blocks, same batches), so the fitness is bit-identical to a full
//! forward; `incremental = false` turns the cache off (tests compare both).
//!
//! Blocks are assembled from the dense layer and the chosen variants on demand and kept in a
//! bounded cache. Student logits are computed only at the teacher's top-k ids when k is small
//! against the vocabulary (a gathered `lm_head`), otherwise as full rows and gathered.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{D, DType, Device, Tensor};

use super::acts::batches_by_length;
use super::layer::{DenseLayer, assemble_block};
use super::rounds::levels_at;
use crate::model::{Block, Compute, Embeddings, Head, ModelConfig, TensorSource};
use crate::prune::ModuleKind;
use crate::prune::local::Variant;
use crate::search::TeacherTopK;
use crate::search::fitness::{KlMean, piece_offsets, top_k_kl_gathered};
use crate::search::{Configuration, FitnessKind, PieceSlice, ScoreRequest, Scorer, SearchSpace};
use crate::vocab::LayerLevels;
use crate::{Error, Result};

/// Rows of the gathered `lm_head` product computed at once.
const GATHER_ROWS: usize = 64;

/// Equal-length slices of a minibatch run together.
struct Group {
    slices: Vec<PieceSlice>,
    len: usize,
}

/// The parent's hidden states for one (generation, stage) minibatch.
struct ParentCache {
    key: (u64, u64, usize),
    parent: Configuration,
    /// Per group, the hidden state at the input of every layer and after the last (L + 1).
    states: Vec<Vec<Tensor>>,
}

/// Where the scorer reads the round's variants from: in a run, the round's `supernet-layer`
/// stages; in a test, a map.
pub trait VariantSource {
    /// Layers the source has variants for.
    fn layers(&self) -> usize;
    /// The variant of `module` in `layer` with `level` units removed.
    fn variant(&self, layer: usize, module: ModuleKind, level: usize) -> Result<Variant>;
}

/// Where the scorer reads the teacher's top-k rows from: in a run, the `teacher-topk` stage's
/// shards (only those of the minibatch being scored); in a test, a whole `TeacherTopK`.
pub trait TeacherSource {
    /// Rows in all: one per pool token.
    fn rows(&self) -> usize;
    fn k(&self) -> usize;
    /// For each `(piece, first row of the piece, len)`, the first `len` rows of that piece.
    fn piece_rows(&self, asks: &[(usize, usize, usize)]) -> Result<Vec<TeacherTopK>>;
}

impl TeacherSource for TeacherTopK {
    fn rows(&self) -> usize {
        TeacherTopK::rows(self)
    }

    fn k(&self) -> usize {
        TeacherTopK::k(self)
    }

    fn piece_rows(&self, asks: &[(usize, usize, usize)]) -> Result<Vec<TeacherTopK>> {
        asks.iter().map(|&(_, at, len)| self.slice(at, len)).collect()
    }
}

/// What the scorer needs besides the model.
pub struct ScorerInputs<'a> {
    pub space: &'a SearchSpace,
    /// The round's variants, every layer.
    pub variants: &'a dyn VariantSource,
    pub pieces: &'a [Vec<u32>],
    pub teacher: &'a dyn TeacherSource,
    pub fitness: FitnessKind,
    /// Cache the parent's hidden states (on by default).
    pub incremental: bool,
    /// Largest parent cache; bigger minibatches run every candidate from layer 0.
    pub cache_limit_bytes: usize,
    /// Where the candidates run (and the KL is taken).
    pub compute: Compute,
}

pub struct ModelScorer<'a> {
    cfg: ModelConfig,
    emb: Embeddings,
    head: Head,
    dense: Vec<DenseLayer>,
    /// Dense blocks, only for `full-kl` (the teacher's logits are recomputed per minibatch).
    dense_blocks: Vec<Block>,
    inp: ScorerInputs<'a>,
    offsets: Vec<usize>,
    blocks: BTreeMap<(usize, usize, usize), Arc<Block>>,
    cache: Option<ParentCache>,
    teacher_cache: Option<((u64, u64, usize), Vec<Tensor>)>,
    /// The teacher's rows of the minibatch being scored, by piece (`top-k-kl` only).
    teacher_rows: Option<((u64, u64, usize), BTreeMap<usize, TeacherTopK>)>,
    /// Decoder layers forwarded so far (one layer of one group counts once).
    pub layers_forwarded: u64,
}

impl<'a> ModelScorer<'a> {
    pub fn new(cfg: &ModelConfig, src: &dyn TensorSource, inp: ScorerInputs<'a>) -> Result<Self> {
        let n = cfg.n_layers();
        if inp.variants.layers() != n || inp.space.len() != 2 * n {
            return Err(Error::msg(format!(
                "the search has variants of {} layers and {} modules for a model of {n} layers",
                inp.variants.layers(),
                inp.space.len()
            )));
        }
        let lens: Vec<usize> = inp.pieces.iter().map(Vec::len).collect();
        let total: usize = lens.iter().sum();
        if inp.fitness == FitnessKind::TopKKl && inp.teacher.rows() != total {
            return Err(Error::msg(format!(
                "the teacher has {} rows for a pool of {total} tokens",
                inp.teacher.rows()
            )));
        }
        let emb = Embeddings::load_on(cfg, src, &inp.compute)?;
        let head = Head::load_on(cfg, src, &emb, &inp.compute)?;
        let dense = (0..n)
            .map(|l| DenseLayer::load_on(cfg, l, src, &inp.compute))
            .collect::<Result<Vec<_>>>()?;
        let dense_blocks = if inp.fitness == FitnessKind::FullKl {
            dense
                .iter()
                .map(|d| d.block_with(cfg, None, None))
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        Ok(ModelScorer {
            cfg: cfg.clone(),
            emb,
            head,
            dense,
            dense_blocks,
            offsets: piece_offsets(&lens),
            inp,
            blocks: BTreeMap::new(),
            cache: None,
            teacher_cache: None,
            teacher_rows: None,
            layers_forwarded: 0,
        })
    }

    fn n_layers(&self) -> usize {
        self.dense.len()
    }

    /// Layer l's block with `levels = [attn, ffn]` removed units.
    fn block(&mut self, l: usize, levels: LayerLevels, keep: &Configuration) -> Result<Arc<Block>> {
        let key = (l, levels[0], levels[1]);
        if let Some(b) = self.blocks.get(&key) {
            return Ok(b.clone());
        }
        // Bounded: past the cap keep only the parent's blocks.
        if self.blocks.len() >= 2 * self.n_layers() + 32 {
            self.blocks
                .retain(|&(bl, a, f), _| levels_at(keep, bl) == [a, f]);
        }
        let attn = self.inp.variants.variant(l, ModuleKind::Attn, levels[0])?;
        let ffn = self.inp.variants.variant(l, ModuleKind::Ffn, levels[1])?;
        let b = Arc::new(assemble_block(&self.cfg, &self.dense[l], &attn, &ffn)?);
        self.blocks.insert(key, b.clone());
        Ok(b)
    }

    fn groups(mb: &[PieceSlice]) -> Vec<Group> {
        let lens: Vec<usize> = mb.iter().map(|s| s.len).collect();
        batches_by_length(&lens)
            .into_iter()
            .map(|idx| Group {
                len: mb[idx[0]].len,
                slices: idx.iter().map(|&i| mb[i]).collect(),
            })
            .collect()
    }

    fn embed(&self, g: &Group) -> Result<Tensor> {
        let ids: Vec<u32> = g
            .slices
            .iter()
            .flat_map(|s| self.inp.pieces[s.piece][..s.len].iter().copied())
            .collect();
        self.emb.forward(&Tensor::from_vec(
            ids,
            (g.slices.len(), g.len),
            &Device::Cpu,
        )?)
    }

    /// Runs layers `from..L` of `config` on `x`; with `keep_states`, returns every layer input
    /// and the final state (L + 1 − from tensors), else only the final state.
    fn run_layers(
        &mut self,
        config: &Configuration,
        parent: &Configuration,
        from: usize,
        mut x: Tensor,
        keep_states: bool,
    ) -> Result<Vec<Tensor>> {
        let mut states = Vec::new();
        for l in from..self.n_layers() {
            if keep_states {
                states.push(x.clone());
            }
            let b = self.block(l, levels_at(config, l), parent)?;
            x = b.forward(&x)?;
            self.layers_forwarded += 1;
        }
        states.push(x);
        Ok(states)
    }

    /// Reads the teacher's rows of minibatch `key`'s slices, unless they are the ones held.
    fn load_teacher_rows(&mut self, key: (u64, u64, usize), groups: &[Group]) -> Result<()> {
        if self.teacher_rows.as_ref().is_some_and(|(k, _)| *k == key) {
            return Ok(());
        }
        self.teacher_rows = None;
        let asks: Vec<(usize, usize, usize)> = groups
            .iter()
            .flat_map(|g| g.slices.iter())
            .map(|s| (s.piece, self.offsets[s.piece], s.len))
            .collect();
        let rows = self.inp.teacher.piece_rows(&asks)?;
        let by_piece = asks.iter().map(|a| a.0).zip(rows).collect();
        self.teacher_rows = Some((key, by_piece));
        Ok(())
    }

    /// The student's logits at the teacher's top-k ids of the first `n` rows of `piece`:
    /// `[n, k]`.
    fn student_at_ids(&self, hidden: &Tensor, piece: usize, n: usize) -> Result<(Tensor, Tensor)> {
        let t = self
            .teacher_rows
            .as_ref()
            .and_then(|(_, rows)| rows.get(&piece))
            .ok_or_else(|| Error::msg(format!("the teacher's rows of piece {piece} are not read")))?;
        let (ids, values) = t.tensors(0, n, self.head.lm_head_weight().device())?;
        let h = hidden.narrow(0, 0, n)?;
        if t.k() * 8 > self.cfg.vocab_size {
            let logits = self.head.logits(&h.unsqueeze(0)?)?.squeeze(0)?;
            return Ok((logits.gather(&ids, 1)?, values));
        }
        let normed = self.head.normed(&h.unsqueeze(0)?)?.squeeze(0)?; // [n, hidden]
        let w = self.head.lm_head_weight();
        let mut parts = Vec::new();
        let mut at = 0;
        while at < n {
            let c = GATHER_ROWS.min(n - at);
            let idc = ids.narrow(0, at, c)?.flatten_all()?;
            let wc = w.index_select(&idc, 0)?.reshape((c, t.k(), ()))?; // [c, k, hidden]
            let xc = normed.narrow(0, at, c)?.unsqueeze(D::Minus1)?; // [c, hidden, 1]
            parts.push(wc.matmul(&xc)?.squeeze(D::Minus1)?);
            at += c;
        }
        Ok((Tensor::cat(&parts, 0)?.to_dtype(DType::F32)?, values))
    }

    /// Mean KL of final hidden states `finals` (one per group) against the teacher.
    fn fitness(
        &self,
        groups: &[Group],
        finals: &[Tensor],
        teacher: Option<&[Tensor]>,
    ) -> Result<f64> {
        let mut mean = KlMean::default();
        for (gi, (g, x)) in groups.iter().zip(finals).enumerate() {
            if g.len < 2 {
                continue;
            }
            for (k, s) in g.slices.iter().enumerate() {
                let hk = x.get(k)?; // [len, hidden]
                match teacher {
                    None => {
                        let (zs, zt) = self.student_at_ids(&hk, s.piece, g.len - 1)?;
                        mean.add_positions(&top_k_kl_gathered(&zs, &zt)?)?;
                    }
                    Some(t) => {
                        let zs = self.head.logits(&hk.unsqueeze(0)?)?.squeeze(0)?;
                        let zt = self.head.logits(&t[gi].get(k)?.unsqueeze(0)?)?.squeeze(0)?;
                        mean.add_full(&zs, &zt)?;
                    }
                }
            }
        }
        let m = mean.mean()?;
        Ok(if m.is_nan() { f64::INFINITY } else { m })
    }

    /// The dense model's final hidden states per group (`full-kl` only), cached per minibatch.
    fn teacher_finals(&mut self, key: (u64, u64, usize), groups: &[Group]) -> Result<Vec<Tensor>> {
        if let Some((k, t)) = &self.teacher_cache
            && *k == key
        {
            return Ok(t.clone());
        }
        let mut out = Vec::new();
        for g in groups {
            let mut x = self.embed(g)?;
            for b in &self.dense_blocks {
                x = b.forward(&x)?;
            }
            out.push(x);
        }
        self.teacher_cache = Some((key, out.clone()));
        Ok(out)
    }
}

impl Scorer for ModelScorer<'_> {
    fn score(&mut self, req: &ScoreRequest<'_>) -> Result<Vec<f64>> {
        let groups = Self::groups(&req.minibatch.slices);
        let key = (req.round, req.generation, req.stage);
        let teacher = match self.inp.fitness {
            FitnessKind::FullKl => Some(self.teacher_finals(key, &groups)?),
            FitnessKind::TopKKl => {
                self.load_teacher_rows(key, &groups)?;
                None
            }
        };
        let tokens: usize = groups.iter().map(|g| g.len * g.slices.len()).sum();
        let cache_bytes = tokens * self.cfg.hidden_size * 4 * (self.n_layers() + 1);
        let use_cache = self.inp.incremental
            && cache_bytes <= self.inp.cache_limit_bytes
            && (req.candidates.len() > 1 || req.parent_included);
        if use_cache
            && !self
                .cache
                .as_ref()
                .is_some_and(|c| c.key == key && &c.parent == req.parent)
        {
            let mut states = Vec::with_capacity(groups.len());
            for g in &groups {
                let x = self.embed(g)?;
                states.push(self.run_layers(req.parent, req.parent, 0, x, true)?);
            }
            self.cache = Some(ParentCache {
                key,
                parent: req.parent.clone(),
                states,
            });
        }
        let mut out = Vec::with_capacity(req.candidates.len());
        for cand in req.candidates {
            let finals: Vec<Tensor> = if use_cache {
                let cache = self
                    .cache
                    .take()
                    .ok_or_else(|| Error::msg("parent cache lost"))?;
                let from = self
                    .inp
                    .space
                    .first_changed_layer(cand, &cache.parent)
                    .unwrap_or(self.n_layers());
                let r = (0..groups.len())
                    .map(|gi| {
                        let x = cache.states[gi][from].clone();
                        Ok(self
                            .run_layers(cand, req.parent, from, x, false)?
                            .pop()
                            .expect("run_layers returns the final state"))
                    })
                    .collect::<Result<Vec<_>>>();
                self.cache = Some(cache);
                r?
            } else {
                let mut f = Vec::with_capacity(groups.len());
                for g in &groups {
                    let x = self.embed(g)?;
                    let mut s = self.run_layers(cand, req.parent, 0, x, false)?;
                    f.push(s.pop().expect("run_layers returns the final state"));
                }
                f
            };
            out.push(self.fitness(&groups, &finals, teacher.as_deref())?);
        }
        Ok(out)
    }
}

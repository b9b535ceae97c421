//! The model behind the search's fitness (ALGORITHM.md §8, §14): a candidate configuration is a
//! choice of one variant per module; its fitness on a minibatch is the mean KL(teacher ‖
//! student) over the minibatch's positions (the last position of each piece excluded).
//!
//! Layer-major: one scorer call (one minibatch) advances the parent and every candidate
//! together, layer by layer, so each layer's dense weights and the variants the candidates use
//! there are needed for one step only; past the memory budget they are read for that step and
//! dropped. Incremental evaluation comes with it: a candidate equals the parent up to its first
//! changed layer, so it forks from the parent's hidden state there and the leading layers cost
//! nothing. A candidate's computation is the same as its own full forward's (same blocks, same
//! batches), so the fitness is bit-identical to one; `incremental = false` forks every
//! candidate at layer 0 (tests compare both).
//!
//! Memory is bounded by `cache_limit_bytes` (`search-cache-mib`): candidates run in waves
//! whose hidden states fit half of it; the dense layers stay loaded across calls only when all
//! of them fit a quarter, and assembled blocks are kept across calls within the last quarter
//! (the parent's first). Student logits are computed only at the teacher's top-k ids when k is
//! small against the vocabulary (a gathered `lm_head`), otherwise as full rows and gathered.

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
use crate::search::{FitnessKind, PieceSlice, ScoreRequest, Scorer, SearchSpace};
use crate::vocab::LayerLevels;
use crate::{Error, Result};

/// Rows of the gathered `lm_head` product computed at once.
const GATHER_ROWS: usize = 64;

/// Equal-length slices of a minibatch run together.
struct Group {
    slices: Vec<PieceSlice>,
    len: usize,
}

/// Which minibatch a scorer call is on: (round, generation, selection stage).
type MinibatchKey = (u64, u64, usize);

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
        asks.iter()
            .map(|&(_, at, len)| self.slice(at, len))
            .collect()
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
    src: &'a dyn TensorSource,
    emb: Embeddings,
    head: Head,
    /// Dense layers kept loaded across calls (all of them, or none past the budget).
    dense: Vec<Option<Arc<DenseLayer>>>,
    keep_dense: bool,
    inp: ScorerInputs<'a>,
    offsets: Vec<usize>,
    /// Assembled blocks by (layer, attn level, ffn level), about `block_bytes` in all.
    blocks: BTreeMap<(usize, usize, usize), (Arc<Block>, usize)>,
    block_bytes: usize,
    teacher_cache: Option<(MinibatchKey, Vec<Tensor>)>,
    /// The teacher's rows of the minibatch being scored, by piece (`top-k-kl` only).
    teacher_rows: Option<(MinibatchKey, BTreeMap<usize, TeacherTopK>)>,
    /// Decoder layers forwarded so far (one layer of one group counts once).
    pub layers_forwarded: u64,
}

impl<'a> ModelScorer<'a> {
    pub fn new(
        cfg: &ModelConfig,
        src: &'a dyn TensorSource,
        inp: ScorerInputs<'a>,
    ) -> Result<Self> {
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
        let dense_bytes: usize = (0..n).map(|l| cfg.layer_params(l) * 4).sum();
        Ok(ModelScorer {
            cfg: cfg.clone(),
            src,
            emb,
            head,
            dense: (0..n).map(|_| None).collect(),
            keep_dense: dense_bytes <= inp.cache_limit_bytes / 4,
            offsets: piece_offsets(&lens),
            inp,
            blocks: BTreeMap::new(),
            block_bytes: 0,
            teacher_cache: None,
            teacher_rows: None,
            layers_forwarded: 0,
        })
    }

    fn n_layers(&self) -> usize {
        self.dense.len()
    }

    /// Dense layer `l`: the kept copy, or read now (and kept when they all fit).
    fn dense(&mut self, l: usize) -> Result<Arc<DenseLayer>> {
        if let Some(d) = &self.dense[l] {
            return Ok(d.clone());
        }
        let d = Arc::new(DenseLayer::load_on(
            &self.cfg,
            l,
            self.src,
            &self.inp.compute,
        )?);
        if self.keep_dense {
            self.dense[l] = Some(d.clone());
        }
        Ok(d)
    }

    /// Layer l's block with `levels = [attn, ffn]` removed units.
    fn block(&mut self, dense: &DenseLayer, levels: LayerLevels) -> Result<Arc<Block>> {
        let key = (dense.layer, levels[0], levels[1]);
        if let Some((b, _)) = self.blocks.get(&key) {
            return Ok(b.clone());
        }
        let attn = self
            .inp
            .variants
            .variant(dense.layer, ModuleKind::Attn, levels[0])?;
        let ffn = self
            .inp
            .variants
            .variant(dense.layer, ModuleKind::Ffn, levels[1])?;
        let b = Arc::new(assemble_block(&self.cfg, dense, &attn, &ffn)?);
        let d = b.dims();
        let (h, dh) = (self.cfg.hidden_size, self.cfg.head_dim);
        let bytes = 4 * (h * dh * (2 * d.n_q + 2 * d.n_kv) + 3 * h * d.d_ff);
        self.block_bytes += bytes;
        self.blocks.insert(key, (b.clone(), bytes));
        Ok(b)
    }

    /// After layer `l`'s step: past the block budget, drop that layer's blocks other than the
    /// parent's, then the parent's too.
    fn trim_blocks(&mut self, l: usize, parent: LayerLevels) {
        let budget = self.inp.cache_limit_bytes / 4;
        for keep_parent in [true, false] {
            if self.block_bytes <= budget {
                return;
            }
            let drop: Vec<_> = self
                .blocks
                .keys()
                .filter(|&&(bl, a, f)| bl == l && !(keep_parent && [a, f] == parent))
                .copied()
                .collect();
            for k in drop {
                if let Some((_, b)) = self.blocks.remove(&k) {
                    self.block_bytes -= b;
                }
            }
        }
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

    /// The final hidden states (one per group) of candidates `wave` of `req`, run layer by
    /// layer beside the parent: candidate c takes the parent's state at layer `forks[c]` (its
    /// first changed layer; 0 without incremental evaluation, L when it is the parent), and the
    /// parent runs as far as the last fork.
    fn run_wave(
        &mut self,
        req: &ScoreRequest<'_>,
        groups: &[Group],
        wave: &[usize],
        forks: &[usize],
    ) -> Result<Vec<Vec<Tensor>>> {
        let n = self.n_layers();
        let parent_until = wave.iter().map(|&c| forks[c]).max().unwrap_or(0);
        let mut x_parent = groups
            .iter()
            .map(|g| self.embed(g))
            .collect::<Result<Vec<_>>>()?;
        let mut states: Vec<Option<Vec<Tensor>>> = vec![None; wave.len()];
        for l in 0..n {
            for (i, &c) in wave.iter().enumerate() {
                if forks[c] == l {
                    states[i] = Some(x_parent.clone());
                }
            }
            let dense = self.dense(l)?;
            let parent_levels = levels_at(req.parent, l);
            if l < parent_until {
                let b = self.block(&dense, parent_levels)?;
                for xg in x_parent.iter_mut() {
                    *xg = b.forward(xg)?;
                    self.layers_forwarded += 1;
                }
            }
            // The candidates by the block they need here, one block at a time, so a step past
            // the budget holds one block beyond it.
            let mut by_block: BTreeMap<LayerLevels, Vec<usize>> = BTreeMap::new();
            for (i, &c) in wave.iter().enumerate() {
                if states[i].is_some() {
                    by_block
                        .entry(levels_at(&req.candidates[c], l))
                        .or_default()
                        .push(i);
                }
            }
            for (levels, members) in by_block {
                let b = self.block(&dense, levels)?;
                for i in members {
                    for xg in states[i].iter_mut().flatten() {
                        *xg = b.forward(xg)?;
                        self.layers_forwarded += 1;
                    }
                }
                self.trim_blocks(l, parent_levels);
            }
            self.trim_blocks(l, parent_levels);
        }
        Ok(wave
            .iter()
            .zip(states)
            .map(|(&c, s)| match s {
                Some(s) => s,
                None => {
                    debug_assert_eq!(forks[c], n);
                    x_parent.clone()
                }
            })
            .collect())
    }

    /// Reads the teacher's rows of minibatch `key`'s slices, unless they are the ones held.
    fn load_teacher_rows(&mut self, key: MinibatchKey, groups: &[Group]) -> Result<()> {
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
            .ok_or_else(|| {
                Error::msg(format!("the teacher's rows of piece {piece} are not read"))
            })?;
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
            let wc = w
                .index_select(&idc, 0)?
                .to_dtype(normed.dtype())?
                .reshape((c, t.k(), ()))?; // [c, k, hidden]
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

    /// The dense model's final hidden states per group (`full-kl` only), cached per minibatch,
    /// computed layer by layer (each dense block built for its step).
    fn teacher_finals(&mut self, key: MinibatchKey, groups: &[Group]) -> Result<Vec<Tensor>> {
        if let Some((k, t)) = &self.teacher_cache
            && *k == key
        {
            return Ok(t.clone());
        }
        let mut out = groups
            .iter()
            .map(|g| self.embed(g))
            .collect::<Result<Vec<_>>>()?;
        for l in 0..self.n_layers() {
            let b = self.dense(l)?.block_with(&self.cfg, None, None)?;
            for x in out.iter_mut() {
                *x = b.forward(x)?;
            }
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
        let n = self.n_layers();
        let forks: Vec<usize> = req
            .candidates
            .iter()
            .map(|c| {
                if self.inp.incremental {
                    self.inp
                        .space
                        .first_changed_layer(c, req.parent)
                        .unwrap_or(n)
                } else {
                    0
                }
            })
            .collect();
        // Waves whose hidden states, with the parent's, fit half the budget.
        let tokens: usize = groups.iter().map(|g| g.len * g.slices.len()).sum();
        let state_bytes = (tokens * self.cfg.hidden_size * 4).max(1);
        let wave = (self.inp.cache_limit_bytes / 2 / state_bytes)
            .saturating_sub(1)
            .max(1);
        let all: Vec<usize> = (0..req.candidates.len()).collect();
        let mut out = vec![0.0; all.len()];
        for w in all.chunks(wave) {
            let finals = self.run_wave(req, &groups, w, &forks)?;
            for (&c, f) in w.iter().zip(&finals) {
                out[c] = self.fitness(&groups, f, teacher.as_deref())?;
            }
        }
        Ok(out)
    }
}

//! The Llama-family model with per-layer widths, as parts a pruning stage can drive one at a
//! time — `Embeddings` (token ids → hidden states), `Block` (one decoder layer, `llama_block.rs`),
//! `Head` (final norm + `lm_head`, only when logits are wanted) — and `Llama`, which holds them
//! all for evaluation and generation (full-sequence forward and incremental decoding with a KV
//! cache).

use candle_core::{DType, IndexOp, Tensor};

use super::attention::LayerKv;
use super::compute::Compute;
use super::llama_block::{Block, validate_dims};
use super::sgemm::PackedWeight;
use super::source::{read_checked, read_checked_stored};
use super::{ModelConfig, TensorSource};
use crate::{Error, Result};

/// The token embedding table `[vocab, hidden]`.
#[derive(Debug, Clone)]
pub struct Embeddings {
    /// `[vocab, hidden]`: on the host in the checkpoint's float dtype (a bf16 table stays bf16,
    /// its looked-up rows are converted), or on a device in the compute dtype.
    weight: Tensor,
    /// The dtype of the hidden states `forward` returns.
    out: DType,
}

impl Embeddings {
    /// The table on the host; hidden states in f32.
    pub fn load(cfg: &ModelConfig, src: &dyn TensorSource) -> Result<Self> {
        let weight = read_checked_stored(
            src,
            "model.embed_tokens.weight",
            &[cfg.vocab_size, cfg.hidden_size],
        )?;
        Ok(Embeddings {
            weight,
            out: DType::F32,
        })
    }

    pub fn new(weight: Tensor) -> Result<Self> {
        weight.dims2()?;
        Ok(Embeddings {
            out: weight.dtype(),
            weight: weight.contiguous()?,
        })
    }

    /// The table as it is held (see the field).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The table, on `compute`'s device in its dtype (on the host, as `load`, for the packed
    /// path).
    pub fn load_on(cfg: &ModelConfig, src: &dyn TensorSource, compute: &Compute) -> Result<Self> {
        let host = Self::load(cfg, src)?;
        if compute.is_packed() {
            return Ok(host);
        }
        Ok(Embeddings {
            weight: compute.place(&host.weight)?.contiguous()?,
            out: compute.dtype(),
        })
    }

    /// Token ids `[batch, seq]` (u32) → hidden states `[batch, seq, hidden]`. An id outside the
    /// vocabulary is an error.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let (vocab, h) = self.weight.dims2()?;
        let flat = ids
            .to_device(&candle_core::Device::Cpu)?
            .to_dtype(DType::U32)?
            .flatten_all()?;
        if let Some(&bad) = flat
            .to_vec1::<u32>()?
            .iter()
            .find(|&&i| i as usize >= vocab)
        {
            return Err(Error::msg(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let flat = flat.to_device(self.weight.device())?;
        Ok(self
            .weight
            .index_select(&flat, 0)?
            .to_dtype(self.out)?
            .reshape((b, s, h))?)
    }

    /// Convenience: embeds rows of token ids of equal length.
    pub fn forward_ids(&self, rows: &[Vec<u32>]) -> Result<Tensor> {
        let s = rows.first().map_or(0, |r| r.len());
        if rows.iter().any(|r| r.len() != s) {
            return Err(Error::msg(
                "token id rows of a batch must have equal length",
            ));
        }
        let flat: Vec<u32> = rows.iter().flatten().copied().collect();
        self.forward(&Tensor::from_vec(
            flat,
            (rows.len(), s),
            &candle_core::Device::Cpu,
        )?)
    }
}

/// Final RMSNorm and `lm_head` (tied to the embeddings or not).
#[derive(Debug, Clone)]
pub struct Head {
    norm: Tensor,
    /// HF `lm_head.weight` `[vocab, hidden]`: on a device in the compute dtype; on the host in
    /// the checkpoint's float dtype (rows are converted as `logits_rows` gathers them).
    lm_head: Tensor,
    /// The same, packed for `sgemm`: the operand of full logits on the packed path; `None` on
    /// the device path, where logits are one matmul on the device.
    lm_head_packed: Option<PackedWeight>,
    eps: f32,
}

impl Head {
    /// Reads `model.norm.weight` and `lm_head.weight`, or reuses `embeddings` when tied.
    pub fn load(
        cfg: &ModelConfig,
        src: &dyn TensorSource,
        embeddings: &Embeddings,
    ) -> Result<Self> {
        Self::load_on(cfg, src, embeddings, &Compute::Packed)
    }

    /// Like `load`, for `compute`: on a device the head is placed there and never packed for the
    /// CPU kernels. Tied to `embeddings` loaded for the same `compute`, it shares their table.
    pub fn load_on(
        cfg: &ModelConfig,
        src: &dyn TensorSource,
        embeddings: &Embeddings,
        compute: &Compute,
    ) -> Result<Self> {
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let norm = read_checked(src, "model.norm.weight", &[h])?;
        // Some tied checkpoints also store `lm_head.weight`; it is the same matrix, so ignore it.
        let lm_head = if cfg.tie_word_embeddings {
            embeddings.weight.clone()
        } else {
            read_checked_stored(src, "lm_head.weight", &[v, h])?
        };
        if !compute.is_packed() {
            return Ok(Head {
                norm: compute.place(&norm)?.contiguous()?,
                lm_head: compute.place(&lm_head)?.contiguous()?,
                lm_head_packed: None,
                eps: cfg.rms_norm_eps as f32,
            });
        }
        let lm_head_packed = Some(PackedWeight::from_out_in(
            &[&lm_head.to_dtype(DType::F32)?],
        )?);
        Ok(Head {
            norm,
            lm_head,
            lm_head_packed,
            eps: cfg.rms_norm_eps as f32,
        })
    }

    pub fn new(cfg: &ModelConfig, norm: Tensor, lm_head: Tensor) -> Result<Self> {
        let lm_head_packed = Some(PackedWeight::from_out_in(
            &[&lm_head.to_dtype(DType::F32)?],
        )?);
        Ok(Head {
            norm: norm.contiguous()?,
            lm_head: lm_head.contiguous()?,
            lm_head_packed,
            eps: cfg.rms_norm_eps as f32,
        })
    }

    pub fn norm_weight(&self) -> &Tensor {
        &self.norm
    }

    pub fn lm_head_weight(&self) -> &Tensor {
        &self.lm_head
    }

    /// The final RMSNorm of hidden states `[batch, seq, hidden]` (moved to the head's device and
    /// dtype first).
    pub fn normed(&self, x: &Tensor) -> Result<Tensor> {
        let x = x
            .to_device(self.norm.device())?
            .to_dtype(self.norm.dtype())?;
        Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            &self.norm,
            self.eps,
        )?)
    }

    /// Logits `[batch, seq, vocab]` in f32, on the head's device.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let n = self.normed(x)?.reshape((b * s, h))?;
        let logits = match &self.lm_head_packed {
            Some(p) => p.apply(&n)?,
            None => n.matmul(&self.lm_head.t()?)?.to_dtype(DType::F32)?,
        };
        Ok(logits.reshape((b, s, ()))?)
    }

    /// Logits of only the vocabulary rows `rows` (u32 ids), `[batch, seq, rows.len()]`, f32.
    pub fn logits_rows(&self, x: &Tensor, rows: &Tensor) -> Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let rows = rows
            .to_dtype(DType::U32)?
            .flatten_all()?
            .to_device(self.lm_head.device())?;
        let n = self.normed(x)?.reshape((b * s, h))?;
        let w = self.lm_head.index_select(&rows, 0)?.to_dtype(n.dtype())?;
        Ok(n.matmul(&w.t()?)?
            .to_dtype(DType::F32)?
            .reshape((b, s, ()))?)
    }

    /// Logits of the last position only, `[batch, vocab]` (generation).
    pub fn logits_last(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.dim(1)?;
        let last = x.i((.., s - 1..s, ..))?.contiguous()?;
        Ok(self.logits(&last)?.squeeze(1)?)
    }
}

/// Per-layer K/V caches for incremental decoding.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    pos: usize,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        KvCache {
            layers: vec![LayerKv::default(); n_layers],
            pos: 0,
        }
    }

    /// Positions already processed.
    pub fn len(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }
}

/// A whole model in memory.
#[derive(Debug, Clone)]
pub struct Llama {
    cfg: ModelConfig,
    embeddings: Embeddings,
    blocks: Vec<Block>,
    head: Head,
}

impl Llama {
    /// Reads every layer of `cfg` from `src`, for the packed CPU path.
    pub fn load(cfg: &ModelConfig, src: &dyn TensorSource) -> Result<Self> {
        Self::load_on(cfg, src, &Compute::Packed)
    }

    /// Reads every layer of `cfg` from `src`, for `compute`.
    pub fn load_on(cfg: &ModelConfig, src: &dyn TensorSource, compute: &Compute) -> Result<Self> {
        for (l, d) in cfg.layers.iter().enumerate() {
            validate_dims(l, d)?;
        }
        let embeddings = Embeddings::load_on(cfg, src, compute)?;
        let blocks = (0..cfg.n_layers())
            .map(|l| Block::load_on(cfg, l, src, compute))
            .collect::<Result<Vec<_>>>()?;
        let head = Head::load_on(cfg, src, &embeddings, compute)?;
        Ok(Llama {
            cfg: cfg.clone(),
            embeddings,
            blocks,
            head,
        })
    }

    /// Assembles a model from parts; the config's layer dims are taken from the blocks.
    pub fn from_parts(
        cfg: &ModelConfig,
        embeddings: Embeddings,
        blocks: Vec<Block>,
        head: Head,
    ) -> Self {
        let mut cfg = cfg.clone();
        cfg.layers = blocks.iter().map(|b| b.dims().clone()).collect();
        Llama {
            cfg,
            embeddings,
            blocks,
            head,
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn embeddings(&self) -> &Embeddings {
        &self.embeddings
    }

    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Hidden states after the last block (before the final norm), `[batch, seq, hidden]`.
    pub fn hidden(&self, ids: &Tensor) -> Result<Tensor> {
        let mut x = self.embeddings.forward(ids)?;
        for b in &self.blocks {
            x = b.forward(&x)?;
        }
        Ok(x)
    }

    /// Logits of every position, `[batch, seq, vocab]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.head.logits(&self.hidden(ids)?)
    }

    /// Feeds new tokens `[batch, new]` after those in `cache`; returns the logits of the last new
    /// position `[batch, vocab]`. Start with `KvCache::new(n_layers)` and the whole prompt.
    pub fn forward_step(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        if cache.layers.len() != self.blocks.len() {
            *cache = KvCache::new(self.blocks.len());
        }
        let s = ids.dim(1)?;
        let mut x = self.embeddings.forward(ids)?;
        for (b, kv) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            x = b.forward_cached(&x, kv)?;
        }
        cache.pos += s;
        self.head.logits_last(&x)
    }
}

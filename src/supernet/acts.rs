//! The calibration activations `X_l` that flow from one layer to the next: every pool piece's
//! hidden states concatenated in pool order ([tokens, hidden] f32) plus the piece lengths.
//! Pieces have different lengths (document tails), so a layer runs equal-length pieces together
//! as a batch, each piece with causal attention from position 0, and scatters the results back
//! to pool order. How they are stored between stages is `stages::acts`.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use crate::Result;

/// Most tokens one forward batch holds (the memory estimates count on it).
pub const BATCH_TOKENS: usize = 4096;

/// Batches of indices into `lengths`: equal lengths together, at most `BATCH_TOKENS` tokens each,
/// in ascending (length, index) order — a fixed order, so statistics and fitness sums are
/// reproducible. Layer stages batch pool pieces with it, the search its minibatch slices.
pub fn batches_by_length(lengths: &[usize]) -> Vec<Vec<usize>> {
    let mut by_len: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &l) in lengths.iter().enumerate() {
        by_len.entry(l).or_default().push(i);
    }
    let mut out = Vec::new();
    for (len, items) in by_len {
        let per = (BATCH_TOKENS / len.max(1)).max(1);
        out.extend(items.chunks(per).map(<[usize]>::to_vec));
    }
    out
}

/// `X_l` in memory.
#[derive(Debug, Clone)]
pub struct Acts {
    /// [tokens, hidden] f32.
    pub x: Tensor,
    pub lengths: Vec<usize>,
}

impl Acts {
    /// Batches of piece indices (`batches_by_length` of the piece lengths).
    pub fn batches(&self) -> Vec<Vec<usize>> {
        batches_by_length(&self.lengths)
    }

    fn offsets(&self) -> Vec<usize> {
        let mut o = Vec::with_capacity(self.lengths.len());
        let mut at = 0;
        for &l in &self.lengths {
            o.push(at);
            at += l;
        }
        o
    }

    /// Runs `f` on every batch ([b, s, hidden]) and reassembles its output ([b, s, hidden]) in
    /// pool order. `f` also sees the batch's piece indices.
    pub fn map_batches<F>(&self, mut f: F) -> Result<Acts>
    where
        F: FnMut(&Tensor) -> Result<Tensor>,
    {
        let offsets = self.offsets();
        let hidden = self.x.dim(1)?;
        let mut parts: Vec<Option<Tensor>> = vec![None; self.lengths.len()];
        for batch in self.batches() {
            let s = self.lengths[batch[0]];
            let rows: Vec<u32> = batch
                .iter()
                .flat_map(|&p| (offsets[p]..offsets[p] + s).map(|r| r as u32))
                .collect();
            let idx = Tensor::from_vec(rows, batch.len() * s, &Device::Cpu)?;
            // [b·s, hidden] → [b, s, hidden]
            let xb = self
                .x
                .index_select(&idx, 0)?
                .reshape((batch.len(), s, hidden))?;
            // Outputs of a device block come back to the host in f32.
            let yb = f(&xb)?.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
            for (k, &p) in batch.iter().enumerate() {
                parts[p] = Some(yb.get(k)?);
            }
        }
        let parts: Vec<Tensor> = parts.into_iter().flatten().collect();
        let x = if parts.is_empty() {
            self.x.clone()
        } else {
            Tensor::cat(&parts, 0)?
        };
        Ok(Acts {
            x,
            lengths: self.lengths.clone(),
        })
    }

    /// Runs `f` on every batch for its side effects (statistics), in the fixed batch order.
    pub fn for_batches<F>(&self, mut f: F) -> Result<()>
    where
        F: FnMut(&Tensor) -> Result<()>,
    {
        self.map_batches(|xb| {
            f(xb)?;
            Ok(xb.clone())
        })
        .map(|_| ())
    }
}

//! The calibration activations `X_l` that flow from one layer to the next. Pool pieces have
//! different lengths (document tails), so a layer runs equal-length pieces together as a
//! `Batch`, each piece with causal attention from position 0. The batches come in one fixed
//! order (`batches_by_length`), which is also the order X is stored in: statistics sum in it,
//! and a layer maps batch k of X_l to batch k of X_{l+1} without ever going back to pool order.
//!
//! X is read through `ActSource`, in chunks of whole batches, one chunk at a time: a layer never
//! holds more of X than a chunk and its output. `Acts` is X in memory (tests, small tools); how
//! the stages store and stream it is `stages::acts`.

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

/// `batches_by_length(lengths)` grouped into chunks of consecutive batches, each chunk at most
/// `chunk_bytes` of f32 activations of width `hidden` (a batch larger than that is a chunk of
/// its own). How X_0 is cut; every later X_l keeps its producer's chunks.
pub fn chunk_plan(lengths: &[usize], hidden: usize, chunk_bytes: u64) -> Vec<Vec<Vec<usize>>> {
    let mut chunks: Vec<Vec<Vec<usize>>> = Vec::new();
    let mut bytes = 0u64;
    for batch in batches_by_length(lengths) {
        let b = batch.iter().map(|&p| lengths[p] as u64).sum::<u64>() * hidden as u64 * 4;
        match chunks.last_mut() {
            Some(c) if bytes + b <= chunk_bytes => {
                c.push(batch);
                bytes += b;
            }
            _ => {
                chunks.push(vec![batch]);
                bytes = b;
            }
        }
    }
    chunks
}

/// One forward batch of X: pieces of one length (indices into the pool), `x` [b, s, hidden].
#[derive(Debug, Clone)]
pub struct Batch {
    pub pieces: Vec<usize>,
    pub x: Tensor,
}

/// X_l as a layer reads it: the pool's piece lengths, and the batches in `batches_by_length`
/// order, in chunks read one at a time.
pub trait ActSource {
    /// Token count of every pool piece, in pool order.
    fn lengths(&self) -> &[usize];
    fn chunk_count(&self) -> usize;
    /// The batches of chunk `i`, in order.
    fn chunk(&self, i: usize) -> Result<Vec<Batch>>;
}

/// Runs `f` on every batch ([b, s, hidden]) of `x` in the fixed order, for its side effects
/// (statistics).
pub fn for_batches(x: &dyn ActSource, mut f: impl FnMut(&Tensor) -> Result<()>) -> Result<()> {
    for i in 0..x.chunk_count() {
        for b in x.chunk(i)? {
            f(&b.x)?;
        }
    }
    Ok(())
}

/// `f` applied to every batch of a chunk: the next layer's chunk, on the host in f32 (a device
/// block's outputs are brought back).
pub fn map_chunk(
    batches: Vec<Batch>,
    mut f: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Vec<Batch>> {
    batches
        .into_iter()
        .map(|b| {
            let y = f(&b.x)?.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
            Ok(Batch {
                pieces: b.pieces,
                x: y,
            })
        })
        .collect()
}

/// `X_l` in memory, pieces in pool order; as an `ActSource`, every batch is a chunk.
#[derive(Debug, Clone)]
pub struct Acts {
    /// [tokens, hidden] f32.
    pub x: Tensor,
    pub lengths: Vec<usize>,
}

impl Acts {
    fn offsets(&self) -> Vec<usize> {
        let mut o = Vec::with_capacity(self.lengths.len());
        let mut at = 0;
        for &l in &self.lengths {
            o.push(at);
            at += l;
        }
        o
    }

    /// Batch `pieces` (of one length) as [b, s, hidden].
    fn batch(&self, pieces: &[usize]) -> Result<Batch> {
        let offsets = self.offsets();
        let s = self.lengths[pieces[0]];
        let rows: Vec<u32> = pieces
            .iter()
            .flat_map(|&p| (offsets[p]..offsets[p] + s).map(|r| r as u32))
            .collect();
        let idx = Tensor::from_vec(rows, pieces.len() * s, &Device::Cpu)?;
        let x = self
            .x
            .index_select(&idx, 0)?
            .reshape((pieces.len(), s, self.x.dim(1)?))?;
        Ok(Batch {
            pieces: pieces.to_vec(),
            x,
        })
    }

    /// Gathers batches (any order, any grouping) back into pool order.
    pub fn from_batches(lengths: Vec<usize>, batches: &[Batch]) -> Result<Acts> {
        let mut parts: Vec<Option<Tensor>> = vec![None; lengths.len()];
        for b in batches {
            for (k, &p) in b.pieces.iter().enumerate() {
                parts[p] = Some(b.x.get(k)?);
            }
        }
        let parts: Vec<Tensor> = parts
            .into_iter()
            .collect::<Option<_>>()
            .ok_or_else(|| crate::Error::msg("the batches do not cover every piece of the pool"))?;
        Ok(Acts {
            x: Tensor::cat(&parts, 0)?,
            lengths,
        })
    }

    /// Runs `f` on every batch and reassembles its output in pool order.
    pub fn map_batches(&self, f: impl FnMut(&Tensor) -> Result<Tensor>) -> Result<Acts> {
        let batches = (0..self.chunk_count())
            .map(|i| self.chunk(i))
            .collect::<Result<Vec<_>>>()?
            .concat();
        Acts::from_batches(self.lengths.clone(), &map_chunk(batches, f)?)
    }
}

impl ActSource for Acts {
    fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    fn chunk_count(&self) -> usize {
        batches_by_length(&self.lengths).len()
    }

    fn chunk(&self, i: usize) -> Result<Vec<Batch>> {
        let batches = batches_by_length(&self.lengths);
        let pieces = batches
            .get(i)
            .ok_or_else(|| crate::Error::msg(format!("no batch {i} in X")))?;
        Ok(vec![self.batch(pieces)?])
    }
}

//! How the activations X_ℓ travel between layer stages: a transient chunked output `x`
//! (`engine::chunks`) whose chunks hold whole batches in `supernet::acts` order — tensors
//! `NNNNNN.x` ([b, s, hidden] f32) and `NNNNNN.pieces` ([b] u32, pool indices) per batch — and a
//! record `x-lengths` (the pool's piece lengths, kept: see `finish`). A producer writes a chunk as soon
//! as it is computed and, resumed after a crash, continues after the last chunk it wrote; a
//! consumer reads one chunk at a time. Nothing holds X whole.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use crate::engine::{ArtifactSet, ChunkWriter, Outputs, StageContext};
use crate::model::StorageDtype;
use crate::model::storage::load_f32;
use crate::supernet::acts::{ActSource, Batch, map_chunk};
use crate::{Error, Result};

/// Default most bytes of activations in one chunk (`[prune] chunk-mib`).
pub const DEFAULT_CHUNK_MIB: u64 = 256;

/// X_ℓ as output `name` of an upstream stage.
pub struct Reader<'a> {
    set: &'a ArtifactSet,
    name: String,
    lengths: Vec<usize>,
    chunks: usize,
}

impl<'a> Reader<'a> {
    pub fn open(set: &'a ArtifactSet, name: &str) -> Result<Self> {
        let lengths: Vec<u32> = set.record(&lengths_name(name))?;
        Ok(Self {
            set,
            name: name.to_string(),
            lengths: lengths.into_iter().map(|l| l as usize).collect(),
            chunks: set.chunk_count(name)?,
        })
    }

    fn bad(&self, i: usize, message: String) -> Error {
        Error::EngineArtifact {
            stage: self.set.stage().to_string(),
            output: self.name.clone(),
            message: format!("chunk {i}: {message}"),
        }
    }
}

impl ActSource for Reader<'_> {
    fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    fn chunk_count(&self) -> usize {
        self.chunks
    }

    fn chunk(&self, i: usize) -> Result<Vec<Batch>> {
        let mut t = self.set.chunk(&self.name, i)?;
        let mut out = Vec::new();
        for j in 0.. {
            let (Some(x), Some(p)) = (
                t.remove(&format!("{j:06}.x")),
                t.remove(&format!("{j:06}.pieces")),
            ) else {
                break;
            };
            let pieces: Vec<usize> = p
                .to_vec1::<u32>()?
                .into_iter()
                .map(|p| p as usize)
                .collect();
            let len = match pieces.first().map(|&p| self.lengths.get(p)) {
                Some(Some(&l)) => l,
                _ => return Err(self.bad(i, format!("batch {j} names no piece of the pool"))),
            };
            let fits = pieces.iter().all(|&p| self.lengths.get(p) == Some(&len));
            if !fits || x.rank() != 3 || x.dims()[..2] != [pieces.len(), len] {
                return Err(self.bad(
                    i,
                    format!("batch {j} has shape {:?} for pieces {pieces:?}", x.dims()),
                ));
            }
            // Stored in 16 bits or not, X is used in f32.
            out.push(Batch {
                pieces,
                x: load_f32(x)?,
            });
        }
        if out.is_empty() || !t.is_empty() {
            return Err(self.bad(i, "is not a chunk of activation batches".into()));
        }
        Ok(out)
    }
}

fn lengths_name(name: &str) -> String {
    format!("{name}-lengths")
}

/// Writes `batches` as the next chunk of `w`, X in `dtype`.
pub fn push(w: &mut ChunkWriter<'_>, batches: &[Batch], dtype: StorageDtype) -> Result<()> {
    let mut map = BTreeMap::new();
    for (j, b) in batches.iter().enumerate() {
        let pieces: Vec<u32> = b.pieces.iter().map(|&p| p as u32).collect();
        let n = pieces.len();
        map.insert(format!("{j:06}.x"), dtype.store(&b.x.contiguous()?)?);
        map.insert(
            format!("{j:06}.pieces"),
            Tensor::from_vec(pieces, n, &Device::Cpu)?,
        );
    }
    w.push(map)
}

/// Records the written chunks of `w` as transient output `name` and the piece `lengths` beside
/// them. The lengths are kept, not transient: every X of a pool has the same lengths, so their
/// records are one blob, which collecting one layer's X must not delete under the next's.
pub fn finish(w: ChunkWriter<'_>, lengths: &[usize], out: &mut Outputs, name: &str) -> Result<()> {
    let lengths: Vec<u32> = lengths.iter().map(|&l| l as u32).collect();
    out.record(lengths_name(name), &lengths)?;
    out.chunks(name, w.finish()).transient();
    Ok(())
}

/// X_{ℓ+1} = `f` on every batch of `x`, written chunk by chunk (chunk k from chunk k of `x`) in
/// `dtype` as transient output `name`; a resumed attempt continues after the chunks already
/// written.
pub fn map_to_output(
    ctx: &StageContext<'_>,
    x: &dyn ActSource,
    out: &mut Outputs,
    name: &str,
    dtype: StorageDtype,
    mut f: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<()> {
    let mut w = ctx.chunk_writer(name)?;
    let n = x.chunk_count();
    for i in w.written()..n {
        push(&mut w, &map_chunk(x.chunk(i)?, &mut f)?, dtype)?;
        ctx.report(i as u64 + 1, n as u64);
    }
    finish(w, x.lengths(), out, name)
}

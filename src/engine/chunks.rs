//! Chunked outputs: a stage that produces more than it should hold (the activations of a whole
//! calibration pool, the teacher's logits) writes its output as a sequence of chunks (tensor
//! sets, or bytes the stage encodes itself) while it runs. Each
//! chunk goes to the store as a content-addressed blob the moment it is complete, and its
//! digest is appended to a small list under the stage's progress folder
//! (`progress/<key>.chunks/<output>.bin`), rewritten atomically after every chunk. A later
//! attempt of the same key (after a crash or a preemption) opens the writer again and learns
//! how many chunks are done: the longest prefix of the list whose blobs are still there (a `gc`
//! between the attempts may have taken some). At the end the stage returns the list as
//! `Value::Chunks`, which the commit records in the manifest.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::Tensor;

use crate::engine::artifact::Value;
use crate::engine::fault;
use crate::engine::fsio::{self, WriteKind};
use crate::engine::store::Store;
use crate::engine::store::manifest::ChunkRef;
use crate::{Error, Result};

/// Where the chunk lists of the attempt whose progress record is `progress_path` live.
pub(crate) fn chunks_dir(progress_path: &std::path::Path) -> PathBuf {
    progress_path.with_extension("chunks")
}

/// Writes one chunked output of a running stage (`StageContext::chunk_writer`).
pub struct ChunkWriter<'a> {
    store: &'a Store,
    tmp_dir: PathBuf,
    list_path: PathBuf,
    refs: Vec<ChunkRef>,
}

impl<'a> ChunkWriter<'a> {
    pub(crate) fn open(
        store: &'a Store,
        tmp_dir: PathBuf,
        progress_path: &std::path::Path,
        output: &str,
    ) -> Result<Self> {
        if output.is_empty()
            || !output
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Error::msg(format!(
                "chunked output name `{output}` must be letters, digits, `-` or `_`"
            )));
        }
        let list_path = chunks_dir(progress_path).join(format!("{output}.bin"));
        let saved: Vec<ChunkRef> = match std::fs::read(&list_path) {
            Ok(b) => bincode::deserialize(&b).unwrap_or_else(|e| {
                tracing::warn!(path = %list_path.display(), error = %e,
                    "ignoring an unreadable chunk list; the chunks are written again");
                Vec::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(&list_path, e)),
        };
        let refs: Vec<ChunkRef> = saved
            .into_iter()
            .take_while(|c| store.blob_has_size(&c.digest, c.size_bytes))
            .collect();
        if !refs.is_empty() {
            tracing::info!(
                output,
                chunks = refs.len(),
                "resuming after the chunks already written"
            );
        }
        Ok(Self {
            store,
            tmp_dir,
            list_path,
            refs,
        })
    }

    /// Chunks already written (by this attempt or an earlier one of the same key): the stage
    /// continues with chunk `written()`.
    pub fn written(&self) -> usize {
        self.refs.len()
    }

    /// Writes the next chunk, a set of named tensors (safetensors), durably.
    pub fn push(&mut self, tensors: BTreeMap<String, Tensor>) -> Result<()> {
        self.push_bytes(&Value::Tensors(tensors).encode()?)
    }

    /// Writes the next chunk, raw bytes (a consumer reads them with `ArtifactSet::chunk_bytes`),
    /// durably.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let (digest, size_bytes) = self.store.put_blob(bytes)?;
        self.refs.push(ChunkRef { digest, size_bytes });
        let list = bincode::serialize(&self.refs)
            .map_err(|e| Error::msg(format!("encoding a chunk list: {e}")))?;
        fsio::write_atomic(&self.tmp_dir, &self.list_path, &list, WriteKind::Plain)?;
        fault::hit("chunk-after-write");
        Ok(())
    }

    /// The chunks in order, for `Outputs::chunks`.
    pub fn finish(self) -> Vec<ChunkRef> {
        self.refs
    }
}

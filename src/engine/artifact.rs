//! What stages produce and consume. A stage returns `Outputs`: named artifacts, each a set of
//! tensors (stored as safetensors), a record (any serde type, stored as bincode), raw bytes
//! (a JSON report, a config file) or a stream of tensor-set chunks (written to the store while
//! the stage runs, `engine::chunks`), with a retention class and optionally a path to publish
//! it under in the run's output folder. Consumers read them back through `ArtifactSet`, either
//! straight from memory (handed over by the executor) or lazily from the store; chunks are read
//! one at a time and never cached.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::engine::key::Digest;
use crate::engine::store::manifest::ChunkRef;
use crate::{Error, Result};

/// How long an artifact lives in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Retention {
    /// Kept until `tyr gc` finds no pinned run referencing it (variants, choices, models).
    #[default]
    Keep,
    /// Deleted once every consumer in the run has committed (large activations).
    Transient,
}

/// The storage format of an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactKind {
    Tensors,
    Record,
    Bytes,
    /// Tensor sets, one blob per chunk (`Value::Chunks`).
    Chunks,
}

/// An artifact's content in memory.
#[derive(Debug, Clone)]
pub enum Value {
    /// Named tensors; one safetensors blob.
    Tensors(BTreeMap<String, Tensor>),
    /// A bincode-encoded record.
    Record(Vec<u8>),
    /// Raw bytes, stored as they are.
    Bytes(Vec<u8>),
    /// Raw bytes in a file the stage wrote under its scratch folder: at commit the engine moves
    /// the file into the store (hashed in pieces), so a large file such as an exported model is
    /// never held in memory. Consumers read it back as `Bytes`.
    File(PathBuf),
    /// Chunks a stage already wrote to the store with a `ChunkWriter`, in order: each is one
    /// safetensors blob. Consumers read them one at a time (`ArtifactSet::chunk`).
    Chunks(Vec<ChunkRef>),
}

impl Value {
    pub fn kind(&self) -> ArtifactKind {
        match self {
            Value::Tensors(_) => ArtifactKind::Tensors,
            Value::Record(_) => ArtifactKind::Record,
            Value::Bytes(_) | Value::File(_) => ArtifactKind::Bytes,
            Value::Chunks(_) => ArtifactKind::Chunks,
        }
    }

    /// The bytes stored in the blob. Deterministic: equal values give equal bytes.
    pub fn encode(&self) -> Result<Vec<u8>> {
        match self {
            Value::Tensors(map) => {
                let mut owned = Vec::with_capacity(map.len());
                for (name, t) in map {
                    owned.push((name.clone(), t.to_device(&Device::Cpu)?.contiguous()?));
                }
                safetensors::tensor::serialize(owned, None)
                    .map_err(|e| Error::msg(format!("encoding tensors as safetensors: {e}")))
            }
            Value::Record(b) | Value::Bytes(b) => Ok(b.clone()),
            Value::File(p) => std::fs::read(p).map_err(|e| Error::io(p, e)),
            Value::Chunks(_) => Err(Error::msg(
                "a chunked output is in the store already and has no single blob",
            )),
        }
    }

    pub fn decode(kind: ArtifactKind, bytes: Vec<u8>) -> Result<Self> {
        Ok(match kind {
            ArtifactKind::Tensors => {
                let map = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
                Value::Tensors(map.into_iter().collect())
            }
            ArtifactKind::Record => Value::Record(bytes),
            ArtifactKind::Bytes => Value::Bytes(bytes),
            ArtifactKind::Chunks => {
                return Err(Error::msg("a chunked output is read chunk by chunk"));
            }
        })
    }
}

/// One named output of a stage, with its retention and publish path.
#[derive(Debug, Clone)]
pub struct Output {
    pub value: Value,
    pub retention: Retention,
    pub publish: Option<String>,
}

impl Output {
    /// Deletes this artifact once every consumer has committed.
    pub fn transient(&mut self) -> &mut Self {
        self.retention = Retention::Transient;
        self
    }

    /// Copies this artifact to `<workdir>/out/<pipeline>/<rel_path>` when the run finishes.
    pub fn publish(&mut self, rel_path: impl Into<String>) -> &mut Self {
        self.publish = Some(rel_path.into());
        self
    }
}

/// Everything one stage run returns: named artifacts and scalar metrics (kept in the manifest).
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    pub entries: BTreeMap<String, Output>,
    pub metrics: BTreeMap<String, f64>,
}

impl Outputs {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, name: impl Into<String>, value: Value) -> &mut Output {
        let out = Output {
            value,
            retention: Retention::Keep,
            publish: None,
        };
        match self.entries.entry(name.into()) {
            std::collections::btree_map::Entry::Occupied(mut o) => {
                o.insert(out);
                o.into_mut()
            }
            std::collections::btree_map::Entry::Vacant(v) => v.insert(out),
        }
    }

    /// A single tensor, stored under its output name.
    pub fn tensor(&mut self, name: impl Into<String>, t: Tensor) -> &mut Output {
        let name = name.into();
        self.put(name.clone(), Value::Tensors(BTreeMap::from([(name, t)])))
    }

    /// A set of named tensors in one blob.
    pub fn tensors(
        &mut self,
        name: impl Into<String>,
        ts: BTreeMap<String, Tensor>,
    ) -> &mut Output {
        self.put(name, Value::Tensors(ts))
    }

    /// A serde record, stored as bincode.
    pub fn record<T: Serialize>(&mut self, name: impl Into<String>, r: &T) -> Result<&mut Output> {
        let name = name.into();
        let bytes = bincode::serialize(r)
            .map_err(|e| Error::msg(format!("encoding record `{name}`: {e}")))?;
        Ok(self.put(name, Value::Record(bytes)))
    }

    pub fn bytes(&mut self, name: impl Into<String>, b: Vec<u8>) -> &mut Output {
        self.put(name, Value::Bytes(b))
    }

    /// Raw bytes in file `path` (under the stage's scratch folder), moved into the store at
    /// commit rather than read into memory; the stage must not touch the file afterwards.
    pub fn file(&mut self, name: impl Into<String>, path: PathBuf) -> &mut Output {
        self.put(name, Value::File(path))
    }

    /// A chunked output whose chunks a `ChunkWriter` wrote (`ChunkWriter::finish`).
    pub fn chunks(&mut self, name: impl Into<String>, chunks: Vec<ChunkRef>) -> &mut Output {
        self.put(name, Value::Chunks(chunks))
    }

    pub fn metric(&mut self, name: impl Into<String>, v: f64) {
        self.metrics.insert(name.into(), v);
    }
}

/// Values up to this size are handed to consumers in memory and kept once read (an
/// `ArtifactSet` lives as long as the executor keeps the producer's outputs: until all its
/// consumers have settled); larger ones are read from the store for each use. Small: what passes
/// it is records (a pool, a choice, an index); a layer's variants, which the search and the
/// exports consume at the end of a round, are not held for the whole round (2.2 GB for 16 layers
/// of hidden 1024 / FFN 4096 at 64 MiB).
pub(crate) const CACHE_BYTES: u64 = 1 << 20;

/// One artifact of an upstream stage as a consumer sees it.
#[derive(Debug)]
pub(crate) struct Entry {
    pub kind: ArtifactKind,
    pub digest: Digest,
    pub path: PathBuf,
    pub value: OnceLock<Arc<Value>>,
    /// A chunked output's chunks, each with its blob's path.
    pub chunks: Vec<(ChunkRef, PathBuf)>,
}

/// The outputs of one upstream stage, read by name.
#[derive(Debug)]
pub struct ArtifactSet {
    stage: String,
    entries: BTreeMap<String, Entry>,
}

impl ArtifactSet {
    pub(crate) fn new(stage: String, entries: BTreeMap<String, Entry>) -> Self {
        Self { stage, entries }
    }

    /// The id of the stage that produced these artifacts.
    pub fn stage(&self) -> &str {
        &self.stage
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The content digest of output `name`.
    pub fn digest(&self, name: &str) -> Option<Digest> {
        self.entries.get(name).map(|e| e.digest)
    }

    fn value(&self, name: &str) -> Result<Arc<Value>> {
        let e = self.entries.get(name).ok_or_else(|| {
            let have: Vec<&str> = self.names().collect();
            Error::EngineArtifact {
                stage: self.stage.clone(),
                output: name.to_string(),
                message: format!("no such output (it has: {})", have.join(", ")),
            }
        })?;
        if let Some(v) = e.value.get() {
            return Ok(v.clone());
        }
        let bytes = self.read_blob(name, "", &e.path, &e.digest)?;
        let large = bytes.len() as u64 > CACHE_BYTES;
        let v = Arc::new(Value::decode(e.kind, bytes)?);
        if large {
            return Ok(v);
        }
        Ok(e.value.get_or_init(|| v).clone())
    }

    fn wrong_kind(&self, name: &str, want: &str) -> Error {
        Error::EngineArtifact {
            stage: self.stage.clone(),
            output: name.to_string(),
            message: format!("is not {want}"),
        }
    }

    fn chunk_list(&self, name: &str) -> Result<&[(ChunkRef, PathBuf)]> {
        match self.entries.get(name) {
            Some(e) if e.kind == ArtifactKind::Chunks => Ok(&e.chunks),
            Some(_) => Err(self.wrong_kind(name, "chunked")),
            None => self.value(name).and(Err(self.wrong_kind(name, "chunked"))),
        }
    }

    /// How many chunks chunked output `name` has.
    pub fn chunk_count(&self, name: &str) -> Result<usize> {
        Ok(self.chunk_list(name)?.len())
    }

    /// Chunk `i` of chunked output `name` as tensors (written with `ChunkWriter::push`).
    pub fn chunk(&self, name: &str, i: usize) -> Result<BTreeMap<String, Tensor>> {
        let bytes = self.chunk_bytes(name, i)?;
        let map = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        Ok(map.into_iter().collect())
    }

    /// The bytes of chunk `i` of chunked output `name`, read from the store and checked against
    /// its digest (never cached: a consumer holds one chunk at a time).
    pub fn chunk_bytes(&self, name: &str, i: usize) -> Result<Vec<u8>> {
        let list = self.chunk_list(name)?;
        let (c, path) = list.get(i).ok_or_else(|| Error::EngineArtifact {
            stage: self.stage.clone(),
            output: name.to_string(),
            message: format!("has {} chunks, chunk {i} asked for", list.len()),
        })?;
        self.read_blob(name, &format!("chunk {i}: "), path, &c.digest)
    }

    /// The bytes of blob `path`, checked against `digest` (`what` prefixes the message).
    fn read_blob(
        &self,
        name: &str,
        what: &str,
        path: &std::path::Path,
        digest: &Digest,
    ) -> Result<Vec<u8>> {
        let bytes = std::fs::read(path).map_err(|err| Error::io(path, err))?;
        if Digest::of(&bytes) != *digest {
            return Err(Error::EngineArtifact {
                stage: self.stage.clone(),
                output: name.to_string(),
                message: format!("{what}blob {} does not match its digest", path.display()),
            });
        }
        Ok(bytes)
    }

    fn decode_record<T: DeserializeOwned>(&self, name: &str, bytes: &[u8]) -> Result<T> {
        bincode::deserialize(bytes).map_err(|e| Error::EngineArtifact {
            stage: self.stage.clone(),
            output: name.to_string(),
            message: format!("decoding record: {e}"),
        })
    }

    /// The named tensors of output `name`.
    pub fn tensors(&self, name: &str) -> Result<BTreeMap<String, Tensor>> {
        match &*self.value(name)? {
            Value::Tensors(m) => Ok(m.clone()),
            _ => Err(self.wrong_kind(name, "a tensor set")),
        }
    }

    /// The single tensor of output `name` (stored under its own name).
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let mut m = self.tensors(name)?;
        m.remove(name)
            .ok_or_else(|| self.wrong_kind(name, "a single tensor"))
    }

    /// Record `name`, decoded from memory when the producer handed it over, else read from the
    /// store without keeping the bytes: for values read once each (a search or an export reads
    /// thousands of variants, and the cache of `record` would hold every one).
    pub fn record_uncached<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        let in_memory = self
            .entries
            .get(name)
            .is_some_and(|e| e.value.get().is_some());
        let e = match self.entries.get(name) {
            Some(e) if !in_memory && e.kind == ArtifactKind::Record => e,
            _ => return self.record(name),
        };
        let bytes = self.read_blob(name, "", &e.path, &e.digest)?;
        self.decode_record(name, &bytes)
    }

    pub fn record<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        match &*self.value(name)? {
            Value::Record(b) => self.decode_record(name, b),
            _ => Err(self.wrong_kind(name, "a record")),
        }
    }

    pub fn bytes(&self, name: &str) -> Result<Vec<u8>> {
        match &*self.value(name)? {
            Value::Bytes(b) => Ok(b.clone()),
            _ => Err(self.wrong_kind(name, "raw bytes")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_encoding_is_deterministic_and_round_trips() {
        let t = Tensor::arange(0f32, 6.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let u = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
        let v = Value::Tensors(BTreeMap::from([
            ("b".to_string(), t.clone()),
            ("a".to_string(), u),
        ]));
        let (x, y) = (v.encode().unwrap(), v.encode().unwrap());
        assert_eq!(x, y);
        let Value::Tensors(back) = Value::decode(ArtifactKind::Tensors, x).unwrap() else {
            panic!("decoded to a different kind")
        };
        assert_eq!(
            back["b"].to_vec2::<f32>().unwrap(),
            t.to_vec2::<f32>().unwrap()
        );
    }
}

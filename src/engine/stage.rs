//! The stage contract. A stage kind has a name, a `VERSION` bumped whenever its semantics
//! change, typed `Params`, declared input slots, the resources it needs, and one synchronous
//! `run` that reads its inputs and returns its outputs through a `StageContext`. Stages never
//! choose paths and never touch the index; given their key they are deterministic.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Serialize, de::DeserializeOwned};

use crate::engine::artifact::{ArtifactSet, Outputs};
use crate::engine::chunks::ChunkWriter;
use crate::engine::fsio::{self, WriteKind};
use crate::engine::store::Store;
use crate::{Error, Result};

/// One declared input slot of a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSlot {
    pub name: String,
    /// `true`: the slot takes an ordered list of stages; `false`: exactly one.
    pub many: bool,
}

impl InputSlot {
    pub fn one(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            many: false,
        }
    }

    pub fn many(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            many: true,
        }
    }
}

/// What one running stage holds while it runs. The executor starts a stage only when the
/// tokens are free, so heavy stages do not oversubscribe the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    /// Heavy CPU tokens (a stage that uses every core itself should take all of them; a light
    /// stage takes 0). The executor has one token per core unless the pipeline says otherwise.
    pub cpu: u32,
    /// GPU tokens.
    pub gpu: u32,
    /// Memory the stage expects to hold at its peak, in bytes; counted against the budget.
    pub mem_bytes: u64,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpu: 1,
            gpu: 0,
            mem_bytes: 0,
        }
    }
}

/// A kind of stage. LLM stages (`src/stages/`) implement this and are registered by
/// `stages::default_registry`.
pub trait Stage: Sized + Send + Sync + 'static {
    /// The kind's name in pipeline files, kebab-case (`supernet-layer`).
    const KIND: &'static str;
    /// Bump whenever the result for the same params and inputs would change.
    const VERSION: u32;
    /// The `params` table of the pipeline file, parsed strictly
    /// (`#[serde(deny_unknown_fields)]`, documented defaults).
    type Params: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Builds the stage from its params; reject invalid values here with a clear message.
    fn new(params: Self::Params) -> Result<Self>;

    /// The input slots, in the order their digests enter the key.
    fn inputs(&self) -> Vec<InputSlot>;

    /// Resources held while running.
    fn resources(&self) -> Resources {
        Resources::default()
    }

    /// State outside the store that the result depends on (e.g. the BLAKE3 of a source file),
    /// computed whenever the key is and made part of it. Most stages have none. An error here
    /// enters the key as text; the stage's `run` should then fail with the real error.
    fn fingerprint(&self) -> Result<Option<String>> {
        Ok(None)
    }

    /// Versions of shared code the result's bits depend on, by name (a stage that runs the
    /// model forward returns `("forward", crate::model::FORWARD_VERSION)`). They enter the key,
    /// so bumping one reruns exactly the stages that declare it. Most stages have none.
    fn code_versions(&self) -> Vec<(&'static str, u32)> {
        Vec::new()
    }

    /// Does the work. Runs on a blocking thread; may take hours; may save progress records.
    fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outputs>;
}

/// Object-safe view of a `Stage`, as the executor holds it.
pub trait DynStage: Send + Sync {
    fn kind(&self) -> &'static str;
    fn version(&self) -> u32;
    fn inputs(&self) -> Vec<InputSlot>;
    fn resources(&self) -> Resources;
    fn fingerprint(&self) -> Result<Option<String>>;
    fn code_versions(&self) -> Vec<(&'static str, u32)>;
    fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outputs>;
}

impl<S: Stage> DynStage for S {
    fn kind(&self) -> &'static str {
        S::KIND
    }
    fn version(&self) -> u32 {
        S::VERSION
    }
    fn inputs(&self) -> Vec<InputSlot> {
        Stage::inputs(self)
    }
    fn resources(&self) -> Resources {
        Stage::resources(self)
    }
    fn fingerprint(&self) -> Result<Option<String>> {
        Stage::fingerprint(self)
    }
    fn code_versions(&self) -> Vec<(&'static str, u32)> {
        Stage::code_versions(self)
    }
    fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outputs> {
        Stage::run(self, ctx)
    }
}

/// Stage `stage_id`'s scratch folder under `tmp_dir` (`StageContext::scratch_dir`).
pub(crate) fn scratch_path(tmp_dir: &std::path::Path, stage_id: &str) -> PathBuf {
    let name: String = stage_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    tmp_dir.join(format!("{name}.scratch"))
}

/// A callback the executor passes in to show progress (`done` of `total` units).
pub type ProgressFn = dyn Fn(u64, u64) + Send + Sync;

/// What a running stage sees: its inputs, the seed, and a place for progress records.
pub struct StageContext<'a> {
    pub(crate) stage_id: &'a str,
    pub(crate) seed: u64,
    /// `[pipeline] device` and `dtype` (key parts).
    pub(crate) device: &'a str,
    pub(crate) dtype: &'a str,
    pub(crate) inputs: &'a BTreeMap<String, Vec<Arc<ArtifactSet>>>,
    pub(crate) progress_path: PathBuf,
    pub(crate) tmp_dir: PathBuf,
    pub(crate) on_progress: &'a ProgressFn,
    pub(crate) store: &'a Store,
}

impl<'a> StageContext<'a> {
    /// The stage id in the pipeline (for messages only: it is not part of the key, so results
    /// must not depend on it).
    pub fn stage_id(&self) -> &str {
        self.stage_id
    }

    /// The pipeline seed (part of the key). Draw randomness with `crate::rng::Stream::new(seed, …)`.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Where and in what precision this stage runs the model: the pipeline's `device` and
    /// `dtype`, which are part of every key. Opens the GPU on first use.
    pub fn compute(&self) -> Result<crate::model::Compute> {
        crate::model::Compute::parse(self.device, self.dtype)
    }

    /// The artifacts of the one stage bound to input slot `slot`.
    pub fn input(&self, slot: &str) -> Result<&'a ArtifactSet> {
        match self.inputs(slot)? {
            [one] => Ok(one),
            many => Err(self.slot_error(
                slot,
                format!("has {} stages bound, expected one", many.len()),
            )),
        }
    }

    /// The artifacts of every stage bound to input slot `slot`, in declared order.
    pub fn inputs(&self, slot: &str) -> Result<&'a [Arc<ArtifactSet>]> {
        let inputs: &'a BTreeMap<String, Vec<Arc<ArtifactSet>>> = self.inputs;
        inputs
            .get(slot)
            .map(Vec::as_slice)
            .ok_or_else(|| self.slot_error(slot, "is not a declared input".to_string()))
    }

    fn slot_error(&self, slot: &str, what: String) -> Error {
        Error::EngineStage {
            stage: self.stage_id.to_string(),
            message: format!("input slot `{slot}` {what}"),
        }
    }

    /// Saves a progress record durably. A later attempt of the same key (after a crash) reads
    /// it back with `load_progress` and continues from there.
    pub fn save_progress<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let bytes = bincode::serialize(record).map_err(|e| {
            Error::msg(format!("stage `{}`: encoding progress: {e}", self.stage_id))
        })?;
        fsio::write_atomic(
            &self.tmp_dir,
            &self.progress_path,
            &bytes,
            WriteKind::Progress,
        )
    }

    /// The last progress record saved for this key, if any.
    pub fn load_progress<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        let bytes = match std::fs::read(&self.progress_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&self.progress_path, e)),
        };
        match bincode::deserialize(&bytes) {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                tracing::warn!(stage = self.stage_id, error = %e, "ignoring unreadable progress record");
                Ok(None)
            }
        }
    }

    /// A writer for chunked output `name` (`engine::chunks`): each chunk pushed is durable at
    /// once, and a later attempt of this key continues after the chunks already written
    /// (`ChunkWriter::written`). Return the chunks with `Outputs::chunks`.
    pub fn chunk_writer(&self, name: &str) -> Result<ChunkWriter<'_>> {
        ChunkWriter::open(self.store, self.tmp_dir.clone(), &self.progress_path, name)
    }

    /// A fresh, empty directory under the store's `tmp/` for files a stage builds before it
    /// returns them as outputs (e.g. an exported model, as `Outputs::file`). The engine removes
    /// it once the stage has committed; a crashed run's leftovers are replaced by the next
    /// attempt's.
    pub fn scratch_dir(&self) -> Result<PathBuf> {
        let dir = scratch_path(&self.tmp_dir, self.stage_id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(dir)
    }

    /// Reports progress for the progress bar (`done` of `total` units).
    pub fn report(&self, done: u64, total: u64) {
        (self.on_progress)(done, total);
    }
}

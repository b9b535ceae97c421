//! The engine's own small stage kinds, registered by default. They exercise every engine
//! feature without any model: a file source with a fingerprint, inline text, iterated hashing,
//! a slow counter with progress records, random and scaled tensors (transient and published),
//! a many-input summary, a stage that always fails, and one that declares the resources its
//! params say (to test how executors treat requests). Tests and `pipelines/demo.toml` use them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::engine::artifact::Outputs;
use crate::engine::key::Digest;
use crate::engine::registry::Registry;
use crate::engine::stage::{InputSlot, Resources, Stage, StageContext};
use crate::rng::Stream;
use crate::{Error, Result};

/// Registers every demo kind.
pub fn register(r: &mut Registry) {
    r.register::<ReadFile>()
        .register::<Text>()
        .register::<Hash>()
        .register::<Count>()
        .register::<RandomTensor>()
        .register::<ScaleTensor>()
        .register::<Summary>()
        .register::<Fail>()
        .register::<Claim>();
}

fn light() -> Resources {
    Resources {
        cpu: 0,
        gpu: 0,
        mem_bytes: 0,
    }
}

/// `read-file`: output `bytes` = the file's content. The file's digest is its fingerprint, so
/// editing the file reruns it.
pub struct ReadFile(ReadFileParams);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadFileParams {
    /// Path of the file (absolute, or relative to the current directory).
    pub path: PathBuf,
}

impl Stage for ReadFile {
    const KIND: &'static str = "read-file";
    const VERSION: u32 = 1;
    type Params = ReadFileParams;
    fn new(p: Self::Params) -> Result<Self> {
        Ok(Self(p))
    }
    fn inputs(&self) -> Vec<InputSlot> {
        vec![]
    }
    fn resources(&self) -> Resources {
        light()
    }
    fn fingerprint(&self) -> Result<Option<String>> {
        let b = std::fs::read(&self.0.path).map_err(|e| Error::io(&self.0.path, e))?;
        Ok(Some(format!("blake3:{}", Digest::of(&b))))
    }
    fn run(&self, _ctx: &mut StageContext<'_>) -> Result<Outputs> {
        let b = std::fs::read(&self.0.path).map_err(|e| Error::io(&self.0.path, e))?;
        let mut o = Outputs::new();
        o.bytes("bytes", b);
        Ok(o)
    }
}

/// `text`: output `bytes` = the `text` param.
pub struct Text(TextParams);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextParams {
    pub text: String,
}

impl Stage for Text {
    const KIND: &'static str = "text";
    const VERSION: u32 = 1;
    type Params = TextParams;
    fn new(p: Self::Params) -> Result<Self> {
        Ok(Self(p))
    }
    fn inputs(&self) -> Vec<InputSlot> {
        vec![]
    }
    fn resources(&self) -> Resources {
        light()
    }
    fn run(&self, _ctx: &mut StageContext<'_>) -> Result<Outputs> {
        let mut o = Outputs::new();
        o.bytes("bytes", self.0.text.clone().into_bytes());
        Ok(o)
    }
}

/// `hash`: input `src` (its `bytes` output); output `hex` = BLAKE3 applied `rounds` times to
/// salt ‖ bytes, as hex text.
pub struct Hash(HashParams);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashParams {
    /// Number of BLAKE3 applications, ≥ 1 [default 1].
    #[serde(default = "one")]
    pub rounds: u32,
    /// Prepended to the input [default ""].
    #[serde(default)]
    pub salt: String,
}

fn one() -> u32 {
    1
}

impl Stage for Hash {
    const KIND: &'static str = "hash";
    const VERSION: u32 = 1;
    type Params = HashParams;
    fn new(p: Self::Params) -> Result<Self> {
        if p.rounds == 0 {
            return Err(Error::msg("rounds: must be at least 1"));
        }
        Ok(Self(p))
    }
    fn inputs(&self) -> Vec<InputSlot> {
        vec![InputSlot::one("src")]
    }
    fn resources(&self) -> Resources {
        light()
    }
    fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outputs> {
        let mut data = self.0.salt.clone().into_bytes();
        data.extend(ctx.input("src")?.bytes("bytes")?);
        let mut d = Digest::of(&data);
        for _ in 1..self.0.rounds {
            d = Digest::of(&d.0);
        }
        let mut o = Outputs::new();
        o.bytes("bytes", d.hex().into_bytes());
        Ok(o)
    }
}

/// `count`: a slow stage with progress records. Folds `n` steps into an accumulator, sleeping
/// `step_ms` per step and saving its progress after each, so a killed run resumes where it
/// stopped. Output `count` (record `CountState`); metric `resumed_from` = the step it started at.
pub struct Count(CountParams);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountParams {
    pub n: u64,
    /// Sleep per step, milliseconds [default 0].
    #[serde(default)]
    pub step_ms: u64,
}

/// The counter's progress record and final output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountState {
    pub next: u64,
    pub acc: u64,
}

impl Stage for Count {
    const KIND: &'static str = "count";
    const VERSION: u32 = 1;
    type Params = CountParams;
    fn new(p: Self::Params) -> Result<Self> {
        Ok(Self(p))
    }
    fn inputs(&self) -> Vec<InputSlot> {
        vec![]
    }
    fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outputs> {
        let mut s: CountState = ctx.load_progress()?.unwrap_or(CountState {
            next: 0,
            acc: ctx.seed(),
        });
        let resumed_from = s.next;
        while s.next < self.0.n {
            std::thread::sleep(std::time::Duration::from_millis(self.0.step_ms));
            let mut st = Stream::new(s.acc, "count", &[s.next]);
            s.acc = st.next_u64();
            s.next += 1;
            ctx.save_progress(&s)?;
            ctx.report(s.next, self.0.n);
        }
        let mut o = Outputs::new();
        o.record("count", &s)?;
        o.metric("resumed_from", resumed_from as f64);
        Ok(o)
    }
}

/// `random-tensor`: output `t`, a `rows × cols` f32 tensor of standard normals drawn from the
/// pipeline seed; `transient = true` deletes it once its consumers committed; `chunked` and
/// `hold_ms` shape how and when it reaches the store (for the executor's tests).
pub struct RandomTensor(RandomTensorParams);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomTensorParams {
    pub rows: usize,
    pub cols: usize,
    #[serde(default)]
    pub transient: bool,
    /// Write `t` as a one-chunk output while running (a `ChunkWriter`), as streamed
    /// activations are, instead of returning it [false].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub chunked: bool,
    /// Wait this long after producing `t` before returning [0]: widens the window between a
    /// blob reaching the store and the commit, for tests of the executor's collection.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hold_ms: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Stage for RandomTensor {
    const KIND: &'static str = "random-tensor";
    const VERSION: u32 = 1;
    type Params = RandomTensorParams;
    fn new(p: Self::Params) -> Result<Self> {
        Ok(Self(p))
    }
    fn inputs(&self) -> Vec<InputSlot> {
        vec![]
    }
    fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outputs> {
        let (r, c) = (self.0.rows, self.0.cols);
        let mut s = Stream::new(ctx.seed(), "random-tensor", &[r as u64, c as u64]);
        let v: Vec<f32> = (0..r * c).map(|_| s.normal() as f32).collect();
        // [rows * cols] → [rows, cols]
        let t = Tensor::from_vec(v, (r, c), &Device::Cpu)?;
        let mut o = Outputs::new();
        let out = if self.0.chunked {
            // In the store now, before the hold below.
            let mut w = ctx.chunk_writer("t")?;
            w.push(BTreeMap::from([("t".to_string(), t)]))?;
            o.chunks("t", w.finish())
        } else {
            o.tensor("t", t)
        };
        std::thread::sleep(std::time::Duration::from_millis(self.0.hold_ms));
        if self.0.transient {
            out.transient();
        }
        Ok(o)
    }
}

/// `scale-tensor`: input `x` (its tensor `t`, or a one-chunk output `t`); output `t` =
/// factor · x, optionally published.
pub struct ScaleTensor(ScaleTensorParams);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleTensorParams {
    pub factor: f64,
    /// Path under the run's output folder to publish `t` at.
    #[serde(default)]
    pub publish: Option<String>,
}

impl Stage for ScaleTensor {
    const KIND: &'static str = "scale-tensor";
    const VERSION: u32 = 1;
    type Params = ScaleTensorParams;
    fn new(p: Self::Params) -> Result<Self> {
        Ok(Self(p))
    }
    fn inputs(&self) -> Vec<InputSlot> {
        vec![InputSlot::one("x")]
    }
    fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outputs> {
        let set = ctx.input("x")?;
        // `t` as a tensor, or as the one chunk of a chunked output.
        let x = match set.chunk_count("t") {
            Ok(1) => set
                .chunk("t", 0)?
                .remove("t")
                .ok_or_else(|| Error::EngineArtifact {
                    stage: set.stage().to_string(),
                    output: "t".into(),
                    message: "its chunk has no tensor `t`".into(),
                })?,
            _ => set.tensor("t")?,
        };
        let mut o = Outputs::new();
        let out = o.tensor("t", x.affine(self.0.factor, 0.0)?);
        if let Some(p) = &self.0.publish {
            out.publish(p.clone());
        }
        Ok(o)
    }
}

/// `summary`: input `parts` (many); output `bytes`, one line `stage/output digest` per
/// upstream artifact, optionally published.
pub struct Summary(SummaryParams);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryParams {
    #[serde(default)]
    pub publish: Option<String>,
    /// Write the text to a scratch file and return it as a file output [false].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub as_file: bool,
}

impl Stage for Summary {
    const KIND: &'static str = "summary";
    const VERSION: u32 = 1;
    type Params = SummaryParams;
    fn new(p: Self::Params) -> Result<Self> {
        Ok(Self(p))
    }
    fn inputs(&self) -> Vec<InputSlot> {
        vec![InputSlot::many("parts")]
    }
    fn resources(&self) -> Resources {
        light()
    }
    fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outputs> {
        let mut lines = BTreeMap::new();
        for (i, set) in ctx.inputs("parts")?.iter().enumerate() {
            let names: Vec<String> = set.names().map(str::to_string).collect();
            for name in names {
                let d = set.digest(&name).map(|d| d.hex()).unwrap_or_default();
                lines.insert((i, name.clone()), format!("{}/{name} {d}\n", set.stage()));
            }
        }
        let text: String = lines.into_values().collect();
        let mut o = Outputs::new();
        let out = if self.0.as_file {
            let path = ctx.scratch_dir()?.join("summary.txt");
            std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
            o.file("bytes", path)
        } else {
            o.bytes("bytes", text.into_bytes())
        };
        if let Some(p) = &self.0.publish {
            out.publish(p.clone());
        }
        Ok(o)
    }
}

/// `fail`: always fails with `message`. For testing failure handling.
pub struct Fail(FailParams);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailParams {
    pub message: String,
}

impl Stage for Fail {
    const KIND: &'static str = "fail";
    const VERSION: u32 = 1;
    type Params = FailParams;
    fn new(p: Self::Params) -> Result<Self> {
        Ok(Self(p))
    }
    fn inputs(&self) -> Vec<InputSlot> {
        vec![]
    }
    fn resources(&self) -> Resources {
        light()
    }
    fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outputs> {
        Err(Error::EngineStage {
            stage: ctx.stage_id().to_string(),
            message: self.0.message.clone(),
        })
    }
}

/// `claim`: output `bytes` = `text`, while declaring `cpus`, `gpus` and `mem_bytes` as its
/// resources: a stand-in for a heavy stage when testing how an executor places requests.
pub struct Claim(ClaimParams);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimParams {
    pub text: String,
    /// CPU tokens [default 1].
    #[serde(default = "one")]
    pub cpus: u32,
    /// GPUs [default 0].
    #[serde(default)]
    pub gpus: u32,
    /// Peak memory, bytes [default 0: not declared].
    #[serde(default)]
    pub mem_bytes: u64,
}

impl Stage for Claim {
    const KIND: &'static str = "claim";
    const VERSION: u32 = 1;
    type Params = ClaimParams;
    fn new(p: Self::Params) -> Result<Self> {
        Ok(Self(p))
    }
    fn inputs(&self) -> Vec<InputSlot> {
        vec![]
    }
    fn resources(&self) -> Resources {
        Resources {
            cpu: self.0.cpus,
            gpu: self.0.gpus,
            mem_bytes: self.0.mem_bytes,
        }
    }
    fn run(&self, _ctx: &mut StageContext<'_>) -> Result<Outputs> {
        let mut o = Outputs::new();
        o.bytes("bytes", self.0.text.clone().into_bytes());
        Ok(o)
    }
}

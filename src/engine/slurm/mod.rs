//! The Slurm executor. The coordinator (`tyr run --executor slurm`, which alone holds the work
//! directory's lock and the index) submits each ready stage attempt with `sbatch --parsable`
//! as a job running `tyr exec-stage` (`engine::worker`) on a filesystem every node shares, asks
//! Slurm at `poll_ms` intervals how the job stands, and when it is over commits what the job
//! left in the store. Slurm only runs attempts and reports on them; keys, manifests and the
//! index stay the engine's.
//!
//! Faults: a job that ends without committing (failed, cancelled, preempted, out of time or
//! memory, node failure) is submitted again, up to `max_attempts` in one run; then the stage
//! fails with the job id, Slurm's state and the tail of the job's log. A stage whose own code
//! reported an error (the job's exit record says so) fails at once, as it would locally. The
//! store is asked first: a job that committed counts as committed whatever Slurm says.
//!
//! Adoption: every submission goes into the run log (`runlog`). A coordinator that starts finds
//! committed stages in the store as cached; for a stage not committed whose last job is still
//! open in the run log it waits for that job rather than submitting another. It never submits
//! a stage that committed. A coordinator stopped by SIGTERM leaves its jobs running (Slurm
//! sends SIGTERM at a time limit or preemption, and the jobs may well have time left); the next
//! run adopts them.

pub mod cmd;
pub mod runlog;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::executor::human_bytes;
use crate::engine::fsio::{self, WriteKind};
use crate::engine::interrupt;
use crate::engine::job::{self, Committed};
use crate::engine::key::Digest;
use crate::engine::plan::{Lookup, lookup};
use crate::engine::stage::Resources;
use crate::engine::store::Store;
use crate::engine::store::manifest::now_s;
use crate::engine::worker::{self, ExitOutcome, JobSpec};
use crate::{Error, Result};
use cmd::JobState;
use runlog::{Event, RunLog};

/// Which executor runs stage attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecutorKind {
    /// Threads of this process (the default).
    #[default]
    Local,
    /// One Slurm job per stage attempt.
    Slurm,
}

/// `[pipeline.executor]` after validation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExecutorSettings {
    pub kind: ExecutorKind,
    pub slurm: SlurmSettings,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SlurmSettings {
    /// `--partition`; none: the cluster's default.
    pub partition: Option<String>,
    /// Extra `sbatch` options, after tyr's own (so they win): `--account=X`, `--qos=Y`.
    pub opts: Vec<String>,
    /// `--time` for every job (`HH:MM:SS`, `D-HH`, minutes); none: the partition's default.
    pub time: Option<String>,
    /// Jobs per stage in one run before it fails [3].
    pub max_attempts: u32,
    /// How often Slurm is asked how jobs stand, milliseconds [2000].
    pub poll_ms: u64,
    /// The tyr binary jobs run; it must be reachable at this path on every node [this binary].
    pub program: Option<PathBuf>,
}

impl Default for SlurmSettings {
    fn default() -> Self {
        Self {
            partition: None,
            opts: Vec::new(),
            time: None,
            max_attempts: 3,
            poll_ms: 2000,
            program: None,
        }
    }
}

impl SlurmSettings {
    /// Checks one value; `Err` says what is wrong with it (the caller names the field).
    pub fn check_opt(opt: &str) -> std::result::Result<(), String> {
        if !opt.starts_with('-') || opt.contains('\n') {
            return Err(format!(
                "`{opt}` is not an sbatch option (write it as `--account=X`)"
            ));
        }
        Ok(())
    }

    pub fn check_partition(p: &str) -> std::result::Result<(), String> {
        if p.is_empty() || p.chars().any(|c| c.is_whitespace() || c == '\'') {
            return Err(format!("`{p}` is not a partition name"));
        }
        Ok(())
    }

    pub fn check_time(t: &str) -> std::result::Result<(), String> {
        if t.is_empty()
            || !t
                .chars()
                .all(|c| c.is_ascii_digit() || c == ':' || c == '-')
        {
            return Err(format!(
                "`{t}` is not a Slurm time limit (`MM`, `HH:MM:SS`, `D-HH:MM`)"
            ));
        }
        Ok(())
    }

    pub fn check_max_attempts(n: u32) -> std::result::Result<(), String> {
        if !(1..=100).contains(&n) {
            return Err(format!("{n} is outside 1..=100"));
        }
        Ok(())
    }

    pub fn check_poll_ms(ms: u64) -> std::result::Result<(), String> {
        if !(50..=600_000).contains(&ms) {
            return Err(format!("{ms} is outside 50..=600000 ms"));
        }
        Ok(())
    }
}

/// One stage attempt to run on Slurm, as the coordinator hands it over.
pub(crate) struct SlurmTask {
    pub spec: JobSpec,
    pub resources: Resources,
}

struct Running {
    task: SlurmTask,
    key: Digest,
    job_id: String,
    attempt: u32,
    /// The attempt in the index's run log (what `tyr status` reads afterwards).
    index_attempt: Option<u64>,
    /// Jobs of this run that ended without committing: (job id, state).
    failures: Vec<(String, String)>,
}

pub(crate) struct SlurmBackend {
    store: Arc<Store>,
    settings: SlurmSettings,
    program: PathBuf,
    log: RunLog,
    /// Jobs the run log says are open, by key, at start: adoption candidates.
    open: BTreeMap<Digest, runlog::OpenJob>,
    running: BTreeMap<usize, Running>,
}

impl SlurmBackend {
    pub fn new(store: Arc<Store>, settings: SlurmSettings) -> Result<Self> {
        let program = match &settings.program {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(|e| Error::EngineExecutor {
                executor: "slurm".into(),
                message: format!("cannot find this tyr binary to submit: {e}"),
            })?,
        };
        let log = RunLog::new(store.root());
        let open = log.open_jobs();
        Ok(Self {
            store,
            settings,
            program,
            log,
            open,
            running: BTreeMap::new(),
        })
    }

    pub fn is_idle(&self) -> bool {
        self.running.is_empty()
    }

    /// Job ids of running jobs by node index (for messages).
    pub fn job_ids(&self) -> Vec<(usize, String)> {
        self.running
            .iter()
            .map(|(&i, r)| (i, r.job_id.clone()))
            .collect()
    }

    /// Starts node `i`: adopts its open job if the run log has one, else submits attempt
    /// 1 (or the next number after earlier runs'). `Err`: Slurm refused the job; the stage
    /// fails with that message (submitting again would be refused again).
    pub fn start(&mut self, i: usize, task: SlurmTask) -> Result<()> {
        let key = task.spec.parts.key();
        worker::write_spec(&self.store, &task.spec)?;
        let index_attempt = match self.store.index() {
            Some(ix) => Some(ix.start_attempt(&task.spec.pipeline, &task.spec.stage, key)?),
            None => None,
        };
        let (job_id, attempt) = match self.open.remove(&key) {
            Some(o) => {
                tracing::info!(stage = %task.spec.stage, job = %o.job_id, attempt = o.attempt, "adopting a job of an earlier run");
                (o.job_id, o.attempt)
            }
            None => {
                let attempt = self.log.last_attempt(&key) + 1;
                match self.submit(&task, &key, attempt) {
                    Ok(id) => (id, attempt),
                    Err(e) => {
                        if let (Some(ix), Some(a)) = (self.store.index(), index_attempt) {
                            ix.fail(a, &e.to_string())?;
                        }
                        return Err(e);
                    }
                }
            }
        };
        self.running.insert(
            i,
            Running {
                task,
                key,
                job_id,
                attempt,
                index_attempt,
                failures: Vec::new(),
            },
        );
        Ok(())
    }

    /// The sbatch options for a task, tyr's first, then the configured extras.
    fn sbatch_args(&self, task: &SlurmTask, out: &std::path::Path) -> Vec<String> {
        let r = task.resources;
        let mut a = vec![
            format!("--job-name=tyr-{}", task.spec.stage),
            format!("--output={}", out.display()),
            format!("--cpus-per-task={}", r.cpu.max(1)),
            // The job must not see a requeue as a reason to restart from scratch: it resumes
            // from the store whatever happens.
            "--requeue".to_string(),
        ];
        if r.mem_bytes > 0 {
            a.push(format!("--mem={}M", r.mem_bytes.div_ceil(1 << 20)));
        }
        if r.gpu > 0 {
            a.push(format!("--gres=gpu:{}", r.gpu));
        }
        if let Some(p) = &self.settings.partition {
            a.push(format!("--partition={p}"));
        }
        if let Some(t) = &self.settings.time {
            a.push(format!("--time={t}"));
        }
        a.extend(self.settings.opts.iter().cloned());
        a
    }

    fn submit(&self, task: &SlurmTask, key: &Digest, attempt: u32) -> Result<String> {
        let root = self.store.root();
        let dir = worker::attempt_dir(root, key, attempt);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let script = dir.join("job.sh");
        let body = format!(
            "#!/bin/sh\n# tyr stage `{}` of pipeline `{}`, attempt {attempt}\nexec {} exec-stage --workdir {} --key {} --attempt {attempt}\n",
            task.spec.stage,
            task.spec.pipeline,
            cmd::shell_quote(&self.program.display().to_string()),
            cmd::shell_quote(&abs(root).display().to_string()),
            key.hex(),
        );
        fsio::write_atomic(
            &self.store.tmp_dir(),
            &script,
            body.as_bytes(),
            WriteKind::Plain,
        )?;
        let args = self.sbatch_args(task, &dir.join("slurm-%j.out"));
        let cpus = task.resources.cpu.max(1);
        let fits = match cmd::max_cpus_per_node(self.settings.partition.as_deref()) {
            Ok(most) if u64::from(cpus) > u64::from(most) => Err(format!(
                "it asks for {cpus} CPUs per task and the largest node{} has {most}; Slurm \
                 would leave it pending forever",
                match &self.settings.partition {
                    Some(p) => format!(" of partition `{p}`"),
                    None => String::new(),
                }
            )),
            Ok(_) => Ok(()),
            // No answer from sinfo: let sbatch decide.
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the nodes' CPU counts");
                Ok(())
            }
        };
        let id = fits
            .and_then(|()| cmd::sbatch(&args, &script))
            .map_err(|e| Error::EngineStage {
                stage: task.spec.stage.clone(),
                message: format!(
                    "Slurm refused the job ({}; cpus {}, memory {}, gpus {}): {e}",
                    args[2..].join(" "),
                    task.resources.cpu.max(1),
                    if task.resources.mem_bytes > 0 {
                        human_bytes(task.resources.mem_bytes)
                    } else {
                        "the cluster default".into()
                    },
                    task.resources.gpu,
                ),
            })?;
        self.log.append(&Event::Submitted {
            pipeline: task.spec.pipeline.clone(),
            stage: task.spec.stage.clone(),
            key: *key,
            attempt,
            job_id: id.clone(),
            at_s: now_s(),
        })?;
        tracing::info!(stage = %task.spec.stage, job = %id, attempt, "submitted");
        Ok(id)
    }

    /// Waits until at least one job is over (or the run is interrupted) and returns the
    /// stages that settled: committed, or failed for good.
    pub async fn next(&mut self) -> Result<Vec<(usize, Result<Committed>)>> {
        loop {
            let done = self.poll()?;
            if !done.is_empty() || self.running.is_empty() {
                return Ok(done);
            }
            let mut waited = 0;
            while waited < self.settings.poll_ms {
                if interrupt::requested().is_some() {
                    return Ok(Vec::new());
                }
                let step = (self.settings.poll_ms - waited).min(100);
                tokio::time::sleep(Duration::from_millis(step)).await;
                waited += step;
            }
        }
    }

    fn poll(&mut self) -> Result<Vec<(usize, Result<Committed>)>> {
        let mut done = Vec::new();
        let ids: Vec<usize> = self.running.keys().copied().collect();
        for i in ids {
            let Some(r) = self.running.get(&i) else {
                continue;
            };
            let root = self.store.root().to_path_buf();
            let record = worker::read_exit(&root, &r.key, r.attempt);
            let state = match &record {
                Some(rec) => format!("exited ({:?})", rec.outcome).to_lowercase(),
                None => match cmd::state(&r.job_id) {
                    JobState::Alive(_) => continue,
                    JobState::Unknown(why) => {
                        tracing::warn!(job = %r.job_id, why = %why, "could not ask Slurm about a job; asking again later");
                        continue;
                    }
                    JobState::Ended(s) => {
                        // An exit record written just before the job ended may show up late
                        // on a network filesystem; look once more.
                        if worker::read_exit(&root, &r.key, r.attempt).is_some() {
                            continue;
                        }
                        s
                    }
                },
            };
            let Some(mut r) = self.running.remove(&i) else {
                continue;
            };
            let _ =
                std::fs::remove_dir_all(worker::attempt_dir(&root, &r.key, r.attempt).join("tmp"));
            // The store says whether the stage committed, whatever Slurm says.
            if let Lookup::Done { manifest, .. } = lookup(&self.store, &r.task.spec.parts, None) {
                self.ended(&r, &state, true)?;
                if let (Some(ix), Some(a)) = (self.store.index(), r.index_attempt) {
                    ix.commit(a, &manifest)?;
                }
                let set = job::lazy_set(&self.store, &manifest, &r.task.spec.stage);
                done.push((
                    i,
                    Ok(Committed {
                        manifest: *manifest,
                        set,
                    }),
                ));
                continue;
            }
            self.ended(&r, &state, false)?;
            let stage = r.task.spec.stage.clone();
            if let Some(rec) = record.filter(|rec| rec.outcome == ExitOutcome::Failed) {
                let e = rec.error.unwrap_or_else(|| "failed".into());
                self.fail_attempt(&r, &e)?;
                done.push((
                    i,
                    Err(Error::EngineStage {
                        stage,
                        message: format!("{e} (Slurm job {})", r.job_id),
                    }),
                ));
                continue;
            }
            r.failures.push((r.job_id.clone(), state.clone()));
            let tail = log_tail(&root, &r);
            if r.failures.len() as u32 >= self.settings.max_attempts {
                let msg = format!(
                    "Slurm job {} ended {state} without committing, attempt {} of {} in this run \
                     (earlier: {}); last lines of its log {}:\n{tail}",
                    r.job_id,
                    r.failures.len(),
                    self.settings.max_attempts,
                    earlier(&r.failures),
                    log_path(&root, &r).display(),
                );
                self.fail_attempt(&r, &msg)?;
                done.push((
                    i,
                    Err(Error::EngineStage {
                        stage,
                        message: msg,
                    }),
                ));
                continue;
            }
            tracing::warn!(stage = %stage, job = %r.job_id, state = %state, "job ended without committing; submitting again");
            self.fail_attempt(&r, &format!("Slurm job {} ended {state}", r.job_id))?;
            let attempt = self.log.last_attempt(&r.key) + 1;
            match self.submit(&r.task, &r.key, attempt) {
                Ok(id) => {
                    r.index_attempt = match self.store.index() {
                        Some(ix) => Some(ix.start_attempt(&r.task.spec.pipeline, &stage, r.key)?),
                        None => None,
                    };
                    r.job_id = id;
                    r.attempt = attempt;
                    self.running.insert(i, r);
                }
                Err(e) => done.push((i, Err(e))),
            }
        }
        Ok(done)
    }

    fn ended(&self, r: &Running, state: &str, committed: bool) -> Result<()> {
        self.log.append(&Event::Ended {
            key: r.key,
            attempt: r.attempt,
            job_id: r.job_id.clone(),
            state: state.to_string(),
            committed,
            at_s: now_s(),
        })
    }

    fn fail_attempt(&self, r: &Running, msg: &str) -> Result<()> {
        if let (Some(ix), Some(a)) = (self.store.index(), r.index_attempt) {
            ix.fail(a, msg)?;
        }
        Ok(())
    }
}

fn earlier(failures: &[(String, String)]) -> String {
    let e: Vec<String> = failures[..failures.len().saturating_sub(1)]
        .iter()
        .map(|(j, s)| format!("job {j} {s}"))
        .collect();
    if e.is_empty() {
        "none".into()
    } else {
        e.join(", ")
    }
}

fn log_path(root: &std::path::Path, r: &Running) -> PathBuf {
    worker::attempt_dir(root, &r.key, r.attempt).join(format!("slurm-{}.out", r.job_id))
}

/// The last lines of a job's log (empty when there is none).
fn log_tail(root: &std::path::Path, r: &Running) -> String {
    const LINES: usize = 15;
    let text = std::fs::read_to_string(log_path(root, r)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LINES)..].join("\n")
}

fn abs(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// What `tyr status` says about a stage's Slurm jobs, from the run log: `None` when it had none.
pub fn status_note(workdir: &std::path::Path, key: &Digest) -> Option<String> {
    let events = runlog::read_events(&RunLog::path_in(workdir));
    let mut jobs = Vec::new();
    for e in events {
        match e {
            Event::Submitted {
                key: k,
                job_id,
                attempt,
                ..
            } if k == *key => jobs.push((job_id, attempt, String::from("submitted"), false)),
            Event::Ended {
                key: k,
                job_id,
                state,
                committed,
                ..
            } if k == *key => {
                if let Some(j) = jobs.iter_mut().rev().find(|j| j.0 == job_id) {
                    j.2 = state;
                    j.3 = committed;
                }
            }
            _ => {}
        }
    }
    if jobs.is_empty() {
        return None;
    }
    let parts: Vec<String> = jobs
        .iter()
        .map(|(j, a, s, c)| {
            let s = if *c { "committed" } else { s.as_str() };
            format!("attempt {a}: Slurm job {j} {s}")
        })
        .collect();
    Some(parts.join("; "))
}

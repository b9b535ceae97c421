//! The executor: runs a validated graph against a store. A tokio coordinator walks the DAG;
//! each ready stage's key is computed from its inputs' output digests and looked up; stages to
//! run go to `spawn_blocking` when their resource tokens are free; their outputs are handed to
//! dependents in memory (and are checkpointed all the same). A failed stage stops its
//! dependents only. Transient outputs are deleted once every consumer has committed.
//!
//! Where an attempt runs is the backend's business: `local` (threads of this process, the
//! tokens and the memory budget above) or `slurm` (one job per attempt, `engine::slurm`; the
//! cluster does the resource accounting). Everything else — keys, lookups, pins, transients,
//! publishing — is the coordinator's, the same for both, so both give the same bits.
//!
//! SIGTERM / SIGINT (`engine::interrupt`): the coordinator stops scheduling, waits for any
//! commit being written (never for a stage's computation: a local stage still computing is
//! abandoned, its progress records kept; a Slurm job keeps running and is adopted by the next
//! run), and returns `Error::EngineInterrupted`. The store is then as consistent as after a
//! kill at any instant, which the crash tests check.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::engine::artifact::{ArtifactSet, Retention};
use crate::engine::fault;
use crate::engine::graph::Graph;
use crate::engine::interrupt;
use crate::engine::job::{self, Committed, Job, Observer, Outcome};
use crate::engine::key::{Digest, KeyParts};
use crate::engine::plan::{Lookup, key_parts, lookup};
use crate::engine::slurm::{ExecutorKind, SlurmBackend, SlurmTask};
use crate::engine::stage::Resources;
use crate::engine::store::Store;
use crate::engine::store::manifest::Manifest;
use crate::engine::worker::JobSpec;
use crate::{Error, Result};

/// What one `run` did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Stage id and outcome, in topological order.
    pub stages: Vec<(String, Outcome)>,
    /// Where published outputs are.
    pub out_dir: PathBuf,
    pub published: Vec<PathBuf>,
}

impl RunReport {
    /// Ids of the stages that actually ran.
    pub fn ran(&self) -> Vec<&str> {
        self.stages
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Ran(_)))
            .map(|(i, _)| i.as_str())
            .collect()
    }

    pub fn failed(&self) -> Vec<String> {
        self.stages
            .iter()
            .filter_map(|(i, o)| match o {
                Outcome::Failed(e) => Some(format!("`{i}`: {e}")),
                _ => None,
            })
            .collect()
    }
}

enum State {
    Pending {
        force: bool,
    },
    Running,
    Done {
        manifest: Box<Manifest>,
        set: Arc<ArtifactSet>,
        available: bool,
        outcome: Outcome,
    },
    Failed(String),
    Skipped(String),
}

/// Runs `graph` in `store` (opened with `OpenMode::Exclusive`) and returns what happened.
/// Stage failures are in the report; `Err` means the store itself failed.
pub fn run(graph: &Graph, store: Arc<Store>, observer: Arc<dyn Observer>) -> Result<RunReport> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(graph.header.cpu_tokens.max(1) as usize + 4)
        .enable_time()
        .build()
        .map_err(|e| Error::msg(format!("starting the tokio runtime: {e}")))?;
    let slurm = match graph.header.executor.kind {
        ExecutorKind::Local => None,
        ExecutorKind::Slurm => Some(SlurmBackend::new(
            store.clone(),
            graph.header.executor.slurm.clone(),
        )?),
    };
    let result = rt.block_on(Coordinator::new(graph, store, observer, slurm).drive());
    if interrupt::requested().is_some() {
        // Abandoned local attempts may still be computing on blocking threads; do not wait.
        rt.shutdown_background();
    }
    result
}

struct Coordinator<'g> {
    graph: &'g Graph,
    store: Arc<Store>,
    observer: Arc<dyn Observer>,
    states: Vec<State>,
    pins: BTreeMap<String, Digest>,
    /// Blob digests some manifest keeps; a transient blob with the same content stays.
    kept: BTreeSet<Digest>,
    free: Resources,
    /// `Some` under the Slurm executor; `None`: local threads.
    slurm: Option<SlurmBackend>,
}

impl<'g> Coordinator<'g> {
    fn new(
        graph: &'g Graph,
        store: Arc<Store>,
        observer: Arc<dyn Observer>,
        slurm: Option<SlurmBackend>,
    ) -> Self {
        let h = &graph.header;
        let (disk, _) = store.disk_manifests();
        let kept = disk
            .values()
            .flat_map(|m| m.outputs.values())
            .filter(|o| o.retention == Retention::Keep)
            .flat_map(|o| o.blobs())
            .map(|b| b.digest)
            .collect();
        let mut pins = store.pins(&h.name);
        pins.retain(|id, _| graph.index_of(id).is_some());
        Self {
            graph,
            states: (0..graph.nodes.len())
                .map(|_| State::Pending { force: false })
                .collect(),
            free: Resources {
                cpu: h.cpu_tokens,
                gpu: h.gpu_tokens,
                mem_bytes: h.mem_budget_bytes,
            },
            store,
            observer,
            pins,
            kept,
            slurm,
        }
    }

    /// A stage's claim on the pools: token counts clamped so a stage wanting more tokens than
    /// a pool holds runs alone; memory as declared (one larger than the budget never starts,
    /// see `over_budget`).
    fn need(&self, i: usize) -> Resources {
        let r = self.graph.nodes[i].resources;
        let h = &self.graph.header;
        Resources {
            cpu: r.cpu.min(h.cpu_tokens),
            gpu: r.gpu.min(h.gpu_tokens),
            mem_bytes: r.mem_bytes,
        }
    }

    /// Why stage `i` cannot run within the memory budget at all, if it cannot.
    fn over_budget(&self, i: usize) -> Option<String> {
        let need = self.graph.nodes[i].resources.mem_bytes;
        let budget = self.graph.header.mem_budget_bytes;
        (need > budget).then(|| {
            format!(
                "needs an estimated {} of memory, more than the budget of {} (raise it with \
                 `--mem-budget` or `pipeline.mem_budget_bytes`, or shrink the settings that \
                 size this stage); it was not started",
                human_bytes(need),
                human_bytes(budget)
            )
        })
    }

    fn fits(&self, n: Resources) -> bool {
        n.cpu <= self.free.cpu && n.gpu <= self.free.gpu && n.mem_bytes <= self.free.mem_bytes
    }

    fn take(&mut self, n: Resources, sign: bool) {
        if sign {
            self.free.cpu -= n.cpu;
            self.free.gpu -= n.gpu;
            self.free.mem_bytes -= n.mem_bytes;
        } else {
            self.free.cpu += n.cpu;
            self.free.gpu += n.gpu;
            self.free.mem_bytes += n.mem_bytes;
        }
    }

    async fn drive(mut self) -> Result<RunReport> {
        let mut running: JoinSet<(usize, Result<Committed>)> = JoinSet::new();
        loop {
            if let Some(sig) = interrupt::requested() {
                return Err(self.interrupted(sig));
            }
            let ready = self.advance()?;
            for (i, parts) in ready {
                if self.slurm.is_some() {
                    self.start_slurm(i, parts)?;
                    continue;
                }
                if let Some(why) = self.over_budget(i) {
                    let id = &self.graph.nodes[i].id;
                    tracing::error!(stage = %id, error = %why, "stage refused");
                    self.observer.finished(id, &Outcome::Failed(why.clone()));
                    self.states[i] = State::Failed(why);
                    continue;
                }
                let need = self.need(i);
                if !self.fits(need) {
                    continue;
                }
                self.take(need, true);
                let job = self.job(i, parts)?;
                self.states[i] = State::Running;
                self.observer.started(&job.id, &job.kind);
                running.spawn_blocking(move || {
                    let r =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job::run(job)));
                    (
                        i,
                        r.unwrap_or_else(|p| {
                            Err(Error::msg(format!("stage panicked: {}", panic_text(&p))))
                        }),
                    )
                });
            }
            self.show_running();
            let settled = if let Some(s) = self.slurm.as_mut() {
                if s.is_idle() {
                    break;
                }
                s.next().await?
            } else {
                {
                    // Wake up now and then to notice a signal while stages compute.
                    let joined = loop {
                        if interrupt::requested().is_some() {
                            break None;
                        }
                        if let Ok(j) =
                            tokio::time::timeout(Duration::from_millis(100), running.join_next())
                                .await
                        {
                            break Some(j);
                        }
                    };
                    match joined {
                        None => continue,
                        Some(None) => break,
                        Some(Some(joined)) => {
                            let (i, result) =
                                joined.map_err(|e| Error::msg(format!("stage task: {e}")))?;
                            self.take(self.need(i), false);
                            vec![(i, result)]
                        }
                    }
                }
            };
            for (i, result) in settled {
                self.settle(i, result)?;
            }
        }
        self.finish()
    }

    /// Records how a started stage ended.
    fn settle(&mut self, i: usize, result: Result<Committed>) -> Result<()> {
        let id = self.graph.nodes[i].id.clone();
        match result {
            Ok(c) => {
                let outcome = Outcome::Ran(c.manifest.duration_s);
                self.observer.finished(&id, &outcome);
                self.kept.extend(
                    c.manifest
                        .outputs
                        .values()
                        .filter(|o| o.retention == Retention::Keep)
                        .flat_map(|o| o.blobs())
                        .map(|b| b.digest),
                );
                self.pin(i, c.manifest.key)?;
                // Blobs are shared by content: a blob this stage found already in the store
                // (another stage's transient output of the same bytes) may have been collected
                // while it ran, before its commit made it live. Then its outputs are incomplete
                // on disk, and a consumer that must run has it run again first (`advance`).
                let available = c
                    .manifest
                    .outputs
                    .values()
                    .flat_map(|o| o.blobs())
                    .all(|b| self.store.blob_path(&b.digest).exists());
                if !available {
                    tracing::info!(stage = %id, "a blob it shares with another stage was collected while it ran");
                }
                let set = if available {
                    c.set
                } else {
                    job::lazy_set(&self.store, &c.manifest, &id)
                };
                self.states[i] = State::Done {
                    manifest: Box::new(c.manifest),
                    set,
                    available,
                    outcome,
                };
                self.collect_transients(i)?;
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(stage = %id, error = %msg, "stage failed");
                self.observer.finished(&id, &Outcome::Failed(msg.clone()));
                self.states[i] = State::Failed(msg);
            }
        }
        Ok(())
    }

    /// Hands stage `i` to the Slurm backend (which submits or adopts a job).
    fn start_slurm(&mut self, i: usize, parts: KeyParts) -> Result<()> {
        let node = &self.graph.nodes[i];
        let mut inputs = BTreeMap::new();
        for b in &node.inputs {
            let mut from = Vec::new();
            for &f in &b.from {
                match &self.states[f] {
                    State::Done { manifest, .. } => {
                        from.push((self.graph.nodes[f].id.clone(), manifest.key))
                    }
                    _ => {
                        return Err(Error::msg(format!(
                            "internal: input `{}` of `{}` not done",
                            self.graph.nodes[f].id, node.id
                        )));
                    }
                }
            }
            inputs.insert(b.slot.clone(), from);
        }
        let params_toml = toml::to_string(&node.params).map_err(|e| Error::EngineStage {
            stage: node.id.clone(),
            message: format!("params cannot be written for a worker: {e}"),
        })?;
        let task = SlurmTask {
            spec: JobSpec {
                pipeline: self.graph.header.name.clone(),
                stage: node.id.clone(),
                kind: node.kind.clone(),
                params_toml,
                parts,
                inputs,
            },
            resources: node.resources,
        };
        self.observer.started(&node.id, &node.kind);
        self.states[i] = State::Running;
        let Some(slurm) = &mut self.slurm else {
            return Err(Error::msg("internal: no Slurm backend"));
        };
        if let Err(e) = slurm.start(i, task) {
            let id = self.graph.nodes[i].id.clone();
            let msg = e.to_string();
            tracing::error!(stage = %id, error = %msg, "stage refused at submit");
            self.observer.finished(&id, &Outcome::Failed(msg.clone()));
            self.states[i] = State::Failed(msg);
        }
        Ok(())
    }

    /// The run stops on signal `sig`: wait for a commit being written, then leave.
    fn interrupted(&self, sig: i32) -> Error {
        // Held until the process exits: no local attempt starts writing a commit after this.
        std::mem::forget(self.store.commit_gate());
        let unfinished: Vec<String> = self
            .states
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, State::Pending { .. } | State::Running))
            .map(|(i, _)| self.graph.nodes[i].id.clone())
            .collect();
        if let Some(s) = &self.slurm {
            for (i, job) in s.job_ids() {
                tracing::info!(stage = %self.graph.nodes[i].id, job = %job, "left running for the next run to adopt");
            }
        }
        self.store.write_running(&[]);
        Error::EngineInterrupted {
            signal: interrupt::name(sig),
            unfinished,
        }
    }

    /// Resolves every pending stage whose inputs are settled: cached, skipped, or ready to
    /// run (returned, in topological order).
    fn advance(&mut self) -> Result<Vec<(usize, KeyParts)>> {
        let graph = self.graph;
        let mut ready = Vec::new();
        for i in 0..graph.nodes.len() {
            let State::Pending { force } = self.states[i] else {
                continue;
            };
            let node = &graph.nodes[i];
            let deps = node.deps();
            if let Some(bad) = deps
                .iter()
                .find(|&&d| matches!(self.states[d], State::Failed(_) | State::Skipped(_)))
            {
                let why = format!("input `{}` did not complete", graph.nodes[*bad].id);
                self.observer
                    .finished(&node.id, &Outcome::Skipped(why.clone()));
                self.states[i] = State::Skipped(why);
                continue;
            }
            if !deps
                .iter()
                .all(|&d| matches!(self.states[d], State::Done { .. }))
            {
                continue;
            }
            let parts = key_parts(graph, i, |d| match &self.states[d] {
                State::Done { manifest, .. } => manifest.output_digest,
                _ => Digest([0; 32]),
            });
            let found = (!force).then(|| lookup(&self.store, &parts, None));
            if let Some(Lookup::Done {
                manifest,
                available,
            }) = found
            {
                let set = job::lazy_set(&self.store, &manifest, &node.id);
                self.observer.finished(&node.id, &Outcome::Cached);
                tracing::info!(stage = %node.id, "cached");
                let key = manifest.key;
                self.states[i] = State::Done {
                    manifest,
                    set,
                    available,
                    outcome: Outcome::Cached,
                };
                self.pin(i, key)?;
                self.collect_transients(i)?;
                continue;
            }
            // It must run; an input whose transient outputs were collected must run again first.
            let mut missing = false;
            for &d in &deps {
                if let State::Done {
                    available: false, ..
                } = self.states[d]
                {
                    tracing::info!(stage = %graph.nodes[d].id, consumer = %node.id, "re-running to restore deleted transient outputs");
                    self.states[d] = State::Pending { force: true };
                    missing = true;
                }
            }
            if missing {
                // Revisit from the start: the re-opened inputs come earlier in topological order.
                return self.advance();
            }
            ready.push((i, parts));
        }
        Ok(ready)
    }

    fn job(&self, i: usize, parts: KeyParts) -> Result<Job> {
        let node = &self.graph.nodes[i];
        let mut inputs = BTreeMap::new();
        for b in &node.inputs {
            let mut sets = Vec::new();
            for &f in &b.from {
                match &self.states[f] {
                    State::Done { set, .. } => sets.push(set.clone()),
                    _ => {
                        return Err(Error::msg(format!(
                            "internal: input `{}` of `{}` not done",
                            self.graph.nodes[f].id, node.id
                        )));
                    }
                }
            }
            inputs.insert(b.slot.clone(), sets);
        }
        Ok(Job {
            id: node.id.clone(),
            kind: node.kind.clone(),
            pipeline: self.graph.header.name.clone(),
            stage: node.stage.clone(),
            parts,
            inputs,
            store: self.store.clone(),
            observer: self.observer.clone(),
        })
    }

    fn show_running(&self) {
        let ids: Vec<&str> = (0..self.states.len())
            .filter(|&i| matches!(self.states[i], State::Running))
            .map(|i| self.graph.nodes[i].id.as_str())
            .collect();
        self.store.write_running(&ids);
    }

    fn pin(&mut self, i: usize, key: Digest) -> Result<()> {
        let id = &self.graph.nodes[i].id;
        if self.pins.get(id) != Some(&key) {
            self.pins.insert(id.clone(), key);
            self.store.write_pins(&self.graph.header.name, &self.pins)?;
        }
        Ok(())
    }

    /// After node `i` settles: for each input whose consumers have all settled, delete its
    /// transient blobs and drop its in-memory outputs.
    fn collect_transients(&mut self, i: usize) -> Result<()> {
        // Transient blobs of committed stages whose consumers are not all done yet.
        let live: BTreeSet<Digest> = (0..self.states.len())
            .filter(|&s| {
                !self.graph.consumers[s]
                    .iter()
                    .all(|&c| matches!(self.states[c], State::Done { .. }))
            })
            .filter_map(|s| match &self.states[s] {
                State::Done { manifest, .. } => Some(manifest),
                _ => None,
            })
            .flat_map(|m| m.outputs.values())
            .filter(|o| o.retention == Retention::Transient)
            .flat_map(|o| o.blobs())
            .map(|b| b.digest)
            .collect();
        for d in self.graph.nodes[i].deps() {
            let all_done = self.graph.consumers[d]
                .iter()
                .all(|&c| matches!(self.states[c], State::Done { .. }));
            if !all_done {
                continue;
            }
            let State::Done {
                manifest,
                set,
                available,
                ..
            } = &mut self.states[d]
            else {
                continue;
            };
            let mut deleted = false;
            for o in manifest
                .outputs
                .values()
                .filter(|o| o.retention == Retention::Transient)
            {
                for b in o.blobs() {
                    // Blobs are shared by content: another stage's output may be these bytes.
                    if !self.kept.contains(&b.digest)
                        && !live.contains(&b.digest)
                        && self.store.blob_path(&b.digest).exists()
                    {
                        fault::hit("transient-before-delete");
                        self.store.remove_blob(&b.digest)?;
                        deleted = true;
                    }
                }
            }
            if deleted {
                *available = false;
            }
            *set = job::lazy_set(&self.store, manifest, &self.graph.nodes[d].id);
        }
        Ok(())
    }

    fn finish(self) -> Result<RunReport> {
        let out_dir = self.store.out_dir(&self.graph.header.name);
        let mut published = Vec::new();
        let mut stages = Vec::new();
        for (i, s) in self.states.into_iter().enumerate() {
            let id = self.graph.nodes[i].id.clone();
            let outcome = match s {
                State::Done {
                    manifest, outcome, ..
                } => {
                    let dirs: Vec<_> = self.graph.nodes[i]
                        .out_dirs
                        .iter()
                        .map(|sub| out_dir.join(sub))
                        .collect();
                    published.extend(job::publish(&self.store, &manifest, &dirs)?);
                    outcome
                }
                State::Failed(e) => Outcome::Failed(e),
                State::Skipped(e) => Outcome::Skipped(e),
                State::Pending { .. } | State::Running => Outcome::Skipped("not reached".into()),
            };
            stages.push((id, outcome));
        }
        Ok(RunReport {
            stages,
            out_dir,
            published,
        })
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// `b` bytes with a binary unit (`1.5 GiB`), for messages.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

//! `ferry run` on Docker: the steps the named ones need, in the order their data flows, those
//! free of each other at the same time within the engine's cores. A step whose key has a
//! cache entry is not run: its outputs come back from the store, checked. A step that runs
//! does so as `ferry train` does (the project image, inputs read-only, outputs staged and
//! checked) with the image's file system read-only besides, and its outputs go into the
//! project and the store only when it succeeded and passed its checks.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use indexmap::IndexMap;
use serde::Serialize;
use tokio::sync::{OnceCell, Semaphore};

use super::train::exists_nonempty;
use super::{LocalError, container_spec, root_key};
use crate::docker::{self, Exit};
use crate::images::build::{self as images, Built};
use crate::interrupt::{Interrupt, Interrupted};
use crate::pipeline::checks::{self, CheckResult};
use crate::pipeline::decide::{Decision, decide};
use crate::pipeline::hashes::Hashes;
use crate::pipeline::key::KeyParts;
use crate::pipeline::record::{
    RunInfo, announce, blank_step, from_cache, judge, key_parts, run_record,
};
pub use crate::pipeline::select::{Options, status_word};
use crate::pipeline::select::{Selection, select};
use crate::pipeline::store::{Entry, Store};
use crate::plan::{VolumePath, Workload, step_workload};
use crate::project_plan::make_plan;
use crate::runs::{self, Output, StepRun, StepStatus, TrainResult, relative};
use crate::spec::{Graph, Project, Step};
use crate::ui::Ui;

/// One step of a dry run.
#[derive(Clone, Debug, Serialize)]
pub struct Planned {
    pub step: String,
    pub runs: bool,
    pub reason: String,
}

pub enum Outcome {
    DryRun(Vec<Planned>),
    /// The run, whether every step succeeded or not (its status says).
    Done(Box<TrainResult>),
}

pub async fn run(project: &Project, opts: &Options, ui: &Ui) -> Result<Outcome, LocalError> {
    let Selection {
        steps,
        graph,
        selected,
        order,
        forced,
    } = select(project, opts)?;

    let mut interrupt = Interrupt::new()?;
    let list: Vec<&Step> = steps.values().collect();
    if order.iter().any(|&i| {
        list[i]
            .outputs
            .iter()
            .any(|o| o.as_str().ends_with(".onnx"))
    }) {
        crate::onnx::init().map_err(|source| runs::RunError::OnnxRuntime { source })?;
    }
    let plan = make_plan(project)?;
    let docker = docker::connect().await?;
    super::engine_platform(&docker, project).await?;
    let workloads: Vec<Workload> = list
        .iter()
        .map(|s| step_workload(project, s, "step"))
        .collect();
    for &i in &order {
        super::check_gpus(&docker, &workloads[i]).await?;
    }
    let env_image = interrupt
        .guard(async {
            Ok::<_, LocalError>(images::ensure_env_image(&docker, project, &plan, ui).await?)
        })
        .await?;
    let info = docker.info().await.ok();
    let cores = info
        .as_ref()
        .and_then(|i| i.ncpu)
        .filter(|n| *n > 0)
        .unwrap_or(1) as u32;
    // MiB the engine has; steps that give `resources.memory` take their share of it.
    let memory_mib = info
        .as_ref()
        .and_then(|i| i.mem_total)
        .filter(|m| *m > 0)
        .map_or(u32::MAX >> 1, |m| {
            (m >> 20).clamp(1, i64::from(u32::MAX >> 1)) as u32
        });
    let id = runs::new_id();
    let store = Store::open(&project.root);
    let ctx = Ctx {
        project,
        docker,
        hashes: Mutex::new(Hashes::load(store.dir())),
        store,
        env_image,
        steps: steps.clone(),
        workloads,
        graph: graph.clone(),
        forced,
        project_image: OnceCell::new(),
        ui,
        run_dir: runs::runs_dir(&project.root).join(&id),
        id,
        running: Mutex::new(BTreeMap::new()),
        stopping: AtomicBool::new(false),
        cpu: Semaphore::new((cores * 1000) as usize),
        cpu_total: cores * 1000,
        memory: Semaphore::new(memory_mib as usize),
        memory_total: memory_mib,
        width: order
            .iter()
            .map(|&i| graph.names[i].len())
            .max()
            .unwrap_or(4),
    };
    if opts.dry_run {
        let planned = ctx.dry_run(&order);
        ctx.hashes.lock().map(|mut h| h.save()).ok();
        return Ok(Outcome::DryRun(planned));
    }

    std::fs::create_dir_all(&ctx.run_dir).map_err(LocalError::io("cannot create", &ctx.run_dir))?;
    let started = runs::now_rfc3339();
    let clock = Instant::now();
    let n = graph.names.len();
    let mut results: Vec<Option<StepRun>> = vec![None; n];
    // 0: waiting, 1: running, 2: done.
    let mut state = vec![0u8; n];
    let c = &ctx;
    let mut futs = FuturesUnordered::new();
    let interrupted = loop {
        let mut changed = true;
        while changed {
            changed = false;
            for &i in &order {
                if state[i] != 0 {
                    continue;
                }
                let deps: Vec<usize> = graph.deps[i]
                    .iter()
                    .copied()
                    .filter(|d| selected.contains(d))
                    .collect();
                if !deps.iter().all(|&d| state[d] == 2) {
                    continue;
                }
                changed = true;
                state[i] = 2;
                if let Some(&d) = deps
                    .iter()
                    .find(|&&d| !results[d].as_ref().is_some_and(|r| r.status.succeeded()))
                {
                    results[i] = Some(c.skipped(
                        i,
                        format!("needs `{}`, which did not succeed", graph.names[d]),
                    ));
                } else if c.stopping.load(Ordering::SeqCst) {
                    results[i] =
                        Some(c.skipped(i, "not started: another step failed (--fail-fast)".into()));
                } else {
                    state[i] = 1;
                    futs.push(async move { (i, c.step(i).await) });
                }
            }
        }
        if futs.is_empty() {
            break false;
        }
        tokio::select! {
            Some((i, r)) = futs.next() => {
                announce(c.ui, &r);
                if !r.status.succeeded() && opts.fail_fast && !c.stopping.swap(true, Ordering::SeqCst) {
                    c.stop_running().await;
                }
                results[i] = Some(r);
                state[i] = 2;
            }
            _ = interrupt.recv() => break true,
        }
    };
    drop(futs);
    if interrupted {
        ctx.stop_running().await;
        for &i in &order {
            if results[i].is_none() {
                let mut r = ctx.skipped(i, "interrupted".into());
                if state[i] == 1 {
                    r.status = StepStatus::Interrupted;
                    let _ = std::fs::remove_dir_all(ctx.run_dir.join(&graph.names[i]).join("out"));
                }
                results[i] = Some(r);
            }
        }
    }
    ctx.hashes.lock().map(|mut h| h.save()).ok();

    let steps_run: Vec<StepRun> = order.iter().filter_map(|&i| results[i].take()).collect();
    let info = RunInfo {
        id: ctx.id.clone(),
        started,
        duration_secs: clock.elapsed().as_secs_f64(),
        env: project.spec.env.clone(),
        image: ctx.env_image.tag.clone(),
        image_id: ctx.env_image.id.clone(),
        spec_hash: project.hash()?.to_string(),
        log: relative(&project.root, &ctx.run_dir),
    };
    let record = run_record(info, steps_run, interrupted);
    let path = record.save(&project.root)?;
    if interrupted {
        return Err(Interrupted.into());
    }
    // The outputs may be the models the environment serves: the lock takes their sha256 and
    // the run that made them.
    crate::lock::update_entry(project, |_| {})?;
    Ok(Outcome::Done(Box::new(TrainResult {
        run: record,
        record: path,
    })))
}

struct Ctx<'a> {
    project: &'a Project,
    docker: bollard::Docker,
    env_image: Built,
    steps: IndexMap<String, Step>,
    workloads: Vec<Workload>,
    graph: Graph,
    forced: BTreeSet<usize>,
    store: Store,
    hashes: Mutex<Hashes>,
    /// Made when the first step must run; a fully cached run never writes it.
    project_image: OnceCell<Built>,
    ui: &'a Ui,
    id: String,
    run_dir: PathBuf,
    /// Step name → container name, for the ones running now.
    running: Mutex<BTreeMap<String, String>>,
    stopping: AtomicBool,
    /// Thousandths of a core the running steps may take together.
    cpu: Semaphore,
    cpu_total: u32,
    /// MiB of the engine's memory the running steps that declare theirs may take together.
    memory: Semaphore,
    memory_total: u32,
    width: usize,
}

impl Ctx<'_> {
    fn name(&self, i: usize) -> &str {
        &self.graph.names[i]
    }

    fn blank(&self, i: usize) -> StepRun {
        blank_step(&self.graph, i)
    }

    fn skipped(&self, i: usize, reason: String) -> StepRun {
        StepRun {
            status: StepStatus::Skipped,
            reason: Some(reason),
            ..self.blank(i)
        }
    }

    /// The key of step `i` from its inputs as the project holds them now.
    fn parts(&self, i: usize) -> Result<KeyParts, LocalError> {
        let mut h = self.hashes.lock().unwrap_or_else(|p| p.into_inner());
        Ok(key_parts(
            self.project,
            &mut h,
            &self.env_image.id,
            &self.steps[i],
            &self.workloads[i].env,
        )?)
    }

    fn dry_run(&self, order: &[usize]) -> Vec<Planned> {
        let mut runs = BTreeSet::new();
        let mut out = Vec::new();
        for &i in order {
            let upstream = self.graph.deps[i].iter().find(|d| runs.contains(*d));
            let (will, reason) = match self.parts(i) {
                Err(e) => (true, format!("its inputs cannot be read: {e}")),
                Ok(parts) => {
                    match decide(&self.store, self.name(i), &parts, self.forced.contains(&i)) {
                        Decision::Run(r) => (true, r),
                        Decision::Cached(_) => match upstream {
                            Some(&d) => (
                                true,
                                format!("after `{}` runs, if its outputs change", self.name(d)),
                            ),
                            None => (false, "cached".to_string()),
                        },
                    }
                }
            };
            if will {
                runs.insert(i);
            }
            out.push(Planned {
                step: self.name(i).to_string(),
                runs: will,
                reason,
            });
        }
        out
    }

    /// Decides and, unless cached, runs step `i`.
    async fn step(&self, i: usize) -> StepRun {
        let clock = Instant::now();
        let mut run = self.blank(i);
        let parts = match self.parts(i) {
            Ok(p) => p,
            Err(e) => {
                run.reason = Some(format!("cannot read its inputs: {e}"));
                return finish(run, clock);
            }
        };
        run.key = Some(parts.key());
        run.inputs = parts.inputs.clone();
        let reason = match decide(&self.store, self.name(i), &parts, self.forced.contains(&i)) {
            Decision::Cached(entry) => {
                let mut h = self.hashes.lock().unwrap_or_else(|p| p.into_inner());
                match from_cache(
                    self.project,
                    &self.store,
                    &mut h,
                    &self.steps[i],
                    &entry,
                    &mut run,
                ) {
                    Ok(Ok(())) => return finish(run, clock),
                    Ok(Err(damaged)) => format!("{}; running it again", damaged.0),
                    Err(e) => {
                        run.reason = Some(e.to_string());
                        return finish(run, clock);
                    }
                }
            }
            Decision::Run(r) => r,
        };
        run.reason = Some(reason.clone());
        self.ui.info(format!(
            "{} {}: {reason}",
            console::style("▶").cyan(),
            self.name(i)
        ));
        if let Err(why) = self.execute(i, &parts, &mut run).await {
            run.status = StepStatus::Failed;
            run.reason = Some(why);
            run.outputs.clear();
        }
        finish(run, clock)
    }

    /// Records the checks; a failed one fails the step.
    fn judge(&self, run: &mut StepRun, checks: Vec<CheckResult>, kept: Option<&Path>) {
        let kept = kept.map(|k| relative(&self.project.root, k));
        judge(run, checks, kept.as_deref());
    }

    /// Runs step `i`'s container and, when it succeeded and passed its checks, places its
    /// outputs and caches them. `Err` is why it failed.
    async fn execute(&self, i: usize, parts: &KeyParts, run: &mut StepRun) -> Result<(), String> {
        let name = self.name(i).to_string();
        let step = &self.steps[i];
        let work = &self.workloads[i];
        let root = &self.project.root;
        let want = step
            .resources
            .cpu
            .as_ref()
            .map_or(1000, |c| c.millis as u32)
            .clamp(1, self.cpu_total);
        let _permit = self
            .cpu
            .acquire_many(want)
            .await
            .map_err(|e| e.to_string())?;
        let mib = step.resources.memory.as_ref().map_or(0, |m| {
            (m.bytes >> 20).clamp(1, u64::from(self.memory_total)) as u32
        });
        let _memory = self
            .memory
            .acquire_many(mib)
            .await
            .map_err(|e| e.to_string())?;
        if self.stopping.load(Ordering::SeqCst) {
            return Err("not started: another step failed (--fail-fast)".into());
        }
        let image = self
            .project_image
            .get_or_try_init(|| async {
                images::ensure_project_image(&self.docker, self.project, &self.env_image, self.ui)
                    .await
            })
            .await
            .map_err(|e| format!("the project image: {e}"))?;
        run.image = Some(image.tag.clone());

        let dir = self.run_dir.join(&name);
        let staging = dir.join("out");
        let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
        std::fs::create_dir_all(&staging).map_err(|e| io("cannot create", &staging, e))?;
        for v in &work.volumes {
            if let (VolumePath::Sub(p), false) = (&v.path, v.read_only) {
                let d = p.under(&staging);
                std::fs::create_dir_all(&d).map_err(|e| io("cannot create", &d, e))?;
            }
        }
        let log_path = self.run_dir.join(format!("{name}.log"));
        run.log = Some(relative(root, &log_path));
        let mut log =
            std::fs::File::create(&log_path).map_err(|e| io("cannot create", &log_path, e))?;
        let cname = format!(
            "ferry-{}-{}-{name}-{}",
            self.project.spec.name,
            root_key(root),
            self.id
        );
        let writable: Vec<&VolumePath> = work
            .volumes
            .iter()
            .filter(|v| !v.read_only)
            .map(|v| &v.path)
            .collect();
        let mut spec = container_spec(self.project, work, &image.tag, cname.clone(), |v| match v {
            VolumePath::Project => root.clone(),
            VolumePath::Sub(p) if writable.contains(&v) => p.under(&staging),
            VolumePath::Sub(p) => p.under(root),
        });
        spec.read_only_root = true;
        spec.tmpfs = vec!["/tmp".into()];
        // Libraries that keep caches under $HOME get a writable one.
        spec.env
            .entry("HOME".into())
            .or_insert_with(|| "/tmp".into());

        self.lock_running().insert(name.clone(), cname.clone());
        let outcome = self.container(&spec, &name, &mut log).await;
        self.lock_running().remove(&name);
        let _ = docker::remove_container(&self.docker, &cname).await;
        let _ = log.flush();
        let exit = match outcome {
            Ok(exit) => exit,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(if self.stopping.load(Ordering::SeqCst) {
                    "stopped: another step failed (--fail-fast)".into()
                } else {
                    e
                });
            }
        };
        run.exit_code = Some(exit.code);
        let executed = work.notebook.as_ref().and_then(|nb| {
            let to = self.run_dir.join(format!("{name}.ipynb"));
            std::fs::rename(nb.executed.under(&staging), &to).ok()?;
            Some(relative(root, &to))
        });
        run.notebook = executed.clone();
        if exit.code != 0 || exit.oom_killed {
            let _ = std::fs::remove_dir_all(&staging);
            if self.stopping.load(Ordering::SeqCst) {
                return Err("stopped: another step failed (--fail-fast)".into());
            }
            return Err(match &work.notebook {
                Some(nb) => crate::notebook::failure_reason(
                    nb,
                    &log_path,
                    executed.as_deref(),
                    exit.describe(&format!("pipeline.{name}.resources.memory")),
                ),
                None => {
                    let mut why = exit.describe(&format!("pipeline.{name}.resources.memory"));
                    if let Some(last) = last_line(&log_path) {
                        why.push_str(&format!("; its last line: {last}"));
                    }
                    why
                }
            });
        }
        // Everything is checked before anything moves, so a step is collected whole or not.
        for out in &step.outputs {
            let staged = out.under(&staging);
            if !exists_nonempty(&staged) {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(format!(
                    "the command succeeded but did not write the declared output {out} (pipeline.{name}.outputs)"
                ));
            }
            if out.as_str().ends_with(".onnx")
                && let Err(e) = crate::onnx::check_model(&staged)
            {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(format!("{out} does not load in ONNX Runtime: {e}"));
            }
        }
        let results = checks::evaluate(&staging, &step.parsed_checks());
        run.status = StepStatus::Ran;
        self.judge(run, results, Some(&staging));
        if run.status == StepStatus::Failed {
            return Err(run.reason.clone().unwrap_or_default());
        }
        for out in &step.outputs {
            runs::place_output(&staging, root, out).map_err(|e| e.to_string())?;
        }
        let _ = std::fs::remove_dir_all(&staging);
        let mut outputs: Vec<Output> = Vec::new();
        {
            let mut h = self.hashes.lock().unwrap_or_else(|p| p.into_inner());
            for out in &step.outputs {
                outputs.extend(h.tree(root, out).map_err(|e| e.to_string())?);
            }
        }
        let entry = Entry {
            step: name.clone(),
            key: parts.key(),
            parts: parts.clone(),
            outputs: outputs.clone(),
            run: self.id.clone(),
            created: runs::now_rfc3339(),
        };
        // A step whose results cannot be cached still succeeded; the next run does it again.
        if let Err(e) = self.store.save(&entry, root) {
            self.ui
                .warn(format!("{name}: its outputs were not cached: {e}"));
        }
        run.outputs = outputs;
        Ok(())
    }

    /// Creates, starts and follows one container to its end, its output prefixed by the
    /// step's name and kept in the step's log.
    async fn container(
        &self,
        spec: &docker::ContainerSpec,
        name: &str,
        log: &mut std::fs::File,
    ) -> Result<Exit, String> {
        let cid = docker::run_spec(&self.docker, spec)
            .await
            .map_err(|e| e.to_string())?;
        let show = self.ui.is_human();
        let prefix = format!("{:>w$} │", name, w = self.width);
        docker::follow_logs(&self.docker, &cid, |line| {
            // The log file is the record of the step; a write failure must not stop it.
            let _ = writeln!(log, "{line}");
            if show {
                eprintln!("{} {line}", console::style(&prefix).dim());
            }
        })
        .await
        .map_err(|e| e.to_string())?;
        docker::wait_exit(&self.docker, &cid)
            .await
            .map_err(|e| e.to_string())
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes every step container running now (Ctrl-C, or --fail-fast after a failure).
    async fn stop_running(&self) {
        let names: Vec<String> = self.lock_running().values().cloned().collect();
        for n in names {
            let _ = docker::remove_container(&self.docker, &n).await;
        }
    }
}

/// The last non-empty line of a log, trimmed to a readable length.
fn last_line(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    Some(if line.chars().count() > 200 {
        format!("{}…", line.chars().take(200).collect::<String>())
    } else {
        line.to_string()
    })
}

fn finish(mut run: StepRun, clock: Instant) -> StepRun {
    run.duration_secs = (clock.elapsed().as_secs_f64() * 100.0).round() / 100.0;
    run
}

//! `ferry train`: the training command in the project image, inputs read-only, outputs written
//! to a staging directory and moved into the project only when the run succeeded and every
//! declared output is there (and, for ONNX files, loads). A failed or interrupted run therefore
//! never replaces a good model with a bad one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{LocalError, container_spec, root_key};
use crate::docker::{self, Exit};
use crate::images::build as images;
use crate::interrupt::{Interrupt, Interrupted};
use crate::notebook::{self, Request};
use crate::plan::VolumePath;
use crate::project_plan::{PlanError, make_plan_with};
use crate::runs::{self, Output, RunError, RunRecord, Status, TrainResult, place_output, relative};
use crate::spec::{Project, RelPath, sha256_file};
use crate::ui::Ui;

/// Runs the training workload: `train.command`, or `notebook` in its place.
pub async fn train(
    project: &Project,
    notebook: Option<&Request>,
    ui: &Ui,
) -> Result<TrainResult, LocalError> {
    prepare_inputs(project, ui).await?;
    let mut interrupt = Interrupt::new()?;
    crate::project_plan::check_train_inputs(project)?;
    let plan = make_plan_with(project, notebook)?;
    let Some(work) = plan.train.clone() else {
        return Err(PlanError::MissingSection {
            file: project.file.clone(),
            section: "train",
            hint: "add `train:` with a `command` and its `outputs` (see `ferry init --template churn`)",
        }
        .into());
    };
    // Outputs are checked with ONNX Runtime after the run; find out now, not after an hour of
    // training, that it is missing.
    if work.outputs.iter().any(|o| o.as_str().ends_with(".onnx")) {
        crate::onnx::init().map_err(|source| RunError::OnnxRuntime { source })?;
    }
    let spec_hash = project.hash()?.to_string();
    let docker = docker::connect().await?;
    super::engine_platform(&docker, project).await?;
    super::check_gpus(&docker, &work).await?;
    let image = interrupt
        .guard(async {
            let env = images::ensure_env_image(&docker, project, &plan, ui).await?;
            Ok::<_, LocalError>(images::ensure_project_image(&docker, project, &env, ui).await?)
        })
        .await?;

    let id = runs::new_id();
    let run_dir = runs::runs_dir(&project.root).join(&id);
    let staging = run_dir.join("out");
    std::fs::create_dir_all(&staging).map_err(LocalError::io("cannot create", &staging))?;
    let log_path = run_dir.join("train.log");
    // A notebook run keeps its executed notebook beside the log, whatever the outcome.
    let kept = work.notebook.as_ref().map(|nb| {
        let name = nb
            .executed
            .as_str()
            .rsplit('/')
            .next()
            .unwrap_or("notebook.ipynb");
        (nb.executed.under(&staging), run_dir.join(name))
    });
    let keep_notebook = || {
        if let Some((from, to)) = &kept {
            // Absent when the run ended before the first cell: nothing to keep then.
            let _ = std::fs::rename(from, to);
        }
        kept.as_ref()
            .filter(|(_, to)| to.exists())
            .map(|(_, to)| relative(&project.root, to))
    };
    let mut log =
        std::fs::File::create(&log_path).map_err(LocalError::io("cannot create", &log_path))?;
    for v in &work.volumes {
        if let (VolumePath::Sub(p), false) = (&v.path, v.read_only) {
            let d = p.under(&staging);
            std::fs::create_dir_all(&d).map_err(LocalError::io("cannot create", &d))?;
        }
    }

    let name = format!(
        "ferry-{}-{}-train-{}",
        project.spec.name,
        root_key(&project.root),
        id
    );
    let root = project.root.clone();
    let spec = container_spec(project, &work, &image.tag, name, |v| match v {
        VolumePath::Project => root.clone(),
        VolumePath::Sub(p) if is_output_dir(&work.volumes, p) => p.under(&staging),
        VolumePath::Sub(p) => p.under(&root),
    });

    let started = runs::now_rfc3339();
    let clock = Instant::now();
    let record = |status, exit: Option<&Exit>, reason: Option<String>, outputs| RunRecord {
        id: id.clone(),
        status,
        started: started.clone(),
        duration_secs: (clock.elapsed().as_secs_f64() * 100.0).round() / 100.0,
        env: project.spec.env.clone(),
        image: image.tag.clone(),
        image_id: image.id.clone(),
        spec_hash: spec_hash.clone(),
        command: work.argv.clone(),
        exit_code: exit.map(|e| e.code),
        reason,
        outputs,
        log: relative(&project.root, &log_path),
        notebook: kept
            .as_ref()
            .filter(|(_, to)| to.exists())
            .map(|(_, to)| relative(&project.root, to)),
        steps: Vec::new(),
        score: None,
    };

    ui.info(format!(
        "{} run {id} in {}",
        console::style("▶").cyan(),
        image.tag
    ));
    let cid = match interrupt
        .guard(async { Ok::<_, LocalError>(docker::run_spec(&docker, &spec).await?) })
        .await
    {
        Ok(id) => id,
        Err(e) => {
            // Stopped between create and start: the container may exist; remove it by name.
            let _ = docker::remove_container(&docker, &spec.name).await;
            let _ = std::fs::remove_dir_all(&staging);
            let status = match e {
                LocalError::Interrupted(_) => Status::Interrupted,
                _ => Status::Failed,
            };
            record(status, None, Some(e.to_string()), vec![]).save(&project.root)?;
            return Err(e);
        }
    };
    let show = ui.is_human();
    let follow = docker::follow_logs(&docker, &cid, |line| {
        // The log file is the record of the run; a write failure must not stop the run.
        let _ = writeln!(log, "{line}");
        if show {
            eprintln!("{} {line}", console::style("│").dim());
        }
    });
    let outcome = tokio::select! {
        r = follow => Some(r),
        _ = interrupt.recv() => None,
    };
    let exit = match outcome {
        None => {
            let _ = docker::remove_container(&docker, &cid).await;
            keep_notebook();
            let _ = std::fs::remove_dir_all(&staging);
            record(
                Status::Interrupted,
                None,
                Some("interrupted".into()),
                vec![],
            )
            .save(&project.root)?;
            return Err(Interrupted.into());
        }
        Some(r) => {
            let exit = match r {
                Ok(()) => docker::wait_exit(&docker, &cid).await,
                Err(e) => Err(e),
            };
            let _ = docker::remove_container(&docker, &cid).await;
            match exit {
                Ok(exit) => exit,
                Err(e) => {
                    // The daemon went away (or failed) mid-run: how the command ended is
                    // unknown, so the run failed; its log so far is kept, its outputs are not.
                    let _ = log.flush();
                    keep_notebook();
                    let _ = std::fs::remove_dir_all(&staging);
                    record(Status::Failed, None, Some(e.to_string()), vec![])
                        .save(&project.root)?;
                    return Err(e.into());
                }
            }
        }
    };
    let _ = log.flush();

    let executed = keep_notebook();
    let fail = |reason: String, exit: &Exit| -> Result<PathBuf, RunError> {
        let _ = std::fs::remove_dir_all(&staging);
        record(Status::Failed, Some(exit), Some(reason), vec![]).save(&project.root)
    };
    if exit.code != 0 || exit.oom_killed {
        let reason = match &work.notebook {
            Some(nb) => notebook::failure_reason(
                nb,
                &log_path,
                executed.as_deref(),
                exit.describe("train.resources.memory"),
            ),
            None => exit.describe("train.resources.memory"),
        };
        fail(reason.clone(), &exit)?;
        return Err(RunError::TrainFailed {
            code: if exit.code == 0 { 1 } else { exit.code },
            reason,
            log: log_path,
        }
        .into());
    }

    // Check everything before moving anything, so a run is collected whole or not at all.
    for out in &work.outputs {
        let staged = out.under(&staging);
        if !exists_nonempty(&staged) {
            let reason = format!(
                "the command succeeded but did not write the declared output {out} (train.outputs)"
            );
            fail(reason.clone(), &exit)?;
            return Err(RunError::TrainFailed {
                code: 1,
                reason,
                log: log_path,
            }
            .into());
        }
        if out.as_str().ends_with(".onnx")
            && let Err(source) = crate::onnx::check_model(&staged)
        {
            fail(
                format!("{out} does not load in ONNX Runtime: {source}"),
                &exit,
            )?;
            return Err(RunError::BadModel {
                source,
                log: log_path,
            }
            .into());
        }
    }
    let mut outputs = Vec::new();
    for out in &work.outputs {
        collect(&staging, &project.root, out, &mut outputs)?;
    }
    let _ = std::fs::remove_dir_all(&staging);
    let rec = record(Status::Succeeded, Some(&exit), None, outputs);
    let path = rec.save(&project.root)?;
    // The outputs are the models the environment serves next: the lock takes their sha256.
    crate::lock::update_entry(project, |_| {})?;
    Ok(TrainResult {
        run: rec,
        record: path,
    })
}

/// Runs the pipeline steps whose outputs training reads (cached when nothing they depend on
/// changed), so `ferry train` works on a project whose data a `prepare` step makes.
async fn prepare_inputs(project: &Project, ui: &Ui) -> Result<(), LocalError> {
    if project.spec.train.is_none() || project.spec.pipeline.is_empty() {
        return Ok(());
    }
    let steps = project.spec.steps();
    let graph = crate::spec::Graph::new(&steps);
    let Some(train) = graph.index(crate::spec::TRAIN_STEP) else {
        return Ok(());
    };
    let upstream: Vec<String> = graph
        .needed(&[train])
        .into_iter()
        .filter(|&i| i != train)
        .map(|i| graph.names[i].clone())
        .collect();
    if upstream.is_empty() {
        return Ok(());
    }
    ui.info(format!(
        "{} training reads what {} makes: running {} first (cached when nothing changed)",
        console::style("▶").cyan(),
        upstream.join(", "),
        if upstream.len() == 1 { "it" } else { "them" }
    ));
    let opts = super::pipeline::Options {
        steps: upstream,
        ..Default::default()
    };
    if let super::pipeline::Outcome::Done(r) = super::pipeline::run(project, &opts, ui).await?
        && r.run.status != Status::Succeeded
    {
        return Err(LocalError::StepsFirst {
            reason: r.run.reason.clone().unwrap_or_else(|| "failed".into()),
            record: r.record.clone(),
        });
    }
    Ok(())
}

fn is_output_dir(volumes: &[crate::plan::Volume], p: &RelPath) -> bool {
    volumes
        .iter()
        .any(|v| !v.read_only && v.path == VolumePath::Sub(p.clone()))
}

/// Whether an output is there: a file, or a directory with something in it.
pub(super) fn exists_nonempty(p: &Path) -> bool {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_some()),
        Ok(_) => true,
        Err(_) => false,
    }
}

/// Moves one declared output from staging into the project and records what it moved.
fn collect(
    staging: &Path,
    root: &Path,
    out: &RelPath,
    outputs: &mut Vec<Output>,
) -> Result<(), LocalError> {
    let to = place_output(staging, root, out)?;
    if to.is_dir() {
        let mut files = Vec::new();
        crate::pipeline::hashes::list_files(&to, &mut files)
            .map_err(LocalError::io("cannot read", &to))?;
        files.sort();
        for f in files {
            outputs.push(describe(root, &f)?);
        }
    } else {
        outputs.push(describe(root, &to)?);
    }
    Ok(())
}

fn describe(root: &Path, path: &Path) -> Result<Output, LocalError> {
    let meta = std::fs::metadata(path).map_err(LocalError::io("cannot read", path))?;
    Ok(Output {
        path: path
            .strip_prefix(root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned(),
        sha256: sha256_file(path).map_err(LocalError::io("cannot hash", path))?,
        size: meta.len(),
    })
}

//! `ferry run --env ENV`: the pipeline's steps in a cluster, one Job each, in the order their
//! data flows. The keys, the cache and the records are the local run's: a step cached on this
//! machine (or by an earlier cluster run) is not run, its outputs are placed from the store.
//!
//! Steps hand their outputs to each other through images rather than a shared volume: a step
//! that runs gets the project image plus one layer holding its inputs as this machine has them
//! (the outputs of the steps before it, collected and checked, or restored from the store),
//! pushed and run by digest. It needs no storage class, no volume shared between nodes and no
//! copying into a pod, and the pod reads exactly the bytes its key names. Its outputs come back
//! as `ferry train --env` brings them (every file's sha256 checked), into the project and the
//! store; Ctrl-C deletes the running Job and records the run interrupted.

use std::time::Instant;

use super::record::Run;
use super::{Finished, finish_job, run_job};
use crate::cluster::{ClusterError, require_cluster};
use crate::docker;
use crate::images::build as images;
use crate::images::push;
use crate::interrupt::{Interrupt, Interrupted};
use crate::kube::client;
use crate::pipeline::checks;
use crate::pipeline::decide::{Decision, decide};
use crate::pipeline::hashes::Hashes;
use crate::pipeline::record::{
    RunInfo, announce, blank_step, from_cache, judge, key_parts, run_record,
};
use crate::pipeline::select::{Options, Selection, select};
use crate::pipeline::store::{Entry, Store};
use crate::plan::step_workload;
use crate::project_plan::make_plan;
use crate::runs::{self, Output, RunError, StepRun, StepStatus, TrainResult, relative};
use crate::spec::Project;
use crate::ui::Ui;

/// Runs the selected steps in the environment's cluster; the record says how each went.
pub async fn run(project: &Project, opts: &Options, ui: &Ui) -> Result<TrainResult, ClusterError> {
    let mut interrupt = Interrupt::new()?;
    let env = require_cluster(project)?;
    let registry = crate::cluster::registry(project, &env)?;
    let Selection {
        steps,
        graph,
        order,
        forced,
        ..
    } = select(project, opts)?;
    let plan = make_plan(project)?;
    super::image::check_secrets_not_in_image(project)?;
    if order.iter().any(|&i| {
        steps[i]
            .outputs
            .iter()
            .any(|o| o.as_str().ends_with(".onnx"))
    }) {
        crate::onnx::init().map_err(|source| RunError::OnnxRuntime { source })?;
    }
    let secrets = crate::cluster::environment_secrets(project)?;
    let spec_hash = project.hash()?.to_string();

    // The cluster first: minutes of building and pushing are wasted on an unreachable one.
    let kube = client::connect(project.spec.context.as_deref()).await?;
    let docker = docker::connect().await?;
    let engine = docker::engine_platform(&docker).await?;
    let chosen =
        crate::cluster::platform::for_project_image(project, &env, &kube, engine, ui).await?;
    let (env_image, project_image) = tokio::select! {
        r = async {
            let e = images::ensure_env_image(&docker, project, &plan, ui).await?;
            let p = images::ensure_project_image(&docker, project, &e, ui).await?;
            Ok::<_, ClusterError>((e, p))
        } => r?,
        _ = interrupt.recv() => return Err(Interrupted.into()),
    };
    let repository = format!(
        "{}/{}-steps",
        registry.trim_end_matches('/'),
        project.spec.name
    );

    let id = runs::new_id();
    let run_dir = runs::runs_dir(&project.root).join(&id);
    std::fs::create_dir_all(&run_dir).map_err(RunError::io("cannot create", &run_dir))?;
    let store = Store::open(&project.root);
    let mut hashes = Hashes::load(store.dir());
    let started = runs::now_rfc3339();
    let clock = Instant::now();
    let mut results: Vec<StepRun> = Vec::new();
    let mut interrupted = false;

    for &i in &order {
        let name = graph.names[i].clone();
        let step = &steps[i];
        let work = step_workload(project, step, "train");
        let step_clock = Instant::now();
        let mut rec = blank_step(&graph, i);
        let finish = |mut r: StepRun| {
            r.duration_secs = (step_clock.elapsed().as_secs_f64() * 100.0).round() / 100.0;
            r
        };
        let done = |r: StepRun, results: &mut Vec<StepRun>| {
            let r = finish(r);
            announce(ui, &r);
            results.push(r);
        };
        if interrupted {
            rec.status = StepStatus::Skipped;
            rec.reason = Some("interrupted".into());
            results.push(finish(rec));
            continue;
        }
        if let Some(d) = rec.needs.iter().find(|d| {
            !results
                .iter()
                .any(|r| &r.name == *d && r.status.succeeded())
        }) {
            rec.status = StepStatus::Skipped;
            rec.reason = Some(format!("needs `{d}`, which did not succeed"));
            results.push(finish(rec));
            continue;
        }

        // The key from the inputs as this machine holds them: the same key as a local run's.
        let parts = key_parts(project, &mut hashes, &env_image.id, step, &work.env)?;
        rec.key = Some(parts.key());
        rec.inputs = parts.inputs.clone();
        let reason = match decide(&store, &name, &parts, forced.contains(&i)) {
            Decision::Cached(entry) => {
                match from_cache(project, &store, &mut hashes, step, &entry, &mut rec)? {
                    Ok(()) => {
                        done(rec, &mut results);
                        continue;
                    }
                    Err(damaged) => format!("{}; running it again", damaged.0),
                }
            }
            Decision::Run(r) => r,
        };
        ui.info(format!("{} {name}: {reason}", console::style("▶").cyan()));
        rec.reason = Some(reason);

        // Its inputs, as the key names them, in a layer over the project image.
        let files: Vec<(String, std::path::PathBuf)> = parts
            .inputs
            .iter()
            .map(|o| (o.path.clone(), project.root.join(&o.path)))
            .collect();
        let pushed = tokio::select! {
            r = async {
                let image = crate::images::code::with_files(&docker, project, &project_image, &files, ui).await?;
                let pushed = push::push(&docker, &image.tag, &repository, ui).await;
                // The cluster pulls it from the registry: here it would only pile up (its
                // layers below the inputs' stay, the project image's).
                let _ = docker
                    .remove_image(
                        &image.tag,
                        Some(bollard::query_parameters::RemoveImageOptionsBuilder::default().build()),
                        None,
                    )
                    .await;
                Ok::<_, ClusterError>(pushed?)
            } => r,
            _ = interrupt.recv() => Err(Interrupted.into()),
        };
        let pushed = match pushed {
            Ok(p) => p,
            Err(ClusterError::Interrupted(_)) => {
                interrupted = true;
                rec.status = StepStatus::Interrupted;
                rec.reason = Some("interrupted".into());
                results.push(finish(rec));
                continue;
            }
            Err(e) => {
                rec.reason = Some(e.to_string());
                done(rec, &mut results);
                continue;
            }
        };
        rec.image = Some(pushed.reference.clone());
        let placement = super::placement(
            project,
            &env,
            &pushed.reference,
            secrets.as_ref(),
            chosen.run_on.clone(),
        );
        let job_id = format!("{id}-{name}");
        let run = Run::new(
            project,
            &format!("{id}/{name}"),
            &work,
            &pushed.reference,
            &project_image.id,
            &spec_hash,
        )?;
        rec.log = Some(relative(&project.root, &run.log_path));
        let finished = run_job(
            &kube,
            &placement,
            secrets.as_ref(),
            &work,
            &job_id,
            &run,
            &mut interrupt,
            ui,
        )
        .await;
        let Finished { ctx, pod, files } = match finished {
            Ok(f) => f,
            Err(failure) => {
                let _ = std::fs::remove_dir_all(&run.staging);
                if matches!(failure, super::record::Failure::Interrupted) {
                    interrupted = true;
                    rec.status = StepStatus::Interrupted;
                }
                if let super::record::Failure::Train { code, .. } = &failure {
                    rec.exit_code = Some(*code);
                }
                rec.reason = Some(failure.describe());
                done(rec, &mut results);
                continue;
            }
        };
        rec.exit_code = Some(0);
        if let (Some(nb), Some(to)) = (&work.notebook, &run.notebook)
            && std::fs::rename(nb.executed.under(&run.staging), to).is_ok()
        {
            rec.notebook = Some(relative(&project.root, to));
        }
        // Checked where they arrived, before anything moves into the project.
        rec.status = StepStatus::Ran;
        let kept = relative(&project.root, &run.staging);
        judge(
            &mut rec,
            checks::evaluate(&run.staging, &step.parsed_checks()),
            Some(&kept),
        );
        if rec.status == StepStatus::Failed {
            finish_job(&ctx, &pod, &mut interrupt, ui).await;
            done(rec, &mut results);
            continue;
        }
        let mut outputs: Vec<Output> = Vec::new();
        let moved = step.outputs.iter().try_for_each(|out| {
            super::copy::move_output(&run.staging, &project.root, out, &files, &mut outputs)
        });
        let _ = std::fs::remove_dir_all(&run.staging);
        finish_job(&ctx, &pod, &mut interrupt, ui).await;
        if let Err(e) = moved {
            rec.status = StepStatus::Failed;
            rec.reason = Some(e.to_string());
            done(rec, &mut results);
            continue;
        }
        outputs.sort_by(|a, b| a.path.cmp(&b.path));
        let entry = Entry {
            step: name.clone(),
            key: parts.key(),
            parts: parts.clone(),
            outputs: outputs.clone(),
            run: id.clone(),
            created: runs::now_rfc3339(),
        };
        if let Err(e) = store.save(&entry, &project.root) {
            ui.warn(format!("{name}: its outputs were not cached: {e}"));
        }
        rec.status = StepStatus::Ran;
        rec.outputs = outputs;
        done(rec, &mut results);
    }
    hashes.save();

    let info = RunInfo {
        id,
        started,
        duration_secs: clock.elapsed().as_secs_f64(),
        env: project.spec.env.clone(),
        image: env_image.tag.clone(),
        image_id: env_image.id.clone(),
        spec_hash,
        log: relative(&project.root, &run_dir),
    };
    let record = run_record(info, results, interrupted);
    let path = record.save(&project.root)?;
    if interrupted {
        return Err(Interrupted.into());
    }
    Ok(TrainResult {
        run: record,
        record: path,
    })
}

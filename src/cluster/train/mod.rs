//! `ferry train --env ENV` for a `target: kubernetes` environment: the project image (built as
//! `ferry build` builds it) pushed to the environment's registry and run by digest as a Job.
//!
//! ```text
//! connect ─► build + push ─► Secret (SSA) ─► Job ─► pod starts ─► `train` logs ─► exit code
//!   ├─ non-zero: failed run recorded, Job deleted, ferry exits with the training's code
//!   └─ zero: per output, `sha256sum` + `tar` exec'd in the `collect` container, unpacked into
//!            staging, every file checked against the pod's sha256, moved into the project;
//!            the collector released, the Job completes, the run recorded
//! ```
//!
//! As locally, a run is collected whole or not at all: nothing moves into the project before
//! every output has arrived byte for byte. Ctrl-C deletes the Job and records an interrupted run.
//!
//! This file is the run from start to end; its steps live beside it: `image` (what the project
//! image must and must not hold), `objects` (namespace, Secret, the Job's handle), `pod` (waiting
//! for the pod), `logs` (following `train`), `collect` and `copy` (bringing the outputs home),
//! `record` (the run's record).

mod collect;
pub mod copy;
pub(crate) mod image;
mod logs;
pub(crate) mod objects;
pub(crate) mod pod;
mod record;
pub mod steps;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, PostParams};

use crate::cluster::{ClusterError, namespace, require_cluster};
use crate::docker;
use crate::images::build as images;
use crate::images::push;
use crate::interrupt::{Interrupt, Interrupted};
use crate::kube::client::Op;
use crate::kube::render::LABEL_INSTANCE;
use crate::kube::workloads::{COLLECT_DONE, Placement, job_name, training_job};
use crate::kube::{KubeError, client};
use crate::project_plan::{PlanError, make_plan_with};
use crate::runs::{self, RunError, Status, TrainResult};
use crate::spec::Project;
use crate::ui::Ui;
use collect::collect_outputs;
pub(crate) use collect::exec_output;
pub(crate) use collect::wait_complete;
use copy::move_output;
use image::{check_inputs_in_image, check_secrets_not_in_image};
use logs::follow_training;
use objects::{JobCtx, apply_env_secret, delete_job, ensure_namespace, secret_name};
use pod::wait_started;
use record::{Failure, Run};

/// How often pods and Jobs are looked at while waiting.
pub(crate) const POLL: Duration = Duration::from_secs(2);

/// `ferry train` in a cluster: `train.command`, or `notebook` in its place.
pub async fn train(
    project: &Project,
    notebook: Option<&crate::notebook::Request>,
    ui: &Ui,
) -> Result<TrainResult, ClusterError> {
    let mut interrupt = Interrupt::new()?;
    let env = require_cluster(project)?;
    let registry = super::registry(project, &env)?;
    let plan = make_plan_with(project, notebook)?;
    let Some(work) = plan.train.clone() else {
        return Err(PlanError::MissingSection {
            file: project.file.clone(),
            section: "train",
            hint: "add `train:` with a `command` and its `outputs` (see `ferry init --template churn`)",
        }
        .into());
    };
    // What can be found wrong on this machine is said before the cluster is asked anything.
    check_inputs_in_image(project, &work)?;
    check_secrets_not_in_image(project)?;
    if work.outputs.iter().any(|o| o.as_str().ends_with(".onnx")) {
        crate::onnx::init().map_err(|source| RunError::OnnxRuntime { source })?;
    }
    let secrets = super::environment_secrets(project)?;
    let spec_hash = project.hash()?.to_string();

    // The cluster next: minutes of building and pushing are wasted on an unreachable one.
    let kube = client::connect(project.spec.context.as_deref()).await?;

    let docker = docker::connect().await?;
    // Checked before minutes of building: the engine builds for its own platform only.
    let engine = docker::engine_platform(&docker).await?;
    let chosen =
        crate::cluster::platform::for_project_image(project, &env, &kube, engine, ui).await?;
    let repository = format!("{}/{}", registry.trim_end_matches('/'), project.spec.name);
    let (image, pushed) = tokio::select! {
        r = async {
            let env_image = images::ensure_env_image(&docker, project, &plan, ui).await?;
            let image = images::ensure_project_image(&docker, project, &env_image, ui).await?;
            let pushed = push::push(&docker, &image.tag, &repository, ui).await?;
            Ok::<_, ClusterError>((image, pushed))
        } => r?,
        _ = interrupt.recv() => return Err(Interrupted.into()),
    };

    let placement = placement(
        project,
        &env,
        &pushed.reference,
        secrets.as_ref(),
        chosen.run_on.clone(),
    );
    let id = runs::new_id();
    let run = Run::new(
        project,
        &id,
        &work,
        &pushed.reference,
        &image.id,
        &spec_hash,
    )?;
    ui.info(format!(
        "{} run {id} in {} (Job {}, namespace {})",
        console::style("▶").cyan(),
        pushed.reference,
        job_name(&placement.project, &id),
        placement.namespace
    ));
    let Finished { ctx, pod, files } = match run_job(
        &kube,
        &placement,
        secrets.as_ref(),
        &work,
        &id,
        &run,
        &mut interrupt,
        ui,
    )
    .await
    {
        Ok(f) => f,
        Err(failure) => return Err(run.fail(failure)?),
    };

    // Everything arrived and checked: into the project, as a local run does.
    let mut outputs = Vec::new();
    let moved = work
        .outputs
        .iter()
        .try_for_each(|out| move_output(&run.staging, &project.root, out, &files, &mut outputs));
    if let (Some(nb), Some(to)) = (&work.notebook, &run.notebook) {
        let from = nb.executed.under(&run.staging);
        if let Err(e) = std::fs::rename(&from, to) {
            ui.warn(format!(
                "cannot keep the executed notebook {}: {e}",
                to.display()
            ));
        }
    }
    if let Err(e) = moved {
        delete_job(&ctx, ui).await;
        let _ = std::fs::remove_dir_all(&run.staging);
        run.record(Status::Failed, Some(0), Some(e.to_string()), vec![])
            .save(&project.root)?;
        return Err(e.into());
    }
    let _ = std::fs::remove_dir_all(&run.staging);

    finish_job(&ctx, &pod, &mut interrupt, ui).await;
    let rec = run.record(Status::Succeeded, Some(0), None, outputs);
    let path = rec.save(&project.root)?;
    Ok(TrainResult {
        run: rec,
        record: path,
    })
}

/// Where a run's Job goes: the environment's namespace and cluster settings, `image` by
/// digest, the environment's Secret when it has secrets, the nodes of the chosen architectures.
fn placement(
    project: &Project,
    env: &str,
    image: &str,
    secrets: Option<&crate::cluster::Secrets>,
    run_on: Vec<crate::platform::Arch>,
) -> Placement {
    Placement {
        project: project.spec.name.clone(),
        env: env.to_string(),
        namespace: namespace(project),
        cluster: project.spec.cluster.clone().unwrap_or_default(),
        image: image.to_string(),
        secret: secrets
            .filter(|s| !s.is_empty())
            .map(|_| secret_name(&project.spec.name)),
        run_on,
    }
}

/// A Job that ran to its end: where it is, its pod, and its outputs in the run's staging.
struct Finished {
    ctx: JobCtx,
    pod: String,
    files: std::collections::BTreeMap<String, copy::Collected>,
}

/// Runs `work` as a Job named for `id`: the namespace and the environment's Secret made sure
/// of, the Job created, its pod waited for, its output followed into the run's log, and its
/// outputs copied into the run's staging with every file checked. Any failure (a Ctrl-C too)
/// deletes the Job; recording it is the caller's.
#[allow(clippy::too_many_arguments)]
async fn run_job(
    kube: &kube::Client,
    placement: &Placement,
    secrets: Option<&crate::cluster::Secrets>,
    work: &crate::plan::Workload,
    id: &str,
    run: &Run<'_>,
    interrupt: &mut Interrupt,
    ui: &Ui,
) -> Result<Finished, Failure> {
    let job = training_job(placement, work, id);
    let name = job_name(&placement.project, id);
    let ns = placement.namespace.clone();
    let ctx = JobCtx {
        client: kube.clone(),
        ns: ns.clone(),
        job: name.clone(),
        selector: format!(
            "{LABEL_INSTANCE}={},ferry.dev/run={}",
            placement.project,
            crate::kube::workloads::run_label(id)
        ),
        workdir: work.workdir.clone(),
    };
    // From here on the Job may exist: every way out deletes it or leaves it completed.
    let created = AtomicBool::new(false);
    let body = async {
        ensure_namespace(kube, &ns).await?;
        if let (Some(s), Some(secret)) = (secrets, &placement.secret) {
            apply_env_secret(kube, placement, secret, s).await?;
        }
        let step = ui.step(format!("creating Job {name} in namespace {ns}"));
        created.store(true, Ordering::SeqCst);
        let jobs: Api<Job> = Api::namespaced(kube.clone(), &ns);
        match jobs.create(&PostParams::default(), &job).await {
            Ok(_) => step.finish(format!("created Job {name}")),
            Err(e) => {
                step.fail();
                return Err(Failure::Error(
                    Op::new("create", "jobs.batch")
                        .name(&name)
                        .namespace(&ns)
                        .error(e)
                        .into(),
                ));
            }
        }
        let pod = wait_started(&ctx, ui).await?;
        let ended = follow_training(&ctx, &pod, run, ui).await?;
        if ended.exit_code != 0 || ended.reason == "OOMKilled" {
            let reason = match &work.notebook {
                // The init container's volumes go with the failed pod: the log, which has
                // the runner's account of the failing cell, is what is left of the notebook.
                Some(nb) => {
                    crate::notebook::failure_reason(nb, &run.log_path, None, ended.describe())
                }
                None => ended.describe(),
            };
            return Err(Failure::Train {
                code: ended.exit_code,
                reason,
            });
        }
        let files = collect_outputs(&ctx, &pod, work, run, ui).await?;
        Ok((pod, files))
    };
    let outcome = tokio::select! {
        r = body => r,
        _ = interrupt.recv() => Err(Failure::Interrupted),
    };
    match outcome {
        Ok((pod, files)) => Ok(Finished { ctx, pod, files }),
        Err(failure) => {
            if created.load(Ordering::SeqCst) {
                delete_job(&ctx, ui).await;
            }
            Err(failure)
        }
    }
}

/// With the outputs safe on this machine: releases the collector and lets the Job complete. A
/// Ctrl-C now only cuts the wait short (the Job is deleted instead); the run itself succeeded.
async fn finish_job(ctx: &JobCtx, pod: &str, interrupt: &mut Interrupt, ui: &Ui) {
    let finish = async {
        exec_output(
            ctx,
            pod,
            vec!["touch".into(), COLLECT_DONE.into()],
            &mut tokio::io::sink(),
        )
        .await?;
        wait_complete(ctx, 1, ui).await
    };
    let finished = tokio::select! {
        r = finish => r,
        _ = interrupt.recv() => Err(ClusterError::Kube(KubeError::Interrupted {
            action: format!("waiting for Job {} to complete", ctx.job),
        })),
    };
    if let Err(e) = finished {
        ui.warn(format!(
            "{e}\nthe outputs are collected; deleting Job {} instead",
            ctx.job
        ));
        delete_job(ctx, ui).await;
    }
}

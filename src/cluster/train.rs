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

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ContainerStateTerminated, ContainerStatus, Event, Namespace, Pod, Secret,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    Api, AttachParams, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams,
};
use kube::core::ObjectMeta;
use kube::{Client, ResourceExt};
use sha2::{Digest, Sha256};

use super::{ClusterError, namespace, require_cluster};
use crate::docker;
use crate::images::build as images;
use crate::images::context::DockerIgnore;
use crate::images::push;
use crate::interrupt::{Interrupt, Interrupted};
use crate::kube::client::Op;
use crate::kube::render::{LABEL_ENV, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME, MANAGER};
use crate::kube::rollout::Severity;
use crate::kube::workloads::{COLLECT_DONE, Placement, job_name, training_job};
use crate::kube::{KubeError, Secrets, client};
use crate::onnx::OnnxError;
use crate::plan::Workload;
use crate::project_plan::{PlanError, make_plan_with};
use crate::runs::{self, Output, RunError, RunRecord, Status, TrainResult, place_output};
use crate::spec::{Project, RelPath};
use crate::ui::{Ui, human_bytes};

/// How often pods and Jobs are looked at while waiting.
const POLL: Duration = Duration::from_secs(2);
/// How long a pod may stay unschedulable before the run is given up; a scale-up the cluster
/// autoscaler announced gets `SCALE_UP_WAIT` instead.
const UNSCHEDULABLE_GRACE: Duration = Duration::from_secs(90);
const SCALE_UP_WAIT: Duration = Duration::from_secs(15 * 60);
/// How long the Job may go without a pod before its events are read for the reason.
const NO_POD_GRACE: Duration = Duration::from_secs(20);
/// How long the collector container may take to start once training ended.
const COLLECTOR_WAIT: Duration = Duration::from_secs(5 * 60);
/// How long the Job may take to complete once the collector is released.
const COMPLETE_WAIT: Duration = Duration::from_secs(2 * 60);
/// A log stream that keeps failing this many times in a row is given up.
const LOG_RETRIES: u32 = 5;

/// `ferry train` in a cluster.
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

    let placement = Placement {
        project: project.spec.name.clone(),
        env: env.clone(),
        namespace: namespace(project),
        cluster: project.spec.cluster.clone().unwrap_or_default(),
        image: pushed.reference.clone(),
        secret: secrets
            .as_ref()
            .filter(|s| !s.is_empty())
            .map(|_| secret_name(&project.spec.name)),
    };
    let id = runs::new_id();
    let run = Run::new(
        project,
        &id,
        &work,
        &pushed.reference,
        &image.id,
        &spec_hash,
    )?;
    let job = training_job(&placement, &work, &id);
    let name = job_name(&placement.project, &id);
    let ns = placement.namespace.clone();
    let ctx = JobCtx {
        client: kube.clone(),
        ns: ns.clone(),
        job: name.clone(),
        selector: format!("{LABEL_INSTANCE}={},ferry.dev/run={id}", placement.project),
        workdir: work.workdir.clone(),
    };
    ui.info(format!(
        "{} run {id} in {} (Job {name}, namespace {ns})",
        console::style("▶").cyan(),
        pushed.reference
    ));

    // From here on the Job may exist: every way out deletes it or leaves it completed.
    let created = AtomicBool::new(false);
    let body = async {
        ensure_namespace(&kube, &ns).await?;
        if let (Some(s), Some(secret)) = (&secrets, &placement.secret) {
            apply_env_secret(&kube, &placement, secret, s).await?;
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
        let ended = follow_training(&ctx, &pod, &run, ui).await?;
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
        let files = collect_outputs(&ctx, &pod, &work, &run, ui).await?;
        Ok((pod, files))
    };
    let outcome = tokio::select! {
        r = body => r,
        _ = interrupt.recv() => Err(Failure::Interrupted),
    };
    let (pod, files) = match outcome {
        Ok(x) => x,
        Err(failure) => {
            if created.load(Ordering::SeqCst) {
                delete_job(&ctx, ui).await;
            }
            return Err(run.fail(failure)?);
        }
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

    // The outputs are safe here: release the collector and let the Job complete. A Ctrl-C now
    // only cuts the wait short; the run itself succeeded.
    let finish = async {
        exec_output(
            &ctx,
            &pod,
            vec!["touch".into(), COLLECT_DONE.into()],
            &mut tokio::io::sink(),
        )
        .await?;
        wait_complete(&ctx, ui).await
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
        delete_job(&ctx, ui).await;
    }
    let rec = run.record(Status::Succeeded, Some(0), None, outputs);
    let path = rec.save(&project.root)?;
    Ok(TrainResult {
        run: rec,
        record: path,
    })
}

/// The Secret holding an environment's secrets (the one `promote` applies too).
pub(crate) fn secret_name(project: &str) -> String {
    format!("{project}-secrets")
}

// ---------------------------------------------------------------------------------------------
// Inputs: in a cluster they are the image's files
// ---------------------------------------------------------------------------------------------

/// Refuses a run whose inputs (or some file of them) `.dockerignore` keeps out of the project
/// image: locally they are mounted, but a pod has only what the image holds.
fn check_inputs_in_image(project: &Project, work: &Workload) -> Result<(), ClusterError> {
    let inputs: Vec<RelPath> = work
        .volumes
        .iter()
        .filter(|v| v.read_only)
        .filter_map(|v| match &v.path {
            crate::plan::VolumePath::Sub(p) => Some(p.clone()),
            crate::plan::VolumePath::Project => None,
        })
        .collect();
    if inputs.is_empty() {
        return Ok(());
    }
    let (file, ignore) = dockerignore(project)?;
    match left_out(&project.root, &inputs, &ignore) {
        Ok(None) => Ok(()),
        Ok(Some((input, excluded))) => Err(ClusterError::InputNotInImage {
            input: input.as_str().to_string(),
            excluded,
            file: file.display().to_string(),
        }),
        Err((path, source)) => Err(images::ImageError::Read { path, source }.into()),
    }
}

/// The project's `.dockerignore` (the rules that decide what the image holds) and its path.
fn dockerignore(project: &Project) -> Result<(PathBuf, DockerIgnore), ClusterError> {
    let file = project.root.join(".dockerignore");
    let ignore = DockerIgnore::load(&project.root).map_err(|source| images::ImageError::Read {
        path: file.clone(),
        source,
    })?;
    Ok((file, ignore))
}

/// Refuses to push a project image that would hold the environment's secrets file: the
/// image goes to a registry, and secrets reach the pods through their Secret only.
pub(crate) fn check_secrets_not_in_image(project: &Project) -> Result<(), ClusterError> {
    let Some(secrets) = project
        .spec
        .cluster
        .as_ref()
        .and_then(|c| c.secrets.as_ref())
    else {
        return Ok(());
    };
    let (file, ignore) = dockerignore(project)?;
    if NEVER_IN_IMAGE.contains(&secrets.top()) || ignore.is_ignored(secrets.as_str()) {
        return Ok(());
    }
    Err(ClusterError::SecretsInImage {
        secrets: secrets.as_str().to_string(),
        env: project.spec.env.clone().unwrap_or_default(),
        file: file.display().to_string(),
    })
}

/// Directories ferry never puts into a build context, whatever `.dockerignore` says.
const NEVER_IN_IMAGE: [&str; 2] = [".ferry", ".git"];

/// The first input that is (partly) left out of the image, with the first path left out.
pub(crate) fn left_out(
    root: &Path,
    inputs: &[RelPath],
    ignore: &DockerIgnore,
) -> Result<Option<(RelPath, String)>, (PathBuf, std::io::Error)> {
    for input in inputs {
        if NEVER_IN_IMAGE.contains(&input.top()) || ignore.is_ignored(input.as_str()) {
            return Ok(Some((input.clone(), input.as_str().to_string())));
        }
        let full = input.under(root);
        let mut files = Vec::new();
        if full.is_dir() {
            walk_files(&full, input.as_str(), &mut files).map_err(|e| (full.clone(), e))?;
        }
        files.sort();
        if let Some(f) = files.into_iter().find(|f| ignore.is_ignored(f)) {
            return Ok(Some((input.clone(), f)));
        }
    }
    Ok(None)
}

fn walk_files(dir: &Path, rel: &str, out: &mut Vec<String>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let child = format!("{rel}/{}", e.file_name().to_string_lossy());
        if e.file_type()?.is_dir() {
            walk_files(&e.path(), &child, out)?;
        } else {
            out.push(child);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Objects around the Job
// ---------------------------------------------------------------------------------------------

/// Creates the namespace when it does not exist (as `promote` does), labelled as ferry's.
/// Credentials that may not read namespaces leave it to the first namespaced request to say.
pub(crate) async fn ensure_namespace(client: &Client, ns: &str) -> Result<(), ClusterError> {
    let api: Api<Namespace> = Api::all(client.clone());
    match api.get_opt(ns).await {
        Ok(Some(_)) => return Ok(()),
        Ok(None) => {}
        Err(kube::Error::Api(s)) if s.code == 403 => return Ok(()),
        Err(e) => return Err(Op::new("get", "namespaces").name(ns).error(e).into()),
    }
    let body = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.to_string()),
            labels: Some(BTreeMap::from([(
                LABEL_MANAGED_BY.to_string(),
                MANAGER.to_string(),
            )])),
            ..Default::default()
        },
        ..Default::default()
    };
    api.patch(ns, &PatchParams::apply(MANAGER), &Patch::Apply(&body))
        .await
        .map_err(|e| Op::new("patch", "namespaces").name(ns).error(e))?;
    Ok(())
}

/// Applies the environment's secrets as the Secret the workloads read them from, with
/// server-side apply (field manager `ferry`, as `promote` applies the same Secret).
pub(crate) async fn apply_env_secret(
    client: &Client,
    p: &Placement,
    name: &str,
    secrets: &Secrets,
) -> Result<(), ClusterError> {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(p.namespace.clone()),
            labels: Some(BTreeMap::from([
                (LABEL_NAME.to_string(), p.project.clone()),
                (LABEL_INSTANCE.to_string(), p.project.clone()),
                (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
                (LABEL_ENV.to_string(), p.env.clone()),
            ])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            secrets
                .values()
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                .collect(),
        ),
        ..Default::default()
    };
    ssa(client, &p.namespace, name, &secret, "secrets").await
}

/// Server-side apply of one typed object (field manager `ferry`).
pub(crate) async fn ssa<K>(
    client: &Client,
    ns: &str,
    name: &str,
    object: &K,
    resource: &str,
) -> Result<(), ClusterError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    <K as kube::Resource>::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.patch(name, &PatchParams::apply(MANAGER), &Patch::Apply(object))
        .await
        .map_err(|e| {
            Op::new("patch", resource.to_string())
                .name(name)
                .namespace(ns)
                .error(e)
        })?;
    Ok(())
}

/// Where the Job runs and how its pod is found.
struct JobCtx {
    client: Client,
    ns: String,
    job: String,
    selector: String,
    workdir: String,
}

impl JobCtx {
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
}

async fn delete_job(ctx: &JobCtx, ui: &Ui) {
    match ctx
        .jobs()
        .delete(&ctx.job, &DeleteParams::background())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => ui.warn(format!(
            "{}\n  hint: remove it with `kubectl delete job {} -n {}`",
            Op::new("delete", "jobs.batch")
                .name(&ctx.job)
                .namespace(&ctx.ns)
                .error(e),
            ctx.job,
            ctx.ns
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// A run's record, as a local run writes it
// ---------------------------------------------------------------------------------------------

struct Run<'a> {
    project: &'a Project,
    id: String,
    started: String,
    clock: Instant,
    image: String,
    image_id: String,
    spec_hash: String,
    command: Vec<String>,
    dir: PathBuf,
    staging: PathBuf,
    log_path: PathBuf,
    log: std::sync::Mutex<std::fs::File>,
    /// Where a notebook run's executed notebook is kept.
    notebook: Option<PathBuf>,
}

/// How a run that did not succeed ended.
enum Failure {
    Interrupted,
    /// The training command failed: its exit code and why.
    Train {
        code: i64,
        reason: String,
    },
    /// A declared output is missing.
    Missing(String),
    BadModel {
        output: String,
        source: OnnxError,
    },
    Error(ClusterError),
}

impl From<ClusterError> for Failure {
    fn from(e: ClusterError) -> Failure {
        Failure::Error(e)
    }
}

impl From<KubeError> for Failure {
    fn from(e: KubeError) -> Failure {
        Failure::Error(e.into())
    }
}

impl<'a> Run<'a> {
    fn new(
        project: &'a Project,
        id: &str,
        work: &Workload,
        image: &str,
        image_id: &str,
        spec_hash: &str,
    ) -> Result<Run<'a>, RunError> {
        let dir = runs::runs_dir(&project.root).join(id);
        let staging = dir.join("out");
        std::fs::create_dir_all(&staging).map_err(RunError::io("cannot create", &staging))?;
        let log_path = dir.join("train.log");
        let log =
            std::fs::File::create(&log_path).map_err(RunError::io("cannot create", &log_path))?;
        Ok(Run {
            project,
            id: id.to_string(),
            started: runs::now_rfc3339(),
            clock: Instant::now(),
            image: image.to_string(),
            image_id: image_id.to_string(),
            spec_hash: spec_hash.to_string(),
            command: work.argv.clone(),
            staging,
            log_path,
            log: std::sync::Mutex::new(log),
            notebook: work.notebook.as_ref().map(|nb| {
                dir.join(
                    nb.executed
                        .as_str()
                        .rsplit('/')
                        .next()
                        .unwrap_or("notebook.ipynb"),
                )
            }),
            dir,
        })
    }

    fn record(
        &self,
        status: Status,
        exit_code: Option<i64>,
        reason: Option<String>,
        outputs: Vec<Output>,
    ) -> RunRecord {
        RunRecord {
            id: self.id.clone(),
            status,
            started: self.started.clone(),
            duration_secs: (self.clock.elapsed().as_secs_f64() * 100.0).round() / 100.0,
            env: self.project.spec.env.clone(),
            image: self.image.clone(),
            image_id: self.image_id.clone(),
            spec_hash: self.spec_hash.clone(),
            command: self.command.clone(),
            exit_code,
            reason,
            outputs,
            log: self
                .log_path
                .strip_prefix(&self.project.root)
                .unwrap_or(&self.log_path)
                .to_string_lossy()
                .into_owned(),
            notebook: self.notebook.as_ref().filter(|p| p.exists()).map(|p| {
                p.strip_prefix(&self.project.root)
                    .unwrap_or(p)
                    .to_string_lossy()
                    .into_owned()
            }),
        }
    }

    /// One line of the training's output into the run's log (a write failure must not stop
    /// the run: the log is a record, not the run).
    fn log_line(&self, line: &str) {
        if let Ok(mut f) = self.log.lock() {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Records a run that did not succeed and returns the error to report.
    fn fail(&self, failure: Failure) -> Result<ClusterError, ClusterError> {
        if let Ok(mut f) = self.log.lock() {
            let _ = f.flush();
        }
        let _ = std::fs::remove_dir_all(&self.staging);
        let root = &self.project.root;
        let log = self.log_path.clone();
        Ok(match failure {
            Failure::Interrupted => {
                self.record(
                    Status::Interrupted,
                    None,
                    Some("interrupted".into()),
                    vec![],
                )
                .save(root)?;
                Interrupted.into()
            }
            Failure::Train { code, reason } => {
                self.record(Status::Failed, Some(code), Some(reason.clone()), vec![])
                    .save(root)?;
                RunError::TrainFailed {
                    code: if code == 0 { 1 } else { code },
                    reason,
                    log,
                }
                .into()
            }
            Failure::Missing(reason) => {
                self.record(Status::Failed, Some(0), Some(reason.clone()), vec![])
                    .save(root)?;
                RunError::TrainFailed {
                    code: 1,
                    reason,
                    log,
                }
                .into()
            }
            Failure::BadModel { output, source } => {
                self.record(
                    Status::Failed,
                    Some(0),
                    Some(format!("{output} does not load in ONNX Runtime: {source}")),
                    vec![],
                )
                .save(root)?;
                RunError::BadModel { source, log }.into()
            }
            Failure::Error(e) => {
                self.record(Status::Failed, None, Some(e.to_string()), vec![])
                    .save(root)?;
                e
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The pod: started, pending, ended
// ---------------------------------------------------------------------------------------------

/// Something that keeps a pod from running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Trouble {
    /// `ImagePullBackOff`, `Unschedulable`, `CreateContainerConfigError`, …
    pub reason: String,
    pub container: Option<String>,
    pub message: String,
    /// Waiting will not help.
    pub fatal: bool,
}

/// What keeps `pod` from running, if anything does: the rollout's reading of a pod, graded for
/// a training that waits on one pod only.
pub(crate) fn pod_trouble(pod: &Pod) -> Option<Trouble> {
    let p = crate::kube::rollout::pod_problem(pod)?;
    // The first failed pull (ErrImagePull) is retried once before the back-off; anything else
    // that is not mere waiting for a node will not heal for a training pod.
    let fatal = p.severity != Severity::Pending && p.reason != "ErrImagePull";
    Some(Trouble {
        reason: p.reason,
        container: p.container,
        message: p.message,
        fatal,
    })
}

/// What to do about a pod that cannot start, by its reason.
pub(crate) fn pending_hint(reason: &str) -> &'static str {
    match reason {
        "ImagePullBackOff" | "ErrImagePull" | "InvalidImageName" | "ErrImageNeverPull" => {
            "the cluster's nodes cannot pull the image: check that they reach the environment's registry, and, for a private registry, that `image_pull_secret` names a Secret of type dockerconfigjson in the namespace"
        }
        "Unschedulable" => {
            "no node has what the pod asks for (train.resources, node_selector, tolerations): lower the request, fix the selector, or add capacity to the cluster"
        }
        "FailedCreate" => {
            "the Job could not create its pod, often a ResourceQuota or LimitRange of the namespace: `kubectl describe job -n NAMESPACE` shows the details"
        }
        "CreateContainerConfigError" => {
            "the pod refers to something missing, often a Secret or one of its keys: check the environment's `secrets` file and `kubectl get secrets -n NAMESPACE`"
        }
        "OOMKilled" => "the container ran out of memory: raise its memory request or use less",
        "CrashLoopBackOff" => "the container keeps exiting: its last lines of output say why",
        _ => "`kubectl describe pod -n NAMESPACE POD` shows the pod's events",
    }
}

/// Whether the cluster is bringing up a node for `pod` (cluster autoscaler, Karpenter).
async fn scaling_up(client: &Client, ns: &str, pod: &str) -> bool {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields(&format!("involvedObject.name={pod}"));
    api.list(&lp).await.is_ok_and(|l| {
        l.items
            .iter()
            .any(|e| matches!(e.reason.as_deref(), Some("TriggeredScaleUp" | "Nominated")))
    })
}

/// Waits out an unschedulable pod for a while; `Err` once waiting looks hopeless.
pub(crate) struct Pending {
    since: Option<Instant>,
}

impl Pending {
    pub fn new() -> Pending {
        Pending { since: None }
    }

    /// Judges one look at `pod`: the trouble to show, or the error to give up with.
    pub async fn judge(
        &mut self,
        client: &Client,
        ns: &str,
        pod: &Pod,
        what: &str,
    ) -> Result<Option<Trouble>, ClusterError> {
        let Some(t) = pod_trouble(pod) else {
            self.since = None;
            return Ok(None);
        };
        let give_up = |t: &Trouble| ClusterError::PodNotStarting {
            what: what.to_string(),
            pod: pod.name_any(),
            reason: t.reason.clone(),
            container: t.container.clone(),
            message: t.message.clone(),
        };
        if t.fatal {
            return Err(give_up(&t));
        }
        if t.reason == "Unschedulable" {
            let waited = self.since.get_or_insert_with(Instant::now).elapsed();
            if waited > UNSCHEDULABLE_GRACE
                && (waited > SCALE_UP_WAIT || !scaling_up(client, ns, &pod.name_any()).await)
            {
                return Err(give_up(&t));
            }
        }
        Ok(Some(t))
    }
}

/// How the `train` container ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ended {
    pub exit_code: i64,
    /// The kubelet's reason: `Completed`, `Error`, `OOMKilled`, …
    pub reason: String,
    pub message: String,
}

impl Ended {
    fn of(t: &ContainerStateTerminated) -> Ended {
        Ended {
            exit_code: i64::from(t.exit_code),
            reason: t.reason.clone().unwrap_or_default(),
            message: t.message.clone().unwrap_or_default(),
        }
    }

    /// A sentence for the run record and the user.
    pub fn describe(&self) -> String {
        let mut s = format!("exit code {}", self.exit_code);
        match self.reason.as_str() {
            "OOMKilled" => s.push_str(
                ", OOMKilled: the container ran out of memory — raise train.resources.memory or use less",
            ),
            "" | "Error" | "Completed" => {}
            r => s.push_str(&format!(", {r}")),
        }
        let m = self.message.trim();
        if !m.is_empty() {
            let m: String = m.chars().take(300).collect();
            s.push_str(&format!(": {m}"));
        }
        s
    }
}

fn container_status<'p>(pod: &'p Pod, name: &str) -> Option<&'p ContainerStatus> {
    crate::kube::rollout::statuses(pod).find(|c| c.name == name)
}

/// Where the `train` container stands.
enum TrainState {
    Waiting,
    Running,
    Ended(Ended),
}

fn train_state(pod: &Pod) -> TrainState {
    let state = container_status(pod, "train").and_then(|c| c.state.as_ref());
    match state {
        Some(s) if s.terminated.is_some() => {
            TrainState::Ended(s.terminated.as_ref().map(Ended::of).unwrap_or(Ended {
                exit_code: -1,
                reason: String::new(),
                message: String::new(),
            }))
        }
        Some(s) if s.running.is_some() => TrainState::Running,
        _ => TrainState::Waiting,
    }
}

/// The newest pod of the run's Job.
async fn newest_pod(ctx: &JobCtx) -> Result<Option<Pod>, ClusterError> {
    let list = ctx
        .pods()
        .list(&ListParams::default().labels(&ctx.selector))
        .await
        .map_err(|e| Op::new("list", "pods").namespace(&ctx.ns).error(e))?;
    Ok(list
        .items
        .into_iter()
        .max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0)))
}

/// Why the Job failed, if it did (e.g. its pod was deleted or evicted).
async fn job_failure(ctx: &JobCtx) -> Result<Option<String>, ClusterError> {
    let job = ctx.jobs().get_opt(&ctx.job).await.map_err(|e| {
        Op::new("get", "jobs.batch")
            .name(&ctx.job)
            .namespace(&ctx.ns)
            .error(e)
    })?;
    let Some(job) = job else {
        return Ok(Some("the Job was deleted".into()));
    };
    Ok(job
        .status
        .and_then(|s| s.conditions)
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Failed" && c.status == "True")
        .map(|c| {
            format!(
                "{}: {}",
                c.reason.unwrap_or_default(),
                c.message.unwrap_or_default()
            )
        }))
}

/// The newest warning about the Job itself (a quota refusing its pod: `FailedCreate`).
async fn job_warning(ctx: &JobCtx) -> Option<(String, String)> {
    let api: Api<Event> = Api::namespaced(ctx.client.clone(), &ctx.ns);
    let lp = ListParams::default().fields(&format!(
        "involvedObject.name={},involvedObject.kind=Job,type=Warning",
        ctx.job
    ));
    let list = api.list(&lp).await.ok()?;
    list.items
        .into_iter()
        .max_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0))
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
}

/// Waits until the `train` container has started (or already ended); returns the pod's name.
async fn wait_started(ctx: &JobCtx, ui: &Ui) -> Result<String, Failure> {
    let step = ui.step("waiting for the training pod to start");
    let result = async {
        let created = Instant::now();
        let mut pending = Pending::new();
        loop {
            let Some(pod) = newest_pod(ctx).await? else {
                if let Some(why) = job_failure(ctx).await? {
                    return Err(ClusterError::PodFailed {
                        what: format!("Job {}", ctx.job),
                        reason: why,
                    });
                }
                if created.elapsed() > NO_POD_GRACE
                    && let Some((reason, message)) = job_warning(ctx).await
                {
                    step.set_detail(format!("{reason}: {message}"));
                    if reason == "FailedCreate" {
                        return Err(ClusterError::PodNotStarting {
                            what: "training".into(),
                            pod: format!("(Job {})", ctx.job),
                            reason,
                            container: None,
                            message,
                        });
                    }
                }
                tokio::time::sleep(POLL).await;
                continue;
            };
            let name = pod.name_any();
            match train_state(&pod) {
                TrainState::Running | TrainState::Ended(_) => {
                    let node = pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.clone())
                        .unwrap_or_default();
                    return Ok((name, node));
                }
                TrainState::Waiting => {}
            }
            if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed") {
                let s = pod.status.as_ref();
                return Err(ClusterError::PodFailed {
                    what: format!("pod {name}"),
                    reason: format!(
                        "{}: {}",
                        s.and_then(|s| s.reason.clone()).unwrap_or_default(),
                        s.and_then(|s| s.message.clone()).unwrap_or_default()
                    ),
                });
            }
            match pending
                .judge(&ctx.client, &ctx.ns, &pod, "training")
                .await?
            {
                Some(t) => step.set_detail(format!("{}: {}", t.reason, t.message)),
                None => step.set_detail(format!(
                    "pod {name} {}",
                    pod.status
                        .as_ref()
                        .and_then(|s| s.phase.as_deref())
                        .unwrap_or("Pending")
                )),
            }
            tokio::time::sleep(POLL).await;
        }
    }
    .await;
    match result {
        Ok((pod, node)) => {
            step.finish(if node.is_empty() {
                format!("training started in pod {pod}")
            } else {
                format!("training started in pod {pod} on node {node}")
            });
            Ok(pod)
        }
        Err(e) => {
            step.fail();
            Err(Failure::Error(e))
        }
    }
}

/// A log line as `timestamps=true` gives it: the kubelet's RFC 3339 time, a space, the line.
fn split_timestamp(line: &str) -> (Option<Timestamp>, &str) {
    match line.split_once(' ') {
        Some((ts, rest)) => match ts.parse::<Timestamp>() {
            Ok(t) => (Some(t), rest),
            Err(_) => (None, line),
        },
        None => match line.parse::<Timestamp>() {
            Ok(t) => (Some(t), ""),
            Err(_) => (None, line),
        },
    }
}

/// Shows and records the `train` container's output until it ends; returns how it ended. A
/// log stream that breaks (long runs outlive API server connections) is picked up again from
/// the last line seen.
async fn follow_training(
    ctx: &JobCtx,
    pod: &str,
    run: &Run<'_>,
    ui: &Ui,
) -> Result<Ended, Failure> {
    let show = ui.is_human();
    let mut last: Option<Timestamp> = None;
    let mut failures = 0;
    loop {
        let lp = LogParams {
            container: Some("train".into()),
            follow: true,
            timestamps: true,
            // Whole seconds only (kube rounds to the nearest one, which may skip lines): the
            // lines of that second already shown are dropped below.
            since_time: last.and_then(|t| Timestamp::from_second(t.as_second()).ok()),
            ..Default::default()
        };
        let streamed = async {
            let stream = ctx.pods().log_stream(pod, &lp).await?;
            let mut lines = stream.lines();
            while let Some(line) = lines.try_next().await.map_err(kube::Error::ReadEvents)? {
                let (ts, text) = split_timestamp(&line);
                if let (Some(t), Some(l)) = (ts, last)
                    && t <= l
                {
                    continue;
                }
                if ts.is_some() {
                    last = ts;
                }
                run.log_line(text);
                if show {
                    eprintln!("{} {text}", console::style("│").dim());
                }
            }
            Ok::<_, kube::Error>(())
        }
        .await;
        let pod_now = ctx
            .pods()
            .get_opt(pod)
            .await
            .map_err(|e| Op::new("get", "pods").name(pod).namespace(&ctx.ns).error(e))?;
        let Some(pod_now) = pod_now else {
            let why = job_failure(ctx).await?.unwrap_or_default();
            return Err(ClusterError::PodFailed {
                what: format!("pod {pod}"),
                reason: format!("deleted while training ran {why}")
                    .trim()
                    .to_string(),
            }
            .into());
        };
        if let TrainState::Ended(e) = train_state(&pod_now) {
            return Ok(e);
        }
        match streamed {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures >= LOG_RETRIES {
                    return Err(Op::new("get", "pods/log")
                        .name(pod)
                        .namespace(&ctx.ns)
                        .error(e)
                        .into());
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Collecting the outputs through the `collect` container
// ---------------------------------------------------------------------------------------------

/// Runs `command` in the pod's `collect` container, its stdout into `sink`; a non-zero exit
/// is an error carrying its stderr.
async fn exec_output<W: tokio::io::AsyncWrite + Unpin>(
    ctx: &JobCtx,
    pod: &str,
    command: Vec<String>,
    sink: &mut W,
) -> Result<(), ClusterError> {
    use tokio::io::AsyncReadExt;
    let what = command.join(" ");
    let op = || Op::new("create", "pods/exec").name(pod).namespace(&ctx.ns);
    let ap = AttachParams::default()
        .container("collect")
        .stdin(false)
        .stdout(true)
        .stderr(true)
        .max_stdout_buf_size(1 << 20);
    let mut proc = ctx
        .pods()
        .exec(pod, command, &ap)
        .await
        .map_err(|e| op().error(e))?;
    let stdout = proc.stdout();
    let stderr = proc.stderr();
    let status = proc.take_status();
    let copy_out = async {
        let Some(mut out) = stdout else {
            return Ok(0);
        };
        tokio::io::copy(&mut out, sink).await
    };
    let read_err = async {
        let mut text = String::new();
        if let Some(mut e) = stderr {
            let mut buf = Vec::new();
            let _ = e.read_to_end(&mut buf).await;
            text = String::from_utf8_lossy(&buf).into_owned();
        }
        text
    };
    let (copied, err_text) = tokio::join!(copy_out, read_err);
    let status = match status {
        Some(s) => s.await,
        None => None,
    };
    let _ = proc.join().await;
    copied.map_err(|e| ClusterError::Exec {
        command: what.clone(),
        pod: pod.to_string(),
        message: format!("copying its output: {e}"),
    })?;
    match status {
        Some(s) if s.status.as_deref() == Some("Success") => Ok(()),
        Some(s) => {
            let mut message = s
                .message
                .clone()
                .filter(|m| !m.is_empty())
                .or(s.reason.clone())
                .unwrap_or_else(|| "it failed".into());
            let err = err_text.trim();
            if !err.is_empty() {
                message.push_str(&format!(": {err}"));
            }
            Err(ClusterError::Exec {
                command: what,
                pod: pod.to_string(),
                message,
            })
        }
        None => Err(ClusterError::Exec {
            command: what,
            pod: pod.to_string(),
            message: "the connection ended without the command's exit status".into(),
        }),
    }
}

/// Waits until the `collect` container runs (it starts once `train` has ended).
async fn wait_collector(ctx: &JobCtx, pod: &str) -> Result<(), ClusterError> {
    let started = Instant::now();
    let mut pending = Pending::new();
    loop {
        let now = ctx
            .pods()
            .get_opt(pod)
            .await
            .map_err(|e| Op::new("get", "pods").name(pod).namespace(&ctx.ns).error(e))?;
        let Some(now) = now else {
            return Err(ClusterError::PodFailed {
                what: format!("pod {pod}"),
                reason: "deleted before its outputs were collected".into(),
            });
        };
        let state = container_status(&now, "collect").and_then(|c| c.state.as_ref());
        if state.is_some_and(|s| s.running.is_some()) {
            return Ok(());
        }
        if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            return Err(ClusterError::PodFailed {
                what: format!("the collector of pod {pod}"),
                reason: format!(
                    "it stopped before the outputs were copied ({})",
                    Ended::of(t).describe()
                ),
            });
        }
        pending
            .judge(&ctx.client, &ctx.ns, &now, "collector")
            .await?;
        if started.elapsed() > COLLECTOR_WAIT {
            return Err(ClusterError::PodFailed {
                what: format!("the collector of pod {pod}"),
                reason: format!("not running after {}s", COLLECTOR_WAIT.as_secs()),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A verified file of an output: its path in the project, sha256 and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collected {
    pub sha256: String,
    pub size: u64,
}

/// Copies every declared output out of the pod into staging, each file checked against the
/// sha256 the pod computed; then checks ONNX outputs load, as a local run does.
async fn collect_outputs(
    ctx: &JobCtx,
    pod: &str,
    work: &Workload,
    run: &Run<'_>,
    ui: &Ui,
) -> Result<BTreeMap<String, Collected>, Failure> {
    let step = ui.step(format!(
        "collecting {} output(s) from pod {pod}",
        work.outputs.len()
    ));
    let result = collect_all(ctx, pod, work, run, &step).await;
    match &result {
        Ok(files) => {
            let bytes: u64 = files.values().map(|c| c.size).sum();
            step.finish(format!(
                "collected {} file(s), {}, sha256 verified",
                files.len(),
                human_bytes(bytes)
            ));
        }
        Err(_) => step.fail(),
    }
    result
}

async fn collect_all(
    ctx: &JobCtx,
    pod: &str,
    work: &Workload,
    run: &Run<'_>,
    step: &crate::ui::Step,
) -> Result<BTreeMap<String, Collected>, Failure> {
    step.set_detail("waiting for the collector container");
    wait_collector(ctx, pod).await?;
    let mut all = BTreeMap::new();
    // A notebook run's executed notebook comes out the way the outputs do (it is kept with
    // the run, not moved into the project).
    let executed = work.notebook.as_ref().map(|nb| &nb.executed);
    for (i, out) in work.outputs.iter().chain(executed).enumerate() {
        step.set_detail(format!("hashing {out} in the pod"));
        let mut listing: Vec<u8> = Vec::new();
        let listed = exec_output(ctx, pod, listing_command(&ctx.workdir, out), &mut listing).await;
        let expected = match listed {
            Ok(()) => parse_sha256sum(&String::from_utf8_lossy(&listing)).map_err(|m| {
                ClusterError::Collect {
                    output: out.as_str().to_string(),
                    source: CollectError::Listing(m),
                }
            })?,
            // `find` fails for a path that does not exist: the output was not written.
            Err(ClusterError::Exec { .. }) => BTreeMap::new(),
            Err(e) => return Err(e.into()),
        };
        if expected.is_empty() {
            return Err(Failure::Missing(format!(
                "the command succeeded but did not write the declared output {out} (train.outputs)"
            )));
        }

        step.set_detail(format!("copying {out}"));
        let tar_path = run.dir.join(format!(".collect-{i}.tar"));
        let mut file = tokio::fs::File::create(&tar_path)
            .await
            .map_err(|e| ClusterError::from(RunError::io("cannot create", &tar_path)(e)))?;
        exec_output(ctx, pod, copy_command(&ctx.workdir, out), &mut file).await?;
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(|e| ClusterError::from(RunError::io("cannot write", &tar_path)(e)))?;
        drop(file);

        step.set_detail(format!("checking {out}"));
        let staging = run.staging.clone();
        let output = out.clone();
        let path = tar_path.clone();
        let unpacked = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&path).map_err(|e| CollectError::Io {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            unpack_verified(std::io::BufReader::new(f), &expected, &output, &staging)
        })
        .await
        .map_err(|e| ClusterError::Collect {
            output: out.as_str().to_string(),
            source: CollectError::Io {
                path: tar_path.display().to_string(),
                message: e.to_string(),
            },
        })?;
        let _ = std::fs::remove_file(&tar_path);
        let files = unpacked.map_err(|source| ClusterError::Collect {
            output: out.as_str().to_string(),
            source,
        })?;
        all.extend(files);
    }
    for out in &work.outputs {
        if out.as_str().ends_with(".onnx")
            && let Err(source) = crate::onnx::check_model(&out.under(&run.staging))
        {
            return Err(Failure::BadModel {
                output: out.as_str().to_string(),
                source,
            });
        }
    }
    Ok(all)
}

/// Waits until the Job counts its pod as succeeded.
async fn wait_complete(ctx: &JobCtx, ui: &Ui) -> Result<(), ClusterError> {
    let step = ui.step(format!("waiting for Job {} to complete", ctx.job));
    let started = Instant::now();
    loop {
        let job = ctx.jobs().get_opt(&ctx.job).await.map_err(|e| {
            Op::new("get", "jobs.batch")
                .name(&ctx.job)
                .namespace(&ctx.ns)
                .error(e)
        });
        let job = match job {
            Ok(j) => j,
            Err(e) => {
                step.fail();
                return Err(e.into());
            }
        };
        let status = job.and_then(|j| j.status);
        if status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) > 0 {
            step.finish(format!("Job {} completed", ctx.job));
            return Ok(());
        }
        if started.elapsed() > COMPLETE_WAIT {
            step.fail();
            return Err(ClusterError::PodFailed {
                what: format!("Job {}", ctx.job),
                reason: format!(
                    "not complete {}s after its outputs were collected",
                    COMPLETE_WAIT.as_secs()
                ),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The copy: `sha256sum` listings and tar streams, checked file by file
// ---------------------------------------------------------------------------------------------

/// Why a copied output cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(
        "{path} arrived with sha256 {actual}, but the pod computed {expected}: the copy is not byte-identical, so nothing was collected"
    )]
    Corrupted {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("the pod listed {path}, but the copy does not hold it")]
    Missing { path: String },
    #[error("the copy holds {path}, which the pod did not list")]
    Unlisted { path: String },
    #[error("the copy holds {path} outside the output {output}")]
    Outside { path: String, output: String },
    #[error(
        "{path} is a {kind}; only regular files and directories are collected (write the file itself)"
    )]
    Unsupported { path: String, kind: String },
    #[error("cannot read the pod's sha256sum listing: {0}")]
    Listing(String),
    #[error("cannot read the copy: {0}")]
    Archive(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

/// What the collector runs to list an output's files with their sha256 (`sha256sum`'s
/// format, paths relative to `workdir`). Fails when the output does not exist.
pub fn listing_command(workdir: &str, output: &RelPath) -> Vec<String> {
    [
        "/bin/sh",
        "-c",
        "cd \"$1\" && find \"$2\" -type f -exec sha256sum {} +",
        "sh",
        workdir,
        output.as_str(),
    ]
    .map(String::from)
    .to_vec()
}

/// What the collector runs to send an output as a tar stream on stdout.
pub fn copy_command(workdir: &str, output: &RelPath) -> Vec<String> {
    ["tar", "-C", workdir, "-cf", "-", output.as_str()]
        .map(String::from)
        .to_vec()
}

/// `sha256sum`'s output as path → hex digest. Names with a backslash or a newline come
/// escaped, their line starting with `\`.
pub fn parse_sha256sum(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (escaped, line) = match line.strip_prefix('\\') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let (hex, rest) = line
            .split_once(' ')
            .ok_or_else(|| format!("unexpected line {line:?}"))?;
        // `  name` (text mode) or ` *name` (binary mode).
        let name = rest
            .strip_prefix(' ')
            .or_else(|| rest.strip_prefix('*'))
            .ok_or_else(|| format!("unexpected line {line:?}"))?;
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("{hex:?} is not a sha256 digest"));
        }
        let name = if escaped {
            unescape(name)
        } else {
            name.to_string()
        };
        out.insert(normalise(&name), hex.to_ascii_lowercase());
    }
    Ok(out)
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// `./a//b/` → `a/b`.
fn normalise(p: &str) -> String {
    p.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Unpacks a tar stream of `output` into `dest` (paths kept, relative to the project),
/// hashing every file as it is written, and checks the result against `expected` (the pod's
/// listing): the same files, byte for byte. Refuses links, devices and paths outside `output`.
pub fn unpack_verified(
    reader: impl Read,
    expected: &BTreeMap<String, String>,
    output: &RelPath,
    dest: &Path,
) -> Result<BTreeMap<String, Collected>, CollectError> {
    let io_err = |path: &Path| {
        let path = path.display().to_string();
        move |e: std::io::Error| CollectError::Io {
            path,
            message: e.to_string(),
        }
    };
    let mut archive = tar::Archive::new(reader);
    let mut got = BTreeMap::new();
    let entries = archive
        .entries()
        .map_err(|e| CollectError::Archive(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| CollectError::Archive(e.to_string()))?;
        let raw = entry
            .path()
            .map_err(|e| CollectError::Archive(e.to_string()))?
            .into_owned();
        let rel = normalise(&raw.to_string_lossy());
        let inside = raw
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        let under_output = rel == output.as_str()
            || rel
                .strip_prefix(output.as_str())
                .is_some_and(|r| r.starts_with('/'));
        let kind = entry.header().entry_type();
        // The directories leading to the output carry nothing of their own.
        let ancestor = kind.is_dir()
            && output
                .as_str()
                .strip_prefix(rel.as_str())
                .is_some_and(|r| r.starts_with('/'));
        if !inside || rel.is_empty() || !(under_output || ancestor) {
            return Err(CollectError::Outside {
                path: raw.display().to_string(),
                output: output.as_str().to_string(),
            });
        }
        let target = dest.join(&rel);
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(io_err(&target))?;
            continue;
        }
        if !kind.is_file() {
            let kind = if kind.is_symlink() {
                "symbolic link".to_string()
            } else if kind.is_hard_link() {
                "hard link".to_string()
            } else {
                format!("special file ({kind:?})")
            };
            return Err(CollectError::Unsupported { path: rel, kind });
        }
        let Some(want) = expected.get(&rel) else {
            return Err(CollectError::Unlisted { path: rel });
        };
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let executable = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
        let mut file = std::fs::File::create(&target).map_err(io_err(&target))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = entry.read(&mut buf).map_err(io_err(&target))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(io_err(&target))?;
            size += n as u64;
        }
        file.flush().map_err(io_err(&target))?;
        if executable {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755));
        }
        let actual = hex::encode(hasher.finalize());
        if &actual != want {
            return Err(CollectError::Corrupted {
                path: rel,
                expected: want.clone(),
                actual,
            });
        }
        got.insert(
            rel,
            Collected {
                sha256: actual,
                size,
            },
        );
    }
    if let Some(path) = expected.keys().find(|k| !got.contains_key(*k)) {
        return Err(CollectError::Missing { path: path.clone() });
    }
    Ok(got)
}

/// Moves one declared output from staging into the project (replacing what was there) and
/// records its files, as a local run does.
fn move_output(
    staging: &Path,
    root: &Path,
    out: &RelPath,
    files: &BTreeMap<String, Collected>,
    outputs: &mut Vec<Output>,
) -> Result<(), RunError> {
    place_output(staging, root, out)?;
    let prefix = format!("{}/", out.as_str());
    for (path, c) in files
        .iter()
        .filter(|(p, _)| p.as_str() == out.as_str() || p.starts_with(&prefix))
    {
        outputs.push(Output {
            path: path.clone(),
            sha256: c.sha256.clone(),
            size: c.size,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    fn rel(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    /// A tar of `files` (path, bytes), directories added for their parents, as `tar -cf` makes.
    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dirs = std::collections::BTreeSet::new();
        for (path, _) in files {
            let mut p = Path::new(path).parent();
            while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
                dirs.insert(d.to_path_buf());
                p = d.parent();
            }
        }
        for d in dirs {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, &d, std::io::empty()).unwrap();
        }
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn listing(files: &[(&str, &[u8])]) -> BTreeMap<String, String> {
        files.iter().map(|(p, d)| (p.to_string(), sha(d))).collect()
    }

    const MODEL: &[u8] = b"\x08\x07onnx model bytes \x00\x01\x02";
    const METRICS: &[u8] = b"{\"auc\": 0.91}\n";

    #[test]
    fn a_faithful_copy_is_unpacked_with_its_hashes() {
        let dest = tempfile::tempdir().unwrap();
        let files: &[(&str, &[u8])] = &[
            ("artifacts/model.onnx", MODEL),
            ("artifacts/plots/roc.txt", METRICS),
        ];
        let got = unpack_verified(
            &tar_of(files)[..],
            &listing(files),
            &rel("artifacts/"),
            dest.path(),
        )
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got["artifacts/model.onnx"].sha256, sha(MODEL));
        assert_eq!(got["artifacts/model.onnx"].size, MODEL.len() as u64);
        assert_eq!(
            std::fs::read(dest.path().join("artifacts/plots/roc.txt")).unwrap(),
            METRICS
        );
    }

    #[test]
    fn a_corrupted_byte_is_refused() {
        let dest = tempfile::tempdir().unwrap();
        let files: &[(&str, &[u8])] = &[("artifacts/model.onnx", MODEL)];
        let expected = listing(files);
        let mut bad = MODEL.to_vec();
        bad[5] ^= 0x01;
        let corrupted = tar_of(&[("artifacts/model.onnx", &bad)]);
        let err = unpack_verified(
            &corrupted[..],
            &expected,
            &rel("artifacts/model.onnx"),
            dest.path(),
        )
        .unwrap_err();
        match &err {
            CollectError::Corrupted {
                path,
                expected: e,
                actual,
            } => {
                assert_eq!(path, "artifacts/model.onnx");
                assert_eq!(e, &sha(MODEL));
                assert_eq!(actual, &sha(&bad));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("not byte-identical"), "{err}");
    }

    #[test]
    fn a_copy_must_hold_exactly_what_the_pod_listed() {
        let dest = tempfile::tempdir().unwrap();
        let files: &[(&str, &[u8])] = &[
            ("artifacts/model.onnx", MODEL),
            ("artifacts/metrics.json", METRICS),
        ];
        // A file the listing has but the archive lost.
        let short = tar_of(&files[..1]);
        let err = unpack_verified(&short[..], &listing(files), &rel("artifacts/"), dest.path())
            .unwrap_err();
        assert!(
            matches!(&err, CollectError::Missing { path } if path == "artifacts/metrics.json"),
            "{err:?}"
        );
        // A file the archive has but the listing does not.
        let err = unpack_verified(
            &tar_of(files)[..],
            &listing(&files[..1]),
            &rel("artifacts/"),
            dest.path(),
        )
        .unwrap_err();
        assert!(matches!(err, CollectError::Unlisted { .. }), "{err:?}");
    }

    #[test]
    fn paths_outside_the_output_and_links_are_refused() {
        let dest = tempfile::tempdir().unwrap();
        let files: &[(&str, &[u8])] = &[("reports/x.txt", METRICS)];
        let err = unpack_verified(
            &tar_of(files)[..],
            &listing(files),
            &rel("artifacts/"),
            dest.path(),
        )
        .unwrap_err();
        assert!(matches!(err, CollectError::Outside { .. }), "{err:?}");

        // `..` in a name: tar::Builder refuses to write one, so the header is written by hand.
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..22].copy_from_slice(b"artifacts/../../escape");
        h.set_mode(0o644);
        h.set_size(METRICS.len() as u64);
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(METRICS);
        raw.resize(raw.len().div_ceil(512) * 512 + 1024, 0);
        let expected = BTreeMap::from([("escape".to_string(), sha(METRICS))]);
        let err =
            unpack_verified(&raw[..], &expected, &rel("artifacts/"), dest.path()).unwrap_err();
        assert!(matches!(err, CollectError::Outside { .. }), "{err:?}");
        assert!(!dest.path().join("escape").exists());
        assert!(!dest.path().parent().unwrap().join("escape").exists());

        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "artifacts/model.onnx", "/etc/passwd")
            .unwrap();
        let tar = b.into_inner().unwrap();
        let err = unpack_verified(&tar[..], &BTreeMap::new(), &rel("artifacts/"), dest.path())
            .unwrap_err();
        assert!(
            matches!(&err, CollectError::Unsupported { kind, .. } if kind == "symbolic link"),
            "{err:?}"
        );
    }

    #[test]
    fn sha256sum_listings_parse_with_escaped_names() {
        let a = sha(b"a");
        let text = format!(
            "{a}  artifacts/model.onnx\n{a} *./artifacts/bin.dat\n\\{a}  artifacts/odd\\nname\\\\x\n"
        );
        let m = parse_sha256sum(&text).unwrap();
        assert_eq!(m["artifacts/model.onnx"], a);
        assert_eq!(m["artifacts/bin.dat"], a);
        assert_eq!(m["artifacts/odd\nname\\x"], a);
        assert!(parse_sha256sum("nothex  x\n").is_err());
        assert!(parse_sha256sum("").unwrap().is_empty());
    }

    #[test]
    fn inputs_left_out_by_dockerignore_are_named() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("data/raw")).unwrap();
        std::fs::write(root.path().join("data/a.csv"), "x").unwrap();
        std::fs::write(root.path().join("data/raw/b.parquet"), "x").unwrap();
        let inputs = [rel("data/")];
        let none = DockerIgnore::parse("artifacts/\n");
        assert_eq!(left_out(root.path(), &inputs, &none).unwrap(), None);
        let all = DockerIgnore::parse("data/\n");
        assert_eq!(
            left_out(root.path(), &inputs, &all).unwrap(),
            Some((rel("data/"), "data".into()))
        );
        let some = DockerIgnore::parse("**/*.parquet\n");
        assert_eq!(
            left_out(root.path(), &inputs, &some).unwrap(),
            Some((rel("data/"), "data/raw/b.parquet".into()))
        );
        let back = DockerIgnore::parse("data/\n!data/\n");
        assert_eq!(left_out(root.path(), &inputs, &back).unwrap(), None);
    }

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pending_pods_are_graded() {
        let pull = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Pending", "initContainerStatuses": [{
                "name": "train", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}
            }]}
        }));
        let t = pod_trouble(&pull).unwrap();
        assert!(t.fatal);
        assert_eq!(t.reason, "ImagePullBackOff");
        assert_eq!(t.container.as_deref(), Some("train"));

        let first_pull = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Pending", "initContainerStatuses": [{
                "name": "train", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ErrImagePull"}}
            }]}
        }));
        assert!(!pod_trouble(&first_pull).unwrap().fatal);

        let unschedulable = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
            }]}
        }));
        let t = pod_trouble(&unschedulable).unwrap();
        assert!(!t.fatal);
        assert!(t.message.contains("nvidia.com/gpu"));

        let fine = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Pending", "initContainerStatuses": [{
                "name": "train", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "PodInitializing"}}
            }]}
        }));
        assert_eq!(pod_trouble(&fine), None);
    }

    #[test]
    fn terminations_read_like_local_failures() {
        let oom = Ended {
            exit_code: 137,
            reason: "OOMKilled".into(),
            message: String::new(),
        };
        assert!(oom.describe().starts_with("exit code 137, OOMKilled"));
        assert!(oom.describe().contains("train.resources.memory"));
        let plain = Ended {
            exit_code: 3,
            reason: "Error".into(),
            message: "bad data\n".into(),
        };
        assert_eq!(plain.describe(), "exit code 3: bad data");
    }

    #[test]
    fn log_lines_lose_their_timestamps() {
        let (t, text) = split_timestamp("2025-05-12T09:20:10.123456789Z epoch 1 loss 0.3");
        assert!(t.is_some());
        assert_eq!(text, "epoch 1 loss 0.3");
        let (t, text) = split_timestamp("no timestamp here");
        assert!(t.is_none());
        assert_eq!(text, "no timestamp here");
        let a = split_timestamp("2025-05-12T09:20:10.1Z a").0.unwrap();
        let b = split_timestamp("2025-05-12T09:20:10.12Z b").0.unwrap();
        assert!(a < b);
    }
}

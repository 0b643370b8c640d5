//! The cluster loop: what `render` and `promote` do for a `target: kubernetes` environment —
//! the same serving image `ferry serve` runs, pushed to the environment's registry and named by
//! digest, rendered into typed objects with the environment's settings and secrets.

pub mod dev;
pub mod history;
pub mod platform;
pub mod promote;
pub mod score;
pub mod train;

use crate::docker::{self, DockerError};
use crate::images::build::ImageError;
use crate::images::push::{self, PushError, Pushed};
use crate::interrupt::{Interrupted, WatchError};
use crate::kube::{self, KubeError, Manifests, Release, Secrets};
use crate::project_plan::PlanError;
use crate::runs::RunError;
use crate::serving_image::{ServingImageError, serving_images, serving_plan};
use crate::session::NotebookFailed;
use crate::spec::{Project, SpecError, TargetKind};
use crate::ui::Ui;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "environment {env} runs on Docker, not in a cluster\n  hint: use `ferry serve`, or pick a `target: kubernetes` environment{}",
        list(others)
    )]
    NotACluster { env: String, others: Vec<String> },
    #[error(
        "no environment given\n  hint: name a `target: kubernetes` environment{}",
        list(others)
    )]
    NoEnvironment { others: Vec<String> },
    #[error(
        "environment {env} has no registry: a cluster pulls the serving image from one\n  hint: add `registry: registry.example.com/team` to environments.{env} in {file}"
    )]
    NoRegistry { env: String, file: String },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    ServingImage(#[from] ServingImageError),
    #[error(transparent)]
    Signals(#[from] WatchError),
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    #[error(transparent)]
    NotebookFailed(#[from] NotebookFailed),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Push(#[from] PushError),
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error(transparent)]
    Score(#[from] crate::score::ScoreError),
    #[error(
        "score input {input} is outside the project ({root}): in a cluster the scoring pods copy their inputs out of the project image\n  hint: move it under the project, or score it here without --env"
    )]
    ScoreInputOutside { input: String, root: String },
    #[error(
        "score input {input} is not in the project image: {file} leaves out {excluded}, and in a cluster the scoring pods copy their inputs out of the image\n  hint: remove the rule that excludes it from .dockerignore (or add `!{excluded}` after it), or score it here without --env"
    )]
    ScoreInputNotInImage {
        input: String,
        excluded: String,
        file: String,
    },
    #[error(
        "model {model} is not in the serving image, which holds {served}: in a cluster the serving image's ferry scores with its own models\n  hint: --model with a served model's name, or add the model to serve.models"
    )]
    ScoreModelNotServed { model: String, served: String },
    #[error(
        "shard {shard} of {shards} ({inputs}) failed: {reason}\n  hint: nothing was written; fix the input or the cause named, then run again"
    )]
    ShardFailed {
        shard: usize,
        shards: usize,
        inputs: String,
        reason: String,
    },
    #[error(transparent)]
    History(#[from] history::HistoryError),
    #[error(transparent)]
    Platform(#[from] platform::PlatformMismatch),
    #[error(
        "no platform to build the serving image of {env} for: the cluster's nodes could not be read and this machine's platform is not one ferry builds for\n  hint: set `platform: linux/amd64` or `linux/arm64` under `environment:` for {env}"
    )]
    NoPlatform { env: String },
    #[error(
        "{from} runs {source_image}, but the serving image built here from the same spec, files and models is {image}: promoting to {env} would not run what {from} runs. The rest of the image differs: ferry's own build or the ONNX Runtime library (ferry.lock says {from} was promoted by ferry {ferry})\n  hint: promote with the ferry that promoted {from}, promote {from} again first, or pass --rebuild to promote this image anyway"
    )]
    SourceDiffers {
        env: String,
        from: String,
        source_image: String,
        image: String,
        ferry: String,
    },
    #[error(
        "{env} takes what {from} runs, but the project changed since {from} was promoted (revision {revision}):\n{}\n  hint: promote {from} first (`ferry promote {from}`) so {env} gets what was tried there, check out what {from} runs, or pass --rebuild to promote the project as it is",
        changes.iter().map(|c| format!("    {c}")).collect::<Vec<_>>().join("\n")
    )]
    SourceChanged {
        env: String,
        from: String,
        revision: String,
        changes: Vec<crate::lock::Change>,
    },
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    #[error(transparent)]
    Select(#[from] crate::pipeline::select::SelectError),
    #[error(
        "{env}: the pipeline declares checks, and no successful run that passed them produced {}:{}\n  hint: {}",
        if models.len() == 1 { "this model" } else { "these models" },
        models.iter().map(|m| format!("\n    {m}")).collect::<String>(),
        if *protected {
            format!("run the pipeline (`ferry run`) until its checks pass; {env} is protected, so --unchecked is refused there")
        } else {
            "run the pipeline (`ferry run`) until its checks pass, or promote anyway with --unchecked".to_string()
        }
    )]
    Unchecked {
        env: String,
        models: Vec<crate::pipeline::gate::Unchecked>,
        protected: bool,
    },
    #[error(
        "{env} is protected: changing it needs a confirmation\n  hint: run in a terminal to be asked, or pass --yes"
    )]
    NeedsConfirmation { env: String },
    #[error("nothing was changed")]
    Declined,
    #[error("the rollout in {env} failed, and ferry {outcome}:\n{failure}")]
    RolledBack {
        env: String,
        failure: Box<KubeError>,
        outcome: String,
    },
    #[error(
        "{env} has {revisions} recorded revision(s): nothing to roll back to{}",
        nothing_to_roll_back(env, *latest, drift)
    )]
    NothingToRollBackTo {
        env: String,
        revisions: usize,
        /// The latest revision's number.
        latest: Option<u32>,
        /// Where the cluster differs from it.
        drift: Vec<String>,
    },
    #[error(
        "revision {revision} used the secret {name}, which the secrets file no longer has\n  hint: add {name} back to the environment's secrets file"
    )]
    SecretGone { revision: u32, name: String },
    #[error(
        "no model server pod runs in namespace {namespace}\n  hint: `ferry promote` puts one there; `ferry status` shows what runs"
    )]
    NoServer { namespace: String },
    #[error("the recorded revision {revision} cannot be read back: {message}")]
    StoredRevision { revision: u32, message: String },
    #[error(
        "train.inputs: {input} is not in the project image: {file} leaves out {excluded}, and in a cluster the training reads its inputs from the image (nothing on this machine is mounted)\n  hint: remove the rule that excludes it from .dockerignore (or add `!{excluded}` after it), then run again"
    )]
    InputNotInImage {
        input: String,
        excluded: String,
        file: String,
    },
    #[error(
        "the secrets file {secrets} of environment {env} would be copied into the project image, which is pushed to the environment's registry\n  hint: add `{secrets}` to {file}; its values reach the pods through a Secret, never an image"
    )]
    SecretsInImage {
        secrets: String,
        env: String,
        file: String,
    },
    #[error(
        "the {what} pod {pod} cannot start: {reason}{}{}\n  hint: {}",
        container.as_ref().map(|c| format!(" (container {c})")).unwrap_or_default(),
        if message.is_empty() { String::new() } else { format!(": {message}") },
        train::pod::pending_hint(reason)
    )]
    PodNotStarting {
        what: String,
        pod: String,
        reason: String,
        container: Option<String>,
        message: String,
    },
    #[error("{what} failed: {reason}")]
    PodFailed { what: String, reason: String },
    #[error("`{command}` in pod {pod} failed: {message}")]
    Exec {
        command: String,
        pod: String,
        message: String,
    },
    #[error("cannot collect the output {output}: {source}")]
    Collect {
        output: String,
        #[source]
        source: train::copy::CollectError,
    },
    #[error(
        "--detach is not supported for cluster environments ({env}): the notebook is reached through a port-forward that lives as long as ferry does\n  hint: run `ferry dev --env {env}` in a terminal of its own"
    )]
    DetachUnsupported { env: String },
    #[error("cannot forward 127.0.0.1:{port} to the notebook pod {pod}: {message}")]
    PortForward {
        port: u16,
        pod: String,
        message: String,
    },
}

fn list(envs: &[String]) -> String {
    if envs.is_empty() {
        String::new()
    } else {
        format!(" ({})", envs.join(", "))
    }
}

/// The rest of "nothing to roll back to": when the cluster is not what the latest revision
/// applied, a rollback is not the way back to it, a promotion is.
fn nothing_to_roll_back(env: &str, latest: Option<u32>, drift: &[String]) -> String {
    match latest {
        Some(n) if !drift.is_empty() => format!(
            ", and the cluster is not what revision {n} applied (changed by hand?):\n{}\n  hint: `ferry promote {env} --force-conflicts` applies revision {n}'s release again, as a new revision, and takes back the fields the edit changed; it applies the project as it is, so check first with `ferry status {env}` that nothing changed since revision {n}",
            drift
                .iter()
                .map(|d| format!("    {d}"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
        _ => format!("\n  hint: `ferry status {env}` shows what runs"),
    }
}

/// A release ready to apply: its image pushed, its objects rendered.
#[derive(Debug)]
pub struct Prepared {
    pub release: Release,
    /// The local serving image that was pushed.
    pub image: crate::images::build::Built,
    pub pushed: Pushed,
    pub manifests: Manifests,
}

/// The environments of a project that run in a cluster, in the order the file writes them.
pub fn cluster_environments(project: &Project) -> Vec<String> {
    project
        .environments
        .iter()
        .filter(|e| {
            Project::load(&project.file, Some(e))
                .is_ok_and(|p| p.spec.target == TargetKind::Kubernetes)
        })
        .cloned()
        .collect()
}

/// Checks that `project` is loaded for a cluster environment.
pub fn require_cluster(project: &Project) -> Result<String, ClusterError> {
    let others = cluster_environments(project);
    let Some(env) = project.spec.env.clone() else {
        return Err(ClusterError::NoEnvironment { others });
    };
    if project.spec.target != TargetKind::Kubernetes {
        return Err(ClusterError::NotACluster { env, others });
    }
    Ok(env)
}

/// The namespace of a cluster environment (default: the project's name).
pub(crate) fn namespace(project: &Project) -> String {
    project
        .spec
        .namespace
        .clone()
        .unwrap_or_else(|| project.spec.name.clone())
}

/// The registry a cluster environment pulls its images from.
pub(crate) fn registry(project: &Project, env: &str) -> Result<String, ClusterError> {
    project
        .spec
        .registry
        .clone()
        .ok_or_else(|| ClusterError::NoRegistry {
            env: env.to_string(),
            file: project.file.display().to_string(),
        })
}

/// The environment's secrets, read from its env file, if it names one.
pub(crate) fn environment_secrets(project: &Project) -> Result<Option<Secrets>, ClusterError> {
    match project
        .spec
        .cluster
        .as_ref()
        .and_then(|c| c.secrets.as_ref())
    {
        Some(p) => Ok(Some(Secrets::read(&project.path(p))?)),
        None => Ok(None),
    }
}

/// Builds the serving image (unless its content tag exists), pushes it to the environment's
/// registry, reads the environment's secrets and renders the objects. `cluster` is the
/// environment's cluster, whose nodes decide (or check) the image's platform; without one
/// (`render` where the cluster cannot be reached, `unreachable` says why) the spec's platform,
/// else this machine's, is used unchecked.
pub async fn prepare(
    project: &Project,
    cluster: Result<&::kube::Client, &KubeError>,
    ui: &Ui,
) -> Result<Prepared, ClusterError> {
    let env = require_cluster(project)?;
    let registry = registry(project, &env)?;
    // Secrets first: a missing file should stop us before minutes of building and pushing.
    let secrets = environment_secrets(project)?;
    let serving = serving_plan(project)?;
    let spec_hash = project.hash()?.as_str().to_string();
    let chosen = match cluster {
        Ok(client) => platform::for_environment(project, &env, client, ui).await?,
        Err(why) => platform::without_cluster(project, why, ui),
    };
    let docker = docker::connect().await?;
    // One serving image per platform, each from parts of its platform; several are pushed as
    // one image index, whose digest is what the cluster runs.
    let built = serving_images(&docker, project, &serving, &chosen.platforms, ui).await?;
    let repository = format!(
        "{}/{}-serve",
        registry.trim_end_matches('/'),
        project.spec.name
    );
    let (image, pushed) = match built.as_slice() {
        [] => {
            return Err(ClusterError::NoPlatform { env });
        }
        [(_, one)] => (
            one.clone(),
            push::push(&docker, &one.tag, &repository, ui).await?,
        ),
        several => {
            let tags: Vec<(crate::platform::Platform, String)> =
                several.iter().map(|(p, b)| (*p, b.tag.clone())).collect();
            let index = push::push_index(&docker, &tags, &repository, ui).await?;
            // ferry.lock names one local image beside the index: this machine's, if built.
            let host = crate::platform::Platform::host();
            let local = several
                .iter()
                .find(|(p, _)| Some(*p) == host)
                .unwrap_or(&several[0])
                .1
                .clone();
            (local, index.index)
        }
    };
    let release = Release::new(
        project,
        serving,
        pushed.reference.clone(),
        spec_hash,
        secrets,
    )?
    .running_on(&chosen.run_on);
    let manifests = kube::render(&release);
    Ok(Prepared {
        release,
        image,
        pushed,
        manifests,
    })
}

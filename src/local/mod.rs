//! The local loop on Docker: `ferry build`, `ferry dev` (the notebook), `ferry train`,
//! `ferry serve`, `ferry logs` and `ferry down`. Maps plan workloads onto containers; the plan,
//! run records, signals and the serving image it shares with the cluster loop live beneath both.

pub mod dev;
pub mod pipeline;
pub mod running;
pub mod serve;
pub mod train;
mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::docker::{self, ContainerSpec, DockerError, LABEL_PROJECT, LABEL_ROLE, LABEL_ROOT};
use crate::images::build::{self as images, Built, ImageError};
use crate::interrupt::{Interrupt, Interrupted, WatchError};
use crate::onnx::OnnxError;
use crate::plan::{VolumePath, Workload};
use crate::project_plan::{PlanError, make_plan};
use crate::runs::RunError;
use crate::serving_image::ServingImageError;
use crate::session::NotebookFailed;
use crate::spec::{Project, SpecError};
use crate::ui::Ui;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Image(#[from] ImageError),
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
    #[error("the model server did not become ready: {reason}{}", last_lines(tail))]
    ServerFailed { reason: String, tail: Vec<String> },
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error(transparent)]
    Notebook(#[from] crate::notebook::NotebookError),
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    #[error(transparent)]
    Select(#[from] crate::pipeline::select::SelectError),
    #[error(
        "the steps training needs failed, so training did not start: {reason}\n  record: {}",
        record.display()
    )]
    StepsFirst { reason: String, record: PathBuf },
    #[error(
        "{} runs on this machine's Docker engine, which runs {engine} programs, but the spec asks for {}\n  hint: leave `platform:` out for this environment (the engine's platform is the default), add {engine} to `platforms:`, or point DOCKER_HOST at an engine of that platform",
        env.as_deref().map_or("the project".to_string(), |e| format!("environment {e}")),
        wanted.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    Platform {
        env: Option<String>,
        engine: crate::platform::Platform,
        wanted: Vec<crate::platform::Platform>,
    },
    #[error(
        "--network host needs a local Linux Docker engine (this one is remote, rootless or in a VM, so its host network is not this machine's loopback)\n  hint: leave --network out, or use --network bridge"
    )]
    HostNetworkUnavailable,
    #[error("no {what} of this project is running\n  hint: `ferry serve` or `ferry dev` start one")]
    NothingRunning { what: String },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("watching {}: {message}", path.display())]
    Watch { path: PathBuf, message: String },
    #[error(
        "{what} of this project already runs (container {container}) with other settings:{}\n  hint: add --restart to `{command}` to replace it with these settings, or stop it with `ferry down`",
        differences.iter().map(|d| format!("\n  - {d}")).collect::<String>()
    )]
    RunningDiffers {
        what: &'static str,
        command: &'static str,
        container: String,
        differences: Vec<String>,
    },
}

impl LocalError {
    pub(crate) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LocalError {
        let path = path.to_path_buf();
        move |source| LocalError::Io { what, path, source }
    }

    /// The process exit code this error should give.
    pub fn exit_code(&self) -> i32 {
        match self {
            LocalError::Run(e) => e.exit_code(),
            LocalError::Interrupted(_) => 130,
            _ => 1,
        }
    }
}

use crate::ui::tail_block as last_lines;

/// The images `ferry build` made or found.
#[derive(Clone, Debug, Serialize)]
pub struct BuildResult {
    pub environment: Built,
    pub project: Built,
    pub spec_hash: String,
}

/// The platform the local loop builds and runs images for: the engine's own, since it runs
/// them. A spec whose `platform(s)` leave it out is refused before anything is built.
pub(crate) async fn engine_platform(
    docker: &bollard::Docker,
    project: &Project,
) -> Result<crate::platform::Platform, LocalError> {
    let engine = docker::engine_platform(docker).await?;
    let wanted = project.spec.environment.requested_platforms();
    if wanted.is_empty() || wanted.contains(&engine) {
        Ok(engine)
    } else {
        Err(LocalError::Platform {
            env: project.spec.env.clone(),
            engine,
            wanted,
        })
    }
}

/// Builds (or finds) the environment and project images.
pub async fn build(project: &Project, ui: &Ui) -> Result<BuildResult, LocalError> {
    let mut interrupt = Interrupt::new()?;
    let plan = make_plan(project)?;
    let docker = docker::connect().await?;
    engine_platform(&docker, project).await?;
    // Dropping a build at Ctrl-C closes its connection: the engine cancels it and, with
    // forcerm, removes its intermediate containers.
    let (env, proj) = interrupt
        .guard(async {
            let env = images::ensure_env_image(&docker, project, &plan, ui).await?;
            let proj = images::ensure_project_image(&docker, project, &env, ui).await?;
            Ok::<_, LocalError>((env, proj))
        })
        .await?;
    Ok(BuildResult {
        environment: env,
        project: proj,
        spec_hash: project.hash()?.to_string(),
    })
}

/// Checks, before anything is built or started, that the engine can give the workload the GPUs
/// it asks for.
async fn check_gpus(docker: &bollard::Docker, w: &Workload) -> Result<(), LocalError> {
    if w.gpu.is_some_and(|n| n > 0) {
        docker::check_gpu_support(docker, &format!("{}.resources.gpu", w.role)).await?;
    }
    Ok(())
}

/// Labels that tie a container to this project directory.
fn labels(project: &Project, role: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_PROJECT.to_string(), project.spec.name.clone()),
        (
            LABEL_ROOT.to_string(),
            project.root.to_string_lossy().into_owned(),
        ),
        (LABEL_ROLE.to_string(), role.to_string()),
    ])
}

/// Containers run as the owner of the project directory, so what they write there is theirs.
fn owner(root: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(root)
        .ok()
        .map(|m| format!("{}:{}", m.uid(), m.gid()))
}

/// A short, stable suffix for container names, so two checkouts of one project do not collide.
fn root_key(root: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(root.to_string_lossy().as_bytes()))[..8].to_string()
}

/// The container for a workload; `host_for` says where each mounted project path comes from.
fn container_spec(
    project: &Project,
    w: &Workload,
    image: &str,
    name: String,
    host_for: impl Fn(&VolumePath) -> PathBuf,
) -> ContainerSpec {
    ContainerSpec {
        name,
        image: image.to_string(),
        argv: w.argv.clone(),
        env: w.env.clone(),
        workdir: w.workdir.clone(),
        mounts: w
            .volumes
            .iter()
            .map(|v| docker::Mount {
                host: host_for(&v.path),
                container: match &v.path {
                    VolumePath::Project => w.workdir.clone(),
                    VolumePath::Sub(p) => format!("{}/{}", w.workdir, p.as_str()),
                },
                read_only: v.read_only,
            })
            .collect(),
        ports: w.ports.iter().map(|p| (p.container, p.published)).collect(),
        nano_cpus: w.cpu.as_ref().map(|c| c.nanos()),
        memory: w.memory.as_ref().map(|m| m.bytes as i64),
        gpus: w.gpu,
        user: owner(&project.root),
        labels: labels(project, w.role),
        hardened: false,
        read_only_root: false,
        tmpfs: Vec::new(),
        host_network: false,
    }
}

/// `ferry logs`: the output of this project's containers, each line prefixed with its role when
/// there are several.
pub async fn logs(
    root: &Path,
    role: Option<&str>,
    follow: bool,
    tail: usize,
) -> Result<(), LocalError> {
    use futures_util::StreamExt;
    let docker = docker::connect().await?;
    let root_s = root.to_string_lossy();
    let mut labels = vec![(LABEL_ROOT, root_s.as_ref())];
    if let Some(r) = role {
        labels.push((LABEL_ROLE, r));
    }
    let found = docker::find_containers(&docker, &labels).await?;
    if found.is_empty() {
        return Err(LocalError::NothingRunning {
            what: role.unwrap_or("container").to_string(),
        });
    }
    let prefix = found.len() > 1;
    let mut streams = Vec::new();
    for c in found {
        let opts = bollard::query_parameters::LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .follow(follow)
            .tail(&tail.to_string())
            .build();
        let label = c.labels.get(LABEL_ROLE).cloned().unwrap_or_default();
        let s = docker
            .logs(&c.id, Some(opts))
            .map(move |item| (label.clone(), item));
        streams.push(s.boxed());
    }
    let mut all = futures_util::stream::select_all(streams);
    while let Some((label, item)) = all.next().await {
        let chunk = item.map_err(|e| DockerError::api("reading logs", e))?;
        for line in String::from_utf8_lossy(&chunk.into_bytes()).lines() {
            if prefix {
                println!("{label:>8} | {line}");
            } else {
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// Why a container did not come up: a sentence and its last output lines.
pub(crate) struct NotReady {
    pub reason: String,
    pub tail: Vec<String>,
}

/// A client for ferry's own containers on loopback: no proxy, short timeouts.
pub(crate) fn local_client() -> Result<reqwest::Client, NotReady> {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .no_proxy()
        .build()
        .map_err(|e| NotReady {
            reason: e.to_string(),
            tail: vec![],
        })
}

/// Polls `url` until it answers 2xx. Gives up when the container stops (saying with which exit
/// code) or after `timeout`, with the container's last output lines either way.
pub(crate) async fn wait_http(
    docker: &bollard::Docker,
    id: &str,
    url: &str,
    auth: Option<&str>,
    timeout: std::time::Duration,
) -> Result<(), NotReady> {
    let client = local_client()?;
    let started = std::time::Instant::now();
    loop {
        let mut req = client.get(url);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        if req.send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        let state = docker
            .inspect_container(id, None)
            .await
            .ok()
            .and_then(|c| c.state);
        let running = state.as_ref().and_then(|s| s.running).unwrap_or(false);
        if !running || started.elapsed() > timeout {
            let reason = if running {
                format!("no answer from {url} after {}s", timeout.as_secs())
            } else {
                let code = state.and_then(|s| s.exit_code).unwrap_or(-1);
                format!("the container exited with code {code}")
            };
            return Err(NotReady {
                reason,
                tail: dev::logs_tail(docker, id, 15).await,
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

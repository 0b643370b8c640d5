//! `ferry serve`: the project's model(s) in the serving image, on 127.0.0.1; the same image a
//! cluster runs. Checks every model before building, waits until the server is ready, prints
//! the endpoint; `--detach` leaves it running for `ferry down`. A server of the project that
//! already runs is reported when it is what would start, and replaced only with `--restart`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use serde::{Deserialize, Serialize};

use super::running::{self, Decision, Role};
use super::{LocalError, container_spec, dev::logs_tail, root_key};
use crate::docker::{self, ContainerSpec};
use crate::interrupt::Interrupt;
use crate::plan::{Serving, VolumePath};
use crate::server::ServingConfig;
use crate::server::config::{HOST_ENV, LOG_ENV, PORT_ENV, WATCH_ENV};
use crate::serving_image::{serving_image, serving_plan};
use crate::spec::Project;
use crate::state::STATE_DIR;
use crate::ui::Ui;

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running server, also written to `.ferry/serve.json` for `ferry predict`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Endpoint {
    pub url: String,
    pub models: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Found running as this command would have started it, rather than started by it.
    #[serde(skip)]
    pub already_running: bool,
}

#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    pub port: Option<u16>,
    pub detach: bool,
    pub network: Network,
    /// Replace a running server of the project, even one with other settings.
    pub restart: bool,
}

/// The server role, as `running` names it in its decisions and messages.
const ROLE: Role<'static> = Role {
    label: "serve",
    what: "the model server",
    command: "ferry serve",
    port_flag: "--port (or serve.port in ferry.yaml)",
};

/// How the serving container is reached on 127.0.0.1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Network {
    /// Host networking where the engine shares this machine's loopback, else a bridge.
    #[default]
    Auto,
    /// The host's network namespace; the server binds 127.0.0.1 itself. No userland proxy
    /// sits between client and server, which is worth several times the throughput.
    Host,
    /// A bridge network and a port published on 127.0.0.1 (the engine's proxy forwards it).
    Bridge,
}

/// The serving config for running natively: models read where they are (and watched), on
/// loopback.
pub fn native_config(project: &Project, serving: &Serving, port: Option<u16>) -> ServingConfig {
    let mut config = serving.config.clone();
    config.host = "127.0.0.1".into();
    config.watch = true;
    if let (Some(log), Some(spec)) = (
        &mut config.log,
        project.spec.serve.as_ref().and_then(|s| s.log.as_ref()),
    ) {
        log.path = Some(project.path(&spec.path));
    }
    config.port = port.unwrap_or(serving.workload.ports[0].published);
    for model in &mut config.models {
        for v in &mut model.variants {
            let p = v.path.to_string_lossy().into_owned();
            if let Some(m) = serving.models.iter().find(|m| m.image_path == p) {
                v.path = project.path(&m.source);
            }
        }
    }
    config
}

fn endpoint_file(root: &Path) -> PathBuf {
    root.join(STATE_DIR).join("serve.json")
}

pub fn save_endpoint(root: &Path, e: &Endpoint) -> Result<(), LocalError> {
    let path = endpoint_file(root);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(LocalError::io("cannot create", dir))?;
    }
    let json = serde_json::to_vec_pretty(e).unwrap_or_default();
    std::fs::write(&path, json).map_err(LocalError::io("cannot write", &path))
}

/// The endpoint `ferry serve` last started for this project, if any.
pub fn saved_endpoint(root: &Path) -> Option<Endpoint> {
    let bytes = std::fs::read(endpoint_file(root)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub fn forget_endpoint(root: &Path) {
    let _ = std::fs::remove_file(endpoint_file(root));
}

/// `ferry serve` on Docker.
pub async fn serve(
    project: &Project,
    opts: &ServeOptions,
    ui: &Ui,
    on_ready: impl Fn(&Endpoint),
) -> Result<Endpoint, LocalError> {
    let mut interrupt = Interrupt::new()?;
    let serving = serving_plan(project)?;
    let docker = docker::connect().await?;
    // The image runs on this engine: for its platform, whatever machine ferry runs on.
    let platform = super::engine_platform(&docker, project).await?;
    super::check_gpus(&docker, &serving.workload).await?;
    let image = interrupt
        .guard(async {
            Ok::<_, LocalError>(serving_image(&docker, project, &serving, platform, ui).await?)
        })
        .await?;
    let mut work = serving.workload.clone();
    if let (Some(p), Some(port)) = (opts.port, work.ports.first_mut()) {
        port.published = p;
    }
    let published = work.ports.first().map_or(0, |p| p.published);
    let host_network = match opts.network {
        Network::Bridge => false,
        Network::Auto => docker::shares_host_loopback(&docker).await,
        Network::Host if docker::shares_host_loopback(&docker).await => true,
        Network::Host => return Err(LocalError::HostNetworkUnavailable),
    };

    let name = format!(
        "ferry-{}-{}-serve",
        project.spec.name,
        root_key(&project.root)
    );
    let root = project.root.clone();
    let mut spec = ContainerSpec {
        argv: Vec::new(),
        workdir: "/".into(),
        // The image's own non-root user, not the project owner: the server writes nothing.
        user: None,
        hardened: true,
        host_network,
        ..container_spec(project, &work, &image.tag, name, |v| match v {
            VolumePath::Project => root.clone(),
            VolumePath::Sub(p) => p.under(&root),
        })
    };
    if host_network {
        // Loopback only, as a published port would be.
        spec.env.insert(HOST_ENV.into(), "127.0.0.1".into());
        spec.env.insert(PORT_ENV.into(), published.to_string());
    }
    watch_project_models(&mut spec, project, &serving);
    if let Some(log) = project.spec.serve.as_ref().and_then(|s| s.log.as_ref()) {
        log_to_project(&mut spec, project, &log.path)?;
    }
    let settings = running::config_of(&spec, &image.id, &[]);
    running::label(&mut spec, &settings);
    let url = format!("http://127.0.0.1:{published}");
    let models: Vec<String> = serving
        .config
        .models
        .iter()
        .map(|m| m.name.clone())
        .collect();

    // Everything that can fail has been checked: only now is a running server looked at.
    let decision = running::decide(&docker, &project.root, &ROLE, &settings, opts.restart).await?;
    // Recorded once it is what runs (or is about to): a refused start leaves the lock alone.
    let served = crate::lock::ImageRef {
        tag: image.tag.clone(),
        id: image.id.clone(),
        digest: None,
    };
    crate::lock::update_entry(project, |e| e.images.serving = Some(served))?;
    let replace = match decision {
        Decision::Reuse(c) => {
            wait_ready(&docker, &c.id, &url).await?;
            let endpoint = Endpoint {
                url,
                models,
                container: Some(c.id),
                image: Some(image.tag.clone()),
                already_running: true,
            };
            save_endpoint(&project.root, &endpoint)?;
            on_ready(&endpoint);
            return Ok(endpoint);
        }
        Decision::Start => None,
        Decision::Replace(c) => Some(c.id),
    };
    if let Some(id) = replace {
        let step = ui.step("stopping the running model server");
        stop_gracefully(&docker, &id).await?;
        step.finish("stopped and removed the running model server");
    }
    let step = ui.step(format!(
        "starting the model server on 127.0.0.1:{published}"
    ));
    let id = docker::run_spec(&docker, &spec).await?;
    let ready = interrupt.guard(wait_ready(&docker, &id, &url)).await;
    match ready {
        Ok(()) => step.finish(format!("model server ready on {url}")),
        Err(e) => {
            step.fail();
            let _ = docker::remove_container(&docker, &id).await;
            return Err(e);
        }
    }
    let endpoint = Endpoint {
        url,
        models,
        container: Some(id.clone()),
        image: Some(image.tag.clone()),
        already_running: false,
    };
    save_endpoint(&project.root, &endpoint)?;
    on_ready(&endpoint);
    if opts.detach {
        return Ok(endpoint);
    }

    let show = ui.is_human();
    let follow = docker::follow_logs(&docker, &id, |line| {
        if show {
            eprintln!("{} {line}", console::style("│").dim());
        }
    });
    tokio::select! {
        r = follow => {
            // The server stopped by itself: say why.
            r?;
            let exit = docker::wait_exit(&docker, &id).await?;
            let tail = logs_tail(&docker, &id, 15).await;
            let _ = docker::remove_container(&docker, &id).await;
            forget_endpoint(&project.root);
            Err(LocalError::ServerFailed { reason: format!("the server stopped: {}", exit.describe("serve.resources.memory")), tail })
        }
        _ = interrupt.recv() => {
            let step = ui.step("stopping the model server");
            stop_gracefully(&docker, &id).await?;
            forget_endpoint(&project.root);
            step.finish("stopped and removed the model server");
            Ok(endpoint)
        }
    }
}

/// Where the project's model files are mounted (read-only, by directory) in a local server.
const LIVE_MODELS: &str = "/run/ferry/models";

/// Lets the local server pick up a model the project changes (`ferry train` writing
/// `serve.model`) without a rebuild: each model's directory is mounted read-only, and
/// [`WATCH_ENV`] tells the server which mounted file stands for which model of its config. The
/// directory rather than the file, because a trainer that writes a new file and renames it over
/// the old one leaves a file mount on the old inode.
fn watch_project_models(spec: &mut ContainerSpec, project: &Project, serving: &Serving) {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut map = std::collections::BTreeMap::new();
    for model in &serving.models {
        let host = project.path(&model.source);
        let (Some(dir), Some(name)) = (host.parent(), host.file_name()) else {
            continue;
        };
        let index = match dirs.iter().position(|d| d == dir) {
            Some(i) => i,
            None => {
                dirs.push(dir.to_path_buf());
                dirs.len() - 1
            }
        };
        map.insert(
            model.image_path.clone(),
            format!("{LIVE_MODELS}/{index}/{}", name.to_string_lossy()),
        );
    }
    for (index, dir) in dirs.into_iter().enumerate() {
        spec.mounts.push(docker::Mount {
            host: dir,
            container: format!("{LIVE_MODELS}/{index}"),
            read_only: true,
        });
    }
    if let Ok(json) = serde_json::to_string(&map) {
        spec.env.insert(WATCH_ENV.into(), json);
    }
}

/// Where the project's log directory is mounted in a local server.
const LOG_DIR: &str = "/run/ferry/log";

/// `serve.log` into the project: its directory made and mounted writable, the server told the
/// file ([`LOG_ENV`]) and run as the project's owner, so the records are the user's files.
fn log_to_project(
    spec: &mut ContainerSpec,
    project: &Project,
    path: &crate::spec::RelPath,
) -> Result<(), LocalError> {
    let file = project.path(path);
    let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
        return Ok(());
    };
    std::fs::create_dir_all(dir)
        .map_err(LocalError::io("creating the directory of serve.log", dir))?;
    spec.mounts.push(docker::Mount {
        host: dir.to_path_buf(),
        container: LOG_DIR.into(),
        read_only: false,
    });
    spec.env.insert(
        LOG_ENV.into(),
        format!("{LOG_DIR}/{}", name.to_string_lossy()),
    );
    spec.user = super::owner(&project.root);
    Ok(())
}

/// SIGTERM first, so the server finishes the requests in flight, then removal.
async fn stop_gracefully(docker: &Docker, id: &str) -> Result<(), LocalError> {
    let opts = bollard::query_parameters::StopContainerOptionsBuilder::default()
        .t(30)
        .build();
    let _ = docker.stop_container(id, Some(opts)).await;
    Ok(docker::remove_container(docker, id).await?)
}

/// Polls readiness until 200, or the container stops.
async fn wait_ready(docker: &Docker, id: &str, url: &str) -> Result<(), LocalError> {
    super::wait_http(
        docker,
        id,
        &format!("{url}/v2/health/ready"),
        None,
        READY_TIMEOUT,
    )
    .await
    .map_err(not_ready)
}

fn not_ready(n: super::NotReady) -> LocalError {
    LocalError::ServerFailed {
        reason: n.reason,
        tail: n.tail,
    }
}

/// `ferry serve --native`: the same server in this process, models read in place.
pub async fn serve_native(
    project: &Project,
    port: Option<u16>,
    ui: &Ui,
    on_ready: impl Fn(&Endpoint),
) -> Result<(), LocalError> {
    let mut interrupt = Interrupt::new()?;
    let serving = serving_plan(project)?;
    let config = native_config(project, &serving, port);
    docker::check_port_free(config.port, "--port (or serve.port in ferry.yaml)")?;
    let endpoint = Endpoint {
        url: format!("http://127.0.0.1:{}", config.port),
        models: config.models.iter().map(|m| m.name.clone()).collect(),
        container: None,
        image: None,
        already_running: false,
    };
    let step = ui.step("loading models");
    let server = tokio::spawn(crate::server::run(config, async move {
        interrupt.recv().await;
    }));
    let client = super::local_client().map_err(not_ready)?;
    let ready = format!("{}/v2/health/ready", endpoint.url);
    loop {
        if server.is_finished() {
            step.fail();
            break;
        }
        if client
            .get(&ready)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            step.finish(format!("model server ready on {}", endpoint.url));
            save_endpoint(&project.root, &endpoint)?;
            on_ready(&endpoint);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let result = server.await.map_err(|e| LocalError::ServerFailed {
        reason: e.to_string(),
        tail: vec![],
    })?;
    forget_endpoint(&project.root);
    Ok(result?)
}

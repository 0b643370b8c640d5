//! `ferry dev`: Jupyter in the environment image with the project mounted. Prints the URL only
//! once Jupyter answers; watches ferry.yaml and the requirements file, rebuilding and restarting
//! when they change (notebooks live on the host, so a restart loses nothing); Ctrl-C removes
//! the container. `--detach` leaves it running for `ferry down`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use serde::{Deserialize, Serialize};

use super::{Interrupt, LocalError, STATE_DIR, container_spec, make_plan, root_key};
use crate::docker::{self, LABEL_ROOT};
use crate::images::build as images;
use crate::plan::{TOKEN_VAR, VolumePath};
use crate::spec::{Project, SPEC_FILE};
use crate::ui::Ui;

/// How long Jupyter gets to answer before we give up and show its output.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// What a running notebook session is; also written to `.ferry/dev.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    pub url: String,
    pub container: String,
    pub image: String,
    pub port: u16,
    #[serde(skip_serializing)]
    pub token: String,
}

#[derive(Clone, Debug)]
pub struct DevOptions {
    pub env: Option<String>,
    pub port: Option<u16>,
    pub detach: bool,
}

fn new_token() -> String {
    let bytes: [u8; 24] = rand::random();
    hex::encode(bytes)
}

fn load(file: &Path, opts: &DevOptions) -> Result<Project, LocalError> {
    Ok(Project::load(file, opts.env.as_deref())?)
}

/// Starts (or restarts) the notebook container and waits until Jupyter answers.
async fn start(
    docker: &Docker,
    project: &Project,
    opts: &DevOptions,
    token: &str,
    ui: &Ui,
) -> Result<Session, LocalError> {
    let plan = make_plan(project)?;
    let Some(mut work) = plan.notebook.clone() else {
        return Err(LocalError::MissingSection {
            file: project.file.clone(),
            section: "notebook",
            hint: "add `notebook: { port: 8888 }`",
        });
    };
    if let (Some(p), Some(port)) = (opts.port, work.ports.first_mut()) {
        port.published = p;
    }
    let published = work.ports.first().map_or(0, |p| p.published);
    super::check_gpus(docker, &work).await?;
    let env = images::ensure_env_image(docker, project, &plan, ui).await?;

    // Our own earlier container may hold the port; anything else holding it is an error.
    stop_all(docker, &project.root).await?;
    docker::check_port_free(published, "--port (or notebook.port in ferry.yaml)")?;

    work.env.insert(TOKEN_VAR.into(), token.to_string());
    let name = format!(
        "ferry-{}-{}-notebook",
        project.spec.name,
        root_key(&project.root)
    );
    let root = project.root.clone();
    let spec = container_spec(project, &work, &env.tag, name, |v| match v {
        VolumePath::Project => root.clone(),
        VolumePath::Sub(p) => p.under(&root),
    });
    let step = ui.step(format!("starting Jupyter on 127.0.0.1:{published}"));
    let id = docker::run_spec(docker, &spec).await?;
    match wait_ready(docker, &id, published, token).await {
        Ok(()) => step.finish(format!("Jupyter ready on 127.0.0.1:{published}")),
        Err(e) => {
            step.fail();
            let _ = docker::remove_container(docker, &id).await;
            return Err(e);
        }
    }
    let session = Session {
        url: format!("http://127.0.0.1:{published}/lab?token={token}"),
        container: id,
        image: env.tag,
        port: published,
        token: token.to_string(),
    };
    save_session(&project.root, &session)?;
    Ok(session)
}

/// Polls Jupyter's API with the token until it answers 200, or the container dies.
async fn wait_ready(docker: &Docker, id: &str, port: u16, token: &str) -> Result<(), LocalError> {
    let url = format!("http://127.0.0.1:{port}/api/status");
    let auth = format!("token {token}");
    super::wait_http(docker, id, &url, Some(&auth), READY_TIMEOUT)
        .await
        .map_err(|n| LocalError::NotebookFailed {
            reason: n.reason,
            tail: n.tail,
        })
}

pub(crate) async fn logs_tail(docker: &Docker, id: &str, n: usize) -> Vec<String> {
    use futures_util::StreamExt;
    let opts = bollard::query_parameters::LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .tail(&n.to_string())
        .build();
    let mut out = Vec::new();
    let mut s = docker.logs(id, Some(opts));
    while let Some(Ok(chunk)) = s.next().await {
        out.extend(
            String::from_utf8_lossy(&chunk.into_bytes())
                .lines()
                .map(str::to_string),
        );
    }
    let skip = out.len().saturating_sub(n);
    out.split_off(skip)
}

fn session_file(root: &Path) -> PathBuf {
    root.join(STATE_DIR).join("dev.json")
}

fn save_session(root: &Path, s: &Session) -> Result<(), LocalError> {
    let path = session_file(root);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(LocalError::io("cannot create", dir))?;
    }
    let json = serde_json::to_vec_pretty(s).unwrap_or_default();
    std::fs::write(&path, json).map_err(LocalError::io("cannot write", &path))
}

/// Removes every container ferry runs for this project directory; returns their names.
pub async fn stop_all(docker: &Docker, root: &Path) -> Result<Vec<String>, LocalError> {
    let root_s = root.to_string_lossy();
    let found = docker::find_containers(docker, &[(LABEL_ROOT, root_s.as_ref())]).await?;
    let mut names = Vec::new();
    for c in found {
        docker::remove_container(docker, &c.id).await?;
        names.push(c.name);
    }
    let _ = std::fs::remove_file(session_file(root));
    super::serve::forget_endpoint(root);
    Ok(names)
}

/// `ferry down`.
pub async fn down(root: &Path) -> Result<Vec<String>, LocalError> {
    let docker = docker::connect().await?;
    stop_all(&docker, root).await
}

/// `ferry dev`. Returns when detached, or when the user stops it.
pub async fn dev(
    file: &Path,
    opts: &DevOptions,
    ui: &Ui,
    on_ready: impl Fn(&Session),
) -> Result<Session, LocalError> {
    let mut interrupt = Interrupt::new()?;
    let project = load(file, opts)?;
    let docker = docker::connect().await?;
    let token = new_token();

    // The watch starts before the notebook: a change made while it starts is not lost.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = None;
    if !opts.detach {
        watcher = Some(watch(&project, tx)?);
    }

    let first = interrupt
        .guard(start(&docker, &project, opts, &token, ui))
        .await;
    let mut session = match first {
        Ok(s) => s,
        Err(e) => {
            if matches!(e, LocalError::Interrupted) {
                let _ = stop_all(&docker, &project.root).await;
            }
            return Err(e);
        }
    };
    on_ready(&session);
    let Some(watcher) = watcher else {
        return Ok(session);
    };
    let mut watched = watched_files(&project);
    ui.info(format!(
        "watching {} for changes; Ctrl-C stops",
        watched
            .iter()
            .map(|p| p
                .strip_prefix(&project.root)
                .unwrap_or(p)
                .display()
                .to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));

    loop {
        tokio::select! {
            _ = interrupt.recv() => {
                let step = ui.step("stopping Jupyter");
                stop_all(&docker, &project.root).await?;
                step.finish("stopped and removed the notebook container");
                drop(watcher);
                return Ok(session);
            }
            Some(paths) = rx.recv() => {
                if !paths.iter().any(|p| watched.contains(p)) {
                    continue;
                }
                ui.info("dependencies changed: checking the environment");
                let project = match load(file, opts) {
                    Ok(p) => p,
                    Err(e) => {
                        ui.warn(format!("{e}\nkeeping the running notebook; fix the spec to reload"));
                        continue;
                    }
                };
                watched = watched_files(&project);
                let plan = make_plan(&project)?;
                let unchanged = match images::ensure_env_image(&docker, &project, &plan, ui).await {
                    Ok(env) => env.tag == session.image
                        && published_port(&project, opts) == Some(session.port),
                    Err(e) => {
                        ui.warn(format!("{e}\nkeeping the running notebook until the next change builds"));
                        continue;
                    }
                };
                if unchanged {
                    ui.info("the environment is unchanged; the notebook keeps running");
                    continue;
                }
                match start(&docker, &project, opts, &token, ui).await {
                    Ok(s) => {
                        ui.info(format!("restarted with {}", s.image));
                        session = s;
                        on_ready(&session);
                    }
                    Err(e) => {
                        ui.warn(format!("{e}\nthe notebook is stopped until the next change builds"));
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(2)) => {
                // A notebook that died on its own (e.g. killed) should not leave ferry waiting.
                let alive = docker.inspect_container(&session.container, None).await
                    .ok().and_then(|c| c.state).and_then(|s| s.running).unwrap_or(false);
                if !alive {
                    let tail = logs_tail(&docker, &session.container, 15).await;
                    let _ = stop_all(&docker, &project.root).await;
                    return Err(LocalError::NotebookFailed {
                        reason: "the notebook container stopped".into(),
                        tail,
                    });
                }
            }
        }
    }
}

fn published_port(project: &Project, opts: &DevOptions) -> Option<u16> {
    opts.port
        .or_else(|| project.spec.notebook.as_ref().map(|n| n.port))
}

/// Watches the project directory (and the requirements file's, if elsewhere). Directories, not
/// files: editors save by rename, which a watch on the file itself would lose.
fn watch(
    project: &Project,
    tx: tokio::sync::mpsc::UnboundedSender<Vec<PathBuf>>,
) -> Result<notify_debouncer_mini::Debouncer<notify::RecommendedWatcher>, LocalError> {
    let werr = |path: &Path, e: notify::Error| LocalError::Watch {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut debouncer = notify_debouncer_mini::new_debouncer(
        Duration::from_millis(400),
        move |res: notify_debouncer_mini::DebounceEventResult| {
            if let Ok(events) = res {
                let _ = tx.send(events.into_iter().map(|e| e.path).collect());
            }
        },
    )
    .map_err(|e| werr(&project.root, e))?;
    let mut dirs: Vec<PathBuf> = watched_files(project)
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        debouncer
            .watcher()
            .watch(d, notify::RecursiveMode::NonRecursive)
            .map_err(|e| werr(d, e))?;
    }
    Ok(debouncer)
}

/// The files whose change means a new environment image.
fn watched_files(project: &Project) -> Vec<PathBuf> {
    let mut v = vec![project.file.clone(), project.root.join(SPEC_FILE)];
    if let Some(r) = &project.spec.environment.requirements {
        v.push(project.path(r));
    }
    v.push(project.root.join(".dockerignore"));
    let mut v: Vec<PathBuf> = v
        .iter()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        .collect();
    v.sort();
    v.dedup();
    v
}

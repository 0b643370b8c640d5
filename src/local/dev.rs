//! `ferry dev`: Jupyter in the environment image with the project mounted. Prints the URL only
//! once Jupyter answers; watches ferry.yaml, the requirements file and .dockerignore, rebuilding
//! and restarting when a change gives the notebook another image or other settings (notebooks
//! live on the host, so a restart loses nothing); Ctrl-C removes the container. `--detach`
//! leaves it running for `ferry down`. A notebook of the project that already runs is reported
//! when it is what would start, and replaced only with `--restart`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;

use super::running::{self, Config, Decision, Role};
use super::watch::Watch;
use super::{LocalError, container_spec, root_key};
use crate::docker::{self, ContainerSpec, LABEL_ROLE, LABEL_ROOT};
use crate::images::build::{self as images, Built};
use crate::interrupt::Interrupt;
use crate::plan::{EnvImage, TOKEN_VAR, VolumePath};
use crate::project_plan::{PlanError, make_plan};
use crate::session::{DevOptions, NotebookFailed, Session};
use crate::spec::{Project, SPEC_FILE};
use crate::state::STATE_DIR;
use crate::ui::Ui;

/// How long Jupyter gets to answer before we give up and show its output.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

fn new_token() -> String {
    let bytes: [u8; 24] = rand::random();
    hex::encode(bytes)
}

fn load(file: &Path, opts: &DevOptions) -> Result<Project, LocalError> {
    Ok(Project::load(file, opts.env.as_deref())?)
}

/// What decides the environment image as the spec and the requirements file say it. While it
/// stays the same, a check reuses the image it found before instead of looking again (which
/// would also re-record `ferry.lock`, hashing the training data).
#[derive(Clone, Debug, PartialEq)]
struct EnvInputs {
    image: EnvImage,
    requirement_lines: Vec<String>,
}

/// A notebook container ready to start: every check that can fail is behind it.
#[derive(Clone)]
struct Prepared {
    /// Without the token, labelled with its settings.
    spec: ContainerSpec,
    settings: Config,
    port: u16,
    image: Built,
    inputs: EnvInputs,
}

/// The notebook role, as `running` names it in its decisions and messages.
const ROLE: Role<'static> = Role {
    label: "notebook",
    what: "the notebook",
    command: "ferry dev",
    port_flag: "--port (or notebook.port in ferry.yaml)",
};

/// Validates the notebook section, checks GPU support and finds or builds the environment
/// image; `known` is an image found before for these inputs. `on_build` runs just before the
/// environment is looked at again.
async fn prepare(
    docker: &Docker,
    project: &Project,
    opts: &DevOptions,
    ui: &Ui,
    known: Option<(&EnvInputs, &Built)>,
    on_build: impl FnOnce(),
) -> Result<Prepared, LocalError> {
    let plan = make_plan(project)?;
    let Some(mut work) = plan.notebook.clone() else {
        return Err(PlanError::MissingSection {
            file: project.file.clone(),
            section: "notebook",
            hint: "add `notebook: { port: 8888 }`",
        }
        .into());
    };
    if let (Some(p), Some(port)) = (opts.port, work.ports.first_mut()) {
        port.published = p;
    }
    let port = work.ports.first().map_or(0, |p| p.published);
    super::check_gpus(docker, &work).await?;
    let inputs = EnvInputs {
        image: plan.env_image.clone(),
        requirement_lines: images::requirement_lines(project, &plan.env_image)?,
    };
    let image = match known {
        Some((k, built)) if *k == inputs => built.clone(),
        _ => {
            on_build();
            images::ensure_env_image(docker, project, &plan, ui).await?
        }
    };
    let name = format!(
        "ferry-{}-{}-notebook",
        project.spec.name,
        root_key(&project.root)
    );
    let root = project.root.clone();
    let mut spec = container_spec(project, &work, &image.tag, name, |v| match v {
        VolumePath::Project => root.clone(),
        VolumePath::Sub(p) => p.under(&root),
    });
    let settings = running::config_of(&spec, &image.id, &[TOKEN_VAR]);
    running::label(&mut spec, &settings);
    Ok(Prepared {
        spec,
        settings,
        port,
        image,
        inputs,
    })
}

/// Starts the prepared notebook, removing `replace` (the running one) first, and waits until
/// Jupyter answers.
async fn launch(
    docker: &Docker,
    project: &Project,
    prepared: &Prepared,
    token: &str,
    replace: Option<&str>,
    ui: &Ui,
) -> Result<Session, LocalError> {
    if let Some(id) = replace {
        docker::remove_container(docker, id).await?;
    }
    let mut spec = prepared.spec.clone();
    spec.env.insert(TOKEN_VAR.into(), token.to_string());
    let port = prepared.port;
    let step = ui.step(format!("starting Jupyter on 127.0.0.1:{port}"));
    let id = docker::run_spec(docker, &spec).await?;
    match wait_ready(docker, &id, port, token).await {
        Ok(()) => step.finish(format!("Jupyter ready on 127.0.0.1:{port}")),
        Err(e) => {
            step.fail();
            let _ = docker::remove_container(docker, &id).await;
            return Err(e);
        }
    }
    let session = Session {
        url: session_url(port, token),
        container: id,
        image: prepared.image.tag.clone(),
        port,
        token: token.to_string(),
        already_running: false,
    };
    save_session(&project.root, &session)?;
    Ok(session)
}

/// The session of a notebook that already runs as `prepared` would: its own token, read from
/// the container, so the URL already open in a browser stays the one to use.
async fn running_session(
    docker: &Docker,
    project: &Project,
    prepared: &Prepared,
    id: &str,
) -> Result<Session, LocalError> {
    let info = docker
        .inspect_container(id, None)
        .await
        .map_err(|e| docker::DockerError::api(format!("inspecting container {id}"), e))?;
    let prefix = format!("{TOKEN_VAR}=");
    let token = info
        .config
        .and_then(|c| c.env)
        .unwrap_or_default()
        .iter()
        .find_map(|v| v.strip_prefix(&prefix).map(str::to_string))
        .unwrap_or_default();
    wait_ready(docker, id, prepared.port, &token).await?;
    let session = Session {
        url: session_url(prepared.port, &token),
        container: id.to_string(),
        image: prepared.image.tag.clone(),
        port: prepared.port,
        token,
        already_running: true,
    };
    save_session(&project.root, &session)?;
    Ok(session)
}

fn session_url(port: u16, token: &str) -> String {
    format!("http://127.0.0.1:{port}/lab?token={token}")
}

/// Polls Jupyter's API with the token until it answers 200, or the container dies.
async fn wait_ready(docker: &Docker, id: &str, port: u16, token: &str) -> Result<(), LocalError> {
    let url = format!("http://127.0.0.1:{port}/api/status");
    let auth = format!("token {token}");
    super::wait_http(docker, id, &url, Some(&auth), READY_TIMEOUT)
        .await
        .map_err(|n| {
            NotebookFailed {
                reason: n.reason,
                tail: n.tail,
            }
            .into()
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

/// Removes the notebook container `id` and forgets its session; the project's other containers
/// (a model server) stay.
async fn stop_notebook(docker: &Docker, root: &Path, id: &str) -> Result<(), LocalError> {
    docker::remove_container(docker, id).await?;
    let _ = std::fs::remove_file(session_file(root));
    Ok(())
}

/// `ferry dev`. Returns when detached, when a notebook of the project already runs as this one
/// would (`already_running` says so), or when the user stops it.
pub async fn dev(
    file: &Path,
    opts: &DevOptions,
    ui: &Ui,
    on_ready: impl Fn(&Session),
) -> Result<Session, LocalError> {
    let mut interrupt = Interrupt::new()?;
    let project = load(file, opts)?;
    let docker = docker::connect().await?;
    super::engine_platform(&docker, &project).await?;

    // The watch starts before the notebook: a change made while it starts is not lost.
    let mut watch = match opts.detach {
        true => None,
        false => Some(Watch::new(&watched_files(&project))?),
    };
    let before = running::find(&docker, &project.root, ROLE.label)
        .await?
        .map(|c| c.id);
    let first = interrupt
        .guard(async {
            let prepared = prepare(&docker, &project, opts, ui, None, || {}).await?;
            let decision = running::decide(
                &docker,
                &project.root,
                &ROLE,
                &prepared.settings,
                opts.restart,
            )
            .await?;
            let session = match decision {
                Decision::Reuse(c) => running_session(&docker, &project, &prepared, &c.id).await?,
                Decision::Start => {
                    launch(&docker, &project, &prepared, &new_token(), None, ui).await?
                }
                Decision::Replace(c) => {
                    launch(&docker, &project, &prepared, &new_token(), Some(&c.id), ui).await?
                }
            };
            Ok::<_, LocalError>((session, prepared))
        })
        .await;
    let (mut session, mut current) = match first {
        Ok(s) => s,
        Err(e) => {
            if matches!(e, LocalError::Interrupted(_)) {
                // Only a notebook this command started (running or only created) goes; one
                // that ran before stays.
                let root = project.root.to_string_lossy();
                let labels = [(LABEL_ROOT, root.as_ref()), (LABEL_ROLE, ROLE.label)];
                for c in docker::find_containers(&docker, &labels)
                    .await
                    .unwrap_or_default()
                {
                    if before.as_deref() != Some(c.id.as_str()) {
                        let _ = stop_notebook(&docker, &project.root, &c.id).await;
                    }
                }
            }
            return Err(e);
        }
    };
    on_ready(&session);
    let Some(watch) = watch.as_mut().filter(|_| !session.already_running) else {
        return Ok(session);
    };
    let token = session.token.clone();
    let rel = |p: &PathBuf| {
        p.strip_prefix(&project.root)
            .unwrap_or(p)
            .display()
            .to_string()
    };
    let names = |paths: Vec<&PathBuf>| paths.into_iter().map(rel).collect::<Vec<_>>().join(", ");
    ui.info(format!(
        "watching {} for changes; Ctrl-C stops",
        names(watch.files().collect())
    ));

    loop {
        tokio::select! {
            _ = interrupt.recv() => {
                let step = ui.step("stopping Jupyter");
                stop_notebook(&docker, &project.root, &session.container).await?;
                step.finish("stopped and removed the notebook container");
                return Ok(session);
            }
            changed = watch.changed() => {
                let what = names(changed.iter().collect());
                let project = match load(file, opts) {
                    Ok(p) => p,
                    Err(e) => {
                        ui.warn(format!("{what} changed: {e}\nkeeping the running notebook; fix the spec to reload"));
                        continue;
                    }
                };
                let files = watched_files(&project);
                if !watch.files().eq(files.iter()) {
                    match Watch::new(&files) {
                        Ok(w) => *watch = w,
                        Err(e) => ui.warn(format!("{e}\nwatching the files as before")),
                    }
                }
                let known = Some((&current.inputs, &current.image));
                let announce = || ui.info(format!("{what} changed: checking the environment"));
                let next = match prepare(&docker, &project, opts, ui, known, announce).await {
                    Ok(n) => n,
                    Err(e) => {
                        ui.warn(format!("{e}\nkeeping the running notebook until the next change builds"));
                        continue;
                    }
                };
                let diffs = running::differences(&current.settings, &next.settings);
                if diffs.is_empty() {
                    ui.info(format!("{what} changed; the environment and the notebook's settings are the same: it keeps running"));
                    continue;
                }
                ui.info(format!("{what} changed: restarting the notebook ({})", diffs.join("; ")));
                if next.port != current.port
                    && let Err(e) = docker::check_port_free(next.port, ROLE.port_flag)
                {
                    ui.warn(format!("{e}\nkeeping the running notebook"));
                    continue;
                }
                match launch(&docker, &project, &next, &token, Some(&session.container), ui).await {
                    Ok(s) => {
                        ui.info(format!("restarted with {}", s.image));
                        session = s;
                        current = next;
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
                    let _ = stop_notebook(&docker, &project.root, &session.container).await;
                    return Err(NotebookFailed {
                        reason: "the notebook container stopped".into(),
                        tail,
                    }
                    .into());
                }
            }
        }
    }
}

/// The files whose change can mean a new environment image or other notebook settings.
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

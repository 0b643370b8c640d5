//! `ferry dev --env ENV` for a `target: kubernetes` environment: Jupyter in the project image,
//! in the cluster, reached through a port-forward on 127.0.0.1.
//!
//! The project image is built and pushed as for training; the notebook's token Secret, Service
//! and StatefulSet are applied with server-side apply (field manager `ferry`). The StatefulSet's
//! volume is seeded from the image on first start and kept across runs (and across Ctrl-C,
//! which removes the StatefulSet but never its volume), so notebooks written in the cluster
//! stay there. The token is kept in its Secret, so the URL stays the same from run to run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, LogParams};
use kube::{Client, ResourceExt};

use super::train::image::check_secrets_not_in_image;
use super::train::objects::{apply_env_secret, ensure_namespace, secret_name, ssa};
use super::train::pod::Pending;
use super::{ClusterError, require_cluster};
use crate::docker;
use crate::images::build as images;
use crate::images::push;
use crate::interrupt::{Interrupt, Interrupted};
use crate::kube::client::{self, Op};
use crate::kube::workloads::{Placement, notebook, notebook_name};
use crate::plan::{NOTEBOOK_CONTAINER_PORT, TOKEN_VAR};
use crate::project_plan::{PlanError, make_plan};
use crate::session::{DevOptions, NotebookFailed, Session};
use crate::spec::Project;
use crate::ui::Ui;

/// The size of the notebook's volume when it is first made (it is never resized by ferry).
const STORAGE: &str = "10Gi";
/// How long the notebook pod may take to be ready (a first pull of the image included).
const READY_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// How long Jupyter may take to answer through the forward once the pod is ready.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_secs(2);

/// `ferry dev` in a cluster. Returns when the user stops it.
pub async fn dev(
    project: &Project,
    opts: &DevOptions,
    ui: &Ui,
    on_ready: impl Fn(&Session),
) -> Result<Session, ClusterError> {
    let mut interrupt = Interrupt::new()?;
    let env = require_cluster(project)?;
    if opts.detach {
        return Err(ClusterError::DetachUnsupported { env });
    }
    let registry = super::registry(project, &env)?;
    let plan = make_plan(project)?;
    let Some(work) = plan.notebook.clone() else {
        return Err(PlanError::MissingSection {
            file: project.file.clone(),
            section: "notebook",
            hint: "add `notebook: { port: 8888 }`",
        }
        .into());
    };
    let port = opts
        .port
        .or_else(|| work.ports.first().map(|p| p.published))
        .unwrap_or(NOTEBOOK_CONTAINER_PORT);
    // Held from now on, so nothing takes the port while the image builds.
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|_| {
            ClusterError::from(docker::DockerError::PortBusy {
                port,
                flag: "--port (or notebook.port in ferry.yaml)".into(),
            })
        })?;
    check_secrets_not_in_image(project)?;
    let secrets = super::environment_secrets(project)?;

    let kube = client::connect(project.spec.context.as_deref()).await?;
    let docker = docker::connect().await?;
    // Checked before minutes of building: the engine builds for its own platform only.
    let engine = docker::engine_platform(&docker).await?;
    let chosen =
        crate::cluster::platform::for_project_image(project, &env, &kube, engine, ui).await?;
    let repository = format!("{}/{}", registry.trim_end_matches('/'), project.spec.name);
    let pushed = tokio::select! {
        r = async {
            let env_image = images::ensure_env_image(&docker, project, &plan, ui).await?;
            let image = images::ensure_project_image(&docker, project, &env_image, ui).await?;
            Ok::<_, ClusterError>(push::push(&docker, &image.tag, &repository, ui).await?)
        } => r?,
        _ = interrupt.recv() => return Err(Interrupted.into()),
    };

    let placement = Placement {
        project: project.spec.name.clone(),
        env: env.clone(),
        namespace: project
            .spec
            .namespace
            .clone()
            .unwrap_or_else(|| project.spec.name.clone()),
        cluster: project.spec.cluster.clone().unwrap_or_default(),
        image: pushed.reference.clone(),
        secret: secrets
            .as_ref()
            .filter(|s| !s.is_empty())
            .map(|_| secret_name(&project.spec.name)),
        run_on: chosen.run_on.clone(),
    };
    let ns = placement.namespace.clone();
    let name = notebook_name(&placement.project);
    let pod_name = format!("{name}-0");

    let started = async {
        let step = ui.step(format!("applying the notebook to namespace {ns}"));
        let applied = async {
            ensure_namespace(&kube, &ns).await?;
            if let (Some(s), Some(secret)) = (&secrets, &placement.secret) {
                apply_env_secret(&kube, &placement, secret, s).await?;
            }
            let token = existing_token(&kube, &ns, &format!("{name}-token"))
                .await?
                .unwrap_or_else(new_token);
            let objects = notebook(&placement, &work, &token, STORAGE);
            let secret_name = objects.secret.name_any();
            ssa(&kube, &ns, &secret_name, &objects.secret, "secrets").await?;
            ssa(&kube, &ns, &name, &objects.service, "services").await?;
            ssa(
                &kube,
                &ns,
                &name,
                &objects.stateful_set,
                "statefulsets.apps",
            )
            .await?;
            Ok::<_, ClusterError>(token)
        }
        .await;
        let token = match applied {
            Ok(t) => {
                step.finish(format!(
                    "applied Secret {name}-token, Service {name}, StatefulSet {name}"
                ));
                t
            }
            Err(e) => {
                step.fail();
                return Err(e);
            }
        };
        wait_ready(&kube, &ns, &pod_name, &pushed.reference, ui).await?;
        Ok(token)
    };
    // A notebook that does not come up is not left behind (its volume is).
    let token = tokio::select! {
        r = started => match r {
            Ok(t) => t,
            Err(e) => {
                stop(&kube, &ns, &name, ui).await;
                return Err(e);
            }
        },
        _ = interrupt.recv() => {
            stop(&kube, &ns, &name, ui).await;
            return Err(Interrupted.into());
        }
    };

    let listener =
        tokio::net::TcpListener::from_std(listener).map_err(|e| ClusterError::PortForward {
            port,
            pod: pod_name.clone(),
            message: e.to_string(),
        })?;
    let pods: Api<Pod> = Api::namespaced(kube.clone(), &ns);
    let warned = Arc::new(AtomicBool::new(false));
    // Every local connection gets its own forward; they are served from now until Ctrl-C.
    let acceptor = {
        let (pods, pod, ui, warned) = (pods.clone(), pod_name.clone(), ui.clone(), warned.clone());
        tokio::spawn(async move {
            loop {
                let conn = match listener.accept().await {
                    Ok((c, _)) => c,
                    Err(e) => {
                        ui.warn(format!("127.0.0.1:{port}: {e}"));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let (pods, pod, ui, warned) =
                    (pods.clone(), pod.clone(), ui.clone(), warned.clone());
                tokio::spawn(async move {
                    if let Err(e) = forward_one(&pods, &pod, conn).await
                        && !warned.swap(true, Ordering::SeqCst)
                    {
                        ui.warn(format!("port-forward to pod {pod}: {e}"));
                    }
                });
            }
        })
    };

    let session = Session {
        url: format!("http://127.0.0.1:{port}/lab?token={token}"),
        container: pod_name.clone(),
        image: pushed.reference.clone(),
        port,
        token: token.clone(),
        already_running: false,
    };
    let step = ui.step(format!("waiting for Jupyter through 127.0.0.1:{port}"));
    let answered = tokio::select! {
        r = wait_answer(port, &token) => r.map_err(|message| ClusterError::PortForward {
            port,
            pod: pod_name.clone(),
            message,
        }),
        _ = interrupt.recv() => Err(Interrupted.into()),
    };
    match answered {
        Ok(()) => step.finish(format!("Jupyter answers on 127.0.0.1:{port}")),
        Err(e) => {
            step.fail();
            acceptor.abort();
            stop(&kube, &ns, &name, ui).await;
            return Err(e);
        }
    }
    on_ready(&session);
    ui.info(format!(
        "notebooks are saved on the volume workspace-{pod_name} in namespace {ns} (kept when the notebook stops); Ctrl-C stops"
    ));

    let mut last_uid = pod_uid(&pods, &pod_name).await;
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {
                let uid = pod_uid(&pods, &pod_name).await;
                if uid.is_some() && last_uid.is_some() && uid != last_uid {
                    ui.info(format!("the notebook pod {pod_name} was replaced; forwarding to the new one"));
                    warned.store(false, Ordering::SeqCst);
                } else if uid.is_none() && last_uid.is_some() {
                    ui.warn(format!("the notebook pod {pod_name} is gone; waiting for the StatefulSet to bring it back"));
                }
                last_uid = uid;
            }
        }
    }
    acceptor.abort();
    stop(&kube, &ns, &name, ui).await;
    Ok(session)
}

fn new_token() -> String {
    let bytes: [u8; 24] = rand::random();
    hex::encode(bytes)
}

/// Polls Jupyter through the forward until it answers with the token.
async fn wait_answer(port: u16, token: &str) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("http://127.0.0.1:{port}/api/status");
    let auth = format!("token {token}");
    let started = Instant::now();
    loop {
        let last = match client.get(&url).header("Authorization", &auth).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => format!("it answers {}", r.status()),
            Err(e) => e.to_string(),
        };
        if started.elapsed() > ANSWER_TIMEOUT {
            return Err(format!(
                "Jupyter did not answer through the forward within {}s ({last})",
                ANSWER_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The token an earlier run left in the notebook's Secret, so its URL stays valid.
async fn existing_token(
    client: &Client,
    ns: &str,
    secret: &str,
) -> Result<Option<String>, ClusterError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let found = api.get_opt(secret).await.map_err(|e| {
        Op::new("get", "secrets")
            .name(secret)
            .namespace(ns)
            .error(e)
    })?;
    Ok(found
        .and_then(|s| s.data)
        .and_then(|d| d.get(TOKEN_VAR).cloned())
        .and_then(|b| String::from_utf8(b.0).ok())
        .filter(|t| !t.is_empty()))
}

async fn pod_uid(pods: &Api<Pod>, name: &str) -> Option<String> {
    pods.get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|p| p.metadata.uid)
}

/// Waits until the notebook pod runs `image` and is ready. A pod of an earlier image is being
/// replaced by the StatefulSet controller meanwhile.
async fn wait_ready(
    client: &Client,
    ns: &str,
    pod: &str,
    image: &str,
    ui: &Ui,
) -> Result<(), ClusterError> {
    let step = ui.step(format!("waiting for the notebook pod {pod}"));
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    let mut pending = Pending::new();
    let result = loop {
        let now = match pods.get_opt(pod).await {
            Ok(p) => p,
            Err(e) => {
                break Err(Op::new("get", "pods")
                    .name(pod)
                    .namespace(ns)
                    .error(e)
                    .into());
            }
        };
        if let Some(p) = &now {
            let current = p
                .spec
                .as_ref()
                .and_then(|s| s.containers.iter().find(|c| c.name == "notebook"))
                .and_then(|c| c.image.as_deref())
                == Some(image);
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if current && ready && p.metadata.deletion_timestamp.is_none() {
                break Ok(());
            }
            if !current {
                step.set_detail("replacing the notebook pod of an earlier image");
            } else {
                match pending.judge(client, ns, p, "notebook").await {
                    Ok(Some(t)) => step.set_detail(format!("{}: {}", t.reason, t.message)),
                    Ok(None) => step.set_detail(
                        p.status
                            .as_ref()
                            .and_then(|s| s.phase.clone())
                            .unwrap_or_else(|| "Pending".into()),
                    ),
                    Err(e) => {
                        let tail = last_lines(&pods, pod).await;
                        break Err(if tail.is_empty() {
                            e
                        } else {
                            NotebookFailed {
                                reason: e.to_string(),
                                tail,
                            }
                            .into()
                        });
                    }
                }
            }
        } else {
            step.set_detail("waiting for the StatefulSet to create the pod");
        }
        if started.elapsed() > READY_TIMEOUT {
            break Err(NotebookFailed {
                reason: format!("pod {pod} is not ready after {}s", READY_TIMEOUT.as_secs()),
                tail: last_lines(&pods, pod).await,
            }
            .into());
        }
        tokio::time::sleep(POLL).await;
    };
    match &result {
        Ok(()) => step.finish(format!("notebook pod {pod} is ready")),
        Err(_) => step.fail(),
    }
    result
}

/// The notebook's last output lines, from its previous (crashed) instance when there is one.
async fn last_lines(pods: &Api<Pod>, pod: &str) -> Vec<String> {
    for previous in [true, false] {
        let lp = LogParams {
            container: Some("notebook".into()),
            previous,
            tail_lines: Some(15),
            ..Default::default()
        };
        if let Ok(text) = pods.logs(pod, &lp).await
            && !text.trim().is_empty()
        {
            return text.lines().map(str::to_string).collect();
        }
    }
    Vec::new()
}

/// One local connection, carried to the pod's Jupyter port over its own port-forward.
async fn forward_one(
    pods: &Api<Pod>,
    pod: &str,
    mut conn: tokio::net::TcpStream,
) -> Result<(), String> {
    let mut pf = pods
        .portforward(pod, &[NOTEBOOK_CONTAINER_PORT])
        .await
        .map_err(|e| client::error_chain(&e))?;
    let mut upstream = pf
        .take_stream(NOTEBOOK_CONTAINER_PORT)
        .ok_or_else(|| "the forward has no stream for the port".to_string())?;
    let copied = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
    drop(upstream);
    let joined = pf.join().await;
    copied.map_err(|e| e.to_string())?;
    joined.map_err(|e| e.to_string())
}

/// Removes the StatefulSet (its pod stops); the volume, the Service and the token stay.
async fn stop(client: &Client, ns: &str, name: &str, ui: &Ui) {
    let step = ui.step("stopping the notebook");
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => step.finish(format!(
            "removed StatefulSet {name}; its volume workspace-{name}-0 is kept for the next `ferry dev`"
        )),
        Err(kube::Error::Api(s)) if s.code == 404 => step.finish("nothing to stop"),
        Err(e) => {
            step.fail();
            ui.warn(format!(
                "{}\n  hint: stop it with `kubectl delete statefulset {name} -n {ns}`",
                Op::new("delete", "statefulsets.apps")
                    .name(name)
                    .namespace(ns)
                    .error(e)
            ));
        }
    }
}

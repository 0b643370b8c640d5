//! Containers: create from a plan workload, stream their output, wait, remove.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, DeviceRequest, HostConfig, Mount as ApiMount, MountType, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;

use super::DockerError;

/// A bind mount from the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub host: PathBuf,
    pub container: String,
    pub read_only: bool,
}

/// Everything needed to create one container.
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: String,
    pub mounts: Vec<Mount>,
    /// (container port, host port), published on 127.0.0.1 only.
    pub ports: Vec<(u16, u16)>,
    pub nano_cpus: Option<i64>,
    pub memory: Option<i64>,
    /// NVIDIA GPUs to give the container (a device request, as `docker run --gpus N`).
    pub gpus: Option<u32>,
    /// `uid:gid`, so files written to bind mounts belong to the user.
    pub user: Option<String>,
    pub labels: HashMap<String, String>,
    /// Least privilege for containers that need no writes and no capabilities (the server).
    pub hardened: bool,
    /// The image's file system read-only (a pipeline step writes only its outputs' mounts and
    /// the `tmpfs` paths), so a write anywhere else fails loudly instead of vanishing.
    pub read_only_root: bool,
    /// Empty in-memory file systems (e.g. `/tmp`), writable whatever `read_only_root` says.
    pub tmpfs: Vec<String>,
    /// The host's network namespace instead of a bridge: no port is published, the process
    /// binds where it is told (the server: 127.0.0.1). Avoids the engine's userland proxy,
    /// which costs a loopback server most of its throughput.
    pub host_network: bool,
}

/// How a container ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: i64,
    pub oom_killed: bool,
    /// The engine's own error, e.g. an executable not found.
    pub error: Option<String>,
}

impl Exit {
    /// A sentence for the user: the exit code and, where known, why; `memory` names what sets
    /// the container's memory limit, for the advice after an OOM kill.
    pub fn describe(&self, memory: &str) -> String {
        let mut s = format!("exit code {}", self.code);
        if self.oom_killed {
            s.push_str(&format!(
                ", killed by the kernel for running out of memory (OOM) — raise {memory} or use less"
            ));
        } else if self.code == 137 {
            s.push_str(" (killed by SIGKILL)");
        } else if self.code == 143 {
            s.push_str(" (stopped by SIGTERM)");
        }
        if let Some(e) = &self.error
            && !e.is_empty()
        {
            s.push_str(&format!("; engine: {e}"));
        }
        s
    }
}

/// Creates and starts a container; the container is removed again if it cannot start.
pub async fn run_spec(docker: &Docker, spec: &ContainerSpec) -> Result<String, DockerError> {
    // A leftover with the same name (a crash, a killed ferry) would block the create.
    remove_container(docker, &spec.name).await?;

    let opts = CreateContainerOptionsBuilder::default()
        .name(&spec.name)
        .build();
    let created = docker
        .create_container(Some(opts), create_body(spec))
        .await
        .map_err(|e| create_error(e, spec))?;
    if let Err(e) = docker.start_container(&created.id, None).await {
        let _ = remove_container(docker, &created.id).await;
        return Err(start_error(e, spec));
    }
    Ok(created.id)
}

/// What the engine is asked to create for `spec`.
fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let published: &[(u16, u16)] = if spec.host_network { &[] } else { &spec.ports };
    let port_bindings: HashMap<String, Option<Vec<PortBinding>>> = published
        .iter()
        .map(|(c, h)| {
            (
                format!("{c}/tcp"),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(h.to_string()),
                }]),
            )
        })
        .collect();
    let mounts = spec
        .mounts
        .iter()
        .map(|m| ApiMount {
            target: Some(m.container.clone()),
            source: Some(m.host.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(m.read_only),
            ..Default::default()
        })
        .collect();
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        // An empty argv runs the image's own entrypoint.
        cmd: (!spec.argv.is_empty()).then(|| spec.argv.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: Some(spec.workdir.clone()),
        user: spec.user.clone(),
        labels: Some(spec.labels.clone()),
        exposed_ports: Some(published.iter().map(|(c, _)| format!("{c}/tcp")).collect()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        host_config: Some(HostConfig {
            mounts: Some(mounts),
            port_bindings: Some(port_bindings),
            network_mode: spec.host_network.then(|| "host".to_string()),
            nano_cpus: spec.nano_cpus,
            memory: spec.memory,
            // Without this a memory limit is doubled by swap and an OOM shows up as a crawl.
            memory_swap: spec.memory,
            device_requests: gpu_request(spec.gpus),
            // A real init reaps children and forwards SIGTERM, so stop is quick and clean.
            init: Some(true),
            security_opt: Some(vec!["no-new-privileges".into()]),
            readonly_rootfs: (spec.hardened || spec.read_only_root).then_some(true),
            tmpfs: (!spec.tmpfs.is_empty()).then(|| {
                spec.tmpfs
                    .iter()
                    .map(|p| (p.clone(), "rw,nosuid,nodev,mode=1777".to_string()))
                    .collect()
            }),
            cap_drop: spec.hardened.then(|| vec!["ALL".to_string()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `--gpus N`: N GPUs from the engine's NVIDIA device driver (the NVIDIA Container Toolkit).
fn gpu_request(gpus: Option<u32>) -> Option<Vec<DeviceRequest>> {
    let n = gpus.filter(|n| *n > 0)?;
    Some(vec![DeviceRequest {
        driver: Some("nvidia".into()),
        count: Some(i64::from(n)),
        capabilities: Some(vec![vec!["gpu".into()]]),
        ..Default::default()
    }])
}

fn create_error(e: bollard::errors::Error, spec: &ContainerSpec) -> DockerError {
    if let Some(gpu) = no_gpu(&e, spec) {
        return gpu;
    }
    DockerError::api(format!("creating a container from {}", spec.image), e)
}

fn start_error(e: bollard::errors::Error, spec: &ContainerSpec) -> DockerError {
    if let Some(gpu) = no_gpu(&e, spec) {
        return gpu;
    }
    let text = e.to_string();
    if (text.contains("port is already allocated") || text.contains("address already in use"))
        && let Some((_, h)) = spec.ports.first()
    {
        return DockerError::PortBusy {
            port: *h,
            flag: "--port".into(),
        };
    }
    DockerError::api(format!("starting container {}", spec.name), e)
}

/// The engine's refusal of a device request: it has no driver that gives GPUs (no NVIDIA
/// Container Toolkit), or the driver failed to (no GPU, no kernel driver).
fn no_gpu(e: &bollard::errors::Error, spec: &ContainerSpec) -> Option<DockerError> {
    let bollard::errors::Error::DockerResponseServerError { message, .. } = e else {
        return None;
    };
    let gpu_words = [
        "could not select device driver",
        "nvidia-container-cli",
        "NVIDIA_VISIBLE_DEVICES",
    ];
    (spec.gpus.is_some_and(|n| n > 0) && gpu_words.iter().any(|w| message.contains(w))).then(|| {
        DockerError::NoGpu {
            reason: message.clone(),
            field: gpu_field(spec),
        }
    })
}

/// The spec field that asked for the GPU: the role names the section.
fn gpu_field(spec: &ContainerSpec) -> String {
    match spec.labels.get(super::LABEL_ROLE) {
        Some(role) => format!("{role}.resources.gpu"),
        None => "resources.gpu".into(),
    }
}

/// Follows a container's output until it exits, line by line.
pub async fn follow_logs(
    docker: &Docker,
    id: &str,
    mut on_line: impl FnMut(&str),
) -> Result<(), DockerError> {
    let opts = LogsOptionsBuilder::default()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .build();
    let mut stream = docker.logs(id, Some(opts));
    let mut pending = String::new();
    while let Some(item) = stream.next().await {
        let chunk = item.map_err(|e| DockerError::api("reading container output", e))?;
        pending.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        while let Some(nl) = pending.find('\n') {
            let line: String = pending.drain(..=nl).collect();
            on_line(line.trim_end_matches(['\n', '\r']));
        }
    }
    if !pending.is_empty() {
        on_line(&pending);
    }
    Ok(())
}

/// Waits for a container to stop and reports how it ended.
pub async fn wait_exit(docker: &Docker, id: &str) -> Result<Exit, DockerError> {
    let opts = WaitContainerOptionsBuilder::default()
        .condition("not-running")
        .build();
    let mut wait = docker.wait_container(id, Some(opts));
    // A non-zero exit arrives as an error from bollard; the state below is the truth either way.
    while let Some(r) = wait.next().await {
        if let Err(e) = r
            && !matches!(e, bollard::errors::Error::DockerContainerWaitError { .. })
        {
            return Err(DockerError::api("waiting for the container", e));
        }
    }
    let info = docker
        .inspect_container(id, None)
        .await
        .map_err(|e| DockerError::api("inspecting the container", e))?;
    let state = info.state.unwrap_or_default();
    Ok(Exit {
        code: state.exit_code.unwrap_or(-1),
        oom_killed: state.oom_killed.unwrap_or(false),
        error: state.error.filter(|e| !e.is_empty()),
    })
}

/// Removes a container (running or not); a missing container is not an error.
pub async fn remove_container(docker: &Docker, id: &str) -> Result<(), DockerError> {
    let opts = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(opts)).await {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        // Already being removed (e.g. by a concurrent `ferry down`).
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(()),
        Err(e) => Err(DockerError::api(format!("removing container {id}"), e)),
    }
}

/// A container ferry made, found by its labels.
#[derive(Clone, Debug)]
pub struct Found {
    pub id: String,
    pub name: String,
    pub state: String,
    pub labels: HashMap<String, String>,
}

/// Containers (running or not) that carry all the given labels.
pub async fn find_containers(
    docker: &Docker,
    labels: &[(&str, &str)],
) -> Result<Vec<Found>, DockerError> {
    let mut filters = HashMap::new();
    filters.insert(
        "label".to_string(),
        labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
    );
    let opts = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let list = docker
        .list_containers(Some(opts))
        .await
        .map_err(|e| DockerError::api("listing containers", e))?;
    Ok(list
        .into_iter()
        .map(|c| Found {
            id: c.id.unwrap_or_default(),
            name: c
                .names
                .and_then(|n| n.into_iter().next())
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            state: c.state.map(|s| s.to_string()).unwrap_or_default(),
            labels: c.labels.unwrap_or_default(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(gpus: Option<u32>) -> ContainerSpec {
        ContainerSpec {
            name: "ferry-x-train".into(),
            image: "ferry/x-env:1".into(),
            gpus,
            labels: HashMap::from([(super::super::LABEL_ROLE.to_string(), "train".to_string())]),
            ..Default::default()
        }
    }

    #[test]
    fn a_gpu_count_becomes_one_nvidia_device_request() {
        let body = create_body(&spec(Some(2)));
        let host = body.host_config.unwrap();
        let requests = host.device_requests.expect("a device request");
        assert_eq!(requests.len(), 1);
        let r = &requests[0];
        assert_eq!(r.driver.as_deref(), Some("nvidia"));
        assert_eq!(r.count, Some(2));
        assert_eq!(r.capabilities, Some(vec![vec!["gpu".to_string()]]));
        assert_eq!(r.device_ids, None);
        // The request travels as the engine's API spells it, as `docker run --gpus 2` sends it.
        let json = serde_json::to_value(&requests).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{"Driver": "nvidia", "Count": 2, "Capabilities": [["gpu"]]}])
        );
    }

    #[test]
    fn no_gpu_or_zero_asks_for_no_device() {
        for gpus in [None, Some(0)] {
            let host = create_body(&spec(gpus)).host_config.unwrap();
            assert_eq!(host.device_requests, None, "{gpus:?}");
        }
    }

    #[test]
    fn the_engines_refusal_of_a_gpu_names_the_field_and_the_fix() {
        let refusal = || bollard::errors::Error::DockerResponseServerError {
            status_code: 500,
            message: r#"could not select device driver "nvidia" with capabilities: [[gpu]]"#.into(),
        };
        let err = start_error(refusal(), &spec(Some(1)));
        assert!(matches!(err, DockerError::NoGpu { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with("this Docker engine cannot give containers a GPU: could not select device driver \"nvidia\""),
            "{text}"
        );
        assert!(text.contains("NVIDIA Container Toolkit"), "{text}");
        assert!(text.contains("train.resources.gpu"), "{text}");
        // Without a GPU asked for, the same words are the engine's own business.
        let err = start_error(refusal(), &spec(None));
        assert!(matches!(err, DockerError::Api { .. }), "{err:?}");
    }
}

//! The local backend: the Docker engine through its API (bollard). Connects with version
//! negotiation (engines in the field speak older APIs than bollard's default), turns engine
//! errors into actionable ones, and runs plan workloads as labelled containers.

mod run;

use std::error::Error as _;

use bollard::Docker;

pub use run::{
    ContainerSpec, Exit, Found, Mount, find_containers, follow_logs, remove_container, run_spec,
    wait_exit,
};

/// Labels every container and image ferry makes carries, so `ferry down` finds exactly its own.
pub const LABEL_PROJECT: &str = "dev.ferry.project";
pub const LABEL_ROOT: &str = "dev.ferry.root";
pub const LABEL_ROLE: &str = "dev.ferry.role";
/// The settings a notebook or server container was started with (see `local::running`).
pub const LABEL_CONFIG: &str = "dev.ferry.config";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(
        "cannot reach the Docker daemon at {host}: {cause}\n  hint: start it (e.g. `sudo systemctl start docker`), or point DOCKER_HOST at a running engine"
    )]
    Unreachable { host: String, cause: String },
    #[error(
        "lost the connection to the Docker daemon at {host} while {action}: {cause}\n  hint: check that the daemon still runs (`docker info`); nothing half-made was kept, so run the command again once it answers"
    )]
    Lost {
        host: String,
        action: String,
        cause: String,
    },
    #[error(
        "permission denied on the Docker socket {host}\n  hint: add your user to the docker group (`sudo usermod -aG docker $USER`, then log in again), or run with sudo"
    )]
    PermissionDenied { host: String },
    #[error("Docker engine: {action}: {message}")]
    Api { action: String, message: String },
    #[error(
        "this Docker engine cannot give containers a GPU: {reason}\n  hint: install the NVIDIA Container Toolkit on the Docker host (then `sudo nvidia-ctk runtime configure --runtime=docker` and restart Docker), or remove {field}, or run in a cluster environment (`--env` with a `target: kubernetes` environment)"
    )]
    NoGpu { reason: String, field: String },
    #[error(
        "the Docker engine at {host} runs {os}/{arch}, a platform ferry does not build images for\n  hint: ferry builds for linux/amd64 and linux/arm64; point DOCKER_HOST at an engine of one of them"
    )]
    UnknownPlatform {
        host: String,
        os: String,
        arch: String,
    },
    #[error(
        "port {port} on 127.0.0.1 is already in use\n  hint: stop what uses it (`ferry down`, or see `ss -ltnp | grep {port}`), or choose another port with {flag}"
    )]
    PortBusy { port: u16, flag: String },
}

impl DockerError {
    /// Wraps an engine error that happened while doing `action`.
    pub fn api(action: impl Into<String>, e: bollard::errors::Error) -> DockerError {
        let action = action.into();
        if let Some(conn) = connection_error(&e) {
            return conn;
        }
        if let Some(cause) = lost_connection(&e) {
            return DockerError::Lost {
                host: host(),
                action,
                cause,
            };
        }
        let message = match &e {
            bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
            other => other.to_string(),
        };
        DockerError::Api { action, message }
    }
}

/// The engine's address as the user configured it.
pub fn host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

/// Recognises "the daemon is not there" and "not allowed to talk to it" anywhere in the chain.
fn connection_error(e: &bollard::errors::Error) -> Option<DockerError> {
    use bollard::errors::Error as B;
    if let B::SocketNotFoundError(path) = e {
        return Some(DockerError::Unreachable {
            host: host(),
            cause: format!("socket {path} does not exist"),
        });
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            match io.kind() {
                K::PermissionDenied => return Some(DockerError::PermissionDenied { host: host() }),
                K::NotFound | K::ConnectionRefused | K::TimedOut => {
                    return Some(DockerError::Unreachable {
                        host: host(),
                        cause: io.to_string(),
                    });
                }
                _ => {}
            }
        }
        src = s.source();
    }
    let text = e.to_string();
    if text.contains("error trying to connect") || text.contains("Connection refused") {
        return Some(DockerError::Unreachable {
            host: host(),
            cause: text,
        });
    }
    None
}

/// A connection that broke after the daemon answered (it stopped, crashed or restarted in the
/// middle of a request): hyper reports these as a body or message cut short, which says nothing
/// about the daemon unless named as such.
fn lost_connection(e: &bollard::errors::Error) -> Option<String> {
    let mut chain = Vec::new();
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            if matches!(
                io.kind(),
                K::ConnectionReset
                    | K::BrokenPipe
                    | K::UnexpectedEof
                    | K::ConnectionAborted
                    | K::NotConnected
            ) {
                return Some(io.to_string());
            }
        }
        chain.push(s.to_string());
        src = s.source();
    }
    const CUT_SHORT: [&str; 5] = [
        "connection closed before message completed",
        "before message completed",
        "error reading a body from connection",
        "connection error",
        "broken pipe",
    ];
    chain
        .iter()
        .find(|t| CUT_SHORT.iter().any(|c| t.to_lowercase().contains(c)))
        .map(|_| chain.last().cloned().unwrap_or_default())
}

/// Connects to the engine the user's environment points at, and agrees on an API version.
/// DOCKER_HOST decides the transport (`unix://`, `tcp://`, `http://`): bollard's local defaults
/// would read only a `unix://` value and silently use the default socket for any other.
pub async fn connect() -> Result<Docker, DockerError> {
    let docker = Docker::connect_with_defaults().map_err(|e| {
        connection_error(&e).unwrap_or(DockerError::Unreachable {
            host: host(),
            cause: e.to_string(),
        })
    })?;
    docker
        .negotiate_version()
        .await
        .map_err(|e| DockerError::api("negotiating the API version", e))
}

/// Image id, if the image exists locally.
pub async fn image_id(docker: &Docker, reference: &str) -> Result<Option<String>, DockerError> {
    match docker.inspect_image(reference).await {
        Ok(i) => Ok(i.id),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(DockerError::api(format!("inspecting image {reference}"), e)),
    }
}

/// Whether a container on the host's network shares this machine's loopback: the engine is
/// reached through a local socket and runs containers on this very kernel (not in the VM of
/// Docker Desktop, not in the network namespace of a rootless engine).
pub async fn shares_host_loopback(docker: &Docker) -> bool {
    let local = host().starts_with("unix://");
    let Ok(info) = docker.info().await else {
        return false;
    };
    let linux = info.os_type.as_deref() == Some("linux");
    let desktop = info
        .operating_system
        .as_deref()
        .is_some_and(|os| os.contains("Docker Desktop"));
    let rootless = info
        .security_options
        .unwrap_or_default()
        .iter()
        .any(|o| o.contains("name=rootless"));
    local && linux && !desktop && !rootless && cfg!(target_os = "linux")
}

/// The platform of the engine's own machine: what the images it builds and runs natively are
/// for (`docker info`'s `OSType` and `Architecture`).
pub async fn engine_platform(docker: &Docker) -> Result<crate::platform::Platform, DockerError> {
    let info = docker
        .info()
        .await
        .map_err(|e| DockerError::api("asking the engine for its platform", e))?;
    let os = info.os_type.unwrap_or_else(|| "linux".into());
    let arch = info.architecture.unwrap_or_default();
    match crate::platform::Arch::parse(&arch) {
        Some(a) if os == "linux" => Ok(crate::platform::Platform::linux(a)),
        _ => Err(DockerError::UnknownPlatform {
            host: host(),
            os,
            arch,
        }),
    }
}

/// The program through which an engine without an `nvidia` runtime still gives containers GPUs
/// (the NVIDIA Container Toolkit installs it; the engine runs it as a hook).
const NVIDIA_HOOK: &str = "nvidia-container-runtime-hook";

/// Fails before anything is built or started when the engine certainly cannot give a container
/// GPUs; `field` is the spec field that asks for them. An engine elsewhere (remote, Docker
/// Desktop) cannot be looked at that closely, so there the engine's own refusal at start says so.
pub async fn check_gpu_support(docker: &Docker, field: &str) -> Result<(), DockerError> {
    let info = docker
        .info()
        .await
        .map_err(|e| DockerError::api("asking the engine for its runtimes", e))?;
    let mut runtimes: Vec<String> = info.runtimes.unwrap_or_default().into_keys().collect();
    runtimes.sort();
    let desktop = info
        .operating_system
        .as_deref()
        .is_some_and(|os| os.contains("Docker Desktop"));
    let local = host().starts_with("unix://") && !desktop && cfg!(target_os = "linux");
    match gpu_verdict(
        &runtimes,
        info.default_runtime.as_deref(),
        local,
        local && hook_installed(),
    ) {
        None => Ok(()),
        Some(reason) => Err(DockerError::NoGpu {
            reason,
            field: field.to_string(),
        }),
    }
}

/// Why the engine cannot give GPUs, or None when it can (or might: `local` is false when the
/// engine is not on this machine, so its files cannot be looked at).
fn gpu_verdict(
    runtimes: &[String],
    default_runtime: Option<&str>,
    local: bool,
    hook_installed: bool,
) -> Option<String> {
    let nvidia = |r: &str| r.contains("nvidia");
    if runtimes.iter().any(|r| nvidia(r)) || default_runtime.is_some_and(nvidia) || !local {
        return None;
    }
    (!hook_installed).then(|| {
        format!(
            "it has no nvidia runtime (its runtimes: {}) and {NVIDIA_HOOK} is not installed",
            if runtimes.is_empty() {
                "none".to_string()
            } else {
                runtimes.join(", ")
            }
        )
    })
}

/// Whether the NVIDIA hook is where the engine's `PATH` would find it.
fn hook_installed() -> bool {
    let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(
        [
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ]
        .map(std::path::PathBuf::from),
    );
    dirs.iter().any(|d| d.join(NVIDIA_HOOK).is_file())
}

/// Fails early, with a useful message, when a port the user asked for is taken.
pub fn check_port_free(port: u16, flag: &str) -> Result<(), DockerError> {
    match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(_) => Err(DockerError::PortBusy {
            port,
            flag: flag.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_daemon_is_reported_with_a_fix() {
        // SAFETY-free: tests in this module do not read DOCKER_HOST concurrently with others that
        // need the real engine; the integration tests run in their own processes.
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("nope.sock");
        // bollard may refuse at connect (no socket file) or at the first request.
        let err = match Docker::connect_with_unix(
            &sock.to_string_lossy(),
            5,
            bollard::API_DEFAULT_VERSION,
        ) {
            Ok(docker) => docker.negotiate_version().await.unwrap_err(),
            Err(e) => e,
        };
        let mapped = DockerError::api("negotiating", err);
        assert!(
            matches!(mapped, DockerError::Unreachable { .. }),
            "{mapped:?}"
        );
        assert!(mapped.to_string().contains("systemctl start docker"));
    }

    #[tokio::test]
    async fn a_daemon_that_hangs_up_mid_request_is_reported_as_lost() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("hangup.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            }
        });
        let docker =
            Docker::connect_with_unix(&sock.to_string_lossy(), 5, bollard::API_DEFAULT_VERSION)
                .unwrap();
        let err = docker.version().await.unwrap_err();
        let mapped = DockerError::api("asking for the version", err);
        assert!(matches!(mapped, DockerError::Lost { .. }), "{mapped:?}");
        assert!(
            mapped.to_string().contains("while asking for the version"),
            "{mapped}"
        );
    }

    #[test]
    fn gpus_are_refused_only_where_the_engine_certainly_has_no_way_to_give_them() {
        let runc = ["io.containerd.runc.v2".to_string(), "runc".to_string()];
        let reason = gpu_verdict(&runc, Some("runc"), true, false).expect("no GPU");
        assert_eq!(
            reason,
            "it has no nvidia runtime (its runtimes: io.containerd.runc.v2, runc) and nvidia-container-runtime-hook is not installed"
        );
        // `nvidia-ctk runtime configure` registers a runtime; an engine may also default to it.
        let with_nvidia = ["nvidia".to_string(), "runc".to_string()];
        assert_eq!(gpu_verdict(&with_nvidia, Some("runc"), true, false), None);
        assert_eq!(gpu_verdict(&runc, Some("nvidia"), true, false), None);
        // The toolkit's hook alone is enough for the engine's nvidia device driver.
        assert_eq!(gpu_verdict(&runc, Some("runc"), true, true), None);
        // An engine elsewhere is left to say it at start.
        assert_eq!(gpu_verdict(&runc, Some("runc"), false, false), None);
    }

    #[test]
    fn a_busy_port_is_named() {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let err = check_port_free(port, "--port").unwrap_err();
        assert!(err.to_string().contains(&port.to_string()));
        drop(l);
    }
}

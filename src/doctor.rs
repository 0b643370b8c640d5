//! `ferry doctor`: checks what ferry needs on this machine and, in a project, what its cluster
//! environments need, each result with a fix. A failure makes the command exit non-zero, so CI
//! can run it first.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::spec::{Project, TargetKind};
use crate::ui::{Ui, human_bytes};

/// The oldest Docker Engine API ferry is tested against; bollard negotiates down to what an
/// engine speaks, but calls ferry makes (build options, platform fields) need at least this.
pub const MIN_DOCKER_API: (u32, u32) = (1, 41);
/// Below this much free space, builds (a few GB of images and wheels) are likely to fail.
const LOW_DISK: u64 = 5 << 30;
/// How long a cluster or registry may take to answer before it counts as unreachable.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    /// Not applicable here (outside a project, or a check that needs one that failed).
    Skip,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(name: impl Into<String>, status: Status, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }

    /// A failure from one of ferry's errors, whose text ends in `\n  hint: …`: the hint is the fix.
    fn from_error(name: impl Into<String>, status: Status, message: &str) -> Check {
        let (detail, hint) = split_hint(message);
        let c = Check::new(name, status, detail);
        match hint {
            Some(h) => c.fix(h),
            None => c,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The spec checked, when there is one.
    pub project: Option<PathBuf>,
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn failed(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count()
    }
}

/// Runs every check; project checks only where `file` exists.
pub async fn run(file: &Path, ui: &Ui) -> Report {
    let step = ui.step("checking this machine");
    let mut checks = Vec::new();

    step.set_detail("Docker");
    let docker = docker_checks(&mut checks).await;
    step.set_detail("ONNX Runtime");
    let project = load_project(file, &mut checks);
    checks.push(onnx_check(project.as_ref()));
    checks.push(serving_binary_check());
    checks.push(debootstrap_check(project.as_ref()));
    checks.push(python_check());
    checks.push(uv_check());

    match &project {
        Some(p) => {
            let clusters = cluster_environments(p);
            if clusters.is_empty() {
                checks.push(Check::new(
                    "cluster",
                    Status::Skip,
                    "the spec has no `target: kubernetes` environment",
                ));
            } else {
                step.set_detail("registries");
                for env in &clusters {
                    checks.push(registry_check(p, env, docker.as_ref()).await);
                }
                step.set_detail("clusters");
                kube_checks(&clusters, &mut checks).await;
            }
            checks.push(disk_check("disk: project", &p.root));
        }
        None => checks.push(Check::new(
            "project",
            Status::Skip,
            format!(
                "no {} here, so no registry or cluster to check (run it in a project, or pass -f FILE)",
                file.display()
            ),
        )),
    }
    let report = Report {
        project: project.map(|p| p.file),
        ok: !checks.iter().any(|c| c.status == Status::Fail),
        checks,
    };
    if report.ok {
        step.finish("checked this machine");
    } else {
        step.fail();
    }
    report
}

/// The report as a table: a mark, the check, its detail, and for a problem its fix.
pub fn print(report: &Report, ui: &Ui) {
    let w = report
        .checks
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0);
    for c in &report.checks {
        let mark = match c.status {
            Status::Ok => console::style("✓").green(),
            Status::Warn => console::style("!").yellow(),
            Status::Fail => console::style("✗").red(),
            Status::Skip => console::style("-").dim(),
        };
        println!("{mark} {:w$}  {}", c.name, c.detail.replace('\n', "\n    "));
        if let Some(fix) = &c.fix {
            println!("  {:w$}  {} {fix}", "", console::style("fix:").bold());
        }
    }
    let failed = report.failed();
    let warned = report
        .checks
        .iter()
        .filter(|c| c.status == Status::Warn)
        .count();
    if failed == 0 && warned == 0 {
        ui.info("everything ferry needs is in place");
    }
}

fn load_project(file: &Path, checks: &mut Vec<Check>) -> Option<Project> {
    if !file.exists() {
        return None;
    }
    match Project::load(file, None) {
        Ok(p) => {
            checks.push(Check::new(
                "spec",
                Status::Ok,
                format!(
                    "{} ({}; environments: {})",
                    file.display(),
                    p.spec.name,
                    if p.environments.is_empty() {
                        "none".into()
                    } else {
                        p.environments.join(", ")
                    }
                ),
            ));
            Some(p)
        }
        Err(e) => {
            checks.push(
                Check::from_error("spec", Status::Fail, &e.to_string())
                    .fix("correct the spec (`ferry validate` shows every problem); the project checks are skipped until it loads"),
            );
            None
        }
    }
}

/// A cluster environment's name, context and registry.
struct ClusterEnv {
    env: String,
    context: Option<String>,
    registry: Option<String>,
    name: String,
}

fn cluster_environments(project: &Project) -> Vec<ClusterEnv> {
    project
        .environments
        .iter()
        .filter_map(|e| {
            let p = Project::load(&project.file, Some(e)).ok()?;
            (p.spec.target == TargetKind::Kubernetes).then(|| ClusterEnv {
                env: e.clone(),
                context: p.spec.context.clone(),
                registry: p.spec.registry.clone(),
                name: p.spec.name.clone(),
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Docker

async fn docker_checks(checks: &mut Vec<Check>) -> Option<bollard::Docker> {
    let host = crate::docker::host();
    let docker = match crate::docker::connect().await {
        Ok(d) => d,
        Err(e) => {
            checks.push(Check::from_error("docker", Status::Fail, &e.to_string()));
            checks.push(Check::new(
                "disk: docker",
                Status::Skip,
                "needs the Docker engine",
            ));
            return None;
        }
    };
    let version = match docker.version().await {
        Ok(v) => v,
        Err(e) => {
            let e = crate::docker::DockerError::api("asking for the version", e);
            checks.push(Check::from_error("docker", Status::Fail, &e.to_string()));
            return None;
        }
    };
    let api = version.api_version.clone().unwrap_or_default();
    let engine = version.version.clone().unwrap_or_else(|| "?".into());
    let info = docker.info().await.ok();
    let rootless = info
        .as_ref()
        .and_then(|i| i.security_options.as_ref())
        .is_some_and(|o| o.iter().any(|s| s.contains("name=rootless")));
    let detail = format!(
        "Docker {engine} (API {api}) at {host}, {} daemon",
        if rootless { "rootless" } else { "root" }
    );
    match parse_api(&api) {
        Some(v) if v >= MIN_DOCKER_API => checks.push(Check::new("docker", Status::Ok, detail)),
        Some(_) => checks.push(
            Check::new(
                "docker",
                Status::Fail,
                format!(
                    "{detail}: ferry needs API {}.{} or newer",
                    MIN_DOCKER_API.0, MIN_DOCKER_API.1
                ),
            )
            .fix("upgrade the Docker engine (20.10 or newer speaks API 1.41)"),
        ),
        None => checks.push(
            Check::new(
                "docker",
                Status::Warn,
                format!("{detail}: the engine did not say which API it speaks"),
            )
            .fix("check the engine with `docker version`"),
        ),
    }
    let root_dir = info.as_ref().and_then(|i| i.docker_root_dir.clone());
    let local = host.starts_with("unix://") || std::env::var_os("DOCKER_HOST").is_none();
    match root_dir {
        Some(dir) if local && Path::new(&dir).exists() => {
            checks.push(disk_check("disk: docker", Path::new(&dir)))
        }
        Some(dir) => checks.push(Check::new(
            "disk: docker",
            Status::Skip,
            format!("the engine's data root {dir} is not on this machine"),
        )),
        None => checks.push(Check::new(
            "disk: docker",
            Status::Skip,
            "the engine did not say where it keeps its data",
        )),
    }
    Some(docker)
}

/// `1.41` → (1, 41).
fn parse_api(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.trim().split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

// ---------------------------------------------------------------------------------------------
// Host tools

fn onnx_check(project: Option<&Project>) -> Check {
    let name = "onnxruntime";
    let path = match crate::onnx::runtime_library() {
        Ok(p) => p,
        Err(e) => {
            return Check::new(name, Status::Fail, first_line(&e.to_string())).fix(format!(
                "install the `onnxruntime` Python package into the environment ferry was installed into (`pip install onnxruntime`; `pip install ferry-ml` brings it), run ./install.sh (it puts the library in <prefix>/lib/ferry), or set {} to the library's path; searched: {}",
                crate::onnx::DYLIB_ENV,
                searched(&e)
            ));
        }
    };
    if let Err(e) = crate::onnx::init() {
        return Check::new(name, Status::Fail, e.to_string()).fix(format!(
            "replace {} with the library of a Linux onnxruntime release for this machine (./install.sh fetches one), or point {} at another",
            path.display(),
            crate::onnx::DYLIB_ENV
        ));
    }
    let version = library_version(&path)
        .or_else(|| {
            // ort reads the build string through a pointer the library hands out; guard
            // against a malformed one rather than trust it.
            let build = std::panic::catch_unwind(ort::info).unwrap_or_default();
            build
                .split(',')
                .find_map(|p| p.trim().strip_prefix("git-branch=rel-"))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "version unknown".into());
    let providers = execution_providers();
    let cuda = providers.iter().any(|p| p == "CUDAExecutionProvider");
    let detail = format!(
        "ONNX Runtime {version} at {}; execution providers: {}; CUDA provider: {}",
        path.display(),
        providers
            .iter()
            .map(|p| p.trim_end_matches("ExecutionProvider"))
            .collect::<Vec<_>>()
            .join(", "),
        if cuda { "yes" } else { "no (CPU only)" }
    );
    let wants_gpu = project.is_some_and(|p| {
        p.environments.iter().any(|e| {
            Project::load(&p.file, Some(e)).is_ok_and(|q| {
                q.spec
                    .serve
                    .as_ref()
                    .is_some_and(|s| s.resources.gpu.is_some_and(|g| g > 0))
            })
        })
    });
    if wants_gpu && !cuda {
        return Check::new(
            name,
            Status::Warn,
            format!("{detail}; the spec asks for a GPU, and the serving image carries this library"),
        )
        .fix("install a GPU build of ONNX Runtime (with the CUDA provider) and point ORT_DYLIB_PATH at it");
    }
    Check::new(name, Status::Ok, detail)
}

/// The binary serving images carry: where it was found, its size and platform.
fn serving_binary_check() -> Check {
    let name = "serving binary";
    let path = match crate::serving_image::serving_binary() {
        Ok(p) => p,
        Err(e) => return Check::new(name, Status::Fail, e.to_string()),
    };
    let size = match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => m.len(),
        _ => {
            return Check::new(
                name,
                Status::Fail,
                format!("{} does not exist", path.display()),
            )
            .fix("unset FERRY_SERVE_BINARY, or point it at a Linux build of `ferry-serve`");
        }
    };
    // The ELF header only: the binary may be hundreds of MB.
    let arch = std::fs::File::open(&path)
        .ok()
        .and_then(|mut f| {
            let mut header = [0u8; 64];
            std::io::Read::read_exact(&mut f, &mut header).ok()?;
            goblin::elf::Elf::parse_header(&header).ok()
        })
        .and_then(|h| crate::platform::Arch::from_elf_machine(h.e_machine));
    let Some(arch) = arch else {
        return Check::new(
            name,
            Status::Fail,
            format!(
                "{} is not a Linux binary for amd64 or arm64",
                path.display()
            ),
        )
        .fix("point FERRY_SERVE_BINARY at a Linux build of `ferry-serve` (the `ferry-ml` wheel and ./install.sh put one beside `ferry`)");
    };
    let kind = if path.file_name().is_some_and(|n| n == "ferry-serve") {
        "server only"
    } else {
        "the whole of ferry: ./install.sh or the `ferry-ml` wheel put the smaller `ferry-serve` beside it"
    };
    Check::new(
        name,
        Status::Ok,
        format!(
            "{} ({}, {}; {kind})",
            path.display(),
            crate::ui::human_bytes(size),
            crate::platform::Platform::linux(arch)
        ),
    )
}

/// The version in the library's real file name: releases ship `libonnxruntime.so.1.32.0` with
/// `libonnxruntime.so` a link to it (the build string often says only `git-branch=HEAD`).
fn library_version(path: &Path) -> Option<String> {
    let real = std::fs::canonicalize(path).ok()?;
    let name = real.file_name()?.to_str()?;
    let v = name
        .strip_prefix("libonnxruntime.so.")
        .or_else(|| name.strip_prefix("libonnxruntime.")?.strip_suffix(".dylib"))?;
    v.split('.')
        .all(|p| p.parse::<u32>().is_ok())
        .then(|| v.to_string())
}

/// The execution providers the loaded library was built with (`CPUExecutionProvider`,
/// `CUDAExecutionProvider`, …). ort asks for them only per provider, and only for the providers
/// compiled into ferry (none but the CPU's), so the library is asked directly.
fn execution_providers() -> Vec<String> {
    use std::ffi::{CStr, c_char, c_int};
    let api = ort::api();
    let mut list: *mut *mut c_char = std::ptr::null_mut();
    let mut n: c_int = 0;
    // SAFETY: the library is loaded (`onnx::init` succeeded, so `api` is its function table);
    // both out-pointers are valid for writes.
    let status = unsafe { (api.GetAvailableProviders)(&mut list, &mut n) };
    if !status.0.is_null() {
        // SAFETY: a non-null status is ours to release.
        unsafe { (api.ReleaseStatus)(status.0) };
        return Vec::new();
    }
    if list.is_null() {
        return Vec::new();
    }
    let names = (0..usize::try_from(n).unwrap_or(0))
        .filter_map(|i| {
            // SAFETY: the library returned `n` entries at `list`, each a C string or null.
            let p = unsafe { *list.add(i) };
            // SAFETY: non-null entries are NUL-terminated strings owned by the list.
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        })
        .collect();
    // SAFETY: the list and its length are exactly what GetAvailableProviders returned.
    let status = unsafe { (api.ReleaseAvailableProviders)(list, n) };
    if !status.0.is_null() {
        // SAFETY: as above.
        unsafe { (api.ReleaseStatus)(status.0) };
    }
    names
}

fn searched(e: &crate::onnx::OnnxError) -> String {
    match e {
        crate::onnx::OnnxError::RuntimeNotFound { searched } => searched
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        _ => String::new(),
    }
}

fn debootstrap_check(project: Option<&Project>) -> Check {
    let name = "debootstrap";
    let needed = project.is_some_and(|p| p.spec.environment.bootstrap.is_some());
    let root = crate::images::bootstrap::is_root();
    match crate::images::bootstrap::find_program("debootstrap") {
        None => {
            let c = Check::new(
                name,
                if needed { Status::Fail } else { Status::Warn },
                if needed {
                    "not installed, and the spec builds its base with `bootstrap:`"
                } else {
                    "not installed (only offline mode, `bootstrap:`, needs it)"
                },
            );
            c.fix("sudo apt-get install debootstrap (or ./install.sh)")
        }
        Some(path) if root == Some(false) => Check::new(
            name,
            if needed { Status::Warn } else { Status::Ok },
            format!(
                "{}; not running as root, which bootstrapping a base needs",
                path.display()
            ),
        )
        .fix("run the first build of an offline project as root (sudo -E ferry build); later builds reuse the base"),
        Some(path) => Check::new(name, Status::Ok, format!("{} (running as root)", path.display())),
    }
}

fn python_check() -> Check {
    let name = "python";
    let out = std::process::Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let pip = String::from_utf8_lossy(&o.stdout);
            let version = pip.split_whitespace().nth(1).unwrap_or("?");
            let python = pip
                .rsplit_once("(python ")
                .map(|x| x.1.trim().trim_end_matches(')'))
                .unwrap_or("?");
            Check::new(name, Status::Ok, format!("python3 {python}, pip {version}"))
        }
        Ok(o) => Check::new(
            name,
            Status::Fail,
            format!(
                "python3 has no pip: {}",
                first_line(String::from_utf8_lossy(&o.stderr).trim())
            ),
        )
        .fix("sudo apt-get install python3-pip (ferry resolves the requirements' wheels on the host)"),
        Err(e) => Check::new(name, Status::Fail, format!("python3 not found: {e}"))
            .fix("install Python 3 with pip (sudo apt-get install python3 python3-pip)"),
    }
}

/// uv resolves environments on the host; without it pip does, taking several times as long.
fn uv_check() -> Check {
    let name = "uv";
    let Some(uv) = crate::images::wheels::find_uv() else {
        return Check::new(
            name,
            Status::Warn,
            "not found beside ferry or on PATH: pip resolves environments instead, several times slower, and pyproject.toml and uv.lock requirement sources cannot be read",
        )
        .fix("pip install uv");
    };
    match std::process::Command::new(&uv).arg("--version").output() {
        Ok(o) if o.status.success() => Check::new(
            name,
            Status::Ok,
            format!(
                "{} ({})",
                String::from_utf8_lossy(&o.stdout).trim(),
                uv.display()
            ),
        ),
        Ok(o) => Check::new(
            name,
            Status::Warn,
            format!(
                "{} does not run: {}",
                uv.display(),
                first_line(String::from_utf8_lossy(&o.stderr).trim())
            ),
        )
        .fix("pip install --force-reinstall uv"),
        Err(e) => Check::new(
            name,
            Status::Warn,
            format!("{} does not run: {e}", uv.display()),
        )
        .fix("pip install --force-reinstall uv"),
    }
}

// ---------------------------------------------------------------------------------------------
// Registries and clusters

async fn registry_check(
    project: &Project,
    env: &ClusterEnv,
    docker: Option<&bollard::Docker>,
) -> Check {
    use crate::images::push::{PushError, classify, credentials_for, registry_host};
    let name = format!("registry: {}", env.env);
    let Some(repository) = &env.registry else {
        return Check::new(
            name,
            Status::Warn,
            format!("environments.{} has no registry", env.env),
        )
        .fix(format!(
            "set environments.{}.registry in {} to where the cluster pulls images from",
            env.env,
            project.file.display()
        ));
    };
    let host = registry_host(repository).to_string();
    let Some(docker) = docker else {
        return Check::new(
            name,
            Status::Skip,
            format!("{host}: pushes go through the Docker engine, which is unreachable"),
        );
    };
    let credentials = match credentials_for(&host) {
        Ok(c) => c,
        Err(e) => return Check::from_error(name, Status::Fail, &e.to_string()),
    };
    let from = credentials.as_ref().map(|(f, _)| f.clone());
    let login = from
        .as_deref()
        .map(|f| format!("credentials from {f}"))
        .unwrap_or_else(|| "no credentials in the Docker config".into());
    // The engine pushes, so ask the engine: it knows the registry's TLS and proxy settings.
    let reference = format!("{repository}/{}-serve:latest", env.name);
    let asked = tokio::time::timeout(
        REMOTE_TIMEOUT,
        docker.inspect_registry_image(&reference, credentials.map(|(_, c)| c)),
    )
    .await;
    let message = match asked {
        Err(_) => {
            return Check::new(
                name,
                Status::Fail,
                format!("{host} did not answer within {}s", REMOTE_TIMEOUT.as_secs()),
            )
            .fix(format!(
                "check the address in environments.{}.registry and the network (VPN, proxy)",
                env.env
            ));
        }
        Ok(Ok(_)) => {
            return Check::new(name, Status::Ok, format!("{host} answers; {login}"));
        }
        Ok(Err(bollard::errors::Error::DockerResponseServerError { message, .. })) => message,
        Ok(Err(e)) => {
            let e = crate::docker::DockerError::api("asking the registry", e);
            return Check::from_error(name, Status::Fail, &e.to_string());
        }
    };
    let lower = message.to_ascii_lowercase();
    if [
        "manifest unknown",
        "not found",
        "name unknown",
        "does not exist",
    ]
    .iter()
    .any(|m| lower.contains(m))
    {
        return Check::new(name, Status::Ok, format!("{host} answers; {login}"));
    }
    match classify(&host, &reference, message, false, from) {
        e @ PushError::AuthRequired { .. } => Check::from_error(name, Status::Warn, &e.to_string()),
        e => Check::from_error(name, Status::Fail, &e.to_string()),
    }
}

async fn kube_checks(clusters: &[ClusterEnv], checks: &mut Vec<Check>) {
    let config = match kube::config::Kubeconfig::read() {
        Ok(c) => c,
        Err(e) => {
            checks.push(
                Check::new(
                    "kubeconfig",
                    Status::Fail,
                    format!("cannot read a kubeconfig: {e}"),
                )
                .fix("set KUBECONFIG to your cluster's kubeconfig, or put it at ~/.kube/config"),
            );
            return;
        }
    };
    let contexts: Vec<String> = config.contexts.iter().map(|c| c.name.clone()).collect();
    let current = config.current_context.clone().filter(|c| !c.is_empty());
    checks.push(Check::new(
        "kubeconfig",
        Status::Ok,
        format!(
            "{} context(s): {}; current: {}",
            contexts.len(),
            contexts.join(", "),
            current.as_deref().unwrap_or("none")
        ),
    ));
    for env in clusters {
        let name = format!("cluster: {}", env.env);
        let Some(context) = env.context.clone().or_else(|| current.clone()) else {
            checks.push(
                Check::new(
                    name,
                    Status::Fail,
                    "no context named in the spec and no current context",
                )
                .fix(format!(
                    "set environments.{}.context, or `kubectl config use-context NAME`",
                    env.env
                )),
            );
            continue;
        };
        if !contexts.contains(&context) {
            checks.push(
                Check::new(
                    name,
                    Status::Fail,
                    format!(
                        "the context {context} is not in the kubeconfig (it has: {})",
                        if contexts.is_empty() {
                            "none".into()
                        } else {
                            contexts.join(", ")
                        }
                    ),
                )
                .fix(format!(
                    "add the context {context} to the kubeconfig, or set environments.{}.context to one it has",
                    env.env
                )),
            );
            continue;
        }
        let probe = async {
            let client = crate::kube::client::connect(Some(&context)).await?;
            let version = client.apiserver_version().await.ok();
            Ok::<_, crate::kube::KubeError>(version.map(|v| v.git_version))
        };
        match tokio::time::timeout(REMOTE_TIMEOUT, probe).await {
            Ok(Ok(version)) => checks.push(Check::new(
                name,
                Status::Ok,
                format!(
                    "context {context} answers{}",
                    version
                        .map(|v| format!(" (Kubernetes {v})"))
                        .unwrap_or_default()
                ),
            )),
            Ok(Err(e)) => checks.push(Check::from_error(name, Status::Fail, &e.to_string())),
            Err(_) => checks.push(
                Check::new(
                    name,
                    Status::Fail,
                    format!(
                        "context {context}: the API server did not answer within {}s",
                        REMOTE_TIMEOUT.as_secs()
                    ),
                )
                .fix("check the network to the cluster (VPN, proxy) and the server address in the kubeconfig"),
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Disk

fn disk_check(name: &str, path: &Path) -> Check {
    match free_bytes(path) {
        Ok(free) if free < LOW_DISK => Check::new(
            name,
            Status::Warn,
            format!("{} free at {}", human_bytes(free), path.display()),
        )
        .fix(format!(
            "free some space (`docker system prune` removes unused images and build cache); builds need a few GB and ferry warns under {}",
            human_bytes(LOW_DISK)
        )),
        Ok(free) => Check::new(
            name,
            Status::Ok,
            format!("{} free at {}", human_bytes(free), path.display()),
        ),
        Err(e) => Check::new(
            name,
            Status::Skip,
            format!("cannot tell the free space at {}: {e}", path.display()),
        ),
    }
}

/// Free space for unprivileged users at `path`, from `df` (POSIX output, 1024-byte blocks).
fn free_bytes(path: &Path) -> Result<u64, String> {
    let out = std::process::Command::new("df")
        .arg("-Pk")
        .arg(path)
        .output()
        .map_err(|e| format!("df: {e}"))?;
    if !out.status.success() {
        return Err(first_line(String::from_utf8_lossy(&out.stderr).trim()).to_string());
    }
    parse_df(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| "df said nothing usable".into())
}

fn parse_df(text: &str) -> Option<u64> {
    let line = text.lines().nth(1)?;
    let available: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    Some(available * 1024)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// `message\n  hint: fix` → (`message`, `fix`).
fn split_hint(message: &str) -> (String, Option<String>) {
    match message.split_once("\n  hint: ") {
        Some((m, h)) => (m.trim().to_string(), Some(h.trim().to_string())),
        None => (message.trim().to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_become_fixes() {
        let c = Check::from_error(
            "docker",
            Status::Fail,
            "cannot reach the Docker daemon at unix:///x: gone\n  hint: start it",
        );
        assert_eq!(
            c.detail,
            "cannot reach the Docker daemon at unix:///x: gone"
        );
        assert_eq!(c.fix.as_deref(), Some("start it"));
    }

    #[test]
    fn reads_df_and_api_versions() {
        let df = "Filesystem 1024-blocks Used Available Capacity Mounted on\n\
                  /dev/sda1 102400 2048 51200 4% /\n";
        assert_eq!(parse_df(df), Some(51200 * 1024));
        assert_eq!(parse_df("garbage"), None);
        assert_eq!(parse_api("1.41"), Some((1, 41)));
        assert!(parse_api("1.40").unwrap() < MIN_DOCKER_API);
        assert!(parse_api("1.47").unwrap() >= MIN_DOCKER_API);
        assert_eq!(parse_api("x"), None);
    }

    #[test]
    fn free_space_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        let c = disk_check("disk", dir.path());
        assert!(matches!(c.status, Status::Ok | Status::Warn), "{c:?}");
        assert_eq!(c.status == Status::Warn, free < LOW_DISK);
    }
}

//! The two images of a project, each tagged by a hash of its inputs and skipped when that tag
//! exists:
//!
//! - the **environment image** (`ferry/<name>-env:<hash>`): base, system packages, a virtualenv
//!   with the pinned requirements. The notebook runs it with the project mounted.
//! - the **project image** (`ferry/<name>:<hash>`): the environment image plus the project's code.
//!   Training runs it, so a run is exactly what the image holds.
//!
//! Layers are ordered from the least to the most often changed (system packages, Python
//! requirements, code), so an edit to the code rebuilds one small layer.

use std::collections::HashMap;

use bollard::Docker;
use bollard::query_parameters::{BuildImageOptionsBuilder, CreateImageOptionsBuilder};
use futures_util::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::bootstrap::{self, BaseRequest, BootstrapError};
use super::code;
use super::context::{Context, DockerIgnore};
use super::leftovers;
use super::requirements::{self, RequirementsError, SourceKind};
use super::venv;
use super::wheels::{self, PythonTarget, WheelsError};
use crate::docker::{self, DockerError, LABEL_PROJECT, LABEL_ROLE};
use crate::lock::{self, ImageRef, Lock, PythonLock};
use crate::plan::{Base, EnvImage, Plan, VENV, WORKDIR};
use crate::spec::Project;
use crate::ui::{Step, Ui, tail_block};

/// Bump when the generated Dockerfiles change, so old tags are not reused for a new recipe.
const RECIPE: &str = "ferry-env-v2";

/// The uv that installs the wheels inside the image build: its wheel for the image's platform,
/// fetched on the host like the other wheels (so offline builds have it too).
pub const UV_VERSION: &str = "0.13.9";

/// Chooses the installer of the environment image's wheels: `uv` (the default) or `pip`.
pub const INSTALLER_ENV: &str = "FERRY_INSTALLER";

/// What installs the pinned wheels into the image's virtualenv. Both install the same pins
/// with the same hashes; uv does it in seconds, pip stays for comparison (`bench/env.sh`) and
/// as a way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installer {
    Uv,
    Pip,
}

impl Installer {
    /// From `FERRY_INSTALLER` (unset or empty: uv).
    pub fn from_env() -> Result<Installer, ImageError> {
        Installer::parse(std::env::var(INSTALLER_ENV).ok().as_deref())
    }

    /// The installer a value of `FERRY_INSTALLER` names.
    fn parse(value: Option<&str>) -> Result<Installer, ImageError> {
        match value.map(str::trim) {
            None | Some("" | "uv") => Ok(Installer::Uv),
            Some("pip") => Ok(Installer::Pip),
            Some(other) => Err(ImageError::UnknownInstaller {
                given: other.to_string(),
            }),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Installer::Uv => "uv",
            Installer::Pip => "pip",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error(transparent)]
    Wheels(#[from] WheelsError),
    #[error(transparent)]
    Requirements(#[from] RequirementsError),
    #[error(
        "cannot pull the base image {image}: {message}\n  hint: where no registry can be reached, use offline mode: replace `base: {image}` with `bootstrap: bookworm` under `environment:` in ferry.yaml. Ferry then builds a Python base from Debian packages on this machine (debootstrap, as root) and installs your requirements from wheels downloaded on the host. See README, \"Offline mode\"."
    )]
    BasePull { image: String, message: String },
    #[error("building {tag} failed at {step}: {message}{}", tail_block(tail))]
    BuildFailed {
        tag: String,
        step: String,
        message: String,
        tail: Vec<String>,
    },
    #[error("loading {tag} into the Docker engine failed: {message}")]
    LoadFailed { tag: String, message: String },
    #[error("cannot write {what}: {source}")]
    Write {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot use {} for the environment's virtualenv: {source}\n  hint: ferry keeps virtualenvs under its cache directory (`FERRY_CACHE_DIR` moves it); check its free space and permissions",
        path.display()
    )]
    VenvDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error(
        "{INSTALLER_ENV}={given:?} names no installer\n  hint: set {INSTALLER_ENV} to `uv` (the default) or `pip`, or unset it"
    )]
    UnknownInstaller { given: String },
    #[error(
        "the wheel of uv {UV_VERSION} for the image's platform was not in what pip downloaded into {}\n  hint: run again; where no index can be reached, set {INSTALLER_ENV}=pip",
        dir.display()
    )]
    NoUvWheel { dir: std::path::PathBuf },
    #[error("cannot make the build context from {}: {source}", path.display())]
    Context {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An image that exists (built now or before).
#[derive(Clone, Debug, Serialize)]
pub struct Built {
    pub tag: String,
    pub id: String,
    /// False when the tag already existed and nothing was built.
    pub built: bool,
}

/// Where ferry keeps what it can rebuild (wheelhouses, probes).
pub fn cache_dir() -> std::path::PathBuf {
    std::env::var_os("FERRY_CACHE_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("ferry")))
        .unwrap_or_else(|| std::env::temp_dir().join("ferry-cache"))
}

/// The requirement lines the environment installs: the user's file, then ferry's additions.
pub fn requirement_lines(project: &Project, env: &EnvImage) -> Result<Vec<String>, ImageError> {
    let mut lines = Vec::new();
    if let Some(r) = &env.requirements {
        let path = project.path(r);
        let text = std::fs::read_to_string(&path).map_err(|source| ImageError::Read {
            path: path.clone(),
            source,
        })?;
        lines.extend(
            text.lines()
                .map(|l| l.split(" #").next().unwrap_or("").trim())
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    lines.extend(env.extra_requirements.iter().cloned());
    Ok(lines)
}

/// The base image, present locally: pulled, or bootstrapped from Debian packages.
async fn ensure_base(docker: &Docker, base: &Base, ui: &Ui) -> Result<String, ImageError> {
    match base {
        Base::Image(reference) => {
            if docker::image_id(docker, reference).await?.is_some() {
                return Ok(reference.clone());
            }
            pull(docker, reference, ui).await?;
            Ok(reference.clone())
        }
        Base::Bootstrap { suite, packages } => {
            let req = BaseRequest {
                suite,
                packages: packages.as_slice(),
            };
            Ok(bootstrap::ensure_base(docker, &req, ui).await?)
        }
    }
}

async fn pull(docker: &Docker, reference: &str, ui: &Ui) -> Result<(), ImageError> {
    let step = ui.step(format!("pulling {reference}"));
    let opts = CreateImageOptionsBuilder::default()
        .from_image(reference)
        .build();
    let mut stream = docker.create_image(Some(opts), None, None);
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(s) = info.status {
                    step.output_line(&s);
                }
            }
            Err(e) => {
                step.fail();
                let message = match DockerError::api("pulling the base image", e) {
                    DockerError::Api { message, .. } => message,
                    other => return Err(other.into()),
                };
                return Err(ImageError::BasePull {
                    image: reference.to_string(),
                    message,
                });
            }
        }
    }
    step.finish(format!("pulled {reference}"));
    Ok(())
}

/// The environment image for `plan`, built if its inputs changed.
///
/// Python packages are installed from pins: exact versions and wheel hashes that `ferry.lock`
/// keeps for these requirements and this interpreter, resolved (and recorded) only when it has
/// none. The image's tag covers the base image id and the pins, so the same lock on the same
/// base gives the same image, wherever it is built.
pub async fn ensure_env_image(
    docker: &Docker,
    project: &Project,
    plan: &Plan,
    ui: &Ui,
) -> Result<Built, ImageError> {
    let env = &plan.env_image;
    let installer = Installer::from_env()?;
    let base = ensure_base(docker, &env.base, ui).await?;
    let base_id = docker::image_id(docker, &base)
        .await?
        .unwrap_or_else(|| base.clone());
    let lines = requirement_lines(project, env)?;
    let target = probe(docker, &base, &base_id).await?;
    let source = env.requirements.as_ref().map(|r| project.path(r));
    let (python, resolved) = python_pins(
        project,
        &lines,
        source.as_deref(),
        &env.extra_requirements,
        &target,
        installer,
        ui,
    )
    .await?;
    let pinned = python.requirement_lines();

    // uv's own wheel, for the image's platform: what installs the pins there. The wheel's hash
    // is part of the tag, so the same pins installed by another uv make another image.
    let uv = match installer {
        Installer::Uv if !pinned.is_empty() => Some(uv_wheel(&target, ui).await?),
        _ => None,
    };

    let mut h = Sha256::new();
    for part in [RECIPE, &base_id, installer.name()] {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    if let Some((_, sha)) = &uv {
        h.update(format!("uv {sha}\n").as_bytes());
    }
    for p in &env.apt_packages {
        h.update(format!("apt {p}\n").as_bytes());
    }
    for l in &pinned {
        h.update(format!("req {l}\n").as_bytes());
    }
    for (k, v) in &env.env {
        h.update(format!("env {k}={v}\n").as_bytes());
    }
    let tag = format!(
        "ferry/{}-env:{}",
        plan.project,
        &hex::encode(h.finalize())[..12]
    );
    let record = |id: &str| {
        let (tag, id) = (tag.clone(), id.to_string());
        let (base, base_id) = (base.clone(), base_id.clone());
        let python = (!python.packages.is_empty()).then(|| python.clone());
        lock::update_entry(project, move |e| {
            e.images.base = Some(ImageRef {
                tag: base,
                id: base_id,
                digest: None,
            });
            e.images.environment = Some(ImageRef {
                tag,
                id,
                digest: None,
            });
            e.python = python;
        })
    };
    if let Some(id) = docker::image_id(docker, &tag).await? {
        record(&id)?;
        return Ok(Built {
            tag,
            id,
            built: false,
        });
    }

    // A resolution just made downloaded exactly the pinned wheels; otherwise fetch the pins.
    let wheelhouse = match resolved {
        Some(dir) => dir,
        None => download(&pinned, &target, installer, ui).await?,
    };
    if installer == Installer::Uv && venv::usable(docker).await {
        let system = system_image(docker, &base, &base_id, env, &plan.project, ui).await?;
        let req = venv::Request {
            tag: &tag,
            project: &plan.project,
            system: &system,
            env,
            pins: &pinned,
            wheelhouse: (!pinned.is_empty()).then_some(wheelhouse.as_path()),
            uv_wheel: uv.as_ref().map(|(p, _)| p.as_path()),
        };
        let id = venv::write_image(docker, &req, ui).await?;
        record(&id)?;
        return Ok(Built {
            tag,
            id,
            built: true,
        });
    }
    let ctx_err = |source| ImageError::Context {
        path: wheelhouse.clone(),
        source,
    };
    let mut reqs = pinned.join("\n");
    reqs.push('\n');
    let mut ctx = Context::new();
    ctx.add_bytes(
        "Dockerfile",
        env_dockerfile(&base, env, !pinned.is_empty(), uv.is_some()).as_bytes(),
        0o644,
    )
    .map_err(ctx_err)?;
    if let Some((wheel, _)) = &uv {
        let data = std::fs::read(wheel).map_err(|source| ImageError::Read {
            path: wheel.clone(),
            source,
        })?;
        ctx.add_bytes("uv/uv.whl", &data, 0o644).map_err(ctx_err)?;
    }
    ctx.add_bytes("requirements.txt", reqs.as_bytes(), 0o644)
        .map_err(ctx_err)?;
    ctx.add_tree(&wheelhouse, "wheels", &DockerIgnore::default())
        .map_err(ctx_err)?;
    let (bytes, _) = ctx.finish().map_err(ctx_err)?;
    let id = build(docker, bytes, &tag, &plan.project, "environment", ui).await?;
    record(&id)?;
    Ok(Built {
        tag,
        id,
        built: true,
    })
}

/// The pins for `lines` on `target`: from `ferry.lock` when it has them, else resolved now
/// (then the wheelhouse that resolution filled is returned too).
async fn python_pins(
    project: &Project,
    lines: &[String],
    source: Option<&std::path::Path>,
    extras: &[String],
    target: &PythonTarget,
    installer: Installer,
    ui: &Ui,
) -> Result<(PythonLock, Option<std::path::PathBuf>), ImageError> {
    let mut h = Sha256::new();
    for l in lines {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    let requirements = format!("sha256:{}", hex::encode(h.finalize()));
    let target_key = target.key();
    if lines.is_empty() {
        let none = PythonLock {
            requirements,
            target: target_key,
            packages: Vec::new(),
        };
        return Ok((none, None));
    }
    if let Some(p) = Lock::load(project)?.pins(&requirements, &target_key) {
        return Ok((p.clone(), None));
    }
    // A pyproject.toml is resolved by uv, a uv.lock exported pin for pin; their hashes are
    // checked against the wheels after the download (the notebook's requirements have none).
    let (fetch, locked) = match source.filter(|f| SourceKind::of(f) != SourceKind::Requirements) {
        Some(file) => {
            let (f, t) = (file.to_path_buf(), target.clone());
            let pinned = tokio::task::spawn_blocking(move || requirements::lines_for(&f, &t))
                .await
                .map_err(|e| ImageError::Context {
                    path: file.to_path_buf(),
                    source: std::io::Error::other(e.to_string()),
                })??;
            let (mut plain, hashes) = requirements::split_hashes(&pinned);
            plain.extend(extras.iter().cloned());
            (plain, Some((file.to_path_buf(), hashes)))
        }
        None => (lines.to_vec(), None),
    };
    let dir = download(&fetch, target, installer, ui).await?;
    let packages = lock::pins_of_wheelhouse(&dir).map_err(|source| ImageError::Read {
        path: dir.clone(),
        source,
    })?;
    if let Some((file, hashes)) = locked {
        for (name, allowed) in hashes {
            if let Some(p) = packages.iter().find(|p| p.name == name)
                && !allowed.contains(&p.sha256)
            {
                return Err(RequirementsError::HashMismatch {
                    file,
                    name,
                    wheel: p.wheel.clone(),
                    sha256: p.sha256.clone(),
                }
                .into());
            }
        }
    }
    let python = PythonLock {
        requirements,
        target: target_key,
        packages,
    };
    Ok((python, Some(dir)))
}

/// A wheelhouse for `lines` (resolving takes seconds: off the async threads). With uv as the
/// installer uv resolves too; with pip, pip does all of it, as before uv.
async fn download(
    lines: &[String],
    target: &PythonTarget,
    installer: Installer,
    ui: &Ui,
) -> Result<std::path::PathBuf, ImageError> {
    let (lines, target, ui) = (lines.to_vec(), target.clone(), ui.clone());
    let resolver = match installer {
        Installer::Uv => wheels::Resolver::Uv,
        Installer::Pip => wheels::Resolver::Pip,
    };
    tokio::task::spawn_blocking(move || {
        wheels::wheelhouse(&lines, &target, &cache_dir().join("wheels"), resolver, &ui)
    })
    .await
    .map_err(|e| ImageError::Context {
        path: cache_dir().join("wheels"),
        source: std::io::Error::other(e.to_string()),
    })?
    .map_err(ImageError::from)
}

/// uv's wheel for `target`, from the wheel cache (fetched by the host's pip once), and its
/// sha256.
async fn uv_wheel(
    target: &PythonTarget,
    ui: &Ui,
) -> Result<(std::path::PathBuf, String), ImageError> {
    let dir = download(&[format!("uv=={UV_VERSION}")], target, Installer::Uv, ui).await?;
    let wheel = std::fs::read_dir(&dir)
        .map_err(|source| ImageError::Read {
            path: dir.clone(),
            source,
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("uv-{UV_VERSION}-")) && n.ends_with(".whl"))
        })
        .ok_or_else(|| ImageError::NoUvWheel { dir: dir.clone() })?;
    let sha = crate::spec::sha256_file(&wheel).map_err(|source| ImageError::Read {
        path: wheel.clone(),
        source,
    })?;
    Ok((wheel, sha))
}

/// The Python a base image has, probed once per base image id.
async fn probe(docker: &Docker, base: &str, base_id: &str) -> Result<PythonTarget, ImageError> {
    let file = cache_dir()
        .join("targets")
        .join(format!("{}.json", base_id.trim_start_matches("sha256:")));
    if let Ok(text) = std::fs::read_to_string(&file)
        && let Ok(t) = serde_json::from_str::<PythonTarget>(&text)
    {
        return Ok(t);
    }
    let t = wheels::probe_target(docker, base).await?;
    if let Some(dir) = file.parent()
        && std::fs::create_dir_all(dir).is_ok()
        && let Ok(json) = serde_json::to_string(&t)
    {
        // A cache: failing to write it only costs a probe next time.
        let _ = std::fs::write(&file, json);
    }
    Ok(t)
}

/// Two stages so the wheels never land in a layer of the final image: the first installs them
/// into the virtualenv, the second copies only the virtualenv. With `uv`, uv's binary is taken
/// out of its wheel (Python's own zipfile, so the base needs nothing more) and installs the
/// same pins, hashes required, from the same local wheels, compiling bytecode as pip does.
fn env_dockerfile(base: &str, env: &EnvImage, hashes: bool, uv: bool) -> String {
    let apt = apt_step(env);
    let require_hashes = if hashes { " --require-hashes" } else { "" };
    let base_env: Vec<String> = venv::base_env()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let base_env = base_env.join(" ");
    let mut envs = String::new();
    for (k, v) in &env.env {
        envs.push_str(&format!("ENV {k}={}\n", json_string(v)));
    }
    let install = if uv {
        format!(
            "COPY uv/uv.whl /tmp/ferry/uv/uv.whl\n\
             RUN python3 -m zipfile -e /tmp/ferry/uv/uv.whl /tmp/ferry/uv/ && chmod 0755 /tmp/ferry/uv/uv-*.data/scripts/uv\n\
             RUN /tmp/ferry/uv/uv-*.data/scripts/uv pip install --python {VENV}/bin/python --offline --no-cache --no-index --link-mode copy --compile-bytecode --find-links /tmp/ferry/wheels{require_hashes} -r /tmp/ferry/requirements.txt\n"
        )
    } else {
        format!(
            "RUN {VENV}/bin/pip install --no-index --no-cache-dir --disable-pip-version-check --find-links /tmp/ferry/wheels{require_hashes} -r /tmp/ferry/requirements.txt\n"
        )
    };
    format!(
        "FROM {base} AS system\n\
         {apt}\
         RUN python3 -m venv {VENV}\n\
         \n\
         FROM system AS wheels\n\
         COPY requirements.txt /tmp/ferry/requirements.txt\n\
         COPY wheels/ /tmp/ferry/wheels/\n\
         {install}\
         \n\
         FROM system\n\
         COPY --from=wheels {VENV} {VENV}\n\
         ENV {base_env}\n\
         {envs}\
         WORKDIR {WORKDIR}\n"
    )
}

/// The `RUN` step that installs the spec's system packages (empty without any).
fn apt_step(env: &EnvImage) -> String {
    if env.apt_packages.is_empty() {
        return String::new();
    }
    format!(
        "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {} && rm -rf /var/lib/apt/lists/*\n",
        env.apt_packages.join(" ")
    )
}

/// The image the virtualenv goes on: the base, with the spec's system packages installed by a
/// classic build (tagged by its inputs, so it is built once) when there are any.
async fn system_image(
    docker: &Docker,
    base: &str,
    base_id: &str,
    env: &EnvImage,
    project: &str,
    ui: &Ui,
) -> Result<String, ImageError> {
    if env.apt_packages.is_empty() {
        return Ok(base_id.to_string());
    }
    let mut h = Sha256::new();
    for part in [RECIPE, base_id] {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    for p in &env.apt_packages {
        h.update(format!("apt {p}\n").as_bytes());
    }
    let tag = format!(
        "ferry/{project}-system:{}",
        &hex::encode(h.finalize())[..12]
    );
    if docker::image_id(docker, &tag).await?.is_some() {
        return Ok(tag);
    }
    let dockerfile = format!("FROM {base}\n{}", apt_step(env));
    let mut ctx = Context::new();
    let ctx_err = |source| ImageError::Context {
        path: std::path::PathBuf::from("Dockerfile"),
        source,
    };
    ctx.add_bytes("Dockerfile", dockerfile.as_bytes(), 0o644)
        .map_err(ctx_err)?;
    let (bytes, _) = ctx.finish().map_err(ctx_err)?;
    build(docker, bytes, &tag, project, "system", ui).await?;
    Ok(tag)
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// The project image: the environment image plus the code. Written by ferry and loaded (see
/// `code`); built the classic way where the engine cannot load it so.
pub async fn ensure_project_image(
    docker: &Docker,
    project: &Project,
    env: &Built,
    ui: &Ui,
) -> Result<Built, ImageError> {
    if code::written_here() && !code::containerd_store(docker).await {
        match code::ensure(docker, project, env, ui).await {
            Err(ImageError::LoadFailed { message, .. }) => ui.warn(format!(
                "the engine did not load the project image as written ({message}); building it instead"
            )),
            other => return other,
        }
    }
    build_project_image(docker, project, env, ui).await
}

/// The project image by a classic build of `FROM env` + `COPY`, tagged by the context's hash.
async fn build_project_image(
    docker: &Docker,
    project: &Project,
    env: &Built,
    ui: &Ui,
) -> Result<Built, ImageError> {
    let ignore = DockerIgnore::load(&project.root).map_err(|source| ImageError::Read {
        path: project.root.join(".dockerignore"),
        source,
    })?;
    let ctx_err = |source| ImageError::Context {
        path: project.root.clone(),
        source,
    };
    let mut ctx = Context::new();
    ctx.add_bytes(
        "Dockerfile",
        format!("FROM {}\nCOPY src/ {WORKDIR}/\n", env.tag).as_bytes(),
        0o644,
    )
    .map_err(ctx_err)?;
    ctx.add_tree(&project.root, "src", &ignore)
        .map_err(ctx_err)?;
    let (bytes, digest) = ctx.finish().map_err(ctx_err)?;
    let name = &project.spec.name;
    let tag = format!("ferry/{name}:{}", &digest[..12]);
    if let Some(id) = docker::image_id(docker, &tag).await? {
        code::record(project, &tag, &id)?;
        return Ok(Built {
            tag,
            id,
            built: false,
        });
    }
    let id = build(docker, bytes, &tag, name, "project", ui).await?;
    code::record(project, &tag, &id)?;
    code::untag_superseded(docker, project, &tag).await;
    Ok(Built {
        tag,
        id,
        built: true,
    })
}

/// Sends a context to the engine and follows the build, showing the step being run. `role`
/// labels the image (environment, project) beside its project.
pub(crate) async fn build(
    docker: &Docker,
    context: Vec<u8>,
    tag: &str,
    project: &str,
    role: &str,
    ui: &Ui,
) -> Result<String, ImageError> {
    let what = format!("{role} image");
    let step = ui.step(format!("building {what} {tag}"));
    let labels = HashMap::from([
        (LABEL_PROJECT.to_string(), project.to_string()),
        (LABEL_ROLE.to_string(), role.to_string()),
    ]);
    let opts = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(tag)
        .rm(true)
        .forcerm(true)
        .labels(&labels)
        .build();
    let trace = leftovers::build_started();
    let mut stream = docker.build_image(opts, None, Some(bollard::body_full(context.into())));
    let mut current = String::from("the first step");
    let mut id = None;
    // The classic builder keeps each earlier stage as an untagged image; for the environment
    // image that is a full copy of the virtualenv plus the wheels. Remember it to remove it.
    let mut last_layer: Option<String> = None;
    let mut stage_ends: Vec<String> = Vec::new();
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(i) => i,
            Err(e) => return Err(fail(step, tag, &current, build_error(e))),
        };
        if let Some(s) = &info.stream {
            for line in s.lines() {
                if line.starts_with("Step ") {
                    if line.contains(" : FROM ")
                        && let Some(l) = last_layer.take()
                    {
                        stage_ends.push(l);
                    }
                    trace.step(line);
                    current = line.to_string();
                    step.set_detail(line);
                } else if let Some(layer) = line.trim().strip_prefix("---> ") {
                    if !layer.contains(' ') {
                        trace.saw(layer);
                        last_layer = Some(layer.to_string());
                    }
                } else {
                    step.output_line(line);
                }
            }
        }
        if let Some(err) = info.error_detail.and_then(|d| d.message) {
            trace.stopped();
            return Err(fail(step, tag, &current, err));
        }
        if let Some(aux) = info.aux.and_then(|a| a.id) {
            id = Some(aux);
        }
    }
    let id = match id {
        Some(id) => id,
        None => docker::image_id(docker, tag).await?.unwrap_or_default(),
    };
    for stage in stage_ends {
        let opts = bollard::query_parameters::RemoveImageOptionsBuilder::default().build();
        // Best effort: a stage image still used by another build stays until its next run.
        let _ = docker.remove_image(&stage, Some(opts), None).await;
    }
    trace.finished();
    step.finish(format!("built {what} {tag}"));
    Ok(id)
}

fn build_error(e: bollard::errors::Error) -> String {
    match DockerError::api("sending the build context and following the build", e) {
        DockerError::Api { message, .. } => message,
        other => other.to_string(),
    }
}

fn fail(step: Step, tag: &str, current: &str, message: String) -> ImageError {
    let tail = step.tail();
    step.fail();
    ImageError::BuildFailed {
        tag: tag.to_string(),
        step: current.to_string(),
        message,
        tail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_orders_layers_and_keeps_wheels_out() {
        let env = EnvImage {
            base: Base::Image("python:3.11-slim".into()),
            apt_packages: vec!["libgomp1".into()],
            requirements: None,
            extra_requirements: vec![],
            env: [("A".to_string(), "b c".to_string())].into(),
        };
        for uv in [false, true] {
            let d = env_dockerfile("python:3.11-slim", &env, true, uv);
            assert!(d.contains("--require-hashes"), "{d}");
            let apt = d.find("apt-get install").unwrap();
            let pip = d.find("pip install").unwrap();
            let copy_venv = d.find("COPY --from=wheels").unwrap();
            assert!(apt < pip && pip < copy_venv);
            assert!(d.contains("ENV A=\"b c\""));
            // The final stage starts from `system`, which never saw the wheels nor uv.
            let last = d.rsplit("FROM ").next().unwrap();
            assert!(!last.contains("wheels/") && !last.contains("uv"), "{last}");
            // Whichever installs, nothing is taken from an index.
            let install = d.lines().find(|l| l.contains("pip install")).unwrap();
            assert!(install.contains("--no-index"), "{install}");
            assert_eq!(install.contains("scripts/uv pip install"), uv, "{install}");
        }
    }

    #[test]
    fn the_installer_is_uv_unless_pip_is_asked_for() {
        assert_eq!(Installer::parse(None).unwrap(), Installer::Uv);
        assert_eq!(Installer::parse(Some(" ")).unwrap(), Installer::Uv);
        assert_eq!(Installer::parse(Some("pip")).unwrap(), Installer::Pip);
        let e = Installer::parse(Some("conda")).unwrap_err().to_string();
        assert!(e.contains("\"conda\"") && e.contains("`uv`"), "{e}");
    }
}

//! The environment image's virtualenv, installed by uv into a directory on the host and loaded
//! into the engine as layers written by ferry, without a build.
//!
//! A classic build installs the wheels in a container, commits it, and copies the virtualenv
//! into the final stage; on storage drivers that diff naively (fuse-overlayfs, which rootless
//! engines use) every commit walks the whole virtualenv, and that walking was most of a build.
//! Here a short-lived container of the system image runs uv with the virtualenv's directory
//! bind-mounted from the host: the image's own Python creates it and compiles its bytecode, and
//! the interpreter lines of its scripts name the image's paths. Ferry then writes the layer (the
//! files as uv left them, owned by root) and the config, and loads them.
//!
//! The directory is kept, one per system image under the cache, with a record of the image it
//! matches. When the pins change, uv changes only what differs in it, and the new image is that
//! image plus one layer holding the difference (removed files as whiteouts): a one-line change
//! costs the packages it touches. After [`MAX_DIFFS`] such layers, or once they add up to half of
//! the full one, the next build starts again from an empty directory, so images do not grow
//! without bound with files that later layers hide.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read as _, Write};
use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, ImageInspect, Mount, MountType};
use bollard::query_parameters::CreateContainerOptionsBuilder;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::build::{ImageError, cache_dir};
use super::code::ImageConfig;
use super::context::Context;
use super::leftovers;
use super::serving::{ArchiveManifest, Hashed, RootFs};
use crate::docker::{self, DockerError, LABEL_PROJECT, LABEL_ROLE};
use crate::plan::{EnvImage, VENV, WORKDIR};
use crate::ui::{Ui, human_bytes};

/// Difference layers on top of a full one before the next build starts from scratch.
pub const MAX_DIFFS: usize = 8;

/// `FERRY_ENV_IMAGE=build` asks for the classic multi-stage build of the environment image
/// (`write`, the default, for the virtualenv installed on the host and loaded).
pub const MODE_ENV: &str = "FERRY_ENV_IMAGE";

/// uv's cache during an install: inside the virtualenv's directory, so that uv links the files
/// it unpacks instead of writing them twice; removed before the layer is written.
const UV_CACHE: &str = ".ferry-uv-cache";

/// The record of what a kept virtualenv directory holds.
const RECORD: &str = "record.json";

/// The variables every environment image sets, before the spec's own.
pub fn base_env() -> Vec<(String, String)> {
    [
        (
            "PATH",
            format!("{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        ),
        ("VIRTUAL_ENV", VENV.to_string()),
        ("PYTHONUNBUFFERED", "1".to_string()),
        ("HOME", "/tmp".to_string()),
        ("LANG", "C.UTF-8".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Whether the environment image is written here: asked for (the default), and the engine can
/// both mount a directory of this machine (it listens on a local socket) and load an archive
/// that names layers it already has (not containerd's image store).
pub async fn usable(docker: &Docker) -> bool {
    if std::env::var(MODE_ENV).is_ok_and(|v| v.trim() == "build") {
        return false;
    }
    local_socket(&docker::host()) && !super::code::containerd_store(docker).await
}

fn local_socket(host: &str) -> bool {
    host.starts_with("unix://") || host.starts_with("npipe://")
}

/// What to install, for which image.
pub struct Request<'a> {
    /// The tag the image gets.
    pub tag: &'a str,
    pub project: &'a str,
    /// The image the virtualenv goes on: the base with the system packages.
    pub system: &'a str,
    pub env: &'a EnvImage,
    /// Pinned requirement lines, with their hashes.
    pub pins: &'a [String],
    /// The wheels of the pins, and uv's own wheel for the image's platform (both needed when
    /// there are pins).
    pub wheelhouse: Option<&'a Path>,
    pub uv_wheel: Option<&'a Path>,
}

/// What the kept directory holds: the virtualenv of `image`, whose top layers are the
/// virtualenv's (one full layer, then `diffs` difference layers).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Record {
    image: String,
    layers: Vec<String>,
    diffs: usize,
    full_bytes: u64,
    diff_bytes: u64,
    pins: Vec<String>,
}

impl Record {
    /// Whether the next layer may be a difference on top of this one.
    fn takes_a_difference(&self) -> bool {
        self.diffs < MAX_DIFFS && self.diff_bytes.saturating_mul(2) < self.full_bytes
    }
}

/// Writes and loads the environment image for `req`; returns its ID.
pub async fn write_image(
    docker: &Docker,
    req: &Request<'_>,
    ui: &Ui,
) -> Result<String, ImageError> {
    let system = docker
        .inspect_image(req.system)
        .await
        .map_err(|e| DockerError::api(format!("inspecting {}", req.system), e))?;
    let system_id = system.id.clone().unwrap_or_default();
    let system_layers = layers_of(&system);
    let key: String = hex_of(&system_id).chars().take(16).collect();
    let dir = cache_dir().join("venvs").join(key);
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::VenvDir { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let _lock = lock_dir(&dir, ui).await?;

    // The kept directory is used only if it still matches an image the engine has.
    let venv = dir.join("venv");
    let record = read_record(&dir);
    let parent = match record {
        Some(r) if r.takes_a_difference() && venv.is_dir() => {
            match docker.inspect_image(&r.image).await {
                Ok(i) if layers_of(&i) == r.layers && r.layers.starts_with(&system_layers) => {
                    Some(r)
                }
                _ => None,
            }
        }
        _ => None,
    };
    // From here the directory no longer matches any image until a new record says so: a build
    // cut off here leaves no record, and the next one starts from scratch.
    let record_file = dir.join(RECORD);
    match std::fs::remove_file(&record_file) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&record_file)(e)),
        _ => {}
    }
    if parent.is_none() && venv.exists() {
        // Out of the way at once; deleting tens of thousands of files happens beside the build.
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let trash = dir.join(format!("trash-{}-{stamp}", std::process::id()));
        std::fs::rename(&venv, &trash).map_err(io_err(&venv))?;
    }
    empty_trash(&dir);
    std::fs::create_dir_all(&venv).map_err(io_err(&venv))?;
    let work = dir.join("work");
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(io_err(&work))?;
    }
    std::fs::create_dir_all(&work).map_err(io_err(&work))?;

    let before = match &parent {
        Some(_) => walk(&venv).map_err(io_err(&venv))?,
        None => BTreeMap::new(),
    };
    let removed: Vec<String> = match &parent {
        Some(p) => {
            let kept: BTreeSet<String> = req.pins.iter().filter_map(|l| pin_name(l)).collect();
            p.pins
                .iter()
                .filter_map(|l| pin_name(l))
                .filter(|n| !kept.contains(n))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        }
        None => Vec::new(),
    };
    let mut reqs = req.pins.join("\n");
    reqs.push('\n');
    let req_file = work.join("requirements.txt");
    std::fs::write(&req_file, reqs).map_err(io_err(&req_file))?;

    install(docker, req, &dir, &removed, parent.is_some(), ui).await?;

    let after = walk(&venv).map_err(io_err(&venv))?;
    let layer = Layer::between(&venv, &before, &after);
    let step = ui.step(format!("writing environment image {}", req.tag));
    let written = {
        let layer = layer.clone();
        tokio::task::spawn_blocking(move || layer.write(&mut io::sink()))
            .await
            .map_err(|e| ImageError::Write {
                what: "the environment image's virtualenv layer".into(),
                source: io::Error::other(e.to_string()),
            })?
    };
    let (diff_id, size) = match written {
        Ok(w) => w,
        Err(e) => {
            step.fail();
            return Err(e);
        }
    };
    let mut layers = match &parent {
        Some(p) => p.layers.clone(),
        None => system_layers.clone(),
    };
    layers.push(diff_id.clone());
    let config =
        env_config(&system, req.env, req.project, &layers).map_err(|e| ImageError::LoadFailed {
            tag: req.tag.to_string(),
            message: format!("cannot write the environment image's config: {e}"),
        })?;
    let tag = req.tag.to_string();
    let archive_layers = layers.clone();
    let loaded = super::load::stream_archive(docker, req.tag, &step, move |out| {
        write_archive(out, &tag, &layer, &diff_id, size, &config, &archive_layers)
    })
    .await;
    let id = match loaded {
        Ok(id) => id,
        Err(e) => {
            step.fail();
            return Err(e);
        }
    };
    let record = match parent {
        Some(p) => Record {
            image: id.clone(),
            layers,
            diffs: p.diffs + 1,
            full_bytes: p.full_bytes,
            diff_bytes: p.diff_bytes + size,
            pins: req.pins.to_vec(),
        },
        None => Record {
            image: id.clone(),
            layers,
            diffs: 0,
            full_bytes: size,
            diff_bytes: 0,
            pins: req.pins.to_vec(),
        },
    };
    let kind = if record.diffs == 0 {
        "the virtualenv".to_string()
    } else {
        format!("what changed in the virtualenv ({} layer)", record.diffs)
    };
    step.finish(format!(
        "wrote environment image {} ({} of {kind})",
        req.tag,
        human_bytes(size)
    ));
    write_record(&dir, &record);
    let _ = std::fs::remove_dir_all(&work);
    Ok(id)
}

/// Deletes earlier virtualenvs of `dir` on a thread of its own: best effort, what is left (a
/// process that ended first) goes the next time.
fn empty_trash(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let trash: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("trash-"))
        })
        .collect();
    if !trash.is_empty() {
        std::thread::spawn(move || {
            for t in trash {
                let _ = std::fs::remove_dir_all(t);
            }
        });
    }
}

/// Holds the directory against other ferry processes building on the same system image.
async fn lock_dir(dir: &Path, ui: &Ui) -> Result<File, ImageError> {
    let path = dir.join("lock");
    let file = File::create(&path).map_err(|source| ImageError::VenvDir {
        path: path.clone(),
        source,
    })?;
    match file.try_lock() {
        Ok(()) => return Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {}
        Err(std::fs::TryLockError::Error(source)) => {
            return Err(ImageError::VenvDir { path, source });
        }
    }
    let step = ui.step(format!(
        "waiting for another ferry building on the same base ({})",
        dir.display()
    ));
    let locked = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
        .await
        .map_err(|e| io::Error::other(e.to_string()))
        .and_then(|r| r);
    match locked {
        Ok(file) => {
            step.finish("the other build is done");
            Ok(file)
        }
        Err(source) => {
            step.fail();
            Err(ImageError::VenvDir { path, source })
        }
    }
}

fn read_record(dir: &Path) -> Option<Record> {
    let text = std::fs::read_to_string(dir.join(RECORD)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Best effort: without a record the next build starts from scratch, which costs time only.
fn write_record(dir: &Path, record: &Record) {
    let tmp = dir.join(format!("{RECORD}.tmp"));
    if let Ok(json) = serde_json::to_vec_pretty(record)
        && std::fs::write(&tmp, json).is_ok()
    {
        let _ = std::fs::rename(&tmp, dir.join(RECORD));
    }
}

/// The normalised name a pinned line installs (`Foo_Bar==1.0 --hash=…` → `foo-bar`).
fn pin_name(line: &str) -> Option<String> {
    let end = line
        .find(|c: char| "=<>!~;[ @".contains(c))
        .unwrap_or(line.len());
    let name = line[..end].trim();
    (!name.is_empty()).then(|| crate::lock::normalise(name))
}

/// Finds the pip wheel the image's Python bundles for `ensurepip` (Debian keeps it in
/// `WHEEL_PKG_DIR`, python.org builds in `ensurepip/_bundled`); prints nothing without one.
const BUNDLED_PIP: &str = r#"import ensurepip, glob, os, sysconfig
dirs = [sysconfig.get_config_var("WHEEL_PKG_DIR") or "", os.path.join(os.path.dirname(ensurepip.__file__), "_bundled")]
print(([""] + sorted(w for d in dirs if d for w in glob.glob(os.path.join(d, "pip-*.whl"))))[-1])"#;

/// The shell script the install container runs. With pins: uv taken out of its wheel (Python's
/// own zipfile, so the image needs nothing more); an empty directory made a virtualenv, with the
/// pip the image's Python bundles installed by uv (what `ensurepip` installs, without running
/// pip to install itself, which costs seconds); packages no longer pinned removed; the pins
/// installed from the local wheels, hashes required; then bytecode compiled for every module
/// but the packages' own test suites, which nothing imports at run time (a third of the files).
/// Compile errors are ignored as pip ignores them (some packages ship templates that are not
/// Python).
fn install_script(uv_wheel: Option<&str>, removed: &[String]) -> String {
    let mut s = String::from("set -e\ncd /tmp/ferry/work\nmkdir -p tmp\n");
    let Some(wheel) = uv_wheel else {
        s.push_str(&format!(
            "[ -x {VENV}/bin/python ] || python3 -m venv {VENV}\n"
        ));
        return s;
    };
    s.push_str(&format!(
        "python3 -m zipfile -e /tmp/ferry/uv/{wheel} uv\nset -- uv/uv-*.data/scripts/uv\nchmod 0755 \"$1\"\n"
    ));
    s.push_str(&format!(
        "if [ ! -x {VENV}/bin/python ]; then\n  python3 -m venv --without-pip {VENV}\n  pip_wheel=$(python3 -c '{BUNDLED_PIP}')\n  if [ -n \"$pip_wheel\" ]; then \"$1\" pip install --python {VENV}/bin/python --offline --no-index --link-mode copy \"$pip_wheel\"; else {VENV}/bin/python -m ensurepip --default-pip; fi\nfi\n"
    ));
    if !removed.is_empty() {
        s.push_str(&format!(
            "\"$1\" pip uninstall --python {VENV}/bin/python {}\n",
            removed.join(" ")
        ));
    }
    s.push_str(&format!(
        "\"$1\" pip install --python {VENV}/bin/python --offline --no-index --link-mode hardlink --find-links /tmp/ferry/wheels --require-hashes -r requirements.txt\n\
         rm -rf {VENV}/{UV_CACHE}\n\
         {VENV}/bin/python -m compileall -q -j 0 -x '/tests?/' {VENV}/lib >/dev/null || true\n"
    ));
    s
}

/// Runs the install in a container of the system image, with no network, the virtualenv's
/// directory mounted where the image expects it, and the files written as the directory's owner
/// (root on an engine that runs rootless, where that is the same user).
async fn install(
    docker: &Docker,
    req: &Request<'_>,
    dir: &Path,
    removed: &[String],
    incremental: bool,
    ui: &Ui,
) -> Result<(), ImageError> {
    let uv_name = req
        .uv_wheel
        .and_then(|w| w.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    let mut mounts = vec![
        bind(&dir.join("venv"), VENV, false),
        bind(&dir.join("work"), "/tmp/ferry/work", false),
    ];
    if let Some(w) = req.wheelhouse {
        mounts.push(bind(w, "/tmp/ferry/wheels", true));
    }
    if let Some(dir) = req.uv_wheel.and_then(Path::parent) {
        mounts.push(bind(dir, "/tmp/ferry/uv", true));
    }
    let user = if rootless(docker).await {
        None
    } else {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dir)
            .ok()
            .map(|m| format!("{}:{}", m.uid(), m.gid()))
    };
    let script = install_script(uv_name.as_deref(), removed);
    let body = ContainerCreateBody {
        image: Some(req.system.to_string()),
        entrypoint: Some(vec![]),
        cmd: Some(vec!["sh".into(), "-c".into(), script]),
        env: Some(vec![
            "HOME=/tmp/ferry/work".into(),
            "TMPDIR=/tmp/ferry/work/tmp".into(),
            "LANG=C.UTF-8".into(),
            "UV_NO_PROGRESS=1".into(),
            format!("UV_CACHE_DIR={VENV}/{UV_CACHE}"),
        ]),
        user,
        network_disabled: Some(true),
        labels: Some(
            [
                (LABEL_PROJECT.to_string(), req.project.to_string()),
                (LABEL_ROLE.to_string(), "environment-install".to_string()),
            ]
            .into(),
        ),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            mounts: Some(mounts),
            ..Default::default()
        }),
        ..Default::default()
    };
    let what = match (req.pins.len(), incremental) {
        (0, _) => "making the virtualenv".to_string(),
        (n, false) => format!("installing {n} packages with uv"),
        (_, true) => "installing what changed with uv".to_string(),
    };
    let step = ui.step(what.clone());
    let name = leftovers::helper_name("install");
    let registered = leftovers::container_created(&name);
    let opts = CreateContainerOptionsBuilder::new().name(&name).build();
    let id = match docker.create_container(Some(opts), body).await {
        Ok(created) => created.id,
        Err(e) => {
            registered.remove(docker).await;
            step.fail();
            return Err(DockerError::api("creating the install container", e).into());
        }
    };
    let ran = async {
        docker
            .start_container(&id, None)
            .await
            .map_err(|e| DockerError::api("starting the install container", e))?;
        docker::follow_logs(docker, &id, |line| step.output_line(line)).await?;
        docker::wait_exit(docker, &id).await
    }
    .await;
    registered.remove(docker).await;
    let exit = match ran {
        Ok(exit) => exit,
        Err(e) => {
            step.fail();
            return Err(e.into());
        }
    };
    if exit.code != 0 {
        let tail = step.tail();
        step.fail();
        return Err(ImageError::BuildFailed {
            tag: req.tag.to_string(),
            step: what,
            message: exit.describe("the Docker engine's memory"),
            tail,
        });
    }
    step.finish(format!("{what}: done"));
    Ok(())
}

fn bind(host: &Path, target: &str, read_only: bool) -> Mount {
    Mount {
        target: Some(target.to_string()),
        source: Some(host.to_string_lossy().into_owned()),
        typ: Some(MountType::BIND),
        read_only: Some(read_only),
        ..Default::default()
    }
}

async fn rootless(docker: &Docker) -> bool {
    docker.info().await.is_ok_and(|i| {
        i.security_options
            .iter()
            .flatten()
            .any(|o| o.contains("rootless"))
    })
}

fn layers_of(image: &ImageInspect) -> Vec<String> {
    image
        .root_fs
        .as_ref()
        .and_then(|r| r.layers.clone())
        .unwrap_or_default()
}

fn hex_of(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

/// What a path in the virtualenv is, as far as a layer cares.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Meta {
    kind: Kind,
    mode: u32,
    size: u64,
    mtime: (i64, i64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Link(PathBuf),
}

/// Every directory, file and symlink under `root`, by path relative to it (other kinds, which
/// uv never makes, are left out).
fn walk(root: &Path) -> io::Result<BTreeMap<String, Meta>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let m = std::fs::symlink_metadata(&path)?;
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                stack.push((path.clone(), rel.clone()));
                Kind::Dir
            } else if ft.is_file() {
                Kind::File
            } else if ft.is_symlink() {
                Kind::Link(std::fs::read_link(&path)?)
            } else {
                continue;
            };
            out.insert(
                rel,
                Meta {
                    kind,
                    mode: m.mode() & 0o7777,
                    size: if ft.is_file() { m.size() } else { 0 },
                    mtime: (m.mtime(), m.mtime_nsec()),
                },
            );
        }
    }
    Ok(out)
}

/// A layer of the virtualenv: what `after` has that `before` did not (or had otherwise), and a
/// whiteout for each topmost path `before` had and `after` does not.
#[derive(Clone, Debug)]
struct Layer {
    root: PathBuf,
    entries: Vec<(String, Meta)>,
    whiteouts: Vec<String>,
}

impl Layer {
    fn between(
        root: &Path,
        before: &BTreeMap<String, Meta>,
        after: &BTreeMap<String, Meta>,
    ) -> Layer {
        let entries = after
            .iter()
            .filter(|(p, m)| before.get(*p) != Some(m))
            .map(|(p, m)| (p.clone(), m.clone()))
            .collect();
        let gone = |p: &str| !after.contains_key(p);
        let whiteouts = before
            .keys()
            .filter(|p| gone(p))
            // Under a directory that went too, that directory's whiteout hides it.
            .filter(|p| p.rsplit_once('/').is_none_or(|(parent, _)| !gone(parent)))
            .cloned()
            .collect();
        Layer {
            root: root.to_path_buf(),
            entries,
            whiteouts,
        }
    }

    /// Writes the layer's tar to `w`; returns its diff ID and size. Files keep their times
    /// (the bytecode next to them records them) and are owned by root.
    fn write(&self, w: &mut dyn Write) -> Result<(String, u64), ImageError> {
        let err = |source| ImageError::Write {
            what: "the environment image's virtualenv layer".into(),
            source,
        };
        let mut hashed = Hashed {
            inner: w,
            hash: Sha256::new(),
            len: 0,
        };
        let prefix = VENV.trim_start_matches('/');
        let mut tar = tar::Builder::new(&mut hashed);
        let mut items: Vec<(String, Option<&Meta>)> = self
            .entries
            .iter()
            .map(|(p, m)| (p.clone(), Some(m)))
            .chain(self.whiteouts.iter().map(|p| {
                let wh = match p.rsplit_once('/') {
                    Some((dir, name)) => format!("{dir}/.wh.{name}"),
                    None => format!(".wh.{p}"),
                };
                (wh, None)
            }))
            .collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        for (rel, meta) in items {
            let name = format!("{prefix}/{rel}");
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            match meta {
                None => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_mtime(0);
                    h.set_size(0);
                    tar.append_data(&mut h, &name, io::empty()).map_err(err)?;
                }
                Some(m) => {
                    h.set_mode(m.mode);
                    h.set_mtime(u64::try_from(m.mtime.0).unwrap_or(0));
                    match &m.kind {
                        Kind::Dir => {
                            h.set_entry_type(tar::EntryType::Directory);
                            h.set_size(0);
                            tar.append_data(&mut h, format!("{name}/"), io::empty())
                                .map_err(err)?;
                        }
                        Kind::File => {
                            let path = self.root.join(&rel);
                            let file = File::open(&path).map_err(err)?;
                            h.set_entry_type(tar::EntryType::Regular);
                            h.set_size(m.size);
                            tar.append_data(&mut h, &name, file.take(m.size))
                                .map_err(err)?;
                        }
                        Kind::Link(target) => {
                            h.set_entry_type(tar::EntryType::Symlink);
                            h.set_size(0);
                            tar.append_link(&mut h, &name, target).map_err(err)?;
                        }
                    }
                }
            }
        }
        tar.into_inner().map_err(err)?;
        Ok((
            format!("sha256:{}", hex::encode(hashed.hash.finalize())),
            hashed.len,
        ))
    }
}

/// The environment image's config: the system image's, with the virtualenv's variables and the
/// spec's, the working directory, the project's labels, and `layers`.
fn env_config(
    system: &ImageInspect,
    env: &EnvImage,
    project: &str,
    layers: &[String],
) -> serde_json::Result<Vec<u8>> {
    let mut run = match &system.config {
        Some(c) => serde_json::to_value(c)?,
        None => json!({}),
    };
    if !run.is_object() {
        run = json!({});
    }
    let mut vars: Vec<(String, String)> = base_env();
    vars.extend(env.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let set: BTreeSet<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
    let mut list: Vec<Value> = run["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|e| !set.contains(e.split('=').next().unwrap_or("")))
        .map(|e| json!(e))
        .collect();
    list.extend(vars.iter().map(|(k, v)| json!(format!("{k}={v}"))));
    run["Env"] = json!(list);
    run["WorkingDir"] = json!(WORKDIR);
    if !run["Labels"].is_object() {
        run["Labels"] = json!({});
    }
    run["Labels"][LABEL_PROJECT] = json!(project);
    run["Labels"][LABEL_ROLE] = json!("environment");
    let config = ImageConfig {
        architecture: system
            .architecture
            .clone()
            .unwrap_or_else(|| "amd64".into()),
        config: run,
        created: system
            .created
            .clone()
            .unwrap_or_else(|| "1970-01-01T00:00:00Z".into()),
        os: system.os.clone().unwrap_or_else(|| "linux".into()),
        rootfs: RootFs {
            kind: "layers",
            diff_ids: layers.to_vec(),
        },
        variant: system.variant.clone().filter(|v| !v.is_empty()),
    };
    serde_json::to_vec(&config)
}

/// The archive the engine loads: the new layer (written a second time, straight into the
/// archive), the config, and a manifest naming every layer, the others by paths the archive
/// does not hold (the engine has them). The manifest goes last, so an archive cut short is
/// never taken for a whole one.
fn write_archive(
    out: &mut dyn Write,
    tag: &str,
    layer: &Layer,
    diff_id: &str,
    size: u64,
    config: &[u8],
    layers: &[String],
) -> Result<(), ImageError> {
    let err = |source| ImageError::Write {
        what: format!("the image archive of {tag}"),
        source,
    };
    let mut tar = Context::to_writer(out);
    let name = format!("{}/layer.tar", hex_of(diff_id));
    tar.add_dir(hex_of(diff_id), 0o755).map_err(err)?;
    let mut written = Ok((String::new(), 0));
    tar.add_written(&name, size, 0o644, |w| {
        written = layer.write(w);
        written
            .as_ref()
            .map(|_| ())
            .map_err(|e| io::Error::other(e.to_string()))
    })
    .map_err(|e| match &written {
        Err(_) => ImageError::Write {
            what: format!("the image archive of {tag}"),
            source: io::Error::other(e.to_string()),
        },
        Ok(_) => err(e),
    })?;
    match written {
        Ok((again, _)) if again == diff_id => {}
        Ok(_) => {
            return Err(err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the virtualenv changed while the image was written; run the command again",
            )));
        }
        Err(e) => return Err(e),
    }
    let config_name = format!("{}.json", hex::encode(Sha256::digest(config)));
    tar.add_bytes(&config_name, config, 0o644).map_err(err)?;
    let manifest = [ArchiveManifest {
        config: config_name,
        repo_tags: vec![tag.to_string()],
        layers: layers
            .iter()
            .map(|d| format!("{}/layer.tar", hex_of(d)))
            .collect(),
    }];
    let manifest = serde_json::to_vec(&manifest).map_err(|e| err(e.into()))?;
    tar.add_bytes("manifest.json", &manifest, 0o644)
        .map_err(err)?;
    tar.into_inner().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entries(bytes: &[u8]) -> Vec<(String, tar::EntryType, u32, Vec<u8>)> {
        let mut a = tar::Archive::new(bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().to_string_lossy().into_owned();
                let (kind, mode) = (e.header().entry_type(), e.header().mode().unwrap());
                assert_eq!(
                    (e.header().uid().unwrap(), e.header().gid().unwrap()),
                    (0, 0)
                );
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (path, kind, mode, data)
            })
            .collect()
    }

    fn layer_bytes(layer: &Layer) -> (Vec<u8>, String) {
        let mut out = Vec::new();
        let (diff_id, size) = layer.write(&mut out).unwrap();
        assert_eq!(size, out.len() as u64);
        (out, diff_id)
    }

    #[test]
    fn a_full_layer_holds_the_virtualenv_under_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/tool"), "#!/opt/venv/bin/python\n").unwrap();
        std::fs::set_permissions(
            root.join("bin/tool"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("/usr/bin/python3", root.join("bin/python")).unwrap();
        std::fs::write(root.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
        let after = walk(root).unwrap();
        let layer = Layer::between(root, &BTreeMap::new(), &after);
        let (bytes, diff_id) = layer_bytes(&layer);
        assert_eq!(
            diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
        );
        let got = entries(&bytes);
        let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "opt/venv/bin/",
                "opt/venv/bin/python",
                "opt/venv/bin/tool",
                "opt/venv/pyvenv.cfg"
            ]
        );
        assert_eq!(got[2].2, 0o755);
        assert_eq!(got[2].3, b"#!/opt/venv/bin/python\n");
        assert_eq!(got[1].1, tar::EntryType::Symlink);
        // The same files give the same bytes: the archive writes the layer a second time.
        assert_eq!(layer_bytes(&layer).0, bytes);
    }

    #[test]
    fn a_difference_holds_what_changed_and_whiteouts_for_what_went() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let sp = root.join("lib/site-packages");
        for d in ["old/sub", "old-1.0.dist-info", "keep", "bump"] {
            std::fs::create_dir_all(sp.join(d)).unwrap();
        }
        std::fs::write(sp.join("old/sub/a.py"), "a").unwrap();
        std::fs::write(sp.join("keep/k.py"), "k").unwrap();
        std::fs::write(sp.join("bump/b.py"), "1").unwrap();
        std::fs::write(sp.join("bump/gone.py"), "g").unwrap();
        let before = walk(root).unwrap();

        std::fs::remove_dir_all(sp.join("old")).unwrap();
        std::fs::remove_dir_all(sp.join("old-1.0.dist-info")).unwrap();
        std::fs::remove_file(sp.join("bump/gone.py")).unwrap();
        std::fs::write(sp.join("bump/b.py"), "22").unwrap();
        std::fs::create_dir_all(sp.join("new")).unwrap();
        std::fs::write(sp.join("new/n.py"), "n").unwrap();
        let after = walk(root).unwrap();

        let layer = Layer::between(root, &before, &after);
        let names: Vec<String> = entries(&layer_bytes(&layer).0)
            .into_iter()
            .map(|e| e.0)
            .collect();
        let p = "opt/venv/lib/site-packages";
        for want in [
            format!("{p}/.wh.old"),
            format!("{p}/.wh.old-1.0.dist-info"),
            format!("{p}/bump/.wh.gone.py"),
            format!("{p}/bump/b.py"),
            format!("{p}/new/"),
            format!("{p}/new/n.py"),
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        // Nothing under a removed directory, nothing unchanged.
        assert!(!names.iter().any(|n| n.contains("old/sub")), "{names:?}");
        assert!(!names.iter().any(|n| n.ends_with("k.py")), "{names:?}");
    }

    #[test]
    fn pinned_lines_name_their_package() {
        assert_eq!(
            pin_name("Foo_Bar==1.0 --hash=sha256:ab").as_deref(),
            Some("foo-bar")
        );
        assert_eq!(pin_name("numpy==2.4.6").as_deref(), Some("numpy"));
        assert_eq!(pin_name("pkg[extra]==1").as_deref(), Some("pkg"));
        assert_eq!(pin_name("").as_deref(), None);
    }

    #[test]
    fn the_script_removes_what_is_no_longer_pinned_and_installs_offline_with_hashes() {
        let s = install_script(Some("uv-0.13.9-py3-none-manylinux.whl"), &["tqdm".into()]);
        assert!(
            s.contains("python3 -m zipfile -e /tmp/ferry/uv/uv-0.13.9-py3-none-manylinux.whl uv"),
            "{s}"
        );
        let uninstall = s
            .find("pip uninstall --python /opt/venv/bin/python tqdm")
            .unwrap();
        let install = s.find("--find-links /tmp/ferry/wheels").unwrap();
        assert!(uninstall < install, "{s}");
        let line = s.lines().find(|l| l.contains("--find-links")).unwrap();
        for flag in ["--offline", "--no-index", "--require-hashes"] {
            assert!(line.contains(flag), "{flag}: {line}");
        }
        // A new virtualenv gets the image's own pip, installed by uv; bytecode comes last.
        assert!(s.contains("python3 -m venv --without-pip /opt/venv"), "{s}");
        assert!(s.find("pip_wheel").unwrap() < install, "{s}");
        let compile = s.find("-m compileall").unwrap();
        assert!(
            compile > install && s[compile..].contains("-x '/tests?/'"),
            "{s}"
        );
        // Without pins only the virtualenv is made.
        let s = install_script(None, &[]);
        assert!(
            s.contains("python3 -m venv /opt/venv") && !s.contains("uv"),
            "{s}"
        );
    }

    #[test]
    fn differences_stop_at_a_bound() {
        let mut r = Record {
            image: "sha256:1".into(),
            layers: vec![],
            diffs: 0,
            full_bytes: 1000,
            diff_bytes: 0,
            pins: vec![],
        };
        assert!(r.takes_a_difference());
        r.diffs = MAX_DIFFS;
        assert!(!r.takes_a_difference());
        r.diffs = 1;
        r.diff_bytes = 500;
        assert!(!r.takes_a_difference());
    }

    #[test]
    fn the_config_sets_the_virtualenv_and_the_specs_variables_over_the_systems() {
        let system = ImageInspect {
            id: Some("sha256:5y5".into()),
            architecture: Some("arm64".into()),
            os: Some("linux".into()),
            created: Some("2026-01-01T00:00:00Z".into()),
            config: Some(bollard::models::ImageConfig {
                env: Some(vec!["PATH=/usr/bin".into(), "KEEP=1".into()]),
                cmd: Some(vec!["python3".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let env = EnvImage {
            base: crate::plan::Base::Image("b".into()),
            apt_packages: vec![],
            requirements: None,
            extra_requirements: vec![],
            env: [("A".to_string(), "b c".to_string())].into(),
        };
        let bytes = env_config(
            &system,
            &env,
            "churn",
            &["sha256:l1".into(), "sha256:l2".into()],
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let vars: Vec<&str> = v["config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert!(
            vars.contains(&"KEEP=1") && vars.contains(&"A=b c"),
            "{vars:?}"
        );
        assert!(vars.contains(&"VIRTUAL_ENV=/opt/venv"), "{vars:?}");
        let paths: Vec<&&str> = vars.iter().filter(|e| e.starts_with("PATH=")).collect();
        assert_eq!(paths.len(), 1, "{vars:?}");
        assert!(paths[0].starts_with("PATH=/opt/venv/bin:"), "{vars:?}");
        assert_eq!(v["config"]["WorkingDir"], WORKDIR);
        assert_eq!(v["config"]["Cmd"][0], "python3");
        assert_eq!(v["config"]["Labels"][LABEL_PROJECT], "churn");
        assert_eq!(v["config"]["Labels"][LABEL_ROLE], "environment");
        assert_eq!(v["architecture"], "arm64");
        assert_eq!(v["created"], "2026-01-01T00:00:00Z");
        assert_eq!(v["rootfs"]["diff_ids"][1], "sha256:l2");
    }

    #[tokio::test]
    async fn a_directory_that_cannot_be_used_is_named_with_where_to_look() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the directory should be.
        let blocked = dir.path().join("venvs");
        std::fs::write(&blocked, "").unwrap();
        let err = lock_dir(&blocked, &Ui::silent())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("venvs/lock") && err.contains("FERRY_CACHE_DIR"),
            "{err}"
        );
    }

    #[test]
    fn only_a_local_socket_can_mount_the_virtualenv() {
        assert!(local_socket("unix:///var/run/docker.sock"));
        assert!(!local_socket("tcp://10.0.0.1:2376"));
        assert!(!local_socket("ssh://me@host"));
    }
}

//! A wheelhouse resolved on the host, for images built where the container cannot reach a
//! package index.
//!
//! The host's pip resolves the requirements for the *image's* interpreter (its Python version,
//! glibc and architecture, probed from the image) and downloads binary wheels only; the image
//! build then installs them with `pip install --no-index`. Results are cached by their inputs.

use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ui::Ui;

mod dists;
mod index;
mod uv;
mod version;

pub use index::{NoWheel, UnknownVersion};
pub use uv::find as find_uv;

/// Written last into a finished wheelhouse; a directory without it is never used.
pub const COMPLETE_MARKER: &str = ".ferry-complete";

/// Bump when the way wheels are chosen changes, so old wheelhouses stop matching.
const CACHE_VERSION: &str = "1";

/// How many of pip's last lines a failure report quotes.
const FAILURE_TAIL: usize = 15;

/// Oldest glibc any manylinux tag stands for (`manylinux1` = glibc 2.5).
const OLDEST_GLIBC_MINOR: u32 = 5;

/// Prints the interpreter, C library and machine of an image as one JSON line.
const PROBE_SCRIPT: &str = "import json, platform, sys; print(json.dumps({\
'version': '%d.%d' % sys.version_info[:2], \
'libc': list(platform.libc_ver()), \
'machine': platform.machine()}))";

#[derive(Debug, thiserror::Error)]
pub enum WheelsError {
    #[error(
        "no Python 3 with pip on this machine; ferry downloads wheels with the host's pip: install \
         python3 and pip (e.g. `sudo apt-get install python3-pip`)"
    )]
    PythonNotFound,
    #[error("no package `{package}` on the package index{}\n  hint: {}",
        suggestion.as_ref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_default(),
        unknown_package_hint(suggestion.is_some(), *listed, index))]
    UnknownPackage {
        package: String,
        /// The closest name the index lists.
        suggestion: Option<String>,
        /// Whether the index's project list was read (so "nothing close" is known).
        listed: bool,
        /// Where pip looked (credentials redacted).
        index: String,
    },
    #[error("{0}")]
    UnknownVersion(Box<UnknownVersion>),
    #[error("{0}")]
    NoWheel(Box<NoWheel>),
    #[error(
        "pip found no wheel of `{package}` for Python {python} on {platform}, and the package \
         index could not be asked why: {why}\n  hint: check the name and version in the \
         requirements file; ferry installs only binary wheels offline, so the version must ship \
         manylinux wheels for Python {python}"
    )]
    NotFound {
        package: String,
        python: String,
        platform: String,
        why: String,
    },
    #[error("pip failed to download the wheels ({status}):\n{}", tail.join("\n"))]
    PipFailed { status: String, tail: Vec<String> },
    #[error("could not probe Python in image {image}: {message}")]
    Probe { image: String, message: String },
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn unknown_package_hint(suggested: bool, listed: bool, index: &str) -> String {
    match (suggested, listed) {
        (true, _) => format!("correct the name in the requirements file (pip's index: {index})"),
        (false, true) => format!(
            "check the name in the requirements file: nothing on pip's index ({index}) is \
             close to it"
        ),
        (false, false) => format!("check the name in the requirements file (pip's index: {index})"),
    }
}

impl WheelsError {
    fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| WheelsError::Io {
            action,
            path,
            source,
        }
    }
}

/// The interpreter wheels are chosen for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonTarget {
    /// "3.11"
    pub version: String,
    /// Every platform tag the image accepts, e.g. `manylinux_2_36_x86_64` down to
    /// `manylinux1_x86_64`: pip does not expand a custom `--platform` to older glibc versions.
    pub platforms: Vec<String>,
}

impl PythonTarget {
    /// `cp311-manylinux_2_36_x86_64`: the interpreter and the newest platform, which decide
    /// which wheels a resolution picks.
    pub fn key(&self) -> String {
        format!(
            "{}-{}",
            self.abi(),
            self.platforms.first().map(String::as_str).unwrap_or("any")
        )
    }

    /// `cp311` for "3.11".
    pub fn abi(&self) -> String {
        format!("cp{}", self.version.replace('.', ""))
    }
}

/// The host's Python with pip, and what its environment differs in from ferry's: pip reads its
/// index, find-links and certificates from the environment and its config files, so the same
/// settings reach `pip download` and the index query that explains a failure.
#[derive(Debug, Clone)]
pub struct Pip {
    python: PathBuf,
    env: Vec<(String, Option<String>)>,
}

impl Pip {
    /// `python3` (or `python`, if that is a Python 3) with a working pip.
    pub fn find() -> Result<Pip, WheelsError> {
        for name in ["python3", "python"] {
            let ok = Command::new(name)
                .args([
                    "-c",
                    "import sys, pip; sys.exit(0 if sys.version_info[0] == 3 else 1)",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(Pip {
                    python: PathBuf::from(name),
                    env: Vec::new(),
                });
            }
        }
        Err(WheelsError::PythonNotFound)
    }

    /// Sets `key` for every pip this runs, or with `None` unsets it (e.g. `PIP_INDEX_URL`).
    pub fn env(mut self, key: &str, value: Option<&str>) -> Pip {
        self.env.push((key.to_string(), value.map(str::to_string)));
        self
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.python);
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd
    }
}

#[derive(Deserialize)]
struct ProbeOutput {
    version: String,
    libc: (String, String),
    machine: String,
}

/// Probes `image` for its Python version and the wheel platforms it accepts, in a short-lived
/// container with no network.
pub async fn probe_target(docker: &Docker, image: &str) -> Result<PythonTarget, WheelsError> {
    let probe_err = |message: String| WheelsError::Probe {
        image: image.to_string(),
        message,
    };
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec![
            "python3".to_string(),
            "-c".to_string(),
            PROBE_SCRIPT.to_string(),
        ]),
        // The image's own entrypoint (if any) must not wrap the probe.
        entrypoint: Some(vec![]),
        network_disabled: Some(true),
        host_config: Some(HostConfig {
            network_mode: Some("none".to_string()),
            ..Default::default()
        }),
        ..Default::default()
    };
    // Cut off by Ctrl-C, the container is removed by the CLI on its way out.
    let name = super::leftovers::helper_name("probe");
    let registered = super::leftovers::container_created(&name);
    let opts = CreateContainerOptionsBuilder::new().name(&name).build();
    let id = match docker.create_container(Some(opts), body).await {
        Ok(created) => created.id,
        Err(e) => {
            registered.remove(docker).await;
            return Err(e.into());
        }
    };

    let result = run_probe(docker, &id).await;
    registered.remove(docker).await;

    let (code, output) = result?;
    if code != 0 {
        return Err(probe_err(format!(
            "`python3` exited with code {code}: {}",
            output.trim()
        )));
    }
    let line = output
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| probe_err(format!("unexpected output: {}", output.trim())))?;
    let probed: ProbeOutput = serde_json::from_str(line)
        .map_err(|e| probe_err(format!("unexpected output {line:?}: {e}")))?;
    target_from_probe(&probed).map_err(probe_err)
}

/// Starts the probe container and returns its exit code and combined output.
async fn run_probe(docker: &Docker, id: &str) -> Result<(i64, String), WheelsError> {
    docker.start_container(id, None).await?;
    let mut wait = docker.wait_container(id, Some(WaitContainerOptionsBuilder::new().build()));
    let mut code = 0;
    while let Some(item) = wait.next().await {
        match item {
            Ok(r) => code = r.status_code,
            // bollard reports a non-zero exit as an error; the output says why.
            Err(bollard::errors::Error::DockerContainerWaitError { code: c, .. }) => code = c,
            Err(e) => return Err(e.into()),
        }
    }
    let mut logs = docker.logs(
        id,
        Some(LogsOptionsBuilder::new().stdout(true).stderr(true).build()),
    );
    let mut output = String::new();
    while let Some(chunk) = logs.next().await {
        output.push_str(&String::from_utf8_lossy(&chunk?.into_bytes()));
    }
    Ok((code, output))
}

fn target_from_probe(p: &ProbeOutput) -> Result<PythonTarget, String> {
    let (libc, libc_version) = (&p.libc.0, &p.libc.1);
    if libc != "glibc" {
        return Err(format!(
            "its C library is {:?}, not glibc; offline wheels need a glibc-based (e.g. Debian) image",
            if libc.is_empty() { "unknown" } else { libc }
        ));
    }
    let mut parts = libc_version.split('.');
    let major: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    if major != 2 || minor < OLDEST_GLIBC_MINOR {
        return Err(format!("unsupported glibc version {libc_version:?}"));
    }
    let valid_version = p
        .version
        .split_once('.')
        .is_some_and(|(a, b)| a == "3" && !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()));
    if !valid_version {
        return Err(format!("unexpected Python version {:?}", p.version));
    }
    Ok(PythonTarget {
        version: p.version.clone(),
        platforms: manylinux_platforms(minor, &p.machine),
    })
}

/// All manylinux tags a glibc 2.`minor` system on `machine` accepts, newest first: pip takes a
/// custom `--platform manylinux_2_36_x86_64` literally, so every older one is listed, plus the
/// legacy aliases (`manylinux2014` = 2.17, `manylinux2010` = 2.12, `manylinux1` = 2.5) that some
/// wheels carry as their only tag.
fn manylinux_platforms(minor: u32, machine: &str) -> Vec<String> {
    let arch: String = machine
        .chars()
        .map(|c| if c == '-' || c == '.' { '_' } else { c })
        .collect();
    let mut tags: Vec<String> = (OLDEST_GLIBC_MINOR..=minor)
        .rev()
        .map(|m| format!("manylinux_2_{m}_{arch}"))
        .collect();
    let legacy_2014 = [
        "x86_64", "i686", "aarch64", "armv7l", "ppc64", "ppc64le", "s390x",
    ];
    if minor >= 17 && legacy_2014.contains(&arch.as_str()) {
        tags.push(format!("manylinux2014_{arch}"));
    }
    if ["x86_64", "i686"].contains(&arch.as_str()) {
        if minor >= 12 {
            tags.push(format!("manylinux2010_{arch}"));
        }
        tags.push(format!("manylinux1_{arch}"));
    }
    tags
}

/// The cache key of a wheelhouse: the requirement lines as given and the target.
fn cache_key(requirements: &[String], target: &PythonTarget) -> String {
    let mut h = Sha256::new();
    h.update(b"ferry-wheels\0");
    h.update(CACHE_VERSION.as_bytes());
    h.update(b"\0python\0");
    h.update(target.version.as_bytes());
    for p in &target.platforms {
        h.update(b"\0platform\0");
        h.update(p.as_bytes());
    }
    for r in requirements {
        h.update(b"\0requirement\0");
        h.update(r.trim().as_bytes());
    }
    hex::encode(h.finalize())
}

/// Who resolves and fetches a wheelhouse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolver {
    /// uv resolves, the wheels are fetched several at a time (see `uv`); pip where uv is
    /// missing or cannot.
    Uv,
    /// `pip download` alone.
    Pip,
}

/// Downloads binary wheels for `requirements` (requirements.txt lines) and their dependencies,
/// for `target`, into `cache_root/<key>`; an existing complete wheelhouse is reused.
pub fn wheelhouse(
    requirements: &[String],
    target: &PythonTarget,
    cache_root: &Path,
    resolver: Resolver,
    ui: &Ui,
) -> Result<PathBuf, WheelsError> {
    let dest = cache_root.join(cache_key(requirements, target));
    if dest.join(COMPLETE_MARKER).is_file() {
        return Ok(dest);
    }
    make(
        &Pip::find()?,
        requirements,
        target,
        cache_root,
        resolver,
        ui,
    )
}

/// [`wheelhouse`] with a given pip, which resolves. A requirement pip finds nothing for is
/// explained by asking pip's index: no such package, no such version, or no wheel for `target`.
pub fn wheelhouse_with(
    pip: &Pip,
    requirements: &[String],
    target: &PythonTarget,
    cache_root: &Path,
    ui: &Ui,
) -> Result<PathBuf, WheelsError> {
    make(pip, requirements, target, cache_root, Resolver::Pip, ui)
}

fn make(
    pip: &Pip,
    requirements: &[String],
    target: &PythonTarget,
    cache_root: &Path,
    resolver: Resolver,
    ui: &Ui,
) -> Result<PathBuf, WheelsError> {
    let dest = cache_root.join(cache_key(requirements, target));
    if dest.join(COMPLETE_MARKER).is_file() {
        return Ok(dest);
    }
    std::fs::create_dir_all(cache_root).map_err(WheelsError::io("creating", cache_root))?;

    // In the cache root, so the finished directory can be renamed into place atomically.
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempdir_in(cache_root)
        .map_err(WheelsError::io("creating a directory in", cache_root))?;
    // Outside the download dir, which must hold nothing but wheels.
    let mut req_file = tempfile::Builder::new()
        .prefix("ferry-requirements-")
        .suffix(".txt")
        .tempfile()
        .map_err(WheelsError::io("creating", std::env::temp_dir()))?;
    let mut text = requirements.join("\n");
    text.push('\n');
    req_file
        .write_all(text.as_bytes())
        .and_then(|()| req_file.flush())
        .map_err(WheelsError::io("writing", req_file.path()))?;

    let step = ui.step(format!(
        "downloading wheels for Python {} ({})",
        target.version,
        target.platforms.first().map(String::as_str).unwrap_or("?")
    ));
    let by_uv = match (resolver, uv::find()) {
        (Resolver::Uv, Some(uv)) => {
            match uv::download(&uv, pip, req_file.path(), target, tmp.path(), &step) {
                Ok(()) => true,
                Err(why) => {
                    step.output_line(&format!("{why}; pip resolves instead"));
                    clear_dir(tmp.path()).map_err(WheelsError::io("emptying", tmp.path()))?;
                    false
                }
            }
        }
        _ => false,
    };
    if !by_uv && let Err(e) = pip_download(pip, req_file.path(), target, tmp.path(), &step) {
        step.fail();
        return Err(e);
    }
    let by = if by_uv { "uv" } else { "pip" };
    finish(tmp, &dest, requirements, target, by, step)
}

/// Empties a directory a failed attempt wrote into.
fn clear_dir(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// `pip download` of the requirements in `req_file` into `dir`.
fn pip_download(
    pip: &Pip,
    req_file: &Path,
    target: &PythonTarget,
    dir: &Path,
    step: &crate::ui::Step,
) -> Result<(), WheelsError> {
    let mut cmd = pip.command();
    cmd.args(["-m", "pip", "download"])
        .args(pip_download_args(target))
        .arg("-d")
        .arg(dir)
        .arg("-r")
        .arg(req_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Lines as they happen, not when pip's buffer fills.
        .env("PYTHONUNBUFFERED", "1")
        .env("PIP_NO_INPUT", "1");
    let (status, lines) = match run_streaming(&mut cmd, |l| step.output_line(l)) {
        Ok(r) => r,
        Err(e) => return Err(WheelsError::io("running", &pip.python)(e)),
    };
    if !status.success() {
        if let Some(package) = missing_package(&lines) {
            return Err(index::diagnose(pip, &package, target));
        }
        let skip = lines.len().saturating_sub(FAILURE_TAIL);
        return Err(WheelsError::PipFailed {
            status: match status.code() {
                Some(c) => format!("exit code {c}"),
                None => status.to_string(),
            },
            tail: lines[skip..].to_vec(),
        });
    }
    Ok(())
}

/// Marks a finished download complete and moves it into place.
fn finish(
    tmp: tempfile::TempDir,
    dest: &Path,
    requirements: &[String],
    target: &PythonTarget,
    by: &str,
    step: crate::ui::Step,
) -> Result<PathBuf, WheelsError> {
    let done = (|| {
        let (count, bytes) =
            dir_stats(tmp.path()).map_err(WheelsError::io("reading", tmp.path()))?;
        let marker = tmp.path().join(COMPLETE_MARKER);
        let manifest = serde_json::json!({
            "requirements": requirements,
            "target": target,
        });
        std::fs::write(&marker, manifest.to_string())
            .map_err(WheelsError::io("writing", &marker))?;
        install_dir(tmp, dest)?;
        Ok((count, bytes))
    })();
    match done {
        Ok((count, bytes)) => {
            step.finish(format!(
                "downloaded {count} wheels ({:.0} MB), resolved by {by}",
                bytes as f64 / 1_000_000.0
            ));
            Ok(dest.to_path_buf())
        }
        Err(e) => {
            step.fail();
            Err(e)
        }
    }
}

/// pip's options for binary wheels that `target` can install.
fn pip_download_args(target: &PythonTarget) -> Vec<String> {
    let mut args = vec![
        "--disable-pip-version-check".to_string(),
        "--progress-bar".to_string(),
        "off".to_string(),
        "--only-binary=:all:".to_string(),
        "--python-version".to_string(),
        target.version.clone(),
        "--implementation".to_string(),
        "cp".to_string(),
        // pip adds `abi3` and `none` on its own.
        "--abi".to_string(),
        target.abi(),
    ];
    for p in &target.platforms {
        args.push("--platform".to_string());
        args.push(p.clone());
    }
    args
}

/// Moves a finished download into place. Losing a race with another ferry finishing the same
/// wheelhouse is fine: the inputs are the same, so theirs is used.
fn install_dir(tmp: tempfile::TempDir, dest: &Path) -> Result<(), WheelsError> {
    if dest.exists() && !dest.join(COMPLETE_MARKER).is_file() {
        // Left by something other than this code (only complete directories are renamed here).
        std::fs::remove_dir_all(dest).map_err(WheelsError::io("removing", dest))?;
    }
    let tmp_path = tmp.keep();
    match std::fs::rename(&tmp_path, dest) {
        Ok(()) => Ok(()),
        Err(_) if dest.join(COMPLETE_MARKER).is_file() => {
            let _ = std::fs::remove_dir_all(&tmp_path);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp_path);
            Err(WheelsError::io("moving the wheels to", dest)(e))
        }
    }
}

fn dir_stats(dir: &Path) -> io::Result<(usize, u64)> {
    let mut count = 0;
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        let meta = entry?.metadata()?;
        if meta.is_file() {
            count += 1;
            bytes += meta.len();
        }
    }
    Ok((count, bytes))
}

/// Runs `cmd`, handing each line of stdout and stderr to `on_line` as it arrives; returns the
/// exit status and all lines.
fn run_streaming(
    cmd: &mut Command,
    mut on_line: impl FnMut(&str),
) -> io::Result<(std::process::ExitStatus, Vec<String>)> {
    let mut child = cmd.spawn()?;
    let (tx, rx) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || forward_lines(out, tx)));
    }
    if let Some(err) = child.stderr.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || forward_lines(err, tx)));
    }
    drop(tx);
    let mut lines = Vec::new();
    for line in rx {
        on_line(&line);
        lines.push(line);
    }
    for r in readers {
        let _ = r.join();
    }
    Ok((child.wait()?, lines))
}

fn forward_lines(src: impl io::Read, tx: mpsc::Sender<String>) {
    for line in BufReader::new(src).lines() {
        let Ok(line) = line else { break };
        if tx.send(line).is_err() {
            break;
        }
    }
}

/// The requirement pip could not find a wheel for, from its error output.
fn missing_package(lines: &[String]) -> Option<String> {
    const MARKERS: &[&str] = &[
        "No matching distribution found for ",
        "Could not find a version that satisfies the requirement ",
    ];
    lines.iter().find_map(|line| {
        MARKERS.iter().find_map(|m| {
            let rest = &line[line.find(m)? + m.len()..];
            let name = rest.split_whitespace().next()?;
            (!name.is_empty()).then(|| name.to_string())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> PythonTarget {
        PythonTarget {
            version: "3.11".into(),
            platforms: manylinux_platforms(36, "x86_64"),
        }
    }

    #[test]
    fn manylinux_tags_cover_older_glibc_and_legacy_aliases() {
        let tags = manylinux_platforms(36, "x86_64");
        assert_eq!(
            tags.first().map(String::as_str),
            Some("manylinux_2_36_x86_64")
        );
        for t in [
            "manylinux_2_28_x86_64",
            "manylinux_2_17_x86_64",
            "manylinux_2_5_x86_64",
            "manylinux2014_x86_64",
            "manylinux2010_x86_64",
            "manylinux1_x86_64",
        ] {
            assert!(tags.iter().any(|x| x == t), "{t} missing");
        }
        assert!(!tags.iter().any(|x| x.starts_with("manylinux_2_37")));

        let arm = manylinux_platforms(31, "aarch64");
        assert!(arm.iter().any(|x| x == "manylinux2014_aarch64"));
        assert!(!arm.iter().any(|x| x.starts_with("manylinux1")));
    }

    #[test]
    fn probe_output_becomes_a_target() {
        let p: ProbeOutput = serde_json::from_str(
            r#"{"version": "3.11", "libc": ["glibc", "2.36"], "machine": "x86_64"}"#,
        )
        .expect("valid json");
        let t = target_from_probe(&p).expect("glibc target");
        assert_eq!(t, target());
        assert_eq!(t.abi(), "cp311");

        let musl: ProbeOutput =
            serde_json::from_str(r#"{"version": "3.12", "libc": ["", ""], "machine": "x86_64"}"#)
                .expect("valid json");
        assert!(target_from_probe(&musl).is_err());
    }

    #[test]
    fn cache_key_depends_on_inputs() {
        let reqs = vec!["numpy==2.1.0".to_string(), "jupyterlab".to_string()];
        let k = cache_key(&reqs, &target());
        assert_eq!(k, cache_key(&reqs, &target()));
        assert_eq!(k.len(), 64);
        assert_ne!(k, cache_key(&reqs[..1], &target()));
        let mut t = target();
        t.version = "3.12".into();
        assert_ne!(k, cache_key(&reqs, &t));
    }

    #[test]
    fn pip_args_ask_for_wheels_for_the_target() {
        let args = pip_download_args(&target());
        let joined = args.join(" ");
        assert!(joined.contains("--only-binary=:all:"));
        assert!(joined.contains("--python-version 3.11"));
        assert!(joined.contains("--abi cp311"));
        assert!(joined.contains("--platform manylinux_2_36_x86_64"));
        assert!(joined.contains("--platform manylinux2014_x86_64"));
    }

    #[test]
    fn finds_the_package_without_a_wheel() {
        let lines: Vec<String> = [
            "Looking in links: /opt/wheels",
            "ERROR: Could not find a version that satisfies the requirement pyyaml==5.4 (from versions: 6.0.1)",
            "ERROR: No matching distribution found for pyyaml==5.4",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(missing_package(&lines).as_deref(), Some("pyyaml==5.4"));
        assert_eq!(missing_package(&["ERROR: boom".to_string()]), None);
    }

    #[test]
    fn complete_wheelhouse_is_reused_without_pip() -> Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let reqs = vec!["numpy".to_string()];
        let dir = root.path().join(cache_key(&reqs, &target()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(COMPLETE_MARKER), "{}")?;
        let got = wheelhouse(&reqs, &target(), root.path(), Resolver::Uv, &Ui::silent())?;
        assert_eq!(got, dir);
        Ok(())
    }

    #[test]
    fn install_dir_replaces_an_incomplete_destination() -> Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let dest = root.path().join("key");
        std::fs::create_dir_all(&dest)?;
        std::fs::write(dest.join("stale.whl"), "x")?;
        let tmp = tempfile::tempdir_in(root.path())?;
        std::fs::write(tmp.path().join("a.whl"), "a")?;
        std::fs::write(tmp.path().join(COMPLETE_MARKER), "{}")?;
        install_dir(tmp, &dest)?;
        assert!(dest.join("a.whl").is_file());
        assert!(!dest.join("stale.whl").exists());
        Ok(())
    }

    /// Probes the bootstrapped base and downloads a real wheelhouse (needs Docker, the base image
    /// from `bootstrap`'s ignored test, and pip with an index):
    /// `cargo test --lib images::wheels -- --ignored --nocapture`.
    #[tokio::test]
    #[ignore]
    async fn probe_and_download_for_real() -> Result<(), Box<dyn std::error::Error>> {
        let docker = Docker::connect_with_local_defaults()?;
        let packages = vec!["libgomp1".to_string()];
        let base = crate::images::bootstrap::base_tag(&crate::images::bootstrap::BaseRequest {
            suite: "bookworm",
            packages: &packages,
        });
        let t = probe_target(&docker, &base).await?;
        eprintln!("{t:?}");
        assert_eq!(t.version, "3.11");
        let root = std::env::var_os("FERRY_WHEELS_TEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("ferry-wheels-test"));
        let reqs: Vec<String> = [
            "numpy",
            "pandas",
            "scikit-learn",
            "skl2onnx",
            "onnx",
            "onnxruntime",
            "matplotlib",
            "jupyterlab",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Both resolvers, each into its own cache: the same pins, wheel for wheel.
        let mut pins = Vec::new();
        for resolver in [Resolver::Pip, Resolver::Uv] {
            let (reqs, t, root) = (reqs.clone(), t.clone(), root.join(format!("{resolver:?}")));
            let ui = Ui::new(crate::ui::OutputMode::Human);
            let started = std::time::Instant::now();
            let dir =
                tokio::task::spawn_blocking(move || wheelhouse(&reqs, &t, &root, resolver, &ui))
                    .await??;
            eprintln!(
                "{resolver:?}: {} after {:?}",
                dir.display(),
                started.elapsed()
            );
            assert!(dir.join(COMPLETE_MARKER).is_file());
            pins.push(crate::lock::pins_of_wheelhouse(&dir)?);
        }
        assert_eq!(pins[0], pins[1]);
        Ok(())
    }
}

//! Where an environment's Python requirements come from, and their lines for the wheelhouse:
//! a `requirements.txt` as written; a `pyproject.toml`, whose `[project] dependencies` uv
//! resolves for the image's interpreter and platform into exact pins; or a `uv.lock`, whose
//! pins and hashes are taken as they are (uv exports them; nothing is resolved again) once
//! `uv lock --check` says the lock agrees with the `pyproject.toml` beside it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::wheels::PythonTarget;

/// What kind of requirement source a file is, by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Requirements,
    Pyproject,
    UvLock,
}

impl SourceKind {
    pub fn of(path: &Path) -> SourceKind {
        match path.file_name().and_then(|n| n.to_str()) {
            Some("pyproject.toml") => SourceKind::Pyproject,
            Some("uv.lock") => SourceKind::UvLock,
            _ => SourceKind::Requirements,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RequirementsError {
    #[error(
        "{} needs uv on this machine, and none was found on PATH\n  hint: install it (`pip install uv`, or see uv's documentation), or list the requirements in a requirements.txt",
        file.display()
    )]
    NoUv { file: PathBuf },
    #[error(
        "{lock} does not agree with {pyproject}: uv says the lock needs to be updated{}\n  hint: run `uv lock` in {dir} and commit the new uv.lock; nothing was built",
        detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default()
    )]
    LockOutOfDate {
        lock: String,
        pyproject: String,
        dir: String,
        detail: Option<String>,
    },
    #[error(
        "{} has no pyproject.toml beside it\n  hint: a uv.lock is read with the project it locks; keep both in the same directory",
        lock.display()
    )]
    NoPyproject { lock: PathBuf },
    #[error("uv could not {action} {}:\n{message}", file.display())]
    Uv {
        action: &'static str,
        file: PathBuf,
        message: String,
    },
    #[error(
        "the wheel {wheel} (sha256 {sha256}) is not one {} records for {name}\n  hint: the index serves other bytes than when the lock was made; run `uv lock --refresh-package {name}` if that is expected, and check why if not",
        file.display()
    )]
    HashMismatch {
        file: PathBuf,
        name: String,
        wheel: String,
        sha256: String,
    },
    #[error("cannot run uv for {}: {source}", file.display())]
    Run {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// uv's `--python-platform` for a target: `x86_64-manylinux_2_36` for `manylinux_2_36_x86_64`.
pub fn uv_platform(target: &PythonTarget) -> Option<String> {
    let newest = target.platforms.first()?;
    let rest = newest.strip_prefix("manylinux_")?;
    let mut parts = rest.splitn(3, '_');
    let (major, minor, arch) = (parts.next()?, parts.next()?, parts.next()?);
    Some(format!("{arch}-manylinux_{major}_{minor}"))
}

/// The requirement lines of `file` for `target`: pins (with hashes, for a uv.lock) that the
/// wheelhouse downloads exactly.
pub fn lines_for(file: &Path, target: &PythonTarget) -> Result<Vec<String>, RequirementsError> {
    match SourceKind::of(file) {
        SourceKind::Requirements => Ok(Vec::new()),
        SourceKind::Pyproject => compile(file, target),
        SourceKind::UvLock => export(file),
    }
}

fn uv(file: &Path) -> Result<Command, RequirementsError> {
    let Some(uv) = super::wheels::find_uv() else {
        return Err(RequirementsError::NoUv {
            file: file.to_path_buf(),
        });
    };
    let mut c = Command::new(uv);
    c.stdin(Stdio::null())
        .env("UV_NO_PROGRESS", "1")
        .env_remove("VIRTUAL_ENV");
    Ok(c)
}

fn run(
    mut cmd: Command,
    file: &Path,
    action: &'static str,
) -> Result<std::process::Output, RequirementsError> {
    let out = cmd.output().map_err(|source| RequirementsError::Run {
        file: file.to_path_buf(),
        source,
    })?;
    if !out.status.success() {
        return Err(RequirementsError::Uv {
            action,
            file: file.to_path_buf(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// `[project] dependencies` resolved by uv for the image's Python and platform.
fn compile(file: &Path, target: &PythonTarget) -> Result<Vec<String>, RequirementsError> {
    let mut cmd = uv(file)?;
    cmd.args(["pip", "compile", "--quiet", "--no-header", "--no-annotate"])
        .arg("--python-version")
        .arg(&target.version);
    if let Some(p) = uv_platform(target) {
        cmd.arg("--python-platform").arg(p);
    }
    cmd.arg(file);
    let out = run(cmd, file, "resolve the dependencies of")?;
    Ok(join_continuations(&String::from_utf8_lossy(&out.stdout)))
}

/// A uv.lock's pins with every hash it records, after checking it agrees with its project.
fn export(lock: &Path) -> Result<Vec<String>, RequirementsError> {
    let dir = lock.parent().unwrap_or(Path::new("."));
    let pyproject = dir.join("pyproject.toml");
    if !pyproject.is_file() {
        return Err(RequirementsError::NoPyproject {
            lock: lock.to_path_buf(),
        });
    }
    let mut check = uv(lock)?;
    check.args(["lock", "--check", "--quiet"]).current_dir(dir);
    let out = check.output().map_err(|source| RequirementsError::Run {
        file: lock.to_path_buf(),
        source,
    })?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let detail = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("hint:"))
            .map(|l| l.trim_start_matches("error: ").to_string());
        return Err(RequirementsError::LockOutOfDate {
            lock: lock.display().to_string(),
            pyproject: pyproject.display().to_string(),
            dir: dir.display().to_string(),
            detail,
        });
    }
    let mut cmd = uv(lock)?;
    cmd.args([
        "export",
        "--frozen",
        "--format",
        "requirements.txt",
        "--no-emit-project",
        "--no-dev",
        "--no-header",
        "--no-annotate",
        "--quiet",
    ])
    .current_dir(dir);
    let out = run(cmd, lock, "export the pins of")?;
    Ok(join_continuations(&String::from_utf8_lossy(&out.stdout)))
}

/// Lines without their `--hash` options, and the hashes each named package may have: pip
/// checks hashes only when every requirement has one, and ferry adds requirements of its own
/// (the notebook's), so a lock's hashes are checked against the downloaded wheels instead.
pub fn split_hashes(lines: &[String]) -> (Vec<String>, Vec<(String, Vec<String>)>) {
    let mut plain = Vec::new();
    let mut hashes = Vec::new();
    for line in lines {
        let mut kept = Vec::new();
        let mut these = Vec::new();
        for word in line.split_whitespace() {
            match word.strip_prefix("--hash=sha256:") {
                Some(h) => these.push(h.to_string()),
                None => kept.push(word),
            }
        }
        let text = kept.join(" ");
        if !these.is_empty()
            && let Some(name) = text.split(['=', ';', ' ', '<', '>', '!', '~', '[']).next()
        {
            hashes.push((crate::lock::normalise(name.trim()), these));
        }
        plain.push(text);
    }
    (plain, hashes)
}

/// requirements.txt text as one line per requirement: continuations (`\` at the end) joined,
/// comments and blank lines dropped.
pub fn join_continuations(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with('#') && current.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part.trim());
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let done = current.trim().to_string();
                if !done.is_empty() {
                    lines.push(done);
                }
                current.clear();
            }
        }
    }
    let rest = current.trim();
    if !rest.is_empty() {
        lines.push(rest.to_string());
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> PythonTarget {
        PythonTarget {
            version: "3.11".into(),
            platforms: vec![
                "manylinux_2_36_aarch64".into(),
                "manylinux2014_aarch64".into(),
            ],
        }
    }

    #[test]
    fn sources_are_told_apart_by_their_file_name() {
        assert_eq!(
            SourceKind::of(Path::new("a/pyproject.toml")),
            SourceKind::Pyproject
        );
        assert_eq!(SourceKind::of(Path::new("uv.lock")), SourceKind::UvLock);
        assert_eq!(
            SourceKind::of(Path::new("requirements-dev.txt")),
            SourceKind::Requirements
        );
    }

    #[test]
    fn the_image_platform_is_written_as_uv_writes_it() {
        assert_eq!(
            uv_platform(&target()).as_deref(),
            Some("aarch64-manylinux_2_36")
        );
    }

    #[test]
    fn hashes_are_taken_off_the_lines_and_kept_per_package() {
        let lines = vec![
            "Six==1.16.0 --hash=sha256:cc --hash=sha256:dd".to_string(),
            "jupyterlab".to_string(),
        ];
        let (plain, hashes) = split_hashes(&lines);
        assert_eq!(plain, vec!["Six==1.16.0", "jupyterlab"]);
        assert_eq!(
            hashes,
            vec![("six".to_string(), vec!["cc".to_string(), "dd".to_string()])]
        );
    }

    #[test]
    fn exported_pins_keep_every_hash_on_one_line() {
        let text = "colorama==0.4.6 ; sys_platform == 'win32' \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n# a comment\n\nsix==1.16.0 \\\n    --hash=sha256:cc\ntqdm==4.70.1\n";
        assert_eq!(
            join_continuations(text),
            vec![
                "colorama==0.4.6 ; sys_platform == 'win32' --hash=sha256:aa --hash=sha256:bb",
                "six==1.16.0 --hash=sha256:cc",
                "tqdm==4.70.1",
            ]
        );
    }
}

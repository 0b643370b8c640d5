//! The fast way to a wheelhouse: uv resolves the requirements for the image's Python and
//! platform into a `pylock.toml` (one wheel per package, with its URL, size and sha256), and the
//! wheels are fetched several at a time through pip's own HTTP session (`fetch.py`).
//!
//! uv is told the indexes, find-links and certificate pip is configured with, so both resolve
//! against the same places, and the fetch goes through pip's session, so its proxies and
//! credentials apply too. `pip download` resolves and fetches one package at a time: on the
//! churn template it takes 15 s where this takes 2 to 4. Whatever this cannot do (no uv, a
//! requirement uv cannot resolve, a fetch that fails) the caller leaves to pip, which also
//! explains a failure in the user's terms.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::{Pip, PythonTarget};
use crate::ui::Step;

const FETCH_SCRIPT: &str = include_str!("fetch.py");

/// uv beside the running ferry (a `pip install ferry-ml` puts both in one `bin/`), else on
/// `PATH`.
pub fn find() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("uv")))
        .filter(|p| p.is_file());
    beside.or_else(|| {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("uv"))
                .find(|p| p.is_file())
        })
    })
}

/// What pip is configured to read from (`fetch.py indexes`).
#[derive(Debug, Default, Deserialize, PartialEq)]
pub(super) struct PipIndexes {
    pub index_url: Option<String>,
    #[serde(default)]
    pub extra_index_urls: Vec<String>,
    #[serde(default)]
    pub find_links: Vec<String>,
    #[serde(default)]
    pub no_index: bool,
    pub cert: Option<String>,
}

impl PipIndexes {
    /// uv's options for the same sources. With several indexes pip takes the best version
    /// among all of them, which uv calls `unsafe-best-match`.
    fn uv_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.no_index {
            args.push("--no-index".to_string());
        } else {
            if let Some(i) = &self.index_url {
                args.extend(["--index-url".to_string(), i.clone()]);
            }
            for i in &self.extra_index_urls {
                args.extend(["--extra-index-url".to_string(), i.clone()]);
            }
            if !self.extra_index_urls.is_empty() {
                args.extend(["--index-strategy".into(), "unsafe-best-match".into()]);
            }
        }
        for f in &self.find_links {
            args.extend(["--find-links".to_string(), f.clone()]);
        }
        args
    }
}

/// The part of a `pylock.toml` (PEP 751) that says which file to fetch for each package.
#[derive(Debug, Deserialize)]
struct PyLock {
    #[serde(default)]
    packages: Vec<LockedPackage>,
}

#[derive(Debug, Deserialize)]
struct LockedPackage {
    name: String,
    #[serde(default)]
    wheels: Vec<LockedWheel>,
}

#[derive(Debug, Deserialize)]
struct LockedWheel {
    url: Option<String>,
    path: Option<String>,
    size: Option<u64>,
    #[serde(default)]
    hashes: BTreeMap<String, String>,
}

/// One file for `fetch.py`.
#[derive(Debug, Serialize, PartialEq)]
struct Fetch {
    file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    sha256: String,
    size: Option<u64>,
}

/// Resolves the requirements in `requirements` for `target` and fetches their wheels into
/// `dest`. The error says why, for the step's output, before pip takes over.
pub(super) fn download(
    uv: &Path,
    pip: &Pip,
    requirements: &Path,
    target: &PythonTarget,
    dest: &Path,
    step: &Step,
) -> Result<(), String> {
    step.set_detail("resolving with uv");
    let indexes = pip_indexes(pip)?;
    // uv insists on the name; out of `dest`, which holds nothing but wheels.
    let lock_dir = tempfile::tempdir().map_err(|e| format!("making a temporary directory: {e}"))?;
    let lock = lock_dir.path().join("pylock.toml");
    let mut cmd = Command::new(uv);
    cmd.args([
        "pip",
        "compile",
        "--quiet",
        "--no-header",
        "--only-binary",
        ":all:",
    ])
    .args([
        "--format",
        "pylock.toml",
        "--python-version",
        &target.version,
    ])
    .args(indexes.uv_args())
    .arg("-o")
    .arg(&lock)
    .arg(requirements)
    .stdin(Stdio::null())
    .env("UV_NO_PROGRESS", "1")
    .env_remove("VIRTUAL_ENV");
    if let Some(p) = crate::images::requirements::uv_platform(target) {
        cmd.arg("--python-platform").arg(p);
    }
    if let Some(cert) = &indexes.cert
        && std::env::var_os("SSL_CERT_FILE").is_none()
    {
        cmd.env("SSL_CERT_FILE", cert);
    }
    let out = cmd.output().map_err(|e| format!("cannot run uv: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "uv could not resolve: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = std::fs::read_to_string(&lock).map_err(|e| format!("reading uv's lock: {e}"))?;
    let packages = packages_of(&text, lock_dir.path())?;
    fetch(pip, &packages, target, dest, step)
}

fn pip_indexes(pip: &Pip) -> Result<PipIndexes, String> {
    let out = pip
        .command()
        .args(["-c", FETCH_SCRIPT, "indexes"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run Python: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cannot read pip's configuration: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("reading pip's configuration: {e}"))
}

/// One package of a `pylock.toml` and the wheels uv found for the image's platform (several
/// where a project ships interpreter-specific, abi3 and pure-Python wheels of one version).
#[derive(Debug, Serialize, PartialEq)]
struct Package {
    name: String,
    wheels: Vec<Fetch>,
}

/// What `fetch.py fetch` reads: the interpreter that picks among each package's wheels.
#[derive(Debug, Serialize)]
struct FetchRequest<'a> {
    target: FetchTarget<'a>,
    packages: &'a [Package],
}

#[derive(Debug, Serialize)]
struct FetchTarget<'a> {
    version: &'a str,
    abi: String,
    platforms: &'a [String],
}

/// Each package of a `pylock.toml` with its wheels, each with a sha256; relative paths are
/// relative to the lock's directory, `base`.
fn packages_of(pylock: &str, base: &Path) -> Result<Vec<Package>, String> {
    let lock: PyLock = toml::from_str(pylock).map_err(|e| format!("reading uv's lock: {e}"))?;
    let mut packages = Vec::new();
    for p in lock.packages {
        if p.wheels.is_empty() {
            return Err(format!("uv's lock has no wheel of {}", p.name));
        }
        let mut wheels = Vec::new();
        for wheel in &p.wheels {
            wheels.push(fetch_of(&p.name, wheel, base)?);
        }
        packages.push(Package {
            name: p.name,
            wheels,
        });
    }
    Ok(packages)
}

fn fetch_of(name: &str, wheel: &LockedWheel, base: &Path) -> Result<Fetch, String> {
    let sha256 = wheel
        .hashes
        .get("sha256")
        .cloned()
        .ok_or_else(|| format!("uv's lock has no sha256 for a wheel of {name}"))?;
    let source = wheel
        .url
        .as_deref()
        .or(wheel.path.as_deref())
        .ok_or_else(|| format!("uv's lock says nowhere to fetch {name} from"))?;
    let last = source.rsplit('/').next().unwrap_or(source);
    let file = match &wheel.url {
        Some(_) => {
            percent_encoding::percent_decode_str(last.split(['?', '#']).next().unwrap_or(last))
                .decode_utf8()
                .map_err(|e| format!("the file name of {source}: {e}"))?
                .into_owned()
        }
        None => last.to_string(),
    };
    if !file.ends_with(".whl") || file.contains('/') {
        return Err(format!("{source} is not a wheel"));
    }
    Ok(Fetch {
        file,
        url: wheel.url.clone(),
        path: wheel
            .path
            .as_ref()
            .map(|p| base.join(p).to_string_lossy().into_owned()),
        sha256,
        size: wheel.size,
    })
}

/// Fetches `files` into `dest` through pip's session, showing each on `step`.
fn fetch(
    pip: &Pip,
    packages: &[Package],
    target: &PythonTarget,
    dest: &Path,
    step: &Step,
) -> Result<(), String> {
    let mut child = pip
        .command()
        .args(["-c", FETCH_SCRIPT, "fetch"])
        .arg(dest)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("PYTHONUNBUFFERED", "1")
        .spawn()
        .map_err(|e| format!("cannot run Python: {e}"))?;
    let request = FetchRequest {
        target: FetchTarget {
            version: &target.version,
            abi: target.abi(),
            platforms: &target.platforms,
        },
        packages,
    };
    let json = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&json)
            .map_err(|e| format!("handing the wheels to fetch to Python: {e}"))?;
    }
    let stderr = child.stderr.take();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut e) = stderr {
            let _ = std::io::Read::read_to_string(&mut e, &mut text);
        }
        text
    });
    let (mut count, mut bytes, mut failure) = (0usize, 0u64, None);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("fetched ") {
                count += 1;
                bytes += rest
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
                step.set_detail(format!(
                    "{count} of {} wheels, {}",
                    packages.len(),
                    crate::ui::human_bytes(bytes)
                ));
            } else if let Some(e) = line.strip_prefix("error: ") {
                failure = Some(e.to_string());
            }
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let stderr = errors.join().unwrap_or_default();
    if status.success() && count == packages.len() {
        return Ok(());
    }
    Err(failure.unwrap_or_else(|| {
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        format!(
            "fetching the wheels failed ({status}): {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_package_of_the_lock_is_one_wheel_to_fetch() {
        let lock = r#"
lock-version = "1.0"
created-by = "uv"
requires-python = ">=3.11"

[[packages]]
name = "numpy"
version = "2.4.6"
wheels = [{ url = "https://files.example/packages/02/numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl", upload-time = 2026-05-18T23:33:29Z, size = 16918164, hashes = { sha256 = "89cd" } }]

[[packages]]
name = "local"
version = "1.0+cpu"
wheels = [{ path = "/opt/wheels/local-1.0%2Bcpu-py3-none-any.whl", hashes = { sha256 = "ab" } }]
"#;
        let packages = packages_of(lock, Path::new("/l")).unwrap();
        let files: Vec<&Fetch> = packages.iter().map(|p| &p.wheels[0]).collect();
        assert_eq!(
            *files[0],
            Fetch {
                file: "numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl".into(),
                url: Some("https://files.example/packages/02/numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl".into()),
                path: None,
                sha256: "89cd".into(),
                size: Some(16918164),
            }
        );
        // A path is a path: nothing in it is decoded, and a relative one is under the lock's
        // directory.
        assert_eq!(files[1].file, "local-1.0%2Bcpu-py3-none-any.whl");
        assert_eq!(
            files[1].path.as_deref(),
            Some("/opt/wheels/local-1.0%2Bcpu-py3-none-any.whl")
        );
        let rel = lock.replace("/opt/wheels/", "w/");
        let rel = packages_of(&rel, Path::new("/l")).unwrap();
        assert_eq!(
            rel[1].wheels[0].path.as_deref(),
            Some("/l/w/local-1.0%2Bcpu-py3-none-any.whl")
        );
    }

    #[test]
    fn a_package_without_a_hashed_wheel_is_left_to_pip() {
        let sdist_only = "[[packages]]\nname = \"x\"\nversion = \"1\"\nsdist = { url = \"https://e/x-1.tar.gz\", hashes = { sha256 = \"ab\" } }\n";
        let e = packages_of(sdist_only, Path::new("/l")).unwrap_err();
        assert!(e.contains("no wheel of x"), "{e}");
        let no_hash = "[[packages]]\nname = \"x\"\nversion = \"1\"\nwheels = [{ url = \"https://e/x-1-py3-none-any.whl\" }]\n";
        let e = packages_of(no_hash, Path::new("/l")).unwrap_err();
        assert!(e.contains("no sha256"), "{e}");
    }

    #[test]
    fn pips_sources_become_uvs_options() {
        let none = PipIndexes {
            no_index: true,
            find_links: vec!["/w".into()],
            index_url: Some("https://i/simple".into()),
            ..Default::default()
        };
        assert_eq!(none.uv_args(), ["--no-index", "--find-links", "/w"]);
        let two = PipIndexes {
            index_url: Some("https://i/simple".into()),
            extra_index_urls: vec!["https://j/simple".into()],
            ..Default::default()
        };
        assert_eq!(
            two.uv_args(),
            [
                "--index-url",
                "https://i/simple",
                "--extra-index-url",
                "https://j/simple",
                "--index-strategy",
                "unsafe-best-match"
            ]
        );
    }
}

/// `fetch.py` as ferry runs it, on wheels from local paths (no index needed).
#[cfg(test)]
mod fetch_script {
    use super::*;
    use sha2::{Digest, Sha256};

    fn wheel(dir: &Path, file: &str, body: &str) -> Fetch {
        let path = dir.join(file);
        std::fs::write(&path, body).unwrap();
        Fetch {
            file: file.to_string(),
            url: None,
            path: Some(path.to_string_lossy().into_owned()),
            sha256: hex::encode(Sha256::digest(body.as_bytes())),
            size: Some(body.len() as u64),
        }
    }

    fn target() -> PythonTarget {
        PythonTarget {
            version: "3.11".into(),
            platforms: vec![
                "manylinux_2_36_x86_64".into(),
                "manylinux_2_28_x86_64".into(),
                "manylinux_2_17_x86_64".into(),
                "manylinux2014_x86_64".into(),
            ],
        }
    }

    fn run(packages: &[Package]) -> (Result<(), String>, tempfile::TempDir) {
        let out = tempfile::tempdir().unwrap();
        let Ok(pip) = Pip::find() else {
            panic!("these tests need python3 with pip");
        };
        let ui = crate::ui::Ui::silent();
        let step = ui.step("fetching");
        (fetch(&pip, packages, &target(), out.path(), &step), out)
    }

    #[test]
    fn each_package_gets_the_wheel_pip_would_pick_checked_by_its_hash() {
        let src = tempfile::tempdir().unwrap();
        let d = src.path();
        let packages = vec![
            Package {
                name: "charset-normalizer".into(),
                wheels: vec![
                    wheel(d, "cn-3.5-py3-none-any.whl", "pure"),
                    wheel(d, "cn-3.5-cp37-abi3-manylinux_2_28_x86_64.whl", "abi3"),
                    wheel(
                        d,
                        "cn-3.5-cp311-cp311-manylinux1_x86_64.manylinux_2_28_x86_64.whl",
                        "cp311",
                    ),
                    // Another CPU: never taken, however specific.
                    wheel(d, "cn-3.5-cp311-cp311-manylinux_2_28_aarch64.whl", "arm"),
                ],
            },
            Package {
                name: "six".into(),
                wheels: vec![wheel(d, "six-1.16.0-py2.py3-none-any.whl", "six")],
            },
        ];
        let (got, out) = run(&packages);
        got.unwrap();
        let mut names: Vec<String> = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "cn-3.5-cp311-cp311-manylinux1_x86_64.manylinux_2_28_x86_64.whl",
                "six-1.16.0-py2.py3-none-any.whl"
            ]
        );
    }

    #[test]
    fn a_wheel_that_is_not_what_the_lock_says_is_refused() {
        let src = tempfile::tempdir().unwrap();
        let mut w = wheel(src.path(), "six-1.16.0-py2.py3-none-any.whl", "six");
        w.sha256 = "0".repeat(64);
        let (got, out) = run(&[Package {
            name: "six".into(),
            wheels: vec![w],
        }]);
        let e = got.unwrap_err();
        assert!(e.contains("six-1.16.0-py2.py3-none-any.whl: sha256"), "{e}");
        assert_eq!(
            std::fs::read_dir(out.path()).unwrap().count(),
            0,
            "a refused wheel stays out"
        );

        let w = wheel(
            src.path(),
            "x-1-cp311-cp311-manylinux_2_28_aarch64.whl",
            "arm",
        );
        let (got, _) = run(&[Package {
            name: "x".into(),
            wheels: vec![w],
        }]);
        let e = got.unwrap_err();
        assert!(e.contains("none of the wheels of x fits the image"), "{e}");
    }
}

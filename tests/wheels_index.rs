//! The wheelhouse against a package index served on 127.0.0.1 by the test (a PEP 503 simple
//! index of hand-made files, `python3 -m http.server`): a misspelt package, a missing one, a
//! version that does not exist, packages without a wheel for the image, an index that does not
//! answer, and a download that works. pip is pointed at the loopback index only (no config
//! files, no find-links), so nothing here reaches another network. Needs python3 with pip.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry::images::wheels::{self, Pip, PythonTarget, WheelsError};
use ferry::ui::Ui;

/// Each project's files; only `tinypkg` is a real wheel (the one pip downloads).
const PROJECTS: &[(&str, &[&str])] = &[
    (
        "pandas",
        &[
            "pandas-2.1.0-cp310-cp310-manylinux2014_x86_64.whl",
            "pandas-2.2.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "pandas-2.2.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "pandas-2.2.3.tar.gz",
        ],
    ),
    (
        "macpkg",
        &[
            "macpkg-1.0-cp311-cp311-macosx_11_0_arm64.whl",
            "macpkg-1.1-cp311-cp311-win_amd64.whl",
            "macpkg-1.1-cp312-cp312-manylinux_2_17_x86_64.whl",
        ],
    ),
    (
        "mixed",
        &[
            "mixed-1.0-cp311-cp311-manylinux2014_x86_64.whl",
            "mixed-2.0-cp312-cp312-manylinux2014_x86_64.whl",
        ],
    ),
    ("tinypkg", &["tinypkg-0.1-py3-none-any.whl"]),
];

/// Writes a minimal valid wheel: pip reads its metadata after downloading it.
const MAKE_WHEEL: &str = r#"
import sys, zipfile
name, version, path = sys.argv[1:4]
info = "%s-%s.dist-info" % (name, version)
files = {
    "%s/__init__.py" % name: "",
    info + "/METADATA": "Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (name, version),
    info + "/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
files[info + "/RECORD"] = "".join("%s,,\n" % f for f in files) + info + "/RECORD,,\n"
with zipfile.ZipFile(path, "w") as z:
    for f, text in files.items():
        z.writestr(f, text)
"#;

/// A simple index on 127.0.0.1, stopped (by its pid) when dropped.
struct Index {
    _dir: tempfile::TempDir,
    server: Child,
    url: String,
}

impl Drop for Index {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

fn write_index(root: &Path) {
    let simple = root.join("simple");
    let files = root.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let mut listing = String::from("<!DOCTYPE html><html><body>\n");
    for (project, names) in PROJECTS {
        listing.push_str(&format!("<a href=\"{project}/\">{project}</a>\n"));
        let mut page = String::from("<!DOCTYPE html><html><body>\n");
        for name in *names {
            page.push_str(&format!("<a href=\"../../files/{name}\">{name}</a>\n"));
            let path = files.join(name);
            if *project == "tinypkg" {
                let ok = Command::new("python3")
                    .args(["-c", MAKE_WHEEL, "tinypkg", "0.1"])
                    .arg(&path)
                    .status()
                    .unwrap();
                assert!(ok.success(), "making a wheel");
            } else {
                std::fs::write(&path, b"not a real distribution").unwrap();
            }
        }
        page.push_str("</body></html>\n");
        std::fs::create_dir_all(simple.join(project)).unwrap();
        std::fs::write(simple.join(project).join("index.html"), page).unwrap();
    }
    listing.push_str("</body></html>\n");
    std::fs::write(simple.join("index.html"), listing).unwrap();
}

/// Serves the index on a port the server picks, and returns once it answers.
fn serve_index() -> Index {
    let dir = tempfile::tempdir().unwrap();
    write_index(dir.path());
    let mut server = Command::new("python3")
        .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
    let mut line = String::new();
    let stdout = server.stdout.take().unwrap();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let port: u16 = line
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the index never answered");
        std::thread::yield_now();
    }
    Index {
        _dir: dir,
        server,
        url: format!("http://127.0.0.1:{port}/simple"),
    }
}

/// pip with the loopback index only: no config files, find-links, extra indexes or proxies.
fn pip_for(index_url: &str) -> Pip {
    let mut pip = Pip::find()
        .expect("python3 with pip")
        .env("PIP_INDEX_URL", Some(index_url))
        .env(
            "PIP_CONFIG_FILE",
            Some(if cfg!(windows) { "nul" } else { "/dev/null" }),
        )
        .env("PIP_RETRIES", Some("0"))
        .env("PIP_TIMEOUT", Some("10"))
        .env("PIP_NO_CACHE_DIR", Some("1"))
        .env("no_proxy", Some("127.0.0.1"))
        .env("NO_PROXY", Some("127.0.0.1"));
    for unset in [
        "PIP_FIND_LINKS",
        "PIP_EXTRA_INDEX_URL",
        "PIP_NO_INDEX",
        "PIP_REQUIRE_VIRTUALENV",
    ] {
        pip = pip.env(unset, None);
    }
    pip
}

fn target() -> PythonTarget {
    PythonTarget {
        version: "3.11".into(),
        platforms: [
            "manylinux_2_36_x86_64",
            "manylinux_2_17_x86_64",
            "manylinux2014_x86_64",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    }
}

/// Resolves `requirement` against `url`; returns the wheelhouse or the error.
fn resolve(url: &str, requirement: &str) -> (Result<PathBuf, WheelsError>, tempfile::TempDir) {
    let cache = tempfile::tempdir().unwrap();
    let got = wheels::wheelhouse_with(
        &pip_for(url),
        &[requirement.to_string()],
        &target(),
        cache.path(),
        &Ui::silent(),
    );
    (got, cache)
}

fn error(url: &str, requirement: &str) -> WheelsError {
    match resolve(url, requirement).0 {
        Ok(dir) => panic!("{requirement} resolved to {}", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn a_misspelt_package_is_named_with_the_close_name_the_index_has() {
    let index = serve_index();
    let e = error(&index.url, "pandsa==3.1.1");
    let text = e.to_string();
    assert!(
        matches!(&e, WheelsError::UnknownPackage { package, suggestion: Some(s), .. }
            if package == "pandsa" && s == "pandas"),
        "{e:?}"
    );
    assert!(
        text.starts_with("no package `pandsa` on the package index; did you mean `pandas`?"),
        "{text}"
    );
    assert!(text.contains(&index.url), "names where pip looked: {text}");
    assert!(!text.contains("no wheel"), "{text}");
}

#[test]
fn a_package_nothing_is_close_to_is_named_without_a_suggestion() {
    let index = serve_index();
    let e = error(&index.url, "zzqxv");
    assert!(
        matches!(
            &e,
            WheelsError::UnknownPackage {
                suggestion: None,
                listed: true,
                ..
            }
        ),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.starts_with("no package `zzqxv` on the package index\n"),
        "{text}"
    );
    assert!(text.contains("nothing on pip's index"), "{text}");
    assert!(!text.contains("did you mean"), "{text}");
}

#[test]
fn a_version_that_does_not_exist_lists_those_that_do() {
    let index = serve_index();
    let e = error(&index.url, "pandas==99.0");
    match &e {
        WheelsError::UnknownVersion(v) => {
            assert_eq!((v.package.as_str(), v.version.as_str()), ("pandas", "99.0"));
            assert_eq!(v.versions, ["2.2.3", "2.2.2", "2.1.0"]);
            assert_eq!(v.with_wheel, ["2.2.3", "2.2.2"]);
        }
        _ => panic!("{e:?}"),
    }
    let text = e.to_string();
    assert!(
        text.starts_with(
            "`pandas` has no version 99.0 on the package index; it has 2.2.3, 2.2.2, 2.1.0"
        ),
        "{text}"
    );
}

#[test]
fn a_package_with_wheels_for_other_platforms_only_says_none_fits() {
    let index = serve_index();
    let e = error(&index.url, "macpkg");
    match &e {
        WheelsError::NoWheel(n) => {
            assert!(n.with_wheel.is_empty(), "{:?}", n.with_wheel);
            let (v, tags) = n.newest.as_ref().expect("the newest version");
            assert_eq!(v, "1.1");
            assert!(
                tags.iter()
                    .any(|t| t == "cp312-cp312-manylinux_2_17_x86_64")
            );
        }
        _ => panic!("{e:?}"),
    }
    let text = e.to_string();
    assert!(
        text.starts_with("no wheel of `macpkg` for Python 3.11 on manylinux_2_36_x86_64; no version of macpkg on the package index has one"),
        "{text}"
    );
}

#[test]
fn a_version_without_a_wheel_lists_the_versions_that_have_one() {
    let index = serve_index();
    let e = error(&index.url, "mixed==2.0");
    assert!(
        matches!(&e, WheelsError::NoWheel(n) if n.with_wheel == ["1.0"]),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("versions of mixed that have one: 1.0"),
        "{text}"
    );
    assert!(
        text.contains("pin one of those versions of mixed"),
        "{text}"
    );
}

/// An index on 127.0.0.1 that answers every request with 503, for as long as the test runs.
fn failing_index() -> String {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                request.push(byte[0]);
            }
            let _ = stream.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    format!("http://127.0.0.1:{port}/simple")
}

#[test]
fn an_index_that_fails_is_not_called_a_missing_package() {
    let url = failing_index();
    let e = error(&url, "pandas");
    assert!(matches!(&e, WheelsError::NotFound { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("could not be asked why"), "{text}");
    assert!(text.contains("503"), "says what the index answered: {text}");
}

#[test]
fn wheels_come_from_the_index_pip_is_configured_with() {
    let index = serve_index();
    let (got, _cache) = resolve(&index.url, "tinypkg");
    let dir = got.unwrap_or_else(|e| panic!("{e}"));
    assert!(dir.join("tinypkg-0.1-py3-none-any.whl").is_file());
}

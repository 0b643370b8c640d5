//! Requirement sources beside requirements.txt, against the real engine: a `pyproject.toml`
//! whose dependencies uv resolves, and a `uv.lock` honoured pin for pin (refused, before
//! anything is built, when it disagrees with its `pyproject.toml`). The wheels are installed in
//! the image by uv, the default installer. Needs Docker, debootstrap (the offline base), the
//! host's pip and uv, and the package index through their configured defaults.

use std::path::Path;
use std::process::Command;

mod common;

/// `uv lock` in `dir`, which must succeed.
fn uv_lock(dir: &Path) {
    let locked = Command::new("uv")
        .args(["lock", "--quiet"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(locked.status.success(), "{locked:?}");
}

const PYPROJECT: &str = "[project]\nname = \"demo\"\nversion = \"0.1.0\"\nrequires-python = \">=3.9\"\ndependencies = [\"six==1.16.0\"]\n";

fn project(dir: &Path, name: &str, requirements: &str) {
    std::fs::write(
        dir.join("ferry.yaml"),
        format!(
            "name: {name}\nenvironment:\n  bootstrap: bookworm\n  requirements: {requirements}\ntrain:\n  command: python -c \"import six; print('six-version', six.__version__)\" && mkdir -p out && echo x > out/x\n  outputs: [out/x]\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("pyproject.toml"), PYPROJECT).unwrap();
}

fn six_in_image(dir: &Path) -> String {
    let out = common::ferry(dir, &["train"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text.lines()
        .find_map(|l| {
            l.split("six-version ")
                .nth(1)
                .map(str::trim)
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no version printed: {text}"))
}

#[test]
fn a_pyproject_is_resolved_and_a_uv_lock_is_honoured_pin_for_pin() {
    if !common::have_uv() {
        return;
    }
    // pyproject.toml: uv resolves its dependencies for the image's interpreter.
    let dir = tempfile::tempdir().unwrap();
    project(dir.path(), "uv-pyproject", "pyproject.toml");
    assert_eq!(six_in_image(dir.path()), "1.16.0");
    let lock = std::fs::read_to_string(dir.path().join("ferry.lock")).unwrap();
    assert!(lock.contains("six"), "{lock}");

    // uv.lock: the locked version wins over the newest one the pyproject would allow.
    let dir = tempfile::tempdir().unwrap();
    project(dir.path(), "uv-lock", "uv.lock");
    // The oldest six the project allows, locked; a resolution now would take the newest.
    std::fs::write(
        dir.path().join("pyproject.toml"),
        format!(
            "{}\n[tool.uv]\nresolution = \"lowest-direct\"\n",
            PYPROJECT.replace("six==1.16.0", "six>=1.15")
        ),
    )
    .unwrap();
    uv_lock(dir.path());
    let text = std::fs::read_to_string(dir.path().join("uv.lock")).unwrap();
    assert!(text.contains("version = \"1.15.0\""), "{text}");
    assert_eq!(six_in_image(dir.path()), "1.15.0");
}

#[test]
fn a_uv_lock_that_disagrees_with_its_pyproject_is_refused_before_anything_is_built() {
    if !common::have_uv() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    project(dir.path(), "uv-stale", "uv.lock");
    uv_lock(dir.path());
    // A dependency added to the project but not locked.
    std::fs::write(
        dir.path().join("pyproject.toml"),
        PYPROJECT.replace("\"six==1.16.0\"", "\"six==1.16.0\", \"idna\""),
    )
    .unwrap();
    let out = common::ferry(dir.path(), &["build"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("uv.lock does not agree with")
            && err.contains("pyproject.toml")
            && err.contains("uv lock"),
        "{err}"
    );
    assert!(
        common::docker(&["images", "-q", "ferry/uv-stale-env"]).is_empty(),
        "an environment image was built"
    );
}

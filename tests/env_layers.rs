//! The environment image as ferry writes it, against the real engine: the virtualenv installed
//! by uv into a directory on the host and loaded as layers. A first build writes one virtualenv
//! layer on the base; a changed pin adds one difference layer on top of the previous image (a
//! package no longer pinned whited out); a kept directory without its record is never trusted,
//! and the build starts from scratch. Needs Docker, debootstrap (the offline base), the host's
//! pip and uv, and the package index through their configured defaults.

use std::path::Path;
use std::process::Command;

mod common;

/// `ferry build` with its own cache; returns the environment image's ID.
fn build(dir: &Path, cache: &Path, requirements: &str) -> String {
    std::fs::write(dir.join("requirements.txt"), requirements).unwrap();
    let out = common::ferry_cmd(dir, &["build", "--json"])
        .env("FERRY_CACHE_DIR", cache)
        .env_remove("FERRY_INSTALLER")
        .env_remove("FERRY_ENV_IMAGE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["environment"]["id"].as_str().unwrap().to_string()
}

fn layers(image: &str) -> Vec<String> {
    let text = common::docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .RootFS.Layers}}",
        image,
    ]);
    serde_json::from_str(&text).unwrap()
}

/// `sh -c script` in a container of `image`: its exit code and output.
fn run(image: &str, script: &str) -> (i32, String) {
    let out = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            image,
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_changed_pin_adds_one_layer_and_a_directory_without_its_record_starts_again() {
    if !common::have_uv() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ferry.yaml"),
        "name: env-layers\nenvironment:\n  bootstrap: bookworm\n  requirements: requirements.txt\ntrain:\n  command: mkdir -p out && echo x > out/x\n  outputs: [out/x]\n",
    )
    .unwrap();

    // First build: the base's layers and one holding the virtualenv.
    let first = build(dir.path(), cache.path(), "six==1.16.0\n");
    let first_layers = layers(&first);
    let site = "/opt/venv/lib/python3.11/site-packages";
    let (code, out) = run(
        &first,
        &format!(
            "python -c 'import six; print(six.__version__)' && stat -c '%u:%g' {site}/six.py && \
             ls {site}/__pycache__/six.cpython-311.pyc && pip --version && echo PATH=$PATH"
        ),
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1.16.0"), "{out}");
    assert!(
        out.contains("0:0"),
        "files belong to root in the image: {out}"
    );
    assert!(
        out.contains("pip ") && out.contains("/opt/venv/lib"),
        "the image's own pip: {out}"
    );
    assert!(out.contains("PATH=/opt/venv/bin:"), "{out}");

    // six no longer pinned, packaging pinned: the previous image plus one small layer.
    let second = build(dir.path(), cache.path(), "packaging==24.1\n");
    let second_layers = layers(&second);
    assert_eq!(
        second_layers[..second_layers.len() - 1],
        first_layers[..],
        "the second image is the first plus one layer"
    );
    let (code, out) = run(
        &second,
        "python -c 'import packaging; print(packaging.__version__)'; python -c 'import six' 2>&1; ls /opt/venv/lib/python3.11/site-packages | grep -c '^six' || true",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("24.1"), "{out}");
    assert!(out.contains("No module named 'six'"), "six is gone: {out}");
    assert!(
        out.trim_end().ends_with('0'),
        "nothing of six is left: {out}"
    );

    // A directory whose record is gone may hold anything: the next image starts from the base.
    let kept: Vec<_> = std::fs::read_dir(cache.path().join("venvs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    std::fs::remove_file(kept[0].join("record.json")).unwrap();
    std::fs::write(kept[0].join("venv/stray.txt"), "not from any build").unwrap();
    let third = build(dir.path(), cache.path(), "six==1.16.0\npackaging==24.1\n");
    let third_layers = layers(&third);
    assert_eq!(third_layers.len(), first_layers.len(), "{third_layers:?}");
    assert_eq!(
        third_layers[..third_layers.len() - 1],
        first_layers[..first_layers.len() - 1],
        "the base's layers, then a new full virtualenv layer"
    );
    let (code, out) = run(
        &third,
        "python -c 'import six, packaging; print(six.__version__, packaging.__version__)' && if test -e /opt/venv/stray.txt; then echo STRAY; else echo CLEAN; fi",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1.16.0 24.1"), "{out}");
    assert!(
        out.contains("CLEAN"),
        "nothing stray reaches the image: {out}"
    );

    let made = common::docker(&[
        "images",
        "-q",
        "--filter",
        "label=dev.ferry.project=env-layers",
    ]);
    for image in made
        .lines()
        .chain([first.as_str(), second.as_str(), third.as_str()])
    {
        let _ = Command::new("docker").args(["rmi", "-f", image]).output();
    }
}

#[test]
fn ctrl_c_while_uv_installs_leaves_no_container_no_image_and_no_record() {
    if !common::have_uv() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let project = "env-layers-stop";
    std::fs::write(
        dir.path().join("ferry.yaml"),
        format!(
            "name: {project}\nenvironment:\n  bootstrap: bookworm\n  requirements: requirements.txt\ntrain:\n  command: mkdir -p out && echo x > out/x\n  outputs: [out/x]\n"
        ),
    )
    .unwrap();
    // pandas with numpy: seconds of installing and compiling, long enough to be caught.
    std::fs::write(dir.path().join("requirements.txt"), "pandas\n").unwrap();
    let installs = || -> std::collections::BTreeSet<String> {
        common::docker(&[
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            "label=dev.ferry.role=environment-install",
            "--filter",
            &format!("label=dev.ferry.project={project}"),
        ])
        .lines()
        .map(str::to_string)
        .collect()
    };
    // Only this build's install counts (another run of this test may have left one behind).
    let before = installs();
    let installing = || installs().difference(&before).next().is_some();
    let mut child = common::ferry_cmd(dir.path(), &["build"])
        .env("FERRY_CACHE_DIR", cache.path())
        .env_remove("FERRY_INSTALLER")
        .env_remove("FERRY_ENV_IMAGE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !installing() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(600),
            "timed out waiting for the install container"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "ferry ended before installing"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(child.wait().unwrap().code(), Some(130));

    assert!(!installing(), "the install container is removed");
    let images = common::docker(&[
        "images",
        "-q",
        "--filter",
        &format!("label=dev.ferry.project={project}"),
    ]);
    assert!(images.is_empty(), "no image: {images}");
    let kept: Vec<_> = std::fs::read_dir(cache.path().join("venvs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        kept.iter().all(|k| !k.join("record.json").exists()),
        "a cut-off install leaves no record: {kept:?}"
    );

    // The next build starts from scratch and finishes.
    let id = build(dir.path(), cache.path(), "pandas\n");
    let (code, out) = run(&id, "python -c 'import pandas; print(pandas.__version__)'");
    assert_eq!(code, 0, "{out}");
    let made = common::docker(&[
        "images",
        "-q",
        "--filter",
        &format!("label=dev.ferry.project={project}"),
    ]);
    for image in made.lines() {
        let _ = Command::new("docker").args(["rmi", "-f", image]).output();
    }
}

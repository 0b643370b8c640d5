//! The `ferry-ml` wheel as a user installs it: into a fresh virtualenv with pip (which brings
//! `onnxruntime` from the configured index), and then only that install — its `ferry`, its
//! `ferry-serve`, the ONNX Runtime of its environment — runs `ferry doctor`, `ferry serve
//! --native`, and the churn walkthrough (train, serve, predict, and a promotion that builds and
//! pushes the serving image).
//!
//! Opt-in, since the wheel is a release build of many minutes: `maturin build --release`, then
//! `FERRY_TEST_WHEEL=target/wheels/ferry_ml-….whl cargo test --test wheel` (`.ci/run` does
//! both). Needs what tests/examples.rs needs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

mod common;
use common::fake_api::FakeApi;
use common::registry::Registry;

fn wheel() -> Option<PathBuf> {
    match std::env::var_os("FERRY_TEST_WHEEL") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            eprintln!(
                "skipped: the ferry-ml wheel test (set FERRY_TEST_WHEEL to a wheel built with `maturin build --release`)"
            );
            None
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A command of the venv's ferry with nothing of this checkout's: no `ORT_DYLIB_PATH`, no
/// `FERRY_SERVE_BINARY`, and a PATH that starts with the venv.
fn venv_ferry(venv: &Path, dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(venv.join("bin/ferry"));
    c.args(args);
    only_the_venv(&mut c, venv, dir);
    c
}

/// What a command sees of this machine: the venv first on PATH, and none of the variables
/// that would point ferry at this checkout's ONNX Runtime or server binary.
fn only_the_venv(c: &mut Command, venv: &Path, dir: &Path) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![venv.join("bin")];
    paths.extend(std::env::split_paths(&path));
    c.current_dir(dir)
        .env("PATH", std::env::join_paths(paths).unwrap())
        .env("NO_COLOR", "1")
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("FERRY_SERVE_BINARY")
        .env_remove("FERRY_ENV");
}

fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wheel_alone_runs_doctor_native_serving_and_the_churn_walkthrough() {
    let Some(wheel) = wheel() else {
        return;
    };
    let wheel = std::fs::canonicalize(&wheel).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("wheel-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let venv = dir.path().join("venv");
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "-q"])
        .arg(&wheel));
    for bin in ["ferry", "ferry-serve"] {
        assert!(
            venv.join("bin").join(bin).is_file(),
            "the wheel has no {bin}"
        );
    }

    // doctor: ONNX Runtime from the venv's onnxruntime package, ferry-serve beside ferry.
    let out = run(&mut venv_ferry(&venv, dir.path(), &["doctor"]));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let venv_s = venv.display().to_string();
    assert!(
        text.lines().any(|l| l.contains("onnxruntime")
            && l.contains(&venv_s)
            && l.contains("site-packages/onnxruntime/capi")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.contains("serving binary")
            && l.contains(&format!("{venv_s}/bin/ferry-serve"))
            && l.contains("server only")),
        "{text}"
    );
    let out = run(&mut venv_ferry(&venv, dir.path(), &["--version"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = run(Command::new(venv.join("bin/ferry-serve")).arg("--version"));
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));

    // serve --native: the template's model answers the template's request.
    let project = dir.path().join("native");
    std::fs::create_dir_all(project.join("artifacts")).unwrap();
    std::fs::copy(
        common::fixture("churn_raw.onnx"),
        project.join("artifacts/model.onnx"),
    )
    .unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/churn/request.json"),
        project.join("request.json"),
    )
    .unwrap();
    std::fs::write(
        project.join("ferry.yaml"),
        "name: wheel-native\nenvironment:\n  bootstrap: bookworm\nserve:\n  model: artifacts/model.onnx\n",
    )
    .unwrap();
    let port = common::free_port();
    let _server = Kill(
        venv_ferry(
            &venv,
            &project,
            &["serve", "--native", "--port", &port.to_string()],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let outputs = loop {
        let out = venv_ferry(
            &venv,
            &project,
            &["predict", "request.json", "--url", &url, "--json"],
        )
        .output()
        .unwrap();
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            break v["outputs"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "the native server did not answer: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        outputs.as_array().is_some_and(|o| !o.is_empty()),
        "{outputs}"
    );

    // The churn walkthrough with the venv's ferry; its promotion builds and pushes the serving
    // image, which must carry the venv's ferry-serve.
    let registry = Registry::start(false).await;
    let fake = FakeApi::with_store().await;
    let work = dir.path().join("walkthrough");
    std::fs::create_dir_all(&work).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/churn/walkthrough.sh");
    // Serving images of earlier runs of the walkthrough go first, so the one checked below is
    // the one this run built.
    for old in common::docker(&[
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "ferry/churn-demo-serve",
    ])
    .lines()
    {
        common::docker(&["rmi", "--force", old]);
    }
    let mut cmd = Command::new("bash");
    cmd.arg(&script);
    only_the_venv(&mut cmd, &venv, &work);
    cmd.env("FERRY", venv.join("bin/ferry"))
        .env("WORKDIR", &work)
        .env("SERVE_PORT", common::free_port().to_string());
    if let Some(r) = &registry {
        cmd.env("STAGING_REGISTRY", format!("{}/ml", r.host))
            .env("KUBECONFIG", fake.kubeconfig());
    } else {
        eprintln!("skipped: the promote step of the walkthrough (no docker-registry)");
    }
    let out = cmd.output().unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    println!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the churn walkthrough failed");
    assert!(work.join("churn-demo/artifacts/model.onnx").is_file());

    // The serving image the walkthrough built carries the venv's ferry-serve, byte for byte.
    let images = common::docker(&[
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "ferry/churn-demo-serve",
    ]);
    let image = images.lines().next().expect("no serving image was built");
    let container = common::docker(&["create", image]);
    let copied = dir.path().join("ferry-in-image");
    let cp = Command::new("docker")
        .args(["cp", &format!("{container}:/usr/bin/ferry")])
        .arg(&copied)
        .output()
        .unwrap();
    common::docker(&["rm", &container]);
    assert!(cp.status.success(), "{cp:?}");
    assert_eq!(sha256(&copied), sha256(&venv.join("bin/ferry-serve")));
}

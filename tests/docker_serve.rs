//! `ferry serve` against the real Docker engine: the churn template with a trained model, served
//! from the FROM-scratch serving image, queried with `ferry predict` and plain HTTP.
//! Needs Docker and ONNX Runtime (`./install.sh`); no base image, no registry.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

mod common;
use common::{docker, ferry, free_port};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn ok(dir: &Path, args: &[&str]) -> Output {
    let out = ferry(dir, args);
    assert!(
        out.status.success(),
        "ferry {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (body.to_string(), code.to_string())
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/server")
}

/// A churn project whose model is the committed fixture the template's train.py made (one
/// input per raw column).
fn project(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = ferry(
        dir.path(),
        &["init", name, "--template", "churn", "--offline"],
    );
    assert!(out.status.success(), "{out:?}");
    let root = dir.path().join(name);
    std::fs::create_dir_all(root.join("artifacts")).unwrap();
    std::fs::copy(
        fixtures().join("churn_raw.onnx"),
        root.join("artifacts/model.onnx"),
    )
    .unwrap();
    (dir, root)
}

/// The IPv4 addresses listening on a TCP port of this machine (from /proc/net/tcp).
fn listeners(port: u16) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let mut found: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let (addr, p) = cols.get(1)?.split_once(':')?;
            // 0A: LISTEN
            (cols.get(3) == Some(&"0A") && u16::from_str_radix(p, 16).ok()? == port).then(|| {
                let a = u32::from_str_radix(addr, 16).unwrap().to_le_bytes();
                std::net::Ipv4Addr::from(a).to_string()
            })
        })
        .collect();
    found.dedup();
    found
}

#[test]
fn serve_predict_logs_down() {
    let _g = serial();
    let (_dir, root) = project("serve-demo");
    let port = free_port();
    let out = ok(
        &root,
        &["serve", "--detach", "--json", "--port", &port.to_string()],
    );
    let endpoint: Value = serde_json::from_slice(&out.stdout).unwrap();
    let url = endpoint["url"].as_str().unwrap().to_string();
    assert_eq!(url, format!("http://127.0.0.1:{port}"));
    let image = endpoint["image"].as_str().unwrap().to_string();
    assert!(image.starts_with("ferry/serve-demo-serve:"), "{image}");

    // Ready, metadata from the ONNX model.
    let (_, code) = curl(&[&format!("{url}/v2/health/ready")]);
    assert_eq!(code, "200");
    let (meta, code) = curl(&[&format!("{url}/v2/models/serve-demo")]);
    assert_eq!(code, "200", "{meta}");
    let meta: Value = serde_json::from_str(&meta).unwrap();
    let inputs = meta["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 78, "one input per raw column");
    assert_eq!(inputs[0]["name"], "plan");
    assert_eq!(inputs[0]["datatype"], "BYTES");
    assert_eq!(inputs[0]["shape"], serde_json::json!([-1, 1]));

    // The template's example request, through `ferry predict`, as JSON.
    let out = ok(&root, &["predict", "request.json", "--json"]);
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let probs = answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "probabilities")
        .expect("probabilities output")["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(probs.len(), 4, "two customers, two classes");
    for pair in probs.chunks(2) {
        assert!((pair[0] + pair[1] - 1.0).abs() < 1e-5, "{probs:?}");
    }

    // The data as it is: the request's first customer is the first row of customers.csv, and
    // `--csv` fills every input from the column of its name (the id and label left aside).
    let data = std::fs::read_to_string(root.join("data/customers.csv")).unwrap();
    let first: Vec<&str> = data.lines().take(2).collect();
    std::fs::write(root.join("one.csv"), first.join("\n") + "\n").unwrap();
    let out = ok(&root, &["predict", "--csv", "one.csv"]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(table.starts_with("row"), "{table}");
    assert!(
        table.contains(&format!("{:.4}", probs[1])),
        "same probability as the JSON request: {table}"
    );
    let out = ferry(&root, &["predict", "--values", "1,2,3"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("78 inputs"),
        "--values cannot fill 78 inputs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(root.join("short.csv"), "plan,region\nbasic,north\n").unwrap();
    let out = ferry(&root, &["predict", "--csv", "short.csv"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("76 columns are missing: monthly_price, tenure_months, contract"),
        "a missing column is named: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Least privilege, loopback only.
    let id = endpoint["container"].as_str().unwrap();
    let inspect = docker(&[
        "inspect",
        "-f",
        "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}} {{.HostConfig.CapDrop}} {{.HostConfig.SecurityOpt}}",
        id,
    ]);
    assert_eq!(inspect, "65532:65532 true [ALL] [no-new-privileges]");
    // This engine runs on this kernel, so the server shares the host's network (no proxy) and
    // listens on loopback only.
    assert_eq!(
        docker(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", id]),
        "host"
    );
    assert_eq!(listeners(port), vec!["127.0.0.1".to_string()]);

    let out = ok(&root, &["logs", "serve"]);
    assert!(!out.stdout.is_empty(), "the server logged something");

    // Serving again with nothing changed reuses the image; on a bridge the port is published
    // on 127.0.0.1 only.
    ok(&root, &["down"]);
    let out = ok(
        &root,
        &[
            "serve",
            "--detach",
            "--json",
            "--network",
            "bridge",
            "--port",
            &port.to_string(),
        ],
    );
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["image"].as_str().unwrap(), image);
    let again_id = again["container"].as_str().unwrap();
    let ports = docker(&["port", again_id]);
    assert!(ports.contains(&format!("127.0.0.1:{port}")), "{ports}");
    assert!(!ports.contains("0.0.0.0"), "{ports}");
    let (_, code) = curl(&[&format!("{url}/v2/health/ready")]);
    assert_eq!(code, "200");

    // SIGTERM (docker stop) is a clean, quick exit.
    let stopped = Command::new("docker")
        .args(["stop", "-t", "20", again["container"].as_str().unwrap()])
        .output()
        .unwrap();
    assert!(stopped.status.success());
    let code = docker(&[
        "inspect",
        "-f",
        "{{.State.ExitCode}}",
        again["container"].as_str().unwrap(),
    ]);
    assert_eq!(code, "0");
    ok(&root, &["down"]);
    assert!(
        docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=dev.ferry.root={}", root.display())
        ])
        .is_empty()
    );
    let _ = docker(&["rmi", &image]);
}

#[test]
fn a_model_that_is_not_onnx_builds_no_image() {
    let _g = serial();
    let (_dir, root) = project("broken-model");
    std::fs::write(root.join("artifacts/model.onnx"), "this is not a model").unwrap();
    let before = docker(&["images", "-q", "ferry/broken-model-serve"]);
    let out = ferry(&root, &["serve", "--detach"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("artifacts/model.onnx"),
        "names the file: {err}"
    );
    assert!(
        err.to_lowercase().contains("protobuf") || err.contains("ONNX Runtime"),
        "{err}"
    );
    assert_eq!(
        docker(&["images", "-q", "ferry/broken-model-serve"]),
        before
    );
}

#[test]
fn serving_without_a_trained_model_says_to_train() {
    let _g = serial();
    let (_dir, root) = project("untrained");
    std::fs::remove_file(root.join("artifacts/model.onnx")).unwrap();
    let out = ferry(&root, &["serve", "--detach"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist (serve.model)"), "{err}");
    assert!(err.contains("ferry train"), "{err}");
}

#[test]
fn a_running_server_survives_a_busy_port_a_repeat_and_other_settings() {
    let _g = serial();
    let (_dir, root) = project("serve-again");
    let port = free_port();
    let p = port.to_string();
    let json = |out: Output| -> Value { serde_json::from_slice(&out.stdout).unwrap() };
    let first = json(ok(&root, &["serve", "--detach", "--json", "--port", &p]));
    assert_eq!(first["already_running"], false);
    let id = first["container"].as_str().unwrap().to_string();
    let url = first["url"].as_str().unwrap().to_string();
    let containers = || {
        docker(&[
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label=dev.ferry.root={}", root.display()),
        ])
    };
    let survives = |why: &str| {
        assert_eq!(containers(), id, "{why}: the same container");
        let (_, code) = curl(&[&format!("{url}/v2/health/ready")]);
        assert_eq!(code, "200", "{why}: the server answers");
    };
    survives("started");

    // The same command again reports the running server and touches nothing.
    let again = json(ok(&root, &["serve", "--detach", "--json", "--port", &p]));
    assert_eq!(again["already_running"], true);
    assert_eq!(again["url"], first["url"]);
    assert_eq!(again["container"], first["container"]);
    assert_eq!(again["image"], first["image"]);
    survives("a repeated start");

    // A busy port is refused before the running server is touched, --restart or not.
    let holder = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let busy = holder.local_addr().unwrap().port().to_string();
    for extra in [None, Some("--restart")] {
        let mut args = vec!["serve", "--detach", "--port", &busy];
        args.extend(extra);
        let out = ferry(&root, &args);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("port {busy} on 127.0.0.1 is already in use")),
            "{err}"
        );
        survives("a busy port");
    }
    drop(holder);

    // Other settings are refused, naming each difference, until --restart replaces it.
    let other = free_port();
    let o = other.to_string();
    let out = ferry(
        &root,
        &["serve", "--detach", "--port", &o, "--network", "bridge"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("port: {port} → {other}")), "{err}");
    assert!(err.contains("network: host → bridge"), "{err}");
    assert!(err.contains("--restart"), "{err}");
    survives("other settings without --restart");

    let replaced = json(ok(
        &root,
        &["serve", "--detach", "--json", "--port", &o, "--restart"],
    ));
    assert_eq!(replaced["already_running"], false);
    let new_id = replaced["container"].as_str().unwrap();
    assert_ne!(new_id, id);
    assert_eq!(containers(), new_id, "the old server is gone");
    let (_, code) = curl(&[&format!("http://127.0.0.1:{other}/v2/health/ready")]);
    assert_eq!(code, "200");

    ok(&root, &["down"]);
    assert!(containers().is_empty());
}

/// Which scale model answered (Y = X * k): k.
fn scale_factor(url: &str) -> Option<f64> {
    let (body, code) = curl(&[
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}"#,
        &format!("{url}/v2/models/live/infer"),
    ]);
    if code != "200" {
        return None;
    }
    let answer: Value = serde_json::from_str(&body).ok()?;
    answer["outputs"][0]["data"][0].as_f64()
}

#[test]
fn a_model_written_while_serving_is_served_without_a_rebuild() {
    use std::os::unix::fs::PermissionsExt;
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    // The server runs as its image's own user, which reads the mounted project like anyone.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("live");
    std::fs::create_dir_all(root.join("artifacts")).unwrap();
    std::fs::write(
        root.join("ferry.yaml"),
        "name: live\nenvironment: { base: python:3.11-slim }\nserve:\n  model: artifacts/model.onnx\n  log: { sample: 1 }\n",
    )
    .unwrap();
    let model = root.join("artifacts/model.onnx");
    std::fs::copy(fixtures().join("scale1.onnx"), &model).unwrap();
    let port = free_port();
    let out = ok(
        &root,
        &["serve", "--detach", "--json", "--port", &port.to_string()],
    );
    let endpoint: Value = serde_json::from_slice(&out.stdout).unwrap();
    let url = endpoint["url"].as_str().unwrap().to_string();
    let image = endpoint["image"].as_str().unwrap().to_string();
    assert_eq!(scale_factor(&url), Some(1.0));

    // As a training run leaves it: written beside the old file, renamed over it.
    let aside = root.join("artifacts/.model.onnx.new");
    std::fs::copy(fixtures().join("scale2.onnx"), &aside).unwrap();
    std::fs::rename(&aside, &model).unwrap();
    let written = std::time::Instant::now();
    let deadline = written + std::time::Duration::from_secs(30);
    loop {
        let k = scale_factor(&url);
        if k == Some(2.0) {
            break;
        }
        assert_eq!(k, Some(1.0), "the old model answers until the swap");
        assert!(
            std::time::Instant::now() < deadline,
            "the new model was not served"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    eprintln!(
        "the running server answered with the new model {} ms after it was written",
        written.elapsed().as_millis()
    );
    let (meta, _) = curl(&[&format!("{url}/v2/models/live")]);
    let meta: Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(
        meta["versions"][1],
        format!("sha256:{}", common::file_sha256(&model))
    );
    let out = ok(&root, &["logs", "serve"]);
    let logs =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains("now serving sha256"), "{logs}");
    // serve.log: every request in the project's logs/traffic.jsonl, under the file that answered.
    let traffic = root.join("logs/traffic.jsonl");
    let old_sha = common::file_sha256(&fixtures().join("scale1.onnx"));
    let new_sha = common::file_sha256(&model);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&traffic).unwrap_or_default();
        let records: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let by = |sha: &str| records.iter().filter(|r| r["sha256"] == sha).count();
        if by(&old_sha) >= 1 && by(&new_sha) >= 1 {
            assert!(records.iter().all(|r| r["model"] == "live"), "{text}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no records of both models in {}: {text}",
            traffic.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ok(&root, &["down"]);
    let _ = docker(&["rmi", &image]);
}

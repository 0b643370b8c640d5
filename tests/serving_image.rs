//! The serving image against the real Docker engine: built `FROM scratch` from the test's ferry
//! binary, ONNX Runtime and their shared libraries; non-root; no shell; tagged by content.
//!
//! Needs a running Docker engine and ONNX Runtime (`./install.sh`). Tests run one at a time
//! (image builds on a small machine only slow each other down) and remove every image they make.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use ferry::images::serving::{
    ServingImageRequest, ServingModel, ensure_serving_image, library_closure, serving_context,
};
use ferry::server::config::ServingConfig;
use ferry::ui::Ui;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const MODEL_PATH: &str = "/models/tiny/default/model.onnx";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

fn runtime() -> PathBuf {
    ferry::onnx::runtime_library()
        .unwrap_or_else(|e| panic!("these tests need ONNX Runtime (run ./install.sh): {e}"))
}

fn config(port: u16) -> ServingConfig {
    serde_json::from_value(serde_json::json!({
        "port": port,
        "models": [{
            "name": "tiny",
            "variants": [{"name": "default", "path": MODEL_PATH, "weight": 1}]
        }]
    }))
    .unwrap()
}

fn models(host: &Path) -> Vec<ServingModel> {
    vec![ServingModel {
        host_path: host.to_path_buf(),
        image_path: MODEL_PATH.to_string(),
    }]
}

/// A project name no other test (or run) uses, so cleanup by name is exact.
fn project(test: &str) -> String {
    format!("servetest-{test}-{}", std::process::id())
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().unwrap()
}

fn serve_images() -> Vec<String> {
    let out = docker(&[
        "images",
        "--filter",
        "reference=ferry/*-serve",
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ]);
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// Removes the project's images when the test ends, passed or not.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let out = docker(&[
            "images",
            "--filter",
            &format!("reference=ferry/{}-serve", self.0),
            "--format",
            "{{.Repository}}:{{.Tag}}",
        ]);
        for tag in String::from_utf8_lossy(&out.stdout).lines() {
            docker(&["rmi", "-f", tag]);
        }
    }
}

/// Changes one byte of a copy of tiny.onnx where ONNX Runtime does not care: the first letter of
/// its producer name ("ferry-tests" at offset 4 becomes "gerry-tests").
fn flip_producer_byte(model: &Path) {
    let mut bytes = std::fs::read(model).unwrap();
    assert_eq!(&bytes[4..15], b"ferry-tests");
    bytes[4] = b'g';
    std::fs::write(model, bytes).unwrap();
}

/// Builds through the library on a runtime of its own, so tests stay plain (and can hold the
/// serial lock without holding it across an await).
fn build(
    project: &str,
    model: &Path,
    port: u16,
) -> Result<ferry::images::build::Built, ferry::images::build::ImageError> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let d = rt
        .block_on(ferry::docker::connect())
        .expect("docker engine");
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_ferry"));
    let runtime = runtime();
    let models = models(model);
    let config = config(port);
    let req = ServingImageRequest {
        project,
        binary: &binary,
        runtime: &runtime,
        models: &models,
        config: &config,
    };
    rt.block_on(ensure_serving_image(&d, &req, &Ui::silent()))
}

#[test]
fn closure_of_onnx_runtime_is_complete() {
    let rt = runtime();
    let libs = library_closure(&[&rt]).unwrap();
    let names: Vec<String> = libs
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in ["libstdc++.so.6", "libgcc_s.so.1", "libc.so.6", "libm.so.6"] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {libs:?}");
    }
    assert!(
        names.iter().any(|n| n.starts_with("ld-linux")),
        "no loader: {libs:?}"
    );
    for p in &libs {
        assert!(
            p.is_absolute() && p.is_file(),
            "{} does not exist",
            p.display()
        );
    }
    // One copy of the loader, even though both libc and ONNX Runtime name it in DT_NEEDED.
    assert_eq!(
        names.iter().filter(|n| n.starts_with("ld-linux")).count(),
        1,
        "{libs:?}"
    );
}

#[test]
fn a_missing_library_is_named_with_who_needs_it() {
    // A copy of a real executable whose DT_NEEDED libc.so.6 is renamed to a library that does
    // not exist (same length, so the ELF stays valid).
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("needs-missing");
    let mut bytes = std::fs::read(env!("CARGO_BIN_EXE_ferry")).unwrap();
    let from = b"libc.so.6\0";
    let to = b"libq.so.9\0";
    let mut replaced = 0;
    for i in 0..bytes.len() - from.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            replaced += 1;
        }
    }
    assert!(replaced > 0);
    std::fs::write(&exe, bytes).unwrap();
    let err = library_closure(&[&exe]).unwrap_err().to_string();
    assert!(err.contains("libq.so.9"), "{err}");
    assert!(err.contains(&exe.display().to_string()), "{err}");
}

#[test]
fn the_context_is_deterministic_and_follows_the_model() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::copy(fixture("tiny.onnx"), &model).unwrap();
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_ferry"));
    let runtime = runtime();
    let config = config(8080);
    let ms = models(&model);
    let req = ServingImageRequest {
        project: "det",
        binary: &binary,
        runtime: &runtime,
        models: &ms,
        config: &config,
    };
    let a = serving_context(&req).unwrap();
    let b = serving_context(&req).unwrap();
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.bytes, b.bytes);
    assert_eq!(a.tag, format!("ferry/det-serve:{}", &a.digest[..12]));

    // Names, modes and contents of the root filesystem.
    let mut entries = std::collections::BTreeMap::new();
    let mut ar = tar::Archive::new(a.bytes.as_slice());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mode = e.header().mode().unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        entries.insert(name, (mode, data));
    }
    assert_eq!(entries["rootfs/usr/bin/ferry"].0, 0o755);
    assert_eq!(
        entries["rootfs/usr/bin/ferry"].1,
        std::fs::read(&binary).unwrap()
    );
    assert_eq!(
        entries["rootfs/usr/lib/ferry/libonnxruntime.so"].1,
        std::fs::read(&runtime).unwrap()
    );
    assert_eq!(
        entries[&format!("rootfs{MODEL_PATH}")].1,
        std::fs::read(&model).unwrap()
    );
    assert_eq!(entries[&format!("rootfs{MODEL_PATH}")].0, 0o644);
    let served: ServingConfig =
        serde_json::from_slice(&entries["rootfs/etc/ferry/serving.json"].1).unwrap();
    assert_eq!(served, config);
    let passwd = String::from_utf8_lossy(&entries["rootfs/etc/passwd"].1).into_owned();
    assert!(passwd.contains("ferry:x:65532:65532:"), "{passwd}");
    assert!(
        entries
            .keys()
            .any(|k| k.starts_with("rootfs/lib64/ld-linux")),
        "{:?}",
        entries.keys()
    );
    assert!(
        !entries.keys().any(|k| k.ends_with("/sh")),
        "no shell in the image"
    );

    // One changed byte of the model: another tag.
    flip_producer_byte(&model);
    let c = serving_context(&req).unwrap();
    assert_ne!(c.digest, a.digest);
}

#[test]
fn image_runs_the_binary_as_non_root_without_a_shell() {
    let _s = serial();
    let project = project("run");
    let _cleanup = Cleanup(project.clone());
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::copy(fixture("tiny.onnx"), &model).unwrap();

    let first = build(&project, &model, 8080).unwrap();
    assert!(first.built);
    assert!(first.tag.starts_with(&format!("ferry/{project}-serve:")));
    let inspect = |fmt: &str| {
        let out = docker(&["image", "inspect", "-f", fmt, &first.tag]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(inspect("{{.Config.User}}"), "65532:65532");
    assert_eq!(
        inspect("{{index .Config.Labels \"dev.ferry.project\"}}"),
        project
    );
    assert_eq!(
        inspect("{{json .Config.Entrypoint}}"),
        r#"["/usr/bin/ferry","serve-model","--config","/etc/ferry/serving.json"]"#
    );
    assert!(inspect("{{json .Config.ExposedPorts}}").contains("8080/tcp"));

    // The binary and its libraries load in the image, on a read-only root filesystem.
    let out = docker(&[
        "run",
        "--rm",
        "--read-only",
        "--network",
        "none",
        "--entrypoint",
        "/usr/bin/ferry",
        &first.tag,
        "--version",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ferry {}", env!("CARGO_PKG_VERSION"))
    );

    // ONNX Runtime is dlopen()ed only when serving; have the image's own loader resolve its
    // dependencies now (`ld.so --list` fails on any it cannot find).
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_ferry"));
    let loader = library_closure(&[&binary])
        .unwrap()
        .into_iter()
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("ld-"))
        })
        .expect("a dynamically linked ferry has an ELF interpreter");
    let out = docker(&[
        "run",
        "--rm",
        "--read-only",
        "--network",
        "none",
        "--entrypoint",
        &loader.to_string_lossy(),
        &first.tag,
        "--list",
        "/usr/lib/ferry/libonnxruntime.so",
    ]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !listed.contains("not found"),
        "{listed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(listed.contains("libstdc++.so.6 => /"), "{listed}");

    // No shell to run anything else with.
    let out = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/bin/sh",
        &first.tag,
        "-c",
        "true",
    ]);
    assert!(!out.status.success(), "the image has a shell");

    // Same inputs: same tag, nothing built.
    let second = build(&project, &model, 8080).unwrap();
    assert_eq!(second.tag, first.tag);
    assert_eq!(second.id, first.id);
    assert!(!second.built);

    // One byte of the model changed: another tag, built.
    flip_producer_byte(&model);
    let third = build(&project, &model, 8080).unwrap();
    assert_ne!(third.tag, first.tag);
    assert!(third.built);
}

#[test]
fn a_model_that_is_not_onnx_builds_nothing() {
    let _s = serial();
    let project = project("bad");
    let _cleanup = Cleanup(project.clone());
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("not-a-model.onnx");
    std::fs::write(&model, "hello, not protobuf").unwrap();
    let before = serve_images();
    let err = build(&project, &model, 8080).unwrap_err().to_string();
    assert!(err.contains("not-a-model.onnx"), "{err}");
    assert!(err.contains("ONNX Runtime"), "{err}");
    assert_eq!(serve_images(), before, "an image was built: {err}");
}

#[test]
fn a_zipmap_model_is_refused_with_the_export_fix() {
    let _s = serial();
    let project = project("zipmap");
    let _cleanup = Cleanup(project.clone());
    let before = serve_images();
    let err = build(&project, &fixture("zipmap.onnx"), 8080)
        .unwrap_err()
        .to_string();
    assert!(err.contains("zipmap.onnx"), "{err}");
    assert!(err.contains("probabilities"), "{err}");
    assert!(err.contains(r#"{"zipmap": False}"#), "{err}");
    assert_eq!(serve_images(), before);
}

#[test]
fn a_config_naming_a_path_with_no_model_is_refused() {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_ferry"));
    let runtime = runtime();
    let config = config(8080);
    let ms = vec![ServingModel {
        host_path: fixture("tiny.onnx"),
        image_path: "/models/elsewhere.onnx".into(),
    }];
    let req = ServingImageRequest {
        project: "x",
        binary: &binary,
        runtime: &runtime,
        models: &ms,
        config: &config,
    };
    let err = serving_context(&req).err().expect("must fail").to_string();
    assert!(err.contains(MODEL_PATH), "{err}");
}

/// Stops and removes the container when the test ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        docker(&["rm", "-f", &self.0]);
    }
}

/// Status and body of a request to 127.0.0.1:port, or None if nothing answers yet.
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    let status = reply.split_whitespace().nth(1)?.parse().ok()?;
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

#[test]
fn the_container_serves_the_model_on_a_published_port() {
    let _s = serial();
    let project = project("health");
    let _cleanup = Cleanup(project.clone());
    let built = build(&project, &fixture("tiny.onnx"), 8080).unwrap();
    let name = format!("{project}-server");
    let out = docker(&[
        "run",
        "-d",
        "--read-only",
        "--name",
        &name,
        "-p",
        "127.0.0.1::8080",
        &built.tag,
    ]);
    let _container = Container(name.clone());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = docker(&["port", &name, "8080/tcp"]);
    let mapped = String::from_utf8_lossy(&out.stdout).into_owned();
    let port: u16 = mapped
        .lines()
        .find_map(|l| l.strip_prefix("127.0.0.1:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no port published on 127.0.0.1: {mapped:?}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut last = None;
    while std::time::Instant::now() < deadline {
        last = http(port, "GET", "/v2/health/ready", "").map(|(status, _)| status);
        if last == Some(200) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let logs = || {
        let l = docker(&["logs", &name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&l.stdout),
            String::from_utf8_lossy(&l.stderr)
        )
    };
    assert_eq!(last, Some(200), "not ready within 30s; logs:\n{}", logs());

    // ONNX Runtime loads and computes inside the image: tiny.onnx is Y = X * 2.
    let request = r#"{"inputs":[{"name":"X","datatype":"FP32","shape":[1,3],"data":[1,2,3]}]}"#;
    let (status, body) = http(port, "POST", "/v2/models/tiny/infer", request)
        .unwrap_or_else(|| panic!("no answer to infer; logs:\n{}", logs()));
    assert_eq!(status, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("infer reply is not JSON ({e}): {body:?}"));
    let y = &reply["outputs"][0];
    assert_eq!(y["name"], "Y", "{reply}");
    assert_eq!(y["data"], serde_json::json!([2.0, 4.0, 6.0]), "{reply}");
}

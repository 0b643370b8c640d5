//! The serving image against the real Docker engine: written by ferry from the test's ferry
//! binary, ONNX Runtime and their shared libraries, and loaded; non-root; no shell; tagged by
//! content; the same image ID and registry digest every time it is made from the same files.
//!
//! Needs a running Docker engine and ONNX Runtime (`./install.sh`); the push test also needs
//! Debian's `docker-registry` and says it is skipped without it. Tests run one at a time (image
//! builds on a small machine only slow each other down) and remove every image they make.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use ferry::images::serving::{
    ServingContext, ServingImageRequest, ServingModel, ensure_serving_image, library_closure,
    serving_context,
};
use ferry::server::config::ServingConfig;
use ferry::ui::Ui;
use sha2::{Digest, Sha256};

mod common;

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

/// What the tests build: the test's ferry binary, ONNX Runtime, `model` as the one model.
struct Inputs {
    project: String,
    binary: PathBuf,
    runtime: PathBuf,
    models: Vec<ServingModel>,
    config: ServingConfig,
}

impl Inputs {
    fn new(project: &str, model: &Path, port: u16) -> Inputs {
        Inputs {
            project: project.to_string(),
            binary: PathBuf::from(env!("CARGO_BIN_EXE_ferry")),
            runtime: runtime(),
            models: models(model),
            config: config(port),
        }
    }

    fn request(&self) -> ServingImageRequest<'_> {
        ServingImageRequest {
            project: &self.project,
            binary: &self.binary,
            runtime: &self.runtime,
            models: &self.models,
            config: &self.config,
        }
    }

    fn context(&self) -> ServingContext {
        serving_context(&self.request()).unwrap()
    }
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
    let inputs = Inputs::new(project, model, port);
    rt.block_on(ensure_serving_image(&d, &inputs.request(), &Ui::silent()))
}

/// The engine's diff IDs of an image's layers, bottom first.
fn engine_layers(reference: &str) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let d = rt
        .block_on(ferry::docker::connect())
        .expect("docker engine");
    let image = rt.block_on(d.inspect_image(reference)).unwrap();
    image.root_fs.and_then(|r| r.layers).unwrap_or_default()
}

/// Removes an image by tag, as if it had never been made.
fn remove(tag: &str) {
    let out = docker(&["rmi", "-f", tag]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        !docker(&["image", "inspect", tag]).status.success(),
        "{tag} is still there"
    );
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A writer that only hashes, to compare archives of hundreds of MB without keeping two.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Each entry of a tar: name → (mode, content).
fn tar_entries(bytes: &[u8]) -> std::collections::BTreeMap<String, (u32, Vec<u8>)> {
    let mut entries = std::collections::BTreeMap::new();
    let mut ar = tar::Archive::new(bytes);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let name = if e.header().entry_type().is_dir() && !name.ends_with('/') {
            format!("{name}/")
        } else {
            name
        };
        let h = e.header();
        assert_eq!(
            (h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()),
            (0, 0, 0),
            "{name}: fixed owner and time"
        );
        let mode = h.mode().unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        assert!(
            entries.insert(name.clone(), (mode, data)).is_none(),
            "{name} twice"
        );
    }
    entries
}

/// Every entry's parent directories come before it in the same tar.
fn assert_well_formed(names: &[String]) {
    let mut seen = std::collections::BTreeSet::new();
    for name in names {
        let trimmed = name.trim_end_matches('/');
        if let Some((parent, _)) = trimmed.rsplit_once('/') {
            assert!(
                seen.contains(&format!("{parent}/")),
                "{name} comes before its directory {parent}/ in {names:?}"
            );
        }
        seen.insert(name.clone());
    }
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
fn the_archive_is_deterministic_and_follows_the_model() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::copy(fixture("tiny.onnx"), &model).unwrap();
    let inputs = Inputs::new("det", &model, 8080);
    let a = inputs.context();
    let b = inputs.context();
    assert_eq!(a.id, b.id);
    assert_eq!(a.config, b.config);
    assert_eq!(
        a.id,
        sha256(&a.config),
        "the image ID is the config's digest"
    );
    assert_eq!(
        a.tag,
        format!("ferry/det-serve:{}", &a.id["sha256:".len()..][..12])
    );

    let mut archive = Vec::new();
    a.write_archive(&mut archive).unwrap();
    let mut again = HashWriter(Sha256::new());
    b.write_archive(&mut again).unwrap();
    assert_eq!(
        sha256(&archive),
        format!("sha256:{}", hex::encode(again.0.finalize())),
        "the same files give the same archive, byte for byte"
    );

    // The layout `docker load` reads.
    let outer = tar_entries(&archive);
    let manifest: serde_json::Value = serde_json::from_slice(&outer["manifest.json"].1).unwrap();
    let id_hex = &a.id["sha256:".len()..];
    let layer_names: Vec<String> = a
        .layers
        .iter()
        .map(|l| format!("{}/layer.tar", &l.diff_id["sha256:".len()..]))
        .collect();
    assert_eq!(
        manifest,
        serde_json::json!([{
            "Config": format!("{id_hex}.json"),
            "RepoTags": [a.tag],
            "Layers": layer_names,
        }])
    );
    assert_eq!(outer[&format!("{id_hex}.json")].1, a.config);
    let config: serde_json::Value = serde_json::from_slice(&a.config).unwrap();
    assert_eq!(config["created"], "1970-01-01T00:00:00Z");
    assert_eq!(config["os"], "linux");
    assert_eq!(
        config["architecture"],
        match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        }
    );
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(config["config"]["Labels"]["dev.ferry.project"], "det");
    assert_eq!(config["config"]["Labels"]["dev.ferry.role"], "serving");
    for h in config["history"].as_array().unwrap() {
        assert_eq!(h["created"], "1970-01-01T00:00:00Z", "{h}");
    }
    let diff_ids: Vec<&str> = a.layers.iter().map(|l| l.diff_id.as_str()).collect();
    assert_eq!(config["rootfs"]["type"], "layers");
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!(diff_ids));
    for (layer, name) in a.layers.iter().zip(&layer_names) {
        let bytes = &outer[name].1;
        assert_eq!(sha256(bytes), layer.diff_id, "{name}");
        assert_eq!(bytes.len() as u64, layer.size, "{name}");
    }

    // What each layer holds: the runtime below, the model and its config on top, each a
    // well-formed tree of its own.
    let runtime_tar = &outer[&layer_names[0]].1;
    let model_tar = &outer[&layer_names[1]].1;
    let rt = tar_entries(runtime_tar);
    let names: Vec<String> = tar::Archive::new(runtime_tar.as_slice())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_well_formed(&names);
    assert_eq!(rt["usr/bin/ferry"].0, 0o755);
    assert_eq!(
        rt["usr/bin/ferry"].1,
        std::fs::read(&inputs.binary).unwrap()
    );
    assert_eq!(
        rt["usr/lib/ferry/libonnxruntime.so"].1,
        std::fs::read(&inputs.runtime).unwrap()
    );
    for dir in ["etc/", "usr/", "usr/bin/", "usr/lib/", "usr/lib/ferry/"] {
        assert_eq!(rt[dir].0, 0o755, "{dir}");
    }
    let passwd = String::from_utf8_lossy(&rt["etc/passwd"].1).into_owned();
    assert!(passwd.contains("ferry:x:65532:65532:"), "{passwd}");
    assert!(rt.contains_key("etc/group"));
    assert!(
        rt.keys().any(|k| k.starts_with("lib64/ld-linux")),
        "{:?}",
        rt.keys()
    );
    assert!(
        !rt.keys().any(|k| k.ends_with("/sh")),
        "no shell in the image"
    );
    assert!(
        !rt.keys()
            .any(|k| k.starts_with("models/") || k.starts_with("etc/ferry"))
    );

    let names: Vec<String> = tar::Archive::new(model_tar.as_slice())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_well_formed(&names);
    assert_eq!(
        names,
        [
            "etc/",
            "etc/ferry/",
            "etc/ferry/serving.json",
            "models/",
            "models/tiny/",
            "models/tiny/default/",
            "models/tiny/default/model.onnx",
        ]
    );
    let m = tar_entries(model_tar);
    let model_path = &MODEL_PATH[1..];
    assert_eq!(m[model_path].1, std::fs::read(&model).unwrap());
    assert_eq!(m[model_path].0, 0o644);
    let served: ServingConfig = serde_json::from_slice(&m["etc/ferry/serving.json"].1).unwrap();
    assert_eq!(served, inputs.config);
    drop(outer);
    drop(archive);

    // One changed byte of the model: another image, in which only the model layer differs.
    flip_producer_byte(&model);
    let c = inputs.context();
    assert_ne!(c.id, a.id);
    assert_ne!(c.tag, a.tag);
    assert_eq!(c.layers[0].diff_id, a.layers[0].diff_id);
    assert_ne!(c.layers[1].diff_id, a.layers[1].diff_id);

    // A model that changes between working the image out and writing it is caught, not loaded
    // under the old ID.
    std::fs::copy(fixture("tiny.onnx"), &model).unwrap();
    let err = c
        .write_archive(std::io::sink())
        .expect_err("the model changed")
        .to_string();
    assert!(
        err.contains("model layer") && err.contains("changed"),
        "{err}"
    );
    std::fs::write(&model, b"short").unwrap();
    let err = c
        .write_archive(std::io::sink())
        .expect_err("the model shrank")
        .to_string();
    assert!(
        err.contains("model layer") && err.contains("changed"),
        "{err}"
    );
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
    assert_eq!(
        first.id,
        Inputs::new(&project, &model, 8080).context().id,
        "the engine keeps the config ferry wrote, so the ID ferry computed is the image's"
    );
    assert_eq!(inspect("{{.Config.User}}"), "65532:65532");
    assert_eq!(
        inspect("{{index .Config.Labels \"dev.ferry.project\"}}"),
        project
    );
    assert_eq!(
        inspect("{{index .Config.Labels \"dev.ferry.role\"}}"),
        "serving"
    );
    assert_eq!(inspect("{{.Created}}"), "1970-01-01T00:00:00Z");
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
fn a_rebuild_from_a_clean_state_gives_the_same_image_id() {
    let _s = serial();
    let project = project("rebuild");
    let _cleanup = Cleanup(project.clone());
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::copy(fixture("tiny.onnx"), &model).unwrap();

    let first = build(&project, &model, 8080).unwrap();
    assert!(first.built);
    remove(&first.tag);
    let second = build(&project, &model, 8080).unwrap();
    assert!(
        second.built,
        "the tag was gone, so the image was made again"
    );
    assert_eq!(second.tag, first.tag);
    assert_eq!(second.id, first.id);
}

#[test]
fn a_rebuild_pushed_to_a_fresh_registry_has_the_same_digest() {
    let _s = serial();
    let project = project("digest");
    let _cleanup = Cleanup(project.clone());
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::copy(fixture("tiny.onnx"), &model).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let d = rt
        .block_on(ferry::docker::connect())
        .expect("docker engine");
    let name = format!("{project}-serve");

    // Made from a clean state and pushed to a registry of its own, twice. A fresh registry has
    // none of the layers, so the engine compresses each one again (it has nothing to mount them
    // from): the same digest twice means the same config, the same layer tars, and gzip output
    // that depends only on them.
    let mut pushed = Vec::new();
    for round in 0..2 {
        let Some(registry) = rt.block_on(common::registry::Registry::start(false)) else {
            return;
        };
        let built = build(&project, &model, 8080).unwrap();
        assert!(built.built, "round {round}: the image was there already");
        let repository = registry.repository(&name);
        let p = rt
            .block_on(ferry::images::push::push(
                &d,
                &built.tag,
                &repository,
                &Ui::silent(),
            ))
            .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", registry.log()));
        let manifest = registry_manifest(&registry.host, &name, &p.tag);
        pushed.push((built.id, p.digest, manifest));
        // The registry goes, and with it the engine's tags for it; then the image itself.
        drop(registry);
        remove(&built.tag);
    }
    let (first, second) = (&pushed[0], &pushed[1]);
    assert_eq!(first.0, second.0, "the same image ID");
    assert_eq!(
        first.1, second.1,
        "the same registry digest; manifests:\n{}\n{}",
        first.2, second.2
    );
}

/// The manifest a registry on 127.0.0.1 serves for `ml/<name>:<tag>`.
fn registry_manifest(host: &str, name: &str, tag: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-H",
            &format!("Accept: {}", common::registry::MANIFEST_TYPES),
            &format!("http://{host}/v2/ml/{name}/manifests/{tag}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn one_changed_byte_of_a_model_changes_only_the_model_layer() {
    let _s = serial();
    let project = project("layers");
    let _cleanup = Cleanup(project.clone());
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::copy(fixture("tiny.onnx"), &model).unwrap();

    let before = build(&project, &model, 8080).unwrap();
    let before_layers = engine_layers(&before.tag);
    let ctx = Inputs::new(&project, &model, 8080).context();
    let diff_ids: Vec<String> = ctx.layers.iter().map(|l| l.diff_id.clone()).collect();
    assert_eq!(before_layers, diff_ids, "the engine keeps ferry's layers");

    flip_producer_byte(&model);
    let after = build(&project, &model, 8080).unwrap();
    assert!(after.built);
    assert_ne!(after.id, before.id);
    assert_ne!(after.tag, before.tag);
    let after_layers = engine_layers(&after.tag);
    assert_eq!(after_layers.len(), 2, "{after_layers:?}");
    assert_eq!(
        after_layers[0], before_layers[0],
        "the runtime layer is shared"
    );
    assert_ne!(after_layers[1], before_layers[1], "the model layer is new");
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

/// The amd64 parts: Debian unpacked by debootstrap's first stage and ONNX Runtime from the amd64
/// wheel; None (after saying why) when they cannot be had here.
fn amd64_parts() -> Option<(PathBuf, PathBuf)> {
    common::parts::platform_parts_blocking(ferry::platform::Platform::LINUX_AMD64)
        .map(|(sysroot, ort)| (sysroot, ort.library))
}

/// Built from parts, the amd64 image reads no library of this machine, has the same ID every
/// time, serves the model as the image made from this machine's files does, and its own files
/// read back through the engine are a root filesystem that gives the very same image.
#[test]
fn the_amd64_image_from_parts_reads_nothing_of_this_machine_and_serves() {
    use ferry::images::serving::{Target, ensure_serving_image_for, serving_context_for};
    use ferry::platform::Platform;
    if Platform::host() != Some(Platform::LINUX_AMD64) {
        eprintln!("skipped: serving the amd64 image needs an amd64 machine");
        return;
    }
    let Some((sysroot, ort)) = amd64_parts() else {
        return;
    };
    let _s = serial();
    let project = project("parts");
    let _cleanup = Cleanup(project.clone());
    let mut inputs = Inputs::new(&project, &fixture("tiny.onnx"), 8080);
    inputs.runtime = ort.clone();
    let target = Target {
        platform: Platform::LINUX_AMD64,
        sysroot: &sysroot,
    };
    let ctx = serving_context_for(&inputs.request(), Some(&target)).unwrap();
    assert_eq!(
        serving_context_for(&inputs.request(), Some(&target))
            .unwrap()
            .id,
        ctx.id,
        "same parts, another image ID"
    );
    let mut libraries = 0;
    for (path, source) in ctx.files() {
        let Some(source) = source else { continue };
        let from_sysroot = source.starts_with(&sysroot);
        libraries += usize::from(from_sysroot);
        assert!(
            from_sysroot
                || source == ort
                || source == inputs.binary
                || source == fixture("tiny.onnx"),
            "{path} is read from {}, which is not one of the image's parts",
            source.display()
        );
    }
    assert!(
        libraries >= 2,
        "no library from the sysroot: {:?}",
        ctx.files()
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let d = rt
        .block_on(ferry::docker::connect())
        .expect("docker engine");
    let built = rt
        .block_on(ensure_serving_image_for(
            &d,
            &inputs.request(),
            Some(&target),
            &Ui::silent(),
        ))
        .unwrap();
    assert_eq!(built.id, ctx.id);
    let inspect = docker(&["image", "inspect", "-f", "{{.Architecture}}", &built.tag]);
    assert_eq!(String::from_utf8_lossy(&inspect.stdout).trim(), "amd64");

    // The image's own files as a root filesystem give the same runtime layer, so the same image.
    let read_back = rt
        .block_on(ferry::images::runtime_parts::sysroot_from_image(
            &d,
            &built.tag,
            Platform::LINUX_AMD64,
            &Ui::silent(),
        ))
        .unwrap();
    let again = serving_context_for(
        &inputs.request(),
        Some(&Target {
            platform: Platform::LINUX_AMD64,
            sysroot: &read_back,
        }),
    )
    .unwrap();
    assert_eq!(again.layers[0].diff_id, ctx.layers[0].diff_id);
    assert_eq!(again.id, ctx.id);
    // Cached by the ID of an image this test made: nothing else will read it.
    std::fs::remove_dir_all(&read_back).unwrap();

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
    let logs = || {
        let l = docker(&["logs", &name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&l.stdout),
            String::from_utf8_lossy(&l.stderr)
        )
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut last = None;
    while std::time::Instant::now() < deadline {
        last = http(port, "GET", "/v2/health/ready", "").map(|(status, _)| status);
        if last == Some(200) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(last, Some(200), "not ready within 30s; logs:\n{}", logs());
    let request = r#"{"inputs":[{"name":"X","datatype":"FP32","shape":[1,3],"data":[1,2,3]}]}"#;
    let (status, body) = http(port, "POST", "/v2/models/tiny/infer", request)
        .unwrap_or_else(|| panic!("no answer to infer; logs:\n{}", logs()));
    assert_eq!(status, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        reply["outputs"][0]["data"],
        serde_json::json!([2.0, 4.0, 6.0]),
        "{reply}"
    );
}

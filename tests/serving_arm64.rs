//! The linux/arm64 serving image, checked by its contents (this machine runs no arm64 code):
//! assembled from Debian arm64 unpacked by debootstrap's first stage, ONNX Runtime from the
//! arm64 `onnxruntime` wheel and a stand-in aarch64 server program, then read back from the image
//! archive: every ELF file is aarch64, its interpreter and every library it needs are in the
//! image where the loader will look, the config says arm64, and no file comes from this
//! machine's own system.
//!
//! Needs root and debootstrap, pip, and the package indexes pip and apt are configured with the
//! first time (then the parts are in ferry's cache); says it is skipped only when those indexes
//! cannot be reached.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use ferry::images::runtime_parts;
use ferry::images::serving::{ServingImageRequest, ServingModel, Target, serving_context_for};
use ferry::platform::Platform;
use ferry::server::config::ServingConfig;
use goblin::elf::Elf;

mod common;

const MODEL_PATH: &str = "/models/tiny/default/model.onnx";

/// The arm64 parts, or None (after saying why) when they cannot be had here.
fn arm64_parts() -> Option<(PathBuf, PathBuf)> {
    let (sysroot, ort) = common::parts::platform_parts_blocking(Platform::LINUX_ARM64)?;
    assert_eq!(ort.wheel_sha256.len(), 64, "{ort:?}");
    assert!(ort.wheel.contains("aarch64"), "{ort:?}");
    Some((sysroot, ort.library))
}

/// A stand-in for the arm64 server: an aarch64 program of the unpacked Debian (`true`), which
/// needs the loader and libc as the server does. Copied out, so it is "a given binary".
fn stand_in_server(sysroot: &Path, dir: &Path) -> PathBuf {
    let resolved = ferry::images::serving::resolve_in_sysroot(sysroot, Path::new("/bin/true"))
        .expect("the unpacked Debian has /bin/true");
    let to = dir.join("ferry-serve-arm64-stand-in");
    std::fs::copy(resolved, &to).unwrap();
    to
}

fn config() -> ServingConfig {
    serde_json::from_value(serde_json::json!({
        "port": 8080,
        "models": [{
            "name": "tiny",
            "variants": [{"name": "default", "path": MODEL_PATH, "weight": 1}]
        }]
    }))
    .unwrap()
}

/// Path → (mode, bytes) of the regular files of a tar.
fn tar_files(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut tar = tar::Archive::new(bytes);
    for e in tar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type().is_file() {
            let name = format!("/{}", e.path().unwrap().to_string_lossy());
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.insert(name, data);
        }
    }
    out
}

#[test]
fn the_arm64_image_holds_only_aarch64_code_whose_libraries_it_has() {
    let Some((sysroot, ort)) = arm64_parts() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let binary = stand_in_server(&sysroot, dir.path());
    // The real server of another platform is refused without being named.
    if std::env::var_os(runtime_parts::serve_binary_env(Platform::LINUX_ARM64.arch)).is_none()
        && Platform::host() != Some(Platform::LINUX_ARM64)
    {
        let e = runtime_parts::server_binary(Platform::LINUX_ARM64, None).unwrap_err();
        assert!(e.to_string().contains("FERRY_SERVE_BINARY_ARM64"), "{e}");
    }
    // …and a program of this machine's CPU is refused as the arm64 one.
    if Platform::host() == Some(Platform::LINUX_AMD64) {
        let host_ferry = Path::new(env!("CARGO_BIN_EXE_ferry"));
        let e = ferry::images::serving::check_machine(host_ferry, Platform::LINUX_ARM64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("amd64") && e.contains("linux/arm64"), "{e}");
    }

    let models = vec![ServingModel {
        host_path: common::fixture("tiny.onnx"),
        image_path: MODEL_PATH.into(),
    }];
    let config = config();
    let req = ServingImageRequest {
        project: "arm64-contents",
        binary: &binary,
        runtime: &ort,
        models: &models,
        config: &config,
    };
    let target = Target {
        platform: Platform::LINUX_ARM64,
        sysroot: &sysroot,
    };
    let ctx = serving_context_for(&req, Some(&target)).unwrap();
    // Same inputs, same image.
    let again = serving_context_for(&req, Some(&target)).unwrap();
    assert_eq!(ctx.id, again.id);

    // Every file is the sysroot's, the wheel's library, the given binary or the model.
    for (path, source) in ctx.files() {
        let Some(source) = source else { continue };
        assert!(
            source.starts_with(&sysroot)
                || source == ort
                || source == binary
                || source == common::fixture("tiny.onnx"),
            "{path} is read from {}, which is not one of the image's parts",
            source.display()
        );
    }

    let mut archive = Vec::new();
    ctx.write_archive(&mut archive).unwrap();
    let outer = tar_files(&archive);
    let manifest: serde_json::Value = serde_json::from_slice(&outer["/manifest.json"]).unwrap();
    let config_name = format!("/{}", manifest[0]["Config"].as_str().unwrap());
    let image_config: serde_json::Value = serde_json::from_slice(&outer[&config_name]).unwrap();
    assert_eq!(image_config["architecture"], "arm64");
    assert_eq!(image_config["os"], "linux");
    let env: Vec<String> = serde_json::from_value(image_config["config"]["Env"].clone()).unwrap();
    let mut search: Vec<String> = env
        .iter()
        .find_map(|e| e.strip_prefix("LD_LIBRARY_PATH="))
        .map(|p| p.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    search.extend(
        [
            "/lib/aarch64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/lib",
            "/usr/lib",
        ]
        .map(str::to_string),
    );

    let mut rootfs = BTreeMap::new();
    for layer in manifest[0]["Layers"].as_array().unwrap() {
        let name = format!("/{}", layer.as_str().unwrap());
        rootfs.extend(tar_files(&outer[&name]));
    }
    for wanted in [
        "/usr/bin/ferry",
        "/usr/lib/ferry/libonnxruntime.so",
        MODEL_PATH,
    ] {
        assert!(rootfs.contains_key(wanted), "{wanted} is not in the image");
    }
    assert_eq!(
        rootfs["/usr/lib/ferry/libonnxruntime.so"],
        std::fs::read(&ort).unwrap()
    );

    let mut elves = 0;
    for (path, bytes) in &rootfs {
        if !bytes.starts_with(b"\x7fELF") {
            continue;
        }
        elves += 1;
        let elf = Elf::parse(bytes).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            elf.header.e_machine,
            goblin::elf::header::EM_AARCH64,
            "{path} is not aarch64"
        );
        if let Some(interp) = elf.interpreter {
            assert!(
                rootfs.contains_key(interp),
                "{path}'s interpreter {interp} is not in the image"
            );
            assert_eq!(interp, "/lib/ld-linux-aarch64.so.1");
        }
        let origin = Path::new(path)
            .parent()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        for needed in &elf.libraries {
            let mut dirs: Vec<String> = elf
                .runpaths
                .iter()
                .chain(&elf.rpaths)
                .flat_map(|r| r.split(':'))
                .map(|d| d.replace("$ORIGIN", &origin))
                .collect();
            dirs.extend(search.iter().cloned());
            let found = needed.starts_with("ld-linux-aarch64")
                || dirs
                    .iter()
                    .any(|d| rootfs.contains_key(&format!("{d}/{needed}")));
            assert!(
                found,
                "{path} needs {needed}, which is not in the image (searched {dirs:?})"
            );
        }
    }
    // The server, ONNX Runtime, the loader and at least libc, libstdc++, libm, libgcc_s.
    assert!(elves >= 6, "only {elves} ELF files in the image");
    assert!(
        rootfs.keys().any(|p| p.ends_with("/libstdc++.so.6")),
        "ONNX Runtime's libstdc++ is missing"
    );
}

/// A root filesystem without what the server needs is refused, naming the library, the root it
/// was looked for in and the fix; this machine's own libraries never stand in for it.
#[test]
fn a_sysroot_without_the_c_library_says_which_package_to_add() {
    let Some((sysroot, _)) = arm64_parts() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let binary = stand_in_server(&sysroot, dir.path());
    let empty = dir.path().join("empty-root");
    std::fs::create_dir_all(empty.join("lib")).unwrap();
    let e = ferry::images::serving::sysroot_closure(
        &[(&binary, "/usr/bin/ferry")],
        &empty,
        Platform::LINUX_ARM64,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("libc.so.6")
            && e.contains(&empty.display().to_string())
            && e.contains("environment.packages"),
        "{e}"
    );
    // With the unpacked Debian, the same binary resolves to the root's loader and libc.
    let closure = ferry::images::serving::sysroot_closure(
        &[(&binary, "/usr/bin/ferry")],
        &sysroot,
        Platform::LINUX_ARM64,
    )
    .unwrap();
    let paths: Vec<String> = closure
        .iter()
        .map(|(p, _)| p.to_string_lossy().into_owned())
        .collect();
    assert!(
        paths.contains(&"/lib/aarch64-linux-gnu/libc.so.6".to_string())
            && paths.contains(&"/lib/ld-linux-aarch64.so.1".to_string()),
        "{paths:?}"
    );
    for (_, source) in &closure {
        assert!(source.starts_with(&sysroot), "{}", source.display());
    }
}

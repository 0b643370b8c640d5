//! Several platforms, one image: the amd64 and arm64 serving images, each built from its
//! platform's parts and loaded, are pushed to a registry on 127.0.0.1 (Debian's
//! docker-registry), then an OCI image index that names each by digest with its platform; read
//! back through the registry's API.
//!
//! Needs a Docker engine, root and debootstrap, pip and the configured package indexes the first
//! time, and docker-registry; says it is skipped without the registry or when the indexes cannot
//! be reached.

use std::path::{Path, PathBuf};

use ferry::images::push::{INDEX_MEDIA_TYPE, push_index_with_config};
use ferry::images::serving::{ServingImageRequest, ServingModel, Target, ensure_serving_image_for};
use ferry::platform::Platform;
use ferry::server::config::ServingConfig;
use ferry::ui::Ui;

mod common;

use common::registry::{MANIFEST_TYPES, Registry};

const MODEL_PATH: &str = "/models/tiny/default/model.onnx";

/// Removes the test's images from the engine when it ends.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for tag in &self.0 {
            let _ = std::process::Command::new("docker")
                .args(["image", "rm", "-f", tag])
                .output();
        }
    }
}

async fn get(url: &str, accept: &str) -> (String, Vec<u8>) {
    let resp = reqwest::Client::new()
        .get(url)
        .header("Accept", accept)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    let media = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (media, resp.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn each_platform_is_pushed_and_one_index_names_them_by_digest() {
    if Platform::host() != Some(Platform::LINUX_AMD64) {
        eprintln!(
            "skipped: the amd64 server here is this test's ferry, so it needs an amd64 machine"
        );
        return;
    }
    if ferry::images::bootstrap::foreign_requirements_met().is_err() {
        eprintln!("skipped: unpacking Debian needs root and debootstrap");
        return;
    }
    let Some(registry) = Registry::start(false).await else {
        return;
    };
    let docker = ferry::docker::connect().await.expect("docker engine");
    let dir = tempfile::tempdir().unwrap();
    let config: ServingConfig = serde_json::from_value(serde_json::json!({
        "port": 8080,
        "models": [{
            "name": "tiny",
            "variants": [{"name": "default", "path": MODEL_PATH, "weight": 1}]
        }]
    }))
    .unwrap();
    let models = vec![ServingModel {
        host_path: common::fixture("tiny.onnx"),
        image_path: MODEL_PATH.into(),
    }];
    let project = format!("index-{}", std::process::id());
    let mut images = Vec::new();
    let mut cleanup = Cleanup(Vec::new());
    for platform in [Platform::LINUX_AMD64, Platform::LINUX_ARM64] {
        let Some((sysroot, ort)) = common::parts::platform_parts(platform).await else {
            return;
        };
        let binary = if platform == Platform::LINUX_AMD64 {
            PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
        } else {
            // A stand-in for the arm64 server: an aarch64 program of the unpacked Debian.
            let found =
                ferry::images::serving::resolve_in_sysroot(&sysroot, Path::new("/bin/true"))
                    .unwrap();
            let to = dir.path().join("ferry-serve-arm64-stand-in");
            std::fs::copy(found, &to).unwrap();
            to
        };
        let req = ServingImageRequest {
            project: &project,
            binary: &binary,
            runtime: &ort.library,
            models: &models,
            config: &config,
        };
        let built = ensure_serving_image_for(
            &docker,
            &req,
            Some(&Target {
                platform,
                sysroot: &sysroot,
            }),
            &Ui::silent(),
        )
        .await
        .unwrap();
        cleanup.0.push(built.tag.clone());
        images.push((platform, built.tag));
    }
    assert_ne!(images[0].1, images[1].1, "both platforms gave one image");

    let repository = registry.repository(&format!("{project}-serve"));
    let pushed = push_index_with_config(&docker, &images, &repository, None, &Ui::silent())
        .await
        .unwrap();
    for (_, p) in &pushed.images {
        cleanup.0.push(format!("{}:{}", p.repository, p.tag));
    }
    assert_eq!(
        pushed.index.reference,
        format!("{repository}@{}", pushed.index.digest)
    );
    assert_eq!(pushed.images.len(), 2);

    let base = format!("http://{}/v2/ml/{project}-serve", registry.host);
    let (media, bytes) = get(
        &format!("{base}/manifests/{}", pushed.index.digest),
        MANIFEST_TYPES,
    )
    .await;
    assert_eq!(media, INDEX_MEDIA_TYPE);
    let index: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(index["mediaType"], INDEX_MEDIA_TYPE);
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{index}");
    for ((platform, image), entry) in pushed.images.iter().zip(entries) {
        assert_eq!(entry["digest"], image.digest.as_str(), "{index}");
        assert_eq!(entry["platform"]["architecture"], platform.arch.go_name());
        assert_eq!(entry["platform"]["os"], "linux");
        // The entry is the manifest the registry holds, and its config says the same platform.
        let (_, manifest) = get(
            &format!("{base}/manifests/{}", image.digest),
            MANIFEST_TYPES,
        )
        .await;
        assert_eq!(entry["size"], manifest.len() as u64);
        let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        let config_digest = manifest["config"]["digest"].as_str().unwrap();
        let (_, config) = get(&format!("{base}/blobs/{config_digest}"), "*/*").await;
        let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
        assert_eq!(config["architecture"], platform.arch.go_name());
    }

    // Pushing the same images again gives the same index.
    let again = push_index_with_config(&docker, &images, &repository, None, &Ui::silent())
        .await
        .unwrap();
    assert_eq!(again.index.digest, pushed.index.digest);

    // A registry that wants a login gets the index with the Docker config's credentials, and
    // the same index: its digest follows from the images alone.
    let Some(secured) = Registry::start(true).await else {
        return;
    };
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("config.json"),
        format!(
            r#"{{"auths": {{"{}": {{"username": "{}", "password": "{}"}}}}}}"#,
            secured.host,
            common::registry::USER,
            common::registry::PASSWORD
        ),
    )
    .unwrap();
    let repository = secured.repository(&format!("{project}-serve"));
    let with_login = push_index_with_config(
        &docker,
        &images,
        &repository,
        Some(config.path()),
        &Ui::silent(),
    )
    .await
    .unwrap();
    for (_, p) in &with_login.images {
        cleanup.0.push(format!("{}:{}", p.repository, p.tag));
    }
    assert_eq!(with_login.index.digest, pushed.index.digest);
    let resp = reqwest::Client::new()
        .get(format!(
            "http://{}/v2/ml/{project}-serve/manifests/{}",
            secured.host, with_login.index.digest
        ))
        .basic_auth(common::registry::USER, Some(common::registry::PASSWORD))
        .header("Accept", MANIFEST_TYPES)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
}

//! Images for the cluster's CPU: the schedulable nodes' architecture (`kubernetes.io/arch`)
//! chooses and checks the platform before anything is built or applied, and the rendered pods
//! carry it as their node selector. Against the fake API server, whose nodes each test names;
//! rendering also needs Docker, ONNX Runtime and a registry on 127.0.0.1.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

mod common;
use common::fake_api::{FakeApi, Seen};
use common::registry::Registry;

/// A project serving the churn fixture, with a cluster environment `staging` on `registry`
/// (spec lines for the environment's `environment:` block in `platform`).
fn project(name: &str, registry: &str, platform: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("artifacts")).unwrap();
    std::fs::copy(
        common::fixture("churn.onnx"),
        root.join("artifacts/model.onnx"),
    )
    .unwrap();
    std::fs::write(root.join("train.py"), "print('training')\n").unwrap();
    std::fs::write(
        root.join("ferry.yaml"),
        format!(
            "name: {name}
environment:
  bootstrap: bookworm
train:
  command: python train.py
  outputs: [artifacts/model.onnx]
serve:
  model: artifacts/model.onnx
environments:
  dev: {{ target: docker }}
  staging:
    target: kubernetes
    namespace: {name}-staging
    registry: {registry}/ml
{platform}"
        ),
    )
    .unwrap();
    dir
}

async fn ferry(root: &Path, fake: &FakeApi, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::from(common::ferry_cmd(root, args));
    cmd.env("KUBECONFIG", fake.kubeconfig())
        .output()
        .await
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn writes(fake: &FakeApi) -> Vec<Seen> {
    fake.seen().into_iter().filter(Seen::is_write).collect()
}

fn no_image_built(name: &str) {
    assert!(
        common::docker(&["images", "-q", &format!("ferry/{name}-serve")]).is_empty(),
        "a serving image of {name} was built"
    );
    assert!(
        common::docker(&["images", "-q", &format!("ferry/{name}")]).is_empty(),
        "a project image of {name} was built"
    );
}

#[tokio::test]
async fn a_platform_no_node_runs_is_refused_before_anything_is_built_or_applied() {
    let fake = FakeApi::with_store().await;
    fake.nodes(&[
        ("arm-1", "arm64", true),
        ("arm-2", "arm64", true),
        ("old-x86", "amd64", false),
    ]);
    let name = "arch-refused";
    let dir = project(
        name,
        "127.0.0.1:9",
        "    environment: { platform: linux/amd64 }\n",
    );
    let root = dir.path();
    for args in [
        vec!["promote", "staging", "--yes"],
        vec!["render", "staging"],
        vec!["train", "--env", "staging"],
    ] {
        let out = ferry(root, &fake, &args).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("staging are for linux/amd64")
                && err.contains("no schedulable node")
                && err.contains("arm64 (arm-1, arm-2)")
                && err.contains("1 more cordoned or not ready"),
            "{args:?}: {err}"
        );
        assert!(err.contains("platform: linux/arm64"), "{args:?}: {err}");
    }
    assert!(
        fake.seen().iter().any(|s| s.path == "/api/v1/nodes"),
        "the nodes were never asked for"
    );
    let w = writes(&fake);
    assert!(w.is_empty(), "written before the refusal: {w:?}");
    no_image_built(name);
    assert!(!root.join(".ferry/promotions/staging.json").exists());
}

#[tokio::test]
async fn an_arm64_only_cluster_gets_no_image_this_machine_cannot_make_for_it() {
    let fake = FakeApi::with_store().await;
    fake.nodes(&[("graviton-1", "arm64", true)]);
    let name = "arch-arm-only";
    let dir = project(name, "127.0.0.1:9", "");
    let root = dir.path();
    // Training runs the project image, which this machine's engine builds for its own CPU.
    let out = ferry(root, &fake, &["train", "--env", "staging"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no schedulable node") && err.contains("arm64 (graviton-1)"),
        "{err}"
    );
    // Serving: the image would be for linux/arm64, the nodes' platform.
    let out = ferry(root, &fake, &["promote", "staging", "--yes"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("linux/arm64"), "{err}");
    let w = writes(&fake);
    assert!(w.is_empty(), "written before the refusal: {w:?}");
    no_image_built(name);
}

/// The pod template of the rendered Deployment.
fn pod_spec(out: &Output) -> Value {
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = list["items"].as_array().unwrap();
    let d = items.iter().find(|o| o["kind"] == "Deployment").unwrap();
    d["spec"]["template"]["spec"].clone()
}

#[tokio::test]
async fn in_a_mixed_cluster_the_pods_go_only_where_the_image_runs() {
    let Some(registry) = Registry::start(false).await else {
        return;
    };
    let fake = FakeApi::with_store().await;
    fake.nodes(&[
        ("arm-1", "arm64", true),
        ("arm-2", "arm64", true),
        ("x86-1", "amd64", true),
    ]);
    let dir = project("arch-mixed", &registry.host, "");
    let root = dir.path();
    let out = ferry(root, &fake, &["render", "staging", "-o", "json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let spec = pod_spec(&out);
    assert_eq!(
        spec["nodeSelector"]["kubernetes.io/arch"], "amd64",
        "{spec}"
    );
    let err = stderr(&out);
    assert!(err.contains("platform linux/amd64"), "{err}");
    assert!(err.contains("1 of the schedulable nodes"), "{err}");
    let w = writes(&fake);
    assert!(w.is_empty(), "render wrote to the cluster: {w:?}");
}

#[tokio::test]
async fn nodes_that_cannot_be_read_leave_the_platform_unchecked_with_a_warning() {
    let Some(registry) = Registry::start(false).await else {
        return;
    };
    // No store and no nodes route: the node list is answered 404, as a server would refuse it.
    let fake = FakeApi::start().await;
    let dir = project("arch-unread", &registry.host, "");
    let root = dir.path();
    let out = ferry(root, &fake, &["render", "staging", "-o", "json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("nodes cannot be read") && err.contains("without checking"),
        "{err}"
    );
    assert_eq!(
        pod_spec(&out)["nodeSelector"]["kubernetes.io/arch"],
        "amd64"
    );
}

#[test]
fn a_docker_environment_runs_only_what_its_engine_runs() {
    let engine = common::docker(&["info", "--format", "{{.Architecture}}"]);
    let other = match engine.as_str() {
        "x86_64" | "amd64" => "arm64",
        _ => "amd64",
    };
    let name = "arch-local";
    let dir = project(name, "127.0.0.1:9", "");
    let root = dir.path();
    let spec = std::fs::read_to_string(root.join("ferry.yaml"))
        .unwrap()
        .replace(
            "  dev: { target: docker }\n",
            &format!(
                "  dev:\n    target: docker\n    environment: {{ platform: linux/{other} }}\n"
            ),
        );
    std::fs::write(root.join("ferry.yaml"), spec).unwrap();
    for args in [
        vec!["build", "--env", "dev"],
        vec!["train", "--env", "dev"],
        vec!["serve", "--env", "dev"],
    ] {
        let out = common::ferry(root, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("environment dev runs on this machine's Docker engine")
                && err.contains(&format!("the spec asks for linux/{other}")),
            "{args:?}: {err}"
        );
    }
    no_image_built(name);
}

#[tokio::test]
async fn several_platforms_are_rendered_as_one_image_index_for_the_nodes_of_both() {
    use ferry::images::runtime_parts;
    use ferry::platform::Platform;
    if ferry::images::bootstrap::foreign_requirements_met().is_err() {
        eprintln!("skipped: unpacking Debian arm64 needs root and debootstrap");
        return;
    }
    let Some(registry) = Registry::start(false).await else {
        return;
    };
    // The arm64 server: a stand-in aarch64 program of Debian arm64, unpacked without running.
    let sysroot = runtime_parts::debian_sysroot(
        runtime_parts::DEFAULT_SUITE,
        Platform::LINUX_ARM64,
        &ferry::ui::Ui::silent(),
    )
    .await
    .expect("Debian arm64 unpacked");
    let stand_in = ferry::images::serving::resolve_in_sysroot(&sysroot, Path::new("/bin/true"))
        .expect("/bin/true in Debian arm64");
    let fake = FakeApi::with_store().await;
    fake.nodes(&[("arm-1", "arm64", true), ("x86-1", "amd64", true)]);
    let dir = project(
        "arch-index",
        &registry.host,
        "    environment: { platforms: [linux/amd64, linux/arm64] }\n",
    );
    let root = dir.path();
    let out = tokio::process::Command::from(common::ferry_cmd(
        root,
        &["render", "staging", "-o", "json"],
    ))
    .env("KUBECONFIG", fake.kubeconfig())
    .env("FERRY_SERVE_BINARY_ARM64", &stand_in)
    .output()
    .await
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let spec = pod_spec(&out);
    let term = &spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0]["matchExpressions"][0];
    assert_eq!(
        term["values"],
        serde_json::json!(["amd64", "arm64"]),
        "{spec}"
    );
    let image = spec["containers"][0]["image"].as_str().unwrap().to_string();
    let (repo, digest) = image.split_once('@').unwrap();
    let path = repo.split_once('/').unwrap().1;
    // The digest the pods run is the index's: one manifest per platform.
    let index: Value = reqwest::Client::new()
        .get(format!("http://{}/v2/{path}/manifests/{digest}", registry.host))
        .header(
            "Accept",
            "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut archs: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    archs.sort();
    assert_eq!(archs, ["amd64", "arm64"], "{index}");
}

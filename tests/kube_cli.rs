//! `ferry render ENV` end to end: the serving image built, pushed to a real registry on
//! 127.0.0.1 (Debian's docker-registry), and the objects naming it by the registry's digest.
//! Needs Docker and ONNX Runtime; no cluster (nothing is applied).

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

mod common;
use common::fake_api::dead_kubeconfig;
use common::ferry;
use common::registry::{MANIFEST_TYPES, Registry};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/server")
}

/// A project serving the trained churn fixture, with a staging environment on `registry`.
fn project(registry: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("artifacts")).unwrap();
    std::fs::copy(
        fixtures().join("churn.onnx"),
        root.join("artifacts/model.onnx"),
    )
    .unwrap();
    std::fs::write(
        root.join("ferry.yaml"),
        format!(
            "name: render-demo
environment:
  bootstrap: bookworm
serve:
  model: artifacts/model.onnx
environments:
  dev: {{ target: docker }}
  staging:
    target: kubernetes
    namespace: render-demo-staging
    registry: {registry}/ml
    secrets: .env.staging
  nowhere:
    target: kubernetes
    namespace: nowhere
"
        ),
    )
    .unwrap();
    std::fs::write(root.join(".env.staging"), "DB_PASSWORD=hunter2\n").unwrap();
    dir
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[tokio::test]
async fn render_pushes_and_names_the_image_by_the_registry_digest() {
    let Some(registry) = Registry::start(false).await else {
        return;
    };
    let dir = project(&registry.host);
    let root = dir.path();
    let out = ferry(root, &["render", "staging", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = list["items"].as_array().unwrap();
    let deployment = items.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string();
    let repository = format!("{}/ml/render-demo-serve", registry.host);
    let (repo, digest) = image.split_once('@').unwrap();
    assert_eq!(repo, repository);

    // The digest is the registry's own for the pushed tag.
    let tag = common::docker(&["images", "--format", "{{.Tag}}", &repository]);
    let tag = tag.lines().next().unwrap().to_string();
    let head = reqwest::Client::new()
        .head(format!(
            "http://{}/v2/ml/render-demo-serve/manifests/{tag}",
            registry.host
        ))
        .header("Accept", MANIFEST_TYPES)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["docker-content-digest"], digest);

    // The secret's value never reaches the output; its name does.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("hunter2") && text.contains("DB_PASSWORD"));
    assert!(!stderr(&out).contains("hunter2"));

    // Rendering again builds nothing new and names the same digest: the YAML is identical.
    let a = ferry(root, &["render", "staging", "-q"]);
    let b = ferry(root, &["render", "staging", "-q"]);
    assert!(a.status.success() && b.status.success(), "{}", stderr(&b));
    assert_eq!(a.stdout, b.stdout);
    assert!(String::from_utf8_lossy(&a.stdout).contains(digest));
}

#[test]
fn render_says_what_is_missing_before_building_anything() {
    let dir = project("127.0.0.1:9");
    let root = dir.path();

    let out = ferry(root, &["render"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("no environment given"), "{err}");
    assert!(err.contains("(staging, nowhere)"), "{err}");

    let out = ferry(root, &["render", "dev"]);
    let err = stderr(&out);
    assert!(err.contains("environment dev runs on Docker"), "{err}");

    let out = ferry(root, &["render", "nowhere"]);
    let err = stderr(&out);
    assert!(err.contains("environment nowhere has no registry"), "{err}");

    let out = ferry(root, &["render", "prod"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("no environment named `prod`"), "{err}");

    std::fs::remove_file(root.join(".env.staging")).unwrap();
    let out = ferry(root, &["render", "staging"]);
    let err = stderr(&out);
    assert!(
        err.contains(".env.staging") && err.contains("does not exist"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

fn ferry_with_kubeconfig(root: &Path, kubeconfig: &Path, args: &[&str]) -> Output {
    common::ferry_cmd(root, args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap()
}

#[test]
fn promote_to_an_unreachable_cluster_fails_before_building_anything() {
    let dir = project("127.0.0.1:9");
    let root = dir.path();
    let spec = std::fs::read_to_string(root.join("ferry.yaml"))
        .unwrap()
        .replace("name: render-demo", "name: unreachable-demo");
    std::fs::write(root.join("ferry.yaml"), spec).unwrap();
    let (kubeconfig, server) = dead_kubeconfig(root);
    let started = std::time::Instant::now();
    let out = ferry_with_kubeconfig(root, &kubeconfig, &["promote", "staging"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&server) && err.contains("cannot reach"),
        "{err}"
    );
    assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
    // Nothing was built for it.
    assert!(common::docker(&["images", "-q", "ferry/unreachable-demo-serve"]).is_empty());
    assert!(!root.join(".ferry/promotions/staging.json").exists());

    let out = ferry_with_kubeconfig(root, &kubeconfig, &["status", "staging"]);
    let err = stderr(&out);
    assert!(err.contains(&server), "{err}");
}

#[test]
fn a_protected_environment_is_not_changed_without_a_yes() {
    let dir = project("127.0.0.1:9");
    let root = dir.path();
    let spec = std::fs::read_to_string(root.join("ferry.yaml"))
        .unwrap()
        .replace(
            "  nowhere:\n",
            "  production:\n    target: kubernetes\n    registry: 127.0.0.1:9/ml\n  nowhere:\n",
        );
    std::fs::write(root.join("ferry.yaml"), spec).unwrap();
    let (kubeconfig, _) = dead_kubeconfig(root);
    for cmd in [
        vec!["promote", "production"],
        vec!["rollback", "production"],
        vec!["down", "production"],
    ] {
        let out = ferry_with_kubeconfig(root, &kubeconfig, &cmd);
        let err = stderr(&out);
        if cmd[0] == "rollback" {
            // Nothing recorded: said before anything else.
            assert!(err.contains("nothing to roll back to"), "{cmd:?}: {err}");
        } else {
            assert!(err.contains("production is protected"), "{cmd:?}: {err}");
            assert!(err.contains("--yes"), "{err}");
        }
        assert_eq!(out.status.code(), Some(1));
    }
}

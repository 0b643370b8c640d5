//! The churn template promoted to a real cluster, end to end, through the ferry binary: the
//! serving image built, pushed by digest and rolled out; a prediction through a port-forward
//! equal to the one the same model gives locally; a changed model promoted; a rollout that
//! cannot finish put back to the revision before; status, drift and `ferry.lock` afterwards.
//!
//! Runs with FERRY_TEST_KUBECONFIG (a kubeconfig whose current context is the cluster) and
//! FERRY_TEST_REGISTRY (a registry prefix this machine pushes to and the cluster pulls from,
//! e.g. `127.0.0.1:5000/ferry-test` for a loopback registry on the node); reported as skipped
//! otherwise. Everything happens in a namespace of its own, deleted afterwards. Prints the
//! time each promotion took.

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use serde_json::Value;

mod common;
use common::{fixture, free_port};

struct Cluster {
    kubeconfig: PathBuf,
    registry: String,
}

fn cluster(test: &str) -> Option<Cluster> {
    let Some(kubeconfig) = std::env::var_os("FERRY_TEST_KUBECONFIG") else {
        eprintln!("skipped: {test}: FERRY_TEST_KUBECONFIG is not set");
        return None;
    };
    let Ok(registry) = std::env::var("FERRY_TEST_REGISTRY") else {
        eprintln!(
            "skipped: {test}: FERRY_TEST_REGISTRY is not set (a registry this machine pushes to and the cluster pulls from)"
        );
        return None;
    };
    Some(Cluster {
        kubeconfig: kubeconfig.into(),
        registry,
    })
}

/// `ferry ARGS` in `root` against the cluster, off the async threads.
async fn ferry(root: &Path, c: &Cluster, args: &[&str]) -> Output {
    let mut cmd = common::ferry_cmd(root, args);
    cmd.env("KUBECONFIG", &c.kubeconfig);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

async fn ferry_json(root: &Path, c: &Cluster, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let out = ferry(root, c, &args).await;
    assert!(
        out.status.success(),
        "ferry {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The churn template with the committed trained model, and a staging environment in `ns`.
fn project(name: &str, ns: &str, registry: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = common::ferry(
        dir.path(),
        &["init", name, "--template", "churn", "--offline"],
    );
    assert!(out.status.success(), "{out:?}");
    let root = dir.path().join(name);
    std::fs::create_dir_all(root.join("artifacts")).unwrap();
    set_model(&root, 6);
    let spec = std::fs::read_to_string(root.join("ferry.yaml")).unwrap();
    let spec = spec.replace(
        "  dev: { target: docker }\n",
        &format!(
            "  dev: {{ target: docker }}\n  staging:\n    target: kubernetes\n    namespace: {ns}\n    registry: {registry}\n    serve: {{ replicas: 1, resources: {{ cpu: 100m, memory: 256Mi }} }}\n"
        ),
    );
    std::fs::write(root.join("ferry.yaml"), spec).unwrap();
    (dir, root)
}

/// The churn fixture with another horizon in its description: a new file (a new image) whose
/// predictions are the same.
fn set_model(root: &Path, months: u8) {
    let mut bytes = std::fs::read(fixture("churn.onnx")).unwrap();
    let at = bytes
        .windows(15)
        .position(|w| w == b"within 6 months")
        .expect("the fixture's doc string");
    bytes[at + 7] = b'0' + months;
    std::fs::write(root.join("artifacts/model.onnx"), bytes).unwrap();
}

/// Forwards a local port to `port` of `pod`, one port-forward per connection.
async fn forward(client: kube::Client, ns: &str, pod: &str, port: u16) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap().port();
    let pods: Api<Pod> = Api::namespaced(client, ns);
    let pod = pod.to_string();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let (pods, pod) = (pods.clone(), pod.clone());
            tokio::spawn(async move {
                let Ok(mut pf) = pods.portforward(&pod, &[port]).await else {
                    return;
                };
                if let Some(mut upstream) = pf.take_stream(port) {
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                }
                let _ = pf.join().await;
            });
        }
    });
    local
}

/// A ready server pod running `image`.
async fn server_pod(client: &kube::Client, ns: &str, name: &str, image: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("app.kubernetes.io/instance={name},app.kubernetes.io/component=server");
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap();
    list.items
        .iter()
        .find(|p| {
            let spec_image = p
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.as_deref());
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            spec_image == Some(image) && ready && p.metadata.deletion_timestamp.is_none()
        })
        .and_then(|p| p.metadata.name.clone())
        .unwrap_or_else(|| panic!("no ready server pod runs {image}: {:#?}", list.items))
}

/// `ferry predict request.json` against `url`: the outputs.
async fn predict(root: &Path, c: &Cluster, url: &str) -> Value {
    let answer = ferry_json(root, c, &["predict", "request.json", "--url", url]).await;
    answer["outputs"].clone()
}

/// The answer of a ready server pod running `image`, through a port-forward to it.
async fn cluster_prediction(
    root: &Path,
    c: &Cluster,
    client: &kube::Client,
    ns: &str,
    name: &str,
    image: &str,
) -> Value {
    let pod = server_pod(client, ns, name, image).await;
    let port = forward(client.clone(), ns, &pod, 8080).await;
    predict(root, c, &format!("http://127.0.0.1:{port}")).await
}

/// The same model served on this machine (`ferry serve --native`): its answer.
async fn local_prediction(root: &Path, c: &Cluster) -> Value {
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let port = free_port();
    let _server = Kill(
        common::ferry_cmd(root, &["serve", "--native", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = ferry(
            root,
            c,
            &["predict", "request.json", "--url", &url, "--json"],
        )
        .await;
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            return v["outputs"].clone();
        }
        assert!(Instant::now() < deadline, "the local server did not answer");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn deployment_image(client: &kube::Client, ns: &str, name: &str) -> String {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap();
    d.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_churn_template_is_promoted_changed_and_rolled_back_on_a_real_cluster() {
    let Some(c) =
        cluster("the_churn_template_is_promoted_changed_and_rolled_back_on_a_real_cluster")
    else {
        return;
    };
    let name = "churn-e2e";
    let ns = format!("ferry-e2e-{}", std::process::id());
    let (_dir, root) = project(name, &ns, &c.registry);
    let client = ferry::kube::client::connect_with(&c.kubeconfig, None)
        .await
        .unwrap();
    let result = tokio::spawn({
        let (root, client, ns) = (root.clone(), client.clone(), ns.clone());
        async move { scenario(&root, &c, &client, &ns, name).await }
    })
    .await;
    let _ = Api::<Namespace>::all(client)
        .delete(&ns, &DeleteParams::background())
        .await;
    let listed = common::docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    for tag in listed
        .lines()
        .filter(|l| l.contains(&format!("{name}-serve:")))
    {
        common::docker(&["rmi", tag]);
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn scenario(root: &Path, c: &Cluster, client: &kube::Client, ns: &str, name: &str) {
    // Revision 1: the template's model.
    let started = Instant::now();
    let first = ferry_json(root, c, &["promote", "staging", "--timeout", "300s"]).await;
    eprintln!(
        "figure: first promote (build + push + apply + rollout ready): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(first["revision"], 1);
    let image1 = first["image"].as_str().unwrap().to_string();
    assert!(
        image1.starts_with(&format!("{}/{name}-serve@sha256:", c.registry)),
        "{image1}"
    );
    assert_eq!(deployment_image(client, ns, name).await, image1);
    // The pods are pinned to the architecture of the image, which is the nodes' own.
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap();
    let selector = d.spec.unwrap().template.spec.unwrap().node_selector;
    let arch = selector
        .as_ref()
        .and_then(|s| s.get("kubernetes.io/arch"))
        .cloned();
    let nodes = ferry::kube::nodes::list(client).await.unwrap();
    assert!(
        nodes
            .iter()
            .any(|n| n.schedulable && n.arch.is_some() && n.arch == arch),
        "node selector {selector:?}, nodes {nodes:?}"
    );

    let remote = cluster_prediction(root, c, client, ns, name, &image1).await;
    let local = local_prediction(root, c).await;
    assert_eq!(remote, local, "the cluster answers as this machine does");
    assert!(remote.as_array().is_some_and(|o| !o.is_empty()), "{remote}");

    let started = Instant::now();
    let rendered = ferry(root, c, &["render", "staging"]).await;
    assert!(rendered.status.success());
    eprintln!(
        "figure: render (image up to date, already pushed): {:.2} s",
        started.elapsed().as_secs_f64()
    );

    // Revision 2: a changed model, a new image; the same answers.
    set_model(root, 7);
    let started = Instant::now();
    let second = ferry_json(root, c, &["promote", "staging", "--timeout", "300s"]).await;
    eprintln!(
        "figure: promote of a changed model (build + push + apply + rollout ready): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(second["revision"], 2);
    let image2 = second["image"].as_str().unwrap().to_string();
    assert_ne!(image1, image2);
    assert_eq!(deployment_image(client, ns, name).await, image2);
    assert_eq!(
        cluster_prediction(root, c, client, ns, name, &image2).await,
        local
    );

    // A rollout that cannot finish (no node has the CPU it asks for): put back revision 2.
    let spec = std::fs::read_to_string(root.join("ferry.yaml")).unwrap();
    std::fs::write(
        root.join("ferry.yaml"),
        spec.replace("cpu: 100m", "cpu: 512"),
    )
    .unwrap();
    let out = ferry(root, c, &["promote", "staging", "--timeout", "60s"]).await;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot be scheduled"), "{err}");
    assert!(
        err.contains("put back revision 2 (recorded as revision 3)"),
        "{err}"
    );
    assert_eq!(deployment_image(client, ns, name).await, image2);
    assert_eq!(
        cluster_prediction(root, c, client, ns, name, &image2).await,
        local
    );

    let status = ferry_json(root, c, &["status", "staging"]).await;
    assert_eq!(status["revision"], 3, "{status}");
    assert_eq!(status["rolled_back_to"], 2, "{status}");
    assert_eq!(status["promoted_image"], image2.as_str());
    assert_eq!(status["drift"], serde_json::json!([]), "{status}");
    let d = &status["running"]["deployments"][0];
    assert_eq!(d["ready"], 1, "{status}");
    // The CPU request is the change not promoted.
    assert_eq!(
        status["changes"][0]["what"], "spec field serve.resources.cpu",
        "{status}"
    );

    let lock: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("ferry.lock")).unwrap()).unwrap();
    let promotions = lock["environments"]["staging"]["promotions"]
        .as_array()
        .unwrap();
    let actions: Vec<(&str, &str)> = promotions
        .iter()
        .map(|p| (p["action"].as_str().unwrap(), p["image"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("promote", image1.as_str()),
            ("promote", image2.as_str()),
            ("rollback", image2.as_str())
        ]
    );

    // Hand edits in the cluster are drift against ferry.lock: the Deployment's image, then the
    // serving config.
    let patch = |v: Value| kube::api::Patch::Strategic(v);
    let pp = kube::api::PatchParams::default();
    Api::<Deployment>::namespaced(client.clone(), ns)
        .patch(
            name,
            &pp,
            &patch(
                serde_json::json!({"spec": {"template": {"spec": {"containers": [
                    {"name": "server", "image": image1}
                ]}}}}),
            ),
        )
        .await
        .unwrap();
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns)
        .patch(
            &format!("{name}-serving"),
            &pp,
            &patch(serde_json::json!({"data": {"serving.json": "{}"}})),
        )
        .await
        .unwrap();
    let status = ferry_json(root, c, &["status", "staging"]).await;
    assert_eq!(
        status["drift"],
        serde_json::json!([
            format!("the Deployment runs {image1}, but revision 3 promoted {image2} (ferry.lock)"),
            format!(
                "the ConfigMap {name}-serving was changed in the cluster: its content is not what revision 3 applied (ferry.lock)"
            )
        ]),
        "{status}"
    );
}

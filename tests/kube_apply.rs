//! The cluster backend (connect, server-side apply, prune, rollout) against the fake API server
//! of `common::fake_api`: recorded responses, every request kept, so the tests check what went
//! over the wire and in which order.
//!
//! With FERRY_TEST_KUBECONFIG pointing at a kubeconfig, `a_release_goes_through_a_real_cluster`
//! also runs against that cluster (in a namespace of its own, deleted afterwards).

use std::path::Path;
use std::time::{Duration, Instant};

use ferry::kube::KubeError;
use ferry::kube::apply::{ApplyOptions, Change, apply};
use ferry::kube::client::connect_with;
use ferry::kube::render::{Manifests, Object};
use ferry::kube::rollout::{current_state, wait_rollout};
use ferry::ui::Ui;
use serde_json::{Value, json};

mod common;
use common::fake_api::{FakeApi, Reply, Seen, fixture, fixture_text, kubeconfig_for, ok, status};

const NS: &str = "churn-staging";
const SELECTOR: &str = "app.kubernetes.io/managed-by=ferry,app.kubernetes.io/instance=churn,ferry.dev/environment=staging";
const IMAGE: &str = "registry.example.com/ml/churn@sha256:3f9a1c2b7d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeeff";

// ---------------------------------------------------------------------------------------------
// A release as `render` makes it (the parts these tests need)
// ---------------------------------------------------------------------------------------------

fn labels() -> Value {
    json!({
        "app.kubernetes.io/component": "server",
        "app.kubernetes.io/instance": "churn",
        "app.kubernetes.io/managed-by": "ferry",
        "app.kubernetes.io/name": "churn",
        "app.kubernetes.io/version": "3f9a1c2b7d4e",
        "ferry.dev/environment": "staging",
        "ferry.dev/spec-hash": "9b2e4f6a1c3d5e7f"
    })
}

fn manifests() -> Manifests {
    let meta = |name: &str| json!({"name": name, "namespace": NS, "labels": labels()});
    let selector = json!({
        "app.kubernetes.io/component": "server",
        "app.kubernetes.io/instance": "churn",
        "app.kubernetes.io/name": "churn"
    });
    fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }
    Manifests {
        objects: vec![
            Object::Namespace(from(json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": NS, "labels": {"app.kubernetes.io/managed-by": "ferry"}}
            }))),
            Object::ConfigMap(from(json!({
                "apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("churn-serving"),
                "data": {"serving.json": "{\n  \"models\": []\n}"}
            }))),
            Object::Service(from(json!({
                "apiVersion": "v1", "kind": "Service", "metadata": meta("churn"),
                "spec": {"selector": selector, "type": "ClusterIP",
                         "ports": [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]}
            }))),
            Object::Deployment(from(json!({
                "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta("churn"),
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": selector},
                    "template": {
                        "metadata": {"labels": labels()},
                        "spec": {"containers": [{"name": "server", "image": IMAGE}]}
                    }
                }
            }))),
        ],
    }
}

const NS_PATH: &str = "/api/v1/namespaces/churn-staging";
const CM_PATH: &str = "/api/v1/namespaces/churn-staging/configmaps/churn-serving";
const SVC_PATH: &str = "/api/v1/namespaces/churn-staging/services/churn";
const DEPLOY_PATH: &str = "/apis/apps/v1/namespaces/churn-staging/deployments/churn";

/// The collections pruning lists, all empty.
fn empty_prunable_lists(fake: &FakeApi) {
    for path in [
        "/apis/networking.k8s.io/v1/namespaces/churn-staging/ingresses",
        "/apis/policy/v1/namespaces/churn-staging/poddisruptionbudgets",
        "/apis/autoscaling/v2/namespaces/churn-staging/horizontalpodautoscalers",
        "/apis/apps/v1/namespaces/churn-staging/deployments",
        "/api/v1/namespaces/churn-staging/services",
        "/api/v1/namespaces/churn-staging/secrets",
        "/api/v1/namespaces/churn-staging/configmaps",
    ] {
        fake.on("GET", path, ok("metadata-list-empty.json"));
    }
}

/// A cluster where the namespace, the ConfigMap (as rendered) and an older Service exist, the
/// Deployment does not, and a ConfigMap of an earlier release is left over.
fn existing_release(fake: &FakeApi) {
    fake.on("GET", NS_PATH, ok("namespace-churn-staging.json"));
    fake.on("PATCH", NS_PATH, ok("namespace-churn-staging.json"));
    fake.on("GET", CM_PATH, ok("configmap-churn-serving.json"));
    fake.on("PATCH", CM_PATH, ok("configmap-churn-serving.json"));
    fake.on("GET", SVC_PATH, ok("service-churn.json"));
    fake.on("PATCH", SVC_PATH, ok("service-churn-applied.json"));
    fake.on(
        "GET",
        DEPLOY_PATH,
        status(404, "status-404-deployment.json"),
    );
    fake.on("PATCH", DEPLOY_PATH, ok("deployment-churn-applied.json"));
    empty_prunable_lists(fake);
    fake.on(
        "GET",
        "/api/v1/namespaces/churn-staging/configmaps",
        ok("configmaps-labelled.json"),
    );
    fake.on(
        "GET",
        "/api/v1/namespaces/churn-staging/services",
        ok("services-labelled.json"),
    );
    fake.on(
        "GET",
        "/apis/apps/v1/namespaces/churn-staging/deployments",
        ok("deployments-labelled.json"),
    );
    fake.on(
        "DELETE",
        "/api/v1/namespaces/churn-staging/configmaps/churn-old-serving",
        ok("status-200-deleted-configmap.json"),
    );
}

fn patches(seen: &[Seen]) -> Vec<&Seen> {
    seen.iter().filter(|s| s.method == "PATCH").collect()
}

// ---------------------------------------------------------------------------------------------
// Connecting
// ---------------------------------------------------------------------------------------------

async fn connect_err(path: &Path, context: Option<&str>) -> KubeError {
    match connect_with(path, context).await {
        Ok(_) => panic!("connected with {} {context:?}", path.display()),
        Err(e) => e,
    }
}

#[tokio::test]
async fn connecting_asks_the_server_once_and_contexts_are_checked() {
    let fake = FakeApi::start().await;
    let path = fake.kubeconfig();
    connect_with(&path, None).await.unwrap();
    connect_with(&path, Some("staging-eu")).await.unwrap();
    let versions = fake.seen().iter().filter(|s| s.path == "/version").count();
    assert_eq!(versions, 2);

    let err = connect_err(&path, Some("staging-ue")).await;
    match &err {
        KubeError::UnknownContext {
            available,
            suggestion,
            ..
        } => {
            assert_eq!(available, &vec!["fake".to_string(), "staging-eu".into()]);
            assert_eq!(suggestion.as_deref(), Some("staging-eu"));
        }
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("its contexts: fake, staging-eu"), "{text}");
    assert!(text.contains("did you mean staging-eu?"), "{text}");

    let err = connect_err(&path, Some("production")).await;
    assert!(
        matches!(
            &err,
            KubeError::UnknownContext {
                suggestion: None,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_missing_kubeconfig_says_how_to_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let err = connect_err(&dir.path().join("nope"), None).await;
    assert!(matches!(err, KubeError::NoKubeconfig { .. }), "{err:?}");
    assert!(err.to_string().contains("KUBECONFIG"), "{err}");
}

#[tokio::test]
async fn an_unreachable_server_is_named_quickly() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let server = format!("http://127.0.0.1:{port}");
    let path = kubeconfig_for(dir.path(), &server);
    let started = Instant::now();
    let err = connect_err(&path, None).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    match &err {
        KubeError::Unreachable {
            server: named,
            context,
            ..
        } => {
            assert!(named.starts_with(&server), "{named}");
            assert_eq!(context, "fake");
        }
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(&server), "{text}");
    assert!(
        text.contains("kubectl --context fake cluster-info"),
        "{text}"
    );
    assert!(text.contains("Connection refused"), "{text}");
    assert!(!text.contains("ServiceError"), "{text}");
}

#[tokio::test]
async fn rejected_credentials_are_reported_as_such() {
    let fake = FakeApi::start().await;
    fake.on("GET", "/version", status(401, "status-401.json"));
    let err = connect_err(&fake.kubeconfig(), None).await;
    assert!(matches!(err, KubeError::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains(&fake.server()), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Applying
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_object_passes_a_dry_run_before_the_first_write() {
    let fake = FakeApi::start().await;
    existing_release(&fake);
    let client = fake.client().await;
    let applied = apply(
        &client,
        &manifests(),
        NS,
        SELECTOR,
        &ApplyOptions::default(),
        &Ui::silent(),
    )
    .await
    .unwrap();

    let seen = fake.seen();
    let patches = patches(&seen);
    let order: Vec<(&str, bool)> = patches
        .iter()
        .map(|p| (p.path.as_str(), p.q("dryRun") == Some("All")))
        .collect();
    assert_eq!(
        order,
        vec![
            (NS_PATH, true),
            (CM_PATH, true),
            (SVC_PATH, true),
            (DEPLOY_PATH, true),
            (NS_PATH, false),
            (CM_PATH, false),
            (SVC_PATH, false),
            (DEPLOY_PATH, false),
        ]
    );
    for p in &patches {
        assert_eq!(p.q("fieldManager"), Some("ferry"), "{p:?}");
        assert_eq!(p.q("force"), None, "{p:?}");
        assert_eq!(p.q("fieldValidation"), Some("Strict"), "{p:?}");
        assert_eq!(
            p.content_type.as_deref(),
            Some("application/apply-patch+yaml")
        );
    }
    // Namespaced bodies name the namespace; the Namespace is sent as rendered.
    let deploy = patches.last().unwrap().body.as_ref().unwrap();
    assert_eq!(deploy["metadata"]["namespace"], NS);
    assert_eq!(deploy["kind"], "Deployment");
    assert_eq!(
        deploy["spec"]["template"]["spec"]["containers"][0]["image"],
        IMAGE
    );

    let summary: Vec<(String, String, Change)> = applied
        .objects
        .iter()
        .map(|o| (o.kind.clone(), o.name.clone(), o.change))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("Namespace".into(), NS.into(), Change::Unchanged),
            (
                "ConfigMap".into(),
                "churn-serving".into(),
                Change::Unchanged
            ),
            ("Service".into(), "churn".into(), Change::Configured),
            ("Deployment".into(), "churn".into(), Change::Created),
            (
                "ConfigMap".into(),
                "churn-old-serving".into(),
                Change::Pruned
            ),
        ]
    );
    assert_eq!(
        applied.summary(),
        "1 created, 1 configured, 2 unchanged, 1 pruned"
    );

    // Pruning: metadata-only lists with the selector, one delete, of exactly the stale object.
    let lists: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.method == "GET" && s.q("labelSelector").is_some())
        .collect();
    assert_eq!(lists.len(), 7);
    for l in &lists {
        assert_eq!(l.q("labelSelector"), Some(SELECTOR));
        assert!(
            l.accept
                .as_deref()
                .is_some_and(|a| a.contains("as=PartialObjectMetadataList")),
            "{l:?}"
        );
    }
    let deletes: Vec<&Seen> = seen.iter().filter(|s| s.method == "DELETE").collect();
    assert_eq!(deletes.len(), 1);
    assert_eq!(
        deletes[0].path,
        "/api/v1/namespaces/churn-staging/configmaps/churn-old-serving"
    );
    assert_eq!(
        deletes[0].body.as_ref().unwrap()["propagationPolicy"],
        "Background"
    );
    // And the dry run came before any of it.
    let first_write = seen.iter().position(Seen::is_write).unwrap();
    let last_dry = seen
        .iter()
        .rposition(|s| s.q("dryRun") == Some("All"))
        .unwrap();
    assert!(last_dry < first_write);
}

#[tokio::test]
async fn a_conflict_in_the_dry_run_means_no_write_at_all() {
    let fake = FakeApi::start().await;
    existing_release(&fake);
    fake.on(
        "PATCH",
        &format!("{DEPLOY_PATH}?dryRun=All"),
        status(409, "status-409-conflict-deployment.json"),
    );
    let client = fake.client().await;
    let err = apply(
        &client,
        &manifests(),
        NS,
        SELECTOR,
        &ApplyOptions::default(),
        &Ui::silent(),
    )
    .await
    .unwrap_err();

    match &err {
        KubeError::Conflicts { conflicts } => {
            assert_eq!(conflicts.len(), 1);
            assert_eq!(conflicts[0].object, "Deployment churn");
            assert_eq!(conflicts[0].manager, "kubectl-edit");
            assert_eq!(
                conflicts[0].fields,
                vec![
                    ".spec.replicas",
                    ".spec.template.spec.containers[name=\"server\"].resources.limits.memory"
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("nothing was changed"), "{text}");
    assert!(text.contains("--force-conflicts"), "{text}");

    let seen = fake.seen();
    let writes: Vec<&Seen> = seen.iter().filter(|s| s.is_write()).collect();
    assert!(writes.is_empty(), "{writes:#?}");
    // Every object was checked, so the report is complete.
    assert_eq!(patches(&seen).len(), 4);
}

#[tokio::test]
async fn force_conflicts_takes_the_fields_over() {
    let fake = FakeApi::start().await;
    existing_release(&fake);
    let client = fake.client().await;
    let opts = ApplyOptions {
        force_conflicts: true,
        dry_run: false,
    };
    apply(&client, &manifests(), NS, SELECTOR, &opts, &Ui::silent())
        .await
        .unwrap();
    let seen = fake.seen();
    let patches = patches(&seen);
    assert_eq!(patches.len(), 8);
    assert!(
        patches
            .iter()
            .all(|p| p.q("force") == Some("true") && p.q("fieldManager") == Some("ferry"))
    );
}

#[tokio::test]
async fn an_invalid_object_is_refused_before_anything_changes() {
    let fake = FakeApi::start().await;
    existing_release(&fake);
    fake.on(
        "PATCH",
        &format!("{SVC_PATH}?dryRun=All"),
        status(422, "status-422-invalid-service.json"),
    );
    let client = fake.client().await;
    let err = apply(
        &client,
        &manifests(),
        NS,
        SELECTOR,
        &ApplyOptions::default(),
        &Ui::silent(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, KubeError::Rejected { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("Service churn: Service \"churn\" is invalid: spec.ports[0].port"),
        "{text}"
    );
    assert!(!fake.seen().iter().any(Seen::is_write));
}

#[tokio::test]
async fn a_dry_run_reports_changes_and_writes_nothing() {
    let fake = FakeApi::start().await;
    existing_release(&fake);
    let client = fake.client().await;
    let opts = ApplyOptions {
        force_conflicts: false,
        dry_run: true,
    };
    let applied = apply(&client, &manifests(), NS, SELECTOR, &opts, &Ui::silent())
        .await
        .unwrap();
    assert!(applied.dry_run);
    assert_eq!(
        applied.summary(),
        "1 created, 1 configured, 2 unchanged, 1 pruned"
    );
    let seen = fake.seen();
    assert!(!seen.iter().any(Seen::is_write), "{seen:#?}");
    let delete = seen.iter().find(|s| s.method == "DELETE").unwrap();
    assert_eq!(delete.body.as_ref().unwrap()["dryRun"], json!(["All"]));
}

#[tokio::test]
async fn a_new_namespace_is_created_before_the_rest_is_checked() {
    let fake = FakeApi::start().await;
    existing_release(&fake);
    fake.on("GET", NS_PATH, status(404, "status-404-namespace.json"));
    let client = fake.client().await;
    let applied = apply(
        &client,
        &manifests(),
        NS,
        SELECTOR,
        &ApplyOptions::default(),
        &Ui::silent(),
    )
    .await
    .unwrap();
    let seen = fake.seen();
    let order: Vec<(&str, bool)> = patches(&seen)
        .iter()
        .map(|p| (p.path.as_str(), p.q("dryRun") == Some("All")))
        .collect();
    assert_eq!(
        order,
        vec![
            (NS_PATH, true),
            (NS_PATH, false),
            (CM_PATH, true),
            (SVC_PATH, true),
            (DEPLOY_PATH, true),
            (CM_PATH, false),
            (SVC_PATH, false),
            (DEPLOY_PATH, false),
        ]
    );
    assert_eq!(applied.objects[0].change, Change::Created);
}

#[tokio::test]
async fn a_forbidden_read_names_verb_resource_and_namespace() {
    let fake = FakeApi::start().await;
    existing_release(&fake);
    fake.on(
        "GET",
        DEPLOY_PATH,
        status(403, "status-403-deployment.json"),
    );
    let client = fake.client().await;
    let err = apply(
        &client,
        &manifests(),
        NS,
        SELECTOR,
        &ApplyOptions::default(),
        &Ui::silent(),
    )
    .await
    .unwrap_err();
    match &err {
        KubeError::Forbidden {
            verb,
            resource,
            namespace,
            ..
        } => {
            assert_eq!(verb, "get");
            assert_eq!(resource, "deployments.apps");
            assert_eq!(namespace.as_deref(), Some(NS));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string()
            .contains("kubectl auth can-i get deployments.apps -n churn-staging"),
        "{err}"
    );
    assert!(!fake.seen().iter().any(|s| s.method == "PATCH"));
}

#[tokio::test]
async fn a_namespace_these_credentials_may_not_change_is_left_alone() {
    let fake = FakeApi::start().await;
    existing_release(&fake);
    fake.on(
        "PATCH",
        &format!("{NS_PATH}?dryRun=All"),
        status(403, "status-403-namespace.json"),
    );
    let client = fake.client().await;
    let applied = apply(
        &client,
        &manifests(),
        NS,
        SELECTOR,
        &ApplyOptions::default(),
        &Ui::silent(),
    )
    .await
    .unwrap();
    assert!(!applied.objects.iter().any(|o| o.kind == "Namespace"));
    assert_eq!(applied.count(Change::Created), 1);
    let seen = fake.seen();
    let namespace_patches = patches(&seen)
        .into_iter()
        .filter(|p| p.path == NS_PATH)
        .count();
    assert_eq!(namespace_patches, 1, "only the dry run");
}

#[tokio::test]
async fn an_empty_selector_never_prunes() {
    let fake = FakeApi::start().await;
    existing_release(&fake);
    let client = fake.client().await;
    let err = apply(
        &client,
        &manifests(),
        NS,
        " ",
        &ApplyOptions::default(),
        &Ui::silent(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("refusing to prune"), "{err}");
    assert!(!fake.seen().iter().any(|s| s.method != "GET"));
}

// ---------------------------------------------------------------------------------------------
// Rollouts
// ---------------------------------------------------------------------------------------------

const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/churn-staging/deployments";
const REPLICASETS: &str = "/apis/apps/v1/namespaces/churn-staging/replicasets";
const PODS: &str = "/api/v1/namespaces/churn-staging/pods";
const EVENTS: &str = "/api/v1/namespaces/churn-staging/events";

/// A Deployment that stays as `list` says: the watch sends nothing.
fn stuck_deployment(fake: &FakeApi, list: &str) {
    fake.on("GET", DEPLOYMENTS, ok(list));
    fake.on(
        "GET",
        &format!("{DEPLOYMENTS}?watch=true"),
        Reply::Watch(vec![]),
    );
}

#[tokio::test]
async fn a_rollout_is_followed_to_the_end() {
    let fake = FakeApi::start().await;
    fake.on("GET", DEPLOYMENTS, ok("deployments-churn-progressing.json"));
    let events = fixture("watch-churn-rollout.json")
        .as_array()
        .unwrap()
        .clone();
    fake.on(
        "GET",
        &format!("{DEPLOYMENTS}?watch=true"),
        Reply::Watch(events),
    );
    let client = fake.client().await;
    let out = wait_rollout(&client, NS, "churn", Duration::from_secs(20), &Ui::silent())
        .await
        .unwrap();
    assert_eq!(out.deployment, "churn");
    assert_eq!(out.replicas, 2);
    assert_eq!(out.revision.as_deref(), Some("2"));
    assert_eq!(out.images, vec![IMAGE.to_string()]);
    // One object watched, from the version the list returned.
    let seen = fake.seen();
    let watch = seen.iter().find(|s| s.q("watch") == Some("true")).unwrap();
    assert_eq!(watch.q("fieldSelector"), Some("metadata.name=churn"));
    assert_eq!(watch.q("resourceVersion"), Some("6001"));
}

#[tokio::test]
async fn an_image_that_does_not_pull_is_diagnosed() {
    let fake = FakeApi::start().await;
    stuck_deployment(&fake, "deployments-churn-stuck.json");
    fake.on("GET", REPLICASETS, ok("replicasets-churn.json"));
    fake.on("GET", PODS, ok("pods-churn-imagepullbackoff.json"));
    fake.on("GET", EVENTS, ok("events-churn-imagepull.json"));
    let client = fake.client().await;
    let err = wait_rollout(&client, NS, "churn", Duration::from_secs(1), &Ui::silent())
        .await
        .unwrap_err();
    let KubeError::RolloutFailed {
        reason,
        details,
        logs,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert!(reason.contains("not rolled out after 1.0s"), "{reason}");
    assert!(reason.contains("1/2 updated, 2 ready, 2 old"), "{reason}");
    // The 110-character image reference the kubelet repeats is named once, in the hint.
    assert_eq!(
        details[0],
        "pod churn-6d8f7b9c5d-x7k2p: container server cannot pull its image (ImagePullBackOff): \
         Back-off pulling image: ErrImagePull: rpc error: code = NotFound desc = failed to pull and unpack image: not found",
        "{details:#?}"
    );
    // Newest first, the other app's warnings left out.
    assert!(
        details[1].starts_with(
            "event Failed on pod/churn-6d8f7b9c5d-x7k2p (×6): Error: ImagePullBackOff"
        ),
        "{details:#?}"
    );
    assert_eq!(
        details[2],
        "event Failed on pod/churn-6d8f7b9c5d-x7k2p (×4): Failed to pull image: rpc error: code = NotFound desc = failed to pull and unpack image: not found"
    );
    assert!(!details.iter().any(|d| d.contains("other-app")));
    assert_eq!(
        details.last().unwrap(),
        &format!(
            "hint: check that {IMAGE} exists and that the cluster may pull it (image_pull_secret in the environment)"
        )
    );
    assert!(logs.is_empty());

    // The pods are those of the newest ReplicaSet only.
    let seen = fake.seen();
    let pods = seen.iter().find(|s| s.path == PODS).unwrap();
    assert!(
        pods.q("labelSelector")
            .unwrap()
            .ends_with(",pod-template-hash=6d8f7b9c5d"),
        "{pods:?}"
    );
    let events = seen.iter().find(|s| s.path == EVENTS).unwrap();
    assert_eq!(events.q("fieldSelector"), Some("type=Warning"));
    assert!(err.to_string().lines().count() < 20, "{err}");
}

#[tokio::test]
async fn a_crash_loop_comes_with_the_containers_last_output() {
    let fake = FakeApi::start().await;
    stuck_deployment(&fake, "deployments-churn-stuck.json");
    fake.on("GET", REPLICASETS, ok("replicasets-churn.json"));
    fake.on("GET", PODS, ok("pods-churn-crashloop.json"));
    fake.on("GET", EVENTS, ok("events-churn-crashloop.json"));
    fake.on(
        "GET",
        &format!("{PODS}/churn-6d8f7b9c5d-x7k2p/log?previous=true"),
        Reply::Text(200, fixture_text("logs-churn-crashloop.txt")),
    );
    let client = fake.client().await;
    let err = wait_rollout(&client, NS, "churn", Duration::from_secs(1), &Ui::silent())
        .await
        .unwrap_err();
    let KubeError::RolloutFailed { details, logs, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        details[0],
        "pod churn-6d8f7b9c5d-x7k2p: container server keeps crashing (4 restarts; last exit code 1 (Error))"
    );
    assert_eq!(logs.len(), 3);
    assert!(logs[2].contains("Protobuf parsing failed"), "{logs:#?}");
    let log_request = fake
        .seen()
        .into_iter()
        .find(|s| s.path.ends_with("/log"))
        .unwrap();
    assert_eq!(log_request.q("container"), Some("server"));
    assert_eq!(log_request.q("tailLines"), Some("20"));
    let text = err.to_string();
    assert!(
        text.contains("last output of the crashed container:\n    ferry serve-model"),
        "{text}"
    );
}

#[tokio::test]
async fn a_missed_deadline_fails_at_once_and_names_the_missing_gpu() {
    let fake = FakeApi::start().await;
    stuck_deployment(&fake, "deployments-churn-deadline.json");
    fake.on("GET", REPLICASETS, ok("replicasets-churn-gpu.json"));
    fake.on("GET", PODS, ok("pods-churn-unschedulable.json"));
    fake.on("GET", EVENTS, ok("events-churn-unschedulable.json"));
    let client = fake.client().await;
    let started = Instant::now();
    let err = wait_rollout(&client, NS, "churn", Duration::from_secs(60), &Ui::silent())
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    let KubeError::RolloutFailed {
        reason, details, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert!(
        reason.contains("no progress within its deadline (10m00s)"),
        "{reason}"
    );
    assert_eq!(
        details[0],
        "Progressing: ProgressDeadlineExceeded: ReplicaSet \"churn-7f4c9d8b6a\" has timed out progressing."
    );
    assert!(
        details[1].starts_with(
            "pod churn-7f4c9d8b6a-q9m4t cannot be scheduled: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
        ),
        "{details:#?}"
    );
    // The scheduler's event says what the pod's condition says: shown once.
    assert!(
        !details
            .iter()
            .any(|d| d.starts_with("event FailedScheduling"))
    );
    assert!(
        details[2].starts_with("hint: no node has a free nvidia.com/gpu"),
        "{details:#?}"
    );
    assert_eq!(details.len(), 3);
    let pods = fake.seen().into_iter().find(|s| s.path == PODS).unwrap();
    assert!(
        pods.q("labelSelector")
            .unwrap()
            .ends_with(",pod-template-hash=7f4c9d8b6a")
    );
}

#[tokio::test]
async fn a_deployment_that_does_not_exist_fails_at_once() {
    let fake = FakeApi::start().await;
    stuck_deployment(&fake, "metadata-list-empty.json");
    let client = fake.client().await;
    let err = wait_rollout(&client, NS, "churn", Duration::from_secs(60), &Ui::silent())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[tokio::test]
async fn the_current_state_is_read_from_the_deployment() {
    let fake = FakeApi::start().await;
    fake.on("GET", DEPLOYMENTS, ok("deployments-churn-running.json"));
    fake.on(
        "GET",
        "/api/v1/namespaces/churn-staging/configmaps",
        ok("configmaps-churn.json"),
    );
    let client = fake.client().await;
    let state = current_state(&client, NS, SELECTOR).await.unwrap();
    // The serving config's digest, as `ferry.lock` records it for drift.
    let cm: Value = serde_json::from_str(&fixture_text("configmap-churn-serving.json")).unwrap();
    let data: std::collections::BTreeMap<String, String> =
        serde_json::from_value(cm["data"].clone()).unwrap();
    assert_eq!(
        state.configs.get("churn-serving"),
        Some(&ferry::kube::render::config_digest(&data))
    );
    let d = state.deployment().unwrap();
    assert_eq!(d.name, "churn");
    assert_eq!(d.images, vec![IMAGE.to_string()]);
    assert_eq!(
        d.spec_hash.as_deref(),
        Some("sha256:9b2e4f6a1c3d5e7f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071")
    );
    assert_eq!(d.spec_hash_label.as_deref(), Some("9b2e4f6a1c3d5e7f"));
    assert_eq!((d.ready, d.desired), (2, 2));
    assert!(d.rolled_out);
    let list = fake
        .seen()
        .into_iter()
        .find(|s| s.path == DEPLOYMENTS)
        .unwrap();
    assert_eq!(list.q("labelSelector"), Some(SELECTOR));
}

// ---------------------------------------------------------------------------------------------
// A real cluster
// ---------------------------------------------------------------------------------------------

/// Renders a release of a small project and, in a fresh namespace: a dry run, the first apply,
/// an apply that changes nothing, pruning of a leftover, a rollout that fails because its image
/// cannot be pulled (and the diagnosis saying so), a rollout that completes (scaled to zero: no
/// image to pull), the state read back; then the namespace is deleted.
#[tokio::test]
async fn a_release_goes_through_a_real_cluster() {
    let namespace = format!(
        "ferry-test-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    // Rendered before the check, so that without a cluster the test still proves the release.
    let project_dir = tempfile::tempdir().unwrap();
    let release = test_release(project_dir.path(), &namespace);
    let Some(kubeconfig) = std::env::var_os("FERRY_TEST_KUBECONFIG") else {
        eprintln!("skipped: FERRY_TEST_KUBECONFIG is not set");
        return;
    };
    let client = connect_with(Path::new(&kubeconfig), None).await.unwrap();
    let result = real_cluster_round(&client, &namespace, &release).await;
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(client.clone());
    let _ = namespaces
        .delete(&namespace, &kube::api::DeleteParams::background())
        .await;
    result.unwrap();
}

/// A release of a one-model project whose image cannot be pulled.
fn test_release(dir: &Path, namespace: &str) -> ferry::kube::render::Release {
    std::fs::write(
        dir.join("ferry.yaml"),
        format!(
            "name: ferry-it
environment:
  base: python:3.11-slim
serve:
  model: model.onnx
environments:
  test:
    target: kubernetes
    namespace: {namespace}
    serve: {{ replicas: 1 }}
"
        ),
    )
    .unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny.onnx"),
        dir.join("model.onnx"),
    )
    .unwrap();
    let project = ferry::spec::Project::load_dir(dir, Some("test")).unwrap();
    let serving = ferry::plan::plan(&project, "").serve.unwrap();
    // A reserved name (RFC 2606): the pull fails, which is what the diagnosis is tested on.
    let image = format!("registry.invalid/ferry/serving@sha256:{}", "0".repeat(64));
    let hash = project.hash().unwrap().as_str().to_string();
    let release = ferry::kube::render::Release::new(&project, serving, image, hash, None).unwrap();
    assert_eq!(release.namespace, namespace);
    release
}

async fn real_cluster_round(
    client: &kube::Client,
    namespace: &str,
    release: &ferry::kube::render::Release,
) -> Result<(), String> {
    let manifests = ferry::kube::render::render(release);
    let selector = release.managed_selector();
    let image = release.image.clone();
    let hash = release.spec_hash.clone();
    let ui = Ui::silent();
    let opts = ApplyOptions::default();
    let run = |m: Manifests, opts: ApplyOptions| {
        let (selector, ui) = (selector.clone(), ui.clone());
        async move {
            apply(client, &m, namespace, &selector, &opts, &ui)
                .await
                .map_err(|e| e.to_string())
        }
    };

    let dry = run(
        manifests.clone(),
        ApplyOptions {
            dry_run: true,
            ..opts
        },
    )
    .await?;
    if dry.count(Change::Created) != manifests.objects.len() {
        return Err(format!("dry run: {dry:?}"));
    }
    let first = run(manifests.clone(), opts).await?;
    if first.count(Change::Created) != manifests.objects.len() {
        return Err(format!("first apply: {first:?}"));
    }
    let again = run(manifests.clone(), opts).await?;
    if again.changed() {
        return Err(format!("second apply changed something: {again:?}"));
    }

    // A leftover of an earlier release: applied with the same labels, then dropped.
    let mut with_extra = manifests.clone();
    let mut extra = manifests
        .objects
        .iter()
        .find_map(|o| match o {
            Object::ConfigMap(c) => Some(c.clone()),
            _ => None,
        })
        .ok_or("no ConfigMap rendered")?;
    extra.metadata.name = Some("ferry-it-leftover".into());
    with_extra.objects.push(Object::ConfigMap(extra));
    run(with_extra, opts).await?;
    let pruned = run(manifests.clone(), opts).await?;
    let names: Vec<&str> = pruned
        .objects
        .iter()
        .filter(|o| o.change == Change::Pruned)
        .map(|o| o.name.as_str())
        .collect();
    if names != ["ferry-it-leftover"] {
        return Err(format!("pruned {names:?}"));
    }

    match wait_rollout(client, namespace, "ferry-it", Duration::from_secs(240), &ui).await {
        Err(KubeError::RolloutFailed { details, .. })
            if details.iter().any(|d| d.contains("cannot pull its image")) => {}
        other => {
            return Err(format!(
                "rollout of an image that cannot be pulled: {other:?}"
            ));
        }
    }

    let mut scaled = manifests.clone();
    for o in &mut scaled.objects {
        if let Object::Deployment(d) = o
            && let Some(spec) = d.spec.as_mut()
        {
            spec.replicas = Some(0);
        }
    }
    let applied = run(scaled, opts).await?;
    if applied.count(Change::Configured) != 1 {
        return Err(format!("scaling to zero: {applied:?}"));
    }
    let done = wait_rollout(client, namespace, "ferry-it", Duration::from_secs(120), &ui)
        .await
        .map_err(|e| e.to_string())?;
    if done.replicas != 0 || done.images != [image.clone()] {
        return Err(format!("rollout: {done:?}"));
    }

    let state = current_state(client, namespace, &selector)
        .await
        .map_err(|e| e.to_string())?;
    let d = state.deployment().ok_or("no Deployment found")?;
    if d.images != [image] || d.spec_hash.as_deref() != Some(hash.as_str()) || !d.rolled_out {
        return Err(format!("state: {d:?}"));
    }
    Ok(())
}

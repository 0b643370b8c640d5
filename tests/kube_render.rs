//! Rendered manifests: what `promote` applies, checked field by field and validated in strict
//! mode against the official Kubernetes schema (PyPI's kubernetes-validate; the test says
//! "skipped" where it is not installed, `.ci/run` installs it).

mod common;

use std::path::Path;
use std::process::Command;

use ferry::kube::workloads::{Placement, job_name, notebook, training_job};
use ferry::kube::{Object, Release, Secrets, render};
use ferry::spec::Project;
use serde_json::Value;

const SPEC: &str = "\
name: churn
environment:
  base: python:3.11-slim
serve:
  model: artifacts/model.onnx
  batching: { max_batch_size: 64, max_delay_ms: 2 }
  variants:
    - { name: b, model: artifacts/model-b.onnx, weight: 10 }
  resources: { cpu: 500m, memory: 1Gi }
environments:
  dev: { target: docker }
  staging:
    target: kubernetes
    namespace: churn-staging
    registry: 127.0.0.1:5000/ml
  production:
    target: kubernetes
    namespace: churn
    registry: registry.example.com/ml
    ingress: { host: churn.example.com, class: nginx, tls_secret: churn-tls }
    node_selector: { cloud.google.com/gke-nodepool: gpu }
    tolerations: [{ key: nvidia.com/gpu, operator: Exists, effect: NoSchedule }]
    image_pull_secret: regcred
    secrets: .env.production
    serve:
      resources: { gpu: 1 }
      autoscale: { min: 3, max: 10, cpu_percent: 60 }
";

const IMAGE: &str = "registry.example.com/ml/churn-serve@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn project(dir: &Path, env: &str) -> Project {
    std::fs::write(dir.join("ferry.yaml"), SPEC).unwrap();
    std::fs::create_dir_all(dir.join("artifacts")).unwrap();
    std::fs::write(dir.join("artifacts/model.onnx"), b"model a").unwrap();
    std::fs::write(dir.join("artifacts/model-b.onnx"), b"model b").unwrap();
    std::fs::write(
        dir.join(".env.production"),
        "DB_PASSWORD=hunter2\nAPI_TOKEN='t0k3n'\n",
    )
    .unwrap();
    Project::load_dir(dir, Some(env)).unwrap()
}

fn release(dir: &Path, env: &str) -> Release {
    let p = project(dir, env);
    let serving = ferry::serving_image::serving_plan(&p).unwrap();
    let secrets = p
        .spec
        .cluster
        .as_ref()
        .and_then(|c| c.secrets.as_ref())
        .map(|s| Secrets::read(&p.path(s)).unwrap());
    let hash = p.hash().unwrap().as_str().to_string();
    Release::new(&p, serving, IMAGE.into(), hash, secrets).unwrap()
}

/// Where a container's volumes are mounted, in order.
fn mount_paths(container: &Value) -> Vec<&str> {
    container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Option<&'a Value> {
    objects.iter().find(|o| o["kind"] == kind)
}

#[test]
fn production_renders_every_object_it_asks_for() {
    let dir = tempfile::tempdir().unwrap();
    let m = render(&release(dir.path(), "production"));
    let kinds: Vec<&str> = m.objects.iter().map(Object::kind).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ConfigMap",
            "Secret",
            "Service",
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "Ingress"
        ]
    );
    let objects: Vec<Value> = m.objects.iter().map(Object::to_value).collect();
    for o in &objects[1..] {
        assert_eq!(o["metadata"]["namespace"], "churn", "{o}");
        let labels = &o["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/name"], "churn");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "ferry");
        assert_eq!(labels["app.kubernetes.io/version"], "0123456789ab");
        assert_eq!(labels["ferry.dev/environment"], "production");
        assert_eq!(labels["ferry.dev/spec-hash"].as_str().unwrap().len(), 16);
    }

    let d = find(&objects, "Deployment").unwrap();
    let pod = &d["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    // By digest only, never a tag.
    assert_eq!(c["image"], IMAGE);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/v2/health/live");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/v2/health/ready");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1");
    assert_eq!(c["resources"]["limits"]["memory"], "1Gi");
    assert_eq!(c["resources"]["requests"]["cpu"], "500m");
    assert_eq!(c["envFrom"][0]["secretRef"]["name"], "churn-secrets");
    assert_eq!(pod["imagePullSecrets"][0]["name"], "regcred");
    assert_eq!(pod["nodeSelector"]["cloud.google.com/gke-nodepool"], "gpu");
    assert_eq!(pod["tolerations"][0]["operator"], "Exists");
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    // The autoscaler owns the replica count.
    assert!(d["spec"].get("replicas").is_none(), "{}", d["spec"]);
    let annotations = &d["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    let hpa = find(&objects, "HorizontalPodAutoscaler").unwrap();
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["minReplicas"], 3);
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        60
    );
    let ing = find(&objects, "Ingress").unwrap();
    assert_eq!(ing["spec"]["rules"][0]["host"], "churn.example.com");
    assert_eq!(ing["spec"]["tls"][0]["secretName"], "churn-tls");

    // The serving config in the ConfigMap is the plan's, models at their image paths.
    let cm = find(&objects, "ConfigMap").unwrap();
    let config: Value = serde_json::from_str(cm["data"]["serving.json"].as_str().unwrap()).unwrap();
    assert_eq!(config["models"][0]["name"], "churn");
    let weights: Vec<u64> = config["models"][0]["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["weight"].as_u64().unwrap())
        .collect();
    assert_eq!(weights, [90, 10]);
    assert_eq!(config["models"][0]["batching"]["max_batch_size"], 64);
}

#[test]
fn secrets_reach_the_secret_only_and_are_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let m = render(&release(dir.path(), "production"));
    let secret = m
        .objects
        .iter()
        .find(|o| o.kind() == "Secret")
        .unwrap()
        .to_value();
    // Base64 of the value, as the API takes it.
    assert_eq!(secret["data"]["DB_PASSWORD"], "aHVudGVyMg==");
    for shown in [m.to_yaml(), m.to_json().to_string()] {
        assert!(
            !shown.contains("hunter2") && !shown.contains("aHVudGVyMg"),
            "{shown}"
        );
        assert!(!shown.contains("t0k3n"));
        assert!(shown.contains("DB_PASSWORD"), "the names are shown");
    }
    let cm = m
        .objects
        .iter()
        .find(|o| o.kind() == "ConfigMap")
        .unwrap()
        .to_value()
        .to_string();
    assert!(!cm.contains("hunter2"));
}

#[test]
fn staging_is_the_same_server_with_fewer_objects() {
    let dir = tempfile::tempdir().unwrap();
    let staging = render(&release(dir.path(), "staging"));
    let kinds: Vec<&str> = staging.objects.iter().map(Object::kind).collect();
    assert_eq!(
        kinds,
        ["Namespace", "ConfigMap", "Service", "Deployment"],
        "one replica: no PDB; no autoscale, ingress or secrets"
    );
    let d = staging
        .objects
        .iter()
        .find(|o| o.kind() == "Deployment")
        .unwrap()
        .to_value();
    assert_eq!(d["spec"]["replicas"], 1);
    // Same spec, same serving config in both environments.
    let dir2 = tempfile::tempdir().unwrap();
    let prod = render(&release(dir2.path(), "production"));
    let config = |m: &ferry::kube::Manifests| {
        m.objects
            .iter()
            .find(|o| o.kind() == "ConfigMap")
            .unwrap()
            .to_value()["data"]["serving.json"]
            .clone()
    };
    assert_eq!(config(&staging), config(&prod));
}

#[test]
fn a_tag_is_refused_where_a_digest_is_needed() {
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path(), "staging");
    let serving = ferry::serving_image::serving_plan(&p).unwrap();
    let err = Release::new(
        &p,
        serving,
        "ml/churn-serve:latest".into(),
        "h".into(),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("by digest"), "{err}");
}

/// Strict validation of objects on Kubernetes 1.28 (the oldest a cluster is likely to run), 1.33
/// (the API ferry is built against) and the newest the validator knows.
fn validate(dir: &Path, objects: &[Value]) {
    let mut files = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        let path = dir.join(format!("obj-{i}.yaml"));
        std::fs::write(&path, serde_yaml_ng::to_string(o).unwrap()).unwrap();
        files.push(path);
    }
    common::validate_manifests(&files);
}

fn placement(p: &Project) -> Placement {
    Placement {
        project: p.spec.name.clone(),
        env: p.spec.env.clone().unwrap(),
        namespace: p.spec.namespace.clone().unwrap(),
        cluster: p.spec.cluster.clone().unwrap(),
        image: IMAGE.replace("churn-serve", "churn"),
        secret: Some("churn-secrets".into()),
        run_on: vec![ferry::platform::Arch::Amd64],
    }
}

const TRAIN: &str = "\
train:
  command: python train.py --out artifacts/model.onnx
  inputs: [data/]
  outputs: [artifacts/model.onnx, reports/]
  resources: { cpu: 2, memory: 4Gi }
  env: { SEED: \"7\" }
notebook: { port: 8888 }
";

#[test]
fn training_is_a_job_whose_outputs_wait_for_collection() {
    let dir = tempfile::tempdir().unwrap();
    project(dir.path(), "production");
    let spec = SPEC.replacen("\nserve:\n", &format!("\n{TRAIN}serve:\n"), 1);
    std::fs::write(dir.path().join("ferry.yaml"), spec).unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let p = Project::load_dir(dir.path(), Some("production")).unwrap();
    let plan = ferry::plan::plan(&p, "");
    let job = training_job(
        &placement(&p),
        plan.train.as_ref().unwrap(),
        "20261123-114502-123-3f9a",
    );
    let v = serde_json::to_value(&job).unwrap();
    assert_eq!(
        v["metadata"]["name"],
        "churn-train-20261123-114502-123-3f9a"
    );
    assert_eq!(v["spec"]["backoffLimit"], 0);
    let pod = &v["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    let train = &pod["initContainers"][0];
    assert_eq!(
        train["command"][2],
        "python train.py --out artifacts/model.onnx"
    );
    assert_eq!(train["resources"]["limits"]["memory"], "4Gi");
    assert_eq!(train["envFrom"][0]["secretRef"]["name"], "churn-secrets");
    let mounts = mount_paths(train);
    assert_eq!(
        mounts,
        ["/tmp", "/workspace/artifacts", "/workspace/reports"]
    );
    // The collector holds the same output volumes.
    let collect = &pod["containers"][0];
    assert!(
        collect["volumeMounts"]
            .to_string()
            .contains("/workspace/artifacts")
    );
    assert_eq!(pod["nodeSelector"]["cloud.google.com/gke-nodepool"], "gpu");

    let nb = notebook(
        &placement(&p),
        plan.notebook.as_ref().unwrap(),
        "s3cret-token",
        "10Gi",
    );
    let sts = serde_json::to_value(&nb.stateful_set).unwrap();
    let c = &sts["spec"]["template"]["spec"]["containers"][0];
    assert!(!c["command"].to_string().contains("--allow-root"));
    let token_env = c["env"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        token_env["valueFrom"]["secretKeyRef"]["name"],
        "churn-notebook-token"
    );
    assert!(
        !sts.to_string().contains("s3cret-token"),
        "the token lives in the Secret only"
    );
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "10Gi"
    );

    if common::have_manifest_validator() {
        validate(
            dir.path(),
            &[
                v,
                sts,
                serde_json::to_value(&nb.service).unwrap(),
                serde_json::to_value(&nb.secret).unwrap(),
            ],
        );
    }
}

/// `ferry train --notebook` in a cluster: the same Job as for the command, with the notebook
/// runner as the command and one more volume for the executed notebook.
#[test]
fn a_notebook_run_is_the_same_job_with_the_runner_as_its_command() {
    let dir = tempfile::tempdir().unwrap();
    project(dir.path(), "production");
    let spec = SPEC.replacen("\nserve:\n", &format!("\n{TRAIN}serve:\n"), 1);
    std::fs::write(dir.path().join("ferry.yaml"), spec).unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(
        dir.path().join("train.ipynb"),
        r#"{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}"#,
    )
    .unwrap();
    let p = Project::load_dir(dir.path(), Some("production")).unwrap();
    let req = ferry::notebook::Request::new(
        &p,
        Path::new("train.ipynb"),
        dir.path(),
        &["seed=11".to_string()],
    )
    .unwrap();
    let command_plan = ferry::project_plan::make_plan(&p).unwrap();
    let plan = ferry::project_plan::make_plan_with(&p, Some(&req)).unwrap();
    assert_eq!(
        plan.env_image, command_plan.env_image,
        "with a notebook server in the environment, the image is the command run's"
    );
    let run = |plan: &ferry::plan::Plan| {
        let job = training_job(&placement(&p), plan.train.as_ref().unwrap(), "r1");
        serde_json::to_value(&job).unwrap()
    };
    let (v, plain) = (run(&plan), run(&command_plan));
    let train = &v["spec"]["template"]["spec"]["initContainers"][0];
    let command: Vec<&str> = train["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(command[..2], ["python", "-c"]);
    assert_eq!(command[2], ferry::notebook::RUNNER);
    assert_eq!(
        command[3..],
        [
            "/workspace/train.ipynb",
            "/workspace/.ferry-notebook/train.ipynb",
            "seed=11"
        ]
    );
    let plain_train = &plain["spec"]["template"]["spec"]["initContainers"][0];
    for field in [
        "image",
        "resources",
        "env",
        "envFrom",
        "securityContext",
        "workingDir",
    ] {
        assert_eq!(train[field], plain_train[field], "{field}");
    }
    let mounts = mount_paths(train);
    assert_eq!(
        mounts,
        [
            "/tmp",
            "/workspace/artifacts",
            "/workspace/reports",
            "/workspace/.ferry-notebook"
        ]
    );
    let collect = &v["spec"]["template"]["spec"]["containers"][0];
    assert!(
        collect["volumeMounts"]
            .to_string()
            .contains("/workspace/.ferry-notebook"),
        "the collector holds the executed notebook until ferry has copied it"
    );
    if common::have_manifest_validator() {
        validate(dir.path(), &[v]);
    }
}

/// A promotion prunes, and `ferry down ENV` removes, what matches the server selector: never
/// the notebook's or training's objects.
#[test]
fn the_server_selector_leaves_the_notebook_and_training_alone() {
    let selector = ferry::kube::render::server_selector("churn", "staging");
    let matches = |labels: &Value| {
        selector.split(',').all(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            labels[k] == v
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let staging = render(&release(dir.path(), "staging"));
    for o in &staging.objects[1..] {
        assert!(matches(&o.to_value()["metadata"]["labels"]), "{}", o.kind());
    }
    let p = project(dir.path(), "staging");
    let spec = SPEC.replacen("\nserve:\n", &format!("\n{TRAIN}serve:\n"), 1);
    std::fs::write(dir.path().join("ferry.yaml"), spec).unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let p = Project::load_dir(dir.path(), Some(p.spec.env.as_deref().unwrap())).unwrap();
    let plan = ferry::plan::plan(&p, "");
    let place = placement(&p);
    let nb = notebook(&place, plan.notebook.as_ref().unwrap(), "t", "1Gi");
    let job = training_job(&place, plan.train.as_ref().unwrap(), "r1");
    for v in [
        serde_json::to_value(&nb.secret).unwrap(),
        serde_json::to_value(&nb.service).unwrap(),
        serde_json::to_value(&nb.stateful_set).unwrap(),
        serde_json::to_value(&job).unwrap(),
    ] {
        assert!(!matches(&v["metadata"]["labels"]), "{}", v["kind"]);
    }
}

#[test]
fn job_names_fit_the_label_limit() {
    let name = job_name(&"a".repeat(40), "20261123-114502-123-3f9a");
    assert!(name.len() <= 63 && !name.ends_with('-'), "{name}");
}

/// kubernetes-validate, strict: unknown fields are errors.
#[test]
fn manifests_validate_against_the_official_schema_in_strict_mode() {
    if !common::have_manifest_validator() {
        return;
    }
    for env in ["staging", "production"] {
        let dir = tempfile::tempdir().unwrap();
        let m = render(&release(dir.path(), env));
        // Every object as it is applied (the Secret with its real data) and as it is shown.
        let mut files = Vec::new();
        for (i, o) in m.objects.iter().enumerate() {
            let path = dir.path().join(format!("{i}-{}.yaml", o.kind()));
            std::fs::write(&path, serde_yaml_ng::to_string(&o.to_value()).unwrap()).unwrap();
            files.push(path);
        }
        let shown = dir.path().join("shown.yaml");
        std::fs::write(&shown, m.to_yaml()).unwrap();
        files.push(shown);
        common::validate_manifests(&files);
    }
}

/// The rendered YAML, byte for byte, against committed snapshots: a change to what ferry
/// applies shows up in review. `FERRY_UPDATE_SNAPSHOTS=1 cargo test --test kube_render`
/// rewrites them.
#[test]
fn rendered_yaml_matches_the_snapshots() {
    let snapshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    for env in ["staging", "production"] {
        let dir = tempfile::tempdir().unwrap();
        let yaml = render(&release(dir.path(), env)).to_yaml();
        let file = snapshots.join(format!("render-{env}.yaml"));
        if std::env::var_os("FERRY_UPDATE_SNAPSHOTS").is_some() {
            std::fs::create_dir_all(&snapshots).unwrap();
            std::fs::write(&file, &yaml).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&file).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; create it with FERRY_UPDATE_SNAPSHOTS=1",
                file.display()
            )
        });
        if yaml != want {
            let first = yaml
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!(
                "{env}: the rendered YAML differs from {} from line {}:\n  now:  {:?}\n  was:  {:?}\nreview the change, then FERRY_UPDATE_SNAPSHOTS=1 cargo test --test kube_render",
                file.display(),
                first + 1,
                yaml.lines().nth(first),
                want.lines().nth(first)
            );
        }
    }
}

/// Every template, given a staging and a production environment, renders objects the API
/// accepts: the server where it serves, training where it trains, the notebook where it has one.
#[test]
fn every_template_renders_valid_objects_for_every_environment() {
    let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    let mut names: Vec<String> = std::fs::read_dir(&templates)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().join("ferry.yaml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 2, "{names:?}");
    let validator = common::have_manifest_validator();
    for template in names {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["init", "p", "--template", &template, "--offline", "-q"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{template}: {out:?}");
        let root = dir.path().join("p");
        let mut spec = std::fs::read_to_string(root.join("ferry.yaml")).unwrap();
        let serves = spec.contains("\nserve:");
        spec.push_str(
            "  staging: { target: kubernetes, namespace: p-staging, registry: registry.example.com/ml }
  production:
    target: kubernetes
    namespace: p
    registry: registry.example.com/ml
    ingress: { host: p.example.com }
",
        );
        if serves {
            spec.push_str("    serve: { replicas: 2 }\n");
        }
        std::fs::write(root.join("ferry.yaml"), spec).unwrap();
        for env in ["staging", "production"] {
            let p = Project::load_dir(&root, Some(env)).unwrap();
            let mut objects: Vec<Value> = Vec::new();
            if let Some(serve) = &p.spec.serve {
                let model = p.path(&serve.model);
                std::fs::create_dir_all(model.parent().unwrap()).unwrap();
                std::fs::write(&model, b"model").unwrap();
                let serving = ferry::serving_image::serving_plan(&p).unwrap();
                let hash = p.hash().unwrap().as_str().to_string();
                let release = Release::new(&p, serving, IMAGE.into(), hash, None).unwrap();
                objects.extend(render(&release).objects.iter().map(Object::to_value));
            }
            let plan = ferry::plan::plan(&p, "");
            let place = Placement {
                secret: None,
                ..placement(&p)
            };
            if let Some(train) = &plan.train {
                objects.push(serde_json::to_value(training_job(&place, train, "r1")).unwrap());
            }
            if let Some(nb) = &plan.notebook {
                let n = notebook(&place, nb, "token", "10Gi");
                objects.push(serde_json::to_value(&n.secret).unwrap());
                objects.push(serde_json::to_value(&n.service).unwrap());
                objects.push(serde_json::to_value(&n.stateful_set).unwrap());
            }
            assert!(!objects.is_empty(), "{template}/{env} rendered nothing");
            if validator {
                validate(dir.path(), &objects);
            }
        }
    }
}

/// The rendered Deployment's pod spec.
fn deployment_pod(m: &ferry::kube::Manifests) -> Value {
    let d = m
        .objects
        .iter()
        .map(Object::to_value)
        .find(|o| o["kind"] == "Deployment")
        .unwrap();
    d["spec"]["template"]["spec"].clone()
}

#[test]
fn the_pods_are_pinned_to_the_architectures_of_their_image() {
    use ferry::platform::Arch;
    let dir = tempfile::tempdir().unwrap();
    // One architecture: a node selector beside the environment's own.
    let m = render(&release(dir.path(), "production").running_on(&[Arch::Arm64]));
    let pod = deployment_pod(&m);
    assert_eq!(pod["nodeSelector"]["kubernetes.io/arch"], "arm64", "{pod}");
    assert_eq!(pod["nodeSelector"]["cloud.google.com/gke-nodepool"], "gpu");
    assert!(pod["affinity"].is_null(), "{pod}");
    // Several (an image index): a node affinity naming each.
    let m = render(&release(dir.path(), "staging").running_on(&[Arch::Amd64, Arch::Arm64]));
    let pod = deployment_pod(&m);
    assert!(pod["nodeSelector"].is_null(), "{pod}");
    let term = &pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        [0]["matchExpressions"][0];
    assert_eq!(term["key"], "kubernetes.io/arch", "{pod}");
    assert_eq!(term["operator"], "In");
    assert_eq!(term["values"], serde_json::json!(["amd64", "arm64"]));
    // None known: no selector at all, as before.
    let pod = deployment_pod(&render(&release(dir.path(), "staging")));
    assert!(
        pod["nodeSelector"].is_null() && pod["affinity"].is_null(),
        "{pod}"
    );
    // The training Job and the notebook carry the same.
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("ferry.yaml"), format!("{SPEC}{TRAIN}")).unwrap();
    let p = Project::load_dir(dir.path(), Some("staging")).unwrap();
    let place = Placement {
        run_on: vec![Arch::Arm64],
        ..placement(&p)
    };
    let plan = ferry::plan::plan(&p, "");
    let job =
        serde_json::to_value(training_job(&place, plan.train.as_ref().unwrap(), "r1")).unwrap();
    assert_eq!(
        job["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/arch"], "arm64",
        "{job}"
    );
}

#[test]
fn pinned_pods_validate_against_the_official_schema() {
    if !common::have_manifest_validator() {
        return;
    }
    use ferry::platform::Arch;
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, archs) in [vec![Arch::Arm64], vec![Arch::Amd64, Arch::Arm64]]
        .into_iter()
        .enumerate()
    {
        let m = render(&release(dir.path(), "production").running_on(&archs));
        for (j, o) in m.objects.iter().enumerate() {
            let path = dir.path().join(format!("{i}-{j}-{}.yaml", o.kind()));
            std::fs::write(&path, serde_yaml_ng::to_string(&o.to_value()).unwrap()).unwrap();
            files.push(path);
        }
    }
    common::validate_manifests(&files);
}

#[test]
fn serve_log_goes_to_a_claim_one_file_per_pod_or_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SPEC.replace(
        "    - { name: b, model: artifacts/model-b.onnx, weight: 10 }\n",
        "    - { name: b, model: artifacts/model-b.onnx, weight: 10, shadow: true, timeout_ms: 250 }\n  log: { sample: 0.05, max_size: 10Mi, volume: traffic-logs }\n",
    );
    std::fs::create_dir_all(dir.path().join("artifacts")).unwrap();
    std::fs::write(dir.path().join("artifacts/model.onnx"), b"model a").unwrap();
    std::fs::write(dir.path().join("artifacts/model-b.onnx"), b"model b").unwrap();
    std::fs::write(dir.path().join("ferry.yaml"), &spec).unwrap();
    let p = Project::load_dir(dir.path(), Some("staging")).unwrap();
    let serving = ferry::serving_image::serving_plan(&p).unwrap();
    let hash = p.hash().unwrap().as_str().to_string();
    let m = render(&Release::new(&p, serving, IMAGE.into(), hash, None).unwrap());
    let pod = deployment_pod(&m);
    let claim = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "traffic-log")
        .unwrap_or_else(|| panic!("no log volume: {pod}"));
    assert_eq!(claim["persistentVolumeClaim"]["claimName"], "traffic-logs");
    assert_eq!(pod["securityContext"]["fsGroup"], 65532, "{pod}");
    let server = &pod["containers"][0];
    assert!(
        mount_paths(server).contains(&"/var/lib/ferry/log"),
        "{server}"
    );
    let env = server["env"].as_array().unwrap();
    assert_eq!(env[0]["name"], "POD_NAME");
    assert_eq!(
        env[0]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(env[1]["name"], "FERRY_SERVE_LOG");
    assert_eq!(env[1]["value"], "/var/lib/ferry/log/$(POD_NAME).jsonl");
    // The image's config has the log without a file, and the shadow.
    let config: Value = serde_json::from_str(
        m.objects
            .iter()
            .find(|o| o.kind() == "ConfigMap")
            .unwrap()
            .to_value()["data"]["serving.json"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        config["log"],
        serde_json::json!({"sample": 0.05, "max_size": 10485760, "keep": 5})
    );
    let b = &config["models"][0]["variants"][1];
    assert_eq!(
        (&b["shadow"], &b["timeout_ms"]),
        (&Value::Bool(true), &serde_json::json!(250))
    );
    assert_eq!(
        config["models"][0]["variants"][0]["weight"], 100,
        "a shadow takes no share"
    );
    let objects: Vec<Value> = m.objects.iter().map(Object::to_value).collect();
    validate(dir.path(), &objects);

    // Without a claim the records go to the server's standard output: nothing to mount.
    std::fs::write(
        dir.path().join("ferry.yaml"),
        spec.replace(", volume: traffic-logs", ""),
    )
    .unwrap();
    let p = Project::load_dir(dir.path(), Some("staging")).unwrap();
    let serving = ferry::serving_image::serving_plan(&p).unwrap();
    let hash = p.hash().unwrap().as_str().to_string();
    let pod = deployment_pod(&render(
        &Release::new(&p, serving, IMAGE.into(), hash, None).unwrap(),
    ));
    assert!(pod["containers"][0]["env"].is_null(), "{pod}");
    assert_eq!(pod["volumes"].as_array().unwrap().len(), 1, "{pod}");
}

use super::*;
use crate::spec::{Command, Project};

const GOOD: &str = "\
name: churn
environment:
  base: python:3.11-slim
  requirements: requirements.txt
  system_packages: [libgomp1]
notebook:
  port: 8888
train:
  command: python train.py
  inputs: [data/]
  outputs: [artifacts/model.onnx]
  resources: { cpu: 2, memory: 4Gi }
serve:
  model: artifacts/model.onnx
environments:
  dev: { target: docker }
  staging:
    target: kubernetes
    namespace: churn-staging
    train:
      resources: { memory: 8Gi }
    serve:
      replicas: 3
";

/// A project directory with a spec and the files it references.
fn project(spec: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ferry.yaml"), spec).unwrap();
    std::fs::write(dir.path().join("requirements.txt"), "numpy\n").unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/customers.csv"), "a,b\n1,2\n").unwrap();
    dir
}

fn load_err(spec: &str) -> SpecError {
    let dir = project(spec);
    Project::load_dir(dir.path(), None).expect_err("spec should be rejected")
}

fn only_problem(spec: &str) -> Problem {
    let err = load_err(spec);
    let p = err.problems();
    assert_eq!(p.len(), 1, "expected one problem, got: {err}");
    p[0].clone()
}

#[test]
fn a_good_spec_loads_and_dev_is_the_default_environment() {
    let dir = project(GOOD);
    let p = Project::load_dir(dir.path(), None).unwrap();
    assert_eq!(p.spec.env.as_deref(), Some("dev"));
    assert_eq!(p.spec.target, TargetKind::Docker);
    let t = p.spec.train.as_ref().unwrap();
    assert_eq!(t.command, Command::Shell("python train.py".into()));
    assert_eq!(t.resources.memory.as_ref().unwrap().bytes, 4 << 30);
    assert_eq!(p.environments, vec!["dev", "staging"]);
}

#[test]
fn overlays_override_field_by_field() {
    let dir = project(GOOD);
    let p = Project::load_dir(dir.path(), Some("staging")).unwrap();
    let t = p.spec.train.as_ref().unwrap();
    // memory overridden, cpu kept from the base
    assert_eq!(t.resources.memory.as_ref().unwrap().bytes, 8 << 30);
    assert_eq!(t.resources.cpu.as_ref().unwrap().millis, 2000);
    assert_eq!(t.command, Command::Shell("python train.py".into()));
    let s = p.spec.serve.as_ref().unwrap();
    assert_eq!(s.replicas, Some(3));
    assert_eq!(s.port, 8080);
    assert_eq!(p.spec.namespace.as_deref(), Some("churn-staging"));
}

#[test]
fn null_in_an_overlay_removes_a_field() {
    let spec = GOOD.replace("    serve:\n      replicas: 3\n", "    serve: null\n");
    let spec = spec.replace(
        "  staging:\n    target: kubernetes\n    namespace: churn-staging\n    train:\n      resources: { memory: 8Gi }\n",
        "  staging:\n    target: kubernetes\n    namespace: churn-staging\n    train:\n      resources: { memory: null }\n",
    );
    let dir = project(&spec);
    let p = Project::load_dir(dir.path(), Some("staging")).unwrap();
    assert!(p.spec.train.unwrap().resources.memory.is_none());
}

#[test]
fn unknown_field_gives_position_and_suggestion() {
    let p = only_problem(&GOOD.replace("  command: python", "  comand: python"));
    assert_eq!(p.field, "train.comand");
    assert_eq!((p.line, p.column), (9, 3));
    assert_eq!(p.hint.as_deref(), Some("did you mean `command`?"));
}

#[test]
fn unknown_top_level_field() {
    let p = only_problem(&format!("{GOOD}servr:\n  port: 1\n"));
    assert_eq!(p.field, "servr");
    assert_eq!(p.line, 24);
    assert_eq!(p.hint.as_deref(), Some("did you mean `serve`?"));
}

#[test]
fn unknown_field_in_an_overlay_points_into_the_overlay() {
    let p = only_problem(&GOOD.replace("      replicas: 3", "      replica: 3"));
    assert_eq!(p.field, "serve.replica");
    assert_eq!(p.env.as_deref(), Some("staging"));
    assert_eq!(p.line, 23);
    assert_eq!(p.hint.as_deref(), Some("did you mean `replicas`?"));
}

#[test]
fn wrong_type_names_the_field() {
    let p = only_problem(&GOOD.replace("port: 8888", "port: lots"));
    assert_eq!(p.field, "notebook.port");
    assert_eq!(p.line, 7);
    assert!(p.message.contains("invalid type"), "{}", p.message);
}

#[test]
fn bad_quantity_gets_a_hint() {
    let p = only_problem(&GOOD.replace("memory: 4Gi", "memory: 4 Gb"));
    assert_eq!(p.field, "train.resources.memory");
    assert_eq!(p.line, 12);
    assert!(p.message.contains("4 Gb"), "{}", p.message);
    assert!(p.hint.unwrap().contains("4Gi"));
}

#[test]
fn missing_train_command() {
    let p = only_problem(&GOOD.replace("  command: python train.py\n", ""));
    assert_eq!(p.field, "train.command");
    assert_eq!(p.line, 8, "points at the train block");
    assert!(p.hint.unwrap().contains("command:"));
}

#[test]
fn output_outside_the_project_is_refused() {
    let p = only_problem(&GOOD.replace(
        "outputs: [artifacts/model.onnx]",
        "outputs: [../model.onnx]",
    ));
    assert_eq!(p.field, "train.outputs[0]");
    assert_eq!(p.line, 11);
    assert!(p.message.contains("outside the project"), "{}", p.message);
}

#[test]
fn missing_referenced_file() {
    let p = only_problem(&GOOD.replace("requirements.txt", "reqs.txt"));
    assert_eq!(p.field, "environment.requirements");
    assert_eq!(p.line, 4);
    assert!(p.message.contains("does not exist"));
}

#[test]
fn base_and_bootstrap_together_are_refused() {
    let p = only_problem(&GOOD.replace(
        "  base: python:3.11-slim\n",
        "  base: python:3.11-slim\n  bootstrap: bookworm\n",
    ));
    assert_eq!(p.field, "environment.bootstrap");
}

#[test]
fn several_problems_are_reported_together() {
    let err = load_err(
        &GOOD
            .replace("name: churn", "name: Churn_Model")
            .replace("requirements.txt", "nope.txt"),
    );
    assert_eq!(err.problems().len(), 2, "{err}");
    let text = err.to_string();
    assert!(text.contains("ferry.yaml:1:1: name:"), "{text}");
}

#[test]
fn yaml_syntax_error_has_a_position() {
    let err = load_err("name: churn\nenvironment:\n  base: [unclosed\n");
    match err {
        SpecError::Syntax { line, .. } => assert!(line >= 3),
        other => panic!("expected a syntax error, got {other}"),
    }
}

#[test]
fn missing_spec_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let err = Project::load_dir(dir.path(), None).unwrap_err();
    assert!(matches!(err, SpecError::NotFound { .. }));
    assert!(err.to_string().contains("ferry init"));
}

#[test]
fn unknown_environment_suggests_one() {
    let dir = project(GOOD);
    let err = Project::load_dir(dir.path(), Some("stagign")).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("did you mean `staging`"), "{text}");
}

#[test]
fn unknown_target_kind() {
    let p = only_problem(&GOOD.replace("target: docker", "target: dokcer"));
    assert_eq!(p.field, "environments.dev.target");
    assert_eq!(p.hint.as_deref(), Some("did you mean `docker`?"));
}

#[test]
fn hash_follows_spec_and_referenced_files() {
    let dir = project(GOOD);
    let load = || Project::load_dir(dir.path(), None).unwrap().hash().unwrap();
    let h1 = load();
    assert_eq!(h1, load(), "stable");
    std::fs::write(dir.path().join("data/customers.csv"), "a,b\n1,3\n").unwrap();
    let h2 = load();
    assert_ne!(h1, h2, "an input file changed");
    std::fs::write(dir.path().join("requirements.txt"), "numpy==2.0\n").unwrap();
    let h3 = load();
    assert_ne!(h2, h3, "requirements changed");
    std::fs::write(
        dir.path().join("ferry.yaml"),
        GOOD.replace("memory: 4Gi", "memory: 5Gi"),
    )
    .unwrap();
    assert_ne!(h3, load(), "the spec changed");
    // An environment that changes nothing the base has still hashes differently: it is another
    // resolved spec (another target).
    let staging = Project::load_dir(dir.path(), Some("staging"))
        .unwrap()
        .hash()
        .unwrap();
    assert_ne!(staging, load());
    assert_eq!(load().short().len(), 12);
    // A training output (here the served model) does not move the hash.
    let before = load();
    std::fs::create_dir_all(dir.path().join("artifacts")).unwrap();
    std::fs::write(dir.path().join("artifacts/model.onnx"), "model").unwrap();
    assert_eq!(before, load());
}

#[test]
fn positions_cover_nested_sequences() {
    let pos = Positions::build("a:\n  b:\n    - x\n    - { c: 1 }\n");
    assert_eq!(pos.find("a.b[1].c"), Some((4, 9)));
    assert_eq!(pos.find("a.b[0]"), Some((3, 7)));
    assert_eq!(pos.find("a.b.zz"), Some((2, 3)), "falls back to the parent");
}

const CLUSTER: &str = "\
name: churn
environment:
  base: python:3.11-slim
serve:
  model: artifacts/model.onnx
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
    from: staging
    ingress: { host: churn.example.com, class: nginx, tls_secret: churn-tls }
    node_selector: { cloud.google.com/gke-nodepool: cpu }
    tolerations: [{ key: dedicated, operator: Equal, value: ml, effect: NoSchedule }]
    image_pull_secret: regcred
    secrets: .env.production
    serve: { replicas: 3, autoscale: { min: 3, max: 10 } }
  canary:
    target: kubernetes
    namespace: churn-canary
";

#[test]
fn cluster_settings_resolve_and_production_is_protected() {
    let dir = project(CLUSTER);
    let p = Project::load_dir(dir.path(), Some("production")).unwrap();
    // The order written, not sorted: promotion goes down this list.
    assert_eq!(
        p.environments,
        vec!["dev", "staging", "production", "canary"]
    );
    let c = p.spec.cluster.as_ref().unwrap();
    assert!(c.protected);
    assert_eq!(c.from.as_deref(), Some("staging"));
    assert_eq!(c.ingress.as_ref().unwrap().host, "churn.example.com");
    assert_eq!(c.node_selector["cloud.google.com/gke-nodepool"], "cpu");
    assert_eq!(c.tolerations[0].effect.as_deref(), Some("NoSchedule"));
    assert_eq!(c.secrets.as_ref().unwrap().as_str(), ".env.production");
    let staging = Project::load_dir(dir.path(), Some("staging")).unwrap();
    assert!(!staging.spec.cluster.unwrap().protected);
    let dev = Project::load_dir(dir.path(), None).unwrap();
    assert!(dev.spec.cluster.is_none());
}

#[test]
fn cluster_fields_on_a_docker_environment_are_refused() {
    let p = only_problem(&CLUSTER.replace(
        "  dev: { target: docker }",
        "  dev: { target: docker, registry: 127.0.0.1:5000/ml }",
    ));
    assert_eq!(p.field, "environments.dev.registry");
    assert!(
        p.message.contains("only applies to `target: kubernetes`"),
        "{p:?}"
    );
}

#[test]
fn bad_cluster_fields_are_named_each() {
    let spec = CLUSTER
        .replace("namespace: churn-canary", "namespace: Churn_Canary")
        .replace("from: staging", "from: stagin")
        .replace("host: churn.example.com", "host: https://churn.example.com")
        .replace("operator: Equal", "operator: Exist")
        .replace(
            "registry: 127.0.0.1:5000/ml",
            "registry: 127.0.0.1:5000/ml:v1",
        );
    let err = load_err(&spec);
    let fields: Vec<String> = err.problems().iter().map(|p| p.field.clone()).collect();
    for f in [
        "environments.canary.namespace",
        "environments.production.from",
        "environments.production.ingress.host",
        "environments.production.tolerations[0].operator",
        "environments.staging.registry",
    ] {
        assert!(fields.iter().any(|x| x == f), "{f} missing in {fields:?}");
    }
    let from = err
        .problems()
        .iter()
        .find(|p| p.field == "environments.production.from")
        .unwrap()
        .clone();
    assert_eq!(from.hint.as_deref(), Some("did you mean `staging`?"));
    // Positions point at the field in the file.
    let host = err
        .problems()
        .iter()
        .find(|p| p.field == "environments.production.ingress.host")
        .unwrap()
        .clone();
    assert_eq!(host.line, 17);
}

#[test]
fn registry_prefixes() {
    assert!(check_registry("registry.example.com/ml").is_ok());
    assert!(check_registry("127.0.0.1:5000").is_ok());
    assert!(check_registry("localhost:5000/a/b-c").is_ok());
    assert!(check_registry("https://r.example.com").is_err());
    assert!(check_registry("r.example.com/ML").is_err());
    assert!(check_registry("r.example.com/ml@sha256:abc").is_err());
    assert!(check_registry("r.example.com:port/ml").is_err());
}

#[test]
fn a_section_an_overlay_adds_is_reported_where_the_overlay_writes_it() {
    let spec = "\
name: nb
environment:
  base: python:3.11-slim
environments:
  dev: { target: docker }
  prod:
    target: kubernetes
    serve: { replicas: 2 }
";
    let p = only_problem(spec);
    assert_eq!(p.field, "serve.model");
    assert_eq!(p.line, 8, "{p:?}");
    assert_eq!(p.env.as_deref(), Some("prod"));
}

#[test]
fn serve_device_defaults_to_cpu_and_an_environment_can_choose_cuda() {
    let spec = GOOD.replace(
        "    serve:\n      replicas: 3\n",
        "    serve:\n      replicas: 3\n      device: cuda\n      resources: { gpu: 1 }\n",
    );
    let dir = project(&spec);
    let dev = Project::load_dir(dir.path(), None).unwrap();
    assert_eq!(dev.spec.serve.as_ref().unwrap().device, Device::Cpu);
    let staging = Project::load_dir(dir.path(), Some("staging")).unwrap();
    let s = staging.spec.serve.as_ref().unwrap();
    assert_eq!((s.device, s.resources.gpu), (Device::Cuda, Some(1)));
}

#[test]
fn an_unknown_device_is_named_with_the_choices() {
    let p = only_problem(&GOOD.replace(
        "  model: artifacts/model.onnx\n",
        "  model: artifacts/model.onnx\n  device: gpu\n",
    ));
    assert_eq!(p.field, "serve.device");
    assert_eq!(p.message, "unknown value `gpu`");
    assert_eq!(p.hint.as_deref(), Some("one of: cpu, cuda"));
}

#[test]
fn cuda_without_a_gpu_is_refused_where_the_overlay_drops_the_gpu() {
    // The base is fine; the cluster environment removes the GPU the server needs.
    let spec = GOOD
        .replace(
            "  model: artifacts/model.onnx\n",
            "  model: artifacts/model.onnx\n  device: cuda\n  resources: { gpu: 1 }\n",
        )
        .replace(
            "    serve:\n      replicas: 3\n",
            "    serve:\n      replicas: 3\n      resources: { gpu: null }\n",
        );
    let p = only_problem(&spec);
    assert_eq!(p.field, "serve.device");
    assert_eq!(p.env, None, "the device is written in the base: {p:?}");
    assert_eq!(p.line, 15, "{p:?}");
    assert!(
        p.message.contains("serve.resources.gpu is not set"),
        "{p:?}"
    );
    assert!(p.hint.as_deref().unwrap().contains("gpu: 1"), "{p:?}");

    let p = only_problem(&GOOD.replace(
        "  model: artifacts/model.onnx\n",
        "  model: artifacts/model.onnx\n  device: cuda\n  resources: { gpu: 0 }\n",
    ));
    assert_eq!(p.field, "serve.device");
}

#[test]
fn the_notebook_takes_resources_and_cpu_specs_hash_as_before() {
    let dir = project(&GOOD.replace(
        "  port: 8888\n",
        "  port: 8888\n  resources: { gpu: 1, memory: 2Gi }\n",
    ));
    let p = Project::load_dir(dir.path(), None).unwrap();
    let nb = p.spec.notebook.as_ref().unwrap();
    assert_eq!(nb.resources.gpu, Some(1));
    assert_eq!(nb.resources.memory.as_ref().unwrap().bytes, 2 << 30);

    // Neither field is written when unset, so a spec without them keeps its hash.
    let plain = project(GOOD);
    let explicit = project(&GOOD.replace(
        "  model: artifacts/model.onnx\n",
        "  model: artifacts/model.onnx\n  device: cpu\n",
    ));
    let hash = |d: &tempfile::TempDir| Project::load_dir(d.path(), None).unwrap().hash().unwrap();
    assert_eq!(hash(&plain), hash(&explicit));
    let resolved =
        serde_json::to_string(&Project::load_dir(plain.path(), None).unwrap().spec).unwrap();
    assert!(!resolved.contains("device"), "{resolved}");

    let p = only_problem(&GOOD.replace(
        "  port: 8888\n",
        "  port: 8888\n  resources: { memory: 1Mi }\n",
    ));
    assert_eq!(p.field, "notebook.resources.memory");
}

const PIPELINE: &str = "\
name: churn
environment:
  base: python:3.11-slim
train:
  command: python train.py
  inputs: [data/features/]
  outputs: [artifacts/model.onnx]
pipeline:
  prepare:
    command: python prepare.py
    inputs: [data/customers.csv]
    outputs: [data/features/]
  evaluate:
    command: python evaluate.py
    inputs: [artifacts/model.onnx, data/features/]
    outputs: [reports/metrics.json]
    checks:
      reports/metrics.json: { auc: \">= 0.8\", test.recall: \"> 0.1\" }
";

#[test]
fn a_pipeline_loads_with_train_as_its_step_and_an_order_from_the_data() {
    let dir = project(PIPELINE);
    let p = Project::load_dir(dir.path(), None).unwrap();
    let steps = p.spec.steps();
    assert_eq!(
        steps.keys().collect::<Vec<_>>(),
        ["train", "prepare", "evaluate"]
    );
    let g = crate::spec::Graph::new(&steps);
    let order: Vec<&str> = g.order().iter().map(|&i| g.names[i].as_str()).collect();
    assert_eq!(order, ["prepare", "train", "evaluate"]);
    let checks = steps["evaluate"].parsed_checks();
    assert_eq!(checks.len(), 2);
    assert_eq!(checks[1].metric, "test.recall");
    assert_eq!(checks[1].bar.to_string(), "> 0.1");
    // The spec hash covers the steps' inputs, not what they write.
    let before = p.hash().unwrap();
    std::fs::create_dir_all(dir.path().join("reports")).unwrap();
    std::fs::write(dir.path().join("reports/metrics.json"), "{}").unwrap();
    assert_eq!(p.hash().unwrap(), before);
    std::fs::write(dir.path().join("data/customers.csv"), "a,b\n9,9\n").unwrap();
    assert_ne!(p.hash().unwrap(), before);
}

#[test]
fn a_loop_a_missing_input_and_a_shared_output_are_named_where_they_are_written() {
    let spec = PIPELINE.replace(
        "    inputs: [data/customers.csv]\n",
        "    inputs: [data/customers.csv, reports/metrics.json, data/nope.csv]\n",
    ) + "  copy:\n    command: cp a b\n    inputs: [data/customers.csv]\n    outputs: [artifacts/model.onnx]\n";
    let err = load_err(&spec);
    let text = err.to_string();
    let problems = err.problems();
    let find = |needle: &str| {
        problems
            .iter()
            .find(|p| p.message.contains(needle))
            .unwrap_or_else(|| panic!("no problem with {needle:?} in:\n{text}"))
    };
    let lp = find("in a loop");
    assert!(
        lp.message.contains("prepare → train → evaluate → prepare")
            || lp.message.contains("train → evaluate → prepare → train")
            || lp.message.contains("evaluate → prepare → train → evaluate"),
        "{}",
        lp.message
    );
    assert!(lp.line > 0, "{lp:?}");
    let missing = find("data/nope.csv does not exist and no step writes it");
    assert_eq!(missing.field, "pipeline.prepare.inputs[2]");
    assert!(missing.line > 0);
    let shared = find("also written by step `train`");
    assert_eq!(shared.field, "pipeline.copy.outputs[0]");
}

#[test]
fn step_fields_are_checked() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "    command: python prepare.py\n    inputs: [data/customers.csv]\n    outputs: [data/features/]\n",
            "    command: python prepare.py\n    inputs: [data/]\n    outputs: [data/features/]\n",
            "overlaps the input data/",
        ),
        (
            "reports/metrics.json: { auc:",
            "reports/other.json: { auc:",
            "not among the step's outputs",
        ),
        ("\">= 0.8\"", "\"0.8\"", "has no comparison"),
        (
            "  prepare:\n    command: python prepare.py\n",
            "  prepare:\n    notebook: missing.ipynb\n",
            "missing.ipynb does not exist",
        ),
        (
            "  prepare:\n    command: python prepare.py\n",
            "  prepare:\n    command: python prepare.py\n    params: { epochs: '3' }\n",
            "`params` are for a notebook",
        ),
        ("  prepare:\n", "  Prepare:\n", "cannot name a step"),
        (
            "  evaluate:\n    command: python evaluate.py\n",
            "  train:\n    command: python evaluate.py\n",
            "defined twice",
        ),
        (
            "    outputs: [reports/metrics.json]\n",
            "    outputs: [metrics.json]\n",
            "at the top of the project",
        ),
    ];
    for (from, to, want) in cases {
        let spec = PIPELINE.replacen(from, to, 1);
        assert_ne!(spec, PIPELINE, "{from:?} not found");
        let text = load_err(&spec).to_string();
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
}

#[test]
fn serving_instances_logs_and_shadows_are_checked() {
    let serve = |extra: &str| {
        GOOD.replace(
            "serve:\n  model: artifacts/model.onnx\n",
            &format!("serve:\n  model: artifacts/model.onnx\n{extra}"),
        )
    };
    let cases = [
        ("  instances: 0\n", "serve.instances", "at least 1"),
        ("  threads: 0\n", "serve.threads", "at least 1"),
        (
            "  log: { sample: 1.5 }\n",
            "serve.log.sample",
            "not a share",
        ),
        ("  log: { sample: 0 }\n", "serve.log.sample", "not a share"),
        ("  log: { keep: 0 }\n", "serve.log.keep", "at least 1"),
        (
            "  log: { volume: Logs_A }\n",
            "serve.log.volume",
            "PersistentVolumeClaim",
        ),
        (
            "  variants: [{ name: b, model: artifacts/model.onnx, weight: 5, timeout_ms: 50 }]\n",
            "serve.variants[0].timeout_ms",
            "only a shadow",
        ),
        (
            "  variants: [{ name: b, model: artifacts/model.onnx, weight: 101, shadow: true }]\n",
            "serve.variants[0].weight",
            "at most 100%",
        ),
        (
            "  variants:\n    - { name: b, model: artifacts/model.onnx, weight: 5, shadow: true }\n    - { name: c, model: artifacts/model.onnx, weight: 5, shadow: true }\n",
            "serve.variants",
            "at most one",
        ),
    ];
    for (extra, field, message) in cases {
        let p = only_problem(&serve(extra));
        assert_eq!(p.field, field, "{extra}");
        assert!(p.message.contains(message), "{extra}: {}", p.message);
    }
    // A shadow takes no share: 100% copied beside a 90% variant is fine.
    let dir = project(&serve(
        "  variants:\n    - { name: b, model: artifacts/model.onnx, weight: 90 }\n    - { name: c, model: artifacts/model.onnx, weight: 100, shadow: true }\n  log: { sample: 0.05 }\n",
    ));
    let p = Project::load_dir(dir.path(), None).unwrap();
    let s = p.spec.serve.as_ref().unwrap();
    assert!(s.variants[1].shadow);
    let log = s.log.as_ref().unwrap();
    assert_eq!(
        (log.sample, log.path.as_str()),
        (0.05, "logs/traffic.jsonl")
    );
}

//! What surrounds the core commands: the CI workflow `ferry init` writes (checked against
//! GitHub's workflow schema where `check-jsonschema` is installed), the monitoring files
//! (every metric and label the dashboard queries exists on a real server's /metrics), shell
//! completions, and `ferry doctor` against the real engine and broken setups.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use ferry::server::config::VariantConfig;
use serde_json::{Value, json};

mod common;
use common::fake_api::{FakeApi, kubeconfig_for};
use common::{TestServer, config, ferry, ferry_cmd, fixture, model};

const CLUSTER_ENVS: &str = "
  staging: { target: kubernetes, context: staging-eu, namespace: demo-staging, registry: 127.0.0.1:1/ml }
  production:
    target: kubernetes
    context: prod
    namespace: demo
    registry: 127.0.0.1:2/ml
";

fn init(dir: &Path, template: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["init", "demo", "--template", template];
    args.extend_from_slice(extra);
    ferry(dir, &args)
}

// ---------------------------------------------------------------------------------------------
// CI workflow

#[test]
fn init_writes_the_workflow_unless_told_not_to() {
    let dir = tempfile::tempdir().unwrap();
    let out = init(dir.path(), "churn", &["--json"]);
    assert!(out.status.success(), "{out:?}");
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        created["files"]
            .as_array()
            .unwrap()
            .contains(&json!(".github/workflows/ferry.yml")),
        "{created}"
    );
    let workflow = dir.path().join("demo/.github/workflows/ferry.yml");
    let text = std::fs::read_to_string(&workflow).unwrap();
    assert!(text.contains("ferry run"), "{text}");

    // Regenerating gives the same file; a hand edit is kept unless --force.
    let project = dir.path().join("demo");
    let again = ferry(&project, &["ci", "--json"]);
    assert!(again.status.success(), "{again:?}");
    let w: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(w["changed"], false);
    std::fs::write(&workflow, "# my own\n").unwrap();
    let refused = ferry(&project, &["ci"]);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("--force") && err.contains("ferry.yml"),
        "{err}"
    );
    assert!(ferry(&project, &["ci", "--force"]).status.success());
    assert_eq!(std::fs::read_to_string(&workflow).unwrap(), text);

    let none = tempfile::tempdir().unwrap();
    assert!(init(none.path(), "notebook", &["--no-ci"]).status.success());
    assert!(!none.path().join("demo/.github").exists());
    assert!(none.path().join("demo/ferry.yaml").exists());
}

/// `check-jsonschema --builtin-schema vendor.github-workflows` (PyPI's check-jsonschema ships
/// SchemaStore's workflow schema); `None` where it is not installed.
fn check_workflow_schema(file: &Path) -> Option<std::process::Output> {
    let out = Command::new("check-jsonschema")
        .args(["--builtin-schema", "vendor.github-workflows"])
        .arg(file)
        .output()
        .ok()?;
    Some(out)
}

#[test]
fn the_workflows_match_githubs_schema() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (template, offline) in [("churn", true), ("notebook", false)] {
        let root = dir.path().join(template);
        std::fs::create_dir_all(&root).unwrap();
        let flag: &[&str] = if offline { &["--offline"] } else { &[] };
        assert!(init(&root, template, flag).status.success());
        files.push(root.join("demo/.github/workflows/ferry.yml"));
    }
    // With cluster environments: the promote jobs.
    let churn = dir.path().join("churn/demo");
    let spec = churn.join("ferry.yaml");
    let text = std::fs::read_to_string(&spec).unwrap() + CLUSTER_ENVS;
    std::fs::write(&spec, text).unwrap();
    let out = ferry(&churn, &["ci", "--force"]);
    assert!(out.status.success(), "{out:?}");
    let promoting = std::fs::read_to_string(&files[0]).unwrap();
    assert!(promoting.contains("promote-production:"), "{promoting}");

    for f in &files {
        match check_workflow_schema(f) {
            None => {
                eprintln!(
                    "skipped: check-jsonschema is not installed (pip install check-jsonschema)"
                );
                return;
            }
            Some(out) => assert!(
                out.status.success(),
                "{}: {}{}",
                f.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Completions

#[test]
fn completions_name_the_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let bash = ferry(dir.path(), &["completions", "bash"]);
    assert!(bash.status.success());
    let bash = String::from_utf8(bash.stdout).unwrap();
    assert!(bash.contains("_ferry()"), "a completion function");
    assert!(bash.contains("complete -F _ferry"), "registered for ferry");
    let zsh = String::from_utf8(ferry(dir.path(), &["completions", "zsh"]).stdout).unwrap();
    assert!(
        zsh.starts_with("#compdef ferry"),
        "{}",
        &zsh[..40.min(zsh.len())]
    );
    for sub in [
        "init",
        "promote",
        "doctor",
        "monitoring",
        "completions",
        "ci",
    ] {
        assert!(bash.contains(sub), "bash: {sub}");
        assert!(zsh.contains(&format!("'{sub}:")), "zsh: {sub}");
    }
    // Flags of a subcommand are completed too.
    assert!(bash.contains("--force-conflicts"));
    for shell in ["fish", "powershell", "elvish"] {
        let out = ferry(dir.path(), &["completions", shell]);
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
    let bad = ferry(dir.path(), &["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("possible values"));
}

/// `ferry completions bash | head -1`: a reader that stops early is not an error (the script is
/// larger than a pipe's buffer, so the write fails with a broken pipe).
#[test]
fn completions_to_a_closed_pipe_exit_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::ferry_to_closed_pipe(dir.path(), &["completions", "bash"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
}

// ---------------------------------------------------------------------------------------------
// Doctor

fn doctor_json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: one JSON document expected on stdout:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

#[test]
fn doctor_outside_a_project_checks_the_machine() {
    let dir = tempfile::tempdir().unwrap();
    let out = ferry(dir.path(), &["doctor", "--json"]);
    let report = doctor_json(&out);
    let checks = report["checks"].as_array().unwrap();
    for c in checks {
        assert!(
            ["ok", "warn", "fail", "skip"].contains(&c["status"].as_str().unwrap()),
            "{c}"
        );
        assert!(!c["detail"].as_str().unwrap().is_empty(), "{c}");
        if c["status"] == "fail" || c["status"] == "warn" {
            assert!(c["fix"].as_str().is_some_and(|f| !f.is_empty()), "{c}");
        }
    }
    let any_failed = checks.iter().any(|c| c["status"] == "fail");
    assert_eq!(report["ok"], !any_failed);
    assert_eq!(
        out.status.success(),
        !any_failed,
        "exit code follows the checks"
    );
    // The engine these tests run against.
    let docker = check(&report, "docker");
    assert_eq!(docker["status"], "ok", "{docker}");
    assert!(
        docker["detail"].as_str().unwrap().contains("API 1."),
        "{docker}"
    );
    assert_eq!(check(&report, "project")["status"], "skip");
    assert!(report["project"].is_null());
}

#[test]
fn doctor_names_a_dead_docker_host_and_a_missing_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let out = ferry_cmd(dir.path(), &["doctor", "--json"])
        .env(
            "DOCKER_HOST",
            format!("unix://{}/docker.sock", dir.path().display()),
        )
        .env(
            "ORT_DYLIB_PATH",
            dir.path().join("no-such-libonnxruntime.so"),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report = doctor_json(&out);
    assert_eq!(report["ok"], false);
    let docker = check(&report, "docker");
    assert_eq!(docker["status"], "fail");
    assert!(
        docker["detail"].as_str().unwrap().contains("docker.sock"),
        "{docker}"
    );
    assert!(
        docker["fix"].as_str().unwrap().contains("DOCKER_HOST"),
        "{docker}"
    );
    assert_eq!(check(&report, "disk: docker")["status"], "skip");
    let ort = check(&report, "onnxruntime");
    assert_eq!(ort["status"], "fail");
    assert!(
        ort["detail"].as_str().unwrap().contains("not found"),
        "{ort}"
    );
    assert!(
        ort["fix"].as_str().unwrap().contains("ORT_DYLIB_PATH"),
        "{ort}"
    );
    assert!(
        ort["fix"]
            .as_str()
            .unwrap()
            .contains("no-such-libonnxruntime.so"),
        "{ort}"
    );

    // The human report says the same, with the fixes, and exits non-zero.
    let human = ferry_cmd(dir.path(), &["doctor"])
        .env(
            "DOCKER_HOST",
            format!("unix://{}/docker.sock", dir.path().display()),
        )
        .output()
        .unwrap();
    assert_eq!(human.status.code(), Some(1));
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("✗ docker") && text.contains("fix:"), "{text}");
    assert!(String::from_utf8_lossy(&human.stderr).contains("checks failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_the_contexts_and_registries_the_spec_names() {
    let fake = FakeApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    assert!(init(dir.path(), "churn", &[]).status.success());
    let root = dir.path().join("demo");
    let spec = root.join("ferry.yaml");
    let text = std::fs::read_to_string(&spec).unwrap() + CLUSTER_ENVS;
    std::fs::write(&spec, text).unwrap();
    let kubeconfig = kubeconfig_for(dir.path(), &fake.server());

    let mut cmd = ferry_cmd(&root, &["doctor", "--json"]);
    cmd.env("KUBECONFIG", &kubeconfig);
    let out = tokio::process::Command::from(cmd).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report = doctor_json(&out);
    assert!(report["project"].as_str().unwrap().ends_with("ferry.yaml"));
    assert_eq!(check(&report, "spec")["status"], "ok");
    assert_eq!(check(&report, "kubeconfig")["status"], "ok");

    // staging's context is in the kubeconfig and its API server answers.
    let staging = check(&report, "cluster: staging");
    assert_eq!(staging["status"], "ok", "{staging}");
    assert!(
        staging["detail"].as_str().unwrap().contains("staging-eu"),
        "{staging}"
    );
    // production's is not: named, with the ones there are.
    let production = check(&report, "cluster: production");
    assert_eq!(production["status"], "fail", "{production}");
    let detail = production["detail"].as_str().unwrap();
    assert!(
        detail.contains("prod ") && detail.contains("staging-eu"),
        "{detail}"
    );
    assert!(
        production["fix"]
            .as_str()
            .unwrap()
            .contains("environments.production.context"),
        "{production}"
    );
    // Nothing listens at staging's registry: the engine says so.
    let registry = check(&report, "registry: staging");
    assert_eq!(registry["status"], "fail", "{registry}");
    assert!(
        registry["detail"].as_str().unwrap().contains("127.0.0.1:1"),
        "{registry}"
    );
    assert!(registry["fix"].as_str().is_some(), "{registry}");
    assert!(
        check(&report, "disk: project")["detail"]
            .as_str()
            .unwrap()
            .contains("free")
    );
}

// ---------------------------------------------------------------------------------------------
// Monitoring

/// A project whose model has a variant, with a dev (Docker) and a staging (cluster) environment.
fn monitored_project(dir: &Path) -> ferry::spec::Project {
    std::fs::create_dir_all(dir.join("artifacts")).unwrap();
    std::fs::copy(fixture("tiny.onnx"), dir.join("artifacts/model.onnx")).unwrap();
    std::fs::copy(fixture("tiny.onnx"), dir.join("artifacts/model-b.onnx")).unwrap();
    std::fs::write(
        dir.join("ferry.yaml"),
        "name: tiny
environment: { base: python:3.11-slim }
serve:
  model: artifacts/model.onnx
  port: 18080
  batching: { max_batch_size: 8, max_delay_ms: 2 }
  variants: [ { name: b, model: artifacts/model-b.onnx, weight: 30 } ]
environments:
  dev: { target: docker }
  staging: { target: kubernetes, namespace: tiny-staging, registry: 127.0.0.1:5000/ml }
",
    )
    .unwrap();
    ferry::spec::Project::load_dir(dir, None).unwrap()
}

/// The series names and label names of a Prometheus text exposition, and the families its TYPE
/// lines declare.
struct Exposition {
    labels: BTreeMap<String, BTreeSet<String>>,
    types: BTreeMap<String, String>,
}

fn exposition(text: &str) -> Exposition {
    let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            types.insert(
                it.next().unwrap().to_string(),
                it.next().unwrap().to_string(),
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap();
        let set = labels.entry(line[..name_end].to_string()).or_default();
        if line[name_end..].starts_with('{') {
            let body = &line[name_end + 1..line.rfind('}').unwrap()];
            for pair in body.split("\",") {
                set.insert(pair.split('=').next().unwrap().trim().to_string());
            }
        }
    }
    Exposition { labels, types }
}

impl Exposition {
    /// The family a series belongs to, by its TYPE line: `x_bucket` of a histogram `x`,
    /// `x_total` of a counter `x`.
    fn family_of(&self, series: &str) -> Option<&str> {
        for (suffix, kinds) in [
            ("_bucket", &["histogram"][..]),
            ("_sum", &["histogram", "summary"][..]),
            ("_count", &["histogram", "summary"][..]),
            ("_total", &["counter"][..]),
        ] {
            if let Some(base) = series.strip_suffix(suffix)
                && self
                    .types
                    .get(base)
                    .is_some_and(|t| kinds.contains(&t.as_str()))
            {
                return Some(self.types.get_key_value(base).unwrap().0);
            }
        }
        self.types
            .get(series)
            .filter(|t| ["gauge", "counter", "unknown"].contains(&t.as_str()))
            .map(|_| self.types.get_key_value(series).unwrap().0.as_str())
    }
}

const PROMQL_WORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
];

/// One PromQL expression's metric selectors (name and the labels its matchers use) and the
/// labels its `by`/`on`/`ignoring` clauses group on. Grafana variables (`$x`), strings,
/// numbers and range durations are skipped; an identifier followed by `(` is a function.
fn promql(expr: &str) -> (Vec<(String, Vec<String>)>, Vec<String>) {
    let chars: Vec<char> = expr.chars().collect();
    let mut selectors: Vec<(String, Vec<String>)> = Vec::new();
    let mut grouping = Vec::new();
    let mut i = 0;
    let ident = |i: usize| -> (String, usize) {
        let mut j = i;
        while j < chars.len()
            && (chars[j].is_ascii_alphanumeric() || chars[j] == '_' || chars[j] == ':')
        {
            j += 1;
        }
        (chars[i..j].iter().collect(), j)
    };
    let skip_ws = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '$' {
            let (_, j) = ident(i + 1);
            i = j;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let (word, j) = ident(i);
            let next = skip_ws(j);
            if ["by", "without", "on", "ignoring"].contains(&word.as_str()) {
                let close = next + chars[next..].iter().position(|&c| c == ')').unwrap();
                let inner: String = chars[next + 1..close].iter().collect();
                grouping.extend(
                    inner
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty()),
                );
                i = close + 1;
            } else if PROMQL_WORDS.contains(&word.as_str())
                || chars.get(next) == Some(&'(')
                // An aggregation with its grouping first: `sum by (x) (…)`.
                || ["by", "without"].contains(&ident(next).0.as_str())
            {
                i = j;
            } else {
                let mut matchers = Vec::new();
                i = j;
                if chars.get(next) == Some(&'{') {
                    let close = next + chars[next..].iter().position(|&c| c == '}').unwrap();
                    let inner: String = chars[next + 1..close].iter().collect();
                    for m in inner.split(',') {
                        let name_end = m.find(['=', '!']).unwrap();
                        matchers.push(m[..name_end].trim().to_string());
                    }
                    i = close + 1;
                }
                selectors.push((word, matchers));
            }
        } else {
            i += 1;
        }
    }
    (selectors, grouping)
}

#[test]
fn the_promql_reader_finds_metrics_and_labels() {
    let (sel, by) = promql(
        "histogram_quantile(0.99, sum by (le, model) (rate(x_bucket{a=\"1\", b!~\"2..\"}[$__rate_interval]))) / ignoring (variant) group_left sum(y)",
    );
    assert_eq!(
        sel,
        [
            (
                "x_bucket".to_string(),
                vec!["a".to_string(), "b".to_string()]
            ),
            ("y".to_string(), vec![])
        ]
    );
    assert_eq!(by, ["le", "model", "variant"]);
}

/// The labels the scrape config puts on series: `job`, `instance`, static labels and relabel
/// targets that are not Prometheus-internal (`__…`).
fn scrape_labels(config: &serde_yaml_ng::Value) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = ["job", "instance"].map(String::from).into();
    for job in config["scrape_configs"].as_sequence().unwrap() {
        for sc in job["static_configs"].as_sequence().into_iter().flatten() {
            for (k, _) in sc["labels"].as_mapping().into_iter().flatten() {
                out.insert(k.as_str().unwrap().to_string());
            }
        }
        for r in job["relabel_configs"].as_sequence().into_iter().flatten() {
            if let Some(t) = r["target_label"].as_str().filter(|t| !t.starts_with("__")) {
                out.insert(t.to_string());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_and_label_the_dashboard_queries_exists_on_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let project = monitored_project(dir.path());
    let out = dir.path().join("monitoring");
    let run = ferry(dir.path(), &["monitoring", "--out", "monitoring", "--json"]);
    assert!(run.status.success(), "{run:?}");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("grafana-dashboard.json")).unwrap())
            .unwrap();
    let prometheus: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(out.join("prometheus.yml")).unwrap())
            .unwrap();

    // The server the spec describes: one model, two variants.
    let mut m = model("tiny", "tiny.onnx", Some((8, 2)));
    m.variants[0].weight = 70;
    m.variants.push(VariantConfig {
        name: "b".into(),
        path: fixture("tiny.onnx"),
        weight: 30,
        sha256: None,
        source: None,
        shadow: false,
        timeout_ms: None,
    });
    // A shadow and the traffic log, so that their families have series too.
    m.variants.push(VariantConfig {
        name: "c".into(),
        path: fixture("tiny.onnx"),
        weight: 100,
        sha256: None,
        source: None,
        shadow: true,
        timeout_ms: None,
    });
    let mut served = config(vec![m]);
    served.log = Some(ferry::server::config::TrafficLogConfig {
        sample: 1.0,
        path: Some(dir.path().join("traffic.jsonl")),
        max_size: 1 << 20,
        keep: 1,
        queue: None,
    });
    let server = TestServer::start(served).await;
    let good = json!({"inputs": [{"name": "X", "shape": [2, 3], "datatype": "FP32", "data": [0, 1, 2, 3, 4, 5]}]});
    for i in 0..20 {
        let key = format!("user-{i}");
        let r = server
            .client
            .post(format!("{}/v2/models/tiny/infer", server.base))
            .header("x-ferry-key", key)
            .json(&good)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(server.infer("tiny", &json!({"inputs": []})).await.0, 400);
    let raw = server.metrics().await;
    for v in ["main", "b"] {
        assert!(
            raw.lines().any(|l| l.starts_with("ferry_requests_total{")
                && l.contains(&format!("variant=\"{v}\""))),
            "both variants took traffic: {raw}"
        );
    }
    let metrics = exposition(&raw);

    let attached = scrape_labels(&prometheus);
    assert!(
        attached.contains("project") && attached.contains("environment"),
        "{attached:?}"
    );
    let mut queried = BTreeSet::new();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            // label_values(selector, label): the selector is PromQL, the label must exist.
            let inner = q
                .strip_prefix("label_values(")
                .unwrap()
                .strip_suffix(')')
                .unwrap();
            let (selector, label) = inner.rsplit_once(',').unwrap();
            exprs.push(format!("sum by ({}) ({selector})", label.trim()));
        }
    }
    assert!(exprs.len() >= 12, "{exprs:?}");
    for expr in &exprs {
        let (selectors, grouping) = promql(expr);
        assert!(!selectors.is_empty(), "no metric in {expr}");
        for (metric, matchers) in &selectors {
            let family = metrics.family_of(metric);
            assert!(
                family.is_some(),
                "{metric} (in {expr}) is not a series of /metrics"
            );
            let have = &metrics.labels[metric];
            for label in matchers.iter().chain(&grouping) {
                assert!(
                    have.contains(label) || attached.contains(label),
                    "{label} (in {expr}) is neither a label of {metric} ({have:?}) nor one the scrape config attaches ({attached:?})"
                );
            }
            queried.insert(family.unwrap().to_string());
        }
    }
    // The dashboard covers every family the server exports.
    let exported: BTreeSet<String> = metrics.types.keys().cloned().collect();
    assert_eq!(queried, exported);

    let title = dashboard["title"].as_str().unwrap();
    assert!(title.contains("tiny"), "{title}");
    assert_eq!(dashboard["uid"], "ferry-tiny");
    assert_eq!(dashboard["templating"]["list"][0]["type"], "datasource");
    // Written twice, the same files: the uid is stable.
    assert!(
        ferry(dir.path(), &["monitoring", "--out", "again"])
            .status
            .success()
    );
    assert_eq!(
        std::fs::read(out.join("grafana-dashboard.json")).unwrap(),
        std::fs::read(dir.path().join("again/grafana-dashboard.json")).unwrap()
    );
    drop(project);
    server.stop().await;
}

/// Prometheus's relabelling, as far as the scrape config uses it: keep, drop and replace with
/// anchored regular expressions over `;`-joined source labels.
fn relabel(
    rules: &[serde_yaml_ng::Value],
    mut labels: BTreeMap<String, String>,
) -> Option<BTreeMap<String, String>> {
    for r in rules {
        let sources: Vec<String> = r["source_labels"]
            .as_sequence()
            .map(|s| {
                s.iter()
                    .map(|v| labels.get(v.as_str().unwrap()).cloned().unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default();
        let value = sources.join(";");
        let re =
            regex::Regex::new(&format!("^(?:{})$", r["regex"].as_str().unwrap_or("(.*)"))).unwrap();
        match r["action"].as_str().unwrap_or("replace") {
            "keep" if !re.is_match(&value) => return None,
            "drop" if re.is_match(&value) => return None,
            "keep" | "drop" => {}
            "replace" => {
                if let Some(caps) = re.captures(&value) {
                    let mut out = String::new();
                    caps.expand(r["replacement"].as_str().unwrap_or("$1"), &mut out);
                    labels.insert(r["target_label"].as_str().unwrap().to_string(), out);
                }
            }
            other => panic!("relabel action {other} not modelled"),
        }
    }
    Some(labels)
}

#[test]
fn the_cluster_scrape_job_finds_the_pods_ferry_renders_and_only_those() {
    let dir = tempfile::tempdir().unwrap();
    let project = monitored_project(dir.path());
    let (text, jobs) = ferry::monitoring::prometheus_config(&project, None).unwrap();
    assert_eq!(jobs, ["ferry-tiny-dev", "ferry-tiny-staging"]);
    let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let dev = &config["scrape_configs"][0];
    assert_eq!(dev["static_configs"][0]["targets"][0], "127.0.0.1:18080");
    assert_eq!(dev["static_configs"][0]["labels"]["environment"], "dev");
    let staging = &config["scrape_configs"][1];
    assert_eq!(staging["kubernetes_sd_configs"][0]["role"], "pod");
    assert_eq!(
        staging["kubernetes_sd_configs"][0]["namespaces"]["names"][0],
        "tiny-staging"
    );

    // The pod the renderer makes for staging, as Prometheus's discovery describes it.
    let p = ferry::spec::Project::load_dir(dir.path(), Some("staging")).unwrap();
    let serving = ferry::serving_image::serving_plan(&p).unwrap();
    let image = "127.0.0.1:5000/ml/tiny-serve@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let release = ferry::kube::Release::new(
        &p,
        serving,
        image.into(),
        p.hash().unwrap().as_str().to_string(),
        None,
    )
    .unwrap();
    let objects: Vec<Value> = ferry::kube::render(&release)
        .objects
        .iter()
        .map(ferry::kube::Object::to_value)
        .collect();
    let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let meta = &deployment["spec"]["template"]["metadata"];
    let port = deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
        .as_i64()
        .unwrap();
    let clean = |k: &str| {
        k.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect::<String>()
    };
    let mut discovered = BTreeMap::from([
        ("__address__".to_string(), format!("10.1.2.3:{port}")),
        ("__metrics_path__".to_string(), "/metrics".to_string()),
        (
            "__meta_kubernetes_namespace".to_string(),
            "tiny-staging".to_string(),
        ),
        (
            "__meta_kubernetes_pod_name".to_string(),
            "tiny-abc".to_string(),
        ),
        (
            "__meta_kubernetes_pod_phase".to_string(),
            "Running".to_string(),
        ),
    ]);
    for (kind, map) in [
        ("label", &meta["labels"]),
        ("annotation", &meta["annotations"]),
    ] {
        for (k, v) in map.as_object().unwrap() {
            discovered.insert(
                format!("__meta_kubernetes_pod_{kind}_{}", clean(k)),
                v.as_str().unwrap().to_string(),
            );
        }
    }
    let rules = staging["relabel_configs"].as_sequence().unwrap();
    let target = relabel(rules, discovered.clone()).expect("the model server's pod is scraped");
    assert_eq!(target["__address__"], format!("10.1.2.3:{port}"));
    assert_eq!(target["__metrics_path__"], "/metrics");
    assert_eq!(target["environment"], "staging");
    assert_eq!(target["project"], "tiny");
    assert_eq!(target["pod"], "tiny-abc");

    // Not another environment's pod, another project's, or a pod that is not running.
    for (key, value) in [
        (
            "__meta_kubernetes_pod_label_ferry_dev_environment",
            "production",
        ),
        (
            "__meta_kubernetes_pod_label_app_kubernetes_io_instance",
            "other",
        ),
        ("__meta_kubernetes_pod_phase", "Pending"),
        (
            "__meta_kubernetes_pod_annotation_prometheus_io_scrape",
            "false",
        ),
    ] {
        let mut other = discovered.clone();
        other.insert(key.into(), value.into());
        assert!(
            relabel(rules, other).is_none(),
            "{key}={value} is not scraped"
        );
    }

    // promtool checks the file as Prometheus would load it. Debian's build leaves out the
    // Kubernetes discovery, so there only the Docker environment's job can be checked.
    if Command::new("promtool").arg("--version").output().is_err() {
        eprintln!("skipped promtool: not installed (Debian's prometheus package has it)");
        return;
    }
    let promtool = |text: &str| {
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, text).unwrap();
        let out = Command::new("promtool")
            .args(["check", "config", "--syntax-only"])
            .arg(&file)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (dev_ok, dev_out) = promtool(
        &ferry::monitoring::prometheus_config(&project, Some("dev"))
            .unwrap()
            .0,
    );
    assert!(dev_ok, "{dev_out}");
    match promtool(&text) {
        (true, _) => {}
        (false, out) if out.contains("field kubernetes_sd_configs not found") => {
            eprintln!(
                "skipped promtool for the cluster job: this promtool has no Kubernetes discovery"
            )
        }
        (false, out) => panic!("{out}"),
    }
}

#[test]
fn monitoring_a_spec_that_serves_nothing_says_what_to_add() {
    let dir = tempfile::tempdir().unwrap();
    assert!(init(dir.path(), "notebook", &[]).status.success());
    let out = ferry(&dir.path().join("demo"), &["monitoring"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("serves no model") && err.contains("serve:"),
        "{err}"
    );
    let missing = ferry(&dir.path().join("demo"), &["monitoring", "--env", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope"));
    assert!(!dir.path().join("demo/monitoring").exists());
}

//! `ferry run` against the real Docker engine: a pipeline of small Python steps (the offline
//! Debian base with its python3, no requirements), run, cached, edited, corrupted, failed,
//! checked and gated before a promote. Needs what tests/docker_local.rs needs.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{docker, ferry, ferry_cmd};

/// The environment every test's project shares (so one image serves them all).
const HEAD: &str = "\
name: pipe
environment:
  bootstrap: bookworm
  system_packages: [libgomp1]
";

const SPEC: &str = "\
name: pipe
environment:
  bootstrap: bookworm
  system_packages: [libgomp1]
pipeline:
  evaluate:
    command: python3 steps/evaluate.py
    inputs: [steps/evaluate.py, artifacts/model.txt, data/features/]
    outputs: [reports/metrics.json]
    checks:
      reports/metrics.json: { auc: \">= 0.5\" }
  prepare:
    command: python3 steps/prepare.py
    inputs: [steps/prepare.py, data/raw.csv]
    outputs: [data/features/]
  train:
    command: python3 steps/train.py
    inputs: [steps/train.py, data/features/, assets/tiny.onnx]
    outputs: [artifacts/model.txt, artifacts/model.onnx]
  lint:
    command: wc -l steps/prepare.py > lint/out.txt
    inputs: [steps/prepare.py]
    outputs: [lint/out.txt]
serve:
  model: artifacts/model.onnx
environments:
  dev: { target: docker }
  staging:
    target: kubernetes
    namespace: pipe-staging
    registry: 127.0.0.1:1/ml
  production:
    target: kubernetes
    namespace: pipe-production
    registry: 127.0.0.1:1/ml
";

/// A fresh pipeline project; its environment image is shared by every test (same name, same
/// environment).
/// Builds the environment image every test's project shares, once, before the tests race to
/// build it: two builds at once make two images of the same content under one tag, and a step's
/// cache key names the image's ID, so a test could see its environment change between runs.
fn environment_built() {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let dir = project_files(SPEC);
        let out = ferry(dir.path(), &["build"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

fn project(spec: &str) -> tempfile::TempDir {
    environment_built();
    project_files(spec)
}

fn project_files(spec: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("pipeline-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let root = dir.path();
    let write = |p: &str, text: &str| {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("ferry.yaml", spec);
    write(
        ".dockerignore",
        ".ferry/\nartifacts/\ndata/\nreports/\nlint/\ngate/\n",
    );
    std::fs::create_dir_all(root.join("assets")).unwrap();
    std::fs::copy(common::fixture("tiny.onnx"), root.join("assets/tiny.onnx")).unwrap();
    write("data/raw.csv", "a,b\n1,2\n3,4\n5,6\n7,8\n9,10\n");
    write(
        "steps/prepare.py",
        "import os\nrows = open('data/raw.csv').read().splitlines()[1:]\nos.makedirs('data/features', exist_ok=True)\nwith open('data/features/f.csv', 'w') as f:\n    for r in rows:\n        f.write(r + ',1\\n')\nprint('prepared', len(rows), flush=True)\n",
    );
    write(
        "steps/train.py",
        "import shutil\nn = len(open('data/features/f.csv').read().splitlines())\nopen('artifacts/model.txt', 'w').write(f'model of {n} rows\\n')\nshutil.copy('assets/tiny.onnx', 'artifacts/model.onnx')\nprint('trained on', n, flush=True)\n",
    );
    write(
        "steps/evaluate.py",
        "import json\nm = open('artifacts/model.txt').read()\nauc = open('data/features/f.csv').read().count('\\n') / 10\njson.dump({'auc': auc, 'model': m}, open('reports/metrics.json', 'w'))\nprint('auc', auc, flush=True)\n",
    );
    dir
}

fn run(root: &Path, args: &[&str]) -> (Output, Value) {
    let mut all = vec!["run", "--json"];
    all.extend(args);
    let out = ferry(root, &all);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, json)
}

fn ok_run(root: &Path, args: &[&str]) -> Value {
    let (out, json) = run(root, args);
    assert!(
        out.status.success(),
        "{}\n{json:#}",
        String::from_utf8_lossy(&out.stderr)
    );
    json
}

/// Step name → status in a run record.
fn statuses(run: &Value) -> Vec<(String, String)> {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn status_of(run: &Value, step: &str) -> String {
    statuses(run)
        .into_iter()
        .find(|(n, _)| n == step)
        .unwrap_or_else(|| panic!("no step {step} in {run:#}"))
        .1
}

fn step<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

fn sha256(path: &Path) -> String {
    ferry::spec::sha256_file(path).unwrap()
}

/// ferry with no cluster configured: a command that gets as far as the cluster fails there.
fn no_cluster(root: &Path, args: &[&str]) -> Output {
    ferry_cmd(root, args)
        .env("KUBECONFIG", root.join("no-such-kubeconfig"))
        .output()
        .unwrap()
}

/// A project whose steps read `gate/` (which the test may write to while they run), and
/// `ferry ARGS` started in it with its output captured.
fn gated(spec: &str, args: &[&str]) -> (tempfile::TempDir, std::process::Child) {
    let dir = project(spec);
    std::fs::create_dir_all(dir.path().join("gate")).unwrap();
    std::fs::write(dir.path().join("gate/README"), "closed\n").unwrap();
    let child = ferry_cmd(dir.path(), args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    (dir, child)
}

/// Waits (up to two minutes) until a running step container of this file's project matches
/// each of `names` and passes `ready`; returns those found by then.
fn running_steps(names: &[&str], ready: impl Fn(&str) -> bool) -> Vec<String> {
    let started = Instant::now();
    loop {
        let all = docker(&["ps", "--format", "{{.Names}}"]);
        let found: Vec<String> = names
            .iter()
            .filter_map(|n| {
                all.lines()
                    .find(|c| c.starts_with("ferry-pipe-") && c.contains(n) && ready(c))
                    .map(str::to_string)
            })
            .collect();
        if found.len() == names.len() || started.elapsed() > Duration::from_secs(120) {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cache_entries(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root.join(".ferry/cache/steps"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

#[test]
fn three_steps_run_then_are_cached_and_an_edit_reruns_only_what_reads_it() {
    let dir = project(SPEC);
    let root = dir.path();

    let first = ok_run(root, &[]);
    assert_eq!(first["status"], "succeeded");
    // Order from the data: prepare before train before evaluate, whatever the file's order.
    let order: Vec<String> = statuses(&first).into_iter().map(|(n, _)| n).collect();
    let pos = |n: &str| order.iter().position(|o| o == n).unwrap();
    assert!(
        pos("prepare") < pos("train") && pos("train") < pos("evaluate"),
        "{order:?}"
    );
    assert!(
        statuses(&first).iter().all(|(_, s)| s == "ran"),
        "{first:#}"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("artifacts/model.txt")).unwrap(),
        "model of 5 rows\n"
    );
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("reports/metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["auc"], 0.5);
    let ev = step(&first, "evaluate");
    assert_eq!(ev["checks"][0]["passed"], true);
    assert_eq!(ev["checks"][0]["value"], 0.5);
    assert_eq!(ev["needs"], serde_json::json!(["prepare", "train"]));
    // Inputs and outputs recorded by sha256, as the project holds them.
    let tr = step(&first, "train");
    assert!(
        tr["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["path"] == "data/features/f.csv"
                && i["sha256"] == sha256(&root.join("data/features/f.csv")))
    );
    assert_eq!(tr["outputs"][0]["path"], "artifacts/model.txt", "{tr:#}");
    assert_eq!(
        tr["outputs"][0]["sha256"],
        sha256(&root.join("artifacts/model.txt"))
    );
    // ferry.lock names the run behind the served model.
    let lock: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("ferry.lock")).unwrap()).unwrap();
    assert_eq!(
        lock["environments"]["dev"]["runs"]["artifacts/model.onnx"],
        first["id"]
    );
    assert_eq!(cache_entries(root).len(), 4);

    // Nothing changed: every step cached, no container, no project image.
    let second = ok_run(root, &[]);
    assert!(
        statuses(&second).iter().all(|(_, s)| s == "cached"),
        "{second:#}"
    );
    assert!(
        second["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["image"].is_null())
    );
    assert_eq!(step(&second, "evaluate")["checks"][0]["passed"], true);

    // A deleted output comes back from the cache, byte for byte.
    let model = std::fs::read(root.join("artifacts/model.txt")).unwrap();
    std::fs::remove_file(root.join("artifacts/model.txt")).unwrap();
    let restored = ok_run(root, &[]);
    assert_eq!(status_of(&restored, "train"), "cached");
    assert_eq!(
        std::fs::read(root.join("artifacts/model.txt")).unwrap(),
        model
    );

    // An edit to train.py: train runs; evaluate reads train's output, which is the same bytes
    // (a comment changed nothing), so it stays cached; prepare and lint do not read train.py.
    let train = std::fs::read_to_string(root.join("steps/train.py")).unwrap();
    std::fs::write(root.join("steps/train.py"), format!("# tuned\n{train}")).unwrap();
    let dry = ferry(root, &["run", "--dry-run", "--json"]);
    assert!(dry.status.success());
    let planned: Value = serde_json::from_slice(&dry.stdout).unwrap();
    let why = |step: &str| {
        planned
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["step"] == step)
            .unwrap()
            .clone()
    };
    assert_eq!(why("prepare")["runs"], false);
    assert_eq!(why("train")["runs"], true);
    assert_eq!(why("train")["reason"], "input steps/train.py changed");
    assert_eq!(why("evaluate")["runs"], true, "it may have to: {planned:#}");
    let edited = ok_run(root, &[]);
    assert_eq!(status_of(&edited, "prepare"), "cached");
    assert_eq!(status_of(&edited, "lint"), "cached");
    assert_eq!(status_of(&edited, "train"), "ran");
    assert_eq!(status_of(&edited, "evaluate"), "cached");

    // An edit to the data: everything downstream of it runs, lint does not.
    std::fs::write(
        root.join("data/raw.csv"),
        "a,b\n1,2\n3,4\n5,6\n7,8\n9,10\n11,12\n",
    )
    .unwrap();
    let dry = ferry(root, &["run", "--dry-run"]);
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(text.contains("input data/raw.csv changed"), "{text}");
    let data = ok_run(root, &[]);
    assert_eq!(status_of(&data, "prepare"), "ran");
    assert_eq!(status_of(&data, "train"), "ran");
    assert_eq!(status_of(&data, "evaluate"), "ran");
    assert_eq!(status_of(&data, "lint"), "cached");
    assert_eq!(
        std::fs::read_to_string(root.join("artifacts/model.txt")).unwrap(),
        "model of 6 rows\n"
    );

    // Named steps run with what they need, no more.
    let only = ok_run(root, &["train", "--force", "train"]);
    assert_eq!(
        statuses(&only),
        [
            ("prepare".into(), "cached".into()),
            ("train".into(), "ran".into())
        ]
    );
    assert_eq!(step(&only, "train")["reason"], "forced (--force)");

    // `ferry runs` lists the runs with their steps; `runs show` draws one.
    let list = ferry(root, &["runs"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("prepare cached, train ran"), "{text}");
    let show = ferry(root, &["runs", "show", data["id"].as_str().unwrap()]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success(), "{show:?}");
    assert!(text.contains("train  ran"), "{text}");
    assert!(text.contains("needs prepare"), "{text}");
    assert!(text.contains("check ✓ auc = 0.6"), "{text}");

    // gc keeps what records name; removing the records frees their entries.
    let gc = ferry(root, &["gc", "--json"]);
    assert!(gc.status.success(), "{gc:?}");
    let report: Value = serde_json::from_slice(&gc.stdout).unwrap();
    assert_eq!(report["cache"]["entries"], 0, "{report}");
    let kept = cache_entries(root).len();
    let gc = ferry(root, &["gc", "--runs", "1", "--json"]);
    let report: Value = serde_json::from_slice(&gc.stdout).unwrap();
    assert!(report["cache"]["entries"].as_u64().unwrap() > 0, "{report}");
    assert!(cache_entries(root).len() < kept);
    // What the newest run used is still cached.
    let after = ok_run(root, &["train"]);
    assert_eq!(status_of(&after, "train"), "cached", "{after:#}");
}

#[test]
fn a_corrupted_cache_entry_is_found_and_the_step_runs_again() {
    let dir = project(SPEC);
    let root = dir.path();
    ok_run(root, &["train"]);
    let model = root.join("artifacts/model.txt");
    let sha = sha256(&model);
    let object = root
        .join(".ferry/cache/objects")
        .join(&sha[..2])
        .join(&sha[2..]);
    assert!(object.exists(), "{}", object.display());
    std::fs::write(&object, "not the model").unwrap();
    std::fs::remove_file(&model).unwrap();

    let again = ok_run(root, &["train"]);
    assert_eq!(status_of(&again, "prepare"), "cached");
    assert_eq!(status_of(&again, "train"), "ran");
    let reason = step(&again, "train")["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("artifacts/model.txt") && reason.contains("damaged"),
        "{reason}"
    );
    assert_eq!(sha256(&model), sha);
    // The store holds the right bytes again.
    assert_eq!(sha256(&object), sha);
    let third = ok_run(root, &["train"]);
    assert_eq!(status_of(&third, "train"), "cached");
}

#[test]
fn a_failed_check_fails_the_step_and_promote_refuses_the_model() {
    let dir = project(&SPEC.replace(">= 0.5", ">= 0.9"));
    let root = dir.path();
    let (out, run) = run(root, &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("check failed: auc = 0.5 in reports/metrics.json, needs >= 0.9"),
        "{stderr}"
    );
    assert_eq!(run["status"], "failed");
    assert_eq!(status_of(&run, "evaluate"), "failed");
    // The failed step's outputs are kept with the run, not moved into the project.
    assert!(!root.join("reports/metrics.json").exists());
    let kept = root
        .join(".ferry/runs")
        .join(run["id"].as_str().unwrap())
        .join("evaluate/out/reports/metrics.json");
    assert!(kept.exists(), "{}", kept.display());
    assert_eq!(cache_entries(root).len(), 3, "no entry for the failed step");

    // The model came from a run whose check failed: promote refuses it before the cluster is
    // asked (the staging cluster of this spec does not exist) and names the model's sha256.
    let model_sha = sha256(&root.join("artifacts/model.onnx"));
    let promote = no_cluster(root, &["promote", "staging", "--yes"]);
    let stderr = String::from_utf8_lossy(&promote.stderr);
    assert_eq!(promote.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no successful run that passed them"),
        "{stderr}"
    );
    assert!(stderr.contains(&model_sha[..12]), "{stderr}");
    assert!(stderr.contains("--unchecked"), "{stderr}");
    // --unchecked lets it through with a warning (to the cluster, which is not there)...
    let promote = no_cluster(root, &["promote", "staging", "--yes", "--unchecked"]);
    let stderr = String::from_utf8_lossy(&promote.stderr);
    assert!(!promote.status.success());
    assert!(stderr.contains("promoting an unchecked model"), "{stderr}");
    assert!(!stderr.contains("passed them"), "{stderr}");
    // ...but never into a protected environment.
    let promote = no_cluster(root, &["promote", "production", "--yes", "--unchecked"]);
    let stderr = String::from_utf8_lossy(&promote.stderr);
    assert_eq!(promote.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("production is protected, so --unchecked is refused there"),
        "{stderr}"
    );

    // Relaxed, the check passes on the cached outputs and promote gets past the gate (to the
    // cluster, which is not there).
    std::fs::write(root.join("ferry.yaml"), SPEC.replace("0.5\"", "0.4\"")).unwrap();
    let ok = ok_run(root, &[]);
    assert_eq!(status_of(&ok, "evaluate"), "ran");
    let promote = no_cluster(root, &["promote", "staging", "--yes"]);
    let stderr = String::from_utf8_lossy(&promote.stderr);
    assert!(!promote.status.success());
    assert!(!stderr.contains("passed them"), "past the gate: {stderr}");
}

#[test]
fn independent_steps_run_together_and_a_failure_stops_only_what_needs_it() {
    let spec = &format!(
        "{HEAD}\
pipeline:
  left:
    command: \"while [ ! -f gate/go ]; do sleep 0.1; done; echo left > out/left.txt\"
    inputs: [gate/]
    outputs: [out/left.txt]
    resources: {{ cpu: 500m }}
  right:
    command: \"while [ ! -f gate/go ]; do sleep 0.1; done; echo right > out/right.txt\"
    inputs: [gate/]
    outputs: [out/right.txt]
    resources: {{ cpu: 500m }}
  broken:
    command: \"echo half > out/broken.txt; echo stray > /workspace/stray.txt\"
    inputs: [gate/]
    outputs: [out/broken.txt]
  after:
    command: cat out/broken.txt > later/after.txt
    inputs: [out/broken.txt]
    outputs: [later/after.txt]
"
    );
    let (dir, child) = gated(spec, &["run", "--json"]);
    let root = dir.path();
    // Both waiting steps must be running at once before the gate opens; run one after the
    // other, the first would wait for ever.
    let running = running_steps(&["-left-", "-right-"], |_| true).len();
    std::fs::write(root.join("gate/go"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(running, 2, "left and right were not running together");
    assert_eq!(out.status.code(), Some(1));
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status_of(&run, "left"), "ran");
    assert_eq!(status_of(&run, "right"), "ran");
    assert_eq!(status_of(&run, "broken"), "failed");
    assert_eq!(status_of(&run, "after"), "skipped");
    let reason = step(&run, "broken")["reason"].as_str().unwrap();
    assert!(reason.contains("Read-only file system"), "{reason}");
    assert!(
        step(&run, "after")["reason"]
            .as_str()
            .unwrap()
            .contains("needs `broken`")
    );
    assert_eq!(
        std::fs::read_to_string(root.join("out/left.txt")).unwrap(),
        "left\n"
    );
    assert!(
        !root.join("out/broken.txt").exists(),
        "a failed step places nothing"
    );
    assert_eq!(
        cache_entries(root).len(),
        2,
        "entries for left and right only"
    );
    // No container of the run is left.
    let left = docker(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(
        !left
            .lines()
            .any(|n| n.contains(run["id"].as_str().unwrap())),
        "{left}"
    );
}

#[test]
fn a_broken_pipeline_is_refused_with_the_loop_and_the_missing_input_named() {
    let dir = project(
        "\
name: pipe
environment:
  bootstrap: bookworm
pipeline:
  a:
    command: cp out3/c.txt out/a.txt
    inputs: [out3/c.txt]
    outputs: [out/a.txt]
  b:
    command: cp out/a.txt out2/b.txt
    inputs: [out/a.txt, data/missing.csv]
    outputs: [out2/b.txt]
  c:
    command: cp out2/b.txt out3/c.txt
    inputs: [out2/b.txt]
    outputs: [out3/c.txt, out/a.txt]
",
    );
    let out = ferry(dir.path(), &["run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("data/missing.csv does not exist and no step writes it"),
        "{stderr}"
    );
    assert!(
        stderr.contains("out/a.txt is also written by step `a`"),
        "{stderr}"
    );
    assert!(stderr.contains("ferry.yaml:"), "positions: {stderr}");
    assert!(
        stderr.contains("read each other's outputs in a loop: "),
        "{stderr}"
    );
    assert!(stderr.contains(" → "), "{stderr}");
    let out = ferry(dir.path(), &["run", "nope"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // The spec is refused first: a broken spec never runs anything.
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[test]
fn ctrl_c_removes_the_running_steps_and_records_the_run_interrupted() {
    let spec = &format!(
        "{HEAD}\
pipeline:
  wait:
    command: \"echo waiting; while true; do sleep 0.1; done\"
    inputs: [gate/]
    outputs: [out/never.txt]
  after:
    command: cp out/never.txt later/x.txt
    inputs: [out/never.txt]
    outputs: [later/x.txt]
"
    );
    let (dir, child) = gated(spec, &["run"]);
    let root = dir.path();
    // Running, and its output followed.
    let container = running_steps(&["-wait-"], |c| docker(&["logs", c]).contains("waiting"))
        .pop()
        .expect("the step never started");
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert_eq!(
        docker(&["ps", "-aq", "--filter", &format!("name={container}")]),
        ""
    );
    let runs: Vec<PathBuf> = std::fs::read_dir(root.join(".ferry/runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1);
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(runs[0].join("run.json")).unwrap()).unwrap();
    assert_eq!(record["status"], "interrupted");
    assert_eq!(status_of(&record, "wait"), "interrupted");
    assert_eq!(status_of(&record, "after"), "skipped");
    assert!(!runs[0].join("wait/out").exists(), "staging removed");
    assert!(cache_entries(root).is_empty());
}

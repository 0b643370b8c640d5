//! The spec errors a user meets first, through the real binary: each names the file, line,
//! column and field, gives a hint, and exits non-zero. No Docker needed.

use std::process::Command;

mod common;
use common::ferry;

const SPEC: &str = "\
name: demo
environment:
  bootstrap: bookworm
  requirements: requirements.txt
train:
  command: python train.py
  inputs: [data/]
  outputs: [artifacts/model.onnx]
  resources: { cpu: 1, memory: 2Gi }
environments:
  dev: { target: docker }
  big: { target: docker, train: { resources: { memory: 8Gi } } }
";

fn project(spec: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ferry.yaml"), spec).unwrap();
    std::fs::write(dir.path().join("requirements.txt"), "numpy\n").unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    dir
}

/// Runs `ferry validate` on a broken spec; returns stderr after checking the exit code.
fn rejected(spec: &str) -> String {
    let dir = project(spec);
    let out = ferry(dir.path(), &["validate"]);
    assert_eq!(out.status.code(), Some(1), "should fail: {out:?}");
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout for an invalid spec"
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn validate_prints_the_resolved_spec() {
    let dir = project(SPEC);
    let out = ferry(dir.path(), &["validate", "--env", "big", "-o", "json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["env"], "big");
    assert_eq!(v["train"]["resources"]["memory"], "8Gi");
    assert_eq!(v["train"]["resources"]["cpu"], "1");
    assert!(v["spec_hash"].as_str().unwrap().starts_with("sha256:"));
    let yaml = ferry(dir.path(), &["validate"]);
    assert!(yaml.status.success());
    let text = String::from_utf8(yaml.stdout).unwrap();
    assert!(text.contains("memory: 2Gi"), "{text}");
}

/// `ferry validate | head -1` after `head` has gone: no panic report, and the status a tool
/// killed by SIGPIPE has (141), not success.
#[test]
fn output_to_a_closed_pipe_stops_without_a_panic() {
    let dir = project(SPEC);
    for args in [&["validate"][..], &["templates"][..]] {
        let out = common::ferry_to_closed_pipe(dir.path(), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
    }
}

#[test]
fn missing_spec() {
    let dir = tempfile::tempdir().unwrap();
    let out = ferry(dir.path(), &["validate"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("no spec at ferry.yaml"), "{err}");
    assert!(err.contains("ferry init"), "{err}");
}

#[test]
fn yaml_syntax_error() {
    let err = rejected("name: demo\nenvironment: [\n");
    assert!(err.contains("ferry.yaml:3:1: YAML syntax error"), "{err}");
}

#[test]
fn unknown_field() {
    let err = rejected(&SPEC.replace("  inputs:", "  input:"));
    assert!(
        err.contains("ferry.yaml:7:3: train.input: unknown field `input`"),
        "{err}"
    );
    assert!(err.contains("hint: did you mean `inputs`?"), "{err}");
}

#[test]
fn wrong_type() {
    let err = rejected(&SPEC.replace("inputs: [data/]", "inputs: data/"));
    assert!(
        err.contains("ferry.yaml:7:3: train.inputs: invalid type"),
        "{err}"
    );
}

#[test]
fn bad_quantity() {
    let err = rejected(&SPEC.replace("memory: 2Gi", "memory: 4 Gb"));
    assert!(
        err.contains("ferry.yaml:9:24: train.resources.memory"),
        "{err}"
    );
    assert!(err.contains("4Gi"), "{err}");
}

#[test]
fn bad_quantity_in_an_environment_points_into_it() {
    let err = rejected(&SPEC.replace("memory: 8Gi", "memory: 8 GB"));
    assert!(err.contains("ferry.yaml:12:"), "{err}");
    assert!(err.contains("(in environment `big`)"), "{err}");
}

#[test]
fn no_train_command() {
    let err = rejected(&SPEC.replace("  command: python train.py\n", ""));
    assert!(
        err.contains("train.command: missing field `command`"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn output_outside_the_project() {
    let err = rejected(&SPEC.replace("[artifacts/model.onnx]", "[/tmp/model.onnx]"));
    assert!(err.contains("ferry.yaml:8:"), "{err}");
    assert!(err.contains("absolute path"), "{err}");
}

#[test]
fn train_without_a_train_section_says_so() {
    let spec = "name: demo\nenvironment:\n  bootstrap: bookworm\nnotebook: {}\n";
    let dir = project(spec);
    let out = ferry(dir.path(), &["train"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("has no `train` section"), "{err}");
}

#[test]
fn json_errors_are_json() {
    let dir = project(&SPEC.replace("  inputs:", "  input:"));
    let out = ferry(dir.path(), &["validate", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("unknown field"));
}

#[test]
fn init_refuses_a_non_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
    let out = ferry(dir.path(), &["init", ".", "--template", "churn"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("keep.txt")).unwrap(),
        "mine"
    );
    assert!(!dir.path().join("ferry.yaml").exists());
}

#[test]
fn templates_lists_churn_and_notebook() {
    let dir = tempfile::tempdir().unwrap();
    let out = ferry(dir.path(), &["templates"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.lines().any(|l| l.starts_with("churn ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("notebook ")), "{text}");
}

#[test]
fn daemon_not_running_says_how_to_fix() {
    let dir = project(SPEC);
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["build"])
        .current_dir(dir.path())
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("cannot reach the Docker daemon at unix:///nonexistent/docker.sock"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn diff_lists_what_differs_between_two_environments() {
    let dir = project(SPEC);
    let out = ferry(dir.path(), &["diff", "dev", "big", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let changes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        changes,
        serde_json::json!([{
            "what": "spec field train.resources.memory",
            "was": "2Gi",
            "now": "8Gi"
        }])
    );
    let out = ferry(dir.path(), &["diff", "dev", "big"]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("train.resources.memory"), "{table}");
    assert!(table.contains("2Gi") && table.contains("8Gi"), "{table}");
    let out = ferry(dir.path(), &["diff", "dev", "dev"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("dev and dev are the same"),
        "{out:?}"
    );
}

#[test]
fn a_lock_of_another_project_is_refused() {
    let dir = project(SPEC);
    std::fs::write(
        dir.path().join("ferry.lock"),
        "{\"format\": 1, \"ferry\": \"0.1.0\", \"project\": \"other\", \"environments\": {}}\n",
    )
    .unwrap();
    let out = ferry(dir.path(), &["diff", "dev", "big"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("was written for the project other")
            && err.contains("is the project demo")
            && err.contains("lock of another spec"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    // Nothing was rewritten: the user's file is theirs to fix.
    assert!(
        std::fs::read_to_string(dir.path().join("ferry.lock"))
            .unwrap()
            .contains("\"other\"")
    );
}

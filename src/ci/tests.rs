use super::*;
use crate::templates;

/// The churn template with cluster environments appended, as a user would add them.
fn churn_with(envs: &str) -> (tempfile::TempDir, Project) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("churn");
    templates::init(&root, "churn", None, true, false).unwrap();
    let spec = root.join("ferry.yaml");
    let mut text = std::fs::read_to_string(&spec).unwrap();
    text.push_str(envs);
    std::fs::write(&spec, text).unwrap();
    let project = Project::load(&spec, None).unwrap();
    (dir, project)
}

const STAGING: &str = "
  staging: { target: kubernetes, context: stage-ctx, namespace: churn-staging, registry: registry.example.com/ml }
";
const PRODUCTION: &str = "
  production:
    target: kubernetes
    context: prod-ctx
    namespace: churn
    registry: registry.example.com/ml
    secrets: .env.production
    ingress: { host: churn.example.com, tls_secret: churn-tls }
";

fn parsed(text: &str) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn jobs(w: &serde_yaml_ng::Value) -> Vec<String> {
    w["jobs"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

fn runs(w: &serde_yaml_ng::Value) -> Vec<String> {
    let mut out = Vec::new();
    for (_, job) in w["jobs"].as_mapping().unwrap() {
        for step in job["steps"].as_sequence().unwrap() {
            if let Some(r) = step.get("run").and_then(|r| r.as_str()) {
                out.push(r.to_string());
            }
        }
    }
    out
}

/// Every `ferry …` invocation in a shell script, as argument lists: at the start of a line or
/// after `$(`, `|`, `&&`, `||`, `;` or `sudo -E`, up to the next of those or a closing parenthesis.
fn ferry_invocations(script: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for line in script.lines() {
        let mut rest = line;
        while let Some(i) = rest.find("ferry ") {
            let before = rest[..i].trim_end();
            let at_command = before.is_empty()
                || ["$(", "|", "&&", "||", ";", "{", "then", "else", "sudo -E"]
                    .iter()
                    .any(|op| before.ends_with(op));
            let after = &rest[i + "ferry ".len()..];
            let end = after.find(['|', ')', ';', '&', '>']).unwrap_or(after.len());
            if at_command {
                found.push(
                    after[..end]
                        .split_whitespace()
                        .map(str::to_string)
                        .collect(),
                );
            }
            rest = &after[end..];
        }
    }
    found
}

fn parses(args: &[String]) -> Result<(), String> {
    crate::cli::command()
        .try_get_matches_from(std::iter::once("ferry".to_string()).chain(args.iter().cloned()))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn the_invocation_check_can_fail() {
    let bad = ferry_invocations("ferry promote\nx=$(ferry deploy staging | jq .)");
    assert_eq!(bad.len(), 2);
    assert!(parses(&bad[0]).is_err(), "promote without an environment");
    assert!(parses(&bad[1]).is_err(), "no such subcommand");
    assert!(parses(&ferry_invocations("ferry build --quiet --json")[0]).is_err());
    assert!(parses(&ferry_invocations("ferry build --json")[0]).is_ok());
}

#[test]
fn staging_on_main_and_production_on_a_tag_with_an_approval() {
    let (_d, project) = churn_with(&format!("{STAGING}{PRODUCTION}"));
    let text = workflow(&project).unwrap();
    let w = parsed(&text);

    assert_eq!(w["on"]["push"]["branches"][0], "main");
    assert_eq!(w["on"]["push"]["tags"][0], "v*");
    assert!(w["on"].get("pull_request").is_some());
    assert_eq!(
        jobs(&w),
        ["build", "train", "promote-staging", "promote-production"]
    );
    let job = |id: &str| &w["jobs"][id];
    assert_eq!(job("train")["needs"], "build");
    assert_eq!(job("promote-staging")["needs"], "train");
    assert_eq!(job("promote-production")["needs"], "promote-staging");

    let staging_if = job("promote-staging")["if"].as_str().unwrap();
    assert!(staging_if.contains("refs/heads/main"), "{staging_if}");
    assert!(staging_if.contains("refs/tags/v"), "{staging_if}");
    let production_if = job("promote-production")["if"].as_str().unwrap();
    assert!(production_if.contains("refs/tags/v"), "{production_if}");
    assert!(!production_if.contains("refs/heads"), "{production_if}");

    assert_eq!(job("promote-staging")["environment"]["name"], "staging");
    assert_eq!(
        job("promote-production")["environment"]["name"],
        "production"
    );
    assert_eq!(
        job("promote-production")["environment"]["url"],
        "https://churn.example.com"
    );
    assert!(text.contains("required reviewers"), "{text}");

    // The training outputs the spec declares, and the lock, travel to the promote jobs.
    let upload = job("train")["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|s| s["uses"] == "actions/upload-artifact@v4")
        .unwrap();
    let paths: Vec<&str> = upload["with"]["path"].as_str().unwrap().lines().collect();
    assert_eq!(
        paths,
        [
            "artifacts/model.onnx",
            "artifacts/metrics.json",
            "data/split",
            "reports/evaluation.json",
            ".ferry/runs/",
            "ferry.lock"
        ]
    );
    assert!(
        text.contains("ferry run"),
        "the pipeline runs, checks included: {text}"
    );
    assert_eq!(upload["with"]["include-hidden-files"], true);
    for id in ["promote-staging", "promote-production"] {
        let steps = job(id)["steps"].as_sequence().unwrap();
        assert!(
            steps.iter().any(|s| s["with"]["name"] == TRAINING_ARTIFACT),
            "{id} downloads the training outputs"
        );
        let login = steps
            .iter()
            .find(|s| s["uses"] == "docker/login-action@v3")
            .unwrap_or_else(|| panic!("{id} logs in to the registry"));
        assert_eq!(login["with"]["registry"], "registry.example.com");
    }
    // Production takes what staging runs: staging's lock comes after the training outputs'.
    let prod_steps = job("promote-production")["steps"].as_sequence().unwrap();
    let pos = |name: &str| {
        prod_steps
            .iter()
            .position(|s| s["with"]["name"] == name)
            .unwrap()
    };
    assert!(pos(TRAINING_ARTIFACT) < pos("promoted-staging"));
    assert!(
        prod_steps.iter().any(|s| s["run"]
            .as_str()
            .is_some_and(|r| r.contains("> .env.production"))),
        "the secrets file is written from a secret"
    );
}

#[test]
fn every_ferry_command_in_the_workflow_is_one_this_binary_accepts() {
    let (_d, project) = churn_with(&format!("{STAGING}{PRODUCTION}"));
    let w = parsed(&workflow(&project).unwrap());
    let mut seen = Vec::new();
    for script in runs(&w) {
        for args in ferry_invocations(&script) {
            parses(&args).unwrap_or_else(|e| panic!("`ferry {}`: {e}", args.join(" ")));
            seen.push(args.join(" "));
        }
    }
    for expected in [
        "validate",
        "build",
        "build --json",
        "run",
        "runs",
        "promote staging",
        "status staging",
        // prod… is protected: the GitHub environment's approval stands in for the prompt.
        "promote production --yes",
        "status production",
    ] {
        assert!(seen.iter().any(|s| s == expected), "{expected} in {seen:?}");
    }
}

#[test]
fn only_environments_the_spec_has_are_named() {
    let (_d, project) = churn_with(STAGING);
    let text = workflow(&project).unwrap();
    let w = parsed(&text);
    assert_eq!(jobs(&w), ["build", "train", "promote-staging"]);
    assert!(!text.contains("production"), "{text}");
    assert!(!text.contains("--yes"), "staging is not protected");
}

#[test]
fn a_project_without_cluster_environments_or_training_says_what_to_add() {
    for (template, want) in [
        ("churn", vec!["build", "train"]),
        ("notebook", vec!["build"]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        templates::init(dir.path(), template, Some("demo"), false, false).unwrap();
        let project = Project::load_dir(dir.path(), None).unwrap();
        let text = workflow(&project).unwrap();
        assert_eq!(jobs(&parsed(&text)), want, "{template}");
        assert!(text.contains("Nothing is promoted"), "{text}");
        assert!(text.contains("ferry ci --force"), "{text}");
        for script in runs(&parsed(&text)) {
            for args in ferry_invocations(&script) {
                parses(&args).unwrap();
            }
        }
    }
}

#[test]
fn an_offline_spec_gets_debootstrap_on_the_runner() {
    let (_d, project) = churn_with("");
    assert!(
        workflow(&project)
            .unwrap()
            .contains("apt-get install -y -qq debootstrap")
    );
    let dir = tempfile::tempdir().unwrap();
    templates::init(dir.path(), "churn", Some("x"), false, false).unwrap();
    let online = Project::load_dir(dir.path(), None).unwrap();
    assert!(!workflow(&online).unwrap().contains("debootstrap"));
}

#[test]
fn a_hand_edited_workflow_is_replaced_only_with_force() {
    let (_d, project) = churn_with(STAGING);
    let first = write(&project, false).unwrap();
    assert!(first.changed);
    assert!(!write(&project, false).unwrap().changed);
    let path = project.root.join(WORKFLOW_PATH);
    std::fs::write(&path, "# mine\n").unwrap();
    let err = write(&project, false).unwrap_err();
    assert!(matches!(err, CiError::Edited { .. }), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "# mine\n");
    assert!(write(&project, true).unwrap().changed);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        workflow(&project).unwrap()
    );
}

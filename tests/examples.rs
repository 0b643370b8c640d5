//! The walkthroughs in `examples/`, run as a user runs them: each example's `walkthrough.sh`
//! with this build's ferry, against the real Docker engine, and — for the promote step — a
//! real registry on 127.0.0.1 (Debian's docker-registry) and the fake API server of the
//! cluster tests. Needs what tests/docker_local.rs needs; without docker-registry the promote
//! step is skipped and the test says so.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

mod common;
use common::fake_api::FakeApi;
use common::registry::Registry;

/// Runs `examples/NAME/walkthrough.sh` in a fresh directory with `env` set; returns the
/// directory (kept until the returned guard drops) and what the script did. Its output is
/// echoed, so a failing step can be read in the test's output.
async fn walkthrough(name: &str, env: &[(&str, String)]) -> (tempfile::TempDir, Output) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
        .join("walkthrough.sh");
    let work = tempfile::Builder::new()
        .prefix(&format!("example-{name}-"))
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(&script)
        .current_dir(work.path())
        .env("FERRY", env!("CARGO_BIN_EXE_ferry"))
        .env("WORKDIR", work.path())
        .env("NO_COLOR", "1")
        .env_remove("FERRY_ENV")
        .env_remove("STAGING_REGISTRY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    println!("{}", String::from_utf8_lossy(&out.stderr));
    (work, out)
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn runs(root: &Path) -> Vec<Value> {
    let mut runs: Vec<Value> = std::fs::read_dir(root.join(".ferry/runs"))
        .unwrap()
        .map(|e| json(&e.unwrap().path().join("run.json")))
        .collect();
    runs.sort_by_key(|r| r["id"].as_str().unwrap().to_string());
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_walkthrough_data_notebook_train_serve_predict_promote() {
    let registry = Registry::start(false).await;
    let fake = FakeApi::with_store().await;
    let mut env = vec![("SERVE_PORT", common::free_port().to_string())];
    if let Some(r) = &registry {
        env.push(("STAGING_REGISTRY", format!("{}/ml", r.host)));
        env.push(("KUBECONFIG", fake.kubeconfig().display().to_string()));
    } else {
        eprintln!("skipped: the promote step of the churn walkthrough (no docker-registry)");
    }
    let (work, out) = walkthrough("churn", &env).await;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the walkthrough failed:\n{printed}");
    let root = work.path().join("churn-demo");

    // data: generated in the image with the example's seed and size, collected as an output.
    let data = std::fs::read_to_string(root.join("data/customers.csv")).unwrap();
    assert_eq!(data.lines().count(), 3001, "3000 customers and a header");

    // The notebook's run (after the split training reads, made by `prepare` first), then the
    // pipeline three times: everything, nothing, evaluate alone; then the customers scored.
    let runs = runs(&root);
    let kinds: Vec<String> = runs
        .iter()
        .map(|r| match r["steps"].as_array() {
            None if r["score"].is_object() => "score".to_string(),
            None => "train".to_string(),
            Some(steps) => steps
                .iter()
                .map(|s| {
                    format!(
                        "{} {}",
                        s["name"].as_str().unwrap(),
                        s["status"].as_str().unwrap()
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "train",
            "prepare ran",
            "train",
            "prepare cached, train ran, evaluate ran",
            "prepare cached, train cached, evaluate cached",
            "prepare cached, train cached, evaluate ran",
            "score",
        ],
        "{runs:#?}"
    );
    assert!(runs.iter().all(|r| r["status"] == "succeeded"), "{runs:?}");
    assert_eq!(runs[0]["env"], "data");
    let nb_run = &runs[2];
    let executed = root.join(nb_run["notebook"].as_str().expect("the notebook is kept"));
    let nb = json(&executed);
    let cells = nb["cells"].as_array().unwrap();
    let code: Vec<&Value> = cells.iter().filter(|c| c["cell_type"] == "code").collect();
    assert!(
        code.iter().all(|c| c["execution_count"].is_number()),
        "every code cell ran"
    );
    let injected = cells
        .iter()
        .find(|c| c["metadata"]["tags"][0] == "injected-parameters")
        .expect("the -p value is injected");
    assert!(injected["source"].to_string().contains("seed = 11"));
    let text = serde_json::to_string(&nb).unwrap();
    assert!(text.contains("test ROC AUC"), "the cells' outputs are kept");
    assert!(
        nb_run["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["path"] == "artifacts/model.onnx")
    );
    assert!(printed.contains(&format!(
        "notebook {}",
        nb_run["notebook"].as_str().unwrap()
    )));
    // The held-out evaluation passed its bar, and the dry run said why evaluate would run.
    let evaluation = json(&root.join("reports/evaluation.json"));
    assert!(evaluation["auc"].as_f64().unwrap() >= 0.75, "{evaluation}");
    assert!(printed.contains("input evaluate.py changed"), "{printed}");

    // score: every customer of the data, in its order, with the model's outputs.
    let scores = std::fs::read_to_string(root.join("scores.csv")).unwrap();
    let data = std::fs::read_to_string(root.join("data/customers.csv")).unwrap();
    let mut lines = scores.lines();
    assert_eq!(
        lines.next(),
        Some("customer_id,label,probabilities_0,probabilities_1")
    );
    let ids: Vec<&str> = lines.map(|l| l.split(',').next().unwrap()).collect();
    let expected: Vec<&str> = data
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(ids, expected);
    let thousands = format!("{},{:03}", expected.len() / 1000, expected.len() % 1000);
    assert!(
        printed.contains(&format!("scored {thousands} rows")),
        "{printed}"
    );

    // serve + predict: a table with a row per customer of request.json.
    let table = printed
        .split("$ ferry predict request.json\n")
        .nth(1)
        .expect("the predict step ran");
    let rows: Vec<&str> = table.lines().take(3).collect();
    assert!(
        rows[0].starts_with("row") && rows[0].contains("probabilities"),
        "{table}"
    );
    assert!(
        rows[1].starts_with('0') && rows[2].starts_with('1'),
        "{table}"
    );

    // promote: the staging Deployment runs the image ferry pushed, by digest.
    if registry.is_some() {
        let deployment = fake
            .object("/apis/apps/v1/namespaces/churn-demo-staging/deployments/churn-demo")
            .expect("the staging Deployment is applied");
        let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(image.contains("@sha256:"), "{image}");
        let lock = json(&root.join("ferry.lock"));
        let staging = &lock["environments"]["staging"];
        assert!(
            staging
                .to_string()
                .contains(image.rsplit('@').next().unwrap()),
            "ferry.lock records the promoted digest: {staging}"
        );
        // The promoted model's run, and through it the data and code behind it.
        let model_run = staging["runs"]["artifacts/model.onnx"].as_str().unwrap();
        assert!(runs.iter().any(|r| r["id"] == model_run), "{staging}");
        assert!(
            printed.contains("  model      artifacts/model.onnx "),
            "{printed}"
        );
        assert!(
            printed.contains("    steps    prepare → train\n"),
            "{printed}"
        );
        assert!(
            printed.contains("    data     data/customers.csv "),
            "{printed}"
        );
        assert!(printed.contains("    code     train.py "), "{printed}");
    }
}

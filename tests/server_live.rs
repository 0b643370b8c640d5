//! The server while its models change: a watched file swapped in under load with every request
//! answered, replacements refused (another interface, a broken file) while the old model keeps
//! serving, Triton's repository API, and instances answering side by side.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestServer, config, config_with, file_sha256, fixture, metric, post, until};
use ferry::server::config::{Limits, ModelConfig, VariantConfig};
use serde_json::{Value, json};

fn model_at(name: &str, path: &Path, instances: Option<u32>) -> ModelConfig {
    ModelConfig {
        name: name.into(),
        version: "1".into(),
        variants: vec![VariantConfig {
            name: "main".into(),
            path: path.to_path_buf(),
            weight: 1,
            sha256: None,
            source: None,
            shadow: false,
            timeout_ms: None,
        }],
        batching: None,
        instances,
        threads: None,
    }
}

/// Puts a fixture at `dir/model.onnx` the way a trainer should: written aside, renamed over.
fn place(dir: &Path, fixture_name: &str) -> PathBuf {
    let target = dir.join("model.onnx");
    let aside = dir.join(".model.onnx.part");
    std::fs::copy(fixture(fixture_name), &aside).unwrap();
    std::fs::rename(&aside, &target).unwrap();
    target
}

fn request() -> Value {
    json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]})
}

/// Which of the scale models answered: Y / X, or why the answer is wrong.
fn factor(answer: &Value) -> Result<f64, String> {
    let y: Vec<f64> = answer["outputs"][0]["data"]
        .as_array()
        .ok_or_else(|| format!("no data in {answer}"))?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    let k = y.first().copied().unwrap_or(f64::NAN);
    if y.len() == 4 && y.iter().zip(1..).all(|(v, x)| *v == k * f64::from(x)) {
        Ok(k)
    } else {
        Err(format!("not a scaled X: {answer}"))
    }
}

async fn infer_factor(server: &TestServer) -> f64 {
    let (status, answer) = server.infer("m", &request()).await;
    assert_eq!(status, 200, "{answer}");
    factor(&answer).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_model_file_is_swapped_in_under_load_and_every_request_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let path = place(dir.path(), "scale1.onnx");
    let mut config = config(vec![model_at("m", &path, None)]);
    config.watch = true;
    let server = TestServer::start(config).await;
    let sha_a = file_sha256(&fixture("scale1.onnx"));
    let sha_b = file_sha256(&fixture("scale2.onnx"));

    let answers: Arc<Mutex<Vec<f64>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("{}/v2/models/m/infer", server.base);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (answers, failures, stop) = (answers.clone(), failures.clone(), stop.clone());
            let (client, url) = (server.client.clone(), url.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let (status, answer) = post(&client, &url, request().to_string()).await;
                    match (status, factor(&answer)) {
                        (200, Ok(k)) if k == 1.0 || k == 2.0 => answers.lock().unwrap().push(k),
                        (status, k) => failures
                            .lock()
                            .unwrap()
                            .push(format!("{status}: {k:?} {answer}")),
                    }
                }
            })
        })
        .collect();
    let count = || answers.lock().unwrap().len();
    until(
        "answers from the first model",
        Duration::from_secs(30),
        || std::future::ready(count() >= 200),
    )
    .await;

    place(dir.path(), "scale2.onnx");
    let swapped = Instant::now();
    until(
        "an answer from the new model",
        Duration::from_secs(20),
        || std::future::ready(answers.lock().unwrap().contains(&2.0)),
    )
    .await;
    eprintln!(
        "the new model answered {} ms after its file was renamed into place",
        swapped.elapsed().as_millis()
    );
    let after = count();
    until("answers after the swap", Duration::from_secs(30), || {
        std::future::ready(count() >= after + 200)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }

    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    let answers = answers.lock().unwrap().clone();
    // At most 8 requests were in flight on the old model when the new one came in.
    let tail = &answers[answers.len() - 100..];
    assert!(tail.iter().all(|&k| k == 2.0), "{tail:?}");
    // Every answer is counted under the file that gave it.
    let by_a = metric(
        &server,
        &format!(r#"ferry_requests_total{{model="m",sha256="{sha_a}",status="200"}}"#),
    )
    .await;
    let by_b = metric(
        &server,
        &format!(r#"ferry_requests_total{{model="m",sha256="{sha_b}",status="200"}}"#),
    )
    .await;
    let ones = answers.iter().filter(|&&k| k == 1.0).count() as f64;
    assert_eq!((by_a, by_b), (ones, answers.len() as f64 - ones));
    assert_eq!(
        metric(
            &server,
            r#"ferry_model_reloads_total{model="m",result="loaded"}"#
        )
        .await,
        1.0
    );
    let (_, meta) = server.get("/v2/models/m").await;
    assert_eq!(meta["versions"], json!(["1", format!("sha256:{sha_b}")]));
    // The file's own version routes to it.
    let (status, answer) = server
        .post(
            &format!("/v2/models/m/versions/sha256:{sha_b}/infer"),
            request().to_string(),
        )
        .await;
    assert_eq!((status, factor(&answer)), (200, Ok(2.0)));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_that_does_not_fit_is_refused_and_the_old_model_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = place(dir.path(), "scale1.onnx");
    let mut config = config(vec![model_at("m", &path, None)]);
    config.watch = true;
    let server = TestServer::start(config).await;
    let sha_a = file_sha256(&fixture("scale1.onnx"));
    assert_eq!(infer_factor(&server).await, 1.0);
    let refused = r#"ferry_model_reloads_total{model="m",result="refused"}"#;

    // Another interface: clients of the served model would break.
    place(dir.path(), "two.onnx");
    until(
        "the refusal of two.onnx",
        Duration::from_secs(20),
        || async { metric(&server, refused).await >= 1.0 },
    )
    .await;
    assert_eq!(infer_factor(&server).await, 1.0);

    // Not a model at all.
    std::fs::write(dir.path().join(".part"), b"not an onnx model").unwrap();
    std::fs::rename(dir.path().join(".part"), &path).unwrap();
    until(
        "the refusal of a broken file",
        Duration::from_secs(20),
        || async { metric(&server, refused).await >= 2.0 },
    )
    .await;
    assert_eq!(infer_factor(&server).await, 1.0);
    let (_, meta) = server.get("/v2/models/m").await;
    assert_eq!(meta["versions"], json!(["1", format!("sha256:{sha_a}")]));

    // A file that fits is taken after all that.
    place(dir.path(), "scale2.onnx");
    until(
        "the swap to scale2.onnx",
        Duration::from_secs(20),
        || async { infer_factor(&server).await == 2.0 },
    )
    .await;
    assert_eq!(
        metric(
            &server,
            r#"ferry_model_reloads_total{model="m",result="loaded"}"#
        )
        .await,
        1.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repository_api_loads_unloads_and_lists_models() {
    let dir = tempfile::tempdir().unwrap();
    let path = place(dir.path(), "scale1.onnx");
    // Not watched: only the API loads.
    let server = TestServer::start(config(vec![model_at("m", &path, None)])).await;
    let sha_a = file_sha256(&fixture("scale1.onnx"));
    let sha_b = file_sha256(&fixture("scale2.onnx"));

    let (status, index) = server.post("/v2/repository/index", "").await;
    assert_eq!(
        (status, index),
        (
            200,
            json!([{"name": "m", "version": "1", "state": "READY"}])
        )
    );

    place(dir.path(), "scale2.onnx");
    assert_eq!(infer_factor(&server).await, 1.0, "not watched");
    let (status, loaded) = server.post("/v2/repository/models/m/load", "").await;
    assert_eq!(status, 200, "{loaded}");
    assert_eq!(
        loaded["loaded"],
        json!([{"variant": "main", "sha256": sha_b, "previous_sha256": sha_a}])
    );
    assert_eq!(infer_factor(&server).await, 2.0);
    // Loading what is already served changes nothing.
    let (status, again) = server.post("/v2/repository/models/m/load", "{}").await;
    assert_eq!((status, again["loaded"].clone()), (200, json!([])));

    let (status, _) = server.post("/v2/repository/models/m/unload", "").await;
    assert_eq!(status, 200);
    let (status, answer) = server.infer("m", &request()).await;
    assert_eq!(status, 503);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("POST /v2/repository/models/m/load"),
        "{answer}"
    );
    assert_eq!(server.get("/v2/models/m/ready").await.0, 503);
    let (_, index) = server.post("/v2/repository/index", "").await;
    assert_eq!(
        index,
        json!([{"name": "m", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}])
    );
    let (_, ready_only) = server
        .post("/v2/repository/index", r#"{"ready": true}"#)
        .await;
    assert_eq!(ready_only, json!([]));

    let (status, loaded) = server.post("/v2/repository/models/m/load", "").await;
    assert_eq!(status, 200, "{loaded}");
    assert_eq!(loaded["loaded"][0]["previous_sha256"], Value::Null);
    assert_eq!(infer_factor(&server).await, 2.0);
    assert_eq!(server.get("/v2/models/m/ready").await.0, 200);

    // Refusals: overrides in the request, an unknown model, a file that does not fit.
    let (status, answer) = server
        .post(
            "/v2/repository/models/m/load",
            r#"{"parameters": {"config": "{}"}}"#,
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("not supported"),
        "{answer}"
    );
    let (status, answer) = server.post("/v2/repository/models/nope/load", "").await;
    assert_eq!(status, 404, "{answer}");
    place(dir.path(), "two.onnx");
    let (status, answer) = server.post("/v2/repository/models/m/load", "").await;
    assert_eq!(status, 400);
    let message = answer["error"].as_str().unwrap();
    assert!(
        message.contains("other inputs or outputs") && message.contains("model.onnx"),
        "{message}"
    );
    assert_eq!(infer_factor(&server).await, 2.0);
    server.stop().await;
}

fn slow_request(iterations: i64) -> String {
    json!({"inputs": [
        {"name": "X", "shape": [1, 8], "datatype": "FP32", "data": vec![0.5f32; 8]},
        {"name": "iterations", "shape": [1], "datatype": "INT64", "data": [iterations]}
    ]})
    .to_string()
}

/// Whether a quick request is answered while a long one holds an instance: when the quick
/// answer arrives, has the server finished running the long one? A worker counts a run in the
/// model's statistics before it answers, so with one instance both runs are counted by then.
async fn quick_answered_during_slow(instances: u32) -> bool {
    // The long request takes seconds, and many more on a loaded machine: the request timeout
    // is not what this test is about, so it is out of reach.
    let limits = Limits {
        request_timeout_ms: 300_000,
        ..Limits::default()
    };
    let server = TestServer::start(config_with(
        vec![model_at("slow", &fixture("slow.onnx"), Some(instances))],
        limits,
    ))
    .await;
    let url = format!("{}/v2/models/slow/infer", server.base);
    let client = server.client.clone();
    let slow = tokio::spawn(async move { post(&client, &url, slow_request(3_000_000)).await });
    until(
        "the long request to run",
        Duration::from_secs(20),
        || async { metric(&server, r#"ferry_instances_busy{model="slow"}"#).await == 1.0 },
    )
    .await;
    let (status, _) = server.post("/v2/models/slow/infer", slow_request(1)).await;
    assert_eq!(status, 200);
    let (_, stats) = server.get("/v2/models/slow/stats").await;
    let runs = stats["model_stats"][0]["execution_count"].clone();
    assert_eq!(
        metric(&server, r#"ferry_instances{model="slow"}"#).await,
        f64::from(instances)
    );
    assert_eq!(slow.await.unwrap().0, 200);
    server.stop().await;
    match runs.as_u64() {
        Some(1) => true,
        Some(2) => false,
        _ => panic!("execution_count: {stats}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_answer_side_by_side() {
    assert!(
        quick_answered_during_slow(2).await,
        "with two instances the quick request must not wait for the long one"
    );
    assert!(
        !quick_answered_during_slow(1).await,
        "with one instance the quick request waits its turn"
    );
}

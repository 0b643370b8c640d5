//! The server's traffic log and shadows, against the real server: records written as JSON lines
//! with what was asked and answered, a flood against a stalled log dropping records (counted)
//! while every request is answered, a log that cannot be written, a shadow's agreement in
//! `/metrics` and the log, and a slow shadow timing out without holding the answer back.

mod common;

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{TestServer, config, file_sha256, fixture, metric, post, sample, until};
use ferry::server::config::{ModelConfig, ServingConfig, TrafficLogConfig, VariantConfig};
use serde_json::{Value, json};

fn variant(name: &str, file: &str, weight: u32, shadow: bool) -> VariantConfig {
    VariantConfig {
        name: name.into(),
        path: fixture(file),
        weight,
        sha256: None,
        source: None,
        shadow,
        timeout_ms: None,
    }
}

fn model(variants: Vec<VariantConfig>) -> ModelConfig {
    ModelConfig {
        name: "m".into(),
        version: "1".into(),
        variants,
        batching: None,
        instances: None,
        threads: None,
    }
}

fn logged(mut config: ServingConfig, path: &Path, queue: Option<usize>) -> ServingConfig {
    config.log = Some(TrafficLogConfig {
        sample: 1.0,
        path: Some(path.to_path_buf()),
        max_size: 100 << 20,
        keep: 2,
        queue,
    });
    config
}

fn request(id: usize) -> Value {
    json!({"id": format!("r{id}"), "inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32",
        "data": [1.0, 2.0, 3.0, 4.0, id as f64, 0.5, -1.0, 8.0]}]})
}

fn by_id<'a>(records: &'a [Value], id: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no record {id}"))
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_requests_are_logged_with_what_was_asked_and_answered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs/traffic.jsonl");
    let config = logged(
        config(vec![model(vec![variant("main", "scale2.onnx", 1, false)])]),
        &path,
        None,
    );
    let server = TestServer::start(config).await;
    let mut answers = Vec::new();
    for i in 0..20 {
        let (status, answer) = server.infer("m", &request(i)).await;
        assert_eq!(status, 200, "{answer}");
        answers.push(answer);
    }
    // v1 requests have no id: the server makes one.
    let (status, _) = server
        .post(
            "/v1/models/m:predict",
            json!({"instances": [[1.0, 1.0, 1.0, 1.0]]}).to_string(),
        )
        .await;
    assert_eq!(status, 200);
    until("21 records written", Duration::from_secs(20), || async {
        metric(
            &server,
            r#"ferry_traffic_log_records_total{result="written"}"#,
        )
        .await
            == 21.0
    })
    .await;
    let records = lines(&path);
    assert_eq!(records.len(), 21);
    let sha = file_sha256(&fixture("scale2.onnx"));
    for (i, (record, answer)) in records.iter().zip(&answers).enumerate() {
        assert_eq!(record["id"], format!("r{i}"));
        assert_eq!(
            (&record["model"], &record["variant"], &record["sha256"]),
            (&json!("m"), &json!("main"), &json!(sha))
        );
        assert_eq!(record["inputs"], request(i)["inputs"]);
        assert_eq!(record["outputs"][0]["data"], answer["outputs"][0]["data"]);
        assert_eq!(record["outputs"][0]["shape"], json!([2, 4]));
        assert!(record["latency_ms"].as_f64().unwrap() > 0.0, "{record}");
        assert!(record["time"].as_str().unwrap().ends_with('Z'), "{record}");
        assert_eq!(record["shadow"], Value::Null);
    }
    assert_eq!(records[20]["id"].as_str().unwrap().len(), 16);
    assert_eq!(
        records[20]["outputs"][0]["data"],
        json!([2.0, 2.0, 2.0, 2.0])
    );
    server.stop().await;
}

/// A FIFO nobody reads stands for a log disk that stalls: the writer blocks once the pipe's
/// buffer is full, so its queue fills and further records must be dropped, not waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_against_a_stalled_log_drops_records_and_answers_every_request() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("traffic.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // Opened for reading first (without blocking), so the server can open it for writing.
    const O_NONBLOCK: i32 = 0o4000;
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let config = logged(
        config(vec![model(vec![variant("main", "scale1.onnx", 1, false)])]),
        &fifo,
        Some(4),
    );
    let server = TestServer::start(config).await;

    const REQUESTS: usize = 1200;
    let url = format!("{}/v2/models/m/infer", server.base);
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (client, url) = (server.client.clone(), url.clone());
            tokio::spawn(async move {
                let mut ok = 0;
                for i in (c..REQUESTS).step_by(8) {
                    let (status, _) = post(&client, &url, request(i).to_string()).await;
                    ok += usize::from(status == 200);
                }
                ok
            })
        })
        .collect();
    let mut answered = 0;
    for client in clients {
        answered += client.await.unwrap();
    }
    assert_eq!(answered, REQUESTS, "every request is answered");
    let dropped = metric(
        &server,
        r#"ferry_traffic_log_records_total{result="dropped"}"#,
    )
    .await;
    assert!(
        dropped > 0.0,
        "a stalled log drops records: {}",
        server.metrics().await
    );

    // Drained, the log holds exactly what was not dropped.
    let drain = std::thread::spawn(move || {
        let mut text = Vec::new();
        let mut buffer = [0u8; 65536];
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match reader.read(&mut buffer) {
                Ok(n) => text.extend_from_slice(&buffer[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
            if text.iter().filter(|&&b| b == b'\n').count() as f64 + dropped >= REQUESTS as f64 {
                break;
            }
        }
        text
    });
    let text = drain.join().unwrap();
    let written = String::from_utf8(text).unwrap().lines().count();
    until("the writer's count", Duration::from_secs(20), || async {
        metric(
            &server,
            r#"ferry_traffic_log_records_total{result="written"}"#,
        )
        .await
            == written as f64
    })
    .await;
    assert_eq!(written as f64 + dropped, REQUESTS as f64);
    assert_eq!(
        metric(
            &server,
            r#"ferry_traffic_log_records_total{result="failed"}"#
        )
        .await,
        0.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_cannot_be_written_stops_logging_and_serving_goes_on() {
    // /dev/full takes the file open and refuses every write: a full disk.
    let full = logged(
        config(vec![model(vec![variant("main", "scale1.onnx", 1, false)])]),
        Path::new("/dev/full"),
        None,
    );
    let server = TestServer::start(full).await;
    for i in 0..30 {
        assert_eq!(server.infer("m", &request(i)).await.0, 200);
    }
    until("30 failed records", Duration::from_secs(20), || async {
        metric(
            &server,
            r#"ferry_traffic_log_records_total{result="failed"}"#,
        )
        .await
            == 30.0
    })
    .await;
    server.stop().await;
    // A directory that cannot be made: the server starts anyway.
    let unopenable = logged(
        config(vec![model(vec![variant("main", "scale1.onnx", 1, false)])]),
        Path::new("/dev/null/traffic.jsonl"),
        None,
    );
    let server = TestServer::start(unopenable).await;
    assert_eq!(server.infer("m", &request(0)).await.0, 200);
    until("1 failed record", Duration::from_secs(20), || async {
        metric(
            &server,
            r#"ferry_traffic_log_records_total{result="failed"}"#,
        )
        .await
            == 1.0
    })
    .await;
    server.stop().await;
}

/// Sends 25 requests to a model with `shadow` as its shadow; every answer must be the
/// model's (x 1).
async fn shadowed(shadow: &str, log: &Path) -> TestServer {
    let config = logged(
        config(vec![model(vec![
            variant("main", "scale1.onnx", 1, false),
            variant("candidate", shadow, 100, true),
        ])]),
        log,
        None,
    );
    let server = TestServer::start(config).await;
    for i in 0..25 {
        let response = server
            .client
            .post(format!("{}/v2/models/m/infer", server.base))
            .header("content-type", "application/json")
            .body(request(i).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["x-ferry-variant"], "main");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(
            answer["outputs"][0]["data"],
            request(i)["inputs"][0]["data"],
            "the model's answer, never the shadow's"
        );
    }
    let compared = r#"ferry_shadow_max_abs_diff_count{model="m",variant="candidate",output="Y"}"#;
    until("25 compared answers", Duration::from_secs(20), || async {
        metric(&server, compared).await == 25.0
    })
    .await;
    until("25 records", Duration::from_secs(20), || async {
        metric(
            &server,
            r#"ferry_traffic_log_records_total{result="written"}"#,
        )
        .await
            == 25.0
    })
    .await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_never_answers_and_its_agreement_is_counted_and_logged() {
    // Y = -X: every row's top class differs.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("traffic.jsonl");
    let server = shadowed("negated.onnx", &path).await;
    let metrics = server.metrics().await;
    let count = |series: &str| sample(&metrics, series);
    assert_eq!(
        count(r#"ferry_shadow_requests_total{model="m",variant="candidate",result="disagree"}"#),
        Some(25.0),
        "{metrics}"
    );
    assert_eq!(
        count(
            r#"ferry_shadow_rows_total{model="m",variant="candidate",output="Y",kind="score",result="disagree"}"#
        ),
        Some(50.0),
        "{metrics}"
    );
    // Copies are not requests: clients sent 25, all to main.
    assert_eq!(
        count(r#"ferry_requests_total{model="m",variant="candidate",status="200"}"#),
        Some(0.0)
    );
    let records = lines(&path);
    assert_eq!(records.len(), 25);
    // Shadowed records are written as each shadow answers, not in request order.
    let shadow = &by_id(&records, "r3")["shadow"];
    assert_eq!(shadow["variant"], "candidate");
    assert_eq!(shadow["sha256"], file_sha256(&fixture("negated.onnx")));
    assert_eq!(shadow["error"], Value::Null);
    assert_eq!(
        shadow["outputs"][0]["data"],
        json!([-1.0, -2.0, -3.0, -4.0, -3.0, -0.5, 1.0, -8.0])
    );
    assert_eq!(shadow["agreement"]["rows"], 2);
    assert_eq!(shadow["agreement"]["agreeing_rows"], 0);
    assert_eq!(shadow["agreement"]["outputs"][0]["max_abs_diff"], 16.0);
    assert_eq!(shadow["agreement"]["outputs"][0]["top1"], json!([0, 2]));
    server.stop().await;

    // Y = 2X: other scores, the same top class on every row.
    let path = dir.path().join("scaled.jsonl");
    let server = shadowed("scale2.onnx", &path).await;
    let metrics = server.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"ferry_shadow_requests_total{model="m",variant="candidate",result="agree"}"#
        ),
        Some(25.0),
        "{metrics}"
    );
    // Every request's largest difference is above 1 (the rows' top values differ by 4 to 24).
    assert_eq!(
        sample(
            &metrics,
            r#"ferry_shadow_max_abs_diff_bucket{model="m",variant="candidate",output="Y",kind="score",le="1.0"}"#
        ),
        Some(0.0),
        "{metrics}"
    );
    let records = lines(&path);
    assert_eq!(
        by_id(&records, "r3")["shadow"]["agreement"]["outputs"][0]["max_abs_diff"],
        8.0
    );
    server.stop().await;
}

fn slow_request(iterations: i64) -> String {
    json!({"inputs": [
        {"name": "X", "shape": [1, 8], "datatype": "FP32", "data": vec![0.5f32; 8]},
        {"name": "iterations", "shape": [1], "datatype": "INT64", "data": [iterations]}
    ]})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_shadow_times_out_and_never_holds_the_answer_back() {
    let mut shadow = variant("slow", "slow.onnx", 100, true);
    shadow.timeout_ms = Some(100);
    let config = config(vec![ModelConfig {
        variants: vec![variant("main", "quick.onnx", 1, false), shadow],
        ..model(Vec::new())
    }]);
    let server = TestServer::start(config).await;
    let (status, answer) = server
        .post("/v2/models/m/infer", slow_request(3_000_000))
        .await;
    assert_eq!(status, 200, "{answer}");
    // Answered while the shadow still runs the same request.
    assert_eq!(
        metric(&server, r#"ferry_instances_busy{model="m",variant="slow"}"#).await,
        1.0
    );
    let timeout = r#"ferry_shadow_requests_total{model="m",variant="slow",result="timeout"}"#;
    until("the shadow's timeout", Duration::from_secs(20), || async {
        metric(&server, timeout).await == 1.0
    })
    .await;
    server.stop().await;
}

//! The model server under load, against a real server on 127.0.0.1 started in-process: dynamic
//! batching must return to each of many concurrent requests exactly its own rows; the limits
//! (body size, queue, timeout, elements) refuse with the right status and the server recovers;
//! shutdown finishes what is in flight within the grace period.

use std::time::{Duration, Instant};

use ferry::server::config::Limits;
use futures_util::future::join_all;
use serde_json::{Value, json};

mod common;
use common::{TestServer, config_with, model, post, read_answer, sample};

/// Deterministic pseudo-random numbers, so that failures reproduce.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn float(&mut self) -> f32 {
        (self.next() % 10_000) as f32 / 100.0
    }
}

/// Keys in the order clients send them (name, shape, datatype, data), which `json!` would sort.
fn request(name: &str, shape: &[usize], data: &[f32]) -> String {
    let data = serde_json::to_string(data).unwrap();
    format!(
        r#"{{"inputs":[{{"name":"{name}","shape":{shape:?},"datatype":"FP32","data":{data}}}]}}"#
    )
}

fn output<'a>(response: &'a Value, name: &str) -> &'a Value {
    response["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name} in {response}"))
}

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

/// Sends all requests at once; the answers in request order.
async fn concurrently(server: &TestServer, model: &str, bodies: &[String]) -> Vec<(u16, Value)> {
    let url = format!("{}/v2/models/{model}/infer", server.base);
    join_all(
        bodies
            .iter()
            .map(|body| post(&server.client, &url, body.clone())),
    )
    .await
}

fn slow_request(iterations: i64) -> String {
    json!({"inputs": [
        {"name": "X", "shape": [1, 8], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7, 8]},
        {"name": "iterations", "shape": [1], "datatype": "INT64", "data": [iterations]}
    ]})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_and_split_back_exactly() {
    let server = TestServer::start(config_with(
        vec![
            model("churn", "churn.onnx", Some((64, 5))),
            model("churn_plain", "churn.onnx", None),
            model("tiny", "tiny.onnx", Some((16, 5))),
            model("seq", "seq.onnx", Some((32, 5))),
        ],
        Limits::default(),
    ))
    .await;
    let mut rng = Lcg(7);
    const N: usize = 200;

    // churn: different row counts; batched answers must equal unbatched ones row for row.
    let churn: Vec<(usize, Vec<f32>)> = (0..N)
        .map(|i| {
            let rows = 1 + i % 5;
            (rows, (0..rows * 78).map(|_| rng.float()).collect())
        })
        .collect();
    let bodies: Vec<String> = churn
        .iter()
        .map(|(rows, data)| request("features", &[*rows, 78], data))
        .collect();
    let batched = concurrently(&server, "churn", &bodies).await;
    let plain = concurrently(&server, "churn_plain", &bodies).await;
    for (i, ((status_b, b), (status_p, p))) in batched.iter().zip(&plain).enumerate() {
        assert_eq!(*status_b, 200, "{b}");
        assert_eq!(*status_p, 200, "{p}");
        let rows = churn[i].0;
        for name in ["label", "probabilities"] {
            assert_eq!(
                output(b, name)["shape"],
                output(p, name)["shape"],
                "request {i} {name}"
            );
            assert_eq!(
                output(b, name)["data"],
                output(p, name)["data"],
                "request {i} {name}"
            );
        }
        assert_eq!(output(b, "label")["shape"], json!([rows]));
    }
    let metrics = server.metrics().await;
    let total_rows: usize = churn.iter().map(|(rows, _)| rows).sum();
    let runs = sample(
        &metrics,
        r#"ferry_batch_size_count{model="churn",variant="main"}"#,
    )
    .unwrap();
    let rows = sample(
        &metrics,
        r#"ferry_batch_size_sum{model="churn",variant="main"}"#,
    )
    .unwrap();
    assert_eq!(rows, total_rows as f64);
    assert!(
        runs < N as f64,
        "{runs} runs for {N} concurrent requests: nothing was merged"
    );
    let plain_runs = sample(
        &metrics,
        r#"ferry_batch_size_count{model="churn_plain",variant="main"}"#,
    )
    .unwrap();
    assert_eq!(plain_runs, N as f64);

    // tiny: Y = 2X, exactly.
    let tiny: Vec<(usize, Vec<f32>)> = (0..N)
        .map(|i| {
            let rows = 1 + (i * 7) % 9;
            (rows, (0..rows * 3).map(|_| rng.float() - 50.0).collect())
        })
        .collect();
    let bodies: Vec<String> = tiny
        .iter()
        .map(|(rows, data)| request("X", &[*rows, 3], data))
        .collect();
    for (i, (status, body)) in concurrently(&server, "tiny", &bodies)
        .await
        .iter()
        .enumerate()
    {
        assert_eq!(*status, 200, "{body}");
        let y = output(body, "Y");
        assert_eq!(y["shape"], json!([tiny[i].0, 3]));
        let want: Vec<f32> = tiny[i].1.iter().map(|x| x * 2.0).collect();
        assert_eq!(floats(&y["data"]), want, "request {i}");
    }

    // seq: rows of different lengths must never share a run.
    let seq: Vec<(usize, usize, Vec<f32>)> = (0..N)
        .map(|i| {
            let rows = 1 + i % 3;
            let len = 1 + (i / 3) % 4;
            (rows, len, (0..rows * len).map(|_| rng.float()).collect())
        })
        .collect();
    let bodies: Vec<String> = seq
        .iter()
        .map(|(rows, len, data)| request("X", &[*rows, *len], data))
        .collect();
    for (i, (status, body)) in concurrently(&server, "seq", &bodies)
        .await
        .iter()
        .enumerate()
    {
        assert_eq!(*status, 200, "{body}");
        let y = output(body, "Y");
        assert_eq!(y["shape"], json!([seq[i].0, seq[i].1]), "request {i}");
        let want: Vec<f32> = seq[i].2.iter().map(|x| x * 3.0).collect();
        assert_eq!(floats(&y["data"]), want, "request {i}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_that_cannot_be_merged_still_answer_correctly_with_batching_on() {
    let server = TestServer::start(config_with(
        vec![
            // Fixed first dimension: batching is refused at load.
            model("fixed", "fixed.onnx", Some((8, 5))),
            // Dynamic dims that are not rows: found out on the first merged run.
            model("flat", "flat.onnx", Some((8, 5))),
        ],
        Limits::default(),
    ))
    .await;
    let mut rng = Lcg(11);
    let fixed: Vec<Vec<f32>> = (0..40)
        .map(|_| (0..6).map(|_| rng.float()).collect())
        .collect();
    let bodies: Vec<String> = fixed.iter().map(|d| request("X", &[2, 3], d)).collect();
    for (i, (status, body)) in concurrently(&server, "fixed", &bodies)
        .await
        .iter()
        .enumerate()
    {
        assert_eq!(*status, 200, "{body}");
        let want: Vec<f32> = fixed[i].iter().map(|x| x + 1.0).collect();
        assert_eq!(floats(&output(body, "Y")["data"]), want);
    }
    let flat: Vec<(usize, Vec<f32>)> = (0..60)
        .map(|i| {
            let rows = 1 + i % 4;
            (rows, (0..rows * 3).map(|_| rng.float()).collect())
        })
        .collect();
    let bodies: Vec<String> = flat
        .iter()
        .map(|(rows, d)| request("X", &[*rows, 3], d))
        .collect();
    for (i, (status, body)) in concurrently(&server, "flat", &bodies)
        .await
        .iter()
        .enumerate()
    {
        assert_eq!(*status, 200, "{body}");
        let y = output(body, "Y");
        assert_eq!(y["shape"], json!([flat[i].0 * 3]), "request {i}");
        assert_eq!(floats(&y["data"]), flat[i].1, "request {i}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_the_queue_gets_429_and_the_server_recovers() {
    let limits = Limits {
        max_queue: 2,
        ..Limits::default()
    };
    let server =
        TestServer::start(config_with(vec![model("slow", "slow.onnx", None)], limits)).await;
    // Each takes tens of milliseconds: two wait (the first may already run, making it three),
    // the rest are refused.
    let bodies: Vec<String> = (0..24).map(|_| slow_request(40_000)).collect();
    let answers = concurrently(&server, "slow", &bodies).await;
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 429)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(ok + refused.len(), answers.len(), "{answers:?}");
    assert!(ok >= 2, "{ok} answered");
    assert!(refused.len() >= 10, "only {} refused", refused.len());
    let message = refused[0]["error"].as_str().unwrap();
    assert!(
        message.contains("model 'slow'") && message.contains("queued"),
        "{message}"
    );

    let (status, body) = server.post("/v2/models/slow/infer", slow_request(1)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        floats(&output(&body, "Y")["data"]),
        vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    );
    let metrics = server.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"ferry_requests_total{model="slow",variant="main",status="429"}"#
        ),
        Some(refused.len() as f64)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"ferry_queue_depth{model="slow",variant="main"}"#
        ),
        Some(0.0)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_times_out_with_408_and_the_server_recovers() {
    let limits = Limits {
        request_timeout_ms: 300,
        ..Limits::default()
    };
    let server =
        TestServer::start(config_with(vec![model("slow", "slow.onnx", None)], limits)).await;
    let started = Instant::now();
    let (status, body) = server
        .post("/v2/models/slow/infer", slow_request(600_000))
        .await;
    let waited = started.elapsed();
    assert_eq!(status, 408, "{body}");
    assert!(
        waited < Duration::from_millis(1000),
        "answered after {waited:?}"
    );
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("300 ms") && message.contains("'slow'"),
        "{message}"
    );

    // The abandoned run still occupies the worker for a while; then all is well again.
    let mut recovered = false;
    for _ in 0..50 {
        let (status, _) = server.post("/v2/models/slow/infer", slow_request(1)).await;
        if status == 200 {
            recovered = true;
            break;
        }
        assert_eq!(status, 408);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the server did not recover after a timeout");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_element_counts_are_refused_and_the_server_recovers() {
    let limits = Limits {
        max_body_bytes: 10_000,
        max_elements: 1_000,
        ..Limits::default()
    };
    let server = TestServer::start(config_with(
        vec![model("tiny", "tiny.onnx", Some((8, 1)))],
        limits,
    ))
    .await;
    let big: Vec<f32> = (0..60_000).map(|i| i as f32).collect();
    let (status, body) = server
        .post("/v2/models/tiny/infer", request("X", &[20_000, 3], &big))
        .await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("10000 bytes"),
        "{body}"
    );

    let many: Vec<f32> = vec![1.0; 1_050];
    let (status, body) = server
        .post("/v2/models/tiny/infer", request("X", &[350, 3], &many))
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("input 'X'") && message.contains("limit of 1000"),
        "{message}"
    );

    let (status, body) = server
        .post(
            "/v2/models/tiny/infer",
            request("X", &[1, 3], &[1.0, 2.0, 3.0]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(floats(&output(&body, "Y")["data"]), vec![2.0, 4.0, 6.0]);
    let metrics = server.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"ferry_requests_total{model="tiny",variant="main",status="413"}"#
        ),
        Some(1.0)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_finishes_requests_in_flight() {
    let limits = Limits {
        shutdown_grace_ms: 5_000,
        ..Limits::default()
    };
    let mut server =
        TestServer::start(config_with(vec![model("slow", "slow.onnx", None)], limits)).await;
    assert!(server.status.ready());
    let client = server.client.clone();
    let url = format!("{}/v2/models/slow/infer", server.base);
    let in_flight = tokio::spawn(async move { post(&client, &url, slow_request(300_000)).await });
    tokio::time::sleep(Duration::from_millis(150)).await;

    let started = Instant::now();
    server.shutdown();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!server.status.ready(), "readiness must drop at once");
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(server.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refused,
        "the listener still accepts connections after shutdown"
    );

    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "the request in flight must finish: {body}");
    tokio::time::timeout(Duration::from_secs(5), &mut server.task)
        .await
        .expect("serve returns once nothing is in flight")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_on_every_http_thread() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limits = Limits {
        shutdown_grace_ms: 20_000,
        ..Limits::default()
    };
    let mut server =
        TestServer::start(config_with(vec![model("tiny", "tiny.onnx", None)], limits)).await;
    // Connections are dealt out over the HTTP threads in turn: eight reach every one of them on
    // any machine this runs on. Each answers one request and is left open, idle: an inference
    // request (read without hyper) on half of them, another endpoint (hyper's) on the others.
    let mut connections = Vec::new();
    for i in 0..8 {
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let (request, status): (&[u8], u16) = if i % 2 == 0 {
            (b"GET /v2/health/live HTTP/1.1\r\nhost: ferry\r\n\r\n", 200)
        } else {
            (
                b"POST /v2/models/nope/infer HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}",
                404,
            )
        };
        tcp.write_all(request).await.unwrap();
        let (answered, _, body) = read_answer(&mut tcp, &mut Vec::new()).await;
        assert_eq!(answered, status, "{}", String::from_utf8_lossy(&body));
        connections.push(tcp);
    }

    let started = Instant::now();
    server.shutdown();
    tokio::time::timeout(Duration::from_secs(10), &mut server.task)
        .await
        .expect("serve returns once the idle connections are closed, not after the grace")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    for mut tcp in connections {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "an idle connection was left open: {read:?} {rest:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_no_longer_than_the_grace_period() {
    let limits = Limits {
        shutdown_grace_ms: 300,
        ..Limits::default()
    };
    let mut server =
        TestServer::start(config_with(vec![model("slow", "slow.onnx", None)], limits)).await;
    let client = server.client.clone();
    let url = format!("{}/v2/models/slow/infer", server.base);
    let _in_flight =
        tokio::spawn(async move { client.post(url).body(slow_request(3_000_000)).send().await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    server.shutdown();
    tokio::time::timeout(Duration::from_secs(3), &mut server.task)
        .await
        .expect("serve gives up after the grace period")
        .unwrap()
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1500),
        "returned after {waited:?} with a 300 ms grace"
    );
}

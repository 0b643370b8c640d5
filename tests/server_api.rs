//! The model server's HTTP API against a real server on 127.0.0.1 started in-process: protocol
//! endpoints, answers compared with ONNX Runtime's own, every datatype, A/B variants, metrics,
//! and a clear error for each kind of bad input, after which the server keeps serving.

use std::collections::HashMap;

use ferry::server::config::VariantConfig;
use serde_json::{Value, json};

mod common;
use common::{TestServer, config, fixture, model, sample};

fn churn_expected() -> Value {
    let text = std::fs::read_to_string(fixture("churn_expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Keys in the order clients send them (name, shape, datatype, data); `json!` would sort them,
/// which the server must also accept (the bad-input cases send them sorted).
fn churn_request(rows: &[Value]) -> String {
    let flat: Vec<f64> = rows
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    let data = serde_json::to_string(&flat).unwrap();
    format!(
        r#"{{"inputs":[{{"name":"features","shape":[{},78],"datatype":"FP32","data":{data}}}]}}"#,
        rows.len()
    )
}

fn tiny_request(rows: usize) -> Value {
    let data: Vec<f32> = (0..rows * 3).map(|i| i as f32 * 0.5).collect();
    json!({"inputs": [{"name": "X", "shape": [rows, 3], "datatype": "FP32", "data": data}]})
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn output<'a>(response: &'a Value, name: &str) -> &'a Value {
    response["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name} in {response}"))
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-6, "{what}[{i}]: got {g}, want {w}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metadata_follow_the_protocol() {
    let server = TestServer::start(config(vec![
        model("churn", "churn.onnx", Some((64, 2))),
        model("tiny", "tiny.onnx", None),
    ]))
    .await;

    assert_eq!(server.get("/v2/health/live").await.0, 200);
    assert_eq!(server.get("/v2/health/ready").await.0, 200);
    let (status, meta) = server.get("/v2").await;
    assert_eq!(status, 200);
    assert_eq!(
        meta,
        json!({"name": "ferry", "version": env!("CARGO_PKG_VERSION"), "extensions": []})
    );

    let expected = json!({
        "name": "churn",
        "versions": ["1"],
        "platform": "onnxruntime",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 78]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}
        ]
    });
    assert_eq!(
        server.get("/v2/models/churn").await,
        (200, expected.clone())
    );
    assert_eq!(
        server.get("/v2/models/churn/versions/1").await,
        (200, expected)
    );
    let (status, tiny) = server.get("/v2/models/tiny").await;
    assert_eq!(status, 200);
    assert_eq!(
        tiny["inputs"],
        json!([{"name": "X", "datatype": "FP32", "shape": [-1, 3]}])
    );

    let (status, ready) = server.get("/v2/models/churn/ready").await;
    assert_eq!((status, ready["ready"].clone()), (200, json!(true)));
    assert_eq!(server.get("/v2/models/churn/versions/1/ready").await.0, 200);
    assert_eq!(
        server.get("/v1/models/tiny").await,
        (200, json!({"name": "tiny", "ready": true}))
    );

    let (status, err) = server.get("/v2/models/nope").await;
    assert_eq!(status, 404);
    let message = err["error"].as_str().unwrap();
    assert!(
        message.contains("'nope'") && message.contains("churn, tiny"),
        "{message}"
    );
    let (status, err) = server.get("/v2/models/churn/versions/7/ready").await;
    assert_eq!(status, 404);
    assert!(
        err["error"].as_str().unwrap().contains("no version '7'"),
        "{err}"
    );
    let (status, err) = server.get("/v3/whatever").await;
    assert_eq!(status, 404);
    assert!(
        err["error"].as_str().unwrap().contains("/v3/whatever"),
        "{err}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_answers_match_onnxruntime() {
    let server = TestServer::start(config(vec![model("churn", "churn.onnx", Some((64, 2)))])).await;
    let expected = churn_expected();
    let rows = expected["features"].as_array().unwrap();
    let want_p: Vec<f64> = expected["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(floats)
        .collect();

    // Flat data, with an id to echo.
    let request = churn_request(rows).replacen('{', r#"{"id":"req-42","#, 1);
    let response = server
        .client
        .post(format!("{}/v2/models/churn/infer", server.base))
        .header("content-type", "application/json")
        .body(request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-ferry-variant"], "main");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model_name"], "churn");
    assert_eq!(body["model_version"], "1");
    assert_eq!(body["id"], "req-42");
    let label = output(&body, "label");
    assert_eq!(label["datatype"], "INT64");
    assert_eq!(label["shape"], json!([3]));
    assert_eq!(label["data"], expected["label"]);
    let probabilities = output(&body, "probabilities");
    assert_eq!(probabilities["datatype"], "FP32");
    assert_eq!(probabilities["shape"], json!([3, 2]));
    assert_close(&floats(&probabilities["data"]), &want_p, "probabilities");

    // Nested rows, one output asked for, through the versioned path.
    let nested = json!({"inputs": [{"name": "features", "shape": [3, 78], "datatype": "FP32",
        "data": rows}], "outputs": [{"name": "probabilities"}]});
    let (status, body) = server
        .post("/v2/models/churn/versions/1/infer", nested.to_string())
        .await;
    assert_eq!(status, 200, "{body}");
    let outputs = body["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0]["name"], "probabilities");
    assert_close(
        &floats(&outputs[0]["data"]),
        &want_p,
        "nested probabilities",
    );
    assert!(body.get("id").is_none());

    // KServe v1: one object per instance, keyed by output name.
    let (status, body) = server
        .post(
            "/v1/models/churn:predict",
            json!({"instances": rows}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let predictions = body["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 3);
    for (i, p) in predictions.iter().enumerate() {
        assert_eq!(p["label"], expected["label"][i]);
        assert_close(
            &floats(&p["probabilities"]),
            &floats(&expected["probabilities"][i]),
            "v1 probabilities",
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_datatype_round_trips() {
    let server = TestServer::start(config(vec![model("types", "types.onnx", Some((8, 1)))])).await;
    let inputs = json!([
        {"name": "bool_in", "datatype": "BOOL", "shape": [2, 2], "data": [true, false, false, true]},
        {"name": "i8_in", "datatype": "INT8", "shape": [2, 2], "data": [-64, 63, 0, 1]},
        {"name": "i16_in", "datatype": "INT16", "shape": [2, 2], "data": [-16384, 16383, 2, 3]},
        {"name": "i32_in", "datatype": "INT32", "shape": [2, 2], "data": [-1073741824, 1073741823, 4, 5]},
        {"name": "i64_in", "datatype": "INT64", "shape": [2, 2], "data": [-4611686018427387904i64, 4611686018427387903i64, 6, 7]},
        {"name": "u8_in", "datatype": "UINT8", "shape": [2, 2], "data": [0, 127, 8, 9]},
        {"name": "u16_in", "datatype": "UINT16", "shape": [2, 2], "data": [0, 32767, 10, 11]},
        {"name": "u32_in", "datatype": "UINT32", "shape": [2, 2], "data": [0, 2147483647u32, 12, 13]},
        {"name": "u64_in", "datatype": "UINT64", "shape": [2, 2], "data": [0, 9223372036854775807u64, 14, 15]},
        {"name": "f16_in", "datatype": "FP16", "shape": [2, 2], "data": [0.5, -1.25, 1000, 0.0]},
        {"name": "f32_in", "datatype": "FP32", "shape": [2, 2], "data": [[0.1, -2.5], [3.0e10, 1e-7]]},
        {"name": "f64_in", "datatype": "FP64", "shape": [2, 2], "data": [0.1, -2.5, 1e300, 5e-324]},
        {"name": "str_in", "datatype": "BYTES", "shape": [2, 2], "data": ["héllo", "", "a\"b", "\u{1F980}"]}
    ]);
    let (status, body) = server.infer("types", &json!({"inputs": inputs})).await;
    assert_eq!(status, 200, "{body}");
    let expect = |name: &str, datatype: &str, data: Value| {
        let out = output(&body, name);
        assert_eq!(out["datatype"], datatype, "{name}");
        assert_eq!(out["shape"], json!([2, 2]), "{name}");
        assert_eq!(out["data"], data, "{name}");
    };
    expect("bool_out", "BOOL", json!([false, true, true, false]));
    expect("i8_out", "INT8", json!([-128, 126, 0, 2]));
    expect("i16_out", "INT16", json!([-32768, 32766, 4, 6]));
    expect(
        "i32_out",
        "INT32",
        json!([-2147483648i64, 2147483646, 8, 10]),
    );
    expect(
        "i64_out",
        "INT64",
        json!([i64::MIN, 9223372036854775806i64, 12, 14]),
    );
    expect("u8_out", "UINT8", json!([0, 254, 16, 18]));
    expect("u16_out", "UINT16", json!([0, 65534, 20, 22]));
    expect("u32_out", "UINT32", json!([0, 4294967294u32, 24, 26]));
    expect(
        "u64_out",
        "UINT64",
        json!([0, 18446744073709551614u64, 28, 30]),
    );
    expect("f16_out", "FP16", json!([1.0, -2.5, 2000.0, 0.0]));
    expect("f32_out", "FP32", json!([0.2, -5.0, 6.0e10, 2e-7]));
    expect("f64_out", "FP64", json!([0.2, -5.0, 2e300, 1e-323]));
    expect(
        "str_out",
        "BYTES",
        json!(["héllo", "", "a\"b", "\u{1F980}"]),
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_the_server_keeps_serving() {
    let server = TestServer::start(config(vec![
        model("churn", "churn.onnx", Some((64, 2))),
        model("two", "two.onnx", None),
    ]))
    .await;
    let good = churn_request(&churn_expected()["features"].as_array().unwrap()[..1]);
    let features = |shape: Value, datatype: &str, data: Value| {
        json!({"inputs": [{"name": "features", "shape": shape, "datatype": datatype, "data": data}]})
            .to_string()
    };
    let cases: Vec<(&str, &str, String, u16, Vec<&str>)> = vec![
        ("malformed JSON", "churn", r#"{"inputs": [{"name": "features", "#.into(), 400,
            vec!["malformed JSON"]),
        ("not an object", "churn", "[1, 2]".into(), 400, vec!["inference request"]),
        ("unknown model", "nope", good.to_string(), 404, vec!["unknown model 'nope'", "churn, two"]),
        ("wrong tensor name", "churn",
            json!({"inputs": [{"name": "feats", "shape": [1, 78], "datatype": "FP32", "data": vec![0.0; 78]}]}).to_string(),
            400, vec!["unknown input 'feats'", "features"]),
        ("wrong datatype", "churn", features(json!([1, 78]), "FP64", json!(vec![0.0; 78])), 400,
            vec!["input 'features'", "FP64", "FP32"]),
        ("unknown datatype", "churn", features(json!([1, 78]), "FLOAT32", json!(vec![0.0; 78])), 400,
            vec!["input 'features'", "unknown datatype \"FLOAT32\""]),
        ("wrong shape", "churn", features(json!([1, 77]), "FP32", json!(vec![0.0; 77])), 400,
            vec!["input 'features'", "[1, 77]", "dimension 1 must be 78"]),
        ("wrong rank", "churn", features(json!([78]), "FP32", json!(vec![0.0; 78])), 400,
            vec!["input 'features'", "1 dimensions"]),
        ("data length", "churn", features(json!([2, 78]), "FP32", json!(vec![0.0; 100])), 400,
            vec!["input 'features'", "100 elements", "needs 156"]),
        ("nesting", "churn", features(json!([2, 78]), "FP32", json!([vec![0.0; 78], vec![0.0; 77]])), 400,
            vec!["input 'features'", "ragged"]),
        ("element type", "churn", features(json!([1, 2]), "FP32", json!([1.0, "x"])), 400,
            vec!["input 'features'", "element 1", "\"x\"", "FP32"]),
        ("empty batch", "churn", features(json!([0, 78]), "FP32", json!([])), 400,
            vec!["input 'features'", "empty batch"]),
        ("huge shape", "churn", features(json!([1000000000, 78]), "FP32", json!([1.0])), 400,
            vec!["input 'features'", "78000000000 elements", "limit"]),
        ("negative shape", "churn", features(json!([-1, 78]), "FP32", json!([1.0])), 400,
            vec!["input 'features'", "negative"]),
        ("unknown output", "churn",
            good.replacen('{', r#"{"outputs":[{"name":"score"}],"#, 1), 400,
            vec!["unknown output 'score'", "label, probabilities"]),
        ("missing input", "two",
            json!({"inputs": [{"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}).to_string(),
            400, vec!["missing input 'b'"]),
        ("missing field", "churn",
            json!({"inputs": [{"name": "features", "datatype": "FP32", "data": [1]}]}).to_string(),
            400, vec!["input 'features'", "missing \"shape\""]),
        ("no inputs", "churn", "{}".into(), 400, vec!["no \"inputs\""]),
    ];
    for (what, model, body, status, needles) in cases {
        let (got, err) = server
            .post(&format!("/v2/models/{model}/infer"), body)
            .await;
        assert_eq!(got, status, "{what}: {err}");
        let message = err["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error message in {err}"));
        for needle in needles {
            assert!(
                message.contains(needle),
                "{what}: {message:?} lacks {needle:?}"
            );
        }
        let (ok, body) = server.post("/v2/models/churn/infer", good.clone()).await;
        assert_eq!(ok, 200, "after {what}: {body}");
    }

    let (status, err) = server
        .post("/v2/models/churn/versions/2/infer", good.to_string())
        .await;
    assert_eq!(status, 404, "{err}");
    assert!(err["error"].as_str().unwrap().contains("no version '2'"));
    let (status, err) = server
        .post(
            "/v1/models/two:predict",
            json!({"instances": [[1, 2]]}).to_string(),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("one input"),
        "{err}"
    );
    let (status, err) = server
        .post(
            "/v1/models/churn:predict",
            json!({"instances": [[1, 2]]}).to_string(),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("dimension 1 must be 78"),
        "{err}"
    );

    // Bad requests are counted by status too.
    let metrics = server.metrics().await;
    let bad = sample(
        &metrics,
        r#"ferry_requests_total{model="churn",variant="main",status="400"}"#,
    )
    .unwrap_or(0.0);
    assert!(bad >= 15.0, "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            r#"ferry_requests_total{model="",variant="",status="404"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_predict_returns_one_row_per_instance() {
    let server = TestServer::start(config(vec![model("tiny", "tiny.onnx", Some((16, 1)))])).await;
    let (status, body) = server
        .post(
            "/v1/models/tiny:predict",
            json!({"instances": [[1, 2, 3], [-1, 0.5, 0]]}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"predictions": [[2.0, 4.0, 6.0], [-2.0, 1.0, 0.0]]})
    );
    let (status, err) = server
        .post(
            "/v1/models/tiny:explain",
            json!({"instances": []}).to_string(),
        )
        .await;
    assert_eq!(status, 404, "{err}");
    let (status, err) = server
        .post(
            "/v1/models/tiny:predict",
            json!({"instances": []}).to_string(),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert!(err["error"].as_str().unwrap().contains("empty"), "{err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variants_split_traffic_sticky_by_key_and_are_measured() {
    let mut ab = model("tiny", "tiny.onnx", Some((32, 1)));
    ab.variants = vec![
        VariantConfig {
            name: "a".into(),
            path: fixture("tiny.onnx"),
            weight: 1,
            sha256: None,
        },
        VariantConfig {
            name: "b".into(),
            path: fixture("tiny.onnx"),
            weight: 1,
            sha256: None,
        },
    ];
    let server = TestServer::start(config(vec![ab])).await;
    let request = tiny_request(2).to_string();
    let mut served: HashMap<String, u32> = HashMap::new();
    let call = |key: Option<String>| {
        let mut builder = server
            .client
            .post(format!("{}/v2/models/tiny/infer", server.base))
            .body(request.clone());
        if let Some(key) = key {
            builder = builder.header("x-ferry-key", key);
        }
        async move {
            let response = builder.send().await.unwrap();
            assert_eq!(response.status(), 200);
            let variant = response.headers()["x-ferry-variant"]
                .to_str()
                .unwrap()
                .to_string();
            let body: Value = response.json().await.unwrap();
            assert_eq!(
                floats(&output(&body, "Y")["data"]),
                vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
            );
            variant
        }
    };

    let mut by_key = HashMap::new();
    for user in 0..40 {
        let key = format!("user-{user}");
        let first = call(Some(key.clone())).await;
        for _ in 0..3 {
            assert_eq!(call(Some(key.clone())).await, first, "{key} moved");
        }
        *served.entry(first.clone()).or_default() += 4;
        by_key.insert(key, first);
    }
    let keyed_a = by_key.values().filter(|v| *v == "a").count();
    assert!((5..=35).contains(&keyed_a), "40 keys, {keyed_a} on a");
    for _ in 0..100 {
        let variant = call(None).await;
        *served.entry(variant).or_default() += 1;
    }
    assert!(served["a"] > 100 && served["b"] > 100, "{served:?}");

    let metrics = server.metrics().await;
    for variant in ["a", "b"] {
        let series =
            format!(r#"ferry_requests_total{{model="tiny",variant="{variant}",status="200"}}"#);
        assert_eq!(
            sample(&metrics, &series),
            Some(f64::from(served[variant])),
            "{metrics}"
        );
        for series in [
            format!(r#"ferry_request_duration_seconds_count{{model="tiny",variant="{variant}"}}"#),
            format!(r#"ferry_batch_size_sum{{model="tiny",variant="{variant}"}}"#),
        ] {
            let value = sample(&metrics, &series).unwrap_or_else(|| panic!("{series}: {metrics}"));
            let expected = if series.contains("batch_size") {
                2.0
            } else {
                1.0
            };
            assert_eq!(value, expected * f64::from(served[variant]), "{series}");
        }
        for series in [
            format!(
                r#"ferry_inference_duration_seconds_count{{model="tiny",variant="{variant}"}}"#
            ),
            format!(r#"ferry_queue_depth{{model="tiny",variant="{variant}"}}"#),
            format!(r#"ferry_model_load_seconds{{model="tiny",variant="{variant}"}}"#),
        ] {
            assert!(sample(&metrics, &series).is_some(), "{series}: {metrics}");
        }
        assert_eq!(
            sample(
                &metrics,
                &format!(r#"ferry_queue_depth{{model="tiny",variant="{variant}"}}"#)
            ),
            Some(0.0)
        );
    }
    assert!(metrics.contains("# TYPE ferry_request_duration_seconds histogram"));
    assert!(metrics.contains("# TYPE ferry_requests counter"));
    assert!(metrics.trim_end().ends_with("# EOF"));
    server.stop().await;
}

#[test]
fn models_that_cannot_be_served_fail_to_load_with_the_reason() {
    let err = ferry::server::load(&config(vec![model("iris", "zipmap.onnx", None)]))
        .err()
        .expect("a ZipMap output is refused");
    let message = err.to_string();
    for needle in [
        "zipmap.onnx",
        "'probabilities'",
        "seq(map(int64,tensor(float)))",
        r#"options={id(clf): {"zipmap": False}}"#,
    ] {
        assert!(message.contains(needle), "{message} lacks {needle}");
    }

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, "this is not a model").unwrap();
    let mut broken = model("broken", "tiny.onnx", None);
    broken.variants[0].path = garbage.clone();
    let err = ferry::server::load(&config(vec![broken]))
        .err()
        .expect("garbage is refused");
    let message = err.to_string();
    assert!(
        message.contains(&garbage.display().to_string()),
        "{message}"
    );
    assert!(message.contains("model 'broken'"), "{message}");
    let runtime_says = message
        .split("failed to load in ONNX Runtime: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no ONNX Runtime message in {message}"));
    assert!(runtime_says.len() > 10, "{message}");

    let mut missing = model("missing", "tiny.onnx", None);
    missing.variants[0].path = dir.path().join("nope.onnx");
    let message = ferry::server::load(&config(vec![missing]))
        .err()
        .expect("a missing file is refused")
        .to_string();
    assert!(
        message.contains("nope.onnx") && message.contains("not found"),
        "{message}"
    );

    let mut mismatched = model("ab", "tiny.onnx", None);
    mismatched.variants.push(VariantConfig {
        name: "other".into(),
        path: fixture("two.onnx"),
        weight: 1,
        sha256: None,
    });
    let message = ferry::server::load(&config(vec![mismatched]))
        .err()
        .expect("variants must agree")
        .to_string();
    assert!(
        message.contains("'main'") && message.contains("'other'"),
        "{message}"
    );

    let mut unweighted = model("zero", "tiny.onnx", None);
    unweighted.variants[0].weight = 0;
    let message = ferry::server::load(&config(vec![unweighted]))
        .err()
        .expect("weights must not all be zero")
        .to_string();
    assert!(message.contains("weight 0"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_round_trip_and_run_binds_the_configured_port() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serving.json");
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut cfg = config(vec![model("tiny", "tiny.onnx", None)]);
    cfg.port = port;
    std::fs::write(&path, serde_json::to_string(&cfg).unwrap()).unwrap();
    let read = ferry::server::read_config(&path).unwrap();
    assert_eq!(read, cfg);
    std::fs::write(&path, "{\"models\": 3}").unwrap();
    let message = ferry::server::read_config(&path).unwrap_err().to_string();
    assert!(message.contains("serving.json"), "{message}");

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ferry::server::run(read, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v2/health/ready");
    let mut ready = false;
    for _ in 0..100 {
        if let Ok(r) = client.get(&url).send().await
            && r.status() == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ready, "run() never became ready on port {port}");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

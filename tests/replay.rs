//! `ferry replay`, run as a user runs it: a traffic log (rotated into two files, with a line cut
//! short and a line of garbage) replayed through the model that answered it, through a model
//! with other weights, and through one that takes other inputs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{ferry, fixture};
use serde_json::{Value, json};

/// Protocol buffers, as much as an ONNX model of a few nodes needs.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn int(mut self, field: u64, v: i64) -> Pb {
        self.varint(field << 3);
        self.varint(v as u64);
        self
    }

    fn bytes(mut self, field: u64, b: &[u8]) -> Pb {
        self.varint((field << 3) | 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }

    fn string(self, field: u64, s: &str) -> Pb {
        self.bytes(field, s.as_bytes())
    }

    fn msg(self, field: u64, m: Pb) -> Pb {
        self.bytes(field, &m.0)
    }
}

const FLOAT: i64 = 1;

/// `ValueInfoProto` of a float tensor `[N, 2]`.
fn float_n2(name: &str) -> Pb {
    let shape = Pb::default()
        .msg(1, Pb::default().string(2, "N"))
        .msg(1, Pb::default().int(1, 2));
    let tensor = Pb::default().int(1, FLOAT).msg(2, shape);
    Pb::default()
        .string(1, name)
        .msg(2, Pb::default().msg(1, tensor))
}

fn node(op: &str, inputs: &[&str], output: &str) -> Pb {
    let mut n = Pb::default();
    for i in inputs {
        n = n.string(1, i);
    }
    n.string(2, output).string(3, output).string(4, op)
}

/// An ONNX model (opset 17) of `nodes` over float `[N, 2]` inputs and outputs, with float
/// initializers.
fn onnx_model(
    path: &Path,
    inputs: &[&str],
    outputs: &[&str],
    nodes: Vec<Pb>,
    initializers: &[(&str, &[f32])],
) {
    let mut graph = Pb::default();
    for n in nodes {
        graph = graph.msg(1, n);
    }
    graph = graph.string(2, "replay-test");
    for (name, values) in initializers {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let tensor = Pb::default()
            .int(1, values.len() as i64)
            .int(2, FLOAT)
            .string(8, name)
            .bytes(9, &raw);
        graph = graph.msg(5, tensor);
    }
    for i in inputs {
        graph = graph.msg(11, float_n2(i));
    }
    for o in outputs {
        graph = graph.msg(12, float_n2(o));
    }
    let model = Pb::default()
        .int(1, 8)
        .string(2, "ferry-tests")
        .msg(7, graph)
        .msg(8, Pb::default().string(1, "").int(2, 17));
    std::fs::write(path, model.0).unwrap();
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// One logged request to the `two` fixture (sum = a + b, diff = a - b), its answer computed
/// here in f32 as ONNX Runtime computes it.
fn record(id: &str, a: &[[f32; 2]], b: &[[f32; 2]], latency_ms: f64, sha: &str) -> String {
    let flat = |rows: &[[f32; 2]]| rows.iter().flatten().copied().collect::<Vec<f32>>();
    let (fa, fb) = (flat(a), flat(b));
    let sum: Vec<f32> = fa.iter().zip(&fb).map(|(x, y)| x + y).collect();
    let diff: Vec<f32> = fa.iter().zip(&fb).map(|(x, y)| x - y).collect();
    let tensor = |name: &str, data: &[f32]| json!({"name": name, "datatype": "FP32", "shape": [a.len(), 2], "data": data});
    let line = json!({
        "time": format!("2026-12-04T15:36:{:02}.123Z", id.len() + 10),
        "id": id,
        "model": "two",
        "variant": "default",
        "sha256": sha,
        "latency_ms": latency_ms,
        "inputs": [tensor("a", &fa), tensor("b", &fb)],
        "outputs": [tensor("sum", &sum), tensor("diff", &diff)],
        "shadow": null,
    });
    format!("{line}\n")
}

/// Two rotated files of the `two` model's traffic: 4 records, 7 rows; a garbage line in the
/// older file and, in the newer, a last line cut short.
fn write_logs(dir: &Path) -> Vec<PathBuf> {
    let sha = sha256(&fixture("two.onnx"));
    let older = [
        record("r1", &[[1.0, 2.0]], &[[3.0, 4.0]], 1.5, &sha),
        "this is not a record\n".to_string(),
        record(
            "r2",
            &[[5.0, 1.0], [0.5, 0.0]],
            &[[0.0, 0.0], [0.0, 0.25]],
            2.5,
            &sha,
        ),
    ]
    .concat();
    let cut = record("r5", &[[9.0, 9.0]], &[[1.0, 1.0]], 1.0, &sha);
    let newer = [
        record("r3", &[[2.0, 2.0]], &[[1.0, 1.0]], 0.5, &sha),
        "\n".to_string(),
        record(
            "r4",
            &[[-1.0, -2.0], [10.0, 0.0], [0.0, 10.0]],
            &[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
            3.5,
            &sha,
        ),
        cut[..cut.len() / 2].to_string(),
    ]
    .concat();
    let paths = vec![dir.join("traffic.jsonl.1"), dir.join("traffic.jsonl")];
    std::fs::write(&paths[0], older).unwrap();
    std::fs::write(&paths[1], newer).unwrap();
    paths
}

fn replay(dir: &Path, logs: &[PathBuf], model: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<String> = vec!["replay".into()];
    args.extend(logs.iter().map(|p| p.display().to_string()));
    args.extend(["--model".into(), model.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ferry(dir, &args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            stderr(out)
        )
    })
}

fn output<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name} in {report}"))
}

#[test]
fn the_model_that_answered_agrees_with_itself() {
    let dir = tempfile::tempdir().unwrap();
    let logs = write_logs(dir.path());
    let two = fixture("two.onnx");

    let out = replay(
        dir.path(),
        &logs,
        &two,
        &["--json", "--min-agreement", "0.99"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_of(&out);
    assert_eq!(report["model"], "two");
    assert_eq!(report["records"], 4);
    assert_eq!(report["skipped_lines"], 2);
    assert_eq!(report["first_skipped"]["line"], 2);
    assert_eq!(
        report["first_skipped"]["file"],
        logs[0].display().to_string()
    );
    assert_eq!(report["failed_runs"], 0);
    assert_eq!(report["rows"], 7);
    assert_eq!(report["agreeing_rows"], 7);
    assert_eq!(report["agreement"], 1.0);
    assert_eq!(report["passed"], true);
    assert_eq!(report["candidate_sha256"], sha256(&two));
    assert_eq!(report["logged_sha256"], json!([sha256(&two)]));
    assert_eq!(report["from"], "2026-12-04T15:36:12.123Z");
    for name in ["sum", "diff"] {
        let o = output(&report, name);
        assert_eq!(o["kind"], "score");
        assert_eq!(o["agreement"], 1.0);
        assert_eq!(
            o["top1"],
            json!({"agreeing_rows": 7, "rows": 7, "rate": 1.0})
        );
        assert_eq!(o["topk"], json!({"k": 2, "overlap": 1.0}));
        assert_eq!(
            o["abs_diff"],
            json!({"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0})
        );
    }
    assert_eq!(report["latency_ms"]["logged"]["p50"], 1.5);
    assert_eq!(report["latency_ms"]["logged"]["p99"], 3.5);
    assert!(report["latency_ms"]["candidate"]["p99"].as_f64().unwrap() > 0.0);

    // For a person: the same on stderr.
    let out = replay(dir.path(), &logs, &two, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(
        text.contains("replayed 4 records of model 'two' (7 rows)"),
        "{text}"
    );
    assert!(
        text.contains("the candidate is the logged model itself"),
        "{text}"
    );
    assert!(text.contains("agreement 100% (7 of 7 rows)"), "{text}");
    assert!(
        text.contains(&format!(
            "skipped 2 lines that do not parse; the first, {}:2: ",
            logs[0].display()
        )),
        "{text}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_model_with_other_weights_disagrees_and_fails_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let logs = write_logs(dir.path());
    // sum = a + b + [0, 1]: the top-1 of a sum row moves where its first value leads by less
    // than 1 (two of the seven rows); diff is the same.
    let shifted = dir.path().join("shifted.onnx");
    onnx_model(
        &shifted,
        &["a", "b"],
        &["sum", "diff"],
        vec![
            node("Add", &["a", "b"], "ab"),
            node("Add", &["ab", "bias"], "sum"),
            node("Sub", &["a", "b"], "diff"),
        ],
        &[("bias", &[0.0, 1.0])],
    );

    let out = replay(
        dir.path(),
        &logs,
        &shifted,
        &["--json", "--min-agreement", "0.99"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = json_of(&out);
    assert_eq!(report["records"], 4);
    assert_eq!(report["rows"], 7);
    assert_eq!(report["agreeing_rows"], 5);
    assert_eq!(report["passed"], false);
    let sum = output(&report, "sum");
    assert_eq!(sum["agreeing_rows"], 5);
    assert_eq!(sum["top1"]["agreeing_rows"], 5);
    assert_eq!(sum["abs_diff"]["p50"], 1.0);
    assert_eq!(sum["abs_diff"]["max"], 1.0);
    let diff = output(&report, "diff");
    assert_eq!(diff["agreement"], 1.0);
    assert_eq!(diff["abs_diff"]["max"], 0.0);
    let text = stderr(&out);
    assert!(
        text.contains("agrees on 71.43% of rows (5 of 7), below --min-agreement 0.99"),
        "{text}"
    );

    // Without the gate it reports and succeeds.
    let out = replay(dir.path(), &logs, &shifted, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains("agreement 71.4% (5 of 7 rows)"), "{text}");
    assert!(
        !text.contains("the candidate is the logged model"),
        "{text}"
    );
}

#[test]
fn a_model_that_takes_other_inputs_is_refused_before_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let logs = write_logs(dir.path());
    let renamed = dir.path().join("renamed.onnx");
    onnx_model(
        &renamed,
        &["x", "y"],
        &["sum", "diff"],
        vec![
            node("Add", &["x", "y"], "sum"),
            node("Sub", &["x", "y"], "diff"),
        ],
        &[],
    );
    let out = replay(dir.path(), &logs, &renamed, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(
        text.contains(&format!(
            "the candidate {} does not take the logged requests of model 'two' (the first at {}:1)",
            renamed.display(),
            logs[0].display()
        )),
        "{text}"
    );
    assert!(
        text.contains("the candidate has no input 'a' (logged as FP32, rank 2)"),
        "{text}"
    );
    assert!(
        text.contains("the candidate's input 'y' is not in the logged requests"),
        "{text}"
    );
    assert!(
        text.contains("its inputs are: x (FP32 [-1, 2]), y (FP32 [-1, 2])"),
        "{text}"
    );
    assert!(!text.contains("replayed"), "{text}");
}

#[test]
fn missing_logs_models_and_records_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let two = fixture("two.onnx");
    let missing = dir.path().join("nope.jsonl");
    let out = replay(dir.path(), std::slice::from_ref(&missing), &two, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("traffic log {} does not exist", missing.display())),
        "{}",
        stderr(&out)
    );

    let garbage = dir.path().join("garbage.jsonl");
    std::fs::write(&garbage, "{\"half\": \nnot json\n").unwrap();
    let out = replay(
        dir.path(),
        std::slice::from_ref(&garbage),
        &two,
        &["--json"],
    );
    assert_eq!(out.status.code(), Some(1));
    let report = json_of(&out);
    let error = report["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!(
            "2 lines in the traffic logs, none parsed as a record; the first bad line, {}:1: ",
            garbage.display()
        )),
        "{error}"
    );

    let logs = write_logs(dir.path());
    let out = replay(dir.path(), &logs, &dir.path().join("absent.onnx"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("model not found"), "{}", stderr(&out));
    let out = replay(dir.path(), &logs, &two, &["--model-name", "churn"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out)
            .contains("the logs hold no record of model 'churn'; they hold: two (4 records)"),
        "{}",
        stderr(&out)
    );
}

/// The whole loop: the server logs what it answers, `ferry replay` runs the log through a
/// candidate and through the model itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_the_server_wrote_replays_through_a_candidate() {
    use ferry::server::config::TrafficLogConfig;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("traffic.jsonl");
    let mut config = common::config(vec![common::model("m", "scale1.onnx", None)]);
    config.log = Some(TrafficLogConfig {
        sample: 1.0,
        path: Some(log.clone()),
        max_size: 100 << 20,
        keep: 2,
        queue: None,
    });
    let server = common::TestServer::start(config).await;
    for i in 0..40 {
        let body = json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
            "data": [i as f32, 1.0, -2.0, 0.5]}]});
        assert_eq!(server.infer("m", &body).await.0, 200);
    }
    // Stopping the server closes the log: everything queued is written.
    server.stop().await;
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 40);

    let itself = replay(
        dir.path(),
        std::slice::from_ref(&log),
        &fixture("scale1.onnx"),
        &["--json"],
    );
    assert!(itself.status.success(), "{}", stderr(&itself));
    let report = json_of(&itself);
    assert_eq!(
        (report["records"].clone(), report["agreement"].clone()),
        (json!(40), json!(1.0))
    );
    assert_eq!(output(&report, "Y")["abs_diff"]["max"], 0.0);

    // Y = -X: the top class flips on every row; the gate fails.
    let negated = replay(
        dir.path(),
        &[log],
        &fixture("negated.onnx"),
        &["--json", "--min-agreement", "0.99"],
    );
    assert!(!negated.status.success());
    let report = json_of(&negated);
    assert_eq!(report["agreement"], 0.0, "{report}");
    assert_eq!(report["passed"], false);
    assert_eq!(output(&report, "Y")["abs_diff"]["max"], 78.0, "{report}");
}

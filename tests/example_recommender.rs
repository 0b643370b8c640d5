//! The recommender example (`examples/recommender`) run as its README tells a user to: the
//! walkthrough script against the real Docker engine (init offline → train → serve → ask for
//! recommendations → render for a cluster), then the served model checked user by user against
//! the data it was trained on and against numpy's own answers from training.
//!
//! Needs what `tests/docker_local.rs` needs; the render step also needs `docker-registry` (a
//! registry on 127.0.0.1) and is left out, saying so, without it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

mod common;
use common::registry::Registry;
use common::{ferry, free_port, post};

const K: usize = 10;

/// Runs `examples/NAME/walkthrough.sh ARGS` in `dir` with this build's ferry and `env`; its
/// output goes to the test log as well.
fn run_example(name: &str, dir: &Path, args: &[&str], env: &[(&str, String)]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
        .join("walkthrough.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .current_dir(dir)
        .env("FERRY", env!("CARGO_BIN_EXE_ferry"))
        .env("NO_COLOR", "1")
        .env_remove("FERRY_ENV")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// `ferry down` for a project, however the test ends.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = ferry(&self.0, &["down", "--quiet"]);
    }
}

/// What the test knows from `data/interactions.csv` alone.
struct Data {
    seen: HashMap<i64, HashSet<i64>>,
    counts: HashMap<i64, u64>,
}

impl Data {
    fn read(path: &Path) -> Data {
        let text = std::fs::read_to_string(path).unwrap();
        let mut seen: HashMap<i64, HashSet<i64>> = HashMap::new();
        for line in text.lines().skip(1) {
            let (u, i) = line.split_once(',').unwrap();
            seen.entry(u.parse().unwrap())
                .or_default()
                .insert(i.parse().unwrap());
        }
        let mut counts = HashMap::new();
        for items in seen.values() {
            for &i in items {
                *counts.entry(i).or_insert(0) += 1;
            }
        }
        Data { seen, counts }
    }

    /// The most popular items with their popularity relative to the first, ties to the lower id:
    /// the answer for a user the model does not know.
    fn popular(&self) -> Vec<(i64, f64)> {
        let mut ranked: Vec<(i64, u64)> = self.counts.iter().map(|(&i, &c)| (i, c)).collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let top = ranked[0].1 as f64;
        ranked[..K]
            .iter()
            .map(|&(i, c)| (i, c as f64 / top))
            .collect()
    }

    /// A known user's recommendations are K distinct catalogue items the user has not seen, best first.
    fn check(&self, user: i64, items: &[i64], scores: &[f64]) {
        assert_eq!(items.len(), K, "user {user}: {items:?}");
        assert_eq!(scores.len(), K, "user {user}: {scores:?}");
        let distinct: HashSet<i64> = items.iter().copied().collect();
        assert_eq!(distinct.len(), K, "user {user}: repeated items {items:?}");
        for i in items {
            assert!(self.counts.contains_key(i), "user {user}: unknown item {i}");
        }
        if let Some(seen) = self.seen.get(&user) {
            let again: Vec<&i64> = items.iter().filter(|i| seen.contains(i)).collect();
            assert!(again.is_empty(), "user {user}: already has {again:?}");
        }
        assert!(
            scores.windows(2).all(|w| w[0] >= w[1]),
            "user {user}: scores not descending {scores:?}"
        );
        assert!(
            scores.iter().all(|s| s.is_finite() && s.abs() < 1e6),
            "user {user}: a masked item made the top {K}: {scores:?}"
        );
    }
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// A v2 answer's `items` and `scores` as one (items, scores) pair per user.
fn per_user(answer: &Value) -> Vec<(Vec<i64>, Vec<f64>)> {
    let output = |name: &str| {
        let o = answer["outputs"]
            .as_array()
            .unwrap_or_else(|| panic!("no outputs: {answer}"))
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("no output {name}: {answer}"));
        assert_eq!(o["shape"][1], json!(K), "{o}");
        o.clone()
    };
    let (items, scores) = (output("items"), output("scores"));
    assert_eq!(items["datatype"], "INT64");
    assert_eq!(scores["datatype"], "FP32");
    let items = ints(&items["data"]);
    let scores = floats(&scores["data"]);
    items
        .chunks(K)
        .zip(scores.chunks(K))
        .map(|(i, s)| (i.to_vec(), s.to_vec()))
        .collect()
}

fn assert_close(user: i64, got: &[f64], want: &[f64], tolerance: f64) {
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= tolerance,
            "user {user}: scores {got:?}, expected {want:?}"
        );
    }
}

/// The same ids sent as binary tensor data, outputs asked for in binary; decoded into the JSON
/// answer's form.
async fn infer_binary(client: &reqwest::Client, url: &str, ids: &[i64]) -> Value {
    let header = json!({
        "inputs": [{"name": "user_id", "shape": [ids.len()], "datatype": "INT64",
                    "parameters": {"binary_data_size": ids.len() * 8}}],
        "parameters": {"binary_data_output": true},
    })
    .to_string();
    let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    let response = client
        .post(url)
        .header("content-type", "application/octet-stream")
        .header("inference-header-content-length", header.len().to_string())
        .body([header.as_bytes(), &bytes].concat())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let length: usize = response.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = response.bytes().await.unwrap();
    let mut answer: Value = serde_json::from_slice(&body[..length]).unwrap();
    let mut rest = &body[length..];
    for o in answer["outputs"].as_array_mut().unwrap() {
        let size = o["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
        let (data, tail) = rest.split_at(size);
        rest = tail;
        o["data"] = match o["datatype"].as_str().unwrap() {
            "INT64" => json!(
                data.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect::<Vec<_>>()
            ),
            "FP32" => json!(
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect::<Vec<_>>()
            ),
            other => panic!("unexpected datatype {other}"),
        };
    }
    assert!(rest.is_empty(), "{} bytes left over", rest.len());
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recommender_walkthrough_trains_serves_and_recommends() {
    let registry = Registry::start(false).await;
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("rec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let root = base.join("recs-demo");
    let _down = Down(root.clone());

    let mut env = vec![("PORT", free_port().to_string())];
    if let Some(r) = &registry {
        env.push(("REGISTRY", format!("{}/ml", r.host)));
    }
    let out = run_example("recommender", &base, &["recs-demo"], &env);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "the walkthrough failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for step in 1..=7 {
        assert!(
            stdout.contains(&format!("\n== {step}. ")),
            "step {step}:\n{stdout}"
        );
    }

    // Training beat recommending the most popular items, on interactions it never saw.
    let metrics: Value =
        serde_json::from_slice(&std::fs::read(root.join("reports/evaluation.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["k"], json!(K));
    assert!(metrics["recall_lift"].as_f64().unwrap() >= 1.5, "{metrics}");
    // Three runs of the pipeline: everything, nothing (cached), evaluate alone after its edit.
    let mut runs: Vec<Value> = std::fs::read_dir(root.join(".ferry/runs"))
        .unwrap()
        .map(|e| {
            serde_json::from_slice(&std::fs::read(e.unwrap().path().join("run.json")).unwrap())
                .unwrap()
        })
        .collect();
    runs.sort_by_key(|r| r["id"].as_str().unwrap().to_string());
    let ran = |r: &Value| -> Vec<String> {
        r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["status"] == "ran")
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(runs.len(), 3, "{runs:#?}");
    assert_eq!(
        ran(&runs[0]),
        ["interactions", "embeddings", "train", "evaluate"]
    );
    assert!(ran(&runs[1]).is_empty(), "{:#}", runs[1]);
    assert_eq!(ran(&runs[2]), ["evaluate"]);
    for m in ["recall_at_10", "ndcg_at_10"] {
        let model = metrics[format!("model_{m}")].as_f64().unwrap();
        let popular = metrics[format!("popularity_{m}")].as_f64().unwrap();
        assert!(
            model > 1.5 * popular && model < 1.0,
            "{m}: {model} vs {popular}"
        );
    }
    assert!(
        stdout.contains("recall@10"),
        "the walkthrough shows the metrics:\n{stdout}"
    );

    let data = Data::read(&root.join("data/interactions.csv"));
    let reference: Value =
        serde_json::from_slice(&std::fs::read(root.join("artifacts/reference.json")).unwrap())
            .unwrap();
    let reference: HashMap<i64, (Vec<i64>, Vec<f64>)> = reference["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["user_id"].as_i64().unwrap(),
                (ints(&u["items"]), floats(&u["scores"])),
            )
        })
        .collect();
    let popular = data.popular();
    let unknown = data.seen.keys().max().unwrap() + 1;
    let (ref_items, ref_scores) = &reference[&unknown];
    assert_eq!(
        ref_items,
        &popular.iter().map(|p| p.0).collect::<Vec<_>>(),
        "numpy's answer for an unknown user is the popularity ranking of the data"
    );
    assert_close(
        unknown,
        ref_scores,
        &popular.iter().map(|p| p.1).collect::<Vec<_>>(),
        1e-5,
    );

    // `ferry predict request.json` (v2 JSON) gave numpy's answers for users 1 and 2 and the
    // unknown 3001.
    let request: Value =
        serde_json::from_slice(&std::fs::read(root.join("request.json")).unwrap()).unwrap();
    let asked = ints(&request["inputs"][0]["data"]);
    assert!(asked.contains(&unknown), "{asked:?}");
    let answer: Value =
        serde_json::from_slice(&std::fs::read(root.join("recommendations.json")).unwrap()).unwrap();
    let answered = per_user(&answer);
    assert_eq!(answered.len(), asked.len());
    for (user, (items, scores)) in asked.iter().zip(&answered) {
        let (want_items, want_scores) = &reference[user];
        assert_eq!(items, want_items, "user {user}");
        assert_close(*user, scores, want_scores, 1e-5);
        data.check(*user, items, scores);
    }

    // The v1 answer for user 42, and the titles shown for it.
    let v1: Value =
        serde_json::from_slice(&std::fs::read(root.join("user-42.json")).unwrap()).unwrap();
    let top = &v1["predictions"][0];
    let (items42, scores42) = (ints(&top["items"]), floats(&top["scores"]));
    data.check(42, &items42, &scores42);
    assert!(
        stdout.contains("  1. ") && stdout.contains(&format!("#{} (", items42[0])),
        "the walkthrough names user 42's first item:\n{stdout}"
    );

    // The cluster objects name the pushed serving image by digest.
    match &registry {
        Some(r) => {
            let yaml = std::fs::read_to_string(root.join("staging.yaml")).unwrap();
            for kind in ["Deployment", "Service", "ConfigMap"] {
                assert!(yaml.contains(&format!("kind: {kind}")), "{kind}:\n{yaml}");
            }
            assert!(
                yaml.contains(&format!("image: {}/ml/recs-demo-serve@sha256:", r.host)),
                "{yaml}"
            );
            if common::have_manifest_validator() {
                common::validate_manifests(&[root.join("staging.yaml")]);
            }
        }
        None => assert!(stdout.contains("REGISTRY is not set"), "{stdout}"),
    }

    // Served again (the image is reused): every user of the data, and ids it does not know, in
    // one batch through each protocol.
    let out = ferry(
        &root,
        &[
            "serve",
            "--detach",
            "--json",
            "--port",
            &free_port().to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let endpoint: Value = serde_json::from_slice(&out.stdout).unwrap();
    let url = format!(
        "{}/v2/models/recs-demo/infer",
        endpoint["url"].as_str().unwrap()
    );
    let mut users: Vec<i64> = data.seen.keys().copied().collect();
    users.sort();
    let strangers = [0, -1, unknown, i64::MAX, i64::MIN];
    let ids: Vec<i64> = users.iter().chain(&strangers).copied().collect();
    let client = reqwest::Client::new();
    let body = json!({"inputs": [{"name": "user_id", "shape": [ids.len()], "datatype": "INT64", "data": ids}]});
    let (status, answer) = post(&client, &url, body.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    let answered = per_user(&answer);
    assert_eq!(answered.len(), ids.len());
    for (user, (items, scores)) in ids.iter().zip(&answered) {
        data.check(*user, items, scores);
        if let Some((want_items, want_scores)) = reference.get(user) {
            assert_eq!(items, want_items, "user {user}");
            assert_close(*user, scores, want_scores, 1e-5);
        }
        if strangers.contains(user) {
            assert_eq!(
                items, ref_items,
                "user {user} is new: the most popular items"
            );
        }
    }
    // Different users get different recommendations.
    let distinct: HashSet<&Vec<i64>> = answered[..users.len()].iter().map(|(i, _)| i).collect();
    assert!(
        distinct.len() > users.len() / 2,
        "{} distinct lists",
        distinct.len()
    );

    // JSON carries each FP32 score in its shortest form, binary data as its bits: the same f32.
    let as_f32 = |answer: &[(Vec<i64>, Vec<f64>)]| {
        answer
            .iter()
            .map(|(i, s)| (i.clone(), s.iter().map(|&x| x as f32).collect::<Vec<_>>()))
            .collect::<Vec<_>>()
    };
    let binary = infer_binary(&client, &url, &ids).await;
    assert_eq!(
        as_f32(&per_user(&binary)),
        as_f32(&answered),
        "binary tensor data, same answer"
    );

    let v1_url = url.replace("/v2/models/recs-demo/infer", "/v1/models/recs-demo:predict");
    let (status, v1) = post(
        &client,
        &v1_url,
        json!({"instances": [users[4], -1]}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{v1}");
    for (row, index) in [(0, 4), (1, users.len() + 1)] {
        let p = &v1["predictions"][row];
        assert_eq!(ints(&p["items"]), answered[index].0, "{v1}");
        assert_close(ids[index], &floats(&p["scores"]), &answered[index].1, 1e-6);
    }

    // Ids as floats are refused with a message naming the input, not a server error.
    let bad =
        json!({"inputs": [{"name": "user_id", "shape": [1], "datatype": "FP32", "data": [1.0]}]});
    let (status, error) = post(&client, &url, bad.to_string()).await;
    assert_eq!(status, 400, "{error}");
    let message = error["error"].as_str().unwrap();
    assert!(
        message.contains("user_id") && message.contains("INT64"),
        "{message}"
    );

    let out = ferry(&root, &["down"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(_down);
    let _ = std::fs::remove_dir_all(&base);
}

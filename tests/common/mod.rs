//! What several test files share: running the ferry binary, the Docker CLI, free ports, and an
//! in-process model server on 127.0.0.1. Each test file uses only some of it.
#![allow(dead_code)]

pub mod fake_api;
pub mod parts;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ferry::server::config::{BatchingConfig, Limits, ModelConfig, ServingConfig, VariantConfig};
use serde_json::Value;
use tokio::net::TcpListener;

/// The ferry binary under test, run in `dir`, with plain output and no inherited environment choice.
pub fn ferry_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("FERRY_ENV");
    c
}

pub fn ferry(dir: &Path, args: &[&str]) -> Output {
    ferry_cmd(dir, args).output().unwrap()
}

/// The Docker CLI's trimmed stdout.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether uv runs here; says "skipped" for the test that asks when it does not.
pub fn have_uv() -> bool {
    let ok = Command::new("uv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipped: uv is not on PATH (pip install uv)");
    }
    ok
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A model fixture: `tests/fixtures/server/NAME`, else `tests/fixtures/NAME`.
pub fn fixture(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let server = root.join("server").join(name);
    if server.exists() {
        server
    } else {
        root.join(name)
    }
}

pub fn model(name: &str, file: &str, batching: Option<(u32, u64)>) -> ModelConfig {
    ModelConfig {
        name: name.into(),
        version: "1".into(),
        variants: vec![VariantConfig {
            name: "main".into(),
            path: fixture(file),
            weight: 1,
            sha256: None,
            source: None,
            shadow: false,
            timeout_ms: None,
        }],
        batching: batching.map(|(max_batch_size, max_delay_ms)| BatchingConfig {
            max_batch_size,
            max_delay_ms,
        }),
        instances: None,
        threads: None,
    }
}

pub fn config(models: Vec<ModelConfig>) -> ServingConfig {
    config_with(models, Limits::default())
}

pub fn config_with(models: Vec<ModelConfig>, limits: Limits) -> ServingConfig {
    ServingConfig {
        host: "127.0.0.1".into(),
        port: 0,
        models,
        limits,
        variant_key_header: "x-ferry-key".into(),
        device: Default::default(),
        watch: false,
        log: None,
    }
}

/// A model server on an ephemeral port of 127.0.0.1, in this process.
pub struct TestServer {
    pub base: String,
    pub addr: std::net::SocketAddr,
    pub client: reqwest::Client,
    pub status: ferry::server::ServerStatus,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<(), ferry::server::ServerError>>,
}

impl TestServer {
    pub async fn start(config: ServingConfig) -> TestServer {
        let server = ferry::server::load(&config).expect("models load");
        let status = server.status();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(ferry::server::serve(server, listener, async {
            let _ = stopped.await;
        }));
        TestServer {
            base: format!("http://{addr}"),
            addr,
            client: reqwest::Client::new(),
            status,
            stop: Some(stop),
            task,
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        post(&self.client, &format!("{}{path}", self.base), body).await
    }

    pub async fn infer(&self, model: &str, body: &Value) -> (u16, Value) {
        self.post(&format!("/v2/models/{model}/infer"), body.to_string())
            .await
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Fires the shutdown signal without waiting.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down and waits for a clean stop.
    pub async fn stop(mut self) {
        self.shutdown();
        self.task.await.unwrap().expect("server stops cleanly");
    }
}

/// POSTs JSON and returns the status and the JSON answer (every answer, errors included, is JSON).
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, value)
}

/// The value of the first series named as `series` (`name{k="v",...}`) whose labels include
/// the ones given: further labels (a model's sha256) need not be spelled out.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    let (name, wanted) = match series.split_once('{') {
        Some((name, labels)) => (name, labels.trim_end_matches('}')),
        None => (series, ""),
    };
    let wanted: Vec<&str> = wanted.split(',').filter(|l| !l.is_empty()).collect();
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (labels, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        let have: Vec<&str> = labels.split(',').collect();
        wanted
            .iter()
            .all(|w| have.contains(w))
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// Whether any layer (or the config) of a local image holds `needle`: `docker save` writes the
/// layers uncompressed, so a byte search sees every file the image carries.
#[allow(dead_code)]
pub fn image_holds(image: &str, needle: &[u8]) -> bool {
    use std::io::Read;
    let mut child = Command::new("docker")
        .args(["save", image])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    // Keep the tail of the previous chunk, so a match across a chunk boundary is seen.
    let mut carry: Vec<u8> = Vec::new();
    let mut found = false;
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        carry.extend_from_slice(&buf[..n]);
        if carry.windows(needle.len()).any(|w| w == needle) {
            found = true;
        }
        let keep = needle.len().saturating_sub(1).min(carry.len());
        carry.drain(..carry.len() - keep);
    }
    assert!(child.wait().unwrap().success(), "docker save {image}");
    found
}

/// Whether the official-schema validator (PyPI's kubernetes-validate) is installed; says
/// "skipped" where it is not, so a skipped check is visible in the test output.
pub fn have_manifest_validator() -> bool {
    let probe = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--version"])
        .output();
    let ok = probe.is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "skipped: kubernetes-validate is not installed (pip install kubernetes-validate)"
        );
    }
    ok
}

/// Strict validation of manifest files on Kubernetes 1.28 (the oldest a cluster is likely to
/// run), 1.33 (the API ferry is built against) and the newest the validator knows.
pub fn validate_manifests(files: &[PathBuf]) {
    for version in ["1.28.0", "1.33.0", "1.37.0"] {
        let out = Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "-k", version])
            .args(files)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("ERROR"),
            "{version}:\n{text}"
        );
    }
}

/// Runs ferry with its stdout a pipe whose reader has already gone (`ferry … | head` after
/// `head` exits). The read end is closed before ferry starts: closed after the spawn, a
/// concurrent test's fork could still hold it while ferry writes.
pub fn ferry_to_closed_pipe(dir: &Path, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    ferry_cmd(dir, args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap()
}

/// The sha256 of a file, in hex.
#[allow(dead_code)]
pub fn file_sha256(path: &std::path::Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// Polls `check` until it holds, up to `limit` (then fails with `what`).
#[allow(dead_code)]
pub async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: std::time::Duration,
    mut check: impl FnMut() -> F,
) {
    let deadline = std::time::Instant::now() + limit;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// One series of the server's `/metrics` (see [`sample`]); 0 when it is not there yet.
#[allow(dead_code)]
pub async fn metric(server: &TestServer, series: &str) -> f64 {
    sample(&server.metrics().await, series).unwrap_or(0.0)
}

/// One HTTP/1.1 answer off `tcp`, whose bytes may follow others already in `buffer` (pipelined
/// answers): its status, lower-cased head and body. What follows it stays in `buffer`.
pub async fn read_answer(
    tcp: &mut tokio::net::TcpStream,
    buffer: &mut Vec<u8>,
) -> (u16, String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buffer[..end].to_vec())
                .unwrap()
                .to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .expect("a content-length")
                .parse()
                .unwrap();
            if buffer.len() >= end + 4 + length {
                let body = buffer[end + 4..end + 4 + length].to_vec();
                buffer.drain(..end + 4 + length);
                let status = head[9..12].parse().unwrap();
                return (status, head, body);
            }
        }
        let mut chunk = [0u8; 4096];
        // A server that never answers fails the test instead of hanging it.
        let n = tokio::time::timeout(std::time::Duration::from_secs(60), tcp.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no answer within 60 s: {:?}",
                    String::from_utf8_lossy(buffer)
                )
            })
            .unwrap();
        assert!(
            n > 0,
            "closed before answering: {:?}",
            String::from_utf8_lossy(buffer)
        );
        buffer.extend_from_slice(&chunk[..n]);
    }
}

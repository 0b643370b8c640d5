//! `ferry train --env ENV` and `ferry dev --env ENV` for a `target: kubernetes` environment,
//! without a cluster: the ferry binary talks to a fake API server on 127.0.0.1 that answers with
//! recorded objects (`tests/fixtures/kube/`) and keeps every request, so the tests check what
//! went over the wire. The project image is really built and pushed, to a registry on
//! 127.0.0.1 (Debian's docker-registry), so the Job must name what the registry stored.
//!
//! The fake also speaks the websocket subprotocol of `exec` and `portforward`: an exec'd
//! command runs on this machine in a directory standing for the pod's volumes (so the copy of
//! the outputs is real, and can be corrupted on the way), and a forward reaches a stand-in
//! Jupyter. The collector's commands are also run in the real project image with Docker.
//!
//! With FERRY_TEST_KUBECONFIG (and FERRY_TEST_REGISTRY, a registry prefix this machine pushes
//! to and the cluster pulls from) a training also runs on a real cluster, in a namespace of its
//! own, deleted afterwards.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::fake_api::dead_kubeconfig;
use common::free_port;
use common::registry::{self, Registry};

const NS: &str = "churn-staging";
const NAME: &str = "kube-train-demo";
const POD: &str = "kube-train-demo-train-20251112-092010-123-ab12-x7k2p";

/// Image builds share two cores with everything else: one test builds at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn ferry_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("FERRY_ENV");
    c
}

/// Runs ferry off the async threads (the fake API server answers on them meanwhile).
async fn ferry_with_kubeconfig(root: &Path, kubeconfig: &Path, args: &[&str]) -> Output {
    let mut cmd = ferry_cmd(root, args);
    cmd.env("KUBECONFIG", kubeconfig);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

// ---------------------------------------------------------------------------------------------
// A minimal fake API server: HTTP/1.1, one request per connection, and `exec` over a
// websocket (subprotocol v4.channel.k8s.io) that runs the command in a directory standing for
// the pod's filesystem
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Reply {
    Json(u16, Value),
    Text(u16, String),
    /// The request's own body: what server-side apply answers for an object it stored.
    Echo,
    /// The notebook's pod, made from the last StatefulSet applied, running and ready.
    NotebookPod,
}

struct Route {
    method: &'static str,
    /// A path, or a prefix ending in `*`.
    path: String,
    replies: VecDeque<Reply>,
}

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    content_type: Option<String>,
    body: Option<Value>,
}

impl Seen {
    fn q(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// An exec's command line.
    fn command(&self) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Default)]
struct State {
    routes: Mutex<Vec<Route>>,
    seen: Mutex<Vec<Seen>>,
    /// What `/workspace` and `/ferry-collect` are for commands exec'd in the pod.
    pod_root: Mutex<Option<PathBuf>>,
    /// Per pod by name, what `/score` and `/ferry-collect` are (a scoring Job's pods).
    pod_roots: Mutex<std::collections::HashMap<String, PathBuf>>,
    /// Flip a byte of every tar stream an exec sends back.
    corrupt_tar: AtomicBool,
    /// Where a port-forward to the pod's port reaches.
    forward_to: Mutex<Option<SocketAddr>>,
}

struct FakeApi {
    addr: SocketAddr,
    state: Arc<State>,
    dir: tempfile::TempDir,
}

impl FakeApi {
    async fn start() -> FakeApi {
        let state = Arc::new(State::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = state.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve_one(s.clone(), conn));
            }
        });
        let fake = FakeApi {
            addr,
            state,
            dir: tempfile::tempdir().unwrap(),
        };
        fake.on("GET", "/version", Reply::Json(200, fixture("version.json")));
        fake
    }

    fn on(&self, method: &'static str, path: &str, reply: Reply) {
        self.state.routes.lock().unwrap().push(Route {
            method,
            path: path.to_string(),
            replies: VecDeque::from([reply]),
        });
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    fn kubeconfig(&self) -> PathBuf {
        let path = self.dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster: {{ server: \"http://{}\" }}
users:
- name: tester
  user: {{ token: not-a-real-token }}
contexts:
- name: fake
  context: {{ cluster: fake, user: tester }}
current-context: fake
",
                self.addr
            ),
        )
        .unwrap();
        path
    }

    /// The objects a training run meets: its namespace, the Secret, the Job and one pod.
    fn for_training(&self, pod: Value, logs: &str) {
        let core = format!("/api/v1/namespaces/{NS}");
        let batch = format!("/apis/batch/v1/namespaces/{NS}/jobs");
        self.on("GET", &core, ok("namespace-churn-staging.json"));
        self.on(
            "PATCH",
            &format!("{core}/secrets/{NAME}-secrets"),
            ok("secret-train-applied.json"),
        );
        self.on(
            "POST",
            &batch,
            Reply::Json(201, fixture("job-train-created.json")),
        );
        self.on("GET", &format!("{batch}/*"), ok("job-train-created.json"));
        self.on(
            "DELETE",
            &format!("{batch}/*"),
            ok("job-train-created.json"),
        );
        self.on(
            "GET",
            &format!("{core}/pods"),
            Reply::Json(
                200,
                json!({"kind": "PodList", "apiVersion": "v1",
                       "metadata": {"resourceVersion": "7121"}, "items": [pod.clone()]}),
            ),
        );
        self.on("GET", &format!("{core}/pods/{POD}"), Reply::Json(200, pod));
        self.on(
            "GET",
            &format!("{core}/pods/{POD}/log"),
            Reply::Text(200, fixture_text(logs)),
        );
    }
}

/// Reads one request, records it, answers it and closes the connection.
async fn serve_one(state: Arc<State>, mut conn: tokio::net::TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut request = lines.next().unwrap_or_default().split(' ');
    let method = request.next().unwrap_or_default().to_string();
    let target = request.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let seen = Seen {
        method,
        path: path.to_string(),
        query: query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect(),
        content_type: header("content-type"),
        body: serde_json::from_slice(&body).ok(),
    };
    state.seen.lock().unwrap().push(seen.clone());

    if header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        let key = header("sec-websocket-key").unwrap_or_default();
        if seen.path.ends_with("/exec") {
            exec(&state, conn, &key, &seen).await;
        } else if seen.path.ends_with("/portforward") {
            let to = *state.forward_to.lock().unwrap();
            port_forward(conn, &key, to).await;
        }
        return;
    }
    let reply = {
        let mut routes = state.routes.lock().unwrap();
        // An exact path wins over a prefix; the latest among equals.
        let best = routes
            .iter_mut()
            .enumerate()
            .filter(|(_, r)| r.method == seen.method)
            .filter_map(|(i, r)| {
                let rank = match r.path.strip_suffix('*') {
                    Some(prefix) if seen.path.starts_with(prefix) => 1,
                    None if r.path == seen.path => 2,
                    _ => return None,
                };
                Some(((rank, i), r))
            })
            .max_by_key(|(k, _)| *k)
            .map(|(_, r)| r);
        best.map(|r| {
            if r.replies.len() > 1 {
                r.replies.pop_front().unwrap()
            } else {
                r.replies[0].clone()
            }
        })
    };
    let (code, content_type, body) = match reply {
        Some(Reply::Json(code, v)) => (code, "application/json", v.to_string()),
        Some(Reply::Text(code, t)) => (code, "text/plain", t),
        Some(Reply::Echo) => (
            200,
            "application/json",
            seen.body.clone().unwrap_or_default().to_string(),
        ),
        Some(Reply::NotebookPod) => match notebook_pod(&state.seen.lock().unwrap()) {
            Some(pod) => (200, "application/json", pod.to_string()),
            None => (404, "application/json", not_found().to_string()),
        },
        None => (404, "application/json", not_found().to_string()),
    };
    let response = format!(
        "HTTP/1.1 {code} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(response.as_bytes()).await;
    let _ = conn.shutdown().await;
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "the server could not find the requested resource",
           "reason": "NotFound", "details": {}, "code": 404})
}

/// The pod the StatefulSet controller would make from the last StatefulSet applied.
fn notebook_pod(seen: &[Seen]) -> Option<Value> {
    let sts = seen
        .iter()
        .rev()
        .find(|s| s.method == "PATCH" && s.path.contains("/statefulsets/"))?
        .body
        .clone()?;
    let template = &sts["spec"]["template"];
    Some(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{}-0", sts["metadata"]["name"].as_str()?),
                     "namespace": NS, "uid": "5f6e7d8c-9b0a-4c1d-8e2f-3a4b5c6d7e8f",
                     "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
        "status": {"phase": "Running",
                   "conditions": [{"type": "Ready", "status": "True"}],
                   "containerStatuses": [{"name": "notebook", "image": template["spec"]["containers"][0]["image"],
                                          "imageID": "", "ready": true, "restartCount": 0,
                                          "state": {"running": {"startedAt": "2025-05-12T09:30:00Z"}}}]}
    }))
}

/// A websocket handshake's answer, with the subprotocol Kubernetes speaks.
fn switching_protocols(key: &str) -> String {
    let accept = base64(&sha1(
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    ));
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
    )
}

/// One frame from the client (masked, as clients send them): opcode and payload.
async fn read_frame(r: &mut (impl AsyncReadExt + Unpin)) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await.ok()?;
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).await.ok()?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).await.ok()?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut mask = [0u8; 4];
    if head[1] & 0x80 != 0 {
        r.read_exact(&mut mask).await.ok()?;
    }
    let mut payload = vec![0u8; usize::try_from(len).ok()?];
    r.read_exact(&mut payload).await.ok()?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Some((head[0] & 0x0f, payload))
}

/// Answers a port-forward: the pod's port is `to`; data on channel 0 both ways, after the
/// initial frames that name the port on the data and the error channel.
async fn port_forward(mut conn: tokio::net::TcpStream, key: &str, to: Option<SocketAddr>) {
    if conn
        .write_all(switching_protocols(key).as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let Some(to) = to else { return };
    let Ok(upstream) = tokio::net::TcpStream::connect(to).await else {
        return;
    };
    let port = 8888u16.to_le_bytes();
    for channel in [0u8, 1] {
        let _ = conn
            .write_all(&frame(0x2, &[channel, port[0], port[1]]))
            .await;
    }
    let (mut client_r, client_w) = conn.into_split();
    let (mut up_r, mut up_w) = upstream.into_split();
    let client_w = Arc::new(tokio::sync::Mutex::new(client_w));
    let back = {
        let client_w = client_w.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 << 10];
            loop {
                match up_r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut payload = vec![0u8];
                        payload.extend_from_slice(&buf[..n]);
                        if client_w
                            .lock()
                            .await
                            .write_all(&frame(0x2, &payload))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        })
    };
    while let Some((opcode, payload)) = read_frame(&mut client_r).await {
        if opcode == 0x8 {
            break;
        }
        let data = opcode == 0x2 && payload.first() == Some(&0);
        if data && up_w.write_all(&payload[1..]).await.is_err() {
            break;
        }
    }
    let _ = up_w.shutdown().await;
    back.abort();
    let mut w = client_w.lock().await;
    let _ = w.write_all(&frame(0x8, &1000u16.to_be_bytes())).await;
    let _ = w.shutdown().await;
}

/// `%xx` and `+` decoded, as a query string writes them.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answers an exec: the websocket handshake, then the command run on this machine with the
/// pod's paths mapped into `pod_root`, its stdout (channel 1), stderr (2) and status (3).
async fn exec(state: &State, mut conn: tokio::net::TcpStream, key: &str, seen: &Seen) {
    if conn
        .write_all(switching_protocols(key).as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let pod = seen
        .path
        .trim_end_matches("/exec")
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let root = match state.pod_roots.lock().unwrap().get(&pod) {
        Some(r) => r.clone(),
        None => state.pod_root.lock().unwrap().clone().unwrap_or_default(),
    };
    let argv: Vec<String> = seen
        .command()
        .iter()
        .map(|a| {
            a.replace("/workspace", &root.join("workspace").to_string_lossy())
                .replace(
                    "/ferry-collect",
                    &root.join("ferry-collect").to_string_lossy(),
                )
                .replace("/score", &root.join("score").to_string_lossy())
        })
        .collect();
    let out = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .await
        .unwrap();
    let mut stdout = out.stdout;
    if argv[0] == "tar" && state.corrupt_tar.load(Ordering::SeqCst) && stdout.len() > 600 {
        // The first file's first data byte, right after its header.
        stdout[512] ^= 0x01;
    }
    for (channel, data) in [(1u8, &stdout), (2, &out.stderr)] {
        for piece in data.chunks(64 << 10) {
            let mut payload = vec![channel];
            payload.extend_from_slice(piece);
            if conn.write_all(&frame(0x2, &payload)).await.is_err() {
                return;
            }
        }
    }
    let status = match out.status.code() {
        Some(0) => json!({"metadata": {}, "status": "Success"}),
        code => json!({"metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {}", code.unwrap_or(-1)),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.unwrap_or(-1).to_string()}]}}),
    };
    let mut payload = vec![3u8];
    payload.extend_from_slice(status.to_string().as_bytes());
    let _ = conn.write_all(&frame(0x2, &payload)).await;
    let _ = conn.write_all(&frame(0x8, &1000u16.to_be_bytes())).await;
    // Wait for the client's close (or its going away) before hanging up.
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), conn.read(&mut sink)).await;
}

/// One unmasked websocket frame, as a server sends it.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n < 65536 => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// SHA-1, for the websocket handshake only (RFC 3174).
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn the_fakes_handshake_is_the_rfcs() {
    // RFC 6455, section 1.3.
    assert_eq!(
        base64(&sha1(
            b"dGhlIHNhbXBsZSBub25jZQ==258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
        )),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    assert_eq!(decode("cd+%22%241%22"), "cd \"$1\"");
}

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kube")
        .join(name)
}

fn fixture(name: &str) -> Value {
    let path = fixture_path(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture_text(name: &str) -> String {
    std::fs::read_to_string(fixture_path(name)).unwrap()
}

fn ok(name: &str) -> Reply {
    Reply::Json(200, fixture(name))
}

// ---------------------------------------------------------------------------------------------
// The project
// ---------------------------------------------------------------------------------------------

/// A small training project (its base is the churn template's, bootstrapped offline once per
/// machine) with a `staging` cluster environment pushing to `registry`.
fn project(name: &str, registry: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(
        root.join("data/customers.csv"),
        "tenure,churned\n3,1\n40,0\n",
    )
    .unwrap();
    std::fs::write(root.join(".dockerignore"), ".ferry/\nartifacts/\n.env.*\n").unwrap();
    std::fs::write(root.join(".env.staging"), "DB_PASSWORD=hunter2\n").unwrap();
    std::fs::write(
        root.join("ferry.yaml"),
        format!(
            "name: {name}
environment:
  bootstrap: bookworm
  system_packages: [libgomp1]
train:
  command: \"mkdir -p artifacts && wc -l data/customers.csv > artifacts/model.txt\"
  inputs: [data/]
  outputs: [artifacts/model.txt]
  resources: {{ memory: 256Mi }}
notebook: {{ port: 8888 }}
environments:
  dev: {{ target: docker }}
  staging:
    target: kubernetes
    namespace: {NS}
    registry: {registry}/ml
    secrets: .env.staging
"
        ),
    )
    .unwrap();
    dir
}

/// The one run record a project holds.
fn only_record(root: &Path) -> Value {
    let runs: Vec<PathBuf> = std::fs::read_dir(root.join(".ferry/runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    serde_json::from_str(&std::fs::read_to_string(runs[0].join("run.json")).unwrap()).unwrap()
}

/// The newest run record of a project.
fn newest_record(root: &Path) -> Value {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(root.join(".ferry/runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    runs.sort();
    let last = runs.last().unwrap();
    serde_json::from_str(&std::fs::read_to_string(last.join("run.json")).unwrap()).unwrap()
}

fn posted_job(seen: &[Seen]) -> Value {
    seen.iter()
        .find(|s| s.method == "POST" && s.path == format!("/apis/batch/v1/namespaces/{NS}/jobs"))
        .and_then(|s| s.body.clone())
        .expect("a Job was created")
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Starts ferry in the background, its stderr into `log`.
fn spawn_ferry(root: &Path, kubeconfig: &Path, args: &[&str], log: &Path) -> std::process::Child {
    ferry_cmd(root, args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Ctrl-C, as a terminal sends it.
fn interrupt(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for `child` to exit, up to `secs`; its exit code.
async fn exit_code(mut child: std::process::Child, secs: u64) -> Option<i32> {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if started.elapsed().as_secs() > secs {
            let _ = child.kill();
            panic!("ferry did not exit within {secs}s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Waits until `ready` holds for what the fake has seen.
async fn until_seen(fake: &FakeApi, secs: u64, log: &Path, ready: impl Fn(&[Seen]) -> bool) {
    let started = std::time::Instant::now();
    while !ready(&fake.seen()) {
        assert!(
            started.elapsed().as_secs() < secs,
            "not seen within {secs}s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The next JSON document ferry prints on stdout (pretty-printed: several lines).
async fn next_json(
    stdout: std::process::ChildStdout,
    secs: u64,
    log: &Path,
) -> (Value, std::process::ChildStdout) {
    let read = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut reader = std::io::BufReader::new(stdout);
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 {
                return (None, reader.into_inner());
            }
            text.push_str(&line);
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                return (Some(v), reader.into_inner());
            }
        }
    });
    match tokio::time::timeout(std::time::Duration::from_secs(secs), read).await {
        Ok(Ok((Some(v), stdout))) => (v, stdout),
        other => panic!(
            "no JSON from ferry ({:?}):\n{}",
            other.map(|r| r.map(|x| x.0)),
            std::fs::read_to_string(log).unwrap_or_default()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_training_that_fails_in_the_cluster_is_recorded_and_its_job_deleted() {
    let _g = SERIAL.lock().await;
    let Some(registry) = Registry::start(false).await else {
        return;
    };
    let fake = FakeApi::start().await;
    fake.for_training(
        fixture("pod-train-oomkilled.json"),
        "logs-train-oomkilled.txt",
    );
    let dir = project(NAME, &registry.host);
    let root = dir.path();

    let out = ferry_with_kubeconfig(root, &fake.kubeconfig(), &["train", "--env", "staging"]).await;
    let err = stderr(&out);
    // The training's own exit code, as a local run gives it.
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("training failed") && err.contains("OOMKilled"),
        "{err}"
    );
    // Its output was shown, without the kubelet's timestamps.
    assert!(err.contains("│ epoch 1/10 loss 0.612"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    let seen = fake.seen();
    // The cluster is asked first: nothing was built for an unreachable one.
    assert_eq!(seen[0].path, "/version", "{seen:#?}");

    // The Job runs the pushed project image, by the digest the registry stored.
    let job = posted_job(&seen);
    let pod = &job["spec"]["template"]["spec"];
    let image = pod["initContainers"][0]["image"].as_str().unwrap();
    let repository = format!("{}/ml/{NAME}", registry.host);
    let (repo, digest) = image.split_once('@').unwrap();
    assert_eq!(repo, repository);
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{image}"
    );
    assert_eq!(pod["containers"][0]["image"], image);
    // The secrets file stays out of the image the cluster pulls: no layer holds its value.
    assert!(!common::image_holds(image, b"hunter2"));
    let head = reqwest::Client::new()
        .head(format!(
            "http://{}/v2/ml/{NAME}/manifests/{digest}",
            registry.host
        ))
        .header("Accept", registry::MANIFEST_TYPES)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["docker-content-digest"], digest);

    // Not retried; the output's directory on a volume both containers mount.
    assert_eq!(job["spec"]["backoffLimit"], 0);
    assert_eq!(pod["restartPolicy"], "Never");
    let volumes = pod["volumes"].as_array().unwrap();
    assert!(
        volumes.contains(&json!({"name": "output-0", "emptyDir": {}})),
        "{volumes:?}"
    );
    for c in [&pod["initContainers"][0], &pod["containers"][0]] {
        assert!(
            c["volumeMounts"]
                .as_array()
                .unwrap()
                .contains(&json!({"name": "output-0", "mountPath": "/workspace/artifacts"})),
            "{c}"
        );
    }
    assert_eq!(
        pod["initContainers"][0]["envFrom"][0]["secretRef"]["name"],
        format!("{NAME}-secrets")
    );
    let job_name = job["metadata"]["name"].as_str().unwrap().to_string();
    assert!(
        job_name.starts_with(&format!("{NAME}-train-")),
        "{job_name}"
    );

    // The secrets went first, by server-side apply, as the Secret the Job reads.
    let secret = seen
        .iter()
        .position(|s| s.method == "PATCH" && s.path.ends_with(&format!("/secrets/{NAME}-secrets")))
        .expect("the Secret was applied");
    let create = seen.iter().position(|s| s.method == "POST").unwrap();
    assert!(secret < create);
    let s = &seen[secret];
    assert_eq!(s.q("fieldManager"), Some("ferry"));
    assert_eq!(
        s.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(
        s.body.as_ref().unwrap()["data"]["DB_PASSWORD"],
        "aHVudGVyMg=="
    );

    // The failed Job is deleted, its pods with it.
    let delete = seen
        .iter()
        .find(|s| {
            s.method == "DELETE"
                && s.path == format!("/apis/batch/v1/namespaces/{NS}/jobs/{job_name}")
        })
        .unwrap_or_else(|| panic!("no DELETE of the Job: {seen:#?}"));
    let policy = delete
        .q("propagationPolicy")
        .map(str::to_string)
        .or_else(|| {
            delete
                .body
                .as_ref()
                .and_then(|b| b["propagationPolicy"].as_str().map(str::to_string))
        });
    assert_eq!(policy.as_deref(), Some("Background"));

    // A failed run is recorded like a local one: its reason, its code, no artifact.
    let rec = only_record(root);
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["exit_code"], 3);
    assert_eq!(rec["env"], "staging");
    assert_eq!(rec["image"], image);
    assert!(
        rec["reason"].as_str().unwrap().contains("OOMKilled"),
        "{rec}"
    );
    assert_eq!(rec["outputs"], json!([]));
    assert!(
        job_name.ends_with(rec["id"].as_str().unwrap()),
        "{job_name} {rec}"
    );
    let log = std::fs::read_to_string(root.join(rec["log"].as_str().unwrap())).unwrap();
    assert_eq!(
        log,
        "loading data/customers.csv (10000 rows)\nepoch 1/10 loss 0.612\nbuilding the feature matrix (18.6 GiB)\n"
    );
    assert!(!root.join("artifacts").exists());
    assert!(
        !root
            .join(".ferry/runs")
            .join(rec["id"].as_str().unwrap())
            .join("out")
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_training_is_copied_back_checked_byte_for_byte_and_recorded() {
    let _g = SERIAL.lock().await;
    let Some(registry) = Registry::start(false).await else {
        return;
    };
    let (fake, pod_fs) = collecting().await;
    let workspace = pod_fs.path().join("workspace");
    let done = pod_fs.path().join("ferry-collect/done");
    let dir = project(NAME, &registry.host);
    let root = dir.path();
    let kubeconfig = fake.kubeconfig();
    let args = ["train", "--env", "staging", "--json"];
    let deletes = |seen: &[Seen]| seen.iter().filter(|s| s.method == "DELETE").count();

    // The command succeeded but wrote nothing: a failed run, as locally.
    let out = ferry_with_kubeconfig(root, &kubeconfig, &args).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("did not write the declared output artifacts/model.txt"),
        "{err}"
    );
    assert_eq!(deletes(&fake.seen()), 1);
    assert_eq!(newest_record(root)["status"], "failed");
    assert!(!done.exists());

    // The copy arrives with one byte changed: refused, nothing moved, the Job deleted.
    let model: Vec<u8> = (0u32..200_000)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::create_dir_all(workspace.join("artifacts")).unwrap();
    std::fs::write(workspace.join("artifacts/model.txt"), &model).unwrap();
    fake.state.corrupt_tar.store(true, Ordering::SeqCst);
    let out = ferry_with_kubeconfig(root, &kubeconfig, &args).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot collect the output artifacts/model.txt")
            && err.contains("not byte-identical"),
        "{err}"
    );
    assert!(!root.join("artifacts").exists());
    assert_eq!(deletes(&fake.seen()), 2);
    let rec = newest_record(root);
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["outputs"], json!([]));
    let run_dir = root.join(".ferry/runs").join(rec["id"].as_str().unwrap());
    assert!(!run_dir.join("out").exists() && !run_dir.join(".collect-0.tar").exists());
    assert!(
        !done.exists(),
        "the collector is not released for a failed copy"
    );

    // A faithful copy: moved into the project, recorded, the collector released, the Job
    // left to complete (and to the cluster's TTL).
    fake.state.corrupt_tar.store(false, Ordering::SeqCst);
    let before = fake.seen().len();
    let out = ferry_with_kubeconfig(root, &kubeconfig, &args).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let rec: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rec["status"], "succeeded");
    assert_eq!(rec["exit_code"], 0);
    assert_eq!(rec["env"], "staging");
    assert!(
        rec["image"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/ml/{NAME}@sha256:", registry.host)),
        "{rec}"
    );
    use sha2::Digest;
    assert_eq!(
        rec["outputs"],
        json!([{"path": "artifacts/model.txt",
                "sha256": hex::encode(sha2::Sha256::digest(&model)),
                "size": model.len()}])
    );
    assert_eq!(
        std::fs::read(root.join("artifacts/model.txt")).unwrap(),
        model
    );
    assert_eq!(newest_record(root)["id"], rec["id"]);
    assert!(done.exists(), "the collector was told it is done");
    let seen = &fake.seen()[before..];
    assert_eq!(deletes(seen), 0, "{seen:#?}");
    let execs: Vec<&Seen> = seen.iter().filter(|s| s.path.ends_with("/exec")).collect();
    assert_eq!(execs.len(), 3, "{execs:#?}");
    assert!(execs.iter().all(|e| e.q("container") == Some("collect")
        && e.path == format!("/api/v1/namespaces/{NS}/pods/{POD}/exec")));
    assert!(
        execs[0].command().join(" ").contains("sha256sum"),
        "{execs:#?}"
    );
    assert_eq!(
        execs[1].command(),
        ["tar", "-C", "/workspace", "-cf", "-", "artifacts/model.txt"]
    );
    assert_eq!(execs[2].command(), ["touch", "/ferry-collect/done"]);
    let log = std::fs::read_to_string(root.join(rec["log"].as_str().unwrap())).unwrap();
    assert_eq!(
        log,
        "loading data/customers.csv (3 rows)\nwrote artifacts/model.txt\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_cannot_pull_its_image_fails_the_run_clearly() {
    let _g = SERIAL.lock().await;
    let Some(registry) = Registry::start(false).await else {
        return;
    };
    let fake = FakeApi::start().await;
    fake.for_training(
        fixture("pod-train-imagepullbackoff.json"),
        "logs-train-oomkilled.txt",
    );
    let dir = project(NAME, &registry.host);
    let root = dir.path();

    let out = ferry_with_kubeconfig(root, &fake.kubeconfig(), &["train", "--env", "staging"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "the training pod {POD} cannot start: ImagePullBackOff"
        )),
        "{err}"
    );
    assert!(err.contains("pull access denied"), "{err}");
    assert!(err.contains("image_pull_secret"), "{err}");

    let seen = fake.seen();
    let job_name = posted_job(&seen)["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        seen.iter()
            .any(|s| s.method == "DELETE" && s.path.ends_with(&job_name)),
        "{seen:#?}"
    );
    // The pod was never followed: there is nothing to show.
    assert!(!seen.iter().any(|s| s.path.ends_with("/log")));
    let rec = only_record(root);
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["exit_code"], Value::Null);
    assert!(
        rec["reason"].as_str().unwrap().contains("ImagePullBackOff"),
        "{rec}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_training_deletes_the_job_and_records_an_interrupted_run() {
    let _g = SERIAL.lock().await;
    let Some(registry) = Registry::start(false).await else {
        return;
    };
    let fake = FakeApi::start().await;
    let mut pod = fixture("pod-train-collecting.json");
    pod["status"]["initContainerStatuses"][0]["state"] =
        json!({"running": {"startedAt": "2025-05-12T09:20:13Z"}});
    pod["status"]["containerStatuses"][0]["state"] =
        json!({"waiting": {"reason": "PodInitializing"}});
    fake.for_training(pod, "logs-train-succeeded.txt");
    let dir = project(NAME, &registry.host);
    let root = dir.path();
    let log = root.join("ferry.err");
    let child = spawn_ferry(
        root,
        &fake.kubeconfig(),
        &["train", "--env", "staging"],
        &log,
    );

    // The log stream ends while `train` still runs (as long runs see it happen): it is
    // picked up again from the last line shown.
    let logs = |seen: &[Seen]| -> Vec<Seen> {
        seen.iter()
            .filter(|s| s.path.ends_with("/log"))
            .cloned()
            .collect()
    };
    until_seen(&fake, 300, &log, |seen| logs(seen).len() >= 2).await;
    interrupt(&child);
    let code = exit_code(child, 30).await;
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");

    let seen = fake.seen();
    let first = &logs(&seen)[0];
    assert_eq!(first.q("container"), Some("train"));
    assert_eq!(first.q("follow"), Some("true"));
    assert_eq!(logs(&seen)[1].q("sinceTime"), Some("2025-05-12T09:21:39Z"));
    let job_name = posted_job(&seen)["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        seen.iter()
            .any(|s| s.method == "DELETE" && s.path.ends_with(&format!("/jobs/{job_name}"))),
        "{seen:#?}"
    );
    let rec = only_record(root);
    assert_eq!(rec["status"], "interrupted");
    assert_eq!(rec["reason"], "interrupted");
    assert_eq!(rec["outputs"], json!([]));
    // Each line once, however often the stream was opened.
    let train_log = std::fs::read_to_string(root.join(rec["log"].as_str().unwrap())).unwrap();
    assert_eq!(
        train_log,
        "loading data/customers.csv (3 rows)\nwrote artifacts/model.txt\n"
    );
}

/// A Jupyter stand-in: answers `/api/status`, keeping the Authorization headers it got.
async fn jupyter() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let auths = Arc::new(Mutex::new(Vec::new()));
    let a = auths.clone();
    let app = axum::Router::new().route(
        "/api/status",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let a = a.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                a.lock().unwrap().push(auth);
                axum::Json(json!({"started": "2025-05-12T09:30:01Z", "kernels": 0}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, auths)
}

/// The churn template's environment (its image is what `ferry init --template churn` builds),
/// with a notebook and a `staging` cluster environment.
fn notebook_project(registry: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/churn/requirements.txt"),
        root.join("requirements.txt"),
    )
    .unwrap();
    std::fs::write(root.join(".dockerignore"), ".ferry/\n.env.*\n").unwrap();
    std::fs::write(root.join(".env.staging"), "DB_PASSWORD=hunter2\n").unwrap();
    std::fs::write(root.join("explore.py"), "print('hello')\n").unwrap();
    std::fs::write(
        root.join("ferry.yaml"),
        format!(
            "name: churn-demo
environment:
  bootstrap: bookworm
  requirements: requirements.txt
  system_packages: [libgomp1]
notebook: {{ port: 8888 }}
environments:
  dev: {{ target: docker }}
  staging:
    target: kubernetes
    namespace: {NS}
    registry: {registry}/ml
    secrets: .env.staging
"
        ),
    )
    .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_notebook_is_applied_forwarded_and_stopped_keeping_its_token() {
    let _g = SERIAL.lock().await;
    let Some(registry) = Registry::start(false).await else {
        return;
    };
    let fake = FakeApi::start().await;
    let (jupyter, auths) = jupyter().await;
    *fake.state.forward_to.lock().unwrap() = Some(jupyter);
    let core = format!("/api/v1/namespaces/{NS}");
    let apps = format!("/apis/apps/v1/namespaces/{NS}");
    fake.on("GET", &core, ok("namespace-churn-staging.json"));
    for path in [
        format!("{core}/secrets/churn-demo-secrets"),
        format!("{core}/secrets/churn-demo-notebook-token"),
        format!("{core}/services/churn-demo-notebook"),
        format!("{apps}/statefulsets/churn-demo-notebook"),
    ] {
        fake.on("PATCH", &path, Reply::Echo);
    }
    fake.on(
        "GET",
        &format!("{core}/pods/churn-demo-notebook-0"),
        Reply::NotebookPod,
    );
    fake.on(
        "DELETE",
        &format!("{apps}/statefulsets/churn-demo-notebook"),
        Reply::Json(
            200,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
        ),
    );
    let dir = notebook_project(&registry.host);
    let root = dir.path();
    let log = root.join("ferry.err");
    let port = free_port();

    let start = || {
        spawn_ferry(
            root,
            &fake.kubeconfig(),
            &[
                "dev",
                "--env",
                "staging",
                "--port",
                &port.to_string(),
                "--json",
            ],
            &log,
        )
    };
    let mut child = start();
    let (ready, _stdout) = next_json(child.stdout.take().unwrap(), 900, &log).await;
    assert_eq!(ready["ready"], true, "{ready}");
    let url = ready["url"].as_str().unwrap().to_string();
    let prefix = format!("http://127.0.0.1:{port}/lab?token=");
    let token = url
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{url}"))
        .to_string();
    assert_eq!(token.len(), 48, "{url}");
    assert_eq!(ready["container"], "churn-demo-notebook-0");

    // Through the forward, Jupyter in the "pod" answers, and got the token.
    let status = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{port}/api/status"))
        .header("Authorization", format!("token {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    assert!(
        auths
            .lock()
            .unwrap()
            .iter()
            .all(|a| *a == format!("token {token}"))
    );
    assert!(
        auths.lock().unwrap().len() >= 2,
        "ferry's own check, then ours"
    );

    // What was applied: server-side, by ferry, the project image by digest, the token in the
    // Secret only.
    let seen = fake.seen();
    let patches: Vec<&Seen> = seen.iter().filter(|s| s.method == "PATCH").collect();
    assert_eq!(patches.len(), 4, "{patches:#?}");
    for p in &patches {
        assert_eq!(p.q("fieldManager"), Some("ferry"), "{p:?}");
        assert_eq!(
            p.content_type.as_deref(),
            Some("application/apply-patch+yaml")
        );
    }
    let body = |name: &str| {
        patches
            .iter()
            .find(|p| p.path.ends_with(name))
            .and_then(|p| p.body.clone())
            .unwrap()
    };
    assert_eq!(
        body("/churn-demo-notebook-token")["data"]["JUPYTER_TOKEN"],
        base64(token.as_bytes())
    );
    let sts = body("/statefulsets/churn-demo-notebook");
    assert!(!sts.to_string().contains(&token));
    let image = sts["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap();
    assert!(
        image.starts_with(&format!("{}/ml/churn-demo@sha256:", registry.host)),
        "{image}"
    );
    assert_eq!(ready["image"], image);
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["secretRef"]["name"],
        "churn-demo-secrets"
    );
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "workspace"
    );

    // Ctrl-C stops the notebook: the StatefulSet goes, its volume and the token stay.
    interrupt(&child);
    let code = exit_code(child, 60).await;
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(0), "{err}");
    let deletes: Vec<String> = fake
        .seen()
        .iter()
        .filter(|s| s.method == "DELETE")
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(
        deletes,
        [format!("{apps}/statefulsets/churn-demo-notebook")]
    );
    assert!(!err.contains("hunter2"));

    // The next run finds the token in its Secret: the same URL.
    fake.on(
        "GET",
        &format!("{core}/secrets/churn-demo-notebook-token"),
        Reply::Json(200, body("/churn-demo-notebook-token")),
    );
    let mut child = start();
    let (again, _stdout) = next_json(child.stdout.take().unwrap(), 300, &log).await;
    assert_eq!(again["url"], url.as_str());
    interrupt(&child);
    assert_eq!(exit_code(child, 60).await, Some(0));
}

#[tokio::test]
async fn an_unreachable_cluster_fails_before_anything_is_built() {
    let name = "kube-train-unreachable";
    let dir = project(name, "127.0.0.1:9");
    let root = dir.path();
    let (kubeconfig, server) = dead_kubeconfig(root);
    let started = std::time::Instant::now();
    let out = ferry_with_kubeconfig(root, &kubeconfig, &["train", "--env", "staging"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&server) && err.contains("cannot reach"),
        "{err}"
    );
    assert!(started.elapsed().as_secs() < 25, "{:?}", started.elapsed());
    let images = docker(&["images", "-q", &format!("ferry/{name}*")]);
    assert!(images.stdout.is_empty(), "{images:?}");
    assert!(!root.join(".ferry/runs").exists());

    // The notebook too.
    let port = free_port().to_string();
    let out = ferry_with_kubeconfig(
        root,
        &kubeconfig,
        &["dev", "--env", "staging", "--port", &port],
    )
    .await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot reach"), "{err}");
}

#[tokio::test]
async fn inputs_left_out_of_the_image_and_secrets_in_it_are_refused_before_the_cluster_is_asked() {
    let dir = project("kube-train-ignored", "127.0.0.1:9");
    let root = dir.path();
    std::fs::write(root.join(".dockerignore"), ".env.*\ndata/\n").unwrap();
    let (kubeconfig, _) = dead_kubeconfig(root);
    let out = ferry_with_kubeconfig(root, &kubeconfig, &["train", "--env", "staging"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("train.inputs: data is not in the project image"),
        "{err}"
    );
    assert!(
        err.contains(".dockerignore") && err.contains("!data"),
        "{err}"
    );
    assert!(!err.contains("cannot reach"), "{err}");

    // A file of the input, left out by a pattern, is named.
    std::fs::write(root.join(".dockerignore"), ".env.*\n**/*.csv\n").unwrap();
    let out = ferry_with_kubeconfig(root, &kubeconfig, &["train", "--env", "staging"]).await;
    let err = stderr(&out);
    assert!(err.contains("leaves out data/customers.csv"), "{err}");

    // Nor is an image that would carry the secrets file to the registry pushed.
    std::fs::write(root.join(".dockerignore"), "artifacts/\n").unwrap();
    for cmd in ["train", "dev"] {
        let out = ferry_with_kubeconfig(root, &kubeconfig, &[cmd, "--env", "staging"]).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("the secrets file .env.staging of environment staging would be copied into the project image"),
            "{cmd}: {err}"
        );
        assert!(
            !err.contains("cannot reach") && !err.contains("hunter2"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn the_cluster_notebook_is_not_detached_and_needs_its_port() {
    let dir = project("kube-train-detach", "127.0.0.1:9");
    let root = dir.path();
    let (kubeconfig, _) = dead_kubeconfig(root);
    let out =
        ferry_with_kubeconfig(root, &kubeconfig, &["dev", "--env", "staging", "--detach"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--detach is not supported for cluster environments (staging)"),
        "{err}"
    );

    // A local port already taken is said before the cluster is asked.
    let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = ferry_with_kubeconfig(
        root,
        &kubeconfig,
        &["dev", "--env", "staging", "--port", &port],
    )
    .await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("port {port} on 127.0.0.1 is already in use")),
        "{err}"
    );
    assert!(!err.contains("cannot reach"), "{err}");
}

/// The collector's commands, run in the real project image: the listing and the tar stream
/// agree, and the copy unpacks byte for byte (names with a space or a backslash included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collectors_commands_copy_outputs_byte_for_byte_from_the_project_image() {
    let _g = SERIAL.lock().await;
    let dir = project(NAME, "127.0.0.1:9");
    let root = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || ferry_cmd(&root, &["build", "--json"]).output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let built: Value = serde_json::from_slice(&out.stdout).unwrap();
    let image = built["project"]["tag"].as_str().unwrap().to_string();

    let output = ferry::spec::RelPath::parse("artifacts/").unwrap();
    // What a training leaves: deterministic, so two containers hold the same bytes.
    let write = "mkdir -p artifacts/sub && seq 1 20000 > artifacts/model.bin \
                 && printf 'a b' > 'artifacts/sub/with space.txt' \
                 && printf 'x' > 'artifacts/sub/back\\slash.txt' && exec \"$@\"";
    let run = |argv: Vec<String>| {
        let mut args: Vec<String> = [
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "/bin/sh",
            &image,
            "-c",
            write,
            "sh",
        ]
        .map(String::from)
        .to_vec();
        args.extend(argv);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = docker(&refs);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        out.stdout
    };
    let listing = run(ferry::cluster::train::copy::listing_command(
        "/workspace",
        &output,
    ));
    let expected =
        ferry::cluster::train::copy::parse_sha256sum(&String::from_utf8_lossy(&listing)).unwrap();
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        vec![
            "artifacts/model.bin",
            "artifacts/sub/back\\slash.txt",
            "artifacts/sub/with space.txt"
        ]
    );
    let tar = run(ferry::cluster::train::copy::copy_command(
        "/workspace",
        &output,
    ));
    let dest = tempfile::tempdir().unwrap();
    let got =
        ferry::cluster::train::copy::unpack_verified(&tar[..], &expected, &output, dest.path())
            .unwrap();
    assert_eq!(got.len(), 3);
    let seq: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert_eq!(
        std::fs::read(dest.path().join("artifacts/model.bin")).unwrap(),
        seq.as_bytes()
    );
    assert_eq!(got["artifacts/model.bin"].size, seq.len() as u64);

    // A listing of something that is not there fails (the output was not written).
    let missing = ferry::spec::RelPath::parse("reports/").unwrap();
    let out = docker(
        &[
            vec!["run", "--rm", "--network", "none", image.as_str()],
            ferry::cluster::train::copy::listing_command("/workspace", &missing)
                .iter()
                .map(String::as_str)
                .collect(),
        ]
        .concat(),
    );
    assert!(!out.status.success());
}

/// A whole training on a real cluster: built, pushed, run, its output copied back and checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_training_runs_and_is_collected_on_a_real_cluster() {
    let Some((kubeconfig, registry)) = real_cluster() else {
        return;
    };
    let _g = SERIAL.lock().await;
    let dir = project(NAME, &registry);
    let root = dir.path();
    let namespace = format!("ferry-train-test-{}", std::process::id());
    let spec = std::fs::read_to_string(root.join("ferry.yaml"))
        .unwrap()
        .replace(
            &format!("namespace: {NS}"),
            &format!("namespace: {namespace}"),
        );
    std::fs::write(root.join("ferry.yaml"), spec).unwrap();

    let out = ferry_with_kubeconfig(
        root,
        Path::new(&kubeconfig),
        &["train", "--env", "staging", "--json"],
    )
    .await;
    drop_namespace(Path::new(&kubeconfig), &namespace).await;

    assert!(out.status.success(), "{}", stderr(&out));
    let rec: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rec["status"], "succeeded");
    let model = std::fs::read(root.join("artifacts/model.txt")).unwrap();
    assert_eq!(model, b"3 data/customers.csv\n");
    use sha2::Digest;
    assert_eq!(
        rec["outputs"][0]["sha256"],
        hex::encode(sha2::Sha256::digest(&model))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_runs_its_uncached_steps_as_jobs_on_images_that_carry_their_inputs() {
    let _g = SERIAL.lock().await;
    let Some(registry) = Registry::start(false).await else {
        return;
    };
    let (fake, pod_fs) = collecting().await;
    let workspace = pod_fs.path().join("workspace");
    std::fs::create_dir_all(workspace.join("artifacts")).unwrap();
    let dir = project(NAME, &registry.host);
    let root = dir.path();
    // `prepare` makes what training reads; the project image leaves data/ out.
    let spec = std::fs::read_to_string(root.join("ferry.yaml")).unwrap();
    let spec = spec
        .replace("  inputs: [data/]\n", "  inputs: [data/prepared/]\n")
        .replace(
            "notebook: {",
            "pipeline:\n  prepare:\n    command: \"mkdir -p data/prepared && cp data/customers.csv data/prepared/c.csv\"\n    inputs: [data/customers.csv]\n    outputs: [data/prepared/]\nnotebook: {",
        );
    std::fs::write(root.join("ferry.yaml"), &spec).unwrap();
    std::fs::write(
        root.join(".dockerignore"),
        ".ferry/\nartifacts/\ndata/\n.env.*\n",
    )
    .unwrap();
    let kubeconfig = fake.kubeconfig();

    // On this machine first: prepare runs in Docker and is cached.
    let local = ferry_with_kubeconfig(root, &kubeconfig, &["run", "prepare", "--json"]).await;
    assert!(local.status.success(), "{}", stderr(&local));

    // In the cluster: prepare is cached (the same key), train runs as a Job whose image holds
    // prepare's output; what the pod wrote comes back checked.
    let model: Vec<u8> = (0u32..50_000).map(|i| (i % 251) as u8).collect();
    std::fs::write(workspace.join("artifacts/model.txt"), &model).unwrap();
    let out =
        ferry_with_kubeconfig(root, &kubeconfig, &["run", "--env", "staging", "--json"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let rec: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rec["status"], "succeeded", "{rec:#}");
    assert_eq!(rec["env"], "staging");
    let steps = rec["steps"].as_array().unwrap();
    assert_eq!(steps[0]["name"], "prepare");
    assert_eq!(steps[0]["status"], "cached");
    assert_eq!(steps[1]["name"], "train");
    assert_eq!(steps[1]["status"], "ran", "{rec:#}");
    let image = steps[1]["image"].as_str().unwrap();
    assert!(
        image.starts_with(&format!("{}/ml/{NAME}-steps@sha256:", registry.host)),
        "{image}"
    );
    assert_eq!(
        std::fs::read(root.join("artifacts/model.txt")).unwrap(),
        model
    );
    use sha2::Digest;
    assert_eq!(
        steps[1]["outputs"][0]["sha256"],
        hex::encode(sha2::Sha256::digest(&model))
    );
    // The Job ran that image, and the image holds the input as this machine has it.
    let jobs: Vec<Value> = fake
        .seen()
        .iter()
        .filter(|s| s.method == "POST" && s.path.ends_with("/jobs"))
        .filter_map(|s| s.body.clone())
        .collect();
    assert_eq!(jobs.len(), 1);
    let job_image = jobs[0]["spec"]["template"]["spec"]["initContainers"][0]["image"]
        .as_str()
        .or_else(|| jobs[0]["spec"]["template"]["spec"]["containers"][0]["image"].as_str())
        .unwrap();
    assert_eq!(job_image, image);
    // Pulled back from the registry (ferry keeps no copy here), it holds prepare's output.
    assert!(docker(&["pull", "-q", image]).status.success());
    let inside = docker(&[
        "run",
        "--rm",
        "--entrypoint",
        "cat",
        image,
        "/workspace/data/prepared/c.csv",
    ]);
    assert_eq!(
        inside.stdout,
        std::fs::read(root.join("data/prepared/c.csv")).unwrap()
    );
    assert_eq!(
        String::from_utf8_lossy(&docker(&["images", "-q", &format!("ferry/{NAME}-step")]).stdout)
            .trim(),
        "",
        "the step image is not kept here"
    );

    // Again: every step cached, no Job.
    let again =
        ferry_with_kubeconfig(root, &kubeconfig, &["run", "--env", "staging", "--json"]).await;
    assert!(again.status.success(), "{}", stderr(&again));
    let rec: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert!(
        rec["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "cached"),
        "{rec:#}"
    );
    let posts = fake
        .seen()
        .iter()
        .filter(|s| s.method == "POST" && s.path.ends_with("/jobs"))
        .count();
    assert_eq!(posts, 1);
    let _ = docker(&["rmi", image]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_fails_in_the_cluster_skips_what_needs_it_and_its_job_is_deleted() {
    let _g = SERIAL.lock().await;
    let Some(registry) = Registry::start(false).await else {
        return;
    };
    let fake = FakeApi::start().await;
    fake.for_training(
        fixture("pod-train-oomkilled.json"),
        "logs-train-oomkilled.txt",
    );
    let dir = project(NAME, &registry.host);
    let root = dir.path();
    let spec = std::fs::read_to_string(root.join("ferry.yaml"))
        .unwrap()
        .replace(
            "notebook: {",
            "pipeline:\n  report:\n    command: \"wc -c artifacts/model.txt > reports/size.txt\"\n    inputs: [artifacts/model.txt]\n    outputs: [reports/size.txt]\nnotebook: {",
        );
    std::fs::write(root.join("ferry.yaml"), spec).unwrap();

    let out = ferry_with_kubeconfig(
        root,
        &fake.kubeconfig(),
        &["run", "--env", "staging", "--json"],
    )
    .await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("train: ") && err.contains("OOMKilled"),
        "{err}"
    );
    let rec: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rec["status"], "failed");
    let steps = rec["steps"].as_array().unwrap();
    assert_eq!(steps[0]["name"], "train");
    assert_eq!(steps[0]["status"], "failed");
    assert_eq!(steps[1]["name"], "report");
    assert_eq!(steps[1]["status"], "skipped");
    let seen = fake.seen();
    assert_eq!(
        seen.iter()
            .filter(|s| s.method == "DELETE" && s.path.contains("/jobs/"))
            .count(),
        1,
        "the failed step's Job is deleted"
    );
    assert!(!root.join("artifacts").exists());
    assert!(
        std::fs::read_dir(root.join(".ferry/cache/steps"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "no cache entry for a failed step"
    );
}

/// The pipeline on a real cluster: two steps, the second reading the first's output, both as
/// Jobs; their outputs come back byte for byte, and a second run runs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_runs_on_a_real_cluster() {
    let Some((kubeconfig, registry)) = real_cluster() else {
        return;
    };
    let _g = SERIAL.lock().await;
    let dir = project(NAME, &registry);
    let root = dir.path();
    let namespace = format!("ferry-pipeline-test-{}", std::process::id());
    let spec = std::fs::read_to_string(root.join("ferry.yaml"))
        .unwrap()
        .replace(
            &format!("namespace: {NS}"),
            &format!("namespace: {namespace}"),
        )
        .replace(
            "notebook: {",
            "pipeline:\n  report:\n    command: \"mkdir -p reports && wc -c artifacts/model.txt > reports/size.txt\"\n    inputs: [artifacts/model.txt]\n    outputs: [reports/size.txt]\nnotebook: {",
        );
    std::fs::write(root.join("ferry.yaml"), spec).unwrap();
    let kubeconfig = Path::new(&kubeconfig);
    let first =
        ferry_with_kubeconfig(root, kubeconfig, &["run", "--env", "staging", "--json"]).await;
    let second =
        ferry_with_kubeconfig(root, kubeconfig, &["run", "--env", "staging", "--json"]).await;
    drop_namespace(kubeconfig, &namespace).await;

    assert!(first.status.success(), "{}", stderr(&first));
    let rec: Value = serde_json::from_slice(&first.stdout).unwrap();
    let ran: Vec<&str> = rec["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "ran")
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(ran, ["train", "report"], "{rec:#}");
    assert_eq!(
        std::fs::read(root.join("artifacts/model.txt")).unwrap(),
        b"3 data/customers.csv\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("reports/size.txt")).unwrap(),
        "21 artifacts/model.txt\n"
    );
    assert!(second.status.success(), "{}", stderr(&second));
    let rec: Value = serde_json::from_slice(&second.stdout).unwrap();
    assert!(
        rec["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "cached"),
        "{rec:#}"
    );
}

/// The real cluster and registry the tests may use (`FERRY_TEST_KUBECONFIG`,
/// `FERRY_TEST_REGISTRY`); `None`, saying "skipped", without them.
fn real_cluster() -> Option<(std::ffi::OsString, String)> {
    let Some(kubeconfig) = std::env::var_os("FERRY_TEST_KUBECONFIG") else {
        eprintln!("skipped: FERRY_TEST_KUBECONFIG is not set");
        return None;
    };
    let Ok(registry) = std::env::var("FERRY_TEST_REGISTRY") else {
        eprintln!(
            "skipped: FERRY_TEST_REGISTRY is not set (a registry this machine pushes to and the cluster pulls from)"
        );
        return None;
    };
    Some((kubeconfig, registry))
}

/// Removes a namespace a real-cluster test made (in the background: the test does not wait).
async fn drop_namespace(kubeconfig: &Path, namespace: &str) {
    let client = ferry::kube::client::connect_with(kubeconfig, None)
        .await
        .unwrap();
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
    let _ = namespaces
        .delete(namespace, &kube::api::DeleteParams::background())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_a_pipeline_step_deletes_its_job_and_records_the_run_interrupted() {
    let _g = SERIAL.lock().await;
    let Some(registry) = Registry::start(false).await else {
        return;
    };
    let fake = FakeApi::start().await;
    let mut pod = fixture("pod-train-collecting.json");
    pod["status"]["initContainerStatuses"][0]["state"] =
        json!({"running": {"startedAt": "2025-05-12T09:20:13Z"}});
    pod["status"]["containerStatuses"][0]["state"] =
        json!({"waiting": {"reason": "PodInitializing"}});
    fake.for_training(pod, "logs-train-succeeded.txt");
    let dir = project(NAME, &registry.host);
    let root = dir.path();
    let spec = std::fs::read_to_string(root.join("ferry.yaml"))
        .unwrap()
        .replace(
            "notebook: {",
            "pipeline:\n  report:\n    command: \"wc -c artifacts/model.txt > reports/size.txt\"\n    inputs: [artifacts/model.txt]\n    outputs: [reports/size.txt]\nnotebook: {",
        );
    std::fs::write(root.join("ferry.yaml"), spec).unwrap();
    let log = root.join("ferry.err");
    let child = spawn_ferry(root, &fake.kubeconfig(), &["run", "--env", "staging"], &log);
    // The step's output is being followed: its Job runs.
    until_seen(&fake, 300, &log, |seen| {
        seen.iter().any(|s| s.path.ends_with("/log"))
    })
    .await;
    interrupt(&child);
    let code = exit_code(child, 30).await;
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(130), "{err}");

    let seen = fake.seen();
    let job_name = posted_job(&seen)["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        seen.iter()
            .any(|s| s.method == "DELETE" && s.path.ends_with(&format!("/jobs/{job_name}"))),
        "{seen:#?}"
    );
    let rec = only_record(root);
    assert_eq!(rec["status"], "interrupted");
    let steps = rec["steps"].as_array().unwrap();
    assert_eq!(steps[0]["name"], "train");
    assert_eq!(steps[0]["status"], "interrupted");
    assert_eq!(steps[1]["status"], "skipped");
    assert!(!root.join("artifacts").exists());
    assert!(!root.join(".ferry/cache/steps").exists());
}

/// A fake cluster whose training pod succeeds and waits to be collected, its Jobs complete, and
/// the directory standing for the pod's volumes (`workspace/`, `ferry-collect/`), where the
/// commands exec'd "in the pod" run.
async fn collecting() -> (FakeApi, tempfile::TempDir) {
    let fake = FakeApi::start().await;
    fake.for_training(
        fixture("pod-train-collecting.json"),
        "logs-train-succeeded.txt",
    );
    fake.on(
        "GET",
        &format!("/apis/batch/v1/namespaces/{NS}/jobs/*"),
        ok("job-train-complete.json"),
    );
    let pod_fs = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(pod_fs.path().join("workspace")).unwrap();
    std::fs::create_dir_all(pod_fs.path().join("ferry-collect")).unwrap();
    *fake.state.pod_root.lock().unwrap() = Some(pod_fs.path().to_path_buf());
    (fake, pod_fs)
}

// ---------------------------------------------------------------------------------------------
// Scoring as an Indexed Job
// ---------------------------------------------------------------------------------------------

/// A project serving the `meta` model (Y = 2X over the columns height, width, depth), with
/// three tables to score and one with a bad cell, and the `staging` cluster environment.
fn scoring_project(registry: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("data")).unwrap();
    let header = "id,height,width,depth\n";
    let table = |rows: std::ops::Range<u32>| {
        let mut t = header.to_string();
        for i in rows {
            t.push_str(&format!("c{i},{i},{}.5,{}\n", i * 3, i % 7));
        }
        t
    };
    std::fs::write(root.join("data/a.csv"), table(0..40)).unwrap();
    std::fs::write(root.join("data/b.csv"), table(40..70)).unwrap();
    std::fs::write(root.join("data/c.csv"), table(70..120)).unwrap();
    std::fs::write(
        root.join("data/bad.csv"),
        format!("{header}c1,1,2,3\nc2,tall,5,6\n"),
    )
    .unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/server/meta.onnx"),
        root.join("model.onnx"),
    )
    .unwrap();
    std::fs::write(root.join(".dockerignore"), ".ferry/\n*.out.csv\n.env.*\n").unwrap();
    std::fs::write(root.join(".env.staging"), "DB_PASSWORD=hunter2\n").unwrap();
    std::fs::write(
        root.join("ferry.yaml"),
        format!(
            "name: {NAME}
environment:
  bootstrap: bookworm
  system_packages: [libgomp1]
serve:
  model: model.onnx
environments:
  dev: {{ target: docker }}
  staging:
    target: kubernetes
    namespace: {NS}
    registry: {registry}/ml
    secrets: .env.staging
"
        ),
    )
    .unwrap();
    dir
}

/// A scoring pod of shard `index`: its init containers ended with these codes, the collector
/// running when both succeeded.
fn shard_pod(name: &str, index: usize, score_exit: i32) -> Value {
    let ended = |container: &str, code: i32| {
        json!({"name": container, "image": "x", "imageID": "", "ready": false, "restartCount": 0,
               "state": {"terminated": {"exitCode": code,
                          "reason": if code == 0 { "Completed" } else { "Error" }}}})
    };
    let ok = score_exit == 0;
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS,
                     "creationTimestamp": "2025-11-12T09:20:10Z",
                     "labels": {"app.kubernetes.io/instance": NAME},
                     "annotations": {"batch.kubernetes.io/job-completion-index": index.to_string()}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "collect", "image": "x"}]},
        "status": {
            "phase": if ok { "Running" } else { "Failed" },
            "initContainerStatuses": [ended("inputs", 0), ended("score", score_exit)],
            "containerStatuses": [{"name": "collect", "image": "x", "imageID": "",
                "ready": ok, "restartCount": 0,
                "state": if ok { json!({"running": {"startedAt": "2025-11-12T09:21:00Z"}}) }
                         else { json!({"waiting": {"reason": "PodInitializing"}}) }}]
        }
    })
}

/// Does what shard `index`'s pod does, on this machine under `pod_root`: the Job's `inputs`
/// script copies the shard's inputs (the project standing for the image's workdir), then
/// `ferry score-shard` scores them with the plan the Job carries (its model path pointed at the
/// project's copy). Returns the scorer's exit code and stderr.
fn run_shard(job: &Value, index: usize, project: &Path, pod_root: &Path) -> (i32, String) {
    let score_dir = pod_root.join("score");
    std::fs::create_dir_all(&score_dir).unwrap();
    std::fs::create_dir_all(pod_root.join("ferry-collect")).unwrap();
    let pod = &job["spec"]["template"]["spec"];
    let inits = pod["initContainers"].as_array().unwrap();
    assert_eq!(inits[0]["name"], "inputs");
    assert_eq!(inits[1]["name"], "score");
    let script = inits[0]["command"][2]
        .as_str()
        .unwrap()
        .replace("/score", &score_dir.to_string_lossy());
    let copied = Command::new("/bin/sh")
        .args(["-c", &script])
        .current_dir(project)
        .env("JOB_COMPLETION_INDEX", index.to_string())
        .output()
        .unwrap();
    assert!(copied.status.success(), "{}", stderr(&copied));
    let env = inits[1]["env"].as_array().unwrap();
    let plan_text = env
        .iter()
        .find(|e| e["name"] == "FERRY_SCORE_PLAN")
        .unwrap()["value"]
        .as_str()
        .unwrap();
    let mut plan: Value = serde_json::from_str(plan_text).unwrap();
    assert!(
        plan["model"].as_str().unwrap().starts_with("/models/"),
        "{plan}"
    );
    plan["model"] = json!(project.join("model.onnx"));
    let scored = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["score-shard", "--dir", &score_dir.to_string_lossy()])
        .env("JOB_COMPLETION_INDEX", index.to_string())
        .env("FERRY_SCORE_PLAN", plan.to_string())
        .output()
        .unwrap();
    (scored.status.code().unwrap_or(-1), stderr(&scored))
}

/// The fake for a scoring run: the namespace, the Secret, Jobs created (echoed), read (no
/// status yet) and deleted, and no pods so far.
async fn scoring_fake() -> FakeApi {
    let core = format!("/api/v1/namespaces/{NS}");
    let batch = format!("/apis/batch/v1/namespaces/{NS}/jobs");
    let fake = FakeApi::start().await;
    fake.on("GET", &core, ok("namespace-churn-staging.json"));
    fake.on(
        "PATCH",
        &format!("{core}/secrets/{NAME}-secrets"),
        ok("secret-train-applied.json"),
    );
    fake.on("POST", &batch, Reply::Echo);
    fake.on("DELETE", &format!("{batch}/*"), Reply::Json(200, json!({})));
    fake.on(
        "GET",
        &format!("{batch}/*"),
        Reply::Json(
            200,
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {}, "status": {}}),
        ),
    );
    fake.on(
        "GET",
        &format!("{core}/pods"),
        Reply::Json(200, pod_list(vec![])),
    );
    fake
}

fn pod_list(pods: Vec<Value>) -> Value {
    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": pods})
}

/// `ferry score` of the three good tables here, into `here.out.csv`: what a cluster's joined
/// output must equal, byte for byte.
fn score_here(root: &Path) {
    let here = ferry_cmd(
        root,
        &[
            "score",
            "data/a.csv",
            "data/b.csv",
            "data/c.csv",
            "-o",
            "here.out.csv",
            "--keep",
            "id",
        ],
    )
    .output()
    .unwrap();
    assert!(here.status.success(), "{}", stderr(&here));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoring_in_a_cluster_runs_shards_as_an_indexed_job_and_joins_them_in_order() {
    let _g = SERIAL.lock().await;
    let Some(registry) = Registry::start(false).await else {
        return;
    };
    let dir = scoring_project(&registry.host);
    let root = dir.path();
    let core = format!("/api/v1/namespaces/{NS}");
    let batch = format!("/apis/batch/v1/namespaces/{NS}/jobs");
    let fake = scoring_fake().await;
    let pods_fs = tempfile::tempdir().unwrap();
    let kubeconfig = fake.kubeconfig();
    let posts = |seen: &[Seen]| {
        seen.iter()
            .filter(|s| s.method == "POST" && s.path == batch)
            .count()
    };

    score_here(root);

    // A shard whose input has a bad cell fails for good: the run fails naming the shard, its
    // input and the pod's own error; the Job is deleted; nothing is written.
    let log = root.join("ferry-1.log");
    let child = spawn_ferry(
        root,
        &kubeconfig,
        &[
            "score",
            "data/a.csv",
            "data/bad.csv",
            "-o",
            "scores.out.csv",
            "--keep",
            "id",
            "--env",
            "staging",
            "--shards",
            "2",
        ],
        &log,
    );
    until_seen(&fake, 600, &log, |s| posts(s) == 1).await;
    let job = posted_job(&fake.seen());
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    assert_eq!(job["spec"]["completions"], 2);
    assert_eq!(job["spec"]["backoffLimitPerIndex"], 2);
    let image = job["spec"]["template"]["spec"]["initContainers"][1]["image"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        image.starts_with(&format!("{}/ml/{NAME}-serve@sha256:", registry.host)),
        "{image}"
    );
    let mut names = Vec::new();
    let mut pods = Vec::new();
    for k in 0..2 {
        let name = format!("{NAME}-score-{k}-x7k2p");
        let pod_root = pods_fs.path().join(&name);
        let (code, err) = run_shard(&job, k, root, &pod_root);
        if k == 1 {
            assert_eq!(code, 1, "{err}");
            assert!(
                err.contains("data/bad.csv, row 2, column 'height'"),
                "{err}"
            );
            fake.on(
                "GET",
                &format!("{core}/pods/{name}/log"),
                Reply::Text(200, err),
            );
        } else {
            assert_eq!(code, 0, "{err}");
        }
        fake.state
            .pod_roots
            .lock()
            .unwrap()
            .insert(name.clone(), pod_root);
        pods.push(shard_pod(&name, k, code));
        names.push(name);
    }
    fake.on(
        "GET",
        &format!("{batch}/*"),
        Reply::Json(
            200,
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {},
            "status": {"failed": 3, "failedIndexes": "1", "conditions": [
                {"type": "Failed", "status": "True", "reason": "FailedIndexes",
                 "message": "Job has failed indexes"}]}}),
        ),
    );
    fake.on(
        "GET",
        &format!("{core}/pods"),
        Reply::Json(200, pod_list(pods)),
    );
    let code = exit_code(child, 120).await;
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("shard 1 of 2 (data/bad.csv) failed")
            && err.contains("row 2, column 'height': 'tall'"),
        "{err}"
    );
    assert!(!root.join("scores.out.csv").exists());
    let leftovers: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("scores.out.csv"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(
        fake.seen()
            .iter()
            .any(|s| s.method == "DELETE"
                && s.path.ends_with(job["metadata"]["name"].as_str().unwrap())),
        "the Job was deleted"
    );
    let rec = newest_record(root);
    assert_eq!(rec["status"], "failed");
    assert!(
        rec["reason"].as_str().unwrap().contains("shard 1 of 2"),
        "{rec}"
    );

    // Three files in two shards: each shard's part copied home checked, the collectors
    // released, the parts joined in input order into exactly what scoring here writes.
    fake.on(
        "GET",
        &format!("{core}/pods"),
        Reply::Json(200, pod_list(vec![])),
    );
    fake.on(
        "GET",
        &format!("{batch}/*"),
        Reply::Json(
            200,
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {},
                               "status": {"succeeded": 2}}),
        ),
    );
    // The middle table comes from an object store by a presigned URL, with its sha256.
    let b = std::fs::read(root.join("data/b.csv")).unwrap();
    let store = object_store(b.clone()).await;
    use sha2::Digest;
    let b_sha = hex::encode(sha2::Sha256::digest(&b));
    let url = format!("http://{store}/bucket/b.csv?X-Amz-Signature=s3cr3t#sha256={b_sha}");
    let log = root.join("ferry-2.log");
    let mut child = spawn_ferry(
        root,
        &kubeconfig,
        &[
            "score",
            "data/a.csv",
            &url,
            "data/c.csv",
            "-o",
            "scores.out.csv",
            "--keep",
            "id",
            "--env",
            "staging",
            "--shards",
            "2",
            "--json",
        ],
        &log,
    );
    until_seen(&fake, 300, &log, |s| posts(s) == 2).await;
    let job = fake
        .seen()
        .iter()
        .rfind(|s| s.method == "POST" && s.path == batch)
        .and_then(|s| s.body.clone())
        .unwrap();
    let plan: Value = serde_json::from_str(
        job["spec"]["template"]["spec"]["initContainers"][1]["env"][0]["value"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let shards: Vec<Vec<u64>> = serde_json::from_value(plan["shards"].clone()).unwrap();
    assert_eq!(shards.len(), 2, "{plan}");
    assert_eq!(shards.concat(), [0, 1, 2], "{plan}");
    let mut pods = Vec::new();
    let mut done = Vec::new();
    for k in 0..2 {
        let name = format!("{NAME}-score-ok-{k}");
        let pod_root = pods_fs.path().join(&name);
        let (code, err) = run_shard(&job, k, root, &pod_root);
        assert_eq!(code, 0, "{err}");
        done.push(pod_root.join("ferry-collect/done"));
        fake.state
            .pod_roots
            .lock()
            .unwrap()
            .insert(name.clone(), pod_root);
        pods.push(shard_pod(&name, k, 0));
    }
    // Listed in reverse: the join follows the shards' order, not the pods'.
    pods.reverse();
    fake.on(
        "GET",
        &format!("{core}/pods"),
        Reply::Json(200, pod_list(pods)),
    );
    let stdout = child.stdout.take().unwrap();
    let (summary, _stdout) = next_json(stdout, 120, &log).await;
    let code = exit_code(child, 60).await;
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(0), "{err}");
    let scored = std::fs::read(root.join("scores.out.csv")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&scored),
        String::from_utf8_lossy(&std::fs::read(root.join("here.out.csv")).unwrap())
    );
    assert_eq!(
        summary["output_sha256"],
        hex::encode(sha2::Sha256::digest(&scored))
    );
    assert_eq!(summary["rows"], 120);
    let rows: Vec<u64> = summary["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["rows"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, [40, 30, 50]);
    assert!(done.iter().all(|d| d.exists()), "every collector released");
    let rec = newest_record(root);
    assert_eq!(rec["status"], "succeeded", "{rec}");
    assert_eq!(rec["env"], "staging");
    assert_eq!(rec["image"], json!(image_of(&job)));
    assert_eq!(rec["score"]["rows"], 120);
    assert_eq!(
        rec["score"]["output_sha256"],
        hex::encode(sha2::Sha256::digest(&scored))
    );
    assert!(
        !root
            .join(".ferry/runs")
            .join(rec["id"].as_str().unwrap())
            .join("shards")
            .exists(),
        "the parts are not kept once joined"
    );
    // The URL is recorded without its credential, with what its server said of it.
    let fetched = &rec["score"]["inputs"][1];
    assert_eq!(
        fetched["path"],
        format!("http://{store}/bucket/b.csv"),
        "{rec}"
    );
    assert_eq!(fetched["sha256"], b_sha);
    assert_eq!(fetched["etag"], "\"b-v1\"");
    assert_eq!(fetched["bytes"], b.len());
    assert_eq!(fetched["rows"], 30);
    assert!(
        !std::fs::read_to_string(
            root.join(".ferry/runs")
                .join(rec["id"].as_str().unwrap())
                .join("run.json")
        )
        .unwrap()
        .contains("s3cr3t")
    );
}

/// A stand-in object store on 127.0.0.1: every GET gets `body` with an ETag.
async fn object_store(body: Vec<u8>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = Arc::new(body);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"b-v1\"\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(&body).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    addr
}

fn image_of(job: &Value) -> String {
    job["spec"]["template"]["spec"]["initContainers"][1]["image"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_while_shards_score_deletes_the_job_and_writes_nothing() {
    let _g = SERIAL.lock().await;
    let Some(registry) = Registry::start(false).await else {
        return;
    };
    let dir = scoring_project(&registry.host);
    let root = dir.path();
    let core = format!("/api/v1/namespaces/{NS}");
    let batch = format!("/apis/batch/v1/namespaces/{NS}/jobs");
    // The shards' pods are still being scheduled.
    let fake = scoring_fake().await;
    let log = root.join("ferry.log");
    let child = spawn_ferry(
        root,
        &fake.kubeconfig(),
        &[
            "score",
            "data",
            "-o",
            "scores.out.parquet",
            "--env",
            "staging",
            "--shards",
            "3",
        ],
        &log,
    );
    // Listing pods means the Job exists and ferry waits on its shards.
    until_seen(&fake, 600, &log, |seen| {
        seen.iter()
            .any(|s| s.method == "GET" && s.path == format!("{core}/pods"))
    })
    .await;
    let job = posted_job(&fake.seen());
    assert_eq!(job["spec"]["completions"], 3);
    interrupt(&child);
    let code = exit_code(child, 30).await;
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(130), "{err}");
    let name = job["metadata"]["name"].as_str().unwrap();
    assert!(
        fake.seen()
            .iter()
            .any(|s| s.method == "DELETE" && s.path == format!("{batch}/{name}")),
        "the Job was deleted: {err}"
    );
    let rec = newest_record(root);
    assert_eq!(rec["status"], "interrupted", "{rec}");
    let written: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("scores.out"))
        .collect();
    assert!(written.is_empty(), "{written:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoring_runs_in_shards_on_a_real_cluster() {
    let Some((kubeconfig, registry)) = real_cluster() else {
        return;
    };
    let _g = SERIAL.lock().await;
    let dir = scoring_project(&registry);
    let root = dir.path();
    let namespace = format!("ferry-score-test-{}", std::process::id());
    let spec = std::fs::read_to_string(root.join("ferry.yaml"))
        .unwrap()
        .replace(
            &format!("namespace: {NS}"),
            &format!("namespace: {namespace}"),
        );
    std::fs::write(root.join("ferry.yaml"), spec).unwrap();
    score_here(root);
    let kubeconfig = Path::new(&kubeconfig);
    let scored = ferry_with_kubeconfig(
        root,
        kubeconfig,
        &[
            "score",
            "data/a.csv",
            "data/b.csv",
            "data/c.csv",
            "-o",
            "scores.out.csv",
            "--keep",
            "id",
            "--env",
            "staging",
            "--shards",
            "3",
            "--json",
        ],
    )
    .await;
    let failed = ferry_with_kubeconfig(
        root,
        kubeconfig,
        &[
            "score",
            "data/a.csv",
            "data/bad.csv",
            "-o",
            "bad.out.csv",
            "--keep",
            "id",
            "--env",
            "staging",
            "--shards",
            "2",
        ],
    )
    .await;
    drop_namespace(kubeconfig, &namespace).await;

    assert!(scored.status.success(), "{}", stderr(&scored));
    assert_eq!(
        std::fs::read(root.join("scores.out.csv")).unwrap(),
        std::fs::read(root.join("here.out.csv")).unwrap()
    );
    let summary: Value = serde_json::from_slice(&scored.stdout).unwrap();
    assert_eq!(summary["rows"], 120);
    let err = stderr(&failed);
    assert_eq!(failed.status.code(), Some(1), "{err}");
    assert!(
        err.contains("shard 1 of 2 (data/bad.csv) failed") && err.contains("'tall'"),
        "{err}"
    );
    assert!(!root.join("bad.out.csv").exists());
}

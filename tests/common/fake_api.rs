//! A fake Kubernetes API server: an HTTP server on 127.0.0.1 that answers with responses
//! recorded from real API servers (`tests/fixtures/kube/`) and keeps every request it gets, so
//! tests check what went over the wire and in which order.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Query, Request};
use axum::http::{StatusCode, header};
use axum::response::Response;
use ferry::kube::client::connect_with;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// What the fake answers.
#[derive(Clone, Debug)]
pub enum Reply {
    Json(u16, Value),
    Text(u16, String),
    /// A watch: each value is one line of the stream; then the connection stays open, quiet,
    /// as a real watch does until its timeout.
    Watch(Vec<Value>),
}

struct Route {
    method: &'static str,
    path: String,
    /// Query pairs the request must carry (`*` as a value: any value).
    query: Vec<(String, String)>,
    /// Replies in turn; the last one repeats.
    replies: VecDeque<Reply>,
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub accept: Option<String>,
    pub body: Option<Value>,
}

impl Seen {
    pub fn q(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "PATCH" | "POST" | "PUT" | "DELETE")
            && self.q("dryRun") != Some("All")
            && !self
                .body
                .as_ref()
                .is_some_and(|b| b["dryRun"] == json!(["All"]))
    }
}

#[derive(Default)]
struct State {
    routes: Mutex<Vec<Route>>,
    seen: Mutex<Vec<Seen>>,
}

pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<State>,
    dir: tempfile::TempDir,
}

impl FakeApi {
    pub async fn start() -> FakeApi {
        let state = Arc::new(State::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = state.clone();
        let app = axum::Router::new().fallback(move |req: Request| handle(s.clone(), req));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let fake = FakeApi {
            addr,
            state,
            dir: tempfile::tempdir().unwrap(),
        };
        fake.on("GET", "/version", Reply::Json(200, fixture("version.json")));
        fake
    }

    /// Answers `method path?k=v&…` (the query pairs are requirements, not the whole query).
    pub fn on(&self, method: &'static str, path_and_query: &str, reply: Reply) {
        self.on_seq(method, path_and_query, vec![reply]);
    }

    pub fn on_seq(&self, method: &'static str, path_and_query: &str, replies: Vec<Reply>) {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let query = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, "*"));
                (k.to_string(), v.to_string())
            })
            .collect();
        self.state.routes.lock().unwrap().push(Route {
            method,
            path: path.to_string(),
            query,
            replies: replies.into(),
        });
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn server(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig with a context `fake` (current) for this server, and one `staging-eu`.
    pub fn kubeconfig(&self) -> PathBuf {
        kubeconfig_for(self.dir.path(), &self.server())
    }

    pub async fn client(&self) -> kube::Client {
        connect_with(&self.kubeconfig(), None).await.unwrap()
    }
}

pub fn kubeconfig_for(dir: &Path, server: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {server}
- name: eu
  cluster:
    server: {server}
users:
- name: tester
  user:
    token: not-a-real-token
contexts:
- name: fake
  context: {{ cluster: fake, user: tester, namespace: default }}
- name: staging-eu
  context: {{ cluster: eu, user: tester }}
current-context: fake
"
        ),
    )
    .unwrap();
    path
}

async fn handle(state: Arc<State>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let query: Vec<(String, String)> = Query::try_from_uri(&parts.uri)
        .map(|q: Query<Vec<(String, String)>>| q.0)
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(body, 16 << 20)
        .await
        .unwrap_or_default();
    let header = |name| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let seen = Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: query.clone(),
        content_type: header(header::CONTENT_TYPE),
        accept: header(header::ACCEPT),
        body: serde_json::from_slice(&bytes).ok(),
    };
    state.seen.lock().unwrap().push(seen.clone());

    let reply = {
        let mut routes = state.routes.lock().unwrap();
        // The route with the most query requirements that all hold; the latest among equals.
        let best = routes
            .iter_mut()
            .enumerate()
            .filter(|(_, r)| r.method == seen.method && r.path == seen.path)
            .filter(|(_, r)| {
                r.query
                    .iter()
                    .all(|(k, v)| seen.q(k).is_some_and(|have| v == "*" || have == v))
            })
            .max_by_key(|(i, r)| (r.query.len(), *i))
            .map(|(_, r)| r);
        best.map(|r| {
            if r.replies.len() > 1 {
                r.replies.pop_front().unwrap()
            } else {
                r.replies[0].clone()
            }
        })
    };
    match reply {
        Some(Reply::Json(code, v)) => json_response(code, &v),
        Some(Reply::Text(code, t)) => Response::builder()
            .status(code)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from(t))
            .unwrap(),
        Some(Reply::Watch(events)) => {
            let lines = events
                .into_iter()
                .map(|e| Ok::<_, Infallible>(format!("{e}\n")));
            let stream = futures_util::stream::iter(lines).chain(futures_util::stream::pending());
            Response::builder()
                .status(200)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(stream))
                .unwrap()
        }
        // What a real API server says for a path it does not serve.
        None => json_response(
            404,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "the server could not find the requested resource",
                    "reason": "NotFound", "details": {}, "code": 404}),
        ),
    }
}

fn json_response(code: u16, v: &Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(v.to_string()))
        .unwrap()
}

pub fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kube")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn fixture_text(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/kube")
            .join(name),
    )
    .unwrap()
}

pub fn ok(name: &str) -> Reply {
    Reply::Json(200, fixture(name))
}

pub fn status(code: u16, name: &str) -> Reply {
    Reply::Json(code, fixture(name))
}

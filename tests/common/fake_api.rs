//! A fake Kubernetes API server: an HTTP server on 127.0.0.1 that answers with responses
//! recorded from real API servers (`tests/fixtures/kube/`) and keeps every request it gets, so
//! tests check what went over the wire and in which order.
//!
//! Started with `FakeApi::with_store`, it also keeps what is applied to it, enough of an API
//! server for a whole promotion: server-side apply (dry run and real) returns and stores the
//! object with its uid, resourceVersion and generation; GET returns what was stored; lists
//! select by label and field; DELETE removes; a small Deployment controller writes the status
//! a rollout watch reads: rolled out, or, for an image the test says does not pull, stuck with
//! the ReplicaSet, pod and events of `*-imagepullbackoff` fixtures. Scripted routes (`on`) are
//! answered first.

use std::collections::{BTreeMap, VecDeque};
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

type Cut = Box<dyn Fn(&Seen) -> bool + Send + Sync>;

#[derive(Default)]
struct State {
    /// When a request matches, the server goes away (see `FakeApi::cut_at`).
    cut: Mutex<Option<Cut>>,
    down: std::sync::atomic::AtomicBool,
    serving: Mutex<Option<tokio::task::AbortHandle>>,
    routes: Mutex<Vec<Route>>,
    seen: Mutex<Vec<Seen>>,
    /// `None`: only the routes answer.
    store: Mutex<Option<Store>>,
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
        serve(state.clone(), listener);
        let fake = FakeApi {
            addr,
            state,
            dir: tempfile::tempdir().unwrap(),
        };
        fake.on("GET", "/version", Reply::Json(200, fixture("version.json")));
        fake
    }

    /// A fake that also keeps what is applied to it (see the module's documentation).
    pub async fn with_store() -> FakeApi {
        let fake = FakeApi::start().await;
        *fake.state.store.lock().unwrap() = Some(Store::default());
        fake
    }

    /// Which images the fake's nodes can pull (all, unless told otherwise). Deployments applied
    /// afterwards roll out, or get stuck in ImagePullBackOff.
    pub fn pulls(&self, can_pull: impl Fn(&str) -> bool + Send + Sync + 'static) {
        self.with(|s| s.pulls = Some(Arc::new(can_pull)));
    }

    /// The cluster's nodes: `(name, kubernetes.io/arch, schedulable)` each, answered to node
    /// lists (with or without a store).
    pub fn nodes(&self, nodes: &[(&str, &str, bool)]) {
        let items: Vec<Value> = nodes
            .iter()
            .map(|(name, arch, schedulable)| {
                json!({
                    "metadata": {"name": name, "labels": {
                        "kubernetes.io/arch": arch, "kubernetes.io/os": "linux",
                        "kubernetes.io/hostname": name}},
                    "spec": {"unschedulable": !schedulable},
                    "status": {"conditions": [{"type": "Ready", "status": "True"}]}
                })
            })
            .collect();
        self.on(
            "GET",
            "/api/v1/nodes",
            Reply::Json(
                200,
                json!({"kind": "NodeList", "apiVersion": "v1",
                       "metadata": {"resourceVersion": "1"}, "items": items}),
            ),
        );
    }

    /// The stored object at `path` (`/apis/apps/v1/namespaces/ns/deployments/name`).
    pub fn object(&self, path: &str) -> Option<Value> {
        self.with(|s| s.objects.get(path).cloned())
    }

    /// The paths of every stored object.
    pub fn paths(&self) -> Vec<String> {
        self.with(|s| s.objects.keys().cloned().collect())
    }

    /// Changes a stored object as a hand edit (`kubectl edit`) would: a new resourceVersion, a
    /// new generation when more than metadata changed, and the controller's reaction.
    pub fn edit(&self, path: &str, change: impl FnOnce(&mut Value)) {
        self.with(|s| {
            let old = s.objects.get(path).cloned().expect("no such object");
            let mut new = old.clone();
            change(&mut new);
            s.version += 1;
            new["metadata"]["resourceVersion"] = json!(s.version.to_string());
            if without_metadata(&new) != without_metadata(&old) {
                new["metadata"]["generation"] = json!(generation(&old) + 1);
            }
            s.objects.insert(path.to_string(), new);
            s.control(path);
        });
    }

    fn with<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = self.state.store.lock().unwrap();
        f(store
            .as_mut()
            .expect("started without a store (FakeApi::with_store)"))
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

    /// From the first request `when` matches on, the server is gone: that request and every
    /// later one on an open connection has its connection cut without an answer (and is not
    /// stored), and new connections are refused.
    pub fn cut_at(&self, when: impl Fn(&Seen) -> bool + Send + Sync + 'static) {
        *self.state.cut.lock().unwrap() = Some(Box::new(when));
    }

    /// The server back on the same address, with what it stored before the cut.
    pub async fn restore(&self) {
        *self.state.cut.lock().unwrap() = None;
        if let Some(h) = self.state.serving.lock().unwrap().take() {
            h.abort();
        }
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.state
            .down
            .store(false, std::sync::atomic::Ordering::SeqCst);
        serve(self.state.clone(), listener);
    }

    pub fn is_down(&self) -> bool {
        self.state.down.load(std::sync::atomic::Ordering::SeqCst)
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

/// A kubeconfig whose only cluster listens nowhere, and that cluster's URL.
pub fn dead_kubeconfig(dir: &Path) -> (PathBuf, String) {
    let server = format!("https://127.0.0.1:{}", super::free_port());
    (kubeconfig_for(dir, &server), server)
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

fn serve(state: Arc<State>, listener: tokio::net::TcpListener) {
    let s = state.clone();
    let app = axum::Router::new().fallback(move |req: Request| handle(s.clone(), req));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    *state.serving.lock().unwrap() = Some(task.abort_handle());
}

/// An answer that never completes: hyper drops the connection when its body fails.
fn cut_connection() -> Response {
    let fail = futures_util::stream::once(async {
        Err::<axum::body::Bytes, std::io::Error>(std::io::Error::other("the server went away"))
    });
    Response::builder()
        .status(200)
        .body(Body::from_stream(fail))
        .unwrap()
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
    {
        use std::sync::atomic::Ordering;
        let matches = state.cut.lock().unwrap().as_ref().is_some_and(|f| f(&seen));
        if matches && !state.down.swap(true, Ordering::SeqCst) {
            // Closing the listener: new connections are refused from now on.
            if let Some(h) = state.serving.lock().unwrap().take() {
                h.abort();
            }
        }
        if state.down.load(Ordering::SeqCst) {
            return cut_connection();
        }
    }
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
    let reply = reply.or_else(|| {
        let mut store = state.store.lock().unwrap();
        store.as_mut().and_then(|s| s.answer(&seen))
    });
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

// ---------------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------------

/// The image the recorded fixtures name, and the name part of their new ReplicaSet's pods.
const FIXTURE_IMAGE: &str = "registry.example.com/ml/churn@sha256:3f9a1c2b7d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeeff";
const FIXTURE_REPLICASET: &str = "churn-6d8f7b9c5d";
const REVISION: &str = "deployment.kubernetes.io/revision";

type CanPull = Arc<dyn Fn(&str) -> bool + Send + Sync>;

#[derive(Default)]
struct Store {
    /// Object path (`/api/v1/namespaces/ns/configmaps/name`) → object.
    objects: BTreeMap<String, Value>,
    /// The last resourceVersion handed out.
    version: u64,
    pulls: Option<CanPull>,
    /// What the controller made for a Deployment (its ReplicaSet, pods, events), by its path.
    made: BTreeMap<String, Vec<String>>,
}

/// Where a request goes: a collection, or one object in it.
struct Target {
    collection: String,
    name: Option<String>,
    namespace: Option<String>,
    group: String,
    version: String,
    plural: String,
}

impl Target {
    fn parse(path: &str) -> Option<Target> {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (group, version, rest) = match segs.as_slice() {
            ["api", v, rest @ ..] => ("", *v, rest),
            ["apis", g, v, rest @ ..] => (*g, *v, rest),
            _ => return None,
        };
        let prefix = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let (namespace, plural, name) = match rest {
            [plural] => (None, *plural, None),
            [plural, name] => (None, *plural, Some(*name)),
            ["namespaces", ns, plural] => (Some(*ns), *plural, None),
            ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
            _ => return None,
        };
        let collection = match namespace {
            Some(ns) => format!("{prefix}/namespaces/{ns}/{plural}"),
            None => format!("{prefix}/{plural}"),
        };
        Some(Target {
            collection,
            name: name.map(str::to_string),
            namespace: namespace.map(str::to_string),
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
        })
    }

    fn path(&self) -> String {
        format!("{}/{}", self.collection, self.name.as_deref().unwrap_or(""))
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps`, as the API server names a resource in its messages.
    fn resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn kind(&self) -> &'static str {
        match self.plural.as_str() {
            "namespaces" => "Namespace",
            "configmaps" => "ConfigMap",
            "secrets" => "Secret",
            "services" => "Service",
            "deployments" => "Deployment",
            "replicasets" => "ReplicaSet",
            "pods" => "Pod",
            "events" => "Event",
            "horizontalpodautoscalers" => "HorizontalPodAutoscaler",
            "poddisruptionbudgets" => "PodDisruptionBudget",
            "ingresses" => "Ingress",
            _ => "Unknown",
        }
    }
}

fn status_reply(code: u16, reason: &str, message: String, details: Value) -> Reply {
    Reply::Json(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
               "status": if code < 300 { "Success" } else { "Failure" },
               "message": message, "reason": reason, "details": details, "code": code}),
    )
}

fn not_found(t: &Target, name: &str) -> Reply {
    status_reply(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", t.resource()),
        json!({"name": name, "group": t.group, "kind": t.plural}),
    )
}

fn generation(o: &Value) -> i64 {
    o["metadata"]["generation"].as_i64().unwrap_or(0)
}

/// The object but its metadata and status: what a generation counts changes of.
fn without_metadata(o: &Value) -> Value {
    let mut o = o.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

/// The object without what the server maintains: what an apply may or may not change.
fn without_bookkeeping(o: &Value) -> Value {
    let mut o = o.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("status");
    }
    if let Some(m) = o["metadata"].as_object_mut() {
        for k in [
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
        ] {
            m.remove(k);
        }
    }
    o
}

/// `k=v,k2!=v2,k3` against an object's labels.
fn labels_match(o: &Value, selector: &str) -> bool {
    let labels = &o["metadata"]["labels"];
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once('=') {
            let k = k.trim();
            labels[k].as_str() == Some(v.trim_start_matches('=').trim())
        } else {
            labels.get(term.trim()).is_some()
        }
    })
}

/// `metadata.name=x,type=Warning` against an object's fields.
fn fields_match(o: &Value, selector: &str) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (path, want) = term.split_once('=').unwrap_or((term, ""));
        let want = want.trim_start_matches('=');
        let have = path.split('.').fold(o, |v, k| &v[k]);
        have.as_str().unwrap_or_default() == want
    })
}

impl Store {
    fn answer(&mut self, seen: &Seen) -> Option<Reply> {
        let t = Target::parse(&seen.path)?;
        let dry_run = seen.q("dryRun") == Some("All")
            || seen
                .body
                .as_ref()
                .is_some_and(|b| b["dryRun"] == json!(["All"]));
        Some(match (seen.method.as_str(), &t.name) {
            ("GET", None) if seen.q("watch") == Some("true") => Reply::Watch(Vec::new()),
            ("GET", None) => self.list(&t, seen),
            ("GET", Some(name)) => match self.objects.get(&t.path()) {
                Some(o) => Reply::Json(200, o.clone()),
                None => not_found(&t, name),
            },
            ("PATCH", Some(name)) => self.apply(&t, name, seen, dry_run),
            ("DELETE", Some(name)) => self.delete(&t, name, dry_run),
            _ => status_reply(
                405,
                "MethodNotAllowed",
                format!("{} {} is not served by this fake", seen.method, seen.path),
                json!({}),
            ),
        })
    }

    fn list(&self, t: &Target, seen: &Seen) -> Reply {
        let metadata_only = seen
            .accept
            .as_deref()
            .is_some_and(|a| a.contains("as=PartialObjectMetadataList"));
        let prefix = format!("{}/", t.collection);
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|(p, _)| p.strip_prefix(&prefix).is_some_and(|n| !n.contains('/')))
            .map(|(_, o)| o)
            .filter(|o| seen.q("labelSelector").is_none_or(|s| labels_match(o, s)))
            .filter(|o| seen.q("fieldSelector").is_none_or(|s| fields_match(o, s)))
            .map(|o| {
                if metadata_only {
                    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                           "metadata": o["metadata"]})
                } else {
                    // As a real API server lists them: no kind and apiVersion per item.
                    let mut o = o.clone();
                    if let Some(m) = o.as_object_mut() {
                        m.remove("kind");
                        m.remove("apiVersion");
                    }
                    o
                }
            })
            .collect();
        let (kind, api_version) = if metadata_only {
            (
                "PartialObjectMetadataList".to_string(),
                "meta.k8s.io/v1".to_string(),
            )
        } else {
            (format!("{}List", t.kind()), t.api_version())
        };
        Reply::Json(
            200,
            json!({"kind": kind, "apiVersion": api_version,
                   "metadata": {"resourceVersion": self.version.to_string()}, "items": items}),
        )
    }

    /// Server-side apply by the one field manager there is: the object becomes what was applied,
    /// plus what the server keeps (uid, creation time, status, the controller's annotation).
    fn apply(&mut self, t: &Target, name: &str, seen: &Seen, dry_run: bool) -> Reply {
        if !seen
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/apply-patch"))
        {
            return status_reply(
                415,
                "UnsupportedMediaType",
                "this fake serves server-side apply patches only".into(),
                json!({}),
            );
        }
        let Some(body) = seen.body.clone() else {
            return status_reply(400, "BadRequest", "no body".into(), json!({}));
        };
        if body["metadata"]["name"].as_str() != Some(name) || body["kind"] != t.kind() {
            return status_reply(
                400,
                "BadRequest",
                format!(
                    "the body ({} {}) does not match the URL ({} {name})",
                    body["kind"],
                    body["metadata"]["name"],
                    t.kind()
                ),
                json!({}),
            );
        }
        if let Some(ns) = &t.namespace
            && !self
                .objects
                .contains_key(&format!("/api/v1/namespaces/{ns}"))
        {
            return status_reply(
                404,
                "NotFound",
                format!("namespaces \"{ns}\" not found"),
                json!({"name": ns, "kind": "namespaces"}),
            );
        }
        let path = t.path();
        let old = self.objects.get(&path).cloned();
        let mut new = body;
        if let Some(ns) = &t.namespace {
            new["metadata"]["namespace"] = json!(ns);
        }
        let created = old.is_none();
        match &old {
            None => {
                let n = self.version + 1;
                new["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{n:012x}"));
                new["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
                new["metadata"]["generation"] = json!(1);
                if t.plural == "namespaces" {
                    new["status"] = json!({"phase": "Active"});
                }
                // A dry run stores nothing and hands out no resourceVersion.
                if !dry_run {
                    self.version = n;
                    new["metadata"]["resourceVersion"] = json!(n.to_string());
                }
            }
            Some(old) => {
                for k in ["uid", "creationTimestamp", "resourceVersion", "generation"] {
                    new["metadata"][k] = old["metadata"][k].clone();
                }
                if let Some(status) = old.get("status") {
                    new["status"] = status.clone();
                }
                if let Some(revision) = old["metadata"]["annotations"].get(REVISION) {
                    new["metadata"]["annotations"][REVISION] = revision.clone();
                }
                if without_metadata(&new) != without_metadata(old) {
                    new["metadata"]["generation"] = json!(generation(old) + 1);
                }
                // Applying what is there is a no-op: the resourceVersion stays. A dry run keeps
                // it too (nothing is written).
                if without_bookkeeping(&new) != without_bookkeeping(old) && !dry_run {
                    self.version += 1;
                    new["metadata"]["resourceVersion"] = json!(self.version.to_string());
                }
            }
        }
        if !dry_run {
            self.objects.insert(path.clone(), new);
            self.control(&path);
            new = self.objects[&path].clone();
        }
        Reply::Json(if created { 201 } else { 200 }, new)
    }

    fn delete(&mut self, t: &Target, name: &str, dry_run: bool) -> Reply {
        let path = t.path();
        let Some(old) = self.objects.get(&path).cloned() else {
            return not_found(t, name);
        };
        if !dry_run {
            self.objects.remove(&path);
            self.version += 1;
            self.control(&path);
        }
        status_reply(
            200,
            "",
            String::new(),
            json!({"name": name, "group": t.group, "kind": t.plural,
                   "uid": old["metadata"]["uid"]}),
        )
    }

    /// The Deployment controller and the kubelet in one: after a Deployment at `path` changed,
    /// its status, and what a failed rollout leaves to be diagnosed.
    fn control(&mut self, path: &str) {
        let Some(t) = Target::parse(path).filter(|t| t.plural == "deployments") else {
            return;
        };
        for made in self.made.remove(path).unwrap_or_default() {
            self.objects.remove(&made);
        }
        let Some(d) = self.objects.get(path).cloned() else {
            return;
        };
        let ns = t.namespace.clone().unwrap_or_default();
        let name = t.name.clone().unwrap_or_default();
        let template = &d["spec"]["template"];
        let images: Vec<String> = template["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["image"].as_str().map(str::to_string))
            .collect();
        let pulls = self
            .pulls
            .clone()
            .is_none_or(|can| images.iter().all(|i| can(i)));
        let desired = d["spec"]["replicas"].as_i64().unwrap_or(1);
        let revision = generation(&d);
        let status = if pulls {
            json!({
                "observedGeneration": revision, "replicas": desired, "updatedReplicas": desired,
                "readyReplicas": desired, "availableReplicas": desired,
                "conditions": [
                    {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                    {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
                ]
            })
        } else {
            // One new pod that does not start; the old ones (if any) keep serving.
            let old = if revision > 1 { desired } else { 0 };
            json!({
                "observedGeneration": revision, "replicas": old + 1, "updatedReplicas": 1,
                "readyReplicas": old, "availableReplicas": old, "unavailableReplicas": 1,
                "conditions": [
                    {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                     "message": format!("ReplicaSet \"{name}-6d8f7b9c5d\" is progressing.")}
                ]
            })
        };
        let d = self.objects.get_mut(path).unwrap();
        d["status"] = status;
        d["metadata"]["annotations"][REVISION] = json!(revision.to_string());
        if pulls {
            return;
        }
        let uid = d["metadata"]["uid"].clone();
        let mut labels = template["metadata"]["labels"].clone();
        labels["pod-template-hash"] = json!("6d8f7b9c5d");
        let image = images.first().cloned().unwrap_or_default();
        // The recorded objects of a failed pull, made this Deployment's.
        let recorded = |file: &str| -> Vec<Value> {
            let text = serde_json::to_string(&fixture(file))
                .unwrap()
                .replace(FIXTURE_IMAGE, &image)
                .replace(FIXTURE_REPLICASET, &format!("{name}-6d8f7b9c5d"));
            let list: Value = serde_json::from_str(&text).unwrap();
            list["items"].as_array().cloned().unwrap_or_default()
        };
        let mut made = Vec::new();
        let base = format!("/api/v1/namespaces/{ns}");
        for mut rs in recorded("replicasets-churn.json") {
            if rs["metadata"]["name"] != json!(format!("{name}-6d8f7b9c5d")) {
                continue;
            }
            rs["metadata"]["namespace"] = json!(ns);
            rs["metadata"]["labels"] = labels.clone();
            rs["metadata"]["annotations"][REVISION] = json!(revision.to_string());
            rs["metadata"]["ownerReferences"][0]["name"] = json!(name);
            rs["metadata"]["ownerReferences"][0]["uid"] = uid.clone();
            made.push((
                format!("/apis/apps/v1/namespaces/{ns}/replicasets/{name}-6d8f7b9c5d"),
                rs,
            ));
        }
        for mut pod in recorded("pods-churn-imagepullbackoff.json") {
            pod["metadata"]["namespace"] = json!(ns);
            pod["metadata"]["labels"] = labels.clone();
            let pod_name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
            made.push((format!("{base}/pods/{pod_name}"), pod));
        }
        for mut event in recorded("events-churn-imagepull.json") {
            event["metadata"]["namespace"] = json!(ns);
            event["involvedObject"]["namespace"] = json!(ns);
            let event_name = event["metadata"]["name"].as_str().unwrap_or("").to_string();
            made.push((format!("{base}/events/{event_name}"), event));
        }
        let paths = made.iter().map(|(p, _)| p.clone()).collect();
        self.objects.extend(made);
        self.made.insert(path.to_string(), paths);
    }
}

//! Faults injected while ferry is in the middle of something, and what must hold afterwards:
//! ferry says what happened (naming the daemon, registry or API server that went away), exits
//! non-zero without a panic, records nothing as done that is not, keeps the last good model and
//! lock, and the same command works once the service is back.
//!
//! - The Docker daemon "stops" during a build and a training run: the real daemon must keep
//!   running for everything else on the machine, so ferry talks to it through a Unix-socket
//!   proxy in a temporary directory (`DOCKER_HOST=unix://…`) that cuts every connection and
//!   closes its socket at the chosen moment.
//! - The registry process is killed once the first blob upload has begun, and started again.
//! - The fake Kubernetes API server goes away at a chosen request, and comes back.
//! - A `ferry serve-model` process is flooded, then stopped with SIGTERM with requests in flight.
//!
//! Faults covered elsewhere (OOM, Ctrl-C, an engine or cluster that is not there at all, the
//! in-process server's queue and shutdown) are listed in the README's Reliability section. The
//! tests run one at a time: they share the Docker engine, and two cores.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Mutex, MutexGuard, watch};

mod common;
use common::fake_api::{FakeApi, Seen};
use common::registry::{MANIFEST_TYPES, Registry};

static SERIAL: Mutex<()> = Mutex::const_new(());

async fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().await
}

const DOCKER_SOCKET: &str = "/var/run/docker.sock";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// ferry through the proxy (`docker_host`), or through the user's engine.
async fn ferry(root: &Path, docker_host: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = common::ferry_cmd(root, args);
    match docker_host {
        Some(h) => cmd.env("DOCKER_HOST", h),
        None => cmd.env_remove("DOCKER_HOST"),
    };
    let run = tokio::process::Command::from(cmd).output();
    tokio::time::timeout(Duration::from_secs(900), run)
        .await
        .unwrap_or_else(|_| panic!("ferry {args:?} did not finish within 15 minutes"))
        .unwrap()
}

async fn ferry_ok(root: &Path, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let out = ferry(root, None, &args).await;
    assert!(out.status.success(), "ferry {args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// A failure as the user must see it: a message, not a crash.
fn assert_clean_failure(out: &Output, names: &str) {
    let err = stderr(out);
    eprintln!("ferry said:\n{err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(names), "the error must name {names:?}:\n{err}");
}

/// A Unix socket that forwards to the Docker daemon's until it is cut: once a request from
/// ferry contains `trigger` and `after` more bytes went the daemon's way, it waits `delay`, then
/// closes its socket and every connection through it, as a daemon that stops does.
struct DockerProxy {
    path: PathBuf,
    cut: watch::Sender<bool>,
    was_cut: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl DockerProxy {
    fn start(trigger: &'static str, after: u64, delay: Duration) -> DockerProxy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (cut, cut_rx) = watch::channel(false);
        let was_cut = Arc::new(AtomicBool::new(false));
        let armed = Arc::new(AtomicBool::new(false));
        let since = Arc::new(AtomicU64::new(0));
        let cut_tx = cut.clone();
        let flag = was_cut.clone();
        let socket = path.clone();
        let fire = Arc::new(move || {
            let cut_tx = cut_tx.clone();
            let flag = flag.clone();
            let socket = socket.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                flag.store(true, Ordering::SeqCst);
                let _ = std::fs::remove_file(&socket);
                let _ = cut_tx.send(true);
            });
        });
        let mut stop = cut_rx.clone();
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    c = listener.accept() => match c {
                        Ok((c, _)) => c,
                        Err(_) => return,
                    },
                    _ = stop.wait_for(|c| *c) => return,
                };
                let Ok(daemon) = tokio::net::UnixStream::connect(DOCKER_SOCKET).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut dr, mut dw) = daemon.into_split();
                let (armed, since, fire) = (armed.clone(), since.clone(), fire.clone());
                let mut stop_up = cut_rx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = tokio::select! {
                            r = cr.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
                            _ = stop_up.wait_for(|c| *c) => return,
                        };
                        let chunk = &buf[..n];
                        if armed.load(Ordering::SeqCst) {
                            let total = since.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                            if total >= after && total - (n as u64) < after {
                                fire();
                            }
                        } else if contains(chunk, trigger.as_bytes())
                            && !armed.swap(true, Ordering::SeqCst)
                            && after == 0
                        {
                            fire();
                        }
                        if dw.write_all(chunk).await.is_err() {
                            return;
                        }
                    }
                });
                let mut stop_down = cut_rx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = tokio::select! {
                            r = dr.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
                            _ = stop_down.wait_for(|c| *c) => return,
                        };
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        DockerProxy {
            path,
            cut,
            was_cut,
            _dir: dir,
        }
    }

    fn host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    fn was_cut(&self) -> bool {
        self.was_cut.load(Ordering::SeqCst)
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        let _ = self.cut.send(true);
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A small project: an environment bootstrapped from Debian packages (the base the other tests
/// build), no Python requirements, and a training command that writes `artifacts/model.txt`.
/// Its images are removed when it is dropped.
struct LocalProject {
    dir: tempfile::TempDir,
    name: String,
}

impl LocalProject {
    fn new(name: &str) -> LocalProject {
        let dir = tempfile::tempdir().unwrap();
        let spec = |command: &str| {
            format!(
                "name: {name}
environment:
  bootstrap: bookworm
  system_packages: [libgomp1]
train:
  command: \"{command}\"
  outputs: [artifacts/model.txt]
  resources: {{ memory: 256Mi }}
"
            )
        };
        let root = dir.path();
        std::fs::write(
            root.join("ferry.yaml"),
            spec("mkdir -p artifacts && echo good > artifacts/model.txt"),
        )
        .unwrap();
        std::fs::write(
            root.join("slow.yaml"),
            spec("echo started && sleep 120 && echo bad > artifacts/model.txt"),
        )
        .unwrap();
        std::fs::write(root.join("train.txt"), "the training code\n").unwrap();
        LocalProject {
            dir,
            name: name.to_string(),
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn images(&self) -> Vec<String> {
        let listed = common::docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        let mine = [
            format!("ferry/{}", self.name),
            format!("ferry/{}-env", self.name),
        ];
        listed
            .lines()
            .filter(|l| {
                l.rsplit_once(':')
                    .is_some_and(|(repo, _)| mine.iter().any(|m| m == repo))
            })
            .map(str::to_string)
            // Sorted: images created in the same second are listed in any order.
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    fn containers(&self) -> Vec<String> {
        let label = format!("label=dev.ferry.root={}", self.root().display());
        common::docker(&["ps", "-aq", "--filter", &label])
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn lock_text(&self) -> Option<String> {
        std::fs::read_to_string(self.root().join("ferry.lock")).ok()
    }
}

impl Drop for LocalProject {
    fn drop(&mut self) {
        let ids = self.containers();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            common::docker(&args);
        }
        let tags = self.images();
        if !tags.is_empty() {
            let mut args = vec!["rmi", "-f"];
            args.extend(tags.iter().map(String::as_str));
            common::docker(&args);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_docker_host_is_used_not_the_default_socket() {
    let _g = serial().await;
    let p = LocalProject::new("faults-tcp");
    // Nothing listens there: a ferry that fell back to the default socket would build.
    let host = format!("tcp://127.0.0.1:{}", common::free_port());
    let out = ferry(p.root(), Some(&host), &["build"]).await;
    assert_clean_failure(&out, &format!("cannot reach the Docker daemon at {host}"));
    assert!(p.images().is_empty(), "{:?}", p.images());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_lost_during_a_build_is_named_and_nothing_is_tagged() {
    let _g = serial().await;
    let p = LocalProject::new("faults-build");
    ferry_ok(p.root(), &["build"]).await;
    let images_before = p.images();
    let lock_before = p.lock_text();
    // New project content, big enough that the project image (written by ferry and loaded)
    // is still on its way when the daemon goes.
    let big: Vec<u8> = (0..200u32 * 1024 * 1024 / 4)
        .flat_map(|i| i.wrapping_mul(2654435761).to_le_bytes())
        .collect();
    std::fs::write(p.root().join("weights.bin"), big).unwrap();

    // The project image as ferry writes it (an image load), and as the engine builds it.
    for (trigger, way) in [("/images/load", "write"), ("/build?", "build")] {
        let proxy = DockerProxy::start(trigger, 16 << 20, Duration::ZERO);
        let mut cmd = common::ferry_cmd(p.root(), &["build"]);
        cmd.env("DOCKER_HOST", proxy.host())
            .env("FERRY_PROJECT_IMAGE", way);
        let out = tokio::time::timeout(
            Duration::from_secs(900),
            tokio::process::Command::from(cmd).output(),
        )
        .await
        .expect("ferry build finishes")
        .unwrap();
        assert!(
            proxy.was_cut(),
            "the {way} never reached the proxy: {}",
            stderr(&out)
        );
        assert_clean_failure(&out, "lost the connection to the Docker daemon");
        assert!(stderr(&out).contains(&proxy.host()), "{}", stderr(&out));
        assert_eq!(
            p.images(),
            images_before,
            "no image tagged for the cut {way}"
        );
        assert_eq!(p.lock_text(), lock_before, "ferry.lock records no image");
        assert!(p.containers().is_empty());
    }

    // The daemon back: the same command builds.
    let built = ferry_ok(p.root(), &["build"]).await;
    assert_ne!(p.images(), images_before, "{built}");
    assert_ne!(p.lock_text(), lock_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_lost_during_training_records_a_failed_run_and_keeps_the_model() {
    let _g = serial().await;
    let p = LocalProject::new("faults-train");
    let first = ferry_ok(p.root(), &["train"]).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    let model = p.root().join("artifacts/model.txt");
    assert_eq!(std::fs::read_to_string(&model).unwrap(), "good\n");
    let lock_before = p.lock_text();

    // Cut a moment after the container started: the command is running, its log followed.
    let proxy = DockerProxy::start("/start", 0, Duration::from_secs(2));
    let out = ferry(p.root(), Some(&proxy.host()), &["train", "-f", "slow.yaml"]).await;
    assert!(proxy.was_cut(), "the run never started: {}", stderr(&out));
    assert_clean_failure(&out, "lost the connection to the Docker daemon");
    assert!(stderr(&out).contains(&proxy.host()), "{}", stderr(&out));

    let runs = ferry_ok(p.root(), &["runs"]).await;
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    let lost = &runs[0];
    assert_eq!(lost["status"], "failed", "{lost}");
    assert!(
        lost["reason"].as_str().unwrap().contains("Docker daemon"),
        "{lost}"
    );
    assert_eq!(lost["outputs"], json!([]));
    let run_dir = p
        .root()
        .join(".ferry/runs")
        .join(lost["id"].as_str().unwrap());
    assert!(run_dir.join("train.log").exists(), "the log so far is kept");
    assert!(!run_dir.join("out").exists(), "no staged outputs left");
    assert_eq!(
        std::fs::read_to_string(&model).unwrap(),
        "good\n",
        "the last good model stays"
    );
    // The lock took the images built for the run before it started; the models it records
    // are the last good run's.
    let models = |text: Option<String>| {
        let lock: Value = serde_json::from_str(&text.expect("ferry.lock")).unwrap();
        lock["environments"]["(base)"]["models"].clone()
    };
    assert_eq!(
        models(p.lock_text()),
        models(lock_before),
        "no model recorded"
    );

    // The daemon never really stopped, so the container runs on; once the daemon answers
    // again `ferry down` removes what the lost run left, and training works.
    assert_eq!(p.containers().len(), 1);
    ferry_ok(p.root(), &["down"]).await;
    assert!(p.containers().is_empty());
    let again = ferry_ok(p.root(), &["train"]).await;
    assert_eq!(again["status"], "succeeded", "{again}");
}

/// The secret of the cluster environment: never in a record.
const SECRET: &str = "planted-faults-secret";

/// A project serving the churn fixture, its own registry and its own fake cluster (as in
/// `tests/kube_promote.rs`).
struct Promotion {
    name: String,
    dir: tempfile::TempDir,
    fake: FakeApi,
    registry: Registry,
}

impl Promotion {
    async fn start(name: &str) -> Option<Promotion> {
        let registry = Registry::start(false).await?;
        let fake = FakeApi::with_store().await;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("artifacts")).unwrap();
        std::fs::write(
            root.join("ferry.yaml"),
            format!(
                "name: {name}
environment:
  bootstrap: bookworm
serve:
  model: artifacts/model.onnx
environments:
  dev: {{ target: docker }}
  staging:
    target: kubernetes
    namespace: {name}-staging
    registry: {host}/ml
    secrets: .env.staging
",
                host = registry.host
            ),
        )
        .unwrap();
        std::fs::write(root.join(".env.staging"), format!("DB_PASSWORD={SECRET}\n")).unwrap();
        let p = Promotion {
            name: name.to_string(),
            dir,
            fake,
            registry,
        };
        p.train(6);
        Some(p)
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The churn fixture with another horizon in its description: another file, same model.
    fn train(&self, months: u8) {
        let mut bytes = std::fs::read(common::fixture("churn.onnx")).unwrap();
        let at = bytes
            .windows(15)
            .position(|w| w == b"within 6 months")
            .expect("the fixture's doc string");
        bytes[at + 7] = b'0' + months;
        std::fs::write(self.root().join("artifacts/model.onnx"), bytes).unwrap();
    }

    fn cmd(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::from(common::ferry_cmd(self.root(), args));
        cmd.env("KUBECONFIG", self.fake.kubeconfig());
        cmd
    }

    async fn ferry(&self, args: &[&str]) -> Output {
        let run = self.cmd(args).output();
        tokio::time::timeout(Duration::from_secs(900), run)
            .await
            .expect("ferry finishes")
            .unwrap()
    }

    async fn ferry_json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let out = self.ferry(&args).await;
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn lock(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.root().join("ferry.lock")).ok()?;
        assert!(!text.contains(SECRET));
        Some(serde_json::from_str(&text).unwrap())
    }

    fn promotions(&self) -> usize {
        self.lock()
            .and_then(|l| {
                l["environments"]["staging"]["promotions"]
                    .as_array()
                    .cloned()
            })
            .map_or(0, |p| p.len())
    }

    fn history(&self) -> Option<Value> {
        let path = self.root().join(".ferry/promotions/staging.json");
        let text = std::fs::read_to_string(path).ok()?;
        Some(serde_json::from_str(&text).unwrap())
    }

    fn deployment_path(&self) -> String {
        format!(
            "/apis/apps/v1/namespaces/{}-staging/deployments/{}",
            self.name, self.name
        )
    }

    fn running(&self) -> Option<String> {
        let d = self.fake.object(&self.deployment_path())?;
        d["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .map(str::to_string)
    }

    /// Every stored object, to compare the cluster before and after.
    fn cluster(&self) -> Vec<(String, Value)> {
        self.fake
            .paths()
            .into_iter()
            .map(|p| {
                let o = self.fake.object(&p).unwrap();
                (p, o)
            })
            .collect()
    }

    fn uploads_begun(&self) -> bool {
        let dir = self.registry.storage().join(format!(
            "docker/registry/v2/repositories/ml/{}-serve/_uploads",
            self.name
        ));
        std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
    }
}

impl Drop for Promotion {
    fn drop(&mut self) {
        let repos = [
            format!("ferry/{}-serve", self.name),
            format!("{}/ml/{}-serve", self.registry.host, self.name),
        ];
        let listed = common::docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        let tags: Vec<&str> = listed
            .lines()
            .filter(|l| {
                l.rsplit_once(':')
                    .is_some_and(|(repo, _)| repos.iter().any(|r| r == repo))
            })
            .collect();
        if !tags.is_empty() {
            let mut args = vec!["rmi"];
            args.extend(tags);
            common::docker(&args);
        }
    }
}

fn any_write(seen: &[Seen]) -> bool {
    seen.iter().any(Seen::is_write)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_lost_during_a_push_records_no_digest_and_a_rerun_pushes() {
    let _g = serial().await;
    let Some(mut p) = Promotion::start("faults-push").await else {
        return;
    };
    let child = p
        .cmd(&["promote", "staging"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    while !p.uploads_begun() {
        assert!(Instant::now() < deadline, "no blob upload began");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    p.registry.kill();
    let out = tokio::time::timeout(Duration::from_secs(600), child.wait_with_output())
        .await
        .expect("ferry gives up on the registry")
        .unwrap();
    assert_clean_failure(&out, &format!("registry {}", p.registry.host));
    assert_eq!(p.promotions(), 0, "no promotion in ferry.lock");
    if let Some(lock) = p.lock() {
        let serving = &lock["environments"]["staging"]["images"]["serving"];
        assert!(serving["digest"].is_null(), "no digest recorded: {lock}");
    }
    assert!(p.history().is_none(), "no promotion record");
    assert!(!any_write(&p.fake.seen()), "nothing applied");

    p.registry.restart().await;
    let done = p.ferry_json(&["promote", "staging"]).await;
    assert_eq!(done["revision"], 1);
    let image = done["image"].as_str().unwrap().to_string();
    let digest = image.rsplit_once('@').unwrap().1;
    let head = reqwest::Client::new()
        .head(format!(
            "http://{}/v2/ml/{}-serve/manifests/{digest}",
            p.registry.host, p.name
        ))
        .header("Accept", MANIFEST_TYPES)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200, "the recorded digest is in the registry");
    assert_eq!(p.running().as_deref(), Some(image.as_str()));
    assert_eq!(p.promotions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_lost_before_the_first_write_leaves_the_cluster_untouched() {
    let _g = serial().await;
    let Some(p) = Promotion::start("faults-apply-a").await else {
        return;
    };
    let image1 = p.ferry_json(&["promote", "staging"]).await["image"]
        .as_str()
        .unwrap()
        .to_string();
    let cluster = p.cluster();
    let lock = p.lock();
    p.train(7);
    // Every object passes its dry run; the server goes at the first real write.
    p.fake.cut_at(Seen::is_write);
    let out = p.ferry(&["promote", "staging"]).await;
    assert!(p.fake.is_down(), "{}", stderr(&out));
    assert_clean_failure(&out, "the API server");
    assert!(
        !stderr(&out).contains("applied before that"),
        "{}",
        stderr(&out)
    );
    assert_eq!(p.cluster(), cluster, "the cluster is as it was");
    assert_eq!(p.running(), Some(image1.clone()), "revision 1 serves on");
    assert_eq!(p.lock(), lock, "ferry.lock unchanged");
    assert_eq!(
        p.history().unwrap()["revisions"].as_array().unwrap().len(),
        1
    );

    p.fake.restore().await;
    let status = p.ferry_json(&["status", "staging"]).await;
    assert_eq!(status["revision"], 1);
    assert_eq!(status["drift"], json!([]));
    assert_eq!(
        status["running"]["deployments"][0]["images"],
        json!([image1])
    );
    let done = p.ferry_json(&["promote", "staging"]).await;
    assert_eq!(done["revision"], 2);
    assert_ne!(done["image"], image1.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_lost_between_writes_names_what_was_applied() {
    let _g = serial().await;
    let Some(p) = Promotion::start("faults-apply-b").await else {
        return;
    };
    let image1 = p.ferry_json(&["promote", "staging"]).await["image"]
        .as_str()
        .unwrap()
        .to_string();
    p.train(8);
    let mark = p.fake.seen().len();
    p.fake
        .cut_at(|s| s.is_write() && s.method == "PATCH" && s.path.contains("/services/"));
    let out = p.ferry(&["promote", "staging"]).await;
    assert!(p.fake.is_down(), "{}", stderr(&out));
    assert_clean_failure(&out, "lost the connection to the API server");
    let err = stderr(&out);
    let applied = err
        .lines()
        .find(|l| l.contains("applied before that:"))
        .unwrap_or_else(|| panic!("{err}"));
    let written: Vec<String> = p.fake.seen()[mark..]
        .iter()
        .filter(|s| s.is_write())
        .map(|s| s.path.clone())
        .collect();
    assert!(!written.is_empty(), "something was written before the cut");
    assert!(
        applied.contains("ConfigMap faults-apply-b-serving"),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("unknown: Service faults-apply-b")),
        "{err}"
    );
    let not_applied = err
        .lines()
        .find(|l| l.contains("not applied:"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(not_applied.contains("Deployment faults-apply-b"), "{err}");
    assert_eq!(p.running(), Some(image1.clone()), "revision 1 serves on");
    assert_eq!(p.promotions(), 1, "the cut promotion is not recorded");

    p.fake.restore().await;
    let status = p.ferry_json(&["status", "staging"]).await;
    assert_eq!(status["revision"], 1);
    assert_eq!(
        status["running"]["deployments"][0]["images"],
        json!([image1])
    );
    let done = p.ferry_json(&["promote", "staging"]).await;
    assert_eq!(done["revision"], 2);
    assert_eq!(p.running().as_deref(), done["image"].as_str());
}

fn slow_request(iterations: i64) -> String {
    json!({"inputs": [
        {"name": "X", "shape": [1, 8], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7, 8]},
        {"name": "iterations", "shape": [1], "datatype": "INT64", "data": [iterations]}
    ]})
    .to_string()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_server_process_stays_bounded_and_sigterm_lets_requests_finish() {
    let _g = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut config = common::config_with(
        vec![common::model("slow", "slow.onnx", None)],
        ferry::server::config::Limits {
            max_queue: 2,
            shutdown_grace_ms: 10_000,
            ..Default::default()
        },
    );
    config.port = port;
    let path = dir.path().join("serving.json");
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    let mut child = tokio::process::Command::from(common::ferry_cmd(
        dir.path(),
        &["serve-model", "--config", path.to_str().unwrap()],
    ))
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .kill_on_drop(true)
    .spawn()
    .unwrap();
    let pid = child.id().unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = client.get(format!("{base}/v2/health/ready")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "the server never got ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("{base}/v2/models/slow/infer");

    // Rounds of 64 concurrent slow requests: a few queue, the rest are refused at once; the
    // memory after the last round is that after the first, give or take.
    let mut after_first = 0;
    for round in 0..5 {
        let answers =
            join_all((0..64).map(|_| common::post(&client, &url, slow_request(40_000)))).await;
        let ok = answers.iter().filter(|(s, _)| *s == 200).count();
        let refused = answers.iter().filter(|(s, _)| *s == 429).count();
        assert_eq!(ok + refused, 64, "{answers:?}");
        assert!(ok >= 2 && refused >= 16, "{ok} answered, {refused} refused");
        if round == 0 {
            after_first = rss_kib(pid);
        }
    }
    let after_last = rss_kib(pid);
    assert!(
        after_last < after_first + 32 * 1024,
        "RSS grew from {after_first} KiB to {after_last} KiB over four floods"
    );
    let (status, body) = common::post(&client, &url, slow_request(1)).await;
    assert_eq!(status, 200, "recovered: {body}");

    // SIGTERM with requests in flight: they finish, then the process exits cleanly.
    let in_flight: Vec<_> = (0..2)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { common::post(&client, &url, slow_request(1_000_000)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    for r in in_flight {
        let (status, body) = r.await.unwrap();
        assert_eq!(
            status, 200,
            "a request in flight at SIGTERM finishes: {body}"
        );
    }
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("the server exits after SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    );
}

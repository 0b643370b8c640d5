//! `ferry promote`, `rollback`, `status` and `down ENV` end to end, through the ferry binary:
//! the serving image built and pushed to a real registry on 127.0.0.1 (Debian's
//! docker-registry), and applied to the fake API server of `common::fake_api` with its store,
//! which keeps what is applied and plays the Deployment controller (a rollout completes, or, for
//! an image a test says does not pull, gets stuck in ImagePullBackOff). Needs Docker and ONNX
//! Runtime; each test has its own registry, fake cluster and project, and removes the images it
//! made.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

mod common;
use common::fake_api::{FakeApi, Seen};
use common::registry::{MANIFEST_TYPES, Registry};

/// The value of the one secret variable: never on disk or in any output of ferry's.
const SECRET: &str = "planted-7f3a9c-secret-value";

/// A project serving the churn fixture, its own registry and its own fake cluster.
struct Promotion {
    name: String,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    fake: FakeApi,
    registry: Registry,
    /// Everything ferry printed, stdout and stderr.
    printed: Mutex<String>,
}

impl Promotion {
    /// None (after saying so) without docker-registry.
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
  production:
    target: kubernetes
    namespace: {name}-prod
    registry: {host}/ml
    from: staging
    protected: true
    secrets: .env.production
",
                host = registry.host
            ),
        )
        .unwrap();
        for env in ["staging", "production"] {
            std::fs::write(
                root.join(format!(".env.{env}")),
                format!("DB_PASSWORD={SECRET}\n"),
            )
            .unwrap();
        }
        let kubeconfig = fake.kubeconfig();
        let p = Promotion {
            name: name.to_string(),
            dir,
            kubeconfig,
            fake,
            registry,
            printed: Mutex::new(String::new()),
        };
        p.train(6);
        Some(p)
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A retrained model: the churn fixture with another horizon in its description, so the
    /// file (and the image) differs and the model still loads.
    fn train(&self, months: u8) {
        assert!(months < 10);
        let mut bytes = std::fs::read(common::fixture("churn.onnx")).unwrap();
        let at = bytes
            .windows(15)
            .position(|w| w == b"within 6 months")
            .expect("the fixture's doc string");
        bytes[at + 7] = b'0' + months;
        std::fs::write(self.model(), bytes).unwrap();
    }

    fn model(&self) -> PathBuf {
        self.root().join("artifacts/model.onnx")
    }

    async fn ferry(&self, args: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::from(common::ferry_cmd(self.root(), args));
        let out = cmd
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .await
            .unwrap();
        let mut printed = self.printed.lock().unwrap();
        printed.push_str(&String::from_utf8_lossy(&out.stdout));
        printed.push_str(&String::from_utf8_lossy(&out.stderr));
        out
    }

    /// `ferry ARGS --json`, which must succeed; its result.
    async fn ferry_json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let out = self.ferry(&args).await;
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    fn lock(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.root().join("ferry.lock")).unwrap())
            .unwrap()
    }

    /// `ferry promote staging`, which must succeed; the image it promoted.
    async fn promote_staging(&self) -> String {
        let done = self.ferry_json(&["promote", "staging"]).await;
        done["image"].as_str().unwrap().to_string()
    }

    fn lock_text(&self) -> String {
        std::fs::read_to_string(self.root().join("ferry.lock")).unwrap()
    }

    /// The revisions of `env` as ferry.lock records them; the copy in .ferry/promotions says
    /// the same.
    fn revisions(&self, env: &str) -> Vec<Value> {
        let revisions = self.lock()["environments"][env]["promotions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let copy =
            std::fs::read_to_string(self.root().join(format!(".ferry/promotions/{env}.json")))
                .map(|t| serde_json::from_str::<Value>(&t).unwrap());
        if let Ok(copy) = copy {
            assert_eq!(copy["revisions"].as_array().unwrap(), &revisions);
        }
        revisions
    }

    fn repository(&self) -> String {
        format!("{}/ml/{}-serve", self.registry.host, self.name)
    }

    /// Every tag of the serving repository in the registry, with the digest the registry
    /// names it by (Docker-Content-Digest).
    async fn pushed(&self) -> Vec<(String, String)> {
        let client = reqwest::Client::new();
        let base = format!("http://{}/v2/ml/{}-serve", self.registry.host, self.name);
        let list: Value = client
            .get(format!("{base}/tags/list"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut out = Vec::new();
        for tag in list["tags"].as_array().into_iter().flatten() {
            let tag = tag.as_str().unwrap();
            let head = client
                .head(format!("{base}/manifests/{tag}"))
                .header("Accept", MANIFEST_TYPES)
                .send()
                .await
                .unwrap();
            assert_eq!(head.status(), 200);
            let digest = head.headers()["docker-content-digest"].to_str().unwrap();
            out.push((tag.to_string(), digest.to_string()));
        }
        out
    }

    /// The image, by digest, of the one tag pushed since `before`.
    async fn newly_pushed(&self, before: &[(String, String)]) -> String {
        let new: Vec<(String, String)> = self
            .pushed()
            .await
            .into_iter()
            .filter(|t| !before.contains(t))
            .collect();
        assert_eq!(new.len(), 1, "{new:?}");
        format!("{}@{}", self.repository(), new[0].1)
    }

    fn namespace(&self, env: &str) -> String {
        match env {
            "production" => format!("{}-prod", self.name),
            _ => format!("{}-{env}", self.name),
        }
    }

    fn deployment_path(&self, env: &str) -> String {
        format!(
            "/apis/apps/v1/namespaces/{}/deployments/{}",
            self.namespace(env),
            self.name
        )
    }

    /// The images of the Deployments written (not dry runs) to `env` since request `since`.
    fn deployments_written(&self, env: &str, since: usize) -> Vec<String> {
        let path = self.deployment_path(env);
        self.fake.seen()[since..]
            .iter()
            .filter(|s| s.method == "PATCH" && s.path == path && s.is_write())
            .map(|s| image_of(s.body.as_ref().unwrap()))
            .collect()
    }

    /// The image the stored Deployment runs.
    fn running(&self, env: &str) -> String {
        image_of(&self.fake.object(&self.deployment_path(env)).unwrap())
    }

    fn assert_no_secret_leaked(&self) {
        let encoded = base64(SECRET);
        let paths = ["staging", "production"]
            .map(|env| self.root().join(format!(".ferry/promotions/{env}.json")));
        for path in paths.iter().chain([&self.root().join("ferry.lock")]) {
            if let Ok(text) = std::fs::read_to_string(path) {
                assert!(
                    !text.contains(SECRET) && !text.contains(&encoded),
                    "{}",
                    path.display()
                );
            }
        }
        // Nor in any layer of the serving images made for this project.
        let listed = common::docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        for image in listed
            .lines()
            .filter(|l| l.starts_with(&format!("ferry/{}-serve:", self.name)))
        {
            assert!(!common::image_holds(image, SECRET.as_bytes()), "{image}");
            assert!(!common::image_holds(image, encoded.as_bytes()), "{image}");
        }
        let printed = self.printed.lock().unwrap();
        assert!(!printed.contains(SECRET), "{printed}");
        assert!(!printed.contains(&encoded), "{printed}");
    }
}

impl Drop for Promotion {
    /// Removes, by name, the images made for this project: the local serving tags and the
    /// registry's.
    fn drop(&mut self) {
        let repos = [format!("ferry/{}-serve", self.name), self.repository()];
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

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn image_of(deployment: &Value) -> String {
    deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string()
}

fn base64(s: &str) -> String {
    serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec()))
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

fn sha256_hex(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// Everything a command printed, stdout then stderr.
fn printed(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The numbers of every "revision N" in `text` that is ferry's: the Deployment's own count is
/// named "Deployment revision N".
fn ferry_revisions(text: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for (at, _) in text.match_indices("revision ") {
        if text[..at].ends_with("Deployment ") {
            continue;
        }
        let digits: String = text[at + "revision ".len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n) = digits.parse() {
            out.push(n);
        }
    }
    out.sort();
    out.dedup();
    out
}

fn is_dry_run(s: &Seen) -> bool {
    s.q("dryRun") == Some("All")
}

#[tokio::test]
async fn promote_applies_the_registry_digest_and_records_it() {
    let Some(p) = Promotion::start("promote-first").await else {
        return;
    };
    let done = p.ferry_json(&["promote", "staging"]).await;
    assert_eq!(done["revision"], 1);
    assert_eq!(done["dry_run"], false);
    let ns = p.namespace("staging");
    assert_eq!(done["namespace"], ns.as_str());

    // The image is named by the digest the registry gives the one tag pushed.
    let image = p.newly_pushed(&[]).await;
    assert_eq!(done["image"], image.as_str());
    assert!(image.starts_with(&format!(
        "127.0.0.1:{}/ml/promote-first-serve@sha256:",
        p.registry.host.rsplit_once(':').unwrap().1
    )));

    // On the wire: the Deployment written once, naming that image.
    assert_eq!(p.deployments_written("staging", 0), vec![image.clone()]);
    assert_eq!(p.running("staging"), image);

    // Every object passed a dry run before it was written, and the dry runs came before the
    // first write, but for the one write that must precede them: the namespace did not exist,
    // and the objects in it can only be checked once it does.
    let seen = p.fake.seen();
    let patches: Vec<&Seen> = seen.iter().filter(|s| s.method == "PATCH").collect();
    let ns_path = format!("/api/v1/namespaces/{ns}");
    let order: Vec<(String, bool)> = patches
        .iter()
        .map(|s| {
            let short = s.path.rsplit_once("/namespaces/").unwrap().1.to_string();
            (short, is_dry_run(s))
        })
        .collect();
    let name = &p.name;
    let objects = [
        format!("{ns}/configmaps/{name}-serving"),
        format!("{ns}/secrets/{name}-secrets"),
        format!("{ns}/services/{name}"),
        format!("{ns}/deployments/{name}"),
    ];
    let mut expected = vec![(ns.clone(), true), (ns.clone(), false)];
    expected.extend(objects.iter().map(|o| (o.clone(), true)));
    expected.extend(objects.iter().map(|o| (o.clone(), false)));
    assert_eq!(order, expected);
    let last_dry_run = seen.iter().rposition(is_dry_run).unwrap();
    let writes_before: Vec<&str> = seen[..last_dry_run]
        .iter()
        .filter(|s| s.is_write())
        .map(|s| s.path.as_str())
        .collect();
    assert_eq!(writes_before, vec![ns_path.as_str()]);
    // What came back is what was applied: every object is stored, nothing was pruned.
    assert!(!seen.iter().any(|s| s.method == "DELETE"));
    let outcomes: Vec<(&str, &str)> = done["applied"]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["kind"].as_str().unwrap(), o["change"].as_str().unwrap()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("Namespace", "created"),
            ("ConfigMap", "created"),
            ("Secret", "created"),
            ("Service", "created"),
            ("Deployment", "created"),
        ]
    );

    // The secret went to the cluster, and nowhere else.
    let secret = seen
        .iter()
        .find(|s| s.is_write() && s.path.ends_with(&format!("/secrets/{name}-secrets")))
        .unwrap();
    assert_eq!(
        secret.body.as_ref().unwrap()["data"]["DB_PASSWORD"],
        base64(SECRET)
    );

    // The record.
    let revisions = p.revisions("staging");
    assert_eq!(revisions.len(), 1);
    let r = &revisions[0];
    assert_eq!(r["revision"], 1);
    assert_eq!(r["action"], "promote");
    assert_eq!(r["image"], image.as_str());
    assert_eq!(r["namespace"], ns.as_str());
    let deployment = p.fake.object(&p.deployment_path("staging")).unwrap();
    let spec_hash = r["spec_hash"].as_str().unwrap();
    assert!(spec_hash.starts_with("sha256:"), "{spec_hash}");
    assert_eq!(
        deployment["metadata"]["annotations"]["ferry.dev/spec-hash"],
        spec_hash
    );
    let models = r["models"].as_object().unwrap();
    assert_eq!(models.len(), 1, "{models:?}");
    assert_eq!(
        models.values().next().unwrap(),
        &Value::String(sha256_hex(&p.model()))
    );
    assert_eq!(r["secret_names"], serde_json::json!(["DB_PASSWORD"]));
    p.assert_no_secret_leaked();
}

#[tokio::test]
async fn a_failed_rollout_puts_the_previous_revision_back_unless_told_not_to() {
    let Some(p) = Promotion::start("promote-rollout").await else {
        return;
    };
    let first = p.ferry_json(&["promote", "staging"]).await;
    let image1 = first["image"].as_str().unwrap().to_string();

    // A retrained model: a new image, revision 2; the namespace exists now, so every dry run
    // precedes the first write.
    p.train(7);
    let before = p.pushed().await;
    // A dry run first: it says what would change and writes nothing (the API server answers a
    // dry run with the resourceVersion unchanged, so only the content can tell).
    let mark = p.fake.seen().len();
    let dry = p.ferry_json(&["promote", "staging", "--dry-run"]).await;
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert!(dry["revision"].is_null(), "{dry}");
    let change = |kind: &str| {
        dry["applied"]["objects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["kind"] == kind)
            .map(|o| o["change"].clone())
    };
    assert_eq!(change("Deployment"), Some("configured".into()), "{dry}");
    assert_eq!(change("ConfigMap"), Some("configured".into()), "{dry}");
    // Every object carries the version and spec-hash labels, so all of them change but the
    // Namespace.
    assert_eq!(change("Service"), Some("configured".into()), "{dry}");
    assert_eq!(change("Namespace"), Some("unchanged".into()), "{dry}");
    assert!(!p.fake.seen()[mark..].iter().any(Seen::is_write));
    assert_eq!(p.revisions("staging").len(), 1);
    let mark = p.fake.seen().len();
    let second = p.ferry_json(&["promote", "staging"]).await;
    let image2 = p.newly_pushed(&before).await;
    assert_ne!(image2, image1);
    assert_eq!(second["revision"], 2);
    assert_eq!(second["image"], image2.as_str());
    let seen = p.fake.seen();
    let first_write = mark + seen[mark..].iter().position(Seen::is_write).unwrap();
    let last_dry_run = seen.iter().rposition(is_dry_run).unwrap();
    assert!(mark < last_dry_run && last_dry_run < first_write);
    assert_eq!(p.deployments_written("staging", mark), vec![image2.clone()]);

    // The next image does not pull: the rollout fails and revision 2 is put back.
    p.train(8);
    let pullable = [image1.clone(), image2.clone()];
    p.fake
        .pulls(move |image| pullable.iter().any(|i| i == image));
    let before = p.pushed().await;
    let mark = p.fake.seen().len();
    let out = p.ferry(&["promote", "staging", "--timeout", "3s"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let image3 = p.newly_pushed(&before).await;
    assert!(
        err.contains(
            "the rollout in staging failed, and ferry put back revision 2 (recorded as revision 3)"
        ),
        "{err}"
    );
    assert!(
        err.contains("cannot pull its image (ImagePullBackOff)"),
        "{err}"
    );
    assert!(
        err.contains(&format!("hint: check that {image3} exists")),
        "{err}"
    );
    assert_eq!(
        p.deployments_written("staging", mark),
        vec![image3.clone(), image2.clone()]
    );
    assert_eq!(p.running("staging"), image2);
    let revisions = p.revisions("staging");
    assert_eq!(revisions.len(), 3);
    let r = &revisions[2];
    assert_eq!(r["revision"], 3);
    assert_eq!(r["action"], "rollback");
    assert_eq!(r["rolled_back_to"], 2);
    assert_eq!(r["image"], image2.as_str());

    // With --no-rollback the failed rollout stays as it is, and nothing is recorded.
    let recorded = p.lock_text();
    let mark = p.fake.seen().len();
    let out = p
        .ferry(&["promote", "staging", "--timeout", "3s", "--no-rollback"])
        .await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot pull its image (ImagePullBackOff)"),
        "{err}"
    );
    assert!(!err.contains("put back"), "{err}");
    assert_eq!(p.deployments_written("staging", mark), vec![image3.clone()]);
    assert_eq!(p.running("staging"), image3);
    assert_eq!(p.lock_text(), recorded);

    // Ctrl-C while the rollout is watched: a promotion that did not finish, so the revision
    // that ran before (3, image 2) is put back and recorded.
    let mark = p.fake.seen().len();
    let mut cmd = common::ferry_cmd(p.root(), &["promote", "staging", "--timeout", "120s"]);
    cmd.env("KUBECONFIG", &p.kubeconfig)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = tokio::process::Command::from(cmd).spawn().unwrap();
    let started = Instant::now();
    while p.deployments_written("staging", mark).is_empty() {
        assert!(started.elapsed() < Duration::from_secs(120), "no apply");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().await.unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("interrupted while waiting for the rollout in staging"),
        "{err}"
    );
    assert!(
        err.contains("ferry put back revision 3 (recorded as revision 4)"),
        "{err}"
    );
    assert_eq!(
        p.deployments_written("staging", mark),
        vec![image3.clone(), image2.clone()]
    );
    assert_eq!(p.running("staging"), image2);
    let revisions = p.revisions("staging");
    assert_eq!(revisions.len(), 4);
    assert_eq!(revisions[3]["action"], "rollback");
    assert_eq!(revisions[3]["rolled_back_to"], 3);
    p.assert_no_secret_leaked();
}

#[tokio::test]
async fn rollback_reapplies_the_revision_before_and_status_reports_drift() {
    let Some(p) = Promotion::start("promote-back").await else {
        return;
    };
    let image1 = p.promote_staging().await;
    p.train(7);
    let image2 = p.promote_staging().await;
    assert_ne!(image1, image2);

    let status = p.ferry_json(&["status", "staging"]).await;
    assert_eq!(status["revision"], 2);
    assert_eq!(status["drift"], serde_json::json!([]));
    assert_eq!(
        status["running"]["deployments"][0]["images"],
        serde_json::json!([image2])
    );

    let mark = p.fake.seen().len();
    let back = p.ferry_json(&["rollback", "staging"]).await;
    assert_eq!(back["revision"], 3);
    assert_eq!(back["image"], image1.as_str());
    assert_eq!(p.deployments_written("staging", mark), vec![image1.clone()]);
    assert_eq!(p.running("staging"), image1);
    let revisions = p.revisions("staging");
    assert_eq!(revisions.len(), 3);
    assert_eq!(revisions[2]["action"], "rollback");
    assert_eq!(revisions[2]["rolled_back_to"], 1);
    assert_eq!(revisions[2]["image"], image1.as_str());
    // The Secret was filled again from the secrets file: its values are not in the record.
    let secret = p.fake.seen()[mark..]
        .iter()
        .find(|s| s.is_write() && s.path.ends_with("/secrets/promote-back-secrets"))
        .cloned()
        .unwrap();
    assert_eq!(secret.body.unwrap()["data"]["DB_PASSWORD"], base64(SECRET));

    let status = p.ferry_json(&["status", "staging"]).await;
    assert_eq!(status["revision"], 3);
    assert_eq!(status["promoted_image"], image1.as_str());
    assert_eq!(status["drift"], serde_json::json!([]));

    // A hand edit: the Deployment runs another image than the latest revision.
    p.fake.edit(&p.deployment_path("staging"), |d| {
        d["spec"]["template"]["spec"]["containers"][0]["image"] = image2.clone().into();
    });
    let status = p.ferry_json(&["status", "staging"]).await;
    assert_eq!(
        status["drift"],
        serde_json::json!([format!(
            "the Deployment runs {image2}, but revision 3 promoted {image1} (ferry.lock)"
        )])
    );
    // And a hand edit of the serving config.
    let config_map = format!(
        "/api/v1/namespaces/{}/configmaps/promote-back-serving",
        p.namespace("staging")
    );
    p.fake.edit(&config_map, |c| {
        c["data"]["serving.json"] = "{\"edited\": true}".into();
    });
    let status = p.ferry_json(&["status", "staging"]).await;
    assert_eq!(
        status["drift"][1],
        "the ConfigMap promote-back-serving was changed in the cluster: its content is not what revision 3 applied (ferry.lock)"
    );

    // ferry.lock says what runs: revision 1's model again, put back by a rollback; the model
    // on disk (revision 2's) is a change not promoted yet.
    let lock = p.lock();
    let staging = &lock["environments"]["staging"];
    let promotions = staging["promotions"].as_array().unwrap();
    assert_eq!(promotions.len(), 3);
    assert_eq!(promotions[2]["action"], "rollback");
    assert_eq!(promotions[2]["image"], image1.as_str());
    assert_eq!(staging["images"]["serving"]["digest"], image1.as_str());
    p.train(6);
    let six = format!("sha256:{}", sha256_hex(&p.model()));
    assert_eq!(staging["models"]["artifacts/model.onnx"], six.as_str());
    p.train(7);
    let changes = &status["changes"];
    assert_eq!(changes.as_array().unwrap().len(), 1, "{changes}");
    assert_eq!(changes[0]["what"], "model artifacts/model.onnx");
    p.assert_no_secret_leaked();
}

#[tokio::test]
async fn production_takes_what_staging_runs_or_nothing() {
    let Some(p) = Promotion::start("promote-prod").await else {
        return;
    };
    let staged = p.ferry_json(&["promote", "staging"]).await;
    let image = staged["image"].as_str().unwrap().to_string();

    // Protected, no --yes, no terminal to ask on: refused before the cluster is even asked.
    let mark = p.fake.seen().len();
    let started = Instant::now();
    let out = p.ferry(&["promote", "production"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("production is protected"), "{err}");
    assert!(err.contains("--yes"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(p.fake.seen().len(), mark);

    // With --yes: staging's image, by the same digest.
    let done = p.ferry_json(&["promote", "production", "--yes"]).await;
    assert_eq!(done["image"], image.as_str());
    assert_eq!(done["namespace"], p.namespace("production").as_str());
    assert_eq!(
        p.deployments_written("production", mark),
        vec![image.clone()]
    );
    let revisions = p.revisions("production");
    assert_eq!(revisions.len(), 1);
    assert_eq!(revisions[0]["from"], "staging");
    assert_eq!(revisions[0]["image"], image.as_str());

    // The model changed but staging was not promoted: production refuses, before building or
    // pushing anything, and names the model.
    let lock_before = p.lock();
    let pushed_before = p.pushed().await;
    p.train(7);
    let mark = p.fake.seen().len();
    let out = p.ferry(&["promote", "production", "--yes"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("production takes what staging runs, but the project changed since staging was promoted (revision 1)"),
        "{err}"
    );
    assert!(err.contains("model artifacts/model.onnx: sha256:"), "{err}");
    assert!(err.contains("--rebuild"), "{err}");
    let prod_ns = format!("/namespaces/{}", p.namespace("production"));
    let touched: Vec<Seen> = p.fake.seen()[mark..]
        .iter()
        .filter(|s| s.path.contains(&prod_ns))
        .cloned()
        .collect();
    assert!(touched.is_empty(), "{touched:#?}");
    assert_eq!(p.pushed().await, pushed_before, "nothing was pushed");
    assert_eq!(p.running("production"), image);
    assert_eq!(p.revisions("production").len(), 1);
    assert_eq!(p.lock(), lock_before, "a refused promotion changes no lock");

    // A spec field changed (in the base spec, so staging resolves differently now): named too.
    p.train(6);
    let spec = std::fs::read_to_string(p.root().join("ferry.yaml")).unwrap();
    std::fs::write(
        p.root().join("ferry.yaml"),
        spec.replace(
            "  model: artifacts/model.onnx\n",
            "  model: artifacts/model.onnx\n  batching: { max_batch_size: 16, max_delay_ms: 1 }\n",
        ),
    )
    .unwrap();
    let out = p.ferry(&["promote", "production", "--yes"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("spec field serve.batching.max_batch_size: (unset) → 16"),
        "{err}"
    );
    assert!(
        !err.contains("model artifacts"),
        "the model is staging's again: {err}"
    );
    let diff = p.ferry(&["diff", "staging", "production"]).await;
    assert!(diff.status.success(), "{}", stderr(&diff));

    // --rebuild takes the project as it is.
    let done = p
        .ferry_json(&["promote", "production", "--yes", "--rebuild"])
        .await;
    assert_ne!(done["image"], image.as_str());
    assert_eq!(p.revisions("production").len(), 2);
    let lock = p.lock();
    let production = &lock["environments"]["production"];
    assert_eq!(production["promotions"].as_array().unwrap().len(), 2);
    assert_eq!(production["promotions"][1]["from"], "staging");
    assert_eq!(production["spec"]["serve.batching.max_batch_size"], 16);
    // Staging still records what it runs: the spec before the edit.
    assert!(
        lock["environments"]["staging"]["spec"]
            .get("serve.batching.max_batch_size")
            .is_none()
    );
    p.assert_no_secret_leaked();
}

#[tokio::test]
async fn down_removes_ferrys_objects_and_leaves_the_namespace() {
    let Some(p) = Promotion::start("promote-down").await else {
        return;
    };
    p.ferry_json(&["promote", "staging"]).await;
    let ns = p.namespace("staging");
    let name = &p.name;
    let in_ns = |paths: Vec<String>| -> Vec<String> {
        paths
            .into_iter()
            .filter(|x| x.contains(&format!("/namespaces/{ns}")))
            .collect()
    };
    let ns_path = format!("/api/v1/namespaces/{ns}");
    let objects = vec![
        format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}"),
        format!("/api/v1/namespaces/{ns}/services/{name}"),
        format!("/api/v1/namespaces/{ns}/secrets/{name}-secrets"),
        format!("/api/v1/namespaces/{ns}/configmaps/{name}-serving"),
    ];
    let mut stored = in_ns(p.fake.paths());
    stored.sort();
    let mut all = objects.clone();
    all.push(ns_path.clone());
    all.sort();
    assert_eq!(stored, all);

    let mark = p.fake.seen().len();
    let down = p.ferry_json(&["down", "staging", "--yes"]).await;
    let pruned: Vec<(&str, &str)> = down["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["kind"].as_str().unwrap(), o["change"].as_str().unwrap()))
        .collect();
    assert_eq!(
        pruned,
        vec![
            ("Deployment", "pruned"),
            ("Service", "pruned"),
            ("Secret", "pruned"),
            ("ConfigMap", "pruned"),
        ]
    );
    let seen = p.fake.seen();
    let deletes: Vec<&str> = seen[mark..]
        .iter()
        .filter(|s| s.method == "DELETE")
        .map(|s| s.path.as_str())
        .collect();
    assert_eq!(deletes, objects);
    assert!(!seen[mark..].iter().any(|s| s.method == "PATCH"));
    assert_eq!(in_ns(p.fake.paths()), vec![ns_path]);

    // The record stays; status says nothing runs of it.
    assert_eq!(p.revisions("staging").len(), 1);
    let status = p.ferry_json(&["status", "staging"]).await;
    assert_eq!(
        status["drift"],
        serde_json::json!([format!(
            "revision 1 was promoted (ferry.lock), but no Deployment of it runs in {ns}"
        )])
    );
    p.assert_no_secret_leaked();
}

#[tokio::test]
async fn a_failed_promotion_its_put_back_and_status_speak_of_the_same_revisions() {
    let Some(p) = Promotion::start("revs-putback").await else {
        return;
    };
    let image1 = p.promote_staging().await;
    p.train(7);
    let pullable = image1.clone();
    p.fake.pulls(move |image| image == pullable);
    let out = p.ferry(&["promote", "staging", "--timeout", "3s"]).await;
    let text = printed(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("putting back revision 1 ("), "{text}");
    assert!(
        text.contains("ferry put back revision 1 (recorded as revision 2)"),
        "{text}"
    );
    // The put-back rollout's line gives the Deployment's own count, named as such: the
    // Deployment was written three times (revision 1, the failed image, revision 1 again).
    assert!(
        text.contains("rolled out: 1 ready, Deployment revision 3"),
        "{text}"
    );
    assert_eq!(ferry_revisions(&text), vec![1, 2], "{text}");
    assert_eq!(p.running("staging"), image1);

    let out = p.ferry(&["status", "staging"]).await;
    let text = printed(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "promoted   revision 2 (revision 1 put back): {image1} (ferry.lock)"
        )),
        "{text}"
    );
    assert!(text.contains("drift      none"), "{text}");
    assert_eq!(ferry_revisions(&text), vec![1, 2], "{text}");
    let status = p.ferry_json(&["status", "staging"]).await;
    assert_eq!(status["revision"], 2);
    assert_eq!(status["rolled_back_to"], 1);

    let revisions = p.revisions("staging");
    let actions: Vec<(u64, &str, Option<u64>)> = revisions
        .iter()
        .map(|r| {
            (
                r["revision"].as_u64().unwrap(),
                r["action"].as_str().unwrap(),
                r["rolled_back_to"].as_u64(),
            )
        })
        .collect();
    assert_eq!(actions, [(1, "promote", None), (2, "rollback", Some(1))]);
    p.assert_no_secret_leaked();
}

#[tokio::test]
async fn each_rollback_goes_one_revision_further_back() {
    let Some(p) = Promotion::start("revs-back").await else {
        return;
    };
    let mut images = Vec::new();
    for months in [6, 7, 8] {
        p.train(months);
        images.push(p.promote_staging().await);
    }
    assert_eq!(p.revisions("staging").len(), 3);

    // Revision 4 puts 2 back; revision 5, what ran before 2: revision 1.
    for (new, back) in [(4u32, 2u32), (5, 1)] {
        let image = &images[back as usize - 1];
        let out = p.ferry(&["rollback", "staging"]).await;
        let text = printed(&out);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains(&format!(
                "revision {new} of staging (revision {back} put back): {image}"
            )),
            "{text}"
        );
        assert_eq!(ferry_revisions(&text), vec![back, new], "{text}");
        assert_eq!(&p.running("staging"), image);
    }

    let out = p.ferry(&["status", "staging"]).await;
    let text = printed(&out);
    assert!(
        text.contains(&format!(
            "promoted   revision 5 (revision 1 put back): {} (ferry.lock)",
            images[0]
        )),
        "{text}"
    );

    // Nothing ran before revision 1; the cluster is as recorded, so no word of a hand edit.
    let mark = p.fake.seen().len();
    let out = p.ferry(&["rollback", "staging"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "staging has 5 recorded revision(s): nothing to roll back to\n  hint: `ferry status staging` shows what runs"
        ),
        "{err}"
    );
    assert!(!p.fake.seen()[mark..].iter().any(Seen::is_write));
    let rolled: Vec<Option<u64>> = p
        .revisions("staging")
        .iter()
        .map(|r| r["rolled_back_to"].as_u64())
        .collect();
    assert_eq!(rolled, [None, None, None, Some(2), Some(1)]);
}

#[tokio::test]
async fn a_rollback_with_nothing_before_a_hand_edit_says_how_to_reapply() {
    let Some(p) = Promotion::start("revs-edit").await else {
        return;
    };
    let image1 = p.promote_staging().await;
    let edited = format!("{}/ml/hand-edited:1", p.registry.host);
    p.fake.edit(&p.deployment_path("staging"), |d| {
        d["spec"]["template"]["spec"]["containers"][0]["image"] = edited.clone().into();
    });

    let mark = p.fake.seen().len();
    let out = p.ferry(&["rollback", "staging"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("staging has 1 recorded revision(s): nothing to roll back to, and the cluster is not what revision 1 applied"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "    the Deployment runs {edited}, but revision 1 promoted {image1} (ferry.lock)"
        )),
        "{err}"
    );
    assert!(
        err.contains(
            "hint: `ferry promote staging --force-conflicts` applies revision 1's release again"
        ),
        "{err}"
    );
    assert!(!p.fake.seen()[mark..].iter().any(Seen::is_write));

    // What the hint says: the project is what revision 1 was made from, so the promotion puts
    // revision 1's image back, as revision 2.
    let done = p
        .ferry_json(&["promote", "staging", "--force-conflicts"])
        .await;
    assert_eq!(done["revision"], 2);
    assert_eq!(done["image"], image1.as_str());
    assert_eq!(p.running("staging"), image1);
    let status = p.ferry_json(&["status", "staging"]).await;
    assert_eq!(status["drift"], serde_json::json!([]));
    p.assert_no_secret_leaked();
}

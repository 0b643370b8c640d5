//! `ferry promote ENV`, `ferry rollback ENV`, `ferry status ENV` and `ferry down ENV`: a
//! release applied with server-side apply, watched until it runs, recorded; a failed rollout
//! put back to the revision that ran before.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use serde::Serialize;

use super::history::{self, History};
use super::{ClusterError, Prepared, namespace, prepare, require_cluster};
use crate::kube::apply::{self, Applied, ApplyOptions};
use crate::kube::render::{self, Manifests, Object};
use crate::kube::rollout::{self, ClusterState};
use crate::kube::{Secrets, client};
use crate::lock::{self, ImageRef, Lock, Promotion, Snapshot};
use crate::runs::now_rfc3339;
use crate::spec::{Project, TargetKind};
use crate::ui::Ui;

#[derive(Clone, Debug)]
pub struct PromoteOptions {
    /// Skip the question a protected environment asks.
    pub yes: bool,
    pub force_conflicts: bool,
    /// Leave a failed rollout as it is instead of re-applying the previous revision.
    pub no_rollback: bool,
    /// Check everything with the API server, change nothing.
    pub dry_run: bool,
    pub timeout: Duration,
    /// Promote the project as it is, even where it is not what the source environment runs.
    pub rebuild: bool,
    /// Promote models no checked run produced (refused for protected environments).
    pub unchecked: bool,
}

/// What a promotion or rollback did.
#[derive(Clone, Debug, Serialize)]
pub struct Promoted {
    pub env: String,
    pub revision: Option<u32>,
    /// A rollback's: the revision it put back under the new number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolled_back_to: Option<u32>,
    pub image: String,
    pub namespace: String,
    pub applied: Applied,
    pub dry_run: bool,
}

/// Where what goes into `env` comes from: the environment written before it (or its `from`).
pub fn source_env(project: &Project, env: &str) -> Option<String> {
    if let Some(from) = project.spec.cluster.as_ref().and_then(|c| c.from.clone()) {
        return Some(from);
    }
    let i = project.environments.iter().position(|e| e == env)?;
    i.checked_sub(1).map(|j| project.environments[j].clone())
}

/// The release a promotion applies, and the source environment it takes it from.
///
/// With a source cluster environment (`from`, or the one written before), the project must be
/// what that environment runs: its spec as resolved for the source, the files it names and the
/// models must match what `ferry.lock` recorded at the source's promotion (checked before
/// anything is built), and the serving image built from them must be the very image the source
/// runs, by digest. `rebuild` takes the project as it is instead.
async fn release_for(
    project: &Project,
    env: &str,
    client: &kube::Client,
    rebuild: bool,
    ui: &Ui,
) -> Result<(Prepared, Option<String>), ClusterError> {
    let source = source_env(project, env);
    let mut expected: Option<(String, String, String)> = None;
    if let Some(s) = &source {
        let sp = Project::load(&project.file, Some(s))?;
        if sp.spec.target == TargetKind::Kubernetes && !rebuild {
            let lock = Lock::load(project)?;
            let history = History::of(&lock, &project.root, s)?;
            match lock.environments.get(s) {
                Some(entry) if entry.spec_hash.is_some() => {
                    let latest = history.latest();
                    let changes = lock::changes(entry, &Snapshot::of(&sp)?);
                    if !changes.is_empty() {
                        return Err(ClusterError::SourceChanged {
                            env: env.to_string(),
                            from: s.clone(),
                            revision: latest.map_or("?".into(), |p| p.revision.to_string()),
                            changes,
                        });
                    }
                    if let Some(p) = latest {
                        expected = Some((s.clone(), p.image.clone(), entry.ferry.clone()));
                    }
                }
                // No lock entry (promoted before locks): a record of the earlier format on this
                // machine still says what runs there.
                _ => {
                    if let Some(rev) = history.latest() {
                        expected = Some((s.clone(), rev.image.clone(), rev.ferry.clone()));
                    }
                }
            }
        }
    }
    let prepared = prepare(project, Ok(client), ui).await?;
    if let Some((from, source_image, ferry)) = expected {
        // The source runs an image by digest; the same digest must run here.
        let digest = |r: &str| r.rsplit_once('@').map(|x| x.1.to_string());
        if digest(&source_image) != digest(&prepared.release.image) {
            return Err(ClusterError::SourceDiffers {
                env: env.to_string(),
                from,
                source_image,
                image: prepared.release.image.clone(),
                ferry,
            });
        }
    }
    Ok((prepared, source))
}

/// Asks before changing a protected environment; refuses without a terminal to ask on.
fn confirm(project: &Project, env: &str, what: &str, yes: bool) -> Result<(), ClusterError> {
    let protected = project.spec.cluster.as_ref().is_some_and(|c| c.protected);
    if !protected || yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(ClusterError::NeedsConfirmation {
            env: env.to_string(),
        });
    }
    eprint!(
        "{what} in {env} (namespace {}, context {})? [y/N] ",
        project
            .spec
            .namespace
            .as_deref()
            .unwrap_or(&project.spec.name),
        project.spec.context.as_deref().unwrap_or("current")
    );
    let mut answer = String::new();
    let _ = stdin.read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(ClusterError::Declined)
    }
}

/// Fails at once where `confirm` would fail later: a protected environment, no `--yes` and no
/// terminal to ask on.
fn refuse_unconfirmable(
    project: &Project,
    env: &str,
    opts: &PromoteOptions,
) -> Result<(), ClusterError> {
    let protected = project.spec.cluster.as_ref().is_some_and(|c| c.protected);
    if protected && !opts.yes && !opts.dry_run && !std::io::stdin().is_terminal() {
        return Err(ClusterError::NeedsConfirmation {
            env: env.to_string(),
        });
    }
    Ok(())
}

/// Refuses models no successful, checked run produced, where the pipeline declares checks;
/// `--unchecked` lets them through with a warning, except into a protected environment.
fn gate(
    project: &Project,
    env: &str,
    snapshot: &Snapshot,
    unchecked: bool,
    ui: &Ui,
) -> Result<(), ClusterError> {
    let models = crate::pipeline::gate::unchecked(
        &project.spec.steps(),
        &snapshot.models,
        &crate::runs::list(&project.root),
    );
    if models.is_empty() {
        return Ok(());
    }
    let protected = project.spec.cluster.as_ref().is_some_and(|c| c.protected);
    if unchecked && !protected {
        for m in &models {
            ui.warn(format!("promoting an unchecked model (--unchecked): {m}"));
        }
        return Ok(());
    }
    Err(ClusterError::Unchecked {
        env: env.to_string(),
        models,
        protected,
    })
}

/// `ferry promote ENV`.
pub async fn promote(
    project: &Project,
    opts: &PromoteOptions,
    ui: &Ui,
) -> Result<Promoted, ClusterError> {
    let env = require_cluster(project)?;
    refuse_unconfirmable(project, &env, opts)?;
    let snapshot = Snapshot::of(project)?;
    gate(project, &env, &snapshot, opts.unchecked, ui)?;
    // The cluster first: minutes of building and pushing are wasted on an unreachable one.
    let client = client::connect(project.spec.context.as_deref()).await?;
    let (prepared, source) = release_for(project, &env, &client, opts.rebuild, ui).await?;
    let release = prepared.release;
    let manifests = prepared.manifests;
    if !opts.dry_run {
        confirm(
            project,
            &env,
            &format!("promote {}", release.image),
            opts.yes,
        )?;
    }
    let ns = release.namespace.clone();
    let selector = release.managed_selector();
    let apply_opts = ApplyOptions {
        force_conflicts: opts.force_conflicts,
        dry_run: opts.dry_run,
    };
    let applied = apply::apply(&client, &manifests, &ns, &selector, &apply_opts, ui).await?;
    if opts.dry_run {
        return Ok(Promoted {
            env,
            revision: None,
            rolled_back_to: None,
            image: release.image,
            namespace: ns,
            applied,
            dry_run: true,
        });
    }

    let history = History::load(project, &env)?;
    // Ctrl-C during the rollout is a promotion that did not finish: like a failed one, it puts
    // back what ran before. A second Ctrl-C stops that too.
    let mut interrupt = crate::interrupt::Interrupt::new()?;
    let rolled = tokio::select! {
        r = rollout::wait_rollout(&client, &ns, &release.project, opts.timeout, ui) => r,
        _ = interrupt.recv() => Err(crate::kube::KubeError::Interrupted {
            action: format!("waiting for the rollout in {env}"),
        }),
    };
    if let Err(failure) = rolled {
        let Some(previous) = history.latest().cloned().filter(|_| !opts.no_rollback) else {
            if matches!(failure, crate::kube::KubeError::Interrupted { .. }) {
                ui.warn(format!(
                    "the objects are applied and the cluster goes on rolling out; `ferry status {env}` shows where it stands"
                ));
            }
            return Err(failure.into());
        };
        ui.warn(format!(
            "the rollout failed; putting back revision {} ({})",
            previous.revision, previous.image
        ));
        let back = tokio::select! {
            r = reapply(project, &client, &previous, &selector, opts, ui) => r,
            _ = interrupt.recv() => Err(crate::kube::KubeError::Interrupted {
                action: format!("putting back revision {}", previous.revision),
            }.into()),
        };
        let outcome = match back {
            Ok(()) => {
                let rev = rollback_revision(&history, &previous);
                let number = rev.revision;
                record_rollback(project, rev)?;
                format!(
                    "put back revision {} (recorded as revision {number})",
                    previous.revision
                )
            }
            Err(e) => format!(
                "putting back revision {} failed too: {e}",
                previous.revision
            ),
        };
        return Err(ClusterError::RolledBack {
            env,
            failure: Box::new(failure),
            outcome,
        });
    }

    let models: BTreeMap<String, String> = release
        .serving
        .config
        .models
        .iter()
        .flat_map(|m| &m.variants)
        .filter_map(|v| {
            v.sha256
                .clone()
                .map(|h| (v.path.to_string_lossy().into_owned(), h))
        })
        .collect();
    let secret_names = release
        .secrets
        .as_ref()
        .map(|s| s.names().map(str::to_string).collect())
        .unwrap_or_default();
    let objects: Vec<serde_json::Value> = manifests
        .objects
        .iter()
        .map(|o| history::storable(&o.to_value()))
        .collect();
    let rev = Promotion {
        revision: history.next_number(),
        time: now_rfc3339(),
        action: "promote".into(),
        rolled_back_to: None,
        from: source,
        spec_hash: release.spec_hash.clone(),
        image: release.image.clone(),
        config: history::config_digest(&objects),
        models,
        namespace: Some(ns.clone()),
        context: project.spec.context.clone(),
        secret_names,
        objects,
        ferry: env!("CARGO_PKG_VERSION").into(),
        snapshot: Some(snapshot),
    };
    let number = rev.revision;
    let serving = ImageRef {
        tag: prepared.image.tag.clone(),
        id: prepared.image.id.clone(),
        digest: Some(release.image.clone()),
    };
    history::record(project, Some(serving), rev)?;
    Ok(Promoted {
        env,
        revision: Some(number),
        rolled_back_to: None,
        image: release.image,
        namespace: ns,
        applied,
        dry_run: false,
    })
}

/// Records a rollback: the revision put back runs again, with the serving image it had.
fn record_rollback(project: &Project, rev: Promotion) -> Result<(), ClusterError> {
    let serving = Lock::load(project)?
        .environments
        .get(&lock::entry_name(project))
        .and_then(|e| e.images.serving.clone())
        .filter(|s| s.digest.as_deref() == Some(rev.image.as_str()));
    history::record(project, serving, rev)?;
    Ok(())
}

/// The record of putting `to` back: its image, objects and models again, as a new revision.
fn rollback_revision(history: &History, to: &Promotion) -> Promotion {
    Promotion {
        revision: history.next_number(),
        time: now_rfc3339(),
        action: "rollback".into(),
        rolled_back_to: Some(to.revision),
        from: None,
        ferry: env!("CARGO_PKG_VERSION").into(),
        ..to.clone()
    }
}

/// A stored revision's objects, typed again; its Secret filled from the secrets file as it is
/// now (values are never stored).
fn manifests_of(project: &Project, rev: &Promotion) -> Result<Manifests, ClusterError> {
    if !rev.is_complete() {
        return Err(ClusterError::StoredRevision {
            revision: rev.revision,
            message: format!(
                "{} keeps its image and spec hash but not the objects it applied (the lock's earlier format)\n  hint: promote again; revisions recorded from then on can be put back",
                lock::LOCK_FILE
            ),
        });
    }
    let secrets = super::environment_secrets(project)?;
    let mut objects = Vec::new();
    for v in &rev.objects {
        let mut v = v.clone();
        if v["kind"] == "Secret" {
            let keys: Vec<String> = v["ferryStoredKeys"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let values = secrets.as_ref().map(Secrets::values);
            let mut data = serde_json::Map::new();
            for k in keys {
                let Some(value) = values.and_then(|m| m.get(&k)) else {
                    return Err(ClusterError::SecretGone {
                        revision: rev.revision,
                        name: k,
                    });
                };
                data.insert(
                    k,
                    serde_json::to_value(k8s_openapi::ByteString(value.clone().into_bytes()))
                        .unwrap_or_default(),
                );
            }
            if let Some(map) = v.as_object_mut() {
                map.remove("ferryStoredKeys");
                map.insert("data".into(), serde_json::Value::Object(data));
            }
        }
        match Object::from_value(&v) {
            Ok(Some(o)) => objects.push(o),
            Ok(None) => {}
            Err(e) => {
                return Err(ClusterError::StoredRevision {
                    revision: rev.revision,
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(Manifests { objects })
}

/// The namespace a revision was applied in: the spec's, for a revision that does not say.
fn namespace_of(project: &Project, rev: &Promotion) -> String {
    rev.namespace.clone().unwrap_or_else(|| namespace(project))
}

async fn reapply(
    project: &Project,
    client: &kube::Client,
    rev: &Promotion,
    selector: &str,
    opts: &PromoteOptions,
    ui: &Ui,
) -> Result<(), ClusterError> {
    let manifests = manifests_of(project, rev)?;
    let ns = namespace_of(project, rev);
    let apply_opts = ApplyOptions {
        // Putting back what ferry itself applied before: ferry's fields, ferry's call.
        force_conflicts: true,
        dry_run: false,
    };
    apply::apply(client, &manifests, &ns, selector, &apply_opts, ui).await?;
    rollout::wait_rollout(client, &ns, &project.spec.name, opts.timeout, ui).await?;
    Ok(())
}

/// `ferry rollback ENV`: re-applies the revision that ran before the one running now, and
/// records it as a new revision.
pub async fn rollback(
    project: &Project,
    opts: &PromoteOptions,
    ui: &Ui,
) -> Result<Promoted, ClusterError> {
    let env = require_cluster(project)?;
    let history = History::load(project, &env)?;
    let Some(previous) = history.rollback_target().cloned() else {
        let latest = Recorded::of(&history);
        let drift = match &latest {
            Some(r) => hand_edits(project, &env, r).await,
            None => Vec::new(),
        };
        return Err(ClusterError::NothingToRollBackTo {
            env,
            revisions: history.revisions.len(),
            latest: latest.map(|r| r.revision),
            drift,
        });
    };
    refuse_unconfirmable(project, &env, opts)?;
    let manifests = manifests_of(project, &previous)?;
    let ns = namespace_of(project, &previous);
    if !opts.dry_run {
        confirm(
            project,
            &env,
            &format!(
                "roll back to revision {} ({})",
                previous.revision, previous.image
            ),
            opts.yes,
        )?;
    }
    let client = client::connect(previous.context.as_deref()).await?;
    let selector = managed_selector(project, &env);
    let apply_opts = ApplyOptions {
        force_conflicts: opts.force_conflicts,
        dry_run: opts.dry_run,
    };
    let applied = apply::apply(&client, &manifests, &ns, &selector, &apply_opts, ui).await?;
    if opts.dry_run {
        return Ok(Promoted {
            env,
            revision: None,
            rolled_back_to: None,
            image: previous.image,
            namespace: ns,
            applied,
            dry_run: true,
        });
    }
    rollout::wait_rollout(&client, &ns, &project.spec.name, opts.timeout, ui).await?;
    let rev = rollback_revision(&history, &previous);
    let number = rev.revision;
    record_rollback(project, rev)?;
    Ok(Promoted {
        env,
        revision: Some(number),
        rolled_back_to: Some(previous.revision),
        image: previous.image,
        namespace: ns,
        applied,
        dry_run: false,
    })
}

/// What differs between the cluster and the latest revision `r` (a hand edit, most likely),
/// for a rollback that has nothing to go back to. Empty when the cluster cannot be read: the
/// rollback's own answer stands without it.
async fn hand_edits(project: &Project, env: &str, r: &Recorded) -> Vec<String> {
    let ns = r.namespace.clone().unwrap_or_else(|| namespace(project));
    let Ok(client) = client::connect(project.spec.context.as_deref()).await else {
        return Vec::new();
    };
    match rollout::current_state(&client, &ns, &managed_selector(project, env)).await {
        Ok(running) => drift(project, &ns, Some(r), &running),
        Err(_) => Vec::new(),
    }
}

/// The selector of what ferry manages for a project in an environment.
fn managed_selector(project: &Project, env: &str) -> String {
    render::server_selector(&project.spec.name, env)
}

/// What runs in an environment, next to what was promoted there.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub env: String,
    pub namespace: String,
    pub context: Option<String>,
    pub revision: Option<u32>,
    /// When the latest revision is a rollback: the revision it put back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolled_back_to: Option<u32>,
    pub promoted_image: Option<String>,
    pub promoted_spec_hash: Option<String>,
    /// Where the promotion record comes from: `ferry.lock`, or a record of the earlier format
    /// on this machine not migrated yet.
    pub recorded_in: Option<String>,
    pub running: ClusterState,
    /// Differences between the recorded revision and the cluster, in words.
    pub drift: Vec<String>,
    /// What changed in the project since the recorded revision was promoted (what the next
    /// promotion would change).
    pub changes: Vec<lock::Change>,
    /// Where the server answers inside the cluster (and outside, with an ingress).
    pub endpoints: Vec<String>,
    /// For each model the environment serves (as ferry.lock records it): the run that made
    /// it and the data and code behind it.
    pub lineage: Vec<crate::pipeline::lineage::Lineage>,
}

/// The latest revision of an environment, as status and drift speak of it.
struct Recorded {
    revision: u32,
    rolled_back_to: Option<u32>,
    image: String,
    spec_hash: String,
    config: Option<String>,
    namespace: Option<String>,
    source: &'static str,
}

impl Recorded {
    fn of(history: &History) -> Option<Recorded> {
        history.latest().map(|r| Recorded {
            revision: r.revision,
            rolled_back_to: r.rolled_back_to,
            image: r.image.clone(),
            spec_hash: r.spec_hash.clone(),
            config: r.config.clone(),
            namespace: r.namespace.clone(),
            source: history.recorded_in,
        })
    }
}

/// Where the cluster differs from the latest revision, in words.
fn drift(
    project: &Project,
    ns: &str,
    latest: Option<&Recorded>,
    running: &ClusterState,
) -> Vec<String> {
    let mut drift = Vec::new();
    match (latest, running.deployment()) {
        (Some(r), None) => drift.push(format!(
            "revision {} was promoted ({}), but no Deployment of it runs in {ns}",
            r.revision, r.source
        )),
        (None, Some(d)) => drift.push(format!(
            "Deployment {} runs, but there is no record of promoting it (neither ferry.lock nor this machine has one)",
            d.name
        )),
        (Some(r), Some(d)) => {
            for image in &d.images {
                if *image != r.image {
                    drift.push(format!(
                        "the Deployment runs {image}, but revision {} promoted {} ({})",
                        r.revision, r.image, r.source
                    ));
                }
            }
            if d.spec_hash.as_deref().is_some_and(|h| h != r.spec_hash) {
                drift.push(format!(
                    "the Deployment carries spec hash {}, but revision {} has {} ({})",
                    d.spec_hash.as_deref().unwrap_or_default(),
                    r.revision,
                    r.spec_hash,
                    r.source
                ));
            }
            let config_map = format!("{}-serving", project.spec.name);
            match (&r.config, running.configs.get(&config_map)) {
                (Some(want), Some(have)) if want != have => drift.push(format!(
                    "the ConfigMap {config_map} was changed in the cluster: its content is not what revision {} applied ({})",
                    r.revision, r.source
                )),
                (Some(_), None) => drift.push(format!(
                    "the ConfigMap {config_map} of revision {} is missing",
                    r.revision
                )),
                _ => {}
            }
        }
        (None, None) => {}
    }
    drift
}

/// `ferry status ENV`.
pub async fn status(project: &Project, ui: &Ui) -> Result<Status, ClusterError> {
    let env = require_cluster(project)?;
    let lock = Lock::load(project)?;
    let latest = Recorded::of(&History::of(&lock, &project.root, &env)?);
    let ns = latest
        .as_ref()
        .and_then(|r| r.namespace.clone())
        .unwrap_or_else(|| namespace(project));
    let changes = match lock.environments.get(&env) {
        Some(e) if e.spec_hash.is_some() => lock::changes(e, &Snapshot::of(project)?),
        _ => Vec::new(),
    };
    let lineage = lock
        .environments
        .get(&env)
        .map(|e| {
            let runs = crate::runs::list(&project.root);
            e.models
                .iter()
                .map(|(model, sha)| {
                    let run = e
                        .runs
                        .get(model)
                        .and_then(|id| runs.iter().find(|r| &r.id == id));
                    crate::pipeline::lineage::of(model, sha, run)
                })
                .collect()
        })
        .unwrap_or_default();
    let step = ui.step(format!("reading what runs in {env} (namespace {ns})"));
    let client = match client::connect(project.spec.context.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            step.fail();
            return Err(e.into());
        }
    };
    let running = match rollout::current_state(&client, &ns, &managed_selector(project, &env)).await
    {
        Ok(s) => s,
        Err(e) => {
            step.fail();
            return Err(e.into());
        }
    };
    step.finish(format!("read what runs in {env}"));
    let drift = drift(project, &ns, latest.as_ref(), &running);
    let deployment = running.deployment();
    let mut endpoints = Vec::new();
    if deployment.is_some() {
        let port = project.spec.serve.as_ref().map_or(8080, |s| s.port);
        endpoints.push(format!(
            "http://{}.{ns}.svc:{port} (in the cluster)",
            project.spec.name
        ));
        if let Some(i) = project
            .spec
            .cluster
            .as_ref()
            .and_then(|c| c.ingress.as_ref())
        {
            let scheme = if i.tls_secret.is_some() {
                "https"
            } else {
                "http"
            };
            endpoints.push(format!("{scheme}://{}", i.host));
        }
    }
    Ok(Status {
        env,
        namespace: ns,
        context: project.spec.context.clone(),
        revision: latest.as_ref().map(|r| r.revision),
        rolled_back_to: latest.as_ref().and_then(|r| r.rolled_back_to),
        promoted_image: latest.as_ref().map(|r| r.image.clone()),
        promoted_spec_hash: latest.as_ref().map(|r| r.spec_hash.clone()),
        recorded_in: latest.as_ref().map(|r| r.source.to_string()),
        running,
        drift,
        changes,
        endpoints,
        lineage,
    })
}

/// `ferry down ENV`: removes every object ferry applied to the environment (the namespace and
/// volumes stay). The history is kept.
pub async fn down(
    project: &Project,
    opts: &PromoteOptions,
    ui: &Ui,
) -> Result<Applied, ClusterError> {
    let env = require_cluster(project)?;
    refuse_unconfirmable(project, &env, opts)?;
    if !opts.dry_run {
        confirm(project, &env, "remove the model server", opts.yes)?;
    }
    let client = client::connect(project.spec.context.as_deref()).await?;
    let apply_opts = ApplyOptions {
        force_conflicts: false,
        dry_run: opts.dry_run,
    };
    let none = Manifests {
        objects: Vec::new(),
    };
    Ok(apply::apply(
        &client,
        &none,
        &namespace(project),
        &managed_selector(project, &env),
        &apply_opts,
        ui,
    )
    .await?)
}

/// `ferry logs --env ENV`: the model server's pods' output.
pub async fn logs(project: &Project, follow: bool, tail: usize) -> Result<(), ClusterError> {
    require_cluster(project)?;
    let client = client::connect(project.spec.context.as_deref()).await?;
    let ns = namespace(project);
    let n = crate::kube::logs::server_logs(
        &client,
        &ns,
        &project.spec.name,
        follow,
        tail,
        |pod, line| {
            if pod.is_empty() {
                println!("{line}");
            } else {
                println!("{} {line}", console::style(pod).dim());
            }
        },
    )
    .await?;
    if n == 0 {
        return Err(ClusterError::NoServer { namespace: ns });
    }
    Ok(())
}

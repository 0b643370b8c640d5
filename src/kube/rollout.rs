//! Waiting for a Deployment to roll out, and when it does not, saying why in terms a user can
//! act on: the image does not pull, the container crashes (with its last lines of output), no
//! node has room (or a GPU), the container runs out of memory.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use kube::api::{Api, ListParams, LogParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watcher};
use kube::{Client, ResourceExt};
use serde::Serialize;

use super::KubeError;
use super::client::{Op, error_chain};
use super::render::{ANNOTATION_SPEC_HASH, LABEL_SPEC_HASH, LABEL_VERSION};
use crate::ui::{Step, Ui, human_duration};

/// How often the pods of a rollout are looked at while waiting.
const POD_CHECK: Duration = Duration::from_secs(5);
/// How long pods may stay in a back-off (image pull, crash loop) before the rollout is declared
/// failed rather than waiting for the full timeout: long enough for a registry hiccup or a
/// slow dependency to pass, short enough that nobody waits ten minutes for a typo.
const STUCK_GRACE: Duration = Duration::from_secs(90);
/// Lines of a crashed container's output in a failure report.
const LOG_LINES: i64 = 20;
/// Pods and events described in one report: more would not fit a terminal.
const MAX_PODS: usize = 3;
const MAX_EVENTS: usize = 5;
/// A detail line longer than this is cut.
const MAX_LINE: usize = 240;

const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";

/// A finished rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RolloutOutcome {
    pub namespace: String,
    pub deployment: String,
    /// Ready replicas, all of the new revision.
    pub replicas: i32,
    pub revision: Option<String>,
    pub images: Vec<String>,
    #[serde(serialize_with = "as_secs")]
    pub elapsed: Duration,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// What runs in an environment, read from the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClusterState {
    pub namespace: String,
    /// The Deployments the selector matches (ferry makes one per environment).
    pub deployments: Vec<DeploymentState>,
    /// The ConfigMaps the selector matches, by name: the digest of their data.
    #[serde(default)]
    pub configs: std::collections::BTreeMap<String, String>,
}

impl ClusterState {
    /// The environment's Deployment, if it has one.
    pub fn deployment(&self) -> Option<&DeploymentState> {
        self.deployments.first()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeploymentState {
    pub name: String,
    /// The images of the pod template's containers, in order.
    pub images: Vec<String>,
    /// The full spec hash (`sha256:…`) the Deployment was applied with.
    pub spec_hash: Option<String>,
    /// Its short form, from the label.
    pub spec_hash_label: Option<String>,
    /// The image digest, shortened (the version label).
    pub version: Option<String>,
    pub revision: Option<String>,
    pub desired: i32,
    pub updated: i32,
    pub ready: i32,
    pub available: i32,
    /// Every replica is of the current spec and ready.
    pub rolled_out: bool,
    /// `2/3 updated, 1 ready`, or why it is stuck.
    pub progress: String,
}

/// Where a rollout stands, from the Deployment alone.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Progress {
    Done,
    Waiting(String),
    Failed(String),
}

fn counts(d: &Deployment) -> (i32, i32, i32, i32, i32) {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let s = d.status.clone().unwrap_or_default();
    (
        desired,
        s.replicas.unwrap_or(0),
        s.updated_replicas.unwrap_or(0),
        s.ready_replicas.unwrap_or(0),
        s.available_replicas.unwrap_or(0),
    )
}

/// The rollout's state as `kubectl rollout status` judges it: the controller has seen the
/// current spec, every replica is of it, ready and available, and no old replica remains.
fn progress(d: &Deployment) -> Progress {
    let generation = d.metadata.generation.unwrap_or(0);
    let observed = d
        .status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .unwrap_or(0);
    if observed < generation {
        return Progress::Waiting("waiting for the Deployment controller".into());
    }
    let deadline_exceeded = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        });
    if deadline_exceeded {
        let secs = d
            .spec
            .as_ref()
            .and_then(|s| s.progress_deadline_seconds)
            .unwrap_or(600);
        return Progress::Failed(format!(
            "no progress within its deadline ({})",
            human_duration(Duration::from_secs(u64::try_from(secs).unwrap_or(600)))
        ));
    }
    let (desired, replicas, updated, ready, available) = counts(d);
    if updated == desired && replicas == updated && ready == updated && available == updated {
        return Progress::Done;
    }
    Progress::Waiting(progress_line(d))
}

fn progress_line(d: &Deployment) -> String {
    let (desired, replicas, updated, ready, _) = counts(d);
    let mut line = format!("{updated}/{desired} updated, {ready} ready");
    if replicas > updated {
        line.push_str(&format!(", {} old", replicas - updated));
    }
    line
}

/// Waits until the Deployment `name` has rolled out, showing progress as `2/3 updated, 1 ready`.
/// Fails, with a diagnosis, when the Deployment exceeds its progress deadline, when its new pods
/// stay in a back-off (image pull, crash loop) for a while, or after `timeout`.
pub async fn wait_rollout(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
    ui: &Ui,
) -> Result<RolloutOutcome, KubeError> {
    let step = ui.step(format!("rolling out Deployment {name} in {namespace}"));
    let result = watch_rollout(client, namespace, name, timeout, &step).await;
    match &result {
        Ok(o) => step.finish(format!(
            "{name} rolled out: {} ready{}",
            o.replicas,
            o.revision
                .as_ref()
                // The Deployment's own count, not ferry's revision: named as such.
                .map(|r| format!(", Deployment revision {r}"))
                .unwrap_or_default()
        )),
        Err(_) => step.fail(),
    }
    result
}

async fn watch_rollout(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
    step: &Step,
) -> Result<RolloutOutcome, KubeError> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    let mut pod_check =
        tokio::time::interval_at(tokio::time::Instant::now() + POD_CHECK, POD_CHECK);
    pod_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut last: Option<Deployment> = None;
    let mut pod_note = String::new();
    let mut stuck_since: Option<Instant> = None;
    let mut last_error: Option<KubeError> = None;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d))) => {
                    last_error = None;
                    match progress(&d) {
                        Progress::Done => return Ok(outcome(namespace, &d, started)),
                        Progress::Failed(reason) => {
                            return Err(diagnose(client, namespace, name, Some(&d), reason).await);
                        }
                        Progress::Waiting(line) => step.set_detail(with_note(&line, &pod_note)),
                    }
                    last = Some(d);
                }
                Some(Ok(watcher::Event::InitDone)) if last.is_none() => {
                    return Err(KubeError::RolloutFailed {
                        reason: format!("Deployment {name} does not exist in namespace {namespace}"),
                        details: Vec::new(),
                        logs: Vec::new(),
                    });
                }
                Some(Ok(watcher::Event::Delete(_))) => {
                    return Err(KubeError::RolloutFailed {
                        reason: format!("Deployment {name} in {namespace} was deleted during the rollout"),
                        details: Vec::new(),
                        logs: Vec::new(),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let err = watch_error(e, namespace);
                    if matches!(err, KubeError::Unauthorized { .. } | KubeError::Forbidden { .. } | KubeError::Credentials { .. }) {
                        return Err(err);
                    }
                    // The watcher re-lists after a back-off: a dropped connection heals itself.
                    step.set_detail(format!("watch interrupted, retrying: {err}"));
                    last_error = Some(err);
                }
                None => {
                    return Err(last_error.unwrap_or_else(|| KubeError::Request {
                        action: format!("watch Deployment {name} in namespace {namespace}"),
                        cause: "the watch ended".into(),
                    }));
                }
            },
            _ = pod_check.tick() => {
                let Some(d) = &last else { continue };
                let Ok((_, pods)) = newest_pods(client, namespace, d).await else { continue };
                let problems: Vec<(String, Problem)> = pods
                    .iter()
                    .filter_map(|p| pod_problem(p).map(|x| (p.name_any(), x)))
                    .collect();
                pod_note = problems
                    .first()
                    .map(|(_, p)| p.short())
                    .unwrap_or_default();
                step.set_detail(with_note(&progress_line(d), &pod_note));
                let fatal = problems.iter().find(|(_, p)| p.severity == Severity::Fatal);
                let backoff = problems.iter().find(|(_, p)| p.severity == Severity::Backoff);
                if let Some((pod, p)) = fatal {
                    let reason = format!("pod {pod}: {}", p.short());
                    return Err(diagnose(client, namespace, name, Some(d), reason).await);
                }
                match backoff {
                    Some((pod, p)) => {
                        let since = *stuck_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= STUCK_GRACE {
                            let reason = format!(
                                "pod {pod}: {} for {}",
                                p.short(),
                                human_duration(since.elapsed())
                            );
                            return Err(diagnose(client, namespace, name, Some(d), reason).await);
                        }
                    }
                    None => stuck_since = None,
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                if last.is_none()
                    && let Some(e) = last_error
                {
                    return Err(e);
                }
                let state = last.as_ref().map(progress_line).unwrap_or_else(|| "no status".into());
                let reason = format!("not rolled out after {} ({state})", human_duration(timeout));
                return Err(diagnose(client, namespace, name, last.as_ref(), reason).await);
            }
        }
    }
}

fn with_note(line: &str, note: &str) -> String {
    if note.is_empty() {
        line.to_string()
    } else {
        format!("{line} · {note}")
    }
}

fn outcome(namespace: &str, d: &Deployment, started: Instant) -> RolloutOutcome {
    RolloutOutcome {
        namespace: namespace.to_string(),
        deployment: d.name_any(),
        replicas: counts(d).3,
        revision: d.annotations().get(REVISION_ANNOTATION).cloned(),
        images: images(d),
        elapsed: started.elapsed(),
    }
}

fn images(d: &Deployment) -> Vec<String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| {
            p.containers
                .iter()
                .filter_map(|c| c.image.clone())
                .collect()
        })
        .unwrap_or_default()
}

fn watch_error(e: watcher::Error, namespace: &str) -> KubeError {
    let op = |verb| Op::new(verb, "deployments.apps").namespace(namespace);
    match e {
        watcher::Error::InitialListFailed(e) => op("list").error(e),
        watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            op("watch").error(e)
        }
        watcher::Error::WatchError(s) => op("watch").error(kube::Error::Api(s)),
        e @ watcher::Error::NoResourceVersion => KubeError::Request {
            action: op("watch").describe(),
            cause: e.to_string(),
        },
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Severity {
    /// Will not heal by waiting: fail now.
    Fatal,
    /// Usually does not heal: fail when it lasts.
    Backoff,
    /// May heal (a node being added): only shown.
    Pending,
}

/// Something wrong with one pod of the rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    pub severity: Severity,
    /// `ImagePullBackOff`, `CrashLoopBackOff`, `Unschedulable`, `OOMKilled`, …
    pub reason: String,
    pub container: Option<String>,
    pub message: String,
}

impl Problem {
    fn short(&self) -> String {
        match &self.container {
            Some(c) => format!("{} ({c})", self.reason),
            None => self.reason.clone(),
        }
    }
}

pub(crate) fn statuses(pod: &Pod) -> impl Iterator<Item = &ContainerStatus> {
    let s = pod.status.as_ref();
    s.and_then(|s| s.init_container_statuses.as_ref())
        .into_iter()
        .flatten()
        .chain(
            s.and_then(|s| s.container_statuses.as_ref())
                .into_iter()
                .flatten(),
        )
}

/// The worst thing about a pod, if anything is wrong with it.
pub(crate) fn pod_problem(pod: &Pod) -> Option<Problem> {
    for cs in statuses(pod) {
        let waiting = cs.state.as_ref().and_then(|s| s.waiting.as_ref());
        let reason = waiting.and_then(|w| w.reason.as_deref()).unwrap_or("");
        let message = waiting.and_then(|w| w.message.clone()).unwrap_or_default();
        let severity = match reason {
            "InvalidImageName" | "ErrImageNeverPull" => Severity::Fatal,
            "ImagePullBackOff"
            | "ErrImagePull"
            | "CrashLoopBackOff"
            | "RunContainerError"
            | "CreateContainerConfigError"
            | "CreateContainerError" => Severity::Backoff,
            _ => continue,
        };
        let oom = terminated_reason(cs) == Some("OOMKilled");
        return Some(Problem {
            severity,
            // A crash loop of out-of-memory kills is best called by its cause.
            reason: if oom {
                "OOMKilled".into()
            } else {
                reason.into()
            },
            container: Some(cs.name.clone()),
            message,
        });
    }
    let unschedulable = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        });
    if let Some(c) = unschedulable {
        return Some(Problem {
            severity: Severity::Pending,
            reason: "Unschedulable".into(),
            container: None,
            message: c.message.clone().unwrap_or_default(),
        });
    }
    None
}

/// Why the container last stopped (or is stopped now).
fn terminated_reason(cs: &ContainerStatus) -> Option<&str> {
    let now = cs.state.as_ref().and_then(|s| s.terminated.as_ref());
    let last = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    now.or(last).and_then(|t| t.reason.as_deref())
}

/// `k=v,k2=v2` from the Deployment's `matchLabels` (ferry selects on labels only).
fn selector_of(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .map(|l| {
            l.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// The Deployment's newest ReplicaSet (the one of its current revision) and its pods; all the
/// Deployment's pods when the ReplicaSet is not found.
async fn newest_pods(
    client: &Client,
    namespace: &str,
    d: &Deployment,
) -> Result<(Option<ReplicaSet>, Vec<Pod>), KubeError> {
    let selector = selector_of(d);
    let lp = ListParams::default().labels(&selector);
    let sets = Api::<ReplicaSet>::namespaced(client.clone(), namespace)
        .list(&lp)
        .await
        .map_err(|e| {
            Op::new("list", "replicasets.apps")
                .namespace(namespace)
                .error(e)
        })?;
    let uid = d.metadata.uid.as_deref();
    let revision = |rs: &ReplicaSet| {
        rs.annotations()
            .get(REVISION_ANNOTATION)
            .and_then(|r| r.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let wanted = d
        .annotations()
        .get(REVISION_ANNOTATION)
        .and_then(|r| r.parse::<u64>().ok());
    let owned = sets
        .items
        .into_iter()
        .filter(|rs| uid.is_none_or(|uid| rs.owner_references().iter().any(|o| o.uid == uid)));
    let owned: Vec<ReplicaSet> = owned.collect();
    let newest = owned
        .iter()
        .find(|rs| Some(revision(rs)) == wanted)
        .or_else(|| owned.iter().max_by_key(|rs| revision(rs)))
        .cloned();
    let mut pod_selector = selector;
    if let Some(hash) = newest
        .as_ref()
        .and_then(|rs| rs.labels().get("pod-template-hash"))
    {
        if !pod_selector.is_empty() {
            pod_selector.push(',');
        }
        pod_selector.push_str(&format!("pod-template-hash={hash}"));
    }
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&pod_selector))
        .await
        .map_err(|e| Op::new("list", "pods").namespace(namespace).error(e))?;
    Ok((newest, pods.items))
}

/// The failure of a rollout: `reason`, and what the Deployment, its newest pods, their logs and
/// recent warning events say. Reading them is best effort: what cannot be read is mentioned,
/// and never replaces the failure itself.
async fn diagnose(
    client: &Client,
    namespace: &str,
    name: &str,
    d: Option<&Deployment>,
    reason: String,
) -> KubeError {
    let mut details = Vec::new();
    let mut logs = Vec::new();
    let mut hints: BTreeSet<String> = BTreeSet::new();
    let reason = format!("Deployment {name} in namespace {namespace}: {reason}");
    let Some(d) = d else {
        return KubeError::RolloutFailed {
            reason,
            details,
            logs,
        };
    };
    for c in d
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
    {
        let bad = (c.type_ == "Progressing" && c.status == "False")
            || (c.type_ == "ReplicaFailure" && c.status == "True");
        if bad {
            details.push(cut(&format!(
                "{}: {}: {}",
                c.type_,
                c.reason.as_deref().unwrap_or("-"),
                c.message.as_deref().unwrap_or("")
            )));
        }
    }
    let (rs, pods) = match newest_pods(client, namespace, d).await {
        Ok(x) => x,
        Err(e) => {
            details.push(cut(&format!("(could not read the pods: {e})")));
            return KubeError::RolloutFailed {
                reason,
                details,
                logs,
            };
        }
    };
    let limits = container_memory_limits(d);
    let images = images(d);
    let mut described = 0;
    let mut alike = 0;
    let mut seen_reasons = BTreeSet::new();
    for pod in &pods {
        let Some(p) = pod_problem(pod).or_else(|| not_ready(pod)) else {
            continue;
        };
        // One pod per kind of trouble is enough to act on; the rest are counted.
        if described >= MAX_PODS || !seen_reasons.insert(p.reason.clone()) {
            alike += 1;
            continue;
        }
        described += 1;
        let pod_name = pod.name_any();
        let container = p.container.clone().unwrap_or_default();
        let line = match p.reason.as_str() {
            "ImagePullBackOff" | "ErrImagePull" | "InvalidImageName" | "ErrImageNeverPull" => {
                let image = statuses(pod)
                    .find(|c| c.name == container)
                    .map(|c| c.image.clone())
                    .unwrap_or_default();
                hints.insert(format!(
                    "hint: check that {image} exists and that the cluster may pull it (image_pull_secret in the environment)"
                ));
                format!(
                    "pod {pod_name}: container {container} cannot pull its image ({}): {}",
                    p.reason,
                    shorten(&p.message, &images)
                )
            }
            "CrashLoopBackOff" | "OOMKilled" | "RunContainerError" => {
                let cs = statuses(pod).find(|c| c.name == container);
                let restarts = cs.map_or(0, |c| c.restart_count);
                let exit = cs
                    .and_then(|c| c.last_state.as_ref())
                    .and_then(|s| s.terminated.as_ref())
                    .map(|t| {
                        format!(
                            "; last exit code {}{}",
                            t.exit_code,
                            t.reason
                                .as_ref()
                                .map(|r| format!(" ({r})"))
                                .unwrap_or_default()
                        )
                    })
                    .unwrap_or_default();
                if p.reason == "OOMKilled" {
                    let limit = limits
                        .iter()
                        .find(|(c, _)| *c == container)
                        .map(|(_, l)| format!(" of {l}"))
                        .unwrap_or_default();
                    hints.insert(
                        "hint: raise `memory` in the serve resources, or load smaller models"
                            .into(),
                    );
                    format!(
                        "pod {pod_name}: container {container} was killed for exceeding its memory limit{limit} ({restarts} restarts)"
                    )
                } else {
                    if logs.is_empty() {
                        logs = previous_logs(client, namespace, &pod_name, &container).await;
                    }
                    hints.insert(
                        "hint: the container exits at start; its last output is below (`kubectl logs --previous` shows more)".into(),
                    );
                    format!(
                        "pod {pod_name}: container {container} keeps crashing ({restarts} restarts{exit})"
                    )
                }
            }
            "Unschedulable" => {
                if p.message.contains("nvidia.com/gpu") {
                    hints.insert(
                        "hint: no node has a free nvidia.com/gpu: add GPU nodes (or wait for the autoscaler), check the NVIDIA device plugin runs on them, or lower `gpu`".into(),
                    );
                } else if p.message.contains("Insufficient") {
                    hints.insert(
                        "hint: the nodes lack room for the requests: lower `cpu`/`memory` in the serve resources, or add nodes".into(),
                    );
                } else if p.message.contains("untolerated taint")
                    || p.message.contains("node affinity/selector")
                {
                    hints.insert(
                        "hint: no node matches the environment's node_selector/tolerations".into(),
                    );
                }
                format!("pod {pod_name} cannot be scheduled: {}", p.message)
            }
            "NotReady" => {
                hints.insert(
                    "hint: the server runs but does not report ready: its readiness probe (/v2/health/ready) fails; see the events and `kubectl logs`".into(),
                );
                format!("pod {pod_name}: container {container} is running but not ready")
            }
            _ => format!(
                "pod {pod_name}: container {container}: {}: {}",
                p.reason, p.message
            ),
        };
        details.push(cut(&line));
    }
    if alike > 0 {
        details.push(format!("(and {alike} more pods with problems)"));
    }
    if pods.is_empty() {
        details.push("no pods were created for the new revision".into());
    }

    let mut involved: BTreeSet<String> = pods.iter().map(|p| p.name_any()).collect();
    involved.insert(name.to_string());
    if let Some(rs) = &rs {
        involved.insert(rs.name_any());
    }
    match warning_events(client, namespace, &involved, &images).await {
        // An event that only repeats a pod's condition adds nothing.
        Ok(events) => {
            let fresh: Vec<String> = events
                .into_iter()
                .filter(|(_, message)| !details.iter().any(|d| d.contains(message.as_str())))
                .map(|(line, _)| line)
                .collect();
            details.extend(fresh);
        }
        Err(e) => details.push(cut(&format!("(could not read the events: {e})"))),
    }
    details.extend(hints.into_iter().map(|h| cut(&h)));
    KubeError::RolloutFailed {
        reason,
        details,
        logs,
    }
}

/// A running container that is not ready: the readiness probe fails.
fn not_ready(pod: &Pod) -> Option<Problem> {
    statuses(pod)
        .find(|cs| !cs.ready && cs.state.as_ref().is_some_and(|s| s.running.is_some()))
        .map(|cs| Problem {
            severity: Severity::Pending,
            reason: "NotReady".into(),
            container: Some(cs.name.clone()),
            message: String::new(),
        })
}

fn container_memory_limits(d: &Deployment) -> Vec<(String, String)> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| {
            p.containers
                .iter()
                .filter_map(|c| {
                    let l = c.resources.as_ref()?.limits.as_ref()?.get("memory")?;
                    Some((c.name.clone(), l.0.clone()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The last lines the container's previous (crashed) instance wrote.
async fn previous_logs(
    client: &Client,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Vec<String> {
    let lp = LogParams {
        container: Some(container.to_string()),
        previous: true,
        tail_lines: Some(LOG_LINES),
        ..Default::default()
    };
    match Api::<Pod>::namespaced(client.clone(), namespace)
        .logs(pod, &lp)
        .await
    {
        Ok(text) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(cut)
            .collect(),
        Err(e) => vec![cut(&format!("(no logs: {})", error_chain(&e)))],
    }
}

/// Recent warnings about the rollout's objects, newest first, each distinct message once: the
/// report line and the (shortened) message.
async fn warning_events(
    client: &Client,
    namespace: &str,
    involved: &BTreeSet<String>,
    images: &[String],
) -> Result<Vec<(String, String)>, KubeError> {
    let lp = ListParams::default().fields("type=Warning");
    let list = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&lp)
        .await
        .map_err(|e| Op::new("list", "events").namespace(namespace).error(e))?;
    let mut events: Vec<Event> = list
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object
                .name
                .as_ref()
                .is_some_and(|n| involved.contains(n))
        })
        .collect();
    let when = |e: &Event| {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or(e.event_time.as_ref().map(|t| t.0))
            .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    events.sort_by_key(|e| std::cmp::Reverse(when(e)));
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for e in events {
        let reason = e.reason.clone().unwrap_or_default();
        let message = shorten(e.message.as_deref().unwrap_or_default().trim(), images);
        if !seen.insert((reason.clone(), message.clone())) {
            continue;
        }
        let object = format!(
            "{}/{}",
            e.involved_object
                .kind
                .as_deref()
                .unwrap_or("object")
                .to_lowercase(),
            e.involved_object.name.as_deref().unwrap_or("")
        );
        let count = e
            .count
            .filter(|c| *c > 1)
            .map(|c| format!(" (×{c})"))
            .unwrap_or_default();
        out.push((
            cut(&format!("event {reason} on {object}{count}: {message}")),
            message,
        ));
        if out.len() == MAX_EVENTS {
            break;
        }
    }
    Ok(out)
}

/// A kubelet message without the image reference it repeats (twice, at 100+ characters each):
/// the report names the image once, in its hint.
fn shorten(message: &str, images: &[String]) -> String {
    let mut m = message.to_string();
    for image in images.iter().filter(|i| !i.is_empty()) {
        m = m
            .replace(&format!("image \"{image}\""), "image")
            .replace(&format!("\"{image}\""), "the image");
    }
    m
}

fn cut(s: &str) -> String {
    let s = s.trim_end();
    if s.chars().count() <= MAX_LINE {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(MAX_LINE - 1).collect();
        out.push('…');
        out
    }
}

pub(crate) fn failure_report(reason: &str, details: &[String], logs: &[String]) -> String {
    let mut s = format!("rollout failed: {reason}");
    for d in details {
        s.push_str("\n  ");
        s.push_str(d);
    }
    if !logs.is_empty() {
        s.push_str("\n  last output of the crashed container:");
        for l in logs {
            s.push_str("\n    ");
            s.push_str(l);
        }
    }
    s
}

/// What runs in `namespace` under `selector`: the Deployment's images, spec hash and replica
/// counts, for `ferry status` and for drift checks before a promotion.
pub async fn current_state(
    client: &Client,
    namespace: &str,
    selector: &str,
) -> Result<ClusterState, KubeError> {
    let list = Api::<Deployment>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| {
            Op::new("list", "deployments.apps")
                .namespace(namespace)
                .error(e)
        })?;
    let mut deployments: Vec<DeploymentState> = list
        .items
        .iter()
        .map(|d| {
            let (desired, _, updated, ready, available) = counts(d);
            let p = progress(d);
            DeploymentState {
                name: d.name_any(),
                images: images(d),
                spec_hash: d.annotations().get(ANNOTATION_SPEC_HASH).cloned(),
                spec_hash_label: d.labels().get(LABEL_SPEC_HASH).cloned(),
                version: d.labels().get(LABEL_VERSION).cloned(),
                revision: d.annotations().get(REVISION_ANNOTATION).cloned(),
                desired,
                updated,
                ready,
                available,
                rolled_out: p == Progress::Done,
                progress: match p {
                    Progress::Done => format!("{ready}/{desired} ready"),
                    Progress::Waiting(l) => l,
                    Progress::Failed(r) => r,
                },
            }
        })
        .collect();
    deployments.sort_by(|a, b| a.name.cmp(&b.name));
    let maps = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| Op::new("list", "configmaps").namespace(namespace).error(e))?;
    let configs = maps
        .items
        .iter()
        .map(|c| {
            let data = c.data.clone().unwrap_or_default();
            (c.name_any(), super::render::config_digest(&data))
        })
        .collect();
    Ok(ClusterState {
        namespace: namespace.to_string(),
        deployments,
        configs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(v: serde_json::Value) -> Deployment {
        serde_json::from_value(v).unwrap()
    }

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn progress_follows_kubectl_rollout_status() {
        let d = |generation: i64, observed: i64, replicas: i32, updated: i32, ready: i32| {
            deployment(json!({
                "metadata": { "name": "churn", "generation": generation },
                "spec": { "replicas": 3, "selector": {}, "template": {} },
                "status": {
                    "observedGeneration": observed, "replicas": replicas,
                    "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": ready
                }
            }))
        };
        assert!(matches!(progress(&d(2, 1, 3, 3, 3)), Progress::Waiting(_)));
        assert_eq!(
            progress(&d(2, 2, 4, 2, 3)),
            Progress::Waiting("2/3 updated, 3 ready, 2 old".into())
        );
        assert_eq!(
            progress(&d(2, 2, 3, 3, 1)),
            Progress::Waiting("3/3 updated, 1 ready".into())
        );
        assert_eq!(progress(&d(2, 2, 3, 3, 3)), Progress::Done);
    }

    #[test]
    fn a_missed_deadline_fails_the_rollout() {
        let d = deployment(json!({
            "metadata": { "name": "churn", "generation": 2 },
            "spec": { "replicas": 1, "progressDeadlineSeconds": 600, "selector": {}, "template": {} },
            "status": {
                "observedGeneration": 2, "replicas": 2, "updatedReplicas": 1,
                "conditions": [{ "type": "Progressing", "status": "False",
                  "reason": "ProgressDeadlineExceeded",
                  "message": "ReplicaSet \"churn-7c9d\" has timed out progressing." }]
            }
        }));
        assert_eq!(
            progress(&d),
            Progress::Failed("no progress within its deadline (10m00s)".into())
        );
    }

    #[test]
    fn pod_troubles_are_graded() {
        let waiting = |reason: &str| {
            pod(json!({
                "metadata": { "name": "p" },
                "status": { "containerStatuses": [{
                    "name": "server", "image": "i", "imageID": "", "ready": false, "restartCount": 4,
                    "state": { "waiting": { "reason": reason, "message": "m" } },
                    "lastState": { "terminated": { "exitCode": 137, "reason": "OOMKilled" } }
                }]}
            }))
        };
        let p = pod_problem(&waiting("InvalidImageName")).unwrap();
        assert_eq!(p.severity, Severity::Fatal);
        let p = pod_problem(&waiting("CrashLoopBackOff")).unwrap();
        assert_eq!(
            (p.severity, p.reason.as_str()),
            (Severity::Backoff, "OOMKilled")
        );
        assert_eq!(pod_problem(&waiting("ContainerCreating")), None);

        let pending = pod(json!({
            "metadata": { "name": "p" },
            "status": { "phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
            }]}
        }));
        let p = pod_problem(&pending).unwrap();
        assert_eq!(p.severity, Severity::Pending);
        assert!(p.message.contains("nvidia.com/gpu"));
    }

    #[test]
    fn the_report_fits_a_terminal() {
        let long = "x".repeat(1000);
        assert_eq!(cut(&long).chars().count(), MAX_LINE);
        let r = failure_report(
            "Deployment churn in namespace prod: not rolled out after 5m00s",
            &["pod a: container server keeps crashing (3 restarts)".into()],
            &["Traceback (most recent call last):".into()],
        );
        assert_eq!(
            r,
            "rollout failed: Deployment churn in namespace prod: not rolled out after 5m00s\n  pod a: container server keeps crashing (3 restarts)\n  last output of the crashed container:\n    Traceback (most recent call last):"
        );
    }
}

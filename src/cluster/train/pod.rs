//! The training pod from the Job's point of view: waiting until the `train` container starts,
//! grading what keeps a pending pod from running (and for how long that is worth waiting), and
//! how the container ended.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, Event, Pod};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::POLL;
use super::objects::JobCtx;
use super::record::Failure;
use crate::cluster::ClusterError;
use crate::kube::client::Op;
use crate::kube::rollout::Severity;
use crate::ui::Ui;

/// How long a pod may stay unschedulable before the run is given up; a scale-up the cluster
/// autoscaler announced gets `SCALE_UP_WAIT` instead.
const UNSCHEDULABLE_GRACE: Duration = Duration::from_secs(90);
const SCALE_UP_WAIT: Duration = Duration::from_secs(15 * 60);
/// How long the Job may go without a pod before its events are read for the reason.
const NO_POD_GRACE: Duration = Duration::from_secs(20);

/// Something that keeps a pod from running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Trouble {
    /// `ImagePullBackOff`, `Unschedulable`, `CreateContainerConfigError`, …
    pub reason: String,
    pub container: Option<String>,
    pub message: String,
    /// Waiting will not help.
    pub fatal: bool,
}

/// What keeps `pod` from running, if anything does: the rollout's reading of a pod, graded for
/// a training that waits on one pod only.
pub(crate) fn pod_trouble(pod: &Pod) -> Option<Trouble> {
    let p = crate::kube::rollout::pod_problem(pod)?;
    // The first failed pull (ErrImagePull) is retried once before the back-off; anything else
    // that is not mere waiting for a node will not heal for a training pod.
    let fatal = p.severity != Severity::Pending && p.reason != "ErrImagePull";
    Some(Trouble {
        reason: p.reason,
        container: p.container,
        message: p.message,
        fatal,
    })
}

/// What to do about a pod that cannot start, by its reason.
pub(crate) fn pending_hint(reason: &str) -> &'static str {
    match reason {
        "ImagePullBackOff" | "ErrImagePull" | "InvalidImageName" | "ErrImageNeverPull" => {
            "the cluster's nodes cannot pull the image: check that they reach the environment's registry, and, for a private registry, that `image_pull_secret` names a Secret of type dockerconfigjson in the namespace"
        }
        "Unschedulable" => {
            "no node has what the pod asks for (train.resources, node_selector, tolerations): lower the request, fix the selector, or add capacity to the cluster"
        }
        "FailedCreate" => {
            "the Job could not create its pod, often a ResourceQuota or LimitRange of the namespace: `kubectl describe job -n NAMESPACE` shows the details"
        }
        "CreateContainerConfigError" => {
            "the pod refers to something missing, often a Secret or one of its keys: check the environment's `secrets` file and `kubectl get secrets -n NAMESPACE`"
        }
        "OOMKilled" => "the container ran out of memory: raise its memory request or use less",
        "CrashLoopBackOff" => "the container keeps exiting: its last lines of output say why",
        _ => "`kubectl describe pod -n NAMESPACE POD` shows the pod's events",
    }
}

/// Whether the cluster is bringing up a node for `pod` (cluster autoscaler, Karpenter).
async fn scaling_up(client: &Client, ns: &str, pod: &str) -> bool {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields(&format!("involvedObject.name={pod}"));
    api.list(&lp).await.is_ok_and(|l| {
        l.items
            .iter()
            .any(|e| matches!(e.reason.as_deref(), Some("TriggeredScaleUp" | "Nominated")))
    })
}

/// Waits out an unschedulable pod for a while; `Err` once waiting looks hopeless.
pub(crate) struct Pending {
    since: Option<Instant>,
}

impl Pending {
    pub fn new() -> Pending {
        Pending { since: None }
    }

    /// Judges one look at `pod`: the trouble to show, or the error to give up with.
    pub async fn judge(
        &mut self,
        client: &Client,
        ns: &str,
        pod: &Pod,
        what: &str,
    ) -> Result<Option<Trouble>, ClusterError> {
        let Some(t) = pod_trouble(pod) else {
            self.since = None;
            return Ok(None);
        };
        let give_up = |t: &Trouble| ClusterError::PodNotStarting {
            what: what.to_string(),
            pod: pod.name_any(),
            reason: t.reason.clone(),
            container: t.container.clone(),
            message: t.message.clone(),
        };
        if t.fatal {
            return Err(give_up(&t));
        }
        if t.reason == "Unschedulable" {
            let waited = self.since.get_or_insert_with(Instant::now).elapsed();
            if waited > UNSCHEDULABLE_GRACE
                && (waited > SCALE_UP_WAIT || !scaling_up(client, ns, &pod.name_any()).await)
            {
                return Err(give_up(&t));
            }
        }
        Ok(Some(t))
    }
}

/// How the `train` container ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ended {
    pub exit_code: i64,
    /// The kubelet's reason: `Completed`, `Error`, `OOMKilled`, …
    pub reason: String,
    pub message: String,
}

impl Ended {
    pub(crate) fn of(t: &ContainerStateTerminated) -> Ended {
        Ended {
            exit_code: i64::from(t.exit_code),
            reason: t.reason.clone().unwrap_or_default(),
            message: t.message.clone().unwrap_or_default(),
        }
    }

    /// A sentence for the run record and the user.
    pub fn describe(&self) -> String {
        let mut s = format!("exit code {}", self.exit_code);
        match self.reason.as_str() {
            "OOMKilled" => s.push_str(
                ", OOMKilled: the container ran out of memory — raise train.resources.memory or use less",
            ),
            "" | "Error" | "Completed" => {}
            r => s.push_str(&format!(", {r}")),
        }
        let m = self.message.trim();
        if !m.is_empty() {
            let m: String = m.chars().take(300).collect();
            s.push_str(&format!(": {m}"));
        }
        s
    }
}

pub(crate) fn container_status<'p>(pod: &'p Pod, name: &str) -> Option<&'p ContainerStatus> {
    crate::kube::rollout::statuses(pod).find(|c| c.name == name)
}

/// Where the `train` container stands.
pub(super) enum TrainState {
    Waiting,
    Running,
    Ended(Ended),
}

pub(super) fn train_state(pod: &Pod) -> TrainState {
    let state = container_status(pod, "train").and_then(|c| c.state.as_ref());
    match state {
        Some(s) if s.terminated.is_some() => {
            TrainState::Ended(s.terminated.as_ref().map(Ended::of).unwrap_or(Ended {
                exit_code: -1,
                reason: String::new(),
                message: String::new(),
            }))
        }
        Some(s) if s.running.is_some() => TrainState::Running,
        _ => TrainState::Waiting,
    }
}

/// The newest pod of the run's Job.
async fn newest_pod(ctx: &JobCtx) -> Result<Option<Pod>, ClusterError> {
    let list = ctx
        .pods()
        .list(&ListParams::default().labels(&ctx.selector))
        .await
        .map_err(|e| Op::new("list", "pods").namespace(&ctx.ns).error(e))?;
    Ok(list
        .items
        .into_iter()
        .max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0)))
}

/// Why the Job failed, if it did (e.g. its pod was deleted or evicted).
pub(super) async fn job_failed(ctx: &JobCtx) -> Result<Option<String>, ClusterError> {
    let job = ctx.job().await?;
    Ok(job_failure(job.as_ref()))
}

/// Why a Job (as read; `None`: it is gone) has failed, if it has.
pub(crate) fn job_failure(job: Option<&k8s_openapi::api::batch::v1::Job>) -> Option<String> {
    let Some(job) = job else {
        return Some("the Job was deleted".into());
    };
    job.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed" && c.status == "True")
        .map(|c| {
            format!(
                "{}: {}",
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default()
            )
        })
}

/// The newest warning about the Job itself (a quota refusing its pod: `FailedCreate`).
async fn job_warning(ctx: &JobCtx) -> Option<(String, String)> {
    let api: Api<Event> = Api::namespaced(ctx.client.clone(), &ctx.ns);
    let lp = ListParams::default().fields(&format!(
        "involvedObject.name={},involvedObject.kind=Job,type=Warning",
        ctx.job
    ));
    let list = api.list(&lp).await.ok()?;
    list.items
        .into_iter()
        .max_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0))
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
}

/// Waits until the `train` container has started (or already ended); returns the pod's name.
pub(super) async fn wait_started(ctx: &JobCtx, ui: &Ui) -> Result<String, Failure> {
    let step = ui.step("waiting for the training pod to start");
    let result = async {
        let created = Instant::now();
        let mut pending = Pending::new();
        loop {
            let Some(pod) = newest_pod(ctx).await? else {
                if let Some(why) = job_failed(ctx).await? {
                    return Err(ClusterError::PodFailed {
                        what: format!("Job {}", ctx.job),
                        reason: why,
                    });
                }
                if created.elapsed() > NO_POD_GRACE
                    && let Some((reason, message)) = job_warning(ctx).await
                {
                    step.set_detail(format!("{reason}: {message}"));
                    if reason == "FailedCreate" {
                        return Err(ClusterError::PodNotStarting {
                            what: "training".into(),
                            pod: format!("(Job {})", ctx.job),
                            reason,
                            container: None,
                            message,
                        });
                    }
                }
                tokio::time::sleep(POLL).await;
                continue;
            };
            let name = pod.name_any();
            match train_state(&pod) {
                TrainState::Running | TrainState::Ended(_) => {
                    let node = pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.clone())
                        .unwrap_or_default();
                    return Ok((name, node));
                }
                TrainState::Waiting => {}
            }
            if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed") {
                let s = pod.status.as_ref();
                return Err(ClusterError::PodFailed {
                    what: format!("pod {name}"),
                    reason: format!(
                        "{}: {}",
                        s.and_then(|s| s.reason.clone()).unwrap_or_default(),
                        s.and_then(|s| s.message.clone()).unwrap_or_default()
                    ),
                });
            }
            match pending
                .judge(&ctx.client, &ctx.ns, &pod, "training")
                .await?
            {
                Some(t) => step.set_detail(format!("{}: {}", t.reason, t.message)),
                None => step.set_detail(format!(
                    "pod {name} {}",
                    pod.status
                        .as_ref()
                        .and_then(|s| s.phase.as_deref())
                        .unwrap_or("Pending")
                )),
            }
            tokio::time::sleep(POLL).await;
        }
    }
    .await;
    match result {
        Ok((pod, node)) => {
            step.finish(if node.is_empty() {
                format!("training started in pod {pod}")
            } else {
                format!("training started in pod {pod} on node {node}")
            });
            Ok(pod)
        }
        Err(e) => {
            step.fail();
            Err(Failure::Error(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pending_pods_are_graded() {
        let pull = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Pending", "initContainerStatuses": [{
                "name": "train", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}
            }]}
        }));
        let t = pod_trouble(&pull).unwrap();
        assert!(t.fatal);
        assert_eq!(t.reason, "ImagePullBackOff");
        assert_eq!(t.container.as_deref(), Some("train"));

        let first_pull = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Pending", "initContainerStatuses": [{
                "name": "train", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ErrImagePull"}}
            }]}
        }));
        assert!(!pod_trouble(&first_pull).unwrap().fatal);

        let unschedulable = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
            }]}
        }));
        let t = pod_trouble(&unschedulable).unwrap();
        assert!(!t.fatal);
        assert!(t.message.contains("nvidia.com/gpu"));

        let fine = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Pending", "initContainerStatuses": [{
                "name": "train", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "PodInitializing"}}
            }]}
        }));
        assert_eq!(pod_trouble(&fine), None);
    }

    #[test]
    fn terminations_read_like_local_failures() {
        let oom = Ended {
            exit_code: 137,
            reason: "OOMKilled".into(),
            message: String::new(),
        };
        assert!(oom.describe().starts_with("exit code 137, OOMKilled"));
        assert!(oom.describe().contains("train.resources.memory"));
        let plain = Ended {
            exit_code: 3,
            reason: "Error".into(),
            message: "bad data\n".into(),
        };
        assert_eq!(plain.describe(), "exit code 3: bad data");
    }
}

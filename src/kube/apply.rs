//! Server-side apply of a release's manifests, then pruning of what an earlier release left.
//!
//! Every object is first applied with `dryRun=All`: the API server runs admission, validation
//! and field-ownership checks for real but stores nothing, so a conflict or an invalid object
//! stops the promotion before the first write instead of after object 3 of 7. Only when every
//! object passes are they applied, in the rendered order (Namespace first).

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, ValidationDirective,
};
use kube::core::{ApiResource, Status};
use kube::{Client, ResourceExt};
use serde::Serialize;
use serde_json::Value;

use super::KubeError;
use super::client::{Op, rbac_name};
use super::render::{LABEL_MANAGED_BY, MANAGER, Manifests, Object};
use crate::ui::{Step, Ui};

/// How `apply` treats the cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Take over fields another field manager owns (server-side apply's `force`).
    pub force_conflicts: bool,
    /// Validate everything with the server and report what would change, changing nothing.
    pub dry_run: bool,
}

/// What happened to one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Created,
    Configured,
    Unchanged,
    Pruned,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Change::Created => "created",
            Change::Configured => "configured",
            Change::Unchanged => "unchanged",
            Change::Pruned => "pruned",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub kind: String,
    pub name: String,
    /// `None` for cluster-scoped objects (the Namespace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub change: Change,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.kind, self.name, self.change)
    }
}

/// The result of `apply`: one entry per manifest object in order, then the pruned ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// Nothing was changed: the changes are what the server says would happen.
    pub dry_run: bool,
    pub objects: Vec<Outcome>,
}

impl Applied {
    pub fn count(&self, change: Change) -> usize {
        self.objects.iter().filter(|o| o.change == change).count()
    }

    /// Whether anything was (or, in a dry run, would be) created, changed or deleted.
    pub fn changed(&self) -> bool {
        self.objects.iter().any(|o| o.change != Change::Unchanged)
    }

    /// `1 created, 2 configured, 3 unchanged, 1 pruned`, leaving out the zeros.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = [
            Change::Created,
            Change::Configured,
            Change::Unchanged,
            Change::Pruned,
        ]
        .into_iter()
        .map(|c| (self.count(c), c))
        .filter(|(n, _)| *n > 0)
        .map(|(n, c)| format!("{n} {c}"))
        .collect();
        if parts.is_empty() {
            "nothing to apply".into()
        } else {
            parts.join(", ")
        }
    }
}

/// A field-ownership conflict the server found: fields ferry sets that `manager` owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// `Deployment churn`.
    pub object: String,
    pub manager: String,
    pub fields: Vec<String>,
}

/// An object the server refused to accept (invalid, or refused by an admission webhook).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub object: String,
    pub message: String,
}

pub(crate) fn conflicts_report(conflicts: &[Conflict]) -> String {
    let mut s = String::from(
        "server-side apply conflicts: other field managers own fields ferry sets; nothing was changed",
    );
    for c in conflicts {
        s.push_str(&format!(
            "\n  {}: {} (owned by \"{}\")",
            c.object,
            c.fields.join(", "),
            c.manager
        ));
    }
    s.push_str(
        "\n  hint: these were changed outside ferry (kubectl edit/scale/set, another tool); \
         rerun with --force-conflicts to take them over, or stop the other tool from setting them",
    );
    s
}

pub(crate) fn rejections_report(rejected: &[Rejection], created_namespace: Option<&str>) -> String {
    let mut s = String::from("the API server refused the manifests in a dry run; ");
    match created_namespace {
        Some(ns) => s.push_str(&format!(
            "only the namespace {ns} was created (empty: the objects are checked inside it)"
        )),
        None => s.push_str("nothing was changed"),
    }
    for r in rejected {
        s.push_str(&format!("\n  {}: {}", r.object, r.message));
    }
    s
}

/// The kinds an earlier release may have left behind, in the order they are pruned: what points
/// at something goes before what it points at.
const PRUNABLE: [&str; 7] = [
    "Ingress",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "Deployment",
    "Service",
    "Secret",
    "ConfigMap",
];

/// Where objects of a kind live in the API, from the k8s-openapi types `render` builds them
/// with: no discovery round-trips, and the same apiVersion the objects carry.
fn resource(kind: &str) -> Option<(ApiResource, bool)> {
    Some(match kind {
        "Namespace" => (ApiResource::erase::<Namespace>(&()), false),
        "ConfigMap" => (ApiResource::erase::<ConfigMap>(&()), true),
        "Secret" => (ApiResource::erase::<Secret>(&()), true),
        "Service" => (ApiResource::erase::<Service>(&()), true),
        "Deployment" => (ApiResource::erase::<Deployment>(&()), true),
        "HorizontalPodAutoscaler" => (ApiResource::erase::<HorizontalPodAutoscaler>(&()), true),
        "PodDisruptionBudget" => (ApiResource::erase::<PodDisruptionBudget>(&()), true),
        "Ingress" => (ApiResource::erase::<Ingress>(&()), true),
        _ => return None,
    })
}

/// One manifest object on its way to the server.
struct Target {
    kind: &'static str,
    name: String,
    namespace: Option<String>,
    resource: ApiResource,
    body: Value,
}

impl Target {
    fn new(object: &Object, namespace: &str) -> Target {
        let kind = object.kind();
        // Every `Object` variant is in the table; the fallback keeps this total all the same.
        let (resource, namespaced) = resource(kind).unwrap_or_else(|| {
            let gvk = kube::core::GroupVersionKind::gvk("", "v1", kind);
            (ApiResource::from_gvk(&gvk), true)
        });
        let mut body = object.to_value();
        let namespace = namespaced.then(|| namespace.to_string());
        if let (Some(ns), Some(meta)) = (&namespace, body.get_mut("metadata")) {
            // The URL names the namespace; a different one in the body is refused.
            meta["namespace"] = Value::String(ns.clone());
        }
        Target {
            kind,
            name: object.name().to_string(),
            namespace,
            resource,
            body,
        }
    }

    fn label(&self) -> String {
        format!("{} {}", self.kind, self.name)
    }

    fn api(&self, client: &Client) -> Api<DynamicObject> {
        match &self.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &self.resource),
            None => Api::all_with(client.clone(), &self.resource),
        }
    }

    fn op(&self, verb: &'static str) -> Op {
        let op = Op::new(verb, rbac_name(&self.resource)).name(&self.name);
        match &self.namespace {
            Some(ns) => op.namespace(ns),
            None => op,
        }
    }

    async fn get(&self, client: &Client) -> Result<Option<DynamicObject>, kube::Error> {
        self.api(client).get_opt(&self.name).await
    }

    async fn patch(
        &self,
        client: &Client,
        dry_run: bool,
        force: bool,
    ) -> Result<DynamicObject, kube::Error> {
        let mut pp = PatchParams::apply(MANAGER).validation(ValidationDirective::Strict);
        pp.dry_run = dry_run;
        pp.force = force;
        self.api(client)
            .patch(&self.name, &pp, &Patch::Apply(&self.body))
            .await
    }

    fn outcome(&self, change: Change) -> Outcome {
        Outcome {
            kind: self.kind.to_string(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            change,
        }
    }
}

/// Applies `manifests` to `namespace` with server-side apply (field manager `ferry`), after a
/// dry run of every object has passed, then deletes the objects labelled `selector` that the
/// manifests no longer hold (never the Namespace).
///
/// With `opts.dry_run` nothing is changed (the server still validates everything, deletions
/// included) and the result says what would change.
pub async fn apply(
    client: &Client,
    manifests: &Manifests,
    namespace: &str,
    selector: &str,
    opts: &ApplyOptions,
    ui: &Ui,
) -> Result<Applied, KubeError> {
    if selector.trim().is_empty() {
        // An empty selector matches every object in the namespace: pruning would delete
        // everything this release does not hold, ferry's or not.
        return Err(KubeError::Request {
            action: format!("prune namespace {namespace}"),
            cause: "no label selector: refusing to prune every object in the namespace".into(),
        });
    }
    let targets: Vec<Target> = manifests
        .objects
        .iter()
        .map(|o| Target::new(o, namespace))
        .collect();
    let step = ui.step(if opts.dry_run {
        format!(
            "checking {} objects against namespace {namespace} (dry run)",
            targets.len()
        )
    } else {
        format!(
            "applying {} objects to namespace {namespace}",
            targets.len()
        )
    });
    let result = run(client, &targets, namespace, selector, opts, ui, &step).await;
    match &result {
        Ok(a) if a.dry_run => step.finish(format!("dry run: would be {}", a.summary())),
        Ok(a) => step.finish(format!("applied to {namespace}: {}", a.summary())),
        Err(_) => step.fail(),
    }
    result
}

async fn run(
    client: &Client,
    targets: &[Target],
    namespace: &str,
    selector: &str,
    opts: &ApplyOptions,
    ui: &Ui,
    step: &Step,
) -> Result<Applied, KubeError> {
    // What exists now, to tell created from configured from unchanged afterwards.
    let mut before = Vec::with_capacity(targets.len());
    let mut skipped = vec![false; targets.len()];
    for (i, t) in targets.iter().enumerate() {
        step.set_detail(format!("reading {}", t.label()));
        match t.get(client).await {
            Ok(o) => before.push(o),
            // Teams often get a namespace made for them and rights inside it only: leave the
            // Namespace alone then; if it is missing after all, the namespaced objects say so.
            Err(kube::Error::Api(s)) if s.code == 403 && t.namespace.is_none() => {
                ui.warn(format!(
                    "these credentials may not read {} (cluster-scoped); leaving it as it is",
                    t.label()
                ));
                skipped[i] = true;
                before.push(None);
            }
            Err(e) => return Err(t.op("get").error(e)),
        }
    }
    // Namespaced objects cannot be checked (or created) before their namespace exists.
    let namespace_missing = targets
        .iter()
        .zip(&before)
        .zip(&skipped)
        .any(|((t, b), skip)| t.kind == "Namespace" && b.is_none() && !skip);
    let deferred = |t: &Target| namespace_missing && t.namespace.is_some();

    let mut dry: Vec<Option<DynamicObject>> = vec![None; targets.len()];
    let checks: Vec<usize> = (0..targets.len())
        .filter(|&i| !skipped[i] && !deferred(&targets[i]))
        .collect();
    for i in dry_run_all(client, targets, &checks, &before, opts, step, &mut dry).await? {
        ui.warn(format!(
            "these credentials may not change {} (cluster-scoped); leaving it as it is",
            targets[i].label()
        ));
        skipped[i] = true;
    }

    let mut out = Applied {
        dry_run: opts.dry_run,
        objects: Vec::new(),
    };
    if opts.dry_run {
        for (i, t) in targets.iter().enumerate() {
            if skipped[i] {
                continue;
            }
            let change = match (&before[i], &dry[i]) {
                (None, _) => Change::Created,
                (Some(b), Some(a)) if same_content(b, a) => Change::Unchanged,
                (Some(_), _) => Change::Configured,
            };
            out.objects.push(t.outcome(change));
        }
        if namespace_missing {
            // Nothing can be in a namespace that does not exist: nothing to prune.
            return Ok(out);
        }
    } else {
        let mut done = vec![false; targets.len()];
        if namespace_missing {
            // The one write before the whole set is checked: an empty namespace, which the
            // remaining dry run needs and which harms nothing if that dry run fails.
            for (i, t) in targets.iter().enumerate() {
                if t.namespace.is_none() && !skipped[i] {
                    step.set_detail(format!("creating {}", t.label()));
                    t.patch(client, false, opts.force_conflicts)
                        .await
                        .map_err(|e| t.op("patch").error(e))?;
                    out.objects.push(t.outcome(Change::Created));
                    done[i] = true;
                }
            }
            let rest: Vec<usize> = (0..targets.len())
                .filter(|&i| !skipped[i] && !done[i])
                .collect();
            dry_run_all(client, targets, &rest, &before, opts, step, &mut dry)
                .await
                .map_err(|e| match e {
                    KubeError::Rejected { rejected, .. } => KubeError::Rejected {
                        rejected,
                        created_namespace: Some(namespace.to_string()),
                    },
                    e => e,
                })?;
        }
        for (i, t) in targets.iter().enumerate() {
            if skipped[i] || done[i] {
                continue;
            }
            step.set_detail(format!("applying {}", t.label()));
            let after = match t.patch(client, false, opts.force_conflicts).await {
                Ok(after) => after,
                Err(e) => {
                    let failure = t.op("patch").error(e);
                    if out.objects.is_empty() {
                        return Err(failure);
                    }
                    return Err(partly_applied(failure, targets, i, &skipped, &done, &out));
                }
            };
            let change = match &before[i] {
                None => Change::Created,
                Some(b) if unchanged(b, &after) => Change::Unchanged,
                Some(_) => Change::Configured,
            };
            out.objects.push(t.outcome(change));
        }
    }

    let keep: BTreeSet<(&str, &str)> = targets.iter().map(|t| (t.kind, t.name.as_str())).collect();
    let pruned = prune(client, namespace, selector, &keep, opts.dry_run, step).await?;
    out.objects.extend(pruned);
    Ok(out)
}

/// A write failed after others succeeded: the namespace holds part of the new revision, and the
/// user must hear which part, since no rollback can be trusted to reach a server that just
/// went away.
fn partly_applied(
    failure: KubeError,
    targets: &[Target],
    failed: usize,
    skipped: &[bool],
    done: &[bool],
    out: &Applied,
) -> KubeError {
    let lost = matches!(failure, KubeError::Disconnected { .. });
    let mut not_applied: Vec<String> = targets
        .iter()
        .enumerate()
        .filter(|&(i, _)| i > failed && !skipped[i] && !done[i])
        .map(|(_, t)| t.label())
        .collect();
    let unsure = if lost {
        Some(targets[failed].label())
    } else {
        not_applied.insert(0, targets[failed].label());
        None
    };
    KubeError::PartlyApplied {
        failure: Box::new(failure),
        applied: out.objects.iter().map(Outcome::to_string).collect(),
        unsure,
        not_applied,
    }
}

pub(crate) fn partly_applied_report(
    failure: &KubeError,
    applied: &[String],
    unsure: Option<&str>,
    not_applied: &[String],
) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let mut out = format!(
        "{failure}\n  applied before that: {}\n  not applied: {}",
        list(applied),
        list(not_applied)
    );
    if let Some(u) = unsure {
        out.push_str(&format!(
            "\n  unknown: {u} (the connection broke during its write)"
        ));
    }
    out.push_str("\n  hint: once the API server answers, run the same command again (applying twice is harmless), and `ferry status ENV` shows what the cluster runs meanwhile");
    out
}

/// Applies `which` targets with `dryRun=All`, every one of them even after a failure, so the
/// report names every conflict and every invalid object at once. Returns the cluster-scoped
/// objects that exist but may not be changed with these credentials: those are left alone.
async fn dry_run_all(
    client: &Client,
    targets: &[Target],
    which: &[usize],
    before: &[Option<DynamicObject>],
    opts: &ApplyOptions,
    step: &Step,
    results: &mut [Option<DynamicObject>],
) -> Result<Vec<usize>, KubeError> {
    let mut conflicts = Vec::new();
    let mut rejected = Vec::new();
    let mut untouchable = Vec::new();
    for &i in which {
        let t = &targets[i];
        step.set_detail(format!("dry run: {}", t.label()));
        match t.patch(client, true, opts.force_conflicts).await {
            Ok(o) => results[i] = Some(o),
            // A namespace made for the team, with rights inside it only.
            Err(kube::Error::Api(s))
                if s.code == 403 && t.namespace.is_none() && before[i].is_some() =>
            {
                untouchable.push(i);
            }
            Err(kube::Error::Api(s)) => {
                if let Some(c) = field_conflicts(&s, &t.label()) {
                    conflicts.extend(c);
                } else if matches!(s.code, 400 | 422) || s.reason == "Invalid" {
                    rejected.push(Rejection {
                        object: t.label(),
                        message: rejection_message(&s),
                    });
                } else {
                    return Err(t.op("patch").error(kube::Error::Api(s)));
                }
            }
            Err(e) => return Err(t.op("patch").error(e)),
        }
    }
    if !conflicts.is_empty() {
        return Err(KubeError::Conflicts { conflicts });
    }
    if !rejected.is_empty() {
        return Err(KubeError::Rejected {
            rejected,
            created_namespace: None,
        });
    }
    Ok(untouchable)
}

/// The conflicts in a 409 from server-side apply, by manager; `None` for any other failure
/// (a 409 can also be an optimistic-concurrency clash, which has no field causes).
fn field_conflicts(s: &Status, object: &str) -> Option<Vec<Conflict>> {
    if s.code != 409 {
        return None;
    }
    let causes: Vec<_> = s
        .details
        .iter()
        .flat_map(|d| &d.causes)
        .filter(|c| c.reason == "FieldManagerConflict")
        .collect();
    if causes.is_empty() {
        return None;
    }
    let mut out: Vec<Conflict> = Vec::new();
    for c in causes {
        // `conflict with "kubectl-edit" using apps/v1`, or `… with subresource "scale" …`.
        let manager = c
            .message
            .split('"')
            .nth(1)
            .unwrap_or(c.message.as_str())
            .to_string();
        match out.iter_mut().find(|x| x.manager == manager) {
            Some(x) => x.fields.push(c.field.clone()),
            None => out.push(Conflict {
                object: object.to_string(),
                manager,
                fields: vec![c.field.clone()],
            }),
        }
    }
    Some(out)
}

/// A refusal's message: the server's summary already lists the causes of an Invalid, so the
/// causes are added only where the message lacks them.
fn rejection_message(s: &Status) -> String {
    let mut m = s.message.clone();
    for c in s.details.iter().flat_map(|d| &d.causes) {
        if !c.message.is_empty() && !m.contains(&c.message) {
            m.push_str(&format!("; {}: {}", c.field, c.message));
        }
    }
    m
}

/// Whether an apply left the object as it was. The same resourceVersion says so at once; a
/// different one may only mean a controller wrote the status in between (a Deployment's does,
/// all through a rollout), so the objects are compared without status and bookkeeping.
fn unchanged(before: &DynamicObject, after: &DynamicObject) -> bool {
    (before.resource_version().is_some() && before.resource_version() == after.resource_version())
        || same_content(before, after)
}

/// A dry run is judged by content alone: the API server answers a dry-run update with the
/// object as it would be but keeps its resourceVersion, changed or not.
fn same_content(before: &DynamicObject, after: &DynamicObject) -> bool {
    fn strip(o: &DynamicObject) -> Value {
        let mut v = serde_json::to_value(o).unwrap_or_default();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
            m.remove("managedFields");
            m.remove("generation");
        }
        if let Some(o) = v.as_object_mut() {
            o.remove("status");
        }
        v
    }
    strip(before) == strip(after)
}

/// Deletes the objects of ferry's kinds that carry `selector` but are not in `keep`.
async fn prune(
    client: &Client,
    namespace: &str,
    selector: &str,
    keep: &BTreeSet<(&str, &str)>,
    dry_run: bool,
    step: &Step,
) -> Result<Vec<Outcome>, KubeError> {
    let mut out = Vec::new();
    let lp = ListParams::default().labels(selector);
    for kind in PRUNABLE {
        let Some((ar, _)) = resource(kind) else {
            continue;
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
        let op = Op::new("list", rbac_name(&ar)).namespace(namespace);
        step.set_detail(format!("looking for stale {kind}s"));
        // Metadata only: a Secret's values are not needed to decide on it.
        let list = match api.list_metadata(&lp).await {
            Ok(l) => l,
            // A kind the cluster does not serve has nothing to prune.
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => return Err(op.error(e)),
        };
        for o in list.items {
            let name = o.metadata.name.clone().unwrap_or_default();
            let ours = o
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_MANAGED_BY))
                .is_some_and(|v| v == MANAGER);
            // Something a controller made (labels copied from a template) is its controller's.
            let owned = o
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.controller == Some(true));
            if name.is_empty()
                || keep.contains(&(kind, name.as_str()))
                || !ours
                || owned
                || o.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            step.set_detail(format!("pruning {kind} {name}"));
            let mut dp = DeleteParams::background();
            dp.dry_run = dry_run;
            match api.delete(&name, &dp).await {
                Ok(_) => {}
                // Gone in the meantime: the outcome is the same.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    return Err(Op::new("delete", rbac_name(&ar))
                        .name(&name)
                        .namespace(namespace)
                        .error(e));
                }
            }
            out.push(Outcome {
                kind: kind.to_string(),
                name,
                namespace: Some(namespace.to_string()),
                change: Change::Pruned,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::response::{StatusCause, StatusDetails};

    fn conflict_status() -> Status {
        Status::failure(
            "Apply failed with 2 conflicts: conflicts with \"kubectl-edit\" using apps/v1:\n- .spec.replicas\n- .spec.template.spec.containers[name=\"server\"].image",
            "Conflict",
        )
        .with_code(409)
        .with_details(StatusDetails {
            name: String::new(),
            group: String::new(),
            kind: String::new(),
            uid: String::new(),
            causes: vec![
                StatusCause {
                    reason: "FieldManagerConflict".into(),
                    message: "conflict with \"kubectl-edit\" using apps/v1".into(),
                    field: ".spec.replicas".into(),
                },
                StatusCause {
                    reason: "FieldManagerConflict".into(),
                    message: "conflict with \"helm\" with subresource \"scale\" using apps/v1"
                        .into(),
                    field: ".spec.template.spec.containers[name=\"server\"].image".into(),
                },
            ],
            retry_after_seconds: 0,
        })
    }

    #[test]
    fn conflicts_are_grouped_by_manager() {
        let c = field_conflicts(&conflict_status(), "Deployment churn").unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].manager, "kubectl-edit");
        assert_eq!(c[0].fields, vec![".spec.replicas"]);
        assert_eq!(c[1].manager, "helm");
        let report = conflicts_report(&c);
        assert!(report.contains("Deployment churn: .spec.replicas (owned by \"kubectl-edit\")"));
        assert!(report.contains("--force-conflicts"));
    }

    #[test]
    fn a_409_without_field_causes_is_not_a_field_conflict() {
        let s = Status::failure("the object has been modified", "Conflict").with_code(409);
        assert!(field_conflicts(&s, "Deployment churn").is_none());
    }

    #[test]
    fn namespaced_objects_get_the_target_namespace_and_the_namespace_stays_cluster_scoped() {
        let ns = Object::Namespace(Namespace {
            metadata: kube::core::ObjectMeta {
                name: Some("prod".into()),
                ..Default::default()
            },
            ..Default::default()
        });
        let cm = Object::ConfigMap(ConfigMap {
            metadata: kube::core::ObjectMeta {
                name: Some("churn-serving".into()),
                namespace: Some("elsewhere".into()),
                ..Default::default()
            },
            ..Default::default()
        });
        let t = Target::new(&ns, "prod");
        assert_eq!(t.namespace, None);
        assert_eq!(t.op("patch").describe(), "patch namespaces prod");
        let t = Target::new(&cm, "prod");
        assert_eq!(t.body["metadata"]["namespace"], "prod");
        assert_eq!(
            t.op("patch").describe(),
            "patch configmaps churn-serving in namespace prod"
        );
    }

    #[test]
    fn a_status_written_meanwhile_is_no_change() {
        let d = |rv: &str, replicas: i64, ready: i64| -> DynamicObject {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "churn", "resourceVersion": rv, "generation": 3},
                "spec": {"replicas": replicas},
                "status": {"readyReplicas": ready}
            }))
            .unwrap()
        };
        assert!(unchanged(&d("10", 2, 1), &d("10", 2, 1)));
        assert!(unchanged(&d("10", 2, 1), &d("12", 2, 2)));
        assert!(!unchanged(&d("10", 2, 1), &d("12", 3, 1)));
        // A dry run keeps the resourceVersion even when it would change the spec.
        assert!(!same_content(&d("10", 2, 1), &d("10", 3, 1)));
        assert!(same_content(&d("10", 2, 1), &d("10", 2, 1)));
    }

    #[test]
    fn the_summary_leaves_out_zeros() {
        let o = |change| Outcome {
            kind: "ConfigMap".into(),
            name: "x".into(),
            namespace: None,
            change,
        };
        let a = Applied {
            dry_run: false,
            objects: vec![o(Change::Created), o(Change::Unchanged), o(Change::Pruned)],
        };
        assert_eq!(a.summary(), "1 created, 1 unchanged, 1 pruned");
        assert!(a.changed());
        assert_eq!(Applied::default().summary(), "nothing to apply");
    }
}

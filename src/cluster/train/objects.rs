//! The objects a cluster training (and the cluster notebook) sets up around its pods: the
//! namespace, the environment's Secret, server-side apply of typed objects, and the Job's own
//! handle — where it runs, how its pod is found, how it is deleted.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::core::ObjectMeta;

use crate::cluster::ClusterError;
use crate::kube::Secrets;
use crate::kube::client::Op;
use crate::kube::render::{LABEL_ENV, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME, MANAGER};
use crate::kube::workloads::Placement;
use crate::ui::Ui;

/// The Secret holding an environment's secrets (the one `promote` applies too).
pub(crate) fn secret_name(project: &str) -> String {
    format!("{project}-secrets")
}

/// Creates the namespace when it does not exist (as `promote` does), labelled as ferry's.
/// Credentials that may not read namespaces leave it to the first namespaced request to say.
pub(crate) async fn ensure_namespace(client: &Client, ns: &str) -> Result<(), ClusterError> {
    let api: Api<Namespace> = Api::all(client.clone());
    match api.get_opt(ns).await {
        Ok(Some(_)) => return Ok(()),
        Ok(None) => {}
        Err(kube::Error::Api(s)) if s.code == 403 => return Ok(()),
        Err(e) => return Err(Op::new("get", "namespaces").name(ns).error(e).into()),
    }
    let body = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.to_string()),
            labels: Some(BTreeMap::from([(
                LABEL_MANAGED_BY.to_string(),
                MANAGER.to_string(),
            )])),
            ..Default::default()
        },
        ..Default::default()
    };
    api.patch(ns, &PatchParams::apply(MANAGER), &Patch::Apply(&body))
        .await
        .map_err(|e| Op::new("patch", "namespaces").name(ns).error(e))?;
    Ok(())
}

/// Applies the environment's secrets as the Secret the workloads read them from, with
/// server-side apply (field manager `ferry`, as `promote` applies the same Secret).
pub(crate) async fn apply_env_secret(
    client: &Client,
    p: &Placement,
    name: &str,
    secrets: &Secrets,
) -> Result<(), ClusterError> {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(p.namespace.clone()),
            labels: Some(BTreeMap::from([
                (LABEL_NAME.to_string(), p.project.clone()),
                (LABEL_INSTANCE.to_string(), p.project.clone()),
                (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
                (LABEL_ENV.to_string(), p.env.clone()),
            ])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            secrets
                .values()
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                .collect(),
        ),
        ..Default::default()
    };
    ssa(client, &p.namespace, name, &secret, "secrets").await
}

/// Server-side apply of one typed object (field manager `ferry`).
pub(crate) async fn ssa<K>(
    client: &Client,
    ns: &str,
    name: &str,
    object: &K,
    resource: &str,
) -> Result<(), ClusterError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    <K as kube::Resource>::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.patch(name, &PatchParams::apply(MANAGER), &Patch::Apply(object))
        .await
        .map_err(|e| {
            Op::new("patch", resource.to_string())
                .name(name)
                .namespace(ns)
                .error(e)
        })?;
    Ok(())
}

/// Where the Job runs and how its pod is found.
pub(crate) struct JobCtx {
    pub(crate) client: Client,
    pub(crate) ns: String,
    pub(crate) job: String,
    pub(crate) selector: String,
    pub(crate) workdir: String,
}

impl JobCtx {
    pub(crate) fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub(crate) fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// The Job as it is now; `None` once it is gone.
    pub(crate) async fn job(&self) -> Result<Option<Job>, ClusterError> {
        self.jobs().get_opt(&self.job).await.map_err(|e| {
            Op::new("get", "jobs.batch")
                .name(&self.job)
                .namespace(&self.ns)
                .error(e)
                .into()
        })
    }
}

pub(crate) async fn delete_job(ctx: &JobCtx, ui: &Ui) {
    match ctx
        .jobs()
        .delete(&ctx.job, &DeleteParams::background())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => ui.warn(format!(
            "{}\n  hint: remove it with `kubectl delete job {} -n {}`",
            Op::new("delete", "jobs.batch")
                .name(&ctx.job)
                .namespace(&ctx.ns)
                .error(e),
            ctx.job,
            ctx.ns
        )),
    }
}

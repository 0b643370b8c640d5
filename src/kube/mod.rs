//! The cluster backend: the plan rendered as typed Kubernetes objects, applied with server-side
//! apply, watched until the rollout is done.
//!
//! ```text
//! Release (project + plan + image digest + secrets) ──render──► Manifests ──apply──► cluster
//! ```

pub mod apply;
pub mod client;
pub mod logs;
pub mod nodes;
pub mod render;
pub mod rollout;
pub mod secrets;
pub mod workloads;

use std::path::PathBuf;

pub use render::{Manifests, Object, Release, render};
pub use secrets::Secrets;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "environment {env} is not a cluster environment\n  hint: give it `target: kubernetes` in ferry.yaml"
    )]
    NotACluster { env: String },
    #[error(
        "{image} is not a reference by digest (repository@sha256:…); clusters run images by digest only"
    )]
    NotByDigest { image: String },
    #[error("secrets file {}{}: {message}", path.display(), if *line > 0 { format!(":{line}") } else { String::new() })]
    Secrets {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "no kubeconfig found (looked at {looked}) and not running inside a cluster\n  hint: get credentials with your cluster's tool (e.g. `gcloud container clusters get-credentials`, `aws eks update-kubeconfig`, `az aks get-credentials`, `kind create cluster`), or point KUBECONFIG at a kubeconfig file"
    )]
    NoKubeconfig { looked: String },
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error(
        "kubeconfig {origin} has no current context{}\n  hint: name one with `context:` in the environment, or choose one with `kubectl config use-context NAME`",
        list_or_none(available)
    )]
    NoCurrentContext {
        origin: String,
        available: Vec<String>,
    },
    #[error(
        "context {context} is not in {origin}{}{}",
        list_or_none(available),
        suggestion.as_ref().map(|s| format!("\n  hint: did you mean {s}?")).unwrap_or_default()
    )]
    UnknownContext {
        context: String,
        origin: String,
        available: Vec<String>,
        suggestion: Option<String>,
    },
    #[error(
        "cannot reach the Kubernetes API server {server} (context {context}): {cause}\n  hint: check that the cluster is running and that this machine can reach it (VPN, firewall); `kubectl --context {context} cluster-info` shows the same"
    )]
    Unreachable {
        server: String,
        context: String,
        cause: String,
    },
    #[error(
        "the API server rejected the credentials (401 Unauthorized) trying to {action}\n  hint: the token or certificate in the kubeconfig has expired or is wrong; fetch fresh credentials with your cluster's tool, then retry"
    )]
    Unauthorized { action: String },
    #[error(
        "forbidden: these credentials may not {verb} {resource} {}: {message}\n  hint: check with `kubectl auth can-i {verb} {resource}{}`; ask a cluster admin for a Role{} that grants it",
        namespace.as_ref().map_or("(cluster-wide)".to_string(), |n| format!("in namespace {n}")),
        namespace.as_ref().map(|n| format!(" -n {n}")).unwrap_or_default(),
        if namespace.is_none() { " (a ClusterRole)" } else { "" }
    )]
    Forbidden {
        verb: String,
        resource: String,
        namespace: Option<String>,
        message: String,
    },
    #[error(
        "could not obtain the kubeconfig's credentials{}: {message}\n  hint: if it runs a credential plugin (gke-gcloud-auth-plugin, aws, kubelogin), check it is installed, on PATH and logged in",
        context.as_ref().map(|c| format!(" for context {c}")).unwrap_or_default()
    )]
    Credentials {
        context: Option<String>,
        message: String,
    },
    #[error("lost the connection to the API server trying to {action}: {cause}")]
    Disconnected { action: String, cause: String },
    #[error("could not {action}: {cause}")]
    Request { action: String, cause: String },
    #[error("the API server refused to {action} ({code}): {message}")]
    Api {
        action: String,
        code: u16,
        message: String,
    },
    #[error("{}", apply::conflicts_report(conflicts))]
    Conflicts { conflicts: Vec<apply::Conflict> },
    #[error("{}", apply::rejections_report(rejected, created_namespace.as_deref()))]
    Rejected {
        rejected: Vec<apply::Rejection>,
        /// Set when the namespace had to be created before its objects could be checked.
        created_namespace: Option<String>,
    },
    #[error("{}", apply::partly_applied_report(failure, applied, unsure.as_deref(), not_applied))]
    PartlyApplied {
        failure: Box<KubeError>,
        applied: Vec<String>,
        /// The object whose write broke off: it may or may not have reached the server.
        unsure: Option<String>,
        not_applied: Vec<String>,
    },
    #[error("interrupted while {action}")]
    Interrupted { action: String },
    #[error("{}", rollout::failure_report(reason, details, logs))]
    RolloutFailed {
        reason: String,
        details: Vec<String>,
        logs: Vec<String>,
    },
}

/// The contexts a kubeconfig offers, for an error message.
fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        " (it has no contexts)".into()
    } else {
        format!("; its contexts: {}", names.join(", "))
    }
}

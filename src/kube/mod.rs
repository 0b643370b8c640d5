//! The cluster backend: the plan rendered as typed Kubernetes objects, applied with server-side
//! apply, watched until the rollout is done.
//!
//! ```text
//! Release (project + plan + image digest + secrets) ──render──► Manifests ──apply──► cluster
//! ```

pub mod render;
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
}

//! The spec, `ferry.yaml`: types, loading with precise errors, environment overlays, validation
//! and the spec hash. Knows nothing of Docker or Kubernetes.
//!
//! ```text
//! load(path, env) ──► Project { root, file, env, spec: Spec (resolved), hash }
//! ```

mod hash;
mod load;
mod paths;
pub mod quantity;
mod steps;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use hash::{SpecHash, hash_project, model_files, path_digest, referenced_files, sha256_file};
pub use load::{Problem, SpecError};
#[cfg(feature = "cli")]
pub(crate) use load::{did_you_mean, is_dns_label};
pub use paths::RelPath;
pub use quantity::{Cpu, Memory};
pub use steps::{Bar, Check, Graph, Op, Step, TRAIN_STEP, metric_value, overlaps};

pub use crate::platform::{Arch, Platform};
/// `serve.device`: the serving config's own type, so the spec and the server cannot disagree.
pub use crate::server::config::Device;

/// The file name ferry looks for.
pub const SPEC_FILE: &str = "ferry.yaml";

/// A spec as written, before an environment overlay is applied.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub name: String,
    pub environment: Environment,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notebook: Option<Notebook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<Train>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve: Option<Serve>,
    /// Defaults for `ferry score`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<Score>,
    /// Named steps, ordered by the outputs they read from each other. `train:`, when present,
    /// is the pipeline's step named `train`.
    #[serde(default, skip_serializing_if = "indexmap::IndexMap::is_empty")]
    pub pipeline: indexmap::IndexMap<String, Step>,
    /// Where the spec runs. Each block may override `environment`, `notebook`, `train`,
    /// `pipeline` and `serve` field by field; `null` removes a field.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environments: BTreeMap<String, Target>,
}

/// The one image for the notebook and training.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// An image to start from (pulled when missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Offline mode: a base built on this machine from Debian packages of this suite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requirements: Option<RelPath>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub system_packages: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The one platform the images are built for (default: the Docker engine's for a Docker
    /// environment, the schedulable nodes' architecture for a cluster one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Several platforms: one image each, pushed as one image index. Not with `platform`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<Platform>,
}

impl Environment {
    /// The platforms the spec asks for, in the order written; empty when it leaves the choice
    /// to the engine or the cluster.
    pub fn requested_platforms(&self) -> Vec<Platform> {
        let mut out: Vec<Platform> = self.platform.into_iter().collect();
        for p in &self.platforms {
            if !out.contains(p) {
                out.push(*p);
            }
        }
        out
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Notebook {
    #[serde(default = "default_notebook_port")]
    pub port: u16,
    /// What the notebook's container may use; `gpu` gives it GPUs as training gets them.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
}

fn default_notebook_port() -> u16 {
    8888
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Train {
    pub command: Command,
    /// Mounted read-only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<RelPath>,
    /// Collected after a successful run; their directories are the only writable mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<RelPath>,
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// A shell command line (`sh -c`) or an argument vector (exec form).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Command {
    Shell(String),
    Exec(Vec<String>),
}

impl Command {
    /// The argument vector a container runs.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            Command::Exec(v) => v.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Command::Shell(s) => s.trim().is_empty(),
            Command::Exec(v) => v.is_empty() || v[0].trim().is_empty(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none() && self.gpu.is_none()
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Serve {
    pub model: RelPath,
    /// The name clients address the model by (default: the project's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default = "default_serve_port")]
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<Batching>,
    /// Sessions of the model, each run by its own thread (default: from the CPUs the server
    /// may use, fewer for large models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
    /// ONNX Runtime threads within each session (default: the CPUs left to each instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    /// Other versions of the model taking a share of its traffic, in percent; the main model
    /// takes the rest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<Variant>,
    /// Further models served by the same server, each under its own name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ExtraModel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// `cpu` (default) or `cuda`: ONNX Runtime's CUDA execution provider, which needs
    /// `resources.gpu` so the server's container is given a GPU.
    #[serde(default, skip_serializing_if = "Device::is_cpu")]
    pub device: Device,
    /// Sampled requests and answers written as JSON lines, for drift analysis, debugging and
    /// `ferry replay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<TrafficLog>,
}

/// `serve.log`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrafficLog {
    /// Share of requests logged, above 0 and at most 1.
    #[serde(default = "default_sample")]
    pub sample: f64,
    /// Where `ferry serve` writes the records, relative to the project.
    #[serde(default = "default_log_path")]
    pub path: RelPath,
    /// A file is rotated when it would grow past this (default 100Mi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<Memory>,
    /// Rotated files kept beside the current one (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<u32>,
    /// In a cluster: a PersistentVolumeClaim the server pods write their records to, one file
    /// per pod. Without it, a cluster's servers write them to their standard output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
}

fn default_sample() -> f64 {
    1.0
}

fn default_log_path() -> RelPath {
    RelPath::parse(DEFAULT_LOG_PATH).unwrap_or_else(|_| unreachable!("a valid relative path"))
}

/// Where `ferry serve` writes `serve.log` records unless the spec says.
pub const DEFAULT_LOG_PATH: &str = "logs/traffic.jsonl";

/// What `ferry score` does when the command line does not say: the model (a served model's name
/// or an `.onnx` path), the tables read, the file written and the columns kept beside the scores.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Score {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Files or directories of CSV and Parquet, relative to the project (or `http(s)://` URLs
    /// for a cluster's scoring Job).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep: Vec<String>,
    /// Input name → the columns that fill it, as `--columns` gives them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub columns: BTreeMap<String, Vec<String>>,
}

fn default_serve_port() -> u16 {
    8080
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Batching {
    pub max_batch_size: u32,
    pub max_delay_ms: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    pub model: RelPath,
    /// Percent of traffic. A shadow gets a copy of that share instead, and its answers are only
    /// compared and logged, never returned.
    pub weight: u32,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// How long a shadow may take before its answer is counted as timed out (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExtraModel {
    pub name: String,
    pub model: RelPath,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<Batching>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Autoscale {
    pub min: u32,
    pub max: u32,
    #[serde(default = "default_cpu_percent")]
    pub cpu_percent: u32,
}

fn default_cpu_percent() -> u32 {
    70
}

/// One entry of `environments`: where it runs, and what it overrides.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub target: TargetKind,
    /// Kubernetes context (default: the current one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Registry repository prefix images are pushed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// The environment `promote` takes what runs from (default: the one written before this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Ask before changing it (default: for environments whose name starts with `prod`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected: Option<bool>,
    /// Exposes the server under a host name through an Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Ingress>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// A Secret of type dockerconfigjson in the namespace, for a private registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secret: Option<String>,
    /// An env file (`KEY=value` lines) whose variables reach the server and training through a
    /// Secret; never printed, never in an image or a ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<RelPath>,
    // Overrides, kept as YAML: they are merged into the base before typed parsing, so each
    // field is validated exactly once, with the same rules, wherever it is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<serde_yaml_ng::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notebook: Option<serde_yaml_ng::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<serde_yaml_ng::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve: Option<serde_yaml_ng::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<serde_yaml_ng::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<serde_yaml_ng::Value>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Ingress {
    pub host: String,
    /// The IngressClass (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// A TLS Secret for the host; without it the Ingress serves plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret: Option<String>,
}

/// A Kubernetes toleration, as the Pod API writes it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Toleration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

/// Where a cluster environment runs and how; absent for Docker environments.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Cluster {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub protected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Ingress>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_pull_secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets: Option<RelPath>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Docker,
    Kubernetes,
}

/// The spec as one environment sees it: overlays applied, `environments` reduced to the chosen one.
#[derive(Clone, Debug, Serialize)]
pub struct Resolved {
    pub name: String,
    /// The environment applied, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    pub target: TargetKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// Cluster settings of a `target: kubernetes` environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Cluster>,
    pub environment: Environment,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notebook: Option<Notebook>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train: Option<Train>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serve: Option<Serve>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<Score>,
    #[serde(skip_serializing_if = "indexmap::IndexMap::is_empty")]
    pub pipeline: indexmap::IndexMap<String, Step>,
}

impl Resolved {
    /// The steps `ferry run` runs: `train` as the step named `train`, and `pipeline`'s.
    pub fn steps(&self) -> indexmap::IndexMap<String, Step> {
        steps_of(self.train.as_ref(), &self.pipeline)
    }
}

/// `train` as the step named `train`, then the pipeline's steps.
pub fn steps_of(
    train: Option<&Train>,
    pipeline: &indexmap::IndexMap<String, Step>,
) -> indexmap::IndexMap<String, Step> {
    let mut steps: indexmap::IndexMap<String, Step> = train
        .map(|t| (TRAIN_STEP.to_string(), Step::from_train(t)))
        .into_iter()
        .collect();
    for (name, step) in pipeline {
        steps.entry(name.clone()).or_insert_with(|| step.clone());
    }
    steps
}

/// A loaded project: where it lives and its spec resolved for one environment.
#[derive(Clone, Debug)]
pub struct Project {
    /// The directory holding the spec; every path in the spec is relative to it.
    pub root: PathBuf,
    /// The spec file as given (for messages).
    pub file: PathBuf,
    pub spec: Resolved,
    /// Names of every environment the file defines, in the order it writes them.
    pub environments: Vec<String>,
}

impl Project {
    /// Loads `file`, validates the base spec and every environment, and resolves `env`.
    ///
    /// With no `env`, `dev` is used when the file defines it (the local environment by
    /// convention), otherwise the base spec.
    pub fn load(file: &Path, env: Option<&str>) -> Result<Project, SpecError> {
        load::load(file, env)
    }

    /// As [`Project::load`], with the spec's text already read: `file` is where it lives (its
    /// directory is the project root, where referenced files are looked up) and names it in
    /// messages. The fuzz tests drive the loader through this.
    pub fn load_str(text: &str, file: &Path, env: Option<&str>) -> Result<Project, SpecError> {
        load::load_str(text, file, env)
    }

    /// Finds `ferry.yaml` in `dir` (no walking up: the project is where the user is).
    pub fn load_dir(dir: &Path, env: Option<&str>) -> Result<Project, SpecError> {
        Self::load(&dir.join(SPEC_FILE), env)
    }

    /// An absolute path for a spec path.
    pub fn path(&self, rel: &RelPath) -> PathBuf {
        rel.under(&self.root)
    }

    /// The spec hash: over the resolved spec and the files it references.
    pub fn hash(&self) -> Result<SpecHash, SpecError> {
        hash_project(self)
    }
}

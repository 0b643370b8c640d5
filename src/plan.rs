//! The plan: a resolved spec turned into a few neutral workload descriptions. The Docker backend
//! (and, for clusters, the Kubernetes one) consume only this, so the same spec means the same
//! image, command, mounts, ports and limits wherever it runs.

use std::collections::BTreeMap;

use crate::server::config::{
    BatchingConfig, CONFIG_PATH, Limits, ModelConfig, ServingConfig, TrafficLogConfig,
    VariantConfig, default_keep, default_max_size,
};
use crate::spec::{Cpu, Memory, Project, RelPath, Resources, Serve, Step};

/// Where the project lives inside every container.
pub const WORKDIR: &str = "/workspace";
/// The virtual environment the environment image installs requirements into.
pub const VENV: &str = "/opt/venv";
/// The notebook server ferry adds when the spec has a `notebook` section and the requirements
/// do not name one.
pub const NOTEBOOK_PACKAGE: &str = "jupyterlab";
/// The variable the notebook's token is passed in (Jupyter reads it; never on a command line).
pub const TOKEN_VAR: &str = "JUPYTER_TOKEN";

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub project: String,
    pub env_image: EnvImage,
    pub notebook: Option<Workload>,
    pub train: Option<Workload>,
    pub serve: Option<Serving>,
}

/// The model server: its container and the configuration baked into the serving image.
#[derive(Clone, Debug, PartialEq)]
pub struct Serving {
    pub workload: Workload,
    /// Paths in it are where the models are inside the serving image.
    pub config: ServingConfig,
    pub models: Vec<ModelFile>,
    /// Copies in a cluster (a local server is one).
    pub replicas: u32,
    pub autoscale: Option<crate::spec::Autoscale>,
    /// In a cluster, the PersistentVolumeClaim `serve.log` records go to (else stdout).
    pub log_volume: Option<String>,
}

/// A model file of the project and where the serving image holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFile {
    pub source: RelPath,
    pub image_path: String,
}

/// The port the server listens on inside its container.
pub const SERVE_CONTAINER_PORT: u16 = 8080;

/// How the environment image's base comes to exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Base {
    /// An image: used if present, pulled otherwise.
    Image(String),
    /// Built on this machine from Debian packages (offline mode); the system packages go in here.
    Bootstrap {
        suite: String,
        packages: Vec<String>,
    },
}

/// The one image for the notebook and training.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvImage {
    pub base: Base,
    /// Installed with apt in the image (only for `Base::Image`; a bootstrapped base has them).
    pub apt_packages: Vec<String>,
    /// The user's requirements file, if any.
    pub requirements: Option<RelPath>,
    /// Requirement lines ferry adds (the notebook server).
    pub extra_requirements: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// A container to run: the same description for a local container and a cluster pod.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    /// `notebook` or `train`: names containers and objects.
    pub role: &'static str,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: String,
    pub volumes: Vec<Volume>,
    pub ports: Vec<Port>,
    pub cpu: Option<Cpu>,
    pub memory: Option<Memory>,
    pub gpu: Option<u32>,
    /// Files the workload must leave behind (training outputs).
    pub outputs: Vec<RelPath>,
    /// Set when the workload executes a notebook (`ferry train --notebook`).
    pub notebook: Option<NotebookRun>,
}

/// A notebook executed headless as the training workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotebookRun {
    /// The notebook as the project holds it.
    pub source: RelPath,
    /// Where the executed copy is written (in a writable volume): kept with the run record.
    pub executed: RelPath,
}

/// What executing a notebook headless needs in the environment; a notebook server
/// (jupyterlab) brings both.
pub const NOTEBOOK_EXECUTOR: [&str; 2] = ["nbclient", "ipykernel"];

/// A project path mounted at the same place under the workdir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub path: VolumePath,
    pub read_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumePath {
    /// The whole project (the notebook edits it in place).
    Project,
    /// One path inside it.
    Sub(RelPath),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port {
    pub container: u16,
    /// The port users reach it on (local: on 127.0.0.1).
    pub published: u16,
}

/// The port Jupyter listens on inside the container; the spec's port is where it is published.
pub const NOTEBOOK_CONTAINER_PORT: u16 = 8888;

pub fn plan(project: &Project, user_requirements: &str) -> Plan {
    let s = &project.spec;
    let e = &s.environment;
    let base = match (&e.base, &e.bootstrap) {
        (Some(image), _) => Base::Image(image.clone()),
        (None, Some(suite)) => Base::Bootstrap {
            suite: suite.clone(),
            packages: sorted(&e.system_packages),
        },
        // Validation refuses a spec with neither; default to the common image all the same.
        (None, None) => Base::Image("python:3.11-slim".into()),
    };
    let apt_packages = match base {
        Base::Image(_) => sorted(&e.system_packages),
        Base::Bootstrap { .. } => Vec::new(),
    };
    let mut extra_requirements = Vec::new();
    if s.notebook.is_some() && !names_notebook_server(user_requirements) {
        extra_requirements.push(NOTEBOOK_PACKAGE.to_string());
    }

    let notebook = s.notebook.as_ref().map(|nb| {
        let Resources { cpu, memory, gpu } = nb.resources.clone();
        Workload {
            role: "notebook",
            argv: [
                "jupyter",
                "lab",
                "--ip=0.0.0.0",
                "--no-browser",
                "--ServerApp.root_dir=/workspace",
                // The container runs as the project's owner, which is root on some machines; the
                // container boundary, not Jupyter's check, is what protects the host there.
                "--allow-root",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([format!("--port={NOTEBOOK_CONTAINER_PORT}")])
            .collect(),
            env: e.env.clone(),
            workdir: WORKDIR.into(),
            volumes: vec![Volume {
                path: VolumePath::Project,
                read_only: false,
            }],
            ports: vec![Port {
                container: NOTEBOOK_CONTAINER_PORT,
                published: nb.port,
            }],
            cpu,
            memory,
            gpu,
            outputs: Vec::new(),
            notebook: None,
        }
    });

    let train = s
        .train
        .as_ref()
        .map(|t| step_workload(project, &Step::from_train(t), "train"));

    let serve = s.serve.as_ref().map(|sv| serving(&s.name, sv));

    Plan {
        serve,
        project: s.name.clone(),
        env_image: EnvImage {
            base,
            apt_packages,
            requirements: e.requirements.clone(),
            extra_requirements,
            env: e.env.clone(),
        },
        notebook,
        train,
    }
}

/// A pipeline step (or `train:`) as a container: the environment's variables and the step's,
/// inputs read-only, the outputs' directories the only writable mounts. A notebook step runs
/// the notebook executor in place of a command.
pub fn step_workload(project: &Project, step: &Step, role: &'static str) -> Workload {
    let mut env = project.spec.environment.env.clone();
    env.extend(step.env.clone());
    // A notebook step reads its notebook as it is on disk (its bytes are in the step's key),
    // not the copy in the image.
    let mut volumes: Vec<Volume> = step
        .inputs
        .iter()
        .chain(
            step.notebook
                .iter()
                .filter(|nb| !step.inputs.iter().any(|i| nb.starts_with(i))),
        )
        .map(|p| Volume {
            path: VolumePath::Sub(p.clone()),
            read_only: true,
        })
        .collect();
    volumes.extend(output_dirs(&step.outputs).into_iter().map(|d| Volume {
        path: VolumePath::Sub(d),
        read_only: false,
    }));
    let Resources { cpu, memory, gpu } = step.resources.clone();
    let work = Workload {
        role,
        argv: step.command.as_ref().map(|c| c.argv()).unwrap_or_default(),
        env,
        workdir: WORKDIR.into(),
        volumes,
        ports: Vec::new(),
        cpu,
        memory,
        gpu,
        outputs: step.outputs.clone(),
        notebook: None,
    };
    match &step.notebook {
        Some(nb) => crate::notebook::workload(
            &work,
            &crate::notebook::Request {
                notebook: nb.clone(),
                params: step
                    .params
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            },
        ),
        None => work,
    }
}

fn serving(project: &str, sv: &Serve) -> Serving {
    let mut models = Vec::new();
    let mut file = |model: &str, variant: &str, source: &RelPath| {
        let image_path = format!("/models/{model}/{variant}/model.onnx");
        models.push(ModelFile {
            source: source.clone(),
            image_path: image_path.clone(),
        });
        image_path
    };
    let batching = |b: &Option<crate::spec::Batching>| {
        b.as_ref().map(|b| BatchingConfig {
            max_batch_size: b.max_batch_size,
            max_delay_ms: b.max_delay_ms,
        })
    };
    let main = sv.name.clone().unwrap_or_else(|| project.to_string());
    // Shadows get a copy of their share: they take nothing from the main model.
    let taken: u32 = sv
        .variants
        .iter()
        .filter(|v| !v.shadow)
        .map(|v| v.weight)
        .sum();
    let mut variants = vec![VariantConfig {
        name: "default".into(),
        path: file(&main, "default", &sv.model).into(),
        weight: 100u32.saturating_sub(taken),
        sha256: None,
        source: None,
        shadow: false,
        timeout_ms: None,
    }];
    for v in &sv.variants {
        variants.push(VariantConfig {
            name: v.name.clone(),
            path: file(&main, &v.name, &v.model).into(),
            weight: v.weight,
            sha256: None,
            source: None,
            shadow: v.shadow,
            timeout_ms: v.timeout_ms,
        });
    }
    let mut configs = vec![ModelConfig {
        name: main,
        version: "1".into(),
        variants,
        batching: batching(&sv.batching),
        instances: sv.instances,
        threads: sv.threads,
    }];
    for m in &sv.models {
        configs.push(ModelConfig {
            name: m.name.clone(),
            version: "1".into(),
            variants: vec![VariantConfig {
                name: "default".into(),
                path: file(&m.name, "default", &m.model).into(),
                weight: 100,
                sha256: None,
                source: None,
                shadow: false,
                timeout_ms: None,
            }],
            batching: batching(&m.batching),
            instances: m.instances,
            threads: m.threads,
        });
    }
    let Resources { cpu, memory, gpu } = sv.resources.clone();
    Serving {
        workload: Workload {
            role: "serve",
            argv: vec![
                "/usr/bin/ferry".into(),
                "serve-model".into(),
                "--config".into(),
                CONFIG_PATH.into(),
            ],
            env: BTreeMap::new(),
            workdir: "/".into(),
            volumes: Vec::new(),
            ports: vec![Port {
                container: SERVE_CONTAINER_PORT,
                published: sv.port,
            }],
            cpu,
            memory,
            gpu,
            outputs: Vec::new(),
            notebook: None,
        },
        config: ServingConfig {
            host: "0.0.0.0".into(),
            port: SERVE_CONTAINER_PORT,
            models: configs,
            limits: Limits::default(),
            variant_key_header: "x-ferry-key".into(),
            device: sv.device,
            watch: false,
            // The file is the runtime's to choose (`LOG_ENV`); standard output otherwise.
            log: sv.log.as_ref().map(|l| TrafficLogConfig {
                sample: l.sample,
                path: None,
                max_size: l
                    .max_size
                    .as_ref()
                    .map_or_else(default_max_size, |m| m.bytes),
                keep: l.keep.unwrap_or_else(default_keep),
                queue: None,
            }),
        },
        models,
        replicas: sv.replicas.unwrap_or(1),
        autoscale: sv.autoscale.clone(),
        log_volume: sv.log.as_ref().and_then(|l| l.volume.clone()),
    }
}

/// Makes the environment able to execute notebooks headless: adds what [`NOTEBOOK_EXECUTOR`]
/// names unless the requirements or the notebook server already bring it. The environment
/// of a spec with `notebook:` is therefore the same image for `ferry train --notebook`.
pub fn add_notebook_executor(env: &mut EnvImage, user_requirements: &str) {
    let has_server = env.extra_requirements.iter().any(|r| r == NOTEBOOK_PACKAGE)
        || names_notebook_server(user_requirements);
    if has_server {
        return;
    }
    let named = requirement_names(user_requirements);
    for p in NOTEBOOK_EXECUTOR {
        if !named.iter().any(|n| n == p) && !env.extra_requirements.iter().any(|r| r == p) {
            env.extra_requirements.push(p.to_string());
        }
    }
}

/// The writable directories for a set of outputs: each output's directory, outermost only.
pub fn output_dirs(outputs: &[RelPath]) -> Vec<RelPath> {
    let mut dirs: Vec<RelPath> = outputs
        .iter()
        .filter_map(|o| {
            if o.is_dir_syntax() {
                Some(o.clone())
            } else {
                o.parent()
            }
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    let all = dirs.clone();
    dirs.retain(|d| !all.iter().any(|o| o != d && d.starts_with(o)));
    dirs
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v.dedup();
    v
}

/// True when a requirements file already brings a notebook server.
fn names_notebook_server(requirements: &str) -> bool {
    requirement_names(requirements)
        .iter()
        .any(|n| matches!(n.as_str(), "jupyterlab" | "notebook" | "jupyter"))
}

/// The package names a requirements file lists, normalised (lowercase, `-` for `_`).
fn requirement_names(requirements: &str) -> Vec<String> {
    requirements
        .lines()
        .map(|l| {
            l.trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect::<String>()
                .to_ascii_lowercase()
                .replace('_', "-")
        })
        .filter(|n| !n.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    #[test]
    fn output_dirs_keep_outermost() {
        let d = output_dirs(&[
            rel("artifacts/model.onnx"),
            rel("artifacts/metrics.json"),
            rel("artifacts/plots/roc.png"),
            rel("reports/"),
        ]);
        assert_eq!(d, vec![rel("artifacts/"), rel("reports/")]);
    }

    #[test]
    fn notebook_server_is_added_only_when_missing() {
        assert!(!names_notebook_server("numpy==2.0\npandas\n"));
        assert!(names_notebook_server("numpy\njupyterlab==4.2.0\n"));
        assert!(names_notebook_server("Notebook>=7"));
    }

    #[test]
    fn gpus_and_the_device_reach_every_workload_that_asks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ferry.yaml"),
            "name: vision\nenvironment: { bootstrap: bookworm }\nnotebook: { resources: { gpu: 1, cpu: 2 } }\ntrain:\n  command: python train.py\n  outputs: [artifacts/model.onnx]\n  resources: { gpu: 2 }\nserve:\n  model: artifacts/model.onnx\n  device: cuda\n  resources: { gpu: 1 }\n",
        )
        .unwrap();
        let p = plan(&Project::load_dir(dir.path(), None).unwrap(), "");
        let nb = p.notebook.unwrap();
        assert_eq!((nb.gpu, nb.cpu.map(|c| c.millis)), (Some(1), Some(2000)));
        assert_eq!(p.train.unwrap().gpu, Some(2));
        let s = p.serve.unwrap();
        assert_eq!(s.workload.gpu, Some(1));
        assert_eq!(s.config.device, crate::server::config::Device::Cuda);
    }

    #[test]
    fn serving_splits_traffic_and_places_models() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ferry.yaml"),
            "name: churn\nenvironment: { bootstrap: bookworm }\nserve:\n  model: artifacts/model.onnx\n  port: 9000\n  batching: { max_batch_size: 32, max_delay_ms: 1 }\n  variants: [ { name: b, model: artifacts/b.onnx, weight: 10 } ]\n  models: [ { name: other, model: artifacts/other.onnx } ]\n",
        )
        .unwrap();
        let project = Project::load_dir(dir.path(), None).unwrap();
        let s = plan(&project, "").serve.unwrap();
        assert_eq!(s.workload.ports[0].published, 9000);
        assert_eq!(s.config.port, SERVE_CONTAINER_PORT);
        let main = &s.config.models[0];
        assert_eq!(main.name, "churn");
        assert_eq!(main.batching.unwrap().max_batch_size, 32);
        let weights: Vec<(&str, u32)> = main
            .variants
            .iter()
            .map(|v| (v.name.as_str(), v.weight))
            .collect();
        assert_eq!(weights, vec![("default", 90), ("b", 10)]);
        assert_eq!(s.config.models[1].name, "other");
        let paths: Vec<&str> = s.models.iter().map(|m| m.image_path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "/models/churn/default/model.onnx",
                "/models/churn/b/model.onnx",
                "/models/other/default/model.onnx"
            ]
        );
    }
}

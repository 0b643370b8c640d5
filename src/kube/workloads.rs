//! Training and the notebook in a cluster, from the same plan workloads Docker runs: a Job
//! whose outputs ferry copies back, and a StatefulSet with a volume for the notebook.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvFromSource, EnvVar,
    EnvVarSource, HTTPGetAction, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    Secret, SecretEnvSource, SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::render::{
    LABEL_COMPONENT, LABEL_ENV, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME, MANAGER, resources,
    scheduling,
};
use crate::plan::{NOTEBOOK_CONTAINER_PORT, TOKEN_VAR, Workload, output_dirs};
use crate::platform::Arch;
use crate::spec::Cluster;

/// The user training and the notebook run as in a cluster (the images' files are readable by
/// all; what they write goes to volumes).
const USER: i64 = 1000;
/// Where the collector container waits for ferry to copy the outputs, and the file ferry
/// creates when it is done.
pub const COLLECT_DIR: &str = "/ferry-collect";
pub const COLLECT_DONE: &str = "/ferry-collect/done";
/// How long a finished training waits for ferry to collect its outputs before giving up.
const COLLECT_WAIT_SECONDS: u32 = 3600;
/// Finished Jobs are removed by the cluster after a day.
const JOB_TTL_SECONDS: i32 = 86_400;

/// Where a workload runs and with what.
#[derive(Clone, Debug)]
pub struct Placement {
    pub project: String,
    pub env: String,
    pub namespace: String,
    pub cluster: Cluster,
    /// The project image (environment + code), by digest.
    pub image: String,
    /// The Secret holding the environment's secrets, if it has any.
    pub secret: Option<String>,
    /// The architectures the image runs on, as the pods' node selector; empty: no selector.
    pub run_on: Vec<Arch>,
}

impl Placement {
    fn labels(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_NAME.to_string(), self.project.clone()),
            (LABEL_INSTANCE.to_string(), self.project.clone()),
            (LABEL_COMPONENT.to_string(), component.to_string()),
            (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
            (LABEL_ENV.to_string(), self.env.clone()),
        ])
    }

    fn meta(&self, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        }
    }

    /// Scheduling settings shared by every pod of the environment.
    fn pod(&self, containers: Vec<Container>) -> PodSpec {
        PodSpec {
            containers,
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(USER),
                run_as_group: Some(USER),
                fs_group: Some(USER),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..scheduling(&self.cluster, &self.run_on)
        }
    }

    /// A Job of `pod`, labelled, left to the cluster a day after it finishes; `spec` says how
    /// many pods and what a failure does.
    fn job(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        pod: PodSpec,
        spec: JobSpec,
    ) -> Job {
        Job {
            metadata: self.meta(name, labels.clone()),
            spec: Some(JobSpec {
                ttl_seconds_after_finished: Some(JOB_TTL_SECONDS),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..Default::default()
                    }),
                    spec: Some(pod),
                },
                ..spec
            }),
            ..Default::default()
        }
    }

    fn env_from(&self) -> Option<Vec<EnvFromSource>> {
        self.secret.as_ref().map(|s| {
            vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: s.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }]
        })
    }
}

fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn env_vars(env: &BTreeMap<String, String>) -> Vec<EnvVar> {
    let mut vars: Vec<EnvVar> = env
        .iter()
        .map(|(k, v)| EnvVar {
            name: k.clone(),
            value: Some(v.clone()),
            ..Default::default()
        })
        .collect();
    // The image's files belong to root; caches and dotfiles go to a writable place.
    vars.push(EnvVar {
        name: "HOME".into(),
        value: Some("/tmp".into()),
        ..Default::default()
    });
    vars
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

/// The name of a run's Job: `<project>-train-<run id>`, within the 63 characters a Job's
/// pods may carry in their labels.
pub fn job_name(project: &str, run_id: &str) -> String {
    let id: String = run_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect::<String>()
        .to_ascii_lowercase();
    let mut name = format!("{project}-train-{id}");
    name.truncate(63);
    name.trim_end_matches('-').to_string()
}

/// A training run as a Job. The command runs in an init container with the outputs'
/// directories on volumes; when it succeeds, a small collector container holds the volumes
/// until ferry has copied the outputs (and checked their sha256) and marks it done, so the
/// outputs outlive the command without a shared volume or object store.
pub fn training_job(p: &Placement, train: &Workload, run_id: &str) -> Job {
    let name = job_name(&p.project, run_id);
    let mut labels = p.labels("train");
    labels.insert("ferry.dev/run".into(), run_label(run_id));

    let mut outputs = output_dirs(&train.outputs);
    // A notebook run writes the executed notebook to a directory of its own.
    if let Some(dir) = train.notebook.as_ref().and_then(|nb| nb.executed.parent()) {
        outputs.push(dir);
    }
    let mut volumes = vec![empty_dir("tmp"), empty_dir("collect")];
    let mut mounts = vec![VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    }];
    for (i, dir) in outputs.iter().enumerate() {
        let volume = format!("output-{i}");
        volumes.push(empty_dir(&volume));
        mounts.push(VolumeMount {
            name: volume,
            mount_path: format!("{}/{}", train.workdir, dir.as_str()),
            ..Default::default()
        });
    }
    // Inputs need no volume: they are in the image with the code (locally they are read-only
    // mounts; here they are the image's files, which the non-root user cannot change either).

    let trainer = Container {
        name: "train".into(),
        image: Some(p.image.clone()),
        command: Some(train.argv.clone()),
        working_dir: Some(train.workdir.clone()),
        env: Some(env_vars(&train.env)),
        env_from: p.env_from(),
        resources: Some(resources(
            train.cpu.as_ref(),
            train.memory.as_ref(),
            train.gpu,
        )),
        security_context: Some(container_security()),
        volume_mounts: Some(mounts.clone()),
        ..Default::default()
    };
    let mut collect_mounts = mounts;
    collect_mounts.push(VolumeMount {
        name: "collect".into(),
        mount_path: COLLECT_DIR.into(),
        ..Default::default()
    });
    let collector = collector(p, &train.workdir, collect_mounts);
    let mut pod = p.pod(vec![collector]);
    pod.init_containers = Some(vec![trainer]);
    pod.restart_policy = Some("Never".into());
    pod.volumes = Some(volumes);
    p.job(
        &name,
        labels,
        pod,
        JobSpec {
            // A failed training is reported, not retried: the same code fails the same way.
            backoff_limit: Some(0),
            ..Default::default()
        },
    )
}

/// The name of a scoring run's Job: `<project>-score-<run id>`, as [`job_name`].
pub fn score_job_name(project: &str, run_id: &str) -> String {
    job_name(project, run_id).replacen(
        &format!("{project}-train-"),
        &format!("{project}-score-"),
        1,
    )
}

/// A cluster scoring run as an Indexed Job, one completion per shard of `plan`. Each pod copies
/// its shard's inputs out of the project image (`inputs`, an init container), scores them with
/// the scoring image's ferry (`score`, an init container too, retried by the Job per index),
/// and holds its part of the output in a collector until ferry has copied it, as a training
/// does.
pub fn scoring_job(
    p: &Placement,
    scoring_image: &str,
    workdir: &str,
    plan: &crate::score::shard::ShardPlan,
    run_id: &str,
) -> Result<Job, serde_json::Error> {
    use crate::score::shard::{PLAN_ENV, POD_DIR};
    let name = score_job_name(&p.project, run_id);
    let mut labels = p.labels("score");
    labels.insert("ferry.dev/run".into(), run_label(run_id));
    let shards = plan.shards.len() as i32;
    let work = VolumeMount {
        name: "score".into(),
        mount_path: POD_DIR.into(),
        ..Default::default()
    };
    let tmp = VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    };
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut script = format!("set -e\nmkdir -p {POD_DIR}/in\ncase \"$JOB_COMPLETION_INDEX\" in\n");
    for (k, files) in plan.shards.iter().enumerate() {
        script.push_str(&format!("{k})"));
        // Inputs given as URLs are fetched by the scorer itself.
        for &i in files.iter().filter(|&&i| plan.inputs[i].url.is_none()) {
            let input = &plan.inputs[i];
            script.push_str(&format!(
                " cp -- {} {POD_DIR}/in/{};",
                quote(&input.name),
                input.pod_name(i)
            ));
        }
        script.push_str(" ;;\n");
    }
    script
        .push_str("*) echo \"no shard $JOB_COMPLETION_INDEX in this Job\" >&2; exit 2 ;;\nesac\n");
    let inputs = Container {
        name: "inputs".into(),
        image: Some(p.image.clone()),
        command: Some(vec!["/bin/sh".into(), "-c".into(), script]),
        working_dir: Some(workdir.to_string()),
        resources: Some(small_resources()),
        security_context: Some(container_security()),
        volume_mounts: Some(vec![work.clone(), tmp.clone()]),
        ..Default::default()
    };
    let scorer = Container {
        name: "score".into(),
        image: Some(scoring_image.to_string()),
        command: Some(vec![
            crate::images::serving::BINARY_PATH.into(),
            "score-shard".into(),
        ]),
        env: Some(vec![EnvVar {
            name: PLAN_ENV.into(),
            value: Some(serde_json::to_string(plan)?),
            ..Default::default()
        }]),
        resources: Some(resources(None, None, None)),
        security_context: Some(container_security()),
        volume_mounts: Some(vec![work.clone(), tmp.clone()]),
        ..Default::default()
    };
    let collector = collector(
        p,
        POD_DIR,
        vec![
            work,
            tmp,
            VolumeMount {
                name: "collect".into(),
                mount_path: COLLECT_DIR.into(),
                ..Default::default()
            },
        ],
    );
    let mut pod = p.pod(vec![collector]);
    pod.init_containers = Some(vec![inputs, scorer]);
    pod.restart_policy = Some("Never".into());
    pod.volumes = Some(vec![
        empty_dir("score"),
        empty_dir("tmp"),
        empty_dir("collect"),
    ]);
    Ok(p.job(
        &name,
        labels,
        pod,
        JobSpec {
            completions: Some(shards),
            parallelism: Some(shards),
            completion_mode: Some("Indexed".into()),
            // A shard that fails is tried again (a node lost, an eviction); one that fails
            // three times fails the whole run at once.
            backoff_limit_per_index: Some(2),
            max_failed_indexes: Some(0),
            ..Default::default()
        },
    ))
}

/// The container that holds a finished pod's volumes (the project image's shell, `tar` and
/// `sha256sum` at hand) until ferry has copied what it needs and marks it done.
fn collector(p: &Placement, workdir: &str, mounts: Vec<VolumeMount>) -> Container {
    Container {
        name: "collect".into(),
        image: Some(p.image.clone()),
        command: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            format!(
                "i=0; while [ ! -f {COLLECT_DONE} ] && [ $i -lt {COLLECT_WAIT_SECONDS} ]; do sleep 1; i=$((i+1)); done"
            ),
        ]),
        working_dir: Some(workdir.to_string()),
        resources: Some(small_resources()),
        security_context: Some(container_security()),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

/// What a container that copies files or waits needs.
fn small_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("10m".into())),
            ("memory".to_string(), Quantity("32Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("64Mi".into()),
        )])),
        ..Default::default()
    }
}

pub fn run_label(run_id: &str) -> String {
    let mut v: String = run_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    v.truncate(63);
    v
}

/// The notebook's objects: the token Secret, the Service and the StatefulSet whose volume holds
/// the project (seeded from the image on first start, kept across restarts).
pub struct NotebookObjects {
    pub secret: Secret,
    pub service: Service,
    pub stateful_set: StatefulSet,
}

pub fn notebook_name(project: &str) -> String {
    format!("{project}-notebook")
}

pub fn notebook(p: &Placement, nb: &Workload, token: &str, storage: &str) -> NotebookObjects {
    let name = notebook_name(&p.project);
    let labels = p.labels("notebook");
    let token_secret = format!("{name}-token");
    let selector = BTreeMap::from([
        (LABEL_NAME.to_string(), p.project.clone()),
        (LABEL_INSTANCE.to_string(), p.project.clone()),
        (LABEL_COMPONENT.to_string(), "notebook".to_string()),
    ]);
    let secret = Secret {
        metadata: p.meta(&token_secret, labels.clone()),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            TOKEN_VAR.to_string(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Default::default()
    };
    let service = Service {
        metadata: p.meta(&name, labels.clone()),
        spec: Some(ServiceSpec {
            selector: Some(selector.clone()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: i32::from(NOTEBOOK_CONTAINER_PORT),
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            type_: Some("ClusterIP".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let workspace = VolumeMount {
        name: "workspace".into(),
        mount_path: nb.workdir.clone(),
        ..Default::default()
    };
    // The image's copy of the project seeds the volume; files already there (the user's edits)
    // are never overwritten.
    let seed = Container {
        name: "seed".into(),
        image: Some(p.image.clone()),
        command: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("cp -Rn {}/. /seed/", nb.workdir),
        ]),
        security_context: Some(container_security()),
        volume_mounts: Some(vec![VolumeMount {
            name: "workspace".into(),
            mount_path: "/seed".into(),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let mut env = env_vars(&nb.env);
    env.push(EnvVar {
        name: TOKEN_VAR.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: token_secret.clone(),
                key: TOKEN_VAR.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let jupyter = Container {
        name: "notebook".into(),
        image: Some(p.image.clone()),
        command: Some(
            nb.argv
                .iter()
                .filter(|a| a.as_str() != "--allow-root")
                .cloned()
                .collect(),
        ),
        working_dir: Some(nb.workdir.clone()),
        env: Some(env),
        env_from: p.env_from(),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: i32::from(NOTEBOOK_CONTAINER_PORT),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: Some(resources(nb.cpu.as_ref(), nb.memory.as_ref(), nb.gpu)),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/api/status".into()),
                port: IntOrString::String("http".into()),
                ..Default::default()
            }),
            period_seconds: Some(5),
            ..Default::default()
        }),
        security_context: Some(container_security()),
        volume_mounts: Some(vec![
            workspace,
            VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    let mut pod = p.pod(vec![jupyter]);
    pod.init_containers = Some(vec![seed]);
    pod.volumes = Some(vec![empty_dir("tmp")]);
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("workspace".into()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(storage.to_string()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let stateful_set = StatefulSet {
        metadata: p.meta(&name, labels.clone()),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(name.clone()),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            volume_claim_templates: Some(vec![claim]),
            ..Default::default()
        }),
        ..Default::default()
    };
    NotebookObjects {
        secret,
        service,
        stateful_set,
    }
}

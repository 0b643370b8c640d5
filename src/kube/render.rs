//! The plan's model server as typed Kubernetes objects (k8s-openapi), for one environment.
//! Pure: no cluster is contacted, so `ferry render` and tests see exactly what `promote` applies.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
    EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, LocalObjectReference, Namespace,
    NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectFieldSelector,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, Secret, SecretEnvSource, SecurityContext, Service,
    ServicePort, ServiceSpec, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::KubeError;
use super::nodes::ARCH_LABEL;
use super::secrets::Secrets;
use crate::plan::{SERVE_CONTAINER_PORT, Serving};
use crate::platform::Arch;
use crate::server::config::CONFIG_PATH;
use crate::spec::{Cluster, Cpu, Memory, Project};

/// Labels every object ferry applies carries; pruning selects on them.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_VERSION: &str = "app.kubernetes.io/version";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_ENV: &str = "ferry.dev/environment";
pub const LABEL_SPEC_HASH: &str = "ferry.dev/spec-hash";
pub const ANNOTATION_SPEC_HASH: &str = "ferry.dev/spec-hash";
pub const ANNOTATION_CONFIG_HASH: &str = "ferry.dev/config-hash";
pub const MANAGER: &str = "ferry";

/// The user the serving image runs as (it has no other).
const SERVER_UID: i64 = 65532;
/// How long a stopping server has to finish in-flight requests.
const GRACE_SECONDS: i64 = 30;

/// What one promotion puts into one environment.
#[derive(Clone, Debug)]
pub struct Release {
    pub project: String,
    pub env: String,
    pub namespace: String,
    pub cluster: Cluster,
    pub serving: Serving,
    /// The serving image, by digest: `repository@sha256:…`.
    pub image: String,
    /// The full spec hash, `sha256:…`.
    pub spec_hash: String,
    pub secrets: Option<Secrets>,
    /// The architectures the image runs on, as the pods' node selector; empty: no selector.
    pub run_on: Vec<Arch>,
}

impl Release {
    /// A release of `project` (loaded for its environment) with its serving image by digest.
    pub fn new(
        project: &Project,
        serving: Serving,
        image: String,
        spec_hash: String,
        secrets: Option<Secrets>,
    ) -> Result<Release, KubeError> {
        let env = project.spec.env.clone().ok_or(KubeError::NotACluster {
            env: "(none)".into(),
        })?;
        let Some(cluster) = project.spec.cluster.clone() else {
            return Err(KubeError::NotACluster { env });
        };
        if !is_digest_reference(&image) {
            return Err(KubeError::NotByDigest { image });
        }
        Ok(Release {
            project: project.spec.name.clone(),
            namespace: project
                .spec
                .namespace
                .clone()
                .unwrap_or_else(|| project.spec.name.clone()),
            env,
            cluster,
            serving,
            image,
            spec_hash,
            secrets,
            run_on: Vec::new(),
        })
    }

    /// The release with its pods pinned to nodes of these architectures (those of its image).
    pub fn running_on(mut self, archs: &[Arch]) -> Release {
        self.run_on = archs.to_vec();
        self
    }

    fn instance(&self) -> String {
        self.project.clone()
    }

    /// Labels that select this environment's pods; never change for the life of a Deployment.
    fn selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_NAME.to_string(), self.project.clone()),
            (LABEL_INSTANCE.to_string(), self.instance()),
            (LABEL_COMPONENT.to_string(), "server".to_string()),
        ])
    }

    /// Labels on every object.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut l = self.selector();
        l.insert(LABEL_MANAGED_BY.into(), MANAGER.into());
        l.insert(LABEL_ENV.into(), self.env.clone());
        l.insert(LABEL_VERSION.into(), self.version());
        l.insert(LABEL_SPEC_HASH.into(), short_hash(&self.spec_hash));
        l
    }

    /// The selector of everything ferry manages in this environment, for pruning and status.
    pub fn managed_selector(&self) -> String {
        server_selector(&self.instance(), &self.env)
    }

    /// The image's digest, shortened: what changed between two releases.
    fn version(&self) -> String {
        let digest = self.image.rsplit_once("@sha256:").map_or("", |x| x.1);
        digest[..12.min(digest.len())].to_string()
    }

    fn meta(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_SPEC_HASH.to_string(),
                self.spec_hash.clone(),
            )])),
            ..Default::default()
        }
    }
}

/// The objects of a project's model server in an environment: what a promotion prunes and
/// `ferry down ENV` removes. The notebook's and training's objects carry another component
/// and are left alone.
pub fn server_selector(project: &str, env: &str) -> String {
    format!(
        "{LABEL_MANAGED_BY}={MANAGER},{LABEL_INSTANCE}={project},{LABEL_ENV}={env},{LABEL_COMPONENT}=server"
    )
}

/// True for `repository@sha256:<64 hex>`.
pub fn is_digest_reference(image: &str) -> bool {
    image.rsplit_once("@sha256:").is_some_and(|(repo, hex)| {
        !repo.is_empty() && hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())
    })
}

fn short_hash(h: &str) -> String {
    let hex = h.trim_start_matches("sha256:");
    hex[..16.min(hex.len())].to_string()
}

/// One object to apply, typed.
// A release holds a handful of these; boxing the large ones would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    ConfigMap(ConfigMap),
    Secret(Secret),
    Service(Service),
    Deployment(Deployment),
    HorizontalPodAutoscaler(HorizontalPodAutoscaler),
    PodDisruptionBudget(PodDisruptionBudget),
    Ingress(Ingress),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Namespace(_) => "Namespace",
            Object::ConfigMap(_) => "ConfigMap",
            Object::Secret(_) => "Secret",
            Object::Service(_) => "Service",
            Object::Deployment(_) => "Deployment",
            Object::HorizontalPodAutoscaler(_) => "HorizontalPodAutoscaler",
            Object::PodDisruptionBudget(_) => "PodDisruptionBudget",
            Object::Ingress(_) => "Ingress",
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::Deployment(o) => &o.metadata,
            Object::HorizontalPodAutoscaler(o) => &o.metadata,
            Object::PodDisruptionBudget(o) => &o.metadata,
            Object::Ingress(o) => &o.metadata,
        }
    }

    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    /// The object as the API takes it (`apiVersion` and `kind` included).
    pub fn to_value(&self) -> serde_json::Value {
        let v = match self {
            Object::Namespace(o) => serde_json::to_value(o),
            Object::ConfigMap(o) => serde_json::to_value(o),
            Object::Secret(o) => serde_json::to_value(o),
            Object::Service(o) => serde_json::to_value(o),
            Object::Deployment(o) => serde_json::to_value(o),
            Object::HorizontalPodAutoscaler(o) => serde_json::to_value(o),
            Object::PodDisruptionBudget(o) => serde_json::to_value(o),
            Object::Ingress(o) => serde_json::to_value(o),
        };
        // Serialising generated k8s-openapi types into a Value cannot fail.
        v.unwrap_or_default()
    }

    /// An object from its API form, for the kinds a release holds; None for any other kind.
    pub fn from_value(v: &serde_json::Value) -> Result<Option<Object>, serde_json::Error> {
        use serde_json::from_value as de;
        let v = v.clone();
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        Ok(Some(match kind.as_str() {
            "Namespace" => Object::Namespace(de(v)?),
            "ConfigMap" => Object::ConfigMap(de(v)?),
            "Secret" => Object::Secret(de(v)?),
            "Service" => Object::Service(de(v)?),
            "Deployment" => Object::Deployment(de(v)?),
            "HorizontalPodAutoscaler" => Object::HorizontalPodAutoscaler(de(v)?),
            "PodDisruptionBudget" => Object::PodDisruptionBudget(de(v)?),
            "Ingress" => Object::Ingress(de(v)?),
            _ => return Ok(None),
        }))
    }

    /// The same object fit to show: a Secret's values replaced by a note.
    pub fn redacted(&self) -> Object {
        match self {
            Object::Secret(s) => {
                let keys = s
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, _)| k)
                    .chain(s.string_data.iter().flatten().map(|(k, _)| k));
                let shown = keys
                    .map(|k| (k.clone(), "(redacted)".to_string()))
                    .collect();
                Object::Secret(Secret {
                    data: None,
                    string_data: Some(shown),
                    ..s.clone()
                })
            }
            o => o.clone(),
        }
    }
}

/// What `promote` applies to one environment, in the order it applies it.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifests {
    pub objects: Vec<Object>,
}

impl Manifests {
    /// Multi-document YAML, secrets redacted.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        for o in &self.objects {
            out.push_str("---\n");
            out.push_str(&serde_yaml_ng::to_string(&o.redacted().to_value()).unwrap_or_default());
        }
        out
    }

    /// A `List` of the objects, secrets redacted.
    pub fn to_json(&self) -> serde_json::Value {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct List {
            api_version: &'static str,
            kind: &'static str,
            items: Vec<serde_json::Value>,
        }
        serde_json::to_value(List {
            api_version: "v1",
            kind: "List",
            items: self
                .objects
                .iter()
                .map(|o| o.redacted().to_value())
                .collect(),
        })
        .unwrap_or_default()
    }
}

/// `sha256:` over a ConfigMap's data, keys sorted: what `ferry.lock` records of the serving
/// config a revision applied, to tell a hand edit in the cluster.
pub fn config_digest(data: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in data {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

impl Manifests {
    /// The digest of the serving ConfigMap's data, if the manifests have one.
    pub fn config_digest(&self) -> Option<String> {
        self.objects.iter().find_map(|o| match o {
            Object::ConfigMap(c) => Some(config_digest(c.data.as_ref()?)),
            _ => None,
        })
    }
}

/// The serving config as the ConfigMap holds it (stable text: it is hashed).
fn config_json(release: &Release) -> String {
    serde_json::to_string_pretty(&release.serving.config).unwrap_or_default()
}

/// Renders the objects for a release: Namespace, ConfigMap, Secret (when the environment names
/// secrets), Service, Deployment, then HorizontalPodAutoscaler, PodDisruptionBudget and Ingress
/// where the spec asks for them.
pub fn render(release: &Release) -> Manifests {
    let name = release.project.as_str();
    let config_name = format!("{name}-serving");
    let secret_name = format!("{name}-secrets");
    let config = config_json(release);
    let file = CONFIG_PATH.rsplit('/').next().unwrap_or("serving.json");
    let config_dir = CONFIG_PATH.rsplit_once('/').map_or("/etc/ferry", |x| x.0);

    let mut objects = Vec::new();
    objects.push(Object::Namespace(Namespace {
        metadata: ObjectMeta {
            name: Some(release.namespace.clone()),
            labels: Some(BTreeMap::from([(
                LABEL_MANAGED_BY.to_string(),
                MANAGER.to_string(),
            )])),
            ..Default::default()
        },
        ..Default::default()
    }));
    objects.push(Object::ConfigMap(ConfigMap {
        metadata: release.meta(&config_name),
        data: Some(BTreeMap::from([(file.to_string(), config.clone())])),
        ..Default::default()
    }));
    let secrets = release.secrets.as_ref().filter(|s| !s.is_empty());
    if let Some(s) = secrets {
        objects.push(Object::Secret(Secret {
            metadata: release.meta(&secret_name),
            type_: Some("Opaque".into()),
            data: Some(
                s.values()
                    .iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                    .collect(),
            ),
            ..Default::default()
        }));
    }
    objects.push(Object::Service(Service {
        metadata: release.meta(name),
        spec: Some(ServiceSpec {
            selector: Some(release.selector()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: i32::from(
                    release
                        .serving
                        .workload
                        .ports
                        .first()
                        .map_or(SERVE_CONTAINER_PORT, |p| p.published),
                ),
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                app_protocol: Some("http".into()),
                ..Default::default()
            }]),
            type_: Some("ClusterIP".into()),
            ..Default::default()
        }),
        ..Default::default()
    }));

    // A change of config or secrets must roll the pods: both are read at start.
    let mut h = Sha256::new();
    h.update(config.as_bytes());
    if let Some(s) = secrets {
        for (k, v) in s.values() {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
    }
    let config_hash = hex::encode(h.finalize());

    let w = &release.serving.workload;
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    };
    let mut pod_annotations = BTreeMap::from([
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        (
            "prometheus.io/port".to_string(),
            SERVE_CONTAINER_PORT.to_string(),
        ),
        ("prometheus.io/path".to_string(), "/metrics".to_string()),
        (ANNOTATION_CONFIG_HASH.to_string(), config_hash),
    ]);
    pod_annotations.insert(ANNOTATION_SPEC_HASH.into(), release.spec_hash.clone());
    let mut container = Container {
        name: "server".into(),
        image: Some(release.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: i32::from(SERVE_CONTAINER_PORT),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        env_from: secrets.map(|_| {
            vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: secret_name.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }]
        }),
        resources: Some(resources(w.cpu.as_ref(), w.memory.as_ref(), w.gpu)),
        // Models load before the server answers; a slow disk must not restart it.
        startup_probe: Some(probe("/v2/health/live", 1, 120)),
        liveness_probe: Some(probe("/v2/health/live", 10, 3)),
        readiness_probe: Some(probe("/v2/health/ready", 2, 2)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "serving-config".into(),
            mount_path: config_dir.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let log_volume = release.serving.log_volume.as_deref();
    if log_volume.is_some() {
        log_to_volume(&mut container);
    }
    let c = &release.cluster;
    let pod = PodSpec {
        containers: vec![container],
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(GRACE_SECONDS),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(SERVER_UID),
            run_as_group: Some(SERVER_UID),
            // The log volume's files are the server's to write.
            fs_group: log_volume.map(|_| SERVER_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volumes: Some(
            std::iter::once(Volume {
                name: "serving-config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: config_name.clone(),
                    items: Some(vec![KeyToPath {
                        key: file.into(),
                        path: file.into(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .chain(log_volume.map(|claim| Volume {
                name: LOG_VOLUME.into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.into(),
                    read_only: Some(false),
                }),
                ..Default::default()
            }))
            .collect(),
        ),
        ..scheduling(c, &release.run_on)
    };
    let replicas = release.serving.replicas;
    objects.push(Object::Deployment(Deployment {
        metadata: release.meta(name),
        spec: Some(DeploymentSpec {
            // With an autoscaler the replica count is its field, not ours: leaving it out keeps
            // server-side apply from fighting the autoscaler.
            replicas: release
                .serving
                .autoscale
                .is_none()
                .then(|| i32::try_from(replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(release.selector()),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            revision_history_limit: Some(10),
            progress_deadline_seconds: Some(600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(release.labels()),
                    annotations: Some(pod_annotations),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        ..Default::default()
    }));

    let min_replicas = release
        .serving
        .autoscale
        .as_ref()
        .map_or(replicas, |a| a.min);
    if let Some(a) = &release.serving.autoscale {
        objects.push(Object::HorizontalPodAutoscaler(HorizontalPodAutoscaler {
            metadata: release.meta(name),
            spec: Some(HorizontalPodAutoscalerSpec {
                scale_target_ref: CrossVersionObjectReference {
                    api_version: Some("apps/v1".into()),
                    kind: "Deployment".into(),
                    name: name.into(),
                },
                min_replicas: Some(i32::try_from(a.min).unwrap_or(i32::MAX)),
                max_replicas: i32::try_from(a.max).unwrap_or(i32::MAX),
                metrics: Some(vec![MetricSpec {
                    type_: "Resource".into(),
                    resource: Some(ResourceMetricSource {
                        name: "cpu".into(),
                        target: MetricTarget {
                            type_: "Utilization".into(),
                            average_utilization: Some(
                                i32::try_from(a.cpu_percent).unwrap_or(i32::MAX),
                            ),
                            ..Default::default()
                        },
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }));
    }
    if min_replicas > 1 {
        objects.push(Object::PodDisruptionBudget(PodDisruptionBudget {
            metadata: release.meta(name),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(LabelSelector {
                    match_labels: Some(release.selector()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }));
    }
    if let Some(i) = &c.ingress {
        let port = ServiceBackendPort {
            name: Some("http".into()),
            ..Default::default()
        };
        objects.push(Object::Ingress(Ingress {
            metadata: release.meta(name),
            spec: Some(IngressSpec {
                ingress_class_name: i.class.clone(),
                rules: Some(vec![IngressRule {
                    host: Some(i.host.clone()),
                    http: Some(HTTPIngressRuleValue {
                        paths: vec![HTTPIngressPath {
                            path: Some("/".into()),
                            path_type: "Prefix".into(),
                            backend: IngressBackend {
                                service: Some(IngressServiceBackend {
                                    name: name.into(),
                                    port: Some(port),
                                }),
                                ..Default::default()
                            },
                        }],
                    }),
                }]),
                tls: i.tls_secret.as_ref().map(|s| {
                    vec![IngressTLS {
                        hosts: Some(vec![i.host.clone()]),
                        secret_name: Some(s.clone()),
                    }]
                }),
                ..Default::default()
            }),
            ..Default::default()
        }));
    }
    Manifests { objects }
}

/// Where an environment's pods run and what they pull with, the same for every pod of it:
/// node selector, tolerations, image pull secret. `archs` are the image's architectures: one is
/// a `kubernetes.io/arch` node selector, several a node affinity naming them, so in a cluster of
/// mixed nodes a pod goes only where its image runs. A selector the spec sets on that label
/// itself is kept as written.
pub(crate) fn scheduling(c: &Cluster, archs: &[Arch]) -> PodSpec {
    let mut node_selector = c.node_selector.clone();
    let mut affinity = None;
    if !node_selector.contains_key(ARCH_LABEL) {
        match archs {
            [] => {}
            [one] => {
                node_selector.insert(ARCH_LABEL.to_string(), one.go_name().to_string());
            }
            several => {
                affinity = Some(Affinity {
                    node_affinity: Some(NodeAffinity {
                        required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                            node_selector_terms: vec![NodeSelectorTerm {
                                match_expressions: Some(vec![NodeSelectorRequirement {
                                    key: ARCH_LABEL.to_string(),
                                    operator: "In".into(),
                                    values: Some(
                                        several.iter().map(|a| a.go_name().to_string()).collect(),
                                    ),
                                }]),
                                ..Default::default()
                            }],
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
        }
    }
    PodSpec {
        node_selector: (!node_selector.is_empty()).then_some(node_selector),
        affinity,
        tolerations: (!c.tolerations.is_empty()).then(|| {
            c.tolerations
                .iter()
                .map(|t| Toleration {
                    key: t.key.clone(),
                    operator: t.operator.clone(),
                    value: t.value.clone(),
                    effect: t.effect.clone(),
                    toleration_seconds: t.toleration_seconds,
                })
                .collect()
        }),
        image_pull_secrets: c
            .image_pull_secret
            .as_ref()
            .map(|s| vec![LocalObjectReference { name: s.clone() }]),
        ..Default::default()
    }
}

/// The volume `serve.log.volume` names, and where the server sees it.
const LOG_VOLUME: &str = "traffic-log";
const LOG_MOUNT: &str = "/var/lib/ferry/log";

/// `serve.log` to a PersistentVolumeClaim: one file per pod (named after it), so replicas
/// sharing the claim never interleave their lines.
fn log_to_volume(container: &mut Container) {
    container
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .push(VolumeMount {
            name: LOG_VOLUME.into(),
            mount_path: LOG_MOUNT.into(),
            ..Default::default()
        });
    container.env.get_or_insert_with(Vec::new).extend([
        EnvVar {
            name: "POD_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        EnvVar {
            name: crate::server::config::LOG_ENV.into(),
            // Kubernetes expands `$(POD_NAME)` from the variable above.
            value: Some(format!("{LOG_MOUNT}/$(POD_NAME).jsonl")),
            ..Default::default()
        },
    ]);
}

/// Requests and limits from the spec. Without a figure, modest requests so the scheduler and an
/// autoscaler have something to work with; limits only where the user set them. A GPU is a
/// limit (the device plugin's rule: requests equal limits for extended resources).
pub(crate) fn resources(
    cpu: Option<&Cpu>,
    memory: Option<&Memory>,
    gpu: Option<u32>,
) -> ResourceRequirements {
    let cpu_q = cpu.map_or_else(|| "250m".to_string(), cpu_quantity);
    let mem_q = memory.map_or_else(|| "256Mi".to_string(), memory_quantity);
    let requests = BTreeMap::from([
        ("cpu".to_string(), Quantity(cpu_q.clone())),
        ("memory".to_string(), Quantity(mem_q.clone())),
    ]);
    let mut limits = BTreeMap::new();
    if cpu.is_some() {
        limits.insert("cpu".to_string(), Quantity(cpu_q));
    }
    if memory.is_some() {
        limits.insert("memory".to_string(), Quantity(mem_q));
    }
    if let Some(g) = gpu.filter(|g| *g > 0) {
        limits.insert("nvidia.com/gpu".to_string(), Quantity(g.to_string()));
    }
    ResourceRequirements {
        requests: Some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    }
}

pub(crate) fn cpu_quantity(c: &Cpu) -> String {
    if c.millis.is_multiple_of(1000) {
        (c.millis / 1000).to_string()
    } else {
        format!("{}m", c.millis)
    }
}

pub(crate) fn memory_quantity(m: &Memory) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if m.bytes >= size && m.bytes.is_multiple_of(size) {
            return format!("{}{unit}", m.bytes / size);
        }
    }
    m.bytes.to_string()
}

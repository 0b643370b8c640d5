//! Monitoring files for a project's model server: a Prometheus scrape config that finds it
//! where each environment runs it, and a Grafana dashboard over the metrics it exports.
//!
//! The queries name the server's metrics (`server::metrics`) and the labels the scrape config
//! attaches; a test scrapes a real server and checks each of them, so a renamed metric breaks
//! the build instead of a dashboard.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Value, json};
use serde_yaml_ng::{Mapping, Value as Yaml};

use crate::kube::render::{LABEL_COMPONENT, LABEL_ENV, LABEL_INSTANCE};
use crate::spec::{Project, SpecError, TargetKind};

pub const PROMETHEUS_FILE: &str = "prometheus.yml";
pub const DASHBOARD_FILE: &str = "grafana-dashboard.json";

/// Labels the scrape config puts on every series, so one Prometheus can hold several projects
/// and environments apart.
pub const PROJECT_LABEL: &str = "project";
pub const ENVIRONMENT_LABEL: &str = "environment";

/// The pod annotations the renderer sets on the model server's pods.
const SCRAPE_ANNOTATION: &str = "prometheus.io/scrape";
const PORT_ANNOTATION: &str = "prometheus.io/port";
const PATH_ANNOTATION: &str = "prometheus.io/path";

#[derive(Debug, thiserror::Error)]
pub enum MonitoringError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(
        "{} serves no model{}, so there is nothing to monitor\n  hint: add a serve: section (serve.model: the ONNX file) to the spec",
        file.display(),
        env.as_deref().map(|e| format!(" in the environment {e}")).unwrap_or_default()
    )]
    NothingServed { file: PathBuf, env: Option<String> },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode {what}: {message}")]
    Encode { what: &'static str, message: String },
}

/// What `ferry monitoring` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct Written {
    pub files: Vec<PathBuf>,
    /// The scrape jobs, one per environment.
    pub jobs: Vec<String>,
}

/// Writes the scrape config and the dashboard into `out` (created if missing); files of the
/// same names are replaced, as they are generated.
pub fn write(project: &Project, env: Option<&str>, out: &Path) -> Result<Written, MonitoringError> {
    let (config, jobs) = prometheus_config(project, env)?;
    let dashboard =
        serde_json::to_string_pretty(&dashboard(project)).map_err(|e| MonitoringError::Encode {
            what: "the dashboard",
            message: e.to_string(),
        })?;
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MonitoringError::Write { path, source }
    };
    std::fs::create_dir_all(out).map_err(werr(out))?;
    let mut files = Vec::new();
    for (name, text) in [
        (PROMETHEUS_FILE, config),
        (DASHBOARD_FILE, dashboard + "\n"),
    ] {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(werr(&path))?;
        files.push(path);
    }
    Ok(Written { files, jobs })
}

/// The scrape job's name for an environment.
pub fn job_name(project: &str, env: Option<&str>) -> String {
    match env {
        Some(e) => format!("ferry-{project}-{e}"),
        None => format!("ferry-{project}"),
    }
}

/// `prometheus.yml`: one scrape job per environment that serves a model (or only `env`), and
/// the jobs' names.
pub fn prometheus_config(
    project: &Project,
    env: Option<&str>,
) -> Result<(String, Vec<String>), MonitoringError> {
    let envs: Vec<Option<String>> = match env {
        Some(e) => vec![Some(e.to_string())],
        None if project.environments.is_empty() => vec![None],
        None => project.environments.iter().cloned().map(Some).collect(),
    };
    let mut scrape = Vec::new();
    let mut jobs = Vec::new();
    let mut notes = Vec::new();
    for e in &envs {
        let p = Project::load(&project.file, e.as_deref())?;
        let Some(serve) = &p.spec.serve else {
            if env.is_some() {
                return Err(MonitoringError::NothingServed {
                    file: project.file.clone(),
                    env: e.clone(),
                });
            }
            continue;
        };
        let name = &p.spec.name;
        let env_name = e.clone().unwrap_or_else(|| "local".into());
        let job = job_name(name, e.as_deref());
        let entry = match p.spec.target {
            TargetKind::Docker => {
                notes.push(format!(
                    "{job}: `ferry serve` on this machine (127.0.0.1:{}); Prometheus must run here too, on the host's network",
                    serve.port
                ));
                ymap([
                    ("job_name", ys(&job)),
                    ("metrics_path", ys("/metrics")),
                    (
                        "static_configs",
                        Yaml::Sequence(vec![ymap([
                            (
                                "targets",
                                Yaml::Sequence(vec![ys(format!("127.0.0.1:{}", serve.port))]),
                            ),
                            (
                                "labels",
                                ymap([
                                    (PROJECT_LABEL, ys(name)),
                                    (ENVIRONMENT_LABEL, ys(&env_name)),
                                ]),
                            ),
                        ])]),
                    ),
                ])
            }
            TargetKind::Kubernetes => {
                let namespace = p.spec.namespace.clone().unwrap_or_else(|| name.clone());
                notes.push(format!(
                    "{job}: the model server's pods in the namespace {namespace}{} (Prometheus in the cluster, allowed to list pods there)",
                    p.spec
                        .context
                        .as_deref()
                        .map(|c| format!(" of the context {c}"))
                        .unwrap_or_default()
                ));
                kubernetes_job(&job, name, &env_name, &namespace)
            }
        };
        scrape.push(entry);
        jobs.push(job);
    }
    if scrape.is_empty() {
        return Err(MonitoringError::NothingServed {
            file: project.file.clone(),
            env: None,
        });
    }
    let doc = ymap([
        (
            "global",
            ymap([
                ("scrape_interval", ys("15s")),
                ("evaluation_interval", ys("15s")),
            ]),
        ),
        ("scrape_configs", Yaml::Sequence(scrape)),
    ]);
    let body = serde_yaml_ng::to_string(&doc).map_err(|e| MonitoringError::Encode {
        what: "the scrape config",
        message: e.to_string(),
    })?;
    let mut text = format!(
        "# Prometheus scrape config for the ferry project {}, from `ferry monitoring`.\n\
         # Use it as prometheus.yml, or copy its scrape_configs into yours. Every series gets the\n\
         # labels {PROJECT_LABEL} and {ENVIRONMENT_LABEL}, which {DASHBOARD_FILE} filters on.\n",
        project.spec.name
    );
    for n in notes {
        text.push_str(&format!("#   {n}\n"));
    }
    text.push_str(&body);
    Ok((text, jobs))
}

/// The pod's label or annotation as Prometheus's Kubernetes discovery names it.
fn meta(kind: &str, key: &str) -> String {
    let clean: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("__meta_kubernetes_pod_{kind}_{clean}")
}

/// Discovers the model server's pods of one environment: the annotations the renderer sets say
/// scrape, where and on which port; the labels pick this project's server in this environment
/// (other projects may share the namespace).
fn kubernetes_job(job: &str, project: &str, env: &str, namespace: &str) -> Yaml {
    let rule = |pairs: Vec<(&str, Yaml)>| {
        let mut m = Mapping::new();
        for (k, v) in pairs {
            m.insert(ys(k), v);
        }
        Yaml::Mapping(m)
    };
    let sources = |keys: &[String]| Yaml::Sequence(keys.iter().map(ys).collect());
    ymap([
        ("job_name", ys(job)),
        (
            "kubernetes_sd_configs",
            Yaml::Sequence(vec![ymap([
                ("role", ys("pod")),
                (
                    "namespaces",
                    ymap([("names", Yaml::Sequence(vec![ys(namespace)]))]),
                ),
            ])]),
        ),
        (
            "relabel_configs",
            Yaml::Sequence(vec![
                rule(vec![
                    (
                        "source_labels",
                        sources(&[meta("annotation", SCRAPE_ANNOTATION)]),
                    ),
                    ("action", ys("keep")),
                    ("regex", ys("true")),
                ]),
                rule(vec![
                    (
                        "source_labels",
                        sources(&[
                            meta("label", LABEL_INSTANCE),
                            meta("label", LABEL_COMPONENT),
                            meta("label", LABEL_ENV),
                        ]),
                    ),
                    ("action", ys("keep")),
                    ("regex", ys(format!("{project};server;{env}"))),
                ]),
                rule(vec![
                    (
                        "source_labels",
                        sources(&["__meta_kubernetes_pod_phase".into()]),
                    ),
                    ("action", ys("drop")),
                    ("regex", ys("Pending|Succeeded|Failed")),
                ]),
                rule(vec![
                    (
                        "source_labels",
                        sources(&[meta("annotation", PATH_ANNOTATION)]),
                    ),
                    ("action", ys("replace")),
                    ("regex", ys("(.+)")),
                    ("target_label", ys("__metrics_path__")),
                ]),
                rule(vec![
                    (
                        "source_labels",
                        sources(&["__address__".into(), meta("annotation", PORT_ANNOTATION)]),
                    ),
                    ("action", ys("replace")),
                    ("regex", ys(r"([^:]+)(?::\d+)?;(\d+)")),
                    ("replacement", ys("$1:$2")),
                    ("target_label", ys("__address__")),
                ]),
                rule(vec![
                    ("target_label", ys(PROJECT_LABEL)),
                    ("replacement", ys(project)),
                ]),
                rule(vec![
                    ("target_label", ys(ENVIRONMENT_LABEL)),
                    ("replacement", ys(env)),
                ]),
                rule(vec![
                    (
                        "source_labels",
                        sources(&["__meta_kubernetes_namespace".into()]),
                    ),
                    ("target_label", ys("namespace")),
                ]),
                rule(vec![
                    (
                        "source_labels",
                        sources(&["__meta_kubernetes_pod_name".into()]),
                    ),
                    ("target_label", ys("pod")),
                ]),
            ]),
        ),
    ])
}

/// A Grafana dashboard uid: at most 40 characters, the same for the same project name.
pub fn dashboard_uid(project: &str) -> String {
    let readable = format!("ferry-{project}");
    if readable.len() <= 40 {
        return readable;
    }
    use sha2::Digest as _;
    let digest = hex::encode(sha2::Sha256::digest(project.as_bytes()));
    format!("ferry-{}", &digest[..24])
}

/// The series selector every query uses: this project, the chosen environments and models.
fn selector(project: &str, extra: &str) -> String {
    format!(
        "{{{PROJECT_LABEL}=\"{project}\", {ENVIRONMENT_LABEL}=~\"$environment\", model=~\"$model\"{extra}}}"
    )
}

/// The Grafana dashboard (JSON model, importable as it is).
pub fn dashboard(project: &Project) -> Value {
    let name = &project.spec.name;
    let all = selector(name, "");
    let errors = selector(name, ", status!~\"2..\"");
    let rate = |metric: &str, sel: &str| format!("rate({metric}{sel}[$__rate_interval])");
    let quantile = |q: &str, metric: &str, by: &str| {
        format!(
            "histogram_quantile({q}, sum by (le{by}) ({}))",
            rate(metric, &all)
        )
    };
    // One series per percentile, model and variant.
    let percentiles = |metric: &str, qs: &[(&str, &'static str)]| -> Vec<(String, &'static str)> {
        qs.iter()
            .map(|&(q, legend)| (quantile(q, metric, ", model, variant"), legend))
            .collect()
    };
    let requests = "ferry_requests_total";
    let latency = "ferry_request_duration_seconds_bucket";
    let inference = "ferry_inference_duration_seconds_bucket";

    let mut panels = Vec::new();
    let mut id = 0;
    let mut panel = |kind: &str,
                     title: &str,
                     description: &str,
                     unit: &str,
                     pos: (u32, u32, u32, u32),
                     targets: Vec<(String, &str)>| {
        id += 1;
        let targets: Vec<Value> = targets
            .into_iter()
            .zip('A'..)
            .map(|((expr, legend), r)| {
                json!({
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "expr": expr,
                    "legendFormat": legend,
                    "refId": r.to_string(),
                    "format": if kind == "heatmap" { "heatmap" } else { "time_series" },
                })
            })
            .collect();
        let mut p = json!({
            "id": id,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"x": pos.0, "y": pos.1, "w": pos.2, "h": pos.3},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {},
            "targets": targets,
        });
        if kind == "heatmap" {
            p["options"] = json!({
                "calculate": false,
                "yAxis": {"unit": unit},
                "cellGap": 1,
                "color": {"mode": "scheme", "scheme": "Blues"},
            });
        }
        panels.push(p);
    };

    panel(
        "stat",
        "Requests",
        "Inference requests per second, every status.",
        "reqps",
        (0, 0, 6, 4),
        vec![(format!("sum({})", rate(requests, &all)), "requests/s")],
    );
    panel(
        "stat",
        "Errors",
        "Share of requests answered with a status other than 2xx.",
        "percentunit",
        (6, 0, 6, 4),
        vec![(
            format!(
                "sum({}) / sum({})",
                rate(requests, &errors),
                rate(requests, &all)
            ),
            "errors",
        )],
    );
    panel(
        "stat",
        "p99 latency",
        "99th percentile of the time from request to response.",
        "s",
        (12, 0, 6, 4),
        vec![(quantile("0.99", latency, ""), "p99")],
    );
    panel(
        "stat",
        "Mean batch size",
        "Rows per inference run: how much dynamic batching merges.",
        "none",
        (18, 0, 6, 4),
        vec![(
            format!(
                "sum({}) / sum({})",
                rate("ferry_batch_size_sum", &all),
                rate("ferry_batch_size_count", &all)
            ),
            "rows per run",
        )],
    );
    panel(
        "timeseries",
        "Request rate by model, variant and status",
        "Requests per second; status is the HTTP status answered.",
        "reqps",
        (0, 4, 12, 8),
        vec![(
            format!("sum by (model, variant, status) ({})", rate(requests, &all)),
            "{{model}}/{{variant}} {{status}}",
        )],
    );
    panel(
        "timeseries",
        "Latency p50 / p90 / p99",
        "Time from request to response, per model and variant, from ferry_request_duration_seconds.",
        "s",
        (12, 4, 12, 8),
        percentiles(
            latency,
            &[
                ("0.5", "p50 {{model}}/{{variant}}"),
                ("0.9", "p90 {{model}}/{{variant}}"),
                ("0.99", "p99 {{model}}/{{variant}}"),
            ],
        ),
    );
    panel(
        "timeseries",
        "Errors by model, variant and status",
        "Requests per second answered with a status other than 2xx (400: bad input, 408: timeout, 413: too large, 429: queue full, 503: not ready).",
        "reqps",
        (0, 12, 12, 8),
        vec![(
            format!(
                "sum by (model, variant, status) ({})",
                rate(requests, &errors)
            ),
            "{{model}}/{{variant}} {{status}}",
        )],
    );
    panel(
        "timeseries",
        "Traffic share per variant",
        "Each variant's share of its model's requests; compare with the weights in serve.variants.",
        "percentunit",
        (12, 12, 12, 8),
        vec![(
            format!(
                "sum by (model, variant) ({}) / ignoring (variant) group_left sum by (model) ({})",
                rate(requests, &all),
                rate(requests, &all)
            ),
            "{{model}}/{{variant}}",
        )],
    );
    panel(
        "heatmap",
        "Batch size distribution",
        "Inference runs by rows per run (the buckets of ferry_batch_size).",
        "none",
        (0, 20, 12, 8),
        vec![(
            format!("sum by (le) (increase(ferry_batch_size_bucket{all}[$__rate_interval]))"),
            "{{le}}",
        )],
    );
    panel(
        "timeseries",
        "Queue depth",
        "Requests admitted and waiting for an inference run; near serve limits.max_queue, requests get 429.",
        "none",
        (12, 20, 12, 8),
        vec![(
            format!("sum by (model, variant) (ferry_queue_depth{all})"),
            "{{model}}/{{variant}}",
        )],
    );
    panel(
        "timeseries",
        "Inference time per run p50 / p99",
        "Time ONNX Runtime spends per inference run (a whole batch).",
        "s",
        (0, 28, 12, 8),
        percentiles(
            inference,
            &[
                ("0.5", "p50 {{model}}/{{variant}}"),
                ("0.99", "p99 {{model}}/{{variant}}"),
            ],
        ),
    );
    panel(
        "bargauge",
        "Model load time",
        "Seconds each variant took to load when the server started.",
        "s",
        (12, 28, 12, 8),
        vec![(
            format!("max by (model, variant) (ferry_model_load_seconds{all})"),
            "{{model}}/{{variant}}",
        )],
    );

    panel(
        "timeseries",
        "Requests by model file",
        "Requests per second by the sha256 of the model file that answered: a swapped-in model shows up as a new series.",
        "reqps",
        (0, 36, 12, 8),
        vec![(
            format!("sum by (model, variant, sha256) ({})", rate(requests, &all)),
            "{{model}}/{{variant}} {{sha256}}",
        )],
    );
    panel(
        "timeseries",
        "Instances busy",
        "Share of each variant's sessions running an inference (serve.instances); near 1, requests wait for an instance.",
        "percentunit",
        (12, 36, 12, 8),
        vec![(
            format!(
                "sum by (model, variant) (ferry_instances_busy{all}) / sum by (model, variant) (ferry_instances{all})"
            ),
            "{{model}}/{{variant}}",
        )],
    );
    panel(
        "timeseries",
        "Model reloads",
        "Model files loaded while serving (a watched file changed, or the repository API's load), and those refused (they did not load, or changed the inputs or outputs; the old model kept serving).",
        "none",
        (0, 44, 12, 8),
        vec![(
            format!(
                "sum by (model, result) (increase(ferry_model_reloads_total{all}[$__rate_interval]))"
            ),
            "{{model}} {{result}}",
        )],
    );
    let shadow_all = selector(name, "");
    let shadow_agree = selector(name, ", result=\"agree\"");
    let shadow_compared = selector(name, ", result=~\"agree|disagree\"");
    panel(
        "timeseries",
        "Shadow agreement",
        "Share of the requests copied to a shadow variant that it answered like the model (labels equal; scores by their top class, or within 1e-4).",
        "percentunit",
        (12, 44, 12, 8),
        vec![(
            format!(
                "sum by (model, variant) ({}) / sum by (model, variant) ({})",
                rate("ferry_shadow_requests_total", &shadow_agree),
                rate("ferry_shadow_requests_total", &shadow_compared)
            ),
            "{{model}}/{{variant}}",
        )],
    );
    panel(
        "timeseries",
        "Shadow results",
        "Requests copied to each shadow per second, by result: agree, disagree, error, timeout (its timeout_ms), dropped (its queue was full).",
        "reqps",
        (0, 52, 12, 8),
        vec![(
            format!(
                "sum by (model, variant, result) ({})",
                rate("ferry_shadow_requests_total", &shadow_all)
            ),
            "{{model}}/{{variant}} {{result}}",
        )],
    );
    panel(
        "timeseries",
        "Shadow rows disagreeing, by output",
        "Rows per second a shadow answered differently from the model, per output.",
        "none",
        (12, 52, 12, 8),
        vec![(
            format!(
                "sum by (model, variant, output) ({})",
                rate(
                    "ferry_shadow_rows_total",
                    &selector(name, ", result=\"disagree\"")
                )
            ),
            "{{model}}/{{variant}} {{output}}",
        )],
    );
    panel(
        "timeseries",
        "Shadow score difference p50 / p99",
        "Largest absolute difference between a shadow's scores and the model's, per request.",
        "none",
        (0, 60, 12, 8),
        ["0.5", "0.99"]
            .iter()
            .map(|q| {
                (
                    format!(
                        "histogram_quantile({q}, sum by (le, model, variant, output) ({}))",
                        rate("ferry_shadow_max_abs_diff_bucket", &shadow_all)
                    ),
                    if *q == "0.5" {
                        "p50 {{model}}/{{variant}} {{output}}"
                    } else {
                        "p99 {{model}}/{{variant}} {{output}}"
                    },
                )
            })
            .collect(),
    );
    panel(
        "timeseries",
        "Shadow top-k overlap",
        "Mean share of the top classes (up to 3) a shadow and the model have in common, for score outputs with several classes.",
        "percentunit",
        (12, 60, 12, 8),
        vec![(
            format!(
                "sum by (model, variant, output) ({}) / sum by (model, variant, output) ({})",
                rate("ferry_shadow_topk_overlap_sum", &shadow_all),
                rate("ferry_shadow_topk_overlap_count", &shadow_all)
            ),
            "{{model}}/{{variant}} {{output}}",
        )],
    );
    // The log is the server's, not a model's: no model label.
    let server_only =
        format!("{{{PROJECT_LABEL}=\"{name}\", {ENVIRONMENT_LABEL}=~\"$environment\"}}");
    panel(
        "timeseries",
        "Traffic log",
        "serve.log records per second: written, dropped (the writer's queue was full; answers are never slowed) and failed (the file could not be written).",
        "none",
        (0, 68, 12, 8),
        vec![(
            format!(
                "sum by (result) ({})",
                rate("ferry_traffic_log_records_total", &server_only)
            ),
            "{{result}}",
        )],
    );
    panel(
        "timeseries",
        "HTTP threads",
        "HTTP threads taking connections in each pod (more open under load where CPUs have time for them, fewer where the load fits or others have the CPUs), and connections moved between them per second.",
        "none",
        (12, 68, 12, 8),
        vec![
            (
                format!("sum by (pod) (ferry_http_lanes_open{server_only})"),
                "{{pod}} open",
            ),
            (
                format!(
                    "sum by (pod) ({})",
                    rate("ferry_http_connections_moved_total", &server_only)
                ),
                "{{pod}} moved/s",
            ),
        ],
    );

    let variable = |name: &str, label: &str, query: String| {
        json!({
            "name": name,
            "label": label,
            "type": "query",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": query, "refId": format!("{name}-values")},
            "definition": query,
            "refresh": 2,
            "includeAll": true,
            "multi": true,
            "allValue": ".*",
            "current": {"selected": true, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
        })
    };
    json!({
        "uid": dashboard_uid(name),
        "title": format!("ferry: {name}"),
        "description": format!("The model server of the ferry project {name}: traffic, latency, errors, batching, variants, instances, model files, shadows, the traffic log and the HTTP threads."),
        "tags": ["ferry", name],
        "timezone": "browser",
        "editable": true,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [
            {
                "name": "datasource",
                "label": "Prometheus",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
            },
            variable(ENVIRONMENT_LABEL, "Environment",
                format!("label_values(ferry_requests_total{{{PROJECT_LABEL}=\"{name}\"}}, {ENVIRONMENT_LABEL})")),
            variable("model", "Model",
                format!("label_values(ferry_requests_total{{{PROJECT_LABEL}=\"{name}\", {ENVIRONMENT_LABEL}=~\"$environment\"}}, model)")),
        ]},
        "panels": panels,
    })
}

fn ys(v: impl AsRef<str>) -> Yaml {
    Yaml::String(v.as_ref().to_string())
}

fn ymap<const N: usize>(pairs: [(&str, Yaml); N]) -> Yaml {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(ys(k), v);
    }
    Yaml::Mapping(m)
}

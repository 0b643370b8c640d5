//! `ferry score --env ENV` for a `target: kubernetes` environment: the inputs split into shards
//! of whole files, scored by an Indexed Job of the scoring image (the serving image with the
//! whole ferry in it), the shards' parts copied home sha256-checked and joined in input order.
//!
//! ```text
//! check here (inputs, columns, model) ─► build + push the project and serving images
//!   ─► Indexed Job, one completion per shard ─► per pod: inputs copied out of the project
//!      image, checked against their sha256, scored by `ferry score-shard`
//!   ─► per finished shard: its part listed, copied and checked as `train --env` copies
//!   ─► every shard home: the parts joined into the output (temporary file, rename)
//! ```
//!
//! A shard that fails is retried by the Job; one that fails for good fails the run at once,
//! named with its inputs and the pod's own error, the Job deleted and nothing written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, LogParams, PostParams};

use super::train::copy::{copy_command, listing_command, parse_sha256sum, unpack_verified};
use super::train::image::{dockerignore, left_out};
use super::train::objects::{JobCtx, apply_env_secret, delete_job, ensure_namespace, secret_name};
use super::train::pod::{Ended, Pending, container_status, job_failure};
use super::train::{POLL, exec_output, wait_complete};
use super::{ClusterError, namespace, require_cluster};
use crate::docker;
use crate::images::build as images;
use crate::images::push;
use crate::interrupt::{Interrupt, Interrupted};
use crate::kube::client::{self, Op};
use crate::kube::render::LABEL_INSTANCE;
use crate::kube::workloads::{COLLECT_DONE, Placement, run_label, score_job_name, scoring_job};
use crate::project_plan::make_plan;
use crate::score::shard::{self, PlanInput, SUMMARY_FILE, ShardPlan, ShardSummary};
use crate::score::source::Format;
use crate::score::{self, Options, ScoreError, ScoredInput, Summary, fetch};
use crate::serving_image::{scoring_image, serving_plan};
use crate::spec::{Project, RelPath, sha256_file};
use crate::ui::{Ui, human_bytes};

/// The label and annotation an Indexed Job puts on each pod: its completion index.
const INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";

/// A finished cluster scoring run.
pub struct Scored {
    pub summary: Summary,
    /// The scoring image the shards ran, by digest.
    pub image: String,
    pub job: String,
    pub shards: usize,
}

/// Scores `options` in the project's cluster environment as `shards` shards (at most one per
/// input file). `id` names the Job and the run's directory.
pub async fn score(
    project: &Project,
    options: &Options,
    shards: usize,
    id: &str,
    ui: &Ui,
) -> Result<Scored, ClusterError> {
    let started = Instant::now();
    let mut interrupt = Interrupt::new()?;
    let env = require_cluster(project)?;
    let registry = super::registry(project, &env)?;

    // What can be found wrong on this machine is said before the cluster is asked anything:
    // every file's columns against the model (a URL's are the pod's to check).
    let (inputs, mut scored_inputs) = plan_inputs(project, &options.inputs)?;
    {
        let mut local = options.clone();
        local.inputs = inputs
            .iter()
            .filter(|i| i.url.is_none())
            .map(|i| project.root.join(&i.name))
            .collect();
        tokio::task::spawn_blocking(move || score::preflight(&local))
            .await
            .map_err(|e| ScoreError::Inference {
                message: e.to_string(),
            })??;
    }
    drop(score::sink::Sink::create(&options.output, options.force)?);
    let serving = serving_plan(project)?;
    let model = served_model(project, &serving, &options.model)?;
    let model_sha256 = sha256_file(&options.model).map_err(|e| ScoreError::Output {
        path: options.model.clone(),
        message: e.to_string(),
    })?;
    super::train::image::check_secrets_not_in_image(project)?;
    let secrets = super::environment_secrets(project)?;
    let format = options
        .output
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    // A URL's size is unknown until fetched: counted as a typical file's.
    let known: Vec<u64> = inputs.iter().filter_map(|i| i.bytes).collect();
    let typical = (known.iter().sum::<u64>() / known.len().max(1) as u64).max(1);
    let sizes: Vec<u64> = inputs.iter().map(|i| i.bytes.unwrap_or(typical)).collect();
    let plan = ShardPlan {
        model,
        inputs,
        shards: shard::split(&sizes, shards),
        format,
        columns: options.columns.0.clone(),
        keep: options.keep.clone(),
        outputs: options.outputs.clone(),
        fill: options.fill.clone(),
        batch_rows: options.batch_rows,
        threads: options.threads,
    };
    if plan.shards.len() < shards {
        ui.info(format!(
            "{} input file(s): {} shard(s), not {shards} (a shard scores whole files)",
            plan.inputs.len(),
            plan.shards.len()
        ));
    }

    let kube = client::connect(project.spec.context.as_deref()).await?;
    let docker = docker::connect().await?;
    let engine = docker::engine_platform(&docker).await?;
    let chosen =
        crate::cluster::platform::for_project_image(project, &env, &kube, engine, ui).await?;
    let project_plan = make_plan(project)?;
    let base = registry.trim_end_matches('/');
    let (project_image, serving_ref) = tokio::select! {
        r = async {
            let env_image = images::ensure_env_image(&docker, project, &project_plan, ui).await?;
            let image = images::ensure_project_image(&docker, project, &env_image, ui).await?;
            let pushed = push::push(
                &docker, &image.tag, &format!("{base}/{}", project.spec.name), ui,
            ).await?;
            let built = scoring_image(&docker, project, &serving, engine, ui).await?;
            let serving = push::push(
                &docker, &built.tag, &format!("{base}/{}-serve", project.spec.name), ui,
            ).await?;
            Ok::<_, ClusterError>((pushed.reference, serving.reference))
        } => r?,
        _ = interrupt.recv() => return Err(Interrupted.into()),
    };

    let placement = Placement {
        project: project.spec.name.clone(),
        env: env.clone(),
        namespace: namespace(project),
        cluster: project.spec.cluster.clone().unwrap_or_default(),
        image: project_image,
        secret: secrets
            .as_ref()
            .filter(|s| !s.is_empty())
            .map(|_| secret_name(&project.spec.name)),
        run_on: chosen.run_on.clone(),
    };
    let job =
        scoring_job(&placement, &serving_ref, crate::plan::WORKDIR, &plan, id).map_err(|e| {
            ScoreError::Inference {
                message: format!("cannot write the scoring plan: {e}"),
            }
        })?;
    let name = score_job_name(&placement.project, id);
    let ctx = JobCtx {
        client: kube.clone(),
        ns: placement.namespace.clone(),
        job: name.clone(),
        selector: format!(
            "{LABEL_INSTANCE}={},ferry.dev/run={}",
            placement.project,
            run_label(id)
        ),
        workdir: shard::POD_DIR.into(),
    };
    ui.info(format!(
        "{} scoring run {id}: {} shard(s) in {serving_ref} (Job {name}, namespace {})",
        console::style("▶").cyan(),
        plan.shards.len(),
        placement.namespace
    ));
    let staging = crate::runs::runs_dir(&project.root).join(id).join("shards");
    let created = AtomicBool::new(false);
    let body = async {
        ensure_namespace(&kube, &ctx.ns).await?;
        if let (Some(s), Some(secret)) = (&secrets, &placement.secret) {
            apply_env_secret(&kube, &placement, secret, s).await?;
        }
        let step = ui.step(format!("creating Job {name} in namespace {}", ctx.ns));
        created.store(true, Ordering::SeqCst);
        let jobs: Api<Job> = Api::namespaced(kube.clone(), &ctx.ns);
        if let Err(e) = jobs.create(&PostParams::default(), &job).await {
            step.fail();
            return Err(Op::new("create", "jobs.batch")
                .name(&name)
                .namespace(&ctx.ns)
                .error(e)
                .into());
        }
        step.finish(format!("created Job {name}"));
        let summaries = collect_shards(&ctx, &plan, &staging, ui).await?;
        if let Err(e) = wait_complete(&ctx, plan.shards.len(), ui).await {
            // The parts are home and checked: the run stands; the Job is left to its TTL.
            ui.warn(format!(
                "{e}\nthe parts are home; the Job is left to the cluster"
            ));
        }
        Ok::<_, ClusterError>(summaries)
    };
    let outcome = tokio::select! {
        r = body => r,
        _ = interrupt.recv() => Err(Interrupted.into()),
    };
    let summaries = match outcome {
        Ok(s) => s,
        Err(e) => {
            if created.load(Ordering::SeqCst) {
                delete_job(&ctx, ui).await;
            }
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };

    let joined = join_parts(&plan, &staging, options, ui).await;
    let _ = std::fs::remove_dir_all(&staging);
    let written = joined?;
    let inputs = &mut scored_inputs;
    for (k, files) in plan.shards.iter().enumerate() {
        let s = &summaries[k];
        if s.model_sha256 != model_sha256 {
            return Err(ClusterError::ShardFailed {
                shard: k,
                shards: plan.shards.len(),
                inputs: plan.describe_shard(k),
                reason: format!(
                    "it scored with a model of sha256 {}, but {} here is {model_sha256}",
                    s.model_sha256,
                    options.model.display()
                ),
            });
        }
        for (&i, rows) in files.iter().zip(&s.input_rows) {
            if let Some(input) = inputs.get_mut(i) {
                input.rows = *rows;
                if let Some(f) = s.fetched.get(&i) {
                    input.bytes = f.bytes;
                    input.sha256 = Some(f.sha256.clone());
                    input.etag = f.etag.clone();
                }
            }
        }
    }
    let rows = summaries.iter().map(|s| s.rows).sum();
    let seconds = started.elapsed().as_secs_f64();
    Ok(Scored {
        summary: Summary {
            rows,
            seconds,
            rows_per_second: rows as f64 / seconds.max(1e-9),
            model: options.model.clone(),
            model_sha256,
            inputs: scored_inputs,
            output: options.output.clone(),
            output_sha256: written.sha256,
            output_bytes: written.bytes,
            columns: summaries
                .first()
                .map(|s| s.columns.clone())
                .unwrap_or_default(),
        },
        image: serving_ref,
        job: name,
        shards: plan.shards.len(),
    })
}

/// The inputs as the plan names them, in the order given (directories walked): a file by its
/// path in the project (so in the project image), size and sha256; a URL as it is. Files
/// outside the project, or left out of the image, are refused.
fn plan_inputs(
    project: &Project,
    given: &[PathBuf],
) -> Result<(Vec<PlanInput>, Vec<ScoredInput>), ClusterError> {
    if given.is_empty() {
        return Err(ScoreError::NoInputs.into());
    }
    let root = project
        .root
        .canonicalize()
        .unwrap_or_else(|_| project.root.clone());
    let (ignore_file, ignore) = dockerignore(project)?;
    let mut plan = Vec::new();
    let mut scored = Vec::new();
    for g in given {
        let text = g.to_string_lossy();
        if let Some(url) = fetch::parse(&text) {
            let url = url.map_err(|message| ScoreError::Input {
                path: PathBuf::from(fetch::redact(&text)),
                message,
            })?;
            let name = fetch::redact(&url.url);
            let path_part = reqwest::Url::parse(&url.url)
                .map(|u| u.path().to_string())
                .unwrap_or_default();
            let format = Format::of(Path::new(&path_part)).ok_or_else(|| ScoreError::Input {
                path: PathBuf::from(&name),
                message:
                    "not a table ferry reads: the URL's path must end in .csv, .tsv or .parquet"
                        .into(),
            })?;
            scored.push(ScoredInput {
                path: PathBuf::from(&name),
                format: format.name(),
                bytes: 0,
                rows: 0,
                sha256: url.sha256.clone(),
                etag: None,
            });
            plan.push(PlanInput {
                name,
                url: Some(url.url),
                sha256: url.sha256,
                bytes: None,
            });
            continue;
        }
        for f in score::source::list(std::slice::from_ref(g))? {
            let absolute = f.path.canonicalize().unwrap_or_else(|_| f.path.clone());
            let relative = absolute
                .strip_prefix(&root)
                .ok()
                .and_then(|r| RelPath::parse(&r.to_string_lossy()).ok())
                .ok_or_else(|| ClusterError::ScoreInputOutside {
                    input: f.path.display().to_string(),
                    root: project.root.display().to_string(),
                })?;
            if let Ok(Some((_, excluded))) =
                left_out(&project.root, std::slice::from_ref(&relative), &ignore)
            {
                return Err(ClusterError::ScoreInputNotInImage {
                    input: relative.as_str().to_string(),
                    excluded,
                    file: ignore_file.display().to_string(),
                });
            }
            let sha256 = sha256_file(&f.path).map_err(|e| ScoreError::Input {
                path: f.path.clone(),
                message: e.to_string(),
            })?;
            scored.push(ScoredInput {
                sha256: Some(sha256.clone()),
                ..ScoredInput::of(&f, 0)
            });
            plan.push(PlanInput {
                name: relative.as_str().to_string(),
                url: None,
                sha256: Some(sha256),
                bytes: Some(f.bytes),
            });
        }
    }
    Ok((plan, scored))
}

/// Where the serving image holds `model`: it must be one of the models it serves.
fn served_model(
    project: &Project,
    serving: &crate::plan::Serving,
    model: &Path,
) -> Result<String, ClusterError> {
    let same = |p: &Path| {
        let a = p.canonicalize().ok();
        a.is_some() && a == model.canonicalize().ok()
    };
    serving
        .models
        .iter()
        .find(|m| same(&project.path(&m.source)))
        .map(|m| m.image_path.clone())
        .ok_or_else(|| ClusterError::ScoreModelNotServed {
            model: model.display().to_string(),
            served: serving
                .models
                .iter()
                .map(|m| m.source.as_str().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The shard a pod scores, from the Job's label or annotation.
fn pod_index(pod: &Pod) -> Option<usize> {
    let m = &pod.metadata;
    m.annotations
        .as_ref()
        .and_then(|a| a.get(INDEX_KEY))
        .or_else(|| m.labels.as_ref().and_then(|l| l.get(INDEX_KEY)))
        .and_then(|v| v.parse().ok())
}

/// How one pod's shard stands.
enum ShardState {
    Waiting,
    Scoring,
    /// Scored; its collector holds the part.
    Ready,
    /// This attempt failed: how.
    Failed(String),
}

fn shard_state(pod: &Pod) -> ShardState {
    let terminated = |name: &str| {
        container_status(pod, name)
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .map(Ended::of)
    };
    for init in ["inputs", "score"] {
        if let Some(ended) = terminated(init)
            && ended.exit_code != 0
        {
            return ShardState::Failed(format!("{init}: {}", ended.describe()));
        }
    }
    let score_done = terminated("score").is_some_and(|e| e.exit_code == 0);
    let collecting = container_status(pod, "collect")
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some());
    if score_done && collecting {
        return ShardState::Ready;
    }
    if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed") {
        let s = pod.status.as_ref();
        return ShardState::Failed(format!(
            "the pod failed: {} {}",
            s.and_then(|s| s.reason.clone()).unwrap_or_default(),
            s.and_then(|s| s.message.clone()).unwrap_or_default()
        ));
    }
    let scoring = container_status(pod, "score")
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some());
    if scoring || score_done {
        ShardState::Scoring
    } else {
        ShardState::Waiting
    }
}

/// The pod's own account of a failed attempt: the last `error:` line of its `score` (or
/// `inputs`) container's log, else how the container ended.
async fn failure_reason(ctx: &JobCtx, pod: &str, ended: &str) -> String {
    let container = if ended.starts_with("inputs:") {
        "inputs"
    } else {
        "score"
    };
    let lp = LogParams {
        container: Some(container.into()),
        tail_lines: Some(20),
        ..Default::default()
    };
    let log = ctx.pods().logs(pod, &lp).await.unwrap_or_default();
    let last = log
        .lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .or_else(|| log.lines().rev().find(|l| !l.trim().is_empty()));
    match last {
        Some(line) => {
            let line = line.trim_start_matches("error: ").trim();
            // `shard K (INPUTS): ` is said again by the caller.
            let line = match line.strip_prefix("shard ") {
                Some(rest) => rest.split_once("): ").map_or(line, |(_, why)| why),
                None => line,
            };
            format!("{line} ({ended})")
        }
        None => ended.to_string(),
    }
}

/// Waits for every shard, copies each part home as its shard finishes (checked file by file
/// against the pod's sha256 listing) and releases its pod; the first shard that fails for good
/// fails the run.
async fn collect_shards(
    ctx: &JobCtx,
    plan: &ShardPlan,
    staging: &Path,
    ui: &Ui,
) -> Result<Vec<ShardSummary>, ClusterError> {
    let n = plan.shards.len();
    let step = ui.step(format!("scoring {n} shard(s)"));
    let result = async {
        let mut summaries: BTreeMap<usize, ShardSummary> = BTreeMap::new();
        let mut told: BTreeSet<String> = BTreeSet::new();
        let mut last_failure: BTreeMap<usize, String> = BTreeMap::new();
        let mut pending: BTreeMap<String, Pending> = BTreeMap::new();
        loop {
            let pods = ctx
                .pods()
                .list(&ListParams::default().labels(&ctx.selector))
                .await
                .map_err(|e| Op::new("list", "pods").namespace(&ctx.ns).error(e))?;
            let mut scoring = 0;
            for pod in &pods.items {
                let Some(k) = pod_index(pod) else { continue };
                if k >= n || summaries.contains_key(&k) {
                    continue;
                }
                let name = pod.name_any();
                match shard_state(pod) {
                    ShardState::Ready => {
                        step.set_detail(format!("copying shard {k}'s part from pod {name}"));
                        let s = collect_part(ctx, &name, k, staging).await?;
                        exec_output(
                            ctx,
                            &name,
                            vec!["touch".into(), COLLECT_DONE.into()],
                            &mut tokio::io::sink(),
                        )
                        .await?;
                        summaries.insert(k, s);
                    }
                    ShardState::Failed(how) => {
                        if told.insert(name.clone()) {
                            let reason = failure_reason(ctx, &name, &how).await;
                            ui.warn(format!(
                                "shard {k} ({}) failed in pod {name}: {reason}",
                                plan.describe_shard(k)
                            ));
                            last_failure.insert(k, reason);
                        }
                    }
                    ShardState::Scoring => scoring += 1,
                    ShardState::Waiting => {
                        let p = pending.entry(name.clone()).or_insert_with(Pending::new);
                        if let Some(t) = p.judge(&ctx.client, &ctx.ns, pod, "scoring").await? {
                            step.set_detail(format!("shard {k}: {}: {}", t.reason, t.message));
                        }
                    }
                }
            }
            if summaries.len() == n {
                return Ok::<Vec<ShardSummary>, ClusterError>(summaries.into_values().collect());
            }
            if let Some((k, why)) = job_failed(ctx, n).await? {
                let reason = k
                    .and_then(|k| last_failure.get(&k).cloned())
                    .or_else(|| last_failure.values().last().cloned())
                    .unwrap_or(why);
                let k = k
                    .or_else(|| last_failure.keys().last().copied())
                    .unwrap_or(0);
                return Err(ClusterError::ShardFailed {
                    shard: k,
                    shards: n,
                    inputs: plan.describe_shard(k),
                    reason,
                });
            }
            step.set_detail(format!(
                "{} of {n} shard(s) done, {scoring} scoring",
                summaries.len()
            ));
            tokio::time::sleep(POLL).await;
        }
    }
    .await;
    match &result {
        Ok(s) => {
            let rows: u64 = s.iter().map(|s| s.rows).sum();
            step.finish(format!(
                "{n} shard(s) scored, {rows} rows, parts sha256 verified"
            ));
        }
        Err(_) => step.fail(),
    }
    result
}

/// Whether the Job has failed for good: the shard it names (`failedIndexes`), and why.
async fn job_failed(
    ctx: &JobCtx,
    shards: usize,
) -> Result<Option<(Option<usize>, String)>, ClusterError> {
    let job = ctx.job().await?;
    let Some(why) = job_failure(job.as_ref()) else {
        return Ok(None);
    };
    let index = job
        .as_ref()
        .and_then(|j| j.status.as_ref())
        .and_then(|s| s.failed_indexes.as_deref())
        .and_then(|s| s.split([',', '-']).next())
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|k| *k < shards);
    Ok(Some((index, format!("the Job failed: {why}"))))
}

/// Copies shard `k`'s `out/` from its pod into `staging/<k>/`, every file checked.
async fn collect_part(
    ctx: &JobCtx,
    pod: &str,
    k: usize,
    staging: &Path,
) -> Result<ShardSummary, ClusterError> {
    let out = RelPath::parse("out").map_err(|m| ScoreError::Inference { message: m })?;
    let mut listing = Vec::new();
    exec_output(ctx, pod, listing_command(&ctx.workdir, &out), &mut listing).await?;
    let part_err = |source| ClusterError::Collect {
        output: format!("shard {k}'s part"),
        source,
    };
    let expected = parse_sha256sum(&String::from_utf8_lossy(&listing))
        .map_err(|m| part_err(super::train::copy::CollectError::Listing(m)))?;
    let dest = staging.join(k.to_string());
    std::fs::create_dir_all(&dest).map_err(|e| ScoreError::Output {
        path: dest.clone(),
        message: e.to_string(),
    })?;
    let tar_path = dest.join("part.tar");
    let mut file = tokio::fs::File::create(&tar_path)
        .await
        .map_err(|e| ScoreError::Output {
            path: tar_path.clone(),
            message: e.to_string(),
        })?;
    exec_output(ctx, pod, copy_command(&ctx.workdir, &out), &mut file).await?;
    tokio::io::AsyncWriteExt::flush(&mut file)
        .await
        .map_err(|e| ScoreError::Output {
            path: tar_path.clone(),
            message: e.to_string(),
        })?;
    drop(file);
    let unpack_to = dest.clone();
    let path = tar_path.clone();
    let unpacked = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&path).map_err(|e| super::train::copy::CollectError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        unpack_verified(std::io::BufReader::new(f), &expected, &out, &unpack_to)
    })
    .await
    .map_err(|e| ScoreError::Inference {
        message: e.to_string(),
    })?;
    let _ = std::fs::remove_file(&tar_path);
    unpacked.map_err(part_err)?;
    let summary_path = dest.join("out").join(SUMMARY_FILE);
    let text = std::fs::read(&summary_path).map_err(|e| ScoreError::Output {
        path: summary_path.clone(),
        message: format!("shard {k} left no summary: {e}"),
    })?;
    let summary: ShardSummary = serde_json::from_slice(&text).map_err(|e| ScoreError::Output {
        path: summary_path,
        message: format!("shard {k}'s summary cannot be read: {e}"),
    })?;
    if summary.shard != k {
        return Err(ClusterError::ShardFailed {
            shard: k,
            shards: 0,
            inputs: String::new(),
            reason: format!("its pod scored shard {} instead", summary.shard),
        });
    }
    Ok(summary)
}

/// The parts joined, in shard order, into the output.
async fn join_parts(
    plan: &ShardPlan,
    staging: &Path,
    options: &Options,
    ui: &Ui,
) -> Result<score::sink::Written, ClusterError> {
    let parts: Vec<PathBuf> = (0..plan.shards.len())
        .map(|k| {
            staging
                .join(k.to_string())
                .join("out")
                .join(plan.part_name())
        })
        .collect();
    let step = ui.step(format!(
        "joining {} part(s) into {}",
        parts.len(),
        options.output.display()
    ));
    let output = options.output.clone();
    let force = options.force;
    let joined = tokio::task::spawn_blocking(move || score::join::join(&parts, &output, force))
        .await
        .map_err(|e| ScoreError::Inference {
            message: e.to_string(),
        })?;
    match joined {
        Ok(w) => {
            step.finish(format!(
                "wrote {} ({})",
                options.output.display(),
                human_bytes(w.bytes)
            ));
            Ok(w)
        }
        Err(e) => {
            step.fail();
            Err(e.into())
        }
    }
}

//! Collecting a finished training's outputs through the pod's `collect` container: per output
//! a `sha256sum` listing and a tar stream exec'd there, unpacked into staging and checked; then
//! the collector is released and the Job left to complete.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::api::AttachParams;

use super::POLL;
use super::copy::{
    CollectError, Collected, copy_command, listing_command, parse_sha256sum, unpack_verified,
};
use super::objects::JobCtx;
use super::pod::{Ended, Pending, container_status};
use super::record::{Failure, Run};
use crate::cluster::ClusterError;
use crate::kube::client::Op;
use crate::plan::Workload;
use crate::runs::RunError;
use crate::ui::{Ui, human_bytes};

/// How long the collector container may take to start once training ended.
const COLLECTOR_WAIT: Duration = Duration::from_secs(5 * 60);
/// How long the Job may take to complete once the collector is released.
const COMPLETE_WAIT: Duration = Duration::from_secs(2 * 60);

/// Runs `command` in the pod's `collect` container, its stdout into `sink`; a non-zero exit
/// is an error carrying its stderr.
pub(crate) async fn exec_output<W: tokio::io::AsyncWrite + Unpin>(
    ctx: &JobCtx,
    pod: &str,
    command: Vec<String>,
    sink: &mut W,
) -> Result<(), ClusterError> {
    use tokio::io::AsyncReadExt;
    let what = command.join(" ");
    let op = || Op::new("create", "pods/exec").name(pod).namespace(&ctx.ns);
    let ap = AttachParams::default()
        .container("collect")
        .stdin(false)
        .stdout(true)
        .stderr(true)
        .max_stdout_buf_size(1 << 20);
    let mut proc = ctx
        .pods()
        .exec(pod, command, &ap)
        .await
        .map_err(|e| op().error(e))?;
    let stdout = proc.stdout();
    let stderr = proc.stderr();
    let status = proc.take_status();
    let copy_out = async {
        let Some(mut out) = stdout else {
            return Ok(0);
        };
        tokio::io::copy(&mut out, sink).await
    };
    let read_err = async {
        let mut text = String::new();
        if let Some(mut e) = stderr {
            let mut buf = Vec::new();
            let _ = e.read_to_end(&mut buf).await;
            text = String::from_utf8_lossy(&buf).into_owned();
        }
        text
    };
    let (copied, err_text) = tokio::join!(copy_out, read_err);
    let status = match status {
        Some(s) => s.await,
        None => None,
    };
    let _ = proc.join().await;
    copied.map_err(|e| ClusterError::Exec {
        command: what.clone(),
        pod: pod.to_string(),
        message: format!("copying its output: {e}"),
    })?;
    match status {
        Some(s) if s.status.as_deref() == Some("Success") => Ok(()),
        Some(s) => {
            let mut message = s
                .message
                .clone()
                .filter(|m| !m.is_empty())
                .or(s.reason.clone())
                .unwrap_or_else(|| "it failed".into());
            let err = err_text.trim();
            if !err.is_empty() {
                message.push_str(&format!(": {err}"));
            }
            Err(ClusterError::Exec {
                command: what,
                pod: pod.to_string(),
                message,
            })
        }
        None => Err(ClusterError::Exec {
            command: what,
            pod: pod.to_string(),
            message: "the connection ended without the command's exit status".into(),
        }),
    }
}

/// Waits until the `collect` container runs (it starts once `train` has ended).
async fn wait_collector(ctx: &JobCtx, pod: &str) -> Result<(), ClusterError> {
    let started = Instant::now();
    let mut pending = Pending::new();
    loop {
        let now = ctx
            .pods()
            .get_opt(pod)
            .await
            .map_err(|e| Op::new("get", "pods").name(pod).namespace(&ctx.ns).error(e))?;
        let Some(now) = now else {
            return Err(ClusterError::PodFailed {
                what: format!("pod {pod}"),
                reason: "deleted before its outputs were collected".into(),
            });
        };
        let state = container_status(&now, "collect").and_then(|c| c.state.as_ref());
        if state.is_some_and(|s| s.running.is_some()) {
            return Ok(());
        }
        if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            return Err(ClusterError::PodFailed {
                what: format!("the collector of pod {pod}"),
                reason: format!(
                    "it stopped before the outputs were copied ({})",
                    Ended::of(t).describe()
                ),
            });
        }
        pending
            .judge(&ctx.client, &ctx.ns, &now, "collector")
            .await?;
        if started.elapsed() > COLLECTOR_WAIT {
            return Err(ClusterError::PodFailed {
                what: format!("the collector of pod {pod}"),
                reason: format!("not running after {}s", COLLECTOR_WAIT.as_secs()),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Copies every declared output out of the pod into staging, each file checked against the
/// sha256 the pod computed; then checks ONNX outputs load, as a local run does.
pub(super) async fn collect_outputs(
    ctx: &JobCtx,
    pod: &str,
    work: &Workload,
    run: &Run<'_>,
    ui: &Ui,
) -> Result<BTreeMap<String, Collected>, Failure> {
    let step = ui.step(format!(
        "collecting {} output(s) from pod {pod}",
        work.outputs.len()
    ));
    let result = collect_all(ctx, pod, work, run, &step).await;
    match &result {
        Ok(files) => {
            let bytes: u64 = files.values().map(|c| c.size).sum();
            step.finish(format!(
                "collected {} file(s), {}, sha256 verified",
                files.len(),
                human_bytes(bytes)
            ));
        }
        Err(_) => step.fail(),
    }
    result
}

async fn collect_all(
    ctx: &JobCtx,
    pod: &str,
    work: &Workload,
    run: &Run<'_>,
    step: &crate::ui::Step,
) -> Result<BTreeMap<String, Collected>, Failure> {
    step.set_detail("waiting for the collector container");
    wait_collector(ctx, pod).await?;
    let mut all = BTreeMap::new();
    // A notebook run's executed notebook comes out the way the outputs do (it is kept with
    // the run, not moved into the project).
    let executed = work.notebook.as_ref().map(|nb| &nb.executed);
    for (i, out) in work.outputs.iter().chain(executed).enumerate() {
        step.set_detail(format!("hashing {out} in the pod"));
        let mut listing: Vec<u8> = Vec::new();
        let listed = exec_output(ctx, pod, listing_command(&ctx.workdir, out), &mut listing).await;
        let expected = match listed {
            Ok(()) => parse_sha256sum(&String::from_utf8_lossy(&listing)).map_err(|m| {
                ClusterError::Collect {
                    output: out.as_str().to_string(),
                    source: CollectError::Listing(m),
                }
            })?,
            // `find` fails for a path that does not exist: the output was not written.
            Err(ClusterError::Exec { .. }) => BTreeMap::new(),
            Err(e) => return Err(e.into()),
        };
        if expected.is_empty() {
            return Err(Failure::Missing(format!(
                "the command succeeded but did not write the declared output {out} (train.outputs)"
            )));
        }

        step.set_detail(format!("copying {out}"));
        let tar_path = run.dir.join(format!(".collect-{i}.tar"));
        let mut file = tokio::fs::File::create(&tar_path)
            .await
            .map_err(|e| ClusterError::from(RunError::io("cannot create", &tar_path)(e)))?;
        exec_output(ctx, pod, copy_command(&ctx.workdir, out), &mut file).await?;
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(|e| ClusterError::from(RunError::io("cannot write", &tar_path)(e)))?;
        drop(file);

        step.set_detail(format!("checking {out}"));
        let staging = run.staging.clone();
        let output = out.clone();
        let path = tar_path.clone();
        let unpacked = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&path).map_err(|e| CollectError::Io {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            unpack_verified(std::io::BufReader::new(f), &expected, &output, &staging)
        })
        .await
        .map_err(|e| ClusterError::Collect {
            output: out.as_str().to_string(),
            source: CollectError::Io {
                path: tar_path.display().to_string(),
                message: e.to_string(),
            },
        })?;
        let _ = std::fs::remove_file(&tar_path);
        let files = unpacked.map_err(|source| ClusterError::Collect {
            output: out.as_str().to_string(),
            source,
        })?;
        all.extend(files);
    }
    for out in &work.outputs {
        if out.as_str().ends_with(".onnx")
            && let Err(source) = crate::onnx::check_model(&out.under(&run.staging))
        {
            return Err(Failure::BadModel {
                output: out.as_str().to_string(),
                source,
            });
        }
    }
    Ok(all)
}

/// Waits until the Job counts `completions` pods as succeeded.
pub(crate) async fn wait_complete(
    ctx: &JobCtx,
    completions: usize,
    ui: &Ui,
) -> Result<(), ClusterError> {
    let step = ui.step(format!("waiting for Job {} to complete", ctx.job));
    let started = Instant::now();
    loop {
        let job = ctx.job().await;
        let job = match job {
            Ok(j) => j,
            Err(e) => {
                step.fail();
                return Err(e);
            }
        };
        let status = job.and_then(|j| j.status);
        let succeeded = status.as_ref().and_then(|s| s.succeeded).unwrap_or(0);
        if usize::try_from(succeeded).unwrap_or(0) >= completions {
            step.finish(format!("Job {} completed", ctx.job));
            return Ok(());
        }
        if started.elapsed() > COMPLETE_WAIT {
            step.fail();
            return Err(ClusterError::PodFailed {
                what: format!("Job {}", ctx.job),
                reason: format!(
                    "not complete {}s after its outputs were collected",
                    COMPLETE_WAIT.as_secs()
                ),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

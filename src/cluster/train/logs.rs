//! The `train` container's output, shown and written to the run's log as it comes; a stream
//! that breaks is picked up again after the last line seen, so a long run loses no line.

use futures_util::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::api::LogParams;

use super::POLL;
use super::objects::JobCtx;
use super::pod::{Ended, TrainState, job_failed, train_state};
use super::record::{Failure, Run};
use crate::cluster::ClusterError;
use crate::kube::client::Op;
use crate::ui::Ui;

/// A log stream that keeps failing this many times in a row is given up.
const LOG_RETRIES: u32 = 5;

/// A log line as `timestamps=true` gives it: the kubelet's RFC 3339 time, a space, the line.
fn split_timestamp(line: &str) -> (Option<Timestamp>, &str) {
    match line.split_once(' ') {
        Some((ts, rest)) => match ts.parse::<Timestamp>() {
            Ok(t) => (Some(t), rest),
            Err(_) => (None, line),
        },
        None => match line.parse::<Timestamp>() {
            Ok(t) => (Some(t), ""),
            Err(_) => (None, line),
        },
    }
}

/// Shows and records the `train` container's output until it ends; returns how it ended. A
/// log stream that breaks (long runs outlive API server connections) is picked up again from
/// the last line seen.
pub(super) async fn follow_training(
    ctx: &JobCtx,
    pod: &str,
    run: &Run<'_>,
    ui: &Ui,
) -> Result<Ended, Failure> {
    let show = ui.is_human();
    let mut last: Option<Timestamp> = None;
    let mut failures = 0;
    loop {
        let lp = LogParams {
            container: Some("train".into()),
            follow: true,
            timestamps: true,
            // Whole seconds only (kube rounds to the nearest one, which may skip lines): the
            // lines of that second already shown are dropped below.
            since_time: last.and_then(|t| Timestamp::from_second(t.as_second()).ok()),
            ..Default::default()
        };
        let streamed = async {
            let stream = ctx.pods().log_stream(pod, &lp).await?;
            let mut lines = stream.lines();
            while let Some(line) = lines.try_next().await.map_err(kube::Error::ReadEvents)? {
                let (ts, text) = split_timestamp(&line);
                if let (Some(t), Some(l)) = (ts, last)
                    && t <= l
                {
                    continue;
                }
                if ts.is_some() {
                    last = ts;
                }
                run.log_line(text);
                if show {
                    eprintln!("{} {text}", console::style("│").dim());
                }
            }
            Ok::<_, kube::Error>(())
        }
        .await;
        let pod_now = ctx
            .pods()
            .get_opt(pod)
            .await
            .map_err(|e| Op::new("get", "pods").name(pod).namespace(&ctx.ns).error(e))?;
        let Some(pod_now) = pod_now else {
            let why = job_failed(ctx).await?.unwrap_or_default();
            return Err(ClusterError::PodFailed {
                what: format!("pod {pod}"),
                reason: format!("deleted while training ran {why}")
                    .trim()
                    .to_string(),
            }
            .into());
        };
        if let TrainState::Ended(e) = train_state(&pod_now) {
            return Ok(e);
        }
        match streamed {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures >= LOG_RETRIES {
                    return Err(Op::new("get", "pods/log")
                        .name(pod)
                        .namespace(&ctx.ns)
                        .error(e)
                        .into());
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_lose_their_timestamps() {
        let (t, text) = split_timestamp("2025-05-12T09:20:10.123456789Z epoch 1 loss 0.3");
        assert!(t.is_some());
        assert_eq!(text, "epoch 1 loss 0.3");
        let (t, text) = split_timestamp("no timestamp here");
        assert!(t.is_none());
        assert_eq!(text, "no timestamp here");
        let a = split_timestamp("2025-05-12T09:20:10.1Z a").0.unwrap();
        let b = split_timestamp("2025-05-12T09:20:10.12Z b").0.unwrap();
        assert!(a < b);
    }
}

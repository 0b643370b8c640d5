//! What the request path hands on after answering: sampled requests to the traffic log
//! (`serve.log`), and copies to a model's shadow variant, whose answer is compared with the
//! model's, counted in `/metrics` and logged beside it. All of it off the request's way: the
//! shadow's job goes to its own queue and instances, the comparison and the log record are made
//! after the answer is sent, and a full log queue or a slow shadow only costs a count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::batch::{Job, JobResult, queue_full};
use super::compare::Tolerance;
use super::config::TrafficLogConfig;
use super::exposition::{Family, Series};
use super::live::Live;
use super::metrics::{ShadowMetrics, ShadowResult};
use super::model::{HostTensor, IoSpec};
use super::traffic_log::{LogConfig, LoggedTensor, Record, ShadowRecord, TrafficLog, sampled};
use super::{AppState, Model, Variant};

/// Records waiting for the log writer; more are dropped (and counted).
const LOG_QUEUE: usize = 4096;

/// The traffic log of a server with `serve.log`.
pub(crate) struct Traffic {
    sample: f64,
    /// `None` when it could not be opened: serving goes on, records count as failed.
    log: Option<TrafficLog>,
    failed_to_open: AtomicU64,
}

impl Traffic {
    /// Opens the log; a file that cannot be opened is one warning, not a server that won't
    /// start.
    pub(crate) fn open(config: &TrafficLogConfig) -> Traffic {
        let log = TrafficLog::start(LogConfig {
            path: config.path.clone(),
            max_size: config.max_size,
            keep: config.keep as usize,
            queue: config.queue.unwrap_or(LOG_QUEUE),
        });
        let log = match log {
            Ok(log) => Some(log),
            Err(e) => {
                eprintln!("ferry serve-model: {e}; requests will not be logged, serving goes on");
                None
            }
        };
        Traffic {
            sample: config.sample,
            log,
            failed_to_open: AtomicU64::new(0),
        }
    }

    fn sampled(&self) -> bool {
        sampled(self.sample)
    }

    fn submit(&self, record: Record) {
        match &self.log {
            Some(log) => log.submit(record),
            None => {
                self.failed_to_open.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// `ferry_traffic_log_records` by result.
    pub(crate) fn family(&self) -> Family {
        let (written, dropped, failed) = match &self.log {
            Some(log) => (log.written(), log.dropped(), log.failed()),
            None => (0, 0, 0),
        };
        let failed = failed + self.failed_to_open.load(Ordering::Relaxed);
        Family {
            name: "ferry_traffic_log_records",
            help: "Requests chosen for the traffic log: written, dropped (its queue was full) or failed (the file could not be written).",
            series: Series::Counter(
                [
                    ("written", written),
                    ("dropped", dropped),
                    ("failed", failed),
                ]
                .into_iter()
                .map(|(result, n)| (vec![("result", result.to_string())], n))
                .collect(),
            ),
        }
    }
}

/// A model's shadow variant, as the request path sees it.
pub(crate) struct Shadow {
    pub index: usize,
    /// Percent of the model's requests copied to it.
    pub weight: u32,
    pub timeout: Duration,
    pub metrics: Arc<ShadowMetrics>,
}

/// A request's part in logging and shadowing, decided before it is queued.
pub(crate) struct Recording {
    /// The inputs, named, when the request is logged or shadowed.
    inputs: Option<Vec<LoggedTensor>>,
    shadow: Option<ShadowJob>,
}

/// The shadow's answer (or its timeout) and how long it took.
type ShadowWait = (
    Result<Result<JobResult, oneshot::error::RecvError>, ()>,
    Duration,
);

enum ShadowJob {
    /// Waited for from the moment it is sent, alongside the model's own run, so its timeout
    /// and latency are its own.
    Sent {
        live: Arc<Live>,
        waiting: tokio::task::JoinHandle<ShadowWait>,
    },
    /// The shadow's queue was full, or it is unloaded.
    NotSent {
        sha256: String,
        reason: &'static str,
    },
}

impl Recording {
    /// Whether this request is logged and copied to the shadow, and if so, the copy sent.
    /// `inputs` are the checked inputs in the model's order, `rows` the job's rows.
    pub(crate) fn start(
        state: &AppState,
        model: &Model,
        specs: &[IoSpec],
        inputs: &[HostTensor],
        rows: Option<usize>,
    ) -> Recording {
        let shadow = model
            .shadow
            .as_ref()
            .filter(|s| rand::random_range(0..100u32) < s.weight);
        let logged = state.traffic.as_ref().is_some_and(Traffic::sampled);
        if shadow.is_none() && !logged {
            return Recording {
                inputs: None,
                shadow: None,
            };
        }
        let named = specs
            .iter()
            .zip(inputs)
            .map(|(spec, t)| LoggedTensor::from((spec.name.clone(), t.clone())))
            .collect();
        let shadow = shadow
            .map(|s| send_to_shadow(state, &model.variants[s.index], s.timeout, inputs, rows));
        Recording {
            inputs: Some(named),
            shadow,
        }
    }

    /// After the model answered: the record (with the shadow's answer, once it has one) goes
    /// to the log, and the shadow's agreement to `/metrics`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn finish(
        self,
        state: &Arc<AppState>,
        model: &Model,
        variant: &Variant,
        live: &Live,
        id: Option<&str>,
        started: Instant,
        outputs: &[(usize, HostTensor)],
    ) {
        let Some(inputs) = self.inputs else {
            return;
        };
        // Read here, not by the caller: a request not recorded does not read the clock for it.
        let latency = started.elapsed();
        let named: Vec<LoggedTensor> = outputs
            .iter()
            .map(|(i, t)| {
                let name = live
                    .signature
                    .outputs
                    .get(*i)
                    .map_or("", |s| s.name.as_str());
                LoggedTensor::from((name.to_string(), t.clone()))
            })
            .collect();
        let id = id.map_or_else(|| format!("{:016x}", rand::random::<u64>()), str::to_string);
        let record = Record::new(
            model.name.clone(),
            variant.name.clone(),
            live.sha256.clone(),
            id,
            latency,
            inputs,
            named,
        );
        let (Some(job), Some(shadow)) = (self.shadow, model.shadow.as_ref()) else {
            if let Some(traffic) = &state.traffic {
                traffic.submit(record);
            }
            return;
        };
        let state = state.clone();
        let metrics = shadow.metrics.clone();
        let timeout = shadow.timeout;
        let shadow_name = model.variants[shadow.index].name.clone();
        tokio::spawn(async move {
            let shadow = shadow_answer(job, timeout, &shadow_name, &record.outputs).await;
            let result = match (&shadow.agreement, &shadow.error) {
                (Some(agreement), _) => {
                    metrics.compared(agreement);
                    if agreement.agrees() {
                        ShadowResult::Agree
                    } else {
                        ShadowResult::Disagree
                    }
                }
                (None, Some(e)) if e.starts_with("timed out") => ShadowResult::Timeout,
                (None, Some(e)) if e.starts_with("not sent") => ShadowResult::Dropped,
                (None, _) => ShadowResult::Error,
            };
            metrics.count(result);
            if let Some(traffic) = &state.traffic {
                traffic.submit(record.with_shadow(shadow));
            }
        });
    }
}

fn send_to_shadow(
    state: &AppState,
    variant: &Variant,
    timeout: Duration,
    inputs: &[HostTensor],
    rows: Option<usize>,
) -> ShadowJob {
    let Some(live) = variant.live() else {
        return ShadowJob::NotSent {
            sha256: String::new(),
            reason: "not sent: the shadow is unloaded",
        };
    };
    if queue_full(&live.metrics, state.limits.max_queue) {
        return ShadowJob::NotSent {
            sha256: live.sha256.clone(),
            reason: "not sent: the shadow's queue is full",
        };
    }
    let (reply, answer) = oneshot::channel();
    // Never run by the handler: a shadow must not delay the primary's answer.
    live.queue.push(
        Job {
            inputs: inputs.to_vec(),
            rows: rows.filter(|_| live.mergeable),
            outputs: (0..live.signature.outputs.len()).collect(),
            reply,
            enqueued: Instant::now(),
        },
        false,
    );
    let sent = Instant::now();
    let waiting = tokio::spawn(async move {
        // On a timeout the receiver is dropped: a job not started yet is skipped.
        let answer = tokio::time::timeout(timeout, answer).await.map_err(|_| ());
        (answer, sent.elapsed())
    });
    ShadowJob::Sent { live, waiting }
}

/// The shadow's answer as logged, compared with the model's.
async fn shadow_answer(
    job: ShadowJob,
    timeout: Duration,
    variant: &str,
    primary: &[LoggedTensor],
) -> ShadowRecord {
    let (live, waiting) = match job {
        ShadowJob::Sent { live, waiting } => (live, waiting),
        ShadowJob::NotSent { sha256, reason } => {
            return ShadowRecord::new(
                variant,
                sha256,
                Duration::ZERO,
                Err(reason.to_string()),
                primary,
                Tolerance::default(),
            );
        }
    };
    let (answer, took) = match waiting.await {
        Ok(waited) => waited,
        Err(e) => (
            Ok(Ok(Err(format!("waiting for the shadow: {e}")))),
            Duration::ZERO,
        ),
    };
    let answer = match answer {
        Ok(Ok(Ok(outputs))) => Ok(outputs
            .into_iter()
            .map(|(i, t)| {
                let name = live
                    .signature
                    .outputs
                    .get(i)
                    .map_or("", |s| s.name.as_str());
                LoggedTensor::from((name.to_string(), t))
            })
            .collect()),
        Ok(Ok(Err(message))) => Err(message),
        Ok(Err(_)) => Err("the shadow's inference worker stopped".to_string()),
        Err(()) => Err(format!(
            "timed out: no answer within {} ms",
            timeout.as_millis()
        )),
    };
    ShadowRecord::new(
        variant,
        live.sha256.clone(),
        took,
        answer,
        primary,
        Tolerance::default(),
    )
}

//! Per-model inference statistics in the terms of Triton's statistics extension: how many
//! requests succeeded and failed, and for the successful ones the count and cumulative
//! nanoseconds of each phase (waiting in the queue for a batch, preparing the inputs, the
//! session run, taking the outputs out), plus the same per batch size.
//!
//! A model's variants share one `ModelStats`: clients see one model.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// A count and the cumulative time of what it counts.
#[derive(Debug, Default)]
struct Phase {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Phase {
    fn add(&self, took: Duration) {
        self.add_many(1, nanos(took));
    }

    /// `count` more of what it counts, together taking `ns`.
    fn add_many(&self, count: u64, ns: u64) {
        self.count.fetch_add(count, Ordering::Relaxed);
        self.ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn get(&self) -> PhaseTotal {
        PhaseTotal {
            count: self.count.load(Ordering::Relaxed),
            ns: self.ns.load(Ordering::Relaxed),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// How long one execution (one session run, of one or more merged requests) spent in each
/// phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Execution {
    /// Merging requests and handing their tensors to ONNX Runtime.
    pub compute_input: Duration,
    /// The session run.
    pub compute_infer: Duration,
    /// Copying each request's outputs out of ONNX Runtime's.
    pub compute_output: Duration,
}

#[derive(Debug, Default)]
struct BatchPhases {
    compute_input: Phase,
    compute_infer: Phase,
    compute_output: Phase,
}

#[derive(Debug)]
pub(crate) struct ModelStats {
    /// Whether the model batches: then a request's rows are its inferences and a run's rows its
    /// batch size, as in Triton; otherwise each request is one inference of batch size 1.
    batching: bool,
    success: Phase,
    fail: Phase,
    queue: Phase,
    compute_input: Phase,
    compute_infer: Phase,
    compute_output: Phase,
    inference_count: AtomicU64,
    execution_count: AtomicU64,
    /// Milliseconds since the Unix epoch; 0 before the first.
    last_inference: AtomicU64,
    /// By batch size; one lock per execution, not per request.
    batches: Mutex<BTreeMap<u64, BatchPhases>>,
}

impl ModelStats {
    pub(crate) fn new(batching: bool) -> ModelStats {
        ModelStats {
            batching,
            success: Phase::default(),
            fail: Phase::default(),
            queue: Phase::default(),
            compute_input: Phase::default(),
            compute_infer: Phase::default(),
            compute_output: Phase::default(),
            inference_count: AtomicU64::new(0),
            execution_count: AtomicU64::new(0),
            last_inference: AtomicU64::new(0),
            batches: Mutex::new(BTreeMap::new()),
        }
    }

    /// A request to this model was answered, successfully or not, `took` after it arrived.
    pub(crate) fn request_done(&self, success: bool, took: Duration) {
        if success {
            self.success.add(took)
        } else {
            self.fail.add(took)
        }
    }

    /// One execution that answered its requests: `requests` holds each one's rows and time in
    /// the queue (until the execution started).
    pub(crate) fn executed(&self, run: &Execution, requests: &[(usize, Duration)]) {
        let mut batch_size = 0u64;
        let mut queued_ns = 0u64;
        for &(rows, queued) in requests {
            batch_size += if self.batching { rows as u64 } else { 1 };
            queued_ns = queued_ns.saturating_add(nanos(queued));
        }
        // Added once for the batch: the totals are what adding each request would give.
        let n = requests.len() as u64;
        self.inference_count
            .fetch_add(batch_size, Ordering::Relaxed);
        self.queue.add_many(n, queued_ns);
        // Each request in a batch took the batch's compute time, as Triton counts it.
        let each = |took: Duration| nanos(took).saturating_mul(n);
        self.compute_input.add_many(n, each(run.compute_input));
        self.compute_infer.add_many(n, each(run.compute_infer));
        self.compute_output.add_many(n, each(run.compute_output));
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last_inference.fetch_max(now, Ordering::Relaxed);
        let mut batches = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
        let phases = batches.entry(batch_size).or_default();
        phases.compute_input.add(run.compute_input);
        phases.compute_infer.add(run.compute_infer);
        phases.compute_output.add(run.compute_output);
    }

    pub(crate) fn snapshot<'a>(&self, name: &'a str, version: &'a str) -> Snapshot<'a> {
        let batch_stats = self
            .batches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(&batch_size, p)| BatchStats {
                batch_size,
                compute_input: p.compute_input.get(),
                compute_infer: p.compute_infer.get(),
                compute_output: p.compute_output.get(),
            })
            .collect();
        Snapshot {
            name,
            version,
            last_inference: self.last_inference.load(Ordering::Relaxed),
            inference_count: self.inference_count.load(Ordering::Relaxed),
            execution_count: self.execution_count.load(Ordering::Relaxed),
            inference_stats: InferenceStats {
                success: self.success.get(),
                fail: self.fail.get(),
                queue: self.queue.get(),
                compute_input: self.compute_input.get(),
                compute_infer: self.compute_infer.get(),
                compute_output: self.compute_output.get(),
                cache_hit: PhaseTotal::default(),
                cache_miss: PhaseTotal::default(),
            },
            response_stats: BTreeMap::new(),
            batch_stats,
            memory_usage: [],
        }
    }
}

/// One entry of `model_stats`, field for field as Triton writes it.
#[derive(Debug, Serialize)]
pub(crate) struct Snapshot<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub last_inference: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub inference_stats: InferenceStats,
    /// Per-response statistics of decoupled models; ferry's models answer once per request.
    pub response_stats: BTreeMap<String, ()>,
    pub batch_stats: Vec<BatchStats>,
    pub memory_usage: [(); 0],
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct PhaseTotal {
    pub count: u64,
    pub ns: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct InferenceStats {
    pub success: PhaseTotal,
    pub fail: PhaseTotal,
    pub queue: PhaseTotal,
    pub compute_input: PhaseTotal,
    pub compute_infer: PhaseTotal,
    pub compute_output: PhaseTotal,
    /// Ferry has no response cache: always zero.
    pub cache_hit: PhaseTotal,
    pub cache_miss: PhaseTotal,
}

#[derive(Debug, Serialize)]
pub(crate) struct BatchStats {
    pub batch_size: u64,
    pub compute_input: PhaseTotal,
    pub compute_infer: PhaseTotal,
    pub compute_output: PhaseTotal,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const RUN: Execution = Execution {
        compute_input: Duration::from_micros(10),
        compute_infer: Duration::from_micros(200),
        compute_output: Duration::from_micros(5),
    };

    #[test]
    fn a_batched_model_counts_rows_as_inferences_and_requests_per_phase() {
        let stats = ModelStats::new(true);
        stats.executed(&RUN, &[(2, ms(1)), (3, ms(2))]);
        stats.executed(&RUN, &[(1, ms(4))]);
        stats.request_done(true, ms(5));
        stats.request_done(true, ms(6));
        stats.request_done(true, ms(7));
        stats.request_done(false, ms(1));
        let s = stats.snapshot("m", "1");
        assert_eq!((s.inference_count, s.execution_count), (6, 2));
        let i = &s.inference_stats;
        assert_eq!(
            i.success,
            PhaseTotal {
                count: 3,
                ns: 18_000_000
            }
        );
        assert_eq!(
            i.fail,
            PhaseTotal {
                count: 1,
                ns: 1_000_000
            }
        );
        assert_eq!(
            i.queue,
            PhaseTotal {
                count: 3,
                ns: 7_000_000
            }
        );
        assert_eq!(
            i.compute_infer,
            PhaseTotal {
                count: 3,
                ns: 600_000
            }
        );
        assert_eq!(
            i.compute_input,
            PhaseTotal {
                count: 3,
                ns: 30_000
            }
        );
        assert_eq!(
            i.compute_output,
            PhaseTotal {
                count: 3,
                ns: 15_000
            }
        );
        let sizes: Vec<(u64, u64, u64)> = s
            .batch_stats
            .iter()
            .map(|b| (b.batch_size, b.compute_infer.count, b.compute_infer.ns))
            .collect();
        assert_eq!(sizes, [(1, 1, 200_000), (5, 1, 200_000)]);
        assert!(s.last_inference > 1_600_000_000_000, "{}", s.last_inference);
    }

    #[test]
    fn an_unbatched_model_counts_each_request_once() {
        let stats = ModelStats::new(false);
        stats.executed(&RUN, &[(8, ms(1))]);
        let s = stats.snapshot("m", "1");
        assert_eq!((s.inference_count, s.execution_count), (1, 1));
        assert_eq!(s.batch_stats[0].batch_size, 1);
    }

    #[test]
    fn nothing_measured_yet_is_zero() {
        let s = ModelStats::new(true).snapshot("m", "1");
        assert_eq!(
            (s.last_inference, s.inference_count, s.execution_count),
            (0, 0, 0)
        );
        assert!(s.batch_stats.is_empty());
    }
}

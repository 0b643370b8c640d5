//! How one model variant runs its jobs: a queue, the variant's ONNX Runtime sessions (one per
//! instance; `Session::run` takes `&mut self`) and one worker thread per session that takes
//! jobs, merges compatible ones along the first axis (dynamic batching), runs them and splits
//! the outputs back. Keeping ONNX Runtime off the async threads means a slow model never stalls
//! HTTP.
//!
//! Light models are the exception: when a run takes a few microseconds, handing each batch to a
//! worker thread and the answers back costs more than the inference (two wake-ups and context
//! switches). There the request handler that queued a job lets the other requests its thread
//! has received be queued too, then runs what is queued itself on an instance no worker is
//! using ([`Engine::lead`]) — a batch per round of the HTTP thread, and no thread in between.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use ort::session::{Session, SessionInputValue};
use tokio::sync::oneshot;

use super::metrics::VariantMetrics;
use super::model::{HostTensor, Signature};
use super::stats::{Execution, ModelStats};
use super::tensor::{OutputView, TensorData};

/// A job's requested outputs as (output index, tensor), in the order asked for.
pub(crate) type Outputs = Vec<(usize, HostTensor)>;

/// The answer to a job: its outputs, or why inference failed (a 500).
pub(crate) type JobResult = Result<Outputs, String>;

pub(crate) struct Job {
    /// In the session's input order.
    pub inputs: Vec<HostTensor>,
    /// Rows along the first axis when the job may be merged with others.
    pub rows: Option<usize>,
    /// Indices of the outputs to send back, in the order the client asked for them.
    pub outputs: Vec<usize>,
    pub reply: oneshot::Sender<JobResult>,
    pub enqueued: Instant,
}

impl Job {
    /// Jobs merge only when every input has the same dimensions after the first (the datatypes
    /// are the model's, so they already agree).
    fn compatible(&self, other: &Job) -> bool {
        self.inputs.len() == other.inputs.len()
            && self
                .inputs
                .iter()
                .zip(&other.inputs)
                .all(|(a, b)| a.shape.get(1..) == b.shape.get(1..))
    }

    fn row_count(&self) -> usize {
        self.rows
            .or_else(|| self.inputs.first().and_then(|t| t.shape.first().copied()))
            .unwrap_or(1)
    }
}

/// Runs at least this long make a second instance worth waking for a queued job; shorter ones
/// finish before a woken thread would even start.
const LONG_RUN: Duration = Duration::from_micros(100);
/// Jobs queued per busy instance beyond which another is woken even for short runs.
const BACKLOG: usize = 16;
/// Models whose runs take less than this on average are run by the request handlers
/// themselves ([`Engine::lead`]). The average is of the runs so far, so a model starts on its
/// workers and moves once it has shown it is light (and back, should its runs grow).
const INLINE_RUN: Duration = Duration::from_micros(50);
/// Jobs of more rows than this always go to a worker: an HTTP thread runs only small batches.
const INLINE_ROWS: usize = 64;
/// Without batching, a leader runs at most this many queued jobs, one after the other.
const LEAD_JOBS: usize = 16;

/// The queue between the HTTP handlers of one variant and its workers (one per instance).
///
/// A plain channel would wake a worker for every job; on a machine with few cores those
/// wake-ups (and the preemptions they cause) cost more than the inference. Here a worker is
/// woken only when it has nothing to do, or while it gathers a batch, when the batch can be
/// filled or no other request for the variant is on its way. With several instances, an idle
/// one is woken for a job only when the busy ones will not get to it soon: runs take long (on
/// average, or the one running now), or the queue keeps growing; and the one woken is the one
/// that went idle last, whose session is still in the caches, so a light load stays on one.
pub(crate) struct JobQueue {
    inner: Mutex<QueueInner>,
    /// Average run time in nanoseconds (exponentially weighted).
    run_ns: AtomicU64,
    /// Workers gathering a batch.
    gather_wake: Condvar,
    /// Requests for this variant being received or parsed right now.
    pending: AtomicUsize,
}

struct QueueInner {
    jobs: VecDeque<Job>,
    /// Rows of the queued jobs (1 for jobs without rows).
    rows: usize,
    /// Workers waiting in [`JobQueue::pop`], the last to go idle on top.
    idle: Vec<usize>,
    /// Per worker: what wakes it from [`JobQueue::pop`].
    wakers: Vec<Arc<Condvar>>,
    /// Per worker: when its current run started.
    running: Vec<Option<Instant>>,
    /// What each worker gathering a batch still lacks, in rows.
    gathering: Vec<usize>,
    closed: bool,
}

impl QueueInner {
    /// A gathering worker has what it waits for: rows enough, or nothing more on its way.
    fn gatherer_satisfied(&self, pending: usize) -> bool {
        !self.gathering.is_empty()
            && (pending == 0 || self.gathering.iter().any(|&need| self.rows >= need))
    }

    fn take_all(&mut self) -> Vec<Job> {
        self.rows = 0;
        self.jobs.drain(..).collect()
    }

    /// Takes the worker that went idle last off the idle stack; its waker, to notify once the
    /// lock is released.
    fn wake_one(&mut self) -> Option<Arc<Condvar>> {
        let id = self.idle.pop()?;
        self.wakers.get(id).cloned()
    }
}

/// What the worker gets while gathering a batch.
enum Gathered {
    Jobs(Vec<Job>),
    /// Nothing more is coming soon (or the delay is over): run what there is.
    Done,
}

impl JobQueue {
    pub(crate) fn new() -> JobQueue {
        JobQueue {
            run_ns: AtomicU64::new(0),
            inner: Mutex::new(QueueInner {
                jobs: VecDeque::new(),
                rows: 0,
                idle: Vec::new(),
                wakers: Vec::new(),
                running: Vec::new(),
                gathering: Vec::new(),
                closed: false,
            }),
            gather_wake: Condvar::new(),
            pending: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueInner> {
        // A panic while holding this lock leaves plain data behind; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A request for this variant is being received; see [`JobQueue::push`].
    pub(crate) fn start_pending(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// The request is queued or refused: a worker gathering a batch stops waiting for it.
    pub(crate) fn end_pending(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            let inner = self.lock();
            let gathering = !inner.gathering.is_empty();
            drop(inner);
            if gathering {
                self.gather_wake.notify_all();
            }
        }
    }

    /// A new instance; its id for [`JobQueue::pop`], [`JobQueue::run_started`] and
    /// [`JobQueue::run_ended`].
    fn register(&self) -> usize {
        let mut inner = self.lock();
        inner.running.push(None);
        inner.wakers.push(Arc::new(Condvar::new()));
        inner.running.len() - 1
    }

    /// Whether an idle worker should be woken for the jobs queued.
    fn wake_for_jobs(&self, inner: &QueueInner) -> bool {
        if inner.idle.is_empty() || inner.jobs.is_empty() {
            return false;
        }
        let busy = inner.running.len().saturating_sub(inner.idle.len());
        // Short runs: the busy instances empty the queue sooner than a woken thread would start,
        // unless it keeps growing.
        if busy == 0
            || inner.jobs.len() > BACKLOG * busy
            || self.run_ns.load(Ordering::Relaxed) >= LONG_RUN.as_nanos() as u64
        {
            return true;
        }
        let now = Instant::now();
        inner
            .running
            .iter()
            .flatten()
            .any(|&started| now.saturating_duration_since(started) >= LONG_RUN)
    }

    /// Worker `id` starts a run: with runs that take long and jobs still queued, an idle
    /// instance takes the next one instead of waiting for this run.
    fn run_started(&self, id: usize) {
        let mut inner = self.lock();
        if let Some(slot) = inner.running.get_mut(id) {
            *slot = Some(Instant::now());
        }
        let wake = (!inner.jobs.is_empty()
            && self.run_ns.load(Ordering::Relaxed) >= LONG_RUN.as_nanos() as u64)
            .then(|| inner.wake_one())
            .flatten();
        drop(inner);
        if let Some(waker) = wake {
            waker.notify_one();
        }
    }

    fn run_ended(&self, id: usize, took: Duration) {
        let mut inner = self.lock();
        if let Some(slot) = inner.running.get_mut(id) {
            *slot = None;
        }
        drop(inner);
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let old = self.run_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            // A run counts for at most twice the average: one the thread was preempted in (the
            // scheduler gives the client a few milliseconds) says nothing of the model, and
            // would send a light model to the workers for the dozens of runs the average takes
            // to come back down. Runs that really grow lift the average an eighth a run.
            old - old / 8 + sample.min(old.saturating_mul(2)) / 8
        };
        self.run_ns.store(new, Ordering::Relaxed);
    }

    /// Runs are short enough for a request handler to run them (see [`INLINE_RUN`]).
    fn light(&self) -> bool {
        let ns = self.run_ns.load(Ordering::Relaxed);
        ns > 0 && ns < INLINE_RUN.as_nanos() as u64
    }

    /// Queues a job; the caller has ended its pending count first. With `may_lead`, a small job
    /// of a light model wakes no worker and true is returned: the caller must then call
    /// [`Engine::lead`] unless its answer has come meanwhile.
    pub(crate) fn push(&self, job: Job, may_lead: bool) -> bool {
        let lead = may_lead && job.row_count() <= INLINE_ROWS && self.light();
        let mut inner = self.lock();
        inner.rows += job.rows.unwrap_or(1);
        inner.jobs.push_back(job);
        let wake_idle = (!lead && self.wake_for_jobs(&inner))
            .then(|| inner.wake_one())
            .flatten();
        let wake_gatherers = inner.gatherer_satisfied(self.pending.load(Ordering::Acquire));
        drop(inner);
        if let Some(waker) = wake_idle {
            waker.notify_one();
        }
        if wake_gatherers {
            self.gather_wake.notify_all();
        }
        lead
    }

    /// Jobs for a leader to run now: with `batching`, the first queued and those after it that
    /// merge with it; without, up to [`LEAD_JOBS`] jobs, to run one by one.
    fn take_lead(&self, batching: Option<Batching>) -> Vec<Job> {
        let mut inner = self.lock();
        let mut batch: Vec<Job> = Vec::new();
        let mut rows = 0;
        while let Some(job) = inner.jobs.front() {
            let fits = match (batching, batch.first()) {
                (_, None) => true,
                (Some(b), Some(first)) => {
                    first.rows.is_some()
                        && job.rows.is_some_and(|r| rows + r <= b.max_rows)
                        && first.compatible(job)
                }
                (None, Some(_)) => batch.len() < LEAD_JOBS,
            };
            if !fits {
                break;
            }
            let Some(job) = inner.jobs.pop_front() else {
                break;
            };
            inner.rows = inner.rows.saturating_sub(job.rows.unwrap_or(1));
            rows += job.rows.unwrap_or(0);
            batch.push(job);
        }
        batch
    }

    /// Wakes an idle worker for what is queued, whatever the runs take: a leader found every
    /// instance in use, and the leaders using them take no more jobs when they are done.
    fn wake_worker(&self) {
        let mut inner = self.lock();
        let waker = (!inner.jobs.is_empty()).then(|| inner.wake_one()).flatten();
        drop(inner);
        if let Some(waker) = waker {
            waker.notify_one();
        }
    }

    /// Puts jobs a worker took but could not run in its batch back at the front, in order, for
    /// the next worker free.
    fn requeue(&self, jobs: VecDeque<Job>) {
        if jobs.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for job in jobs.into_iter().rev() {
            inner.rows += job.rows.unwrap_or(1);
            inner.jobs.push_front(job);
        }
        let wake_idle = self
            .wake_for_jobs(&inner)
            .then(|| inner.wake_one())
            .flatten();
        drop(inner);
        if let Some(waker) = wake_idle {
            waker.notify_one();
        }
    }

    /// Stops the workers once the queue is empty.
    pub(crate) fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        let wakers = inner.wakers.clone();
        drop(inner);
        for waker in wakers {
            waker.notify_all();
        }
        self.gather_wake.notify_all();
    }

    /// The next job for worker `id`; `None` once closed and drained.
    fn pop(&self, id: usize) -> Option<Job> {
        let mut inner = self.lock();
        loop {
            if let Some(job) = inner.jobs.pop_front() {
                inner.rows = inner.rows.saturating_sub(job.rows.unwrap_or(1));
                // Woken spuriously with a job there: no longer idle either way.
                inner.idle.retain(|&w| w != id);
                return Some(job);
            }
            if inner.closed {
                inner.idle.retain(|&w| w != id);
                return None;
            }
            if !inner.idle.contains(&id) {
                inner.idle.push(id);
            }
            let waker = inner.wakers.get(id).cloned()?;
            inner = waker
                .wait(inner)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Everything queued, waiting (up to `deadline`) while more requests are on their way and
    /// fewer than `need` rows are queued.
    fn gather(&self, deadline: Instant, need: usize) -> Gathered {
        let mut inner = self.lock();
        loop {
            let pending = self.pending.load(Ordering::Acquire);
            let now = Instant::now();
            if !inner.jobs.is_empty() && (inner.rows >= need || pending == 0 || now >= deadline) {
                return Gathered::Jobs(inner.take_all());
            }
            if inner.closed || now >= deadline || pending == 0 {
                return if inner.jobs.is_empty() {
                    Gathered::Done
                } else {
                    Gathered::Jobs(inner.take_all())
                };
            }
            inner.gathering.push(need);
            inner = self
                .gather_wake
                .wait_timeout(inner, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
            if let Some(i) = inner.gathering.iter().position(|&n| n == need) {
                inner.gathering.swap_remove(i);
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Batching {
    pub max_rows: usize,
    pub max_delay: Duration,
}

/// A variant's sessions and the queue in front of them, shared by its worker threads and by
/// the request handlers that run light batches themselves.
pub(crate) struct Engine {
    pub queue: Arc<JobQueue>,
    /// One per instance; a worker thread or a leader holds one while it runs.
    sessions: Vec<Mutex<Session>>,
    signature: Arc<Signature>,
    batching: Option<Batching>,
    /// Set once a merged run's outputs could not be split by rows: batching is off from then on.
    unbatched: AtomicBool,
    metrics: VariantMetrics,
    stats: Arc<ModelStats>,
    /// `model 'm' variant 'v'`, for the log.
    label: String,
}

pub(crate) enum RunError {
    /// The merged run worked but its outputs do not have one row per input row.
    NotPerRow(String),
    Failed(String),
}

/// A session's lock, or `None` while someone runs on it. A panic during a run leaves the
/// session as ONNX Runtime left it, which is fit to run again.
fn try_lock(session: &Mutex<Session>) -> Option<MutexGuard<'_, Session>> {
    match session.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

impl Engine {
    pub(crate) fn new(
        sessions: Vec<Session>,
        signature: Arc<Signature>,
        batching: Option<Batching>,
        metrics: VariantMetrics,
        stats: Arc<ModelStats>,
        label: String,
    ) -> Engine {
        let queue = Arc::new(JobQueue::new());
        for _ in &sessions {
            queue.register();
        }
        Engine {
            queue,
            sessions: sessions.into_iter().map(Mutex::new).collect(),
            signature,
            batching,
            unbatched: AtomicBool::new(false),
            metrics,
            stats,
            label,
        }
    }

    pub(crate) fn instances(&self) -> usize {
        self.sessions.len()
    }

    fn batching(&self) -> Option<Batching> {
        self.batching
            .filter(|_| !self.unbatched.load(Ordering::Relaxed))
    }

    /// An instance no one is running on, the first free from `from` on (wrapping), locked.
    fn free_session(&self, from: usize) -> Option<(usize, MutexGuard<'_, Session>)> {
        (from..self.sessions.len())
            .chain(0..from)
            .find_map(|i| try_lock(&self.sessions[i]).map(|s| (i, s)))
    }

    /// The worker thread of instance `id`, to the queue's close.
    pub(crate) fn work(&self, id: usize) {
        while let Some(batch) = self.next_batch(id) {
            // Its own session unless a leader has it; then any free one, or its own once free.
            let (instance, mut session) = self.free_session(id).unwrap_or_else(|| {
                let session = self.sessions[id]
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                (id, session)
            });
            self.run(instance, &mut session, batch);
        }
    }

    /// Runs what is queued on the calling thread, on an instance no one is using, until
    /// `answered` (the caller's own job is done) or its job is in other hands: taken by a worker
    /// or another leader, or left for a worker woken because every instance is in use. Called
    /// by the handler whose [`JobQueue::push`] said so, after letting its thread receive the
    /// other requests it can.
    pub(crate) fn lead(&self, answered: impl Fn() -> bool) {
        while !answered() {
            let Some((instance, mut session)) = self.free_session(0) else {
                self.queue.wake_worker();
                return;
            };
            let batch = self.queue.take_lead(self.batching());
            if batch.is_empty() {
                return;
            }
            self.run(instance, &mut session, batch);
        }
    }

    /// Runs jobs taken off the queue on `instance`.
    fn run(&self, instance: usize, session: &mut Session, mut batch: Vec<Job>) {
        self.metrics.queue_depth.dec_by(batch.len() as i64);
        // A job whose client has gone (timed out) is not worth running.
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        self.queue.run_started(instance);
        self.metrics.busy.inc();
        self.execute(session, batch);
        self.metrics.busy.dec();
        self.queue.run_ended(instance, started.elapsed());
    }

    /// The next jobs to run together. While a batch is gathered, a request on its way (being
    /// received or parsed) is waited for up to the delay; when none is, waiting would only add
    /// latency, so the batch runs at once. Jobs taken that do not fit go back to the queue for
    /// the next worker free (this one, or another instance).
    fn next_batch(&self, id: usize) -> Option<Vec<Job>> {
        let first = self.queue.pop(id)?;
        let (Some(batching), Some(mut rows)) = (self.batching(), first.rows) else {
            return Some(vec![first]);
        };
        let deadline = first.enqueued + batching.max_delay;
        let mut batch = vec![first];
        let mut left = VecDeque::new();
        let fits = |batch: &[Job], job: &Job, rows: usize| {
            job.rows
                .filter(|r| rows + r <= batching.max_rows && batch[0].compatible(job))
        };
        'gather: while rows < batching.max_rows {
            let Gathered::Jobs(jobs) = self.queue.gather(deadline, batching.max_rows - rows) else {
                break;
            };
            let mut full = false;
            for job in jobs {
                if full {
                    left.push_back(job);
                    continue;
                }
                match fits(&batch, &job, rows) {
                    Some(r) => {
                        rows += r;
                        batch.push(job);
                        full = rows >= batching.max_rows;
                    }
                    None => {
                        // Too big for what is left of this batch: it starts the next one.
                        full = job.rows.is_some() && batch[0].compatible(&job);
                        left.push_back(job);
                    }
                }
            }
            if full {
                break 'gather;
            }
        }
        self.queue.requeue(left);
        Some(batch)
    }

    fn execute(&self, session: &mut Session, batch: Vec<Job>) {
        if batch.len() == 1 || self.batching().is_none() {
            for job in batch {
                self.run_alone(session, job);
            }
            return;
        }
        let started = Instant::now();
        match self.run_merged(session, &batch) {
            Ok((results, run)) => {
                let requests: Vec<(usize, Duration)> = batch
                    .iter()
                    .map(|job| {
                        (
                            job.row_count(),
                            started.saturating_duration_since(job.enqueued),
                        )
                    })
                    .collect();
                self.stats.executed(&run, &requests);
                for (job, result) in batch.into_iter().zip(results) {
                    // The client may have gone meanwhile; nothing to do then.
                    let _ = job.reply.send(Ok(result));
                }
            }
            Err(RunError::NotPerRow(reason)) => {
                if !self.unbatched.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "ferry serve-model: {}: batching turned off: {reason}",
                        self.label
                    );
                }
                for job in batch {
                    self.run_alone(session, job);
                }
            }
            Err(RunError::Failed(message)) => {
                for job in batch {
                    let _ = job.reply.send(Err(message.clone()));
                }
            }
        }
    }

    fn run_alone(&self, session: &mut Session, mut job: Job) {
        let started = Instant::now();
        let rows = job.row_count();
        let inputs = std::mem::take(&mut job.inputs);
        let outputs = std::mem::take(&mut job.outputs);
        let result = self.infer(session, inputs, rows, Duration::ZERO, |views| {
            Ok(vec![
                outputs
                    .iter()
                    .map(|&o| {
                        let (shape, view) = &views[o];
                        let tensor = HostTensor {
                            shape: shape.clone(),
                            data: view.copy(0..shape.iter().product()),
                        };
                        (o, tensor)
                    })
                    .collect(),
            ])
        });
        let result = match result {
            Ok((mut results, run)) => {
                self.stats.executed(
                    &run,
                    &[(rows, started.saturating_duration_since(job.enqueued))],
                );
                results.pop().ok_or_else(|| "no outputs".to_string())
            }
            Err(RunError::NotPerRow(reason) | RunError::Failed(reason)) => Err(reason),
        };
        let _ = job.reply.send(result);
    }

    /// Runs the jobs as one batch; the per-job outputs in job order, and the run's timing.
    fn run_merged(
        &self,
        session: &mut Session,
        batch: &[Job],
    ) -> Result<(Vec<Outputs>, Execution), RunError> {
        let merging = Instant::now();
        let rows: Vec<usize> = batch.iter().map(|j| j.rows.unwrap_or(0)).collect();
        let total: usize = rows.iter().sum();
        let inputs: Vec<&[HostTensor]> = batch.iter().map(|j| j.inputs.as_slice()).collect();
        let wanted: Vec<&[usize]> = batch.iter().map(|j| j.outputs.as_slice()).collect();
        let merged = merge_inputs(&inputs, &rows).map_err(RunError::Failed)?;
        self.infer(session, merged, total, merging.elapsed(), |views| {
            split_outputs(views, &rows, &wanted)
        })
    }

    /// Runs the session and hands all outputs to `split` while ONNX Runtime still owns them,
    /// so each job copies only its own slice. `merged` is the time it took to make `inputs`,
    /// counted with their preparation.
    fn infer<T>(
        &self,
        session: &mut Session,
        inputs: Vec<HostTensor>,
        rows: usize,
        merged: Duration,
        split: impl FnOnce(&[(Vec<usize>, OutputView<'_>)]) -> Result<T, RunError>,
    ) -> Result<(T, Execution), RunError> {
        let preparing = Instant::now();
        let values = inputs
            .into_iter()
            .map(|t| t.data.into_ort(&t.shape).map(SessionInputValue::from))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RunError::Failed(format!("preparing inputs: {e}")))?;
        let started = Instant::now();
        let outputs = session
            .run(values.as_slice())
            .map_err(|e| RunError::Failed(format!("inference failed: {e}")))?;
        let ran = Instant::now();
        self.metrics
            .inference_duration
            .observe((ran - started).as_secs_f64());
        self.metrics.batch_size.observe(rows as f64);
        let mut views = Vec::with_capacity(self.signature.outputs.len());
        for spec in &self.signature.outputs {
            let value = outputs.get(&spec.name).ok_or_else(|| {
                RunError::Failed(format!("ONNX Runtime returned no output '{}'", spec.name))
            })?;
            let view = OutputView::new(value)
                .map_err(|e| RunError::Failed(format!("output '{}': {e}", spec.name)))?;
            views.push(view);
        }
        let split = split(&views)?;
        let run = Execution {
            compute_input: merged + (started - preparing),
            compute_infer: ran - started,
            compute_output: ran.elapsed(),
        };
        Ok((split, run))
    }
}

/// Concatenates the jobs' inputs (`inputs[j]` is job `j`'s, in the session's order, with
/// `rows[j]` rows) along the first axis into one batch.
pub(crate) fn merge_inputs(
    inputs: &[&[HostTensor]],
    rows: &[usize],
) -> Result<Vec<HostTensor>, String> {
    let Some(first_job) = inputs.first() else {
        return Ok(Vec::new());
    };
    let total: usize = rows.iter().sum();
    let first_rows = rows.first().copied().unwrap_or(0).max(1);
    let mut merged = Vec::with_capacity(first_job.len());
    for (i, first) in first_job.iter().enumerate() {
        let mut data =
            TensorData::with_capacity(first.data.datatype(), first.data.len() / first_rows * total);
        for job in inputs {
            // Compatible jobs have the same inputs; anything else is refused, not indexed.
            let tensor = job
                .get(i)
                .ok_or_else(|| format!("a merged job lacks input {i}"))?;
            data.extend_from(&tensor.data).map_err(|e| e.to_string())?;
        }
        let mut shape = first.shape.clone();
        let Some(batch_axis) = shape.first_mut() else {
            return Err(format!("input {i} is a scalar, which cannot be batched"));
        };
        *batch_axis = total;
        merged.push(HostTensor { shape, data });
    }
    Ok(merged)
}

/// Splits the outputs of a merged run back by rows: for job `j` (`rows[j]` rows), the outputs
/// `wanted[j]` in that order. Outputs without one row per input row cannot be split
/// ([`RunError::NotPerRow`]).
pub(crate) fn split_outputs(
    views: &[(Vec<usize>, OutputView<'_>)],
    rows: &[usize],
    wanted: &[&[usize]],
) -> Result<Vec<Outputs>, RunError> {
    let total: usize = rows.iter().sum();
    if let Some((shape, _)) = views
        .iter()
        .find(|(shape, _)| shape.first() != Some(&total))
    {
        return Err(RunError::NotPerRow(format!(
            "a merged run of {total} rows returned an output of shape {shape:?}, so its rows cannot be split back"
        )));
    }
    let mut offset = 0;
    let mut results = Vec::with_capacity(rows.len());
    for (outputs, &n) in wanted.iter().zip(rows) {
        let mut part = Vec::with_capacity(outputs.len());
        for &o in *outputs {
            let (shape, view) = views
                .get(o)
                .ok_or_else(|| RunError::Failed(format!("the model has no output {o}")))?;
            // The first dimension is `total` (checked above), so the view holds every row.
            let row_len: usize = shape[1..].iter().product();
            let mut part_shape = shape.clone();
            part_shape[0] = n;
            let tensor = HostTensor {
                shape: part_shape,
                data: view.copy(offset * row_len..(offset + n) * row_len),
            };
            part.push((o, tensor));
        }
        results.push(part);
        offset += n;
    }
    Ok(results)
}

/// Admission to a worker's queue; the counterpart of [`Worker::run`]'s accounting.
pub(crate) fn queue_full(metrics: &VariantMetrics, max_queue: usize) -> bool {
    let before = metrics.queue_depth.inc();
    if before >= max_queue as i64 {
        metrics.queue_depth.dec();
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::tensor::TensorData;

    fn job(rows: usize) -> (Job, oneshot::Receiver<JobResult>) {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            inputs: vec![HostTensor {
                shape: vec![rows, 2],
                data: TensorData::Fp32(vec![0.0; rows * 2]),
            }],
            rows: Some(rows),
            outputs: vec![0],
            reply,
            enqueued: Instant::now(),
        };
        (job, answer)
    }

    #[test]
    fn gathering_stops_at_once_when_nothing_is_on_its_way() {
        let queue = JobQueue::new();
        queue.push(job(1).0, false);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(5);
        match queue.gather(deadline, 10) {
            Gathered::Jobs(jobs) => assert_eq!(jobs.len(), 1),
            Gathered::Done => panic!("the queued job must be taken"),
        }
        assert!(matches!(queue.gather(deadline, 10), Gathered::Done));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn gathering_waits_for_pending_requests_until_the_deadline() {
        let queue = Arc::new(JobQueue::new());
        queue.start_pending();
        let started = Instant::now();
        assert!(matches!(
            queue.gather(started + Duration::from_millis(50), 10),
            Gathered::Done
        ));
        assert!(started.elapsed() >= Duration::from_millis(50));

        // The pending request arrives: the gatherer is woken before its deadline.
        let producer = {
            let queue = queue.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                queue.end_pending();
                queue.push(job(3).0, false);
            })
        };
        let started = Instant::now();
        let deadline = started + Duration::from_secs(5);
        let mut jobs = Vec::new();
        while jobs.is_empty() && Instant::now() < deadline {
            match queue.gather(deadline, 10) {
                Gathered::Jobs(j) => jobs = j,
                // The pending count ended a moment before the job was queued: nothing was on
                // its way then. The worker goes idle, and the push wakes it (as here, again).
                Gathered::Done => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        assert_eq!(jobs.len(), 1, "the job pushed meanwhile must be gathered");
        assert!(started.elapsed() < Duration::from_secs(2));
        producer.join().unwrap();
    }

    #[test]
    fn only_jobs_with_the_same_inner_dimensions_merge() {
        let (a, _) = job(2);
        let (b, _) = job(5);
        assert!(a.compatible(&b));
        let (mut c, _) = job(2);
        c.inputs[0].shape = vec![2, 3];
        assert!(!a.compatible(&c));
    }

    #[test]
    fn jobs_are_left_to_the_handlers_only_once_runs_are_known_to_be_light() {
        let queue = JobQueue::new();
        queue.register();
        // Nothing run yet: the workers take the first jobs, whatever the caller may do.
        assert!(!queue.push(job(1).0, true));
        queue.run_ended(0, Duration::from_micros(10));
        assert!(queue.push(job(1).0, true));
        // Never for a caller that may not lead, nor for a job of many rows.
        assert!(!queue.push(job(1).0, false));
        assert!(!queue.push(job(INLINE_ROWS + 1).0, true));
        // One run the thread was preempted in does not make the model heavy.
        queue.run_ended(0, Duration::from_millis(5));
        assert!(queue.push(job(1).0, true));
        // Runs grown long: back to the workers.
        for _ in 0..64 {
            queue.run_ended(0, Duration::from_millis(1));
        }
        assert!(!queue.push(job(1).0, true));
    }

    #[test]
    fn a_leader_takes_the_jobs_that_merge_with_the_first_in_order() {
        let queue = JobQueue::new();
        let batching = Batching {
            max_rows: 8,
            max_delay: Duration::from_millis(1),
        };
        let (mut other, _) = job(1);
        other.inputs[0].shape = vec![1, 3];
        for job in [job(2).0, job(3).0, other, job(1).0] {
            queue.push(job, false);
        }
        // The job of other dimensions ends the batch; what follows it waits its turn.
        let taken = queue.take_lead(Some(batching));
        assert_eq!(
            taken.iter().map(|j| j.row_count()).collect::<Vec<_>>(),
            [2, 3]
        );
        assert_eq!(queue.take_lead(Some(batching)).len(), 1);
        assert_eq!(queue.take_lead(Some(batching)).len(), 1);
        assert!(queue.take_lead(Some(batching)).is_empty());

        // Rows beyond the batch's size stay queued.
        for rows in [5, 3, 1] {
            queue.push(job(rows).0, false);
        }
        assert_eq!(queue.take_lead(Some(batching)).len(), 2);
        assert_eq!(queue.lock().rows, 1);

        // Without batching, jobs are taken one by one up to LEAD_JOBS.
        for _ in 0..LEAD_JOBS + 2 {
            queue.push(job(1).0, false);
        }
        assert_eq!(queue.take_lead(None).len(), LEAD_JOBS);
    }

    #[test]
    fn a_leader_finding_every_instance_in_use_wakes_an_idle_worker() {
        let queue = JobQueue::new();
        let id = queue.register();
        queue.run_ended(id, Duration::from_micros(10));
        // As a worker waiting in `pop` leaves it; waking takes it off the idle stack.
        queue.lock().idle.push(id);
        assert!(queue.push(job(4).0, true));
        assert_eq!(
            queue.lock().idle,
            [id],
            "a job left to its handler woke a worker"
        );
        queue.wake_worker();
        assert!(queue.lock().idle.is_empty(), "no worker was woken");
        assert_eq!(queue.pop(id).map(|j| j.row_count()), Some(4));
    }

    #[test]
    fn closed_queue_is_drained_then_ends() {
        let queue = JobQueue::new();
        let id = queue.register();
        queue.push(job(1).0, false);
        queue.close();
        assert!(queue.pop(id).is_some());
        assert!(queue.pop(id).is_none());
    }
}

//! The traffic log: requests, their answers and their shadows' answers as JSON lines, written by
//! one thread behind a bounded queue so that logging never slows or fails a request.
//!
//! A request thread hands over an owned [`Record`] and goes on: turning tensors into JSON, the
//! writes and the rotation all happen on the writer thread. When the queue is full the record is
//! dropped and counted; when the disk fails, logging stops (one warning) and serving goes on.
//! `ferry replay` reads these files back.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::compare::{self, Comparison, Tolerance};
use super::model::HostTensor;
use super::tensor::{DataType, TensorData};

/// Where and how much to log.
#[derive(Clone, Debug, PartialEq)]
pub struct LogConfig {
    /// The log file (its directory is created); `None` writes to stdout.
    pub path: Option<PathBuf>,
    /// Bytes a file may reach before it is rotated (a record longer than that gets a file of
    /// its own: lines are never split).
    pub max_size: u64,
    /// Rotated files kept beside the current one: `PATH.1` (the newest) to `PATH.<keep>`.
    pub keep: usize,
    /// Records waiting for the writer; more are dropped.
    pub queue: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            path: None,
            max_size: 100 * 1024 * 1024,
            keep: 3,
            queue: 4096,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrafficLogError {
    #[error("traffic log {}: cannot create its directory {}: {source}", path.display(), dir.display())]
    Directory {
        path: PathBuf,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("traffic log {}: cannot open it for writing: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("traffic log: the queue must hold at least one record (queue: 0)")]
    NoQueue,
    #[error("traffic log: cannot start its writer thread: {0}")]
    Thread(#[source] io::Error),
}

/// The final counts of a closed log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LogCounts {
    pub written: u64,
    pub dropped: u64,
    pub failed: u64,
}

/// How long closing waits for the writer to write what is queued: a hung disk must not hang
/// the server's shutdown.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Buffered bytes that are written out even while more records wait.
const FLUSH_AT: usize = 256 * 1024;

/// A running traffic log. Dropping it (or [`TrafficLog::close`]) writes what is queued, waiting
/// at most a few seconds.
pub struct TrafficLog {
    sender: Option<SyncSender<Record>>,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

/// What the request threads and the writer share.
struct Shared {
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    /// A write failed: from then on records are counted as failed, never queued.
    broken: AtomicBool,
    /// The writer thread has ended (set even if it panicked).
    finished: Mutex<bool>,
    finished_cv: Condvar,
}

impl TrafficLog {
    /// Opens the log (creating its directory) and starts the writer thread.
    pub fn start(config: LogConfig) -> Result<TrafficLog, TrafficLogError> {
        if config.queue == 0 {
            return Err(TrafficLogError::NoQueue);
        }
        let output = match &config.path {
            Some(path) => Output::File(LogFile::open(path, config.max_size, config.keep)?),
            None => Output::Stream {
                out: Box::new(io::stdout()),
                name: "stdout".into(),
            },
        };
        TrafficLog::spawn(output, config.queue)
    }

    fn spawn(output: Output, queue: usize) -> Result<TrafficLog, TrafficLogError> {
        let (sender, receiver) = sync_channel(queue);
        let shared = Arc::new(Shared {
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            broken: AtomicBool::new(false),
            finished: Mutex::new(false),
            finished_cv: Condvar::new(),
        });
        let writer = Writer {
            output,
            shared: shared.clone(),
            buffer: Vec::with_capacity(FLUSH_AT),
            pending: 0,
        };
        let handle = std::thread::Builder::new()
            .name("ferry-traffic-log".into())
            .spawn(move || writer.run(receiver))
            .map_err(TrafficLogError::Thread)?;
        Ok(TrafficLog {
            sender: Some(sender),
            shared,
            writer: Some(handle),
        })
    }

    /// Queues `record` for writing; never blocks. A full queue drops it (counted in
    /// [`dropped`](Self::dropped)); after a write error it only counts it as failed.
    pub fn submit(&self, record: Record) {
        let shared = &self.shared;
        if shared.broken.load(Ordering::Relaxed) {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(sender) = &self.sender else {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match sender.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records written to the log (and flushed).
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Records lost because writing failed.
    pub fn failed(&self) -> u64 {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Whether a write failed and logging stopped.
    pub fn is_broken(&self) -> bool {
        self.shared.broken.load(Ordering::Relaxed)
    }

    /// Writes what is queued (waiting at most a few seconds) and returns the final counts.
    pub fn close(mut self) -> LogCounts {
        self.shut();
        LogCounts {
            written: self.written(),
            dropped: self.dropped(),
            failed: self.failed(),
        }
    }

    fn shut(&mut self) {
        // The writer ends once the queue is empty and no sender is left.
        drop(self.sender.take());
        let Some(handle) = self.writer.take() else {
            return;
        };
        let finished = self
            .shared
            .finished
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (finished, _) = self
            .shared
            .finished_cv
            .wait_timeout_while(finished, CLOSE_WAIT, |done| !*done)
            .unwrap_or_else(|e| e.into_inner());
        if *finished {
            drop(finished);
            let _ = handle.join();
        } else {
            eprintln!(
                "ferry serve-model: traffic log: the writer did not finish within {}s; records still queued are lost",
                CLOSE_WAIT.as_secs()
            );
        }
    }
}

impl Drop for TrafficLog {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Whether to log one request at sampling `rate` (0 to 1): at or above 1 always, at or below 0
/// (or NaN) never.
pub fn sampled(rate: f64) -> bool {
    if rate >= 1.0 {
        true
    } else if rate > 0.0 {
        rand::random::<f64>() < rate
    } else {
        false
    }
}

/// Where the writer writes.
enum Output {
    File(LogFile),
    /// Stdout (no rotation), or a test's stream.
    Stream {
        out: Box<dyn Write + Send>,
        name: String,
    },
}

impl Output {
    fn name(&self) -> String {
        match self {
            Output::File(f) => f.path.display().to_string(),
            Output::Stream { name, .. } => name.clone(),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Output::File(f) => {
                f.file.write_all(bytes)?;
                f.file.flush()
            }
            Output::Stream { out, .. } => {
                out.write_all(bytes)?;
                out.flush()
            }
        }
    }
}

struct LogFile {
    path: PathBuf,
    file: File,
    /// Bytes in the file, plus those buffered for it.
    size: u64,
    max_size: u64,
    keep: usize,
}

impl LogFile {
    fn open(path: &Path, max_size: u64, keep: usize) -> Result<LogFile, TrafficLogError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| TrafficLogError::Directory {
                path: path.to_path_buf(),
                dir: dir.to_path_buf(),
                source,
            })?;
        }
        let file = append(path).map_err(|source| TrafficLogError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            size,
            max_size,
            keep,
        })
    }

    /// `PATH` becomes `PATH.1`, `PATH.1` becomes `PATH.2`, … and the oldest goes; a new `PATH`
    /// is started.
    fn rotate(&mut self) -> io::Result<()> {
        let numbered = |i: usize| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{i}"));
            PathBuf::from(name)
        };
        if self.keep == 0 {
            ignore_missing(std::fs::remove_file(&self.path))?;
        } else {
            ignore_missing(std::fs::remove_file(numbered(self.keep)))?;
            for i in (1..self.keep).rev() {
                ignore_missing(std::fs::rename(numbered(i), numbered(i + 1)))?;
            }
            // Gone already (moved by another rotator): a new file is started all the same.
            ignore_missing(std::fs::rename(&self.path, numbered(1)))?;
        }
        self.file = append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn ignore_missing(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

struct Writer {
    output: Output,
    shared: Arc<Shared>,
    /// Whole lines not yet written.
    buffer: Vec<u8>,
    /// Records in `buffer`.
    pending: u64,
}

/// Marks the writer finished when it ends, however it ends.
struct Finished<'a>(&'a Shared);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        let mut finished = self.0.finished.lock().unwrap_or_else(|e| e.into_inner());
        *finished = true;
        self.0.finished_cv.notify_all();
    }
}

impl Writer {
    fn run(mut self, receiver: Receiver<Record>) {
        let shared = self.shared.clone();
        let _finished = Finished(&shared);
        // A record, then whatever else is already queued, then a flush: a reader of the file
        // sees each record as soon as the queue is momentarily empty.
        while let Ok(record) = receiver.recv() {
            self.take(record);
            while let Ok(record) = receiver.try_recv() {
                self.take(record);
            }
            self.flush();
        }
        self.flush();
    }

    fn take(&mut self, record: Record) {
        if self.shared.broken.load(Ordering::Relaxed) {
            self.shared.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut line = match serde_json::to_vec(&record) {
            Ok(line) => line,
            Err(_) => {
                self.shared.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        line.push(b'\n');
        let len = line.len() as u64;
        if let Output::File(file) = &self.output
            && file.size > 0
            && file.size.saturating_add(len) > file.max_size
        {
            self.flush();
            let rotated = match &mut self.output {
                Output::File(file) => file.rotate(),
                Output::Stream { .. } => Ok(()),
            };
            if let Err(e) = rotated {
                self.fail(&e);
            }
            if self.shared.broken.load(Ordering::Relaxed) {
                self.shared.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if let Output::File(file) = &mut self.output {
            file.size = file.size.saturating_add(len);
        }
        self.buffer.extend_from_slice(&line);
        self.pending += 1;
        if self.buffer.len() >= FLUSH_AT {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        match self.output.write_all(&self.buffer) {
            Ok(()) => {
                self.shared
                    .written
                    .fetch_add(self.pending, Ordering::Relaxed);
            }
            Err(e) => {
                self.shared
                    .failed
                    .fetch_add(self.pending, Ordering::Relaxed);
                self.fail(&e);
            }
        }
        self.buffer.clear();
        self.pending = 0;
    }

    /// Stops logging after the first failure: one warning, no retries.
    fn fail(&mut self, error: &io::Error) {
        if !self.shared.broken.swap(true, Ordering::Relaxed) {
            eprintln!(
                "ferry serve-model: traffic log {}: {error}; logging stops, serving goes on",
                self.output.name()
            );
        }
    }
}

/// One logged request: what it sent, what the model answered, and what a shadow answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// When the request was answered (RFC 3339, UTC, milliseconds).
    #[serde(with = "rfc3339")]
    pub time: SystemTime,
    pub id: String,
    pub model: String,
    pub variant: String,
    /// The sha256 of the variant's model file.
    pub sha256: String,
    pub latency_ms: f64,
    pub inputs: Vec<LoggedTensor>,
    pub outputs: Vec<LoggedTensor>,
    pub shadow: Option<ShadowRecord>,
}

impl Record {
    /// A record of a request answered now.
    pub fn new(
        model: impl Into<String>,
        variant: impl Into<String>,
        sha256: impl Into<String>,
        id: impl Into<String>,
        latency: Duration,
        inputs: Vec<LoggedTensor>,
        outputs: Vec<LoggedTensor>,
    ) -> Record {
        Record {
            time: SystemTime::now(),
            id: id.into(),
            model: model.into(),
            variant: variant.into(),
            sha256: sha256.into(),
            latency_ms: millis(latency),
            inputs,
            outputs,
            shadow: None,
        }
    }

    pub fn with_shadow(mut self, shadow: ShadowRecord) -> Record {
        self.shadow = Some(shadow);
        self
    }
}

/// What a shadow variant answered to the same request, and how it agreed with the model's
/// answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShadowRecord {
    pub variant: String,
    pub sha256: String,
    pub latency_ms: f64,
    /// Empty when the shadow failed.
    pub outputs: Vec<LoggedTensor>,
    pub error: Option<String>,
    /// `None` when the shadow failed.
    pub agreement: Option<Comparison>,
}

impl ShadowRecord {
    /// The shadow's answer (or why it has none), compared with the model's `primary` outputs.
    pub fn new(
        variant: impl Into<String>,
        sha256: impl Into<String>,
        latency: Duration,
        answer: Result<Vec<LoggedTensor>, String>,
        primary: &[LoggedTensor],
        tolerance: Tolerance,
    ) -> ShadowRecord {
        let (outputs, error, agreement) = match answer {
            Ok(outputs) => {
                let agreement = compare::compare(primary, &outputs, tolerance);
                (outputs, None, Some(agreement))
            }
            Err(e) => (Vec::new(), Some(e), None),
        };
        ShadowRecord {
            variant: variant.into(),
            sha256: sha256.into(),
            latency_ms: millis(latency),
            outputs,
            error,
            agreement,
        }
    }
}

/// Milliseconds to the microsecond: finer is noise, and lines stay short.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// A named tensor as logged: `{"name", "datatype", "shape", "data"}`, the form of an `infer`
/// request's inputs, with the data flat in row-major order.
#[derive(Clone, Debug, PartialEq)]
pub struct LoggedTensor {
    name: String,
    shape: Vec<usize>,
    data: TensorData,
}

impl LoggedTensor {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The Open Inference Protocol datatype: `FP32`, `INT64`, `BYTES`, …
    pub fn datatype(&self) -> &'static str {
        self.data.datatype().name()
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.len() == 0
    }

    pub(crate) fn data(&self) -> &TensorData {
        &self.data
    }
}

/// A request's input or a model's output, as the server holds it.
impl From<(String, HostTensor)> for LoggedTensor {
    fn from((name, tensor): (String, HostTensor)) -> LoggedTensor {
        LoggedTensor {
            name,
            shape: tensor.shape,
            data: tensor.data,
        }
    }
}

impl From<LoggedTensor> for HostTensor {
    fn from(tensor: LoggedTensor) -> HostTensor {
        HostTensor {
            shape: tensor.shape,
            data: tensor.data,
        }
    }
}

impl Serialize for LoggedTensor {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("LoggedTensor", 4)?;
        s.serialize_field("name", &self.name)?;
        s.serialize_field("datatype", self.datatype())?;
        s.serialize_field("shape", &self.shape)?;
        s.serialize_field("data", &LoggedData(&self.data))?;
        s.end()
    }
}

impl<'de> Deserialize<'de> for LoggedTensor {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            name: String,
            datatype: String,
            shape: Vec<usize>,
            data: serde_json::Value,
        }
        let Raw {
            name,
            datatype,
            shape,
            data,
        } = Raw::deserialize(deserializer)?;
        let fail =
            |message: String| serde::de::Error::custom(format!("tensor '{name}': {message}"));
        let datatype = DataType::from_name(&datatype).ok_or_else(|| {
            let known: Vec<&str> = DataType::ALL.iter().map(|d| d.name()).collect();
            fail(format!(
                "unknown datatype \"{datatype}\" (expected one of {})",
                known.join(", ")
            ))
        })?;
        let data = super::parse::logged_data(datatype, &shape, data).map_err(fail)?;
        Ok(LoggedTensor { name, shape, data })
    }
}

/// Tensor data as a flat JSON array; non-finite floats as the strings `"NaN"`, `"Infinity"`,
/// `"-Infinity"` (JSON numbers cannot say them, and `null` would not say which).
struct LoggedData<'a>(&'a TensorData);

impl Serialize for LoggedData<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            TensorData::Fp16(v) => serializer.collect_seq(v.iter().map(|x| Float::F32(x.to_f32()))),
            TensorData::Fp32(v) => serializer.collect_seq(v.iter().map(|&x| Float::F32(x))),
            TensorData::Fp64(v) => serializer.collect_seq(v.iter().map(|&x| Float::F64(x))),
            other => other.serialize(serializer),
        }
    }
}

enum Float {
    F32(f32),
    F64(f64),
}

impl Serialize for Float {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Each width in its own shortest form, so that values read back are the same bits.
        let wide = match *self {
            Float::F32(x) if x.is_finite() => return serializer.serialize_f32(x),
            Float::F64(x) if x.is_finite() => return serializer.serialize_f64(x),
            Float::F32(x) => f64::from(x),
            Float::F64(x) => x,
        };
        serializer.serialize_str(compare::non_finite_name(wide))
    }
}

/// `time` as RFC 3339 in UTC with milliseconds: `2026-12-04T15:36:17.123Z`.
mod rfc3339 {
    use super::*;

    pub(super) fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_time(*time))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        parse_time(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "time {text:?} is not an RFC 3339 UTC time such as 2026-12-04T15:36:17.123Z"
            ))
        })
    }
}

/// RFC 3339 in UTC with milliseconds; times before 1970 are written as 1970's first instant.
pub fn format_time(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let (year, month, day) = civil_from_days(days);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_millis()
    )
}

/// Reads `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (the form [`format_time`] writes, any fraction); times
/// before 1970 are not read.
pub fn parse_time(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<u64> {
        let part = b.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        part.iter().try_fold(0u64, |n, &c| {
            n.checked_mul(10)?.checked_add(u64::from(c - b'0'))
        })
    };
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if separators
        .iter()
        .any(|&(i, c)| !b.get(i).is_some_and(|x| x.eq_ignore_ascii_case(&c)))
    {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let rest = &text[19..];
    let (fraction, zone) = match rest.strip_prefix('.') {
        Some(after) => {
            let n = after.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 {
                return None;
            }
            (&after[..n], &after[n..])
        }
        None => ("", rest),
    };
    if !zone.eq_ignore_ascii_case("z") {
        return None;
    }
    let nanos = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(9)
        .fold(0u32, |n, c| n * 10 + u32::from(c - b'0'));
    let days = days_from_civil(year as i64, month as u32, day as u32);
    let days = u64::try_from(days).ok()?;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The civil date (proleptic Gregorian) of a day counted from 1970-01-01: Howard Hinnant's
/// `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days from 1970-01-01 to a civil date: the inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn tensor(name: &str, shape: &[usize], data: TensorData) -> LoggedTensor {
        LoggedTensor::from((
            name.to_string(),
            HostTensor {
                shape: shape.to_vec(),
                data,
            },
        ))
    }

    fn record(id: usize) -> Record {
        Record::new(
            "churn",
            "default",
            "ab".repeat(32),
            format!("req-{id}"),
            Duration::from_micros(1234),
            vec![tensor(
                "x",
                &[1, 3],
                TensorData::Fp32(vec![1.5, -2.0, id as f32]),
            )],
            vec![tensor("p", &[1, 2], TensorData::Fp32(vec![0.25, 0.75]))],
        )
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn dates_are_civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_791), (2026, 12, 4));
        for days in [-800_000, -1, 0, 59, 10_956, 11_016, 20_791, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        let t = UNIX_EPOCH + Duration::from_millis(1_796_398_577_123);
        assert_eq!(format_time(t), "2026-12-04T15:36:17.123Z");
        assert_eq!(parse_time("2026-12-04T15:36:17.123Z"), Some(t));
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            parse_time("2000-02-29T23:59:59Z"),
            Some(UNIX_EPOCH + Duration::from_secs(951_868_799))
        );
        assert_eq!(
            parse_time("2026-12-04T15:36:17.5Z"),
            Some(UNIX_EPOCH + Duration::from_millis(1_796_398_577_500))
        );
        for bad in [
            "",
            "2026-12-04",
            "2026-12-04T15:36:17",
            "2026-12-04T15:36:17+01:00",
            "2026-13-04T15:36:17Z",
            "2026-02-29T15:36:17Z",
            "2026-12-04T24:00:00Z",
            "2026-12-04T15:36:17.Z",
            "20a6-12-04T15:36:17Z",
            "2026-12-04T15:36:17.123Zjunk",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn sampling_follows_the_rate() {
        assert!((0..1000).all(|_| sampled(1.0)));
        assert!((0..1000).all(|_| sampled(7.0)));
        assert!((0..1000).all(|_| !sampled(0.0)));
        assert!((0..1000).all(|_| !sampled(-1.0)));
        assert!((0..1000).all(|_| !sampled(f64::NAN)));
        let hits = (0..10_000).filter(|_| sampled(0.25)).count();
        assert!((2000..3000).contains(&hits), "{hits}");
    }

    #[test]
    fn records_are_written_as_lines_that_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/traffic.jsonl");
        let log = TrafficLog::start(LogConfig {
            path: Some(path.clone()),
            ..LogConfig::default()
        })
        .unwrap();
        let odd = Record::new(
            "churn",
            "b",
            "cd".repeat(32),
            "odd",
            Duration::from_millis(2),
            vec![
                tensor(
                    "s",
                    &[2],
                    TensorData::Bytes(vec!["a \"b\"\n".into(), "é".into()]),
                ),
                tensor("n", &[2, 1], TensorData::Int64(vec![i64::MIN, i64::MAX])),
                tensor("f", &[], TensorData::Bool(vec![true])),
            ],
            vec![
                tensor(
                    "p",
                    &[1, 4],
                    TensorData::Fp32(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.1]),
                ),
                tensor("d", &[1, 1], TensorData::Fp64(vec![0.1])),
                tensor(
                    "h",
                    &[1, 1],
                    TensorData::Fp16(vec![half::f16::from_f32(0.5)]),
                ),
            ],
        );
        let primary = odd.outputs.clone();
        let shadowed = record(1).with_shadow(ShadowRecord::new(
            "b",
            "ef".repeat(32),
            Duration::from_micros(2500),
            Ok(vec![tensor(
                "p",
                &[1, 2],
                TensorData::Fp32(vec![0.75, 0.25]),
            )]),
            &record(1).outputs,
            Tolerance::default(),
        ));
        let failed_shadow = record(2).with_shadow(ShadowRecord::new(
            "b",
            "ef".repeat(32),
            Duration::ZERO,
            Err("inference failed: boom".into()),
            &primary,
            Tolerance::default(),
        ));
        let sent = [record(0), odd, shadowed, failed_shadow];
        for r in &sent {
            log.submit(r.clone());
        }
        let counts = log.close();
        assert_eq!(
            counts,
            LogCounts {
                written: 4,
                dropped: 0,
                failed: 0
            }
        );
        let lines = lines(&path);
        assert_eq!(lines.len(), 4);
        let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        // Exactly these fields, in this order.
        assert_eq!(first.as_object().unwrap().len(), 9);
        let line = &lines[0];
        assert!(line.starts_with("{\"time\":\""), "{line}");
        let prefix = format!(
            "Z\",\"id\":\"req-0\",\"model\":\"churn\",\"variant\":\"default\",\"sha256\":\"{}\",\"latency_ms\":1.234,\"inputs\":[",
            "ab".repeat(32)
        );
        assert!(line.contains(&prefix), "{line}");
        assert!(line.contains("],\"outputs\":["), "{line}");
        assert!(line.ends_with("],\"shadow\":null}"), "{line}");
        assert_eq!(first["latency_ms"], 1.234);
        assert_eq!(
            first["inputs"][0],
            serde_json::json!({"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1.5, -2.0, 0.0]})
        );
        assert!(first["shadow"].is_null());
        let odd: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(
            odd["outputs"][0]["data"],
            serde_json::json!(["NaN", "Infinity", "-Infinity", 0.1])
        );
        let shadow: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
        assert_eq!(shadow["shadow"]["agreement"]["agreeing_rows"], 0);
        assert_eq!(
            shadow["shadow"]["agreement"]["outputs"][0]["top1"],
            serde_json::json!([0, 1])
        );
        assert!(shadow["shadow"]["error"].is_null());

        for (line, sent) in lines.iter().zip(&sent) {
            let back: Record = serde_json::from_str(line).unwrap();
            // Written to the millisecond.
            let ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_millis();
            assert_eq!(ms(back.time), ms(sent.time));
            let same_time = Record {
                time: sent.time,
                ..back
            };
            if sent.id == "odd" {
                // NaN is not equal to itself: compare the bits.
                let bits = |r: &Record| match r.outputs[0].data() {
                    TensorData::Fp32(v) => v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    _ => unreachable!(),
                };
                assert_eq!(bits(&same_time), bits(sent));
                assert_eq!(same_time.inputs, sent.inputs);
                assert_eq!(same_time.outputs[1..], sent.outputs[1..]);
            } else {
                // Row deltas stay in memory: the log keeps the summary.
                let mut sent = sent.clone();
                if let Some(agreement) = sent.shadow.as_mut().and_then(|s| s.agreement.as_mut()) {
                    agreement
                        .outputs
                        .iter_mut()
                        .for_each(|o| o.row_deltas.clear());
                }
                assert_eq!(same_time, sent);
            }
        }
    }

    #[test]
    fn logged_tensors_read_back_as_requests_are_read() {
        let read =
            |text: &str| serde_json::from_str::<LoggedTensor>(text).map_err(|e| e.to_string());
        let t = read(
            r#"{"name": "x", "datatype": "INT64", "shape": [2, 2], "data": [[1, 2], [3, 4]]}"#,
        )
        .unwrap();
        assert_eq!(t.data(), &TensorData::Int64(vec![1, 2, 3, 4]));
        assert_eq!(
            (t.name(), t.shape(), t.datatype(), t.len()),
            ("x", &[2, 2][..], "INT64", 4)
        );
        let t = read(
            r#"{"name": "p", "datatype": "FP64", "shape": [3], "data": ["NaN", 1.5, "-Infinity"]}"#,
        )
        .unwrap();
        let TensorData::Fp64(v) = t.data() else {
            panic!("{t:?}")
        };
        assert!(v[0].is_nan() && v[1] == 1.5 && v[2] == f64::NEG_INFINITY);
        for (text, message) in [
            (
                r#"{"name": "x", "datatype": "FP8", "shape": [1], "data": [1]}"#,
                "tensor 'x': unknown datatype \"FP8\"",
            ),
            (
                r#"{"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2]}"#,
                "tensor 'x': \"data\" has 2 elements but shape [3] needs 3",
            ),
            (
                r#"{"name": "x", "datatype": "INT64", "shape": [1], "data": ["NaN"]}"#,
                "tensor 'x': element 0 of \"data\" is the string \"NaN\", not a valid INT64 value",
            ),
            (
                r#"{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, null]}"#,
                "tensor 'x': element 1 of \"data\" is null, not a valid FP32 value",
            ),
            (
                r#"{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3]]}"#,
                "tensor 'x': nested \"data\" is ragged",
            ),
            (
                r#"{"name": "x", "datatype": "FP32", "shape": [4611686018427387904, 4], "data": []}"#,
                "tensor 'x': shape [4611686018427387904, 4] has more elements than memory can hold",
            ),
            (
                r#"{"name": "x", "datatype": "FP32", "shape": [1]}"#,
                "missing field `data`",
            ),
        ] {
            let err = read(text).unwrap_err();
            assert!(err.starts_with(message), "{text}: {err}");
        }
    }

    #[test]
    fn rotation_keeps_whole_lines_in_at_most_keep_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("traffic.jsonl");
        let line_len = serde_json::to_vec(&record(10)).unwrap().len() as u64 + 1;
        let max_size = line_len * 3 + line_len / 2;
        let log = TrafficLog::start(LogConfig {
            path: Some(path.clone()),
            max_size,
            keep: 2,
            queue: 1000,
        })
        .unwrap();
        for i in 10..30 {
            log.submit(record(i));
        }
        assert_eq!(log.close().written, 20);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["traffic.jsonl", "traffic.jsonl.1", "traffic.jsonl.2"]
        );
        // Three records fit in a file; the newest are kept, oldest file last.
        let ids = |name: &str| -> Vec<String> {
            let file = dir.path().join(name);
            assert!(std::fs::metadata(&file).unwrap().len() <= max_size);
            lines(&file)
                .iter()
                .map(|l| serde_json::from_str::<Record>(l).unwrap().id)
                .collect()
        };
        assert_eq!(ids("traffic.jsonl.2"), ["req-22", "req-23", "req-24"]);
        assert_eq!(ids("traffic.jsonl.1"), ["req-25", "req-26", "req-27"]);
        assert_eq!(ids("traffic.jsonl"), ["req-28", "req-29"]);
    }

    /// A stream whose writes wait until the test lets them through.
    struct Gated {
        gate: Arc<Mutex<()>>,
        written: Arc<Mutex<Vec<u8>>>,
        entered: mpsc::Sender<()>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.entered.send(());
            let _open = self.gate.lock().unwrap();
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let gate = Arc::new(Mutex::new(()));
        let written = Arc::new(Mutex::new(Vec::new()));
        let (entered_tx, entered) = mpsc::channel();
        let closed = gate.lock().unwrap();
        let log = TrafficLog::spawn(
            Output::Stream {
                out: Box::new(Gated {
                    gate: gate.clone(),
                    written: written.clone(),
                    entered: entered_tx,
                }),
                name: "gated".into(),
            },
            4,
        )
        .unwrap();
        // The writer takes the first record and is held in its write.
        log.submit(record(0));
        entered.recv().unwrap();
        let submitted = 1000;
        for i in 1..submitted {
            log.submit(record(i));
        }
        // Four wait in the queue; the rest were dropped at once.
        assert_eq!(log.dropped(), submitted as u64 - 5);
        assert_eq!(log.written(), 0);
        drop(closed);
        let counts = log.close();
        assert_eq!(counts.written + counts.dropped, submitted as u64);
        assert_eq!(counts.written, 5);
        assert_eq!(counts.failed, 0);
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 5);
    }

    fn privileged() -> bool {
        // Root writes into a read-only directory anyway.
        let dir = tempfile::tempdir().unwrap();
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let writable = File::create(ro.join("probe")).is_ok();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
        writable
    }

    #[test]
    fn a_log_that_cannot_be_opened_fails_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, "not a directory").unwrap();
        let err = TrafficLog::start(LogConfig {
            path: Some(file.join("traffic.jsonl")),
            ..LogConfig::default()
        })
        .err()
        .unwrap();
        assert!(matches!(err, TrafficLogError::Directory { .. }), "{err:?}");
        assert!(err.to_string().contains("plain"), "{err}");

        if !privileged() {
            use std::os::unix::fs::PermissionsExt;
            let ro = dir.path().join("ro");
            std::fs::create_dir(&ro).unwrap();
            std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
            let err = TrafficLog::start(LogConfig {
                path: Some(ro.join("traffic.jsonl")),
                ..LogConfig::default()
            })
            .err()
            .unwrap();
            assert!(matches!(err, TrafficLogError::Open { .. }), "{err:?}");
            std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let err = TrafficLog::start(LogConfig {
            queue: 0,
            ..LogConfig::default()
        })
        .err()
        .unwrap();
        assert!(matches!(err, TrafficLogError::NoQueue));
    }

    #[test]
    fn a_full_disk_stops_logging_and_counts_the_losses() {
        let full = Path::new("/dev/full");
        assert!(full.exists(), "this test needs /dev/full");
        let log = TrafficLog::start(LogConfig {
            path: Some(full.to_path_buf()),
            ..LogConfig::default()
        })
        .unwrap();
        log.submit(record(0));
        // The writer fails on its first flush.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !log.is_broken() {
            assert!(
                std::time::Instant::now() < deadline,
                "the write never failed"
            );
            std::thread::yield_now();
        }
        for i in 1..50 {
            log.submit(record(i));
        }
        let counts = log.close();
        assert_eq!(
            counts,
            LogCounts {
                written: 0,
                dropped: 0,
                failed: 50
            }
        );
    }

    #[test]
    fn stdout_logs_start_and_close() {
        let log = TrafficLog::start(LogConfig::default()).unwrap();
        assert_eq!(log.close(), LogCounts::default());
    }
}

//! Replay: the requests of a traffic log (as `ferry serve-model` writes it) run again through a
//! candidate model, one run per request as they were served, and the candidate's answers
//! compared with the logged ones: how many rows agree, how far scores moved, how fast it ran.
//!
//! The logs are read twice: first only which models and inputs their records have, so that a
//! candidate that cannot take them is refused before anything runs and memory holds one record
//! at a time however long the logs are; then to run them. Lines that do not parse (a line cut
//! by a crash, garbage) are skipped and counted.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use ort::session::{Session, SessionInputValue};
use serde::{Deserialize, Serialize, Serializer};

use crate::onnx::OnnxError;
use crate::server::SignatureError;
use crate::server::compare::{self, Kind, Tolerance};
use crate::server::config::Device;
use crate::server::model::{HostTensor, IoSpec, Signature, check_tensor, open_session_with};
use crate::server::tensor::OutputView;
use crate::server::traffic_log::{LoggedTensor, Record, format_time};

/// What to replay, and through what.
#[derive(Clone, Debug)]
pub struct Options {
    /// JSON-lines traffic logs, rotated files included, in any order.
    pub logs: Vec<PathBuf>,
    /// The candidate ONNX model.
    pub model: PathBuf,
    /// Only the records of this served model; needed when the logs hold several.
    pub model_name: Option<String>,
    /// ONNX Runtime threads per operator.
    pub threads: usize,
    pub tolerance: Tolerance,
}

/// How far replay has got, for a progress bar.
pub trait Progress {
    /// A pass over all the logs begins: `checking` (which records they hold) or `replaying`.
    fn pass(&self, name: &'static str, bytes: u64);
    /// Bytes of the logs read so far in this pass, and records replayed.
    fn advance(&self, bytes: u64, records: u64);
}

/// No progress shown.
pub struct Quiet;

impl Progress for Quiet {
    fn pass(&self, _: &'static str, _: u64) {}
    fn advance(&self, _: u64, _: u64) {}
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("traffic log {} does not exist", path.display())]
    LogMissing { path: PathBuf },

    #[error("traffic log {} is a directory; name its files, e.g. {}/traffic.jsonl*", path.display(), path.display())]
    LogIsDirectory { path: PathBuf },

    #[error("cannot read traffic log {}: {source}", path.display())]
    LogRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}", no_records(*lines, first_bad.as_ref()))]
    NoRecords {
        lines: u64,
        first_bad: Option<Located>,
    },

    #[error(
        "the logs hold records of several models: {}\n  hint: choose one with --model-name NAME",
        counts(models)
    )]
    SeveralModels { models: Vec<(String, u64)> },

    #[error(
        "the logs hold no record of model '{name}'; they hold: {}",
        counts(models)
    )]
    NoSuchModel {
        name: String,
        models: Vec<(String, u64)>,
    },

    #[error(transparent)]
    Model(#[from] OnnxError),

    #[error(transparent)]
    Signature(#[from] SignatureError),

    #[error("{0}")]
    Interface(Box<Refused>),
}

/// Why the candidate cannot take the logged requests.
#[derive(Debug)]
pub struct Refused {
    pub candidate: PathBuf,
    pub model: String,
    /// The first record the candidate cannot take.
    pub at: Located,
    pub differences: Vec<String>,
    /// The candidate's inputs, described.
    pub candidate_inputs: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the candidate {} does not take the logged requests of model '{}' (the first at {}:{}):",
            self.candidate.display(),
            self.model,
            self.at.file.display(),
            self.at.line
        )?;
        for d in &self.differences {
            write!(f, "\n  - {d}")?;
        }
        write!(
            f,
            "\n  hint: each logged request runs as it was sent, so the candidate needs the same input names, datatypes and ranks; its inputs are: {}",
            self.candidate_inputs
        )
    }
}

fn no_records(lines: u64, first_bad: Option<&Located>) -> String {
    match first_bad {
        Some(bad) => format!(
            "{lines} lines in the traffic logs, none parsed as a record; the first bad line, {}:{}: {}",
            bad.file.display(),
            bad.line,
            bad.error
        ),
        None => "the traffic logs hold no records (they are empty)".to_string(),
    }
}

fn counts(models: &[(String, u64)]) -> String {
    models
        .iter()
        .map(|(name, n)| format!("{name} ({n} records)"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A line of a log, and what was wrong with it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Located {
    pub file: PathBuf,
    pub line: u64,
    pub error: String,
}

/// What replay found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub candidate: PathBuf,
    pub candidate_sha256: String,
    /// The served model whose records were replayed.
    pub model: String,
    /// The sha256 of the served model files that answered the logged requests.
    pub logged_sha256: Vec<String>,
    pub logs: Vec<PathBuf>,
    /// The first and last logged request's time.
    pub from: Option<String>,
    pub to: Option<String>,
    /// Records replayed.
    pub records: u64,
    /// Records of other models, left out.
    pub other_models: u64,
    /// Lines that do not parse as records.
    pub skipped_lines: u64,
    pub first_skipped: Option<Located>,
    /// Records the candidate could not answer; their rows count as disagreeing.
    pub failed_runs: u64,
    pub first_failure: Option<Located>,
    pub rows: u64,
    /// Rows on which every output agrees.
    pub agreeing_rows: u64,
    /// `agreeing_rows / rows`; `None` without rows.
    pub agreement: Option<f64>,
    pub outputs: Vec<OutputReport>,
    pub latency_ms: Latencies,
}

#[derive(Clone, Debug, Serialize)]
pub struct OutputReport {
    pub name: String,
    pub kind: Kind,
    pub rows: u64,
    pub agreeing_rows: u64,
    pub agreement: Option<f64>,
    /// Records in which the candidate's output could not be compared (missing, another
    /// datatype or shape).
    pub mismatched_records: u64,
    pub first_mismatch: Option<Located>,
    /// Scores: each row's largest absolute difference, across rows.
    pub abs_diff: Option<Spread>,
    /// Scores with several values along the last axis.
    pub top1: Option<Top1>,
    pub topk: Option<TopK>,
}

/// Quantiles of per-row differences.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    #[serde(serialize_with = "number")]
    pub p50: f64,
    #[serde(serialize_with = "number")]
    pub p90: f64,
    #[serde(serialize_with = "number")]
    pub p99: f64,
    #[serde(serialize_with = "number")]
    pub max: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Top1 {
    pub agreeing_rows: u64,
    pub rows: u64,
    pub rate: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TopK {
    pub k: usize,
    /// The share of the top-k indices both sides have, averaged over rows.
    pub overlap: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Latencies {
    /// The candidate's runs here.
    pub candidate: Option<Latency>,
    /// As logged by the server.
    pub logged: Option<Latency>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

fn number<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    if x.is_finite() {
        s.serialize_f64(*x)
    } else {
        s.serialize_str(compare::non_finite_name(*x))
    }
}

/// What the first pass reads of a record: no tensor data.
#[derive(Deserialize)]
struct Header {
    model: String,
    inputs: Vec<InputHeader>,
}

#[derive(Deserialize)]
struct InputHeader {
    name: String,
    datatype: String,
    shape: Vec<usize>,
}

/// A record's inputs as the candidate must take them: name, datatype, rank; sorted by name.
type Interface = Vec<(String, String, usize)>;

/// Runs the logs' records through the candidate and compares its answers with the logged ones.
pub fn replay(options: &Options, progress: &dyn Progress) -> Result<Report, ReplayError> {
    let mut total_bytes = 0;
    for path in &options.logs {
        total_bytes += check_log(path)?;
    }

    // First pass: the models and the inputs the records have.
    progress.pass("checking", total_bytes);
    let mut models: BTreeMap<String, u64> = BTreeMap::new();
    let mut interfaces: HashMap<(String, Interface), Located> = HashMap::new();
    let mut lines = 0u64;
    let mut first_bad: Option<Located> = None;
    let mut read = 0u64;
    for path in &options.logs {
        let n = each_line(path, |number, line, bytes| {
            lines += 1;
            match serde_json::from_slice::<Header>(line) {
                Ok(header) => {
                    *models.entry(header.model.clone()).or_default() += 1;
                    let mut interface: Interface = header
                        .inputs
                        .into_iter()
                        .map(|i| (i.name, i.datatype, i.shape.len()))
                        .collect();
                    interface.sort();
                    interfaces
                        .entry((header.model, interface))
                        .or_insert_with(|| Located {
                            file: path.clone(),
                            line: number,
                            error: String::new(),
                        });
                }
                Err(e) => {
                    first_bad.get_or_insert_with(|| Located {
                        file: path.clone(),
                        line: number,
                        error: json_error(&e),
                    });
                }
            }
            progress.advance(read + bytes, 0);
        })?;
        read += n;
    }
    let listed = || -> Vec<(String, u64)> { models.iter().map(|(m, n)| (m.clone(), *n)).collect() };
    let model = match &options.model_name {
        Some(name) if models.contains_key(name) => name.clone(),
        Some(name) if !models.is_empty() => {
            return Err(ReplayError::NoSuchModel {
                name: name.clone(),
                models: listed(),
            });
        }
        _ if models.len() > 1 => {
            return Err(ReplayError::SeveralModels { models: listed() });
        }
        _ => match models.keys().next() {
            Some(only) => only.clone(),
            None => return Err(ReplayError::NoRecords { lines, first_bad }),
        },
    };

    let mut session = open_session_with(&options.model, Device::Cpu, options.threads.max(1))?;
    let signature = Signature::of(&session, &options.model)?;
    let mut checked: Vec<(&Interface, &Located)> = interfaces
        .iter()
        .filter(|((m, _), _)| *m == model)
        .map(|((_, interface), at)| (interface, at))
        .collect();
    checked.sort_by(|a, b| (&a.1.file, a.1.line).cmp(&(&b.1.file, b.1.line)));
    for (interface, at) in checked {
        let differences = differences(interface, &signature.inputs);
        if !differences.is_empty() {
            return Err(ReplayError::Interface(Box::new(Refused {
                candidate: options.model.clone(),
                model,
                at: at.clone(),
                differences,
                candidate_inputs: describe(&signature.inputs),
            })));
        }
    }
    let candidate_sha256 = sha256(&options.model)?;

    // Second pass: run each record.
    progress.pass("replaying", total_bytes);
    let mut tally = Tally::default();
    let mut warm = false;
    let mut read = 0u64;
    for path in &options.logs {
        let n = each_line(path, |number, line, bytes| {
            let at = |error: String| Located {
                file: path.clone(),
                line: number,
                error,
            };
            match serde_json::from_slice::<Record>(line) {
                Err(e) => tally.skipped(at(json_error(&e))),
                Ok(record) if record.model != model => tally.other_models += 1,
                Ok(record) => {
                    tally.logged(&record);
                    let Record {
                        inputs, outputs, ..
                    } = record;
                    if !warm {
                        // A session's first run pays for ONNX Runtime's setup, which the
                        // server does before it serves: it is not the candidate's latency.
                        warm = true;
                        let _ = run(&mut session, &signature, inputs.clone());
                    }
                    match run(&mut session, &signature, inputs) {
                        Ok((answer, took)) => {
                            let comparison = compare::compare(&outputs, &answer, options.tolerance);
                            tally.compared(&comparison, took, &at);
                        }
                        Err(e) => tally.failed(&outputs, at(e)),
                    }
                }
            }
            progress.advance(read + bytes, tally.records);
        })?;
        read += n;
    }
    if tally.records == 0 {
        return Err(ReplayError::NoRecords {
            lines,
            first_bad: tally.first_skipped.or(first_bad),
        });
    }
    Ok(tally.report(options, model, candidate_sha256))
}

/// serde_json's message, with the column of the line instead of "line 1" of its one-line input.
fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rsplit_once(" at line ") {
        Some((message, _)) => format!("{message} (column {})", e.column()),
        None => text,
    }
}

/// The log's size; fails unless it is a readable file.
fn check_log(path: &Path) -> Result<u64, ReplayError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(ReplayError::LogIsDirectory {
            path: path.to_path_buf(),
        }),
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ReplayError::LogMissing {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(ReplayError::LogRead {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Calls `f` with each line that is not blank: its number (from 1), its bytes, and the bytes
/// read so far. Returns the bytes read. Lines need not be UTF-8: a bad one is the parser's to
/// refuse.
fn each_line(path: &Path, mut f: impl FnMut(u64, &[u8], u64)) -> Result<u64, ReplayError> {
    let read_error = |source| ReplayError::LogRead {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path).map_err(read_error)?);
    let mut line = Vec::new();
    let mut number = 0u64;
    let mut bytes = 0u64;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(read_error)?;
        if n == 0 {
            return Ok(bytes);
        }
        number += 1;
        bytes += n as u64;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        f(number, &line, bytes);
    }
}

fn sha256(path: &Path) -> Result<String, ReplayError> {
    crate::spec::sha256_file(path).map_err(|e| {
        ReplayError::Model(OnnxError::ModelLoad {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    })
}

/// How the logged inputs differ from the candidate's, one line each.
fn differences(logged: &Interface, inputs: &[IoSpec]) -> Vec<String> {
    let mut out = Vec::new();
    for (name, datatype, rank) in logged {
        if logged.iter().filter(|(n, _, _)| n == name).count() > 1 {
            out.push(format!(
                "input '{name}' is logged more than once in a request"
            ));
            continue;
        }
        let Some(spec) = inputs.iter().find(|s| &s.name == name) else {
            out.push(format!(
                "the candidate has no input '{name}' (logged as {datatype}, rank {rank})"
            ));
            continue;
        };
        if spec.datatype.name() != datatype {
            out.push(format!(
                "input '{name}' is logged as {datatype}; the candidate takes {}",
                spec.datatype
            ));
        }
        if spec.shape.len() != *rank {
            out.push(format!(
                "input '{name}' is logged with rank {rank}; the candidate takes rank {} ({:?})",
                spec.shape.len(),
                spec.shape
            ));
        }
    }
    for spec in inputs {
        if !logged.iter().any(|(n, _, _)| n == &spec.name) {
            out.push(format!(
                "the candidate's input '{}' is not in the logged requests",
                spec.name
            ));
        }
    }
    out
}

/// `a (FP32 [-1, 2]), b (FP32 [-1, 2])`.
fn describe(inputs: &[IoSpec]) -> String {
    inputs
        .iter()
        .map(|s| format!("{} ({} {:?})", s.name, s.datatype, s.shape))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One logged request through the candidate, as the server runs one: its outputs, and how long
/// the run took.
fn run(
    session: &mut Session,
    signature: &Signature,
    inputs: Vec<LoggedTensor>,
) -> Result<(Vec<LoggedTensor>, Duration), String> {
    let mut slots: Vec<Option<HostTensor>> = (0..signature.inputs.len()).map(|_| None).collect();
    for input in inputs {
        let Some(i) = signature.inputs.iter().position(|s| s.name == input.name()) else {
            return Err(format!("the candidate has no input '{}'", input.name()));
        };
        check_tensor(&signature.inputs[i], input.shape(), input.data().datatype())?;
        slots[i] = Some(input.into());
    }
    let mut values = Vec::with_capacity(slots.len());
    for (slot, spec) in slots.into_iter().zip(&signature.inputs) {
        let tensor = slot.ok_or_else(|| format!("the request has no input '{}'", spec.name))?;
        let value = tensor
            .data
            .into_ort(&tensor.shape)
            .map_err(|e| format!("input '{}': {e}", spec.name))?;
        values.push(SessionInputValue::from(value));
    }
    let started = Instant::now();
    let results = session
        .run(values.as_slice())
        .map_err(|e| format!("inference failed: {e}"))?;
    let took = started.elapsed();
    let mut outputs = Vec::with_capacity(signature.outputs.len());
    for spec in &signature.outputs {
        let value = results
            .get(&spec.name)
            .ok_or_else(|| format!("ONNX Runtime returned no output '{}'", spec.name))?;
        let (shape, view) =
            OutputView::new(value).map_err(|e| format!("output '{}': {e}", spec.name))?;
        let len = shape.iter().product();
        let data = view.copy(0..len);
        outputs.push(LoggedTensor::from((
            spec.name.clone(),
            HostTensor { shape, data },
        )));
    }
    Ok((outputs, took))
}

/// The second pass's counts, output by output in the order they first appear.
#[derive(Default)]
struct Tally {
    records: u64,
    other_models: u64,
    skipped: u64,
    first_skipped: Option<Located>,
    failed: u64,
    first_failure: Option<Located>,
    rows: u64,
    agreeing_rows: u64,
    outputs: Vec<OutputTally>,
    candidate_ms: Vec<f64>,
    logged_ms: Vec<f64>,
    logged_sha256: Vec<String>,
    from: Option<SystemTime>,
    to: Option<SystemTime>,
}

struct OutputTally {
    name: String,
    kind: Kind,
    rows: u64,
    agreeing_rows: u64,
    mismatched: u64,
    first_mismatch: Option<Located>,
    deltas: Vec<f64>,
    top1: Option<(u64, u64)>,
    top_k: Option<usize>,
    /// Top-k overlap summed over rows, and the rows summed.
    overlap: (f64, u64),
}

impl Tally {
    fn skipped(&mut self, at: Located) {
        self.skipped += 1;
        self.first_skipped.get_or_insert(at);
    }

    fn logged(&mut self, record: &Record) {
        self.records += 1;
        if record.latency_ms.is_finite() {
            self.logged_ms.push(record.latency_ms);
        }
        if !self.logged_sha256.contains(&record.sha256) {
            self.logged_sha256.push(record.sha256.clone());
        }
        self.from = Some(self.from.map_or(record.time, |t| t.min(record.time)));
        self.to = Some(self.to.map_or(record.time, |t| t.max(record.time)));
    }

    fn output(&mut self, name: &str, kind: Kind) -> &mut OutputTally {
        let i = match self.outputs.iter().position(|o| o.name == name) {
            Some(i) => i,
            None => {
                self.outputs.push(OutputTally {
                    name: name.to_string(),
                    kind,
                    rows: 0,
                    agreeing_rows: 0,
                    mismatched: 0,
                    first_mismatch: None,
                    deltas: Vec::new(),
                    top1: None,
                    top_k: None,
                    overlap: (0.0, 0),
                });
                self.outputs.len() - 1
            }
        };
        &mut self.outputs[i]
    }

    fn compared(
        &mut self,
        comparison: &compare::Comparison,
        took: Duration,
        at: &dyn Fn(String) -> Located,
    ) {
        self.candidate_ms.push(took.as_secs_f64() * 1e3);
        self.rows += comparison.rows as u64;
        self.agreeing_rows += comparison.agreeing_rows as u64;
        for o in &comparison.outputs {
            let out = self.output(&o.name, o.kind);
            out.rows += o.rows as u64;
            out.agreeing_rows += o.agreeing_rows as u64;
            if let Some(mismatch) = &o.mismatch {
                out.mismatched += 1;
                out.first_mismatch
                    .get_or_insert_with(|| at(format!("output '{}': {mismatch}", o.name)));
            }
            out.deltas.extend_from_slice(&o.row_deltas);
            if let Some((agree, rows)) = o.top1 {
                let (a, r) = out.top1.get_or_insert((0, 0));
                *a += agree as u64;
                *r += rows as u64;
            }
            if let (Some(k), Some(overlap)) = (o.top_k, o.topk_overlap) {
                out.top_k = Some(k);
                out.overlap.0 += overlap * o.rows as f64;
                out.overlap.1 += o.rows as u64;
            }
        }
    }

    fn failed(&mut self, outputs: &[LoggedTensor], at: Located) {
        self.failed += 1;
        self.first_failure.get_or_insert(at);
        // As many rows as the logged answer has, none agreeing.
        self.rows += compare::compare(outputs, &[], Tolerance::default()).rows as u64;
        for t in outputs {
            let kind = if matches!(t.datatype(), "FP16" | "FP32" | "FP64") {
                Kind::Score
            } else {
                Kind::Label
            };
            let rows = t.shape().first().copied().unwrap_or(1);
            self.output(t.name(), kind).rows += rows as u64;
        }
    }

    fn report(self, options: &Options, model: String, candidate_sha256: String) -> Report {
        let rate = |agree: u64, rows: u64| (rows > 0).then(|| agree as f64 / rows as f64);
        let outputs = self
            .outputs
            .into_iter()
            .map(|mut o| OutputReport {
                agreement: rate(o.agreeing_rows, o.rows),
                abs_diff: spread(&mut o.deltas),
                top1: o.top1.map(|(agreeing_rows, rows)| Top1 {
                    agreeing_rows,
                    rows,
                    rate: rate(agreeing_rows, rows),
                }),
                topk: o.top_k.filter(|_| o.overlap.1 > 0).map(|k| TopK {
                    k,
                    overlap: o.overlap.0 / o.overlap.1 as f64,
                }),
                name: o.name,
                kind: o.kind,
                rows: o.rows,
                agreeing_rows: o.agreeing_rows,
                mismatched_records: o.mismatched,
                first_mismatch: o.first_mismatch,
            })
            .collect();
        let mut candidate_ms = self.candidate_ms;
        let mut logged_ms = self.logged_ms;
        Report {
            candidate: options.model.clone(),
            candidate_sha256,
            model,
            logged_sha256: self.logged_sha256,
            logs: options.logs.clone(),
            from: self.from.map(format_time),
            to: self.to.map(format_time),
            records: self.records,
            other_models: self.other_models,
            skipped_lines: self.skipped,
            first_skipped: self.first_skipped,
            failed_runs: self.failed,
            first_failure: self.first_failure,
            rows: self.rows,
            agreeing_rows: self.agreeing_rows,
            agreement: rate(self.agreeing_rows, self.rows),
            outputs,
            latency_ms: Latencies {
                candidate: latency(&mut candidate_ms),
                logged: latency(&mut logged_ms),
            },
        }
    }
}

/// The value below which a share `q` of the sorted values lie (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn spread(values: &mut [f64]) -> Option<Spread> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(Spread {
        p50: quantile(values, 0.5),
        p90: quantile(values, 0.9),
        p99: quantile(values, 0.99),
        max: values[values.len() - 1],
    })
}

fn latency(values: &mut [f64]) -> Option<Latency> {
    spread(values).map(|s| Latency {
        p50: s.p50,
        p90: s.p90,
        p99: s.p99,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::tensor::DataType;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let s = spread(&mut v).unwrap();
        assert_eq!((s.p50, s.p90, s.p99, s.max), (50.0, 90.0, 99.0, 100.0));
        let s = spread(&mut [3.0]).unwrap();
        assert_eq!((s.p50, s.p99, s.max), (3.0, 3.0, 3.0));
        assert_eq!(spread(&mut []), None);
        let s = spread(&mut [0.0, f64::INFINITY, 1.0]).unwrap();
        assert_eq!(s.max, f64::INFINITY);
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"max\":\"Infinity\""), "{json}");
    }

    #[test]
    fn interfaces_are_compared_by_name_datatype_and_rank() {
        let spec = |name: &str, datatype, shape: &[i64]| IoSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
        };
        let inputs = [
            spec("a", DataType::Fp32, &[-1, 2]),
            spec("b", DataType::Int64, &[-1]),
        ];
        let logged = |list: &[(&str, &str, usize)]| -> Interface {
            list.iter()
                .map(|(n, d, r)| (n.to_string(), d.to_string(), *r))
                .collect()
        };
        assert!(differences(&logged(&[("a", "FP32", 2), ("b", "INT64", 1)]), &inputs).is_empty());
        let found = differences(&logged(&[("a", "FP64", 3), ("c", "INT64", 1)]), &inputs);
        assert_eq!(
            found,
            [
                "input 'a' is logged as FP64; the candidate takes FP32",
                "input 'a' is logged with rank 3; the candidate takes rank 2 ([-1, 2])",
                "the candidate has no input 'c' (logged as INT64, rank 1)",
                "the candidate's input 'b' is not in the logged requests",
            ]
        );
    }

    #[test]
    fn logs_that_are_not_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let options = |logs: Vec<PathBuf>| Options {
            logs,
            model: dir.path().join("model.onnx"),
            model_name: None,
            threads: 1,
            tolerance: Tolerance::default(),
        };
        let err = replay(&options(vec![dir.path().join("nope.jsonl")]), &Quiet).unwrap_err();
        assert!(matches!(err, ReplayError::LogMissing { .. }), "{err}");
        let err = replay(&options(vec![dir.path().to_path_buf()]), &Quiet).unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");

        // Nothing parses: the first bad line is named.
        let log = dir.path().join("traffic.jsonl");
        std::fs::write(&log, "\n{\"model\": \"m\"}\n\ngarbage\n").unwrap();
        let err = replay(&options(vec![log.clone()]), &Quiet).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("2 lines in the traffic logs, none parsed"),
            "{text}"
        );
        assert!(
            text.contains("traffic.jsonl:2: missing field `inputs`"),
            "{text}"
        );
        std::fs::write(&log, "").unwrap();
        let err = replay(&options(vec![log.clone()]), &Quiet).unwrap_err();
        assert!(err.to_string().contains("hold no records"), "{err}");

        // Several models, and none chosen; or one that is not there.
        let line = |model: &str| {
            format!(
                "{{\"model\": \"{model}\", \"inputs\": [{{\"name\": \"x\", \"datatype\": \"FP32\", \"shape\": [1], \"data\": [1]}}]}}\n"
            )
        };
        std::fs::write(&log, line("a") + &line("b") + &line("b")).unwrap();
        let err = replay(&options(vec![log.clone()]), &Quiet).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the logs hold records of several models: a (1 records), b (2 records)\n  hint: choose one with --model-name NAME"
        );
        let mut named = options(vec![log.clone()]);
        named.model_name = Some("c".into());
        let err = replay(&named, &Quiet).unwrap_err();
        assert!(matches!(err, ReplayError::NoSuchModel { .. }), "{err}");
        // The model is looked at only once the logs are known to hold records of it.
        named.model_name = Some("b".into());
        let err = replay(&named, &Quiet).unwrap_err();
        assert!(matches!(err, ReplayError::Model(_)), "{err}");
    }
}

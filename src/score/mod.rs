//! Batch scoring: a model over whole CSV and Parquet tables, in-process, through the same ONNX
//! Runtime session code the server uses.
//!
//! Three threads pass bounded queues of batches along, so memory stays flat whatever the input's
//! size: one reads (`source`), one turns columns into tensors, runs the model and turns its
//! outputs back into columns (`convert`, with the mapping of `columns`), one writes (`sink`).
//! Rows keep their input order.

pub(crate) mod columns;
pub(crate) mod convert;
pub mod fetch;
pub mod join;
pub mod shard;
pub mod sink;
pub(crate) mod source;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType as ArrowType, Field, Schema, SchemaRef};
use ort::session::{Session, SessionInputValue};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::onnx::OnnxError;
use crate::server::config::Device;
use crate::server::model::{Signature, SignatureError, open_session_with};
use crate::server::tensor::OutputView;
pub use columns::ColumnArgs;
use columns::Mapping;
use convert::{Fill, Origin, Prepared};
use source::{Format, InputFile};

/// Cells (rows × columns read) per batch unless told otherwise: enough that per-batch costs
/// vanish, few enough that a batch and what the model makes of it stay in the CPU's caches
/// and memory stays flat for wide tables (the churn template's 79 columns: 6,636 rows).
const BATCH_CELLS: usize = 512 * 1024;
const BATCH_ROWS: std::ops::RangeInclusive<usize> = 1024..=65_536;
/// The most rows a batch may be given: the CSV reader sets aside room for a whole batch.
pub const MAX_BATCH_ROWS: usize = 1 << 20;

/// Batches in flight between two threads.
const QUEUE: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error("no input given; hint: ferry score data/customers.csv --output scores.parquet")]
    NoInputs,
    #[error("input {}: {message}", path.display())]
    Input { path: PathBuf, message: String },
    #[error("input {}: not a readable Parquet file: {message}", path.display())]
    BadParquet { path: PathBuf, message: String },
    #[error(
        "input {}: {missing}; the model reads {inputs}; the file has: {columns}{hint}",
        path.display()
    )]
    MissingColumn {
        path: PathBuf,
        /// "column 'x' is missing", or how many are and the first of them.
        missing: String,
        inputs: String,
        columns: String,
        hint: String,
    },
    #[error(
        "input {}, row {row}, column '{column}': '{value}' is not a {datatype}",
        path.display()
    )]
    Cast {
        path: PathBuf,
        row: u64,
        column: String,
        value: String,
        datatype: String,
    },
    #[error(
        "input {}, row {row}, column '{column}': the cell is {problem}; the model needs a value in every cell; hint: --fill VALUE puts VALUE in empty and NaN cells",
        path.display()
    )]
    Cell {
        path: PathBuf,
        row: u64,
        column: String,
        problem: &'static str,
    },
    #[error("--columns {arg}: {message}")]
    ColumnsArg { arg: String, message: String },
    #[error("--outputs: {message}")]
    OutputsArg { message: String },
    #[error("--keep: {message}")]
    KeepArg { message: String },
    #[error("--fill {value}: not a value of input '{input}' ({datatype})")]
    FillArg {
        value: String,
        input: String,
        datatype: String,
    },
    #[error("the model cannot score a table: {message}")]
    Unsupported { message: String },
    #[error(transparent)]
    Model(#[from] OnnxError),
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("model {}: {message}", path.display())]
    Metadata { path: PathBuf, message: String },
    #[error("inference failed: {message}")]
    Inference { message: String },
    #[error("output {}: {message}", path.display())]
    Output { path: PathBuf, message: String },
    #[error("output {} exists; hint: --force replaces it", path.display())]
    OutputExists { path: PathBuf },
    #[error("writing {}: {message}; nothing was left under that name", path.display())]
    Write { path: PathBuf, message: String },
    #[error("interrupted; nothing was written")]
    Interrupted,
}

/// What to score and how.
#[derive(Clone, Debug)]
pub struct Options {
    pub inputs: Vec<PathBuf>,
    pub output: PathBuf,
    pub model: PathBuf,
    pub columns: ColumnArgs,
    /// Input columns copied to the output, before the model's outputs.
    pub keep: Vec<String>,
    /// The outputs to write; all when empty.
    pub outputs: Vec<String>,
    pub fill: Option<String>,
    pub force: bool,
    /// Rows per batch; by default as many as make [`BATCH_CELLS`] cells.
    pub batch_rows: Option<usize>,
    /// ONNX Runtime's threads per operator.
    pub threads: usize,
    pub device: Device,
}

/// How far along a scoring run is; called from the thread that runs the model.
pub trait Progress: Sync {
    /// Once, before the first batch: the bytes to read and, where the files say, the rows.
    fn start(&self, bytes: u64, rows: Option<u64>);
    fn advance(&self, rows: u64, bytes: u64);
}

/// No progress shown.
pub struct Quiet;

impl Progress for Quiet {
    fn start(&self, _: u64, _: Option<u64>) {}
    fn advance(&self, _: u64, _: u64) {}
}

/// One input file as scored.
#[derive(Clone, Debug, Serialize)]
pub struct ScoredInput {
    /// A file, or a URL without its query.
    pub path: PathBuf,
    pub format: &'static str,
    pub bytes: u64,
    pub rows: u64,
    /// Known without reading the file again: a URL's, as its pod fetched it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A URL's ETag, as its server gave it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

impl ScoredInput {
    /// A file as listed, with the rows scored of it.
    pub(crate) fn of(file: &InputFile, rows: u64) -> ScoredInput {
        ScoredInput {
            path: file.path.clone(),
            format: file.format.name(),
            bytes: file.bytes,
            rows,
            sha256: None,
            etag: None,
        }
    }
}

/// What a scoring run did.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub rows: u64,
    pub seconds: f64,
    pub rows_per_second: f64,
    pub model: PathBuf,
    pub model_sha256: String,
    pub inputs: Vec<ScoredInput>,
    pub output: PathBuf,
    pub output_sha256: String,
    pub output_bytes: u64,
    /// The output's columns, in order.
    pub columns: Vec<String>,
}

/// The model's signature and how its inputs and outputs meet the tables' columns.
pub(crate) struct Plan {
    pub session: Session,
    pub signature: Signature,
    pub mapping: Mapping,
    pub model_sha256: String,
}

/// Opens the model and maps its inputs and outputs to columns.
pub(crate) fn plan(options: &Options) -> Result<Plan, ScoreError> {
    let session = open_session_with(&options.model, options.device, options.threads)?;
    let signature = Signature::of(&session, &options.model)?;
    let metadata = match session
        .metadata()
        .ok()
        .and_then(|m| m.custom(columns::METADATA_KEY))
    {
        Some(text) => columns::parse_metadata(&text).map_err(|message| ScoreError::Metadata {
            path: options.model.clone(),
            message,
        })?,
        None => BTreeMap::new(),
    };
    let mapping = Mapping::new(&signature, &metadata, &options.columns, &options.outputs)?;
    let bytes = std::fs::read(&options.model).map_err(|e| OnnxError::ModelLoad {
        path: options.model.clone(),
        message: e.to_string(),
    })?;
    Ok(Plan {
        session,
        signature,
        mapping,
        model_sha256: hex::encode(Sha256::digest(&bytes)),
    })
}

/// What [`score`] checks before its first row, without scoring one: the inputs listed, the
/// model opened and mapped to every file's columns. A cluster run says these on this machine.
pub fn preflight(options: &Options) -> Result<Vec<ScoredInput>, ScoreError> {
    // No files: the model alone is checked (a cluster run's inputs may all be URLs).
    let files = if options.inputs.is_empty() {
        Vec::new()
    } else {
        source::list(&options.inputs)?
    };
    refuse_output_among_inputs(&options.output, &files)?;
    let Plan { mapping, .. } = plan(options)?;
    let keep = keep_columns(&options.keep, &mapping)?;
    check_files(&files, &mapping, &keep)?;
    Ok(files.iter().map(|f| ScoredInput::of(f, 0)).collect())
}

/// Scores `options.inputs` into `options.output`. `cancel` stops it between batches (the
/// temporary output is removed).
pub fn score(
    options: &Options,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<Summary, ScoreError> {
    let started = Instant::now();
    let files = source::list(&options.inputs)?;
    let mut sink = sink::Sink::create(&options.output, options.force)?;
    refuse_output_among_inputs(&options.output, &files)?;
    let Plan {
        mut session,
        signature,
        mut mapping,
        model_sha256,
    } = plan(options)?;
    let keep = keep_columns(&options.keep, &mapping)?;
    let (wanted, total_rows, keep_types) = check_files(&files, &mapping, &keep)?;
    let total_bytes = files.iter().map(|f| f.bytes).sum();
    progress.start(total_bytes, total_rows);

    let read_bytes = Arc::new(AtomicU64::new(0));
    let fill = options.fill.clone().map(Fill);
    let batch_rows = options.batch_rows.unwrap_or_else(|| {
        (BATCH_CELLS / wanted.len().max(1)).clamp(*BATCH_ROWS.start(), *BATCH_ROWS.end())
    });
    let batch_rows = match mapping.fixed_batch {
        // Whole model batches per table batch: padding is needed at most once per file.
        Some(fixed) => (batch_rows.max(fixed) / fixed) * fixed,
        None => batch_rows.max(1),
    };
    let mut per_file = vec![0u64; files.len()];
    let mut rows = 0u64;
    let mut schema: Option<SchemaRef> = None;

    let inputs = mapping.inputs.clone();
    let preparing = Preparing {
        inputs: &inputs,
        fixed_batch: mapping.fixed_batch,
        fill: fill.as_ref(),
    };
    std::thread::scope(|scope| -> Result<(), ScoreError> {
        let (batches_tx, batches_rx) = sync_channel(QUEUE);
        let (out_tx, out_rx) = sync_channel::<RecordBatch>(QUEUE);
        let reading = {
            let files = &files;
            let wanted = &wanted;
            let read_bytes = &read_bytes;
            let preparing = &preparing;
            std::thread::Builder::new()
                .name("score-read".into())
                .spawn_scoped(scope, move || {
                    read_all(files, wanted, batch_rows, read_bytes, preparing, batches_tx)
                })
                .map_err(|e| ScoreError::Inference {
                    message: format!("cannot start a thread: {e}"),
                })?
        };
        let writing = {
            let sink = &mut sink;
            std::thread::Builder::new()
                .name("score-write".into())
                .spawn_scoped(scope, move || write_all(sink, out_rx))
                .map_err(|e| ScoreError::Inference {
                    message: format!("cannot start a thread: {e}"),
                })?
        };
        let scored = (|| -> Result<(), ScoreError> {
            for ready in batches_rx.iter() {
                if cancel.load(Ordering::Relaxed) {
                    return Err(ScoreError::Interrupted);
                }
                let ready: Ready = ready?;
                let n = ready.batch.num_rows();
                let file = ready.file;
                let batch = ready.batch.clone();
                let outputs = run_batch(
                    &mut session,
                    &signature,
                    &mut mapping.outputs,
                    &files[file].path,
                    ready,
                )?;
                let out = output_batch(&keep, &batch, outputs, &mapping, &mut schema)?;
                if out_tx.send(out).is_err() {
                    // The writer stopped: its error is the one to report.
                    break;
                }
                per_file[file] += n as u64;
                rows += n as u64;
                progress.advance(rows, read_bytes.load(Ordering::Relaxed));
            }
            Ok(())
        })();
        drop(out_tx);
        // The reader may be blocked on a full queue: dropping the receiver frees it.
        drop(batches_rx);
        let wrote = writing.join().unwrap_or_else(|_| {
            Err(ScoreError::Inference {
                message: "the writing thread panicked".into(),
            })
        });
        let read = reading.join().unwrap_or_else(|_| {
            Err(ScoreError::Inference {
                message: "the reading thread panicked".into(),
            })
        });
        scored?;
        wrote?;
        read
    })?;
    if cancel.load(Ordering::Relaxed) {
        return Err(ScoreError::Interrupted);
    }
    let empty = match schema {
        Some(schema) => RecordBatch::new_empty(schema),
        None => RecordBatch::new_empty(empty_schema(&keep, &keep_types, &mapping)),
    };
    let columns = empty
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let written = sink.finish(&empty)?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Summary {
        rows,
        seconds,
        rows_per_second: rows as f64 / seconds.max(1e-9),
        model: options.model.clone(),
        model_sha256,
        inputs: files
            .iter()
            .zip(per_file)
            .map(|(f, rows)| ScoredInput::of(f, rows))
            .collect(),
        output: options.output.clone(),
        output_sha256: written.sha256,
        output_bytes: written.bytes,
        columns,
    })
}

fn refuse_output_among_inputs(output: &Path, files: &[InputFile]) -> Result<(), ScoreError> {
    let Some(dir) = output.parent() else {
        return Ok(());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let (Ok(dir), Some(name)) = (dir.canonicalize(), output.file_name()) else {
        return Ok(());
    };
    let output = dir.join(name);
    for file in files {
        if file.path.canonicalize().ok().as_deref() == Some(output.as_path()) {
            return Err(ScoreError::Output {
                path: file.path.clone(),
                message: "is also an input; write the scores to another file".into(),
            });
        }
    }
    Ok(())
}

/// `--keep` columns: each once, and none named like an output column.
fn keep_columns(keep: &[String], mapping: &Mapping) -> Result<Vec<String>, ScoreError> {
    let mut out: Vec<String> = Vec::with_capacity(keep.len());
    for name in keep {
        if out.contains(name) {
            return Err(ScoreError::KeepArg {
                message: format!("column '{name}' is named twice"),
            });
        }
        if mapping.outputs.iter().any(|o| o.columns.contains(name)) {
            return Err(ScoreError::KeepArg {
                message: format!(
                    "column '{name}' would clash with the model's output column of that name"
                ),
            });
        }
        out.push(name.clone());
    }
    Ok(out)
}

/// Every file has every column needed, checked before any row is scored. Returns the columns
/// to read with the type CSV cells are parsed as, the rows when every file says, and the kept
/// columns' types in the first file.
#[allow(clippy::type_complexity)]
fn check_files(
    files: &[InputFile],
    mapping: &Mapping,
    keep: &[String],
) -> Result<(Vec<(String, ArrowType)>, Option<u64>, Vec<ArrowType>), ScoreError> {
    let mut wanted: Vec<(String, ArrowType)> = Vec::new();
    for input in &mapping.inputs {
        for column in &input.columns {
            if !wanted.iter().any(|(n, _)| n == column) {
                wanted.push((column.clone(), convert::arrow_type(input.datatype)));
            }
        }
    }
    for column in keep {
        if !wanted.iter().any(|(n, _)| n == column) {
            wanted.push((column.clone(), ArrowType::Utf8));
        }
    }
    let mut total = Some(0u64);
    let mut keep_types = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let (fields, rows) = source::columns(file)?;
        total = total.zip(rows).map(|(a, b)| a + b);
        let missing: Vec<&String> = wanted
            .iter()
            .map(|(column, _)| column)
            .filter(|column| !fields.iter().any(|f| f.name() == *column))
            .collect();
        if let Some(&column) = missing.first() {
            let reader = mapping.inputs.iter().find(|i| i.columns.contains(column));
            let hint = match reader {
                Some(input) if input.columns.len() > 1 || input.columns[0] != input.name => {
                    format!(
                        "; hint: --columns {}=COL,… names the columns input '{}' reads",
                        input.name, input.name
                    )
                }
                Some(input) => format!(
                    "; hint: --columns {}=COLUMN reads input '{}' from another column",
                    input.name, input.name
                ),
                None => "; it is named by --keep".into(),
            };
            let missing = match missing.len() {
                1 => format!("column '{column}' is missing"),
                n => format!("{n} columns are missing: {}", abridged(&missing)),
            };
            return Err(ScoreError::MissingColumn {
                path: file.path.clone(),
                missing,
                inputs: mapping.describe_inputs(),
                columns: abridged(&fields.iter().map(|f| f.name()).collect::<Vec<_>>()),
                hint,
            });
        }
        if i == 0 {
            keep_types = keep
                .iter()
                .map(|k| match file.format {
                    Format::Parquet => fields
                        .iter()
                        .find(|f| f.name() == k)
                        .map_or(ArrowType::Utf8, |f| f.data_type().clone()),
                    Format::Csv { .. } => ArrowType::Utf8,
                })
                .collect();
        }
    }
    Ok((wanted, total, keep_types))
}

/// A batch made ready on the reading side, so the thread that runs the model does only that:
/// the model's inputs for each run (one, unless the model's batch size is fixed), and the
/// batch itself for the kept columns.
struct Ready {
    batch: RecordBatch,
    runs: Vec<(usize, Vec<Prepared>)>,
    file: usize,
}

struct Preparing<'a> {
    inputs: &'a [columns::InputColumns],
    fixed_batch: Option<usize>,
    fill: Option<&'a Fill>,
}

impl Preparing<'_> {
    fn prepare(&self, files: &[InputFile], batch: source::Batch) -> Result<Ready, ScoreError> {
        let rows = batch.data.num_rows();
        let step = self.fixed_batch.unwrap_or(rows.max(1));
        let mut runs = Vec::with_capacity(rows.div_ceil(step));
        let mut offset = 0;
        while offset < rows {
            let n = step.min(rows - offset);
            let part = batch.data.slice(offset, n);
            let origin = Origin {
                path: &files[batch.file].path,
                first_row: batch.first_row + offset as u64,
            };
            let mut tensors = self
                .inputs
                .iter()
                .map(|input| convert::input_tensor(input, &part, &origin, self.fill))
                .collect::<Result<Vec<_>, _>>()?;
            if n < step {
                for t in &mut tensors {
                    t.pad(n, step)?;
                }
            }
            runs.push((n, tensors));
            offset += n;
        }
        Ok(Ready {
            batch: batch.data,
            runs,
            file: batch.file,
        })
    }
}

/// A list for a message: the first ten of a long one, then how many more.
fn abridged<T: std::fmt::Display>(items: &[T]) -> String {
    const SHOWN: usize = 10;
    let mut text = items
        .iter()
        .take(SHOWN)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        text.push_str(&format!(", … ({} more)", items.len() - SHOWN));
    }
    text
}

fn read_all(
    files: &[InputFile],
    wanted: &[(String, ArrowType)],
    batch_rows: usize,
    read_bytes: &Arc<AtomicU64>,
    preparing: &Preparing<'_>,
    tx: SyncSender<Result<Ready, ScoreError>>,
) -> Result<(), ScoreError> {
    for (i, file) in files.iter().enumerate() {
        let mut open = true;
        let mut failed = None;
        let result = source::read(i, file, wanted, batch_rows, read_bytes, |batch| {
            if batch.data.num_rows() == 0 {
                return true;
            }
            match preparing.prepare(files, batch) {
                Ok(ready) => open = tx.send(Ok(ready)).is_ok(),
                Err(e) => {
                    failed = Some(e);
                    return false;
                }
            }
            open
        });
        if let Some(e) = failed.or(result.err()) {
            // Handed over in order, so the rows before it are scored first.
            let _ = tx.send(Err(e));
            return Ok(());
        }
        if !open {
            break;
        }
    }
    Ok(())
}

fn write_all(sink: &mut sink::Sink, rx: Receiver<RecordBatch>) -> Result<(), ScoreError> {
    for batch in rx {
        sink.write(&batch)?;
    }
    Ok(())
}

/// One batch through the model: the outputs' columns, in the mapping's order.
fn run_batch(
    session: &mut Session,
    signature: &Signature,
    outputs: &mut [columns::OutputColumns],
    path: &Path,
    ready: Ready,
) -> Result<Vec<ArrayRef>, ScoreError> {
    let mut columns: Vec<Vec<ArrayRef>> = Vec::with_capacity(ready.runs.len());
    for (n, tensors) in ready.runs {
        let rows_run = tensors.first().map_or(n, |t| t.rows());
        let values = tensors
            .into_iter()
            .map(|t| t.into_ort().map(SessionInputValue::from))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ScoreError::Inference {
                message: format!("preparing inputs: {e}"),
            })?;
        let results = session
            .run(values.as_slice())
            .map_err(|e| ScoreError::Inference {
                message: format!("{}: {e}", path.display()),
            })?;
        let mut part_columns = Vec::new();
        for out in outputs.iter_mut() {
            let spec = &signature.outputs[out.index];
            let value = results
                .get(&spec.name)
                .ok_or_else(|| ScoreError::Inference {
                    message: format!("ONNX Runtime returned no output '{}'", spec.name),
                })?;
            let (shape, view) = OutputView::new(value).map_err(|e| ScoreError::Inference {
                message: format!("output '{}': {e}", spec.name),
            })?;
            if shape.first() != Some(&rows_run) {
                return Err(ScoreError::Unsupported {
                    message: format!(
                        "output '{}' has shape {shape:?} for {rows_run} rows: not one value per row",
                        spec.name
                    ),
                });
            }
            let width: usize = shape[1..].iter().product();
            if out.columns.is_empty() {
                out.columns = if width == 1 {
                    vec![out.name.clone()]
                } else {
                    columns::numbered(&out.name, width)
                };
            } else if out.columns.len() != width {
                return Err(ScoreError::Unsupported {
                    message: format!(
                        "output '{}' has {width} values per row here, {} before",
                        spec.name,
                        out.columns.len()
                    ),
                });
            }
            part_columns.extend(convert::output_arrays(&view, width, n));
        }
        columns.push(part_columns);
    }
    if columns.len() == 1 {
        return Ok(columns.pop().unwrap_or_default());
    }
    // A fixed-size model ran several times: join each column's parts.
    let width = columns.first().map_or(0, Vec::len);
    (0..width)
        .map(|j| {
            let parts: Vec<&dyn arrow_array::Array> =
                columns.iter().map(|c| c[j].as_ref()).collect();
            arrow_select_concat(&parts)
        })
        .collect()
}

fn arrow_select_concat(parts: &[&dyn arrow_array::Array]) -> Result<ArrayRef, ScoreError> {
    arrow_select::concat::concat(parts).map_err(|e| ScoreError::Inference {
        message: e.to_string(),
    })
}

/// The kept columns and the model's outputs as one batch; later batches take the first one's
/// column types (a kept column read as text from a CSV file and as numbers from a Parquet one).
fn output_batch(
    keep: &[String],
    input: &RecordBatch,
    outputs: Vec<ArrayRef>,
    mapping: &Mapping,
    schema: &mut Option<SchemaRef>,
) -> Result<RecordBatch, ScoreError> {
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(keep.len() + outputs.len());
    for name in keep {
        let column = input
            .column_by_name(name)
            .ok_or_else(|| ScoreError::KeepArg {
                message: format!("column '{name}' is missing from a batch"),
            })?;
        arrays.push(Arc::clone(column));
    }
    arrays.extend(outputs);
    let schema = match schema {
        Some(schema) => {
            for (array, field) in arrays.iter_mut().zip(schema.fields()) {
                if array.data_type() != field.data_type() {
                    *array = arrow_cast::cast::cast(array, field.data_type()).map_err(|e| {
                        ScoreError::KeepArg {
                            message: format!(
                                "column '{}' is {} here but {} in the first file: {e}",
                                field.name(),
                                array.data_type(),
                                field.data_type()
                            ),
                        }
                    })?;
                }
            }
            Arc::clone(schema)
        }
        None => {
            let names = keep.iter().cloned().chain(
                mapping
                    .outputs
                    .iter()
                    .flat_map(|o| o.columns.iter().cloned()),
            );
            let fields: Vec<Field> = names
                .zip(&arrays)
                .map(|(name, array)| Field::new(name, array.data_type().clone(), true))
                .collect();
            schema.insert(Arc::new(Schema::new(fields))).clone()
        }
    };
    RecordBatch::try_new(schema, arrays).map_err(|e| ScoreError::Inference {
        message: e.to_string(),
    })
}

/// The output's columns when no row was read.
fn empty_schema(keep: &[String], keep_types: &[ArrowType], mapping: &Mapping) -> SchemaRef {
    let mut fields: Vec<Field> = keep
        .iter()
        .zip(keep_types)
        .map(|(name, ty)| Field::new(name, ty.clone(), true))
        .collect();
    for out in &mapping.outputs {
        let ty = convert::arrow_type(out.datatype);
        fields.extend(out.columns.iter().map(|c| Field::new(c, ty.clone(), true)));
    }
    Arc::new(Schema::new(fields))
}

/// A small table's rows as the model's input tensors, by the same mapping `score` uses (for a
/// single request: `ferry predict --csv`). `None` when the file does not name the model's
/// input columns and the model has one input: the caller reads it as bare numbers.
pub(crate) fn table_inputs(
    path: &Path,
    inputs: Vec<crate::server::model::IoSpec>,
) -> Result<Option<Vec<(String, crate::server::model::HostTensor)>>, ScoreError> {
    let single = inputs.len() == 1;
    let signature = Signature {
        inputs,
        outputs: Vec::new(),
    };
    let mapping = Mapping::new(&signature, &BTreeMap::new(), &ColumnArgs::default(), &[])?;
    let files = source::list(&[path.to_path_buf()])?;
    let (fields, _) = source::columns(&files[0])?;
    let named = mapping.inputs.iter().all(|i| {
        i.columns
            .iter()
            .all(|c| fields.iter().any(|f| f.name() == c))
    });
    if !named && single {
        return Ok(None);
    }
    let (wanted, _, _) = check_files(&files, &mapping, &[])?;
    let mut batches = Vec::new();
    source::read(
        0,
        &files[0],
        &wanted,
        *BATCH_ROWS.end(),
        &Arc::default(),
        |b| {
            batches.push(b);
            true
        },
    )?;
    let schema = match batches.first() {
        Some(b) => b.data.schema(),
        None => {
            return Err(ScoreError::Input {
                path: path.to_path_buf(),
                message: "no rows".into(),
            });
        }
    };
    let data = arrow_select::concat::concat_batches(&schema, batches.iter().map(|b| &b.data))
        .map_err(|e| ScoreError::Input {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let origin = Origin {
        path: &files[0].path,
        first_row: 0,
    };
    mapping
        .inputs
        .iter()
        .map(|input| {
            convert::input_tensor(input, &data, &origin, None)
                .map(|t| (input.name.clone(), t.into_host()))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Rows per second as people read them: `1.23M rows/s`.
pub fn rate(rows: u64, elapsed: Duration) -> String {
    let per_second = rows as f64 / elapsed.as_secs_f64().max(1e-9);
    if per_second >= 1e6 {
        format!("{:.2}M rows/s", per_second / 1e6)
    } else if per_second >= 1e3 {
        format!("{:.1}k rows/s", per_second / 1e3)
    } else {
        format!("{per_second:.0} rows/s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::columns::tests::io;
    use crate::server::tensor::{DataType, TensorData};

    #[test]
    fn a_small_table_becomes_request_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.csv");
        std::fs::write(&path, "id,plan,age\nA,basic,30\nB,premium,41.5\n").unwrap();
        let inputs = vec![
            io("plan", DataType::Bytes, &[-1, 1]),
            io("age", DataType::Fp32, &[-1]),
        ];
        let tensors = table_inputs(&path, inputs).unwrap().expect("named columns");
        assert_eq!(tensors[0].0, "plan");
        assert_eq!(tensors[0].1.shape, vec![2, 1]);
        assert_eq!(
            tensors[0].1.data,
            TensorData::Bytes(vec!["basic".into(), "premium".into()])
        );
        assert_eq!(tensors[1].1.shape, vec![2]);
        assert_eq!(tensors[1].1.data, TensorData::Fp32(vec![30.0, 41.5]));
        // One input whose columns the file does not name: the caller reads bare numbers.
        let one = vec![io("features", DataType::Fp32, &[-1, 3])];
        assert!(table_inputs(&path, one).unwrap().is_none());
        // Several inputs, one of them missing: named.
        let two = vec![
            io("plan", DataType::Bytes, &[-1, 1]),
            io("region", DataType::Bytes, &[-1, 1]),
        ];
        let err = table_inputs(&path, two).unwrap_err().to_string();
        assert!(err.contains("column 'region' is missing"), "{err}");
    }
}

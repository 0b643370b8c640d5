//! `ferry score`: a model over whole CSV and Parquet tables in this process, the scores written
//! beside the columns kept, progress while it runs, a summary and a run record at the end.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;

use super::args::SpecArgs;
use super::runtime;
use crate::cli::CliError;
use crate::interrupt::Interrupt;
use crate::pipeline::hashes::Hashes;
use crate::pipeline::store::Store;
use crate::runs::{self, RunRecord, ScoreInput, ScoreRun, Status};
use crate::score::{self, ColumnArgs, Options, Progress, ScoreError, Summary};
use crate::server::config::Device;
use crate::spec::{Project, TargetKind};
use crate::ui::{OutputMode, Ui, human_bytes, human_duration, print_json};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
    /// CSV, TSV or Parquet files, or directories of them (default: the spec's score.inputs).
    inputs: Vec<PathBuf>,
    /// The file to write: .csv, .tsv or .parquet (default: the spec's score.output).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// A served model's name or an .onnx file (default: score.model, else the served model).
    #[arg(short, long, value_name = "NAME|PATH")]
    model: Option<String>,
    /// Which columns fill which input: `x=f0,f1,f2,age=customer_age` (default: by name, or
    /// the model's `ferry.columns` metadata).
    #[arg(long, value_name = "IN=COL,…")]
    columns: Vec<String>,
    /// Input columns copied to the output before the scores, e.g. an id.
    #[arg(long, value_name = "COL,…", value_delimiter = ',')]
    keep: Vec<String>,
    /// The model outputs to write (default: all).
    #[arg(long, value_name = "NAME,…", value_delimiter = ',')]
    outputs: Vec<String>,
    /// Put VALUE in empty and NaN cells instead of refusing them.
    #[arg(long, value_name = "VALUE")]
    fill: Option<String>,
    /// Replace the output file if it exists.
    #[arg(long)]
    force: bool,
    /// Rows per model run (default: from the number of columns read, 1,024 to 65,536).
    #[arg(long, value_name = "ROWS")]
    batch_size: Option<usize>,
    /// ONNX Runtime threads per operator (reading and writing take a thread each besides).
    #[arg(long, value_name = "N", default_value_t = 1)]
    threads: usize,
    /// In a cluster environment (--env): score as an Indexed Job of N pods, each taking a run
    /// of whole input files (default: 1).
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
}

pub fn run(args: Args, ui: &Ui) -> Result<(), CliError> {
    let cwd = PathBuf::from(".");
    let project = if args.spec.file.exists() {
        Some(args.spec.load()?)
    } else {
        None
    };
    let in_cluster = project
        .as_ref()
        .is_some_and(|p| p.spec.target == TargetKind::Kubernetes);
    let shards = match args.shards {
        Some(0) => return Err(CliError::Usage("--shards 0: give 1 or more".into())),
        Some(n) if !in_cluster => {
            return Err(CliError::Usage(format!(
                "--shards {n} splits scoring across a cluster's pods\n  hint: add --env with a `target: kubernetes` environment, or leave --shards out to score here"
            )));
        }
        Some(n) => n,
        None => 1,
    };
    let defaults = project.as_ref().and_then(|p| p.spec.score.clone());
    let root = project.as_ref().map_or(cwd.clone(), |p| p.root.clone());
    let from_spec = |p: &str| root.join(p);

    let inputs = if args.inputs.is_empty() {
        let listed: Vec<PathBuf> = defaults
            .iter()
            .flat_map(|d| d.inputs.iter())
            .map(|p| from_spec(p))
            .collect();
        if listed.is_empty() {
            return Err(CliError::Usage(
                "no input: name CSV or Parquet files (or directories)\n  hint: ferry score data/customers.csv --output scores.parquet, or set score.inputs in ferry.yaml".into(),
            ));
        }
        listed
    } else {
        args.inputs.clone()
    };
    if !in_cluster
        && let Some(url) = inputs
            .iter()
            .find(|i| crate::score::fetch::parse(&i.to_string_lossy()).is_some())
    {
        return Err(CliError::Usage(format!(
            "input {}: URLs are fetched by the pods of a cluster scoring run\n  hint: score it in a cluster with --env ENV, or download it and score the file here",
            crate::score::fetch::redact(&url.to_string_lossy())
        )));
    }
    let output = match args.output.clone() {
        Some(o) => o,
        None => match defaults.as_ref().and_then(|d| d.output.as_deref()) {
            Some(o) => from_spec(o),
            None => {
                return Err(CliError::Usage(
                    "no output: --output FILE (.csv, .tsv or .parquet), or score.output in ferry.yaml".into(),
                ));
            }
        },
    };
    let (model, device) = resolve_model(
        args.model.as_deref(),
        defaults.as_ref().and_then(|d| d.model.as_deref()),
        project.as_ref(),
    )?;
    let mut columns = ColumnArgs::parse(&args.columns)?;
    if let Some(d) = &defaults {
        for (input, cols) in &d.columns {
            columns
                .0
                .entry(input.clone())
                .or_insert_with(|| cols.clone());
        }
    }
    let keep = if args.keep.is_empty() {
        defaults
            .as_ref()
            .map(|d| d.keep.clone())
            .unwrap_or_default()
    } else {
        args.keep.clone()
    };
    if let Some(rows) = args.batch_size
        && !(1..=score::MAX_BATCH_ROWS).contains(&rows)
    {
        return Err(CliError::Usage(format!(
            "--batch-size {rows}: give 1 to {} rows",
            score::MAX_BATCH_ROWS
        )));
    }
    let options = Options {
        inputs,
        output,
        model,
        columns,
        keep,
        outputs: args.outputs.clone(),
        fill: args.fill.clone(),
        force: args.force,
        batch_rows: args.batch_size,
        threads: args.threads.max(1),
        device,
    };

    let started = runs::now_rfc3339();
    let clock = Instant::now();
    let id = runs::new_id();
    let result = match project.as_ref().filter(|_| in_cluster) {
        Some(p) => runtime()?
            .block_on(crate::cluster::score::score(p, &options, shards, &id, ui))
            .map(|s| (s.summary, Some(s.image)))
            .map_err(CliError::from),
        None => {
            let meter = Arc::new(Meter::new(ui));
            let result = run_scoring(&options, Arc::clone(&meter));
            meter.clear();
            result.map(|s| (s, None)).map_err(CliError::from)
        }
    };
    match result {
        Ok((summary, image)) => {
            let outcome = Outcome {
                id: &id,
                started: &started,
                took: clock.elapsed(),
                status: Status::Succeeded,
                error: None,
                image: image.unwrap_or_default(),
            };
            let record = project.as_ref().map(|p| record(p, &outcome, &summary));
            let saved = match record {
                Some(Ok(r)) => Some(r.save(&root).map_err(|e| CliError::Usage(e.to_string()))?),
                Some(Err(e)) => {
                    ui.warn(format!("the run was not recorded: {e}"));
                    None
                }
                None => None,
            };
            report(
                ui,
                &summary,
                saved.as_deref(),
                project.as_ref().map(|_| id.as_str()),
            );
            Ok(())
        }
        Err(e) => {
            if let Some(p) = &project {
                let status = if e.exit_code() == 130 {
                    Status::Interrupted
                } else {
                    Status::Failed
                };
                let reason = e.to_string();
                let outcome = Outcome {
                    id: &id,
                    started: &started,
                    took: clock.elapsed(),
                    status,
                    error: Some(&reason),
                    image: String::new(),
                };
                let failed = failed_record(p, &outcome, &options);
                let _ = failed.save(&root);
            }
            Err(e)
        }
    }
}

/// How long Ctrl-C waits for scoring to stop between batches before leaving without it.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// Scores on a blocking thread so that Ctrl-C, caught here, can stop it between batches.
fn run_scoring(options: &Options, meter: Arc<Meter>) -> Result<Summary, ScoreError> {
    let rt = runtime().map_err(|e| ScoreError::Inference {
        message: e.to_string(),
    })?;
    let options = options.clone();
    let output = options.output.clone();
    rt.block_on(async move {
        let cancel = Arc::new(AtomicBool::new(false));
        let mut interrupt = Interrupt::new().map_err(|e| ScoreError::Inference {
            message: e.to_string(),
        })?;
        let mut task = {
            let cancel = Arc::clone(&cancel);
            tokio::task::spawn_blocking(move || score::score(&options, meter.as_ref(), &cancel))
        };
        let joined = tokio::select! {
            r = &mut task => r,
            _ = interrupt.recv() => {
                cancel.store(true, Ordering::Relaxed);
                // Scoring stops at its next batch; a read blocked on a slow disk or network
                // file may not get there soon, and the user asked to stop now.
                match tokio::time::timeout(STOP_WAIT, &mut task).await {
                    Ok(r) => r,
                    Err(_) => {
                        score::sink::remove_partial(&output);
                        return Err(ScoreError::Interrupted);
                    }
                }
            }
        };
        joined.unwrap_or_else(|e| {
            Err(ScoreError::Inference {
                message: format!("the scoring thread failed: {e}"),
            })
        })
    })
}

/// A served model's name (the main one or one of `serve.models`), or a path to an ONNX file;
/// with neither, the model the spec serves.
fn resolve_model(
    arg: Option<&str>,
    spec_default: Option<&str>,
    project: Option<&Project>,
) -> Result<(PathBuf, Device), CliError> {
    let serve = project.and_then(|p| p.spec.serve.as_ref());
    let root = project.map_or_else(|| PathBuf::from("."), |p| p.root.clone());
    let by_name = |name: &str| -> Option<PathBuf> {
        let p = project?;
        let serve = p.spec.serve.as_ref()?;
        let main = serve.name.clone().unwrap_or_else(|| p.spec.name.clone());
        if name == main {
            return Some(serve.model.under(&root));
        }
        serve
            .models
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.model.under(&root))
    };
    let pick = |name: &str, base: &Path| -> Result<PathBuf, CliError> {
        if let Some(path) = by_name(name) {
            return Ok(path);
        }
        let path = base.join(name);
        if name.ends_with(".onnx") || name.contains('/') || path.is_file() {
            return Ok(path);
        }
        let served: Vec<String> = project
            .and_then(|p| {
                let serve = p.spec.serve.as_ref()?;
                let mut names = vec![serve.name.clone().unwrap_or_else(|| p.spec.name.clone())];
                names.extend(serve.models.iter().map(|m| m.name.clone()));
                Some(names)
            })
            .unwrap_or_default();
        Err(CliError::Usage(format!(
            "model '{name}' is neither a served model ({}) nor an .onnx file",
            if served.is_empty() {
                "the spec serves none".to_string()
            } else {
                served.join(", ")
            }
        )))
    };
    let path = match (arg, spec_default) {
        (Some(name), _) => pick(name, Path::new("."))?,
        (None, Some(name)) => pick(name, &root)?,
        (None, None) => match serve {
            Some(s) => s.model.under(&root),
            None => {
                return Err(CliError::Usage(
                    "which model? --model PATH.onnx (or a served model's name), or serve.model / score.model in ferry.yaml".into(),
                ));
            }
        },
    };
    // The CPU always: scoring runs where the data is, which need not have the serving GPU.
    Ok((path, Device::Cpu))
}

/// When and how a scoring run went, for its record.
struct Outcome<'a> {
    id: &'a str,
    started: &'a str,
    took: Duration,
    status: Status,
    error: Option<&'a str>,
    /// The serving image a cluster run's pods ran; empty for a run here.
    image: String,
}

impl Outcome<'_> {
    /// A run record of scoring: no image, no log; what it read and wrote is in `score`.
    fn record(&self, project: &Project, outputs: Vec<runs::Output>, score: ScoreRun) -> RunRecord {
        RunRecord {
            id: self.id.to_string(),
            status: self.status,
            started: self.started.to_string(),
            duration_secs: (self.took.as_secs_f64() * 100.0).round() / 100.0,
            env: project.spec.env.clone(),
            image: self.image.clone(),
            image_id: String::new(),
            spec_hash: String::new(),
            // A presigned URL's query is a credential: the record keeps the URL without it.
            command: std::env::args()
                .map(|a| match crate::score::fetch::parse(&a) {
                    Some(_) => crate::score::fetch::redact(&a),
                    None => a,
                })
                .collect(),
            exit_code: Some(match self.status {
                Status::Succeeded => 0,
                Status::Interrupted => 130,
                Status::Failed => 1,
            }),
            reason: self.error.map(ToString::to_string),
            outputs,
            log: String::new(),
            notebook: None,
            steps: Vec::new(),
            score: Some(score),
        }
    }
}

fn record(
    project: &Project,
    outcome: &Outcome<'_>,
    summary: &Summary,
) -> Result<RunRecord, String> {
    let root = &project.root;
    let mut hashes = Hashes::load(Store::open(root).dir());
    let mut inputs = Vec::with_capacity(summary.inputs.len());
    for input in &summary.inputs {
        let text = input.path.to_string_lossy();
        // A URL is named as it is; a file by its path in the project.
        let path = match crate::score::fetch::parse(&text) {
            Some(_) => text.into_owned(),
            None => runs::relative(root, &absolute(&input.path)),
        };
        // Known already when a cluster run checked it (or its pod fetched it).
        let sha256 = match &input.sha256 {
            Some(s) => s.clone(),
            None => hashes.file(&input.path).map_err(|e| e.to_string())?,
        };
        inputs.push(ScoreInput {
            path,
            sha256: Some(sha256),
            etag: input.etag.clone(),
            bytes: input.bytes,
            rows: input.rows,
        });
    }
    hashes.save();
    let output = runs::relative(root, &absolute(&summary.output));
    let outputs = vec![runs::Output {
        path: output.clone(),
        sha256: summary.output_sha256.clone(),
        size: summary.output_bytes,
    }];
    Ok(outcome.record(
        project,
        outputs,
        ScoreRun {
            model: runs::relative(root, &absolute(&summary.model)),
            model_sha256: summary.model_sha256.clone(),
            inputs,
            output,
            output_sha256: Some(summary.output_sha256.clone()),
            rows: summary.rows,
            rows_per_second: summary.rows_per_second.round(),
        },
    ))
}

fn failed_record(project: &Project, outcome: &Outcome<'_>, options: &Options) -> RunRecord {
    let root = &project.root;
    outcome.record(
        project,
        Vec::new(),
        ScoreRun {
            model: runs::relative(root, &absolute(&options.model)),
            model_sha256: String::new(),
            inputs: options
                .inputs
                .iter()
                .map(|p| ScoreInput {
                    path: match crate::score::fetch::parse(&p.to_string_lossy()) {
                        Some(_) => crate::score::fetch::redact(&p.to_string_lossy()),
                        None => runs::relative(root, &absolute(p)),
                    },
                    sha256: None,
                    etag: None,
                    bytes: 0,
                    rows: 0,
                })
                .collect(),
            output: runs::relative(root, &absolute(&options.output)),
            output_sha256: None,
            rows: 0,
            rows_per_second: 0.0,
        },
    )
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn report(ui: &Ui, summary: &Summary, record: Option<&Path>, id: Option<&str>) {
    if ui.mode() == OutputMode::Json {
        let mut value = serde_json::to_value(summary).unwrap_or_default();
        if let (Some(obj), Some(id)) = (value.as_object_mut(), id) {
            obj.insert("run".into(), id.into());
        }
        print_json(&value);
        return;
    }
    ui.done(format!(
        "scored {} rows in {} ({}) → {} ({}, {} columns: {})",
        group(summary.rows),
        human_duration(Duration::from_secs_f64(summary.seconds)),
        score::rate(summary.rows, Duration::from_secs_f64(summary.seconds)),
        summary.output.display(),
        human_bytes(summary.output_bytes),
        summary.columns.len(),
        summary.columns.join(", ")
    ));
    ui.info(format!("  sha256 {}", summary.output_sha256));
    if let (Some(id), Some(_)) = (id, record) {
        ui.info(format!("  run {id} (ferry runs show {id})"));
    }
}

/// 10000000 as 10,000,000.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The progress bar: bytes read drive it (rows are unknown until a CSV file is read), rows and
/// their rate are its message.
struct Meter {
    bar: Option<ProgressBar>,
    started: Instant,
}

impl Meter {
    fn new(ui: &Ui) -> Meter {
        let bar = ui.bar("scoring");
        Meter {
            bar,
            started: Instant::now(),
        }
    }

    fn clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Meter {
    fn start(&self, bytes: u64, _rows: Option<u64>) {
        if let Some(bar) = &self.bar {
            bar.set_length(bytes.max(1));
            bar.enable_steady_tick(Duration::from_millis(200));
        }
    }

    fn advance(&self, rows: u64, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
            bar.set_message(format!(
                "{} rows, {}",
                group(rows),
                score::rate(rows, self.started.elapsed())
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(10_000_000), "10,000,000");
    }
}

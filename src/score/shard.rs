//! Scoring in a cluster, the parts free of any cluster: the plan that an Indexed Job's pods and
//! this machine both read (which input files each shard scores, and how), the split of the
//! inputs into shards, and one shard as a scoring pod runs it (`ferry-serve score-shard`).
//!
//! A shard is a run of whole input files, in input order, so the shards' outputs joined in
//! shard order are the rows in input order. Every input is checked against the sha256 this
//! machine computed before a row of it is scored: the pod scores the bytes that were planned.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::fetch::{FetchError, Fetched, UrlInput};
use super::{ColumnArgs, Options, Progress, ScoreError};
use crate::server::config::Device;

/// The environment variable the plan reaches the scoring pods in.
pub const PLAN_ENV: &str = "FERRY_SCORE_PLAN";
/// Where a scoring pod works: the shard's inputs under `in/`, its output and summary under
/// `out/`.
pub const POD_DIR: &str = "/score";
/// What a shard writes beside its part of the output.
pub const SUMMARY_FILE: &str = "summary.json";

/// What every shard of one scoring run does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardPlan {
    /// The model, as a path in the serving image.
    pub model: String,
    /// Every input file, in input order.
    pub inputs: Vec<PlanInput>,
    /// Per shard, the indexes into `inputs` it scores: consecutive, in order.
    pub shards: Vec<Vec<usize>>,
    /// `csv`, `tsv` or `parquet`: the format of every part, and of the joined output.
    pub format: String,
    #[serde(default)]
    pub columns: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub keep: Vec<String>,
    #[serde(default)]
    pub outputs: Vec<String>,
    #[serde(default)]
    pub fill: Option<String>,
    #[serde(default)]
    pub batch_rows: Option<usize>,
    pub threads: usize,
}

/// One input file of the plan: a file of the project (so of the project image), or a URL the
/// pod fetches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanInput {
    /// The file's path in the project, or the URL without query or credentials: for messages
    /// and the record.
    pub name: String,
    /// What the pod fetches (query and all), for an input given as a URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Always known for a file; for a URL, when it ends in `#sha256=HEX`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Known for a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

impl PlanInput {
    /// Where a scoring pod finds input `index`: numbered, with the extension that says its
    /// format (two inputs may share a file name).
    pub fn pod_name(&self, index: usize) -> String {
        let ext = Path::new(&self.name)
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        format!("{index}.{ext}")
    }
}

impl ShardPlan {
    /// The file name of a shard's part of the output.
    pub fn part_name(&self) -> String {
        format!("part.{}", self.format)
    }

    /// The inputs shard `index` scores, by name, for messages.
    pub fn describe_shard(&self, index: usize) -> String {
        let names: Vec<&str> = self
            .shards
            .get(index)
            .into_iter()
            .flatten()
            .filter_map(|i| self.inputs.get(*i).map(|p| p.name.as_str()))
            .collect();
        match names.as_slice() {
            [] => "no input".into(),
            [one] => one.to_string(),
            [first, .., last] => format!("{} inputs, {first} to {last}", names.len()),
        }
    }
}

/// Splits files of these sizes into at most `shards` runs of consecutive files, each about
/// as large as the others, none empty.
pub fn split(sizes: &[u64], shards: usize) -> Vec<Vec<usize>> {
    let n = shards.clamp(1, sizes.len().max(1));
    if sizes.is_empty() {
        return vec![];
    }
    let total: u128 = sizes.iter().map(|s| u128::from(*s)).sum();
    let mut out: Vec<Vec<usize>> = Vec::with_capacity(n);
    let mut current = Vec::new();
    let mut seen: u128 = 0;
    for (i, size) in sizes.iter().enumerate() {
        current.push(i);
        seen += u128::from(*size);
        let shard = out.len();
        let files_left = sizes.len() - i - 1;
        let shards_left = n - shard - 1;
        if shards_left == 0 {
            continue;
        }
        // Close this shard once it holds its share of the bytes, or when every file left is
        // needed to give each later shard one.
        let share = total * (shard as u128 + 1) / n as u128;
        if seen >= share || files_left == shards_left {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// What a shard did, written beside its part and read back by this machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardSummary {
    pub shard: usize,
    pub rows: u64,
    /// Rows per input, in the shard's order.
    pub input_rows: Vec<u64>,
    pub model_sha256: String,
    /// What the shard fetched of its URL inputs, by input index.
    #[serde(default)]
    pub fetched: BTreeMap<usize, Fetched>,
    /// The part's columns, in order.
    pub columns: Vec<String>,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("the scoring plan in {PLAN_ENV} cannot be read: {0}")]
    Plan(String),
    #[error("shard {index} is not in the plan, which has {shards}")]
    NoShard { index: usize, shards: usize },
    #[error(
        "input {name}: the pod's copy is {actual_bytes} bytes with sha256 {actual}, but the planned file is {bytes} bytes with sha256 {sha256}; it was not scored"
    )]
    Changed {
        name: String,
        bytes: u64,
        sha256: String,
        actual_bytes: u64,
        actual: String,
    },
    #[error("input {name}: {message}")]
    Input { name: String, message: String },
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Score(#[from] ScoreError),
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
}

/// Scores shard `index` of `plan`: its inputs from `dir/in/`, checked, into `dir/out/part.*`,
/// with the summary in `dir/out/summary.json`.
pub fn run(
    plan: &ShardPlan,
    index: usize,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<ShardSummary, ShardError> {
    let files = plan.shards.get(index).ok_or(ShardError::NoShard {
        index,
        shards: plan.shards.len(),
    })?;
    let started = Instant::now();
    let mut paths = Vec::with_capacity(files.len());
    let mut fetched = BTreeMap::new();
    for &i in files {
        let input = plan.inputs.get(i).ok_or_else(|| {
            ShardError::Plan(format!("shard {index} names input {i}, which it lacks"))
        })?;
        let path = dir.join("in").join(input.pod_name(i));
        match &input.url {
            Some(url) => {
                let into = dir.join("in");
                std::fs::create_dir_all(&into).map_err(|e| ShardError::Io {
                    path: into.clone(),
                    message: e.to_string(),
                })?;
                eprintln!("fetching {}", input.name);
                let got = super::fetch::fetch(
                    &UrlInput {
                        url: url.clone(),
                        sha256: input.sha256.clone(),
                    },
                    &path,
                )?;
                eprintln!(
                    "fetched {} ({} bytes, sha256 {})",
                    input.name, got.bytes, got.sha256
                );
                fetched.insert(i, got);
            }
            None => check(input, &path)?,
        }
        paths.push(path);
    }
    let out = dir.join("out");
    std::fs::create_dir_all(&out).map_err(|e| ShardError::Io {
        path: out.clone(),
        message: e.to_string(),
    })?;
    let options = Options {
        inputs: paths,
        output: out.join(plan.part_name()),
        model: PathBuf::from(&plan.model),
        columns: ColumnArgs(plan.columns.clone()),
        keep: plan.keep.clone(),
        outputs: plan.outputs.clone(),
        fill: plan.fill.clone(),
        force: true,
        batch_rows: plan.batch_rows,
        threads: plan.threads.max(1),
        device: Device::Cpu,
    };
    let summary = super::score(&options, progress, &AtomicBool::new(false)).map_err(|e| {
        // Messages name the pod's numbered copies; the user knows the files by their names.
        rename_inputs(e, plan, files, dir)
    })?;
    let done = ShardSummary {
        shard: index,
        rows: summary.rows,
        input_rows: summary.inputs.iter().map(|i| i.rows).collect(),
        model_sha256: summary.model_sha256,
        fetched,
        columns: summary.columns,
        seconds: started.elapsed().as_secs_f64(),
    };
    let path = out.join(SUMMARY_FILE);
    let text = serde_json::to_vec_pretty(&done).map_err(|e| ShardError::Io {
        path: path.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&path, text).map_err(|e| ShardError::Io {
        path,
        message: e.to_string(),
    })?;
    Ok(done)
}

/// The input's size and sha256, against the plan's.
fn check(input: &PlanInput, path: &Path) -> Result<(), ShardError> {
    let io = |e: std::io::Error| ShardError::Input {
        name: input.name.clone(),
        message: format!("{}: {e}", path.display()),
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    let actual = hex::encode(hasher.finalize());
    if Some(bytes) != input.bytes || Some(&actual) != input.sha256.as_ref() {
        return Err(ShardError::Changed {
            name: input.name.clone(),
            bytes: input.bytes.unwrap_or_default(),
            sha256: input.sha256.clone().unwrap_or_default(),
            actual_bytes: bytes,
            actual,
        });
    }
    Ok(())
}

fn rename_inputs(e: ScoreError, plan: &ShardPlan, files: &[usize], dir: &Path) -> ShardError {
    let name_of = |path: &Path| -> Option<PathBuf> {
        files.iter().find_map(|&i| {
            let input = plan.inputs.get(i)?;
            (path == dir.join("in").join(input.pod_name(i))).then(|| PathBuf::from(&input.name))
        })
    };
    let e = match e {
        ScoreError::Input { path, message } => ScoreError::Input {
            path: name_of(&path).unwrap_or(path),
            message,
        },
        ScoreError::BadParquet { path, message } => ScoreError::BadParquet {
            path: name_of(&path).unwrap_or(path),
            message,
        },
        ScoreError::MissingColumn {
            path,
            missing,
            inputs,
            columns,
            hint,
        } => ScoreError::MissingColumn {
            path: name_of(&path).unwrap_or(path),
            missing,
            inputs,
            columns,
            hint,
        },
        ScoreError::Cast {
            path,
            row,
            column,
            value,
            datatype,
        } => ScoreError::Cast {
            path: name_of(&path).unwrap_or(path),
            row,
            column,
            value,
            datatype,
        },
        ScoreError::Cell {
            path,
            row,
            column,
            problem,
        } => ScoreError::Cell {
            path: name_of(&path).unwrap_or(path),
            row,
            column,
            problem,
        },
        other => other,
    };
    ShardError::Score(e)
}

/// Progress as a pod's log shows it: a line every few seconds.
struct LogLines {
    started: Instant,
    last: AtomicU64,
}

impl Progress for LogLines {
    fn start(&self, bytes: u64, rows: Option<u64>) {
        match rows {
            Some(r) => eprintln!("scoring {r} rows ({bytes} bytes)"),
            None => eprintln!("scoring {bytes} bytes"),
        }
    }

    fn advance(&self, rows: u64, _bytes: u64) {
        let now = self.started.elapsed().as_secs();
        let last = self.last.load(Ordering::Relaxed);
        if now >= last + 10 {
            self.last.store(now, Ordering::Relaxed);
            eprintln!(
                "{rows} rows scored, {}",
                super::rate(rows, self.started.elapsed())
            );
        }
    }
}

/// `ferry-serve score-shard [--index N] [--dir DIR]`: the plan from `FERRY_SCORE_PLAN`, the
/// shard from `--index` or the Job's `JOB_COMPLETION_INDEX`.
pub fn main(args: &[&str]) -> i32 {
    let usage =
        "usage: ferry-serve score-shard [--index N] [--dir DIR] (the plan in FERRY_SCORE_PLAN)";
    let mut index = std::env::var("JOB_COMPLETION_INDEX").ok();
    let mut dir = POD_DIR.to_string();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match *arg {
            "--index" => index = rest.next().map(|s| s.to_string()),
            "--dir" => match rest.next() {
                Some(d) => dir = d.to_string(),
                None => {
                    eprintln!("{usage}");
                    return 2;
                }
            },
            _ => {
                eprintln!("{usage}");
                return 2;
            }
        }
    }
    let Some(index) = index.and_then(|i| i.parse::<usize>().ok()) else {
        eprintln!("error: no shard index: pass --index N or set JOB_COMPLETION_INDEX\n{usage}");
        return 2;
    };
    let plan = match std::env::var(PLAN_ENV)
        .map_err(|e| ShardError::Plan(e.to_string()))
        .and_then(|t| {
            serde_json::from_str::<ShardPlan>(&t).map_err(|e| ShardError::Plan(e.to_string()))
        }) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let progress = LogLines {
        started: Instant::now(),
        last: AtomicU64::new(0),
    };
    match run(&plan, index, Path::new(&dir), &progress) {
        Ok(s) => {
            eprintln!(
                "shard {index}: {} rows in {:.1}s ({})",
                s.rows,
                s.seconds,
                super::rate(s.rows, std::time::Duration::from_secs_f64(s.seconds))
            );
            0
        }
        Err(e) => {
            eprintln!("error: shard {index} ({}): {e}", plan.describe_shard(index));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_consecutive_balanced_and_never_empty() {
        assert_eq!(split(&[10, 10, 10, 10], 2), vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(split(&[10, 10, 10], 5), vec![vec![0], vec![1], vec![2]]);
        assert_eq!(split(&[100, 1, 1, 1], 2), vec![vec![0], vec![1, 2, 3]]);
        assert_eq!(split(&[1, 1, 1, 100], 2), vec![vec![0, 1, 2], vec![3]]);
        assert_eq!(
            split(&[1, 1, 1, 100], 4),
            vec![vec![0], vec![1], vec![2], vec![3]]
        );
        assert_eq!(split(&[0, 0, 0], 2), vec![vec![0], vec![1, 2]]);
        assert_eq!(split(&[5], 1), vec![vec![0]]);
        assert!(split(&[], 3).is_empty());
        for n in 1..8 {
            let sizes = [3, 9, 1, 4, 4, 7, 2];
            let s = split(&sizes, n);
            assert_eq!(s.len(), n.min(sizes.len()));
            assert_eq!(s.concat(), (0..sizes.len()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_shard_is_described_by_its_inputs() {
        let input = |name: &str| PlanInput {
            name: name.into(),
            url: None,
            sha256: None,
            bytes: None,
        };
        let plan = ShardPlan {
            model: "/models/m.onnx".into(),
            inputs: vec![
                input("data/a.csv"),
                input("data/b.csv"),
                input("data/c.PARQUET"),
            ],
            shards: vec![vec![0, 1], vec![2]],
            format: "csv".into(),
            columns: BTreeMap::new(),
            keep: vec![],
            outputs: vec![],
            fill: None,
            batch_rows: None,
            threads: 1,
        };
        assert_eq!(plan.describe_shard(0), "2 inputs, data/a.csv to data/b.csv");
        assert_eq!(plan.describe_shard(1), "data/c.PARQUET");
        assert_eq!(plan.inputs[2].pod_name(2), "2.parquet");
        let text = serde_json::to_string(&plan).unwrap();
        assert_eq!(serde_json::from_str::<ShardPlan>(&text).unwrap(), plan);
    }
}

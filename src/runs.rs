//! Training runs, as both loops (Docker and a cluster) keep them: the record
//! `.ferry/runs/<id>/run.json` with the run's log beside it, the placing of a run's outputs into
//! the project, and the ways a run fails. Records are written atomically (temp file + rename), so
//! an interrupted ferry never leaves half a record.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::onnx::OnnxError;
use crate::spec::RelPath;
use crate::state::STATE_DIR;

/// Why a training run failed, or its record or outputs could not be written.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("training failed: {reason}\n  log: {}", log.display())]
    TrainFailed {
        /// The container's exit code, passed on as ferry's own.
        code: i64,
        reason: String,
        log: PathBuf,
    },
    #[error("training produced an invalid output: {source}\n  log: {}", log.display())]
    BadModel {
        #[source]
        source: OnnxError,
        log: PathBuf,
    },
    #[error("training declares ONNX outputs, which are checked with ONNX Runtime: {source}")]
    OnnxRuntime {
        #[source]
        source: OnnxError,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RunError {
    pub(crate) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RunError {
        let path = path.to_path_buf();
        move |source| RunError::Io { what, path, source }
    }

    /// The process exit code this error should give: a failed training's own.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::TrainFailed { code, .. } if (1..=255).contains(code) => *code as i32,
            _ => 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Succeeded,
    Failed,
    Interrupted,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub status: Status,
    /// RFC 3339, UTC.
    pub started: String,
    pub duration_secs: f64,
    pub env: Option<String>,
    pub image: String,
    pub image_id: String,
    pub spec_hash: String,
    pub command: Vec<String>,
    pub exit_code: Option<i64>,
    /// Why a run failed, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Only for a successful run: a failed run records no artifact.
    pub outputs: Vec<Output>,
    /// The log file, relative to the project.
    pub log: String,
    /// A notebook run's executed notebook (relative to the project), kept whether the run
    /// succeeded or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notebook: Option<String>,
    /// A pipeline run's steps, in the order they were decided; empty for `ferry train`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepRun>,
    /// A scoring run's model, inputs and output, by sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<ScoreRun>,
}

/// What `ferry score` read and wrote.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScoreRun {
    pub model: String,
    pub model_sha256: String,
    pub inputs: Vec<ScoreInput>,
    pub output: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_sha256: Option<String>,
    pub rows: u64,
    pub rows_per_second: f64,
}

/// One table scored: a file by its sha256, or a URL by what its server said of it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScoreInput {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A URL's ETag, as its server gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    pub bytes: u64,
    pub rows: u64,
}

/// How one step of a pipeline run went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    /// Its command ran and succeeded.
    Ran,
    /// Its outputs came from the cache.
    Cached,
    Failed,
    /// Not run: a step it needs failed, or the run stopped first.
    Skipped,
    Interrupted,
}

impl StepStatus {
    pub fn succeeded(self) -> bool {
        matches!(self, StepStatus::Ran | StepStatus::Cached)
    }
}

/// One step of a pipeline run: what it read and wrote (by sha256), why it ran, its checks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepRun {
    pub name: String,
    pub status: StepStatus,
    /// The steps whose outputs it read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// The cache key (absent when the step never got as far as reading its inputs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Why it ran, was skipped or failed, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub duration_secs: f64,
    /// The image it ran in (absent for a cached step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Output>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<Output>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<crate::pipeline::checks::CheckResult>,
    /// Its log, relative to the project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// A notebook step's executed notebook, relative to the project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notebook: Option<String>,
}

/// A finished run and where its record is.
#[derive(Clone, Debug, Serialize)]
pub struct TrainResult {
    pub run: RunRecord,
    pub record: PathBuf,
}

pub fn runs_dir(root: &Path) -> PathBuf {
    root.join(STATE_DIR).join("runs")
}

/// A new, sortable run id: `20261123-114502-123-3f9a` (date, time, milliseconds, random).
/// The milliseconds keep two runs of the same second in order; the suffix keeps ids unique.
pub fn new_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let (date, time) = civil(now.as_secs());
    let suffix: u16 = rand::random();
    format!(
        "{}-{}-{:03}-{suffix:04x}",
        date.replace('-', ""),
        time.replace(':', ""),
        now.subsec_millis()
    )
}

/// Now as RFC 3339.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (d, t) = civil(secs);
    format!("{d}T{t}Z")
}

/// ("YYYY-MM-DD", "HH:MM:SS") in UTC for a Unix time (Howard Hinnant's days-to-civil).
fn civil(secs: u64) -> (String, String) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60),
    )
}

impl RunRecord {
    /// A succeeded run with nothing in it but its id, for tests to fill in.
    #[cfg(test)]
    pub(crate) fn blank(id: &str) -> RunRecord {
        RunRecord {
            id: id.into(),
            status: Status::Succeeded,
            started: String::new(),
            duration_secs: 0.0,
            env: None,
            image: String::new(),
            image_id: String::new(),
            spec_hash: String::new(),
            command: vec![],
            exit_code: None,
            reason: None,
            outputs: vec![],
            log: String::new(),
            notebook: None,
            steps: vec![],
            score: None,
        }
    }

    /// Writes `run.json` into the run's directory, atomically.
    pub fn save(&self, root: &Path) -> Result<PathBuf, RunError> {
        let dir = runs_dir(root).join(&self.id);
        std::fs::create_dir_all(&dir).map_err(RunError::io("cannot create", &dir))?;
        let path = dir.join("run.json");
        let tmp = dir.join(".run.json.tmp");
        let json = serde_json::to_vec_pretty(self).unwrap_or_default();
        std::fs::write(&tmp, json).map_err(RunError::io("cannot write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(RunError::io("cannot write", &path))?;
        Ok(path)
    }
}

/// Every readable run record, newest first. Unreadable ones are skipped, never fatal: a list
/// of past runs must not fail because one file was damaged.
pub fn list(root: &Path) -> Vec<RunRecord> {
    let Ok(entries) = std::fs::read_dir(runs_dir(root)) else {
        return Vec::new();
    };
    let mut runs: Vec<RunRecord> = entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("run.json")).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    runs.sort_by(|a, b| b.id.cmp(&a.id));
    runs
}

/// `path` as the project names it: relative to `root` when inside it.
pub fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Moves one output from staging to its place in the project, replacing what was there;
/// returns where it now is.
pub fn place_output(staging: &Path, root: &Path, out: &RelPath) -> Result<PathBuf, RunError> {
    let from = out.under(staging);
    let to = out.under(root);
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(RunError::io("cannot create", parent))?;
    }
    if from.is_dir() && to.exists() {
        std::fs::remove_dir_all(&to).map_err(RunError::io("cannot replace", &to))?;
    }
    std::fs::rename(&from, &to).map_err(RunError::io("cannot move output to", &to))?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), ("1970-01-01".into(), "00:00:00".into()));
        assert_eq!(
            civil(1_795_435_200),
            ("2026-11-23".into(), "12:00:00".into())
        );
        assert_eq!(civil(951_782_400).0, "2000-02-29");
    }

    #[test]
    fn ids_are_date_time_millis_then_a_random_suffix() {
        let id = new_id();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts.len(), 4, "{id}");
        assert_eq!(parts[0], runs_date_today(), "{id}");
        assert!(
            parts[1].len() == 6 && parts[1].chars().all(|c| c.is_ascii_digit()),
            "{id}"
        );
        assert!(
            parts[2].len() == 3 && parts[2].chars().all(|c| c.is_ascii_digit()),
            "{id}"
        );
        assert!(
            parts[3].len() == 4 && parts[3].chars().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
    }

    #[test]
    fn ids_of_the_same_second_sort_in_order() {
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(new_id());
            std::thread::sleep(std::time::Duration::from_millis(3));
        }
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    fn runs_date_today() -> String {
        now_rfc3339()[..10].replace('-', "")
    }

    #[test]
    fn records_round_trip_and_list_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mk = |id: &str, status| RunRecord {
            id: id.into(),
            status,
            started: now_rfc3339(),
            duration_secs: 1.5,
            env: None,
            image: "ferry/x:1".into(),
            image_id: "sha256:1".into(),
            spec_hash: "sha256:2".into(),
            command: vec!["python".into()],
            exit_code: Some(0),
            reason: None,
            outputs: vec![],
            log: "x".into(),
            notebook: None,
            steps: vec![],
            score: None,
        };
        mk("20260101-000000-0001", Status::Succeeded)
            .save(dir.path())
            .unwrap();
        mk("20260102-000000-0001", Status::Failed)
            .save(dir.path())
            .unwrap();
        std::fs::create_dir_all(runs_dir(dir.path()).join("broken")).unwrap();
        std::fs::write(runs_dir(dir.path()).join("broken/run.json"), "{").unwrap();
        let l = list(dir.path());
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].status, Status::Failed);
        assert!(
            !runs_dir(dir.path())
                .join("20260101-000000-0001/.run.json.tmp")
                .exists()
        );
    }
}

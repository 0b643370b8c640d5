//! The record of a cluster run, written as a local run writes it: staging directory, log and
//! `run.json` under `.ferry/runs/<id>/`, and how each way of failing is recorded and reported.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use crate::cluster::ClusterError;
use crate::interrupt::Interrupted;
use crate::kube::KubeError;
use crate::onnx::OnnxError;
use crate::plan::Workload;
use crate::runs::{self, Output, RunError, RunRecord, Status};
use crate::spec::Project;

pub(super) struct Run<'a> {
    project: &'a Project,
    id: String,
    started: String,
    clock: Instant,
    image: String,
    image_id: String,
    spec_hash: String,
    command: Vec<String>,
    pub(super) dir: PathBuf,
    pub(super) staging: PathBuf,
    pub(super) log_path: PathBuf,
    log: std::sync::Mutex<std::fs::File>,
    /// Where a notebook run's executed notebook is kept.
    pub(super) notebook: Option<PathBuf>,
}

/// How a run that did not succeed ended.
pub(super) enum Failure {
    Interrupted,
    /// The training command failed: its exit code and why.
    Train {
        code: i64,
        reason: String,
    },
    /// A declared output is missing.
    Missing(String),
    BadModel {
        output: String,
        source: OnnxError,
    },
    Error(ClusterError),
}

impl Failure {
    /// Why the run failed, in words (for a step's record).
    pub(super) fn describe(&self) -> String {
        match self {
            Failure::Interrupted => "interrupted".into(),
            Failure::Train { reason, .. } | Failure::Missing(reason) => reason.clone(),
            Failure::BadModel { output, source } => {
                format!("{output} does not load in ONNX Runtime: {source}")
            }
            Failure::Error(e) => e.to_string(),
        }
    }
}

impl From<ClusterError> for Failure {
    fn from(e: ClusterError) -> Failure {
        Failure::Error(e)
    }
}

impl From<KubeError> for Failure {
    fn from(e: KubeError) -> Failure {
        Failure::Error(e.into())
    }
}

impl<'a> Run<'a> {
    pub(super) fn new(
        project: &'a Project,
        id: &str,
        work: &Workload,
        image: &str,
        image_id: &str,
        spec_hash: &str,
    ) -> Result<Run<'a>, RunError> {
        let dir = runs::runs_dir(&project.root).join(id);
        let staging = dir.join("out");
        std::fs::create_dir_all(&staging).map_err(RunError::io("cannot create", &staging))?;
        let log_path = dir.join("train.log");
        let log =
            std::fs::File::create(&log_path).map_err(RunError::io("cannot create", &log_path))?;
        Ok(Run {
            project,
            id: id.to_string(),
            started: runs::now_rfc3339(),
            clock: Instant::now(),
            image: image.to_string(),
            image_id: image_id.to_string(),
            spec_hash: spec_hash.to_string(),
            command: work.argv.clone(),
            staging,
            log_path,
            log: std::sync::Mutex::new(log),
            notebook: work.notebook.as_ref().map(|nb| {
                dir.join(
                    nb.executed
                        .as_str()
                        .rsplit('/')
                        .next()
                        .unwrap_or("notebook.ipynb"),
                )
            }),
            dir,
        })
    }

    pub(super) fn record(
        &self,
        status: Status,
        exit_code: Option<i64>,
        reason: Option<String>,
        outputs: Vec<Output>,
    ) -> RunRecord {
        RunRecord {
            id: self.id.clone(),
            status,
            started: self.started.clone(),
            duration_secs: (self.clock.elapsed().as_secs_f64() * 100.0).round() / 100.0,
            env: self.project.spec.env.clone(),
            image: self.image.clone(),
            image_id: self.image_id.clone(),
            spec_hash: self.spec_hash.clone(),
            command: self.command.clone(),
            exit_code,
            reason,
            outputs,
            log: self
                .log_path
                .strip_prefix(&self.project.root)
                .unwrap_or(&self.log_path)
                .to_string_lossy()
                .into_owned(),
            notebook: self.notebook.as_ref().filter(|p| p.exists()).map(|p| {
                p.strip_prefix(&self.project.root)
                    .unwrap_or(p)
                    .to_string_lossy()
                    .into_owned()
            }),
            steps: Vec::new(),
            score: None,
        }
    }

    /// One line of the training's output into the run's log (a write failure must not stop
    /// the run: the log is a record, not the run).
    pub(super) fn log_line(&self, line: &str) {
        if let Ok(mut f) = self.log.lock() {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Records a run that did not succeed and returns the error to report.
    pub(super) fn fail(&self, failure: Failure) -> Result<ClusterError, ClusterError> {
        if let Ok(mut f) = self.log.lock() {
            let _ = f.flush();
        }
        let _ = std::fs::remove_dir_all(&self.staging);
        let root = &self.project.root;
        let log = self.log_path.clone();
        Ok(match failure {
            Failure::Interrupted => {
                self.record(
                    Status::Interrupted,
                    None,
                    Some("interrupted".into()),
                    vec![],
                )
                .save(root)?;
                Interrupted.into()
            }
            Failure::Train { code, reason } => {
                self.record(Status::Failed, Some(code), Some(reason.clone()), vec![])
                    .save(root)?;
                RunError::TrainFailed {
                    code: if code == 0 { 1 } else { code },
                    reason,
                    log,
                }
                .into()
            }
            Failure::Missing(reason) => {
                self.record(Status::Failed, Some(0), Some(reason.clone()), vec![])
                    .save(root)?;
                RunError::TrainFailed {
                    code: 1,
                    reason,
                    log,
                }
                .into()
            }
            Failure::BadModel { output, source } => {
                self.record(
                    Status::Failed,
                    Some(0),
                    Some(format!("{output} does not load in ONNX Runtime: {source}")),
                    vec![],
                )
                .save(root)?;
                RunError::BadModel { source, log }.into()
            }
            Failure::Error(e) => {
                self.record(Status::Failed, None, Some(e.to_string()), vec![])
                    .save(root)?;
                e
            }
        })
    }
}

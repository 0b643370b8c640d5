//! The errors a command ends with, their exit codes, and the short report (text on stderr, and
//! a JSON document with `--json`) they become.

use crate::local::LocalError;
use crate::spec::SpecError;
use crate::templates::TemplateError;
use crate::ui::OutputMode;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
    #[error(transparent)]
    Predict(#[from] crate::predict::PredictError),
    #[error(transparent)]
    Score(#[from] crate::score::ScoreError),
    #[error(transparent)]
    Replay(#[from] crate::replay::ReplayError),
    #[error("{}", agreement_below(*agreement, *min, *agreeing_rows, *rows))]
    AgreementBelow {
        agreement: Option<f64>,
        min: f64,
        agreeing_rows: u64,
        rows: u64,
    },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error(transparent)]
    // Boxed: the cluster errors carry whole lists of changes, and every CLI result pays for
    // the largest variant.
    Cluster(Box<crate::cluster::ClusterError>),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Ci(#[from] crate::ci::CiError),
    #[error(transparent)]
    Monitoring(#[from] crate::monitoring::MonitoringError),
    #[error("{failed} of {total} checks failed; the fix for each is above")]
    ChecksFailed { failed: usize, total: usize },
    #[error(
        "the pipeline failed:{}\n  record: {}",
        failed.iter().map(|f| format!("\n  - {f}")).collect::<String>(),
        record.display()
    )]
    PipelineFailed {
        failed: Vec<String>,
        record: std::path::PathBuf,
    },
    #[error("cannot write the completion script to stdout: {0}")]
    Stdout(std::io::Error),
}

fn agreement_below(agreement: Option<f64>, min: f64, agreeing_rows: u64, rows: u64) -> String {
    match agreement {
        Some(a) => format!(
            "the candidate agrees on {:.2}% of rows ({agreeing_rows} of {rows}), below --min-agreement {min}",
            a * 100.0
        ),
        None => format!("no rows were compared, so agreement cannot reach --min-agreement {min}"),
    }
}

impl From<crate::cluster::ClusterError> for CliError {
    fn from(e: crate::cluster::ClusterError) -> Self {
        CliError::Cluster(Box::new(e))
    }
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Local(e) => e.exit_code(),
            CliError::Score(crate::score::ScoreError::Interrupted) => 130,
            CliError::Cluster(e)
                if matches!(
                    **e,
                    crate::cluster::ClusterError::Interrupted(_)
                        | crate::cluster::ClusterError::Score(
                            crate::score::ScoreError::Interrupted
                        )
                ) =>
            {
                130
            }
            _ => 1,
        }
    }
}

pub fn report(e: &CliError, mode: OutputMode) {
    // The doctor's report is already the JSON result; a second document would break parsers.
    // So are a failed pipeline's run record and a replay's report.
    if mode == OutputMode::Json
        && !matches!(
            e,
            CliError::ChecksFailed { .. }
                | CliError::PipelineFailed { .. }
                | CliError::AgreementBelow { .. }
        )
    {
        let j = serde_json::json!({ "error": e.to_string() });
        println!("{j}");
    }
    let mut text = e.to_string();
    let mut src = std::error::Error::source(e);
    // thiserror's transparent wrappers repeat their source's text; show only what adds to it.
    while let Some(s) = src {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(&format!("\n  caused by: {t}"));
        }
        src = s.source();
    }
    eprintln!("{} {text}", console::style("error:").red().bold());
}

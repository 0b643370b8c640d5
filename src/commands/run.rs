//! `ferry run [--env ENV]`: the pipeline's steps (or the named ones and what they need) on
//! Docker, or as Jobs in a cluster environment; each cached where nothing it depends on changed,
//! with a summary table; `--dry-run` says what would run and why.

use super::args::SpecArgs;
use super::runtime;
use crate::cli::CliError;
use crate::local::pipeline::{self, Options, Outcome, status_word};
use crate::runs::{Status, StepStatus};
use crate::ui::{OutputMode, Ui, human_duration, print_json, table};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
    /// The steps to run, with the steps they need (default: every step).
    #[arg(value_name = "STEP")]
    steps: Vec<String>,
    /// Run this step even when its results are cached (repeatable).
    #[arg(long, value_name = "STEP")]
    force: Vec<String>,
    /// Say which steps would run and why; run nothing.
    #[arg(long)]
    dry_run: bool,
    /// Stop the other steps as soon as one fails (by default, steps that do not need the
    /// failed one still finish). In a cluster environment the steps run one after another and
    /// a failed one always stops those that need it.
    #[arg(long)]
    fail_fast: bool,
}

pub fn run(args: Args, ui: &Ui) -> Result<(), CliError> {
    let project = args.spec.load()?;
    let opts = Options {
        steps: args.steps,
        force: args.force,
        dry_run: args.dry_run,
        fail_fast: args.fail_fast,
    };
    let in_cluster = project.spec.target == crate::spec::TargetKind::Kubernetes;
    let outcome = if in_cluster && !opts.dry_run {
        // Failed and interrupted runs exit as locally.
        let r = runtime()?
            .block_on(crate::cluster::train::steps::run(&project, &opts, ui))
            .map_err(|e| match e {
                crate::cluster::ClusterError::Interrupted(i) => CliError::Local(i.into()),
                e => CliError::Cluster(Box::new(e)),
            })?;
        Outcome::Done(Box::new(r))
    } else {
        // A dry run is the same decision wherever the steps would run: the keys are the same.
        runtime()?.block_on(pipeline::run(&project, &opts, ui))?
    };
    let r = match outcome {
        Outcome::DryRun(planned) => {
            if ui.mode() == OutputMode::Json {
                print_json(&planned);
            } else if ui.mode() == OutputMode::Human {
                let rows: Vec<Vec<String>> = planned
                    .iter()
                    .map(|p| {
                        vec![
                            p.step.clone(),
                            if p.runs { "would run" } else { "cached" }.to_string(),
                            p.reason.clone(),
                        ]
                    })
                    .collect();
                print!("{}", table(&["STEP", "RESULT", "WHY"], &rows, &[]));
            }
            return Ok(());
        }
        Outcome::Done(r) => r,
    };
    if ui.mode() == OutputMode::Json {
        print_json(&r.run);
    } else if ui.mode() == OutputMode::Human {
        let rows: Vec<Vec<String>> = r
            .run
            .steps
            .iter()
            .map(|s| {
                let detail = match s.status {
                    StepStatus::Ran => s.reason.clone().unwrap_or_default(),
                    StepStatus::Cached => s
                        .checks
                        .iter()
                        .map(|c| {
                            format!(
                                "{} {} ✓",
                                c.metric,
                                c.value.map(|v| v.to_string()).unwrap_or_default()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                    _ => s.reason.clone().unwrap_or_default(),
                };
                vec![
                    s.name.clone(),
                    status_word(s.status).to_string(),
                    human_duration(std::time::Duration::from_secs_f64(s.duration_secs)),
                    detail,
                ]
            })
            .collect();
        eprintln!();
        print!(
            "{}",
            table(&["STEP", "RESULT", "TIME", "DETAIL"], &rows, &[2])
        );
        if r.run.status == Status::Succeeded {
            ui.done(format!(
                "run {} succeeded in {}",
                r.run.id,
                human_duration(std::time::Duration::from_secs_f64(r.run.duration_secs))
            ));
        }
    }
    if r.run.status != Status::Succeeded {
        return Err(CliError::PipelineFailed {
            failed: r
                .run
                .steps
                .iter()
                .filter(|s| s.status == StepStatus::Failed)
                .map(|s| format!("{}: {}", s.name, s.reason.as_deref().unwrap_or("failed")))
                .collect(),
            record: r.record,
        });
    }
    Ok(())
}

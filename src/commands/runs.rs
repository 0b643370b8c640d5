//! `ferry runs`: the project's runs, newest first, as a table or JSON; `ferry runs show RUN`
//! draws one run's steps with what each read and wrote.

use super::args::SpecArgs;
use crate::cli::CliError;
use crate::local::pipeline::status_word;
use crate::runs;
use crate::runs::{RunRecord, StepStatus};
use crate::ui::{OutputMode, Ui, human_duration, print_json, table};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// One run: its steps with status, time, cache hits, checks, and the sha256 of what each
    /// read and wrote.
    Show {
        /// The run's id, or a unique beginning of it (`latest` for the newest).
        run: String,
    },
}

pub fn run(Args { spec, action }: Args, ui: &Ui) -> Result<(), CliError> {
    if let Some(Action::Show { run }) = action {
        return show(&spec.root(), &run, ui);
    }
    let list = runs::list(&spec.root());
    if ui.mode() == OutputMode::Json {
        print_json(&list);
    } else if list.is_empty() {
        ui.info("no runs yet; start one with `ferry train`");
    } else {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|r| {
                let status = match r.status {
                    runs::Status::Succeeded => "succeeded".to_string(),
                    runs::Status::Failed => {
                        format!("failed({})", r.exit_code.unwrap_or(-1))
                    }
                    runs::Status::Interrupted => "interrupted".to_string(),
                };
                let outs = if let Some(score) = &r.score {
                    format!(
                        "score {} → {} ({} rows)",
                        score
                            .inputs
                            .iter()
                            .map(|i| i.path.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        score.output,
                        score.rows
                    )
                } else if r.steps.is_empty() {
                    r.outputs
                        .iter()
                        .map(|o| o.path.clone())
                        .chain(r.notebook.iter().map(|n| format!("notebook {n}")))
                        .collect::<Vec<_>>()
                        .join(", ")
                } else {
                    r.steps
                        .iter()
                        .map(|s| format!("{} {}", s.name, status_word(s.status)))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                vec![
                    r.id.clone(),
                    status,
                    human_duration(std::time::Duration::from_secs_f64(r.duration_secs)),
                    r.spec_hash
                        .trim_start_matches("sha256:")
                        .chars()
                        .take(12)
                        .collect(),
                    if outs.is_empty() { "-".into() } else { outs },
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &["RUN", "STATUS", "DURATION", "SPEC", "OUTPUTS"],
                &rows,
                &[2]
            )
        );
    }
    Ok(())
}

/// The run `id` names: exactly, by a unique beginning, or `latest`.
fn find(root: &std::path::Path, id: &str) -> Result<RunRecord, CliError> {
    let list = runs::list(root);
    if id == "latest" {
        return list
            .into_iter()
            .next()
            .ok_or_else(|| CliError::Usage("no runs yet; start one with `ferry run`".into()));
    }
    if let Some(r) = list.iter().find(|r| r.id == id) {
        return Ok(r.clone());
    }
    let matches: Vec<&RunRecord> = list.iter().filter(|r| r.id.starts_with(id)).collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(CliError::Usage(format!(
            "no run {id:?} in {}\n  hint: `ferry runs` lists them",
            runs::runs_dir(root).display()
        ))),
        many => Err(CliError::Usage(format!(
            "{id:?} names {} runs ({}); give more of the id",
            many.len(),
            many.iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn show(root: &std::path::Path, id: &str, ui: &Ui) -> Result<(), CliError> {
    let r = find(root, id)?;
    if ui.mode() == OutputMode::Json {
        print_json(&r);
        return Ok(());
    }
    let secs = |s: f64| human_duration(std::time::Duration::from_secs_f64(s));
    let short = |sha: &str| {
        sha.trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect::<String>()
    };
    let status = match r.status {
        runs::Status::Succeeded => "succeeded",
        runs::Status::Failed => "failed",
        runs::Status::Interrupted => "interrupted",
    };
    let mut out = format!(
        "run {}  {status}  {}  started {}{}\n",
        r.id,
        secs(r.duration_secs),
        r.started,
        r.env
            .as_ref()
            .map(|e| format!("  env {e}"))
            .unwrap_or_default()
    );
    if let Some(score) = &r.score {
        out.push_str(&format!("  command: {}\n", r.command.join(" ")));
        out.push_str(&format!(
            "  model  {}  {}\n",
            score.model,
            short(&score.model_sha256)
        ));
        for i in &score.inputs {
            out.push_str(&format!(
                "  in     {}  {}  {} rows\n",
                i.path,
                i.sha256.as_deref().map_or_else(|| "-".into(), short),
                i.rows
            ));
        }
        out.push_str(&format!(
            "  out    {}  {}  {} rows, {:.0} rows/s\n",
            score.output,
            score
                .output_sha256
                .as_deref()
                .map_or_else(|| "-".into(), short),
            score.rows,
            score.rows_per_second
        ));
        if let Some(reason) = &r.reason {
            out.push_str(&format!("  why    {reason}\n"));
        }
        print!("{out}");
        return Ok(());
    }
    if r.steps.is_empty() {
        out.push_str(&format!("  command: {}\n", r.command.join(" ")));
        for o in &r.outputs {
            out.push_str(&format!("  out  {}  {}\n", o.path, short(&o.sha256)));
        }
        print!("{out}");
        return Ok(());
    }
    let last = r.steps.len() - 1;
    for (n, s) in r.steps.iter().enumerate() {
        let mark = match s.status {
            StepStatus::Ran => console::style("●").green(),
            StepStatus::Cached => console::style("○").green(),
            StepStatus::Failed => console::style("✗").red(),
            _ => console::style("-").dim(),
        };
        let (branch, rail) = if n == last {
            ("└─", "   ")
        } else {
            ("├─", "│  ")
        };
        out.push_str(&format!(
            "{branch}{mark} {}  {}  {}{}\n",
            s.name,
            status_word(s.status),
            secs(s.duration_secs),
            s.reason
                .as_ref()
                .filter(|_| s.status != StepStatus::Cached)
                .map(|w| format!("  ({w})"))
                .unwrap_or_default()
        ));
        if !s.needs.is_empty() {
            out.push_str(&format!("{rail}  needs {}\n", s.needs.join(", ")));
        }
        if let Some(k) = &s.key {
            out.push_str(&format!("{rail}  key   {}\n", short(k)));
        }
        for i in &s.inputs {
            out.push_str(&format!("{rail}  in    {}  {}\n", i.path, short(&i.sha256)));
        }
        for o in &s.outputs {
            out.push_str(&format!("{rail}  out   {}  {}\n", o.path, short(&o.sha256)));
        }
        for c in &s.checks {
            out.push_str(&format!(
                "{rail}  check {} {}\n",
                if c.passed { "✓" } else { "✗" },
                c.describe()
            ));
        }
        if let Some(l) = &s.log {
            out.push_str(&format!("{rail}  log   {l}\n"));
        }
    }
    print!("{out}");
    Ok(())
}

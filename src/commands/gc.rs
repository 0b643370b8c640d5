//! `ferry gc`: removes cached step outputs that no run record refers to, and with `--runs N`
//! the records (and logs) of all but the newest N runs, keeping every run `ferry.lock` names
//! as the maker of a model an environment serves.

use super::args::SpecArgs;
use crate::cli::CliError;
use crate::pipeline::store::{GcReport, Store};
use crate::runs;
use crate::ui::{OutputMode, Ui, human_bytes, print_json};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
    /// Also remove the records of all but the newest N runs (runs named in ferry.lock stay).
    #[arg(long, value_name = "N")]
    runs: Option<usize>,
}

#[derive(serde::Serialize)]
struct Report {
    runs_removed: Vec<String>,
    cache: GcReport,
}

pub fn run(args: Args, ui: &Ui) -> Result<(), CliError> {
    let project = args.spec.load()?;
    let root = &project.root;
    let mut runs_removed = Vec::new();
    if let Some(keep) = args.runs {
        let named = crate::lock::lineage_runs(&project);
        for r in runs::list(root).into_iter().skip(keep) {
            if named.contains(&r.id) {
                continue;
            }
            let dir = runs::runs_dir(root).join(&r.id);
            if std::fs::remove_dir_all(&dir).is_ok() {
                runs_removed.push(r.id);
            }
        }
    }
    let keep = runs::list(root)
        .into_iter()
        .flat_map(|r| r.steps.into_iter().filter_map(|s| s.key))
        .collect();
    let cache = Store::open(root).gc(&keep);
    let report = Report {
        runs_removed,
        cache,
    };
    if ui.mode() == OutputMode::Json {
        print_json(&report);
    } else {
        ui.done(format!(
            "removed {} cache entries and {} files ({}){}",
            report.cache.entries,
            report.cache.objects,
            human_bytes(report.cache.bytes),
            if args.runs.is_some() {
                format!(", and {} run records", report.runs_removed.len())
            } else {
                String::new()
            }
        ));
    }
    Ok(())
}

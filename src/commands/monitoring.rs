//! `ferry monitoring`: the Prometheus scrape config and Grafana dashboard for the model server.

use std::path::PathBuf;

use crate::cli::CliError;
use crate::spec::{Project, SPEC_FILE};
use crate::ui::{OutputMode, Ui, print_json};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(short = 'f', long = "file", default_value = SPEC_FILE, value_name = "FILE")]
    file: PathBuf,
    /// Only this environment (default: every environment that serves a model).
    #[arg(short = 'e', long = "env", value_name = "ENV")]
    env: Option<String>,
    /// Where the two files go.
    #[arg(short, long, default_value = "monitoring", value_name = "DIR")]
    out: PathBuf,
}

pub fn run(Args { file, env, out }: Args, ui: &Ui) -> Result<(), CliError> {
    let project = Project::load(&file, None)?;
    let written = crate::monitoring::write(&project, env.as_deref(), &out)?;
    if ui.mode() == OutputMode::Json {
        print_json(&written);
    } else {
        for f in &written.files {
            ui.done(format!("wrote {}", f.display()));
        }
        ui.info(format!(
            "scraping: {}; import the dashboard in Grafana (Dashboards → New → Import)",
            written.jobs.join(", ")
        ));
    }
    Ok(())
}

//! `ferry ci`: the GitHub Actions workflow for the spec's environments, written or printed.

use std::path::PathBuf;

use crate::cli::CliError;
use crate::spec::{Project, SPEC_FILE};
use crate::ui::{OutputMode, Ui, print_json};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(short = 'f', long = "file", default_value = SPEC_FILE, value_name = "FILE")]
    file: PathBuf,
    /// Replace a workflow that differs from the one this spec gives (edits are lost).
    #[arg(long, conflicts_with = "stdout")]
    force: bool,
    /// Print the workflow instead of writing it.
    #[arg(long)]
    stdout: bool,
}

pub fn run(
    Args {
        file,
        force,
        stdout,
    }: Args,
    ui: &Ui,
) -> Result<(), CliError> {
    let project = Project::load(&file, None)?;
    if stdout {
        print!("{}", crate::ci::workflow(&project)?);
    } else {
        let w = crate::ci::write(&project, force)?;
        if ui.mode() == OutputMode::Json {
            print_json(&w);
        } else {
            ui.done(format!(
                "{} {}",
                w.path.display(),
                if w.changed { "written" } else { "up to date" }
            ));
        }
    }
    Ok(())
}

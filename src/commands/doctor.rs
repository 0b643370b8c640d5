//! `ferry doctor`: the machine (and project) checks, failing when any check fails.

use std::path::PathBuf;

use super::runtime;
use crate::cli::CliError;
use crate::spec::SPEC_FILE;
use crate::ui::{OutputMode, Ui, print_json};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(short = 'f', long = "file", default_value = SPEC_FILE, value_name = "FILE")]
    file: PathBuf,
}

pub fn run(Args { file }: Args, ui: &Ui) -> Result<(), CliError> {
    let report = runtime()?.block_on(crate::doctor::run(&file, ui));
    if ui.mode() == OutputMode::Json {
        print_json(&report);
    } else {
        crate::doctor::print(&report, ui);
    }
    let failed = report.failed();
    if failed > 0 {
        return Err(CliError::ChecksFailed {
            failed,
            total: report.checks.len(),
        });
    }
    Ok(())
}

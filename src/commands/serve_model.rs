//! `ferry serve-model`: the model server run from a serving config, the serving image's
//! entrypoint.

use std::path::PathBuf;

use crate::cli::CliError;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, default_value = crate::server::config::CONFIG_PATH, value_name = "FILE")]
    config: PathBuf,
}

pub fn run(Args { config }: Args) -> Result<(), CliError> {
    Ok(crate::server::run_main(&config)?)
}

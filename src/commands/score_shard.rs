//! `ferry score-shard`: one shard of a cluster scoring run, as its pod runs it (the entrypoint
//! of the scoring image's `score` container; see `src/score/shard.rs`). Hidden from help: it
//! reads its plan from the pod's environment.

use crate::cli::CliError;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `--index N` (default: the Job's `JOB_COMPLETION_INDEX`) and `--dir DIR` (default /score).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

pub fn run(Args { rest }: Args) -> Result<(), CliError> {
    let args: Vec<&str> = rest.iter().map(String::as_str).collect();
    match crate::score::shard::main(&args) {
        0 => Ok(()),
        code => std::process::exit(code),
    }
}

//! `ferry completions`: the completion script of ferry's command line for a shell.

use std::io::Write as _;

use crate::cli::CliError;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

pub fn run(Args { shell }: Args) -> Result<(), CliError> {
    let mut cmd = crate::cli::command();
    // Generated into memory first: clap_complete panics on a failed write, and a
    // reader that stops early (`ferry completions bash | head`) is not an error.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "ferry", &mut script);
    let mut out = std::io::stdout().lock();
    match out.write_all(&script).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Stdout(e)),
        _ => Ok(()),
    }
}

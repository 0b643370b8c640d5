//! `ferry logs`: the logs of this project's containers, or of its pods in a cluster environment.

use super::args::SpecArgs;
use super::runtime;
use crate::cli::CliError;
use crate::local;
use crate::spec::Project;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
    /// Only this one: serve or notebook.
    role: Option<String>,
    /// Keep following new lines.
    #[arg(long)]
    follow: bool,
    /// Lines from the end.
    #[arg(short = 'n', long, default_value_t = 100)]
    tail: usize,
}

pub fn run(
    Args {
        spec,
        role,
        follow,
        tail,
    }: Args,
) -> Result<(), CliError> {
    if let Some(env) = &spec.env {
        let project = Project::load(&spec.file, Some(env))?;
        if project.spec.target == crate::spec::TargetKind::Kubernetes {
            runtime()?.block_on(crate::cluster::promote::logs(&project, follow, tail))?;
            return Ok(());
        }
    }
    runtime()?.block_on(local::logs(&spec.root(), role.as_deref(), follow, tail))?;
    Ok(())
}

//! `ferry promote` and `ferry rollback`: a revision applied to a cluster environment (what the
//! previous environment runs, or the revision before the latest), and the line that records it.

use std::path::PathBuf;

use super::args::ClusterArgs;
use super::runtime;
use crate::cli::CliError;
use crate::cluster::promote::Promoted;
use crate::spec::{Project, SPEC_FILE};
use crate::ui::{OutputMode, Ui, print_json};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A `target: kubernetes` environment of the spec.
    env: String,
    /// The spec file.
    #[arg(short = 'f', long = "file", default_value = SPEC_FILE, value_name = "FILE")]
    file: PathBuf,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Take over fields another manager (kubectl, a controller) set on ferry's objects.
    #[arg(long)]
    force_conflicts: bool,
    /// Leave a failed rollout as it is instead of putting back the previous revision.
    #[arg(long)]
    no_rollback: bool,
    /// Promote the project as it is, even where it is not what the source environment runs
    /// (ferry.lock records what that is).
    #[arg(long)]
    rebuild: bool,
    /// Promote models that no successful run passing the pipeline's checks produced (not into
    /// a protected environment).
    #[arg(long)]
    unchecked: bool,
}

#[derive(clap::Args, Debug)]
pub struct RollbackArgs {
    env: String,
    #[arg(short = 'f', long = "file", default_value = SPEC_FILE, value_name = "FILE")]
    file: PathBuf,
    #[command(flatten)]
    cluster: ClusterArgs,
}

pub fn run(args: Args, ui: &Ui) -> Result<(), CliError> {
    let project = Project::load(&args.file, Some(&args.env))?;
    let mut opts = args.cluster.options(args.force_conflicts, args.no_rollback);
    opts.rebuild = args.rebuild;
    opts.unchecked = args.unchecked;
    let done = runtime()?.block_on(crate::cluster::promote::promote(&project, &opts, ui))?;
    print_promoted(ui, &done);
    Ok(())
}

pub fn rollback(args: RollbackArgs, ui: &Ui) -> Result<(), CliError> {
    let project = Project::load(&args.file, Some(&args.env))?;
    let opts = args.cluster.options(false, true);
    let done = runtime()?.block_on(crate::cluster::promote::rollback(&project, &opts, ui))?;
    print_promoted(ui, &done);
    Ok(())
}

fn print_promoted(ui: &Ui, p: &Promoted) {
    match ui.mode() {
        OutputMode::Json => print_json(p),
        OutputMode::Quiet => {}
        OutputMode::Human => {
            let what = match (p.revision, p.rolled_back_to) {
                (Some(n), Some(to)) => {
                    format!("revision {n} of {} (revision {to} put back)", p.env)
                }
                (Some(n), None) => format!("revision {n} of {}", p.env),
                (None, _) => format!("{} (dry run: nothing changed)", p.env),
            };
            ui.done(format!(
                "{what}: {} in namespace {} ({})",
                p.image,
                p.namespace,
                p.applied.summary()
            ));
        }
    }
}

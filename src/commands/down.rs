//! `ferry down`: this project's local containers stopped and removed, or the objects ferry
//! applied to a cluster environment.

use super::args::{ClusterArgs, SpecArgs};
use super::runtime;
use crate::cli::CliError;
use crate::local;
use crate::spec::Project;
use crate::ui::{OutputMode, Ui, print_json, print_removed};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A cluster environment: remove the objects ferry applied there (namespace and volumes
    /// stay). Without it, this project's local containers.
    target: Option<String>,
    #[command(flatten)]
    spec: SpecArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
}

pub fn run(
    Args {
        target,
        spec,
        cluster,
    }: Args,
    ui: &Ui,
) -> Result<(), CliError> {
    if let Some(env) = target {
        let project = Project::load(&spec.file, Some(&env))?;
        if project.spec.target == crate::spec::TargetKind::Kubernetes {
            let opts = cluster.options(false, false);
            let applied =
                runtime()?.block_on(crate::cluster::promote::down(&project, &opts, ui))?;
            if ui.mode() == OutputMode::Json {
                print_json(&applied);
            } else {
                ui.info(format!("{env}: {}", applied.summary()));
            }
            return Ok(());
        }
    }
    let names = runtime()?.block_on(local::dev::down(&spec.root()))?;
    print_removed(ui, names);
    Ok(())
}

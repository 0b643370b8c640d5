//! `ferry render`: the Kubernetes objects `promote` would apply to a cluster environment.

use std::path::PathBuf;

use super::args::Format;
use super::runtime;
use crate::cli::CliError;
use crate::spec::{Project, SPEC_FILE};
use crate::ui::{Ui, print_json};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A `target: kubernetes` environment of the spec.
    env: Option<String>,
    /// The spec file.
    #[arg(short = 'f', long = "file", default_value = SPEC_FILE, value_name = "FILE")]
    file: PathBuf,
    #[arg(short, long, value_enum, default_value_t = Format::Yaml)]
    output: Format,
}

pub fn run(Args { env, file, output }: Args, ui: &Ui) -> Result<(), CliError> {
    let Some(env) = env else {
        let project = Project::load(&file, None)?;
        let others = crate::cluster::cluster_environments(&project);
        return Err(crate::cluster::ClusterError::NoEnvironment { others }.into());
    };
    let project = Project::load(&file, Some(&env))?;
    let prepared = runtime()?.block_on(async {
        // The cluster's nodes choose and check the image's platform; rendering for a cluster
        // that cannot be reached from here still works, with the platform unchecked.
        let cluster = crate::kube::client::connect(project.spec.context.as_deref()).await;
        crate::cluster::prepare(&project, cluster.as_ref(), ui).await
    })?;
    match output {
        Format::Yaml => print!("{}", prepared.manifests.to_yaml()),
        Format::Json => print_json(&prepared.manifests.to_json()),
    }
    Ok(())
}

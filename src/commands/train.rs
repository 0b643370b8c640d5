//! `ferry train`: the training command (or a notebook) run in the project image, locally or in
//! a cluster environment, and the run it recorded.

use std::path::PathBuf;

use super::args::SpecArgs;
use super::runtime;
use crate::cli::CliError;
use crate::local::{self, LocalError};
use crate::ui::{OutputMode, Ui, human_bytes, human_duration, print_json};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
    /// Execute this notebook headless (nbclient) in place of `train.command`; the executed
    /// notebook is kept with the run record.
    #[arg(long, value_name = "NOTEBOOK.ipynb")]
    notebook: Option<PathBuf>,
    /// NAME=VALUE for the notebook's cell tagged `parameters` (repeatable).
    #[arg(
        short = 'p',
        long = "param",
        value_name = "NAME=VALUE",
        requires = "notebook"
    )]
    params: Vec<String>,
}

pub fn run(
    Args {
        spec,
        notebook,
        params,
    }: Args,
    ui: &Ui,
) -> Result<(), CliError> {
    let project = spec.load()?;
    let notebook = match notebook {
        Some(path) => {
            let cwd = std::env::current_dir().map_err(|source| LocalError::Io {
                what: "cannot read the current directory",
                path: PathBuf::from("."),
                source,
            })?;
            Some(
                crate::notebook::Request::new(&project, &path, &cwd, &params)
                    .map_err(LocalError::from)?,
            )
        }
        None => None,
    };
    let r = if project.spec.target == crate::spec::TargetKind::Kubernetes {
        // Failed and interrupted trainings exit with their own codes, as locally.
        runtime()?
            .block_on(crate::cluster::train::train(
                &project,
                notebook.as_ref(),
                ui,
            ))
            .map_err(|e| match e {
                crate::cluster::ClusterError::Run(r) => CliError::Local(r.into()),
                crate::cluster::ClusterError::Interrupted(i) => CliError::Local(i.into()),
                e => CliError::Cluster(Box::new(e)),
            })?
    } else {
        runtime()?.block_on(local::train::train(&project, notebook.as_ref(), ui))?
    };
    if ui.mode() == OutputMode::Json {
        print_json(&r.run);
    } else {
        ui.done(format!(
            "run {} succeeded in {}",
            r.run.id,
            human_duration(std::time::Duration::from_secs_f64(r.run.duration_secs))
        ));
        for o in &r.run.outputs {
            ui.info(format!(
                "  {}  {}  sha256:{}",
                o.path,
                human_bytes(o.size),
                &o.sha256[..16]
            ));
        }
        if let Some(nb) = &r.run.notebook {
            ui.info(format!("  executed notebook: {nb}"));
        }
    }
    Ok(())
}

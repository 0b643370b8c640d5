//! `ferry dev`: Jupyter in the project's environment, locally or in a cluster environment, and
//! the line that says where it is.

use super::args::SpecArgs;
use super::runtime;
use crate::cli::CliError;
use crate::local;
use crate::session::{DevOptions, Session};
use crate::ui::{OutputMode, Ui, print_json};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
    /// Host port on 127.0.0.1 (default: notebook.port).
    #[arg(short, long)]
    port: Option<u16>,
    /// Start and return; stop it later with `ferry down`.
    #[arg(short, long)]
    detach: bool,
    /// Replace the project's running notebook (needed when its settings differ).
    #[arg(long)]
    restart: bool,
}

pub fn run(args: Args, ui: &Ui) -> Result<(), CliError> {
    let Args {
        spec,
        port,
        detach,
        restart,
    } = args;
    let opts = DevOptions {
        env: spec.env.clone(),
        port,
        detach,
        restart,
    };
    let json = ui.mode() == OutputMode::Json;
    let quiet = ui.mode() == OutputMode::Quiet;
    let on_ready = |s: &Session| {
        if json {
            print_json(&serde_json::json!({
                "ready": true,
                "already_running": s.already_running,
                "url": s.url,
                "container": s.container,
                "image": s.image,
            }));
        } else if quiet {
            println!("{}", s.url);
        } else if s.already_running {
            eprintln!(
                "\n  {} Jupyter is already running: {}\n",
                console::style("●").green(),
                console::style(&s.url).bold().underlined()
            );
        } else {
            eprintln!(
                "\n  {} Jupyter is ready: {}\n",
                console::style("●").green(),
                console::style(&s.url).bold().underlined()
            );
        }
    };
    let project = spec.load()?;
    if project.spec.target == crate::spec::TargetKind::Kubernetes {
        runtime()?.block_on(crate::cluster::dev::dev(&project, &opts, ui, on_ready))?;
        return Ok(());
    }
    let session = runtime()?.block_on(local::dev::dev(&spec.file, &opts, ui, on_ready))?;
    if session.already_running {
        ui.left_running(&local::running::short_id(&session.container));
    } else if detach {
        ui.info(format!(
            "running in the background ({}); stop it with `ferry down`",
            session.container.chars().take(12).collect::<String>()
        ));
    }
    Ok(())
}

//! `ferry serve`: the serving image run on 127.0.0.1 (or the same server in this process), and
//! the lines that say where it answers.

use clap::ValueEnum;

use super::args::SpecArgs;
use super::runtime;
use crate::cli::CliError;
use crate::local::{self, serve::Network};
use crate::spec::Project;
use crate::ui::{OutputMode, Ui, print_json};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
    /// Host port on 127.0.0.1 (default: serve.port).
    #[arg(short, long)]
    port: Option<u16>,
    /// Start and return; stop it later with `ferry down`.
    #[arg(short, long, conflicts_with = "native")]
    detach: bool,
    /// Replace the project's running server (needed when its settings differ).
    #[arg(long, conflicts_with = "native")]
    restart: bool,
    /// Run the server here, in this process, instead of in a container (a quick check).
    #[arg(long)]
    native: bool,
    /// How the container is reached on 127.0.0.1: `host` shares the host's network (no
    /// proxy in between: several times the throughput), `bridge` publishes a port; `auto`
    /// takes host where the engine runs on this machine's kernel.
    #[arg(long, value_enum, default_value_t = NetworkArg::Auto, conflicts_with = "native")]
    network: NetworkArg,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum NetworkArg {
    Auto,
    Host,
    Bridge,
}

pub fn run(args: Args, ui: &Ui) -> Result<(), CliError> {
    let project = args.spec.load()?;
    if args.native {
        native(&project, args.port, ui)
    } else {
        container(&project, args, ui)
    }
}

fn native(project: &Project, port: Option<u16>, ui: &Ui) -> Result<(), CliError> {
    let json = ui.mode() == OutputMode::Json;
    runtime()?.block_on(local::serve::serve_native(project, port, ui, |e| {
        if json {
            print_json(e);
        } else {
            eprintln!(
                "\n  {} serving {} at {} (native; Ctrl-C stops)\n",
                console::style("●").green(),
                e.models.join(", "),
                console::style(&e.url).bold().underlined()
            );
        }
    }))?;
    Ok(())
}

fn container(project: &Project, args: Args, ui: &Ui) -> Result<(), CliError> {
    let network = match args.network {
        NetworkArg::Auto => Network::Auto,
        NetworkArg::Host => Network::Host,
        NetworkArg::Bridge => Network::Bridge,
    };
    let opts = local::serve::ServeOptions {
        port: args.port,
        detach: args.detach,
        network,
        restart: args.restart,
    };
    let json = ui.mode() == OutputMode::Json;
    let quiet = ui.mode() == OutputMode::Quiet;
    let endpoint = runtime()?.block_on(local::serve::serve(project, &opts, ui, |e| {
        if json {
            let mut v = serde_json::to_value(e).unwrap_or_default();
            if let Some(m) = v.as_object_mut() {
                m.insert("already_running".into(), e.already_running.into());
            }
            print_json(&v);
        } else if quiet {
            println!("{}", e.url);
        } else if e.already_running {
            eprintln!(
                "\n  {} already serving {} at {}\n",
                console::style("●").green(),
                e.models.join(", "),
                console::style(&e.url).bold().underlined(),
            );
        } else {
            eprintln!(
                "\n  {} serving {} at {}\n    try: ferry predict --values … | curl {}/v2/models/{}\n",
                console::style("●").green(),
                e.models.join(", "),
                console::style(&e.url).bold().underlined(),
                e.url,
                e.models.first().map_or("", String::as_str),
            );
        }
    }))?;
    if endpoint.already_running {
        ui.left_running(&local::running::short_id(
            endpoint.container.as_deref().unwrap_or_default(),
        ));
    } else if args.detach {
        ui.info("running in the background; stop it with `ferry down`");
    }
    Ok(())
}

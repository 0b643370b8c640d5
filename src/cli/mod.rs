//! The command-line edge: the parser, the dispatch to each command's module in `commands`, and
//! errors turned into short reports with a non-zero exit. Nothing here knows how images are
//! built or containers run.

mod error;

use clap::{Parser, Subcommand};

use crate::commands::{self, runtime};
use crate::ui::{OutputMode, Ui};
pub(crate) use error::CliError;

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version,
    about = "One spec for notebooks, training and ONNX model serving — on your laptop and in a cluster",
    propagate_version = true
)]
struct Cli {
    /// Only errors (and a command's result) are printed.
    #[arg(short, long, global = true, conflicts_with = "json")]
    quiet: bool,
    /// Machine-readable output on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

// Each variant's doc comment is its command's summary in `ferry --help`; the arguments are in
// the command's module.
#[derive(Subcommand, Debug)]
enum Command {
    /// Create a project from a template.
    Init(commands::init::Args),
    /// List the templates.
    Templates,
    /// Check the spec and print it resolved for an environment.
    Validate(commands::validate::Args),
    /// Build the environment and project images (skipped when nothing changed).
    Build(commands::build::Args),
    /// Jupyter in the project's environment, rebuilt when dependencies change.
    Dev(commands::dev::Args),
    /// Stop and remove this project's local containers.
    Down(commands::down::Args),
    /// Run the training command in the project image and collect its outputs.
    Train(commands::train::Args),
    /// Run the pipeline's steps (or the named ones and what they need), each skipped when
    /// its results are cached; a summary table at the end.
    Run(commands::run::Args),
    /// List runs, newest first; `ferry runs show RUN` draws one run's steps.
    Runs(commands::runs::Args),
    /// Remove cached step outputs no run record refers to (and, with --runs N, older runs).
    Gc(commands::gc::Args),
    /// Serve the model(s) in the serving image on 127.0.0.1 (the image a cluster runs).
    Serve(commands::serve::Args),
    /// The Kubernetes objects `promote` would apply to a cluster environment (secrets redacted).
    /// Builds the serving image if needed and pushes it, so the objects name it by digest.
    Render(commands::render::Args),
    /// Put what runs in the previous environment into a cluster environment: the serving image
    /// by digest, applied with server-side apply, watched until it runs, recorded.
    Promote(commands::promote::Args),
    /// Re-apply the revision that ran before the latest in a cluster environment.
    Rollback(commands::promote::RollbackArgs),
    /// What runs in a cluster environment: revision, image, replicas, endpoints, drift.
    Status(commands::status::Args),
    /// What differs between two environments: spec fields, files, models, images, Python pins.
    Diff(commands::diff::Args),
    /// Run the model server from a serving config (the serving image's entrypoint).
    ServeModel(commands::serve_model::Args),
    /// Score CSV and Parquet tables with a model, in this process: the outputs beside the
    /// columns kept, in input order, to a CSV or Parquet file; a run record.
    Score(commands::score::Args),
    /// Run a served model's logged requests through a candidate model and report how its
    /// answers agree with the logged ones (and how fast it runs); a CI gate with
    /// --min-agreement.
    Replay(commands::replay::Args),
    /// One shard of a cluster scoring run (the scoring pods' entrypoint).
    #[command(hide = true)]
    ScoreShard(commands::score_shard::Args),
    /// Send a prediction request to the running server.
    Predict(commands::predict::Args),
    /// Write the GitHub Actions workflow for the spec's environments (`ferry init` writes one):
    /// build, test, train, promote.
    Ci(commands::ci::Args),
    /// Write a Prometheus scrape config and a Grafana dashboard for the model server.
    Monitoring(commands::monitoring::Args),
    /// Print a completion script for a shell (e.g. `ferry completions bash > ~/.local/share/bash-completion/completions/ferry`).
    Completions(commands::completions::Args),
    /// Check what ferry needs on this machine (Docker, ONNX Runtime, debootstrap, Python) and,
    /// in a project, its registries and cluster contexts; each problem with its fix.
    Doctor(commands::doctor::Args),
    /// Show the logs of this project's containers (server, notebook).
    Logs(commands::logs::Args),
}

/// The command line's definition, for completions and for checking `ferry …` lines written
/// elsewhere (the CI workflow).
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command()
}

/// Runs ferry with the process's arguments; returns the exit code.
pub fn main() -> i32 {
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    let mode = if cli.json {
        OutputMode::Json
    } else if cli.quiet {
        OutputMode::Quiet
    } else {
        OutputMode::Human
    };
    let ui = Ui::new(mode);
    let result = run(cli.command, &ui);
    clean_leftovers(&ui);
    match result {
        Ok(()) => 0,
        Err(e) => {
            error::report(&e, mode);
            e.exit_code()
        }
    }
}

fn run(command: Command, ui: &Ui) -> Result<(), CliError> {
    match command {
        Command::Init(args) => commands::init::run(args, ui),
        Command::Templates => commands::templates::run(ui),
        Command::Validate(args) => commands::validate::run(args, ui),
        Command::Build(args) => commands::build::run(args, ui),
        Command::Dev(args) => commands::dev::run(args, ui),
        Command::Down(args) => commands::down::run(args, ui),
        Command::Train(args) => commands::train::run(args, ui),
        Command::Run(args) => commands::run::run(args, ui),
        Command::Runs(args) => commands::runs::run(args, ui),
        Command::Gc(args) => commands::gc::run(args, ui),
        Command::Serve(args) => commands::serve::run(args, ui),
        Command::Render(args) => commands::render::run(args, ui),
        Command::Promote(args) => commands::promote::run(args, ui),
        Command::Rollback(args) => commands::promote::rollback(args, ui),
        Command::Status(args) => commands::status::run(args, ui),
        Command::Diff(args) => commands::diff::run(args, ui),
        Command::ServeModel(args) => commands::serve_model::run(args),
        Command::ScoreShard(args) => commands::score_shard::run(args),
        Command::Predict(args) => commands::predict::run(args, ui),
        Command::Score(args) => commands::score::run(args, ui),
        Command::Replay(args) => commands::replay::run(args, ui),
        Command::Ci(args) => commands::ci::run(args, ui),
        Command::Monitoring(args) => commands::monitoring::run(args, ui),
        Command::Completions(args) => commands::completions::run(args),
        Command::Doctor(args) => commands::doctor::run(args, ui),
        Command::Logs(args) => commands::logs::run(args),
    }
}

/// Removes what a build cut off by Ctrl-C (or failing) left in the engine, before the command's
/// own report.
fn clean_leftovers(ui: &Ui) {
    if !crate::images::leftovers::any() {
        return;
    }
    let Ok(rt) = runtime() else { return };
    rt.block_on(async {
        if let Ok(docker) = crate::docker::connect().await {
            crate::images::leftovers::clean(&docker, &|m| ui.info(m)).await;
        }
    });
}

/// Output piped into a reader that stops early (`ferry validate -o yaml | head`) makes
/// `println!` panic. Like a Unix tool killed by SIGPIPE, ferry then stops without a panic
/// report and with status 141. SIGPIPE itself stays ignored: restoring it would also kill ferry
/// on a Docker socket that closes mid-write, which must be an error ferry reports.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info)
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

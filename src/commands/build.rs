//! `ferry build`: the environment and project images, each built or found up to date.

use super::args::SpecArgs;
use super::runtime;
use crate::cli::CliError;
use crate::local;
use crate::ui::{OutputMode, Ui, print_json};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
}

pub fn run(Args { spec }: Args, ui: &Ui) -> Result<(), CliError> {
    let project = spec.load()?;
    let r = runtime()?.block_on(local::build(&project, ui))?;
    if ui.mode() == OutputMode::Json {
        print_json(&r);
    } else {
        for b in [&r.environment, &r.project] {
            ui.done(format!(
                "{} {}",
                b.tag,
                if b.built { "built" } else { "up to date" }
            ));
        }
    }
    Ok(())
}

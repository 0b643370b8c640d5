//! `ferry validate`: the spec checked and printed resolved for an environment, with its hash.

use serde::Serialize;

use super::args::{Format, SpecArgs};
use crate::cli::CliError;
use crate::ui::{OutputMode, Ui, print_json};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
    #[arg(short, long, value_enum, default_value_t = Format::Yaml)]
    output: Format,
}

pub fn run(Args { spec, output }: Args, ui: &Ui) -> Result<(), CliError> {
    let project = spec.load()?;
    let hash = project.hash()?;
    ui.done(format!(
        "{} is valid{} (spec hash {})",
        spec.file.display(),
        project
            .spec
            .env
            .as_ref()
            .map(|e| format!(", resolved for environment `{e}`"))
            .unwrap_or_default(),
        hash.short()
    ));
    #[derive(Serialize)]
    struct Out<'a> {
        spec_hash: String,
        #[serde(flatten)]
        spec: &'a crate::spec::Resolved,
    }
    let out = Out {
        spec_hash: hash.to_string(),
        spec: &project.spec,
    };
    match (output, ui.mode()) {
        (_, OutputMode::Json) | (Format::Json, _) => print_json(&out),
        (Format::Yaml, _) => match serde_yaml_ng::to_string(&out) {
            Ok(y) => print!("{y}"),
            Err(e) => eprintln!("error: cannot encode the spec: {e}"),
        },
    }
    Ok(())
}

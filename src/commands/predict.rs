//! `ferry predict`: one prediction request to the project's running server (or any URL), the
//! answer as a table or JSON.

use std::path::PathBuf;

use super::args::SpecArgs;
use super::runtime;
use crate::cli::CliError;
use crate::local;
use crate::predict::{self, Input};
use crate::spec::Project;
use crate::ui::{OutputMode, Ui, print_json};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
    /// A request file: Open Inference Protocol v2 (`inputs`) or KServe v1 (`instances`).
    #[arg(conflicts_with_all = ["values", "csv"])]
    request: Option<PathBuf>,
    /// Rows of numbers for the model's input: `1,2,3;4,5,6`.
    #[arg(long, conflicts_with = "csv")]
    values: Option<String>,
    /// A CSV file of rows for the model's input (a header line is skipped).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// The model (default: serve.name, else the project's name).
    #[arg(short, long)]
    model: Option<String>,
    /// The server (default: the one `ferry serve` started for this project).
    #[arg(long)]
    url: Option<String>,
    /// Sticky variant assignment: the same key always reaches the same variant.
    #[arg(long)]
    key: Option<String>,
}

pub fn run(args: Args, ui: &Ui) -> Result<(), CliError> {
    let Args {
        spec,
        request,
        values,
        csv,
        model,
        url,
        key,
    } = args;
    let root = spec.root();
    let project = Project::load(&spec.file, spec.env.as_deref()).ok();
    let url = match url.or_else(|| local::serve::saved_endpoint(&root).map(|e| e.url)) {
        Some(u) => u,
        None => {
            return Err(CliError::Usage(
                "no running server for this project\n  hint: start one with `ferry serve`, or pass --url".into(),
            ));
        }
    };
    let model = model
        .or_else(|| {
            project.as_ref().and_then(|p| {
                p.spec
                    .serve
                    .as_ref()
                    .map(|s| s.name.clone().unwrap_or_else(|| p.spec.name.clone()))
            })
        })
        .ok_or_else(|| CliError::Usage("which model? pass --model NAME".into()))?;
    let input = match (request, values, csv) {
        (Some(r), _, _) => Input::File(r),
        (_, Some(v), _) => Input::Values(v),
        (_, _, Some(c)) => Input::Csv(c),
        _ => {
            return Err(CliError::Usage(
                "nothing to send\n  hint: give a request file, --values 1,2,3 or --csv rows.csv"
                    .into(),
            ));
        }
    };
    let answer = runtime()?.block_on(predict::predict(&url, &model, &input, key.as_deref()))?;
    if ui.mode() == OutputMode::Json {
        print_json(&answer.body);
    } else {
        print!("{}", predict::table(&answer.body));
        if let Some(v) = answer.variant {
            ui.info(format!("(variant {v})"));
        }
    }
    Ok(())
}

//! `ferry runs`: the project's training runs, newest first, as a table or JSON.

use super::args::SpecArgs;
use crate::cli::CliError;
use crate::runs;
use crate::ui::{OutputMode, Ui, human_duration, print_json, table};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
}

pub fn run(Args { spec }: Args, ui: &Ui) -> Result<(), CliError> {
    let list = runs::list(&spec.root());
    if ui.mode() == OutputMode::Json {
        print_json(&list);
    } else if list.is_empty() {
        ui.info("no runs yet; start one with `ferry train`");
    } else {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|r| {
                let status = match r.status {
                    runs::Status::Succeeded => "succeeded".to_string(),
                    runs::Status::Failed => {
                        format!("failed({})", r.exit_code.unwrap_or(-1))
                    }
                    runs::Status::Interrupted => "interrupted".to_string(),
                };
                let outs = r
                    .outputs
                    .iter()
                    .map(|o| o.path.clone())
                    .chain(r.notebook.iter().map(|n| format!("notebook {n}")))
                    .collect::<Vec<_>>()
                    .join(", ");
                vec![
                    r.id.clone(),
                    status,
                    human_duration(std::time::Duration::from_secs_f64(r.duration_secs)),
                    r.spec_hash
                        .trim_start_matches("sha256:")
                        .chars()
                        .take(12)
                        .collect(),
                    if outs.is_empty() { "-".into() } else { outs },
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &["RUN", "STATUS", "DURATION", "SPEC", "OUTPUTS"],
                &rows,
                &[2]
            )
        );
    }
    Ok(())
}

//! `ferry templates`: the embedded project templates, one a line.

use crate::cli::CliError;
use crate::templates;
use crate::ui::{OutputMode, Ui, print_json};

pub fn run(ui: &Ui) -> Result<(), CliError> {
    let list = templates::list();
    if ui.mode() == OutputMode::Json {
        print_json(&list);
    } else {
        let w = list.iter().map(|t| t.name.len()).max().unwrap_or(0);
        for t in list {
            println!("{:w$}  {}", t.name, t.description);
        }
    }
    Ok(())
}

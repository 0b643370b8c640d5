//! How a command states its outcome: the JSON document on stdout, the `✓` line for a person,
//! the list of what was removed. Several commands end the same way, so they say it alike.

use serde::Serialize;

use super::{OutputMode, Ui};

impl Ui {
    /// A `✓` line for something done; dropped in quiet and JSON modes, like any message.
    pub fn done(&self, msg: impl AsRef<str>) {
        self.info(format!("{} {}", console::style("✓").green(), msg.as_ref()));
    }

    /// `ferry dev` and `ferry serve` found the project's container running as asked and left it.
    pub fn left_running(&self, container: &str) {
        self.info(format!(
            "it runs in the background (container {container}) with the same settings; `ferry down` stops it, --restart replaces it"
        ));
    }
}

/// A command's result as one pretty-printed JSON document on stdout.
pub fn print_json(v: &impl Serialize) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot encode the result: {e}"),
    }
}

/// The containers or objects a command removed: `{"removed": […]}`, or a line for each.
pub fn print_removed(ui: &Ui, names: Vec<String>) {
    if ui.mode() == OutputMode::Json {
        print_json(&serde_json::json!({ "removed": names }));
    } else if names.is_empty() {
        ui.info("nothing was running");
    } else {
        for n in names {
            ui.done(format!("removed {n}"));
        }
    }
}

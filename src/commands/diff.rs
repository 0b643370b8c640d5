//! `ferry diff`: what differs between two environments, as a table that fits the terminal.

use std::path::PathBuf;

use crate::cli::CliError;
use crate::lock::{self, Change, Lock, Snapshot};
use crate::spec::{Project, SPEC_FILE};
use crate::ui::{OutputMode, Ui, print_json};

#[derive(clap::Args, Debug)]
pub struct Args {
    env1: String,
    env2: String,
    #[arg(short = 'f', long = "file", default_value = SPEC_FILE, value_name = "FILE")]
    file: PathBuf,
}

pub fn run(Args { env1, env2, file }: Args, ui: &Ui) -> Result<(), CliError> {
    let (a, b) = (
        Project::load(&file, Some(&env1))?,
        Project::load(&file, Some(&env2))?,
    );
    let lock = Lock::load(&a)?;
    let (sa, sb) = (Snapshot::of(&a)?, Snapshot::of(&b)?);
    let changes = lock::diff_envs(
        (&sa, lock.environments.get(&env1)),
        (&sb, lock.environments.get(&env2)),
    );
    if ui.mode() == OutputMode::Json {
        print_json(&changes);
    } else if changes.is_empty() {
        ui.info(format!("{env1} and {env2} are the same"));
    } else {
        print_diff(&env1, &env2, &changes);
    }
    Ok(())
}

/// A three-column table that fits the terminal: what, the first environment's, the second's.
fn print_diff(a: &str, b: &str, changes: &[Change]) {
    let width = console::Term::stdout()
        .size_checked()
        .map_or(100, |(_, w)| w as usize);
    let w0 = changes
        .iter()
        .map(|c| c.what.chars().count())
        .chain([4])
        .max()
        .unwrap_or(4)
        .min(width / 2);
    let col = (width.saturating_sub(w0 + 4) / 2).max(12);
    let cut = |s: &str| -> String {
        if s.chars().count() <= col {
            s.to_string()
        } else {
            let mut t: String = s.chars().take(col.saturating_sub(1)).collect();
            t.push('…');
            t
        }
    };
    println!(
        "{:w0$}  {:col$}  {}",
        "",
        console::style(cut(a)).bold(),
        console::style(cut(b)).bold()
    );
    for c in changes {
        println!("{:w0$}  {:col$}  {}", c.what, cut(&c.was), cut(&c.now));
    }
}

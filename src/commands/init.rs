//! `ferry init`: a project from a template, with its CI workflow unless told otherwise.

use std::path::{Path, PathBuf};

use crate::cli::CliError;
use crate::templates;
use crate::ui::{OutputMode, Ui, print_json};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The directory to create (default: the current directory).
    #[arg(default_value = ".")]
    dir: PathBuf,
    #[arg(short, long, default_value = "churn")]
    template: String,
    /// Project name (default: from the directory name).
    #[arg(long)]
    name: Option<String>,
    /// Build the base image from Debian packages instead of pulling one (no registry needed).
    #[arg(long)]
    offline: bool,
    /// Write into a non-empty directory (same-named files are replaced).
    #[arg(long)]
    force: bool,
    /// Leave out the GitHub Actions workflow (`.github/workflows/ferry.yml`).
    #[arg(long)]
    no_ci: bool,
}

pub fn run(args: Args, ui: &Ui) -> Result<(), CliError> {
    let Args {
        dir,
        template,
        name,
        offline,
        force,
        no_ci,
    } = args;
    let mut created = templates::init(&dir, &template, name.as_deref(), offline, force)?;
    if !no_ci {
        created.files.push(crate::ci::init(&dir)?);
        created.files.sort();
    }
    if ui.mode() == OutputMode::Json {
        print_json(&created);
    } else {
        ui.done(format!(
            "created {} from the {} template ({} files){}",
            dir.display(),
            created.template,
            created.files.len(),
            if offline {
                " — offline mode: the base image is built from Debian packages"
            } else {
                ""
            }
        ));
        let cd = if dir == Path::new(".") {
            String::new()
        } else {
            format!("cd {} && ", dir.display())
        };
        ui.info(format!("next: {cd}ferry dev    # or: ferry train"));
    }
    Ok(())
}

//! `ferry status`: what runs in a cluster environment against what was promoted there.

use std::path::PathBuf;

use super::runtime;
use crate::cli::CliError;
use crate::cluster::promote::Status;
use crate::spec::{Project, SPEC_FILE};
use crate::ui::{OutputMode, Ui, print_json};

#[derive(clap::Args, Debug)]
pub struct Args {
    env: String,
    #[arg(short = 'f', long = "file", default_value = SPEC_FILE, value_name = "FILE")]
    file: PathBuf,
}

pub fn run(Args { env, file }: Args, ui: &Ui) -> Result<(), CliError> {
    let project = Project::load(&file, Some(&env))?;
    let status = runtime()?.block_on(crate::cluster::promote::status(&project, ui))?;
    if ui.mode() == OutputMode::Json {
        print_json(&status);
    } else {
        print_status(&status);
    }
    Ok(())
}

fn print_status(s: &Status) {
    println!(
        "{} (namespace {}, context {})",
        s.env,
        s.namespace,
        s.context.as_deref().unwrap_or("current")
    );
    match (&s.revision, &s.promoted_image) {
        (Some(r), Some(i)) => println!(
            "  promoted   revision {r}{}: {i} ({})",
            s.rolled_back_to
                .map(|to| format!(" (revision {to} put back)"))
                .unwrap_or_default(),
            s.recorded_in.as_deref().unwrap_or("")
        ),
        _ => println!("  promoted   nothing recorded in ferry.lock or on this machine"),
    }
    match s.running.deployment() {
        Some(d) => {
            println!("  running    {}", d.images.join(", "));
            println!(
                "  replicas   {} ready of {} ({})",
                d.ready, d.desired, d.progress
            );
        }
        None => println!("  running    no model server"),
    }
    for e in &s.endpoints {
        println!("  endpoint   {e}");
    }
    if s.drift.is_empty() {
        println!("  drift      none");
    } else {
        for d in &s.drift {
            println!("  drift      {d}");
        }
    }
    for c in &s.changes {
        println!("  changed    {c} (not promoted yet)");
    }
    let short = |sha: &str| {
        sha.trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect::<String>()
    };
    for l in &s.lineage {
        println!(
            "  model      {} {}{}",
            l.model,
            short(&l.sha256),
            l.run
                .as_ref()
                .map(|r| format!(" from run {r}"))
                .unwrap_or_default()
        );
        if !l.steps.is_empty() {
            println!("    steps    {}", l.steps.join(" → "));
        }
        for d in &l.data {
            println!("    data     {} {}", d.path, short(&d.sha256));
        }
        for c in &l.code {
            println!("    code     {} {}", c.path, short(&c.sha256));
        }
        if let Some(n) = &l.note {
            println!("    ({n})");
        }
    }
}

//! The arguments several commands take alike: the spec file and environment, what a cluster
//! change may do, the output format of a resolved document.

use std::path::PathBuf;

use clap::ValueEnum;

use crate::cli::CliError;
use crate::cluster::promote::PromoteOptions;
use crate::spec::{Project, SPEC_FILE};

#[derive(clap::Args, Debug, Clone)]
pub struct SpecArgs {
    /// The spec file.
    #[arg(short = 'f', long = "file", default_value = SPEC_FILE, value_name = "FILE")]
    pub file: PathBuf,
    /// The environment whose overrides apply (default: `dev` when the spec defines it).
    #[arg(short = 'e', long = "env", env = "FERRY_ENV", value_name = "ENV")]
    pub env: Option<String>,
}

impl SpecArgs {
    pub fn load(&self) -> Result<Project, CliError> {
        Ok(Project::load(&self.file, self.env.as_deref())?)
    }

    /// The project's directory, absolute: where its runs and running containers are recorded.
    pub fn root(&self) -> PathBuf {
        let dir = match self.file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::path::absolute(&dir).unwrap_or(dir)
    }
}

/// What changes a cluster environment takes.
#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// Do not ask before changing a protected environment.
    #[arg(short, long)]
    pub yes: bool,
    /// Check everything with the API server; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long a rollout may take.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
}

impl ClusterArgs {
    pub fn options(&self, force_conflicts: bool, no_rollback: bool) -> PromoteOptions {
        PromoteOptions {
            yes: self.yes,
            force_conflicts,
            no_rollback,
            rebuild: false,
            unchecked: false,
            dry_run: self.dry_run,
            timeout: self.timeout,
        }
    }
}

/// `90s`, `10m`, `1h`, or plain seconds.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 90s, 10m, 1h)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: the unit is s, m or h")),
    };
    Ok(std::time::Duration::from_secs(secs))
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

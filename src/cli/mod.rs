//! The command-line edge: arguments, dispatch to the modules, and errors turned into short
//! reports with a non-zero exit. Nothing here knows how images are built or containers run.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::local::{self, LocalError};
use crate::runs;
use crate::session::{DevOptions, Session};
use crate::spec::{Project, SPEC_FILE, SpecError};
use crate::templates::{self, TemplateError};
use crate::ui::{OutputMode, Ui, human_duration};

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version,
    about = "One spec for notebooks, training and ONNX model serving — on your laptop and in a cluster",
    propagate_version = true
)]
struct Cli {
    /// Only errors (and a command's result) are printed.
    #[arg(short, long, global = true, conflicts_with = "json")]
    quiet: bool,
    /// Machine-readable output on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug, Clone)]
struct SpecArgs {
    /// The spec file.
    #[arg(short = 'f', long = "file", default_value = SPEC_FILE, value_name = "FILE")]
    file: PathBuf,
    /// The environment whose overrides apply (default: `dev` when the spec defines it).
    #[arg(short = 'e', long = "env", env = "FERRY_ENV", value_name = "ENV")]
    env: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a project from a template.
    Init {
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
    },
    /// List the templates.
    Templates,
    /// Check the spec and print it resolved for an environment.
    Validate {
        #[command(flatten)]
        spec: SpecArgs,
        #[arg(short, long, value_enum, default_value_t = Format::Yaml)]
        output: Format,
    },
    /// Build the environment and project images (skipped when nothing changed).
    Build {
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// Jupyter in the project's environment, rebuilt when dependencies change.
    Dev {
        #[command(flatten)]
        spec: SpecArgs,
        /// Host port on 127.0.0.1 (default: notebook.port).
        #[arg(short, long)]
        port: Option<u16>,
        /// Start and return; stop it later with `ferry down`.
        #[arg(short, long)]
        detach: bool,
        /// Replace the project's running notebook (needed when its settings differ).
        #[arg(long)]
        restart: bool,
    },
    /// Stop and remove this project's local containers.
    Down {
        /// A cluster environment: remove the objects ferry applied there (namespace and volumes
        /// stay). Without it, this project's local containers.
        target: Option<String>,
        #[command(flatten)]
        spec: SpecArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Run the training command in the project image and collect its outputs.
    Train {
        #[command(flatten)]
        spec: SpecArgs,
        /// Execute this notebook headless (nbclient) in place of `train.command`; the executed
        /// notebook is kept with the run record.
        #[arg(long, value_name = "NOTEBOOK.ipynb")]
        notebook: Option<PathBuf>,
        /// NAME=VALUE for the notebook's cell tagged `parameters` (repeatable).
        #[arg(
            short = 'p',
            long = "param",
            value_name = "NAME=VALUE",
            requires = "notebook"
        )]
        params: Vec<String>,
    },
    /// List training runs, newest first.
    Runs {
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// Serve the model(s) in the serving image on 127.0.0.1 (the image a cluster runs).
    Serve {
        #[command(flatten)]
        spec: SpecArgs,
        /// Host port on 127.0.0.1 (default: serve.port).
        #[arg(short, long)]
        port: Option<u16>,
        /// Start and return; stop it later with `ferry down`.
        #[arg(short, long, conflicts_with = "native")]
        detach: bool,
        /// Replace the project's running server (needed when its settings differ).
        #[arg(long, conflicts_with = "native")]
        restart: bool,
        /// Run the server here, in this process, instead of in a container (a quick check).
        #[arg(long)]
        native: bool,
        /// How the container is reached on 127.0.0.1: `host` shares the host's network (no
        /// proxy in between: several times the throughput), `bridge` publishes a port; `auto`
        /// takes host where the engine runs on this machine's kernel.
        #[arg(long, value_enum, default_value_t = NetworkArg::Auto, conflicts_with = "native")]
        network: NetworkArg,
    },
    /// The Kubernetes objects `promote` would apply to a cluster environment (secrets redacted).
    /// Builds the serving image if needed and pushes it, so the objects name it by digest.
    Render {
        /// A `target: kubernetes` environment of the spec.
        env: Option<String>,
        /// The spec file.
        #[arg(short = 'f', long = "file", default_value = SPEC_FILE, value_name = "FILE")]
        file: PathBuf,
        #[arg(short, long, value_enum, default_value_t = Format::Yaml)]
        output: Format,
    },
    /// Put what runs in the previous environment into a cluster environment: the serving image
    /// by digest, applied with server-side apply, watched until it runs, recorded.
    Promote {
        /// A `target: kubernetes` environment of the spec.
        env: String,
        /// The spec file.
        #[arg(short = 'f', long = "file", default_value = SPEC_FILE, value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Take over fields another manager (kubectl, a controller) set on ferry's objects.
        #[arg(long)]
        force_conflicts: bool,
        /// Leave a failed rollout as it is instead of putting back the previous revision.
        #[arg(long)]
        no_rollback: bool,
        /// Promote the project as it is, even where it is not what the source environment runs
        /// (ferry.lock records what that is).
        #[arg(long)]
        rebuild: bool,
    },
    /// Re-apply the revision that ran before the latest in a cluster environment.
    Rollback {
        env: String,
        #[arg(short = 'f', long = "file", default_value = SPEC_FILE, value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// What runs in a cluster environment: revision, image, replicas, endpoints, drift.
    Status {
        env: String,
        #[arg(short = 'f', long = "file", default_value = SPEC_FILE, value_name = "FILE")]
        file: PathBuf,
    },
    /// What differs between two environments: spec fields, files, models, images, Python pins.
    Diff {
        env1: String,
        env2: String,
        #[arg(short = 'f', long = "file", default_value = SPEC_FILE, value_name = "FILE")]
        file: PathBuf,
    },
    /// Run the model server from a serving config (the serving image's entrypoint).
    ServeModel {
        #[arg(long, default_value = crate::server::config::CONFIG_PATH, value_name = "FILE")]
        config: PathBuf,
    },
    /// Send a prediction request to the running server.
    Predict {
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
    },
    /// Write the GitHub Actions workflow for the spec's environments (`ferry init` writes one):
    /// build, test, train, promote.
    Ci {
        #[arg(short = 'f', long = "file", default_value = SPEC_FILE, value_name = "FILE")]
        file: PathBuf,
        /// Replace a workflow that differs from the one this spec gives (edits are lost).
        #[arg(long, conflicts_with = "stdout")]
        force: bool,
        /// Print the workflow instead of writing it.
        #[arg(long)]
        stdout: bool,
    },
    /// Write a Prometheus scrape config and a Grafana dashboard for the model server.
    Monitoring {
        #[arg(short = 'f', long = "file", default_value = SPEC_FILE, value_name = "FILE")]
        file: PathBuf,
        /// Only this environment (default: every environment that serves a model).
        #[arg(short = 'e', long = "env", value_name = "ENV")]
        env: Option<String>,
        /// Where the two files go.
        #[arg(short, long, default_value = "monitoring", value_name = "DIR")]
        out: PathBuf,
    },
    /// Print a completion script for a shell (e.g. `ferry completions bash > ~/.local/share/bash-completion/completions/ferry`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Check what ferry needs on this machine (Docker, ONNX Runtime, debootstrap, Python) and,
    /// in a project, its registries and cluster contexts; each problem with its fix.
    Doctor {
        #[arg(short = 'f', long = "file", default_value = SPEC_FILE, value_name = "FILE")]
        file: PathBuf,
    },
    /// Show the logs of this project's containers (server, notebook).
    Logs {
        #[command(flatten)]
        spec: SpecArgs,
        /// Only this one: serve or notebook.
        role: Option<String>,
        /// Keep following new lines.
        #[arg(long)]
        follow: bool,
        /// Lines from the end.
        #[arg(short = 'n', long, default_value_t = 100)]
        tail: usize,
    },
}

/// What changes a cluster environment takes.
#[derive(clap::Args, Debug)]
struct ClusterArgs {
    /// Do not ask before changing a protected environment.
    #[arg(short, long)]
    yes: bool,
    /// Check everything with the API server; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// How long a rollout may take.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    timeout: std::time::Duration,
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
enum NetworkArg {
    Auto,
    Host,
    Bridge,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum Format {
    Yaml,
    Json,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
    #[error(transparent)]
    Predict(#[from] crate::predict::PredictError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error(transparent)]
    // Boxed: the cluster errors carry whole lists of changes, and every CLI result pays for
    // the largest variant.
    Cluster(Box<crate::cluster::ClusterError>),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Ci(#[from] crate::ci::CiError),
    #[error(transparent)]
    Monitoring(#[from] crate::monitoring::MonitoringError),
    #[error("{failed} of {total} checks failed; the fix for each is above")]
    ChecksFailed { failed: usize, total: usize },
    #[error("cannot write the completion script to stdout: {0}")]
    Stdout(std::io::Error),
}

impl From<crate::cluster::ClusterError> for CliError {
    fn from(e: crate::cluster::ClusterError) -> Self {
        CliError::Cluster(Box::new(e))
    }
}

impl CliError {
    fn exit_code(&self) -> i32 {
        match self {
            CliError::Local(e) => e.exit_code(),
            _ => 1,
        }
    }
}

/// The command line's definition, for completions and for checking `ferry …` lines written
/// elsewhere (the CI workflow).
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command()
}

/// Runs ferry with the process's arguments; returns the exit code.
pub fn main() -> i32 {
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    let mode = if cli.json {
        OutputMode::Json
    } else if cli.quiet {
        OutputMode::Quiet
    } else {
        OutputMode::Human
    };
    let ui = Ui::new(mode);
    let result = run(cli.command, &ui);
    clean_leftovers(&ui);
    match result {
        Ok(()) => 0,
        Err(e) => {
            report(&e, mode);
            e.exit_code()
        }
    }
}

/// Removes what a build cut off by Ctrl-C (or failing) left in the engine, before the command's
/// own report.
fn clean_leftovers(ui: &Ui) {
    if !crate::images::leftovers::any() {
        return;
    }
    let Ok(rt) = runtime() else { return };
    rt.block_on(async {
        if let Ok(docker) = crate::docker::connect().await {
            crate::images::leftovers::clean(&docker, &|m| ui.info(m)).await;
        }
    });
}

/// Output piped into a reader that stops early (`ferry validate -o yaml | head`) makes
/// `println!` panic. Like a Unix tool killed by SIGPIPE, ferry then stops without a panic
/// report and with status 141. SIGPIPE itself stays ignored: restoring it would also kill ferry
/// on a Docker socket that closes mid-write, which must be an error ferry reports.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info)
    }));
}

fn report(e: &CliError, mode: OutputMode) {
    // The doctor's report is already the JSON result; a second document would break parsers.
    if mode == OutputMode::Json && !matches!(e, CliError::ChecksFailed { .. }) {
        let j = serde_json::json!({ "error": e.to_string() });
        println!("{j}");
    }
    let mut text = e.to_string();
    let mut src = std::error::Error::source(e);
    // thiserror's transparent wrappers repeat their source's text; show only what adds to it.
    while let Some(s) = src {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(&format!("\n  caused by: {t}"));
        }
        src = s.source();
    }
    eprintln!("{} {text}", console::style("error:").red().bold());
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

fn promote_options(
    c: &ClusterArgs,
    force_conflicts: bool,
    no_rollback: bool,
) -> crate::cluster::promote::PromoteOptions {
    crate::cluster::promote::PromoteOptions {
        yes: c.yes,
        force_conflicts,
        no_rollback,
        rebuild: false,
        dry_run: c.dry_run,
        timeout: c.timeout,
    }
}

fn print_removed(ui: &Ui, names: Vec<String>) {
    if ui.mode() == OutputMode::Json {
        print_json(&serde_json::json!({ "removed": names }));
    } else if names.is_empty() {
        ui.info("nothing was running");
    } else {
        for n in names {
            ui.info(format!("{} removed {n}", console::style("✓").green()));
        }
    }
}

fn print_promoted(ui: &Ui, p: &crate::cluster::promote::Promoted) {
    match ui.mode() {
        OutputMode::Json => print_json(p),
        OutputMode::Quiet => {}
        OutputMode::Human => {
            let what = match (p.revision, p.rolled_back_to) {
                (Some(n), Some(to)) => {
                    format!("revision {n} of {} (revision {to} put back)", p.env)
                }
                (Some(n), None) => format!("revision {n} of {}", p.env),
                (None, _) => format!("{} (dry run: nothing changed)", p.env),
            };
            ui.info(format!(
                "{} {what}: {} in namespace {} ({})",
                console::style("✓").green(),
                p.image,
                p.namespace,
                p.applied.summary()
            ));
        }
    }
}

fn print_status(s: &crate::cluster::promote::Status) {
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
}

/// A three-column table that fits the terminal: what, the first environment's, the second's.
fn print_diff(a: &str, b: &str, changes: &[crate::lock::Change]) {
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

fn print_json(v: &impl Serialize) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot encode the result: {e}"),
    }
}

fn load(spec: &SpecArgs) -> Result<Project, CliError> {
    Ok(Project::load(&spec.file, spec.env.as_deref())?)
}

fn run(command: Command, ui: &Ui) -> Result<(), CliError> {
    match command {
        Command::Init {
            dir,
            template,
            name,
            offline,
            force,
            no_ci,
        } => {
            let mut created = templates::init(&dir, &template, name.as_deref(), offline, force)?;
            if !no_ci {
                created.files.push(crate::ci::init(&dir)?);
                created.files.sort();
            }
            if ui.mode() == OutputMode::Json {
                print_json(&created);
            } else {
                ui.info(format!(
                    "{} created {} from the {} template ({} files){}",
                    console::style("✓").green(),
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
        }
        Command::Templates => {
            let list = templates::list();
            if ui.mode() == OutputMode::Json {
                print_json(&list);
            } else {
                let w = list.iter().map(|t| t.name.len()).max().unwrap_or(0);
                for t in list {
                    println!("{:w$}  {}", t.name, t.description);
                }
            }
        }
        Command::Validate { spec, output } => {
            let project = load(&spec)?;
            let hash = project.hash()?;
            ui.info(format!(
                "{} {} is valid{} (spec hash {})",
                console::style("✓").green(),
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
        }
        Command::Build { spec } => {
            let project = load(&spec)?;
            let r = runtime()?.block_on(local::build(&project, ui))?;
            if ui.mode() == OutputMode::Json {
                print_json(&r);
            } else {
                for b in [&r.environment, &r.project] {
                    ui.info(format!(
                        "{} {} {}",
                        console::style("✓").green(),
                        b.tag,
                        if b.built { "built" } else { "up to date" }
                    ));
                }
            }
        }
        Command::Dev {
            spec,
            port,
            detach,
            restart,
        } => {
            let opts = DevOptions {
                env: spec.env.clone(),
                port,
                detach,
                restart,
            };
            let json = ui.mode() == OutputMode::Json;
            let quiet = ui.mode() == OutputMode::Quiet;
            let on_ready = |s: &Session| {
                if json {
                    print_json(&serde_json::json!({
                        "ready": true,
                        "already_running": s.already_running,
                        "url": s.url,
                        "container": s.container,
                        "image": s.image,
                    }));
                } else if quiet {
                    println!("{}", s.url);
                } else if s.already_running {
                    eprintln!(
                        "\n  {} Jupyter is already running: {}\n",
                        console::style("●").green(),
                        console::style(&s.url).bold().underlined()
                    );
                } else {
                    eprintln!(
                        "\n  {} Jupyter is ready: {}\n",
                        console::style("●").green(),
                        console::style(&s.url).bold().underlined()
                    );
                }
            };
            let project = load(&spec)?;
            if project.spec.target == crate::spec::TargetKind::Kubernetes {
                runtime()?.block_on(crate::cluster::dev::dev(&project, &opts, ui, on_ready))?;
                return Ok(());
            }
            let session = runtime()?.block_on(local::dev::dev(&spec.file, &opts, ui, on_ready))?;
            if session.already_running {
                ui.info(format!(
                    "it runs in the background (container {}) with the same settings; `ferry down` stops it, --restart replaces it",
                    local::running::short_id(&session.container)
                ));
            } else if detach {
                ui.info(format!(
                    "running in the background ({}); stop it with `ferry down`",
                    session.container.chars().take(12).collect::<String>()
                ));
            }
        }
        Command::Down {
            target: Some(env),
            spec,
            cluster,
        } => {
            let project = Project::load(&spec.file, Some(&env))?;
            if project.spec.target == crate::spec::TargetKind::Kubernetes {
                let opts = promote_options(&cluster, false, false);
                let applied =
                    runtime()?.block_on(crate::cluster::promote::down(&project, &opts, ui))?;
                if ui.mode() == OutputMode::Json {
                    print_json(&applied);
                } else {
                    ui.info(format!("{env}: {}", applied.summary()));
                }
            } else {
                let root = spec_root(&spec.file);
                let names = runtime()?.block_on(local::dev::down(&root))?;
                print_removed(ui, names);
            }
        }
        Command::Promote {
            env,
            file,
            cluster,
            force_conflicts,
            no_rollback,
            rebuild,
        } => {
            let project = Project::load(&file, Some(&env))?;
            let mut opts = promote_options(&cluster, force_conflicts, no_rollback);
            opts.rebuild = rebuild;
            let done =
                runtime()?.block_on(crate::cluster::promote::promote(&project, &opts, ui))?;
            print_promoted(ui, &done);
        }
        Command::Rollback { env, file, cluster } => {
            let project = Project::load(&file, Some(&env))?;
            let opts = promote_options(&cluster, false, true);
            let done =
                runtime()?.block_on(crate::cluster::promote::rollback(&project, &opts, ui))?;
            print_promoted(ui, &done);
        }
        Command::Status { env, file } => {
            let project = Project::load(&file, Some(&env))?;
            let status = runtime()?.block_on(crate::cluster::promote::status(&project, ui))?;
            if ui.mode() == OutputMode::Json {
                print_json(&status);
            } else {
                print_status(&status);
            }
        }
        Command::Down { spec, .. } => {
            let root = spec_root(&spec.file);
            let names = runtime()?.block_on(local::dev::down(&root))?;
            print_removed(ui, names);
        }
        Command::Train {
            spec,
            notebook,
            params,
        } => {
            let project = load(&spec)?;
            let notebook = match notebook {
                Some(path) => {
                    let cwd = std::env::current_dir().map_err(|source| LocalError::Io {
                        what: "cannot read the current directory",
                        path: PathBuf::from("."),
                        source,
                    })?;
                    Some(
                        crate::notebook::Request::new(&project, &path, &cwd, &params)
                            .map_err(LocalError::from)?,
                    )
                }
                None => None,
            };
            let r = if project.spec.target == crate::spec::TargetKind::Kubernetes {
                // Failed and interrupted trainings exit with their own codes, as locally.
                runtime()?
                    .block_on(crate::cluster::train::train(
                        &project,
                        notebook.as_ref(),
                        ui,
                    ))
                    .map_err(|e| match e {
                        crate::cluster::ClusterError::Run(r) => CliError::Local(r.into()),
                        crate::cluster::ClusterError::Interrupted(i) => CliError::Local(i.into()),
                        e => CliError::Cluster(Box::new(e)),
                    })?
            } else {
                runtime()?.block_on(local::train::train(&project, notebook.as_ref(), ui))?
            };
            if ui.mode() == OutputMode::Json {
                print_json(&r.run);
            } else {
                ui.info(format!(
                    "{} run {} succeeded in {}",
                    console::style("✓").green(),
                    r.run.id,
                    human_duration(std::time::Duration::from_secs_f64(r.run.duration_secs))
                ));
                for o in &r.run.outputs {
                    ui.info(format!(
                        "  {}  {}  sha256:{}",
                        o.path,
                        crate::ui::human_bytes(o.size),
                        &o.sha256[..16]
                    ));
                }
                if let Some(nb) = &r.run.notebook {
                    ui.info(format!("  executed notebook: {nb}"));
                }
            }
        }
        Command::Runs { spec } => {
            let root = spec_root(&spec.file);
            let list = runs::list(&root);
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
                    crate::ui::table(
                        &["RUN", "STATUS", "DURATION", "SPEC", "OUTPUTS"],
                        &rows,
                        &[2]
                    )
                );
            }
        }
        Command::Render { env, file, output } => {
            let Some(env) = env else {
                let project = Project::load(&file, None)?;
                let others = crate::cluster::cluster_environments(&project);
                return Err(crate::cluster::ClusterError::NoEnvironment { others }.into());
            };
            let project = Project::load(&file, Some(&env))?;
            let prepared = runtime()?.block_on(crate::cluster::prepare(&project, ui))?;
            match output {
                Format::Yaml => print!("{}", prepared.manifests.to_yaml()),
                Format::Json => print_json(&prepared.manifests.to_json()),
            }
        }
        Command::Diff { env1, env2, file } => {
            let (a, b) = (
                Project::load(&file, Some(&env1))?,
                Project::load(&file, Some(&env2))?,
            );
            let lock = crate::lock::Lock::load(&a)?;
            let (sa, sb) = (
                crate::lock::Snapshot::of(&a)?,
                crate::lock::Snapshot::of(&b)?,
            );
            let changes = crate::lock::diff_envs(
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
        }
        Command::ServeModel { config } => crate::server::run_main(&config)?,
        Command::Serve {
            spec,
            port,
            native: true,
            ..
        } => {
            let project = load(&spec)?;
            let json = ui.mode() == OutputMode::Json;
            runtime()?.block_on(local::serve::serve_native(&project, port, ui, |e| {
                if json {
                    print_json(e);
                } else {
                    eprintln!(
                        "\n  {} serving {} at {} (native; Ctrl-C stops)\n",
                        console::style("●").green(),
                        e.models.join(", "),
                        console::style(&e.url).bold().underlined()
                    );
                }
            }))?;
        }
        Command::Serve {
            spec,
            port,
            detach,
            network,
            restart,
            ..
        } => {
            let project = load(&spec)?;
            let network = match network {
                NetworkArg::Auto => local::serve::Network::Auto,
                NetworkArg::Host => local::serve::Network::Host,
                NetworkArg::Bridge => local::serve::Network::Bridge,
            };
            let opts = local::serve::ServeOptions {
                port,
                detach,
                network,
                restart,
            };
            let json = ui.mode() == OutputMode::Json;
            let quiet = ui.mode() == OutputMode::Quiet;
            let endpoint = runtime()?.block_on(local::serve::serve(&project, &opts, ui, |e| {
                if json {
                    let mut v = serde_json::to_value(e).unwrap_or_default();
                    if let Some(m) = v.as_object_mut() {
                        m.insert("already_running".into(), e.already_running.into());
                    }
                    print_json(&v);
                } else if quiet {
                    println!("{}", e.url);
                } else if e.already_running {
                    eprintln!(
                        "\n  {} already serving {} at {}\n",
                        console::style("●").green(),
                        e.models.join(", "),
                        console::style(&e.url).bold().underlined(),
                    );
                } else {
                    eprintln!(
                        "\n  {} serving {} at {}\n    try: ferry predict --values … | curl {}/v2/models/{}\n",
                        console::style("●").green(),
                        e.models.join(", "),
                        console::style(&e.url).bold().underlined(),
                        e.url,
                        e.models.first().map_or("", String::as_str),
                    );
                }
            }))?;
            if endpoint.already_running {
                ui.info(format!(
                    "it runs in the background (container {}) with the same settings; `ferry down` stops it, --restart replaces it",
                    local::running::short_id(endpoint.container.as_deref().unwrap_or_default())
                ));
            } else if detach {
                ui.info("running in the background; stop it with `ferry down`");
            }
        }
        Command::Predict {
            spec,
            request,
            values,
            csv,
            model,
            url,
            key,
        } => {
            let root = spec_root(&spec.file);
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
                (Some(r), _, _) => crate::predict::Input::File(r),
                (_, Some(v), _) => crate::predict::Input::Values(v),
                (_, _, Some(c)) => crate::predict::Input::Csv(c),
                _ => {
                    return Err(CliError::Usage(
                        "nothing to send\n  hint: give a request file, --values 1,2,3 or --csv rows.csv".into(),
                    ));
                }
            };
            let answer = runtime()?.block_on(crate::predict::predict(
                &url,
                &model,
                &input,
                key.as_deref(),
            ))?;
            if ui.mode() == OutputMode::Json {
                print_json(&answer.body);
            } else {
                print!("{}", crate::predict::table(&answer.body));
                if let Some(v) = answer.variant {
                    ui.info(format!("(variant {v})"));
                }
            }
        }
        Command::Ci {
            file,
            force,
            stdout,
        } => {
            let project = Project::load(&file, None)?;
            if stdout {
                print!("{}", crate::ci::workflow(&project)?);
            } else {
                let w = crate::ci::write(&project, force)?;
                if ui.mode() == OutputMode::Json {
                    print_json(&w);
                } else {
                    ui.info(format!(
                        "{} {} {}",
                        console::style("✓").green(),
                        w.path.display(),
                        if w.changed { "written" } else { "up to date" }
                    ));
                }
            }
        }
        Command::Monitoring { file, env, out } => {
            let project = Project::load(&file, None)?;
            let written = crate::monitoring::write(&project, env.as_deref(), &out)?;
            if ui.mode() == OutputMode::Json {
                print_json(&written);
            } else {
                for f in &written.files {
                    ui.info(format!(
                        "{} wrote {}",
                        console::style("✓").green(),
                        f.display()
                    ));
                }
                ui.info(format!(
                    "scraping: {}; import the dashboard in Grafana (Dashboards → New → Import)",
                    written.jobs.join(", ")
                ));
            }
        }
        Command::Completions { shell } => {
            let mut cmd = crate::cli::command();
            // Generated into memory first: clap_complete panics on a failed write, and a
            // reader that stops early (`ferry completions bash | head`) is not an error.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "ferry", &mut script);
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            match out.write_all(&script).and_then(|()| out.flush()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    return Err(CliError::Stdout(e));
                }
                _ => {}
            }
        }
        Command::Doctor { file } => {
            let report = runtime()?.block_on(crate::doctor::run(&file, ui));
            if ui.mode() == OutputMode::Json {
                print_json(&report);
            } else {
                crate::doctor::print(&report, ui);
            }
            let failed = report.failed();
            if failed > 0 {
                return Err(CliError::ChecksFailed {
                    failed,
                    total: report.checks.len(),
                });
            }
        }
        Command::Logs {
            spec,
            role,
            follow,
            tail,
        } => {
            if let Some(env) = &spec.env {
                let project = Project::load(&spec.file, Some(env))?;
                if project.spec.target == crate::spec::TargetKind::Kubernetes {
                    runtime()?.block_on(crate::cluster::promote::logs(&project, follow, tail))?;
                    return Ok(());
                }
            }
            let root = spec_root(&spec.file);
            runtime()?.block_on(local::logs(&root, role.as_deref(), follow, tail))?;
        }
    }
    Ok(())
}

fn spec_root(file: &Path) -> PathBuf {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::path::absolute(&dir).unwrap_or(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

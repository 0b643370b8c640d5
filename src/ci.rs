//! The GitHub Actions workflow of a project, `.github/workflows/ferry.yml`: `ferry init` writes
//! it and `ferry ci` writes it again when the spec's environments change.
//!
//! It is made from the spec, not from a fixed text, so that it only names environments, outputs
//! and registries the spec has, and every step runs ferry's own commands: what CI does is what
//! a person does on a laptop.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_yaml_ng::{Mapping, Value};

use crate::spec::{Project, SpecError, TargetKind};

/// Where the workflow goes, relative to the project.
pub const WORKFLOW_PATH: &str = ".github/workflows/ferry.yml";
/// The branch whose pushes promote to the first cluster environment.
const MAIN_BRANCH: &str = "main";
/// The artifact that carries the training outputs (and the lock recording them) between jobs.
const TRAINING_ARTIFACT: &str = "training-outputs";
/// Where ferry is installed on the runner; cached by repository and version.
const INSTALL_PREFIX: &str = "~/.ferry";

#[derive(Debug, thiserror::Error)]
pub enum CiError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(
        "{} differs from the workflow this spec gives (edited by hand?)\n  hint: `ferry ci --stdout` prints the generated one to compare; pass --force to replace the file",
        path.display()
    )]
    Edited { path: PathBuf },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode the workflow: {0}")]
    Encode(String),
}

/// What `ferry ci` did.
#[derive(Clone, Debug, Serialize)]
pub struct Written {
    pub path: PathBuf,
    /// False when the file already held exactly this workflow.
    pub changed: bool,
}

/// Writes the workflow of the project just created in `dir` by `ferry init` (replacing one
/// there, as init replaces the template's other files); returns its path relative to `dir`.
pub fn init(dir: &Path) -> Result<String, CiError> {
    let project = Project::load_dir(dir, None)?;
    write(&project, true)?;
    Ok(WORKFLOW_PATH.to_string())
}

/// Writes the workflow into the project. A file that differs from what the spec gives is only
/// replaced with `force`: it may hold the user's own steps.
pub fn write(project: &Project, force: bool) -> Result<Written, CiError> {
    let text = workflow(project)?;
    let path = project.root.join(WORKFLOW_PATH);
    let werr = |source| CiError::Write {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(old) if old == text => {
            return Ok(Written {
                path,
                changed: false,
            });
        }
        Ok(_) if !force => return Err(CiError::Edited { path }),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(werr(e)),
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(werr)?;
    }
    std::fs::write(&path, text).map_err(werr)?;
    Ok(Written {
        path,
        changed: true,
    })
}

/// One cluster environment the workflow promotes to, in the spec's order.
struct Promotion {
    env: String,
    context: Option<String>,
    registry_host: Option<String>,
    protected: bool,
    secrets_file: Option<String>,
    url: Option<String>,
}

/// The workflow's text for `project` (loaded for any environment: all of them are read).
pub fn workflow(project: &Project) -> Result<String, CiError> {
    let base = Project::load(&project.file, None)?;
    let name = base.spec.name.clone();
    let bootstrap = base.spec.environment.bootstrap.is_some();
    // A pipeline runs with `ferry run` (its checks included); its run records travel with the
    // outputs, so the promote jobs' gate finds the checked run behind the model.
    let pipeline = !base.spec.pipeline.is_empty();
    let mut outputs: Vec<String> = base
        .spec
        .steps()
        .values()
        .flat_map(|t| t.outputs.iter().map(|o| o.as_str().to_string()))
        .collect();
    if pipeline {
        outputs.push(format!("{}/runs/", crate::state::STATE_DIR));
    }
    let trains = !base.spec.steps().is_empty();

    let mut promotions = Vec::new();
    let mut no_serve = Vec::new();
    for env in &base.environments {
        let p = Project::load(&project.file, Some(env))?;
        if p.spec.target != TargetKind::Kubernetes {
            continue;
        }
        if p.spec.serve.is_none() {
            no_serve.push(env.clone());
            continue;
        }
        let cluster = p.spec.cluster.clone().unwrap_or_default();
        promotions.push(Promotion {
            env: env.clone(),
            context: p.spec.context.clone(),
            registry_host: p
                .spec
                .registry
                .as_deref()
                .map(|r| crate::images::push::registry_host(r).to_string()),
            protected: cluster.protected,
            secrets_file: cluster.secrets.as_ref().map(|s| s.as_str().to_string()),
            url: cluster.ingress.as_ref().map(|i| {
                let scheme = if i.tls_secret.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{}", i.host)
            }),
        });
    }

    let mut out = header(&name, trains, &promotions, &no_serve);
    let top = map([
        ("name", s(format!("ferry: {name}"))),
        (
            "on",
            map([
                (
                    "push",
                    map([
                        ("branches", list([s(MAIN_BRANCH)])),
                        ("tags", list([s("v*")])),
                    ]),
                ),
                ("pull_request", Value::Mapping(Mapping::new())),
                ("workflow_dispatch", Value::Mapping(Mapping::new())),
            ]),
        ),
        ("permissions", map([("contents", s("read"))])),
    ]);
    out.push_str(&to_yaml(&top)?);
    out.push_str("\njobs:\n");

    // Bootstrapping a Debian base needs root (debootstrap makes device nodes); the jobs that
    // build the environment image run ferry with sudo then.
    let ferry = if bootstrap { "sudo -E ferry" } else { "ferry" };
    let mut jobs: Vec<(Vec<String>, String, Value)> = Vec::new();
    let mut steps = install_steps(bootstrap);
    steps.push(step_run(
        "Check the spec (every environment)",
        "ferry validate",
    ));
    steps.push(step_run("Build the images", &format!("{ferry} build")));
    steps.push(step_run(
        "Run the project's tests in the project image",
        &format!(
            "if [ -d tests ] || ls test_*.py >/dev/null 2>&1; then\n  \
               image=$({ferry} build --json | jq -r .project.tag)\n  \
               docker run --rm --network none \"$image\" python -m pytest -q\n\
             else\n  \
               echo \"no tests/ and no test_*.py: nothing to test\"\n\
             fi"
        ),
    ));
    jobs.push((
        vec![
            "Validate the spec, build the environment and project images, and run the project's"
                .into(),
            "tests (pytest, inside the project image: list pytest in the requirements).".into(),
        ],
        "build".into(),
        map([
            ("name", s("Build and test")),
            ("runs-on", s("ubuntu-latest")),
            ("steps", Value::Sequence(steps)),
        ]),
    ));

    let mut previous = "build".to_string();
    if trains {
        let mut steps = install_steps(bootstrap);
        if pipeline {
            steps.push(step_run("Run the pipeline", &format!("{ferry} run")));
        } else {
            steps.push(step_run("Train", &format!("{ferry} train")));
        }
        steps.push(step_run("Training runs", "ferry runs"));
        let mut paths = outputs.clone();
        paths.push(crate::lock::LOCK_FILE.to_string());
        steps.push(step_uses(
            "Keep the outputs and the lock recording them",
            "actions/upload-artifact@v4",
            {
                let mut with = map([
                    ("name", s(TRAINING_ARTIFACT)),
                    ("path", s(paths.join("\n"))),
                    ("if-no-files-found", s("error")),
                ]);
                // The run records live under `.ferry/`, which the action leaves out unless told.
                if pipeline && let Value::Mapping(m) = &mut with {
                    m.insert(s("include-hidden-files"), Value::Bool(true));
                }
                with
            },
        ));
        jobs.push((
            if pipeline {
                vec![
                    "Run the pipeline (`ferry run`) in the project image; its outputs, its run records"
                        .into(),
                    format!(
                        "and ferry.lock become the `{TRAINING_ARTIFACT}` artifact, which the promote jobs serve."
                    ),
                ]
            } else {
                vec![
                    "Run `ferry train` in the project image; the declared outputs and ferry.lock become"
                        .into(),
                    format!("the `{TRAINING_ARTIFACT}` artifact, which the promote jobs serve."),
                ]
            },
            "train".into(),
            map([
                ("name", s("Train")),
                ("needs", s("build")),
                ("runs-on", s("ubuntu-latest")),
                ("steps", Value::Sequence(steps)),
            ]),
        ));
        previous = "train".into();
    }

    let mut before: Option<String> = None;
    for (i, p) in promotions.iter().enumerate() {
        let id = format!("promote-{}", p.env);
        let condition = if i == 0 {
            format!(
                "github.event_name == 'push' && (github.ref == 'refs/heads/{MAIN_BRANCH}' || startsWith(github.ref, 'refs/tags/v'))"
            )
        } else {
            "github.event_name == 'push' && startsWith(github.ref, 'refs/tags/v')".to_string()
        };
        let mut steps = install_steps(false);
        if trains {
            steps.push(step_uses(
                "The trained outputs",
                "actions/download-artifact@v4",
                map([("name", s(TRAINING_ARTIFACT)), ("path", s("."))]),
            ));
        }
        if let Some(prev) = &before {
            steps.push(step_uses(
                &format!("What {prev} runs (ferry.lock), which {} must match", p.env),
                "actions/download-artifact@v4",
                map([("name", s(promoted_artifact(prev))), ("path", s("."))]),
            ));
        }
        if let Some(host) = &p.registry_host {
            let mut with = Mapping::new();
            // docker/login-action logs in to Docker Hub when no registry is given.
            if host != crate::images::push::DOCKER_HUB {
                with.insert(s("registry"), s(host.as_str()));
            }
            with.insert(s("username"), s("${{ secrets.REGISTRY_USERNAME }}"));
            with.insert(s("password"), s("${{ secrets.REGISTRY_PASSWORD }}"));
            steps.push(step_uses(
                &format!("Log in to {host}"),
                "docker/login-action@v3",
                Value::Mapping(with),
            ));
        }
        let context = p
            .context
            .as_deref()
            .map(|c| format!("with the context {c}"))
            .unwrap_or_else(|| "whose current context is the cluster".into());
        steps.push(step_env_run(
            "Cluster credentials",
            [("KUBECONFIG_CONTENT", "${{ secrets.KUBECONFIG }}")],
            &format!(
                ": \"${{KUBECONFIG_CONTENT:?set the secret KUBECONFIG of the GitHub environment {env} to a kubeconfig {context}}}\"\n\
                 mkdir -p ~/.kube\n\
                 printf '%s\\n' \"$KUBECONFIG_CONTENT\" > ~/.kube/config\n\
                 chmod 600 ~/.kube/config",
                env = p.env
            ),
        ));
        if let Some(file) = &p.secrets_file {
            steps.push(step_env_run(
                &format!("The server's secrets ({file})"),
                [("FERRY_SECRETS", "${{ secrets.FERRY_SECRETS }}")],
                &format!(
                    ": \"${{FERRY_SECRETS:?set the secret FERRY_SECRETS of the GitHub environment {env} to the KEY=value lines of {file}}}\"\n\
                     umask 077\n\
                     printf '%s\\n' \"$FERRY_SECRETS\" > {file}",
                    env = p.env,
                    file = shell_quote(file),
                ),
            ));
        }
        // A protected environment asks before it changes; in CI the GitHub environment's
        // required reviewers are that question, so the prompt is answered here.
        let yes = if p.protected { " --yes" } else { "" };
        steps.push(step_run(
            &format!("Promote to {}", p.env),
            &format!("ferry promote {}{yes}", p.env),
        ));
        steps.push(step_run(
            "What runs there now",
            &format!("ferry status {}", p.env),
        ));
        steps.push(step_uses(
            &format!("Keep what {} runs for the next promotion", p.env),
            "actions/upload-artifact@v4",
            map([
                ("name", s(promoted_artifact(&p.env))),
                (
                    "path",
                    s(format!(
                        "{}\n.ferry/promotions/{}.json",
                        crate::lock::LOCK_FILE,
                        p.env
                    )),
                ),
                ("include-hidden-files", Value::Bool(true)),
                ("if-no-files-found", s("error")),
            ]),
        ));
        let mut environment = Mapping::new();
        environment.insert(s("name"), s(p.env.as_str()));
        if let Some(url) = &p.url {
            environment.insert(s("url"), s(url.as_str()));
        }
        let needs = before
            .as_ref()
            .map(|b| format!("promote-{b}"))
            .unwrap_or_else(|| previous.clone());
        let mut comment = vec![if i == 0 {
            format!(
                "Promote to {} on a push to {MAIN_BRANCH} and on a v* tag, with the GitHub environment {}'s secrets.",
                p.env, p.env
            )
        } else {
            format!(
                "Promote to {} on a v* tag, after {}: exactly what {} runs.",
                p.env,
                before.as_deref().unwrap_or(""),
                before.as_deref().unwrap_or("")
            )
        }];
        if p.protected {
            comment.push(format!(
                "Give the environment {} required reviewers (Settings → Environments): that is the approval.",
                p.env
            ));
        }
        jobs.push((
            comment,
            id.clone(),
            map([
                ("name", s(format!("Promote to {}", p.env))),
                ("needs", s(needs)),
                ("if", s(condition)),
                ("runs-on", s("ubuntu-latest")),
                ("environment", Value::Mapping(environment)),
                (
                    "concurrency",
                    map([
                        ("group", s(format!("ferry-{name}-{}", p.env))),
                        ("cancel-in-progress", Value::Bool(false)),
                    ]),
                ),
                ("steps", Value::Sequence(steps)),
            ]),
        ));
        before = Some(p.env.clone());
    }

    for (i, (comment, id, job)) in jobs.into_iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        for line in comment {
            out.push_str(&format!("  # {line}\n"));
        }
        let mut m = Mapping::new();
        m.insert(s(id), job);
        for line in to_yaml(&Value::Mapping(m))?.lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

fn header(name: &str, trains: bool, promotions: &[Promotion], no_serve: &[String]) -> String {
    let mut h = vec![
        format!("GitHub Actions for the ferry project {name}, made from ferry.yaml."),
        "`ferry ci --force` writes it again after the spec's environments change.".into(),
        String::new(),
        "Every push and pull request: check the spec, build the images, run the tests".into(),
    ];
    if trains {
        h.push("and train (the outputs are kept as an artifact).".into());
    } else {
        h.push("(ferry.yaml has no train: section, so nothing is trained here).".into());
    }
    match promotions {
        [] => {
            h.push(String::new());
            h.push(
                "Nothing is promoted: ferry.yaml has no `target: kubernetes` environment that"
                    .into(),
            );
            h.push("serves a model. Add a serve: section and environments such as".into());
            h.push("  staging:    { target: kubernetes, context: staging, namespace: NAME-staging, registry: HOST/PATH }".into());
            h.push("  production: { target: kubernetes, context: prod, namespace: NAME, registry: HOST/PATH }".into());
            h.push("then run `ferry ci --force`: pushes to main promote to staging, v* tags to production.".into());
        }
        [first, rest @ ..] => {
            h.push(format!(
                "A push to {MAIN_BRANCH}: `ferry promote {}`.",
                first.env
            ));
            if !rest.is_empty() {
                let chain: Vec<&str> = promotions.iter().map(|p| p.env.as_str()).collect();
                h.push(format!(
                    "A v* tag: promote {} in turn, each taking what the one before runs.",
                    chain.join(", then ")
                ));
            } else {
                h.push(format!("A v* tag: `ferry promote {}` too.", first.env));
            }
        }
    }
    for env in no_serve {
        h.push(format!(
            "The environment {env} is not promoted: it serves no model (no serve: section)."
        ));
    }
    h.push(String::new());
    h.push("Set up once, in the repository's Settings → Secrets and variables → Actions:".into());
    h.push(
        "  variable FERRY_REPOSITORY  the git URL of ferry's source; its install.sh builds ferry"
            .into(),
    );
    h.push("                             and fetches ONNX Runtime on the runner".into());
    h.push("  variable FERRY_VERSION     the tag or commit of ferry to install (the build is cached by it)".into());
    if !promotions.is_empty() {
        h.push("and in Settings → Environments, for each environment promoted to:".into());
    }
    for p in promotions {
        let mut needs = vec![format!(
            "secret KUBECONFIG (a kubeconfig{})",
            p.context
                .as_deref()
                .map(|c| format!(" with the context {c}"))
                .unwrap_or_default()
        )];
        if let Some(host) = &p.registry_host {
            needs.push(format!(
                "REGISTRY_USERNAME and REGISTRY_PASSWORD for {host}"
            ));
        }
        if let Some(f) = &p.secrets_file {
            needs.push(format!("FERRY_SECRETS (the lines of {f})"));
        }
        if p.protected {
            needs.push("required reviewers (the approval)".into());
        }
        h.push(format!("  {}: {}", p.env, needs.join(", ")));
    }
    let mut out = String::new();
    for line in h {
        if line.is_empty() {
            out.push_str("#\n");
        } else {
            out.push_str(&format!("# {line}\n"));
        }
    }
    out
}

/// The artifact that carries what an environment runs to the next promotion.
fn promoted_artifact(env: &str) -> String {
    format!("promoted-{env}")
}

/// Checkout, then ferry from its source, built once per version and cached.
fn install_steps(bootstrap: bool) -> Vec<Value> {
    let mut steps = vec![
        step_uses("Check out", "actions/checkout@v4", Value::Null),
        Value::Mapping({
            let mut m = Mapping::new();
            m.insert(s("name"), s("Cache ferry"));
            m.insert(s("id"), s("ferry-cache"));
            m.insert(s("uses"), s("actions/cache@v4"));
            m.insert(
                s("with"),
                map([
                    ("path", s(INSTALL_PREFIX)),
                    (
                        "key",
                        s("ferry-${{ runner.os }}-${{ vars.FERRY_REPOSITORY }}-${{ vars.FERRY_VERSION }}"),
                    ),
                ]),
            );
            m
        }),
        Value::Mapping({
            let mut m = Mapping::new();
            m.insert(s("name"), s("Install ferry"));
            m.insert(s("if"), s("steps.ferry-cache.outputs.cache-hit != 'true'"));
            m.insert(
                s("env"),
                map([
                    ("FERRY_REPOSITORY", s("${{ vars.FERRY_REPOSITORY }}")),
                    ("FERRY_VERSION", s("${{ vars.FERRY_VERSION }}")),
                ]),
            );
            m.insert(
                s("run"),
                s(format!(
                    ": \"${{FERRY_REPOSITORY:?set the repository variable FERRY_REPOSITORY to the git URL of ferry's source}}\"\n\
                     : \"${{FERRY_VERSION:?set the repository variable FERRY_VERSION to the ferry tag or commit to install}}\"\n\
                     git clone --quiet \"$FERRY_REPOSITORY\" \"$RUNNER_TEMP/ferry-src\"\n\
                     git -C \"$RUNNER_TEMP/ferry-src\" checkout --quiet \"$FERRY_VERSION\"\n\
                     \"$RUNNER_TEMP/ferry-src/install.sh\" --prefix {INSTALL_PREFIX}"
                )),
            );
            m
        }),
        step_run(
            "Put ferry on the PATH",
            &format!("echo {INSTALL_PREFIX}/bin >> \"$GITHUB_PATH\""),
        ),
    ];
    if bootstrap {
        // install.sh installs debootstrap, but a cached ferry skips install.sh; sudo's PATH is
        // its own, so ferry goes where it looks.
        steps.push(step_run(
            "debootstrap (for the offline base image), and ferry for sudo",
            &format!(
                "command -v debootstrap >/dev/null || {{ sudo apt-get update -qq && sudo apt-get install -y -qq debootstrap; }}\n\
                 sudo ln -sf {INSTALL_PREFIX}/bin/ferry /usr/local/bin/ferry"
            ),
        ));
    }
    steps
}

fn s(v: impl Into<String>) -> Value {
    Value::String(v.into())
}

fn map<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(s(k), v);
    }
    Value::Mapping(m)
}

fn list<const N: usize>(items: [Value; N]) -> Value {
    Value::Sequence(items.into())
}

fn step_run(name: &str, run: &str) -> Value {
    map([("name", s(name)), ("run", s(run))])
}

fn step_env_run<const N: usize>(name: &str, env: [(&str, &str); N], run: &str) -> Value {
    let mut e = Mapping::new();
    for (k, v) in env {
        e.insert(s(k), s(v));
    }
    map([
        ("name", s(name)),
        ("env", Value::Mapping(e)),
        ("run", s(run)),
    ])
}

fn step_uses(name: &str, uses: &str, with: Value) -> Value {
    let mut m = Mapping::new();
    m.insert(s("name"), s(name));
    m.insert(s("uses"), s(uses));
    if !with.is_null() {
        m.insert(s("with"), with);
    }
    Value::Mapping(m)
}

fn to_yaml(v: &Value) -> Result<String, CiError> {
    serde_yaml_ng::to_string(v).map_err(|e| CiError::Encode(e.to_string()))
}

/// A word for `sh`, quoted only when it needs to be.
fn shell_quote(word: &str) -> String {
    if word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests;

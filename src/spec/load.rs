//! Reading `ferry.yaml`: YAML → overlays → typed spec → checks, with every problem pointing at
//! file:line:column and the field path, plus a hint when we can guess what was meant.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use saphyr_parser::{Event, Parser};
use serde_yaml_ng::Value;

use super::quantity::{CPU_HINT, memory_hint};
use super::{Cluster, Device, Project, RelPath, Resolved, Spec, TargetKind};

/// One thing wrong with a spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// 1-based; 0 when the position is unknown.
    pub line: usize,
    pub column: usize,
    /// The field path, e.g. `train.resources.memory`.
    pub field: String,
    pub message: String,
    pub hint: Option<String>,
    /// The environment whose overlay produced the problem.
    pub env: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(
        "no spec at {}\n  hint: create one with `ferry init DIR --template churn`, or point at it with -f FILE",
        file.display()
    )]
    NotFound { file: PathBuf },
    #[error("cannot read {}: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: YAML syntax error: {message}", file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}", render_problems(file, problems))]
    Invalid {
        file: PathBuf,
        problems: Vec<Problem>,
    },
    #[error("{}: no environment named `{name}`; it defines: {}{}", file.display(), list_or_none(available), did_you_mean_suffix(name, available))]
    UnknownEnvironment {
        file: PathBuf,
        name: String,
        available: Vec<String>,
    },
    #[error("cannot hash {}: {source}", path.display())]
    Hash {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SpecError {
    /// The problems of an invalid spec (empty for other errors); handy in tests and `--json`.
    pub fn problems(&self) -> &[Problem] {
        match self {
            SpecError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn did_you_mean_suffix(name: &str, candidates: &[String]) -> String {
    match did_you_mean(name, candidates.iter().map(String::as_str)) {
        Some(s) => format!("\n  hint: did you mean `{s}`?"),
        None => String::new(),
    }
}

fn render_problems(file: &Path, problems: &[Problem]) -> String {
    let mut out = String::new();
    let n = problems.len();
    if n > 1 {
        out.push_str(&format!("{} has {n} problems:\n", file.display()));
    }
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let loc = if p.line > 0 {
            format!("{}:{}:{}", file.display(), p.line, p.column)
        } else {
            file.display().to_string()
        };
        out.push_str(&format!("{loc}: {}: {}", p.field, p.message));
        if let Some(env) = &p.env {
            out.push_str(&format!(" (in environment `{env}`)"));
        }
        if let Some(h) = &p.hint {
            out.push_str(&format!("\n  hint: {h}"));
        }
    }
    out
}

/// The closest candidate, if it is close enough to be a plausible typo.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Where each field of the document is: path → (line, column) of its key (or of the item, in a
/// sequence). Built with a position-aware parser because serde's `Value` keeps no positions.
#[derive(Default, Debug)]
struct Positions(HashMap<String, (usize, usize)>);

impl Positions {
    fn build(text: &str) -> Positions {
        let mut pos = Positions::default();
        let mut parser = Parser::new_from_str(text);
        // Each frame: (path of the container, is_mapping, next key expected?, pending key, item index)
        struct Frame {
            path: String,
            mapping: bool,
            want_key: bool,
            key: Option<String>,
            index: usize,
        }
        let mut stack: Vec<Frame> = Vec::new();
        while let Some(Ok((event, span))) = parser.next_event() {
            let here = (span.start.line(), span.start.col() + 1);
            // The path of the node this event starts, computed from the enclosing frame.
            let node_path = |stack: &mut Vec<Frame>, pos: &mut Positions| -> Option<String> {
                let f = stack.last_mut()?;
                if f.mapping {
                    let key = f.key.take()?;
                    f.want_key = true;
                    Some(join(&f.path, &key))
                } else {
                    let p = format!("{}[{}]", f.path, f.index);
                    f.index += 1;
                    pos.0.entry(p.clone()).or_insert(here);
                    Some(p)
                }
            };
            match event {
                Event::Scalar(value, ..) => {
                    let is_key = stack.last().is_some_and(|f| f.mapping && f.want_key);
                    if is_key {
                        if let Some(f) = stack.last_mut() {
                            let p = join(&f.path, &value);
                            pos.0.entry(p).or_insert(here);
                            f.key = Some(value.into_owned());
                            f.want_key = false;
                        }
                    } else {
                        node_path(&mut stack, &mut pos);
                    }
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let mapping = matches!(event, Event::MappingStart(..));
                    let path = if stack.is_empty() {
                        String::new()
                    } else {
                        node_path(&mut stack, &mut pos).unwrap_or_default()
                    };
                    stack.push(Frame {
                        path,
                        mapping,
                        want_key: true,
                        key: None,
                        index: 0,
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                Event::Alias(_) => {
                    node_path(&mut stack, &mut pos);
                }
                _ => {}
            }
        }
        pos
    }

    /// The best known position for `field`: the field itself, else its nearest ancestor.
    fn find(&self, field: &str) -> Option<(usize, usize)> {
        let mut f = field.to_string();
        loop {
            if let Some(p) = self.0.get(&f) {
                return Some(*p);
            }
            let cut = f.rfind(['.', '['])?;
            f.truncate(cut);
        }
    }

    fn has(&self, field: &str) -> bool {
        self.0.contains_key(field)
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

pub(super) fn load(file: &Path, env: Option<&str>) -> Result<Project, SpecError> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SpecError::NotFound {
                file: file.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(SpecError::Read {
                file: file.to_path_buf(),
                source,
            });
        }
    };
    load_str(&text, file, env)
}

pub(super) fn load_str(text: &str, file: &Path, env: Option<&str>) -> Result<Project, SpecError> {
    let root = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let root = std::path::absolute(&root).unwrap_or(root);
    let (spec, envs) = parse(text, file, &root)?;

    let env_name = match env {
        Some(e) => Some(e.to_string()),
        None if envs.contains_key("dev") => Some("dev".to_string()),
        None => None,
    };
    let resolved = match &env_name {
        None => resolve(&spec, None),
        Some(name) => match envs.get(name) {
            Some(s) => resolve(s, Some(name)),
            None => {
                return Err(SpecError::UnknownEnvironment {
                    file: file.to_path_buf(),
                    name: name.clone(),
                    available: spec.environments.keys().cloned().collect(),
                });
            }
        },
    };
    Ok(Project {
        root,
        file: file.to_path_buf(),
        environments: file_order(text, &spec),
        spec: resolved,
    })
}

/// Environment names in the order the file writes them (the promotion order).
fn file_order(text: &str, spec: &Spec) -> Vec<String> {
    let written: Vec<String> = serde_yaml_ng::from_str::<Value>(text)
        .ok()
        .and_then(|v| match v.get("environments") {
            Some(Value::Mapping(m)) => Some(
                m.keys()
                    .filter_map(|k| k.as_str().map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default();
    let mut names: Vec<String> = written
        .into_iter()
        .filter(|n| spec.environments.contains_key(n))
        .collect();
    for n in spec.environments.keys() {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

/// Parses and checks the whole file: the base spec and the spec as each environment sees it.
fn parse(text: &str, file: &Path, root: &Path) -> Result<(Spec, HashMap<String, Spec>), SpecError> {
    let value: Value = serde_yaml_ng::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        SpecError::Syntax {
            file: file.to_path_buf(),
            line,
            column,
            message: strip_location(&e.to_string()),
        }
    })?;
    let positions = Positions::build(text);
    let invalid = |problems: Vec<Problem>| SpecError::Invalid {
        file: file.to_path_buf(),
        problems,
    };
    if !matches!(value, Value::Mapping(_)) {
        return Err(invalid(vec![Problem {
            line: 1,
            column: 1,
            field: ".".into(),
            message: "the spec must be a mapping of fields (name, environment, train, ...)".into(),
            hint: Some("start from `ferry init DIR --template churn`".into()),
            env: None,
        }]));
    }

    let base = typed(&value, &positions, None).map_err(|p| invalid(vec![p]))?;
    let problems = check(&base, root, &positions, None);
    if !problems.is_empty() {
        return Err(invalid(problems));
    }

    let mut envs = HashMap::new();
    let mut problems = Vec::new();
    for (name, target) in &base.environments {
        let mut merged = value.clone();
        for (field, overlay) in [
            ("environment", &target.environment),
            ("notebook", &target.notebook),
            ("train", &target.train),
            ("serve", &target.serve),
            ("score", &target.score),
            ("pipeline", &target.pipeline),
        ] {
            if let (Some(overlay), Value::Mapping(m)) = (overlay, &mut merged) {
                let key = Value::String(field.into());
                match m.get_mut(&key) {
                    Some(existing) => merge(existing, overlay),
                    None => {
                        m.insert(key, overlay.clone());
                    }
                }
            }
        }
        match typed(&merged, &positions, Some(name)) {
            Ok(spec) => {
                let found = check(&spec, root, &positions, Some(name));
                if found.is_empty() {
                    envs.insert(name.clone(), spec);
                } else {
                    problems.extend(found);
                }
            }
            Err(p) => problems.push(p),
        }
    }
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    Ok((base, envs))
}

/// Overlay semantics: mappings merge key by key, `null` removes a key, anything else replaces.
fn merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(k);
                } else if let Some(existing) = b.get_mut(k) {
                    merge(existing, v);
                } else {
                    b.insert(k.clone(), v.clone());
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn typed(value: &Value, positions: &Positions, env: Option<&str>) -> Result<Spec, Problem> {
    serde_path_to_error::deserialize::<_, Spec>(value.clone()).map_err(|e| {
        let field = e.path().to_string();
        let raw = e.inner().to_string();
        let (field, message, hint) = explain(&field, &raw);
        problem_at(positions, env, field, message, hint)
    })
}

/// Places a problem in the file: in the environment's overlay when it wrote the field there.
fn problem_at(
    positions: &Positions,
    env: Option<&str>,
    field: String,
    message: String,
    hint: Option<String>,
) -> Problem {
    let in_overlay = env.map(|e| format!("environments.{e}.{field}"));
    let (pos, env_attrib) = match &in_overlay {
        Some(o) if positions.has(o) => (positions.find(o), env),
        // Not written in the overlay: where the base writes it, else the nearest part of the
        // overlay (a section the overlay adds whole, say).
        Some(o) => match positions.find(&field) {
            Some(p) => (Some(p), None),
            None => (positions.find(o), env),
        },
        None => (positions.find(&field), None),
    };
    let (line, column) = pos.unwrap_or((0, 0));
    Problem {
        line,
        column,
        field,
        message,
        hint,
        env: env_attrib.map(str::to_string),
    }
}

/// Turns serde's messages into ours, with the field path it belongs to and a hint.
fn explain(path: &str, raw: &str) -> (String, String, Option<String>) {
    let field = if path == "." {
        String::new()
    } else {
        path.to_string()
    };
    let last = field.rsplit('.').next().unwrap_or("");
    if let Some(rest) = raw.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or("");
        let expected = backticked(rest.split_once("expected").map_or("", |x| x.1));
        let full = join(&field, name);
        let full = if field.ends_with(name) {
            field.clone()
        } else {
            full
        };
        let hint = match did_you_mean(name, expected.iter().map(String::as_str)) {
            Some(s) => Some(format!("did you mean `{s}`?")),
            None if !expected.is_empty() => Some(format!("known fields: {}", expected.join(", "))),
            None => None,
        };
        return (full, format!("unknown field `{name}`"), hint);
    }
    if let Some(rest) = raw.strip_prefix("unknown variant `") {
        let name = rest.split('`').next().unwrap_or("");
        let expected = backticked(rest.split_once("expected").map_or("", |x| x.1));
        let hint = did_you_mean(name, expected.iter().map(String::as_str))
            .map(|s| format!("did you mean `{s}`?"))
            .or_else(|| Some(format!("one of: {}", expected.join(", "))));
        return (field, format!("unknown value `{name}`"), hint);
    }
    if let Some(rest) = raw.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or("");
        let full = join(&field, name);
        let hint = match full.as_str() {
            "train.command" => Some(
                "add the command that trains, e.g. `command: python train.py` under `train:`"
                    .into(),
            ),
            "name" => Some("add `name: my-project` at the top".into()),
            "environment" => Some(
                "add an `environment:` with `base: python:3.11-slim` (or `bootstrap: bookworm` to work offline)"
                    .into(),
            ),
            "serve.model" => Some("add `model: artifacts/model.onnx` under `serve:`".into()),
            f if f.ends_with(".target") => {
                Some("add `target: docker` or `target: kubernetes`".into())
            }
            _ => None,
        };
        return (full, format!("missing field `{name}`"), hint);
    }
    if raw.contains("memory quantity") {
        let text = raw.split('"').nth(1).unwrap_or("");
        return (field, raw.to_string(), Some(memory_hint(text)));
    }
    if raw.contains("cpu quantity") {
        return (field, raw.to_string(), Some(CPU_HINT.into()));
    }
    if raw.starts_with("data did not match any variant of untagged enum Command") {
        return (
            field,
            "expected a command line or a list of arguments".into(),
            Some("e.g. `command: python train.py` or `command: [python, train.py]`".into()),
        );
    }
    let hint = match last {
        "port" => Some("a TCP port between 1 and 65535".to_string()),
        _ => None,
    };
    (field, raw.to_string(), hint)
}

fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, w)| w.to_string())
        .collect()
}

fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Checks no type can express: names, combinations, paths and files.
fn check(spec: &Spec, root: &Path, positions: &Positions, env: Option<&str>) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut bad = |field: &str, message: String, hint: Option<String>| {
        out.push(problem_at(positions, env, field.to_string(), message, hint));
    };

    if !is_dns_label(&spec.name) {
        bad(
            "name",
            format!("{:?} cannot name images and Kubernetes objects", spec.name),
            Some(
                "use lowercase letters, digits and '-', starting with a letter, at most 40 characters (e.g. churn-demo)"
                    .into(),
            ),
        );
    }

    let e = &spec.environment;
    match (&e.base, &e.bootstrap) {
        (Some(_), Some(_)) => bad(
            "environment.bootstrap",
            "`base` and `bootstrap` cannot both be set".into(),
            Some("keep `base` to start from an image, or `bootstrap` to build the base offline from Debian packages".into()),
        ),
        (None, None) => bad(
            "environment",
            "needs `base` (an image) or `bootstrap` (a Debian suite, for offline use)".into(),
            Some("e.g. `base: python:3.11-slim`, or `bootstrap: bookworm` where no registry can be reached".into()),
        ),
        (Some(b), None) if b.trim().is_empty() || b.contains(char::is_whitespace) => bad(
            "environment.base",
            format!("{b:?} is not an image reference"),
            Some("e.g. python:3.11-slim".into()),
        ),
        (None, Some(s)) if !KNOWN_SUITES.contains(&s.as_str()) => bad(
            "environment.bootstrap",
            format!("unknown Debian suite {s:?}"),
            Some(match did_you_mean(s, KNOWN_SUITES.iter().copied()) {
                Some(m) => format!("did you mean `{m}`?"),
                None => format!("one of: {}", KNOWN_SUITES.join(", ")),
            }),
        ),
        _ => {}
    }
    for (i, p) in e.system_packages.iter().enumerate() {
        if !is_debian_package(p) {
            bad(
                &format!("environment.system_packages[{i}]"),
                format!("{p:?} is not a Debian package name"),
                Some("names are lowercase, e.g. libgomp1".into()),
            );
        }
    }
    if let Some(req) = &e.requirements {
        check_file(&mut bad, root, "environment.requirements", req, true);
    }
    if e.platform.is_some() && !e.platforms.is_empty() {
        bad(
            "environment.platforms",
            "`platform` and `platforms` cannot both be set".into(),
            Some("keep `platform: linux/arm64` for one, or list every one in `platforms: [linux/amd64, linux/arm64]`".into()),
        );
    }
    for (i, p) in e.platforms.iter().enumerate() {
        if e.platforms[..i].contains(p) {
            bad(
                &format!("environment.platforms[{i}]"),
                format!("{p} is listed twice"),
                None,
            );
        }
    }
    for k in e.env.keys().chain(
        spec.train
            .as_ref()
            .map(|t| t.env.keys())
            .into_iter()
            .flatten(),
    ) {
        if !is_env_name(k) {
            bad(
                "environment.env",
                format!("{k:?} is not a valid environment variable name"),
                None,
            );
        }
    }

    if let Some(score) = &spec.score {
        let table = |p: &str| {
            let lower = p.to_ascii_lowercase();
            [".csv", ".tsv", ".parquet", ".pq"]
                .iter()
                .any(|ext| lower.ends_with(ext))
        };
        if let Some(output) = &score.output
            && !table(output)
        {
            bad(
                "score.output",
                format!("{output:?} is not a .csv, .tsv or .parquet file"),
                Some("the output's extension chooses its format, e.g. scores.parquet".into()),
            );
        }
        for (i, input) in score.inputs.iter().enumerate() {
            if input.trim().is_empty() {
                bad(&format!("score.inputs[{i}]"), "an empty path".into(), None);
            }
        }
    }

    if let Some(nb) = &spec.notebook {
        if nb.port == 0 {
            bad(
                "notebook.port",
                "port 0 is not allowed".into(),
                Some("a TCP port between 1 and 65535".into()),
            );
        }
        if nb
            .resources
            .memory
            .as_ref()
            .is_some_and(|m| m.bytes < MIN_MEMORY)
        {
            bad(
                "notebook.resources.memory",
                "Docker needs at least 6Mi of memory for a container".into(),
                None,
            );
        }
    }

    if let Some(t) = &spec.train {
        if t.command.is_empty() {
            bad(
                "train.command",
                "the training command is empty".into(),
                Some("e.g. `command: python train.py`".into()),
            );
        }
        for (i, p) in t.inputs.iter().enumerate() {
            // A pipeline step may make it.
            let made = spec
                .pipeline
                .values()
                .any(|s| s.outputs.iter().any(|o| super::overlaps(p, o)));
            check_file(&mut bad, root, &format!("train.inputs[{i}]"), p, !made);
        }
        if t.outputs.is_empty() {
            bad(
                "train.outputs",
                "no outputs are declared, so a run would collect nothing".into(),
                Some("list what training writes, e.g. `outputs: [artifacts/model.onnx]`".into()),
            );
        }
        for (i, o) in t.outputs.iter().enumerate() {
            let field = format!("train.outputs[{i}]");
            pipeline::check_output(&mut bad, root, &field, o, &t.inputs);
        }
        if let Some(c) = &t.resources.memory
            && c.bytes < MIN_MEMORY
        {
            bad(
                "train.resources.memory",
                "Docker needs at least 6Mi of memory for a container".into(),
                None,
            );
        }
    }

    pipeline::check(spec, root, &mut bad);

    if let Some(s) = &spec.serve {
        if let Err(m) = s.model.check_contained(root) {
            bad("serve.model", m, None);
        }
        if s.port == 0 {
            bad(
                "serve.port",
                "port 0 is not allowed".into(),
                Some("a TCP port between 1 and 65535".into()),
            );
        }
        if let Some(b) = &s.batching
            && b.max_batch_size == 0
        {
            bad(
                "serve.batching.max_batch_size",
                "must be at least 1".into(),
                None,
            );
        }
        let models = std::iter::once(("serve".to_string(), s.instances, s.threads)).chain(
            s.models
                .iter()
                .enumerate()
                .map(|(i, m)| (format!("serve.models[{i}]"), m.instances, m.threads)),
        );
        for (at, instances, threads) in models {
            for (field, value) in [("instances", instances), ("threads", threads)] {
                if value == Some(0) {
                    bad(
                        &format!("{at}.{field}"),
                        "must be at least 1".into(),
                        Some("leave it out to derive it from the CPUs the server may use".into()),
                    );
                }
            }
        }
        let total: u64 = s
            .variants
            .iter()
            .filter(|v| !v.shadow)
            .map(|v| u64::from(v.weight))
            .sum();
        if total >= 100 {
            bad(
                "serve.variants",
                format!("variant weights add up to {total}%, leaving nothing for the main model"),
                Some("weights are percentages of traffic; keep their sum below 100".into()),
            );
        }
        let mut names = std::collections::HashSet::new();
        names.insert(s.name.clone().unwrap_or_else(|| spec.name.clone()));
        if let Some(n) = &s.name
            && !is_dns_label(n)
        {
            bad(
                "serve.name",
                format!("{n:?} cannot name a model in URLs"),
                Some("lowercase letters, digits and '-'".into()),
            );
        }
        for (i, m) in s.models.iter().enumerate() {
            if !is_dns_label(&m.name) {
                bad(
                    &format!("serve.models[{i}].name"),
                    format!("{:?} cannot name a model in URLs", m.name),
                    Some("lowercase letters, digits and '-'".into()),
                );
            } else if !names.insert(m.name.clone()) {
                bad(
                    &format!("serve.models[{i}].name"),
                    format!("model name {:?} is used twice", m.name),
                    None,
                );
            }
            if let Err(msg) = m.model.check_contained(root) {
                bad(&format!("serve.models[{i}].model"), msg, None);
            }
        }
        let mut seen = std::collections::HashSet::new();
        seen.insert("default");
        for (i, v) in s.variants.iter().enumerate() {
            if !seen.insert(v.name.as_str()) {
                bad(
                    &format!("serve.variants[{i}].name"),
                    format!(
                        "variant name {:?} is used twice (or is `default`, the main model's)",
                        v.name
                    ),
                    None,
                );
            }
            if v.weight == 0 {
                bad(
                    &format!("serve.variants[{i}].weight"),
                    "weight 0 would never receive traffic".into(),
                    Some("remove the variant or give it a weight of 1 or more".into()),
                );
            }
            if let Err(m) = v.model.check_contained(root) {
                bad(&format!("serve.variants[{i}].model"), m, None);
            }
            if v.shadow && v.weight > 100 {
                bad(
                    &format!("serve.variants[{i}].weight"),
                    format!(
                        "a shadow copies {}% of requests; at most 100% can be copied",
                        v.weight
                    ),
                    None,
                );
            }
            if let Some(t) = v.timeout_ms {
                if !v.shadow {
                    bad(
                        &format!("serve.variants[{i}].timeout_ms"),
                        "only a shadow has its own timeout (the others answer within limits.request_timeout_ms)".into(),
                        Some("add `shadow: true` or remove timeout_ms".into()),
                    );
                } else if t == 0 {
                    bad(
                        &format!("serve.variants[{i}].timeout_ms"),
                        "must be at least 1".into(),
                        None,
                    );
                }
            }
        }
        if s.variants.iter().filter(|v| v.shadow).count() > 1 {
            bad(
                "serve.variants",
                "more than one variant is a shadow; a model has at most one".into(),
                Some("compare further candidates offline with `ferry replay`".into()),
            );
        }
        if let Some(log) = &s.log {
            if !(log.sample > 0.0 && log.sample <= 1.0) {
                bad(
                    "serve.log.sample",
                    format!("{} is not a share of requests", log.sample),
                    Some(
                        "a number above 0 and at most 1, e.g. 0.05 for one request in twenty"
                            .into(),
                    ),
                );
            }
            if log.keep == Some(0) {
                bad(
                    "serve.log.keep",
                    "must be at least 1 (the rotated file the current one replaces)".into(),
                    None,
                );
            }
            if let Some(v) = &log.volume
                && !is_dns_label(v)
            {
                bad(
                    "serve.log.volume",
                    format!("{v:?} cannot name a PersistentVolumeClaim"),
                    Some("lowercase letters, digits and '-'".into()),
                );
            }
        }
        if let Some(a) = &s.autoscale
            && (a.min == 0 || a.min > a.max)
        {
            bad(
                "serve.autoscale",
                format!("min {} and max {} do not make a range", a.min, a.max),
                Some("1 <= min <= max".into()),
            );
        }
        // A container is given a GPU only when it asks for one (a device request locally,
        // `nvidia.com/gpu` in a cluster, where the device plugin hides every GPU from pods that
        // do not request one), so a CUDA server without `gpu` could never start.
        if s.device == Device::Cuda && s.resources.gpu.unwrap_or(0) == 0 {
            bad(
                "serve.device",
                "`cuda` needs a GPU, but serve.resources.gpu is not set, so the server's container would be given none".into(),
                Some("add `resources: { gpu: 1 }` under `serve`, or set `device: cpu`".into()),
            );
        }
    }

    if env.is_none() {
        for (name, t) in &spec.environments {
            let field = format!("environments.{name}");
            if !is_dns_label(name) {
                bad(
                    &field,
                    format!("{name:?} is not a valid environment name"),
                    Some("lowercase letters, digits and '-'".into()),
                );
            }
            if t.target == TargetKind::Docker {
                let cluster_only = [
                    ("context", t.context.is_some()),
                    ("namespace", t.namespace.is_some()),
                    ("registry", t.registry.is_some()),
                    ("from", t.from.is_some()),
                    ("protected", t.protected.is_some()),
                    ("ingress", t.ingress.is_some()),
                    ("node_selector", !t.node_selector.is_empty()),
                    ("tolerations", !t.tolerations.is_empty()),
                    ("image_pull_secret", t.image_pull_secret.is_some()),
                    ("secrets", t.secrets.is_some()),
                ];
                for (key, set) in cluster_only {
                    if set {
                        bad(
                            &format!("{field}.{key}"),
                            format!("`{key}` only applies to `target: kubernetes`"),
                            Some(
                                "remove it, or make this a `target: kubernetes` environment".into(),
                            ),
                        );
                    }
                }
                continue;
            }
            check_cluster(&mut bad, root, &field, name, t, &spec.environments);
        }
    }
    out
}

/// The cluster fields of one `target: kubernetes` environment, checked as the API server would.
fn check_cluster(
    bad: &mut impl FnMut(&str, String, Option<String>),
    root: &Path,
    field: &str,
    name: &str,
    t: &super::Target,
    all: &std::collections::BTreeMap<String, super::Target>,
) {
    if let Some(ns) = &t.namespace
        && !is_k8s_label(ns)
    {
        bad(
            &format!("{field}.namespace"),
            format!("{ns:?} is not a valid namespace name"),
            Some(
                "at most 63 lowercase letters, digits and '-', starting and ending alphanumeric"
                    .into(),
            ),
        );
    }
    if let Some(r) = &t.registry
        && let Err(m) = check_registry(r)
    {
        bad(
            &format!("{field}.registry"),
            m,
            Some(
                "a repository prefix such as `registry.example.com/ml` or `127.0.0.1:5000/ml`"
                    .into(),
            ),
        );
    }
    if let Some(from) = &t.from {
        if from == name {
            bad(
                &format!("{field}.from"),
                "an environment cannot be promoted from itself".into(),
                None,
            );
        } else if !all.contains_key(from) {
            let names: Vec<&str> = all.keys().map(String::as_str).collect();
            bad(
                &format!("{field}.from"),
                format!("no environment named {from:?}"),
                Some(match did_you_mean(from, names.iter().copied()) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => format!("one of: {}", names.join(", ")),
                }),
            );
        }
    }
    if let Some(i) = &t.ingress {
        let host = i.host.strip_prefix("*.").unwrap_or(&i.host);
        if !is_dns_subdomain(host) {
            bad(
                &format!("{field}.ingress.host"),
                format!("{:?} is not a host name", i.host),
                Some("lowercase DNS name such as `churn.example.com` (no scheme, no port)".into()),
            );
        }
        for (key, v) in [("class", &i.class), ("tls_secret", &i.tls_secret)] {
            if let Some(v) = v
                && !is_dns_subdomain(v)
            {
                bad(
                    &format!("{field}.ingress.{key}"),
                    format!("{v:?} is not a valid object name"),
                    None,
                );
            }
        }
    }
    if let Some(s) = &t.image_pull_secret
        && !is_dns_subdomain(s)
    {
        bad(
            &format!("{field}.image_pull_secret"),
            format!("{s:?} is not a valid Secret name"),
            None,
        );
    }
    for (k, v) in &t.node_selector {
        if !is_label_key(k) {
            bad(
                &format!("{field}.node_selector"),
                format!("{k:?} is not a valid label key"),
                Some("`name` or `prefix/name`, e.g. `cloud.google.com/gke-nodepool`".into()),
            );
        }
        if !is_label_value(v) {
            bad(
                &format!("{field}.node_selector.{k}"),
                format!("{v:?} is not a valid label value"),
                Some("at most 63 letters, digits, '-', '_' or '.'".into()),
            );
        }
    }
    for (i, tol) in t.tolerations.iter().enumerate() {
        let f = format!("{field}.tolerations[{i}]");
        let op = tol.operator.as_deref().unwrap_or("Equal");
        if !matches!(op, "Equal" | "Exists") {
            bad(
                &format!("{f}.operator"),
                format!("unknown operator {op:?}"),
                Some("Equal or Exists".into()),
            );
        }
        if op == "Exists" && tol.value.as_deref().is_some_and(|v| !v.is_empty()) {
            bad(
                &format!("{f}.value"),
                "a value means nothing with operator Exists".into(),
                Some("remove `value`, or use operator Equal".into()),
            );
        }
        if tol.key.is_none() && op != "Exists" {
            bad(
                &f,
                "a toleration without a key must use operator Exists".into(),
                None,
            );
        }
        if let Some(e) = &tol.effect
            && !matches!(e.as_str(), "NoSchedule" | "PreferNoSchedule" | "NoExecute")
        {
            bad(
                &format!("{f}.effect"),
                format!("unknown effect {e:?}"),
                Some("NoSchedule, PreferNoSchedule or NoExecute".into()),
            );
        }
        if tol.toleration_seconds.is_some() && tol.effect.as_deref() != Some("NoExecute") {
            bad(
                &format!("{f}.toleration_seconds"),
                "only applies to effect NoExecute".into(),
                None,
            );
        }
    }
    if let Some(p) = &t.secrets
        && let Err(m) = p.check_contained(root)
    {
        bad(&format!("{field}.secrets"), m, None);
    }
}

/// A DNS label as Kubernetes names namespaces and Services (RFC 1123).
pub(crate) fn is_k8s_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A DNS subdomain (RFC 1123), as most object names and host names are.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_k8s_label)
}

fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
}

fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

/// A registry repository prefix: `host[:port][/path]`, no tag, no digest, no scheme.
fn check_registry(r: &str) -> Result<(), String> {
    if r.contains("://") {
        return Err(format!(
            "{r:?} has a scheme; registries are written without one"
        ));
    }
    if r.contains('@')
        || r.rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':') && r.contains('/'))
    {
        return Err(format!(
            "{r:?} has a tag or digest; give the repository prefix only"
        ));
    }
    let mut parts = r.split('/');
    let host = parts.next().unwrap_or_default();
    let (name, port) = match host.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (host, None),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        || port.is_some_and(|p| p.parse::<u16>().is_err())
    {
        return Err(format!("{host:?} is not a registry host"));
    }
    for p in parts {
        let ok = !p.is_empty()
            && p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && p.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            });
        if !ok {
            return Err(format!(
                "{p:?} is not a valid repository path component (lowercase letters, digits, '.', '_', '-')"
            ));
        }
    }
    Ok(())
}

/// The least memory Docker lets a container have.
const MIN_MEMORY: u64 = 6 * 1024 * 1024;

const KNOWN_SUITES: &[&str] = &["bookworm", "trixie", "bullseye"];

fn check_file(
    bad: &mut impl FnMut(&str, String, Option<String>),
    root: &Path,
    field: &str,
    p: &RelPath,
    must_exist: bool,
) {
    if must_exist && !p.under(root).exists() {
        bad(
            field,
            format!("{p} does not exist in {}", root.display()),
            Some(
                "create it, or fix the path (paths are relative to the directory of ferry.yaml)"
                    .into(),
            ),
        );
        return;
    }
    if let Err(m) = p.check_contained(root) {
        bad(field, m, None);
    }
}

/// Names that can name images, containers and Kubernetes objects.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_debian_package(s: &str) -> bool {
    s.len() >= 2
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn resolve(spec: &Spec, env: Option<&str>) -> Resolved {
    let target = env.and_then(|e| spec.environments.get(e));
    Resolved {
        name: spec.name.clone(),
        env: env.map(str::to_string),
        target: target.map_or(TargetKind::Docker, |t| t.target),
        context: target.and_then(|t| t.context.clone()),
        namespace: target.and_then(|t| t.namespace.clone()),
        registry: target.and_then(|t| t.registry.clone()),
        cluster: target
            .filter(|t| t.target == TargetKind::Kubernetes)
            .map(|t| Cluster {
                from: t.from.clone(),
                protected: t
                    .protected
                    .unwrap_or_else(|| env.is_some_and(|e| e.starts_with("prod"))),
                ingress: t.ingress.clone(),
                node_selector: t.node_selector.clone(),
                tolerations: t.tolerations.clone(),
                image_pull_secret: t.image_pull_secret.clone(),
                secrets: t.secrets.clone(),
            }),
        environment: spec.environment.clone(),
        notebook: spec.notebook.clone(),
        train: spec.train.clone(),
        serve: spec.serve.clone(),
        score: spec.score.clone(),
        pipeline: spec.pipeline.clone(),
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.line, self.column, self.field, self.message
        )
    }
}

mod pipeline;
#[cfg(test)]
mod tests;

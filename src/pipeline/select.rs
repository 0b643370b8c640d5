//! Which steps a run takes: the named ones (all by default) and every step they need, in the
//! order their data flows, with the ones forced to run. Shared by both loops.

use std::collections::BTreeSet;

use indexmap::IndexMap;

use crate::spec::{Graph, Project, Step};

/// What `ferry run` was asked.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The steps wanted (with what they need); empty: all.
    pub steps: Vec<String>,
    /// Steps run even when cached.
    pub force: Vec<String>,
    /// Say what would run and why; run nothing.
    pub dry_run: bool,
    /// Stop the other steps at the first failure.
    pub fail_fast: bool,
}

/// The steps of one run.
#[derive(Clone, Debug)]
pub struct Selection {
    pub steps: IndexMap<String, Step>,
    pub graph: Graph,
    pub selected: BTreeSet<usize>,
    /// The selected steps, each after the ones it reads from.
    pub order: Vec<usize>,
    pub forced: BTreeSet<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(
        "{} has no steps\n  hint: add `pipeline:` with named steps, or `train:` (see `ferry init --template churn`)",
        file.display()
    )]
    NoSteps { file: std::path::PathBuf },
    #[error("no step named `{name}`; the pipeline has: {}{}", known.join(", "), crate::spec::did_you_mean(name, known.iter().map(String::as_str)).map(|m| format!("\n  hint: did you mean `{m}`?")).unwrap_or_default())]
    Unknown { name: String, known: Vec<String> },
    #[error(
        "--force {step}: `{step}` is not part of this run\n  hint: name it among the steps to run, e.g. `ferry run {step} --force {step}`"
    )]
    NotInRun { step: String },
}

pub fn select(project: &Project, opts: &Options) -> Result<Selection, SelectError> {
    let steps = project.spec.steps();
    if steps.is_empty() {
        return Err(SelectError::NoSteps {
            file: project.file.clone(),
        });
    }
    let graph = Graph::new(&steps);
    let index = |name: &String| {
        graph.index(name).ok_or_else(|| SelectError::Unknown {
            name: name.clone(),
            known: graph.names.clone(),
        })
    };
    let targets: Vec<usize> = if opts.steps.is_empty() {
        (0..graph.names.len()).collect()
    } else {
        opts.steps.iter().map(index).collect::<Result<_, _>>()?
    };
    let selected = graph.needed(&targets);
    let mut forced = BTreeSet::new();
    for f in &opts.force {
        let i = index(f)?;
        if !selected.contains(&i) {
            return Err(SelectError::NotInRun { step: f.clone() });
        }
        forced.insert(i);
    }
    let order = graph
        .order()
        .into_iter()
        .filter(|i| selected.contains(i))
        .collect();
    Ok(Selection {
        steps,
        graph,
        selected,
        order,
        forced,
    })
}

/// `ran`, `cached`, `failed`, `skipped`, `interrupted`.
pub fn status_word(s: crate::runs::StepStatus) -> &'static str {
    use crate::runs::StepStatus;
    match s {
        StepStatus::Ran => "ran",
        StepStatus::Cached => "cached",
        StepStatus::Failed => "failed",
        StepStatus::Skipped => "skipped",
        StepStatus::Interrupted => "interrupted",
    }
}

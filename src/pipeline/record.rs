//! What both loops write about a pipeline run: a step's key from the files as the project holds
//! them, its checks judged, a blank step record, and the run's record from its steps.

use std::collections::BTreeMap;

use super::PipelineError;
use super::checks::{self, CheckResult};
use super::hashes::Hashes;
use super::key::KeyParts;
use super::store::{Damaged, Entry, Store};
use crate::runs::{RunRecord, Status, StepRun, StepStatus};
use crate::spec::{Graph, Project, Step};

/// The key parts of `step` from its inputs (and notebook) as the project holds them now.
pub fn key_parts(
    project: &Project,
    hashes: &mut Hashes,
    image_id: &str,
    step: &Step,
    env: &BTreeMap<String, String>,
) -> Result<KeyParts, PipelineError> {
    let mut inputs = Vec::new();
    for inp in step.inputs.iter().chain(step.notebook.iter()) {
        inputs.extend(hashes.tree(&project.root, inp)?);
    }
    inputs.sort_by(|a, b| a.path.cmp(&b.path));
    inputs.dedup_by(|a, b| a.path == b.path);
    Ok(KeyParts::new(image_id, step, env, inputs))
}

/// Step `i`'s record before anything happened to it: failed until shown otherwise, its
/// `needs` in the order they run.
pub fn blank_step(graph: &Graph, i: usize) -> StepRun {
    let order = graph.order();
    let mut deps: Vec<usize> = graph.deps[i].iter().copied().collect();
    deps.sort_by_key(|d| order.iter().position(|o| o == d));
    StepRun {
        name: graph.names[i].clone(),
        status: StepStatus::Failed,
        needs: deps.iter().map(|&d| graph.names[d].clone()).collect(),
        key: None,
        reason: None,
        duration_secs: 0.0,
        image: None,
        exit_code: None,
        inputs: Vec::new(),
        outputs: Vec::new(),
        checks: Vec::new(),
        log: None,
        notebook: None,
    }
}

/// Records the checks; a failed one fails the step (`kept`: where its outputs stay to look at).
pub fn judge(rec: &mut StepRun, results: Vec<CheckResult>, kept: Option<&str>) {
    let failed: Vec<String> = results
        .iter()
        .filter(|c| !c.passed)
        .map(CheckResult::describe)
        .collect();
    rec.checks = results;
    if !failed.is_empty() {
        rec.status = StepStatus::Failed;
        let mut why = format!("check failed: {}", failed.join("; "));
        if let Some(k) = kept {
            why.push_str(&format!(" (its outputs are kept in {k})"));
        }
        rec.reason = Some(why);
        rec.outputs.clear();
    }
}

/// A cached step: its entry's outputs put back where the project's differ (each byte checked),
/// its checks read from them, its record saying so. `Err(Damaged)`: the entry is forgotten and
/// the step must run again.
pub fn from_cache(
    project: &Project,
    store: &Store,
    hashes: &mut Hashes,
    step: &Step,
    entry: &Entry,
    rec: &mut StepRun,
) -> Result<Result<(), Damaged>, PipelineError> {
    if let Err(damaged) = store.restore(&project.root, &step.outputs, entry, hashes)? {
        store.forget(entry);
        return Ok(Err(damaged));
    }
    rec.status = StepStatus::Cached;
    rec.reason = Some(format!("cached (run {})", entry.run));
    rec.outputs = entry.outputs.clone();
    judge(
        rec,
        checks::evaluate(&project.root, &step.parsed_checks()),
        None,
    );
    Ok(Ok(()))
}

/// One line for a person when a step ends: `✓ train ran in 3.0s`, `✗ evaluate failed: …`.
pub fn announce(ui: &crate::ui::Ui, r: &StepRun) {
    let time = crate::ui::human_duration(std::time::Duration::from_secs_f64(r.duration_secs));
    let line = match r.status {
        StepStatus::Ran => format!("{} {} ran in {time}", console::style("✓").green(), r.name),
        StepStatus::Cached => format!("{} {} cached", console::style("✓").green(), r.name),
        _ => format!(
            "{} {} {}: {}",
            console::style("✗").red(),
            r.name,
            super::select::status_word(r.status),
            r.reason.as_deref().unwrap_or("")
        ),
    };
    ui.info(line);
}

/// The parts of a run record that are not its steps.
pub struct RunInfo {
    pub id: String,
    pub started: String,
    pub duration_secs: f64,
    pub env: Option<String>,
    pub image: String,
    pub image_id: String,
    pub spec_hash: String,
    /// The run's directory, relative to the project.
    pub log: String,
}

/// The run's record: its status from its steps (interrupted, else succeeded when every step
/// ran or was cached), the failed steps' reasons, and every output of the steps that succeeded.
pub fn run_record(info: RunInfo, steps: Vec<StepRun>, interrupted: bool) -> RunRecord {
    let failed: Vec<String> = steps
        .iter()
        .filter(|s| s.status == StepStatus::Failed)
        .map(|s| format!("{}: {}", s.name, s.reason.as_deref().unwrap_or("failed")))
        .collect();
    let status = if interrupted {
        Status::Interrupted
    } else if steps.iter().all(|s| s.status.succeeded()) {
        Status::Succeeded
    } else {
        Status::Failed
    };
    RunRecord {
        id: info.id,
        status,
        started: info.started,
        duration_secs: (info.duration_secs * 100.0).round() / 100.0,
        env: info.env,
        image: info.image,
        image_id: info.image_id,
        spec_hash: info.spec_hash,
        command: Vec::new(),
        exit_code: None,
        reason: match status {
            Status::Interrupted => Some("interrupted".into()),
            _ if failed.is_empty() => None,
            _ => Some(failed.join("; ")),
        },
        outputs: steps
            .iter()
            .filter(|s| s.status.succeeded())
            .flat_map(|s| s.outputs.iter().cloned())
            .collect(),
        log: info.log,
        notebook: None,
        steps,
        score: None,
    }
}

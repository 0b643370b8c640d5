//! From a model's bytes back to what made them: the run whose outputs hold them, the steps
//! on the way to it, and the project files (data and code) those steps read.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::runs::{Output, RunRecord};

/// What a served model was made from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Lineage {
    pub model: String,
    pub sha256: String,
    /// The run that produced its bytes, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The steps that led to it, producer last.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<String>,
    /// Project files those steps read (not made by another step of the run), by sha256.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<Output>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub code: Vec<Output>,
    /// Why the way back stops short, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Source files are code; everything else a step reads is data.
fn is_code(path: &str) -> bool {
    let ext = path.rsplit_once('.').map_or("", |(_, e)| e);
    matches!(
        ext,
        "py" | "ipynb" | "sh" | "r" | "R" | "jl" | "sql" | "toml" | "yaml" | "yml" | "cfg"
    )
}

/// The lineage of `model` (its `sha256:`), made by `run` if the lock names one.
pub fn of(model: &str, sha256: &str, run: Option<&RunRecord>) -> Lineage {
    let mut l = Lineage {
        model: model.to_string(),
        sha256: sha256.to_string(),
        run: run.map(|r| r.id.clone()),
        steps: Vec::new(),
        data: Vec::new(),
        code: Vec::new(),
        note: None,
    };
    let Some(run) = run else {
        l.note = Some("no recorded run produced these bytes".into());
        return l;
    };
    if run.steps.is_empty() {
        l.note = Some(format!(
            "made by `ferry train` (run {}), which records its outputs, not its inputs; `ferry run` records both",
            run.id
        ));
        return l;
    }
    let Some(maker) = run
        .steps
        .iter()
        .find(|s| s.outputs.iter().any(|o| o.path == model))
    else {
        l.note = Some(format!(
            "no step of run {} lists it among its outputs",
            run.id
        ));
        return l;
    };
    // The producer and every step it needs, transitively.
    let mut wanted: BTreeSet<&str> = BTreeSet::new();
    let mut todo = vec![maker.name.as_str()];
    while let Some(n) = todo.pop() {
        if wanted.insert(n)
            && let Some(s) = run.steps.iter().find(|s| s.name == n)
        {
            todo.extend(s.needs.iter().map(String::as_str));
        }
    }
    let made: BTreeSet<&str> = run
        .steps
        .iter()
        .flat_map(|s| s.outputs.iter().map(|o| o.path.as_str()))
        .collect();
    let mut seen = BTreeSet::new();
    for s in run
        .steps
        .iter()
        .filter(|s| wanted.contains(s.name.as_str()))
    {
        l.steps.push(s.name.clone());
        for i in &s.inputs {
            if made.contains(i.path.as_str()) || !seen.insert(i.path.clone()) {
                continue;
            }
            if is_code(&i.path) {
                l.code.push(i.clone());
            } else {
                l.data.push(i.clone());
            }
        }
    }
    l.data.sort_by(|a, b| a.path.cmp(&b.path));
    l.code.sort_by(|a, b| a.path.cmp(&b.path));
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::{StepRun, StepStatus};

    fn out(path: &str) -> Output {
        Output {
            path: path.into(),
            sha256: format!("{:0>64}", path.len()),
            size: 1,
        }
    }

    fn step(name: &str, needs: &[&str], inputs: &[&str], outputs: &[&str]) -> StepRun {
        StepRun {
            name: name.into(),
            status: StepStatus::Ran,
            needs: needs.iter().map(|s| s.to_string()).collect(),
            key: None,
            reason: None,
            duration_secs: 0.0,
            image: None,
            exit_code: None,
            inputs: inputs.iter().map(|p| out(p)).collect(),
            outputs: outputs.iter().map(|p| out(p)).collect(),
            checks: vec![],
            log: None,
            notebook: None,
        }
    }

    #[test]
    fn from_the_model_back_to_the_files_the_steps_before_it_read() {
        let run = RunRecord {
            steps: vec![
                step(
                    "prepare",
                    &[],
                    &["data/raw.csv", "prepare.py"],
                    &["data/f/x.csv"],
                ),
                step("lint", &[], &["src/a.py"], &["lint/out.txt"]),
                step(
                    "train",
                    &["prepare"],
                    &["data/f/x.csv", "train.py"],
                    &["artifacts/model.onnx"],
                ),
                step(
                    "evaluate",
                    &["train"],
                    &["artifacts/model.onnx", "evaluate.py"],
                    &["reports/m.json"],
                ),
            ],
            ..RunRecord::blank("r1")
        };
        let l = of("artifacts/model.onnx", "sha256:aa", Some(&run));
        assert_eq!(l.steps, ["prepare", "train"]);
        let paths = |v: &[Output]| v.iter().map(|o| o.path.clone()).collect::<Vec<_>>();
        assert_eq!(paths(&l.data), ["data/raw.csv"]);
        assert_eq!(paths(&l.code), ["prepare.py", "train.py"]);
        assert!(l.note.is_none());
        assert!(of("artifacts/model.onnx", "sha256:aa", None).note.is_some());
    }
}

//! The gate before a promote: where the pipeline declares checks, every model the release
//! serves must come from a successful run that ran each checked step and passed its checks.

use std::collections::BTreeMap;

use crate::runs::{RunRecord, Status};
use crate::spec::Step;

/// Why one model is not cleared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unchecked {
    pub model: String,
    /// `sha256:<hex>` (or `absent`).
    pub sha256: String,
    pub missing: String,
}

impl std::fmt::Display for Unchecked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short: String = self.sha256.chars().take(19).collect();
        write!(f, "{} ({short}…): {}", self.model, self.missing)
    }
}

/// The models (path → `sha256:`) that no qualifying run produced; empty when the steps
/// declare no checks.
pub fn unchecked(
    steps: &indexmap::IndexMap<String, Step>,
    models: &BTreeMap<String, String>,
    runs: &[RunRecord],
) -> Vec<Unchecked> {
    let checked: Vec<&String> = steps
        .iter()
        .filter(|(_, s)| !s.checks.is_empty())
        .map(|(n, _)| n)
        .collect();
    if checked.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (model, digest) in models {
        let hex = digest.trim_start_matches("sha256:");
        let makers: Vec<&RunRecord> = runs
            .iter()
            .filter(|r| r.status == Status::Succeeded)
            .filter(|r| {
                r.outputs
                    .iter()
                    .any(|o| &o.path == model && o.sha256 == hex)
            })
            .collect();
        let why = |r: &RunRecord| -> Option<String> {
            for name in &checked {
                match r.steps.iter().find(|s| &&s.name == name) {
                    None => {
                        return Some(format!(
                            "run {} did not run the checked step `{name}`",
                            r.id
                        ));
                    }
                    Some(s) if !s.status.succeeded() || s.checks.is_empty() => {
                        return Some(format!("run {} has no passed checks of `{name}`", r.id));
                    }
                    Some(s) => {
                        if let Some(c) = s.checks.iter().find(|c| !c.passed) {
                            return Some(format!("run {}: check failed: {}", r.id, c.describe()));
                        }
                    }
                }
            }
            None
        };
        if makers.iter().any(|r| why(r).is_none()) {
            continue;
        }
        let missing = match makers.first() {
            None => "no successful run produced these bytes; make it with `ferry run`".to_string(),
            Some(r) => why(r).unwrap_or_default(),
        };
        out.push(Unchecked {
            model: model.clone(),
            sha256: digest.clone(),
            missing,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::checks::CheckResult;
    use crate::runs::{Output, StepRun, StepStatus};

    fn step_run(name: &str, passed: Option<bool>) -> StepRun {
        StepRun {
            name: name.into(),
            status: StepStatus::Ran,
            needs: vec![],
            key: None,
            reason: None,
            duration_secs: 0.0,
            image: None,
            exit_code: None,
            inputs: vec![],
            outputs: vec![],
            checks: passed
                .map(|p| CheckResult {
                    file: "reports/m.json".into(),
                    metric: "auc".into(),
                    bar: ">= 0.8".into(),
                    value: Some(if p { 0.9 } else { 0.7 }),
                    passed: p,
                    error: None,
                })
                .into_iter()
                .collect(),
            log: None,
            notebook: None,
        }
    }

    fn run(id: &str, sha: &str, steps: Vec<StepRun>) -> RunRecord {
        RunRecord {
            outputs: vec![Output {
                path: "artifacts/model.onnx".into(),
                sha256: sha.into(),
                size: 1,
            }],
            steps,
            ..RunRecord::blank(id)
        }
    }

    #[test]
    fn a_model_needs_a_run_that_passed_every_checked_step() {
        let mut steps = indexmap::IndexMap::new();
        steps.insert("train".to_string(), Step::default());
        let mut evaluate = Step::default();
        evaluate.checks.insert(
            "reports/m.json".into(),
            [("auc".to_string(), ">= 0.8".to_string())]
                .into_iter()
                .collect(),
        );
        steps.insert("evaluate".to_string(), evaluate);
        let models =
            BTreeMap::from([("artifacts/model.onnx".to_string(), "sha256:aa".to_string())]);

        let none = unchecked(&steps, &models, &[]);
        assert!(none[0].missing.contains("no successful run"), "{none:?}");
        let partial = unchecked(
            &steps,
            &models,
            &[run("r1", "aa", vec![step_run("train", None)])],
        );
        assert!(
            partial[0]
                .missing
                .contains("did not run the checked step `evaluate`")
        );
        let failed = unchecked(
            &steps,
            &models,
            &[run(
                "r2",
                "aa",
                vec![step_run("train", None), step_run("evaluate", Some(false))],
            )],
        );
        assert!(failed[0].missing.contains("auc = 0.7"), "{failed:?}");
        assert!(
            failed[0]
                .to_string()
                .starts_with("artifacts/model.onnx (sha256:aa")
        );
        let other_bytes = unchecked(
            &steps,
            &models,
            &[run(
                "r3",
                "bb",
                vec![step_run("train", None), step_run("evaluate", Some(true))],
            )],
        );
        assert_eq!(other_bytes.len(), 1);
        let ok = unchecked(
            &steps,
            &models,
            &[
                run(
                    "r2",
                    "aa",
                    vec![step_run("train", None), step_run("evaluate", Some(false))],
                ),
                run(
                    "r4",
                    "aa",
                    vec![step_run("train", None), step_run("evaluate", Some(true))],
                ),
            ],
        );
        assert!(ok.is_empty(), "{ok:?}");
        steps.shift_remove("evaluate");
        assert!(
            unchecked(&steps, &models, &[]).is_empty(),
            "no checks, no gate"
        );
    }
}

//! A step's `checks:` evaluated against the JSON files it wrote: each metric's value and
//! whether it clears its bar, recorded with the run and read again before a promote.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::spec::{Check, metric_value};

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub file: String,
    pub metric: String,
    /// As written: `>= 0.8`.
    pub bar: String,
    /// The metric's value; absent when it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    pub passed: bool,
    /// Why it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CheckResult {
    /// `auc = 0.71 in artifacts/metrics.json, needs >= 0.8`.
    pub fn describe(&self) -> String {
        match (&self.value, &self.error) {
            (Some(v), _) => format!("{} = {v} in {}, needs {}", self.metric, self.file, self.bar),
            (None, Some(e)) => format!("{} in {}: {e}", self.metric, self.file),
            (None, None) => format!("{} in {}", self.metric, self.file),
        }
    }
}

/// Evaluates `checks` against the files under `dir` (where the step's outputs are).
pub fn evaluate(dir: &Path, checks: &[Check]) -> Vec<CheckResult> {
    checks
        .iter()
        .map(|c| {
            let path = c.file.under(dir);
            let value = std::fs::read(&path)
                .map_err(|e| format!("cannot read it: {e}"))
                .and_then(|b| {
                    serde_json::from_slice::<serde_json::Value>(&b)
                        .map_err(|e| format!("not JSON: {e}"))
                })
                .and_then(|doc| metric_value(&doc, &c.metric));
            let (value, error) = match value {
                Ok(v) => (Some(v), None),
                Err(e) => (None, Some(e)),
            };
            CheckResult {
                file: c.file.as_str().to_string(),
                metric: c.metric.clone(),
                bar: c.bar.to_string(),
                value,
                passed: value.is_some_and(|v| c.bar.passes(v)),
                error,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::RelPath;

    #[test]
    fn values_bars_and_unreadable_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("reports")).unwrap();
        std::fs::write(
            dir.path().join("reports/m.json"),
            r#"{"auc": 0.71, "n": 10}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("reports/bad.json"), "{").unwrap();
        let check = |file: &str, metric: &str, bar: &str| Check {
            file: RelPath::parse(file).unwrap(),
            metric: metric.into(),
            bar: bar.parse().unwrap(),
        };
        let r = evaluate(
            dir.path(),
            &[
                check("reports/m.json", "auc", ">= 0.8"),
                check("reports/m.json", "n", "> 5"),
                check("reports/bad.json", "auc", ">= 0.8"),
                check("reports/none.json", "auc", ">= 0.8"),
            ],
        );
        assert!(!r[0].passed);
        assert_eq!(
            r[0].describe(),
            "auc = 0.71 in reports/m.json, needs >= 0.8"
        );
        assert!(r[1].passed);
        assert!(!r[2].passed && r[2].error.as_deref().unwrap().starts_with("not JSON"));
        assert!(!r[3].passed && r[3].error.as_deref().unwrap().starts_with("cannot read"));
    }
}

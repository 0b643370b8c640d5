//! Promotion records: `.ferry/promotions/<env>.json`, one entry per revision applied to an
//! environment — what `ferry rollback` re-applies and `ferry status` compares the cluster with.
//! Written atomically (temp file + rename). The objects are stored as applied except the
//! Secret, whose values are never written to disk: a rollback reads the secrets file again.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::STATE_DIR;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot read the promotion history {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the promotion history {} is damaged: {message}\n  hint: move it aside; the cluster itself is unaffected",
        path.display()
    )]
    Damaged { path: PathBuf, message: String },
    #[error("cannot write the promotion history {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One revision of one environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    pub revision: u32,
    /// RFC 3339, UTC.
    pub time: String,
    /// `promote`, or `rollback` (then `rolled_back_to` names the revision re-applied).
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_to: Option<u32>,
    /// Where what was promoted came from (an environment name), if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub spec_hash: String,
    /// The serving image by digest.
    pub image: String,
    /// sha256 of each model file, by its path in the image.
    pub models: std::collections::BTreeMap<String, String>,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Names of the secret variables (never their values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_names: Vec<String>,
    /// The objects as applied, the Secret's values left out.
    pub objects: Vec<serde_json::Value>,
    pub ferry_version: String,
    /// The spec, files and models the revision was made from, for `ferry.lock` when the
    /// revision is put back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<crate::lock::Snapshot>,
}

/// Every revision of an environment, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub env: String,
    pub revisions: Vec<Revision>,
}

pub fn path(root: &Path, env: &str) -> PathBuf {
    root.join(STATE_DIR)
        .join("promotions")
        .join(format!("{env}.json"))
}

impl History {
    /// The history of `env`; empty when it was never promoted.
    pub fn load(root: &Path, env: &str) -> Result<History, HistoryError> {
        let path = path(root, env);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(History {
                    env: env.to_string(),
                    revisions: Vec::new(),
                });
            }
            Err(source) => return Err(HistoryError::Read { path, source }),
        };
        serde_json::from_slice(&bytes).map_err(|e| HistoryError::Damaged {
            path,
            message: e.to_string(),
        })
    }

    pub fn latest(&self) -> Option<&Revision> {
        self.revisions.last()
    }

    fn get(&self, number: u32) -> Option<&Revision> {
        self.revisions.iter().find(|r| r.revision == number)
    }

    /// The revision whose objects run when `r` does: a rollback runs the one it went back to.
    fn effective(&self, r: &Revision) -> u32 {
        let mut n = r.revision;
        // Bounded: a rollback always names an earlier revision.
        while let Some(to) = self.get(n).and_then(|x| x.rolled_back_to) {
            if to >= n {
                break;
            }
            n = to;
        }
        n
    }

    /// What `ferry rollback` goes back to: the revision that ran before the one running now.
    /// After an automatic rollback to revision 2, that is revision 1, not 2 again; each
    /// rollback steps further back.
    pub fn rollback_target(&self) -> Option<&Revision> {
        let running = self.effective(self.latest()?);
        let before = self
            .revisions
            .iter()
            .filter(|r| r.revision < running)
            .max_by_key(|r| r.revision)?;
        self.get(self.effective(before))
    }

    pub fn next_number(&self) -> u32 {
        self.latest().map_or(1, |r| r.revision + 1)
    }

    /// Appends a revision and writes the history.
    pub fn record(&mut self, root: &Path, revision: Revision) -> Result<(), HistoryError> {
        self.revisions.push(revision);
        let path = path(root, &self.env);
        let write = |source| HistoryError::Write {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(write)?;
        }
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(self).unwrap_or_default();
        std::fs::write(&tmp, json).map_err(write)?;
        std::fs::rename(&tmp, &path).map_err(write)
    }
}

/// An object fit to store: a Secret keeps its names, not its values.
pub fn storable(object: &serde_json::Value) -> serde_json::Value {
    let mut o = object.clone();
    if o["kind"] == "Secret"
        && let Some(map) = o.as_object_mut()
    {
        let names: Vec<serde_json::Value> = ["data", "stringData"]
            .iter()
            .filter_map(|k| map.remove(*k))
            .filter_map(|v| v.as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()))
            .flatten()
            .map(serde_json::Value::String)
            .collect();
        map.insert("data".into(), serde_json::json!({}));
        map.insert("ferryStoredKeys".into(), serde_json::Value::Array(names));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(n: u32) -> Revision {
        Revision {
            revision: n,
            time: "2026-11-23T12:00:00Z".into(),
            action: "promote".into(),
            rolled_back_to: None,
            source: Some("dev".into()),
            spec_hash: "sha256:ab".into(),
            image: format!("r/x@sha256:{n:064}"),
            models: Default::default(),
            namespace: "ns".into(),
            context: None,
            secret_names: vec!["DB".into()],
            objects: vec![storable(&serde_json::json!({
                "kind": "Secret", "data": {"DB": "aHVudGVyMg=="}
            }))],
            ferry_version: "0".into(),
            snapshot: None,
        }
    }

    #[test]
    fn records_round_trip_and_know_the_previous_revision() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = History::load(dir.path(), "staging").unwrap();
        assert!(h.latest().is_none() && h.rollback_target().is_none());
        assert_eq!(h.next_number(), 1);
        h.record(dir.path(), revision(1)).unwrap();
        h.record(dir.path(), revision(2)).unwrap();
        let back = History::load(dir.path(), "staging").unwrap();
        assert_eq!(back, h);
        assert_eq!(back.rollback_target().unwrap().revision, 1);
        assert_eq!(back.next_number(), 3);
    }

    #[test]
    fn each_rollback_steps_further_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = History::load(dir.path(), "staging").unwrap();
        assert!(h.rollback_target().is_none());
        h.record(dir.path(), revision(1)).unwrap();
        assert!(
            h.rollback_target().is_none(),
            "one revision: nothing before it"
        );
        h.record(dir.path(), revision(2)).unwrap();
        assert_eq!(h.rollback_target().unwrap().revision, 1);
        // A failed promotion put revision 2 back: revision 2 runs, so back means 1.
        let mut r3 = revision(3);
        r3.action = "rollback".into();
        r3.rolled_back_to = Some(2);
        h.record(dir.path(), r3).unwrap();
        assert_eq!(h.rollback_target().unwrap().revision, 1);
        // Rolled back to 1: nothing runs before 1.
        let mut r4 = revision(4);
        r4.action = "rollback".into();
        r4.rolled_back_to = Some(1);
        h.record(dir.path(), r4).unwrap();
        assert!(h.rollback_target().is_none());
        // A new promotion, then back: to what ran before it, revision 1 (through revision 4).
        h.record(dir.path(), revision(5)).unwrap();
        assert_eq!(h.rollback_target().unwrap().revision, 1);
    }

    #[test]
    fn secret_values_never_reach_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = History::load(dir.path(), "prod").unwrap();
        h.record(dir.path(), revision(1)).unwrap();
        let text = std::fs::read_to_string(path(dir.path(), "prod")).unwrap();
        assert!(!text.contains("aHVudGVyMg"), "{text}");
        assert!(text.contains("\"DB\""));
    }

    #[test]
    fn a_damaged_history_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "prod");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "{ not json").unwrap();
        let e = History::load(dir.path(), "prod").unwrap_err().to_string();
        assert!(e.contains("damaged") && e.contains("prod.json"), "{e}");
    }
}

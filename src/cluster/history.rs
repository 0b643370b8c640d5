//! The revisions of a cluster environment. There is one record of them: the promotions
//! `ferry.lock` keeps for the environment ([`Promotion`]), each with what a rollback re-applies.
//! This module reads that record and gives the one numbering `promote`, `rollback` and `status`
//! speak of: what runs now, what a failed promotion puts back, what `ferry rollback` goes back
//! to.
//!
//! `.ferry/promotions/<env>.json` is a copy written from the record after each change and never
//! read. A file of the earlier format (when it was a record of its own, before the lock held
//! whole revisions) is migrated: what it has that the lock lacks is read in, and the next
//! promotion or rollback writes it into the lock, keeps the file as `<env>.json.bak` and puts
//! the copy in its place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::kube::render;
use crate::lock::{self, ImageRef, Lock, LockError, Promotion};
use crate::spec::Project;
use crate::state::STATE_DIR;

/// Where revisions not migrated yet were read from.
const EARLIER_RECORD: &str = ".ferry/promotions";

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
    #[error(transparent)]
    Lock(#[from] LockError),
}

/// Every revision of an environment, oldest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    pub env: String,
    pub revisions: Vec<Promotion>,
    /// `ferry.lock`, or `.ferry/promotions` while the revisions are only in a file of the
    /// earlier format.
    pub recorded_in: &'static str,
}

pub fn path(root: &Path, env: &str) -> PathBuf {
    root.join(STATE_DIR)
        .join("promotions")
        .join(format!("{env}.json"))
}

impl History {
    /// The revisions of `env`; none when it was never promoted.
    pub fn load(project: &Project, env: &str) -> Result<History, HistoryError> {
        let lock = Lock::load(project)?;
        History::of(&lock, &project.root, env)
    }

    /// The revisions of `env` in `lock`, with what a file of the earlier format adds.
    pub fn of(lock: &Lock, root: &Path, env: &str) -> Result<History, HistoryError> {
        let mut revisions = lock
            .environments
            .get(env)
            .map(|e| e.promotions.clone())
            .unwrap_or_default();
        let in_lock = !revisions.is_empty();
        if (!in_lock || revisions.iter().any(|r| !r.is_complete()))
            && let Some(earlier) = read_earlier(root, env)?
        {
            migrate(&mut revisions, earlier);
        }
        let recorded_in = if in_lock || revisions.is_empty() {
            lock::LOCK_FILE
        } else {
            EARLIER_RECORD
        };
        Ok(History {
            env: env.to_string(),
            revisions,
            recorded_in,
        })
    }

    /// The newest revision: what runs now, as far as ferry knows.
    pub fn latest(&self) -> Option<&Promotion> {
        self.revisions.last()
    }

    fn get(&self, number: u32) -> Option<&Promotion> {
        self.revisions.iter().find(|r| r.revision == number)
    }

    /// The revision whose objects run when `r` does: a rollback runs the one it put back.
    fn effective(&self, r: &Promotion) -> u32 {
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
    pub fn rollback_target(&self) -> Option<&Promotion> {
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
}

/// Records that `promotion` runs in `project`'s environment now, with the serving image
/// `serving` (when known beyond its digest): in `ferry.lock`, a file of the earlier format
/// migrated first; then the copy in `.ferry/promotions`.
pub fn record(
    project: &Project,
    serving: Option<ImageRef>,
    promotion: Promotion,
) -> Result<(), HistoryError> {
    let env = lock::entry_name(project);
    let earlier = read_earlier(&project.root, &env)?;
    let migrated = earlier.is_some();
    let revisions = lock::update(project, |lock| {
        let entry = lock.environments.entry(env.clone()).or_default();
        if let Some(earlier) = earlier {
            migrate(&mut entry.promotions, earlier);
        }
        lock::push_promotion(entry, serving, promotion);
        entry.promotions.clone()
    })?;
    write_copy(&project.root, &env, &revisions, migrated)
}

/// The copy of the record in `.ferry/promotions`, marked so that it is never taken for a
/// record of the earlier format.
#[derive(Serialize)]
struct Copy<'a> {
    env: &'a str,
    written_from: &'static str,
    revisions: &'a [Promotion],
}

fn write_copy(
    root: &Path,
    env: &str,
    revisions: &[Promotion],
    replaces_earlier: bool,
) -> Result<(), HistoryError> {
    let path = path(root, env);
    let write = |source| HistoryError::Write {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(write)?;
    }
    if replaces_earlier {
        // The lock keeps the newest revisions only; the earlier file may hold older ones.
        std::fs::rename(&path, path.with_extension("json.bak")).map_err(write)?;
    }
    let copy = Copy {
        env,
        written_from: lock::LOCK_FILE,
        revisions,
    };
    let tmp = path.with_extension("json.tmp");
    let json = serde_json::to_vec_pretty(&copy).unwrap_or_default();
    std::fs::write(&tmp, json).map_err(write)?;
    std::fs::rename(&tmp, &path).map_err(write)
}

/// A revision as a file of the earlier format kept it.
#[derive(Deserialize)]
struct EarlierRevision {
    revision: u32,
    time: String,
    action: String,
    #[serde(default)]
    rolled_back_to: Option<u32>,
    #[serde(default)]
    source: Option<String>,
    spec_hash: String,
    image: String,
    models: BTreeMap<String, String>,
    namespace: String,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    secret_names: Vec<String>,
    objects: Vec<serde_json::Value>,
    ferry_version: String,
    #[serde(default)]
    snapshot: Option<lock::Snapshot>,
}

impl From<EarlierRevision> for Promotion {
    fn from(r: EarlierRevision) -> Promotion {
        Promotion {
            config: config_digest(&r.objects),
            revision: r.revision,
            time: r.time,
            action: r.action,
            rolled_back_to: r.rolled_back_to,
            image: r.image,
            spec_hash: r.spec_hash,
            from: r.source,
            namespace: Some(r.namespace),
            context: r.context,
            models: r.models,
            secret_names: r.secret_names,
            objects: r.objects,
            ferry: r.ferry_version,
            snapshot: r.snapshot,
        }
    }
}

/// The revisions of a file of the earlier format; `None` when there is no such file (none, or
/// the copy written from the lock).
fn read_earlier(root: &Path, env: &str) -> Result<Option<Vec<Promotion>>, HistoryError> {
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        written_from: Option<String>,
        #[serde(default)]
        revisions: serde_json::Value,
    }
    let path = path(root, env);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(HistoryError::Read { path, source }),
    };
    let damaged = |e: serde_json::Error| HistoryError::Damaged {
        path: path.clone(),
        message: e.to_string(),
    };
    let file: File = serde_json::from_slice(&bytes).map_err(damaged)?;
    if file.written_from.is_some() {
        return Ok(None);
    }
    let revisions: Vec<EarlierRevision> =
        serde_json::from_value(file.revisions).map_err(damaged)?;
    Ok(Some(revisions.into_iter().map(Promotion::from).collect()))
}

/// Adds to `revisions` (the lock's) what `earlier` (a file of the earlier format) has: all of
/// them when the lock has none; else what a rollback needs, for the lock's revisions that lack
/// it and that the file has under the same number and image. The lock's own word stands:
/// revisions only the file has are not taken when the lock has any.
fn migrate(revisions: &mut Vec<Promotion>, earlier: Vec<Promotion>) {
    if revisions.is_empty() {
        *revisions = earlier;
        return;
    }
    for r in revisions.iter_mut().filter(|r| !r.is_complete()) {
        if let Some(e) = earlier
            .iter()
            .find(|e| e.revision == r.revision && e.image == r.image)
        {
            *r = Promotion {
                revision: r.revision,
                time: r.time.clone(),
                action: r.action.clone(),
                image: r.image.clone(),
                spec_hash: r.spec_hash.clone(),
                config: r.config.clone().or_else(|| e.config.clone()),
                from: r.from.clone(),
                ..e.clone()
            };
        }
    }
}

/// The digest of the serving ConfigMap's data among `objects`, as `ferry status` compares it.
pub fn config_digest(objects: &[serde_json::Value]) -> Option<String> {
    objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap")
        .and_then(|o| serde_json::from_value(o["data"].clone()).ok())
        .map(|data| render::config_digest(&data))
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

    const SPEC: &str = "name: demo\nenvironment:\n  base: python:3.11-slim\nserve:\n  model: model.onnx\nenvironments:\n  staging:\n    target: kubernetes\n    registry: 127.0.0.1:5000/team\n";

    fn project(dir: &Path) -> Project {
        std::fs::write(dir.join("ferry.yaml"), SPEC).unwrap();
        std::fs::write(dir.join("model.onnx"), "m").unwrap();
        Project::load_dir(dir, Some("staging")).unwrap()
    }

    fn revision(n: u32) -> Promotion {
        Promotion {
            revision: n,
            time: "2026-11-23T12:00:00Z".into(),
            action: "promote".into(),
            from: Some("dev".into()),
            spec_hash: "sha256:ab".into(),
            image: format!("r/x@sha256:{n:064}"),
            namespace: Some("ns".into()),
            secret_names: vec!["DB".into()],
            objects: vec![storable(&serde_json::json!({
                "kind": "Secret", "data": {"DB": "aHVudGVyMg=="}
            }))],
            ferry: "0".into(),
            ..Promotion::default()
        }
    }

    fn rollback(n: u32, to: u32) -> Promotion {
        Promotion {
            action: "rollback".into(),
            rolled_back_to: Some(to),
            ..revision(n)
        }
    }

    fn history(revisions: Vec<Promotion>) -> History {
        History {
            env: "staging".into(),
            revisions,
            recorded_in: lock::LOCK_FILE,
        }
    }

    #[test]
    fn records_round_trip_through_the_lock_and_know_the_previous_revision() {
        let dir = tempfile::tempdir().unwrap();
        let p = project(dir.path());
        let h = History::load(&p, "staging").unwrap();
        assert!(h.latest().is_none() && h.rollback_target().is_none());
        assert_eq!(h.next_number(), 1);
        record(&p, None, revision(1)).unwrap();
        record(&p, None, revision(2)).unwrap();
        let back = History::load(&p, "staging").unwrap();
        assert_eq!(back, history(vec![revision(1), revision(2)]));
        assert_eq!(back.rollback_target().unwrap().revision, 1);
        assert_eq!(back.next_number(), 3);
        // The copy in .ferry/promotions is the lock's record, and is not read back.
        let copy: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path(dir.path(), "staging")).unwrap()).unwrap();
        assert_eq!(copy["written_from"], "ferry.lock");
        assert_eq!(copy["revisions"][1]["revision"], 2);
        std::fs::write(path(dir.path(), "staging"), "{\"written_from\": \"x\"}").unwrap();
        assert_eq!(History::load(&p, "staging").unwrap(), back);
    }

    #[test]
    fn each_rollback_steps_further_back() {
        let mut h = history(Vec::new());
        assert!(h.rollback_target().is_none());
        h.revisions.push(revision(1));
        assert!(
            h.rollback_target().is_none(),
            "one revision: nothing before it"
        );
        h.revisions.push(revision(2));
        assert_eq!(h.rollback_target().unwrap().revision, 1);
        // A failed promotion put revision 2 back: revision 2 runs, so back means 1.
        h.revisions.push(rollback(3, 2));
        assert_eq!(h.rollback_target().unwrap().revision, 1);
        // Rolled back to 1: nothing runs before 1.
        h.revisions.push(rollback(4, 1));
        assert!(h.rollback_target().is_none());
        // A new promotion, then back: to what ran before it, revision 1 (through revision 4).
        h.revisions.push(revision(5));
        assert_eq!(h.rollback_target().unwrap().revision, 1);
    }

    #[test]
    fn secret_values_never_reach_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let p = project(dir.path());
        record(&p, None, revision(1)).unwrap();
        for file in [path(dir.path(), "staging"), lock::path(dir.path())] {
            let text = std::fs::read_to_string(file).unwrap();
            assert!(!text.contains("aHVudGVyMg"), "{text}");
            assert!(text.contains("\"DB\""));
        }
    }

    /// A revision as the earlier format wrote it.
    fn earlier(n: u32, image: &str) -> serde_json::Value {
        serde_json::json!({
            "revision": n, "time": "t", "action": "promote", "source": "dev",
            "spec_hash": "sha256:ab", "image": image, "models": {"model.onnx": "00"},
            "namespace": "old-ns", "objects": [
                {"kind": "ConfigMap", "data": {"serving.json": "{}"}},
                {"kind": "Deployment"}
            ],
            "ferry_version": "0.1.0"
        })
    }

    #[test]
    fn a_record_of_the_earlier_format_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let p = project(dir.path());
        let file = path(dir.path(), "staging");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let (a, b) = ("r/x@sha256:1", "r/x@sha256:2");
        let text = serde_json::json!({
            "env": "staging", "revisions": [earlier(1, a), earlier(2, b)]
        });
        std::fs::write(&file, text.to_string()).unwrap();

        // Without a lock: read from the file, and said so.
        let h = History::load(&p, "staging").unwrap();
        assert_eq!(h.recorded_in, ".ferry/promotions");
        assert_eq!(h.revisions.len(), 2);
        let r = h.latest().unwrap();
        assert_eq!((r.image.as_str(), r.from.as_deref()), (b, Some("dev")));
        assert_eq!(r.namespace.as_deref(), Some("old-ns"));
        assert_eq!(r.ferry, "0.1.0");
        let config = render::config_digest(&[("serving.json".into(), "{}".into())].into());
        assert_eq!(r.config.as_deref(), Some(config.as_str()));
        assert_eq!(h.rollback_target().unwrap().image, a);
        assert!(
            !lock::path(dir.path()).exists(),
            "reading changes nothing on disk"
        );

        // A lock of the format before (numbers and images only): the file adds what a
        // rollback needs; the lock's word stands on the rest.
        let bare = |n: u32, image: &str| Promotion {
            revision: n,
            time: "lock".into(),
            action: "promote".into(),
            image: image.into(),
            spec_hash: "sha256:ab".into(),
            ..Promotion::default()
        };
        lock::update(&p, |l| {
            l.environments
                .entry("staging".into())
                .or_default()
                .promotions = vec![bare(1, a), bare(2, "r/x@sha256:other")];
        })
        .unwrap();
        let h = History::load(&p, "staging").unwrap();
        assert_eq!(h.recorded_in, "ferry.lock");
        assert_eq!(h.revisions[0].time, "lock");
        assert!(h.revisions[0].is_complete());
        assert!(
            !h.revisions[1].is_complete(),
            "another image under the same number is not that revision"
        );

        // The next record writes the migrated revisions into the lock and keeps the file aside.
        record(&p, None, revision(3)).unwrap();
        let lock = Lock::load(&p).unwrap();
        let kept = &lock.environments["staging"].promotions;
        assert_eq!(kept.len(), 3);
        assert!(kept[0].is_complete() && kept[2].is_complete());
        let text = std::fs::read_to_string(lock::path(dir.path())).unwrap();
        assert!(text.contains("\"format\": 2"), "{text}");
        assert!(file.with_extension("json.bak").exists());
        let copy: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(copy["revisions"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn a_damaged_history_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let p = project(dir.path());
        let file = path(dir.path(), "staging");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "{ not json").unwrap();
        let e = History::load(&p, "staging").unwrap_err().to_string();
        assert!(e.contains("damaged") && e.contains("staging.json"), "{e}");
    }
}

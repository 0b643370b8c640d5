//! `ferry.lock`: what each environment runs, committed with the code so that "dev, staging and
//! production run the same thing" can be checked rather than trusted.
//!
//! Per environment: the spec as resolved for it (field by field), the digest of every file it
//! names, each model's sha256, the images (base, environment, project, serving — by id, and the
//! serving image by registry digest), the pinned Python packages, and the promotions — the one
//! record of a cluster environment's revisions, each with what a rollback re-applies. The text
//! is stable — maps sorted, no timestamps outside the promotions — so a diff of the lock is a
//! review of what changed.
//!
//! Docker environments record what was last built, trained or served there; cluster
//! environments record what was last promoted (or rolled back) there, which is what `promote`
//! compares with before it takes an environment's release to the next one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::{Project, SpecError, TargetKind, model_files, path_digest, referenced_files};

pub const LOCK_FILE: &str = "ferry.lock";

/// Bumped when a lock written by this version cannot be read by an older one.
const FORMAT: u32 = 2;

/// The format of a lock that uses nothing newer: a promotion carrying what a rollback
/// re-applies needs [`FORMAT`]; any other lock is written as format 1, which older versions
/// still read.
const FORMAT_WITHOUT_RECORDS: u32 = 1;

/// The entry of the base spec, when no environment is applied: a name no environment can have
/// (they are DNS labels).
pub const BASE_ENTRY: &str = "(base)";

/// How many promotions an environment keeps in the lock.
const KEEP_PROMOTIONS: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} is not a lock file ferry can read: {message}\n  hint: restore it from version control, or remove it (ferry writes a new one on the next build, train or promote)",
        path.display()
    )]
    Parse { path: PathBuf, message: String },
    #[error(
        "{} was written for the project {found}, but {spec} is the project {expected}: it is the lock of another spec\n  hint: restore this project's own ferry.lock from version control, or remove it to start a new one",
        path.display()
    )]
    OtherProject {
        path: PathBuf,
        spec: String,
        found: String,
        expected: String,
    },
    #[error(
        "{} has format {found}, newer than this ferry reads ({FORMAT})\n  hint: upgrade ferry to the version that wrote it ({writer})",
        path.display()
    )]
    NewerFormat {
        path: PathBuf,
        found: u32,
        writer: String,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Spec(#[from] SpecError),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub format: u32,
    /// The ferry that last wrote the file.
    pub ferry: String,
    pub project: String,
    pub environments: BTreeMap<String, EnvLock>,
}

/// What one environment runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvLock {
    /// The ferry that last wrote this entry.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ferry: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
    /// The resolved spec, one leaf field per key (`serve.batching.max_batch_size`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub spec: BTreeMap<String, serde_json::Value>,
    /// `sha256:` of each file (or directory tree) the spec names, models aside.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    /// `sha256:` of each model file served.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, String>,
    /// The run (`.ferry/runs/<id>`) that produced each model file's bytes, where one did:
    /// the way from a served model back to the data and code it was made from.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Images::is_empty")]
    pub images: Images,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<PythonLock>,
    /// Newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub promotions: Vec<Promotion>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Images {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<ImageRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<ImageRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<ImageRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<ImageRef>,
}

impl Images {
    fn is_empty(&self) -> bool {
        self.base.is_none()
            && self.environment.is_none()
            && self.project.is_none()
            && self.serving.is_none()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRef {
    /// The local name (a content tag); unknown for an image put back by a rollback.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
    /// The engine's image id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// `repository@sha256:…` once pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// The Python packages an environment image installs: exact versions and wheel hashes, resolved
/// once from the requirements and reused until they change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PythonLock {
    /// `sha256:` of the requirement lines the pins were resolved from.
    pub requirements: String,
    /// The interpreter and platform the wheels are for, e.g. `cp311-manylinux_2_36_x86_64`.
    pub target: String,
    pub packages: Vec<Pin>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    pub name: String,
    pub version: String,
    pub wheel: String,
    pub sha256: String,
}

impl PythonLock {
    /// requirements.txt lines that install exactly these wheels, with hash checking.
    pub fn requirement_lines(&self) -> Vec<String> {
        self.packages
            .iter()
            .map(|p| format!("{}=={} --hash=sha256:{}", p.name, p.version, p.sha256))
            .collect()
    }
}

/// One revision of a cluster environment: a promotion, or a rollback that put an earlier
/// revision back under a new number. Revisions written by format 1 lack what a rollback
/// re-applies (`objects` on).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Promotion {
    pub revision: u32,
    pub time: String,
    /// `promote` or `rollback`.
    pub action: String,
    /// A rollback's: the revision it put back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_to: Option<u32>,
    /// The serving image by digest.
    pub image: String,
    pub spec_hash: String,
    /// `sha256:` of the serving ConfigMap's data as applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// The environment what was promoted came from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// sha256 of each model file, by its path in the image.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, String>,
    /// Names of the secret variables (never their values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_names: Vec<String>,
    /// The objects as applied, a Secret's values left out (a rollback reads the secrets file
    /// again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<serde_json::Value>,
    /// The ferry that applied it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ferry: String,
    /// The spec, files and models it was made from: the entry's again when it is put back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
}

impl Promotion {
    /// Whether it holds what a rollback re-applies.
    pub fn is_complete(&self) -> bool {
        !self.objects.is_empty() && self.namespace.is_some()
    }
}

/// The spec-side facts of an environment as they are on disk now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub spec_hash: String,
    pub spec: BTreeMap<String, serde_json::Value>,
    pub files: BTreeMap<String, String>,
    pub models: BTreeMap<String, String>,
    /// Model path → the run that produced its bytes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runs: BTreeMap<String, String>,
}

impl Snapshot {
    /// The snapshot of `project` as resolved for its environment.
    pub fn of(project: &Project) -> Result<Snapshot, LockError> {
        let mut spec = BTreeMap::new();
        let value = serde_json::to_value(&project.spec).unwrap_or_default();
        flatten(&value, "", &mut spec);
        // The entry's key already says which environment it is.
        spec.remove("env");
        let model_paths: Vec<_> = project
            .spec
            .serve
            .as_ref()
            .map(|s| model_files(s).collect())
            .unwrap_or_default();
        let mut files = BTreeMap::new();
        for rel in referenced_files(project) {
            if model_paths.contains(&rel) {
                continue;
            }
            files.insert(rel.to_string(), digest_or_absent(project, rel)?);
        }
        let mut models = BTreeMap::new();
        for rel in model_paths {
            models.insert(rel.to_string(), digest_or_absent(project, rel)?);
        }
        let runs = producing_runs(&project.root, &models);
        Ok(Snapshot {
            spec_hash: project.hash()?.to_string(),
            spec,
            files,
            models,
            runs,
        })
    }
}

/// For each model (path → `sha256:`), the newest successful run whose outputs hold exactly
/// those bytes at that path.
pub fn producing_runs(root: &Path, models: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let runs = crate::runs::list(root);
    models
        .iter()
        .filter_map(|(path, digest)| {
            let hex = digest.strip_prefix("sha256:")?;
            runs.iter()
                .find(|r| {
                    r.status == crate::runs::Status::Succeeded
                        && r.outputs.iter().any(|o| &o.path == path && o.sha256 == hex)
                })
                .map(|r| (path.clone(), r.id.clone()))
        })
        .collect()
}

/// Every run the lock names as a model's maker, in any environment or recorded promotion:
/// the runs `ferry gc --runs` keeps.
pub fn lineage_runs(project: &Project) -> std::collections::BTreeSet<String> {
    let Ok(lock) = Lock::load(project) else {
        return Default::default();
    };
    lock.environments
        .values()
        .flat_map(|e| {
            e.runs.values().cloned().chain(
                e.promotions
                    .iter()
                    .filter_map(|p| p.snapshot.as_ref())
                    .flat_map(|s| s.runs.values().cloned()),
            )
        })
        .collect()
}

fn digest_or_absent(project: &Project, rel: &crate::spec::RelPath) -> Result<String, LockError> {
    Ok(path_digest(&project.root, rel)?.unwrap_or_else(|| "absent".to_string()))
}

/// Leaf fields of a JSON value, keyed by their path (`a.b`, `a.list[0].c`); lists of plain
/// values stay one field.
fn flatten(v: &serde_json::Value, prefix: &str, out: &mut BTreeMap<String, serde_json::Value>) {
    use serde_json::Value;
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                flatten(child, &key(k), out);
            }
        }
        Value::Array(items) if items.iter().any(|i| i.is_object() || i.is_array()) => {
            for (i, child) in items.iter().enumerate() {
                flatten(child, &format!("{prefix}[{i}]"), out);
            }
        }
        Value::Null => {}
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

/// One difference between what was recorded and what is now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `spec field serve.port`, `file requirements.txt`, `model artifacts/model.onnx`.
    pub what: String,
    pub was: String,
    pub now: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} → {}", self.what, self.was, self.now)
    }
}

/// What differs between a recorded environment and a snapshot: spec fields, files, models.
pub fn changes(recorded: &EnvLock, now: &Snapshot) -> Vec<Change> {
    let mut out = Vec::new();
    let show = |v: Option<&serde_json::Value>| match v {
        None => "(unset)".to_string(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    diff_maps(&recorded.spec, &now.spec, |k, a, b| {
        out.push(Change {
            what: format!("spec field {k}"),
            was: show(a),
            now: show(b),
        })
    });
    let short = |v: Option<&String>| match v {
        None => "(not named)".to_string(),
        Some(d) => short_digest(d),
    };
    diff_maps(&recorded.files, &now.files, |k, a, b| {
        out.push(Change {
            what: format!("file {k}"),
            was: short(a),
            now: short(b),
        })
    });
    diff_maps(&recorded.models, &now.models, |k, a, b| {
        out.push(Change {
            what: format!("model {k}"),
            was: short(a),
            now: short(b),
        })
    });
    out
}

/// What differs between two environments: `was` is the first's, `now` the second's. The specs,
/// files and models as they resolve now for each, then what `ferry.lock` says each runs: the
/// serving image (by digest: registries differ, content must not), the environment image and
/// the Python pins.
pub fn diff_envs(
    a: (&Snapshot, Option<&EnvLock>),
    b: (&Snapshot, Option<&EnvLock>),
) -> Vec<Change> {
    let as_entry = |s: &Snapshot| {
        let mut e = EnvLock::default();
        set_snapshot(&mut e, s.clone());
        e
    };
    let mut out = changes(&as_entry(a.0), b.0);
    let none = || "(none recorded)".to_string();
    let digest = |e: Option<&EnvLock>| {
        e.and_then(|e| e.images.serving.as_ref())
            .and_then(|s| s.digest.as_deref())
            .and_then(|d| d.rsplit_once('@'))
            .map_or_else(none, |(_, d)| short_digest(d))
    };
    let running = |e: Option<&EnvLock>| {
        e.and_then(|e| e.promotions.last())
            .and_then(|p| p.image.rsplit_once('@'))
            .map_or_else(none, |(_, d)| short_digest(d))
    };
    let env_image = |e: Option<&EnvLock>| {
        e.and_then(|e| e.images.environment.as_ref())
            .map_or_else(none, |i| i.tag.clone())
    };
    for (what, x, y) in [
        ("serving image", digest(a.1), digest(b.1)),
        ("promoted image", running(a.1), running(b.1)),
        ("environment image", env_image(a.1), env_image(b.1)),
    ] {
        if x != y {
            out.push(Change {
                what: what.to_string(),
                was: x,
                now: y,
            });
        }
    }
    let pins = |e: Option<&EnvLock>| -> BTreeMap<String, String> {
        e.and_then(|e| e.python.as_ref())
            .map(|p| {
                p.packages
                    .iter()
                    .map(|p| {
                        (
                            p.name.clone(),
                            format!(
                                "{} ({})",
                                p.version,
                                short_digest(&format!("sha256:{}", p.sha256))
                            ),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    diff_maps(&pins(a.1), &pins(b.1), |k, x, y| {
        out.push(Change {
            what: format!("python package {k}"),
            was: x.cloned().unwrap_or_else(|| "(not installed)".into()),
            now: y.cloned().unwrap_or_else(|| "(not installed)".into()),
        })
    });
    out
}

/// Calls `f` for every key whose value differs (or is on one side only), in key order.
fn diff_maps<V: PartialEq>(
    a: &BTreeMap<String, V>,
    b: &BTreeMap<String, V>,
    mut f: impl FnMut(&str, Option<&V>, Option<&V>),
) {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let (x, y) = (a.get(k), b.get(k));
        if x != y {
            f(k, x, y);
        }
    }
}

/// `sha256:0123456789ab` (12 hex digits) for messages.
pub fn short_digest(d: &str) -> String {
    match d.split_once(':') {
        Some((alg, hex)) if hex.len() > 12 => format!("{alg}:{}", &hex[..12]),
        _ => d.to_string(),
    }
}

/// The entry name of a project's environment.
pub fn entry_name(project: &Project) -> String {
    project
        .spec
        .env
        .clone()
        .unwrap_or_else(|| BASE_ENTRY.to_string())
}

pub fn path(root: &Path) -> PathBuf {
    root.join(LOCK_FILE)
}

impl Lock {
    /// The lock of `project`: read from `ferry.lock`, or empty when there is none. A lock of
    /// another project, or of a newer format, is refused.
    pub fn load(project: &Project) -> Result<Lock, LockError> {
        let path = path(&project.root);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Lock {
                    format: FORMAT,
                    ferry: env!("CARGO_PKG_VERSION").to_string(),
                    project: project.spec.name.clone(),
                    environments: BTreeMap::new(),
                });
            }
            Err(source) => return Err(LockError::Read { path, source }),
        };
        Lock::parse(&text, &path, project)
    }

    fn parse(text: &str, path: &Path, project: &Project) -> Result<Lock, LockError> {
        #[derive(Deserialize)]
        struct Head {
            format: u32,
            #[serde(default)]
            ferry: String,
        }
        let head: Head = serde_json::from_str(text).map_err(|e| LockError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if head.format > FORMAT {
            return Err(LockError::NewerFormat {
                path: path.to_path_buf(),
                found: head.format,
                writer: head.ferry,
            });
        }
        let lock: Lock = serde_json::from_str(text).map_err(|e| LockError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if lock.project != project.spec.name {
            return Err(LockError::OtherProject {
                path: path.to_path_buf(),
                spec: project.file.display().to_string(),
                found: lock.project,
                expected: project.spec.name.clone(),
            });
        }
        Ok(lock)
    }

    /// The stable text of the lock.
    pub fn to_text(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// The oldest format that holds everything in the lock.
    fn needed_format(&self) -> u32 {
        let records = self
            .environments
            .values()
            .flat_map(|e| &e.promotions)
            .any(|p| *p != format_1(p));
        if records {
            FORMAT
        } else {
            FORMAT_WITHOUT_RECORDS
        }
    }

    /// Pins resolved before from the same requirements for the same interpreter, in any
    /// environment.
    pub fn pins(&self, requirements: &str, target: &str) -> Option<&PythonLock> {
        self.environments
            .values()
            .filter_map(|e| e.python.as_ref())
            .find(|p| p.requirements == requirements && p.target == target)
    }
}

/// Reads the lock, lets `f` change it and writes it back when it changed, with other ferry
/// processes of the project kept out meanwhile (a build in `ferry dev` and a `ferry train` at
/// the same time must not lose each other's update).
pub fn update<T>(project: &Project, f: impl FnOnce(&mut Lock) -> T) -> Result<T, LockError> {
    let path = path(&project.root);
    let write = |source| LockError::Write {
        path: path.clone(),
        source,
    };
    let guard_dir = project.root.join(".ferry");
    std::fs::create_dir_all(&guard_dir).map_err(write)?;
    let guard = std::fs::File::create(guard_dir.join("lock.guard")).map_err(write)?;
    guard.lock().map_err(write)?;

    let mut lock = Lock::load(project)?;
    let before = lock.clone();
    let out = f(&mut lock);
    if lock != before || !path.exists() {
        lock.format = lock.needed_format();
        lock.ferry = env!("CARGO_PKG_VERSION").to_string();
        let tmp = path.with_extension("lock.tmp");
        let mut file = std::fs::File::create(&tmp).map_err(write)?;
        file.write_all(lock.to_text().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(write)?;
        std::fs::rename(&tmp, &path).map_err(write)?;
    }
    Ok(out)
}

/// Updates the entry of `project`'s environment. A Docker environment's spec, files and models
/// are refreshed with it (they are what was last built or run there); a cluster environment's
/// stay what was last promoted, which only [`record_promotion`] changes.
pub fn update_entry(project: &Project, f: impl FnOnce(&mut EnvLock)) -> Result<(), LockError> {
    let snapshot = if project.spec.target == TargetKind::Docker {
        Some(Snapshot::of(project)?)
    } else {
        None
    };
    let name = entry_name(project);
    update(project, |lock| {
        let entry = lock.environments.entry(name).or_default();
        if let Some(s) = snapshot {
            set_snapshot(entry, s);
        }
        f(entry);
        entry.ferry = env!("CARGO_PKG_VERSION").to_string();
    })
}

fn set_snapshot(entry: &mut EnvLock, s: Snapshot) {
    entry.spec_hash = Some(s.spec_hash);
    entry.spec = s.spec;
    entry.files = s.files;
    entry.models = s.models;
    entry.runs = s.runs;
}

/// The fields of a promotion that format 1 knows.
fn format_1(p: &Promotion) -> Promotion {
    Promotion {
        revision: p.revision,
        time: p.time.clone(),
        action: p.action.clone(),
        image: p.image.clone(),
        spec_hash: p.spec_hash.clone(),
        config: p.config.clone(),
        from: p.from.clone(),
        ..Promotion::default()
    }
}

/// Records in `entry` that `promotion` runs now, with the serving image `serving` (when known
/// beyond its digest): the entry's spec, files and models become those it was made from. The
/// oldest promotions beyond [`KEEP_PROMOTIONS`] are dropped.
pub fn push_promotion(entry: &mut EnvLock, serving: Option<ImageRef>, promotion: Promotion) {
    entry.ferry = env!("CARGO_PKG_VERSION").to_string();
    match promotion.snapshot.clone() {
        Some(s) => set_snapshot(entry, s),
        None => entry.spec_hash = Some(promotion.spec_hash.clone()),
    }
    entry.images.serving = Some(serving.unwrap_or_else(|| ImageRef {
        digest: Some(promotion.image.clone()),
        ..ImageRef::default()
    }));
    entry.promotions.push(promotion);
    let extra = entry.promotions.len().saturating_sub(KEEP_PROMOTIONS);
    entry.promotions.drain(..extra);
}

/// The pins of a wheelhouse: one per wheel file in `dir`, sorted by name.
pub fn pins_of_wheelhouse(dir: &Path) -> std::io::Result<Vec<Pin>> {
    let mut pins = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some((name, version)) = wheel_name_version(file) else {
            continue;
        };
        pins.push(Pin {
            name,
            version,
            wheel: file.to_string(),
            sha256: crate::spec::sha256_file(&path)?,
        });
    }
    pins.sort();
    Ok(pins)
}

/// `(normalised name, version)` of a wheel file name,
/// `{name}-{version}(-{build})?-{python}-{abi}-{platform}.whl`.
fn wheel_name_version(file: &str) -> Option<(String, String)> {
    let stem = file.strip_suffix(".whl")?;
    let parts: Vec<&str> = stem.split('-').collect();
    if !(5..=6).contains(&parts.len()) {
        return None;
    }
    Some((normalise(parts[0]), parts[1].to_string()))
}

/// PEP 503: lower case, runs of `-`, `_` and `.` as one `-`.
/// A project name as ferry.lock writes it (PEP 503: lowercase, runs of `-_.` as one `-`).
pub(crate) fn normalise(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(dir: &Path, yaml: &str, env: Option<&str>) -> Project {
        std::fs::write(dir.join("ferry.yaml"), yaml).unwrap();
        Project::load_dir(dir, env).unwrap()
    }

    const SPEC: &str = "name: demo\nenvironment:\n  base: python:3.11-slim\n  requirements: requirements.txt\nserve:\n  model: model.onnx\n  batching: { max_batch_size: 8, max_delay_ms: 2 }\nenvironments:\n  dev: { target: docker }\n  staging:\n    target: kubernetes\n    registry: 127.0.0.1:5000/team\n    serve: { replicas: 2 }\n";

    #[test]
    fn snapshot_flattens_the_spec_and_hashes_files_and_models() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("requirements.txt"), "numpy\n").unwrap();
        std::fs::write(dir.path().join("model.onnx"), "m").unwrap();
        let p = project(dir.path(), SPEC, Some("staging"));
        let s = Snapshot::of(&p).unwrap();
        assert_eq!(s.spec["serve.replicas"], serde_json::json!(2));
        assert_eq!(
            s.spec["serve.batching.max_batch_size"],
            serde_json::json!(8)
        );
        assert_eq!(s.spec["name"], serde_json::json!("demo"));
        assert!(!s.spec.contains_key("env"));
        assert_eq!(
            s.files["requirements.txt"],
            format!(
                "sha256:{}",
                crate::spec::sha256_file(&dir.path().join("requirements.txt")).unwrap()
            )
        );
        assert!(!s.files.contains_key("model.onnx"), "models are apart");
        assert!(s.models["model.onnx"].starts_with("sha256:"));
    }

    #[test]
    fn changes_name_the_field_the_file_and_the_model() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("requirements.txt"), "numpy\n").unwrap();
        std::fs::write(dir.path().join("model.onnx"), "m").unwrap();
        let p = project(dir.path(), SPEC, Some("staging"));
        let before = Snapshot::of(&p).unwrap();
        let mut entry = EnvLock::default();
        set_snapshot(&mut entry, before);
        assert!(changes(&entry, &Snapshot::of(&p).unwrap()).is_empty());

        std::fs::write(dir.path().join("model.onnx"), "n").unwrap();
        std::fs::write(dir.path().join("requirements.txt"), "numpy==2.0\n").unwrap();
        let p = project(
            dir.path(),
            &SPEC.replace("max_batch_size: 8", "max_batch_size: 16"),
            Some("staging"),
        );
        let c = changes(&entry, &Snapshot::of(&p).unwrap());
        let what: Vec<&str> = c.iter().map(|c| c.what.as_str()).collect();
        assert_eq!(
            what,
            [
                "spec field serve.batching.max_batch_size",
                "file requirements.txt",
                "model model.onnx"
            ]
        );
        assert_eq!((c[0].was.as_str(), c[0].now.as_str()), ("8", "16"));
    }

    #[test]
    fn the_lock_is_stable_text_and_refuses_another_project() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("requirements.txt"), "numpy\n").unwrap();
        std::fs::write(dir.path().join("model.onnx"), "m").unwrap();
        let p = project(dir.path(), SPEC, None);
        update_entry(&p, |e| {
            e.images.environment = Some(ImageRef {
                tag: "ferry/demo-env:1".into(),
                id: "sha256:1".into(),
                digest: None,
            })
        })
        .unwrap();
        let first = std::fs::read_to_string(path(dir.path())).unwrap();
        assert!(
            first.contains("\"dev\""),
            "no env given resolves dev: {first}"
        );
        // The same update again writes the same bytes.
        update_entry(&p, |_| {}).unwrap();
        assert_eq!(std::fs::read_to_string(path(dir.path())).unwrap(), first);
        let lock = Lock::load(&p).unwrap();
        assert_eq!(lock.to_text(), first);

        let other = project(dir.path(), &SPEC.replace("name: demo", "name: other"), None);
        let err = Lock::load(&other).unwrap_err().to_string();
        assert!(
            err.contains("written for the project demo") && err.contains("is the project other"),
            "{err}"
        );
        let newer = first.replace("\"format\": 1", "\"format\": 9");
        std::fs::write(path(dir.path()), newer).unwrap();
        let err = Lock::load(&p).unwrap_err().to_string();
        assert!(err.contains("format 9"), "{err}");
        std::fs::write(path(dir.path()), "{ not json").unwrap();
        let err = Lock::load(&p).unwrap_err().to_string();
        assert!(err.contains("not a lock file"), "{err}");
    }

    #[test]
    fn promotions_are_kept_bounded_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("requirements.txt"), "numpy\n").unwrap();
        std::fs::write(dir.path().join("model.onnx"), "m").unwrap();
        let p = project(dir.path(), SPEC, Some("staging"));
        for n in 1..=25 {
            let s = Snapshot::of(&p).unwrap();
            let promo = Promotion {
                revision: n,
                time: "t".into(),
                action: "promote".into(),
                image: format!("r@sha256:{n}"),
                spec_hash: s.spec_hash.clone(),
                snapshot: Some(s),
                ..Promotion::default()
            };
            update(&p, |lock| {
                let entry = lock.environments.entry("staging".into()).or_default();
                push_promotion(entry, None, promo)
            })
            .unwrap();
        }
        let lock = Lock::load(&p).unwrap();
        let e = &lock.environments["staging"];
        // Promotions that carry what a rollback re-applies need the newer format; a lock
        // without them stays readable by the ferry before (see the stable-text test).
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        assert!(text.contains("\"format\": 2"), "{text}");
        assert_eq!(e.promotions.len(), KEEP_PROMOTIONS);
        assert_eq!(e.promotions.last().unwrap().revision, 25);
        assert_eq!(e.promotions[0].revision, 6);
        // A cluster environment's snapshot is what was promoted, not refreshed by builds.
        std::fs::write(dir.path().join("model.onnx"), "changed").unwrap();
        update_entry(&p, |_| {}).unwrap();
        let lock = Lock::load(&p).unwrap();
        assert_eq!(lock.environments["staging"].models, e.models);
    }

    #[test]
    fn environments_are_diffed_by_spec_and_by_what_they_run() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("requirements.txt"), "numpy\n").unwrap();
        std::fs::write(dir.path().join("model.onnx"), "m").unwrap();
        let dev = Snapshot::of(&project(dir.path(), SPEC, Some("dev"))).unwrap();
        let staging = Snapshot::of(&project(dir.path(), SPEC, Some("staging"))).unwrap();
        let mut a = EnvLock::default();
        a.images.serving = Some(ImageRef {
            tag: "ferry/demo-serve:1".into(),
            id: "sha256:1".into(),
            digest: Some("r1/demo-serve@sha256:aaaaaaaaaaaaaaaa".into()),
        });
        let mut b = a.clone();
        b.images.serving.as_mut().unwrap().digest =
            Some("r2/demo-serve@sha256:aaaaaaaaaaaaaaaa".into());
        let c = diff_envs((&dev, Some(&a)), (&staging, Some(&b)));
        let what: Vec<&str> = c.iter().map(|c| c.what.as_str()).collect();
        assert!(what.contains(&"spec field serve.replicas"), "{what:?}");
        assert!(what.contains(&"spec field target"), "{what:?}");
        assert!(
            !what.contains(&"serving image"),
            "the same digest in two registries is the same image: {what:?}"
        );
        b.images.serving.as_mut().unwrap().digest =
            Some("r2/demo-serve@sha256:bbbbbbbbbbbbbbbb".into());
        b.python = Some(PythonLock {
            requirements: String::new(),
            target: String::new(),
            packages: vec![Pin {
                name: "numpy".into(),
                version: "2.0.0".into(),
                wheel: "w".into(),
                sha256: "00".into(),
            }],
        });
        let c = diff_envs((&dev, Some(&a)), (&staging, Some(&b)));
        let what: Vec<&str> = c.iter().map(|c| c.what.as_str()).collect();
        assert!(what.contains(&"serving image"), "{what:?}");
        assert!(what.contains(&"python package numpy"), "{what:?}");
    }

    #[test]
    fn wheel_names_are_parsed_and_normalised() {
        assert_eq!(
            wheel_name_version("scikit_learn-1.5.2-cp311-cp311-manylinux_2_17_x86_64.whl"),
            Some(("scikit-learn".into(), "1.5.2".into()))
        );
        assert_eq!(
            wheel_name_version("Foo.Bar-2.0-1-py3-none-any.whl"),
            Some(("foo-bar".into(), "2.0".into()))
        );
        assert_eq!(wheel_name_version("x.tar.gz"), None);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("six-1.16.0-py2.py3-none-any.whl"), "w").unwrap();
        std::fs::write(dir.path().join(".complete"), "").unwrap();
        let pins = pins_of_wheelhouse(dir.path()).unwrap();
        assert_eq!(pins.len(), 1);
        let lock = PythonLock {
            requirements: String::new(),
            target: String::new(),
            packages: pins,
        };
        assert_eq!(
            lock.requirement_lines(),
            [format!(
                "six==1.16.0 --hash=sha256:{}",
                crate::spec::sha256_file(&dir.path().join("six-1.16.0-py2.py3-none-any.whl"))
                    .unwrap()
            )]
        );
    }
}

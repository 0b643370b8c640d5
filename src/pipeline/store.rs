//! The step cache under `.ferry/cache/`: file contents by sha256 (`objects/ab/cdef…`) and one
//! entry per successful step key (`steps/<key>.json`) listing the outputs it wrote. Objects are
//! written once, to a temporary name and renamed; every restore checks each byte against its
//! sha256, so a damaged object is found, dropped, and the step runs again.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::PipelineError;
use super::hashes::Hashes;
use super::key::KeyParts;
use crate::runs::Output;
use crate::spec::RelPath;
use crate::state::STATE_DIR;

/// A successful step's results, by its key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub step: String,
    pub key: String,
    pub parts: KeyParts,
    /// Every file the step's outputs held, sorted by path.
    pub outputs: Vec<Output>,
    /// The run that made it.
    pub run: String,
    /// RFC 3339, UTC.
    pub created: String,
}

/// Why cached outputs could not be put back.
#[derive(Debug)]
pub struct Damaged(pub String);

pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn open(root: &Path) -> Store {
        Store {
            dir: root.join(STATE_DIR).join("cache"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn object(&self, sha256: &str) -> PathBuf {
        let hex = sha256.trim_start_matches("sha256:");
        let (a, b) = hex.split_at(hex.len().min(2));
        self.dir.join("objects").join(a).join(b)
    }

    fn entry_path(&self, key: &str) -> PathBuf {
        self.dir
            .join("steps")
            .join(format!("{}.json", key.trim_start_matches("sha256:")))
    }

    /// A scratch directory inside the cache (same file system as the project, so renames work).
    pub fn scratch(&self) -> Result<tempfile::TempDir, PipelineError> {
        let tmp = self.dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(PipelineError::io("cannot create", &tmp))?;
        tempfile::tempdir_in(&tmp).map_err(PipelineError::io("cannot create a directory in", &tmp))
    }

    pub fn entry(&self, key: &str) -> Option<Entry> {
        let bytes = std::fs::read(self.entry_path(key)).ok()?;
        serde_json::from_slice(&bytes)
            .ok()
            .filter(|e: &Entry| e.key == key)
    }

    /// Every readable entry.
    pub fn entries(&self) -> Vec<Entry> {
        let Ok(dir) = std::fs::read_dir(self.dir.join("steps")) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    }

    /// The newest entry of the step named `step`.
    pub fn latest(&self, step: &str) -> Option<Entry> {
        self.entries()
            .into_iter()
            .filter(|e| e.step == step)
            .max_by(|a, b| a.created.cmp(&b.created).then(a.run.cmp(&b.run)))
    }

    /// Copies each output file into the objects (those not there yet) and writes the entry.
    /// `files` are absolute paths with their records.
    pub fn save(&self, entry: &Entry, root: &Path) -> Result<(), PipelineError> {
        for o in &entry.outputs {
            let obj = self.object(&o.sha256);
            if obj.exists() {
                continue;
            }
            let from = root.join(&o.path);
            let parent = obj.parent().unwrap_or(&self.dir);
            std::fs::create_dir_all(parent).map_err(PipelineError::io("cannot create", parent))?;
            let tmp = parent.join(format!(".{}.tmp", rand::random::<u32>()));
            std::fs::copy(&from, &tmp)
                .map_err(PipelineError::io("cannot copy into the cache", &from))?;
            std::fs::rename(&tmp, &obj).map_err(PipelineError::io("cannot write", &obj))?;
        }
        let path = self.entry_path(&entry.key);
        let parent = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(parent).map_err(PipelineError::io("cannot create", parent))?;
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(entry).unwrap_or_default();
        std::fs::write(&tmp, json).map_err(PipelineError::io("cannot write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(PipelineError::io("cannot write", &path))?;
        Ok(())
    }

    /// Drops an entry whose objects turned out damaged, so no later run trusts it.
    pub fn forget(&self, entry: &Entry) {
        let _ = std::fs::remove_file(self.entry_path(&entry.key));
    }

    /// Puts the entry's outputs into the project where they differ from it. Each declared
    /// output is rebuilt whole in a scratch directory from checked objects and renamed into
    /// place, so the project never holds half of one. Nothing is placed when any object is
    /// damaged or missing; the damaged object is removed.
    pub fn restore(
        &self,
        root: &Path,
        declared: &[RelPath],
        entry: &Entry,
        hashes: &mut Hashes,
    ) -> Result<Result<usize, Damaged>, PipelineError> {
        let mut stale = Vec::new();
        for out in declared {
            let want: Vec<&Output> = entry
                .outputs
                .iter()
                .filter(|o| RelPath::parse(&o.path).is_ok_and(|p| p.starts_with(out)))
                .collect();
            let have = hashes.tree(root, out)?;
            let same = have.len() == want.len()
                && have
                    .iter()
                    .zip(&want)
                    .all(|(h, w)| h.path == w.path && h.sha256 == w.sha256);
            if !same {
                stale.push((out, want));
            }
        }
        if stale.is_empty() {
            return Ok(Ok(0));
        }
        let scratch = self.scratch()?;
        let mut copied = 0;
        for (_, want) in &stale {
            for o in want {
                let to = scratch.path().join(&o.path);
                if let Some(p) = to.parent() {
                    std::fs::create_dir_all(p).map_err(PipelineError::io("cannot create", p))?;
                }
                match self.copy_checked(&o.sha256, &to)? {
                    Ok(()) => copied += 1,
                    Err(why) => {
                        return Ok(Err(Damaged(format!("cached {}: {why}", o.path))));
                    }
                }
            }
        }
        for (out, _) in &stale {
            crate::runs::place_output(scratch.path(), root, out)
                .map_err(|e| PipelineError::Place(e.to_string()))?;
        }
        Ok(Ok(copied))
    }

    /// Copies an object to `to`, checking its sha256 on the way; a mismatch removes the object.
    fn copy_checked(&self, sha256: &str, to: &Path) -> Result<Result<(), String>, PipelineError> {
        let obj = self.object(sha256);
        let mut src = match std::fs::File::open(&obj) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Err("its content is missing from the cache".into()));
            }
            Err(e) => return Err(PipelineError::io("cannot read", &obj)(e)),
        };
        let mut dst = std::fs::File::create(to).map_err(PipelineError::io("cannot create", to))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = src
                .read(&mut buf)
                .map_err(PipelineError::io("cannot read", &obj))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            dst.write_all(&buf[..n])
                .map_err(PipelineError::io("cannot write", to))?;
        }
        let got = hex::encode(h.finalize());
        if got != sha256.trim_start_matches("sha256:") {
            let _ = std::fs::remove_file(&obj);
            return Ok(Err(format!(
                "its content is damaged (sha256 {}…, expected {}…)",
                &got[..12],
                &sha256.trim_start_matches("sha256:")[..12.min(sha256.len())]
            )));
        }
        Ok(Ok(()))
    }

    /// Removes entries whose key is not in `keep`, then objects no remaining entry names, and
    /// leftovers of interrupted writes.
    pub fn gc(&self, keep: &BTreeSet<String>) -> GcReport {
        let mut report = GcReport::default();
        let mut live = BTreeSet::new();
        for e in self.entries() {
            if keep.contains(&e.key) {
                live.extend(
                    e.outputs
                        .iter()
                        .map(|o| o.sha256.trim_start_matches("sha256:").to_string()),
                );
            } else if std::fs::remove_file(self.entry_path(&e.key)).is_ok() {
                report.entries += 1;
            }
        }
        if let Ok(dirs) = std::fs::read_dir(self.dir.join("objects")) {
            for d in dirs.filter_map(Result::ok) {
                let prefix = d.file_name().to_string_lossy().into_owned();
                let Ok(files) = std::fs::read_dir(d.path()) else {
                    continue;
                };
                for f in files.filter_map(Result::ok) {
                    let name = f.file_name().to_string_lossy().into_owned();
                    if live.contains(&format!("{prefix}{name}")) {
                        continue;
                    }
                    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                    if std::fs::remove_file(f.path()).is_ok() {
                        report.objects += 1;
                        report.bytes += size;
                    }
                }
                let _ = std::fs::remove_dir(d.path());
            }
        }
        let _ = std::fs::remove_dir_all(self.dir.join("tmp"));
        report
    }
}

/// What `gc` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub entries: usize,
    pub objects: usize,
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::sha256_file;

    fn output(root: &Path, path: &str) -> Output {
        let p = root.join(path);
        Output {
            path: path.into(),
            sha256: sha256_file(&p).unwrap(),
            size: std::fs::metadata(&p).unwrap().len(),
        }
    }

    fn setup() -> (tempfile::TempDir, Store, Entry, Vec<RelPath>) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("out/feat")).unwrap();
        std::fs::write(root.join("out/feat/a.csv"), "a,b\n1,2\n").unwrap();
        std::fs::write(root.join("out/feat/b.csv"), "a,b\n3,4\n").unwrap();
        std::fs::write(root.join("out/model.bin"), "weights").unwrap();
        let store = Store::open(root);
        let entry = Entry {
            step: "prepare".into(),
            key: "sha256:k1".into(),
            parts: KeyParts {
                image: "i".into(),
                definition: "d".into(),
                env: Default::default(),
                inputs: vec![],
            },
            outputs: vec![
                output(root, "out/feat/a.csv"),
                output(root, "out/feat/b.csv"),
                output(root, "out/model.bin"),
            ],
            run: "r1".into(),
            created: "2026-12-04T00:00:00Z".into(),
        };
        store.save(&entry, root).unwrap();
        let declared = vec![
            RelPath::parse("out/feat/").unwrap(),
            RelPath::parse("out/model.bin").unwrap(),
        ];
        (dir, store, entry, declared)
    }

    #[test]
    fn outputs_come_back_whole_and_stray_files_go() {
        let (dir, store, entry, declared) = setup();
        let root = dir.path();
        assert_eq!(store.entry("sha256:k1").unwrap(), entry);
        assert_eq!(store.latest("prepare").unwrap(), entry);
        let mut h = Hashes::load(store.dir());
        // Unchanged: nothing copied.
        assert_eq!(
            store
                .restore(root, &declared, &entry, &mut h)
                .unwrap()
                .unwrap(),
            0
        );
        std::fs::remove_dir_all(root.join("out/feat")).unwrap();
        std::fs::create_dir_all(root.join("out/feat")).unwrap();
        std::fs::write(root.join("out/feat/stray.csv"), "x").unwrap();
        std::fs::write(root.join("out/model.bin"), "edited").unwrap();
        assert_eq!(
            store
                .restore(root, &declared, &entry, &mut h)
                .unwrap()
                .unwrap(),
            3
        );
        assert!(!root.join("out/feat/stray.csv").exists());
        assert_eq!(
            std::fs::read_to_string(root.join("out/model.bin")).unwrap(),
            "weights"
        );
        assert_eq!(output(root, "out/feat/a.csv"), entry.outputs[0]);
    }

    #[test]
    fn a_damaged_object_is_found_and_nothing_is_placed() {
        let (dir, store, entry, declared) = setup();
        let root = dir.path();
        std::fs::write(root.join("out/model.bin"), "edited").unwrap();
        let obj = store.object(&entry.outputs[2].sha256);
        std::fs::write(&obj, "corrupt").unwrap();
        let mut h = Hashes::load(store.dir());
        let Err(Damaged(why)) = store.restore(root, &declared, &entry, &mut h).unwrap() else {
            panic!("damage not found");
        };
        assert!(
            why.contains("out/model.bin") && why.contains("damaged"),
            "{why}"
        );
        assert!(!obj.exists(), "the damaged object is dropped");
        assert_eq!(
            std::fs::read_to_string(root.join("out/model.bin")).unwrap(),
            "edited"
        );
        // Missing now: said so, still nothing placed.
        let Err(Damaged(why)) = store.restore(root, &declared, &entry, &mut h).unwrap() else {
            panic!("missing object not found");
        };
        assert!(why.contains("missing"), "{why}");
    }

    #[test]
    fn gc_keeps_what_records_name() {
        let (dir, store, entry, _) = setup();
        let root = dir.path();
        let other = Entry {
            key: "sha256:k2".into(),
            run: "r2".into(),
            outputs: vec![output(root, "out/model.bin")],
            ..entry.clone()
        };
        store.save(&other, root).unwrap();
        let none = store.gc(&BTreeSet::from(["sha256:k2".to_string()]));
        assert_eq!(
            none,
            GcReport {
                entries: 1,
                objects: 2,
                bytes: 16
            }
        );
        assert!(store.entry("sha256:k1").is_none());
        assert!(store.entry("sha256:k2").is_some());
        assert!(store.object(&entry.outputs[2].sha256).exists());
        assert!(!store.object(&entry.outputs[0].sha256).exists());
    }
}

//! sha256 of project files, remembered by (path, size, modification time, inode) in
//! `.ferry/cache/hashes.json` so a fully cached run reads no data file twice (DVC's state
//! database does the same). A file whose stat differs is hashed again; the remembered table is
//! only ever a shortcut, never a source of truth about bytes.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::PipelineError;
use crate::runs::Output;
use crate::spec::{RelPath, sha256_file};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    size: u64,
    mtime_ns: i128,
    ino: u64,
    sha256: String,
}

/// The table, loaded once per run and saved at its end.
#[derive(Debug, Default)]
pub struct Hashes {
    file: PathBuf,
    seen: BTreeMap<String, Seen>,
    changed: bool,
}

impl Hashes {
    pub fn load(cache_dir: &Path) -> Hashes {
        let file = cache_dir.join("hashes.json");
        // A damaged table only costs hashing again.
        let seen = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Hashes {
            file,
            seen,
            changed: false,
        }
    }

    /// The hex sha256 of one file.
    pub fn file(&mut self, path: &Path) -> Result<String, PipelineError> {
        let meta = std::fs::metadata(path).map_err(PipelineError::io("cannot read", path))?;
        let key = path.to_string_lossy().into_owned();
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        if let Some(s) = self.seen.get(&key)
            && s.size == meta.len()
            && s.mtime_ns == mtime_ns
            && s.ino == meta.ino()
        {
            return Ok(s.sha256.clone());
        }
        let sha256 = sha256_file(path).map_err(PipelineError::io("cannot hash", path))?;
        self.seen.insert(
            key,
            Seen {
                size: meta.len(),
                mtime_ns,
                ino: meta.ino(),
                sha256: sha256.clone(),
            },
        );
        self.changed = true;
        Ok(sha256)
    }

    /// Every file under `rel` (itself when a file), sorted by path, with size and sha256;
    /// empty when it does not exist.
    pub fn tree(&mut self, root: &Path, rel: &RelPath) -> Result<Vec<Output>, PipelineError> {
        let mut files: Vec<PathBuf> = Vec::new();
        let top = rel.under(root);
        match std::fs::metadata(&top) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(PipelineError::io("cannot read", &top)(e)),
            Ok(m) if m.is_dir() => {
                list_files(&top, &mut files).map_err(PipelineError::io("cannot read", &top))?
            }
            Ok(_) => files.push(top),
        }
        files.sort();
        files
            .into_iter()
            .map(|f| {
                let size = std::fs::metadata(&f)
                    .map_err(PipelineError::io("cannot read", &f))?
                    .len();
                Ok(Output {
                    path: f
                        .strip_prefix(root)
                        .unwrap_or(&f)
                        .to_string_lossy()
                        .into_owned(),
                    sha256: self.file(&f)?,
                    size,
                })
            })
            .collect()
    }

    /// Writes the table back when it learnt something; a failure only costs hashing again.
    pub fn save(&mut self) {
        if !self.changed {
            return;
        }
        // Entries for files that are gone are dropped, so the table does not grow forever.
        self.seen.retain(|k, _| Path::new(k).exists());
        if let Some(dir) = self.file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = self.file.with_extension("json.tmp");
        let json = serde_json::to_vec(&self.seen).unwrap_or_default();
        if std::fs::write(&tmp, json).is_ok() {
            let _ = std::fs::rename(&tmp, &self.file);
        }
        self.changed = false;
    }
}

/// Regular files under `dir`, recursively; links are followed as the container would.
pub fn list_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            list_files(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_hashed_again_and_the_table_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("data/sub")).unwrap();
        std::fs::write(root.join("data/a.csv"), "a\n").unwrap();
        std::fs::write(root.join("data/sub/b.csv"), "b\n").unwrap();
        let cache = root.join(".ferry/cache");
        let mut h = Hashes::load(&cache);
        let rel = RelPath::parse("data/").unwrap();
        let first = h.tree(root, &rel).unwrap();
        assert_eq!(
            first.iter().map(|o| o.path.as_str()).collect::<Vec<_>>(),
            ["data/a.csv", "data/sub/b.csv"]
        );
        assert_eq!(
            first[0].sha256,
            sha256_file(&root.join("data/a.csv")).unwrap()
        );
        h.save();
        let mut again = Hashes::load(&cache);
        assert_eq!(again.tree(root, &rel).unwrap(), first);
        assert!(!again.changed, "nothing hashed again");
        std::fs::write(root.join("data/a.csv"), "changed, longer\n").unwrap();
        let after = again.tree(root, &rel).unwrap();
        assert_ne!(after[0].sha256, first[0].sha256);
        assert_eq!(after[1], first[1]);
        assert!(
            again
                .tree(root, &RelPath::parse("missing/").unwrap())
                .unwrap()
                .is_empty()
        );
    }
}

//! `ferry dev`'s watch on the few files that can change the notebook's environment: the spec,
//! the requirements file, `.dockerignore`. Only writes, creations, removals and renames of those
//! very files count — opening and reading them (ferry's own checks do) does not — a burst of
//! events is one change, and a change is reported only when a file's content differs from what
//! it was when last looked at, so a touch or a save without edits is nothing.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::LocalError;

/// How long the files must be left alone before a burst of events counts as one change (an
/// editor's save is several: write, rename, attribute changes).
const QUIET: Duration = Duration::from_millis(300);

pub struct Watch {
    // Kept for its lifetime: dropping it ends the watch.
    _watcher: RecommendedWatcher,
    events: mpsc::UnboundedReceiver<()>,
    /// Each watched file and the digest of its content when last looked at (None: absent).
    files: BTreeMap<PathBuf, Option<[u8; 32]>>,
    /// An event arrived and its burst is not over yet; survives a cancelled [`Watch::changed`].
    pending: bool,
}

impl Watch {
    /// Watches `files` (absolute paths) through their directories, not recursively: editors
    /// that save by writing a new file and renaming it over the old one replace the inode a
    /// watch on the file itself would follow.
    pub fn new(files: &[PathBuf]) -> Result<Watch, LocalError> {
        let names: HashSet<PathBuf> = files.iter().cloned().collect();
        let (tx, events) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res
                && counts(&event.kind)
                && (event.need_rescan() || event.paths.iter().any(|p| names.contains(p)))
            {
                let _ = tx.send(());
            }
        })
        .map_err(|e| watch_error(files.first().map_or(Path::new("."), |f| f), e))?;
        let mut dirs: Vec<&Path> = files.iter().filter_map(|f| f.parent()).collect();
        dirs.sort();
        dirs.dedup();
        for d in dirs {
            watcher
                .watch(d, RecursiveMode::NonRecursive)
                .map_err(|e| watch_error(d, e))?;
        }
        Ok(Watch {
            _watcher: watcher,
            events,
            files: files.iter().map(|f| (f.clone(), digest(f))).collect(),
            pending: false,
        })
    }

    /// The watched files.
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        self.files.keys()
    }

    /// Waits for a change of content and returns the files that changed (never none). Safe to
    /// drop at any await: an event already taken keeps its burst pending for the next call.
    pub async fn changed(&mut self) -> Vec<PathBuf> {
        loop {
            if !self.pending {
                if self.events.recv().await.is_none() {
                    // The watcher has gone: no change will ever come.
                    std::future::pending::<()>().await;
                }
                self.pending = true;
            }
            while let Ok(Some(())) = tokio::time::timeout(QUIET, self.events.recv()).await {}
            self.pending = false;
            let mut changed = Vec::new();
            for (path, last) in &mut self.files {
                let now = digest(path);
                if now != *last {
                    *last = now;
                    changed.push(path.clone());
                }
            }
            if !changed.is_empty() {
                return changed;
            }
        }
    }
}

/// Whether an event can mean new content: a create, a write, a rename or a removal. Opening,
/// reading and closing, and attribute changes (a touch), cannot.
fn counts(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Create(_)
        | EventKind::Modify(_)
        | EventKind::Remove(_)
        | EventKind::Any
        | EventKind::Other => true,
    }
}

fn digest(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).into())
}

fn watch_error(path: &Path, e: notify::Error) -> LocalError {
    LocalError::Watch {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, MetadataKind, RenameMode};

    #[test]
    fn only_events_that_can_change_content_count() {
        assert!(!counts(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!counts(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!counts(&EventKind::Modify(ModifyKind::Metadata(
            MetadataKind::Any
        ))));
        assert!(counts(&EventKind::Modify(ModifyKind::Data(
            DataChange::Any
        ))));
        assert!(counts(&EventKind::Modify(ModifyKind::Name(RenameMode::To))));
        assert!(counts(&EventKind::Create(CreateKind::File)));
    }

    #[tokio::test]
    async fn reads_and_rewrites_without_edits_are_no_change_and_a_rename_save_is_one() {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("ferry.yaml");
        let other = dir.path().join("notes.txt");
        std::fs::write(&spec, "name: a\n").unwrap();
        let mut watch = Watch::new(std::slice::from_ref(&spec)).unwrap();

        // Reads, the same content written again, and another file in the directory: nothing.
        std::fs::read(&spec).unwrap();
        std::fs::write(&spec, "name: a\n").unwrap();
        std::fs::write(&other, "x").unwrap();
        let idle = tokio::time::timeout(Duration::from_secs(1), watch.changed()).await;
        assert!(idle.is_err(), "no change: {idle:?}");

        // A save as vim makes it: a new file renamed over the old one.
        let tmp = dir.path().join(".ferry.yaml.swp");
        std::fs::write(&tmp, "name: b\n").unwrap();
        std::fs::rename(&tmp, &spec).unwrap();
        let changed = tokio::time::timeout(Duration::from_secs(10), watch.changed())
            .await
            .expect("the rename is seen");
        assert_eq!(changed, vec![spec.clone()]);
    }
}

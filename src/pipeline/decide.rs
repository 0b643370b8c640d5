//! Whether a step runs, and why: the one decision `ferry run` and `--dry-run` share.

use super::key::KeyParts;
use super::store::{Entry, Store};

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// A successful run of the same key is in the cache.
    Cached(Box<Entry>),
    /// The step runs; the reason in words.
    Run(String),
}

/// The decision for the step `name` whose key is made of `parts`.
pub fn decide(store: &Store, name: &str, parts: &KeyParts, forced: bool) -> Decision {
    if forced {
        return Decision::Run("forced (--force)".into());
    }
    let key = parts.key();
    if let Some(e) = store.entry(&key) {
        return Decision::Cached(Box::new(e));
    }
    match store.latest(name) {
        None => Decision::Run("never ran".into()),
        Some(prev) => {
            let changes = parts.changes_since(&prev.parts);
            if changes.is_empty() {
                Decision::Run("not in the cache".into())
            } else {
                Decision::Run(changes.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::Output;

    fn parts(sha: &str) -> KeyParts {
        KeyParts {
            image: "sha256:i".into(),
            definition: "sha256:d".into(),
            env: Default::default(),
            inputs: vec![Output {
                path: "data/raw.csv".into(),
                sha256: sha.into(),
                size: 3,
            }],
        }
    }

    #[test]
    fn never_ran_then_cached_then_says_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        let p = parts("aa");
        assert_eq!(
            decide(&store, "prepare", &p, false),
            Decision::Run("never ran".into())
        );
        let entry = Entry {
            step: "prepare".into(),
            key: p.key(),
            parts: p.clone(),
            outputs: vec![],
            run: "r".into(),
            created: "2026-12-04T00:00:00Z".into(),
        };
        store.save(&entry, dir.path()).unwrap();
        assert_eq!(
            decide(&store, "prepare", &p, false),
            Decision::Cached(Box::new(entry))
        );
        assert_eq!(
            decide(&store, "prepare", &p, true),
            Decision::Run("forced (--force)".into())
        );
        assert_eq!(
            decide(&store, "prepare", &parts("bb"), false),
            Decision::Run("input data/raw.csv changed".into())
        );
        let other = KeyParts {
            definition: "sha256:e".into(),
            ..p.clone()
        };
        assert_eq!(
            decide(&store, "train", &other, false),
            Decision::Run("never ran".into())
        );
    }
}

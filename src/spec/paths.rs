//! Paths in the spec: always relative to the project and never outside it, checked when the spec
//! is read so no later stage (build context, mounts, artifact copy) can be pointed elsewhere.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A normalised path inside the project, `/`-separated, without `.` or `..`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath {
    norm: String,
    /// Written with a trailing `/`: the user means a directory.
    dir: bool,
}

impl RelPath {
    pub fn parse(text: &str) -> Result<RelPath, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("the path is empty".into());
        }
        let p = Path::new(t);
        if p.is_absolute() {
            return Err(format!(
                "{t:?} is an absolute path; paths in ferry.yaml are relative to the project directory"
            ));
        }
        let mut parts: Vec<String> = Vec::new();
        for c in p.components() {
            match c {
                Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
                Component::CurDir => {}
                Component::ParentDir => {
                    if parts.pop().is_none() {
                        return Err(format!("{t:?} points outside the project directory"));
                    }
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(format!("{t:?} is not a relative path"));
                }
            }
        }
        if parts.is_empty() {
            return Err(format!(
                "{t:?} is the project directory itself; name a file or directory inside it"
            ));
        }
        Ok(RelPath {
            norm: parts.join("/"),
            dir: t.ends_with('/'),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.norm
    }

    /// True when written as a directory (`data/`).
    pub fn is_dir_syntax(&self) -> bool {
        self.dir
    }

    pub fn under(&self, root: &Path) -> PathBuf {
        root.join(&self.norm)
    }

    /// The first path component (`artifacts` for `artifacts/model.onnx`).
    pub fn top(&self) -> &str {
        self.norm.split('/').next().unwrap_or(&self.norm)
    }

    /// The parent directory, if the path is not at the top of the project.
    pub fn parent(&self) -> Option<RelPath> {
        self.norm.rsplit_once('/').map(|(p, _)| RelPath {
            norm: p.to_string(),
            dir: true,
        })
    }

    /// True when `self` is `other` or lies inside it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.norm == other.norm
            || (self.norm.starts_with(&other.norm)
                && self.norm.as_bytes().get(other.norm.len()) == Some(&b'/'))
    }

    /// Checks on disk that the path, if it exists, does not leave the project through a symlink.
    pub fn check_contained(&self, root: &Path) -> Result<(), String> {
        let full = self.under(root);
        let Ok(real) = full.canonicalize() else {
            return Ok(());
        };
        let real_root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        if real.starts_with(&real_root) {
            Ok(())
        } else {
            Err(format!(
                "{:?} resolves to {} through a symlink, outside the project directory",
                self.display_str(),
                real.display()
            ))
        }
    }

    fn display_str(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.norm)?;
        if self.dir {
            f.write_str("/")?;
        }
        Ok(())
    }
}

impl Serialize for RelPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RelPath::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_inside_paths() {
        let p = RelPath::parse("./data//raw/../customers.csv").unwrap();
        assert_eq!(p.as_str(), "data/customers.csv");
        assert_eq!(p.top(), "data");
        assert_eq!(p.parent().unwrap().as_str(), "data");
        assert!(RelPath::parse("data/").unwrap().is_dir_syntax());
        assert_eq!(RelPath::parse("data/").unwrap().to_string(), "data/");
    }

    #[test]
    fn refuses_paths_that_leave_the_project() {
        for bad in ["../x", "a/../../x", "/etc/passwd", ".", "", "a/.."] {
            assert!(RelPath::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn containment_is_by_component() {
        let a = RelPath::parse("artifacts/model.onnx").unwrap();
        assert!(a.starts_with(&RelPath::parse("artifacts").unwrap()));
        assert!(!a.starts_with(&RelPath::parse("art").unwrap()));
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_out_of_the_project_are_caught() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("data")).unwrap();
        let p = RelPath::parse("data/").unwrap();
        assert!(p.check_contained(root.path()).is_err());
        std::fs::create_dir(root.path().join("ok")).unwrap();
        assert!(
            RelPath::parse("ok")
                .unwrap()
                .check_contained(root.path())
                .is_ok()
        );
    }
}

//! Project templates, embedded in the binary from `templates/`, and `ferry init`.

use std::path::{Path, PathBuf};

use include_dir::{Dir, DirEntry, include_dir};
use serde::Serialize;

use crate::spec::{did_you_mean, is_dns_label};

static TEMPLATES: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/templates");

/// The base line a template gets: an image to pull, or offline mode's bootstrapped base.
pub const ONLINE_BASE: &str = "base: python:3.11-slim";
pub const OFFLINE_BASE: &str = "bootstrap: bookworm";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("no template named `{name}`; available: {}{}", available.join(", "), suggestion(name, available))]
    Unknown {
        name: String,
        available: Vec<String>,
    },
    #[error(
        "{} is not empty\n  hint: choose a new directory, or pass --force to write the template into it (files with the same names are replaced; others are kept)",
        dir.display()
    )]
    NotEmpty { dir: PathBuf },
    #[error(
        "cannot derive a project name from {}\n  hint: pass --name with lowercase letters, digits and '-', e.g. --name churn-demo",
        dir.display()
    )]
    BadName { dir: PathBuf },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn suggestion(name: &str, available: &[String]) -> String {
    did_you_mean(name, available.iter().map(String::as_str))
        .map(|a| format!("\n  hint: did you mean `{a}`?"))
        .unwrap_or_default()
}

#[derive(Clone, Debug, Serialize)]
pub struct TemplateInfo {
    pub name: String,
    pub description: String,
}

/// The templates built into this binary, sorted by name.
pub fn list() -> Vec<TemplateInfo> {
    let mut out: Vec<TemplateInfo> = TEMPLATES
        .dirs()
        .map(|d| {
            let name = d.path().to_string_lossy().into_owned();
            let description = d
                .get_file(d.path().join("README.md"))
                .and_then(|f| f.contents_utf8())
                .and_then(|t| t.lines().next())
                .and_then(|l| l.strip_prefix("<!-- description:"))
                .map(|l| l.trim_end_matches("-->").trim().to_string())
                .unwrap_or_default();
            TemplateInfo { name, description }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// What `init` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct Created {
    pub dir: PathBuf,
    pub name: String,
    pub template: String,
    pub files: Vec<String>,
}

/// Writes `template` into `dir`. Never touches a non-empty directory unless `force`.
pub fn init(
    dir: &Path,
    template: &str,
    name: Option<&str>,
    offline: bool,
    force: bool,
) -> Result<Created, TemplateError> {
    let Some(tpl) = TEMPLATES.get_dir(template) else {
        return Err(TemplateError::Unknown {
            name: template.to_string(),
            available: list().into_iter().map(|t| t.name).collect(),
        });
    };
    let name = match name {
        Some(n) => n.to_string(),
        None => project_name(dir).ok_or_else(|| TemplateError::BadName {
            dir: dir.to_path_buf(),
        })?,
    };
    if !is_dns_label(&name) {
        return Err(TemplateError::BadName {
            dir: dir.to_path_buf(),
        });
    }
    let non_empty = std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if non_empty && !force {
        return Err(TemplateError::NotEmpty {
            dir: dir.to_path_buf(),
        });
    }
    let base = if offline { OFFLINE_BASE } else { ONLINE_BASE };
    let mut files = Vec::new();
    write_dir(tpl, tpl.path(), dir, &name, base, &mut files)?;
    files.sort();
    Ok(Created {
        dir: dir.to_path_buf(),
        name,
        template: template.to_string(),
        files,
    })
}

fn write_dir(
    d: &Dir<'_>,
    prefix: &Path,
    dest: &Path,
    name: &str,
    base: &str,
    files: &mut Vec<String>,
) -> Result<(), TemplateError> {
    for entry in d.entries() {
        match entry {
            DirEntry::Dir(sub) => write_dir(sub, prefix, dest, name, base, files)?,
            DirEntry::File(f) => {
                let rel = f.path().strip_prefix(prefix).unwrap_or(f.path());
                let path = dest.join(rel);
                let werr = |source| TemplateError::Write {
                    path: path.clone(),
                    source,
                };
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(werr)?;
                }
                let bytes = match f.contents_utf8() {
                    Some(text) => text
                        .replace("{{name}}", name)
                        .replace("{{base}}", base)
                        .into_bytes(),
                    None => f.contents().to_vec(),
                };
                std::fs::write(&path, bytes).map_err(werr)?;
                files.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    Ok(())
}

/// A DNS-label name from a directory name: `Churn Demo` → `churn-demo`.
fn project_name(dir: &Path) -> Option<String> {
    let abs = std::path::absolute(dir).ok()?;
    let raw = abs.file_name()?.to_string_lossy().to_ascii_lowercase();
    let mut name = String::new();
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() {
            name.push(c);
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    let name = name.trim_matches('-').chars().take(40).collect::<String>();
    let name = name.trim_end_matches('-').to_string();
    is_dns_label(&name).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Project;

    #[test]
    fn lists_the_embedded_templates_with_descriptions() {
        let names: Vec<String> = list().into_iter().map(|t| t.name).collect();
        assert!(names.contains(&"churn".to_string()), "{names:?}");
        assert!(names.contains(&"notebook".to_string()), "{names:?}");
        assert!(names.contains(&"recommender".to_string()), "{names:?}");
        assert!(list().iter().all(|t| !t.description.is_empty()));
    }

    #[test]
    fn every_template_gives_a_valid_spec_online_and_offline() {
        for t in list() {
            for offline in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let p = dir.path().join("My Project");
                let c = init(&p, &t.name, None, offline, false).unwrap();
                assert_eq!(c.name, "my-project");
                let project = Project::load_dir(&p, None)
                    .unwrap_or_else(|e| panic!("template {} (offline {offline}): {e}", t.name));
                assert_eq!(project.spec.name, "my-project");
                assert_eq!(project.spec.environment.bootstrap.is_some(), offline);
            }
        }
    }

    #[test]
    fn never_overwrites_a_non_empty_directory_without_force() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ferry.yaml"), "mine").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "keep me").unwrap();
        let err = init(dir.path(), "churn", Some("x"), false, false).unwrap_err();
        assert!(matches!(err, TemplateError::NotEmpty { .. }));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("ferry.yaml")).unwrap(),
            "mine"
        );
        init(dir.path(), "churn", Some("x"), false, true).unwrap();
        assert_ne!(
            std::fs::read_to_string(dir.path().join("ferry.yaml")).unwrap(),
            "mine"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(),
            "keep me"
        );
    }

    #[test]
    fn unknown_template_suggests_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = init(dir.path(), "chrun", None, false, false).unwrap_err();
        assert!(err.to_string().contains("did you mean `churn`"), "{err}");
    }
}

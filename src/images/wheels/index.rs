//! Why pip found nothing for a requirement, asked of the package index pip is configured with:
//! no such project (and the closest name it has), no such version (and the ones it has), or no
//! wheel for the image's interpreter (and the versions that have one).
//!
//! The index is asked by the host's Python through pip's own option parsing and HTTP session
//! (`index_query.py`), so whatever index, mirror, find-links, certificates, proxy and
//! credentials `pip download` used apply here too; ferry itself names no index.

use std::fmt;
use std::process::Stdio;

use serde::Deserialize;

use super::dists::{self, Dist, Requirement};
use super::version::{self, Version};
use super::{Pip, PythonTarget, WheelsError};

const QUERY_SCRIPT: &str = include_str!("index_query.py");

/// How many versions a message lists.
const LISTED: usize = 8;

/// What `index_query.py` prints.
#[derive(Debug, Default, Deserialize)]
pub(super) struct IndexFacts {
    /// The index URLs asked, credentials redacted.
    #[serde(default)]
    pub indexes: Vec<String>,
    pub found: bool,
    #[serde(default)]
    pub files: Vec<IndexFile>,
    /// Every project the indexes list, when none has the project asked for.
    #[serde(default)]
    pub projects: Vec<String>,
    /// Indexes that could not be asked: no verdict can be drawn then.
    #[serde(default)]
    pub errors: Vec<String>,
    /// Only the project list failed: the verdict stands, without a suggestion.
    #[serde(default)]
    pub list_errors: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct IndexFile {
    pub filename: String,
    #[serde(default)]
    pub yanked: bool,
    #[serde(default)]
    pub requires_python: Option<String>,
}

/// A pinned version the index does not have.
#[derive(Debug)]
pub struct UnknownVersion {
    pub package: String,
    pub version: String,
    /// Newest first, the first few.
    pub versions: Vec<String>,
    pub total: usize,
    /// Newest first, those with a wheel for the target.
    pub with_wheel: Vec<String>,
    pub python: String,
    pub platform: String,
}

impl fmt::Display for UnknownVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (python, platform) = (&self.python, &self.platform);
        write!(
            f,
            "`{}` has no version {} on the package index; it has ",
            self.package, self.version
        )?;
        if self.versions.is_empty() {
            f.write_str("no versions at all")?;
        } else {
            f.write_str(&self.versions.join(", "))?;
            let more = self.total.saturating_sub(self.versions.len());
            if more > 0 {
                write!(f, " and {more} older")?;
            }
        }
        if self.with_wheel.is_empty() {
            write!(
                f,
                "\n  hint: pin an existing version; none has a wheel for Python {python} on \
                 {platform}, which ferry needs to install it offline"
            )
        } else {
            write!(
                f,
                "\n  hint: pin an existing version; those with a wheel for Python {python} on \
                 {platform}: {}",
                self.with_wheel.join(", ")
            )
        }
    }
}

/// A project the index has, with no wheel the target installs that meets the requirement.
#[derive(Debug)]
pub struct NoWheel {
    /// The requirement as pip printed it.
    pub package: String,
    pub name: String,
    pub python: String,
    pub platform: String,
    /// Newest first, the versions with a wheel for the target.
    pub with_wheel: Vec<String>,
    /// The newest version and the tags of its wheels.
    pub newest: Option<(String, Vec<String>)>,
}

impl fmt::Display for NoWheel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.name;
        write!(
            f,
            "no wheel of `{}` for Python {} on {}",
            self.package, self.python, self.platform
        )?;
        if !self.with_wheel.is_empty() {
            return write!(
                f,
                "; versions of {name} that have one: {}\n  hint: ferry installs only binary \
                 wheels offline; pin one of those versions of {name}, or drop it",
                self.with_wheel.join(", ")
            );
        }
        write!(f, "; no version of {name} on the package index has one")?;
        match &self.newest {
            Some((v, tags)) if tags.is_empty() => {
                write!(f, " (its newest, {v}, ships source only)")?
            }
            Some((v, tags)) => write!(
                f,
                " (its newest, {v}, ships wheels for {})",
                tags.iter().take(4).cloned().collect::<Vec<_>>().join(", ")
            )?,
            None => {}
        }
        write!(
            f,
            "\n  hint: ferry installs only binary wheels offline; drop {name}, or use a base \
             image whose Python and platform it ships wheels for"
        )
    }
}

/// The error for `requirement` (as pip printed it), which pip found nothing for on `target`.
pub(super) fn diagnose(pip: &Pip, requirement: &str, target: &PythonTarget) -> WheelsError {
    let unexplained = |why: String| WheelsError::NotFound {
        package: requirement.to_string(),
        python: target.version.clone(),
        platform: platform(target),
        why,
    };
    let Some(req) = dists::parse_requirement(requirement) else {
        return unexplained(format!("could not read the requirement {requirement:?}"));
    };
    match ask(pip, &req.name) {
        Ok(facts) if facts.errors.is_empty() => explain(requirement, &req, &facts, target),
        Ok(facts) => unexplained(facts.errors.join("; ")),
        Err(why) => unexplained(why),
    }
}

/// Runs `index_query.py` for `name`.
fn ask(pip: &Pip, name: &str) -> Result<IndexFacts, String> {
    let out = pip
        .command()
        .args(["-c", QUERY_SCRIPT, name])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", pip.python.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Err(format!(
            "pip's index query failed: {}",
            last.unwrap_or("no output").trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("unexpected index query output: {e}"))
}

/// The verdict the index's answer supports.
pub(super) fn explain(
    requirement: &str,
    req: &Requirement,
    facts: &IndexFacts,
    target: &PythonTarget,
) -> WheelsError {
    let where_ = if facts.indexes.is_empty() {
        "pip's --find-links locations".to_string()
    } else {
        facts.indexes.join(", ")
    };
    if !facts.found {
        return WheelsError::UnknownPackage {
            package: req.name.clone(),
            suggestion: dists::suggest(&req.name, &facts.projects).map(str::to_string),
            listed: facts.list_errors.is_empty() && !facts.projects.is_empty(),
            index: where_,
        };
    }

    let project = dists::normalize(&req.name);
    let dists: Vec<(Dist, &IndexFile)> = facts
        .files
        .iter()
        .filter_map(|f| dists::parse_filename(&project, &f.filename).map(|d| (d, f)))
        .collect();
    let installable = |d: &Dist, f: &IndexFile| {
        !f.yanked
            && d.wheel
                .as_ref()
                .is_some_and(|t| dists::wheel_fits(t, target))
            && f.requires_python
                .as_deref()
                .is_none_or(|spec| version::python_allows(spec, &target.version))
    };
    let all = newest_first(dists.iter().map(|(d, _)| &d.version));
    let with_wheel = newest_first(
        dists
            .iter()
            .filter(|(d, f)| installable(d, f))
            .map(|(d, _)| &d.version),
    );

    if let Some(pin) = &req.pinned {
        let pin = Version::parse(pin);
        if !all.iter().any(|v| v.same(&pin)) {
            return WheelsError::UnknownVersion(Box::new(UnknownVersion {
                package: req.name.clone(),
                version: pin.text,
                total: all.len(),
                versions: listed(&all),
                with_wheel: listed(&with_wheel),
                python: target.version.clone(),
                platform: platform(target),
            }));
        }
    }

    let newest = all.iter().find(|v| !v.is_pre()).or(all.first());
    let newest_ships = newest.map(|n| {
        let mut tags: Vec<String> = dists
            .iter()
            .filter(|(d, _)| d.version.same(n))
            .filter_map(|(d, _)| d.wheel.as_ref().map(|t| t.label()))
            .collect();
        tags.sort();
        tags.dedup();
        (n.text.clone(), tags)
    });
    WheelsError::NoWheel(Box::new(NoWheel {
        package: requirement.to_string(),
        name: req.name.clone(),
        python: target.version.clone(),
        platform: platform(target),
        with_wheel: listed(&with_wheel),
        newest: newest_ships,
    }))
}

/// Distinct versions, newest first; pre-releases only when there is nothing else.
fn newest_first<'a>(versions: impl Iterator<Item = &'a Version>) -> Vec<Version> {
    let mut all: Vec<Version> = Vec::new();
    for v in versions {
        if !all.iter().any(|w| w.same(v)) {
            all.push(v.clone());
        }
    }
    all.sort_by(|a, b| b.cmp(a));
    if all.iter().any(|v| !v.is_pre()) {
        all.retain(|v| !v.is_pre());
    }
    all
}

fn listed(versions: &[Version]) -> Vec<String> {
    versions
        .iter()
        .take(LISTED)
        .map(|v| v.text.clone())
        .collect()
}

fn platform(target: &PythonTarget) -> String {
    target
        .platforms
        .first()
        .cloned()
        .unwrap_or_else(|| "this platform".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> PythonTarget {
        PythonTarget {
            version: "3.11".into(),
            platforms: vec![
                "manylinux_2_36_x86_64".into(),
                "manylinux2014_x86_64".into(),
            ],
        }
    }

    fn facts(files: &[&str]) -> IndexFacts {
        IndexFacts {
            indexes: vec!["http://127.0.0.1:1/simple".into()],
            found: true,
            files: files
                .iter()
                .map(|f| IndexFile {
                    filename: f.to_string(),
                    yanked: false,
                    requires_python: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn verdict(requirement: &str, facts: &IndexFacts) -> WheelsError {
        let req = dists::parse_requirement(requirement).expect("a requirement");
        explain(requirement, &req, facts, &target())
    }

    #[test]
    fn a_missing_project_is_named_with_the_closest_one() {
        let mut f = facts(&[]);
        f.found = false;
        f.projects = vec!["pandas".into(), "numpy".into()];
        let e = verdict("pandsa==3.1.1", &f);
        assert!(
            matches!(&e, WheelsError::UnknownPackage { suggestion: Some(s), .. } if s == "pandas"),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.starts_with("no package `pandsa` on the package index; did you mean `pandas`?"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_version_lists_the_versions_there_are() {
        let f = facts(&[
            "pandas-2.2.3-cp311-cp311-manylinux2014_x86_64.whl",
            "pandas-2.2.3.tar.gz",
            "pandas-2.3.0rc1-cp311-cp311-manylinux2014_x86_64.whl",
            "pandas-2.2.2-cp312-cp312-manylinux2014_x86_64.whl",
            "pandas-2.10.0.tar.gz",
        ]);
        match verdict("pandas==99.0", &f) {
            WheelsError::UnknownVersion(v) => {
                assert_eq!(v.versions, ["2.10.0", "2.2.3", "2.2.2"]);
                assert_eq!(v.with_wheel, ["2.2.3"]);
                assert_eq!(v.total, 3);
            }
            e => panic!("{e:?}"),
        }
        // `2.2.3.0` is 2.2.3: that version exists, it is the wheel that is missing.
        assert!(matches!(
            verdict("pandas==2.2.2.0", &f),
            WheelsError::NoWheel(_)
        ));
    }

    #[test]
    fn no_wheel_lists_the_versions_that_have_one_minding_requires_python_and_yanks() {
        let mut f = facts(&[
            "mixed-2.0-cp312-cp312-manylinux2014_x86_64.whl",
            "mixed-1.5-py3-none-any.whl",
            "mixed-1.4-py3-none-any.whl",
            "mixed-1.0-cp311-cp311-manylinux2014_x86_64.whl",
        ]);
        f.files[1].requires_python = Some(">=3.12".into());
        f.files[2].yanked = true;
        match verdict("mixed==2.0", &f) {
            WheelsError::NoWheel(n) => {
                assert_eq!(n.with_wheel, ["1.0"]);
                assert_eq!(
                    n.newest,
                    Some((
                        "2.0".to_string(),
                        vec!["cp312-cp312-manylinux2014_x86_64".to_string()]
                    ))
                );
            }
            e => panic!("{e:?}"),
        }
        let text = verdict("mixed==2.0", &f).to_string();
        assert!(
            text.contains("versions of mixed that have one: 1.0"),
            "{text}"
        );
    }
}

//! What a package index's names and file names say: PEP 503 project names, the requirement pip
//! gave up on, wheel and source file names, which wheels an image's interpreter installs (the
//! tags pip accepts for `--python-version`, `--abi` and `--platform`), and the closest project
//! name to a misspelt one.

use super::PythonTarget;
use super::version::Version;

/// PEP 503: lowercase, every run of `-`, `_` and `.` one `-`.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_sep {
                out.push('-');
            }
            in_sep = true;
        } else {
            out.extend(c.to_lowercase());
            in_sep = false;
        }
    }
    out
}

/// A requirement as pip prints it (`pandas==2.2.3`, `foo[bar]>=1,<2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub name: String,
    /// The version of an exact `==` pin (not a `==1.*` prefix).
    pub pinned: Option<String>,
}

pub fn parse_requirement(text: &str) -> Option<Requirement> {
    let text = text.split(';').next().unwrap_or("").trim();
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(text.len());
    let name = &text[..end];
    if name.is_empty() {
        return None;
    }
    let mut rest = text[end..].trim_start();
    if rest.starts_with('[') {
        rest = rest.find(']').map_or("", |i| &rest[i + 1..]);
    }
    let pinned = rest.trim().strip_prefix("==").and_then(|v| {
        let v = v.trim();
        (!v.is_empty() && !v.starts_with('=') && !v.contains([',', '*'])).then(|| v.to_string())
    });
    Some(Requirement {
        name: name.to_string(),
        pinned,
    })
}

/// One file of a project on an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dist {
    pub version: Version,
    /// `Some` for a wheel: its python, abi and platform tags, each possibly a `.`-joined set.
    pub wheel: Option<WheelTags>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WheelTags {
    pub python: String,
    pub abi: String,
    pub platform: String,
}

impl WheelTags {
    /// `cp312-cp312-manylinux_2_17_x86_64`, for messages.
    pub fn label(&self) -> String {
        format!("{}-{}-{}", self.python, self.abi, self.platform)
    }
}

const SDIST_EXTENSIONS: &[&str] = &[".tar.gz", ".zip", ".tar.bz2", ".tgz", ".tar.xz"];

/// A distribution file of `project` (normalised), or `None` for another project's file or one
/// that is no distribution (`.egg`, `.exe`, a signature).
pub fn parse_filename(project: &str, file: &str) -> Option<Dist> {
    if let Some(stem) = file.strip_suffix(".whl") {
        let parts: Vec<&str> = stem.split('-').collect();
        if !(parts.len() == 5 || parts.len() == 6) || normalize(parts[0]) != project {
            return None;
        }
        let n = parts.len();
        return Some(Dist {
            version: Version::parse(parts[1]),
            wheel: Some(WheelTags {
                python: parts[n - 3].to_string(),
                abi: parts[n - 2].to_string(),
                platform: parts[n - 1].to_string(),
            }),
        });
    }
    let stem = SDIST_EXTENSIONS
        .iter()
        .find_map(|ext| file.strip_suffix(ext))?;
    // Old source file names may have `-` in the name; the project's name says where it ends.
    stem.match_indices('-').find_map(|(i, _)| {
        (normalize(&stem[..i]) == project).then(|| Dist {
            version: Version::parse(&stem[i + 1..]),
            wheel: None,
        })
    })
}

/// Whether `target` installs a wheel with these tags: the tags pip derives from
/// `--python-version X.Y --implementation cp --abi cpXY --platform …` (packaging's
/// `cpython_tags` and `compatible_tags`).
pub fn wheel_fits(tags: &WheelTags, target: &PythonTarget) -> bool {
    let Some(minor) = target_minor(target) else {
        return false;
    };
    tags.python.split('.').any(|py| {
        tags.abi.split('.').any(|abi| {
            tags.platform.split('.').any(|plat| {
                let on_platform = target.platforms.iter().any(|p| p == plat);
                let any = plat == "any";
                (on_platform || any) && tag_fits(py, abi, on_platform, minor)
            })
        })
    })
}

fn target_minor(target: &PythonTarget) -> Option<u32> {
    let (major, minor) = target.version.split_once('.')?;
    (major == "3").then_some(())?;
    minor.parse().ok()
}

/// The interpreter and ABI half of a tag, for a Python 3.`minor` target; `on_platform`: the
/// platform tag is one of the target's (not `any`).
fn tag_fits(py: &str, abi: &str, on_platform: bool, minor: u32) -> bool {
    let cp_minor = py.strip_prefix("cp3").and_then(|m| m.parse::<u32>().ok());
    let py_minor = py.strip_prefix("py3").map(|m| {
        if m.is_empty() {
            Some(0)
        } else {
            m.parse::<u32>().ok()
        }
    });
    let own_abi = abi == format!("cp3{minor}") || (minor <= 7 && abi == format!("cp3{minor}m"));
    match (cp_minor, py_minor) {
        (Some(m), _) if on_platform => {
            (m == minor && (own_abi || abi == "none")) || (abi == "abi3" && m >= 2 && m <= minor)
        }
        (Some(m), _) => m == minor && abi == "none",
        (None, Some(Some(m))) => m <= minor && abi == "none",
        _ => false,
    }
}

/// The project name closest to `name` (by edit distance with transpositions, normalised names),
/// when one is close enough to be a likely typo: one edit for short names, two for longer ones.
pub fn suggest<'a>(name: &str, projects: &'a [String]) -> Option<&'a str> {
    let want = normalize(name);
    let want_len = want.chars().count();
    let max = if want_len <= 4 { 1 } else { 2 };
    projects
        .iter()
        .filter_map(|p| {
            let n = normalize(p);
            if n == want || n.chars().count().abs_diff(want_len) > max {
                return None;
            }
            let d = strsim::osa_distance(&want, &n);
            let len_diff = n.chars().count().abs_diff(want_len);
            (d <= max).then(|| (d, len_diff, strsim::jaro_winkler(&want, &n), p.as_str()))
        })
        // Fewest edits; then a swap or a wrong letter over a missing or extra one; then the
        // most alike at the start.
        .min_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then(b.2.total_cmp(&a.2)))
        .map(|(_, _, _, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> PythonTarget {
        PythonTarget {
            version: "3.11".into(),
            platforms: vec![
                "manylinux_2_36_x86_64".into(),
                "manylinux_2_17_x86_64".into(),
                "manylinux2014_x86_64".into(),
            ],
        }
    }

    fn fits(file: &str) -> bool {
        let project = normalize(file.split('-').next().unwrap_or(""));
        let dist = parse_filename(&project, file).expect("a wheel");
        wheel_fits(&dist.wheel.expect("wheel tags"), &target())
    }

    #[test]
    fn names_normalise_per_pep_503() {
        assert_eq!(normalize("Scikit_Learn"), "scikit-learn");
        assert_eq!(normalize("zope.interface"), "zope-interface");
        assert_eq!(normalize("a-_.-b"), "a-b");
        assert_eq!(normalize("PyYAML"), "pyyaml");
    }

    #[test]
    fn requirements_as_pip_prints_them() {
        let r = parse_requirement("pandas==99.0").expect("parses");
        assert_eq!(r.name, "pandas");
        assert_eq!(r.pinned.as_deref(), Some("99.0"));
        let r = parse_requirement("foo[bar,baz]==1.2 ; python_version > '3'").expect("parses");
        assert_eq!((r.name.as_str(), r.pinned.as_deref()), ("foo", Some("1.2")));
        for loose in [
            "numpy",
            "numpy>=2",
            "numpy==2.*",
            "numpy===2.0",
            "numpy==1,!=1.1",
        ] {
            assert_eq!(
                parse_requirement(loose).and_then(|r| r.pinned),
                None,
                "{loose}"
            );
        }
        assert_eq!(parse_requirement("==1"), None);
    }

    #[test]
    fn file_names_give_versions_and_tags() {
        let d = parse_filename(
            "scikit-learn",
            "scikit_learn-1.5.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        )
        .expect("a wheel");
        assert_eq!(d.version.text, "1.5.2");
        let tags = d.wheel.expect("tags");
        assert_eq!(tags.abi, "cp311");
        let d = parse_filename("foo", "foo-2.0-1-py3-none-any.whl").expect("with build tag");
        assert_eq!(d.wheel.map(|t| t.label()).as_deref(), Some("py3-none-any"));
        let d = parse_filename("zope-interface", "zope.interface-6.0.tar.gz").expect("sdist");
        assert_eq!((d.version.text.as_str(), d.wheel), ("6.0", None));
        let d = parse_filename("my-old-pkg", "my-old-pkg-0.1.zip").expect("dashed sdist");
        assert_eq!(d.version.text, "0.1");
        assert_eq!(parse_filename("pandas", "numpy-2.0-py3-none-any.whl"), None);
        assert_eq!(parse_filename("pandas", "pandas-2.0.tar.gz.asc"), None);
    }

    #[test]
    fn wheel_tags_match_what_pip_installs_for_the_target() {
        for ok in [
            "a-1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "a-1-cp311-cp311-manylinux_2_36_x86_64.whl",
            "a-1-cp38-abi3-manylinux2014_x86_64.whl",
            "a-1-cp311-none-manylinux2014_x86_64.whl",
            "a-1-py3-none-any.whl",
            "a-1-py2.py3-none-any.whl",
            "a-1-py310-none-any.whl",
            "a-1-cp311-none-any.whl",
            "a-1-py3-none-manylinux_2_17_x86_64.whl",
        ] {
            assert!(fits(ok), "{ok} should fit");
        }
        for no in [
            "a-1-cp312-cp312-manylinux_2_17_x86_64.whl",
            "a-1-cp310-cp310-manylinux_2_17_x86_64.whl",
            "a-1-cp311-cp311-manylinux_2_38_x86_64.whl",
            "a-1-cp311-cp311-manylinux_2_17_aarch64.whl",
            "a-1-cp311-cp311-macosx_11_0_arm64.whl",
            "a-1-cp311-cp311-win_amd64.whl",
            "a-1-cp312-abi3-manylinux2014_x86_64.whl",
            "a-1-cp310-none-any.whl",
            "a-1-py312-none-any.whl",
            "a-1-py2-none-any.whl",
            "a-1-cp311-abi3-any.whl",
            "a-1-pp310-pypy310_pp73-manylinux_2_17_x86_64.whl",
        ] {
            assert!(!fits(no), "{no} should not fit");
        }
    }

    #[test]
    fn suggests_a_close_name_only() {
        let projects: Vec<String> = ["pandas", "panda", "pandera", "numpy", "requests", "Flask"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(suggest("pandsa", &projects), Some("pandas"));
        assert_eq!(suggest("nunpy", &projects), Some("numpy"));
        assert_eq!(suggest("reqests", &projects), Some("requests"));
        assert_eq!(suggest("flsk", &projects), Some("Flask"));
        assert_eq!(suggest("zzqxv", &projects), None);
        assert_eq!(suggest("tensorflow", &projects), None);
        // The name itself is no suggestion.
        assert_eq!(suggest("PANDAS", &["pandas".to_string()]), None);
    }
}

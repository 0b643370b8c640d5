//! The copy itself, free of any cluster: the commands the collector runs, `sha256sum`
//! listings parsed, tar streams unpacked and checked file by file against them, and a checked
//! output moved into the project.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Component, Path};

use sha2::{Digest, Sha256};

use crate::runs::{Output, RunError, place_output};
use crate::spec::RelPath;

/// Why a copied output cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(
        "{path} arrived with sha256 {actual}, but the pod computed {expected}: the copy is not byte-identical, so nothing was collected"
    )]
    Corrupted {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("the pod listed {path}, but the copy does not hold it")]
    Missing { path: String },
    #[error("the copy holds {path}, which the pod did not list")]
    Unlisted { path: String },
    #[error("the copy holds {path} outside the output {output}")]
    Outside { path: String, output: String },
    #[error(
        "{path} is a {kind}; only regular files and directories are collected (write the file itself)"
    )]
    Unsupported { path: String, kind: String },
    #[error("cannot read the pod's sha256sum listing: {0}")]
    Listing(String),
    #[error("cannot read the copy: {0}")]
    Archive(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

/// A verified file of an output: its path in the project, sha256 and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collected {
    pub sha256: String,
    pub size: u64,
}

/// What the collector runs to list an output's files with their sha256 (`sha256sum`'s
/// format, paths relative to `workdir`). Fails when the output does not exist.
pub fn listing_command(workdir: &str, output: &RelPath) -> Vec<String> {
    [
        "/bin/sh",
        "-c",
        "cd \"$1\" && find \"$2\" -type f -exec sha256sum {} +",
        "sh",
        workdir,
        output.as_str(),
    ]
    .map(String::from)
    .to_vec()
}

/// What the collector runs to send an output as a tar stream on stdout.
pub fn copy_command(workdir: &str, output: &RelPath) -> Vec<String> {
    ["tar", "-C", workdir, "-cf", "-", output.as_str()]
        .map(String::from)
        .to_vec()
}

/// `sha256sum`'s output as path → hex digest. Names with a backslash or a newline come
/// escaped, their line starting with `\`.
pub fn parse_sha256sum(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (escaped, line) = match line.strip_prefix('\\') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let (hex, rest) = line
            .split_once(' ')
            .ok_or_else(|| format!("unexpected line {line:?}"))?;
        // `  name` (text mode) or ` *name` (binary mode).
        let name = rest
            .strip_prefix(' ')
            .or_else(|| rest.strip_prefix('*'))
            .ok_or_else(|| format!("unexpected line {line:?}"))?;
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("{hex:?} is not a sha256 digest"));
        }
        let name = if escaped {
            unescape(name)
        } else {
            name.to_string()
        };
        out.insert(normalise(&name), hex.to_ascii_lowercase());
    }
    Ok(out)
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// `./a//b/` → `a/b`.
fn normalise(p: &str) -> String {
    p.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Unpacks a tar stream of `output` into `dest` (paths kept, relative to the project),
/// hashing every file as it is written, and checks the result against `expected` (the pod's
/// listing): the same files, byte for byte. Refuses links, devices and paths outside `output`.
pub fn unpack_verified(
    reader: impl Read,
    expected: &BTreeMap<String, String>,
    output: &RelPath,
    dest: &Path,
) -> Result<BTreeMap<String, Collected>, CollectError> {
    let io_err = |path: &Path| {
        let path = path.display().to_string();
        move |e: std::io::Error| CollectError::Io {
            path,
            message: e.to_string(),
        }
    };
    let mut archive = tar::Archive::new(reader);
    let mut got = BTreeMap::new();
    let entries = archive
        .entries()
        .map_err(|e| CollectError::Archive(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| CollectError::Archive(e.to_string()))?;
        let raw = entry
            .path()
            .map_err(|e| CollectError::Archive(e.to_string()))?
            .into_owned();
        let rel = normalise(&raw.to_string_lossy());
        let inside = raw
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        let under_output = rel == output.as_str()
            || rel
                .strip_prefix(output.as_str())
                .is_some_and(|r| r.starts_with('/'));
        let kind = entry.header().entry_type();
        // The directories leading to the output carry nothing of their own.
        let ancestor = kind.is_dir()
            && output
                .as_str()
                .strip_prefix(rel.as_str())
                .is_some_and(|r| r.starts_with('/'));
        if !inside || rel.is_empty() || !(under_output || ancestor) {
            return Err(CollectError::Outside {
                path: raw.display().to_string(),
                output: output.as_str().to_string(),
            });
        }
        let target = dest.join(&rel);
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(io_err(&target))?;
            continue;
        }
        if !kind.is_file() {
            let kind = if kind.is_symlink() {
                "symbolic link".to_string()
            } else if kind.is_hard_link() {
                "hard link".to_string()
            } else {
                format!("special file ({kind:?})")
            };
            return Err(CollectError::Unsupported { path: rel, kind });
        }
        let Some(want) = expected.get(&rel) else {
            return Err(CollectError::Unlisted { path: rel });
        };
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let executable = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
        let mut file = std::fs::File::create(&target).map_err(io_err(&target))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = entry.read(&mut buf).map_err(io_err(&target))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(io_err(&target))?;
            size += n as u64;
        }
        file.flush().map_err(io_err(&target))?;
        if executable {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755));
        }
        let actual = hex::encode(hasher.finalize());
        if &actual != want {
            return Err(CollectError::Corrupted {
                path: rel,
                expected: want.clone(),
                actual,
            });
        }
        got.insert(
            rel,
            Collected {
                sha256: actual,
                size,
            },
        );
    }
    if let Some(path) = expected.keys().find(|k| !got.contains_key(*k)) {
        return Err(CollectError::Missing { path: path.clone() });
    }
    Ok(got)
}

/// Moves one declared output from staging into the project (replacing what was there) and
/// records its files, as a local run does.
pub(super) fn move_output(
    staging: &Path,
    root: &Path,
    out: &RelPath,
    files: &BTreeMap<String, Collected>,
    outputs: &mut Vec<Output>,
) -> Result<(), RunError> {
    place_output(staging, root, out)?;
    let prefix = format!("{}/", out.as_str());
    for (path, c) in files
        .iter()
        .filter(|(p, _)| p.as_str() == out.as_str() || p.starts_with(&prefix))
    {
        outputs.push(Output {
            path: path.clone(),
            sha256: c.sha256.clone(),
            size: c.size,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    fn rel(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    /// A tar of `files` (path, bytes), directories added for their parents, as `tar -cf` makes.
    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dirs = std::collections::BTreeSet::new();
        for (path, _) in files {
            let mut p = Path::new(path).parent();
            while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
                dirs.insert(d.to_path_buf());
                p = d.parent();
            }
        }
        for d in dirs {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, &d, std::io::empty()).unwrap();
        }
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn listing(files: &[(&str, &[u8])]) -> BTreeMap<String, String> {
        files.iter().map(|(p, d)| (p.to_string(), sha(d))).collect()
    }

    const MODEL: &[u8] = b"\x08\x07onnx model bytes \x00\x01\x02";
    const METRICS: &[u8] = b"{\"auc\": 0.91}\n";

    #[test]
    fn a_faithful_copy_is_unpacked_with_its_hashes() {
        let dest = tempfile::tempdir().unwrap();
        let files: &[(&str, &[u8])] = &[
            ("artifacts/model.onnx", MODEL),
            ("artifacts/plots/roc.txt", METRICS),
        ];
        let got = unpack_verified(
            &tar_of(files)[..],
            &listing(files),
            &rel("artifacts/"),
            dest.path(),
        )
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got["artifacts/model.onnx"].sha256, sha(MODEL));
        assert_eq!(got["artifacts/model.onnx"].size, MODEL.len() as u64);
        assert_eq!(
            std::fs::read(dest.path().join("artifacts/plots/roc.txt")).unwrap(),
            METRICS
        );
    }

    #[test]
    fn a_corrupted_byte_is_refused() {
        let dest = tempfile::tempdir().unwrap();
        let files: &[(&str, &[u8])] = &[("artifacts/model.onnx", MODEL)];
        let expected = listing(files);
        let mut bad = MODEL.to_vec();
        bad[5] ^= 0x01;
        let corrupted = tar_of(&[("artifacts/model.onnx", &bad)]);
        let err = unpack_verified(
            &corrupted[..],
            &expected,
            &rel("artifacts/model.onnx"),
            dest.path(),
        )
        .unwrap_err();
        match &err {
            CollectError::Corrupted {
                path,
                expected: e,
                actual,
            } => {
                assert_eq!(path, "artifacts/model.onnx");
                assert_eq!(e, &sha(MODEL));
                assert_eq!(actual, &sha(&bad));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("not byte-identical"), "{err}");
    }

    #[test]
    fn a_copy_must_hold_exactly_what_the_pod_listed() {
        let dest = tempfile::tempdir().unwrap();
        let files: &[(&str, &[u8])] = &[
            ("artifacts/model.onnx", MODEL),
            ("artifacts/metrics.json", METRICS),
        ];
        // A file the listing has but the archive lost.
        let short = tar_of(&files[..1]);
        let err = unpack_verified(&short[..], &listing(files), &rel("artifacts/"), dest.path())
            .unwrap_err();
        assert!(
            matches!(&err, CollectError::Missing { path } if path == "artifacts/metrics.json"),
            "{err:?}"
        );
        // A file the archive has but the listing does not.
        let err = unpack_verified(
            &tar_of(files)[..],
            &listing(&files[..1]),
            &rel("artifacts/"),
            dest.path(),
        )
        .unwrap_err();
        assert!(matches!(err, CollectError::Unlisted { .. }), "{err:?}");
    }

    #[test]
    fn paths_outside_the_output_and_links_are_refused() {
        let dest = tempfile::tempdir().unwrap();
        let files: &[(&str, &[u8])] = &[("reports/x.txt", METRICS)];
        let err = unpack_verified(
            &tar_of(files)[..],
            &listing(files),
            &rel("artifacts/"),
            dest.path(),
        )
        .unwrap_err();
        assert!(matches!(err, CollectError::Outside { .. }), "{err:?}");

        // `..` in a name: tar::Builder refuses to write one, so the header is written by hand.
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..22].copy_from_slice(b"artifacts/../../escape");
        h.set_mode(0o644);
        h.set_size(METRICS.len() as u64);
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(METRICS);
        raw.resize(raw.len().div_ceil(512) * 512 + 1024, 0);
        let expected = BTreeMap::from([("escape".to_string(), sha(METRICS))]);
        let err =
            unpack_verified(&raw[..], &expected, &rel("artifacts/"), dest.path()).unwrap_err();
        assert!(matches!(err, CollectError::Outside { .. }), "{err:?}");
        assert!(!dest.path().join("escape").exists());
        assert!(!dest.path().parent().unwrap().join("escape").exists());

        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "artifacts/model.onnx", "/etc/passwd")
            .unwrap();
        let tar = b.into_inner().unwrap();
        let err = unpack_verified(&tar[..], &BTreeMap::new(), &rel("artifacts/"), dest.path())
            .unwrap_err();
        assert!(
            matches!(&err, CollectError::Unsupported { kind, .. } if kind == "symbolic link"),
            "{err:?}"
        );
    }

    #[test]
    fn sha256sum_listings_parse_with_escaped_names() {
        let a = sha(b"a");
        let text = format!(
            "{a}  artifacts/model.onnx\n{a} *./artifacts/bin.dat\n\\{a}  artifacts/odd\\nname\\\\x\n"
        );
        let m = parse_sha256sum(&text).unwrap();
        assert_eq!(m["artifacts/model.onnx"], a);
        assert_eq!(m["artifacts/bin.dat"], a);
        assert_eq!(m["artifacts/odd\nname\\x"], a);
        assert!(parse_sha256sum("nothex  x\n").is_err());
        assert!(parse_sha256sum("").unwrap().is_empty());
    }
}

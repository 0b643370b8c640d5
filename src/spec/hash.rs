//! The spec hash: what a run, an image or a promotion was made from. It covers the resolved spec
//! and the content of every file the spec references, so editing either changes it.

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Project, RelPath, SpecError};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct SpecHash(String);

impl SpecHash {
    /// `sha256:<64 hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for labels and tags.
    pub fn short(&self) -> &str {
        let hex = self.0.trim_start_matches("sha256:");
        &hex[..12.min(hex.len())]
    }
}

impl fmt::Display for SpecHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn hash_project(project: &Project) -> Result<SpecHash, SpecError> {
    let mut h = Sha256::new();
    h.update(b"ferry-spec-v1\n");
    // serde_json writes struct fields in declaration order and BTreeMaps sorted: canonical enough.
    let json = serde_json::to_vec(&project.spec).unwrap_or_default();
    h.update(&json);
    h.update(b"\n");

    let s = &project.spec;
    let mut files: Vec<&RelPath> = Vec::new();
    files.extend(s.environment.requirements.iter());
    if let Some(t) = &s.train {
        files.extend(t.inputs.iter());
    }
    if let Some(sv) = &s.serve {
        files.push(&sv.model);
        files.extend(sv.variants.iter().map(|v| &v.model));
        files.extend(sv.models.iter().map(|m| &m.model));
    }
    // What training writes is a product of the spec, not part of it: a run must not change the
    // hash of the spec it ran from. Models are tracked by their own sha256.
    if let Some(t) = &s.train {
        files.retain(|f| !t.outputs.iter().any(|o| f.starts_with(o)));
    }
    files.sort();
    files.dedup();
    for rel in files {
        hash_path(&mut h, &rel.under(&project.root), rel.as_str())?;
    }
    Ok(SpecHash(format!("sha256:{}", hex::encode(h.finalize()))))
}

fn hash_path(h: &mut Sha256, path: &Path, name: &str) -> Result<(), SpecError> {
    let err = |source| SpecError::Hash {
        path: path.to_path_buf(),
        source,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            h.update(format!("absent {name}\n").as_bytes());
            return Ok(());
        }
        Err(e) => return Err(err(e)),
    };
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path).map_err(err)?;
        h.update(format!("link {name} {}\n", target.display()).as_bytes());
    } else if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .map_err(err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        entries.sort_by_key(|e| e.file_name());
        h.update(format!("dir {name}\n").as_bytes());
        for e in entries {
            let child = format!("{name}/{}", e.file_name().to_string_lossy());
            hash_path(h, &e.path(), &child)?;
        }
    } else {
        let digest = sha256_file(path).map_err(err)?;
        h.update(format!("file {name} {digest}\n").as_bytes());
    }
    Ok(())
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

//! The spec hash: what a run, an image or a promotion was made from. It covers the resolved spec
//! and the content of every file the spec references, so editing either changes it.

use std::fmt;
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

    for rel in referenced_files(project) {
        hash_path(&mut h, &rel.under(&project.root), rel.as_str())?;
    }
    Ok(SpecHash(format!("sha256:{}", hex::encode(h.finalize()))))
}

/// The files and directories the spec names as inputs (requirements, training inputs, models),
/// sorted, without what training writes: a run must not change the hash of the spec it ran
/// from, and models are tracked by their own sha256.
pub fn referenced_files(project: &Project) -> Vec<&RelPath> {
    let s = &project.spec;
    let mut files: Vec<&RelPath> = Vec::new();
    files.extend(s.environment.requirements.iter());
    if let Some(t) = &s.train {
        files.extend(t.inputs.iter());
    }
    for step in s.pipeline.values() {
        files.extend(step.inputs.iter());
    }
    if let Some(sv) = &s.serve {
        files.extend(model_files(sv));
    }
    let outputs = s
        .train
        .iter()
        .flat_map(|t| t.outputs.iter())
        .chain(s.pipeline.values().flat_map(|st| st.outputs.iter()));
    let outputs: Vec<&RelPath> = outputs.collect();
    files.retain(|f| !outputs.iter().any(|o| f.starts_with(o)));
    files.sort();
    files.dedup();
    files
}

/// Every model file `serve` names: the main model, its variants and the further models.
pub fn model_files(serve: &super::Serve) -> impl Iterator<Item = &RelPath> {
    std::iter::once(&serve.model)
        .chain(serve.variants.iter().map(|v| &v.model))
        .chain(serve.models.iter().map(|m| &m.model))
}

/// `sha256:<hex>` of a file's bytes, or for a directory of its tree (names, links and file
/// digests, sorted); `None` when the path does not exist.
pub fn path_digest(root: &Path, rel: &RelPath) -> Result<Option<String>, SpecError> {
    let path = rel.under(root);
    let err = |source| SpecError::Hash {
        path: path.clone(),
        source,
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(Some(format!("sha256:{}", sha256_file(&path).map_err(err)?))),
        Ok(_) => {
            let mut h = Sha256::new();
            hash_path(&mut h, &path, rel.as_str())?;
            Ok(Some(format!("sha256:{}", hex::encode(h.finalize()))))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(e)),
    }
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

/// Hex sha256 of a file, streamed (the server's own, which a build without the spec has too).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    crate::server::file_sha256(path)
}

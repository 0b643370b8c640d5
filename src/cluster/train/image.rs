//! What a cluster training may rely on the project image for. In a cluster nothing on this
//! machine is mounted: the inputs are the image's files, so an input `.dockerignore` leaves out
//! is refused before anything is built, and so is a secrets file that would go into the image.

use std::path::{Path, PathBuf};

use crate::cluster::ClusterError;
use crate::images::build as images;
use crate::images::context::DockerIgnore;
use crate::plan::Workload;
use crate::spec::{Project, RelPath};

/// Refuses a run whose inputs (or some file of them) `.dockerignore` keeps out of the project
/// image: locally they are mounted, but a pod has only what the image holds.
pub(super) fn check_inputs_in_image(
    project: &Project,
    work: &Workload,
) -> Result<(), ClusterError> {
    let inputs: Vec<RelPath> = work
        .volumes
        .iter()
        .filter(|v| v.read_only)
        .filter_map(|v| match &v.path {
            crate::plan::VolumePath::Sub(p) => Some(p.clone()),
            crate::plan::VolumePath::Project => None,
        })
        .collect();
    if inputs.is_empty() {
        return Ok(());
    }
    let (file, ignore) = dockerignore(project)?;
    match left_out(&project.root, &inputs, &ignore) {
        Ok(None) => Ok(()),
        Ok(Some((input, excluded))) => Err(ClusterError::InputNotInImage {
            input: input.as_str().to_string(),
            excluded,
            file: file.display().to_string(),
        }),
        Err((path, source)) => Err(images::ImageError::Read { path, source }.into()),
    }
}

/// The project's `.dockerignore` (the rules that decide what the image holds) and its path.
pub(crate) fn dockerignore(project: &Project) -> Result<(PathBuf, DockerIgnore), ClusterError> {
    let file = project.root.join(".dockerignore");
    let ignore = DockerIgnore::load(&project.root).map_err(|source| images::ImageError::Read {
        path: file.clone(),
        source,
    })?;
    Ok((file, ignore))
}

/// Refuses to push a project image that would hold the environment's secrets file: the
/// image goes to a registry, and secrets reach the pods through their Secret only.
pub(crate) fn check_secrets_not_in_image(project: &Project) -> Result<(), ClusterError> {
    let Some(secrets) = project
        .spec
        .cluster
        .as_ref()
        .and_then(|c| c.secrets.as_ref())
    else {
        return Ok(());
    };
    let (file, ignore) = dockerignore(project)?;
    if NEVER_IN_IMAGE.contains(&secrets.top()) || ignore.is_ignored(secrets.as_str()) {
        return Ok(());
    }
    Err(ClusterError::SecretsInImage {
        secrets: secrets.as_str().to_string(),
        env: project.spec.env.clone().unwrap_or_default(),
        file: file.display().to_string(),
    })
}

/// Directories ferry never puts into a build context, whatever `.dockerignore` says.
const NEVER_IN_IMAGE: [&str; 2] = [".ferry", ".git"];

/// The first input that is (partly) left out of the image, with the first path left out.
pub(crate) fn left_out(
    root: &Path,
    inputs: &[RelPath],
    ignore: &DockerIgnore,
) -> Result<Option<(RelPath, String)>, (PathBuf, std::io::Error)> {
    for input in inputs {
        if NEVER_IN_IMAGE.contains(&input.top()) || ignore.is_ignored(input.as_str()) {
            return Ok(Some((input.clone(), input.as_str().to_string())));
        }
        let full = input.under(root);
        let mut files = Vec::new();
        if full.is_dir() {
            walk_files(&full, input.as_str(), &mut files).map_err(|e| (full.clone(), e))?;
        }
        files.sort();
        if let Some(f) = files.into_iter().find(|f| ignore.is_ignored(f)) {
            return Ok(Some((input.clone(), f)));
        }
    }
    Ok(None)
}

fn walk_files(dir: &Path, rel: &str, out: &mut Vec<String>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let child = format!("{rel}/{}", e.file_name().to_string_lossy());
        if e.file_type()?.is_dir() {
            walk_files(&e.path(), &child, out)?;
        } else {
            out.push(child);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    #[test]
    fn inputs_left_out_by_dockerignore_are_named() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("data/raw")).unwrap();
        std::fs::write(root.path().join("data/a.csv"), "x").unwrap();
        std::fs::write(root.path().join("data/raw/b.parquet"), "x").unwrap();
        let inputs = [rel("data/")];
        let none = DockerIgnore::parse("artifacts/\n");
        assert_eq!(left_out(root.path(), &inputs, &none).unwrap(), None);
        let all = DockerIgnore::parse("data/\n");
        assert_eq!(
            left_out(root.path(), &inputs, &all).unwrap(),
            Some((rel("data/"), "data".into()))
        );
        let some = DockerIgnore::parse("**/*.parquet\n");
        assert_eq!(
            left_out(root.path(), &inputs, &some).unwrap(),
            Some((rel("data/"), "data/raw/b.parquet".into()))
        );
        let back = DockerIgnore::parse("data/\n!data/\n");
        assert_eq!(left_out(root.path(), &inputs, &back).unwrap(), None);
    }
}

//! `ferry train --notebook NOTEBOOK.ipynb`: the training workload with the notebook, run
//! headless by nbclient, in place of `train.command`. Everything else about the run — image,
//! inputs, outputs, resources, where it runs — is the spec's `train` section, so a notebook
//! run and a command run differ only in their argument vector and one more writable
//! directory, which holds the executed notebook (kept with the run record, failed or not).
//!
//! The runner (`run_notebook.py`) travels in the argument vector itself: the same project
//! image serves both kinds of run, and a local container and a cluster Job run the very same
//! workload.

use std::path::{Path, PathBuf};

use crate::images::context::DockerIgnore;
use crate::plan::{NotebookRun, Volume, VolumePath, Workload};
use crate::spec::{Project, RelPath};

/// The script that executes the notebook inside the image.
pub const RUNNER: &str = include_str!("run_notebook.py");
/// The directory (under the workdir) the executed notebook is written to.
pub const RUN_DIR: &str = ".ferry-notebook/";
/// How the runner's own lines start in the run's log.
const MARK: &str = "ferry-notebook:";

#[derive(Debug, thiserror::Error)]
pub enum NotebookError {
    #[error("{} does not exist\n  hint: give the path of a notebook in the project, e.g. `ferry train --notebook train.ipynb`", path.display())]
    NotFound { path: PathBuf },
    #[error("{} is outside the project directory {}\n  hint: training runs what the project image holds; move the notebook into the project", path.display(), root.display())]
    OutsideProject { path: PathBuf, root: PathBuf },
    #[error("{} is not a Jupyter notebook: {reason}\n  hint: give an .ipynb file saved by Jupyter (nbformat 4)", path.display())]
    NotANotebook { path: PathBuf, reason: String },
    #[error("{} is left out of the project image by {}, so training cannot run it\n  hint: remove the rule that matches {notebook} from .dockerignore", path.display(), file.display())]
    NotInImage {
        path: PathBuf,
        notebook: String,
        file: PathBuf,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "bad parameter {param:?}: {reason}\n  hint: parameters are NAME=VALUE, NAME a Python identifier, e.g. -p epochs=20 -p data=data/customers.csv"
    )]
    BadParam { param: String, reason: &'static str },
}

/// A notebook to run, checked against the project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The notebook, relative to the project root.
    pub notebook: RelPath,
    /// `NAME=VALUE` overrides for the cell tagged `parameters`, in the order given.
    pub params: Vec<(String, String)>,
}

impl Request {
    /// Checks `path` (relative to `cwd` unless absolute) before anything is built: it must be
    /// a notebook, inside the project, and go into the project image.
    pub fn new(
        project: &Project,
        path: &Path,
        cwd: &Path,
        params: &[String],
    ) -> Result<Request, NotebookError> {
        let params = params
            .iter()
            .map(|p| parse_param(p))
            .collect::<Result<Vec<_>, _>>()?;
        let given = if path.is_absolute() {
            path.to_path_buf()
        } else {
            cwd.join(path)
        };
        let full = match given.canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(NotebookError::NotFound {
                    path: path.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(NotebookError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let root = project
            .root
            .canonicalize()
            .map_err(|source| NotebookError::Read {
                path: project.root.clone(),
                source,
            })?;
        let outside = || NotebookError::OutsideProject {
            path: path.to_path_buf(),
            root: project.root.clone(),
        };
        let rel = full.strip_prefix(&root).map_err(|_| outside())?;
        let notebook = RelPath::parse(&rel.to_string_lossy()).map_err(|_| outside())?;
        if matches!(notebook.top(), ".ferry" | ".git") {
            return Err(NotebookError::NotInImage {
                path: path.to_path_buf(),
                notebook: notebook.as_str().to_string(),
                file: PathBuf::from(".dockerignore"),
            });
        }
        check_notebook(&full).map_err(|reason| NotebookError::NotANotebook {
            path: path.to_path_buf(),
            reason,
        })?;
        let ignore_file = project.root.join(".dockerignore");
        let ignore = DockerIgnore::load(&project.root).map_err(|source| NotebookError::Read {
            path: ignore_file.clone(),
            source,
        })?;
        if ignore.is_ignored(notebook.as_str()) {
            return Err(NotebookError::NotInImage {
                path: path.to_path_buf(),
                notebook: notebook.as_str().to_string(),
                file: ignore_file,
            });
        }
        Ok(Request { notebook, params })
    }

    /// The file name the executed notebook keeps in the run's directory.
    pub fn executed_name(&self) -> String {
        let name = self
            .notebook
            .as_str()
            .rsplit('/')
            .next()
            .unwrap_or("notebook");
        if name.ends_with(".ipynb") {
            name.to_string()
        } else {
            format!("{name}.ipynb")
        }
    }
}

/// `NAME=VALUE`, NAME a Python identifier (it becomes an assignment in the notebook).
fn parse_param(p: &str) -> Result<(String, String), NotebookError> {
    let bad = |reason| NotebookError::BadParam {
        param: p.to_string(),
        reason,
    };
    let (name, value) = p.split_once('=').ok_or_else(|| bad("no `=`"))?;
    let name = name.trim();
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(bad("the name is not a Python identifier"));
    }
    Ok((name.to_string(), value.to_string()))
}

/// Why a file is not an nbformat 4 notebook, if it is not one.
fn check_notebook(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Err("it is a directory".into());
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let doc: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("not JSON ({e})"))?;
    let major = doc.get("nbformat").and_then(|v| v.as_u64());
    match major {
        None => return Err("no `nbformat` field".into()),
        Some(v) if v < 4 => {
            return Err(format!(
                "nbformat {v}; open and save it in a current Jupyter to upgrade it"
            ));
        }
        Some(_) => {}
    }
    if !doc.get("cells").is_some_and(|c| c.is_array()) {
        return Err("no `cells` list".into());
    }
    Ok(())
}

/// The training workload with `req`'s notebook in place of the command.
pub fn workload(train: &Workload, req: &Request) -> Workload {
    let dir = run_dir();
    // A file name from a RelPath under a constant directory: it parses.
    let executed = RelPath::parse(&format!("{}{}", RUN_DIR, req.executed_name()))
        .unwrap_or_else(|_| dir.clone());
    let mut argv = vec![
        "python".to_string(),
        "-c".to_string(),
        RUNNER.to_string(),
        format!("{}/{}", train.workdir, req.notebook.as_str()),
        format!("{}/{}", train.workdir, executed.as_str()),
    ];
    argv.extend(req.params.iter().map(|(k, v)| format!("{k}={v}")));
    let mut volumes = train.volumes.clone();
    volumes.push(Volume {
        path: VolumePath::Sub(dir),
        read_only: false,
    });
    Workload {
        argv,
        volumes,
        notebook: Some(NotebookRun {
            source: req.notebook.clone(),
            executed,
        }),
        ..train.clone()
    }
}

/// The writable directory the executed notebook goes to.
pub fn run_dir() -> RelPath {
    RelPath::parse(RUN_DIR).expect("RUN_DIR is a constant relative path")
}

/// The runner's account of a failed notebook from a run's log: `failed at cell 4 of 9:
/// ValueError: …`. The last such line counts: the notebook's own output comes before it.
pub fn failure(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .filter_map(|l| l.trim().strip_prefix(MARK))
        .map(str::trim)
        .find(|l| l.starts_with("failed") || l.starts_with("cannot run"))
        .map(str::to_string)
}

/// The reason a failed notebook run gives: which cell raised what, where the executed
/// notebook is, else the container's own account.
pub fn failure_reason(
    req: &NotebookRun,
    log: &Path,
    executed: Option<&str>,
    fallback: String,
) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let what = match failure(&text) {
        Some(f) => format!("{} {f} ({fallback})", req.source),
        None => fallback,
    };
    match executed {
        Some(p) => format!("{what}\n  executed notebook, with its outputs up to the failure: {p}"),
        None => what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(dir: &Path) -> Project {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(
            dir.join("ferry.yaml"),
            "name: nb\nenvironment: { bootstrap: bookworm }\ntrain:\n  command: python train.py\n  inputs: [data/]\n  outputs: [artifacts/model.onnx]\n  resources: { cpu: 2, memory: 1Gi }\n",
        )
        .unwrap();
        Project::load_dir(dir, None).unwrap()
    }

    const NB: &str = r#"{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}"#;

    #[test]
    fn a_notebook_in_the_project_is_taken_relative_to_the_cwd() {
        let dir = tempfile::tempdir().unwrap();
        let p = project(dir.path());
        std::fs::create_dir(dir.path().join("nbs")).unwrap();
        std::fs::write(dir.path().join("nbs/train.ipynb"), NB).unwrap();
        let r = Request::new(
            &p,
            Path::new("train.ipynb"),
            &dir.path().join("nbs"),
            &["epochs=3".into(), "name = a=b".into()],
        )
        .unwrap();
        assert_eq!(r.notebook.as_str(), "nbs/train.ipynb");
        assert_eq!(
            r.params,
            vec![
                ("epochs".to_string(), "3".to_string()),
                ("name".to_string(), " a=b".to_string())
            ]
        );
        assert_eq!(r.executed_name(), "train.ipynb");
    }

    #[test]
    fn bad_paths_and_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let p = project(dir.path());
        let err = |path: &Path| {
            Request::new(&p, path, dir.path(), &[])
                .unwrap_err()
                .to_string()
        };
        assert!(err(Path::new("missing.ipynb")).contains("missing.ipynb does not exist"));

        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(outside.path(), NB).unwrap();
        assert!(err(outside.path()).contains("is outside the project directory"));

        std::fs::write(dir.path().join("script.py"), "print(1)\n").unwrap();
        let e = err(Path::new("script.py"));
        assert!(e.contains("is not a Jupyter notebook: not JSON"), "{e}");
        std::fs::write(
            dir.path().join("old.ipynb"),
            r#"{"nbformat": 3, "worksheets": []}"#,
        )
        .unwrap();
        assert!(err(Path::new("old.ipynb")).contains("nbformat 3"));
        std::fs::write(dir.path().join("odd.ipynb"), r#"{"nbformat": 4}"#).unwrap();
        assert!(err(Path::new("odd.ipynb")).contains("no `cells` list"));
        assert!(err(Path::new(".")).contains("outside the project directory"));

        std::fs::write(dir.path().join("scratch.ipynb"), NB).unwrap();
        std::fs::write(dir.path().join(".dockerignore"), "scratch*.ipynb\n").unwrap();
        let e = err(Path::new("scratch.ipynb"));
        assert!(e.contains("left out of the project image"), "{e}");
    }

    #[test]
    fn parameters_need_a_name_and_a_value() {
        assert!(parse_param("epochs").is_err());
        assert!(parse_param("2x=1").is_err());
        assert!(parse_param("a-b=1").is_err());
        assert_eq!(
            parse_param("lr=0.1").unwrap(),
            ("lr".to_string(), "0.1".to_string())
        );
    }

    #[test]
    fn the_workload_replaces_only_the_command_and_adds_the_notebook_directory() {
        let dir = tempfile::tempdir().unwrap();
        let p = project(dir.path());
        std::fs::write(dir.path().join("train.ipynb"), NB).unwrap();
        let plan = crate::plan::plan(&p, "");
        let train = plan.train.unwrap();
        let req = Request::new(&p, Path::new("train.ipynb"), dir.path(), &["k=v".into()]).unwrap();
        let w = workload(&train, &req);
        assert_eq!(&w.argv[..2], ["python", "-c"]);
        assert_eq!(w.argv[2], RUNNER);
        assert_eq!(
            &w.argv[3..],
            [
                "/workspace/train.ipynb",
                "/workspace/.ferry-notebook/train.ipynb",
                "k=v"
            ]
        );
        assert_eq!(w.outputs, train.outputs);
        assert_eq!((w.cpu, w.memory), (train.cpu.clone(), train.memory.clone()));
        assert_eq!(w.env, train.env);
        assert_eq!(&w.volumes[..train.volumes.len()], &train.volumes[..]);
        assert_eq!(
            w.volumes.last().unwrap(),
            &Volume {
                path: VolumePath::Sub(run_dir()),
                read_only: false
            }
        );
        let nb = w.notebook.unwrap();
        assert_eq!(nb.executed.as_str(), ".ferry-notebook/train.ipynb");
    }

    #[test]
    fn the_runners_failure_line_is_found_after_the_notebooks_own_output() {
        let log = "ferry-notebook: running cell 1 of 3\nfailed to converge\nTraceback\nferry-notebook: failed at cell 3 of 3: ValueError: too big\n";
        assert_eq!(
            failure(log).as_deref(),
            Some("failed at cell 3 of 3: ValueError: too big")
        );
        assert_eq!(failure("ferry-notebook: executed 3 cells\n"), None);
    }
}

//! Pipelines beneath both loops: what a step's cache key is made of (`key`), whether a step
//! runs and why (`decide`), the content-addressed store of step outputs (`store`), the sha256
//! of project files remembered by stat (`hashes`) and a step's checks on its JSON outputs
//! (`checks`). Running the steps is the loops' business (`local::pipeline` on Docker); the
//! steps and their order come from the spec.

pub mod checks;
pub mod decide;
pub mod gate;
pub mod hashes;
pub mod key;
pub mod lineage;
pub mod record;
pub mod select;
pub mod store;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot place cached outputs: {0}")]
    Place(String),
}

impl PipelineError {
    pub(crate) fn io(
        what: &'static str,
        path: &Path,
    ) -> impl FnOnce(std::io::Error) -> PipelineError {
        let path = path.to_path_buf();
        move |source| PipelineError::Io { what, path, source }
    }
}

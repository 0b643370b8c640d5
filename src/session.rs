//! The notebook session of `ferry dev`, as both loops (Docker and a cluster) take and give it:
//! the options the command was given, the session that runs, and why a notebook did not come
//! up.

use serde::{Deserialize, Serialize};

use crate::ui::tail_block as last_lines;

/// What a running notebook session is; also written to `.ferry/dev.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    pub url: String,
    pub container: String,
    pub image: String,
    pub port: u16,
    #[serde(skip_serializing)]
    pub token: String,
    /// Found running as this command would have started it, rather than started by it.
    #[serde(skip)]
    pub already_running: bool,
}

#[derive(Clone, Debug)]
pub struct DevOptions {
    pub env: Option<String>,
    pub port: Option<u16>,
    pub detach: bool,
    /// Replace a running notebook of the project, even one with other settings.
    pub restart: bool,
}

/// The notebook did not answer: a sentence and its last output lines.
#[derive(Debug, thiserror::Error)]
#[error("the notebook did not become ready: {reason}{}", last_lines(tail))]
pub struct NotebookFailed {
    pub reason: String,
    pub tail: Vec<String>,
}

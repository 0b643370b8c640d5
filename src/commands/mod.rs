//! One module per command (a family shares one): its arguments, the call into the library, and
//! its result in text and JSON. `cli` parses the command line and dispatches here.

pub mod args;
pub mod build;
pub mod ci;
pub mod completions;
pub mod dev;
pub mod diff;
pub mod doctor;
pub mod down;
pub mod gc;
pub mod init;
pub mod logs;
pub mod monitoring;
pub mod predict;
pub mod promote;
pub mod render;
pub mod replay;
pub mod run;
pub mod runs;
pub mod score;
pub mod score_shard;
pub mod serve;
pub mod serve_model;
pub mod status;
pub mod templates;
pub mod train;
pub mod validate;

use crate::cli::CliError;

/// The runtime a command's calls into the (async) library run on, one per command.
pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

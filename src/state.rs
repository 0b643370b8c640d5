//! The project's state directory, `.ferry/` beside ferry.yaml: run records and their logs, the
//! notebook's and the model server's sessions, the revisions promoted to each environment. Both
//! loops write there, so its name lives beneath both.

/// Where ferry keeps a project's local state (run records, logs, the notebook's session).
pub const STATE_DIR: &str = ".ferry";

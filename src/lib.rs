//! ferry: one spec, the same containers on a laptop and in a cluster.
//!
//! Module map (the README's "Layout" has it as a table): `spec` reads and validates `ferry.yaml`;
//! `plan` turns a resolved spec into neutral workloads; `images` builds images; `docker` is the
//! local backend; `local` runs the dev, training and serving loops on it; `kube` is the cluster
//! backend and `cluster` drives it. Beneath both loops, owned by neither: `project_plan` makes the
//! plan of a project on disk, `runs` keeps training runs' records and places their outputs,
//! `session` is the notebook session `ferry dev` gives, `serving_image` checks the models and
//! builds the serving image, `interrupt` turns Ctrl-C into cleanup and `state` names the `.ferry/`
//! directory. `notebook` runs a notebook as the training workload; `lock` keeps `ferry.lock`, what
//! each environment runs; `onnx` checks models with ONNX Runtime; `replay` runs a served model's
//! logged traffic through a candidate model; `platform` names the OS and CPU an image is made
//! for; `templates` holds the embedded project templates; `ci`, `monitoring` and `doctor` write
//! the CI workflow, the monitoring files and the machine check. `cli` is the thin
//! command-line edge (the parser, the dispatch, error reports); `commands` holds one module per
//! command: its arguments, its calls into the library, its output; `ui` is the terminal output they
//! share.

#[cfg(feature = "cli")]
pub mod ci;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cli")]
pub mod cluster;
#[cfg(feature = "cli")]
mod commands;
#[cfg(feature = "cli")]
pub mod docker;
#[cfg(feature = "cli")]
pub mod doctor;
#[cfg(feature = "cli")]
pub mod images;
#[cfg(feature = "cli")]
pub mod interrupt;
#[cfg(feature = "cli")]
pub mod kube;
#[cfg(feature = "cli")]
pub mod local;
#[cfg(feature = "cli")]
pub mod lock;
#[cfg(feature = "cli")]
pub mod monitoring;
#[cfg(feature = "cli")]
pub mod notebook;
pub mod onnx;
#[cfg(feature = "cli")]
pub mod pipeline;
#[cfg(feature = "cli")]
pub mod plan;
pub mod platform;
#[cfg(feature = "cli")]
pub mod predict;
#[cfg(feature = "cli")]
pub mod project_plan;
#[cfg(feature = "cli")]
pub mod replay;
#[cfg(feature = "cli")]
pub mod runs;
#[cfg(feature = "score")]
pub mod score;
pub mod server;
#[cfg(feature = "cli")]
pub mod serving_image;
#[cfg(feature = "cli")]
pub mod session;
#[cfg(feature = "spec")]
pub mod spec;
#[cfg(feature = "cli")]
pub mod state;
#[cfg(feature = "cli")]
pub mod templates;
#[cfg(feature = "cli")]
pub mod ui;

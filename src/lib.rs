//! ferry: one spec, the same containers on a laptop and in a cluster.
//!
//! Module map (see DESIGN.md): `spec` reads and validates `ferry.yaml`; `plan` turns a resolved
//! spec into neutral workloads; `images` builds images; `docker` is the local backend; `local`
//! runs the dev and training loops on it; `kube` is the cluster backend and `cluster` drives
//! it; `notebook` runs a notebook as the training workload; `lock` keeps `ferry.lock`, what each
//! environment runs; `onnx` checks models with ONNX Runtime; `templates` holds the embedded
//! project templates; `ci`, `monitoring` and `doctor` write the CI workflow, the monitoring
//! files and the machine check; `cli` is the thin command-line edge (the parser, the dispatch,
//! error reports) and `commands` holds one module per command: its arguments, its calls into
//! the library, its output; `ui` is the terminal output they share.

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
pub mod plan;
#[cfg(feature = "cli")]
pub mod predict;
pub mod server;
#[cfg(feature = "spec")]
pub mod spec;
#[cfg(feature = "cli")]
pub mod templates;
#[cfg(feature = "cli")]
pub mod ui;

//! The serving configuration: what one `ferry serve-model` process serves and how. Written by
//! ferry from the spec (the plan), stored as JSON in the serving image at
//! `/etc/ferry/serving.json`, and read back by the server. The same file drives a local
//! container, `ferry serve --native` and a cluster Deployment.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the serving image keeps its config.
pub const CONFIG_PATH: &str = "/etc/ferry/serving.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServingConfig {
    /// Address to listen on; `0.0.0.0` in a container, `127.0.0.1` natively.
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub models: Vec<ModelConfig>,
    #[serde(default)]
    pub limits: Limits,
    /// Header whose value pins a client to one variant (sticky A/B assignment).
    #[serde(default = "default_key_header")]
    pub variant_key_header: String,
}

/// One model name clients address; served by one or more weighted variants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    /// The version clients may name in `/versions/{v}`.
    #[serde(default = "default_version")]
    pub version: String,
    pub variants: Vec<VariantConfig>,
    /// Dynamic batching; absent means every request runs on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<BatchingConfig>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantConfig {
    pub name: String,
    pub path: PathBuf,
    /// Share of traffic, relative to the other variants of the model.
    pub weight: u32,
    /// sha256 of the model file, for metadata and drift checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    pub max_batch_size: u32,
    pub max_delay_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
    /// Requests not answered within this get 408.
    pub request_timeout_ms: u64,
    /// Requests waiting per model variant beyond this get 429.
    pub max_queue: usize,
    /// The most tensor elements one request may declare (checked before allocating).
    pub max_elements: usize,
    /// After SIGTERM: stop accepting, finish in-flight requests, exit within this.
    pub shutdown_grace_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 8 << 20,
            request_timeout_ms: 10_000,
            max_queue: 1024,
            max_elements: 4 << 20,
            shutdown_grace_ms: 20_000,
        }
    }
}

fn default_host() -> String {
    "0.0.0.0".into()
}
fn default_port() -> u16 {
    8080
}
fn default_version() -> String {
    "1".into()
}
fn default_key_header() -> String {
    "x-ferry-key".into()
}

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
    /// Where the models run. Left out when `cpu`, so a CPU config reads (and hashes) as it did
    /// before devices existed.
    #[serde(default, skip_serializing_if = "Device::is_cpu")]
    pub device: Device,
    /// Watch the model files and swap a changed one in while serving (`ferry serve` on this
    /// machine; an image in a cluster never changes). Also set by [`WATCH_ENV`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub watch: bool,
    /// Sampled requests and answers as JSON lines (and every shadowed one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<TrafficLogConfig>,
}

/// `serve.log` as the server takes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficLogConfig {
    /// Share of requests logged, above 0 and at most 1.
    pub sample: f64,
    /// The file; absent: standard output. [`LOG_ENV`] sets it where the config cannot (the
    /// image's config is the same everywhere; the file is the runtime's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Bytes before the file is rotated.
    #[serde(default = "default_max_size")]
    pub max_size: u64,
    /// Rotated files kept.
    #[serde(default = "default_keep")]
    pub keep: u32,
    /// Records waiting for the writer before more are dropped (default 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<usize>,
}

pub fn default_max_size() -> u64 {
    100 << 20
}

pub fn default_keep() -> u32 {
    5
}

/// The device ONNX Runtime runs the models on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    /// ONNX Runtime's CUDA execution provider; the server refuses to start without it rather
    /// than serve on the CPU where a GPU was asked for.
    Cuda,
}

impl Device {
    pub fn is_cpu(&self) -> bool {
        *self == Device::Cpu
    }

    pub fn name(&self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
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
    /// Sessions per variant, each run by its own thread; absent: derived from the CPUs the
    /// server may use (see `server::cores`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
    /// ONNX Runtime intra-op threads per session; absent: derived like `instances`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
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
    /// Where a changed model is loaded from while serving, when not `path`: the project's own
    /// file, mounted into a local container (see [`WATCH_ENV`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
    /// A copy of `weight` percent of the model's requests goes to this variant; its answers are
    /// compared with the primary's and logged, never returned.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// A shadow's answer later than this counts as timed out (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
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

/// Overrides the listen address the config file gives, so one image can listen where its
/// runtime wants it (on the host's loopback with host networking, another port in a cluster).
pub const HOST_ENV: &str = "FERRY_SERVE_HOST";
pub const PORT_ENV: &str = "FERRY_SERVE_PORT";
/// Turns [`ServingConfig::watch`] on: `1`, or a JSON object mapping model paths of the config
/// to the files to watch and reload from instead (in a container, the project's model files
/// mounted from the host); each variant's `source`.
pub const WATCH_ENV: &str = "FERRY_SERVE_WATCH";
/// The file `log` records go to (`-` for standard output), for a runtime that mounts one.
pub const LOG_ENV: &str = "FERRY_SERVE_LOG";

impl ServingConfig {
    /// The config with [`HOST_ENV`] and [`PORT_ENV`] applied, as read from `get`.
    pub fn listen_from_env(mut self, get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        if let Some(host) = get(HOST_ENV).filter(|h| !h.is_empty()) {
            if host.parse::<std::net::IpAddr>().is_err() {
                return Err(format!("{HOST_ENV}={host:?} is not an IP address"));
            }
            self.host = host;
        }
        if let Some(port) = get(PORT_ENV).filter(|p| !p.is_empty()) {
            self.port = match port.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(format!("{PORT_ENV}={port:?} is not a port (1-65535)")),
            };
        }
        if let Some(watch) = get(WATCH_ENV).filter(|w| !w.is_empty()) {
            self.watch_from(&watch)?;
        }
        if let Some(path) = get(LOG_ENV).filter(|p| !p.is_empty()) {
            let Some(log) = &mut self.log else {
                return Err(format!(
                    "{LOG_ENV} is set, but the serving config has no log (serve.log in ferry.yaml)"
                ));
            };
            log.path = (path != "-").then(|| PathBuf::from(path));
        }
        Ok(self)
    }

    fn watch_from(&mut self, value: &str) -> Result<(), String> {
        self.watch = true;
        if matches!(value, "1" | "true") {
            return Ok(());
        }
        let map: std::collections::BTreeMap<PathBuf, PathBuf> = serde_json::from_str(value)
            .map_err(|e| format!("{WATCH_ENV} must be 1 or a JSON object of model paths: {e}"))?;
        for (from, to) in map {
            let mut found = false;
            for variant in self.models.iter_mut().flat_map(|m| m.variants.iter_mut()) {
                if variant.path == from {
                    variant.source = Some(to.clone());
                    found = true;
                }
            }
            if !found {
                return Err(format!(
                    "{WATCH_ENV} names {}, which no model of the config has",
                    from.display()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod env_tests {
    use super::*;

    fn config() -> ServingConfig {
        serde_json::from_str(r#"{"models": []}"#).unwrap()
    }

    #[test]
    fn the_environment_overrides_the_listen_address() {
        let c = config()
            .listen_from_env(|k| match k {
                HOST_ENV => Some("127.0.0.1".into()),
                PORT_ENV => Some("9001".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 9001));
        let c = config().listen_from_env(|_| None).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("0.0.0.0", 8080));
    }

    #[test]
    fn the_device_is_cpu_unless_named_and_cpu_is_never_written() {
        assert_eq!(config().device, Device::Cpu);
        let json = serde_json::to_string(&config()).unwrap();
        assert!(!json.contains("device"), "{json}");
        let cuda: ServingConfig =
            serde_json::from_str(r#"{"models": [], "device": "cuda"}"#).unwrap();
        assert_eq!(cuda.device, Device::Cuda);
        assert!(
            serde_json::to_string(&cuda)
                .unwrap()
                .contains(r#""device":"cuda""#)
        );
        let err = serde_json::from_str::<ServingConfig>(r#"{"models": [], "device": "tpu"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `tpu`"), "{err}");
    }

    #[test]
    fn bad_overrides_are_named() {
        let e = config()
            .listen_from_env(|k| (k == PORT_ENV).then(|| "80x".into()))
            .unwrap_err();
        assert!(e.contains("FERRY_SERVE_PORT=\"80x\""), "{e}");
        let e = config()
            .listen_from_env(|k| (k == PORT_ENV).then(|| "0".into()))
            .unwrap_err();
        assert!(e.contains("not a port"), "{e}");
        let e = config()
            .listen_from_env(|k| (k == HOST_ENV).then(|| "localhost:1".into()))
            .unwrap_err();
        assert!(e.contains("not an IP address"), "{e}");
    }
}

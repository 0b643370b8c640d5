//! What a project already runs. Each notebook and server container carries, in a label, the
//! settings it was started with; a repeated `ferry dev` or `ferry serve` compares them with what
//! it would start now and decides — after every check that can fail, before touching anything —
//! to report the running one, to refuse (naming what differs), or to replace it (`--restart`).

use std::collections::BTreeMap;
use std::path::Path;

use bollard::Docker;
use sha2::{Digest, Sha256};

use super::LocalError;
use crate::docker::{self, ContainerSpec, Found, LABEL_CONFIG, LABEL_ROLE, LABEL_ROOT};

/// The settings that make two containers of one role the same thing, by name: image, port,
/// network, command, environment (values as digests), mounts, resources.
pub type Config = BTreeMap<String, String>;

/// The settings of `spec` once it runs `image_id`; `skip_env` names variables that differ by
/// design between two starts of the same thing (the notebook's token).
pub fn config_of(spec: &ContainerSpec, image_id: &str, skip_env: &[&str]) -> Config {
    let mut c = Config::new();
    let short = image_id.trim_start_matches("sha256:");
    c.insert(
        "image".into(),
        format!("{} ({})", spec.image, &short[..12.min(short.len())]),
    );
    if let Some((_, published)) = spec.ports.first() {
        c.insert("port".into(), published.to_string());
    }
    let network = if spec.host_network { "host" } else { "bridge" };
    c.insert("network".into(), network.into());
    c.insert("command".into(), spec.argv.join(" "));
    for (k, v) in &spec.env {
        if !skip_env.contains(&k.as_str()) {
            // A digest, not the value: labels are readable by anyone who can list containers.
            let digest = hex::encode(Sha256::digest(v.as_bytes()));
            c.insert(format!("env {k}"), digest[..16].to_string());
        }
    }
    let mounts: Vec<String> = spec
        .mounts
        .iter()
        .map(|m| {
            let mode = if m.read_only { "ro" } else { "rw" };
            format!("{}:{}:{mode}", m.host.display(), m.container)
        })
        .collect();
    c.insert("mounts".into(), mounts.join(", "));
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            c.insert(k.into(), v);
        }
    };
    put("cpu", spec.nano_cpus.map(|n| format!("{}", n as f64 / 1e9)));
    put("memory", spec.memory.map(|m| format!("{m} bytes")));
    put("gpu", spec.gpus.map(|g| g.to_string()));
    put("user", spec.user.clone());
    c
}

/// `spec` with its settings in the label that a later command compares against.
pub fn label(spec: &mut ContainerSpec, config: &Config) {
    let json = serde_json::to_string(config).unwrap_or_default();
    spec.labels.insert(LABEL_CONFIG.to_string(), json);
}

/// One line per setting that differs between a running container and what would start now.
pub fn differences(running: &Config, wanted: &Config) -> Vec<String> {
    let mut keys: Vec<&String> = running.keys().chain(wanted.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for k in keys {
        let (old, new) = (running.get(k), wanted.get(k));
        if old == new {
            continue;
        }
        out.push(match (k.strip_prefix("env "), old, new) {
            (Some(var), None, _) => format!("environment variable {var} added"),
            (Some(var), _, None) => format!("environment variable {var} removed"),
            (Some(var), _, _) => format!("environment variable {var} changed"),
            (None, old, new) => format!(
                "{k}: {} → {}",
                old.map_or("none", String::as_str),
                new.map_or("none", String::as_str)
            ),
        });
    }
    out
}

/// What a command does about a running container of its role.
#[derive(Debug)]
pub enum Decision {
    /// Nothing of this role runs: start one.
    Start,
    /// The same thing runs: report it, touch nothing.
    Reuse(Found),
    /// Something else runs and `--restart` says to replace it.
    Replace(Found),
}

/// What the caller needs to say in its messages.
pub struct Role<'a> {
    /// `notebook` or `serve`, as the containers' role label says.
    pub label: &'a str,
    /// "the notebook", "the model server".
    pub what: &'static str,
    /// The command that starts it: `ferry dev`, `ferry serve`.
    pub command: &'static str,
    /// Where the port comes from, for the busy-port hint.
    pub port_flag: &'static str,
}

/// Decides, from what runs now, whether `wanted` starts, is already running or replaces the
/// running one; fails (touching nothing) when its port is taken by anything but the container
/// it would replace, or when the running one differs and `restart` is not given.
pub async fn decide(
    docker: &Docker,
    root: &Path,
    role: &Role<'_>,
    wanted: &Config,
    restart: bool,
) -> Result<Decision, LocalError> {
    let port = wanted.get("port").and_then(|p| p.parse::<u16>().ok());
    let Some(running) = find(docker, root, role.label).await? else {
        if let Some(p) = port {
            docker::check_port_free(p, role.port_flag)?;
        }
        return Ok(Decision::Start);
    };
    let recorded = running
        .labels
        .get(LABEL_CONFIG)
        .and_then(|j| serde_json::from_str::<Config>(j).ok());
    let diffs = match &recorded {
        Some(r) => differences(r, wanted),
        None => vec!["its settings are not recorded (an earlier ferry started it)".into()],
    };
    // The running container holds its own port; any other port must be free before it goes.
    let same_port = recorded
        .as_ref()
        .is_none_or(|r| r.get("port") == wanted.get("port"));
    if let (Some(p), false) = (port, same_port) {
        docker::check_port_free(p, role.port_flag)?;
    }
    if restart {
        return Ok(Decision::Replace(running));
    }
    if diffs.is_empty() {
        return Ok(Decision::Reuse(running));
    }
    Err(LocalError::RunningDiffers {
        what: role.what,
        command: role.command,
        container: short_id(&running.id),
        differences: diffs,
    })
}

/// The running container of `role` ferry started for the project at `root`, if any.
pub async fn find(docker: &Docker, root: &Path, role: &str) -> Result<Option<Found>, LocalError> {
    let root_s = root.to_string_lossy();
    let found =
        docker::find_containers(docker, &[(LABEL_ROOT, root_s.as_ref()), (LABEL_ROLE, role)])
            .await?;
    Ok(found.into_iter().find(|c| c.state == "running"))
}

/// A container id as `docker ps` shows it.
pub fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "ferry-p-notebook".into(),
            image: "ferry/p-env:abc".into(),
            argv: vec!["jupyter".into(), "lab".into()],
            env: BTreeMap::from([
                ("JUPYTER_TOKEN".to_string(), "secret".to_string()),
                ("OMP_NUM_THREADS".to_string(), "1".to_string()),
            ]),
            ports: vec![(8888, 9000)],
            ..Default::default()
        }
    }

    #[test]
    fn the_same_spec_has_the_same_settings_whatever_its_token() {
        let a = config_of(&spec(), "sha256:0123456789abcdef", &["JUPYTER_TOKEN"]);
        let mut other = spec();
        other.env.insert("JUPYTER_TOKEN".into(), "another".into());
        let b = config_of(&other, "sha256:0123456789abcdef", &["JUPYTER_TOKEN"]);
        assert!(differences(&a, &b).is_empty());
        assert_eq!(a["image"], "ferry/p-env:abc (0123456789ab)");
        assert!(!serde_json::to_string(&a).unwrap().contains("secret"));
    }

    #[test]
    fn each_difference_is_named() {
        let a = config_of(&spec(), "sha256:0123456789abcdef", &["JUPYTER_TOKEN"]);
        let mut other = spec();
        other.ports = vec![(8888, 9001)];
        other.env.insert("OMP_NUM_THREADS".into(), "4".into());
        other.env.insert("EXTRA".into(), "x".into());
        other.gpus = Some(1);
        let b = config_of(&other, "sha256:fedcba9876543210", &["JUPYTER_TOKEN"]);
        assert_eq!(
            differences(&a, &b),
            vec![
                "environment variable EXTRA added",
                "environment variable OMP_NUM_THREADS changed",
                "gpu: none → 1",
                "image: ferry/p-env:abc (0123456789ab) → ferry/p-env:abc (fedcba987654)",
                "port: 9000 → 9001",
            ]
        );
    }
}

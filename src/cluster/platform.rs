//! Which platforms a cluster environment's images are built for, and the check that the cluster
//! can run them: by default the architecture of the schedulable nodes, read when ferry
//! connects; `environment.platform(s)` in the spec overrides it, and is refused before anything
//! is built or applied when no schedulable node has its architecture. The pods then carry the
//! architecture as a node selector, so in a cluster of mixed nodes they go only where the image
//! runs.

use std::collections::BTreeMap;

use kube::Client;

use super::ClusterError;
use crate::kube::KubeError;
use crate::kube::nodes::{self, NodeArch};
use crate::platform::{Arch, Platform};
use crate::spec::Project;
use crate::ui::Ui;

/// How many node names an error lists per architecture.
const NAMES_LISTED: usize = 4;

/// The platforms chosen for an environment and where its pods may go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chosen {
    /// What the images are built for (one image, or one image index of several).
    pub platforms: Vec<Platform>,
    /// The architectures the pods are pinned to: those of `platforms` that schedulable nodes
    /// have (all of them when the nodes could not be read).
    pub run_on: Vec<Arch>,
    /// Why these, for the progress line: "the nodes' architecture (3 schedulable nodes)".
    pub why: String,
    /// Set when the nodes were not read or listed none: what could not be checked.
    pub unchecked: Option<String>,
}

/// The platform problems found before anything is built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformMismatch {
    #[error(
        "the images of {env} are for {}, but no schedulable node of its cluster runs {}: {}\n  hint: {}",
        list(wanted),
        arch_words(wanted),
        nodes,
        hint
    )]
    NoNode {
        env: String,
        wanted: Vec<Platform>,
        /// The schedulable nodes by architecture, as words.
        nodes: String,
        hint: String,
    },
    #[error(
        "training and the notebook of {env} run the project image, which this machine's Docker engine builds for its own platform, {engine}; the spec asks for {}\n  hint: run ferry with an engine of that platform (on such a machine, or with DOCKER_HOST pointing at one), or leave `platform:` out for {env}",
        list(wanted)
    )]
    EngineCannotBuild {
        env: String,
        wanted: Vec<Platform>,
        engine: Platform,
    },
    #[error(
        "no schedulable node of {env}'s cluster runs an architecture ferry builds images for: {nodes}\n  hint: ferry builds for linux/amd64 and linux/arm64; add nodes of one of them, or set `platform:` in ferry.yaml if the nodes' labels are wrong"
    )]
    NoSupportedNode { env: String, nodes: String },
}

fn list(platforms: &[Platform]) -> String {
    platforms
        .iter()
        .map(Platform::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn arch_words(platforms: &[Platform]) -> String {
    let names: Vec<&str> = platforms.iter().map(|p| p.arch.go_name()).collect();
    match names.as_slice() {
        [one] => one.to_string(),
        more => format!("any of {}", more.join(", ")),
    }
}

/// The schedulable nodes grouped by architecture, as an error names them:
/// `arm64 (node-a, node-b); s390x (node-c)`; cordoned or not-ready nodes are counted apart.
pub fn describe_nodes(nodes: &[NodeArch]) -> String {
    let mut by_arch: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut unschedulable = 0;
    for n in nodes {
        if !n.schedulable {
            unschedulable += 1;
            continue;
        }
        by_arch
            .entry(
                n.arch
                    .clone()
                    .unwrap_or_else(|| "no architecture label".into()),
            )
            .or_default()
            .push(&n.name);
    }
    let mut parts: Vec<String> = by_arch
        .iter()
        .map(|(arch, names)| {
            let shown: Vec<&str> = names.iter().take(NAMES_LISTED).copied().collect();
            let more = names.len().saturating_sub(NAMES_LISTED);
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!("{arch} ({}{tail})", shown.join(", "))
        })
        .collect();
    if parts.is_empty() {
        parts.push("there are none".into());
    }
    let mut text = format!("its schedulable nodes are {}", parts.join("; "));
    if unschedulable > 0 {
        text.push_str(&format!(" ({unschedulable} more cordoned or not ready)"));
    }
    text
}

/// The platforms for `env`: `requested` (the spec's, possibly empty) checked against `nodes`
/// (`None`: they could not be read, with why), else the nodes' own architecture, preferring
/// `host`'s when the cluster mixes architectures (an image for this machine's CPU needs no
/// server binary of another platform).
pub fn choose(
    env: &str,
    requested: &[Platform],
    nodes: Result<&[NodeArch], String>,
    host: Option<Platform>,
) -> Result<Chosen, PlatformMismatch> {
    let nodes = match nodes {
        Ok(n) if n.iter().any(|n| n.schedulable) => n,
        Ok(_) => {
            return Ok(unchecked(
                requested,
                host,
                "the cluster lists no schedulable node (one may be added when the pods ask for it)"
                    .into(),
            ));
        }
        Err(why) => return Ok(unchecked(requested, host, why)),
    };
    // Schedulable nodes per architecture ferry builds for; others only show up in messages.
    let mut counts: BTreeMap<Arch, usize> = BTreeMap::new();
    for n in nodes.iter().filter(|n| n.schedulable) {
        if let Some(a) = n.arch.as_deref().and_then(Arch::parse) {
            *counts.entry(a).or_default() += 1;
        }
    }
    if !requested.is_empty() {
        let run_on: Vec<Arch> = requested
            .iter()
            .map(|p| p.arch)
            .filter(|a| counts.contains_key(a))
            .collect();
        if run_on.is_empty() {
            let hint = match counts.keys().next() {
                Some(a) => format!(
                    "build for the nodes' architecture: set `platform: linux/{a}` (or leave `platform:` out and ferry takes the nodes'), or add nodes that run {}",
                    arch_words(requested)
                ),
                None => format!("add nodes that run {}", arch_words(requested)),
            };
            return Err(PlatformMismatch::NoNode {
                env: env.to_string(),
                wanted: requested.to_vec(),
                nodes: describe_nodes(nodes),
                hint,
            });
        }
        return Ok(Chosen {
            platforms: requested.to_vec(),
            run_on,
            why: "the spec's `platform`".into(),
            unchecked: None,
        });
    }
    let chosen = match host.filter(|h| counts.contains_key(&h.arch)) {
        Some(h) => h.arch,
        // The architecture most nodes have; ties go to the first in `Arch` order.
        None => match counts.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))) {
            Some((a, _)) => *a,
            None => {
                return Err(PlatformMismatch::NoSupportedNode {
                    env: env.to_string(),
                    nodes: describe_nodes(nodes),
                });
            }
        },
    };
    let n = counts.get(&chosen).copied().unwrap_or(0);
    let others: usize = counts.values().sum::<usize>() - n;
    let why = if others == 0 && counts.len() == 1 {
        format!(
            "the nodes' architecture ({n} schedulable node{})",
            plural(n)
        )
    } else {
        format!(
            "{n} of the schedulable nodes run it; the pods go only to those (set `platforms:` to build for the others too)"
        )
    };
    Ok(Chosen {
        platforms: vec![Platform::linux(chosen)],
        run_on: vec![chosen],
        why,
        unchecked: None,
    })
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The choice when the nodes say nothing: the spec's platforms, else this machine's.
fn unchecked(requested: &[Platform], host: Option<Platform>, why: String) -> Chosen {
    let platforms = if requested.is_empty() {
        host.into_iter().collect()
    } else {
        requested.to_vec()
    };
    Chosen {
        run_on: platforms.iter().map(|p| p.arch).collect(),
        why: if requested.is_empty() {
            "this machine's platform".into()
        } else {
            "the spec's `platform`".into()
        },
        platforms,
        unchecked: Some(why),
    }
}

/// Reads the cluster's nodes and chooses the platforms of `project`'s environment, saying which
/// and why. Nodes that cannot be listed (RBAC often keeps namespaced users from it) are a
/// warning, not a failure: the spec's platform, else this machine's, is used unchecked.
pub async fn for_environment(
    project: &Project,
    env: &str,
    client: &Client,
    ui: &Ui,
) -> Result<Chosen, ClusterError> {
    let requested = project.spec.environment.requested_platforms();
    let listed = read_nodes(client).await?;
    let chosen = choose(env, &requested, nodes_or_why(&listed), Platform::host())?;
    report(&chosen, ui);
    Ok(chosen)
}

/// The platform of the project image training and the notebook run in a cluster: the local
/// engine builds it for its own platform only, so that must be one the spec allows and the
/// schedulable nodes run.
pub async fn for_project_image(
    project: &Project,
    env: &str,
    client: &Client,
    engine: Platform,
    ui: &Ui,
) -> Result<Chosen, ClusterError> {
    let requested = project.spec.environment.requested_platforms();
    if !requested.is_empty() && !requested.contains(&engine) {
        return Err(PlatformMismatch::EngineCannotBuild {
            env: env.to_string(),
            wanted: requested,
            engine,
        }
        .into());
    }
    let listed = read_nodes(client).await?;
    let mut chosen = choose(env, &[engine], nodes_or_why(&listed), Some(engine))?;
    if chosen.unchecked.is_none() {
        chosen.why = "the Docker engine's platform, which the project image is built for".into();
    }
    report(&chosen, ui);
    Ok(chosen)
}

/// The cluster's nodes, or why they could not be read. RBAC often keeps namespaced users from
/// listing nodes: that leaves the platform unchecked rather than failing the command.
async fn read_nodes(client: &Client) -> Result<Result<Vec<NodeArch>, String>, ClusterError> {
    match nodes::list(client).await {
        Ok(n) => Ok(Ok(n)),
        Err(e @ (KubeError::Forbidden { .. } | KubeError::Api { .. })) => Ok(Err(format!(
            "the cluster's nodes cannot be read ({})",
            first_line(&e)
        ))),
        Err(e) => Err(e.into()),
    }
}

fn nodes_or_why(listed: &Result<Vec<NodeArch>, String>) -> Result<&[NodeArch], String> {
    match listed {
        Ok(n) => Ok(n.as_slice()),
        Err(why) => Err(why.clone()),
    }
}

/// The choice for an environment whose cluster could not be reached (`render` without a
/// cluster): the spec's platforms, else this machine's, unchecked, with why.
pub fn without_cluster(project: &Project, why: &KubeError, ui: &Ui) -> Chosen {
    let requested = project.spec.environment.requested_platforms();
    let chosen = unchecked(
        &requested,
        Platform::host(),
        format!("the cluster cannot be reached ({})", first_line(why)),
    );
    report(&chosen, ui);
    chosen
}

fn report(chosen: &Chosen, ui: &Ui) {
    let platforms = list(&chosen.platforms);
    match &chosen.unchecked {
        None => ui.info(format!("platform {platforms}: {}", chosen.why)),
        Some(why) => ui.warn(format!(
            "{why}: building for {platforms} ({}) without checking that a node runs it",
            chosen.why
        )),
    }
}

fn first_line(e: &KubeError) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, arch: &str, schedulable: bool) -> NodeArch {
        NodeArch {
            name: name.into(),
            arch: Some(arch.into()),
            schedulable,
        }
    }

    const AMD: Platform = Platform::LINUX_AMD64;
    const ARM: Platform = Platform::LINUX_ARM64;

    #[test]
    fn without_a_spec_platform_the_nodes_decide() {
        let nodes = [node("a", "arm64", true), node("b", "arm64", true)];
        let c = choose("prod", &[], Ok(&nodes), Some(AMD)).unwrap();
        assert_eq!(c.platforms, vec![ARM]);
        assert_eq!(c.run_on, vec![Arch::Arm64]);
        assert!(c.why.contains("2 schedulable nodes"), "{}", c.why);
        assert_eq!(c.unchecked, None);
    }

    #[test]
    fn a_mixed_cluster_takes_this_machines_architecture_and_pins_the_pods() {
        let nodes = [
            node("a", "arm64", true),
            node("b", "arm64", true),
            node("c", "amd64", true),
        ];
        let c = choose("prod", &[], Ok(&nodes), Some(AMD)).unwrap();
        assert_eq!(c.platforms, vec![AMD]);
        assert_eq!(c.run_on, vec![Arch::Amd64]);
        assert!(c.why.contains("1 of the schedulable nodes"), "{}", c.why);
        // From a machine of neither architecture: the one most nodes have.
        let c = choose("prod", &[], Ok(&nodes), None).unwrap();
        assert_eq!(c.platforms, vec![ARM]);
    }

    #[test]
    fn a_spec_platform_no_node_runs_is_refused_naming_the_nodes() {
        let nodes = [
            node("arm-1", "arm64", true),
            node("arm-2", "arm64", true),
            node("x86-1", "amd64", false),
        ];
        let e = choose("prod", &[AMD], Ok(&nodes), Some(AMD)).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("images of prod are for linux/amd64"),
            "{text}"
        );
        assert!(text.contains("no schedulable node"), "{text}");
        assert!(text.contains("arm64 (arm-1, arm-2)"), "{text}");
        assert!(text.contains("1 more cordoned or not ready"), "{text}");
        assert!(text.contains("platform: linux/arm64"), "{text}");
    }

    #[test]
    fn several_platforms_run_where_some_node_runs_one_of_them() {
        let nodes = [node("a", "amd64", true)];
        let c = choose("prod", &[AMD, ARM], Ok(&nodes), Some(AMD)).unwrap();
        assert_eq!(c.platforms, vec![AMD, ARM]);
        assert_eq!(c.run_on, vec![Arch::Amd64]);
        let e = choose("prod", &[ARM], Ok(&nodes), Some(AMD)).unwrap_err();
        assert!(e.to_string().contains("amd64 (a)"), "{e}");
    }

    #[test]
    fn nodes_of_no_known_architecture_are_refused() {
        let nodes = [node("z", "s390x", true)];
        let e = choose("prod", &[], Ok(&nodes), Some(AMD)).unwrap_err();
        assert!(e.to_string().contains("s390x (z)"), "{e}");
    }

    #[test]
    fn unread_or_empty_nodes_leave_the_choice_unchecked() {
        let c = choose("prod", &[], Err("forbidden".into()), Some(AMD)).unwrap();
        assert_eq!(c.platforms, vec![AMD]);
        assert_eq!(c.unchecked.as_deref(), Some("forbidden"));
        let c = choose("prod", &[ARM], Ok(&[]), Some(AMD)).unwrap();
        assert_eq!(c.platforms, vec![ARM]);
        assert_eq!(c.run_on, vec![Arch::Arm64]);
        assert!(c.unchecked.is_some());
    }

    #[test]
    fn long_node_lists_are_cut() {
        let nodes: Vec<NodeArch> = (0..7)
            .map(|i| node(&format!("n{i}"), "amd64", true))
            .collect();
        let text = describe_nodes(&nodes);
        assert!(text.contains("amd64 (n0, n1, n2, n3 and 3 more)"), "{text}");
    }
}

//! Reaching the cluster: the user's kubeconfig (or the pod's service account when ferry runs
//! inside a cluster), one context, and a first request that proves the API server answers, so a
//! wrong context or a dead VPN is reported before any planning output scrolls past.
//!
//! Also the one place where API errors become `KubeError`s: every call names what it was doing
//! (verb, resource, namespace), which is what a user needs to fix RBAC or credentials.

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::KubeError;

/// How long to wait for a TCP (and TLS) connection to the API server. kube's default of 30s
/// makes a typo in a server address feel like a hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the first request may take before the server counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// A client for the named context of the user's kubeconfig (`KUBECONFIG`, else
/// `~/.kube/config`), or its current context; inside a pod without a kubeconfig, the pod's
/// service account. The API server has answered once when this returns.
pub async fn connect(context: Option<&str>) -> Result<Client, KubeError> {
    match locate()? {
        Located::Files(paths) => {
            let origin = describe(&paths);
            let mut merged: Option<Kubeconfig> = None;
            for p in &paths {
                let kc = Kubeconfig::read_from(p).map_err(|e| KubeError::Kubeconfig {
                    path: p.display().to_string(),
                    message: error_chain(&e),
                })?;
                merged = Some(match merged {
                    None => kc,
                    Some(m) => m.merge(kc).map_err(|e| KubeError::Kubeconfig {
                        path: origin.clone(),
                        message: error_chain(&e),
                    })?,
                });
            }
            connect_kubeconfig(merged.unwrap_or_default(), &origin, context).await
        }
        Located::InCluster => {
            if let Some(c) = context {
                return Err(KubeError::UnknownContext {
                    context: c.to_string(),
                    origin: "the pod's service account (no kubeconfig)".into(),
                    available: Vec::new(),
                    suggestion: None,
                });
            }
            let mut config = Config::incluster().map_err(|e| KubeError::Kubeconfig {
                path: "in-cluster service account".into(),
                message: error_chain(&e),
            })?;
            config.connect_timeout = Some(CONNECT_TIMEOUT);
            let server = config.cluster_url.to_string();
            finish(config, server, "in-cluster".into()).await
        }
    }
}

/// A client for a context of the kubeconfig at `path` (its current context when `None`),
/// whatever `KUBECONFIG` says: for callers (and tests) that hold a kubeconfig of their own.
pub async fn connect_with(path: &Path, context: Option<&str>) -> Result<Client, KubeError> {
    let kc = Kubeconfig::read_from(path).map_err(|e| match &e {
        kube::config::KubeconfigError::ReadConfig(io, _)
            if io.kind() == std::io::ErrorKind::NotFound =>
        {
            KubeError::NoKubeconfig {
                looked: path.display().to_string(),
            }
        }
        _ => KubeError::Kubeconfig {
            path: path.display().to_string(),
            message: error_chain(&e),
        },
    })?;
    connect_kubeconfig(kc, &path.display().to_string(), context).await
}

#[derive(Debug, PartialEq, Eq)]
enum Located {
    Files(Vec<PathBuf>),
    InCluster,
}

/// Where the kubeconfig is, as kubectl finds it: every existing file `KUBECONFIG` lists (merged,
/// first wins), else `~/.kube/config`; with neither, in-cluster credentials if this is a pod.
fn locate() -> Result<Located, KubeError> {
    locate_from(
        std::env::var_os("KUBECONFIG"),
        dirs::home_dir(),
        std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
    )
}

fn locate_from(
    kubeconfig: Option<std::ffi::OsString>,
    home: Option<PathBuf>,
    in_cluster: bool,
) -> Result<Located, KubeError> {
    let mut looked = Vec::new();
    if let Some(value) = kubeconfig.filter(|v| !v.is_empty()) {
        let listed: Vec<PathBuf> = std::env::split_paths(&value)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        let existing: Vec<PathBuf> = listed.iter().filter(|p| p.exists()).cloned().collect();
        if !existing.is_empty() {
            return Ok(Located::Files(existing));
        }
        looked.push(format!("KUBECONFIG={}", describe(&listed)));
    } else if let Some(home) = home {
        let default = home.join(".kube").join("config");
        if default.exists() {
            return Ok(Located::Files(vec![default]));
        }
        looked.push(default.display().to_string());
    }
    if in_cluster {
        return Ok(Located::InCluster);
    }
    Err(KubeError::NoKubeconfig {
        looked: looked.join(", "),
    })
}

fn describe(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

async fn connect_kubeconfig(
    kc: Kubeconfig,
    origin: &str,
    context: Option<&str>,
) -> Result<Client, KubeError> {
    let available: Vec<String> = kc.contexts.iter().map(|c| c.name.clone()).collect();
    let name = match context {
        Some(c) => c.to_string(),
        None => match kc.current_context.clone().filter(|c| !c.is_empty()) {
            Some(c) => c,
            None => {
                return Err(KubeError::NoCurrentContext {
                    origin: origin.to_string(),
                    available,
                });
            }
        },
    };
    if !available.contains(&name) {
        let suggestion = did_you_mean(&name, &available);
        return Err(KubeError::UnknownContext {
            context: name,
            origin: origin.to_string(),
            available,
            suggestion,
        });
    }
    let options = KubeConfigOptions {
        context: Some(name.clone()),
        ..Default::default()
    };
    let mut config = Config::from_custom_kubeconfig(kc, &options)
        .await
        .map_err(|e| KubeError::Kubeconfig {
            path: origin.to_string(),
            message: format!("context {name}: {}", error_chain(&e)),
        })?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    let server = config.cluster_url.to_string();
    finish(config, server, name).await
}

/// Builds the client and makes one cheap request (`GET /version`), so that "unreachable" and
/// "credentials rejected" surface here, named after the server and context.
async fn finish(config: Config, server: String, context: String) -> Result<Client, KubeError> {
    let client = Client::try_from(config).map_err(|e| KubeError::Kubeconfig {
        path: format!("context {context}"),
        message: error_chain(&e),
    })?;
    let probe = tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version()).await;
    match probe {
        Err(_) => Err(KubeError::Unreachable {
            server,
            context,
            cause: format!("no answer within {}s", PROBE_TIMEOUT.as_secs()),
        }),
        Ok(Ok(_)) => Ok(client),
        Ok(Err(kube::Error::Api(s))) if s.code == 401 => Err(KubeError::Unauthorized {
            action: format!("read the version of the API server {server} (context {context})"),
        }),
        // A server that answers with anything but 401 is reachable; what it thinks of this
        // user shows on the first real request, with the verb and resource named.
        Ok(Err(kube::Error::Api(_))) => Ok(client),
        Ok(Err(kube::Error::Auth(e))) => Err(KubeError::Credentials {
            context: Some(context),
            message: error_chain(&e),
        }),
        Ok(Err(e)) => Err(KubeError::Unreachable {
            server,
            context,
            cause: error_chain(&e),
        }),
    }
}

fn did_you_mean(word: &str, candidates: &[String]) -> Option<String> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.clone())
}

/// An error and its sources on one line, without the repetition of wrappers that print their
/// source inside their own message.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    // kube names its variants in front of the cause; they mean nothing to a user.
    for prefix in ["ServiceError: ", "HyperError: "] {
        if let Some(rest) = out.strip_prefix(prefix) {
            out = rest.to_string();
        }
    }
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = s.source();
    }
    out
}

/// Whether a request failed for want of a connection rather than with an answer.
fn is_connection_error(e: &kube::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            if matches!(
                io.kind(),
                K::ConnectionRefused
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::NotConnected
                    | K::BrokenPipe
                    | K::TimedOut
                    | K::UnexpectedEof
                    | K::HostUnreachable
                    | K::NetworkUnreachable
            ) {
                return true;
            }
        }
        src = s.source();
    }
    matches!(e, kube::Error::HyperError(_) | kube::Error::Service(_))
}

/// What a request was doing, for its error: `get deployments.apps churn in namespace prod`.
#[derive(Clone, Debug)]
pub(crate) struct Op {
    pub verb: &'static str,
    /// Plural and group, as RBAC and `kubectl auth can-i` name it: `deployments.apps`.
    pub resource: String,
    pub name: Option<String>,
    pub namespace: Option<String>,
}

impl Op {
    pub fn new(verb: &'static str, resource: impl Into<String>) -> Op {
        Op {
            verb,
            resource: resource.into(),
            name: None,
            namespace: None,
        }
    }

    pub fn name(mut self, name: impl Into<String>) -> Op {
        self.name = Some(name.into());
        self
    }

    pub fn namespace(mut self, ns: impl Into<String>) -> Op {
        self.namespace = Some(ns.into());
        self
    }

    pub fn describe(&self) -> String {
        let mut s = format!("{} {}", self.verb, self.resource);
        if let Some(n) = &self.name {
            s.push(' ');
            s.push_str(n);
        }
        if let Some(ns) = &self.namespace {
            s.push_str(" in namespace ");
            s.push_str(ns);
        }
        s
    }

    /// The error for `e`, which happened doing this.
    pub fn error(&self, e: kube::Error) -> KubeError {
        match e {
            kube::Error::Api(s) if s.code == 401 => KubeError::Unauthorized {
                action: self.describe(),
            },
            kube::Error::Api(s) if s.code == 403 => KubeError::Forbidden {
                verb: self.verb.to_string(),
                resource: self.resource.clone(),
                namespace: self.namespace.clone(),
                message: s.message.clone(),
            },
            kube::Error::Api(s) => KubeError::Api {
                action: self.describe(),
                code: s.code,
                message: if s.message.is_empty() {
                    s.reason.clone()
                } else {
                    s.message.clone()
                },
            },
            kube::Error::Auth(a) => KubeError::Credentials {
                context: None,
                message: error_chain(&a),
            },
            e if is_connection_error(&e) => KubeError::Disconnected {
                action: self.describe(),
                cause: error_chain(&e),
            },
            e => KubeError::Request {
                action: self.describe(),
                cause: error_chain(&e),
            },
        }
    }
}

/// The plural.group name RBAC uses for a resource.
pub(crate) fn rbac_name(ar: &kube::core::ApiResource) -> String {
    if ar.group.is_empty() {
        ar.plural.clone()
    } else {
        format!("{}.{}", ar.plural, ar.group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_in_a_context_finds_the_real_one() {
        let names = vec!["kind-ferry".to_string(), "gke_prod_europe".to_string()];
        assert_eq!(
            did_you_mean("kind-fery", &names).as_deref(),
            Some("kind-ferry")
        );
        assert_eq!(did_you_mean("minikube", &names), None);
    }

    #[test]
    fn the_kubeconfig_is_found_where_kubectl_finds_it() {
        let home = tempfile::tempdir().unwrap();
        let default = home.path().join(".kube/config");
        let other = home.path().join("other");
        let missing = home.path().join("missing");
        std::fs::write(&other, "").unwrap();
        let list = |paths: &[&Path]| Some(std::env::join_paths(paths).unwrap());

        // KUBECONFIG wins, its missing files skipped; ~/.kube/config is not looked at then.
        assert_eq!(
            locate_from(list(&[&missing, &other]), Some(home.path().into()), false).unwrap(),
            Located::Files(vec![other.clone()])
        );
        let err = locate_from(list(&[&missing]), Some(home.path().into()), false).unwrap_err();
        assert!(err.to_string().contains("KUBECONFIG="), "{err}");
        // No KUBECONFIG: the default file, else a pod's service account, else an error.
        assert_eq!(
            locate_from(None, Some(home.path().into()), true).unwrap(),
            Located::InCluster
        );
        let err = locate_from(None, Some(home.path().into()), false).unwrap_err();
        assert!(err.to_string().contains(".kube/config"), "{err}");
        std::fs::create_dir_all(default.parent().unwrap()).unwrap();
        std::fs::write(&default, "").unwrap();
        assert_eq!(
            locate_from(Some("".into()), Some(home.path().into()), true).unwrap(),
            Located::Files(vec![default])
        );
    }

    #[test]
    fn operations_read_like_rbac_rules() {
        let op = Op::new("patch", "deployments.apps")
            .name("churn")
            .namespace("prod");
        assert_eq!(
            op.describe(),
            "patch deployments.apps churn in namespace prod"
        );
        let status = kube::core::Status::failure(
            "deployments.apps \"churn\" is forbidden: User \"dev\" cannot patch resource",
            "Forbidden",
        )
        .with_code(403);
        let err = op.error(kube::Error::Api(status.boxed()));
        let text = err.to_string();
        assert!(text.contains("patch deployments.apps"), "{text}");
        assert!(text.contains("namespace prod"), "{text}");
        assert!(
            text.contains("kubectl auth can-i patch deployments.apps -n prod"),
            "{text}"
        );
    }
}

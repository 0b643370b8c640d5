//! The cluster's nodes as the image's platform sees them: each node's CPU architecture and
//! whether new pods may be scheduled on it. What the cluster layer picks and checks an image's
//! platform against.

use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, ListParams};

use super::KubeError;
use super::client::Op;

/// The well-known label every kubelet sets to its Go architecture name.
pub const ARCH_LABEL: &str = "kubernetes.io/arch";
/// The label clusters older than 1.14 set, still seen on long-lived nodes.
const BETA_ARCH_LABEL: &str = "beta.kubernetes.io/arch";

/// One node, as far as placing an image on it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeArch {
    pub name: String,
    /// The Go architecture name (`amd64`, `arm64`, …) from the node's labels, else from what
    /// its kubelet reports; `None` when the node says neither.
    pub arch: Option<String>,
    /// False for a cordoned node (`spec.unschedulable`) and for one whose `Ready` condition is
    /// not `True`: nothing new starts there.
    pub schedulable: bool,
}

/// Every node of the cluster, in the order the API server lists them.
pub async fn list(client: &Client) -> Result<Vec<NodeArch>, KubeError> {
    let api: Api<Node> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| Op::new("list", "nodes").error(e))?;
    Ok(list.items.iter().map(node_arch).collect())
}

/// What one node object says about its architecture and schedulability.
pub fn node_arch(node: &Node) -> NodeArch {
    let labels = node.metadata.labels.as_ref();
    let label = |k: &str| labels.and_then(|l| l.get(k)).cloned();
    let arch = label(ARCH_LABEL)
        .or_else(|| label(BETA_ARCH_LABEL))
        .or_else(|| {
            node.status
                .as_ref()
                .and_then(|s| s.node_info.as_ref())
                .map(|i| i.architecture.clone())
        });
    let cordoned = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    // A node without conditions (a fresh object, or a minimal test double) is taken as ready:
    // only a condition that says otherwise rules it out.
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_none_or(|c| c.status == "True");
    NodeArch {
        name: node.metadata.name.clone().unwrap_or_default(),
        arch: arch.filter(|a| !a.is_empty()),
        schedulable: !cordoned && ready,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_label_names_the_architecture_and_the_kubelet_is_the_fallback() {
        let n = node(serde_json::json!({
            "metadata": {"name": "a", "labels": {"kubernetes.io/arch": "arm64"}},
            "status": {"nodeInfo": {"architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
                "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "", "machineID": "",
                "operatingSystem": "linux", "osImage": "", "systemUUID": ""}}
        }));
        assert_eq!(node_arch(&n).arch.as_deref(), Some("arm64"));
        let n = node(serde_json::json!({
            "metadata": {"name": "b", "labels": {"beta.kubernetes.io/arch": "amd64"}}
        }));
        assert_eq!(node_arch(&n).arch.as_deref(), Some("amd64"));
        let n = node(serde_json::json!({"metadata": {"name": "c"}}));
        assert_eq!(node_arch(&n).arch, None);
        assert!(node_arch(&n).schedulable);
    }

    #[test]
    fn cordoned_and_not_ready_nodes_take_no_new_pods() {
        let n = node(serde_json::json!({
            "metadata": {"name": "a", "labels": {"kubernetes.io/arch": "arm64"}},
            "spec": {"unschedulable": true}
        }));
        assert!(!node_arch(&n).schedulable);
        let n = node(serde_json::json!({
            "metadata": {"name": "b"},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}
        }));
        assert!(!node_arch(&n).schedulable);
        let n = node(serde_json::json!({
            "metadata": {"name": "c"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }));
        assert!(node_arch(&n).schedulable);
    }
}

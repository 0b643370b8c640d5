//! The model server's output in a cluster: every pod of the environment's Deployment, like
//! `ferry logs` shows a local container's.

use futures_util::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, LogParams};

use super::KubeError;
use super::client::Op;
use super::render::{LABEL_COMPONENT, LABEL_INSTANCE};

/// Hands over the last `tail` lines of every server pod, then, with `follow`, every new line
/// until the pods end or the caller stops. Lines come with their pod's name when there are
/// several pods, with "" when there is one. Returns how many pods there were.
pub async fn server_logs(
    client: &Client,
    namespace: &str,
    project: &str,
    follow: bool,
    tail: usize,
    mut on_line: impl FnMut(&str, &str),
) -> Result<usize, KubeError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("{LABEL_INSTANCE}={project},{LABEL_COMPONENT}=server");
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| Op::new("list", "pods").namespace(namespace).error(e))?;
    let names: Vec<String> = list
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let params = LogParams {
        container: Some("server".into()),
        tail_lines: Some(i64::try_from(tail).unwrap_or(i64::MAX)),
        follow,
        ..Default::default()
    };
    if !follow {
        for name in &names {
            let text = pods.logs(name, &params).await.map_err(|e| {
                Op::new("get", "pods/log")
                    .name(name.clone())
                    .namespace(namespace)
                    .error(e)
            })?;
            for line in text.lines() {
                on_line(label(name, names.len()), line);
            }
        }
        return Ok(names.len());
    }
    // Following: one stream per pod, lines interleaved as they come.
    let mut streams = Vec::new();
    for name in &names {
        let stream = pods.log_stream(name, &params).await.map_err(|e| {
            Op::new("get", "pods/log")
                .name(name.clone())
                .namespace(namespace)
                .error(e)
        })?;
        let pod = label(name, names.len()).to_string();
        streams.push(stream.lines().map_ok(move |l| (pod.clone(), l)).boxed());
    }
    let mut all = futures_util::stream::select_all(streams);
    while let Some(item) = all.next().await {
        match item {
            Ok((pod, line)) => on_line(&pod, &line),
            // A pod that goes away ends its stream; the others go on.
            Err(_) => continue,
        }
    }
    Ok(names.len())
}

fn label(pod: &str, pods: usize) -> &str {
    if pods > 1 { pod } else { "" }
}

//! The node's own labels as its Node object has them now — kubelet's node lister —
//! kept by a watch of that one object (field selector `metadata.name`). Admission
//! (nodeSelector, node affinity) and the volume manager (a PV's node affinity) read
//! them: a label set after registration, such as the topology a CSI driver reports
//! or an admin's `kubectl label node`, counts from the moment the apiserver has it.
//! Until the first list, and while the watch fails, the last labels known stay (at
//! first the ones kernlet registers with).

use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::client::SharedClient;
use crate::model::admission::NodeLabels;

/// Keeps `labels` equal to node `node`'s labels until `stop`.
pub async fn keep(
    client: SharedClient,
    node: String,
    labels: NodeLabels,
    mut stop: watch::Receiver<bool>,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let start = || watcher(Api::<Node>::all(client.get()), config.clone()).boxed();
    let mut stream = start();
    let mut rotations = client.rotations();
    let mut backoff = Duration::from_millis(200);
    loop {
        let event = tokio::select! {
            _ = stop.changed() => return,
            _ = rotations.changed() => {
                stream = start();
                continue;
            }
            e = stream.next() => e,
        };
        match event {
            Some(Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n))) => {
                let now = n.metadata.labels.unwrap_or_default();
                if labels.get() != now {
                    tracing::debug!(?now, "the node's labels");
                    labels.set(now);
                }
                backoff = Duration::from_millis(200);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::warn!("watching node {node}: {e}; retrying in {backoff:?}");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            None => stream = start(),
        }
    }
}

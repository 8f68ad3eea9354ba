//! The node's graceful shutdown, started by SIGTERM with `--shutdown-on-sigterm`: the
//! node turns NotReady ("node is shutting down") and refuses new pods, its pods end in
//! priority groups, and their terminal statuses reach the apiserver before kernlet
//! exits.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::model::node::Readiness;
use crate::model::shutdown::{Group, NOT_READY_MESSAGE};

/// How long the pods' last statuses are waited for once they ended.
const STATUS_WAIT: Duration = Duration::from_secs(10);

pub async fn shut_down(
    client: &crate::client::SharedClient,
    node: &str,
    side: crate::eviction::node::RealNode,
    groups: Vec<Group>,
    shutting_down: &crate::model::admission::ShuttingDown,
    readiness: &tokio::sync::watch::Sender<Readiness>,
) {
    let total: Duration = groups.iter().map(|g| g.grace).sum();
    tracing::info!(
        "SIGTERM: graceful node shutdown; ending the node's pods within {total:?} first"
    );
    shutting_down.set(true);
    readiness.send_replace(Readiness {
        ready: false,
        reason: "KubeletNotReady".into(),
        message: NOT_READY_MESSAGE.into(),
    });
    let ended = tokio::task::spawn_blocking(move || {
        crate::eviction::shutdown::shutdown_pods(&side, &groups)
    })
    .await
    .unwrap_or_default();
    // Their terminal statuses (and the node's NotReady) on their way: waited for, so a
    // machine that powers off next leaves them written.
    let pods: Api<Pod> = Api::all(client.get());
    let params = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let deadline = Instant::now() + STATUS_WAIT;
    while Instant::now() < deadline {
        let written = match pods.list(&params).await {
            Ok(list) => list.items.iter().all(|p| {
                !ended.contains(&p.metadata.uid.clone().unwrap_or_default())
                    || matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Failed" | "Succeeded")
                    )
            }),
            Err(e) => {
                tracing::warn!("reading the node's pods after the shutdown: {e}");
                false
            }
        };
        if written {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::info!(pods = ended.len(), "graceful node shutdown: pods ended");
}

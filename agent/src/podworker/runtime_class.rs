//! A pod's RuntimeClass, checked before its sandbox is made (kubelet checks it in
//! `createPodSandbox`): a class that does not exist, or whose handler this node does
//! not have, fails the sandbox with kubelet's `FailedCreatePodSandBox` event; the pod
//! stays Pending and is tried again every 10 s (kubelet's pod worker back-off), so a
//! class created later lets it start.

use super::*;

/// How long a pod whose sandbox was refused waits before the next try.
const SANDBOX_RETRY: Duration = Duration::from_secs(10);
/// How long the class's lookup may take when the cache does not know it yet.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

impl Runner {
    /// Whether the pod's RuntimeClass lets this node make its sandbox now; when not,
    /// says why as kubelet does.
    pub(super) fn runtime_class_allows(&mut self, pod: &Pod) -> bool {
        let Source::Api {
            client,
            handle,
            runtime_classes,
            ..
        } = &self.source
        else {
            // Without an apiserver there are no RuntimeClasses (kubelet standalone runs
            // every pod with the default handler).
            return true;
        };
        let class = pod
            .spec
            .as_ref()
            .and_then(|s| s.runtime_class_name.as_deref())
            .filter(|c| !c.is_empty());
        if class.is_none() {
            return true;
        }
        let now = Instant::now();
        if self.sandbox_retry_at.is_some_and(|t| now < t) {
            return false;
        }
        let handlers = &self.node_fit.runtime_handlers;
        let checked = handle.block_on(async {
            tokio::time::timeout(
                LOOKUP_TIMEOUT,
                crate::controllers::runtime_classes::check(
                    client,
                    runtime_classes,
                    handlers,
                    class,
                ),
            )
            .await
        });
        let why = match checked {
            Ok(Ok(())) => {
                self.sandbox_retry_at = None;
                return true;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!(
                "failed to lookup RuntimeClass {}: no answer from the apiserver within {LOOKUP_TIMEOUT:?}",
                class.unwrap_or_default()
            ),
        };
        tracing::warn!(pod = %format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or_default(), pod.metadata.name.as_deref().unwrap_or_default()),
            "cannot make the pod's sandbox: {why}");
        self.event(
            pod,
            "",
            true,
            "FailedCreatePodSandBox",
            format!("Failed to create pod sandbox: {why}"),
        );
        self.sandbox_retry_at = Some(now + SANDBOX_RETRY);
        false
    }
}

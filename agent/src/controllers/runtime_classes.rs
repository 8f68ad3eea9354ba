//! RuntimeClasses (`node.k8s.io/v1`): a pod's `runtimeClassName` names one, whose
//! `handler` says which runtime runs the pod. kubelet resolves the name through a
//! watch of RuntimeClasses and fails the sandbox (event `FailedCreatePodSandBox`, the
//! pod stays Pending) when the class is missing or its handler is not one the node
//! has. kernlet has one runtime; it answers to the handler names configured with
//! `--runtime-handlers` and to the default (empty) handler.

use k8s_openapi::api::node::v1::RuntimeClass;
use kube::Api;
use tokio::sync::watch;

use super::watch_cache::{self, WatchCache};
use crate::client::SharedClient;

/// Why a pod's RuntimeClass cannot run it (kubelet's and containerd's words).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeClassError {
    #[error("runtimeclass.node.k8s.io \"{0}\" not found")]
    NotFound(String),
    #[error("failed to get sandbox runtime: no runtime for \"{0}\" is configured")]
    NoRuntime(String),
    #[error("failed to lookup RuntimeClass {name}: {source}")]
    Api { name: String, source: kube::Error },
}

/// The cluster's RuntimeClasses: name → handler.
#[derive(Clone, Default)]
pub struct RuntimeClasses(WatchCache<String>);

fn handler(rc: &RuntimeClass) -> Option<String> {
    Some(rc.handler.clone())
}

impl RuntimeClasses {
    /// The handler of class `name`: `Some(Ok)` or `Some(Err(NotFound))` once the watch
    /// has listed, `None` before.
    fn cached(&self, name: &str) -> Option<Result<String, RuntimeClassError>> {
        self.0.read(|all| {
            all.get(&(String::new(), name.to_string()))
                .cloned()
                .ok_or_else(|| RuntimeClassError::NotFound(name.to_string()))
        })
    }
}

/// Checks that this node can run a pod of class `class` (`None` or empty: the
/// default handler, always) with `handlers` configured; reads the class from the
/// cache, or from the apiserver while the cache does not know.
pub async fn check(
    client: &SharedClient,
    cache: &RuntimeClasses,
    handlers: &[String],
    class: Option<&str>,
) -> Result<(), RuntimeClassError> {
    let Some(name) = class.filter(|c| !c.is_empty()) else {
        return Ok(());
    };
    let handler = match cache.cached(name) {
        Some(found) => found?,
        None => Api::<RuntimeClass>::all(client.get())
            .get_opt(name)
            .await
            .map_err(|source| RuntimeClassError::Api {
                name: name.to_string(),
                source,
            })?
            .map(|rc| rc.handler)
            .ok_or_else(|| RuntimeClassError::NotFound(name.to_string()))?,
    };
    if handler.is_empty() || handlers.contains(&handler) {
        Ok(())
    } else {
        Err(RuntimeClassError::NoRuntime(handler))
    }
}

/// Keeps `cache` equal to the cluster's RuntimeClasses until `stop`.
pub async fn watch_runtime_classes(
    client: SharedClient,
    cache: RuntimeClasses,
    stop: watch::Receiver<bool>,
) {
    watch_cache::keep(
        client,
        Api::<RuntimeClass>::all,
        cache.0,
        handler,
        "RuntimeClasses",
        stop,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(classes: &[(&str, &str)]) -> RuntimeClasses {
        let c = RuntimeClasses::default();
        c.0.set(Some(
            classes
                .iter()
                .map(|(n, h)| ((String::new(), n.to_string()), h.to_string()))
                .collect(),
        ));
        c
    }

    #[tokio::test]
    async fn a_class_runs_when_its_handler_is_configured() {
        // Never reached: every answer comes from the cache.
        let client = crate::client::SharedClient::new(
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap()))
                .unwrap(),
        );
        let c = cache(&[("runc", "runc"), ("gvisor", "runsc"), ("plain", "")]);
        let handlers = vec!["runc".to_string()];
        for (class, ok) in [
            (None, true),
            (Some(""), true),
            (Some("runc"), true),
            (Some("plain"), true),
        ] {
            assert_eq!(
                check(&client, &c, &handlers, class).await.is_ok(),
                ok,
                "{class:?}"
            );
        }
        let e = check(&client, &c, &handlers, Some("gvisor"))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "failed to get sandbox runtime: no runtime for \"runsc\" is configured"
        );
        let e = check(&client, &c, &handlers, Some("missing"))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "runtimeclass.node.k8s.io \"missing\" not found"
        );
    }
}

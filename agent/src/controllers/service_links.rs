//! The Services that containers' service variables are made from (kubelet's service
//! lister): one watch of every Service of the cluster, kept as the few fields the
//! variables need, so a container start costs no apiserver request. Until the watch
//! has listed once (or while it fails), the pod manager lists the Services itself.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::client::SharedClient;
use crate::model::env::LinkedService;

/// Services by (namespace, name).
type ByName = BTreeMap<(String, String), LinkedService>;

/// The cluster's Services; `None` until the watch's first complete list.
#[derive(Clone, Default)]
pub struct ServiceLinks(Arc<RwLock<Option<ByName>>>);

impl ServiceLinks {
    /// The Services a container of namespace `ns` gets variables for: the apiserver's
    /// (`default/kubernetes`) always, and with service links every Service of `ns`
    /// (of `default` too when `ns` is `default`). `None` while the watch has not listed.
    pub fn of(&self, ns: &str, links: bool) -> Option<Vec<LinkedService>> {
        let guard = self.0.read().ok()?;
        let all = guard.as_ref()?;
        let mut out: Vec<LinkedService> = Vec::new();
        if links {
            out.extend(
                all.range((ns.to_string(), String::new())..)
                    .take_while(|((n, _), _)| n == ns)
                    .map(|(_, s)| s.clone()),
            );
        }
        if !(links && ns == "default")
            && let Some(k) = all.get(&("default".to_string(), "kubernetes".to_string()))
        {
            out.push(k.clone());
        }
        Some(out)
    }

    fn set(&self, all: Option<ByName>) {
        if let Ok(mut g) = self.0.write() {
            *g = all;
        }
    }

    fn apply(&self, s: &Service, present: bool) {
        let Some(key) = key(s) else { return };
        if let Ok(mut g) = self.0.write()
            && let Some(all) = g.as_mut()
        {
            match linked(s).filter(|_| present) {
                Some(l) => all.insert(key, l),
                None => all.remove(&key),
            };
        }
    }
}

fn key(s: &Service) -> Option<(String, String)> {
    Some((s.metadata.namespace.clone()?, s.metadata.name.clone()?))
}

/// What a Service's variables are made of; `None` for a Service without a cluster IP
/// (headless, ExternalName), which has none.
pub fn linked(s: &Service) -> Option<LinkedService> {
    let spec = s.spec.as_ref()?;
    let ip = spec
        .cluster_ip
        .clone()
        .filter(|ip| !ip.is_empty() && ip != "None")?;
    let ports = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port,
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            )
        })
        .collect();
    Some(LinkedService {
        name: s.metadata.name.clone()?,
        cluster_ip: ip,
        ports,
    })
}

/// Keeps `links` equal to the cluster's Services until `stop`. While the watch fails,
/// `links` says it does not know (the pod manager then lists for itself).
pub async fn watch_services(
    client: SharedClient,
    links: ServiceLinks,
    mut stop: watch::Receiver<bool>,
) {
    let mut stream = watcher(
        Api::<Service>::all(client.get()),
        watcher::Config::default(),
    )
    .boxed();
    let mut staging = ByName::new();
    let mut backoff = Duration::from_millis(200);
    loop {
        let event = tokio::select! {
            _ = stop.changed() => return,
            e = stream.next() => e,
        };
        match event {
            Some(Ok(watcher::Event::Init)) => staging.clear(),
            Some(Ok(watcher::Event::InitApply(s))) => {
                if let (Some(k), Some(l)) = (key(&s), linked(&s)) {
                    staging.insert(k, l);
                }
            }
            Some(Ok(watcher::Event::InitDone)) => {
                links.set(Some(std::mem::take(&mut staging)));
                backoff = Duration::from_millis(200);
            }
            Some(Ok(watcher::Event::Apply(s))) => links.apply(&s, true),
            Some(Ok(watcher::Event::Delete(s))) => links.apply(&s, false),
            Some(Err(e)) => {
                links.set(None);
                tracing::warn!(
                    "watching Services for containers' variables: {e}; retrying in {backoff:?}"
                );
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            None => {
                links.set(None);
                stream = watcher(
                    Api::<Service>::all(client.get()),
                    watcher::Config::default(),
                )
                .boxed();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ns: &str, name: &str, ip: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
        }))
        .unwrap()
    }

    fn names(v: Option<Vec<LinkedService>>) -> Option<Vec<String>> {
        v.map(|v| v.into_iter().map(|s| s.name).collect())
    }

    #[test]
    fn a_container_sees_its_namespace_and_the_apiserver() {
        let links = ServiceLinks::default();
        assert_eq!(links.of("a", true), None, "unknown before the first list");
        links.set(Some(BTreeMap::new()));
        for s in [
            svc("default", "kubernetes", "10.96.0.1"),
            svc("default", "web", "10.96.0.9"),
            svc("a", "db", "10.96.1.1"),
            svc("a", "headless", "None"),
            svc("ab", "other", "10.96.2.2"),
        ] {
            links.apply(&s, true);
        }
        assert_eq!(
            names(links.of("a", true)),
            Some(vec!["db".into(), "kubernetes".into()])
        );
        assert_eq!(names(links.of("a", false)), Some(vec!["kubernetes".into()]));
        assert_eq!(
            names(links.of("default", true)),
            Some(vec!["kubernetes".into(), "web".into()])
        );
        links.apply(&svc("a", "db", "10.96.1.1"), false);
        assert_eq!(names(links.of("a", true)), Some(vec!["kubernetes".into()]));
        // A Service that loses its cluster IP loses its variables.
        links.apply(&svc("default", "web", "None"), true);
        assert_eq!(
            names(links.of("default", true)),
            Some(vec!["kubernetes".into()])
        );
    }
}

//! The Services that containers' service variables are made from (kubelet's service
//! lister): one watch of every Service of the cluster, kept as the few fields the
//! variables need, so a container start costs no apiserver request. Until the watch
//! has listed once (or while it fails), the pod manager lists the Services itself.

use k8s_openapi::api::core::v1::Service;
use kube::Api;
use tokio::sync::watch;

use super::watch_cache::{self, WatchCache};
use crate::client::SharedClient;
use crate::model::env::LinkedService;

/// The cluster's Services, as their variables need them.
#[derive(Clone, Default)]
pub struct ServiceLinks(WatchCache<LinkedService>);

impl ServiceLinks {
    /// The Services a container of namespace `ns` gets variables for: the apiserver's
    /// (`default/kubernetes`) always, and with service links every Service of `ns`
    /// (of `default` too when `ns` is `default`). `None` while the watch has not listed.
    pub fn of(&self, ns: &str, links: bool) -> Option<Vec<LinkedService>> {
        self.0.read(|all| {
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
            out
        })
    }
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

/// Keeps `links` equal to the cluster's Services until `stop`.
pub async fn watch_services(
    client: SharedClient,
    links: ServiceLinks,
    stop: watch::Receiver<bool>,
) {
    watch_cache::keep(
        client,
        Api::<Service>::all,
        links.0,
        linked,
        "Services (for containers' variables)",
        stop,
    )
    .await;
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
        links.0.set(Some(Default::default()));
        let apply = |s: &Service, present: bool| {
            links
                .0
                .put(watch_cache::key(s).unwrap(), linked(s).filter(|_| present));
        };
        for s in [
            svc("default", "kubernetes", "10.96.0.1"),
            svc("default", "web", "10.96.0.9"),
            svc("a", "db", "10.96.1.1"),
            svc("a", "headless", "None"),
            svc("ab", "other", "10.96.2.2"),
        ] {
            apply(&s, true);
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
        apply(&svc("a", "db", "10.96.1.1"), false);
        assert_eq!(names(links.of("a", true)), Some(vec!["kubernetes".into()]));
        // A Service that loses its cluster IP loses its variables.
        apply(&svc("default", "web", "None"), true);
        assert_eq!(
            names(links.of("default", true)),
            Some(vec!["kubernetes".into()])
        );
    }
}

//! The Service proxy's view of the cluster kept per Service: each Service's frontends,
//! the EndpointSlices that feed it, which UDP backends are in use and which Services
//! have health-check ports — so a change to one Service or slice is recomputed and
//! written alone, at a cost that follows the change, not the number of Services.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kernlet_ebpf_common::ServiceKey;

use crate::model::services::{Frontend, backend_addr, desired, use_maglev};

/// Where the frontends are computed for.
#[derive(Clone, Copy, Debug)]
pub struct Placement<'a> {
    pub node: &'a str,
    pub zone: Option<&'a str>,
    pub node_ips: &'a [IpAddr],
    pub maglev: bool,
}

/// What changed since the last refresh.
#[derive(Debug, Default)]
pub struct Refresh {
    /// The frontends to compare with the maps and write; `None`: every one.
    pub scope: Option<BTreeSet<ServiceKey>>,
    /// UDP backends no UDP frontend uses any more (their sockets and flows go).
    pub udp_gone: Vec<SocketAddr>,
    /// Whether a Service with a health-check port changed.
    pub health_changed: bool,
    /// EndpointSlices changed since the last refresh; `None`: all of them.
    pub slices: Option<BTreeSet<String>>,
}

/// The index; see the module.
#[derive(Debug)]
pub struct ServiceIndex {
    /// Every frontend wanted, as the maps should hold it (shared with the writer
    /// without a copy; changed in place once the writer is done with it).
    pub want: Arc<BTreeMap<ServiceKey, Frontend>>,
    /// Each Service's frontends, by "namespace/name". Two Services naming the same
    /// frontend (an external IP twice) is a conflict kube-proxy resolves by order too:
    /// the last computed wins.
    by_service: BTreeMap<String, BTreeSet<ServiceKey>>,
    /// The slices of each Service, by the slices' store keys.
    slices_of: BTreeMap<String, BTreeSet<String>>,
    /// How many UDP frontends use each backend.
    udp_users: BTreeMap<SocketAddr, usize>,
    /// The Services with a health-check node port.
    health: BTreeSet<String>,
    dirty: BTreeSet<String>,
    touched_slices: BTreeSet<String>,
    full: bool,
}

impl Default for ServiceIndex {
    fn default() -> Self {
        Self {
            want: Arc::default(),
            by_service: BTreeMap::new(),
            slices_of: BTreeMap::new(),
            udp_users: BTreeMap::new(),
            health: BTreeSet::new(),
            dirty: BTreeSet::new(),
            touched_slices: BTreeSet::new(),
            full: true,
        }
    }
}

/// The Service a slice feeds, "namespace/name".
pub fn service_of(s: &EndpointSlice) -> Option<String> {
    let name = s
        .metadata
        .labels
        .as_ref()?
        .get(crate::model::services::SERVICE_NAME_LABEL)?;
    let ns = s.metadata.namespace.as_deref().unwrap_or("default");
    Some(format!("{ns}/{name}"))
}

fn has_health_port(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.health_check_node_port)
        .is_some_and(|p| p > 0)
}

impl ServiceIndex {
    /// The next refresh recomputes everything (a relist, a new zone, a resync).
    pub fn everything(&mut self) {
        self.full = true;
    }

    /// Service `key` ("namespace/name") was added, changed or deleted.
    pub fn service_changed(&mut self, key: String) {
        self.dirty.insert(key);
    }

    /// The slice stored under `key` was `old` and is now `new` (`None`: deleted).
    pub fn slice_changed(
        &mut self,
        key: &str,
        old: Option<&EndpointSlice>,
        new: Option<&EndpointSlice>,
    ) {
        if let Some(svc) = old.and_then(service_of) {
            if let Some(set) = self.slices_of.get_mut(&svc) {
                set.remove(key);
                if set.is_empty() {
                    self.slices_of.remove(&svc);
                }
            }
            self.dirty.insert(svc);
        }
        if let Some(svc) = new.and_then(service_of) {
            self.slices_of
                .entry(svc.clone())
                .or_default()
                .insert(key.to_string());
            self.dirty.insert(svc);
        }
        self.touched_slices.insert(key.to_string());
    }

    /// Recomputes what changed (everything after [`Self::everything`]) from the stores.
    pub fn refresh(
        &mut self,
        services: &BTreeMap<String, Service>,
        slices: &BTreeMap<String, EndpointSlice>,
        at: Placement<'_>,
    ) -> Refresh {
        if self.full {
            return self.rebuild(services, slices, at);
        }
        let mut scope = BTreeSet::new();
        let mut health_changed = false;
        let mut maybe_gone = BTreeSet::new();
        for key in std::mem::take(&mut self.dirty) {
            health_changed |= self.health.remove(&key);
            for fk in self.by_service.remove(&key).into_iter().flatten() {
                if let Some(f) = Arc::make_mut(&mut self.want).remove(&fk) {
                    self.unuse(&fk, &f, &mut maybe_gone);
                }
                scope.insert(fk);
            }
            scope.extend(self.compute(&key, services, slices, at));
            health_changed |= self.health.contains(&key);
        }
        Refresh {
            scope: Some(scope),
            udp_gone: maybe_gone
                .into_iter()
                .filter(|a| !self.udp_users.contains_key(a))
                .collect(),
            health_changed,
            slices: Some(std::mem::take(&mut self.touched_slices)),
        }
    }

    fn rebuild(
        &mut self,
        services: &BTreeMap<String, Service>,
        slices: &BTreeMap<String, EndpointSlice>,
        at: Placement<'_>,
    ) -> Refresh {
        let before: BTreeSet<SocketAddr> = self.udp_users.keys().copied().collect();
        self.full = false;
        self.dirty.clear();
        self.touched_slices.clear();
        self.slices_of.clear();
        for (k, s) in slices {
            if let Some(svc) = service_of(s) {
                self.slices_of.entry(svc).or_default().insert(k.clone());
            }
        }
        Arc::make_mut(&mut self.want).clear();
        self.by_service.clear();
        self.udp_users.clear();
        self.health.clear();
        for key in services.keys() {
            self.compute(key, services, slices, at);
        }
        Refresh {
            scope: None,
            udp_gone: before
                .into_iter()
                .filter(|a| !self.udp_users.contains_key(a))
                .collect(),
            health_changed: true,
            slices: None,
        }
    }

    /// Computes Service `key`'s frontends into `want`; returns their keys.
    fn compute(
        &mut self,
        key: &str,
        services: &BTreeMap<String, Service>,
        slices: &BTreeMap<String, EndpointSlice>,
        at: Placement<'_>,
    ) -> Vec<ServiceKey> {
        let Some(svc) = services.get(key) else {
            return Vec::new();
        };
        if has_health_port(svc) {
            self.health.insert(key.to_string());
        }
        let mine: Vec<EndpointSlice> = self
            .slices_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| slices.get(k).cloned())
            .collect();
        let mut fronts = desired(
            std::slice::from_ref(svc),
            &mine,
            at.node,
            at.zone,
            at.node_ips,
        );
        if at.maglev {
            use_maglev(&mut fronts);
        }
        let keys: Vec<ServiceKey> = fronts.keys().copied().collect();
        for (k, f) in fronts {
            self.uses(&k, &f);
            Arc::make_mut(&mut self.want).insert(k, f);
        }
        if !keys.is_empty() {
            self.by_service
                .insert(key.to_string(), keys.iter().copied().collect());
        }
        keys
    }

    fn uses(&mut self, k: &ServiceKey, f: &Frontend) {
        if k.proto == UDP {
            for b in &f.backends {
                *self.udp_users.entry(backend_addr(b)).or_default() += 1;
            }
        }
    }

    fn unuse(&mut self, k: &ServiceKey, f: &Frontend, gone: &mut BTreeSet<SocketAddr>) {
        if k.proto != UDP {
            return;
        }
        for b in &f.backends {
            let a = backend_addr(b);
            if let Some(n) = self.udp_users.get_mut(&a) {
                *n -= 1;
                if *n == 0 {
                    self.udp_users.remove(&a);
                    gone.insert(a);
                }
            }
        }
    }

    /// The Services with health-check ports and their slices, for
    /// [`crate::model::services::health_checks`].
    pub fn health_inputs(
        &self,
        services: &BTreeMap<String, Service>,
        slices: &BTreeMap<String, EndpointSlice>,
    ) -> (Vec<Service>, Vec<EndpointSlice>) {
        let svcs = self
            .health
            .iter()
            .filter_map(|k| services.get(k).cloned())
            .collect();
        let eps = self
            .health
            .iter()
            .flat_map(|k| self.slices_of.get(k).into_iter().flatten())
            .filter_map(|k| slices.get(k).cloned())
            .collect();
        (svcs, eps)
    }
}

const UDP: u8 = 17;

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, ip: &str, udp: bool, hc: bool) -> (String, Service) {
        let proto = if udp { "UDP" } else { "TCP" };
        let mut spec = serde_json::json!({"clusterIP": ip, "ports": [{"name": "p", "port": 53, "protocol": proto}]});
        if hc {
            spec["type"] = "LoadBalancer".into();
            spec["externalTrafficPolicy"] = "Local".into();
            spec["healthCheckNodePort"] = 30999.into();
            spec["ports"][0]["nodePort"] = 30053.into();
        }
        (
            format!("d/{name}"),
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "d"}, "spec": spec}))
            .unwrap(),
        )
    }

    fn slice(name: &str, svc: &str, ips: &[&str]) -> (String, EndpointSlice) {
        let eps: Vec<_> = ips
            .iter()
            .map(|ip| serde_json::json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": "a"}))
            .collect();
        (
            format!("d/{name}"),
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "d",
                             "labels": {"kubernetes.io/service-name": svc}},
                "addressType": "IPv4",
                "ports": [{"name": "p", "port": 5353, "protocol": "UDP"}],
                "endpoints": eps}))
            .unwrap(),
        )
    }

    const AT: Placement<'static> = Placement {
        node: "a",
        zone: None,
        node_ips: &[],
        maglev: false,
    };

    #[test]
    fn one_change_recomputes_one_service_and_matches_a_full_computation() {
        let mut services: BTreeMap<String, Service> = (0..50)
            .map(|i| svc(&format!("s{i}"), &format!("10.96.0.{}", i + 1), true, false))
            .collect();
        let mut slices: BTreeMap<String, EndpointSlice> = (0..50)
            .map(|i| {
                slice(
                    &format!("s{i}-x"),
                    &format!("s{i}"),
                    &[&format!("10.244.1.{}", i + 1)],
                )
            })
            .collect();
        let mut ix = ServiceIndex::default();
        let first = ix.refresh(&services, &slices, AT);
        assert!(first.scope.is_none() && first.slices.is_none());
        assert_eq!(ix.want.len(), 50);
        // One slice changes its endpoint: only that Service's frontend is in scope; its
        // old UDP backend is no longer used by anyone.
        let (k, new) = slice("s7-x", "s7", &["10.244.2.7"]);
        let old = slices.insert(k.clone(), new.clone());
        ix.slice_changed(&k, old.as_ref(), Some(&new));
        let r = ix.refresh(&services, &slices, AT);
        let scope = r.scope.unwrap();
        assert_eq!(scope.len(), 1);
        assert_eq!(
            r.udp_gone,
            ["10.244.1.8:5353".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(r.slices.unwrap().into_iter().collect::<Vec<_>>(), [k]);
        assert!(!r.health_changed);
        // A Service removed: its frontend leaves `want` and is in scope (to be deleted).
        services.remove("d/s3");
        ix.service_changed("d/s3".into());
        let r = ix.refresh(&services, &slices, AT);
        assert_eq!(r.scope.unwrap().len(), 1);
        assert_eq!(ix.want.len(), 49);
        // The index equals a computation from scratch.
        let mut again = ServiceIndex::default();
        again.refresh(&services, &slices, AT);
        assert_eq!(ix.want, again.want);
        // Nothing changed: nothing in scope.
        assert!(ix.refresh(&services, &slices, AT).scope.unwrap().is_empty());
    }

    #[test]
    fn any_order_of_changes_ends_where_a_full_computation_does() {
        // A small deterministic generator: Services and slices created, changed and
        // deleted in an interleaved order, refreshes at random points.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut services: BTreeMap<String, Service> = BTreeMap::new();
        let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
        let mut ix = ServiceIndex::default();
        ix.refresh(&services, &slices, AT);
        for step in 0..3000 {
            let i = rnd(40);
            match rnd(5) {
                0 | 1 => {
                    let (k, v) = svc(
                        &format!("s{i}"),
                        &format!("10.96.1.{}", i + 1),
                        rnd(2) == 0,
                        false,
                    );
                    services.insert(k.clone(), v);
                    ix.service_changed(k);
                }
                2 => {
                    let k = format!("d/s{i}");
                    services.remove(&k);
                    ix.service_changed(k);
                }
                3 => {
                    let ip = format!("10.244.{}.{}", rnd(3), i + 1);
                    let (k, v) = slice(&format!("s{i}-x"), &format!("s{i}"), &[&ip]);
                    let old = slices.insert(k.clone(), v.clone());
                    ix.slice_changed(&k, old.as_ref(), Some(&v));
                }
                _ => {
                    let k = format!("d/s{i}-x");
                    if let Some(old) = slices.remove(&k) {
                        ix.slice_changed(&k, Some(&old), None);
                    }
                }
            }
            if rnd(4) == 0 || step == 2999 {
                ix.refresh(&services, &slices, AT);
            }
        }
        let mut full = ServiceIndex::default();
        full.refresh(&services, &slices, AT);
        assert_eq!(ix.want, full.want);
        assert_eq!(ix.udp_users, full.udp_users);
    }

    #[test]
    fn a_backend_two_udp_services_share_goes_only_with_the_second_and_health_is_told() {
        let services: BTreeMap<String, Service> = [
            svc("a", "10.96.0.1", true, false),
            svc("b", "10.96.0.2", true, true),
        ]
        .into();
        let mut slices: BTreeMap<String, EndpointSlice> = [
            slice("a-x", "a", &["10.244.1.5"]),
            slice("b-x", "b", &["10.244.1.5"]),
        ]
        .into();
        let mut ix = ServiceIndex::default();
        let r = ix.refresh(&services, &slices, AT);
        assert!(r.health_changed);
        let (hs, he) = ix.health_inputs(&services, &slices);
        assert_eq!((hs.len(), he.len()), (1, 1));
        let old = slices.remove("d/a-x");
        ix.slice_changed("d/a-x", old.as_ref(), None);
        let r = ix.refresh(&services, &slices, AT);
        assert!(r.udp_gone.is_empty(), "b still uses it");
        assert!(!r.health_changed);
        let old = slices.remove("d/b-x");
        ix.slice_changed("d/b-x", old.as_ref(), None);
        let r = ix.refresh(&services, &slices, AT);
        assert_eq!(r.udp_gone.len(), 1);
        assert!(r.health_changed, "b has a health-check port");
    }
}

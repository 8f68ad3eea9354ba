//! The termination barrier: a deleted pod's preStop hooks and SIGTERM wait until its
//! endpoints have left the load-balancer — until the EndpointSlices this node's Service
//! datapath last programmed no longer list the pod as a ready endpoint — bounded by a
//! configurable wait that never runs past the pod's grace period.
//!
//! Without it (kubelet and kube-proxy have nothing like it), a deleted pod is signalled
//! at once while the EndpointSlice controller and every node's proxy still send it new
//! connections: a server that exits on SIGTERM refuses them until the change has gone
//! round. The Service controller publishes what it programmed after each successful
//! sync ([`Staging`] → [`EndpointBarrier::publish`]); a pod's termination waits on it
//! ([`EndpointBarrier::hold`]). The cost of a publish is the slices that changed, not
//! the number of endpoints.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::discovery::v1::EndpointSlice;

/// What identifies an endpoint as a pod's: the pod's uid (its `targetRef`), or an
/// address (a slice written without a `targetRef`).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum EndpointKey {
    Pod(String),
    Addr(IpAddr),
}

/// The keys of the endpoints of `slice` that take new connections: ready (or of
/// unknown readiness, which proxies treat as ready) and not terminating.
fn ready_keys(slice: &EndpointSlice) -> Vec<EndpointKey> {
    let mut keys = Vec::new();
    for ep in slice.endpoints.iter().flatten() {
        let c = ep.conditions.as_ref();
        let ready = c.and_then(|c| c.ready) != Some(false);
        let terminating = c.and_then(|c| c.terminating) == Some(true);
        if !ready || terminating {
            continue;
        }
        if let Some(uid) = ep
            .target_ref
            .as_ref()
            .filter(|t| t.kind.as_deref().unwrap_or("Pod") == "Pod")
            .and_then(|t| t.uid.clone())
        {
            keys.push(EndpointKey::Pod(uid));
        }
        keys.extend(
            ep.addresses
                .iter()
                .filter_map(|a| a.parse().ok())
                .map(EndpointKey::Addr),
        );
    }
    keys
}

/// The ready endpoints of every slice, counted by key.
#[derive(Debug, Default)]
struct ReadyIndex {
    by_slice: HashMap<String, Vec<EndpointKey>>,
    counts: HashMap<EndpointKey, u32>,
}

impl ReadyIndex {
    fn set_slice(&mut self, slice: &str, keys: Option<Vec<EndpointKey>>) {
        for k in self.by_slice.remove(slice).into_iter().flatten() {
            if let Some(n) = self.counts.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.counts.remove(&k);
                }
            }
        }
        if let Some(keys) = keys.filter(|k| !k.is_empty()) {
            for k in &keys {
                *self.counts.entry(k.clone()).or_default() += 1;
            }
            self.by_slice.insert(slice.to_string(), keys);
        }
    }

    /// Whether a slice lists the pod (`uid`, or one of `ips`) as ready.
    fn serving(&self, uid: &str, ips: &[IpAddr]) -> bool {
        self.counts.contains_key(&EndpointKey::Pod(uid.to_string()))
            || ips
                .iter()
                .any(|ip| self.counts.contains_key(&EndpointKey::Addr(*ip)))
    }
}

/// The slice changes seen since the last publish, kept by the Service controller.
#[derive(Debug, Default)]
pub struct Staging {
    /// Every slice, from a fresh list: what was published before is replaced.
    relisted: bool,
    changes: BTreeMap<String, Option<Vec<EndpointKey>>>,
}

impl Staging {
    /// The slice `key` as it is now (`None`: deleted).
    pub fn slice(&mut self, key: &str, slice: Option<&EndpointSlice>) {
        self.changes.insert(key.to_string(), slice.map(ready_keys));
    }

    /// A fresh list of every slice replaces what was published.
    pub fn relist<'a>(
        &mut self,
        slices: impl IntoIterator<Item = (&'a String, &'a EndpointSlice)>,
    ) {
        self.relisted = true;
        self.changes = slices
            .into_iter()
            .map(|(k, s)| (k.clone(), Some(ready_keys(s))))
            .collect();
    }
}

/// How a pod's hold at the barrier ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// No programmed slice listed the pod as ready: nothing to wait for.
    NotServing,
    /// Its endpoints left the datapath after this long.
    Released(Duration),
    /// Still listed when the wait ran out.
    TimedOut(Duration),
    /// The wait was cut short (a shortened grace period).
    Cancelled(Duration),
}

#[derive(Debug, Default)]
struct Published {
    index: ReadyIndex,
    /// Whether the datapath was ever programmed (before it, nothing is held).
    synced: bool,
}

/// What the node's Service datapath last programmed, shared by the Service controller
/// (which publishes) and the pod workers (which wait on it).
#[derive(Clone, Debug, Default)]
pub struct EndpointBarrier(Arc<(Mutex<Published>, Condvar)>);

impl EndpointBarrier {
    /// After a successful sync: the slices `staged` since the last one are what the
    /// datapath now holds; pods waiting on them are woken.
    pub fn publish(&self, staged: &mut Staging) {
        let (lock, changed) = &*self.0;
        let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
        if std::mem::take(&mut staged.relisted) {
            p.index = ReadyIndex::default();
        }
        for (k, keys) in std::mem::take(&mut staged.changes) {
            p.index.set_slice(&k, keys);
        }
        p.synced = true;
        changed.notify_all();
    }

    /// Whether the programmed slices list the pod as a ready endpoint.
    #[cfg(test)]
    pub fn serving(&self, uid: &str, ips: &[IpAddr]) -> bool {
        let p = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        p.synced && p.index.serving(uid, ips)
    }

    /// Waits until the programmed slices no longer list the pod (`uid`, `ips`) as a
    /// ready endpoint, at most `limit`, or until `cancel` is set; `holding` is called
    /// once before the wait, when there is one.
    pub fn hold(
        &self,
        uid: &str,
        ips: &[IpAddr],
        limit: Duration,
        cancel: &AtomicBool,
        holding: impl FnOnce(),
    ) -> Held {
        let start = Instant::now();
        let (lock, changed) = &*self.0;
        let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
        if !(p.synced && p.index.serving(uid, ips)) {
            return Held::NotServing;
        }
        holding();
        loop {
            let waited = start.elapsed();
            if !p.index.serving(uid, ips) {
                return Held::Released(waited);
            }
            if cancel.load(Ordering::Relaxed) {
                return Held::Cancelled(waited);
            }
            if waited >= limit {
                return Held::TimedOut(waited);
            }
            // Woken by each publish; a cancel is seen within 50 ms.
            let slice = (limit - waited).min(Duration::from_millis(50));
            p = changed
                .wait_timeout(p, slice)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(endpoints: &[(&str, &str, Option<bool>, Option<bool>)]) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s", "namespace": "default"},
            "addressType": "IPv4",
            "endpoints": endpoints.iter().map(|(uid, ip, ready, terminating)| serde_json::json!({
                "addresses": [ip],
                "conditions": {"ready": ready, "terminating": terminating},
                "targetRef": {"kind": "Pod", "uid": uid},
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ready_means_not_unready_and_not_terminating() {
        let s = slice(&[
            ("a", "10.0.0.1", Some(true), Some(false)),
            ("b", "10.0.0.2", None, None),
            ("c", "10.0.0.3", Some(false), Some(true)),
            ("d", "10.0.0.4", Some(true), Some(true)),
            ("e", "10.0.0.5", Some(false), None),
        ]);
        let keys = ready_keys(&s);
        assert_eq!(
            keys,
            vec![
                EndpointKey::Pod("a".into()),
                EndpointKey::Addr(ip("10.0.0.1")),
                EndpointKey::Pod("b".into()),
                EndpointKey::Addr(ip("10.0.0.2")),
            ]
        );
    }

    #[test]
    fn only_what_was_published_counts_and_a_pod_in_two_slices_waits_for_both() {
        let b = EndpointBarrier::default();
        let mut st = Staging::default();
        let ready = slice(&[("a", "10.0.0.1", Some(true), None)]);
        let gone = slice(&[("a", "10.0.0.1", Some(false), Some(true))]);
        // Nothing programmed yet: nothing held.
        assert!(!b.serving("a", &[]));
        st.slice("default/s1", Some(&ready));
        st.slice("default/s2", Some(&ready));
        assert!(!b.serving("a", &[]), "staged is not programmed");
        b.publish(&mut st);
        assert!(b.serving("a", &[]));
        assert!(b.serving("other", &[ip("10.0.0.1")]), "by address too");
        st.slice("default/s1", Some(&gone));
        b.publish(&mut st);
        assert!(b.serving("a", &[]), "still ready in the second slice");
        st.slice("default/s2", None);
        b.publish(&mut st);
        assert!(!b.serving("a", &[ip("10.0.0.1")]));
        // A relist replaces everything published before.
        st.slice("default/s3", Some(&ready));
        b.publish(&mut st);
        st.relist(std::iter::empty());
        b.publish(&mut st);
        assert!(!b.serving("a", &[]));
    }

    #[test]
    fn a_hold_ends_at_the_publish_that_removes_the_pod_or_at_its_limit_or_cancel() {
        let b = EndpointBarrier::default();
        let mut st = Staging::default();
        st.slice(
            "default/s",
            Some(&slice(&[("a", "10.0.0.1", Some(true), None)])),
        );
        b.publish(&mut st);
        let never = AtomicBool::new(false);
        let told = std::cell::Cell::new(0);
        let tell = || told.set(told.get() + 1);
        assert_eq!(
            b.hold("z", &[], Duration::from_secs(5), &never, tell),
            Held::NotServing
        );
        assert_eq!(told.get(), 0, "a pod not served is not said to be held");
        // Released by a publish from another thread.
        let b2 = b.clone();
        let publisher = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let mut st = Staging::default();
            st.slice(
                "default/s",
                Some(&slice(&[("a", "10.0.0.1", Some(false), Some(true))])),
            );
            b2.publish(&mut st);
        });
        match b.hold("a", &[], Duration::from_secs(20), &never, tell) {
            Held::Released(d) => assert!(d >= Duration::from_millis(150), "{d:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(told.get(), 1, "said once, before the wait");
        publisher.join().unwrap();
        // Held to the limit while listed.
        let mut st = Staging::default();
        st.slice(
            "default/s",
            Some(&slice(&[("a", "10.0.0.1", Some(true), None)])),
        );
        b.publish(&mut st);
        assert!(matches!(
            b.hold("a", &[], Duration::from_millis(100), &never, || {}),
            Held::TimedOut(_)
        ));
        let cancel = AtomicBool::new(true);
        assert!(matches!(
            b.hold("a", &[], Duration::from_secs(20), &cancel, || {}),
            Held::Cancelled(_)
        ));
    }
}

//! A cache of one kind of object kept by a watch (kubelet's listers): what the pod
//! manager reads at every pod start without a request to the apiserver. Each object is
//! kept as the few fields its reader needs. Until the watch has listed once, and while
//! it fails, the cache says it does not know, and the reader asks the apiserver itself.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt as _;
use kube::runtime::watcher;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// Objects by (namespace, name) — namespace `""` for cluster-scoped kinds.
pub type ByName<V> = BTreeMap<(String, String), V>;

/// The cached objects; `None` until the watch's first complete list.
pub struct WatchCache<V>(Arc<RwLock<Option<ByName<V>>>>);

impl<V> Clone for WatchCache<V> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<V> Default for WatchCache<V> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<V: Clone> WatchCache<V> {
    /// Reads the cache; `None` while it does not know.
    pub fn read<T>(&self, f: impl FnOnce(&ByName<V>) -> T) -> Option<T> {
        let guard = self.0.read().ok()?;
        guard.as_ref().map(f)
    }

    /// Replaces the whole cache (`None`: unknown again).
    pub fn set(&self, all: Option<ByName<V>>) {
        if let Ok(mut g) = self.0.write() {
            *g = all;
        }
    }

    /// Sets or removes (`None`) one object, once the cache knows the whole set.
    pub fn put(&self, key: (String, String), value: Option<V>) {
        if let Ok(mut g) = self.0.write()
            && let Some(all) = g.as_mut()
        {
            match value {
                Some(v) => all.insert(key, v),
                None => all.remove(&key),
            };
        }
    }
}

/// An object's key in a [`WatchCache`].
pub fn key<K: Resource>(o: &K) -> Option<(String, String)> {
    let m = o.meta();
    Some((m.namespace.clone().unwrap_or_default(), m.name.clone()?))
}

/// Keeps `cache` equal to the objects of `api`, each as `keep` makes it (an object
/// `keep` makes nothing of is left out), until `stop`. `what` names the objects in
/// the log.
pub async fn keep<K, V>(
    client: crate::client::SharedClient,
    api: impl Fn(kube::Client) -> Api<K>,
    cache: WatchCache<V>,
    keep: fn(&K) -> Option<V>,
    what: &str,
    mut stop: watch::Receiver<bool>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    V: Clone,
{
    let start = || watcher(api(client.get()), watcher::Config::default()).boxed();
    let mut stream = start();
    let mut rotations = client.rotations();
    let mut staging = ByName::new();
    let mut backoff = Duration::from_millis(200);
    loop {
        let event = tokio::select! {
            _ = stop.changed() => return,
            _ = rotations.changed() => {
                // New credentials: watch again with them (a relist).
                stream = start();
                continue;
            }
            e = stream.next() => e,
        };
        match event {
            Some(Ok(watcher::Event::Init)) => staging.clear(),
            Some(Ok(watcher::Event::InitApply(o))) => {
                if let (Some(k), Some(v)) = (key(&o), keep(&o)) {
                    staging.insert(k, v);
                }
            }
            Some(Ok(watcher::Event::InitDone)) => {
                cache.set(Some(std::mem::take(&mut staging)));
                backoff = Duration::from_millis(200);
            }
            Some(Ok(watcher::Event::Apply(o))) => {
                if let Some(k) = key(&o) {
                    cache.put(k, keep(&o));
                }
            }
            Some(Ok(watcher::Event::Delete(o))) => {
                if let Some(k) = key(&o) {
                    cache.put(k, None);
                }
            }
            Some(Err(e)) => {
                cache.set(None);
                tracing::warn!("watching {what}: {e}; retrying in {backoff:?}");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            None => {
                cache.set(None);
                stream = start();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_knows_nothing_until_it_has_listed() {
        let c: WatchCache<u8> = WatchCache::default();
        c.put(("a".into(), "x".into()), Some(1));
        assert_eq!(
            c.read(|m| m.len()),
            None,
            "a put before the list is dropped"
        );
        c.set(Some(ByName::new()));
        c.put(("a".into(), "x".into()), Some(1));
        c.put(("a".into(), "y".into()), Some(2));
        c.put(("a".into(), "x".into()), None);
        assert_eq!(
            c.read(|m| m.keys().cloned().collect::<Vec<_>>()),
            Some(vec![("a".into(), "y".into())])
        );
        c.set(None);
        assert_eq!(c.read(|m| m.len()), None);
    }
}

//! Generic object storage with resourceVersions, a bounded event history and watchers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::errors::ApiError;
use super::resources::ResourceType;

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in the history and sent to watchers.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub kind: EventKind,
    pub resource: &'static str,
    pub group: &'static str,
    pub namespace: String,
    pub object: Value,
    /// The object before a modification, so filtered watches can turn a change that
    /// leaves their selector into DELETED (and one that enters it into ADDED).
    pub old: Option<Value>,
}

type Key = (&'static str, &'static str, String, String);

struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Change>,
    window: usize,
}

/// The store. All mutation goes through here so resourceVersions are strictly increasing.
pub struct Store {
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Change>,
}

fn key(rt: &ResourceType, ns: &str, name: &str) -> Key {
    (rt.group, rt.plural, ns.to_string(), name.to_string())
}

/// RFC 3339 time with second precision, as metadata timestamps are written.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Reads `metadata.resourceVersion` as a number (0 when absent or unparsable).
pub fn rv_of(obj: &Value) -> u64 {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The strings of a JSON array (empty when absent or not an array).
pub fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `metadata.name` (empty when absent).
pub fn name_of(obj: &Value) -> String {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

impl Store {
    /// A store that keeps the last `window` changes for watch resumption.
    pub fn new(window: usize) -> Self {
        let (changes, _) = broadcast::channel(16384);
        Self {
            inner: Mutex::new(Inner {
                rv: 1,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                window: window.max(1),
            }),
            changes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every write is one
        // insert), so poisoning is not a reason to stop serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets how many changes are kept; older resourceVersions then get 410 Gone.
    pub fn set_window(&self, window: usize) {
        let mut inner = self.lock();
        inner.window = window.max(1);
        while inner.history.len() > inner.window {
            inner.history.pop_front();
        }
    }

    /// The newest resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Option<Value> {
        self.lock().objects.get(&key(rt, ns, name)).cloned()
    }

    fn items(inner: &Inner, rt: &ResourceType, ns: Option<&str>) -> Vec<Value> {
        inner
            .objects
            .iter()
            .filter(|((g, p, n, _), _)| {
                *g == rt.group && *p == rt.plural && ns.is_none_or(|ns| ns == n)
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every object of a type (in one namespace, or all), with the list's resourceVersion.
    pub fn list(&self, rt: &ResourceType, ns: Option<&str>) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let items = Self::items(&inner, rt, ns);
        (items, inner.rv)
    }

    /// Records a change at the current resourceVersion in the history and sends it to
    /// watchers; called with the lock held so events leave in resourceVersion order.
    fn publish(
        &self,
        inner: &mut Inner,
        rt: &ResourceType,
        ns: &str,
        kind: EventKind,
        object: Value,
        old: Option<Value>,
    ) {
        let change = Change {
            rv: inner.rv,
            kind,
            resource: rt.plural,
            group: rt.group,
            namespace: ns.to_string(),
            object,
            old,
        };
        inner.history.push_back(change.clone());
        while inner.history.len() > inner.window {
            inner.history.pop_front();
        }
        let _ = self.changes.send(change);
    }

    /// Stores a new object; fills uid, resourceVersion, creationTimestamp, generateName.
    pub fn create(
        &self,
        rt: &'static ResourceType,
        ns: &str,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let mut name = name_of(&obj);
        if name.is_empty() {
            let prefix = obj
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    rt.kind,
                    "",
                    vec![(
                        "metadata.name".into(),
                        "Required value: name or generateName is required".into(),
                    )],
                ));
            }
            loop {
                let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..5].to_string();
                name = format!("{prefix}{suffix}");
                if !inner.objects.contains_key(&key(rt, ns, &name)) {
                    break;
                }
            }
        }
        let k = key(rt, ns, &name);
        if inner.objects.contains_key(&k) {
            return Err(ApiError::already_exists(rt, &name));
        }
        inner.rv += 1;
        let rv = inner.rv;
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        let meta = &mut obj["metadata"];
        meta["name"] = json!(name);
        if rt.namespaced {
            meta["namespace"] = json!(ns);
        }
        meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
        meta["resourceVersion"] = json!(rv.to_string());
        meta["creationTimestamp"] = json!(now_rfc3339());
        if obj.get("spec").is_some() {
            obj["metadata"]["generation"] = json!(1);
        }
        inner.objects.insert(k, obj.clone());
        self.publish(&mut inner, rt, ns, EventKind::Added, obj.clone(), None);
        Ok(obj)
    }

    /// Replaces an object through `f`, which sees the current object and returns the new
    /// one. `f` runs under the store lock, so read-modify-write is atomic; it returns
    /// `Ok(None)` to leave the object unchanged (no new resourceVersion, no event).
    pub fn modify(
        &self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        f: impl FnOnce(&Value) -> Result<Option<Value>, ApiError>,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let k = key(rt, ns, name);
        let current = inner
            .objects
            .get(&k)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        let Some(mut new) = f(&current)? else {
            return Ok(current);
        };
        // Identity fields are not the caller's to change.
        for field in ["name", "namespace", "uid", "creationTimestamp"] {
            match current["metadata"].get(field) {
                Some(v) => new["metadata"][field] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(field);
                    }
                }
            }
        }
        new["apiVersion"] = json!(rt.api_version());
        new["kind"] = json!(rt.kind);
        if let Some(g) = current
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
        {
            // A pod's generation moves with its spec but not with its binding
            // (spec.nodeName), and with the start of a graceful deletion, as the real
            // server's pod strategy has it.
            let spec_of = |o: &Value| {
                let mut spec = o.get("spec").cloned();
                if rt.plural == "pods"
                    && let Some(s) = spec.as_mut().and_then(Value::as_object_mut)
                {
                    s.remove("nodeName");
                }
                spec
            };
            let deletion_begins = rt.plural == "pods"
                && current.pointer("/metadata/deletionTimestamp").is_none()
                && new.pointer("/metadata/deletionTimestamp").is_some();
            let bump = i64::from(spec_of(&current) != spec_of(&new) || deletion_begins);
            new["metadata"]["generation"] = json!(g + bump);
        }
        let mut compare = new.clone();
        compare["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        if compare == current {
            return Ok(current);
        }
        // A deleting object whose finalizers are all gone is removed now.
        let finalizers_empty = new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        let deleting = new.pointer("/metadata/deletionTimestamp").is_some();
        let grace_done = new
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .is_none_or(|g| g == 0);
        inner.rv += 1;
        let rv = inner.rv;
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        if deleting && finalizers_empty && grace_done && rt.plural != "pods" {
            inner.objects.remove(&k);
            self.publish(
                &mut inner,
                rt,
                ns,
                EventKind::Deleted,
                new.clone(),
                Some(current),
            );
            return Ok(new);
        }
        inner.objects.insert(k, new.clone());
        self.publish(
            &mut inner,
            rt,
            ns,
            EventKind::Modified,
            new.clone(),
            Some(current),
        );
        Ok(new)
    }

    /// Removes an object now; returns it with the resourceVersion of the deletion.
    pub fn remove(
        &self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let k = key(rt, ns, name);
        let mut obj = inner
            .objects
            .remove(&k)
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        inner.rv += 1;
        let rv = inner.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.publish(&mut inner, rt, ns, EventKind::Deleted, obj.clone(), None);
        Ok(obj)
    }

    /// Subscribes to changes after `since`, replaying the retained history first.
    /// `since` older than the history window is 410 Gone, as an etcd compaction would be.
    pub fn watch_since(
        &self,
        rt: &ResourceType,
        since: u64,
    ) -> Result<(Vec<Change>, broadcast::Receiver<Change>), ApiError> {
        let inner = self.lock();
        let rx = self.changes.subscribe();
        let oldest = inner.history.front().map_or(inner.rv, |c| c.rv);
        // Resuming at `since` needs every change after it; the first retained one must
        // therefore be at most since + 1.
        if since + 1 < oldest && since < inner.rv {
            return Err(ApiError::gone(format!(
                "too old resource version: {since} ({})",
                oldest - 1
            )));
        }
        let replay = inner
            .history
            .iter()
            .filter(|c| c.rv > since && c.group == rt.group && c.resource == rt.plural)
            .cloned()
            .collect();
        Ok((replay, rx))
    }

    /// A consistent snapshot of a type plus a subscription to everything after it.
    pub fn snapshot_and_watch(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
    ) -> (Vec<Value>, u64, broadcast::Receiver<Change>) {
        let inner = self.lock();
        let rx = self.changes.subscribe();
        let items = Self::items(&inner, rt, ns);
        (items, inner.rv, rx)
    }
}

impl Store {
    /// Every change from now on (for in-process controllers).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

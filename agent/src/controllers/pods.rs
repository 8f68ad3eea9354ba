//! The apiserver side of running pods: a watch of the pods bound to this node (field
//! selector `spec.nodeName`), published to the pod worker as complete snapshots, and
//! the writes back — `PATCH pods/status` (strategic merge, so other writers' fields
//! stay) and the final `DELETE` with grace 0 once a deleted pod's containers are gone.
//! A failed write is retried until it lands or the pod is gone.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::client::SharedClient;

/// The pods bound to this node; `None` until the first complete list. The pods are
/// shared, not copied: a publication after each watch event costs a pointer per pod.
pub type Snapshot = Arc<Mutex<Option<Vec<Arc<Pod>>>>>;

/// A count of the snapshot's changes, bumped at each: the pod manager waits on it, so
/// a new or changed pod is dispatched at once rather than at the next resync.
#[derive(Clone, Default)]
pub struct Changes(
    Arc<(Mutex<u64>, std::sync::Condvar)>,
    /// Bumped at every publication of the snapshot, status writes included.
    Arc<std::sync::atomic::AtomicU64>,
);

impl Changes {
    /// Says the snapshot was published again (whatever changed).
    pub fn published(&self) {
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The snapshot's version: a different one means a different snapshot.
    pub fn version(&self) -> u64 {
        self.1.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Says the snapshot changed.
    pub fn bump(&self) {
        if let Ok(mut n) = self.0.0.lock() {
            *n += 1;
            self.0.1.notify_all();
        }
    }

    /// The count so far.
    pub fn count(&self) -> u64 {
        self.0.0.lock().map(|n| *n).unwrap_or(0)
    }

    /// Waits up to `most` for a count other than `seen`; returns the count then.
    pub fn wait(&self, seen: u64, most: Duration) -> u64 {
        let Ok(guard) = self.0.0.lock() else {
            return seen;
        };
        match self.0.1.wait_timeout_while(guard, most, |n| *n == seen) {
            Ok((n, _)) => *n,
            Err(_) => seen,
        }
    }
}

/// Whether two objects of a pod differ at most in what a status write changes (the
/// status, the resourceVersion, the managed fields): no reason to sync the pod again,
/// as kubelet does not.
pub fn same_but_status(a: &Pod, b: &Pod) -> bool {
    let (ma, mb) = (&a.metadata, &b.metadata);
    a.spec == b.spec
        && ma.labels == mb.labels
        && ma.annotations == mb.annotations
        && ma.generation == mb.generation
        && ma.deletion_timestamp == mb.deletion_timestamp
        && ma.deletion_grace_period_seconds == mb.deletion_grace_period_seconds
        && ma.owner_references == mb.owner_references
        && ma.finalizers == mb.finalizers
}

/// Pods removed from the apiserver, by uid: the grace period of their last object
/// (`deletionGracePeriodSeconds`, 0 after a forced delete), which the node's kill of
/// what still runs honours. The pod manager takes entries out as it handles them.
pub type Deleted = Arc<Mutex<HashMap<String, Option<i64>>>>;

/// A write the pod worker asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    /// The pod's status as kubelet would write it.
    Status {
        namespace: String,
        name: String,
        uid: String,
        /// The uid of the object written (the status patch's precondition): the pod's
        /// own, or for a static pod its mirror pod's.
        object_uid: String,
        status: Value,
        /// A state kubelet reports on its own (the first status, a container's exit):
        /// a later status queues behind it instead of replacing it.
        keep: bool,
    },
    /// The pod's containers and sandbox are gone: remove the object (grace 0).
    Finished {
        namespace: String,
        name: String,
        uid: String,
    },
    /// A static pod runs: create its mirror pod (owned by this node) in the apiserver.
    CreateMirror {
        node: String,
        /// `mirror:<static pod uid>`: queued apart from the pod's status.
        key: String,
        pod: Value,
    },
}

impl Update {
    /// Whether a later write of the same pod must not replace this one.
    fn keep(&self) -> bool {
        matches!(self, Self::Status { keep: true, .. })
    }

    fn uid(&self) -> &str {
        match self {
            Self::Status { uid, .. } | Self::Finished { uid, .. } => uid,
            Self::CreateMirror { key, .. } => key,
        }
    }
}

/// Keeps `snapshot` equal to the pods bound to `node` until `stop`, bumping `changes`
/// at each change.
pub async fn watch_pods(
    client: SharedClient,
    node: String,
    (snapshot, changes): (Snapshot, Changes),
    deleted: Deleted,
    mut stop: watch::Receiver<bool>,
) {
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let start = || watcher(Api::<Pod>::all(client.get()), config.clone()).boxed();
    let mut stream = start();
    let mut rotations = client.rotations();
    let mut pods: BTreeMap<String, Arc<Pod>> = BTreeMap::new();
    let mut staging: BTreeMap<String, Arc<Pod>> = BTreeMap::new();
    // Every change is published; the pod manager is woken only for those that are
    // more than a status write (its own, mostly), which it picks up at its resync.
    let publish = |pods: &BTreeMap<String, Arc<Pod>>, wake: bool| {
        if let Ok(mut s) = snapshot.lock() {
            *s = Some(pods.values().cloned().collect());
            changes.published();
        }
        if wake {
            changes.bump();
        }
    };
    let uid = |p: &Pod| p.metadata.uid.clone().unwrap_or_default();
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
            Some(Ok(watcher::Event::InitApply(p))) => {
                staging.insert(uid(&p), Arc::new(p));
            }
            Some(Ok(watcher::Event::InitDone)) => {
                pods = std::mem::take(&mut staging);
                publish(&pods, true);
                backoff = Duration::from_millis(200);
            }
            Some(Ok(watcher::Event::Apply(p))) => {
                let wake = pods
                    .get(&uid(&p))
                    .is_none_or(|old| !same_but_status(old, &p));
                pods.insert(uid(&p), Arc::new(p));
                publish(&pods, wake);
            }
            Some(Ok(watcher::Event::Delete(p))) => {
                if let Ok(mut d) = deleted.lock() {
                    d.insert(uid(&p), p.metadata.deletion_grace_period_seconds);
                }
                pods.remove(&uid(&p));
                publish(&pods, true);
            }
            Some(Err(e)) => {
                tracing::warn!(node = %node, "watching this node's pods: {e}; retrying in {backoff:?}");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            None => {
                // The stream ended (it should not): start a new watch.
                stream = start();
            }
        }
    }
}

const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A status as a strategic-merge patch that leaves nothing of the previous one
/// behind: a merge keeps every key the patch does not mention, so the keys kernlet
/// writes only sometimes are sent as `null` when absent — a container's state is one
/// of waiting, running or terminated (not the old one next to the new), a condition
/// loses its old reason and message, the pod its old reason and message. Conditions
/// and containers stay merged by type and name, so other writers' entries survive.
pub fn patch_form(status: &Value) -> Value {
    fn nulls(v: &mut Value, keys: &[&str]) {
        if let Some(m) = v.as_object_mut() {
            for k in keys {
                m.entry(*k).or_insert(Value::Null);
            }
        }
    }
    let mut s = status.clone();
    nulls(&mut s, &["reason", "message"]);
    for c in s["conditions"].as_array_mut().into_iter().flatten() {
        nulls(c, &["reason", "message"]);
    }
    // The resize conditions are kubelet's: gone from the status, deleted from the pod.
    if let Some(list) = s["conditions"].as_array_mut() {
        for t in ["PodResizePending", "PodResizeInProgress"] {
            if !list.iter().any(|c| c["type"] == t) {
                list.push(json!({"type": t, "$patch": "delete"}));
            }
        }
    }
    for list in crate::model::pod_status::STATUS_LISTS {
        for c in s[list].as_array_mut().into_iter().flatten() {
            for state in ["state", "lastState"] {
                let st = &mut c[state];
                if !st.is_object() {
                    *st = json!({});
                }
                nulls(st, &["waiting", "running", "terminated"]);
                if let Some(w) = st.get_mut("waiting").filter(|w| w.is_object()) {
                    nulls(w, &["reason", "message"]);
                }
                if let Some(t) = st.get_mut("terminated").filter(|t| t.is_object()) {
                    nulls(t, &["message", "signal"]);
                }
            }
        }
    }
    s
}

/// The status patch of pod `uid`, as kubelet sends it: the uid is a precondition, so a
/// status queued for a pod never lands on a new pod of the same name.
pub fn status_patch(uid: &str, status: &Value) -> Value {
    json!({"metadata": {"uid": uid}, "status": patch_form(status)})
}

async fn apply(client: &SharedClient, update: &Update) -> Result<(), kube::Error> {
    let timeout = || kube::Error::Service("no answer within 10s".into());
    match update {
        Update::Status {
            namespace,
            name,
            object_uid,
            status,
            ..
        } => {
            let api: Api<Pod> = Api::namespaced(client.get(), namespace);
            let patch = status_patch(object_uid, status);
            match tokio::time::timeout(
                WRITE_TIMEOUT,
                api.patch_status(name, &PatchParams::default(), &Patch::Strategic(patch)),
            )
            .await
            {
                Ok(Ok(_)) => Ok(()),
                // Gone, or replaced by a new pod of the same name (the uid precondition
                // failed): this status is not the new pod's.
                Ok(Err(kube::Error::Api(s))) if s.code == 404 || s.code == 409 => Ok(()),
                Ok(Err(kube::Error::Api(s))) if not_this_nodes(&s) => {
                    tracing::warn!(pod = %format!("{namespace}/{name}"), "a status write was refused ({}); the pod is not this node's any more", s.message);
                    Ok(())
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(timeout()),
            }
        }
        Update::CreateMirror { node, pod, .. } => {
            // Owned by the Node, as kubelet makes them, so they go with it.
            let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.get());
            let node_uid = match tokio::time::timeout(WRITE_TIMEOUT, nodes.get(node)).await {
                Ok(Ok(n)) => n.metadata.uid.unwrap_or_default(),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(timeout()),
            };
            let mut pod = pod.clone();
            pod["metadata"]["ownerReferences"] = json!([{
                "apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid, "controller": true,
            }]);
            let pod: Pod = serde_json::from_value(pod).map_err(kube::Error::SerdeError)?;
            let ns = pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let api: Api<Pod> = Api::namespaced(client.get(), &ns);
            match tokio::time::timeout(WRITE_TIMEOUT, api.create(&PostParams::default(), &pod))
                .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(kube::Error::Api(s))) if s.code == 409 => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(timeout()),
            }
        }
        Update::Finished {
            namespace,
            name,
            uid,
        } => {
            let api: Api<Pod> = Api::namespaced(client.get(), namespace);
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match tokio::time::timeout(WRITE_TIMEOUT, api.delete(name, &params)).await {
                Ok(Ok(_)) => Ok(()),
                // Gone already, or replaced by a new pod of the same name.
                Ok(Err(kube::Error::Api(s))) if s.code == 404 || s.code == 409 => Ok(()),
                // The node authorizer knows no such pod on this node (it went between
                // two deletes): nothing of it is left to delete. Said, not retried.
                Ok(Err(kube::Error::Api(s))) if not_this_nodes(&s) => {
                    tracing::warn!(pod = %format!("{namespace}/{name}"), "the final delete was refused ({}); the pod is not this node's any more", s.message);
                    Ok(())
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(timeout()),
            }
        }
    }
}

/// Whether the apiserver refused a write because the node authorizer knows no such pod
/// on this node (deleted, or bound elsewhere): retrying cannot help. Other refusals
/// (missing permissions) are retried and said until fixed.
fn not_this_nodes(s: &kube::core::Status) -> bool {
    s.code == 403 && s.message.contains("no relationship found between node")
}

/// A pod's writes waiting to be applied: its statuses (the latest, behind those that
/// must land), then (once they have landed) the final delete — so no state kubelet
/// reports is skipped.
#[derive(Default)]
struct Pending {
    /// By pod uid (or `mirror:<uid>`): the statuses or mirror creation to write, in
    /// order.
    writes: HashMap<String, Vec<Update>>,
    /// Pods whose final delete waits for their statuses, by uid.
    finished: HashMap<String, Update>,
    /// Pods whose final delete landed, by uid, with when: what is asked of them again
    /// (a sender that has not yet seen the delete in the watch) is dropped, since the
    /// node authorizer refuses any write to a pod it no longer knows.
    deleted: HashMap<String, Instant>,
}

/// How long a landed final delete is remembered: far longer than the watch takes to
/// show it.
const REMEMBER_DELETED: Duration = Duration::from_secs(300);

impl Pending {
    fn add(&mut self, u: Update) {
        match u {
            // Deleted already: nothing more is written to it.
            _ if self.deleted.contains_key(u.uid()) => {}
            Update::Finished { .. } => {
                self.finished.insert(u.uid().to_string(), u);
            }
            // A status sent after the final delete was asked for has nothing to say.
            _ if self.finished.contains_key(u.uid()) => {}
            _ => {
                let queue = self.writes.entry(u.uid().to_string()).or_default();
                if queue.last().is_some_and(|last| !last.keep()) {
                    queue.pop();
                }
                queue.push(u);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.finished.is_empty()
    }

    /// Applies what is due, pods side by side (each pod's writes in order): every
    /// status first, then the final deletes whose pod has no status left to write.
    /// What fails stays for the next round.
    async fn apply(&mut self, client: &SharedClient) {
        let queues = std::mem::take(&mut self.writes);
        let jobs: Vec<_> = queues
            .into_iter()
            .map(|(uid, queue)| {
                let client = client.clone();
                async move {
                    let mut left = queue.into_iter();
                    let mut failed = Vec::new();
                    for u in left.by_ref() {
                        if let Err(e) = apply(&client, &u).await {
                            tracing::warn!(pod = %uid, "writing the pod back: {e}; retrying");
                            failed.push(u);
                            break;
                        }
                    }
                    failed.extend(left);
                    (uid, failed)
                }
            })
            .collect();
        let left: Vec<(String, Vec<Update>)> = futures::stream::iter(jobs)
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        for (uid, queue) in left {
            if !queue.is_empty() {
                // Writes queued meanwhile go behind what is left.
                let newer = self.writes.remove(&uid).unwrap_or_default();
                let mut all = queue;
                all.extend(newer);
                self.writes.insert(uid, all);
            }
        }
        let due: HashMap<String, Update> = self
            .finished
            .iter()
            .filter(|(uid, _)| !self.writes.contains_key(*uid))
            .map(|(uid, u)| (uid.clone(), u.clone()))
            .collect();
        let landed = apply_all(client, &due, "deleting the finished pod").await;
        self.landed(landed, Instant::now());
    }

    /// Final deletes that landed at `now`: done, and remembered for a while.
    fn landed(&mut self, uids: Vec<String>, now: Instant) {
        self.deleted
            .retain(|_, at| now.duration_since(*at) < REMEMBER_DELETED);
        for uid in uids {
            self.finished.remove(&uid);
            self.writes.remove(&uid);
            self.deleted.insert(uid, now);
        }
    }
}

/// How many pods' writes are in flight at once.
const CONCURRENT_WRITES: usize = 16;

/// Applies `writes` concurrently; the keys of those that landed.
async fn apply_all(
    client: &SharedClient,
    writes: &HashMap<String, Update>,
    what: &str,
) -> Vec<String> {
    let jobs: Vec<_> = writes
        .iter()
        .map(|(uid, u)| {
            let (client, uid, u, what) = (client.clone(), uid.clone(), u.clone(), what.to_string());
            async move {
                match apply(&client, &u).await {
                    Ok(()) => Some(uid),
                    Err(e) => {
                        tracing::warn!(pod = %uid, "{what}: {e}; retrying");
                        None
                    }
                }
            }
        })
        .collect();
    futures::stream::iter(jobs)
        .buffer_unordered(CONCURRENT_WRITES)
        .filter_map(std::future::ready)
        .collect()
        .await
}

/// Applies the pod worker's writes until `stop`; the latest status per pod wins, a
/// pod's final delete goes after its last status, and a failed write is retried every
/// second.
pub async fn write_back(
    client: SharedClient,
    mut updates: mpsc::UnboundedReceiver<Update>,
    mut stop: watch::Receiver<bool>,
) {
    let mut pending = Pending::default();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            u = updates.recv() => match u {
                Some(u) => pending.add(u),
                None => return,
            },
            _ = tokio::time::sleep(Duration::from_secs(1)), if !pending.is_empty() => {}
        }
        while let Ok(u) = updates.try_recv() {
            pending.add(u);
        }
        pending.apply(&client).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_write_alone_does_not_wake_the_worker() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "resourceVersion": "1", "labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
        }))
        .unwrap();
        let mut written = pod.clone();
        written.metadata.resource_version = Some("2".into());
        written.status = Some(Default::default());
        assert!(same_but_status(&pod, &written));
        let mut relabelled = written.clone();
        relabelled.metadata.labels = None;
        assert!(!same_but_status(&pod, &relabelled));
        let mut deleted = written.clone();
        deleted.metadata.deletion_grace_period_seconds = Some(0);
        assert!(!same_but_status(&pod, &deleted));
        let mut resized = written;
        resized.spec.as_mut().unwrap().containers[0].image = Some("j".into());
        assert!(!same_but_status(&pod, &resized));
    }

    #[test]
    fn a_change_wakes_the_waiter_and_none_lets_it_time_out() {
        let changes = Changes::default();
        let seen = changes.count();
        // Nothing changed: the wait ends at its limit with the same count.
        assert_eq!(changes.wait(seen, Duration::from_millis(10)), seen);
        let other = changes.clone();
        let waiter = std::thread::spawn(move || other.wait(seen, Duration::from_secs(60)));
        changes.bump();
        assert_eq!(waiter.join().unwrap(), seen + 1);
        // A change made before the wait is seen at once.
        changes.bump();
        assert_eq!(changes.wait(seen + 1, Duration::from_secs(60)), seen + 2);
    }

    #[test]
    fn a_pods_last_status_is_kept_ahead_of_its_final_delete() {
        let status = |phase: &str| Update::Status {
            namespace: "ns".into(),
            name: "p".into(),
            uid: "u".into(),
            object_uid: "u".into(),
            status: json!({"phase": phase}),
            keep: phase == "Kept",
        };
        let finished = Update::Finished {
            namespace: "ns".into(),
            name: "p".into(),
            uid: "u".into(),
        };
        let mut p = Pending::default();
        p.add(status("Running"));
        p.add(status("Kept"));
        p.add(status("Running"));
        p.add(status("Failed"));
        p.add(finished.clone());
        p.add(status("Running"));
        // The latest replaces what may be skipped, never what must land.
        assert_eq!(
            p.writes.get("u"),
            Some(&vec![status("Kept"), status("Failed")])
        );
        assert_eq!(p.finished.get("u"), Some(&finished));
    }

    #[test]
    fn nothing_is_written_to_a_pod_once_its_final_delete_landed() {
        let finished = |uid: &str| Update::Finished {
            namespace: "ns".into(),
            name: "p".into(),
            uid: uid.into(),
        };
        let mut p = Pending::default();
        p.add(finished("u"));
        let t0 = Instant::now();
        p.landed(vec!["u".into()], t0);
        assert!(p.is_empty());
        // A sender that had not seen the delete yet asks again: dropped.
        p.add(finished("u"));
        p.add(Update::Status {
            namespace: "ns".into(),
            name: "p".into(),
            uid: "u".into(),
            object_uid: "u".into(),
            status: json!({"phase": "Succeeded"}),
            keep: true,
        });
        assert!(p.is_empty());
        // Another pod of the same name is another uid.
        p.add(finished("v"));
        assert!(p.finished.contains_key("v"));
        // Forgotten after a while.
        p.landed(vec![], t0 + REMEMBER_DELETED);
        assert!(p.deleted.is_empty());
    }

    #[test]
    fn resize_conditions_absent_from_a_status_are_deleted_from_the_pod() {
        let p = patch_form(&json!({"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "PodResizePending", "status": "True", "reason": "Deferred"},
        ]}));
        let list = p["conditions"].as_array().unwrap();
        assert!(list.contains(&json!({"type": "PodResizeInProgress", "$patch": "delete"})));
        assert!(
            !list
                .iter()
                .any(|c| c["type"] == "PodResizePending" && c["$patch"] == "delete")
        );
    }

    #[test]
    fn a_status_patch_names_the_pod_it_was_made_for() {
        let p = status_patch("u-1", &json!({"phase": "Running"}));
        assert_eq!(p["metadata"], json!({"uid": "u-1"}));
        assert_eq!(p["status"]["phase"], "Running");
    }

    #[test]
    fn the_patch_form_clears_what_is_gone() {
        let s = patch_form(&json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "c", "state": {"running": {"startedAt": "t"}}, "lastState": {}}],
        }));
        assert_eq!(s["reason"], Value::Null);
        assert!(
            s["conditions"][0]
                .as_object()
                .unwrap()
                .contains_key("reason")
        );
        let state = s["containerStatuses"][0]["state"].as_object().unwrap();
        assert!(state["waiting"].is_null() && state["terminated"].is_null());
        assert_eq!(state["running"]["startedAt"], "t");
        assert!(s["containerStatuses"][0]["lastState"]["terminated"].is_null());
    }
}

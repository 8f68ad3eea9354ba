//! Events about pods and the node, as kubelet records them (`kubectl describe` shows
//! them): `core/v1` Events from source `kubelet`/<node>, the same event again within ten
//! minutes counted on the first one (`count`, `lastTimestamp`) instead of created
//! anew, and a token bucket (kubelet's 50 per second, bursts of 100) so a pod in
//! trouble cannot flood the apiserver.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::client::SharedClient;

/// An event about a pod or the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeletEvent {
    /// `Pod`, or `Node` for the node's own events.
    pub kind: &'static str,
    /// The pod's namespace; empty for the node.
    pub namespace: String,
    /// The pod's name, or the node's.
    pub pod: String,
    /// The pod's uid; kubelet gives the node's events the node's name as uid.
    pub uid: String,
    /// `spec.containers{name}` and the like; empty for the pod itself.
    pub field_path: String,
    /// `Normal` or `Warning`.
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

/// Records events from any thread.
#[derive(Clone, Debug)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<KubeletEvent>,
}

impl Recorder {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<KubeletEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, rx)
    }

    pub fn record(&self, e: KubeletEvent) {
        let _ = self.tx.send(e);
    }

    /// Records an event about node `node`, as kubelet's node reference names it.
    pub fn record_node(&self, node: &str, warning: bool, reason: &str, message: String) {
        self.record(KubeletEvent {
            kind: "Node",
            namespace: String::new(),
            pod: node.to_string(),
            uid: node.to_string(),
            field_path: String::new(),
            warning,
            reason: reason.into(),
            message,
        });
    }
}

/// The Event `e` first recorded at `stamp` under `name` by node `node`. Events about
/// the node live in `default`, as kubelet's.
pub fn event(
    e: &KubeletEvent,
    name: &str,
    node: &str,
    stamp: k8s_openapi::jiff::Timestamp,
) -> Event {
    let namespace = if e.namespace.is_empty() {
        "default".to_string()
    } else {
        e.namespace.clone()
    };
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Event {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some(e.kind.into()),
            name: some(&e.pod),
            namespace: some(&e.namespace),
            uid: some(&e.uid),
            field_path: some(&e.field_path),
            ..Default::default()
        },
        reason: Some(e.reason.clone()),
        message: Some(e.message.clone()),
        type_: Some(if e.warning { "Warning" } else { "Normal" }.into()),
        source: Some(EventSource {
            component: Some("kubelet".into()),
            host: Some(node.to_string()),
        }),
        reporting_component: Some("kubelet".into()),
        reporting_instance: Some(node.to_string()),
        first_timestamp: Some(Time(stamp)),
        last_timestamp: Some(Time(stamp)),
        count: Some(1),
        event_time: None::<MicroTime>,
        ..Default::default()
    }
}

/// `spec.containers{c}` or `spec.initContainers{c}` for a container of `spec`.
pub fn field_path(spec: &k8s_openapi::api::core::v1::PodSpec, container: &str) -> String {
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .any(|c| c.name == container);
    let known = init
        || spec.containers.iter().any(|c| c.name == container)
        || spec
            .ephemeral_containers
            .iter()
            .flatten()
            .any(|c| c.name == container);
    if init {
        format!("spec.initContainers{{{container}}}")
    } else if known {
        format!("spec.containers{{{container}}}")
    } else {
        // Not a container (an image volume's pull): about the pod.
        String::new()
    }
}

/// kubelet's event rate: 50 per second, bursts of 100.
const QPS: f64 = 50.0;
const BURST: f64 = 100.0;
/// Repeats within this window are counted on the first event.
const AGGREGATE: Duration = Duration::from_secs(600);

/// A token bucket.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new() -> Self {
        Self {
            tokens: BURST,
            last: Instant::now(),
        }
    }

    /// Takes a token at `now`, if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * QPS;
        self.tokens = (self.tokens + refill).min(BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Default for Bucket {
    fn default() -> Self {
        Self::new()
    }
}

fn now_text() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// What makes two events the same: namespace, pod uid, field path, reason, message.
type SameEvent = (String, String, String, String, String);

/// Sends the recorded events until `stop`.
pub async fn run(
    client: SharedClient,
    node: String,
    mut rx: mpsc::UnboundedReceiver<KubeletEvent>,
    mut stop: watch::Receiver<bool>,
) {
    // (event name, count, when first sent) by what makes an event the same.
    let mut sent: HashMap<SameEvent, (String, i32, Instant)> = HashMap::new();
    let mut bucket = Bucket::new();
    let mut dropped = 0u64;
    loop {
        let e = tokio::select! {
            e = rx.recv() => match e { Some(e) => e, None => return },
            _ = stop.changed() => return,
        };
        let now = Instant::now();
        if !bucket.take(now) {
            dropped += 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    "too many events; dropping some (kubelet's limit: 50 per second)"
                );
            }
            continue;
        }
        sent.retain(|_, (_, _, t)| now.duration_since(*t) < AGGREGATE);
        let key = (
            e.namespace.clone(),
            e.uid.clone(),
            e.field_path.clone(),
            e.reason.clone(),
            e.message.clone(),
        );
        let stamp = k8s_openapi::jiff::Timestamp::now();
        let event = event(
            &e,
            &format!("{}.{:x}", e.pod, stamp.as_nanosecond()),
            &node,
            stamp,
        );
        let name = event.metadata.name.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(
            client.get(),
            event.metadata.namespace.as_deref().unwrap_or("default"),
        );
        if let Some((name, count, _)) = sent.get_mut(&key) {
            *count += 1;
            let patch = json!({"count": *count, "lastTimestamp": now_text()});
            if let Err(err) = api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::debug!("updating event {name}: {err}");
            }
            continue;
        }
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {
                sent.insert(key, (name, 1, now));
            }
            Err(err) => tracing::debug!("recording event {}: {err}", e.reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_bursts_then_the_rate() {
        let mut b = Bucket::new();
        let t0 = Instant::now();
        let burst = (0..200).filter(|_| b.take(t0)).count();
        assert_eq!(burst, 100);
        assert!(!b.take(t0));
        assert!(
            b.take(t0 + Duration::from_millis(20)),
            "one more after 1/50 s"
        );
    }

    #[test]
    fn node_events_live_in_default_and_name_the_node_as_kubelet() {
        let (r, mut rx) = Recorder::new();
        r.record_node(
            "n1",
            true,
            "EvictionThresholdMet",
            "Attempting to reclaim memory".into(),
        );
        let e = rx.try_recv().unwrap();
        let stamp = k8s_openapi::jiff::Timestamp::now();
        let ev = event(&e, "n1.1", "n1", stamp);
        assert_eq!(ev.metadata.namespace.as_deref(), Some("default"));
        let o = &ev.involved_object;
        assert_eq!(o.kind.as_deref(), Some("Node"));
        assert_eq!(o.name.as_deref(), Some("n1"));
        assert_eq!(o.uid.as_deref(), Some("n1"));
        assert_eq!(o.namespace, None);
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert_eq!(ev.source.unwrap().host.as_deref(), Some("n1"));
        let pod = KubeletEvent {
            kind: "Pod",
            namespace: "ns".into(),
            pod: "p".into(),
            uid: "u".into(),
            field_path: "spec.containers{c}".into(),
            warning: false,
            reason: "Pulled".into(),
            message: "m".into(),
        };
        let ev = event(&pod, "p.1", "n1", stamp);
        assert_eq!(ev.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(
            ev.involved_object.field_path.as_deref(),
            Some("spec.containers{c}")
        );
        assert_eq!(ev.type_.as_deref(), Some("Normal"));
    }

    #[test]
    fn field_paths_name_the_container_list() {
        let spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(
            json!({"initContainers": [{"name": "i"}], "containers": [{"name": "c"}]}),
        )
        .unwrap();
        assert_eq!(field_path(&spec, "i"), "spec.initContainers{i}");
        assert_eq!(field_path(&spec, "c"), "spec.containers{c}");
    }
}

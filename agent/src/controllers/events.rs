//! Events about pods, as kubelet records them (`kubectl describe pod` shows them):
//! `core/v1` Events from source `kubelet`/<node>, the same event again within ten
//! minutes counted on the first one (`count`, `lastTimestamp`) instead of created
//! anew, and a token bucket (kubelet's 50 per second, bursts of 100) so a pod in
//! trouble cannot flood the apiserver.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::client::SharedClient;

/// What a pod event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEvent {
    pub namespace: String,
    pub pod: String,
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
    tx: mpsc::UnboundedSender<PodEvent>,
}

impl Recorder {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<PodEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, rx)
    }

    pub fn record(&self, e: PodEvent) {
        let _ = self.tx.send(e);
    }
}

/// `spec.containers{c}` or `spec.initContainers{c}` for a container of `spec`.
pub fn field_path(spec: &k8s_openapi::api::core::v1::PodSpec, container: &str) -> String {
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .any(|c| c.name == container);
    if init {
        format!("spec.initContainers{{{container}}}")
    } else {
        format!("spec.containers{{{container}}}")
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
    mut rx: mpsc::UnboundedReceiver<PodEvent>,
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
        let api: Api<Event> = Api::namespaced(client.get(), &e.namespace);
        let stamp = now_text();
        if let Some((name, count, _)) = sent.get_mut(&key) {
            *count += 1;
            let patch = json!({"count": *count, "lastTimestamp": stamp});
            if let Err(err) = api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::debug!("updating event {name}: {err}");
            }
            continue;
        }
        let nanos = k8s_openapi::jiff::Timestamp::now().as_nanosecond();
        let name = format!("{}.{:x}", e.pod, nanos);
        let mut involved = json!({"apiVersion": "v1", "kind": "Pod", "name": e.pod, "namespace": e.namespace, "uid": e.uid});
        if !e.field_path.is_empty() {
            involved["fieldPath"] = json!(e.field_path);
        }
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": e.namespace},
            "involvedObject": involved,
            "reason": e.reason, "message": e.message,
            "type": if e.warning { "Warning" } else { "Normal" },
            "source": {"component": "kubelet", "host": node},
            "reportingComponent": "kubelet", "reportingInstance": node,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        });
        let Ok(event) = serde_json::from_value::<Event>(event) else {
            continue;
        };
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
    fn field_paths_name_the_container_list() {
        let spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(
            json!({"initContainers": [{"name": "i"}], "containers": [{"name": "c"}]}),
        )
        .unwrap();
        assert_eq!(field_path(&spec, "i"), "spec.initContainers{i}");
        assert_eq!(field_path(&spec, "c"), "spec.containers{c}");
    }
}

//! The eviction manager (kubelet's `pkg/kubelet/eviction`): every monitoring period it
//! reads the node's signals, sets the pressure conditions, evicts pods over their
//! local-storage limits, and when a threshold has been met for its grace period
//! reclaims what the node itself holds (dead containers, unused images — for disk
//! signals) and, if that is not enough, evicts one pod, ranked as kubelet ranks them.
//! What it reads and changes on the node is behind [`NodeSide`], so the decisions are
//! tested without a node.

pub mod node;
pub mod shutdown;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use crate::model::eviction::decide::Decider;
use crate::model::eviction::rank::{self, PodUsage};
use crate::model::eviction::{Eviction, Reading, SharedPressure, Signal, report};
use crate::model::pod_lifecycle::is_critical;

/// kubelet's `immediateEvictionGracePeriodSeconds`: what a pod evicted for a hard
/// threshold or its own limits gets.
pub const IMMEDIATE_GRACE: Duration = Duration::from_secs(1);

/// What the eviction manager reads and changes on the node.
pub trait NodeSide {
    /// The eviction signals now.
    fn readings(&self) -> BTreeMap<Signal, Reading>;
    /// Whether images live on a filesystem of their own (kubelet's dedicated imagefs).
    fn dedicated_imagefs(&self) -> bool;
    /// The pods that run (not terminal, not being evicted).
    fn active_pods(&self) -> Vec<Pod>;
    /// What active pod `pod` uses now (walks its disk: asked only when needed).
    fn usage(&self, pod: &Pod) -> Option<PodUsage>;
    /// Removes the dead containers of pods that ended (kubelet's
    /// `DeleteAllUnusedContainers`).
    fn delete_unused_containers(&self);
    /// Removes every image no container uses and old enough to go (kubelet's
    /// `DeleteUnusedImages`).
    fn delete_unused_images(&self);
    /// Asks the pod's worker to evict it; `false` when it was asked already.
    fn evict(&self, pod: &Pod, eviction: Eviction) -> bool;
    /// Whether evicted pod `uid` is cleaned up: nothing of it runs, its volumes gone.
    fn cleaned_up(&self, uid: &str) -> bool;
    /// Records a Warning event about the node.
    fn node_warning(&self, reason: &str, message: String);
}

/// How long a round waits for the pods it evicted to be cleaned up before the next
/// (kubelet's `podCleanupTimeout`).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The eviction manager's settings.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How often signals are read (kubelet: 10 s).
    pub period: Duration,
    /// The longest grace period a soft eviction gives (`--eviction-max-pod-grace-period`).
    pub max_pod_grace: Duration,
}

pub struct Manager<N: NodeSide> {
    node: N,
    decider: Decider,
    settings: Settings,
    pressure: SharedPressure,
}

/// Whether kubelet reclaims node-level resources for `signal`: dead containers and
/// unused images for the disk signals of the filesystem that holds them.
fn node_reclaim(signal: Signal, dedicated_imagefs: bool) -> bool {
    match signal {
        Signal::MemoryAvailable | Signal::AllocatableMemoryAvailable | Signal::PidAvailable => {
            false
        }
        Signal::NodefsAvailable | Signal::NodefsInodesFree => !dedicated_imagefs,
        Signal::ImagefsAvailable | Signal::ImagefsInodesFree => true,
    }
}

fn name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

impl<N: NodeSide> Manager<N> {
    pub fn new(node: N, decider: Decider, settings: Settings, pressure: SharedPressure) -> Self {
        Self {
            node,
            decider,
            settings,
            pressure,
        }
    }

    /// Runs a round every period until `stop`.
    pub fn run(mut self, stop: &AtomicBool) {
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                let evicted = self.round(Instant::now());
                // As kubelet: the next round waits until what the evicted pods held is
                // given back, so the same pressure does not evict a second pod.
                let deadline = Instant::now() + CLEANUP_TIMEOUT;
                while !evicted.iter().all(|uid| self.node.cleaned_up(uid))
                    && Instant::now() < deadline
                    && !stop.load(Ordering::Relaxed)
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                next = Instant::now() + self.settings.period;
            }
            std::thread::sleep(Duration::from_millis(100).min(self.settings.period));
        }
    }

    /// One round at `now`; the pods it asked to evict.
    pub fn round(&mut self, now: Instant) -> Vec<String> {
        let readings = self.node.readings();
        let round = self.decider.round(&readings, now);
        self.pressure.set(round.pressure);
        // For `kernlet status`: each reading beside its threshold.
        crate::daemon::synced(
            "eviction",
            serde_json::json!({
                "signals": report(self.decider.thresholds(), &readings),
                "conditions": round.pressure.conditions(),
            }),
        );
        if !round.met.is_empty() {
            let thresholds = self.decider.thresholds();
            tracing::warn!(
                signals = ?round.met.iter().map(|&i| thresholds[i].signal.name()).collect::<Vec<_>>(),
                "eviction thresholds crossed"
            );
        }
        let dedicated = self.node.dedicated_imagefs();
        let active = self.node.active_pods();
        // A pod over its own local-storage limits goes whatever the node's state.
        let mut evicted = Vec::new();
        for pod in active.iter().filter(|p| rank::has_local_limits(p)) {
            if let Some(p) = self.node.usage(pod)
                && let Some(message) = rank::over_local_limit(&p, dedicated)
                && self.evict(&p.pod, message, IMMEDIATE_GRACE, false)
            {
                evicted.push(p.pod.metadata.uid.clone().unwrap_or_default());
            }
        }
        if !evicted.is_empty() {
            return evicted;
        }
        let Some(i) = round.reclaim else {
            return evicted;
        };
        let t = self.decider.thresholds()[i];
        let Some(reading) = readings.get(&t.signal).copied() else {
            return evicted;
        };
        tracing::warn!(
            signal = t.signal.name(),
            available = reading.available,
            threshold = t.absolute(reading.capacity),
            "eviction threshold met; attempting to reclaim {}",
            t.signal.resource()
        );
        self.node.node_warning(
            "EvictionThresholdMet",
            format!("Attempting to reclaim {}", t.signal.resource()),
        );
        if node_reclaim(t.signal, dedicated) {
            self.node.delete_unused_containers();
            self.node.delete_unused_images();
            if self.decider.relieved(&self.node.readings()) {
                tracing::info!(
                    "reclaiming dead containers and unused images relieved the pressure; no pod evicted"
                );
                return evicted;
            }
        }
        let mut pods: Vec<PodUsage> = active.iter().filter_map(|p| self.node.usage(p)).collect();
        rank::rank(&mut pods, t.signal, dedicated);
        // At most one pod a round, as kubelet.
        for p in &pods {
            let grace = if t.hard {
                IMMEDIATE_GRACE
            } else {
                let own = p
                    .pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
                    .and_then(|g| u64::try_from(g).ok())
                    .map(Duration::from_secs);
                own.map_or(self.settings.max_pod_grace, |g| {
                    g.min(self.settings.max_pod_grace)
                })
            };
            let message =
                rank::message(t.signal, t.absolute(reading.capacity), reading.available, p);
            if self.evict(&p.pod, message, grace, true) {
                evicted.push(p.pod.metadata.uid.clone().unwrap_or_default());
                return evicted;
            }
        }
        tracing::warn!(
            "eviction threshold {} met and no pod could be evicted",
            t.signal.name()
        );
        evicted
    }

    fn evict(&self, pod: &Pod, message: String, grace: Duration, condition: bool) -> bool {
        if is_critical(pod) {
            tracing::warn!(pod = %name(pod), "a critical pod is not evicted");
            return false;
        }
        tracing::warn!(pod = %name(pod), grace = ?grace, "evicting: {message}");
        self.node.evict(
            pod,
            Eviction {
                reason: crate::model::eviction::REASON.into(),
                message,
                grace,
                disruption_condition: condition,
            },
        )
    }
}

#[cfg(test)]
mod tests;

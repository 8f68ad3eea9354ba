//! kubelet's pod manager series, kept with prometheus-client and served on the kubelet
//! API's `/metrics`: `kubelet_pod_start_duration_seconds` (from the pod's worker first
//! seeing it to all its containers running, as kubelet's pod startup latency tracker
//! measures it) and the PLEG's `kubelet_pleg_relist_duration_seconds` and
//! `kubelet_pleg_relist_interval_seconds`, with kubelet's buckets; and kubelet's
//! counts of user-namespaced pods whose sandbox was made
//! (`kubelet_started_user_namespaced_pods_total`) and of those whose first sync
//! failed (`…_errors_total`).

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The pod manager's series.
pub struct PodManagerMetrics {
    pub pod_start: Histogram,
    pub relist_duration: Histogram,
    pub relist_interval: Histogram,
    pub started_userns_pods: Counter,
    pub started_userns_pod_errors: Counter,
    registry: Registry,
}

/// kubelet's buckets of `kubelet_pod_start_duration_seconds`.
const POD_START_BUCKETS: [f64; 25] = [
    0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0,
    300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];

impl PodManagerMetrics {
    fn new() -> Self {
        let pod_start = Histogram::new(POD_START_BUCKETS);
        let relist_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 15));
        let relist_interval = Histogram::new(exponential_buckets(0.0001, 2.0, 15));
        let mut registry = Registry::with_prefix("kubelet");
        registry.register(
            "pod_start_duration_seconds",
            "[ALPHA] Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run",
            pod_start.clone(),
        );
        registry.register(
            "pleg_relist_duration_seconds",
            "[ALPHA] Duration in seconds for relisting pods in PLEG",
            relist_duration.clone(),
        );
        registry.register(
            "pleg_relist_interval_seconds",
            "[ALPHA] Interval in seconds between relisting in PLEG",
            relist_interval.clone(),
        );
        let started_userns_pods = Counter::default();
        let started_userns_pod_errors = Counter::default();
        registry.register(
            "started_user_namespaced_pods",
            "[ALPHA] Cumulative number of pods with user namespaces started",
            started_userns_pods.clone(),
        );
        registry.register(
            "started_user_namespaced_pods_errors",
            "[ALPHA] Cumulative number of errors when starting pods with user namespaces. This does not include errors in non user namespaced pods",
            started_userns_pod_errors.clone(),
        );
        Self {
            pod_start,
            relist_duration,
            relist_interval,
            started_userns_pods,
            started_userns_pod_errors,
            registry,
        }
    }

    /// The series in the Prometheus text format (0.0.4, as kubelet serves it).
    pub fn text(&self) -> String {
        crate::model::prom_text::encode(&self.registry)
    }
}

/// The process's pod manager series.
pub fn pod_manager() -> &'static PodManagerMetrics {
    static METRICS: OnceLock<PodManagerMetrics> = OnceLock::new();
    METRICS.get_or_init(PodManagerMetrics::new)
}

/// Records a pod's start: `took` from its worker's first sight to all containers running.
pub fn pod_started(took: Duration) {
    pod_manager().pod_start.observe(took.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_series_carry_kubelets_names_and_buckets() {
        let m = PodManagerMetrics::new();
        m.pod_start.observe(1.5);
        m.relist_duration.observe(0.002);
        let text = m.text();
        assert!(
            text.contains("# TYPE kubelet_pod_start_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("kubelet_pod_start_duration_seconds_bucket{le=\"2\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kubelet_pod_start_duration_seconds_bucket{le=\"1\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("kubelet_pod_start_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("kubelet_pleg_relist_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("kubelet_pleg_relist_interval_seconds_count 0"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
    }
}

//! kubelet's `prober_probe_total`: every probe run of every container counted by its
//! result, served at `/metrics/probes`. The series of a pod go when the pod leaves the
//! node, as kubelet drops a probe worker's.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// What one series is about (its labels, in kubelet's order).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, EncodeLabelSet)]
pub struct ProbeSeries {
    pub container: String,
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    /// `Liveness`, `Readiness` or `Startup`.
    pub probe_type: &'static str,
    /// `successful`, `failed` or `unknown`.
    pub result: &'static str,
}

struct Probes {
    runs: Family<ProbeSeries, Counter>,
    /// Every series made, so a pod's can be dropped.
    made: Mutex<HashSet<ProbeSeries>>,
    registry: Registry,
}

static PROBES: LazyLock<Probes> = LazyLock::new(|| {
    let runs = Family::<ProbeSeries, Counter>::default();
    let mut registry = Registry::default();
    registry.register(
        "prober_probe",
        "[BETA] Cumulative number of a liveness, readiness or startup probe for a container by result",
        runs.clone(),
    );
    Probes {
        runs,
        made: Mutex::default(),
        registry,
    }
});

/// Counts one probe run.
pub fn count(series: ProbeSeries) {
    let mut made = PROBES.made.lock().unwrap_or_else(|p| p.into_inner());
    if !made.contains(&series) {
        made.insert(series.clone());
    }
    PROBES.runs.get_or_create(&series).inc();
}

/// Drops the series of pod `uid`.
pub fn forget_pod(uid: &str) {
    let mut made = PROBES.made.lock().unwrap_or_else(|p| p.into_inner());
    made.retain(|s| {
        let gone = s.pod_uid == uid;
        if gone {
            PROBES.runs.remove(s);
        }
        !gone
    });
}

/// `/metrics/probes` in the Prometheus text format.
pub fn text() -> String {
    crate::model::prom_text::encode(&PROBES.registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_counted_by_result_and_forgotten_with_their_pod() {
        let s = |result, uid: &str| ProbeSeries {
            container: "c".into(),
            namespace: "ns".into(),
            pod: "p".into(),
            pod_uid: uid.into(),
            probe_type: "Readiness",
            result,
        };
        count(s("successful", "u-probe-test"));
        count(s("successful", "u-probe-test"));
        count(s("failed", "u-probe-test"));
        let t = text();
        assert!(t.contains("prober_probe_total{container=\"c\",namespace=\"ns\",pod=\"p\",pod_uid=\"u-probe-test\",probe_type=\"Readiness\",result=\"successful\"} 2\n"), "{t}");
        assert!(t.contains("result=\"failed\"} 1\n"), "{t}");
        forget_pod("u-probe-test");
        assert!(!text().contains("u-probe-test"));
    }
}

//! kubelet's `prober_probe_total`: every probe run of every container counted by its
//! result, served at `/metrics/probes`. The series of a pod go when the pod leaves the
//! node, as kubelet drops a probe worker's.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// What one series is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
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

static COUNTS: Mutex<BTreeMap<ProbeSeries, u64>> = Mutex::new(BTreeMap::new());

/// Counts one probe run.
pub fn count(series: ProbeSeries) {
    let mut counts = COUNTS.lock().unwrap_or_else(|p| p.into_inner());
    *counts.entry(series).or_insert(0) += 1;
}

/// Drops the series of pod `uid`.
pub fn forget_pod(uid: &str) {
    COUNTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|s, _| s.pod_uid != uid);
}

/// `/metrics/probes` in the Prometheus text format.
pub fn text() -> String {
    let counts = COUNTS.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = String::from(
        "# HELP prober_probe_total [BETA] Cumulative number of a liveness, readiness or startup probe for a container by result.\n# TYPE prober_probe_total counter\n",
    );
    for (s, n) in counts.iter() {
        let _ = writeln!(
            out,
            "prober_probe_total{{container=\"{}\",namespace=\"{}\",pod=\"{}\",pod_uid=\"{}\",probe_type=\"{}\",result=\"{}\"}} {n}",
            crate::model::prom_text::escape(&s.container),
            crate::model::prom_text::escape(&s.namespace),
            crate::model::prom_text::escape(&s.pod),
            crate::model::prom_text::escape(&s.pod_uid),
            s.probe_type,
            s.result
        );
    }
    out
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

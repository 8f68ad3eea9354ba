//! kube-proxy's metrics, under kube-proxy's names on its metrics address
//! (`--proxy-metrics-bind-address`, kube-proxy's `metricsBindAddress`
//! 127.0.0.1:10249, `/metrics`): how long each sync of the Service datapath took and
//! when the last one succeeded (per IP family), the programming latency of
//! EndpointSlice changes (from their `endpoints.kubernetes.io/last-change-trigger-time`
//! to the change in the maps), and the Service and EndpointSlice changes seen and still
//! waiting for a sync.

use std::fmt::Write as _;
use std::sync::Mutex;

/// A cumulative histogram in Prometheus' text format.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: Vec<f64>) -> Self {
        Self {
            counts: vec![0; bounds.len()],
            bounds,
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        let v = v.max(0.0);
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// The series of this histogram named `name`, with `labels` (`k="v"` pairs).
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

/// kube-proxy's buckets for programming latency: 0.25 s and 0.5 s, each second to 59 s,
/// every 5 s to 115 s, every 30 s to 5 min.
pub fn programming_buckets() -> Vec<f64> {
    let mut b = vec![0.25, 0.5];
    b.extend((1..=59).map(f64::from));
    b.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    b.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    b
}

/// kube-proxy's buckets for sync durations: 1 ms doubling 15 times.
pub fn sync_buckets() -> Vec<f64> {
    (0..15).map(|i| 0.001 * f64::from(1u32 << i)).collect()
}

#[derive(Debug)]
struct State {
    /// `IPv4` and/or `IPv6`: the families the datapath serves.
    families: Vec<&'static str>,
    sync: Histogram,
    programming: Histogram,
    last_sync: Option<f64>,
    service_changes: u64,
    endpoint_changes: u64,
    service_pending: u64,
    endpoint_pending: u64,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn with<T>(f: impl FnOnce(&mut State) -> T) -> T {
    let mut g = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let s = g.get_or_insert_with(|| State {
        families: vec!["IPv4"],
        sync: Histogram::new(sync_buckets()),
        programming: Histogram::new(programming_buckets()),
        last_sync: None,
        service_changes: 0,
        endpoint_changes: 0,
        service_pending: 0,
        endpoint_pending: 0,
    });
    f(s)
}

/// The IP families the node's datapath serves (from its addresses).
pub fn set_families(ips: &[std::net::IpAddr]) {
    let mut f: Vec<&'static str> = Vec::new();
    for ip in ips {
        let name = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        if !f.contains(&name) {
            f.push(name);
        }
    }
    if !f.is_empty() {
        with(|s| s.families = f);
    }
}

/// A Service change seen (`service`) or an EndpointSlice change.
pub fn changed(service: bool) {
    with(|s| {
        if service {
            s.service_changes += 1;
            s.service_pending += 1;
        } else {
            s.endpoint_changes += 1;
            s.endpoint_pending += 1;
        }
    });
}

/// A sync of the datapath that took `seconds` and succeeded (or not).
pub fn synced(seconds: f64, ok: bool) {
    with(|s| {
        s.sync.observe(seconds);
        if ok {
            s.last_sync =
                Some(k8s_openapi::jiff::Timestamp::now().as_millisecond() as f64 / 1000.0);
            s.service_pending = 0;
            s.endpoint_pending = 0;
        }
    });
}

/// One EndpointSlice change that took `seconds` from its trigger to the datapath.
pub fn observe_programming(seconds: f64) {
    with(|s| s.programming.observe(seconds));
}

/// The seconds from `trigger` (the annotation's RFC 3339 time) to `now`.
pub fn since_trigger(trigger: &str, now: k8s_openapi::jiff::Timestamp) -> Option<f64> {
    let t: k8s_openapi::jiff::Timestamp = trigger.parse().ok()?;
    Some((now.as_millisecond() - t.as_millisecond()) as f64 / 1000.0)
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} [ALPHA] {help}\n# TYPE {name} {kind}");
}

/// Everything in Prometheus' text format.
pub fn text() -> String {
    with(|s| {
        let mut out = String::new();
        let name = "kubeproxy_sync_proxy_rules_duration_seconds";
        header(
            &mut out,
            name,
            "SyncProxyRules latency in seconds",
            "histogram",
        );
        for f in &s.families {
            s.sync.write(&mut out, name, &format!("ip_family=\"{f}\""));
        }
        let name = "kubeproxy_sync_proxy_rules_last_timestamp_seconds";
        header(
            &mut out,
            name,
            "The last time proxy rules were successfully synced",
            "gauge",
        );
        for f in &s.families {
            let _ = writeln!(
                out,
                "{name}{{ip_family=\"{f}\"}} {}",
                s.last_sync.unwrap_or(0.0)
            );
        }
        let name = "kubeproxy_network_programming_duration_seconds";
        header(
            &mut out,
            name,
            "In Cluster Network Programming Latency in seconds",
            "histogram",
        );
        for f in &s.families {
            s.programming
                .write(&mut out, name, &format!("ip_family=\"{f}\""));
        }
        for (name, help, kind, v) in [
            (
                "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                "Pending proxy rules Endpoint changes",
                "gauge",
                s.endpoint_pending,
            ),
            (
                "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                "Cumulative proxy rules Endpoint changes",
                "counter",
                s.endpoint_changes,
            ),
            (
                "kubeproxy_sync_proxy_rules_service_changes_pending",
                "Pending proxy rules Service changes",
                "gauge",
                s.service_pending,
            ),
            (
                "kubeproxy_sync_proxy_rules_service_changes_total",
                "Cumulative proxy rules Service changes",
                "counter",
                s.service_changes,
            ),
        ] {
            header(&mut out, name, help, kind);
            let _ = writeln!(out, "{name} {v}");
        }
        out
    })
}

/// Serves `/metrics` on `addr` until `stop`.
pub async fn serve(
    addr: std::net::SocketAddr,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    crate::json_http::listen(
        addr,
        |path| match path.trim_end_matches('/') {
            "/metrics" => {
                let mut a = crate::json_http::Answer::new(200, text());
                a.headers.push((
                    "content-type",
                    "text/plain; version=0.0.4; charset=utf-8".into(),
                ));
                a
            }
            _ => crate::json_http::Answer::new(404, "404 page not found\n"),
        },
        stop,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxys_buckets() {
        let b = programming_buckets();
        assert_eq!(b.len(), 2 + 59 + 12 + 7);
        assert_eq!(
            (b[0], b[2], b[60], b[61], b[73], b[79]),
            (0.25, 1.0, 59.0, 60.0, 120.0, 300.0)
        );
        let s = sync_buckets();
        assert_eq!((s.len(), s[0], s[14]), (15, 0.001, 16.384));
    }

    #[test]
    fn histograms_are_cumulative() {
        let mut h = Histogram::new(vec![1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(9.0);
        let mut out = String::new();
        h.write(&mut out, "x", "ip_family=\"IPv4\"");
        assert!(
            out.contains("x_bucket{ip_family=\"IPv4\",le=\"1\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{ip_family=\"IPv4\",le=\"2\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{ip_family=\"IPv4\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_count{ip_family=\"IPv4\"} 3\n"), "{out}");
    }

    #[test]
    fn changes_are_pending_until_a_sync_succeeds() {
        changed(true);
        changed(false);
        changed(false);
        let t = text();
        assert!(
            t.contains("kubeproxy_sync_proxy_rules_endpoint_changes_pending 2\n"),
            "{t}"
        );
        synced(0.01, false);
        assert!(text().contains("kubeproxy_sync_proxy_rules_service_changes_pending 1\n"));
        synced(0.01, true);
        let t = text();
        assert!(
            t.contains("kubeproxy_sync_proxy_rules_service_changes_pending 0\n"),
            "{t}"
        );
        assert!(
            !t.contains("kubeproxy_sync_proxy_rules_service_changes_total 0\n"),
            "{t}"
        );
        assert!(t.contains("# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram"));
    }
}

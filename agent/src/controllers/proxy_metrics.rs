//! kube-proxy's metrics, under kube-proxy's names on its metrics address
//! (`--proxy-metrics-bind-address`, kube-proxy's `metricsBindAddress`
//! 127.0.0.1:10249, `/metrics`): how long each sync of the Service datapath took and
//! when the last one succeeded (per IP family), the programming latency of
//! EndpointSlice changes (from their `endpoints.kubernetes.io/last-change-trigger-time`
//! to the change in the maps), and the Service and EndpointSlice changes seen and still
//! waiting for a sync.

use std::sync::atomic::AtomicU64;
use std::sync::{LazyLock, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The IP family label of kube-proxy's per-family series.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IpFamily {
    ip_family: &'static str,
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

struct Proxy {
    /// `IPv4` and/or `IPv6`: the families the datapath serves.
    families: Mutex<Vec<&'static str>>,
    sync: Family<IpFamily, Histogram>,
    programming: Family<IpFamily, Histogram>,
    last_sync: Family<IpFamily, Gauge<f64, AtomicU64>>,
    service_changes: Counter,
    endpoint_changes: Counter,
    service_pending: Gauge,
    endpoint_pending: Gauge,
    registry: Registry,
}

static PROXY: LazyLock<Proxy> = LazyLock::new(|| {
    let p = Proxy {
        families: Mutex::new(vec!["IPv4"]),
        sync: Family::new_with_constructor(|| Histogram::new(sync_buckets())),
        programming: Family::new_with_constructor(|| Histogram::new(programming_buckets())),
        last_sync: Family::default(),
        service_changes: Counter::default(),
        endpoint_changes: Counter::default(),
        service_pending: Gauge::default(),
        endpoint_pending: Gauge::default(),
        registry: Registry::default(),
    };
    let mut r = Registry::with_prefix("kubeproxy");
    r.register(
        "sync_proxy_rules_duration_seconds",
        "[ALPHA] SyncProxyRules latency in seconds",
        p.sync.clone(),
    );
    r.register(
        "sync_proxy_rules_last_timestamp_seconds",
        "[ALPHA] The last time proxy rules were successfully synced",
        p.last_sync.clone(),
    );
    r.register(
        "network_programming_duration_seconds",
        "[ALPHA] In Cluster Network Programming Latency in seconds",
        p.programming.clone(),
    );
    r.register(
        "sync_proxy_rules_endpoint_changes_pending",
        "[ALPHA] Pending proxy rules Endpoint changes",
        p.endpoint_pending.clone(),
    );
    r.register(
        "sync_proxy_rules_endpoint_changes",
        "[ALPHA] Cumulative proxy rules Endpoint changes",
        p.endpoint_changes.clone(),
    );
    r.register(
        "sync_proxy_rules_service_changes_pending",
        "[ALPHA] Pending proxy rules Service changes",
        p.service_pending.clone(),
    );
    r.register(
        "sync_proxy_rules_service_changes",
        "[ALPHA] Cumulative proxy rules Service changes",
        p.service_changes.clone(),
    );
    Proxy { registry: r, ..p }
});

/// The families served now.
fn families() -> Vec<&'static str> {
    PROXY
        .families
        .lock()
        .map(|f| f.clone())
        .unwrap_or_else(|p| p.into_inner().clone())
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
        *PROXY.families.lock().unwrap_or_else(|p| p.into_inner()) = f;
    }
}

/// A Service change seen (`service`) or an EndpointSlice change.
pub fn changed(service: bool) {
    if service {
        PROXY.service_changes.inc();
        PROXY.service_pending.inc();
    } else {
        PROXY.endpoint_changes.inc();
        PROXY.endpoint_pending.inc();
    }
}

/// A sync of the datapath that took `seconds` and succeeded (or not).
pub fn synced(seconds: f64, ok: bool) {
    let now = k8s_openapi::jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
    for f in families() {
        let family = IpFamily { ip_family: f };
        PROXY.sync.get_or_create(&family).observe(seconds.max(0.0));
        if ok {
            PROXY.last_sync.get_or_create(&family).set(now);
        }
    }
    if ok {
        PROXY.service_pending.set(0);
        PROXY.endpoint_pending.set(0);
    }
}

/// One EndpointSlice change that took `seconds` from its trigger to the datapath.
pub fn observe_programming(seconds: f64) {
    for f in families() {
        PROXY
            .programming
            .get_or_create(&IpFamily { ip_family: f })
            .observe(seconds.max(0.0));
    }
}

/// The seconds from `trigger` (the annotation's RFC 3339 time) to `now`.
pub fn since_trigger(trigger: &str, now: k8s_openapi::jiff::Timestamp) -> Option<f64> {
    let t: k8s_openapi::jiff::Timestamp = trigger.parse().ok()?;
    Some((now.as_millisecond() - t.as_millisecond()) as f64 / 1000.0)
}

/// Everything in Prometheus' text format (0.0.4, as kube-proxy serves it).
pub fn text() -> String {
    crate::model::prom_text::encode(&PROXY.registry)
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

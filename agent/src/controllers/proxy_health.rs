//! What kube-proxy reports about itself, for the service controller: the health
//! endpoint load balancers and kubelet-less tooling probe (`:10256/healthz`, `/livez`)
//! and the programming-latency histogram (`network_programming_duration_seconds`: from
//! an EndpointSlice's `endpoints.kubernetes.io/last-change-trigger-time` to the moment
//! the change is in the datapath).

use std::sync::{Mutex, OnceLock};

use serde_json::json;

/// The annotation the EndpointSlice controller stamps with the time of the change that
/// caused the slice's last update.
pub const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

#[derive(Debug, Default)]
struct State {
    /// The datapath holds what the Services and EndpointSlices describe.
    synced: bool,
    /// When it last did.
    last_updated: Option<k8s_openapi::jiff::Timestamp>,
    /// The Node is being deleted (or marked for deletion by the cluster autoscaler):
    /// load balancers should stop sending here.
    node_deleting: bool,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(Mutex::default)
}

/// Records the outcome of a sync: `true` when desired and actual agree.
pub fn set_synced(ok: bool) {
    if let Ok(mut s) = state().lock() {
        s.synced = ok;
        if ok {
            s.last_updated = Some(k8s_openapi::jiff::Timestamp::now());
        }
    }
}

pub fn set_node_deleting(deleting: bool) {
    if let Ok(mut s) = state().lock() {
        s.node_deleting = deleting;
    }
}

/// The answer to `path` (`/healthz` counts the node's eligibility, `/livez` does not).
pub fn answer(path: &str) -> (u16, String) {
    let s = state()
        .lock()
        .map(|s| (s.synced, s.last_updated, s.node_deleting));
    let (synced, last, deleting) = s.unwrap_or((false, None, false));
    let now = k8s_openapi::jiff::Timestamp::now();
    let fmt = |t: k8s_openapi::jiff::Timestamp| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let (healthy, body) = match path.trim_end_matches('/') {
        "/healthz" => (
            synced && !deleting,
            json!({"lastUpdated": last.map(fmt), "currentTime": fmt(now), "nodeEligible": !deleting}),
        ),
        "/livez" => (
            synced,
            json!({"lastUpdated": last.map(fmt), "currentTime": fmt(now)}),
        ),
        _ => return (404, "404 page not found\n".into()),
    };
    (if healthy { 200 } else { 503 }, body.to_string())
}

/// Serves `/healthz` and `/livez` on `addr` until `stop`.
pub async fn serve(
    addr: std::net::SocketAddr,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.changed() => return Ok(()),
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        tokio::spawn(crate::json_http::serve(tcp, |path| {
            let (code, body) = answer(path);
            crate::json_http::Answer::new(code, body)
        }));
    }
}

/// kube-proxy's buckets for programming latency: 0.25 s and 0.5 s, each second to 59 s,
/// every 5 s to 115 s, every 30 s to 5 min.
fn buckets() -> Vec<f64> {
    let mut b = vec![0.25, 0.5];
    b.extend((1..=59).map(f64::from));
    b.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    b.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    b
}

#[derive(Debug)]
struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

fn histogram() -> &'static Mutex<Histogram> {
    static H: OnceLock<Mutex<Histogram>> = OnceLock::new();
    H.get_or_init(|| {
        let bounds = buckets();
        Mutex::new(Histogram {
            counts: vec![0; bounds.len()],
            bounds,
            sum: 0.0,
            count: 0,
        })
    })
}

/// Records one change that took `seconds` from its trigger to the datapath.
pub fn observe_programming(seconds: f64) {
    let seconds = seconds.max(0.0);
    if let Ok(mut h) = histogram().lock() {
        if let Some(i) = h.bounds.iter().position(|b| seconds <= *b) {
            h.counts[i] += 1;
        }
        h.sum += seconds;
        h.count += 1;
    }
}

/// The seconds from `trigger` (the annotation's RFC 3339 time) to `now`.
pub fn since_trigger(trigger: &str, now: k8s_openapi::jiff::Timestamp) -> Option<f64> {
    let t: k8s_openapi::jiff::Timestamp = trigger.parse().ok()?;
    Some((now.as_millisecond() - t.as_millisecond()) as f64 / 1000.0)
}

/// The histogram in Prometheus' text format (cumulative buckets).
pub fn metrics_text() -> String {
    let Ok(h) = histogram().lock() else {
        return String::new();
    };
    let name = "kernlet_network_programming_duration_seconds";
    let mut out = format!(
        "# HELP {name} From an EndpointSlice change (its last-change-trigger-time) to the change in the Service datapath.\n# TYPE {name} histogram\n"
    );
    let mut cumulative = 0;
    for (b, c) in h.bounds.iter().zip(&h.counts) {
        cumulative += c;
        out.push_str(&format!("{name}_bucket{{le=\"{b}\"}} {cumulative}\n"));
    }
    out.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {}\n", h.count));
    out.push_str(&format!("{name}_sum {}\n{name}_count {}\n", h.sum, h.count));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_follows_sync_and_the_nodes_deletion() {
        set_synced(false);
        assert_eq!(answer("/healthz").0, 503, "not synced");
        set_synced(true);
        let (code, body) = answer("/healthz");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!((code, &v["nodeEligible"]), (200, &json!(true)));
        assert!(v["lastUpdated"].is_string());
        set_node_deleting(true);
        assert_eq!(answer("/healthz").0, 503, "the node is going");
        assert_eq!(answer("/livez").0, 200, "livez ignores the node");
        set_node_deleting(false);
        assert_eq!(answer("/nope").0, 404);
    }

    #[test]
    fn the_histogram_counts_in_kube_proxys_buckets() {
        let b = buckets();
        assert_eq!(b.len(), 2 + 59 + 12 + 7);
        assert_eq!(
            (b[0], b[2], b[60], b[61], b[73], b[79]),
            (0.25, 1.0, 59.0, 60.0, 120.0, 300.0)
        );
        let now: k8s_openapi::jiff::Timestamp = "2026-01-01T00:00:02.5Z".parse().unwrap();
        assert_eq!(since_trigger("2026-01-01T00:00:00Z", now), Some(2.5));
        observe_programming(2.5);
        let text = metrics_text();
        assert!(
            text.contains("kernlet_network_programming_duration_seconds_bucket{le=\"3\"} ")
                && text.contains("_count "),
            "{text}"
        );
    }
}

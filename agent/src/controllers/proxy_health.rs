//! kube-proxy's health endpoint, for the service controller: what load balancers and
//! kubelet-less tooling probe (`:10256/healthz`, `/livez`). Its metrics are in
//! `proxy_metrics`.

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
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    crate::json_http::listen(
        addr,
        |path| {
            let (code, body) = answer(path);
            crate::json_http::Answer::new(code, body)
        },
        stop,
    )
    .await
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
}

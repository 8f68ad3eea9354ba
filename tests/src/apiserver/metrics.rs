//! `metrics.k8s.io/v1beta1` as metrics-server serves it through the aggregation layer:
//! NodeMetrics and PodMetrics computed from each node's kubelet `/metrics/resource`
//! (the same scrape metrics-server makes, with the apiserver's kubelet client
//! certificate). CPU is a rate between two scrapes (the previous one when it is recent,
//! else a second scrape a second later), memory the working set of the newest; so
//! `kubectl top` works against the nodes of the test kit as against a cluster running
//! metrics-server.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One scrape of a kubelet's `/metrics/resource`.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub taken: Option<Instant>,
    /// (namespace, pod, container) → (cpu core-seconds, working set bytes, at ms).
    pub containers: BTreeMap<(String, String, String), Usage>,
    pub node: Usage,
}

/// Cumulative CPU, working set, and when the kubelet sampled them (ms since the epoch).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub cpu_seconds: Option<f64>,
    pub memory_bytes: Option<f64>,
    pub at_ms: Option<i64>,
}

/// `name{labels} value [timestamp]` lines of the Prometheus text format, the families
/// metrics-server reads.
pub fn parse(text: &str) -> Scrape {
    let mut out = Scrape::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let Some(close) = line[open..].find('}').map(|c| open + c) else {
                    continue;
                };
                (&line[..open], &line[open + 1..close], &line[close + 1..])
            }
            None => match line.split_once(' ') {
                Some((n, r)) => (n, "", r),
                None => continue,
            },
        };
        let mut fields = rest.split_whitespace();
        let Some(value) = fields.next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let at_ms = fields.next().and_then(|t| t.parse::<i64>().ok());
        let label = |key: &str| -> String {
            labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().trim_matches('"').to_string())
                .unwrap_or_default()
        };
        let usage = match name {
            "container_cpu_usage_seconds_total" | "container_memory_working_set_bytes" => out
                .containers
                .entry((label("namespace"), label("pod"), label("container")))
                .or_default(),
            "node_cpu_usage_seconds_total" | "node_memory_working_set_bytes" => &mut out.node,
            _ => continue,
        };
        if name.ends_with("_cpu_usage_seconds_total") {
            usage.cpu_seconds = Some(value);
        } else {
            usage.memory_bytes = Some(value);
        }
        usage.at_ms = at_ms.or(usage.at_ms);
    }
    out
}

/// CPU in nanocores between two samples of the same series, as metrics-server
/// computes it; `None` when either lacks CPU or time did not advance.
pub fn cpu_nanocores(older: &Usage, newer: &Usage, elapsed: Duration) -> Option<u64> {
    let (a, b) = (older.cpu_seconds?, newer.cpu_seconds?);
    let secs = match (older.at_ms, newer.at_ms) {
        (Some(x), Some(y)) if y > x => (y - x) as f64 / 1000.0,
        _ => elapsed.as_secs_f64(),
    };
    if secs <= 0.0 || b < a {
        return None;
    }
    Some(((b - a) / secs * 1e9).round() as u64)
}

/// The `usage` of a metrics object: CPU in nanocores, memory in KiB (metrics-server's
/// units).
pub fn usage_json(cpu_nanocores: u64, memory_bytes: f64) -> serde_json::Value {
    serde_json::json!({
        "cpu": format!("{cpu_nanocores}n"),
        "memory": format!("{}Ki", (memory_bytes / 1024.0).round() as u64),
    })
}

/// How old the previous scrape may be to serve as the rate's start.
pub const REUSE: Duration = Duration::from_secs(60);
/// The gap between two scrapes when there is no recent previous one.
pub const GAP: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kubelet_resource_metrics_and_computes_rates() {
        let a = parse(
            "# HELP container_cpu_usage_seconds_total x\n\
             container_cpu_usage_seconds_total{container=\"c\",namespace=\"default\",pod=\"web\"} 1.5 1000\n\
             container_memory_working_set_bytes{container=\"c\",namespace=\"default\",pod=\"web\"} 2097152 1000\n\
             node_cpu_usage_seconds_total 100 1000\n\
             node_memory_working_set_bytes 1048576 1000\n",
        );
        let b = parse(
            "container_cpu_usage_seconds_total{container=\"c\",namespace=\"default\",pod=\"web\"} 1.75 2000\n\
             node_cpu_usage_seconds_total 101.5 2000\n",
        );
        let key = ("default".to_string(), "web".to_string(), "c".to_string());
        assert_eq!(a.containers[&key].memory_bytes, Some(2_097_152.0));
        assert_eq!(
            cpu_nanocores(&a.containers[&key], &b.containers[&key], GAP),
            Some(250_000_000)
        );
        assert_eq!(cpu_nanocores(&a.node, &b.node, GAP), Some(1_500_000_000));
        assert_eq!(
            usage_json(250_000_000, 2_097_152.0),
            serde_json::json!({"cpu": "250000000n", "memory": "2048Ki"})
        );
    }
}

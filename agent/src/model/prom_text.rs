//! The Prometheus text exposition format (0.0.4): how the hand-built endpoints escape a
//! label value, and how the series kept with prometheus-client are written.

/// `v` as a label value goes between double quotes: backslash, double quote and line
/// feed escaped.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `registry` in the Prometheus text format 0.0.4, as kubelet and kube-proxy serve it.
pub fn encode(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_values_are_escaped() {
        assert_eq!(super::escape("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }
}

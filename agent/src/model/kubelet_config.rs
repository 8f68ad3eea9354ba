//! The cluster-wide kubelet settings kubeadm publishes in `kube-system/kubelet-config`
//! (a `KubeletConfiguration`), reduced to what kernlet uses.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Settings a node takes from the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSettings {
    /// Nameservers pods get in `resolv.conf` (dnsPolicy ClusterFirst).
    #[serde(rename = "clusterDNS")]
    pub cluster_dns: Vec<String>,
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// Whether the kubelet API lets anonymous requests in.
    pub anonymous_auth: bool,
    /// Whether bearer tokens are checked with TokenReview.
    pub webhook_authentication: bool,
    /// `Webhook` (SubjectAccessReview) or `AlwaysAllow`.
    pub authorization_mode: String,
    /// Whether the client certificate is rotated before expiry.
    pub rotate_certificates: bool,
    /// Whether the serving certificate comes from a kubelet-serving CSR.
    #[serde(rename = "serverTLSBootstrap")]
    pub server_tls_bootstrap: bool,
}

impl Default for ClusterSettings {
    /// kubelet's defaults when the cluster publishes nothing.
    fn default() -> Self {
        Self {
            cluster_dns: Vec::new(),
            cluster_domain: "cluster.local".into(),
            anonymous_auth: false,
            webhook_authentication: true,
            authorization_mode: "Webhook".into(),
            rotate_certificates: true,
            server_tls_bootstrap: true,
        }
    }
}

/// Parses the `kubelet` key of the ConfigMap; absent fields keep kubelet's defaults.
pub fn parse(kubelet_yaml: &str) -> Result<ClusterSettings, String> {
    let v: Value =
        serde_saphyr::from_str(kubelet_yaml).map_err(|e| format!("not valid YAML: {e}"))?;
    if v.get("kind").and_then(Value::as_str) != Some("KubeletConfiguration") {
        return Err("not a KubeletConfiguration".into());
    }
    let d = ClusterSettings::default();
    let bool_at = |p: &str, default: bool| v.pointer(p).and_then(Value::as_bool).unwrap_or(default);
    let str_at = |p: &str, default: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_string()
    };
    Ok(ClusterSettings {
        cluster_dns: v
            .get("clusterDNS")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        cluster_domain: str_at("/clusterDomain", &d.cluster_domain),
        anonymous_auth: bool_at("/authentication/anonymous/enabled", d.anonymous_auth),
        webhook_authentication: bool_at(
            "/authentication/webhook/enabled",
            d.webhook_authentication,
        ),
        authorization_mode: str_at("/authorization/mode", &d.authorization_mode),
        rotate_certificates: bool_at("/rotateCertificates", d.rotate_certificates),
        server_tls_bootstrap: bool_at("/serverTLSBootstrap", d.server_tls_bootstrap),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_kubeadm_kubelet_config() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/k8s/bootstrap/00-kubelet-config.json"
        );
        let cm: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let s = parse(cm["data"]["kubelet"].as_str().unwrap()).unwrap();
        assert_eq!(s.cluster_dns, ["10.96.0.10"]);
        assert_eq!(s.cluster_domain, "cluster.local");
        assert!(
            !s.anonymous_auth
                && s.webhook_authentication
                && s.rotate_certificates
                && s.server_tls_bootstrap
        );
        assert_eq!(s.authorization_mode, "Webhook");
        assert!(parse("kind: Pod").is_err());
        assert_eq!(
            parse("kind: KubeletConfiguration").unwrap(),
            ClusterSettings::default()
        );
    }
}

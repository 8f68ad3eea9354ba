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

/// What the node's own flags say about the settings the cluster also publishes; a flag
/// given wins over the cluster's value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--cluster-dns` (empty: not given).
    pub cluster_dns: Vec<String>,
    /// `--cluster-domain`.
    pub cluster_domain: Option<String>,
    /// `--anonymous-auth`.
    pub anonymous_auth: Option<bool>,
}

/// How the kubelet API decides who may do what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authorization {
    /// Every authenticated request is allowed (kubelet's `AlwaysAllow`).
    AlwaysAllow,
    /// A SubjectAccessReview per request (kubelet's `Webhook`).
    Webhook,
}

/// The settings a node runs with: its flags over the cluster's published ones (`None`
/// when the node has none saved) over kubelet's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effective {
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    pub anonymous_auth: bool,
    pub webhook_authentication: bool,
    pub authorization: Authorization,
}

/// Combines the node's flags with the cluster's settings.
pub fn effective(flags: &Overrides, cluster: Option<&ClusterSettings>) -> Effective {
    let base = cluster.cloned().unwrap_or_default();
    Effective {
        cluster_dns: if flags.cluster_dns.is_empty() {
            base.cluster_dns
        } else {
            flags.cluster_dns.clone()
        },
        cluster_domain: flags.cluster_domain.clone().unwrap_or(base.cluster_domain),
        anonymous_auth: flags.anonymous_auth.unwrap_or(base.anonymous_auth),
        webhook_authentication: base.webhook_authentication,
        authorization: if base.authorization_mode == "AlwaysAllow" {
            Authorization::AlwaysAllow
        } else {
            Authorization::Webhook
        },
    }
}

/// The settings `kernlet join` saved under a state directory, if any.
pub fn load(path: &std::path::Path) -> Option<ClusterSettings> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_cluster_over_the_defaults() {
        let cluster = ClusterSettings {
            cluster_dns: vec!["10.96.0.10".into()],
            cluster_domain: "corp.local".into(),
            anonymous_auth: true,
            webhook_authentication: false,
            authorization_mode: "AlwaysAllow".into(),
            ..ClusterSettings::default()
        };
        let none = Overrides::default();
        let e = effective(&none, Some(&cluster));
        assert_eq!(e.cluster_dns, ["10.96.0.10"]);
        assert_eq!(e.cluster_domain, "corp.local");
        assert!(e.anonymous_auth && !e.webhook_authentication);
        assert_eq!(e.authorization, Authorization::AlwaysAllow);
        let flags = Overrides {
            cluster_dns: vec!["192.0.2.53".into()],
            cluster_domain: Some("x.local".into()),
            anonymous_auth: Some(false),
        };
        let e = effective(&flags, Some(&cluster));
        assert_eq!(
            (e.cluster_dns, e.cluster_domain.as_str(), e.anonymous_auth),
            (vec!["192.0.2.53".to_string()], "x.local", false)
        );
        let d = effective(&none, None);
        assert!(d.cluster_dns.is_empty() && d.webhook_authentication && !d.anonymous_auth);
        assert_eq!(
            (d.cluster_domain.as_str(), d.authorization),
            ("cluster.local", Authorization::Webhook)
        );
    }

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

//! `kernlet join`: kubeadm's token discovery and kubelet's TLS bootstrap.
//!
//! 1. Fetch `kube-public/cluster-info` anonymously without trusting the server yet.
//! 2. Trust it only if its `jws-kubeconfig-<token id>` signature verifies with the token
//!    secret and the CA in it matches a `--discovery-token-ca-cert-hash` pin.
//! 3. With the bootstrap token, ask for a client certificate through a CSR
//!    (`kubernetes.io/kube-apiserver-client-kubelet`, `CN=system:node:<name>`,
//!    `O=system:nodes`) and wait for it to be issued.
//! 4. Write the node kubeconfig and key (mode 0600) atomically under the state dir.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::{digest, hmac};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::model::csr::{self, CsrOutcome};
use crate::model::kubelet_config;
use crate::state;

/// Why joining failed, each with the cause and what to do.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "--token {0:?} is not a bootstrap token: expected [a-z0-9]{{6}}.[a-z0-9]{{16}} (see `kubeadm token create`)"
    )]
    BadToken(String),
    #[error(
        "--discovery-token-ca-cert-hash {0:?} is not sha256:<64 hex digits> (see `kubeadm token create --print-join-command`)"
    )]
    BadHash(String),
    #[error(
        "cannot reach the apiserver at {server}: {message}; check the address and that port is open from this node"
    )]
    Unreachable { server: String, message: String },
    #[error(
        "kube-public/cluster-info has no signature for token id {id:?}: the token is unknown to the cluster, expired or deleted; create one with `kubeadm token create`"
    )]
    UnknownToken { id: String },
    #[error("the cluster-info signature does not verify with this token: wrong --token secret")]
    BadSignature,
    #[error(
        "the cluster CA's public key hash is {actual}, which matches no --discovery-token-ca-cert-hash; check the hash from the control plane (this could also be a man in the middle)"
    )]
    CaMismatch { actual: String },
    #[error("kube-public/cluster-info is malformed: {0}")]
    BadClusterInfo(String),
    #[error(
        "the apiserver refused the bootstrap token ({0}); it may have expired — create a new one with `kubeadm token create`"
    )]
    TokenRefused(String),
    #[error(
        "certificate request {name} was denied: {reason}; ask the cluster admin why, then join again"
    )]
    Denied { name: String, reason: String },
    #[error(
        "certificate request {name} was not issued within {waited:?}; approve it with `kubectl certificate approve {name}` or check the CSR approver"
    )]
    NotIssued { name: String, waited: Duration },
    #[error(
        "the issued certificate is not valid now (not before {not_before}, not after {not_after}); the node clock may be wrong — check it (timedatectl, NTP)"
    )]
    ClockSkew {
        not_before: String,
        not_after: String,
    },
    #[error("apiserver request failed: {0}")]
    Api(String),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("generating the node key: {0}")]
    Key(String),
}

/// `sha256:<hex>` of the DER SubjectPublicKeyInfo of a certificate — kubeadm's CA pin.
pub fn ca_pin(cert_der: &[u8]) -> Result<String, JoinError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| JoinError::BadClusterInfo(format!("CA certificate: {e}")))?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    let hash = digest::digest(&digest::SHA256, spki);
    Ok(format!(
        "sha256:{}",
        hash.as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

/// Splits and checks a bootstrap token.
pub fn parse_token(token: &str) -> Result<(&str, &str), JoinError> {
    let bad = || JoinError::BadToken(token.to_string());
    let (id, secret) = token.split_once('.').ok_or_else(bad)?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    if ok(id, 6) && ok(secret, 16) {
        Ok((id, secret))
    } else {
        Err(bad())
    }
}

/// Normalises a `sha256:<hex>` pin.
pub fn parse_pin(pin: &str) -> Result<String, JoinError> {
    let hex = pin
        .strip_prefix("sha256:")
        .ok_or_else(|| JoinError::BadHash(pin.into()))?;
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(JoinError::BadHash(pin.into()));
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// Verifies a detached JWS (`header..signature`, HS256 keyed by the token secret) over
/// the cluster-info kubeconfig, as kubeadm's bootstrap signer writes it.
pub fn verify_jws(jws: &str, payload: &str, id: &str, secret: &str) -> Result<(), JoinError> {
    let mut parts = jws.split('.');
    let (Some(header), Some(""), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JoinError::BadSignature);
    };
    let header_json: serde_json::Value = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or(JoinError::BadSignature)?;
    if header_json["alg"] != "HS256" || header_json["kid"] != id {
        return Err(JoinError::BadSignature);
    }
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| JoinError::BadSignature)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
    hmac::verify(&key, input.as_bytes(), &sig).map_err(|_| JoinError::BadSignature)
}

/// The first CA certificate (DER) of a cluster-info kubeconfig.
fn cluster_ca(kubeconfig: &str) -> Result<Vec<u8>, JoinError> {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig)
        .map_err(|e| JoinError::BadClusterInfo(e.to_string()))?;
    let data = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.certificate_authority_data.clone())
        .ok_or_else(|| JoinError::BadClusterInfo("no certificate-authority-data".into()))?;
    let pem = STANDARD
        .decode(data.trim())
        .map_err(|e| JoinError::BadClusterInfo(format!("CA data: {e}")))?;
    let (_, parsed) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| JoinError::BadClusterInfo(format!("CA PEM: {e}")))?;
    Ok(parsed.contents)
}

fn kubeconfig_text(server: &str, ca_pem: Option<&str>, user: serde_json::Value) -> String {
    let mut cluster = json!({"server": server});
    match ca_pem {
        Some(ca) => cluster["certificate-authority-data"] = json!(STANDARD.encode(ca)),
        None => cluster["insecure-skip-tls-verify"] = json!(true),
    }
    json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "default-cluster", "cluster": cluster}],
        "users": [{"name": "default-auth", "user": user}],
        "contexts": [{"name": "default-context", "context": {"cluster": "default-cluster", "user": "default-auth"}}],
        "current-context": "default-context",
    })
    .to_string()
}

async fn client_from(text: &str) -> Result<kube::Client, JoinError> {
    crate::client::from_kubeconfig_text(text)
        .await
        .map_err(JoinError::Api)
}

/// What `join` needs.
#[derive(Clone, Debug)]
pub struct JoinArgs {
    /// `host:port` of the apiserver.
    pub server: String,
    pub token: String,
    pub ca_pins: Vec<String>,
    pub node_name: String,
    pub state_dir: PathBuf,
    pub csr_timeout: Duration,
}

/// The node kubeconfig path under a state directory.
pub fn kubeconfig_path(state_dir: &Path) -> PathBuf {
    state_dir.join("kubelet.kubeconfig")
}

/// Runs discovery and TLS bootstrap; returns the path of the node kubeconfig written.
pub async fn join(args: &JoinArgs) -> Result<PathBuf, JoinError> {
    let (id, secret) = parse_token(&args.token)?;
    let pins = args
        .ca_pins
        .iter()
        .map(|p| parse_pin(p))
        .collect::<Result<Vec<_>, _>>()?;
    let server = format!("https://{}", args.server.trim_start_matches("https://"));
    let unreachable = |e: kube::Error| JoinError::Unreachable {
        server: server.clone(),
        message: e.to_string(),
    };

    // 1-2. Discovery: untrusted fetch, then signature and CA pin.
    let anon = client_from(&kubeconfig_text(&server, None, json!({}))).await?;
    let info = Api::<ConfigMap>::namespaced(anon, "kube-public")
        .get("cluster-info")
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) => JoinError::Api(format!(
                "reading kube-public/cluster-info: {} ({})",
                s.message, s.code
            )),
            other => unreachable(other),
        })?;
    let data = info.data.unwrap_or_default();
    let kubeconfig = data
        .get("kubeconfig")
        .ok_or_else(|| JoinError::BadClusterInfo("no kubeconfig key".into()))?;
    let jws = data
        .get(&format!("jws-kubeconfig-{id}"))
        .ok_or_else(|| JoinError::UnknownToken { id: id.to_string() })?;
    verify_jws(jws, kubeconfig, id, secret)?;
    let ca_der = cluster_ca(kubeconfig)?;
    let actual = ca_pin(&ca_der)?;
    if !pins.contains(&actual) {
        return Err(JoinError::CaMismatch { actual });
    }
    let ca_pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        STANDARD.encode(&ca_der)
    );
    tracing::info!(%server, ca = %actual, "cluster-info verified with the bootstrap token and the CA pin");

    // 3. TLS bootstrap with the token, now trusting only the pinned CA.
    let boot = client_from(&kubeconfig_text(
        &server,
        Some(&ca_pem),
        json!({"token": args.token}),
    ))
    .await?;
    let key = rcgen::KeyPair::generate().map_err(|e| JoinError::Key(e.to_string()))?;
    let csr_pem =
        csr::node_csr(&args.node_name, None, &key).map_err(|e| JoinError::Key(e.to_string()))?;
    let csr: CertificateSigningRequest = serde_json::from_value(json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "node-csr-"},
        "spec": {"request": STANDARD.encode(&csr_pem), "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                 "usages": ["digital signature", "client auth"]},
    }))
    .map_err(|e| JoinError::Api(e.to_string()))?;
    let csrs: Api<CertificateSigningRequest> = Api::all(boot);
    let created = csrs
        .create(&PostParams::default(), &csr)
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 401 || s.code == 403 => {
                JoinError::TokenRefused(s.message)
            }
            kube::Error::Api(s) => JoinError::Api(s.message),
            other => unreachable(other),
        })?;
    let name = created.metadata.name.unwrap_or_default();
    tracing::info!(csr = %name, "client certificate requested; waiting for approval");
    let started = std::time::Instant::now();
    let cert_pem = loop {
        let csr = csrs
            .get(&name)
            .await
            .map_err(|e| JoinError::Api(e.to_string()))?;
        match csr::outcome(csr.status) {
            CsrOutcome::Issued(cert) => break String::from_utf8_lossy(&cert).into_owned(),
            CsrOutcome::Refused { why, .. } => return Err(JoinError::Denied { name, reason: why }),
            CsrOutcome::Pending => {}
        }
        if started.elapsed() > args.csr_timeout {
            return Err(JoinError::NotIssued {
                name,
                waited: args.csr_timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    check_validity(&cert_pem)?;

    // 4. Credentials on disk, written whole or not at all.
    let key_pem = key.serialize_pem();
    let user = json!({"client-certificate-data": STANDARD.encode(&cert_pem), "client-key-data": STANDARD.encode(&key_pem)});
    let path = kubeconfig_path(&args.state_dir);
    state::write_atomic(
        &args.state_dir.join("pki/kubelet-client.key"),
        key_pem.as_bytes(),
        0o600,
    )?;
    state::write_atomic(
        &args.state_dir.join("pki/kubelet-client.crt"),
        cert_pem.as_bytes(),
        0o644,
    )?;
    state::write_atomic(&args.state_dir.join("pki/ca.crt"), ca_pem.as_bytes(), 0o644)?;
    let node_kubeconfig = kubeconfig_text(&server, Some(&ca_pem), user);
    state::write_atomic(&path, node_kubeconfig.as_bytes(), 0o600)?;
    tracing::info!(kubeconfig = %path.display(), "joined: node credentials written");

    // 5. The cluster's kubelet settings, as `kubeadm join` downloads them.
    let node = client_from(&node_kubeconfig).await?;
    let settings = match Api::<ConfigMap>::namespaced(node, "kube-system")
        .get_opt("kubelet-config")
        .await
    {
        Ok(Some(cm)) => match cm.data.as_ref().and_then(|d| d.get("kubelet")).map(|y| {
            save_config(&args.state_dir, y);
            kubelet_config::parse(y)
        }) {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                tracing::warn!(
                    "kube-system/kubelet-config is unusable ({e}); using kubelet's defaults"
                );
                kubelet_config::ClusterSettings::default()
            }
            None => kubelet_config::ClusterSettings::default(),
        },
        Ok(None) => {
            tracing::warn!(
                "this cluster has no kube-system/kubelet-config; using kubelet's defaults (clusterDomain cluster.local, no cluster DNS)"
            );
            kubelet_config::ClusterSettings::default()
        }
        Err(e) => {
            return Err(JoinError::Api(format!(
                "reading kube-system/kubelet-config: {e}"
            )));
        }
    };
    let settings_json =
        serde_json::to_vec_pretty(&settings).map_err(|e| JoinError::Api(e.to_string()))?;
    state::write_atomic(
        &cluster_settings_path(&args.state_dir),
        &settings_json,
        0o644,
    )?;
    tracing::info!(cluster_dns = ?settings.cluster_dns, cluster_domain = %settings.cluster_domain, "cluster kubelet settings saved");
    Ok(path)
}

/// Where `kernlet join` keeps the cluster's KubeletConfiguration (kubeadm's
/// `/var/lib/kubelet/config.yaml`); `kernlet run --config` takes it.
pub fn config_path(state_dir: &Path) -> PathBuf {
    state_dir.join("config.yaml")
}

/// Saves the cluster's KubeletConfiguration for this node (its client CA the one the
/// join wrote); a config that cannot be read is said and not saved.
fn save_config(state_dir: &Path, yaml: &str) {
    let ca = state_dir.join("pki/ca.crt");
    match crate::model::kubelet_config_file::for_joined_node(yaml, &ca) {
        Ok(text) => match state::write_atomic(&config_path(state_dir), text.as_bytes(), 0o644) {
            Ok(()) => tracing::info!(
                config = %config_path(state_dir).display(),
                "the cluster's KubeletConfiguration saved; this node runs with it"
            ),
            Err(e) => tracing::warn!("saving the cluster's KubeletConfiguration: {e}"),
        },
        Err(e) => tracing::warn!("kube-system/kubelet-config is not kept: {e}"),
    }
}

/// Where the cluster's kubelet settings are kept under a state directory.
pub fn cluster_settings_path(state_dir: &Path) -> PathBuf {
    state_dir.join("cluster-settings.json")
}

fn check_validity(cert_pem: &str) -> Result<(), JoinError> {
    let (from, to) = csr::validity(cert_pem.as_bytes()).ok_or_else(|| {
        JoinError::Api("the issued certificate is not a PEM X.509 certificate".into())
    })?;
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    if now < from || now >= to {
        let show = |t: i64| {
            k8s_openapi::jiff::Timestamp::from_second(t)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| t.to_string())
        };
        return Err(JoinError::ClockSkew {
            not_before: show(from),
            not_after: show(to),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster_info() -> serde_json::Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/k8s/bootstrap/01-cluster-info-anonymous.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn the_recorded_cluster_info_signature_verifies_with_its_token_only() {
        let info = cluster_info();
        let kubeconfig = info["data"]["kubeconfig"].as_str().unwrap();
        let jws = info["data"]["jws-kubeconfig-abcdef"].as_str().unwrap();
        let (id, secret) = parse_token("abcdef.0123456789abcdef").unwrap();
        verify_jws(jws, kubeconfig, id, secret).unwrap();
        assert!(matches!(
            verify_jws(jws, kubeconfig, id, "0123456789abcdee"),
            Err(JoinError::BadSignature)
        ));
        assert!(matches!(
            verify_jws(jws, &format!("{kubeconfig} "), id, secret),
            Err(JoinError::BadSignature)
        ));
        assert!(matches!(
            verify_jws(jws, kubeconfig, "abcdeg", secret),
            Err(JoinError::BadSignature)
        ));
    }

    #[test]
    fn the_recorded_ca_has_a_pin() {
        let info = cluster_info();
        let der = cluster_ca(info["data"]["kubeconfig"].as_str().unwrap()).unwrap();
        let pin = ca_pin(&der).unwrap();
        assert_eq!(parse_pin(&pin).unwrap(), pin);
        assert!(pin.starts_with("sha256:") && pin.len() == 71);
    }

    #[test]
    fn flags_are_checked() {
        assert!(matches!(
            parse_token("abcdef.0123456789abcde"),
            Err(JoinError::BadToken(_))
        ));
        assert!(matches!(
            parse_token("ABCDEF.0123456789abcdef"),
            Err(JoinError::BadToken(_))
        ));
        assert!(matches!(parse_pin("sha1:00"), Err(JoinError::BadHash(_))));
        assert_eq!(
            parse_pin(&format!("sha256:{}", "AB".repeat(32))).unwrap(),
            format!("sha256:{}", "ab".repeat(32))
        );
    }

    #[test]
    fn a_certificate_from_the_future_is_a_clock_problem() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2099, 1, 1);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let pem = params.self_signed(&key).unwrap().pem();
        let err = check_validity(&pem).unwrap_err();
        assert!(matches!(err, JoinError::ClockSkew { .. }), "{err}");
        assert!(err.to_string().contains("clock"));
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        check_validity(&params.self_signed(&key).unwrap().pem()).unwrap();
    }
}

//! Client certificate rotation, as kubelet's certificate manager does it: at a jittered
//! point between 70 % and 90 % of the certificate's lifetime, a new key and a CSR
//! (signer `kubernetes.io/kube-apiserver-client-kubelet`) sent with the current
//! certificate, which kubeadm clusters approve as `selfnodeclient`. The issued pair is
//! written into the kubeconfig in one atomic write, then the shared client is swapped.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::client::{self, SharedClient};
use crate::model::csr::{self, CsrOutcome};
use crate::state;

/// The client certificate (PEM) of the current user of a kubeconfig, inline or by file
/// (relative paths are taken from the kubeconfig's directory, as kubectl does).
pub fn client_certificate(kubeconfig: &Value, dir: &std::path::Path) -> Option<Vec<u8>> {
    let user = current_user(kubeconfig)?;
    if let Some(data) = user.get("client-certificate-data").and_then(Value::as_str) {
        return STANDARD.decode(data.trim()).ok();
    }
    let path = user.get("client-certificate").and_then(Value::as_str)?;
    std::fs::read(dir.join(path)).ok()
}

/// The name of the user the current context uses.
fn current_user_name(kubeconfig: &Value) -> Option<String> {
    let ctx_name = kubeconfig.get("current-context")?.as_str()?;
    let ctx = kubeconfig
        .get("contexts")?
        .as_array()?
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(ctx_name))?;
    Some(ctx.pointer("/context/user")?.as_str()?.to_string())
}

fn current_user(kubeconfig: &Value) -> Option<&Value> {
    let name = current_user_name(kubeconfig)?;
    kubeconfig
        .get("users")?
        .as_array()?
        .iter()
        .find(|u| u.get("name").and_then(Value::as_str) == Some(name.as_str()))?
        .get("user")
}

/// The kubeconfig with the current user's certificate and key replaced by `cert_pem`
/// and `key_pem`, inline (file references are dropped).
pub fn with_credentials(kubeconfig: &Value, cert_pem: &str, key_pem: &str) -> Option<Value> {
    let mut new = kubeconfig.clone();
    let name = current_user_name(kubeconfig)?;
    let user = new
        .get_mut("users")?
        .as_array_mut()?
        .iter_mut()
        .find(|u| u.get("name").and_then(Value::as_str) == Some(name.as_str()))?
        .get_mut("user")?
        .as_object_mut()?;
    user.remove("client-certificate");
    user.remove("client-key");
    user.insert(
        "client-certificate-data".into(),
        json!(STANDARD.encode(cert_pem)),
    );
    user.insert("client-key-data".into(), json!(STANDARD.encode(key_pem)));
    Some(new)
}

/// When to renew a certificate valid `from`..`to` that reached this node in file
/// `path`: kubelet's jittered 70–90 % of its life, the life counted from when the
/// file was written if that is later than notBefore — signers backdate notBefore by
/// minutes, which for a short-lived certificate would put the deadline in the past and
/// renew it again at once.
pub(crate) fn renewal_deadline(from: i64, to: i64, path: &std::path::Path) -> i64 {
    let received = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .unwrap_or(from);
    csr::rotation_deadline(from.max(received.min(to)), to, jitter())
}

/// A number in `[0, 1)` that differs between processes and calls.
fn jitter() -> f64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(k8s_openapi::jiff::Timestamp::now().as_nanosecond() as u128);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Rotates the node's client certificate for as long as kernlet runs.
pub struct ClientRotation {
    pub client: SharedClient,
    pub kubeconfig: PathBuf,
    pub node: String,
    pub state_dir: PathBuf,
}

impl ClientRotation {
    fn read_kubeconfig(&self) -> Result<Value, String> {
        let text = std::fs::read_to_string(&self.kubeconfig)
            .map_err(|e| format!("cannot read {}: {e}", self.kubeconfig.display()))?;
        serde_saphyr::from_str(&text)
            .map_err(|e| format!("{} is not a kubeconfig: {e}", self.kubeconfig.display()))
    }

    /// Runs until `stop`. Without a client certificate in the kubeconfig (a token user)
    /// there is nothing to rotate.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let dir = self
            .kubeconfig
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        loop {
            let validity = self
                .read_kubeconfig()
                .ok()
                .and_then(|kc| client_certificate(&kc, &dir))
                .and_then(|pem| csr::validity(&pem));
            let Some((from, to)) = validity else {
                tracing::info!(kubeconfig = %self.kubeconfig.display(), "no client certificate in the kubeconfig; client certificate rotation is off");
                return;
            };
            // The lifetime counts from when the certificate reached this node (the
            // kubeconfig's mtime) if that is later than notBefore: signers backdate
            // notBefore by minutes, which for a short-lived certificate would put the
            // deadline in the past and rotate it again at once.
            let deadline = renewal_deadline(from, to, &self.kubeconfig);
            let now = k8s_openapi::jiff::Timestamp::now().as_second();
            let wait = Duration::from_secs(u64::try_from(deadline - now).unwrap_or(0));
            tracing::info!(
                "client certificate expires in {}s; rotating in {}s",
                to - now,
                wait.as_secs()
            );
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            let mut backoff = Duration::from_secs(1);
            loop {
                match self.rotate(&mut stop).await {
                    Ok(true) => break,
                    Ok(false) => return,
                    Err(e) => {
                        let left = to - k8s_openapi::jiff::Timestamp::now().as_second();
                        tracing::error!(
                            "client certificate not rotated ({left}s left before it expires): {e}; retrying in {backoff:?}"
                        );
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }

    /// One rotation; `Ok(false)` when stopped while waiting.
    async fn rotate(&self, stop: &mut watch::Receiver<bool>) -> Result<bool, String> {
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let pem = csr::node_csr(&self.node, None, &key).map_err(|e| e.to_string())?;
        let request: CertificateSigningRequest = serde_json::from_value(json!({
            "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"generateName": "csr-"},
            "spec": {"request": STANDARD.encode(pem), "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                     "usages": ["digital signature", "client auth"]},
        }))
        .map_err(|e| e.to_string())?;
        let csrs: Api<CertificateSigningRequest> = Api::all(self.client.get());
        let name = csrs
            .create(&PostParams::default(), &request)
            .await
            .map_err(|e| format!("cannot create the CSR: {e}"))?
            .metadata
            .name
            .unwrap_or_default();
        tracing::info!(csr = %name, "client certificate rotation requested");
        let cert = loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return Ok(false),
            }
            let Ok(csr) = csrs.get(&name).await else {
                continue;
            };
            match csr::outcome(csr.status) {
                CsrOutcome::Pending => {}
                CsrOutcome::Issued(cert) => break cert,
                CsrOutcome::Refused { condition, why } => {
                    return Err(format!(
                        "CSR {name} was {}: {why} (kubeadm clusters approve rotation through the \
                         kubeadm:node-autoapprove-certificate-rotation binding; or run \
                         `kubectl certificate approve` on the next one)",
                        condition.to_lowercase()
                    ));
                }
            }
        };
        let cert = String::from_utf8(cert)
            .map_err(|_| format!("CSR {name}: certificate is not PEM text"))?;
        let key_pem = key.serialize_pem();
        let kubeconfig = self.read_kubeconfig()?;
        let updated = with_credentials(&kubeconfig, &cert, &key_pem).ok_or_else(|| {
            format!(
                "{} has no current user to update",
                self.kubeconfig.display()
            )
        })?;
        let text = serde_json::to_string_pretty(&updated).map_err(|e| e.to_string())?;
        let new_client = client::from_kubeconfig_text(&text)
            .await
            .map_err(|e| format!("the rotated credentials are not usable: {e}"))?;
        // The kubeconfig is the source of truth and is replaced whole; the pki copies
        // are for people and tools.
        state::write_atomic(&self.kubeconfig, text.as_bytes(), 0o600).map_err(|e| e.to_string())?;
        state::write_atomic(
            &self.state_dir.join("pki/kubelet-client.key"),
            key_pem.as_bytes(),
            0o600,
        )
        .and_then(|()| {
            state::write_atomic(
                &self.state_dir.join("pki/kubelet-client.crt"),
                cert.as_bytes(),
                0o644,
            )
        })
        .map_err(|e| e.to_string())?;
        self.client.set(new_client);
        tracing::info!(csr = %name, kubeconfig = %self.kubeconfig.display(), "client certificate rotated");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "n",
            "contexts": [{"name": "other", "context": {"user": "admin"}}, {"name": "n", "context": {"cluster": "c", "user": "node"}}],
            "users": [{"name": "admin", "user": {"token": "t"}}, {"name": "node", "user": {"client-certificate": "pki/a.crt", "client-key": "pki/a.key"}}],
        })
    }

    #[test]
    fn credentials_replace_only_the_current_user() {
        let kc = with_credentials(&kubeconfig(), "CERT", "KEY").unwrap();
        let users = kc["users"].as_array().unwrap();
        assert_eq!(users[0]["user"], json!({"token": "t"}));
        assert_eq!(
            users[1]["user"],
            json!({"client-certificate-data": STANDARD.encode("CERT"), "client-key-data": STANDARD.encode("KEY")})
        );
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(client_certificate(&kc, dir.path()).unwrap(), b"CERT");
    }

    #[test]
    fn a_certificate_file_is_read_relative_to_the_kubeconfig() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pki")).unwrap();
        std::fs::write(dir.path().join("pki/a.crt"), b"PEM").unwrap();
        assert_eq!(
            client_certificate(&kubeconfig(), dir.path()).unwrap(),
            b"PEM"
        );
        let mut token_user = kubeconfig();
        token_user["current-context"] = json!("other");
        assert!(client_certificate(&token_user, dir.path()).is_none());
    }

    #[test]
    fn jitter_is_a_fraction() {
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }
}

//! The kubelet serving certificate through a `kubernetes.io/kubelet-serving` CSR.
//!
//! Serving CSRs are not auto-approved on kubeadm clusters, so a pending one must be
//! impossible to miss: kernlet logs the exact `kubectl certificate approve` command and
//! posts a Warning Event on its Node, then keeps waiting; the issued certificate and key
//! are written under `<state-dir>/pki/` (the API server picks them up at the next
//! handshake). Like the client certificate, it is renewed at a jittered point between
//! 70 % and 90 % of its life, the old one serving until the new one is issued; its SANs
//! are the node's name and every node address.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::sync::watch;

use crate::model::csr::{self, CsrOutcome};
use crate::state;

/// The serving certificate and key under a state directory.
pub fn paths(state_dir: &Path) -> (PathBuf, PathBuf) {
    (
        state_dir.join("pki/kubelet-server.crt"),
        state_dir.join("pki/kubelet-server.key"),
    )
}

/// The log line (and Event message) for a pending serving CSR.
pub fn pending_message(csr: &str) -> String {
    format!(
        "serving certificate request {csr} is pending approval (serving CSRs are not auto-approved); \
         approve it with: kubectl certificate approve {csr}"
    )
}

/// Keeps the node's serving certificate.
pub struct ServingCert {
    pub client: crate::client::SharedClient,
    pub node: String,
    pub ips: Vec<IpAddr>,
    pub state_dir: PathBuf,
}

impl ServingCert {
    async fn event(&self, reason: &str, message: &str) {
        let events: Api<Event> = Api::namespaced(self.client.get(), "default");
        let now = k8s_openapi::jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let suffix = format!("{:x}", k8s_openapi::jiff::Timestamp::now().as_nanosecond());
        let ev: Result<Event, _> = serde_json::from_value(json!({
            "metadata": {"name": format!("{}.{suffix}", self.node), "namespace": "default"},
            "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": self.node},
            "reason": reason, "message": message, "type": "Warning", "count": 1,
            "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet", "reportingInstance": self.node,
        }));
        if let Ok(ev) = ev
            && let Err(e) = events.create(&PostParams::default(), &ev).await
        {
            tracing::warn!("cannot post the {reason} event on node {}: {e}", self.node);
        }
    }

    /// Keeps a valid serving certificate until `stop`: requests one when there is none
    /// (or it has expired), and a new one once the current one reaches its renewal
    /// point. A denied or failed request ends it (the current certificate, if any,
    /// serves until it expires).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let (crt_path, _) = paths(&self.state_dir);
        loop {
            let now = k8s_openapi::jiff::Timestamp::now().as_second();
            if let Some((from, to)) = std::fs::read(&crt_path)
                .ok()
                .and_then(|pem| csr::validity(&pem))
                .filter(|(from, to)| *from <= now && now < *to)
            {
                let at = super::client_cert::renewal_deadline(from, to, &crt_path);
                tracing::info!(cert = %crt_path.display(), renew_in_s = at - now, "serving certificate present and valid");
                if at > now {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs((at - now) as u64)) => {}
                        _ = stop.changed() => return,
                    }
                }
                tracing::info!("renewing the serving certificate");
            }
            if !self.obtain(&mut stop).await {
                return;
            }
        }
    }

    /// Requests a serving certificate and waits for it; `false` when it was refused
    /// or `stop` came first.
    async fn obtain(&self, stop: &mut watch::Receiver<bool>) -> bool {
        let (crt_path, key_path) = paths(&self.state_dir);
        let csrs: Api<CertificateSigningRequest> = Api::all(self.client.get());
        let mut backoff = Duration::from_millis(500);
        let (name, key) = loop {
            match self.request(&csrs).await {
                Ok(v) => break v,
                Err(e) => {
                    tracing::warn!(
                        "cannot request the serving certificate ({e}); retrying in {backoff:?}"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return false,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        };
        let record = crate::doctor::serving_csr_record(&self.state_dir);
        let note = |state: &str| {
            let text = json!({"name": name, "state": state}).to_string();
            if let Err(e) = state::write_atomic(&record, text.as_bytes(), 0o644) {
                tracing::warn!("cannot record the serving CSR for kernlet doctor: {e}");
            }
        };
        note("Pending");
        let mut announced = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return false,
            }
            let Ok(csr) = Api::<CertificateSigningRequest>::all(self.client.get())
                .get(&name)
                .await
            else {
                continue;
            };
            match csr::outcome(csr.status) {
                // Not issued at once (approved by hand on kubeadm clusters): say how.
                CsrOutcome::Pending if !announced => {
                    announced = true;
                    let message = pending_message(&name);
                    tracing::warn!("{message}");
                    self.event("CertificateSigningRequestPending", &message)
                        .await;
                }
                CsrOutcome::Pending => {}
                CsrOutcome::Refused { condition, why } => {
                    note(&condition);
                    tracing::error!(
                        "serving certificate request {name} was {}: {why}; restart kernlet to ask again",
                        condition.to_lowercase()
                    );
                    return false;
                }
                CsrOutcome::Issued(cert) => {
                    let written =
                        state::write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)
                            .and_then(|()| state::write_atomic(&crt_path, &cert, 0o644));
                    return match written {
                        Ok(()) => {
                            let _ = std::fs::remove_file(&record);
                            tracing::info!(cert = %crt_path.display(), "serving certificate issued for {name}");
                            true
                        }
                        Err(e) => {
                            tracing::error!("serving certificate issued but not saved: {e}");
                            false
                        }
                    };
                }
            }
        }
    }

    async fn request(
        &self,
        csrs: &Api<CertificateSigningRequest>,
    ) -> Result<(String, rcgen::KeyPair), String> {
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let pem = csr::node_csr(&self.node, Some(&self.ips), &key).map_err(|e| e.to_string())?;
        let csr: CertificateSigningRequest = serde_json::from_value(json!({
            "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"generateName": "csr-"},
            "spec": {"request": STANDARD.encode(pem), "signerName": "kubernetes.io/kubelet-serving",
                     "usages": ["digital signature", "server auth"]},
        }))
        .map_err(|e| e.to_string())?;
        let created = csrs
            .create(&PostParams::default(), &csr)
            .await
            .map_err(|e| e.to_string())?;
        Ok((created.metadata.name.unwrap_or_default(), key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pending_message_has_the_command() {
        assert!(pending_message("csr-abc").contains("kubectl certificate approve csr-abc"));
    }
}

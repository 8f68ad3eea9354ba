//! The controller-manager's parts the tests rely on, run in-process: the root CA
//! publisher and service-account controller per namespace, and the CSR approver and
//! signer (kubeadm auto-approves node client certificates; serving ones stay Pending).

use std::sync::Arc;

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use super::authz::{self, Attributes, Decision, Identity};
use super::errors::ApiError;
use super::http::Server;
use super::resources;
use super::store::{EventKind, name_of, now_rfc3339, strings};

/// kubeadm's `jws-kubeconfig-<id>`: a detached compact JWS (HS256, key = token secret).
pub fn detached_jws(payload: &str, id: &str, secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "kid": id}).to_string());
    let body = URL_SAFE_NO_PAD.encode(payload);
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let sig = hmac::sign(&key, format!("{header}.{body}").as_bytes());
    format!("{header}..{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

fn rt(plural: &str, group: &str) -> &'static resources::ResourceType {
    resources::RESOURCES
        .iter()
        .find(|r| r.plural == plural && r.group == group)
        .unwrap_or(&resources::RESOURCES[0])
}

/// `kube-root-ca.crt` and the `default` ServiceAccount in a namespace.
pub fn namespace_defaults(server: &Server, ns: &str) {
    let store = &server.store;
    if store
        .get(rt("configmaps", ""), ns, "kube-root-ca.crt")
        .is_none()
    {
        let _ = store.create(rt("configmaps", ""), ns, json!({"metadata": {"name": "kube-root-ca.crt", "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}}, "data": {"ca.crt": server.ca.cert_pem}}));
    }
    if store
        .get(rt("serviceaccounts", ""), ns, "default")
        .is_none()
    {
        let _ = store.create(
            rt("serviceaccounts", ""),
            ns,
            json!({"metadata": {"name": "default"}}),
        );
    }
}

/// Fills every new namespace.
pub async fn namespace_controller(server: Arc<Server>) {
    let mut changes = server.store.subscribe();
    while let Ok(c) = changes.recv().await {
        if c.resource == "namespaces" && c.kind == EventKind::Added {
            namespace_defaults(&server, &name_of(&c.object));
        }
    }
}

const CLIENT_KUBELET: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const SERVING: &str = "kubernetes.io/kubelet-serving";
const CLIENT: &str = "kubernetes.io/kube-apiserver-client";

fn requester(csr: &Value) -> Identity {
    let user = csr
        .pointer("/spec/username")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let groups = strings(csr.pointer("/spec/groups"));
    Identity { user, groups }
}

fn csr_pem(csr: &Value) -> Option<String> {
    let raw = csr.pointer("/spec/request").and_then(Value::as_str)?;
    String::from_utf8(STANDARD.decode(raw).ok()?).ok()
}

fn has_condition(csr: &Value, ty: &str) -> bool {
    csr.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.get("type").and_then(Value::as_str) == Some(ty))
        })
}

/// The csrapproving controller's rule for kubelet client certificates.
fn auto_approvable(server: &Server, csr: &Value) -> bool {
    if csr.pointer("/spec/signerName").and_then(Value::as_str) != Some(CLIENT_KUBELET) {
        return false;
    }
    let Some((cn, orgs)) = csr_pem(csr).and_then(|p| super::pki::csr_identity(&p)) else {
        return false;
    };
    if orgs != ["system:nodes"] || !cn.starts_with("system:node:") {
        return false;
    }
    let id = requester(csr);
    let sub = if id.user == cn {
        "selfnodeclient"
    } else {
        "nodeclient"
    };
    let a = Attributes {
        verb: "create",
        rt: rt("certificatesigningrequests", "certificates.k8s.io"),
        subresource: Some(sub),
        namespace: "",
        name: None,
        field_selector: None,
    };
    authz::authorize(&server.store, &id, &a) == Decision::Allow
}

/// Approves a CSR (what `kubectl certificate approve` does).
pub fn approve(server: &Server, name: &str, reason: &str) -> Result<Value, ApiError> {
    let r = rt("certificatesigningrequests", "certificates.k8s.io");
    server.store.modify(r, "", name, |cur| {
        if has_condition(cur, "Approved") || has_condition(cur, "Denied") {
            return Ok(None);
        }
        let mut new = cur.clone();
        let cond = json!({"type": "Approved", "status": "True", "reason": reason, "message": "approved by the test kit", "lastUpdateTime": now_rfc3339(), "lastTransitionTime": now_rfc3339()});
        let mut conds = new.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
        conds.push(cond);
        new["status"]["conditions"] = json!(conds);
        Ok(Some(new))
    })
}

fn sign(server: &Server, csr: &Value) -> Option<Value> {
    let signer = csr.pointer("/spec/signerName").and_then(Value::as_str)?;
    if ![CLIENT_KUBELET, SERVING, CLIENT].contains(&signer)
        || !has_condition(csr, "Approved")
        || has_condition(csr, "Denied")
        || csr.pointer("/status/certificate").is_some()
    {
        return None;
    }
    let pem = csr_pem(csr)?;
    if signer == SERVING
        && let Some(why) = unservable(&pem)
    {
        // The real signer's validation: the CSR is marked Failed, never signed.
        return modify_csr(server, &name_of(csr), |cur| {
            if has_condition(cur, "Failed") {
                return None;
            }
            let mut new = cur.clone();
            let mut conds = new
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            conds.push(json!({"type": "Failed", "status": "True", "reason": "SignerValidationFailure", "message": why, "lastUpdateTime": now_rfc3339(), "lastTransitionTime": now_rfc3339()}));
            new["status"]["conditions"] = json!(conds);
            Some(new)
        });
    }
    let seconds = csr
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or_else(|| {
            server
                .signing_seconds
                .load(std::sync::atomic::Ordering::Relaxed)
        });
    let usages: Vec<&str> = csr
        .pointer("/spec/usages")
        .and_then(Value::as_array)
        .map(|u| u.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let cert = server.ca.sign_csr(&pem, seconds, &usages).ok()?;
    modify_csr(server, &name_of(csr), |cur| {
        let mut new = cur.clone();
        new["status"]["certificate"] = json!(STANDARD.encode(&cert));
        Some(new)
    })
}

/// Rewrites CSR `name` with `change` (`None`: leave it), as the signer's status writes.
fn modify_csr(
    server: &Server,
    name: &str,
    change: impl FnOnce(&Value) -> Option<Value>,
) -> Option<Value> {
    server
        .store
        .modify(
            rt("certificatesigningrequests", "certificates.k8s.io"),
            "",
            name,
            |cur| Ok(change(cur)),
        )
        .ok()
}

/// Why the kubelet-serving signer refuses a CSR, as kube-controller-manager's does: a
/// node identity with at least one DNS or IP name.
fn unservable(pem: &str) -> Option<String> {
    let (cn, orgs) = super::pki::csr_identity(pem)?;
    if orgs != ["system:nodes"] || !cn.starts_with("system:node:") {
        return Some("subject organization is not system:nodes or common name does not begin with system:node:".into());
    }
    if super::pki::csr_san_count(pem) == 0 {
        return Some("DNS or IP subjectAltName is required".into());
    }
    None
}

/// Approves kubelet client CSRs that kubeadm would, and signs every approved CSR of the
/// built-in signers.
pub async fn csr_controller(server: Arc<Server>) {
    let mut changes = server.store.subscribe();
    while let Ok(c) = changes.recv().await {
        if c.resource != "certificatesigningrequests" || c.kind == EventKind::Deleted {
            continue;
        }
        let csr = c.object;
        if c.kind == EventKind::Added
            && server
                .csr_auto_approve
                .load(std::sync::atomic::Ordering::Relaxed)
            && auto_approvable(&server, &csr)
        {
            let _ = approve(&server, &name_of(&csr), "AutoApproved");
            continue;
        }
        sign(&server, &csr);
    }
}

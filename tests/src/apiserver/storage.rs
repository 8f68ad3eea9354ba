//! The controller-manager's storage controllers the tests rely on, in-process and
//! reduced to static provisioning: the PersistentVolume binder (a pending claim gets
//! the smallest Available volume of its class, access modes and mode that holds its
//! request — or the volume it names; a deleted claim's volume is Released) and the
//! ephemeral-volume controller (a pod's generic ephemeral volume gets its claim
//! `<pod>-<volume>`, controlled by the pod, deleted with it). Binding is immediate:
//! the kit has no scheduler, so `WaitForFirstConsumer` is not modelled.

use std::sync::Arc;

use serde_json::{Value, json};

use super::http::Server;
use super::resources::{self, ResourceType};
use super::store::{EventKind, name_of, strings};

fn rt(plural: &str) -> &'static ResourceType {
    resources::RESOURCES
        .iter()
        .find(|r| r.plural == plural && r.group.is_empty())
        .expect("a core resource the kit serves")
}

fn text<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

/// Bytes of a quantity as the tests write them (`1Gi`, `500Mi`, `10G`, plain bytes).
fn bytes(q: &str) -> u128 {
    let units: &[(&str, u128)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, mult) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u128>().unwrap_or(0) * mult;
        }
    }
    q.parse().unwrap_or(0)
}

fn fits(pv: &Value, pvc: &Value) -> bool {
    let class = |v: &Value, p: &str| text(v, p).to_string();
    let mode = |v: &Value| {
        let m = text(v, "/spec/volumeMode");
        if m.is_empty() { "Filesystem" } else { m }.to_string()
    };
    let want_modes = strings(pvc.pointer("/spec/accessModes"));
    let have_modes = strings(pv.pointer("/spec/accessModes"));
    pv.pointer("/spec/claimRef").is_none()
        && class(pv, "/spec/storageClassName") == class(pvc, "/spec/storageClassName")
        && mode(pv) == mode(pvc)
        && want_modes.iter().all(|m| have_modes.contains(m))
        && bytes(text(pv, "/spec/capacity/storage"))
            >= bytes(text(pvc, "/spec/resources/requests/storage"))
}

/// Binds `pvc` to the PV `pv` both ways, as the binder writes it.
fn bind(server: &Server, pvc: &Value, pv: &Value) {
    let (ns, claim) = (text(pvc, "/metadata/namespace"), name_of(pvc));
    let claim_ref = json!({"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": ns,
        "name": claim, "uid": text(pvc, "/metadata/uid"),
        "resourceVersion": text(pvc, "/metadata/resourceVersion")});
    let pv_name = name_of(pv);
    let bound_pv = server
        .store
        .modify(rt("persistentvolumes"), "", &pv_name, |cur| {
            if cur.pointer("/spec/claimRef/uid").is_some() {
                return Ok(None);
            }
            let mut new = cur.clone();
            new["spec"]["claimRef"] = claim_ref.clone();
            new["status"] = json!({"phase": "Bound"});
            Ok(Some(new))
        });
    let Ok(bound_pv) = bound_pv else { return };
    if bound_pv.pointer("/spec/claimRef/uid") != pvc.pointer("/metadata/uid") {
        return;
    }
    let _ = server
        .store
        .modify(rt("persistentvolumeclaims"), ns, &claim, |cur| {
            let mut new = cur.clone();
            new["spec"]["volumeName"] = json!(pv_name);
            new["status"] = json!({"phase": "Bound",
                "accessModes": bound_pv.pointer("/spec/accessModes").cloned().unwrap_or(json!([])),
                "capacity": bound_pv.pointer("/spec/capacity").cloned().unwrap_or(json!({}))});
            Ok(Some(new))
        });
}

/// One pass of the binder over every pending claim.
fn bind_pending(server: &Server) {
    let (pvcs, _) = server.store.list(rt("persistentvolumeclaims"), None);
    for pvc in pvcs {
        if text(&pvc, "/status/phase") == "Bound" {
            continue;
        }
        let (pvs, _) = server.store.list(rt("persistentvolumes"), None);
        let named = text(&pvc, "/spec/volumeName");
        let chosen = if named.is_empty() {
            pvs.into_iter()
                .filter(|pv| fits(pv, &pvc))
                .min_by_key(|pv| bytes(text(pv, "/spec/capacity/storage")))
        } else {
            pvs.into_iter().find(|pv| {
                name_of(pv) == named
                    && (pv.pointer("/spec/claimRef").is_none()
                        || pv.pointer("/spec/claimRef/uid").is_none()
                            && text(pv, "/spec/claimRef/name") == name_of(&pvc))
            })
        };
        if let Some(pv) = chosen {
            bind(server, &pvc, &pv);
        }
    }
}

/// A deleted claim's volume is Released (reclaim policy Retain: its data stays).
fn release(server: &Server, pvc: &Value) {
    let (pvs, _) = server.store.list(rt("persistentvolumes"), None);
    for pv in pvs {
        if pv.pointer("/spec/claimRef/uid") == pvc.pointer("/metadata/uid") {
            let _ = server
                .store
                .modify(rt("persistentvolumes"), "", &name_of(&pv), |cur| {
                    let mut new = cur.clone();
                    new["status"] = json!({"phase": "Released"});
                    Ok(Some(new))
                });
        }
    }
}

/// The claims of a pod's generic ephemeral volumes.
fn ephemeral_claims(pod: &Value) -> Vec<Value> {
    let pod_name = name_of(pod);
    pod.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let template = v.pointer("/ephemeral/volumeClaimTemplate")?;
            let mut claim = json!({"metadata": template.get("metadata").cloned().unwrap_or(json!({})),
                "spec": template.get("spec").cloned().unwrap_or(json!({}))});
            claim["metadata"]["name"] = json!(format!("{pod_name}-{}", text(v, "/name")));
            claim["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "Pod",
                "name": pod_name, "uid": text(pod, "/metadata/uid"),
                "controller": true, "blockOwnerDeletion": true}]);
            Some(claim)
        })
        .collect()
}

/// Runs the binder and the ephemeral-volume controller on the store's changes.
pub async fn storage_controller(server: Arc<Server>) {
    let mut changes = server.store.subscribe();
    while let Ok(c) = changes.recv().await {
        match (c.resource, c.kind) {
            ("pods", EventKind::Added) => {
                for claim in ephemeral_claims(&c.object) {
                    let _ = server
                        .store
                        .create(rt("persistentvolumeclaims"), &c.namespace, claim);
                }
            }
            ("pods", EventKind::Deleted) => {
                for claim in ephemeral_claims(&c.object) {
                    let _ = server.store.remove(
                        rt("persistentvolumeclaims"),
                        &c.namespace,
                        &name_of(&claim),
                    );
                }
            }
            ("persistentvolumeclaims", EventKind::Deleted) => release(&server, &c.object),
            ("persistentvolumeclaims" | "persistentvolumes", _) => bind_pending(&server),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_fits_a_claim_by_class_mode_access_and_size() {
        let pv = json!({"spec": {"storageClassName": "local", "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"]}});
        let pvc = |size: &str, class: &str| {
            json!({"spec": {"storageClassName": class, "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": size}}}})
        };
        assert!(fits(&pv, &pvc("500Mi", "local")));
        assert!(!fits(&pv, &pvc("2Gi", "local")));
        assert!(!fits(&pv, &pvc("1Mi", "other")));
        let block = json!({"spec": {"storageClassName": "local", "volumeMode": "Block",
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}});
        assert!(!fits(&pv, &block));
    }
}

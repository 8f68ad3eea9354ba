//! The controller-manager's StatefulSet controller the tests rely on, in-process and
//! reduced to what the kubernetes.io StatefulSet documentation describes for
//! `OrderedReady` pods: pod `<set>-<ordinal>` for each ordinal below `replicas`, its
//! claims `<template>-<set>-<ordinal>` made from `volumeClaimTemplates` before it (and
//! kept when the pod goes, so a recreated pod finds its data), hostname the pod's
//! name and subdomain the set's `serviceName`; ordinal N is created only once every
//! lower one is Running and Ready; a pod that goes is made again. Pods are not
//! scheduled (the kit has no scheduler): tests bind them. Scale-down and rolling
//! updates are not modelled.

use std::sync::Arc;

use serde_json::{Value, json};

use super::http::Server;
use super::resources::{self, ResourceType};
use super::store::{EventKind, name_of};

fn rt(plural: &str, group: &str) -> &'static ResourceType {
    resources::RESOURCES
        .iter()
        .find(|r| r.plural == plural && r.group == group)
        .expect("a resource the kit serves")
}

fn text<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

/// Whether a pod is Running with its Ready condition True.
fn running_and_ready(pod: &Value) -> bool {
    text(pod, "/status/phase") == "Running"
        && pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| text(c, "/type") == "Ready" && text(c, "/status") == "True")
}

fn owner(set: &Value) -> Value {
    json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name_of(set),
        "uid": text(set, "/metadata/uid"), "controller": true, "blockOwnerDeletion": true}])
}

/// The claims of ordinal `i`, as the controller makes them.
fn claims(set: &Value, i: u64) -> Vec<Value> {
    let selector = set
        .pointer("/spec/selector/matchLabels")
        .cloned()
        .unwrap_or(json!({}));
    set.pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|t| {
            let mut claim = json!({"metadata": t.get("metadata").cloned().unwrap_or(json!({})),
                "spec": t.get("spec").cloned().unwrap_or(json!({}))});
            claim["metadata"]["name"] = json!(format!(
                "{}-{}-{i}",
                text(t, "/metadata/name"),
                name_of(set)
            ));
            claim["metadata"]["labels"] = selector.clone();
            claim
        })
        .collect()
}

/// Pod `<set>-<i>` from the set's template.
fn pod(set: &Value, i: u64) -> Value {
    let name = format!("{}-{i}", name_of(set));
    let template = set.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let mut pod = json!({"metadata": template.get("metadata").cloned().unwrap_or(json!({})),
        "spec": template.get("spec").cloned().unwrap_or(json!({}))});
    pod["metadata"]["name"] = json!(name);
    pod["metadata"]["ownerReferences"] = owner(set);
    let labels = &mut pod["metadata"]["labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    labels["statefulset.kubernetes.io/pod-name"] = json!(name);
    labels["apps.kubernetes.io/pod-index"] = json!(i.to_string());
    pod["spec"]["hostname"] = json!(name);
    let service = text(set, "/spec/serviceName");
    if !service.is_empty() {
        pod["spec"]["subdomain"] = json!(service);
    }
    let mut volumes: Vec<Value> = pod["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for t in set
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let vol = text(t, "/metadata/name");
        volumes.retain(|v| text(v, "/name") != vol);
        volumes.push(json!({"name": vol, "persistentVolumeClaim": {
            "claimName": format!("{vol}-{}-{i}", name_of(set))}}));
    }
    pod["spec"]["volumes"] = json!(volumes);
    super::defaults::default_pod(&mut pod);
    pod
}

/// One pass over a set: claims and pods in ordinal order, then its status.
fn reconcile(server: &Server, set: &Value) {
    let ns = text(set, "/metadata/namespace");
    let replicas = set
        .pointer("/spec/replicas")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    let mut ready = 0u64;
    let mut present = 0u64;
    for i in 0..replicas {
        for claim in claims(set, i) {
            let _ = server
                .store
                .create(rt("persistentvolumeclaims", ""), ns, claim);
        }
        let name = format!("{}-{i}", name_of(set));
        match server.store.get(rt("pods", ""), ns, &name) {
            Some(p) => {
                present += 1;
                if !running_and_ready(&p) || p.pointer("/metadata/deletionTimestamp").is_some() {
                    break;
                }
                ready += 1;
            }
            None => {
                let _ = server.store.create(rt("pods", ""), ns, pod(set, i));
                present += 1;
                break;
            }
        }
    }
    let status = json!({"replicas": present, "readyReplicas": ready, "currentReplicas": present,
        "updatedReplicas": present, "availableReplicas": ready,
        "observedGeneration": set.pointer("/metadata/generation").cloned().unwrap_or(json!(1))});
    let _ = server
        .store
        .modify(rt("statefulsets", "apps"), ns, &name_of(set), |cur| {
            if cur.get("status") == Some(&status) {
                return Ok(None);
            }
            let mut new = cur.clone();
            new["status"] = status.clone();
            Ok(Some(new))
        });
}

/// Runs the StatefulSet controller on the store's changes of sets and pods.
pub async fn statefulset_controller(server: Arc<Server>) {
    let mut changes = server.store.subscribe();
    while let Ok(c) = changes.recv().await {
        let relevant = match (c.resource, c.kind) {
            ("statefulsets", EventKind::Added | EventKind::Modified) => true,
            ("pods", _) => {
                c.object
                    .pointer("/metadata/ownerReferences/0/kind")
                    .and_then(Value::as_str)
                    == Some("StatefulSet")
            }
            _ => false,
        };
        if !relevant {
            continue;
        }
        let (sets, _) = server.store.list(rt("statefulsets", "apps"), None);
        for set in sets {
            reconcile(&server, &set);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_and_claims_are_named_by_ordinal() {
        let set = json!({"metadata": {"name": "db", "namespace": "default", "uid": "u"},
            "spec": {"serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"]}}]}});
        let p = pod(&set, 1);
        assert_eq!(name_of(&p), "db-1");
        assert_eq!(text(&p, "/spec/hostname"), "db-1");
        assert_eq!(text(&p, "/spec/subdomain"), "db");
        assert_eq!(
            text(&p, "/spec/volumes/0/persistentVolumeClaim/claimName"),
            "data-db-1"
        );
        assert_eq!(
            text(&p, "/metadata/labels/apps.kubernetes.io~1pod-index"),
            "1"
        );
        assert_eq!(name_of(&claims(&set, 1)[0]), "data-db-1");
        assert_eq!(text(&claims(&set, 1)[0], "/metadata/labels/app"), "db");
    }
}

//! Access to the recorded fixtures: objects from a stock 1.36 control plane.
//!
//! `fixtures/k8s` in this repository is a copy of the shared `../shared/k8s-fixtures`,
//! so a clone builds and tests anywhere; a test checks the copy has not drifted when
//! the shared folder is present.

use std::path::PathBuf;

use serde_json::{Value, json};

/// The fixtures directory.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/k8s")
}

/// The shared fixtures next to the repository, when this checkout has them.
pub fn shared_dir() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/k8s-fixtures");
    p.is_dir().then_some(p)
}

/// A fixture file parsed as JSON.
pub fn json(rel: &str) -> Value {
    let path = dir().join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// An object as a client would send it for create: server-set fields removed.
pub fn for_create(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "ownerReferences",
        ] {
            m.remove(f);
        }
    }
    if let Some(m) = o.as_object_mut() {
        m.remove("status");
    }
    o
}

fn last_applied(obj: &Value) -> Option<Value> {
    let text = obj
        .pointer("/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration")?
        .as_str()?;
    serde_json::from_str(text).ok()
}

/// The fixture workloads as manifests (`demo` namespace): what the recording applied,
/// from the `last-applied-configuration` of every recorded object, plus the web
/// Deployment rebuilt from its pod template (Deployments were not recorded).
pub fn workload_manifests() -> Vec<Value> {
    let mut out =
        vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})];
    for rel in [
        "objects/configmap-web-config.json",
        "objects/secret-web-secret.json",
        "bound-pods/hostnet.json",
    ] {
        out.extend(last_applied(&json(rel)));
    }
    if let Some(items) = json("objects/services.json")
        .get("items")
        .and_then(Value::as_array)
    {
        out.extend(items.iter().filter_map(last_applied));
    }
    let pod = json("bound-pods/web-589c74b5fc-cscnw.json");
    let mut spec = pod["spec"].clone();
    if let Some(m) = spec.as_object_mut() {
        for f in ["nodeName", "serviceAccount", "tolerations"] {
            m.remove(f);
        }
    }
    let injected = |v: &Value| {
        v.get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| n.starts_with("kube-api-access-"))
    };
    if let Some(v) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        v.retain(|x| !injected(x));
    }
    for list in ["containers", "initContainers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(m) = c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
                m.retain(|x| !injected(x));
            }
        }
    }
    out.push(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "demo", "labels": {"app": "web"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": spec}}
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(root: &std::path::Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push((
                        p.strip_prefix(root).unwrap().to_path_buf(),
                        std::fs::read(&p).unwrap(),
                    ));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn vendored_copy_matches_the_shared_fixtures() {
        let Some(shared) = shared_dir() else {
            eprintln!("no ../shared/k8s-fixtures next to this checkout; nothing to compare");
            return;
        };
        let (ours, theirs) = (files(&dir()), files(&shared));
        let names = |v: &[(PathBuf, Vec<u8>)]| v.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&ours),
            names(&theirs),
            "fixtures/k8s lists other files than ../shared/k8s-fixtures: copy it again"
        );
        for ((p, a), (_, b)) in ours.iter().zip(&theirs) {
            assert!(
                a == b,
                "fixtures/k8s/{} differs from the shared copy: copy it again",
                p.display()
            );
        }
    }
}

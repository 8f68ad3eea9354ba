//! Checks, with SelfSubjectAccessReview, that the node identity may do what the overlay
//! and Service load-balancing need beyond NodeRestriction's default (list/watch all
//! Nodes, Services and EndpointSlices), and says exactly what to apply when it may not.

use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use kube::api::{Api, PostParams};
use serde_json::json;

/// `(API group, resource, verb)` the cluster-wide controllers need.
pub const NEEDED: &[(&str, &str, &str)] = &[
    ("", "nodes", "list"),
    ("", "nodes", "watch"),
    ("", "services", "list"),
    ("", "services", "watch"),
    ("discovery.k8s.io", "endpointslices", "list"),
    ("discovery.k8s.io", "endpointslices", "watch"),
];

/// `verb resource[.group]` for a log line.
pub fn describe((group, resource, verb): (&str, &str, &str)) -> String {
    if group.is_empty() {
        format!("{verb} {resource}")
    } else {
        format!("{verb} {resource}.{group}")
    }
}

/// What to tell the operator when permissions are missing.
pub fn advice(missing: &[String]) -> String {
    format!(
        "this node's identity may not {}: the overlay and Service load-balancing need it. \
         Apply the grant once per cluster: kubectl apply -f deploy/rbac.yaml \
         (ClusterRole and ClusterRoleBinding kernlet:node for group system:nodes); \
         the node itself keeps working meanwhile",
        missing.join(", ")
    )
}

/// The needed permissions this identity lacks, asked of the apiserver.
pub async fn missing(client: kube::Client) -> Result<Vec<String>, kube::Error> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client);
    let mut out = Vec::new();
    for &(group, resource, verb) in NEEDED {
        let review: SelfSubjectAccessReview = serde_json::from_value(json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"group": group, "resource": resource, "verb": verb}},
        }))
        .map_err(kube::Error::SerdeError)?;
        let answer = api.create(&PostParams::default(), &review).await?;
        if !answer.status.is_some_and(|s| s.allowed) {
            out.push(describe((group, resource, verb)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_names_what_is_missing_and_the_file_to_apply() {
        let text = advice(&[describe(NEEDED[4]), describe(NEEDED[0])]);
        assert!(
            text.contains("may not list endpointslices.discovery.k8s.io, list nodes"),
            "{text}"
        );
        assert!(text.contains("kubectl apply -f deploy/rbac.yaml"));
    }

    #[test]
    fn the_shipped_grant_covers_every_need() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rbac.yaml");
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&std::fs::read_to_string(path).unwrap()).unwrap();
        let role = docs.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
        let binding = docs
            .iter()
            .find(|d| d["kind"] == "ClusterRoleBinding")
            .unwrap();
        assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
        assert_eq!(binding["subjects"][0]["name"], "system:nodes");
        for &(group, resource, verb) in NEEDED {
            let covered = role["rules"].as_array().unwrap().iter().any(|r| {
                let has = |k: &str, v: &str| r[k].as_array().unwrap().iter().any(|x| x == v);
                has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
            });
            assert!(covered, "{verb} {resource} not granted");
        }
    }
}

//! Authentication results and authorization: the Node authorizer (as the fixtures show
//! it), then RBAC over the stored roles and bindings — `--authorization-mode=Node,RBAC`.

use serde_json::{Value, json};

use super::resources::{self, ResourceType};
use super::selectors::FieldSelector;
use super::store::Store;

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    pub fn new(user: &str, groups: &[&str]) -> Self {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        let group = if user == "system:anonymous" {
            "system:unauthenticated"
        } else {
            "system:authenticated"
        };
        if !groups.iter().any(|g| g == group) {
            groups.push(group.into());
        }
        Self {
            user: user.into(),
            groups,
        }
    }

    pub fn anonymous() -> Self {
        Self::new("system:anonymous", &[])
    }

    /// The node name when this is a node identity (`system:node:<name>` in `system:nodes`).
    pub fn node_name(&self) -> Option<&str> {
        if !self.groups.iter().any(|g| g == "system:nodes") {
            return None;
        }
        self.user.strip_prefix("system:node:")
    }

    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }
}

/// What is being asked for.
#[derive(Debug)]
pub struct Attributes<'a> {
    pub verb: &'a str,
    pub rt: &'static ResourceType,
    pub subresource: Option<&'a str>,
    pub namespace: &'a str,
    pub name: Option<&'a str>,
    pub field_selector: Option<&'a FieldSelector>,
}

/// The decision; a denial carries the reason suffix the real authorizers add.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(Option<String>),
}

enum NodeDecision {
    Allow,
    Deny(String),
    NoOpinion,
}

/// The 403 message for a denied request, in the apiserver's words.
pub fn forbidden_message(id: &Identity, a: &Attributes<'_>, reason: Option<&str>) -> String {
    let resource = match a.subresource {
        Some(s) => format!("{}/{s}", a.rt.plural),
        None => a.rt.plural.to_string(),
    };
    let head = match a.name {
        Some(n) => format!("{} \"{n}\" is forbidden", a.rt.qualified()),
        None => format!("{} is forbidden", a.rt.qualified()),
    };
    let scope = if a.rt.namespaced && !a.namespace.is_empty() {
        format!("in the namespace \"{}\"", a.namespace)
    } else {
        "at the cluster scope".to_string()
    };
    let mut msg = format!(
        "{head}: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
        id.user, a.verb, a.rt.group
    );
    if let Some(r) = reason {
        msg.push_str(": ");
        msg.push_str(r);
    }
    msg
}

/// Authorizes a resource request: Node authorizer first, then RBAC.
pub fn authorize(store: &Store, id: &Identity, a: &Attributes<'_>) -> Decision {
    if id.in_group("system:masters") {
        return Decision::Allow;
    }
    // system:basic-user, bound to every authenticated user: ask about yourself.
    if a.rt.plural == "selfsubjectaccessreviews"
        && a.verb == "create"
        && id.in_group("system:authenticated")
    {
        return Decision::Allow;
    }
    let node_reason = match id.node_name() {
        Some(node) => match node_authorizer(store, node, a) {
            NodeDecision::Allow => return Decision::Allow,
            NodeDecision::Deny(r) => Some(r),
            NodeDecision::NoOpinion => None,
        },
        None => None,
    };
    if rbac_allows(store, id, a) {
        return Decision::Allow;
    }
    Decision::Deny(node_reason)
}

fn rt(plural: &str, group: &str) -> &'static ResourceType {
    resources::RESOURCES
        .iter()
        .find(|r| r.plural == plural && r.group == group)
        .unwrap_or(&resources::RESOURCES[0])
}

fn no_relationship(node: &str) -> NodeDecision {
    NodeDecision::Deny(format!(
        "no relationship found between node '{node}' and this object"
    ))
}

/// Pods bound to `node`.
fn pods_on(store: &Store, node: &str) -> Vec<Value> {
    store
        .list(rt("pods", ""), None)
        .0
        .into_iter()
        .filter(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node))
        .collect()
}

/// Whether a pod refers to a configmap or secret by name (volumes, projected sources,
/// env, envFrom, imagePullSecrets) — the edges of the Node authorizer's graph.
pub fn pod_references(pod: &Value, kind: &str, name: &str) -> bool {
    let text = pod.get("spec").map(Value::to_string).unwrap_or_default();
    let key = match kind {
        "configmaps" => ["configMap", "configMapRef", "configMapKeyRef"],
        "secrets" => ["secret", "secretRef", "secretKeyRef"],
        _ => return false,
    };
    // Walk the spec and look for {"<key>": {"name"|"secretName": name}}.
    fn walk(v: &Value, keys: &[&str; 3], name: &str) -> bool {
        match v {
            Value::Object(m) => m.iter().any(|(k, v)| {
                (keys.contains(&k.as_str())
                    && (v.get("name").and_then(Value::as_str) == Some(name)
                        || v.get("secretName").and_then(Value::as_str) == Some(name)))
                    || walk(v, keys, name)
            }),
            Value::Array(a) => a.iter().any(|v| walk(v, keys, name)),
            _ => false,
        }
    }
    let pull = kind == "secrets"
        && pod
            .pointer("/spec/imagePullSecrets")
            .and_then(Value::as_array)
            .is_some_and(|l| {
                l.iter()
                    .any(|s| s.get("name").and_then(Value::as_str) == Some(name))
            });
    !text.is_empty() && (pull || pod.get("spec").is_some_and(|s| walk(s, &key, name)))
}

/// Whether the secret `ns/name` is a CSI secret (`nodeStageSecretRef`,
/// `nodePublishSecretRef`) of a PV bound to a claim of a pod on the node.
fn pv_secret_of_node(store: &Store, node: &str, ns: &str, name: &str) -> bool {
    let claims = rt("persistentvolumeclaims", "");
    let volumes = rt("persistentvolumes", "");
    pods_on(store, node).iter().any(|p| {
        let pod_ns = p
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        pod_claims(p).iter().any(|c| {
            let Some(pv) = store
                .get(claims, pod_ns, c)
                .and_then(|pvc| {
                    pvc.pointer("/spec/volumeName")?
                        .as_str()
                        .map(str::to_string)
                })
                .and_then(|pv| store.get(volumes, "", &pv))
            else {
                return false;
            };
            ["nodeStageSecretRef", "nodePublishSecretRef"]
                .iter()
                .any(|k| {
                    let r = pv.pointer(&format!("/spec/csi/{k}"));
                    r.and_then(|r| r.get("name")).and_then(Value::as_str) == Some(name)
                        && r.and_then(|r| r.get("namespace")).and_then(Value::as_str) == Some(ns)
                })
        })
    })
}

/// The claims a pod's volumes name: `persistentVolumeClaim.claimName`, and
/// `<pod>-<volume>` for a generic ephemeral volume.
fn pod_claims(pod: &Value) -> Vec<String> {
    let pod_name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    pod.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| {
            if let Some(c) = v
                .pointer("/persistentVolumeClaim/claimName")
                .and_then(Value::as_str)
            {
                return Some(c.to_string());
            }
            v.get("ephemeral")?;
            Some(format!(
                "{pod_name}-{}",
                v.get("name").and_then(Value::as_str).unwrap_or_default()
            ))
        })
        .collect()
}

fn node_authorizer(store: &Store, node: &str, a: &Attributes<'_>) -> NodeDecision {
    let verb = a.verb;
    let same_ns =
        |p: &Value| p.pointer("/metadata/namespace").and_then(Value::as_str) == Some(a.namespace);
    match (a.rt.group, a.rt.plural, a.subresource) {
        ("", "pods", None) => match verb {
            "get" | "delete" => {
                let bound = a
                    .name
                    .and_then(|n| store.get(a.rt, a.namespace, n))
                    .is_some_and(|p| {
                        p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
                    });
                if bound {
                    NodeDecision::Allow
                } else {
                    no_relationship(node)
                }
            }
            "list" | "watch" => {
                if a.field_selector.and_then(|f| f.required("spec.nodeName")) == Some(node) {
                    NodeDecision::Allow
                } else {
                    NodeDecision::Deny(format!(
                        "node '{node}' can only list/watch pods with spec.nodeName field selector"
                    ))
                }
            }
            "create" => NodeDecision::Allow,
            _ => NodeDecision::NoOpinion,
        },
        ("", "pods", Some("status")) => match verb {
            "patch" | "update" => NodeDecision::Allow,
            _ => NodeDecision::NoOpinion,
        },
        ("", "pods", Some("eviction")) if verb == "create" => NodeDecision::Allow,
        ("", "nodes", None) => match verb {
            "get" => {
                if a.name == Some(node) {
                    NodeDecision::Allow
                } else {
                    NodeDecision::Deny(format!(
                        "node '{node}' cannot read '{}', only its own Node object",
                        a.name.unwrap_or_default()
                    ))
                }
            }
            "list" | "watch" => {
                if a.field_selector.and_then(|f| f.required("metadata.name")) == Some(node) {
                    NodeDecision::Allow
                } else {
                    NodeDecision::Deny(format!(
                        "node '{node}' cannot read all nodes, only its own Node object"
                    ))
                }
            }
            "create" | "update" | "patch" | "delete" => NodeDecision::Allow,
            _ => NodeDecision::NoOpinion,
        },
        ("", "nodes", Some("status")) if matches!(verb, "patch" | "update") => NodeDecision::Allow,
        ("coordination.k8s.io", "leases", None) => {
            // A create carries its name in the body, not the path: allowed here, the
            // name is the node's by NodeRestriction's lease rule.
            let own = a.name == Some(node)
                && matches!(verb, "get" | "create" | "update" | "patch" | "delete");
            if a.namespace == "kube-node-lease" && (own || verb == "create") {
                NodeDecision::Allow
            } else {
                NodeDecision::Deny(
                    "can only access node lease with the same name as the requesting node"
                        .to_string(),
                )
            }
        }
        ("" | "events.k8s.io", "events", None) if matches!(verb, "create" | "patch" | "update") => {
            NodeDecision::Allow
        }
        ("certificates.k8s.io", "certificatesigningrequests", None)
            if matches!(verb, "create" | "get" | "list" | "watch") =>
        {
            NodeDecision::Allow
        }
        ("certificates.k8s.io", "certificatesigningrequests", Some("selfnodeclient"))
            if verb == "create" =>
        {
            NodeDecision::Allow
        }
        ("authentication.k8s.io", "tokenreviews", None)
        | ("authorization.k8s.io", "subjectaccessreviews", None)
            if verb == "create" =>
        {
            NodeDecision::Allow
        }
        ("", "services", None) if matches!(verb, "get" | "list" | "watch") => NodeDecision::Allow,
        // system:node's RBAC role.
        ("node.k8s.io", "runtimeclasses", None) if matches!(verb, "get" | "list" | "watch") => {
            NodeDecision::Allow
        }
        ("", kind @ ("configmaps" | "secrets"), None) if verb == "get" => {
            let Some(name) = a.name else {
                return NodeDecision::NoOpinion;
            };
            if pods_on(store, node)
                .iter()
                .any(|p| same_ns(p) && pod_references(p, kind, name))
                || (kind == "secrets" && pv_secret_of_node(store, node, a.namespace, name))
            {
                NodeDecision::Allow
            } else {
                no_relationship(node)
            }
        }
        // The Node authorizer's graph: pod -> claim -> volume; NodeRestriction lets a
        // node write the status of its pods' claims (expansion).
        ("", "persistentvolumeclaims", sub)
            if (sub.is_none() && verb == "get")
                || (sub == Some("status") && matches!(verb, "patch" | "update")) =>
        {
            let Some(name) = a.name else {
                return NodeDecision::NoOpinion;
            };
            if pods_on(store, node)
                .iter()
                .any(|p| same_ns(p) && pod_claims(p).iter().any(|c| c == name))
            {
                NodeDecision::Allow
            } else {
                no_relationship(node)
            }
        }
        ("", "persistentvolumes", None) if verb == "get" => {
            let Some(name) = a.name else {
                return NodeDecision::NoOpinion;
            };
            let claims = rt("persistentvolumeclaims", "");
            let bound = pods_on(store, node).iter().any(|p| {
                let ns = p
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                pod_claims(p).iter().any(|c| {
                    store.get(claims, ns, c).is_some_and(|pvc| {
                        pvc.pointer("/spec/volumeName").and_then(Value::as_str) == Some(name)
                    })
                })
            });
            if bound {
                NodeDecision::Allow
            } else {
                no_relationship(node)
            }
        }
        // system:node's RBAC role: its own CSINode, the CSIDrivers.
        ("storage.k8s.io", "csinodes", None)
            if matches!(verb, "get" | "create" | "update" | "patch" | "delete") =>
        {
            NodeDecision::Allow
        }
        ("storage.k8s.io", "csidrivers", None) if matches!(verb, "get" | "list" | "watch") => {
            NodeDecision::Allow
        }
        // The Node authorizer: attachments to this node.
        ("storage.k8s.io", "volumeattachments", None) if verb == "get" => {
            let Some(name) = a.name else {
                return NodeDecision::NoOpinion;
            };
            let to_me = store.get(a.rt, "", name).is_some_and(|va| {
                va.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
            });
            if to_me {
                NodeDecision::Allow
            } else {
                no_relationship(node)
            }
        }
        ("", "serviceaccounts", Some("token")) if verb == "create" => {
            let Some(name) = a.name else {
                return NodeDecision::NoOpinion;
            };
            let uses = |p: &Value| {
                p.pointer("/spec/serviceAccountName")
                    .and_then(Value::as_str)
                    .unwrap_or("default")
                    == name
            };
            if pods_on(store, node).iter().any(|p| same_ns(p) && uses(p)) {
                NodeDecision::Allow
            } else {
                no_relationship(node)
            }
        }
        _ => NodeDecision::NoOpinion,
    }
}

fn subject_matches(id: &Identity, subject: &Value, binding_ns: &str) -> bool {
    let kind = subject
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = subject
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match kind {
        "User" => id.user == name,
        "Group" => id.in_group(name),
        "ServiceAccount" => {
            let ns = subject
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or(binding_ns);
            id.user == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

fn contains(list: Option<&Value>, want: &str) -> bool {
    list.and_then(Value::as_array).is_some_and(|l| {
        l.iter()
            .any(|v| v.as_str() == Some(want) || v.as_str() == Some("*"))
    })
}

fn rule_allows(rule: &Value, a: &Attributes<'_>) -> bool {
    let resource = match a.subresource {
        Some(s) => format!("{}/{s}", a.rt.plural),
        None => a.rt.plural.to_string(),
    };
    let names_ok = match rule.get("resourceNames").and_then(Value::as_array) {
        None => true,
        Some(l) if l.is_empty() => true,
        Some(l) => a
            .name
            .is_some_and(|n| l.iter().any(|v| v.as_str() == Some(n))),
    };
    contains(rule.get("verbs"), a.verb)
        && contains(rule.get("apiGroups"), a.rt.group)
        && (contains(rule.get("resources"), &resource)
            || a.subresource.is_some()
                && contains(rule.get("resources"), &format!("{}/*", a.rt.plural)))
        && names_ok
}

fn role_rules(store: &Store, role_ref: &Value, ns: &str) -> Vec<Value> {
    let kind = role_ref
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = role_ref
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let role = match kind {
        "ClusterRole" => store.get(rt("clusterroles", "rbac.authorization.k8s.io"), "", name),
        "Role" => store.get(rt("roles", "rbac.authorization.k8s.io"), ns, name),
        _ => None,
    };
    role.and_then(|r| r.get("rules").and_then(Value::as_array).cloned())
        .unwrap_or_default()
}

fn rbac_allows(store: &Store, id: &Identity, a: &Attributes<'_>) -> bool {
    let g = "rbac.authorization.k8s.io";
    let mut rules = Vec::new();
    for b in store.list(rt("clusterrolebindings", g), None).0 {
        if b.get("subjects")
            .and_then(Value::as_array)
            .is_some_and(|s| s.iter().any(|s| subject_matches(id, s, "")))
        {
            rules.extend(role_rules(store, &b["roleRef"], ""));
        }
    }
    if !a.namespace.is_empty() {
        for b in store.list(rt("rolebindings", g), Some(a.namespace)).0 {
            if b.get("subjects")
                .and_then(Value::as_array)
                .is_some_and(|s| s.iter().any(|s| subject_matches(id, s, a.namespace)))
            {
                rules.extend(role_rules(store, &b["roleRef"], a.namespace));
            }
        }
    }
    rules.iter().any(|r| rule_allows(r, a))
}

/// The ClusterRoles and bindings the real apiserver creates at start (the subset the
/// tests and kernlet depend on), as stored objects.
pub fn bootstrap_policy() -> Vec<(&'static str, Value)> {
    let role = |name: &str, rules: Value| json!({"metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}}, "rules": rules});
    let binding = |name: &str, role: &str, group: &str| {
        json!({"metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}]})
    };
    vec![
        (
            "clusterroles",
            role(
                "cluster-admin",
                json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]),
            ),
        ),
        (
            "clusterroles",
            role(
                "system:node-proxier",
                json!([
                    {"apiGroups": [""], "resources": ["endpoints", "services"], "verbs": ["list", "watch"]},
                    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
                    {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]},
                    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}
                ]),
            ),
        ),
        (
            "clusterroles",
            role(
                "system:node-bootstrapper",
                json!([
                    {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"], "verbs": ["create", "get", "list", "watch"]}
                ]),
            ),
        ),
        (
            "clusterroles",
            role(
                "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
                json!([
                    {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests/nodeclient"], "verbs": ["create"]}
                ]),
            ),
        ),
        (
            "clusterroles",
            role(
                "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
                json!([
                    {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests/selfnodeclient"], "verbs": ["create"]}
                ]),
            ),
        ),
        (
            "clusterrolebindings",
            binding("cluster-admin", "cluster-admin", "system:masters"),
        ),
    ]
}

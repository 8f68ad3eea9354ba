//! Defaulting and allocation the real apiserver does on create: pods (the injected
//! `kube-api-access-*` volume, tolerations, container defaults, QoS), Services
//! (ClusterIP, NodePorts, healthCheckNodePort) — and NodeRestriction admission.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::{Map, Value, json};

use super::authz::Identity;
use super::errors::ApiError;
use super::resources::ResourceType;

fn set_default(obj: &mut Value, key: &str, value: Value) {
    if let Some(m) = obj.as_object_mut() {
        m.entry(key.to_string()).or_insert(value);
    }
}

fn default_probe(probe: &mut Value) {
    set_default(probe, "timeoutSeconds", json!(1));
    set_default(probe, "periodSeconds", json!(10));
    set_default(probe, "successThreshold", json!(1));
    set_default(probe, "failureThreshold", json!(3));
    if let Some(h) = probe.get_mut("httpGet") {
        set_default(h, "path", json!("/"));
        set_default(h, "scheme", json!("HTTP"));
    }
}

fn default_container(c: &mut Value, token_mount: Option<&str>) {
    let image = c
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let last = image.rsplit('/').next().unwrap_or_default();
    let tagged = last.contains(':') && !last.ends_with(":latest") || image.contains('@');
    set_default(
        c,
        "imagePullPolicy",
        json!(if tagged { "IfNotPresent" } else { "Always" }),
    );
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    if let Some(res) = c.get_mut("resources") {
        // Requests default to limits.
        if let Some(limits) = res
            .get("limits")
            .cloned()
            .and_then(|l| l.as_object().cloned())
        {
            let req = res
                .as_object_mut()
                .map(|m| m.entry("requests").or_insert(json!({})));
            if let Some(Value::Object(req)) = req {
                for (k, v) in limits {
                    req.entry(k).or_insert(v);
                }
            }
        }
    }
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            set_default(p, "protocol", json!("TCP"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe) {
            default_probe(p);
        }
    }
    if let Some(volume) = token_mount {
        let mounts = c
            .as_object_mut()
            .map(|m| m.entry("volumeMounts").or_insert(json!([])));
        if let Some(Value::Array(mounts)) = mounts {
            let path = "/var/run/secrets/kubernetes.io/serviceaccount";
            if !mounts
                .iter()
                .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(path))
            {
                mounts.push(json!({"name": volume, "readOnly": true, "mountPath": path}));
            }
        }
    }
}

/// Pod defaulting plus the ServiceAccount admission plugin's token volume.
pub fn default_pod(pod: &mut Value) {
    let spec = &mut pod["spec"];
    for (k, v) in [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("securityContext", json!({})),
        ("schedulerName", json!("default-scheduler")),
        ("enableServiceLinks", json!(true)),
        ("preemptionPolicy", json!("PreemptLowerPriority")),
        ("priority", json!(0)),
        ("serviceAccountName", json!("default")),
    ] {
        set_default(spec, k, v);
    }
    let sa = spec["serviceAccountName"].clone();
    set_default(spec, "serviceAccount", sa);
    // The ServiceAccount admission plugin leaves pods alone that already mount the
    // token path (or opt out).
    let token_path = "/var/run/secrets/kubernetes.io/serviceaccount";
    let mounts_token = ["initContainers", "containers"].iter().any(|l| {
        spec.get(*l)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| {
                c.get("volumeMounts")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(token_path))
            })
    });
    let automount = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        != Some(false)
        && !mounts_token;
    let token_volume = if automount {
        let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..5].to_string();
        let name = format!("kube-api-access-{suffix}");
        let volumes = spec
            .as_object_mut()
            .map(|m| m.entry("volumes").or_insert(json!([])));
        if let Some(Value::Array(volumes)) = volumes {
            volumes.push(json!({
                "name": name,
                "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
                ]}
            }));
        }
        Some(name)
    } else {
        None
    };
    for list in ["initContainers", "containers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs {
                default_container(c, token_volume.as_deref());
            }
        }
    }
    if let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in volumes {
            for (kind, mode) in [("secret", 420), ("configMap", 420), ("downwardAPI", 420)] {
                if let Some(src) = v.get_mut(kind) {
                    set_default(src, "defaultMode", json!(mode));
                }
            }
            if let Some(e) = v.get_mut("emptyDir").filter(|e| e.is_null()) {
                *e = json!({});
            }
        }
    }
    let tolerations = spec
        .as_object_mut()
        .map(|m| m.entry("tolerations").or_insert(json!([])));
    if let Some(Value::Array(t)) = tolerations {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            if !t
                .iter()
                .any(|x| x.get("key").and_then(Value::as_str) == Some(key))
            {
                t.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            }
        }
    }
    let qos = serde_json::from_value::<k8s_openapi::api::core::v1::PodSpec>(pod["spec"].clone())
        .ok()
        .and_then(|s| kernlet::model::qos::qos_class(&s).ok())
        .map_or("BestEffort", |q| q.as_str());
    let mut status = json!({"phase": "Pending", "qosClass": qos});
    if pod.pointer("/spec/nodeName").is_some() {
        status["conditions"] = json!([{"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": super::store::now_rfc3339()}]);
    }
    pod["status"] = status;
}

/// Allocates ClusterIPs from 10.96.0.0/12 and NodePorts from 30000-32767.
pub struct ServiceAllocator;

impl ServiceAllocator {
    pub fn default_and_allocate(svc: &mut Value, existing: &[Value]) -> Result<(), ApiError> {
        let name = svc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let spec = &mut svc["spec"];
        set_default(spec, "type", json!("ClusterIP"));
        set_default(spec, "sessionAffinity", json!("None"));
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
        let ty = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
        if ty == "ExternalName" {
            return Ok(());
        }
        if spec.get("sessionAffinity").and_then(Value::as_str) == Some("ClientIP") {
            set_default(
                spec,
                "sessionAffinityConfig",
                json!({"clientIP": {"timeoutSeconds": 10800}}),
            );
        }
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut() {
                set_default(p, "protocol", json!("TCP"));
                let port = p.get("port").cloned().unwrap_or(Value::Null);
                set_default(p, "targetPort", port);
            }
        }
        let used_ips: BTreeSet<String> = existing
            .iter()
            .filter_map(|s| {
                s.pointer("/spec/clusterIP")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect();
        let wanted = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .map(str::to_string);
        let ip = match wanted.as_deref() {
            Some("None") => "None".to_string(),
            Some(ip) if !ip.is_empty() => {
                let parsed: Ipv4Addr = ip.parse().map_err(|_| {
                    ApiError::invalid(
                        "Service",
                        &name,
                        vec![(
                            "spec.clusterIPs[0]".into(),
                            format!("Invalid value: \"{ip}\": must be a valid IP address"),
                        )],
                    )
                })?;
                let n = u32::from(parsed);
                if n >> 20 != u32::from(Ipv4Addr::new(10, 96, 0, 0)) >> 20 {
                    return Err(ApiError::invalid(
                        "Service",
                        &name,
                        vec![(
                            "spec.clusterIPs".into(),
                            format!(
                                "Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is 10.96.0.0/12"
                            ),
                        )],
                    ));
                }
                if used_ips.contains(ip) {
                    return Err(ApiError::invalid(
                        "Service",
                        &name,
                        vec![(
                            "spec.clusterIPs".into(),
                            format!(
                                "Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {ip}: provided IP is already allocated"
                            ),
                        )],
                    ));
                }
                ip.to_string()
            }
            _ => {
                let base = u32::from(Ipv4Addr::new(10, 96, 0, 0));
                // Like the real allocator, start at a random offset; .1 is the kubernetes Service.
                let start = (uuid::Uuid::new_v4().as_u128() % ((1 << 20) - 2)) as u32 + 2;
                (0..(1u32 << 20) - 2)
                    .map(|i| Ipv4Addr::from(base + 2 + (start + i) % ((1 << 20) - 2)).to_string())
                    .find(|ip| !used_ips.contains(ip))
                    .ok_or_else(|| ApiError::bad_request("service IP range exhausted".into()))?
            }
        };
        spec["clusterIP"] = json!(ip);
        spec["clusterIPs"] = json!([ip]);
        set_default(spec, "ipFamilies", json!(["IPv4"]));
        set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
        if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
            set_default(spec, "externalTrafficPolicy", json!("Cluster"));
            if ty == "LoadBalancer" {
                set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
            }
            let mut used: BTreeSet<u64> = existing
                .iter()
                .flat_map(|s| {
                    let mut v: Vec<u64> = s
                        .pointer("/spec/ports")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
                        .collect();
                    v.extend(
                        s.pointer("/spec/healthCheckNodePort")
                            .and_then(Value::as_u64),
                    );
                    v
                })
                .collect();
            let mut next = || {
                let start = (uuid::Uuid::new_v4().as_u128() % 2768) as u64;
                let port = (0..2768)
                    .map(|i| 30000 + (start + i) % 2768)
                    .find(|p| !used.contains(p));
                if let Some(p) = port {
                    used.insert(p);
                }
                port
            };
            let allocate = ty == "NodePort"
                || spec
                    .get("allocateLoadBalancerNodePorts")
                    .and_then(Value::as_bool)
                    != Some(false);
            if allocate && let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    if p.get("nodePort").is_none() {
                        p["nodePort"] = json!(next().ok_or_else(|| ApiError::bad_request(
                            "node port range exhausted".into()
                        ))?);
                    }
                }
            }
            if ty == "LoadBalancer"
                && spec.get("externalTrafficPolicy").and_then(Value::as_str) == Some("Local")
                && spec.get("healthCheckNodePort").is_none()
            {
                spec["healthCheckNodePort"] = json!(
                    next()
                        .ok_or_else(|| ApiError::bad_request("node port range exhausted".into()))?
                );
            }
        }
        set_default(svc, "status", json!({"loadBalancer": {}}));
        Ok(())
    }
}

/// Labels a node may set on itself under NodeRestriction.
pub fn node_may_set_label(key: &str) -> bool {
    let (prefix, _) = key.split_once('/').unwrap_or(("", key));
    if prefix == "node-role.kubernetes.io" || prefix.ends_with(".node-role.kubernetes.io") {
        return false;
    }
    if prefix == "node-restriction.kubernetes.io"
        || prefix.ends_with(".node-restriction.kubernetes.io")
    {
        return false;
    }
    let k8s = prefix == "kubernetes.io"
        || prefix.ends_with(".kubernetes.io")
        || prefix == "k8s.io"
        || prefix.ends_with(".k8s.io");
    if !k8s {
        return true;
    }
    matches!(
        key,
        "kubernetes.io/hostname"
            | "kubernetes.io/arch"
            | "kubernetes.io/os"
            | "beta.kubernetes.io/instance-type"
            | "node.kubernetes.io/instance-type"
            | "failure-domain.beta.kubernetes.io/region"
            | "failure-domain.beta.kubernetes.io/zone"
            | "topology.kubernetes.io/region"
            | "topology.kubernetes.io/zone"
            | "beta.kubernetes.io/arch"
            | "beta.kubernetes.io/os"
    ) || prefix == "kubelet.kubernetes.io"
        || prefix.ends_with(".kubelet.kubernetes.io")
        || prefix == "node.kubernetes.io"
        || prefix.ends_with(".node.kubernetes.io")
}

/// NodeRestriction admission for writes by a node identity.
pub fn node_restriction(
    id: &Identity,
    rt: &ResourceType,
    sub: Option<&str>,
    name: &str,
    old: Option<&Value>,
    new: Option<&Value>,
) -> Result<(), ApiError> {
    let Some(node) = id.node_name() else {
        return Ok(());
    };
    let forbid = |msg: String| {
        ApiError::forbidden(
            rt,
            Some(name),
            format!("{} \"{name}\" is forbidden: {msg}", rt.qualified()),
        )
    };
    match (rt.group, rt.plural) {
        ("", "nodes") => {
            if name != node {
                return Err(forbid(format!(
                    "node \"{node}\" is not allowed to modify node \"{name}\""
                )));
            }
            if sub.is_none() {
                let labels = |v: Option<&Value>| -> Map<String, Value> {
                    v.and_then(|v| v.pointer("/metadata/labels"))
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_default()
                };
                let (before, after) = (labels(old), labels(new));
                let mut changed: Vec<&String> = after
                    .iter()
                    .filter(|(k, v)| before.get(*k) != Some(v))
                    .map(|(k, _)| k)
                    .collect();
                changed.extend(before.keys().filter(|k| !after.contains_key(*k)));
                let bad: Vec<&str> = changed
                    .iter()
                    .filter(|k| !node_may_set_label(k))
                    .map(|k| k.as_str())
                    .collect();
                if !bad.is_empty() {
                    return Err(forbid(format!(
                        "is not allowed to modify labels: {}",
                        bad.join(", ")
                    )));
                }
                if old.is_some()
                    && old.and_then(|o| o.pointer("/spec/taints"))
                        != new.and_then(|n| n.pointer("/spec/taints"))
                {
                    return Err(forbid(
                        "node \"".to_string() + node + "\" is not allowed to modify taints",
                    ));
                }
            }
            Ok(())
        }
        ("coordination.k8s.io", "leases") => {
            if name != node {
                return Err(forbid(
                    "can only access node lease with the same name as the requesting node".into(),
                ));
            }
            Ok(())
        }
        ("", "pods") if sub.is_none() && old.is_none() => {
            let mirror = new
                .and_then(|p| p.pointer("/metadata/annotations/kubernetes.io~1config.mirror"))
                .is_some();
            if !mirror {
                return Err(forbid(format!(
                    "pod does not have \"kubernetes.io/config.mirror\" annotation, node \"{node}\" can only create mirror pods"
                )));
            }
            Ok(())
        }
        ("", "pods") => {
            let bound = old
                .and_then(|p| p.pointer("/spec/nodeName"))
                .and_then(Value::as_str);
            if bound != Some(node) {
                return Err(forbid(format!(
                    "node \"{node}\" can only update pod status for pods with spec.nodeName set to itself"
                )));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pod spec fields the apiserver's defaulting fills in.
    const DEFAULTED_SPEC_FIELDS: [&str; 11] = [
        "dnsPolicy",
        "enableServiceLinks",
        "preemptionPolicy",
        "priority",
        "restartPolicy",
        "schedulerName",
        "securityContext",
        "serviceAccount",
        "serviceAccountName",
        "terminationGracePeriodSeconds",
        "tolerations",
    ];

    #[test]
    fn defaulted_pod_matches_the_bound_fixture() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/k8s/bound-pods/web-589c74b5fc-cscnw.json"
        );
        let real: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        // The fixture pod came from a Deployment; rebuild its input from the real spec
        // minus what defaulting adds, then default it again.
        let mut input = json!({"metadata": {"name": "x"}, "spec": real["spec"].clone()});
        let spec = input["spec"].as_object_mut().unwrap();
        for k in DEFAULTED_SPEC_FIELDS {
            spec.remove(k);
        }
        spec["volumes"]
            .as_array_mut()
            .unwrap()
            .retain(|v| !v["name"].as_str().unwrap().starts_with("kube-api-access-"));
        for list in ["containers", "initContainers"] {
            for c in spec[list].as_array_mut().unwrap() {
                c["volumeMounts"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|m| !m["name"].as_str().unwrap().starts_with("kube-api-access-"));
                for k in [
                    "imagePullPolicy",
                    "terminationMessagePath",
                    "terminationMessagePolicy",
                ] {
                    c.as_object_mut().unwrap().remove(k);
                }
            }
        }
        default_pod(&mut input);
        let token = |p: &Value| {
            let mut v = p["spec"]["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"].as_str().unwrap().starts_with("kube-api-access-"))
                .cloned()
                .unwrap();
            v["name"] = json!("kube-api-access");
            v
        };
        assert_eq!(token(&input), token(&real), "projected token volume");
        for k in DEFAULTED_SPEC_FIELDS {
            assert_eq!(input["spec"][k], real["spec"][k], "{k}");
        }
        let mount = |p: &Value| {
            p["spec"]["containers"][0]["volumeMounts"]
                .as_array()
                .unwrap()
                .last()
                .unwrap()["mountPath"]
                .clone()
        };
        assert_eq!(mount(&input), mount(&real));
        assert_eq!(input["status"]["qosClass"], json!("Burstable"));
    }

    #[test]
    fn node_labels_under_node_restriction() {
        assert!(node_may_set_label("kubernetes.io/hostname"));
        assert!(node_may_set_label("topology.kubernetes.io/zone"));
        assert!(node_may_set_label("node.kubernetes.io/instance-type"));
        assert!(node_may_set_label("example.com/rack"));
        assert!(!node_may_set_label("node-role.kubernetes.io/worker"));
        assert!(!node_may_set_label("node-restriction.kubernetes.io/x"));
        assert!(!node_may_set_label("other.kubernetes.io/x"));
    }
}

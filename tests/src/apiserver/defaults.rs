//! Defaulting and allocation the real apiserver does on create: pods (the injected
//! `kube-api-access-*` volume, tolerations, container defaults, QoS), Services
//! (ClusterIP, NodePorts, healthCheckNodePort) — and NodeRestriction admission.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
/// A Secret's `stringData` as the apiserver stores it: merged into `data` (base64,
/// winning over the same key there) and gone, so clients never read it back.
pub fn fold_string_data(secret: &mut Value) {
    use base64::Engine as _;
    let Some(Value::Object(strings)) = secret.as_object_mut().and_then(|o| o.remove("stringData"))
    else {
        return;
    };
    for (k, v) in strings {
        let text = v.as_str().unwrap_or_default();
        secret["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

pub fn default_pod(pod: &mut Value) {
    let spec = &mut pod["spec"];
    // The Priority admission plugin: the built-in classes' values.
    let class_priority = match spec.get("priorityClassName").and_then(Value::as_str) {
        Some("system-node-critical") => Some(2_000_001_000),
        Some("system-cluster-critical") => Some(2_000_000_000),
        _ => None,
    };
    if let Some(p) = class_priority {
        set_default(spec, "priority", json!(p));
    }
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

/// A Service IP family, with the cluster's range for it (a dual-stack cluster:
/// `--service-cluster-ip-range=10.96.0.0/12,fd00:10:96::/112`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv4() { Self::V4 } else { Self::V6 }
    }

    fn other(self) -> Self {
        match self {
            Self::V4 => Self::V6,
            Self::V6 => Self::V4,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }

    fn range(self) -> &'static str {
        match self {
            Self::V4 => "10.96.0.0/12",
            Self::V6 => "fd00:10:96::/112",
        }
    }

    /// The range as (first address, host bits).
    fn base(self) -> (u128, u32) {
        match self {
            Self::V4 => (u128::from(u32::from(Ipv4Addr::new(10, 96, 0, 0))), 20),
            Self::V6 => (
                u128::from(Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0)),
                16,
            ),
        }
    }

    fn in_range(self, ip: &IpAddr) -> bool {
        let (base, bits) = self.base();
        let n = match ip {
            IpAddr::V4(ip) => u128::from(u32::from(*ip)),
            IpAddr::V6(ip) => u128::from(*ip),
        };
        IpFamily::of(ip) == self && n >> bits == base >> bits
    }

    fn addr(self, n: u128) -> IpAddr {
        match self {
            Self::V4 => IpAddr::V4(Ipv4Addr::from(n as u32)),
            Self::V6 => IpAddr::V6(Ipv6Addr::from(n)),
        }
    }

    /// A free address of the range: like the real allocator, from a random offset;
    /// the first address after the network one (10.96.0.1, the kubernetes Service) is
    /// never handed out.
    fn allocate(self, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
        let (base, bits) = self.base();
        let size = (1u128 << bits) - 2;
        let start = uuid::Uuid::new_v4().as_u128() % size;
        (0..size)
            .map(|i| self.addr(base + 2 + (start + i) % size))
            .find(|ip| !used.contains(ip))
    }
}

/// Allocates ClusterIPs from 10.96.0.0/12 and fd00:10:96::/112 (one per family the
/// Service asks for) and NodePorts from 30000-32767.
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
        let used_ips: BTreeSet<IpAddr> = existing
            .iter()
            .flat_map(|s| {
                s.pointer("/spec/clusterIPs")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .chain(s.pointer("/spec/clusterIP"))
                    .filter_map(|ip| ip.as_str()?.parse().ok())
            })
            .collect();
        let invalid = |field: &str, detail: String| {
            ApiError::invalid("Service", &name, vec![(field.into(), detail)])
        };
        // What was asked for: clusterIPs (or the one clusterIP), families, policy.
        let mut wanted: Vec<String> = spec
            .get("clusterIPs")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if wanted.is_empty()
            && let Some(ip) = spec.get("clusterIP").and_then(Value::as_str)
            && !ip.is_empty()
        {
            wanted.push(ip.to_string());
        }
        if wanted.first().map(String::as_str) == Some("None") {
            spec["clusterIP"] = json!("None");
            spec["clusterIPs"] = json!(["None"]);
        } else {
            let mut parsed = Vec::new();
            for (i, ip) in wanted.iter().enumerate() {
                parsed.push(ip.parse::<IpAddr>().map_err(|_| {
                    invalid(
                        &format!("spec.clusterIPs[{i}]"),
                        format!("Invalid value: \"{ip}\": must be a valid IP address"),
                    )
                })?);
            }
            let policy = spec
                .get("ipFamilyPolicy")
                .and_then(Value::as_str)
                .unwrap_or("SingleStack")
                .to_string();
            let mut families: Vec<IpFamily> = match spec.get("ipFamilies").and_then(Value::as_array)
            {
                Some(f) if !f.is_empty() => f
                    .iter()
                    .map(|v| match v.as_str() {
                        Some("IPv4") => Ok(IpFamily::V4),
                        Some("IPv6") => Ok(IpFamily::V6),
                        _ => Err(invalid(
                            "spec.ipFamilies",
                            format!("Unsupported value: {v}: supported values: \"IPv4\", \"IPv6\""),
                        )),
                    })
                    .collect::<Result<_, _>>()?,
                _ if !parsed.is_empty() => parsed.iter().map(IpFamily::of).collect(),
                _ => vec![IpFamily::V4],
            };
            if policy != "SingleStack" && families.len() == 1 {
                families.push(families[0].other());
            }
            if policy == "SingleStack" && families.len() > 1 {
                return Err(invalid(
                    "spec.ipFamilies",
                    "Invalid value: when ipFamilyPolicy is SingleStack, ipFamilies must have one entry".into(),
                ));
            }
            let mut ips = Vec::new();
            for (i, family) in families.iter().enumerate() {
                let ip = match parsed.get(i) {
                    Some(ip) => {
                        if IpFamily::of(ip) != *family {
                            return Err(invalid(
                                "spec.clusterIPs",
                                format!(
                                    "Invalid value: \"{ip}\": expected an {} address (spec.ipFamilies[{i}])",
                                    family.name()
                                ),
                            ));
                        }
                        if !family.in_range(ip) {
                            return Err(invalid(
                                "spec.clusterIPs",
                                format!(
                                    "Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                                    family.range()
                                ),
                            ));
                        }
                        if used_ips.contains(ip) {
                            return Err(invalid(
                                "spec.clusterIPs",
                                format!(
                                    "Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {ip}: provided IP is already allocated"
                                ),
                            ));
                        }
                        *ip
                    }
                    None => family.allocate(&used_ips).ok_or_else(|| {
                        ApiError::bad_request("service IP range exhausted".into())
                    })?,
                };
                ips.push(ip.to_string());
            }
            spec["clusterIP"] = json!(ips[0]);
            spec["clusterIPs"] = json!(ips);
            spec["ipFamilies"] = json!(families.iter().map(|f| f.name()).collect::<Vec<_>>());
            spec["ipFamilyPolicy"] = json!(policy);
        }
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

    fn allocated(spec: Value, existing: &[Value]) -> Result<Value, ApiError> {
        let mut svc = json!({"metadata": {"name": "web"}, "spec": spec});
        ServiceAllocator::default_and_allocate(&mut svc, existing)?;
        Ok(svc["spec"].clone())
    }

    #[test]
    fn cluster_ips_are_allocated_per_family_as_a_dual_stack_apiserver_does() {
        let ports = json!([{"port": 80}]);
        // The default: one IPv4 address.
        let v4 = allocated(json!({"ports": ports}), &[]).unwrap();
        assert_eq!(v4["ipFamilies"], json!(["IPv4"]));
        assert_eq!(v4["ipFamilyPolicy"], "SingleStack");
        assert!(IpFamily::V4.in_range(&v4["clusterIP"].as_str().unwrap().parse().unwrap()));
        // IPv6 only.
        let v6 = allocated(json!({"ipFamilies": ["IPv6"], "ports": ports}), &[]).unwrap();
        let ip: IpAddr = v6["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(ip.is_ipv6() && IpFamily::V6.in_range(&ip), "{v6}");
        assert_eq!(v6["clusterIPs"], json!([ip.to_string()]));
        // Dual-stack: both, in the order asked for (the primary family first).
        let dual = allocated(
            json!({"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv6"], "ports": ports}),
            &[],
        )
        .unwrap();
        assert_eq!(dual["ipFamilies"], json!(["IPv6", "IPv4"]));
        let ips: Vec<IpAddr> = dual["clusterIPs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().parse().unwrap())
            .collect();
        assert!(ips[0].is_ipv6() && ips[1].is_ipv4(), "{dual}");
        assert_eq!(dual["clusterIP"], dual["clusterIPs"][0]);
        // Asked-for addresses: kept when free and in range, refused otherwise.
        let asked = allocated(json!({"clusterIP": "fd00:10:96::a", "ports": ports}), &[]).unwrap();
        assert_eq!(asked["ipFamilies"], json!(["IPv6"]));
        let taken = allocated(
            json!({"clusterIP": "fd00:10:96::a", "ports": ports}),
            &[json!({"spec": asked})],
        );
        assert!(taken.is_err());
        for bad in [
            json!({"clusterIP": "fd00:99::a", "ports": ports}),
            json!({"clusterIPs": ["10.96.0.9"], "ipFamilies": ["IPv6"], "ports": ports}),
            json!({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4", "IPv6"], "ports": ports}),
        ] {
            assert!(allocated(bad.clone(), &[]).is_err(), "{bad}");
        }
        // Headless stays headless.
        let headless = allocated(json!({"clusterIP": "None", "ports": ports}), &[]).unwrap();
        assert_eq!(headless["clusterIPs"], json!(["None"]));
    }

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

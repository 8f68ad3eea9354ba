//! kubelet's admission of a pod to the node (its `GeneralPredicates`): the pod must
//! fit the allocatable resources left by the pods already admitted, match the node's
//! labels (nodeSelector and required node affinity) and not want a host port another
//! pod holds. A refused pod is failed with kubelet's reason and message.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, PodSpec};

use super::quantity::Quantity;

/// What the node offers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFit {
    pub name: String,
    pub allocatable_cpu_milli: u64,
    pub allocatable_memory: u64,
    pub max_pods: u64,
    /// The node's labels as the Node object has them now (kubelet reads its node
    /// lister): labels added after registration — a CSI driver's topology, an
    /// admin's `kubectl label` — count.
    pub labels: NodeLabels,
    /// The runtime handler names this node answers to besides the default (empty)
    /// one (`--runtime-handlers`).
    pub runtime_handlers: Vec<String>,
    /// The node's security modules.
    pub lsm: super::lsm::LsmSupport,
    /// Whether the node runs `hostUsers: false` pods.
    pub user_namespaces: bool,
    /// The node's pressure conditions, as the node controller last computed them.
    pub pressure: super::eviction::SharedPressure,
    /// Set once the node shuts down: every pod is refused.
    pub shutting_down: ShuttingDown,
}

/// Whether the node is shutting down, shared by the shutdown and admission.
pub type ShuttingDown = super::shared::Shared<bool>;

/// The node's labels, kept by the watch of its Node object.
pub type NodeLabels = super::shared::Shared<BTreeMap<String, String>>;

/// Why a pod is refused: kubelet's reason (`OutOfcpu`, `NodeAffinity`, …) and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub message: String,
}

/// A pod's effective requests (CPU millicores, memory bytes): the larger of the sum of
/// its regular containers (sidecars included) and its largest init container, plus
/// the pod overhead.
pub fn requests(spec: &PodSpec) -> (u64, u64) {
    (request(spec, "cpu"), request(spec, "memory"))
}

/// A pod's effective request of resource `r` (millicores for `cpu`, else the value):
/// the larger of the sum of its regular containers (sidecars included) and its
/// largest init container, plus the pod overhead (kubelet's
/// `GetResourceRequestQuantity`).
pub fn request(spec: &PodSpec, r: &str) -> u64 {
    let get = |c: &k8s_openapi::api::core::v1::Container, r: &str| -> i128 {
        let res = c.resources.as_ref();
        let q = res
            .and_then(|x| x.requests.as_ref())
            .and_then(|m| m.get(r))
            .or_else(|| res.and_then(|x| x.limits.as_ref()).and_then(|m| m.get(r)));
        q.and_then(|q| Quantity::parse(&q.0).ok())
            .map_or(0, |q| if r == "cpu" { q.milli() } else { q.value() })
    };
    let one = |r: &str| -> u64 {
        let sidecars: i128 = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| super::pod_lifecycle::is_sidecar(c))
            .map(|c| get(c, r))
            .sum();
        let main: i128 = spec.containers.iter().map(|c| get(c, r)).sum::<i128>() + sidecars;
        let init = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| !super::pod_lifecycle::is_sidecar(c))
            .map(|c| get(c, r))
            .max()
            .unwrap_or(0);
        let overhead = spec
            .overhead
            .as_ref()
            .and_then(|o| o.get(r))
            .and_then(|q| Quantity::parse(&q.0).ok())
            .map_or(0, |q| if r == "cpu" { q.milli() } else { q.value() });
        u64::try_from(main.max(init) + overhead).unwrap_or(0)
    };
    one(r)
}

fn matches(req: &NodeSelectorRequirement, value: Option<&String>) -> bool {
    let values = req.values.clone().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => match (
            value.and_then(|v| number(v)),
            values.first().and_then(|v| number(v)),
        ) {
            (Some(a), Some(b)) => a > b,
            _ => false,
        },
        "Lt" => match (
            value.and_then(|v| number(v)),
            values.first().and_then(|v| number(v)),
        ) {
            (Some(a), Some(b)) => a < b,
            _ => false,
        },
        _ => false,
    }
}

fn term_matches(t: &NodeSelectorTerm, node: &NodeFit) -> bool {
    let exprs = t.match_expressions.iter().flatten();
    let fields = t.match_fields.iter().flatten();
    let labels = node.labels.get();
    let mut any = false;
    for e in exprs {
        any = true;
        if !matches(e, labels.get(&e.key)) {
            return false;
        }
    }
    for f in fields {
        any = true;
        let name = node.name.clone();
        let value = (f.key == "metadata.name").then_some(&name);
        if !matches(f, value) {
            return false;
        }
    }
    // An empty term matches nothing.
    any
}

/// Whether a node selector (terms ORed) matches the node: a pod's required node
/// affinity, a PersistentVolume's node affinity.
pub fn selector_matches(sel: &k8s_openapi::api::core::v1::NodeSelector, node: &NodeFit) -> bool {
    sel.node_selector_terms
        .iter()
        .any(|t| term_matches(t, node))
}

/// Whether the pod's nodeSelector and required node affinity match the node.
pub fn node_matches(spec: &PodSpec, node: &NodeFit) -> bool {
    let labels = node.labels.get();
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    selector_ok && required.is_none_or(|r| selector_matches(r, node))
}

/// The `(protocol, hostIP, hostPort)` a pod asks for.
pub fn host_ports(spec: &PodSpec) -> Vec<(String, String, i32)> {
    super::pod_lifecycle::all_containers(spec)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|h| *h > 0)?;
            Some((
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.host_ip
                    .clone()
                    .filter(|i| !i.is_empty())
                    .unwrap_or_else(|| "0.0.0.0".into()),
                port,
            ))
        })
        .collect()
}

/// kubelet's safe sysctls (allowed without `--allowed-unsafe-sysctls`).
pub const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// Admits `pod` next to the pods already admitted, or says why not.
pub fn admit(pod: &PodSpec, admitted: &[&PodSpec], node: &NodeFit) -> Result<(), Refusal> {
    let refuse = |reason: &str, message: String| {
        Err(Refusal {
            reason: reason.into(),
            message,
        })
    };
    if node.shutting_down.get() {
        return refuse(
            super::shutdown::NOT_ADMITTED_REASON,
            super::shutdown::NOT_ADMITTED_MESSAGE.into(),
        );
    }
    // Under pressure, kubelet's eviction admission first.
    let best_effort = matches!(
        super::qos::qos_class(pod),
        Ok(super::qos::QosClass::BestEffort)
    );
    if let Err(message) = super::eviction::admit(pod, best_effort, node.pressure.get()) {
        return refuse("Evicted", message);
    }
    // What kernlet cannot give a pod is refused before anything of it starts.
    for s in pod
        .security_context
        .iter()
        .flat_map(|c| c.sysctls.iter().flatten())
    {
        if !SAFE_SYSCTLS.contains(&s.name.as_str()) {
            return refuse(
                "SysctlForbidden",
                format!("forbidden sysctl: \"{}\" not allowlisted", s.name),
            );
        }
    }
    if pod.host_users == Some(false) {
        if !node.user_namespaces {
            return refuse(
                "UnsupportedFeature",
                "can't set `spec.hostUsers: false`, runtime does not support user namespaces (this kernel lacks user namespaces or idmapped tmpfs mounts, Linux 6.3)".into(),
            );
        }
        // Volume mounts of a user-namespaced pod are idmapped views, which cannot be
        // in the node's propagation peer groups.
        if let Some(m) = super::pod_lifecycle::all_containers(pod)
            .flat_map(|c| c.volume_mounts.iter().flatten())
            .find(|m| m.mount_propagation.as_deref().is_some_and(|p| p != "None"))
        {
            return refuse(
                "UnsupportedFeature",
                format!(
                    "volume mount {:?}: mountPropagation {} is not supported with `spec.hostUsers: false` on this node; use None",
                    m.name,
                    m.mount_propagation.as_deref().unwrap_or_default()
                ),
            );
        }
    }
    if admitted.len() as u64 >= node.max_pods {
        return refuse(
            "OutOfpods",
            format!(
                "Node didn't have enough resource: pods, requested: 1, used: {}, capacity: {}",
                admitted.len(),
                node.max_pods
            ),
        );
    }
    let (cpu, mem) = requests(pod);
    let (used_cpu, used_mem) = admitted
        .iter()
        .map(|p| requests(p))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    for (name, requested, used, capacity) in [
        ("cpu", cpu, used_cpu, node.allocatable_cpu_milli),
        ("memory", mem, used_mem, node.allocatable_memory),
    ] {
        if requested > 0 && used + requested > capacity {
            return refuse(
                &format!("OutOf{name}"),
                format!(
                    "Node didn't have enough resource: {name}, requested: {requested}, used: {used}, capacity: {capacity}"
                ),
            );
        }
    }
    if !node_matches(pod, node) {
        return refuse(
            "NodeAffinity",
            "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector"
                .into(),
        );
    }
    let taken: HashSet<(String, String, i32)> =
        admitted.iter().flat_map(|p| host_ports(p)).collect();
    let wildcard = |ip: &str| ip == "0.0.0.0" || ip == "::";
    for (proto, ip, port) in host_ports(pod) {
        let clash = taken.iter().any(|(p2, ip2, port2)| {
            *p2 == proto && *port2 == port && (ip == *ip2 || wildcard(&ip) || wildcard(ip2))
        });
        if clash {
            return refuse(
                "NodePorts",
                format!(
                    "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports ({proto} {ip}:{port})"
                ),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).unwrap()
    }

    fn node() -> NodeFit {
        NodeFit {
            name: "n1".into(),
            allocatable_cpu_milli: 2000,
            allocatable_memory: 4 << 30,
            max_pods: 3,
            labels: NodeLabels::new(
                [("zone", "a"), ("size", "8")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            runtime_handlers: Vec::new(),
            lsm: Default::default(),
            user_namespaces: true,
            pressure: Default::default(),
            shutting_down: Default::default(),
        }
    }

    #[test]
    fn a_node_shutting_down_admits_nothing() {
        let n = node();
        let spec: PodSpec =
            serde_json::from_value(serde_json::json!({"containers": [{"name": "c"}]})).unwrap();
        assert_eq!(admit(&spec, &[], &n), Ok(()));
        n.shutting_down.set(true);
        assert_eq!(
            admit(&spec, &[], &n),
            Err(Refusal {
                reason: "NodeShutdown".into(),
                message: "Pod was rejected as the node is shutting down.".into()
            })
        );
    }

    #[test]
    fn effective_requests_count_init_sidecars_and_overhead() {
        let s = spec(json!({
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1500m"}}},
                               {"name": "s", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m", "memory": "10Mi"}}}],
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "200m"}, "limits": {"memory": "64Mi"}}}],
            "overhead": {"cpu": "10m"}
        }));
        assert_eq!(requests(&s), (1510, (64 + 10) << 20));
    }

    #[test]
    fn unsafe_sysctls_and_user_namespaces_the_node_lacks_are_refused() {
        let safe = spec(
            json!({"containers": [{"name": "a"}], "securityContext": {"sysctls": [
            {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]}}),
        );
        assert_eq!(admit(&safe, &[], &node()), Ok(()));
        let unsafe_ = spec(
            json!({"containers": [{"name": "a"}], "securityContext": {"sysctls": [
            {"name": "kernel.msgmax", "value": "1"}]}}),
        );
        let r = admit(&unsafe_, &[], &node()).unwrap_err();
        assert_eq!(r.reason, "SysctlForbidden");
        assert!(r.message.contains("kernel.msgmax"));
        let userns = spec(json!({"containers": [{"name": "a"}], "hostUsers": false}));
        assert_eq!(admit(&userns, &[], &node()), Ok(()));
        let without = NodeFit {
            user_namespaces: false,
            ..node()
        };
        let r = admit(&userns, &[], &without).unwrap_err();
        assert_eq!(r.reason, "UnsupportedFeature");
        assert!(r.message.contains("does not support user namespaces"));
        // An idmapped volume cannot receive or send mounts: refused, not run weaker.
        let shared = spec(json!({"hostUsers": false,
            "containers": [{"name": "a", "volumeMounts": [
                {"name": "v", "mountPath": "/v", "mountPropagation": "HostToContainer"}]}],
            "volumes": [{"name": "v", "emptyDir": {}}]}));
        let r = admit(&shared, &[], &node()).unwrap_err();
        assert!(
            r.message.contains("mountPropagation HostToContainer"),
            "{}",
            r.message
        );
    }

    #[test]
    fn resources_ports_and_affinity_are_checked() {
        let big = spec(
            json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "1500m"}}}]}),
        );
        assert_eq!(admit(&big, &[], &node()), Ok(()));
        let r = admit(&big, &[&big], &node()).unwrap_err();
        assert_eq!(r.reason, "OutOfcpu");
        assert!(
            r.message
                .contains("requested: 1500, used: 1500, capacity: 2000"),
            "{}",
            r.message
        );
        let small = spec(json!({"containers": [{"name": "a"}]}));
        assert_eq!(
            admit(&small, &[&small, &small, &small], &node())
                .unwrap_err()
                .reason,
            "OutOfpods"
        );

        let web = spec(
            json!({"containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
        );
        assert_eq!(
            admit(&web, &[&web], &node()).unwrap_err().reason,
            "NodePorts"
        );
        let udp = spec(
            json!({"containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080, "protocol": "UDP"}]}]}),
        );
        assert_eq!(admit(&udp, &[&web], &node()), Ok(()));

        let sel = spec(json!({"nodeSelector": {"zone": "b"}, "containers": [{"name": "a"}]}));
        assert_eq!(
            admit(&sel, &[], &node()).unwrap_err().reason,
            "NodeAffinity"
        );
        let aff = |op: &str, values: serde_json::Value| {
            spec(
                json!({"containers": [{"name": "a"}], "affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "size", "operator": op, "values": values}]}]}}}}),
            )
        };
        assert!(node_matches(&aff("Gt", json!(["4"])), &node()));
        assert!(!node_matches(&aff("Lt", json!(["4"])), &node()));
        assert!(node_matches(&aff("In", json!(["8", "16"])), &node()));
        assert!(!node_matches(&aff("DoesNotExist", json!([])), &node()));
        let by_name = spec(
            json!({"containers": [{"name": "a"}], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}}}}),
        );
        assert!(node_matches(&by_name, &node()), "terms are ORed");
    }
}

//! The Node object as kubelet registers and reports it, computed from machine facts and
//! flags. Pure: the node controller sends what this returns.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    Node, NodeCondition, NodeRuntimeHandler, NodeRuntimeHandlerFeatures,
};
use serde_json::{Value, json};

use crate::sys::machine::MachineFacts;

/// The version kernlet reports as `kubeletVersion`: the Kubernetes minor it implements,
/// with kernlet's own version as build metadata.
pub fn kubelet_version() -> String {
    kubelet_version_for(None)
}

/// The minor version kernlet implements.
pub const KUBE_MINOR: u32 = 36;

/// The kubeletVersion to report to an apiserver of minor version `apiserver_minor`:
/// kernlet's, but never newer than the apiserver (a node newer than its control plane
/// is outside the supported skew).
pub fn kubelet_version_for(apiserver_minor: Option<u32>) -> String {
    let minor = apiserver_minor.map_or(KUBE_MINOR, |m| m.min(KUBE_MINOR));
    format!("v1.{minor}.0+kernlet.{}", env!("CARGO_PKG_VERSION"))
}

/// The features the node declares (`status.declaredFeatures`, 1.35+ apiservers): the
/// apiserver then proxies kubectl's WebSocket streams (exec, port-forward) straight to
/// kernlet, which speaks them, instead of translating them to SPDY.
pub fn declared_features(apiserver_minor: Option<u32>) -> Option<Vec<&'static str>> {
    (apiserver_minor.is_none_or(|m| m >= 35)).then(|| vec!["ExtendWebSocketsToKubelet"])
}

/// What the operator chose for this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub name: String,
    pub internal_ip: IpAddr,
    /// The other family's address of a dual-stack node (`--node-ip v4,v6`).
    pub secondary_ip: Option<IpAddr>,
    /// Labels from `--node-labels`, on top of the well-known ones.
    pub labels: BTreeMap<String, String>,
    /// `key=value:Effect` or `key:Effect` from `--register-with-taints`.
    pub taints: Vec<Value>,
    pub max_pods: u32,
    pub kubelet_port: u16,
    /// `--system-reserved` plus `--kube-reserved`: kept out of allocatable.
    pub reserved: Reserved,
    /// The apiserver's minor version, when it could be read.
    pub apiserver_minor: Option<u32>,
    /// Runtime handler names besides the default one (`--runtime-handlers`).
    pub runtime_handlers: Vec<String>,
    /// `--eviction-hard`, checked when the node was prepared.
    pub eviction_hard: String,
    /// Whether the node runs `hostUsers: false` pods (user namespaces and idmapped
    /// tmpfs mounts in its kernel).
    pub user_namespaces: bool,
}

impl NodeConfig {
    /// The node's addresses: the primary one first.
    pub fn node_ips(&self) -> Vec<IpAddr> {
        std::iter::once(self.internal_ip)
            .chain(self.secondary_ip)
            .collect()
    }
}

/// `--node-ip`: one address, or two of different families (dual-stack, the first the
/// primary), as kubelet takes it.
pub fn parse_node_ips(s: &str) -> Result<Vec<IpAddr>, String> {
    let ips: Vec<IpAddr> = s
        .split(',')
        .map(|p| {
            p.trim()
                .parse()
                .map_err(|_| format!("--node-ip: {:?} is not an IP address", p.trim()))
        })
        .collect::<Result<_, _>>()?;
    match ips.as_slice() {
        [_] => Ok(ips),
        [a, b] if a.is_ipv4() != b.is_ipv4() => Ok(ips),
        [_, _] => Err(format!(
            "--node-ip {s}: two addresses must be one IPv4 and one IPv6 (dual-stack)"
        )),
        _ => Err(format!(
            "--node-ip {s}: give one address, or an IPv4 and an IPv6 one separated by a comma"
        )),
    }
}

/// Resources reserved for the system and for kernlet itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reserved {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub ephemeral_storage_bytes: u64,
}

impl std::ops::Add for Reserved {
    type Output = Self;

    fn add(self, o: Self) -> Self {
        Self {
            cpu_millis: self.cpu_millis + o.cpu_millis,
            memory_bytes: self.memory_bytes + o.memory_bytes,
            ephemeral_storage_bytes: self.ephemeral_storage_bytes + o.ephemeral_storage_bytes,
        }
    }
}

/// Parses `--system-reserved` / `--kube-reserved`: `cpu=100m,memory=256Mi,ephemeral-storage=1Gi,pid=1000`
/// (`pid` is accepted and not counted: kernlet does not limit pids per node yet).
pub fn parse_reserved(flag: &'static str, text: &str) -> Result<Reserved, NodeConfigError> {
    let mut r = Reserved::default();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || NodeConfigError::BadReserved {
            flag,
            item: item.to_string(),
        };
        let (k, v) = item.split_once('=').ok_or_else(bad)?;
        let q = crate::model::quantity::Quantity::parse(v).map_err(|_| bad())?;
        let as_u64 = |x: i128| u64::try_from(x).map_err(|_| bad());
        match k {
            "cpu" => r.cpu_millis = as_u64(q.milli())?,
            "memory" => r.memory_bytes = as_u64(q.value())?,
            "ephemeral-storage" => r.ephemeral_storage_bytes = as_u64(q.value())?,
            "pid" => {}
            _ => return Err(bad()),
        }
    }
    Ok(r)
}

/// A flag value the node may not use, named with what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeConfigError {
    #[error(
        "--node-labels: a node may not set label {0:?} on itself (the NodeRestriction admission plugin refuses it); \
         set it with kubectl as an admin instead, or use a label under node.kubernetes.io/ or your own prefix"
    )]
    ForbiddenLabel(String),
    #[error("--node-labels: {0:?} is not key=value")]
    BadLabel(String),
    #[error(
        "--register-with-taints: {0:?} is not key[=value]:NoSchedule|PreferNoSchedule|NoExecute"
    )]
    BadTaint(String),
    #[error(
        "--{flag}: {item:?} is not cpu=<quantity>, memory=<quantity>, ephemeral-storage=<quantity> or pid=<number>"
    )]
    BadReserved { flag: &'static str, item: String },
}

/// Whether NodeRestriction lets a node set `key` on its own Node.
pub fn node_may_set_label(key: &str) -> bool {
    let prefix = key.split_once('/').map_or("", |(p, _)| p);
    let under = |domain: &str| prefix == domain || prefix.ends_with(&format!(".{domain}"));
    if under("node-role.kubernetes.io") || under("node-restriction.kubernetes.io") {
        return false;
    }
    if !(under("kubernetes.io") || under("k8s.io")) {
        return true;
    }
    const ALLOWED: &[&str] = &[
        "kubernetes.io/hostname",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    ];
    ALLOWED.contains(&key) || under("kubelet.kubernetes.io") || under("node.kubernetes.io")
}

/// Parses `--node-labels a=b,c=d`, refusing labels the node may not set.
pub fn parse_labels(flag: &str) -> Result<BTreeMap<String, String>, NodeConfigError> {
    let mut out = BTreeMap::new();
    for item in flag.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| NodeConfigError::BadLabel(item.into()))?;
        if k.is_empty() {
            return Err(NodeConfigError::BadLabel(item.into()));
        }
        if !node_may_set_label(k) {
            return Err(NodeConfigError::ForbiddenLabel(k.into()));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Parses `--register-with-taints key=value:Effect,key:Effect`.
pub fn parse_taints(flag: &str) -> Result<Vec<Value>, NodeConfigError> {
    let mut out = Vec::new();
    for item in flag.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || NodeConfigError::BadTaint(item.into());
        let (kv, effect) = item.rsplit_once(':').ok_or_else(bad)?;
        if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            return Err(bad());
        }
        let (key, value) = kv.split_once('=').map_or((kv, None), |(k, v)| (k, Some(v)));
        if key.is_empty() {
            return Err(bad());
        }
        let mut t = json!({"key": key, "effect": effect});
        if let Some(v) = value {
            t["value"] = json!(v);
        }
        out.push(t);
    }
    Ok(out)
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The hard eviction threshold of `signal` in absolute terms for a capacity (the
/// largest if several are given; 0 without one): kept out of allocatable.
fn hard_eviction(
    eviction_hard: &str,
    signal: crate::model::eviction::Signal,
    capacity: u64,
) -> u64 {
    crate::model::eviction::parse_thresholds(eviction_hard)
        .unwrap_or_default()
        .iter()
        .filter(|t| t.signal == signal)
        .map(|t| t.absolute(capacity))
        .max()
        .unwrap_or(0)
}

/// Allocatable CPU (millicores) and memory (bytes): capacity minus the reservations
/// and the hard eviction threshold of `memory.available` (`eviction_hard`, kubelet's
/// `--eviction-hard` form).
pub fn allocatable_cpu_memory(
    facts: &MachineFacts,
    r: Reserved,
    eviction_hard: &str,
) -> (u64, u64) {
    let evicted = hard_eviction(
        eviction_hard,
        crate::model::eviction::Signal::MemoryAvailable,
        facts.memory_bytes,
    );
    (
        (facts.cpus * 1000).saturating_sub(r.cpu_millis),
        facts
            .memory_bytes
            .saturating_sub(evicted)
            .saturating_sub(r.memory_bytes),
    )
}

/// The Node kubelet would create on registration (metadata and spec; status follows).
pub fn registration(cfg: &NodeConfig) -> Node {
    let mut labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", cfg.name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", arch()),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", arch()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    labels.extend(cfg.labels.clone());
    let mut taints = cfg.taints.clone();
    // Until it reports Ready the node keeps the scheduler away, like kubelet does.
    if !taints
        .iter()
        .any(|t| t["key"] == "node.kubernetes.io/not-ready")
    {
        taints.push(json!({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}));
    }
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": cfg.name,
            "labels": labels,
            "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"},
        },
        "spec": {"taints": taints},
    }))
    .unwrap_or_default()
}

/// Whether the node can run pods, and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub reason: String,
    pub message: String,
}

/// `.status` as kubelet reports it. Condition transition times are kept from
/// `previous` when a condition's status has not changed.
pub fn status(
    cfg: &NodeConfig,
    facts: &MachineFacts,
    readiness: &Readiness,
    previous: &[NodeCondition],
    now: &str,
) -> Value {
    let mut capacity = json!({
        "cpu": facts.cpus.to_string(),
        "memory": format!("{}Ki", facts.memory_bytes / 1024),
        // A byte count shown in Ki rounds up, as a resource.Quantity does.
        "ephemeral-storage": format!("{}Ki", facts.ephemeral_storage_bytes.div_ceil(1024)),
        "pods": cfg.max_pods.to_string(),
    });
    let r = cfg.reserved;
    let (cpu_millis, memory) = allocatable_cpu_memory(facts, r, &cfg.eviction_hard);
    let cpu = if cpu_millis.is_multiple_of(1000) {
        (cpu_millis / 1000).to_string()
    } else {
        format!("{cpu_millis}m")
    };
    // The nodefs.available threshold (10 % by default) and the reservation are not
    // allocatable.
    let storage = facts
        .ephemeral_storage_bytes
        .saturating_sub(hard_eviction(
            &cfg.eviction_hard,
            crate::model::eviction::Signal::NodefsAvailable,
            facts.ephemeral_storage_bytes,
        ))
        .saturating_sub(r.ephemeral_storage_bytes);
    let mut allocatable = json!({
        "cpu": cpu,
        "memory": format!("{}Ki", memory / 1024),
        "ephemeral-storage": storage.to_string(),
        "pods": cfg.max_pods.to_string(),
    });
    let mut hugepage_total = 0;
    for (size, total) in &facts.hugepages {
        let key = match size {
            s if s % (1 << 30) == 0 => format!("hugepages-{}Gi", s >> 30),
            s => format!("hugepages-{}Mi", s >> 20),
        };
        capacity[&key] = json!(total.to_string());
        allocatable[&key] = json!(total.to_string());
        hugepage_total += total;
    }
    if hugepage_total > 0 {
        let mem = facts
            .memory_bytes
            .saturating_sub(hard_eviction(
                &cfg.eviction_hard,
                crate::model::eviction::Signal::MemoryAvailable,
                facts.memory_bytes,
            ))
            .saturating_sub(hugepage_total);
        allocatable["memory"] = json!(format!("{}Ki", mem / 1024));
    }
    let cond = |ty: &str, status: &str, reason: &str, message: &str| {
        let transition = previous
            .iter()
            .find(|c| c.type_ == ty && c.status == status)
            .and_then(|c| c.last_transition_time.as_ref())
            .and_then(|t| serde_json::to_value(t).ok())
            .unwrap_or_else(|| json!(now));
        json!({"type": ty, "status": status, "reason": reason, "message": message, "lastHeartbeatTime": now, "lastTransitionTime": transition})
    };
    json!({
        "addresses": cfg.node_ips().iter()
            .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
            .chain([json!({"type": "Hostname", "address": cfg.name})])
            .collect::<Vec<_>>(),
        "capacity": capacity,
        "allocatable": allocatable,
        "conditions": [
            if facts.pressure.memory {
                cond("MemoryPressure", "True", "KubeletHasInsufficientMemory", "kubelet has insufficient memory available")
            } else {
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available")
            },
            if facts.pressure.disk {
                cond("DiskPressure", "True", "KubeletHasDiskPressure", "kubelet has disk pressure")
            } else {
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure")
            },
            if facts.pressure.pid {
                cond("PIDPressure", "True", "KubeletHasInsufficientPID", "kubelet has insufficient PID available")
            } else {
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available")
            },
            cond("Ready", if readiness.ready { "True" } else { "False" }, &readiness.reason, &readiness.message),
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.kubelet_port}},
        "declaredFeatures": declared_features(cfg.apiserver_minor),
        // kubelet's NodeFeatures setter: the runtime honours supplementalGroupsPolicy
        // (Strict: only the groups the pod names).
        "features": {"supplementalGroupsPolicy": true},
        "runtimeHandlers": runtime_handlers(&cfg.runtime_handlers, cfg.user_namespaces),
        "images": facts.images,
        "volumesInUse": (!facts.volumes_in_use.is_empty()).then_some(&facts.volumes_in_use),
        "nodeInfo": {
            "machineID": facts.machine_id,
            "systemUUID": facts.system_uuid,
            "bootID": facts.boot_id,
            "kernelVersion": facts.kernel_version,
            "osImage": facts.os_image,
            "containerRuntimeVersion": format!("kernlet://{}", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": kubelet_version_for(cfg.apiserver_minor),
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": arch(),
        },
    })
}

/// Images kubelet lists in `status.images` (its `nodeStatusMaxImages` default).
pub const MAX_IMAGES: usize = 50;
/// Names kubelet lists per image.
pub const MAX_NAMES_PER_IMAGE: usize = 5;

/// `status.images` from the image store's listing (references, manifest digest, size)
/// as kubelet writes it: the largest images first, each named by its repository
/// digests (`<repo>@<digest>`) then its tags, at most [`MAX_NAMES_PER_IMAGE`] names and
/// [`MAX_IMAGES`] images.
pub fn images(
    listed: &[(Vec<String>, String, u64)],
) -> Vec<k8s_openapi::api::core::v1::ContainerImage> {
    let mut sorted: Vec<&(Vec<String>, String, u64)> = listed.iter().collect();
    sorted.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.1.cmp(&b.1)));
    sorted
        .into_iter()
        .take(MAX_IMAGES)
        .map(|(references, digest, size)| {
            let mut digests: Vec<String> = Vec::new();
            let mut tags: Vec<String> = Vec::new();
            for r in references {
                let repo = match r.split_once('@') {
                    Some((repo, _)) => repo,
                    None => {
                        tags.push(r.clone());
                        r.rsplit_once(':')
                            .filter(|(_, tag)| !tag.contains('/'))
                            .map_or(r.as_str(), |(repo, _)| repo)
                    }
                };
                let d = format!("{repo}@{digest}");
                if !digests.contains(&d) {
                    digests.push(d);
                }
            }
            let mut names = digests;
            names.extend(tags);
            names.truncate(MAX_NAMES_PER_IMAGE);
            k8s_openapi::api::core::v1::ContainerImage {
                names: Some(names),
                size_bytes: i64::try_from(*size).ok(),
            }
        })
        .collect()
}

/// `status.runtimeHandlers`: the default handler and each configured name, with what
/// kernlet's one runtime supports (no recursive read-only mounts; user namespaces
/// where the kernel has them), as kubelet copies them from its runtime.
pub fn runtime_handlers(names: &[String], user_namespaces: bool) -> Vec<NodeRuntimeHandler> {
    std::iter::once("")
        .chain(names.iter().map(String::as_str).filter(|n| !n.is_empty()))
        .map(|name| NodeRuntimeHandler {
            name: Some(name.to_string()),
            features: Some(NodeRuntimeHandlerFeatures {
                recursive_read_only_mounts: Some(false),
                user_namespaces: Some(user_namespaces),
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reported_version_never_passes_the_apiservers() {
        assert!(kubelet_version_for(Some(33)).starts_with("v1.33.0+kernlet."));
        assert!(kubelet_version_for(Some(40)).starts_with("v1.36.0+kernlet."));
        assert_eq!(declared_features(Some(34)), None);
        assert_eq!(
            declared_features(Some(36)),
            Some(vec!["ExtendWebSocketsToKubelet"])
        );
    }

    fn cfg() -> NodeConfig {
        NodeConfig {
            name: "klab-r1".into(),
            internal_ip: "198.18.0.121".parse().unwrap(),
            secondary_ip: None,
            labels: BTreeMap::new(),
            taints: Vec::new(),
            max_pods: 110,
            kubelet_port: 10250,
            reserved: Reserved::default(),
            apiserver_minor: None,
            runtime_handlers: vec!["runc".into()],
            eviction_hard: crate::model::eviction::DEFAULT_HARD.into(),
            user_namespaces: true,
        }
    }

    fn facts() -> MachineFacts {
        MachineFacts {
            hostname: "klab-r1".into(),
            cpus: 2,
            memory_bytes: 24684084 * 1024,
            // The recorded node's root filesystem, in bytes (shown as 264212084Ki).
            ephemeral_storage_bytes: 270553173568,
            hugepages: vec![(2 << 20, 0), (1 << 30, 0)],
            kernel_version: "6.18.44-fc-v669".into(),
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            machine_id: "m".into(),
            boot_id: "b".into(),
            system_uuid: "u".into(),
            images: Vec::new(),
            pressure: Default::default(),
            volumes_in_use: Vec::new(),
        }
    }

    #[test]
    fn node_ip_takes_one_address_or_a_dual_stack_pair() {
        let ips = parse_node_ips("198.18.0.121,fd00:198:18::121").unwrap();
        assert_eq!(ips.len(), 2);
        assert_eq!(parse_node_ips(" 198.18.0.121 ").unwrap().len(), 1);
        for bad in [
            "198.18.0.1,198.18.0.2",
            "fd00::1,fd00::2",
            "a.b",
            "1.2.3.4,fd00::1,5.6.7.8",
        ] {
            let e = parse_node_ips(bad).unwrap_err();
            assert!(e.starts_with("--node-ip"), "{bad}: {e}");
        }
        // Both are InternalIPs, the primary first, as kubelet reports a dual-stack node.
        let dual = NodeConfig {
            secondary_ip: Some(ips[1]),
            ..cfg()
        };
        let ready = Readiness {
            ready: true,
            reason: "KubeletReady".into(),
            message: String::new(),
        };
        let st = status(&dual, &facts(), &ready, &[], "2026-11-26T01:10:34Z");
        assert_eq!(
            st["addresses"],
            json!([
                {"type": "InternalIP", "address": "198.18.0.121"},
                {"type": "InternalIP", "address": "fd00:198:18::121"},
                {"type": "Hostname", "address": "klab-r1"},
            ])
        );
    }

    #[test]
    fn status_has_the_shape_of_the_real_kubelets() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/k8s/kubelet/node.json"
        );
        let real: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let ready = Readiness {
            ready: true,
            reason: "KubeletReady".into(),
            message: "kubelet is posting ready status".into(),
        };
        let ours = status(&cfg(), &facts(), &ready, &[], "2026-11-26T01:10:34Z");
        assert_eq!(ours["addresses"], real["status"]["addresses"]);
        assert_eq!(
            ours["capacity"], real["status"]["capacity"],
            "same machine, same capacity"
        );
        assert_eq!(
            ours["allocatable"]["memory"],
            real["status"]["allocatable"]["memory"]
        );
        assert_eq!(
            ours["allocatable"]["ephemeral-storage"],
            real["status"]["allocatable"]["ephemeral-storage"]
        );
        let strip = |c: &Value| json!({"type": c["type"], "status": c["status"], "reason": c["reason"], "message": c["message"]});
        let ours_c: Vec<Value> = ours["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(strip)
            .collect();
        let real_c: Vec<Value> = real["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(strip)
            .collect();
        assert_eq!(ours_c, real_c);
        assert_eq!(ours["daemonEndpoints"], real["status"]["daemonEndpoints"]);
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&ours["nodeInfo"]), keys(&real["status"]["nodeInfo"]));
        let reg = serde_json::to_value(registration(&cfg())).unwrap();
        assert_eq!(reg["metadata"]["labels"], real["metadata"]["labels"]);
    }

    #[test]
    fn images_are_listed_as_kubelet_lists_them() {
        let d1 = "sha256:1111".to_string();
        let d2 = "sha256:2222".to_string();
        let listed = vec![
            (
                vec!["docker.io/library/busybox:1.36".to_string()],
                d1.clone(),
                100,
            ),
            (
                vec![
                    "registry.k8s.io/pause:3.10".to_string(),
                    "localhost:5000/pause:3.10".to_string(),
                    "registry.k8s.io/pause@sha256:2222".to_string(),
                ],
                d2.clone(),
                900,
            ),
        ];
        let out = images(&listed);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].size_bytes, Some(900), "the largest first");
        assert_eq!(
            out[0].names.as_deref().unwrap(),
            [
                "registry.k8s.io/pause@sha256:2222",
                "localhost:5000/pause@sha256:2222",
                "registry.k8s.io/pause:3.10",
                "localhost:5000/pause:3.10",
            ]
        );
        assert_eq!(
            out[1].names.as_deref().unwrap(),
            [
                "docker.io/library/busybox@sha256:1111",
                "docker.io/library/busybox:1.36"
            ]
        );
        let many: Vec<_> = (0..60)
            .map(|i| (vec![format!("r/i:{i}")], format!("sha256:{i}"), i))
            .collect();
        assert_eq!(images(&many).len(), MAX_IMAGES);
    }

    #[test]
    fn runtime_handlers_list_the_default_and_the_configured_names() {
        let ready = Readiness {
            ready: true,
            reason: "KubeletReady".into(),
            message: String::new(),
        };
        let ours = status(&cfg(), &facts(), &ready, &[], "2026-11-26T01:10:34Z");
        let features = json!({"recursiveReadOnlyMounts": false, "userNamespaces": true});
        assert_eq!(
            ours["runtimeHandlers"],
            json!([{"name": "", "features": features}, {"name": "runc", "features": features}])
        );
        let without = NodeConfig {
            user_namespaces: false,
            ..cfg()
        };
        let theirs = status(&without, &facts(), &ready, &[], "2026-11-26T01:10:34Z");
        assert_eq!(
            theirs["runtimeHandlers"][0]["features"]["userNamespaces"],
            json!(false)
        );
        // As kubelet on a runtime that honours supplementalGroupsPolicy.
        assert_eq!(ours["features"], json!({"supplementalGroupsPolicy": true}));
    }

    #[test]
    fn transition_time_is_kept_while_the_status_holds() {
        let not_ready = Readiness {
            ready: false,
            reason: "KubeletNotReady".into(),
            message: "x".into(),
        };
        let first = status(&cfg(), &facts(), &not_ready, &[], "2026-01-01T00:00:00Z");
        let prev: Vec<NodeCondition> = serde_json::from_value(first["conditions"].clone()).unwrap();
        let second = status(&cfg(), &facts(), &not_ready, &prev, "2026-01-01T00:05:00Z");
        assert_eq!(
            second["conditions"][3]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(
            second["conditions"][3]["lastHeartbeatTime"],
            "2026-01-01T00:05:00Z"
        );
        let ready = Readiness {
            ready: true,
            reason: "KubeletReady".into(),
            message: "y".into(),
        };
        let third = status(&cfg(), &facts(), &ready, &prev, "2026-01-01T00:06:00Z");
        assert_eq!(
            third["conditions"][3]["lastTransitionTime"],
            "2026-01-01T00:06:00Z"
        );
    }

    #[test]
    fn reservations_come_out_of_allocatable() {
        let system = parse_reserved("system-reserved", "cpu=100m,memory=256Mi,pid=1000").unwrap();
        let kube = parse_reserved("kube-reserved", "cpu=400m,ephemeral-storage=1Gi").unwrap();
        let reserved = system + kube;
        let ready = Readiness {
            ready: true,
            reason: "KubeletReady".into(),
            message: String::new(),
        };
        let st = status(
            &NodeConfig { reserved, ..cfg() },
            &facts(),
            &ready,
            &[],
            "t",
        );
        assert_eq!(st["allocatable"]["cpu"], "1500m");
        assert_eq!(
            st["allocatable"]["memory"],
            format!("{}Ki", 24684084 - 102400 - 262144)
        );
        assert_eq!(
            st["allocatable"]["ephemeral-storage"],
            (243497856212u64 - (1 << 30)).to_string()
        );
        assert_eq!(st["capacity"]["cpu"], "2", "capacity is the machine's");
        let err = parse_reserved("kube-reserved", "gpu=1").unwrap_err();
        assert!(
            err.to_string().starts_with("--kube-reserved: \"gpu=1\""),
            "{err}"
        );
        assert!(parse_reserved("system-reserved", "memory=lots").is_err());
    }

    #[test]
    fn labels_and_taints_flags() {
        assert_eq!(
            parse_labels("topology.kubernetes.io/zone=a, example.com/rack=r1")
                .unwrap()
                .len(),
            2
        );
        let err = parse_labels("node-role.kubernetes.io/worker=").unwrap_err();
        assert_eq!(
            err,
            NodeConfigError::ForbiddenLabel("node-role.kubernetes.io/worker".into())
        );
        assert!(err.to_string().contains("NodeRestriction"));
        assert!(parse_labels("nokey").is_err());
        assert_eq!(
            parse_taints("dedicated=gpu:NoSchedule,spot:PreferNoSchedule").unwrap(),
            vec![
                json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}),
                json!({"key": "spot", "effect": "PreferNoSchedule"}),
            ]
        );
        assert!(parse_taints("a=b:Sometimes").is_err());
        let reg = registration(&NodeConfig {
            taints: parse_taints("a:NoExecute").unwrap(),
            ..cfg()
        });
        assert_eq!(
            reg.spec.unwrap().taints.unwrap().len(),
            2,
            "not-ready taint added"
        );
    }
}

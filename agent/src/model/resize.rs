//! In-place pod resize (kubelet's InPlacePodVerticalScaling, GA in 1.35): what the
//! node has allocated to each container, whether a resize of the spec's resources can
//! be admitted, whether a container must restart for it, and the cgroup v2 values a
//! container's resources come to.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};

use crate::model::pod_lifecycle;
use crate::model::quantity::{QuantityError, amount};

/// What each container (by name) is allocated: requests and limits.
pub type Allocation = BTreeMap<String, ResourceRequirements>;

/// The requests and limits a container's spec asks for (no claims).
pub fn wanted(c: &Container) -> ResourceRequirements {
    let r = c.resources.clone().unwrap_or_default();
    ResourceRequirements {
        limits: r.limits.filter(|m| !m.is_empty()),
        requests: r.requests.filter(|m| !m.is_empty()),
        claims: None,
    }
}

/// What the spec asks for, for every init and main container.
pub fn desired(spec: &PodSpec) -> Allocation {
    pod_lifecycle::all_containers(spec)
        .map(|c| (c.name.clone(), wanted(c)))
        .collect()
}

/// Whether two requirement lists mean the same amounts (`1` and `1000m` are equal).
pub fn same(a: &ResourceRequirements, b: &ResourceRequirements) -> bool {
    ["cpu", "memory"].iter().all(|k| {
        amount(&a.requests, k).ok() == amount(&b.requests, k).ok()
            && amount(&a.limits, k).ok() == amount(&b.limits, k).ok()
    })
}

/// The CPU (milli) and memory (bytes) a pod's allocation requests: its main containers
/// and sidecars together, or its largest init container when that is more.
pub fn pod_requests(spec: &PodSpec, a: &Allocation) -> Result<(u64, u64), QuantityError> {
    let req = |name: &str, k: &str| -> Result<u64, QuantityError> {
        Ok(a.get(name)
            .map(|r| amount(&r.requests, k))
            .transpose()?
            .flatten()
            .unwrap_or(0))
    };
    let (mut cpu, mut mem) = (0, 0);
    for c in spec.containers.iter().chain(
        spec.init_containers
            .iter()
            .flatten()
            .filter(|c| pod_lifecycle::is_sidecar(c)),
    ) {
        cpu += req(&c.name, "cpu")?;
        mem += req(&c.name, "memory")?;
    }
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| !pod_lifecycle::is_sidecar(c))
    {
        cpu = cpu.max(req(&c.name, "cpu")?);
        mem = mem.max(req(&c.name, "memory")?);
    }
    Ok((cpu, mem))
}

/// The CPU (milli) and memory (bytes) an allocation requests, every container added
/// (a quantity that does not parse counts nothing).
pub fn requested(a: &Allocation) -> (u64, u64) {
    a.values().fold((0, 0), |(cpu, mem), r| {
        let get = |k| amount(&r.requests, k).ok().flatten().unwrap_or(0);
        (cpu + get("cpu"), mem + get("memory"))
    })
}

/// What becomes of a resize the spec asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allocated: the node actuates it.
    Admit,
    /// Not now: the other pods' allocations leave too little (kubelet's `Deferred`).
    Deferred(String),
    /// Never on this node: more than it has at all (kubelet's `Infeasible`).
    Infeasible(String),
}

/// Whether a pod may grow to `wanted` (CPU milli, memory bytes) on a node with
/// `allocatable`, where the other pods hold `others`.
pub fn decide(wanted: (u64, u64), others: (u64, u64), allocatable: (u64, u64)) -> Decision {
    let checks = [
        ("cpu", wanted.0, others.0, allocatable.0),
        ("memory", wanted.1, others.1, allocatable.1),
    ];
    for (name, want, _, capacity) in checks {
        if want > capacity {
            return Decision::Infeasible(format!(
                "Node didn't have enough capacity: {name}, requested: {want}, capacity: {capacity}"
            ));
        }
    }
    for (name, want, used, capacity) in checks {
        if want + used > capacity {
            return Decision::Deferred(format!(
                "Node didn't have enough resource: {name}, requested: {want}, used: {used}, capacity: {capacity}"
            ));
        }
    }
    Decision::Admit
}

/// Whether container `c` restarts to go from `from` to `to`: a changed resource whose
/// `resizePolicy` says RestartContainer (NotRequired is the default).
pub fn needs_restart(
    c: &Container,
    from: &ResourceRequirements,
    to: &ResourceRequirements,
) -> bool {
    ["cpu", "memory"].iter().any(|k| {
        let changed = amount(&from.requests, k).ok() != amount(&to.requests, k).ok()
            || amount(&from.limits, k).ok() != amount(&to.limits, k).ok();
        changed
            && c.resize_policy
                .iter()
                .flatten()
                .any(|p| p.resource_name == *k && p.restart_policy == "RestartContainer")
    })
}

/// The cgroup v2 files and values a container's resources come to (what runc writes
/// for the OCI values kernlet plans): `cpu.weight` from the CPU request (or limit),
/// `cpu.max` from the CPU limit, `memory.max` from the memory limit; `max` where no
/// limit is set.
pub fn cgroup_values(
    r: &ResourceRequirements,
) -> Result<Vec<(&'static str, String)>, QuantityError> {
    let cpu_limit = amount(&r.limits, "cpu")?;
    let cpu_request = amount(&r.requests, "cpu")?.or(cpu_limit);
    let shares = crate::runtime::container::cpu_shares(cpu_request.unwrap_or(0));
    // runc's conversion of cpu shares [2, 262144] to cpu.weight [1, 10000].
    let weight = 1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142;
    let cpu_max = match cpu_limit {
        Some(milli) => format!("{} 100000", (milli * 100).max(1000)),
        None => "max 100000".into(),
    };
    let memory_max = amount(&r.limits, "memory")?.map_or_else(|| "max".into(), |b| b.to_string());
    Ok(vec![
        ("cpu.weight", weight.to_string()),
        ("cpu.max", cpu_max),
        ("memory.max", memory_max),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rr(v: serde_json::Value) -> ResourceRequirements {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn equal_amounts_in_other_units_are_the_same() {
        assert!(same(
            &rr(json!({"requests": {"cpu": "1", "memory": "1Gi"}})),
            &rr(json!({"requests": {"cpu": "1000m", "memory": "1073741824"}}))
        ));
        assert!(!same(
            &rr(json!({"limits": {"cpu": "1"}})),
            &rr(json!({"limits": {"cpu": "2"}}))
        ));
    }

    #[test]
    fn resizes_are_admitted_deferred_or_infeasible_as_kubelet_decides() {
        let table = [
            ((500, 64), (1000, 0), (2000, 1000), Decision::Admit),
            (
                (1500, 64),
                (1000, 0),
                (2000, 1000),
                Decision::Deferred(
                    "Node didn't have enough resource: cpu, requested: 1500, used: 1000, capacity: 2000".into(),
                ),
            ),
            (
                (500, 2000),
                (0, 0),
                (2000, 1000),
                Decision::Infeasible(
                    "Node didn't have enough capacity: memory, requested: 2000, capacity: 1000".into(),
                ),
            ),
        ];
        for (wanted, others, allocatable, want) in table {
            assert_eq!(decide(wanted, others, allocatable), want);
        }
    }

    #[test]
    fn only_a_changed_resource_with_restart_container_restarts() {
        let c: Container = serde_json::from_value(json!({
            "name": "c",
            "resizePolicy": [
                {"resourceName": "cpu", "restartPolicy": "NotRequired"},
                {"resourceName": "memory", "restartPolicy": "RestartContainer"},
            ],
        }))
        .unwrap();
        let base = rr(json!({"limits": {"cpu": "1", "memory": "64Mi"}}));
        let cpu = rr(json!({"limits": {"cpu": "2", "memory": "64Mi"}}));
        let mem = rr(json!({"limits": {"cpu": "1", "memory": "128Mi"}}));
        assert!(!needs_restart(&c, &base, &cpu));
        assert!(needs_restart(&c, &base, &mem));
        let default: Container = serde_json::from_value(json!({"name": "d"})).unwrap();
        assert!(!needs_restart(&default, &base, &mem));
    }

    #[test]
    fn cgroup_values_follow_runc() {
        let v = cgroup_values(&rr(json!({
            "requests": {"cpu": "100m", "memory": "32Mi"},
            "limits": {"cpu": "500m", "memory": "64Mi"},
        })))
        .unwrap();
        assert_eq!(
            v,
            [
                ("cpu.weight", "4".to_string()),
                ("cpu.max", "50000 100000".to_string()),
                ("memory.max", "67108864".to_string()),
            ]
        );
        let none = cgroup_values(&ResourceRequirements::default()).unwrap();
        assert_eq!(none[1].1, "max 100000");
        assert_eq!(none[2].1, "max");
    }

    #[test]
    fn an_allocation_requests_what_its_containers_request_together() {
        let a: Allocation = [
            ("a", rr(json!({"requests": {"cpu": "1", "memory": "1Ki"}}))),
            (
                "b",
                rr(json!({"requests": {"cpu": "250m"}, "limits": {"cpu": "2"}})),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(requested(&a), (1250, 1024));
    }

    #[test]
    fn pod_requests_add_main_containers_and_sidecars_against_the_largest_init() {
        let spec: PodSpec = serde_json::from_value(json!({
            "initContainers": [{"name": "i"}, {"name": "s", "restartPolicy": "Always"}],
            "containers": [{"name": "a"}, {"name": "b"}],
        }))
        .unwrap();
        let a: Allocation = [
            ("i", rr(json!({"requests": {"cpu": "2"}}))),
            (
                "s",
                rr(json!({"requests": {"cpu": "100m", "memory": "1Ki"}})),
            ),
            ("a", rr(json!({"requests": {"cpu": "200m"}}))),
            (
                "b",
                rr(json!({"requests": {"cpu": "300m", "memory": "1Ki"}})),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(pod_requests(&spec, &a).unwrap(), (2000, 2048));
    }
}

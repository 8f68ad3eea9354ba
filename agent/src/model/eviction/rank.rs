//! Which pod kubelet evicts first, and what it says: pods are ranked per signal as
//! `pkg/kubelet/eviction/helpers.go` ranks them (memory: usage above requests first,
//! then lower priority, then the larger usage over request; disk: the same with the
//! filesystems the signal measures; pids: priority, then process count), and the
//! eviction message names the threshold, the reading and the containers over their
//! requests. Local-storage limits (emptyDir `sizeLimit`, ephemeral-storage limits)
//! evict on their own, before any threshold.

use std::cmp::Ordering;

use k8s_openapi::api::core::v1::Pod;

use super::Signal;
use crate::model::admission::request;
use crate::model::quantity::{Quantity, binary_si};

/// What one container of a pod uses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerUsage {
    pub name: String,
    /// Working set bytes (none without the memory controller).
    pub memory: Option<u64>,
    /// Bytes and inodes of its writable layer.
    pub rootfs: (u64, u64),
    /// Bytes and inodes of its logs.
    pub logs: (u64, u64),
}

/// What one volume of a pod that lives on the node's disk (a disk-backed emptyDir)
/// uses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VolumeUsage {
    pub name: String,
    pub bytes: u64,
    pub inodes: u64,
}

/// A running pod and what it uses.
#[derive(Clone, Debug, Default)]
pub struct PodUsage {
    pub pod: Pod,
    /// The pod cgroup's working set (none without the memory controller).
    pub memory: Option<u64>,
    /// Processes in the pod's cgroup.
    pub pids: Option<u64>,
    pub containers: Vec<ContainerUsage>,
    pub volumes: Vec<VolumeUsage>,
}

/// Which filesystems' usage a disk signal counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    /// One filesystem holds images, writable layers, logs and volumes.
    Everything,
    /// nodefs beside a dedicated imagefs: logs and local volumes.
    LogsAndVolumes,
    /// A dedicated imagefs: writable layers.
    WritableLayers,
}

impl Measure {
    /// What `signal` counts on a node with or without a dedicated image filesystem.
    pub fn of(signal: Signal, dedicated_imagefs: bool) -> Self {
        match (signal, dedicated_imagefs) {
            (_, false) => Self::Everything,
            (Signal::ImagefsAvailable | Signal::ImagefsInodesFree, true) => Self::WritableLayers,
            _ => Self::LogsAndVolumes,
        }
    }
}

impl PodUsage {
    fn priority(&self) -> i32 {
        self.pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
    }

    fn request(&self, resource: &str) -> u64 {
        self.pod
            .spec
            .as_ref()
            .map(|s| request(s, resource))
            .unwrap_or(0)
    }

    /// Bytes (or inodes) the pod uses on the filesystems `m` counts.
    pub fn disk(&self, m: Measure, inodes: bool) -> u64 {
        let pick = |u: (u64, u64)| if inodes { u.1 } else { u.0 };
        let containers: u64 = self
            .containers
            .iter()
            .map(|c| match m {
                Measure::Everything => pick(c.rootfs) + pick(c.logs),
                Measure::LogsAndVolumes => pick(c.logs),
                Measure::WritableLayers => pick(c.rootfs),
            })
            .sum();
        let volumes: u64 = if m == Measure::WritableLayers {
            0
        } else {
            self.volumes
                .iter()
                .map(|v| if inodes { v.inodes } else { v.bytes })
                .sum()
        };
        containers + volumes
    }
}

/// kubelet's `cmpBool`: true first.
fn true_first(a: bool, b: bool) -> Ordering {
    b.cmp(&a)
}

/// Ranks `pods` for eviction under `signal`, the first to go first.
pub fn rank(pods: &mut [PodUsage], signal: Signal, dedicated_imagefs: bool) {
    let by_priority = |a: &PodUsage, b: &PodUsage| a.priority().cmp(&b.priority());
    match signal {
        Signal::MemoryAvailable | Signal::AllocatableMemoryAvailable => pods.sort_by(|a, b| {
            // Pods without a reading go first, as kubelet's.
            match (a.memory, b.memory) {
                (Some(ma), Some(mb)) => {
                    let (ra, rb) = (a.request("memory"), b.request("memory"));
                    true_first(ma > ra, mb > rb)
                        .then_with(|| by_priority(a, b))
                        .then_with(|| {
                            (i128::from(mb) - i128::from(rb))
                                .cmp(&(i128::from(ma) - i128::from(ra)))
                        })
                }
                (x, y) => true_first(x.is_none(), y.is_none()).then_with(|| by_priority(a, b)),
            }
        }),
        Signal::PidAvailable => pods.sort_by(|a, b| {
            by_priority(a, b).then_with(|| b.pids.unwrap_or(0).cmp(&a.pids.unwrap_or(0)))
        }),
        _ => {
            let m = Measure::of(signal, dedicated_imagefs);
            let inodes = signal.resource() == "inodes";
            pods.sort_by(|a, b| {
                let (ua, ub) = (a.disk(m, inodes), b.disk(m, inodes));
                let (ra, rb) = if inodes {
                    (0, 0)
                } else {
                    (
                        a.request("ephemeral-storage"),
                        b.request("ephemeral-storage"),
                    )
                };
                true_first(ua > ra, ub > rb)
                    .then_with(|| by_priority(a, b))
                    .then_with(|| {
                        (i128::from(ub) - i128::from(rb)).cmp(&(i128::from(ua) - i128::from(ra)))
                    })
            })
        }
    }
}

/// kubelet's eviction message for `p` under `signal`, whose threshold of `threshold`
/// bytes (or inodes, or processes) the reading `available` crossed.
pub fn message(signal: Signal, threshold: u64, available: u64, p: &PodUsage) -> String {
    let resource = signal.resource();
    let mut out = format!(
        "The node was low on resource: {resource}. Threshold quantity: {}, available: {}. ",
        binary_si(threshold),
        binary_si(available)
    );
    let Some(spec) = p.pod.spec.as_ref() else {
        return out;
    };
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let containers: Vec<_> = containers.collect();
    for u in &p.containers {
        let Some(c) = containers.iter().find(|c| c.name == u.name) else {
            continue;
        };
        let usage = match resource {
            "memory" => u.memory,
            "ephemeral-storage" => Some(u.rootfs.0 + u.logs.0),
            _ => None,
        };
        let requested = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref()?.get(resource))
            .and_then(|q| Quantity::parse(&q.0).ok())
            .map(|q| u64::try_from(q.value()).unwrap_or(0))
            .unwrap_or(0);
        if let Some(usage) = usage
            && usage > requested
        {
            out.push_str(&format!(
                "Container {} was using {}, request is {}, has larger consumption of {resource}. ",
                c.name,
                binary_si(usage),
                binary_si(requested)
            ));
        }
    }
    out
}

/// Why `p` must go for exceeding a local-storage limit, before any threshold (kubelet's
/// `localStorageEviction`): an emptyDir over its `sizeLimit`, the pod over the sum of
/// its containers' ephemeral-storage limits, a container over its own.
/// Whether pod `pod` limits its local storage (an emptyDir `sizeLimit` or a
/// container's `ephemeral-storage` limit): the pods whose usage is checked each round.
pub fn has_local_limits(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let positive = |q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| {
        Quantity::parse(&q.0).is_ok_and(|q| q.value() > 0)
    };
    spec.volumes
        .iter()
        .flatten()
        .filter_map(|v| v.empty_dir.as_ref()?.size_limit.as_ref())
        .any(positive)
        || spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .filter_map(|c| {
                c.resources
                    .as_ref()?
                    .limits
                    .as_ref()?
                    .get("ephemeral-storage")
            })
            .any(positive)
}

pub fn over_local_limit(p: &PodUsage, dedicated_imagefs: bool) -> Option<String> {
    let spec = p.pod.spec.as_ref()?;
    let bytes = |q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| {
        Quantity::parse(&q.0)
            .ok()
            .map(|q| u64::try_from(q.value()).unwrap_or(0))
    };
    for v in spec.volumes.iter().flatten() {
        let Some(limit) = v.empty_dir.as_ref().and_then(|e| e.size_limit.as_ref()) else {
            continue;
        };
        let used = p.volumes.iter().find(|u| u.name == v.name).map(|u| u.bytes);
        if let (Some(used), Some(max)) = (used, bytes(limit))
            && max > 0
            && used > max
        {
            return Some(format!(
                "Usage of EmptyDir volume {:?} exceeds the limit {:?}. ",
                v.name, limit.0
            ));
        }
    }
    let limit_of = |c: &k8s_openapi::api::core::v1::Container| {
        c.resources
            .as_ref()
            .and_then(|r| r.limits.as_ref()?.get("ephemeral-storage"))
            .and_then(|q| Some((bytes(q)?, q.0.clone())))
            .filter(|(b, _)| *b > 0)
    };
    let limits: Vec<(u64, String)> = spec.containers.iter().filter_map(limit_of).collect();
    let init_max = spec
        .init_containers
        .iter()
        .flatten()
        .filter_map(limit_of)
        .max_by_key(|(b, _)| *b);
    if !limits.is_empty() || init_max.is_some() {
        let sum: u64 = limits.iter().map(|(b, _)| b).sum();
        let (total, text) = match (&limits[..], init_max) {
            (_, Some((i, t))) if i > sum => (i, t),
            ([(b, t)], _) => (*b, t.clone()),
            _ => (sum, binary_si(sum)),
        };
        if p.disk(Measure::Everything, false) > total {
            return Some(format!(
                "Pod ephemeral local storage usage exceeds the total limit of containers {text}. "
            ));
        }
    }
    for u in &p.containers {
        let Some(c) = spec.containers.iter().find(|c| c.name == u.name) else {
            continue;
        };
        let used = u.logs.0 + if dedicated_imagefs { 0 } else { u.rootfs.0 };
        if let Some((limit, text)) = limit_of(c)
            && used > limit
        {
            return Some(format!(
                "Container {} exceeded its local ephemeral storage limit {text:?}. ",
                c.name
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, json: serde_json::Value) -> Pod {
        let mut p: Pod = serde_json::from_value(serde_json::json!({"spec": json})).unwrap();
        p.metadata.name = Some(name.into());
        p
    }

    fn usage(name: &str, spec: serde_json::Value, memory: Option<u64>) -> PodUsage {
        PodUsage {
            pod: pod(name, spec),
            memory,
            containers: vec![ContainerUsage {
                name: "c".into(),
                memory,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn names(pods: &[PodUsage]) -> Vec<String> {
        pods.iter()
            .map(|p| p.pod.metadata.name.clone().unwrap())
            .collect()
    }

    const MI: u64 = 1 << 20;

    #[test]
    fn memory_ranks_over_request_then_priority_then_excess() {
        let burstable = |mem: &str| {
            serde_json::json!({"containers": [{"name": "c",
                "resources": {"requests": {"memory": mem}}}]})
        };
        let mut pods = vec![
            usage("guaranteed-under", burstable("500Mi"), Some(400 * MI)),
            usage(
                "besteffort-small",
                serde_json::json!({"containers": [{"name": "c"}]}),
                Some(10 * MI),
            ),
            usage("burstable-over", burstable("100Mi"), Some(300 * MI)),
            usage(
                "besteffort-important",
                serde_json::json!({"containers": [{"name": "c"}], "priority": 1000}),
                Some(900 * MI),
            ),
        ];
        rank(&mut pods, Signal::MemoryAvailable, false);
        assert_eq!(
            names(&pods),
            [
                "burstable-over",
                "besteffort-small",
                "besteffort-important",
                "guaranteed-under"
            ],
            "over request before under; then low priority; then the larger excess"
        );
        // A pod without a reading goes first.
        let mut pods = vec![
            usage("measured", burstable("1Mi"), Some(500 * MI)),
            usage("unknown", burstable("1Mi"), None),
        ];
        rank(&mut pods, Signal::MemoryAvailable, false);
        assert_eq!(names(&pods), ["unknown", "measured"]);
    }

    #[test]
    fn disk_ranks_by_the_filesystems_the_signal_measures() {
        let mut writer = usage(
            "writer",
            serde_json::json!({"containers": [{"name": "c"}]}),
            None,
        );
        writer.volumes = vec![VolumeUsage {
            name: "data".into(),
            bytes: 90 * MI,
            inodes: 3,
        }];
        let mut layered = usage(
            "layered",
            serde_json::json!({"containers": [{"name": "c"}]}),
            None,
        );
        layered.containers[0].rootfs = (120 * MI, 10);
        let mut pods = vec![writer.clone(), layered.clone()];
        rank(&mut pods, Signal::NodefsAvailable, false);
        assert_eq!(names(&pods), ["layered", "writer"]);
        // With a dedicated imagefs nodefs counts volumes and logs, imagefs layers.
        rank(&mut pods, Signal::NodefsAvailable, true);
        assert_eq!(names(&pods), ["writer", "layered"]);
        rank(&mut pods, Signal::ImagefsAvailable, true);
        assert_eq!(names(&pods), ["layered", "writer"]);
        rank(&mut pods, Signal::NodefsInodesFree, false);
        assert_eq!(names(&pods), ["layered", "writer"]);
        // Within its ephemeral-storage request, the larger user goes after.
        let mut pods = vec![
            usage(
                "requested",
                serde_json::json!({"containers": [{"name": "c",
                    "resources": {"requests": {"ephemeral-storage": "1Gi"}}}]}),
                None,
            ),
            writer,
        ];
        pods[0].containers[0].rootfs = (500 * MI, 1);
        rank(&mut pods, Signal::NodefsAvailable, false);
        assert_eq!(names(&pods), ["writer", "requested"]);
    }

    #[test]
    fn pids_rank_by_priority_then_count() {
        let mut a = usage("few", serde_json::json!({"containers": []}), None);
        a.pids = Some(3);
        let mut b = usage("many", serde_json::json!({"containers": []}), None);
        b.pids = Some(300);
        let mut c = usage(
            "many-important",
            serde_json::json!({"containers": [], "priority": 10}),
            None,
        );
        c.pids = Some(3000);
        let mut pods = vec![a, c, b];
        rank(&mut pods, Signal::PidAvailable, false);
        assert_eq!(names(&pods), ["many", "few", "many-important"]);
    }

    #[test]
    fn messages_are_kubelets() {
        let p = usage(
            "hog",
            serde_json::json!({"containers": [{"name": "c",
                "resources": {"requests": {"memory": "100Mi"}}}]}),
            Some(300 * MI),
        );
        assert_eq!(
            message(Signal::MemoryAvailable, 100 * MI, 31268 << 10, &p),
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 31268Ki. \
             Container c was using 300Mi, request is 100Mi, has larger consumption of memory. "
        );
        let mut w = usage(
            "w",
            serde_json::json!({"containers": [{"name": "c"}]}),
            None,
        );
        w.containers[0].rootfs = (4 * MI, 1);
        assert_eq!(
            message(Signal::NodefsAvailable, 40 * MI, 1000, &w),
            "The node was low on resource: ephemeral-storage. Threshold quantity: 40Mi, available: 1000. \
             Container c was using 4Mi, request is 0, has larger consumption of ephemeral-storage. "
        );
        assert_eq!(
            message(Signal::PidAvailable, 100, 50, &w),
            "The node was low on resource: pids. Threshold quantity: 100, available: 50. "
        );
    }

    #[test]
    fn local_storage_limits_evict_on_their_own() {
        let mut p = usage(
            "p",
            serde_json::json!({
                "volumes": [{"name": "data", "emptyDir": {"sizeLimit": "4Mi"}}],
                "containers": [{"name": "c", "resources": {"limits": {"ephemeral-storage": "64Mi"}}}]}),
            None,
        );
        p.volumes = vec![VolumeUsage {
            name: "data".into(),
            bytes: 3 * MI,
            inodes: 1,
        }];
        assert_eq!(over_local_limit(&p, false), None);
        p.volumes[0].bytes = 5 * MI;
        assert_eq!(
            over_local_limit(&p, false).as_deref(),
            Some("Usage of EmptyDir volume \"data\" exceeds the limit \"4Mi\". ")
        );
        p.volumes[0].bytes = 0;
        p.containers[0].rootfs = (65 * MI, 1);
        assert_eq!(
            over_local_limit(&p, false).as_deref(),
            Some("Pod ephemeral local storage usage exceeds the total limit of containers 64Mi. ")
        );
        // With a dedicated imagefs the writable layer is not the container's to count;
        // the pod's total still is.
        p.containers[0].rootfs = (30 * MI, 1);
        p.containers[0].logs = (40 * MI, 1);
        assert_eq!(
            over_local_limit(&p, true).as_deref(),
            Some("Pod ephemeral local storage usage exceeds the total limit of containers 64Mi. ")
        );
        let mut two = usage(
            "two",
            serde_json::json!({"containers": [
                {"name": "c", "resources": {"limits": {"ephemeral-storage": "10Mi"}}},
                {"name": "d", "resources": {"limits": {"ephemeral-storage": "100Mi"}}}]}),
            None,
        );
        two.containers[0].logs = (11 * MI, 1);
        assert_eq!(
            over_local_limit(&two, false).as_deref(),
            Some("Container c exceeded its local ephemeral storage limit \"10Mi\". ")
        );
    }
}

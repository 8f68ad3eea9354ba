//! The eviction manager's rounds against a fake node.

use std::cell::RefCell;

use super::*;
use crate::model::eviction::rank::{ContainerUsage, VolumeUsage};
use crate::model::eviction::{Flags, thresholds};

const MI: u64 = 1 << 20;

/// A node whose disk readings the test sets, and whose reclaim frees what the test
/// says.
#[derive(Default)]
struct FakeNode {
    nodefs_available: RefCell<u64>,
    memory_available: RefCell<u64>,
    /// What deleting unused images frees.
    images_free: u64,
    pods: Vec<PodUsage>,
    calls: RefCell<Vec<String>>,
    evicted: RefCell<Vec<(String, Eviction)>>,
    /// The pods whose usage was asked for.
    usage_asked: RefCell<Vec<String>>,
}

impl NodeSide for &FakeNode {
    fn readings(&self) -> BTreeMap<Signal, Reading> {
        [
            (
                Signal::NodefsAvailable,
                Reading {
                    available: *self.nodefs_available.borrow(),
                    capacity: 1000 * MI,
                },
            ),
            (
                Signal::MemoryAvailable,
                Reading {
                    available: *self.memory_available.borrow(),
                    capacity: 8000 * MI,
                },
            ),
        ]
        .into_iter()
        .collect()
    }
    fn dedicated_imagefs(&self) -> bool {
        false
    }
    fn active_pods(&self) -> Vec<Pod> {
        let evicted = self.evicted.borrow();
        self.pods
            .iter()
            .filter(|p| {
                !evicted
                    .iter()
                    .any(|(n, _)| Some(n) == p.pod.metadata.name.as_ref())
            })
            .map(|p| p.pod.clone())
            .collect()
    }
    fn usage(&self, pod: &Pod) -> Option<PodUsage> {
        self.usage_asked
            .borrow_mut()
            .push(pod.metadata.name.clone()?);
        self.pods
            .iter()
            .find(|p| p.pod.metadata.name == pod.metadata.name)
            .cloned()
    }
    fn delete_unused_containers(&self) {
        self.calls.borrow_mut().push("containers".into());
    }
    fn delete_unused_images(&self) {
        self.calls.borrow_mut().push("images".into());
        *self.nodefs_available.borrow_mut() += self.images_free;
    }
    fn cleaned_up(&self, _uid: &str) -> bool {
        true
    }
    fn node_warning(&self, reason: &str, message: String) {
        self.calls.borrow_mut().push(format!("{reason}: {message}"));
    }
    fn evict(&self, pod: &Pod, eviction: Eviction) -> bool {
        self.evicted
            .borrow_mut()
            .push((pod.metadata.name.clone().unwrap_or_default(), eviction));
        true
    }
}

fn pod(name: &str, spec: serde_json::Value, memory: u64, disk: u64) -> PodUsage {
    let mut p: Pod = serde_json::from_value(serde_json::json!({"spec": spec})).unwrap();
    p.metadata.name = Some(name.into());
    p.metadata.uid = Some(format!("uid-{name}"));
    PodUsage {
        pod: p,
        memory: Some(memory),
        containers: vec![ContainerUsage {
            name: "c".into(),
            memory: Some(memory),
            rootfs: (disk, 1),
            logs: (0, 0),
        }],
        ..Default::default()
    }
}

fn manager(node: &FakeNode, flags: Flags) -> Manager<&FakeNode> {
    Manager::new(
        node,
        Decider::new(thresholds(&flags).unwrap(), Duration::ZERO),
        Settings {
            period: Duration::from_secs(10),
            max_pod_grace: Duration::from_secs(20),
        },
        SharedPressure::default(),
    )
}

fn plain() -> serde_json::Value {
    serde_json::json!({"containers": [{"name": "c"}]})
}

#[test]
fn disk_pressure_reclaims_images_before_evicting_and_stops_there_when_that_is_enough() {
    let node = FakeNode {
        nodefs_available: RefCell::new(50 * MI),
        memory_available: RefCell::new(4000 * MI),
        images_free: 100 * MI,
        pods: vec![pod("writer", plain(), 0, 300 * MI)],
        ..Default::default()
    };
    let mut m = manager(
        &node,
        Flags {
            hard: "nodefs.available<10%".into(),
            ..Default::default()
        },
    );
    assert_eq!(m.round(Instant::now()), Vec::<String>::new());
    assert_eq!(
        *node.calls.borrow(),
        [
            "EvictionThresholdMet: Attempting to reclaim ephemeral-storage",
            "containers",
            "images"
        ]
    );
    assert!(
        node.evicted.borrow().is_empty(),
        "150Mi available is enough"
    );
    assert!(m.pressure.get().disk);
}

#[test]
fn disk_pressure_evicts_the_largest_user_when_reclaim_is_not_enough() {
    let node = FakeNode {
        nodefs_available: RefCell::new(20 * MI),
        memory_available: RefCell::new(4000 * MI),
        images_free: 10 * MI,
        pods: vec![
            pod("small", plain(), 0, 5 * MI),
            pod("writer", plain(), 0, 300 * MI),
            pod(
                "critical",
                serde_json::json!({"containers": [{"name": "c"}], "priority": 2_000_001_000}),
                0,
                900 * MI,
            ),
        ],
        ..Default::default()
    };
    let mut m = manager(
        &node,
        Flags {
            hard: "nodefs.available<10%".into(),
            ..Default::default()
        },
    );
    assert_eq!(m.round(Instant::now()), ["uid-writer"]);
    let evicted = node.evicted.borrow();
    assert_eq!(evicted.len(), 1, "one pod a round; the critical one never");
    let (name, e) = &evicted[0];
    assert_eq!(name, "writer");
    assert_eq!(e.grace, IMMEDIATE_GRACE);
    assert!(e.disruption_condition);
    // The reading of the round's start, before the reclaim, as kubelet's message.
    assert_eq!(
        e.message,
        "The node was low on resource: ephemeral-storage. Threshold quantity: 100Mi, available: 20Mi. \
         Container c was using 300Mi, request is 0, has larger consumption of ephemeral-storage. "
    );
}

#[test]
fn memory_goes_first_and_soft_evictions_get_the_shorter_grace() {
    let node = FakeNode {
        nodefs_available: RefCell::new(20 * MI),
        memory_available: RefCell::new(500 * MI),
        pods: vec![
            pod(
                "slow",
                serde_json::json!({"containers": [{"name": "c"}], "terminationGracePeriodSeconds": 60}),
                700 * MI,
                0,
            ),
            pod(
                "quick",
                serde_json::json!({"containers": [{"name": "c",
                    "resources": {"requests": {"memory": "1Gi"}}}], "terminationGracePeriodSeconds": 5}),
                800 * MI,
                0,
            ),
        ],
        ..Default::default()
    };
    let mut m = manager(
        &node,
        Flags {
            hard: "nodefs.available<10%".into(),
            soft: "memory.available<1Gi".into(),
            soft_grace: "memory.available=0s".into(),
            ..Default::default()
        },
    );
    m.round(Instant::now());
    assert_eq!(
        *node.calls.borrow(),
        ["EvictionThresholdMet: Attempting to reclaim memory"],
        "no node-level reclaim for memory"
    );
    let (name, e) = node.evicted.borrow()[0].clone();
    assert_eq!(name, "slow", "over its request (none) before one within it");
    assert_eq!(
        e.grace,
        Duration::from_secs(20),
        "max pod grace below its own"
    );
    m.round(Instant::now());
    let (name, e) = node.evicted.borrow()[1].clone();
    assert_eq!(name, "quick");
    assert_eq!(e.grace, Duration::from_secs(5));
}

#[test]
fn local_storage_limits_evict_without_pressure() {
    let mut over = pod(
        "over",
        serde_json::json!({"volumes": [{"name": "data", "emptyDir": {"sizeLimit": "1Mi"}}],
            "containers": [{"name": "c"}]}),
        0,
        0,
    );
    over.volumes.push(VolumeUsage {
        name: "data".into(),
        bytes: 2 * MI,
        inodes: 1,
    });
    let node = FakeNode {
        nodefs_available: RefCell::new(900 * MI),
        memory_available: RefCell::new(4000 * MI),
        pods: vec![pod("fine", plain(), 0, 0), over],
        ..Default::default()
    };
    let mut m = manager(
        &node,
        Flags {
            hard: "nodefs.available<10%".into(),
            ..Default::default()
        },
    );
    assert_eq!(m.round(Instant::now()), ["uid-over"]);
    let (_, e) = node.evicted.borrow()[0].clone();
    assert!(!e.disruption_condition);
    assert_eq!(e.reason, "Evicted");
    assert_eq!(
        e.message,
        "Usage of EmptyDir volume \"data\" exceeds the limit \"1Mi\". "
    );
    assert_eq!(m.pressure.get(), Default::default());
    // Without pressure only the pod with limits had its disk walked.
    assert_eq!(*node.usage_asked.borrow(), ["over"]);
}

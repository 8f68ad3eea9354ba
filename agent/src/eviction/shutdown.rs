//! Graceful node shutdown (kubelet's node shutdown manager): the node's pods end in
//! priority groups, lowest first, each pod `Failed`/`Terminated` with the
//! `DisruptionTarget` condition, and the next group starts once the last one is
//! cleaned up or its grace period is over.

use std::time::{Duration, Instant};

use super::NodeSide;
use crate::model::eviction::Eviction;
use crate::model::shutdown::{Group, MESSAGE, REASON, group_of, pod_grace};

/// Ends the node's pods by `groups`; the uids of the pods it ended.
pub fn shutdown_pods<N: NodeSide>(node: &N, groups: &[Group]) -> Vec<String> {
    let mut by_group: Vec<Vec<k8s_openapi::api::core::v1::Pod>> = vec![Vec::new(); groups.len()];
    if groups.is_empty() {
        return Vec::new();
    }
    for p in node.active_pods() {
        let priority = p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        by_group[group_of(groups, priority)].push(p);
    }
    let mut ended = Vec::new();
    for (group, pods) in groups.iter().zip(by_group) {
        if pods.is_empty() {
            continue;
        }
        tracing::info!(
            priority = group.priority,
            grace = ?group.grace,
            pods = pods.len(),
            "node shutdown: ending the pods of this priority group"
        );
        let mut uids = Vec::new();
        for pod in &pods {
            let own = pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds);
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            node.evict(
                pod,
                Eviction {
                    reason: REASON.into(),
                    message: MESSAGE.into(),
                    grace: pod_grace(group, own),
                    disruption_condition: true,
                },
            );
            uids.push(uid);
        }
        // The group gets its grace period to end (kubelet waits no longer).
        let deadline = Instant::now() + group.grace;
        while !uids.iter().all(|u| node.cleaned_up(u)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        ended.extend(uids);
    }
    ended
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::eviction::rank::PodUsage;
    use crate::model::eviction::{Reading, Signal};
    use k8s_openapi::api::core::v1::Pod;

    #[derive(Default)]
    struct Node {
        pods: Vec<Pod>,
        ended: RefCell<Vec<(String, Eviction)>>,
    }

    impl NodeSide for &Node {
        fn readings(&self) -> BTreeMap<Signal, Reading> {
            BTreeMap::new()
        }
        fn dedicated_imagefs(&self) -> bool {
            false
        }
        fn active_pods(&self) -> Vec<Pod> {
            self.pods.clone()
        }
        fn usage(&self, _pod: &Pod) -> Option<PodUsage> {
            panic!("the shutdown ranks by priority alone: no pod's usage is read")
        }
        fn delete_unused_containers(&self) {}
        fn delete_unused_images(&self) {}
        fn evict(&self, pod: &Pod, e: Eviction) -> bool {
            self.ended
                .borrow_mut()
                .push((pod.metadata.name.clone().unwrap_or_default(), e));
            true
        }
        fn cleaned_up(&self, _uid: &str) -> bool {
            true
        }
        fn node_warning(&self, _reason: &str, _message: String) {}
    }

    fn pod(name: &str, spec: serde_json::Value) -> Pod {
        let mut p: Pod = serde_json::from_value(serde_json::json!({"spec": spec})).unwrap();
        p.metadata.name = Some(name.into());
        p.metadata.uid = Some(name.into());
        p
    }

    #[test]
    fn pods_end_lowest_priority_first_within_their_groups_grace() {
        let node = Node {
            pods: vec![
                pod(
                    "dns",
                    serde_json::json!({"containers": [], "priority": 2_000_000_000}),
                ),
                pod(
                    "web",
                    serde_json::json!({"containers": [], "terminationGracePeriodSeconds": 60}),
                ),
                pod(
                    "quick",
                    serde_json::json!({"containers": [], "terminationGracePeriodSeconds": 3}),
                ),
            ],
            ..Default::default()
        };
        let groups =
            crate::model::shutdown::groups(Duration::from_secs(30), Duration::from_secs(10), "")
                .unwrap();
        let ended = shutdown_pods(&&node, &groups);
        assert_eq!(ended, ["web", "quick", "dns"]);
        let e = node.ended.borrow();
        assert_eq!(
            e[0].1.grace,
            Duration::from_secs(20),
            "the group's, shorter"
        );
        assert_eq!(
            e[1].1.grace,
            Duration::from_secs(3),
            "the pod's own, shorter"
        );
        assert_eq!(
            e[2].1.grace,
            Duration::from_secs(10),
            "the critical group's"
        );
        assert_eq!(e[0].1.reason, "Terminated");
        assert_eq!(
            e[0].1.message,
            "Pod was terminated in response to imminent node shutdown."
        );
        assert!(e[0].1.disruption_condition);
        assert!(shutdown_pods(&&node, &[]).is_empty(), "off without groups");
    }
}

//! The OOM score adjustment of a container, as kubelet 1.36 computes it
//! (`pkg/kubelet/qos/policy.go`): the kernel's OOM killer then picks BestEffort pods
//! first, Burstable ones by how small a share of the node's memory they asked for, and
//! Guaranteed and node-critical pods last.

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};

use super::qos::{QosClass, qos_class};
use super::quantity::Quantity;

/// Guaranteed and node-critical containers.
pub const GUARANTEED: i32 = -997;
/// BestEffort containers.
pub const BEST_EFFORT: i32 = 1000;

/// kubelet's `IsNodeCriticalPod`: critical and of the `system-node-critical` priority
/// class.
fn node_critical(pod: &Pod) -> bool {
    super::pod_lifecycle::is_critical(pod)
        && pod
            .spec
            .as_ref()
            .and_then(|s| s.priority_class_name.as_deref())
            == Some("system-node-critical")
}

fn memory_request(c: &Container) -> i64 {
    c.resources
        .as_ref()
        .and_then(|r| r.requests.as_ref()?.get("memory"))
        .and_then(|q| Quantity::parse(&q.0).ok())
        .map(|q| i64::try_from(q.value()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn is_sidecar(spec: &PodSpec, c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
        && spec
            .init_containers
            .iter()
            .flatten()
            .any(|i| i.name == c.name)
}

/// The pod-level memory request not given to any container, shared equally among the
/// containers (kubelet's `remainingPodMemReqPerContainer`), when the pod sets one.
fn remaining_per_container(spec: &PodSpec) -> i64 {
    let Some(pod_request) = super::qos::pod_level(spec)
        .and_then(|r| r.requests.as_ref()?.get("memory"))
        .and_then(|q| Quantity::parse(&q.0).ok())
        .map(|q| i64::try_from(q.value()).unwrap_or(i64::MAX))
    else {
        return 0;
    };
    let inits = spec.init_containers.iter().flatten();
    let sidecars: i64 = inits
        .clone()
        .filter(|c| is_sidecar(spec, c))
        .map(memory_request)
        .sum();
    let regular: i64 = spec.containers.iter().map(memory_request).sum();
    let longest_init = inits
        .filter(|c| !is_sidecar(spec, c))
        .map(memory_request)
        .max()
        .unwrap_or(0);
    let aggregate = (regular + sidecars).max(longest_init);
    let count = spec.containers.len() + spec.init_containers.as_ref().map_or(0, Vec::len);
    (pod_request - aggregate) / i64::try_from(count.max(1)).unwrap_or(1)
}

/// `oom_score_adj` for container `c` of `pod` on a node with `memory_capacity` bytes.
pub fn score_adjust(pod: &Pod, c: &Container, memory_capacity: i64) -> i32 {
    let Some(spec) = pod.spec.as_ref() else {
        return BEST_EFFORT;
    };
    if node_critical(pod) {
        return GUARANTEED;
    }
    match qos_class(spec) {
        Ok(QosClass::Guaranteed) => return GUARANTEED,
        Ok(QosClass::BestEffort) => return BEST_EFFORT,
        Ok(QosClass::Burstable) | Err(_) => {}
    }
    let capacity = memory_capacity.max(1);
    let extra = remaining_per_container(spec);
    let mut adjust = 1000 - 1000 * (memory_request(c) + extra) / capacity;
    if is_sidecar(spec, c) {
        let least = spec
            .containers
            .iter()
            .map(memory_request)
            .min()
            .unwrap_or(0)
            + extra;
        adjust = adjust.min(1000 - 1000 * least / capacity);
    }
    let adjust = i32::try_from(adjust).unwrap_or(BEST_EFFORT);
    if adjust < 1000 + GUARANTEED {
        1000 + GUARANTEED
    } else if adjust == BEST_EFFORT {
        BEST_EFFORT - 1
    } else {
        adjust
    }
}

/// What a process may set when it cannot lower its score below `own` (no
/// CAP_SYS_RESOURCE): the wanted value, or `own` when the wanted one is lower.
pub fn settable(wanted: i32, own: i32, may_lower: bool) -> i32 {
    if may_lower { wanted } else { wanted.max(own) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GI: i64 = 1 << 30;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    fn first(p: &Pod) -> &Container {
        &p.spec.as_ref().unwrap().containers[0]
    }

    #[test]
    fn classes_and_the_burstable_formula_as_kubelet() {
        let cases = [
            // (resources of the only container, expected on a 10 GiB node)
            (serde_json::json!({}), 1000),
            (
                serde_json::json!({"requests": {"memory": "1Gi", "cpu": "1"}, "limits": {"memory": "1Gi", "cpu": "1"}}),
                -997,
            ),
            (serde_json::json!({"requests": {"memory": "1Gi"}}), 900),
            (serde_json::json!({"requests": {"memory": "5Gi"}}), 500),
            // Asking for all the node: still above Guaranteed.
            (serde_json::json!({"requests": {"memory": "10Gi"}}), 3),
            // A cpu request only: burstable, but never BestEffort's 1000.
            (serde_json::json!({"requests": {"cpu": "100m"}}), 999),
        ];
        for (resources, want) in cases {
            let p = pod(serde_json::json!({"spec": {"containers": [
                {"name": "c", "resources": resources}]}}));
            assert_eq!(score_adjust(&p, first(&p), 10 * GI), want, "{resources}");
        }
    }

    #[test]
    fn node_critical_pods_and_sidecars() {
        let p = pod(serde_json::json!({
            "metadata": {"annotations": {"kubernetes.io/config.source": "file"}},
            "spec": {"priorityClassName": "system-node-critical",
                     "containers": [{"name": "c"}]}}));
        assert_eq!(score_adjust(&p, first(&p), 10 * GI), -997);
        // Critical priority without the class: its QoS decides.
        let p = pod(serde_json::json!({"spec": {"priority": 2_000_000_000,
            "priorityClassName": "system-cluster-critical", "containers": [{"name": "c"}]}}));
        assert_eq!(score_adjust(&p, first(&p), 10 * GI), 1000);
        // A sidecar asking for less than the main container gets the main's score.
        let p = pod(serde_json::json!({"spec": {
            "initContainers": [{"name": "s", "restartPolicy": "Always",
                                "resources": {"requests": {"memory": "1Gi"}}}],
            "containers": [{"name": "c", "resources": {"requests": {"memory": "4Gi"}}}]}}));
        let sidecar = &p.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
        assert_eq!(score_adjust(&p, sidecar, 10 * GI), 600);
        assert_eq!(score_adjust(&p, first(&p), 10 * GI), 600);
    }

    #[test]
    fn pod_level_requests_are_shared_out() {
        // 4 GiB for the pod, 1 GiB asked by one of its two containers: each gets 1.5
        // GiB of the rest.
        let p = pod(serde_json::json!({"spec": {
            "resources": {"requests": {"memory": "4Gi"}},
            "containers": [{"name": "c", "resources": {"requests": {"memory": "1Gi"}}},
                           {"name": "d"}]}}));
        assert_eq!(score_adjust(&p, first(&p), 10 * GI), 750);
        assert_eq!(
            score_adjust(&p, &p.spec.as_ref().unwrap().containers[1], 10 * GI),
            850
        );
    }

    #[test]
    fn without_the_capability_a_score_is_not_lowered() {
        assert_eq!(settable(-997, 0, true), -997);
        assert_eq!(settable(-997, 0, false), 0);
        assert_eq!(settable(1000, 0, false), 1000);
    }
}

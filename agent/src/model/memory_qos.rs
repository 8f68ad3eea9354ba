//! The cgroup v2 memory files kubelet 1.36 sets on a container beside `memory.max`:
//! Memory QoS (the `MemoryQoS` feature, opt-in as in kubelet) — `memory.high` to
//! throttle before the limit, `memory.min`/`memory.low` to protect requests with the
//! `TieredReservation` policy — and swap (`memorySwap.swapBehavior`): `NoSwap` gives
//! every container `memory.swap.max` 0, `LimitedSwap` gives Burstable containers a share
//! of the node's swap proportional to their memory request.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};

use super::qos::{QosClass, qos_class};
use super::quantity::Quantity;

/// kubelet's `defaultPageSize`.
const PAGE: u64 = 4096;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MemoryQosError {
    #[error("--memory-swap-behavior: {0:?} is not NoSwap or LimitedSwap")]
    Swap(String),
    #[error("--memory-reservation-policy: {0:?} is not None or TieredReservation")]
    Reservation(String),
    #[error("--memory-throttling-factor: {0} is not above 0 and at most 1")]
    Factor(f64),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SwapBehavior {
    #[default]
    NoSwap,
    LimitedSwap,
}

impl SwapBehavior {
    pub fn parse(s: &str) -> Result<Self, MemoryQosError> {
        match s {
            "" | "NoSwap" => Ok(Self::NoSwap),
            "LimitedSwap" => Ok(Self::LimitedSwap),
            other => Err(MemoryQosError::Swap(other.to_string())),
        }
    }
}

/// The node's memory policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryPolicy {
    /// Memory QoS on (kubelet's `MemoryQoS` feature gate).
    pub qos: bool,
    /// `memoryThrottlingFactor` (0.9).
    pub throttling_factor: f64,
    /// `memoryReservationPolicy: TieredReservation` (else `None`).
    pub tiered_reservation: bool,
    pub swap: SwapBehavior,
    /// The node's memory and swap capacity and allocatable memory, bytes.
    pub node_memory: u64,
    pub node_swap: u64,
    pub allocatable_memory: u64,
}

impl Default for MemoryPolicy {
    fn default() -> Self {
        Self {
            qos: false,
            throttling_factor: 0.9,
            tiered_reservation: false,
            swap: SwapBehavior::NoSwap,
            node_memory: 0,
            node_swap: 0,
            allocatable_memory: 0,
        }
    }
}

impl MemoryPolicy {
    /// Checks the flags' values.
    pub fn checked(
        mut self,
        swap: &str,
        reservation: &str,
        factor: f64,
    ) -> Result<Self, MemoryQosError> {
        self.swap = SwapBehavior::parse(swap)?;
        self.tiered_reservation = match reservation {
            "" | "None" => false,
            "TieredReservation" => true,
            other => return Err(MemoryQosError::Reservation(other.to_string())),
        };
        if !(factor > 0.0 && factor <= 1.0) {
            return Err(MemoryQosError::Factor(factor));
        }
        self.throttling_factor = factor;
        Ok(self)
    }
}

fn bytes(c: &Container, side: &str) -> u64 {
    let r = c.resources.as_ref();
    let list = if side == "limits" {
        r.and_then(|r| r.limits.as_ref())
    } else {
        r.and_then(|r| r.requests.as_ref())
    };
    list.and_then(|l| l.get("memory"))
        .and_then(|q| Quantity::parse(&q.0).ok())
        .map(|q| u64::try_from(q.value()).unwrap_or(0))
        .unwrap_or(0)
}

/// The unified cgroup files for container `c` of `pod`; `swap_controller` says whether
/// the node's cgroups have `memory.swap.max`.
pub fn unified(
    pod: &Pod,
    c: &Container,
    p: &MemoryPolicy,
    swap_controller: bool,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let spec = pod.spec.clone().unwrap_or_default();
    let qos = qos_class(&spec).unwrap_or(QosClass::BestEffort);
    let (request, limit) = (bytes(c, "requests"), bytes(c, "limits"));
    if swap_controller {
        let limited = p.swap == SwapBehavior::LimitedSwap
            && !super::pod_lifecycle::is_critical(pod)
            && qos == QosClass::Burstable
            && (request != 0 || limit != 0)
            && request != limit
            && p.node_memory > 0
            && request <= p.node_memory;
        let swap = if limited {
            (request as f64 / p.node_memory as f64 * p.node_swap as f64) as u64
        } else {
            0
        };
        out.insert("memory.swap.max".into(), swap.to_string());
    }
    if p.qos {
        let (min, low) = match (request != 0 && p.tiered_reservation, qos) {
            (true, QosClass::Guaranteed) => (request, 0),
            (true, _) => (0, request),
            (false, _) => (0, 0),
        };
        out.insert("memory.min".into(), min.to_string());
        out.insert("memory.low".into(), low.to_string());
        if request != limit {
            let top = if limit != 0 {
                limit
            } else {
                p.allocatable_memory
            };
            if top > 0 {
                let high = ((request as f64 + (top as f64 - request as f64) * p.throttling_factor)
                    / PAGE as f64)
                    .floor() as u64
                    * PAGE;
                if high > request {
                    out.insert("memory.high".into(), high.to_string());
                }
            }
        }
    }
    out
}

/// The pod cgroup's memory protection (Memory QoS with `TieredReservation`, a memory
/// request): `memory.min` for a Guaranteed pod, `memory.low` for a Burstable one.
pub fn pod_protection(
    p: &MemoryPolicy,
    qos: QosClass,
    request: u64,
) -> Option<(&'static str, u64)> {
    if !(p.qos && p.tiered_reservation) || request == 0 {
        return None;
    }
    match qos {
        QosClass::Guaranteed => Some(("memory.min", request)),
        QosClass::Burstable => Some(("memory.low", request)),
        QosClass::BestEffort => None,
    }
}

/// The QoS parents' memory protection under Memory QoS, as kubelet's QoS container
/// manager writes it from the sums of the Guaranteed and the Burstable pods' memory
/// requests: `kubepods` (the Guaranteed level) `memory.min` covering both, and
/// `kubepods/burstable` `memory.low` the Burstable ones; 0 without `TieredReservation`.
pub fn qos_protection(
    p: &MemoryPolicy,
    guaranteed: u64,
    burstable: u64,
) -> Vec<(&'static str, &'static str, u64)> {
    if !p.qos {
        return Vec::new();
    }
    let (min, low) = if p.tiered_reservation {
        (guaranteed + burstable, burstable)
    } else {
        (0, 0)
    };
    vec![
        ("kubepods", "memory.min", min),
        ("kubepods/burstable", "memory.low", low),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn pods_and_qos_parents_protect_requests_with_tiered_reservation() {
        let on = MemoryPolicy {
            qos: true,
            tiered_reservation: true,
            ..Default::default()
        };
        assert_eq!(
            pod_protection(&on, QosClass::Guaranteed, 10),
            Some(("memory.min", 10))
        );
        assert_eq!(
            pod_protection(&on, QosClass::Burstable, 10),
            Some(("memory.low", 10))
        );
        assert_eq!(pod_protection(&on, QosClass::Burstable, 0), None);
        assert_eq!(pod_protection(&on, QosClass::BestEffort, 0), None);
        let none = MemoryPolicy {
            tiered_reservation: false,
            ..on
        };
        assert_eq!(pod_protection(&none, QosClass::Guaranteed, 10), None);
        assert_eq!(
            qos_protection(&on, 100, 30),
            [
                ("kubepods", "memory.min", 130),
                ("kubepods/burstable", "memory.low", 30)
            ]
        );
        assert_eq!(
            qos_protection(&none, 100, 30),
            [
                ("kubepods", "memory.min", 0),
                ("kubepods/burstable", "memory.low", 0)
            ]
        );
        assert!(qos_protection(&MemoryPolicy::default(), 100, 30).is_empty());
    }

    use super::*;

    fn pod(resources: serde_json::Value, priority: Option<i32>) -> (Pod, Container) {
        let mut spec = serde_json::json!({"containers": [{"name": "c", "resources": resources}]});
        if let Some(p) = priority {
            spec["priority"] = p.into();
        }
        let p: Pod = serde_json::from_value(serde_json::json!({"spec": spec})).unwrap();
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        (p, c)
    }

    const MI: u64 = 1 << 20;

    #[test]
    fn memory_high_and_protection_as_kubelet_sets_them() {
        let policy = MemoryPolicy {
            qos: true,
            allocatable_memory: 1000 * MI,
            ..Default::default()
        };
        let (p, c) = pod(
            serde_json::json!({"requests": {"memory": "100Mi"}, "limits": {"memory": "200Mi"}}),
            None,
        );
        let u = unified(&p, &c, &policy, false);
        // 100Mi + 0.9 × 100Mi, whole pages.
        assert_eq!(u["memory.high"], (190 * MI).to_string());
        assert_eq!(u["memory.min"], "0");
        assert_eq!(u["memory.low"], "0");
        assert!(!u.contains_key("memory.swap.max"));
        // Without a limit the node's allocatable memory stands for it.
        let (p, c) = pod(serde_json::json!({"requests": {"memory": "100Mi"}}), None);
        let u = unified(&p, &c, &policy, false);
        assert_eq!(u["memory.high"], (910 * MI).to_string());
        // Neither request nor limit (request == limit == 0): none, as kubelet.
        let (p, c) = pod(serde_json::json!({}), None);
        assert!(!unified(&p, &c, &policy, false).contains_key("memory.high"));
        // Guaranteed: no memory.high; protected with TieredReservation.
        let tiered = MemoryPolicy {
            tiered_reservation: true,
            ..policy
        };
        let (p, c) = pod(
            serde_json::json!({"requests": {"memory": "64Mi", "cpu": "1"}, "limits": {"memory": "64Mi", "cpu": "1"}}),
            None,
        );
        let u = unified(&p, &c, &tiered, false);
        assert!(!u.contains_key("memory.high"));
        assert_eq!(u["memory.min"], (64 * MI).to_string());
        let (p, c) = pod(serde_json::json!({"requests": {"memory": "64Mi"}}), None);
        assert_eq!(
            unified(&p, &c, &tiered, false)["memory.low"],
            (64 * MI).to_string()
        );
        // Off: nothing.
        assert!(unified(&p, &c, &MemoryPolicy::default(), false).is_empty());
    }

    #[test]
    fn swap_only_for_burstable_with_limited_swap() {
        let limited = MemoryPolicy {
            swap: SwapBehavior::LimitedSwap,
            node_memory: 1000 * MI,
            node_swap: 500 * MI,
            ..Default::default()
        };
        let (p, c) = pod(serde_json::json!({"requests": {"memory": "100Mi"}}), None);
        assert_eq!(
            unified(&p, &c, &limited, true)["memory.swap.max"],
            (50 * MI).to_string()
        );
        assert_eq!(
            unified(&p, &c, &MemoryPolicy::default(), true)["memory.swap.max"],
            "0"
        );
        let (best_effort, c0) = pod(serde_json::json!({}), None);
        assert_eq!(
            unified(&best_effort, &c0, &limited, true)["memory.swap.max"],
            "0"
        );
        let (critical, c1) = pod(
            serde_json::json!({"requests": {"memory": "100Mi"}}),
            Some(2_000_001_000),
        );
        assert_eq!(
            unified(&critical, &c1, &limited, true)["memory.swap.max"],
            "0"
        );
        assert!(
            unified(&p, &c, &limited, false).is_empty(),
            "no swap controller"
        );
        assert!(
            MemoryPolicy::default()
                .checked("Sometimes", "None", 0.9)
                .is_err()
        );
        assert!(
            MemoryPolicy::default()
                .checked("NoSwap", "None", 1.5)
                .is_err()
        );
    }
}

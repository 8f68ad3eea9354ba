//! Pod QoS class, computed the way the apiserver and kubelet compute it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;

use super::quantity::{Quantity, QuantityError};

/// The three QoS classes, spelled as in `status.qosClass`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// The string written to `status.qosClass`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Guaranteed => "Guaranteed",
            Self::Burstable => "Burstable",
            Self::BestEffort => "BestEffort",
        }
    }
}

const QOS_RESOURCES: [&str; 2] = ["cpu", "memory"];

/// Sums of the cpu/memory values one side (requests or limits) of a container sets.
fn tracked(
    list: Option<&BTreeMap<String, ApiQuantity>>,
) -> Result<BTreeMap<&'static str, Quantity>, QuantityError> {
    let mut out = BTreeMap::new();
    if let Some(list) = list {
        for name in QOS_RESOURCES {
            if let Some(q) = list.get(name) {
                let q = Quantity::parse(&q.0)?;
                if q > Quantity::ZERO {
                    out.insert(name, q);
                }
            }
        }
    }
    Ok(out)
}

/// The pod's own requests and limits when it sets cpu or memory at the pod level
/// (kubelet's `IsPodLevelResourcesSet`).
pub fn pod_level(spec: &PodSpec) -> Option<&k8s_openapi::api::core::v1::ResourceRequirements> {
    let r = spec.resources.as_ref()?;
    let names = |m: Option<&BTreeMap<String, ApiQuantity>>| {
        m.is_some_and(|m| QOS_RESOURCES.iter().any(|n| m.contains_key(*n)))
    };
    (names(r.requests.as_ref()) || names(r.limits.as_ref())).then_some(r)
}

/// QoS class of a pod. Requests that are unset default to the limits, as the apiserver's
/// defaulting does, so the answer is the same for a manifest and for a stored pod.
///
/// With pod-level resources (`spec.resources` naming cpu or memory, beta and on by
/// default since 1.34) the class comes from them alone, as kubelet computes it.
pub fn qos_class(spec: &PodSpec) -> Result<QosClass, QuantityError> {
    if let Some(pod) = pod_level(spec) {
        let limits = tracked(pod.limits.as_ref())?;
        let mut requests = tracked(pod.requests.as_ref())?;
        for (name, value) in &limits {
            requests.entry(name).or_insert(*value);
        }
        if requests.is_empty() && limits.is_empty() {
            return Ok(QosClass::BestEffort);
        }
        let all_limited = QOS_RESOURCES.iter().all(|r| limits.contains_key(r));
        if all_limited && requests == limits {
            return Ok(QosClass::Guaranteed);
        }
        return Ok(QosClass::Burstable);
    }
    let containers: Vec<&Container> = super::pod_lifecycle::all_containers(spec).collect();
    let mut requests: BTreeMap<&str, Quantity> = BTreeMap::new();
    let mut limits: BTreeMap<&str, Quantity> = BTreeMap::new();
    let mut guaranteed = true;
    for c in containers {
        let res = c.resources.as_ref();
        let lim = tracked(res.and_then(|r| r.limits.as_ref()))?;
        let mut req = tracked(res.and_then(|r| r.requests.as_ref()))?;
        for (name, value) in &lim {
            req.entry(name).or_insert(*value);
        }
        if QOS_RESOURCES.iter().any(|r| !lim.contains_key(r)) {
            guaranteed = false;
        }
        for (name, value) in req {
            requests
                .entry(name)
                .and_modify(|sum| *sum = *sum + value)
                .or_insert(value);
        }
        for (name, value) in lim {
            limits
                .entry(name)
                .and_modify(|sum| *sum = *sum + value)
                .or_insert(value);
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return Ok(QosClass::BestEffort);
    }
    if guaranteed && requests == limits {
        return Ok(QosClass::Guaranteed);
    }
    Ok(QosClass::Burstable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn fixture(path: &str) -> Pod {
        let full = format!("{}/../fixtures/k8s/{path}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn pod_level_resources_decide_the_class_alone() {
        let spec = |v: serde_json::Value| -> PodSpec { serde_json::from_value(v).unwrap() };
        let guaranteed = spec(serde_json::json!({
            "resources": {"limits": {"cpu": "1", "memory": "64Mi"}},
            "containers": [{"name": "a"}, {"name": "b", "resources": {"requests": {"cpu": "100m"}}}],
        }));
        assert_eq!(qos_class(&guaranteed).unwrap(), QosClass::Guaranteed);
        let burstable = spec(serde_json::json!({
            "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "2", "memory": "64Mi"}},
            "containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}],
        }));
        assert_eq!(qos_class(&burstable).unwrap(), QosClass::Burstable);
        // Only extended resources at the pod level: the containers decide.
        let containers = spec(serde_json::json!({
            "resources": {"limits": {"example.com/gpu": "1"}},
            "containers": [{"name": "a"}],
        }));
        assert!(pod_level(&containers).is_none());
        assert_eq!(qos_class(&containers).unwrap(), QosClass::BestEffort);
    }

    #[test]
    fn fixture_pods_have_the_class_the_apiserver_gave_them() {
        for path in [
            "objects/pod-web-589c74b5fc-cscnw.json",
            "objects/pod-hostnet.json",
            "kubelet/pods/hostnet.json",
            "kubelet/pods/web-669987d464-hrczf.json",
        ] {
            let pod = fixture(path);
            let want = pod
                .status
                .as_ref()
                .and_then(|s| s.qos_class.clone())
                .unwrap_or_else(|| panic!("{path} has no qosClass"));
            let got = qos_class(pod.spec.as_ref().unwrap()).unwrap();
            assert_eq!(got.as_str(), want, "{path}");
        }
    }

    #[test]
    fn classes_from_manifests() {
        let spec = |resources: serde_json::Value| -> PodSpec {
            serde_json::from_value(serde_json::json!({
                "containers": [{"name": "c", "image": "i", "resources": resources}]
            }))
            .unwrap()
        };
        assert_eq!(
            qos_class(&spec(serde_json::json!({}))).unwrap(),
            QosClass::BestEffort
        );
        assert_eq!(
            qos_class(&spec(
                serde_json::json!({"limits": {"cpu": "1", "memory": "1Gi"}})
            ))
            .unwrap(),
            QosClass::Guaranteed,
            "requests default to limits"
        );
        assert_eq!(
            qos_class(&spec(serde_json::json!({
                "limits": {"cpu": "1", "memory": "1Gi"},
                "requests": {"cpu": "1000m", "memory": "1073741824"}
            })))
            .unwrap(),
            QosClass::Guaranteed,
            "equal quantities in other spellings"
        );
        assert_eq!(
            qos_class(&spec(serde_json::json!({"requests": {"cpu": "100m"}}))).unwrap(),
            QosClass::Burstable
        );
        assert!(qos_class(&spec(serde_json::json!({"limits": {"cpu": "lots"}}))).is_err());
    }
}

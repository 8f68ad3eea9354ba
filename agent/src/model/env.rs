//! A container's environment from its pod, as kubelet builds it: `envFrom` sources in
//! order, then `env` entries (which win), values from configMaps, secrets, the pod's
//! own fields and its containers' resources; service links and the `KUBERNETES_*`
//! variables of the apiserver's Service.
//!
//! The result is the container with a plain `env` list (every value literal; `$`
//! escaped in resolved values so `$(VAR)` expansion leaves them alone), which the
//! runtime spec then expands as Kubernetes defines.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, ResourceFieldSelector};

use super::quantity::Quantity;

/// A configMap's or secret's data.
pub type Data = BTreeMap<String, Vec<u8>>;

/// A configMap's or secret's data by name (the flag says secret); `Ok(None)` when it
/// does not exist.
pub type Lookup<'a> = &'a dyn Fn(bool, &str) -> Result<Option<Data>, EnvError>;

/// Why a container's environment cannot be resolved (kubelet's
/// CreateContainerConfigError).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("fieldRef {0:?} is not a supported field")]
    Field(String),
    #[error("resourceFieldRef {0:?} is not a resource")]
    NotAResource(String),
    #[error("resourceFieldRef resource {0:?} is not supported")]
    Unsupported(String),
    #[error("resourceFieldRef names no container {0:?}")]
    NoContainer(String),
    #[error("resourceFieldRef {what}: {error}")]
    Quantity { what: String, error: String },
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("couldn't find key {key} in {kind} {name:?}")]
    NoKey {
        kind: &'static str,
        name: String,
        key: String,
    },
    /// The source could not be read (the apiserver's answer, or a static pod's
    /// reference to an API object).
    #[error("{0}")]
    Source(String),
}

/// A Service as its link variables need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkedService {
    pub name: String,
    pub cluster_ip: String,
    /// `(port name, port, protocol)`.
    pub ports: Vec<(String, i32, String)>,
}

/// What the environment draws on besides the pod itself.
pub struct Sources<'a> {
    pub lookup: Lookup<'a>,
    pub node_ip: &'a str,
    pub pod_ip: &'a str,
    /// The node's allocatable CPU (millicores) and memory (bytes): the limits of a
    /// container that sets none.
    pub allocatable_cpu_milli: u64,
    pub allocatable_memory: u64,
    /// Service variables (`FOO_SERVICE_HOST`, …) to add first.
    pub service_env: Vec<(String, String)>,
}

/// A pod field for `fieldRef` (env and downward API volumes).
pub fn field_value(pod: &Pod, node_ip: &str, pod_ip: &str, path: &str) -> Result<String, EnvError> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map_entry = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref()
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_default()
    };
    if let Some(key) = path
        .strip_prefix("metadata.labels['")
        .and_then(|k| k.strip_suffix("']"))
    {
        return Ok(map_entry(&m.labels, key));
    }
    if let Some(key) = path
        .strip_prefix("metadata.annotations['")
        .and_then(|k| k.strip_suffix("']"))
    {
        return Ok(map_entry(&m.annotations, key));
    }
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => node_ip.to_string(),
        "status.podIP" | "status.podIPs" => pod_ip.to_string(),
        "metadata.labels" | "metadata.annotations" => {
            let map = if path == "metadata.labels" {
                &m.labels
            } else {
                &m.annotations
            };
            map.iter()
                .flatten()
                .map(|(k, v)| format!("{k}={v:?}\n"))
                .collect::<String>()
        }
        other => return Err(EnvError::Field(other.to_string())),
    })
}

/// What a container without a limit reads as its limit: the pod-level limit where the
/// pod sets one (kubelet's `defaultPodLimitsForDownwardAPI`), else the node's
/// allocatable.
fn limits_default(pod: &Pod, src: &Sources<'_>) -> (u64, u64) {
    let limit = |name: &str| {
        let limits = &super::qos::pod_level(pod.spec.as_ref()?)?.limits;
        super::quantity::amount(limits, name).ok().flatten()
    };
    (
        limit("cpu").unwrap_or(src.allocatable_cpu_milli),
        limit("memory").unwrap_or(src.allocatable_memory),
    )
}

/// A container's resource for `resourceFieldRef`: its limit (the node's allocatable
/// when it sets none) or request, divided by `divisor` and rounded up.
pub fn resource_value(
    c: &Container,
    sel: &ResourceFieldSelector,
    allocatable_cpu_milli: u64,
    allocatable_memory: u64,
) -> Result<String, EnvError> {
    let res = c.resources.as_ref();
    let (kind, name) = sel
        .resource
        .split_once('.')
        .ok_or_else(|| EnvError::NotAResource(sel.resource.clone()))?;
    let set = match kind {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => return Err(EnvError::NotAResource(sel.resource.clone())),
    };
    let quantity = |q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| {
        Quantity::parse(&q.0).map_err(|e| EnvError::Quantity {
            what: sel.resource.clone(),
            error: e.to_string(),
        })
    };
    let given = set.and_then(|m| m.get(name)).map(quantity).transpose()?;
    let divisor = sel
        .divisor
        .as_ref()
        .map(quantity)
        .transpose()?
        .filter(|d| d.milli() != 0);
    let ceil_div = |a: i128, b: i128| if b <= 0 { a } else { (a + b - 1) / b };
    Ok(match name {
        "cpu" => {
            let milli = given.map_or(
                if kind == "limits" {
                    i128::from(allocatable_cpu_milli)
                } else {
                    0
                },
                |q| q.milli(),
            );
            let div = divisor.map_or(1000, |d| d.milli());
            ceil_div(milli, div).to_string()
        }
        "memory" | "ephemeral-storage" => {
            let bytes = given.map_or(
                if kind == "limits" && name == "memory" {
                    i128::from(allocatable_memory)
                } else {
                    0
                },
                |q| q.value(),
            );
            let div = divisor.map_or(1, |d| d.value());
            ceil_div(bytes, div).to_string()
        }
        other => return Err(EnvError::Unsupported(other.to_string())),
    })
}

/// `$` doubled, so expansion gives the text back unchanged.
fn literal(v: &str) -> String {
    v.replace('$', "$$")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The container with its environment resolved (see the module doc). A missing
/// source that is not optional is an error naming it (kubelet's
/// CreateContainerConfigError).
pub fn resolve(pod: &Pod, c: &Container, src: &Sources<'_>) -> Result<Container, EnvError> {
    let mut env: Vec<EnvVar> = src
        .service_env
        .iter()
        .map(|(k, v)| EnvVar {
            name: k.clone(),
            value: Some(literal(v)),
            value_from: None,
        })
        .collect();
    let set = |env: &mut Vec<EnvVar>, name: String, value: Option<String>| {
        env.retain(|e| e.name != name);
        env.push(EnvVar {
            name,
            value,
            value_from: None,
        });
    };
    for from in c.env_from.iter().flatten() {
        let (secret, name, optional) = match (&from.config_map_ref, &from.secret_ref) {
            (Some(r), _) => (false, r.name.clone(), r.optional.unwrap_or(false)),
            (None, Some(r)) => (true, r.name.clone(), r.optional.unwrap_or(false)),
            (None, None) => continue,
        };
        let kind = if secret { "secret" } else { "configmap" };
        match (src.lookup)(secret, &name)? {
            Some(data) => {
                let prefix = from.prefix.clone().unwrap_or_default();
                for (k, v) in data {
                    set(&mut env, format!("{prefix}{k}"), Some(literal(&text(&v))));
                }
            }
            None if optional => {}
            None => return Err(EnvError::NotFound { kind, name }),
        }
    }
    for var in c.env.iter().flatten() {
        let Some(from) = &var.value_from else {
            set(&mut env, var.name.clone(), var.value.clone());
            continue;
        };
        let value = if let Some(r) = &from.config_map_key_ref {
            key_value(src, false, &r.name, &r.key, r.optional.unwrap_or(false))?
        } else if let Some(r) = &from.secret_key_ref {
            key_value(src, true, &r.name, &r.key, r.optional.unwrap_or(false))?
        } else if let Some(f) = &from.field_ref {
            Some(field_value(pod, src.node_ip, src.pod_ip, &f.field_path)?)
        } else if let Some(r) = &from.resource_field_ref {
            let target = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
                Some(n) => pod
                    .spec
                    .iter()
                    .flat_map(super::pod_lifecycle::all_containers)
                    .find(|x| x.name == n)
                    .ok_or_else(|| EnvError::NoContainer(n.to_string()))?,
                None => c,
            };
            let (cpu, memory) = limits_default(pod, src);
            Some(resource_value(target, r, cpu, memory)?)
        } else {
            None
        };
        if let Some(v) = value {
            set(&mut env, var.name.clone(), Some(literal(&v)));
        }
    }
    let mut out = c.clone();
    out.env = Some(env);
    out.env_from = None;
    Ok(out)
}

fn key_value(
    src: &Sources<'_>,
    secret: bool,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, EnvError> {
    let kind = if secret { "secret" } else { "configmap" };
    match (src.lookup)(secret, name)? {
        Some(data) => match data.get(key) {
            Some(v) => Ok(Some(text(v))),
            None if optional => Ok(None),
            None => Err(EnvError::NoKey {
                kind,
                name: name.to_string(),
                key: key.to_string(),
            }),
        },
        None if optional => Ok(None),
        None => Err(EnvError::NotFound {
            kind,
            name: name.to_string(),
        }),
    }
}

/// Docker-link style variables of Services, as kubelet writes them:
/// `NAME_SERVICE_HOST`, `NAME_SERVICE_PORT[_PORTNAME]`, `NAME_PORT` and
/// `NAME_PORT_<port>_<proto>[_PROTO, _PORT, _ADDR]`.
pub fn service_links(services: &[LinkedService]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for LinkedService {
        name,
        cluster_ip: ip,
        ports,
    } in services
    {
        let prefix = name.to_uppercase().replace('-', "_");
        out.push((format!("{prefix}_SERVICE_HOST"), ip.clone()));
        for (i, (port_name, port, proto)) in ports.iter().enumerate() {
            if i == 0 {
                out.push((format!("{prefix}_SERVICE_PORT"), port.to_string()));
                out.push((
                    format!("{prefix}_PORT"),
                    format!("{}://{ip}:{port}", proto.to_lowercase()),
                ));
            }
            if !port_name.is_empty() {
                out.push((
                    format!(
                        "{prefix}_SERVICE_PORT_{}",
                        port_name.to_uppercase().replace('-', "_")
                    ),
                    port.to_string(),
                ));
            }
            let base = format!("{prefix}_PORT_{port}_{}", proto.to_uppercase());
            out.push((
                base.clone(),
                format!("{}://{ip}:{port}", proto.to_lowercase()),
            ));
            out.push((format!("{base}_PROTO"), proto.to_lowercase()));
            out.push((format!("{base}_PORT"), port.to_string()));
            out.push((format!("{base}_ADDR"), ip.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "serviceAccountName": "default", "containers": [{
                "name": "c",
                "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}, "requests": {"cpu": "100m"}},
                "envFrom": [{"configMapRef": {"name": "cfg"}}, {"prefix": "S_", "secretRef": {"name": "sec"}},
                            {"configMapRef": {"name": "nope", "optional": true}}],
                "env": [
                    {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "GREETING"}}},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                    {"name": "CPU_M", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
                    {"name": "EPHEMERAL", "valueFrom": {"resourceFieldRef": {"resource": "limits.ephemeral-storage"}}},
                    {"name": "GONE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nokey", "optional": true}}},
                    {"name": "PLAIN", "value": "$(GREETING)!"}
                ]
            }]},
        }))
        .unwrap()
    }

    fn lookup(secret: bool, name: &str) -> Result<Option<Data>, EnvError> {
        let mut m = BTreeMap::new();
        match (secret, name) {
            (false, "cfg") => {
                m.insert("GREETING".to_string(), b"hello $(X)".to_vec());
                m.insert("MODE".to_string(), b"fast".to_vec());
            }
            (true, "sec") => {
                m.insert("password".to_string(), b"s3cret".to_vec());
            }
            _ => return Ok(None),
        }
        Ok(Some(m))
    }

    /// A resolved container's variables by name.
    fn values(c: Container) -> BTreeMap<String, String> {
        c.env
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name, e.value.unwrap_or_default()))
            .collect()
    }

    #[test]
    fn every_source_resolves_in_kubernetes_order() {
        let p = pod();
        let c = &p.spec.as_ref().unwrap().containers[0];
        let src = Sources {
            lookup: &lookup,
            node_ip: "198.18.0.10",
            pod_ip: "10.244.0.5",
            allocatable_cpu_milli: 2000,
            allocatable_memory: 8 << 30,
            service_env: vec![("KUBERNETES_SERVICE_HOST".into(), "10.96.0.1".into())],
        };
        let out = resolve(&p, c, &src).unwrap();
        assert!(out.env_from.is_none());
        let env = values(out);
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
        assert_eq!(env["MODE"], "fast");
        assert_eq!(env["S_password"], "s3cret");
        // Resolved values are literal: `$(X)` stays as the configMap has it.
        assert_eq!(env["GREETING"], "hello $$(X)");
        assert_eq!(env["PASSWORD"], "s3cret");
        assert_eq!(env["POD_IP"], "10.244.0.5");
        assert_eq!(env["APP"], "web");
        assert_eq!(env["MEM"], "64");
        assert_eq!(env["CPU"], "1", "500m rounds up to one core");
        assert_eq!(env["CPU_M"], "100");
        assert_eq!(env["EPHEMERAL"], "0");
        assert!(!env.contains_key("GONE"));
        assert_eq!(
            env["PLAIN"], "$(GREETING)!",
            "expanded later, with the rest"
        );
    }

    #[test]
    fn containers_without_limits_read_the_pod_level_limit_else_allocatable() {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"resources": {"limits": {"memory": "256Mi"}}, "containers": [{
                "name": "c",
                "env": [
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
                ]}]},
        }))
        .unwrap();
        let src = Sources {
            lookup: &lookup,
            node_ip: "198.18.0.10",
            pod_ip: "10.244.0.5",
            allocatable_cpu_milli: 2000,
            allocatable_memory: 8 << 30,
            service_env: Vec::new(),
        };
        let c = &p.spec.as_ref().unwrap().containers[0];
        let env = values(resolve(&p, c, &src).unwrap());
        assert_eq!((env["MEM"].as_str(), env["CPU"].as_str()), ("256", "2000"));
    }

    #[test]
    fn missing_sources_are_named() {
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [{
            "name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]}]}}))
        .unwrap();
        let c = &p.spec.as_ref().unwrap().containers[0];
        let src = Sources {
            lookup: &lookup,
            node_ip: "",
            pod_ip: "",
            allocatable_cpu_milli: 1000,
            allocatable_memory: 1 << 30,
            service_env: Vec::new(),
        };
        assert_eq!(
            resolve(&p, c, &src).unwrap_err().to_string(),
            "secret \"absent\" not found"
        );
        let mut c2 = c.clone();
        c2.env = Some(vec![serde_json::from_value(
            json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "missing"}}}),
        )
        .unwrap()]);
        assert_eq!(
            resolve(&p, &c2, &src).unwrap_err().to_string(),
            "couldn't find key missing in configmap \"cfg\""
        );
        // Without limits, the node's allocatable.
        let sel = ResourceFieldSelector {
            resource: "limits.memory".into(),
            ..Default::default()
        };
        assert_eq!(
            resource_value(c, &sel, 1000, 1 << 30).unwrap(),
            (1u64 << 30).to_string()
        );
    }

    #[test]
    fn service_links_like_kubelets() {
        let env = service_links(&[LinkedService {
            name: "kubernetes".into(),
            cluster_ip: "10.96.0.1".into(),
            ports: vec![("https".into(), 443, "TCP".into())],
        }]);
        let m: BTreeMap<_, _> = env.into_iter().collect();
        assert_eq!(m["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
        assert_eq!(m["KUBERNETES_SERVICE_PORT"], "443");
        assert_eq!(m["KUBERNETES_SERVICE_PORT_HTTPS"], "443");
        assert_eq!(m["KUBERNETES_PORT"], "tcp://10.96.0.1:443");
        assert_eq!(m["KUBERNETES_PORT_443_TCP"], "tcp://10.96.0.1:443");
        assert_eq!(m["KUBERNETES_PORT_443_TCP_PROTO"], "tcp");
        assert_eq!(m["KUBERNETES_PORT_443_TCP_PORT"], "443");
        assert_eq!(m["KUBERNETES_PORT_443_TCP_ADDR"], "10.96.0.1");
    }
}

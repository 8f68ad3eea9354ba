//! `meta.k8s.io/v1` Table rendering, which kubectl asks for on `get`.

use serde_json::{Value, json};

use super::resources::ResourceType;

fn col(name: &str, ty: &str, priority: u8) -> Value {
    json!({"name": name, "type": ty, "format": if name == "Name" { "name" } else { "" }, "description": "", "priority": priority})
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn age(obj: &Value) -> String {
    let created = s(obj, "/metadata/creationTimestamp");
    let Ok(ts) = created.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = (jiff::Timestamp::now().as_second() - ts.as_second()).max(0);
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

fn ports(svc: &Value) -> String {
    let list = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if list.is_empty() {
        return "<none>".into();
    }
    list.iter()
        .map(|p| {
            let port = p.get("port").map(Value::to_string).unwrap_or_default();
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort") {
                Some(np) => format!("{port}:{np}/{proto}"),
                None => format!("{port}/{proto}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn or_none(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

fn pod_row(p: &Value) -> Vec<Value> {
    let statuses = p
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let total = p
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = statuses
        .iter()
        .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    let restarts: i64 = statuses
        .iter()
        .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
        .sum();
    let waiting = statuses
        .iter()
        .find_map(|c| c.pointer("/state/waiting/reason").and_then(Value::as_str));
    let terminated = statuses.iter().find_map(|c| {
        c.pointer("/state/terminated/reason")
            .and_then(Value::as_str)
    });
    let mut status = waiting
        .or(terminated)
        .map(str::to_string)
        .unwrap_or_else(|| {
            let reason = s(p, "/status/reason");
            if reason.is_empty() {
                s(p, "/status/phase").to_string()
            } else {
                reason.to_string()
            }
        });
    if p.pointer("/metadata/deletionTimestamp").is_some() {
        status = "Terminating".into();
    }
    vec![
        json!(s(p, "/metadata/name")),
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts),
        json!(age(p)),
        json!(or_none(s(p, "/status/podIP").into())),
        json!(or_none(s(p, "/spec/nodeName").into())),
        json!("<none>"),
        json!("<none>"),
    ]
}

fn node_row(n: &Value) -> Vec<Value> {
    let conds = n
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ready = conds
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"));
    let mut status = match ready.and_then(|c| c.get("status")).and_then(Value::as_str) {
        Some("True") => "Ready".to_string(),
        _ => "NotReady".to_string(),
    };
    if n.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let roles: Vec<String> = n
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|l| {
            l.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let addr = |ty: &str| {
        n.pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .find(|x| x.get("type").and_then(Value::as_str) == Some(ty))
                    .and_then(|x| x.get("address"))
                    .and_then(Value::as_str)
            })
            .unwrap_or("<none>")
            .to_string()
    };
    vec![
        json!(s(n, "/metadata/name")),
        json!(status),
        json!(if roles.is_empty() {
            "<none>".into()
        } else {
            roles.join(",")
        }),
        json!(age(n)),
        json!(s(n, "/status/nodeInfo/kubeletVersion")),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(s(n, "/status/nodeInfo/osImage")),
        json!(s(n, "/status/nodeInfo/kernelVersion")),
        json!(s(n, "/status/nodeInfo/containerRuntimeVersion")),
    ]
}

fn service_row(svc: &Value) -> Vec<Value> {
    let ty = s(svc, "/spec/type");
    let mut external: Vec<String> = svc
        .pointer("/spec/externalIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    external.extend(
        svc.pointer("/status/loadBalancer/ingress")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|i| {
                i.get("ip")
                    .or(i.get("hostname"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            }),
    );
    let ext = if !external.is_empty() {
        external.join(",")
    } else if ty == "LoadBalancer" {
        "<pending>".into()
    } else if ty == "ExternalName" {
        s(svc, "/spec/externalName").into()
    } else {
        "<none>".into()
    };
    let selector = svc
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    vec![
        json!(s(svc, "/metadata/name")),
        json!(ty),
        json!(s(svc, "/spec/clusterIP")),
        json!(ext),
        json!(ports(svc)),
        json!(age(svc)),
        json!(or_none(selector)),
    ]
}

fn slice_row(e: &Value) -> Vec<Value> {
    let ports = e
        .get("ports")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .map(|p| p.get("port").map(Value::to_string).unwrap_or_default())
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "<unset>".into());
    let addrs: Vec<String> = e
        .get("endpoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|ep| {
            ep.get("addresses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    let shown = if addrs.is_empty() {
        "<unset>".to_string()
    } else if addrs.len() > 3 {
        format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
    } else {
        addrs.join(",")
    };
    vec![
        json!(s(e, "/metadata/name")),
        json!(s(e, "/addressType")),
        json!(ports),
        json!(shown),
        json!(age(e)),
    ]
}

/// Renders one object's cells.
type RowFn = fn(&Value) -> Vec<Value>;

/// Columns and a row renderer for a resource.
fn layout(rt: &ResourceType) -> (Vec<Value>, RowFn) {
    match (rt.group, rt.plural) {
        ("", "pods") => (
            vec![
                col("Name", "string", 0),
                col("Ready", "string", 0),
                col("Status", "string", 0),
                col("Restarts", "string", 0),
                col("Age", "string", 0),
                col("IP", "string", 1),
                col("Node", "string", 1),
                col("Nominated Node", "string", 1),
                col("Readiness Gates", "string", 1),
            ],
            pod_row,
        ),
        ("", "nodes") => (
            vec![
                col("Name", "string", 0),
                col("Status", "string", 0),
                col("Roles", "string", 0),
                col("Age", "string", 0),
                col("Version", "string", 0),
                col("Internal-IP", "string", 1),
                col("External-IP", "string", 1),
                col("OS-Image", "string", 1),
                col("Kernel-Version", "string", 1),
                col("Container-Runtime", "string", 1),
            ],
            node_row,
        ),
        ("", "services") => (
            vec![
                col("Name", "string", 0),
                col("Type", "string", 0),
                col("Cluster-IP", "string", 0),
                col("External-IP", "string", 0),
                col("Port(s)", "string", 0),
                col("Age", "string", 0),
                col("Selector", "string", 1),
            ],
            service_row,
        ),
        ("discovery.k8s.io", "endpointslices") => (
            vec![
                col("Name", "string", 0),
                col("AddressType", "string", 0),
                col("Ports", "string", 0),
                col("Endpoints", "string", 0),
                col("Age", "string", 0),
            ],
            slice_row,
        ),
        ("", "namespaces") => (
            vec![
                col("Name", "string", 0),
                col("Status", "string", 0),
                col("Age", "string", 0),
            ],
            |o| {
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(s(o, "/status/phase")),
                    json!(age(o)),
                ]
            },
        ),
        _ => (
            vec![col("Name", "string", 0), col("Age", "string", 0)],
            |o| vec![json!(s(o, "/metadata/name")), json!(age(o))],
        ),
    }
}

/// Whether the Accept header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// A Table of `items` (one object for a get, many for a list).
pub fn table(rt: &ResourceType, items: &[Value], list_rv: Option<u64>) -> Value {
    let (columns, row) = layout(rt);
    let rows: Vec<Value> = items
        .iter()
        .map(|o| json!({"cells": row(o), "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"].clone()}}))
        .collect();
    let mut meta = json!({});
    if let Some(rv) = list_rv {
        meta["resourceVersion"] = json!(rv.to_string());
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": columns, "rows": rows})
}

//! `kernlet explain <pod | service | ip[:port]>`: the whole path in one view — a
//! service's frontends, the backends the maps hold for each, and for every backend
//! where it lives: a pod of this node (its namespace pins, host-side veth, cgroup) or a
//! pod behind an overlay peer (the peer's node, VTEP, public IP, whether its route,
//! neighbour and FDB entries are in place, its last probe).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde_json::{Value, json};

use crate::model::cidr::Ipv4Net;
use crate::model::services::{backend_addr, frontend_of};

/// Where the pieces are read from.
#[derive(Clone, Debug)]
pub struct Sources<'a> {
    pub state_dir: &'a Path,
    pub run_dir: &'a Path,
    pub bpffs_dir: &'a Path,
    pub kubeconfig: Option<&'a Path>,
}

/// Where an address lives, as far as this node can tell.
fn locate(src: &Sources<'_>, ip: IpAddr, overlay: &Value) -> Value {
    for p in crate::podworker::recorded_pods(src.state_dir) {
        if p["status"]["podIP"].as_str() == Some(ip.to_string().as_str()) {
            let uid = p["metadata"]["uid"].as_str().unwrap_or("").to_string();
            let sandbox: Value =
                std::fs::read(src.state_dir.join("pods").join(&uid).join("sandbox.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
            let host_network = sandbox["hostNetwork"] == true;
            return json!({
                "where": "this node",
                "pod": format!("{}/{}", p["metadata"]["namespace"].as_str().unwrap_or(""), p["metadata"]["name"].as_str().unwrap_or("")),
                "uid": uid,
                "hostNetwork": host_network,
                "netns": (!host_network).then(|| src.run_dir.join("pods").join(&uid).join("ns/net")),
                "veth": (!host_network).then(|| crate::runtime::network::host_veth(&uid)),
                "cgroup": sandbox["cgroup"],
                "phase": p["status"]["phase"],
            });
        }
    }
    for peer in overlay["peers"].as_array().into_iter().flatten() {
        // The overlay carries IPv4 pod networks.
        let inside = match ip {
            IpAddr::V4(ip) => peer["podCidr"]
                .as_str()
                .and_then(|c| c.parse::<Ipv4Net>().ok())
                .is_some_and(|c| c.contains(ip)),
            IpAddr::V6(_) => false,
        };
        if inside && peer["node"] != "" {
            return json!({
                "where": format!("node {}", peer["node"].as_str().unwrap_or("")),
                "via": crate::model::overlay::DEVICE,
                "podCidr": peer["podCidr"], "vtepMac": peer["vtepMac"], "publicIp": peer["publicIp"],
                "route": peer["route"], "neighbour": peer["neighbour"], "fdb": peer["fdb"],
                "probe": peer["probe"],
            });
        }
    }
    json!({"where": "not a pod of this node nor behind an overlay peer"})
}

/// The frontends of the maps matching `(ip, port)` (`port` `None`: any).
fn frontends(
    maps: &(
        std::collections::BTreeMap<
            kernlet_ebpf_common::ServiceKey,
            kernlet_ebpf_common::ServiceValue,
        >,
        std::collections::BTreeMap<kernlet_ebpf_common::BackendKey, kernlet_ebpf_common::Backend>,
    ),
    ip: IpAddr,
    port: Option<u16>,
) -> Vec<(String, Vec<SocketAddr>)> {
    let (services, backends) = maps;
    services
        .iter()
        .filter_map(|(k, v)| {
            let (fip, fport, proto) = frontend_of(k);
            (fip == ip && port.is_none_or(|p| p == fport)).then(|| {
                // Each backend once (a Maglev slot repeats them).
                let list = crate::model::services::slot_members(v, backends)
                    .0
                    .iter()
                    .map(|(b, _)| backend_addr(b))
                    .collect();
                (
                    format!(
                        "{}/{}",
                        SocketAddr::new(fip, fport),
                        if proto == 17 { "UDP" } else { "TCP" }
                    ),
                    list,
                )
            })
        })
        .collect()
}

/// The Service `ns/name`'s frontend addresses, from the apiserver.
async fn service_ips(kubeconfig: &Path, ns: &str, name: &str) -> Result<Vec<IpAddr>, String> {
    let text = std::fs::read_to_string(kubeconfig).map_err(|e| e.to_string())?;
    let client = crate::client::from_kubeconfig_text(&text).await?;
    let api: kube::Api<k8s_openapi::api::core::v1::Service> = kube::Api::namespaced(client, ns);
    let svc = tokio::time::timeout(std::time::Duration::from_secs(5), api.get(name))
        .await
        .map_err(|_| "the apiserver did not answer within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    let spec = svc.spec.unwrap_or_default();
    let mut ips: Vec<IpAddr> = spec
        .cluster_ips
        .unwrap_or_default()
        .iter()
        .chain(spec.external_ips.unwrap_or_default().iter())
        .filter_map(|i| i.parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    Ok(ips)
}

/// The path to `target`, as JSON.
pub async fn explain(target: &str, src: &Sources<'_>) -> Result<Value, String> {
    let overlay = crate::overlay_view::gather(src.kubeconfig, src.run_dir)
        .await
        .unwrap_or_else(|e| json!({"peers": [], "unavailable": e}));
    let maps = crate::sys::lb::read_pinned(&src.bpffs_dir.join("lb")).ok();
    let describe = |fronts: Vec<(String, Vec<SocketAddr>)>| -> Value {
        json!(fronts
            .into_iter()
            .map(|(f, list)| json!({
                "frontend": f,
                "backends": list.iter().map(|b| json!({"address": b.to_string(), "at": locate(src, b.ip(), &overlay)})).collect::<Vec<_>>(),
            }))
            .collect::<Vec<_>>())
    };
    // ip:port or ip
    let (ip, port) = match target.parse::<SocketAddr>() {
        Ok(a) => (Some(a.ip()), Some(a.port())),
        Err(_) => (target.parse::<IpAddr>().ok(), None),
    };
    if let Some(ip) = ip {
        let fronts = maps
            .as_ref()
            .map(|m| frontends(m, ip, port))
            .unwrap_or_default();
        if !fronts.is_empty() {
            return Ok(
                json!({"target": target, "kind": "frontend", "frontends": describe(fronts)}),
            );
        }
        return Ok(json!({"target": target, "kind": "address", "at": locate(src, ip, &overlay)}));
    }
    // ns/name or name: a pod of this node first, then a Service.
    let (ns, name) = target.split_once('/').unwrap_or(("default", target));
    if let Some(p) = crate::podworker::recorded_pods(src.state_dir)
        .into_iter()
        .find(|p| p["metadata"]["namespace"] == ns && p["metadata"]["name"] == name)
    {
        let at = match p["status"]["podIP"].as_str().and_then(|i| i.parse().ok()) {
            Some(ip) => locate(src, ip, &overlay),
            None => json!({"where": "this node", "pod": format!("{ns}/{name}"), "podIP": null}),
        };
        let uid = p["metadata"]["uid"].as_str().unwrap_or_default();
        let volumes = crate::volume_view::describe(src.state_dir, uid, &p);
        return Ok(json!({"target": target, "kind": "pod", "at": at, "volumes": volumes}));
    }
    let Some(kc) = src.kubeconfig else {
        return Err(format!(
            "{ns}/{name} is not a pod of this node; to explain a Service by name pass --kubeconfig (or give its ip:port)"
        ));
    };
    let ips = service_ips(kc, ns, name).await.map_err(|e| {
        format!("{ns}/{name} is not a pod of this node, and the Service could not be read: {e}")
    })?;
    let Some(maps) = maps else {
        return Err(format!(
            "Service {ns}/{name} ({}) has no frontend here: the load-balancer maps are not pinned under {} (kernlet runs with --service-proxy?)",
            ips.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            src.bpffs_dir.join("lb").display()
        ));
    };
    let fronts: Vec<_> = ips
        .iter()
        .flat_map(|ip| frontends(&maps, *ip, None))
        .collect();
    Ok(
        json!({"target": target, "kind": "service", "service": format!("{ns}/{name}"), "frontends": describe(fronts)}),
    )
}

fn place(at: &Value) -> String {
    let s = |k: &str| at[k].as_str().unwrap_or("-").to_string();
    if at["where"] == "this node" {
        let mut out = format!("pod {} on this node", s("pod"));
        if at["hostNetwork"] == true {
            out.push_str(" (host network)");
        } else if at["veth"].is_string() {
            out.push_str(&format!(
                ", netns {}, host veth {}, cgroup {}",
                s("netns"),
                s("veth"),
                s("cgroup")
            ));
        }
        return out;
    }
    if at["via"].is_string() {
        let probe = match (&at["probe"]["reachable"], &at["probe"]["pathMtuOk"]) {
            (Value::Bool(true), Value::Bool(true)) => "probe ok".to_string(),
            (Value::Bool(false), _) => "peer UNREACHABLE".to_string(),
            (Value::Bool(true), _) => "path MTU too small".to_string(),
            _ => "not probed yet".to_string(),
        };
        return format!(
            "{} (pod CIDR {}) via {} → VTEP {} at {}; route {}, neighbour {}, fdb {}; {probe}",
            s("where"),
            s("podCidr"),
            s("via"),
            s("vtepMac"),
            s("publicIp"),
            s("route"),
            s("neighbour"),
            s("fdb")
        );
    }
    s("where")
}

/// The path as lines for people.
pub fn text(v: &Value) -> String {
    let mut out = Vec::new();
    match v["kind"].as_str() {
        Some("pod") | Some("address") => {
            out.push(format!(
                "{} → {}",
                v["target"].as_str().unwrap_or(""),
                place(&v["at"])
            ));
            out.extend(
                crate::volume_view::lines(&v["volumes"])
                    .into_iter()
                    .map(|l| format!("  {l}")),
            );
        }
        _ => {
            if let Some(svc) = v["service"].as_str() {
                out.push(format!("service {svc}"));
            }
            for f in v["frontends"].as_array().into_iter().flatten() {
                out.push(format!("  {}", f["frontend"].as_str().unwrap_or("")));
                let backends = f["backends"].as_array().cloned().unwrap_or_default();
                if backends.is_empty() {
                    out.push("    → no backend: connects are refused".into());
                }
                for b in backends {
                    out.push(format!(
                        "    → {} : {}",
                        b["address"].as_str().unwrap_or(""),
                        place(&b["at"])
                    ));
                }
            }
        }
    }
    out.join("\n") + "\n"
}

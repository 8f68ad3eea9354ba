//! `kernlet services`: the load-balancing table as the pinned maps hold it — each
//! frontend with its backends — named after the Services when the apiserver can be
//! asked, filterable by service name or address. Reads the maps directly, so it
//! answers while the daemon is down.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use serde_json::{Value, json};

use crate::model::services::{backend_addr, frontend_of};

/// `(address, port, protocol)` → `namespace/name`, from the Services.
async fn names(kubeconfig: &Path) -> Result<BTreeMap<(String, u16, u8), String>, String> {
    let text = std::fs::read_to_string(kubeconfig)
        .map_err(|e| format!("reading {}: {e}", kubeconfig.display()))?;
    let client = crate::client::from_kubeconfig_text(&text).await?;
    let api: kube::Api<Service> = kube::Api::all(client);
    let list = tokio::time::timeout(Duration::from_secs(5), api.list(&Default::default()))
        .await
        .map_err(|_| "the apiserver did not answer within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for svc in list.items {
        let name = format!(
            "{}/{}",
            svc.metadata.namespace.as_deref().unwrap_or(""),
            svc.metadata.name.as_deref().unwrap_or("")
        );
        let spec = svc.spec.clone().unwrap_or_default();
        let mut ips: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
        ips.extend(spec.cluster_ip.clone());
        ips.extend(spec.external_ips.clone().unwrap_or_default());
        for ing in svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.clone())
            .unwrap_or_default()
        {
            ips.extend(ing.ip);
        }
        // As the maps show them: IPv6 addresses in their canonical form.
        let ips: Vec<String> = ips
            .iter()
            .map(|ip| {
                ip.parse::<std::net::IpAddr>()
                    .map_or_else(|_| ip.clone(), |a| a.to_string())
            })
            .collect();
        for p in spec.ports.iter().flatten() {
            let proto = match p.protocol.as_deref().unwrap_or("TCP") {
                "UDP" => 17,
                _ => 6,
            };
            for ip in &ips {
                out.insert((ip.clone(), p.port as u16, proto), name.clone());
            }
            if let Some(np) = p.node_port {
                out.insert((String::new(), np as u16, proto), name.clone());
            }
        }
    }
    Ok(out)
}

/// Whether `filter` names the frontend `ip:port/PROTO` of service `namespace/name`:
/// the whole service name or its name alone, the address, `ip:port`, or the frontend
/// as shown (an IPv6 one as `[ip]:port/PROTO`). Whole parts only: `10.96.0.1` is not
/// `10.96.0.10`, `web` is not `web-lb`.
fn matches(filter: &str, frontend: &str, service: Option<&str>) -> bool {
    let (ip_port, _) = frontend.split_once('/').unwrap_or((frontend, ""));
    let ip = ip_port.rsplit_once(':').map_or(ip_port, |(ip, _)| ip);
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    [frontend, ip_port, ip].contains(&filter)
        || service
            .is_some_and(|s| s == filter || s.split_once('/').is_some_and(|(_, n)| n == filter))
}

/// The table as JSON, keeping the frontends `filter` names (see [`matches`]).
pub async fn gather(
    pin_dir: &Path,
    run_dir: &Path,
    kubeconfig: Option<&Path>,
    filter: Option<&str>,
) -> Result<Value, String> {
    let (services, backends) = crate::sys::lb::read_pinned(pin_dir).map_err(|e| {
        format!(
            "{e} (the maps exist once kernlet has run with --service-proxy and this --bpffs-dir)"
        )
    })?;
    // Counters are shared by every frontend a backend serves.
    let stats = crate::sys::lb::read_backend_stats(pin_dir).unwrap_or_default();
    let (names, source) = match kubeconfig {
        Some(kc) => match names(kc).await {
            Ok(n) => (n, "apiserver".to_string()),
            Err(e) => (
                BTreeMap::new(),
                format!("unnamed (apiserver unreachable: {e})"),
            ),
        },
        None => (BTreeMap::new(), "unnamed (no kubeconfig)".to_string()),
    };
    let mut rows = Vec::new();
    for (key, value) in &services {
        let (ip, port, proto) = frontend_of(key);
        let name = names
            .get(&(ip.to_string(), port, proto))
            .or_else(|| names.get(&(String::new(), port, proto)))
            .cloned();
        let frontend = format!(
            "{}/{}",
            std::net::SocketAddr::new(ip, port),
            if proto == 17 { "UDP" } else { "TCP" }
        );
        if let Some(f) = filter
            && !matches(f, &frontend, name.as_deref())
        {
            continue;
        }
        // A Maglev slot repeats its backends: one row each, weighted by its entries.
        let (members, found) = crate::model::services::slot_members(value, &backends);
        let list: Vec<Value> = members
            .iter()
            .map(|(b, weight)| {
                json!({
                    "address": backend_addr(b).to_string(),
                    "local": b.flags & kernlet_ebpf_common::BACKEND_LOCAL != 0,
                    "weight": weight,
                    "sent": stats.get(b).copied().unwrap_or(0),
                })
            })
            .collect();
        rows.push(json!({
            "frontend": frontend, "service": name, "slot": value.slot,
            "affinityTimeoutSeconds": value.affinity_timeout,
            "kind": kind(value.flags),
            "complete": found == value.count,
            "backends": list,
        }));
    }
    // What the daemon last did, when it is there to say.
    let daemon = crate::daemon::view_of(
        run_dir,
        "services",
        "the table is read from the pinned maps",
    );
    Ok(json!({"names": source, "pins": pin_dir, "daemon": daemon, "frontends": rows}))
}

/// What reaches a frontend and how it is balanced, from its flags: `internal` (the
/// node and its pods), `external` (also from outside; `+local` for
/// externalTrafficPolicy Local, `+ranges` with loadBalancerSourceRanges, `+maglev`).
fn kind(flags: u32) -> String {
    use kernlet_ebpf_common::{SVC_EXTERNAL, SVC_LOCAL, SVC_MAGLEV, SVC_SOURCE_RANGES};
    if flags & SVC_EXTERNAL == 0 {
        return "internal".into();
    }
    let mut k = String::from("external");
    for (bit, name) in [
        (SVC_LOCAL, "+local"),
        (SVC_SOURCE_RANGES, "+ranges"),
        (SVC_MAGLEV, "+maglev"),
    ] {
        if flags & bit != 0 {
            k.push_str(name);
        }
    }
    k
}

/// The table for people.
pub fn table(v: &Value) -> String {
    let mut out = format!(
        "services named from: {}\n",
        v["names"].as_str().unwrap_or("")
    );
    out.push_str(&crate::daemon::line(&v["daemon"]));
    out.push('\n');
    let rows = v["frontends"].as_array().cloned().unwrap_or_default();
    let w = rows
        .iter()
        .map(|r| r["frontend"].as_str().unwrap_or("").len())
        .max()
        .unwrap_or(8)
        .max(8);
    out.push_str(&format!(
        "{:<w$}  {:<32}  {:<24}  BACKENDS\n",
        "FRONTEND", "SERVICE", "KIND"
    ));
    for r in rows {
        let backends: Vec<String> = r["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| {
                format!(
                    "{} ({} sent)",
                    b["address"].as_str().unwrap_or(""),
                    b["sent"]
                )
            })
            .collect();
        out.push_str(&format!(
            "{:<w$}  {:<32}  {:<24}  {}\n",
            r["frontend"].as_str().unwrap_or(""),
            r["service"].as_str().unwrap_or("-"),
            r["kind"].as_str().unwrap_or(""),
            if backends.is_empty() {
                "(none: connects are refused)".to_string()
            } else {
                backends.join(" ")
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_name_whole_services_and_addresses() {
        let f = "10.96.0.10:80/TCP";
        for yes in ["10.96.0.10", "10.96.0.10:80", f, "default/web", "web"] {
            assert!(matches(yes, f, Some("default/web")), "{yes}");
        }
        for no in [
            "10.96.0.1",
            "10.96.0.10:8",
            "default/we",
            "we",
            "default",
            "80",
        ] {
            assert!(!matches(no, f, Some("default/web")), "{no}");
        }
        assert!(!matches("web", f, None));
        let f6 = "[fd00:10:96::a]:53/UDP";
        for yes in ["fd00:10:96::a", "[fd00:10:96::a]:53", f6] {
            assert!(matches(yes, f6, None), "{yes}");
        }
        assert!(!matches("fd00:10:96::", f6, None));
    }
}

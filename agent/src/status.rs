//! `kernlet status`: the node at a glance — its name, conditions and why, the age of its
//! Lease, whether the apiserver answers, pods by phase, overlay peers (programmed,
//! missing, unhealthy), certificate expiries and a pending serving CSR. Read from the
//! apiserver (through the node's kubeconfig), the state and run directories and the
//! kernel; what cannot be read is said, the rest still shown.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

/// The node name a kubeconfig's client certificate is for (`CN=system:node:<name>`).
pub fn node_from_kubeconfig(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let kc: Value = serde_saphyr::from_str(&text).ok()?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let pem = crate::controllers::client_cert::client_certificate(&kc, dir)?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    cn.strip_prefix("system:node:").map(str::to_string)
}

fn client_cert_expiry(path: &Path) -> Option<i64> {
    let text = std::fs::read_to_string(path).ok()?;
    let kc: Value = serde_saphyr::from_str(&text).ok()?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let pem = crate::controllers::client_cert::client_certificate(&kc, dir)?;
    crate::model::csr::validity(&pem).map(|(_, not_after)| not_after)
}

fn rfc3339(unix: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(unix)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// What the apiserver says about the Node and its Lease.
async fn from_api(kubeconfig: &Path, node: &str) -> Result<Value, String> {
    let text = std::fs::read_to_string(kubeconfig)
        .map_err(|e| format!("reading {}: {e}", kubeconfig.display()))?;
    let client = crate::client::from_kubeconfig_text(&text)
        .await
        .map_err(|e| format!("{}: {e}", kubeconfig.display()))?;
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let leases: kube::Api<Lease> = kube::Api::namespaced(client, "kube-node-lease");
    let timeout = Duration::from_secs(5);
    let n = tokio::time::timeout(timeout, nodes.get(node))
        .await
        .map_err(|_| "the apiserver did not answer within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    let conditions: Vec<Value> = n
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .map(|c| json!({"type": c.type_, "status": c.status, "reason": c.reason, "message": c.message}))
        .collect();
    let lease_age = match tokio::time::timeout(timeout, leases.get_opt(node)).await {
        Ok(Ok(Some(l))) => l.spec.and_then(|s| s.renew_time).map(|t| {
            let age = k8s_openapi::jiff::Timestamp::now().as_second() - t.0.as_second();
            age.max(0)
        }),
        _ => None,
    };
    Ok(json!({"conditions": conditions, "leaseAgeSeconds": lease_age}))
}

/// Everything `kernlet status` shows, as JSON.
pub async fn gather(
    kubeconfig: Option<&Path>,
    node: Option<String>,
    state_dir: &Path,
    run_dir: &Path,
    bpffs_dir: &Path,
) -> Value {
    let node = node
        .or_else(|| kubeconfig.and_then(node_from_kubeconfig))
        .unwrap_or_else(|| crate::sys::machine::read(state_dir).hostname);
    let apiserver = match kubeconfig {
        None => {
            json!({"reachable": false, "error": "no kubeconfig (standalone node, or pass --kubeconfig)"})
        }
        Some(kc) => match from_api(kc, &node).await {
            Ok(v) => {
                json!({"reachable": true, "conditions": v["conditions"], "leaseAgeSeconds": v["leaseAgeSeconds"]})
            }
            Err(e) => json!({"reachable": false, "error": e}),
        },
    };
    let mut phases: BTreeMap<String, u64> = BTreeMap::new();
    for p in crate::podworker::recorded_pods(state_dir) {
        let phase = p
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("Unknown")
            .to_string();
        *phases.entry(phase).or_default() += 1;
    }
    let overlay = match crate::overlay_view::gather(kubeconfig, run_dir).await {
        Err(e) => json!({"running": false, "why": e}),
        Ok(view) => {
            let rows: Vec<&Value> = view["peers"]
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            let peers: Vec<&&Value> = rows.iter().filter(|r| r["node"] != "").collect();
            let all_ok = |r: &Value| ["route", "neighbour", "fdb"].iter().all(|k| r[*k] == "ok");
            let unhealthy: Vec<&str> = peers
                .iter()
                .filter(|r| r["probe"]["reachable"] == false || r["probe"]["pathMtuOk"] == false)
                .filter_map(|r| r["node"].as_str())
                .collect();
            json!({
                "running": true,
                "source": view["source"],
                "peers": peers.len(),
                "programmed": peers.iter().filter(|r| all_ok(r)).count(),
                "missing": peers.iter().filter(|r| !all_ok(r)).filter_map(|r| r["node"].as_str()).collect::<Vec<_>>(),
                "unhealthy": unhealthy,
                "staleEntries": rows.len() - peers.len(),
            })
        }
    };
    let serving = match crate::doctor::serving_state(state_dir) {
        crate::doctor::Serving::Issued { not_after } => json!({"notAfter": rfc3339(not_after)}),
        crate::doctor::Serving::Requested { csr, state } => json!({
            "pendingCSR": csr, "state": state,
            "approve": crate::controllers::serving_cert::pending_message(&csr),
        }),
        crate::doctor::Serving::None => json!({"requested": false}),
    };
    let daemon = match crate::daemon::ask(run_dir) {
        Ok(v) => json!({"running": true, "account": v}),
        Err(why) => json!({
            "running": false,
            "why": format!("{why}; answering from the state directory, the kernel and the pinned maps"),
        }),
    };
    // Services: what the pinned maps hold, and how long ago the daemon last synced them.
    let services = match crate::sys::lb::read_pinned(&bpffs_dir.join("lb")) {
        Err(e) => json!({"programmed": false, "why": e.to_string()}),
        Ok((frontends, _)) => {
            let last = daemon["account"]["subsystems"]["services"]["lastSync"]
                .as_str()
                .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok());
            json!({
                "programmed": true,
                "frontends": frontends.len(),
                "syncLagSeconds": last.map(|t| (k8s_openapi::jiff::Timestamp::now().as_second() - t.as_second()).max(0)),
                "lastError": daemon["account"]["subsystems"]["services"]["lastError"],
            })
        }
    };
    // Eviction signals: the daemon's last readings beside its thresholds.
    let eviction = daemon["account"]["subsystems"]["eviction"]["detail"].clone();
    json!({
        "node": node,
        "daemon": daemon,
        "eviction": eviction,
        "apiserver": apiserver,
        "pods": phases,
        "overlay": overlay,
        "services": services,
        "certificates": {
            "client": kubeconfig.and_then(client_cert_expiry).map(|t| json!({"notAfter": rfc3339(t)})),
            "serving": serving,
        },
    })
}

/// The status as `key: value` lines.
pub fn text(v: &Value) -> String {
    let mut out = Vec::new();
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    out.push(format!("node: {}", s(&v["node"])));
    let d = &v["daemon"];
    if d["running"] == true {
        let a = &d["account"];
        let mut line = format!(
            "daemon: running (pid {}, since {})",
            s(&a["pid"]),
            s(&a["started"])
        );
        for (name, sub) in a["subsystems"].as_object().into_iter().flatten() {
            line.push_str(&format!("; {name} synced {}", s(&sub["lastSync"])));
            if sub["lastError"].is_string() {
                line.push_str(&format!(" (last error: {})", s(&sub["lastError"])));
            }
        }
        out.push(line);
    } else {
        out.push(format!("daemon: NOT RUNNING: {}", s(&d["why"])));
    }
    if let Some(signals) = v["eviction"]["signals"].as_array() {
        out.push("eviction signals (available / capacity, hard threshold):".into());
        for sig in signals {
            out.push(format!(
                "  {:<20} {} / {}  threshold {}{}",
                s(&sig["signal"]),
                s(&sig["available"]),
                s(&sig["capacity"]),
                s(&sig["threshold"]),
                if sig["crossed"] == true {
                    "  CROSSED"
                } else {
                    ""
                }
            ));
        }
    }
    let api = &v["apiserver"];
    if api["reachable"] == true {
        out.push(format!(
            "apiserver: reachable, lease renewed {}s ago",
            s(&api["leaseAgeSeconds"])
        ));
        out.push("conditions:".into());
        for c in api["conditions"].as_array().into_iter().flatten() {
            out.push(format!(
                "  {:<20} {:<6} {:<24} {}",
                s(&c["type"]),
                s(&c["status"]),
                s(&c["reason"]),
                s(&c["message"])
            ));
        }
    } else {
        out.push(format!("apiserver: UNREACHABLE ({})", s(&api["error"])));
    }
    let pods: Vec<String> = v["pods"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    out.push(format!(
        "pods: {}",
        if pods.is_empty() {
            "none".into()
        } else {
            pods.join(", ")
        }
    ));
    let o = &v["overlay"];
    if o["running"] == true {
        let list = |k: &str| {
            o[k].as_array()
                .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "none".into())
        };
        out.push(format!(
            "overlay: {} peers, {} programmed, missing: {}, unhealthy: {}, stale entries: {} (peers from {})",
            s(&o["peers"]),
            s(&o["programmed"]),
            list("missing"),
            list("unhealthy"),
            s(&o["staleEntries"]),
            s(&o["source"])
        ));
    } else {
        out.push(format!("overlay: not running ({})", s(&o["why"])));
    }
    let sv = &v["services"];
    if sv["programmed"] == true {
        out.push(format!(
            "services: {} frontends programmed, last synced {}s ago{}",
            s(&sv["frontends"]),
            s(&sv["syncLagSeconds"]),
            sv["lastError"]
                .as_str()
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        ));
    } else {
        out.push(format!("services: not programmed ({})", s(&sv["why"])));
    }
    let c = &v["certificates"];
    out.push(format!(
        "client certificate: expires {}",
        s(&c["client"]["notAfter"])
    ));
    let sv = &c["serving"];
    if let Some(csr) = sv["pendingCSR"].as_str() {
        out.push(format!(
            "serving certificate: PENDING {csr} ({}): {}",
            s(&sv["state"]),
            s(&sv["approve"])
        ));
    } else if sv["notAfter"].is_string() {
        out.push(format!(
            "serving certificate: expires {}",
            s(&sv["notAfter"])
        ));
    } else {
        out.push("serving certificate: not requested yet".into());
    }
    out.join("\n") + "\n"
}

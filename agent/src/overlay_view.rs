//! `kernlet overlay`: every overlay peer with its pod CIDR, VTEP MAC and public IP,
//! whether its route, neighbour and FDB entries on `flannel.1` are as the Nodes say, and
//! the last probe — from the live kernel, the Nodes (through a kubeconfig) and the
//! daemon's last probe record, which also stands in for the Nodes when the apiserver
//! cannot be reached.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

use crate::controllers::overlay as ctl;
use crate::model::overlay::{self as model, Peer, PeerHealth};

/// The last probe results the daemon recorded.
pub fn last_probe(run_dir: &Path) -> Vec<PeerHealth> {
    std::fs::read(ctl::health_path(run_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn peers_from_probe(health: &[PeerHealth]) -> Vec<Peer> {
    health
        .iter()
        .filter_map(|h| {
            Some(Peer {
                node: h.node.clone(),
                pod_cidr: h.pod_cidr.parse().ok()?,
                vtep_mac: model::parse_mac(&h.vtep_mac)?,
                public_ip: h.public_ip,
            })
        })
        .collect()
}

async fn peers_from_api(kubeconfig: &Path) -> Result<Vec<Peer>, String> {
    let text = std::fs::read_to_string(kubeconfig)
        .map_err(|e| format!("reading {}: {e}", kubeconfig.display()))?;
    let client = crate::client::from_kubeconfig_text(&text)
        .await
        .map_err(|e| format!("{}: {e}", kubeconfig.display()))?;
    let api: kube::Api<Node> = kube::Api::all(client);
    let list = tokio::time::timeout(Duration::from_secs(5), api.list(&Default::default()))
        .await
        .map_err(|_| "the apiserver did not answer within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(model::peers(&list.items, "").0)
}

/// The whole view as JSON: where the peers came from, the device, a row per peer.
pub async fn gather(kubeconfig: Option<&Path>, run_dir: &Path) -> Result<Value, String> {
    let programmed = ctl::read_programmed().map_err(|e| e.to_string())?;
    let Some((link, have)) = programmed else {
        return Err(format!(
            "this node has no {} device: the overlay runs when kernlet is started with --cluster-cidr \
             and the Node has a pod CIDR",
            model::DEVICE
        ));
    };
    let health = last_probe(run_dir);
    let (peers, source) = match kubeconfig {
        Some(kc) => match peers_from_api(kc).await {
            Ok(p) => (p, "apiserver".to_string()),
            Err(e) => (
                peers_from_probe(&health),
                format!("last probe record (apiserver unreachable: {e})"),
            ),
        },
        None => (
            peers_from_probe(&health),
            "last probe record (no kubeconfig)".to_string(),
        ),
    };
    // This node is the one whose network address sits on the device.
    let local = ctl::local_vtep_ip();
    let peers: Vec<Peer> = peers
        .into_iter()
        .filter(|p| Some(p.vtep_ip()) != local)
        .collect();
    let rows = model::report(&peers, &have, &health);
    let vx = link.vxlan.clone().unwrap_or_default();
    let daemon = crate::daemon::view_of(
        run_dir,
        "overlay",
        "entries are read from the kernel, probes from the last record",
    );
    Ok(json!({
        "source": source,
        "daemon": daemon,
        "device": {
            "name": link.name, "index": link.index, "mac": model::format_mac(&link.mac),
            "mtu": link.mtu, "up": link.up, "vni": vx.vni, "local": vx.local,
            "port": vx.port, "learning": vx.learning, "address": local,
        },
        "peers": rows,
    }))
}

fn probe_text(p: &Option<PeerHealth>) -> String {
    match p {
        None => "-".into(),
        Some(h) if !h.reachable => "unreachable".into(),
        Some(h) if !h.path_mtu_ok => format!("mtu {} fails", h.mtu),
        Some(h) => match h.rtt_micros {
            Some(us) => format!("ok {:.1}ms", us as f64 / 1000.0),
            None => "ok".into(),
        },
    }
}

/// The view as a table.
pub fn table(view: &Value) -> String {
    let mut out = String::new();
    let d = &view["device"];
    out.push_str(&format!(
        "{} vni {} local {} port {} mtu {} mac {} ({})\npeers from: {}\n",
        d["name"].as_str().unwrap_or(""),
        d["vni"],
        d["local"].as_str().unwrap_or("-"),
        d["port"],
        d["mtu"],
        d["mac"].as_str().unwrap_or(""),
        if d["up"] == true { "up" } else { "DOWN" },
        view["source"].as_str().unwrap_or(""),
    ));
    out.push_str(&crate::daemon::line(&view["daemon"]));
    out.push('\n');
    let mut lines = vec![
        [
            "NODE",
            "POD CIDR",
            "VTEP MAC",
            "PUBLIC IP",
            "ROUTE",
            "NEIGH",
            "FDB",
            "PROBE",
        ]
        .map(String::from),
    ];
    for r in view["peers"].as_array().into_iter().flatten() {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        let probe: Option<PeerHealth> = serde_json::from_value(r["probe"].clone()).ok();
        lines.push([
            if s("node").is_empty() || s("node") == "-" {
                "(none)".to_string()
            } else {
                s("node")
            },
            s("podCidr"),
            s("vtepMac"),
            s("publicIp"),
            s("route"),
            s("neighbour"),
            s("fdb"),
            probe_text(&probe),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    for l in lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

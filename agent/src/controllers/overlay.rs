//! The overlay controller: flannel's vxlan backend (kube subnet manager) for this node.
//!
//! Once the Node has a pod CIDR: `flannel.1` (VNI 1, UDP 8472, learning off, local =
//! the node address, MTU underlay − 50, a MAC kept across restarts, the pod CIDR's
//! network address /32 on it), the bridge for pods, flannel's annotations on the Node
//! and `NetworkUnavailable=False`. Then every Node event and every resync: the peers the
//! Nodes describe ([`crate::model::overlay::peers`]) against what `flannel.1` holds,
//! and the difference applied — so entries deleted or altered by hand come back within
//! one resync and entries of departed nodes go.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::watch;

use crate::client::SharedClient;
use crate::model::cidr::Ipv4Net;
use crate::model::node::Readiness;
use crate::model::overlay::{self as model, Change, Peer, Programmed};
use crate::runtime::network::{NetworkState, PodNetwork};
use crate::sys::netlink::{Netlink, NetlinkError};
use crate::sys::vtep::{NetlinkVtep, VtepTable};

/// What the overlay of this node is built from.
#[derive(Clone, Debug)]
pub struct OverlayConfig {
    pub node: String,
    /// The node's underlay address: the VTEP's local address and `public-ip`.
    pub public_ip: Ipv4Addr,
    /// The underlay interface (default: the one holding `public_ip`).
    pub iface: Option<String>,
    /// The cluster's pod network (flannel's `Network`).
    pub cluster_cidr: Ipv4Net,
    pub bridge: String,
    pub state_dir: PathBuf,
    /// Where the peers' probe results are written (`<run-dir>/overlay/peers.json`).
    pub run_dir: PathBuf,
    /// How often entries are compared and repaired, and peers probed.
    pub resync: Duration,
}

/// Where the last probe of every peer is recorded.
pub fn health_path(run_dir: &std::path::Path) -> PathBuf {
    run_dir.join("overlay").join("peers.json")
}

/// The overlay's device as set up.
#[derive(Clone, Debug)]
struct Vtep {
    index: u32,
    mac: [u8; 6],
}

fn io_err(what: &str, e: impl std::fmt::Display) -> NetlinkError {
    NetlinkError {
        what: what.to_string(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// The MAC `flannel.1` keeps across restarts (flannel keeps it on the device; kernlet
/// also records it, so a device deleted while kernlet was down comes back with it).
fn stable_mac(state_dir: &std::path::Path) -> Result<[u8; 6], NetlinkError> {
    let path = state_dir.join("overlay").join("vtep-mac");
    if let Some(mac) = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| model::parse_mac(s.trim()))
    {
        return Ok(mac);
    }
    let mut random = [0u8; 6];
    aws_lc_rs::rand::fill(&mut random)
        .map_err(|_| io_err("generating a VTEP MAC", "no randomness"))?;
    let mac = model::vtep_mac_from(random);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| io_err(&format!("creating {}", dir.display()), e))?;
    }
    crate::state::write_atomic(&path, model::format_mac(&mac).as_bytes(), 0o644)
        .map_err(|e| io_err(&format!("writing {}", path.display()), e))?;
    Ok(mac)
}

/// The underlay link: `--iface`, else the link holding the node address. Returns its
/// index and MTU.
fn underlay(nl: &mut Netlink, cfg: &OverlayConfig) -> Result<(u32, u32), NetlinkError> {
    let links = nl.links()?;
    if let Some(name) = &cfg.iface {
        return links
            .iter()
            .find(|l| &l.name == name)
            .map(|l| (l.index, l.mtu))
            .ok_or_else(|| io_err("finding --iface", format!("no link named {name}")));
    }
    let holder = nl
        .all_addresses()?
        .into_iter()
        .find(|(_, ip, _)| *ip == cfg.public_ip)
        .map(|(i, _, _)| i)
        .ok_or_else(|| {
            io_err(
                "finding the underlay interface",
                format!(
                    "no interface holds the node address {}; pass --iface or --node-ip",
                    cfg.public_ip
                ),
            )
        })?;
    links
        .iter()
        .find(|l| l.index == holder)
        .map(|l| (l.index, l.mtu))
        .ok_or_else(|| io_err("finding the underlay interface", "it vanished"))
}

/// Creates `flannel.1` or adopts the one there (recreating it when its VNI, port,
/// local address or learning differ), sets MTU, MAC and address.
fn ensure_vtep(
    nl: &mut Netlink,
    cfg: &OverlayConfig,
    pod_cidr: Ipv4Net,
    underlay: (u32, u32),
) -> Result<Vtep, NetlinkError> {
    let mac = stable_mac(&cfg.state_dir)?;
    let mtu = underlay.1.saturating_sub(model::OVERHEAD);
    let existing = nl.link(model::DEVICE)?;
    let fits = existing.as_ref().is_some_and(|l| {
        l.vxlan.as_ref().is_some_and(|v| {
            v.vni == Some(model::VNI)
                && v.port == Some(model::PORT)
                && v.local == Some(cfg.public_ip)
                && v.learning == Some(false)
        })
    });
    if let Some(l) = &existing
        && !fits
    {
        tracing::info!(
            device = model::DEVICE,
            "the existing VXLAN device differs from this node's overlay; creating it again"
        );
        nl.delete_link(l.index)?;
    }
    if !fits {
        let msg = rtnetlink::LinkVxlan::new(model::DEVICE, model::VNI)
            .dev(underlay.0)
            .port(model::PORT)
            .local(cfg.public_ip)
            .learning(false)
            .mtu(mtu)
            .address(mac.to_vec())
            .build();
        nl.create_link(&format!("creating {}", model::DEVICE), msg)?;
    }
    let link = nl
        .link(model::DEVICE)?
        .ok_or_else(|| io_err("creating the VTEP", "flannel.1 vanished"))?;
    if link.mac != mac || link.mtu != mtu || !link.up {
        nl.set_link(
            &format!("setting {} up", model::DEVICE),
            rtnetlink::LinkUnspec::new_with_index(link.index)
                .address(mac.to_vec())
                .mtu(mtu)
                .up()
                .build(),
        )?;
    }
    let want = (pod_cidr.network(), 32);
    let have = nl.addresses(link.index)?;
    if !have.contains(&want) {
        nl.add_address(link.index, want.0, want.1)?;
    }
    for (ip, p) in have {
        if (ip, p) != want {
            nl.delete_address(link.index, ip, p)?;
        }
    }
    Ok(Vtep {
        index: link.index,
        mac,
    })
}

/// What `flannel.1` holds in this network namespace, with the device itself; `None`
/// when there is no such device.
pub fn read_programmed() -> Result<Option<(crate::sys::netlink::Link, Programmed)>, NetlinkError> {
    let mut nl = Netlink::open()?;
    let Some(link) = nl.link(model::DEVICE)? else {
        return Ok(None);
    };
    let index = link.index;
    let p = NetlinkVtep { nl, index }.read()?;
    Ok(Some((link, p)))
}

/// The local address on `flannel.1`: this node's pod CIDR's network address.
pub fn local_vtep_ip() -> Option<Ipv4Addr> {
    let mut nl = Netlink::open().ok()?;
    let link = nl.link(model::DEVICE).ok()??;
    nl.addresses(link.index).ok()?.first().map(|(ip, _)| *ip)
}

/// One pass over the device's entries: what `peers` need against what `table` holds,
/// every change tried even when one fails (the first failure is returned after the
/// others), so one refused entry does not hold back the rest; the next pass retries.
pub fn sync_peers(table: &mut dyn VtepTable, peers: &[Peer]) -> Result<Vec<Change>, NetlinkError> {
    let have = table.read()?;
    let changes = model::diff(peers, &have);
    let mut first_error = None;
    let mut done = Vec::new();
    for c in changes {
        match table.apply(&c) {
            Ok(()) => done.push(c),
            Err(e) => {
                tracing::warn!("overlay entry not programmed: {e}");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

/// kernlet's nftables table on the node.
pub const TABLE: &str = "kernlet";

/// The node's packet rules for the overlay, as one nftables table:
/// - `pod-egress` (nat, postrouting): pod traffic leaving the cluster CIDR is
///   masqueraded to the node address, never pod↔pod and never multicast (flannel's
///   rules, without iptables);
/// - `vxlan-in` (filter, prerouting, raw priority): VXLAN (UDP 8472) is accepted only
///   from the public IPs of known nodes and dropped from anyone else — a forged
///   encapsulated packet from the underlay never reaches a pod (flannel accepts it).
///
/// nftables over netlink rather than eBPF: masquerade needs connection tracking and
/// port allocation, which the kernel's NAT already does well, and both rules change
/// atomically in one batch.
pub fn firewall(
    cluster: Ipv4Net,
    peers: &[Peer],
) -> Vec<(
    crate::sys::nftables::Chain,
    Vec<Vec<crate::sys::nftables::Expr>>,
)> {
    use crate::sys::nftables::{Chain, Expr, Hook};
    let masq = vec![
        Expr::ip_saddr(cluster.network(), cluster.prefix(), true),
        Expr::ip_daddr(cluster.network(), cluster.prefix(), false),
        Expr::ip_daddr(Ipv4Addr::new(224, 0, 0, 0), 4, false),
        Expr::Masquerade,
    ];
    let mut vxlan: Vec<Vec<Expr>> = Vec::new();
    let mut sources: Vec<Ipv4Addr> = peers.iter().map(|p| p.public_ip).collect();
    sources.sort();
    sources.dedup();
    for ip in sources {
        vxlan.push(vec![
            Expr::L4Proto(17),
            Expr::dport(model::PORT),
            Expr::ip_saddr(ip, 32, true),
            Expr::Accept,
        ]);
    }
    vxlan.push(vec![
        Expr::L4Proto(17),
        Expr::dport(model::PORT),
        Expr::Drop,
    ]);
    vec![
        (
            Chain {
                name: "pod-egress",
                kind: "nat",
                hook: Hook::Postrouting,
                priority: 100,
            },
            vec![masq],
        ),
        (
            Chain {
                name: "vxlan-in",
                kind: "filter",
                hook: Hook::Prerouting,
                priority: -300,
            },
            vxlan,
        ),
    ]
}

/// One reconcile of the device and its peers; returns the changes made.
fn reconcile(
    cfg: &OverlayConfig,
    pod_cidr: Ipv4Net,
    peers: &[Peer],
) -> Result<(Vtep, Vec<Change>), NetlinkError> {
    let mut nl = Netlink::open()?;
    let under = underlay(&mut nl, cfg)?;
    let vtep = ensure_vtep(&mut nl, cfg, pod_cidr, under)?;
    let mut table = NetlinkVtep {
        nl,
        index: vtep.index,
    };
    let changes = sync_peers(&mut table, peers)?;
    crate::sys::nftables::sync_table(TABLE, &firewall(cfg.cluster_cidr, peers))
        .map_err(|e| io_err("writing the overlay's nftables rules", e))?;
    Ok((vtep, changes))
}

fn not_ready(why: &str) -> Readiness {
    Readiness {
        ready: false,
        reason: "KubeletNotReady".into(),
        message: format!(
            "container runtime network not ready: NetworkReady=false \
             reason:NetworkPluginNotReady message:{why}"
        ),
    }
}

/// Waits for this Node's pod CIDR (inside `--cluster-cidr`), watching the Node, so it is
/// seen as soon as the controller-manager sets it (at registration, or later); `None`
/// at `stop`. A CIDR outside the cluster's is told once and waited past.
async fn wait_for_pod_cidr(
    client: &SharedClient,
    cfg: &OverlayConfig,
    waiting: &str,
    stop: &mut watch::Receiver<bool>,
) -> Option<Ipv4Net> {
    let config = watcher::Config::default().fields(&format!("metadata.name={}", cfg.node));
    let watch = || watcher(Api::<Node>::all(client.get()), config.clone()).boxed();
    let mut stream = watch();
    let mut rotations = client.rotations();
    // What was told last: the CIDR seen outside the cluster's (None: none yet).
    let mut told: Option<Option<Ipv4Net>> = None;
    loop {
        let event = tokio::select! {
            _ = stop.changed() => return None,
            _ = rotations.changed() => {
                stream = watch();
                continue;
            }
            e = stream.next() => e,
        };
        let node = match event {
            Some(Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n))) => n,
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                tracing::warn!("watching this Node for its pod CIDR: {e}; again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            None => {
                stream = watch();
                continue;
            }
        };
        let cidr = model::pod_cidr(&node);
        match cidr {
            Some(c) if cfg.cluster_cidr.contains(c.network()) => return Some(c),
            _ if told == Some(cidr) => {}
            Some(c) => tracing::warn!(
                pod_cidr = %c,
                "the Node's pod CIDR is outside --cluster-cidr {}; waiting for it to change",
                cfg.cluster_cidr
            ),
            None => tracing::info!("{waiting}; waiting"),
        }
        told = Some(cidr);
    }
}

/// Runs the overlay until `stop`: waits for the Node's pod CIDR, sets up the device and
/// the pod network, publishes flannel's annotations, then keeps the peers programmed.
/// The node is reported not ready (`readiness`) until the overlay is up.
pub async fn run(
    client: SharedClient,
    cfg: OverlayConfig,
    runtime: crate::runtime::Runtime,
    readiness: watch::Sender<Readiness>,
    mut stop: watch::Receiver<bool>,
) {
    // A fresh handle per use: the client follows certificate rotation.
    let nodes = || Api::<Node>::all(client.get());
    let waiting = "the Node has no pod CIDR yet (spec.podCIDR, set by the controller-manager \
                   with --allocate-node-cidrs)";
    let _ = runtime.set_network(NetworkState::Waiting(waiting.into()));
    readiness.send_replace(not_ready(waiting));
    // 1. The pod CIDR.
    let Some(pod_cidr) = wait_for_pod_cidr(&client, &cfg, waiting, &mut stop).await else {
        return;
    };
    // 2. The device and the bridge.
    let (vtep, mtu) = loop {
        let c = cfg.clone();
        let attempt = tokio::task::spawn_blocking(move || {
            let mut nl = Netlink::open()?;
            let under = underlay(&mut nl, &c)?;
            let vtep = ensure_vtep(&mut nl, &c, pod_cidr, under)?;
            let net = PodNetwork {
                cidr: pod_cidr,
                bridge: c.bridge.clone(),
                mtu: under.1.saturating_sub(model::OVERHEAD),
            };
            crate::runtime::network::ensure_bridge(&mut nl, &net)
                .map_err(|e| io_err("setting up the pod bridge", e))?;
            Ok::<_, NetlinkError>((vtep, net))
        })
        .await;
        match attempt {
            Ok(Ok((vtep, net))) => {
                let mtu = net.mtu;
                if let Err(e) = runtime.set_network(NetworkState::Ready(net)) {
                    tracing::warn!("recording the pod network: {e}");
                }
                break (vtep, mtu);
            }
            Ok(Err(e)) => {
                tracing::warn!("setting up the overlay: {e}; retrying");
                readiness.send_replace(not_ready(&e.to_string()));
            }
            Err(e) => tracing::warn!("setting up the overlay: {e}"),
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    };
    tracing::info!(
        device = model::DEVICE,
        mac = %model::format_mac(&vtep.mac),
        %pod_cidr,
        "overlay device up"
    );
    // 3. What the other nodes need to know, and the condition.
    loop {
        match publish(&nodes(), &cfg, &vtep).await {
            Ok(()) => break,
            Err(e) => tracing::warn!("publishing the overlay on this Node: {e}; retrying"),
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    readiness.send_replace(Readiness {
        ready: true,
        reason: "KubeletReady".into(),
        message: "kubelet is posting ready status".into(),
    });
    // 4. Peers, on every Node event and every resync; probed alongside.
    let (peers_tx, peers_rx) = watch::channel(Vec::<Peer>::new());
    tokio::spawn(probe_loop(
        client.clone(),
        cfg.clone(),
        mtu,
        peers_rx,
        stop.clone(),
    ));
    let mut known: BTreeMap<String, Node> = BTreeMap::new();
    let mut staging: BTreeMap<String, Node> = BTreeMap::new();
    let mut stream = watcher(nodes(), super::list_from_cache()).boxed();
    let mut rotations = client.rotations();
    let mut tick = tokio::time::interval(cfg.resync);
    let mut backoff = Duration::from_millis(500);
    let mut synced = false;
    let name = |n: &Node| n.metadata.name.clone().unwrap_or_default();
    loop {
        let mut dirty = false;
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => dirty = synced,
            // New credentials: watch again with them (a relist).
            _ = rotations.changed() => stream = watcher(nodes(), super::list_from_cache()).boxed(),
            event = stream.next() => match event {
                Some(Ok(watcher::Event::Init)) => staging.clear(),
                Some(Ok(watcher::Event::InitApply(n))) => { staging.insert(name(&n), n); }
                Some(Ok(watcher::Event::InitDone)) => {
                    known = std::mem::take(&mut staging);
                    synced = true;
                    dirty = true;
                    backoff = Duration::from_millis(500);
                }
                Some(Ok(watcher::Event::Apply(n))) => { known.insert(name(&n), n); dirty = synced; }
                Some(Ok(watcher::Event::Delete(n))) => { known.remove(&name(&n)); dirty = synced; }
                Some(Err(e)) => {
                    let text = e.to_string();
                    if text.contains("forbidden") || text.contains("403") {
                        tracing::warn!("watching Nodes for overlay peers: {text}; {}",
                            crate::controllers::permissions::advice(&["list nodes".into(), "watch nodes".into()]));
                    } else {
                        tracing::warn!("watching Nodes for overlay peers: {text}; retrying in {backoff:?}");
                    }
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                None => stream = watcher(nodes(), super::list_from_cache()).boxed(),
            },
        }
        if !dirty {
            continue;
        }
        let all: Vec<Node> = known.values().cloned().collect();
        let (peers, skipped) = model::peers(&all, &cfg.node);
        let c = cfg.clone();
        let programming = peers.clone();
        match tokio::task::spawn_blocking(move || reconcile(&c, pod_cidr, &programming)).await {
            Ok(Ok((_, changes))) => {
                crate::daemon::synced(
                    "overlay",
                    json!({"peers": peers.len(), "changes": changes.len()}),
                );
                peers_tx.send_replace(peers);
                for ch in &changes {
                    tracing::info!(change = ?ch, "overlay entry programmed");
                }
                if !changes.is_empty() {
                    for (node, why) in &skipped {
                        tracing::debug!(node, "not an overlay peer: {why}");
                    }
                }
            }
            Ok(Err(e)) => {
                crate::daemon::failed("overlay", &e.to_string());
                tracing::warn!("programming overlay peers: {e}; retrying at the next resync")
            }
            Err(e) => tracing::warn!("programming overlay peers: {e}"),
        }
    }
}

/// Probes each peer: an echo to its VTEP address through `flannel.1`, then one of the
/// overlay's MTU with don't-fragment.
fn probe_all(peers: &[Peer], mtu: u32) -> Vec<model::PeerHealth> {
    let timeout = Duration::from_secs(1);
    peers
        .iter()
        .map(|p| {
            let small = crate::sys::icmp::echo(p.vtep_ip(), 84, false, timeout);
            let full = match &small {
                Ok(_) => crate::sys::icmp::echo(p.vtep_ip(), mtu as usize, true, timeout),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            let error = match (&small, &full) {
                (Err(e), _) => Some(format!("echo to {}: {e}", p.vtep_ip())),
                (Ok(_), Err(e)) => Some(format!("{mtu}-byte echo with DF to {}: {e}", p.vtep_ip())),
                _ => None,
            };
            model::PeerHealth {
                node: p.node.clone(),
                pod_cidr: p.pod_cidr.to_string(),
                vtep_ip: p.vtep_ip(),
                vtep_mac: model::format_mac(&p.vtep_mac),
                public_ip: p.public_ip,
                reachable: small.is_ok(),
                path_mtu_ok: full.is_ok(),
                mtu,
                rtt_micros: small.ok().map(|d| d.as_micros() as u64),
                error,
                checked_at: k8s_openapi::jiff::Timestamp::now()
                    .strftime("%Y-%m-%dT%H:%M:%SZ")
                    .to_string(),
            }
        })
        .collect()
}

/// Probes the peers every resync, records the results for `kernlet overlay` and
/// reports `OverlayDegraded` on the Node when it changes.
async fn probe_loop(
    client: SharedClient,
    cfg: OverlayConfig,
    mtu: u32,
    peers: watch::Receiver<Vec<Peer>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut reported: Option<(String, String, String)> = None;
    let mut tick = tokio::time::interval(cfg.resync);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let list = peers.borrow().clone();
        let Ok(health) = tokio::task::spawn_blocking(move || probe_all(&list, mtu)).await else {
            continue;
        };
        let path = health_path(&cfg.run_dir);
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Ok(bytes) = serde_json::to_vec_pretty(&health)
            && let Err(e) = crate::state::write_atomic(&path, &bytes, 0o644)
        {
            tracing::warn!("recording the overlay probe: {e}");
        }
        let (ty, status, reason, message) = model::health_condition(&health);
        let now = (status.to_string(), reason.to_string(), message.clone());
        if reported.as_ref() == Some(&now) {
            continue;
        }
        if status == "True" {
            tracing::warn!(reason, "{message}");
        } else {
            tracing::info!(reason, "{message}");
        }
        let stamp = k8s_openapi::jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let patch = json!({"status": {"conditions": [{
            "type": ty, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": stamp, "lastTransitionTime": stamp,
        }]}});
        match Api::<Node>::all(client.get())
            .patch_status(&cfg.node, &PatchParams::default(), &Patch::Strategic(patch))
            .await
        {
            Ok(_) => reported = Some(now),
            Err(e) => tracing::warn!("reporting the overlay's health on the Node: {e}"),
        }
    }
}

/// Writes flannel's annotations and `NetworkUnavailable=False` on this Node.
async fn publish(nodes: &Api<Node>, cfg: &OverlayConfig, vtep: &Vtep) -> Result<(), kube::Error> {
    let ann = model::annotations(&vtep.mac, cfg.public_ip);
    let node = nodes.get(&cfg.node).await?;
    let have = node.metadata.annotations.clone().unwrap_or_default();
    if ann.iter().any(|(k, v)| have.get(k) != Some(v)) {
        nodes
            .patch(
                &cfg.node,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": ann}})),
            )
            .await?;
    }
    let up = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "NetworkUnavailable"))
        .is_some_and(|c| c.status == "False" && c.reason.as_deref() == Some("FlannelIsUp"));
    if !up {
        let now = k8s_openapi::jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        nodes
            .patch_status(
                &cfg.node,
                &PatchParams::default(),
                &Patch::Strategic(json!({"status": {"conditions": [{
                    "type": "NetworkUnavailable",
                    "status": "False",
                    "reason": "FlannelIsUp",
                    "message": "Flannel is running on this node",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }]}})),
            )
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::nftables::Expr;

    fn peer_n(n: u8) -> Peer {
        Peer {
            node: format!("n{n}"),
            pod_cidr: format!("10.244.{n}.0/24").parse().unwrap(),
            vtep_mac: [2, 0, 0, 0, 0, n],
            public_ip: Ipv4Addr::new(198, 18, 0, 10 + n),
        }
    }

    #[test]
    fn peers_converge_through_failures_and_drift() {
        use crate::sys::vtep::FakeVtep;
        let peers: Vec<Peer> = (1..=3).map(peer_n).collect();
        // The 2nd and 5th operation fail: the pass reports it, the rest lands.
        let mut table = FakeVtep {
            fail: [2, 5].into(),
            ..Default::default()
        };
        let first = sync_peers(&mut table, &peers);
        assert!(first.is_err());
        assert_eq!(table.applied, 9, "every change was tried");
        assert_eq!(
            table.entries.routes.len() + table.entries.neighbours.len() + table.entries.fdb.len(),
            7
        );
        // The next pass makes the two missing ones; the one after has nothing to do.
        assert_eq!(sync_peers(&mut table, &peers).unwrap().len(), 2);
        assert!(sync_peers(&mut table, &peers).unwrap().is_empty());
        assert_eq!(table.entries, model::desired(&peers));
        // Drift: a neighbour altered, a route deleted, an FDB entry of no peer added.
        let p2 = &peers[1];
        table.entries.neighbours.insert(p2.vtep_ip(), vec![9; 6]);
        table.entries.routes.remove(&peers[0].pod_cidr);
        table
            .entries
            .fdb
            .insert(vec![7; 6], Ipv4Addr::new(198, 18, 0, 99));
        assert_eq!(sync_peers(&mut table, &peers).unwrap().len(), 3);
        assert_eq!(table.entries, model::desired(&peers));
        // A peer leaves: its three entries go.
        let changes = sync_peers(&mut table, &peers[..2]).unwrap();
        assert_eq!(changes.len(), 3);
        assert_eq!(table.entries, model::desired(&peers[..2]));
    }

    #[test]
    fn vxlan_is_accepted_from_peers_only_and_pods_masquerade_outside_the_cluster() {
        let peer = |ip: [u8; 4]| Peer {
            node: "n".into(),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            vtep_mac: [2, 0, 0, 0, 0, 1],
            public_ip: Ipv4Addr::from(ip),
        };
        let chains = firewall(
            "10.244.0.0/16".parse().unwrap(),
            &[
                peer([198, 18, 0, 12]),
                peer([198, 18, 0, 11]),
                peer([198, 18, 0, 11]),
            ],
        );
        let (egress, rules) = &chains[0];
        assert_eq!((egress.kind, egress.name), ("nat", "pod-egress"));
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].last(), Some(&Expr::Masquerade));
        assert_eq!(
            rules[0][1],
            Expr::ip_daddr(Ipv4Addr::new(10, 244, 0, 0), 16, false)
        );
        let (_, vxlan) = &chains[1];
        assert_eq!(vxlan.len(), 3, "two distinct peers, then the drop");
        assert_eq!(
            vxlan[0][2],
            Expr::ip_saddr(Ipv4Addr::new(198, 18, 0, 11), 32, true)
        );
        assert_eq!(vxlan[2].last(), Some(&Expr::Drop));
    }
}

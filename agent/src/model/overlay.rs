//! The flannel-compatible VXLAN overlay as data: which peers the Node objects describe,
//! the entries each peer needs on `flannel.1` (route, neighbour, FDB), and the changes
//! that turn what the kernel holds into that.
//!
//! flannel's vxlan backend (kube subnet manager) writes on its own Node
//! `flannel.alpha.coreos.com/{backend-type,backend-data,public-ip,kube-subnet-manager}`
//! and, for every other node, programs:
//!
//! ```text
//! ip route  <podCIDR> via <podCIDR network> dev flannel.1 onlink
//! ip neigh  <podCIDR network> lladdr <VtepMAC> dev flannel.1 nud permanent
//! bridge fdb <VtepMAC> dev flannel.1 dst <public-ip> self permanent
//! ```

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Node;

use super::cidr::Ipv4Net;

pub const DEVICE: &str = "flannel.1";
pub const VNI: u32 = 1;
pub const PORT: u16 = 8472;
/// VXLAN over IPv4 costs 50 bytes: outer IPv4 (20), UDP (8), VXLAN (8), inner Ethernet (14).
pub const OVERHEAD: u32 = 50;

pub const BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";
pub const BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
pub const PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
pub const SUBNET_MANAGER: &str = "flannel.alpha.coreos.com/kube-subnet-manager";

/// Another node of the overlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub node: String,
    pub pod_cidr: Ipv4Net,
    pub vtep_mac: [u8; 6],
    pub public_ip: Ipv4Addr,
}

impl Peer {
    /// The address the peer's VTEP answers for: its subnet's network address.
    pub fn vtep_ip(&self) -> Ipv4Addr {
        self.pod_cidr.network()
    }
}

/// The annotations flannel's vxlan backend writes on its own Node.
pub fn annotations(vtep_mac: &[u8; 6], public_ip: Ipv4Addr) -> BTreeMap<String, String> {
    let data = serde_json::json!({"VNI": VNI, "VtepMAC": format_mac(vtep_mac)});
    BTreeMap::from([
        (BACKEND_TYPE.to_string(), "vxlan".to_string()),
        (BACKEND_DATA.to_string(), data.to_string()),
        (PUBLIC_IP.to_string(), public_ip.to_string()),
        (SUBNET_MANAGER.to_string(), "true".to_string()),
    ])
}

pub fn format_mac(mac: &[u8]) -> String {
    crate::sys::netlink::format_mac(mac)
}

/// `aa:bb:cc:dd:ee:ff` → bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    parts.try_into().ok()
}

/// The first IPv4 pod CIDR of a Node (`spec.podCIDRs`, else `spec.podCIDR`).
pub fn pod_cidr(node: &Node) -> Option<Ipv4Net> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .find_map(|c| c.parse().ok())
}

/// The peer a Node describes, or why it is not one (no pod CIDR, another backend,
/// unreadable annotations).
pub fn peer(node: &Node) -> Result<Peer, String> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let ann = node.metadata.annotations.clone().unwrap_or_default();
    let cidr = pod_cidr(node).ok_or("no IPv4 pod CIDR in spec.podCIDRs")?;
    match ann.get(BACKEND_TYPE).map(String::as_str) {
        Some("vxlan") => {}
        Some(other) => return Err(format!("backend-type is '{other}', not vxlan")),
        None => return Err("no flannel annotations yet".into()),
    }
    let data: serde_json::Value = ann
        .get(BACKEND_DATA)
        .and_then(|d| serde_json::from_str(d).ok())
        .ok_or("backend-data is missing or not JSON")?;
    if let Some(vni) = data.get("VNI").and_then(serde_json::Value::as_u64)
        && vni != u64::from(VNI)
    {
        return Err(format!("VNI {vni} differs from this node's {VNI}"));
    }
    let vtep_mac = data
        .get("VtepMAC")
        .and_then(serde_json::Value::as_str)
        .and_then(parse_mac)
        .ok_or("backend-data has no VtepMAC")?;
    let public_ip = ann
        .get(PUBLIC_IP)
        .and_then(|p| p.parse().ok())
        .ok_or("public-ip is missing or not IPv4")?;
    Ok(Peer {
        node: name,
        pod_cidr: cidr,
        vtep_mac,
        public_ip,
    })
}

/// The peers among `nodes` (every node but `me` that is one), and the nodes skipped
/// with the reason.
pub fn peers(nodes: &[Node], me: &str) -> (Vec<Peer>, Vec<(String, String)>) {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for n in nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        if name == me || n.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match peer(n) {
            Ok(p) => out.push(p),
            Err(why) => skipped.push((name, why)),
        }
    }
    out.sort_by(|a, b| a.node.cmp(&b.node));
    (out, skipped)
}

/// What `flannel.1` holds, as read from the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Programmed {
    /// Routes through the device: destination → gateway.
    pub routes: BTreeMap<Ipv4Net, Option<Ipv4Addr>>,
    /// Permanent neighbour entries: address → MAC.
    pub neighbours: BTreeMap<Ipv4Addr, Vec<u8>>,
    /// FDB entries with a remote: MAC → destination.
    pub fdb: BTreeMap<Vec<u8>, Ipv4Addr>,
}

/// One change to `flannel.1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    SetRoute { dst: Ipv4Net, via: Ipv4Addr },
    DeleteRoute { dst: Ipv4Net, via: Option<Ipv4Addr> },
    SetNeighbour { ip: Ipv4Addr, mac: [u8; 6] },
    DeleteNeighbour { ip: Ipv4Addr },
    SetFdb { mac: [u8; 6], dst: Ipv4Addr },
    DeleteFdb { mac: Vec<u8>, dst: Ipv4Addr },
}

/// The entries `peers` need, as the kernel would show them.
pub fn desired(peers: &[Peer]) -> Programmed {
    let mut d = Programmed::default();
    for p in peers {
        d.routes.insert(p.pod_cidr, Some(p.vtep_ip()));
        d.neighbours.insert(p.vtep_ip(), p.vtep_mac.to_vec());
        d.fdb.insert(p.vtep_mac.to_vec(), p.public_ip);
    }
    d
}

/// The changes that turn `have` into what `peers` need: missing or altered entries are
/// set (replace), entries of no peer are deleted. Additions come first, so a peer whose
/// entries move is never unreachable in between; deletions follow.
pub fn diff(peers: &[Peer], have: &Programmed) -> Vec<Change> {
    let want = desired(peers);
    let mut out = Vec::new();
    for p in peers {
        if have.fdb.get(p.vtep_mac.as_slice()) != Some(&p.public_ip) {
            out.push(Change::SetFdb {
                mac: p.vtep_mac,
                dst: p.public_ip,
            });
        }
        if have.neighbours.get(&p.vtep_ip()).map(Vec::as_slice) != Some(p.vtep_mac.as_slice()) {
            out.push(Change::SetNeighbour {
                ip: p.vtep_ip(),
                mac: p.vtep_mac,
            });
        }
        if have.routes.get(&p.pod_cidr) != Some(&Some(p.vtep_ip())) {
            out.push(Change::SetRoute {
                dst: p.pod_cidr,
                via: p.vtep_ip(),
            });
        }
    }
    for (dst, via) in &have.routes {
        if !want.routes.contains_key(dst) {
            out.push(Change::DeleteRoute {
                dst: *dst,
                via: *via,
            });
        }
    }
    for ip in have.neighbours.keys() {
        if !want.neighbours.contains_key(ip) {
            out.push(Change::DeleteNeighbour { ip: *ip });
        }
    }
    for (mac, dst) in &have.fdb {
        if !want.fdb.contains_key(mac) {
            out.push(Change::DeleteFdb {
                mac: mac.clone(),
                dst: *dst,
            });
        }
    }
    out
}

/// The result of probing one peer through `flannel.1`: an echo to its VTEP address
/// (reachability), then one of the overlay's full MTU with don't-fragment (the path
/// carries encapsulated packets of that size).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerHealth {
    pub node: String,
    pub pod_cidr: String,
    pub vtep_ip: Ipv4Addr,
    pub vtep_mac: String,
    pub public_ip: Ipv4Addr,
    pub reachable: bool,
    pub path_mtu_ok: bool,
    /// The MTU the path check used (the overlay's).
    pub mtu: u32,
    pub rtt_micros: Option<u64>,
    pub error: Option<String>,
    pub checked_at: String,
}

/// The condition kernlet reports on its Node for the overlay's health:
/// `(type, status, reason, message)`. `OverlayDegraded` is `False` while every peer
/// answers with full-size packets; `True`, naming the peers, when one does not.
pub fn health_condition(
    health: &[PeerHealth],
) -> (&'static str, &'static str, &'static str, String) {
    const TYPE: &str = "OverlayDegraded";
    let unreachable: Vec<&str> = health
        .iter()
        .filter(|h| !h.reachable)
        .map(|h| h.node.as_str())
        .collect();
    let small: Vec<String> = health
        .iter()
        .filter(|h| h.reachable && !h.path_mtu_ok)
        .map(|h| {
            format!(
                "{} ({} bytes with DF to {} via {})",
                h.node, h.mtu, h.vtep_ip, h.public_ip
            )
        })
        .collect();
    if !unreachable.is_empty() {
        (
            TYPE,
            "True",
            "PeerUnreachable",
            format!(
                "overlay peers not answering through flannel.1: {} (check that UDP 8472 passes between the nodes)",
                unreachable.join(", ")
            ),
        )
    } else if !small.is_empty() {
        (
            TYPE,
            "True",
            "PathMTUTooSmall",
            format!(
                "the underlay drops full-size VXLAN packets to: {} (raise the underlay MTU or lower the overlay's)",
                small.join(", ")
            ),
        )
    } else {
        (
            TYPE,
            "False",
            "OverlayPeersHealthy",
            format!(
                "all {} overlay peers answer through flannel.1 with full-size packets",
                health.len()
            ),
        )
    }
}

/// How one entry a peer needs stands in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryState {
    /// Present as the peer needs it.
    Ok,
    /// Absent.
    Missing,
    /// Present with other values than the peer's.
    Differs,
    /// Present for no known peer.
    Stale,
}

impl EntryState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Missing => "missing",
            Self::Differs => "differs",
            Self::Stale => "stale",
        }
    }
}

/// One row of `kernlet overlay`: a peer (or stale entries of none) and its entries.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerReport {
    /// The peer's node; empty for entries no peer accounts for.
    pub node: String,
    pub pod_cidr: Option<String>,
    pub vtep_ip: Option<Ipv4Addr>,
    pub vtep_mac: Option<String>,
    pub public_ip: Option<Ipv4Addr>,
    pub route: Option<EntryState>,
    pub neighbour: Option<EntryState>,
    pub fdb: Option<EntryState>,
    pub probe: Option<PeerHealth>,
}

/// Compares what `peers` need with what `have` holds, peer by peer, and lists the
/// entries no peer accounts for.
pub fn report(peers: &[Peer], have: &Programmed, health: &[PeerHealth]) -> Vec<PeerReport> {
    let state = |present: Option<bool>| match present {
        None => EntryState::Missing,
        Some(true) => EntryState::Ok,
        Some(false) => EntryState::Differs,
    };
    let mut rows: Vec<PeerReport> = peers
        .iter()
        .map(|p| PeerReport {
            node: p.node.clone(),
            pod_cidr: Some(p.pod_cidr.to_string()),
            vtep_ip: Some(p.vtep_ip()),
            vtep_mac: Some(format_mac(&p.vtep_mac)),
            public_ip: Some(p.public_ip),
            route: Some(state(
                have.routes
                    .get(&p.pod_cidr)
                    .map(|v| *v == Some(p.vtep_ip())),
            )),
            neighbour: Some(state(
                have.neighbours
                    .get(&p.vtep_ip())
                    .map(|m| m.as_slice() == p.vtep_mac.as_slice()),
            )),
            fdb: Some(state(
                have.fdb
                    .get(p.vtep_mac.as_slice())
                    .map(|d| *d == p.public_ip),
            )),
            probe: health.iter().find(|h| h.node == p.node).cloned(),
        })
        .collect();
    let stale = |route, neighbour, fdb| PeerReport {
        node: String::new(),
        pod_cidr: None,
        vtep_ip: None,
        vtep_mac: None,
        public_ip: None,
        route,
        neighbour,
        fdb,
        probe: None,
    };
    for (dst, via) in &have.routes {
        if !peers.iter().any(|p| p.pod_cidr == *dst) {
            rows.push(PeerReport {
                pod_cidr: Some(dst.to_string()),
                vtep_ip: *via,
                ..stale(Some(EntryState::Stale), None, None)
            });
        }
    }
    for (ip, mac) in &have.neighbours {
        if !peers.iter().any(|p| p.vtep_ip() == *ip) {
            rows.push(PeerReport {
                vtep_ip: Some(*ip),
                vtep_mac: Some(format_mac(mac)),
                ..stale(None, Some(EntryState::Stale), None)
            });
        }
    }
    for (mac, dst) in &have.fdb {
        if !peers
            .iter()
            .any(|p| p.vtep_mac.as_slice() == mac.as_slice())
        {
            rows.push(PeerReport {
                vtep_mac: Some(format_mac(mac)),
                public_ip: Some(*dst),
                ..stale(None, None, Some(EntryState::Stale))
            });
        }
    }
    rows
}

/// A stable, locally administered unicast MAC for the VTEP, from random bytes.
pub fn vtep_mac_from(random: [u8; 6]) -> [u8; 6] {
    let mut mac = random;
    mac[0] = (mac[0] | 0x02) & 0xfe;
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: Option<&str>, ann: Option<(&str, &str)>) -> Node {
        let mut v = serde_json::json!({"metadata": {"name": name}, "spec": {}});
        if let Some(c) = cidr {
            v["spec"] = serde_json::json!({"podCIDR": c, "podCIDRs": [c]});
        }
        if let Some((mac, ip)) = ann {
            let mac = parse_mac(mac).unwrap();
            v["metadata"]["annotations"] =
                serde_json::to_value(annotations(&mac, ip.parse().unwrap())).unwrap();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn annotations_are_flannels() {
        let a = annotations(
            &[0x5a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f],
            Ipv4Addr::new(198, 18, 0, 10),
        );
        assert_eq!(a[BACKEND_TYPE], "vxlan");
        assert_eq!(
            a[BACKEND_DATA],
            r#"{"VNI":1,"VtepMAC":"5a:1b:2c:3d:4e:5f"}"#
        );
        assert_eq!(a[PUBLIC_IP], "198.18.0.10");
        assert_eq!(a[SUBNET_MANAGER], "true");
    }

    #[test]
    fn peers_come_from_nodes_with_a_cidr_and_flannel_annotations() {
        let nodes = [
            node(
                "me",
                Some("10.244.0.0/24"),
                Some(("02:00:00:00:00:01", "198.18.0.10")),
            ),
            node(
                "b",
                Some("10.244.1.0/24"),
                Some(("02:00:00:00:00:02", "198.18.0.11")),
            ),
            node("c", Some("10.244.2.0/24"), None),
            node("d", None, Some(("02:00:00:00:00:04", "198.18.0.13"))),
        ];
        let (peers, skipped) = peers(&nodes, "me");
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].node, "b");
        assert_eq!(peers[0].vtep_ip(), Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(peers[0].public_ip, Ipv4Addr::new(198, 18, 0, 11));
        assert_eq!(skipped.len(), 2);
        assert!(
            skipped
                .iter()
                .any(|(n, why)| n == "c" && why.contains("annotations"))
        );
        assert!(
            skipped
                .iter()
                .any(|(n, why)| n == "d" && why.contains("pod CIDR"))
        );
    }

    #[test]
    fn the_real_fixture_node_without_flannel_is_skipped_with_its_cidr_read() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/k8s-fixtures/objects/node.json");
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        let node: Node = serde_json::from_str(&text).unwrap();
        assert_eq!(pod_cidr(&node), Some("10.244.0.0/24".parse().unwrap()));
        let (peers, skipped) = peers(std::slice::from_ref(&node), "other");
        assert!(peers.is_empty());
        assert!(
            skipped[0].1.contains("no flannel annotations"),
            "{skipped:?}"
        );
    }

    #[test]
    fn diff_adds_missing_repairs_drift_and_removes_stale() {
        let b = peer(&node(
            "b",
            Some("10.244.1.0/24"),
            Some(("02:00:00:00:00:02", "198.18.0.11")),
        ))
        .unwrap();
        let c = peer(&node(
            "c",
            Some("10.244.2.0/24"),
            Some(("02:00:00:00:00:03", "198.18.0.12")),
        ))
        .unwrap();
        // Nothing programmed: three entries per peer.
        let all = diff(&[b.clone(), c.clone()], &Programmed::default());
        assert_eq!(all.len(), 6);
        // Fully programmed: nothing to do.
        let done = desired(&[b.clone(), c.clone()]);
        assert!(diff(&[b.clone(), c.clone()], &done).is_empty());
        // A route altered by hand and a neighbour deleted: both set again.
        let mut drift = done.clone();
        drift
            .routes
            .insert(c.pod_cidr, Some(Ipv4Addr::new(10, 244, 9, 0)));
        drift.neighbours.remove(&b.vtep_ip());
        let fix = diff(&[b.clone(), c.clone()], &drift);
        assert_eq!(
            fix,
            vec![
                Change::SetNeighbour {
                    ip: b.vtep_ip(),
                    mac: b.vtep_mac
                },
                Change::SetRoute {
                    dst: c.pod_cidr,
                    via: c.vtep_ip()
                },
            ]
        );
        // Node c gone: its three entries are deleted, b's stay.
        let gone = diff(std::slice::from_ref(&b), &done);
        assert_eq!(
            gone,
            vec![
                Change::DeleteRoute {
                    dst: c.pod_cidr,
                    via: Some(c.vtep_ip())
                },
                Change::DeleteNeighbour { ip: c.vtep_ip() },
                Change::DeleteFdb {
                    mac: c.vtep_mac.to_vec(),
                    dst: c.public_ip
                },
            ]
        );
    }

    #[test]
    fn the_health_condition_names_the_broken_peers() {
        let h = |node: &str, reachable: bool, path_mtu_ok: bool| PeerHealth {
            node: node.into(),
            pod_cidr: "10.244.1.0/24".into(),
            vtep_ip: Ipv4Addr::new(10, 244, 1, 0),
            vtep_mac: "02:00:00:00:00:01".into(),
            public_ip: Ipv4Addr::new(198, 18, 0, 11),
            reachable,
            path_mtu_ok,
            mtu: 1450,
            rtt_micros: None,
            error: None,
            checked_at: String::new(),
        };
        let ok = health_condition(&[h("b", true, true)]);
        assert_eq!((ok.1, ok.2), ("False", "OverlayPeersHealthy"));
        let mtu = health_condition(&[h("b", true, false), h("c", true, true)]);
        assert_eq!((mtu.1, mtu.2), ("True", "PathMTUTooSmall"));
        assert!(
            mtu.3.contains("b (1450 bytes") && !mtu.3.contains("c ("),
            "{}",
            mtu.3
        );
        let down = health_condition(&[h("b", true, false), h("c", false, false)]);
        assert_eq!((down.1, down.2), ("True", "PeerUnreachable"));
        assert!(down.3.contains(": c ("), "{}", down.3);
    }

    #[test]
    fn the_report_shows_missing_altered_and_stale_entries() {
        let b = peer(&node(
            "b",
            Some("10.244.1.0/24"),
            Some(("02:00:00:00:00:02", "198.18.0.11")),
        ))
        .unwrap();
        let c = peer(&node(
            "c",
            Some("10.244.2.0/24"),
            Some(("02:00:00:00:00:03", "198.18.0.12")),
        ))
        .unwrap();
        let mut have = desired(&[b.clone(), c.clone()]);
        have.routes.remove(&b.pod_cidr);
        have.fdb
            .insert(c.vtep_mac.to_vec(), Ipv4Addr::new(198, 18, 0, 99));
        let gone: Ipv4Net = "10.244.7.0/24".parse().unwrap();
        have.routes.insert(gone, Some(gone.network()));
        let rows = report(&[b, c], &have, &[]);
        assert_eq!(rows.len(), 3);
        assert_eq!(
            (rows[0].route, rows[0].neighbour, rows[0].fdb),
            (
                Some(EntryState::Missing),
                Some(EntryState::Ok),
                Some(EntryState::Ok)
            )
        );
        assert_eq!(rows[1].fdb, Some(EntryState::Differs));
        assert_eq!(rows[2].node, "");
        assert_eq!(rows[2].route, Some(EntryState::Stale));
        assert_eq!(rows[2].pod_cidr.as_deref(), Some("10.244.7.0/24"));
    }

    #[test]
    fn vtep_macs_are_local_unicast() {
        let m = vtep_mac_from([0xff; 6]);
        assert_eq!(m[0] & 0x01, 0, "unicast");
        assert_eq!(m[0] & 0x02, 0x02, "locally administered");
    }
}

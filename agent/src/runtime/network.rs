//! The pod network on the node: a bridge (`cni0`) holding the first address of the
//! node's pod CIDR, and per pod a veth pair — the host side a port of the bridge
//! (hairpin on), the pod side `eth0` in the pod's network namespace with an address from
//! [`super::ipam`] and a default route via the bridge. All of it over rtnetlink.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::path::Path;

use rtnetlink::{LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth};

use super::RuntimeError;
use super::ipam::Ipam;
use crate::model::cidr::Ipv4Net;
use crate::sys::netlink::{Netlink, Route4};

/// How pods get their network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NetworkState {
    /// No pod network: pods have only loopback (standalone without `--pod-cidr`, or a
    /// node run without `--cluster-cidr`).
    #[default]
    Off,
    /// A pod network is configured but not ready yet (the Node has no pod CIDR, the
    /// overlay is not up): pods wait.
    Waiting(String),
    Ready(PodNetwork),
}

/// The node's pod network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetwork {
    pub cidr: Ipv4Net,
    pub bridge: String,
    /// MTU of the bridge and every pod's veth pair.
    pub mtu: u32,
}

/// The host-side veth name of a pod: `veth` and 8 hex digits of a hash of its uid
/// (interface names have at most 15 characters).
pub fn host_veth(uid: &str) -> String {
    // FNV-1a: stable across releases, unlike std's hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in uid.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("veth{h:08x}")
}

fn nl_err(pod: &str) -> impl Fn(crate::sys::netlink::NetlinkError) -> RuntimeError + '_ {
    move |e| RuntimeError::Refused(format!("pod network of {pod}: {e}"))
}

/// Makes sure the bridge exists, is up and holds the gateway address; returns its index.
pub fn ensure_bridge(nl: &mut Netlink, net: &PodNetwork) -> Result<u32, RuntimeError> {
    let err = nl_err("the node");
    let link = match nl.link(&net.bridge).map_err(&err)? {
        Some(l) => l,
        None => {
            nl.create_link(
                &format!("creating bridge {}", net.bridge),
                LinkBridge::new(&net.bridge).mtu(net.mtu).up().build(),
            )
            .map_err(&err)?;
            nl.link(&net.bridge).map_err(&err)?.ok_or_else(|| {
                RuntimeError::Refused(format!("bridge {} vanished after creation", net.bridge))
            })?
        }
    };
    if link.kind.as_deref() != Some("bridge") {
        return Err(RuntimeError::Refused(format!(
            "link {} exists and is not a bridge ({}); remove it or choose another --bridge",
            net.bridge,
            link.kind.as_deref().unwrap_or("a physical device")
        )));
    }
    let gw = net.cidr.gateway();
    let addrs = nl.addresses(link.index).map_err(&err)?;
    if !addrs.contains(&(gw, net.cidr.prefix())) {
        nl.add_address(link.index, gw, net.cidr.prefix())
            .map_err(&err)?;
    }
    // Addresses of an older pod CIDR would route its pods here; they go.
    for (ip, prefix) in addrs {
        if (ip, prefix) != (gw, net.cidr.prefix()) {
            nl.delete_address(link.index, ip, prefix).map_err(&err)?;
        }
    }
    if !link.up || link.mtu != net.mtu {
        nl.set_link(
            &format!("setting bridge {} up", net.bridge),
            LinkUnspec::new_with_index(link.index)
                .mtu(net.mtu)
                .up()
                .build(),
        )
        .map_err(&err)?;
    }
    // Pods reach the rest of the cluster through the node.
    crate::sys::netlink::set_sysctl("net.ipv4.ip_forward", "1").map_err(RuntimeError::io(
        "enabling net.ipv4.ip_forward in the node's network namespace",
    ))?;
    Ok(link.index)
}

/// Connects the pod whose network namespace is pinned at `netns` to the pod network:
/// an address from `ipam`, a veth pair, routes. Idempotent: a half-built attachment of
/// an earlier attempt is replaced.
pub fn attach(
    net: &PodNetwork,
    ipam: &Ipam,
    uid: &str,
    pod: &str,
    netns: &Path,
) -> Result<Ipv4Addr, RuntimeError> {
    let err = nl_err(pod);
    let ip = ipam
        .allocate(uid)
        .map_err(|e| RuntimeError::Refused(format!("pod network of {pod}: {e}")))?;
    let mut nl = Netlink::open().map_err(&err)?;
    let bridge = ensure_bridge(&mut nl, net)?;
    let host = host_veth(uid);
    if let Some(old) = nl.link(&host).map_err(&err)? {
        nl.delete_link(old.index).map_err(&err)?;
    }
    let ns = std::fs::File::open(netns).map_err(RuntimeError::io(format!(
        "opening the network namespace of {pod} at {}",
        netns.display()
    )))?;
    // The peer is created inside the pod's namespace, already named eth0.
    let mut msg = LinkVeth::new(&host, "eth0").mtu(net.mtu).build();
    for a in &mut msg.attributes {
        if let netlink_packet_route::link::LinkAttribute::LinkInfo(infos) = a {
            for i in infos {
                if let netlink_packet_route::link::LinkInfo::Data(
                    netlink_packet_route::link::InfoData::Veth(
                        netlink_packet_route::link::InfoVeth::Peer(peer),
                    ),
                ) = i
                {
                    peer.attributes
                        .push(netlink_packet_route::link::LinkAttribute::Mtu(net.mtu));
                    peer.attributes
                        .push(netlink_packet_route::link::LinkAttribute::NetNsFd(
                            ns.as_raw_fd(),
                        ));
                }
            }
        }
    }
    nl.create_link(&format!("creating veth pair {host}/eth0"), msg)
        .map_err(&err)?;
    let host_link = nl
        .link(&host)
        .map_err(&err)?
        .ok_or_else(|| RuntimeError::Refused(format!("veth {host} vanished after creation")))?;
    nl.set_link(
        &format!("attaching {host} to {}", net.bridge),
        LinkUnspec::new_with_index(host_link.index)
            .controller(bridge)
            .up()
            .build(),
    )
    .map_err(&err)?;
    // Hairpin: a pod reaching itself through a Service comes back on its own port.
    nl.set_link(
        &format!("setting hairpin on {host}"),
        LinkBridgePort::new(host_link.index).hairpin(true).build(),
    )
    .map_err(&err)?;
    let mut pod_nl = Netlink::open_in(netns).map_err(&err)?;
    let eth0 = pod_nl
        .link("eth0")
        .map_err(&err)?
        .ok_or_else(|| RuntimeError::Refused(format!("eth0 missing in the namespace of {pod}")))?;
    pod_nl
        .add_address(eth0.index, ip, net.cidr.prefix())
        .map_err(&err)?;
    pod_nl
        .set_link(
            "setting eth0 up",
            LinkUnspec::new_with_index(eth0.index).up().build(),
        )
        .map_err(&err)?;
    pod_nl
        .replace_route(&Route4 {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
            gateway: Some(net.cidr.gateway()),
            oif: Some(eth0.index),
            onlink: false,
            protocol: netlink_packet_route::route::RouteProtocol::Boot,
        })
        .map_err(&err)?;
    Ok(ip)
}

/// The MTU of the interface holding `ip` in this network namespace.
pub fn mtu_of(ip: std::net::IpAddr) -> Option<u32> {
    // Loopback's MTU (65536) is no link's to copy: a bridge refuses it.
    let std::net::IpAddr::V4(ip) = ip else {
        return None;
    };
    if ip.is_loopback() {
        return None;
    }
    let mut nl = Netlink::open().ok()?;
    let index = nl
        .all_addresses()
        .ok()?
        .into_iter()
        .find_map(|(i, a, _)| (a == ip).then_some(i))?;
    nl.links()
        .ok()?
        .into_iter()
        .find(|l| l.index == index)
        .map(|l| l.mtu)
}

/// Disconnects a pod: its veth pair goes (deleting one end deletes both) and its address
/// is released.
pub fn detach(ipam: Option<&Ipam>, uid: &str) -> Result<(), RuntimeError> {
    let err = nl_err(uid);
    let mut nl = Netlink::open().map_err(&err)?;
    if let Some(l) = nl.link(&host_veth(uid)).map_err(&err)? {
        match nl.delete_link(l.index) {
            Err(e) if e.errno() != Some(libc::ENODEV) => return Err(err(e)),
            _ => {}
        }
    }
    if let Some(ipam) = ipam {
        ipam.release(uid)
            .map_err(|e| RuntimeError::Refused(format!("releasing the address of {uid}: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_fit_and_are_stable() {
        let a = host_veth("5f0c7c83-8a8e-4cf2-9d5b-1f4a5e2b7c11");
        assert_eq!(a.len(), 12);
        assert!(a.starts_with("veth"));
        assert_eq!(a, host_veth("5f0c7c83-8a8e-4cf2-9d5b-1f4a5e2b7c11"));
        assert_ne!(a, host_veth("5f0c7c83-8a8e-4cf2-9d5b-1f4a5e2b7c12"));
    }
}

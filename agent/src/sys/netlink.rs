//! rtnetlink over a plain blocking netlink socket: links, addresses, routes, neighbours
//! and bridge FDB entries, in the network namespace the socket was opened in. Messages
//! are built with `rtnetlink`'s builders where it has them and sent here, one request
//! and its answer at a time, so callers on plain threads need no async runtime.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd as _;
use std::path::Path;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

/// A netlink request that failed, naming what it was for.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct NetlinkError {
    pub what: String,
    pub source: io::Error,
}

impl NetlinkError {
    fn new(what: impl Into<String>, source: io::Error) -> Self {
        Self {
            what: what.into(),
            source,
        }
    }

    /// The kernel's errno, when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

type Result<T> = std::result::Result<T, NetlinkError>;

/// A link as the kernel reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Vec<u8>,
    pub up: bool,
    /// `bridge`, `veth`, `vxlan`, … (none for physical devices).
    pub kind: Option<String>,
    /// The bridge this link is a port of.
    pub controller: Option<u32>,
    pub vxlan: Option<Vxlan>,
    /// Its link layer when not Ethernet (`NONE` for a WireGuard or tun device,
    /// `LOOPBACK`, …); `None` for Ethernet and Ethernet-like devices (VXLAN, veth).
    pub not_ether: Option<String>,
}

/// The attributes of a VXLAN device kernlet cares about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vxlan {
    pub vni: Option<u32>,
    pub local: Option<Ipv4Addr>,
    pub port: Option<u16>,
    pub learning: Option<bool>,
    pub underlay: Option<u32>,
}

/// An IPv4 route of the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route4 {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub onlink: bool,
    pub protocol: RouteProtocol,
}

/// A neighbour (ARP) entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    pub mac: Vec<u8>,
    pub permanent: bool,
}

/// A bridge FDB entry on a device (for VXLAN: MAC → remote VTEP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    pub mac: Vec<u8>,
    pub dst: Option<Ipv4Addr>,
    pub permanent: bool,
}

/// A route-netlink socket in one network namespace.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").field("seq", &self.seq).finish()
    }
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)
            .map_err(|e| NetlinkError::new("opening a netlink socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| NetlinkError::new("binding a netlink socket", e))?;
        socket
            .set_ext_ack(true)
            .map_err(|e| NetlinkError::new("enabling netlink extended acks", e))?;
        Ok(Self { socket, seq: 1 })
    }

    /// A socket in the network namespace pinned at `netns`. A socket stays in the
    /// namespace it was created in, so a scratch thread enters the namespace, opens it
    /// and hands it back; the calling thread never moves.
    pub fn open_in(netns: &Path) -> Result<Self> {
        let path = netns.to_path_buf();
        std::thread::spawn(move || -> Result<Self> {
            let what = format!("entering network namespace {}", path.display());
            let file = std::fs::File::open(&path).map_err(|e| NetlinkError::new(&what, e))?;
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetlinkError::new(&what, io::Error::from_raw_os_error(e as i32)))?;
            Self::open()
        })
        .join()
        .map_err(|_| {
            NetlinkError::new(
                format!("opening netlink in {}", netns.display()),
                io::Error::other("thread panicked"),
            )
        })?
    }

    /// Sends one request and collects its answer: the messages of a dump, or nothing for
    /// an acknowledged change. A kernel error becomes the errno, with its extended-ack
    /// message when there is one.
    fn request(
        &mut self,
        what: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|e| NetlinkError::new(what, e))?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            let (bytes, _) = self
                .socket
                .recv_from_full()
                .map_err(|e| NetlinkError::new(what, e))?;
            let mut offset = 0;
            while offset < bytes.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[offset..])
                    .map_err(|e| {
                        NetlinkError::new(what, io::Error::other(format!("bad netlink reply: {e}")))
                    })?;
                let len = reply.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += len;
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(out),
                        Some(code) => {
                            let errno = io::Error::from_raw_os_error(-code.get());
                            return Err(NetlinkError::new(what, errno));
                        }
                    },
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if !dump {
                            // An answer to a GET without DUMP: one message, then the ack.
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn change(&mut self, what: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<()> {
        self.request(what, msg, NLM_F_ACK | flags).map(|_| ())
    }

    // ---- links ----

    /// Every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let answer = self.request(
            "listing links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answer
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_from(&l)),
                _ => None,
            })
            .collect())
    }

    /// The link called `name`, if there is one.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    /// Creates a link; fails with EEXIST when one of that name exists.
    pub fn create_link(&mut self, what: &str, msg: LinkMessage) -> Result<()> {
        self.change(
            what,
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Changes an existing link (state, controller, namespace, port options).
    pub fn set_link(&mut self, what: &str, msg: LinkMessage) -> Result<()> {
        self.change(what, RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Deletes a link by index.
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.change(
            &format!("deleting link {index}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        )
    }

    // ---- addresses ----

    /// The IPv4 addresses on link `index`, with their prefix lengths.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        let answer = self.request(
            "listing addresses",
            RouteNetlinkMessage::GetAddress(msg),
            NLM_F_DUMP,
        )?;
        Ok(answer
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    let ip = a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                        _ => None,
                    });
                    let ip = ip.or_else(|| {
                        a.attributes.iter().find_map(|x| match x {
                            AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                            _ => None,
                        })
                    })?;
                    Some((ip, a.header.prefix_len))
                }
                _ => None,
            })
            .collect())
    }

    /// Every IPv4 address of the namespace with the link holding it.
    pub fn all_addresses(&mut self) -> Result<Vec<(u32, Ipv4Addr, u8)>> {
        let mut out = Vec::new();
        for l in self.links()? {
            for (ip, p) in self.addresses(l.index)? {
                out.push((l.index, ip, p));
            }
        }
        Ok(out)
    }

    fn address_msg(index: u32, ip: Ipv4Addr, prefix: u8) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(ip)));
        if prefix < 31 {
            let host_mask = u32::MAX >> prefix;
            let bcast = Ipv4Addr::from(u32::from(ip) | host_mask);
            msg.attributes.push(AddressAttribute::Broadcast(bcast));
        }
        msg
    }

    /// Adds `ip/prefix` to link `index` (no error when it is there already).
    pub fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        self.change(
            &format!("adding {ip}/{prefix} to link {index}"),
            RouteNetlinkMessage::NewAddress(Self::address_msg(index, ip, prefix)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Removes `ip/prefix` from link `index`.
    pub fn delete_address(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        self.change(
            &format!("removing {ip}/{prefix} from link {index}"),
            RouteNetlinkMessage::DelAddress(Self::address_msg(index, ip, prefix)),
            0,
        )
    }

    // ---- routes ----

    /// The IPv4 routes of the main table.
    pub fn routes(&mut self) -> Result<Vec<Route4>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        let answer = self.request(
            "listing routes",
            RouteNetlinkMessage::GetRoute(msg),
            NLM_F_DUMP,
        )?;
        Ok(answer
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r)
                    if r.header.table == RouteHeader::RT_TABLE_MAIN
                        && r.header.kind == RouteType::Unicast =>
                {
                    Some(route_from(&r))
                }
                _ => None,
            })
            .collect())
    }

    fn route_msg(r: &Route4) -> RouteMessage {
        let mut b = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(r.dst, r.prefix)
            .protocol(r.protocol);
        if let Some(gw) = r.gateway {
            b = b.gateway(gw);
        }
        if let Some(oif) = r.oif {
            b = b.output_interface(oif);
        }
        let mut msg = b.build();
        if r.gateway.is_none() {
            msg.header.scope = RouteScope::Link;
        }
        if r.onlink {
            msg.header.flags |= RouteFlags::Onlink;
        }
        msg
    }

    /// Adds or replaces the route to `r.dst/r.prefix`.
    pub fn replace_route(&mut self, r: &Route4) -> Result<()> {
        self.change(
            &format!("setting the route to {}/{}", r.dst, r.prefix),
            RouteNetlinkMessage::NewRoute(Self::route_msg(r)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Deletes a route.
    pub fn delete_route(&mut self, r: &Route4) -> Result<()> {
        self.change(
            &format!("deleting the route to {}/{}", r.dst, r.prefix),
            RouteNetlinkMessage::DelRoute(Self::route_msg(r)),
            0,
        )
    }

    // ---- neighbours and FDB ----

    fn neighbour_dump(&mut self, family: AddressFamily) -> Result<Vec<NeighbourMessage>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family;
        let answer = self.request(
            "listing neighbours",
            RouteNetlinkMessage::GetNeighbour(msg),
            NLM_F_DUMP,
        )?;
        Ok(answer
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => Some(n),
                _ => None,
            })
            .collect())
    }

    /// The IPv4 neighbour entries on link `index`.
    pub fn neighbours(&mut self, index: u32) -> Result<Vec<Neighbour>> {
        Ok(self
            .neighbour_dump(AddressFamily::Inet)?
            .into_iter()
            .filter(|n| n.header.ifindex == index)
            .filter_map(|n| {
                let ip = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                    _ => None,
                })?;
                let mac = n
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        NeighbourAttribute::LinkLayerAddress(m) => Some(m.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                Some(Neighbour {
                    ip,
                    mac,
                    permanent: n.header.state == NeighbourState::Permanent,
                })
            })
            .collect())
    }

    fn neighbour_msg(index: u32, ip: Ipv4Addr, mac: &[u8]) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        if !mac.is_empty() {
            msg.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        }
        msg
    }

    /// Adds or replaces the permanent entry `ip → mac` on link `index`.
    pub fn replace_neighbour(&mut self, index: u32, ip: Ipv4Addr, mac: &[u8]) -> Result<()> {
        self.change(
            &format!("setting neighbour {ip} on link {index}"),
            RouteNetlinkMessage::NewNeighbour(Self::neighbour_msg(index, ip, mac)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Deletes the neighbour entry for `ip` on link `index`.
    pub fn delete_neighbour(&mut self, index: u32, ip: Ipv4Addr) -> Result<()> {
        self.change(
            &format!("deleting neighbour {ip} on link {index}"),
            RouteNetlinkMessage::DelNeighbour(Self::neighbour_msg(index, ip, &[])),
            0,
        )
    }

    /// The FDB entries of device `index` (its own table, `bridge fdb show dev`).
    pub fn fdb(&mut self, index: u32) -> Result<Vec<FdbEntry>> {
        Ok(self
            .neighbour_dump(AddressFamily::Bridge)?
            .into_iter()
            .filter(|n| n.header.ifindex == index)
            .filter_map(|n| {
                let mac = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::LinkLayerAddress(m) => Some(m.clone()),
                    _ => None,
                })?;
                // In an AF_BRIDGE message the remote is not parsed as IPv4.
                let dst = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
                    }
                    _ => None,
                });
                Some(FdbEntry {
                    mac,
                    dst,
                    permanent: n.header.state == NeighbourState::Permanent,
                })
            })
            .collect())
    }

    fn fdb_msg(index: u32, mac: &[u8], dst: Ipv4Addr) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
        msg
    }

    /// Adds or replaces the permanent FDB entry `mac → dst` on device `index`.
    pub fn replace_fdb(&mut self, index: u32, mac: &[u8], dst: Ipv4Addr) -> Result<()> {
        self.change(
            &format!("setting FDB entry {} on link {index}", format_mac(mac)),
            RouteNetlinkMessage::NewNeighbour(Self::fdb_msg(index, mac, dst)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Deletes the FDB entry `mac → dst` on device `index`.
    pub fn delete_fdb(&mut self, index: u32, mac: &[u8], dst: Ipv4Addr) -> Result<()> {
        self.change(
            &format!("deleting FDB entry {} on link {index}", format_mac(mac)),
            RouteNetlinkMessage::DelNeighbour(Self::fdb_msg(index, mac, dst)),
            0,
        )
    }
}

/// Every interface holding one of `ips` (IPv4), each once, in the order of the
/// addresses: where traffic from outside the node arrives.
pub fn interfaces_with_addresses(ips: &[std::net::IpAddr]) -> Vec<Link> {
    let Ok(mut nl) = Netlink::open() else {
        return Vec::new();
    };
    let mut indexes: Vec<u32> = Vec::new();
    for (index, ip, _) in nl.all_addresses().unwrap_or_default() {
        if ips.contains(&std::net::IpAddr::V4(ip)) && !indexes.contains(&index) {
            indexes.push(index);
        }
    }
    let links = nl.links().unwrap_or_default();
    indexes
        .iter()
        .filter_map(|i| links.iter().find(|l| l.index == *i).cloned())
        .collect()
}

/// The link named `name`, if there is one.
pub fn link_named(name: &str) -> Option<Link> {
    Netlink::open()
        .ok()?
        .links()
        .ok()?
        .into_iter()
        .find(|l| l.name == name)
}

/// The name of the interface holding one of `ips` (the node's underlay interface):
/// the first of [`interfaces_with_addresses`].
pub fn interface_with_address(ips: &[std::net::IpAddr]) -> Option<String> {
    interfaces_with_addresses(ips)
        .into_iter()
        .next()
        .map(|l| l.name)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn link_from(l: &LinkMessage) -> Link {
    let mut out = Link {
        index: l.header.index,
        up: l.header.flags.contains(LinkFlags::Up),
        not_ether: (l.header.link_layer_type != LinkLayerType::Ether)
            .then(|| l.header.link_layer_type.to_string()),
        ..Default::default()
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => out.name = n.clone(),
            LinkAttribute::Mtu(m) => out.mtu = *m,
            LinkAttribute::Address(m) => out.mac = m.clone(),
            LinkAttribute::Controller(c) => out.controller = Some(*c),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => out.kind = Some(kind_name(k)),
                        LinkInfo::Data(InfoData::Vxlan(v)) => {
                            let mut x = Vxlan::default();
                            for a in v {
                                match a {
                                    InfoVxlan::Id(id) => x.vni = Some(*id),
                                    InfoVxlan::Local(ip) => x.local = Some(*ip),
                                    InfoVxlan::Port(p) => x.port = Some(*p),
                                    InfoVxlan::Learning(b) => x.learning = Some(*b),
                                    InfoVxlan::Link(i) => x.underlay = Some(*i),
                                    _ => {}
                                }
                            }
                            out.vxlan = Some(x);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Veth => "veth".into(),
        InfoKind::Vxlan => "vxlan".into(),
        InfoKind::Dummy => "dummy".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn route_from(r: &RouteMessage) -> Route4 {
    let mut out = Route4 {
        dst: Ipv4Addr::UNSPECIFIED,
        prefix: r.header.destination_prefix_length,
        gateway: None,
        oif: None,
        onlink: r.header.flags.contains(RouteFlags::Onlink),
        protocol: r.header.protocol,
    };
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => out.dst = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => out.gateway = Some(*ip),
            RouteAttribute::Oif(i) => out.oif = Some(*i),
            _ => {}
        }
    }
    out
}

/// Writes a sysctl of the calling thread's network namespace (`net.ipv4.ip_forward`).
pub fn set_sysctl(key: &str, value: &str) -> io::Result<()> {
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    match std::fs::read_to_string(&path) {
        Ok(v) if v.trim() == value => Ok(()),
        _ => std::fs::write(&path, value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_print_like_ip_does() {
        assert_eq!(
            format_mac(&[0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01]),
            "0a:58:0a:f4:01:01"
        );
    }

    #[test]
    fn onlink_routes_carry_the_flag_and_the_gateway() {
        let r = Route4 {
            dst: Ipv4Addr::new(10, 244, 2, 0),
            prefix: 24,
            gateway: Some(Ipv4Addr::new(10, 244, 2, 0)),
            oif: Some(7),
            onlink: true,
            protocol: RouteProtocol::Boot,
        };
        let msg = Netlink::route_msg(&r);
        assert!(msg.header.flags.contains(RouteFlags::Onlink));
        assert_eq!(route_from(&msg), r);
    }
}

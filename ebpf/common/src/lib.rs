//! Types shared by kernlet's eBPF programs and user space.
//!
//! Everything here is `#[repr(C)]` plain data with explicit padding, because the kernel
//! and user space see the same bytes through BPF maps.
#![no_std]
#![deny(unsafe_code)]

/// Name of the map holding [`ProbeCounters`], one entry at index 0.
pub const PROBE_MAP: &str = "KL_PROBE";

/// Name of the `cgroup/connect4` program that counts connects in the cgroup it is
/// attached to. It never changes a verdict: every connect is allowed.
pub const PROBE_CONNECT4: &str = "kl_probe_connect4";

/// Counters the probe program keeps, so user space can prove the datapath runs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeCounters {
    /// IPv4 `connect()` calls seen by the attached `cgroup/connect4` hook.
    pub connect4: u64,
}

/// Socket-level load-balancing: the maps (pinned by name under the instance's bpffs
/// directory) and the programs attached to the cgroup covering the node's processes.
pub const SERVICES_MAP: &str = "KL_SERVICES";
pub const BACKENDS_MAP: &str = "KL_BACKENDS";
pub const SOCK_REVNAT_MAP: &str = "KL_SOCK_REVNAT";
pub const LB_CONNECT4: &str = "kl_lb_connect4";
pub const LB_SENDMSG4: &str = "kl_lb_sendmsg4";
pub const LB_RECVMSG4: &str = "kl_lb_recvmsg4";
pub const LB_GETPEERNAME4: &str = "kl_lb_getpeername4";
/// The same hooks for IPv6 sockets (IPv4 services through IPv4-mapped addresses).
pub const LB_CONNECT6: &str = "kl_lb_connect6";
pub const LB_SENDMSG6: &str = "kl_lb_sendmsg6";
pub const LB_RECVMSG6: &str = "kl_lb_recvmsg6";
pub const LB_GETPEERNAME6: &str = "kl_lb_getpeername6";
/// Entries the maps hold at most.
pub const MAX_SERVICES: u32 = 65_536;
pub const MAX_BACKENDS: u32 = 262_144;
pub const MAX_SOCKETS: u32 = 262_144;

/// An address as the maps hold it: the 16 bytes of an IPv6 address in network order
/// (in memory exactly as `bpf_sock_addr.user_ip6` holds them), an IPv4 address as
/// `::ffff:a.b.c.d`, so one key serves both families.
pub type Addr = [u32; 4];

/// `a.b.c.d` (a word as `user_ip4` holds it) as the maps hold it.
#[inline(always)]
pub const fn ipv4_mapped(a: u32) -> Addr {
    [0, 0, 0xffff_u32.to_be(), a]
}

/// The IPv4 address of an IPv4-mapped map address.
#[inline(always)]
pub const fn mapped_ipv4(a: &Addr) -> Option<u32> {
    if a[0] == 0 && a[1] == 0 && a[2] == 0xffff_u32.to_be() {
        Some(a[3])
    } else {
        None
    }
}

/// A frontend: address and port as the socket call carries them (network byte order)
/// and the IP protocol (6, 17).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: Addr,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// A frontend's backends: `count` entries of backend set `slot` in the backends map.
/// A new set is written under a fresh slot and then swapped in with one update of
/// this value, so a connect never sees a half-written service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    pub slot: u32,
    pub count: u32,
    /// `sessionAffinity: ClientIP`: seconds a client keeps its backend (0: none).
    pub affinity_timeout: u32,
    /// `SVC_*` bits.
    pub flags: u32,
}

/// The frontend is reached from outside the node too (a NodePort on a node address,
/// an external IP, a load-balancer IP): the TC programs translate packets to it.
pub const SVC_EXTERNAL: u32 = 1;
/// `externalTrafficPolicy: Local`: outside clients keep their address (no SNAT).
pub const SVC_LOCAL: u32 = 2;
/// `loadBalancerSourceRanges`: only clients in the frontend's ranges get through.
pub const SVC_SOURCE_RANGES: u32 = 4;
/// The backend slot is a Maglev lookup table (`count` entries, backends repeated):
/// outside flows pick the entry their 5-tuple hashes to, so every node running the
/// same table sends a flow to the same backend.
pub const SVC_MAGLEV: u32 = 8;

/// Session affinity: a client (its network namespace, as socket-level balancing sees
/// it: every process of a pod, or of the node) and a frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityKey {
    pub netns_cookie: u64,
    pub service: ServiceKey,
    pub _pad: u32,
}

/// The backend a client was given and when it last used it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend: Backend,
    pub _pad: u32,
    pub last_ns: u64,
}

pub const AFFINITY_MAP: &str = "KL_AFFINITY";

/// A backend of a slot (a frontend's backend set), present while the slot holds it
/// (the value is an index where it sits): a remembered affinity stays while its
/// backend is still a member, however many backends the frontend has.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotMember {
    pub slot: u32,
    pub backend: Backend,
}
pub const SLOT_MEMBERS_MAP: &str = "KL_SLOT_MEMBERS";
/// Per backend, per CPU: how many connects and datagrams were sent its way.
pub const BACKEND_STATS_MAP: &str = "KL_BACKEND_STATS";

/// Entry `index` of backend set `slot`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub slot: u32,
    pub index: u32,
}

/// A backend address and port, in the socket call's byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub addr: Addr,
    pub port: u16,
    /// `BACKEND_*` bits.
    pub flags: u16,
}

/// The endpoint lives on this node: outside traffic to it needs no SNAT, its replies
/// leave through the node's own routing.
pub const BACKEND_LOCAL: u16 = 1;

/// Packet-level load-balancing for traffic from outside the node: `tcx` programs on
/// the node's underlay interface (ingress and egress) and on the overlay device
/// (ingress, where replies of SNAT'd flows come back).
pub const LB_INGRESS: &str = "kl_lb_ingress";
pub const LB_EGRESS: &str = "kl_lb_egress";
/// Established client flow → its translation (keyed by the packet as the client sent
/// it).
pub const NAT_FWD_MAP: &str = "KL_NAT_FWD";
/// Established backend flow → how to show it to the client (keyed by the packet as the
/// backend sent it).
pub const NAT_REV_MAP: &str = "KL_NAT_REV";
/// The same for flows not established yet (a TCP handshake not completed, a UDP flow
/// not answered): a table of their own, so that a flood of new flows evicts only new
/// flows, never established ones.
pub const NAT_FWD_NEW_MAP: &str = "KL_NAT_FWD_NEW";
pub const NAT_REV_NEW_MAP: &str = "KL_NAT_REV_NEW";
/// The maps sized by `--service-nat-flows` (the new-flow tables get a quarter).
pub const NAT_MAPS: [&str; 4] = [NAT_FWD_MAP, NAT_REV_MAP, NAT_FWD_NEW_MAP, NAT_REV_NEW_MAP];

/// A flow's state in [`FwdNat::state`]: not established yet (in the new-flow tables).
pub const FLOW_NEW: u8 = 0;
/// A TCP handshake completed (the client's ACK after the backend's SYN-ACK) or a UDP
/// flow answered.
pub const FLOW_ESTABLISHED: u8 = 1;
/// A FIN or RST seen from the client.
pub const FLOW_CLOSING: u8 = 2;
/// How long a flow may stay idle in each state before its translation is dropped and
/// its next packet starts a new flow (nanoseconds; as conntrack's timeouts, with
/// kube-proxy's established TCP timeout of a day).
pub const NEW_TIMEOUT_NS: u64 = 30_000_000_000;
pub const TCP_ESTABLISHED_TIMEOUT_NS: u64 = 86_400_000_000_000;
pub const UDP_ESTABLISHED_TIMEOUT_NS: u64 = 120_000_000_000;
pub const CLOSING_TIMEOUT_NS: u64 = 60_000_000_000;

/// How long a flow in `state` may stay idle.
pub const fn flow_timeout_ns(proto: u8, state: u8) -> u64 {
    match (proto, state) {
        (_, FLOW_NEW) => NEW_TIMEOUT_NS,
        (_, FLOW_CLOSING) => CLOSING_TIMEOUT_NS,
        (6, _) => TCP_ESTABLISHED_TIMEOUT_NS,
        _ => UDP_ESTABLISHED_TIMEOUT_NS,
    }
}
/// `loadBalancerSourceRanges`: an LPM trie of (frontend, client prefix).
pub const SOURCE_RANGES_MAP: &str = "KL_SOURCE_RANGES";
/// Established flows remembered by default (`--service-nat-flows`).
pub const MAX_FLOWS: u32 = 262_144;
/// Flows not established yet remembered by default: a quarter.
pub const MAX_NEW_FLOWS: u32 = MAX_FLOWS / 4;
pub const MAX_SOURCE_RANGES: u32 = 16_384;
/// Ports a SNAT'd flow is given on the node address when the client's own is taken:
/// above Linux's default ephemeral range (32768–60999), so the node's own sockets do
/// not compete for them.
pub const SNAT_PORT_MIN: u16 = 61_000;
pub const SNAT_PORT_COUNT: u16 = 4_535;

/// One direction of a flow as a packet carries it (addresses and ports in network
/// byte order, as in the packet).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// A client flow's translation: its backend, and the node address and port it is
/// shown as when SNAT'd (`snat` 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwdNat {
    pub backend: Backend,
    pub snat_addr: Addr,
    pub snat_port: u16,
    pub snat: u8,
    /// `FLOW_*`.
    pub state: u8,
    /// When the client last sent a packet (`bpf_ktime_get_ns`, kept to the second).
    pub seen: u64,
}

/// A backend flow's way back: the frontend it answers as and, when SNAT'd, the client
/// it goes to (`snat` 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevNat {
    pub frontend_addr: Addr,
    pub client_addr: Addr,
    pub frontend_port: u16,
    pub client_port: u16,
    pub snat: u8,
    /// The backend answered a TCP SYN (SYN-ACK seen): the client's next ACK
    /// establishes the flow.
    pub replied: u8,
    pub _pad: u16,
}

/// The data of a source-range key: the frontend, then the client address. Its prefix
/// length is [`SOURCE_RANGE_SERVICE_BITS`] (the whole frontend) plus the range's as a
/// 128-bit prefix (an IPv4 range's length plus 96).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRangeKey {
    pub service: ServiceKey,
    pub client: Addr,
}

/// Bits of a source-range key that cover the frontend.
pub const SOURCE_RANGE_SERVICE_BITS: u32 = 8 * core::mem::size_of::<ServiceKey>() as u32;

/// A translated socket and one backend it was sent to. `recvmsg` and `getpeername`
/// look up the address they see: an unconnected UDP socket talks to several backends
/// (of one Service, or of several) at once — musl's resolver sends A and AAAA queries
/// in parallel on one socket — and each reply must show its own Service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevKey {
    pub cookie: u64,
    pub backend: Addr,
    pub port: u16,
    pub _pad: u16,
    pub _pad2: u32,
}

/// The Service address and port a socket asked for, by [`SockRevKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevNat {
    pub service: Addr,
    pub port: u16,
    pub _pad: u16,
}

// The kernel hashes keys byte for byte: no key (or value read as bytes) may carry
// implicit padding. These sizes are the fields' sums.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<ServiceKey>() == 20);
    assert!(size_of::<ServiceValue>() == 16);
    assert!(size_of::<Backend>() == 20);
    assert!(size_of::<AffinityKey>() == 32);
    assert!(size_of::<AffinityValue>() == 32);
    assert!(size_of::<FlowKey>() == 40);
    assert!(size_of::<FwdNat>() == 48);
    assert!(size_of::<RevNat>() == 40);
    assert!(size_of::<SourceRangeKey>() == 36);
    assert!(size_of::<SockRevKey>() == 32);
    assert!(size_of::<SlotMember>() == 24);
    assert!(size_of::<SockRevNat>() == 20);
};

#[cfg(feature = "user")]
mod user {
    // A `Pod` impl is the one place the workspace needs `unsafe` outside `sys/`: aya
    // requires it to read map values as bytes. It lives in this shared crate by design.
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: ProbeCounters is repr(C), Copy, has no padding and every bit pattern is valid.
    unsafe impl aya::Pod for super::ProbeCounters {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: repr(C), Copy, 16-byte address, u16, two u8: 20 bytes, no implicit
    // padding, every bit pattern valid.
    unsafe impl aya::Pod for super::ServiceKey {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: repr(C), Copy, four u32 fields, every bit pattern valid.
    unsafe impl aya::Pod for super::ServiceValue {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: repr(C), Copy, two u32 fields, every bit pattern valid.
    unsafe impl aya::Pod for super::BackendKey {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: repr(C), Copy, 16-byte address and two u16: no implicit padding, every
    // bit pattern valid.
    unsafe impl aya::Pod for super::Backend {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: repr(C), Copy, a 16-byte address, u16 and an explicit u16 pad: no
    // implicit padding, every bit pattern valid.
    unsafe impl aya::Pod for super::SockRevNat {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: repr(C), Copy, u64, a 16-byte address, u16 and explicit u16 and u32
    // pads: 32 bytes, no implicit padding, every bit pattern valid.
    unsafe impl aya::Pod for super::SockRevKey {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: repr(C), Copy, a u32 then a 20-byte Backend (4-byte aligned): 24 bytes,
    // no implicit padding, every bit pattern valid.
    unsafe impl aya::Pod for super::SlotMember {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: repr(C), Copy, u64, a 20-byte ServiceKey and an explicit u32 pad: no
    // implicit padding.
    unsafe impl aya::Pod for super::AffinityKey {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: repr(C), Copy, a 20-byte Backend, an explicit u32 pad, then a u64: no
    // implicit padding.
    unsafe impl aya::Pod for super::AffinityValue {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: repr(C), Copy, explicit padding, 40 bytes, every bit pattern valid.
    unsafe impl aya::Pod for super::FlowKey {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: repr(C), Copy, a 20-byte Backend, a 16-byte address and two u16: no
    // implicit padding.
    unsafe impl aya::Pod for super::FwdNat {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: repr(C), Copy, two 16-byte addresses, two u16, a u32: no implicit padding.
    unsafe impl aya::Pod for super::RevNat {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: repr(C), Copy, a 20-byte ServiceKey then a 16-byte address: no implicit
    // padding.
    unsafe impl aya::Pod for super::SourceRangeKey {}
}

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
/// Entries the maps hold at most.
pub const MAX_SERVICES: u32 = 65_536;
pub const MAX_BACKENDS: u32 = 262_144;
pub const MAX_SOCKETS: u32 = 262_144;

/// A frontend: address and port as the socket call carries them (network byte order,
/// in memory exactly as `bpf_sock_addr` holds them) and the IP protocol (6, 17).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: u32,
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
    pub _pad: u32,
}

/// Session affinity: a client (its network namespace, as socket-level balancing sees
/// it: every process of a pod, or of the node) and a frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityKey {
    pub netns_cookie: u64,
    pub service: ServiceKey,
}

/// The backend a client was given and when it last used it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend: Backend,
    pub last_ns: u64,
}

/// How many backends a remembered choice is looked for among when the service's
/// backend set changed (bounded for the verifier).
pub const AFFINITY_SCAN: u32 = 64;
pub const AFFINITY_MAP: &str = "KL_AFFINITY";
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
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// What a translated socket was sent to and asked for, so `getpeername` and
/// `recvmsg` show the service address again (keyed by socket cookie).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevNat {
    pub backend: Backend,
    pub service: Backend,
}

#[cfg(feature = "user")]
mod user {
    // A `Pod` impl is the one place the workspace needs `unsafe` outside `sys/`: aya
    // requires it to read map values as bytes. It lives in this shared crate by design.
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: ProbeCounters is repr(C), Copy, has no padding and every bit pattern is valid.
    unsafe impl aya::Pod for super::ProbeCounters {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: repr(C), Copy, explicit padding fields, every bit pattern valid.
    unsafe impl aya::Pod for super::ServiceKey {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: repr(C), Copy, two u32 fields, every bit pattern valid.
    unsafe impl aya::Pod for super::ServiceValue {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: repr(C), Copy, two u32 fields, every bit pattern valid.
    unsafe impl aya::Pod for super::BackendKey {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: repr(C), Copy, explicit padding field, every bit pattern valid.
    unsafe impl aya::Pod for super::Backend {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: repr(C), Copy, two Backends, every bit pattern valid.
    unsafe impl aya::Pod for super::SockRevNat {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: repr(C), Copy, u64 then an 8-byte ServiceKey, no implicit padding.
    unsafe impl aya::Pod for super::AffinityKey {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: repr(C), Copy, an 8-byte Backend then a u64, no implicit padding.
    unsafe impl aya::Pod for super::AffinityValue {}
}

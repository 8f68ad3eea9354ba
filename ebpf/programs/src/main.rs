//! kernlet's eBPF programs. Entry points are thin and call `try_*` functions.
#![no_std]
#![no_main]

mod tc;

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::{cgroup_sock_addr, map},
    maps::{HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray},
    programs::SockAddrContext,
};
use kernlet_ebpf_common::{
    Addr, AffinityKey, AffinityValue, Backend, BackendKey, MAX_BACKENDS, MAX_SERVICES, MAX_SOCKETS,
    ProbeCounters, SVC_MAGLEV, ServiceKey, ServiceValue, SlotMember, SockRevKey, SockRevNat,
    ipv4_mapped, mapped_ipv4,
};

/// Verdict that lets a socket call proceed unchanged.
const ALLOW: i32 = 1;

// Per-CPU so concurrent connects never lose an increment; user space sums the CPUs.
#[map(name = "KL_PROBE")]
static KL_PROBE: PerCpuArray<ProbeCounters> = PerCpuArray::with_max_entries(1, 0);

/// Counts IPv4 connects in the cgroup it is attached to; proves the load/attach pipeline.
#[cgroup_sock_addr(connect4)]
pub fn kl_probe_connect4(ctx: SockAddrContext) -> i32 {
    try_probe_connect4(&ctx);
    ALLOW
}

fn try_probe_connect4(_ctx: &SockAddrContext) {
    if let Some(counters) = KL_PROBE.get_ptr_mut(0) {
        // SAFETY: the pointer comes from the map lookup, points at this CPU's slot and
        // stays valid for this program run; no other CPU writes it.
        unsafe { (*counters).connect4 += 1 };
    }
}

/// Verdict that refuses a socket call (a service without endpoints: fail fast, as
/// kube-proxy's reject rule does).
const DENY: i32 = 0;

// The load-balancer's maps are pinned by user space (`sys::lb`) under the instance's
// own directory, not by name in /sys/fs/bpf: loading the object for the probe alone
// must not need a bpffs.
#[map(name = "KL_SERVICES")]
static KL_SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map(name = "KL_BACKENDS")]
static KL_BACKENDS: HashMap<BackendKey, Backend> = HashMap::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "KL_AFFINITY")]
static KL_AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(MAX_SOCKETS, 0);

#[map(name = "KL_SLOT_MEMBERS")]
static KL_SLOT_MEMBERS: HashMap<SlotMember, u32> = HashMap::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "KL_BACKEND_STATS")]
static KL_BACKEND_STATS: LruPerCpuHashMap<Backend, u64> =
    LruPerCpuHashMap::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "KL_SOCK_REVNAT")]
static KL_SOCK_REVNAT: LruHashMap<SockRevKey, SockRevNat> =
    LruHashMap::with_max_entries(MAX_SOCKETS, 0);

/// Translates a connect (TCP, connected UDP) to a service address into one to a
/// backend chosen at random, and remembers the translation for the socket and that
/// backend.
#[cgroup_sock_addr(connect4)]
pub fn kl_lb_connect4(ctx: SockAddrContext) -> i32 {
    translate::<V4>(&ctx)
}

/// The same for each datagram of an unconnected UDP socket.
#[cgroup_sock_addr(sendmsg4)]
pub fn kl_lb_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate::<V4>(&ctx)
}

/// A datagram from a backend shows the service as its source.
#[cgroup_sock_addr(recvmsg4)]
pub fn kl_lb_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse::<V4>(&ctx);
    ALLOW
}

/// `getpeername` on a translated socket returns the service address.
#[cgroup_sock_addr(getpeername4)]
pub fn kl_lb_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse::<V4>(&ctx);
    ALLOW
}

/// The same four for IPv6 sockets: IPv6 services, and IPv4 services reached through
/// IPv4-mapped addresses (`::ffff:10.96.0.10`), as dual-stack sockets of many runtimes
/// do.
#[cgroup_sock_addr(connect6)]
pub fn kl_lb_connect6(ctx: SockAddrContext) -> i32 {
    translate::<V6>(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn kl_lb_sendmsg6(ctx: SockAddrContext) -> i32 {
    translate::<V6>(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn kl_lb_recvmsg6(ctx: SockAddrContext) -> i32 {
    reverse::<V6>(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn kl_lb_getpeername6(ctx: SockAddrContext) -> i32 {
    reverse::<V6>(&ctx);
    ALLOW
}

/// The socket family a program is compiled for: `user_ip4` of an AF_INET socket (`V4`)
/// or `user_ip6` of an AF_INET6 one (`V6`). A const parameter, so each program touches
/// only its own family's field: the verifier refuses `user_ip6` in IPv4 hooks, and any
/// offset computed at run time.
const V4: bool = false;
const V6: bool = true;

/// The call's address as the maps hold it.
#[inline(always)]
fn addr_of<const IS_V6: bool>(ctx: &SockAddrContext) -> Addr {
    let sa = ctx.sock_addr;
    if IS_V6 {
        // SAFETY: the kernel hands a valid bpf_sock_addr for the whole program run;
        // user_ip6 is readable in IPv6 hooks. Word by word: the verifier takes only
        // 4-byte accesses to it.
        unsafe {
            let ip = core::ptr::addr_of!((*sa).user_ip6) as *const u32;
            [
                core::ptr::read_volatile(ip),
                core::ptr::read_volatile(ip.add(1)),
                core::ptr::read_volatile(ip.add(2)),
                core::ptr::read_volatile(ip.add(3)),
            ]
        }
    } else {
        // SAFETY: as above; user_ip4 is readable in IPv4 hooks.
        ipv4_mapped(unsafe { (*sa).user_ip4 })
    }
}

/// Writes `addr` as the call's address; false when an IPv4 socket cannot carry it.
#[inline(always)]
fn set_addr<const IS_V6: bool>(ctx: &SockAddrContext, addr: &Addr) -> bool {
    let sa = ctx.sock_addr;
    if IS_V6 {
        // SAFETY: as in addr_of; the address fields are writable in connect, sendmsg,
        // recvmsg and getpeername programs, word by word.
        unsafe {
            let ip = core::ptr::addr_of_mut!((*sa).user_ip6) as *mut u32;
            core::ptr::write_volatile(ip, addr[0]);
            core::ptr::write_volatile(ip.add(1), addr[1]);
            core::ptr::write_volatile(ip.add(2), addr[2]);
            core::ptr::write_volatile(ip.add(3), addr[3]);
        }
        true
    } else if let Some(a) = mapped_ipv4(addr) {
        // SAFETY: as above.
        unsafe { (*sa).user_ip4 = a };
        true
    } else {
        false
    }
}

fn translate<const IS_V6: bool>(ctx: &SockAddrContext) -> i32 {
    let ip = addr_of::<IS_V6>(ctx);
    // SAFETY: the kernel hands a valid bpf_sock_addr for the whole program run; these
    // fields are readable in sock_addr programs.
    let (port, proto) = unsafe {
        let sa = &*ctx.sock_addr;
        (sa.user_port as u16, sa.protocol as u8)
    };
    let key = ServiceKey {
        addr: ip,
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once; map values are plain data.
    let Some(svc) = (unsafe { KL_SERVICES.get(&key) }).copied() else {
        return ALLOW;
    };
    if svc.count == 0 {
        return DENY;
    }
    // SAFETY: the context pointer is the program's own bpf_sock_addr.
    let client = || unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let Some(backend) = choose(client, || None, &key, &svc) else {
        return DENY;
    };
    // A backend of another family than the frontend's: the model never writes one.
    if !set_addr::<IS_V6>(ctx, &backend.addr) {
        return DENY;
    }
    count(&backend);
    // SAFETY: user_port is writable in connect and sendmsg programs.
    unsafe { (*ctx.sock_addr).user_port = u32::from(backend.port) };
    let rev = SockRevNat {
        service: ip,
        port,
        _pad: 0,
    };
    let _ = KL_SOCK_REVNAT.insert(&rev_key(ctx, backend.addr, backend.port), &rev, 0);
    ALLOW
}

/// A backend of `svc` for a client: the one the client had within the affinity timeout
/// when it is still a backend, else the Maglev entry `hash` picks (frontends with
/// `SVC_MAGLEV`, outside flows) or one at random (remembered when the service has
/// affinity). `client` names the client for affinity (asked only when the service has
/// it): its network namespace cookie for socket calls, its address for packets;
/// `hash` is the flow's (none for socket calls: they pick at random).
fn choose(
    client: impl FnOnce() -> u64,
    hash: impl FnOnce() -> Option<u32>,
    key: &ServiceKey,
    svc: &ServiceValue,
) -> Option<Backend> {
    // Callers refuse empty services first; checked here too so the divisions below
    // stand alone (the verifier takes no panic path).
    if svc.count == 0 {
        return None;
    }
    let mut akey = None;
    if svc.affinity_timeout > 0 {
        let k = AffinityKey {
            netns_cookie: client(),
            service: *key,
            _pad: 0,
        };
        // SAFETY: helper without arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        // SAFETY: the value is copied out at once.
        if let Some(prev) = (unsafe { KL_AFFINITY.get(&k) }).copied()
            && now.saturating_sub(prev.last_ns) < u64::from(svc.affinity_timeout) * 1_000_000_000
            && in_slot(svc, &prev.backend)
        {
            let _ = KL_AFFINITY.insert(
                &k,
                &AffinityValue {
                    backend: prev.backend,
                    _pad: 0,
                    last_ns: now,
                },
                0,
            );
            return Some(prev.backend);
        }
        akey = Some((k, now));
    }
    let maglev = if svc.flags & SVC_MAGLEV != 0 {
        hash()
    } else {
        None
    };
    let index = match maglev {
        Some(h) => h % svc.count,
        // SAFETY: a helper without arguments.
        None => (unsafe { bpf_get_prandom_u32() }) % svc.count,
    };
    let bkey = BackendKey {
        slot: svc.slot,
        index,
    };
    // SAFETY: the value is copied out at once.
    let backend = (unsafe { KL_BACKENDS.get(&bkey) }).copied()?;
    if let Some((k, now)) = akey {
        let _ = KL_AFFINITY.insert(
            &k,
            &AffinityValue {
                backend,
                _pad: 0,
                last_ns: now,
            },
            0,
        );
    }
    Some(backend)
}

/// Whether `backend` is still one of the service's backends (its current slot).
fn in_slot(svc: &ServiceValue, backend: &Backend) -> bool {
    let k = SlotMember {
        slot: svc.slot,
        backend: *backend,
    };
    // SAFETY: only the presence is read.
    unsafe { KL_SLOT_MEMBERS.get(&k) }.is_some()
}

/// One more connect (or datagram, or outside flow) sent to `backend`.
fn count(backend: &Backend) {
    match KL_BACKEND_STATS.get_ptr_mut(backend) {
        // SAFETY: this CPU's slot of the entry, valid for the program run; no other CPU
        // writes it.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = KL_BACKEND_STATS.insert(backend, &1, 0);
        }
    }
}

/// The reverse-translation key of this socket and a backend.
#[inline(always)]
fn rev_key(ctx: &SockAddrContext, backend: Addr, port: u16) -> SockRevKey {
    SockRevKey {
        // SAFETY: the context pointer is the program's own bpf_sock_addr.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        backend,
        port,
        _pad: 0,
        _pad2: 0,
    }
}

/// Shows the Service again where the call's address is a backend this socket was
/// sent to in its name.
fn reverse<const IS_V6: bool>(ctx: &SockAddrContext) {
    // SAFETY: valid for the program run; user_port is readable and writable in
    // recvmsg and getpeername programs.
    let port = unsafe { (*ctx.sock_addr).user_port as u16 };
    let key = rev_key(ctx, addr_of::<IS_V6>(ctx), port);
    // SAFETY: the value is copied out at once.
    let Some(rev) = (unsafe { KL_SOCK_REVNAT.get(&key) }).copied() else {
        return;
    };
    if set_addr::<IS_V6>(ctx, &rev.service) {
        // SAFETY: as above.
        unsafe { (*ctx.sock_addr).user_port = u32::from(rev.port) };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

//! Packet-level load-balancing for traffic that reaches the node from outside: NodePorts
//! on node addresses, external IPs and load-balancer IPs. `kl_lb_ingress` runs on the
//! underlay interface (and on the overlay device, where replies of SNAT'd flows come
//! back); `kl_lb_egress` on the underlay interface.
//!
//! A new client flow gets a backend (as the socket hooks choose one) and a translation
//! remembered in `KL_NAT_FWD`; its way back in `KL_NAT_REV`. A flow to a backend on
//! another node under `externalTrafficPolicy: Cluster` is SNAT'd to the address the
//! node routes to that backend from and sent straight out of the interface the FIB
//! names; its replies come back to that address and are sent to the client from the
//! frontend. A flow to a local backend keeps the client's address: the node routes it
//! to the pod, and the pod's replies are shown as the frontend on their way out.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SRC, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT,
        bpf_fib_lookup,
    },
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_get_prandom_u32, bpf_redirect, bpf_redirect_neigh,
    },
    macros::{classifier, map},
    maps::{LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::TcContext,
};
use kernlet_ebpf_common::{
    Addr, BACKEND_LOCAL, Backend, BackendKey, FlowKey, FwdNat, MAX_FLOWS, MAX_SOURCE_RANGES,
    RevNat, SNAT_PORT_COUNT, SNAT_PORT_MIN, SOURCE_RANGE_SERVICE_BITS, SVC_EXTERNAL, SVC_LOCAL,
    SVC_MAGLEV, SVC_SOURCE_RANGES, ServiceKey, ServiceValue, SourceRangeKey, ipv4_mapped,
    mapped_ipv4,
};

use crate::{KL_BACKENDS, KL_SERVICES, choose, count, in_slot};

#[map(name = "KL_NAT_FWD")]
static KL_NAT_FWD: LruHashMap<FlowKey, FwdNat> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

#[map(name = "KL_NAT_REV")]
static KL_NAT_REV: LruHashMap<FlowKey, RevNat> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

#[map(name = "KL_SOURCE_RANGES")]
static KL_SOURCE_RANGES: LpmTrie<SourceRangeKey, u8> =
    LpmTrie::with_max_entries(MAX_SOURCE_RANGES, 0);

/// Room for the big locals of one packet's run: a whole BPF call chain shares one
/// 512-byte stack, which 16-byte addresses in 40-byte keys outgrow. Per CPU, and a tc
/// program runs to its end on its CPU before the next one there starts.
#[repr(C)]
struct Scratch {
    /// The packet's flow.
    flow: FlowKey,
    /// A new flow's way back.
    back: FlowKey,
    rev: RevNat,
    nat: FwdNat,
    route: Route,
    range: Key<SourceRangeKey>,
}

#[map(name = "KL_TC_SCRATCH")]
static KL_TC_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

fn scratch() -> Option<&'static mut Scratch> {
    let at = KL_TC_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's entry, valid while the program runs; no other run uses it
    // until this one ends (see Scratch).
    Some(unsafe { &mut *at })
}

/// tcx: hand the packet to the next program (or the stack when none is left).
const TCX_NEXT: i32 = -1;
const PASS: i32 = TC_ACT_OK as i32;
const DROP: i32 = TC_ACT_SHOT as i32;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IP_CSUM: usize = ETH_HLEN + 10;
const IP_SRC: usize = ETH_HLEN + 12;
const IP_DST: usize = ETH_HLEN + 16;
const IP6_NEXT: usize = ETH_HLEN + 6;
const IP6_SRC: usize = ETH_HLEN + 8;
const IP6_DST: usize = ETH_HLEN + 24;
const IP6_HLEN: usize = 40;
const TCP: u8 = 6;
const UDP: u8 = 17;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// Affinity for outside clients is per client address; the bit keeps these keys apart
/// from network namespace cookies (small counters).
const ADDRESS_CLIENT: u64 = 1 << 63;

/// The IPv4 or IPv6 TCP or UDP packet a program looks at, its addresses as the maps
/// hold them (IPv4 as `::ffff:a.b.c.d`).
struct Packet {
    v6: bool,
    /// Offset of the TCP/UDP header.
    l4: usize,
    proto: u8,
    src: Addr,
    dst: Addr,
    sport: u16,
    dport: u16,
    /// A TCP SYN without ACK: a connection starting.
    syn: bool,
}

impl Packet {
    fn flow(&self) -> FlowKey {
        FlowKey {
            src: self.src,
            dst: self.dst,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }

    /// The flow's 5-tuple hashed the same on every node (Maglev).
    fn hash(&self) -> u32 {
        let fold = |a: &Addr| (u64::from(a[0] ^ a[2]) << 32) | u64::from(a[1] ^ a[3]);
        let mut z = fold(&self.src).rotate_left(17) ^ fold(&self.dst);
        z ^= (u64::from(self.sport) << 40) | (u64::from(self.dport) << 24) | u64::from(self.proto);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        z as u32
    }

    fn csum(&self) -> usize {
        if self.proto == TCP {
            self.l4 + 16
        } else {
            self.l4 + 6
        }
    }
}

fn parse(ctx: &TcContext) -> Option<Packet> {
    let ethertype: u16 = ctx.load(12).ok()?;
    match u16::from_be(ethertype) {
        ETH_P_IP => parse_v4(ctx),
        ETH_P_IPV6 => parse_v6(ctx),
        _ => None,
    }
}

fn parse_v4(ctx: &TcContext) -> Option<Packet> {
    let vihl: u8 = ctx.load(ETH_HLEN).ok()?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    // Fragments after the first carry no ports: left alone.
    let frag: u16 = ctx.load(ETH_HLEN + 6).ok()?;
    if u16::from_be(frag) & 0x1fff != 0 {
        return None;
    }
    let proto: u8 = ctx.load(ETH_HLEN + 9).ok()?;
    if proto != TCP && proto != UDP {
        return None;
    }
    let src = ipv4_mapped(ctx.load(IP_SRC).ok()?);
    let dst = ipv4_mapped(ctx.load(IP_DST).ok()?);
    with_ports(ctx, false, ETH_HLEN + ihl, proto, src, dst)
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The packet whose TCP/UDP header is at `l4`, with its ports and whether it is a SYN.
#[inline(always)]
fn with_ports(
    ctx: &TcContext,
    v6: bool,
    l4: usize,
    proto: u8,
    src: Addr,
    dst: Addr,
) -> Option<Packet> {
    let syn = proto == TCP
        && ctx
            .load::<u8>(l4 + 13)
            .is_ok_and(|f| f & TCP_SYN != 0 && f & TCP_ACK == 0);
    Some(Packet {
        v6,
        l4,
        proto,
        src,
        dst,
        sport: ctx.load(l4).ok()?,
        dport: ctx.load(l4 + 2).ok()?,
        syn,
    })
}

/// An IPv6 packet whose next header is TCP or UDP; one with extension headers (a
/// fragment among them) is left alone.
fn parse_v6(ctx: &TcContext) -> Option<Packet> {
    let proto: u8 = ctx.load(IP6_NEXT).ok()?;
    if proto != TCP && proto != UDP {
        return None;
    }
    let src = ctx.load(IP6_SRC).ok()?;
    let dst = ctx.load(IP6_DST).ok()?;
    with_ports(ctx, true, ETH_HLEN + IP6_HLEN, proto, src, dst)
}

/// Rewrites the source (`src`) or destination address and port of `p`, with the
/// checksums (IPv4's header checksum; the TCP/UDP one, whose pseudo-header covers the
/// addresses). `None` when a helper failed or the address is of the other family.
fn rewrite(ctx: &TcContext, p: &Packet, src: bool, addr: &Addr, port: u16) -> Option<()> {
    let (old_addr, old_port, port_at) = if src {
        (&p.src, p.sport, p.l4)
    } else {
        (&p.dst, p.dport, p.l4 + 2)
    };
    let mangled = if p.proto == UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let pseudo = u64::from(BPF_F_PSEUDO_HDR) | mangled | 4;
    if old_addr != addr {
        if p.v6 {
            ctx.store(if src { IP6_SRC } else { IP6_DST }, addr, 0)
                .ok()?;
            for (old, new) in old_addr.iter().zip(addr.iter()) {
                if old != new {
                    ctx.l4_csum_replace(p.csum(), u64::from(*old), u64::from(*new), pseudo)
                        .ok()?;
                }
            }
        } else {
            let old = old_addr[3];
            let new = mapped_ipv4(addr)?;
            ctx.store(if src { IP_SRC } else { IP_DST }, &new, 0).ok()?;
            ctx.l3_csum_replace(IP_CSUM, u64::from(old), u64::from(new), 4)
                .ok()?;
            ctx.l4_csum_replace(p.csum(), u64::from(old), u64::from(new), pseudo)
                .ok()?;
        }
    }
    if old_port != port {
        ctx.store(port_at, &port, 0).ok()?;
        ctx.l4_csum_replace(p.csum(), u64::from(old_port), u64::from(port), mangled | 2)
            .ok()?;
    }
    Some(())
}

/// Where the node's FIB sends a packet to `dst`, and the source address it would use.
#[derive(Default)]
struct Route {
    ifindex: u32,
    src: Addr,
    /// Whether the neighbour is known (`dmac`, `smac` filled).
    known: bool,
    dmac: [u8; 6],
    smac: [u8; 6],
}

// Not inlined, here and below: the programs' locals (16-byte addresses in 40-byte keys)
// would not fit one 512-byte stack frame; each function gets its own. Results go
// through a pointer, the return value is a scalar: a BPF function may not hand its
// caller a pointer into its own stack, which returning a struct can leave in R0.
#[inline(never)]
fn route(ctx: &TcContext, v6: bool, dst: &Addr, out: &mut Route) -> bool {
    // SAFETY: an all-zero bpf_fib_lookup is a valid request before the fields are set.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    if v6 {
        params.family = AF_INET6;
        params.__bindgen_anon_4.ipv6_dst = *dst;
    } else {
        params.family = AF_INET;
        params.__bindgen_anon_4.ipv4_dst = dst[3];
    }
    // SAFETY: the context's skb pointer is valid for the program run.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: params is a local of the size passed; the skb is the program's own.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_SRC,
        )
    };
    // SAFETY: the helper filled the source (BPF_FIB_LOOKUP_SRC) on success and
    // no-neigh, in the field of the family asked for.
    let src = unsafe {
        if v6 {
            params.__bindgen_anon_3.ipv6_src
        } else {
            ipv4_mapped(params.__bindgen_anon_3.ipv4_src)
        }
    };
    let known = match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => true,
        BPF_FIB_LKUP_RET_NO_NEIGH => false,
        _ => return false,
    };
    out.ifindex = params.ifindex;
    out.src = src;
    out.known = known;
    out.dmac = params.dmac;
    out.smac = params.smac;
    true
}

/// Sends the packet out of the route's interface (resolving the neighbour when the FIB
/// did not know it).
fn send(ctx: &TcContext, r: &Route) -> i32 {
    if !r.known {
        // SAFETY: no parameters: the kernel looks up the next hop itself.
        return unsafe { bpf_redirect_neigh(r.ifindex, core::ptr::null_mut(), 0, 0) as i32 };
    }
    if ctx.store(0, &r.dmac, 0).is_err() || ctx.store(6, &r.smac, 0).is_err() {
        return DROP;
    }
    // SAFETY: plain helper call with an interface index from the FIB.
    unsafe { bpf_redirect(r.ifindex, 0) as i32 }
}

/// Outside traffic to a frontend, and replies of SNAT'd flows.
#[classifier]
pub fn kl_lb_ingress(ctx: TcContext) -> i32 {
    ingress(&ctx).unwrap_or(TCX_NEXT)
}

/// Replies of local backends to outside clients leave as the frontend.
#[classifier]
pub fn kl_lb_egress(ctx: TcContext) -> i32 {
    egress(&ctx).unwrap_or(TCX_NEXT)
}

fn ingress(ctx: &TcContext) -> Option<i32> {
    let p = parse(ctx)?;
    let sc = scratch()?;
    sc.flow = p.flow();
    // SAFETY: the value is copied out at once; map values are plain data.
    if let Some(rev) = unsafe { KL_NAT_REV.get(&sc.flow) } {
        sc.rev = *rev;
    } else {
        sc.rev.snat = 0;
    }
    if sc.rev.snat != 0 {
        if !route(ctx, p.v6, &sc.rev.client_addr, &mut sc.route) {
            return Some(DROP);
        }
        // A packet the helpers could not rewrite whole is not let through half-done.
        let rev = &sc.rev;
        let rewritten = rewrite(ctx, &p, true, &rev.frontend_addr, rev.frontend_port)
            .and_then(|()| rewrite(ctx, &p, false, &rev.client_addr, rev.client_port));
        return Some(if rewritten.is_some() {
            send(ctx, &sc.route)
        } else {
            DROP
        });
    }
    // A flow keeps its backend for its life (user space drops the translations of
    // UDP backends that are gone). A TCP SYN starts a connection even on a tuple seen
    // before (a client port used again): it is admitted afresh (the frontend still
    // there, its source ranges), and keeps its backend only while that still serves
    // the frontend (so a retransmitted SYN stays where the first went).
    // SAFETY: as above.
    let known = match unsafe { KL_NAT_FWD.get(&sc.flow) } {
        Some(nat) => {
            sc.nat = *nat;
            true
        }
        None => false,
    };
    if !known || p.syn {
        match new_flow(ctx, &p, sc, known) {
            NewFlow::Translated => {}
            NewFlow::NotAFrontend => return None,
            NewFlow::Refused => return Some(DROP),
        }
    }
    let nat = &sc.nat;
    if rewrite(ctx, &p, false, &nat.backend.addr, nat.backend.port).is_none() {
        return Some(DROP);
    }
    if nat.snat == 0 {
        // A local backend: the node routes the packet to the pod.
        return Some(PASS);
    }
    if rewrite(ctx, &p, true, &nat.snat_addr, nat.snat_port).is_none() {
        return Some(DROP);
    }
    Some(if route(ctx, p.v6, &sc.nat.backend.addr, &mut sc.route) {
        send(ctx, &sc.route)
    } else {
        DROP
    })
}

/// Whether `backend` is still one of the frontend's: the entry the flow's hash picks
/// (Maglev), or any entry of its slot.
fn still_serves(svc: &ServiceValue, backend: &Backend, hash: u32) -> bool {
    if svc.flags & SVC_MAGLEV != 0 {
        let k = BackendKey {
            slot: svc.slot,
            index: hash % svc.count,
        };
        // SAFETY: the value is only compared.
        return unsafe { KL_BACKENDS.get(&k) }
            .is_some_and(|b| b.addr == backend.addr && b.port == backend.port);
    }
    in_slot(svc, backend)
}

/// What became of a packet starting a flow (one not seen before, or a SYN).
enum NewFlow {
    /// A frontend's: the translation is written.
    Translated,
    /// For no outside frontend: passed on untouched.
    NotAFrontend,
    /// Must not pass: outside the source ranges, no backend, or no room to remember it.
    Refused,
}

/// The translation of a client flow not seen before, written to `sc.nat` (`sc.flow`
/// is the packet's). With `known`, `sc.nat` is the tuple's translation so far: kept
/// when its backend still serves the frontend.
#[inline(never)]
fn new_flow(ctx: &TcContext, p: &Packet, sc: &mut Scratch, known: bool) -> NewFlow {
    let key = ServiceKey {
        addr: p.dst,
        port: p.dport,
        proto: p.proto,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once.
    let Some(svc) = unsafe { KL_SERVICES.get(&key) }.copied() else {
        return NewFlow::NotAFrontend;
    };
    if svc.flags & SVC_EXTERNAL == 0 {
        return NewFlow::NotAFrontend;
    }
    if svc.flags & SVC_SOURCE_RANGES != 0 {
        sc.range = Key::new(
            SOURCE_RANGE_SERVICE_BITS + 128,
            SourceRangeKey {
                service: key,
                client: p.src,
            },
        );
        if KL_SOURCE_RANGES.get(&sc.range).is_none() {
            return NewFlow::Refused;
        }
    }
    if svc.count == 0 {
        return NewFlow::Refused;
    }
    if known && still_serves(&svc, &sc.nat.backend, p.hash()) {
        return NewFlow::Translated;
    }
    let client = || {
        let s = &p.src;
        ADDRESS_CLIENT | (u64::from(s[0] ^ s[1] ^ s[2]) << 32) | u64::from(s[3])
    };
    let Some(backend) = choose(client, || Some(p.hash()), &key, &svc) else {
        return NewFlow::Refused;
    };
    count(&backend);
    sc.rev = RevNat {
        frontend_addr: p.dst,
        client_addr: p.src,
        frontend_port: p.dport,
        client_port: p.sport,
        snat: 0,
    };
    sc.back = FlowKey {
        src: backend.addr,
        dst: p.src,
        sport: backend.port,
        dport: p.sport,
        proto: p.proto,
        _pad: [0; 3],
    };
    sc.nat = FwdNat {
        backend,
        ..FwdNat::default()
    };
    let snat = backend.flags & BACKEND_LOCAL == 0 && svc.flags & SVC_LOCAL == 0;
    if snat {
        if !route(ctx, p.v6, &backend.addr, &mut sc.route) {
            return NewFlow::Refused;
        }
        sc.rev.snat = 1;
        sc.back.dst = sc.route.src;
        // The client's own port when free on that address, else one of the SNAT range.
        let mut port = p.sport;
        let mut tries = 0;
        loop {
            sc.back.dport = port;
            if KL_NAT_REV
                .insert(&sc.back, &sc.rev, u64::from(BPF_NOEXIST))
                .is_ok()
            {
                break;
            }
            tries += 1;
            if tries > 8 {
                return NewFlow::Refused;
            }
            // SAFETY: a helper without arguments.
            let r = unsafe { bpf_get_prandom_u32() } % u32::from(SNAT_PORT_COUNT);
            port = (SNAT_PORT_MIN + r as u16).to_be();
        }
        sc.nat.snat_addr = sc.route.src;
        sc.nat.snat_port = port;
        sc.nat.snat = 1;
    } else if KL_NAT_REV.insert(&sc.back, &sc.rev, 0).is_err() {
        return NewFlow::Refused;
    }
    if KL_NAT_FWD.insert(&sc.flow, &sc.nat, 0).is_err() {
        return NewFlow::Refused;
    }
    NewFlow::Translated
}

fn egress(ctx: &TcContext) -> Option<i32> {
    let p = parse(ctx)?;
    // SAFETY: the value is copied out at once.
    let rev = unsafe { KL_NAT_REV.get(&p.flow()) }.copied()?;
    if rev.snat != 0 {
        return None;
    }
    Some(
        match rewrite(ctx, &p, true, &rev.frontend_addr, rev.frontend_port) {
            Some(()) => TCX_NEXT,
            None => DROP,
        },
    )
}

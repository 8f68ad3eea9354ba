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
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SRC, BPF_NOEXIST,
        TC_ACT_OK, TC_ACT_SHOT, bpf_fib_lookup,
    },
    helpers::{
        bpf_csum_diff, bpf_fib_lookup as fib_lookup, bpf_get_prandom_u32, bpf_ktime_get_ns,
        bpf_redirect, bpf_redirect_neigh, bpf_skb_change_tail,
    },
    macros::{classifier, map},
    maps::{LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::TcContext,
};
use kernlet_ebpf_common::{
    Addr, BACKEND_LOCAL, Backend, BackendKey, FLOW_CLOSING, FLOW_ESTABLISHED, FLOW_NEW, FlowKey,
    FwdNat, MAX_FLOWS, MAX_NEW_FLOWS, MAX_SOURCE_RANGES, RevNat, SNAT_PORT_COUNT, SNAT_PORT_MIN,
    SOURCE_RANGE_SERVICE_BITS, SVC_EXTERNAL, SVC_LOCAL, SVC_MAGLEV, SVC_SOURCE_RANGES, ServiceKey,
    ServiceValue, SourceRangeKey, flow_timeout_ns, ipv4_mapped, mapped_ipv4,
};

use crate::{KL_BACKENDS, KL_SERVICES, choose, count, in_slot};

#[map(name = "KL_NAT_FWD")]
static KL_NAT_FWD: LruHashMap<FlowKey, FwdNat> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

#[map(name = "KL_NAT_REV")]
static KL_NAT_REV: LruHashMap<FlowKey, RevNat> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

// Flows not established yet, apart: a flood of them evicts only its own kind.
#[map(name = "KL_NAT_FWD_NEW")]
static KL_NAT_FWD_NEW: LruHashMap<FlowKey, FwdNat> = LruHashMap::with_max_entries(MAX_NEW_FLOWS, 0);

#[map(name = "KL_NAT_REV_NEW")]
static KL_NAT_REV_NEW: LruHashMap<FlowKey, RevNat> = LruHashMap::with_max_entries(MAX_NEW_FLOWS, 0);

#[map(name = "KL_SOURCE_RANGES")]
static KL_SOURCE_RANGES: LpmTrie<SourceRangeKey, u8> =
    LpmTrie::with_max_entries(MAX_SOURCE_RANGES, 0);

/// An IPv4 datagram cut in fragments, as its fragments carry it.
#[repr(C)]
#[derive(Clone, Copy)]
struct FragKey {
    src: Addr,
    dst: Addr,
    id: u16,
    proto: u8,
    _pad: u8,
}

/// How a datagram's first fragment was translated: its new addresses, and whether it
/// was sent on by the program (else passed to the stack or the next program).
#[repr(C)]
#[derive(Clone, Copy)]
struct FragNat {
    src: Addr,
    dst: Addr,
    redirect: u32,
}

/// Fragments after the first carry no ports: they are translated as the first was,
/// found by (addresses, identification, protocol). A later fragment that arrives
/// before its first is not translated.
#[map(name = "KL_FRAGS")]
static KL_FRAGS: LruHashMap<FragKey, FragNat> = LruHashMap::with_max_entries(8192, 0);

/// An ICMP error (destination unreachable — "fragmentation needed" among them —,
/// time exceeded, parameter problem; for IPv6 also "packet too big") about a TCP or UDP
/// packet: offsets in the packet and the quoted packet's addresses and ports (as the
/// maps hold them).
#[derive(Clone, Copy)]
struct IcmpError {
    v6: bool,
    /// The outer source address.
    src: Addr,
    /// Offsets of the ICMP checksum, of the quoted IP header, of its addresses and of
    /// its TCP/UDP header.
    csum: usize,
    inner: usize,
    isrc_at: usize,
    idst_at: usize,
    il4: usize,
    /// The quoted packet's addresses, ports and protocol.
    isrc: Addr,
    idst: Addr,
    isport: u16,
    idport: u16,
    iproto: u8,
}

/// Room for the big locals of one packet's run: a whole BPF call chain shares one
/// 512-byte stack, which 16-byte addresses in 40-byte keys outgrow. Per CPU, and a tc
/// program runs to its end on its CPU before the next one there starts.
#[repr(C)]
struct Scratch {
    /// The packet's flow.
    flow: FlowKey,
    /// A new flow's way back (or the packet's flow, for a reply).
    back: FlowKey,
    /// The client flow of a reply.
    fwd: FlowKey,
    /// A fragmented datagram, and how its first fragment was translated.
    frag_key: FragKey,
    frag: FragNat,
    /// An ICMP error and the packet it is about.
    icmp: IcmpError,
    /// A "fragmentation needed" being built: IPv4 header, ICMP header, the quoted
    /// IPv4 header and 8 bytes of the packet.
    reply: [u8; FRAG_NEEDED_LEN],
    /// A "packet too big" being built: IPv6 header, ICMPv6 header, the quoted IPv6
    /// header and 8 bytes of the packet.
    reply6: [u8; PACKET_TOO_BIG_LEN],
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
    /// The TCP flags (0 for UDP).
    flags: u8,
    /// `FRAG_*`: an IPv4 fragment, and its datagram's identification.
    frag: u8,
    id: u16,
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

#[map(name = "KL_TC_PACKET")]
static KL_TC_PACKET: PerCpuArray<Packet> = PerCpuArray::with_max_entries(1, 0);

/// The packet, parsed into this CPU's slot (kept off the programs' stack, as
/// [`Scratch`]).
fn parse(ctx: &TcContext) -> Option<&'static Packet> {
    let at = KL_TC_PACKET.get_ptr_mut(0)?;
    // SAFETY: this CPU's entry, valid while the program runs; no other run uses it
    // until this one ends (see Scratch).
    let out = unsafe { &mut *at };
    let ethertype: u16 = ctx.load(12).ok()?;
    let parsed = match u16::from_be(ethertype) {
        ETH_P_IP => parse_v4(ctx, out),
        ETH_P_IPV6 => parse_v6(ctx, out),
        _ => None,
    };
    parsed.map(|()| &*out)
}

fn parse_v4(ctx: &TcContext, out: &mut Packet) -> Option<()> {
    let vihl: u8 = ctx.load(ETH_HLEN).ok()?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    let proto: u8 = ctx.load(ETH_HLEN + 9).ok()?;
    if proto != TCP && proto != UDP {
        return None;
    }
    let src = ipv4_mapped(ctx.load(IP_SRC).ok()?);
    let dst = ipv4_mapped(ctx.load(IP_DST).ok()?);
    let frag = u16::from_be(ctx.load(ETH_HLEN + 6).ok()?);
    let id: u16 = ctx.load(ETH_HLEN + 4).ok()?;
    if frag & IP_OFFSET != 0 {
        // A fragment after the first: no ports; translated as its first was.
        out.v6 = false;
        out.l4 = 0;
        out.proto = proto;
        out.src = src;
        out.dst = dst;
        out.sport = 0;
        out.dport = 0;
        out.syn = false;
        out.flags = 0;
        out.frag = FRAG_LATER;
        out.id = id;
        return Some(());
    }
    with_ports(ctx, false, ETH_HLEN + ihl, proto, src, dst, out)?;
    if frag & IP_MF != 0 {
        out.frag = FRAG_FIRST;
        out.id = id;
    }
    Some(())
}

/// The IPv4 fragment offset and more-fragments bits.
const IP_OFFSET: u16 = 0x1fff;
const IP_MF: u16 = 0x2000;
const IP_DF: u16 = 0x4000;
/// [`Packet::frag`]: not a fragment, the first of several, a later one.
const FRAG_NONE: u8 = 0;
const FRAG_FIRST: u8 = 1;
const FRAG_LATER: u8 = 2;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// A flow's `seen` is written at most this often.
const SEEN_GRAIN_NS: u64 = 1_000_000_000;

/// The packet whose TCP/UDP header is at `l4`, with its ports and whether it is a SYN.
#[inline(always)]
fn with_ports(
    ctx: &TcContext,
    v6: bool,
    l4: usize,
    proto: u8,
    src: Addr,
    dst: Addr,
    out: &mut Packet,
) -> Option<()> {
    let flags = if proto == TCP {
        ctx.load::<u8>(l4 + 13).unwrap_or(0)
    } else {
        0
    };
    out.sport = ctx.load(l4).ok()?;
    out.dport = ctx.load(l4 + 2).ok()?;
    out.v6 = v6;
    out.l4 = l4;
    out.proto = proto;
    out.src = src;
    out.dst = dst;
    out.syn = flags & TCP_SYN != 0 && flags & TCP_ACK == 0;
    out.flags = flags;
    out.frag = FRAG_NONE;
    out.id = 0;
    Some(())
}

/// An IPv6 packet whose next header is TCP or UDP; one with extension headers (a
/// fragment among them) is left alone.
fn parse_v6(ctx: &TcContext, out: &mut Packet) -> Option<()> {
    let proto: u8 = ctx.load(IP6_NEXT).ok()?;
    if proto != TCP && proto != UDP {
        return None;
    }
    let src = ctx.load(IP6_SRC).ok()?;
    let dst = ctx.load(IP6_DST).ok()?;
    with_ports(ctx, true, ETH_HLEN + IP6_HLEN, proto, src, dst, out)
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
            set_addr(
                ctx,
                if src { IP_SRC } else { IP_DST },
                IP_CSUM,
                old_addr,
                addr,
            )?;
            let (old, new) = (old_addr[3], mapped_ipv4(addr)?);
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
    /// The way's MTU when the packet is too big for it, else 0.
    mtu: u16,
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
    let (ifindex, gso_size) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).gso_size) };
    params.ifindex = ifindex;
    // The packet's length, so the lookup checks it against the route's MTU (an
    // IPv6 route's `mtu`, a learned path MTU), not only the device's. Not for a packet
    // the stack aggregated (GRO): its segments are checked against the device when
    // the length is left out.
    if gso_size == 0 {
        params.__bindgen_anon_1.tot_len = ctx.len().saturating_sub(ETH_HLEN as u32) as u16;
    }
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
    out.mtu = 0;
    let known = match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => true,
        BPF_FIB_LKUP_RET_NO_NEIGH => false,
        // Found, but the packet is bigger than the way's MTU (the rest is filled only
        // when the device said so: not used).
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            // SAFETY: the helper set the MTU for FRAG_NEEDED.
            out.mtu = unsafe { params.__bindgen_anon_1.mtu_result };
            true
        }
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
    // Too big for the way: the kernel would not fragment it after a redirect.
    if r.mtu != 0 {
        return DROP;
    }
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

/// Outside traffic to a frontend, and replies of SNAT'd flows (ICMP errors about them
/// too).
#[classifier]
pub fn kl_lb_ingress(ctx: TcContext) -> i32 {
    ingress(&ctx)
        .or_else(|| icmp_ingress(&ctx))
        .unwrap_or(TCX_NEXT)
}

/// Replies of local backends to outside clients leave as the frontend.
#[classifier]
pub fn kl_lb_egress(ctx: TcContext) -> i32 {
    egress(&ctx)
        .or_else(|| icmp_egress(&ctx))
        .unwrap_or(TCX_NEXT)
}

fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

fn ingress(ctx: &TcContext) -> Option<i32> {
    let p = parse(ctx)?;
    let sc = scratch()?;
    sc.flow = p.flow();
    if p.frag == FRAG_LATER {
        return Some(later_fragment(ctx, p, sc, PASS));
    }
    let now = now();
    if reply(p, sc, now) && sc.rev.snat != 0 {
        if !route(ctx, p.v6, &sc.rev.client_addr, &mut sc.route) {
            return Some(DROP);
        }
        // A packet the helpers could not rewrite whole is not let through half-done.
        let rev = &sc.rev;
        let rewritten = rewrite(ctx, p, true, &rev.frontend_addr, rev.frontend_port)
            .and_then(|()| rewrite(ctx, p, false, &rev.client_addr, rev.client_port));
        if rewritten.is_none() {
            return Some(DROP);
        }
        sc.frag.src = sc.rev.frontend_addr;
        sc.frag.dst = sc.rev.client_addr;
        sc.frag.redirect = 1;
        remember_first(p, sc);
        return Some(send(ctx, &sc.route));
    }
    // A flow keeps its backend for its life (user space drops the translations of
    // UDP backends that are gone). A TCP SYN starts a connection even on a tuple seen
    // before (a client port used again): it is admitted afresh (the frontend still
    // there, its source ranges), and keeps its backend only while that still serves
    // the frontend (so a retransmitted SYN stays where the first went).
    let known = client_flow(p, sc, now);
    if known == Known::No || p.syn {
        match new_flow(ctx, p, sc, known, now) {
            NewFlow::Translated => {}
            NewFlow::NotAFrontend => return None,
            NewFlow::Refused => return Some(DROP),
        }
    } else if known == Known::New
        && p.proto == TCP
        && p.flags & (TCP_ACK | TCP_RST | TCP_SYN) == TCP_ACK
    {
        // The handshake's last step, once the backend answered the SYN: established.
        back_of(p, sc);
        // SAFETY: the value is only read.
        if unsafe { KL_NAT_REV_NEW.get(&sc.back) }.is_some_and(|r| r.replied != 0) {
            sc.fwd = sc.flow;
            promote(sc, now);
        }
    }
    if sc.nat.snat != 0 {
        if !route(ctx, p.v6, &sc.nat.backend.addr, &mut sc.route) {
            return Some(DROP);
        }
        if sc.route.mtu != 0 {
            // Too big for the way to the backend: a packet that may not be cut gets
            // "fragmentation needed", as a router would send (the kernel does not
            // fragment what the program sends on).
            let df = ctx
                .load::<u16>(ETH_HLEN + 6)
                .is_ok_and(|f| u16::from_be(f) & IP_DF != 0);
            let mtu = sc.route.mtu;
            return Some(if p.v6 {
                // IPv6 is never cut on the way: always "packet too big".
                packet_too_big(ctx, p, sc, mtu)
            } else if df {
                frag_needed(ctx, p, sc, mtu)
            } else {
                DROP
            });
        }
    }
    let nat = &sc.nat;
    if rewrite(ctx, p, false, &nat.backend.addr, nat.backend.port).is_none() {
        return Some(DROP);
    }
    sc.frag.dst = sc.nat.backend.addr;
    if sc.nat.snat == 0 {
        // A local backend: the node routes the packet to the pod.
        sc.frag.src = p.src;
        sc.frag.redirect = 0;
        remember_first(p, sc);
        return Some(PASS);
    }
    let nat = &sc.nat;
    if rewrite(ctx, p, true, &nat.snat_addr, nat.snat_port).is_none() {
        return Some(DROP);
    }
    sc.frag.src = sc.nat.snat_addr;
    sc.frag.redirect = 1;
    remember_first(p, sc);
    // The route was found above, before the packet was rewritten.
    Some(send(ctx, &sc.route))
}

const ICMP: u8 = 1;
const FRAG_NEEDED_LEN: usize = 20 + 8 + 28;

/// Turns the IPv4 packet `p` into the ICMP "fragmentation needed" (`mtu`) a router
/// would send its client, from the address the client sent it to, and sends it back
/// out of the interface it came in on: the client learns the path's MTU through the
/// NodePort (a packet the program sends on itself is never fragmented or answered by
/// the kernel).
#[inline(never)]
fn frag_needed(ctx: &TcContext, p: &Packet, sc: &mut Scratch, mtu: u16) -> i32 {
    // The quote: the packet's IPv4 header (no options) and 8 bytes of its payload.
    let Ok(quote) = ctx.load::<[u8; 28]>(ETH_HLEN) else {
        return DROP;
    };
    // No IPv4 options (the first byte: version 4, a 20-byte header).
    if quote[0] != 0x45 {
        return DROP;
    }
    sc.reply[28..].copy_from_slice(&quote);
    let (Some(from), Some(to)) = (mapped_ipv4(&p.dst), mapped_ipv4(&p.src)) else {
        return DROP;
    };
    let r = &mut sc.reply;
    r[..20].copy_from_slice(&[
        0x45,
        0,
        0,
        FRAG_NEEDED_LEN as u8,
        0,
        0,
        0,
        0,
        64,
        ICMP,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ]);
    r[12..16].copy_from_slice(&from.to_ne_bytes());
    r[16..20].copy_from_slice(&to.to_ne_bytes());
    r[20..28].copy_from_slice(&[3, 4, 0, 0, 0, 0, 0, 0]);
    r[26..28].copy_from_slice(&mtu.to_be_bytes());
    let ip = csum(&r[..20]);
    r[10..12].copy_from_slice(&ip.to_ne_bytes());
    let icmp = csum(&r[20..]);
    r[22..24].copy_from_slice(&icmp.to_ne_bytes());
    send_back(ctx, FRAG_NEEDED_LEN, &sc.reply)
}

const ICMP6: u8 = 58;
const PACKET_TOO_BIG_LEN: usize = 40 + 8 + 48;

/// The IPv6 counterpart of [`frag_needed`]: ICMPv6 "packet too big" (`mtu`) to the
/// client, from the address it sent to, quoting its packet's IPv6 header and 8 bytes.
#[inline(never)]
fn packet_too_big(ctx: &TcContext, p: &Packet, sc: &mut Scratch, mtu: u16) -> i32 {
    let Ok(quote) = ctx.load::<[u8; 48]>(ETH_HLEN) else {
        return DROP;
    };
    let r = &mut sc.reply6;
    r[48..].copy_from_slice(&quote);
    // First the checksum: over the pseudo-header (source, destination, the ICMPv6
    // length and next header as 32-bit words — here in the first 8 bytes, where the
    // IPv6 header's own go after) and the message.
    let len = (PACKET_TOO_BIG_LEN - 40) as u8;
    r[..8].copy_from_slice(&[0, 0, 0, len, 0, 0, 0, ICMP6]);
    for i in 0..4 {
        r[8 + 4 * i..12 + 4 * i].copy_from_slice(&p.dst[i].to_ne_bytes());
        r[24 + 4 * i..28 + 4 * i].copy_from_slice(&p.src[i].to_ne_bytes());
    }
    r[40..48].copy_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]);
    r[46..48].copy_from_slice(&mtu.to_be_bytes());
    let sum = csum(&r[..]);
    r[42..44].copy_from_slice(&sum.to_ne_bytes());
    r[..8].copy_from_slice(&[0x60, 0, 0, 0, 0, len, ICMP6, 64]);
    send_back(ctx, PACKET_TOO_BIG_LEN, &sc.reply6)
}

/// Replaces the packet past its Ethernet header with `reply` (`len` bytes) and sends
/// it back out of the interface it came in on, to the address it came from.
#[inline(always)]
fn send_back<T>(ctx: &TcContext, len: usize, reply: &T) -> i32 {
    // SAFETY: plain helper call on the program's own packet, shrinking it (the
    // Ethernet header stays).
    if unsafe { bpf_skb_change_tail(ctx.skb.skb as *mut _, (ETH_HLEN + len) as u32, 0) } != 0 {
        return DROP;
    }
    let (Ok(dmac), Ok(smac)) = (ctx.load::<[u8; 6]>(0), ctx.load::<[u8; 6]>(6)) else {
        return DROP;
    };
    if ctx.store(0, &smac, 0).is_err()
        || ctx.store(6, &dmac, 0).is_err()
        || ctx.store(ETH_HLEN, reply, 0).is_err()
    {
        return DROP;
    }
    // SAFETY: plain helper call with the packet's own interface.
    unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) as i32 }
}

/// The Internet checksum of `b` (a multiple of 4 bytes), in the byte order it is
/// stored in.
fn csum(b: &[u8]) -> u16 {
    // SAFETY: the helper reads `b.len()` bytes of `b` (scratch memory); nothing is
    // written.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            b.as_ptr() as *mut u32,
            b.len() as u32,
            0,
        )
    } as u64;
    let mut x = (sum & 0xffff_ffff) as u32 as u64;
    x = (x & 0xffff) + (x >> 16);
    x = (x & 0xffff) + (x >> 16);
    !(x as u16)
}

/// Parses an ICMP error into `sc.icmp`.
#[inline(never)]
fn parse_icmp(ctx: &TcContext, sc: &mut Scratch) -> Option<()> {
    let ethertype: u16 = ctx.load(12).ok()?;
    match u16::from_be(ethertype) {
        ETH_P_IP => parse_icmp4(ctx, sc),
        ETH_P_IPV6 => parse_icmp6(ctx, sc),
        _ => None,
    }
}

fn parse_icmp4(ctx: &TcContext, sc: &mut Scratch) -> Option<()> {
    let vihl: u8 = ctx.load(ETH_HLEN).ok()?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    let proto: u8 = ctx.load(ETH_HLEN + 9).ok()?;
    let frag = u16::from_be(ctx.load(ETH_HLEN + 6).ok()?);
    if vihl >> 4 != 4 || ihl < 20 || proto != ICMP || frag & IP_OFFSET != 0 {
        return None;
    }
    let icmp = ETH_HLEN + ihl;
    let kind: u8 = ctx.load(icmp).ok()?;
    if kind != 3 && kind != 11 && kind != 12 {
        return None;
    }
    let inner = icmp + 8;
    let ivihl: u8 = ctx.load(inner).ok()?;
    let iihl = usize::from(ivihl & 0x0f) * 4;
    let iproto: u8 = ctx.load(inner + 9).ok()?;
    if ivihl >> 4 != 4 || iihl < 20 || (iproto != TCP && iproto != UDP) {
        return None;
    }
    let e = &mut sc.icmp;
    e.v6 = false;
    e.src = ipv4_mapped(ctx.load(IP_SRC).ok()?);
    e.csum = icmp + 2;
    e.inner = inner;
    e.isrc_at = inner + 12;
    e.idst_at = inner + 16;
    e.il4 = inner + iihl;
    e.isrc = ipv4_mapped(ctx.load(inner + 12).ok()?);
    e.idst = ipv4_mapped(ctx.load(inner + 16).ok()?);
    e.isport = ctx.load(inner + iihl).ok()?;
    e.idport = ctx.load(inner + iihl + 2).ok()?;
    e.iproto = iproto;
    Some(())
}

/// An ICMPv6 error (no extension headers, outside or quoted).
fn parse_icmp6(ctx: &TcContext, sc: &mut Scratch) -> Option<()> {
    let next: u8 = ctx.load(IP6_NEXT).ok()?;
    if next != ICMP6 {
        return None;
    }
    let icmp = ETH_HLEN + IP6_HLEN;
    let kind: u8 = ctx.load(icmp).ok()?;
    if !(1..=4).contains(&kind) {
        return None;
    }
    let inner = icmp + 8;
    let iproto: u8 = ctx.load(inner + 6).ok()?;
    if iproto != TCP && iproto != UDP {
        return None;
    }
    let e = &mut sc.icmp;
    e.v6 = true;
    e.src = ctx.load(IP6_SRC).ok()?;
    e.csum = icmp + 2;
    e.inner = inner;
    e.isrc_at = inner + 8;
    e.idst_at = inner + 24;
    e.il4 = inner + IP6_HLEN;
    e.isrc = ctx.load(inner + 8).ok()?;
    e.idst = ctx.load(inner + 24).ok()?;
    e.isport = ctx.load(inner + IP6_HLEN).ok()?;
    e.idport = ctx.load(inner + IP6_HLEN + 2).ok()?;
    e.iproto = iproto;
    Some(())
}

/// Finds the flow an ICMP error quotes a packet of, by its way back (the quoted
/// packet's destination to its source), into `sc.rev`.
fn icmp_flow(sc: &mut Scratch) -> bool {
    let e = &sc.icmp;
    sc.back.src = e.idst;
    sc.back.dst = e.isrc;
    sc.back.sport = e.idport;
    sc.back.dport = e.isport;
    sc.back.proto = e.iproto;
    sc.back._pad = [0; 3];
    // SAFETY: the values are copied out at once.
    let found =
        unsafe { KL_NAT_REV.get(&sc.back) }.or_else(|| unsafe { KL_NAT_REV_NEW.get(&sc.back) });
    match found {
        Some(r) => {
            sc.rev = *r;
            true
        }
        None => false,
    }
}

/// Rewrites an IPv4 address at `at` whose header checksum is at `csum`.
fn set_addr(ctx: &TcContext, at: usize, csum: usize, old: &Addr, new: &Addr) -> Option<()> {
    let (old, new) = (old[3], mapped_ipv4(new)?);
    if old != new {
        ctx.store(at, &new, 0).ok()?;
        ctx.l3_csum_replace(csum, u64::from(old), u64::from(new), 4)
            .ok()?;
    }
    Some(())
}

/// Rewrites an address of an ICMP error `e` at `at`: IPv4 with the header checksum at
/// `csum4` (an outer one: the ICMP checksum does not cover it; a quoted one: the
/// quoted header's checksum changes with it and the ICMP checksum nets out); IPv6,
/// which has no header checksum, in the ICMPv6 checksum, through its pseudo-header for
/// the outer addresses (`outer`). Inlined: a BPF call takes at most five arguments.
#[inline(always)]
fn set_error_addr(
    ctx: &TcContext,
    e: &IcmpError,
    at: usize,
    csum4: usize,
    outer: bool,
    old: &Addr,
    new: &Addr,
) -> Option<()> {
    if !e.v6 {
        return set_addr(ctx, at, csum4, old, new);
    }
    if old == new {
        return Some(());
    }
    ctx.store(at, new, 0).ok()?;
    let flags = if outer {
        u64::from(BPF_F_PSEUDO_HDR)
    } else {
        0
    } | 4;
    for (o, n) in old.iter().zip(new.iter()) {
        if o != n {
            ctx.l4_csum_replace(e.csum, u64::from(*o), u64::from(*n), flags)
                .ok()?;
        }
    }
    Some(())
}

/// The outer addresses of an ICMP error (source, destination): IPv4's and their
/// header checksum, or IPv6's (whose checksum is the ICMPv6 one).
fn outer_at(e: &IcmpError) -> (usize, usize, usize) {
    if e.v6 {
        (IP6_SRC, IP6_DST, 0)
    } else {
        (IP_SRC, IP_DST, IP_CSUM)
    }
}

/// Rewrites a port of the quoted packet at `at` (the ICMP checksum at `csum` covers
/// it; the quoted header's own checksum, kept right by `set_addr`, nets out).
fn set_quoted_port(ctx: &TcContext, at: usize, csum: usize, old: u16, new: u16) -> Option<()> {
    if old != new {
        ctx.store(at, &new, 0).ok()?;
        ctx.l4_csum_replace(csum, u64::from(old), u64::from(new), 2)
            .ok()?;
    }
    Some(())
}

/// An ICMP error leaving for an outside client about a packet of its that a local
/// backend got (the node could not forward it to the pod — fragmentation needed —, or
/// the pod refused it): the quoted packet is shown as the client sent it, to the
/// frontend, and an error from the pod itself comes from the frontend.
#[inline(never)]
fn icmp_egress(ctx: &TcContext) -> Option<i32> {
    let sc = scratch()?;
    parse_icmp(ctx, sc)?;
    if !icmp_flow(sc) || sc.rev.snat != 0 {
        return None;
    }
    let (e, rev) = (&sc.icmp, &sc.rev);
    let (src_at, _, csum4) = outer_at(e);
    let icsum = e.inner + 10;
    let done = set_error_addr(ctx, e, e.idst_at, icsum, false, &e.idst, &rev.frontend_addr)
        .and_then(|()| set_quoted_port(ctx, e.il4 + 2, e.csum, e.idport, rev.frontend_port))
        .and_then(|()| match e.src == e.idst {
            true => set_error_addr(ctx, e, src_at, csum4, true, &e.src, &rev.frontend_addr),
            false => Some(()),
        });
    Some(if done.is_some() { TCX_NEXT } else { DROP })
}

/// An ICMP error coming back about a packet of a SNAT'd flow (a backend on another node
/// refused it, or something on the way could not forward it): sent on to the client as
/// an error about its own packet to the frontend. The quote shows client → frontend,
/// the error goes to the client, and one from the backend itself comes from the
/// frontend (as a reply of the flow would).
#[inline(never)]
fn icmp_ingress(ctx: &TcContext) -> Option<i32> {
    let sc = scratch()?;
    parse_icmp(ctx, sc)?;
    if !icmp_flow(sc) || sc.rev.snat == 0 {
        return None;
    }
    if !route(ctx, sc.icmp.v6, &sc.rev.client_addr, &mut sc.route) {
        return Some(DROP);
    }
    let (e, rev) = (&sc.icmp, &sc.rev);
    let (src_at, dst_at, csum4) = outer_at(e);
    let icsum = e.inner + 10;
    // The error was sent to the quoted packet's source: the SNAT address.
    let done = set_error_addr(ctx, e, e.isrc_at, icsum, false, &e.isrc, &rev.client_addr)
        .and_then(|()| set_quoted_port(ctx, e.il4, e.csum, e.isport, rev.client_port))
        .and_then(|()| set_error_addr(ctx, e, e.idst_at, icsum, false, &e.idst, &rev.frontend_addr))
        .and_then(|()| set_quoted_port(ctx, e.il4 + 2, e.csum, e.idport, rev.frontend_port))
        .and_then(|()| set_error_addr(ctx, e, dst_at, csum4, true, &e.isrc, &rev.client_addr))
        .and_then(|()| match e.src == e.idst {
            true => set_error_addr(ctx, e, src_at, csum4, true, &e.src, &rev.frontend_addr),
            false => Some(()),
        });
    if done.is_none() {
        return Some(DROP);
    }
    Some(send(ctx, &sc.route))
}

/// Remembers how the first fragment `p` of a datagram was translated (`sc.frag`), for
/// the fragments after it.
fn remember_first(p: &Packet, sc: &mut Scratch) {
    if p.frag != FRAG_FIRST {
        return;
    }
    frag_key(p, sc);
    let _ = KL_FRAGS.insert(&sc.frag_key, &sc.frag, 0);
}

fn frag_key(p: &Packet, sc: &mut Scratch) {
    sc.frag_key.src = p.src;
    sc.frag_key.dst = p.dst;
    sc.frag_key.id = p.id;
    sc.frag_key.proto = p.proto;
    sc.frag_key._pad = 0;
}

/// A fragment after the first of an IPv4 datagram: its addresses rewritten as its
/// first fragment's were (the IPv4 checksum with them; the TCP/UDP checksum is in the
/// first), then sent on as that one was (`pass` when the first was not redirected).
/// A fragment of no translated datagram goes on untouched.
#[inline(never)]
fn later_fragment(ctx: &TcContext, p: &Packet, sc: &mut Scratch, pass: i32) -> i32 {
    frag_key(p, sc);
    // SAFETY: the value is copied out at once.
    let Some(f) = (unsafe { KL_FRAGS.get(&sc.frag_key) }) else {
        return TCX_NEXT;
    };
    sc.frag = *f;
    // Remembered for IPv4 datagrams only: both addresses map back.
    let rewritten = set_addr(ctx, IP_SRC, IP_CSUM, &p.src, &sc.frag.src)
        .and_then(|()| set_addr(ctx, IP_DST, IP_CSUM, &p.dst, &sc.frag.dst));
    if rewritten.is_none() {
        return DROP;
    }
    if sc.frag.redirect == 0 {
        return pass;
    }
    if route(ctx, false, &sc.frag.dst, &mut sc.route) {
        send(ctx, &sc.route)
    } else {
        DROP
    }
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
fn new_flow(ctx: &TcContext, p: &Packet, sc: &mut Scratch, known: Known, now: u64) -> NewFlow {
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
    if known != Known::No {
        if still_serves(&svc, &sc.nat.backend, p.hash()) {
            return NewFlow::Translated;
        }
        // Its backend is gone: the tuple's old translation goes with it.
        forget(p, sc, known == Known::New);
    }
    let client = || {
        let s = &p.src;
        ADDRESS_CLIENT | (u64::from(s[0] ^ s[1] ^ s[2]) << 32) | u64::from(s[3])
    };
    let Some(backend) = choose(client, || Some(p.hash()), &key, &svc) else {
        return NewFlow::Refused;
    };
    count(&backend);
    // Field by field: a whole struct would be built on the stack first, which the
    // call chain's 512 bytes cannot spare.
    sc.rev.frontend_addr = p.dst;
    sc.rev.client_addr = p.src;
    sc.rev.frontend_port = p.dport;
    sc.rev.client_port = p.sport;
    sc.rev.snat = 0;
    sc.rev.replied = 0;
    sc.rev._pad = 0;
    sc.back.src = backend.addr;
    sc.back.dst = p.src;
    sc.back.sport = backend.port;
    sc.back.dport = p.sport;
    sc.back.proto = p.proto;
    sc.back._pad = [0; 3];
    sc.nat.backend = backend;
    sc.nat.snat_addr = [0; 4];
    sc.nat.snat_port = 0;
    sc.nat.snat = 0;
    sc.nat.state = FLOW_NEW;
    sc.nat.seen = now;
    let snat = backend.flags & BACKEND_LOCAL == 0 && svc.flags & SVC_LOCAL == 0;
    if snat {
        if !route(ctx, p.v6, &backend.addr, &mut sc.route) {
            return NewFlow::Refused;
        }
        sc.rev.snat = 1;
        sc.back.dst = sc.route.src;
        // The client's own port when free on that address (no flow, established or
        // new, uses it), else one of the SNAT range.
        let mut port = p.sport;
        let mut tries = 0;
        loop {
            sc.back.dport = port;
            // SAFETY: the value is only tested.
            if unsafe { KL_NAT_REV.get(&sc.back) }.is_none()
                && KL_NAT_REV_NEW
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
    } else if KL_NAT_REV_NEW.insert(&sc.back, &sc.rev, 0).is_err() {
        return NewFlow::Refused;
    }
    if KL_NAT_FWD_NEW.insert(&sc.flow, &sc.nat, 0).is_err() {
        return NewFlow::Refused;
    }
    NewFlow::Translated
}

/// Where a client packet's flow was found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Known {
    No,
    /// In the new-flow tables.
    New,
    Established,
}

/// The translation of the client flow `sc.flow` (into `sc.nat`), its state kept: a
/// FIN or RST closes it, its idle time is checked against its state's timeout (a flow
/// idle past it is forgotten: its next packet starts a new one).
#[inline(never)]
fn client_flow(p: &Packet, sc: &mut Scratch, now: u64) -> Known {
    if let Some(at) = KL_NAT_FWD.get_ptr_mut(&sc.flow) {
        // SAFETY: the entry's value, valid while the program runs; plain data.
        let n = unsafe { &mut *at };
        if now.saturating_sub(n.seen) > flow_timeout_ns(p.proto, n.state) {
            sc.nat = *n;
            forget(p, sc, false);
            return Known::No;
        }
        if p.flags & (TCP_FIN | TCP_RST) != 0 {
            n.state = FLOW_CLOSING;
            n.seen = now;
        } else if p.syn && n.state == FLOW_CLOSING {
            // The tuple used again by a new connection.
            n.state = FLOW_ESTABLISHED;
            n.seen = now;
        } else if now.saturating_sub(n.seen) > SEEN_GRAIN_NS {
            n.seen = now;
        }
        sc.nat = *n;
        return Known::Established;
    }
    // SAFETY: the value is copied out at once.
    if let Some(n) = unsafe { KL_NAT_FWD_NEW.get(&sc.flow) } {
        sc.nat = *n;
        if now.saturating_sub(sc.nat.seen) > flow_timeout_ns(p.proto, FLOW_NEW) {
            forget(p, sc, true);
            return Known::No;
        }
        return Known::New;
    }
    Known::No
}

/// The way back (`sc.back`) of the client packet `p` translated as `sc.nat`.
fn back_of(p: &Packet, sc: &mut Scratch) {
    let snat = sc.nat.snat != 0;
    sc.back = FlowKey {
        src: sc.nat.backend.addr,
        dst: if snat { sc.nat.snat_addr } else { p.src },
        sport: sc.nat.backend.port,
        dport: if snat { sc.nat.snat_port } else { p.sport },
        proto: p.proto,
        _pad: [0; 3],
    };
}

/// Drops the client flow `sc.flow` translated as `sc.nat`, both ways, from the
/// established tables or (`new`) the new-flow ones.
#[inline(never)]
fn forget(p: &Packet, sc: &mut Scratch, new: bool) {
    back_of(p, sc);
    if new {
        let _ = KL_NAT_FWD_NEW.remove(&sc.flow);
        let _ = KL_NAT_REV_NEW.remove(&sc.back);
    } else {
        let _ = KL_NAT_FWD.remove(&sc.flow);
        let _ = KL_NAT_REV.remove(&sc.back);
    }
}

/// Moves the flow `sc.fwd` (its way back `sc.back`) from the new-flow tables to the
/// established ones (`sc.nat` and `sc.rev` are its entries afterwards).
#[inline(never)]
fn promote(sc: &mut Scratch, now: u64) {
    // SAFETY: the values are copied out at once.
    if let Some(n) = unsafe { KL_NAT_FWD_NEW.get(&sc.fwd) } {
        sc.nat = *n;
        sc.nat.state = FLOW_ESTABLISHED;
        sc.nat.seen = now;
        if KL_NAT_FWD.insert(&sc.fwd, &sc.nat, 0).is_ok() {
            let _ = KL_NAT_FWD_NEW.remove(&sc.fwd);
        }
    }
    // SAFETY: as above.
    if let Some(r) = unsafe { KL_NAT_REV_NEW.get(&sc.back) } {
        sc.rev = *r;
        if KL_NAT_REV.insert(&sc.back, &sc.rev, 0).is_ok() {
            let _ = KL_NAT_REV_NEW.remove(&sc.back);
        }
    }
}

/// Looks the packet up as a backend's reply (`sc.rev` filled): in the established
/// tables, else in the new-flow ones, where a SYN-ACK marks the handshake answered
/// and any reply establishes a UDP flow.
#[inline(never)]
fn reply(p: &Packet, sc: &mut Scratch, now: u64) -> bool {
    // SAFETY: the value is copied out at once.
    if let Some(rev) = unsafe { KL_NAT_REV.get(&sc.flow) } {
        sc.rev = *rev;
        return true;
    }
    let Some(at) = KL_NAT_REV_NEW.get_ptr_mut(&sc.flow) else {
        return false;
    };
    // SAFETY: the entry's value, valid while the program runs; plain data.
    let rev = unsafe { &mut *at };
    if p.proto == TCP && p.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
        rev.replied = 1;
    }
    sc.rev = *rev;
    if p.proto == UDP {
        sc.fwd = FlowKey {
            src: sc.rev.client_addr,
            dst: sc.rev.frontend_addr,
            sport: sc.rev.client_port,
            dport: sc.rev.frontend_port,
            proto: p.proto,
            _pad: [0; 3],
        };
        sc.back = sc.flow;
        promote(sc, now);
    }
    true
}

fn egress(ctx: &TcContext) -> Option<i32> {
    let p = parse(ctx)?;
    let sc = scratch()?;
    if p.frag == FRAG_LATER {
        return Some(later_fragment(ctx, p, sc, TCX_NEXT));
    }
    sc.flow = p.flow();
    if !reply(p, sc, now()) || sc.rev.snat != 0 {
        return None;
    }
    let rev = &sc.rev;
    if rewrite(ctx, p, true, &rev.frontend_addr, rev.frontend_port).is_none() {
        return Some(DROP);
    }
    sc.frag.src = sc.rev.frontend_addr;
    sc.frag.dst = p.dst;
    sc.frag.redirect = 0;
    remember_first(p, sc);
    Some(TCX_NEXT)
}

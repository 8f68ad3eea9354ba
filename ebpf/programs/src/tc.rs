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
    maps::{LpmTrie, LruHashMap, lpm_trie::Key},
    programs::TcContext,
};
use kernlet_ebpf_common::{
    BACKEND_LOCAL, FlowKey, FwdNat, MAX_FLOWS, MAX_SOURCE_RANGES, RevNat, SNAT_PORT_COUNT,
    SNAT_PORT_MIN, SOURCE_RANGE_SERVICE_BITS, SVC_EXTERNAL, SVC_LOCAL, SVC_SOURCE_RANGES,
    ServiceKey, SourceRangeKey,
};

use crate::{KL_SERVICES, choose, count};

#[map(name = "KL_NAT_FWD")]
static KL_NAT_FWD: LruHashMap<FlowKey, FwdNat> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

#[map(name = "KL_NAT_REV")]
static KL_NAT_REV: LruHashMap<FlowKey, RevNat> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

#[map(name = "KL_SOURCE_RANGES")]
static KL_SOURCE_RANGES: LpmTrie<SourceRangeKey, u8> =
    LpmTrie::with_max_entries(MAX_SOURCE_RANGES, 0);

/// tcx: hand the packet to the next program (or the stack when none is left).
const TCX_NEXT: i32 = -1;
const PASS: i32 = TC_ACT_OK as i32;
const DROP: i32 = TC_ACT_SHOT as i32;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP_CSUM: usize = ETH_HLEN + 10;
const IP_SRC: usize = ETH_HLEN + 12;
const IP_DST: usize = ETH_HLEN + 16;
const TCP: u8 = 6;
const UDP: u8 = 17;
const AF_INET: u8 = 2;
/// Affinity for outside clients is per client address; the bit keeps these keys apart
/// from network namespace cookies (small counters).
const ADDRESS_CLIENT: u64 = 1 << 63;

/// The IPv4 TCP or UDP packet a program looks at.
struct Packet {
    /// Offset of the TCP/UDP header.
    l4: usize,
    proto: u8,
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
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
        let mut z = (u64::from(self.src) << 32) | u64::from(self.dst);
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
    if u16::from_be(ethertype) != ETH_P_IP {
        return None;
    }
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
    let l4 = ETH_HLEN + ihl;
    Some(Packet {
        l4,
        proto,
        src: ctx.load(IP_SRC).ok()?,
        dst: ctx.load(IP_DST).ok()?,
        sport: ctx.load(l4).ok()?,
        dport: ctx.load(l4 + 2).ok()?,
    })
}

/// Rewrites the source (`src`) or destination address and port of `p`, with the IP
/// and TCP/UDP checksums.
fn rewrite(ctx: &TcContext, p: &Packet, src: bool, addr: u32, port: u16) -> Option<()> {
    let (old_addr, old_port, addr_at, port_at) = if src {
        (p.src, p.sport, IP_SRC, p.l4)
    } else {
        (p.dst, p.dport, IP_DST, p.l4 + 2)
    };
    let mangled = if p.proto == UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    if old_addr != addr {
        ctx.store(addr_at, &addr, 0).ok()?;
        ctx.l3_csum_replace(IP_CSUM, u64::from(old_addr), u64::from(addr), 4)
            .ok()?;
        ctx.l4_csum_replace(
            p.csum(),
            u64::from(old_addr),
            u64::from(addr),
            u64::from(BPF_F_PSEUDO_HDR) | mangled | 4,
        )
        .ok()?;
    }
    if old_port != port {
        ctx.store(port_at, &port, 0).ok()?;
        ctx.l4_csum_replace(p.csum(), u64::from(old_port), u64::from(port), mangled | 2)
            .ok()?;
    }
    Some(())
}

/// Where the node's FIB sends a packet to `dst`, and the source address it would use.
struct Route {
    ifindex: u32,
    src: u32,
    /// Destination and source MAC when the neighbour is known.
    macs: Option<([u8; 6], [u8; 6])>,
}

fn route(ctx: &TcContext, dst: u32) -> Option<Route> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid request before the fields are set.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.__bindgen_anon_4.ipv4_dst = dst;
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
    // SAFETY: the helper filled ipv4_src (BPF_FIB_LOOKUP_SRC) on success and no-neigh.
    let src = unsafe { params.__bindgen_anon_3.ipv4_src };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => Some(Route {
            ifindex: params.ifindex,
            src,
            macs: Some((params.dmac, params.smac)),
        }),
        BPF_FIB_LKUP_RET_NO_NEIGH => Some(Route {
            ifindex: params.ifindex,
            src,
            macs: None,
        }),
        _ => None,
    }
}

/// Sends the packet out of the route's interface (resolving the neighbour when the FIB
/// did not know it).
fn send(ctx: &TcContext, r: &Route) -> i32 {
    match r.macs {
        Some((dmac, smac)) => {
            if ctx.store(0, &dmac, 0).is_err() || ctx.store(6, &smac, 0).is_err() {
                return DROP;
            }
            // SAFETY: plain helper call with an interface index from the FIB.
            unsafe { bpf_redirect(r.ifindex, 0) as i32 }
        }
        // SAFETY: no parameters: the kernel looks up the next hop itself.
        None => unsafe { bpf_redirect_neigh(r.ifindex, core::ptr::null_mut(), 0, 0) as i32 },
    }
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
    // SAFETY: the value is copied out at once; map values are plain data.
    if let Some(rev) = unsafe { KL_NAT_REV.get(&p.flow()) }.copied()
        && rev.snat != 0
    {
        let Some(r) = route(ctx, rev.client_addr) else {
            return Some(DROP);
        };
        // A packet the helpers could not rewrite whole is not let through half-done.
        let rewritten = rewrite(ctx, &p, true, rev.frontend_addr, rev.frontend_port)
            .and_then(|()| rewrite(ctx, &p, false, rev.client_addr, rev.client_port));
        return Some(if rewritten.is_some() {
            send(ctx, &r)
        } else {
            DROP
        });
    }
    // A flow keeps its backend for its life (user space drops the translations of
    // backends that are gone).
    // SAFETY: as above.
    let nat = match unsafe { KL_NAT_FWD.get(&p.flow()) }.copied() {
        Some(nat) => nat,
        None => match new_flow(ctx, &p)? {
            Ok(nat) => nat,
            Err(verdict) => return Some(verdict),
        },
    };
    if rewrite(ctx, &p, false, nat.backend.addr, nat.backend.port).is_none() {
        return Some(DROP);
    }
    if nat.snat_addr == 0 {
        // A local backend: the node routes the packet to the pod.
        return Some(PASS);
    }
    if rewrite(ctx, &p, true, nat.snat_addr, nat.snat_port).is_none() {
        return Some(DROP);
    }
    match route(ctx, nat.backend.addr) {
        Some(r) => Some(send(ctx, &r)),
        None => Some(DROP),
    }
}

/// The translation of a client flow not seen before: `None` when the packet is for no
/// outside frontend, `Err(verdict)` when it must not pass.
fn new_flow(ctx: &TcContext, p: &Packet) -> Option<Result<FwdNat, i32>> {
    let key = ServiceKey {
        addr: p.dst,
        port: p.dport,
        proto: p.proto,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once.
    let svc = unsafe { KL_SERVICES.get(&key) }.copied()?;
    if svc.flags & SVC_EXTERNAL == 0 {
        return None;
    }
    if svc.flags & SVC_SOURCE_RANGES != 0 {
        let k = Key::new(
            SOURCE_RANGE_SERVICE_BITS + 32,
            SourceRangeKey {
                service: key,
                client: p.src,
            },
        );
        if KL_SOURCE_RANGES.get(&k).is_none() {
            return Some(Err(DROP));
        }
    }
    if svc.count == 0 {
        return Some(Err(DROP));
    }
    let client = || ADDRESS_CLIENT | u64::from(p.src);
    let Some(backend) = choose(client, || Some(p.hash()), &key, &svc) else {
        return Some(Err(DROP));
    };
    count(&backend);
    let mut rev = RevNat {
        frontend_addr: p.dst,
        client_addr: p.src,
        frontend_port: p.dport,
        client_port: p.sport,
        snat: 0,
    };
    let mut back = FlowKey {
        src: backend.addr,
        dst: p.src,
        sport: backend.port,
        dport: p.sport,
        proto: p.proto,
        _pad: [0; 3],
    };
    let mut nat = FwdNat {
        backend,
        snat_addr: 0,
        snat_port: 0,
        _pad: 0,
    };
    let snat = backend.flags & BACKEND_LOCAL == 0 && svc.flags & SVC_LOCAL == 0;
    if snat {
        let Some(r) = route(ctx, backend.addr) else {
            return Some(Err(DROP));
        };
        rev.snat = 1;
        back.dst = r.src;
        // The client's own port when free on that address, else one of the SNAT range.
        let mut port = p.sport;
        let mut tries = 0;
        loop {
            back.dport = port;
            if KL_NAT_REV
                .insert(&back, &rev, u64::from(BPF_NOEXIST))
                .is_ok()
            {
                break;
            }
            tries += 1;
            if tries > 8 {
                return Some(Err(DROP));
            }
            // SAFETY: a helper without arguments.
            let r = unsafe { bpf_get_prandom_u32() } % u32::from(SNAT_PORT_COUNT);
            port = (SNAT_PORT_MIN + r as u16).to_be();
        }
        nat.snat_addr = r.src;
        nat.snat_port = port;
    } else if KL_NAT_REV.insert(&back, &rev, 0).is_err() {
        return Some(Err(DROP));
    }
    if KL_NAT_FWD.insert(&p.flow(), &nat, 0).is_err() {
        return Some(Err(DROP));
    }
    Some(Ok(nat))
}

fn egress(ctx: &TcContext) -> Option<i32> {
    let p = parse(ctx)?;
    // SAFETY: the value is copied out at once.
    let rev = unsafe { KL_NAT_REV.get(&p.flow()) }.copied()?;
    if rev.snat != 0 {
        return None;
    }
    Some(
        match rewrite(ctx, &p, true, rev.frontend_addr, rev.frontend_port) {
            Some(()) => TCX_NEXT,
            None => DROP,
        },
    )
}

//! Services and EndpointSlices as the socket load-balancer's tables: which frontends
//! (address, port, protocol) this node serves and the backends of each, as kube-proxy
//! chooses them; and the map operations that turn what the maps hold into that, a
//! service's backends swapped in whole.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kernlet_ebpf_common::{
    Addr, BACKEND_LOCAL, Backend, BackendKey, SOURCE_RANGE_SERVICE_BITS, SVC_EXTERNAL, SVC_LOCAL,
    SVC_MAGLEV, SVC_SOURCE_RANGES, ServiceKey, ServiceValue, SourceRangeKey,
};

/// The label that hands a Service to another proxy.
pub const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn proto_number(p: Option<&str>) -> Option<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(6),
        "UDP" => Some(17),
        _ => None,
    }
}

/// An address as the maps hold it (IPv4 as `::ffff:a.b.c.d`, network byte order).
pub fn map_addr(ip: IpAddr) -> Addr {
    let v6 = match ip {
        IpAddr::V4(ip) => ip.to_ipv6_mapped(),
        IpAddr::V6(ip) => ip,
    };
    let o = v6.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

/// A map address as an address (IPv4-mapped ones as IPv4).
pub fn ip_of(a: &Addr) -> IpAddr {
    let mut o = [0u8; 16];
    for (i, w) in a.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Ipv6Addr::from(o).to_canonical()
}

/// A frontend in the maps' byte order.
pub fn service_key(ip: IpAddr, port: u16, proto: u8) -> ServiceKey {
    ServiceKey {
        addr: map_addr(ip),
        port: u16::from_ne_bytes(port.to_be_bytes()),
        proto,
        _pad: 0,
    }
}

/// A backend in the maps' byte order.
pub fn backend(addr: SocketAddr) -> Backend {
    Backend {
        addr: map_addr(addr.ip()),
        port: u16::from_ne_bytes(addr.port().to_be_bytes()),
        flags: 0,
    }
}

/// A map backend as an address.
pub fn backend_addr(b: &Backend) -> SocketAddr {
    SocketAddr::new(ip_of(&b.addr), u16::from_be_bytes(b.port.to_ne_bytes()))
}

/// A map frontend as `(address, port, protocol)`.
pub fn frontend_of(k: &ServiceKey) -> (IpAddr, u16, u8) {
    (
        ip_of(&k.addr),
        u16::from_be_bytes(k.port.to_ne_bytes()),
        k.proto,
    )
}

/// What one frontend serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontend {
    pub backends: BTreeSet<Backend>,
    /// `sessionAffinity: ClientIP` timeout in seconds (0: none).
    pub affinity_timeout: u32,
    /// `SVC_*` bits: reached from outside, externalTrafficPolicy Local, source ranges.
    pub flags: u32,
    /// `loadBalancerSourceRanges` of a load-balancer IP: (network, prefix length), of
    /// the frontend's family.
    pub source_ranges: BTreeSet<(IpAddr, u8)>,
}

/// A CIDR `a.b.c.d/n` or `fd00::/n` as (network, prefix length), host bits cleared.
fn parse_range(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = s.trim().split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    match ip {
        IpAddr::V4(ip) if len <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            Some((IpAddr::V4((u32::from(ip) & mask).into()), len))
        }
        IpAddr::V6(ip) if len <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            Some((IpAddr::V6((u128::from(ip) & mask).into()), len))
        }
        _ => None,
    }
}

/// The source-range key of `range` for frontend `service`, with its prefix length
/// (an IPv4 range's counted in the mapped address, after its 96 fixed bits).
pub fn source_range_key(service: ServiceKey, range: (IpAddr, u8)) -> (u32, SourceRangeKey) {
    let len = u32::from(range.1) + if range.0.is_ipv4() { 96 } else { 0 };
    (
        SOURCE_RANGE_SERVICE_BITS + len,
        SourceRangeKey {
            service,
            client: map_addr(range.0),
        },
    )
}

/// kube-proxy's default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// Why a Service is not proxied here, or `None` when it is.
pub fn skipped(svc: &Service) -> Option<&'static str> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return Some("ExternalName");
    }
    if matches!(spec.cluster_ip.as_deref(), None | Some("") | Some("None")) {
        return Some("headless");
    }
    if svc
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(PROXY_NAME_LABEL))
    {
        return Some("handled by another proxy (service-proxy-name)");
    }
    None
}

/// The IPv4 and IPv6 EndpointSlices of each Service, by (namespace, service name).
fn slices_by_service(slices: &[EndpointSlice]) -> BTreeMap<(&str, &str), Vec<&EndpointSlice>> {
    let mut out: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices
        .iter()
        .filter(|s| matches!(s.address_type.as_str(), "IPv4" | "IPv6"))
    {
        if let Some(name) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            let ns = s.metadata.namespace.as_deref().unwrap_or("default");
            out.entry((ns, name.as_str())).or_default().push(s);
        }
    }
    out
}

/// The frontends the Services describe and the backends of each, for node `node` in
/// `zone` (its `topology.kubernetes.io/zone` label) with addresses `node_ips`
/// (NodePorts are served on them). Each frontend gets the backends of its own family
/// (a dual-stack Service's IPv4 ClusterIP those of its IPv4 slices, its IPv6 one those
/// of its IPv6 slices).
pub fn desired(
    services: &[Service],
    slices: &[EndpointSlice],
    node: &str,
    zone: Option<&str>,
    node_ips: &[IpAddr],
) -> BTreeMap<ServiceKey, Frontend> {
    let mut out: BTreeMap<ServiceKey, Frontend> = BTreeMap::new();
    let by_service = slices_by_service(slices);
    for svc in services {
        if skipped(svc).is_some() {
            continue;
        }
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        let name = svc.metadata.name.as_deref().unwrap_or("");
        let mine: &[&EndpointSlice] = by_service
            .get(&(ns, name))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let affinity_timeout = if spec.session_affinity.as_deref() == Some("ClientIP") {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
        } else {
            0
        };
        let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        let mut cluster_ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        cluster_ips.sort();
        cluster_ips.dedup();
        let mut frontends_ips: Vec<IpAddr> = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let lb_ips: BTreeSet<IpAddr> = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .into_iter()
            .flatten()
            // `ipMode: Proxy`: the load balancer proxies (it must see the traffic, it
            // may terminate TLS), so its IP is no frontend here and traffic to it
            // leaves for the load balancer, as kube-proxy leaves it.
            .filter(|ing| ing.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|ing| ing.ip.as_deref().and_then(|i| i.parse().ok()))
            .collect();
        frontends_ips.extend(lb_ips.iter().copied());
        frontends_ips.sort();
        frontends_ips.dedup();
        // kube-proxy applies loadBalancerSourceRanges to the load-balancer IPs; a range
        // that does not parse is left out (and so is not a way in).
        let ranges: BTreeSet<(IpAddr, u8)> = spec
            .load_balancer_source_ranges
            .iter()
            .flatten()
            .filter_map(|r| parse_range(r))
            .collect();
        let external_flags = SVC_EXTERNAL | if external_local { SVC_LOCAL } else { 0 };
        for sp in spec.ports.iter().flatten() {
            let Some(proto) = proto_number(sp.protocol.as_deref()) else {
                continue;
            };
            let Ok(port) = u16::try_from(sp.port) else {
                continue;
            };
            // ClusterIPs follow internalTrafficPolicy; external IPs, load-balancer IPs
            // and NodePorts externalTrafficPolicy. Per family: [IPv4, IPv6].
            let of = |local| {
                [false, true].map(|v6| {
                    endpoints_for(
                        mine,
                        sp.name.as_deref(),
                        sp.protocol.as_deref(),
                        node,
                        zone,
                        local,
                        v6,
                    )
                })
            };
            let internal = of(internal_local);
            let external = of(external_local);
            let family = |ip: &IpAddr| usize::from(ip.is_ipv6());
            // The Service's families are those of its ClusterIPs: like kube-proxy's
            // per-family proxiers, a NodePort or external IP of a family the Service
            // does not have is not a frontend.
            let served = |ip: &&IpAddr| cluster_ips.iter().any(|c| family(c) == family(ip));
            for ip in &cluster_ips {
                out.entry(service_key(*ip, port, proto))
                    .or_insert_with(|| Frontend {
                        affinity_timeout,
                        ..Default::default()
                    })
                    .backends
                    .extend(internal[family(ip)].iter().copied());
            }
            for ip in frontends_ips.iter().filter(served) {
                let f = out
                    .entry(service_key(*ip, port, proto))
                    .or_insert_with(|| Frontend {
                        affinity_timeout,
                        ..Default::default()
                    });
                f.backends.extend(external[family(ip)].iter().copied());
                f.flags |= external_flags;
                // A range of the other family never matches this frontend's clients:
                // with only such ranges, nobody gets in (as kube-proxy's per-family
                // rules would have it).
                if lb_ips.contains(ip) && !ranges.is_empty() {
                    f.flags |= SVC_SOURCE_RANGES;
                    f.source_ranges.extend(
                        ranges
                            .iter()
                            .filter(|(net, _)| net.is_ipv6() == ip.is_ipv6())
                            .copied(),
                    );
                }
            }
            if let Some(np) = sp.node_port.and_then(|p| u16::try_from(p).ok()) {
                for ip in node_ips.iter().filter(served) {
                    let f = out
                        .entry(service_key(*ip, np, proto))
                        .or_insert_with(|| Frontend {
                            affinity_timeout,
                            ..Default::default()
                        });
                    f.backends.extend(external[family(ip)].iter().copied());
                    f.flags |= external_flags;
                }
            }
        }
    }
    out
}

/// One endpoint of a service port, with what kube-proxy looks at.
struct Candidate {
    backend: Backend,
    ready: bool,
    /// Serving and terminating: used only when nothing is ready.
    fallback: bool,
    on_node: bool,
    node_hints: Vec<String>,
    zone_hints: Vec<String>,
}

/// Topology-aware routing as kube-proxy applies it from the EndpointSlice hints the
/// controller writes for `trafficDistribution` (PreferSameNode → `forNodes`,
/// PreferSameZone/PreferClose and `topology-mode: Auto` → `forZones`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    /// Every endpoint is a candidate.
    Any,
    /// Only endpoints hinted for this node.
    SameNode,
    /// Only endpoints hinted for this node's zone.
    SameZone,
}

/// kube-proxy's choice: node hints when every ready endpoint has some and one names
/// this node; else zone hints when every ready endpoint has some and one names this
/// node's zone; else no topology (a hint set that would leave this node without an
/// endpoint is ignored).
fn topology(cands: &[Candidate], node: &str, zone: Option<&str>) -> Topology {
    let ready: Vec<&Candidate> = cands.iter().filter(|c| c.ready).collect();
    if ready.is_empty() {
        return Topology::Any;
    }
    if ready.iter().all(|c| !c.node_hints.is_empty())
        && ready.iter().any(|c| c.node_hints.iter().any(|h| h == node))
    {
        return Topology::SameNode;
    }
    if let Some(zone) = zone
        && ready.iter().all(|c| !c.zone_hints.is_empty())
        && ready.iter().any(|c| c.zone_hints.iter().any(|h| h == zone))
    {
        return Topology::SameZone;
    }
    Topology::Any
}

/// The backends of one service port: the ready endpoints (narrowed by topology hints,
/// see [`topology`]), or when none is ready the serving and terminating ones
/// (kube-proxy's fallback); with `local_only`, those on this node only. Only the
/// slices of one family: IPv6 (`v6`) or IPv4.
fn endpoints_for(
    slices: &[&EndpointSlice],
    port_name: Option<&str>,
    protocol: Option<&str>,
    node: &str,
    zone: Option<&str>,
    local_only: bool,
    v6: bool,
) -> BTreeSet<Backend> {
    let want_name = port_name.unwrap_or("");
    let want_proto = protocol.unwrap_or("TCP");
    let want_type = if v6 { "IPv6" } else { "IPv4" };
    let mut cands = Vec::new();
    for s in slices.iter().filter(|s| s.address_type == want_type) {
        let Some(port) = s.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == want_name
                && p.protocol.as_deref().unwrap_or("TCP") == want_proto
        }) else {
            continue;
        };
        let Some(number) = port.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for ep in s.endpoints.iter().flatten() {
            let c = ep.conditions.clone().unwrap_or_default();
            // Unset conditions: ready and serving mean yes, terminating no.
            let is_ready = c.ready.unwrap_or(true);
            let serving = c.serving.unwrap_or(is_ready);
            let is_terminating = c.terminating.unwrap_or(false);
            let hints = ep.hints.as_ref();
            for a in ep.addresses.iter().take(1) {
                let Some(ip) = a.parse::<IpAddr>().ok().filter(|ip| ip.is_ipv6() == v6) else {
                    continue;
                };
                let on_node = ep.node_name.as_deref() == Some(node);
                let mut b = backend(SocketAddr::new(ip, number));
                if on_node {
                    b.flags |= BACKEND_LOCAL;
                }
                cands.push(Candidate {
                    backend: b,
                    ready: is_ready && !is_terminating,
                    fallback: serving && is_terminating,
                    on_node,
                    node_hints: hints
                        .and_then(|h| h.for_nodes.as_ref())
                        .into_iter()
                        .flatten()
                        .map(|n| n.name.clone())
                        .collect(),
                    zone_hints: hints
                        .and_then(|h| h.for_zones.as_ref())
                        .into_iter()
                        .flatten()
                        .map(|z| z.name.clone())
                        .collect(),
                });
            }
        }
    }
    if local_only {
        cands.retain(|c| c.on_node);
    }
    // Hints narrow the cluster-wide set only; the local set is already this node's.
    let mode = if local_only {
        Topology::Any
    } else {
        topology(&cands, node, zone)
    };
    let ready: BTreeSet<Backend> = cands
        .iter()
        .filter(|c| c.ready)
        .filter(|c| match mode {
            Topology::Any => true,
            Topology::SameNode => c.node_hints.iter().any(|h| h == node),
            Topology::SameZone => zone.is_some_and(|z| c.zone_hints.iter().any(|h| h == z)),
        })
        .map(|c| c.backend)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    cands
        .iter()
        .filter(|c| c.fallback)
        .map(|c| c.backend)
        .collect()
}

/// The health checks kube-proxy serves for `externalTrafficPolicy: Local` load
/// balancers: `healthCheckNodePort` → (namespace, name, ready endpoints on this node).
pub fn health_checks(
    services: &[Service],
    slices: &[EndpointSlice],
    node: &str,
) -> BTreeMap<u16, (String, String, usize)> {
    let mut out = BTreeMap::new();
    let by_service = slices_by_service(slices);
    for svc in services {
        if skipped(svc).is_some() {
            continue;
        }
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let Some(port) = spec
            .health_check_node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
        else {
            continue;
        };
        let ns = svc
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = svc.metadata.name.clone().unwrap_or_default();
        let mut local = BTreeSet::new();
        for s in by_service
            .get(&(ns.as_str(), name.as_str()))
            .into_iter()
            .flatten()
        {
            for ep in s.endpoints.iter().flatten() {
                let c = ep.conditions.clone().unwrap_or_default();
                if ep.node_name.as_deref() == Some(node)
                    && c.ready.unwrap_or(true)
                    && !c.terminating.unwrap_or(false)
                {
                    local.extend(ep.addresses.first().cloned());
                }
            }
        }
        out.insert(port, (ns, name, local.len()));
    }
    out
}

/// kube-proxy's answer on a health check port: status code and body.
pub fn health_answer(ns: &str, name: &str, local: usize) -> (u16, String) {
    let body = serde_json::json!({
        "service": {"namespace": ns, "name": name},
        "localEndpoints": local,
        "serviceProxyHealthy": true,
    });
    (if local > 0 { 200 } else { 503 }, body.to_string())
}

/// The distinct backends a frontend's slot holds, in slot order, each with its weight
/// (its entries: 1, or with Maglev its share of the lookup table), and how many of the
/// slot's `count` entries were found.
pub fn slot_members(
    v: &ServiceValue,
    backends: &BTreeMap<BackendKey, Backend>,
) -> (Vec<(Backend, u32)>, u32) {
    let mut out: Vec<(Backend, u32)> = Vec::new();
    let mut found = 0;
    for i in 0..v.count {
        let Some(b) = backends.get(&BackendKey {
            slot: v.slot,
            index: i,
        }) else {
            continue;
        };
        found += 1;
        match out.iter_mut().find(|(x, _)| x == b) {
            Some((_, w)) => *w += 1,
            None => out.push((*b, 1)),
        }
    }
    (out, found)
}

/// What a frontend's backend slot holds: its backends, or with Maglev their lookup
/// table.
pub fn slot_list(front: &Frontend) -> Vec<Backend> {
    let sorted: Vec<Backend> = front.backends.iter().copied().collect();
    if front.flags & SVC_MAGLEV != 0 {
        super::maglev::table(&sorted, super::maglev::TABLE_SIZE)
    } else {
        sorted
    }
}

/// Maglev for the frontends reached from outside (`--service-lb-algorithm maglev`):
/// flows from other machines keep their backend whichever node they arrive at.
/// Socket-level balancing has no such flows and stays random.
pub fn use_maglev(want: &mut BTreeMap<ServiceKey, Frontend>) {
    for f in want.values_mut() {
        if f.flags & SVC_EXTERNAL != 0 {
            f.flags |= SVC_MAGLEV;
        }
    }
}

/// One change to the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LbOp {
    SetBackend(BackendKey, Backend),
    SetService(ServiceKey, ServiceValue),
    DeleteService(ServiceKey),
    DeleteBackend(BackendKey),
    /// A source range (prefix length, key) of a frontend.
    SetRange(u32, SourceRangeKey),
    DeleteRange(u32, SourceRangeKey),
}

/// A source-range entry: its prefix length and key.
pub type RangeEntry = (u32, SourceRangeKey);

/// The changes that make the maps (`services`, `backends`) serve `want`. A frontend
/// whose backends change gets them under a new slot, then one service update points
/// it there, then the old slot goes: a connect sees the old set or the new one, never a
/// mix. With `scope`, only those frontends are looked at (what a change to some
/// Services touches: the cost follows the change, not the table); without, every one,
/// and backend entries of no service (left by a crash) are removed too.
pub fn plan(
    want: &BTreeMap<ServiceKey, Frontend>,
    services: &BTreeMap<ServiceKey, ServiceValue>,
    backends: &BTreeMap<BackendKey, Backend>,
    ranges: &BTreeSet<RangeEntry>,
    scope: Option<&BTreeSet<ServiceKey>>,
) -> Vec<LbOp> {
    let mut sets = Vec::new();
    let mut swaps = Vec::new();
    let mut deletes = Vec::new();
    let slot_range = |slot: u32| {
        backends.range(
            BackendKey { slot, index: 0 }..=BackendKey {
                slot,
                index: u32::MAX,
            },
        )
    };
    // A slot's entries in order, if every one of them is there.
    let slot_entries = |slot: u32, count: u32| -> Option<Vec<Backend>> {
        (0..count)
            .map(|i| backends.get(&BackendKey { slot, index: i }).copied())
            .collect()
    };
    let mut used: BTreeSet<u32> = services.values().map(|v| v.slot).collect();
    let mut next = 1u32;
    let mut fresh_slot = |used: &mut BTreeSet<u32>| {
        while used.contains(&next) || slot_range(next).next().is_some() {
            next = next.wrapping_add(1).max(1);
        }
        used.insert(next);
        next
    };
    // Slots no frontend points at (a pass that failed half-way leaves them): one
    // holding a start of the backends a frontend now needs is finished instead of
    // written again, so retries keep what earlier passes wrote. Looked for in full
    // passes only (a scoped pass after a failure is followed by a full one).
    let mut orphans: BTreeMap<u32, BTreeMap<u32, Backend>> = BTreeMap::new();
    if scope.is_none() {
        for (k, b) in backends {
            if !used.contains(&k.slot) {
                orphans.entry(k.slot).or_default().insert(k.index, *b);
            }
        }
    }
    let in_scope = |k: &ServiceKey| scope.is_none_or(|s| s.contains(k));
    let wanted: Vec<(&ServiceKey, &Frontend)> = match scope {
        Some(keys) => keys.iter().filter_map(|k| want.get_key_value(k)).collect(),
        None => want.iter().collect(),
    };
    let mut live_slots = BTreeSet::new();
    for &(key, front) in &wanted {
        let list: Vec<Backend> = slot_list(front);
        if let Some(cur) = services.get(key)
            && slot_entries(cur.slot, cur.count).as_deref() == Some(list.as_slice())
        {
            live_slots.insert(cur.slot);
            if cur.affinity_timeout != front.affinity_timeout || cur.flags != front.flags {
                swaps.push(LbOp::SetService(
                    *key,
                    ServiceValue {
                        affinity_timeout: front.affinity_timeout,
                        flags: front.flags,
                        ..*cur
                    },
                ));
            }
            continue;
        }
        let adoptable = orphans
            .iter()
            .find(|(_, entries)| {
                entries
                    .iter()
                    .all(|(i, b)| list.get(*i as usize) == Some(b))
            })
            .map(|(slot, entries)| (*slot, entries.clone()));
        let (slot, have) = match adoptable {
            Some((slot, entries)) => {
                orphans.remove(&slot);
                used.insert(slot);
                (slot, entries)
            }
            None => (fresh_slot(&mut used), BTreeMap::new()),
        };
        live_slots.insert(slot);
        for (i, b) in list.iter().enumerate() {
            if have.contains_key(&(i as u32)) {
                continue;
            }
            sets.push(LbOp::SetBackend(
                BackendKey {
                    slot,
                    index: i as u32,
                },
                *b,
            ));
        }
        swaps.push(LbOp::SetService(
            *key,
            ServiceValue {
                slot,
                count: list.len() as u32,
                affinity_timeout: front.affinity_timeout,
                flags: front.flags,
            },
        ));
    }
    // Ranges go in before a frontend starts checking them and out after it stopped.
    let want_ranges: BTreeSet<RangeEntry> = wanted
        .iter()
        .flat_map(|(k, f)| f.source_ranges.iter().map(|r| source_range_key(**k, *r)))
        .collect();
    let have_ranges: BTreeSet<RangeEntry> = ranges
        .iter()
        .filter(|(_, k)| in_scope(&k.service))
        .copied()
        .collect();
    for (len, k) in want_ranges.difference(&have_ranges) {
        sets.push(LbOp::SetRange(*len, *k));
    }
    for (len, k) in have_ranges.difference(&want_ranges) {
        deletes.push(LbOp::DeleteRange(*len, *k));
    }
    let known: Vec<(&ServiceKey, &ServiceValue)> = match scope {
        Some(keys) => keys
            .iter()
            .filter_map(|k| services.get_key_value(k))
            .collect(),
        None => services.iter().collect(),
    };
    for (key, _) in &known {
        if !want.contains_key(*key) {
            deletes.push(LbOp::DeleteService(**key));
        }
    }
    match scope {
        // The slots the frontends of the pass leave.
        Some(_) => {
            for (_, v) in known {
                if !live_slots.contains(&v.slot) {
                    deletes.extend(slot_range(v.slot).map(|(k, _)| LbOp::DeleteBackend(*k)));
                }
            }
        }
        None => {
            for k in backends.keys() {
                if !live_slots.contains(&k.slot) {
                    deletes.push(LbOp::DeleteBackend(*k));
                }
            }
        }
    }
    sets.into_iter().chain(swaps).chain(deletes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> Vec<T> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/k8s/objects");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap();
        serde_json::from_value(v["items"].clone()).unwrap()
    }

    #[test]
    fn the_fixture_services_become_frontends_with_ready_backends() {
        let services: Vec<Service> = fixture("services.json");
        let slices: Vec<EndpointSlice> = fixture("endpointslices.json");
        let want = desired(&services, &slices, "fixture-node-1", None, &[]);
        // Every proxied service port of the fixtures has a frontend on its ClusterIP.
        for svc in &services {
            if skipped(svc).is_some() {
                continue;
            }
            let spec = svc.spec.as_ref().unwrap();
            let ip: IpAddr = spec.cluster_ip.as_deref().unwrap().parse().unwrap();
            for p in spec.ports.iter().flatten() {
                let proto = proto_number(p.protocol.as_deref()).unwrap();
                assert!(
                    want.contains_key(&service_key(ip, p.port as u16, proto)),
                    "{}:{}",
                    ip,
                    p.port
                );
            }
        }
        // web: both ready pods on 8080; web-lb's dns port: both on 5353/UDP.
        let web: IpAddr = "10.100.111.100".parse().unwrap();
        let got: Vec<SocketAddr> = want[&service_key(web, 80, 6)]
            .backends
            .iter()
            .map(backend_addr)
            .collect();
        assert_eq!(
            got,
            [
                "10.244.0.11:8080".parse().unwrap(),
                "10.244.0.12:8080".parse().unwrap()
            ]
        );
        let lb: IpAddr = "10.109.246.64".parse().unwrap();
        let got: Vec<SocketAddr> = want[&service_key(lb, 53, 17)]
            .backends
            .iter()
            .map(backend_addr)
            .collect();
        assert_eq!(
            got,
            [
                "10.244.0.11:5353".parse().unwrap(),
                "10.244.0.12:5353".parse().unwrap()
            ]
        );
        assert!(
            !want.keys().any(|k| frontend_of(k).1 == 8080),
            "the headless service has no frontend"
        );
        // web-lb has internalTrafficPolicy Local: on a node without its pods the
        // ClusterIP has no backend, its external IP keeps both (externalTrafficPolicy Cluster).
        let elsewhere = desired(&services, &slices, "another-node", None, &[]);
        assert!(elsewhere[&service_key(lb, 53, 17)].backends.is_empty());
        assert_eq!(
            elsewhere[&service_key("198.18.0.200".parse().unwrap(), 53, 17)]
                .backends
                .len(),
            2
        );
    }

    fn svc(json: serde_json::Value) -> Service {
        serde_json::from_value(json).unwrap()
    }

    fn slice(endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "d", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    #[test]
    fn terminating_endpoints_only_without_ready_ones_and_local_policy() {
        let web = svc(serde_json::json!({
            "metadata": {"name": "web", "namespace": "d"},
            "spec": {"clusterIP": "10.96.0.50", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]},
        }));
        let key = service_key("10.96.0.50".parse().unwrap(), 80, 6);
        let eps = slice(serde_json::json!([
            {"addresses": ["10.244.1.5"], "conditions": {"ready": true}, "nodeName": "a"},
            {"addresses": ["10.244.2.5"], "conditions": {"ready": false, "serving": true, "terminating": true}, "nodeName": "b"},
        ]));
        let want = desired(
            std::slice::from_ref(&web),
            std::slice::from_ref(&eps),
            "a",
            None,
            &["198.18.0.10".parse().unwrap()],
        );
        assert_eq!(want[&key].backends.len(), 1, "ready endpoints only");
        assert!(
            want.contains_key(&service_key("198.18.0.10".parse().unwrap(), 30080, 6)),
            "NodePort on the node address"
        );
        let only_terminating = slice(serde_json::json!([
            {"addresses": ["10.244.2.5"], "conditions": {"ready": false, "serving": true, "terminating": true}, "nodeName": "b"},
            {"addresses": ["10.244.2.6"], "conditions": {"ready": false, "serving": false, "terminating": true}, "nodeName": "b"},
        ]));
        let want = desired(
            std::slice::from_ref(&web),
            &[only_terminating],
            "a",
            None,
            &[],
        );
        assert_eq!(
            want[&key]
                .backends
                .iter()
                .map(backend_addr)
                .collect::<Vec<_>>(),
            ["10.244.2.5:8080".parse().unwrap()],
            "serving terminating endpoints when none is ready"
        );
        let mut local = web.clone();
        local.spec.as_mut().unwrap().internal_traffic_policy = Some("Local".into());
        let want = desired(
            std::slice::from_ref(&local),
            std::slice::from_ref(&eps),
            "c",
            None,
            &[],
        );
        assert!(
            want[&key].backends.is_empty(),
            "internalTrafficPolicy Local: no endpoint on c"
        );
        let want = desired(&[local], std::slice::from_ref(&eps), "b", None, &[]);
        assert_eq!(
            want[&key].backends.len(),
            1,
            "on b its serving, terminating endpoint"
        );
        let mut other = web.clone();
        other.metadata.labels = Some([(PROXY_NAME_LABEL.to_string(), "x".to_string())].into());
        assert!(desired(&[other], &[eps], "a", None, &[]).is_empty());
    }

    #[test]
    fn topology_hints_narrow_cluster_endpoints_as_kube_proxy_does() {
        let web = svc(serde_json::json!({
            "metadata": {"name": "web", "namespace": "d"},
            "spec": {"clusterIP": "10.96.0.50", "trafficDistribution": "PreferSameNode",
                     "ports": [{"name": "http", "port": 80}]},
        }));
        let key = service_key("10.96.0.50".parse().unwrap(), 80, 6);
        let hinted = |node: &str, zone: &str| serde_json::json!({"forNodes": [{"name": node}], "forZones": [{"name": zone}]});
        let eps = slice(serde_json::json!([
            {"addresses": ["10.244.1.5"], "nodeName": "a", "zone": "z1", "hints": hinted("a", "z1")},
            {"addresses": ["10.244.2.5"], "nodeName": "b", "zone": "z1", "hints": hinted("b", "z1")},
            {"addresses": ["10.244.3.5"], "nodeName": "c", "zone": "z2", "hints": hinted("c", "z2")},
            // Not ready: its missing hints do not turn topology off.
            {"addresses": ["10.244.4.5"], "nodeName": "e", "conditions": {"ready": false}},
        ]));
        let on = |node: &str, zone: Option<&str>, svc: &Service, eps: &EndpointSlice| {
            desired(
                std::slice::from_ref(svc),
                std::slice::from_ref(eps),
                node,
                zone,
                &[],
            )[&key]
                .backends
                .iter()
                .map(|b| backend_addr(b).ip().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(on("a", Some("z1"), &web, &eps), ["10.244.1.5"], "same node");
        assert_eq!(
            on("d", Some("z1"), &web, &eps),
            ["10.244.1.5", "10.244.2.5"],
            "no endpoint for node d: its zone's"
        );
        assert_eq!(
            on("d", Some("z3"), &web, &eps).len(),
            3,
            "nothing for d or z3: every ready endpoint"
        );
        assert_eq!(on("d", None, &web, &eps).len(), 3, "a node without a zone");
        // One ready endpoint without hints: topology is off for everyone.
        let mut partial = eps.clone();
        partial.endpoints.as_mut().unwrap()[2].hints = None;
        assert_eq!(on("a", Some("z1"), &web, &partial).len(), 3);
        // Zone hints only (PreferSameZone): the zone's endpoints.
        let mut zones = eps.clone();
        for e in zones.endpoints.iter_mut().flatten() {
            if let Some(h) = e.hints.as_mut() {
                h.for_nodes = None;
            }
        }
        assert_eq!(
            on("a", Some("z2"), &web, &zones),
            ["10.244.3.5"],
            "node a in zone z2"
        );
        // internalTrafficPolicy Local: this node's endpoints, hints aside.
        let mut local = web.clone();
        local.spec.as_mut().unwrap().internal_traffic_policy = Some("Local".into());
        assert_eq!(on("b", Some("z2"), &local, &zones), ["10.244.2.5"]);
    }

    #[test]
    fn backends_are_swapped_through_a_new_slot() {
        let key = service_key("10.96.0.50".parse().unwrap(), 80, 6);
        let b1 = backend("10.244.1.5:8080".parse().unwrap());
        let b2 = backend("10.244.2.5:8080".parse().unwrap());
        let want: BTreeMap<_, _> = [(
            key,
            Frontend {
                backends: BTreeSet::from([b1, b2]),
                ..Default::default()
            },
        )]
        .into();
        let ops = plan(
            &want,
            &BTreeMap::new(),
            &BTreeMap::new(),
            &BTreeSet::new(),
            None,
        );
        assert_eq!(ops.len(), 3);
        assert!(matches!(
            ops[2],
            LbOp::SetService(
                _,
                ServiceValue {
                    slot: 1,
                    count: 2,
                    affinity_timeout: 0,
                    flags: 0
                }
            )
        ));
        // Applied: nothing more to do.
        let services: BTreeMap<_, _> = [(
            key,
            ServiceValue {
                slot: 1,
                count: 2,
                affinity_timeout: 0,
                flags: 0,
            },
        )]
        .into();
        let backends: BTreeMap<_, _> = [
            (BackendKey { slot: 1, index: 0 }, b1),
            (BackendKey { slot: 1, index: 1 }, b2),
            (BackendKey { slot: 9, index: 0 }, b2),
        ]
        .into();
        let ops = plan(&want, &services, &backends, &BTreeSet::new(), None);
        assert_eq!(
            ops,
            [LbOp::DeleteBackend(BackendKey { slot: 9, index: 0 })],
            "a crash's leftovers go"
        );
        // One backend gone: new slot 2 written, then the swap, then slot 1 removed.
        let want: BTreeMap<_, _> = [(
            key,
            Frontend {
                backends: BTreeSet::from([b2]),
                ..Default::default()
            },
        )]
        .into();
        let mut clean = backends.clone();
        clean.remove(&BackendKey { slot: 9, index: 0 });
        let ops = plan(&want, &services, &clean, &BTreeSet::new(), None);
        assert_eq!(
            ops,
            [
                LbOp::SetBackend(BackendKey { slot: 2, index: 0 }, b2),
                LbOp::SetService(
                    key,
                    ServiceValue {
                        slot: 2,
                        count: 1,
                        affinity_timeout: 0,
                        flags: 0
                    }
                ),
                LbOp::DeleteBackend(BackendKey { slot: 1, index: 0 }),
                LbOp::DeleteBackend(BackendKey { slot: 1, index: 1 }),
            ]
        );
        // A leftover slot already holding the new set (a pass that failed after
        // writing it) is finished, not written again.
        let ops = plan(&want, &services, &backends, &BTreeSet::new(), None);
        assert_eq!(
            ops,
            [
                LbOp::SetService(
                    key,
                    ServiceValue {
                        slot: 9,
                        count: 1,
                        affinity_timeout: 0,
                        flags: 0
                    }
                ),
                LbOp::DeleteBackend(BackendKey { slot: 1, index: 0 }),
                LbOp::DeleteBackend(BackendKey { slot: 1, index: 1 }),
            ]
        );
        // The service gone: frontend, then its backends.
        let ops = plan(
            &BTreeMap::new(),
            &services,
            &backends,
            &BTreeSet::new(),
            None,
        );
        assert_eq!(ops[0], LbOp::DeleteService(key));
        assert_eq!(ops.len(), 4);
    }

    #[test]
    fn health_checks_count_this_nodes_ready_endpoints() {
        let lb = svc(serde_json::json!({
            "metadata": {"name": "web", "namespace": "d"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.50", "externalTrafficPolicy": "Local",
                     "healthCheckNodePort": 32000, "ports": [{"name": "http", "port": 80}]},
        }));
        let eps = slice(serde_json::json!([
            {"addresses": ["10.244.1.5"], "conditions": {"ready": true}, "nodeName": "a"},
            {"addresses": ["10.244.1.6"], "conditions": {"ready": false}, "nodeName": "a"},
            {"addresses": ["10.244.2.5"], "conditions": {"ready": true}, "nodeName": "b"},
        ]));
        let hc = health_checks(std::slice::from_ref(&lb), std::slice::from_ref(&eps), "a");
        assert_eq!(hc[&32000], ("d".into(), "web".into(), 1));
        assert_eq!(health_answer("d", "web", 1).0, 200);
        let (code, body) = health_answer("d", "web", 0);
        assert_eq!(code, 503);
        assert_eq!(
            body,
            r#"{"localEndpoints":0,"service":{"name":"web","namespace":"d"},"serviceProxyHealthy":true}"#
        );
        assert_eq!(health_checks(&[lb], &[eps], "c")[&32000].2, 0);
    }

    #[test]
    fn client_ip_affinity_reaches_the_frontend_and_alone_updates_the_service() {
        let mut web = svc(serde_json::json!({
            "metadata": {"name": "web", "namespace": "d"},
            "spec": {"clusterIP": "10.96.0.50", "sessionAffinity": "ClientIP",
                     "ports": [{"name": "http", "port": 80}]},
        }));
        let eps = slice(serde_json::json!([
            {"addresses": ["10.244.1.5"], "conditions": {"ready": true}, "nodeName": "a"},
        ]));
        let key = service_key("10.96.0.50".parse().unwrap(), 80, 6);
        let want = desired(
            std::slice::from_ref(&web),
            std::slice::from_ref(&eps),
            "a",
            None,
            &[],
        );
        assert_eq!(want[&key].affinity_timeout, DEFAULT_AFFINITY_TIMEOUT);
        web.spec.as_mut().unwrap().session_affinity_config =
            serde_json::from_value(serde_json::json!({"clientIP": {"timeoutSeconds": 60}}))
                .unwrap();
        let want = desired(&[web], &[eps], "a", None, &[]);
        assert_eq!(want[&key].affinity_timeout, 60);
        // Same backends, only the timeout changed: one service update on the same slot.
        let b = *want[&key].backends.iter().next().unwrap();
        let services: BTreeMap<_, _> = [(
            key,
            ServiceValue {
                slot: 4,
                count: 1,
                affinity_timeout: 0,
                flags: 0,
            },
        )]
        .into();
        let backends: BTreeMap<_, _> = [(BackendKey { slot: 4, index: 0 }, b)].into();
        assert_eq!(
            plan(&want, &services, &backends, &BTreeSet::new(), None),
            [LbOp::SetService(
                key,
                ServiceValue {
                    slot: 4,
                    count: 1,
                    affinity_timeout: 60,
                    flags: 0
                }
            )]
        );
    }

    #[test]
    fn outside_frontends_carry_their_policy_and_source_ranges() {
        let mut web = svc(serde_json::json!({
            "metadata": {"name": "web", "namespace": "d"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.50", "externalTrafficPolicy": "Local",
                     "externalIPs": ["203.0.113.7"],
                     "loadBalancerSourceRanges": ["198.18.0.0/24", "10.1.2.3/8", "bogus"],
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}},
        }));
        let eps = slice(serde_json::json!([
            {"addresses": ["10.244.1.5"], "conditions": {"ready": true}, "nodeName": "a"},
            {"addresses": ["10.244.2.5"], "conditions": {"ready": true}, "nodeName": "b"},
        ]));
        let node_ip: IpAddr = "198.18.0.10".parse().unwrap();
        let want = desired(
            std::slice::from_ref(&web),
            std::slice::from_ref(&eps),
            "a",
            None,
            &[node_ip],
        );
        let at = |ip: &str, port| &want[&service_key(ip.parse().unwrap(), port, 6)];
        // The ClusterIP is for the node and its pods only, with both backends; the
        // local one is marked.
        assert_eq!(at("10.96.0.50", 80).flags, 0);
        let local: Vec<bool> = at("10.96.0.50", 80)
            .backends
            .iter()
            .map(|b| b.flags & BACKEND_LOCAL != 0)
            .collect();
        assert_eq!(local, [true, false]);
        for (ip, port) in [("203.0.113.7", 80), ("198.18.0.10", 30080)] {
            assert_eq!(at(ip, port).flags, SVC_EXTERNAL | SVC_LOCAL, "{ip}");
            assert!(at(ip, port).source_ranges.is_empty(), "{ip}");
        }
        // Source ranges guard the load-balancer IP only; host bits are cleared and a
        // range that does not parse is left out.
        let lb = at("192.0.2.10", 80);
        assert_eq!(lb.flags, SVC_EXTERNAL | SVC_LOCAL | SVC_SOURCE_RANGES);
        let ranges: Vec<String> = lb
            .source_ranges
            .iter()
            .map(|(ip, len)| format!("{ip}/{len}"))
            .collect();
        assert_eq!(ranges, ["10.0.0.0/8", "198.18.0.0/24"]);
        // Ranges are written before the frontend that checks them.
        let ops = plan(
            &want,
            &BTreeMap::new(),
            &BTreeMap::new(),
            &BTreeSet::new(),
            None,
        );
        let first_service = ops
            .iter()
            .position(|o| matches!(o, LbOp::SetService(..)))
            .unwrap();
        let ranges_at: Vec<usize> = ops
            .iter()
            .enumerate()
            .filter(|(_, o)| matches!(o, LbOp::SetRange(..)))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(ranges_at.len(), 2);
        assert!(ranges_at.iter().all(|i| *i < first_service), "{ops:?}");
        let mut t = crate::sys::lb::MemoryLb::default();
        for op in &ops {
            crate::sys::lb::LbTable::apply(&mut t, op).unwrap();
        }
        assert!(t.ranges.contains(&source_range_key(
            service_key("192.0.2.10".parse().unwrap(), 80, 6),
            ("198.18.0.0".parse().unwrap(), 24)
        )));
        // The ranges dropped: the frontend stops checking first, then they go.
        web.spec.as_mut().unwrap().load_balancer_source_ranges = None;
        let want = desired(&[web], &[eps], "a", None, &[node_ip]);
        let ops = plan(&want, &t.services, &t.backends, &t.ranges, None);
        assert_eq!(ops.len(), 3, "{ops:?}");
        assert!(matches!(ops[0], LbOp::SetService(_, v) if v.flags == SVC_EXTERNAL | SVC_LOCAL));
        assert!(matches!(ops[1], LbOp::DeleteRange(..)) && matches!(ops[2], LbOp::DeleteRange(..)));
    }

    #[test]
    fn an_ingress_ip_in_proxy_mode_is_left_to_the_load_balancer() {
        let web = svc(serde_json::json!({
            "metadata": {"name": "web", "namespace": "d"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.50",
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"},
                {"ip": "192.0.2.11", "ipMode": "Proxy"}, {"ip": "192.0.2.12", "ipMode": "VIP"},
                {"hostname": "lb.example"}]}},
        }));
        let eps = slice(serde_json::json!([
            {"addresses": ["10.244.1.5"], "conditions": {"ready": true}, "nodeName": "a"},
        ]));
        let want = desired(&[web], &[eps], "a", None, &[]);
        let ips: BTreeSet<String> = want.keys().map(|k| frontend_of(k).0.to_string()).collect();
        // No mode and VIP are frontends; Proxy is the load balancer's to serve (traffic
        // to it leaves the node), as kube-proxy leaves it.
        assert_eq!(
            ips,
            ["10.96.0.50", "192.0.2.10", "192.0.2.12"]
                .map(String::from)
                .into()
        );
    }

    #[test]
    fn a_maglev_frontend_holds_its_table_and_reads_back_as_weighted_backends() {
        let key = service_key("198.18.0.10".parse().unwrap(), 30080, 6);
        let mut want: BTreeMap<_, _> = [(
            key,
            Frontend {
                backends: BTreeSet::from([
                    backend("10.244.1.5:8080".parse().unwrap()),
                    backend("10.244.2.5:8080".parse().unwrap()),
                ]),
                flags: SVC_EXTERNAL,
                ..Default::default()
            },
        )]
        .into();
        use_maglev(&mut want);
        assert_eq!(want[&key].flags, SVC_EXTERNAL | SVC_MAGLEV);
        let mut t = crate::sys::lb::MemoryLb::default();
        for op in plan(&want, &t.services, &t.backends, &t.ranges, None) {
            crate::sys::lb::LbTable::apply(&mut t, &op).unwrap();
        }
        let v = t.services[&key];
        assert_eq!(v.count, super::super::maglev::TABLE_SIZE);
        let (members, found) = slot_members(&v, &t.backends);
        assert_eq!(found, v.count);
        assert_eq!(members.len(), 2);
        assert_eq!(members.iter().map(|(_, w)| w).sum::<u32>(), v.count);
        // Applied: nothing more to do.
        assert!(plan(&want, &t.services, &t.backends, &t.ranges, None).is_empty());
    }

    #[test]
    fn byte_orders_round_trip() {
        let k = service_key("10.96.0.1".parse().unwrap(), 443, 6);
        assert_eq!(frontend_of(&k), ("10.96.0.1".parse().unwrap(), 443, 6));
        let b = backend("10.244.1.5:8080".parse().unwrap());
        assert_eq!(backend_addr(&b), "10.244.1.5:8080".parse().unwrap());
        // As the kernel holds them: 10.96.0.1 is ::ffff:10.96.0.1, the bytes
        // 0,..,0,255,255,10,96,0,1 in memory.
        assert_eq!(k.addr[..2], [0, 0]);
        assert_eq!(k.addr[2].to_ne_bytes(), [0, 0, 255, 255]);
        assert_eq!(k.addr[3].to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(kernlet_ebpf_common::mapped_ipv4(&k.addr), Some(k.addr[3]));
        assert_eq!(k.port.to_ne_bytes(), [1, 187]);
        let k6 = service_key("fd00:10:96::a".parse().unwrap(), 53, 17);
        assert_eq!(frontend_of(&k6), ("fd00:10:96::a".parse().unwrap(), 53, 17));
        assert_eq!(k6.addr[0].to_ne_bytes(), [0xfd, 0, 0, 0x10]);
        assert_eq!(kernlet_ebpf_common::mapped_ipv4(&k6.addr), None);
        let b6 = backend("[fd00:10:244:1::5]:8080".parse().unwrap());
        assert_eq!(
            backend_addr(&b6),
            "[fd00:10:244:1::5]:8080".parse().unwrap()
        );
    }

    #[test]
    fn a_dual_stack_service_gives_each_frontend_the_backends_of_its_family() {
        let svc_json = serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.50",
                     "clusterIPs": ["10.96.0.50", "fd00:10:96::50"],
                     "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
                     "loadBalancerSourceRanges": ["198.18.0.0/24", "2001:db8:1::7/48"],
                     "ports": [{"port": 80, "nodePort": 30080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"},
                                                    {"ip": "2001:db8:ff::10"}]}},
        });
        let svc: Service = serde_json::from_value(svc_json.clone()).unwrap();
        let slice = |name: &str, family: &str, addrs: &[&str]| -> EndpointSlice {
            let eps: Vec<_> = addrs
                .iter()
                .map(|a| serde_json::json!({"addresses": [a], "nodeName": "a"}))
                .collect();
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "default",
                             "labels": {SERVICE_NAME_LABEL: "web"}},
                "addressType": family,
                "endpoints": eps,
                "ports": [{"port": 8080, "protocol": "TCP"}],
            }))
            .unwrap()
        };
        let slices = [
            slice("web-v4", "IPv4", &["10.244.1.5"]),
            // An address of the wrong family in a slice is not a backend.
            slice("web-v6", "IPv6", &["fd00:10:244:1::5", "10.244.1.9"]),
            slice("web-fqdn", "FQDN", &["web.example"]),
        ];
        let node_ips: [IpAddr; 2] = [
            "198.18.0.10".parse().unwrap(),
            "fd00:198:18::10".parse().unwrap(),
        ];
        let want = desired(&[svc], &slices, "a", None, &node_ips);
        let backends_of = |ip: &str, port| -> Vec<String> {
            want[&service_key(ip.parse().unwrap(), port, 6)]
                .backends
                .iter()
                .map(|b| backend_addr(b).to_string())
                .collect()
        };
        for (ip, port) in [
            ("10.96.0.50", 80),
            ("192.0.2.10", 80),
            ("198.18.0.10", 30080),
        ] {
            assert_eq!(backends_of(ip, port), ["10.244.1.5:8080"], "{ip}");
        }
        for (ip, port) in [
            ("fd00:10:96::50", 80),
            ("2001:db8:ff::10", 80),
            ("fd00:198:18::10", 30080),
        ] {
            assert_eq!(backends_of(ip, port), ["[fd00:10:244:1::5]:8080"], "{ip}");
        }
        assert_eq!(want.len(), 6);
        // An IPv4-only Service has no frontends on the node's IPv6 address (nor on an
        // IPv6 external IP).
        let mut v4_only = svc_json.clone();
        v4_only["spec"]["clusterIPs"] = serde_json::json!(["10.96.0.50"]);
        v4_only["spec"]["ipFamilies"] = serde_json::json!(["IPv4"]);
        v4_only["spec"]["externalIPs"] = serde_json::json!(["2001:db8:7::1"]);
        let v4_only: Service = serde_json::from_value(v4_only).unwrap();
        let want4 = desired(&[v4_only], &slices, "a", None, &node_ips);
        assert!(
            want4.keys().all(|k| frontend_of(k).0.is_ipv4()),
            "{want4:?}"
        );
        assert!(want4.contains_key(&service_key("198.18.0.10".parse().unwrap(), 30080, 6)));
        // Each load-balancer IP checks the ranges of its own family.
        let ranges = |ip: &str| -> Vec<String> {
            want[&service_key(ip.parse().unwrap(), 80, 6)]
                .source_ranges
                .iter()
                .map(|(n, l)| format!("{n}/{l}"))
                .collect()
        };
        assert_eq!(ranges("192.0.2.10"), ["198.18.0.0/24"]);
        assert_eq!(ranges("2001:db8:ff::10"), ["2001:db8:1::/48"]);
        // In the trie an IPv4 range's prefix counts the 96 bits of the mapping.
        let k = service_key("192.0.2.10".parse().unwrap(), 80, 6);
        let (len, key) = source_range_key(k, ("198.18.0.0".parse().unwrap(), 24));
        assert_eq!(len, SOURCE_RANGE_SERVICE_BITS + 96 + 24);
        assert_eq!(ip_of(&key.client), "198.18.0.0".parse::<IpAddr>().unwrap());
        let (len, _) = source_range_key(k, ("2001:db8:1::".parse().unwrap(), 48));
        assert_eq!(len, SOURCE_RANGE_SERVICE_BITS + 48);
    }
}

//! The socket load-balancer's maps behind one small trait: the real ones (eBPF maps
//! pinned by name under the instance's bpffs directory, with the `cgroup/connect4`,
//! `sendmsg4`, `recvmsg4` and `getpeername4` programs attached to a cgroup and their
//! links pinned beside them), an in-memory table, and one that fails chosen operations.
//!
//! On start the pinned maps are adopted, not flushed, and the new programs are attached
//! before the previous instance's links are let go: an agent restart never leaves a
//! moment without service translation.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData};
use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType, links::FdLink,
    links::PinnedLink, tc::TcAttachOptions,
};
use kernlet_ebpf_common::{
    BACKENDS_MAP, Backend, BackendKey, FlowKey, FwdNat, LB_CONNECT4, LB_CONNECT6, LB_EGRESS,
    LB_GETPEERNAME4, LB_GETPEERNAME6, LB_INGRESS, LB_RECVMSG4, LB_RECVMSG6, LB_SENDMSG4,
    LB_SENDMSG6, NAT_FWD_MAP, NAT_FWD_NEW_MAP, NAT_MAPS, NAT_REV_MAP, NAT_REV_NEW_MAP, RevNat,
    SERVICES_MAP, SLOT_MEMBERS_MAP, SOURCE_RANGES_MAP, ServiceKey, ServiceValue, SlotMember,
    SourceRangeKey,
};

use crate::model::services::{LbOp, RangeEntry};

/// A failed load-balancer operation, naming what it was for.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct LbError {
    pub what: String,
    pub detail: String,
}

fn err(what: impl Into<String>) -> impl FnOnce(String) -> LbError {
    let what = what.into();
    move |detail| LbError { what, detail }
}

/// An error with its causes, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// What the service controller reads and changes.
pub trait LbTable: Send {
    /// What the Service, backend and source-range maps hold.
    fn state(&mut self) -> Result<&MemoryLb, LbError>;
    fn apply(&mut self, op: &LbOp) -> Result<(), LbError>;
}

/// The in-memory table.
#[derive(Clone, Debug, Default)]
pub struct MemoryLb {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<BackendKey, Backend>,
    pub ranges: BTreeSet<RangeEntry>,
}

impl LbTable for MemoryLb {
    fn state(&mut self) -> Result<&MemoryLb, LbError> {
        Ok(self)
    }
    fn apply(&mut self, op: &LbOp) -> Result<(), LbError> {
        match op {
            LbOp::SetRange(len, k) => {
                self.ranges.insert((*len, *k));
            }
            LbOp::DeleteRange(len, k) => {
                self.ranges.remove(&(*len, *k));
            }
            LbOp::SetBackend(k, b) => {
                self.backends.insert(*k, *b);
            }
            LbOp::SetService(k, v) => {
                self.services.insert(*k, *v);
            }
            LbOp::DeleteService(k) => {
                self.services.remove(k);
            }
            LbOp::DeleteBackend(k) => {
                self.backends.remove(k);
            }
        }
        Ok(())
    }
}

/// An in-memory table whose operations number `fail` (counting every `apply` from 1)
/// fail instead of taking effect.
#[derive(Clone, Debug, Default)]
pub struct FaultyLb {
    pub inner: MemoryLb,
    pub fail: BTreeSet<usize>,
    pub applied: usize,
}

impl LbTable for FaultyLb {
    fn state(&mut self) -> Result<&MemoryLb, LbError> {
        Ok(&self.inner)
    }
    fn apply(&mut self, op: &LbOp) -> Result<(), LbError> {
        self.applied += 1;
        if self.fail.contains(&self.applied) {
            return Err(LbError {
                what: format!("{op:?}"),
                detail: "refused by the faulty table".into(),
            });
        }
        self.inner.apply(op)
    }
}

/// The real maps and programs.
pub struct BpfLb {
    ebpf: aya::Ebpf,
    pin_dir: PathBuf,
    /// Interfaces the outside-traffic programs are attached to or refused on.
    outside: OutsideIfaces,
    /// The last failure to attach them, so it is told once, not at every resync.
    outside_failure: Option<String>,
    /// What the Service, backend and source-range maps hold, as last read and written
    /// since: a sync plans against it instead of reading every entry back through
    /// the kernel (tens of thousands of syscalls with 10k Services). Dropped when a
    /// write fails and at every resync ([`BpfLb::reread`]): the next sync reads the
    /// maps again, so what anything else changed in them is seen.
    mirror: Option<MemoryLb>,
}

impl std::fmt::Debug for BpfLb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BpfLb")
            .field("pin_dir", &self.pin_dir)
            .finish()
    }
}

const PROGRAMS: [&str; 8] = [
    LB_CONNECT4,
    LB_SENDMSG4,
    LB_RECVMSG4,
    LB_GETPEERNAME4,
    LB_CONNECT6,
    LB_SENDMSG6,
    LB_RECVMSG6,
    LB_GETPEERNAME6,
];

/// The maps that outlive an agent, pinned in the instance's directory, with the key
/// and value sizes this build's programs read them with.
const PINNED_MAPS: [(&str, usize, usize); 11] = {
    use core::mem::size_of;
    use kernlet_ebpf_common::{AffinityKey, AffinityValue, SockRevKey, SockRevNat};
    [
        (
            SERVICES_MAP,
            size_of::<ServiceKey>(),
            size_of::<ServiceValue>(),
        ),
        (BACKENDS_MAP, size_of::<BackendKey>(), size_of::<Backend>()),
        (SLOT_MEMBERS_MAP, size_of::<SlotMember>(), size_of::<u32>()),
        (
            kernlet_ebpf_common::SOCK_REVNAT_MAP,
            size_of::<SockRevKey>(),
            size_of::<SockRevNat>(),
        ),
        (
            kernlet_ebpf_common::AFFINITY_MAP,
            size_of::<AffinityKey>(),
            size_of::<AffinityValue>(),
        ),
        (
            kernlet_ebpf_common::BACKEND_STATS_MAP,
            size_of::<Backend>(),
            size_of::<u64>(),
        ),
        (NAT_FWD_MAP, size_of::<FlowKey>(), size_of::<FwdNat>()),
        (NAT_REV_MAP, size_of::<FlowKey>(), size_of::<RevNat>()),
        (NAT_FWD_NEW_MAP, size_of::<FlowKey>(), size_of::<FwdNat>()),
        (NAT_REV_NEW_MAP, size_of::<FlowKey>(), size_of::<RevNat>()),
        // An LPM trie's key starts with its 32-bit prefix length.
        (
            SOURCE_RANGES_MAP,
            size_of::<u32>() + size_of::<SourceRangeKey>(),
            size_of::<u8>(),
        ),
    ]
};

/// The interfaces outside traffic arrives on, by name, with the index each had when its
/// programs were attached or when it was refused (not Ethernet): a sync looks again
/// only at an interface that is new or was made anew since.
#[derive(Debug, Default)]
struct OutsideIfaces {
    attached: BTreeMap<String, u32>,
    refused: BTreeMap<String, u32>,
}

impl OutsideIfaces {
    fn settled(&self, name: &str, index: u32) -> bool {
        self.attached.get(name) == Some(&index) || self.refused.get(name) == Some(&index)
    }
}

/// Why traffic arriving on the non-Ethernet interface `name` (link layer `layer`) is
/// not load-balanced, and what to do.
fn not_ethernet(name: &str, layer: &str) -> LbError {
    LbError {
        what: format!("interface {name}"),
        detail: format!(
            "its link layer is {layer}, not Ethernet: the programs for traffic from outside \
             the node read an Ethernet header, so NodePorts, external and load-balancer IPs \
             reached through {name} are not translated; route outside traffic over an \
             Ethernet interface (or name one with --iface)"
        ),
    }
}

/// The program `name` of the embedded object, as the kind `P` it is.
fn program<'a, P>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut P, LbError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| err(name)("not in the embedded object; rebuild kernlet".into()))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| err(name)(e.to_string()))
}

/// Loads (without attaching or pinning anything) the programs for traffic from outside
/// the node, so the kernel's verifier judges them; its complaint names the program.
pub fn verify_outside_programs() -> Result<(), LbError> {
    let mut ebpf = aya::EbpfLoader::new()
        .load(crate::sys::bpf::EBPF_OBJECT)
        .map_err(|e| err("loading the embedded eBPF object")(chain(&e)))?;
    for name in [LB_INGRESS, LB_EGRESS] {
        let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
        prog.load()
            .map_err(|e| err(format!("loading {name}"))(chain(&e)))?;
    }
    Ok(())
}

/// How many flows from outside the node the NAT tables hold: `established` in each
/// of the established tables, a quarter of it (at least 64) in each new-flow table.
pub fn nat_entries(name: &str, established: u32) -> Option<u32> {
    match name {
        NAT_FWD_MAP | NAT_REV_MAP => Some(established),
        NAT_FWD_NEW_MAP | NAT_REV_NEW_MAP => Some((established / 4).max(64)),
        _ => None,
    }
}

/// Removes the pins of maps laid out otherwise than this build reads them (pinned by
/// an older kernlet), or NAT tables of another size than `nat_flows` asks for: the
/// programs loaded next get new, empty ones, which the first sync fills (a NAT table
/// replaced loses its flows). Adopting them instead would fail to load or misread
/// every entry. Returns the names of the maps replaced.
fn drop_incompatible_pins(pin_dir: &Path, nat_flows: u32) -> Result<Vec<&'static str>, LbError> {
    let mut dropped = Vec::new();
    for (name, key, value) in PINNED_MAPS {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let fits = aya::maps::MapInfo::from_pin(&path).is_ok_and(|info| {
            info.key_size() as usize == key
                && info.value_size() as usize == value
                && nat_entries(name, nat_flows).is_none_or(|n| info.max_entries() == n)
        });
        if !fits {
            std::fs::remove_file(&path).map_err(|e| {
                err(format!(
                    "removing {}, pinned by an older kernlet with another layout",
                    path.display()
                ))(e.to_string())
            })?;
            dropped.push(name);
        }
    }
    Ok(dropped)
}

impl BpfLb {
    /// Loads the programs with the maps pinned in `pin_dir` (adopting pinned ones) and
    /// attaches them to `cgroup`, replacing the links a previous instance pinned there.
    /// The NAT tables of outside flows hold `nat_flows` established flows.
    pub fn open(pin_dir: &Path, cgroup: &Path, nat_flows: u32) -> Result<Self, LbError> {
        crate::sys::bpf::ensure_bpffs(pin_dir)
            .map_err(|e| err(format!("preparing {} for pins", pin_dir.display()))(e.to_string()))?;
        std::fs::create_dir_all(pin_dir.join("links"))
            .map_err(|e| err(format!("creating {}", pin_dir.display()))(e.to_string()))?;
        let dropped = drop_incompatible_pins(pin_dir, nat_flows)?;
        if !dropped.is_empty() {
            tracing::warn!(
                maps = ?dropped,
                dir = %pin_dir.display(),
                "pinned maps of an older layout replaced: translations are rebuilt by the \
                 first sync, flows from outside the node through them start over"
            );
        }
        let mut loader = aya::EbpfLoader::new();
        // Each map pinned (or adopted) at <pin_dir>/<name>.
        for (name, _, _) in PINNED_MAPS {
            loader.map_pin_path(name, pin_dir.join(name));
        }
        for name in NAT_MAPS {
            if let Some(n) = nat_entries(name, nat_flows) {
                loader.map_max_entries(name, n);
            }
        }
        let mut ebpf = loader.load(crate::sys::bpf::EBPF_OBJECT).map_err(|e| {
            err(format!(
                "loading the load-balancer programs with maps pinned in {} (is it on a bpffs?)",
                pin_dir.display()
            ))(e.to_string())
        })?;
        let cg = std::fs::File::open(cgroup)
            .map_err(|e| err(format!("opening cgroup {}", cgroup.display()))(e.to_string()))?;
        for name in PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|e| err(format!("loading {name}"))(chain(&e)))?;
            let id = prog
                // A cgroup link (kernel 5.7+) always sits beside others: the old
                // instance's links stay until they are let go below.
                .attach(&cg, CgroupAttachMode::Single)
                .map_err(|e| err(format!("attaching {name} to {}", cgroup.display()))(chain(&e)))?;
            replace_pin(
                &pin_dir.join("links").join(name),
                fd_link(prog.take_link(id), name)?,
            )?;
        }
        let mut lb = Self {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            outside: OutsideIfaces::default(),
            outside_failure: None,
            mirror: None,
        };
        lb.fill_members()?;
        Ok(lb)
    }

    /// Attaches the programs for traffic from outside the node: `kl_lb_ingress` to
    /// every interface of `ifaces`, `kl_lb_egress` too where its flag says so (the
    /// underlay; the overlay device only brings replies in). An interface not there is
    /// skipped (a later call attaches it); one recreated since is attached again. A
    /// failure is returned once; the same failure again is not.
    pub fn attach_outside(&mut self, ifaces: &[(String, bool)]) -> Result<(), LbError> {
        let result = self.try_attach_outside(ifaces);
        let failure = result.as_ref().err().map(ToString::to_string);
        if failure.is_some() && failure == self.outside_failure {
            // Told already: the next resync tries again quietly.
            return Ok(());
        }
        self.outside_failure = failure;
        result
    }

    fn try_attach_outside(&mut self, ifaces: &[(String, bool)]) -> Result<(), LbError> {
        let mut refused = None;
        for (name, egress) in ifaces {
            let Ok(index) = nix::net::if_::if_nametoindex(name.as_str()) else {
                continue;
            };
            if self.outside.settled(name, index) {
                continue;
            }
            if let Some(layer) = crate::sys::netlink::link_named(name).and_then(|l| l.not_ether) {
                // Remembered: looked up and told again only if the interface is made
                // anew.
                self.outside.refused.insert(name.clone(), index);
                refused = Some(not_ethernet(name, &layer));
                continue;
            }
            self.attach_tc(LB_INGRESS, name, TcAttachType::Ingress)?;
            if *egress {
                self.attach_tc(LB_EGRESS, name, TcAttachType::Egress)?;
            }
            tracing::info!(interface = %name, egress, "outside traffic to Services translated");
            self.outside.attached.insert(name.clone(), index);
        }
        refused.map_or(Ok(()), Err)
    }

    fn attach_tc(&mut self, name: &str, iface: &str, kind: TcAttachType) -> Result<(), LbError> {
        let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
        if prog.fd().is_err() {
            prog.load()
                .map_err(|e| err(format!("loading {name}"))(chain(&e)))?;
        }
        // tcx (kernel 6.6+): a link beside other programs on the hook, run after them.
        let id = prog
            .attach_with_options(iface, kind, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(|e| err(format!("attaching {name} to {iface}"))(chain(&e)))?;
        let link = fd_link(prog.take_link(id), name)?;
        // bpffs names take no '.' (flannel.1): it becomes '_'.
        let pin = format!("{name}@{}", iface.replace('.', "_"));
        replace_pin(&self.pin_dir.join("links").join(pin), link)
    }

    /// Drops the translations of outside UDP flows to `gone` backends, so their next
    /// datagram is balanced onto a live one.
    pub fn forget_udp_flows(&mut self, gone: &[std::net::SocketAddr]) -> Result<usize, LbError> {
        let gone: BTreeSet<Backend> = gone
            .iter()
            .map(|a| crate::model::services::backend(*a))
            .collect();
        let is_gone = |addr: kernlet_ebpf_common::Addr, port: u16| {
            gone.contains(&Backend {
                addr,
                port,
                flags: 0,
            })
        };
        let mut forgotten = 0;
        for (fwd_map, rev_map) in [
            (NAT_FWD_MAP, NAT_REV_MAP),
            (NAT_FWD_NEW_MAP, NAT_REV_NEW_MAP),
        ] {
            let mut fwd: HashMap<&mut MapData, FlowKey, FwdNat> =
                HashMap::try_from(self.map(fwd_map)?).map_err(|e| err(fwd_map)(e.to_string()))?;
            let stale: Vec<FlowKey> = fwd
                .iter()
                .filter_map(Result::ok)
                .filter(|(k, v)| k.proto == 17 && is_gone(v.backend.addr, v.backend.port))
                .map(|(k, _)| k)
                .collect();
            for k in &stale {
                if fwd.remove(k).is_ok() {
                    forgotten += 1;
                }
            }
            let mut rev: HashMap<&mut MapData, FlowKey, RevNat> =
                HashMap::try_from(self.map(rev_map)?).map_err(|e| err(rev_map)(e.to_string()))?;
            let stale: Vec<FlowKey> = rev
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.proto == 17 && is_gone(k.src, k.sport))
                .collect();
            for k in &stale {
                let _ = rev.remove(k);
            }
        }
        Ok(forgotten)
    }

    fn map(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, LbError> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| err(name)("not in the embedded object".into()))
    }

    fn members(&mut self) -> Result<HashMap<&mut MapData, SlotMember, u32>, LbError> {
        HashMap::try_from(self.map(SLOT_MEMBERS_MAP)?)
            .map_err(|e| err(SLOT_MEMBERS_MAP)(e.to_string()))
    }

    /// Writes the membership of every backend entry that has none: backends pinned by
    /// a kernlet from before the membership map keep their clients' affinity.
    fn fill_members(&mut self) -> Result<(), LbError> {
        if self.members()?.keys().next().is_some() {
            return Ok(());
        }
        let backends = self.mirror()?.backends.clone();
        let mut members = self.members()?;
        for (k, b) in &backends {
            members
                .insert(member(k, b), k.index, 0)
                .map_err(|e| err(SLOT_MEMBERS_MAP)(e.to_string()))?;
        }
        Ok(())
    }

    /// Detaches the programs and removes the pins (maps and links): the node stops
    /// translating Services.
    pub fn remove(self) -> Result<(), LbError> {
        let links = std::fs::read_dir(self.pin_dir.join("links"))
            .into_iter()
            .flatten();
        for path in links.flatten().map(|e| e.path()) {
            let _ = remove_pin(&path, true);
        }
        for (m, _, _) in PINNED_MAPS {
            let _ = remove_pin(&self.pin_dir.join(m), false);
        }
        Ok(())
    }
}

/// Removes the pin at `path`: a program link (`link`: detached as its last reference
/// goes) or a map. False when there was none.
pub fn remove_pin(path: &Path, link: bool) -> std::io::Result<bool> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(false);
    }
    if link && let Ok(l) = PinnedLink::from_pin(path) {
        return l
            .unpin()
            .map(|_| true)
            .map_err(|e| std::io::Error::other(e.to_string()));
    }
    std::fs::remove_file(path).map(|()| true)
}

/// The link program `name` was just attached with, as a link that can be pinned.
fn fd_link<L>(taken: Result<L, aya::programs::ProgramError>, name: &str) -> Result<FdLink, LbError>
where
    L: TryInto<FdLink, Error = aya::programs::links::LinkError>,
{
    taken
        .map_err(|e| err(format!("taking the link of {name}"))(e.to_string()))?
        .try_into()
        .map_err(|e| err(format!("link of {name}"))(e.to_string()))
}

/// Pins `link` at `path`, letting go of the link a previous instance pinned there only
/// once the new one is attached.
fn replace_pin(path: &Path, link: FdLink) -> Result<(), LbError> {
    let previous = match PinnedLink::from_pin(path) {
        Ok(old) => Some(
            old.unpin()
                .map_err(|e| err(format!("unpinning {}", path.display()))(e.to_string()))?,
        ),
        Err(_) => {
            let _ = std::fs::remove_file(path);
            None
        }
    };
    link.pin(path)
        .map_err(|e| err(format!("pinning {}", path.display()))(e.to_string()))?;
    drop(previous);
    Ok(())
}

impl BpfLb {
    /// The next sync reads the maps from the kernel again.
    pub fn reread(&mut self) {
        self.mirror = None;
    }

    /// The mirror, read from the kernel when there is none.
    fn mirror(&mut self) -> Result<&mut MemoryLb, LbError> {
        if self.mirror.is_none() {
            let m = MemoryLb {
                services: self.read_services()?,
                backends: self.read_backends()?,
                ranges: self.read_ranges()?,
            };
            self.mirror = Some(m);
        }
        self.mirror
            .as_mut()
            .ok_or_else(|| err("the maps' mirror")("not read".into()))
    }

    fn read_services(&mut self) -> Result<BTreeMap<ServiceKey, ServiceValue>, LbError> {
        let m: HashMap<&mut MapData, ServiceKey, ServiceValue> =
            HashMap::try_from(self.map(SERVICES_MAP)?)
                .map_err(|e| err(SERVICES_MAP)(e.to_string()))?;
        m.iter()
            .map(|r| r.map_err(|e| err(SERVICES_MAP)(e.to_string())))
            .collect()
    }

    fn read_backends(&mut self) -> Result<BTreeMap<BackendKey, Backend>, LbError> {
        let m: HashMap<&mut MapData, BackendKey, Backend> =
            HashMap::try_from(self.map(BACKENDS_MAP)?)
                .map_err(|e| err(BACKENDS_MAP)(e.to_string()))?;
        m.iter()
            .map(|r| r.map_err(|e| err(BACKENDS_MAP)(e.to_string())))
            .collect()
    }

    fn read_ranges(&mut self) -> Result<BTreeSet<RangeEntry>, LbError> {
        let m: LpmTrie<&mut MapData, SourceRangeKey, u8> =
            LpmTrie::try_from(self.map(SOURCE_RANGES_MAP)?)
                .map_err(|e| err(SOURCE_RANGES_MAP)(e.to_string()))?;
        m.keys()
            .map(|r| {
                r.map(|k| (k.prefix_len(), k.data()))
                    .map_err(|e| err(SOURCE_RANGES_MAP)(e.to_string()))
            })
            .collect()
    }

    fn write(&mut self, op: &LbOp) -> Result<(), LbError> {
        let what = format!("{op:?}");
        match op {
            LbOp::SetRange(len, k) => {
                let mut m: LpmTrie<&mut MapData, SourceRangeKey, u8> =
                    LpmTrie::try_from(self.map(SOURCE_RANGES_MAP)?)
                        .map_err(|e| err(&what)(e.to_string()))?;
                m.insert(&Key::new(*len, *k), 1, 0)
                    .map_err(|e| err(&what)(e.to_string()))
            }
            LbOp::DeleteRange(len, k) => {
                let mut m: LpmTrie<&mut MapData, SourceRangeKey, u8> =
                    LpmTrie::try_from(self.map(SOURCE_RANGES_MAP)?)
                        .map_err(|e| err(&what)(e.to_string()))?;
                m.remove(&Key::new(*len, *k))
                    .map_err(|e| err(&what)(e.to_string()))
            }
            LbOp::SetService(k, v) => {
                let mut m: HashMap<&mut MapData, ServiceKey, ServiceValue> =
                    HashMap::try_from(self.map(SERVICES_MAP)?)
                        .map_err(|e| err(&what)(e.to_string()))?;
                m.insert(k, v, 0).map_err(|e| err(&what)(e.to_string()))
            }
            LbOp::DeleteService(k) => {
                let mut m: HashMap<&mut MapData, ServiceKey, ServiceValue> =
                    HashMap::try_from(self.map(SERVICES_MAP)?)
                        .map_err(|e| err(&what)(e.to_string()))?;
                m.remove(k).map_err(|e| err(&what)(e.to_string()))
            }
            LbOp::SetBackend(k, b) => {
                let mut m: HashMap<&mut MapData, BackendKey, Backend> =
                    HashMap::try_from(self.map(BACKENDS_MAP)?)
                        .map_err(|e| err(&what)(e.to_string()))?;
                m.insert(k, b, 0).map_err(|e| err(&what)(e.to_string()))?;
                self.members()?
                    .insert(member(k, b), k.index, 0)
                    .map_err(|e| err(&what)(e.to_string()))
            }
            LbOp::DeleteBackend(k) => {
                let mut m: HashMap<&mut MapData, BackendKey, Backend> =
                    HashMap::try_from(self.map(BACKENDS_MAP)?)
                        .map_err(|e| err(&what)(e.to_string()))?;
                let old = m.get(k, 0).ok();
                m.remove(k).map_err(|e| err(&what)(e.to_string()))?;
                // A backend repeated in a Maglev table is a member once: gone already
                // after its first entry.
                if let Some(b) = old {
                    let _ = self.members()?.remove(&member(k, &b));
                }
                Ok(())
            }
        }
    }
}

impl LbTable for BpfLb {
    fn state(&mut self) -> Result<&MemoryLb, LbError> {
        self.mirror().map(|m| &*m)
    }

    /// Written to the kernel, then to the mirror; a failed write drops the mirror (the
    /// entry may or may not be there).
    fn apply(&mut self, op: &LbOp) -> Result<(), LbError> {
        self.mirror()?;
        match self.write(op) {
            Ok(()) => match self.mirror.as_mut() {
                Some(m) => m.apply(op),
                None => Ok(()),
            },
            Err(e) => {
                self.mirror = None;
                Err(e)
            }
        }
    }
}

/// The membership entry of backend `b` at `k`.
fn member(k: &BackendKey, b: &Backend) -> SlotMember {
    SlotMember {
        slot: k.slot,
        backend: *b,
    }
}

/// How many flows from outside the node the pinned NAT tables of `pin_dir` hold:
/// (established, not established yet), each with its table's size.
pub fn nat_flow_counts(pin_dir: &Path) -> Result<[(usize, u32); 2], LbError> {
    let count = |name: &str| {
        let path = pin_dir.join(name);
        let data = MapData::from_pin(&path)
            .map_err(|e| err(format!("opening the pinned map {}", path.display()))(chain(&e)))?;
        let size = data.info().map(|i| i.max_entries()).unwrap_or(0);
        let map: HashMap<MapData, FlowKey, FwdNat> =
            HashMap::try_from(aya::maps::Map::LruHashMap(data))
                .map_err(|e| err(name.to_string())(e.to_string()))?;
        Ok::<_, LbError>((map.keys().filter(Result::is_ok).count(), size))
    };
    Ok([count(NAT_FWD_MAP)?, count(NAT_FWD_NEW_MAP)?])
}

/// What the maps pinned in `pin_dir` hold (no program needed: readable while kernlet
/// is down).
#[allow(clippy::type_complexity)]
pub fn read_pinned(
    pin_dir: &Path,
) -> Result<
    (
        BTreeMap<ServiceKey, ServiceValue>,
        BTreeMap<BackendKey, Backend>,
    ),
    LbError,
> {
    let open = |name: &str| {
        let path = pin_dir.join(name);
        MapData::from_pin(&path)
            .map(aya::maps::Map::HashMap)
            .map_err(|e| err(format!("opening the pinned map {}", path.display()))(chain(&e)))
    };
    let services: HashMap<MapData, ServiceKey, ServiceValue> =
        HashMap::try_from(open(SERVICES_MAP)?).map_err(|e| err(SERVICES_MAP)(e.to_string()))?;
    let backends: HashMap<MapData, BackendKey, Backend> =
        HashMap::try_from(open(BACKENDS_MAP)?).map_err(|e| err(BACKENDS_MAP)(e.to_string()))?;
    let s = services
        .iter()
        .map(|r| r.map_err(|e| err(SERVICES_MAP)(e.to_string())))
        .collect::<Result<_, _>>()?;
    let b = backends
        .iter()
        .map(|r| r.map_err(|e| err(BACKENDS_MAP)(e.to_string())))
        .collect::<Result<_, _>>()?;
    Ok((s, b))
}

/// Connects and datagrams sent to each backend since the maps were created, summed over
/// CPUs, from the pinned counters.
pub fn read_backend_stats(pin_dir: &Path) -> Result<BTreeMap<Backend, u64>, LbError> {
    let path = pin_dir.join(kernlet_ebpf_common::BACKEND_STATS_MAP);
    let data = MapData::from_pin(&path)
        .map_err(|e| err(format!("opening the pinned map {}", path.display()))(chain(&e)))?;
    let map: aya::maps::PerCpuHashMap<MapData, Backend, u64> =
        aya::maps::PerCpuHashMap::try_from(aya::maps::Map::PerCpuLruHashMap(data))
            .map_err(|e| err(kernlet_ebpf_common::BACKEND_STATS_MAP)(e.to_string()))?;
    map.iter()
        .map(|r| {
            r.map(|(k, per_cpu)| (k, per_cpu.iter().sum()))
                .map_err(|e| err(kernlet_ebpf_common::BACKEND_STATS_MAP)(e.to_string()))
        })
        .collect()
}

/// One pass: what the maps hold against `want`, every planned operation tried; the
/// first failure is returned after the others (the next pass retries). With `scope`
/// only those frontends are compared and written (a change to some Services); without,
/// every one (a resync).
pub fn sync(
    table: &mut dyn LbTable,
    want: &BTreeMap<ServiceKey, crate::model::services::Frontend>,
    scope: Option<&BTreeSet<ServiceKey>>,
) -> Result<usize, LbError> {
    // The slot each frontend of the pass points at, as this pass leaves it: a slot
    // still pointed at (its frontend's swap failed) keeps its backends. Slots are never
    // shared between frontends, so the frontends of the pass are the only ones that
    // can point at the slots it deletes.
    let (ops, mut pointing) = {
        let m = table.state()?;
        let ops = crate::model::services::plan(want, &m.services, &m.backends, &m.ranges, scope);
        let pointing: BTreeMap<ServiceKey, u32> = match scope {
            Some(keys) => keys
                .iter()
                .filter_map(|k| m.services.get(k).map(|v| (*k, v.slot)))
                .collect(),
            None => m.services.iter().map(|(k, v)| (*k, v.slot)).collect(),
        };
        (ops, pointing)
    };
    let mut pointed: BTreeMap<u32, usize> = BTreeMap::new();
    for slot in pointing.values() {
        *pointed.entry(*slot).or_default() += 1;
    }
    let mut first = None;
    let mut done = 0;
    // Slots with a backend that could not be written: no frontend moves onto them.
    let mut incomplete = BTreeSet::new();
    for op in &ops {
        match op {
            LbOp::SetService(_, v) if incomplete.contains(&v.slot) => continue,
            LbOp::DeleteBackend(k) if pointed.get(&k.slot).is_some_and(|n| *n > 0) => continue,
            _ => {}
        }
        match table.apply(op) {
            Ok(()) => {
                done += 1;
                let moved = match op {
                    LbOp::SetService(k, v) => {
                        pointing.insert(*k, v.slot).map(|old| (old, Some(v.slot)))
                    }
                    LbOp::DeleteService(k) => pointing.remove(k).map(|old| (old, None)),
                    _ => None,
                };
                if let Some((old, new)) = moved {
                    if let Some(n) = pointed.get_mut(&old) {
                        *n = n.saturating_sub(1);
                    }
                    if let Some(new) = new {
                        *pointed.entry(new).or_default() += 1;
                    }
                } else if let LbOp::SetService(_, v) = op {
                    *pointed.entry(v.slot).or_default() += 1;
                }
            }
            Err(e) => {
                if let LbOp::SetBackend(k, _) = op {
                    incomplete.insert(k.slot);
                }
                first.get_or_insert(e);
            }
        }
    }
    match first {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::services::{backend, service_key};

    fn want(backends: &[&str]) -> BTreeMap<ServiceKey, crate::model::services::Frontend> {
        let key = service_key("10.96.0.50".parse().unwrap(), 80, 6);
        let front = crate::model::services::Frontend {
            backends: backends
                .iter()
                .map(|b| backend(b.parse().unwrap()))
                .collect(),
            ..Default::default()
        };
        [(key, front)].into()
    }

    /// Every frontend's slot holds exactly `count` backends: no connect can find a
    /// service pointing at a missing backend.
    fn consistent(t: &MemoryLb) -> bool {
        t.services.values().all(|v| {
            (0..v.count).all(|i| {
                t.backends.contains_key(&BackendKey {
                    slot: v.slot,
                    index: i,
                })
            })
        })
    }

    #[test]
    fn a_non_ethernet_interface_is_refused_by_name_with_what_to_do() {
        let e = not_ethernet("wg0", "NONE").to_string();
        assert!(
            e.starts_with("interface wg0: its link layer is NONE"),
            "{e}"
        );
        assert!(e.contains("--iface"), "{e}");
    }

    #[test]
    fn a_refused_interface_is_looked_at_again_only_when_made_anew() {
        let mut o = OutsideIfaces::default();
        assert!(!o.settled("wg0", 7));
        o.refused.insert("wg0".into(), 7);
        o.attached.insert("eth0".into(), 2);
        assert!(o.settled("wg0", 7), "refused once, not looked up again");
        assert!(o.settled("eth0", 2));
        assert!(!o.settled("wg0", 9), "recreated: looked at again");
        assert!(!o.settled("eth0", 3), "recreated: attached again");
    }

    #[test]
    fn new_flows_get_a_quarter_of_the_nat_table_apart() {
        assert_eq!(nat_entries(NAT_FWD_MAP, 1024), Some(1024));
        assert_eq!(nat_entries(NAT_REV_MAP, 1024), Some(1024));
        assert_eq!(nat_entries(NAT_FWD_NEW_MAP, 1024), Some(256));
        assert_eq!(nat_entries(NAT_REV_NEW_MAP, 256), Some(64));
        assert_eq!(nat_entries(NAT_REV_NEW_MAP, 100), Some(64), "at least 64");
        assert_eq!(nat_entries(SERVICES_MAP, 1024), None);
    }

    #[test]
    fn a_scoped_pass_writes_only_its_frontends() {
        let front = |b: &str| crate::model::services::Frontend {
            backends: [backend(b.parse().unwrap())].into(),
            ..Default::default()
        };
        let (a, b, c) = (
            service_key("10.96.0.1".parse().unwrap(), 80, 6),
            service_key("10.96.0.2".parse().unwrap(), 80, 6),
            service_key("10.96.0.3".parse().unwrap(), 80, 6),
        );
        let mut t = MemoryLb::default();
        let all: BTreeMap<_, _> = [
            (a, front("10.244.1.1:80")),
            (b, front("10.244.1.2:80")),
            (c, front("10.244.1.3:80")),
        ]
        .into();
        assert_eq!(sync(&mut t, &all, None).unwrap(), 6);
        // b moves, c is gone, a is left out of the pass: only b and c are touched.
        let mut next = all.clone();
        next.insert(b, front("10.244.2.2:80"));
        next.remove(&c);
        next.insert(a, front("10.244.9.9:80"));
        let scope: BTreeSet<ServiceKey> = [b, c].into();
        // b: new backend, swap, old backend deleted; c: service and backend deleted.
        assert_eq!(sync(&mut t, &next, Some(&scope)).unwrap(), 5);
        assert!(consistent(&t));
        let members = |t: &MemoryLb, k: &ServiceKey| -> Vec<Backend> {
            crate::model::services::slot_members(&t.services[k], &t.backends)
                .0
                .into_iter()
                .map(|(b, _)| b)
                .collect()
        };
        assert_eq!(members(&t, &b), [backend("10.244.2.2:80".parse().unwrap())]);
        assert_eq!(members(&t, &a), [backend("10.244.1.1:80".parse().unwrap())]);
        assert!(!t.services.contains_key(&c));
        assert_eq!(t.backends.len(), 2);
        // A full pass then brings a in line too.
        assert_eq!(sync(&mut t, &next, None).unwrap(), 3);
        assert_eq!(members(&t, &a), [backend("10.244.9.9:80".parse().unwrap())]);
    }

    #[test]
    fn a_failed_backend_write_keeps_its_frontend_on_the_old_slot() {
        let mut t = FaultyLb::default();
        sync(&mut t, &want(&["10.244.1.5:8080"]), None).unwrap();
        // The new slot's first backend write fails: the swap must not happen.
        t.fail = [t.applied + 1].into();
        assert!(sync(&mut t, &want(&["10.244.2.5:8080", "10.244.3.5:8080"]), None).is_err());
        assert!(consistent(&t.inner));
        let key = service_key("10.96.0.50".parse().unwrap(), 80, 6);
        assert_eq!(t.inner.services[&key].count, 1, "still the old backend");
    }

    #[test]
    fn converges_through_failures_and_never_points_at_missing_backends() {
        let mut t = FaultyLb::default();
        sync(&mut t, &want(&["10.244.1.5:8080", "10.244.2.5:8080"]), None).unwrap();
        assert!(consistent(&t.inner));
        // The next change: its swap (3rd op: two sets, then the swap) fails.
        let next = want(&["10.244.2.5:8080", "10.244.3.5:8080"]);
        t.fail = [t.applied + 3].into();
        assert!(sync(&mut t, &next, None).is_err());
        assert!(
            consistent(&t.inner),
            "the old backends stay while the swap failed"
        );
        // The next pass finishes; the one after has nothing to do.
        sync(&mut t, &next, None).unwrap();
        assert!(consistent(&t.inner));
        assert_eq!(sync(&mut t, &next, None).unwrap(), 0);
        let key = service_key("10.96.0.50".parse().unwrap(), 80, 6);
        let v = t.inner.services[&key];
        assert_eq!(v.count, 2);
        assert_eq!(t.inner.backends.len(), 2, "old slots cleaned up");
        // The service removed: nothing left.
        sync(&mut t, &BTreeMap::new(), None).unwrap();
        assert!(t.inner.services.is_empty() && t.inner.backends.is_empty());
    }
}

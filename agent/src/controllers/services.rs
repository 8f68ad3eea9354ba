//! The service controller: kube-proxy's job on this node. Services and EndpointSlices
//! are watched; on every change (and every resync) the frontends and backends they
//! describe ([`crate::model::services::desired`]) are compared with what the
//! load-balancer maps hold and the difference is written ([`crate::sys::lb::sync`]).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::watcher;
use tokio::sync::watch;

use super::endpoint_barrier::{EndpointBarrier, Staging};
use super::service_index::{Placement, ServiceIndex};
use crate::client::SharedClient;
use crate::sys::lb::{BpfLb, LbTable};

/// Where and for whom the Service datapath runs.
#[derive(Clone, Debug)]
pub struct ServiceProxyConfig {
    pub node: String,
    /// The node's addresses (NodePorts are served on them).
    pub node_ips: Vec<std::net::IpAddr>,
    /// The bpffs directory the maps and program links are pinned in.
    pub pin_dir: PathBuf,
    /// The cgroup whose processes (and their descendants') socket calls are translated.
    pub cgroup: PathBuf,
    /// Where pod network namespaces are pinned (`<run-dir>/pods/<uid>/ns/net`): UDP
    /// sockets connected to a removed backend are closed in each.
    pub run_dir: PathBuf,
    pub resync: Duration,
    /// How long a deleted pod's stop waits for its endpoints to leave the datapath (0:
    /// not at all).
    pub termination_barrier: Duration,
    /// How many established flows from outside the node the NAT tables hold
    /// (`--service-nat-flows`; flows not established yet get a quarter of it apart).
    pub nat_flows: u32,
    /// Maglev for outside flows (`--service-lb-algorithm maglev`).
    pub maglev: bool,
    /// The underlay interface outside traffic arrives on (default: the one holding a
    /// node address).
    pub iface: Option<String>,
    /// Where `/healthz` and `/livez` are served (kube-proxy's :10256), if anywhere.
    pub healthz: Option<std::net::SocketAddr>,
    /// Where kube-proxy's metrics are served (`/metrics`), if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
}

fn key_of<K: kube::Resource>(o: &K) -> String {
    format!(
        "{}/{}",
        o.meta().namespace.as_deref().unwrap_or(""),
        o.meta().name.as_deref().unwrap_or("")
    )
}

/// Applies watcher events to a store; `true` when the store is complete and changed.
fn fold<K: kube::Resource + Clone>(
    event: watcher::Event<K>,
    store: &mut BTreeMap<String, K>,
    staging: &mut BTreeMap<String, K>,
    synced: &mut bool,
) -> bool {
    match event {
        watcher::Event::Init => {
            staging.clear();
            false
        }
        watcher::Event::InitApply(o) => {
            staging.insert(key_of(&o), o);
            false
        }
        watcher::Event::InitDone => {
            *store = std::mem::take(staging);
            *synced = true;
            true
        }
        watcher::Event::Apply(o) => {
            store.insert(key_of(&o), o);
            *synced
        }
        watcher::Event::Delete(o) => {
            store.remove(&key_of(&o));
            *synced
        }
    }
}

/// The health-check servers of `externalTrafficPolicy: Local` load balancers, one per
/// `healthCheckNodePort`, answering as kube-proxy's: 200 with the local endpoint count
/// while this node has one, 503 without.
#[derive(Default)]
struct HealthServers {
    running: BTreeMap<u16, HealthServer>,
}

/// The state a health-check server answers from, and its task.
type HealthServer = (watch::Sender<HealthState>, tokio::task::JoinHandle<()>);
/// (namespace, name, local endpoints).
type HealthState = (String, String, usize);

impl HealthServers {
    async fn update(&mut self, want: BTreeMap<u16, HealthState>) {
        let gone: Vec<u16> = self
            .running
            .keys()
            .filter(|p| !want.contains_key(p))
            .copied()
            .collect();
        for p in gone {
            if let Some((_, task)) = self.running.remove(&p) {
                task.abort();
            }
        }
        for (port, state) in want {
            if let Some((tx, _)) = self.running.get(&port) {
                tx.send_replace(state);
                continue;
            }
            // Both families where the node has IPv6 (a `::` socket takes IPv4 too),
            // else IPv4 alone.
            let bound = match tokio::net::TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).await {
                Ok(l) => Ok(l),
                Err(_) => tokio::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).await,
            };
            let listener = match bound {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(
                        port,
                        "cannot serve the health check of {}/{}: {e}",
                        state.0,
                        state.1
                    );
                    continue;
                }
            };
            let (tx, rx) = watch::channel(state);
            let task = tokio::spawn(serve_health(listener, rx));
            self.running.insert(port, (tx, task));
        }
    }
}

async fn serve_health(
    listener: tokio::net::TcpListener,
    state: watch::Receiver<(String, String, usize)>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(crate::json_http::serve(tcp, move |_path| {
            let (ns, name, local) = state.borrow().clone();
            let (code, body) = crate::model::services::health_answer(&ns, &name, local);
            crate::json_http::Answer {
                headers: vec![
                    ("X-Content-Type-Options", "nosniff".into()),
                    ("X-Load-Balancing-Endpoint-Weight", local.to_string()),
                ],
                ..crate::json_http::Answer::new(code, body)
            }
        }));
    }
}

/// IPv6 traffic from outside to an endpoint on another node is sent on by the tc
/// programs through the kernel's FIB, which answers for IPv6 only where forwarding is
/// on for the interface the packet came in on (kubeadm asks for IPv6 forwarding on
/// IPv6 clusters too). kernlet does not switch it on itself: with forwarding on, an
/// interface stops taking router advertisements, which may be how the node got its
/// address.
fn warn_without_ipv6_forwarding(cfg: &ServiceProxyConfig) {
    if !cfg.node_ips.iter().any(std::net::IpAddr::is_ipv6) {
        return;
    }
    let Some(iface) = cfg
        .iface
        .clone()
        .or_else(|| crate::sys::netlink::interface_with_address(&cfg.node_ips))
    else {
        return;
    };
    let path = format!("/proc/sys/net/ipv6/conf/{iface}/forwarding");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() != "1") {
        tracing::warn!(
            interface = %iface,
            "IPv6 NodePorts, external and load-balancer IPs reach only this node's \
             endpoints: IPv6 forwarding is off on {iface}; run sysctl -w \
             net.ipv6.conf.{iface}.forwarding=1 (or net.ipv6.conf.all.forwarding=1) and \
             persist it in /etc/sysctl.d/"
        );
    }
}

/// Tells the index which Service a watch event touched.
fn note_service(ev: &watcher::Event<Service>, index: &mut ServiceIndex) {
    match ev {
        watcher::Event::Apply(o) | watcher::Event::Delete(o) => index.service_changed(key_of(o)),
        watcher::Event::InitDone => index.everything(),
        watcher::Event::Init | watcher::Event::InitApply(_) => {}
    }
}

/// Tells the index which slice (and so which Services) a watch event touched, with
/// the slice as stored before the event.
fn note_slice(
    ev: &watcher::Event<EndpointSlice>,
    store: &BTreeMap<String, EndpointSlice>,
    index: &mut ServiceIndex,
) {
    match ev {
        watcher::Event::Apply(o) => {
            let k = key_of(o);
            index.slice_changed(&k, store.get(&k), Some(o));
        }
        watcher::Event::Delete(o) => {
            let k = key_of(o);
            index.slice_changed(&k, store.get(&k).or(Some(o)), None);
        }
        watcher::Event::InitDone => index.everything(),
        watcher::Event::Init | watcher::Event::InitApply(_) => {}
    }
}

/// Stages a slice's change for the barrier; `true` for a completed relist (the whole
/// store is staged once it is folded in).
fn stage_slice(ev: &watcher::Event<EndpointSlice>, staged: &mut Staging) -> bool {
    match ev {
        watcher::Event::Apply(o) => staged.slice(&key_of(o), Some(o)),
        watcher::Event::Delete(o) => staged.slice(&key_of(o), None),
        watcher::Event::InitDone => return true,
        watcher::Event::Init | watcher::Event::InitApply(_) => {}
    }
    false
}

/// Closes the UDP sockets connected to `gone` backends, on the node and in every pod's
/// network namespace, so their clients reconnect to a live backend.
fn close_udp_to(run_dir: &std::path::Path, gone: &[std::net::SocketAddr]) {
    let pods = std::fs::read_dir(run_dir.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("ns/net"))
        .filter(|p| crate::sys::ns::is_pinned(p));
    let mut closed = 0;
    for netns in std::iter::once(None).chain(pods.map(Some)) {
        match crate::sys::sockdiag::destroy_udp_to(netns.as_deref(), gone) {
            Ok(n) => closed += n,
            Err(e) => tracing::warn!("closing UDP sockets to removed backends: {e}"),
        }
    }
    if closed > 0 {
        tracing::info!(closed, backends = ?gone, "closed UDP sockets connected to removed backends");
    }
}

/// Runs the Service datapath until `stop`.
/// `barrier` is told what each successful sync programmed (the termination barrier).
pub async fn run(
    client: SharedClient,
    cfg: ServiceProxyConfig,
    readiness: watch::Sender<crate::model::node::Readiness>,
    barrier: Option<EndpointBarrier>,
    mut stop: watch::Receiver<bool>,
) {
    if let Some(addr) = cfg.healthz {
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = super::proxy_health::serve(addr, stop).await {
                tracing::warn!("the Service proxy's health endpoint {addr} is not served: {e}");
            }
        });
    }
    super::proxy_metrics::set_families(&cfg.node_ips);
    if let Some(addr) = cfg.metrics {
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = super::proxy_metrics::serve(addr, stop).await {
                tracing::warn!("the Service proxy's metrics endpoint {addr} is not served: {e}");
            }
        });
    }
    // The maps and programs; loading is retried (a missing bpffs is named in the log).
    let table: Arc<Mutex<BpfLb>> = loop {
        let c = cfg.clone();
        match tokio::task::spawn_blocking(move || BpfLb::open(&c.pin_dir, &c.cgroup, c.nat_flows))
            .await
        {
            Ok(Ok(t)) => break Arc::new(Mutex::new(t)),
            Ok(Err(e)) => {
                tracing::error!("the Service datapath is not running: {e}; retrying in 10 s");
                readiness.send_replace(crate::model::node::Readiness {
                    ready: false,
                    reason: "KubeletNotReady".into(),
                    message: format!("the Service datapath is not running: {e}"),
                });
            }
            Err(e) => tracing::error!("the Service datapath is not running: {e}"),
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    };
    tracing::info!(cgroup = %cfg.cgroup.display(), pins = %cfg.pin_dir.display(), "Service datapath attached");
    warn_without_ipv6_forwarding(&cfg);
    readiness.send_replace(crate::model::node::Readiness {
        ready: true,
        reason: "KubeletReady".into(),
        message: "kubelet is posting ready status".into(),
    });
    // Fresh handles per watch and per request: the client follows certificate rotation.
    let watch_services =
        || watcher(Api::<Service>::all(client.get()), super::list_from_cache()).boxed();
    let watch_slices = || {
        watcher(
            Api::<EndpointSlice>::all(client.get()),
            super::list_from_cache(),
        )
        .boxed()
    };
    let mut services = watch_services();
    let mut slices = watch_slices();
    let mut rotations = client.rotations();
    let (mut svc_store, mut svc_staging, mut svc_synced) =
        (BTreeMap::new(), BTreeMap::new(), false);
    let (mut eps_store, mut eps_staging, mut eps_synced) =
        (BTreeMap::new(), BTreeMap::new(), false);
    let mut tick = tokio::time::interval(cfg.resync);
    let mut backoff = Duration::from_millis(500);
    let mut health = HealthServers::default();
    // The node's zone (for topology hints) and whether it is being deleted, read
    // again at every resync.
    let mut zone: Option<String> = None;
    // The trigger time of each EndpointSlice as last programmed (None before the
    // first sync: what was there at start is not a change this agent made).
    let mut programmed: Option<BTreeMap<String, String>> = None;
    // A change after a quiet spell is written at once; changes that follow within
    // MIN_SYNC_INTERVAL of a sync are gathered and written together when it has passed
    // (kube-proxy's minimum sync period, 1 s there): a burst of 10,000 new slices is at
    // most one sync per interval while it lasts, each writing what gathered, not 10,000;
    // and one new Service answers without waiting for a batch.
    let batch = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(batch);
    let mut pending = false;
    let mut last_sync: Option<tokio::time::Instant> = None;
    // What the Services and slices want, kept per Service; a change recomputes and
    // writes its Service alone.
    let mut index = ServiceIndex::default();
    // The next sync compares every frontend with the maps (a resync, a failed write).
    let mut plan_all = true;
    // The slice changes the next successful sync programs, for the barrier.
    let mut staged = Staging::default();
    // The interfaces outside traffic arrives on, as the last full pass found them.
    let mut outside_ifaces: Option<Vec<(String, bool)>> = None;
    loop {
        let step = tokio::select! {
            _ = stop.changed() => return,
            _ = &mut batch, if pending => Step::Sync,
            _ = rotations.changed() => {
                // New credentials: watch again with them (a relist of both).
                services = watch_services();
                slices = watch_slices();
                Step::Idle
            }
            _ = tick.tick() => {
                if let Ok(Ok(Some(n))) =
                    tokio::time::timeout(Duration::from_secs(5), Api::<Node>::all(client.get()).get_opt(&cfg.node)).await
                {
                    let now_in = n
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(ZONE_LABEL))
                        .cloned();
                    if now_in != zone {
                        // Topology hints are read against the zone: every Service again.
                        index.everything();
                        zone = now_in;
                    }
                    let tainted = n
                        .spec
                        .as_ref()
                        .and_then(|s| s.taints.as_ref())
                        .is_some_and(|t| t.iter().any(|t| t.key == AUTOSCALER_DELETION_TAINT));
                    super::proxy_health::set_node_deleting(
                        n.metadata.deletion_timestamp.is_some() || tainted,
                    );
                }
                // A resync compares with what the maps hold, not with what this agent
                // last wrote: a change made under it is seen and undone.
                // Every Service is recomputed from the stores too (kube-proxy's periodic
                // full sync): a change the index missed cannot outlive a resync.
                if let Ok(mut t) = table.lock() {
                    t.reread();
                }
                index.everything();
                plan_all = true;
                Step::Sync
            }
            e = services.next() => match e {
                Some(Ok(ev)) => {
                    note_service(&ev, &mut index);
                    Step::changed(counted(true, fold(ev, &mut svc_store, &mut svc_staging, &mut svc_synced)))
                }
                Some(Err(e)) => {
                    tracing::warn!("watching Services: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    Step::Idle
                }
                None => {
                    services = watch_services();
                    Step::Idle
                }
            },
            e = slices.next() => match e {
                Some(Ok(ev)) => {
                    note_slice(&ev, &eps_store, &mut index);
                    let relisted = stage_slice(&ev, &mut staged);
                    let changed = fold(ev, &mut eps_store, &mut eps_staging, &mut eps_synced);
                    if relisted {
                        staged.relist(&eps_store);
                    }
                    Step::changed(counted(false, changed))
                }
                Some(Err(e)) => {
                    tracing::warn!("watching EndpointSlices: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    Step::Idle
                }
                None => {
                    slices = watch_slices();
                    Step::Idle
                }
            },
        };
        match step {
            Step::Idle => continue,
            Step::Changed => {
                if !pending {
                    pending = true;
                    let now = tokio::time::Instant::now();
                    batch
                        .as_mut()
                        .reset(last_sync.map_or(now, |t| (t + MIN_SYNC_INTERVAL).max(now)));
                }
                continue;
            }
            Step::Sync => pending = false,
        }
        // Nothing is written before both lists are complete: a partial view would
        // remove live services.
        if !svc_synced || !eps_synced {
            continue;
        }
        backoff = Duration::from_millis(500);
        let refresh = index.refresh(
            &svc_store,
            &eps_store,
            Placement {
                node: &cfg.node,
                zone: zone.as_deref(),
                node_ips: &cfg.node_ips,
                maglev: cfg.maglev,
            },
        );
        if refresh.health_changed {
            let (svcs, eps) = index.health_inputs(&svc_store, &eps_store);
            health
                .update(crate::model::services::health_checks(
                    &svcs, &eps, &cfg.node,
                ))
                .await;
        }
        // After a failed write or at a resync every frontend is compared again.
        let scope = if std::mem::take(&mut plan_all) {
            None
        } else {
            refresh.scope
        };
        let want = Arc::clone(&index.want);
        let frontends = want.len();
        let started = std::time::Instant::now();
        let t = Arc::clone(&table);
        let run_dir = cfg.run_dir.clone();
        let gone = refresh.udp_gone;
        // The interfaces are looked up again at a full pass (a resync, after a failure)
        // only: a Service change costs no netlink dump.
        let known = scope.as_ref().and_then(|_| outside_ifaces.clone());
        let (node_ips, iface) = (cfg.node_ips.clone(), cfg.iface.clone());
        let result = tokio::task::spawn_blocking(move || {
            let ifaces = known.unwrap_or_else(|| outside_interfaces(iface, &node_ips));
            let mut t = t
                .lock()
                .map_err(|_| "the load-balancer table lock is poisoned".to_string())?;
            let n = write(&mut t, &want, scope.as_ref(), &gone, &run_dir, &ifaces)?;
            Ok::<_, String>((n, ifaces))
        })
        .await;
        let result = result.map(|r| {
            r.map(|(n, ifaces)| {
                outside_ifaces = Some(ifaces);
                n
            })
        });
        last_sync = Some(tokio::time::Instant::now());
        super::proxy_metrics::synced(started.elapsed().as_secs_f64(), matches!(result, Ok(Ok(_))));
        match result {
            Ok(Ok(n)) => {
                observe_programming(&mut programmed, &eps_store, refresh.slices.as_ref());
                if let Some(b) = &barrier {
                    b.publish(&mut staged);
                }
                crate::daemon::synced(
                    "services",
                    serde_json::json!({"frontends": frontends, "changes": n}),
                );
                if n > 0 {
                    tracing::info!(changes = n, "Service datapath programmed");
                }
            }
            Ok(Err(e)) => {
                plan_all = true;
                crate::daemon::failed("services", &e);
                tracing::warn!(
                    "programming the Service datapath: {e}; retrying at the next change or resync"
                );
            }
            Err(e) => {
                super::proxy_health::set_synced(false);
                tracing::warn!("programming the Service datapath: {e}");
            }
        }
    }
}

/// The interfaces the programs for traffic from outside go on, each with whether it
/// gets the egress program too: every interface holding a node address (a node may be
/// reached on several), or the one `--iface` names, both ways; and the overlay device
/// (once the overlay made it) for replies of SNAT'd flows.
fn outside_interfaces(iface: Option<String>, node_ips: &[std::net::IpAddr]) -> Vec<(String, bool)> {
    let mut ifaces: Vec<(String, bool)> = match iface {
        Some(i) => vec![(i, true)],
        None => crate::sys::netlink::interfaces_with_addresses(node_ips)
            .into_iter()
            .map(|l| (l.name, true))
            .collect(),
    };
    ifaces.push((crate::model::overlay::DEVICE.to_string(), false));
    ifaces
}

/// One sync's writes: `want` (within `scope`) into the table, the UDP sockets and
/// outside flows to `gone` backends closed, the outside programs on `ifaces` (an
/// interface there since the last look is attached). The writes made.
fn write(
    t: &mut BpfLb,
    want: &BTreeMap<kernlet_ebpf_common::ServiceKey, crate::model::services::Frontend>,
    scope: Option<&std::collections::BTreeSet<kernlet_ebpf_common::ServiceKey>>,
    gone: &[std::net::SocketAddr],
    run_dir: &std::path::Path,
    ifaces: &[(String, bool)],
) -> Result<usize, String> {
    let n = program(t as &mut dyn LbTable, want, scope);
    if !gone.is_empty() {
        close_udp_to(run_dir, gone);
        if let Err(e) = t.forget_udp_flows(gone) {
            tracing::warn!("dropping outside UDP flows to removed backends: {e}");
        }
    }
    let n = n?;
    if let Err(e) = t.attach_outside(ifaces) {
        tracing::warn!("traffic from outside the node is not load-balanced: {e}");
    }
    Ok(n)
}

/// Counts a Service (`service`) or EndpointSlice change for kube-proxy's metrics;
/// `changed` passes through.
fn counted(service: bool, changed: bool) -> bool {
    if changed {
        super::proxy_metrics::changed(service);
    }
    changed
}

/// Writes `want` into `table`: a pass, and while writes fail up to three more right
/// away (each writes only what is still missing); the proxy's `/healthz` says whether
/// the table now holds `want`. The writes of the last pass, or the last failure.
pub fn program(
    table: &mut dyn LbTable,
    want: &BTreeMap<kernlet_ebpf_common::ServiceKey, crate::model::services::Frontend>,
    scope: Option<&std::collections::BTreeSet<kernlet_ebpf_common::ServiceKey>>,
) -> Result<usize, String> {
    let mut last = String::new();
    for _ in 0..4 {
        match crate::sys::lb::sync(table, want, scope) {
            Ok(n) => {
                super::proxy_health::set_synced(true);
                return Ok(n);
            }
            Err(e) => last = e.to_string(),
        }
    }
    super::proxy_health::set_synced(false);
    Err(last)
}

/// What the controller's loop does next.
enum Step {
    Idle,
    /// Something changed: a sync at once, or [`MIN_SYNC_INTERVAL`] after the last.
    Changed,
    /// Sync now.
    Sync,
}

impl Step {
    fn changed(yes: bool) -> Self {
        if yes { Self::Changed } else { Self::Idle }
    }
}

/// The least time between the end of one sync and the start of the next.
const MIN_SYNC_INTERVAL: Duration = Duration::from_millis(10);

/// The node label naming its zone.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The cluster autoscaler's taint on a node it is about to delete.
const AUTOSCALER_DELETION_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// After a successful sync: the latency of every EndpointSlice change programmed since
/// the last one, from its trigger time. `touched`: the slices changed since (`None`:
/// any of them).
fn observe_programming(
    programmed: &mut Option<BTreeMap<String, String>>,
    slices: &BTreeMap<String, EndpointSlice>,
    touched: Option<&std::collections::BTreeSet<String>>,
) {
    let trigger = |s: &EndpointSlice| {
        s.metadata
            .annotations
            .as_ref()?
            .get(super::proxy_health::TRIGGER_TIME)
            .cloned()
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    let observe = |t: &str| {
        if let Some(secs) = super::proxy_metrics::since_trigger(t, now) {
            super::proxy_metrics::observe_programming(secs);
        }
    };
    match (programmed.as_mut(), touched) {
        (Some(before), Some(keys)) => {
            for k in keys {
                match slices.get(k).and_then(trigger) {
                    Some(t) => {
                        if before.get(k) != Some(&t) {
                            observe(&t);
                        }
                        before.insert(k.clone(), t);
                    }
                    None => {
                        before.remove(k);
                    }
                }
            }
        }
        (before, _) => {
            let current: BTreeMap<String, String> = slices
                .iter()
                .filter_map(|(k, s)| Some((k.clone(), trigger(s)?)))
                .collect();
            if let Some(before) = before {
                for (k, t) in &current {
                    if before.get(k) != Some(t) {
                        observe(t);
                    }
                }
            }
            *programmed = Some(current);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::services::{Frontend, backend, service_key};
    use crate::sys::lb::FaultyLb;

    fn want(n: u8) -> BTreeMap<kernlet_ebpf_common::ServiceKey, Frontend> {
        (0..n)
            .map(|i| {
                let front = Frontend {
                    backends: [
                        backend(format!("10.244.1.{i}:8080").parse().unwrap()),
                        backend(format!("10.244.2.{i}:8080").parse().unwrap()),
                    ]
                    .into(),
                    ..Default::default()
                };
                (
                    service_key(Ipv4Addr::new(10, 96, 1, i).into(), 80, 6),
                    front,
                )
            })
            .collect()
    }

    fn converged(
        t: &mut FaultyLb,
        want: &BTreeMap<kernlet_ebpf_common::ServiceKey, Frontend>,
    ) -> bool {
        crate::model::services::plan(
            want,
            &t.inner.services,
            &t.inner.backends,
            &t.inner.ranges,
            None,
        )
        .is_empty()
    }

    #[test]
    fn a_table_refusing_writes_converges_within_two_resyncs_and_healthz_says_when() {
        let want = want(40);
        // Every 10th write refused: one resync's retries get everything in.
        let mut t = FaultyLb {
            fail: (1..100_000).filter(|n| n % 10 == 0).collect(),
            ..Default::default()
        };
        program(&mut t, &want, None).unwrap();
        assert!(converged(&mut t, &want));
        assert_eq!(super::super::proxy_health::answer("/healthz").0, 200);
        // Every 4th write refused: the first resync falls short and healthz is 503
        // while the table lags; the second finishes (what earlier passes wrote is
        // kept) and healthz is 200.
        let mut t = FaultyLb {
            fail: (1..100_000).filter(|n| n % 4 == 0).collect(),
            ..Default::default()
        };
        let mut resyncs = 0;
        while program(&mut t, &want, None).is_err() {
            resyncs += 1;
            assert!(!converged(&mut t, &want));
            assert_eq!(super::super::proxy_health::answer("/healthz").0, 503);
            assert!(resyncs < 2, "no convergence after {resyncs} resyncs");
        }
        assert!(
            resyncs >= 1,
            "a quarter of the writes refused cannot pass at once"
        );
        assert!(converged(&mut t, &want));
        assert_eq!(super::super::proxy_health::answer("/healthz").0, 200);
    }
}

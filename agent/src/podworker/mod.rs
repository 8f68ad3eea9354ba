//! The pod manager of both modes (kubelet's pod workers): runs the pods of a manifest
//! directory (static pods, standalone mode) or the pods the apiserver binds to this
//! node. A manifest directory is read again every resync: new pods start, removed or
//! changed ones are stopped (a changed manifest is a new pod, as with kubelet's static
//! pods). Pod status goes to `<state-dir>/pods/<uid>/pod.json`, where `kernlet pods`
//! reads it, and for apiserver pods also back to the apiserver.

mod claims;
mod dispatcher;
mod evictions;
mod hooks;
mod host_ports;
mod image_volumes;
mod images;
pub mod metrics;
mod pace;
mod plan;
pub mod probe_metrics;
mod probes;
mod relist;
mod resize;
mod runtime_class;
mod static_pods;
mod status;
mod sync;
mod termination;
mod volumes;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use crate::model::manifest::{self, ManifestError, ManifestPod};
use crate::model::pod_lifecycle::{self, Action, Observed, View};
use crate::model::probe;
use crate::model::qos::qos_class;
use crate::model::quantity::QuantityError;
use crate::runtime::container::ContainerState;
use crate::runtime::sandbox::SandboxRecord;
use crate::runtime::{Runtime, read_json, write_json};

pub use evictions::Evictions;
pub use plan::{PodPlan, StandaloneError, plan};
pub use static_pods::static_uid;
pub use status::recorded_pods;

use dispatcher::PodWorker;
use hooks::stop_with_pre_stop;
use images::{ImageReady, Pulls};
use probes::{ProbeResults, ProbeRun};
use static_pods::{CONFIG_HASH, CONFIG_SOURCE, is_mirror, is_static};

/// Timing of the standalone runner.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How often a pod with something moving on time alone (probes, back-offs, pulls,
    /// terminations) is synced, and the node's containers relisted.
    pub resync: Duration,
    /// How often a settled pod is synced when nothing wakes it (its containers'
    /// changes and its object's do).
    pub idle_resync: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A container that ran this long has its backoff forgotten.
    pub backoff_reset: Duration,
    /// How often volume contents are read again from the apiserver (kubelet's
    /// `--sync-frequency`).
    pub sync_frequency: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(1),
            idle_resync: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            backoff_reset: Duration::from_secs(600),
            sync_frequency: Duration::from_secs(60),
        }
    }
}

/// The pod's spec, borrowed (an empty one for a pod without): syncs read it many times,
/// and a clone of a pod's spec is most of what an idle node's agent would spend.
fn spec_of(pod: &Pod) -> std::borrow::Cow<'_, k8s_openapi::api::core::v1::PodSpec> {
    match &pod.spec {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(Default::default()),
    }
}

/// The pod's `terminationGracePeriodSeconds` (kubelet's default 30 s).
fn pod_grace(spec: &k8s_openapi::api::core::v1::PodSpec) -> Duration {
    Duration::from_secs(
        spec.termination_grace_period_seconds
            .and_then(|g| u64::try_from(g).ok())
            .unwrap_or(30),
    )
}

fn parse_time(t: &str) -> Option<k8s_openapi::jiff::Timestamp> {
    t.parse().ok()
}

/// The recorded runs of one container of a pod, oldest first.
fn runs_of<'a>(
    records: &'a [crate::runtime::container::ContainerRecord],
    uid: &str,
    name: &str,
) -> Vec<&'a crate::runtime::container::ContainerRecord> {
    let mut mine: Vec<_> = records
        .iter()
        .filter(|r| r.pod_uid == uid && r.name == name)
        .collect();
    mine.sort_by_key(|r| r.restart);
    mine
}

/// Where a [`Runner`]'s pods come from.
#[derive(Clone)]
pub enum Source {
    /// A manifest directory (static pods).
    Manifests(PathBuf),
    /// The pods the apiserver binds to this node, and where their writes go.
    Api {
        snapshot: crate::controllers::pods::Snapshot,
        /// Bumped at each change of the snapshot.
        changes: crate::controllers::pods::Changes,
        /// Pods removed from the apiserver, with their last grace period.
        deleted: crate::controllers::pods::Deleted,
        updates: tokio::sync::mpsc::UnboundedSender<crate::controllers::pods::Update>,
        /// For reading volume contents (configMaps, secrets, tokens) from the worker
        /// thread.
        client: crate::client::SharedClient,
        handle: tokio::runtime::Handle,
        /// The cluster's Services, for containers' service variables.
        services: crate::controllers::service_links::ServiceLinks,
        /// The cluster's RuntimeClasses, for pods' runtime handlers.
        runtime_classes: crate::controllers::runtime_classes::RuntimeClasses,
        /// The node's CSI drivers, for pods' CSI volumes.
        csi: crate::csi::Csi,
    },
}

/// Runs pods: those of a manifest directory, or those bound to this node.
pub struct Runner {
    rt: Runtime,
    source: Source,
    /// The status last sent to the apiserver, by pod uid.
    /// (Shared by the dispatcher and the workers: a recreated mirror pod clears it.)
    last_sent: Arc<std::sync::Mutex<HashMap<String, k8s_openapi::api::core::v1::PodStatus>>>,
    node_ip: String,
    timing: Timing,
    /// Why a container could not be created, by (pod uid, container).
    start_failures: HashMap<(String, String), (String, String)>,
    /// Restart count at which each container's backoff was last reset.
    backoff_base: HashMap<(String, String), u32>,
    removing: Arc<std::sync::Mutex<HashSet<String>>>,
    /// Image pulls in the background, by (pod uid, container, restart).
    pulls: Pulls,
    /// The node's allocatable CPU (millicores) and memory (bytes), for
    /// `resourceFieldRef` of containers without limits.
    allocatable: (u64, u64),
    /// Static pods next to the apiserver's (kubelet's staticPodPath): the manifest
    /// directory and this node's name; each gets a mirror pod.
    static_pods: Option<(PathBuf, String)>,
    /// The proxies of pods' host ports (made on the first one), shared by the workers.
    host_ports: Arc<std::sync::Mutex<Option<crate::runtime::hostport::HostPorts>>>,
    /// Host ports that could not be opened, by (pod uid, port), so the log says it once.
    host_port_errors: HashSet<(String, String)>,
    /// When a mirror pod was last asked for, by static pod uid.
    mirrors_requested: HashMap<String, Instant>,
    /// When the delete of a mirror pod was asked for, by its uid: not asked again for
    /// 10 s while the watch still shows it.
    mirrors_deleted: HashMap<String, Instant>,
    /// Where events go (pods from the apiserver).
    events: Option<crate::controllers::events::Recorder>,
    /// When a container's back-off was last reported, by container ID.
    backoff_reported: HashMap<String, Instant>,
    /// When each apiserver-backed volume is read again, by (pod uid, volume).
    volume_checks: HashMap<(String, String), Instant>,
    /// What the node offers pods, for admission.
    node_fit: crate::model::admission::NodeFit,
    /// Pods that failed for good on this node — refused at admission or past their
    /// activeDeadlineSeconds — by uid: kubelet's reason and message.
    failed: HashMap<String, crate::model::admission::Refusal>,
    /// Containers being stopped by the worker (sidecars of finished pods), by ID.
    stopping: HashSet<String>,
    /// Probes of running containers, by (container ID, kind).
    probes: HashMap<(String, probe::Kind), ProbeRun>,
    /// Results of probe runs in flight, by (container ID, kind): Ok(output) or
    /// Err(why it failed).
    probe_results: ProbeResults,
    /// Failed pulls, by (pod uid, container): when the next may start, the delay
    /// after which it did, and why the last failed (kubelet's ImagePullBackOff).
    pull_backoff: HashMap<(String, String), (Instant, Duration, String)>,
    last_manifest_error: Option<String>,
    /// The pod workers, by pod uid (on the dispatcher only).
    workers: HashMap<String, PodWorker>,
    /// Workers told to stop, with their pod's sandbox to remove once they have.
    retiring: Vec<(PodWorker, Option<Removal>)>,
    /// The pod's termination once its deletion was seen (on a pod's worker).
    termination: Option<termination::Termination>,
    /// Where the pod's in-place resize stands (on a pod's worker).
    resize_state: resize::ResizeState,
    /// Containers whose exit a status has shown, by ID (on a pod's worker).
    reported_exits: HashSet<String>,
    /// Containers killed to be restarted (a failed liveness or startup probe), by ID
    /// (on a pod's worker): kubelet restarts them in the sync that sees them exit, so
    /// their exit never shows in a status on its own.
    killed_for_restart: HashSet<String>,
    /// Whether the pod's first status was written (on a pod's worker).
    admitted_status: bool,
    /// When the pod's sandbox, refused for its RuntimeClass, is tried again (on a
    /// pod's worker).
    sandbox_retry_at: Option<Instant>,
    /// Whether the final delete of a pod that never got a sandbox was asked for.
    finish_sent: bool,
    /// The node's relist of the workers' containers (on the dispatcher).
    relist: relist::Relist,
    /// The snapshot version of the last dispatcher pass that left nothing pending:
    /// while the snapshot stays at it, a pass only relists (on the dispatcher).
    quiet_at: Option<u64>,
    /// How many pods the last pass wanted (on the dispatcher).
    desired_count: usize,
    /// Evictions the eviction manager asked for (shared by all).
    evictions: Evictions,
    /// The pod's eviction, once its worker took it up (on a pod's worker).
    evicted: Option<crate::model::eviction::Eviction>,
    /// The termination barrier and its longest wait: a deleted pod's stop waits until
    /// its endpoints left the node's Service datapath.
    barrier: Option<(
        crate::controllers::endpoint_barrier::EndpointBarrier,
        Duration,
    )>,
}

/// A pod's sandbox to remove, with the deletion's grace period (seconds) if any.
type Removal = (SandboxRecord, Option<i64>);

/// Records an event about `pod` (its container `container`, when not empty), from
/// any thread.
fn record(
    events: Option<&crate::controllers::events::Recorder>,
    pod: &Pod,
    container: &str,
    warning: bool,
    reason: &str,
    message: String,
) {
    let Some(events) = events else {
        return;
    };
    let field_path = match (&pod.spec, container) {
        (_, "") | (None, _) => String::new(),
        (Some(spec), c) => crate::controllers::events::field_path(spec, c),
    };
    events.record(crate::controllers::events::KubeletEvent {
        kind: "Pod",
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        pod: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        field_path,
        warning,
        reason: reason.into(),
        message,
    });
}

/// Where a container of the pod `sb` is reached by probes and hooks.
fn target(sb: &SandboxRecord, id: &str) -> crate::runtime::probe::Target {
    crate::runtime::probe::Target {
        id: id.to_string(),
        ip: sb.ip.parse().unwrap_or(crate::runtime::probe::LOOPBACK),
        netns: (!sb.host_network).then(|| crate::sys::ns::pin_path(&sb.ns_dir, "net")),
    }
}

/// Where a background thread records events: the recorder and the pod.
type Notify = Option<(crate::controllers::events::Recorder, Pod)>;

impl Runner {
    pub fn new(rt: Runtime, source: Source, node_ip: String, timing: Timing) -> Self {
        let facts = crate::sys::machine::read(Path::new("/"));
        let (cpu, mem) = crate::model::node::allocatable_cpu_memory(
            &facts,
            Default::default(),
            crate::model::eviction::DEFAULT_HARD,
        );
        let fit = crate::model::admission::NodeFit {
            name: facts.hostname.clone(),
            allocatable_cpu_milli: cpu,
            allocatable_memory: mem,
            max_pods: 110,
            labels: crate::model::admission::NodeLabels::new(
                [("kubernetes.io/hostname".to_string(), facts.hostname)]
                    .into_iter()
                    .collect(),
            ),
            runtime_handlers: Vec::new(),
            lsm: crate::sys::lsm::support(),
            user_namespaces: rt.cfg.userns_pool.is_some(),
            // Standalone: no node controller reads the signals.
            pressure: Default::default(),
            shutting_down: Default::default(),
        };
        Self::with_fit(rt, source, node_ip, timing, fit)
    }

    /// A runner for the node `fit` describes (nothing read from the machine).
    fn with_fit(
        rt: Runtime,
        source: Source,
        node_ip: String,
        timing: Timing,
        fit: crate::model::admission::NodeFit,
    ) -> Self {
        Self {
            rt,
            source,
            last_sent: Arc::default(),
            node_ip,
            timing,
            start_failures: HashMap::new(),
            backoff_base: HashMap::new(),
            removing: Arc::default(),
            pulls: Arc::default(),
            pull_backoff: HashMap::new(),
            probes: HashMap::new(),
            probe_results: Arc::default(),
            stopping: HashSet::new(),
            allocatable: (fit.allocatable_cpu_milli, fit.allocatable_memory),
            node_fit: fit,
            failed: HashMap::new(),
            volume_checks: HashMap::new(),
            events: None,
            backoff_reported: HashMap::new(),
            static_pods: None,
            mirrors_requested: HashMap::new(),
            mirrors_deleted: HashMap::new(),
            host_ports: Arc::default(),
            host_port_errors: HashSet::new(),
            last_manifest_error: None,
            workers: HashMap::new(),
            retiring: Vec::new(),
            termination: None,
            resize_state: Default::default(),
            reported_exits: HashSet::new(),
            killed_for_restart: HashSet::new(),
            admitted_status: false,
            sandbox_retry_at: None,
            finish_sent: false,
            relist: Default::default(),
            quiet_at: None,
            desired_count: 0,
            evictions: Evictions::default(),
            evicted: None,
            barrier: None,
        }
    }

    /// A runner for one pod's worker: what is shared with the dispatcher (runtime,
    /// source, timing, host ports, events) and fresh per-pod state.
    fn for_pod(&self) -> Self {
        let mut r = Self::with_fit(
            self.rt.clone(),
            self.source.clone(),
            self.node_ip.clone(),
            self.timing,
            self.node_fit.clone(),
        );
        r.allocatable = self.allocatable;
        r.events = self.events.clone();
        r.removing = Arc::clone(&self.removing);
        r.host_ports = Arc::clone(&self.host_ports);
        r.last_sent = Arc::clone(&self.last_sent);
        r.evictions = self.evictions.clone();
        r.barrier = self.barrier.clone();
        r
    }

    /// Holds a deleted pod's preStop hooks and SIGTERM until its endpoints left the
    /// node's Service datapath (`barrier`), at most `limit` and never past its grace
    /// period.
    pub fn with_termination_barrier_opt(
        mut self,
        barrier: Option<(
            crate::controllers::endpoint_barrier::EndpointBarrier,
            Duration,
        )>,
    ) -> Self {
        self.barrier = barrier;
        self
    }

    /// Takes the evictions the eviction manager asks for from `evictions`.
    pub fn with_evictions(mut self, evictions: Evictions) -> Self {
        self.evictions = evictions;
        self
    }

    /// Records kubelet's events about pods through `recorder`.
    pub fn with_events(mut self, recorder: crate::controllers::events::Recorder) -> Self {
        self.events = Some(recorder);
        self
    }

    /// Records an event about `pod` (its container `container`, when not empty).
    fn event(&self, pod: &Pod, container: &str, warning: bool, reason: &str, message: String) {
        record(
            self.events.as_ref(),
            pod,
            container,
            warning,
            reason,
            message,
        );
    }

    /// What a background thread needs to record events about `pod`.
    fn notify(&self, pod: &Pod) -> Notify {
        self.events.clone().map(|e| (e, pod.clone()))
    }

    /// The node as admission sees it (its name, labels, allocatable and max pods);
    /// resourceFieldRef limits default to the same allocatable.
    pub fn with_node_fit(mut self, fit: crate::model::admission::NodeFit) -> Self {
        self.allocatable = (fit.allocatable_cpu_milli, fit.allocatable_memory);
        self.node_fit = fit;
        self
    }
}

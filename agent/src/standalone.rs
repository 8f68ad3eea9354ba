//! The pod worker: runs the pods of a manifest directory (static pods, standalone
//! mode) or the pods the apiserver binds to this node. A manifest directory is read
//! again every resync: new pods start, removed or changed ones are stopped (a changed
//! manifest is a new pod, as with kubelet's static pods). Pod status goes to
//! `<state-dir>/pods/<uid>/pod.json`, where `kernlet pods` reads it, and for apiserver
//! pods also back to the apiserver.

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

/// Why a standalone plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("pod {pod} in {source_file}: {error}")]
    Resources {
        pod: String,
        source_file: String,
        error: QuantityError,
    },
}

/// What kernlet would run for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPlan {
    pub namespace: String,
    pub name: String,
    pub qos: &'static str,
    pub host_network: bool,
    /// `(name, image)` of init containers then containers, in start order.
    pub containers: Vec<(String, String)>,
}

/// Reads the manifests of `dir` and plans every pod.
pub fn plan(dir: &Path) -> Result<Vec<PodPlan>, StandaloneError> {
    let pods = manifest::load_dir(dir)?;
    pods.iter().map(plan_pod).collect()
}

fn plan_pod(mp: &ManifestPod) -> Result<PodPlan, StandaloneError> {
    let name = mp.pod.metadata.name.clone().unwrap_or_default();
    let spec = mp.pod.spec.clone().unwrap_or_default();
    let qos = qos_class(&spec).map_err(|error| StandaloneError::Resources {
        pod: name.clone(),
        source_file: mp.source.display().to_string(),
        error,
    })?;
    let containers = pod_lifecycle::all_containers(&spec)
        .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
        .collect();
    Ok(PodPlan {
        namespace: mp
            .pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name,
        qos: qos.as_str(),
        host_network: spec.host_network.unwrap_or(false),
        containers,
    })
}

/// The UID of a static pod: derived from where it came from and what it says, so the
/// same manifest is the same pod across restarts and a changed one is a new pod.
pub fn static_uid(source: &Path, pod: &Pod) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(source.as_os_str().as_encoded_bytes());
    ctx.update(&serde_json::to_vec(pod).unwrap_or_default());
    let h: String = ctx.finish().as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Timing of the standalone runner.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub resync: Duration,
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
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            backoff_reset: Duration::from_secs(600),
            sync_frequency: Duration::from_secs(60),
        }
    }
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
        updates: tokio::sync::mpsc::UnboundedSender<crate::controllers::pods::Update>,
        /// For reading volume contents (configMaps, secrets, tokens) from the worker
        /// thread.
        client: crate::client::SharedClient,
        handle: tokio::runtime::Handle,
    },
}

/// Runs pods: those of a manifest directory, or those bound to this node.
pub struct Runner {
    rt: Runtime,
    source: Source,
    /// The status last sent to the apiserver, by pod uid.
    /// (Shared by the dispatcher and the workers: a recreated mirror pod clears it.)
    last_sent: Arc<std::sync::Mutex<HashMap<String, serde_json::Value>>>,
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
}

/// A pod's sandbox to remove, with the deletion's grace period (seconds) if any.
type Removal = (SandboxRecord, Option<i64>);

/// One pod's worker: a thread of its own that syncs the pod every resync, or sooner when
/// the pod changes, so a pod whose volumes wait on a slow apiserver, or whose sync
/// fails, holds up no other pod.
struct PodWorker {
    uid: String,
    /// The latest pod object, and a count bumped at each change.
    pod: Arc<(std::sync::Mutex<(Pod, u64)>, std::sync::Condvar)>,
    stop: Arc<AtomicBool>,
    /// The last sync's error, for the daemon's account.
    last_error: Arc<std::sync::Mutex<Option<String>>>,
    thread: std::thread::JoinHandle<()>,
}

impl PodWorker {
    /// Hands the worker a newer pod object (wakes it when it differs).
    fn update(&self, pod: &Pod) {
        let (lock, wake) = &*self.pod;
        if let Ok(mut p) = lock.lock()
            && p.0 != *pod
        {
            p.0 = pod.clone();
            p.1 += 1;
            wake.notify_one();
        }
    }

    fn retire(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.pod.1.notify_one();
    }
}

/// Results of probe runs, by (container ID, kind).
type ProbeResults = Arc<std::sync::Mutex<HashMap<(String, probe::Kind), Result<String, String>>>>;

/// One probe of one running container.
struct ProbeRun {
    tracker: probe::Tracker,
    /// When the next run may start.
    next_at: Instant,
    in_flight: bool,
}

/// The annotations kubelet puts on static pods and their mirrors.
const CONFIG_SOURCE: &str = "kubernetes.io/config.source";
const CONFIG_HASH: &str = "kubernetes.io/config.hash";
const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";

/// Whether `pod` is a static pod (from this node's manifest directory).
fn is_static(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_SOURCE))
        .is_some_and(|s| s == "file")
}

/// Whether `pod` is a mirror pod (the apiserver's copy of a static pod).
fn is_mirror(pod: &Pod) -> bool {
    mirror_hash(pod).is_some()
}

/// The static pod a mirror pod stands for.
fn mirror_hash(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(CONFIG_MIRROR)
        .map(String::as_str)
}

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
    events.record(crate::controllers::events::PodEvent {
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

/// Stops container `id` (of spec `c`) as kubelet does: its preStop hook first, then
/// SIGTERM and SIGKILL at the end of `grace` — which the hook's time counts against,
/// with 2 s more for SIGTERM when the hook used it all.
fn stop_with_pre_stop(
    rt: &Runtime,
    sb: &SandboxRecord,
    c: Option<&k8s_openapi::api::core::v1::Container>,
    id: &str,
    grace: Duration,
    notify: &Notify,
) {
    let started = Instant::now();
    let hook = c.and_then(|c| {
        let h = c.lifecycle.as_ref()?.pre_stop.as_ref()?;
        crate::runtime::probe::Handler::of_hook(h).map(|h| (c, h))
    });
    if let Some((c, h)) = &hook
        && matches!(rt.container_state(id), ContainerState::Running { .. })
    {
        match crate::runtime::probe::run(rt, c, &target(sb, id), h, grace) {
            Ok(_) => {
                tracing::info!(pod = %format!("{}/{}", sb.namespace, sb.name), container = %c.name, "preStop hook done")
            }
            Err(why) => {
                tracing::warn!(pod = %format!("{}/{}", sb.namespace, sb.name), container = %c.name, "FailedPreStopHook: {why}");
                if let Some((events, pod)) = notify {
                    record(
                        Some(events),
                        pod,
                        &c.name,
                        true,
                        "FailedPreStopHook",
                        format!("PreStopHook failed: {why}"),
                    );
                }
            }
        }
    }
    let left = grace
        .saturating_sub(started.elapsed())
        .max(if hook.is_some() {
            Duration::from_secs(2)
        } else {
            Duration::ZERO
        });
    if let Err(e) = rt.stop_container(id, left) {
        tracing::warn!("stopping container {id}: {e}");
    }
}

/// Where a background thread records events: the recorder and the pod.
type Notify = Option<(crate::controllers::events::Recorder, Pod)>;

/// Background pulls by (pod uid, container, restart).
type Pulls = Arc<std::sync::Mutex<HashMap<(String, String, u32), PullState>>>;

/// A background pull for one container start.
enum PullState {
    Pulling,
    /// The result and how long the pull took.
    Done(
        Box<Result<crate::runtime::image::ImageRecord, crate::runtime::RuntimeError>>,
        Duration,
    ),
}

/// Whether a container's image is ready to start it.
enum ImageReady {
    Yes(crate::runtime::image::ImageRecord),
    Pulling(String),
    /// The last pull failed and the next waits: kubelet's `ImagePullBackOff` message.
    BackOff(String),
    Failed(crate::runtime::RuntimeError),
}

impl Runner {
    pub fn new(rt: Runtime, source: Source, node_ip: String, timing: Timing) -> Self {
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
            allocatable: {
                let facts = crate::sys::machine::read(Path::new("/"));
                crate::model::node::allocatable_cpu_memory(&facts, Default::default())
            },
            node_fit: {
                let facts = crate::sys::machine::read(Path::new("/"));
                let (cpu, mem) =
                    crate::model::node::allocatable_cpu_memory(&facts, Default::default());
                crate::model::admission::NodeFit {
                    name: facts.hostname.clone(),
                    allocatable_cpu_milli: cpu,
                    allocatable_memory: mem,
                    max_pods: 110,
                    labels: [("kubernetes.io/hostname".to_string(), facts.hostname)]
                        .into_iter()
                        .collect(),
                }
            },
            failed: HashMap::new(),
            volume_checks: HashMap::new(),
            events: None,
            backoff_reported: HashMap::new(),
            static_pods: None,
            mirrors_requested: HashMap::new(),
            host_ports: Arc::default(),
            host_port_errors: HashSet::new(),
            last_manifest_error: None,
            workers: HashMap::new(),
            retiring: Vec::new(),
        }
    }

    /// A runner for one pod's worker: what is shared with the dispatcher (runtime,
    /// source, timing, host ports, events) and fresh per-pod state.
    fn for_pod(&self) -> Self {
        let mut r = Self::new(
            self.rt.clone(),
            self.source.clone(),
            self.node_ip.clone(),
            self.timing,
        );
        r.allocatable = self.allocatable;
        r.node_fit = self.node_fit.clone();
        r.events = self.events.clone();
        r.removing = Arc::clone(&self.removing);
        r.host_ports = Arc::clone(&self.host_ports);
        r.last_sent = Arc::clone(&self.last_sent);
        r
    }

    /// Starts the worker of pod `uid`; `None` (said in the log) when no thread can be
    /// had, and the next pass tries again.
    fn spawn_worker(&self, uid: &str, pod: &Pod) -> Option<PodWorker> {
        let mut runner = self.for_pod();
        let shared = Arc::new((
            std::sync::Mutex::new((pod.clone(), 0)),
            std::sync::Condvar::new(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let last_error = Arc::new(std::sync::Mutex::new(None));
        let (uid_, shared_, stop_, error_) = (
            uid.to_string(),
            Arc::clone(&shared),
            Arc::clone(&stop),
            Arc::clone(&last_error),
        );
        let name = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            pod.metadata.name.as_deref().unwrap_or("")
        );
        let thread = std::thread::Builder::new()
            .name(format!("pod-{}", &uid[..uid.len().min(8)]))
            .spawn(move || {
                let (lock, wake) = &*shared_;
                while !stop_.load(Ordering::Relaxed) {
                    let Ok((pod, seen)) = lock.lock().map(|p| p.clone()) else {
                        return;
                    };
                    let error = runner.sync_pod(&uid_, &pod).err().map(|e| {
                        tracing::warn!(pod = %name, "{e}");
                        format!("pod {name}: {e}")
                    });
                    if let Ok(mut l) = error_.lock() {
                        *l = error;
                    }
                    // Until the resync, a change of the pod or the stop.
                    let Ok(guard) = lock.lock() else { return };
                    let _ = wake.wait_timeout_while(guard, runner.timing.resync, |p| {
                        p.1 == seen && !stop_.load(Ordering::Relaxed)
                    });
                }
            })
            .map_err(|e| tracing::warn!(pod = %uid, "cannot start the pod's worker thread: {e}"))
            .ok()?;
        Some(PodWorker {
            uid: uid.to_string(),
            pod: shared,
            stop,
            last_error,
            thread,
        })
    }

    /// Runs until `stop`; running pods are left running (a restart adopts them).
    pub fn run(mut self, stop: &AtomicBool) {
        let removed = self.rt.remove_orphans();
        if !removed.is_empty() {
            tracing::info!(
                ?removed,
                "removed what an earlier run left without a record"
            );
        }
        while !stop.load(Ordering::Relaxed) {
            self.tick();
            let mut slept = Duration::ZERO;
            while slept < self.timing.resync && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                slept += Duration::from_millis(50);
            }
        }
        // Running pods are left running; the workers end after their current sync.
        let workers: Vec<PodWorker> = self
            .workers
            .drain()
            .map(|(_, w)| w)
            .chain(self.retiring.drain(..).map(|(w, _)| w))
            .collect();
        for w in &workers {
            w.retire();
        }
        // A worker inside a slow apiserver read is not waited for past a few seconds:
        // the process is ending, and nothing it holds needs more than that to settle.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !workers.iter().all(|w| w.thread.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        for w in workers {
            if w.thread.is_finished() {
                let _ = w.thread.join();
            }
        }
    }

    fn desired(&mut self) -> Option<Vec<(String, Pod)>> {
        let manifests = match &self.source {
            Source::Manifests(dir) => dir.clone(),
            Source::Api { snapshot, .. } => {
                // Pods being deleted are no longer wanted: they are stopped and removed.
                // Mirror pods stand for static pods: they are not run again.
                let pods = snapshot.lock().ok()?.clone()?;
                let mut out: Vec<(String, Pod)> = pods
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .filter(|p| !is_mirror(p))
                    .filter_map(|p| Some((p.metadata.uid.clone()?, p)))
                    .collect();
                if let Some((dir, node)) = self.static_pods.clone() {
                    out.extend(
                        self.static_pods_of(&dir)?
                            .into_iter()
                            .map(|(uid, mut pod)| {
                                // kubelet's names for static pods: <name>-<node>, bound to it.
                                let name = format!(
                                    "{}-{node}",
                                    pod.metadata.name.clone().unwrap_or_default()
                                );
                                pod.metadata.name = Some(name);
                                pod.spec.get_or_insert_with(Default::default).node_name =
                                    Some(node.clone());
                                let a = pod
                                    .metadata
                                    .annotations
                                    .get_or_insert_with(Default::default);
                                a.insert(CONFIG_SOURCE.into(), "file".into());
                                a.insert(CONFIG_HASH.into(), uid.clone());
                                (uid, pod)
                            }),
                    );
                }
                return Some(out);
            }
        };
        self.static_pods_of(&manifests)
    }

    /// The pods of a manifest directory with their uids; `None` (and a log line) when
    /// the directory cannot be read as a whole.
    fn static_pods_of(&mut self, manifests: &Path) -> Option<Vec<(String, Pod)>> {
        match manifest::load_dir(manifests) {
            Ok(pods) => {
                self.last_manifest_error = None;
                Some(
                    pods.into_iter()
                        .map(|mp| {
                            let uid = static_uid(&mp.source, &mp.pod);
                            let mut pod = mp.pod;
                            pod.metadata.uid = Some(uid.clone());
                            pod.metadata
                                .namespace
                                .get_or_insert_with(|| "default".into());
                            (uid, pod)
                        })
                        .collect(),
                )
            }
            Err(e) => {
                let msg = e.to_string();
                if self.last_manifest_error.as_ref() != Some(&msg) {
                    tracing::error!("{msg}; running pods are kept until the manifests are fixed");
                    self.last_manifest_error = Some(msg);
                }
                None
            }
        }
    }

    /// One pass of the dispatcher: admit new pods and give each a worker, hand the
    /// workers their pods' changes, retire the workers of pods that went away and
    /// remove those pods once their workers have ended.
    pub fn tick(&mut self) {
        let Some(desired) = self.desired() else {
            return;
        };
        let wanted: HashSet<String> = desired.iter().map(|(u, _)| u.clone()).collect();
        // Admission counts every pod the node has taken: with a sandbox or a worker.
        let mut with_sandbox: HashSet<String> =
            self.rt.sandboxes().into_iter().map(|sb| sb.uid).collect();
        with_sandbox.extend(self.workers.keys().cloned());
        // Refusals of pods that are gone are forgotten.
        self.failed
            .retain(|uid, _| wanted.contains(uid) || with_sandbox.contains(uid));
        for (uid, pod) in &desired {
            if self.removing.lock().is_ok_and(|r| r.contains(uid)) {
                continue;
            }
            if let Some(w) = self.workers.get(uid) {
                w.update(pod);
                continue;
            }
            // A pod back while its last worker is still ending waits for the removal.
            if self.retiring.iter().any(|(w, _)| w.uid == *uid) {
                continue;
            }
            if !with_sandbox.contains(uid) && !self.admit(uid, pod, &desired, &with_sandbox) {
                if let Err(e) = self.report_refused(uid, pod) {
                    tracing::warn!(pod = %pod.metadata.name.clone().unwrap_or_default(), "{e}");
                }
                continue;
            }
            if let Some(w) = self.spawn_worker(uid, pod) {
                self.workers.insert(uid.clone(), w);
                with_sandbox.insert(uid.clone());
            }
        }
        // The daemon's account: the first worker's error, else synced.
        let failure = self
            .workers
            .values()
            .find_map(|w| w.last_error.lock().ok().and_then(|e| e.clone()));
        match failure {
            Some(e) => crate::daemon::failed("pods", &e),
            None => crate::daemon::synced(
                "pods",
                serde_json::json!({"desired": desired.len(), "workers": self.workers.len()}),
            ),
        }
        self.sync_mirrors(&desired);
        let sandboxes = self.rt.sandboxes();
        // The grace periods of deletions in the apiserver, by pod uid.
        let deletion_grace: HashMap<String, i64> = match &self.source {
            Source::Api { snapshot, .. } => snapshot
                .lock()
                .ok()
                .and_then(|s| s.clone())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| Some((p.metadata.uid?, p.metadata.deletion_grace_period_seconds?)))
                .collect(),
            Source::Manifests(_) => HashMap::new(),
        };
        // Pods no longer wanted: their workers are told to stop, and each pod is
        // removed once its worker has ended (so nothing starts a container behind the
        // removal).
        let gone: Vec<String> = self
            .workers
            .keys()
            .filter(|uid| !wanted.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(w) = self.workers.remove(&uid) {
                w.retire();
                self.retiring.push((w, None));
            }
        }
        for sb in &sandboxes {
            if wanted.contains(&sb.uid) {
                continue;
            }
            match self.retiring.iter_mut().find(|(w, _)| w.uid == sb.uid) {
                Some((_, removal)) => {
                    *removal = Some((sb.clone(), deletion_grace.get(&sb.uid).copied()));
                }
                None => self.remove_pod(sb.clone(), deletion_grace.get(&sb.uid).copied()),
            }
        }
        let (ended, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retiring)
            .into_iter()
            .partition(|(w, _)| w.thread.is_finished());
        self.retiring = still;
        for (w, removal) in ended {
            let _ = w.thread.join();
            if let Some((sb, grace)) = removal {
                self.remove_pod(sb, grace);
            }
        }
        // A pod deleted before anything of it ran has nothing to stop: it is removed
        // from the apiserver at once.
        if let Source::Api {
            snapshot, updates, ..
        } = &self.source
        {
            let deleting: Vec<Pod> = snapshot
                .lock()
                .ok()
                .and_then(|s| s.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_some())
                .collect();
            for p in deleting {
                let uid = p.metadata.uid.clone().unwrap_or_default();
                if !sandboxes.iter().any(|sb| sb.uid == uid) {
                    let _ = updates.send(crate::controllers::pods::Update::Finished {
                        namespace: p.metadata.namespace.clone().unwrap_or_default(),
                        name: p.metadata.name.clone().unwrap_or_default(),
                        uid,
                    });
                }
            }
        }
    }

    fn views(&self, uid: &str, pod: &Pod) -> Vec<View> {
        let spec = pod.spec.clone().unwrap_or_default();
        let records = self.rt.containers();
        let mut views = Vec::new();
        for c in pod_lifecycle::all_containers(&spec) {
            let mine = runs_of(&records, uid, &c.name);
            let mut v = View::new(&c.name);
            v.image = c.image.clone().unwrap_or_default();
            let observe = |id: &str| match self.rt.container_state(id) {
                ContainerState::Created => Observed::NotStarted,
                ContainerState::Running { started_at, .. } => Observed::Running { started_at },
                ContainerState::Exited { exit, started_at } => Observed::Exited {
                    code: exit.exit_code,
                    reason: exit.reason().to_string(),
                    started_at: started_at.unwrap_or_default(),
                    finished_at: exit.finished_at.clone(),
                    message: exit.message,
                },
                ContainerState::Failed(why) => Observed::StartFailed {
                    reason: "RunContainerError".into(),
                    message: why,
                },
            };
            if let Some(cur) = mine.last() {
                v.restarts = cur.restart;
                v.current = observe(&cur.id);
                v.id = cur.id.clone();
                v.image = cur.image_ref.clone();
                v.image_id = cur.image_id.clone();
            }
            if mine.len() >= 2 {
                v.last = Some(observe(&mine[mine.len() - 2].id));
            }
            let verdict = |kind: probe::Kind| {
                kind.of(c).map(|_| {
                    self.probes
                        .get(&(v.id.clone(), kind))
                        .is_some_and(|r| r.tracker.verdict == Some(true))
                })
            };
            v.ready = verdict(probe::Kind::Readiness);
            v.started = verdict(probe::Kind::Startup);
            // A start that failed before a container existed (or whose container
            // failed to start) shows as waiting, with the reason.
            let latest_failed = mine.last().is_none_or(|r| {
                matches!(self.rt.container_state(&r.id), ContainerState::Failed(_))
            });
            if latest_failed
                && let Some((reason, message)) =
                    self.start_failures.get(&(uid.to_string(), c.name.clone()))
            {
                v.current = Observed::StartFailed {
                    reason: reason.clone(),
                    message: message.clone(),
                };
            }
            views.push(v);
        }
        views
    }

    fn may_restart(&self, uid: &str, v: &View) -> bool {
        self.restart_wait(uid, v).0
    }

    /// Whether an exited container may restart now, and the back-off delay that
    /// applies to it.
    fn restart_wait(&self, uid: &str, v: &View) -> (bool, Duration) {
        let key = (uid.to_string(), v.name.clone());
        let base = self.backoff_base.get(&key).copied().unwrap_or(0);
        let (finished, ran) = match &v.current {
            Observed::Exited {
                started_at,
                finished_at,
                ..
            } => {
                let f = parse_time(finished_at);
                let ran = match (parse_time(started_at), f) {
                    (Some(s), Some(f)) => f.as_second() - s.as_second(),
                    _ => 0,
                };
                (f, ran)
            }
            _ => (None, 0),
        };
        let n = if ran >= self.timing.backoff_reset.as_secs() as i64 {
            1
        } else {
            (v.restarts + 1).saturating_sub(base)
        };
        let delay = pod_lifecycle::backoff(n, self.timing.backoff_initial, self.timing.backoff_max);
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        (
            finished.is_none_or(|f| now >= f.as_second() + delay.as_secs() as i64),
            delay,
        )
    }

    fn sync_pod(&mut self, uid: &str, pod: &Pod) -> Result<(), crate::runtime::RuntimeError> {
        let sb = self.rt.run_sandbox(pod, uid, &self.node_ip)?;
        let spec = pod.spec.clone().unwrap_or_default();
        if let Some(deadline) = spec.active_deadline_seconds
            && !self.failed.contains_key(uid)
            && parse_time(&sb.created_at).is_some_and(|t| {
                k8s_openapi::jiff::Timestamp::now().as_second() - t.as_second() >= deadline
            })
        {
            tracing::info!(pod = %format!("{}/{}", sb.namespace, sb.name), "activeDeadlineSeconds ({deadline} s) passed; stopping the pod");
            self.event(
                pod,
                "",
                false,
                "DeadlineExceeded",
                "Pod was active on the node longer than the specified deadline".into(),
            );
            self.failed.insert(
                uid.to_string(),
                crate::model::admission::Refusal {
                    reason: "DeadlineExceeded".into(),
                    message: "Pod was active on the node longer than the specified deadline".into(),
                },
            );
        }
        if self.failed.contains_key(uid) {
            // Failed for good: nothing starts again; what runs is stopped.
            let views = self.views(uid, pod);
            let grace = Duration::from_secs(
                spec.termination_grace_period_seconds
                    .and_then(|g| u64::try_from(g).ok())
                    .unwrap_or(30),
            );
            for v in &views {
                if matches!(v.current, Observed::Running { .. })
                    && self.stopping.insert(v.id.clone())
                {
                    let c = pod_lifecycle::all_containers(&spec)
                        .find(|c| c.name == v.name)
                        .cloned();
                    let (rt, sb2, id) = (self.rt.clone(), sb.clone(), v.id.clone());
                    self.event(
                        pod,
                        &v.name,
                        false,
                        "Killing",
                        format!("Stopping container {}", v.name),
                    );
                    let notify = self.notify(pod);
                    std::thread::spawn(move || {
                        stop_with_pre_stop(&rt, &sb2, c.as_ref(), &id, grace, &notify)
                    });
                }
            }
            return self.write_status(&sb, pod, &views);
        }
        if let Err(why) = self.prepare_volumes(uid, pod) {
            // The containers wait, with the reason, until the volumes can be written.
            let spec = pod.spec.clone().unwrap_or_default();
            for c in pod_lifecycle::all_containers(&spec) {
                self.start_failures.insert(
                    (uid.to_string(), c.name.clone()),
                    ("CreateContainerConfigError".into(), why.clone()),
                );
            }
            tracing::warn!(pod = %format!("{}/{}", sb.namespace, sb.name), "{why}");
            self.event(
                pod,
                "",
                true,
                "FailedMount",
                format!("MountVolume.SetUp failed: {why}"),
            );
            let views = self.views(uid, pod);
            return self.write_status(&sb, pod, &views);
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let views = self.views(uid, pod);
        // A container waiting out its crash-loop back-off is reported once per run.
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        for v in &views {
            if let Observed::Exited { code, .. } = v.current
                && (policy == "Always"
                    || (policy == "OnFailure" && code != 0)
                    || pod_lifecycle::all_containers(&spec)
                        .any(|c| c.name == v.name && pod_lifecycle::is_sidecar(c)))
                && !self.may_restart(uid, v)
                && !self.backoff_reported.contains_key(&v.id)
            {
                self.backoff_reported.insert(v.id.clone(), Instant::now());
                self.event(
                    pod,
                    &v.name,
                    true,
                    "BackOff",
                    format!(
                        "Back-off restarting failed container {} in pod {}_{}({uid})",
                        v.name, sb.name, sb.namespace
                    ),
                );
            }
        }
        let actions = {
            let allowed: HashMap<String, bool> = views
                .iter()
                .map(|v| (v.name.clone(), self.may_restart(uid, v)))
                .collect();
            pod_lifecycle::next(&spec, &views, &|name| {
                allowed.get(name).copied().unwrap_or(true)
            })
        };
        for action in actions {
            let (name, restart) = match action {
                Action::Start { name, restart } => (name, restart),
                Action::Stop { name } => {
                    self.stop_sidecar(pod, &sb, &spec, &views, &name);
                    continue;
                }
            };
            let Some(c) = pod_lifecycle::all_containers(&spec).find(|c| c.name == name) else {
                continue;
            };
            let key = (uid.to_string(), name.clone());
            if let Some(v) = views.iter().find(|v| v.name == name)
                && let Observed::Exited {
                    started_at,
                    finished_at,
                    ..
                } = &v.current
                && let (Some(s), Some(f)) = (parse_time(started_at), parse_time(finished_at))
                && f.as_second() - s.as_second() >= self.timing.backoff_reset.as_secs() as i64
            {
                self.backoff_base.insert(key.clone(), restart);
            }
            let image = match self.image_ready(pod, c, restart) {
                ImageReady::Yes(image) => image,
                ImageReady::Pulling(reference) => {
                    self.start_failures.insert(
                        key,
                        (
                            "ContainerCreating".into(),
                            format!("pulling image {reference}"),
                        ),
                    );
                    continue;
                }
                ImageReady::BackOff(message) => {
                    self.start_failures
                        .insert(key, ("ImagePullBackOff".into(), message));
                    continue;
                }
                ImageReady::Failed(e) => {
                    tracing::warn!(pod = %format!("{}/{}", sb.namespace, sb.name), container = %name, "{e}");
                    self.start_failures
                        .insert(key, (e.reason().into(), e.to_string()));
                    continue;
                }
            };
            // A container that failed to start is replaced, not kept as a run.
            if let Some(v) = views.iter().find(|v| v.name == name)
                && !v.id.is_empty()
                && matches!(self.rt.container_state(&v.id), ContainerState::Failed(_))
            {
                let _ = self.rt.remove_container(&v.id);
            }
            let c = match self.resolve_env(&sb, pod, c) {
                Ok(c) => c,
                Err(why) => {
                    tracing::warn!(pod = %format!("{}/{}", sb.namespace, sb.name), container = %name, "{why}");
                    self.event(pod, &name, true, "Failed", format!("Error: {why}"));
                    self.start_failures
                        .insert(key, ("CreateContainerConfigError".into(), why));
                    continue;
                }
            };
            let c = &c;
            match self.rt.start_container(&sb, pod, c, restart, &image) {
                Ok(r) => {
                    self.start_failures.remove(&key);
                    tracing::info!(pod = %format!("{}/{}", sb.namespace, sb.name), container = %name, restart, id = %r.id, "container started");
                    self.event(pod, &name, false, "Created", "Container created".into());
                    self.event(pod, &name, false, "Started", "Container started".into());
                    self.post_start(pod, &sb, &spec, c, &r.id);
                }
                Err(e) => {
                    let reason = e.reason();
                    tracing::warn!(pod = %format!("{}/{}", sb.namespace, sb.name), container = %name, "{e}");
                    self.event(pod, &name, true, "Failed", format!("Error: {e}"));
                    self.start_failures
                        .insert(key, (reason.into(), e.to_string()));
                }
            }
        }
        self.prune(uid, &spec);
        self.open_host_ports(&sb, pod);
        let views = self.views(uid, pod);
        self.run_probes(&sb, pod, &views);
        let views = self.views(uid, pod);
        self.write_status(&sb, pod, &views)
    }

    /// Opens the pod's host ports (a host-network pod's containers bind them
    /// themselves): each relays to its container port inside the pod.
    fn open_host_ports(&mut self, sb: &SandboxRecord, pod: &Pod) {
        use crate::runtime::hostport::{HostPorts, Key, Proto, Target};
        if sb.host_network {
            return;
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let ports: Vec<_> = pod_lifecycle::all_containers(&spec)
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.host_port.is_some_and(|h| h > 0))
            .cloned()
            .collect();
        if ports.is_empty() {
            return;
        }
        let host_ports = Arc::clone(&self.host_ports);
        let Ok(mut host_ports) = host_ports.lock() else {
            return;
        };
        if host_ports.is_none() {
            match HostPorts::new() {
                Ok(h) => *host_ports = Some(h),
                Err(e) => {
                    tracing::warn!("cannot start the host port proxies: {e}");
                    return;
                }
            }
        }
        let Some(hp) = host_ports.as_mut() else {
            return;
        };
        let pod_ip: IpAddr = sb.ip.parse().unwrap_or(crate::runtime::probe::LOOPBACK);
        for p in ports {
            let proto = if p.protocol.as_deref() == Some("UDP") {
                Proto::Udp
            } else {
                Proto::Tcp
            };
            let (Ok(host_port), Ok(container_port)) = (
                u16::try_from(p.host_port.unwrap_or(0)),
                u16::try_from(p.container_port),
            ) else {
                continue;
            };
            let host_ip: IpAddr = p
                .host_ip
                .as_deref()
                .filter(|i| !i.is_empty())
                .and_then(|i| i.parse().ok())
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
            let key = Key {
                proto,
                host_ip,
                host_port,
            };
            let target = Target {
                netns: crate::sys::ns::pin_path(&sb.ns_dir, "net"),
                addr: std::net::SocketAddr::new(pod_ip, container_port),
            };
            if let Err(e) = hp.ensure(&sb.uid, &key, &target) {
                let id = (sb.uid.clone(), format!("{host_ip}:{host_port}/{proto:?}"));
                if self.host_port_errors.insert(id) {
                    tracing::warn!(pod = %format!("{}/{}", sb.namespace, sb.name), "hostPort: {e}");
                }
            }
        }
    }

    /// Runs the static pods of `dir` too (with an apiserver), as `<name>-<node>` with
    /// mirror pods in the apiserver.
    pub fn with_static_pods_opt(mut self, dir: Option<PathBuf>, node: String) -> Self {
        self.static_pods = dir.map(|d| (d, node));
        self
    }

    /// Keeps a mirror pod in the apiserver for each static pod that runs, and none
    /// for those gone; a mirror deleted by someone is created again.
    fn sync_mirrors(&mut self, desired: &[(String, Pod)]) {
        let Source::Api {
            snapshot, updates, ..
        } = &self.source
        else {
            return;
        };
        let Some((_, node)) = self.static_pods.clone() else {
            return;
        };
        let api_pods: Vec<Pod> = snapshot
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .unwrap_or_default();
        let statics: Vec<&(String, Pod)> = desired.iter().filter(|(_, p)| is_static(p)).collect();
        let now = Instant::now();
        for (uid, pod) in &statics {
            let (ns, name) = (
                pod.metadata.namespace.clone().unwrap_or_default(),
                pod.metadata.name.clone().unwrap_or_default(),
            );
            let mirror = api_pods.iter().find(|p| {
                p.metadata.namespace.as_deref() == Some(ns.as_str())
                    && p.metadata.name.as_deref() == Some(name.as_str())
            });
            match mirror {
                Some(m)
                    if mirror_hash(m) == Some(uid.as_str())
                        && m.metadata.deletion_timestamp.is_none() =>
                {
                    continue;
                }
                Some(m) if is_mirror(m) && m.metadata.deletion_timestamp.is_none() => {
                    // A mirror of an older manifest: replaced.
                    let _ = updates.send(crate::controllers::pods::Update::Finished {
                        namespace: ns.clone(),
                        name: name.clone(),
                        uid: m.metadata.uid.clone().unwrap_or_default(),
                    });
                    continue;
                }
                Some(m) if !is_mirror(m) => {
                    tracing::warn!(pod = %format!("{ns}/{name}"), "a pod that is no mirror has the static pod's name; no mirror pod for it");
                    continue;
                }
                _ => {}
            }
            if self
                .mirrors_requested
                .get(uid)
                .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(5))
            {
                continue;
            }
            self.mirrors_requested.insert(uid.clone(), now);
            // Its status goes again once the mirror exists.
            if let Ok(mut l) = self.last_sent.lock() {
                l.remove(uid);
            }
            let mut spec =
                serde_json::to_value(pod.spec.clone().unwrap_or_default()).unwrap_or_default();
            if let Some(m) = spec.as_object_mut() {
                m.remove("serviceAccountName");
                m.remove("serviceAccount");
            }
            let mut annotations = pod.metadata.annotations.clone().unwrap_or_default();
            annotations.insert(CONFIG_MIRROR.into(), uid.clone());
            let _ = updates.send(crate::controllers::pods::Update::CreateMirror {
                node: node.clone(),
                key: format!("mirror:{uid}"),
                pod: json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": ns, "labels": pod.metadata.labels, "annotations": annotations},
                    "spec": spec,
                }),
            });
        }
        // Mirrors whose static pod is gone go too.
        let wanted: HashSet<&str> = statics.iter().map(|(u, _)| u.as_str()).collect();
        for m in api_pods
            .iter()
            .filter(|p| is_mirror(p) && p.metadata.deletion_timestamp.is_none())
        {
            let owned_here =
                m.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str());
            if owned_here && mirror_hash(m).is_some_and(|h| !wanted.contains(h)) {
                let _ = updates.send(crate::controllers::pods::Update::Finished {
                    namespace: m.metadata.namespace.clone().unwrap_or_default(),
                    name: m.metadata.name.clone().unwrap_or_default(),
                    uid: m.metadata.uid.clone().unwrap_or_default(),
                });
            }
        }
        self.mirrors_requested
            .retain(|u, _| wanted.contains(u.as_str()));
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

    /// Admits a pod that has no sandbox yet, as kubelet does; a refused one is
    /// remembered and reported failed.
    fn admit(
        &mut self,
        uid: &str,
        pod: &Pod,
        desired: &[(String, Pod)],
        sandboxes: &HashSet<String>,
    ) -> bool {
        if self.failed.contains_key(uid) {
            return false;
        }
        if sandboxes.contains(uid) {
            return true;
        }
        let admitted: Vec<&k8s_openapi::api::core::v1::PodSpec> = desired
            .iter()
            .filter(|(u, _)| u != uid && sandboxes.contains(u) && !self.failed.contains_key(u))
            .filter_map(|(_, p)| p.spec.as_ref())
            .collect();
        let spec = pod.spec.clone().unwrap_or_default();
        match crate::model::admission::admit(&spec, &admitted, &self.node_fit) {
            Ok(()) => true,
            Err(r) => {
                tracing::warn!(pod = %format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or_default(), pod.metadata.name.as_deref().unwrap_or_default()),
                    reason = %r.reason, "pod rejected: {}", r.message);
                self.event(pod, "", true, &r.reason, r.message.clone());
                self.failed.insert(
                    uid.to_string(),
                    crate::model::admission::Refusal {
                        reason: r.reason,
                        message: format!("Pod was rejected: {}", r.message),
                    },
                );
                false
            }
        }
    }

    /// The status of a pod refused at admission: failed, with the reason; it never
    /// got a sandbox.
    fn report_refused(&mut self, uid: &str, pod: &Pod) -> Result<(), crate::runtime::RuntimeError> {
        let Some(r) = self.failed.get(uid).cloned() else {
            return Ok(());
        };
        let status = json!({
            "phase": "Failed", "reason": r.reason, "message": r.message,
            "hostIP": self.node_ip, "hostIPs": [{"ip": self.node_ip}],
        });
        let (ns, name) = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        self.publish(uid, &ns, &name, pod, status)
    }

    /// Container `c` with its environment resolved (see [`crate::model::env`]): from
    /// the apiserver for its pods; a static pod may use only its own fields.
    fn resolve_env(
        &self,
        sb: &SandboxRecord,
        pod: &Pod,
        c: &k8s_openapi::api::core::v1::Container,
    ) -> Result<k8s_openapi::api::core::v1::Container, String> {
        let ns = sb.namespace.clone();
        let lookup = |secret: bool, name: &str| match &self.source {
            Source::Api { client, handle, .. } if !is_static(pod) => handle.block_on(
                crate::controllers::pods::source_data(client, &ns, secret, name),
            ),
            _ => Err(format!(
                "a static pod cannot use {} {name:?}: only pods from the apiserver may refer to configMaps and secrets",
                if secret { "secret" } else { "configmap" }
            )),
        };
        let service_env = match &self.source {
            Source::Api { client, handle, .. } => {
                let links = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.enable_service_links)
                    .unwrap_or(true);
                handle.block_on(crate::controllers::pods::service_env(client, &ns, links))?
            }
            Source::Manifests(_) => Vec::new(),
        };
        let pod_ip = if sb.ip.is_empty() { "" } else { sb.ip.as_str() };
        crate::model::env::resolve(
            pod,
            c,
            &crate::model::env::Sources {
                lookup: &lookup,
                node_ip: &self.node_ip,
                pod_ip,
                allocatable_cpu_milli: self.allocatable.0,
                allocatable_memory: self.allocatable.1,
                service_env,
            },
        )
    }

    /// Stops a sidecar whose main containers are done (once; in the background).
    fn stop_sidecar(
        &mut self,
        pod: &Pod,
        sb: &SandboxRecord,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        views: &[View],
        name: &str,
    ) {
        let Some(v) = views.iter().find(|v| v.name == name) else {
            return;
        };
        if !self.stopping.insert(v.id.clone()) {
            return;
        }
        let grace = Duration::from_secs(
            spec.termination_grace_period_seconds
                .and_then(|g| u64::try_from(g).ok())
                .unwrap_or(30),
        );
        let c = pod_lifecycle::all_containers(spec)
            .find(|c| c.name == name)
            .cloned();
        let (rt, sb, id) = (self.rt.clone(), sb.clone(), v.id.clone());
        tracing::info!(pod = %format!("{}/{}", sb.namespace, sb.name), container = %name, "the main containers are done; stopping the sidecar");
        self.event(
            pod,
            name,
            false,
            "Killing",
            format!("Stopping container {name}"),
        );
        let notify = self.notify(pod);
        std::thread::spawn(move || stop_with_pre_stop(&rt, &sb, c.as_ref(), &id, grace, &notify));
    }

    /// Runs a container's postStart hook in the background; when it fails the
    /// container is killed (FailedPostStartHook) and restarts by the pod's policy.
    fn post_start(
        &self,
        pod: &Pod,
        sb: &SandboxRecord,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        c: &k8s_openapi::api::core::v1::Container,
        id: &str,
    ) {
        let Some(h) = c
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref())
            .and_then(crate::runtime::probe::Handler::of_hook)
        else {
            return;
        };
        let grace = Duration::from_secs(
            spec.termination_grace_period_seconds
                .and_then(|g| u64::try_from(g).ok())
                .unwrap_or(30),
        );
        let (rt, sb, c, id) = (self.rt.clone(), sb.clone(), c.clone(), id.to_string());
        let notify = self.notify(pod);
        std::thread::spawn(move || {
            // kubelet gives postStart no timeout of its own; a stuck hook is bounded
            // here by the pod's grace period, at least 2 minutes.
            let limit = grace.max(Duration::from_secs(120));
            if let Err(why) = crate::runtime::probe::run(&rt, &c, &target(&sb, &id), &h, limit) {
                tracing::warn!(pod = %format!("{}/{}", sb.namespace, sb.name), container = %c.name,
                    "FailedPostStartHook: {why}; killing the container");
                if let Some((events, pod)) = &notify {
                    record(
                        Some(events),
                        pod,
                        &c.name,
                        true,
                        "FailedPostStartHook",
                        format!("PostStartHook failed: {why}"),
                    );
                }
                stop_with_pre_stop(&rt, &sb, Some(&c), &id, grace, &notify);
            }
        });
    }

    /// Starts the probes that are due, counts the results that came in, and acts on
    /// the verdicts: a failed liveness or startup probe kills the container (it then
    /// restarts by the pod's restart policy); readiness shows in the views.
    fn run_probes(&mut self, sb: &SandboxRecord, pod: &Pod, views: &[View]) {
        let spec = pod.spec.clone().unwrap_or_default();
        let now = Instant::now();
        // This pod's results only (the map holds every pod's).
        let mine: HashSet<&str> = views.iter().map(|v| v.id.as_str()).collect();
        let results: Vec<_> = self
            .probe_results
            .lock()
            .map(|mut r| {
                let keys: Vec<_> = r
                    .keys()
                    .filter(|(id, _)| mine.contains(id.as_str()))
                    .cloned()
                    .collect();
                keys.into_iter()
                    .filter_map(|k| r.remove(&k).map(|v| (k, v)))
                    .collect()
            })
            .unwrap_or_default();
        let mut unhealthy = Vec::new();
        for (key, result) in results {
            if let Some(run) = self.probes.get_mut(&key) {
                run.in_flight = false;
                run.next_at = now + run.tracker.timing.period;
                match &result {
                    Ok(_) => run.tracker.record(true, ""),
                    Err(why) => {
                        tracing::info!(pod = %format!("{}/{}", sb.namespace, sb.name), container = %key.0, "{} probe failed: {why}", key.1.name());
                        run.tracker.record(false, why);
                        if let Some(v) = views.iter().find(|v| v.id == key.0) {
                            unhealthy.push((
                                v.name.clone(),
                                format!("{} probe failed: {why}", key.1.name()),
                            ));
                        }
                    }
                }
            }
        }
        for (name, message) in unhealthy {
            self.event(pod, &name, true, "Unhealthy", message);
        }
        for c in pod_lifecycle::all_containers(&spec) {
            let Some(v) = views.iter().find(|v| v.name == c.name) else {
                continue;
            };
            let Observed::Running { started_at } = &v.current else {
                continue;
            };
            let ran = parse_time(started_at).map_or(Duration::ZERO, |t| {
                Duration::from_secs(
                    u64::try_from(k8s_openapi::jiff::Timestamp::now().as_second() - t.as_second())
                        .unwrap_or(0),
                )
            });
            let startup_done = probe::Kind::Startup.of(c).is_none()
                || self
                    .probes
                    .get(&(v.id.clone(), probe::Kind::Startup))
                    .is_some_and(|r| r.tracker.verdict == Some(true));
            let kinds: &[probe::Kind] = if startup_done {
                &[probe::Kind::Liveness, probe::Kind::Readiness]
            } else {
                &[probe::Kind::Startup]
            };
            for &kind in kinds {
                let Some(p) = kind.of(c) else { continue };
                let Some(handler) = crate::runtime::probe::Handler::of_probe(p) else {
                    continue;
                };
                let key = (v.id.clone(), kind);
                let run = self.probes.entry(key.clone()).or_insert_with(|| ProbeRun {
                    tracker: probe::Tracker::new(probe::Timing::of(p)),
                    next_at: now,
                    in_flight: false,
                });
                if run.tracker.verdict == Some(false) && kind != probe::Kind::Readiness {
                    continue;
                }
                if run.in_flight || now < run.next_at || ran < run.tracker.timing.initial_delay {
                    continue;
                }
                run.in_flight = true;
                let (rt, results, c, t, timeout) = (
                    self.rt.clone(),
                    Arc::clone(&self.probe_results),
                    c.clone(),
                    target(sb, &v.id),
                    run.tracker.timing.timeout,
                );
                std::thread::spawn(move || {
                    let r = crate::runtime::probe::run(&rt, &c, &t, &handler, timeout);
                    if let Ok(mut m) = results.lock() {
                        m.insert(key, r);
                    }
                });
            }
            // Liveness or startup failed: the container is killed, with the probe's
            // grace period (else the pod's).
            for kind in [probe::Kind::Startup, probe::Kind::Liveness] {
                let key = (v.id.clone(), kind);
                let Some(run) = self.probes.get_mut(&key) else {
                    continue;
                };
                if run.tracker.verdict != Some(false) || run.in_flight {
                    continue;
                }
                // Acted on once: the tracker stays failed, never in flight again.
                run.in_flight = true;
                let why = run.tracker.last_failure.clone();
                let grace = kind
                    .of(c)
                    .and_then(|p| p.termination_grace_period_seconds)
                    .or(spec.termination_grace_period_seconds)
                    .and_then(|g| u64::try_from(g).ok())
                    .unwrap_or(30);
                tracing::info!(pod = %format!("{}/{}", sb.namespace, sb.name), container = %c.name,
                    "Container {} failed {} probe, will be restarted: {why}", c.name, kind.name().to_lowercase());
                self.event(
                    pod,
                    &c.name,
                    false,
                    "Killing",
                    format!(
                        "Container {} failed {} probe, will be restarted",
                        c.name,
                        kind.name().to_lowercase()
                    ),
                );
                let (rt, id, sb, c) = (self.rt.clone(), v.id.clone(), sb.clone(), c.clone());
                let notify = self.notify(pod);
                std::thread::spawn(move || {
                    stop_with_pre_stop(
                        &rt,
                        &sb,
                        Some(&c),
                        &id,
                        Duration::from_secs(grace),
                        &notify,
                    );
                });
            }
        }
        // Probes of containers that are no longer running go.
        let running: HashSet<&str> = views
            .iter()
            .filter(|v| matches!(v.current, Observed::Running { .. }))
            .map(|v| v.id.as_str())
            .collect();
        let ids: HashSet<String> = views.iter().map(|v| v.id.clone()).collect();
        self.probes
            .retain(|(id, _), _| !ids.contains(id) || running.contains(id.as_str()));
    }

    /// Writes the files of the pod's configMap, secret, downwardAPI and projected
    /// volumes before its containers start, then keeps them current: every
    /// `sync_frequency` the sources are read again and a changed volume is swapped
    /// whole (see [`crate::runtime::volume_files`]); a service account token is
    /// requested again once 80 % of its lifetime has passed. A source that cannot be
    /// read keeps the volume as it was (the error is logged); before the first write
    /// it holds the pod's containers back.
    fn prepare_volumes(&mut self, uid: &str, pod: &Pod) -> Result<(), String> {
        use crate::runtime::volume_files;
        let Source::Api { client, handle, .. } = &self.source else {
            return Ok(());
        };
        if is_static(pod) {
            return Ok(());
        }
        let now = Instant::now();
        let sb_ip = self
            .rt
            .sandbox(uid)
            .ok()
            .flatten()
            .map(|s| s.ip)
            .unwrap_or_default();
        for vol in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let has_files = vol.config_map.is_some()
                || vol.secret.is_some()
                || vol.downward_api.is_some()
                || vol.projected.is_some();
            if !has_files {
                continue;
            }
            let dir = self.rt.prepared_volume(uid, &vol.name);
            let current = volume_files::current(&dir);
            let key = (uid.to_string(), vol.name.clone());
            if current.is_some() && self.volume_checks.get(&key).is_some_and(|next| now < *next) {
                continue;
            }
            // Tokens still fresh are kept; the earliest refresh sets the next check.
            let epoch = k8s_openapi::jiff::Timestamp::now().as_second();
            let mut next = now + self.timing.sync_frequency;
            let mut keep_tokens = std::collections::BTreeMap::new();
            for (path, (content, _)) in current.iter().flatten() {
                if let Some(due) = volume_files::token_refresh_at(content)
                    && due > epoch
                {
                    keep_tokens.insert(path.clone(), content.clone());
                    let wait = Duration::from_secs(u64::try_from(due - epoch).unwrap_or(0));
                    next = next.min(now + wait);
                }
            }
            let ctx = crate::controllers::pods::VolumeContext {
                node_ip: self.node_ip.clone(),
                pod_ip: sb_ip.clone(),
                allocatable: self.allocatable,
                keep_tokens,
            };
            let fetched = handle.block_on(crate::controllers::pods::volume_files(
                client, pod, vol, &ctx,
            ));
            self.volume_checks.insert(key, next);
            let files = match fetched {
                Ok(Some(files)) => files,
                Ok(None) => continue,
                Err(e) if current.is_some() => {
                    tracing::warn!(pod = %format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or_default(), pod.metadata.name.as_deref().unwrap_or_default()),
                        volume = %vol.name, "cannot refresh the volume, keeping its contents: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            if volume_files::differs(&dir, &files) {
                volume_files::write(&dir, &files)
                    .map_err(|e| format!("volume {:?}: {e}", vol.name))?;
                if current.is_some() {
                    tracing::info!(pod = %format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or_default(), pod.metadata.name.as_deref().unwrap_or_default()),
                        volume = %vol.name, "volume contents updated");
                }
            }
        }
        Ok(())
    }

    /// The image for start number `restart` of `c`: at once when stored and its pull
    /// policy allows, else pulled in the background (the pod's other work goes on).
    fn image_ready(
        &mut self,
        pod: &Pod,
        c: &k8s_openapi::api::core::v1::Container,
        restart: u32,
    ) -> ImageReady {
        use crate::runtime::container::LocalImage;
        let (reference, verify) = match self.rt.local_image(c) {
            Ok(LocalImage::Use(image)) => {
                self.event(pod, &c.name, false, "Pulled", format!(
                    "Container image {:?} already present on machine and can be accessed by the pod",
                    c.image.as_deref().unwrap_or_default()
                ));
                return ImageReady::Yes(image);
            }
            Ok(LocalImage::Pull(reference)) => (reference, false),
            Ok(LocalImage::Verify(reference)) => (reference, true),
            Err(e) => return ImageReady::Failed(e),
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let backoff_key = (uid.clone(), c.name.clone());
        if let Some((next, _, why)) = self.pull_backoff.get(&backoff_key)
            && Instant::now() < *next
        {
            return ImageReady::BackOff(format!("Back-off pulling image \"{reference}\": {why}"));
        }
        let key = (uid, c.name.clone(), restart);
        let Ok(mut pulls) = self.pulls.lock() else {
            return ImageReady::Pulling(reference.to_string());
        };
        let shown = c.image.clone().unwrap_or_default();
        match pulls.remove(&key) {
            Some(PullState::Done(result, took)) if result.is_ok() => {
                let Ok(image) = *result else {
                    return ImageReady::Pulling(reference.to_string());
                };
                drop(pulls);
                self.pull_backoff.remove(&backoff_key);
                let ms = took.as_millis();
                self.event(pod, &c.name, false, "Pulled", format!(
                    "Successfully pulled image {shown:?} in {ms}ms ({ms}ms including waiting). Image size: {} bytes.",
                    image.size
                ));
                ImageReady::Yes(image)
            }
            Some(PullState::Done(result, _)) => {
                drop(pulls);
                let Err(e) = *result else {
                    return ImageReady::Pulling(reference.to_string());
                };
                self.event(
                    pod,
                    &c.name,
                    true,
                    "Failed",
                    format!("Failed to pull image {shown:?}: {e}"),
                );
                self.event(pod, &c.name, true, "Failed", "Error: ErrImagePull".into());
                self.event(
                    pod,
                    &c.name,
                    false,
                    "BackOff",
                    format!("Back-off pulling image {shown:?}"),
                );
                // 10 s doubling to 300 s between pulls, like kubelet's image backoff.
                let delay = self
                    .pull_backoff
                    .get(&backoff_key)
                    .map_or(self.timing.backoff_initial, |(_, d, _)| {
                        (*d * 2).min(self.timing.backoff_max)
                    });
                self.pull_backoff
                    .insert(backoff_key, (Instant::now() + delay, delay, e.to_string()));
                ImageReady::Failed(e)
            }
            Some(PullState::Pulling) => {
                pulls.insert(key, PullState::Pulling);
                ImageReady::Pulling(reference.to_string())
            }
            None => {
                pulls.insert(key.clone(), PullState::Pulling);
                drop(pulls);
                self.event(
                    pod,
                    &c.name,
                    false,
                    "Pulling",
                    format!("Pulling image {shown:?}"),
                );
                let (rt, pulls, shown) = (
                    self.rt.clone(),
                    Arc::clone(&self.pulls),
                    reference.to_string(),
                );
                // A static pod cannot reference API objects; an apiserver pod's
                // imagePullSecrets are read for each pull, so a changed secret counts.
                let secrets = match &self.source {
                    Source::Api { client, handle, .. } if !is_static(pod) => {
                        Some((client.clone(), handle.clone(), pod.clone()))
                    }
                    _ => None,
                };
                std::thread::spawn(move || {
                    let started = Instant::now();
                    let secrets = secrets.map_or_else(Vec::new, |(client, handle, pod)| {
                        handle.block_on(crate::controllers::pods::pull_secrets(&client, &pod))
                    });
                    let result = if verify {
                        rt.verify_or_pull_blocking(&reference, &secrets)
                    } else {
                        rt.pull_blocking(&reference, &secrets)
                    };
                    if let Ok(mut p) = pulls.lock() {
                        p.insert(key, PullState::Done(Box::new(result), started.elapsed()));
                    }
                });
                ImageReady::Pulling(shown)
            }
        }
    }

    /// Keeps the current and the previous run of each container; older ones go.
    fn prune(&self, uid: &str, spec: &k8s_openapi::api::core::v1::PodSpec) {
        let records = self.rt.containers();
        for c in pod_lifecycle::all_containers(spec) {
            let mine = runs_of(&records, uid, &c.name);
            if mine.len() > 2 {
                for old in &mine[..mine.len() - 2] {
                    if self.rt.remove_container(&old.id).is_ok() {
                        let _ = std::fs::remove_file(&old.log_path);
                    }
                }
            }
        }
    }

    fn write_status(
        &mut self,
        sb: &SandboxRecord,
        pod: &Pod,
        views: &[View],
    ) -> Result<(), crate::runtime::RuntimeError> {
        let spec = pod.spec.clone().unwrap_or_default();
        let is_init = |n: &str| spec.init_containers.iter().flatten().any(|c| c.name == n);
        let main: Vec<&View> = views.iter().filter(|v| !is_init(&v.name)).collect();
        let init: Vec<&View> = views.iter().filter(|v| is_init(&v.name)).collect();
        let waiting = |v: &View| match &v.current {
            Observed::Exited { code, .. } => {
                let policy = spec.restart_policy.as_deref().unwrap_or("Always");
                let restarts = policy == "Always" || (policy == "OnFailure" && *code != 0);
                let (may, delay) = self.restart_wait(&sb.uid, v);
                (restarts && !may).then(|| {
                    (
                        "CrashLoopBackOff".to_string(),
                        format!(
                            "back-off {} restarting failed container={} pod={}_{}({})",
                            pod_lifecycle::go_duration(delay),
                            v.name,
                            sb.name,
                            sb.namespace,
                            sb.uid
                        ),
                    )
                })
            }
            _ => None,
        };
        let sidecar = |n: &str| {
            spec.init_containers
                .iter()
                .flatten()
                .any(|c| c.name == n && pod_lifecycle::is_sidecar(c))
        };
        let initialized = init.iter().all(|v| {
            matches!(v.current, Observed::Exited { code: 0, .. })
                || (sidecar(&v.name)
                    && (main.iter().any(|m| m.current != Observed::NotStarted)
                        || (matches!(v.current, Observed::Running { .. })
                            && v.started != Some(false))))
        });
        let ready = !main.is_empty() && main.iter().all(|v| v.is_ready());
        let phase = if self.failed.contains_key(&sb.uid) {
            "Failed"
        } else {
            pod_lifecycle::phase(&spec, views)
        };
        let terminal = phase == "Succeeded" || phase == "Failed";
        // Conditions as kubelet words them; a condition's lastTransitionTime moves only
        // when its status does.
        let previous: Vec<serde_json::Value> =
            read_json::<serde_json::Value>(&self.rt.pod_state_dir(&sb.uid).join("pod.json"))
                .ok()
                .flatten()
                .and_then(|p| p["status"]["conditions"].as_array().cloned())
                .unwrap_or_default();
        let now = k8s_openapi::jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let cond = |t: &str, ok: bool, reason: Option<&str>, message: Option<String>| {
            let status = if ok { "True" } else { "False" };
            let since = previous
                .iter()
                .find(|c| c["type"] == t && c["status"] == status)
                .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_string))
                .unwrap_or_else(|| {
                    if previous.is_empty() {
                        sb.created_at.clone()
                    } else {
                        now.clone()
                    }
                });
            let mut c = json!({"type": t, "status": status, "lastTransitionTime": since});
            if let Some(r) = reason {
                c["reason"] = json!(r);
            }
            if let Some(m) = message {
                c["message"] = json!(m);
            }
            c
        };
        let names = |vs: Vec<&&View>| {
            format!(
                "[{}]",
                vs.iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        };
        let initialized_cond = if initialized {
            cond(
                "Initialized",
                true,
                (phase == "Succeeded").then_some("PodCompleted"),
                None,
            )
        } else {
            let incomplete = init
                .iter()
                .filter(|v| !matches!(v.current, Observed::Exited { code: 0, .. }))
                .collect();
            cond(
                "Initialized",
                false,
                Some("ContainersNotInitialized"),
                Some(format!(
                    "containers with incomplete status: {}",
                    names(incomplete)
                )),
            )
        };
        let ready_cond = |t: &str| match phase {
            "Succeeded" => cond(t, false, Some("PodCompleted"), None),
            "Failed" => cond(t, false, Some("PodFailed"), None),
            _ if ready => cond(t, true, None, None),
            _ => {
                let unready = main.iter().filter(|v| !v.is_ready()).collect();
                cond(
                    t,
                    false,
                    Some("ContainersNotReady"),
                    Some(format!(
                        "containers with unready status: {}",
                        names(unready)
                    )),
                )
            }
        };
        // A main container that has not started waits for the init containers, then
        // for its creation.
        let main_status = |v: &View| {
            let mut s = pod_lifecycle::container_status(v, waiting(v));
            if v.current == Observed::NotStarted && initialized {
                s["state"] = json!({"waiting": {"reason": "ContainerCreating"}});
            }
            s
        };
        let mut status = json!({
            "phase": phase,
            "conditions": [
                cond("PodReadyToStartContainers", !terminal, None, None), initialized_cond,
                ready_cond("Ready"), ready_cond("ContainersReady"), cond("PodScheduled", true, None, None),
            ],
            "hostIP": self.node_ip, "hostIPs": [{"ip": self.node_ip}],
            "startTime": sb.created_at, "qosClass": sb.qos,
            "containerStatuses": main.iter().map(|v| main_status(v)).collect::<Vec<_>>(),
        });
        if !init.is_empty() {
            status["initContainerStatuses"] = json!(
                init.iter()
                    .map(|v| {
                        let mut s = pod_lifecycle::container_status(v, waiting(v));
                        // A regular init container is ready once it completed (a
                        // sidecar by its probes, like a main container).
                        if !sidecar(&v.name) {
                            s["ready"] =
                                json!(matches!(v.current, Observed::Exited { code: 0, .. }));
                        }
                        s
                    })
                    .collect::<Vec<_>>()
            );
        }
        if !sb.ip.is_empty() {
            status["podIP"] = json!(sb.ip);
            status["podIPs"] = json!([{"ip": sb.ip}]);
        }
        // Past its activeDeadlineSeconds: failed, whatever its containers did.
        if let Some(r) = self.failed.get(&sb.uid) {
            status["reason"] = json!(r.reason);
            status["message"] = json!(r.message);
        }
        self.publish(&sb.uid, &sb.namespace, &sb.name, pod, status)
    }

    /// Records a pod's status under the state directory (for `kernlet pods`, `exec` and
    /// the kubelet API), then sends it to the apiserver when it changed.
    fn publish(
        &mut self,
        uid: &str,
        namespace: &str,
        name: &str,
        pod: &Pod,
        status: serde_json::Value,
    ) -> Result<(), crate::runtime::RuntimeError> {
        let mut out = serde_json::to_value(pod).unwrap_or_default();
        out["apiVersion"] = json!("v1");
        out["kind"] = json!("Pod");
        out["status"] = status;
        // The node's record first: once the apiserver shows the status, `kernlet exec`,
        // `logs` and the kubelet API find the pod.
        let path = self.rt.pod_state_dir(uid).join("pod.json");
        if read_json::<serde_json::Value>(&path)
            .ok()
            .flatten()
            .as_ref()
            != Some(&out)
        {
            write_json(&path, &out)?;
        }
        if let Source::Api { updates, .. } = &self.source
            && let Ok(mut last_sent) = self.last_sent.lock()
            && last_sent.get(uid) != Some(&out["status"])
        {
            let sent = updates.send(crate::controllers::pods::Update::Status {
                namespace: namespace.to_string(),
                name: name.to_string(),
                uid: uid.to_string(),
                status: out["status"].clone(),
            });
            if sent.is_ok() {
                last_sent.insert(uid.to_string(), out["status"].clone());
            }
        }
        Ok(())
    }

    /// Stops a pod's containers (preStop, SIGTERM, SIGKILL after the deletion's or the
    /// pod's grace period) and removes them and its sandbox, in the background.
    fn remove_pod(&mut self, sb: SandboxRecord, deletion_grace: Option<i64>) {
        {
            let Ok(mut r) = self.removing.lock() else {
                return;
            };
            if !r.insert(sb.uid.clone()) {
                return;
            }
        }
        let rt = self.rt.clone();
        let events = self.events.clone();
        let removing = Arc::clone(&self.removing);
        let updates = match &self.source {
            Source::Api { updates, .. } => Some(updates.clone()),
            Source::Manifests(_) => None,
        };
        if let Ok(mut l) = self.last_sent.lock() {
            l.remove(&sb.uid);
        }
        // What the worker kept per container of this pod goes with it.
        self.start_failures.retain(|(uid, _), _| *uid != sb.uid);
        self.backoff_base.retain(|(uid, _), _| *uid != sb.uid);
        self.pull_backoff.retain(|(uid, _), _| *uid != sb.uid);
        self.volume_checks.retain(|(uid, _), _| *uid != sb.uid);
        self.host_port_errors.retain(|(uid, _)| *uid != sb.uid);
        if let Ok(mut hp) = self.host_ports.lock()
            && let Some(hp) = hp.as_mut()
        {
            hp.remove_pod(&sb.uid);
        }
        let ids: HashSet<String> = self
            .rt
            .containers()
            .into_iter()
            .filter(|c| c.pod_uid == sb.uid)
            .map(|c| c.id)
            .collect();
        self.probes.retain(|(id, _), _| !ids.contains(id));
        self.stopping.retain(|id| !ids.contains(id));
        self.backoff_reported.retain(|id, _| !ids.contains(id));
        if let Ok(mut r) = self.probe_results.lock() {
            r.retain(|(id, _), _| !ids.contains(id));
        }
        std::thread::spawn(move || {
            let recorded: Option<Pod> = read_json(&rt.pod_state_dir(&sb.uid).join("pod.json"))
                .ok()
                .flatten();
            // The deletion's grace period, else the pod's.
            let grace = deletion_grace
                .or_else(|| {
                    recorded
                        .as_ref()?
                        .spec
                        .as_ref()?
                        .termination_grace_period_seconds
                })
                .and_then(|g| u64::try_from(g).ok())
                .unwrap_or(30);
            let notify: Notify = events.zip(recorded.clone());
            // A static pod's object is its mirror, which sync_mirrors looks after.
            let static_pod = recorded.as_ref().is_some_and(is_static);
            let spec = recorded.and_then(|p| p.spec).unwrap_or_default();
            tracing::info!(pod = %format!("{}/{}", sb.namespace, sb.name), "pod deleted or gone; stopping it");
            let records: Vec<_> = rt
                .containers()
                .into_iter()
                .filter(|c| c.pod_uid == sb.uid)
                .collect();
            // Main containers together, then sidecars (restartable init containers)
            // in reverse order, each with its preStop hook and the grace period.
            let sidecars: Vec<String> = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"))
                .map(|c| c.name.clone())
                .rev()
                .collect();
            let mut waves: Vec<Vec<&crate::runtime::container::ContainerRecord>> = vec![
                records
                    .iter()
                    .filter(|r| !sidecars.contains(&r.name))
                    .collect(),
            ];
            waves.extend(
                sidecars
                    .iter()
                    .map(|n| records.iter().filter(|r| &r.name == n).collect()),
            );
            // One grace period for the whole pod: sidecars get what the main
            // containers left of it (at least 2 s, as kubelet).
            let deadline = Instant::now() + Duration::from_secs(grace);
            for wave in waves {
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_secs(2));
                std::thread::scope(|scope| {
                    for r in wave {
                        let c = pod_lifecycle::all_containers(&spec).find(|c| c.name == r.name);
                        let (rt, sb) = (&rt, &sb);
                        let notify = &notify;
                        if let Some((events, pod)) = notify
                            && matches!(rt.container_state(&r.id), ContainerState::Running { .. })
                        {
                            record(
                                Some(events),
                                pod,
                                &r.name,
                                false,
                                "Killing",
                                format!("Stopping container {}", r.name),
                            );
                        }
                        scope.spawn(move || stop_with_pre_stop(rt, sb, c, &r.id, left, notify));
                    }
                });
            }
            for r in &records {
                let _ = rt.remove_container(&r.id);
            }
            if let Err(e) = rt.remove_sandbox(&sb.uid) {
                tracing::warn!(pod = %sb.name, "removing the sandbox: {e}");
            }
            let _ = std::fs::remove_dir_all(crate::runtime::logs::pod_dir(
                &rt.cfg.log_dir,
                &sb.namespace,
                &sb.name,
                &sb.uid,
            ));
            // Kubelet's last word on a deleted pod: remove the object now that nothing
            // of it runs (a pod already gone answers 404, which is fine).
            if let Some(updates) = updates.filter(|_| !static_pod) {
                let _ = updates.send(crate::controllers::pods::Update::Finished {
                    namespace: sb.namespace.clone(),
                    name: sb.name.clone(),
                    uid: sb.uid.clone(),
                });
            }
            if let Ok(mut r) = removing.lock() {
                r.remove(&sb.uid);
            }
        });
    }
}

/// The pods recorded under a state directory (their last written status), for
/// `kernlet pods`; works without the daemon.
pub fn recorded_pods(state_dir: &Path) -> Vec<serde_json::Value> {
    let mut v: Vec<serde_json::Value> = std::fs::read_dir(state_dir.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| read_json(&e.path().join("pod.json")).ok().flatten())
        .collect();
    v.sort_by_key(|p: &serde_json::Value| {
        (
            p.pointer("/metadata/namespace")
                .and_then(|n| n.as_str())
                .unwrap_or("")
                .to_string(),
            p.pointer("/metadata/name")
                .and_then(|n| n.as_str())
                .unwrap_or("")
                .to_string(),
        )
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_pods_from_a_directory_in_file_order() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("b.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  initContainers: [{name: init, image: busybox}]\n  containers: [{name: main, image: nginx, resources: {limits: {cpu: 100m, memory: 64Mi}}}]\n",
        )
        .unwrap();
        std::fs::write(
            tmp.path().join("a.yml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: tools, namespace: ops}\nspec: {hostNetwork: true, containers: [{name: sh, image: busybox}]}\n",
        )
        .unwrap();
        std::fs::write(tmp.path().join("notes.txt"), "not a manifest").unwrap();
        let plans = plan(tmp.path()).unwrap();
        assert_eq!(
            plans,
            vec![
                PodPlan {
                    namespace: "ops".into(),
                    name: "tools".into(),
                    qos: "BestEffort",
                    host_network: true,
                    containers: vec![("sh".into(), "busybox".into())],
                },
                PodPlan {
                    namespace: "default".into(),
                    name: "web".into(),
                    qos: "Burstable", // the init container sets no limits
                    host_network: false,
                    containers: vec![
                        ("init".into(), "busybox".into()),
                        ("main".into(), "nginx".into())
                    ],
                },
            ]
        );
    }

    #[test]
    fn static_pod_uids_follow_the_manifest() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "a"}})).unwrap();
        let other: Pod = serde_json::from_value(json!({"metadata": {"name": "b"}})).unwrap();
        let u = static_uid(Path::new("/m/a.yaml"), &pod);
        assert_eq!(u.len(), 36);
        assert_eq!(u, static_uid(Path::new("/m/a.yaml"), &pod));
        assert_ne!(u, static_uid(Path::new("/m/a.yaml"), &other));
        assert_ne!(u, static_uid(Path::new("/m/b.yaml"), &pod));
    }
}

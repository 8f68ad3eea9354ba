//! The node controller: registers the Node as kubelet does, renews its Lease in
//! `kube-node-lease`, recomputes status every update period and reports it when it
//! changed or every report period. When the apiserver is away it keeps retrying and
//! says so; nothing is lost because everything it sends is recomputed from the machine.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::watch;

use crate::client::SharedClient;
use crate::model::node::{self, NodeConfig, Readiness};
use crate::sys::machine::{self, MachineFacts};

/// Namespace of node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Lease duration kubelet uses (`nodeLeaseDurationSeconds`).
pub const LEASE_DURATION_SECONDS: i32 = 40;

/// First and longest wait between retries of a failed lease renewal (kubelet's).
const LEASE_RETRY_FIRST: Duration = Duration::from_millis(200);
const LEASE_RETRY_MAX: Duration = Duration::from_secs(7);
/// Bound of one request, so a silent network cannot stall renewals.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Timing of the node controller.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How often the Lease is renewed (kubelet: 10 s).
    pub lease_renew: Duration,
    /// How often status is recomputed and, if it changed, reported (kubelet's
    /// `nodeStatusUpdateFrequency`, 10 s).
    pub status_update: Duration,
    /// How often status is reported when nothing changes (kubelet's
    /// `nodeStatusReportFrequency`, 5 min).
    pub status_report: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_renew: Duration::from_secs(10),
            status_update: Duration::from_secs(10),
            status_report: Duration::from_secs(300),
        }
    }
}

/// The node controller.
pub struct NodeController {
    client: SharedClient,
    cfg: NodeConfig,
    /// Where ephemeral storage is measured (the state directory).
    state_dir: PathBuf,
    readiness: watch::Receiver<Readiness>,
    timing: Timing,
    conditions: Vec<NodeCondition>,
    /// `status.addresses` as last written (None before the first report).
    addresses: Option<serde_json::Value>,
    uid: Option<String>,
    /// What the last successful report was computed from, and when it was sent.
    reported: Option<(MachineFacts, Readiness, Instant)>,
    /// The node's image store, for `status.images`.
    images: Option<crate::runtime::image::ImageStore>,
    /// The pressure conditions, as the eviction manager last computed them.
    shared_pressure: crate::model::eviction::SharedPressure,
    /// The Lease as the last renewal left it (renewed from here next time).
    lease: Option<Lease>,
}

/// A request bounded by [`REQUEST_TIMEOUT`].
async fn bounded<T>(
    f: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(kube::Error::Service(
            format!("no answer within {REQUEST_TIMEOUT:?}").into(),
        )),
    }
}

fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 403 => format!(
            "{} (403 Forbidden: check that the kubeconfig is this node's credential, CN=system:node:<name>, O=system:nodes)",
            s.message
        ),
        kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
        other => format!("{other} (is the apiserver reachable?)"),
    }
}

impl NodeController {
    pub fn new(
        client: SharedClient,
        cfg: NodeConfig,
        state_dir: PathBuf,
        readiness: watch::Receiver<Readiness>,
        timing: Timing,
    ) -> Self {
        Self {
            client,
            cfg,
            state_dir,
            readiness,
            timing,
            conditions: Vec::new(),
            addresses: None,
            uid: None,
            reported: None,
            images: None,
            shared_pressure: Default::default(),
            lease: None,
        }
    }

    /// Reports the pressure conditions the eviction manager computes in `shared`.
    pub fn with_pressure(mut self, shared: crate::model::eviction::SharedPressure) -> Self {
        self.shared_pressure = shared;
        self
    }

    /// Lists the images of `store` in `status.images`.
    pub fn with_images(mut self, store: crate::runtime::image::ImageStore) -> Self {
        self.images = Some(store);
        self
    }

    /// `status.images` now (empty without a store or when it cannot be read).
    fn node_images(&self) -> Vec<k8s_openapi::api::core::v1::ContainerImage> {
        let Some(store) = &self.images else {
            return Vec::new();
        };
        let listed: Vec<(Vec<String>, String, u64)> = store
            .list()
            .unwrap_or_default()
            .into_iter()
            .map(|l| (l.references, l.image.id, l.image.size))
            .collect();
        node::images(&listed)
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.get())
    }

    fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.client.get(), LEASE_NAMESPACE)
    }

    /// Registers the Node, or adopts the one that exists and reconciles its labels.
    async fn register(&mut self) -> Result<(), kube::Error> {
        let desired = node::registration(&self.cfg);
        let node = match bounded(self.nodes().create(&PostParams::default(), &desired)).await {
            Ok(n) => {
                tracing::info!(node = %self.cfg.name, "registered node");
                n
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let labels = desired.metadata.labels.clone().unwrap_or_default();
                let patch = json!({"metadata": {"labels": labels}});
                let nodes = self.nodes();
                let n = bounded(nodes.patch(
                    &self.cfg.name,
                    &PatchParams::default(),
                    &Patch::Strategic(patch),
                ))
                .await?;
                tracing::info!(node = %self.cfg.name, "node already registered; adopted it");
                n
            }
            Err(e) => return Err(e),
        };
        self.uid = node.metadata.uid.clone();
        self.conditions = node.status.and_then(|s| s.conditions).unwrap_or_default();
        Ok(())
    }

    /// Sends `.status` computed from `facts` and `readiness` (strategic merge: other
    /// writers' conditions stay).
    async fn report_status(
        &mut self,
        facts: &MachineFacts,
        readiness: &Readiness,
    ) -> Result<(), kube::Error> {
        let now = k8s_openapi::jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let mut status = node::status(&self.cfg, facts, readiness, &self.conditions, &now);
        let nodes = self.nodes();
        // The addresses go apart, when they changed, as a JSON merge patch that replaces
        // the list: a strategic merge merges it by `type`, so a dual-stack node's IPv4
        // and IPv6 InternalIPs would collapse into one entry (kubelet replaces the list
        // for the same reason).
        let addresses = status.as_object_mut().and_then(|o| o.remove("addresses"));
        if addresses.is_some() && addresses != self.addresses {
            bounded(nodes.patch_status(
                &self.cfg.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"addresses": addresses}})),
            ))
            .await?;
            self.addresses = addresses;
        }
        let patched = bounded(nodes.patch_status(
            &self.cfg.name,
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": status})),
        ))
        .await?;
        self.conditions = patched
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default();
        Ok(())
    }

    /// Creates or renews the Lease named after the node.
    async fn renew_lease(&mut self) -> Result<(), kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let leases = self.leases();
        // One request per renewal, as kubelet: the Lease the last renewal returned,
        // renewed in place; a conflict (someone else wrote it) or any other failure
        // falls back to reading it first.
        if let Some(mut lease) = self.lease.take() {
            let spec = lease.spec.get_or_insert_with(Default::default);
            spec.renew_time = Some(now.clone());
            match bounded(leases.replace(&self.cfg.name, &PostParams::default(), &lease)).await {
                Ok(renewed) => {
                    self.lease = Some(renewed);
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(node = %self.cfg.name, error = %describe(&e), "renewing the cached lease failed; reading it")
                }
            }
        }
        match bounded(leases.get_opt(&self.cfg.name)).await? {
            Some(mut lease) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                spec.holder_identity = Some(self.cfg.name.clone());
                spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
                spec.renew_time = Some(now);
                self.lease = Some(
                    bounded(leases.replace(&self.cfg.name, &PostParams::default(), &lease)).await?,
                );
            }
            None => {
                let mut lease: Lease = serde_json::from_value(json!({
                    "metadata": {"name": self.cfg.name, "namespace": LEASE_NAMESPACE},
                    "spec": {"holderIdentity": self.cfg.name, "leaseDurationSeconds": LEASE_DURATION_SECONDS},
                }))
                .unwrap_or_default();
                if let Some(uid) = &self.uid {
                    lease.metadata.owner_references =
                        Some(vec![serde_json::from_value(json!({
                        "apiVersion": "v1", "kind": "Node", "name": self.cfg.name, "uid": uid
                    }))
                    .unwrap_or_default()]);
                }
                lease.spec.get_or_insert_with(Default::default).renew_time = Some(now);
                self.lease = Some(bounded(leases.create(&PostParams::default(), &lease)).await?);
            }
        }
        Ok(())
    }

    /// Runs until `stop` turns true. Errors are logged with what to do and retried.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.register().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(node = %self.cfg.name, error = %describe(&e), "cannot register the node; retrying in {backoff:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        let mut lease_tick = tokio::time::interval(self.timing.lease_renew);
        // After a long retry, renew on the next period instead of in a burst.
        lease_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut status_tick = tokio::time::interval(self.timing.status_update);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = lease_tick.tick() => {
                    // Like kubelet: retry a failed renewal with backoff from 200 ms to 7 s,
                    // one log line per attempt, so the node is renewed within one lease
                    // period of the apiserver coming back.
                    let mut backoff = LEASE_RETRY_FIRST;
                    while let Err(e) = self.renew_lease().await {
                        crate::daemon::failed("lease", &describe(&e));
                        tracing::warn!(node = %self.cfg.name, error = %describe(&e), "lease not renewed; retrying in {backoff:?}");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.changed() => return,
                        }
                        backoff = (backoff * 2).min(LEASE_RETRY_MAX);
                    }
                    crate::daemon::synced("lease", serde_json::Value::Null);
                    // A status report that failed is not waited on for a whole period.
                    if self.reported.is_none() {
                        self.update_status().await;
                    }
                }
                _ = status_tick.tick() => self.update_status().await,
                Ok(()) = self.readiness.changed() => self.update_status().await,
            }
        }
    }

    /// Recomputes status; reports it when it changed, was never reported, or the report
    /// period has passed.
    async fn update_status(&mut self) {
        let mut facts = machine::read(&self.state_dir);
        facts.images = self.node_images();
        facts.pressure = self.shared_pressure.get();
        facts.volumes_in_use = crate::runtime::claimed_volumes::volumes_in_use(&self.state_dir);
        let readiness = self.readiness.borrow_and_update().clone();
        let due = match &self.reported {
            None => true,
            Some((f, r, at)) => {
                *f != facts || *r != readiness || at.elapsed() >= self.timing.status_report
            }
        };
        if !due {
            return;
        }
        match self.report_status(&facts, &readiness).await {
            Ok(()) => self.reported = Some((facts, readiness, Instant::now())),
            Err(e) => {
                tracing::warn!(node = %self.cfg.name, error = %describe(&e), "node status not reported");
                self.reported = None;
            }
        }
    }
}

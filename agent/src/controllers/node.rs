//! The node controller: registers the Node as kubelet does, renews its Lease in
//! `kube-node-lease`, and reports status on change or every status period. When the
//! apiserver is away it keeps retrying and says so; nothing is lost because everything
//! it sends is recomputed from the machine.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::watch;

use crate::model::node::{self, NodeConfig, Readiness};
use crate::sys::machine::MachineFacts;

/// Namespace of node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Lease duration kubelet uses (`nodeLeaseDurationSeconds`).
pub const LEASE_DURATION_SECONDS: i32 = 40;

/// First and longest wait between retries of a failed lease renewal (kubelet's).
const LEASE_RETRY_FIRST: Duration = Duration::from_millis(200);
const LEASE_RETRY_MAX: Duration = Duration::from_secs(7);

/// Timing of the node controller.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How often the Lease is renewed (kubelet: 10 s).
    pub lease_renew: Duration,
    /// How often status is reported when nothing changes (kubelet: 5 min).
    pub status_report: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_renew: Duration::from_secs(10),
            status_report: Duration::from_secs(300),
        }
    }
}

/// The node controller.
pub struct NodeController {
    nodes: Api<Node>,
    leases: Api<Lease>,
    cfg: NodeConfig,
    facts: MachineFacts,
    readiness: Readiness,
    timing: Timing,
    conditions: Vec<NodeCondition>,
    uid: Option<String>,
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
        client: kube::Client,
        cfg: NodeConfig,
        facts: MachineFacts,
        readiness: Readiness,
        timing: Timing,
    ) -> Self {
        Self {
            nodes: Api::all(client.clone()),
            leases: Api::namespaced(client, LEASE_NAMESPACE),
            cfg,
            facts,
            readiness,
            timing,
            conditions: Vec::new(),
            uid: None,
        }
    }

    /// Registers the Node, or adopts the one that exists and reconciles its labels.
    async fn register(&mut self) -> Result<(), kube::Error> {
        let desired = node::registration(&self.cfg);
        let node = match self.nodes.create(&PostParams::default(), &desired).await {
            Ok(n) => {
                tracing::info!(node = %self.cfg.name, "registered node");
                n
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let labels = desired.metadata.labels.clone().unwrap_or_default();
                let patch = json!({"metadata": {"labels": labels}});
                let n = self
                    .nodes
                    .patch(
                        &self.cfg.name,
                        &PatchParams::default(),
                        &Patch::Strategic(patch),
                    )
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

    /// Sends `.status` (strategic merge: other writers' conditions stay).
    async fn report_status(&mut self) -> Result<(), kube::Error> {
        let now = k8s_openapi::jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let status = node::status(
            &self.cfg,
            &self.facts,
            &self.readiness,
            &self.conditions,
            &now,
        );
        let patched = self
            .nodes
            .patch_status(
                &self.cfg.name,
                &PatchParams::default(),
                &Patch::Strategic(json!({"status": status})),
            )
            .await?;
        self.conditions = patched
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default();
        Ok(())
    }

    /// Creates or renews the Lease named after the node.
    async fn renew_lease(&self) -> Result<(), kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        match self.leases.get_opt(&self.cfg.name).await? {
            Some(mut lease) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                spec.holder_identity = Some(self.cfg.name.clone());
                spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
                spec.renew_time = Some(now);
                self.leases
                    .replace(&self.cfg.name, &PostParams::default(), &lease)
                    .await?;
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
                self.leases.create(&PostParams::default(), &lease).await?;
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
        let mut status_tick = tokio::time::interval(self.timing.status_report);
        let mut status_ok = false;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = lease_tick.tick() => {
                    // Like kubelet: retry a failed renewal with backoff from 200 ms to 7 s,
                    // one log line per attempt, so the node is renewed within one lease
                    // period of the apiserver coming back.
                    let mut backoff = LEASE_RETRY_FIRST;
                    while let Err(e) = self.renew_lease().await {
                        tracing::warn!(node = %self.cfg.name, error = %describe(&e), "lease not renewed; retrying in {backoff:?}");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.changed() => return,
                        }
                        backoff = (backoff * 2).min(LEASE_RETRY_MAX);
                    }
                    // A status report that failed is retried with the next lease tick.
                    if !status_ok {
                        status_ok = self.report().await;
                    }
                }
                _ = status_tick.tick() => {
                    status_ok = self.report().await;
                }
            }
        }
    }

    async fn report(&mut self) -> bool {
        match self.report_status().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(node = %self.cfg.name, error = %describe(&e), "node status not reported");
                false
            }
        }
    }
}

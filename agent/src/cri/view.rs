//! The node's pods and containers as the CRI shows them, read from kernlet's own
//! records: a sandbox per pod (its ID is the pod's UID), a container per run (its ID is
//! the run's, as in `containerID: kernlet://…`), with kubelet's labels so `crictl`
//! shows the pod of each. Pure conversions, tested without a node.

use std::collections::HashMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;

use super::proto;
use crate::runtime::container::{ContainerRecord, ContainerState};
use crate::runtime::sandbox::SandboxRecord;

/// kubelet's labels on sandboxes and containers, which `crictl` reads.
pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const POD_UID: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// A pod's sandbox: its record and the pod it was made for.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub record: SandboxRecord,
    pub pod: Option<Pod>,
    /// Whether its pause process (when it has one) still lives.
    pub alive: bool,
}

/// One run of a container and where it stands.
#[derive(Clone, Debug)]
pub struct Run {
    pub record: ContainerRecord,
    pub state: ContainerState,
}

/// The node's sandboxes and containers at one moment.
#[derive(Clone, Debug, Default)]
pub struct NodeView {
    pub sandboxes: Vec<Sandbox>,
    pub runs: Vec<Run>,
}

/// RFC 3339 time as the CRI's nanoseconds since the epoch (0 when absent or unreadable).
pub fn nanos(time: &str) -> i64 {
    time.parse::<k8s_openapi::jiff::Timestamp>()
        .map(|t| t.as_nanosecond() as i64)
        .unwrap_or(0)
}

/// Now in the CRI's nanoseconds.
pub fn now_nanos() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_nanosecond() as i64
}

impl NodeView {
    /// Reads the recorded pods of `state_dir` with `runs` (the runtime's containers and
    /// their states).
    pub fn read(state_dir: &Path, sandboxes: Vec<SandboxRecord>, runs: Vec<Run>) -> Self {
        let sandboxes = sandboxes
            .into_iter()
            .map(|record| {
                let pod = std::fs::read(state_dir.join("pods").join(&record.uid).join("pod.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Pod>(&b).ok());
                let alive = record
                    .pause_pid
                    .is_none_or(|pid| Path::new(&format!("/proc/{pid}")).exists());
                Sandbox { record, pod, alive }
            })
            .collect();
        Self { sandboxes, runs }
    }

    /// The one sandbox whose ID is `id` or starts with it (as containerd resolves
    /// IDs); an error names what is wrong.
    pub fn sandbox(&self, id: &str) -> Result<&Sandbox, tonic::Status> {
        unique(
            self.sandboxes
                .iter()
                .filter(|s| matches_id(&s.record.uid, id)),
            "pod sandbox",
            id,
        )
    }

    /// The one container run whose ID is `id` or starts with it.
    pub fn run(&self, id: &str) -> Result<&Run, tonic::Status> {
        unique(
            self.runs.iter().filter(|r| matches_id(&r.record.id, id)),
            "container",
            id,
        )
    }
}

fn matches_id(full: &str, asked: &str) -> bool {
    !asked.is_empty() && full.starts_with(asked)
}

fn unique<'a, T>(
    mut found: impl Iterator<Item = &'a T>,
    what: &str,
    id: &str,
) -> Result<&'a T, tonic::Status> {
    match (found.next(), found.next()) {
        (Some(one), None) => Ok(one),
        (None, _) => Err(tonic::Status::not_found(format!(
            "{what} \"{id}\" is not on this node"
        ))),
        (Some(_), Some(_)) => Err(tonic::Status::invalid_argument(format!(
            "{what} ID prefix \"{id}\" is ambiguous: give more of it"
        ))),
    }
}

impl Sandbox {
    pub fn ready(&self) -> bool {
        let ended = self
            .pod
            .as_ref()
            .and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        self.alive && !ended
    }

    fn metadata(&self) -> proto::PodSandboxMetadata {
        proto::PodSandboxMetadata {
            name: self.record.name.clone(),
            uid: self.record.uid.clone(),
            namespace: self.record.namespace.clone(),
            attempt: 0,
        }
    }

    /// The pod's labels with kubelet's own.
    pub fn labels(&self) -> HashMap<String, String> {
        let mut l: HashMap<String, String> = self
            .pod
            .as_ref()
            .and_then(|p| p.metadata.labels.clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        l.insert(POD_NAME.into(), self.record.name.clone());
        l.insert(POD_NAMESPACE.into(), self.record.namespace.clone());
        l.insert(POD_UID.into(), self.record.uid.clone());
        l
    }

    fn annotations(&self) -> HashMap<String, String> {
        self.pod
            .as_ref()
            .and_then(|p| p.metadata.annotations.clone())
            .unwrap_or_default()
            .into_iter()
            .collect()
    }

    fn state(&self) -> i32 {
        if self.ready() {
            proto::PodSandboxState::SandboxReady as i32
        } else {
            proto::PodSandboxState::SandboxNotready as i32
        }
    }

    fn runtime_handler(&self) -> String {
        self.pod
            .as_ref()
            .and_then(|p| p.spec.as_ref())
            .and_then(|s| s.runtime_class_name.clone())
            .unwrap_or_default()
    }

    pub fn to_cri(&self) -> proto::PodSandbox {
        proto::PodSandbox {
            id: self.record.uid.clone(),
            metadata: Some(self.metadata()),
            state: self.state(),
            created_at: nanos(&self.record.created_at),
            labels: self.labels(),
            annotations: self.annotations(),
            runtime_handler: self.runtime_handler(),
        }
    }

    pub fn status(&self) -> proto::PodSandboxStatus {
        let mode = |host: bool| {
            if host {
                proto::NamespaceMode::Node as i32
            } else {
                proto::NamespaceMode::Pod as i32
            }
        };
        let r = &self.record;
        proto::PodSandboxStatus {
            id: r.uid.clone(),
            metadata: Some(self.metadata()),
            state: self.state(),
            created_at: nanos(&r.created_at),
            network: Some(proto::PodSandboxNetworkStatus {
                ip: r.ip.clone(),
                additional_ips: Vec::new(),
            }),
            linux: Some(proto::LinuxPodSandboxStatus {
                namespaces: Some(proto::Namespace {
                    options: Some(proto::NamespaceOption {
                        network: mode(r.host_network),
                        pid: if r.host_pid {
                            proto::NamespaceMode::Node as i32
                        } else if r.pause_pid.is_some() {
                            proto::NamespaceMode::Pod as i32
                        } else {
                            proto::NamespaceMode::Container as i32
                        },
                        ipc: mode(r.host_ipc),
                        ..Default::default()
                    }),
                }),
            }),
            labels: self.labels(),
            annotations: self.annotations(),
            runtime_handler: self.runtime_handler(),
        }
    }

    /// Whether it passes `filter`.
    pub fn passes(&self, filter: Option<&proto::PodSandboxFilter>) -> bool {
        let Some(f) = filter else { return true };
        (f.id.is_empty() || matches_id(&self.record.uid, &f.id))
            && f.state.as_ref().is_none_or(|s| s.state == self.state())
            && selects(&f.label_selector, &self.labels())
    }
}

impl Sandbox {
    /// Whether it passes a stats filter.
    pub fn passes_stats(&self, filter: Option<&proto::PodSandboxStatsFilter>) -> bool {
        let Some(f) = filter else { return true };
        (f.id.is_empty() || matches_id(&self.record.uid, &f.id))
            && selects(&f.label_selector, &self.labels())
    }
}

fn selects(selector: &HashMap<String, String>, labels: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl Run {
    fn metadata(&self) -> proto::ContainerMetadata {
        proto::ContainerMetadata {
            name: self.record.name.clone(),
            attempt: self.record.restart,
        }
    }

    fn cri_state(&self) -> i32 {
        match self.state {
            ContainerState::Created => proto::ContainerState::ContainerCreated as i32,
            ContainerState::Running { .. } => proto::ContainerState::ContainerRunning as i32,
            ContainerState::Exited { .. } | ContainerState::Failed(_) => {
                proto::ContainerState::ContainerExited as i32
            }
        }
    }

    /// kubelet's labels on a container, from its pod's sandbox.
    pub fn labels(&self, sandbox: Option<&Sandbox>) -> HashMap<String, String> {
        let mut l = HashMap::new();
        l.insert(CONTAINER_NAME.into(), self.record.name.clone());
        l.insert(POD_UID.into(), self.record.pod_uid.clone());
        if let Some(s) = sandbox {
            l.insert(POD_NAME.into(), s.record.name.clone());
            l.insert(POD_NAMESPACE.into(), s.record.namespace.clone());
        }
        l
    }

    fn annotations(&self) -> HashMap<String, String> {
        let mut a = HashMap::new();
        a.insert(
            "io.kubernetes.container.restartCount".into(),
            self.record.restart.to_string(),
        );
        if !self.record.spec_hash.is_empty() {
            a.insert(
                "io.kubernetes.container.hash".into(),
                self.record.spec_hash.clone(),
            );
        }
        a
    }

    fn image(&self) -> proto::ImageSpec {
        proto::ImageSpec {
            image: self.record.image.clone(),
            user_specified_image: self.record.image.clone(),
            ..Default::default()
        }
    }

    pub fn to_cri(&self, sandbox: Option<&Sandbox>) -> proto::Container {
        proto::Container {
            id: self.record.id.clone(),
            pod_sandbox_id: self.record.pod_uid.clone(),
            metadata: Some(self.metadata()),
            image: Some(self.image()),
            image_ref: self.record.image_ref.clone(),
            state: self.cri_state(),
            created_at: nanos(&self.record.created_at),
            labels: self.labels(sandbox),
            annotations: self.annotations(),
            image_id: self.record.image_id.clone(),
        }
    }

    pub fn status(&self, sandbox: Option<&Sandbox>) -> proto::ContainerStatus {
        let r = &self.record;
        let mut s = proto::ContainerStatus {
            id: r.id.clone(),
            metadata: Some(self.metadata()),
            state: self.cri_state(),
            created_at: nanos(&r.created_at),
            image: Some(self.image()),
            image_ref: r.image_ref.clone(),
            labels: self.labels(sandbox),
            annotations: self.annotations(),
            log_path: r.log_path.display().to_string(),
            image_id: r.image_id.clone(),
            stop_signal: r.stop_signal,
            user: r.user.as_ref().map(|u| proto::ContainerUser {
                linux: Some(proto::LinuxContainerUser {
                    uid: u.uid,
                    gid: u.gid,
                    supplemental_groups: u.supplemental_groups.clone().unwrap_or_default(),
                }),
            }),
            ..Default::default()
        };
        match &self.state {
            ContainerState::Created => {}
            ContainerState::Running { started_at, .. } => s.started_at = nanos(started_at),
            ContainerState::Exited { exit, started_at } => {
                s.started_at = started_at.as_deref().map_or(0, nanos);
                s.finished_at = nanos(&exit.finished_at);
                s.exit_code = exit.exit_code;
                s.reason = exit.reason().into();
                s.message = exit.message.clone();
            }
            ContainerState::Failed(why) => {
                s.exit_code = 128;
                s.reason = "StartError".into();
                s.message = why.clone();
            }
        }
        s
    }

    /// Whether it passes `filter`.
    pub fn passes(
        &self,
        filter: Option<&proto::ContainerFilter>,
        sandbox: Option<&Sandbox>,
    ) -> bool {
        let Some(f) = filter else { return true };
        (f.id.is_empty() || matches_id(&self.record.id, &f.id))
            && (f.pod_sandbox_id.is_empty() || matches_id(&self.record.pod_uid, &f.pod_sandbox_id))
            && f.state.as_ref().is_none_or(|s| s.state == self.cri_state())
            && selects(&f.label_selector, &self.labels(sandbox))
    }

    /// Whether it passes a stats filter.
    pub fn passes_stats(
        &self,
        filter: Option<&proto::ContainerStatsFilter>,
        sandbox: Option<&Sandbox>,
    ) -> bool {
        let Some(f) = filter else { return true };
        (f.id.is_empty() || matches_id(&self.record.id, &f.id))
            && (f.pod_sandbox_id.is_empty() || matches_id(&self.record.pod_uid, &f.pod_sandbox_id))
            && selects(&f.label_selector, &self.labels(sandbox))
    }

    pub fn attributes(&self, sandbox: Option<&Sandbox>) -> proto::ContainerAttributes {
        proto::ContainerAttributes {
            id: self.record.id.clone(),
            metadata: Some(self.metadata()),
            labels: self.labels(sandbox),
            annotations: self.annotations(),
        }
    }
}

impl NodeView {
    /// The sandbox of a run's pod.
    pub fn sandbox_of(&self, run: &Run) -> Option<&Sandbox> {
        self.sandboxes
            .iter()
            .find(|s| s.record.uid == run.record.pod_uid)
    }
}

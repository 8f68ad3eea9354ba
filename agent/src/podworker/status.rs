//! Pod status as kubelet writes it: recorded on the node, sent to the apiserver.

use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

use super::*;
use crate::model::pod_status;

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

impl Runner {
    pub(super) fn write_status(
        &mut self,
        sb: &SandboxRecord,
        pod: &Pod,
        views: &[View],
    ) -> Result<(), crate::runtime::RuntimeError> {
        self.write_status_as(sb, pod, views, true)
    }

    /// kubelet's first status of a pod it admitted, before the sandbox exists:
    /// Pending, PodReadyToStartContainers False, every container waiting.
    pub(super) fn write_initial_status(
        &mut self,
        uid: &str,
        pod: &Pod,
    ) -> Result<(), crate::runtime::RuntimeError> {
        let spec = spec_of(pod);
        let planned = SandboxRecord {
            uid: uid.to_string(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            hostname: String::new(),
            host_network: spec.host_network.unwrap_or(false),
            host_ipc: false,
            host_pid: false,
            qos: qos_class(&spec)
                .map(|q| q.as_str())
                .unwrap_or("BestEffort")
                .to_string(),
            cgroup: String::new(),
            ns_dir: PathBuf::new(),
            ip: String::new(),
            pause_pid: None,
            cpu_request_milli: 0,
            memory_request: 0,
            userns: None,
            created_at: k8s_openapi::jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string(),
        };
        let views = self.views(uid, pod);
        self.write_status_as(&planned, pod, &views, false)
    }

    /// The status of the pod from `views`; `sandbox_made` says whether its sandbox
    /// exists. A status that shows a container's exit for the first time, or the
    /// first status, must land (a later one does not replace it on its way).
    fn write_status_as(
        &mut self,
        sb: &SandboxRecord,
        pod: &Pod,
        views: &[View],
        sandbox_made: bool,
    ) -> Result<(), crate::runtime::RuntimeError> {
        let spec = spec_of(pod);
        // A pod being deleted turns terminal once nothing of it runs (kubelet's
        // terminal phase for deleted pods); until then its exited containers show
        // their terminated state, not a back-off. One stopped before it was
        // initialized keeps the conditions of a pending pod and is marked Failed.
        let terminating = self.termination.is_some();
        let stopped = terminating
            && !views
                .iter()
                .any(|v| matches!(v.current, Observed::Running { .. }));
        let live_phase = pod_lifecycle::phase(&spec, views);
        let phase = if self.failed.contains_key(&sb.uid) {
            "Failed"
        } else if stopped && live_phase != "Pending" {
            pod_lifecycle::phase_when_stopped(&spec, views)
        } else {
            live_phase
        };
        // A container's exit shows as such in the first status after it, then as its
        // back-off.
        let fresh = self.fresh_exits(views);
        let backoff = |v: &View| match &v.current {
            Observed::Exited { .. } if terminating || fresh.contains(&v.id) => None,
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
        let recorded = self.recorded(&sb.uid).and_then(|p| p.status);
        let previous: Vec<PodCondition> = recorded
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let current = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let failed = self.failed.get(&sb.uid);
        let ephemeral = self.ephemeral_views(&sb.uid, pod);
        let actual = self.actual_resources(&sb.uid);
        let resize = self.resize_state.clone();
        let allocated = if resize.allocated.is_empty() {
            self.allocation(&sb.uid, pod)
        } else {
            resize.allocated.clone()
        };
        let mut status = pod_status::pod_status(&pod_status::Input {
            spec: &spec,
            generation: pod.metadata.generation,
            views,
            ephemeral: &ephemeral,
            allocated: &allocated,
            actual: &actual,
            resize_pending: resize
                .pending
                .as_ref()
                .map(|(r, m)| (r.as_str(), m.as_str())),
            resize_in_progress: resize.in_progress.as_ref().map(|e| e.as_deref()),
            phase,
            sandbox_ready: sandbox_made && !stopped && !matches!(phase, "Succeeded" | "Failed"),
            reason: failed.map(|r| (r.reason.as_str(), r.message.as_str())),
            backoff: &backoff,
            previous: &previous,
            current: &current,
            now: k8s_openapi::jiff::Timestamp::now(),
            // The first status's start time stays.
            start_time: recorded
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0)
                .or_else(|| parse_time(&sb.created_at)),
            host_ip: &self.node_ip,
            pod_ip: &sb.ip,
            qos: &sb.qos,
        });
        if stopped && phase == "Pending" {
            status.phase = Some("Failed".into());
        }
        if let Some(c) = self.disruption_condition(&previous, pod.metadata.generation) {
            let conditions = status.conditions.get_or_insert_with(Vec::new);
            conditions.retain(|x| x.type_ != c.type_);
            conditions.push(c);
        }
        let keep = !sandbox_made || !fresh.is_empty();
        self.publish(&sb.uid, &sb.namespace, &sb.name, pod, status, keep)?;
        self.reported_exits.extend(fresh);
        Ok(())
    }

    /// The containers whose exit no status has shown yet, by ID.
    pub(super) fn fresh_exits(&self, views: &[View]) -> Vec<String> {
        views
            .iter()
            .filter(|v| matches!(v.current, Observed::Exited { .. }))
            .filter(|v| !v.id.is_empty() && !self.reported_exits.contains(&v.id))
            .map(|v| v.id.clone())
            .collect()
    }

    /// The pod as last recorded on the node, with its status.
    pub(super) fn recorded(&self, uid: &str) -> Option<Pod> {
        read_json(&self.rt.pod_state_dir(uid).join("pod.json"))
            .ok()
            .flatten()
    }

    /// Records a pod's status under the state directory (for `kernlet pods`, `exec` and
    /// the kubelet API), then sends it to the apiserver when it changed.
    pub(super) fn publish(
        &mut self,
        uid: &str,
        namespace: &str,
        name: &str,
        pod: &Pod,
        status: PodStatus,
        keep: bool,
    ) -> Result<(), crate::runtime::RuntimeError> {
        let mut out = pod.clone();
        out.status = Some(status.clone());
        // The node's record first: once the apiserver shows the status, `kernlet exec`,
        // `logs` and the kubelet API find the pod.
        let path = self.rt.pod_state_dir(uid).join("pod.json");
        if self.recorded(uid).as_ref() != Some(&out) {
            write_json(&path, &out)?;
        }
        if let Source::Api {
            updates, snapshot, ..
        } = &self.source
            && let Ok(mut last_sent) = self.last_sent.lock()
            && last_sent.get(uid) != Some(&status)
        {
            // A static pod's status goes to its mirror pod, once there is one.
            let object_uid = if is_static(pod) {
                let mirror = snapshot.lock().ok().and_then(|s| {
                    s.as_ref()?
                        .iter()
                        .find(|p| static_pods::mirror_hash(p) == Some(uid))
                        .and_then(|p| p.metadata.uid.clone())
                });
                match mirror {
                    Some(m) => m,
                    None => return Ok(()),
                }
            } else {
                uid.to_string()
            };
            let sent = updates.send(crate::controllers::pods::Update::Status {
                namespace: namespace.to_string(),
                name: name.to_string(),
                uid: uid.to_string(),
                object_uid,
                status: serde_json::to_value(&status).unwrap_or_default(),
                keep,
            });
            if sent.is_ok() {
                last_sent.insert(uid.to_string(), status);
            }
        }
        Ok(())
    }
}

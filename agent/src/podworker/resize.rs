//! In-place pod resize: the node's allocation of each container (kept across agent
//! restarts), admission of a resize the spec asks for, and its actuation — cgroup
//! values changed live, or a restart where the container's `resizePolicy` says so.

use k8s_openapi::api::core::v1::ResourceRequirements;

use super::*;
use crate::model::resize::{self, Allocation, Decision};

/// Where a pod's resize stands, for its status.
#[derive(Clone, Debug, Default)]
pub(super) struct ResizeState {
    /// What each container is allocated.
    pub(super) allocated: Allocation,
    /// PodResizePending: kubelet's reason (Deferred, Infeasible) and message.
    pub(super) pending: Option<(String, String)>,
    /// PodResizeInProgress, with the error that holds it up, if any.
    pub(super) in_progress: Option<Option<String>>,
}

/// The file of a pod's allocation, under its state directory.
const ALLOCATED: &str = "allocated.json";

impl Runner {
    /// The pod's allocation: as recorded, else what its spec asks for (recorded now —
    /// the pod was admitted with it).
    pub(super) fn allocation(&self, uid: &str, pod: &Pod) -> Allocation {
        let path = self.rt.pod_state_dir(uid).join(ALLOCATED);
        if let Ok(Some(a)) = read_json::<Allocation>(&path) {
            return a;
        }
        let a = resize::desired(&spec_of(pod));
        if let Err(e) = write_json(&path, &a) {
            tracing::warn!(pod = %uid, "recording the pod's allocation: {e}");
        }
        a
    }

    /// What the other pods of the node are allocated, together.
    fn others_allocated(&self, uid: &str) -> (u64, u64) {
        self.rt
            .sandboxes()
            .iter()
            .filter(|sb| sb.uid != uid)
            .filter_map(|sb| {
                read_json::<Allocation>(&self.rt.pod_state_dir(&sb.uid).join(ALLOCATED))
                    .ok()
                    .flatten()
            })
            .map(|a| resize::requested(&a))
            .fold((0, 0), |(c, m), (c2, m2)| (c + c2, m + m2))
    }

    /// Admits the resize the spec asks for, when there is one and it fits, and
    /// actuates the allocation on the running containers. Returns the containers to
    /// restart for it (their `resizePolicy` says RestartContainer), stopped already.
    pub(super) fn resize(
        &mut self,
        uid: &str,
        pod: &Pod,
        sb: &SandboxRecord,
        views: &[View],
    ) -> Vec<String> {
        let spec = spec_of(pod);
        let mut state = ResizeState {
            allocated: self.allocation(uid, pod),
            ..Default::default()
        };
        let desired = resize::desired(&spec);
        let differs = desired.iter().any(|(name, want)| {
            state
                .allocated
                .get(name)
                .is_none_or(|have| !resize::same(have, want))
        });
        if differs {
            let wanted = resize::pod_requests(&spec, &desired).unwrap_or((0, 0));
            let allocatable = (
                self.node_fit.allocatable_cpu_milli,
                self.node_fit.allocatable_memory,
            );
            match resize::decide(wanted, self.others_allocated(uid), allocatable) {
                Decision::Admit => {
                    tracing::info!(pod = %format!("{}/{}", sb.namespace, sb.name), "resize admitted");
                    state.allocated = desired;
                    let path = self.rt.pod_state_dir(uid).join(ALLOCATED);
                    if let Err(e) = write_json(&path, &state.allocated) {
                        tracing::warn!(pod = %uid, "recording the pod's allocation: {e}");
                    }
                }
                Decision::Deferred(m) => state.pending = Some(("Deferred".into(), m)),
                Decision::Infeasible(m) => state.pending = Some(("Infeasible".into(), m)),
            }
        }
        let restart = self.actuate(pod, sb, &spec, views, &mut state);
        self.resize_state = state;
        restart
    }

    /// Brings every running container to its allocation: live where its policy
    /// allows, else by a restart (stopped here; the caller starts it again).
    fn actuate(
        &mut self,
        pod: &Pod,
        sb: &SandboxRecord,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        views: &[View],
        state: &mut ResizeState,
    ) -> Vec<String> {
        let grace = pod_grace(spec);
        let mut restart = Vec::new();
        for c in pod_lifecycle::all_containers(spec) {
            let Some(v) = views.iter().find(|v| v.name == c.name) else {
                continue;
            };
            let Some(want) = state.allocated.get(&c.name) else {
                continue;
            };
            if !matches!(v.current, Observed::Running { .. }) {
                continue;
            }
            let Ok(Some(record)) = self.rt.container(&v.id) else {
                continue;
            };
            let have: ResourceRequirements =
                record.resources.clone().unwrap_or_else(|| want.clone());
            if resize::same(&have, want) {
                continue;
            }
            let name = format!("{}/{}", sb.namespace, sb.name);
            if resize::needs_restart(c, &have, want) {
                tracing::info!(pod = %name, container = %c.name, "resize: restarting the container, as its resizePolicy says");
                self.event(
                    pod,
                    &c.name,
                    false,
                    "Killing",
                    format!("Container {} resize requires restart", c.name),
                );
                stop_with_pre_stop(&self.rt, sb, Some(c), &v.id, grace, &self.notify(pod));
                restart.push(c.name.clone());
                continue;
            }
            match self.rt.update_resources(pod, &v.id, want) {
                Ok(unenforced) => {
                    tracing::info!(pod = %name, container = %c.name, "resized in place");
                    if !unenforced.is_empty() {
                        tracing::warn!(pod = %name, container = %c.name, "resize NOT enforced (no such controller in the cgroup v2 tree): {}", unenforced.join(", "));
                    }
                }
                Err(e) => {
                    tracing::warn!(pod = %name, container = %c.name, "resize: {e}");
                    state.in_progress = Some(Some(e.to_string()));
                }
            }
        }
        restart
    }

    /// What each container of the pod runs with now (its latest run's resources).
    pub(super) fn actual_resources(&self, uid: &str) -> Allocation {
        let mut latest: HashMap<String, crate::runtime::container::ContainerRecord> =
            HashMap::new();
        for r in self.rt.pod_containers(uid).into_iter() {
            if latest.get(&r.name).is_none_or(|l| l.restart <= r.restart) {
                latest.insert(r.name.clone(), r);
            }
        }
        latest
            .into_iter()
            .filter_map(|(name, r)| Some((name, r.resources?)))
            .collect()
    }
}

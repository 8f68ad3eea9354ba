//! How soon a pod's worker syncs again when nothing wakes it. A pod with something
//! moving on time alone (a probe, a back-off, a pull, a termination, a resize, a start
//! that failed) is synced every resync (1 s); a settled pod — everything running, or
//! done for good — only at the idle resync, or when a volume is due to be read again
//! or its active deadline comes. Its containers' changes wake it sooner through the
//! node's relist ([`super::relist`]), its object's changes through the watch.

use super::*;

impl Runner {
    /// Whether every regular container of the pod runs (its latest run).
    pub(super) fn all_running(&self, uid: &str, pod: &Pod) -> bool {
        use crate::runtime::container::ContainerState;
        let Some(spec) = pod.spec.as_ref() else {
            return false;
        };
        let runs = self.rt.pod_containers(uid);
        spec.containers.iter().all(|c| {
            runs.iter()
                .filter(|r| r.name == c.name)
                .max_by_key(|r| r.restart)
                .is_some_and(|r| {
                    matches!(
                        self.rt.container_state(&r.id),
                        ContainerState::Running { .. }
                    )
                })
        })
    }

    /// How long the worker of pod `uid` waits for its next sync unless woken.
    pub(super) fn next_sync(&self, uid: &str, pod: &Pod) -> Duration {
        if self.moving(uid, pod) {
            return self.timing.resync;
        }
        let now = Instant::now();
        let mut wait = self.timing.idle_resync;
        if let Some(due) = self.volume_checks.values().min() {
            wait = wait.min(due.saturating_duration_since(now));
        }
        if let Some(left) = self.deadline_left(uid, pod) {
            wait = wait.min(left);
        }
        wait.max(self.timing.resync)
    }

    /// Whether something of the pod changes with time alone, not only when one of its
    /// containers or its object changes.
    fn moving(&self, uid: &str, pod: &Pod) -> bool {
        let spec = spec_of(pod);
        let waiting = pod.metadata.deletion_timestamp.is_some()
            || self.termination.is_some()
            || !self.stopping.is_empty()
            || !self.start_failures.is_empty()
            || !self.pull_backoff.is_empty()
            || !self.host_port_errors.is_empty()
            || self.pulls.lock().map_or(true, |p| !p.is_empty())
            || self.resize_state.pending.is_some()
            || self.resize_state.in_progress.is_some();
        if waiting || has_probes(&spec) {
            return true;
        }
        if self.failed.contains_key(uid) {
            // Failed for good, and nothing of it is being stopped.
            return false;
        }
        let views = self.views(uid, pod);
        if matches!(pod_lifecycle::phase(&spec, &views), "Succeeded" | "Failed") {
            return false;
        }
        // Something would start (were every back-off over), or has not started yet.
        !pod_lifecycle::next(&spec, &views, &|_| true).is_empty()
            || views.iter().any(|v| {
                matches!(
                    v.current,
                    Observed::NotStarted | Observed::StartFailed { .. }
                )
            })
            || self
                .ephemeral_views(uid, pod)
                .iter()
                .any(|v| v.id.is_empty())
    }

    /// The time left until the pod's `activeDeadlineSeconds`, when it has one and has
    /// not failed yet.
    fn deadline_left(&self, uid: &str, pod: &Pod) -> Option<Duration> {
        let deadline = pod.spec.as_ref()?.active_deadline_seconds?;
        if self.failed.contains_key(uid) {
            return None;
        }
        let sb = self.rt.sandbox(uid).ok()??;
        let created = parse_time(&sb.created_at)?.as_second();
        let left = created + deadline - k8s_openapi::jiff::Timestamp::now().as_second();
        Some(Duration::from_secs(u64::try_from(left).unwrap_or(0)))
    }
}

/// Whether any container of the pod has a probe (probes run from the pod's sync).
fn has_probes(spec: &k8s_openapi::api::core::v1::PodSpec) -> bool {
    pod_lifecycle::all_containers(spec).any(|c| {
        c.liveness_probe.is_some() || c.readiness_probe.is_some() || c.startup_probe.is_some()
    })
}

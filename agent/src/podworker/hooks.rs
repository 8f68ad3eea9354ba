//! Lifecycle hooks: postStart after a container starts, preStop before it stops.

use super::*;

/// Stops container `id` (of spec `c`) as kubelet does: its preStop hook first, then
/// SIGTERM and SIGKILL at the end of `grace` — which the hook's time counts against,
/// with 2 s more for SIGTERM when the hook used it all.
pub(super) fn stop_with_pre_stop(
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

impl Runner {
    /// Runs a container's postStart hook and returns when it has (kubelet starts the
    /// next container only then); when it fails the container is killed
    /// (FailedPostStartHook) and restarts by the pod's policy.
    pub(super) fn post_start(
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
        let grace = pod_grace(spec);
        // kubelet gives postStart no timeout of its own; a stuck hook is bounded here
        // by the pod's grace period, at least 2 minutes.
        let limit = grace.max(Duration::from_secs(120));
        if let Err(why) = crate::runtime::probe::run(&self.rt, c, &target(sb, id), &h, limit) {
            tracing::warn!(pod = %format!("{}/{}", sb.namespace, sb.name), container = %c.name,
                "FailedPostStartHook: {why}; killing the container");
            let notify = self.notify(pod);
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
            stop_with_pre_stop(&self.rt, sb, Some(c), id, grace, &notify);
        }
    }
}

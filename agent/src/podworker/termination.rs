//! Stopping containers and pods: sidecars of finished pods, deleted pods (kubelet's
//! termination: the shortest grace period seen, status written while terminating, the
//! terminal phase before the final delete) and pods gone from the apiserver.

use super::*;

/// A pod's termination, from the first sight of its deletion (on its worker).
pub(super) struct Termination {
    /// The grace period in force (seconds): it only shortens.
    grace: i64,
    started: Instant,
    /// When what still runs is killed.
    deadline: Instant,
    /// preStop hooks and SIGTERM of every container, in kubelet's order.
    stopper: std::thread::JoinHandle<()>,
    /// What still ran at the deadline was killed.
    killed: bool,
    /// Set to end the wait at the termination barrier early (a shortened grace).
    cancel_barrier: Arc<AtomicBool>,
    /// Every container stopped, the terminal status sent and the removal begun.
    done: bool,
}

/// The grace period a deletion gives the pod: the deletion's own, else the spec's.
pub(super) fn deletion_grace(pod: &Pod) -> i64 {
    let spec = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    pod.metadata
        .deletion_grace_period_seconds
        .unwrap_or(spec)
        .max(0)
}

/// A pod's wait at the termination barrier before its preStop hooks and SIGTERM.
struct BarrierHold {
    barrier: crate::controllers::endpoint_barrier::EndpointBarrier,
    /// The barrier's wait, never past the grace period.
    limit: Duration,
    cancel: Arc<AtomicBool>,
}

impl BarrierHold {
    /// Waits until the node's datapath no longer sends the pod new connections (its
    /// EndpointSlices programmed with the pod not ready or gone), at most `limit`.
    fn wait(&self, sb: &SandboxRecord) {
        use crate::controllers::endpoint_barrier::Held;
        if self.limit.is_zero() {
            return;
        }
        // A host-network pod's address is the node's, which other pods share.
        let ips: Vec<IpAddr> = match sb.host_network {
            true => Vec::new(),
            false => sb.ip.parse().into_iter().collect(),
        };
        let pod = format!("{}/{}", sb.namespace, sb.name);
        let holding = || {
            tracing::info!(pod = %pod, "holding the pod's stop until its endpoints leave the load-balancer (at most {:?})", self.limit);
        };
        match self
            .barrier
            .hold(&sb.uid, &ips, self.limit, &self.cancel, holding)
        {
            Held::NotServing => {}
            Held::Released(d) => {
                tracing::info!(pod = %pod, "the pod's endpoints left the load-balancer after {:.0?}; stopping it", d);
            }
            Held::TimedOut(d) => tracing::warn!(
                pod = %pod,
                "the pod is still a ready endpoint after {:.0?} (its EndpointSlices not updated); stopping it anyway",
                d
            ),
            Held::Cancelled(d) => {
                tracing::info!(pod = %pod, "the grace period was shortened; stopping the pod after {:.0?} at the barrier", d);
            }
        }
    }
}

fn seconds(g: i64) -> Duration {
    Duration::from_secs(u64::try_from(g).unwrap_or(0))
}

/// Stops the pod's containers by `deadline`: the main containers together, then the
/// sidecars (restartable init containers) in reverse order, each with its preStop
/// hook; sidecars get what the main containers left of the grace period (at least 2 s,
/// as kubelet).
fn stop_containers(
    rt: &Runtime,
    sb: &SandboxRecord,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    deadline: Instant,
    notify: &Notify,
) {
    let records: Vec<_> = rt.pod_containers(&sb.uid).into_iter().collect();
    let sidecars: Vec<String> = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| pod_lifecycle::is_sidecar(c))
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
    for wave in waves {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(2));
        std::thread::scope(|scope| {
            for r in wave {
                if !matches!(rt.container_state(&r.id), ContainerState::Running { .. }) {
                    continue;
                }
                let c = pod_lifecycle::all_containers(spec).find(|c| c.name == r.name);
                if let Some((events, pod)) = notify {
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
}

impl Runner {
    /// Stops a sidecar whose main containers are done (once; in the background).
    pub(super) fn stop_sidecar(
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
        let grace = pod_grace(spec);
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

    /// Stops a pod's containers (preStop, SIGTERM, SIGKILL after the deletion's or the
    /// pod's grace period) and removes them and its sandbox, in the background; with
    /// `finish`, then deletes the pod's object (kubelet's final delete — a pod already
    /// gone from the apiserver has none to delete).
    pub(super) fn remove_pod(
        &mut self,
        sb: SandboxRecord,
        deletion_grace: Option<i64>,
        finish: bool,
    ) {
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
            .pod_containers(&sb.uid)
            .into_iter()
            .map(|c| c.id)
            .collect();
        self.probes.retain(|(id, _), _| !ids.contains(id));
        super::probe_metrics::forget_pod(&sb.uid);
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
            tracing::info!(pod = %format!("{}/{}", sb.namespace, sb.name), "pod deleted or gone; stopping it within {grace} s");
            let deadline = Instant::now() + Duration::from_secs(grace);
            stop_containers(&rt, &sb, &spec, deadline, &notify);
            let records: Vec<_> = rt.pod_containers(&sb.uid).into_iter().collect();
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
            if let Some(updates) = updates.filter(|_| finish && !static_pod) {
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

    /// One sync of a pod being deleted: its containers stopped (once, in kubelet's
    /// order), killed when a shortened grace period runs out, its status written as it
    /// goes; once nothing runs, the terminal status, then the removal and the final
    /// delete.
    pub(super) fn terminate(
        &mut self,
        uid: &str,
        pod: &Pod,
    ) -> Result<(), crate::runtime::RuntimeError> {
        if self.termination.as_ref().is_some_and(|t| t.done) {
            return Ok(());
        }
        let Some(sb) = self.rt.sandbox(uid)? else {
            // Nothing of it runs: what it left (its first status) goes, then its object.
            let _ = std::fs::remove_dir_all(self.rt.pod_state_dir(uid));
            if let Source::Api { updates, .. } = &self.source
                && !std::mem::replace(&mut self.finish_sent, true)
            {
                let _ = updates.send(crate::controllers::pods::Update::Finished {
                    namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                    name: pod.metadata.name.clone().unwrap_or_default(),
                    uid: uid.to_string(),
                });
            }
            return Ok(());
        };
        let grace = deletion_grace(pod);
        let now = Instant::now();
        let name = format!("{}/{}", sb.namespace, sb.name);
        match &mut self.termination {
            None => {
                tracing::info!(pod = %name, "pod deleted; stopping it within {grace} s");
                let spec = pod.spec.clone().unwrap_or_default();
                let deadline = now + seconds(grace);
                let (rt, sb2, notify) = (self.rt.clone(), sb.clone(), self.notify(pod));
                let cancel_barrier = Arc::new(AtomicBool::new(false));
                let hold = self.barrier.clone().map(|(barrier, limit)| BarrierHold {
                    barrier,
                    limit: limit.min(seconds(grace)),
                    cancel: Arc::clone(&cancel_barrier),
                });
                let stopper = std::thread::Builder::new()
                    .name(format!("stop-{}", &uid[..uid.len().min(8)]))
                    .spawn(move || {
                        if let Some(h) = hold {
                            h.wait(&sb2);
                        }
                        stop_containers(&rt, &sb2, &spec, deadline, &notify)
                    })
                    .map_err(crate::runtime::RuntimeError::io("starting the pod's stop"))?;
                self.termination = Some(Termination {
                    grace,
                    started: now,
                    deadline,
                    stopper,
                    killed: false,
                    cancel_barrier,
                    done: false,
                });
            }
            Some(t) if grace < t.grace => {
                tracing::info!(pod = %name, "grace period shortened from {} s to {grace} s", t.grace);
                t.grace = grace;
                t.deadline = t.deadline.min(now + seconds(grace));
                // The barrier never holds past the grace period: a shortened one ends
                // its wait.
                t.cancel_barrier.store(true, Ordering::Relaxed);
            }
            Some(_) => {}
        }
        let Some(t) = self.termination.as_mut() else {
            return Ok(());
        };
        // Every container gets 2 s after its SIGTERM at least, as kubelet gives.
        if !t.killed && now >= t.deadline.max(t.started + Duration::from_secs(2)) {
            t.killed = true;
            let running: Vec<String> = self
                .rt
                .pod_containers(uid)
                .into_iter()
                .filter(|c| {
                    matches!(
                        self.rt.container_state(&c.id),
                        ContainerState::Running { .. }
                    )
                })
                .map(|c| c.id)
                .collect();
            if !running.is_empty() {
                tracing::info!(pod = %name, "grace period over; killing {} container(s)", running.len());
                let rt = self.rt.clone();
                std::thread::spawn(move || {
                    for id in running {
                        if let Err(e) = rt.stop_container(&id, Duration::ZERO) {
                            tracing::warn!("killing container {id}: {e}");
                        }
                    }
                });
            }
        }
        let stopped = t.stopper.is_finished();
        let views = self.views(uid, pod);
        self.write_status(&sb, pod, &views)?;
        if stopped {
            if let Some(t) = self.termination.as_mut() {
                t.done = true;
            }
            self.remove_pod(sb, Some(0), true);
        }
        Ok(())
    }
}

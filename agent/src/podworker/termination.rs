//! Stopping containers and pods: sidecars of finished pods, deleted or gone pods.

use super::*;

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

    /// Stops a pod's containers (preStop, SIGTERM, SIGKILL after the deletion's or the
    /// pod's grace period) and removes them and its sandbox, in the background.
    pub(super) fn remove_pod(&mut self, sb: SandboxRecord, deletion_grace: Option<i64>) {
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

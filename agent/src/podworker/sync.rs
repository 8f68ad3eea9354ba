//! One sync of one pod: observe its containers, decide what to start or stop, start it.

use super::*;

impl Runner {
    /// What the runtime shows of the pod's init and main containers.
    pub(super) fn views(&self, uid: &str, pod: &Pod) -> Vec<View> {
        let spec = spec_of(pod);
        self.views_of(uid, pod_lifecycle::all_containers(&spec))
    }

    /// What the runtime shows of the pod's ephemeral containers.
    pub(super) fn ephemeral_views(&self, uid: &str, pod: &Pod) -> Vec<View> {
        let spec = spec_of(pod);
        self.views_of(uid, pod_lifecycle::ephemeral_containers(&spec).iter())
    }

    fn views_of<'a>(
        &self,
        uid: &str,
        containers: impl Iterator<Item = &'a k8s_openapi::api::core::v1::Container>,
    ) -> Vec<View> {
        let records = self.rt.pod_containers(uid);
        let mut views = Vec::new();
        for c in containers {
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
                v.spec_hash = cur.spec_hash.clone();
                v.user = cur.user.as_ref().map(|u| {
                    (
                        u.uid,
                        u.gid,
                        u.supplemental_groups.clone().unwrap_or_default(),
                    )
                });
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

    pub(super) fn may_restart(&self, uid: &str, v: &View) -> bool {
        self.restart_wait(uid, v).0
    }

    /// Whether an exited container may restart now, and the back-off delay that
    /// applies to it.
    pub(super) fn restart_wait(&self, uid: &str, v: &View) -> (bool, Duration) {
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

    /// Brings the pod's containers to what its spec says; counts, as kubelet, the
    /// user-namespaced pods whose sandbox this sync makes, and those of them whose
    /// sync fails (a container that cannot be created included).
    pub(super) fn sync_pod(
        &mut self,
        uid: &str,
        pod: &Pod,
    ) -> Result<(), crate::runtime::RuntimeError> {
        let userns_start = pod.metadata.deletion_timestamp.is_none()
            && pod.spec.as_ref().and_then(|s| s.host_users) == Some(false)
            && !self.rt.has_sandbox(uid);
        if !userns_start {
            return self.sync_pod_now(uid, pod);
        }
        let metrics = super::metrics::pod_manager();
        metrics.started_userns_pods.inc();
        let result = self.sync_pod_now(uid, pod);
        if result.is_err() || self.start_failures.keys().any(|(u, _)| u == uid) {
            metrics.started_userns_pod_errors.inc();
        }
        result
    }

    fn sync_pod_now(&mut self, uid: &str, pod: &Pod) -> Result<(), crate::runtime::RuntimeError> {
        if pod.metadata.deletion_timestamp.is_some() {
            return self.terminate(uid, pod);
        }
        // A stat: `run_sandbox` below reads the record itself.
        let has_sandbox = self.rt.has_sandbox(uid);
        // kubelet's first word on a pod it admits comes before the sandbox.
        if !self.admitted_status && matches!(self.source, Source::Api { .. }) && !has_sandbox {
            self.write_initial_status(uid, pod)?;
        }
        self.admitted_status = true;
        if !has_sandbox && !self.runtime_class_allows(pod) {
            return Ok(());
        }
        let sb = self.rt.run_sandbox(pod, uid, &self.node_ip)?;
        let spec = spec_of(pod);
        self.take_eviction(uid, pod);
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
            // Failed for good: nothing starts again; what runs is stopped (an evicted
            // pod within the eviction's grace period).
            let views = self.views(uid, pod);
            let grace = self
                .evicted
                .as_ref()
                .map_or_else(|| pod_grace(&spec), |e| e.grace);
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
            // The terminal status first: once the content is gone the pod counts as
            // cleaned up.
            self.write_status(&sb, pod, &views)?;
            self.remove_evicted_content(uid, &views);
            return Ok(());
        }
        // Only a pod with claimed volumes pays for the check (its containers' views).
        if Self::has_claimed_volumes(pod) && self.finished(uid, pod) {
            self.release_claims(uid, pod);
        } else if let Err(why) = self.prepare_claims(uid, pod) {
            // As kubelet: the containers wait in ContainerCreating while the volume
            // manager cannot mount, and the pod says why in a FailedMount event.
            let spec = spec_of(pod);
            for c in pod_lifecycle::all_containers(&spec) {
                self.start_failures.insert(
                    (uid.to_string(), c.name.clone()),
                    ("ContainerCreating".into(), String::new()),
                );
            }
            tracing::warn!(pod = %format!("{}/{}", sb.namespace, sb.name), "{why}");
            self.event(pod, "", true, "FailedMount", why);
            let views = self.views(uid, pod);
            return self.write_status(&sb, pod, &views);
        }
        if let Err(why) = self.prepare_volumes(uid, pod) {
            let why = why.to_string();
            // The containers wait, with the reason, until the volumes can be written.
            let spec = spec_of(pod);
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
        if let Err((reason, message)) = self.prepare_image_volumes(uid, pod) {
            for c in pod_lifecycle::all_containers(&spec_of(pod)) {
                self.start_failures.insert(
                    (uid.to_string(), c.name.clone()),
                    (reason.clone(), message.clone()),
                );
            }
            let views = self.views(uid, pod);
            return self.write_status(&sb, pod, &views);
        }
        let spec = spec_of(pod);
        let views = self.views(uid, pod);
        // A container's exit is reported before anything restarts it.
        if !self.fresh_exits(&views).is_empty() {
            self.write_status(&sb, pod, &views)?;
        }
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
        let mut changed = self.resize(uid, pod, &sb, &views);
        for name in self.restart_changed(pod, &sb, &spec, &views) {
            if !changed.contains(&name) {
                changed.push(name);
            }
        }
        let views = if changed.is_empty() {
            views
        } else {
            self.views(uid, pod)
        };
        let mut actions = {
            let allowed: HashMap<String, bool> = views
                .iter()
                .map(|v| (v.name.clone(), self.may_restart(uid, v)))
                .collect();
            pod_lifecycle::next(&spec, &views, &|name| {
                allowed.get(name).copied().unwrap_or(true)
            })
        };
        // A container stopped for a changed spec starts again at once, whatever the
        // restart policy and back-off say.
        for name in changed {
            let restart = views
                .iter()
                .find(|v| v.name == name)
                .map_or(0, |v| v.restarts + 1);
            actions.retain(|a| !matches!(a, Action::Start { name: n, .. } if *n == name));
            actions.push(Action::Start { name, restart });
        }
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
            let Some(image) = self.image_or_wait(pod, &sb, c, restart) else {
                continue;
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
                        .insert(key, ("CreateContainerConfigError".into(), why.to_string()));
                    continue;
                }
            };
            // It runs with what the node allocated to it (a resize the node has not
            // admitted does not apply).
            let mut c = c;
            if let Some(r) = self.resize_state.allocated.get(&name) {
                c.resources = Some(r.clone());
            }
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
        self.start_ephemeral(uid, pod, &sb);
        self.prune(uid, &spec);
        self.open_host_ports(&sb, pod);
        let views = self.views(uid, pod);
        self.run_probes(&sb, pod, &views);
        let views = self.views(uid, pod);
        // A container killed to be restarted that exited while this sync ran is
        // restarted by the next one (its exit wakes it through the relist), which
        // writes the status: its exit alone is never shown, as with kubelet.
        self.killed_for_restart
            .retain(|id| views.iter().any(|v| v.id == *id));
        let restarts = pod_lifecycle::next(&spec, &views, &|_| true);
        if views.iter().any(|v| {
            matches!(v.current, Observed::Exited { .. })
                && self.killed_for_restart.contains(&v.id)
                && restarts
                    .iter()
                    .any(|a| matches!(a, Action::Start { name, .. } if *name == v.name))
        }) {
            return Ok(());
        }
        self.write_status(&sb, pod, &views)
    }

    /// Admits a pod that has no sandbox yet, as kubelet does; a refused one is
    /// remembered and reported failed.
    pub(super) fn admit(
        &mut self,
        uid: &str,
        pod: &Pod,
        desired: &[(String, Arc<Pod>)],
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
        let spec = spec_of(pod);
        let verdict = crate::model::lsm::admit(pod, &self.node_fit.lsm)
            .and_then(|()| crate::model::admission::admit(&spec, &admitted, &self.node_fit));
        match verdict {
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
    pub(super) fn report_refused(
        &mut self,
        uid: &str,
        pod: &Pod,
    ) -> Result<(), crate::runtime::RuntimeError> {
        let Some(r) = self.failed.get(uid).cloned() else {
            return Ok(());
        };
        let host_ip = (!self.node_ip.is_empty()).then(|| self.node_ip.clone());
        let spec = spec_of(pod);
        let status = k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Failed".into()),
            reason: Some(r.reason),
            message: Some(r.message),
            observed_generation: pod.metadata.generation,
            qos_class: qos_class(&spec).ok().map(|q| q.as_str().to_string()),
            host_ips: host_ip
                .clone()
                .map(|ip| vec![k8s_openapi::api::core::v1::HostIP { ip }]),
            host_ip,
            ..Default::default()
        };
        let (ns, name) = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        self.publish(uid, &ns, &name, pod, status, true)
    }

    /// Container `c` with its environment resolved (see [`crate::model::env`]): from
    /// the apiserver for its pods; a static pod may use only its own fields.
    pub(super) fn resolve_env(
        &self,
        sb: &SandboxRecord,
        pod: &Pod,
        c: &k8s_openapi::api::core::v1::Container,
    ) -> Result<k8s_openapi::api::core::v1::Container, crate::model::env::EnvError> {
        use crate::model::env::EnvError;
        let ns = sb.namespace.clone();
        let lookup = |secret: bool, name: &str| match &self.source {
            Source::Api { client, handle, .. } if !is_static(pod) => handle
                .block_on(crate::controllers::pod_sources::source_data(
                    client, &ns, secret, name,
                ))
                .map_err(|e| EnvError::Source(e.to_string())),
            _ => Err(EnvError::Source(format!(
                "a static pod cannot use {} {name:?}: only pods from the apiserver may refer to configMaps and secrets",
                if secret { "secret" } else { "configmap" }
            ))),
        };
        let service_env = match &self.source {
            Source::Api {
                client,
                handle,
                services,
                ..
            } => {
                let links = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.enable_service_links)
                    .unwrap_or(true);
                handle
                    .block_on(crate::controllers::pod_sources::service_env(
                        client, services, &ns, links,
                    ))
                    .map_err(|e| EnvError::Source(e.to_string()))?
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

    /// Removes the ended runs of each container the node no longer keeps, with their
    /// logs (`pod_lifecycle::runs_to_keep`, kubelet's container collection).
    pub(super) fn prune(&self, uid: &str, spec: &k8s_openapi::api::core::v1::PodSpec) {
        let records = self.rt.pod_containers(uid);
        let deleting = self.termination.is_some();
        for c in pod_lifecycle::all_containers(spec) {
            let mine = runs_of(&records, uid, &c.name);
            let Some(latest) = mine.last() else {
                continue;
            };
            let (ended, restarts) = match self.rt.container_state(&latest.id) {
                ContainerState::Exited { exit, .. } => (
                    Some(parse_time(&exit.finished_at).map_or(Duration::ZERO, |t| {
                        Duration::from_secs(
                            u64::try_from(
                                k8s_openapi::jiff::Timestamp::now().as_second() - t.as_second(),
                            )
                            .unwrap_or(0),
                        )
                    })),
                    !deleting && pod_lifecycle::restarts_after_exit(spec, &c.name, exit.exit_code),
                ),
                _ => (None, false),
            };
            let keep = pod_lifecycle::runs_to_keep(ended, restarts);
            for old in mine.iter().take(mine.len().saturating_sub(keep)) {
                if self.rt.remove_container(&old.id).is_ok() {
                    let _ = std::fs::remove_file(&old.log_path);
                }
            }
        }
    }

    /// Stops every running container whose spec changed since its run was made
    /// (kubelet's "definition changed"): preStop, SIGTERM, SIGKILL after the pod's
    /// grace period. Returns their names, to be started again.
    pub(super) fn restart_changed(
        &mut self,
        pod: &Pod,
        sb: &SandboxRecord,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        views: &[View],
    ) -> Vec<String> {
        let grace = pod_grace(spec);
        let mut changed = Vec::new();
        for c in pod_lifecycle::all_containers(spec) {
            let Some(v) = views.iter().find(|v| v.name == c.name) else {
                continue;
            };
            if !matches!(v.current, Observed::Running { .. })
                || v.spec_hash.is_empty()
                || v.spec_hash == pod_lifecycle::spec_hash(c)
            {
                continue;
            }
            let message = format!("Container {} definition changed, will be restarted", c.name);
            tracing::info!(pod = %format!("{}/{}", sb.namespace, sb.name), container = %c.name, "{message}");
            self.event(pod, &c.name, false, "Killing", message);
            stop_with_pre_stop(&self.rt, sb, Some(c), &v.id, grace, &self.notify(pod));
            changed.push(c.name.clone());
        }
        changed
    }

    /// Starts the ephemeral containers (`kubectl debug`) not started yet, once each, in
    /// the order they were added; they never restart.
    pub(super) fn start_ephemeral(&mut self, uid: &str, pod: &Pod, sb: &SandboxRecord) {
        let spec = spec_of(pod);
        let ephemeral = pod_lifecycle::ephemeral_containers(&spec);
        if ephemeral.is_empty() {
            return;
        }
        let records = self.rt.pod_containers(uid);
        for c in &ephemeral {
            let key = (uid.to_string(), c.name.clone());
            if !runs_of(&records, uid, &c.name).is_empty() {
                continue;
            }
            let Some(image) = self.image_or_wait(pod, sb, c, 0) else {
                continue;
            };
            let c = match self.resolve_env(sb, pod, c) {
                Ok(c) => c,
                Err(why) => {
                    self.event(pod, &c.name, true, "Failed", format!("Error: {why}"));
                    self.start_failures
                        .insert(key, ("CreateContainerConfigError".into(), why.to_string()));
                    continue;
                }
            };
            match self.rt.start_container(sb, pod, &c, 0, &image) {
                Ok(r) => {
                    self.start_failures.remove(&key);
                    tracing::info!(pod = %format!("{}/{}", sb.namespace, sb.name), container = %c.name, id = %r.id, "ephemeral container started");
                    self.event(pod, &c.name, false, "Created", "Container created".into());
                    self.event(pod, &c.name, false, "Started", "Container started".into());
                }
                Err(e) => {
                    tracing::warn!(pod = %format!("{}/{}", sb.namespace, sb.name), container = %c.name, "{e}");
                    self.event(pod, &c.name, true, "Failed", format!("Error: {e}"));
                    self.start_failures
                        .insert(key, (e.reason().into(), e.to_string()));
                }
            }
        }
    }

    /// The image to start container `c` from, or `None` with the reason it waits
    /// recorded for its status (pulling, ImagePullBackOff, a failed pull).
    fn image_or_wait(
        &mut self,
        pod: &Pod,
        sb: &SandboxRecord,
        c: &k8s_openapi::api::core::v1::Container,
        restart: u32,
    ) -> Option<crate::runtime::image::ImageRecord> {
        let key = (sb.uid.clone(), c.name.clone());
        let why = match self.image_ready(pod, c, restart) {
            ImageReady::Yes(image) => return Some(image),
            ImageReady::Pulling(reference) => (
                "ContainerCreating".to_string(),
                format!("pulling image {reference}"),
            ),
            ImageReady::BackOff(message) => ("ImagePullBackOff".to_string(), message),
            ImageReady::Failed(e) => {
                tracing::warn!(pod = %format!("{}/{}", sb.namespace, sb.name), container = %c.name, "{e}");
                (e.reason().to_string(), e.to_string())
            }
        };
        self.start_failures.insert(key, why);
        None
    }
}

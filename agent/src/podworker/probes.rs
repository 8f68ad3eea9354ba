//! Startup, liveness and readiness probes of running containers.

use super::*;

/// Results of probe runs, by (container ID, kind).
pub(super) type ProbeResults = Arc<std::sync::Mutex<HashMap<(String, probe::Kind), ProbeOutcome>>>;

/// What one probe run gave: its output, or why it failed.
pub(super) type ProbeOutcome = Result<String, crate::runtime::probe::ProbeError>;

/// One probe of one running container.
pub(super) struct ProbeRun {
    pub(super) tracker: probe::Tracker,
    /// When the next run may start.
    pub(super) next_at: Instant,
    pub(super) in_flight: bool,
}

impl Runner {
    /// Starts the probes that are due, counts the results that came in, and acts on
    /// the verdicts: a failed liveness or startup probe kills the container (it then
    /// restarts by the pod's restart policy); readiness shows in the views.
    pub(super) fn run_probes(&mut self, sb: &SandboxRecord, pod: &Pod, views: &[View]) {
        let spec = spec_of(pod);
        let now = Instant::now();
        // This pod's results only (the map holds every pod's).
        let mine: HashSet<&str> = views.iter().map(|v| v.id.as_str()).collect();
        let results: Vec<_> = self
            .probe_results
            .lock()
            .map(|mut r| {
                let keys: Vec<_> = r
                    .keys()
                    .filter(|(id, _)| mine.contains(id.as_str()))
                    .cloned()
                    .collect();
                keys.into_iter()
                    .filter_map(|k| r.remove(&k).map(|v| (k, v)))
                    .collect()
            })
            .unwrap_or_default();
        let mut unhealthy = Vec::new();
        for (key, result) in results {
            if let Some(v) = views.iter().find(|v| v.id == key.0) {
                super::probe_metrics::count(super::probe_metrics::ProbeSeries {
                    container: v.name.clone(),
                    namespace: sb.namespace.clone(),
                    pod: sb.name.clone(),
                    pod_uid: sb.uid.clone(),
                    probe_type: key.1.name(),
                    result: if result.is_ok() {
                        "successful"
                    } else {
                        "failed"
                    },
                });
            }
            if let Some(run) = self.probes.get_mut(&key) {
                run.in_flight = false;
                run.next_at = now + run.tracker.timing.period;
                match &result {
                    Ok(_) => run.tracker.record(true, ""),
                    Err(why) => {
                        tracing::info!(pod = %format!("{}/{}", sb.namespace, sb.name), container = %key.0, "{} probe failed: {why}", key.1.name());
                        run.tracker.record(false, &why.to_string());
                        if let Some(v) = views.iter().find(|v| v.id == key.0) {
                            unhealthy.push((
                                v.name.clone(),
                                format!("{} probe failed: {why}", key.1.name()),
                            ));
                        }
                    }
                }
            }
        }
        for (name, message) in unhealthy {
            self.event(pod, &name, true, "Unhealthy", message);
        }
        for c in pod_lifecycle::all_containers(&spec) {
            let Some(v) = views.iter().find(|v| v.name == c.name) else {
                continue;
            };
            let Observed::Running { started_at } = &v.current else {
                continue;
            };
            let ran = parse_time(started_at).map_or(Duration::ZERO, |t| {
                Duration::from_secs(
                    u64::try_from(k8s_openapi::jiff::Timestamp::now().as_second() - t.as_second())
                        .unwrap_or(0),
                )
            });
            let startup_done = probe::Kind::Startup.of(c).is_none()
                || self
                    .probes
                    .get(&(v.id.clone(), probe::Kind::Startup))
                    .is_some_and(|r| r.tracker.verdict == Some(true));
            let kinds: &[probe::Kind] = if startup_done {
                &[probe::Kind::Liveness, probe::Kind::Readiness]
            } else {
                &[probe::Kind::Startup]
            };
            for &kind in kinds {
                let Some(p) = kind.of(c) else { continue };
                let Some(handler) = crate::runtime::probe::Handler::of_probe(p) else {
                    continue;
                };
                let key = (v.id.clone(), kind);
                let run = self.probes.entry(key.clone()).or_insert_with(|| ProbeRun {
                    tracker: probe::Tracker::new(probe::Timing::of(p)),
                    next_at: now,
                    in_flight: false,
                });
                if run.tracker.verdict == Some(false) && kind != probe::Kind::Readiness {
                    continue;
                }
                if run.in_flight || now < run.next_at || ran < run.tracker.timing.initial_delay {
                    continue;
                }
                run.in_flight = true;
                let (rt, results, c, t, timeout) = (
                    self.rt.clone(),
                    Arc::clone(&self.probe_results),
                    c.clone(),
                    target(sb, &v.id),
                    run.tracker.timing.timeout,
                );
                std::thread::spawn(move || {
                    let r = crate::runtime::probe::run(&rt, &c, &t, &handler, timeout);
                    if let Ok(mut m) = results.lock() {
                        m.insert(key, r);
                    }
                });
            }
            // Liveness or startup failed: the container is killed, with the probe's
            // grace period (else the pod's).
            for kind in [probe::Kind::Startup, probe::Kind::Liveness] {
                let key = (v.id.clone(), kind);
                let Some(run) = self.probes.get_mut(&key) else {
                    continue;
                };
                if run.tracker.verdict != Some(false) || run.in_flight {
                    continue;
                }
                // Acted on once: the tracker stays failed, never in flight again.
                run.in_flight = true;
                let why = run.tracker.last_failure.clone();
                let grace = kind
                    .of(c)
                    .and_then(|p| p.termination_grace_period_seconds)
                    .or(spec.termination_grace_period_seconds)
                    .and_then(|g| u64::try_from(g).ok())
                    .unwrap_or(30);
                tracing::info!(pod = %format!("{}/{}", sb.namespace, sb.name), container = %c.name,
                    "Container {} failed {} probe, will be restarted: {why}", c.name, kind.name().to_lowercase());
                self.event(
                    pod,
                    &c.name,
                    false,
                    "Killing",
                    format!(
                        "Container {} failed {} probe, will be restarted",
                        c.name,
                        kind.name().to_lowercase()
                    ),
                );
                // Killed to be restarted: kubelet restarts it in the same sync, so its
                // exit never shows on its own in a status.
                self.reported_exits.insert(v.id.clone());
                self.killed_for_restart.insert(v.id.clone());
                let (rt, id, sb, c) = (self.rt.clone(), v.id.clone(), sb.clone(), c.clone());
                let notify = self.notify(pod);
                std::thread::spawn(move || {
                    stop_with_pre_stop(
                        &rt,
                        &sb,
                        Some(&c),
                        &id,
                        Duration::from_secs(grace),
                        &notify,
                    );
                });
            }
        }
        // Probes of containers that are no longer running go.
        let running: HashSet<&str> = views
            .iter()
            .filter(|v| matches!(v.current, Observed::Running { .. }))
            .map(|v| v.id.as_str())
            .collect();
        let ids: HashSet<String> = views.iter().map(|v| v.id.clone()).collect();
        self.probes
            .retain(|(id, _), _| !ids.contains(id) || running.contains(id.as_str()));
    }
}

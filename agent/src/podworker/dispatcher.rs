//! The dispatcher: one worker thread per pod, handed its pod's changes; pods no
//! longer wanted are retired and removed once their worker has ended.

use super::*;

/// A worker's latest pod object and a count bumped at each change, with the condition
/// variable that wakes the worker.
type Latest = Arc<(std::sync::Mutex<(Arc<Pod>, u64)>, std::sync::Condvar)>;

/// One pod's worker: a thread of its own that syncs the pod every resync, or sooner when
/// the pod changes, so a pod whose volumes wait on a slow apiserver, or whose sync
/// fails, holds up no other pod.
pub(super) struct PodWorker {
    pub(super) uid: String,
    /// The latest pod object, and a count bumped at each change.
    pub(super) pod: Latest,
    pub(super) stop: Arc<AtomicBool>,
    /// The last sync's error, for the daemon's account.
    pub(super) last_error: Arc<std::sync::Mutex<Option<String>>>,
    pub(super) thread: std::thread::JoinHandle<()>,
}

impl PodWorker {
    /// Hands the worker a newer pod object; wakes it when more than the status
    /// changed (as kubelet, a pod's own status write is no reason to sync it again).
    fn update(&self, pod: &Arc<Pod>) {
        let (lock, wake) = &*self.pod;
        if let Ok(mut p) = lock.lock()
            && !Arc::ptr_eq(&p.0, pod)
            && *p.0 != **pod
        {
            let wake_up = !crate::controllers::pods::same_but_status(&p.0, pod);
            p.0 = Arc::clone(pod);
            if wake_up {
                p.1 += 1;
                wake.notify_one();
            }
        }
    }

    /// Wakes the worker for a sync now (its containers changed).
    fn poke(&self) {
        let (lock, wake) = &*self.pod;
        if let Ok(mut p) = lock.lock() {
            p.1 += 1;
            wake.notify_one();
        }
    }

    fn retire(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.pod.1.notify_one();
    }
}

impl Runner {
    /// Starts the worker of pod `uid`; `None` (said in the log) when no thread can be
    /// had, and the next pass tries again.
    pub(super) fn spawn_worker(&self, uid: &str, pod: &Arc<Pod>) -> Option<PodWorker> {
        let mut runner = self.for_pod();
        let shared = Arc::new((
            std::sync::Mutex::new((Arc::clone(pod), 0)),
            std::sync::Condvar::new(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let last_error = Arc::new(std::sync::Mutex::new(None));
        let (uid_, shared_, stop_, error_) = (
            uid.to_string(),
            Arc::clone(&shared),
            Arc::clone(&stop),
            Arc::clone(&last_error),
        );
        let name = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            pod.metadata.name.as_deref().unwrap_or("")
        );
        let thread = std::thread::Builder::new()
            .name(format!("pod-{}", &uid[..uid.len().min(8)]))
            .spawn(move || {
                let (lock, wake) = &*shared_;
                // When this worker first saw the pod, until all its containers run.
                // A pod found running (kernlet restarted) did not start now.
                let mut first_seen = {
                    let Ok((pod, _)) = lock.lock().map(|p| p.clone()) else {
                        return;
                    };
                    (!runner.all_running(&uid_, &pod)).then(Instant::now)
                };
                while !stop_.load(Ordering::Relaxed) {
                    let Ok((pod, seen)) = lock.lock().map(|p| p.clone()) else {
                        return;
                    };
                    let error = runner.sync_pod(&uid_, &pod).err().map(|e| {
                        tracing::warn!(pod = %name, "{e}");
                        format!("pod {name}: {e}")
                    });
                    if let Ok(mut l) = error_.lock() {
                        *l = error;
                    }
                    if let Some(seen_at) = first_seen
                        && runner.all_running(&uid_, &pod)
                    {
                        super::metrics::pod_started(seen_at.elapsed());
                        first_seen = None;
                    }
                    // Until the next sync is due, a change of the pod or of its
                    // containers, or the stop.
                    let wait = runner.next_sync(&uid_, &pod);
                    let Ok(guard) = lock.lock() else { return };
                    let _ = wake.wait_timeout_while(guard, wait, |p| {
                        p.1 == seen && !stop_.load(Ordering::Relaxed)
                    });
                }
            })
            .map_err(|e| tracing::warn!(pod = %uid, "cannot start the pod's worker thread: {e}"))
            .ok()?;
        Some(PodWorker {
            uid: uid.to_string(),
            pod: shared,
            stop,
            last_error,
            thread,
        })
    }

    /// Runs until `stop`; running pods are left running (a restart adopts them).
    pub fn run(mut self, stop: &AtomicBool) {
        let removed = self.rt.remove_orphans();
        if !removed.is_empty() {
            tracing::info!(
                ?removed,
                "removed what an earlier run left without a record"
            );
        }
        let changes = match &self.source {
            Source::Api { changes, .. } => Some(changes.clone()),
            Source::Manifests(_) => None,
        };
        let mut seen = changes.as_ref().map_or(0, |c| c.count());
        while !stop.load(Ordering::Relaxed) {
            self.tick();
            // Until the resync, a change of the node's pods, or the stop (looked at
            // every 50 ms).
            let deadline = Instant::now() + self.timing.resync;
            while !stop.load(Ordering::Relaxed) {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let slice = left.min(Duration::from_millis(50));
                match &changes {
                    Some(c) => {
                        let now = c.wait(seen, slice);
                        if now != seen {
                            seen = now;
                            break;
                        }
                    }
                    None => std::thread::sleep(slice),
                }
            }
        }
        // Running pods are left running; the workers end after their current sync.
        let workers: Vec<PodWorker> = self
            .workers
            .drain()
            .map(|(_, w)| w)
            .chain(self.retiring.drain(..).map(|(w, _)| w))
            .collect();
        for w in &workers {
            w.retire();
        }
        // A worker inside a slow apiserver read is not waited for past a few seconds:
        // the process is ending, and nothing it holds needs more than that to settle.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !workers.iter().all(|w| w.thread.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        for w in workers {
            if w.thread.is_finished() {
                let _ = w.thread.join();
            }
        }
    }

    pub(super) fn desired(&mut self) -> Option<Vec<(String, Arc<Pod>)>> {
        let manifests = match &self.source {
            Source::Manifests(dir) => dir.clone(),
            Source::Api { snapshot, .. } => {
                // Pods being deleted stay with their workers, which stop them.
                // Mirror pods stand for static pods: they are not run again.
                let pods = snapshot.lock().ok()?.clone()?;
                let mut out: Vec<(String, Arc<Pod>)> = pods
                    .into_iter()
                    .filter(|p| !is_mirror(p))
                    .filter_map(|p| Some((p.metadata.uid.clone()?, p)))
                    .collect();
                if let Some((dir, node)) = self.static_pods.clone() {
                    out.extend(
                        self.static_pods_of(&dir)?
                            .into_iter()
                            .map(|(uid, mut pod)| {
                                // kubelet's names for static pods: <name>-<node>, bound to it.
                                let name = format!(
                                    "{}-{node}",
                                    pod.metadata.name.clone().unwrap_or_default()
                                );
                                pod.metadata.name = Some(name);
                                pod.spec.get_or_insert_with(Default::default).node_name =
                                    Some(node.clone());
                                let a = pod
                                    .metadata
                                    .annotations
                                    .get_or_insert_with(Default::default);
                                a.insert(CONFIG_SOURCE.into(), "file".into());
                                a.insert(CONFIG_HASH.into(), uid.clone());
                                (uid, Arc::new(pod))
                            }),
                    );
                }
                return Some(out);
            }
        };
        let pods = self.static_pods_of(&manifests)?;
        Some(pods.into_iter().map(|(u, p)| (u, Arc::new(p))).collect())
    }

    /// One pass of the dispatcher: admit new pods and give each a worker, hand the
    /// workers their pods' changes, retire the workers of pods that went away and
    /// remove those pods once their workers have ended.
    pub fn tick(&mut self) {
        // Nothing new since a pass that left nothing pending: only the relist.
        let version = self.snapshot_version();
        if version.is_some() && version == self.quiet_at && self.retiring.is_empty() {
            self.relist();
            self.account();
            return;
        }
        let Some(desired) = self.desired() else {
            return;
        };
        self.desired_count = desired.len();
        // Whether something waits for a later pass (a worker to end, a sandbox to
        // remove, a pod that could not be handled yet).
        let mut pending = false;
        let wanted: HashSet<String> = desired.iter().map(|(u, _)| u.clone()).collect();
        // Admission counts every pod the node has taken: with a sandbox or a worker.
        // Read once: a sandbox made after this is a wanted pod's, which nothing below
        // removes.
        let (on_disk, without_sandbox) = self.rt.pod_records();
        // The records of the sandboxes no pod wants any more, to remove them (only
        // those: a pass must not read every pod's record).
        let sandboxes: Vec<crate::runtime::sandbox::SandboxRecord> = on_disk
            .iter()
            .filter(|uid| !wanted.contains(*uid))
            .filter_map(|uid| self.rt.sandbox(uid).ok().flatten())
            .collect();
        let mut with_sandbox: HashSet<String> = on_disk.iter().cloned().collect();
        with_sandbox.extend(self.workers.keys().cloned());
        // Refusals of pods that are gone are forgotten.
        self.failed
            .retain(|uid, _| wanted.contains(uid) || with_sandbox.contains(uid));
        self.evictions
            .retain(|uid| wanted.contains(uid) || with_sandbox.contains(uid));
        for (uid, pod) in &desired {
            if self.removing.lock().is_ok_and(|r| r.contains(uid)) {
                pending = true;
                continue;
            }
            if let Some(w) = self.workers.get(uid) {
                w.update(pod);
                continue;
            }
            // A pod back while its last worker is still ending waits for the removal.
            if self.retiring.iter().any(|(w, _)| w.uid == *uid) {
                pending = true;
                continue;
            }
            // A pod deleted before anything of it was made is not started: its object
            // is deleted below.
            if pod.metadata.deletion_timestamp.is_some() && !with_sandbox.contains(uid) {
                continue;
            }
            if !with_sandbox.contains(uid) && !self.admit(uid, pod, &desired, &with_sandbox) {
                if let Err(e) = self.report_refused(uid, pod) {
                    tracing::warn!(pod = %pod.metadata.name.clone().unwrap_or_default(), "{e}");
                }
                continue;
            }
            match self.spawn_worker(uid, pod) {
                Some(w) => {
                    self.workers.insert(uid.clone(), w);
                    with_sandbox.insert(uid.clone());
                }
                None => pending = true,
            }
        }
        self.forget_refused(without_sandbox, &wanted);
        self.relist();
        self.account();
        self.sync_mirrors(&desired);
        // Pods gone from the apiserver: the grace period of their last object, by uid
        // (a forced delete's 0 included); what is not on this node is forgotten.
        let mut deletion_grace: HashMap<String, i64> = HashMap::new();
        if let Source::Api { deleted, .. } = &self.source
            && let Ok(mut d) = deleted.lock()
        {
            let here: HashSet<&str> = on_disk
                .iter()
                .map(String::as_str)
                .chain(self.workers.keys().map(String::as_str))
                .chain(self.retiring.iter().map(|(w, _)| w.uid.as_str()))
                .collect();
            d.retain(|uid, _| here.contains(uid.as_str()));
            for sb in &sandboxes {
                if !wanted.contains(&sb.uid)
                    && let Some(Some(g)) = d.remove(&sb.uid)
                {
                    deletion_grace.insert(sb.uid.clone(), g);
                }
            }
        }
        // Pods no longer wanted: their workers are told to stop, and each pod is
        // removed once its worker has ended (so nothing starts a container behind the
        // removal).
        let gone: Vec<String> = self
            .workers
            .keys()
            .filter(|uid| !wanted.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(w) = self.workers.remove(&uid) {
                w.retire();
                self.retiring.push((w, None));
            }
        }
        for sb in &sandboxes {
            if wanted.contains(&sb.uid) {
                continue;
            }
            pending = true;
            match self.retiring.iter_mut().find(|(w, _)| w.uid == sb.uid) {
                Some((_, removal)) => {
                    let grace = deletion_grace
                        .get(&sb.uid)
                        .copied()
                        .or_else(|| removal.as_ref().and_then(|(_, g)| *g));
                    *removal = Some((sb.clone(), grace));
                }
                None => self.remove_pod(sb.clone(), deletion_grace.get(&sb.uid).copied(), false),
            }
        }
        let (ended, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retiring)
            .into_iter()
            .partition(|(w, _)| w.thread.is_finished());
        self.retiring = still;
        for (w, removal) in ended {
            let _ = w.thread.join();
            if let Some((sb, grace)) = removal {
                self.remove_pod(sb, grace, false);
            }
        }
        // A pod deleted before anything of it ran has nothing to stop: it is removed
        // from the apiserver at once.
        if let Source::Api {
            snapshot, updates, ..
        } = &self.source
            && let Ok(snapshot) = snapshot.lock()
        {
            let deleting = snapshot
                .iter()
                .flatten()
                .filter(|p| p.metadata.deletion_timestamp.is_some());
            for p in deleting {
                let uid = p.metadata.uid.clone().unwrap_or_default();
                // A pod with a worker is the worker's to finish.
                if !on_disk.contains(&uid) && !self.workers.contains_key(&uid) {
                    let _ = updates.send(crate::controllers::pods::Update::Finished {
                        namespace: p.metadata.namespace.clone().unwrap_or_default(),
                        name: p.metadata.name.clone().unwrap_or_default(),
                        uid,
                    });
                }
            }
        }
        self.quiet_at = version.filter(|_| !pending && self.retiring.is_empty());
    }

    /// The version of the apiserver's snapshot this pass works from; `None` when the
    /// pass must run whatever it is (static pods are read from their directory).
    fn snapshot_version(&self) -> Option<u64> {
        match &self.source {
            Source::Api { changes, .. } if self.static_pods.is_none() => Some(changes.version()),
            _ => None,
        }
    }

    /// The records of refused pods (a status, no sandbox) whose pod is gone from the
    /// source: removed, as kubelet forgets a rejected pod once it is deleted.
    fn forget_refused(&self, without_sandbox: Vec<String>, wanted: &HashSet<String>) {
        for uid in without_sandbox {
            let busy = wanted.contains(&uid)
                || self.workers.contains_key(&uid)
                || self.retiring.iter().any(|(w, _)| w.uid == uid)
                || self.removing.lock().map_or(true, |r| r.contains(&uid));
            if !busy {
                let _ = std::fs::remove_dir_all(self.rt.pod_state_dir(&uid));
            }
        }
    }

    /// Wakes the workers whose pod's containers changed (relisted about once a
    /// resync).
    fn relist(&mut self) {
        // A pod the eviction manager evicts is synced at once.
        for uid in self.evictions.take_new() {
            if let Some(w) = self.workers.get(&uid) {
                w.poke();
            }
        }
        if self.relist.due(self.timing.resync / 2) {
            for uid in self.relist.changed(&self.rt, self.workers.keys()) {
                if let Some(w) = self.workers.get(&uid) {
                    w.poke();
                }
            }
        }
    }

    /// The daemon's account: the first worker's error, else synced.
    fn account(&self) {
        let failure = self
            .workers
            .values()
            .find_map(|w| w.last_error.lock().ok().and_then(|e| e.clone()));
        match failure {
            Some(e) => crate::daemon::failed("pods", &e),
            None => crate::daemon::synced(
                "pods",
                serde_json::json!({"desired": self.desired_count, "workers": self.workers.len()}),
            ),
        }
    }
}

//! Static pods (kubelet's staticPodPath) and their mirror pods in the apiserver.

use super::*;

/// The UID of a static pod: derived from where it came from and what it says, so the
/// same manifest is the same pod across restarts and a changed one is a new pod.
pub fn static_uid(source: &Path, pod: &Pod) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(source.as_os_str().as_encoded_bytes());
    ctx.update(&serde_json::to_vec(pod).unwrap_or_default());
    let h: String = ctx.finish().as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The annotations kubelet puts on static pods and their mirrors.
pub(super) use crate::model::pod_lifecycle::{CONFIG_MIRROR, CONFIG_SOURCE};

pub(super) const CONFIG_HASH: &str = "kubernetes.io/config.hash";

/// Whether `pod` is a static pod (from this node's manifest directory).
pub(super) fn is_static(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_SOURCE))
        .is_some_and(|s| s == "file")
}

/// Whether `pod` is a mirror pod (the apiserver's copy of a static pod).
pub(super) fn is_mirror(pod: &Pod) -> bool {
    mirror_hash(pod).is_some()
}

/// The static pod a mirror pod stands for.
pub(super) fn mirror_hash(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(CONFIG_MIRROR)
        .map(String::as_str)
}

impl Runner {
    /// The pods of a manifest directory with their uids; `None` (and a log line) when
    /// the directory cannot be read as a whole.
    pub(super) fn static_pods_of(&mut self, manifests: &Path) -> Option<Vec<(String, Pod)>> {
        match manifest::load_dir(manifests) {
            Ok(pods) => {
                self.last_manifest_error = None;
                Some(
                    pods.into_iter()
                        .map(|mp| {
                            let uid = static_uid(&mp.source, &mp.pod);
                            let mut pod = mp.pod;
                            pod.metadata.uid = Some(uid.clone());
                            pod.metadata
                                .namespace
                                .get_or_insert_with(|| "default".into());
                            (uid, pod)
                        })
                        .collect(),
                )
            }
            Err(e) => {
                let msg = e.to_string();
                if self.last_manifest_error.as_ref() != Some(&msg) {
                    tracing::error!("{msg}; running pods are kept until the manifests are fixed");
                    self.last_manifest_error = Some(msg);
                }
                None
            }
        }
    }

    /// Runs the static pods of `dir` too (with an apiserver), as `<name>-<node>` with
    /// mirror pods in the apiserver.
    pub fn with_static_pods_opt(mut self, dir: Option<PathBuf>, node: String) -> Self {
        self.static_pods = dir.map(|d| (d, node));
        self
    }

    /// Keeps a mirror pod in the apiserver for each static pod that runs, and none
    /// for those gone; a mirror deleted by someone is created again.
    pub(super) fn sync_mirrors(&mut self, desired: &[(String, Arc<Pod>)]) {
        let Source::Api {
            snapshot, updates, ..
        } = &self.source
        else {
            return;
        };
        let Some((_, node)) = self.static_pods.clone() else {
            return;
        };
        let api_pods: Vec<Arc<Pod>> = snapshot
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .unwrap_or_default();
        let statics: Vec<&(String, Arc<Pod>)> =
            desired.iter().filter(|(_, p)| is_static(p)).collect();
        let now = Instant::now();
        for (uid, pod) in &statics {
            let (ns, name) = (
                pod.metadata.namespace.clone().unwrap_or_default(),
                pod.metadata.name.clone().unwrap_or_default(),
            );
            let mirror = api_pods.iter().find(|p| {
                p.metadata.namespace.as_deref() == Some(ns.as_str())
                    && p.metadata.name.as_deref() == Some(name.as_str())
            });
            match mirror {
                Some(m)
                    if mirror_hash(m) == Some(uid.as_str())
                        && m.metadata.deletion_timestamp.is_none() =>
                {
                    continue;
                }
                Some(m) if is_mirror(m) && m.metadata.deletion_timestamp.is_none() => {
                    // A mirror of an older manifest: replaced.
                    let uid = m.metadata.uid.clone().unwrap_or_default();
                    if ask_mirror_delete(&mut self.mirrors_deleted, &uid) {
                        let _ = updates.send(crate::controllers::pods::Update::Finished {
                            namespace: ns.clone(),
                            name: name.clone(),
                            uid,
                        });
                    }
                    continue;
                }
                Some(m) if !is_mirror(m) => {
                    tracing::warn!(pod = %format!("{ns}/{name}"), "a pod that is no mirror has the static pod's name; no mirror pod for it");
                    continue;
                }
                _ => {}
            }
            if self
                .mirrors_requested
                .get(uid)
                .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(5))
            {
                continue;
            }
            self.mirrors_requested.insert(uid.clone(), now);
            // Its status goes again once the mirror exists.
            if let Ok(mut l) = self.last_sent.lock() {
                l.remove(uid);
            }
            let mut spec =
                serde_json::to_value(pod.spec.clone().unwrap_or_default()).unwrap_or_default();
            if let Some(m) = spec.as_object_mut() {
                m.remove("serviceAccountName");
                m.remove("serviceAccount");
            }
            let mut annotations = pod.metadata.annotations.clone().unwrap_or_default();
            annotations.insert(CONFIG_MIRROR.into(), uid.clone());
            let _ = updates.send(crate::controllers::pods::Update::CreateMirror {
                node: node.clone(),
                key: format!("mirror:{uid}"),
                pod: json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": ns, "labels": pod.metadata.labels, "annotations": annotations},
                    "spec": spec,
                }),
            });
        }
        // Mirrors whose static pod is gone go too.
        let wanted: HashSet<&str> = statics.iter().map(|(u, _)| u.as_str()).collect();
        for m in api_pods
            .iter()
            .filter(|p| is_mirror(p) && p.metadata.deletion_timestamp.is_none())
        {
            let owned_here =
                m.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str());
            let uid = m.metadata.uid.clone().unwrap_or_default();
            if owned_here
                && mirror_hash(m).is_some_and(|h| !wanted.contains(h))
                && ask_mirror_delete(&mut self.mirrors_deleted, &uid)
            {
                let _ = updates.send(crate::controllers::pods::Update::Finished {
                    namespace: m.metadata.namespace.clone().unwrap_or_default(),
                    name: m.metadata.name.clone().unwrap_or_default(),
                    uid,
                });
            }
        }
        // Deletes asked for are forgotten once the watch no longer shows the mirror.
        let shown: HashSet<&str> = api_pods
            .iter()
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        self.mirrors_deleted
            .retain(|u, _| shown.contains(u.as_str()));
        self.mirrors_requested
            .retain(|u, _| wanted.contains(u.as_str()));
    }
}

/// Whether to ask for the delete of mirror pod `uid` now: not when it was asked for in
/// the last 10 s (the watch may not have shown the delete yet).
fn ask_mirror_delete(asked: &mut HashMap<String, Instant>, uid: &str) -> bool {
    let now = Instant::now();
    match asked.get(uid) {
        Some(at) if now.duration_since(*at) < Duration::from_secs(10) => false,
        _ => {
            asked.insert(uid.to_string(), now);
            true
        }
    }
}

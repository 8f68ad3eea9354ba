//! The eviction manager's view of a real node: signals from /proc, statvfs and the
//! cgroup tree; pods from their records on the node; reclaim through the runtime and
//! the image collector; evictions handed to the pod workers.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;

use super::NodeSide;
use crate::model::eviction::rank::{ContainerUsage, PodUsage, VolumeUsage};
use crate::model::eviction::{Eviction, Reading, Signal};
use crate::podworker::Evictions;
use crate::runtime::Runtime;
use crate::runtime::container::ContainerState;
use crate::runtime::image_gc::SharedImageGc;
use crate::sys::stats;

#[derive(Clone)]
pub struct RealNode {
    pub rt: Runtime,
    pub image_gc: SharedImageGc,
    pub evictions: Evictions,
    /// Where the node's events go, and the node's name.
    pub events: Option<(crate::controllers::events::Recorder, String)>,
}

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

impl RealNode {
    /// The pods with a sandbox on the node, as last recorded.
    fn recorded(&self) -> Vec<(String, Pod)> {
        self.rt
            .sandbox_uids()
            .into_iter()
            .filter_map(|uid| {
                let p: Pod =
                    crate::runtime::read_json(&self.rt.pod_state_dir(&uid).join("pod.json"))
                        .ok()
                        .flatten()?;
                Some((uid, p))
            })
            .collect()
    }

    fn usage_of(&self, uid: &str, pod: Pod) -> Option<PodUsage> {
        let sb = self.rt.sandbox(uid).ok().flatten()?;
        let cgroup = self.rt.cgroup_root.join(sb.cgroup.trim_start_matches('/'));
        let mut containers: Vec<ContainerUsage> = Vec::new();
        let mut records = self.rt.pod_containers(uid);
        records.sort_by_key(|r| std::cmp::Reverse(r.restart));
        for r in records {
            if containers.iter().any(|c| c.name == r.name)
                || !matches!(
                    self.rt.container_state(&r.id),
                    ContainerState::Running { .. }
                )
            {
                continue;
            }
            let cg = self.rt.cgroup_root.join(r.cgroup.trim_start_matches('/'));
            containers.push(ContainerUsage {
                name: r.name.clone(),
                memory: stats::cgroup_usage(&cg).working_set,
                rootfs: stats::disk_usage(&self.rt.container_dir(&r.id).join("upper")),
                logs: r
                    .log_path
                    .parent()
                    .map(stats::disk_usage)
                    .unwrap_or_default(),
            });
        }
        let empty_dirs = self.rt.pod_state_dir(uid).join("volumes/empty-dir");
        let volumes = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .filter(|v| {
                v.empty_dir
                    .as_ref()
                    .is_some_and(|e| e.medium.as_deref() != Some("Memory"))
            })
            .map(|v| {
                let (bytes, inodes) = stats::disk_usage(&empty_dirs.join(&v.name));
                VolumeUsage {
                    name: v.name.clone(),
                    bytes,
                    inodes,
                }
            })
            .collect();
        Some(PodUsage {
            memory: stats::cgroup_usage(&cgroup).working_set,
            pids: stats::cgroup_processes(&cgroup),
            containers,
            volumes,
            pod,
        })
    }
}

impl NodeSide for RealNode {
    fn readings(&self) -> BTreeMap<Signal, Reading> {
        stats::eviction_readings(
            &self.rt.cfg.state_dir,
            &self.rt.cfg.image_dir,
            &self.rt.cgroup_root.join("kubepods"),
        )
    }

    fn dedicated_imagefs(&self) -> bool {
        let dev = |p: &PathBuf| std::fs::metadata(p).map(|m| m.dev()).ok();
        let (state, images) = (dev(&self.rt.cfg.state_dir), dev(&self.rt.cfg.image_dir));
        state.is_some() && images.is_some() && state != images
    }

    fn active_pods(&self) -> Vec<Pod> {
        self.recorded()
            .into_iter()
            .filter(|(uid, p)| {
                !terminal(p)
                    && p.metadata.deletion_timestamp.is_none()
                    && !self.evictions.contains(uid)
            })
            .map(|(_, p)| p)
            .collect()
    }

    fn usage(&self, pod: &Pod) -> Option<PodUsage> {
        let uid = pod.metadata.uid.clone()?;
        self.usage_of(&uid, pod.clone())
    }

    fn delete_unused_containers(&self) {
        for (uid, p) in self.recorded() {
            if !terminal(&p) {
                continue;
            }
            for r in self.rt.pod_containers(&uid) {
                if let Err(e) = self.rt.discard_container_files(&r.id) {
                    tracing::warn!(container = %r.id, "container garbage collection: {e}");
                }
            }
        }
    }

    fn delete_unused_images(&self) {
        if let Ok(mut gc) = self.image_gc.lock() {
            gc.delete_unused(&self.rt, Instant::now());
        }
    }

    fn evict(&self, pod: &Pod, eviction: Eviction) -> bool {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.evictions.request(&uid, eviction)
    }

    fn cleaned_up(&self, uid: &str) -> bool {
        self.evictions.cleaned_up(uid)
    }

    fn node_warning(&self, reason: &str, message: String) {
        if let Some((recorder, node)) = &self.events {
            recorder.record_node(node, true, reason, message);
        }
    }
}

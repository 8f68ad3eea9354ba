//! What a crash can leave behind without a record, removed when the runtime opens:
//! container directories without `container.json` (a start cut short), containers of
//! pods that have no sandbox record, libcontainer state of containers kernlet no longer
//! knows, pod directories (namespace pins, /dev/shm) and pod cgroups without a sandbox
//! record. Everything recorded is adopted, never touched here.

use std::collections::HashSet;
use std::path::Path;

use super::Runtime;
use crate::sys::cgroup::Cgroup;

/// What was removed, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub containers: Vec<String>,
    pub pods: Vec<String>,
    pub cgroups: Vec<String>,
    pub runtime_state: Vec<String>,
}

impl Removed {
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
            && self.pods.is_empty()
            && self.cgroups.is_empty()
            && self.runtime_state.is_empty()
    }
}

fn names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Pod cgroups (`pod<uid>`) anywhere below `kubepods`.
fn pod_cgroups(dir: &Path, out: &mut Vec<(String, std::path::PathBuf)>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        match name.strip_prefix("pod") {
            Some(uid) => out.push((uid.to_string(), e.path())),
            None if name == "burstable" || name == "besteffort" => pod_cgroups(&e.path(), out),
            None => {}
        }
    }
}

impl Runtime {
    /// Removes what no record accounts for (see the module docs).
    pub fn remove_orphans(&self) -> Removed {
        let mut removed = Removed::default();
        let pods: HashSet<String> = self.sandboxes().into_iter().map(|s| s.uid).collect();
        let containers_dir = self.cfg.state_dir.join("containers");
        let mut known = HashSet::new();
        for id in names(&containers_dir) {
            match self.container(&id) {
                Ok(Some(r)) if pods.contains(&r.pod_uid) => {
                    known.insert(id);
                }
                Ok(Some(r)) => {
                    // A container of a pod whose sandbox is gone: end it, then remove it.
                    let _ = Cgroup::open(self.cgroup_path(&r.cgroup)).kill();
                    let _ = self.stop_container(&id, std::time::Duration::ZERO);
                    if self.remove_container(&id).is_ok() {
                        removed.containers.push(id);
                    }
                }
                _ => {
                    if std::fs::remove_dir_all(containers_dir.join(&id)).is_ok() {
                        removed.containers.push(id);
                    }
                }
            }
        }
        let bundles = self.cfg.run_dir.join("bundles");
        for id in names(&bundles) {
            if !known.contains(&id) {
                let _ = std::fs::remove_dir_all(bundles.join(&id));
            }
        }
        let lc = self.cfg.run_dir.join("libcontainer");
        for id in names(&lc) {
            if !known.contains(&id) && std::fs::remove_dir_all(lc.join(&id)).is_ok() {
                removed.runtime_state.push(id);
            }
        }
        for uid in names(&self.cfg.run_dir.join("pods")) {
            if !pods.contains(&uid) {
                let run = self.pod_run_dir(&uid);
                let _ = crate::sys::mount::unmount(&run.join("shm"));
                let _ = crate::sys::mount::unmount_under(&run.join("subpaths"));
                let _ = crate::sys::mount::unmount_private_under(&run.join("propagated"));
                let _ = crate::sys::mount::unmount(&self.written_volumes_dir(&uid));
                for e in std::fs::read_dir(run.join("volumes"))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let _ = crate::sys::mount::unmount(&e.path());
                }
                if crate::sys::ns::remove(&run.join("ns")).is_ok()
                    && std::fs::remove_dir_all(&run).is_ok()
                {
                    removed.pods.push(uid);
                }
            }
        }
        let mut cgroups = Vec::new();
        pod_cgroups(&self.cgroup_root.join("kubepods"), &mut cgroups);
        for (uid, path) in cgroups {
            if pods.contains(&uid) {
                continue;
            }
            let cg = Cgroup::open(path);
            let _ = cg.kill();
            for _ in 0..100 {
                if !cg.populated() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if cg.remove().is_ok() {
                removed.cgroups.push(uid);
            }
        }
        removed
    }
}

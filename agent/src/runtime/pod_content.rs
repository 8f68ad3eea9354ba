//! What an ended pod leaves that kubelet removes before the pod object goes: the
//! writable layers and logs of its dead containers (kubelet's container collection of
//! terminated pods) and, for an evicted pod, its emptyDir volumes. The records stay, so
//! the pod's last status stays what it was.

use super::container::ContainerState;
use super::{Runtime, RuntimeError};

impl Runtime {
    /// Removes the writable layer and the logs of dead container `id`, keeping its
    /// record (its exit). A running container is refused.
    pub fn discard_container_files(&self, id: &str) -> Result<(), RuntimeError> {
        if matches!(self.container_state(id), ContainerState::Running { .. }) {
            return Err(RuntimeError::Refused(format!(
                "container {id} is still running"
            )));
        }
        let dir = self.container_dir(id);
        for d in ["upper", "work"] {
            match std::fs::remove_dir_all(dir.join(d)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(RuntimeError::io(format!(
                        "removing the writable layer of container {id}"
                    ))(e));
                }
                _ => {}
            }
        }
        if let Some(r) = self.container(id)? {
            let _ = std::fs::remove_file(&r.log_path);
        }
        Ok(())
    }

    /// Removes the emptyDir volumes of pod `uid` (disk-backed ones deleted, memory-
    /// backed ones unmounted), whose containers have all stopped.
    pub fn discard_pod_volumes(&self, uid: &str) -> Result<(), RuntimeError> {
        let disk = self.pod_state_dir(uid).join("volumes/empty-dir");
        match std::fs::remove_dir_all(&disk) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(RuntimeError::io(format!("removing {}", disk.display()))(e));
            }
            _ => {}
        }
        self.unmount_memory_volumes(uid)
    }

    /// Unmounts (and removes) the memory-backed emptyDir volumes of pod `uid`.
    pub(super) fn unmount_memory_volumes(&self, uid: &str) -> Result<(), RuntimeError> {
        for e in std::fs::read_dir(self.pod_run_dir(uid).join("volumes"))
            .into_iter()
            .flatten()
            .flatten()
        {
            crate::sys::mount::unmount(&e.path()).map_err(RuntimeError::io(format!(
                "unmounting volume {} of pod {uid}",
                e.file_name().to_string_lossy()
            )))?;
            let _ = std::fs::remove_dir(e.path());
        }
        Ok(())
    }
}

//! Where the volumes kernlet writes from the apiserver live (configMap, secret,
//! downwardAPI and projected — service account tokens among them): one tmpfs per pod,
//! `<run-dir>/pods/<uid>/volume-files` (size-limited, mode 0750, owned by root,
//! nosuid/nodev/noexec), so nothing secret reaches a disk, as kubelet keeps secret
//! volumes on tmpfs. Each volume is a directory of it written by
//! [`super::volume_files`]; containers get it bind-mounted read-only.

use std::path::PathBuf;

use super::{Runtime, RuntimeError};

/// The size of a pod's tmpfs of written volumes: configMaps and secrets are at most
/// 1 MiB each, tokens and downward API files a few KiB.
pub const SIZE: u64 = 64 << 20;

/// The mode of the tmpfs's root: root's, and its group's (no one else's).
pub const MODE: u32 = 0o750;

impl Runtime {
    /// The pod's tmpfs of written volumes.
    pub fn written_volumes_dir(&self, uid: &str) -> PathBuf {
        self.pod_run_dir(uid).join("volume-files")
    }

    /// Where the files of a configMap, secret, downwardAPI or projected volume live.
    pub fn prepared_volume(&self, uid: &str, name: &str) -> PathBuf {
        self.written_volumes_dir(uid).join(name)
    }

    /// Mounts the pod's tmpfs of written volumes, unless it is there.
    pub fn mount_written_volumes(&self, uid: &str) -> Result<(), RuntimeError> {
        let dir = self.written_volumes_dir(uid);
        crate::sys::mount::tmpfs(&dir, Some(SIZE), MODE, false).map_err(RuntimeError::io(format!(
            "mounting the volume tmpfs of pod {uid} at {}",
            dir.display()
        )))
    }
}

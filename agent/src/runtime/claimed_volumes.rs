//! Persistent volumes on the node: a claimed volume's setup (the host path's type
//! check, a local volume's presence and the pod's fsGroup on it, as kubelet's
//! `SetVolumeOwnership` applies it), and its record under
//! `<state-dir>/pods/<uid>/volumes/claims/<volume>.json` — the node's own account of
//! what each pod mounts, read by container starts, stats and `kernlet inspect`.
//!
//! Containers bind the volume's path straight into their mount namespace, so nothing
//! is mounted on the node for a pod: nothing to unmount, nothing to leak.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::PodSecurityContext;

use super::Runtime;
use crate::model::claims::{Mountable, Plugin};

/// Why a claimed volume could not be set up on this node.
#[derive(Debug, thiserror::Error)]
pub enum SetUpError {
    #[error("MountVolume.SetUp failed for volume {pv:?}: {source}")]
    HostPath {
        pv: String,
        #[source]
        source: super::container_volumes::MountError,
    },
    #[error(
        "MountVolume.NewMounter initialization failed for volume {pv:?} : path {path:?} does not exist"
    )]
    Missing { pv: String, path: PathBuf },
    #[error("MountVolume.SetUp failed for volume {pv:?}: {path:?} is not a {what}")]
    Kind {
        pv: String,
        path: PathBuf,
        what: &'static str,
    },
    #[error("MountVolume.SetUp failed for volume {pv:?}: applying fsGroup to {path:?}: {source}")]
    Ownership {
        pv: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("recording volume {volume:?}: {source}")]
    Record {
        volume: String,
        #[source]
        source: super::RuntimeError,
    },
}

/// Why a container's `volumeDevices` cannot be given to it.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("volumeDevice {0:?} names no block volume set up for the pod")]
    NotBlock(String),
    #[error("block volume {}: {source}", path.display())]
    Stat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("block volume {} is not a block device", .0.display())]
    NotDevice(PathBuf),
}

/// What tears down the volumes a driver set up for a pod (CSI's unpublish and
/// unstage), before the pod's directories go.
pub trait DriverVolumes: Send + Sync + std::fmt::Debug {
    /// Takes `m` (a driver's volume of pod `uid`) off the node; `Err` says why not.
    fn tear_down(&self, uid: &str, m: &Mountable) -> Result<(), String>;
}

impl Runtime {
    /// Tears down the driver volumes of a pod (each record goes once its volume is
    /// off the node) and says how many; the first failure is returned and the rest
    /// stay recorded.
    pub fn tear_down_driver_volumes(&self, uid: &str) -> Result<usize, super::RuntimeError> {
        let mut torn_down = 0;
        for m in self.claimed_volumes(uid) {
            if !matches!(m.plugin, Plugin::Csi(_)) {
                continue;
            }
            let Some(d) = &self.driver_volumes else {
                return Err(super::RuntimeError::Refused(format!(
                    "volume {:?} of pod {uid} is a CSI volume and this runtime has no CSI drivers",
                    m.volume
                )));
            };
            d.tear_down(uid, &m).map_err(|why| {
                super::RuntimeError::Refused(format!(
                    "tearing down volume {:?} ({}) of pod {uid}: {why}",
                    m.volume, m.pv
                ))
            })?;
            let _ = std::fs::remove_file(self.claims_dir(uid).join(format!("{}.json", m.volume)));
            torn_down += 1;
        }
        Ok(torn_down)
    }

    fn claims_dir(&self, uid: &str) -> PathBuf {
        self.pod_state_dir(uid).join("volumes/claims")
    }

    /// The recorded setup of the pod's claimed volume `name`, if it is set up — for a
    /// driver's volume, also still mounted, or for a raw block one still a device
    /// (after a reboot or an unmount behind the node's back it is published again).
    pub fn claimed_volume(&self, uid: &str, name: &str) -> Option<Mountable> {
        super::read_json::<Mountable>(&self.claims_dir(uid).join(format!("{name}.json")))
            .ok()
            .flatten()
            .filter(|m| m.ready)
            .filter(|m| match m.plugin {
                Plugin::Csi(_) if m.block => {
                    std::fs::metadata(&m.path).is_ok_and(|meta| meta.file_type().is_block_device())
                }
                Plugin::Csi(_) => crate::sys::mount::is_mount_point(&m.path),
                _ => true,
            })
    }

    /// Records a driver's volume before the driver is called (not ready yet), so that
    /// a pod that goes while it is half set up has it torn down.
    pub fn record_pending(&self, uid: &str, m: &Mountable) -> Result<(), SetUpError> {
        let pending = Mountable {
            ready: false,
            ..m.clone()
        };
        super::write_json(
            &self.claims_dir(uid).join(format!("{}.json", m.volume)),
            &pending,
        )
        .map_err(|source| SetUpError::Record {
            volume: m.volume.clone(),
            source,
        })
    }

    /// Every claimed volume set up for the pod, by volume name.
    pub fn claimed_volumes(&self, uid: &str) -> Vec<Mountable> {
        claimed_in(&self.cfg.state_dir, uid)
    }

    /// The OCI devices of the container's `volumeDevices`: each block volume's device
    /// node at its `devicePath`, read-write for the pod's users (0660, root's).
    pub fn block_devices(
        &self,
        uid: &str,
        c: &k8s_openapi::api::core::v1::Container,
    ) -> Result<Vec<serde_json::Value>, DeviceError> {
        let mut out = Vec::new();
        for d in c.volume_devices.iter().flatten() {
            let m = self
                .claimed_volume(uid, &d.name)
                .filter(|m| m.block)
                .ok_or_else(|| DeviceError::NotBlock(d.name.clone()))?;
            let meta = std::fs::metadata(&m.path).map_err(|source| DeviceError::Stat {
                path: m.path.clone(),
                source,
            })?;
            if !meta.file_type().is_block_device() {
                return Err(DeviceError::NotDevice(m.path.clone()));
            }
            let rdev = meta.rdev();
            out.push(serde_json::json!({
                "path": d.device_path, "type": "b",
                "major": nix::sys::stat::major(rdev), "minor": nix::sys::stat::minor(rdev),
                "fileMode": 0o660, "uid": 0, "gid": 0,
            }));
        }
        Ok(out)
    }

    /// Sets the volume up on the node and records it; done once per pod and volume.
    pub fn set_up_claimed(
        &self,
        uid: &str,
        m: &Mountable,
        psc: &PodSecurityContext,
    ) -> Result<(), SetUpError> {
        match &m.plugin {
            Plugin::HostPath { kind } => {
                let path = m.path.to_string_lossy();
                super::container_volumes::host_path(&path, kind).map_err(|source| {
                    SetUpError::HostPath {
                        pv: m.pv.clone(),
                        source,
                    }
                })?;
            }
            // The driver staged and published it before.
            Plugin::Csi(_) => {}
            Plugin::Local => {
                let meta = std::fs::metadata(&m.path).map_err(|_| SetUpError::Missing {
                    pv: m.pv.clone(),
                    path: m.path.clone(),
                })?;
                let (ok, what) = if m.block {
                    (meta.file_type().is_block_device(), "block device")
                } else {
                    (meta.is_dir(), "directory")
                };
                if !ok {
                    return Err(SetUpError::Kind {
                        pv: m.pv.clone(),
                        path: m.path.clone(),
                        what,
                    });
                }
            }
        }
        if m.owned_by_fs_group
            && let Some(gid) = psc.fs_group.and_then(|g| u32::try_from(g).ok())
        {
            let on_mismatch = psc.fs_group_change_policy.as_deref() == Some("OnRootMismatch");
            set_ownership(&m.path, gid, m.read_only, on_mismatch).map_err(|source| {
                SetUpError::Ownership {
                    pv: m.pv.clone(),
                    path: m.path.clone(),
                    source,
                }
            })?;
        }
        let dir = self.claims_dir(uid);
        let ready = Mountable {
            ready: true,
            ..m.clone()
        };
        super::write_json(&dir.join(format!("{}.json", m.volume)), &ready).map_err(|source| {
            SetUpError::Record {
                volume: m.volume.clone(),
                source,
            }
        })
    }
}

/// The claimed volumes recorded for a pod under a state directory (for readers
/// without a Runtime: stats, inspect).
pub fn claimed_in(state_dir: &Path, uid: &str) -> Vec<Mountable> {
    let dir = state_dir.join("pods").join(uid).join("volumes/claims");
    let mut out: Vec<Mountable> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| super::read_json(&e.path()).ok().flatten())
        .collect();
    out.sort_by(|a, b| a.volume.cmp(&b.volume));
    out
}

/// `status.volumesInUse`: the attachable volumes every pod of the node has (set up or
/// being set up), sorted, once each.
pub fn volumes_in_use(state_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(state_dir.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|e| claimed_in(state_dir, &e.file_name().to_string_lossy()))
        .filter_map(|m| crate::model::claims::in_use_name(&m))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The permission bits kubelet wants on a volume's entries with an fsGroup: group
/// read-write (read-only for a read-only volume), and for directories also search
/// and setgid, so new files take the group.
fn wanted_bits(dir: bool, read_only: bool) -> u32 {
    let mut bits = if read_only { 0o440 } else { 0o660 };
    if dir {
        bits |= 0o110 | 0o2000;
    }
    bits
}

/// Whether an entry already has the group and the bits (`OnRootMismatch` looks at the
/// volume's root only).
fn owned(meta: &std::fs::Metadata, gid: u32, read_only: bool) -> bool {
    let bits = wanted_bits(meta.is_dir(), read_only);
    meta.gid() == gid && meta.permissions().mode() & bits == bits
}

/// kubelet's `SetVolumeOwnership`: every entry of the volume (symlinks not followed)
/// gets the group and the bits; with `OnRootMismatch`, nothing is done when the root
/// already has them.
pub fn set_ownership(
    root: &Path,
    gid: u32,
    read_only: bool,
    on_root_mismatch: bool,
) -> std::io::Result<()> {
    if on_root_mismatch && owned(&std::fs::metadata(root)?, gid, read_only) {
        return Ok(());
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        std::os::unix::fs::lchown(&path, None, Some(gid))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() | wanted_bits(meta.is_dir(), read_only);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))?;
        if meta.is_dir() {
            for e in std::fs::read_dir(&path)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_gives_the_group_and_its_bits_to_every_entry() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vol");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), "x").unwrap();
        std::fs::set_permissions(root.join("a/b/f"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        set_ownership(&root, 4321, false, false).unwrap();
        let f = std::fs::metadata(root.join("a/b/f")).unwrap();
        assert_eq!(f.gid(), 4321);
        assert_eq!(f.permissions().mode() & 0o7777, 0o660);
        let d = std::fs::metadata(root.join("a")).unwrap();
        assert_eq!(d.permissions().mode() & 0o2070, 0o2070);
        // The link's target is untouched.
        assert_ne!(std::fs::metadata("/etc/passwd").unwrap().gid(), 4321);
        assert_eq!(
            std::fs::symlink_metadata(root.join("link")).unwrap().gid(),
            4321
        );
    }

    #[test]
    fn on_root_mismatch_leaves_a_volume_whose_root_is_already_owned() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vol");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("f"), "x").unwrap();
        set_ownership(&root, 4321, false, true).unwrap();
        assert_eq!(std::fs::metadata(root.join("f")).unwrap().gid(), 4321);
        // A file added with another group: the root matches, so it is left.
        std::fs::write(root.join("g"), "y").unwrap();
        std::os::unix::fs::chown(root.join("g"), None, Some(0)).unwrap();
        set_ownership(&root, 4321, false, true).unwrap();
        assert_eq!(std::fs::metadata(root.join("g")).unwrap().gid(), 0);
        // Always: every entry again.
        set_ownership(&root, 4321, false, false).unwrap();
        assert_eq!(std::fs::metadata(root.join("g")).unwrap().gid(), 4321);
    }
}

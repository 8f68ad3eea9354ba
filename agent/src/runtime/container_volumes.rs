//! Where a container's volume mounts come from: hostPath with kubelet's type checks,
//! emptyDir (on disk or a tmpfs), the volumes written from the apiserver, and subPaths
//! resolved beneath their volume.

use std::path::PathBuf;

use super::Runtime;
use super::sandbox::SandboxRecord;

/// Why a volume mount of a container cannot be made; said per container, with its
/// pod, when it is refused.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("Bidirectional mount propagation is available only to privileged containers")]
    BidirectionalUnprivileged,
    #[error(
        "mountPropagation Bidirectional: path {path:?} is mounted on {mount:?} but it is not a shared mount"
    )]
    NotShared { path: String, mount: String },
    #[error("mountPropagation Bidirectional: mounting {path} for the container: {source}")]
    Propagated {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "mountPropagation HostToContainer: path {path:?} is mounted on {mount:?} but it is not a shared or slave mount"
    )]
    NotPropagating { path: String, mount: String },
    #[error("unknown mountPropagation {0:?}")]
    PropagationKind(String),
    #[error("hostPath {0:?} is not an absolute path")]
    HostPathRelative(String),
    #[error("hostPath type check failed: {path} is not a {what}")]
    HostPathType { path: String, what: &'static str },
    #[error("creating hostPath {path}: {source}")]
    HostPathCreate {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("hostPath {0} does not exist on this node")]
    HostPathMissing(String),
    #[error("unknown hostPath type {0:?}")]
    HostPathKind(String),
    #[error("volume {volume:?}: {source}")]
    Volume {
        volume: String,
        #[source]
        source: Box<MountError>,
    },
    #[error(
        "volume {0:?} is of a type kernlet does not support yet (emptyDir, hostPath, \
         configMap, secret, downwardAPI, projected, persistentVolumeClaim, ephemeral, csi and image are)"
    )]
    Unsupported(String),
    #[error(
        "volume {0:?} has no contents yet (configMap, secret, downwardAPI and \
         projected volumes come from the apiserver)"
    )]
    NotWritten(String),
    #[error(
        "volume {0:?} has not been set up on this node (its claim is resolved before the \
         containers start)"
    )]
    NotSetUp(String),
    #[error("volume {volume:?}: sizeLimit {source}")]
    SizeLimit {
        volume: String,
        #[source]
        source: crate::model::quantity::QuantityError,
    },
    #[error("mounting the memory volume {volume:?} at {}: {source}", dir.display())]
    MemoryMount {
        volume: String,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating {}: {source}", dir.display())]
    Create {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("applying fsGroup to {}: {source}", dir.display())]
    FsGroup {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("must be a relative path")]
    SubPathAbsolute,
    #[error("must not contain '..'")]
    SubPathDotDot,
    #[error("cannot be opened inside the volume: {0}")]
    SubPathOpen(#[source] std::io::Error),
    #[error("binding it: {0}")]
    SubPathBind(#[source] std::io::Error),
}

/// A hostPath volume's path after its type check (creating it for `DirectoryOrCreate`
/// and `FileOrCreate`), as kubelet checks them; with no type, a missing path is created
/// as a directory (containerd's behaviour, which pods without a type rely on).
pub(super) fn host_path(path: &str, kind: &str) -> Result<PathBuf, MountError> {
    use std::os::unix::fs::FileTypeExt as _;
    let p = PathBuf::from(path);
    if !p.is_absolute() {
        return Err(MountError::HostPathRelative(path.to_string()));
    }
    let meta = std::fs::metadata(&p);
    let want = |ok: bool, what: &'static str| {
        if ok {
            Ok(p.clone())
        } else {
            Err(MountError::HostPathType {
                path: path.to_string(),
                what,
            })
        }
    };
    let create = |source| MountError::HostPathCreate {
        path: path.to_string(),
        source,
    };
    match (kind, &meta) {
        // Unset type and nothing there: a directory, as containerd makes one.
        ("DirectoryOrCreate" | "", Err(_)) => {
            std::fs::create_dir_all(&p).map_err(create)?;
            Ok(p)
        }
        ("FileOrCreate", Err(_)) => {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(create)?;
            Ok(p)
        }
        (_, Err(_)) => Err(MountError::HostPathMissing(path.to_string())),
        ("", Ok(_)) => Ok(p),
        ("Directory" | "DirectoryOrCreate", Ok(m)) => want(m.is_dir(), "directory"),
        ("File" | "FileOrCreate", Ok(m)) => want(m.is_file(), "file"),
        ("Socket", Ok(m)) => want(m.file_type().is_socket(), "socket"),
        ("CharDevice", Ok(m)) => want(m.file_type().is_char_device(), "character device"),
        ("BlockDevice", Ok(m)) => want(m.file_type().is_block_device(), "block device"),
        (other, _) => Err(MountError::HostPathKind(other.to_string())),
    }
}

impl Runtime {
    /// Where a pod volume's contents are on the node, and whether containers may only
    /// read them (files kernlet writes from the apiserver).
    pub(super) fn volume_source(
        &self,
        sb: &SandboxRecord,
        psc: &k8s_openapi::api::core::v1::PodSecurityContext,
        vol: &k8s_openapi::api::core::v1::Volume,
    ) -> Result<(PathBuf, bool), MountError> {
        if let Some(hp) = &vol.host_path {
            return host_path(&hp.path, hp.type_.as_deref().unwrap_or(""))
                .map(|p| (p, false))
                .map_err(|e| MountError::Volume {
                    volume: vol.name.clone(),
                    source: Box::new(e),
                });
        }
        if vol.image.is_some() {
            // The container's shim mounts the image here, read-only.
            self.image_volume(&sb.uid, &vol.name)
                .ok_or_else(|| MountError::NotSetUp(vol.name.clone()))?;
            let dir = self.image_volume_path(&sb.uid, &vol.name);
            std::fs::create_dir_all(&dir).map_err(|source| MountError::Create {
                dir: dir.clone(),
                source,
            })?;
            return Ok((dir, true));
        }
        if vol.persistent_volume_claim.is_some() || vol.ephemeral.is_some() || vol.csi.is_some() {
            let m = self
                .claimed_volume(&sb.uid, &vol.name)
                .ok_or_else(|| MountError::NotSetUp(vol.name.clone()))?;
            return Ok((m.path, m.read_only));
        }
        if vol.empty_dir.is_none() {
            // configMap, secret, downwardAPI and projected volumes: files the pod
            // worker wrote from the apiserver before starting containers.
            let written = vol.config_map.is_some()
                || vol.secret.is_some()
                || vol.downward_api.is_some()
                || vol.projected.is_some();
            if !written {
                return Err(MountError::Unsupported(vol.name.clone()));
            }
            let dir = self.prepared_volume(&sb.uid, &vol.name);
            if !dir.is_dir() {
                return Err(MountError::NotWritten(vol.name.clone()));
            }
            return Ok((dir, true));
        }
        let memory = vol.empty_dir.as_ref().and_then(|e| e.medium.as_deref()) == Some("Memory");
        let dir = if memory {
            // A tmpfs of sizeLimit (the kernel's default without one), under the run
            // directory: memory, gone with the pod.
            let dir = self.pod_run_dir(&sb.uid).join("volumes").join(&vol.name);
            let size = vol
                .empty_dir
                .as_ref()
                .and_then(|e| e.size_limit.as_ref())
                .map(|q| crate::model::quantity::Quantity::parse(&q.0))
                .transpose()
                .map_err(|source| MountError::SizeLimit {
                    volume: vol.name.clone(),
                    source,
                })?
                .map(|q| u64::try_from(q.value()).unwrap_or(0));
            crate::sys::mount::tmpfs(&dir, size, 0o777, true).map_err(|source| {
                MountError::MemoryMount {
                    volume: vol.name.clone(),
                    dir: dir.clone(),
                    source,
                }
            })?;
            dir
        } else {
            self.pod_state_dir(&sb.uid)
                .join("volumes/empty-dir")
                .join(&vol.name)
        };
        std::fs::create_dir_all(&dir).map_err(|source| MountError::Create {
            dir: dir.clone(),
            source,
        })?;
        // As kubelet does for fsGroup: the volume's group, group-writable, setgid.
        if let Some(fs_group) = psc.fs_group {
            std::os::unix::fs::chown(&dir, None, Some(fs_group as u32))
                .and_then(|()| {
                    std::fs::set_permissions(
                        &dir,
                        std::os::unix::fs::PermissionsExt::from_mode(0o2777),
                    )
                })
                .map_err(|source| MountError::FsGroup {
                    dir: dir.clone(),
                    source,
                })?;
        }
        Ok((dir, false))
    }

    /// The source of a Bidirectional volume mount as the container gets it: bound (with
    /// the mounts below it) at `<run-dir>/pods/<uid>/propagated/<container>/<n>`, a peer
    /// of the source that the shim keeps in the node's peer group while every other
    /// mount of its namespace only receives. An earlier start's is taken away first,
    /// out of the peer group, so nothing the container mounted leaves the node.
    pub(super) fn propagated(
        &self,
        sb: &SandboxRecord,
        container: &str,
        index: usize,
        source: &std::path::Path,
    ) -> Result<PathBuf, MountError> {
        let target = self
            .pod_run_dir(&sb.uid)
            .join("propagated")
            .join(container)
            .join(index.to_string());
        let err = |source| MountError::Propagated {
            path: target.display().to_string(),
            source,
        };
        crate::sys::mount::unmount_private(&target).map_err(err)?;
        std::fs::create_dir_all(&target).map_err(err)?;
        crate::sys::mount::rbind(source, &target).map_err(err)?;
        Ok(target)
    }

    /// A subPath of a volume, resolved as kubelet does it safely: a relative path
    /// without `..`, opened beneath the volume (no symlink out of it), missing
    /// directories created, and bind-mounted from the descriptor that was checked to
    /// `<run-dir>/pods/<uid>/subpaths/<container>/<n>` — the path the container gets —
    /// so nothing can be swapped in between.
    pub(super) fn sub_path(
        &self,
        sb: &SandboxRecord,
        container: &str,
        index: usize,
        volume: &std::path::Path,
        sub: &str,
    ) -> Result<PathBuf, MountError> {
        let rel = checked_sub_path(sub)?;
        // Missing directories get the mode of the volume's root, as kubelet makes them.
        let mode = std::fs::symlink_metadata(volume)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
            .unwrap_or(0o755);
        let fd = crate::sys::mount::open_beneath(volume, rel, Some(mode))
            .map_err(MountError::SubPathOpen)?;
        let target = self.sub_path_target(&sb.uid, container, index);
        crate::sys::mount::bind_fd(&fd, &target).map_err(MountError::SubPathBind)?;
        Ok(target)
    }

    /// Where the subPath of mount `index` of a pod's container is bound for it.
    pub(super) fn sub_path_target(&self, uid: &str, container: &str, index: usize) -> PathBuf {
        self.pod_run_dir(uid)
            .join("subpaths")
            .join(container)
            .join(index.to_string())
    }
}

/// A subPath as kubelet accepts it: relative, without `..`.
pub(super) fn checked_sub_path(sub: &str) -> Result<&std::path::Path, MountError> {
    let rel = std::path::Path::new(sub);
    if rel.is_absolute() {
        return Err(MountError::SubPathAbsolute);
    }
    if !rel
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        return Err(MountError::SubPathDotDot);
    }
    Ok(rel)
}

/// How a volume mount propagates (`volumeMounts[].mountPropagation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    Private,
    /// The node's later mounts below the source show in the container.
    HostToContainer,
    /// And the container's mounts below it reach the node.
    Bidirectional,
}

/// How mount `vm` of `source` propagates, with containerd's and kubelet's rules:
/// HostToContainer needs the source on a shared or slave mount of the node (or nothing
/// would ever propagate), Bidirectional a shared one and a privileged container.
pub(super) fn propagation(
    vm: &k8s_openapi::api::core::v1::VolumeMount,
    source: &std::path::Path,
    privileged: bool,
) -> Result<Propagation, MountError> {
    let mount_of = || {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let path = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
        let found = crate::sys::mount::propagation_of(&mountinfo, &path);
        (path.display().to_string(), found)
    };
    match vm.mount_propagation.as_deref() {
        None | Some("" | "None") => Ok(Propagation::Private),
        Some("HostToContainer") => match mount_of() {
            (_, Some(m)) if m.shared || m.slave => Ok(Propagation::HostToContainer),
            (path, found) => Err(MountError::NotPropagating {
                path,
                mount: found.map(|m| m.mount_point).unwrap_or_default(),
            }),
        },
        Some("Bidirectional") if !privileged => Err(MountError::BidirectionalUnprivileged),
        Some("Bidirectional") => match mount_of() {
            (_, Some(m)) if m.shared => Ok(Propagation::Bidirectional),
            (path, found) => Err(MountError::NotShared {
                path,
                mount: found.map(|m| m.mount_point).unwrap_or_default(),
            }),
        },
        Some(other) => Err(MountError::PropagationKind(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(propagation: &str) -> k8s_openapi::api::core::v1::VolumeMount {
        k8s_openapi::api::core::v1::VolumeMount {
            name: "v".into(),
            mount_path: "/v".into(),
            mount_propagation: Some(propagation.into()),
            ..Default::default()
        }
    }

    #[test]
    fn propagation_follows_kubelets_rules() {
        let any = std::path::Path::new("/");
        assert_eq!(
            propagation(&mount("None"), any, false).unwrap(),
            Propagation::Private
        );
        assert!(matches!(
            propagation(&mount("Bidirectional"), any, false),
            Err(MountError::BidirectionalUnprivileged)
        ));
        assert_eq!(
            MountError::BidirectionalUnprivileged.to_string(),
            "Bidirectional mount propagation is available only to privileged containers"
        );
        assert!(matches!(
            propagation(&mount("Sideways"), any, true),
            Err(MountError::PropagationKind(_))
        ));
    }
}

//! Flags and their validation. Every directory, the cgroup root and the bpffs pin
//! directory come from here, so several kernlet instances can run side by side.

use std::path::{Component, Path, PathBuf};

use clap::Args;

/// Where one kernlet instance keeps its files and kernel objects.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct NodeDirs {
    /// Crash-consistent state (IPAM, credentials, records of sandboxes).
    #[arg(long, default_value = "/var/lib/kernlet", env = "KERNLET_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Runtime files that do not survive a reboot (namespace pins, sockets).
    #[arg(long, default_value = "/run/kernlet", env = "KERNLET_RUN_DIR")]
    pub run_dir: PathBuf,
    /// Container logs in CRI format (`<ns>_<pod>_<uid>/<container>/<n>.log`).
    #[arg(long, default_value = "/var/log/pods", env = "KERNLET_LOG_DIR")]
    pub log_dir: PathBuf,
    /// Content-addressed image store.
    #[arg(
        long,
        default_value = "/var/lib/kernlet/images",
        env = "KERNLET_IMAGE_DIR"
    )]
    pub image_dir: PathBuf,
    /// cgroup v2 subtree for pods, relative to the cgroup2 mount (found in mountinfo).
    #[arg(long, default_value = "kernlet", env = "KERNLET_CGROUP_ROOT")]
    pub cgroup_root: PathBuf,
    /// Directory on a bpffs where maps and programs are pinned.
    #[arg(long, default_value = "/sys/fs/bpf/kernlet", env = "KERNLET_BPFFS_DIR")]
    pub bpffs_dir: PathBuf,
    /// kubelet's root directory as CSI drivers know it: the plugin registration
    /// directory (`plugins_registry`), the staging paths
    /// (`plugins/kubernetes.io/csi/…`) and pods' publish paths
    /// (`pods/<uid>/volumes/kubernetes.io~csi/…`) are below it, where drivers' manifests
    /// mount them from.
    #[arg(long, default_value = "/var/lib/kubelet", env = "KERNLET_KUBELET_DIR")]
    pub kubelet_dir: PathBuf,
}

/// A flag value that cannot be used, with the flag named.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A directory flag is not an absolute path.
    #[error("--{flag} must be an absolute path, got {value:?}")]
    NotAbsolute { flag: &'static str, value: PathBuf },
    /// The cgroup root escapes the cgroup2 mount or is absolute.
    #[error(
        "--cgroup-root must be a relative path below the cgroup2 mount without `..`, got {0:?} \
         (example: --cgroup-root kernlet)"
    )]
    BadCgroupRoot(PathBuf),
}

impl NodeDirs {
    /// Checks that every path can be used as given; nothing is created here.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (flag, value) in [
            ("state-dir", &self.state_dir),
            ("run-dir", &self.run_dir),
            ("log-dir", &self.log_dir),
            ("image-dir", &self.image_dir),
            ("bpffs-dir", &self.bpffs_dir),
            ("kubelet-dir", &self.kubelet_dir),
        ] {
            if !value.is_absolute() {
                return Err(ConfigError::NotAbsolute {
                    flag,
                    value: value.clone(),
                });
            }
        }
        if !is_plain_relative(&self.cgroup_root) {
            return Err(ConfigError::BadCgroupRoot(self.cgroup_root.clone()));
        }
        Ok(())
    }
}

/// True for a non-empty relative path made only of normal components.
fn is_plain_relative(path: &Path) -> bool {
    path.components().next().is_some()
        && path.components().all(|c| matches!(c, Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> NodeDirs {
        NodeDirs {
            state_dir: "/var/lib/kernlet".into(),
            run_dir: "/run/kernlet".into(),
            log_dir: "/var/log/pods".into(),
            image_dir: "/var/lib/kernlet/images".into(),
            cgroup_root: "kernlet".into(),
            bpffs_dir: "/sys/fs/bpf/kernlet".into(),
            kubelet_dir: "/var/lib/kubelet".into(),
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(defaults().validate(), Ok(()));
    }

    #[test]
    fn relative_dirs_are_refused_with_the_flag_named() {
        let dirs = NodeDirs {
            log_dir: "logs".into(),
            ..defaults()
        };
        let err = dirs.validate().unwrap_err();
        assert!(err.to_string().contains("--log-dir"), "{err}");
    }

    #[test]
    fn cgroup_root_may_not_escape() {
        for bad in ["../system.slice", "/kernlet", "", "a/../../b"] {
            let dirs = NodeDirs {
                cgroup_root: bad.into(),
                ..defaults()
            };
            assert_eq!(
                dirs.validate(),
                Err(ConfigError::BadCgroupRoot(bad.into())),
                "{bad}"
            );
        }
        let nested = NodeDirs {
            cgroup_root: "kltest/node-1".into(),
            ..defaults()
        };
        assert_eq!(nested.validate(), Ok(()));
    }
}

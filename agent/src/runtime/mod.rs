//! The pod runtime: images, pod sandboxes (namespaces and a cgroup), containers (run by
//! a shim each), their logs. Everything it creates is recorded under the state
//! directory so a restarted kernlet adopts it instead of starting it again.
//!
//! ```text
//! <state-dir>/pods/<uid>/sandbox.json          a pod's sandbox
//! <state-dir>/containers/<id>/                 a container: OCI bundle, container.json,
//!                                              the shim's state.json / exit.json,
//!                                              upper/ and work/ of its overlay root
//! <run-dir>/pods/<uid>/ns/{net,ipc,uts[,user]} pinned pod namespaces
//! <run-dir>/pods/<uid>/{hosts,resolv.conf,hostname}
//! <run-dir>/libcontainer/                      libcontainer's own state
//! <cgroup2>/<cgroup-root>/kubepods[/<qos>]/pod<uid>/<container id>
//! ```

pub mod claimed_volumes;
pub mod container;
pub mod container_volumes;
pub mod exec;
pub mod hostport;
pub mod idmapped;
pub mod image;
pub mod image_gc;
pub mod image_volumes;
pub mod ipam;
pub mod logs;
pub mod network;
pub mod oom_score;
pub mod orphans;
pub mod pod_content;
pub mod probe;
pub mod qos_cgroups;
pub mod reaper;
pub mod sandbox;
pub mod sealed_exe;
pub mod shim;
pub mod volume_files;
pub mod written_volumes;

use std::path::{Path, PathBuf};

use crate::sys::cgroup::{self, Cgroup};

/// What went wrong in the runtime, naming the pod or container.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("{0}")]
    Refused(String),
    /// The container's configuration cannot be made (a volumeMount naming no volume,
    /// a subPath that is absolute or leaves its volume): kubelet's
    /// CreateContainerConfigError.
    #[error("{0}")]
    Config(String),
    /// The image is not present and the pull policy forbids pulling.
    #[error("{0}")]
    ImageNeverPull(String),
    /// Pulling the image failed.
    #[error("{0}")]
    ImagePull(String),
}

impl RuntimeError {
    /// The waiting reason kubelet reports for a container that failed to start so.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ImageNeverPull(_) => "ErrImageNeverPull",
            Self::ImagePull(_) => "ErrImagePull",
            Self::Config(_) => "CreateContainerConfigError",
            _ => "CreateContainerError",
        }
    }
}

impl RuntimeError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// Where one kernlet instance keeps what the runtime creates.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    pub image_dir: PathBuf,
    /// cgroup root relative to the cgroup2 mount.
    pub cgroup_root: PathBuf,
    /// The kernlet binary, re-executed for shims and sandbox creation.
    pub exe: PathBuf,
    pub rotation: logs::Rotation,
    /// How registries are reached.
    pub registries: image::pull::RegistryConfig,
    /// `pids.max` of every pod cgroup (kubelet's `--pod-max-pids`); `None`: unlimited.
    pub pod_pids_limit: Option<u64>,
    /// RuntimeDefault seccomp for containers that ask for no profile (kubelet's
    /// `--seccomp-default`).
    pub seccomp_default: bool,
    /// The cluster's DNS for ClusterFirst pods (`clusterDNS`, `clusterDomain`).
    pub dns: crate::model::dns::ClusterDns,
    /// The node's resolver configuration (kubelet's `--resolv-conf`).
    pub resolv_conf: PathBuf,
    /// What the pods may use together, `(memory bytes, CPU millicores)`: capacity
    /// minus `--system-reserved` and `--kube-reserved`, enforced on `kubepods`
    /// (kubelet's `enforceNodeAllocatable: [pods]`); `None`: not enforced.
    pub node_allocatable: Option<(u64, u64)>,
    /// Memory QoS and swap of containers (kubelet's `MemoryQoS`, `memorySwap`).
    pub memory_policy: crate::model::memory_qos::MemoryPolicy,
    /// The node IDs `hostUsers: false` pods are mapped to; `None`: the node runs no
    /// such pod (its kernel lacks user namespaces or idmapped tmpfs mounts).
    pub userns_pool: Option<crate::model::userns::Pool>,
}

/// Resource controllers whose limits kernlet enforces when the cgroup2 tree has them.
pub const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// The runtime of one kernlet instance.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub cfg: RuntimeConfig,
    pub images: image::ImageStore,
    /// kernlet's cgroup subtree on the host (cgroup2 mount + cgroup root).
    pub cgroup_root: PathBuf,
    /// Of [`CONTROLLERS`], those this cgroup tree has.
    pub controllers: Vec<String>,
    pub puller: std::sync::Arc<image::pull::Puller>,
    /// The pod network (set at start in standalone mode, by the overlay controller once
    /// the Node has a pod CIDR on a node).
    pub network: std::sync::Arc<std::sync::RwLock<network::NetworkState>>,
    /// The installed container reaper each shim becomes (see [`reaper`]).
    pub reaper: PathBuf,
    /// What takes a pod's CSI volumes off the node when it goes (none: the node has
    /// no CSI, and a pod with such a volume is not removed).
    pub driver_volumes: Option<std::sync::Arc<dyn claimed_volumes::DriverVolumes>>,
    /// ID ranges given to pods whose sandbox is being made (not recorded yet).
    userns_reserved: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, u32>>>,
}

impl Runtime {
    /// Opens the runtime: directories, image store, cgroup root. Missing resource
    /// controllers are reported (limits then cannot be enforced), not fatal.
    pub fn open(cfg: RuntimeConfig) -> Result<Self, RuntimeError> {
        for d in [
            cfg.state_dir.join("pods"),
            cfg.state_dir.join("containers"),
            cfg.run_dir.join("pods"),
            cfg.run_dir.join("libcontainer"),
            cfg.run_dir.join("bundles"),
            cfg.log_dir.clone(),
        ] {
            std::fs::create_dir_all(&d)
                .map_err(RuntimeError::io(format!("creating {}", d.display())))?;
        }
        // What the runtime records of pods and containers is root's alone; the
        // bundles may be crossed, not listed, by the node IDs of user-namespaced
        // containers (see `idmapped`).
        for (d, mode) in [
            (cfg.state_dir.join("pods"), 0o700),
            (cfg.state_dir.join("containers"), 0o700),
            (cfg.run_dir.join("bundles"), 0o711),
        ] {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode))
                .map_err(RuntimeError::io(format!("restricting {}", d.display())))?;
        }
        let reaper = reaper::install(&cfg.state_dir)?;
        let mut cfg = cfg;
        cfg.exe = sealed_exe::install(&cfg.state_dir, &cfg.exe)?;
        let images = image::ImageStore::open(&cfg.image_dir)?;
        images.clean_tmp();
        let mount = cgroup::cgroup2_mount()?;
        let root = Cgroup::create(&mount, &cfg.cgroup_root)?;
        let kubepods_limits = cfg.node_allocatable;
        let available = root.controllers().unwrap_or_default();
        let controllers: Vec<String> = CONTROLLERS
            .iter()
            .filter(|c| available.iter().any(|a| a == *c))
            .map(|c| c.to_string())
            .collect();
        if !controllers.is_empty() {
            // Children may use what the root has (best effort: a parent may not
            // delegate them).
            let want: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
            let _ = std::fs::write(root.path().join("cgroup.subtree_control"), want.join(" "));
        }
        let missing = missing_controllers(&controllers);
        if !missing.is_empty() {
            tracing::warn!(
                cgroup = %root.path().display(),
                "the cgroup v2 tree has no {} controller(s): {} limits of pods are NOT enforced on this node \
                 (the controllers are bound to cgroup v1 or not delegated; boot with cgroup v2 only, \
                 systemd.unified_cgroup_hierarchy=1, to enforce them)",
                missing.join(", "),
                missing.join("/"),
            );
        }
        let rt = Self {
            cgroup_root: root.path().to_path_buf(),
            puller: std::sync::Arc::new(image::pull::Puller::new(
                images.clone(),
                cfg.registries.clone(),
            )),
            images,
            controllers,
            cfg,
            network: Default::default(),
            reaper,
            driver_volumes: None,
            userns_reserved: Default::default(),
        };
        if let Some((memory, cpu_millis)) = kubepods_limits {
            rt.limit_kubepods(memory, cpu_millis)?;
        }
        rt.load_default_apparmor_profile();
        Ok(rt)
    }

    /// On an AppArmor node, loads the profile of `RuntimeDefault` containers unless
    /// it is loaded; without it they are not started (CreateContainerError).
    fn load_default_apparmor_profile(&self) {
        use crate::model::lsm::{RUNTIME_DEFAULT_PROFILE as NAME, RUNTIME_DEFAULT_PROFILE_TEXT};
        use crate::sys::lsm;
        if !lsm::apparmor_enabled() || lsm::apparmor_loaded(NAME) {
            return;
        }
        match lsm::load_profile(
            &self.cfg.state_dir.join("apparmor"),
            NAME,
            RUNTIME_DEFAULT_PROFILE_TEXT,
        ) {
            Ok(()) => tracing::info!("loaded the AppArmor profile {NAME} (RuntimeDefault)"),
            Err(e) => tracing::warn!(
                "the AppArmor profile {NAME} is not loaded, so containers asking for RuntimeDefault will not start: {e}"
            ),
        }
    }

    /// The current pod network state.
    pub fn network_state(&self) -> network::NetworkState {
        self.network
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Sets how pods get their network. When a pod network becomes ready, addresses held
    /// by pods that no longer have a sandbox (kernlet killed between the two) are
    /// released, and so are the host ends of their veth pairs.
    pub fn set_network(&self, state: network::NetworkState) -> Result<(), RuntimeError> {
        if let network::NetworkState::Ready(net) = &state {
            let ipam = self.ipam_for(net)?;
            let released = ipam
                .retain(|uid| self.sandbox(uid).ok().flatten().is_some())
                .map_err(|e| RuntimeError::Refused(e.to_string()))?;
            for (ip, uid) in released {
                tracing::info!(%ip, uid, "released the address of a pod that no longer exists");
                let _ = network::detach(None, &uid);
            }
        }
        match self.network.write() {
            Ok(mut s) => *s = state,
            Err(p) => *p.into_inner() = state,
        }
        Ok(())
    }

    fn ipam_for(&self, net: &network::PodNetwork) -> Result<ipam::Ipam, RuntimeError> {
        ipam::Ipam::open(&self.cfg.state_dir, net.cidr)
            .map_err(|e| RuntimeError::Refused(e.to_string()))
    }

    pub fn has_controller(&self, c: &str) -> bool {
        self.controllers.iter().any(|x| x == c)
    }

    pub fn pod_state_dir(&self, uid: &str) -> PathBuf {
        self.cfg.state_dir.join("pods").join(uid)
    }

    pub fn pod_run_dir(&self, uid: &str) -> PathBuf {
        self.cfg.run_dir.join("pods").join(uid)
    }

    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join("containers").join(id)
    }

    /// A container's OCI bundle (`config.json` and the root mount point), under the
    /// run directory: its environment, secret values included, never reaches a disk.
    pub fn bundle_dir(&self, id: &str) -> PathBuf {
        self.cfg.run_dir.join("bundles").join(id)
    }

    /// The host path of a cgroup given relative to kernlet's root.
    pub fn cgroup_path(&self, relative: &str) -> PathBuf {
        self.cgroup_root.join(relative.trim_start_matches('/'))
    }
}

/// Which of [`CONTROLLERS`] are not in `have`.
pub fn missing_controllers(have: &[String]) -> Vec<&'static str> {
    CONTROLLERS
        .iter()
        .copied()
        .filter(|c| !have.iter().any(|h| h == c))
        .collect()
}

/// Reads a JSON record, `None` when the file does not exist.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, RuntimeError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| RuntimeError::Io {
                what: format!("reading {}", path.display()),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RuntimeError::io(format!("reading {}", path.display()))(e)),
    }
}

/// Writes a JSON record atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), RuntimeError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| RuntimeError::Io {
        what: format!("encoding {}", path.display()),
        source: std::io::Error::other(e),
    })?;
    // Records (a container's config.json among them, with its environment) are
    // root's alone.
    crate::state::write_atomic(path, &bytes, 0o600)?;
    Ok(())
}

/// A new random ID (64 hex digits, like containerd's).
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

//! Containers: a Pod's container turned into an OCI bundle and started by a shim;
//! their state read back from the shim's files; stop with SIGTERM, then SIGKILL.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::container_volumes;
use super::sandbox::SandboxRecord;
use super::shim::{self, ExitRecord, ShimRequest, ShimState};
use super::{Runtime, RuntimeError, logs, new_id, read_json, write_json};
use crate::model::quantity::Quantity;
use crate::model::runtime_spec::{self, BindMount, ContainerPlan, Ns};

/// How long a shim may take to report the container running.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A container as recorded on disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    pub id: String,
    pub pod_uid: String,
    pub name: String,
    /// How many times this container of the pod was started before this one.
    pub restart: u32,
    /// The image as the pod names it, and as resolved.
    pub image: String,
    pub image_ref: String,
    pub image_id: String,
    pub log_path: PathBuf,
    /// The container's cgroup, relative to kernlet's cgroup root.
    pub cgroup: String,
    pub created_at: String,
    /// Limits the cgroup tree could not enforce (named in status and `kernlet doctor`).
    #[serde(default)]
    pub unenforced: Vec<String>,
    /// The hash of the container's spec this run was made from
    /// ([`crate::model::pod_lifecycle::spec_hash`]); empty in records of older versions.
    #[serde(default)]
    pub spec_hash: String,
    /// The requests and limits the container runs with (changed in place by a resize);
    /// absent in records of older versions.
    #[serde(default)]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    /// The signal that stops it ([`crate::model::stop_signal`]); 0 in records of older
    /// versions (SIGTERM).
    #[serde(default)]
    pub stop_signal: i32,
    /// The uid, gid and supplementary groups its process runs with; absent in records
    /// of older versions.
    #[serde(default)]
    pub user: Option<k8s_openapi::api::core::v1::LinuxContainerUser>,
}

/// Where a container stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, the shim not yet reporting.
    Created,
    Running {
        pid: u32,
        started_at: String,
    },
    Exited {
        exit: ExitRecord,
        started_at: Option<String>,
    },
    /// The shim could not start it, or died without a word.
    Failed(String),
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A user or group name looked up in the image's `/etc/passwd` or `/etc/group`:
/// `(id, primary gid)` for a user, `(gid, None)` for a group.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<(u32, Option<u32>)>;

/// `uid[:gid]` from an image's `User`: numbers, or names resolved in the image.
pub fn image_user(
    user: &str,
    passwd: Lookup<'_>,
    group: Lookup<'_>,
) -> Result<(Option<u32>, Option<u32>), String> {
    if user.is_empty() {
        return Ok((None, None));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => (n, passwd(u).and_then(|(_, g)| g)),
        Err(_) => passwd(u).ok_or_else(|| {
            format!("the image runs as user {u:?}, which is not in the image's /etc/passwd; set securityContext.runAsUser")
        })?,
    };
    let gid = match g {
        None => primary,
        Some(g) => Some(match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group(g).map(|(id, _)| id).ok_or_else(|| {
                format!("the image runs as group {g:?}, which is not in the image's /etc/group; set securityContext.runAsGroup")
            })?,
        }),
    };
    Ok((Some(uid), gid))
}

/// Finds `name` (or a numeric id) in a passwd- or group-format text: the id (third
/// field) and, for passwd, the primary gid (fourth).
pub fn lookup_id(text: &str, name: &str) -> Option<(u32, Option<u32>)> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 3 || (f[0] != name && f[2] != name) {
            return None;
        }
        Some((f[2].parse().ok()?, f.get(3).and_then(|g| g.parse().ok())))
    })
}

/// The name of user `uid` in a passwd-format text.
pub fn user_name(passwd: &str, uid: u32) -> Option<String> {
    let uid = uid.to_string();
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2] == uid).then(|| f[0].to_string())
    })
}

/// The gids of the groups that list `user` as a member in a group-format text.
pub fn groups_with_member(group: &str, user: &str) -> Vec<u32> {
    group
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let members = f.get(3)?;
            members
                .split(',')
                .any(|m| m.trim() == user)
                .then(|| f[2].parse().ok())?
        })
        .collect()
}

/// A process's supplementary groups as containerd makes them: its primary group, the
/// image's groups that list its user (unless the pod's supplementalGroupsPolicy is
/// `Strict`), then the pod's supplementalGroups and fsGroup; each once.
pub fn supplementary_groups(
    gid: u32,
    from_image: Vec<u32>,
    from_pod: impl Iterator<Item = u32>,
) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    for g in std::iter::once(gid).chain(from_image).chain(from_pod) {
        if !out.contains(&g) {
            out.push(g);
        }
    }
    out
}

/// kubelet's cpu shares for milli-CPU requests (minimum 2).
pub fn cpu_shares(milli: u64) -> u64 {
    (milli * 1024 / 1000).max(2)
}

/// Whether a container's image can be used now or must be pulled first.
#[derive(Clone, Debug)]
pub enum LocalImage {
    Use(super::image::ImageRecord),
    Pull(crate::model::image_ref::ImageRef),
    /// Stored, but pulled with credentials: usable once the pod shows one of them,
    /// else pulled with the pod's own.
    Verify(crate::model::image_ref::ImageRef),
}

/// The pull policy of a container: as set, else `Always` for `:latest` or untagged
/// images and `IfNotPresent` for the rest (the apiserver's defaulting).
pub fn pull_policy(c: &Container, image: &crate::model::image_ref::ImageRef) -> String {
    c.image_pull_policy
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| {
            if image.digest.is_none() && image.tag.as_deref() == Some("latest") {
                "Always".into()
            } else {
                "IfNotPresent".into()
            }
        })
}

impl Runtime {
    /// The stored image `c` may use now, or the reference to pull first (its pull
    /// policy decides); a missing image with policy `Never` is an error.
    pub fn local_image(&self, c: &Container) -> Result<LocalImage, RuntimeError> {
        let name = c.image.clone().unwrap_or_default();
        let reference = crate::model::image_ref::ImageRef::parse(&name)
            .map_err(|e| RuntimeError::Refused(format!("container {}: {e}", c.name)))?;
        let policy = pull_policy(c, &reference);
        match (policy.as_str(), self.images.resolve(&name)?) {
            ("IfNotPresent", Some(image)) if !self.images.usable_with(&image.id, &[])? => {
                Ok(LocalImage::Verify(reference))
            }
            ("Never" | "IfNotPresent", Some(image)) => Ok(LocalImage::Use(image)),
            ("Never", None) => Err(RuntimeError::ImageNeverPull(format!(
                "image {reference} of container {} is not in the image store and imagePullPolicy is Never; \
                 import it with `kernlet image import`",
                c.name
            ))),
            _ => Ok(LocalImage::Pull(reference)),
        }
    }

    /// Pulls an image (blocking the calling thread; not for the agent's async tasks).
    pub fn pull_blocking(
        &self,
        reference: &crate::model::image_ref::ImageRef,
        secrets: &[super::image::pull::DockerConfig],
    ) -> Result<super::image::ImageRecord, RuntimeError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RuntimeError::io("starting the image puller"))?;
        rt.block_on(self.puller.pull(reference, secrets))
            .map_err(|e| RuntimeError::ImagePull(e.to_string()))
    }

    /// The stored image for a [`LocalImage::Verify`]: without a pull when `secrets`
    /// (or the node's credentials) hold credentials it was pulled with, else pulled
    /// with them (blocking).
    pub fn verify_or_pull_blocking(
        &self,
        reference: &crate::model::image_ref::ImageRef,
        secrets: &[super::image::pull::DockerConfig],
    ) -> Result<super::image::ImageRecord, RuntimeError> {
        match self.puller.present_for(reference, secrets)? {
            Some(image) => Ok(image),
            None => {
                tracing::info!(image = %reference, "the image was pulled with credentials this pod does not hold; pulling it with the pod's own");
                self.pull_blocking(reference, secrets)
            }
        }
    }

    /// The image of `c`, pulled first when its pull policy says so (blocking).
    pub fn ensure_image(
        &self,
        c: &Container,
        secrets: &[super::image::pull::DockerConfig],
    ) -> Result<super::image::ImageRecord, RuntimeError> {
        match self.local_image(c)? {
            LocalImage::Use(image) => Ok(image),
            LocalImage::Pull(reference) => self.pull_blocking(&reference, secrets),
            LocalImage::Verify(reference) => self.verify_or_pull_blocking(&reference, secrets),
        }
    }

    /// A small text file of an image as its containers see it: the topmost layer that
    /// has it wins; a whiteout or an opaque parent below which it is missing hides it.
    pub fn image_file(&self, image: &super::image::ImageRecord, path: &str) -> Option<String> {
        use std::os::unix::fs::FileTypeExt as _;
        let parent = std::path::Path::new(path)
            .parent()
            .unwrap_or(std::path::Path::new(""));
        for layer in image.layers.iter().rev() {
            let dir = self.images.layer_path(&layer.diff_id)?;
            match std::fs::symlink_metadata(dir.join(path)) {
                Ok(m) if m.file_type().is_char_device() => return None,
                Ok(m) if m.is_file() && m.len() < (1 << 20) => {
                    return std::fs::read_to_string(dir.join(path)).ok();
                }
                Ok(_) => return None,
                Err(_) if crate::sys::fs::is_opaque(&dir.join(parent)) => return None,
                Err(_) => {}
            }
        }
        None
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("container.json")
    }

    pub fn container(&self, id: &str) -> Result<Option<ContainerRecord>, RuntimeError> {
        read_json(&self.record_path(id))
    }

    /// Every recorded container.
    pub fn containers(&self) -> Vec<ContainerRecord> {
        records_in(&self.cfg.state_dir)
    }

    /// The plan of a container of `pod` in `sb`, with what the cgroup tree cannot enforce.
    fn plan(
        &self,
        sb: &SandboxRecord,
        pod: &Pod,
        c: &Container,
        image: &super::image::ImageRecord,
        id: &str,
    ) -> Result<(ContainerPlan, Vec<String>), RuntimeError> {
        let spec = pod.spec.clone().unwrap_or_default();
        let who = format!("container {} of pod {}/{}", c.name, sb.namespace, sb.name);
        let refuse = |why: String| RuntimeError::Refused(format!("{who}: {why}"));
        let run = &image.run;
        let process =
            runtime_spec::process(c, &run.entrypoint, &run.cmd, &run.env, &run.working_dir);
        if process.args.is_empty() {
            return Err(refuse(
                "neither the pod nor the image gives a command".into(),
            ));
        }
        let psc = spec.security_context.clone().unwrap_or_default();
        let csc = c.security_context.clone().unwrap_or_default();
        let passwd = self.image_file(image, "etc/passwd").unwrap_or_default();
        let group = self.image_file(image, "etc/group").unwrap_or_default();
        let (img_uid, img_gid) = image_user(&run.user, &|n| lookup_id(&passwd, n), &|n| {
            lookup_id(&group, n)
        })
        .map_err(refuse)?;
        let run_as_user = csc.run_as_user.or(psc.run_as_user).map(|u| u as u32);
        let uid = run_as_user.or(img_uid).unwrap_or(0);
        // A runAsUser without runAsGroup takes that user's primary group from the
        // image's /etc/passwd (0 when it has none), as containerd does.
        let gid = csc
            .run_as_group
            .or(psc.run_as_group)
            .map(|g| g as u32)
            .or_else(|| match run_as_user {
                Some(u) => lookup_id(&passwd, &u.to_string()).and_then(|(_, g)| g),
                None => img_gid,
            })
            .unwrap_or(0);
        if csc.run_as_non_root.or(psc.run_as_non_root) == Some(true) && uid == 0 {
            return Err(refuse(
                "runAsNonRoot is set but the container would run as root (uid 0)".into(),
            ));
        }
        let additional_gids = supplementary_groups(
            gid,
            (psc.supplemental_groups_policy.as_deref() != Some("Strict"))
                .then(|| user_name(&passwd, uid))
                .flatten()
                .map(|name| groups_with_member(&group, &name))
                .unwrap_or_default(),
            psc.supplemental_groups
                .iter()
                .flatten()
                .chain(psc.fs_group.iter())
                .map(|g| *g as u32),
        );
        let privileged = csc.privileged.unwrap_or(false);
        let profile = csc.seccomp_profile.clone().or(psc.seccomp_profile.clone());
        let seccomp = match profile.as_ref().map(|p| p.type_.as_str()) {
            Some("RuntimeDefault") => runtime_spec::Seccomp::RuntimeDefault,
            Some("Unconfined") => runtime_spec::Seccomp::Unconfined,
            Some("Localhost") => {
                let name = profile
                    .as_ref()
                    .and_then(|p| p.localhost_profile.clone())
                    .unwrap_or_default();
                runtime_spec::Seccomp::Localhost(self.localhost_seccomp(&name).map_err(refuse)?)
            }
            Some(other) => return Err(refuse(format!("unknown seccompProfile type {other:?}"))),
            None if self.cfg.seccomp_default && !privileged => {
                runtime_spec::Seccomp::RuntimeDefault
            }
            None => runtime_spec::Seccomp::Unconfined,
        };
        // Where the node has AppArmor, the profile asked for, loaded; admission refused
        // a pod that needs AppArmor on a node without it.
        let apparmor = if crate::sys::lsm::apparmor_enabled() {
            let asked = crate::model::lsm::apparmor_profile(pod, c);
            crate::model::lsm::oci_profile(
                asked.as_ref(),
                privileged,
                &crate::sys::lsm::apparmor_loaded,
            )
            .map_err(refuse)?
        } else {
            None
        };
        let caps = csc.capabilities.clone().unwrap_or_default();
        let run_dir = self.pod_run_dir(&sb.uid);
        let mut mounts = vec![
            BindMount {
                source: run_dir.join("hosts"),
                destination: "/etc/hosts".into(),
                readonly: false,
                host_to_container: false,
                bidirectional: false,
            },
            BindMount {
                source: run_dir.join("resolv.conf"),
                destination: "/etc/resolv.conf".into(),
                readonly: false,
                host_to_container: false,
                bidirectional: false,
            },
            BindMount {
                source: run_dir.join("hostname"),
                destination: "/etc/hostname".into(),
                readonly: false,
                host_to_container: false,
                bidirectional: false,
            },
        ];
        let term = self.container_dir(id).join(shim::TERMINATION_LOG);
        std::fs::write(&term, b"")
            .map_err(RuntimeError::io(format!("creating {}", term.display())))?;
        // Writable by whatever user the container runs as, as kubelet makes it.
        std::fs::set_permissions(&term, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .map_err(RuntimeError::io(format!("chmod {}", term.display())))?;
        mounts.push(BindMount {
            source: term,
            destination: c
                .termination_message_path
                .clone()
                .unwrap_or_else(|| "/dev/termination-log".into()),
            readonly: false,
            host_to_container: false,
            bidirectional: false,
        });
        let mut dev_volume = None;
        for (index, vm) in c.volume_mounts.iter().flatten().enumerate() {
            let vol = spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == vm.name)
                .ok_or_else(|| {
                    RuntimeError::Config(format!(
                        "volumeMount {:?} names no volume of the pod",
                        vm.name
                    ))
                })?;
            let (mut source, forced_readonly) = self
                .volume_source(sb, &psc, vol)
                .map_err(|e| refuse(e.to_string()))?;
            if let Some(sub) = sub_path_of(c, vm) {
                source = if vol.image.is_some() {
                    // The shim binds it once it has mounted the image.
                    container_volumes::checked_sub_path(&sub)
                        .map(|_| self.sub_path_target(&sb.uid, &c.name, index))
                } else {
                    self.sub_path(sb, &c.name, index, &source, &sub)
                }
                .map_err(|e| {
                    RuntimeError::Config(format!("volumeMount {:?} subPath {sub:?}: {e}", vm.name))
                })?;
            }
            if vm.mount_path.trim_end_matches('/') == "/dev" {
                // The runtime (libcontainer) makes its links and device nodes in the
                // container's /dev after the volumes are mounted: over the volume they
                // would land in it (the node's /dev for a hostPath). So the volume is
                // mounted after that, by a hook, as runc leaves a /dev bind alone.
                dev_volume = Some((source, forced_readonly || vm.read_only.unwrap_or(false)));
                continue;
            }
            let privileged_mount = c
                .security_context
                .as_ref()
                .and_then(|s| s.privileged)
                .unwrap_or(false);
            let propagation = container_volumes::propagation(vm, &source, privileged_mount)
                .map_err(|e| RuntimeError::Config(format!("volumeMount {:?}: {e}", vm.name)))?;
            if propagation == container_volumes::Propagation::Bidirectional {
                source = self
                    .propagated(sb, &c.name, index, &source)
                    .map_err(|e| RuntimeError::Config(format!("volumeMount {:?}: {e}", vm.name)))?;
            }
            mounts.push(BindMount {
                source,
                destination: vm.mount_path.clone(),
                readonly: forced_readonly || vm.read_only.unwrap_or(false),
                host_to_container: propagation != container_volumes::Propagation::Private,
                bidirectional: propagation == container_volumes::Propagation::Bidirectional,
            });
        }
        let ns_of = |kind: &str, host: bool| {
            if host {
                Ns::Host
            } else {
                Ns::Path(crate::sys::ns::pin_path(&sb.ns_dir, kind))
            }
        };
        // Limits, where the cgroup tree has the controller.
        let mut resources = serde_json::Map::new();
        let mut unenforced = Vec::new();
        let res = c.resources.clone().unwrap_or_default();
        let get = |m: &Option<
            std::collections::BTreeMap<
                String,
                k8s_openapi::apimachinery::pkg::api::resource::Quantity,
            >,
        >,
                   k: &str| {
            m.as_ref()
                .and_then(|m| m.get(k))
                .map(|q| Quantity::parse(&q.0))
        };
        let bad = |e: crate::model::quantity::QuantityError| refuse(e.to_string());
        if let Some(mem) = get(&res.limits, "memory").transpose().map_err(bad)? {
            if self.has_controller("memory") {
                resources.insert(
                    "memory".into(),
                    json!({"limit": i64::try_from(mem.value()).unwrap_or(i64::MAX)}),
                );
            } else {
                unenforced.push(format!(
                    "memory limit {}",
                    res.limits
                        .as_ref()
                        .and_then(|l| l.get("memory"))
                        .map(|q| q.0.clone())
                        .unwrap_or_default()
                ));
            }
        }
        // Memory QoS and swap, as kubelet's unified cgroup files.
        if self.has_controller("memory") {
            let swap_controller = self.cgroup_root.join("memory.swap.max").exists();
            let unified =
                crate::model::memory_qos::unified(pod, c, &self.cfg.memory_policy, swap_controller);
            if !unified.is_empty() {
                resources.insert("unified".into(), json!(unified));
            }
        }
        let cpu_limit = get(&res.limits, "cpu").transpose().map_err(bad)?;
        let cpu_request = get(&res.requests, "cpu")
            .transpose()
            .map_err(bad)?
            .or(cpu_limit);
        if cpu_limit.is_some() || cpu_request.is_some() {
            if self.has_controller("cpu") {
                let mut cpu = json!({"shares": cpu_shares(cpu_request.map_or(0, |q| u64::try_from(q.milli()).unwrap_or(0)))});
                if let Some(l) = cpu_limit {
                    cpu["quota"] =
                        json!((i64::try_from(l.milli()).unwrap_or(i64::MAX / 100) * 100).max(1000));
                    cpu["period"] = json!(100_000);
                }
                resources.insert("cpu".into(), cpu);
            } else if cpu_limit.is_some() {
                unenforced.push("cpu limit".into());
            }
        }
        let block_devices = self
            .block_devices(&sb.uid, c)
            .map_err(|e| refuse(e.to_string()))?;
        let mut plan = ContainerPlan {
            dev_volume,
            args: process.args,
            env: process.env,
            cwd: process.cwd,
            uid,
            gid,
            additional_gids,
            net: ns_of("net", sb.host_network),
            ipc: ns_of("ipc", sb.host_ipc),
            uts: ns_of("uts", sb.host_network),
            pid: match (sb.host_pid, sb.pause_pid, self.debug_target(sb, &spec, c)?) {
                (true, _, _) => Ns::Host,
                (false, Some(pause), _) => Ns::Path(PathBuf::from(format!("/proc/{pause}/ns/pid"))),
                (false, None, Some(target)) => {
                    Ns::Path(PathBuf::from(format!("/proc/{target}/ns/pid")))
                }
                (false, None, None) => Ns::New,
            },
            cgroups_path: format!("/{}/{id}", sb.cgroup),
            shm: if sb.host_ipc {
                PathBuf::from("/dev/shm")
            } else {
                self.pod_run_dir(&sb.uid).join("shm")
            },
            mounts,
            privileged,
            cap_add: caps.add.unwrap_or_default(),
            cap_drop: caps.drop.unwrap_or_default(),
            no_new_privileges: csc.allow_privilege_escalation == Some(false) && !privileged,
            read_only_root: csc.read_only_root_filesystem.unwrap_or(false),
            seccomp,
            apparmor,
            sysctls: psc
                .sysctls
                .iter()
                .flatten()
                .map(|s| (s.name.clone(), s.value.clone()))
                .collect(),
            terminal: c.tty == Some(true),
            oom_score_adj: Some(super::oom_score::for_container(pod, c)),
            userns: sb
                .userns
                .map(|_| crate::sys::ns::pin_path(&sb.ns_dir, "user")),
            host_caps: std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("CapBnd:"))
                        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
                })
                .unwrap_or(0),
            devices: if privileged {
                crate::sys::fs::host_devices(std::path::Path::new("/dev"))
                    .into_iter()
                    .map(|d| {
                        json!({"path": d.path, "type": d.kind.to_string(), "major": d.major, "minor": d.minor,
                               "fileMode": d.mode, "uid": 0, "gid": 0})
                    })
                    .chain(block_devices.clone())
                    .collect()
            } else {
                block_devices
            },
            resources: (!resources.is_empty()).then_some(serde_json::Value::Object(resources)),
        };
        // A node profile's rules may depend on the container's capabilities.
        if let runtime_spec::Seccomp::Localhost(raw) = &plan.seccomp {
            let (bounding, _) = runtime_spec::capabilities(&plan);
            let name = profile
                .and_then(|p| p.localhost_profile)
                .unwrap_or_default();
            let section = crate::model::seccomp::localhost(raw, &bounding).map_err(|e| {
                refuse(format!(
                    "seccomp profile {}: {e}",
                    self.seccomp_dir().join(&name).display()
                ))
            })?;
            plan.seccomp = runtime_spec::Seccomp::Localhost(section);
        }
        Ok((plan, unenforced))
    }

    /// Runs `command` in running container `id` and waits for it (at most `timeout`,
    /// then it is killed), through a helper process (see [`super::exec`]).
    pub fn exec_sync(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<super::exec::ExecResult, RuntimeError> {
        if !matches!(self.container_state(id), ContainerState::Running { .. }) {
            return Err(RuntimeError::Refused(format!(
                "container {id} is not running"
            )));
        }
        if command.is_empty() {
            return Err(RuntimeError::Refused("exec: no command given".into()));
        }
        super::exec::via_helper(&self.cfg.exe, &self.container_dir(id), command, timeout)
            .map_err(|why| RuntimeError::Refused(format!("exec in container {id}: {why}")))
    }

    /// Where `Localhost` seccomp profiles live: `<state-dir>/seccomp` (kubelet's
    /// `<root-dir>/seccomp`).
    pub fn seccomp_dir(&self) -> PathBuf {
        self.cfg.state_dir.join("seccomp")
    }

    /// The node's seccomp profile `name` (a path below [`Self::seccomp_dir`]), parsed.
    fn localhost_seccomp(&self, name: &str) -> Result<serde_json::Value, String> {
        let rel = std::path::Path::new(name);
        if name.is_empty()
            || !rel
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            return Err(format!(
                "seccompProfile Localhost needs localhostProfile, a relative path below {} without '..' (got {name:?})",
                self.seccomp_dir().display()
            ));
        }
        let path = self.seccomp_dir().join(rel);
        let bytes = std::fs::read(&path).map_err(|e| {
            format!(
                "cannot load seccomp profile {}: {e}; put the profile there on this node",
                path.display()
            )
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| format!("seccomp profile {} is not JSON: {e}", path.display()))
    }

    /// The process of the container an ephemeral container `c` targets
    /// (`targetContainerName`: it joins that container's PID namespace); `None` for
    /// other containers. The target must be running.
    fn debug_target(
        &self,
        sb: &SandboxRecord,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        c: &Container,
    ) -> Result<Option<u32>, RuntimeError> {
        let Some(target) = spec
            .ephemeral_containers
            .iter()
            .flatten()
            .find(|e| e.name == c.name)
            .and_then(|e| e.target_container_name.as_deref())
        else {
            return Ok(None);
        };
        let running = self
            .pod_containers(&sb.uid)
            .into_iter()
            .filter(|r| r.name == target)
            .max_by_key(|r| r.restart)
            .and_then(|r| match self.container_state(&r.id) {
                ContainerState::Running { pid, .. } => Some(pid),
                _ => None,
            });
        running.map(Some).ok_or_else(|| {
            RuntimeError::Refused(format!(
                "ephemeral container {} of pod {}/{}: its target container {target:?} is not running",
                c.name, sb.namespace, sb.name
            ))
        })
    }

    /// Creates and starts container `c` of `pod` in its sandbox from `image`; `restart`
    /// counts the earlier starts. Returns once the container runs (or has already exited).
    pub fn start_container(
        &self,
        sb: &SandboxRecord,
        pod: &Pod,
        c: &Container,
        restart: u32,
        image: &super::image::ImageRecord,
    ) -> Result<ContainerRecord, RuntimeError> {
        let image_name = c.image.clone().unwrap_or_default();
        let image_ref = crate::model::image_ref::ImageRef::parse(&image_name)
            .map(|r| r.to_string())
            .unwrap_or_else(|_| image_name.clone());
        let stop_signal = crate::model::stop_signal::stop_signal(c, &image.run.stop_signal)
            .map_err(|e| {
                RuntimeError::Refused(format!(
                    "container {} of pod {}/{}: its stop signal (lifecycle.stopSignal, else the image's StopSignal): {e}",
                    c.name, sb.namespace, sb.name
                ))
            })?;
        let id = new_id();
        let dir = self.container_dir(&id);
        for d in ["upper", "work"] {
            std::fs::create_dir_all(dir.join(d))
                .map_err(RuntimeError::io(format!("creating {}", dir.display())))?;
        }
        // The OCI bundle (config.json, with the container's environment, and the root
        // mount point) lives under the run directory: in memory, never on disk.
        let bundle = self.bundle_dir(&id);
        std::fs::create_dir_all(bundle.join("rootfs"))
            .map_err(RuntimeError::io(format!("creating {}", bundle.display())))?;
        // Root's alone (a user-namespaced container's is opened to its IDs below).
        std::fs::set_permissions(&bundle, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(RuntimeError::io(format!(
                "restricting {}",
                bundle.display()
            )))?;
        let (plan, unenforced) = match self.plan(sb, pod, c, image, &id) {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                let _ = std::fs::remove_dir_all(&bundle);
                return Err(e);
            }
        };
        if !unenforced.is_empty() {
            tracing::warn!(
                pod = %format!("{}/{}", sb.namespace, sb.name), container = %c.name,
                "NOT enforced (no such controller in the cgroup v2 tree): {}", unenforced.join(", ")
            );
        }
        let log_path = logs::container_log(
            &logs::pod_dir(&self.cfg.log_dir, &sb.namespace, &sb.name, &sb.uid),
            &c.name,
            restart,
        );
        let record = ContainerRecord {
            id: id.clone(),
            pod_uid: sb.uid.clone(),
            name: c.name.clone(),
            restart,
            image: image_name,
            image_ref,
            image_id: image.id.clone(),
            log_path: log_path.clone(),
            cgroup: plan.cgroups_path.trim_start_matches('/').to_string(),
            created_at: now(),
            unenforced,
            spec_hash: pod
                .spec
                .as_ref()
                .and_then(|s| {
                    crate::model::pod_lifecycle::all_containers(s).find(|x| x.name == c.name)
                })
                .map(crate::model::pod_lifecycle::spec_hash)
                .unwrap_or_default(),
            resources: Some(crate::model::resize::wanted(c)),
            stop_signal,
            user: Some(k8s_openapi::api::core::v1::LinuxContainerUser {
                uid: i64::from(plan.uid),
                gid: i64::from(plan.gid),
                supplemental_groups: Some(
                    plan.additional_gids.iter().map(|g| i64::from(*g)).collect(),
                ),
            }),
        };
        let mut config = runtime_spec::spec(&plan);
        if let Some((source, read_only)) = &plan.dev_volume {
            // Run in the container's mount namespace after the runtime made its /dev,
            // before the container enters its root.
            config["hooks"] = serde_json::json!({"createContainer": [{
                "path": self.cfg.exe,
                "args": [self.cfg.exe, "internal", "dev-volume", source,
                    bundle.join("rootfs/dev"), plan.shm, if *read_only { "ro" } else { "rw" }],
            }]});
        }
        let image_volumes = self.image_mounts(&sb.uid, &pod.spec.clone().unwrap_or_default(), c);
        let idmap = match (&plan.userns, sb.userns) {
            (Some(pin), Some(range)) => {
                super::idmapped::prepare(
                    &bundle,
                    &dir.join("upper"),
                    &dir.join("work"),
                    range.host_id,
                )
                .map_err(RuntimeError::io(format!(
                    "giving the root filesystem of container {} to node ID {}",
                    c.name, range.host_id
                )))?;
                // Image volumes are mounted from idmapped layers by the shim.
                let skip: Vec<PathBuf> = image_volumes
                    .iter()
                    .flat_map(|v| {
                        std::iter::once(v.path.clone())
                            .chain(v.sub_path.as_ref().map(|(_, target)| target.clone()))
                    })
                    .collect();
                Some(super::idmapped::stage(&mut config, &bundle, pin, &skip))
            }
            _ => None,
        };
        write_json(&bundle.join("config.json"), &config)?;
        write_json(
            &dir.join(shim::REQUEST),
            &ShimRequest {
                id: id.clone(),
                bundle: bundle.clone(),
                layers_dir: self.cfg.image_dir.join("layers"),
                lower: image.lower(),
                upper: dir.join("upper"),
                work: dir.join("work"),
                cgroup_root: self.cgroup_root.clone(),
                state_root: self.cfg.run_dir.join("libcontainer"),
                log: log_path,
                rotation: self.cfg.rotation,
                message_from_log_on_error: c.termination_message_policy.as_deref()
                    == Some("FallbackToLogsOnError"),
                stdin: (c.stdin == Some(true)).then(|| shim::StdinRequest {
                    socket: shim::attach_socket(&self.cfg.run_dir, &id),
                    once: c.stdin_once == Some(true),
                }),
                console: (c.tty == Some(true))
                    .then(|| shim::attach_socket(&self.cfg.run_dir, &id).with_extension("tty")),
                reaper: Some(self.reaper.clone()),
                shared_mounts: plan
                    .mounts
                    .iter()
                    .filter(|m| m.bidirectional)
                    .map(|m| m.source.clone())
                    .collect(),
                image_volumes,
                idmap,
            },
        )?;
        write_json(&self.record_path(&id), &record)?;
        self.index_container(&sb.uid, &id)?;
        let status = std::process::Command::new(&self.cfg.exe)
            .arg("internal")
            .arg("shim")
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(RuntimeError::io(format!(
                "running {} internal shim",
                self.cfg.exe.display()
            )))?;
        if !status.success() {
            return Err(RuntimeError::Refused(format!(
                "the shim of container {} did not start ({status})",
                c.name
            )));
        }
        let started = Instant::now();
        loop {
            match self.container_state(&id) {
                ContainerState::Created if started.elapsed() < START_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                ContainerState::Created => {
                    return Err(RuntimeError::Refused(format!(
                        "container {} did not start within {START_TIMEOUT:?} (see {})",
                        c.name,
                        dir.join(shim::LOG).display()
                    )));
                }
                ContainerState::Failed(why) => {
                    return Err(RuntimeError::Refused(format!(
                        "container {} of pod {}/{}: {why}",
                        c.name, sb.namespace, sb.name
                    )));
                }
                ContainerState::Running { .. } | ContainerState::Exited { .. } => {
                    return Ok(record);
                }
            }
        }
    }

    /// Reads a container's state from its shim's files.
    pub fn container_state(&self, id: &str) -> ContainerState {
        state_in(&self.container_dir(id))
    }

    /// Stops a running container: its stop signal (SIGTERM unless the pod or the image
    /// names another), then SIGKILL to the whole container cgroup after `grace`.
    /// Returns when it has exited.
    pub fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        use nix::sys::signal::{Signal, kill};
        let ContainerState::Running { pid, .. } = self.container_state(id) else {
            return Ok(());
        };
        let record = self.container(id)?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
        let signal = record
            .as_ref()
            .map(|r| r.stop_signal)
            .filter(|n| *n > 0)
            .unwrap_or(15);
        if let Err(e) = crate::sys::process::signal(pid, signal) {
            tracing::debug!(container = %id, "signal {signal}: {e}");
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !matches!(self.container_state(id), ContainerState::Running { .. }) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = kill(pid, Signal::SIGKILL);
        if let Some(r) = record {
            let _ = crate::sys::cgroup::Cgroup::open(self.cgroup_path(&r.cgroup)).kill();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.container_state(id), ContainerState::Running { .. }) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(RuntimeError::Refused(format!(
            "container {id} did not die after SIGKILL"
        )))
    }

    /// Changes a running container's resources in place (an in-place resize): its
    /// cgroup's `cpu.weight`, `cpu.max` and `memory.max` (and the Memory QoS files that
    /// follow from them), where the cgroup tree has the controller; the record keeps
    /// the new values. Returns what could not be enforced.
    pub fn update_resources(
        &self,
        pod: &k8s_openapi::api::core::v1::Pod,
        id: &str,
        resources: &k8s_openapi::api::core::v1::ResourceRequirements,
    ) -> Result<Vec<String>, RuntimeError> {
        let Some(mut record) = self.container(id)? else {
            return Err(RuntimeError::Refused(format!("no container {id}")));
        };
        let mut values: Vec<(&str, String)> = crate::model::resize::cgroup_values(resources)
            .map_err(|e| RuntimeError::Refused(format!("container {} ({id}): {e}", record.name)))?
            .into_iter()
            .collect();
        let resized = k8s_openapi::api::core::v1::Container {
            name: record.name.clone(),
            resources: Some(resources.clone()),
            ..Default::default()
        };
        let unified = crate::model::memory_qos::unified(
            pod,
            &resized,
            &self.cfg.memory_policy,
            self.cgroup_root.join("memory.swap.max").exists(),
        );
        let unified: Vec<(String, String)> = unified.into_iter().collect();
        values.extend(unified.iter().map(|(f, v)| (f.as_str(), v.clone())));
        let cgroup = crate::sys::cgroup::Cgroup::open(self.cgroup_path(&record.cgroup));
        let mut unenforced = Vec::new();
        for (file, value) in values {
            let controller = file.split('.').next().unwrap_or(file);
            if !self.has_controller(controller) {
                unenforced.push(format!("{file} {value}"));
                continue;
            }
            cgroup.write(file, &value).map_err(|e| {
                RuntimeError::Refused(format!(
                    "container {} ({id}): writing {file} = {value}: {e}",
                    record.name
                ))
            })?;
        }
        record.resources = Some(resources.clone());
        write_json(&self.container_dir(id).join("container.json"), &record)?;
        Ok(unenforced)
    }

    /// Removes a stopped container's files (its writable layer with them); its log
    /// stays until the pod goes.
    pub fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        if matches!(self.container_state(id), ContainerState::Running { .. }) {
            return Err(RuntimeError::Refused(format!(
                "container {id} is still running"
            )));
        }
        let pod = self.container(id).ok().flatten().map(|r| r.pod_uid);
        match std::fs::remove_dir_all(self.bundle_dir(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(RuntimeError::io(format!(
                    "removing the bundle of container {id}"
                ))(e));
            }
            _ => {}
        }
        match std::fs::remove_dir_all(self.container_dir(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(RuntimeError::io(format!("removing container {id}"))(e))
            }
            _ => {
                if let Some(uid) = pod {
                    let _ = std::fs::remove_file(self.pod_index(&uid).join(id));
                }
                Ok(())
            }
        }
    }

    /// The directory that lists a pod's containers (one empty file per container id),
    /// so a pod's worker reads its own records and not every record of the node.
    fn pod_index(&self, uid: &str) -> PathBuf {
        self.pod_state_dir(uid).join("containers")
    }

    /// The IDs of a pod's containers, from its index alone (no record read): what the
    /// node's relist looks at every second. Empty when the pod has no index.
    pub fn pod_container_ids(&self, uid: &str) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.pod_index(uid))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ids.sort();
        ids
    }

    fn index_container(&self, uid: &str, id: &str) -> Result<(), RuntimeError> {
        let dir = self.pod_index(uid);
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(dir.join(id), b""))
            .map_err(RuntimeError::io(format!(
                "indexing container {id} under its pod"
            )))
    }

    /// The recorded containers of pod `uid`, ordered by name and restart. A pod from
    /// a version without the index is indexed on the way.
    pub fn pod_containers(&self, uid: &str) -> Vec<ContainerRecord> {
        let dir = self.pod_index(uid);
        let mut v: Vec<ContainerRecord> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .flatten()
                .filter_map(|e| {
                    self.container(&e.file_name().to_string_lossy())
                        .ok()
                        .flatten()
                })
                .collect(),
            Err(_) => {
                let mine: Vec<ContainerRecord> = self
                    .containers()
                    .into_iter()
                    .filter(|r| r.pod_uid == uid)
                    .collect();
                if self.pod_state_dir(uid).is_dir() && std::fs::create_dir_all(&dir).is_ok() {
                    for r in &mine {
                        let _ = self.index_container(uid, &r.id);
                    }
                }
                mine
            }
        };
        v.sort_by(|a, b| (&a.name, a.restart).cmp(&(&b.name, b.restart)));
        v
    }
}

/// The containers recorded under a state directory, ordered by pod, name and restart
/// (works without the daemon).
pub fn records_in(state_dir: &std::path::Path) -> Vec<ContainerRecord> {
    let mut v: Vec<ContainerRecord> = std::fs::read_dir(state_dir.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| read_json(&e.path().join("container.json")).ok().flatten())
        .collect();
    v.sort_by(|a: &ContainerRecord, b: &ContainerRecord| {
        (&a.pod_uid, &a.name, a.restart).cmp(&(&b.pod_uid, &b.name, b.restart))
    });
    v
}

/// Where the container of bundle directory `dir` stands, from its shim's files.
pub fn state_in(dir: &std::path::Path) -> ContainerState {
    let state: Option<ShimState> = read_json(&dir.join(shim::STATE)).ok().flatten();
    if let Ok(Some(exit)) = read_json::<ExitRecord>(&dir.join(shim::EXIT)) {
        return ContainerState::Exited {
            exit,
            started_at: state.map(|s| s.started_at),
        };
    }
    if let Ok(why) = std::fs::read_to_string(dir.join(shim::ERROR)) {
        return ContainerState::Failed(why);
    }
    match state {
        Some(s) if crate::sys::process::alive(s.shim_pid) => ContainerState::Running {
            pid: s.pid,
            started_at: s.started_at,
        },
        Some(s) => {
            // The shim died without writing the exit (killed): re-check once, it
            // may have written it just now.
            match read_json::<ExitRecord>(&dir.join(shim::EXIT)) {
                Ok(Some(exit)) => ContainerState::Exited {
                    exit,
                    started_at: Some(s.started_at),
                },
                _ => {
                    ContainerState::Failed("its shim was killed; the exit status is unknown".into())
                }
            }
        }
        None => ContainerState::Created,
    }
}

/// The subPath of mount `vm` of container `c`: `subPath`, or `subPathExpr` with
/// `$(VAR)` expanded from the container's environment.
pub(super) fn sub_path_of(
    c: &k8s_openapi::api::core::v1::Container,
    vm: &k8s_openapi::api::core::v1::VolumeMount,
) -> Option<String> {
    match (&vm.sub_path, &vm.sub_path_expr) {
        (Some(p), _) if !p.is_empty() => Some(p.clone()),
        (_, Some(expr)) if !expr.is_empty() => {
            let env: Vec<(String, String)> = c
                .env
                .iter()
                .flatten()
                .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
                .collect();
            Some(runtime_spec::expand(expr, &|n| {
                env.iter()
                    .rev()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.clone())
            }))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supplementary_groups_merge_the_images_unless_strict() {
        let passwd =
            "root:x:0:0::/root:/bin/sh\nuser-defined-in-image:x:1000:1000::/home/u:/bin/sh\n";
        let group = "root:x:0:\nuser-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\nother:x:7:root, user-defined-in-image\n";
        let name = user_name(passwd, 1000).unwrap();
        assert_eq!(name, "user-defined-in-image");
        assert_eq!(groups_with_member(group, &name), [50000, 7]);
        assert_eq!(user_name(passwd, 1001), None);
        // Merge (the default): primary, the image's, the pod's; each once.
        assert_eq!(
            supplementary_groups(
                1000,
                groups_with_member(group, &name),
                [60000, 1000].into_iter()
            ),
            [1000, 50000, 7, 60000]
        );
        // Strict: the image's are left out.
        assert_eq!(
            supplementary_groups(1000, Vec::new(), [60000].into_iter()),
            [1000, 60000]
        );
    }

    #[test]
    fn image_users_by_number_or_name() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1234:5678::/home/app:/bin/sh\n";
        let group = "root:x:0:\nstaff:x:50:\n";
        let p = |n: &str| lookup_id(passwd, n);
        let g = |n: &str| lookup_id(group, n);
        assert_eq!(image_user("", &p, &g).unwrap(), (None, None));
        assert_eq!(image_user("1000", &p, &g).unwrap(), (Some(1000), None));
        assert_eq!(
            image_user("1234", &p, &g).unwrap(),
            (Some(1234), Some(5678))
        );
        assert_eq!(
            image_user("1000:50", &p, &g).unwrap(),
            (Some(1000), Some(50))
        );
        assert_eq!(image_user("app", &p, &g).unwrap(), (Some(1234), Some(5678)));
        assert_eq!(
            image_user("app:staff", &p, &g).unwrap(),
            (Some(1234), Some(50))
        );
        assert!(
            image_user("nginx", &p, &g)
                .unwrap_err()
                .contains("runAsUser")
        );
        assert!(
            image_user("app:nogroup", &p, &g)
                .unwrap_err()
                .contains("runAsGroup")
        );
    }

    #[test]
    fn shares_like_kubelet() {
        assert_eq!(cpu_shares(0), 2);
        assert_eq!(cpu_shares(100), 102);
        assert_eq!(cpu_shares(1000), 1024);
    }
}

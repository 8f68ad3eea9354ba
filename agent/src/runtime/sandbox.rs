//! Pod sandboxes: the pod's namespaces (pinned), its cgroup, and the files kernlet
//! writes for its containers (`/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`).

use std::collections::HashSet;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};

use super::{Runtime, RuntimeError, read_json, write_json};
use crate::model::qos::{QosClass, qos_class};
use crate::sys::{cgroup::Cgroup, ns, userns::IdRange};

/// Ends a pod's ID range reservation when its sandbox is recorded or not made.
struct ReleaseUserns<'a>(&'a Runtime, &'a str);

impl Drop for ReleaseUserns<'_> {
    fn drop(&mut self) {
        self.0
            .userns_reserved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(self.1);
    }
}

/// A pod's sandbox as recorded on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxRecord {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub hostname: String,
    pub host_network: bool,
    pub host_ipc: bool,
    pub host_pid: bool,
    pub qos: String,
    /// The pod cgroup, relative to kernlet's cgroup root.
    pub cgroup: String,
    /// Directory of the pinned namespaces.
    pub ns_dir: PathBuf,
    /// The pod's IP (the node's for host-network pods; empty without a pod network).
    pub ip: String,
    /// The pause process holding the pod's PID namespace (`shareProcessNamespace`).
    #[serde(default)]
    pub pause_pid: Option<u32>,
    pub created_at: String,
    /// The pod's CPU request in millicores, summed into its QoS parent's weight.
    #[serde(default)]
    pub cpu_request_milli: u64,
    /// The pod's memory request in bytes, summed into the QoS parents' memory
    /// protection (Memory QoS with `TieredReservation`).
    #[serde(default)]
    pub memory_request: u64,
    /// `hostUsers: false`: the node IDs the pod's user namespace maps (pinned as
    /// `user` in `ns_dir`).
    #[serde(default)]
    pub userns: Option<crate::sys::userns::IdRange>,
}

/// The recorded sandbox of pod `uid` under the state directory `state_dir`, for the
/// readers that have no [`Runtime`] (the CLI, the stats and metrics endpoints).
pub fn record_in(state_dir: &std::path::Path, uid: &str) -> Option<SandboxRecord> {
    read_json(&state_dir.join("pods").join(uid).join("sandbox.json"))
        .ok()
        .flatten()
}

/// The pod cgroup path (relative to kernlet's root) for a QoS class, as kubelet lays
/// out its cgroupfs driver: `kubepods/pod<uid>` for Guaranteed, else
/// `kubepods/<burstable|besteffort>/pod<uid>`.
pub fn pod_cgroup(qos: QosClass, uid: &str) -> String {
    match qos {
        QosClass::Guaranteed => format!("kubepods/pod{uid}"),
        QosClass::Burstable => format!("kubepods/burstable/pod{uid}"),
        QosClass::BestEffort => format!("kubepods/besteffort/pod{uid}"),
    }
}

/// Pod-level limits as kubelet sets them on the pod cgroup: memory and CPU limits only
/// when every container has one (the larger of the main containers' sum and the
/// largest init container's), CPU requests summed for the weight; the pod's own
/// `spec.resources` in their place where it sets them. Returns
/// `(memory bytes, cpu limit millicores, cpu request millicores)`.
pub fn pod_resources(
    spec: &k8s_openapi::api::core::v1::PodSpec,
) -> Result<(Option<u64>, Option<u64>, u64), crate::model::quantity::QuantityError> {
    use crate::model::quantity::amount;
    let get = |c: &k8s_openapi::api::core::v1::Container,
               side: &str,
               key: &str|
     -> Result<Option<i128>, _> {
        let Some(r) = c.resources.as_ref() else {
            return Ok(None);
        };
        let m = if side == "limits" {
            &r.limits
        } else {
            &r.requests
        };
        Ok(amount(m, key)?.map(i128::from))
    };
    let total = |key: &str| -> Result<Option<u64>, crate::model::quantity::QuantityError> {
        let mut sum = 0i128;
        for c in &spec.containers {
            match get(c, "limits", key)? {
                Some(v) => sum += v,
                None => return Ok(None),
            }
        }
        let mut init_max = 0i128;
        for c in spec.init_containers.iter().flatten() {
            match get(c, "limits", key)? {
                Some(v) => init_max = init_max.max(v),
                None => return Ok(None),
            }
        }
        Ok(u64::try_from(sum.max(init_max)).ok())
    };
    let mut requests = 0i128;
    for c in &spec.containers {
        requests += get(c, "requests", "cpu")?
            .or(get(c, "limits", "cpu")?)
            .unwrap_or(0);
    }
    // Pod-level resources, where the pod sets them, take the place of the sums.
    let pod_level = crate::model::qos::pod_level(spec);
    let pod_value = |side: &str, key: &str| match pod_level {
        Some(r) if side == "limits" => amount(&r.limits, key),
        Some(r) => amount(&r.requests, key),
        None => Ok(None),
    };
    let cpu_request = match pod_value("requests", "cpu")? {
        Some(v) => Some(v),
        None => pod_value("limits", "cpu")?,
    };
    Ok((
        pod_value("limits", "memory")?.or(total("memory")?),
        pod_value("limits", "cpu")?.or(total("cpu")?),
        cpu_request.unwrap_or_else(|| u64::try_from(requests).unwrap_or(0)),
    ))
}

/// cgroup v2 `cpu.weight` for cgroup v1 `cpu.shares`, with the conversion runc 1.3
/// (and libcontainer) use for containers, so pod and container weights agree.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares <= 2 {
        return 1;
    }
    if shares >= 262_144 {
        return 10_000;
    }
    let l = (shares as f64).log2();
    let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
    (10f64.powf(exponent).ceil() as u64).clamp(1, 10_000)
}

/// The hostname of a pod: `spec.hostname`, else its name (at most 63 characters).
pub fn hostname(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    let name = spec
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_string()
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

impl Runtime {
    fn sandbox_record_path(&self, uid: &str) -> PathBuf {
        self.pod_state_dir(uid).join("sandbox.json")
    }

    /// The recorded sandbox of a pod.
    pub fn sandbox(&self, uid: &str) -> Result<Option<SandboxRecord>, RuntimeError> {
        read_json(&self.sandbox_record_path(uid))
    }

    /// The uids of the pods with a recorded sandbox, from the directory alone (a stat
    /// per pod, no record read).
    pub fn sandbox_uids(&self) -> HashSet<String> {
        self.pod_records().0
    }

    /// The recorded pods, in one listing of the directory (a stat per pod): the uids
    /// with a sandbox, and those without (pods refused at admission keep only their
    /// status record).
    pub fn pod_records(&self) -> (HashSet<String>, Vec<String>) {
        let (with, without): (Vec<String>, Vec<String>) =
            std::fs::read_dir(self.cfg.state_dir.join("pods"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .partition(|uid| self.has_sandbox(uid));
        (with.into_iter().collect(), without)
    }

    /// Whether pod `uid` has a recorded sandbox (a stat, no record read).
    pub fn has_sandbox(&self, uid: &str) -> bool {
        self.sandbox_record_path(uid).is_file()
    }

    /// Every recorded sandbox.
    pub fn sandboxes(&self) -> Vec<SandboxRecord> {
        let mut v: Vec<SandboxRecord> = std::fs::read_dir(self.cfg.state_dir.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                self.sandbox(&e.file_name().to_string_lossy())
                    .ok()
                    .flatten()
            })
            .collect();
        v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        v
    }

    /// Creates the sandbox of `pod` (with `uid`), or returns the one that exists.
    /// `node_ip` is a host-network pod's IP.
    pub fn run_sandbox(
        &self,
        pod: &Pod,
        uid: &str,
        node_ip: &str,
    ) -> Result<SandboxRecord, RuntimeError> {
        if let Some(existing) = self.sandbox(uid)? {
            // A pod that owns a namespace must still have it pinned.
            let owned = match (existing.host_network, existing.host_ipc) {
                (false, _) => Some("net"),
                (true, false) => Some("ipc"),
                (true, true) => None,
            };
            if owned.is_none_or(|k| ns::is_pinned(&ns::pin_path(&existing.ns_dir, k))) {
                return Ok(existing);
            }
            // The node rebooted (run dir gone): build it again.
            tracing::info!(pod = %existing.name, "sandbox namespaces are gone; creating them again");
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let qos = qos_class(&spec)
            .map_err(|e| RuntimeError::Refused(format!("pod {namespace}/{name}: {e}")))?;
        let host_network = spec.host_network.unwrap_or(false);
        let host_ipc = spec.host_ipc.unwrap_or(false);
        let hostname = if host_network {
            crate::sys::machine::read(&self.cfg.state_dir).hostname
        } else {
            hostname(pod)
        };
        let run = self.pod_run_dir(uid);
        let ns_dir = run.join("ns");
        std::fs::create_dir_all(&ns_dir)
            .map_err(RuntimeError::io(format!("creating {}", ns_dir.display())))?;
        let cgroup = pod_cgroup(qos, uid);
        let cg = Cgroup::create(&self.cgroup_root, std::path::Path::new(&cgroup))?;
        // Delegate the controllers down to the pod (kubepods, the QoS level, the pod),
        // so its limits and its containers' can be written.
        if !self.controllers.is_empty() {
            let enable: Vec<String> = self.controllers.iter().map(|c| format!("+{c}")).collect();
            let mut dir = self.cgroup_root.clone();
            for part in std::path::Path::new(&cgroup).components() {
                Cgroup::open(dir.clone()).write("cgroup.subtree_control", &enable.join(" "))?;
                dir.push(part);
            }
            cg.write("cgroup.subtree_control", &enable.join(" "))?;
        }
        let (memory, cpu_limit, cpu_request) = pod_resources(&spec)
            .map_err(|e| RuntimeError::Refused(format!("pod {namespace}/{name}: {e}")))?;
        if self.has_controller("memory")
            && let Some(m) = memory
        {
            cg.write("memory.max", &m.to_string())?;
        }
        let memory_request = crate::model::admission::request(&spec, "memory");
        if self.has_controller("memory")
            && let Some((file, value)) = crate::model::memory_qos::pod_protection(
                &self.cfg.memory_policy,
                qos,
                memory_request,
            )
        {
            cg.write(file, &value.to_string())?;
        }
        if self.has_controller("cpu") {
            if let Some(l) = cpu_limit {
                cg.write("cpu.max", &format!("{} 100000", (l * 100).max(1000)))?;
            }
            let shares = crate::runtime::container::cpu_shares(cpu_request);
            cg.write("cpu.weight", &shares_to_weight(shares).to_string())?;
        }
        if let Some(max) = self.cfg.pod_pids_limit {
            if self.has_controller("pids") {
                cg.write("pids.max", &max.to_string())?;
            } else {
                tracing::warn!(pod = %name, "pids limit {max} NOT enforced: no pids controller in the cgroup v2 tree");
            }
        }
        let share_pid =
            spec.share_process_namespace.unwrap_or(false) && !spec.host_pid.unwrap_or(false);
        // The pause process gets a cgroup of its own below the pod's, like a container
        // (a cgroup that delegates controllers may hold no process itself).
        let pause_cgroup = cg.path().join("pause");
        if share_pid {
            std::fs::create_dir_all(&pause_cgroup).map_err(RuntimeError::io(format!(
                "creating {}",
                pause_cgroup.display()
            )))?;
        }
        let userns = match spec.host_users {
            Some(false) => Some(self.reserve_userns(uid, &format!("{namespace}/{name}"))?),
            _ => None,
        };
        let release = ReleaseUserns(self, uid);
        let out = std::process::Command::new(&self.cfg.exe)
            .arg("internal")
            .arg("sandbox")
            .arg(&ns_dir)
            .arg(&hostname)
            .arg(if host_network { "1" } else { "0" })
            .arg(if host_ipc { "1" } else { "0" })
            .arg(if share_pid {
                pause_cgroup.as_os_str()
            } else {
                std::ffi::OsStr::new("")
            })
            .arg(
                userns
                    .map(|r| format!("{}:{}", r.host_id, r.length))
                    .unwrap_or_default(),
            )
            .output()
            .map_err(RuntimeError::io(format!(
                "running {} internal sandbox",
                self.cfg.exe.display()
            )))?;
        if !out.status.success() {
            return Err(RuntimeError::Refused(format!(
                "pod {namespace}/{name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let pause_pid = if share_pid {
            let text = String::from_utf8_lossy(&out.stdout);
            Some(text.trim().parse::<u32>().map_err(|_| {
                RuntimeError::Refused(format!(
                    "pod {namespace}/{name}: the pause process did not report its pid"
                ))
            })?)
        } else {
            None
        };
        if !host_ipc {
            // containerd's default size for a sandbox's /dev/shm: 64 MiB.
            crate::sys::mount::shm(&run.join("shm"), 64 << 20).map_err(RuntimeError::io(
                format!("mounting /dev/shm of pod {namespace}/{name}"),
            ))?;
        }
        let ip = if host_network {
            node_ip.to_string()
        } else {
            match self.network_state() {
                super::network::NetworkState::Off => String::new(),
                super::network::NetworkState::Waiting(why) => {
                    let _ = ns::remove(&ns_dir);
                    return Err(RuntimeError::Refused(format!(
                        "network is not ready: {why}"
                    )));
                }
                super::network::NetworkState::Ready(net) => {
                    let ipam = self.ipam_for(&net)?;
                    let pod = format!("{namespace}/{name}");
                    match super::network::attach(&net, &ipam, uid, &pod, &ns_dir.join("net")) {
                        Ok(ip) => ip.to_string(),
                        Err(e) => {
                            let _ = super::network::detach(Some(&ipam), uid);
                            let _ = ns::remove(&ns_dir);
                            return Err(e);
                        }
                    }
                }
            }
        };
        let host_resolv = crate::model::dns::Resolv::parse(
            &std::fs::read_to_string(&self.cfg.resolv_conf).unwrap_or_default(),
        );
        let resolv = crate::model::dns::resolv_conf(&spec, &namespace, &self.cfg.dns, &host_resolv)
            .map_err(|e| RuntimeError::Refused(format!("pod {namespace}/{name}: {e}")))?;
        // A host-network pod sees the node's hosts file, with its aliases added.
        let hosts = if host_network {
            let node = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
            crate::model::dns::host_network_hosts_file(&spec, &node)
        } else {
            crate::model::dns::hosts_file(&spec, &namespace, &self.cfg.dns.domain, &ip, &hostname)
        };
        for (file, content) in [
            ("hosts", hosts.into_bytes()),
            ("resolv.conf", resolv.into_bytes()),
            ("hostname", format!("{hostname}\n").into_bytes()),
        ] {
            crate::state::write_atomic(&run.join(file), &content, 0o644)?;
        }
        let record = SandboxRecord {
            uid: uid.to_string(),
            namespace,
            name,
            hostname,
            host_network,
            host_ipc,
            host_pid: spec.host_pid.unwrap_or(false),
            qos: qos.as_str().to_string(),
            cgroup,
            ns_dir,
            ip,
            pause_pid,
            created_at: now(),
            cpu_request_milli: cpu_request,
            memory_request,
            userns,
        };
        write_json(&self.sandbox_record_path(uid), &record)?;
        // Recorded: the record holds the range from now on.
        drop(release);
        self.update_qos_parents();
        tracing::info!(pod = %format!("{}/{}", record.namespace, record.name), uid, "sandbox created");
        Ok(record)
    }

    /// A node ID range for the user namespace of pod `uid`: the one its record
    /// holds (a sandbox made again), else the lowest one no recorded or reserved
    /// sandbox has, reserved until the sandbox is recorded.
    fn reserve_userns(&self, uid: &str, pod: &str) -> Result<IdRange, RuntimeError> {
        let Some(pool) = self.cfg.userns_pool else {
            return Err(RuntimeError::Refused(format!(
                "pod {pod}: can't set `spec.hostUsers: false`, runtime does not support user namespaces on this node"
            )));
        };
        let mut reserved = self
            .userns_reserved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let records = self.sandboxes();
        if let Some(range) = records
            .iter()
            .find(|s| s.uid == uid)
            .and_then(|s| s.userns)
            .filter(|r| pool.holds(*r))
        {
            reserved.insert(uid.to_string(), range.host_id);
            return Ok(range);
        }
        let used: std::collections::BTreeSet<u32> = records
            .iter()
            .filter_map(|s| s.userns.map(|r| r.host_id))
            .chain(reserved.values().copied())
            .collect();
        let range = pool
            .allocate(&used)
            .map_err(|e| RuntimeError::Refused(format!("pod {pod}: {e}")))?;
        reserved.insert(uid.to_string(), range.host_id);
        Ok(range)
    }

    /// Removes a pod's sandbox: kills what is left in its cgroup, removes the cgroup,
    /// the namespace pins and the pod's directories (its emptyDir volumes with them).
    pub fn remove_sandbox(&self, uid: &str) -> Result<(), RuntimeError> {
        // A driver's volumes leave the node first; while one cannot, the pod stays.
        self.tear_down_driver_volumes(uid)?;
        if let Some(sb) = self.sandbox(uid)?
            && !sb.host_network
            && !sb.ip.is_empty()
        {
            let ipam = match self.network_state() {
                super::network::NetworkState::Ready(net) => Some(self.ipam_for(&net)?),
                _ => None,
            };
            super::network::detach(ipam.as_ref(), uid)?;
        }
        if let Some(sb) = self.sandbox(uid)? {
            let cg = Cgroup::open(self.cgroup_path(&sb.cgroup));
            if cg.path().exists() {
                let _ = cg.kill();
                for _ in 0..100 {
                    if !cg.populated() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                cg.remove()?;
            }
        }
        let run = self.pod_run_dir(uid);
        crate::sys::mount::unmount(&run.join("shm")).map_err(RuntimeError::io(format!(
            "unmounting /dev/shm of pod {uid}"
        )))?;
        crate::sys::mount::unmount_under(&run.join("subpaths")).map_err(RuntimeError::io(
            format!("unmounting the subPath mounts of pod {uid}"),
        ))?;
        crate::sys::mount::unmount_private_under(&run.join("propagated")).map_err(
            RuntimeError::io(format!("unmounting the Bidirectional mounts of pod {uid}")),
        )?;
        crate::sys::mount::unmount(&self.written_volumes_dir(uid)).map_err(RuntimeError::io(
            format!("unmounting the volume tmpfs of pod {uid}"),
        ))?;
        self.unmount_memory_volumes(uid)?;
        ns::remove(&run.join("ns")).map_err(RuntimeError::io(format!(
            "unpinning the namespaces of pod {uid}"
        )))?;
        for d in [run, self.pod_state_dir(uid)] {
            match std::fs::remove_dir_all(&d) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(RuntimeError::io(format!("removing {}", d.display()))(e));
                }
                _ => {}
            }
        }
        self.update_qos_parents();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_layout_follows_qos() {
        assert_eq!(pod_cgroup(QosClass::Guaranteed, "u"), "kubepods/podu");
        assert_eq!(
            pod_cgroup(QosClass::BestEffort, "u"),
            "kubepods/besteffort/podu"
        );
    }

    #[test]
    fn pod_limits_need_every_container_to_have_one() {
        let spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "200m", "memory": "48Mi"}}},
                {"name": "b", "resources": {"limits": {"cpu": "300m"}}},
            ],
        }))
        .unwrap();
        assert_eq!(pod_resources(&spec).unwrap(), (None, Some(500), 400));
        // Pod-level resources: the pod's own values where it has them.
        let mut with_pod = spec.clone();
        with_pod.resources = Some(
            serde_json::from_value(serde_json::json!({"limits": {"memory": "1Gi", "cpu": "2"}}))
                .unwrap(),
        );
        assert_eq!(
            pod_resources(&with_pod).unwrap(),
            (Some(1 << 30), Some(2000), 2000)
        );
        with_pod.resources =
            Some(serde_json::from_value(serde_json::json!({"requests": {"cpu": "250m"}})).unwrap());
        assert_eq!(pod_resources(&with_pod).unwrap(), (None, Some(500), 250));
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(102), 17);
        assert_eq!(
            shares_to_weight(1024),
            100,
            "one CPU of requests is the default weight"
        );
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn hostnames_and_hosts_files() {
        let pod: Pod = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "web"}, "spec": {"containers": []}}),
        )
        .unwrap();
        assert_eq!(hostname(&pod), "web");
        let spec = pod.spec.clone().unwrap();
        let h = crate::model::dns::hosts_file(&spec, "t", "cluster.local", "10.244.1.5", "web");
        assert!(h.contains("127.0.0.1\tlocalhost") && h.ends_with("10.244.1.5\tweb\n"));
        assert!(
            !crate::model::dns::hosts_file(&spec, "t", "cluster.local", "", "web").contains("web")
        );
    }
}

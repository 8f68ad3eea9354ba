//! `kernlet doctor`: what this node needs from its kernel, its mounts, its clock, its
//! disks and its cluster, each checked with a verdict and, when it is not fine, the fix.
//!
//! The facts are gathered first ([`gather`], [`cluster_facts`]) and judged by a pure
//! function ([`judge`]), so every verdict is tested on made-up facts.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::NodeDirs;

mod security;

/// How a check came out; the worst one decides `kernlet doctor`'s exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
        })
    }
}

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

fn check(name: &str, verdict: Verdict, detail: String, fix: &str) -> Check {
    Check {
        name: name.into(),
        verdict,
        detail,
        fix: if verdict == Verdict::Ok {
            String::new()
        } else {
            fix.into()
        },
    }
}

/// Kernel options kernlet needs, and what for.
pub const KERNEL_OPTIONS: &[(&str, &str)] = &[
    ("CONFIG_NAMESPACES", "pod sandboxes"),
    ("CONFIG_NET_NS", "pod network namespaces"),
    ("CONFIG_PID_NS", "container PID namespaces"),
    ("CONFIG_IPC_NS", "pod IPC namespaces"),
    ("CONFIG_UTS_NS", "pod hostnames"),
    ("CONFIG_CGROUPS", "pod cgroups"),
    ("CONFIG_MEMCG", "memory limits"),
    ("CONFIG_CGROUP_PIDS", "pids limits"),
    ("CONFIG_CFS_BANDWIDTH", "cpu limits (cpu.max)"),
    ("CONFIG_OVERLAY_FS", "container root filesystems"),
    ("CONFIG_SECCOMP_FILTER", "seccomp profiles"),
    ("CONFIG_BPF_SYSCALL", "eBPF Service load-balancing"),
    ("CONFIG_DEBUG_INFO_BTF", "BTF for the eBPF programs"),
    ("CONFIG_CGROUP_BPF", "socket-level load-balancing"),
    ("CONFIG_NET_XGRESS", "tcx attachment of the TC programs"),
    ("CONFIG_VXLAN", "the flannel-compatible overlay"),
    ("CONFIG_VETH", "pod network interfaces"),
    ("CONFIG_BRIDGE", "the pod bridge"),
];

/// The cgroup v2 controllers pod limits need.
pub const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// kubelet's hard eviction thresholds: nodefs.available < 10 %, imagefs.available < 15 %.
const NODEFS_MIN_PERCENT: u64 = 10;
const IMAGEFS_MIN_PERCENT: u64 = 15;

/// Free space of one of the node's directories.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// The flag that names it (`image-dir`, `log-dir`, `state-dir`).
    pub flag: &'static str,
    pub path: PathBuf,
    pub available: u64,
    pub total: u64,
}

/// The serving certificate's state on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Serving {
    /// Issued; valid until this Unix time.
    Issued { not_after: i64 },
    /// A CSR waits for approval (or was refused).
    Requested { csr: String, state: String },
    /// Nothing requested yet.
    None,
}

/// Everything the checks judge.
#[derive(Clone, Debug)]
pub struct Facts {
    pub kernel_release: String,
    /// The kernel config text and where it came from.
    pub kernel_config: Option<(String, String)>,
    pub mountinfo: String,
    /// The cgroup2 mount, its root's controllers, and the controllers the parent of
    /// kernlet's cgroup root offers it.
    pub cgroup2: Option<(PathBuf, Vec<String>, Vec<String>)>,
    pub cgroup_root: PathBuf,
    pub bpffs_dir: PathBuf,
    /// Whether the pin directory (or its nearest existing parent) is on a bpffs.
    pub bpffs: bool,
    /// Whether kernlet can make the pin directory and mount a bpffs of its own there
    /// (its nearest existing parent is an ordinary directory, not in sysfs or procfs).
    pub bpffs_mountable: bool,
    pub ip_forward: Option<String>,
    /// `net.ipv6.conf.all.forwarding`, and whether the machine has a global IPv6
    /// address (only then do IPv6 Services from outside need it).
    pub ipv6_forward: (Option<String>, bool),
    pub clock_synchronized: Option<bool>,
    pub disks: Vec<Disk>,
    pub uid: u32,
    /// The effective capability mask of this process.
    pub cap_eff: u64,
    pub serving: Serving,
    /// Whether this node has apiserver credentials (it joined a cluster).
    pub joined: bool,
    /// AppArmor, SELinux, user namespaces.
    pub security: security::SecurityFacts,
}

/// What the apiserver said, when asked.
#[derive(Clone, Debug)]
pub enum ClusterFacts {
    /// Not asked: no kubeconfig.
    Standalone,
    Unreachable(String),
    /// The permissions (see `controllers::permissions`) this identity lacks.
    Missing(Vec<String>),
}

pub use crate::sys::machine::kernel_version;

/// The options of [`KERNEL_OPTIONS`] a kernel config does not set (`=y` or `=m`).
pub fn missing_options(config: &str) -> Vec<(&'static str, &'static str)> {
    KERNEL_OPTIONS
        .iter()
        .filter(|(name, _)| {
            !config.lines().any(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('='))
                    .is_some_and(|v| v == "y" || v == "m")
            })
        })
        .copied()
        .collect()
}

/// Where cgroup v1 hierarchies hold `controller` (mountinfo lines of type `cgroup`
/// whose super options name it).
pub fn v1_mounts(mountinfo: &str, controller: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut r = right.split_whitespace();
            if r.next()? != "cgroup" {
                return None;
            }
            let opts = r.nth(1)?;
            opts.split(',')
                .any(|o| o == controller)
                .then(|| left.split_whitespace().nth(4).map(str::to_string))?
        })
        .collect()
}

/// Judges the facts.
pub fn judge(f: &Facts, cluster: &ClusterFacts) -> Vec<Check> {
    let mut out = Vec::new();
    use Verdict::{Fail, Ok, Warn};

    // Privileges.
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_SYS_RESOURCE: u32 = 24;
    let has = |cap: u32| f.cap_eff & (1u64 << cap) != 0;
    out.push(if f.uid != 0 || !has(CAP_SYS_ADMIN) || !has(CAP_NET_ADMIN) {
        check(
            "privileges",
            Fail,
            format!("uid {} without CAP_SYS_ADMIN and CAP_NET_ADMIN", f.uid),
            "run kernlet as root (it creates namespaces, mounts, cgroups, links and eBPF programs)",
        )
    } else if !has(CAP_SYS_RESOURCE) {
        check(
            "privileges",
            Warn,
            "root without CAP_SYS_RESOURCE: oom_score_adj cannot be lowered and hard rlimits cannot be raised for pods".into(),
            "run kernlet with the full capability set (e.g. not inside a container that drops CAP_SYS_RESOURCE); pods run meanwhile",
        )
    } else {
        check("privileges", Ok, "root with every capability kernlet uses".into(), "")
    });

    // Kernel version and config.
    out.push(match kernel_version(&f.kernel_release) {
        Some(v) if v >= (6, 6) => check(
            "kernel version",
            Ok,
            format!(
                "{} (tcx and every eBPF hook kernlet uses are there from 6.6)",
                f.kernel_release
            ),
            "",
        ),
        Some(v) if v >= (5, 10) => check(
            "kernel version",
            Warn,
            format!(
                "{}: older than 6.6, no tcx for the TC programs",
                f.kernel_release
            ),
            "use a 6.6 or newer kernel for Service load-balancing of traffic from outside the node",
        ),
        _ => check(
            "kernel version",
            Fail,
            format!("{}: older than 5.10 or unreadable", f.kernel_release),
            "use a 6.6 or newer kernel",
        ),
    });
    out.push(match &f.kernel_config {
        None => check(
            "kernel config",
            Warn,
            "cannot read the kernel config (/proc/config.gz, /boot/config-<release>)".into(),
            "load the configs module (modprobe configs) or install the kernel's config file so the options can be checked",
        ),
        Some((text, source)) => {
            let missing = missing_options(text);
            if missing.is_empty() {
                check(
                    "kernel config",
                    Ok,
                    format!("all {} options kernlet needs are set ({source})", KERNEL_OPTIONS.len()),
                    "",
                )
            } else {
                let list: Vec<String> = missing.iter().map(|(n, why)| format!("{n} ({why})")).collect();
                check(
                    "kernel config",
                    Fail,
                    format!("not set in {source}: {}", list.join(", ")),
                    "use a kernel built with these options (=y or =m)",
                )
            }
        }
    });

    // cgroup v2 and its controllers.
    out.push(match &f.cgroup2 {
        None => check(
            "cgroup v2",
            Fail,
            "no cgroup2 filesystem is mounted".into(),
            "mount it (mount -t cgroup2 none /sys/fs/cgroup) or boot with systemd.unified_cgroup_hierarchy=1",
        ),
        Some((mount, root, offered)) => {
            let missing: Vec<&str> = CONTROLLERS
                .iter()
                .copied()
                .filter(|c| !root.iter().any(|r| r == c))
                .collect();
            let undelegated: Vec<&str> = CONTROLLERS
                .iter()
                .copied()
                .filter(|c| root.iter().any(|r| r == c) && !offered.iter().any(|o| o == c))
                .collect();
            if !missing.is_empty() {
                let bound: Vec<String> = missing
                    .iter()
                    .map(|c| match v1_mounts(&f.mountinfo, c).first() {
                        Some(at) => format!("{c} is bound to cgroup v1 at {at}"),
                        None => format!("{c} is not available"),
                    })
                    .collect();
                check(
                    "cgroup v2",
                    Fail,
                    format!(
                        "cgroup2 at {} has no {} controller(s): {}; the {} limits of pods are NOT enforced",
                        mount.display(),
                        missing.join(", "),
                        bound.join("; "),
                        missing.join("/")
                    ),
                    "boot with cgroup v2 only (kernel command line systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all) \
                     so the controllers move to the cgroup2 tree; until then pods run without these limits",
                )
            } else if !undelegated.is_empty() {
                let parent = f.cgroup_root.parent().unwrap_or(Path::new(""));
                check(
                    "cgroup v2",
                    Fail,
                    format!(
                        "cgroup2 at {} has {} but the parent of --cgroup-root ({}) does not offer them",
                        mount.display(),
                        undelegated.join(", "),
                        mount.join(parent).display()
                    ),
                    "enable them in the parent's cgroup.subtree_control (for a systemd unit: Delegate=yes)",
                )
            } else {
                check(
                    "cgroup v2",
                    Ok,
                    format!("cgroup2 at {} with {}", mount.display(), CONTROLLERS.join(", ")),
                    "",
                )
            }
        }
    });

    // bpffs.
    out.push(if f.bpffs {
        check(
            "bpffs",
            Ok,
            format!("{} is on a bpf filesystem", f.bpffs_dir.display()),
            "",
        )
    } else if f.bpffs_mountable {
        check(
            "bpffs",
            Warn,
            if f.bpffs_dir.starts_with(crate::sys::bpf::STANDARD_BPFFS) {
                format!(
                    "{} is not on a bpf filesystem: with --service-proxy kernlet mounts one at {} (as systemd would) and pins the load-balancer's maps under it",
                    f.bpffs_dir.display(),
                    crate::sys::bpf::STANDARD_BPFFS
                )
            } else {
                format!(
                    "{} is not on a bpf filesystem: with --service-proxy kernlet mounts a bpffs of its own at {}/lb to pin the load-balancer's maps",
                    f.bpffs_dir.display(),
                    f.bpffs_dir.display()
                )
            },
            "to use the system's: mount -t bpf bpf /sys/fs/bpf (and add it to /etc/fstab)",
        )
    } else {
        check(
            "bpffs",
            Fail,
            format!("{} is not on a bpf filesystem and cannot be made one: maps cannot be pinned, so Service load-balancing cannot survive a restart", f.bpffs_dir.display()),
            "mount -t bpf bpf /sys/fs/bpf (and add it to /etc/fstab), or pass --bpffs-dir on a bpffs",
        )
    });

    // sysctls.
    out.push(match f.ip_forward.as_deref() {
        Some("1") => check("sysctl net.ipv4.ip_forward", Ok, "1".into(), ""),
        other => check(
            "sysctl net.ipv4.ip_forward",
            Warn,
            format!(
                "{}: this node does not forward packets between its pods and other nodes",
                other.unwrap_or("unreadable")
            ),
            "sysctl -w net.ipv4.ip_forward=1 and persist it in /etc/sysctl.d/",
        ),
    });

    out.push(match f.ipv6_forward {
        (Some(ref v), _) if v == "1" => check("sysctl net.ipv6.conf.all.forwarding", Ok, "1".into(), ""),
        (_, false) => check(
            "sysctl net.ipv6.conf.all.forwarding",
            Ok,
            "off; not needed: this machine has no global IPv6 address".into(),
            "",
        ),
        (ref v, true) => check(
            "sysctl net.ipv6.conf.all.forwarding",
            Warn,
            format!(
                "{}: IPv6 NodePorts, external and load-balancer IPs reach only this node's endpoints",
                v.as_deref().unwrap_or("unreadable")
            ),
            "sysctl -w net.ipv6.conf.all.forwarding=1 and persist it in /etc/sysctl.d/ (kubeadm asks for it on IPv6 clusters; with it on, interfaces stop taking router advertisements unless accept_ra is 2)",
        ),
    });

    // Clock.
    out.push(match f.clock_synchronized {
        Some(true) => check(
            "clock",
            Ok,
            "synchronized (the kernel says an NTP daemon disciplines it)".into(),
            "",
        ),
        Some(false) => check(
            "clock",
            Warn,
            "not synchronized: certificates, leases and token expiry depend on the time".into(),
            "run an NTP client (systemd-timesyncd, chrony) against the cluster's time source",
        ),
        None => check(
            "clock",
            Warn,
            "the kernel did not say whether the clock is synchronized".into(),
            "check the NTP client (timedatectl)",
        ),
    });

    // Disks.
    for d in &f.disks {
        let percent = (d.available * 100).checked_div(d.total).unwrap_or(0);
        let min = if d.flag == "image-dir" {
            IMAGEFS_MIN_PERCENT
        } else {
            NODEFS_MIN_PERCENT
        };
        let detail = format!(
            "{}: {} MiB free of {} MiB ({percent} %)",
            d.path.display(),
            d.available >> 20,
            d.total >> 20
        );
        let fix = format!(
            "free space on {} or move --{} to a larger filesystem",
            d.path.display(),
            d.flag
        );
        let verdict = if percent < min {
            Fail
        } else if percent < min + 5 {
            Warn
        } else {
            Ok
        };
        let detail = match verdict {
            Fail => format!("{detail}: below kubelet's eviction threshold of {min} %"),
            Warn => format!("{detail}: near kubelet's eviction threshold of {min} %"),
            Ok => detail,
        };
        out.push(check(&format!("disk --{}", d.flag), verdict, detail, &fix));
    }

    // The serving certificate.
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    out.push(match &f.serving {
        Serving::Issued { not_after } if *not_after > now => check(
            "serving certificate",
            Ok,
            format!(
                "issued, valid for {} more day(s)",
                (not_after - now) / 86400
            ),
            "",
        ),
        Serving::Issued { .. } => check(
            "serving certificate",
            Fail,
            "expired".into(),
            "restart kernlet to request a new one, then approve it",
        ),
        Serving::Requested { csr, state } if state == "Pending" => check(
            "serving certificate",
            Warn,
            format!(
                "certificate request {csr} is pending approval (serving CSRs are not auto-approved)"
            ),
            &format!("kubectl certificate approve {csr}"),
        ),
        Serving::Requested { csr, state } => check(
            "serving certificate",
            Fail,
            format!("certificate request {csr} was {}", state.to_lowercase()),
            "restart kernlet to ask again, then approve it: kubectl certificate approve <name>",
        ),
        Serving::None if f.joined => check(
            "serving certificate",
            Warn,
            "not requested yet".into(),
            "start kernlet (kernlet run --kubeconfig ...): it requests one at start",
        ),
        Serving::None => check(
            "serving certificate",
            Ok,
            "none needed: this node has no apiserver (standalone)".into(),
            "",
        ),
    });

    out.extend(security::judge(f));

    // RBAC.
    out.push(match cluster {
        ClusterFacts::Standalone => check(
            "cluster permissions",
            Ok,
            "not checked: no kubeconfig (standalone)".into(),
            "",
        ),
        ClusterFacts::Unreachable(why) => check(
            "cluster permissions",
            Warn,
            format!("cannot ask the apiserver: {why}"),
            "check the kubeconfig's server address and the network path to the apiserver",
        ),
        ClusterFacts::Missing(m) if m.is_empty() => check(
            "cluster permissions",
            Ok,
            "the node may list and watch nodes, services and endpointslices".into(),
            "",
        ),
        ClusterFacts::Missing(m) => check(
            "cluster permissions",
            Warn,
            format!("this node's identity may not {}: the overlay and Service load-balancing need it", m.join(", ")),
            "kubectl apply -f deploy/rbac.yaml (ClusterRole and ClusterRoleBinding kernlet:node for group system:nodes)",
        ),
    });
    out
}

/// The kernel config and where it was read.
fn kernel_config(release: &str) -> Option<(String, String)> {
    use std::io::Read as _;
    if let Ok(f) = std::fs::File::open("/proc/config.gz") {
        let mut text = String::new();
        if flate2::read::GzDecoder::new(f)
            .read_to_string(&mut text)
            .is_ok()
        {
            return Some((text, "/proc/config.gz".into()));
        }
    }
    let boot = format!("/boot/config-{release}");
    std::fs::read_to_string(&boot).ok().map(|t| (t, boot))
}

/// `path`, or its nearest existing parent.
fn existing(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

fn disk(flag: &'static str, path: &Path) -> Option<Disk> {
    let at = existing(path);
    let s = nix::sys::statvfs::statvfs(&at).ok()?;
    let frag = s.fragment_size();
    Some(Disk {
        flag,
        path: path.to_path_buf(),
        available: s.blocks_available() * frag,
        total: s.blocks() * frag,
    })
}

/// Where `kernlet doctor` records a serving CSR it waits for.
pub fn serving_csr_record(state_dir: &Path) -> PathBuf {
    state_dir.join("pki/kubelet-serving-csr.json")
}

/// The serving certificate as the state directory records it.
pub fn serving_state(state_dir: &Path) -> Serving {
    let (crt, _) = crate::controllers::serving_cert::paths(state_dir);
    match std::fs::read(&crt)
        .ok()
        .and_then(|pem| crate::model::csr::validity(&pem))
    {
        Some((_, not_after)) => Serving::Issued { not_after },
        None => std::fs::read(serving_csr_record(state_dir))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| {
                Some(Serving::Requested {
                    csr: v.get("name")?.as_str()?.to_string(),
                    state: v.get("state")?.as_str()?.to_string(),
                })
            })
            .unwrap_or(Serving::None),
    }
}

/// Gathers the node's facts (no apiserver needed).
pub fn gather(dirs: &NodeDirs, joined: bool) -> Facts {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let cgroup2 = crate::sys::cgroup::parse_cgroup2_mount(&mountinfo).map(|mount| {
        let read = |p: PathBuf| -> Vec<String> {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        let root = read(mount.join("cgroup.controllers"));
        let parent = dirs.cgroup_root.parent().unwrap_or(Path::new(""));
        let offered = read(mount.join(parent).join("cgroup.controllers"));
        (mount, root, offered)
    });
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let bpffs = nix::sys::statfs::statfs(&existing(&dirs.bpffs_dir))
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::FsType(BPF_FS_MAGIC))
        || crate::sys::bpf::on_bpffs(&dirs.bpffs_dir.join("lb"));
    // Under /sys/fs/bpf kernlet mounts the bpffs there; elsewhere one of its own on the
    // pin directory, which sysfs and procfs cannot hold.
    let bpffs_mountable = (dirs.bpffs_dir.starts_with(crate::sys::bpf::STANDARD_BPFFS)
        && Path::new(crate::sys::bpf::STANDARD_BPFFS).is_dir())
        || nix::sys::statfs::statfs(&existing(&dirs.bpffs_dir)).is_ok_and(|s| {
            let t = s.filesystem_type();
            t != nix::sys::statfs::SYSFS_MAGIC && t != nix::sys::statfs::PROC_SUPER_MAGIC
        });
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap_or(0);
    let serving = serving_state(&dirs.state_dir);
    Facts {
        kernel_config: kernel_config(&release),
        kernel_release: release,
        mountinfo,
        cgroup2,
        cgroup_root: dirs.cgroup_root.clone(),
        bpffs_dir: dirs.bpffs_dir.clone(),
        bpffs,
        bpffs_mountable,
        ip_forward: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .ok()
            .map(|s| s.trim().to_string()),
        ipv6_forward: (
            std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding")
                .ok()
                .map(|s| s.trim().to_string()),
            std::fs::read_to_string("/proc/net/if_inet6").is_ok_and(|t| has_global_ipv6(&t)),
        ),
        clock_synchronized: crate::sys::clock::synchronized(),
        disks: [
            ("state-dir", &dirs.state_dir),
            ("image-dir", &dirs.image_dir),
            ("log-dir", &dirs.log_dir),
        ]
        .into_iter()
        .filter_map(|(flag, p)| disk(flag, p))
        .collect(),
        uid: nix::unistd::Uid::effective().as_raw(),
        cap_eff,
        serving,
        joined,
        security: security::gather(),
    }
}

/// Asks the apiserver what the node may do (bounded to 10 s).
pub async fn cluster_facts(kubeconfig: Option<&Path>) -> ClusterFacts {
    let Some(path) = kubeconfig else {
        return ClusterFacts::Standalone;
    };
    let ask = async {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let client = crate::client::from_kubeconfig_text(&text)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        crate::controllers::permissions::missing(client)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), ask).await {
        Ok(Ok(missing)) => ClusterFacts::Missing(missing),
        Ok(Err(e)) => ClusterFacts::Unreachable(e),
        Err(_) => ClusterFacts::Unreachable("no answer within 10 s".into()),
    }
}

/// The checks as a table, with each fix under its check.
pub fn table(checks: &[Check]) -> String {
    let width = checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!("{:<width$}  {:<7}  DETAIL\n", "CHECK", "VERDICT");
    for c in checks {
        out.push_str(&format!(
            "{:<width$}  {:<7}  {}\n",
            c.name,
            c.verdict.to_string(),
            c.detail
        ));
        if !c.fix.is_empty() {
            out.push_str(&format!("{:<width$}  {:<7}  fix: {}\n", "", "", c.fix));
        }
    }
    out
}

/// Whether `/proc/net/if_inet6` lists a global-scope address (scope 00) on an interface
/// other than loopback.
fn has_global_ipv6(if_inet6: &str) -> bool {
    if_inet6.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 6 && f[3] == "00" && f[5] != "lo"
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::doctor) fn facts() -> Facts {
        let config: String = KERNEL_OPTIONS
            .iter()
            .map(|(n, _)| format!("{n}=y\n"))
            .collect();
        Facts {
            kernel_release: "6.18.0-1-cloud-amd64".into(),
            kernel_config: Some((config, "/proc/config.gz".into())),
            mountinfo: String::new(),
            cgroup2: Some((
                "/sys/fs/cgroup".into(),
                vec!["cpu".into(), "memory".into(), "pids".into(), "io".into()],
                vec!["cpu".into(), "memory".into(), "pids".into()],
            )),
            cgroup_root: "kernlet".into(),
            bpffs_dir: "/sys/fs/bpf/kernlet".into(),
            bpffs: true,
            bpffs_mountable: true,
            ip_forward: Some("1".into()),
            ipv6_forward: (Some("0".into()), false),
            clock_synchronized: Some(true),
            disks: vec![Disk {
                flag: "image-dir",
                path: "/var/lib/kernlet/images".into(),
                available: 50 << 30,
                total: 100 << 30,
            }],
            uid: 0,
            cap_eff: u64::MAX >> 23,
            serving: Serving::None,
            joined: false,
            security: Default::default(),
        }
    }

    fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn global_ipv6_addresses_are_told_from_link_local_and_loopback() {
        let only_local = "00000000000000000000000000000001 01 80 10 80       lo\n\
                          fe800000000000004c9966fffef7e008 02 40 20 80     eth0\n";
        assert!(!has_global_ipv6(only_local));
        let global = format!("{only_local}fd000198001800000000000000000001 02 40 00 80     eth0\n");
        assert!(has_global_ipv6(&global));
    }

    #[test]
    fn a_good_node_passes_every_check() {
        let checks = judge(&facts(), &ClusterFacts::Missing(Vec::new()));
        let bad: Vec<_> = checks.iter().filter(|c| c.verdict != Verdict::Ok).collect();
        assert!(bad.is_empty(), "{bad:#?}");
        assert!(checks.iter().all(|c| c.fix.is_empty()));
    }

    #[test]
    fn a_hybrid_cgroup_host_is_told_which_controllers_are_where_and_what_to_do() {
        let mut f = facts();
        f.mountinfo = "30 25 0:26 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n\
                       31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
            .into();
        f.cgroup2 = Some(("/sys/fs/cgroup/unified".into(), vec!["pids".into()], vec![]));
        let c = find(&judge(&f, &ClusterFacts::Standalone), "cgroup v2").clone();
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(
            c.detail.contains("no cpu, memory controller(s)"),
            "{}",
            c.detail
        );
        assert!(
            c.detail
                .contains("memory is bound to cgroup v1 at /sys/fs/cgroup/memory"),
            "{}",
            c.detail
        );
        assert!(
            c.detail
                .contains("cpu is bound to cgroup v1 at /sys/fs/cgroup/cpu,cpuacct"),
            "{}",
            c.detail
        );
        assert!(
            c.fix.contains("systemd.unified_cgroup_hierarchy=1"),
            "{}",
            c.fix
        );
        // All there, but not offered to kernlet's parent cgroup.
        f.cgroup2 = Some((
            "/sys/fs/cgroup".into(),
            CONTROLLERS.iter().map(|c| c.to_string()).collect(),
            vec!["cpu".into()],
        ));
        f.cgroup_root = "system.slice/kernlet".into();
        let c = find(&judge(&f, &ClusterFacts::Standalone), "cgroup v2").clone();
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(
            c.detail.contains("memory, pids") && c.detail.contains("/sys/fs/cgroup/system.slice"),
            "{}",
            c.detail
        );
        assert!(c.fix.contains("Delegate=yes"));
    }

    #[test]
    fn kernel_options_versions_and_the_rest() {
        assert_eq!(kernel_version("6.18.0-1-cloud-amd64"), Some((6, 18)));
        assert_eq!(kernel_version("5.4"), Some((5, 4)));
        assert_eq!(kernel_version("x"), None);
        let mut f = facts();
        f.kernel_config = Some((
            "CONFIG_VXLAN=m\n# CONFIG_BPF_SYSCALL is not set\n".into(),
            "/boot/config-x".into(),
        ));
        f.kernel_release = "5.15.0".into();
        f.bpffs = false;
        f.bpffs_mountable = false;
        f.ip_forward = Some("0".into());
        f.ipv6_forward = (Some("0".into()), true);
        f.clock_synchronized = Some(false);
        f.disks[0].available = 10 << 30;
        f.serving = Serving::Requested {
            csr: "csr-abc".into(),
            state: "Pending".into(),
        };
        f.cap_eff &= !(1 << 24);
        let checks = judge(&f, &ClusterFacts::Missing(vec!["list nodes".into()]));
        let cfg = find(&checks, "kernel config");
        assert_eq!(cfg.verdict, Verdict::Fail);
        assert!(
            cfg.detail
                .contains("CONFIG_BPF_SYSCALL (eBPF Service load-balancing)")
        );
        assert!(!cfg.detail.contains("CONFIG_VXLAN"), "=m counts");
        assert_eq!(find(&checks, "kernel version").verdict, Verdict::Warn);
        assert_eq!(find(&checks, "bpffs").verdict, Verdict::Fail);
        assert!(find(&checks, "bpffs").fix.contains("mount -t bpf"));
        // Under /sys/fs/bpf: kernlet mounts the bpffs there, as systemd would.
        let mut standard = f.clone();
        standard.bpffs_mountable = true;
        let checks_standard = judge(&standard, &ClusterFacts::Standalone);
        let b = find(&checks_standard, "bpffs");
        assert_eq!(b.verdict, Verdict::Warn);
        assert!(
            b.detail.contains("mounts one at /sys/fs/bpf"),
            "{}",
            b.detail
        );
        // A plain directory: kernlet mounts a bpffs there itself.
        let mut plain = standard.clone();
        plain.bpffs_dir = "/var/lib/kernlet/bpf".into();
        let checks_plain = judge(&plain, &ClusterFacts::Standalone);
        let b = find(&checks_plain, "bpffs");
        assert_eq!(b.verdict, Verdict::Warn);
        assert!(
            b.detail.contains("mounts a bpffs of its own"),
            "{}",
            b.detail
        );
        assert_eq!(
            find(&checks, "sysctl net.ipv4.ip_forward").verdict,
            Verdict::Warn
        );
        let v6 = find(&checks, "sysctl net.ipv6.conf.all.forwarding");
        assert_eq!(v6.verdict, Verdict::Warn, "{v6:?}");
        assert!(v6.fix.contains("net.ipv6.conf.all.forwarding=1"));
        assert_eq!(find(&checks, "clock").verdict, Verdict::Warn);
        let disk = find(&checks, "disk --image-dir");
        assert_eq!(disk.verdict, Verdict::Fail, "{disk:?}");
        assert!(
            disk.detail.contains("10 %") && disk.detail.contains("15 %"),
            "{}",
            disk.detail
        );
        let serving = find(&checks, "serving certificate");
        assert_eq!(serving.fix, "kubectl certificate approve csr-abc");
        assert_eq!(find(&checks, "privileges").verdict, Verdict::Warn);
        let rbac = find(&checks, "cluster permissions");
        assert!(rbac.detail.contains("list nodes") && rbac.fix.contains("deploy/rbac.yaml"));
        let text = table(&checks);
        assert!(
            text.contains("fix: kubectl certificate approve csr-abc"),
            "{text}"
        );
    }
}

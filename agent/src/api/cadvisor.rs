//! kubelet's `/metrics/cadvisor`: cAdvisor's `container_*` and `machine_*` series, with
//! cAdvisor's names, help texts, label sets (`container`, `id`, `image`, `name`,
//! `namespace`, `pod`, and `cpu`/`device`/`interface`/`failure_type`/`scope` where
//! cAdvisor adds them) and value conversions, for the node (`id="/"`), the `kubepods`
//! tree, each pod (`container=""`) and each container — what the common dashboards
//! query. Read from cgroup v2 and `/proc` at each scrape.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::stats::StatsSources;
use crate::sys::cgroup_stats::{self, CgroupStats, Limit};
use crate::sys::stats::{self, NetCounters};

/// cAdvisor's identifying labels of one cgroup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels {
    /// The cgroup's path from the cgroup2 mount (`/` for the node).
    pub id: String,
    /// The container's runtime id (cAdvisor's first alias).
    pub name: String,
    pub image: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// One cgroup and what it reports.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    pub labels: Labels,
    pub stats: CgroupStats,
    /// The interfaces of its network namespace (pods, and the node), loopback and
    /// the host ends of pod links left out as cAdvisor leaves them.
    pub network: BTreeMap<String, NetCounters>,
    /// When it was made, in seconds since the epoch.
    pub start: f64,
}

/// The values one family takes from an entry: extra labels and the value.
type Values = Vec<(Vec<(&'static str, String)>, f64)>;

/// One metric family, as cAdvisor registers it.
struct Family {
    name: &'static str,
    help: &'static str,
    counter: bool,
    values: fn(&Entry) -> Values,
}

fn one(v: Option<f64>) -> Values {
    v.map(|v| vec![(Vec::new(), v)]).unwrap_or_default()
}

fn usec(e: &Entry, key: &str) -> Option<f64> {
    e.stats.cpu.get(key).map(|v| *v as f64 / 1e6)
}

/// Only where a CPU quota is set (cAdvisor's condition on the CFS series).
fn cfs(e: &Entry, key: &str, scale: f64) -> Values {
    match e.stats.cpu_max {
        Some((Some(_), _)) => one(e.stats.cpu.get(key).map(|v| *v as f64 / scale)),
        _ => Vec::new(),
    }
}

/// A memory figure, where the cgroup accounts memory.
fn memory(e: &Entry, f: impl Fn(&CgroupStats) -> Option<u64>) -> Values {
    if e.stats.memory_current.is_none() {
        return Vec::new();
    }
    one(Some(f(&e.stats).unwrap_or(0) as f64))
}

fn stat(s: &CgroupStats, key: &str) -> Option<u64> {
    s.memory_stat.get(key).copied()
}

fn working_set(s: &CgroupStats) -> Option<u64> {
    Some(
        s.memory_current?
            .saturating_sub(stat(s, "inactive_file").unwrap_or(0)),
    )
}

fn failures(e: &Entry) -> Values {
    if e.stats.memory_current.is_none() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for scope in ["container", "hierarchy"] {
        for kind in ["pgfault", "pgmajfault"] {
            out.push((
                vec![
                    ("failure_type", kind.to_string()),
                    ("scope", scope.to_string()),
                ],
                stat(&e.stats, kind).unwrap_or(0) as f64,
            ));
        }
    }
    out
}

fn per_device(e: &Entry, f: fn(&cgroup_stats::DeviceIo) -> u64) -> Values {
    e.stats
        .io
        .iter()
        .map(|d| (vec![("device", d.device.clone())], f(d) as f64))
        .collect()
}

fn per_interface(e: &Entry, f: fn(&NetCounters) -> u64) -> Values {
    e.network
        .iter()
        .map(|(i, c)| (vec![("interface", i.clone())], f(c) as f64))
        .collect()
}

/// Pressure stall time in seconds: `full` (stalled) or `some` (waiting).
fn pressure(e: &Entry, resource: usize, full: bool) -> Values {
    one(e.stats.psi[resource].map(|p| {
        let d = if full { p.full } else { p.some };
        d.total as f64 / 1e6
    }))
}

fn limit(l: Option<Limit>) -> f64 {
    match l {
        Some(Limit::Bytes(b)) if b < 1 << 62 => b as f64,
        _ => 0.0,
    }
}

/// cAdvisor's conversion of `cpu.weight` back to CPU shares.
pub fn weight_to_shares(weight: u64) -> u64 {
    2 + (weight.clamp(1, 10_000) - 1) * 262_142 / 9_999
}

const FAMILIES: &[Family] = &[
    Family {
        name: "container_cpu_cfs_periods_total",
        help: "Number of elapsed enforcement period intervals.",
        counter: true,
        values: |e| cfs(e, "nr_periods", 1.0),
    },
    Family {
        name: "container_cpu_cfs_throttled_periods_total",
        help: "Number of throttled period intervals.",
        counter: true,
        values: |e| cfs(e, "nr_throttled", 1.0),
    },
    Family {
        name: "container_cpu_cfs_throttled_seconds_total",
        help: "Total time duration the container has been throttled.",
        counter: true,
        values: |e| cfs(e, "throttled_usec", 1e6),
    },
    Family {
        name: "container_cpu_system_seconds_total",
        help: "Cumulative system cpu time consumed in seconds.",
        counter: true,
        values: |e| one(usec(e, "system_usec")),
    },
    Family {
        name: "container_cpu_usage_seconds_total",
        help: "Cumulative cpu time consumed in seconds.",
        counter: true,
        values: |e| {
            usec(e, "usage_usec")
                .map(|v| vec![(vec![("cpu", "total".to_string())], v)])
                .unwrap_or_default()
        },
    },
    Family {
        name: "container_cpu_user_seconds_total",
        help: "Cumulative user cpu time consumed in seconds.",
        counter: true,
        values: |e| one(usec(e, "user_usec")),
    },
    Family {
        name: "container_file_descriptors",
        help: "Number of open file descriptors for the container.",
        counter: false,
        values: |e| one(Some(e.stats.processes.file_descriptors as f64)),
    },
    Family {
        name: "container_fs_reads_bytes_total",
        help: "Cumulative count of bytes read",
        counter: true,
        values: |e| per_device(e, |d| d.read_bytes),
    },
    Family {
        name: "container_fs_reads_total",
        help: "Cumulative count of reads completed",
        counter: true,
        values: |e| per_device(e, |d| d.reads),
    },
    Family {
        name: "container_fs_writes_bytes_total",
        help: "Cumulative count of bytes written",
        counter: true,
        values: |e| per_device(e, |d| d.write_bytes),
    },
    Family {
        name: "container_fs_writes_total",
        help: "Cumulative count of writes completed",
        counter: true,
        values: |e| per_device(e, |d| d.writes),
    },
    Family {
        name: "container_last_seen",
        help: "Last time a container was seen by the exporter",
        counter: false,
        values: |_| one(Some(k8s_openapi::jiff::Timestamp::now().as_second() as f64)),
    },
    Family {
        name: "container_memory_cache",
        help: "Number of bytes of page cache memory.",
        counter: false,
        values: |e| memory(e, |s| stat(s, "file")),
    },
    Family {
        name: "container_memory_failcnt",
        help: "Number of memory usage hits limits",
        counter: true,
        values: |e| memory(e, |s| s.memory_events.get("max").copied()),
    },
    Family {
        name: "container_memory_failures_total",
        help: "Cumulative count of memory allocation failures.",
        counter: true,
        values: failures,
    },
    Family {
        name: "container_memory_kernel_usage",
        help: "Size of kernel memory allocated in bytes.",
        counter: false,
        values: |e| memory(e, |s| stat(s, "kernel")),
    },
    Family {
        name: "container_memory_mapped_file",
        help: "Size of memory mapped files in bytes.",
        counter: false,
        values: |e| memory(e, |s| stat(s, "file_mapped")),
    },
    Family {
        name: "container_memory_max_usage_bytes",
        help: "Maximum memory usage recorded in bytes",
        counter: false,
        values: |e| memory(e, |s| s.memory_peak),
    },
    Family {
        name: "container_memory_rss",
        help: "Size of RSS in bytes.",
        counter: false,
        values: |e| memory(e, |s| stat(s, "anon")),
    },
    Family {
        name: "container_memory_swap",
        help: "Container swap usage in bytes.",
        counter: false,
        values: |e| memory(e, |s| s.swap_current),
    },
    Family {
        name: "container_memory_total_active_file_bytes",
        help: "Current total active file in bytes.",
        counter: false,
        values: |e| memory(e, |s| stat(s, "active_file")),
    },
    Family {
        name: "container_memory_total_inactive_file_bytes",
        help: "Current total inactive file in bytes.",
        counter: false,
        values: |e| memory(e, |s| stat(s, "inactive_file")),
    },
    Family {
        name: "container_memory_usage_bytes",
        help: "Current memory usage in bytes, including all memory regardless of when it was accessed",
        counter: false,
        values: |e| memory(e, |s| s.memory_current),
    },
    Family {
        name: "container_memory_working_set_bytes",
        help: "Current working set in bytes.",
        counter: false,
        values: |e| memory(e, working_set),
    },
    Family {
        name: "container_network_receive_bytes_total",
        help: "Cumulative count of bytes received",
        counter: true,
        values: |e| per_interface(e, |c| c.rx_bytes),
    },
    Family {
        name: "container_network_receive_errors_total",
        help: "Cumulative count of errors encountered while receiving",
        counter: true,
        values: |e| per_interface(e, |c| c.rx_errors),
    },
    Family {
        name: "container_network_receive_packets_dropped_total",
        help: "Cumulative count of packets dropped while receiving",
        counter: true,
        values: |e| per_interface(e, |c| c.rx_dropped),
    },
    Family {
        name: "container_network_receive_packets_total",
        help: "Cumulative count of packets received",
        counter: true,
        values: |e| per_interface(e, |c| c.rx_packets),
    },
    Family {
        name: "container_network_transmit_bytes_total",
        help: "Cumulative count of bytes transmitted",
        counter: true,
        values: |e| per_interface(e, |c| c.tx_bytes),
    },
    Family {
        name: "container_network_transmit_errors_total",
        help: "Cumulative count of errors encountered while transmitting",
        counter: true,
        values: |e| per_interface(e, |c| c.tx_errors),
    },
    Family {
        name: "container_network_transmit_packets_dropped_total",
        help: "Cumulative count of packets dropped while transmitting",
        counter: true,
        values: |e| per_interface(e, |c| c.tx_dropped),
    },
    Family {
        name: "container_network_transmit_packets_total",
        help: "Cumulative count of packets transmitted",
        counter: true,
        values: |e| per_interface(e, |c| c.tx_packets),
    },
    Family {
        name: "container_oom_events_total",
        help: "Count of out of memory events observed for the container",
        counter: true,
        values: |e| {
            one(Some(
                e.stats.memory_events.get("oom_kill").copied().unwrap_or(0) as f64,
            ))
        },
    },
    Family {
        name: "container_pressure_cpu_stalled_seconds_total",
        help: "Total time duration no tasks in the container could make progress due to CPU congestion.",
        counter: true,
        values: |e| pressure(e, 0, true),
    },
    Family {
        name: "container_pressure_cpu_waiting_seconds_total",
        help: "Total time duration tasks in the container have waited due to CPU congestion.",
        counter: true,
        values: |e| pressure(e, 0, false),
    },
    Family {
        name: "container_pressure_io_stalled_seconds_total",
        help: "Total time duration no tasks in the container could make progress due to IO congestion.",
        counter: true,
        values: |e| pressure(e, 2, true),
    },
    Family {
        name: "container_pressure_io_waiting_seconds_total",
        help: "Total time duration tasks in the container have waited due to IO congestion.",
        counter: true,
        values: |e| pressure(e, 2, false),
    },
    Family {
        name: "container_pressure_memory_stalled_seconds_total",
        help: "Total time duration no tasks in the container could make progress due to memory congestion.",
        counter: true,
        values: |e| pressure(e, 1, true),
    },
    Family {
        name: "container_pressure_memory_waiting_seconds_total",
        help: "Total time duration tasks in the container have waited due to memory congestion.",
        counter: true,
        values: |e| pressure(e, 1, false),
    },
    Family {
        name: "container_processes",
        help: "Number of processes running inside the container.",
        counter: false,
        values: |e| one(Some(e.stats.processes.processes as f64)),
    },
    Family {
        name: "container_sockets",
        help: "Number of open sockets for the container.",
        counter: false,
        values: |e| one(Some(e.stats.processes.sockets as f64)),
    },
    Family {
        name: "container_spec_cpu_period",
        help: "CPU period of the container.",
        counter: false,
        values: |e| one(e.stats.cpu_max.map(|(_, p)| p as f64)),
    },
    Family {
        name: "container_spec_cpu_quota",
        help: "CPU quota of the container.",
        counter: false,
        values: |e| one(e.stats.cpu_max.and_then(|(q, _)| q).map(|q| q as f64)),
    },
    Family {
        name: "container_spec_cpu_shares",
        help: "CPU share of the container.",
        counter: false,
        values: |e| one(e.stats.cpu_weight.map(|w| weight_to_shares(w) as f64)),
    },
    Family {
        name: "container_spec_memory_limit_bytes",
        help: "Memory limit for the container.",
        counter: false,
        values: |e| one(e.stats.memory_max.map(|l| limit(Some(l)))),
    },
    Family {
        name: "container_spec_memory_reservation_limit_bytes",
        help: "Memory reservation limit for the container.",
        counter: false,
        values: |e| one(e.stats.memory_max.map(|_| limit(e.stats.memory_min))),
    },
    Family {
        name: "container_spec_memory_swap_limit_bytes",
        help: "Memory swap limit for the container.",
        counter: false,
        values: |e| one(e.stats.memory_max.map(|_| limit(e.stats.swap_max))),
    },
    Family {
        name: "container_start_time_seconds",
        help: "Start time of the container since unix epoch in seconds.",
        counter: false,
        values: |e| one(Some(e.start)),
    },
    Family {
        name: "container_threads",
        help: "Number of threads running inside the container",
        counter: false,
        values: |e| one(Some(e.stats.processes.threads as f64)),
    },
    Family {
        name: "container_threads_max",
        help: "Maximum number of threads allowed inside the container, infinity if value is zero",
        counter: false,
        values: |e| one(e.stats.pids_max.map(|l| limit(Some(l)))),
    },
];

/// The text exposition of `entries` and the machine's figures.
pub fn render(entries: &[Entry], machine: &[(&str, &str, f64)]) -> String {
    let mut out = String::new();
    for f in FAMILIES {
        let rows: Vec<(Labels, Values)> = entries
            .iter()
            .map(|e| (e.labels.clone(), (f.values)(e)))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        if rows.is_empty() {
            continue;
        }
        let kind = if f.counter { "counter" } else { "gauge" };
        let _ = writeln!(
            out,
            "# HELP {} {}\n# TYPE {} {kind}",
            f.name, f.help, f.name
        );
        for (l, values) in rows {
            for (extra, value) in values {
                let mut labels: Vec<(&str, String)> = vec![
                    ("container", l.container.clone()),
                    ("id", l.id.clone()),
                    ("image", l.image.clone()),
                    ("name", l.name.clone()),
                    ("namespace", l.namespace.clone()),
                    ("pod", l.pod.clone()),
                ];
                labels.extend(extra);
                labels.sort_by(|a, b| a.0.cmp(b.0));
                let text: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", crate::model::prom_text::escape(v)))
                    .collect();
                let _ = writeln!(out, "{}{{{}}} {value}", f.name, text.join(","));
            }
        }
    }
    for (name, help, value) in machine {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    out
}

/// The interfaces cAdvisor leaves out.
fn ignored_interface(name: &str) -> bool {
    ["lo", "veth", "docker", "nerdctl"]
        .iter()
        .any(|p| name.starts_with(p))
}

fn network(netns: Option<&Path>) -> BTreeMap<String, NetCounters> {
    stats::net_counters(netns)
        .unwrap_or_default()
        .into_iter()
        .filter(|(name, _)| !ignored_interface(name))
        .collect()
}

/// When a cgroup directory was made (its change time), in seconds.
fn made(dir: &Path) -> f64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(dir).map_or(0.0, |m| m.ctime() as f64)
}

/// `/proc/meminfo`'s fields.
fn meminfo() -> std::collections::BTreeMap<String, u64> {
    std::fs::read_to_string("/proc/meminfo")
        .map(|t| stats::parse_meminfo(&t))
        .unwrap_or_default()
}

/// The node's own entry: the cgroup2 root, memory from `/proc/meminfo` (`mem`).
fn node_entry(mount: &Path, mem: &std::collections::BTreeMap<String, u64>) -> Entry {
    let mut s = cgroup_stats::read(mount);
    if let Some(total) = mem.get("MemTotal") {
        s.memory_current = Some(total.saturating_sub(mem.get("MemFree").copied().unwrap_or(0)));
        for (key, meminfo) in [
            ("anon", "AnonPages"),
            ("file", "Cached"),
            ("file_mapped", "Mapped"),
            ("active_file", "Active(file)"),
            ("inactive_file", "Inactive(file)"),
        ] {
            if let Some(v) = mem.get(meminfo) {
                s.memory_stat.entry(key.to_string()).or_insert(*v);
            }
        }
    }
    let boot = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |up| {
            k8s_openapi::jiff::Timestamp::now().as_second() as f64 - up
        });
    Entry {
        labels: Labels {
            id: "/".into(),
            ..Default::default()
        },
        stats: s,
        network: network(None),
        start: boot.floor(),
    }
}

/// What a cgroup below `kubepods` is: a pod's or a container's, by their records.
struct Known {
    /// Pod cgroups (relative to the cgroup root): namespace, name, and the pod's
    /// network namespace unless it uses the host's.
    pods: BTreeMap<String, (String, String, Option<PathBuf>)>,
    /// Container cgroups: the container's name, id, image and pod uid's cgroup.
    containers: BTreeMap<String, (String, String, String, String)>,
}

fn known(src: &StatsSources) -> Known {
    let mut pods = BTreeMap::new();
    let mut by_uid = BTreeMap::new();
    for p in crate::podworker::recorded_pods(&src.state_dir) {
        let Some(uid) = p["metadata"]["uid"].as_str() else {
            continue;
        };
        let Some(sb) = crate::runtime::sandbox::record_in(&src.state_dir, uid) else {
            continue;
        };
        let cgroup = sb.cgroup.trim_matches('/').to_string();
        let netns = (!sb.host_network).then(|| src.run_dir.join("pods").join(uid).join("ns/net"));
        let ns = p["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = p["metadata"]["name"].as_str().unwrap_or("").to_string();
        by_uid.insert(uid.to_string(), cgroup.clone());
        pods.insert(cgroup, (ns, name, netns));
    }
    let containers = crate::runtime::container::records_in(&src.state_dir)
        .into_iter()
        .filter_map(|r| {
            let pod = by_uid.get(&r.pod_uid)?.clone();
            Some((
                r.cgroup.trim_matches('/').to_string(),
                (r.name, r.id, r.image, pod),
            ))
        })
        .collect();
    Known { pods, containers }
}

/// The cgroups under `dir` (itself first), at most `depth` levels down.
fn cgroups_under(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if !dir.join("cgroup.procs").exists() {
        return;
    }
    out.push(dir.to_path_buf());
    if depth == 0 {
        return;
    }
    let mut children: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    children.sort();
    for c in children {
        cgroups_under(&c, depth - 1, out);
    }
}

/// Every entry of the node: itself (its memory from `mem`, `/proc/meminfo`), then the
/// `kubepods` tree.
pub fn entries(src: &StatsSources, mem: &std::collections::BTreeMap<String, u64>) -> Vec<Entry> {
    let mount = crate::sys::cgroup::cgroup2_mount().unwrap_or_else(|_| src.cgroup_root.clone());
    let mut out = vec![node_entry(&mount, mem)];
    let known = known(src);
    let mut dirs = Vec::new();
    cgroups_under(&src.cgroup_root.join("kubepods"), 4, &mut dirs);
    for dir in dirs {
        let rel = dir
            .strip_prefix(&src.cgroup_root)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let id = dir
            .strip_prefix(&mount)
            .map(|p| format!("/{}", p.to_string_lossy()))
            .unwrap_or_else(|_| dir.to_string_lossy().into_owned());
        let mut e = Entry {
            labels: Labels {
                id,
                ..Default::default()
            },
            stats: cgroup_stats::read(&dir),
            start: made(&dir),
            ..Default::default()
        };
        if let Some((ns, pod, netns)) = known.pods.get(&rel) {
            e.labels.namespace = ns.clone();
            e.labels.pod = pod.clone();
            e.network = network(netns.as_deref());
        } else if let Some((name, cid, image, pod_cgroup)) = known.containers.get(&rel) {
            if let Some((ns, pod, _)) = known.pods.get(pod_cgroup) {
                e.labels.namespace = ns.clone();
                e.labels.pod = pod.clone();
            }
            e.labels.container = name.clone();
            e.labels.name = cid.clone();
            e.labels.image = image.clone();
        }
        out.push(e);
    }
    out
}

/// The machine's figures: cores, sockets, memory and swap.
fn machine(
    src: &StatsSources,
    mem: &std::collections::BTreeMap<String, u64>,
) -> Vec<(&'static str, &'static str, f64)> {
    let facts = crate::sys::machine::read(&src.state_dir);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| -> std::collections::BTreeSet<String> {
        cpuinfo
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_string())
            })
            .collect()
    };
    let sockets = field("physical id").len().max(1);
    let cores_per_socket: usize = field("core id").len().max(1);
    vec![
        (
            "machine_cpu_cores",
            "Number of logical CPU cores.",
            facts.cpus as f64,
        ),
        (
            "machine_cpu_physical_cores",
            "Number of physical CPU cores.",
            (sockets * cores_per_socket) as f64,
        ),
        (
            "machine_cpu_sockets",
            "Number of CPU sockets.",
            sockets as f64,
        ),
        (
            "machine_memory_bytes",
            "Amount of memory installed on the machine.",
            facts.memory_bytes as f64,
        ),
        (
            "machine_swap_bytes",
            "Amount of swap memory available on the machine.",
            mem.get("SwapTotal").copied().unwrap_or(0) as f64,
        ),
    ]
}

/// kubelet's `/metrics/cadvisor` text.
pub fn metrics(src: &StatsSources) -> String {
    let mem = meminfo();
    render(&entries(src, &mem), &machine(src, &mem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::stats::{Psi, PsiData};

    fn container() -> Entry {
        let mut s = CgroupStats::default();
        s.cpu.insert("usage_usec".into(), 1_500_000);
        s.cpu.insert("nr_periods".into(), 10);
        s.cpu_max = Some((Some(50_000), 100_000));
        s.cpu_weight = Some(100);
        s.memory_current = Some(3000);
        s.memory_stat.insert("inactive_file".into(), 1000);
        s.memory_max = Some(Limit::Max);
        s.psi[0] = Some(Psi {
            some: PsiData {
                total: 2_500_000,
                ..Default::default()
            },
            full: PsiData {
                total: 500_000,
                ..Default::default()
            },
        });
        Entry {
            labels: Labels {
                id: "/kubepods/pod1/c1".into(),
                name: "c1".into(),
                image: "busybox:1.36".into(),
                namespace: "default".into(),
                pod: "web".into(),
                container: "c\"x".into(),
            },
            stats: s,
            start: 100.0,
            ..Default::default()
        }
    }

    #[test]
    fn series_carry_cadvisors_names_labels_and_conversions() {
        let text = render(
            &[container()],
            &[("machine_cpu_cores", "Number of logical CPU cores.", 2.0)],
        );
        let labels = r#"container="c\"x",id="/kubepods/pod1/c1",image="busybox:1.36",name="c1",namespace="default",pod="web""#;
        for line in [
            "# TYPE container_cpu_usage_seconds_total counter".to_string(),
            format!(
                "container_cpu_usage_seconds_total{{{labels_cpu}}} 1.5",
                labels_cpu =
                    labels.replace(r#"container="c\"x","#, r#"container="c\"x",cpu="total","#)
            ),
            format!("container_cpu_cfs_periods_total{{{labels}}} 10"),
            format!("container_memory_working_set_bytes{{{labels}}} 2000"),
            format!("container_spec_memory_limit_bytes{{{labels}}} 0"),
            format!("container_spec_cpu_shares{{{labels}}} 2597"),
            format!("container_spec_cpu_quota{{{labels}}} 50000"),
            format!("container_pressure_cpu_waiting_seconds_total{{{labels}}} 2.5"),
            format!("container_pressure_cpu_stalled_seconds_total{{{labels}}} 0.5"),
            "machine_cpu_cores 2".to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        // No network namespace, no devices: no such series.
        assert!(!text.contains("container_network_"));
        assert!(!text.contains("container_fs_"));
    }

    #[test]
    fn weights_convert_to_shares_as_cadvisor() {
        assert_eq!(weight_to_shares(1), 2);
        assert_eq!(weight_to_shares(100), 2597);
        assert_eq!(weight_to_shares(10_000), 262_144);
    }
}

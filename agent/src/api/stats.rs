//! `/stats/summary` and `/metrics/resource`, in kubelet's shapes: node, pod and
//! container CPU and memory from cgroup v2 and `/proc`, network from each network
//! namespace's counters, filesystems from statvfs and the containers' writable layers
//! and logs. Values the kernel does not give (memory of a cgroup tree without the
//! memory controller; a CPU rate before a second sample) are left out, never zero.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{Value, json};

use crate::runtime::container::{ContainerState, records_in, state_in};
use crate::sys::stats;

/// Where the counters are.
#[derive(Clone, Debug)]
pub struct StatsSources {
    pub node: String,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    pub image_dir: PathBuf,
    /// kernlet's cgroup subtree (cgroup2 mount + cgroup root).
    pub cgroup_root: PathBuf,
}

/// Earlier CPU samples, for rates.
#[derive(Debug, Default)]
pub struct CpuSamples(Mutex<HashMap<String, (Instant, u64)>>);

impl CpuSamples {
    /// Nanocores since the last sample of `key`, recording this one.
    pub fn rate(&self, key: &str, ns: u64) -> Option<u64> {
        let now = Instant::now();
        let mut m = self.0.lock().ok()?;
        let prev = m.insert(key.to_string(), (now, ns));
        let (t, v) = prev?;
        let dt = now.duration_since(t).as_nanos();
        (dt > 0 && ns >= v).then(|| ((ns - v) as u128 * 1_000_000_000 / dt) as u64)
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn cpu_json(samples: &CpuSamples, key: &str, ns: Option<u64>, psi: Option<stats::Psi>) -> Value {
    let mut v = json!({"time": now()});
    if let Some(ns) = ns {
        v["usageCoreNanoSeconds"] = json!(ns);
        if let Some(rate) = samples.rate(key, ns) {
            v["usageNanoCores"] = json!(rate);
        }
    }
    if let Some(psi) = psi {
        v["psi"] = json!(psi);
    }
    v
}

/// The summary's `io` block: only its pressure stall information, as kubelet's.
fn io_json(psi: Option<stats::Psi>) -> Value {
    let mut v = json!({"time": now()});
    if let Some(psi) = psi {
        v["psi"] = json!(psi);
    }
    v
}

fn memory_json(u: &stats::CgroupUsage) -> Value {
    let mut v = json!({"time": now()});
    if let Some(psi) = u.psi[1] {
        v["psi"] = json!(psi);
    }
    for (k, x) in [
        ("usageBytes", u.memory),
        ("workingSetBytes", u.working_set),
        ("rssBytes", u.rss),
        ("pageFaults", u.page_faults),
        ("majorPageFaults", u.major_page_faults),
    ] {
        if let Some(x) = x {
            v[k] = json!(x);
        }
    }
    v
}

/// The `pods` system container's memory, with what is left of its limit (the node's
/// allocatable) where the cgroup has one, as kubelet reports it.
fn pods_memory_json(cgroup: &Path, u: &stats::CgroupUsage) -> Value {
    let mut v = memory_json(u);
    if let Some(r) = u
        .working_set
        .and_then(|ws| stats::pods_memory_with(cgroup, ws))
    {
        v["availableBytes"] = json!(r.available);
    }
    v
}

fn fs_json(path: &Path, used: Option<(u64, u64)>) -> Value {
    let mut v = json!({"time": now()});
    if let Some((cap, avail, inodes, free)) = stats::filesystem(path) {
        v["capacityBytes"] = json!(cap);
        v["availableBytes"] = json!(avail);
        v["inodes"] = json!(inodes);
        v["inodesFree"] = json!(free);
        if used.is_none() {
            v["usedBytes"] = json!(cap.saturating_sub(avail));
            v["inodesUsed"] = json!(inodes.saturating_sub(free));
        }
    }
    if let Some((bytes, inodes)) = used {
        v["usedBytes"] = json!(bytes);
        v["inodesUsed"] = json!(inodes);
    }
    v
}

/// The pod's claimed volumes a plugin measures — local filesystem volumes, by statfs
/// of their path as kubelet's local plugin does; CSI volumes, by what their driver
/// last answered; host-path volumes report none — each with its `/stats/summary` entry
/// (`pvcRef` for a claim's).
pub fn claim_stats(state_dir: &Path, uid: &str) -> Vec<(crate::model::claims::Mountable, Value)> {
    use crate::model::claims::Plugin;
    crate::runtime::claimed_volumes::claimed_in(state_dir, uid)
        .into_iter()
        .filter(|m| m.ready && !m.block)
        .filter_map(|m| {
            let mut v = match &m.plugin {
                Plugin::Local => fs_json(&m.path, None),
                // What the driver last said (NodeGetVolumeStats).
                Plugin::Csi(_) => crate::runtime::read_json::<Value>(
                    &crate::csi::stats::stats_path(state_dir, uid, &m.volume),
                )
                .ok()
                .flatten()?,
                Plugin::HostPath { .. } => return None,
            };
            v["name"] = json!(m.volume);
            if !m.claim.is_empty() {
                v["pvcRef"] = json!({"name": m.claim, "namespace": m.namespace});
            }
            Some((m, v))
        })
        .collect()
}

fn network_json(
    dev: Option<std::collections::BTreeMap<String, (u64, u64, u64, u64)>>,
    main: Option<&str>,
) -> Option<Value> {
    let dev = dev?;
    let iface = |name: &str, (rx, rxe, tx, txe): (u64, u64, u64, u64)| json!({"name": name, "rxBytes": rx, "rxErrors": rxe, "txBytes": tx, "txErrors": txe});
    let interfaces: Vec<Value> = dev
        .iter()
        .filter(|(n, _)| n.as_str() != "lo")
        .map(|(n, c)| iface(n, *c))
        .collect();
    let main = main
        .and_then(|m| dev.get_key_value(m))
        .or_else(|| dev.iter().find(|(n, _)| n.as_str() != "lo"))?;
    let mut v = iface(main.0, *main.1);
    v["time"] = json!(now());
    v["interfaces"] = json!(interfaces);
    Some(v)
}

/// One running container of a pod, with its usage.
struct Running {
    pod_uid: String,
    name: String,
    id: String,
    started_at: String,
    usage: stats::CgroupUsage,
    rootfs: (u64, u64),
    logs: (u64, u64),
}

fn running_containers(src: &StatsSources) -> Vec<Running> {
    records_in(&src.state_dir)
        .into_iter()
        .filter_map(|r| {
            let ContainerState::Running { started_at, .. } =
                state_in(&src.state_dir.join("containers").join(&r.id))
            else {
                return None;
            };
            let dir = src.state_dir.join("containers").join(&r.id);
            Some(Running {
                usage: stats::cgroup_usage(&src.cgroup_root.join(r.cgroup.trim_start_matches('/'))),
                rootfs: stats::disk_usage(&dir.join("upper")),
                logs: r
                    .log_path
                    .parent()
                    .map(stats::disk_usage)
                    .unwrap_or_default(),
                pod_uid: r.pod_uid,
                name: r.name,
                id: r.id,
                started_at,
            })
        })
        .collect()
}

/// The sandbox record of a pod: its cgroup (relative) and whether it uses the host's network.
fn sandbox(src: &StatsSources, uid: &str) -> Option<(String, bool)> {
    let sb = crate::runtime::sandbox::record_in(&src.state_dir, uid)?;
    Some((sb.cgroup, sb.host_network))
}

/// kubelet's `/stats/summary`.
pub fn summary(src: &StatsSources, samples: &CpuSamples, node_iface: Option<&str>) -> Value {
    let node_cpu = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| stats::parse_proc_stat_cpu(&t));
    let mem = std::fs::read_to_string("/proc/meminfo")
        .map(|t| stats::parse_meminfo(&t))
        .unwrap_or_default();
    let vm = std::fs::read_to_string("/proc/vmstat")
        .map(|t| stats::parse_flat(&t))
        .unwrap_or_default();
    let total = mem.get("MemTotal").copied().unwrap_or(0);
    let usage = total.saturating_sub(mem.get("MemFree").copied().unwrap_or(0));
    // The same reading the eviction signal memory.available is.
    let (available, working) = stats::memory_available(&mem);
    let node_psi = stats::psi_in(Path::new("/proc/pressure"), "");
    let mut node_memory = json!({
        "time": now(),
        "availableBytes": available,
        "usageBytes": usage,
        "workingSetBytes": working,
        "rssBytes": mem.get("AnonPages").copied().unwrap_or(0),
        "pageFaults": vm.get("pgfault").copied().unwrap_or(0),
        "majorPageFaults": vm.get("pgmajfault").copied().unwrap_or(0),
    });
    if let Some(psi) = node_psi[1] {
        node_memory["psi"] = json!(psi);
    }
    let pods_cg = src.cgroup_root.join("kubepods");
    let pods_usage = stats::cgroup_usage(&pods_cg);
    let boot = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .and_then(|up| {
            k8s_openapi::jiff::Timestamp::now()
                .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(up as i64))
                .ok()
        })
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    let mut node = json!({
        "nodeName": src.node,
        "systemContainers": [{
            "name": "pods",
            "cpu": cpu_json(samples, "pods", pods_usage.cpu_ns, pods_usage.psi[0]),
            "memory": pods_memory_json(&pods_cg, &pods_usage),
            "io": io_json(pods_usage.psi[2]),
        }],
        "startTime": boot,
        "cpu": cpu_json(samples, "node", node_cpu, node_psi[0]),
        "memory": node_memory,
        "io": io_json(node_psi[2]),
        "fs": fs_json(&src.state_dir, None),
        "runtime": {"imageFs": fs_json(&src.image_dir, Some(stats::disk_usage(&src.image_dir)))},
    });
    if let Some(n) = network_json(stats::net_dev(None), node_iface) {
        node["network"] = n;
    }
    let running = running_containers(src);
    let pods: Vec<Value> = crate::podworker::recorded_pods(&src.state_dir)
        .into_iter()
        .filter_map(|p| {
            let uid = p["metadata"]["uid"].as_str()?.to_string();
            let (cgroup, host_network) = sandbox(src, &uid)?;
            let mine: Vec<&Running> = running.iter().filter(|r| r.pod_uid == uid).collect();
            let containers: Vec<Value> = mine
                .iter()
                .map(|r| {
                    json!({
                        "name": r.name,
                        "startTime": r.started_at,
                        // Containers without PSI, as kubelet 1.36 on containerd
                        // reports them (pods and the node carry it).
                        "cpu": cpu_json(samples, &r.id, r.usage.cpu_ns, None),
                        "memory": memory_json(&stats::CgroupUsage { psi: [None; 3], ..r.usage.clone() }),
                        "io": io_json(None),
                        "rootfs": fs_json(&src.state_dir, Some(r.rootfs)),
                        "logs": fs_json(&src.log_dir, Some(r.logs)),
                    })
                })
                .collect();
            let pod_usage = stats::cgroup_usage(&src.cgroup_root.join(&cgroup));
            let ephemeral: u64 = mine.iter().map(|r| r.rootfs.0 + r.logs.0).sum();
            let mut v = json!({
                "podRef": {"name": p["metadata"]["name"], "namespace": p["metadata"]["namespace"], "uid": uid},
                "startTime": p["status"]["startTime"],
                "containers": containers,
                "cpu": cpu_json(samples, &cgroup, pod_usage.cpu_ns, pod_usage.psi[0]),
                "memory": memory_json(&pod_usage),
                "io": io_json(pod_usage.psi[2]),
                "ephemeral-storage": fs_json(&src.state_dir, Some((ephemeral, 0))),
            });
            let volumes: Vec<Value> = claim_stats(&src.state_dir, &uid).into_iter().map(|(_, v)| v).collect();
            if !volumes.is_empty() {
                v["volume"] = json!(volumes);
            }
            let netns = (!host_network).then(|| src.run_dir.join("pods").join(&uid).join("ns/net"));
            let dev = match &netns {
                Some(ns) => stats::net_dev(Some(ns)),
                None => stats::net_dev(None),
            };
            if let Some(n) = network_json(dev, if host_network { node_iface } else { Some("eth0") }) {
                v["network"] = n;
            }
            Some(v)
        })
        .collect();
    json!({"node": node, "pods": pods})
}

/// kubelet's `/metrics/resource` (what metrics-server reads), Prometheus text.
pub fn resource_metrics(src: &StatsSources) -> String {
    let ms = k8s_openapi::jiff::Timestamp::now().as_millisecond();
    let pods = crate::podworker::recorded_pods(&src.state_dir);
    let pod_of = |uid: &str| {
        pods.iter().find(|p| p["metadata"]["uid"] == uid).map(|p| {
            (
                p["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
            )
        })
    };
    let running = running_containers(src);
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, value) in rows {
            out.push_str(&format!("{name}{labels} {value} {ms}\n"));
        }
    };
    let label = |r: &Running| {
        pod_of(&r.pod_uid).map(|(ns, pod)| {
            format!(
                "{{container=\"{}\",namespace=\"{ns}\",pod=\"{pod}\"}}",
                r.name
            )
        })
    };
    family(
        "container_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
        running
            .iter()
            .filter_map(|r| Some((label(r)?, format!("{}", r.usage.cpu_ns? as f64 / 1e9))))
            .collect(),
    );
    family(
        "container_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the container in bytes",
        running
            .iter()
            .filter_map(|r| Some((label(r)?, r.usage.working_set?.to_string())))
            .collect(),
    );
    family(
        "container_start_time_seconds",
        "gauge",
        "[STABLE] Start time of the container since unix epoch in seconds",
        running
            .iter()
            .filter_map(|r| {
                let t: k8s_openapi::jiff::Timestamp = r.started_at.parse().ok()?;
                Some((label(r)?, format!("{}", t.as_millisecond() as f64 / 1000.0)))
            })
            .collect(),
    );
    if let Some(ns) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| stats::parse_proc_stat_cpu(&t))
    {
        family(
            "node_cpu_usage_seconds_total",
            "counter",
            "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
            vec![(String::new(), format!("{}", ns as f64 / 1e9))],
        );
    }
    let mem = std::fs::read_to_string("/proc/meminfo")
        .map(|t| stats::parse_meminfo(&t))
        .unwrap_or_default();
    if let (Some(total), Some(free)) = (mem.get("MemTotal"), mem.get("MemFree")) {
        let ws = (total - free).saturating_sub(mem.get("Inactive(file)").copied().unwrap_or(0));
        family(
            "node_memory_working_set_bytes",
            "gauge",
            "[STABLE] Current working set of the node in bytes",
            vec![(String::new(), ws.to_string())],
        );
    }
    let pod_rows = |f: &dyn Fn(&stats::CgroupUsage) -> Option<String>| -> Vec<(String, String)> {
        pods.iter()
            .filter_map(|p| {
                let uid = p["metadata"]["uid"].as_str()?;
                let (cgroup, _) = sandbox(src, uid)?;
                let u = stats::cgroup_usage(&src.cgroup_root.join(cgroup));
                Some((
                    format!(
                        "{{namespace=\"{}\",pod=\"{}\"}}",
                        p["metadata"]["namespace"].as_str()?,
                        p["metadata"]["name"].as_str()?
                    ),
                    f(&u)?,
                ))
            })
            .collect()
    };
    family(
        "pod_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
        pod_rows(&|u| u.cpu_ns.map(|n| format!("{}", n as f64 / 1e9))),
    );
    family(
        "pod_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the pod in bytes",
        pod_rows(&|u| u.working_set.map(|w| w.to_string())),
    );
    out.push_str("# HELP scrape_error [ALPHA] 1 if there was an error while getting container metrics, 0 otherwise\n# TYPE scrape_error gauge\nscrape_error 0\n");
    out
}

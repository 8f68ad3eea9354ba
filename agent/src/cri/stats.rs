//! Container and sandbox stats in the CRI's shapes, from the cgroups and network
//! namespaces kernlet made: the same readings as `/stats/summary`.

use std::path::Path;

use super::proto;
use super::view::{Run, Sandbox, now_nanos};
use crate::api::stats::CpuSamples;
use crate::sys::stats;

fn value(v: Option<u64>) -> Option<proto::UInt64Value> {
    v.map(|value| proto::UInt64Value { value })
}

fn cpu(samples: &CpuSamples, key: &str, u: &stats::CgroupUsage, at: i64) -> proto::CpuUsage {
    proto::CpuUsage {
        timestamp: at,
        usage_core_nano_seconds: value(u.cpu_ns),
        usage_nano_cores: value(u.cpu_ns.and_then(|ns| samples.rate(key, ns))),
        psi: None,
    }
}

fn memory(u: &stats::CgroupUsage, at: i64) -> proto::MemoryUsage {
    proto::MemoryUsage {
        timestamp: at,
        working_set_bytes: value(u.working_set),
        available_bytes: None,
        usage_bytes: value(u.memory),
        rss_bytes: value(u.rss),
        page_faults: value(u.page_faults),
        major_page_faults: value(u.major_page_faults),
        psi: None,
    }
}

/// Where a container's stats come from.
pub struct Sources<'a> {
    pub state_dir: &'a Path,
    pub cgroup_root: &'a Path,
    pub run_dir: &'a Path,
    pub samples: &'a CpuSamples,
}

/// A running container's stats (CPU, memory, writable layer).
pub fn container(src: &Sources, run: &Run, sandbox: Option<&Sandbox>) -> proto::ContainerStats {
    let at = now_nanos();
    let r = &run.record;
    let usage = stats::cgroup_usage(&src.cgroup_root.join(r.cgroup.trim_start_matches('/')));
    let upper = src.state_dir.join("containers").join(&r.id).join("upper");
    let (used, inodes) = stats::disk_usage(&upper);
    proto::ContainerStats {
        attributes: Some(run.attributes(sandbox)),
        cpu: Some(cpu(src.samples, &r.id, &usage, at)),
        memory: Some(memory(&usage, at)),
        writable_layer: Some(proto::FilesystemUsage {
            timestamp: at,
            fs_id: Some(proto::FilesystemIdentifier {
                mountpoint: src.state_dir.join("containers").display().to_string(),
            }),
            used_bytes: value(Some(used)),
            inodes_used: value(Some(inodes)),
        }),
        swap: None,
        io: None,
    }
}

fn network(
    dev: std::collections::BTreeMap<String, (u64, u64, u64, u64)>,
    at: i64,
) -> proto::NetworkUsage {
    let iface = |(name, (rx, rxe, tx, txe)): (&String, &(u64, u64, u64, u64))| {
        proto::NetworkInterfaceUsage {
            name: name.clone(),
            rx_bytes: value(Some(*rx)),
            rx_errors: value(Some(*rxe)),
            tx_bytes: value(Some(*tx)),
            tx_errors: value(Some(*txe)),
        }
    };
    let interfaces: Vec<_> = dev
        .iter()
        .filter(|(n, _)| n.as_str() != "lo")
        .map(iface)
        .collect();
    proto::NetworkUsage {
        timestamp: at,
        default_interface: interfaces
            .iter()
            .find(|i| i.name == "eth0")
            .or(interfaces.first())
            .cloned(),
        interfaces,
    }
}

/// A pod's stats: its cgroup, its network namespace, its running containers'.
pub fn sandbox(
    src: &Sources,
    s: &Sandbox,
    containers: Vec<proto::ContainerStats>,
) -> proto::PodSandboxStats {
    let at = now_nanos();
    let usage = stats::cgroup_usage(
        &src.cgroup_root
            .join(s.record.cgroup.trim_start_matches('/')),
    );
    let netns = (!s.record.host_network)
        .then(|| src.run_dir.join("pods").join(&s.record.uid).join("ns/net"));
    let dev = stats::net_dev(netns.as_deref());
    let cri = s.to_cri();
    proto::PodSandboxStats {
        attributes: Some(proto::PodSandboxAttributes {
            id: cri.id,
            metadata: cri.metadata,
            labels: cri.labels,
            annotations: cri.annotations,
        }),
        linux: Some(proto::LinuxPodSandboxStats {
            cpu: Some(cpu(src.samples, &s.record.cgroup, &usage, at)),
            memory: Some(memory(&usage, at)),
            network: dev.map(|d| network(d, at)),
            process: None,
            containers,
            io: None,
        }),
        windows: None,
    }
}

//! `kernlet top`: the node's pods (and with `--containers` their containers) by CPU and
//! memory, from their cgroups — CPU as the rate between two readings of `cpu.stat`,
//! memory as the working set (where the memory controller runs) — like `kubectl top`
//! without metrics-server, and working without the daemon.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::runtime::container::{ContainerState, records_in, state_in};
use crate::sys::stats::cgroup_usage;

/// One cgroup's counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reading {
    pub namespace: String,
    pub pod: String,
    /// Empty for the pod as a whole.
    pub container: String,
    /// `cpu.stat` usage_usec.
    pub cpu_usec: Option<u64>,
    /// memory.current less inactive_file.
    pub working_set: Option<u64>,
}

/// One line of the table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub namespace: String,
    pub pod: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub container: String,
    /// CPU used over the interval, in millicores (none without two readings).
    #[serde(rename = "cpuMillicores")]
    pub cpu_millicores: Option<u64>,
    #[serde(rename = "memoryBytes")]
    pub memory_bytes: Option<u64>,
}

/// The pods' and their running containers' counters, from the records under
/// `state_dir` and the cgroups under `cgroup_root` (absolute).
pub fn read(state_dir: &Path, cgroup_root: &Path) -> Vec<Reading> {
    let mut pods: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut out = Vec::new();
    for p in crate::podworker::recorded_pods(state_dir) {
        let Some(uid) = p["metadata"]["uid"].as_str() else {
            continue;
        };
        let Some(sb) = crate::runtime::sandbox::record_in(state_dir, uid) else {
            continue;
        };
        let ns = p["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = p["metadata"]["name"].as_str().unwrap_or("").to_string();
        let u = cgroup_usage(&cgroup_root.join(sb.cgroup.trim_start_matches('/')));
        out.push(Reading {
            namespace: ns.clone(),
            pod: name.clone(),
            container: String::new(),
            cpu_usec: u.cpu_ns.map(|n| n / 1000),
            working_set: u.working_set,
        });
        pods.insert(uid.to_string(), (ns, name));
    }
    for r in records_in(state_dir) {
        let Some((ns, pod)) = pods.get(&r.pod_uid) else {
            continue;
        };
        if !matches!(
            state_in(&state_dir.join("containers").join(&r.id)),
            ContainerState::Running { .. }
        ) {
            continue;
        }
        let u = cgroup_usage(&cgroup_root.join(r.cgroup.trim_start_matches('/')));
        out.push(Reading {
            namespace: ns.clone(),
            pod: pod.clone(),
            container: r.name,
            cpu_usec: u.cpu_ns.map(|n| n / 1000),
            working_set: u.working_set,
        });
    }
    out.sort();
    out
}

/// The rows from two readings `elapsed` apart: CPU as the rate between them, memory
/// from the later one; the busiest first (then by name). Only pods, unless
/// `containers`.
pub fn rows(
    before: &[Reading],
    after: &[Reading],
    elapsed: Duration,
    containers: bool,
) -> Vec<Row> {
    let key = |r: &Reading| (r.namespace.clone(), r.pod.clone(), r.container.clone());
    let earlier: BTreeMap<_, _> = before.iter().map(|r| (key(r), r.cpu_usec)).collect();
    let micros = elapsed.as_micros().max(1) as u64;
    let mut out: Vec<Row> = after
        .iter()
        .filter(|r| containers != r.container.is_empty())
        .map(|r| Row {
            namespace: r.namespace.clone(),
            pod: r.pod.clone(),
            container: r.container.clone(),
            cpu_millicores: match (earlier.get(&key(r)).copied().flatten(), r.cpu_usec) {
                (Some(a), Some(b)) if b >= a => Some((b - a) * 1000 / micros),
                _ => None,
            },
            memory_bytes: r.working_set,
        })
        .collect();
    out.sort_by(|a, b| {
        b.cpu_millicores.cmp(&a.cpu_millicores).then_with(|| {
            (&a.namespace, &a.pod, &a.container).cmp(&(&b.namespace, &b.pod, &b.container))
        })
    });
    out
}

fn mebibytes(b: Option<u64>) -> String {
    b.map_or_else(|| "-".into(), |b| format!("{}Mi", b >> 20))
}

/// The rows as a table, as `kubectl top` prints them.
pub fn table(rows: &[Row], containers: bool) -> String {
    let mut out = if containers {
        format!(
            "{:<40} {:<24} {:>10} {:>12}\n",
            "POD", "NAME", "CPU(cores)", "MEMORY(bytes)"
        )
    } else {
        format!(
            "{:<40} {:>10} {:>12}\n",
            "POD", "CPU(cores)", "MEMORY(bytes)"
        )
    };
    for r in rows {
        let pod = format!("{}/{}", r.namespace, r.pod);
        let cpu = r
            .cpu_millicores
            .map_or_else(|| "-".into(), |m| format!("{m}m"));
        if containers {
            out.push_str(&format!(
                "{pod:<40} {:<24} {cpu:>10} {:>12}\n",
                r.container,
                mebibytes(r.memory_bytes)
            ));
        } else {
            out.push_str(&format!(
                "{pod:<40} {cpu:>10} {:>12}\n",
                mebibytes(r.memory_bytes)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(pod: &str, container: &str, cpu: u64, mem: Option<u64>) -> Reading {
        Reading {
            namespace: "ns".into(),
            pod: pod.into(),
            container: container.into(),
            cpu_usec: Some(cpu),
            working_set: mem,
        }
    }

    #[test]
    fn cpu_is_a_rate_between_readings_and_the_busiest_come_first() {
        let before = [
            reading("a", "", 1_000_000, None),
            reading("b", "", 0, None),
            reading("b", "c", 0, None),
        ];
        let after = [
            reading("a", "", 1_100_000, Some(8 << 20)),
            reading("b", "", 500_000, None),
            reading("b", "c", 400_000, Some(1 << 20)),
            reading("new", "", 10, None),
        ];
        let pods = rows(&before, &after, Duration::from_secs(1), false);
        let names: Vec<&str> = pods.iter().map(|r| r.pod.as_str()).collect();
        assert_eq!(
            names,
            ["b", "a", "new"],
            "busiest first, unknown rates last"
        );
        assert_eq!(pods[0].cpu_millicores, Some(500));
        assert_eq!(pods[1].cpu_millicores, Some(100));
        assert_eq!(pods[2].cpu_millicores, None, "no earlier reading");
        let cs = rows(&before, &after, Duration::from_secs(1), true);
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].cpu_millicores, Some(400));
        let t = table(&pods, false);
        assert!(
            t.lines().nth(1).unwrap().contains("ns/b") && t.contains("500m") && t.contains("8Mi"),
            "{t}"
        );
    }
}

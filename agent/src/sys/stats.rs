//! Resource counters as the kernel keeps them: `/proc/stat`, `/proc/meminfo`,
//! `/proc/vmstat`, a network namespace's `net/dev`, a cgroup's `cpu.stat`,
//! `memory.current` and `memory.stat`, a filesystem's statvfs. Parsers are pure; what
//! the kernel does not provide (a cgroup without the memory controller) is `None`,
//! never zero.

use std::collections::BTreeMap;
use std::os::fd::AsFd as _;
use std::path::Path;

use serde::Serialize;

/// Cumulative CPU time of the whole machine in nanoseconds (all but idle and iowait),
/// from the `cpu` line of `/proc/stat` (in USER_HZ ticks of 10 ms).
pub fn parse_proc_stat_cpu(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|i| v.get(*i)).sum();
    Some(busy * 10_000_000)
}

/// `key: value kB` lines of `/proc/meminfo` in bytes.
pub fn parse_meminfo(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let mut it = v.split_whitespace();
            let n: u64 = it.next()?.parse().ok()?;
            let unit = if it.next() == Some("kB") { 1024 } else { 1 };
            Some((k.trim().to_string(), n * unit))
        })
        .collect()
}

/// `key value` lines (`/proc/vmstat`, `cpu.stat`, `memory.stat`).
pub fn parse_flat(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// One interface's counters from a `net/dev` file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// Every interface's counters from a `net/dev` file.
pub fn parse_net_counters(text: &str) -> BTreeMap<String, NetCounters> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            let at = |i: usize| v.get(i).copied();
            Some((
                name.trim().to_string(),
                NetCounters {
                    rx_bytes: at(0)?,
                    rx_packets: at(1)?,
                    rx_errors: at(2)?,
                    rx_dropped: at(3)?,
                    tx_bytes: at(8)?,
                    tx_packets: at(9)?,
                    tx_errors: at(10)?,
                    tx_dropped: at(11)?,
                },
            ))
        })
        .collect()
}

/// Per interface: `(rx bytes, rx errors, tx bytes, tx errors)` from a `net/dev` file.
pub fn parse_net_dev(text: &str) -> BTreeMap<String, (u64, u64, u64, u64)> {
    parse_net_counters(text)
        .into_iter()
        .map(|(k, c)| (k, (c.rx_bytes, c.rx_errors, c.tx_bytes, c.tx_errors)))
        .collect()
}

/// The `net/dev` of the network namespace pinned at `netns` (the caller's own when
/// `None`), read by a thread that entered it.
pub fn net_dev(netns: Option<&Path>) -> Option<BTreeMap<String, (u64, u64, u64, u64)>> {
    net_dev_text(netns).map(|t| parse_net_dev(&t))
}

/// Every interface's counters in the network namespace pinned at `netns` (the
/// caller's own when `None`).
pub fn net_counters(netns: Option<&Path>) -> Option<BTreeMap<String, NetCounters>> {
    net_dev_text(netns).map(|t| parse_net_counters(&t))
}

fn net_dev_text(netns: Option<&Path>) -> Option<String> {
    let Some(netns) = netns else {
        return std::fs::read_to_string("/proc/thread-self/net/dev").ok();
    };
    let ns = std::fs::File::open(netns).ok()?;
    std::thread::spawn(move || {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        std::fs::read_to_string("/proc/thread-self/net/dev").ok()
    })
    .join()
    .ok()?
}

/// What a cgroup reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CgroupUsage {
    /// `cpu.stat` usage_usec in nanoseconds (cgroup v2 always has it).
    pub cpu_ns: Option<u64>,
    /// `memory.current` (needs the memory controller).
    pub memory: Option<u64>,
    /// memory.current minus inactive_file.
    pub working_set: Option<u64>,
    pub rss: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    /// Pressure stall information of the cgroup: cpu, memory, io.
    pub psi: [Option<Psi>; 3],
}

/// One line of a PSI file (`some` or `full`): the averages in percent over 10, 60 and
/// 300 seconds, and the total stall time in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PsiData {
    pub total: u64,
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
}

/// Pressure stall information of one resource, as the summary API's `PSIStats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Psi {
    pub full: PsiData,
    pub some: PsiData,
}

/// The resources PSI is kept for, in [`CgroupUsage::psi`]'s order.
pub const PSI_RESOURCES: [&str; 3] = ["cpu", "memory", "io"];

/// Parses a `/proc/pressure/*` or `<cgroup>/*.pressure` text.
pub fn parse_psi(text: &str) -> Option<Psi> {
    let mut psi = Psi::default();
    let mut seen = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let which = match words.next()? {
            "some" => &mut psi.some,
            "full" => &mut psi.full,
            _ => continue,
        };
        for w in words {
            let (k, v) = w.split_once('=')?;
            match k {
                "avg10" => which.avg10 = v.parse().ok()?,
                "avg60" => which.avg60 = v.parse().ok()?,
                "avg300" => which.avg300 = v.parse().ok()?,
                "total" => which.total = v.parse().ok()?,
                _ => {}
            }
        }
        seen = true;
    }
    seen.then_some(psi)
}

/// PSI of each of [`PSI_RESOURCES`] from `<dir>/<resource><suffix>`.
pub fn psi_in(dir: &Path, suffix: &str) -> [Option<Psi>; 3] {
    PSI_RESOURCES.map(|r| {
        std::fs::read_to_string(dir.join(format!("{r}{suffix}")))
            .ok()
            .and_then(|t| parse_psi(&t))
    })
}

/// Reads the usage of the cgroup directory `dir`.
pub fn cgroup_usage(dir: &Path) -> CgroupUsage {
    let cpu = std::fs::read_to_string(dir.join("cpu.stat"))
        .ok()
        .map(|t| parse_flat(&t));
    let memory: Option<u64> = std::fs::read_to_string(dir.join("memory.current"))
        .ok()
        .and_then(|t| t.trim().parse().ok());
    let stat = std::fs::read_to_string(dir.join("memory.stat"))
        .ok()
        .map(|t| parse_flat(&t))
        .unwrap_or_default();
    CgroupUsage {
        cpu_ns: cpu.and_then(|c| c.get("usage_usec").map(|u| u * 1000)),
        memory,
        working_set: memory
            .map(|m| m.saturating_sub(stat.get("inactive_file").copied().unwrap_or(0))),
        rss: memory.and(stat.get("anon").copied()),
        page_faults: memory.and(stat.get("pgfault").copied()),
        major_page_faults: memory.and(stat.get("pgmajfault").copied()),
        psi: psi_in(dir, ".pressure"),
    }
}

/// The processes of a cgroup and its descendants: `pids.current` where the pids
/// controller runs, else the members counted in each `cgroup.procs`.
pub fn cgroup_processes(dir: &Path) -> Option<u64> {
    if let Some(n) = std::fs::read_to_string(dir.join("pids.current"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
    {
        return Some(n);
    }
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    let mut any = false;
    while let Some(d) = stack.pop() {
        let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) else {
            continue;
        };
        any = true;
        total += procs.lines().filter(|l| !l.trim().is_empty()).count() as u64;
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    any.then_some(total)
}

/// `(capacity, available, inodes, inodes free)` of the filesystem holding `path`.
pub fn filesystem(path: &Path) -> Option<(u64, u64, u64, u64)> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let frag = s.fragment_size();
    Some((
        s.blocks() * frag,
        s.blocks_available() * frag,
        s.files(),
        s.files_free(),
    ))
}

/// Bytes and inodes used under `dir` (not following symlinks, not crossing mounts).
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return (0, 0);
    };
    let dev = top.dev();
    let mut bytes = 0;
    let mut inodes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&d) else {
            continue;
        };
        if m.dev() != dev {
            continue;
        }
        bytes += m.blocks() * 512;
        inodes += 1;
        if m.is_dir() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

/// The node's eviction signals now, as kubelet reads them: `memory.available` is
/// capacity minus the working set (usage minus inactive file pages, from
/// /proc/meminfo), `nodefs.*` the filesystem of the state directory, `imagefs.*` that
/// of the image directory, `pid.available` the pid limit minus the processes.
pub fn eviction_readings(
    state_dir: &Path,
    image_dir: &Path,
    pods_cgroup: &Path,
) -> BTreeMap<crate::model::eviction::Signal, crate::model::eviction::Reading> {
    use crate::model::eviction::{Reading, Signal};
    let mut out = BTreeMap::new();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .map(|t| parse_meminfo(&t))
        .unwrap_or_default();
    if let Some(&total) = mem.get("MemTotal") {
        let (available, _) = memory_available(&mem);
        out.insert(
            Signal::MemoryAvailable,
            Reading {
                available,
                capacity: total,
            },
        );
    }
    if let Some(pods) = pods_memory(pods_cgroup) {
        out.insert(Signal::AllocatableMemoryAvailable, pods);
    }
    for (dir, bytes, inodes) in [
        (state_dir, Signal::NodefsAvailable, Signal::NodefsInodesFree),
        (
            image_dir,
            Signal::ImagefsAvailable,
            Signal::ImagefsInodesFree,
        ),
    ] {
        if let Some((capacity, available, files, free)) = filesystem(dir) {
            out.insert(
                bytes,
                Reading {
                    available,
                    capacity,
                },
            );
            if files > 0 {
                out.insert(
                    inodes,
                    Reading {
                        available: free,
                        capacity: files,
                    },
                );
            }
        }
    }
    let limit = ["/proc/sys/kernel/pid_max", "/proc/sys/kernel/threads-max"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok())
        .min();
    if let (Some(limit), Ok(info)) = (limit, nix::sys::sysinfo::sysinfo()) {
        let procs = u64::from(info.process_count());
        out.insert(
            Signal::PidAvailable,
            Reading {
                available: limit.saturating_sub(procs),
                capacity: limit,
            },
        );
    }
    out
}

/// What the pods may still use of their cgroup's memory limit (the node's
/// allocatable): `memory.max` less the working set, as kubelet's summary reports the
/// `pods` system container. None where the cgroup has no memory controller or no limit.
pub fn pods_memory(cgroup: &Path) -> Option<crate::model::eviction::Reading> {
    pods_memory_with(cgroup, cgroup_usage(cgroup).working_set?)
}

/// [`pods_memory`] with the working set already read.
pub fn pods_memory_with(
    cgroup: &Path,
    working_set: u64,
) -> Option<crate::model::eviction::Reading> {
    let max: u64 = std::fs::read_to_string(cgroup.join("memory.max"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(crate::model::eviction::Reading {
        available: max.saturating_sub(working_set),
        capacity: max,
    })
}

/// `(available, working set)` of the node's memory from /proc/meminfo, as kubelet
/// computes `memory.available`: capacity − (usage − inactive file pages).
pub fn memory_available(mem: &BTreeMap<String, u64>) -> (u64, u64) {
    let total = mem.get("MemTotal").copied().unwrap_or(0);
    let usage = total.saturating_sub(mem.get("MemFree").copied().unwrap_or(0));
    let working = usage.saturating_sub(mem.get("Inactive(file)").copied().unwrap_or(0));
    (total.saturating_sub(working), working)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pods_memory_is_their_limit_less_their_working_set() {
        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path();
        std::fs::write(cg.join("memory.current"), "300\n").unwrap();
        std::fs::write(cg.join("memory.stat"), "anon 200\ninactive_file 100\n").unwrap();
        assert_eq!(pods_memory(cg), None, "no memory.max: no controller");
        std::fs::write(cg.join("memory.max"), "max\n").unwrap();
        assert_eq!(pods_memory(cg), None, "no limit");
        std::fs::write(cg.join("memory.max"), "1000\n").unwrap();
        assert_eq!(
            pods_memory(cg),
            Some(crate::model::eviction::Reading {
                available: 800,
                capacity: 1000
            })
        );
    }

    #[test]
    fn pressure_files_parse() {
        let psi = parse_psi(
            "some avg10=22.74 avg60=27.93 avg300=39.13 total=4382024016\nfull avg10=0.00 avg60=0.50 avg300=0.00 total=12\n",
        )
        .unwrap();
        assert_eq!(psi.some.total, 4_382_024_016);
        assert_eq!(psi.some.avg10, 22.74);
        assert_eq!(psi.full.avg60, 0.5);
        assert_eq!(psi.full.total, 12);
        // The cpu file of the root has only a `some` line on older kernels.
        assert_eq!(
            parse_psi("some avg10=1.00 avg60=0.00 avg300=0.00 total=5\n")
                .unwrap()
                .full,
            PsiData::default()
        );
        assert_eq!(parse_psi(""), None);
        assert_eq!(parse_psi("some avg10=x\n"), None);
    }

    #[test]
    fn proc_files_parse() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(
            parse_proc_stat_cpu(stat),
            Some((100 + 5 + 50 + 3 + 2 + 1) * 10_000_000)
        );
        let mem = parse_meminfo(
            "MemTotal:       24684084 kB\nMemAvailable:   20000000 kB\nHugePages_Total:       0\n",
        );
        assert_eq!(mem["MemTotal"], 24684084 * 1024);
        assert_eq!(mem["HugePages_Total"], 0);
        let dev = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0\n  eth0: 693419128 100 2 0 0 0 0 0 1762447 50 3 0 0 0 0 0\n";
        let d = parse_net_dev(dev);
        assert_eq!(d["eth0"], (693419128, 2, 1762447, 3));
        assert_eq!(parse_flat("usage_usec 5\nuser_usec 3\n")["usage_usec"], 5);
    }

    #[test]
    fn a_cgroup_without_memory_reports_none_not_zero() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\n",
        )
        .unwrap();
        let u = cgroup_usage(dir.path());
        assert_eq!(u.cpu_ns, Some(1_500_000));
        assert_eq!((u.memory, u.working_set), (None, None));
        std::fs::write(dir.path().join("memory.current"), "4096000\n").unwrap();
        std::fs::write(
            dir.path().join("memory.stat"),
            "anon 1000\ninactive_file 96000\npgfault 7\npgmajfault 1\n",
        )
        .unwrap();
        let u = cgroup_usage(dir.path());
        assert_eq!(
            (u.memory, u.working_set, u.rss),
            (Some(4_096_000), Some(4_000_000), Some(1000))
        );
    }
}

//! Everything one cgroup v2 directory tells about its processes, as cAdvisor reads it
//! for kubelet's `/metrics/cadvisor`: `cpu.stat`, `cpu.max`, `cpu.weight`, the memory
//! files, `io.stat` (by device), the pressure files, `pids.max`, and the processes in
//! `cgroup.procs` with their threads and open files from `/proc`.

use std::collections::BTreeMap;
use std::path::Path;

use super::stats::{Psi, parse_flat, psi_in};

/// A limit file's value: a number, or `max` (none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Bytes(u64),
    Max,
}

/// Reads and writes of one block device, from `io.stat`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceIo {
    /// `/dev/<name>` where sysfs names it, else `major:minor`.
    pub device: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub reads: u64,
    pub writes: u64,
}

/// The processes of a cgroup (its own `cgroup.procs`, as cAdvisor counts them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Processes {
    pub processes: u64,
    pub threads: u64,
    pub file_descriptors: u64,
    pub sockets: u64,
}

/// One cgroup's readings; a file the cgroup lacks (a controller not enabled) is absent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CgroupStats {
    /// `cpu.stat`: usage_usec, user_usec, system_usec, nr_periods, nr_throttled,
    /// throttled_usec.
    pub cpu: BTreeMap<String, u64>,
    /// `cpu.max`: the quota (none for `max`) and the period, in microseconds.
    pub cpu_max: Option<(Option<u64>, u64)>,
    pub cpu_weight: Option<u64>,
    pub memory_current: Option<u64>,
    pub memory_peak: Option<u64>,
    pub swap_current: Option<u64>,
    pub memory_stat: BTreeMap<String, u64>,
    pub memory_events: BTreeMap<String, u64>,
    pub memory_max: Option<Limit>,
    pub memory_min: Option<Limit>,
    pub swap_max: Option<Limit>,
    pub io: Vec<DeviceIo>,
    pub psi: [Option<Psi>; 3],
    pub pids_max: Option<Limit>,
    pub processes: Processes,
}

/// Parses a single-value limit file (`max` or a number).
pub fn parse_limit(text: &str) -> Option<Limit> {
    match text.trim() {
        "max" => Some(Limit::Max),
        n => n.parse().ok().map(Limit::Bytes),
    }
}

/// Parses `cpu.max`: `<quota|max> <period>`.
pub fn parse_cpu_max(text: &str) -> Option<(Option<u64>, u64)> {
    let mut words = text.split_whitespace();
    let quota = match words.next()? {
        "max" => None,
        q => Some(q.parse().ok()?),
    };
    Some((quota, words.next()?.parse().ok()?))
}

/// Parses `io.stat` lines `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. ...`, naming
/// each device with `name(major, minor)`.
pub fn parse_io_stat(text: &str, name: impl Fn(&str) -> String) -> Vec<DeviceIo> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let dev = words.next()?;
            let mut io = DeviceIo {
                device: name(dev),
                ..Default::default()
            };
            for w in words {
                let (k, v) = w.split_once('=')?;
                let v: u64 = v.parse().ok()?;
                match k {
                    "rbytes" => io.read_bytes = v,
                    "wbytes" => io.write_bytes = v,
                    "rios" => io.reads = v,
                    "wios" => io.writes = v,
                    _ => {}
                }
            }
            Some(io)
        })
        .collect()
}

/// `/dev/<DEVNAME>` of block device `maj:min` from sysfs, else `maj:min`.
fn device_name(dev: &str) -> String {
    std::fs::read_to_string(format!("/sys/dev/block/{dev}/uevent"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("DEVNAME="))
                .map(|n| format!("/dev/{n}"))
        })
        .unwrap_or_else(|| dev.to_string())
}

/// The threads and open files of the processes `pids` from `/proc`.
fn processes(pids: &[u32]) -> Processes {
    let mut p = Processes {
        processes: pids.len() as u64,
        ..Default::default()
    };
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        p.threads += status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            p.file_descriptors += 1;
            if std::fs::read_link(fd.path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
            {
                p.sockets += 1;
            }
        }
    }
    p
}

/// Reads cgroup directory `dir`.
pub fn read(dir: &Path) -> CgroupStats {
    let text = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let number = |f: &str| text(f).and_then(|t| t.trim().parse::<u64>().ok());
    let flat = |f: &str| text(f).map(|t| parse_flat(&t)).unwrap_or_default();
    let pids: Vec<u32> = text("cgroup.procs")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    CgroupStats {
        cpu: flat("cpu.stat"),
        cpu_max: text("cpu.max").and_then(|t| parse_cpu_max(&t)),
        cpu_weight: number("cpu.weight"),
        memory_current: number("memory.current"),
        memory_peak: number("memory.peak"),
        swap_current: number("memory.swap.current"),
        memory_stat: flat("memory.stat"),
        memory_events: flat("memory.events"),
        memory_max: text("memory.max").and_then(|t| parse_limit(&t)),
        memory_min: text("memory.min").and_then(|t| parse_limit(&t)),
        swap_max: text("memory.swap.max").and_then(|t| parse_limit(&t)),
        io: text("io.stat")
            .map(|t| parse_io_stat(&t, device_name))
            .unwrap_or_default(),
        psi: psi_in(dir, ".pressure"),
        pids_max: text("pids.max").and_then(|t| parse_limit(&t)),
        processes: processes(&pids),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup_files_parse() {
        assert_eq!(parse_limit("max\n"), Some(Limit::Max));
        assert_eq!(parse_limit("1048576\n"), Some(Limit::Bytes(1 << 20)));
        assert_eq!(parse_limit("x"), None);
        assert_eq!(parse_cpu_max("max 100000\n"), Some((None, 100_000)));
        assert_eq!(parse_cpu_max("50000 100000"), Some((Some(50_000), 100_000)));
        assert_eq!(parse_cpu_max("50000"), None);
        let io = parse_io_stat(
            "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n253:1 rbytes=1 wbytes=0 rios=1 wios=0\n",
            |d| format!("dev{d}"),
        );
        assert_eq!(
            io[0],
            DeviceIo {
                device: "dev8:0".into(),
                read_bytes: 4096,
                write_bytes: 8192,
                reads: 1,
                writes: 2,
            }
        );
        assert_eq!(io.len(), 2);
    }

    #[test]
    fn a_directory_reads_as_a_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("cpu.stat"),
            "usage_usec 2000000\nuser_usec 1500000\n",
        )
        .unwrap();
        std::fs::write(d.join("cpu.max"), "20000 100000\n").unwrap();
        std::fs::write(d.join("memory.events"), "low 0\nmax 3\noom 1\noom_kill 1\n").unwrap();
        std::fs::write(d.join("cgroup.procs"), format!("{}\n", std::process::id())).unwrap();
        let s = read(d);
        assert_eq!(s.cpu["usage_usec"], 2_000_000);
        assert_eq!(s.cpu_max, Some((Some(20_000), 100_000)));
        assert_eq!(s.memory_events["oom_kill"], 1);
        assert_eq!(s.memory_current, None, "no memory controller");
        assert_eq!(s.processes.processes, 1);
        assert!(s.processes.threads >= 1 && s.processes.file_descriptors >= 3);
    }
}

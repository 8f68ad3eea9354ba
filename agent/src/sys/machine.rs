//! What the machine is: CPUs, memory, disk, kernel and OS, identity, and the address of
//! the interface that carries the default route.

use std::net::Ipv4Addr;
use std::path::Path;

/// Facts a node reports in its status, read from the running machine.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MachineFacts {
    pub hostname: String,
    pub cpus: u64,
    pub memory_bytes: u64,
    /// Total bytes of the filesystem holding the state directory.
    pub ephemeral_storage_bytes: u64,
    /// `(page size in bytes, total bytes)` per huge page size.
    pub hugepages: Vec<(u64, u64)>,
    pub kernel_version: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
    pub system_uuid: String,
    /// The node's images as `status.images` lists them (filled by the node
    /// controller from the image store; empty here).
    pub images: Vec<k8s_openapi::api::core::v1::ContainerImage>,
    /// The pressure conditions (filled by the node controller from the eviction
    /// signals; none here).
    pub pressure: crate::model::eviction::Pressure,
    /// `status.volumesInUse` (filled by the node controller from the pods' volume
    /// records; none here).
    pub volumes_in_use: Vec<String>,
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `MemTotal` from a `/proc/meminfo` text, in bytes.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix("MemTotal:")?;
        let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kib * 1024)
    })
}

/// `PRETTY_NAME` from an os-release text.
pub fn parse_os_release(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        Some(
            l.strip_prefix("PRETTY_NAME=")?
                .trim_matches('"')
                .to_string(),
        )
    })
}

/// The interface of the IPv4 default route in a `/proc/net/route` text.
pub fn parse_default_route_iface(route: &str) -> Option<String> {
    route.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_string())
    })
}

/// Reads the machine's facts; `state_dir` decides which filesystem is ephemeral storage.
pub fn read(state_dir: &Path) -> MachineFacts {
    let memory_bytes =
        parse_mem_total(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default()).unwrap_or(0);
    let ephemeral_storage_bytes = nix::sys::statvfs::statvfs(state_dir)
        .or_else(|_| nix::sys::statvfs::statvfs("/"))
        .map(|s| s.blocks() * s.fragment_size())
        .unwrap_or(0);
    let mut hugepages = Vec::new();
    for e in std::fs::read_dir("/sys/kernel/mm/hugepages")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(kb) = name
            .strip_prefix("hugepages-")
            .and_then(|s| s.strip_suffix("kB"))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        let count: u64 = read_trim(&format!("{}/nr_hugepages", e.path().display()))
            .parse()
            .unwrap_or(0);
        hugepages.push((kb * 1024, kb * 1024 * count));
    }
    hugepages.sort();
    MachineFacts {
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().to_lowercase())
            .unwrap_or_default(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u64)
            .unwrap_or(1),
        memory_bytes,
        ephemeral_storage_bytes,
        hugepages,
        kernel_version: read_trim("/proc/sys/kernel/osrelease"),
        os_image: parse_os_release(&std::fs::read_to_string("/etc/os-release").unwrap_or_default())
            .unwrap_or_else(|| "Linux".into()),
        machine_id: read_trim("/etc/machine-id"),
        boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
        system_uuid: read_trim("/sys/class/dmi/id/product_uuid").to_lowercase(),
        images: Vec::new(),
        pressure: Default::default(),
        volumes_in_use: Vec::new(),
    }
}

/// The IPv4 address of the interface that carries the default route, in this network
/// namespace — what kubelet reports as InternalIP when `--node-ip` is not given.
pub fn default_route_ipv4() -> Option<Ipv4Addr> {
    let iface = parse_default_route_iface(&std::fs::read_to_string("/proc/net/route").ok()?)?;
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        if a.interface_name != iface {
            return None;
        }
        a.address?.as_sockaddr_in().map(|s| s.ip())
    })
}

/// `major.minor` of a kernel release (`6.18.0-1-cloud-amd64` → (6, 18)).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        assert_eq!(
            parse_mem_total("MemTotal:       24684084 kB\nMemFree: 1 kB\n"),
            Some(24684084 * 1024)
        );
        assert_eq!(
            parse_os_release("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n")
                .as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(parse_default_route_iface(route).as_deref(), Some("eth0"));
        assert_eq!(parse_default_route_iface("Iface\tDestination\n"), None);
    }

    #[test]
    fn this_machine_has_cpus_and_memory() {
        let f = read(Path::new("/"));
        assert!(
            f.cpus >= 1 && f.memory_bytes > 0 && f.ephemeral_storage_bytes > 0,
            "{f:?}"
        );
        assert!(!f.kernel_version.is_empty());
    }
}

//! The eBPF object built from `ebpf/programs` and embedded in the binary, and the
//! loader for its programs.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf,
    maps::{MapError, PerCpuArray},
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError},
};
use kernlet_ebpf_common::{PROBE_CONNECT4, PROBE_MAP, ProbeCounters};

/// The eBPF ELF object, compiled for bpfel-unknown-none during the build.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kernlet-bpf"));

/// A BPF operation that failed, naming the program, map or cgroup.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The object could not be loaded (verifier, BTF, permissions).
    #[error("loading the embedded eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program is missing or was refused.
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    /// A program the object should contain is not there (a build mix-up).
    #[error("eBPF program {0} is not in the embedded object; rebuild kernlet")]
    MissingProgram(&'static str),
    /// A map is missing or could not be read.
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    /// A map the object should contain is not there.
    #[error("eBPF map {0} is not in the embedded object; rebuild kernlet")]
    MissingMap(&'static str),
    /// The cgroup to attach to could not be opened.
    #[error("opening cgroup {path} to attach eBPF programs: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `dir` is on a bpffs.
pub fn on_bpffs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::FsType(BPF_FS_MAGIC))
}

/// Where a node's bpffs is mounted by convention (systemd mounts one there; on
/// machines where nothing does, kernlet does, as Cilium does).
pub const STANDARD_BPFFS: &str = "/sys/fs/bpf";

/// Makes `dir` a place to pin BPF objects: created when missing, and when it is not on
/// a bpffs one is mounted there (an instance of its own; pins live as long as the mount).
/// A `dir` under /sys/fs/bpf where no bpffs is mounted gets one mounted at
/// /sys/fs/bpf first: sysfs takes no new directories.
pub fn ensure_bpffs(dir: &Path) -> std::io::Result<()> {
    ensure_bpffs_with(dir, Path::new(STANDARD_BPFFS))
}

/// [`ensure_bpffs`] with the conventional bpffs place at `standard`.
pub fn ensure_bpffs_with(dir: &Path, standard: &Path) -> std::io::Result<()> {
    if dir.starts_with(standard) && standard.is_dir() && !on_bpffs(standard) {
        mount_bpffs(standard).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "{} is not a bpffs and mounting one there failed ({e}); mount it (mount -t bpf bpffs {}) or pass another --bpffs-dir",
                    standard.display(),
                    standard.display()
                ),
            )
        })?;
        tracing::info!(
            dir = %standard.display(),
            "no bpffs was mounted at {}: mounted one (as systemd would) to pin BPF objects under it",
            standard.display()
        );
    }
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Err(std::io::Error::new(
            e.kind(),
            format!(
                "cannot create {} ({e}); mount a bpffs on its parent (mount -t bpf bpffs /sys/fs/bpf) or pass another --bpffs-dir",
                dir.display()
            ),
        ));
    }
    if on_bpffs(dir) {
        return Ok(());
    }
    mount_bpffs(dir)?;
    tracing::info!(dir = %dir.display(), "mounted a bpffs to pin the load-balancer's maps in");
    Ok(())
}

fn mount_bpffs(at: &Path) -> std::io::Result<()> {
    nix::mount::mount(
        Some("bpffs"),
        at,
        Some("bpf"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
}

/// The probe program attached to one cgroup; detached when dropped.
pub struct Probe {
    ebpf: Ebpf,
}

impl Probe {
    /// Loads the embedded object and attaches the `connect4` probe to `cgroup`.
    pub fn attach(cgroup: &Path) -> Result<Self, BpfError> {
        let mut ebpf = Ebpf::load(EBPF_OBJECT)?;
        let cgroup_fd = std::fs::File::open(cgroup).map_err(|source| BpfError::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        })?;
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(PROBE_CONNECT4)
            .ok_or(BpfError::MissingProgram(PROBE_CONNECT4))?
            .try_into()
            .map_err(|source| BpfError::Program {
                name: PROBE_CONNECT4,
                source,
            })?;
        let prog_err = |source| BpfError::Program {
            name: PROBE_CONNECT4,
            source,
        };
        program.load().map_err(prog_err)?;
        program
            .attach(cgroup_fd, CgroupAttachMode::Single)
            .map_err(prog_err)?;
        Ok(Self { ebpf })
    }

    /// The counters the probe has kept since it was attached, summed over CPUs.
    pub fn counters(&self) -> Result<ProbeCounters, BpfError> {
        let map = self
            .ebpf
            .map(PROBE_MAP)
            .ok_or(BpfError::MissingMap(PROBE_MAP))?;
        let map_err = |source| BpfError::Map {
            name: PROBE_MAP,
            source,
        };
        let array: PerCpuArray<_, ProbeCounters> = PerCpuArray::try_from(map).map_err(map_err)?;
        let per_cpu = array.get(&0, 0).map_err(map_err)?;
        Ok(ProbeCounters {
            connect4: per_cpu.iter().map(|c| c.connect4).sum(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_object_is_a_bpf_elf_with_the_probe() {
        assert_eq!(&EBPF_OBJECT[..4], b"\x7fELF");
        // e_machine at offset 18: 247 = EM_BPF.
        assert_eq!(u16::from_le_bytes([EBPF_OBJECT[18], EBPF_OBJECT[19]]), 247);
        let needle = PROBE_CONNECT4.as_bytes();
        assert!(
            EBPF_OBJECT.windows(needle.len()).any(|w| w == needle),
            "probe program symbol missing"
        );
    }
}

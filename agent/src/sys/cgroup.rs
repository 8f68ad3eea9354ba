//! cgroup v2: finding the unified mount and managing the subtrees kernlet creates.
//!
//! Machines with hybrid cgroups mount cgroup2 somewhere other than `/sys/fs/cgroup`
//! (here: `/sys/fs/cgroup/unified`), so the mount always comes from mountinfo. kernlet
//! writes only into cgroups it created.

use std::path::{Path, PathBuf};

/// A cgroup operation that failed, with the path it failed on.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup2 filesystem is mounted.
    #[error(
        "no cgroup2 filesystem in /proc/self/mountinfo; mount one (mount -t cgroup2 none \
         /sys/fs/cgroup/unified) or boot with systemd.unified_cgroup_hierarchy=1"
    )]
    NoCgroup2,
    /// A file or directory of the cgroup tree could not be used.
    #[error("cgroup {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Finds the mount point of the first cgroup2 filesystem in a mountinfo text.
///
/// The format is `id parent major:minor root mountpoint options [optional...] - fstype
/// source superoptions`; the mount point may contain octal escapes like `\040`.
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(d)) = (bytes[i], octal) {
            let value = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(v) = u8::try_from(value) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup2 mount point of this process's mount namespace.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(io_err("read", path))?;
    parse_cgroup2_mount(&text).ok_or(CgroupError::NoCgroup2)
}

/// A cgroup v2 directory kernlet owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates (or adopts) the cgroup at `relative` below the cgroup2 `mount`.
    pub fn create(mount: &Path, relative: &Path) -> Result<Self, CgroupError> {
        let path = mount.join(relative);
        std::fs::create_dir_all(&path).map_err(io_err("create", &path))?;
        Ok(Self { path })
    }

    /// Refers to an existing cgroup directory without creating it.
    pub fn open(path: PathBuf) -> Self {
        Self { path }
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Controllers available in this cgroup (`cgroup.controllers`).
    pub fn controllers(&self) -> Result<Vec<String>, CgroupError> {
        let file = self.path.join("cgroup.controllers");
        let text = std::fs::read_to_string(&file).map_err(io_err("read", &file))?;
        Ok(text.split_whitespace().map(str::to_string).collect())
    }

    /// Moves a process into this cgroup.
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        let file = self.path.join("cgroup.procs");
        std::fs::write(&file, pid.to_string()).map_err(io_err("write", &file))
    }

    /// Processes directly in this cgroup.
    pub fn processes(&self) -> Result<Vec<u32>, CgroupError> {
        let file = self.path.join("cgroup.procs");
        let text = std::fs::read_to_string(&file).map_err(io_err("read", &file))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Writes an interface file of this cgroup (`pids.max`, `memory.max`, ...).
    pub fn write(&self, file: &str, value: &str) -> Result<(), CgroupError> {
        let path = self.path.join(file);
        std::fs::write(&path, value).map_err(io_err("write", &path))
    }

    /// Reads an interface file of this cgroup.
    pub fn read(&self, file: &str) -> Result<String, CgroupError> {
        let path = self.path.join(file);
        std::fs::read_to_string(&path).map_err(io_err("read", &path))
    }

    /// Kills every process in this cgroup and its descendants (`cgroup.kill`).
    pub fn kill(&self) -> Result<(), CgroupError> {
        let file = self.path.join("cgroup.kill");
        std::fs::write(&file, "1").map_err(io_err("write", &file))
    }

    /// Whether any process is in this cgroup or below (`cgroup.events` populated).
    pub fn populated(&self) -> bool {
        std::fs::read_to_string(self.path.join("cgroup.events"))
            .is_ok_and(|t| t.lines().any(|l| l.trim() == "populated 1"))
    }

    /// Removes this cgroup and its child cgroups, deepest first. Processes still inside
    /// make the kernel refuse (EBUSY); the caller ends them first.
    pub fn remove(&self) -> Result<(), CgroupError> {
        remove_tree(&self.path)
    }
}

fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", dir)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_layout_finds_the_unified_mount() {
        assert_eq!(
            parse_cgroup2_mount(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn optional_fields_and_escapes() {
        let line = "30 1 0:26 / /sys/fs/my\\040cgroup rw shared:4 master:1 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_mount(line),
            Some(PathBuf::from("/sys/fs/my cgroup"))
        );
        assert_eq!(
            parse_cgroup2_mount("35 31 0:32 / /x rw - cgroup cgroup rw\n"),
            None
        );
    }

    #[test]
    fn tree_removal_on_a_plain_directory() {
        // A plain directory behaves like a cgroup tree with no processes for rmdir order.
        let tmp = tempfile::tempdir().unwrap();
        let cg = Cgroup::create(tmp.path(), Path::new("a/b/c")).unwrap();
        assert!(cg.path().is_dir());
        Cgroup::open(tmp.path().join("a")).remove().unwrap();
        assert!(!tmp.path().join("a").exists());
        // Removing what is already gone is fine: sweeps may race with guards.
        Cgroup::open(tmp.path().join("a")).remove().unwrap();
    }
}

//! Filesystem primitives image layers need beyond `std`: overlayfs whiteouts and opaque
//! directories, FIFOs, and times set without following symlinks.

use std::io;
use std::path::Path;

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;

fn io_err(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// An overlayfs whiteout at `path`: a character device 0:0 hides the same name in the
/// layers below.
pub fn make_whiteout(path: &Path) -> io::Result<()> {
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(io_err)
}

/// Marks `dir` opaque for overlayfs: nothing below it in lower layers shows through.
pub fn set_opaque(dir: &Path) -> io::Result<()> {
    xattr::set(dir, "trusted.overlay.opaque", b"y")
}

/// Whether `dir` is marked opaque.
pub fn is_opaque(dir: &Path) -> bool {
    matches!(xattr::get(dir, "trusted.overlay.opaque"), Ok(Some(v)) if v == b"y")
}

/// Sets the extended attribute `name` of `path` itself (a symlink is not followed).
pub fn set_xattr_nofollow(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    xattr::set(path, name, value)
}

/// A FIFO with `mode`.
pub fn make_fifo(path: &Path, mode: u32) -> io::Result<()> {
    nix::unistd::mkfifo(path, Mode::from_bits_truncate(mode & 0o7777)).map_err(io_err)
}

/// Sets access and modification time of `path` itself (a symlink is not followed).
pub fn set_mtime_nofollow(path: &Path, seconds: i64) -> io::Result<()> {
    let t = TimeSpec::new(seconds, 0);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io_err)
}

/// A device node of the host, for privileged containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDevice {
    pub path: std::path::PathBuf,
    /// `c` or `b`.
    pub kind: char,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
}

/// The character and block devices under `/dev`, as containerd gives privileged
/// containers (leaving out pts, shm, mqueue, fd and the console, which the container
/// gets its own of).
pub fn host_devices(dev: &Path) -> Vec<HostDevice> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    let mut out = Vec::new();
    let mut stack = vec![dev.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if dir == dev
                && ["pts", "shm", "mqueue", "fd", "console", ".lxc", ".udev"]
                    .contains(&name.as_str())
            {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let ft = m.file_type();
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_char_device() || ft.is_block_device() {
                out.push(HostDevice {
                    path,
                    kind: if ft.is_char_device() { 'c' } else { 'b' },
                    major: nix::sys::stat::major(m.rdev()),
                    minor: nix::sys::stat::minor(m.rdev()),
                    mode: m.mode() & 0o777,
                });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

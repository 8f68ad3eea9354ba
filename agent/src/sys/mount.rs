//! Mounts a container's helper process makes in its own mount namespace: they vanish
//! with it, so nothing is left mounted on the node when a container ends.

use std::io;
use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

fn io_err(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Moves the calling (single-threaded) process into a private copy of the mount
/// namespace: later mounts neither propagate to the node nor back.
pub fn private_namespace() -> io::Result<()> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(io_err)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(io_err)
}

/// Mounts a tmpfs of `size_bytes` with mode 1777 at `target` (a pod's /dev/shm), unless
/// one is there already.
pub fn shm(target: &Path, size_bytes: u64) -> io::Result<()> {
    tmpfs(target, Some(size_bytes), 0o1777, false)
}

/// Mounts a tmpfs at `target` (nosuid, nodev; noexec unless `exec`) with its root's
/// `mode` and at most `size_bytes` (the kernel's default, half the memory, when
/// `None`), unless a tmpfs is there already.
pub fn tmpfs(target: &Path, size_bytes: Option<u64>, mode: u32, exec: bool) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    if nix::sys::statfs::statfs(target)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
    {
        return Ok(());
    }
    let mut opts = format!("mode={mode:o}");
    if let Some(size) = size_bytes {
        opts.push_str(&format!(",size={size}"));
    }
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if !exec {
        flags |= MsFlags::MS_NOEXEC;
    }
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        flags,
        Some(opts.as_str()),
    )
    .map_err(io_err)
}

/// Unmounts `target` (detached) if something is mounted there.
pub fn unmount(target: &Path) -> io::Result<()> {
    match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(io_err(e)),
    }
}

/// Bind-mounts `source` on `target`.
pub fn bind(source: &Path, target: &Path) -> io::Result<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(io_err)
}

/// Mounts an overlayfs at `target`. `lower` (top first) are names relative to
/// `layers_dir`, which becomes the working directory so the option string stays short
/// (the kernel takes one page of options).
pub fn overlay(
    target: &Path,
    layers_dir: &Path,
    lower: &[String],
    upper: &Path,
    work: &Path,
) -> io::Result<()> {
    std::env::set_current_dir(layers_dir)?;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    if opts.len() >= 4096 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} layers do not fit one overlay mount's options",
                lower.len()
            ),
        ));
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(io_err)
}

//! Mounts: those a container's helper process makes in its own mount namespace (they
//! vanish with it, so nothing is left mounted on the node when a container ends), and
//! the few a pod keeps on the node until it is removed (its /dev/shm, memory volumes,
//! subPath bind mounts), which [`unmount_under`] takes away.

use std::io;
use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

fn io_err(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// The mount points of this process's mount namespace, from
/// `/proc/self/mountinfo` (octal escapes of spaces decoded).
fn mount_points() -> io::Result<Vec<std::path::PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|p| std::path::PathBuf::from(p.replace("\\040", " ")))
        .collect())
}

/// Moves the calling (single-threaded) process into a copy of the mount namespace
/// that receives the node's later mounts and unmounts (slave): its own mounts never
/// propagate to the node, while a container's `HostToContainer` volume sees what the
/// node mounts below it (and a volume the node unmounts goes here too).
pub fn slave_namespace() -> io::Result<()> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(io_err)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(io_err)
}

/// As [`slave_namespace`], except for the mounts at `keep`: they stay in the node's
/// peer groups, so what the container mounts below them reaches the node
/// (`Bidirectional`); every other mount receives only, so the shim's own mounts (the
/// container's root, its cgroup view) never reach the node.
pub fn slave_namespace_except(keep: &[std::path::PathBuf]) -> io::Result<()> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(io_err)?;
    let mut points: Vec<std::path::PathBuf> = mount_points()?
        .into_iter()
        .filter(|p| !keep.iter().any(|k| p.starts_with(k)))
        .collect();
    points.dedup();
    for p in points {
        // A mount hidden under another cannot be reached by path; what covers it is
        // made a slave in its turn.
        let _ = mount(
            None::<&str>,
            &p,
            None::<&str>,
            MsFlags::MS_SLAVE,
            None::<&str>,
        );
    }
    Ok(())
}

/// Takes `target` and every mount below it out of their peer groups, then detaches
/// them: unmounting a shared mount would unmount its peers' copies on the node too.
pub fn unmount_private(target: &Path) -> io::Result<()> {
    match mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    ) {
        Ok(()) => unmount(target),
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(io_err(e)),
    }
}

/// [`unmount_private`] of every mount below `dir`, the shallowest first (a deeper one
/// goes with the one above it).
pub fn unmount_private_under(dir: &Path) -> io::Result<()> {
    let mut points: Vec<std::path::PathBuf> = mount_points()?
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| p.components().count());
    for p in points {
        unmount_private(&p)?;
    }
    Ok(())
}

/// Bind-mounts `source` and the mounts below it on `target`; a shared source makes
/// `target` a peer of it.
pub fn rbind(source: &Path, target: &Path) -> io::Result<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(io_err)
}

/// The mount a path is on, and how it propagates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountPropagation {
    pub mount_point: String,
    /// In a peer group (`shared:N`).
    pub shared: bool,
    /// Receives from a master (`master:N`).
    pub slave: bool,
}

/// The mount of `path` in a mountinfo text (the deepest mount point above it; the last
/// mounted where several share it), with its propagation.
pub fn propagation_of(mountinfo: &str, path: &Path) -> Option<MountPropagation> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, _) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let point = fields.get(4)?.replace("\\040", " ");
            let optional = fields.get(6..).unwrap_or_default();
            path.starts_with(&point).then(|| MountPropagation {
                shared: optional.iter().any(|f| f.starts_with("shared:")),
                slave: optional.iter().any(|f| f.starts_with("master:")),
                mount_point: point,
            })
        })
        .fold(None, |best: Option<MountPropagation>, m| match best {
            Some(b) if b.mount_point.len() > m.mount_point.len() => Some(b),
            _ => Some(m),
        })
}

/// Makes `dir` a shared mount, as kubelet makes its root directory at start: when the
/// mount it is on does not propagate, `dir` is bound on itself and that bind made
/// recursively shared — so a pod's Bidirectional mount below it (a CSI node plugin's
/// publishes) reaches the node, and the node's mounts reach HostToContainer pods.
/// Returns whether it had to.
pub fn make_rshared(dir: &Path) -> io::Result<bool> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    if propagation_of(&mountinfo, dir).is_some_and(|m| m.shared) {
        return Ok(false);
    }
    if !is_mount_point(dir) {
        rbind(dir, dir)?;
    }
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(io_err)?;
    Ok(true)
}

/// A volume over a container's `/dev` (the node's `/dev` by hostPath, as CSI and
/// device plugins mount it), done from the container's mount namespace before it
/// enters its root: `source` bound on `dev` (the root's `/dev`, which the runtime
/// filled before) and made private, so nothing mounted below it reaches the node,
/// read-only when asked; then the container's own `/dev/pts` (a new devpts instance),
/// its pod's `/dev/shm` and a new `/dev/mqueue` over it — what runc gives a container
/// with a `/dev` bind mount — each where the volume has the directory (nothing is
/// created in it: it is the node's).
pub fn dev_volume(source: &Path, dev: &Path, shm: &Path, read_only: bool) -> io::Result<()> {
    rbind(source, dev)?;
    let private = MsFlags::MS_PRIVATE | MsFlags::MS_REC;
    mount(None::<&str>, dev, None::<&str>, private, None::<&str>).map_err(io_err)?;
    if read_only {
        let ro = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        mount(None::<&str>, dev, None::<&str>, ro, None::<&str>).map_err(io_err)?;
    }
    let nosuid_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    if dev.join("pts").is_dir() {
        mount(
            Some("devpts"),
            &dev.join("pts"),
            Some("devpts"),
            nosuid_noexec,
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        )
        .map_err(io_err)?;
    }
    if dev.join("shm").is_dir() {
        rbind(shm, &dev.join("shm"))?;
    }
    if dev.join("mqueue").is_dir() {
        mount(
            Some("mqueue"),
            &dev.join("mqueue"),
            Some("mqueue"),
            nosuid_noexec | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(io_err)?;
    }
    Ok(())
}

/// Whether something is mounted at `path` itself (this process's mount namespace).
pub fn is_mount_point(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| propagation_of(&m, path))
        .is_some_and(|m| Path::new(&m.mount_point) == path)
}

/// Mounts a tmpfs of `size_bytes` with mode 1777 at `target` (a pod's /dev/shm), unless
/// one is there already.
pub fn shm(target: &Path, size_bytes: u64) -> io::Result<()> {
    tmpfs(target, Some(size_bytes), 0o1777, false)
}

/// Mounts a tmpfs at `target` (nosuid, nodev; noexec unless `exec`) with its root's
/// `mode` and at most `size_bytes` (the kernel's default, half the memory, when
/// `None`), unless a tmpfs of its own is mounted there already (a directory of a tmpfs
/// parent — `/run` on most nodes — is not).
pub fn tmpfs(target: &Path, size_bytes: Option<u64>, mode: u32, exec: bool) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::create_dir_all(target)?;
    let own_mount = match (
        std::fs::metadata(target),
        target.parent().map(std::fs::metadata),
    ) {
        (Ok(t), Some(Ok(p))) => t.dev() != p.dev(),
        _ => false,
    };
    if own_mount
        && nix::sys::statfs::statfs(target)
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

/// Bind-mounts `source` on `target` read-only: nothing opened through `target` (nor
/// through a `/proc/<pid>/exe` link of a process started from it) can be written.
pub fn bind_read_only(source: &Path, target: &Path) -> io::Result<()> {
    bind(source, target)?;
    let ro = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
    mount(None::<&str>, target, None::<&str>, ro, None::<&str>).map_err(|e| {
        let _ = unmount(target);
        io_err(e)
    })
}

/// Mounts an image's layers (`lower`, top first, names in `layers_dir`) read-only at
/// `target`: an overlay without an upper layer, or — overlayfs needs two layers for
/// that — the one layer bound read-only.
pub fn image_read_only(target: &Path, layers_dir: &Path, lower: &[String]) -> io::Result<()> {
    match lower {
        [] => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an image without layers",
        )),
        [one] => bind_read_only(&layers_dir.join(one), target),
        many => {
            std::env::set_current_dir(layers_dir)?;
            let opts = format!("lowerdir={}", many.join(":"));
            mount(
                Some("overlay"),
                target,
                Some("overlay"),
                MsFlags::MS_RDONLY,
                Some(opts.as_str()),
            )
            .map_err(io_err)
        }
    }
}

/// Whether `path` is on a read-only mount.
pub fn read_only(path: &Path) -> bool {
    nix::sys::statvfs::statvfs(path)
        .is_ok_and(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
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

/// Opens `rel` below `root` without ever leaving `root` — no `..` above it, no
/// symlink pointing out of it, no magic links (openat2 with RESOLVE_BENEATH) —
/// creating missing directories on the way with the permission bits `create` gives
/// (kubelet gives a subPath the mode of its volume's root), whatever the umask.
/// Returns an `O_PATH` descriptor of what it found, so what is used is what was
/// checked.
pub fn open_beneath(
    root: &Path,
    rel: &Path,
    create: Option<u32>,
) -> io::Result<std::os::fd::OwnedFd> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
    let how = || {
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS)
    };
    let root_fd = open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(io_err)?;
    if let Some(mode) = create {
        let mut prefix = std::path::PathBuf::new();
        for part in rel.components() {
            let std::path::Component::Normal(name) = part else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is not a plain relative path", rel.display()),
                ));
            };
            let parent = if prefix.as_os_str().is_empty() {
                None
            } else {
                Some(openat2(&root_fd, prefix.as_path(), how()).map_err(io_err)?)
            };
            prefix.push(name);
            match openat2(&root_fd, prefix.as_path(), how()) {
                Ok(_) => {}
                Err(nix::errno::Errno::ENOENT) => {
                    let dir = parent.as_ref().map_or_else(
                        || std::os::fd::AsFd::as_fd(&root_fd),
                        std::os::fd::AsFd::as_fd,
                    );
                    match nix::sys::stat::mkdirat(
                        dir,
                        name,
                        nix::sys::stat::Mode::from_bits_truncate(mode),
                    ) {
                        Ok(()) => {
                            // The umask took bits off: set them on the directory
                            // itself, opened beneath the root (never a link swapped in).
                            let made = openat2(
                                &root_fd,
                                prefix.as_path(),
                                OpenHow::new()
                                    .flags(
                                        OFlag::O_RDONLY
                                            | OFlag::O_DIRECTORY
                                            | OFlag::O_NOFOLLOW
                                            | OFlag::O_CLOEXEC,
                                    )
                                    .resolve(
                                        ResolveFlag::RESOLVE_BENEATH
                                            | ResolveFlag::RESOLVE_NO_MAGICLINKS,
                                    ),
                            )
                            .map_err(io_err)?;
                            nix::sys::stat::fchmod(
                                &made,
                                nix::sys::stat::Mode::from_bits_truncate(mode),
                            )
                            .map_err(io_err)?;
                        }
                        Err(nix::errno::Errno::EEXIST) => {}
                        Err(e) => return Err(io_err(e)),
                    }
                }
                Err(e) => return Err(io_err(e)),
            }
        }
    }
    openat2(&root_fd, rel, how()).map_err(io_err)
}

/// Bind-mounts what `fd` (from [`open_beneath`]) refers to on `target` (created as
/// a directory or an empty file to match; a mount already there is replaced).
pub fn bind_fd(fd: &std::os::fd::OwnedFd, target: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let st = nix::sys::stat::fstat(fd).map_err(io_err)?;
    let is_dir = nix::sys::stat::SFlag::from_bits_truncate(st.st_mode)
        .contains(nix::sys::stat::SFlag::S_IFDIR);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    unmount(target)?;
    if is_dir {
        std::fs::create_dir_all(target)?;
    } else if !target.exists() {
        std::fs::write(target, b"")?;
    }
    let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
    mount(
        Some(source.as_str()),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(io_err)
}

/// Unmounts everything mounted at or below `dir` in this mount namespace, the
/// deepest first.
pub fn unmount_under(dir: &Path) -> io::Result<()> {
    let mut points: Vec<std::path::PathBuf> = mount_points()?
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        unmount(&p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paths_mount_and_its_propagation_are_read_from_mountinfo() {
        let info = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:26 / /var/lib rw shared:5 - ext4 /dev/sdb rw
31 30 0:27 / /var/lib/kubelet rw master:7 - tmpfs tmpfs rw
40 22 0:30 / /srv rw - tmpfs tmpfs rw
41 40 0:31 / /srv rw shared:9 - tmpfs tmpfs rw
";
        let at = |p: &str| propagation_of(info, Path::new(p)).unwrap();
        assert_eq!(
            at("/var/lib/kubelet/pods/x"),
            MountPropagation {
                mount_point: "/var/lib/kubelet".into(),
                shared: false,
                slave: true
            }
        );
        assert!(at("/var/lib/other").shared);
        assert_eq!(
            at("/var/libx").mount_point,
            "/",
            "a path prefix is not a mount"
        );
        assert!(
            at("/srv/data").shared,
            "the last of two mounts at one point wins"
        );
        assert!(!at("/etc").slave);
    }
}

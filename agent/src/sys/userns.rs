//! User namespaces for `hostUsers: false` pods: the pod's user namespace, made with
//! its ID mapping and holding the pod's network, UTS and IPC namespaces (so the
//! container's root may mount sysfs and mqueue, and set the pod's sysctls), and
//! idmapped mounts that show node files owned by node root as owned by the
//! container's root (`open_tree` + `mount_setattr(MOUNT_ATTR_IDMAP)`).
#![allow(
    unsafe_code,
    reason = "fork, and the new mount API (open_tree, mount_setattr, move_mount), have no safe wrapper"
)]

use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::Path;

use nix::sched::{CloneFlags, unshare};

/// One contiguous ID range: container IDs `0..length` are node IDs
/// `host_id..host_id + length` (the same for users and groups, as kubelet maps them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdRange {
    pub host_id: u32,
    pub length: u32,
}

impl IdRange {
    /// The `uid_map`/`gid_map` line.
    pub fn map_line(&self) -> String {
        format!("0 {} {}\n", self.host_id, self.length)
    }
}

fn io_err(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

// linux/mount.h (the libc crate exports the syscall numbers, not these).
const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cstr(path: &Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
}

/// Mounts at `target` a view of `source` (and the mounts below it) in which files
/// owned by node IDs read as owned by the IDs the user namespace `userns` maps them
/// to: node `host_id + n` shows as `n` inside the pod, and what the pod's root
/// writes lands as `host_id` on the node. `target` is created (a file for a file).
pub fn idmapped_bind(source: &Path, target: &Path, userns: &OwnedFd) -> io::Result<()> {
    let meta = std::fs::metadata(source)?;
    if meta.is_dir() {
        std::fs::create_dir_all(target)?;
    } else {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(target)?;
    }
    let src = cstr(source)?;
    // SAFETY: open_tree reads the NUL-terminated path and returns a new descriptor.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE,
        )
    };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    let tree_fd = i32::try_from(tree).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(tree_fd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr reads `attr` (its size is passed) and the empty path.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "idmapping {} (its filesystem must support idmapped mounts: ext4, xfs, btrfs, tmpfs from Linux 6.3): {e}",
                source.display()
            ),
        ));
    }
    let dst = cstr(target)?;
    // SAFETY: move_mount reads the two NUL-terminated paths.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn send(fd: &OwnedFd, byte: u8) -> io::Result<()> {
    std::fs::File::from(fd.try_clone()?).write_all(&[byte])
}

fn receive(fd: &OwnedFd) -> io::Result<Vec<u8>> {
    let mut buf = [0u8; 64];
    let n = std::fs::File::from(fd.try_clone()?).read(&mut buf)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the pod's namespace holder ended early",
        ));
    }
    Ok(buf[..n].to_vec())
}

/// In the calling (single-threaded) sandbox helper: makes the pod's user namespace
/// with `range` mapped, and in it new network, UTS and IPC namespaces (hostname set,
/// loopback up), and — with `pause_cgroup` — a PID namespace held by a pause process
/// moved into that cgroup; pins each namespace under `dir` (`user`, `net`, `uts`,
/// `ipc`). Returns the pause process's pid on the node.
///
/// A child process unshares the user namespace (its mapping must be written by a
/// process of the parent namespace: this one), then the others from inside it, so
/// they belong to the pod's user namespace; this process pins them from outside.
pub fn create_pod_namespaces(
    dir: &Path,
    hostname: &str,
    range: IdRange,
    pause_cgroup: Option<&Path>,
) -> io::Result<Option<u32>> {
    std::fs::create_dir_all(dir)?;
    let (to_child_r, to_child_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io_err)?;
    let (to_parent_r, to_parent_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io_err)?;
    // SAFETY: the sandbox helper is single-threaded, so the child may run any code.
    match unsafe { nix::unistd::fork() }.map_err(io_err)? {
        nix::unistd::ForkResult::Child => {
            drop((to_child_w, to_parent_r));
            let code = match child(&to_child_r, &to_parent_w, hostname, pause_cgroup.is_some()) {
                Ok(()) => 0,
                Err(e) => {
                    let _ = std::fs::File::from(to_parent_w).write_all(format!("E{e}").as_bytes());
                    1
                }
            };
            // SAFETY: _exit ends the forked child without running the parent's exit
            // handlers or destructors twice.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop((to_child_r, to_parent_w));
            let result = parent(child, &to_child_w, &to_parent_r, dir, range, pause_cgroup);
            drop(to_child_w);
            let _ = nix::sys::wait::waitpid(child, None);
            result
        }
    }
}

fn child(
    from_parent: &OwnedFd,
    to_parent: &OwnedFd,
    hostname: &str,
    pause: bool,
) -> io::Result<()> {
    unshare(CloneFlags::CLONE_NEWUSER).map_err(io_err)?;
    send(to_parent, b'U')?;
    // The parent wrote the mapping.
    receive(from_parent)?;
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC)
        .map_err(io_err)?;
    nix::unistd::sethostname(hostname).map_err(io_err)?;
    super::ns::loopback_up()?;
    let mut report = String::from("R");
    if pause {
        unshare(CloneFlags::CLONE_NEWPID).map_err(io_err)?;
        // SAFETY: this child is single-threaded too.
        match unsafe { nix::unistd::fork() }.map_err(io_err)? {
            nix::unistd::ForkResult::Parent { child } => report.push_str(&child.to_string()),
            nix::unistd::ForkResult::Child => super::ns::pause_loop(),
        }
    }
    std::fs::File::from(to_parent.try_clone()?).write_all(report.as_bytes())?;
    // Held until the parent pinned the namespaces (it closes its end).
    let _ = receive(from_parent);
    Ok(())
}

fn parent(
    child: nix::unistd::Pid,
    to_child: &OwnedFd,
    from_child: &OwnedFd,
    dir: &Path,
    range: IdRange,
    pause_cgroup: Option<&Path>,
) -> io::Result<Option<u32>> {
    let failed = |answer: &[u8]| {
        io::Error::other(format!(
            "making the pod's namespaces: {}",
            String::from_utf8_lossy(answer.strip_prefix(b"E").unwrap_or(answer))
        ))
    };
    let answer = receive(from_child)?;
    if answer != b"U" {
        return Err(failed(&answer));
    }
    for file in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{child}/{file}"), range.map_line())
            .map_err(|e| io::Error::new(e.kind(), format!("writing the pod's {file}: {e}")))?;
    }
    send(to_child, b'M')?;
    let answer = receive(from_child)?;
    let Some(rest) = answer.strip_prefix(b"R") else {
        return Err(failed(&answer));
    };
    let pause = if rest.is_empty() {
        None
    } else {
        Some(
            String::from_utf8_lossy(rest)
                .parse::<u32>()
                .map_err(|_| io::Error::other("the pause process did not report its pid"))?,
        )
    };
    if let (Some(pid), Some(cgroup)) = (pause, pause_cgroup)
        && let Err(e) = std::fs::write(cgroup.join("cgroup.procs"), pid.to_string())
    {
        // Not left running outside the pod's cgroup.
        if let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        return Err(io::Error::new(
            e.kind(),
            format!("moving the pause process into {}: {e}", cgroup.display()),
        ));
    }
    for kind in ["user", "net", "uts", "ipc"] {
        super::ns::pin(
            &format!("/proc/{child}/ns/{kind}"),
            &super::ns::pin_path(dir, kind),
        )?;
    }
    Ok(pause)
}

/// Whether this kernel makes user namespaces and idmapped mounts of tmpfs (where
/// the pod's secrets and service-account tokens live): Linux 6.3 or later.
pub fn supported() -> bool {
    let Some(max) = super::lsm::max_user_namespaces() else {
        return false;
    };
    max > 0 && kernel_at_least(6, 3)
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    super::machine::kernel_version(&release).is_some_and(|v| v >= (major, minor))
}

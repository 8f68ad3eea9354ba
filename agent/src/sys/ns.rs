//! Pod namespaces: network, IPC and UTS namespaces created for a pod and pinned by bind
//! mounts of their `/proc/<pid>/ns/*` files, so they outlive every process in them and
//! containers join them by path.
//!
//! Creating namespaces needs `unshare` in a single-threaded process; the caller runs
//! [`create_here`] in a child of its own (kernlet re-executes itself), never in the
//! tokio process.

#![allow(unsafe_code, reason = "the interface-flag ioctl has no safe wrapper")]

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

/// The namespaces a pod owns, by the name of their pin file.
pub const POD_NAMESPACES: [&str; 3] = ["net", "ipc", "uts"];

fn io_err(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// The pin file of namespace `kind` in a pod's namespace directory.
pub fn pin_path(dir: &Path, kind: &str) -> PathBuf {
    dir.join(kind)
}

/// Whether `path` is a pinned namespace (a bind mount of an `nsfs` inode).
pub fn is_pinned(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Sets the loopback interface of the current network namespace up.
pub(super) fn loopback_up() -> io::Result<()> {
    // SAFETY: socket() with constant arguments has no memory-safety preconditions; the
    // returned descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket() and is not owned elsewhere.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&sock);
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags union member of `req`,
    // which lives for the whole call.
    if unsafe { libc::ioctl(raw, libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the flags member was just written by the kernel.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS reads `req`.
    if unsafe { libc::ioctl(raw, libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// In the calling (single-threaded) process: unshares the pod's namespaces, sets the
/// hostname and loopback up in the new ones, and pins each under `dir`.
///
/// With `host_network` the pod keeps the node's network and UTS namespaces (kubelet
/// gives a host-network pod the node's hostname); with `host_ipc` the node's IPC one.
/// Shared namespaces get no pin.
pub fn create_here(
    dir: &Path,
    hostname: &str,
    host_network: bool,
    host_ipc: bool,
) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut flags = CloneFlags::empty();
    if !host_network {
        flags |= CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS;
    }
    if !host_ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if !flags.is_empty() {
        unshare(flags).map_err(io_err)?;
    }
    if !host_network {
        nix::unistd::sethostname(hostname).map_err(io_err)?;
        loopback_up()?;
    }
    for kind in POD_NAMESPACES {
        let shared = match kind {
            "net" | "uts" => host_network,
            _ => host_ipc,
        };
        if shared {
            continue;
        }
        pin(&format!("/proc/self/ns/{kind}"), &pin_path(dir, kind))?;
    }
    Ok(())
}

/// Pins the namespace at `source` (`/proc/<pid>/ns/<kind>`) by bind-mounting it on a
/// new file `at`: it lives on when its last process ends, until unpinned.
pub(super) fn pin(source: &str, at: &Path) -> io::Result<()> {
    std::fs::File::create(at)?;
    mount(
        Some(source),
        at,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(io_err)
}

/// In the calling (single-threaded) sandbox helper: starts the pod's pause process as
/// PID 1 of a new PID namespace (for `shareProcessNamespace`), in the cgroup whose
/// `cgroup.procs` is given, detached from the caller; returns its pid on the node.
/// It reaps what is orphaned into it and lives until the pod's cgroup is killed.
pub fn start_pause(cgroup_procs: &Path) -> io::Result<u32> {
    unshare(CloneFlags::CLONE_NEWPID).map_err(io_err)?;
    // SAFETY: the sandbox helper is single-threaded, so the child may run any code.
    match unsafe { nix::unistd::fork() }.map_err(io_err)? {
        nix::unistd::ForkResult::Parent { child } => Ok(child.as_raw().unsigned_abs()),
        nix::unistd::ForkResult::Child => {
            // "0" is "the writing process": this one, PID 1 of the new namespace.
            let _ = std::fs::write(cgroup_procs, "0");
            pause_loop()
        }
    }
}

/// The pause process's life, in a forked child: detached, every descriptor closed,
/// reaping what is orphaned into its PID namespace until killed.
pub(super) fn pause_loop() -> ! {
    let _ = nix::unistd::setsid();
    let _ = nix::sys::prctl::set_name(c"pause");
    // SAFETY: close_range takes two descriptor numbers and flags; the descriptors it
    // closes are this process's own, and nothing in it uses them after.
    unsafe { libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) };
    loop {
        match nix::sys::wait::waitpid(None, None) {
            Ok(_) => {}
            Err(_) => std::thread::sleep(std::time::Duration::from_secs(1)),
        }
    }
}

/// Unpins and removes a pod's namespaces; what is already gone is not an error.
pub fn remove(dir: &Path) -> io::Result<()> {
    // A `hostUsers: false` pod's user namespace is pinned beside them.
    for kind in POD_NAMESPACES.into_iter().chain(["user"]) {
        let pin = pin_path(dir, kind);
        if is_pinned(&pin) {
            umount2(&pin, MntFlags::MNT_DETACH).map_err(io_err)?;
        }
        match std::fs::remove_file(&pin) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A TCP connection to `addr` made from inside the network namespace pinned at
/// `netns` (the caller's own when `None`): the socket is created in a scratch thread
/// that has entered the namespace, and keeps that namespace for its life.
pub fn connect_in(
    netns: Option<&Path>,
    addr: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> io::Result<std::net::TcpStream> {
    let Some(netns) = netns else {
        return std::net::TcpStream::connect_timeout(&addr, timeout);
    };
    let ns = std::fs::File::open(netns)?;
    std::thread::spawn(move || {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io_err)?;
        std::net::TcpStream::connect_timeout(&addr, timeout)
    })
    .join()
    .map_err(|_| io::Error::other("the connecting thread panicked"))?
}

/// A UDP socket made inside the network namespace pinned at `netns` (the caller's
/// own when `None`), bound to an ephemeral port and connected to `addr`.
pub fn udp_in(netns: Option<&Path>, addr: std::net::SocketAddr) -> io::Result<std::net::UdpSocket> {
    let make = move || -> io::Result<std::net::UdpSocket> {
        let local: std::net::SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let s = std::net::UdpSocket::bind(local)?;
        s.connect(addr)?;
        Ok(s)
    };
    let Some(netns) = netns else {
        return make();
    };
    let ns = std::fs::File::open(netns)?;
    std::thread::spawn(move || {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io_err)?;
        make()
    })
    .join()
    .map_err(|_| io::Error::other("the socket thread panicked"))?
}

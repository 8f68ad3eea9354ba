//! Process primitives for kernlet's helper processes.

#![allow(unsafe_code, reason = "fork and the pidfd calls have no safe wrapper")]

use std::io;

/// Detaches the calling process from its parent: forks, the parent exits 0 at once
/// (so whoever spawned it reaps it immediately), the child starts a new session.
/// Returns in the child only.
///
/// Call only in a single-threaded process (kernlet's helpers, before any thread).
pub fn daemonize() -> io::Result<()> {
    // SAFETY: the caller is single-threaded (documented precondition), so the child
    // may run arbitrary code after fork.
    match unsafe { nix::unistd::fork() }.map_err(|e| io::Error::from_raw_os_error(e as i32))? {
        nix::unistd::ForkResult::Parent { .. } => std::process::exit(0),
        nix::unistd::ForkResult::Child => {
            nix::unistd::setsid().map_err(|e| io::Error::from_raw_os_error(e as i32))?;
            Ok(())
        }
    }
}

/// Whether a process with `pid` exists (zombies included).
pub fn alive(pid: u32) -> bool {
    i32::try_from(pid)
        .is_ok_and(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok())
}

/// A descriptor of process `pid` (`pidfd_open`): it keeps naming that process even
/// if the pid is reused once it is gone.
pub fn pidfd_open(pid: u32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    // SAFETY: pidfd_open takes a pid and flags (0) and touches no memory of this
    // process.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Whether the process a pidfd names still runs (signal 0 through the pidfd).
pub fn pidfd_alive(pidfd: &std::os::fd::OwnedFd) -> bool {
    use std::os::fd::AsRawFd as _;
    // SAFETY: pidfd_send_signal with signal 0 and a null info only checks that the
    // process exists and may be signalled; it reads no memory of this process.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        ) == 0
    }
}

/// Sends signal number `signo` (standard or real-time, 1-64) to `pid`.
pub fn signal(pid: nix::unistd::Pid, signo: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes two integers and touches no memory of this process; nix's
    // `Signal` cannot name real-time signals, hence the raw call.
    if unsafe { libc::kill(pid.as_raw(), signo) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Forks; the child runs `child` and exits with the code it returns (it never comes
/// back here). Returns the child's pid in the parent.
///
/// Call only in a single-threaded process (kernlet's helpers).
pub fn fork_run(child: impl FnOnce() -> i32) -> io::Result<nix::unistd::Pid> {
    // SAFETY: the caller is single-threaded (documented precondition), so the child
    // may run arbitrary code after fork.
    match unsafe { nix::unistd::fork() }.map_err(|e| io::Error::from_raw_os_error(e as i32))? {
        nix::unistd::ForkResult::Parent { child } => Ok(child),
        nix::unistd::ForkResult::Child => std::process::exit(child()),
    }
}

/// Makes the terminal on stdin the controlling terminal of the calling process, in a
/// new session (for a command given a terminal: job control and ^C work).
pub fn take_terminal() -> io::Result<()> {
    nix::unistd::setsid().map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal) and reads no memory;
    // fd 0 is this process's stdin.
    let rc = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A new pseudo-terminal: `(master, slave)`.
pub fn open_pty() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    let pty = nix::pty::openpty(None, None).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    Ok((pty.master, pty.slave))
}

/// A descriptor sent on the unix stream `conn` as SCM_RIGHTS (as a container runtime
/// sends a terminal's master on its console socket).
pub fn receive_fd(conn: &std::os::unix::net::UnixStream) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    let mut name = [0u8; 64];
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for c in msg.cmsgs()? {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c
            && let Some(fd) = fds.first()
        {
            // SAFETY: the kernel just installed this descriptor in our table for us
            // (SCM_RIGHTS); nothing else owns it.
            return Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(*fd) });
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "no descriptor in the message",
    ))
}

/// Leaves `fd` open across an `exec` (its close-on-exec flag cleared) and gives up
/// ownership of it: the number is handed to the program executed.
pub fn keep_open(fd: std::os::fd::OwnedFd) -> io::Result<std::os::fd::RawFd> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    fcntl(&fd, FcntlArg::F_SETFD(FdFlag::empty())).map_err(io::Error::from)?;
    Ok(std::os::fd::IntoRawFd::into_raw_fd(fd))
}

//! Process primitives for kernlet's helper processes.

#![allow(unsafe_code, reason = "fork has no safe wrapper")]

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

//! The kernlet binary as containers can reach it (CVE-2019-5736). The processes
//! kernlet starts inside a container — the shim's container init, the exec helper's
//! child — run kernlet's own binary until they exec the container's program; if that
//! program is a script whose interpreter is `/proc/self/exe`, kernlet's binary runs
//! in the container, where the container's root can open `/proc/<pid>/exe` and, once
//! the process is gone, open the file for writing and replace the node's runtime.
//!
//! So kernlet starts those processes from `<state-dir>/bin/kernlet`, a read-only bind
//! mount of its binary made at start (runc's answer is the same): every path a
//! container can get to the binary is on a read-only mount, and opening it for
//! writing fails with EROFS whatever else runs the file.

use std::path::{Path, PathBuf};

use super::RuntimeError;
use crate::sys;

/// Where the read-only binary is mounted under the state directory.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("bin").join("kernlet")
}

/// Mounts `exe` read-only at [`path`] (a mount left by an earlier run is replaced:
/// the binary may have been upgraded since) and returns that path.
pub fn install(state_dir: &Path, exe: &Path) -> Result<PathBuf, RuntimeError> {
    let target = path(state_dir);
    let what = || {
        format!(
            "mounting {} read-only at {} (the binary kernlet starts in containers)",
            exe.display(),
            target.display()
        )
    };
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(RuntimeError::io(what()))?;
    }
    // Stacked mounts of earlier runs go first.
    unmount_all(&target).map_err(RuntimeError::io(what()))?;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&target)
        .map_err(RuntimeError::io(what()))?;
    sys::mount::bind_read_only(exe, &target).map_err(RuntimeError::io(what()))?;
    Ok(target)
}

/// Takes the read-only binary away when the node stops (its pods' shims no longer
/// run it; the next start mounts the binary it is started from).
pub fn remove(state_dir: &Path) {
    let _ = unmount_all(&path(state_dir));
}

/// Takes off the read-only mounts stacked on `target` (at most 16: a state directory
/// on a read-only filesystem would otherwise keep this going).
fn unmount_all(target: &Path) -> std::io::Result<()> {
    for _ in 0..16 {
        if !sys::mount::read_only(target) {
            break;
        }
        sys::mount::unmount(target)?;
    }
    Ok(())
}

/// The binary a command-line tool (`kernlet exec`) starts in a container: the
/// running node's read-only one when there is one, its own binary otherwise.
pub fn for_tools(state_dir: &Path) -> std::io::Result<PathBuf> {
    let sealed = path(state_dir);
    if sys::mount::read_only(&sealed) && sealed.metadata().is_ok_and(|m| m.len() > 0) {
        return Ok(sealed);
    }
    std::env::current_exe()
}

//! The reaper's one unsafe operation: taking the descriptors the setup left open.

use std::os::fd::{FromRawFd as _, OwnedFd, RawFd};

/// Takes the descriptor `fd` the setup left open for this process.
pub fn take(fd: RawFd) -> OwnedFd {
    // SAFETY: the setup opened `fd`, cleared its close-on-exec flag and names it in the
    // hand-over for this process alone; nothing else in the reaper owns or closes it,
    // and each descriptor of the hand-over is taken once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

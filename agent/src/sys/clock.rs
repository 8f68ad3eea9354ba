//! The kernel's view of the system clock's synchronization (adjtimex).
#![allow(unsafe_code, reason = "ntp_adjtime has no safe wrapper")]

/// Whether the kernel says the clock is synchronized (an NTP daemon keeps it
/// disciplined); `None` when the kernel cannot be asked.
pub fn synchronized() -> Option<bool> {
    // SAFETY: an all-zero `timex` is a valid value (modes = 0 asks for a read only, so
    // nothing about the clock changes); the pointer is to a live, exclusively borrowed
    // local for the duration of the call.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: see above; the kernel only writes into `tx`.
    let state = unsafe { libc::ntp_adjtime(&mut tx) };
    if state < 0 {
        return None;
    }
    Some(state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0)
}

//! Types shared by kernlet's eBPF programs and user space.
//!
//! Everything here is `#[repr(C)]` plain data with explicit padding, because the kernel
//! and user space see the same bytes through BPF maps.
#![no_std]
#![deny(unsafe_code)]

/// Name of the map holding [`ProbeCounters`], one entry at index 0.
pub const PROBE_MAP: &str = "KL_PROBE";

/// Name of the `cgroup/connect4` program that counts connects in the cgroup it is
/// attached to. It never changes a verdict: every connect is allowed.
pub const PROBE_CONNECT4: &str = "kl_probe_connect4";

/// Counters the probe program keeps, so user space can prove the datapath runs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeCounters {
    /// IPv4 `connect()` calls seen by the attached `cgroup/connect4` hook.
    pub connect4: u64,
}

#[cfg(feature = "user")]
mod user {
    // A `Pod` impl is the one place the workspace needs `unsafe` outside `sys/`: aya
    // requires it to read map values as bytes. It lives in this shared crate by design.
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: ProbeCounters is repr(C), Copy, has no padding and every bit pattern is valid.
    unsafe impl aya::Pod for super::ProbeCounters {}
}

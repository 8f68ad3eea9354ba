//! kernlet's eBPF programs. Entry points are thin and call `try_*` functions.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{cgroup_sock_addr, map},
    maps::PerCpuArray,
    programs::SockAddrContext,
};
use kernlet_ebpf_common::ProbeCounters;

/// Verdict that lets a socket call proceed unchanged.
const ALLOW: i32 = 1;

// Per-CPU so concurrent connects never lose an increment; user space sums the CPUs.
#[map(name = "KL_PROBE")]
static KL_PROBE: PerCpuArray<ProbeCounters> = PerCpuArray::with_max_entries(1, 0);

/// Counts IPv4 connects in the cgroup it is attached to; proves the load/attach pipeline.
#[cgroup_sock_addr(connect4)]
pub fn kl_probe_connect4(ctx: SockAddrContext) -> i32 {
    try_probe_connect4(&ctx);
    ALLOW
}

fn try_probe_connect4(_ctx: &SockAddrContext) {
    if let Some(counters) = KL_PROBE.get_ptr_mut(0) {
        // SAFETY: the pointer comes from the map lookup, points at this CPU's slot and
        // stays valid for this program run; no other CPU writes it.
        unsafe { (*counters).connect4 += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

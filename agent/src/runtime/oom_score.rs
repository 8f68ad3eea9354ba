//! The `oom_score_adj` a container starts with: kubelet's value (`model::oom`) from
//! the node's memory, set by the runtime in the container's init. Lowering a score
//! below kernlet's own needs CAP_SYS_RESOURCE; without it (a container or a
//! restricted service) the container gets kernlet's own score instead of failing to
//! start, and kernlet says so once (`kernlet doctor` says it too).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::{Container, Pod};

/// CAP_SYS_RESOURCE's bit in the capability masks of /proc/<pid>/status.
const CAP_SYS_RESOURCE: u32 = 24;

/// What this process may do about OOM scores: its own score, and whether it may
/// lower one below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnScore {
    pub own: i32,
    pub may_lower: bool,
}

/// This process's score and capability, read once.
pub fn own() -> OwnScore {
    static OWN: OnceLock<OwnScore> = OnceLock::new();
    *OWN.get_or_init(|| {
        let own = std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        OwnScore {
            own,
            may_lower: effective_caps(&status) & (1 << CAP_SYS_RESOURCE) != 0,
        }
    })
}

fn effective_caps(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap_or(0)
}

fn memory_capacity() -> i64 {
    static CAPACITY: OnceLock<i64> = OnceLock::new();
    *CAPACITY.get_or_init(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| crate::sys::machine::parse_mem_total(&m))
            .and_then(|b| i64::try_from(b).ok())
            .unwrap_or(i64::MAX)
    })
}

/// The score container `c` of `pod` starts with.
pub fn for_container(pod: &Pod, c: &Container) -> i32 {
    let wanted = crate::model::oom::score_adjust(pod, c, memory_capacity());
    let own = own();
    let set = crate::model::oom::settable(wanted, own.own, own.may_lower);
    if set != wanted {
        static SAID: AtomicBool = AtomicBool::new(false);
        if !SAID.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                wanted,
                set,
                "kernlet lacks CAP_SYS_RESOURCE: containers whose oom_score_adj would be below kernlet's own ({}) get kernlet's (said once)",
                own.own
            );
        }
    }
    set
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_effective_set_is_read_from_status() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000001000000\n";
        assert_eq!(super::effective_caps(status) & (1 << 24), 1 << 24);
        assert_eq!(
            super::effective_caps("CapEff:\t00000000a80425fb\n") & (1 << 24),
            0
        );
    }
}

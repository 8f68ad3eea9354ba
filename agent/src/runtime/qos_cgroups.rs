//! The QoS parents of the pod cgroups, as kubelet's QoS container manager keeps them
//! (cgroupfs driver): `kubepods/besteffort` gets the least CPU weight (cpu.shares 2),
//! `kubepods/burstable` the weight of the sum of its pods' CPU requests, so under
//! contention Guaranteed pods (directly below `kubepods`) and Burstable ones get CPU
//! in proportion to what they asked and BestEffort pods what is left. Recomputed when
//! a sandbox is made or removed.

use std::sync::Mutex;

use super::Runtime;
use super::container::cpu_shares;
use super::sandbox::shares_to_weight;
use crate::sys::cgroup::Cgroup;

/// The weights of the two QoS parents for the Burstable pods' CPU requests
/// (millicores): `(besteffort, burstable)`.
pub fn parent_weights(burstable_requests: impl IntoIterator<Item = u64>) -> (u64, u64) {
    let sum: u64 = burstable_requests.into_iter().sum();
    (shares_to_weight(2), shares_to_weight(cpu_shares(sum)))
}

impl Runtime {
    /// Writes the QoS parents' `cpu.weight` from the node's sandboxes (where the cpu
    /// controller is delegated; a failure is logged, the pod goes on).
    pub fn update_qos_parents(&self) {
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        if !self.has_controller("cpu") {
            return;
        }
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let (besteffort, burstable) = parent_weights(
            self.sandboxes()
                .iter()
                .filter(|sb| sb.qos == "Burstable")
                .map(|sb| sb.cpu_request_milli),
        );
        for (dir, weight) in [
            ("kubepods/besteffort", besteffort),
            ("kubepods/burstable", burstable),
        ] {
            let cg = Cgroup::open(self.cgroup_root.join(dir));
            if cg.path().exists()
                && let Err(e) = cg.write("cpu.weight", &weight.to_string())
            {
                tracing::warn!(cgroup = dir, "cpu.weight not written: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn weights_as_kubelets_shares_converted() {
        // No Burstable pod: both parents at the least weight.
        assert_eq!(super::parent_weights([]), (1, 1));
        // 100m + 400m = 500m → 512 shares → weight 59 (runc 1.3's conversion).
        assert_eq!(super::parent_weights([100, 400]), (1, 59));
        // 2 CPUs → 2048 shares → 174.
        assert_eq!(super::parent_weights([2000]).1, 174);
    }
}

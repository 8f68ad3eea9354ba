//! The QoS parents of the pod cgroups, as kubelet's QoS container manager keeps them
//! (cgroupfs driver): `kubepods/besteffort` gets the least CPU weight (cpu.shares 2),
//! `kubepods/burstable` the weight of the sum of its pods' CPU requests, so under
//! contention Guaranteed pods (directly below `kubepods`) and Burstable ones get CPU
//! in proportion to what they asked and BestEffort pods what is left. Recomputed when
//! a sandbox is made or removed. `kubepods` itself is limited to the node's
//! allocatable at start.

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
    /// `kubepods` limited to the node's allocatable, as kubelet enforces it with
    /// `enforceNodeAllocatable: [pods]`: `memory.max` the allocatable memory,
    /// `cpu.weight` that of its CPU (as shares), for the controllers the tree has.
    pub fn limit_kubepods(&self, memory: u64, cpu_millis: u64) -> Result<(), super::RuntimeError> {
        let cg = Cgroup::create(&self.cgroup_root, std::path::Path::new("kubepods"))?;
        if !self.controllers.is_empty() {
            let enable: Vec<String> = self.controllers.iter().map(|c| format!("+{c}")).collect();
            Cgroup::open(self.cgroup_root.clone())
                .write("cgroup.subtree_control", &enable.join(" "))?;
        }
        if self.has_controller("memory") {
            cg.write("memory.max", &memory.to_string())?;
        }
        if self.has_controller("cpu") {
            cg.write(
                "cpu.weight",
                &shares_to_weight(cpu_shares(cpu_millis)).to_string(),
            )?;
        }
        Ok(())
    }

    /// Writes the QoS parents' `cpu.weight` from the node's sandboxes (where the cpu
    /// controller is delegated), and under Memory QoS their memory protection (where
    /// the memory controller is); a failure is logged, the pod goes on.
    pub fn update_qos_parents(&self) {
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let (cpu, memory) = (self.has_controller("cpu"), self.has_controller("memory"));
        if !(cpu || memory && self.cfg.memory_policy.qos) {
            return;
        }
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let sandboxes = self.sandboxes();
        let burstable = || sandboxes.iter().filter(|sb| sb.qos == "Burstable");
        let mut writes: Vec<(&str, &str, u64)> = Vec::new();
        if cpu {
            let (besteffort, burstable) =
                parent_weights(burstable().map(|sb| sb.cpu_request_milli));
            writes.push(("kubepods/besteffort", "cpu.weight", besteffort));
            writes.push(("kubepods/burstable", "cpu.weight", burstable));
        }
        if memory {
            let guaranteed: u64 = sandboxes
                .iter()
                .filter(|sb| sb.qos == "Guaranteed")
                .map(|sb| sb.memory_request)
                .sum();
            let burstable: u64 = burstable().map(|sb| sb.memory_request).sum();
            writes.extend(crate::model::memory_qos::qos_protection(
                &self.cfg.memory_policy,
                guaranteed,
                burstable,
            ));
        }
        for (dir, file, value) in writes {
            let cg = Cgroup::open(self.cgroup_root.join(dir));
            if cg.path().exists()
                && let Err(e) = cg.write(file, &value.to_string())
            {
                tracing::warn!(cgroup = dir, "{file} not written: {e}");
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

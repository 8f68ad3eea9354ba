//! The `info` of verbose status answers: what `crictl inspect` and `crictl inspectp`
//! show beyond the status — kernlet's own view of the sandbox or container, as JSON.

use serde_json::json;

use super::view::{Run, Sandbox};
use crate::runtime::Runtime;
use crate::runtime::container::ContainerState;

/// A sandbox's namespaces, cgroup and pause process.
pub fn sandbox(s: &Sandbox) -> String {
    let r = &s.record;
    json!({
        "pid": r.pause_pid,
        "cgroup": r.cgroup,
        "namespaces": r.ns_dir,
        "qosClass": r.qos,
        "hostname": r.hostname,
        "hostNetwork": r.host_network,
        "hostPID": r.host_pid,
        "hostIPC": r.host_ipc,
        "ip": r.ip,
    })
    .to_string()
}

/// A container's process, sandbox, cgroup, bundle and what kernlet could not enforce.
pub fn container(run: &Run, rt: &Runtime) -> String {
    let r = &run.record;
    let pid = match &run.state {
        ContainerState::Running { pid, .. } => Some(*pid),
        _ => None,
    };
    let failed = match &run.state {
        ContainerState::Failed(why) => Some(why.clone()),
        _ => None,
    };
    json!({
        "pid": pid,
        "sandboxID": r.pod_uid,
        "cgroup": r.cgroup,
        "bundle": rt.cfg.state_dir.join("containers").join(&r.id),
        "resources": r.resources,
        "unenforced": r.unenforced,
        "startError": failed,
    })
    .to_string()
}

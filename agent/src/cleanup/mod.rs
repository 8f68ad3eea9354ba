//! `kernlet cleanup`: removes every trace of kernlet's Service datapath and pod network
//! from a node, as `kube-proxy --cleanup` removes kube-proxy's rules — the pinned
//! programs (detached as their links go) and maps, the nftables table, the pod veths,
//! the bridge and the VXLAN device (their addresses, routes, neighbours and FDB entries
//! go with them), and the address and overlay records. Refused while a kernlet answers
//! on the run directory: it would rebuild what is removed, and its pods would lose
//! their network under it.
//!
//! What is found and removed goes through [`NodeTraces`]; [`node::KernelTraces`] is the
//! node's kernel and directories.

pub mod node;

use std::path::PathBuf;

/// Why a cleanup did not run.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(
        "a kernlet daemon answers on {0}: stop it first (it would rebuild what cleanup removes, and its pods would lose their network under it)"
    )]
    DaemonRunning(PathBuf),
    #[error("{what}: {detail}")]
    Failed { what: String, detail: String },
}

/// One trace of kernlet on the node, in the order they are removed: programs are
/// detached before their maps go, ports before their bridge.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Trace {
    /// A pinned program link: unpinning it detaches the program (cgroup or tcx).
    ProgramLink { pin: PathBuf },
    /// A pinned map.
    Map { pin: PathBuf },
    /// kernlet's nftables table (masquerade, VXLAN source filter).
    NftTable { family: String, name: String },
    /// A network device kernlet created: a pod's host-side veth, the pod bridge, the
    /// VXLAN device.
    Device { name: String, index: u32 },
    /// A directory of pod-network records: address allocations, the VTEP's MAC, the
    /// last probe of the overlay's peers.
    Records { dir: PathBuf },
    /// The emptied pin directory; `mount` when kernlet mounted a bpffs of its own there
    /// (unmounted first).
    PinDir { dir: PathBuf, mount: bool },
}

impl std::fmt::Display for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trace::ProgramLink { pin } => write!(f, "program link {}", pin.display()),
            Trace::Map { pin } => write!(f, "map {}", pin.display()),
            Trace::NftTable { family, name } => write!(f, "nftables table {family} {name}"),
            Trace::Device { name, .. } => write!(f, "device {name}"),
            Trace::Records { dir } => write!(f, "records {}", dir.display()),
            Trace::PinDir { dir, mount: true } => write!(f, "bpffs mount {}", dir.display()),
            Trace::PinDir { dir, mount: false } => write!(f, "pin directory {}", dir.display()),
        }
    }
}

/// The node's side of a cleanup.
pub trait NodeTraces {
    /// Whether a kernlet daemon answers; its socket when one does.
    fn daemon(&self) -> Option<PathBuf>;
    /// Every trace there is, in removal order.
    fn find(&mut self) -> Result<Vec<Trace>, CleanupError>;
    /// Removes one; `Ok(false)` when it was already gone.
    fn remove(&mut self, trace: &Trace) -> Result<bool, CleanupError>;
}

/// What a cleanup did.
#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Removed (or, with `--dry-run`, what would be).
    pub removed: Vec<Trace>,
    /// Traces that could not be removed, with why; the others were still removed.
    pub failed: Vec<(Trace, String)>,
    pub dry_run: bool,
}

/// Finds every trace and removes each, going on past one that fails.
pub fn cleanup(node: &mut dyn NodeTraces, dry_run: bool) -> Result<Report, CleanupError> {
    if let Some(socket) = node.daemon() {
        return Err(CleanupError::DaemonRunning(socket));
    }
    let mut report = Report {
        dry_run,
        ..Report::default()
    };
    for t in node.find()? {
        if dry_run {
            report.removed.push(t);
            continue;
        }
        match node.remove(&t) {
            Ok(true) => report.removed.push(t),
            Ok(false) => {}
            Err(e) => report.failed.push((t, e.to_string())),
        }
    }
    Ok(report)
}

/// The report as lines for a terminal.
pub fn text(r: &Report) -> String {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    let mut out = String::new();
    for t in &r.removed {
        out.push_str(&format!("{verb} {t}\n"));
    }
    for (t, why) in &r.failed {
        out.push_str(&format!("FAILED to remove {t}: {why}\n"));
    }
    if r.removed.is_empty() && r.failed.is_empty() {
        out.push_str("nothing of kernlet's datapath or pod network is on this node\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node as a list of traces; removing one named in `fails` fails.
    #[derive(Default)]
    struct Fake {
        daemon: Option<PathBuf>,
        traces: Vec<Trace>,
        fails: Vec<Trace>,
        removed: Vec<Trace>,
    }

    impl NodeTraces for Fake {
        fn daemon(&self) -> Option<PathBuf> {
            self.daemon.clone()
        }
        fn find(&mut self) -> Result<Vec<Trace>, CleanupError> {
            Ok(self.traces.clone())
        }
        fn remove(&mut self, t: &Trace) -> Result<bool, CleanupError> {
            if self.fails.contains(t) {
                return Err(CleanupError::Failed {
                    what: t.to_string(),
                    detail: "Device or resource busy".into(),
                });
            }
            let there = self.traces.contains(t) && !self.removed.contains(t);
            self.removed.push(t.clone());
            Ok(there && !matches!(t, Trace::NftTable { .. }))
        }
    }

    fn dev(name: &str, index: u32) -> Trace {
        Trace::Device {
            name: name.into(),
            index,
        }
    }

    #[test]
    fn every_trace_goes_and_one_failure_stops_nothing() {
        let traces = vec![
            Trace::ProgramLink {
                pin: "/b/lb/links/kl_lb_connect4".into(),
            },
            Trace::Map {
                pin: "/b/lb/KL_SERVICES".into(),
            },
            Trace::NftTable {
                family: "ip".into(),
                name: "kernlet".into(),
            },
            dev("veth0a1b2c3d", 7),
            dev("cni0", 5),
            dev("flannel.1", 4),
            Trace::Records {
                dir: "/s/ipam".into(),
            },
        ];
        let mut node = Fake {
            traces: traces.clone(),
            fails: vec![dev("cni0", 5)],
            ..Fake::default()
        };
        let r = cleanup(&mut node, false).unwrap();
        // Tried in order, every one; the table was absent (not reported), the bridge
        // failed and is named, the rest removed.
        assert_eq!(node.removed.len(), 6);
        assert_eq!(node.removed[0], traces[0]);
        assert_eq!(r.removed.len(), 5);
        assert!(!r.removed.contains(&traces[2]));
        assert_eq!(r.failed.len(), 1);
        assert!(
            text(&r).contains("FAILED to remove device cni0: device cni0: Device or resource busy")
        );
        assert!(text(&r).contains("removed program link /b/lb/links/kl_lb_connect4"));
    }

    #[test]
    fn a_running_daemon_refuses_and_a_dry_run_removes_nothing() {
        let mut node = Fake {
            daemon: Some("/run/kernlet/kernlet.sock".into()),
            traces: vec![dev("flannel.1", 4)],
            ..Fake::default()
        };
        let e = cleanup(&mut node, false).unwrap_err();
        assert!(
            e.to_string()
                .contains("/run/kernlet/kernlet.sock: stop it first"),
            "{e}"
        );
        node.daemon = None;
        let r = cleanup(&mut node, true).unwrap();
        assert!(node.removed.is_empty());
        assert_eq!(text(&r), "would remove device flannel.1\n");
        let mut empty = Fake::default();
        assert!(text(&cleanup(&mut empty, false).unwrap()).starts_with("nothing of kernlet"));
    }
}

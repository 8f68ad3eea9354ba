//! The files a container's shim leaves in the container's directory under the state
//! directory (`<state-dir>/containers/<id>`; the OCI bundle itself, `config.json` and
//! the root mount point, is under the run directory), which the agent reads:
//! - `shim.json`   the request (written by the agent);
//! - `handover.json` what the setup hands the reaper (written by the setup);
//! - `state.json`  written once the container runs: shim and container pids;
//! - `exit.json`   written when it ended: exit code, signal, OOM kill;
//! - `error`       why it could not be started;
//! - `shim.log`    the shim's own log.

use std::io::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub const REQUEST: &str = "shim.json";
pub const HANDOVER: &str = "handover.json";
pub const STATE: &str = "state.json";
pub const EXIT: &str = "exit.json";
pub const ERROR: &str = "error";
pub const LOG: &str = "shim.log";
/// The file the container could write at its `terminationMessagePath`.
pub const TERMINATION_LOG: &str = "termination-log";

/// A running container, as the shim reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShimState {
    pub shim_pid: u32,
    pub pid: u32,
    pub started_at: String,
}

/// How a container ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub finished_at: String,
    /// The termination message.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl ExitRecord {
    /// Kubernetes' reason for this end.
    pub fn reason(&self) -> &'static str {
        if self.oom_killed {
            "OOMKilled"
        } else if self.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        }
    }
}

/// Now, as the records write times (RFC 3339, seconds).
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Writes `data` to `path` through a temporary file and a rename, so a reader sees the
/// whole file or none.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The OOM kill count of a cgroup v2 directory.
pub fn oom_kills(cgroup_dir: &Path) -> u64 {
    std::fs::read_to_string(cgroup_dir.join("memory.events"))
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

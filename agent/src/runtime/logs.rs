//! Container logs in the CRI format kubelet and `kubectl logs` read:
//! `<RFC 3339 nano time> <stdout|stderr> <F|P> <text>\n`, one file per container start
//! (`<log-dir>/<ns>_<pod>_<uid>/<container>/<restart>.log`), rotated by size into
//! `<restart>.log.<YYYYMMDD-HHMMSS>` files, keeping a bounded number.

use std::path::{Path, PathBuf};

pub use kernlet_shim::cri::{
    CriWriter, MAX_LINE, Record, Rotation, log_tail, parse_line, rotated_files,
};

/// The directory of a pod's logs.
pub fn pod_dir(log_dir: &Path, namespace: &str, pod: &str, uid: &str) -> PathBuf {
    log_dir.join(format!("{namespace}_{pod}_{uid}"))
}

/// The log file of one start of a container.
pub fn container_log(pod_dir: &Path, container: &str, restart: u32) -> PathBuf {
    pod_dir.join(container).join(format!("{restart}.log"))
}

/// The run of container `name` of recorded pod `pod` (its JSON) whose log `kubectl
/// logs` reads, `previous` or not, from the records under `state_dir`: kubelet's choice
/// from the container's status (`model::pod_lifecycle::log_run`).
pub fn run_to_read(
    state_dir: &Path,
    pod: &serde_json::Value,
    name: &str,
    previous: bool,
) -> Option<super::container::ContainerRecord> {
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
    let runs: Vec<_> = super::container::records_in(state_dir)
        .into_iter()
        .filter(|r| r.pod_uid == uid && r.name == name)
        .collect();
    let spec: k8s_openapi::api::core::v1::PodSpec =
        serde_json::from_value(pod["spec"].clone()).unwrap_or_default();
    let deleting = !pod["metadata"]["deletionTimestamp"].is_null();
    let latest_waits = runs.last().is_some_and(|r| {
        match super::container::state_in(&state_dir.join("containers").join(&r.id)) {
            super::container::ContainerState::Exited { exit, .. } => {
                !deleting
                    && crate::model::pod_lifecycle::restarts_after_exit(&spec, name, exit.exit_code)
            }
            _ => false,
        }
    });
    crate::model::pod_lifecycle::log_run(&runs, previous, latest_waits).cloned()
}

/// What to read of a container's log (kubelet's `PodLogOptions`).
#[derive(Clone, Debug, Default)]
pub struct ReadOptions {
    /// The last N lines only.
    pub tail: Option<usize>,
    /// Lines written at or after this RFC 3339 time only.
    pub since: Option<k8s_openapi::jiff::Timestamp>,
    /// Each line prefixed with its RFC 3339 time.
    pub timestamps: bool,
    /// At most this many bytes (whole output, cut at the limit).
    pub limit_bytes: Option<usize>,
}

/// The lines of the log at `path` and its rotated files, oldest first, partial records
/// joined, as `options` selects; each with a newline.
pub fn read_lines(path: &Path, options: &ReadOptions) -> Vec<String> {
    let mut files = rotated_files(path);
    files.push(path.to_path_buf());
    let mut lines: Vec<String> = Vec::new();
    let mut partial = String::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for rec in text.lines().filter_map(parse_line) {
            partial.push_str(&rec.text);
            if rec.partial {
                continue;
            }
            let line = std::mem::take(&mut partial);
            if let Some(since) = options.since
                && rec
                    .time
                    .parse::<k8s_openapi::jiff::Timestamp>()
                    .is_ok_and(|t| t < since)
            {
                continue;
            }
            lines.push(if options.timestamps {
                format!("{} {line}\n", rec.time)
            } else {
                format!("{line}\n")
            });
        }
    }
    let start = options.tail.map_or(0, |n| lines.len().saturating_sub(n));
    let mut out: Vec<String> = lines.split_off(start);
    if let Some(limit) = options.limit_bytes {
        let mut used = 0;
        let mut kept = Vec::new();
        for l in out {
            if used + l.len() > limit {
                let mut cut = limit - used;
                while !l.is_char_boundary(cut) {
                    cut -= 1;
                }
                kept.push(l[..cut].to_string());
                break;
            }
            used += l.len();
            kept.push(l);
        }
        out = kept;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_follows_tail_since_timestamps_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.log");
        std::fs::write(
            &p,
            "2026-11-26T01:10:32.1Z stdout F one\n\
             2026-11-26T01:10:42.1Z stdout P tw\n\
             2026-11-26T01:10:42.2Z stdout F o\n\
             2026-11-26T01:10:52.1Z stderr F three\n",
        )
        .unwrap();
        let all = read_lines(&p, &ReadOptions::default());
        assert_eq!(all, ["one\n", "two\n", "three\n"]);
        let tail = read_lines(
            &p,
            &ReadOptions {
                tail: Some(2),
                timestamps: true,
                ..Default::default()
            },
        );
        assert_eq!(
            tail,
            [
                "2026-11-26T01:10:42.2Z two\n",
                "2026-11-26T01:10:52.1Z three\n"
            ]
        );
        let since = read_lines(
            &p,
            &ReadOptions {
                since: Some("2026-11-26T01:10:50Z".parse().unwrap()),
                ..Default::default()
            },
        );
        assert_eq!(since, ["three\n"]);
        let limited = read_lines(
            &p,
            &ReadOptions {
                limit_bytes: Some(6),
                ..Default::default()
            },
        );
        assert_eq!(limited.concat(), "one\ntw");
    }
}

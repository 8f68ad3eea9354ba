//! The running daemon's own account, for the CLI: what each subsystem last did (when it
//! last synced, its last error), served as JSON on a root-only unix socket
//! (`<run-dir>/kernlet.sock`, mode 0600). The CLI asks it first and says when the
//! daemon is not there, answering from the state directory and pinned maps instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use serde_json::{Value, json};

fn board() -> &'static Mutex<BTreeMap<String, Value>> {
    static BOARD: OnceLock<Mutex<BTreeMap<String, Value>>> = OnceLock::new();
    BOARD.get_or_init(Mutex::default)
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Records that `subsystem` synced now (clearing its error), with `detail`.
pub fn synced(subsystem: &str, detail: Value) {
    if let Ok(mut b) = board().lock() {
        let e = b.entry(subsystem.to_string()).or_insert_with(|| json!({}));
        e["lastSync"] = json!(now());
        e["lastError"] = Value::Null;
        e["detail"] = detail;
    }
}

/// Records `subsystem`'s last failure.
pub fn failed(subsystem: &str, error: &str) {
    if let Ok(mut b) = board().lock() {
        let e = b.entry(subsystem.to_string()).or_insert_with(|| json!({}));
        e["lastError"] = json!(error);
        e["lastErrorAt"] = json!(now());
    }
}

/// The daemon's account as JSON.
pub fn report(node: &str, started: &str) -> Value {
    let subsystems = board().lock().map(|b| b.clone()).unwrap_or_default();
    json!({
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
        "node": node,
        "started": started,
        "subsystems": subsystems,
    })
}

/// The socket of the daemon using `run_dir`.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("kernlet.sock")
}

/// Serves the account on the socket until `stop`.
pub async fn serve(
    run_dir: PathBuf,
    node: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = socket_path(&run_dir);
    std::fs::create_dir_all(&run_dir)?;
    // A socket left by a daemon that died is in the way; a live one is another
    // kernlet's on the same run directory.
    crate::state::clear_stale_socket(&path).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "{e}: is another kernlet running with --run-dir {}?",
                run_dir.display()
            ),
        )
    })?;
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let started = now();
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.changed() => {
                let _ = std::fs::remove_file(&path);
                return Ok(());
            }
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        let (node, started) = (node.clone(), started.clone());
        tokio::spawn(crate::json_http::serve(stream, move |_path| {
            crate::json_http::Answer::new(200, report(&node, &started).to_string())
        }));
    }
}

/// Asks the daemon using `run_dir` for its account; `Err` says why there is none.
pub fn ask(run_dir: &Path) -> Result<Value, String> {
    use std::io::{Read as _, Write as _};
    let path = socket_path(run_dir);
    let mut s = std::os::unix::net::UnixStream::connect(&path)
        .map_err(|e| format!("the daemon is not running ({}: {e})", path.display()))?;
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(3)));
    s.write_all(b"GET /status HTTP/1.1\r\nHost: kernlet\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("asking the daemon: {e}"))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .map_err(|e| format!("reading the daemon's answer: {e}"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or("the daemon's answer has no body")?;
    serde_json::from_str(body).map_err(|e| format!("the daemon's answer is not JSON: {e}"))
}

/// What the daemon last did for `subsystem`, or why it cannot say:
/// `{"running": true, "pid", "lastSync", "lastError"}`, or `{"running": false, "why"}`
/// where `instead` names what the CLI reads without it.
pub fn view_of(run_dir: &Path, subsystem: &str, instead: &str) -> Value {
    match ask(run_dir) {
        Ok(a) => {
            let s = &a["subsystems"][subsystem];
            json!({"running": true, "pid": a["pid"], "lastSync": s["lastSync"], "lastError": s["lastError"]})
        }
        Err(why) => json!({"running": false, "why": format!("{why}; {instead}")}),
    }
}

/// [`view_of`] as the line a table starts with.
pub fn line(v: &Value) -> String {
    if v["running"] == true {
        format!(
            "daemon: running (pid {}), last synced {}{}",
            v["pid"],
            v["lastSync"].as_str().unwrap_or("never"),
            v["lastError"]
                .as_str()
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        )
    } else {
        format!("daemon: NOT RUNNING: {}", v["why"].as_str().unwrap_or(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_board_keeps_each_subsystems_last_sync_and_error() {
        synced("test-subsystem", json!({"changes": 3}));
        failed("test-subsystem", "boom");
        let r = report("n1", "2026-01-01T00:00:00Z");
        let e = &r["subsystems"]["test-subsystem"];
        assert_eq!(e["detail"]["changes"], 3);
        assert_eq!(e["lastError"], "boom");
        synced("test-subsystem", json!({}));
        assert!(report("n1", "")["subsystems"]["test-subsystem"]["lastError"].is_null());
    }

    #[test]
    fn without_a_daemon_the_view_says_so_and_what_answers_instead() {
        let dir = tempfile::tempdir().unwrap();
        let v = view_of(dir.path(), "pods", "read from the state directory");
        assert_eq!(v["running"], false);
        let l = line(&v);
        assert!(
            l.starts_with("daemon: NOT RUNNING: the daemon is not running (")
                && l.ends_with("; read from the state directory"),
            "{l}"
        );
    }
}

//! The container shim: one small single-threaded process per container (kernlet
//! re-executed as `kernlet internal shim`), the container's parent for its whole life.
//!
//! It exists because (1) youki's libcontainer forks with raw `clone3` and must not run
//! in the multi-threaded agent; (2) libcontainer finds cgroup v2 only at
//! `/sys/fs/cgroup`, which the shim provides in a private mount namespace by bind-
//! mounting kernlet's cgroup2 subtree there; (3) the container's exit status and its
//! output must be collected even while the agent is down or restarting, so the agent
//! can be killed and come back without disturbing a running container.
//!
//! Files in the container directory (the OCI bundle):
//! - `shim.json`   the request (written by the agent);
//! - `state.json`  written once the container runs: shim and container pids;
//! - `exit.json`   written when it ended: exit code, signal, OOM kill;
//! - `error`       why it could not be started;
//! - `shim.log`    the shim's and libcontainer's own log.
//!
//! The overlay root and the cgroup bind mount exist only in the shim's mount
//! namespace and vanish with it.

use std::os::fd::{AsFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::runtime::logs::{CriWriter, Rotation};
use crate::state;
use crate::sys;

/// What the agent asks a shim to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShimRequest {
    /// Container ID (libcontainer's, unique on the node).
    pub id: String,
    /// The bundle: `config.json` and the `rootfs` mount point.
    pub bundle: PathBuf,
    /// Directory of unpacked layers, and the layers (top first) by name in it.
    pub layers_dir: PathBuf,
    pub lower: Vec<String>,
    /// The container's writable layer and overlayfs work directory.
    pub upper: PathBuf,
    pub work: PathBuf,
    /// kernlet's cgroup2 subtree on the host, shown to libcontainer as /sys/fs/cgroup.
    pub cgroup_root: PathBuf,
    /// libcontainer's state directory.
    pub state_root: PathBuf,
    /// The CRI log file of this start.
    pub log: PathBuf,
    pub rotation: Rotation,
    /// `terminationMessagePolicy: FallbackToLogsOnError`: without a message, a failed
    /// container's message is the tail of its log.
    #[serde(default)]
    pub message_from_log_on_error: bool,
    /// `stdin: true`: the container reads a pipe the shim holds open, fed by whoever
    /// attaches on this socket; `None`: stdin is /dev/null.
    #[serde(default)]
    pub stdin: Option<StdinRequest>,
    /// `tty: true`: the console socket the runtime sends the terminal's master to. The
    /// terminal's output is the container's stdout; attach sessions then carry
    /// [`TtyFrame`](crate::runtime::exec::TtyFrame)s (input, resize, end).
    #[serde(default)]
    pub console: Option<PathBuf>,
}

/// A container's open stdin (`spec.containers[].stdin`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StdinRequest {
    /// The unix socket (mode 0600) attach sessions write the container's input to.
    pub socket: PathBuf,
    /// `stdinOnce`: the first attach session's end closes the container's stdin.
    pub once: bool,
}

/// Where the attach socket of container `id` lives (short: unix socket paths are
/// limited to 107 bytes).
pub fn attach_socket(run_dir: &Path, id: &str) -> PathBuf {
    run_dir
        .join("attach")
        .join(format!("{}.sock", &id[..id.len().min(16)]))
}

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

pub const REQUEST: &str = "shim.json";
pub const STATE: &str = "state.json";
pub const EXIT: &str = "exit.json";
pub const ERROR: &str = "error";
pub const LOG: &str = "shim.log";

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
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

/// Entry point of `kernlet internal shim <bundle>`: returns the process exit code.
/// Called before any thread or logger exists.
pub fn main(bundle: &Path) -> i32 {
    let Ok(log) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(bundle.join(LOG))
    else {
        return 2;
    };
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(log))
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .init();
    if let Err(e) = sys::process::daemonize() {
        tracing::error!("cannot detach: {e}");
        return 1;
    }
    match run(bundle) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            // The agent reads this if no state.json appears.
            let _ = state::write_atomic(&bundle.join(ERROR), format!("{e:#}").as_bytes(), 0o644);
            1
        }
    }
}

fn run(bundle: &Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let req: ShimRequest = serde_json::from_slice(&std::fs::read(bundle.join(REQUEST))?)?;
    nix::sys::prctl::set_child_subreaper(true).context("becoming a subreaper")?;
    sys::mount::private_namespace().context("creating a private mount namespace")?;
    sys::mount::bind(&req.cgroup_root, Path::new("/sys/fs/cgroup"))
        .with_context(|| format!("showing {} as /sys/fs/cgroup", req.cgroup_root.display()))?;
    sys::mount::overlay(
        &req.bundle.join("rootfs"),
        &req.layers_dir,
        &req.lower,
        &req.upper,
        &req.work,
    )
    .context("mounting the container's root filesystem (overlayfs)")?;

    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (stdin, stdin_relay): (OwnedFd, Option<(OwnedFd, &StdinRequest)>) = match &req.stdin {
        Some(r) => {
            let (in_r, in_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            (in_r, Some((in_w, r)))
        }
        None => (std::fs::File::open("/dev/null")?.into(), None),
    };
    // Bound before the container starts, so an attach right after the start finds it.
    let listener = match &stdin_relay {
        Some((_, r)) => Some(listen(&r.socket)?),
        None => None,
    };
    let console = match &req.console {
        Some(path) => Some(listen(path)?),
        None => None,
    };
    let mut container = libcontainer::container::builder::ContainerBuilder::new(
        req.id.clone(),
        libcontainer::syscall::syscall::SyscallType::Linux,
    )
    .with_root_path(&req.state_root)?
    .with_stdin(stdin)
    .with_stdout(out_w)
    .with_stderr(err_w)
    .with_console_socket(req.console.as_ref())
    .as_init(&req.bundle)
    .with_systemd(false)
    .with_detach(true)
    .build()
    .context("creating the container")?;
    container.start().context("starting the container")?;
    let pid = container
        .pid()
        .map(|p| p.as_raw())
        .context("the started container has no pid")?;
    state::write_atomic(
        &bundle.join(STATE),
        &serde_json::to_vec(&ShimState {
            shim_pid: std::process::id(),
            pid: pid.unsigned_abs(),
            started_at: now(),
        })?,
        0o644,
    )?;
    tracing::info!(pid, "container started");
    // With a terminal: its master (sent by the runtime while it set the container
    // up) is both the output and where attach sessions write.
    let master = match (&console, &req.console) {
        (Some(l), Some(path)) => {
            let m = receive_master(l);
            let _ = std::fs::remove_file(path);
            match m {
                Ok(m) => Some(m),
                Err(e) => {
                    // A terminal container without its terminal cannot be used: it is
                    // stopped, and its end recorded as any other.
                    tracing::error!("no terminal from the runtime: {e:#}; killing the container");
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    None
                }
            }
        }
        _ => None,
    };
    if let (Some((input, r)), Some(listener)) = (stdin_relay, listener) {
        let once = r.once;
        match &master {
            Some(m) => {
                let m = m.try_clone()?;
                drop(input);
                std::thread::spawn(move || relay_terminal(&listener, m, once));
            }
            None => {
                std::thread::spawn(move || relay_stdin(&listener, input, once));
            }
        }
    }

    let mut log = CriWriter::open(&req.log, req.rotation)?;
    let outputs: Vec<OwnedFd> = match master {
        Some(m) => {
            drop((out_r, err_r));
            vec![m]
        }
        None => vec![out_r, err_r],
    };
    let status = pump(&mut log, outputs, pid);
    let _ = log.finish();
    let cgroup = container
        .spec()
        .ok()
        .and_then(|c| c.cgroup_path.strip_prefix("/").ok().map(Path::to_path_buf))
        .map(|p| Path::new("/sys/fs/cgroup").join(p));
    let oom_killed = cgroup.as_deref().is_some_and(|c| oom_kills(c) > 0);
    let (exit_code, signal) = match status {
        nix::sys::wait::WaitStatus::Exited(_, code) => (code, None),
        nix::sys::wait::WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
        _ => (255, None),
    };
    let message = termination_message(bundle, &req, exit_code);
    if let Err(e) = container.delete(true) {
        tracing::warn!("removing the container's runtime state: {e}");
    }
    state::write_atomic(
        &bundle.join(EXIT),
        &serde_json::to_vec(&ExitRecord {
            exit_code,
            signal,
            oom_killed,
            finished_at: now(),
            message,
        })?,
        0o644,
    )?;
    tracing::info!(exit_code, ?signal, oom_killed, "container exited");
    if let Some(r) = &req.stdin {
        let _ = std::fs::remove_file(&r.socket);
    }
    if let Some(path) = &req.console {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// The attach socket at `path`, mode 0600 (a stale one from a dead shim replaced).
fn listen(path: &Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    use anyhow::Context as _;
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let _ = std::fs::remove_file(path);
    let l = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("binding the attach socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Feeds the container's stdin from attach sessions, one after another; with `once`,
/// the first session's end closes it (the container reads EOF).
fn relay_stdin(listener: &std::os::unix::net::UnixListener, input: OwnedFd, once: bool) {
    let mut input = std::fs::File::from(input);
    for session in listener.incoming() {
        let Ok(mut session) = session else { continue };
        if let Err(e) = std::io::copy(&mut session, &mut input) {
            // The container closed its stdin or exited.
            tracing::info!("stdin relay ended: {e}");
            return;
        }
        if once {
            tracing::info!("stdinOnce: the attach session ended, stdin closed");
            return;
        }
    }
}

/// kubelet's limits: 4 KiB of the message file; 80 lines and 2 KiB of the log.
const MAX_MESSAGE: usize = 4096;
const MAX_LOG_LINES: usize = 80;
const MAX_LOG_MESSAGE: usize = 2048;

/// The file the container could write at its `terminationMessagePath`.
pub const TERMINATION_LOG: &str = "termination-log";

/// The termination message: what the container wrote to its message file (at most
/// 4 KiB), or for `FallbackToLogsOnError` and a failure, the end of its log.
fn termination_message(bundle: &Path, req: &ShimRequest, exit_code: i32) -> String {
    use std::io::Read as _;
    let mut buf = Vec::new();
    if let Ok(f) = std::fs::File::open(bundle.join(TERMINATION_LOG)) {
        let _ = f.take(MAX_MESSAGE as u64).read_to_end(&mut buf);
    }
    let message = String::from_utf8_lossy(&buf).into_owned();
    if !message.is_empty() || !req.message_from_log_on_error || exit_code == 0 {
        return message;
    }
    log_tail(&std::fs::read_to_string(&req.log).unwrap_or_default())
}

/// The last lines of a CRI log as the container wrote them (partial lines joined),
/// cut to kubelet's size.
pub fn log_tail(cri: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut partial = String::new();
    for record in cri.lines().filter_map(crate::runtime::logs::parse_line) {
        partial.push_str(&record.text);
        if !record.partial {
            lines.push(std::mem::take(&mut partial) + "\n");
        }
    }
    if !partial.is_empty() {
        lines.push(partial);
    }
    let start = lines.len().saturating_sub(MAX_LOG_LINES);
    let text: String = lines[start..].concat();
    let mut cut = text.len().saturating_sub(MAX_LOG_MESSAGE);
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    text[cut..].to_string()
}

/// The terminal master the runtime sends on the console socket `listener` (one
/// connection, the descriptor as SCM_RIGHTS), within 10 s: the runtime sends it while
/// it sets the container up, so a shim never waits forever for one that is not coming.
fn receive_master(listener: &std::os::unix::net::UnixListener) -> anyhow::Result<OwnedFd> {
    listener.set_nonblocking(true)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let conn = loop {
        match listener.accept() {
            Ok((conn, _)) => break conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() > deadline {
                    anyhow::bail!("the runtime did not connect to the console socket within 10 s");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    };
    conn.set_nonblocking(false)?;
    Ok(sys::process::receive_fd(&conn)?)
}

/// Feeds a terminal container from attach sessions carrying
/// [`TtyFrame`](crate::runtime::exec::TtyFrame)s: input to the master, resizes to its
/// window size; with `once`, sessions end after the first.
fn relay_terminal(listener: &std::os::unix::net::UnixListener, master: OwnedFd, once: bool) {
    use crate::runtime::exec::TtyFrame;
    use std::io::Read as _;
    for session in listener.incoming() {
        let Ok(mut session) = session else { continue };
        let mut pending = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match session.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            for f in TtyFrame::decode(&mut pending) {
                if f.apply(&master).is_err() {
                    tracing::info!("terminal relay ended: the container closed its terminal");
                    return;
                }
            }
        }
        if once {
            tracing::info!("stdinOnce: the attach session ended");
            return;
        }
    }
}

/// Copies the container's output (stdout, stderr; or its terminal, as stdout) into
/// its log until it has exited and its outputs are drained; reaps every child (the
/// shim is a subreaper). Returns the container's status.
fn pump(log: &mut CriWriter, pipes: Vec<OwnedFd>, pid: i32) -> nix::sys::wait::WaitStatus {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let mut open = vec![true; pipes.len()];
    let mut status = None;
    let mut buf = vec![0u8; 64 * 1024];
    let mut drain_deadline: Option<std::time::Instant> = None;
    loop {
        // Reap: the container, and anything orphaned into us.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(s) => {
                    if s.pid().is_some_and(|p| p.as_raw() == pid) {
                        status = Some(s);
                        drain_deadline = Some(std::time::Instant::now() + Duration::from_secs(2));
                    }
                }
            }
        }
        let live: Vec<usize> = (0..pipes.len()).filter(|i| open[*i]).collect();
        if live.is_empty() || drain_deadline.is_some_and(|d| std::time::Instant::now() > d) {
            if let Some(s) = status {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let mut fds: Vec<PollFd<'_>> = live
            .iter()
            .map(|i| PollFd::new(pipes[*i].as_fd(), PollFlags::POLLIN))
            .collect();
        if poll(&mut fds, PollTimeout::from(200u16)).is_err() {
            continue;
        }
        let ready: Vec<(usize, bool)> = fds
            .iter()
            .zip(&live)
            .map(|(f, i)| (*i, f.revents().is_some_and(|r| !r.is_empty())))
            .collect();
        for (i, is_ready) in ready {
            if !is_ready {
                continue;
            }
            match nix::unistd::read(&pipes[i], &mut buf) {
                Ok(0) | Err(_) => open[i] = false,
                Ok(n) => {
                    if let Err(e) = log.write(i, &buf[..n]) {
                        tracing::warn!("writing the container log: {e}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_tail_is_what_the_container_wrote_cut_like_kubelet() {
        let cri = "2026-11-26T01:00:00.000000001Z stdout F one\n\
                   2026-11-26T01:00:00.000000002Z stderr P fail\n\
                   2026-11-26T01:00:00.000000003Z stderr F ing\n";
        assert_eq!(log_tail(cri), "one\nfailing\n");
        let many: String = (0..100)
            .map(|i| format!("2026-11-26T01:00:00.000000001Z stdout F line{i}\n"))
            .collect();
        let tail = log_tail(&many);
        assert!(
            tail.starts_with("line20\n") && tail.ends_with("line99\n"),
            "{tail}"
        );
        let long = format!(
            "2026-11-26T01:00:00.000000001Z stdout F {}\n",
            "é".repeat(2000)
        );
        let tail = log_tail(&long);
        assert!(tail.len() <= MAX_LOG_MESSAGE && tail.ends_with("é\n"));
    }
}

//! The reaper: what a container's shim does from the container's start to its end.
//! The setup (the agent's shim) writes a [`Handover`] into the container's directory and
//! `exec`s `kernlet-shim <dir>`, leaving the descriptors it names open.

use std::os::fd::{AsFd as _, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use serde::{Deserialize, Serialize};

use crate::cri::{CriWriter, Rotation, log_tail};
use crate::records::{self, ExitRecord};
use crate::sys::take;
use crate::tty::TtyFrame;

/// What the setup hands the reaper: the started container and the descriptors it holds
/// for it (open across the `exec`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Handover {
    /// The container's process (the reaper's child).
    pub pid: i32,
    /// The container's outputs: stdout and stderr, or its terminal's master alone.
    pub outputs: Vec<RawFd>,
    /// With a terminal: the master again, where attach sessions write.
    #[serde(default)]
    pub terminal: Option<RawFd>,
    /// Without a terminal, `stdin: true`: the write end of the container's stdin.
    #[serde(default)]
    pub stdin: Option<RawFd>,
    /// The attach socket's listener (`stdin: true`), and its path.
    #[serde(default)]
    pub attach: Option<(RawFd, PathBuf)>,
    /// `stdinOnce`: the first attach session's end closes stdin.
    #[serde(default)]
    pub stdin_once: bool,
    /// The console socket's path, removed at the end.
    #[serde(default)]
    pub console: Option<PathBuf>,
    /// The CRI log of this start and its rotation.
    pub log: PathBuf,
    pub rotation: Rotation,
    /// `FallbackToLogsOnError`.
    #[serde(default)]
    pub message_from_log_on_error: bool,
    /// The container's cgroup as the reaper sees it (OOM kills; removed at the end).
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// The runtime's state directory of the container, removed at the end.
    #[serde(default)]
    pub runtime_state: Option<PathBuf>,
}

/// kubelet's limit on a termination message file: 4 KiB.
const MAX_MESSAGE: u64 = 4096;

/// Runs the reaper for the container directory `dir`: until the container has ended and
/// its exit is recorded.
pub fn run(dir: &Path) -> std::io::Result<()> {
    let h: Handover = serde_json::from_slice(&std::fs::read(dir.join(records::HANDOVER))?)?;
    let terminal = h.terminal.map(take);
    if let Some((listener, _)) = &h.attach {
        let listener = UnixListener::from(take(*listener));
        let once = h.stdin_once;
        match (&terminal, h.stdin) {
            (Some(m), _) => {
                let m = m.try_clone()?;
                std::thread::spawn(move || relay_terminal(&listener, m, once));
            }
            (None, Some(input)) => {
                let input = take(input);
                std::thread::spawn(move || relay_stdin(&listener, input, once));
            }
            (None, None) => {}
        }
    }
    drop(terminal);
    let outputs: Vec<OwnedFd> = h.outputs.iter().map(|fd| take(*fd)).collect();
    let mut log = CriWriter::open(&h.log, h.rotation)?;
    let status = pump(&mut log, outputs, h.pid);
    let _ = log.finish();
    let oom_killed = h
        .cgroup
        .as_deref()
        .is_some_and(|c| records::oom_kills(c) > 0);
    let (exit_code, signal) = match status {
        WaitStatus::Exited(_, code) => (code, None),
        WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
        _ => (255, None),
    };
    let message = termination_message(dir, &h, exit_code);
    clean_up(&h);
    let exit = ExitRecord {
        exit_code,
        signal,
        oom_killed,
        finished_at: records::now(),
        message,
    };
    records::write_atomic(&dir.join(records::EXIT), &serde_json::to_vec(&exit)?)?;
    eprintln!("container exited: code {exit_code}, signal {signal:?}, OOM kill {oom_killed}");
    for path in [h.attach.map(|(_, p)| p), h.console].into_iter().flatten() {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Removes what the runtime made for the ended container: its cgroup (anything left in
/// it killed first) and its state directory.
fn clean_up(h: &Handover) {
    if let Some(cg) = &h.cgroup {
        let _ = std::fs::write(cg.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(2);
        while std::fs::remove_dir(cg).is_err() && cg.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if let Some(state) = &h.runtime_state {
        let _ = std::fs::remove_dir_all(state);
    }
}

/// The termination message: what the container wrote to its message file (at most
/// 4 KiB), or for `FallbackToLogsOnError` and a failure, the end of its log.
fn termination_message(dir: &Path, h: &Handover, exit_code: i32) -> String {
    use std::io::Read as _;
    let mut buf = Vec::new();
    if let Ok(f) = std::fs::File::open(dir.join(records::TERMINATION_LOG)) {
        let _ = f.take(MAX_MESSAGE).read_to_end(&mut buf);
    }
    let message = String::from_utf8_lossy(&buf).into_owned();
    if !message.is_empty() || !h.message_from_log_on_error || exit_code == 0 {
        return message;
    }
    log_tail(&std::fs::read_to_string(&h.log).unwrap_or_default())
}

/// Feeds the container's stdin from attach sessions, one after another; with `once`,
/// the first session's end closes it (the container reads EOF).
fn relay_stdin(listener: &UnixListener, input: OwnedFd, once: bool) {
    let mut input = std::fs::File::from(input);
    for session in listener.incoming() {
        let Ok(mut session) = session else { continue };
        if let Err(e) = std::io::copy(&mut session, &mut input) {
            // The container closed its stdin or exited.
            eprintln!("stdin relay ended: {e}");
            return;
        }
        if once {
            eprintln!("stdinOnce: the attach session ended, stdin closed");
            return;
        }
    }
}

/// Feeds a terminal container from attach sessions carrying [`TtyFrame`]s: input to the
/// master, resizes to its window size; with `once`, sessions end after the first.
fn relay_terminal(listener: &UnixListener, master: OwnedFd, once: bool) {
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
                    eprintln!("terminal relay ended: the container closed its terminal");
                    return;
                }
            }
        }
        if once {
            eprintln!("stdinOnce: the attach session ended");
            return;
        }
    }
}

/// How long the reaper sleeps at most while the container runs: its exit wakes it at
/// once (a pidfd), output as it comes; this bounds how long a zombie reparented to it
/// (the shim is a subreaper) waits to be reaped.
const IDLE_WAKE_MS: u16 = 10_000;

/// Copies the container's output (stdout, stderr; or its terminal, as stdout) into
/// its log until it has exited and its outputs are drained; reaps every child (the
/// shim is a subreaper). Returns the container's status. Sleeps in `poll` until output
/// comes or the container exits, so an idle container costs no wake-ups.
pub fn pump(log: &mut CriWriter, pipes: Vec<OwnedFd>, pid: i32) -> WaitStatus {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let exit_fd = rustix::process::Pid::from_raw(pid)
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok());
    let mut open = vec![true; pipes.len()];
    let mut status = None;
    let mut buf = vec![0u8; 64 * 1024];
    let mut drain_deadline: Option<Instant> = None;
    loop {
        // Reap: the container, and anything orphaned into us.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(s) => {
                    if s.pid().is_some_and(|p| p.as_raw() == pid) {
                        status = Some(s);
                        drain_deadline = Some(Instant::now() + Duration::from_secs(2));
                    }
                }
            }
        }
        let live: Vec<usize> = (0..pipes.len()).filter(|i| open[*i]).collect();
        if (live.is_empty() || drain_deadline.is_some_and(|d| Instant::now() > d))
            && let Some(s) = status
        {
            return s;
        }
        let mut fds: Vec<PollFd<'_>> = live
            .iter()
            .map(|i| PollFd::new(pipes[*i].as_fd(), PollFlags::POLLIN))
            .collect();
        // Until it has exited, its exit wakes us; after, the drain is bounded.
        let watch_exit = status.is_none() && exit_fd.is_some();
        if let (true, Some(fd)) = (watch_exit, &exit_fd) {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        let timeout = if watch_exit && drain_deadline.is_none() {
            PollTimeout::from(IDLE_WAKE_MS)
        } else {
            PollTimeout::from(200u16)
        };
        if poll(&mut fds, timeout).is_err() {
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
                        eprintln!("writing the container log: {e}");
                    }
                }
            }
        }
    }
}

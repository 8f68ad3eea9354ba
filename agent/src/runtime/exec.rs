//! Running a command inside a running container (exec probes, exec lifecycle hooks,
//! `kernlet exec`), as runc's `exec` does: the process joins the container's cgroup
//! and namespaces and takes on its process's identity — groups, user, capabilities,
//! no_new_privs and seccomp filter — from the container's runtime spec.
//!
//! (youki's libcontainer has a "tenant" builder for this, but its 0.7 drops the
//! seccomp filter and the user of the container's process: an exec probe would run
//! as root, unfiltered. So kernlet does it itself.)
//!
//! Joining namespaces needs a single-threaded process, so it runs in a helper
//! (`kernlet internal exec <bundle> <timeout-ms> <args...>`) that changes its own
//! namespaces, forks the command, collects its combined output (at most
//! [`MAX_OUTPUT`] bytes, like kubelet's probes), kills it at the timeout, and prints an
//! [`ExecResult`] as JSON.

use std::os::fd::AsFd as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::shim::{REQUEST, ShimRequest};
use crate::sys;

/// Output kept of an exec (kubelet's probes read at most 10 KiB).
pub const MAX_OUTPUT: usize = 10 * 1024;

/// How a command in a container ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecResult {
    pub exit_code: i32,
    /// stdout and stderr interleaved, cut at [`MAX_OUTPUT`] bytes.
    pub output: String,
    /// Killed at the timeout.
    pub timed_out: bool,
}

/// The helper's answer: a result, or why the command could not run.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HelperAnswer {
    Ran(ExecResult),
    Failed(String),
}

/// Runs `command` in the running container of `bundle` through the helper (the
/// kernlet binary `exe`), waiting at most `timeout` for it (then it is killed).
pub fn via_helper(
    exe: &Path,
    bundle: &Path,
    command: &[String],
    timeout: Duration,
) -> Result<ExecResult, String> {
    let mut child = std::process::Command::new(exe)
        .arg("internal")
        .arg("exec")
        .arg(bundle)
        .arg(timeout.as_millis().to_string())
        .args(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the exec helper {}: {e}", exe.display()))?;
    // The helper kills the command at the timeout; it gets some slack of its own.
    let deadline = Instant::now() + timeout + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the exec helper did not finish".into());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for the exec helper: {e}")),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("reading the exec helper: {e}"))?;
    match serde_json::from_slice::<HelperAnswer>(&out.stdout) {
        Ok(HelperAnswer::Ran(r)) => Ok(r),
        Ok(HelperAnswer::Failed(why)) => Err(why),
        Err(_) => Err(format!(
            "the exec helper failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// `kernlet internal exec`: runs `args` in the container of `bundle`, prints the
/// answer as JSON on stdout.
pub fn helper_main(bundle: &Path, timeout: Duration, args: &[String]) -> i32 {
    let answer = match run(bundle, timeout, args) {
        Ok(r) => HelperAnswer::Ran(r),
        Err(e) => HelperAnswer::Failed(format!("{e:#}")),
    };
    match serde_json::to_string(&answer) {
        Ok(text) => {
            println!("{text}");
            0
        }
        Err(_) => 1,
    }
}

/// Joins the cgroup and namespaces of the running container of `bundle` (this helper
/// process exists for one command, so it may change its own); returns the spec the
/// command takes its identity from.
fn enter(bundle: &Path) -> anyhow::Result<Spec> {
    use anyhow::Context as _;
    let req: ShimRequest = serde_json::from_slice(&std::fs::read(bundle.join(REQUEST))?)?;
    let state: super::shim::ShimState = serde_json::from_slice(
        &std::fs::read(bundle.join(super::shim::STATE)).context("the container has not started")?,
    )?;
    let spec: Spec = serde_json::from_slice(&std::fs::read(req.bundle.join("config.json"))?)
        .context("reading the container's runtime spec")?;
    // The container's process by a pidfd, checked to be in the container's cgroup: a
    // recorded pid may name another process once the container is gone.
    let process = sys::process::pidfd_open(state.pid)
        .map_err(|_| anyhow::anyhow!("the container is not running"))?;
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", state.pid)).unwrap_or_default();
    if !in_cgroup(&cgroup, &spec.linux.cgroups_path) || !sys::process::pidfd_alive(&process) {
        anyhow::bail!(
            "the container is not running (pid {} is not its process any more)",
            state.pid
        );
    }
    // Into the container's cgroup first (the command's children inherit it), while
    // the host's cgroup tree is still visible.
    if !spec.linux.cgroups_path.is_empty() {
        let procs = req
            .cgroup_root
            .join(spec.linux.cgroups_path.trim_start_matches('/'))
            .join("cgroup.procs");
        std::fs::write(&procs, std::process::id().to_string())
            .with_context(|| format!("joining the container's cgroup {}", procs.display()))?;
    }
    // Then its namespaces, all at once through the pidfd (the kernel enters the mount
    // namespace last).
    use nix::sched::CloneFlags;
    let flags = spec
        .linux
        .namespaces
        .iter()
        .filter_map(|n| match n.kind.as_str() {
            // A user-namespaced pod's: entered first by the kernel, so the command
            // has the container's IDs and no rights outside its pod.
            "user" => Some(CloneFlags::CLONE_NEWUSER),
            "ipc" => Some(CloneFlags::CLONE_NEWIPC),
            "uts" => Some(CloneFlags::CLONE_NEWUTS),
            "network" => Some(CloneFlags::CLONE_NEWNET),
            "pid" => Some(CloneFlags::CLONE_NEWPID),
            "cgroup" => Some(CloneFlags::CLONE_NEWCGROUP),
            _ => None,
        })
        .fold(CloneFlags::CLONE_NEWNS, |all, f| all | f);
    // The container's OOM score, as its own processes have it (best effort: lowering
    // needs CAP_SYS_RESOURCE, and the container may have had kernlet's own instead);
    // written while this process's /proc is still the node's.
    if let Some(adj) = spec.process.oom_score_adj {
        let _ = std::fs::write("/proc/self/oom_score_adj", adj.to_string());
    }
    nix::sched::setns(&process, flags).context("entering the container's namespaces")?;
    Ok(spec)
}

/// Whether a `/proc/<pid>/cgroup` text puts the process in the cgroup `cgroups_path`
/// (relative to kernlet's cgroup root, which is itself below the mount's root).
fn in_cgroup(proc_cgroup: &str, cgroups_path: &str) -> bool {
    let want = cgroups_path.trim_matches('/');
    proc_cgroup
        .lines()
        .filter_map(|l| l.strip_prefix("0::"))
        .any(|path| {
            want.is_empty()
                || path.trim_end_matches('/') == format!("/{want}")
                || path.trim_end_matches('/').ends_with(&format!("/{want}"))
                || path.contains(&format!("/{want}/"))
        })
}

/// How `kernlet internal exec-stream` wires the command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamMode {
    /// The helper's own stdin, stdout and stderr (pipes).
    Pipes,
    /// The helper's terminal (its stdin) becomes the command's controlling terminal:
    /// `kernlet exec -it` on the node.
    CallerTerminal,
    /// A terminal allocated inside the container (its own devpts, so `tty` names it),
    /// relayed: the helper's stdin carries [`TtyFrame`]s, its stdout the terminal's
    /// output. For exec over the kubelet API.
    Relay,
}

impl StreamMode {
    pub fn arg(self) -> &'static str {
        match self {
            Self::Pipes => "0",
            Self::CallerTerminal => "1",
            Self::Relay => "relay",
        }
    }

    pub fn parse(arg: &str) -> Self {
        match arg {
            "1" => Self::CallerTerminal,
            "relay" => Self::Relay,
            _ => Self::Pipes,
        }
    }
}

pub use kernlet_shim::tty::TtyFrame;

/// `kernlet internal exec-stream`: runs `args` in the container of `bundle` wired as
/// `mode` says, and exits with the command's exit code (128 + signal when killed). Why
/// it could not run is on stderr, with 126 or 127.
pub fn stream_helper_main(bundle: &Path, mode: StreamMode, args: &[String]) -> i32 {
    use nix::sys::wait::{WaitStatus, waitpid};
    if args.is_empty() {
        eprintln!("kernlet exec: no command to run");
        return 126;
    }
    let spec = match enter(bundle) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kernlet exec: {e:#}");
            return 126;
        }
    };
    // In the container's mount namespace now: its /dev/ptmx gives a terminal of its
    // own devpts.
    let pty = match mode {
        StreamMode::Relay => match sys::process::open_pty() {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("kernlet exec: allocating a terminal in the container: {e}");
                return 126;
            }
        },
        _ => None,
    };
    let args = args.to_vec();
    let slave = pty.as_ref().map(|(_, s)| s);
    let pid = match sys::process::fork_run(|| {
        if let Some(slave) = slave {
            let _ = nix::unistd::dup2_stdin(slave);
            let _ = nix::unistd::dup2_stdout(slave);
            let _ = nix::unistd::dup2_stderr(slave);
        }
        if mode != StreamMode::Pipes
            && let Err(e) = sys::process::take_terminal()
        {
            eprintln!("kernlet exec: making the terminal the command's: {e}");
            return 126;
        }
        exec_in_container(&spec, &args)
    }) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("kernlet exec: forking the command: {e}");
            return 126;
        }
    };
    if let Some((master, slave)) = pty {
        drop(slave);
        relay(&master);
    }
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 126,
        }
    }
}

/// Moves [`TtyFrame`]s from stdin to the terminal `master` and its output to stdout,
/// until the terminal's last process is gone (EIO on the master).
fn relay(master: &std::os::fd::OwnedFd) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::io::Write as _;
    use std::os::fd::AsFd as _;
    let stdin = std::io::stdin();
    let mut stdin_open = true;
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = std::io::stdout().lock();
    loop {
        let mut fds = vec![PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        let ready = |f: &PollFd<'_>| {
            f.revents().is_some_and(|r| {
                r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
            })
        };
        let (master_ready, stdin_ready) = (ready(&fds[0]), fds.get(1).is_some_and(ready));
        drop(fds);
        if master_ready {
            match nix::unistd::read(master, &mut buf) {
                Ok(0) | Err(nix::errno::Errno::EIO) => return,
                Ok(n) => {
                    if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                        return;
                    }
                }
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Err(_) => return,
            }
        }
        if stdin_ready {
            match nix::unistd::read(&stdin, &mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    pending.extend_from_slice(&buf[..n]);
                    for f in TtyFrame::decode(&mut pending) {
                        if f.apply(master).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

fn run(bundle: &Path, timeout: Duration, args: &[String]) -> anyhow::Result<ExecResult> {
    use anyhow::Context as _;
    use nix::sys::signal::{Signal, kill};
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    if args.is_empty() {
        anyhow::bail!("no command to run");
    }
    let spec = enter(bundle)?;
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let args = args.to_vec();
    let pid = sys::process::fork_run(|| {
        // Only stdout/stderr to the pipe; any error goes there too.
        let _ = nix::unistd::dup2_stdout(&out_w);
        let _ = nix::unistd::dup2_stderr(&out_w);
        if let Ok(null) = std::fs::File::open("/dev/null") {
            let _ = nix::unistd::dup2_stdin(&null);
        }
        exec_in_container(&spec, &args)
    })
    .context("forking the command")?;
    drop(out_w);
    let deadline = Instant::now() + timeout;
    let mut output = Vec::new();
    let mut buf = [0u8; 4096];
    let mut timed_out = false;
    let mut open = true;
    let mut status = None;
    while status.is_none() || open {
        // The command is this helper's only child (what it leaves behind belongs to
        // the container's init): one reap, whose status is kept.
        if status.is_none()
            && let Ok(s) = waitpid(pid, Some(WaitPidFlag::WNOHANG))
            && s != WaitStatus::StillAlive
        {
            status = Some(s);
        }
        if Instant::now() > deadline && status.is_none() {
            timed_out = true;
            let _ = kill(pid, Signal::SIGKILL);
            status = waitpid(pid, None).ok();
            break;
        }
        if !open {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let mut fds = [nix::poll::PollFd::new(
            out_r.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(50u16)).unwrap_or(0) == 0 {
            // The command has exited but something it started still holds the pipe:
            // what was written so far is the output.
            if status.is_some() {
                break;
            }
            continue;
        }
        match nix::unistd::read(&out_r, &mut buf) {
            Ok(0) | Err(_) => open = false,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(output.len());
                output.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    let exit_code = match status {
        Some(WaitStatus::Exited(_, code)) => code,
        Some(WaitStatus::Signaled(_, sig, _)) => 128 + sig as i32,
        _ => -1,
    };
    Ok(ExecResult {
        exit_code,
        output: String::from_utf8_lossy(&output).into_owned(),
        timed_out,
    })
}

/// In the forked child: becomes the container process and runs `args`; when that
/// fails, says why on stderr and returns the shell's code for it (127: no such
/// command, 126: could not run it).
fn exec_in_container(spec: &Spec, args: &[String]) -> i32 {
    let why = become_the_container_process(spec, args);
    eprintln!("kernlet exec: {why:#}");
    if why.to_string().contains("not found") {
        127
    } else {
        126
    }
}

/// What an exec needs from the container's runtime spec.
#[derive(Debug, Deserialize)]
struct Spec {
    process: SpecProcess,
    #[serde(default)]
    linux: SpecLinux,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecProcess {
    user: SpecUser,
    #[serde(default)]
    oom_score_adj: Option<i32>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    cwd: String,
    #[serde(default)]
    no_new_privileges: bool,
    capabilities: Option<libcontainer::oci_spec::runtime::LinuxCapabilities>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecUser {
    uid: u32,
    gid: u32,
    #[serde(default)]
    additional_gids: Vec<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecLinux {
    #[serde(default)]
    cgroups_path: String,
    #[serde(default)]
    namespaces: Vec<SpecNamespace>,
    seccomp: Option<libcontainer::oci_spec::runtime::LinuxSeccomp>,
}

#[derive(Clone, Debug, Deserialize)]
struct SpecNamespace {
    #[serde(rename = "type")]
    kind: String,
}

/// In the forked child, inside the container's namespaces: takes on the container
/// process's identity — working directory, groups, user, capabilities,
/// no_new_privs, seccomp filter (as runc does for `exec`) — and executes `args`.
/// Returns only on failure.
fn become_the_container_process(spec: &Spec, args: &[String]) -> anyhow::Error {
    use anyhow::Context as _;
    let go = || -> anyhow::Result<std::convert::Infallible> {
        let p = &spec.process;
        let cwd = if p.cwd.is_empty() {
            "/"
        } else {
            p.cwd.as_str()
        };
        nix::unistd::chdir(cwd).with_context(|| format!("entering the working directory {cwd}"))?;
        // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: load it while
        // still privileged (what follows must pass it).
        if !p.no_new_privileges
            && let Some(s) = &spec.linux.seccomp
        {
            libcontainer::seccomp::initialize_seccomp(s).context("loading the seccomp filter")?;
        }
        let gids: Vec<nix::unistd::Gid> = p
            .user
            .additional_gids
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&gids).context("setting the supplementary groups")?;
        let gid = nix::unistd::Gid::from_raw(p.user.gid);
        nix::unistd::setresgid(gid, gid, gid).context("setting the group")?;
        nix::sys::prctl::set_keepcaps(true).context("keeping capabilities")?;
        let uid = nix::unistd::Uid::from_raw(p.user.uid);
        nix::unistd::setresuid(uid, uid, uid).context("setting the user")?;
        let syscall = libcontainer::syscall::syscall::create_syscall();
        libcontainer::capabilities::reset_effective(syscall.as_ref())
            .context("restoring the effective capabilities")?;
        if let Some(caps) = &p.capabilities {
            libcontainer::capabilities::drop_privileges(caps, syscall.as_ref())
                .context("setting the capabilities")?;
        }
        if p.no_new_privileges {
            nix::sys::prctl::set_no_new_privs().context("setting no_new_privs")?;
            if let Some(s) = &spec.linux.seccomp {
                libcontainer::seccomp::initialize_seccomp(s)
                    .context("loading the seccomp filter")?;
            }
        }
        let program = find_program(&args[0], &p.env)?;
        let c = |s: &str| std::ffi::CString::new(s).context("a NUL byte in the command");
        let argv: Vec<std::ffi::CString> =
            args.iter().map(|a| c(a)).collect::<anyhow::Result<_>>()?;
        let envp: Vec<std::ffi::CString> =
            p.env.iter().map(|e| c(e)).collect::<anyhow::Result<_>>()?;
        nix::unistd::execve(&c(&program)?, &argv, &envp)
            .with_context(|| format!("executing {program}"))
    };
    match go() {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// `name` as the container would find it: a path as is, else the first executable
/// file of that name in the container's `PATH`.
fn find_program(name: &str, env: &[String]) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt as _;
    if name.contains('/') {
        return Ok(name.to_string());
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .map(|p| p.display().to_string())
        .ok_or_else(|| anyhow::anyhow!("executable {name:?} not found in $PATH {path}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_recorded_pid_is_the_containers_only_in_its_cgroup() {
        let at = |p: &str| format!("0::{p}\n");
        let path = "/kubepods/besteffort/podu/c1";
        assert!(super::in_cgroup(
            &at("/kltest-1/kernlet/kubepods/besteffort/podu/c1"),
            path
        ));
        assert!(super::in_cgroup(&at("/kubepods/besteffort/podu/c1"), path));
        assert!(super::in_cgroup(
            &at("/kubepods/besteffort/podu/c1/init.scope"),
            path
        ));
        assert!(!super::in_cgroup(
            &at("/kubepods/besteffort/podu/c10"),
            path
        ));
        assert!(!super::in_cgroup(&at("/user.slice/session-1.scope"), path));
        assert!(!super::in_cgroup("", path));
    }

    use super::*;

    #[test]
    fn terminal_frames_survive_any_split() {
        let frames = [
            TtyFrame::Data(b"ls\n".to_vec()),
            TtyFrame::Resize(91, 17),
            TtyFrame::End,
        ];
        let wire: Vec<u8> = frames.iter().flat_map(TtyFrame::encode).collect();
        for cut in 0..wire.len() {
            let mut buf = wire[..cut].to_vec();
            let mut got = TtyFrame::decode(&mut buf);
            buf.extend_from_slice(&wire[cut..]);
            got.extend(TtyFrame::decode(&mut buf));
            assert_eq!(got, frames, "cut at {cut}");
            assert!(buf.is_empty());
        }
        assert_eq!(
            StreamMode::parse(StreamMode::Relay.arg()),
            StreamMode::Relay
        );
    }
}

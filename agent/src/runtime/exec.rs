//! Running a command inside a running container (exec probes, exec lifecycle hooks,
//! `kernlet exec`): youki's libcontainer joins the container's namespaces, cgroup,
//! user, capabilities and seccomp filter (a "tenant" process), exactly as the
//! container's own process has them.
//!
//! Like container creation, that must not happen in the multi-threaded agent, so it
//! runs in a helper process (`kernlet internal exec <bundle> <timeout-ms> <args...>`)
//! that shows kernlet's cgroup subtree as /sys/fs/cgroup in a private mount namespace
//! (see the shim), collects the command's combined output (at most [`MAX_OUTPUT`]
//! bytes, like kubelet's probes), kills it at the timeout, and prints an
//! [`ExecResult`] as JSON.

use std::os::fd::{AsFd as _, OwnedFd};
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

fn run(bundle: &Path, timeout: Duration, args: &[String]) -> anyhow::Result<ExecResult> {
    use anyhow::Context as _;
    use nix::sys::signal::{Signal, kill};
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    if args.is_empty() {
        anyhow::bail!("no command to run");
    }
    let req: ShimRequest = serde_json::from_slice(&std::fs::read(bundle.join(REQUEST))?)?;
    // libcontainer's log lines would otherwise land in our stdout.
    let _ = tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::new());
    nix::sys::prctl::set_child_subreaper(true).context("becoming a subreaper")?;
    sys::mount::private_namespace().context("creating a private mount namespace")?;
    sys::mount::bind(&req.cgroup_root, Path::new("/sys/fs/cgroup"))
        .with_context(|| format!("showing {} as /sys/fs/cgroup", req.cgroup_root.display()))?;
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let err_w = out_w.try_clone()?;
    let devnull: OwnedFd = std::fs::File::open("/dev/null")?.into();
    let pid = libcontainer::container::builder::ContainerBuilder::new(
        req.id.clone(),
        libcontainer::syscall::syscall::SyscallType::Linux,
    )
    .with_root_path(&req.state_root)?
    .with_stdin(devnull)
    .with_stdout(out_w)
    .with_stderr(err_w)
    .as_tenant()
    .with_container_args(args.to_vec())
    .with_detach(true)
    .build()
    .context("starting the command in the container")?;
    // libcontainer's nix is another version than ours.
    let pid = nix::unistd::Pid::from_raw(pid.as_raw());
    let deadline = Instant::now() + timeout;
    let mut output = Vec::new();
    let mut buf = [0u8; 4096];
    let mut timed_out = false;
    let mut open = true;
    let mut status = None;
    while status.is_none() || open {
        if let Ok(s) = waitpid(pid, Some(WaitPidFlag::WNOHANG))
            && s != WaitStatus::StillAlive
        {
            status = Some(s);
        }
        // Reap whatever the command left behind and was re-parented to us.
        while let Ok(s) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if s == WaitStatus::StillAlive {
                break;
            }
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

//! The container shim: one single-threaded process per container (kernlet re-executed
//! as `kernlet internal shim`), the container's parent for its whole life. It sets the
//! container up and starts it, then `exec`s the small reaper (`kernlet-shim`, embedded
//! in kernlet, see [`super::reaper`]) — the same process, so the container stays its
//! child — which holds its output, stdin and exit from then on.
//!
//! It exists because (1) youki's libcontainer forks with raw `clone3` and must not run
//! in the multi-threaded agent; (2) libcontainer finds cgroup v2 only at
//! `/sys/fs/cgroup`, which the shim provides in a private mount namespace by bind-
//! mounting kernlet's cgroup2 subtree there; (3) the container's exit status and its
//! output must be collected even while the agent is down or restarting, so the agent
//! can be killed and come back without disturbing a running container.
//!
//! Files in the container directory (`<state-dir>/containers/<id>`): see
//! [`kernlet_shim::records`]; the OCI bundle (`config.json`, the root mount point) is
//! `<run-dir>/bundles/<id>`.
//!
//! The overlay root and the cgroup bind mount exist only in the shim's mount
//! namespace and vanish with it.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::runtime::logs::Rotation;
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
    /// The reaper binary the shim becomes once the container runs; `None`: the shim
    /// reaps the container itself.
    #[serde(default)]
    pub reaper: Option<PathBuf>,
    /// The sources of `Bidirectional` volume mounts: kept in the node's peer groups
    /// in the shim's mount namespace (every other mount only receives).
    #[serde(default)]
    pub shared_mounts: Vec<PathBuf>,
    /// Image volumes this container mounts: each image's layers (top first, by name in
    /// `layers_dir`) mounted read-only at its path, in the shim's mount namespace only.
    #[serde(default)]
    pub image_volumes: Vec<ImageVolumeMount>,
    /// `hostUsers: false`: the pod's user namespace and the idmapped views to make
    /// (the image's layers are idmapped too).
    #[serde(default)]
    pub idmap: Option<super::idmapped::IdmapRequest>,
}

/// An image volume as the shim mounts it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageVolumeMount {
    pub path: PathBuf,
    pub lower: Vec<String>,
    /// A subPath of the image (relative, checked) and where it is bound for the
    /// container.
    #[serde(default)]
    pub sub_path: Option<(String, PathBuf)>,
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

use kernlet_shim::reaper::Handover;
pub use kernlet_shim::records::{
    ERROR, EXIT, ExitRecord, HANDOVER, LOG, REQUEST, STATE, ShimState, TERMINATION_LOG,
};

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
    if req.shared_mounts.is_empty() {
        sys::mount::slave_namespace()
    } else {
        sys::mount::slave_namespace_except(&req.shared_mounts)
    }
    .context("creating the container's mount namespace")?;
    sys::mount::bind(&req.cgroup_root, Path::new("/sys/fs/cgroup"))
        .with_context(|| format!("showing {} as /sys/fs/cgroup", req.cgroup_root.display()))?;
    // A user-namespaced container's files are seen through its pod's ID mapping.
    let userns: Option<OwnedFd> = match &req.idmap {
        Some(i) => Some(
            std::fs::File::open(&i.userns)
                .with_context(|| {
                    format!("opening the pod's user namespace {}", i.userns.display())
                })?
                .into(),
        ),
        None => None,
    };
    let (layers_dir, lower) = layers(&req, &req.lower, "lower", userns.as_ref())?;
    sys::mount::overlay(
        &req.bundle.join("rootfs"),
        &layers_dir,
        &lower,
        &req.upper,
        &req.work,
    )
    .context("mounting the container's root filesystem (overlayfs)")?;
    for (n, v) in req.image_volumes.iter().enumerate() {
        let (layers_dir, lower) = layers(&req, &v.lower, &format!("image{n}"), userns.as_ref())?;
        sys::mount::image_read_only(&v.path, &layers_dir, &lower)
            .with_context(|| format!("mounting the image volume at {}", v.path.display()))?;
        if let Some((sub, target)) = &v.sub_path {
            // Beneath the image's root: a symlink in the image cannot lead out of it.
            let fd = sys::mount::open_beneath(&v.path, Path::new(sub), None)
                .with_context(|| format!("subPath {sub:?} of the image volume"))?;
            sys::mount::bind_fd(&fd, target)
                .with_context(|| format!("binding subPath {sub:?} of the image volume"))?;
        }
    }
    if let (Some(i), Some(fd)) = (&req.idmap, &userns) {
        for (source, view) in &i.mounts {
            sys::userns::idmapped_bind(source, view, fd).with_context(|| {
                format!("showing {} to the pod's user namespace", source.display())
            })?;
        }
    }

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
    let cgroup = container
        .spec()
        .ok()
        .and_then(|c| c.cgroup_path.strip_prefix("/").ok().map(Path::to_path_buf))
        .map(|p| Path::new("/sys/fs/cgroup").join(p));
    if let Err(e) = limit_devices(&req.bundle, cgroup.as_deref()) {
        let _ = container.delete(true);
        return Err(e);
    }
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
            started_at: kernlet_shim::records::now(),
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
    let handover = handover(
        &req,
        pid,
        master,
        (out_r, err_r),
        stdin_relay,
        listener,
        cgroup,
    )?;
    state::write_atomic(
        &bundle.join(HANDOVER),
        &serde_json::to_vec(&handover)?,
        0o600,
    )?;
    hand_over(bundle, req.reaper.as_deref());
    kernlet_shim::reaper::run(bundle).context("reaping the container")
}

/// The directory and names of an image's layers (top first) to mount: the store's
/// own, or — for a user-namespaced container — idmapped views of them made in the
/// bundle's `dir`.
fn layers(
    req: &ShimRequest,
    lower: &[String],
    dir: &str,
    userns: Option<&OwnedFd>,
) -> anyhow::Result<(PathBuf, Vec<String>)> {
    use anyhow::Context as _;
    let Some(fd) = userns else {
        return Ok((req.layers_dir.clone(), lower.to_vec()));
    };
    let views = req.bundle.join(dir);
    let mut names = Vec::with_capacity(lower.len());
    for (i, layer) in lower.iter().enumerate() {
        sys::userns::idmapped_bind(&req.layers_dir.join(layer), &views.join(i.to_string()), fd)
            .with_context(|| format!("showing layer {layer} to the pod's user namespace"))?;
        names.push(i.to_string());
    }
    Ok((views, names))
}

/// Attaches the device program of the container's rules (`linux.resources.devices`
/// of its `config.json`) to its cgroup, before its first instruction runs: libcontainer
/// does not on cgroup v2 (see `model::devices`).
fn limit_devices(bundle: &Path, cgroup: Option<&Path>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json"))?)?;
    let rules: Vec<crate::model::devices::DeviceRule> =
        serde_json::from_value(spec["linux"]["resources"]["devices"].clone()).unwrap_or_default();
    if crate::model::devices::allows_all(&rules) {
        return Ok(());
    }
    let cgroup = cgroup.context("the container has no cgroup to limit its devices in")?;
    sys::device_filter::attach(cgroup, &crate::model::devices::program(&rules))
        .with_context(|| format!("limiting the devices of cgroup {}", cgroup.display()))
}

/// What the reaper takes over: the container and the descriptors it needs, left open
/// across the `exec`.
fn handover(
    req: &ShimRequest,
    pid: i32,
    master: Option<OwnedFd>,
    (out_r, err_r): (OwnedFd, OwnedFd),
    stdin_relay: Option<(OwnedFd, &StdinRequest)>,
    listener: Option<std::os::unix::net::UnixListener>,
    cgroup: Option<PathBuf>,
) -> anyhow::Result<Handover> {
    let (outputs, terminal, stdin) = match master {
        Some(m) => {
            let attach = match &stdin_relay {
                Some(_) => Some(sys::process::keep_open(m.try_clone()?)?),
                None => None,
            };
            (vec![sys::process::keep_open(m)?], attach, None)
        }
        None => {
            let stdin = match stdin_relay
                .as_ref()
                .map(|(w, _)| w.try_clone())
                .transpose()?
            {
                Some(w) => Some(sys::process::keep_open(w)?),
                None => None,
            };
            (
                vec![
                    sys::process::keep_open(out_r)?,
                    sys::process::keep_open(err_r)?,
                ],
                None,
                stdin,
            )
        }
    };
    let attach = match (listener, &req.stdin) {
        (Some(l), Some(r)) => Some((sys::process::keep_open(l.into())?, r.socket.clone())),
        _ => None,
    };
    Ok(Handover {
        pid,
        outputs,
        terminal,
        stdin,
        attach,
        stdin_once: req.stdin.as_ref().is_some_and(|r| r.once),
        console: req.console.clone(),
        log: req.log.clone(),
        rotation: req.rotation,
        message_from_log_on_error: req.message_from_log_on_error,
        cgroup,
        runtime_state: Some(req.state_root.join(&req.id)),
    })
}

/// Becomes the reaper `reaper` (its log on stderr, appended to the shim's log); returns
/// only when that cannot be done, said in the log — the caller then reaps in this
/// process, at the cost of its larger footprint.
fn hand_over(bundle: &Path, reaper: Option<&Path>) {
    use std::os::unix::process::CommandExt as _;
    let Some(reaper) = reaper else {
        return;
    };
    match std::fs::OpenOptions::new()
        .append(true)
        .open(bundle.join(LOG))
        .map(nix::unistd::dup2_stderr)
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("the reaper's log: {e}"),
        Err(e) => tracing::warn!("the reaper's log: {e}"),
    }
    let e = std::process::Command::new(reaper).arg(bundle).exec();
    tracing::warn!(
        "cannot become the reaper {}: {e}; reaping in this process",
        reaper.display()
    );
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

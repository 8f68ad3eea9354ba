//! A private D-Bus bus (Debian's `dbus-daemon`) with a stand-in for systemd-logind's
//! Manager interface: it hands out inhibitor locks (recording what was asked and
//! whether the lock is still held) and announces a shutdown with `PrepareForShutdown`,
//! as logind does when the machine is told to power off; and a stand-in for systemd's
//! Manager whose `KillUnit(systemd-logind.service, SIGHUP)` makes the fake logind read
//! `InhibitDelayMaxSec` again from its drop-in directory.

use std::os::fd::{AsFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// A lock handed out: what it was asked for with, and our end of its pipe (readable
/// at end-of-file once the holder closed its end).
struct Lock {
    asked: (String, String, String, String),
    ours: OwnedFd,
}

#[derive(Default)]
struct State {
    locks: Vec<Lock>,
    delay_max: Duration,
    /// The units systemd was asked to signal: (unit, whom, signal).
    kills: Vec<(String, String, i32)>,
}

struct Manager {
    state: Arc<Mutex<State>>,
}

/// systemd's Manager, for logind's reload.
struct Systemd {
    state: Arc<Mutex<State>>,
    conf_dir: PathBuf,
}

/// The last `InhibitDelayMaxSec=` in the drop-ins of `dir`, in name order.
fn configured_delay(dir: &Path) -> Option<Duration> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    files.sort();
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.trim().strip_prefix("InhibitDelayMaxSec="))
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .next_back()
        .map(Duration::from_secs)
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl Systemd {
    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::fdo::Result<()> {
        let Ok(mut s) = self.state.lock() else {
            return Err(zbus::fdo::Error::Failed("state poisoned".into()));
        };
        s.kills.push((name.into(), whom.into(), signal));
        if name == "systemd-logind.service"
            && signal == 1
            && let Some(d) = configured_delay(&self.conf_dir)
        {
            s.delay_max = d;
        }
        Ok(())
    }
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl Manager {
    fn inhibit(
        &self,
        what: &str,
        who: &str,
        why: &str,
        mode: &str,
    ) -> zbus::fdo::Result<zbus::zvariant::OwnedFd> {
        let (ours, theirs) =
            nix::unistd::pipe().map_err(|e| zbus::fdo::Error::Failed(format!("pipe: {e}")))?;
        if let Ok(mut s) = self.state.lock() {
            s.locks.push(Lock {
                asked: (what.into(), who.into(), why.into(), mode.into()),
                ours,
            });
        }
        Ok(theirs.into())
    }

    #[zbus(property, name = "InhibitDelayMaxUSec")]
    fn inhibit_delay_max_usec(&self) -> u64 {
        self.state
            .lock()
            .map(|s| s.delay_max.as_micros() as u64)
            .unwrap_or(0)
    }

    #[zbus(signal)]
    async fn prepare_for_shutdown(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        start: bool,
    ) -> zbus::Result<()>;
}

/// The bus and the stand-in logind on it; the bus daemon ends when this is dropped.
pub struct FakeLogind {
    daemon: Child,
    address: String,
    conn: zbus::Connection,
    state: Arc<Mutex<State>>,
    conf_dir: PathBuf,
}

impl Drop for FakeLogind {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

const PATH: &str = "/org/freedesktop/login1";

impl FakeLogind {
    /// Starts a bus listening under `dir` and logind on it, delaying shutdowns at most
    /// `delay_max` until a reload reads another value from `<dir>/logind.conf.d`.
    pub async fn start(dir: &Path, delay_max: Duration) -> anyhow::Result<Self> {
        let socket = dir.join("system_bus_socket");
        let address = format!("unix:path={}", socket.display());
        let daemon = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile", "--address"])
            .arg(&address)
            .stdout(Stdio::null())
            .spawn()
            .context("starting dbus-daemon (`cargo xtask setup` installs Debian's dbus-daemon)")?;
        let start = Instant::now();
        while !socket.exists() {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(10),
                "dbus-daemon never listened at {}",
                socket.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let state = Arc::new(Mutex::new(State {
            delay_max,
            ..Default::default()
        }));
        let conf_dir = dir.join("logind.conf.d");
        let conn = zbus::connection::Builder::address(address.as_str())?
            .name("org.freedesktop.login1")?
            .name("org.freedesktop.systemd1")?
            .serve_at(
                PATH,
                Manager {
                    state: Arc::clone(&state),
                },
            )?
            .serve_at(
                "/org/freedesktop/systemd1",
                Systemd {
                    state: Arc::clone(&state),
                    conf_dir: conf_dir.clone(),
                },
            )?
            .build()
            .await?;
        Ok(Self {
            daemon,
            address,
            conn,
            state,
            conf_dir,
        })
    }

    /// The bus address, for kernlet's `--system-bus-address`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// logind's drop-in directory, for kernlet's `--logind-conf-dir`.
    pub fn conf_dir(&self) -> &Path {
        &self.conf_dir
    }

    /// The longest delay logind grants an inhibitor lock now.
    pub fn delay_max(&self) -> Duration {
        self.state.lock().map(|s| s.delay_max).unwrap_or_default()
    }

    /// What systemd was asked to signal: (unit, whom, signal).
    pub fn kills(&self) -> Vec<(String, String, i32)> {
        self.state
            .lock()
            .map(|s| s.kills.clone())
            .unwrap_or_default()
    }

    /// What each lock was asked with (what, who, why, mode), oldest first.
    pub fn locks(&self) -> Vec<(String, String, String, String)> {
        self.state
            .lock()
            .map(|s| s.locks.iter().map(|l| l.asked.clone()).collect())
            .unwrap_or_default()
    }

    /// How many handed-out locks are still held (their holder's end open).
    pub fn held(&self) -> usize {
        let Ok(s) = self.state.lock() else {
            return 0;
        };
        s.locks
            .iter()
            .filter(|l| {
                let mut fds = [nix::poll::PollFd::new(
                    l.ours.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                // Readable (end-of-file) or hung up: released.
                nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).unwrap_or(0) == 0
            })
            .count()
    }

    /// Announces the machine's shutdown (`true`) or its cancellation (`false`).
    pub async fn prepare_for_shutdown(&self, start: bool) -> anyhow::Result<()> {
        let iface = self
            .conn
            .object_server()
            .interface::<_, Manager>(PATH)
            .await?;
        Manager::prepare_for_shutdown(iface.signal_emitter(), start).await?;
        Ok(())
    }
}

//! A private D-Bus bus (Debian's `dbus-daemon`) with a stand-in for systemd-logind's
//! Manager interface: it hands out inhibitor locks (recording what was asked and
//! whether the lock is still held) and announces a shutdown with `PrepareForShutdown`,
//! as logind does when the machine is told to power off.

use std::os::fd::{AsFd as _, OwnedFd};
use std::path::Path;
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
}

struct Manager {
    state: Arc<Mutex<State>>,
    delay_max: Duration,
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
        self.delay_max.as_micros() as u64
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
    /// `delay_max`.
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
        let state = Arc::new(Mutex::new(State::default()));
        let conn = zbus::connection::Builder::address(address.as_str())?
            .name("org.freedesktop.login1")?
            .serve_at(
                PATH,
                Manager {
                    state: Arc::clone(&state),
                    delay_max,
                },
            )?
            .build()
            .await?;
        Ok(Self {
            daemon,
            address,
            conn,
            state,
        })
    }

    /// The bus address, for kernlet's `--system-bus-address`.
    pub fn address(&self) -> &str {
        &self.address
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

//! Graceful node shutdown through systemd-logind, as kubelet does it: a `delay`
//! inhibitor lock on shutdown is held while the node runs; when logind announces the
//! machine's shutdown (`PrepareForShutdown(true)`), the node's pods are ended (see
//! [`super::shutdown`]) and the lock is released so the shutdown goes on. A shutdown
//! that is cancelled (`PrepareForShutdown(false)`) makes the node ready again and takes
//! a new lock. When logind would delay a shutdown less than the grace periods need, a
//! drop-in raising `InhibitDelayMaxSec` is written and logind reloaded (SIGHUP through
//! systemd), as kubelet does.

use std::time::Duration;

use futures::StreamExt as _;

/// The parts of logind's Manager interface kubelet uses.
#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1"
)]
trait Login1Manager {
    fn inhibit(
        &self,
        what: &str,
        who: &str,
        why: &str,
        mode: &str,
    ) -> zbus::Result<zbus::zvariant::OwnedFd>;

    #[zbus(signal)]
    fn prepare_for_shutdown(&self, start: bool) -> zbus::Result<()>;

    #[zbus(property, name = "InhibitDelayMaxUSec")]
    fn inhibit_delay_max_usec(&self) -> zbus::Result<u64>;
}

/// systemd's Manager: kubelet reloads logind's configuration through it.
#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Systemd1Manager {
    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;
}

/// Where logind is reached and configured.
#[derive(Clone, Debug)]
pub struct Logind {
    /// The system bus (None: the default one).
    pub bus: Option<String>,
    /// logind's drop-in directory (`/etc/systemd/logind.conf.d`).
    pub conf_dir: std::path::PathBuf,
}

/// The drop-in's name and text for a delay of `max` (whole seconds, rounded up).
pub fn drop_in(max: Duration) -> (&'static str, String) {
    let secs = max.as_secs() + u64::from(max.subsec_nanos() > 0);
    (
        "99-kernlet.conf",
        format!(
            "# kernlet's logind override (graceful node shutdown)\n[Login]\nInhibitDelayMaxSec={secs}\n"
        ),
    )
}

/// Raises logind's `InhibitDelayMaxSec` to `wanted` when it is less, as kubelet: writes
/// the drop-in, has systemd send logind SIGHUP, and waits (≤3 s) for the new value.
async fn raise_inhibit_delay(
    conn: &zbus::Connection,
    manager: &Login1ManagerProxy<'_>,
    conf_dir: &std::path::Path,
    wanted: Duration,
) {
    let current = match manager.inhibit_delay_max_usec().await {
        Ok(max) => Duration::from_micros(max),
        Err(e) => {
            tracing::warn!("graceful node shutdown: reading logind's InhibitDelayMaxUSec: {e}");
            return;
        }
    };
    if current >= wanted {
        return;
    }
    let (name, text) = drop_in(wanted);
    let path = conf_dir.join(name);
    if let Err(e) = std::fs::create_dir_all(conf_dir).and_then(|()| std::fs::write(&path, text)) {
        tracing::warn!(
            "graceful node shutdown: logind delays a shutdown at most {current:?} (InhibitDelayMaxSec), less than the {wanted:?} asked for, and {} could not be written: {e}; raise InhibitDelayMaxSec by hand",
            path.display()
        );
        return;
    }
    let reload = async {
        Systemd1ManagerProxy::new(conn)
            .await?
            .kill_unit("systemd-logind.service", "all", 1)
            .await
    };
    if let Err(e) = reload.await {
        tracing::warn!(
            "graceful node shutdown: wrote {} but could not reload systemd-logind: {e}; reload it (systemctl kill -s HUP systemd-logind)",
            path.display()
        );
        return;
    }
    let mut delay = Duration::from_millis(100);
    for _ in 0..5 {
        tokio::time::sleep(delay).await;
        if manager
            .inhibit_delay_max_usec()
            .await
            .is_ok_and(|m| Duration::from_micros(m) >= wanted)
        {
            tracing::info!(path = %path.display(), "graceful node shutdown: raised logind's InhibitDelayMaxSec to {wanted:?}");
            return;
        }
        delay *= 2;
    }
    tracing::warn!(
        "graceful node shutdown: logind still delays a shutdown less than {wanted:?} after {} and a reload; a longer shutdown is cut short",
        path.display()
    );
}

/// Where the node's shutdown is handled: what [`super::shutdown::shut_down`] needs.
pub struct Shutdown {
    pub client: crate::client::SharedClient,
    pub node: String,
    pub side: crate::eviction::node::RealNode,
    pub groups: Vec<crate::model::shutdown::Group>,
    pub shutting_down: crate::model::admission::ShuttingDown,
    pub readiness: tokio::sync::watch::Sender<crate::model::node::Readiness>,
}

async fn connect(address: Option<&str>) -> zbus::Result<zbus::Connection> {
    match address {
        Some(a) => zbus::connection::Builder::address(a)?.build().await,
        None => zbus::Connection::system().await,
    }
}

/// Holds logind's inhibitor lock and ends the pods when the machine shuts down, until
/// `stop`; without a reachable logind it says so once and returns.
pub async fn watch(logind: Logind, s: Shutdown, mut stop: tokio::sync::watch::Receiver<bool>) {
    let total: Duration = s.groups.iter().map(|g| g.grace).sum();
    let conn = match connect(logind.bus.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(
                "graceful node shutdown: the system bus is not reachable ({e}); the machine's shutdown reaches kernlet only as SIGTERM (--shutdown-on-sigterm)"
            );
            return;
        }
    };
    let manager = match Login1ManagerProxy::new(&conn).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!("graceful node shutdown: systemd-logind is not reachable: {e}");
            return;
        }
    };
    raise_inhibit_delay(&conn, &manager, &logind.conf_dir, total).await;
    let mut signals = match manager.receive_prepare_for_shutdown().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("graceful node shutdown: subscribing to PrepareForShutdown: {e}");
            return;
        }
    };
    let inhibit = async || {
        manager
            .inhibit(
                "shutdown",
                "kernlet",
                "Kubelet needs time to handle node shutdown",
                "delay",
            )
            .await
    };
    let mut lock = match inhibit().await {
        Ok(fd) => Some(fd),
        Err(e) => {
            tracing::warn!("graceful node shutdown: logind refused the inhibitor lock: {e}");
            return;
        }
    };
    tracing::info!(grace = ?total, "graceful node shutdown: holding logind's delay lock on shutdown");
    loop {
        let signal = tokio::select! {
            _ = stop.changed() => return,
            s = signals.next() => s,
        };
        let Some(signal) = signal else {
            tracing::warn!("graceful node shutdown: logind's signals ended");
            return;
        };
        let start = signal.args().map(|a| a.start).unwrap_or(false);
        if start && lock.is_some() {
            tracing::info!("logind: the machine is shutting down");
            super::shutdown::shut_down(
                &s.client,
                &s.node,
                s.side.clone(),
                s.groups.clone(),
                &s.shutting_down,
                &s.readiness,
            )
            .await;
            // The pods are done: the machine's shutdown may go on.
            lock = None;
            tracing::info!("graceful node shutdown: inhibitor lock released");
        } else if !start && lock.is_none() {
            tracing::info!("logind: the shutdown was cancelled; the node is ready again");
            s.shutting_down.set(false);
            s.readiness.send_replace(crate::model::node::Readiness {
                ready: true,
                reason: "KubeletReady".into(),
                message: String::new(),
            });
            lock = inhibit().await.ok();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_drop_in_raises_the_delay_in_whole_seconds() {
        let (name, text) = super::drop_in(std::time::Duration::from_millis(10_500));
        assert_eq!(name, "99-kernlet.conf");
        assert!(text.contains("[Login]\nInhibitDelayMaxSec=11\n"), "{text}");
    }
}

//! Graceful node shutdown through systemd-logind, as kubelet does it: a `delay`
//! inhibitor lock on shutdown is held while the node runs; when logind announces the
//! machine's shutdown (`PrepareForShutdown(true)`), the node's pods are ended (see
//! [`super::shutdown`]) and the lock is released so the shutdown goes on. A shutdown
//! that is cancelled (`PrepareForShutdown(false)`) makes the node ready again and takes
//! a new lock.

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
pub async fn watch(
    address: Option<String>,
    s: Shutdown,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let total: Duration = s.groups.iter().map(|g| g.grace).sum();
    let conn = match connect(address.as_deref()).await {
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
    match manager.inhibit_delay_max_usec().await {
        Ok(max) if Duration::from_micros(max) < total => tracing::warn!(
            "graceful node shutdown: logind delays a shutdown at most {:?} (InhibitDelayMaxSec), less than the {total:?} asked for; set InhibitDelayMaxSec in /etc/systemd/logind.conf.d/ and reload logind",
            Duration::from_micros(max)
        ),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!("graceful node shutdown: reading logind's InhibitDelayMaxUSec: {e}")
        }
    }
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

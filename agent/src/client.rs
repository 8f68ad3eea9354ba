//! The node's apiserver client. Controllers take the current client for each request,
//! so a rotated client certificate takes effect without a restart; the watches, which
//! hold their client for as long as they run, are told of each rotation
//! ([`SharedClient::rotations`]) and start again on the new one.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

/// A `kube::Client` that can be replaced while controllers hold the handle.
#[derive(Clone)]
pub struct SharedClient(Arc<(RwLock<kube::Client>, watch::Sender<u64>)>);

impl SharedClient {
    pub fn new(client: kube::Client) -> Self {
        Self(Arc::new((RwLock::new(client), watch::Sender::new(0))))
    }

    /// The client to use for the next request.
    pub fn get(&self) -> kube::Client {
        match self.0.0.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the client; requests already sent finish on the old one, and every
    /// receiver of [`Self::rotations`] is told.
    pub fn set(&self, client: kube::Client) {
        match self.0.0.write() {
            Ok(mut c) => *c = client,
            Err(poisoned) => *poisoned.into_inner() = client,
        }
        self.0.1.send_modify(|n| *n += 1);
    }

    /// Changes each time the client is replaced: a long-lived request (a watch) made
    /// with the old client must be made again with [`Self::get`].
    pub fn rotations(&self) -> watch::Receiver<u64> {
        self.0.1.subscribe()
    }
}

/// A client from kubeconfig text. Connecting gives up after 10 s so an unreachable
/// apiserver is reported, not waited on; reads keep kube's long timeout, which watches
/// need (callers bound single requests themselves).
pub async fn from_kubeconfig_text(text: &str) -> Result<kube::Client, String> {
    let kc = kube::config::Kubeconfig::from_yaml(text).map_err(|e| e.to_string())?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    cfg.connect_timeout = Some(Duration::from_secs(10));
    kube::Client::try_from(cfg).map_err(|e| e.to_string())
}

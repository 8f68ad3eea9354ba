//! The CRI streaming server: `Exec`, `Attach` and `PortForward` answer with a URL on
//! this plain HTTP listener (127.0.0.1 and a port of the kernel's choosing, as
//! containerd's default), holding a single-use token that expires after a minute;
//! the client (crictl, or kubelet's proxy) then upgrades a request to that URL to
//! WebSocket or SPDY/3.1 and gets the same exec, attach and port-forward as the
//! kubelet API's.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::api::stream::ExecOptions;
use crate::api::{Body, text, upgrade};

/// How long a URL handed out stays usable (containerd's and kubelet's streaming cache).
pub const TOKEN_TTL: Duration = Duration::from_secs(60);

/// What a token was handed out for.
#[derive(Clone, Debug, PartialEq)]
pub enum Pending {
    Exec {
        container: String,
        opts: ExecOptions,
    },
    Attach {
        container: String,
        opts: ExecOptions,
    },
    PortForward {
        sandbox: String,
        ports: Vec<u16>,
    },
}

impl Pending {
    fn path(&self) -> &'static str {
        match self {
            Self::Exec { .. } => "exec",
            Self::Attach { .. } => "attach",
            Self::PortForward { .. } => "portforward",
        }
    }
}

/// The tokens handed out and not yet used.
#[derive(Debug, Default)]
pub struct Tokens(Mutex<HashMap<String, (Instant, Pending)>>);

impl Tokens {
    /// A new token for `pending`; expired ones are dropped on the way.
    pub fn issue(&self, pending: Pending, now: Instant) -> String {
        let mut bytes = [0u8; 16];
        let _ = aws_lc_rs::rand::fill(&mut bytes);
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        if let Ok(mut m) = self.0.lock() {
            m.retain(|_, (at, _)| now.duration_since(*at) < TOKEN_TTL);
            m.insert(token.clone(), (now, pending));
        }
        token
    }

    /// What `token` was issued for, once: a second use or a use after
    /// [`TOKEN_TTL`] finds nothing.
    pub fn take(&self, token: &str, kind: &str, now: Instant) -> Option<Pending> {
        let mut m = self.0.lock().ok()?;
        let (at, pending) = m.remove(token)?;
        (now.duration_since(at) < TOKEN_TTL && pending.path() == kind).then_some(pending)
    }
}

/// Where the streams find containers and pods.
#[derive(Clone, Debug)]
pub struct Sources {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    /// The kernlet binary, re-executed as the exec helper.
    pub exe: PathBuf,
}

/// The listening streaming server.
#[derive(Debug)]
pub struct Streaming {
    pub address: SocketAddr,
    pub tokens: Tokens,
    sources: Sources,
}

impl Streaming {
    /// Binds 127.0.0.1 on a free port and serves until `stop`.
    pub async fn start(
        sources: Sources,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<Arc<Self>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let me = Arc::new(Self {
            address: listener.local_addr()?,
            tokens: Tokens::default(),
            sources,
        });
        tokio::spawn(Arc::clone(&me).serve(listener, stop));
        Ok(me)
    }

    /// The URL the client streams `pending` from.
    pub fn url(&self, pending: Pending) -> String {
        let kind = pending.path();
        let token = self.tokens.issue(pending, Instant::now());
        format!("http://{}/{kind}/{token}", self.address)
    }

    async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let (tcp, _) = tokio::select! {
                _ = stop.changed() => return,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let me = Arc::clone(&me);
                    async move { Ok::<_, Infallible>(me.route(req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    }

    fn route(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let Some((kind, token)) = path.trim_start_matches('/').split_once('/') else {
            return text(StatusCode::NOT_FOUND, "404 page not found\n");
        };
        let Some(pending) = self.tokens.take(token, kind, Instant::now()) else {
            return text(
                StatusCode::NOT_FOUND,
                "unknown or expired streaming token: ask the CRI for a new URL\n",
            );
        };
        let src = &self.sources;
        match pending {
            Pending::Exec { container, opts } => {
                let dir = src.state_dir.join("containers").join(&container);
                upgrade::exec(req, src.exe.clone(), dir, opts)
            }
            Pending::Attach { container, opts } => {
                let Some(run) = crate::runtime::container::records_in(&src.state_dir)
                    .into_iter()
                    .find(|r| r.id == container)
                else {
                    return text(
                        StatusCode::NOT_FOUND,
                        format!("container {container} is gone\n"),
                    );
                };
                upgrade::attach(req, &src.state_dir, &run, opts)
            }
            Pending::PortForward { sandbox, ports } => {
                let host_network = crate::runtime::sandbox::record_in(&src.state_dir, &sandbox)
                    .is_some_and(|s| s.host_network);
                let netns =
                    (!host_network).then(|| src.run_dir.join("pods").join(&sandbox).join("ns/net"));
                let ports = (!ports.is_empty()).then_some(ports);
                upgrade::port_forward(req, netns, format!("sandbox {sandbox}"), ports)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> Pending {
        Pending::Exec {
            container: "c1".into(),
            opts: ExecOptions::default(),
        }
    }

    #[test]
    fn a_token_serves_once_for_its_kind_and_expires() {
        let t = Tokens::default();
        let now = Instant::now();
        let a = t.issue(exec(), now);
        assert_eq!(
            t.take(&a, "attach", now),
            None,
            "an exec token is not an attach token"
        );
        let b = t.issue(exec(), now);
        assert_eq!(t.take(&b, "exec", now), Some(exec()));
        assert_eq!(t.take(&b, "exec", now), None, "single use");
        let c = t.issue(exec(), now);
        assert_eq!(t.take(&c, "exec", now + TOKEN_TTL), None, "expired");
        assert_ne!(t.issue(exec(), now), t.issue(exec(), now));
    }
}

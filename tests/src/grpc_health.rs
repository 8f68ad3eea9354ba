//! A gRPC health server (`grpc.health.v1.Health/Check`, HTTP/2 without TLS) on a
//! SimNode's address, for gRPC probes: service "" is SERVING, "sick" NOT_SERVING,
//! anything else NOT_FOUND. Served from a thread of the test process; stopped on drop.

use std::convert::Infallible;
use std::os::fd::AsFd as _;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};

use crate::simnode::SimNode;

/// A running health server.
pub struct HealthServer {
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Body = StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

async fn check(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    // The request: a 5-byte gRPC prefix, then field 1 (the service) if not empty.
    let msg = body.get(5..).unwrap_or_default();
    let service = if msg.first() == Some(&0x0a) {
        let len = usize::from(msg.get(1).copied().unwrap_or(0));
        String::from_utf8_lossy(msg.get(2..2 + len).unwrap_or_default()).into_owned()
    } else {
        String::new()
    };
    let (grpc_status, status) = match service.as_str() {
        "" => ("0", Some(1u8)),
        "sick" => ("0", Some(2)),
        _ => ("5", None),
    };
    let mut frames = Vec::new();
    if let Some(s) = status {
        frames.push(Ok(Frame::data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, s]))));
    }
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert(
        "grpc-status",
        hyper::header::HeaderValue::from_static(grpc_status),
    );
    frames.push(Ok(Frame::trailers(trailers)));
    let mut resp = Response::new(StreamBody::new(futures::stream::iter(frames)));
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/grpc"),
    );
    Ok(resp)
}

impl HealthServer {
    /// Starts a server on `node`'s address (a free port).
    pub fn start(node: &SimNode) -> anyhow::Result<Self> {
        let path = format!("/run/netns/{}", node.netns);
        let address = node.address;
        let listener = std::thread::spawn(move || -> anyhow::Result<std::net::TcpListener> {
            let ns = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .context("setns into the node")?;
            let l = std::net::TcpListener::bind((address, 0))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("listener thread panicked"))??;
        let port = listener.local_addr()?.port();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => return,
                        accepted = listener.accept() => {
                            let Ok((tcp, _)) = accepted else { continue };
                            tokio::spawn(async move {
                                let io = hyper_util::rt::TokioIo::new(tcp);
                                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                                    .serve_connection(io, hyper::service::service_fn(check))
                                    .await;
                            });
                        }
                    }
                }
            });
        });
        Ok(Self {
            port,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

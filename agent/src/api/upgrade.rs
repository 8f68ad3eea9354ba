//! A request upgraded to a stream (WebSocket or SPDY/3.1) with exec, attach or
//! port-forward behind it: shared by the kubelet API's routes, which find the container
//! by pod and name, and the CRI streaming server (`cri::streaming`), which finds it by
//! the token of an earlier CRI call.

use std::path::{Path, PathBuf};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use super::{Body, channel, stream, text};
use crate::runtime::container::ContainerRecord;

/// A streaming request's transport.
pub(crate) enum Upgrade {
    WebSocket {
        protocol: channel::Protocol,
        key: Vec<u8>,
    },
    Spdy {
        protocol: Option<&'static str>,
    },
}

impl Upgrade {
    /// The transport `req` asks for, with the protocol agreed on (`spdy` are the SPDY
    /// protocols of this endpoint), or the answer refusing it.
    pub(crate) fn of(
        req: &Request<Incoming>,
        spdy: &[&'static str],
        ws: &[channel::Protocol],
    ) -> Result<Self, (StatusCode, String)> {
        if stream::is_spdy_upgrade(req) {
            return match stream::negotiate_spdy(req, spdy) {
                Ok(protocol) => Ok(Self::Spdy { protocol }),
                Err(why) => Err((StatusCode::FORBIDDEN, format!("{why}\n"))),
            };
        }
        websocket_request(req, ws).map(|(protocol, key)| Self::WebSocket { protocol, key })
    }

    fn response(&self) -> Response<Body> {
        match self {
            Self::WebSocket { protocol, key } => upgraded_response(key, protocol.name),
            Self::Spdy { protocol } => {
                let (parts, ()) = stream::spdy_switching(*protocol).into_parts();
                Response::from_parts(parts, http_body_util::Empty::new().boxed())
            }
        }
    }
}

/// The protocol and key of a WebSocket upgrade, or the answer refusing the request.
fn websocket_request(
    req: &Request<Incoming>,
    ours: &[channel::Protocol],
) -> Result<(channel::Protocol, Vec<u8>), (StatusCode, String)> {
    if !stream::is_upgrade(req) {
        return Err((
            StatusCode::BAD_REQUEST,
            format!(
                "streaming needs an upgrade: WebSocket ({}) or SPDY/3.1\n",
                channel::names(ours)
            ),
        ));
    }
    let offered = req
        .headers()
        .get(http::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(protocol) = channel::negotiate(offered, ours) else {
        return Err((
            StatusCode::BAD_REQUEST,
            format!(
                "none of the offered subprotocols ({offered}) is supported; this node speaks {}\n",
                channel::names(ours)
            ),
        ));
    };
    let Some(key) = req.headers().get(http::header::SEC_WEBSOCKET_KEY) else {
        return Err((
            StatusCode::BAD_REQUEST,
            "missing Sec-WebSocket-Key\n".into(),
        ));
    };
    Ok((protocol, key.as_bytes().to_vec()))
}

fn upgraded_response(key: &[u8], protocol: &str) -> Response<Body> {
    let (parts, ()) = stream::switching(key, protocol).into_parts();
    Response::from_parts(parts, http_body_util::Empty::new().boxed())
}

/// Answers the upgrade and, once the connection is handed over, runs `run` on it with
/// the transport agreed on.
fn answer_then<F>(
    upgrade: Upgrade,
    req: Request<Incoming>,
    run: impl FnOnce(hyper::upgrade::Upgraded, Upgrade) -> F + Send + 'static,
) -> Response<Body>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let answer = upgrade.response();
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            run(upgraded, upgrade).await;
        }
    });
    answer
}

/// Answers the upgrade and runs `job` behind it, over the transport agreed on.
fn serve_stream(
    upgrade: Upgrade,
    req: Request<Incoming>,
    opts: stream::ExecOptions,
    job: stream::Job,
) -> Response<Body> {
    answer_then(upgrade, req, |upgraded, upgrade| async move {
        match upgrade {
            Upgrade::WebSocket { protocol, .. } => {
                let ws = stream::websocket(upgraded).await;
                stream::exec(ws, protocol, opts, job).await;
            }
            Upgrade::Spdy { protocol } => stream::exec_spdy(upgraded, protocol, opts, job).await,
        }
    })
}

/// Runs `opts.command` in the running container whose directory is `dir`, behind the
/// upgrade `req` asks for.
pub(crate) fn exec(
    req: Request<Incoming>,
    exe: PathBuf,
    dir: PathBuf,
    opts: stream::ExecOptions,
) -> Response<Body> {
    let upgrade = match Upgrade::of(&req, &stream::SPDY_EXEC_PROTOCOLS, &channel::EXEC) {
        Ok(u) => u,
        Err((code, why)) => return text(code, why),
    };
    if opts.command.is_empty() {
        return text(StatusCode::BAD_REQUEST, "no command given (command=...)\n");
    }
    let job = stream::exec_job(exe, dir, opts.clone());
    serve_stream(upgrade, req, opts, job)
}

/// Attaches to `run` (running): its output as it comes, its stdin and terminal when
/// it has them; asking for a stdin or terminal it lacks is refused with the reason.
pub(crate) fn attach(
    req: Request<Incoming>,
    state_dir: &Path,
    run: &ContainerRecord,
    opts: stream::ExecOptions,
) -> Response<Body> {
    let upgrade = match Upgrade::of(&req, &stream::SPDY_EXEC_PROTOCOLS, &channel::EXEC) {
        Ok(u) => u,
        Err((code, why)) => return text(code, why),
    };
    let container = &run.name;
    let (log, dir) = (
        run.log_path.clone(),
        state_dir.join("containers").join(&run.id),
    );
    // The container's stdin (`stdin: true`) and whether it has a terminal (`tty: true`).
    let shim_request = std::fs::read(dir.join(crate::runtime::shim::REQUEST))
        .ok()
        .and_then(|b| serde_json::from_slice::<crate::runtime::shim::ShimRequest>(&b).ok());
    let terminal = shim_request.as_ref().is_some_and(|r| r.console.is_some());
    let stdin = shim_request.and_then(|r| r.stdin).map(|s| s.socket);
    // Said on the stream's error channel, as kubelet reports attach failures, so
    // kubectl shows it.
    let refusal = if opts.tty && !terminal {
        Some(format!(
            "container \"{container}\" has no terminal (spec.containers[].tty is not true): attach without -t"
        ))
    } else if opts.stdin && stdin.is_none() {
        Some(format!(
            "container \"{container}\" runs with stdin closed (spec.containers[].stdin is not true): attach without -i to see its output"
        ))
    } else {
        None
    };
    let job: stream::Job = match refusal {
        Some(why) => Box::new(move |_, _| Box::pin(async move { Err(why) })),
        None => stream::attach_job(log, dir, stdin.filter(|_| opts.stdin), terminal),
    };
    serve_stream(upgrade, req, opts, job)
}

/// Forwards connections to ports of the network namespace `netns` (the host's when
/// `None`). Over WebSocket the ports are `ports`, else the query's; over SPDY each
/// stream names its own. `label` names the pod in errors.
pub(crate) fn port_forward(
    req: Request<Incoming>,
    netns: Option<PathBuf>,
    label: String,
    ports: Option<Vec<u16>>,
) -> Response<Body> {
    let upgrade = match Upgrade::of(
        &req,
        &[stream::SPDY_PORT_FORWARD_PROTOCOL],
        &channel::PORT_FORWARD,
    ) {
        Ok(u) => u,
        Err((code, why)) => return text(code, why),
    };
    let ports = match (
        &upgrade,
        ports.map_or_else(|| stream::parse_ports(req.uri().query().unwrap_or("")), Ok),
    ) {
        (_, Ok(p)) => p,
        (Upgrade::Spdy { .. }, Err(_)) => Vec::new(),
        (Upgrade::WebSocket { .. }, Err(e)) => {
            return text(StatusCode::BAD_REQUEST, format!("{e}\n"));
        }
    };
    answer_then(upgrade, req, |upgraded, upgrade| async move {
        match upgrade {
            Upgrade::WebSocket { protocol, .. } => {
                let ws = stream::websocket(upgraded).await;
                stream::port_forward(ws, protocol, netns, ports).await;
            }
            Upgrade::Spdy { .. } => stream::port_forward_spdy(upgraded, netns, label).await,
        }
    })
}

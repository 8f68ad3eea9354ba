//! exec and port-forward over WebSocket, in Kubernetes' channel protocols
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io`): every binary message starts with its
//! channel. exec: 0 stdin, 1 stdout, 2 stderr, 3 the final `Status`, 4 terminal resize
//! (`{"Width":…,"Height":…}`); v5 adds 255, `[255, n]` closing channel n (stdin EOF).
//! port-forward: per requested port i, channel 2i carries its data and 2i+1 its
//! errors, each opened by the port number (2 bytes, little-endian).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// The channel protocols served, preferred first.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// The protocol to speak: the first of ours the client offers.
pub fn negotiate(offered: &str) -> Option<&'static str> {
    let offered: Vec<&str> = offered.split(',').map(str::trim).collect();
    PROTOCOLS.iter().copied().find(|p| offered.contains(p))
}

/// Whether the request asks for a WebSocket.
pub fn is_upgrade<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The `101 Switching Protocols` answer for `key` and `protocol`.
pub fn switching(key: &[u8], protocol: &str) -> http::Response<()> {
    let mut r = http::Response::new(());
    *r.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = http::HeaderValue::from_str(
        &tokio_tungstenite::tungstenite::handshake::derive_accept_key(key),
    ) {
        h.insert(http::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Ok(v) = http::HeaderValue::from_str(protocol) {
        h.insert(http::header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    r
}

pub type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// The server side of an upgraded connection.
pub async fn websocket(upgraded: Upgraded) -> Ws {
    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(Bytes::from(v))
}

/// The final `Status` of an exec, as kubelet reports it on the error channel.
pub fn exit_status(command: &[String], code: i32) -> serde_json::Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
            command.join(" ")
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// What an exec asks for (`command`, `stdin`, `stdout`, `stderr`, `tty` parameters).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

pub fn parse_exec_query(query: &str) -> ExecOptions {
    let mut o = ExecOptions::default();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let on = matches!(v.as_ref(), "1" | "true");
        match k.as_ref() {
            "command" => o.command.push(v.into_owned()),
            "input" | "stdin" => o.stdin = on,
            "output" | "stdout" => o.stdout = on,
            "error" | "stderr" => o.stderr = on,
            "tty" => o.tty = on,
            _ => {}
        }
    }
    // A terminal joins stderr into stdout, as kubelet does.
    if o.tty {
        o.stderr = false;
    }
    o
}

/// Runs `opts.command` in the container of `bundle` through the helper `exe`, wired to
/// the WebSocket, and ends with the exit `Status` on channel 3.
pub async fn exec(mut ws: Ws, protocol: &str, exe: PathBuf, bundle: PathBuf, opts: ExecOptions) {
    let v5 = protocol.starts_with("v5.");
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.arg("internal")
        .arg("exec-stream")
        .arg(&bundle)
        .arg(if opts.tty { "1" } else { "0" })
        .args(&opts.command)
        .kill_on_drop(true);
    let mut master: Option<std::os::fd::OwnedFd> = None;
    if opts.tty {
        let Ok((m, slave)) = crate::sys::process::open_pty() else {
            let _ = ws
                .send(frame(3, json!({"metadata": {}, "status": "Failure", "message": "cannot allocate a terminal"}).to_string().as_bytes()))
                .await;
            return;
        };
        let dup = |fd: &std::os::fd::OwnedFd| fd.try_clone().map(Stdio::from);
        match (dup(&slave), dup(&slave)) {
            (Ok(a), Ok(b)) => {
                cmd.stdin(Stdio::from(slave)).stdout(a).stderr(b);
            }
            _ => return,
        }
        master = Some(m);
    } else {
        cmd.stdin(if opts.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    }
    let spawned = cmd.spawn();
    // The terminal's slave ends must close here, or the reader never sees its end.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let _ = ws
                .send(frame(3, json!({"metadata": {}, "status": "Failure", "message": format!("starting the exec helper: {e}")}).to_string().as_bytes()))
                .await;
            return;
        }
    };
    // The command's input and output as async streams.
    type Reader = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
    type Writer = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;
    let (mut stdin, out, err): (Option<Writer>, Option<Reader>, Option<Reader>) = match &master {
        Some(m) => {
            let Ok(r) = m.try_clone() else { return };
            let Ok(w) = m.try_clone() else { return };
            let w: Writer = Box::new(tokio::fs::File::from_std(std::fs::File::from(w)));
            let r: Reader = Box::new(tokio::fs::File::from_std(std::fs::File::from(r)));
            (opts.stdin.then_some(w), Some(r), None)
        }
        None => (
            child.stdin.take().map(|s| Box::new(s) as Writer),
            child.stdout.take().map(|s| Box::new(s) as Reader),
            child.stderr.take().map(|s| Box::new(s) as Reader),
        ),
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(32);
    let pump = |reader: Option<Reader>, channel: u8, wanted: bool| {
        let tx = tx.clone();
        tokio::spawn(async move {
            let Some(mut r) = reader else { return };
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match r.read(&mut buf).await {
                    // EIO: the terminal's last process is gone.
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if wanted && tx.send(frame(channel, &buf[..n])).await.is_err() {
                            return;
                        }
                    }
                }
            }
        })
    };
    let out_task = pump(out, 1, opts.stdout);
    let err_task = pump(err, 2, opts.stderr);
    drop(tx);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        sink
    });
    let master_fd = master.as_ref().and_then(|m| m.try_clone().ok());
    let input = tokio::spawn(async move {
        while let Some(Ok(msg)) = source.next().await {
            let data = match msg {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, body)) = data.split_first() else {
                continue;
            };
            match channel {
                0 => {
                    if let Some(w) = stdin.as_mut()
                        && (w.write_all(body).await.is_err() || w.flush().await.is_err())
                    {
                        stdin = None;
                    }
                }
                4 => {
                    let size: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
                    let (w, h) = (size["Width"].as_u64(), size["Height"].as_u64());
                    if let (Some(m), Some(w), Some(h)) = (&master_fd, w, h) {
                        use std::os::fd::AsFd as _;
                        let _ = crate::sys::process::set_window_size(
                            m.as_fd(),
                            u16::try_from(w).unwrap_or(u16::MAX),
                            u16::try_from(h).unwrap_or(u16::MAX),
                        );
                    }
                }
                255 if v5 && body.first() == Some(&0) => {
                    // stdin closed by the client: EOF for a pipe; ^D for a terminal.
                    if let Some(mut w) = stdin.take()
                        && master_fd.is_some()
                    {
                        let _ = w.write_all(&[4]).await;
                    }
                }
                _ => {}
            }
        }
    });
    let code = match child.wait().await {
        Ok(s) => s.code().unwrap_or(-1),
        Err(_) => -1,
    };
    // A terminal's reader ends with EIO once the last process holding it is gone; the
    // pipes end at EOF. Either way all output is sent before the status.
    drop(master);
    let _ = out_task.await;
    let _ = err_task.await;
    input.abort();
    let Ok(mut sink) = writer.await else { return };
    let status = exit_status(&opts.command, code);
    let _ = sink.send(frame(3, status.to_string().as_bytes())).await;
    let _ = sink.send(Message::Close(None)).await;
}

/// The ports a port-forward asks for (`port` parameters, each possibly a list).
pub fn parse_ports(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if k == "port" || k == "ports" {
            for p in v.split(',').filter(|p| !p.is_empty()) {
                let n: u16 = p
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("invalid port {p:?}"))?;
                ports.push(n);
            }
        }
    }
    if ports.is_empty() {
        return Err("at least one port is required".into());
    }
    Ok(ports)
}

/// Forwards each of `ports` to the pod whose network namespace is pinned at `netns`
/// (the node's own for a host-network pod): one TCP connection to 127.0.0.1 per port.
pub async fn port_forward(ws: Ws, netns: Option<PathBuf>, ports: Vec<u16>) {
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(64);
    let mut writers: Vec<Option<tokio::net::tcp::OwnedWriteHalf>> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (data, error) = ((2 * i) as u8, (2 * i + 1) as u8);
        let prefix = port.to_le_bytes();
        let _ = sink.send(frame(data, &prefix)).await;
        let _ = sink.send(frame(error, &prefix)).await;
        let conn = connect(netns.as_deref(), *port).await;
        match conn {
            Ok(stream) => {
                let (mut r, w) = stream.into_split();
                writers.push(Some(w));
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match r.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if tx.send(frame(data, &buf[..n])).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
            Err(e) => {
                writers.push(None);
                let msg = format!("error forwarding port {port} to pod: {e}");
                let _ = sink.send(frame(error, msg.as_bytes())).await;
            }
        }
    }
    drop(tx);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    });
    while let Some(Ok(msg)) = source.next().await {
        let data = match msg {
            Message::Binary(b) => b,
            Message::Close(_) => break,
            _ => continue,
        };
        let Some((&channel, body)) = data.split_first() else {
            continue;
        };
        let i = usize::from(channel / 2);
        if channel % 2 == 0
            && let Some(Some(w)) = writers.get_mut(i)
            && w.write_all(body).await.is_err()
        {
            writers[i] = None;
        }
    }
    drop(writers);
    let _ = writer.await;
}

async fn connect(netns: Option<&Path>, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let netns = netns.map(Path::to_path_buf);
    let std = tokio::task::spawn_blocking(move || {
        crate::sys::ns::connect_in(netns.as_deref(), addr, std::time::Duration::from_secs(5))
    })
    .await
    .map_err(std::io::Error::other)??;
    std.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(std)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_queries_and_statuses() {
        assert_eq!(
            negotiate("v4.channel.k8s.io, v5.channel.k8s.io"),
            Some("v5.channel.k8s.io")
        );
        assert_eq!(negotiate("channel.k8s.io"), None);
        let o = parse_exec_query(
            "command=sh&command=-c&command=exit%203&stdin=1&stdout=1&stderr=1&tty=1",
        );
        assert_eq!(o.command, ["sh", "-c", "exit 3"]);
        assert!(
            o.stdin && o.stdout && o.tty && !o.stderr,
            "a terminal has no stderr"
        );
        let s = exit_status(&o.command, 3);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        assert_eq!(exit_status(&o.command, 0)["status"], "Success");
        assert_eq!(
            parse_ports("port=8080&port=9090,53").unwrap(),
            [8080, 9090, 53]
        );
        assert!(parse_ports("port=0").is_err() && parse_ports("").is_err());
    }
}

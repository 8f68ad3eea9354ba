//! exec and port-forward over WebSocket and SPDY/3.1. WebSocket: Kubernetes' channel protocols
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io`): every binary message starts with its
//! channel. exec: 0 stdin, 1 stdout, 2 stderr, 3 the final `Status`, 4 terminal resize
//! (`{"Width":…,"Height":…}`); v5 adds 255, `[255, n]` closing channel n (stdin EOF).
//! port-forward: per requested port i, channel 2i carries its data and 2i+1 its
//! errors, each opened by the port number (2 bytes, little-endian). SPDY: a stream
//! per role, opened by the client (see [`exec_spdy`], [`port_forward_spdy`]); the
//! command itself runs in [`run_exec`] whatever the transport.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use futures::{SinkExt as _, StreamExt as _};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::channel::Protocol;

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
    if let Some(v) = Some(protocol)
        .filter(|p| !p.is_empty())
        .and_then(|p| http::HeaderValue::from_str(p).ok())
    {
        h.insert(http::header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    r
}

pub type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// The server side of an upgraded connection.
pub async fn websocket(upgraded: Upgraded) -> Ws {
    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await
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

/// What a client sends to an exec, whatever the transport.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    Stdin(Vec<u8>),
    /// The client's input ended: EOF for a pipe, ^D for a terminal.
    StdinEnd,
    Resize {
        width: u16,
        height: u16,
    },
}

/// What an exec sends back.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// A terminal size message (`{"Width":…,"Height":…}`).
fn resize(body: &[u8]) -> Option<Input> {
    let size: serde_json::Value = serde_json::from_slice(body).ok()?;
    let dim = |k: &str| {
        size[k]
            .as_u64()
            .map(|n| u16::try_from(n).unwrap_or(u16::MAX))
    };
    Some(Input::Resize {
        width: dim("Width")?,
        height: dim("Height")?,
    })
}

/// Runs `opts.command` in the container of `bundle` through the helper `exe`: `input`
/// feeds it, its output goes to `output` (all of it before this returns). The exit
/// code, or why the command could not be started.
pub async fn run_exec(
    exe: PathBuf,
    bundle: PathBuf,
    opts: &ExecOptions,
    mut input: tokio::sync::mpsc::Receiver<Input>,
    output: tokio::sync::mpsc::Sender<Output>,
) -> Result<i32, String> {
    use crate::runtime::exec::StreamMode;
    // A terminal is allocated by the helper inside the container (so the command's
    // `tty` names it) and relayed: input, sizes and the end of input go to the
    // helper's stdin as frames.
    let mode = if opts.tty {
        StreamMode::Relay
    } else {
        StreamMode::Pipes
    };
    // A client with a terminal sends its size right after the streams open: the
    // command starts with it (waiting at most half a second), so its first look at
    // the terminal already sees the size.
    let mut early = Vec::new();
    if opts.tty {
        let until = tokio::time::Instant::now() + std::time::Duration::from_millis(500);
        while let Ok(Some(i)) = tokio::time::timeout_at(until, input.recv()).await {
            let sized = matches!(i, Input::Resize { .. });
            early.push(i);
            if sized {
                break;
            }
        }
    }
    let mut child = tokio::process::Command::new(&exe)
        .arg("internal")
        .arg("exec-stream")
        .arg(&bundle)
        .arg(mode.arg())
        .args(&opts.command)
        .kill_on_drop(true)
        .stdin(if opts.stdin || opts.tty {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the exec helper: {e}"))?;
    type Reader = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
    let mut stdin = child.stdin.take();
    let out: Option<Reader> = child.stdout.take().map(|s| Box::new(s) as Reader);
    let err: Option<Reader> = child.stderr.take().map(|s| Box::new(s) as Reader);
    // With a terminal the command's stderr is the terminal; what arrives on the
    // helper's stderr is the helper's own complaint, shown as output.
    let (err_wrap, err_wanted): (fn(Vec<u8>) -> Output, bool) = if opts.tty {
        (Output::Stdout, true)
    } else {
        (Output::Stderr, opts.stderr)
    };
    let pump = |reader: Option<Reader>, wrap: fn(Vec<u8>) -> Output, wanted: bool| {
        let tx = output.clone();
        tokio::spawn(async move {
            let Some(mut r) = reader else { return };
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match r.read(&mut buf).await {
                    // EIO: the terminal's last process is gone.
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if wanted && tx.send(wrap(buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                }
            }
        })
    };
    let out_task = pump(out, Output::Stdout, opts.stdout);
    let err_task = pump(err, err_wrap, err_wanted);
    drop(output);
    let (tty, wants_stdin) = (opts.tty, opts.stdin);
    let feeder = tokio::spawn(async move {
        let mut early = early.into_iter();
        while let Some(i) = match early.next() {
            Some(i) => Some(i),
            None => input.recv().await,
        } {
            let bytes = match (i, tty) {
                (Input::Stdin(_), true) if !wants_stdin => continue,
                (i, true) => terminal_frame(i),
                (Input::Stdin(d), false) => d,
                (Input::StdinEnd, false) => {
                    // EOF for the pipe.
                    stdin = None;
                    continue;
                }
                _ => continue,
            };
            if let Some(w) = stdin.as_mut()
                && (w.write_all(&bytes).await.is_err() || w.flush().await.is_err())
            {
                stdin = None;
            }
        }
    });
    let code = match child.wait().await {
        Ok(s) => s.code().unwrap_or(-1),
        Err(_) => -1,
    };
    // All output is sent before this returns.
    let _ = out_task.await;
    let _ = err_task.await;
    feeder.abort();
    Ok(code)
}

/// The exec's `Status` for the error stream or channel: the exit's, or a failure.
fn final_status(command: &[String], result: &Result<i32, String>) -> serde_json::Value {
    match result {
        Ok(code) => exit_status(command, *code),
        Err(why) => json!({"metadata": {}, "status": "Failure", "message": why}),
    }
}

/// What runs behind an exec or attach stream: fed by the client's input, it sends
/// output and ends with an exit code (or why it could not run).
pub type Job = Box<
    dyn FnOnce(
            tokio::sync::mpsc::Receiver<Input>,
            tokio::sync::mpsc::Sender<Output>,
        ) -> futures::future::BoxFuture<'static, Result<i32, String>>
        + Send,
>;

/// The [`Job`] of an exec: `opts.command` in the container of `bundle`.
pub fn exec_job(exe: PathBuf, bundle: PathBuf, opts: ExecOptions) -> Job {
    Box::new(move |input, output| {
        Box::pin(async move { run_exec(exe, bundle, &opts, input, output).await })
    })
}

/// The [`Job`] of an attach: the container's output as it writes it, until it stops;
/// with `stdin` (the container's attach socket) the client's input goes to the
/// container's stdin too — as [`TtyFrame`](crate::runtime::exec::TtyFrame)s (input,
/// resizes, end) when the container has a `terminal`.
pub fn attach_job(
    log: PathBuf,
    container_dir: PathBuf,
    stdin: Option<PathBuf>,
    terminal: bool,
) -> Job {
    Box::new(move |input, output| {
        Box::pin(async move {
            // Output from before any input: what the input makes the container say is
            // not missed.
            let from = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            if let Some(socket) = stdin {
                let conn = tokio::net::UnixStream::connect(&socket)
                    .await
                    .map_err(|e| format!("attaching to the container's stdin: {e}"))?;
                tokio::spawn(feed_stdin(input, conn, terminal));
            }
            follow_output(log, container_dir, output, from).await
        })
    })
}

/// Client input for a terminal relay (exec `-t`, attach to a `tty: true` container),
/// encoded as the relay reads it.
fn terminal_frame(i: Input) -> Vec<u8> {
    use crate::runtime::exec::TtyFrame;
    match i {
        Input::Stdin(d) => TtyFrame::Data(d),
        Input::Resize { width, height } => TtyFrame::Resize(width, height),
        Input::StdinEnd => TtyFrame::End,
    }
    .encode()
}

/// The client's input into an attach session; its end (or the client's going) ends
/// the session, which for `stdinOnce` closes the container's stdin.
async fn feed_stdin(
    mut input: tokio::sync::mpsc::Receiver<Input>,
    mut conn: tokio::net::UnixStream,
    terminal: bool,
) {
    while let Some(i) = input.recv().await {
        let bytes = match (i, terminal) {
            (Input::Stdin(b), false) => b,
            (Input::StdinEnd, false) => break,
            (Input::Resize { .. }, false) => continue,
            (i, true) => terminal_frame(i),
        };
        if conn.write_all(&bytes).await.is_err() {
            return;
        }
    }
    let _ = conn.shutdown().await;
}

/// Sends what the container writes from byte `from` of its CRI log on (read as it
/// grows, across rotation), stdout and stderr apart, until the container stops or the
/// client goes.
pub async fn follow_output(
    log: PathBuf,
    container_dir: PathBuf,
    output: tokio::sync::mpsc::Sender<Output>,
    from: u64,
) -> Result<i32, String> {
    use crate::runtime::container::{ContainerState, state_in};
    use tokio::io::AsyncSeekExt as _;
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut offset = from;
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let running = matches!(state_in(&container_dir), ContainerState::Running { .. });
        let now = len(&log);
        if now < offset {
            // Rotated: the new file from its start.
            offset = 0;
            pending.clear();
        }
        if now > offset {
            let mut f = tokio::fs::File::open(&log)
                .await
                .map_err(|e| format!("reading {}: {e}", log.display()))?;
            f.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(|e| e.to_string())?;
            let mut chunk = Vec::new();
            (&mut f)
                .take(now - offset)
                .read_to_end(&mut chunk)
                .await
                .map_err(|e| e.to_string())?;
            offset += chunk.len() as u64;
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                let Some(r) = crate::runtime::logs::parse_line(&line) else {
                    continue;
                };
                let mut data = r.text.into_bytes();
                if !r.partial {
                    data.push(b'\n');
                }
                let o = if r.stream == "stderr" {
                    Output::Stderr(data)
                } else {
                    Output::Stdout(data)
                };
                if output.send(o).await.is_err() {
                    return Ok(0);
                }
            }
        }
        if !running || output.is_closed() {
            return Ok(0);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// An exec or attach over the WebSocket, ending with its `Status` on channel 3 (v4 and
/// later; before v4 only a failure's message).
pub async fn exec(ws: Ws, protocol: Protocol, opts: ExecOptions, job: Job) {
    let (mut sink, mut source) = ws.split();
    let (in_tx, in_rx) = tokio::sync::mpsc::channel::<Input>(32);
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Output>(32);
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = source.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            let Some((channel, body)) = protocol.unframe(msg) else {
                continue;
            };
            let input = match channel {
                0 => Input::Stdin(body),
                4 => match resize(&body) {
                    Some(r) => r,
                    None => continue,
                },
                // v5's close of channel 0: the client's input ended.
                255 if protocol.close_channel && body.first() == Some(&0) => Input::StdinEnd,
                _ => continue,
            };
            // Once the job is over its input is dropped, but reading goes on until the
            // client closes: a socket closed with unread data is reset, and the reset
            // would destroy the final Status on its way to the client.
            let _ = in_tx.send(input).await;
        }
    });
    let writer = tokio::spawn(async move {
        while let Some(o) = out_rx.recv().await {
            let m = match o {
                Output::Stdout(d) => protocol.frame(1, &d),
                Output::Stderr(d) => protocol.frame(2, &d),
            };
            if sink.send(m).await.is_err() {
                break;
            }
        }
        sink
    });
    let result = job(in_rx, out_tx).await;
    let Ok(mut sink) = writer.await else {
        reader.abort();
        return;
    };
    let status = if protocol.json_status {
        Some(final_status(&opts.command, &result).to_string())
    } else {
        legacy_status(&opts.command, &result)
    };
    if let Some(status) = status {
        let _ = sink.send(protocol.frame(3, status.as_bytes())).await;
    }
    let _ = sink.send(normal_close()).await;
    // The client answers the close; until then (at most 2 s) what it sends is read.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), reader).await;
}

/// The end of an exec as the protocols before v4 report it: nothing on success, the
/// failure's message otherwise.
fn legacy_status(command: &[String], result: &Result<i32, String>) -> Option<String> {
    match result {
        Ok(0) => None,
        Ok(code) => Some(format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
            command.join(" ")
        )),
        Err(why) => Some(why.clone()),
    }
}

/// A close frame with status 1000: Go's WebSocket clients read a close without a
/// status (1005) as an error.
fn normal_close() -> Message {
    Message::Close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    }))
}

/// The exec protocols served over SPDY, preferred first (v5 is v4 there: stdin's end
/// is the stream's FIN).
pub const SPDY_EXEC_PROTOCOLS: [&str; 5] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// The port-forward protocol over SPDY.
pub const SPDY_PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

/// Whether the request asks for SPDY/3.1.
pub fn is_spdy_upgrade<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(super::spdy::UPGRADE))
}

/// The stream protocol for the client's `X-Stream-Protocol-Version` headers, in the
/// client's order of preference as kubelet picks it: `Ok(None)` when it names none
/// (the legacy protocol); `Err` with both lists when nothing matches.
pub fn negotiate_spdy<B>(
    req: &http::Request<B>,
    ours: &[&'static str],
) -> Result<Option<&'static str>, String> {
    let offered: Vec<String> = req
        .headers()
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok(None);
    }
    offered
        .iter()
        .find_map(|p| ours.iter().copied().find(|o| o == p))
        .map(Some)
        .ok_or_else(|| {
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {ours:?}"
            )
        })
}

/// The `101 Switching Protocols` answer to a SPDY upgrade.
pub fn spdy_switching(protocol: Option<&str>) -> http::Response<()> {
    let mut r = http::Response::new(());
    *r.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static(super::spdy::UPGRADE),
    );
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    if let Some(v) = protocol.and_then(|p| http::HeaderValue::from_str(p).ok()) {
        h.insert("x-stream-protocol-version", v);
    }
    r
}

/// How long a SPDY client has to open the streams its request asks for (kubelet's
/// stream creation timeout).
const STREAM_CREATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// An exec over SPDY: the client opens `error`, and `stdin`, `stdout`, `stderr`,
/// `resize` as the request asks; the exit `Status` goes on `error` (v4 and v5 as
/// JSON; the older protocols carry only a failure's message), then every stream is
/// closed and the session ends.
pub async fn exec_spdy(
    upgraded: Upgraded,
    protocol: Option<&'static str>,
    opts: ExecOptions,
    job: Job,
) {
    use super::spdy::Event;
    let (mut events, sender) = super::spdy::serve(TokioIo::new(upgraded));
    let v3_or_later = matches!(
        protocol,
        Some("v5.channel.k8s.io" | "v4.channel.k8s.io" | "v3.channel.k8s.io")
    );
    let mut wanted = vec!["error"];
    for (on, name) in [
        (opts.stdin, "stdin"),
        (opts.stdout, "stdout"),
        (opts.stderr, "stderr"),
        (opts.tty && v3_or_later, "resize"),
    ] {
        if on {
            wanted.push(name);
        }
    }
    let mut streams: std::collections::HashMap<String, u32> = Default::default();
    let mut early = Vec::new();
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while !wanted.iter().all(|w| streams.contains_key(*w)) {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Stream { id, headers })) => {
                if let Some(t) = headers.get("streamtype") {
                    streams.insert(t.clone(), id);
                }
            }
            Ok(Some(other)) => early.push(other),
            Ok(None) => return,
            Err(_) => {
                tracing::warn!(?wanted, got = ?streams.keys().collect::<Vec<_>>(), "exec over SPDY: the client did not open its streams in time");
                sender.close().await;
                return;
            }
        }
    }
    let id = |name: &str| streams.get(name).copied();
    let (stdin_id, resize_id) = (id("stdin"), id("resize"));
    let (in_tx, in_rx) = tokio::sync::mpsc::channel::<Input>(32);
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Output>(32);
    let reader = tokio::spawn(async move {
        let mut sizes = Vec::new();
        let events = futures::stream::iter(early)
            .chain(futures::stream::poll_fn(move |cx| events.poll_recv(cx)));
        futures::pin_mut!(events);
        while let Some(e) = events.next().await {
            let input = match e {
                Event::Data { id, data } if Some(id) == stdin_id => Input::Stdin(data),
                Event::Fin { id } | Event::Reset { id } if Some(id) == stdin_id => Input::StdinEnd,
                Event::Data { id, data } if Some(id) == resize_id => {
                    // Sizes are JSON objects one after another, split anywhere.
                    sizes.extend_from_slice(&data);
                    let mut it = serde_json::Deserializer::from_slice(&sizes)
                        .into_iter::<serde_json::Value>();
                    let mut last = None;
                    for v in it.by_ref() {
                        match v {
                            Ok(v) => last = resize(v.to_string().as_bytes()),
                            Err(_) => break,
                        }
                    }
                    let used = it.byte_offset();
                    sizes.drain(..used);
                    match last {
                        Some(r) => r,
                        None => continue,
                    }
                }
                _ => continue,
            };
            if in_tx.send(input).await.is_err() {
                break;
            }
        }
    });
    let (stdout_id, stderr_id) = (id("stdout"), id("stderr"));
    let out_sender = sender.clone();
    let writer = tokio::spawn(async move {
        while let Some(o) = out_rx.recv().await {
            let (to, data) = match o {
                Output::Stdout(d) => (stdout_id, d),
                Output::Stderr(d) => (stderr_id, d),
            };
            if let Some(to) = to
                && !out_sender.data(to, data).await
            {
                break;
            }
        }
    });
    let result = job(in_rx, out_tx).await;
    let _ = writer.await;
    reader.abort();
    let json_status = matches!(protocol, Some("v5.channel.k8s.io" | "v4.channel.k8s.io"));
    let status: Option<Vec<u8>> = if json_status {
        Some(
            final_status(&opts.command, &result)
                .to_string()
                .into_bytes(),
        )
    } else {
        legacy_status(&opts.command, &result).map(String::into_bytes)
    };
    if let Some(error) = id("error") {
        sender.fin(error, status.unwrap_or_default()).await;
    }
    for (name, s) in &streams {
        if name != "error" {
            sender.fin(*s, Vec::new()).await;
        }
    }
    sender.close().await;
}

/// Port-forward over SPDY: the client opens a pair of streams per connection,
/// `error` and `data`, both naming the `port` and a `requestid`; each pair gets a TCP
/// connection to that port inside the pod (`netns`), data moves both ways on the data
/// stream, and a failure is written on the error stream. `pod` names the pod in errors.
pub async fn port_forward_spdy(upgraded: Upgraded, netns: Option<PathBuf>, pod: String) {
    use super::spdy::Event;
    use std::collections::HashMap;
    let (mut events, sender) = super::spdy::serve(TokioIo::new(upgraded));
    // Pairs being formed, by request id: (error stream, data stream, port).
    let mut forming: HashMap<String, (Option<u32>, Option<u32>, String)> = HashMap::new();
    // Where a data stream's bytes go (None: the client's FIN).
    let mut routes: HashMap<u32, tokio::sync::mpsc::Sender<Option<Vec<u8>>>> = HashMap::new();
    while let Some(e) = events.recv().await {
        match e {
            Event::Stream { id, headers } => {
                let kind = headers.get("streamtype").map(String::as_str).unwrap_or("");
                let port = headers.get("port").cloned().unwrap_or_default();
                // Clients before request ids pair an error stream with the data
                // stream opened right after it (ids two apart).
                let request = headers.get("requestid").cloned().unwrap_or_else(|| {
                    match kind {
                        "data" => id.saturating_sub(2),
                        _ => id,
                    }
                    .to_string()
                });
                let entry = forming
                    .entry(request.clone())
                    .or_insert((None, None, port.clone()));
                match kind {
                    "error" => entry.0 = Some(id),
                    "data" => entry.1 = Some(id),
                    _ => {
                        sender.reset(id, super::spdy::PROTOCOL_ERROR).await;
                        continue;
                    }
                }
                let (Some(error), Some(data)) = (entry.0, entry.1) else {
                    continue;
                };
                let port = entry.2.clone();
                forming.remove(&request);
                let (tx, rx) = tokio::sync::mpsc::channel(64);
                routes.insert(data, tx);
                tokio::spawn(forward_pair(
                    sender.clone(),
                    netns.clone(),
                    pod.clone(),
                    port,
                    error,
                    data,
                    rx,
                ));
            }
            Event::Data { id, data } => {
                if let Some(r) = routes.get(&id)
                    && r.send(Some(data)).await.is_err()
                {
                    routes.remove(&id);
                }
            }
            Event::Fin { id } => {
                if let Some(r) = routes.remove(&id) {
                    let _ = r.send(None).await;
                }
            }
            Event::Reset { id } => {
                routes.remove(&id);
            }
        }
    }
}

/// One forwarded connection of a SPDY port-forward.
async fn forward_pair(
    sender: super::spdy::Sender,
    netns: Option<PathBuf>,
    pod: String,
    port: String,
    error: u32,
    data: u32,
    mut inbound: tokio::sync::mpsc::Receiver<Option<Vec<u8>>>,
) {
    let conn = match port.parse::<u16>() {
        Ok(p) if p > 0 => connect(netns.as_deref(), p)
            .await
            .map_err(|e| e.to_string()),
        _ => Err(format!("invalid port {port:?}")),
    };
    let stream = match conn {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {pod}: {e}");
            sender.fin(error, msg.into_bytes()).await;
            sender.fin(data, Vec::new()).await;
            return;
        }
    };
    let (mut r, mut w) = stream.into_split();
    let to_pod = tokio::spawn(async move {
        while let Some(chunk) = inbound.recv().await {
            match chunk {
                Some(d) => {
                    if w.write_all(&d).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = w.shutdown().await;
                    return;
                }
            }
        }
    });
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !sender.data(data, buf[..n].to_vec()).await {
                    break;
                }
            }
        }
    }
    sender.fin(data, Vec::new()).await;
    sender.fin(error, Vec::new()).await;
    let _ = to_pod.await;
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
pub async fn port_forward(ws: Ws, protocol: Protocol, netns: Option<PathBuf>, ports: Vec<u16>) {
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(64);
    let mut writers: Vec<Option<tokio::net::tcp::OwnedWriteHalf>> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (data, error) = ((2 * i) as u8, (2 * i + 1) as u8);
        let prefix = port.to_le_bytes();
        let _ = sink.send(protocol.frame(data, &prefix)).await;
        let _ = sink.send(protocol.frame(error, &prefix)).await;
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
                                if tx.send(protocol.frame(data, &buf[..n])).await.is_err() {
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
                let _ = sink.send(protocol.frame(error, msg.as_bytes())).await;
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
        let _ = sink.send(normal_close()).await;
    });
    while let Some(Ok(msg)) = source.next().await {
        if matches!(msg, Message::Close(_)) {
            break;
        }
        let Some((channel, body)) = protocol.unframe(msg) else {
            continue;
        };
        let i = usize::from(channel / 2);
        if channel % 2 == 0
            && let Some(Some(w)) = writers.get_mut(i)
            && w.write_all(&body).await.is_err()
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
            legacy_status(&["true".into()], &Ok(0)),
            None,
            "before v4 a success says nothing"
        );
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

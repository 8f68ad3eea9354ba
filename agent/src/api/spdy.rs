//! The server side of SPDY/3.1, as far as Kubernetes streaming uses it: what every
//! apiserver before 1.36 (and 1.36 without `ExtendWebSocketsToKubelet`) speaks to a
//! kubelet for exec, attach and port-forward after an `Upgrade: SPDY/3.1`.
//!
//! The client opens every stream (SYN_STREAM, its headers naming the stream's role);
//! the server accepts each with SYN_REPLY, moves bytes in DATA frames, and half-closes
//! a stream with FLAG_FIN. Header blocks are compressed with one zlib stream per
//! direction for the whole session, primed with SPDY/3's dictionary and cut at sync
//! flushes. PING is answered; SETTINGS and WINDOW_UPDATE are read and ignored, as the
//! Go implementation Kubernetes uses does not enforce flow-control windows either.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;

/// The `Upgrade` token.
pub const UPGRADE: &str = "SPDY/3.1";

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;
const FLAG_FIN: u8 = 0x01;
/// RST_STREAM status codes.
pub const PROTOCOL_ERROR: u32 = 1;
pub const CANCEL: u32 = 5;
/// Frames are at most 2^24 - 1 bytes of payload; header blocks are kept far smaller.
const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// The header names and values SPDY/3 primes zlib with (each as a 32-bit length and
/// the bytes), then a run of common status lines, dates and media types.
const DICTIONARY_WORDS: [&str; 65] = [
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];
const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
    "502504505",
    "203 Non-Authoritative Information",
    "204 No Content",
    "301 Moved Permanently",
    "400 Bad Request",
    "401 Unauthorized",
    "403 Forbidden",
    "404 Not Found",
    "500 Internal Server Error",
    "501 Not Implemented",
    "503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec",
    " 00:00:00",
    " Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,",
    "application/xhtml+xml,text/plain,text/javascript,public",
    "private",
    "max-age=",
    "gzip,deflate,sdch",
    "charset=utf-8",
    "charset=iso-8859-1,utf-,*,enq=0.",
);

/// SPDY/3's zlib dictionary (1,423 bytes).
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        let mut d = Vec::with_capacity(1423);
        for w in DICTIONARY_WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(DICTIONARY_TAIL.as_bytes());
        d
    })
}

/// What went wrong on a session.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("reading the connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
}

/// A frame as read from the wire.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Control {
        kind: u16,
        flags: u8,
        data: Vec<u8>,
    },
    Data {
        stream: u32,
        flags: u8,
        data: Vec<u8>,
    },
}

/// Reads one frame; `None` at a clean end of the connection.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, SpdyError> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let mut data = vec![0u8; len];
    r.read_exact(&mut data).await?;
    if head[0] & 0x80 != 0 {
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(SpdyError::Protocol(format!(
                "version {version}; this server speaks SPDY/3.1"
            )));
        }
        Ok(Some(Frame::Control {
            kind: u16::from_be_bytes([head[2], head[3]]),
            flags,
            data,
        }))
    } else {
        Ok(Some(Frame::Data {
            stream: u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff,
            flags,
            data,
        }))
    }
}

fn control(kind: u16, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + data.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(data);
    f
}

/// DATA frames carrying `data` on `stream` (split at the frame size limit); the last
/// with FLAG_FIN when `fin`.
fn data_frames(stream: u32, data: &[u8], fin: bool) -> Vec<u8> {
    const MAX: usize = 0xff_ffff;
    let mut out = Vec::with_capacity(data.len() + 8);
    let mut chunks: Vec<&[u8]> = data.chunks(MAX).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let last = chunks.len() - 1;
    for (i, c) in chunks.into_iter().enumerate() {
        out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        out.push(if fin && i == last { FLAG_FIN } else { 0 });
        out.extend_from_slice(&(c.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(c);
    }
    out
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, SpdyError> {
    data.get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| SpdyError::Protocol("frame too short".into()))
}

/// One direction's header compression: a zlib stream for the whole session.
pub struct HeaderCodec {
    inflate: Decompress,
    deflate: Compress,
}

impl Default for HeaderCodec {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        // A fresh stream always takes a dictionary.
        let _ = deflate.set_dictionary(dictionary());
        Self {
            inflate: Decompress::new(true),
            deflate,
        }
    }
}

impl HeaderCodec {
    /// The name/value pairs of a compressed header block (values with NULs are
    /// several values of one name).
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
        let mut raw = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            if raw.capacity() - raw.len() < 256 {
                raw.reserve(1024);
            }
            let (before, produced) = (self.inflate.total_in(), raw.len());
            let r = self
                .inflate
                .decompress_vec(input, &mut raw, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - before) as usize;
            input = &input[used..];
            match r {
                Ok(Status::BufError) if used == 0 && raw.len() == produced => {
                    return Err(SpdyError::Protocol("header block ends early".into()));
                }
                Ok(Status::Ok | Status::BufError) => {}
                Ok(Status::StreamEnd) => break,
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(dictionary())
                        .map_err(|e| SpdyError::Protocol(format!("the header dictionary: {e}")))?;
                }
                Err(e) => return Err(SpdyError::Protocol(format!("header block: {e}"))),
            }
            if raw.len() > MAX_HEADER_BLOCK {
                return Err(SpdyError::Protocol("header block too large".into()));
            }
            if input.is_empty() && raw.capacity() > raw.len() {
                break;
            }
        }
        parse_block(&raw)
    }

    /// `headers` as a compressed header block.
    pub fn encode(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            let k = k.to_ascii_lowercase();
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            let before = self.deflate.total_in();
            let _ = self
                .deflate
                .compress_vec(input, &mut out, FlushCompress::Sync);
            input = &input[(self.deflate.total_in() - before) as usize..];
            // Done when everything went in and the flush had room to finish.
            if input.is_empty() && out.capacity() > out.len() {
                return out;
            }
        }
    }
}

fn parse_block(raw: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
    let short = || SpdyError::Protocol("header block ends early".into());
    let count = u32_at(raw, 0)? as usize;
    let mut at = 4;
    let mut out = Vec::new();
    let take = |at: &mut usize| -> Result<String, SpdyError> {
        let len = u32_at(raw, *at)? as usize;
        let s = raw.get(*at + 4..*at + 4 + len).ok_or_else(short)?;
        *at += 4 + len;
        Ok(String::from_utf8_lossy(s).into_owned())
    };
    for _ in 0..count.min(1024) {
        let name = take(&mut at)?.to_ascii_lowercase();
        let value = take(&mut at)?;
        for v in value.split('\0') {
            out.push((name.clone(), v.to_string()));
        }
    }
    Ok(out)
}

/// What the client did, for the handler of a session.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A stream opened (already accepted), with its headers.
    Stream {
        id: u32,
        headers: BTreeMap<String, String>,
    },
    Data {
        id: u32,
        data: Vec<u8>,
    },
    /// The client will send no more on the stream.
    Fin {
        id: u32,
    },
    Reset {
        id: u32,
    },
}

enum Out {
    Reply(u32),
    Data(u32, Vec<u8>, bool),
    Reset(u32, u32),
    Ping(Vec<u8>),
    Close,
}

/// Sends on a session; clones share it.
#[derive(Clone)]
pub struct Sender(mpsc::Sender<Out>);

impl Sender {
    /// `data` on stream `id`; false once the connection is gone.
    pub async fn data(&self, id: u32, data: Vec<u8>) -> bool {
        self.0.send(Out::Data(id, data, false)).await.is_ok()
    }

    /// Half-closes stream `id` (with `data` as its last bytes).
    pub async fn fin(&self, id: u32, data: Vec<u8>) {
        let _ = self.0.send(Out::Data(id, data, true)).await;
    }

    pub async fn reset(&self, id: u32, status: u32) {
        let _ = self.0.send(Out::Reset(id, status)).await;
    }

    /// Says GOAWAY and closes the connection once everything queued is written.
    pub async fn close(&self) {
        let _ = self.0.send(Out::Close).await;
    }
}

/// Runs the session on `io` (after the 101 answer): the handler gets the client's
/// streams and data as [`Event`]s (the channel ends with the connection) and sends
/// through the [`Sender`].
pub fn serve<T>(io: T) -> (mpsc::Receiver<Event>, Sender)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(64);
    let (ev_tx, ev_rx) = mpsc::channel::<Event>(64);
    let replies = out_tx.clone();
    tokio::spawn(async move {
        let mut codec = HeaderCodec::default();
        loop {
            let frame = match read_frame(&mut rd).await {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!("SPDY session ends: {e}");
                    return;
                }
            };
            let event = match frame {
                Frame::Data {
                    stream,
                    flags,
                    data,
                } => {
                    if !data.is_empty()
                        && ev_tx.send(Event::Data { id: stream, data }).await.is_err()
                    {
                        return;
                    }
                    if flags & FLAG_FIN == 0 {
                        continue;
                    }
                    Event::Fin { id: stream }
                }
                Frame::Control { kind, flags, data } => match kind {
                    SYN_STREAM => {
                        let Ok(id) = u32_at(&data, 0).map(|i| i & 0x7fff_ffff) else {
                            return;
                        };
                        let headers = match data.get(10..).map(|b| codec.decode(b)) {
                            Some(Ok(h)) => h,
                            _ => {
                                let _ = replies.send(Out::Reset(id, PROTOCOL_ERROR)).await;
                                return;
                            }
                        };
                        let _ = replies.send(Out::Reply(id)).await;
                        let headers = headers.into_iter().collect();
                        let _ = ev_tx.send(Event::Stream { id, headers }).await;
                        if flags & FLAG_FIN == 0 {
                            continue;
                        }
                        Event::Fin { id }
                    }
                    HEADERS => {
                        // Later headers of a stream: read to keep the zlib stream in step.
                        if let Some(b) = data.get(4..)
                            && codec.decode(b).is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    RST_STREAM => match u32_at(&data, 0) {
                        Ok(id) => Event::Reset {
                            id: id & 0x7fff_ffff,
                        },
                        Err(_) => return,
                    },
                    PING => {
                        let _ = replies.send(Out::Ping(data)).await;
                        continue;
                    }
                    GOAWAY => return,
                    SYN_REPLY | SETTINGS | WINDOW_UPDATE => continue,
                    _ => continue,
                },
            };
            // A handler that has finished drops its events, but reading goes on to
            // the end: a socket closed with unread data is reset, and the reset would
            // destroy the last frames on their way to the client.
            let _ = ev_tx.send(event).await;
        }
    });
    tokio::spawn(async move {
        let mut codec = HeaderCodec::default();
        let mut last_stream = 0u32;
        while let Some(out) = out_rx.recv().await {
            let bytes = match out {
                Out::Reply(id) => {
                    last_stream = last_stream.max(id);
                    let mut d = (id & 0x7fff_ffff).to_be_bytes().to_vec();
                    d.extend_from_slice(&codec.encode(&[]));
                    control(SYN_REPLY, 0, &d)
                }
                Out::Data(id, data, fin) => data_frames(id, &data, fin),
                Out::Reset(id, status) => {
                    let mut d = (id & 0x7fff_ffff).to_be_bytes().to_vec();
                    d.extend_from_slice(&status.to_be_bytes());
                    control(RST_STREAM, 0, &d)
                }
                Out::Ping(id) => control(PING, 0, &id),
                Out::Close => {
                    let mut d = last_stream.to_be_bytes().to_vec();
                    d.extend_from_slice(&0u32.to_be_bytes());
                    let _ = wr.write_all(&control(GOAWAY, 0, &d)).await;
                    let _ = wr.flush().await;
                    let _ = wr.shutdown().await;
                    return;
                }
            };
            if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
                return;
            }
        }
    });
    (ev_rx, Sender(out_tx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_spdy3s() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b"charset=iso-8859-1,utf-,*,enq=0."));
        // Its Adler-32 is what a zlib stream primed with it names (DICTID).
        let mut inflate = Decompress::new(true);
        let block = hex(
            "78bbe3c6a7c202e50e703a2b294a4dcc851625aca9a0800632388b20d196094ace8c0600000000ffff",
        );
        let err = inflate
            .decompress_vec(&block, &mut Vec::with_capacity(64), FlushDecompress::Sync)
            .unwrap_err();
        assert_eq!(err.needs_dictionary(), Some(0xe3c6_a7c2));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn header_blocks_of_another_zlib_decode_in_sequence() {
        // Two blocks of one session, compressed by Python's zlib with the dictionary
        // and sync flushes (as Go's compress/zlib does for SPDY): the second depends
        // on the first's window.
        let mut codec = HeaderCodec::default();
        let first = codec
            .decode(&hex(
                "78bbe3c6a7c202e50e703a2b294a4dcc851625aca9a0800632388b20d196094ace8c0600000000ffff",
            ))
            .unwrap();
        assert_eq!(
            first,
            [
                ("streamtype".to_string(), "error".to_string()),
                ("requestid".to_string(), "0".to_string())
            ]
        );
        let second = codec
            .decode(&hex("0211188a81c93b25bfb404000000ffff"))
            .unwrap();
        assert_eq!(second, [("streamtype".to_string(), "stdout".to_string())]);
    }

    #[test]
    fn our_blocks_decode_with_a_fresh_peer() {
        let (mut ours, mut theirs) = (HeaderCodec::default(), HeaderCodec::default());
        for round in 0..3 {
            let v = format!("value {round}");
            let block = ours.encode(&[("StreamType", "data"), ("port", &v)]);
            let got = theirs.decode(&block).unwrap();
            assert_eq!(
                got,
                [
                    ("streamtype".to_string(), "data".to_string()),
                    ("port".to_string(), v)
                ]
            );
        }
        assert_eq!(theirs.decode(&ours.encode(&[])).unwrap(), []);
        assert!(HeaderCodec::default().decode(b"not zlib").is_err());
    }

    #[tokio::test]
    async fn a_session_accepts_streams_answers_pings_and_moves_data() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (mut events, sender) = serve(server);
        let (mut rd, mut wr) = tokio::io::split(client);
        let mut codec = HeaderCodec::default();
        // SYN_STREAM 1 with headers, then data with FIN, then a PING.
        let mut syn = 1u32.to_be_bytes().to_vec();
        syn.extend_from_slice(&0u32.to_be_bytes());
        syn.extend_from_slice(&[0, 0]);
        syn.extend_from_slice(&codec.encode(&[("streamtype", "stdin")]));
        wr.write_all(&control(SYN_STREAM, 0, &syn)).await.unwrap();
        wr.write_all(&data_frames(1, b"hello", true)).await.unwrap();
        wr.write_all(&control(PING, 0, &7u32.to_be_bytes()))
            .await
            .unwrap();
        let Some(Event::Stream { id, headers }) = events.recv().await else {
            panic!("no stream");
        };
        assert_eq!((id, headers["streamtype"].as_str()), (1, "stdin"));
        assert_eq!(
            events.recv().await,
            Some(Event::Data {
                id: 1,
                data: b"hello".to_vec()
            })
        );
        assert_eq!(events.recv().await, Some(Event::Fin { id: 1 }));
        // The server's side: SYN_REPLY for stream 1, the PING echoed.
        let Some(Frame::Control { kind, data, .. }) = read_frame(&mut rd).await.unwrap() else {
            panic!("no reply");
        };
        assert_eq!((kind, u32_at(&data, 0).unwrap()), (SYN_REPLY, 1));
        assert_eq!(
            codec.decode(&data[4..]).unwrap_or_default(),
            [],
            "an empty header block"
        );
        let Some(Frame::Control { kind, data, .. }) = read_frame(&mut rd).await.unwrap() else {
            panic!("no ping");
        };
        assert_eq!((kind, data), (PING, 7u32.to_be_bytes().to_vec()));
        sender.fin(1, b"bye".to_vec()).await;
        sender.close().await;
        assert_eq!(
            read_frame(&mut rd).await.unwrap(),
            Some(Frame::Data {
                stream: 1,
                flags: FLAG_FIN,
                data: b"bye".to_vec()
            })
        );
        let Some(Frame::Control { kind, .. }) = read_frame(&mut rd).await.unwrap() else {
            panic!("no goaway");
        };
        assert_eq!(kind, GOAWAY);
        assert_eq!(read_frame(&mut rd).await.unwrap(), None);
    }
}

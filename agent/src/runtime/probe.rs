//! Running one probe or lifecycle handler against a container: exec in the container
//! (through [`super::exec`]), an HTTP GET or a TCP connect made from the pod's network
//! namespace (so a pod is probed the same way with or without a pod network), or a
//! sleep.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ExecAction, GRPCAction, HTTPGetAction, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Runtime;
use super::exec::MAX_OUTPUT;

/// One handler: what a probe or hook does.
#[derive(Clone, Debug)]
pub enum Handler {
    Exec(ExecAction),
    Http(HTTPGetAction),
    Tcp(TCPSocketAction),
    Sleep(Duration),
    Grpc(GRPCAction),
}

impl Handler {
    pub fn of_probe(p: &k8s_openapi::api::core::v1::Probe) -> Option<Self> {
        if let Some(e) = &p.exec {
            return Some(Self::Exec(e.clone()));
        }
        if let Some(h) = &p.http_get {
            return Some(Self::Http(h.clone()));
        }
        if let Some(t) = &p.tcp_socket {
            return Some(Self::Tcp(t.clone()));
        }
        p.grpc.as_ref().map(|g| Self::Grpc(g.clone()))
    }

    pub fn of_hook(h: &k8s_openapi::api::core::v1::LifecycleHandler) -> Option<Self> {
        if let Some(e) = &h.exec {
            return Some(Self::Exec(e.clone()));
        }
        if let Some(g) = &h.http_get {
            return Some(Self::Http(g.clone()));
        }
        if let Some(s) = &h.sleep {
            return Some(Self::Sleep(Duration::from_secs(
                u64::try_from(s.seconds).unwrap_or(0),
            )));
        }
        h.tcp_socket.as_ref().map(|t| Self::Tcp(t.clone()))
    }
}

/// Where a container is reached.
#[derive(Clone, Debug)]
pub struct Target {
    /// The container's ID (for exec).
    pub id: String,
    /// The pod's IP; loopback when the pod has none yet.
    pub ip: IpAddr,
    /// The pod's network namespace pin (`None` for host-network pods).
    pub netns: Option<PathBuf>,
}

/// Why a probe or handler failed, in kubelet's words (events, container statuses and
/// the log carry them).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("port {0} is out of range")]
    PortRange(i64),
    #[error("container {container} has no port named {name:?}")]
    NoPort { container: String, name: String },
    #[error("resolving {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} has no address")]
    NoAddress(String),
    #[error(transparent)]
    Exec(#[from] super::RuntimeError),
    #[error("command {cmd:?} timed out after {timeout:?}")]
    ExecTimedOut { cmd: Vec<String>, timeout: Duration },
    #[error("command {cmd:?} exited with {code}: {output}")]
    ExecFailed {
        cmd: Vec<String>,
        code: i32,
        output: String,
    },
    #[error("dial tcp {addr}: {source}")]
    Dial {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("Get {url:?}: dial tcp {addr}: {source}")]
    HttpDial {
        url: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("Get {url:?}: {source}")]
    HttpIo {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Get {url:?}: {source}")]
    Tls {
        url: String,
        #[source]
        source: rustls::Error,
    },
    #[error("Get {url:?}: no HTTP response")]
    NoResponse { url: String },
    #[error("HTTP probe failed with statuscode: {0}")]
    HttpStatus(u16),
    #[error("timeout: failed to connect service {addr:?} within {timeout:?}: {source}")]
    GrpcConnect {
        addr: SocketAddr,
        timeout: Duration,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC probe to {addr}: {source}")]
    GrpcIo {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    H2(#[from] h2::Error),
    #[error(transparent)]
    Request(#[from] http::Error),
    #[error("unexpected HTTP status {0}")]
    GrpcHttpStatus(http::StatusCode),
    #[error("this server does not implement the grpc health protocol (grpc.health.v1.Health)")]
    GrpcUnimplemented,
    #[error("rpc error: code = {0}")]
    GrpcCode(String),
    #[error("service unhealthy (responded with {0:?})")]
    Unhealthy(&'static str),
    #[error("timeout: health rpc did not complete within {0:?}")]
    GrpcTimedOut(Duration),
}

/// A port number, or a named port of the container.
fn port(c: &Container, p: &IntOrString) -> Result<u16, ProbeError> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| ProbeError::PortRange(i64::from(*n))),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            c.ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok())
                .ok_or_else(|| ProbeError::NoPort {
                    container: c.name.clone(),
                    name: name.clone(),
                })
        }
    }
}

/// The address to connect to: `host` when set, else the pod's IP.
fn address(t: &Target, host: Option<&str>, port: u16) -> Result<SocketAddr, ProbeError> {
    let ip = match host.filter(|h| !h.is_empty()) {
        None => t.ip,
        Some(h) => match h.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&(h, port))
                .map_err(|source| ProbeError::Resolve {
                    host: h.to_string(),
                    source,
                })?
                .next()
                .map(|a| a.ip())
                .ok_or_else(|| ProbeError::NoAddress(h.to_string()))?,
        },
    };
    Ok(SocketAddr::new(ip, port))
}

/// Runs `h` for container `c` at `t` within `timeout`: `Ok(output)` on success,
/// `Err(why)` on failure.
pub fn run(
    rt: &Runtime,
    c: &Container,
    t: &Target,
    h: &Handler,
    timeout: Duration,
) -> Result<String, ProbeError> {
    match h {
        Handler::Exec(e) => {
            let cmd = e.command.clone().unwrap_or_default();
            let r = rt.exec_sync(&t.id, &cmd, timeout)?;
            if r.timed_out {
                Err(ProbeError::ExecTimedOut { cmd, timeout })
            } else if r.exit_code != 0 {
                Err(ProbeError::ExecFailed {
                    cmd,
                    code: r.exit_code,
                    output: r.output.trim_end().to_string(),
                })
            } else {
                Ok(r.output)
            }
        }
        Handler::Tcp(tcp) => {
            let a = address(t, tcp.host.as_deref(), port(c, &tcp.port)?)?;
            crate::sys::ns::connect_in(t.netns.as_deref(), a, timeout)
                .map(|_| String::new())
                .map_err(|source| ProbeError::Dial { addr: a, source })
        }
        Handler::Http(get) => http_get(c, t, get, timeout),
        Handler::Sleep(d) => {
            std::thread::sleep(*d);
            Ok(String::new())
        }
        Handler::Grpc(g) => grpc(t, g, timeout),
    }
}

/// kubelet's gRPC probe: the standard health protocol (`grpc.health.v1.Health/Check`)
/// over HTTP/2 without TLS, from the pod's network namespace; SERVING succeeds.
fn grpc(t: &Target, g: &GRPCAction, timeout: Duration) -> Result<String, ProbeError> {
    let port = u16::try_from(g.port).map_err(|_| ProbeError::PortRange(i64::from(g.port)))?;
    let a = SocketAddr::new(t.ip, port);
    let service = g.service.clone().unwrap_or_default();
    let stream = crate::sys::ns::connect_in(t.netns.as_deref(), a, timeout).map_err(|source| {
        ProbeError::GrpcConnect {
            addr: a,
            timeout,
            source,
        }
    })?;
    stream
        .set_nonblocking(true)
        .map_err(|source| ProbeError::GrpcIo { addr: a, source })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| ProbeError::GrpcIo { addr: a, source })?;
    rt.block_on(async move {
        let check = async {
            let tcp = tokio::net::TcpStream::from_std(stream)
                .map_err(|source| ProbeError::GrpcIo { addr: a, source })?;
            let (client, conn) = h2::client::handshake(tcp).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut client = client.ready().await?;
            let request = http::Request::builder()
                .method("POST")
                .uri(format!("http://{a}/grpc.health.v1.Health/Check"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("user-agent", "kube-probe/1.36")
                .body(())?;
            let (response, mut send) = client.send_request(request, false)?;
            send.send_data(
                bytes::Bytes::from(grpc_frame(&health_request(&service))),
                true,
            )?;
            let response = response.await?;
            if response.status() != http::StatusCode::OK {
                return Err(ProbeError::GrpcHttpStatus(response.status()));
            }
            let grpc_status = |h: &http::HeaderMap| {
                h.get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let early = grpc_status(response.headers());
            let mut body = response.into_body();
            let mut data = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk?;
                let _ = body.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
            }
            let trailers = body.trailers().await?;
            let code = early
                .or_else(|| trailers.as_ref().and_then(grpc_status))
                .unwrap_or_default();
            match code.as_str() {
                "0" => {}
                "12" => return Err(ProbeError::GrpcUnimplemented),
                other => return Err(ProbeError::GrpcCode(other.to_string())),
            }
            match health_status(data.get(5..).unwrap_or_default()) {
                1 => Ok(String::new()),
                s => Err(ProbeError::Unhealthy(match s {
                    2 => "NOT_SERVING",
                    3 => "SERVICE_UNKNOWN",
                    _ => "UNKNOWN",
                })),
            }
        };
        tokio::time::timeout(timeout, check)
            .await
            .map_err(|_| ProbeError::GrpcTimedOut(timeout))?
    })
}

/// `HealthCheckRequest{service}` in protobuf: field 1, a string (absent when empty).
fn health_request(service: &str) -> Vec<u8> {
    if service.is_empty() {
        return Vec::new();
    }
    let mut out = vec![0x0a];
    let mut n = service.len();
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(service.as_bytes());
    out
}

/// A gRPC message on the wire: not compressed, its length, itself.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&u32::try_from(message.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// The `status` (field 1, a varint) of a `HealthCheckResponse`; 0 (UNKNOWN) without.
fn health_status(message: &[u8]) -> u64 {
    fn varint(message: &[u8], i: &mut usize) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        while *i < message.len() && shift < 64 {
            let b = message[*i];
            *i += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        v
    }
    let mut i = 0;
    while i < message.len() {
        let key = varint(message, &mut i);
        match (key >> 3, key & 7) {
            (1, 0) => return varint(message, &mut i),
            (_, 0) => {
                varint(message, &mut i);
            }
            (_, 2) => {
                let len = usize::try_from(varint(message, &mut i)).unwrap_or(usize::MAX);
                i = i.saturating_add(len);
            }
            (_, 1) => i += 8,
            (_, 5) => i += 4,
            _ => return 0,
        }
    }
    0
}

/// kubelet's HTTP probe: GET with its User-Agent and the given headers; 2xx and 3xx
/// succeed. HTTPS does not verify the certificate (as kubelet).
fn http_get(
    c: &Container,
    t: &Target,
    get: &HTTPGetAction,
    timeout: Duration,
) -> Result<String, ProbeError> {
    let a = address(t, get.host.as_deref(), port(c, &get.port)?)?;
    let scheme = get.scheme.as_deref().unwrap_or("HTTP");
    let path = get.path.as_deref().filter(|p| !p.is_empty()).unwrap_or("/");
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let url = format!("{}://{a}{path}", scheme.to_lowercase());
    let stream = crate::sys::ns::connect_in(t.netns.as_deref(), a, timeout).map_err(|source| {
        ProbeError::HttpDial {
            url: url.clone(),
            addr: a,
            source,
        }
    })?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let headers = get.http_headers.clone().unwrap_or_default();
    let host_header = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .map_or_else(|| a.to_string(), |h| h.value.clone());
    let mut request =
        format!("GET {path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("user-agent"))
    {
        request.push_str("User-Agent: kube-probe/1.36\r\n");
    }
    if !headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("accept"))
    {
        request.push_str("Accept: */*\r\n");
    }
    for h in headers
        .iter()
        .filter(|h| !h.name.eq_ignore_ascii_case("host"))
    {
        request.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    request.push_str("\r\n");
    let mut response = Vec::new();
    let io = |source: std::io::Error| ProbeError::HttpIo {
        url: url.clone(),
        source,
    };
    if scheme.eq_ignore_ascii_case("HTTPS") {
        let config = rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(NoVerify::new()))
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::IpAddress(a.ip().into());
        let conn =
            rustls::ClientConnection::new(std::sync::Arc::new(config), name).map_err(|source| {
                ProbeError::Tls {
                    url: url.clone(),
                    source,
                }
            })?;
        let mut tls = rustls::StreamOwned::new(conn, stream);
        tls.write_all(request.as_bytes()).map_err(io)?;
        read_head(&mut tls, &mut response);
    } else {
        let mut s = stream;
        s.write_all(request.as_bytes()).map_err(io)?;
        read_head(&mut s, &mut response);
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let code: u16 = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ProbeError::NoResponse { url: url.clone() })?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    if (200..400).contains(&code) {
        Ok(body)
    } else {
        Err(ProbeError::HttpStatus(code))
    }
}

/// Reads a response (head and up to [`MAX_OUTPUT`] of body) until the peer closes or
/// stops sending.
fn read_head(r: &mut impl std::io::Read, out: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    while out.len() < MAX_OUTPUT {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Accepts any server certificate (kubelet's probes do not verify; nor does an
/// apiserver without `--kubelet-certificate-authority` towards kubelets).
#[derive(Debug)]
pub struct NoVerify(rustls::crypto::CryptoProvider);

impl Default for NoVerify {
    fn default() -> Self {
        Self::new()
    }
}

impl NoVerify {
    pub fn new() -> Self {
        Self(rustls::crypto::aws_lc_rs::default_provider())
    }
}

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The loopback address, for pods without an IP yet.
pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_messages_on_the_wire() {
        assert!(health_request("").is_empty());
        assert_eq!(health_request("db"), [0x0a, 2, b'd', b'b']);
        assert_eq!(grpc_frame(&[1, 2]), [0, 0, 0, 0, 2, 1, 2]);
        assert_eq!(health_status(&[0x08, 0x01]), 1);
        assert_eq!(
            health_status(&[0x12, 0x01, b'x', 0x08, 0x02]),
            2,
            "unknown fields skipped"
        );
        assert_eq!(health_status(&[]), 0);
    }
}

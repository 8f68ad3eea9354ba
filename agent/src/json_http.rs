//! The small JSON-over-HTTP/1.1 endpoints kernlet serves besides the kubelet API: the
//! CLI's daemon socket, kube-proxy's `:10256` health endpoint and the health-check
//! node ports of `externalTrafficPolicy: Local` load balancers. Each answers a request
//! from its path alone.

/// One answer: status code, JSON body, extra headers.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(&'static str, String)>,
}

impl Answer {
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            body: body.into(),
            headers: Vec::new(),
        }
    }
}

/// Serves the accepted connection `stream`, answering each request with `answer` of
/// its path, as `application/json`.
pub async fn serve<S>(stream: S, answer: impl Fn(&str) -> Answer + Send + Sync + 'static)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let answer = std::sync::Arc::new(answer);
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let a = answer(req.uri().path());
        async move {
            let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(a.body)));
            *r.status_mut() = hyper::StatusCode::from_u16(a.status)
                .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
            let h = r.headers_mut();
            h.insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            for (k, v) in a.headers {
                if let Ok(v) = hyper::header::HeaderValue::from_str(&v) {
                    h.insert(k, v);
                }
            }
            Ok::<_, std::convert::Infallible>(r)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
        .await;
}

/// Listens on `addr` and serves every connection with `answer` until `stop`.
pub async fn listen(
    addr: std::net::SocketAddr,
    answer: fn(&str) -> Answer,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.changed() => return Ok(()),
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        tokio::spawn(serve(tcp, answer));
    }
}

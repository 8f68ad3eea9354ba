//! The kubelet API on :10250 (HTTPS) and the plain healthz on 127.0.0.1:10248.
//!
//! Every request is authenticated (a client certificate of the cluster CA, else a
//! bearer token through TokenReview; anonymous only when enabled) and authorized with a
//! SubjectAccessReview on the node's subresource for its path, as kubelet does. Served:
//! `/healthz`, `/pods`, `/runningpods/`, `/containerLogs/{ns}/{pod}/{container}` (with
//! follow, tailLines, sinceSeconds, sinceTime, timestamps, previous, limitBytes),
//! `/configz`, `/metrics` (kernlet's own), `/metrics/resource`, `/metrics/cadvisor`, `/metrics/probes`, `/stats/summary`,
//! and the streaming endpoints `/exec/…`, `/attach/…` (output only) and
//! `/portForward/…` over WebSocket (`stream`) or SPDY/3.1 (`spdy`).

pub mod auth;
pub mod cadvisor;
pub mod channel;
pub mod logs;
pub mod spdy;
pub mod stats;
pub mod stream;
pub mod tls;
pub(crate) mod upgrade;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::client::SharedClient;
use auth::{Authorizer, User};

/// Where and how the API is served.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub address: SocketAddr,
    /// The plain healthz listener (kubelet: 127.0.0.1:10248); `None` turns it off.
    pub healthz: Option<SocketAddr>,
    pub node: String,
    pub node_ips: Vec<IpAddr>,
    pub state_dir: PathBuf,
    /// The CA client certificates must chain to (the cluster CA).
    pub client_ca_pem: Vec<u8>,
    /// Serve requests without credentials as `system:anonymous` (kubelet's
    /// `--anonymous-auth`; off by default here, as kubeadm configures kubelets).
    pub anonymous: bool,
    /// Bearer tokens are checked with TokenReview (kubelet's webhook authentication);
    /// without it a token authenticates no one.
    pub webhook_authentication: bool,
    /// Whether requests are authorized with SubjectAccessReviews or all allowed.
    pub authorization: crate::model::kubelet_config::Authorization,
    /// The `/configz` answer.
    pub configz: Value,
    /// Where pod namespaces are pinned (`<run-dir>/pods/<uid>/ns`).
    pub run_dir: PathBuf,
    /// The kernlet binary, re-executed as the exec helper.
    pub exe: PathBuf,
    /// Where `/stats/summary` and `/metrics/resource` read their counters.
    pub stats: stats::StatsSources,
}

pub(crate) type Body = BoxBody<Bytes, Infallible>;

#[derive(Default)]
struct Metrics {
    by_code: std::sync::Mutex<std::collections::BTreeMap<u16, u64>>,
    refused: AtomicU64,
}

struct Shared {
    cfg: ApiConfig,
    auth: Authorizer,
    metrics: Metrics,
    samples: stats::CpuSamples,
}

pub(crate) fn text(code: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())).boxed());
    *r.status_mut() = code;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_response(v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Why the kubelet API cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the kubelet API's TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {address} for {what}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
}

/// Serves the API until `stop`. Fails at once when the address cannot be bound or the
/// TLS setup is unusable, naming which.
pub async fn serve(
    cfg: ApiConfig,
    client: SharedClient,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let (crt, key) = crate::controllers::serving_cert::paths(&cfg.state_dir);
    let certs = Arc::new(tls::ServingCerts::new(crt, key, &cfg.node, &cfg.node_ips)?);
    if certs.is_self_signed() {
        tracing::warn!(
            "serving the kubelet API with a self-signed certificate until the kubelet-serving CSR is approved"
        );
    }
    let tls = tls::server_config(certs, &cfg.client_ca_pem)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind(cfg.address)
        .await
        .map_err(|source| ServeError::Listen {
            address: cfg.address,
            what: "the kubelet API",
            source,
        })?;
    if let Some(h) = cfg.healthz {
        let healthz =
            tokio::net::TcpListener::bind(h)
                .await
                .map_err(|source| ServeError::Listen {
                    address: h,
                    what: "healthz",
                    source,
                })?;
        tokio::spawn(serve_healthz(healthz, stop.clone()));
    }
    tracing::info!(address = %cfg.address, "kubelet API listening");
    let shared = Arc::new(Shared {
        auth: Authorizer::new(client, cfg.node.clone()),
        cfg,
        metrics: Metrics::default(),
        samples: stats::CpuSamples::default(),
    });
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.changed() => return Ok(()),
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("kubelet API accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                // A failed handshake (a certificate of another CA, a client that
                // never speaks): refused before any request.
                shared.metrics.refused.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let cert_user = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| auth::user_from_cert(c));
            let svc = hyper::service::service_fn(move |req| {
                let shared = Arc::clone(&shared);
                let cert_user = cert_user.clone();
                async move { Ok::<_, Infallible>(handle(&shared, cert_user, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn serve_healthz(listener: tokio::net::TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.changed() => return,
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                Ok::<_, Infallible>(if req.uri().path() == "/healthz" {
                    text(StatusCode::OK, "ok")
                } else {
                    text(StatusCode::NOT_FOUND, "404 page not found\n")
                })
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

async fn handle(
    shared: &Shared,
    cert_user: Option<User>,
    req: Request<Incoming>,
) -> Response<Body> {
    let resp = authorize_and_route(shared, cert_user, req).await;
    if let Ok(mut m) = shared.metrics.by_code.lock() {
        *m.entry(resp.status().as_u16()).or_default() += 1;
    }
    resp
}

/// The user of a request: its certificate's, else its bearer token's, else anonymous
/// when allowed. `Err` is the response refusing it.
async fn authenticate(
    shared: &Shared,
    cert_user: Option<User>,
    req: &Request<Incoming>,
) -> Result<User, Response<Body>> {
    if let Some(u) = cert_user {
        return Ok(u);
    }
    let bearer = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && shared.cfg.webhook_authentication);
    match bearer {
        Some(token) => match shared.auth.user_for_token(token).await {
            Ok(Some(u)) => Ok(u),
            Ok(None) => Err(text(StatusCode::UNAUTHORIZED, "Unauthorized\n")),
            Err(e) => {
                tracing::warn!("authenticating a kubelet API request: {e}");
                Err(text(StatusCode::UNAUTHORIZED, "Unauthorized\n"))
            }
        },
        None if shared.cfg.anonymous => Ok(User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        }),
        None => Err(text(StatusCode::UNAUTHORIZED, "Unauthorized\n")),
    }
}

async fn authorize_and_route(
    shared: &Shared,
    cert_user: Option<User>,
    req: Request<Incoming>,
) -> Response<Body> {
    let user = match authenticate(shared, cert_user, &req).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let path = req.uri().path().to_string();
    // Streaming endpoints act on the node whatever the method (a WebSocket upgrade is a
    // GET): they need create, as kubelet asks.
    let streaming = ["/exec/", "/attach/", "/portForward/", "/run/"]
        .iter()
        .any(|p| path.starts_with(p));
    let verb = if streaming {
        "create"
    } else {
        auth::verb(req.method())
    };
    let subresources = auth::subresources(&path);
    let mut allowed =
        shared.cfg.authorization == crate::model::kubelet_config::Authorization::AlwaysAllow;
    for sub in subresources.iter().filter(|_| !allowed) {
        match shared.auth.allowed(&user, verb, sub).await {
            Ok(true) => {
                allowed = true;
                break;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!("authorizing a kubelet API request: {e}");
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Authorization error (the apiserver could not be asked)\n",
                );
            }
        }
    }
    if !allowed {
        let last = subresources.last().copied().unwrap_or("proxy");
        return text(
            StatusCode::FORBIDDEN,
            auth::forbidden_body(&user, verb, last),
        );
    }
    route(shared, req).await
}

async fn route(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&http::Method::GET, ["healthz"]) => text(StatusCode::OK, "ok"),
        (&http::Method::GET, ["pods"]) => {
            let items = crate::podworker::recorded_pods(&shared.cfg.state_dir);
            json_response(
                &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}),
            )
        }
        (&http::Method::GET, ["runningpods"]) => json_response(&running_pods(shared)),
        (&http::Method::GET, ["configz"]) => json_response(&shared.cfg.configz),
        (&http::Method::GET, ["metrics"]) => text(StatusCode::OK, metrics(shared)),
        (&http::Method::GET, ["metrics", "resource"]) => {
            let src = shared.cfg.stats.clone();
            let body = tokio::task::spawn_blocking(move || stats::resource_metrics(&src))
                .await
                .unwrap_or_default();
            text(StatusCode::OK, body)
        }
        (&http::Method::GET, ["metrics", "probes"]) => {
            text(StatusCode::OK, crate::podworker::probe_metrics::text())
        }
        (&http::Method::GET, ["metrics", "cadvisor"]) => {
            let src = shared.cfg.stats.clone();
            let body = tokio::task::spawn_blocking(move || cadvisor::metrics(&src))
                .await
                .unwrap_or_default();
            text(StatusCode::OK, body)
        }
        (&http::Method::GET, ["stats", "summary"]) => {
            let src = shared.cfg.stats.clone();
            let iface = crate::sys::netlink::interface_with_address(&shared.cfg.node_ips);
            // Counters are files and a few namespace entries: read off the async threads.
            let summary = tokio::task::block_in_place(|| {
                stats::summary(&src, &shared.samples, iface.as_deref())
            });
            json_response(&summary)
        }
        (&http::Method::GET, ["containerLogs", ns, pod, container]) => {
            logs::container_logs(shared, ns, pod, container, req.uri().query().unwrap_or("")).await
        }
        (_, ["exec", ns, pod, container]) => {
            let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
            exec_route(shared, req, &ns, &pod, &container)
        }
        (_, ["attach", ns, pod, container]) => {
            let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
            attach_route(shared, req, &ns, &pod, &container)
        }
        (_, ["portForward", ns, pod]) => {
            let (ns, pod) = (ns.to_string(), pod.to_string());
            port_forward_route(shared, req, &ns, &pod)
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

/// The recorded pod `ns/name`.
fn find_pod(shared: &Shared, ns: &str, pod: &str) -> Option<Value> {
    crate::podworker::recorded_pods(&shared.cfg.state_dir)
        .into_iter()
        .find(|p| p["metadata"]["namespace"] == ns && p["metadata"]["name"] == pod)
}

fn exec_route(
    shared: &Shared,
    req: Request<Incoming>,
    ns: &str,
    pod: &str,
    container: &str,
) -> Response<Body> {
    let opts = stream::parse_exec_query(req.uri().query().unwrap_or(""));
    let Some(p) = find_pod(shared, ns, pod) else {
        return not_on_node(ns, pod);
    };
    let id = crate::model::pod_status::container_statuses(&p)
        .find(|c| c["name"] == container && c["state"]["running"].is_object())
        .and_then(|c| c["containerID"].as_str())
        .and_then(|c| c.strip_prefix("kernlet://"));
    let Some(id) = id else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container \"{container}\" in pod \"{pod}\" is not running\n"),
        );
    };
    let dir = shared.cfg.state_dir.join("containers").join(id);
    upgrade::exec(req, shared.cfg.exe.clone(), dir, opts)
}

/// The answer for a pod this node does not have.
fn not_on_node(ns: &str, pod: &str) -> Response<Body> {
    text(
        StatusCode::NOT_FOUND,
        format!("pod \"{pod}\" in namespace \"{ns}\" is not on this node\n"),
    )
}

/// `/attach/…`: the running container's output as it comes, and its stdin and
/// terminal when it has them.
fn attach_route(
    shared: &Shared,
    req: Request<Incoming>,
    ns: &str,
    pod: &str,
    container: &str,
) -> Response<Body> {
    use crate::runtime::container::{ContainerState, records_in, state_in};
    let opts = stream::parse_exec_query(req.uri().query().unwrap_or(""));
    let Some(p) = find_pod(shared, ns, pod) else {
        return not_on_node(ns, pod);
    };
    let uid = p["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let state_dir = &shared.cfg.state_dir;
    let run = records_in(state_dir)
        .into_iter()
        .rfind(|r| r.pod_uid == uid && r.name == container)
        .filter(|r| {
            matches!(
                state_in(&state_dir.join("containers").join(&r.id)),
                ContainerState::Running { .. }
            )
        });
    let Some(run) = run else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container \"{container}\" in pod \"{pod}\" is not running\n"),
        );
    };
    upgrade::attach(req, state_dir, &run, opts)
}

fn port_forward_route(
    shared: &Shared,
    req: Request<Incoming>,
    ns: &str,
    pod: &str,
) -> Response<Body> {
    let Some(p) = find_pod(shared, ns, pod) else {
        return not_on_node(ns, pod);
    };
    let uid = p["metadata"]["uid"].as_str().unwrap_or("");
    let netns = (p["spec"]["hostNetwork"] != true)
        .then(|| shared.cfg.run_dir.join("pods").join(uid).join("ns/net"));
    upgrade::port_forward(req, netns, format!("{pod}, uid {uid}"), None)
}

/// kubelet's `/runningpods/`: the pods with a running container, with only what the
/// runtime knows (name, namespace, uid; containers with name, image and ID).
fn running_pods(shared: &Shared) -> Value {
    use crate::runtime::container::{ContainerState, records_in, state_in};
    let state_dir = &shared.cfg.state_dir;
    let records = records_in(state_dir);
    let items: Vec<Value> = crate::podworker::recorded_pods(state_dir)
        .into_iter()
        .filter_map(|p| {
            let uid = p["metadata"]["uid"].as_str()?.to_string();
            let containers: Vec<Value> = records
                .iter()
                .filter(|r| r.pod_uid == uid)
                .filter(|r| {
                    matches!(
                        state_in(&state_dir.join("containers").join(&r.id)),
                        ContainerState::Running { .. }
                    )
                })
                .map(|r| json!({"name": r.name, "image": r.image_ref, "resources": {}}))
                .collect();
            (!containers.is_empty()).then(|| {
                json!({
                    "metadata": {"name": p["metadata"]["name"], "namespace": p["metadata"]["namespace"], "uid": uid, "creationTimestamp": null},
                    "spec": {"containers": containers},
                    "status": {},
                })
            })
        })
        .collect();
    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
}

/// kubelet's `kubelet_volume_stats_*` gauges, one series per claimed volume a plugin
/// measures, labelled by its claim (part of `/metrics`).
pub fn volume_metrics(state_dir: &std::path::Path) -> String {
    const SERIES: [(&str, &str, &str); 6] = [
        (
            "capacity_bytes",
            "capacityBytes",
            "Capacity in bytes of the volume",
        ),
        (
            "available_bytes",
            "availableBytes",
            "Number of available bytes in the volume",
        ),
        (
            "used_bytes",
            "usedBytes",
            "Number of used bytes in the volume",
        ),
        ("inodes", "inodes", "Maximum number of inodes in the volume"),
        (
            "inodes_free",
            "inodesFree",
            "Number of free inodes in the volume",
        ),
        (
            "inodes_used",
            "inodesUsed",
            "Number of used inodes in the volume",
        ),
    ];
    let volumes: Vec<(crate::model::claims::Mountable, serde_json::Value)> =
        crate::podworker::recorded_pods(state_dir)
            .iter()
            .filter_map(|p| p["metadata"]["uid"].as_str().map(str::to_string))
            .flat_map(|uid| stats::claim_stats(state_dir, &uid))
            .collect();
    let mut out = String::new();
    for (key, field, help) in SERIES {
        out.push_str(&format!(
            "# HELP kubelet_volume_stats_{key} [ALPHA] {help}\n# TYPE kubelet_volume_stats_{key} gauge\n"
        ));
        for (m, v) in volumes.iter().filter(|(m, _)| !m.claim.is_empty()) {
            out.push_str(&format!(
                "kubelet_volume_stats_{key}{{namespace=\"{}\",persistentvolumeclaim=\"{}\"}} {}\n",
                crate::model::prom_text::escape(&m.namespace),
                crate::model::prom_text::escape(&m.claim),
                v[field].as_u64().unwrap_or(0)
            ));
        }
    }
    out
}

fn metrics(shared: &Shared) -> String {
    use crate::runtime::container::{ContainerState, records_in, state_in};
    let state_dir = &shared.cfg.state_dir;
    let pods = crate::podworker::recorded_pods(state_dir).len();
    // Each container record by its state, as kubelet's container_state label names it.
    let mut states: std::collections::BTreeMap<&str, usize> =
        ["created", "exited", "running", "unknown"]
            .into_iter()
            .map(|s| (s, 0))
            .collect();
    for r in records_in(state_dir) {
        let state = match state_in(&state_dir.join("containers").join(&r.id)) {
            ContainerState::Created => "created",
            ContainerState::Running { .. } => "running",
            ContainerState::Exited { .. } => "exited",
            ContainerState::Failed(_) => "unknown",
        };
        *states.entry(state).or_insert(0) += 1;
    }
    let running = states["running"];
    let mut out = String::new();
    // kubelet's own series where kernlet does the same work.
    out.push_str("# HELP kubelet_node_name [ALPHA] The node's name. The count is always 1.\n# TYPE kubelet_node_name gauge\n");
    out.push_str(&format!(
        "kubelet_node_name{{node=\"{}\"}} 1\n",
        shared.cfg.stats.node
    ));
    out.push_str("# HELP kubelet_running_pods [ALPHA] Number of pods that have a running pod sandbox\n# TYPE kubelet_running_pods gauge\n");
    out.push_str(&format!("kubelet_running_pods {pods}\n"));
    out.push_str("# HELP kubelet_running_containers [ALPHA] Number of containers currently running\n# TYPE kubelet_running_containers gauge\n");
    for (state, n) in &states {
        out.push_str(&format!(
            "kubelet_running_containers{{container_state=\"{state}\"}} {n}\n"
        ));
    }
    out.push_str(&volume_metrics(state_dir));
    out.push_str(
        "# HELP kernlet_pods Pods with a sandbox on this node.\n# TYPE kernlet_pods gauge\n",
    );
    out.push_str(&format!("kernlet_pods {pods}\n"));
    out.push_str("# HELP kernlet_running_containers Containers running on this node.\n# TYPE kernlet_running_containers gauge\n");
    out.push_str(&format!("kernlet_running_containers {running}\n"));
    out.push_str("# HELP kernlet_api_requests_total Requests to the kubelet API by response code.\n# TYPE kernlet_api_requests_total counter\n");
    if let Ok(m) = shared.metrics.by_code.lock() {
        for (code, n) in m.iter() {
            out.push_str(&format!(
                "kernlet_api_requests_total{{code=\"{code}\"}} {n}\n"
            ));
        }
    }
    out.push_str("# HELP kernlet_api_handshakes_refused_total TLS handshakes refused (a certificate of another CA, or no handshake).\n# TYPE kernlet_api_handshakes_refused_total counter\n");
    out.push_str(&format!(
        "kernlet_api_handshakes_refused_total {}\n",
        shared.metrics.refused.load(Ordering::Relaxed)
    ));
    // The pod manager's (pod start, PLEG relist), kept with prometheus-client.
    out.push_str(&crate::podworker::metrics::pod_manager().text());
    out
}

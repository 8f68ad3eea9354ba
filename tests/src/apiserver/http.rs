//! The HTTPS front: TLS with optional client certificates, authentication, routing of
//! the Kubernetes REST paths, and the verbs (get, list, watch, create, update, patch,
//! delete) over the store.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::authz::{self, Attributes, Decision, Identity};
use super::defaults::{self, ServiceAllocator};
use super::errors::ApiError;
use super::pki::Ca;
use super::resources::{self, ResourceType};
use super::selectors::{FieldSelector, LabelSelector};
use super::store::{Change, EventKind, Store, name_of, now_rfc3339, rv_of, strings};
use super::tables;
use super::tokens::{self, TokenSigner};

pub type Body = BoxBody<Bytes, Infallible>;

/// Shared state of one in-memory apiserver.
pub struct Server {
    pub store: Arc<Store>,
    pub ca: Ca,
    pub signer: TokenSigner,
    /// `true`: Node,RBAC authorization (as the fixtures' cluster); `false`: allow all.
    pub enforce_authz: AtomicBool,
    /// Static bearer tokens (`--token-auth-file`), token → identity.
    pub static_tokens: std::sync::Mutex<HashMap<String, Identity>>,
    /// How often watches with `allowWatchBookmarks` get a progress BOOKMARK (ms).
    pub bookmark_interval_ms: AtomicU64,
    /// When not 0, the longest any watch lasts (seconds), whatever it asked for.
    pub watch_seconds_cap: AtomicU64,
    /// Requests whose path starts with this wait this long before they are answered
    /// (tests of a slow apiserver).
    pub stall: std::sync::Mutex<Option<(String, std::time::Duration)>>,
    /// Where kubelets are reached from (see `InMemoryApiServer::set_node_network`).
    pub node_network: std::sync::Mutex<Option<std::path::PathBuf>>,
    /// The TLS client the apiserver uses towards kubelets (its
    /// `--kubelet-client-certificate`: `kube-apiserver-kubelet-client`, system:masters).
    pub kubelet_client: std::sync::OnceLock<Arc<rustls::ClientConfig>>,
    /// Whether the CSR approver auto-approves node client certificates (kubeadm's
    /// default); tests turn it off to see a CSR wait or get denied.
    pub csr_auto_approve: AtomicBool,
    /// Requests answered so far by (method, path) (the kit's `apiserver_request_total`).
    pub requests: std::sync::Mutex<HashMap<(String, String), u64>>,
    /// Lifetime of certificates the signer issues when a CSR names none (seconds; the
    /// controller-manager's `--cluster-signing-duration`, one year by default).
    pub signing_seconds: std::sync::atomic::AtomicI64,
    /// When set, service account tokens live at most this long, whatever was asked
    /// (so tests can see them rotated).
    pub token_seconds: std::sync::atomic::AtomicI64,
    /// Every request by a node identity that the authorizer or NodeRestriction refused,
    /// whether or not enforcement is on: a node agent must never make one.
    pub node_refusals: std::sync::Mutex<Vec<String>>,
    /// The last `/metrics/resource` scrape of each node (metrics.k8s.io).
    pub metrics_scrapes: std::sync::Mutex<HashMap<String, super::metrics::Scrape>>,
}

fn json_response(code: u16, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.status())
}

/// A parsed resource path.
struct Target {
    rt: &'static ResourceType,
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_target(path: &str) -> Option<Result<Target, ApiError>> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => ("", "v1", rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return None,
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, plural, more @ ..]
            if resources::find(group, version, plural).is_some_and(|r| r.namespaced) =>
        {
            (
                *ns,
                std::iter::once(*plural)
                    .chain(more.iter().copied())
                    .collect::<Vec<_>>(),
            )
        }
        other => ("", other.to_vec()),
    };
    let Some(rt) = resources::find(group, version, rest[0]) else {
        return Some(Err(ApiError::path_not_found()));
    };
    if rest.len() > 3 || rest.get(2).is_some_and(|s| !rt.subresources.contains(s)) {
        return Some(Err(ApiError::path_not_found()));
    }
    Some(Ok(Target {
        rt,
        namespace: ns.to_string(),
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    }))
}

/// `(namespace, pod, subresource)` of a path to a pod subresource served by kubelets.
fn kubelet_subresource(path: &str) -> Option<(String, String, &'static str)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", pod, sub] => {
            let sub = ["exec", "attach", "portforward", "log"]
                .into_iter()
                .find(|s| s == sub)?;
            Some((ns.to_string(), pod.to_string(), sub))
        }
        _ => None,
    }
}

fn query_map(query: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// The verified client certificate of a connection: who it names and when it is valid
/// (seconds since the epoch).
#[derive(Clone, Debug)]
pub struct ClientCert {
    pub identity: Identity,
    pub not_before: i64,
    pub not_after: i64,
}

impl ClientCert {
    /// Whether the certificate is valid at `now` (seconds since the epoch).
    pub fn valid_at(&self, now: i64) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Server {
    /// Authenticates a request: client certificate (valid now, checked on every
    /// request as the real x509 authenticator does), then bearer token, else anonymous.
    fn authenticate(
        &self,
        cert: Option<&ClientCert>,
        auth_header: Option<&str>,
    ) -> Result<Identity, ApiError> {
        match cert {
            Some(c) if c.valid_at(now_secs()) => return Ok(c.identity.clone()),
            // An expired certificate authenticates no one; a token still may.
            Some(_) if auth_header.is_none() => return Err(ApiError::unauthorized()),
            _ => {}
        }
        let Some(token) = auth_header
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
        else {
            return Ok(Identity::anonymous());
        };
        self.identity_for_token(token)
            .ok_or_else(ApiError::unauthorized)
    }

    fn identity_for_token(&self, token: &str) -> Option<Identity> {
        if let Some(id) = self
            .static_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
        {
            return Some(id.clone());
        }
        if let Some((id, secret)) = tokens::parse_bootstrap_token(token) {
            let rt = resources::find("", "v1", "secrets")?;
            let s = self
                .store
                .get(rt, "kube-system", &format!("bootstrap-token-{id}"))?;
            let data = |k: &str| {
                use base64::Engine as _;
                s.pointer(&format!("/data/{k}"))
                    .and_then(Value::as_str)
                    .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .or_else(|| {
                        s.pointer(&format!("/stringData/{k}"))
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    })
            };
            if data("token-secret").as_deref() != Some(secret)
                || data("usage-bootstrap-authentication").as_deref() != Some("true")
            {
                return None;
            }
            if let Some(exp) = data("expiration").and_then(|e| e.parse::<jiff::Timestamp>().ok())
                && exp < jiff::Timestamp::now()
            {
                return None;
            }
            let mut groups = vec!["system:bootstrappers".to_string()];
            groups.extend(
                data("auth-extra-groups")
                    .unwrap_or_default()
                    .split(',')
                    .filter(|g| !g.is_empty())
                    .map(str::to_string),
            );
            let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
            return Some(Identity::new(&format!("system:bootstrap:{id}"), &groups));
        }
        let claims = self.signer.verify(token)?;
        let sub = claims.get("sub").and_then(Value::as_str)?;
        let ns = claims
            .pointer("/kubernetes.io/namespace")
            .and_then(Value::as_str)?;
        Some(Identity::new(
            sub,
            &[
                "system:serviceaccounts",
                &format!("system:serviceaccounts:{ns}"),
            ],
        ))
    }

    fn authorize(&self, id: &Identity, a: &Attributes<'_>) -> Result<(), ApiError> {
        let enforce = self.enforce_authz.load(Ordering::Relaxed);
        if !enforce && id.node_name().is_none() {
            return Ok(());
        }
        match authz::authorize(&self.store, id, a) {
            Decision::Allow => Ok(()),
            Decision::Deny(reason) => {
                let message = authz::forbidden_message(id, a, reason.as_deref());
                self.record_node_refusal(id, &message);
                if enforce {
                    Err(ApiError::forbidden(a.rt, a.name, message))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// NodeRestriction admission, with refusals of node identities recorded.
    fn admit_node(
        &self,
        id: &Identity,
        rt: &ResourceType,
        sub: Option<&str>,
        name: &str,
        old: Option<&Value>,
        new: Option<&Value>,
    ) -> Result<(), ApiError> {
        defaults::node_restriction(id, rt, sub, name, old, new).inspect_err(|e| {
            self.record_node_refusal(id, &e.message);
        })
    }

    fn record_node_refusal(&self, id: &Identity, message: &str) {
        if id.node_name().is_some()
            && let Ok(mut list) = self.node_refusals.lock()
        {
            list.push(message.to_string());
        }
    }

    /// Handles one HTTP request from a connection with client certificate `cert`, if
    /// any.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        cert: Option<ClientCert>,
    ) -> Result<Response<Body>, Infallible> {
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let id = match self.authenticate(cert.as_ref(), auth.as_deref()) {
            Ok(id) => id,
            Err(e) => return Ok(error_response(&e)),
        };
        // exec, attach, portforward and log go through to the pod's kubelet.
        if let Some((ns, pod, sub)) = kubelet_subresource(req.uri().path()) {
            return Ok(self
                .proxy_to_kubelet(req, &id, &ns, &pod, sub)
                .await
                .unwrap_or_else(|e| error_response(&e)));
        }
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        if let Ok(mut counts) = self.requests.lock() {
            *counts
                .entry((method.to_string(), path.clone()))
                .or_default() += 1;
        }
        let stall = self
            .stall
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .filter(|(prefix, _)| path.starts_with(prefix.as_str()));
        if let Some((_, d)) = stall {
            tokio::time::sleep(d).await;
        }
        let query = query_map(req.uri().query());
        let accept = req
            .headers()
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_string();
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return Ok(error_response(&ApiError::bad_request(
                    "could not read the request body".into(),
                )));
            }
        };
        if let Some(resp) = self.non_resource(&method, &path, &id) {
            return Ok(resp);
        }
        if let Some(answer) = self.metrics_api(&method, &path, &id).await {
            return Ok(answer.unwrap_or_else(|e| error_response(&e)));
        }
        let target = match parse_target(&path) {
            Some(Ok(t)) => t,
            Some(Err(e)) => return Ok(error_response(&e)),
            None => return Ok(error_response(&ApiError::path_not_found())),
        };
        let result = self
            .resource(&method, target, &query, &accept, &content_type, &body, &id)
            .await;
        Ok(result.unwrap_or_else(|e| error_response(&e)))
    }

    /// The apiserver's proxy to the kubelet of the pod's node for exec, attach,
    /// portforward (an upgraded connection, passed through byte for byte, SPDY or
    /// WebSocket alike) and log (the body streamed), on `/exec/…`, `/attach/…`,
    /// `/portForward/…` and `/containerLogs/…` of the node's kubelet endpoint.
    async fn proxy_to_kubelet(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        id: &Identity,
        ns: &str,
        pod_name: &str,
        sub: &'static str,
    ) -> Result<Response<Body>, ApiError> {
        let pods = resources::find("", "v1", "pods").ok_or_else(ApiError::path_not_found)?;
        let verb = if req.method() == Method::GET && sub == "log" {
            "get"
        } else {
            "create"
        };
        self.authorize(
            id,
            &Attributes {
                verb,
                rt: pods,
                subresource: Some(sub),
                namespace: ns,
                name: Some(pod_name),
                field_selector: None,
            },
        )?;
        let pod = self
            .store
            .get(pods, ns, pod_name)
            .ok_or_else(|| ApiError::not_found(pods, pod_name))?;
        let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("").to_string();
        if node_name.is_empty() {
            return Err(ApiError::bad_request(format!(
                "pod {pod_name} does not have a host assigned"
            )));
        }
        let query = query_map(req.uri().query());
        let container = query
            .get("container")
            .cloned()
            .or_else(|| {
                pod["spec"]["containers"][0]["name"]
                    .as_str()
                    .map(str::to_string)
            })
            .unwrap_or_default();
        let rest: String = url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .filter(|(k, _)| k != "container")
            .fold(
                url::form_urlencoded::Serializer::new(String::new()),
                |mut q, (k, v)| {
                    q.append_pair(&k, &v);
                    q
                },
            )
            .finish();
        let path = match sub {
            "exec" => format!("/exec/{ns}/{pod_name}/{container}"),
            "attach" => format!("/attach/{ns}/{pod_name}/{container}"),
            "portforward" => format!("/portForward/{ns}/{pod_name}"),
            _ => format!("/containerLogs/{ns}/{pod_name}/{container}"),
        };
        let uri = if rest.is_empty() {
            path
        } else {
            format!("{path}?{rest}")
        };
        let dial_error = |e: String| ApiError::internal(format!("error dialing backend: {e}"));
        let (mut send, ip, port) = self.dial_kubelet(&node_name).await?;
        let mut out = Request::builder()
            .method(req.method().clone())
            .uri(uri)
            .header("host", format!("{ip}:{port}"));
        for (k, v) in req.headers() {
            let name = k.as_str();
            if matches!(name, "upgrade" | "connection" | "x-stream-protocol-version")
                || name.starts_with("sec-websocket-")
            {
                out = out.header(k, v);
            }
        }
        let out = out
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| dial_error(e.to_string()))?;
        let client_upgrade = hyper::upgrade::on(&mut req);
        let mut answer = send
            .send_request(out)
            .await
            .map_err(|e| dial_error(e.to_string()))?;
        if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
            // Not upgraded (logs, or the kubelet's refusal): the answer as it comes.
            let (parts, mut body) = answer.into_parts();
            let (tx, rx) = mpsc::channel::<Bytes>(16);
            tokio::spawn(async move {
                // A body error ends the stream, as a cut connection would.
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data()
                        && tx.send(data).await.is_err()
                    {
                        return;
                    }
                }
            });
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
            });
            return Ok(Response::from_parts(
                parts,
                BodyExt::boxed(StreamBody::new(stream)),
            ));
        }
        let kubelet_upgrade = hyper::upgrade::on(&mut answer);
        let mut resp = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        for (k, v) in answer.headers() {
            resp = resp.header(k, v);
        }
        tokio::spawn(async move {
            let (Ok(client), Ok(kubelet)) = (client_upgrade.await, kubelet_upgrade.await) else {
                return;
            };
            let mut client = hyper_util::rt::TokioIo::new(client);
            let mut kubelet = hyper_util::rt::TokioIo::new(kubelet);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut kubelet).await;
        });
        resp.body(http_body_util::Empty::new().boxed())
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    /// A connection to `node_name`'s kubelet endpoint (its InternalIP and
    /// `daemonEndpoints.kubeletEndpoint.Port`) over TLS with the apiserver's kubelet
    /// client certificate, ready for one request (upgrades allowed).
    async fn dial_kubelet(
        &self,
        node_name: &str,
    ) -> Result<
        (
            hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>,
            std::net::IpAddr,
            u16,
        ),
        ApiError,
    > {
        let nodes = resources::find("", "v1", "nodes").ok_or_else(ApiError::path_not_found)?;
        let node = self
            .store
            .get(nodes, "", node_name)
            .ok_or_else(|| ApiError::not_found(nodes, node_name))?;
        let ip: std::net::IpAddr = node["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == "InternalIP")
            .and_then(|a| a["address"].as_str()?.parse().ok())
            .ok_or_else(|| {
                ApiError::internal(format!("node {node_name} has no InternalIP address"))
            })?;
        let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(10250);
        let dial_error = |e: String| ApiError::internal(format!("error dialing backend: {e}"));
        let netns = self.node_network.lock().ok().and_then(|n| n.clone());
        let addr = std::net::SocketAddr::new(ip, port);
        let tcp = tokio::task::spawn_blocking(move || {
            kernlet::sys::ns::connect_in(netns.as_deref(), addr, Duration::from_secs(5))
        })
        .await
        .map_err(|e| dial_error(e.to_string()))?
        .map_err(|e| dial_error(e.to_string()))?;
        tcp.set_nonblocking(true)
            .map_err(|e| dial_error(e.to_string()))?;
        let tcp = tokio::net::TcpStream::from_std(tcp).map_err(|e| dial_error(e.to_string()))?;
        let tls = self.kubelet_tls().map_err(dial_error)?;
        let server_name = rustls::pki_types::ServerName::IpAddress(ip.into());
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await
            .map_err(|e| dial_error(e.to_string()))?;
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| dial_error(e.to_string()))?;
        tokio::spawn(conn.with_upgrades());
        Ok((send, ip, port))
    }

    /// `metrics.k8s.io/v1beta1` objects (see [`super::metrics`]); `None` for other
    /// paths.
    async fn metrics_api(
        self: &Arc<Self>,
        method: &Method,
        path: &str,
        id: &Identity,
    ) -> Option<Result<Response<Body>, ApiError>> {
        let rest = path.strip_prefix("/apis/metrics.k8s.io/v1beta1/")?;
        let segs: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        let (plural, ns, name) = match segs.as_slice() {
            ["nodes"] => ("nodes", None, None),
            ["nodes", n] => ("nodes", None, Some(*n)),
            ["pods"] => ("pods", None, None),
            ["namespaces", ns, "pods"] => ("pods", Some(*ns), None),
            ["namespaces", ns, "pods", n] => ("pods", Some(*ns), Some(*n)),
            _ => return Some(Err(ApiError::path_not_found())),
        };
        if method != Method::GET {
            return Some(Err(ApiError::method_not_allowed(format!(
                "{plural}.metrics.k8s.io only answers GET"
            ))));
        }
        Some(self.metrics_objects(plural, ns, name, id).await)
    }

    async fn metrics_objects(
        self: &Arc<Self>,
        plural: &str,
        ns: Option<&str>,
        name: Option<&str>,
        id: &Identity,
    ) -> Result<Response<Body>, ApiError> {
        let rt = resources::find("metrics.k8s.io", "v1beta1", plural)
            .ok_or_else(ApiError::path_not_found)?;
        self.authorize(
            id,
            &Attributes {
                verb: if name.is_some() { "get" } else { "list" },
                rt,
                subresource: None,
                namespace: ns.unwrap_or(""),
                name,
                field_selector: None,
            },
        )?;
        let core = |p: &str| resources::find("", "v1", p).ok_or_else(ApiError::path_not_found);
        // The objects asked about, and the nodes to scrape for them.
        let objects: Vec<Value> = if plural == "nodes" {
            let nodes = core("nodes")?;
            match name {
                Some(n) => self.store.get(nodes, "", n).into_iter().collect(),
                None => self.store.list(nodes, None).0,
            }
        } else {
            let pods = core("pods")?;
            match name {
                Some(n) => self
                    .store
                    .get(pods, ns.unwrap_or(""), n)
                    .into_iter()
                    .collect(),
                None => self.store.list(pods, ns).0,
            }
            .into_iter()
            .filter(|p| {
                p["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty())
            })
            .collect()
        };
        let mut scraped: HashMap<String, Option<(super::metrics::Scrape, super::metrics::Scrape)>> =
            HashMap::new();
        let mut items = Vec::new();
        for o in &objects {
            let node = if plural == "nodes" {
                o["metadata"]["name"].as_str()
            } else {
                o["spec"]["nodeName"].as_str()
            }
            .unwrap_or("")
            .to_string();
            if !scraped.contains_key(&node) {
                let pair = self.scrape_pair(&node).await.ok();
                scraped.insert(node.clone(), pair);
            }
            let Some(Some((older, newer))) = scraped.get(&node) else {
                continue;
            };
            let elapsed = match (older.taken, newer.taken) {
                (Some(a), Some(b)) => b.duration_since(a),
                _ => super::metrics::GAP,
            };
            let window = format!("{}s", elapsed.as_secs().max(1));
            let meta = |o: &Value| {
                let mut m =
                    json!({"name": o["metadata"]["name"], "creationTimestamp": now_rfc3339()});
                if plural == "pods" {
                    m["namespace"] = o["metadata"]["namespace"].clone();
                }
                if o["metadata"]["labels"].is_object() {
                    m["labels"] = o["metadata"]["labels"].clone();
                }
                m
            };
            if plural == "nodes" {
                let (Some(cpu), Some(mem)) = (
                    super::metrics::cpu_nanocores(&older.node, &newer.node, elapsed),
                    newer.node.memory_bytes,
                ) else {
                    continue;
                };
                items.push(
                    json!({"metadata": meta(o), "timestamp": now_rfc3339(), "window": window,
                    "usage": super::metrics::usage_json(cpu, mem)}),
                );
                continue;
            }
            let pod_ns = o["metadata"]["namespace"].as_str().unwrap_or("");
            let pod_name = o["metadata"]["name"].as_str().unwrap_or("");
            let containers: Vec<Value> = newer
                .containers
                .iter()
                .filter(|((n, p, _), _)| n == pod_ns && p == pod_name)
                .filter_map(|(key, now)| {
                    let cpu = super::metrics::cpu_nanocores(older.containers.get(key)?, now, elapsed)?;
                    Some(json!({"name": key.2, "usage": super::metrics::usage_json(cpu, now.memory_bytes?)}))
                })
                .collect();
            // metrics-server leaves out pods it has no container metrics for.
            if !containers.is_empty() {
                items.push(
                    json!({"metadata": meta(o), "timestamp": now_rfc3339(), "window": window,
                    "containers": containers}),
                );
            }
        }
        let kind = if plural == "nodes" {
            "NodeMetrics"
        } else {
            "PodMetrics"
        };
        match name {
            Some(n) => match items.into_iter().next() {
                Some(mut item) => {
                    item["kind"] = json!(kind);
                    item["apiVersion"] = json!("metrics.k8s.io/v1beta1");
                    Ok(json_response(200, &item))
                }
                None => Err(ApiError::not_found(rt, n)),
            },
            None => Ok(json_response(
                200,
                &json!({"kind": format!("{kind}List"), "apiVersion": "metrics.k8s.io/v1beta1",
                    "metadata": {}, "items": items}),
            )),
        }
    }

    /// Two scrapes of `node`'s `/metrics/resource` to take a rate between: the last one
    /// when it is recent enough, else one taken now and a second later.
    async fn scrape_pair(
        self: &Arc<Self>,
        node: &str,
    ) -> Result<(super::metrics::Scrape, super::metrics::Scrape), ApiError> {
        let previous = self
            .metrics_scrapes
            .lock()
            .ok()
            .and_then(|m| m.get(node).cloned())
            .filter(|s| {
                s.taken.is_some_and(|t| {
                    t.elapsed() >= Duration::from_millis(500) && t.elapsed() < super::metrics::REUSE
                })
            });
        let older = match previous {
            Some(p) => p,
            None => {
                let s = self.scrape(node).await?;
                tokio::time::sleep(super::metrics::GAP).await;
                s
            }
        };
        let newer = self.scrape(node).await?;
        if let Ok(mut m) = self.metrics_scrapes.lock() {
            m.insert(node.to_string(), newer.clone());
        }
        Ok((older, newer))
    }

    /// One scrape of `node`'s kubelet `/metrics/resource`.
    async fn scrape(self: &Arc<Self>, node: &str) -> Result<super::metrics::Scrape, ApiError> {
        let (mut send, ip, port) = self.dial_kubelet(node).await?;
        let req = Request::builder()
            .uri("/metrics/resource")
            .header("host", format!("{ip}:{port}"))
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let answer = send
            .send_request(req)
            .await
            .map_err(|e| ApiError::internal(format!("scraping {node}: {e}")))?;
        if answer.status() != StatusCode::OK {
            return Err(ApiError::internal(format!(
                "scraping {node}: the kubelet answered {}",
                answer.status()
            )));
        }
        let body = answer
            .into_body()
            .collect()
            .await
            .map_err(|e| ApiError::internal(format!("scraping {node}: {e}")))?
            .to_bytes();
        let mut s = super::metrics::parse(&String::from_utf8_lossy(&body));
        s.taken = Some(std::time::Instant::now());
        Ok(s)
    }

    fn kubelet_tls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        if let Some(c) = self.kubelet_client.get() {
            return Ok(Arc::clone(c));
        }
        let pair = self
            .ca
            .client("kube-apiserver-kubelet-client", &["system:masters"])
            .map_err(|e| e.to_string())?;
        let certs: Vec<rustls::pki_types::CertificateDer<'static>> =
            rustls::pki_types::pem::PemObject::pem_slice_iter(pair.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
        let key = <rustls::pki_types::PrivateKeyDer<'static> as rustls::pki_types::pem::PemObject>::from_pem_slice(
            pair.key_pem.as_bytes(),
        )
        .map_err(|e| e.to_string())?;
        let config = rustls::ClientConfig::builder()
            .dangerous()
            // As an apiserver without --kubelet-certificate-authority: any certificate.
            .with_custom_certificate_verifier(Arc::new(kernlet::runtime::probe::NoVerify::new()))
            .with_client_auth_cert(certs, key)
            .map_err(|e| e.to_string())?;
        let config = Arc::new(config);
        let _ = self.kubelet_client.set(Arc::clone(&config));
        Ok(config)
    }

    fn non_resource(&self, method: &Method, path: &str, id: &Identity) -> Option<Response<Body>> {
        if method != Method::GET {
            return None;
        }
        let anonymous_ok = matches!(path, "/version" | "/healthz" | "/livez" | "/readyz");
        let body = match path.trim_end_matches('/') {
            "/version" => {
                json!({"major": "1", "minor": "36", "emulationMajor": "1", "emulationMinor": "36", "minCompatibilityMajor": "1", "minCompatibilityMinor": "35", "gitVersion": "v1.36.2-kernlet-testkit", "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean", "buildDate": "2026-11-01T00:00:00Z", "goVersion": "go1.25.0", "compiler": "gc", "platform": "linux/amd64"})
            }
            "/healthz" | "/livez" | "/readyz" => {
                let mut r = Response::new(Full::new(Bytes::from_static(b"ok")).boxed());
                r.headers_mut().insert(
                    "content-type",
                    hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                return Some(r);
            }
            "/openapi/v3" => {
                let mut paths = serde_json::Map::new();
                paths.insert(
                    "api/v1".into(),
                    json!({"serverRelativeURL": "/openapi/v3/api/v1?hash=kernlet"}),
                );
                for (g, v) in resources::groups() {
                    paths.insert(format!("apis/{g}/{v}"), json!({"serverRelativeURL": format!("/openapi/v3/apis/{g}/{v}?hash=kernlet")}));
                }
                json!({"paths": paths})
            }
            p if p.starts_with("/openapi/v3/") => {
                let gv = p.trim_start_matches("/openapi/v3/");
                let (g, v) = match gv.split('/').collect::<Vec<_>>().as_slice() {
                    ["api", "v1"] => ("", "v1"),
                    ["apis", g, v] => (*g, *v),
                    _ => return None,
                };
                openapi_v3(g, v)?
            }
            "/api" => {
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]})
            }
            "/apis" => {
                let mut groups: Vec<Value> = Vec::new();
                for (g, v) in resources::groups() {
                    let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
                    groups
                        .push(json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv}));
                }
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
            }
            p => {
                let segs: Vec<&str> = p.trim_matches('/').split('/').collect();
                let (g, v) = match segs.as_slice() {
                    ["api", "v1"] => ("", "v1"),
                    ["apis", g, v] => (*g, *v),
                    ["apis", g] => {
                        let (group, version) =
                            resources::groups().into_iter().find(|(x, _)| x == g)?;
                        let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
                        return Some(json_response(
                            200,
                            &json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": [gv.clone()], "preferredVersion": gv}),
                        ));
                    }
                    _ => return None,
                };
                let list: Vec<Value> = resources::RESOURCES.iter().filter(|r| r.group == g && r.version == v).flat_map(|r| {
                    let verbs = if r.create_only { json!(["create"]) } else { json!(["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]) };
                    let mut out = vec![json!({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind, "verbs": verbs, "shortNames": r.short_names})];
                    for s in r.subresources {
                        let (kind, verbs) = match *s {
                            "binding" => ("Binding", json!(["create"])),
                            "token" => ("TokenRequest", json!(["create"])),
                            "scale" => ("Scale", json!(["get", "patch", "update"])),
                            _ => (r.kind, json!(["get", "patch", "update"])),
                        };
                        out.push(json!({"name": format!("{}/{s}", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": kind, "verbs": verbs}));
                    }
                    out
                }).collect();
                if list.is_empty() {
                    return None;
                }
                let gv = if g.is_empty() {
                    v.to_string()
                } else {
                    format!("{g}/{v}")
                };
                json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list})
            }
        };
        if !anonymous_ok
            && id.user == "system:anonymous"
            && self.enforce_authz.load(Ordering::Relaxed)
        {
            // system:discovery is bound to authenticated users only.
            return Some(json_response(
                403,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": format!("forbidden: User \"system:anonymous\" cannot get path \"{path}\""), "reason": "Forbidden", "details": {}, "code": 403}),
            ));
        }
        Some(json_response(200, &body))
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one request's parts, passed once"
    )]
    async fn resource(
        self: &Arc<Self>,
        method: &Method,
        t: Target,
        query: &HashMap<String, String>,
        accept: &str,
        content_type: &str,
        body: &Bytes,
        id: &Identity,
    ) -> Result<Response<Body>, ApiError> {
        let rt = t.rt;
        let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
        let verb = match (method, t.name.is_some()) {
            (&Method::GET, true) => "get",
            (&Method::GET, false) if watch => "watch",
            (&Method::GET, false) => "list",
            (&Method::POST, _) => "create",
            (&Method::PUT, true) => "update",
            (&Method::PATCH, true) => "patch",
            (&Method::DELETE, true) => "delete",
            (&Method::DELETE, false) => "deletecollection",
            _ => {
                return Err(ApiError::method_not_allowed(
                    "the server does not allow this method on the requested resource".to_string(),
                ));
            }
        };
        let field_selector = match query.get("fieldSelector") {
            Some(f) if !f.is_empty() => Some(FieldSelector::parse(rt.plural, f)?),
            _ => None,
        };
        let label_selector =
            LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))?;
        // The Node authorizer reads a list's field selector itself (spec.nodeName,
        // metadata.name); the name attribute is the path's only.
        let attrs = Attributes {
            verb,
            rt,
            subresource: t.subresource.as_deref(),
            namespace: &t.namespace,
            name: t.name.as_deref(),
            field_selector: field_selector.as_ref(),
        };
        self.authorize(id, &attrs)?;
        let ns = t.namespace.as_str();
        if rt.namespaced && ns.is_empty() && !matches!(verb, "list" | "watch") {
            return Err(ApiError::path_not_found());
        }
        match verb {
            "get" => {
                let name = t.name.as_deref().unwrap_or_default();
                let obj = self
                    .store
                    .get(rt, ns, name)
                    .ok_or_else(|| ApiError::not_found(rt, name))?;
                if tables::wants_table(accept) {
                    return Ok(json_response(200, &tables::table(rt, &[obj], None)));
                }
                Ok(json_response(200, &obj))
            }
            "list" => {
                let (items, rv) = self.store.list(rt, (!ns.is_empty()).then_some(ns));
                let items: Vec<Value> = items
                    .into_iter()
                    .filter(|o| {
                        label_selector.matches(o)
                            && field_selector.as_ref().is_none_or(|f| f.matches(o))
                    })
                    .collect();
                if tables::wants_table(accept) {
                    return Ok(json_response(200, &tables::table(rt, &items, Some(rv))));
                }
                Ok(json_response(
                    200,
                    &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
                ))
            }
            "watch" => Ok(self.watch(rt, ns, query, label_selector, field_selector)),
            "create" => {
                let obj = parse_body(body, content_type)?;
                let (code, out) =
                    self.create(rt, ns, t.name.as_deref(), t.subresource.as_deref(), obj, id)?;
                Ok(json_response(code, &out))
            }
            "update" | "patch" => {
                let name = t.name.as_deref().unwrap_or_default();
                let sub = t.subresource.as_deref();
                let patch_kind = content_type
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string();
                let input = if verb == "patch" {
                    serde_json::from_slice::<Value>(body)
                        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?
                } else {
                    parse_body(body, content_type)?
                };
                let out = self.update(rt, ns, name, sub, verb, &patch_kind, input, id)?;
                Ok(json_response(200, &out))
            }
            "delete" => {
                let name = t.name.as_deref().unwrap_or_default();
                let opts: Value = if body.is_empty() {
                    json!({})
                } else {
                    serde_json::from_slice(body)
                        .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
                };
                let grace = opts
                    .get("gracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .or_else(|| query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
                let out = self.delete(rt, ns, name, grace, opts.get("preconditions"), id)?;
                Ok(json_response(200, &out))
            }
            _ => Err(ApiError::method_not_allowed(
                "deletecollection is not supported by the test apiserver".into(),
            )),
        }
    }

    fn create(
        &self,
        rt: &'static ResourceType,
        ns: &str,
        name: Option<&str>,
        sub: Option<&str>,
        mut obj: Value,
        id: &Identity,
    ) -> Result<(u16, Value), ApiError> {
        if rt.create_only {
            return Ok((201, self.review(rt, obj, id)?));
        }
        match (rt.plural, sub) {
            ("pods", Some("binding")) => {
                let pod = name.unwrap_or_default();
                let node = obj
                    .pointer("/target/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                self.bind_pod(ns, pod, &node)?;
                return Ok((
                    201,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                ));
            }
            ("serviceaccounts", Some("token")) => {
                return Ok((
                    201,
                    self.token_request(ns, name.unwrap_or_default(), obj, id)?,
                ));
            }
            (_, Some(s)) => {
                return Err(ApiError::method_not_allowed(format!(
                    "create is not supported on {}/{s}",
                    rt.plural
                )));
            }
            _ => {}
        }
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the request body is not an object".into(),
            ));
        }
        if obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created".into(),
            ));
        }
        if let Some(body_ns) = obj.pointer("/metadata/namespace").and_then(Value::as_str)
            && rt.namespaced
            && body_ns != ns
        {
            return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request".into()));
        }
        if obj.get("metadata").is_none_or(|m| !m.is_object()) {
            obj["metadata"] = json!({});
        }
        if rt.namespaced
            && self
                .store
                .get(
                    resources::find("", "v1", "namespaces").unwrap_or(&resources::RESOURCES[0]),
                    "",
                    ns,
                )
                .is_none()
        {
            return Err(ApiError::namespace_not_found(ns));
        }
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("managedFields");
            m.remove("uid");
            m.remove("creationTimestamp");
            m.remove("deletionTimestamp");
        }
        match (rt.group, rt.plural) {
            ("", "pods") => {
                validate_pod_spec(&name_of(&obj), &obj)?;
                defaults::default_pod(&mut obj)
            }
            ("", "secrets") => defaults::fold_string_data(&mut obj),
            ("", "services") => {
                let (existing, _) = self.store.list(rt, None);
                ServiceAllocator::default_and_allocate(&mut obj, &existing)?;
            }
            ("", "namespaces") => {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
                obj["status"] = json!({"phase": "Active"});
                let n = name_of(&obj);
                obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(n);
            }
            ("certificates.k8s.io", "certificatesigningrequests") => {
                // The apiserver records who asked; approvers and signers trust only this.
                obj["spec"]["username"] = json!(id.user);
                obj["spec"]["groups"] = json!(id.groups);
                obj["status"] = json!({});
            }
            _ => {}
        }
        if rt.has_status()
            && rt.plural != "pods"
            && rt.plural != "services"
            && rt.plural != "namespaces"
            && rt.plural != "certificatesigningrequests"
            && obj.get("status").is_none()
        {
            obj["status"] = json!({});
        }
        self.admit_node(id, rt, None, &name_of(&obj), None, Some(&obj))?;
        Ok((201, self.store.create(rt, ns, obj)?))
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one request's parts, passed once"
    )]
    fn update(
        &self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        sub: Option<&str>,
        verb: &str,
        patch_kind: &str,
        input: Value,
        id: &Identity,
    ) -> Result<Value, ApiError> {
        if matches!(sub, Some("binding" | "token")) {
            return Err(ApiError::method_not_allowed(format!(
                "{verb} is not supported on {}/{}",
                rt.plural,
                sub.unwrap_or_default()
            )));
        }
        // What a resize is checked against, read before the store's lock is taken.
        let node_allocatable = match sub {
            Some("resize") => self.allocatable_of_pods_node(rt, ns, name),
            _ => None,
        };
        self.store.modify(rt, ns, name, |current| {
            let mut new = match verb {
                "update" => {
                    let want = rv_of(&input);
                    if want != 0 && want != rv_of(current) {
                        return Err(ApiError::conflict(rt, name));
                    }
                    input.clone()
                }
                _ => {
                    let want = input.pointer("/metadata/resourceVersion").and_then(Value::as_str).and_then(|s| s.parse::<u64>().ok());
                    if want.is_some_and(|w| w != rv_of(current)) {
                        return Err(ApiError::conflict(rt, name));
                    }
                    if input.pointer("/metadata/uid").and_then(Value::as_str).is_some_and(|u| Some(u) != current.pointer("/metadata/uid").and_then(Value::as_str)) {
                        return Err(ApiError::precondition(rt, name, "Precondition failed: UID in precondition does not match the UID in record"));
                    }
                    match patch_kind {
                        "application/merge-patch+json" => super::patch::merge_patch(current, &input),
                        "application/strategic-merge-patch+json" => super::patch::strategic_merge_patch(current, &input)?,
                        "application/json-patch+json" => super::patch::json_patch(current, &input)?,
                        other => return Err(ApiError::unsupported_media_type(other)),
                    }
                }
            };
            if !new.is_object() {
                return Err(ApiError::bad_request("the object is not a JSON object".into()));
            }
            if (rt.group, rt.plural) == ("", "secrets") {
                defaults::fold_string_data(&mut new);
            }
            if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("managedFields");
            } else {
                new["metadata"] = current["metadata"].clone();
            }
            // Deletion state belongs to the server.
            for f in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
                match current["metadata"].get(f) {
                    Some(v) => new["metadata"][f] = v.clone(),
                    None => { if let Some(m) = new["metadata"].as_object_mut() { m.remove(f); } }
                }
            }
            match sub {
                Some("status") => {
                    // Only .status changes through the status subresource.
                    let status = new.get("status").cloned().unwrap_or(json!({}));
                    new = current.clone();
                    new["status"] = status;
                    if rt.plural == "pods" {
                        validate_pod_status(name, &new)?;
                    }
                }
                Some("approval") => {
                    let conditions = new.pointer("/status/conditions").cloned().unwrap_or(json!([]));
                    new = current.clone();
                    new["status"]["conditions"] = conditions;
                }
                Some("resize") => {
                    // Only the containers' resources and resize policies change through
                    // the resize subresource.
                    let mut resized = current.clone();
                    for list in ["initContainers", "containers"] {
                        let want = new.pointer(&format!("/spec/{list}")).and_then(Value::as_array).cloned().unwrap_or_default();
                        for c in resized["spec"][list].as_array_mut().into_iter().flatten() {
                            if let Some(n) = want.iter().find(|n| n["name"] == c["name"]) {
                                for f in ["resources", "resizePolicy"] {
                                    match n.get(f) {
                                        Some(v) => c[f] = v.clone(),
                                        None => { if let Some(m) = c.as_object_mut() { m.remove(f); } }
                                    }
                                }
                            }
                        }
                    }
                    resize_fits_node(rt, name, &resized, node_allocatable.as_ref())?;
                    new = resized;
                }
                Some("ephemeralcontainers") => {
                    let ec = new.pointer("/spec/ephemeralContainers").cloned();
                    new = current.clone();
                    if let Some(ec) = ec { new["spec"]["ephemeralContainers"] = ec; }
                }
                Some(other) => return Err(ApiError::method_not_allowed(format!("{verb} is not supported on {}/{other}", rt.plural))),
                None => {
                    if rt.has_status() {
                        match current.get("status") {
                            Some(s) => new["status"] = s.clone(),
                            None => { if let Some(m) = new.as_object_mut() { m.remove("status"); } }
                        }
                    }
                    if rt.plural == "pods" && current.get("spec") != new.get("spec") {
                        let mut allowed = current["spec"].clone();
                        // Pod specs are immutable apart from images, activeDeadlineSeconds and tolerations additions.
                        if let (Some(cs), Some(ncs)) = (allowed.get_mut("containers").and_then(Value::as_array_mut), new.pointer("/spec/containers").and_then(Value::as_array)) {
                            for (c, n) in cs.iter_mut().zip(ncs) { c["image"] = n["image"].clone(); }
                        }
                        for f in ["activeDeadlineSeconds", "tolerations"] {
                            if let Some(v) = new.pointer(&format!("/spec/{f}")) { allowed[f] = v.clone(); }
                        }
                        if allowed != new["spec"] {
                            return Err(ApiError::invalid("Pod", name, vec![("spec".into(), "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into())]));
                        }
                    }
                }
            }
            self.admit_node(id, rt, sub, name, Some(current), Some(&new))?;
            Ok(Some(new))
        })
    }

    fn delete(
        &self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        grace: Option<i64>,
        preconditions: Option<&Value>,
        id: &Identity,
    ) -> Result<Value, ApiError> {
        let current = self
            .store
            .get(rt, ns, name)
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        if let Some(p) = preconditions {
            if let Some(uid) = p.get("uid").and_then(Value::as_str)
                && current.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid)
            {
                return Err(ApiError::precondition(
                    rt,
                    name,
                    format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        current
                            .pointer("/metadata/uid")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                    ),
                ));
            }
            if let Some(rv) = p.get("resourceVersion").and_then(Value::as_str)
                && current
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    != Some(rv)
            {
                return Err(ApiError::precondition(
                    rt,
                    name,
                    format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        rv_of(&current)
                    ),
                ));
            }
        }
        if id.node_name().is_some()
            && rt.plural == "pods"
            && current.pointer("/spec/nodeName").and_then(Value::as_str) != id.node_name()
        {
            return Err(ApiError::forbidden(
                rt,
                Some(name),
                format!(
                    "pods \"{name}\" is forbidden: node \"{}\" can only delete pods with spec.nodeName set to itself",
                    id.node_name().unwrap_or_default()
                ),
            ));
        }
        let has_finalizers = current
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        // Graceful deletion: a pod bound to a node that has not finished gets a
        // deletionTimestamp and waits for the node's final delete with grace 0.
        let graceful = rt.plural == "pods"
            && current.pointer("/spec/nodeName").is_some()
            && !matches!(
                current.pointer("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            );
        let spec_grace = current
            .pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(30);
        let grace = if graceful {
            grace.unwrap_or(spec_grace).max(0)
        } else {
            0
        };
        if grace > 0 || has_finalizers {
            let already = current
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64);
            return self.store.modify(rt, ns, name, |cur| {
                let mut new = cur.clone();
                // The grace period can only shorten.
                let g = already.map_or(grace, |a| a.min(grace));
                if already == Some(g) {
                    return Ok(None);
                }
                let deadline = jiff::Timestamp::now().as_second() + g;
                let ts = jiff::Timestamp::from_second(deadline).map_or_else(
                    |_| now_rfc3339(),
                    |t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                );
                new["metadata"]["deletionTimestamp"] = json!(ts);
                new["metadata"]["deletionGracePeriodSeconds"] = json!(g);
                Ok(Some(new))
            });
        }
        if rt.plural == "namespaces" {
            for r in resources::RESOURCES
                .iter()
                .filter(|r| r.namespaced && !r.create_only)
            {
                for obj in self.store.list(r, Some(name)).0 {
                    let _ = self.store.remove(r, name, &name_of(&obj));
                }
            }
        }
        if rt.plural == "pods"
            && (graceful || current.pointer("/metadata/deletionTimestamp").is_some())
        {
            // A delete with grace 0 (the node's final one, or a forced one): record
            // the deletion with grace 0, then remove, as the real server does — the
            // node reads the grace from the object of the DELETED event.
            let _ = self.store.modify(rt, ns, name, |cur| {
                let mut new = cur.clone();
                if new.pointer("/metadata/deletionTimestamp").is_none() {
                    new["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                }
                new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                Ok(Some(new))
            });
        }
        self.store.remove(rt, ns, name)
    }

    /// `status.allocatable` of the node pod `name` is bound to.
    fn allocatable_of_pods_node(&self, rt: &ResourceType, ns: &str, name: &str) -> Option<Value> {
        let pod = self.store.get(rt, ns, name)?;
        let node = pod.pointer("/spec/nodeName")?.as_str()?.to_string();
        let nodes = resources::find("", "v1", "nodes")?;
        self.store
            .get(nodes, "", &node)?
            .pointer("/status/allocatable")
            .cloned()
    }

    /// Sets `spec.nodeName` and the PodScheduled condition (the scheduler's Binding).
    pub fn bind_pod(&self, ns: &str, name: &str, node: &str) -> Result<Value, ApiError> {
        let rt = resources::find("", "v1", "pods").ok_or_else(ApiError::path_not_found)?;
        self.store.modify(rt, ns, name, |cur| {
            if cur.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty()) {
                return Err(ApiError::precondition(rt, name, format!("pod {name} is already assigned to node \"{}\"", cur.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default())));
            }
            let mut new = cur.clone();
            new["spec"]["nodeName"] = json!(node);
            let cond = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()});
            new["status"] = super::patch::strategic_merge_patch(&new["status"], &json!({"conditions": [cond]}))?;
            Ok(Some(new))
        })
    }

    fn token_request(
        &self,
        ns: &str,
        sa: &str,
        req: Value,
        id: &Identity,
    ) -> Result<Value, ApiError> {
        let rt =
            resources::find("", "v1", "serviceaccounts").ok_or_else(ApiError::path_not_found)?;
        let account = self
            .store
            .get(rt, ns, sa)
            .ok_or_else(|| ApiError::not_found(rt, sa))?;
        let audiences: Vec<String> = strings(req.pointer("/spec/audiences"));
        let bound = req.pointer("/spec/boundObjectRef").cloned();
        // NodeRestriction (for nodes) and the token registry check the bound pod's uid
        // first: a token is never bound to a pod that was deleted and recreated.
        if let Some(b) = &bound
            && b.get("kind").and_then(Value::as_str) == Some("Pod")
        {
            let pods = resources::find("", "v1", "pods").ok_or_else(ApiError::path_not_found)?;
            let name = b.get("name").and_then(Value::as_str).unwrap_or_default();
            let uid = b.get("uid").and_then(Value::as_str).unwrap_or_default();
            if let Some(pod) = self.store.get(pods, ns, name)
                && !uid.is_empty()
                && pod.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid)
            {
                let why = format!(
                    "the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"
                );
                return Err(match id.node_name() {
                    Some(_) => ApiError::forbidden(
                        rt,
                        Some(sa),
                        format!("serviceaccounts \"{sa}\" is forbidden: {why}"),
                    ),
                    None => ApiError::precondition(rt, name, &why),
                });
            }
        }
        if let Some(node) = id.node_name() {
            // The Node authorizer's audience rule: a node may request only audiences that
            // a pod bound to it names in a projected token volume.
            let pods = self
                .store
                .list(
                    resources::find("", "v1", "pods").ok_or_else(ApiError::path_not_found)?,
                    Some(ns),
                )
                .0;
            for aud in &audiences {
                let named = pods
                    .iter()
                    .filter(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node))
                    .any(|p| p.to_string().contains(&format!("\"audience\":\"{aud}\"")));
                if !named {
                    return Err(ApiError::forbidden(
                        rt,
                        Some(sa),
                        format!(
                            "serviceaccounts \"{sa}\" is forbidden: audience \"{aud}\" not found in pod spec volume, {} is not authorized to request tokens for this audience",
                            id.user
                        ),
                    ));
                }
            }
        }
        let audiences = if audiences.is_empty() {
            vec![tokens::API_AUDIENCE.to_string()]
        } else {
            audiences
        };
        let expiration = req
            .pointer("/spec/expirationSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(3600)
            .max(600);
        let cap = self
            .token_seconds
            .load(std::sync::atomic::Ordering::Relaxed);
        let expiration = if cap > 0 {
            expiration.min(cap)
        } else {
            expiration
        };
        let now = jiff::Timestamp::now().as_second();
        let mut k8s = json!({"namespace": ns, "serviceaccount": {"name": sa, "uid": account.pointer("/metadata/uid")}});
        if let Some(b) = &bound
            && b.get("kind").and_then(Value::as_str) == Some("Pod")
        {
            k8s["pod"] = json!({"name": b.get("name"), "uid": b.get("uid")});
        }
        if let Some(node) = id.node_name() {
            k8s["node"] = json!({"name": node});
        }
        let claims = json!({"aud": audiences, "exp": now + expiration, "iat": now, "nbf": now, "iss": tokens::API_AUDIENCE, "sub": format!("system:serviceaccount:{ns}:{sa}"), "kubernetes.io": k8s});
        let token = self.signer.sign(&claims);
        let exp = jiff::Timestamp::from_second(now + expiration)
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        let mut out = req;
        out["kind"] = json!("TokenRequest");
        out["apiVersion"] = json!("authentication.k8s.io/v1");
        out["metadata"] = json!({"name": sa, "namespace": ns, "creationTimestamp": null});
        out["spec"]["audiences"] = json!(audiences);
        out["spec"]["expirationSeconds"] = json!(expiration);
        out["status"] = json!({"token": token, "expirationTimestamp": exp});
        Ok(out)
    }

    fn review(
        &self,
        rt: &'static ResourceType,
        mut obj: Value,
        requester: &Identity,
    ) -> Result<Value, ApiError> {
        obj["metadata"] = json!({"creationTimestamp": null});
        match rt.plural {
            "tokenreviews" => {
                let token = obj
                    .pointer("/spec/token")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                obj["status"] = match self.identity_for_token(token) {
                    Some(id) => {
                        let aud = self
                            .signer
                            .verify(token)
                            .and_then(|c| c.get("aud").cloned())
                            .unwrap_or(json!([tokens::API_AUDIENCE]));
                        json!({"authenticated": true, "user": {"username": id.user, "groups": id.groups}, "audiences": aud})
                    }
                    None => json!({"user": {}, "error": "invalid bearer token"}),
                };
            }
            "subjectaccessreviews" | "selfsubjectaccessreviews" => {
                let spec = obj.get("spec").cloned().unwrap_or(json!({}));
                // A self review asks about the requester; a subject review names anyone.
                let id = if rt.plural == "selfsubjectaccessreviews" {
                    requester.clone()
                } else {
                    let user = spec
                        .get("user")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    Identity {
                        user,
                        groups: strings(spec.get("groups")),
                    }
                };
                let allowed = match spec.get("resourceAttributes") {
                    Some(ra) => {
                        let group = ra.get("group").and_then(Value::as_str).unwrap_or("");
                        let resource = ra.get("resource").and_then(Value::as_str).unwrap_or("");
                        let version = ra
                            .get("version")
                            .and_then(Value::as_str)
                            .filter(|v| !v.is_empty())
                            .unwrap_or("v1");
                        let rt = resources::RESOURCES
                            .iter()
                            .find(|r| {
                                r.group == group && r.plural == resource && r.version == version
                            })
                            .or_else(|| {
                                resources::RESOURCES
                                    .iter()
                                    .find(|r| r.group == group && r.plural == resource)
                            });
                        match rt {
                            Some(rt) => {
                                let a = Attributes {
                                    verb: ra.get("verb").and_then(Value::as_str).unwrap_or(""),
                                    rt,
                                    subresource: ra
                                        .get("subresource")
                                        .and_then(Value::as_str)
                                        .filter(|s| !s.is_empty()),
                                    namespace: ra
                                        .get("namespace")
                                        .and_then(Value::as_str)
                                        .unwrap_or(""),
                                    name: ra
                                        .get("name")
                                        .and_then(Value::as_str)
                                        .filter(|s| !s.is_empty()),
                                    field_selector: None,
                                };
                                authz::authorize(&self.store, &id, &a) == Decision::Allow
                            }
                            None => id.in_group("system:masters"),
                        }
                    }
                    None => !id.user.is_empty(),
                };
                obj["status"] = json!({"allowed": allowed});
            }
            _ => {
                return Err(ApiError::method_not_allowed(format!(
                    "create of {} is not supported",
                    rt.plural
                )));
            }
        }
        Ok(obj)
    }

    fn watch(
        self: &Arc<Self>,
        rt: &'static ResourceType,
        ns: &str,
        query: &HashMap<String, String>,
        labels: LabelSelector,
        fields: Option<FieldSelector>,
    ) -> Response<Body> {
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        let server = Arc::clone(self);
        let ns = ns.to_string();
        let send_initial = query.get("sendInitialEvents").is_some_and(|v| v == "true");
        let bookmarks = query
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true");
        let rv = query.get("resourceVersion").cloned().unwrap_or_default();
        let asked = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(1800);
        let timeout = match self.watch_seconds_cap.load(Ordering::Relaxed) {
            0 => asked,
            cap => asked.min(cap),
        };
        tokio::spawn(async move {
            let matches =
                |o: &Value| labels.matches(o) && fields.as_ref().is_none_or(|f| f.matches(o));
            let line = |kind: &str, obj: &Value| {
                Bytes::from(format!("{}\n", json!({"type": kind, "object": obj})))
            };
            let ns_filter = (!ns.is_empty()).then_some(ns.as_str());
            let (mut since, replay, mut changes) = if send_initial || rv.is_empty() || rv == "0" {
                let (items, at, changes) = server.store.snapshot_and_watch(rt, ns_filter);
                for item in items.iter().filter(|o| matches(o)) {
                    if tx.send(line("ADDED", item)).await.is_err() {
                        return;
                    }
                }
                if send_initial && bookmarks {
                    let mark = json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": at.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
                    if tx.send(line("BOOKMARK", &mark)).await.is_err() {
                        return;
                    }
                }
                (at, Vec::new(), changes)
            } else {
                let since: u64 = rv.parse().unwrap_or(0);
                match server.store.watch_since(rt, since) {
                    Ok((replay, changes)) => (since, replay, changes),
                    Err(e) => {
                        let _ = tx.send(line("ERROR", &e.status())).await;
                        return;
                    }
                }
            };
            let event_for = |c: &Change| -> Option<(&'static str, Value)> {
                if c.group != rt.group
                    || c.resource != rt.plural
                    || ns_filter.is_some_and(|n| n != c.namespace)
                {
                    return None;
                }
                let now = matches(&c.object);
                let before = c.old.as_ref().is_some_and(matches);
                match c.kind {
                    EventKind::Added if now => Some(("ADDED", c.object.clone())),
                    EventKind::Deleted if now => Some(("DELETED", c.object.clone())),
                    EventKind::Modified if now && before => Some(("MODIFIED", c.object.clone())),
                    EventKind::Modified if now => Some(("ADDED", c.object.clone())),
                    EventKind::Modified if before => Some(("DELETED", c.object.clone())),
                    _ => None,
                }
            };
            for c in &replay {
                since = since.max(c.rv);
                if let Some((kind, obj)) = event_for(c)
                    && tx.send(line(kind, &obj)).await.is_err()
                {
                    return;
                }
            }
            let interval =
                Duration::from_millis(server.bookmark_interval_ms.load(Ordering::Relaxed).max(100));
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            let deadline = tokio::time::sleep(Duration::from_secs(timeout));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => return,
                    _ = tx.closed() => return,
                    _ = ticker.tick(), if bookmarks => {
                        // A bookmark may name only a version up to which this watch has
                        // sent every change: the newest when nothing waits in its buffer
                        // (changes are broadcast under the store's lock, so all up to
                        // `now` are in it), else the last one sent. Naming the newest
                        // while changes wait would make a client that resumes from the
                        // bookmark skip them.
                        let now = server.store.current_rv();
                        let at = if changes.is_empty() { now.max(since) } else { since };
                        let mark = json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": at.to_string()}});
                        if tx.send(line("BOOKMARK", &mark)).await.is_err() { return; }
                    }
                    got = changes.recv() => match got {
                        Ok(c) => {
                            if c.rv <= since { continue; }
                            since = c.rv;
                            if let Some((kind, obj)) = event_for(&c)
                                && tx.send(line(kind, &obj)).await.is_err() { return; }
                        }
                        // Fell behind the broadcast buffer: end the watch; clients resume.
                        Err(_) => return,
                    }
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        resp.headers_mut().insert(
            "content-type",
            hyper::header::HeaderValue::from_static("application/json"),
        );
        resp.headers_mut().insert(
            "transfer-encoding",
            hyper::header::HeaderValue::from_static("chunked"),
        );
        resp
    }
}

/// An OpenAPI v3 document for one group-version: the paths with their verbs and the
/// query parameters kubectl looks for (`fieldValidation`), without full schemas.
fn openapi_v3(group: &str, version: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let list: Vec<&ResourceType> = resources::RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if list.is_empty() {
        return None;
    }
    let params = json!([
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}}
    ]);
    for r in list {
        let gvk = json!({"group": group, "version": version, "kind": r.kind});
        let op = |action: &str| json!({"x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk, "parameters": params, "responses": {"200": {"description": "OK"}}});
        let base = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{prefix}/{}", r.plural)
        };
        if r.create_only {
            paths.insert(base, json!({"post": op("post")}));
            continue;
        }
        paths.insert(base.clone(), json!({"get": op("list"), "post": op("post")}));
        paths.insert(format!("{base}/{{name}}"), json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}));
        for sub in r.subresources {
            paths.insert(format!("{base}/{{name}}/{sub}"), json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "post": op("post")}));
        }
    }
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.36.2"}, "paths": paths, "components": {"schemas": {}}}),
    )
}

fn parse_body(body: &Bytes, content_type: &str) -> Result<Value, ApiError> {
    if content_type.contains("yaml") {
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::bad_request("body is not UTF-8".into()))?;
        return serde_saphyr::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("invalid YAML body: {e}")));
    }
    if content_type.contains("protobuf") {
        return Err(ApiError::unsupported_media_type(content_type));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// The pod spec validation a real apiserver does that kernlet's tests meet: a
/// `subPath` must be relative and may not step out with `..`.
fn validate_pod_spec(name: &str, pod: &Value) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        let containers = pod["spec"][list].as_array().cloned().unwrap_or_default();
        for (i, c) in containers.iter().enumerate() {
            let mounts = c["volumeMounts"].as_array().cloned().unwrap_or_default();
            for m in mounts {
                let Some(sub) = m["subPath"].as_str().filter(|s| !s.is_empty()) else {
                    continue;
                };
                let field = format!("spec.{list}[{i}].volumeMounts.subPath");
                if sub.starts_with('/') {
                    causes.push((
                        field,
                        format!("Invalid value: \"{sub}\": must be a relative path"),
                    ));
                } else if sub.split('/').any(|c| c == "..") {
                    causes.push((
                        field,
                        format!("Invalid value: \"{sub}\": must not contain '..'"),
                    ));
                }
            }
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid("Pod", name, causes))
    }
}

/// The validation the fixtures show for pod status writes (pod IPs).
fn validate_pod_status(name: &str, pod: &Value) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    let ips = pod
        .pointer("/status/podIPs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut families = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let text = ip.get("ip").and_then(Value::as_str).unwrap_or_default();
        match text.parse::<std::net::IpAddr>() {
            Ok(addr) => families.push(addr.is_ipv4()),
            Err(_) => causes.push((format!("status.podIPs[{i}]"), format!("Invalid value: \"{text}\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"))),
        }
    }
    let v4 = families.iter().filter(|f| **f).count();
    if ips.len() > 2 || v4 > 1 || families.len() - v4 > 1 || (!causes.is_empty() && ips.len() > 1) {
        let shown: Vec<String> = ips
            .iter()
            .map(|i| format!("{{\"IP\":{}}}", i.get("ip").cloned().unwrap_or(Value::Null)))
            .collect();
        causes.push((
            "status.podIPs".into(),
            format!(
                "Invalid value: [{}]: may specify no more than one IP for each IP family",
                shown.join(",")
            ),
        ));
    }
    if let (Some(first), Some(ip)) = (
        ips.first()
            .and_then(|i| i.get("ip"))
            .and_then(Value::as_str),
        pod.pointer("/status/podIP").and_then(Value::as_str),
    ) && first != ip
        && causes.is_empty()
    {
        causes.push((
            "status.podIPs[0]".into(),
            format!("Invalid value: \"{first}\": must be equal to `podIP`"),
        ));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid("Pod", name, causes))
    }
}

/// The real apiserver's check of a resize (1.36): the pod's new requests must fit its
/// node's allocatable at all, else 403 Forbidden (NodeCapacity).
fn resize_fits_node(
    rt: &ResourceType,
    name: &str,
    pod: &Value,
    allocatable: Option<&Value>,
) -> Result<(), ApiError> {
    let Some(allocatable) = allocatable else {
        return Ok(());
    };
    let amount = |q: Option<&Value>, cpu: bool| {
        q.and_then(Value::as_str)
            .and_then(|q| kernlet::model::quantity::Quantity::parse(q).ok())
            .map_or(0, |q| if cpu { q.milli() } else { q.value() })
    };
    for (resource, cpu) in [("cpu", true), ("memory", false)] {
        let requested: i128 = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| amount(c.pointer(&format!("/resources/requests/{resource}")), cpu))
            .sum();
        let capacity = amount(allocatable.get(resource), cpu);
        if capacity > 0 && requested > capacity {
            let mut e = ApiError::forbidden(
                rt,
                Some(name),
                format!(
                    "pods \"{name}\" is forbidden: node didn't have enough allocatable resources: {resource}, requested: {requested}, allocatable: {capacity}"
                ),
            );
            if let Some(d) = e.details.as_mut() {
                d["causes"] = json!([{"reason": "NodeCapacity"}]);
            }
            return Err(e);
        }
    }
    Ok(())
}

//! The kubelet API of a kernlet node (root, SimNode): HTTPS on :10250 with a
//! self-signed certificate until the kubelet-serving CSR is approved, then the issued
//! one; authentication by client certificate or TokenReview, authorization by
//! SubjectAccessReview; container logs with every parameter, pods, configz, metrics,
//! healthz; and 1,000 requests without the right credentials all refused.

#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot go on should stop loudly"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use k8s_openapi::api::core::v1::{Node, Pod};
use kernlet_tests::cluster::Cluster;
use kernlet_tests::simnode::{BRIDGE_IP, Lab, SimNode};
use kube::api::{Api, PostParams};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use kernlet_tests::wait_for;

/// Accepts any server certificate and remembers the last one (the test checks which
/// certificate the node serves, not who signed it).
#[derive(Debug, Default)]
struct AnyServer(std::sync::Mutex<Vec<u8>>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = end_entity.to_vec();
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client of one node's API: an optional client certificate, an optional token.
struct Client {
    bridge_ns: std::path::PathBuf,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    seen: Arc<AnyServer>,
    token: Option<String>,
}

/// `(cert, key)` PEM of a kubeconfig's user.
fn identity(kubeconfig: &std::path::Path) -> (String, String) {
    let kc: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    let user = &kc["users"][0]["user"];
    let d = |k: &str| {
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(user[k].as_str().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    (d("client-certificate-data"), d("client-key-data"))
}

impl Client {
    fn new(
        lab: &Lab,
        node: &SimNode,
        cert: Option<(String, String)>,
        token: Option<String>,
    ) -> Self {
        let seen = Arc::new(AnyServer::default());
        let builder = rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::clone(&seen) as _);
        let tls = match cert {
            Some((c, k)) => {
                let certs: Vec<CertificateDer<'static>> =
                    rustls::pki_types::pem::PemObject::pem_slice_iter(c.as_bytes())
                        .collect::<Result<_, _>>()
                        .unwrap();
                let key =
                    <PrivateKeyDer<'static> as rustls::pki_types::pem::PemObject>::from_pem_slice(
                        k.as_bytes(),
                    )
                    .unwrap();
                builder.with_client_auth_cert(certs, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        // Full handshakes only: a resumed session shows no certificate.
        let mut tls = tls;
        tls.resumption = rustls::client::Resumption::disabled();
        Self {
            bridge_ns: format!("/run/netns/{}", lab.bridge_netns()).into(),
            addr: SocketAddr::new(node.address.into(), 10250),
            tls: Arc::new(tls),
            seen,
            token,
        }
    }

    /// One connection (TLS handshake); `Err` when the handshake is refused.
    async fn connect(
        &self,
    ) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, String> {
        let tcp =
            kernlet::sys::ns::connect_in(Some(&self.bridge_ns), self.addr, Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
        tcp.set_nonblocking(true).unwrap();
        let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(ServerName::try_from("node").unwrap(), tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| format!("http: {e}"))?;
        tokio::spawn(conn);
        Ok(send)
    }

    async fn send(
        &self,
        conn: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        path: &str,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        let mut req = http::Request::get(path).header("host", "node");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        conn.ready().await.map_err(|e| e.to_string())?;
        conn.send_request(req.body(Empty::new()).unwrap())
            .await
            .map_err(|e| e.to_string())
    }

    /// GET `path` on a new connection: status and body.
    async fn get(&self, path: &str) -> Result<(u16, String), String> {
        let mut conn = self.connect().await?;
        let resp = self.send(&mut conn, path).await?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// A WebSocket to `path` speaking `protocol`.
    async fn ws(
        &self,
        path: &str,
        protocol: &str,
    ) -> Result<
        tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        String,
    > {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let tcp =
            kernlet::sys::ns::connect_in(Some(&self.bridge_ns), self.addr, Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
        tcp.set_nonblocking(true).unwrap();
        let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(ServerName::try_from("node").unwrap(), tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let mut req = format!("wss://node{path}").into_client_request().unwrap();
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
        if let Some(t) = &self.token {
            req.headers_mut()
                .insert("Authorization", format!("Bearer {t}").parse().unwrap());
        }
        let (ws, resp) = tokio_tungstenite::client_async(req, tls)
            .await
            .map_err(|e| format!("websocket: {e}"))?;
        assert_eq!(
            resp.headers().get("Sec-WebSocket-Protocol").unwrap(),
            protocol
        );
        Ok(ws)
    }

    fn server_cert_cn(&self) -> String {
        let der = self.seen.0.lock().unwrap().clone();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        cert.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

fn exec_path(pod: &str, command: &[&str], extra: &str) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for c in command {
        q.append_pair("command", c);
    }
    format!("/exec/default/{pod}/c?{}&{extra}", q.finish())
}

/// Everything an exec sends until it closes: stdout, stderr, the final Status.
async fn exec_output(ws: &mut Ws) -> (String, String, serde_json::Value) {
    use futures::StreamExt as _;
    let (mut out, mut err, mut status) = (String::new(), String::new(), serde_json::Value::Null);
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        let tokio_tungstenite::tungstenite::Message::Binary(b) = msg else {
            if msg.is_close() {
                break;
            }
            continue;
        };
        let (ch, body) = b.split_first().unwrap();
        match ch {
            1 => out.push_str(&String::from_utf8_lossy(body)),
            2 => err.push_str(&String::from_utf8_lossy(body)),
            3 => status = serde_json::from_slice(body).unwrap(),
            _ => {}
        }
    }
    (out, err, status)
}

fn bin(channel: u8, data: &[u8]) -> tokio_tungstenite::tungstenite::Message {
    let mut v = vec![channel];
    v.extend_from_slice(data);
    tokio_tungstenite::tungstenite::Message::Binary(v.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelet_api_serves_logs_and_pods_to_authorized_callers_only() {
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("kapi").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    let mut node = lab.add_node("k1").unwrap();
    node.import_busybox().unwrap();
    let kubeconfig = node.dir("state").join("node.kubeconfig");
    cluster
        .kubeconfig_at(&fwd.url, "system:node:k1", &["system:nodes"], &kubeconfig)
        .unwrap();
    let kc = kubeconfig.display().to_string();
    node.start_kernlet(&["run", "--kubeconfig", &kc, "--node-name", "k1"])
        .unwrap();
    let admin = cluster.admin().await.unwrap();
    let nodes: Api<Node> = Api::all(admin.clone());
    // The node declares that it speaks WebSocket streams (1.35+ apiservers), and
    // reports a kubelet version no newer than the apiserver's.
    let k1 = wait_for(
        "node k1 with its declared features",
        Duration::from_secs(30),
        async || {
            let n = nodes.get_opt("k1").await.ok()??;
            n.status.as_ref()?.declared_features.as_ref()?;
            Some(n)
        },
    )
    .await;
    let status = k1.status.unwrap();
    assert_eq!(
        status.declared_features.unwrap(),
        ["ExtendWebSocketsToKubelet"]
    );
    // status.images as kubelet writes it: the image store's images, repository digest
    // first, then the tag, with their sizes.
    let images = status.images.clone().unwrap_or_default();
    let busybox = images
        .iter()
        .find(|i| {
            i.names
                .iter()
                .flatten()
                .any(|n| n.ends_with("busybox:1.36"))
        })
        .unwrap_or_else(|| panic!("busybox in status.images: {images:?}"));
    let names = busybox.names.clone().unwrap();
    assert!(names[0].contains("busybox@sha256:"), "{names:?}");
    assert!(busybox.size_bytes.unwrap() > 100_000, "{busybox:?}");
    let version = admin.apiserver_version().await.unwrap();
    assert!(
        status
            .node_info
            .unwrap()
            .kubelet_version
            .starts_with(&format!("v{}.{}.", version.major, version.minor)),
        "never newer than the apiserver"
    );

    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "talker"},
        "spec": {"hostNetwork": true, "terminationGracePeriodSeconds": 1, "containers": [
            {"name": "c", "image": "busybox:1.36", "command": ["sh", "-c",
             "for i in 1 2 3 4 5; do echo line $i; done; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"],
             "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1}}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    cluster.bind_pod("default", "talker", "k1").await.unwrap();

    // The apiserver's kubelet client: a certificate of the cluster CA in system:masters.
    let admin_id = identity(&cluster.admin_kubeconfig().unwrap());
    let api = Client::new(&lab, &node, Some(admin_id.clone()), None);
    let (code, body) = wait_for("the API up", Duration::from_secs(30), async || {
        api.get("/healthz").await.ok()
    })
    .await;
    assert_eq!((code, body.as_str()), (200, "ok"));
    assert_eq!(
        api.server_cert_cn(),
        "k1@kernlet-self-signed",
        "self-signed until the serving CSR is approved"
    );
    // healthz, plain, on the node's loopback.
    let healthz = kernlet::sys::ns::connect_in(
        Some(&std::path::PathBuf::from(format!(
            "/run/netns/{}",
            node.netns
        ))),
        "127.0.0.1:10248".parse().unwrap(),
        Duration::from_secs(5),
    );
    let mut healthz = healthz.unwrap();
    use std::io::{Read as _, Write as _};
    healthz
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    healthz.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"),
        "{answer}"
    );

    // Logs: every parameter.
    wait_for("the talker's ticks", Duration::from_secs(60), async || {
        let (c, b) = api.get("/containerLogs/default/talker/c").await.ok()?;
        (c == 200 && b.contains("tick 3")).then_some(())
    })
    .await;
    let (c, all) = api.get("/containerLogs/default/talker/c").await.unwrap();
    assert_eq!(c, 200);
    assert!(all.starts_with("line 1\nline 2\n"), "{all}");
    let (_, tail) = api
        .get("/containerLogs/default/talker/c?tailLines=2&timestamps=true")
        .await
        .unwrap();
    let lines: Vec<&str> = tail.lines().collect();
    assert_eq!(lines.len(), 2, "{tail}");
    for l in &lines {
        let (ts, text) = l.split_once(' ').unwrap();
        assert!(ts.parse::<k8s_openapi::jiff::Timestamp>().is_ok(), "{l}");
        assert!(text.starts_with("tick "), "{l}");
    }
    let (_, limited) = api
        .get("/containerLogs/default/talker/c?limitBytes=9")
        .await
        .unwrap();
    assert_eq!(limited, "line 1\nli");
    // (Whole seconds: a second after the first lines, so none of them is as recent.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let since = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, recent) = api
        .get("/containerLogs/default/talker/c?sinceSeconds=1")
        .await
        .unwrap();
    assert!(
        !recent.contains("line 1") && recent.contains("tick"),
        "{recent}"
    );
    let (_, after) = api
        .get(&format!(
            "/containerLogs/default/talker/c?sinceTime={since}"
        ))
        .await
        .unwrap();
    assert!(
        !after.is_empty() && !after.contains("line "),
        "since {since}: {after}"
    );
    let (c, prev) = api
        .get("/containerLogs/default/talker/c?previous=true")
        .await
        .unwrap();
    assert_eq!(c, 400, "{prev}");
    assert!(prev.contains("previous terminated container"), "{prev}");
    let (c, bad) = api
        .get("/containerLogs/default/talker/c?tailLines=x")
        .await
        .unwrap();
    assert_eq!(c, 400, "{bad}");
    // Follow: the stream keeps bringing new lines.
    let mut conn = api.connect().await.unwrap();
    let resp = api
        .send(
            &mut conn,
            "/containerLogs/default/talker/c?follow=true&tailLines=1",
        )
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.into_body();
    let mut followed = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while followed.matches("tick").count() < 4 && Instant::now() < deadline {
        if let Ok(Some(Ok(frame))) =
            tokio::time::timeout(Duration::from_secs(2), body.frame()).await
            && let Some(d) = frame.data_ref()
        {
            followed.push_str(&String::from_utf8_lossy(d));
        }
    }
    assert!(followed.matches("tick").count() >= 4, "{followed}");
    drop(body);
    drop(conn);

    // Pods, running pods, configz, metrics.
    let (c, list) = api.get("/pods").await.unwrap();
    assert_eq!(c, 200);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["kind"], "PodList");
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["metadata"]["name"] == "talker" && p["status"]["phase"] == "Running")
    );
    let (_, running) = api.get("/runningpods/").await.unwrap();
    let running: serde_json::Value = serde_json::from_str(&running).unwrap();
    assert_eq!(
        running["items"][0]["spec"]["containers"][0]["name"], "c",
        "{running}"
    );
    let (_, configz) = api.get("/configz").await.unwrap();
    let configz: serde_json::Value = serde_json::from_str(&configz).unwrap();
    assert_eq!(configz["kubeletconfig"]["port"], 10250);
    assert_eq!(configz["kubeletconfig"]["authorization"]["mode"], "Webhook");
    let (_, metrics) = api.get("/metrics").await.unwrap();
    // kubelet's names beside kernlet's own, in the text format scrapers read.
    let m = kernlet_tests::prometheus::parse(&metrics).unwrap_or_else(|e| panic!("{e}\n{metrics}"));
    assert_eq!(m.find("kubelet_node_name", &[("node", "k1")])[0].value, 1.0);
    assert!(m.find("kubelet_running_pods", &[])[0].value >= 1.0);
    // The pod manager's histograms (prometheus-client): the pod started, the PLEG relists.
    assert!(
        m.find("kubelet_pod_start_duration_seconds_count", &[])[0].value >= 1.0,
        "{metrics}"
    );
    assert!(
        !m.find(
            "kubelet_pod_start_duration_seconds_bucket",
            &[("le", "+Inf")]
        )
        .is_empty()
    );
    assert!(m.find("kubelet_pleg_relist_duration_seconds_count", &[])[0].value >= 1.0);
    // kubelet's user-namespaced pod counters, which e2e reads (no such pod here).
    for series in [
        "kubelet_started_user_namespaced_pods_total",
        "kubelet_started_user_namespaced_pods_errors_total",
    ] {
        assert_eq!(m.find(series, &[])[0].value, 0.0, "{series}");
    }
    assert!(
        !m.find("kubelet_pleg_relist_interval_seconds_sum", &[])
            .is_empty()
    );
    assert!(
        m.find(
            "kubelet_running_containers",
            &[("container_state", "running")]
        )[0]
        .value
            >= 1.0
    );
    // prober_probe_total counts the talker's readiness probe runs.
    let probes = wait_for("counted probe runs", Duration::from_secs(20), async || {
        let (_, text) = api.get("/metrics/probes").await.ok()?;
        let m = kernlet_tests::prometheus::parse(&text).ok()?;
        let found = m.find(
            "prober_probe_total",
            &[
                ("pod", "talker"),
                ("namespace", "default"),
                ("container", "c"),
                ("probe_type", "Readiness"),
                ("result", "successful"),
            ],
        );
        found.first().map(|s| s.value).filter(|v| *v >= 1.0)
    })
    .await;
    assert!(probes >= 1.0);
    assert!(
        metrics.contains("kernlet_running_containers 1")
            && metrics.contains("kernlet_api_requests_total{code=\"200\"}"),
        "{metrics}"
    );

    // Stats, in kubelet's shape (every field we send is one kubelet sends).
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/k8s-fixtures/kubelet/api/stats_summary.txt"),
        )
        .unwrap_or_else(|_| {
            std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../fixtures/k8s/kubelet/api/stats_summary.txt"),
            )
            .unwrap()
        }),
    )
    .unwrap();
    // (A pod's `network` is kubelet's PodStats.network, in the node's shape; the
    // recorded kubelet's runtime left it out.)
    fn keys_within(
        ours: &serde_json::Value,
        theirs: &serde_json::Value,
        fixture: &serde_json::Value,
        at: &str,
    ) {
        if let (Some(o), Some(t)) = (ours.as_object(), theirs.as_object()) {
            for (k, v) in o {
                let path = format!("{at}.{k}");
                let tv = match t.get(k) {
                    Some(tv) => tv,
                    None if path == "summary.pods[].network" => &fixture["node"]["network"],
                    None => panic!("{path} is not a kubelet field"),
                };
                keys_within(v, tv, fixture, &path);
            }
        } else if let (Some(o), Some(t)) = (ours.as_array(), theirs.as_array())
            && let Some(t0) = t.first()
        {
            for v in o {
                keys_within(v, t0, fixture, &format!("{at}[]"));
            }
        }
    }
    let (c, summary) = api.get("/stats/summary").await.unwrap();
    assert_eq!(c, 200);
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    keys_within(&summary, &fixture, &fixture, "summary");
    let n = &summary["node"];
    assert_eq!(n["nodeName"], "k1");
    assert!(
        n["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap() > 0,
        "{n}"
    );
    assert!(n["memory"]["workingSetBytes"].as_u64().unwrap() > 0, "{n}");
    assert!(n["fs"]["capacityBytes"].as_u64().unwrap() > 0, "{n}");
    assert_eq!(n["network"]["name"], "eth0", "{n}");
    let talker = summary["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podRef"]["name"] == "talker")
        .unwrap()
        .clone();
    let c0 = &talker["containers"][0];
    assert_eq!(c0["name"], "c");
    assert!(
        c0["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap() > 0,
        "{c0}"
    );
    assert!(c0["logs"]["usedBytes"].as_u64().unwrap() > 0, "{c0}");
    // Pressure stall information, as kubelet 1.36 reports it, where the kernel keeps it.
    if std::path::Path::new("/proc/pressure/cpu").exists() {
        assert!(n["cpu"]["psi"]["some"]["total"].as_u64().is_some(), "{n}");
        assert!(n["io"]["psi"]["full"]["avg10"].as_f64().is_some(), "{n}");
        assert!(
            talker["cpu"]["psi"]["some"]["avg60"].as_f64().is_some(),
            "{talker}"
        );
        assert!(
            talker["memory"]["psi"]["full"]["total"].as_u64().is_some(),
            "{talker}"
        );
    }
    let (_, again) = api.get("/stats/summary").await.unwrap();
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert!(
        again["node"]["cpu"]["usageNanoCores"].is_u64(),
        "a rate from the second sample"
    );
    let (c, resource) = api.get("/metrics/resource").await.unwrap();
    assert_eq!(c, 200);
    assert!(
        resource.contains("container_cpu_usage_seconds_total{container=\"c\",namespace=\"default\",pod=\"talker\"}")
            && resource.contains("node_cpu_usage_seconds_total ")
            && resource.contains("pod_cpu_usage_seconds_total{namespace=\"default\",pod=\"talker\"}"),
        "{resource}"
    );
    kernlet_tests::prometheus::parse(&resource).unwrap();
    // cAdvisor's series, as the common dashboards query them: the container by its
    // labels, its pod (container=""), the node (id="/"), the machine.
    let (c, cadvisor) = api.get("/metrics/cadvisor").await.unwrap();
    assert_eq!(c, 200);
    let m =
        kernlet_tests::prometheus::parse(&cadvisor).unwrap_or_else(|e| panic!("{e}\n{cadvisor}"));
    let talker_c = [
        ("namespace", "default"),
        ("pod", "talker"),
        ("container", "c"),
    ];
    let cpu = m.find("container_cpu_usage_seconds_total", &talker_c);
    assert_eq!(cpu.len(), 1, "{cadvisor}");
    assert!(cpu[0].value > 0.0 && cpu[0].labels["cpu"] == "total");
    assert_eq!(cpu[0].labels["image"], "busybox:1.36");
    assert!(
        cpu[0].labels["id"].ends_with(&cpu[0].labels["name"]),
        "{:?}",
        cpu[0]
    );
    assert_eq!(m.types["container_cpu_usage_seconds_total"], "counter");
    for family in [
        "container_threads",
        "container_processes",
        "container_file_descriptors",
        "container_start_time_seconds",
        "container_last_seen",
    ] {
        assert!(
            !m.find(family, &talker_c).is_empty(),
            "{family}: {cadvisor}"
        );
    }
    assert!(m.find("container_threads", &talker_c)[0].value >= 1.0);
    let pod_level = [
        ("namespace", "default"),
        ("pod", "talker"),
        ("container", ""),
    ];
    assert_eq!(
        m.find("container_cpu_usage_seconds_total", &pod_level)
            .len(),
        1
    );
    assert_eq!(
        m.find("container_cpu_usage_seconds_total", &[("id", "/")])
            .len(),
        1
    );
    assert!(m.find("container_memory_working_set_bytes", &[("id", "/")])[0].value > 0.0);
    assert!(m.find("machine_cpu_cores", &[])[0].value >= 1.0);
    if std::path::Path::new("/proc/pressure/cpu").exists() {
        assert_eq!(
            m.find("container_pressure_cpu_waiting_seconds_total", &talker_c)
                .len(),
            1,
            "{cadvisor}"
        );
    }

    // Refused: no credentials (401), an invalid token (401), a valid token without
    // permission (403 with kubelet's message), a certificate of another CA (handshake).
    let anonymous = Client::new(&lab, &node, None, None);
    assert_eq!(
        anonymous.get("/pods").await.unwrap(),
        (401, "Unauthorized\n".to_string())
    );
    let bad_token = Client::new(&lab, &node, None, Some("not-a-token".into()));
    assert_eq!(bad_token.get("/pods").await.unwrap().0, 401);
    let sa_token = {
        let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(admin.clone(), "default");
        let tr: k8s_openapi::api::authentication::v1::TokenRequest =
            serde_json::from_value(serde_json::json!({"spec": {"audiences": []}})).unwrap();
        sa.create_token_request("default", &PostParams::default(), &tr)
            .await
            .unwrap()
            .status
            .unwrap()
            .token
    };
    let no_rights = Client::new(&lab, &node, None, sa_token);
    let (c, body) = no_rights
        .get("/containerLogs/default/talker/c")
        .await
        .unwrap();
    assert_eq!(c, 403);
    assert_eq!(
        body,
        "Forbidden (user=system:serviceaccount:default:default, verb=get, resource=nodes, subresource(s)=[proxy])\n"
    );
    let other_ca = kernlet_tests::apiserver::pki::Ca::new()
        .unwrap()
        .client("kubernetes-admin", &["system:masters"])
        .unwrap();
    let impostor = Client::new(
        &lab,
        &node,
        Some((other_ca.cert_pem, other_ca.key_pem)),
        None,
    );
    assert!(
        impostor.get("/pods").await.is_err(),
        "a certificate of another CA is refused"
    );

    // 1,000 such requests: every one refused, none answered with a log.
    let mut refused = 0;
    for client in [&anonymous, &bad_token, &no_rights] {
        let mut conn = client.connect().await.unwrap();
        for _ in 0..300 {
            let resp = client
                .send(&mut conn, "/containerLogs/default/talker/c")
                .await
                .unwrap();
            let code = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(
                matches!(code, 401 | 403) && !String::from_utf8_lossy(&body).contains("tick"),
                "{code}"
            );
            refused += 1;
        }
    }
    for _ in 0..100 {
        assert!(
            impostor
                .get("/containerLogs/default/talker/c")
                .await
                .is_err()
        );
        refused += 1;
    }
    assert_eq!(refused, 1000);
    println!(
        "escape corpus, kubelet API without the right credentials: {refused} tried, 0 escaped"
    );

    // exec over WebSocket (v5): stdin, stdout, stderr apart, stdin closed, exit code.
    use futures::SinkExt as _;
    let path = exec_path(
        "talker",
        &[
            "sh",
            "-c",
            "echo out; echo err >&2; read x; echo got $x; exit 3",
        ],
        "stdin=1&stdout=1&stderr=1",
    );
    let mut ws = api.ws(&path, "v5.channel.k8s.io").await.unwrap();
    ws.send(bin(0, b"hello\n")).await.unwrap();
    ws.send(bin(255, &[0])).await.unwrap();
    let (out, err, status) = exec_output(&mut ws).await;
    assert_eq!((out.as_str(), err.as_str()), ("out\ngot hello\n", "err\n"));
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");
    // With a terminal: the resize reaches it, the command's stdout is the terminal.
    let path = exec_path(
        "talker",
        &[
            "sh",
            "-c",
            "sleep 0.5; stty size; [ -t 0 ] && [ -t 1 ] && echo on-a-terminal",
        ],
        "stdin=1&stdout=1&tty=1",
    );
    let mut ws = api.ws(&path, "v5.channel.k8s.io").await.unwrap();
    ws.send(bin(4, br#"{"Width":100,"Height":40}"#))
        .await
        .unwrap();
    let (out, _, status) = exec_output(&mut ws).await;
    assert!(out.contains("40 100\r\non-a-terminal"), "{out:?}");
    assert_eq!(status["status"], "Success", "{status}");
    // v4 too, and a command that is not there.
    let path = exec_path("talker", &["no-such-command"], "stdout=1&stderr=1");
    let mut ws = api.ws(&path, "v4.channel.k8s.io").await.unwrap();
    let (_, err, status) = exec_output(&mut ws).await;
    assert!(err.contains("no-such-command"), "{err}");
    assert_eq!(status["details"]["causes"][0]["message"], "127", "{status}");
    // The pre-v4 protocols the upstream websocket conformance test offers: plain
    // `channel.k8s.io` says nothing on success; base64 frames are text, the failure a
    // message.
    let path = exec_path("talker", &["sh", "-c", "echo plain"], "stdout=1&stderr=1");
    let mut ws = api.ws(&path, "channel.k8s.io").await.unwrap();
    let (out, _, status) = exec_output(&mut ws).await;
    assert_eq!(
        (out.as_str(), &status),
        ("plain\n", &serde_json::Value::Null)
    );
    let path = exec_path("talker", &["sh", "-c", "echo b64; exit 2"], "stdout=1");
    let mut ws = api.ws(&path, "base64.channel.k8s.io").await.unwrap();
    let mut seen = Vec::new();
    use futures::StreamExt as _;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        match msg {
            tokio_tungstenite::tungstenite::Message::Text(t) => seen.push(t.to_string()),
            m if m.is_close() => break,
            _ => {}
        }
    }
    use base64::Engine as _;
    let decoded: Vec<(char, String)> = seen
        .iter()
        .filter(|t| t.len() > 1)
        .map(|t| {
            let (ch, data) = t.split_at(1);
            let data = base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap();
            (
                ch.chars().next().unwrap(),
                String::from_utf8_lossy(&data).into_owned(),
            )
        })
        .collect();
    assert!(decoded.contains(&('1', "b64\n".into())), "{seen:?}");
    assert!(
        decoded
            .iter()
            .any(|(ch, m)| *ch == '3' && m.ends_with("exit code 2")),
        "{seen:?}"
    );
    // Without a WebSocket the answer says what this node speaks.
    let (c, body) = api.get(&path).await.unwrap();
    assert_eq!(c, 400);
    assert!(body.contains("v5.channel.k8s.io"), "{body}");
    // Not allowed: exec needs create on nodes/proxy.
    let refused = no_rights.ws(&path, "v5.channel.k8s.io").await;
    assert!(refused.unwrap_err().contains("403"));

    // `kernlet exec -i` on the node: stdin passed through, output and exit code back.
    let mut child = std::process::Command::new(kernlet_tests::simnode::kernlet_bin().unwrap())
        .args(["exec", "-i", "default/talker", "--state-dir"])
        .arg(node.dir("state"))
        .args(["--", "sh", "-c", "read x; echo got $x; exit 4"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got hello\n");
    assert_eq!(out.status.code(), Some(4));

    // port-forward over WebSocket to a pod's own loopback.
    let quiet: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "quiet"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [
            {"name": "c", "image": "busybox:1.36", "command": ["sleep", "600"]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &quiet).await.unwrap();
    cluster.bind_pod("default", "quiet", "k1").await.unwrap();
    let uid = wait_for("pod quiet running", Duration::from_secs(60), async || {
        let p = pods.get("quiet").await.ok()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p.metadata.uid?)
    })
    .await;
    let pod_ns = node.dir("run").join("pods").join(&uid).join("ns/net");
    let listener = kernlet_tests::overlay::in_netns(&pod_ns, || {
        std::net::TcpListener::bind(("127.0.0.1", 8080)).unwrap()
    })
    .unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        s.write_all(&buf[..n].to_ascii_uppercase()).unwrap();
    });
    let mut ws = api
        .ws("/portForward/default/quiet?port=8080", "v4.channel.k8s.io")
        .await
        .unwrap();
    let mut next = async || loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Binary(b) = m {
            return b.to_vec();
        }
    };
    assert_eq!(
        next().await,
        [0, 0x90, 0x1f],
        "the data channel opens with the port"
    );
    assert_eq!(next().await, [1, 0x90, 0x1f], "so does the error channel");
    ws.send(bin(0, b"ping")).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 4 {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Binary(b) = m {
            assert_eq!(b[0], 0);
            got.extend_from_slice(&b[1..]);
        }
    }
    assert_eq!(got, b"PING");
    echo.join().unwrap();

    // The serving CSR approved: new connections get the issued certificate.
    let csrs: Api<k8s_openapi::api::certificates::v1::CertificateSigningRequest> =
        Api::all(admin.clone());
    let csr = wait_for("the serving CSR", Duration::from_secs(30), async || {
        csrs.list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|c| c.spec.signer_name == "kubernetes.io/kubelet-serving")
    })
    .await;
    cluster
        .approve_csr(csr.metadata.name.as_deref().unwrap())
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        api.get("/healthz").await.unwrap();
        if api.server_cert_cn() == "system:node:k1" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the issued serving certificate is not served (CN {})\n{}",
            api.server_cert_cn(),
            node.kernlet_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(fwd);
}

/// `kubectl` with the cluster's admin credentials; `env` set for it.
fn kubectl(cluster: &Cluster, env: &[(&str, &str)], args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new("kubectl");
    cmd.arg("--kubeconfig")
        .arg(cluster.admin_kubeconfig().unwrap())
        .args(args)
        .envs(env.iter().copied());
    cmd
}

/// Output of a finished kubectl: (exit code, stdout, stderr).
fn ran(mut cmd: std::process::Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Ends a kubectl this test started, by its pid.
struct Kubectl(std::process::Child);

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Creates the pod described by `json` in namespace default, binds it to node `k1` and
/// waits until its containers are ready.
async fn ready_pod(cluster: &Cluster, pods: &Api<Pod>, json: serde_json::Value) {
    let pod: Pod = serde_json::from_value(json).unwrap();
    let name = pod.metadata.name.clone().unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    cluster.bind_pod("default", &name, "k1").await.unwrap();
    wait_for("the pod ready", Duration::from_secs(60), async || {
        let p = pods.get(&name).await.ok()?;
        let s = p.status?;
        (s.container_statuses?.iter().all(|c| c.ready)).then_some(())
    })
    .await;
}

/// kubectl through the apiserver, as users run it: `logs` and `logs -f`, `exec` over
/// SPDY/3.1 (what apiservers before 1.36 speak to kubelets) and over WebSocket, with
/// exit codes, stdin and a terminal, `attach` (output) over both, and `port-forward`
/// over SPDY with data both ways.
/// (The in-memory apiserver proxies these subresources to the node's :10250 the way
/// the real one does: the upgraded connection passed through byte for byte.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_exec_and_port_forward_reach_the_node_through_the_apiserver() {
    use std::io::{BufRead as _, Read as _, Write as _};
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let Some(server) = cluster.in_memory() else {
        eprintln!("real mode: the apiserver reaches lab nodes only from the lab; skipped");
        return;
    };
    let mut lab = Lab::new("kctl").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    server.set_node_network(format!("/run/netns/{}", lab.bridge_netns()).into());
    let mut node = lab.add_node("k1").unwrap();
    node.import_busybox().unwrap();
    node.start_agent(&cluster, &fwd.url, &[]).unwrap();
    let admin = cluster.admin().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    ready_pod(
        &cluster,
        &pods,
        serde_json::json!({
            "metadata": {"name": "shell"},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [
                {"name": "c", "image": "busybox:1.36", "command": ["sh", "-c",
                 "echo started; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"]},
                {"name": "echo", "image": "busybox:1.36", "command": ["nc", "-ll", "-p", "8080", "-e", "cat"]}]},
        }),
    )
    .await;

    // kubectl logs, and logs -f until a few ticks arrive.
    let (code, out, err) = ran(kubectl(&cluster, &[], &["logs", "shell", "-c", "c"]));
    assert!(
        code == 0 && out.starts_with("started\n"),
        "{code} {out} {err}"
    );
    let mut follow = Kubectl(
        kubectl(
            &cluster,
            &[],
            &["logs", "-f", "shell", "-c", "c", "--tail", "1"],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let mut lines = std::io::BufReader::new(follow.0.stdout.take().unwrap()).lines();
    let mut ticks = Vec::new();
    while ticks.len() < 4 {
        let line = lines.next().expect("logs -f ended").unwrap();
        ticks.push(line);
    }
    let n: Vec<u64> = ticks
        .iter()
        .map(|l| l.strip_prefix("tick ").unwrap().parse().unwrap())
        .collect();
    assert!(n.windows(2).all(|w| w[1] == w[0] + 1), "{ticks:?}");
    drop(follow);

    // kubectl top: metrics.k8s.io as metrics-server serves it, from the node's
    // /metrics/resource (scraped by the test kit's apiserver with its kubelet client
    // certificate). The node's CPU and memory come from /proc: always there.
    let (code, out, err) = ran(kubectl(&cluster, &[], &["top", "node", "k1"]));
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert!(
        code == 0 && row.first() == Some(&"k1"),
        "{code} {out} {err}"
    );
    assert!(
        row[1].ends_with('m') && row[3].ends_with("Mi"),
        "CPU in millicores, memory in MiB: {out}"
    );
    // A pod's memory is its cgroup's: with the memory controller on cgroup2 each
    // container has a row; without it (this host binds memory to cgroup v1) the
    // kubelet reports no container memory and metrics-server, like the kit, has no
    // metrics for the pod.
    let memory_accounted = kernlet::sys::cgroup::cgroup2_mount()
        .ok()
        .and_then(|m| std::fs::read_to_string(m.join("cgroup.controllers")).ok())
        .is_some_and(|c| c.split_whitespace().any(|x| x == "memory"));
    let (code, out, err) = ran(kubectl(
        &cluster,
        &[],
        &["top", "pod", "shell", "--containers"],
    ));
    if memory_accounted {
        assert!(code == 0, "{code} {out} {err}");
        let rows: Vec<Vec<&str>> = out
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows.len(), 2, "{out}");
        for r in &rows {
            assert_eq!(r[0], "shell", "{out}");
            assert!(r[2].ends_with('m') && r[3].ends_with("Mi"), "{out}");
        }
    } else {
        assert!(
            code != 0 && err.contains(r#"pods.metrics.k8s.io "shell" not found"#),
            "{code} {out} {err}"
        );
    }

    // exec over both transports: output apart, the exit code through.
    for (transport, ws) in [("SPDY", "false"), ("WebSocket", "true")] {
        let env = [("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", ws)];
        let (code, out, err) = ran(kubectl(
            &cluster,
            &env,
            &[
                "exec",
                "shell",
                "-c",
                "c",
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; exit 3",
            ],
        ));
        assert_eq!((code, out.as_str()), (3, "out\n"), "{transport}: {err}");
        assert!(err.starts_with("err\n"), "{transport}: {err}");
        // stdin to the end.
        let mut child = kubectl(
            &cluster,
            &env,
            &[
                "exec",
                "-i",
                "shell",
                "-c",
                "c",
                "--",
                "sh",
                "-c",
                "cat; echo done",
            ],
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hello\nworld\n").unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hello\nworld\ndone\n",
            "{transport}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A terminal (kubectl's own from script(1)): the command sees a tty of the
        // size kubectl sent.
        let line = format!(
            "stty cols 91 rows 17; KUBECTL_REMOTE_COMMAND_WEBSOCKETS={ws} kubectl --kubeconfig {} exec -it shell -c c -- sh -c 'tty; stty size'",
            cluster.admin_kubeconfig().unwrap().display()
        );
        let (code, out, err) = {
            let mut cmd = std::process::Command::new("script");
            cmd.args(["-qec", &line, "/dev/null"]);
            ran(cmd)
        };
        assert_eq!(code, 0, "{transport}: {out} {err}");
        assert!(
            out.contains("/dev/pts/") && out.contains("17 91"),
            "{transport}: {out:?}"
        );
    }

    // attach over both transports: the container's output as it comes; input refused
    // with the reason (containers run with stdin closed).
    for ws in ["false", "true"] {
        let mut attach = Kubectl(
            kubectl(
                &cluster,
                &[("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", ws)],
                &["attach", "shell", "-c", "c"],
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        );
        let mut lines = std::io::BufReader::new(attach.0.stdout.take().unwrap()).lines();
        let ticks: Vec<u64> = (0..3)
            .map(|_| {
                let l = lines.next().expect("attach ended").unwrap();
                l.strip_prefix("tick ")
                    .unwrap_or_else(|| panic!("{l:?}"))
                    .parse()
                    .unwrap()
            })
            .collect();
        assert!(
            ticks.windows(2).all(|w| w[1] == w[0] + 1),
            "websockets={ws}: {ticks:?}"
        );
        drop(attach);
    }
    let (code, _, err) = ran(kubectl(
        &cluster,
        &[],
        &["attach", "-i", "shell", "-c", "c"],
    ));
    assert!(code != 0 && err.contains("stdin closed"), "{code} {err}");

    // attach -i to a container with `stdin: true, stdinOnce: true` (cat), over both
    // transports: the input reaches it, its echo comes back, and the end of the
    // session closes its stdin, so cat ends and so does the attach, with its code.
    for (name, ws) in [("reader-spdy", "false"), ("reader-ws", "true")] {
        ready_pod(
            &cluster,
            &pods,
            serde_json::json!({
                "metadata": {"name": name},
                "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [
                    {"name": "cat", "image": "busybox:1.36", "command": ["cat"],
                     "stdin": true, "stdinOnce": true}]},
            }),
        )
        .await;
        let mut attach = Kubectl(
            kubectl(
                &cluster,
                &[("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", ws)],
                &["attach", "-i", name, "-c", "cat"],
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        );
        {
            let mut input = attach.0.stdin.take().unwrap();
            input.write_all(b"hello from stdin\n").unwrap();
        }
        let mut out = String::new();
        attach
            .0
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let status = attach.0.wait().unwrap();
        let mut err = String::new();
        let _ = attach.0.stderr.take().unwrap().read_to_string(&mut err);
        assert!(
            status.success() && out.contains("hello from stdin"),
            "websockets={ws}: {status} {out:?} {err}"
        );
        let done = wait_for("cat ended", Duration::from_secs(20), async || {
            let p = pods.get(name).await.ok()?;
            let c = p.status?.container_statuses?.into_iter().next()?;
            c.state?.terminated
        })
        .await;
        assert_eq!(done.exit_code, 0, "{done:?}");
    }

    // attach -it to a container with `stdin: true, tty: true` (a shell), from a terminal
    // (script(1)): the shell sees the size kubectl sent, its output comes back, and
    // `exit` ends it and the attach.
    ready_pod(
        &cluster,
        &pods,
        serde_json::json!({
            "metadata": {"name": "term"},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [
                {"name": "sh", "image": "busybox:1.36", "command": ["sh"], "stdin": true, "tty": true}]},
        }),
    )
    .await;
    let line = format!(
        "stty cols 91 rows 17; kubectl --kubeconfig {} attach -it term -c sh",
        cluster.admin_kubeconfig().unwrap().display()
    );
    // Bounded: a shell that never ends must not hang the test.
    let mut term = std::process::Command::new("timeout")
        .args(["60", "script", "-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut typed = term.stdin.take().unwrap();
    typed
        .write_all(b"sleep 1; echo size=$(stty size); exit\n")
        .unwrap();
    drop(typed);
    let out = term.wait_with_output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && shown.contains("size=17 91"),
        "{} {shown:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The terminal's output is the container's log (stdout), as with kubelet.
    let (code, logs, err) = ran(kubectl(&cluster, &[], &["logs", "term"]));
    assert!(
        code == 0 && logs.contains("size=17 91"),
        "{code} {logs:?} {err}"
    );

    // port-forward over SPDY: a local port to the pod's 8080, an echo both ways, twice.
    let mut pf = Kubectl(
        kubectl(
            &cluster,
            &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")],
            &["port-forward", "pod/shell", ":8080"],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(node.dir("logs").join("port-forward.err")).unwrap())
        .spawn()
        .unwrap(),
    );
    let mut first = String::new();
    // Kept open: kubectl says "Handling connection for …" on it per connection.
    let mut pf_out = std::io::BufReader::new(pf.0.stdout.take().unwrap());
    pf_out.read_line(&mut first).unwrap();
    // "Forwarding from 127.0.0.1:NNNNN -> 8080"
    let local: SocketAddr = first
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{first:?}"));
    for round in 0..2 {
        let mut c = std::net::TcpStream::connect(local).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let msg = format!("ping {round}\n");
        c.write_all(msg.as_bytes()).unwrap();
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got).unwrap_or_else(|e| {
            panic!(
                "{e}: {}\n{}",
                std::fs::read_to_string(node.dir("logs").join("port-forward.err")).unwrap(),
                node.kernlet_log()
            )
        });
        assert_eq!(String::from_utf8_lossy(&got), msg);
    }
    drop(pf);
    drop(pf_out);

    // kubectl debug --target: an ephemeral container in the target's process
    // namespace, reached by exec and logs like any container.
    let (code, out, err) = ran(kubectl(
        &cluster,
        &[],
        &[
            "debug",
            "shell",
            "--image=busybox:1.36",
            "--target=c",
            "-c",
            "debugger",
            "--",
            "sh",
            "-c",
            "echo polo; exec sleep 600",
        ],
    ));
    assert_eq!(code, 0, "{out} {err}");
    wait_for(
        "the debugger running",
        Duration::from_secs(30),
        async || {
            let p = pods.get("shell").await.ok()?;
            let e = p.status?.ephemeral_container_statuses?;
            e.first()?.state.as_ref()?.running.as_ref().map(|_| ())
        },
    )
    .await;
    let (code, out, err) = ran(kubectl(
        &cluster,
        &[],
        &[
            "exec",
            "shell",
            "-c",
            "debugger",
            "--",
            "sh",
            "-c",
            "echo marco; ps -o pid,comm",
        ],
    ));
    assert_eq!(code, 0, "{out} {err}\n{}", node.kernlet_log());
    assert!(out.starts_with("marco\n"), "{out}");
    // PID 1 of the debugger's process namespace is the target's shell loop (its own
    // would be `sleep`).
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1", "sh"]),
        "{out}"
    );
    let (code, out, err) = ran(kubectl(&cluster, &[], &["logs", "shell", "-c", "debugger"]));
    assert_eq!((code, out.as_str()), (0, "polo\n"), "{err}");
    drop(fwd);
}

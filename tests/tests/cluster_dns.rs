//! The lab's cluster DNS answers what the upstream DNS conformance specs ask a cluster's
//! DNS (CoreDNS) for: Service and endpoint A records, SRV per named port, PTR for
//! Service and endpoint addresses, CNAME for ExternalName, pod names — over UDP and
//! TCP. Queried on loopback with hickory's message codec, against either control plane.

#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot go on should stop loudly"
)]

use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kernlet_tests::cluster::Cluster;
use kernlet_tests::dns::ClusterDns;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "default";

struct Server {
    udp: SocketAddr,
    tcp: SocketAddr,
    _dns: ClusterDns,
}

impl Server {
    async fn start(client: kube::Client) -> Self {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (u, t) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        Self {
            udp: u,
            tcp: t,
            _dns: ClusterDns::serve(udp, tcp, client, "cluster.local"),
        }
    }

    /// Asks over UDP and over TCP; both answers must be the same.
    async fn ask(&self, name: &str, qtype: RecordType) -> Message {
        let mut q = Message::new();
        q.set_id(7)
            .set_message_type(MessageType::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        let bytes = q.to_vec().unwrap();
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.send_to(&bytes, self.udp).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), sock.recv(&mut buf))
            .await
            .expect("a UDP answer within 10 s")
            .unwrap();
        let by_udp = Message::from_vec(&buf[..n]).unwrap();
        let mut conn = tokio::net::TcpStream::connect(self.tcp).await.unwrap();
        conn.write_u16(u16::try_from(bytes.len()).unwrap())
            .await
            .unwrap();
        conn.write_all(&bytes).await.unwrap();
        let len = usize::from(conn.read_u16().await.unwrap());
        let mut reply = vec![0u8; len];
        conn.read_exact(&mut reply).await.unwrap();
        let by_tcp = Message::from_vec(&reply).unwrap();
        assert_eq!(by_udp.id(), 7);
        assert_eq!(
            (by_udp.response_code(), by_udp.answers()),
            (by_tcp.response_code(), by_tcp.answers()),
            "{name} {qtype}: UDP and TCP answers differ"
        );
        by_udp
    }
}

fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

async fn create_service(client: &kube::Client, body: serde_json::Value) -> Service {
    let api: Api<Service> = Api::namespaced(client.clone(), NS);
    let svc: Service = serde_json::from_value(body).unwrap();
    let name = svc.metadata.name.clone().unwrap();
    let _ = api.delete(&name, &DeleteParams::default()).await;
    api.create(&PostParams::default(), &svc).await.unwrap()
}

#[tokio::test]
async fn cluster_dns_answers_services_endpoints_srv_ptr_and_external_names() {
    let cluster = Cluster::start(&[]).await.unwrap();
    let client = cluster.admin().await.unwrap();
    let web = create_service(
        &client,
        json!({"metadata": {"name": "dns-web"}, "spec": {"ports": [
            {"name": "http", "port": 80, "protocol": "TCP"}]}}),
    )
    .await;
    let web_ip: IpAddr = web.spec.unwrap().cluster_ip.unwrap().parse().unwrap();
    create_service(
        &client,
        json!({"metadata": {"name": "dns-hl"}, "spec": {"clusterIP": "None", "ports": [
            {"name": "http", "port": 80, "protocol": "TCP"}]}}),
    )
    .await;
    create_service(
        &client,
        json!({"metadata": {"name": "dns-ext"}, "spec": {"type": "ExternalName",
            "externalName": "foo.example.com"}}),
    )
    .await;
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "dns-hl-1", "labels": {"kubernetes.io/service-name": "dns-hl"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.244.1.5"], "hostname": "q-2", "conditions": {"ready": true}},
            {"addresses": ["10.244.1.6"], "conditions": {"ready": true}},
            {"addresses": ["10.244.1.7"], "conditions": {"ready": false}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }))
    .unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    let _ = slices.delete("dns-hl-1", &DeleteParams::default()).await;
    slices.create(&PostParams::default(), &slice).await.unwrap();
    let dns = Server::start(client.clone()).await;
    let fq = |n: &str| format!("{n}.{NS}.svc.cluster.local.");

    // A Service with a ClusterIP: its address; SRV names the Service, PTR comes back.
    assert_eq!(
        addresses(&dns.ask(&fq("dns-web"), RecordType::A).await),
        [web_ip]
    );
    let srv = dns
        .ask(&format!("_http._tcp.{}", fq("dns-web")), RecordType::SRV)
        .await;
    let RData::SRV(s) = srv.answers()[0].data() else {
        panic!("not SRV: {srv:?}")
    };
    assert_eq!((s.port(), s.target().to_ascii()), (80, fq("dns-web")));
    assert!(
        srv.additionals()
            .iter()
            .any(|r| matches!(r.data(), RData::A(a) if IpAddr::V4(a.0) == web_ip))
    );
    let IpAddr::V4(v4) = web_ip else {
        panic!("{web_ip} is not IPv4")
    };
    let o = v4.octets();
    let reverse = format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0]);
    let ptr = dns.ask(&reverse, RecordType::PTR).await;
    assert!(
        matches!(ptr.answers()[0].data(), RData::PTR(p) if p.0.to_ascii() == fq("dns-web")),
        "{ptr:?}"
    );

    // Headless: the ready endpoints, each by hostname or dashed address.
    let mut hl = addresses(&dns.ask(&fq("dns-hl"), RecordType::A).await);
    hl.sort();
    let ready: Vec<IpAddr> = vec!["10.244.1.5".parse().unwrap(), "10.244.1.6".parse().unwrap()];
    assert_eq!(hl, ready);
    let q2 = dns
        .ask(&format!("q-2.{}", fq("dns-hl")), RecordType::A)
        .await;
    assert_eq!(addresses(&q2), [ready[0]]);
    let dashed = dns
        .ask(&format!("10-244-1-6.{}", fq("dns-hl")), RecordType::A)
        .await;
    assert_eq!(addresses(&dashed), [ready[1]]);
    let srv = dns
        .ask(&format!("_http._tcp.{}", fq("dns-hl")), RecordType::SRV)
        .await;
    let mut targets: Vec<(u16, String)> = srv
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::SRV(s) => Some((s.port(), s.target().to_ascii())),
            _ => None,
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        [
            (8080, format!("10-244-1-6.{}", fq("dns-hl"))),
            (8080, format!("q-2.{}", fq("dns-hl")))
        ]
    );
    let ptr = dns.ask("5.1.244.10.in-addr.arpa.", RecordType::PTR).await;
    assert!(
        matches!(ptr.answers()[0].data(),
            RData::PTR(p) if p.0.to_ascii() == format!("q-2.{}", fq("dns-hl"))),
        "{ptr:?}"
    );

    // ExternalName: a CNAME. Pods by dashed address. The rest: NXDOMAIN.
    let cname = dns.ask(&fq("dns-ext"), RecordType::CNAME).await;
    assert!(
        matches!(cname.answers()[0].data(), RData::CNAME(c) if c.0.to_ascii() == "foo.example.com."),
        "{cname:?}"
    );
    let pod = dns
        .ask("10-244-1-9.default.pod.cluster.local.", RecordType::A)
        .await;
    assert_eq!(addresses(&pod), ["10.244.1.9".parse::<IpAddr>().unwrap()]);
    for missing in [
        fq("dns-none"),
        format!("q-3.{}", fq("dns-hl")),
        "kubernetes.default.svc.cluster.local.default.svc.cluster.local.".into(),
        "example.com.".into(),
        "9.9.9.9.in-addr.arpa.".into(),
    ] {
        let m = dns.ask(&missing, RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::NXDomain, "{missing}");
    }
    // A name that exists without records of the type asked: NOERROR, no answers.
    let none = dns.ask(&fq("dns-web"), RecordType::AAAA).await;
    assert_eq!(
        (none.response_code(), none.answers().len()),
        (ResponseCode::NoError, 0)
    );
}

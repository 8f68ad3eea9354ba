//! A cluster DNS for labs, answering `cluster.local` names from the apiserver the way
//! CoreDNS's kubernetes plugin does (see [`names`] for the schema and [`records`] for
//! what each name holds: A/AAAA, CNAME, SRV, PTR), over UDP and TCP. It listens on
//! port 53 of the lab bridge (198.18.0.1), where a `kube-system/kube-dns` Service
//! without a selector points (see [`ClusterDns::publish`]); names outside the domain
//! get NXDOMAIN (a lab has no upstream).

mod names;
mod records;

use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, PostParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::simnode::{BRIDGE_IP, Lab};

/// The Service address pods are given as their nameserver (kubeadm's default).
pub const CLUSTER_DNS_IP: &str = "10.96.0.10";
/// How long a TCP client may leave its connection idle.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The ports of `kube-dns`, as kubeadm's CoreDNS Service has them (name, protocol).
const DNS_PORTS: [(&str, &str); 2] = [("dns", "UDP"), ("dns-tcp", "TCP")];

/// The running server; stops with its tasks when dropped.
pub struct ClusterDns {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ClusterDns {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl ClusterDns {
    /// Serves `domain` from `client`'s apiserver on 198.18.0.1:53 (UDP and TCP) of `lab`.
    pub fn start(lab: &Lab, client: kube::Client, domain: &str) -> anyhow::Result<Self> {
        let udp = UdpSocket::from_std(lab.udp_on_bridge(53)?)?;
        let tcp = TcpListener::from_std(lab.tcp_on_bridge(53)?)?;
        Ok(Self::serve(udp, tcp, client, domain))
    }

    /// Serves `domain` from `client`'s apiserver on sockets already bound.
    pub fn serve(udp: UdpSocket, tcp: TcpListener, client: kube::Client, domain: &str) -> Self {
        let domain = domain.trim_matches('.').to_ascii_lowercase();
        let (c, d) = (client.clone(), domain.clone());
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                if let Some(reply) = answer(&c, &d, &buf[..n], 512).await {
                    let _ = udp.send_to(&reply, from).await;
                }
            }
        });
        let tcp_task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = tcp.accept().await else {
                    continue;
                };
                let (c, d) = (client.clone(), domain.clone());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(TCP_IDLE, serve_tcp(conn, &c, &d)).await;
                });
            }
        });
        Self {
            tasks: vec![udp_task, tcp_task],
        }
    }

    /// Creates `kube-system/kube-dns` at 10.96.0.10 with an EndpointSlice pointing at
    /// this server, as a cluster's DNS Service is reached.
    pub async fn publish(client: &kube::Client) -> anyhow::Result<()> {
        let labels = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                    .collect(),
            )
        };
        let svc = Service {
            metadata: ObjectMeta {
                name: Some("kube-dns".into()),
                labels: labels(&[("k8s-app", "kube-dns")]),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(CLUSTER_DNS_IP.into()),
                ports: Some(
                    DNS_PORTS
                        .iter()
                        .map(|(name, proto)| ServicePort {
                            name: Some((*name).into()),
                            port: 53,
                            protocol: Some((*proto).into()),
                            target_port: Some(IntOrString::Int(53)),
                            ..ServicePort::default()
                        })
                        .collect(),
                ),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        };
        Api::<Service>::namespaced(client.clone(), "kube-system")
            .create(&PostParams::default(), &svc)
            .await?;
        let slice = EndpointSlice {
            metadata: ObjectMeta {
                name: Some("kube-dns-lab".into()),
                labels: labels(&[
                    ("kubernetes.io/service-name", "kube-dns"),
                    ("endpointslice.kubernetes.io/managed-by", "kernlet-lab"),
                ]),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(vec![Endpoint {
                addresses: vec![BRIDGE_IP.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    ..EndpointConditions::default()
                }),
                ..Endpoint::default()
            }]),
            ports: Some(
                DNS_PORTS
                    .iter()
                    .map(|(name, proto)| EndpointPort {
                        name: Some((*name).into()),
                        port: Some(53),
                        protocol: Some((*proto).into()),
                        ..EndpointPort::default()
                    })
                    .collect(),
            ),
        };
        Api::<EndpointSlice>::namespaced(client.clone(), "kube-system")
            .create(&PostParams::default(), &slice)
            .await?;
        Ok(())
    }
}

/// Answers the queries of one TCP connection (each framed by a two-byte length).
async fn serve_tcp(
    mut conn: TcpStream,
    client: &kube::Client,
    domain: &str,
) -> std::io::Result<()> {
    loop {
        let len = usize::from(conn.read_u16().await?);
        let mut buf = vec![0u8; len];
        conn.read_exact(&mut buf).await?;
        let Some(reply) = answer(client, domain, &buf, usize::from(u16::MAX)).await else {
            return Ok(());
        };
        let len = u16::try_from(reply.len()).unwrap_or(u16::MAX);
        conn.write_u16(len).await?;
        conn.write_all(&reply).await?;
    }
}

/// The response to the query in `packet` (None for what is not a query), truncated
/// (TC set, no records) when it exceeds `limit` bytes.
async fn answer(
    client: &kube::Client,
    domain: &str,
    packet: &[u8],
    limit: usize,
) -> Option<Vec<u8>> {
    let query = Message::from_vec(packet).ok()?;
    if query.message_type() != MessageType::Query {
        return None;
    }
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_authoritative(true)
        .set_recursion_desired(query.recursion_desired());
    let [q] = query.queries() else {
        reply.set_response_code(ResponseCode::FormErr);
        return reply.to_vec().ok();
    };
    reply.add_query(q.clone());
    if query.op_code() != OpCode::Query {
        reply.set_response_code(ResponseCode::NotImp);
        return reply.to_vec().ok();
    }
    let found = records::lookup(client, domain, q.name(), q.query_type()).await;
    if !found.exists {
        reply.set_response_code(ResponseCode::NXDomain);
    }
    reply.add_answers(found.answers);
    reply.add_additionals(found.additional);
    let bytes = reply.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    reply.take_answers();
    reply.take_additionals();
    reply.set_truncated(true);
    reply.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_queries_and_garbage_get_no_answer() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // A client is needed only for lookups; none of these reach one.
        let client = rt.block_on(async {
            let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
            kube::Client::try_from(config).unwrap()
        });
        rt.block_on(async {
            assert!(
                answer(&client, "cluster.local", b"\x00\x01garbage", 512)
                    .await
                    .is_none()
            );
            let mut response = Message::new();
            response.set_message_type(MessageType::Response);
            let bytes = response.to_vec().unwrap();
            assert!(
                answer(&client, "cluster.local", &bytes, 512)
                    .await
                    .is_none()
            );
            // No question at all: FORMERR.
            let bytes = Message::new().to_vec().unwrap();
            let reply =
                Message::from_vec(&answer(&client, "cluster.local", &bytes, 512).await.unwrap())
                    .unwrap();
            assert_eq!(reply.response_code(), ResponseCode::FormErr);
        });
    }
}

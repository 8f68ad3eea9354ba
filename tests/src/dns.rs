//! A cluster DNS for labs, answering `cluster.local` names from the apiserver the way
//! CoreDNS's kubernetes plugin does: `<svc>.<ns>.svc` (ClusterIPs; ready endpoints of
//! a headless Service; a CNAME for an ExternalName), `<hostname>.<svc>.<ns>.svc` (an
//! endpoint with that hostname) and `<a-b-c-d>.<ns>.pod`. It listens on UDP port 53 of
//! the lab bridge (198.18.0.1), where a `kube-system/kube-dns` Service without a
//! selector points (see [`ClusterDns::publish`]); names outside the domain get
//! NXDOMAIN (a lab has no upstream).

use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

use crate::simnode::{BRIDGE_IP, Lab};

/// The Service address pods are given as their nameserver (kubeadm's default).
pub const CLUSTER_DNS_IP: &str = "10.96.0.10";
const TTL: u32 = 5;
const A: u16 = 1;
const CNAME: u16 = 5;
const AAAA: u16 = 28;
const ANY: u16 = 255;

/// The running server; stops with the task when dropped.
pub struct ClusterDns {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ClusterDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a name is, as far as the cluster knows.
enum Answer {
    Addresses(Vec<IpAddr>),
    Alias(String),
    NoSuchName,
}

impl ClusterDns {
    /// Serves `domain` from `client`'s apiserver on 198.18.0.1:53 of `lab`.
    pub fn start(lab: &Lab, client: kube::Client, domain: &str) -> anyhow::Result<Self> {
        let socket = lab.udp_on_bridge(53)?;
        let socket = tokio::net::UdpSocket::from_std(socket)?;
        let domain = domain.trim_matches('.').to_ascii_lowercase();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let Some(q) = Query::parse(&buf[..n]) else {
                    continue;
                };
                let answer = resolve(&client, &domain, &q.name).await;
                let reply = q.reply(&answer, q.qtype, &domain, &client).await;
                let _ = socket.send_to(&reply, from).await;
            }
        });
        Ok(Self { task })
    }

    /// Creates `kube-system/kube-dns` at 10.96.0.10 with an EndpointSlice pointing at
    /// this server, as a cluster's DNS Service is reached.
    pub async fn publish(client: &kube::Client) -> anyhow::Result<()> {
        let services: Api<Service> = Api::namespaced(client.clone(), "kube-system");
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "kube-dns", "labels": {"k8s-app": "kube-dns"}},
            "spec": {"clusterIP": CLUSTER_DNS_IP, "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53}]},
        }))?;
        services.create(&PostParams::default(), &svc).await?;
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "kube-system");
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "kube-dns-lab", "labels": {
                "kubernetes.io/service-name": "kube-dns",
                "endpointslice.kubernetes.io/managed-by": "kernlet-lab"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [BRIDGE_IP.to_string()], "conditions": {"ready": true}}],
            "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}],
        }))?;
        slices.create(&PostParams::default(), &slice).await?;
        Ok(())
    }
}

/// One question of a query.
struct Query {
    id: u16,
    rd: bool,
    /// The question section as sent (name, type, class).
    question: Vec<u8>,
    name: String,
    qtype: u16,
}

impl Query {
    fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < 12 || u16::from_be_bytes([b[4], b[5]]) != 1 || b[2] & 0x80 != 0 {
            return None;
        }
        let mut at = 12;
        let mut labels = Vec::new();
        loop {
            let len = usize::from(*b.get(at)?);
            at += 1;
            if len == 0 {
                break;
            }
            if len > 63 {
                return None;
            }
            labels.push(String::from_utf8_lossy(b.get(at..at + len)?).to_ascii_lowercase());
            at += len;
        }
        let qtype = u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]);
        Some(Self {
            id: u16::from_be_bytes([b[0], b[1]]),
            rd: b[2] & 0x01 != 0,
            question: b.get(12..at + 4)?.to_vec(),
            name: labels.join("."),
            qtype,
        })
    }

    /// The response: records of `answer` (a CNAME followed by its target's addresses
    /// when the target is in the domain) of the asked type.
    async fn reply(
        &self,
        answer: &Answer,
        qtype: u16,
        domain: &str,
        client: &kube::Client,
    ) -> Vec<u8> {
        let mut records: Vec<Vec<u8>> = Vec::new();
        let mut rcode = 0u8;
        match answer {
            Answer::NoSuchName => rcode = 3,
            Answer::Addresses(ips) => {
                records.extend(address_records(&[0xc0, 0x0c], ips, qtype));
            }
            Answer::Alias(target) => {
                records.push(record(&[0xc0, 0x0c], CNAME, &encode_name(target)));
                if let Answer::Addresses(ips) = resolve(client, domain, target).await {
                    records.extend(address_records(&encode_name(target), &ips, qtype));
                }
            }
        }
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.push(0x84 | u8::from(self.rd)); // QR, AA, RD as asked
        out.push(rcode);
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&u16::try_from(records.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&self.question);
        for r in records {
            out.extend_from_slice(&r);
        }
        out
    }
}

fn address_records(owner: &[u8], ips: &[IpAddr], qtype: u16) -> Vec<Vec<u8>> {
    ips.iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) if matches!(qtype, A | ANY) => Some(record(owner, A, &v4.octets())),
            IpAddr::V6(v6) if matches!(qtype, AAAA | ANY) => {
                Some(record(owner, AAAA, &v6.octets()))
            }
            _ => None,
        })
        .collect()
}

fn record(owner: &[u8], rtype: u16, data: &[u8]) -> Vec<u8> {
    let mut r = owner.to_vec();
    r.extend_from_slice(&rtype.to_be_bytes());
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&TTL.to_be_bytes());
    r.extend_from_slice(&u16::try_from(data.len()).unwrap_or(0).to_be_bytes());
    r.extend_from_slice(data);
    r
}

fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.trim_matches('.').split('.').filter(|l| !l.is_empty()) {
        out.push(u8::try_from(label.len().min(63)).unwrap_or(63));
        out.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    out.push(0);
    out
}

/// What `name` is in the cluster.
async fn resolve(client: &kube::Client, domain: &str, name: &str) -> Answer {
    let Some(local) = name.strip_suffix(domain).and_then(|n| n.strip_suffix('.')) else {
        return Answer::NoSuchName;
    };
    let parts: Vec<&str> = local.split('.').collect();
    match parts.as_slice() {
        [svc, ns, "svc"] => service(client, ns, svc, None).await,
        [host, svc, ns, "svc"] => service(client, ns, svc, Some(host)).await,
        [ip, _ns, "pod"] => match ip.replace('-', ".").parse::<Ipv4Addr>() {
            Ok(v4) => Answer::Addresses(vec![IpAddr::V4(v4)]),
            Err(_) => Answer::NoSuchName,
        },
        _ => Answer::NoSuchName,
    }
}

async fn service(client: &kube::Client, ns: &str, name: &str, host: Option<&str>) -> Answer {
    let Ok(Some(svc)) = Api::<Service>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
    else {
        return Answer::NoSuchName;
    };
    let spec = svc.spec.unwrap_or_default();
    if host.is_none() {
        if spec.type_.as_deref() == Some("ExternalName") {
            return match spec.external_name {
                Some(target) => Answer::Alias(target),
                None => Answer::NoSuchName,
            };
        }
        let ips: Vec<IpAddr> = spec
            .cluster_ips
            .unwrap_or_default()
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        if !ips.is_empty() {
            return Answer::Addresses(ips);
        }
    }
    // Headless: the ready endpoints (with `host`, the one of that hostname).
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={name}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let ips: Vec<IpAddr> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|e| {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
                || spec.publish_not_ready_addresses == Some(true);
            ready && host.is_none_or(|h| e.hostname.as_deref() == Some(h))
        })
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse().ok())
        .collect();
    if ips.is_empty() && host.is_some() {
        return Answer::NoSuchName;
    }
    Answer::Addresses(ips)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_and_names_encode() {
        // id 0x1234, RD, one question: web.default.svc.cluster.local A IN.
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend(encode_name("web.default.svc.cluster.local"));
        q.extend([0, 1, 0, 1]);
        let parsed = Query::parse(&q).unwrap();
        assert_eq!(parsed.name, "web.default.svc.cluster.local");
        assert_eq!((parsed.id, parsed.qtype, parsed.rd), (0x1234, A, true));
        assert_eq!(parsed.question, q[12..]);
        let r = record(&[0xc0, 0x0c], A, &[10, 96, 0, 1]);
        assert_eq!(r.len(), 2 + 2 + 2 + 4 + 2 + 4);
    }
}

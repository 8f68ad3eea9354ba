//! The records a name has, read from the apiserver the way CoreDNS's kubernetes plugin
//! builds them: a Service's ClusterIPs (or, headless, its ready endpoints; or a CNAME
//! for an ExternalName), endpoints by hostname or dashed address, SRV per named port
//! (with the targets' addresses as additional records), PTR for Service and endpoint
//! addresses, and pod names from their dashed address.

use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SRV};
use hickory_proto::rr::{Name as DnsName, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use kube::api::{Api, ListParams};

use super::names::{Name, classify, dash};

const TTL: u32 = 5;

/// The answer to one question.
#[derive(Default)]
pub struct Lookup {
    /// False: NXDOMAIN.
    pub exists: bool,
    pub answers: Vec<Record>,
    pub additional: Vec<Record>,
}

impl Lookup {
    fn none() -> Self {
        Self::default()
    }

    fn found() -> Self {
        Self {
            exists: true,
            ..Self::default()
        }
    }
}

/// What the cluster at `client` answers for `qname` of `qtype` in `domain`.
pub async fn lookup(
    client: &kube::Client,
    domain: &str,
    qname: &DnsName,
    qtype: RecordType,
) -> Lookup {
    let text = qname.to_lowercase().to_ascii();
    let text = text.trim_end_matches('.');
    let cluster = Cluster { client, domain };
    match classify(text, domain) {
        Name::Service { ns, svc } => cluster.service(qname, qtype, &ns, &svc).await,
        Name::Endpoint { ns, svc, endpoint } => {
            let Some(service) = cluster.get_service(&ns, &svc).await else {
                return Lookup::none();
            };
            let spec = service.spec.unwrap_or_default();
            let (_, eps) = cluster.endpoints(&ns, &svc, &spec).await;
            let ips: Vec<IpAddr> = eps
                .iter()
                .filter(|(name, _)| *name == endpoint)
                .map(|(_, ip)| *ip)
                .collect();
            if ips.is_empty() {
                return Lookup::none();
            }
            let mut l = Lookup::found();
            l.answers = addresses(qname, &ips, qtype);
            l
        }
        Name::Port {
            ns,
            svc,
            port,
            proto,
        } => cluster.srv(qname, qtype, &ns, &svc, &port, &proto).await,
        Name::Pod(ip) => {
            let mut l = Lookup::found();
            l.answers = addresses(qname, &[ip], qtype);
            l
        }
        Name::Reverse(ip) => match cluster.reverse(&ip).await {
            Some(target) => {
                let mut l = Lookup::found();
                if matches!(qtype, RecordType::PTR | RecordType::ANY) {
                    l.answers.push(record(qname, RData::PTR(PTR(target))));
                }
                l
            }
            None => Lookup::none(),
        },
        Name::Nothing | Name::Outside => Lookup::none(),
    }
}

/// The cluster's objects, read per question.
struct Cluster<'a> {
    client: &'a kube::Client,
    domain: &'a str,
}

impl Cluster<'_> {
    fn fqdn(&self, labels: &[&str]) -> DnsName {
        let text = format!("{}.{}.", labels.join("."), self.domain);
        DnsName::from_ascii(&text).unwrap_or_else(|_| DnsName::root())
    }

    async fn get_service(&self, ns: &str, svc: &str) -> Option<Service> {
        Api::<Service>::namespaced(self.client.clone(), ns)
            .get_opt(svc)
            .await
            .ok()
            .flatten()
    }

    /// A Service's name: its ClusterIPs, its ready endpoints when headless, a CNAME
    /// (and, inside the domain, the target's addresses) for an ExternalName.
    async fn service(&self, qname: &DnsName, qtype: RecordType, ns: &str, svc: &str) -> Lookup {
        let Some(service) = self.get_service(ns, svc).await else {
            return Lookup::none();
        };
        let spec = service.spec.unwrap_or_default();
        let mut l = Lookup::found();
        if spec.type_.as_deref() == Some("ExternalName") {
            let Some(target) = spec.external_name.as_deref() else {
                return l;
            };
            let Ok(target) = DnsName::from_ascii(format!("{}.", target.trim_end_matches('.')))
            else {
                return l;
            };
            l.answers
                .push(record(qname, RData::CNAME(CNAME(target.clone()))));
            if qtype != RecordType::CNAME {
                let chased = Box::pin(lookup(self.client, self.domain, &target, qtype)).await;
                l.answers.extend(chased.answers);
            }
            return l;
        }
        let ips = cluster_ips(&spec);
        if !ips.is_empty() {
            l.answers = addresses(qname, &ips, qtype);
            return l;
        }
        let (_, eps) = self.endpoints(ns, svc, &spec).await;
        let ips: Vec<IpAddr> = eps.iter().map(|(_, ip)| *ip).collect();
        l.answers = addresses(qname, &ips, qtype);
        l
    }

    /// SRV records of a Service's named port: the Service name for one with a
    /// ClusterIP, each endpoint's name when headless.
    async fn srv(
        &self,
        qname: &DnsName,
        qtype: RecordType,
        ns: &str,
        svc: &str,
        port: &str,
        proto: &str,
    ) -> Lookup {
        let Some(service) = self.get_service(ns, svc).await else {
            return Lookup::none();
        };
        let spec = service.spec.unwrap_or_default();
        let same_proto = |p: Option<&str>| p.unwrap_or("TCP").eq_ignore_ascii_case(proto);
        let mut l = Lookup::found();
        let want_srv = matches!(qtype, RecordType::SRV | RecordType::ANY);
        let ips = cluster_ips(&spec);
        if !ips.is_empty() {
            let target = self.fqdn(&[svc, ns, "svc"]);
            for p in spec.ports.iter().flatten() {
                if p.name.as_deref() == Some(port) && same_proto(p.protocol.as_deref()) {
                    if want_srv {
                        let port = u16::try_from(p.port).unwrap_or(0);
                        l.answers.push(srv_record(qname, 100, port, target.clone()));
                    }
                    l.additional
                        .extend(addresses(&target, &ips, RecordType::ANY));
                }
            }
            return l;
        }
        let (ports, eps) = self.endpoints(ns, svc, &spec).await;
        let matching: Vec<u16> = ports
            .iter()
            .filter(|(name, p, _)| name == port && same_proto(Some(p)))
            .map(|(_, _, n)| *n)
            .collect();
        let count = u16::try_from(eps.len().max(1)).unwrap_or(u16::MAX);
        for number in matching {
            for (name, ip) in &eps {
                let target = self.fqdn(&[name, svc, ns, "svc"]);
                if want_srv {
                    l.answers
                        .push(srv_record(qname, 100 / count, number, target.clone()));
                }
                l.additional
                    .extend(addresses(&target, &[*ip], RecordType::ANY));
            }
        }
        l
    }

    /// The endpoints of Service `svc` (with `spec`) as `(name, address)` (ready ones,
    /// or all with `publishNotReadyAddresses`) and the ports of its slices as `(name,
    /// protocol, number)`.
    #[allow(clippy::type_complexity, reason = "two plain lists, named in the doc")]
    async fn endpoints(
        &self,
        ns: &str,
        svc: &str,
        spec: &ServiceSpec,
    ) -> (Vec<(String, String, u16)>, Vec<(String, IpAddr)>) {
        let all = spec.publish_not_ready_addresses == Some(true);
        let slices = Api::<EndpointSlice>::namespaced(self.client.clone(), ns)
            .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let mut ports = Vec::new();
        let mut eps = Vec::new();
        for slice in &slices {
            for p in slice.ports.iter().flatten() {
                if let Some(n) = p.port.and_then(|n| u16::try_from(n).ok()) {
                    let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                    ports.push((p.name.clone().unwrap_or_default(), proto, n));
                }
            }
            for e in slice.endpoints.iter().flatten() {
                let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if ready || all {
                    eps.extend(named_addresses(e));
                }
            }
        }
        (ports, eps)
    }

    /// The name of an address: a Service's when it is a ClusterIP, else an endpoint's.
    async fn reverse(&self, ip: &IpAddr) -> Option<DnsName> {
        let services = Api::<Service>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .ok()?;
        for s in &services.items {
            let spec = s.spec.clone().unwrap_or_default();
            if cluster_ips(&spec).contains(ip) {
                let ns = s.metadata.namespace.as_deref().unwrap_or("default");
                let name = s.metadata.name.as_deref().unwrap_or_default();
                return Some(self.fqdn(&[name, ns, "svc"]));
            }
        }
        let slices = Api::<EndpointSlice>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .ok()?;
        for slice in &slices.items {
            let labels = slice.metadata.labels.as_ref();
            let Some(svc) = labels.and_then(|l| l.get("kubernetes.io/service-name")) else {
                continue;
            };
            let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
            for e in slice.endpoints.iter().flatten() {
                if let Some((name, _)) = named_addresses(e).into_iter().find(|(_, a)| a == ip) {
                    return Some(self.fqdn(&[&name, svc, ns, "svc"]));
                }
            }
        }
        None
    }
}

/// An endpoint's addresses, each with the name DNS gives it (the hostname, or the
/// dashed address).
fn named_addresses(e: &Endpoint) -> Vec<(String, IpAddr)> {
    e.addresses
        .iter()
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| (e.hostname.clone().unwrap_or_else(|| dash(&ip)), ip))
        .collect()
}

fn cluster_ips(spec: &ServiceSpec) -> Vec<IpAddr> {
    spec.cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .fold(Vec::new(), |mut v, ip| {
            if !v.contains(&ip) {
                v.push(ip);
            }
            v
        })
}

/// A/AAAA records of `ips` that answer `qtype`.
fn addresses(owner: &DnsName, ips: &[IpAddr], qtype: RecordType) -> Vec<Record> {
    ips.iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) if matches!(qtype, RecordType::A | RecordType::ANY) => {
                Some(record(owner, RData::A(A(*v4))))
            }
            IpAddr::V6(v6) if matches!(qtype, RecordType::AAAA | RecordType::ANY) => {
                Some(record(owner, RData::AAAA(AAAA(*v6))))
            }
            _ => None,
        })
        .collect()
}

fn srv_record(owner: &DnsName, weight: u16, port: u16, target: DnsName) -> Record {
    record(owner, RData::SRV(SRV::new(0, weight.max(1), port, target)))
}

fn record(owner: &DnsName, data: RData) -> Record {
    Record::from_rdata(owner.clone(), TTL, data)
}

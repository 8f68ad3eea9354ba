//! What a query name asks about, in the schema of CoreDNS's kubernetes plugin (the
//! Kubernetes DNS specification): `<svc>.<ns>.svc.<domain>`,
//! `<endpoint>.<svc>.<ns>.svc.<domain>`, `_<port>._<proto>.<svc>.<ns>.svc.<domain>`,
//! `<a-b-c-d>.<ns>.pod.<domain>` and reverse names under `in-addr.arpa`/`ip6.arpa`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A query name, classified.
#[derive(Debug, PartialEq, Eq)]
pub enum Name {
    /// `<svc>.<ns>.svc.<domain>`.
    Service { ns: String, svc: String },
    /// `<endpoint>.<svc>.<ns>.svc.<domain>`: an endpoint's hostname, or its address
    /// with dashes when it has none.
    Endpoint {
        ns: String,
        svc: String,
        endpoint: String,
    },
    /// `_<port>._<proto>.<svc>.<ns>.svc.<domain>` (SRV).
    Port {
        ns: String,
        svc: String,
        port: String,
        proto: String,
    },
    /// `<a-b-c-d>.<ns>.pod.<domain>`.
    Pod(IpAddr),
    /// A reverse name of an address (PTR).
    Reverse(IpAddr),
    /// Inside the domain (or a reverse zone) but not a name that can exist.
    Nothing,
    /// Outside the domain.
    Outside,
}

/// Classifies `name` (lowercase, no trailing dot) for the cluster `domain`.
pub fn classify(name: &str, domain: &str) -> Name {
    if let Some(ip) = reverse(name) {
        return Name::Reverse(ip);
    }
    if name.ends_with(".in-addr.arpa") || name.ends_with(".ip6.arpa") {
        return Name::Nothing;
    }
    let Some(local) = name.strip_suffix(domain).and_then(|n| n.strip_suffix('.')) else {
        return Name::Outside;
    };
    let parts: Vec<&str> = local.split('.').collect();
    let owned = |s: &&str| (*s).to_string();
    match parts.as_slice() {
        [svc, ns, "svc"] => Name::Service {
            ns: owned(ns),
            svc: owned(svc),
        },
        [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
            Name::Port {
                ns: owned(ns),
                svc: owned(svc),
                port: port[1..].to_string(),
                proto: proto[1..].to_string(),
            }
        }
        [endpoint, svc, ns, "svc"] => Name::Endpoint {
            ns: owned(ns),
            svc: owned(svc),
            endpoint: owned(endpoint),
        },
        [ip, _ns, "pod"] => dashed(ip).map_or(Name::Nothing, Name::Pod),
        _ => Name::Nothing,
    }
}

/// The address in a dashed label (`10-244-1-5`, `fd00--1`).
pub fn dashed(label: &str) -> Option<IpAddr> {
    if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// The dashed label of an address, as endpoints without a hostname are named.
pub fn dash(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// The address of a reverse name: `d.c.b.a.in-addr.arpa` or 32 nibbles of `ip6.arpa`.
fn reverse(name: &str) -> Option<IpAddr> {
    if let Some(rest) = name.strip_suffix(".in-addr.arpa") {
        let mut octets: Vec<u8> = rest
            .split('.')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        if octets.len() != 4 {
            return None;
        }
        octets.reverse();
        return Some(IpAddr::V4(Ipv4Addr::new(
            octets[0], octets[1], octets[2], octets[3],
        )));
    }
    let rest = name.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<u8> = rest
        .split('.')
        .map(|n| u8::from_str_radix(n, 16).ok().filter(|_| n.len() == 1))
        .collect::<Option<_>>()?;
    if nibbles.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, pair) in nibbles.rchunks(2).enumerate() {
        bytes[i] = pair[1] << 4 | pair[0];
    }
    Some(IpAddr::V6(Ipv6Addr::from(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "cluster.local";

    #[test]
    fn names_are_classified_as_coredns_reads_them() {
        assert_eq!(
            classify("web.default.svc.cluster.local", D),
            Name::Service {
                ns: "default".into(),
                svc: "web".into()
            }
        );
        assert_eq!(
            classify("_http._tcp.web.default.svc.cluster.local", D),
            Name::Port {
                ns: "default".into(),
                svc: "web".into(),
                port: "http".into(),
                proto: "tcp".into()
            }
        );
        assert_eq!(
            classify("q-2.web.default.svc.cluster.local", D),
            Name::Endpoint {
                ns: "default".into(),
                svc: "web".into(),
                endpoint: "q-2".into()
            }
        );
        assert_eq!(
            classify("10-244-1-5.default.pod.cluster.local", D),
            Name::Pod("10.244.1.5".parse().unwrap())
        );
        assert_eq!(
            classify("10.0.96.10.in-addr.arpa", D),
            Name::Reverse("10.96.0.10".parse().unwrap())
        );
        // What a search list makes of a name already qualified.
        assert_eq!(
            classify(
                "kubernetes.default.svc.cluster.local.ns.svc.cluster.local",
                D
            ),
            Name::Nothing
        );
        assert_eq!(classify("example.com", D), Name::Outside);
        assert_eq!(classify("1.2.in-addr.arpa", D), Name::Nothing);
    }

    #[test]
    fn ipv6_reverse_names_and_dashes_round_trip() {
        let ip: IpAddr = "fd00::1:2".parse().unwrap();
        let IpAddr::V6(v6) = ip else { unreachable!() };
        let nibbles: Vec<String> = v6
            .octets()
            .iter()
            .rev()
            .flat_map(|b| [format!("{:x}", b & 0xf), format!("{:x}", b >> 4)])
            .collect();
        let name = format!("{}.ip6.arpa", nibbles.join("."));
        assert_eq!(classify(&name, D), Name::Reverse(ip));
        assert_eq!(dashed(&dash(&ip)), Some(ip));
        let v4: IpAddr = "10.96.0.1".parse().unwrap();
        assert_eq!(dash(&v4), "10-96-0-1");
        assert_eq!(dashed("10-96-0-1"), Some(v4));
    }
}

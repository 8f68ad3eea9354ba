//! A pod's `/etc/resolv.conf` and `/etc/hosts`, as kubelet writes them: by its
//! `dnsPolicy` (ClusterFirst, ClusterFirstWithHostNet, Default, None) and `dnsConfig`,
//! from the cluster's DNS settings and the node's own resolver configuration; hosts
//! with the pod's address, its FQDN when it has a subdomain, and its `hostAliases`.

use k8s_openapi::api::core::v1::PodSpec;

/// kubelet's limits on a resolv.conf: nameservers and search domains.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

/// The cluster's DNS (`clusterDNS`, `clusterDomain` of the kubelet configuration).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterDns {
    pub servers: Vec<String>,
    pub domain: String,
}

/// A resolver configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolv {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    /// `name` or `name:value`.
    pub options: Vec<String>,
}

impl Resolv {
    /// Parses a resolv.conf (the node's).
    pub fn parse(text: &str) -> Self {
        let mut r = Self::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => r.nameservers.extend(words.next().map(str::to_string)),
                Some("search" | "domain") => {
                    r.searches = words.map(str::to_string).collect();
                }
                Some("options") => r.options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
        r
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for n in &self.nameservers {
            out.push_str(&format!("nameserver {n}\n"));
        }
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

fn option_name(o: &str) -> &str {
    o.split(':').next().unwrap_or(o)
}

/// The pod's resolv.conf; `None` means "the node's file as it is" is not enough and
/// an error tells why (dnsPolicy None without nameservers is still valid: empty).
pub fn resolv_conf(
    spec: &PodSpec,
    namespace: &str,
    cluster: &ClusterDns,
    host: &Resolv,
) -> Result<String, String> {
    let host_network = spec.host_network.unwrap_or(false);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster_first = match policy {
        "ClusterFirst" => !host_network,
        "ClusterFirstWithHostNet" => true,
        "Default" | "None" => false,
        other => return Err(format!("unknown dnsPolicy {other:?}")),
    };
    let mut r = match policy {
        "None" => Resolv::default(),
        _ if cluster_first && !cluster.servers.is_empty() => {
            let d = &cluster.domain;
            let mut searches = vec![
                format!("{namespace}.svc.{d}"),
                format!("svc.{d}"),
                d.clone(),
            ];
            searches.extend(host.searches.iter().cloned());
            Resolv {
                nameservers: cluster.servers.clone(),
                searches,
                options: vec!["ndots:5".into()],
            }
        }
        // ClusterFirst without a cluster DNS falls back to the node's, as kubelet.
        _ => host.clone(),
    };
    if let Some(cfg) = &spec.dns_config {
        r.nameservers
            .extend(cfg.nameservers.iter().flatten().cloned());
        for s in cfg.searches.iter().flatten() {
            if !r.searches.contains(s) {
                r.searches.push(s.clone());
            }
        }
        for o in cfg.options.iter().flatten() {
            let rendered = match &o.value {
                Some(v) => format!("{}:{v}", o.name.as_deref().unwrap_or("")),
                None => o.name.clone().unwrap_or_default(),
            };
            r.options
                .retain(|x| option_name(x) != option_name(&rendered));
            r.options.push(rendered);
        }
    }
    if policy == "None" && r.nameservers.is_empty() {
        return Err("dnsPolicy None needs dnsConfig.nameservers".into());
    }
    let mut seen = std::collections::HashSet::new();
    r.nameservers.retain(|n| seen.insert(n.clone()));
    r.nameservers.truncate(MAX_NAMESERVERS);
    r.searches.truncate(MAX_SEARCHES);
    Ok(r.render())
}

/// The header kubelet starts a pod's managed `/etc/hosts` with; tools (and the
/// upstream conformance test) recognise the file by it.
pub const MANAGED_HOSTS_HEADER: &str = "# Kubernetes-managed hosts file.\n";
/// The header of a host-network pod's `/etc/hosts` (the node's file follows).
pub const MANAGED_HOSTS_HEADER_HOST_NETWORK: &str =
    "# Kubernetes-managed hosts file (host network).\n";

/// The pod's `/etc/hosts` as kubelet writes it: localhost lines, the pod's address with
/// its hostname (and FQDN `<hostname>.<subdomain>.<namespace>.svc.<domain>` with a
/// subdomain), then the `hostAliases`.
pub fn hosts_file(
    spec: &PodSpec,
    namespace: &str,
    domain: &str,
    ip: &str,
    hostname: &str,
) -> String {
    let mut s = String::from(MANAGED_HOSTS_HEADER);
    s.push_str(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if !ip.is_empty() {
        match spec.subdomain.as_deref().filter(|d| !d.is_empty()) {
            Some(sub) => s.push_str(&format!(
                "{ip}\t{hostname}.{sub}.{namespace}.svc.{domain}\t{hostname}\n"
            )),
            None => s.push_str(&format!("{ip}\t{hostname}\n")),
        }
    }
    s.push_str(&host_aliases(spec));
    s
}

/// A host-network pod's `/etc/hosts` as kubelet writes it: the header, the node's
/// file as it is, then the `hostAliases`.
pub fn host_network_hosts_file(spec: &PodSpec, node_hosts: &str) -> String {
    format!(
        "{MANAGED_HOSTS_HEADER_HOST_NETWORK}{node_hosts}{}",
        host_aliases(spec)
    )
}

/// The `hostAliases` block (empty without aliases): one line per address.
fn host_aliases(spec: &PodSpec) -> String {
    let aliases = spec.host_aliases.iter().flatten().collect::<Vec<_>>();
    if aliases.is_empty() {
        return String::new();
    }
    let mut s = String::from("\n# Entries added by HostAliases.\n");
    for a in aliases {
        s.push_str(&format!(
            "{}\t{}\n",
            a.ip,
            a.hostnames
                .iter()
                .flatten()
                .cloned()
                .collect::<Vec<_>>()
                .join("\t")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).unwrap()
    }

    fn cluster() -> ClusterDns {
        ClusterDns {
            servers: vec!["10.96.0.10".into()],
            domain: "cluster.local".into(),
        }
    }

    fn host() -> Resolv {
        Resolv::parse(
            "# host\nnameserver 192.0.2.53\nsearch corp.example\noptions edns0 timeout:2\n",
        )
    }

    #[test]
    fn cluster_first_points_at_the_cluster_dns() {
        let r = resolv_conf(
            &spec(json!({"containers": []})),
            "demo",
            &cluster(),
            &host(),
        )
        .unwrap();
        assert_eq!(
            r,
            "nameserver 10.96.0.10\nsearch demo.svc.cluster.local svc.cluster.local cluster.local corp.example\noptions ndots:5\n"
        );
        // Host network: the node's, unless ClusterFirstWithHostNet.
        let hn = resolv_conf(
            &spec(json!({"containers": [], "hostNetwork": true})),
            "demo",
            &cluster(),
            &host(),
        )
        .unwrap();
        assert_eq!(hn, host().render());
        let hn2 = resolv_conf(
            &spec(json!({"containers": [], "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"})),
            "demo",
            &cluster(),
            &host(),
        )
        .unwrap();
        assert!(hn2.starts_with("nameserver 10.96.0.10\n"));
        // No cluster DNS configured: the node's.
        let none = resolv_conf(
            &spec(json!({"containers": []})),
            "demo",
            &ClusterDns::default(),
            &host(),
        )
        .unwrap();
        assert_eq!(none, host().render());
    }

    #[test]
    fn dns_config_merges_and_none_needs_nameservers() {
        let s = spec(json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["1.1.1.1"], "searches": ["a.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}));
        assert_eq!(
            resolv_conf(&s, "demo", &cluster(), &host()).unwrap(),
            "nameserver 1.1.1.1\nsearch a.example\noptions ndots:2 edns0\n"
        );
        let s = spec(
            json!({"containers": [], "dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}}),
        );
        assert!(
            resolv_conf(&s, "demo", &cluster(), &host())
                .unwrap()
                .ends_with("options ndots:1\n")
        );
        let bad = spec(json!({"containers": [], "dnsPolicy": "None"}));
        assert!(resolv_conf(&bad, "demo", &cluster(), &host()).is_err());
    }

    #[test]
    fn hosts_with_fqdn_and_aliases() {
        let s = spec(
            json!({"containers": [], "subdomain": "web", "hostAliases": [
            {"ip": "192.0.2.7", "hostnames": ["foo.local", "bar.local"]}]}),
        );
        let h = hosts_file(&s, "demo", "cluster.local", "10.244.0.5", "web-0");
        // kubelet's exact header: the upstream conformance test looks for it.
        assert!(
            h.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"),
            "{h}"
        );
        let n = host_network_hosts_file(&s, "127.0.0.1 node\n");
        assert_eq!(
            n,
            "# Kubernetes-managed hosts file (host network).\n127.0.0.1 node\n\n\
             # Entries added by HostAliases.\n192.0.2.7\tfoo.local\tbar.local\n"
        );
        assert!(
            h.contains("10.244.0.5\tweb-0.web.demo.svc.cluster.local\tweb-0\n"),
            "{h}"
        );
        assert!(
            h.ends_with("# Entries added by HostAliases.\n192.0.2.7\tfoo.local\tbar.local\n"),
            "{h}"
        );
    }
}

//! Host ports of pods outside the host network.

use super::*;

impl Runner {
    /// Opens the pod's host ports (a host-network pod's containers bind them
    /// themselves): each relays to its container port inside the pod.
    pub(super) fn open_host_ports(&mut self, sb: &SandboxRecord, pod: &Pod) {
        use crate::runtime::hostport::{HostPorts, Key, Proto, Target};
        if sb.host_network {
            return;
        }
        let spec = spec_of(pod);
        let ports: Vec<_> = pod_lifecycle::all_containers(&spec)
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.host_port.is_some_and(|h| h > 0))
            .cloned()
            .collect();
        if ports.is_empty() {
            return;
        }
        let host_ports = Arc::clone(&self.host_ports);
        let Ok(mut host_ports) = host_ports.lock() else {
            return;
        };
        if host_ports.is_none() {
            match HostPorts::new() {
                Ok(h) => *host_ports = Some(h),
                Err(e) => {
                    tracing::warn!("cannot start the host port proxies: {e}");
                    return;
                }
            }
        }
        let Some(hp) = host_ports.as_mut() else {
            return;
        };
        let pod_ip: IpAddr = sb.ip.parse().unwrap_or(crate::runtime::probe::LOOPBACK);
        for p in ports {
            let proto = if p.protocol.as_deref() == Some("UDP") {
                Proto::Udp
            } else {
                Proto::Tcp
            };
            let (Ok(host_port), Ok(container_port)) = (
                u16::try_from(p.host_port.unwrap_or(0)),
                u16::try_from(p.container_port),
            ) else {
                continue;
            };
            let host_ip: IpAddr = p
                .host_ip
                .as_deref()
                .filter(|i| !i.is_empty())
                .and_then(|i| i.parse().ok())
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
            let key = Key {
                proto,
                host_ip,
                host_port,
            };
            let target = Target {
                netns: crate::sys::ns::pin_path(&sb.ns_dir, "net"),
                addr: std::net::SocketAddr::new(pod_ip, container_port),
            };
            if let Err(e) = hp.ensure(&sb.uid, &key, &target) {
                let id = (sb.uid.clone(), format!("{host_ip}:{host_port}/{proto:?}"));
                if self.host_port_errors.insert(id) {
                    tracing::warn!(pod = %format!("{}/{}", sb.namespace, sb.name), "hostPort: {e}");
                }
            }
        }
    }
}

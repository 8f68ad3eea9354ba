//! `hostPort`: a pod's container port reached on the node's address, without
//! iptables — a small proxy per host port in kernlet itself (as kube-proxy's userspace
//! mode did): TCP connections and UDP exchanges accepted on the node are relayed to
//! the container port from inside the pod's network namespace. (The client's address
//! is not kept; the eBPF datapath will do the translation in the kernel.)

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// TCP or UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One host port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub proto: Proto,
    pub host_ip: IpAddr,
    pub host_port: u16,
}

/// Where its traffic goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The pod's network namespace pin.
    pub netns: PathBuf,
    pub addr: SocketAddr,
}

struct Proxy {
    uid: String,
    target: Target,
    task: tokio::task::JoinHandle<()>,
}

/// The host ports of this node's pods.
pub struct HostPorts {
    rt: tokio::runtime::Runtime,
    proxies: HashMap<Key, Proxy>,
}

/// How long a UDP client's relay lives without traffic.
const UDP_IDLE: Duration = Duration::from_secs(30);

impl HostPorts {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("kernlet-hostport")
                .enable_all()
                .build()?,
            proxies: HashMap::new(),
        })
    }

    /// Makes `key` relay to `target` for pod `uid`; an error when another pod holds
    /// the port or it cannot be bound.
    pub fn ensure(&mut self, uid: &str, key: &Key, target: &Target) -> Result<(), String> {
        if let Some(p) = self.proxies.get(key) {
            if p.uid != uid {
                return Err(format!(
                    "host port {}:{} is held by another pod",
                    key.host_ip, key.host_port
                ));
            }
            if p.target == *target && !p.task.is_finished() {
                return Ok(());
            }
            p.task.abort();
        }
        let at = SocketAddr::new(key.host_ip, key.host_port);
        let target2 = target.clone();
        let task = match key.proto {
            Proto::Tcp => {
                let l = std::net::TcpListener::bind(at)
                    .map_err(|e| format!("binding {at}/TCP: {e}"))?;
                l.set_nonblocking(true).map_err(|e| e.to_string())?;
                let _guard = self.rt.enter();
                let l = tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string())?;
                self.rt.spawn(tcp(l, target2))
            }
            Proto::Udp => {
                let s =
                    std::net::UdpSocket::bind(at).map_err(|e| format!("binding {at}/UDP: {e}"))?;
                s.set_nonblocking(true).map_err(|e| e.to_string())?;
                let _guard = self.rt.enter();
                let s = tokio::net::UdpSocket::from_std(s).map_err(|e| e.to_string())?;
                self.rt.spawn(udp(Arc::new(s), target2))
            }
        };
        self.proxies.insert(
            key.clone(),
            Proxy {
                uid: uid.to_string(),
                target: target.clone(),
                task,
            },
        );
        Ok(())
    }

    /// Closes the host ports of pod `uid`.
    pub fn remove_pod(&mut self, uid: &str) {
        self.proxies.retain(|_, p| {
            if p.uid == uid {
                p.task.abort();
                false
            } else {
                true
            }
        });
    }
}

async fn tcp(listener: tokio::net::TcpListener, target: Target) {
    loop {
        let (mut client, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("hostPort: accepting: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let target = target.clone();
        tokio::spawn(async move {
            let t = target.clone();
            let upstream = tokio::task::spawn_blocking(move || {
                crate::sys::ns::connect_in(Some(&t.netns), t.addr, Duration::from_secs(5))
            })
            .await;
            let Ok(Ok(upstream)) = upstream else {
                tracing::warn!(%from, target = %target.addr, "hostPort: cannot reach the container port: {upstream:?}");
                return;
            };
            if upstream.set_nonblocking(true).is_err() {
                return;
            }
            let Ok(mut upstream) = tokio::net::TcpStream::from_std(upstream) else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    }
}

async fn udp(socket: Arc<tokio::net::UdpSocket>, target: Target) {
    let mut relays: HashMap<SocketAddr, (Arc<tokio::net::UdpSocket>, tokio::task::JoinHandle<()>)> =
        HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        relays.retain(|_, (_, task)| !task.is_finished());
        if let std::collections::hash_map::Entry::Vacant(slot) = relays.entry(from) {
            let t = target.clone();
            let made =
                tokio::task::spawn_blocking(move || crate::sys::ns::udp_in(Some(&t.netns), t.addr))
                    .await;
            let Ok(Ok(up)) = made else {
                continue;
            };
            if up.set_nonblocking(true).is_err() {
                continue;
            }
            let Ok(up) = tokio::net::UdpSocket::from_std(up) else {
                continue;
            };
            let up = Arc::new(up);
            let (back, client) = (Arc::clone(&socket), from);
            let reader = Arc::clone(&up);
            let task = tokio::spawn(async move {
                let mut b = vec![0u8; 65536];
                // Replies go back to the client until it has been quiet a while.
                while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE, reader.recv(&mut b)).await {
                    let _ = back.send_to(&b[..n], client).await;
                }
            });
            slot.insert((up, task));
        }
        if let Some((up, _)) = relays.get(&from) {
            let _ = up.send(&buf[..n]).await;
        }
    }
}

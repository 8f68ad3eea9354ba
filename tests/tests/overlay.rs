//! The pod network and the flannel-compatible VXLAN overlay on SimNodes (root): pods on
//! three kernlet nodes reach each other by pod IP over TCP and UDP through `flannel.1`,
//! the path MTU is the underlay's minus 50, entries of a departed node go, an entry
//! deleted by hand comes back, and a fourth node set up by hand exactly as flannel does
//! it is reached by and reaches kernlet's pods.

#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot go on should stop loudly"
)]

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kernlet_tests::cluster::Cluster;
use kernlet_tests::hygiene::ip;
use kernlet_tests::overlay::{apply_node_rbac, sleeping_pod, start_overlay_node};
use kernlet_tests::simnode::{BRIDGE_IP, Lab, SimNode};
use kube::api::{Api, DeleteParams, PostParams};

fn in_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    kernlet_tests::overlay::in_netns(netns, f).unwrap()
}

use kernlet_tests::wait_for;

/// What `flannel.1` in namespace `netns` holds, as ip(8) and bridge(8) print it:
/// routes, neighbours, FDB entries.
fn flannel_entries(netns: &str) -> (String, String, String) {
    let fdb = std::process::Command::new("bridge")
        .args(["-n", netns, "fdb", "show", "dev", "flannel.1"])
        .output()
        .unwrap();
    (
        ip_out(&["-n", netns, "route", "show", "dev", "flannel.1"]),
        ip_out(&["-n", netns, "neigh", "show", "dev", "flannel.1"]),
        String::from_utf8_lossy(&fdb.stdout).into_owned(),
    )
}

fn ip_out(args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP exchange from the namespace `from` to `to:port`, served in namespace `server`.
fn tcp_exchange(from: &Path, server: &Path, to: Ipv4Addr) -> Result<String, String> {
    let listener = in_netns(server, move || {
        std::net::TcpListener::bind((to, 7070)).unwrap()
    });
    let serve = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        s.write_all(format!("hello {}", peer.ip()).as_bytes())
            .unwrap();
    });
    let mut conn = kernlet::sys::ns::connect_in(
        Some(from),
        SocketAddr::from((to, 7070)),
        Duration::from_secs(5),
    )
    .map_err(|e| format!("connect to {to}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = String::new();
    conn.read_to_string(&mut got)
        .map_err(|e| format!("read from {to}: {e}"))?;
    serve.join().unwrap();
    Ok(got)
}

/// A UDP datagram from namespace `from` to `to`, answered from namespace `server`.
fn udp_exchange(from: &Path, server: &Path, to: Ipv4Addr) -> Result<String, String> {
    let sock = in_netns(server, move || {
        std::net::UdpSocket::bind((to, 7071)).unwrap()
    });
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        let (n, peer) = sock.recv_from(&mut buf).map_err(|e| e.to_string())?;
        sock.send_to(&buf[..n], peer).map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    });
    let client = kernlet::sys::ns::udp_in(Some(from), SocketAddr::from((to, 7071)))
        .map_err(|e| e.to_string())?;
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.send(b"ping over vxlan").map_err(|e| e.to_string())?;
    let mut buf = [0u8; 256];
    let n = client
        .recv(&mut buf)
        .map_err(|e| format!("udp reply: {e}"))?;
    let peer = echo.join().unwrap()?;
    Ok(format!(
        "{} from {}",
        String::from_utf8_lossy(&buf[..n]),
        peer.ip()
    ))
}

fn ping_df(from: &Path, to: Ipv4Addr, payload: usize) -> (bool, String) {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", from.display()))
        .args(["ping", "-n", "-c", "1", "-W", "3", "-M", "do", "-s"])
        .arg(payload.to_string())
        .arg(to.to_string())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A VXLAN packet (VNI 1) carrying an Ethernet frame to `dst_mac` with a UDP datagram
/// `src:5555 → dst:port` saying `text`.
fn vxlan_packet(dst_mac: &str, src: Ipv4Addr, dst: Ipv4Addr, port: u16, text: &[u8]) -> Vec<u8> {
    let mut p = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    p.extend(
        dst_mac
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).unwrap()),
    );
    p.extend([0x0e, 0x4f, 0, 0, 0, 0x99, 0x08, 0x00]);
    let total = (20 + 8 + text.len()) as u16;
    let mut ip4 = vec![0x45, 0];
    ip4.extend(total.to_be_bytes());
    ip4.extend([0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip4.extend(src.octets());
    ip4.extend(dst.octets());
    let mut sum: u32 = ip4
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip4[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p.extend(ip4);
    p.extend(5555u16.to_be_bytes());
    p.extend(port.to_be_bytes());
    p.extend(((8 + text.len()) as u16).to_be_bytes());
    p.extend([0, 0]);
    p.extend(text);
    p
}

/// Sends `packet` to `to:8472` from namespace `from`.
fn send_vxlan(from: &Path, to: Ipv4Addr, packet: Vec<u8>) {
    in_netns(from, move || {
        let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        s.send_to(&packet, (to, 8472)).unwrap();
    });
}

/// `kernlet overlay -o json` (or the table) run in `node`'s namespace.
fn overlay_view(node: &SimNode, kubeconfig: Option<&Path>, json: bool) -> String {
    let mut cmd = node.command(kernlet_tests::simnode::kernlet_bin().unwrap());
    cmd.arg("overlay")
        .args(["-o", if json { "json" } else { "table" }])
        .arg("--state-dir")
        .arg(node.dir("state"))
        .arg("--run-dir")
        .arg(node.dir("run"));
    if let Some(kc) = kubeconfig {
        cmd.arg("--kubeconfig").arg(kc);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kernlet status -o json|table` run in `node`'s namespace with its kubeconfig.
fn status(node: &SimNode, json: bool) -> String {
    let out = kernlet_tests::succeeded(
        node.command(kernlet_tests::simnode::kernlet_bin().unwrap())
            .args([
                "status",
                "-o",
                if json { "json" } else { "table" },
                "--kubeconfig",
            ])
            .arg(node.dir("state").join("node.kubeconfig"))
            .arg("--state-dir")
            .arg(node.dir("state"))
            .arg("--run-dir")
            .arg(node.dir("run")),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The condition `ty` of Node `name`: (status, reason, message).
async fn condition(api: &Api<Node>, name: &str, ty: &str) -> Option<(String, String, String)> {
    let n = api.get_opt(name).await.ok()??;
    let c = n.status?.conditions?.into_iter().find(|c| c.type_ == ty)?;
    Some((
        c.status,
        c.reason.unwrap_or_default(),
        c.message.unwrap_or_default(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_three_nodes_and_a_flannel_node_reach_each_other_over_vxlan() {
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("ovl").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    apply_node_rbac(&cluster).unwrap();
    let mut nodes: Vec<SimNode> = ["o1", "o2", "o3"]
        .iter()
        .map(|n| lab.add_node(n).unwrap())
        .collect();
    let admin = cluster.admin().await.unwrap();
    let node_api: Api<Node> = Api::all(admin.clone());
    for (i, n) in nodes.iter_mut().enumerate() {
        n.import_busybox().unwrap();
        start_overlay_node(&cluster, &fwd.url, n, i as u8 + 1, &[])
            .await
            .unwrap();
    }
    // Each node: Ready, flannel's annotations, NetworkUnavailable=False.
    let mut macs = Vec::new();
    for n in &nodes {
        let node = wait_for(
            &format!("node {} with its overlay up", n.name),
            Duration::from_secs(60),
            async || {
                let node = node_api.get_opt(&n.name).await.ok()??;
                let conds = node.status.as_ref()?.conditions.clone()?;
                let ready = conds
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                let net = conds.iter().any(|c| {
                    c.type_ == "NetworkUnavailable"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("FlannelIsUp")
                });
                (ready && net).then_some(node)
            },
        )
        .await;
        let ann = node.metadata.annotations.unwrap();
        assert_eq!(ann["flannel.alpha.coreos.com/backend-type"], "vxlan");
        assert_eq!(ann["flannel.alpha.coreos.com/kube-subnet-manager"], "true");
        assert_eq!(
            ann["flannel.alpha.coreos.com/public-ip"],
            n.address.to_string()
        );
        let data: serde_json::Value =
            serde_json::from_str(&ann["flannel.alpha.coreos.com/backend-data"]).unwrap();
        assert_eq!(data["VNI"], 1);
        let mac = data["VtepMAC"].as_str().unwrap().to_string();
        // The device as flannel makes it.
        let dev = ip_out(&["-n", &n.netns, "-d", "link", "show", "flannel.1"]);
        assert!(dev.contains(&mac), "{dev}");
        assert!(
            dev.contains("vxlan id 1 ")
                && dev.contains(&format!("local {} ", n.address))
                && dev.contains("dstport 8472")
                && dev.contains("nolearning")
                && dev.contains("mtu 1450"),
            "{dev}"
        );
        macs.push(mac);
    }

    // A fourth node set up by hand exactly as flannel's vxlan backend does it: device,
    // annotations, entries for the three kernlet nodes, and a pod network behind cni0.
    let f4 = lab.add_node("f4").unwrap();
    let f4_mac = "0e:4f:00:00:00:04";
    let f4_cidr = "10.244.9.0/24";
    let ns4 = f4.netns.clone();
    ip(&[
        "-n",
        &ns4,
        "link",
        "add",
        "flannel.1",
        "address",
        f4_mac,
        "mtu",
        "1450",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        &f4.address.to_string(),
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ])
    .unwrap();
    ip(&[
        "-n",
        &ns4,
        "addr",
        "add",
        "10.244.9.0/32",
        "dev",
        "flannel.1",
    ])
    .unwrap();
    ip(&["-n", &ns4, "link", "set", "flannel.1", "up"]).unwrap();
    ip(&["-n", &ns4, "link", "add", "cni0", "type", "bridge"]).unwrap();
    ip(&["-n", &ns4, "addr", "add", "10.244.9.1/24", "dev", "cni0"]).unwrap();
    ip(&["-n", &ns4, "link", "set", "cni0", "up"]).unwrap();
    for (i, n) in nodes.iter().enumerate() {
        let net = format!("10.244.{}.0", i + 1);
        ip(&[
            "-n",
            &ns4,
            "route",
            "add",
            &format!("{net}/24"),
            "via",
            &net,
            "dev",
            "flannel.1",
            "onlink",
        ])
        .unwrap();
        ip(&[
            "-n",
            &ns4,
            "neigh",
            "add",
            &net,
            "lladdr",
            &macs[i],
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ])
        .unwrap();
        kernlet_tests::succeeded(
            std::process::Command::new("bridge")
                .args([
                    "-n",
                    &ns4,
                    "fdb",
                    "append",
                    &macs[i],
                    "dev",
                    "flannel.1",
                    "dst",
                ])
                .arg(n.address.to_string())
                .args(["self", "permanent"]),
        );
    }
    let f4_node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "f4", "annotations": {
            "flannel.alpha.coreos.com/backend-type": "vxlan",
            "flannel.alpha.coreos.com/backend-data": format!("{{\"VNI\":1,\"VtepMAC\":\"{f4_mac}\"}}"),
            "flannel.alpha.coreos.com/public-ip": f4.address.to_string(),
            "flannel.alpha.coreos.com/kube-subnet-manager": "true",
        }},
        "spec": {"podCIDR": f4_cidr, "podCIDRs": [f4_cidr]},
    }))
    .unwrap();
    node_api
        .create(&PostParams::default(), &f4_node)
        .await
        .unwrap();

    // Every kernlet node programs the other three.
    for (i, n) in nodes.iter().enumerate() {
        wait_for(
            &format!("{}'s overlay entries", n.name),
            Duration::from_secs(20),
            async || {
                let (routes, neigh, fdb) = flannel_entries(&n.netns);
                let mut others: Vec<(String, String, String)> = nodes
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(j, o)| {
                        (
                            format!("10.244.{}.0", j + 1),
                            macs[j].clone(),
                            o.address.to_string(),
                        )
                    })
                    .collect();
                others.push(("10.244.9.0".into(), f4_mac.into(), f4.address.to_string()));
                others
                    .iter()
                    .all(|(net, mac, public)| {
                        routes.contains(&format!("{net}/24 via {net} onlink"))
                            && neigh.contains(&format!("{net} lladdr {mac} PERMANENT"))
                            && fdb.contains(&format!("{mac} dst {public} self permanent"))
                    })
                    .then_some(())
            },
        )
        .await;
    }

    // Pods on each kernlet node get an address of its CIDR on eth0 behind cni0.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let mut pod_nets = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let (ip, netns) = sleeping_pod(&cluster, &pods, n, &format!("p{}", i + 1))
            .await
            .unwrap();
        let cidr: kernlet::model::cidr::Ipv4Net = format!("10.244.{}.0/24", i + 1).parse().unwrap();
        assert!(cidr.contains(ip), "{ip} not in {cidr}");
        let eth0 = ip_out(&["-n", &n.netns, "link", "show", "cni0"]);
        assert!(eth0.contains("mtu 1450"), "{eth0}");
        pod_nets.push((ip, netns));
    }

    // Pod ↔ pod across nodes, TCP and UDP; the receiving pod sees the sender's pod IP
    // (no masquerade between pods).
    for (a, b) in [(0usize, 1usize), (1, 2), (2, 0)] {
        let (from_ip, from) = &pod_nets[a];
        let (to_ip, to) = &pod_nets[b];
        let got = tcp_exchange(from, to, *to_ip).unwrap_or_else(|e| {
            panic!(
                "TCP p{} -> p{}: {e}\n{}",
                a + 1,
                b + 1,
                nodes[a].kernlet_log()
            )
        });
        assert_eq!(got, format!("hello {from_ip}"));
        let got = udp_exchange(from, to, *to_ip).unwrap();
        assert_eq!(got, format!("ping over vxlan from {from_ip}"));
    }
    // Path MTU: 1450-byte packets with DF pass, 1451 do not (the pod's MTU says so).
    let (ok, out) = ping_df(&pod_nets[0].1, pod_nets[1].0, 1450 - 28);
    assert!(ok, "a 1450-byte DF ping must pass: {out}");
    let (ok, out) = ping_df(&pod_nets[0].1, pod_nets[1].0, 1451 - 28);
    assert!(
        !ok && out.contains("mtu=1450"),
        "a 1451-byte DF ping must fail with mtu 1450: {out}"
    );

    // kernlet's pod and the flannel node reach each other both ways.
    let ns4_path = PathBuf::from(format!("/run/netns/{ns4}"));
    let got = tcp_exchange(&pod_nets[0].1, &ns4_path, Ipv4Addr::new(10, 244, 9, 1)).unwrap();
    assert_eq!(got, format!("hello {}", pod_nets[0].0));
    let got = tcp_exchange(&ns4_path, &pod_nets[2].1, pod_nets[2].0).unwrap();
    assert!(got.starts_with("hello 10.244.9."), "{got}");

    // The peers are probed through flannel.1 with full-size DF packets: healthy.
    let probe_file = nodes[0].dir("run").join("overlay/peers.json");
    wait_for(
        "o1's probe of three healthy peers",
        Duration::from_secs(20),
        async || {
            let v: Vec<serde_json::Value> =
                serde_json::from_slice(&std::fs::read(&probe_file).ok()?).ok()?;
            (v.len() == 3
                && v.iter()
                    .all(|p| p["reachable"] == true && p["pathMtuOk"] == true && p["mtu"] == 1450))
            .then_some(())
        },
    )
    .await;
    wait_for(
        "OverlayDegraded=False on o1",
        Duration::from_secs(20),
        async || {
            let (status, reason, _) = condition(&node_api, "o1", "OverlayDegraded").await?;
            (status == "False" && reason == "OverlayPeersHealthy").then_some(())
        },
    )
    .await;
    // kernlet overlay: the three peers with every entry in place, as the Nodes say.
    let o1_kubeconfig = nodes[0].dir("state").join("node.kubeconfig");
    let view: serde_json::Value =
        serde_json::from_str(&overlay_view(&nodes[0], Some(&o1_kubeconfig), true)).unwrap();
    assert_eq!(view["source"], "apiserver", "{view}");
    assert_eq!(view["daemon"]["running"], true, "{view}");
    assert_eq!(view["device"]["vni"], 1);
    assert_eq!(view["device"]["local"], nodes[0].address.to_string());
    assert_eq!(view["device"]["mac"], macs[0].as_str());
    let rows = view["peers"].as_array().unwrap();
    let mut names: Vec<&str> = rows.iter().map(|r| r["node"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["f4", "o2", "o3"], "{view:#}");
    for r in rows {
        assert_eq!(
            (&r["route"], &r["neighbour"], &r["fdb"]),
            (&"ok".into(), &"ok".into(), &"ok".into()),
            "{r}"
        );
        assert_eq!(r["probe"]["reachable"], true, "{r}");
    }
    let f4_row = rows.iter().find(|r| r["node"] == "f4").unwrap();
    assert_eq!(
        (&f4_row["podCidr"], &f4_row["vtepMac"], &f4_row["publicIp"]),
        (
            &f4_cidr.into(),
            &f4_mac.into(),
            &f4.address.to_string().into()
        )
    );
    let table = overlay_view(&nodes[0], Some(&o1_kubeconfig), false);
    let o2_line = table
        .lines()
        .find(|l| l.starts_with("o2 "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        o2_line.contains("10.244.2.0/24")
            && o2_line.contains(&macs[1])
            && o2_line.contains("198.18.0.11")
            && o2_line.matches(" ok").count() >= 4,
        "{table}"
    );

    // kernlet status: the node at a glance, its name taken from its client certificate.
    let st: serde_json::Value = serde_json::from_str(&status(&nodes[0], true)).unwrap();
    assert_eq!(st["node"], "o1", "{st:#}");
    // What only the daemon knows, over its socket: when overlay and lease last synced.
    assert_eq!(st["daemon"]["running"], true, "{st:#}");
    let subsystems = &st["daemon"]["account"]["subsystems"];
    assert!(
        subsystems["overlay"]["lastSync"].is_string()
            && subsystems["lease"]["lastSync"].is_string(),
        "{st:#}"
    );
    assert_eq!(st["apiserver"]["reachable"], true, "{st:#}");
    let conds = st["apiserver"]["conditions"].as_array().unwrap();
    let cond = |ty: &str| {
        conds
            .iter()
            .find(|c| c["type"] == ty)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(cond("Ready")["status"], "True", "{st:#}");
    assert_eq!(
        cond("NetworkUnavailable")["reason"],
        "FlannelIsUp",
        "{st:#}"
    );
    assert_eq!(cond("OverlayDegraded")["status"], "False", "{st:#}");
    assert!(
        st["apiserver"]["leaseAgeSeconds"].as_i64().unwrap() <= 5,
        "{st:#}"
    );
    assert_eq!(st["pods"]["Running"], 1, "{st:#}");
    assert_eq!(
        (
            &st["overlay"]["peers"],
            &st["overlay"]["programmed"],
            &st["overlay"]["unhealthy"]
        ),
        (&3.into(), &3.into(), &serde_json::json!([])),
        "{st:#}"
    );
    assert!(
        st["certificates"]["client"]["notAfter"].is_string(),
        "{st:#}"
    );
    let text = status(&nodes[0], false);
    assert!(
        text.contains("node: o1")
            && text.contains("pods: Running 1")
            && text.contains("overlay: 3 peers, 3 programmed, missing: none, unhealthy: none"),
        "{text}"
    );

    // An underlay that drops full-size frames towards o2 (its bridge port's MTU lowered):
    // o2 still answers, the path MTU check fails, and the Node says so.
    let o2_port = "v11";
    ip(&[
        "-n",
        lab.bridge_netns(),
        "link",
        "set",
        o2_port,
        "mtu",
        "1400",
    ])
    .unwrap();
    let degraded = wait_for(
        "OverlayDegraded=True on o1",
        Duration::from_secs(20),
        async || {
            let (status, reason, message) = condition(&node_api, "o1", "OverlayDegraded").await?;
            (status == "True" && reason == "PathMTUTooSmall").then_some(message)
        },
    )
    .await;
    assert!(
        degraded.contains("o2 (1450 bytes") && !degraded.contains("o3"),
        "{degraded}"
    );
    ip(&[
        "-n",
        lab.bridge_netns(),
        "link",
        "set",
        o2_port,
        "mtu",
        "1500",
    ])
    .unwrap();
    wait_for(
        "OverlayDegraded=False again",
        Duration::from_secs(20),
        async || {
            let (status, ..) = condition(&node_api, "o1", "OverlayDegraded").await?;
            (status == "False").then_some(())
        },
    )
    .await;

    // A route deleted by hand comes back within a resync.
    ip(&[
        "-n",
        &nodes[0].netns,
        "route",
        "del",
        "10.244.2.0/24",
        "dev",
        "flannel.1",
    ])
    .unwrap();
    ip(&[
        "-n",
        &nodes[0].netns,
        "neigh",
        "del",
        "10.244.3.0",
        "dev",
        "flannel.1",
    ])
    .unwrap();
    wait_for(
        "the deleted entries repaired",
        Duration::from_secs(15),
        async || {
            let routes = ip_out(&["-n", &nodes[0].netns, "route", "show", "dev", "flannel.1"]);
            let neigh = ip_out(&["-n", &nodes[0].netns, "neigh", "show", "dev", "flannel.1"]);
            (routes.contains("10.244.2.0/24 via 10.244.2.0 onlink")
                && neigh.contains("10.244.3.0 lladdr"))
            .then_some(())
        },
    )
    .await;
    tcp_exchange(&pod_nets[0].1, &pod_nets[1].1, pod_nets[1].0).unwrap();

    // A node that goes away: its entries leave the others.
    let mut o3 = nodes.pop().unwrap();
    o3.stop_kernlet(Duration::from_secs(5)).unwrap();
    node_api
        .delete("o3", &DeleteParams::default())
        .await
        .unwrap();
    for n in &nodes {
        let start = Instant::now();
        loop {
            let gone = {
                let (routes, neigh, fdb) = flannel_entries(&n.netns);
                (!routes.contains("10.244.3.0")
                    && !neigh.contains("10.244.3.0")
                    && !fdb.contains(&macs[2])
                    && routes.contains("10.244.9.0/24"))
                .then_some(())
            };
            if gone.is_some() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "o3's entries are still on {}\n{}",
                n.name,
                n.kernlet_log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Converged: each peer's FDB entry was written once, not again at every resync.
    let log = nodes[0].kernlet_log();
    assert_eq!(log.matches("SetFdb").count(), 3, "{log}");

    // A restart adopts what is there: same VTEP MAC, nothing recreated, pods keep their
    // addresses and reach each other throughout.
    let o1_mac_file = nodes[0].dir("state").join("overlay/vtep-mac");
    assert_eq!(
        std::fs::read_to_string(&o1_mac_file).unwrap().trim(),
        macs[0]
    );
    let o1_kc = nodes[0]
        .dir("state")
        .join("node.kubeconfig")
        .display()
        .to_string();
    nodes[0].stop_kernlet(Duration::from_secs(5)).unwrap();
    tcp_exchange(&pod_nets[0].1, &pod_nets[1].1, pod_nets[1].0).unwrap();
    nodes[0]
        .start_kernlet(&[
            "run",
            "--kubeconfig",
            &o1_kc,
            "--node-name",
            "o1",
            "--node-lease-renew-interval-ms",
            "1000",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--overlay-resync",
            "1",
        ])
        .unwrap();
    wait_for("o1 Ready again", Duration::from_secs(30), async || {
        let (status, ..) = condition(&node_api, "o1", "Ready").await?;
        nodes[0]
            .kernlet_log()
            .contains("overlay device up")
            .then_some(())?;
        (status == "True").then_some(())
    })
    .await;
    let log = nodes[0].kernlet_log();
    assert!(
        !log.contains("creating it again") && !log.contains("SetFdb"),
        "{log}"
    );
    let dev = ip_out(&["-n", &nodes[0].netns, "link", "show", "flannel.1"]);
    assert!(dev.contains(&macs[0]), "{dev}");
    tcp_exchange(&pod_nets[0].1, &pod_nets[1].1, pod_nets[1].0).unwrap();

    // kernlet's own nftables table: masquerade out of the cluster, VXLAN from nodes only.
    let table = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", nodes[0].netns))
        .args(["nft", "list", "table", "ip", "kernlet"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table.contains(
            "ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade"
        ) && table.contains("udp dport 8472 ip saddr 198.18.0.13 accept")
            && table.contains("udp dport 8472 drop")
            && !table.contains("198.18.0.12"),
        "{table}"
    );
    // A pod reaching outside the cluster CIDR (the lab bridge) shows up as its node.
    let outside = lab.listen_on_bridge(0).unwrap();
    outside.set_nonblocking(false).unwrap();
    let outside_port = outside.local_addr().unwrap().port();
    let seen = std::thread::spawn(move || outside.accept().map(|(_, peer)| peer.ip()));
    kernlet::sys::ns::connect_in(
        Some(&pod_nets[0].1),
        SocketAddr::from((BRIDGE_IP, outside_port)),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(seen.join().unwrap().unwrap(), nodes[0].address);

    // Forged VXLAN: the same encapsulated datagram to pod p1 is delivered when it comes
    // from a node's address (f4) and dropped when it comes from another underlay
    // address (the lab bridge).
    let (p1_ip, p1_ns) = pod_nets[0].clone();
    let sink = in_netns(&p1_ns, move || {
        std::net::UdpSocket::bind((p1_ip, 7072)).unwrap()
    });
    sink.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let bridge_ns = PathBuf::from(format!("/run/netns/{}", lab.bridge_netns()));
    let forged = vxlan_packet(
        &macs[0],
        Ipv4Addr::new(10, 244, 9, 5),
        p1_ip,
        7072,
        b"forged",
    );
    send_vxlan(&bridge_ns, nodes[0].address, forged);
    let mut buf = [0u8; 64];
    let got = sink.recv_from(&mut buf);
    assert!(
        got.is_err(),
        "a VXLAN packet from a non-node address was delivered: {got:?}"
    );
    let genuine = vxlan_packet(
        &macs[0],
        Ipv4Addr::new(10, 244, 9, 5),
        p1_ip,
        7072,
        b"from f4",
    );
    send_vxlan(&ns4_path, nodes[0].address, genuine);
    let (n, from) = sink
        .recv_from(&mut buf)
        .expect("the same packet from a node is delivered");
    assert_eq!(
        (&buf[..n], from.ip()),
        (&b"from f4"[..], std::net::IpAddr::from([10, 244, 9, 5]))
    );

    // A deleted pod gives its address and veth back.
    pods.delete("p1", &DeleteParams::default()).await.unwrap();
    wait_for("p1 gone", Duration::from_secs(30), async || {
        pods.get_opt("p1").await.ok()?.is_none().then_some(())
    })
    .await;
    let held = std::fs::read_dir(nodes[0].dir("state").join("ipam/10.244.1.0_24"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
        .count();
    assert_eq!(held, 0, "p1's address is released");
    // (The node's own eth0 is a veth of the lab too; pods' host ends are `veth<hash>`.)
    let veths = ip_out(&["-n", &nodes[0].netns, "-o", "link", "show", "type", "veth"]);
    assert!(!veths.contains(": veth"), "{veths}");
    // With o1's daemon stopped and no kubeconfig, `kernlet overlay` still answers from
    // the kernel and the last probe record, and shows a route deleted meanwhile.
    nodes[0].stop_kernlet(Duration::from_secs(5)).unwrap();
    ip(&[
        "-n",
        &nodes[0].netns,
        "route",
        "del",
        "10.244.2.0/24",
        "dev",
        "flannel.1",
    ])
    .unwrap();
    let view: serde_json::Value =
        serde_json::from_str(&overlay_view(&nodes[0], None, true)).unwrap();
    assert!(
        view["source"]
            .as_str()
            .unwrap()
            .starts_with("last probe record"),
        "{view}"
    );
    assert_eq!(view["daemon"]["running"], false, "{view}");
    assert!(overlay_view(&nodes[0], None, false).contains("daemon: NOT RUNNING"));
    let o2_row = view["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node"] == "o2")
        .unwrap_or_else(|| panic!("{view}"));
    assert_eq!(
        (&o2_row["route"], &o2_row["fdb"]),
        (&"missing".into(), &"ok".into()),
        "{view}"
    );
    // The apiserver gone too: status still shows pods and overlay from the node itself.
    drop(fwd);
    let st: serde_json::Value = serde_json::from_str(&status(&nodes[0], true)).unwrap();
    assert_eq!(st["apiserver"]["reachable"], false, "{st:#}");
    assert_eq!(
        st["overlay"]["missing"],
        serde_json::json!(["o2"]),
        "{st:#}"
    );
    assert!(
        st["overlay"]["source"]
            .as_str()
            .unwrap()
            .contains("apiserver unreachable"),
        "{st:#}"
    );
    assert!(status(&nodes[0], false).contains("apiserver: UNREACHABLE"));
    assert_eq!(
        st["daemon"]["running"], false,
        "the daemon is stopped, and status says so"
    );
    assert!(status(&nodes[0], false).contains("daemon: NOT RUNNING"));
    drop(o3);
}

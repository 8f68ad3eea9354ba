//! kernlet as kube-proxy (root, SimNodes with the overlay): a Service's ClusterIP,
//! reached from a pod and from the node, is load-balanced over its ready endpoints by
//! the eBPF socket hooks, TCP and UDP, with `getpeername` and `recvfrom` showing the
//! service address; endpoint changes reach the maps; a service without endpoints fails
//! fast; the translation keeps working while kernlet is down and after it restarts.

#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot go on should stop loudly"
)]

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kernlet_tests::cluster::Cluster;
use kernlet_tests::overlay::{apply_node_rbac, in_netns, sleeping_pod, start_overlay_node};
use kernlet_tests::simnode::{BRIDGE_IP, Lab, SimNode};
use kernlet_tests::wait_for;
use kube::api::{Api, PostParams};

/// The Service proxy's flags for `node`, and `extra`.
fn proxy_flags(node: &SimNode, extra: &[&str]) -> Vec<String> {
    [
        "--service-proxy",
        "--service-cgroup",
        &node.cgroup().display().to_string(),
        "--service-resync",
        "1",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

/// Starts the agent of a proxy node again (after a stop or `kill -9`) with its
/// kubeconfig, the pod network and the proxy flags (`extra` too); returns once the
/// Service datapath is attached again.
async fn restart_proxy_node(node: &mut SimNode, extra: &[&str]) {
    let kc = node
        .dir("state")
        .join("node.kubeconfig")
        .display()
        .to_string();
    let name = node.name.clone();
    let mut args = vec!["run", "--kubeconfig", &kc, "--node-name", &name];
    args.extend([
        "--node-lease-renew-interval-ms",
        "1000",
        "--cluster-cidr",
        kernlet_tests::overlay::CLUSTER_CIDR,
        "--overlay-resync",
        "1",
    ]);
    let flags = proxy_flags(node, extra);
    args.extend(flags.iter().map(String::as_str));
    // A new log each start: the line is this start's.
    node.start_kernlet(&args).unwrap();
    wait_for(
        "the restarted agent attached",
        Duration::from_secs(20),
        async || {
            node.kernlet_log()
                .contains("Service datapath attached")
                .then_some(())
        },
    )
    .await;
}

/// SimNodes `labels` of `lab` with the pod network and the Service proxy (resync every
/// second, `extra` flags), joined to `cluster` through `url`.
async fn proxy_nodes(
    cluster: &Cluster,
    lab: &mut Lab,
    url: &str,
    labels: &[&str],
    extra: &[&str],
) -> Vec<SimNode> {
    let mut nodes = Vec::new();
    for (i, label) in labels.iter().enumerate() {
        let mut n = lab.add_node(label).unwrap();
        n.import_busybox().unwrap();
        let flags = proxy_flags(&n, extra);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        start_overlay_node(cluster, url, &mut n, i as u8 + 1, &flags)
            .await
            .unwrap();
        nodes.push(n);
    }
    nodes
}

/// A cluster of its own, a lab of proxy nodes joined to it and the default
/// namespace's pods (fields drop in order: the nodes stop before their lab goes).
struct ProxyLab {
    nodes: Vec<SimNode>,
    pods: Api<Pod>,
    _fwd: kernlet_tests::simnode::Forward,
    lab: Lab,
    cluster: Cluster,
}

impl ProxyLab {
    /// Lab `name` with a proxy node per label, started with `extra` flags.
    async fn start(name: &str, labels: &[&str], extra: &[&str]) -> Self {
        let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
        let mut lab = Lab::new(name).unwrap();
        let fwd = lab.forward(0, cluster.addr()).unwrap();
        apply_node_rbac(&cluster).unwrap();
        let nodes = proxy_nodes(&cluster, &mut lab, &fwd.url, labels, extra).await;
        let pods = Api::namespaced(cluster.admin().await.unwrap(), "default");
        Self {
            nodes,
            pods,
            _fwd: fwd,
            lab,
            cluster,
        }
    }

    /// `--net=` of the lab's bridge namespace (outside the nodes), for nsenter.
    fn outside(&self) -> String {
        format!("--net=/run/netns/{}", self.lab.bridge_netns())
    }
}

/// A backend pod labelled app=web on `node`; in its namespace a TCP server on :8080 and
/// a UDP echo on :5353 that answer with `name`, and a TCP server on :8081 that answers
/// `name` and the client address it sees.
async fn backend(
    cluster: &Cluster,
    pods: &Api<Pod>,
    node: &SimNode,
    name: &str,
) -> (Ipv4Addr, PathBuf) {
    let (ip, netns) = sleeping_ready(
        cluster,
        pods,
        node,
        name,
        serde_json::json!({"app": "web", "pod": name}),
    )
    .await;
    serve_in(ip, &netns, name);
    (ip, netns)
}

/// In the pod network namespace `netns` (address `ip`), served by the test: a TCP
/// server on :8080 and a UDP echo on :5353 that answer with `name`, and a TCP server
/// on :8081 that answers `name` and the client address it sees.
fn serve_in(ip: Ipv4Addr, netns: &Path, name: &str) {
    let tcp = in_netns(netns, move || {
        std::net::TcpListener::bind((ip, 8080)).unwrap()
    })
    .unwrap();
    let udp = in_netns(netns, move || {
        std::net::UdpSocket::bind((ip, 5353)).unwrap()
    })
    .unwrap();
    let peer = in_netns(netns, move || {
        std::net::TcpListener::bind((ip, 8081)).unwrap()
    })
    .unwrap();
    let who = name.to_string();
    std::thread::spawn(move || {
        for s in tcp.incoming() {
            let Ok(mut s) = s else { return };
            let _ = s.write_all(who.as_bytes());
        }
    });
    let who = name.to_string();
    std::thread::spawn(move || {
        for s in peer.incoming() {
            let Ok(mut s) = s else { return };
            let client = s
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let _ = s.write_all(format!("{who} {client}").as_bytes());
        }
    });
    let who = name.to_string();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((_, peer)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(who.as_bytes(), peer);
        }
    });
}

const CLIENT: &str = r#"
import json, socket, sys
ip, n = sys.argv[1], int(sys.argv[2])
out = {"tcp": [], "peer": None, "udp": [], "udp_from": None, "error": None}
try:
    for _ in range(n):
        s = socket.create_connection((ip, 80), timeout=3)
        out["peer"] = list(s.getpeername())
        out["tcp"].append(s.recv(100).decode())
        s.close()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(3)
    for _ in range(n):
        u.sendto(b"hi", (ip, 53))
        data, addr = u.recvfrom(100)
        out["udp"].append(data.decode())
        out["udp_from"] = list(addr)
    # An IPv6 socket reaching the service through its IPv4-mapped address.
    mapped = "::ffff:" + ip
    s = socket.create_connection((mapped, 80), timeout=3)
    out["peer6"] = list(s.getpeername()[:2])
    out["tcp6"] = s.recv(100).decode()
    s.close()
    u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u6.settimeout(3)
    u6.sendto(b"hi", (mapped, 53))
    data, addr = u6.recvfrom(100)
    out["udp6"] = data.decode()
    out["udp6_from"] = list(addr[:2])
except Exception as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out))
"#;

/// `kernlet services [FILTER]` on `node`, with its kubeconfig or without.
fn services_view(node: &SimNode, named: bool, json: bool) -> String {
    services_filtered(node, named, json, None)
}

fn services_filtered(node: &SimNode, named: bool, json: bool, filter: Option<&str>) -> String {
    let mut cmd = node.command(kernlet_tests::simnode::kernlet_bin().unwrap());
    cmd.arg("services")
        .args(filter)
        .args(["-o", if json { "json" } else { "table" }])
        .arg("--bpffs-dir")
        .arg(node.dir("bpf"))
        .arg("--state-dir")
        .arg(node.dir("state"))
        .arg("--run-dir")
        .arg(node.dir("run"));
    if named {
        cmd.arg("--kubeconfig")
            .arg(node.dir("state").join("node.kubeconfig"));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kernlet explain TARGET` on `node` with its kubeconfig.
fn explain(node: &SimNode, target: &str, json: bool) -> String {
    let out = kernlet_tests::succeeded(
        node.command(kernlet_tests::simnode::kernlet_bin().unwrap())
            .args(["explain", target, "-o", if json { "json" } else { "table" }])
            .arg("--kubeconfig")
            .arg(node.dir("state").join("node.kubeconfig"))
            .arg("--state-dir")
            .arg(node.dir("state"))
            .arg("--run-dir")
            .arg(node.dir("run"))
            .arg("--bpffs-dir")
            .arg(node.dir("bpf")),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A UDP client that connects to the service (argument 1) until it lands on the
/// backend named by argument 2, says so, then on a line of input sends once more and
/// says what happened.
const UDP_CLIENT: &str = r#"
import socket, sys
ip, want = sys.argv[1], sys.argv[2]
family = socket.AF_INET6 if ":" in ip else socket.AF_INET
for _ in range(40):
    u = socket.socket(family, socket.SOCK_DGRAM)
    u.settimeout(3)
    u.connect((ip, 53))
    u.send(b"hi")
    if u.recv(100).decode() == want:
        break
    u.close()
print("on " + want, flush=True)
sys.stdin.readline()
try:
    u.send(b"hi")
    print("answer " + u.recv(100).decode(), flush=True)
except OSError as e:
    print("error %d" % e.errno, flush=True)
"#;

/// A UDP client (`UDP_CLIENT`) whose connected socket landed on one backend, kept open.
struct ConnectedUdp {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl ConnectedUdp {
    /// Runs `cmd` (the client, with its service address and backend name) until it
    /// says it is on backend `want`.
    fn start(mut cmd: std::process::Command, want: &str) -> Self {
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line.trim(), format!("on {want}"));
        Self { child, out }
    }

    /// Has it send once more and checks kernlet closed the socket under it (the
    /// backend was removed): ECONNABORTED, or EDESTADDRREQ once the aborted socket is
    /// disconnected.
    fn assert_closed(mut self, node: &SimNode) {
        self.child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut self.out, &mut line).unwrap();
        assert!(
            ["error 103", "error 89"].contains(&line.trim()),
            "{line}\n{}",
            node.kernlet_log()
        );
        let _ = self.child.wait();
    }
}

/// Runs the client in the network namespace `netns`, as a process of `cgroup` (the
/// load-balancer translates the socket calls of processes below the cgroup it is
/// attached to).
fn client(cgroup: &Path, netns: &Path, ip: Ipv4Addr, n: usize) -> serde_json::Value {
    py_json(cgroup, netns, CLIENT, &[&ip.to_string(), &n.to_string()])
}

/// Runs the Python `script` with `args` as a process of `cgroup` in the network
/// namespace `netns`; what it printed, as JSON.
fn py_json(cgroup: &Path, netns: &Path, script: &str, args: &[&str]) -> serde_json::Value {
    std::fs::create_dir_all(cgroup).unwrap();
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec nsenter --net={} python3 -c '{}' {}",
        cgroup.display(),
        netns.display(),
        script,
        args.join(" ")
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ips_are_balanced_by_the_socket_hooks() {
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("svc").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    apply_node_rbac(&cluster).unwrap();
    let mut nodes = proxy_nodes(&cluster, &mut lab, &fwd.url, &["s1", "s2"], &[]).await;
    let admin = cluster.admin().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let (a_ip, a_ns) = backend(&cluster, &pods, &nodes[0], "web-a").await;
    let (b_ip, b_ns) = backend(&cluster, &pods, &nodes[1], "web-b").await;
    let (_, client_ns) = sleeping_pod(&cluster, &pods, &nodes[0], "client")
        .await
        .unwrap();

    let services: Api<Service> = Api::namespaced(admin.clone(), "default");
    let cluster_ip = create_service(
        &cluster,
        serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"},
            ]},
        }),
    )
    .await;

    // From a pod: both backends answer over TCP and UDP; the socket shows the service.
    let cg = nodes[0].cgroup().join("client");
    let start = std::time::Instant::now();
    loop {
        let out = client(&cg, &client_ns, cluster_ip, 1);
        if out["error"].is_null() {
            break;
        }
        let log = nodes[0].kernlet_log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("ervice") || l.contains("ERROR") || l.contains("WARN"))
            .collect();
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the ClusterIP {cluster_ip} never answered: {out}\n{lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let out = client(&cg, &client_ns, cluster_ip, 24);
    assert!(out["error"].is_null(), "{out}\n{}", nodes[0].kernlet_log());
    let tcp: Vec<&str> = out["tcp"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(tcp.contains(&"web-a") && tcp.contains(&"web-b"), "{tcp:?}");
    assert_eq!(
        out["peer"],
        serde_json::json!([cluster_ip.to_string(), 80]),
        "getpeername"
    );
    let udp: Vec<&str> = out["udp"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        udp.iter().all(|u| *u == "web-a" || *u == "web-b"),
        "{udp:?}"
    );
    assert_eq!(
        out["udp_from"],
        serde_json::json!([cluster_ip.to_string(), 53]),
        "recvfrom"
    );
    // The same through an IPv6 socket and the IPv4-mapped address.
    let mapped = format!("::ffff:{cluster_ip}");
    assert_eq!(out["peer6"], serde_json::json!([mapped, 80]), "{out}");
    assert_eq!(out["udp6_from"], serde_json::json!([mapped, 53]), "{out}");
    for k in ["tcp6", "udp6"] {
        assert!(
            out[k] == "web-a" || out[k] == "web-b",
            "{k} through the mapped address: {out}"
        );
    }
    // kernlet services: the table from the pinned maps, named after the Service.
    let view: serde_json::Value =
        serde_json::from_str(&services_view(&nodes[0], true, true)).unwrap();
    let rows = view["frontends"].as_array().unwrap();
    let http = rows
        .iter()
        .find(|r| r["frontend"] == format!("{cluster_ip}:80/TCP"))
        .unwrap_or_else(|| panic!("{view}"));
    assert_eq!(http["service"], "default/web");
    assert_eq!(view["daemon"]["running"], true, "{view}");
    assert!(view["daemon"]["lastSync"].is_string(), "{view}");
    assert_eq!(http["backends"].as_array().unwrap().len(), 2, "{http}");
    // Per-backend counters: the 24 connects above (and the probes before) went out.
    let sent: Vec<u64> = http["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["sent"].as_u64().unwrap())
        .collect();
    assert!(
        sent.iter().all(|n| *n > 0) && sent.iter().sum::<u64>() >= 24,
        "{http}"
    );
    assert_eq!(http["affinityTimeoutSeconds"], 0);
    assert!(
        rows.iter()
            .any(|r| r["frontend"] == format!("{cluster_ip}:53/UDP"))
    );
    let table = services_view(&nodes[0], true, false);
    assert!(
        table.contains("default/web") && table.contains(":8080"),
        "{table}"
    );
    // pods and ps ask the running daemon too.
    let pods_json = |node: &SimNode, cmd: &str| -> serde_json::Value {
        let out = node
            .command(kernlet_tests::simnode::kernlet_bin().unwrap())
            .args([cmd, "-o", "json", "--state-dir"])
            .arg(node.dir("state"))
            .arg("--run-dir")
            .arg(node.dir("run"))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let list = pods_json(&nodes[0], "pods");
    assert_eq!(list["daemon"]["running"], true, "{}", list["daemon"]);
    assert!(list["daemon"]["lastSync"].is_string(), "{}", list["daemon"]);
    assert!(list["daemon"]["lastError"].is_null(), "{}", list["daemon"]);
    let ps = pods_json(&nodes[0], "ps");
    assert_eq!(ps["daemon"]["running"], true, "{}", ps["daemon"]);
    // kernlet explain: the frontend, its backends, and where each lives.
    let x: serde_json::Value =
        serde_json::from_str(&explain(&nodes[0], &format!("{cluster_ip}:80"), true)).unwrap();
    assert_eq!(x["kind"], "frontend", "{x:#}");
    let backends = x["frontends"][0]["backends"].as_array().unwrap();
    let at = |ip: Ipv4Addr| {
        backends
            .iter()
            .find(|b| b["address"] == format!("{ip}:8080"))
            .unwrap_or_else(|| panic!("{x:#}"))["at"]
            .clone()
    };
    let local = at(a_ip);
    assert_eq!(
        (&local["where"], &local["pod"]),
        (&"this node".into(), &"default/web-a".into()),
        "{x:#}"
    );
    assert!(local["veth"].as_str().unwrap().starts_with("veth"), "{x:#}");
    let remote = at(b_ip);
    assert_eq!(
        (&remote["where"], &remote["route"]),
        (&"node s2".into(), &"ok".into()),
        "{x:#}"
    );
    let text = explain(&nodes[0], "default/web", false);
    assert!(
        text.contains("service default/web")
            && text.contains(&format!("{cluster_ip}:80/TCP"))
            && text.contains(&format!("{cluster_ip}:53/UDP"))
            && text.contains("pod default/web-a on this node")
            && text.contains("node s2 (pod CIDR 10.244.2.0/24) via flannel.1"),
        "{text}"
    );
    let pod: serde_json::Value =
        serde_json::from_str(&explain(&nodes[0], "default/client", true)).unwrap();
    assert_eq!(
        (&pod["kind"], &pod["at"]["where"]),
        (&"pod".into(), &"this node".into()),
        "{pod:#}"
    );

    // externalTrafficPolicy Local: each node's health check port tells a load
    // balancer whether it has a local endpoint (only web-a, on s1, is selected).
    let lb: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-lb"},
        "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 32100,
                 "selector": {"pod": "web-a"},
                 "ports": [{"name": "http", "port": 81, "targetPort": 8080, "protocol": "TCP"}]},
    }))
    .unwrap();
    services.create(&PostParams::default(), &lb).await.unwrap();
    cluster
        .sync_endpointslice("default", "web-lb")
        .await
        .unwrap();
    let bridge_ns = PathBuf::from(format!("/run/netns/{}", lab.bridge_netns()));
    let get = |node: &SimNode, port: u16, path: &str| {
        let mut c = kernlet::sys::ns::connect_in(
            Some(&bridge_ns),
            (node.address, port).into(),
            Duration::from_secs(3),
        )
        .ok()?;
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .ok()?;
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut c, &mut answer).ok()?;
        Some(answer)
    };
    let health = |node: &SimNode| get(node, 32100, "/");
    let on_s1 = wait_for(
        "the health check on s1",
        Duration::from_secs(20),
        async || health(&nodes[0]).filter(|a| a.contains("localEndpoints\":1")),
    )
    .await;
    assert!(on_s1.starts_with("HTTP/1.1 200"), "{on_s1}");
    assert!(
        on_s1.contains(r#""service":{"name":"web-lb","namespace":"default"}"#),
        "{on_s1}"
    );
    let on_s2 = wait_for(
        "the health check on s2",
        Duration::from_secs(20),
        async || health(&nodes[1]),
    )
    .await;
    assert!(
        on_s2.starts_with("HTTP/1.1 503") && on_s2.contains("localEndpoints\":0"),
        "{on_s2}"
    );

    // From the node itself.
    let node_ns = PathBuf::from(format!("/run/netns/{}", nodes[1].netns));
    let out = client(&nodes[1].cgroup().join("client"), &node_ns, cluster_ip, 4);
    assert!(out["error"].is_null(), "{out}\n{}", nodes[1].kernlet_log());

    // sessionAffinity ClientIP: a client keeps its backend.
    let sticky: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "sticky"},
        "spec": {"selector": {"app": "web"}, "sessionAffinity": "ClientIP",
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    }))
    .unwrap();
    let sticky = services
        .create(&PostParams::default(), &sticky)
        .await
        .unwrap();
    let sticky_ip: Ipv4Addr = sticky.spec.unwrap().cluster_ip.unwrap().parse().unwrap();
    cluster
        .sync_endpointslice("default", "sticky")
        .await
        .unwrap();
    let picked = wait_for("the sticky service", Duration::from_secs(20), async || {
        let out = client(&cg, &client_ns, sticky_ip, 16);
        let tcp: Vec<String> = out["tcp"]
            .as_array()?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        (tcp.len() == 16).then_some(tcp)
    })
    .await;
    assert!(
        picked.iter().all(|t| *t == picked[0]),
        "one backend for one client: {picked:?}"
    );
    let view: serde_json::Value =
        serde_json::from_str(&services_view(&nodes[0], true, true)).unwrap();
    let row = view["frontends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["service"] == "default/sticky")
        .unwrap_or_else(|| panic!("{view}"))
        .clone();
    assert_eq!(row["affinityTimeoutSeconds"], 10800, "{row}");
    affinity_outlives_a_wide_backend_set(&admin, &nodes[0], (a_ip, &a_ns), &cg, &client_ns).await;
    a_musl_style_resolver_gets_every_answer(
        &cluster,
        &admin,
        &[(a_ip, &a_ns), (b_ip, &b_ns)],
        &cg,
        &client_ns,
    )
    .await;

    // kube-proxy's own health endpoint: 200 while synced; 503 on a node the cluster
    // autoscaler is about to delete (livez still 200).
    let proxy_health = |node: &SimNode, path: &str| get(node, 10256, path).unwrap_or_default();
    let ok = proxy_health(&nodes[1], "/healthz");
    assert!(
        ok.starts_with("HTTP/1.1 200") && ok.contains("\"nodeEligible\":true"),
        "{ok}"
    );
    let node_api: Api<k8s_openapi::api::core::v1::Node> = Api::all(admin.clone());
    let taint = |on: bool| {
        serde_json::json!({"spec": {"taints": if on {
            serde_json::json!([{"key": "ToBeDeletedByClusterAutoscaler", "value": "1", "effect": "NoSchedule"}])
        } else {
            serde_json::json!([])
        }}})
    };
    node_api
        .patch(
            "s2",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(taint(true)),
        )
        .await
        .unwrap();
    let going = wait_for("s2's healthz 503", Duration::from_secs(20), async || {
        let a = proxy_health(&nodes[1], "/healthz");
        a.starts_with("HTTP/1.1 503").then_some(a)
    })
    .await;
    assert!(going.contains("\"nodeEligible\":false"), "{going}");
    assert!(proxy_health(&nodes[1], "/livez").starts_with("HTTP/1.1 200"));
    assert!(proxy_health(&nodes[0], "/healthz").starts_with("HTTP/1.1 200"));
    node_api
        .patch(
            "s2",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(taint(false)),
        )
        .await
        .unwrap();
    wait_for(
        "s2's healthz 200 again",
        Duration::from_secs(20),
        async || {
            proxy_health(&nodes[1], "/healthz")
                .starts_with("HTTP/1.1 200")
                .then_some(())
        },
    )
    .await;

    // kube-proxy's metrics, on its metrics address inside the node: the syncs, when
    // the last one succeeded, the changes seen, the programming latency.
    let node_ns = PathBuf::from(format!("/run/netns/{}", nodes[0].netns));
    let mut c = kernlet::sys::ns::connect_in(
        Some(&node_ns),
        (std::net::Ipv4Addr::LOCALHOST, 10249).into(),
        Duration::from_secs(3),
    )
    .unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut c, &mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200") && head.contains("text/plain"),
        "{head}"
    );
    let m = kernlet_tests::prometheus::parse(body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    let v4 = [("ip_family", "IPv4")];
    assert!(
        m.find("kubeproxy_sync_proxy_rules_duration_seconds_count", &v4)[0].value >= 1.0,
        "{body}"
    );
    assert!(
        m.find("kubeproxy_sync_proxy_rules_last_timestamp_seconds", &v4)[0].value > 1.7e9,
        "{body}"
    );
    assert!(
        m.find("kubeproxy_sync_proxy_rules_endpoint_changes_total", &[])[0].value >= 1.0,
        "{body}"
    );
    assert!(
        m.find("kubeproxy_sync_proxy_rules_service_changes_total", &[])[0].value >= 1.0,
        "{body}"
    );
    assert_eq!(
        m.types["kubeproxy_network_programming_duration_seconds"],
        "histogram"
    );

    // Topology: with the nodes in zones, PreferSameNode and PreferSameZone keep s1's
    // clients on web-a (s1, zone-a); web-b is on s2 in zone-b.
    for (node, zone) in [("s1", "zone-a"), ("s2", "zone-b")] {
        node_api
            .patch(
                node,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(serde_json::json!({"metadata": {"labels": {"topology.kubernetes.io/zone": zone}}})),
            )
            .await
            .unwrap();
    }
    for (name, distribution) in [("near", "PreferSameNode"), ("zonal", "PreferSameZone")] {
        let ip = create_service(
            &cluster,
            serde_json::json!({
                "metadata": {"name": name},
                "spec": {"selector": {"app": "web"}, "trafficDistribution": distribution,
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
            }),
        )
        .await;
        let picked = wait_for(
            &format!("{name} answering"),
            Duration::from_secs(30),
            async || {
                let out = client(&cg, &client_ns, ip, 16);
                let tcp: Vec<String> = out["tcp"]
                    .as_array()?
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect();
                // The node's zone is read at a resync: wait for the narrowed set.
                (tcp.len() == 16 && tcp.iter().all(|t| t == "web-a")).then_some(tcp)
            },
        )
        .await;
        assert_eq!(picked.len(), 16, "{distribution}");
    }
    // Filtered by the service's name, by its address, by something nothing has.
    for f in ["default/web", &cluster_ip.to_string()] {
        let v: serde_json::Value =
            serde_json::from_str(&services_filtered(&nodes[0], true, true, Some(f))).unwrap();
        let picked = v["frontends"].as_array().unwrap();
        let mut fronts: Vec<&str> = picked
            .iter()
            .map(|r| r["frontend"].as_str().unwrap())
            .collect();
        fronts.sort();
        assert_eq!(
            fronts,
            [
                format!("{cluster_ip}:53/UDP"),
                format!("{cluster_ip}:80/TCP")
            ],
            "filter {f}: {v}"
        );
        assert!(picked.iter().all(|r| r["service"] == "default/web"), "{v}");
    }
    assert!(
        view["frontends"].as_array().unwrap().len() > 3,
        "other frontends (web-lb's, sticky's) exist to be filtered out: {view}"
    );
    let none: serde_json::Value =
        serde_json::from_str(&services_filtered(&nodes[0], true, true, Some("no-such"))).unwrap();
    assert_eq!(none["frontends"], serde_json::json!([]), "{none}");
    let table = services_filtered(&nodes[0], true, false, Some("default/web"));
    assert!(
        table.contains(&format!("{cluster_ip}:80/TCP"))
            && !table.contains("web-lb")
            && !table.contains("sticky"),
        "{table}"
    );

    // A connected UDP socket on web-b, kept open across web-b's removal.
    let mut on_b_cmd = std::process::Command::new("bash");
    on_b_cmd.args([
        "-c",
        &format!(
            "echo $$ > {}/cgroup.procs && exec nsenter --net={} python3 -c '{}' {cluster_ip} web-b",
            cg.display(),
            client_ns.display(),
            UDP_CLIENT
        ),
    ]);
    let on_b_client = ConnectedUdp::start(on_b_cmd, "web-b");

    // web-b not ready: only web-a is chosen.
    set_conditions(&admin, "web-kltest", &[("web-b", false, false, false)]).await;
    wait_for(
        "web-b out of rotation",
        Duration::from_secs(20),
        async || {
            let out = client(&cg, &client_ns, cluster_ip, 12);
            let tcp = out["tcp"].as_array()?.clone();
            (tcp.len() == 12 && tcp.iter().all(|t| t == "web-a")).then_some(())
        },
    )
    .await;

    // The socket connected to web-b was closed: its next send fails, the client
    // reconnects to a live backend.
    on_b_client.assert_closed(&nodes[0]);

    // kernlet status: the services programmed and how fresh the daemon's last sync is.
    let status = |node: &SimNode| -> serde_json::Value { node.status_json().unwrap() };
    let st = status(&nodes[0]);
    assert_eq!(st["services"]["programmed"], true, "{st:#}");
    assert!(st["services"]["frontends"].as_u64().unwrap() >= 3, "{st:#}");
    assert!(
        st["services"]["syncLagSeconds"].as_i64().unwrap() <= 5,
        "{st:#}"
    );

    // kernlet down: the pinned programs and maps keep translating.
    nodes[0].stop_kernlet(Duration::from_secs(5)).unwrap();
    let out = client(&cg, &client_ns, cluster_ip, 4);
    assert!(
        out["error"].is_null(),
        "translation survives the agent: {out}"
    );
    let mut links: Vec<String> = std::fs::read_dir(nodes[0].dir("bpf").join("lb/links"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    links.sort();
    // The eight socket hooks (IPv4, and IPv6 for mapped addresses); the outside-traffic programs on the underlay (both ways)
    // and on the overlay device (bpffs names take no '.').
    assert_eq!(
        links,
        [
            "kl_lb_connect4",
            "kl_lb_connect6",
            "kl_lb_egress@eth0",
            "kl_lb_getpeername4",
            "kl_lb_getpeername6",
            "kl_lb_ingress@eth0",
            "kl_lb_ingress@flannel_1",
            "kl_lb_recvmsg4",
            "kl_lb_recvmsg6",
            "kl_lb_sendmsg4",
            "kl_lb_sendmsg6"
        ],
        "the kernlet log: {}",
        nodes[0].kernlet_log()
    );
    let view: serde_json::Value =
        serde_json::from_str(&services_view(&nodes[0], false, true)).unwrap();
    let http = view["frontends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["frontend"] == format!("{cluster_ip}:80/TCP"))
        .unwrap_or_else(|| panic!("{view}"))
        .clone();
    assert_eq!(
        http["backends"].as_array().unwrap().len(),
        1,
        "with the daemon down: {http}"
    );
    assert!(view["names"].as_str().unwrap().starts_with("unnamed"));
    assert_eq!(view["daemon"]["running"], false, "{view}");
    // kernlet pods answers from the state directory too.
    let list = pods_json(&nodes[0], "pods");
    assert_eq!(list["daemon"]["running"], false, "{}", list["daemon"]);
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .collect();
    assert!(
        names.contains(&"web-a") && names.contains(&"client"),
        "{names:?}"
    );
    let st = status(&nodes[0]);
    assert_eq!(st["daemon"]["running"], false);
    assert_eq!(
        st["services"]["programmed"], true,
        "the maps still answer: {st:#}"
    );
    assert!(services_view(&nodes[0], false, false).contains("daemon: NOT RUNNING"));
    let table = nodes[0]
        .command(kernlet_tests::simnode::kernlet_bin().unwrap())
        .args(["ps", "--state-dir"])
        .arg(nodes[0].dir("state"))
        .arg("--run-dir")
        .arg(nodes[0].dir("run"))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.starts_with("daemon: NOT RUNNING") && table.contains("web-a"),
        "{table}"
    );
    // Back: the maps are adopted, not flushed; changes flow again.
    let kc = nodes[0]
        .dir("state")
        .join("node.kubeconfig")
        .display()
        .to_string();
    let cg0 = nodes[0].cgroup().display().to_string();
    nodes[0]
        .start_kernlet(&[
            "run",
            "--kubeconfig",
            &kc,
            "--node-name",
            "s1",
            "--node-lease-renew-interval-ms",
            "1000",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--overlay-resync",
            "1",
            "--service-proxy",
            "--service-cgroup",
            &cg0,
            "--service-resync",
            "1",
        ])
        .unwrap();
    let out = client(&cg, &client_ns, cluster_ip, 4);
    assert!(out["error"].is_null(), "right after the restart: {out}");
    wait_for(
        "the restarted agent attached",
        Duration::from_secs(20),
        async || {
            nodes[0]
                .kernlet_log()
                .contains("Service datapath attached")
                .then_some(())
        },
    )
    .await;

    // No endpoint at all: a connect fails at once instead of hanging.
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(admin.clone(), "default");
    let mut slice = slices.get("web-kltest").await.unwrap();
    slice.endpoints = Some(Vec::new());
    slices
        .replace("web-kltest", &PostParams::default(), &slice)
        .await
        .unwrap();
    wait_for("connects refused", Duration::from_secs(20), async || {
        let out = client(&cg, &client_ns, cluster_ip, 1);
        out["error"]
            .as_str()?
            .contains("PermissionError")
            .then_some(())
    })
    .await;
    drop(fwd);
}

/// A backend pod labelled app=echo on `node`: TCP and UDP echo on :7000 inside its
/// namespace, each answer prefixed with `name:`.
/// musl's resolver: the A and AAAA queries sent together on one unconnected UDP socket
/// to the nameserver, and a reply taken only when it comes from the nameserver's own
/// address and port (anything else is dropped as a stranger's). Prints what it saw.
const MUSL_RESOLVER: &str = r#"
import json, socket, struct, sys, time
ip, rounds = sys.argv[1], int(sys.argv[2])
qname = b"".join(bytes([len(p)]) + p.encode() for p in "web.default.svc.cluster.local".split(".")) + b"\0"
def query(qid, qtype):
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", qtype, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
out = {"resolved": 0, "failed": [], "strangers": []}
for r in range(rounds):
    a, aaaa = (2 * r) & 0xffff, (2 * r + 1) & 0xffff
    s.sendto(query(a, 1), (ip, 53))
    s.sendto(query(aaaa, 28), (ip, 53))
    got, end = {}, time.time() + 2
    while len(got) < 2 and time.time() < end:
        s.settimeout(max(0.01, end - time.time()))
        try:
            data, frm = s.recvfrom(4096)
        except socket.timeout:
            break
        if frm != (ip, 53):
            out["strangers"].append(list(frm))
            continue
        qid, flags, _, an = struct.unpack(">HHHH", data[:8])
        if qid in (a, aaaa):
            got[qid] = (flags & 0xF, an)
    if len(got) == 2 and got[a][0] == 0 and got[a][1] >= 1:
        out["resolved"] += 1
    else:
        out["failed"].append(r)
print(json.dumps(out))
"#;

/// Two DNS replicas (the kit's cluster DNS in the pods `replicas`) behind one ClusterIP,
/// and a musl-style resolver in the client pod: every round gets both answers, each
/// showing the ClusterIP as its source — the reverse translation is per backend, so a
/// reply from the first replica is not lost when the second query went to the other.
async fn a_musl_style_resolver_gets_every_answer(
    cluster: &Cluster,
    admin: &kube::Client,
    replicas: &[(Ipv4Addr, &Path)],
    cg: &Path,
    client_ns: &Path,
) {
    let mut servers = Vec::new();
    for (ip, ns) in replicas {
        let ip = *ip;
        let (udp, tcp) = in_netns(ns, move || {
            let u = std::net::UdpSocket::bind((ip, 5300)).unwrap();
            let t = std::net::TcpListener::bind((ip, 5300)).unwrap();
            u.set_nonblocking(true).unwrap();
            t.set_nonblocking(true).unwrap();
            (u, t)
        })
        .unwrap();
        servers.push(kernlet_tests::dns::ClusterDns::serve(
            tokio::net::UdpSocket::from_std(udp).unwrap(),
            tokio::net::TcpListener::from_std(tcp).unwrap(),
            admin.clone(),
            "cluster.local",
        ));
    }
    let dns_ip = create_service(
        cluster,
        serde_json::json!({
            "metadata": {"name": "dns"},
            "spec": {"selector": {"app": "web"}, "ports": [
                {"name": "dns", "port": 53, "targetPort": 5300, "protocol": "UDP"}]},
        }),
    )
    .await;
    let run = |rounds: usize| {
        py_json(
            cg,
            client_ns,
            MUSL_RESOLVER,
            &[&dns_ip.to_string(), &rounds.to_string()],
        )
    };
    wait_for("the DNS Service", Duration::from_secs(20), async || {
        (run(1)["resolved"] == 1).then_some(())
    })
    .await;
    // 40 rounds: with two replicas, about half send their two queries to different
    // ones.
    let out = run(40);
    assert_eq!(out["resolved"], 40, "{out}");
    assert_eq!(out["strangers"], serde_json::json!([]), "{out}");
    drop(servers);
}

/// ClientIP affinity with more backends than any scan: a client keeps its backend when
/// the frontend grows from 1 to 101 backends and its backend sorts last (port 9215's
/// map order is after 9216–9315's).
async fn affinity_outlives_a_wide_backend_set(
    admin: &kube::Client,
    node: &SimNode,
    (ip, ns): (Ipv4Addr, &Path),
    cg: &Path,
    client_ns: &Path,
) {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let ports: Vec<u16> = (9215..=9315).collect();
    let listeners = in_netns(ns, {
        let ports = ports.clone();
        move || -> Vec<std::net::TcpListener> {
            ports
                .iter()
                .map(|p| std::net::TcpListener::bind((ip, *p)).unwrap())
                .collect()
        }
    })
    .unwrap();
    for (l, port) in listeners.into_iter().zip(ports.clone()) {
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let _ = s.write_all(port.to_string().as_bytes());
            }
        });
    }
    let services: Api<Service> = Api::namespaced(admin.clone(), "default");
    let wide: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "wide"},
        "spec": {"sessionAffinity": "ClientIP",
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    }))
    .unwrap();
    let wide = services
        .create(&PostParams::default(), &wide)
        .await
        .unwrap();
    let wide_ip: Ipv4Addr = wide.spec.unwrap().cluster_ip.unwrap().parse().unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), "default");
    let add = async |port: u16| {
        let s: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("wide-{port}"),
                         "labels": {"kubernetes.io/service-name": "wide"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true},
                           "nodeName": node.name}],
        }))
        .unwrap();
        slices.create(&PostParams::default(), &s).await.unwrap();
    };
    add(9215).await;
    let first = wait_for("the wide service", Duration::from_secs(20), async || {
        let out = client(cg, client_ns, wide_ip, 1);
        out["tcp"][0].as_str().map(str::to_string)
    })
    .await;
    assert_eq!(first, "9215");
    for p in &ports[1..] {
        add(*p).await;
    }
    wait_for(
        "101 backends programmed",
        Duration::from_secs(30),
        async || {
            let view: serde_json::Value =
                serde_json::from_str(&services_view(node, true, true)).ok()?;
            view["frontends"]
                .as_array()?
                .iter()
                .any(|r| {
                    r["service"] == "default/wide"
                        && r["backends"].as_array().map(Vec::len) == Some(101)
                })
                .then_some(())
        },
    )
    .await;
    let out = client(cg, client_ns, wide_ip, 16);
    let seen: Vec<&str> = out["tcp"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        seen.len() == 16 && seen.iter().all(|p| *p == "9215"),
        "the client left its backend: {out}"
    );
}

async fn echo_backend(cluster: &Cluster, pods: &Api<Pod>, node: &SimNode, name: &str) {
    let (ip, netns) = sleeping_ready(
        cluster,
        pods,
        node,
        name,
        serde_json::json!({"app": "echo"}),
    )
    .await;
    let tcp = in_netns(&netns, move || {
        std::net::TcpListener::bind((ip, 7000)).unwrap()
    })
    .unwrap();
    let udp = in_netns(&netns, move || {
        std::net::UdpSocket::bind((ip, 7000)).unwrap()
    })
    .unwrap();
    let prefix = format!("{name}:");
    let p = prefix.clone();
    std::thread::spawn(move || {
        for s in tcp.incoming() {
            let Ok(mut s) = s else { return };
            let p = p.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                while let Ok(n) = std::io::Read::read(&mut s, &mut buf) {
                    if n == 0 || s.write_all(&[p.as_bytes(), &buf[..n]].concat()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&[prefix.as_bytes(), &buf[..n]].concat(), peer);
        }
    });
}

/// A busybox pod `name` with `labels` that only sleeps, bound to `node`; its IP and
/// network namespace pin once it is Ready.
async fn sleeping_ready(
    cluster: &Cluster,
    pods: &Api<Pod>,
    node: &SimNode,
    name: &str,
    labels: serde_json::Value,
) -> (Ipv4Addr, PathBuf) {
    let spec = serde_json::json!({"terminationGracePeriodSeconds": 1, "containers": [
        {"name": "c", "image": "busybox:1.36", "command": ["sleep", "3600"]}]});
    ready_pod(cluster, pods, node, name, labels, spec).await
}

/// A pod `name` with `labels` and `spec`, bound to `node`; its IP and network
/// namespace pin once it is Ready.
async fn ready_pod(
    cluster: &Cluster,
    pods: &Api<Pod>,
    node: &SimNode,
    name: &str,
    labels: serde_json::Value,
    spec: serde_json::Value,
) -> (Ipv4Addr, PathBuf) {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    cluster.bind_pod("default", name, &node.name).await.unwrap();
    wait_for("the pod running", Duration::from_secs(60), async || {
        let p = pods.get(name).await.ok()?;
        let st = p.status?;
        let ready = st
            .conditions?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let ip: Ipv4Addr = st.pod_ip?.parse().ok()?;
        ready.then(|| {
            (
                ip,
                node.dir("run")
                    .join("pods")
                    .join(p.metadata.uid.unwrap())
                    .join("ns/net"),
            )
        })
    })
    .await
}

/// Holds 20 TCP streams and one connected UDP socket to the service for `seconds`,
/// exchanging a message on each every 200 ms; says "ready" once all are open, then at
/// the end what it saw.
const STREAMS: &str = r#"
import json, socket, sys, time
ip, seconds = sys.argv[1], float(sys.argv[2])
streams = [socket.create_connection((ip, 7), timeout=3) for _ in range(20)]
names = []
for s in streams:
    s.sendall(b"hello")
    names.append(s.recv(100).decode().split(":")[0])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(1)
u.connect((ip, 7))
print("ready", flush=True)
errors, rounds, udp_ok, udp_lost = [], 0, 0, 0
end = time.time() + seconds
while time.time() < end:
    rounds += 1
    for i, s in enumerate(streams):
        try:
            s.sendall(b"x")
            if s.recv(100).decode() != names[i] + ":x":
                errors.append("stream %d: wrong answer" % i)
        except OSError as e:
            errors.append("stream %d: %s" % (i, e))
    try:
        u.send(b"u")
        u.recv(100)
        udp_ok += 1
    except OSError:
        udp_lost += 1
    time.sleep(0.2)
print(json.dumps({"backends": names, "errors": errors, "rounds": rounds, "udp_ok": udp_ok, "udp_lost": udp_lost}), flush=True)
"#;

/// A `kill -9` of kernlet and its restart during 20 long-lived TCP streams and a UDP
/// flow through a ClusterIP: no stream breaks, the UDP flow goes on, and new
/// connections are balanced while the agent is down and after it is back (the
/// programs and maps are pinned; the restarted agent adopts them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_agent_breaks_no_stream() {
    use std::io::BufRead as _;
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("svck").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    apply_node_rbac(&cluster).unwrap();
    let mut node = proxy_nodes(&cluster, &mut lab, &fwd.url, &["k1"], &[])
        .await
        .remove(0);
    let admin = cluster.admin().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    echo_backend(&cluster, &pods, &node, "echo-a").await;
    echo_backend(&cluster, &pods, &node, "echo-b").await;
    let (_, client_ns) = sleeping_pod(&cluster, &pods, &node, "client")
        .await
        .unwrap();
    let ip = create_service(
        &cluster,
        serde_json::json!({
            "metadata": {"name": "echo"},
            "spec": {"selector": {"app": "echo"}, "ports": [
                {"name": "tcp", "port": 7, "targetPort": 7000, "protocol": "TCP"},
                {"name": "udp", "port": 7, "targetPort": 7000, "protocol": "UDP"},
            ]},
        }),
    )
    .await;
    let client_cg = node.cgroup().join("client");
    std::fs::create_dir_all(&client_cg).unwrap();
    // New connections: both backends answer.
    let balanced = |what: &str| {
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec nsenter --net={} python3 -c '{}' {ip}",
            client_cg.display(),
            client_ns.display(),
            "import socket, sys\nseen = set()\nfor _ in range(24):\n    s = socket.create_connection((sys.argv[1], 7), timeout=3)\n    s.sendall(b\"n\")\n    seen.add(s.recv(100).decode().split(\":\")[0])\n    s.close()\nprint(\" \".join(sorted(seen)))"
        );
        let out = std::process::Command::new("bash")
            .args(["-c", &script])
            .output()
            .unwrap();
        let seen = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(
            seen,
            "echo-a echo-b",
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    wait_for("the service answering", Duration::from_secs(30), async || {
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec nsenter --net={} python3 -c 'import socket; socket.create_connection((\"{ip}\", 7), timeout=2)'",
            client_cg.display(),
            client_ns.display()
        );
        std::process::Command::new("bash")
            .args(["-c", &script])
            .status()
            .ok()?
            .success()
            .then_some(())
    })
    .await;
    balanced("before");
    let mut long = std::process::Command::new("bash")
        .args([
            "-c",
            &format!(
                "echo $$ > {}/cgroup.procs && exec nsenter --net={} python3 -c '{}' {ip} 12",
                client_cg.display(),
                client_ns.display(),
                STREAMS
            ),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(long.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    tokio::time::sleep(Duration::from_secs(1)).await;
    node.kill9_kernlet().unwrap();
    balanced("with the agent killed");
    tokio::time::sleep(Duration::from_secs(2)).await;
    restart_proxy_node(&mut node, &[]).await;
    balanced("after the restart");
    let report: serde_json::Value =
        serde_json::from_str(&lines.next().expect("the stream client ended").unwrap()).unwrap();
    let _ = long.wait();
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    assert!(report["rounds"].as_u64().unwrap() >= 20, "{report}");
    assert_eq!(report["udp_lost"], 0, "{report}");
    let names: std::collections::BTreeSet<&str> = report["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(names.len(), 2, "20 streams over both backends: {report}");
    cleanup_removes_every_trace(&mut node);
    drop(fwd);
}

/// `kernlet cleanup` on a node whose agent died (`kill -9`, pods and pins left): refused
/// while the agent runs; then pins, the nftables table, the pod veths, the bridge,
/// flannel.1 and the records go, and a second run finds nothing.
fn cleanup_removes_every_trace(node: &mut SimNode) {
    let cleanup = |node: &SimNode| {
        node.command(kernlet_tests::simnode::kernlet_bin().unwrap())
            .args(["cleanup", "-o", "json", "--state-dir"])
            .arg(node.dir("state"))
            .arg("--run-dir")
            .arg(node.dir("run"))
            .arg("--bpffs-dir")
            .arg(node.dir("bpf"))
            .output()
            .unwrap()
    };
    let refused = cleanup(node);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("stop it first"),
        "{refused:?}"
    );
    node.kill9_kernlet().unwrap();
    let ip = |args: &[&str]| -> String {
        let out = node.run("ip", args).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = ip(&["-o", "link"]);
    assert!(
        before.contains("flannel.1") && before.contains("cni0"),
        "{before}"
    );
    let out = cleanup(node);
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let removed = report["removed"].as_array().unwrap();
    let has = |kind: &str, pred: &dyn Fn(&serde_json::Value) -> bool| {
        removed.iter().any(|t| t["kind"] == kind && pred(t))
    };
    assert!(has("device", &|t| t["name"] == "flannel.1"), "{report}");
    assert!(has("device", &|t| t["name"] == "cni0"), "{report}");
    assert!(
        has("device", &|t| t["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("veth"))),
        "{report}"
    );
    assert!(has("programLink", &|_| true), "{report}");
    assert!(
        has("map", &|t| t["pin"]
            .as_str()
            .is_some_and(|p| p.ends_with("KL_SERVICES"))),
        "{report}"
    );
    assert!(
        has("records", &|t| t["dir"]
            .as_str()
            .is_some_and(|p| p.ends_with("ipam"))),
        "{report}"
    );
    assert_eq!(report["failed"], serde_json::json!([]), "{report}");
    // Nothing left in the kernel or on disk.
    let after = ip(&["-o", "link"]);
    assert!(
        !after.contains("flannel.1") && !after.contains("cni0") && !after.contains("veth"),
        "{after}"
    );
    let table = node
        .run("nft", &["list", "table", "ip", "kernlet"])
        .unwrap();
    assert!(!table.status.success(), "{table:?}");
    let lb = node.dir("bpf").join("lb");
    assert!(!lb.exists(), "pins left: {:?}", walkdir(&lb));
    assert!(has("pinDir", &|t| t["mount"] == true), "{report}");
    assert!(!node.dir("state").join("ipam").exists());
    let again = cleanup(node);
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["removed"], serde_json::json!([]), "{again}");
}

/// The files under `dir`, at any depth.
fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Connects to ADDR PORT from eight fixed client ports in turn; says which backend
/// answered each (the backend closes first, so no port lingers in TIME_WAIT here).
const MAGLEV_CLIENT: &str = r#"
import socket, sys
seen = []
for port in range(40101, 40109):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("198.18.0.1", port))
    s.settimeout(3)
    s.connect((sys.argv[1], int(sys.argv[2])))
    data = b""
    while True:
        chunk = s.recv(100)
        if not chunk:
            break
        data += chunk
    s.close()
    seen.append(data.decode().split(" ")[0])
print(" ".join(seen))
"#;

/// What a backend's :8081 server said to a TCP client in network namespace `netns`
/// connecting to `addr` (`name client-address`), or `None` when nothing answered.
fn ask_from(netns: &Path, addr: std::net::SocketAddr) -> Option<String> {
    use std::io::Read as _;
    let mut c = kernlet::sys::ns::connect_in(Some(netns), addr, Duration::from_secs(2)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut answer = String::new();
    c.read_to_string(&mut answer).ok()?;
    (!answer.is_empty()).then_some(answer)
}

/// `n` answers through `addr` from `netns`, as (backend, client address it saw).
fn answers_from(netns: &Path, addr: std::net::SocketAddr, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|_| {
            let a = ask_from(netns, addr).unwrap_or_else(|| {
                if std::env::var_os("KL_DEBUG_PAUSE").is_some() {
                    eprintln!("PAUSED: {addr} did not answer");
                    std::thread::sleep(Duration::from_secs(900));
                }
                panic!("{addr} did not answer")
            });
            let (who, client) = a.split_once(' ').unwrap_or((&a, ""));
            (who.to_string(), client.to_string())
        })
        .collect()
}

/// A TCP client in `netns` connecting to `addr` from `from`:`port` (a fixed client
/// port, so a later call uses the same tuple again): `answer <what the server said>`,
/// `timeout` when nothing answered, or `error <errno>`. It reads to the server's close
/// before closing, so the server's side, not the client's, waits in TIME_WAIT and the
/// port can be bound again at once.
fn ask_from_port(
    netns: &Path,
    from: std::net::IpAddr,
    port: u16,
    addr: std::net::SocketAddr,
) -> String {
    const SCRIPT: &str = r#"
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.settimeout(2)
s.bind((sys.argv[1], int(sys.argv[2])))
try:
    s.connect((sys.argv[3], int(sys.argv[4])))
    data = b""
    while True:
        chunk = s.recv(100)
        if not chunk:
            break
        data += chunk
    print("answer " + data.decode())
except socket.timeout:
    print("timeout")
except OSError as e:
    print("error %d" % e.errno)
"#;
    let out = kernlet_tests::succeeded(
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["python3", "-c", SCRIPT])
            .args([from.to_string(), port.to_string()])
            .args([addr.ip().to_string(), addr.port().to_string()]),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `n` datagrams to `to` from `netns`, each from a fresh socket bound to `from` (a new
/// flow each): what answered (or the error) and the source the answer came from.
fn udp_answers_from(
    netns: &Path,
    from: std::net::IpAddr,
    to: std::net::SocketAddr,
    n: usize,
) -> Vec<(String, std::net::SocketAddr)> {
    in_netns(netns, move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 100];
        for _ in 0..n {
            let u = std::net::UdpSocket::bind((from, 0)).unwrap();
            u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            u.send_to(b"hi", to).unwrap();
            match u.recv_from(&mut buf) {
                Ok((n, from)) => out.push((String::from_utf8_lossy(&buf[..n]).to_string(), from)),
                Err(e) => out.push((format!("error: {e}"), to)),
            }
        }
        out
    })
    .unwrap()
}

/// Sets the `loadBalancerSourceRanges` of Service `name` and waits until `lb` answers a
/// client in `netns` (`open`) or stops answering it.
async fn set_source_ranges(
    services: &Api<Service>,
    name: &str,
    ranges: &[&str],
    netns: &Path,
    lb: std::net::SocketAddr,
    open: bool,
) {
    use kube::api::{Patch, PatchParams};
    services
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"loadBalancerSourceRanges": ranges}})),
        )
        .await
        .unwrap();
    wait_for(
        &format!(
            "{lb} {} the client",
            if open { "answering" } else { "refusing" }
        ),
        Duration::from_secs(20),
        async || (ask_from(netns, lb).is_some() == open).then_some(()),
    )
    .await;
}

/// Gives Service `name` the load-balancer IP `ip` (as a cloud controller would, in its
/// status), routes it to `via` from the lab bridge (`bridge_ns`) and waits until it
/// answers there.
async fn route_lb_ip(
    services: &Api<Service>,
    name: &str,
    bridge_ns: &str,
    lb: std::net::SocketAddr,
    via: std::net::IpAddr,
) {
    use kube::api::{Patch, PatchParams};
    services
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": lb.ip().to_string()}]}}})),
        )
        .await
        .unwrap();
    let st = std::process::Command::new("ip")
        .args([
            "-n",
            bridge_ns,
            "route",
            "add",
            &lb.ip().to_string(),
            "via",
            &via.to_string(),
        ])
        .status()
        .unwrap();
    assert!(st.success(), "routing {lb} via {via}");
    let netns = PathBuf::from(format!("/run/netns/{bridge_ns}"));
    wait_for(
        &format!("the load-balancer IP {lb} answering"),
        Duration::from_secs(20),
        async || ask_from(&netns, lb),
    )
    .await;
}

/// Traffic from outside the nodes (a client on the underlay: the lab bridge at
/// 198.18.0.1) to NodePorts, an external IP and a load-balancer IP, translated by the
/// TC programs on the node's interface: balanced over local and remote backends (the
/// remote ones SNAT'd so their replies come back through the node), the client's
/// address kept for local backends and under `externalTrafficPolicy: Local` (which
/// uses this node's endpoints only), UDP replies from the NodePort address, and
/// `loadBalancerSourceRanges` enforced on the load-balancer IP.
#[tokio::test(flavor = "multi_thread")]
async fn outside_traffic_reaches_services_through_the_tc_programs() {
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("svco").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    apply_node_rbac(&cluster).unwrap();
    // Maglev: a flow from outside reaches the same backend through either node.
    let maglev = ["--service-lb-algorithm", "maglev"];
    let mut nodes = proxy_nodes(&cluster, &mut lab, &fwd.url, &["o1", "o2"], &maglev).await;
    let admin = cluster.admin().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    backend(&cluster, &pods, &nodes[0], "web-a").await;
    backend(&cluster, &pods, &nodes[1], "web-b").await;
    let services: Api<Service> = Api::namespaced(admin.clone(), "default");
    for spec in [
        serde_json::json!({"metadata": {"name": "web"},
            "spec": {"type": "NodePort", "selector": {"app": "web"}, "externalIPs": ["203.0.113.10"],
                     "ports": [
                {"name": "http", "port": 80, "targetPort": 8081, "nodePort": 30081, "protocol": "TCP"},
                {"name": "dns", "port": 53, "targetPort": 5353, "nodePort": 30053, "protocol": "UDP"}]}}),
        serde_json::json!({"metadata": {"name": "web-local"},
            "spec": {"type": "NodePort", "externalTrafficPolicy": "Local", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8081, "nodePort": 30082}]}}),
        serde_json::json!({"metadata": {"name": "web-lb"},
            "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                     "loadBalancerSourceRanges": ["198.18.0.0/24"],
                     "ports": [{"name": "http", "port": 80, "targetPort": 8081, "nodePort": 30083}]}}),
    ] {
        create_service(&cluster, spec).await;
    }
    let bridge = PathBuf::from(format!("/run/netns/{}", lab.bridge_netns()));
    let addresses: Vec<Ipv4Addr> = nodes.iter().map(|n| n.address).collect();
    let at = |i: usize, port: u16| std::net::SocketAddr::from((addresses[i], port));
    let outside = "198.18.0.1";
    wait_for(
        "the NodePort answering from outside",
        Duration::from_secs(30),
        async || ask_from(&bridge, at(0, 30081)),
    )
    .await;

    // kernlet services: the NodePort is reached from outside and balanced by Maglev,
    // its two backends sharing the lookup table's 251 entries (the local one marked).
    let view: serde_json::Value =
        serde_json::from_str(&services_view(&nodes[0], false, true)).unwrap();
    let row = view["frontends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["frontend"] == format!("{}/TCP", at(0, 30081)))
        .unwrap_or_else(|| panic!("{view}"));
    assert_eq!(row["kind"], "external+maglev", "{row}");
    let backends = row["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2, "{row}");
    let weights: u64 = backends.iter().map(|b| b["weight"].as_u64().unwrap()).sum();
    assert_eq!(weights, 251, "{row}");
    assert_eq!(
        backends.iter().filter(|b| b["local"] == true).count(),
        1,
        "{row}"
    );

    // eTP Cluster: both backends through either node; the local one sees the client,
    // the remote one the node (SNAT), whose replies still reach the client.
    for i in 0..2 {
        let seen = answers_from(&bridge, at(i, 30081), 24);
        let local = if i == 0 { "web-a" } else { "web-b" };
        assert!(seen.iter().any(|(w, _)| w == "web-a"), "{seen:?}");
        assert!(seen.iter().any(|(w, _)| w == "web-b"), "{seen:?}");
        for (who, client) in &seen {
            if who == local {
                assert_eq!(client, outside, "a local backend sees the client: {seen:?}");
            } else {
                assert!(
                    client.starts_with("10.244."),
                    "a remote backend sees the node's overlay address: {seen:?}"
                );
            }
        }
    }

    // UDP through the NodePort: a flow (client port) keeps its backend; flows from 24
    // ports reach both, and replies come from the NodePort address.
    let to = at(0, 30053);
    let udp = udp_answers_from(&bridge, BRIDGE_IP.into(), to, 24);
    assert!(udp.iter().any(|(w, _)| w == "web-a"), "{udp:?}");
    assert!(udp.iter().any(|(w, _)| w == "web-b"), "{udp:?}");
    assert!(udp.iter().all(|(_, from)| *from == to), "{udp:?}");
    // kill -9 of o1's agent and its restart: an outside UDP flow keeps its backend (the
    // flow maps are pinned) and new outside connections are translated while the agent
    // is down and after it is back.
    let kept = in_netns(&bridge, move || {
        let u = std::net::UdpSocket::bind((BRIDGE_IP, 0)).unwrap();
        u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        u
    })
    .unwrap();
    let say = |u: &std::net::UdpSocket| {
        let mut buf = [0u8; 100];
        u.send_to(b"hi", to).unwrap();
        let (n, from) = u.recv_from(&mut buf).unwrap();
        assert_eq!(from, to);
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let first = say(&kept);
    nodes[0].kill9_kernlet().unwrap();
    assert_eq!(say(&kept), first, "the flow with the agent killed");
    assert!(
        ask_from(&bridge, at(0, 30081)).is_some(),
        "a new flow, agent down"
    );
    restart_proxy_node(&mut nodes[0], &maglev).await;
    assert_eq!(say(&kept), first, "the flow after the restart");
    assert!(
        ask_from(&bridge, at(0, 30081)).is_some(),
        "a new flow, agent back"
    );

    // A UDP flow that landed on web-b, kept for the end.
    let on_b = in_netns(&bridge, move || {
        for _ in 0..64 {
            let u = std::net::UdpSocket::bind((BRIDGE_IP, 0)).unwrap();
            u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 100];
            u.send_to(b"hi", to).unwrap();
            if let Ok((n, _)) = u.recv_from(&mut buf)
                && &buf[..n] == b"web-b"
            {
                return Some(u);
            }
        }
        None
    })
    .unwrap()
    .expect("no UDP flow landed on web-b in 64 tries");

    // eTP Local: only the node's own endpoint, which sees the client.
    for (i, only) in [(0, "web-a"), (1, "web-b")] {
        let seen = answers_from(&bridge, at(i, 30082), 12);
        assert!(
            seen.iter().all(|(w, c)| w == only && c == outside),
            "{seen:?}"
        );
    }

    // An external IP routed to o2.
    let ip = |args: &[&str]| {
        let st = std::process::Command::new("ip")
            .args(["-n", lab.bridge_netns()])
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "ip {args:?}");
    };
    ip(&[
        "route",
        "add",
        "203.0.113.10/32",
        "via",
        &nodes[1].address.to_string(),
    ]);
    let seen = answers_from(&bridge, "203.0.113.10:80".parse().unwrap(), 24);
    assert!(seen.iter().any(|(w, _)| w == "web-a"), "{seen:?}");
    assert!(seen.iter().any(|(w, _)| w == "web-b"), "{seen:?}");
    // Maglev: the same flows (client ports) through o2, then with the route moved to
    // o1, reach the same backends (at random, 8 flows agreeing by chance: 1 in 256).
    let flows = |bridge: &Path| {
        let out = kernlet_tests::succeeded(
            std::process::Command::new("nsenter")
                .arg(format!("--net={}", bridge.display()))
                .args(["python3", "-c", MAGLEV_CLIENT, "203.0.113.10", "80"]),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let via_o2 = flows(&bridge);
    ip(&[
        "route",
        "replace",
        "203.0.113.10/32",
        "via",
        &nodes[0].address.to_string(),
    ]);
    let via_o1 = flows(&bridge);
    assert_eq!(via_o1, via_o2, "the same flows through o1 and through o2");
    assert_eq!(via_o1.split(' ').count(), 8, "{via_o1}");

    // A load-balancer IP routed to o1, open to the lab's /24.
    let lb: std::net::SocketAddr = "192.0.2.20:80".parse().unwrap();
    route_lb_ip(&services, "web-lb", lab.bridge_netns(), lb, nodes[0].ip()).await;
    // A connection from a fixed client port while the client is in the ranges.
    let reused = 40_123;
    let first = ask_from_port(&bridge, BRIDGE_IP.into(), reused, lb);
    assert!(first.starts_with("answer web-"), "{first}");
    // Source ranges without the client: its connects go unanswered; the NodePort of
    // the same Service is not guarded by them.
    set_source_ranges(&services, "web-lb", &["10.0.0.0/8"], &bridge, lb, false).await;
    for _ in 0..5 {
        assert!(
            ask_from(&bridge, lb).is_none(),
            "a client outside the ranges got in"
        );
    }
    // Not either through a tuple the datapath translated before: a SYN is admitted
    // afresh.
    assert_eq!(
        ask_from_port(&bridge, BRIDGE_IP.into(), reused, lb),
        "timeout",
        "a client port used before the ranges changed got in"
    );
    assert!(ask_from(&bridge, at(0, 30083)).is_some());
    // The client's own address in the ranges again: in.
    let back_in = ["10.0.0.0/8", "198.18.0.1/32"];
    set_source_ranges(&services, "web-lb", &back_in, &bridge, lb, true).await;

    // web-b out of rotation: the UDP flow that was on it is translated afresh, onto
    // web-a, instead of sending on into the void.
    set_conditions(&admin, "web-kltest", &[("web-b", false, false, false)]).await;
    let on_b = std::sync::Arc::new(on_b);
    let answer = wait_for(
        "the UDP flow moved off web-b",
        Duration::from_secs(20),
        async || {
            let u = std::sync::Arc::clone(&on_b);
            let got = tokio::task::spawn_blocking(move || {
                let mut buf = [0u8; 100];
                u.send_to(b"hi", to).ok()?;
                let (n, from) = u.recv_from(&mut buf).ok()?;
                Some((String::from_utf8_lossy(&buf[..n]).to_string(), from))
            })
            .await
            .unwrap()?;
            (got.0 != "web-b").then_some(got)
        },
    )
    .await;
    assert_eq!(answer, ("web-a".to_string(), to));
}

/// Sends a datagram every 2 ms for `seconds` to `ip`:53 from one unconnected UDP
/// socket (each datagram is translated on its own), then says how many it sent.
const CHURN_CLIENT: &str = r#"
import socket, sys, time
ip, seconds = sys.argv[1], float(sys.argv[2])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent, errors, end = 0, 0, time.time() + seconds
while time.time() < end:
    try:
        u.sendto(b"x", (ip, 53))
        sent += 1
    except OSError:
        errors += 1
    time.sleep(0.002)
print(sent, errors)
"#;

/// 1,000 endpoint changes at 20/s while a client sends: no datagram reaches a removed
/// backend more than 1 s after its removal was stored in the apiserver. 40 backends
/// (four pods × ten ports, one EndpointSlice per port); every change removes one
/// backend or puts back the one removed 30 removals earlier, so each stays out for
/// about 3 s and ten are in at any time.
#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_endpoint_changes_leave_no_traffic_on_removed_backends() {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("svcc").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    apply_node_rbac(&cluster).unwrap();
    let node = proxy_nodes(&cluster, &mut lab, &fwd.url, &["c1"], &[])
        .await
        .remove(0);
    let admin = cluster.admin().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    const PODS: usize = 4;
    const PORTS: u16 = 10;
    // Arrivals: (when, backend index = pod * PORTS + port index).
    let arrivals: Arc<Mutex<Vec<(Instant, usize)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut ips = Vec::new();
    for p in 0..PODS {
        let name = format!("churn-{p}");
        let (ip, netns) = sleeping_ready(
            &cluster,
            &pods,
            &node,
            &name,
            serde_json::json!({"pod": name}),
        )
        .await;
        ips.push(ip);
        for j in 0..PORTS {
            let sock = in_netns(&netns, move || {
                let u = std::net::UdpSocket::bind((ip, 6000 + j)).unwrap();
                u.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                u
            })
            .unwrap();
            let (arrivals, stop) = (Arc::clone(&arrivals), Arc::clone(&stop));
            let index = p * PORTS as usize + j as usize;
            std::thread::spawn(move || {
                let mut buf = [0u8; 16];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if sock.recv_from(&mut buf).is_ok() {
                        arrivals.lock().unwrap().push((Instant::now(), index));
                    }
                }
            });
        }
    }
    let services: Api<Service> = Api::namespaced(admin.clone(), "default");
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "churn"},
        "spec": {"ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]},
    }))
    .unwrap();
    let svc = services.create(&PostParams::default(), &svc).await.unwrap();
    let cluster_ip: Ipv4Addr = svc.spec.unwrap().cluster_ip.unwrap().parse().unwrap();
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(admin.clone(), "default");
    // Slice j holds the pods present on port 6000 + j.
    let mut present = vec![[true; PODS]; PORTS as usize];
    let slice_json = |j: u16, present: &[bool; PODS]| {
        let endpoints: Vec<serde_json::Value> = (0..PODS)
            .filter(|p| present[*p])
            .map(|p| serde_json::json!({"addresses": [ips[p].to_string()], "conditions": {"ready": true}}))
            .collect();
        serde_json::json!({
            "metadata": {"name": format!("churn-{j}"), "labels": {"kubernetes.io/service-name": "churn"}},
            "addressType": "IPv4",
            "ports": [{"name": "dns", "port": 6000 + j, "protocol": "UDP"}],
            "endpoints": endpoints,
        })
    };
    let mut stored = Vec::new();
    for j in 0..PORTS {
        let s = serde_json::from_value(slice_json(j, &present[j as usize])).unwrap();
        stored.push(slices.create(&PostParams::default(), &s).await.unwrap());
    }
    // Every backend in the maps before the churn starts.
    wait_for(
        "the 40 backends programmed",
        Duration::from_secs(30),
        async || {
            let view: serde_json::Value =
                serde_json::from_str(&services_view(&node, false, true)).ok()?;
            let row = view["frontends"]
                .as_array()?
                .iter()
                .find(|r| r["frontend"] == format!("{cluster_ip}:53/UDP"))?
                .clone();
            (row["backends"].as_array()?.len() == PODS * PORTS as usize).then_some(())
        },
    )
    .await;

    let cg = node.cgroup().join("churn-client");
    std::fs::create_dir_all(&cg).unwrap();
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec nsenter --net=/run/netns/{} python3 -c '{}' {cluster_ip} 54",
        cg.display(),
        node.netns,
        CHURN_CLIENT
    );
    let client = std::process::Command::new("bash")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The churn: (when, backend, removed?) for each change.
    let mut changes: Vec<(Instant, usize, bool)> = Vec::new();
    let mut removed_order: std::collections::VecDeque<usize> = Default::default();
    let mut next_removal = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for i in 0..1000 {
        tick.tick().await;
        let (backend, remove) = if i % 2 == 0 || removed_order.len() < 30 {
            // A removal: the next backend still present, round-robin.
            let mut b = next_removal % (PODS * PORTS as usize);
            while !present[b % PORTS as usize][b / PORTS as usize] {
                b = (b + 1) % (PODS * PORTS as usize);
            }
            next_removal = b + 1;
            removed_order.push_back(b);
            (b, true)
        } else {
            (removed_order.pop_front().unwrap(), false)
        };
        let (p, j) = (backend / PORTS as usize, backend % PORTS as usize);
        present[j][p] = !remove;
        let mut s: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(slice_json(j as u16, &present[j])).unwrap();
        s.metadata.resource_version = stored[j].metadata.resource_version.clone();
        let issued = Instant::now();
        stored[j] = slices
            .replace(&format!("churn-{j}"), &PostParams::default(), &s)
            .await
            .unwrap();
        // A removal counts from when the apiserver has stored it; a backend is back
        // from when its return was sent (the agent may see it before the reply).
        let at = if remove { Instant::now() } else { issued };
        changes.push((at, p * PORTS as usize + j, remove));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let out = client.wait_with_output().unwrap();
    let arrivals = arrivals.lock().unwrap().clone();

    // For each backend, the times it was out: [removed, put back).
    let mut out_since: Vec<Option<Instant>> = vec![None; PODS * PORTS as usize];
    let mut windows: Vec<(usize, Instant, Option<Instant>)> = Vec::new();
    for (at, b, removed) in &changes {
        if *removed {
            out_since[*b] = Some(*at);
        } else if let Some(r) = out_since[*b].take() {
            windows.push((*b, r, Some(*at)));
        }
    }
    for (b, r) in out_since.iter().enumerate() {
        if let Some(r) = r {
            windows.push((b, *r, None));
        }
    }
    let late: Vec<String> = arrivals
        .iter()
        .filter_map(|(t, b)| {
            windows.iter().find_map(|(wb, r, back)| {
                (wb == b && *t > *r + Duration::from_secs(1) && back.is_none_or(|a| *t < a))
                    .then(|| format!("backend {b}: {:?} after its removal", *t - *r))
            })
        })
        .collect();
    let sent = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(changes.len(), 1000);
    assert!(
        windows.len() >= 400,
        "removals of 1 s or more: {}",
        windows.len()
    );
    assert!(
        arrivals.len() > 5000,
        "the client kept sending ({sent}): {} arrivals",
        arrivals.len()
    );
    assert!(
        late.is_empty(),
        "{} late: {:?}",
        late.len(),
        &late[..late.len().min(10)]
    );
}

/// Creates the Service described by `json` in namespace default and its EndpointSlice
/// (the kit's controller, from the pods its selector picks); its ClusterIP.
async fn create_service(cluster: &Cluster, json: serde_json::Value) -> Ipv4Addr {
    let admin = cluster.admin().await.unwrap();
    let services: Api<Service> = Api::namespaced(admin, "default");
    let svc: Service = serde_json::from_value(json).unwrap();
    let name = svc.metadata.name.clone().unwrap();
    let svc = services.create(&PostParams::default(), &svc).await.unwrap();
    cluster.sync_endpointslice("default", &name).await.unwrap();
    svc.spec.unwrap().cluster_ip.unwrap().parse().unwrap()
}

/// Rewrites the conditions of the endpoints of the named pods in EndpointSlice `slice`
/// (namespace default): (pod, ready, serving, terminating).
async fn set_conditions(
    admin: &kube::Client,
    slice: &str,
    conditions: &[(&str, bool, bool, bool)],
) {
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(admin.clone(), "default");
    let mut s = slices.get(slice).await.unwrap();
    for ep in s.endpoints.iter_mut().flatten() {
        let pod = ep.target_ref.as_ref().and_then(|t| t.name.clone());
        if let Some((_, ready, serving, terminating)) =
            conditions.iter().find(|c| Some(c.0) == pod.as_deref())
        {
            let c = ep.conditions.get_or_insert_with(Default::default);
            c.ready = Some(*ready);
            c.serving = Some(*serving);
            c.terminating = Some(*terminating);
        }
    }
    slices
        .replace(slice, &PostParams::default(), &s)
        .await
        .unwrap();
}

/// The backends `n` TCP and `n` UDP requests from `node`'s own processes reached
/// through `ip` (sorted, deduplicated), or the client's error.
fn reached_from(node: &SimNode, ip: Ipv4Addr, n: usize) -> Result<Vec<String>, String> {
    let out = client(
        &node.cgroup().join("client"),
        &PathBuf::from(format!("/run/netns/{}", node.netns)),
        ip,
        n,
    );
    if !out["error"].is_null() {
        return Err(out.to_string());
    }
    let mut seen: Vec<String> = ["tcp", "udp"]
        .iter()
        .flat_map(|k| out[k].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    seen.sort();
    seen.dedup();
    Ok(seen)
}

/// `internalTrafficPolicy: Local` keeps each node's clients on its own endpoint; the
/// serving-and-terminating endpoints carry the traffic only while no endpoint is ready
/// (kube-proxy's fallback), and none at all once they stop serving.
#[tokio::test(flavor = "multi_thread")]
async fn internal_traffic_policy_and_the_terminating_fallback() {
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("svcp").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    apply_node_rbac(&cluster).unwrap();
    let nodes = proxy_nodes(&cluster, &mut lab, &fwd.url, &["p1", "p2"], &[]).await;
    let admin = cluster.admin().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    backend(&cluster, &pods, &nodes[0], "web-a").await;
    backend(&cluster, &pods, &nodes[1], "web-b").await;
    let mut ips = Vec::new();
    for (name, extra) in [
        (
            "web-itp",
            serde_json::json!({"internalTrafficPolicy": "Local"}),
        ),
        ("web-term", serde_json::json!({})),
    ] {
        let mut spec = serde_json::json!({"selector": {"app": "web"}, "ports": [
            {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
            {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}]});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        ips.push(
            create_service(
                &cluster,
                serde_json::json!({"metadata": {"name": name}, "spec": spec}),
            )
            .await,
        );
    }
    let (itp, term) = (ips[0], ips[1]);
    let reaches = async |node: &SimNode, ip: Ipv4Addr, want: &[&str], what: &str| {
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        let mut last = Err(String::new());
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            last = reached_from(node, ip, 12);
            if last.as_ref() == Ok(&want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("{what}: wanted {want:?} from {}, got {last:?}", node.name);
    };

    // iTP Local: each node's own endpoint only; without topology the other service
    // reaches both from either node.
    reaches(&nodes[0], itp, &["web-a"], "iTP Local").await;
    reaches(&nodes[1], itp, &["web-b"], "iTP Local").await;
    reaches(&nodes[0], term, &["web-a", "web-b"], "cluster-wide").await;

    // Both endpoints terminating, only web-a still serving: it carries everything.
    let set = async |conditions: &[(&str, bool, bool, bool)]| {
        set_conditions(&admin, "web-term-kltest", conditions).await;
    };
    set(&[("web-a", false, true, true), ("web-b", false, false, true)]).await;
    for n in &nodes {
        reaches(n, term, &["web-a"], "the serving terminating fallback").await;
    }
    // web-b ready again: the terminating one is left alone.
    set(&[("web-a", false, true, true), ("web-b", true, true, false)]).await;
    for n in &nodes {
        reaches(
            n,
            term,
            &["web-b"],
            "ready endpoints before terminating ones",
        )
        .await;
    }
    // Nothing ready or serving: connects fail at once (EPERM, the socket hook's
    // refusal).
    set(&[("web-a", false, false, true), ("web-b", false, false, true)]).await;
    let start = std::time::Instant::now();
    loop {
        match reached_from(&nodes[0], term, 1) {
            Err(e) if e.contains("PermissionError") => break,
            other => assert!(
                start.elapsed() < Duration::from_secs(20),
                "no endpoint left, yet {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A server on a node (a process of the node, in its network namespace): TCP on
/// [::]:8081 answering `name client-address`, UDP on [::]:5353 answering `name`. Both
/// families (`::` takes IPv4 too). Stopped (by its pid) when dropped.
struct NodeServer(std::process::Child);

const NODE_SERVER: &str = r#"
import socket, sys, threading
name = sys.argv[1]
t = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("::", 8081))
t.listen(64)
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u.bind(("::", 5353))
def udp():
    while True:
        d, a = u.recvfrom(100)
        u.sendto(name.encode(), a)
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
while True:
    c, a = t.accept()
    c.sendall((name + " " + a[0]).encode())
    c.close()
"#;

impl NodeServer {
    fn start(node: &SimNode, name: &str) -> Self {
        use std::io::BufRead as _;
        let mut child = node
            .command("python3")
            .args(["-c", NODE_SERVER, name])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the server on {}", node.name);
        Self(child)
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A client on a node for an IPv6 service address: `n` TCP connects to port 80 (what
/// the backend said, and `getpeername`), and `n` datagrams from an unconnected socket
/// to port 53 (what answered, and the source `recvfrom` showed).
const CLIENT6: &str = r#"
import json, socket, sys
ip, n = sys.argv[1], int(sys.argv[2])
out = {"tcp": [], "peer": [], "udp": [], "udp_from": []}
try:
    for _ in range(n):
        s = socket.create_connection((ip, 80), timeout=3)
        out["peer"].append(list(s.getpeername()[:2]))
        out["tcp"].append(s.recv(100).decode())
        s.close()
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u.settimeout(3)
    for _ in range(n):
        u.sendto(b"hi", (ip, 53))
        d, a = u.recvfrom(100)
        out["udp"].append(d.decode())
        out["udp_from"].append(list(a[:2]))
except OSError as e:
    out["error"] = str(e)
print(json.dumps(out))
"#;

fn client6(node: &SimNode, ip: std::net::Ipv6Addr, n: usize) -> serde_json::Value {
    let out = node
        .command("python3")
        .args(["-c", CLIENT6, &ip.to_string(), &n.to_string()])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "client6: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The first [`client6`] run that goes through without an error, within 30 s.
async fn client6_answered(
    what: &str,
    node: &SimNode,
    ip: std::net::Ipv6Addr,
    n: usize,
) -> serde_json::Value {
    wait_for(what, Duration::from_secs(30), async || {
        let out = client6(node, ip, n);
        out["error"].is_null().then_some(out)
    })
    .await
}

/// IPv6 Services on dual-stack nodes (`--node-ip v4,v6`): an IPv6 ClusterIP balanced
/// by the v6 socket hooks (TCP and UDP, `getpeername` and `recvfrom` showing the
/// service), its NodePorts on the nodes' IPv6 addresses, an IPv6 external IP and an
/// IPv6 load-balancer IP with source ranges, translated by the tc programs for a client
/// on the underlay (a local backend sees the client, a remote one the node's IPv6
/// address); and a dual-stack Service whose two ClusterIPs reach the backends of their
/// own family. The backends are servers on the nodes (the pod network is IPv4): the
/// EndpointSlices are written by hand, as for a Service without a selector. Last, a
/// pinned map of another layout (an older kernlet's) is replaced on start.
#[tokio::test(flavor = "multi_thread")]
async fn ipv6_services_on_dual_stack_nodes() {
    use std::net::{IpAddr, Ipv6Addr, SocketAddr};
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("svc6").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    apply_node_rbac(&cluster).unwrap();
    let mut nodes = Vec::new();
    let mut node_flags = Vec::new();
    for (i, label) in ["s1", "s2"].iter().enumerate() {
        let mut n = lab.add_node(label).unwrap();
        // As on an IPv6 node prepared for Kubernetes (kubeadm's preflight asks for it):
        // without it the kernel's FIB does not route outside IPv6 traffic on.
        let out = n
            .run("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let dual = format!("{},{}", n.address, n.ip6());
        let extra = ["--node-ip", dual.as_str()];
        let flags = proxy_flags(&n, &extra);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        start_overlay_node(&cluster, &fwd.url, &mut n, i as u8 + 1, &flags)
            .await
            .unwrap();
        node_flags.push(dual);
        nodes.push(n);
    }
    let _servers: Vec<NodeServer> = nodes
        .iter()
        .map(|n| NodeServer::start(n, &n.name))
        .collect();
    let admin = cluster.admin().await.unwrap();
    let node_api: Api<k8s_openapi::api::core::v1::Node> = Api::all(admin.clone());
    let registered = node_api.get("s1").await.unwrap();
    let internal: Vec<String> = registered
        .status
        .unwrap()
        .addresses
        .unwrap()
        .into_iter()
        .filter(|a| a.type_ == "InternalIP")
        .map(|a| a.address)
        .collect();
    assert_eq!(
        internal,
        [nodes[0].address.to_string(), nodes[0].ip6().to_string()],
        "a dual-stack node reports both InternalIPs"
    );

    let services: Api<Service> = Api::namespaced(admin.clone(), "default");
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(admin.clone(), "default");
    let slice = |name: &str, service: &str, family: &str, addrs: &[(String, &str)]| {
        serde_json::from_value::<k8s_openapi::api::discovery::v1::EndpointSlice>(serde_json::json!({
            "metadata": {"name": name, "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "kernlet-tests"}},
            "addressType": family,
            "endpoints": addrs.iter().map(|(a, node)| serde_json::json!(
                {"addresses": [a], "conditions": {"ready": true}, "nodeName": node})).collect::<Vec<_>>(),
            "ports": [{"name": "http", "port": 8081, "protocol": "TCP"},
                      {"name": "dns", "port": 5353, "protocol": "UDP"}],
        }))
        .unwrap()
    };
    let ports = serde_json::json!([
        {"name": "http", "port": 80, "protocol": "TCP"},
        {"name": "dns", "port": 53, "protocol": "UDP"}]);
    let web6: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web6"},
        "spec": {"type": "LoadBalancer", "ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack",
                 "externalIPs": ["fd00:203::10"],
                 "loadBalancerSourceRanges": ["fd00:198:18::/64"],
                 "ports": ports}}))
    .unwrap();
    let web6 = services
        .create(&PostParams::default(), &web6)
        .await
        .unwrap();
    let spec = web6.spec.unwrap();
    assert_eq!(spec.ip_families.as_deref(), Some(&["IPv6".to_string()][..]));
    let cluster_ip: Ipv6Addr = spec.cluster_ip.unwrap().parse().unwrap();
    let node_port = |name: &str| -> u16 {
        let p = spec
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .find(|p| p.name.as_deref() == Some(name));
        p.and_then(|p| p.node_port).unwrap() as u16
    };
    let (http_np, dns_np) = (node_port("http"), node_port("dns"));
    let v6_eps: Vec<(String, &str)> = nodes
        .iter()
        .map(|n| (n.ip6().to_string(), n.name.as_str()))
        .collect();
    slices
        .create(
            &PostParams::default(),
            &slice("web6-a", "web6", "IPv6", &v6_eps),
        )
        .await
        .unwrap();

    // The ClusterIP from each node: both backends, TCP and UDP, and the socket calls
    // show the service address.
    for node in &nodes {
        let out = client6_answered("the IPv6 ClusterIP answering", node, cluster_ip, 16).await;
        for k in ["tcp", "udp"] {
            let mut seen: Vec<String> = out[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().split(' ').next().unwrap().to_string())
                .collect();
            seen.sort();
            seen.dedup();
            assert_eq!(seen, ["s1", "s2"], "{k} from {}: {out}", node.name);
        }
        let svc = cluster_ip.to_string();
        assert!(
            out["peer"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| *p == serde_json::json!([svc, 80])),
            "{out}"
        );
        assert!(
            out["udp_from"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| *p == serde_json::json!([svc, 53])),
            "{out}"
        );
    }

    // kernlet services: the IPv6 frontends named, found by their address.
    let view: serde_json::Value = serde_json::from_str(&services_filtered(
        &nodes[0],
        true,
        true,
        Some(&cluster_ip.to_string()),
    ))
    .unwrap();
    let mut rows: Vec<String> = view["frontends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r["frontend"].as_str().unwrap(),
                r["service"],
                r["backends"].as_array().unwrap().len()
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            format!("[{cluster_ip}]:53/UDP \"default/web6\" 2"),
            format!("[{cluster_ip}]:80/TCP \"default/web6\" 2"),
        ],
        "{view}"
    );

    // A connected UDP socket on s2's server, kept open across s2's removal: closed by
    // kernlet, so its next send fails and the client connects again.
    let mut on_s2 = nodes[0].command("python3");
    on_s2.args(["-c", UDP_CLIENT, &cluster_ip.to_string(), "s2"]);
    let on_s2 = ConnectedUdp::start(on_s2, "s2");
    let only_s1 = slice("web6-a", "web6", "IPv6", &v6_eps[..1]);
    let mut current = slices.get("web6-a").await.unwrap();
    current.endpoints = only_s1.endpoints;
    slices
        .replace("web6-a", &PostParams::default(), &current)
        .await
        .unwrap();
    wait_for("s2 out of rotation", Duration::from_secs(20), async || {
        let out = client6(&nodes[0], cluster_ip, 8);
        let tcp = out["tcp"].as_array()?.clone();
        (tcp.len() == 8
            && tcp
                .iter()
                .all(|t| t.as_str().unwrap_or("").starts_with("s1 ")))
        .then_some(())
    })
    .await;
    on_s2.assert_closed(&nodes[0]);
    let mut current = slices.get("web6-a").await.unwrap();
    current.endpoints = slice("web6-a", "web6", "IPv6", &v6_eps).endpoints;
    slices
        .replace("web6-a", &PostParams::default(), &current)
        .await
        .unwrap();
    for node in &nodes {
        wait_for("s2 back in rotation", Duration::from_secs(20), async || {
            let out = client6(node, cluster_ip, 12);
            out["tcp"]
                .as_array()?
                .iter()
                .any(|t| t.as_str().unwrap_or("").starts_with("s2 "))
                .then_some(())
        })
        .await;
    }

    // From outside (the bridge at fd00:198:18::1): the NodePort on s1's IPv6 address
    // reaches both; s1's own server sees the client, s2's sees s1 (SNAT).
    let bridge = PathBuf::from(format!("/run/netns/{}", lab.bridge_netns()));
    let outside = kernlet_tests::simnode::BRIDGE_IP6.to_string();
    let np = SocketAddr::new(IpAddr::V6(nodes[0].ip6()), http_np);
    wait_for(
        "the IPv6 NodePort answering from outside",
        Duration::from_secs(30),
        async || ask_from(&bridge, np),
    )
    .await;
    let seen = answers_from(&bridge, np, 24);
    assert!(seen.iter().any(|(w, _)| w == "s1"), "{seen:?}");
    assert!(seen.iter().any(|(w, _)| w == "s2"), "{seen:?}");
    for (who, client) in &seen {
        let want = if who == "s1" {
            outside.clone()
        } else {
            nodes[0].ip6().to_string()
        };
        assert_eq!(*client, want, "{seen:?}");
    }
    // UDP through the NodePort: replies come from the NodePort address.
    let to = SocketAddr::new(IpAddr::V6(nodes[0].ip6()), dns_np);
    let udp = udp_answers_from(&bridge, kernlet_tests::simnode::BRIDGE_IP6.into(), to, 16);
    assert!(udp.iter().any(|(w, _)| w == "s1"), "{udp:?}");
    assert!(udp.iter().any(|(w, _)| w == "s2"), "{udp:?}");
    assert!(udp.iter().all(|(_, from)| *from == to), "{udp:?}");

    // ICMPv6 errors through the NodePort: a port nothing listens on, on s1 (the error
    // leaves through the egress program) and on s2 (it comes back to the SNAT address
    // and the ingress program sends it on): the client's socket is refused, by the
    // NodePort's address. And the path MTU: s1's way to s2 carries 1,400 bytes (a
    // locked route MTU: the kernel forwards IPv6 by a route's MTU only when locked),
    // so a 1,478-byte packet to s2's backend gets "packet too big" from the program
    // (the kernel neither cuts nor answers for what a program sends on itself).
    let only = |name: &str, who: usize, port: u16| {
        serde_json::from_value::<k8s_openapi::api::discovery::v1::EndpointSlice>(
            serde_json::json!({
                "metadata": {"name": format!("{name}-a"), "labels": {
                    "kubernetes.io/service-name": name,
                    "endpointslice.kubernetes.io/managed-by": "kernlet-tests"}},
                "addressType": "IPv6",
                "endpoints": [{"addresses": [v6_eps[who].0], "conditions": {"ready": true},
                               "nodeName": v6_eps[who].1}],
                "ports": [{"name": "dns", "port": port, "protocol": "UDP"}],
            }),
        )
        .unwrap()
    };
    let mut np_of = std::collections::BTreeMap::new();
    for (name, who, port) in [
        ("shut6-s1", 0, 5399),
        ("shut6-s2", 1, 5399),
        ("big6-s2", 1, 5353),
    ] {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"type": "NodePort", "ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack",
                     "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}}))
        .unwrap();
        let svc = services.create(&PostParams::default(), &svc).await.unwrap();
        let np = svc.spec.unwrap().ports.unwrap()[0].node_port.unwrap();
        slices
            .create(&PostParams::default(), &only(name, who, port))
            .await
            .unwrap();
        np_of.insert(name, np as u16);
    }
    let bridge_ns = format!("--net={}", bridge.display());
    let s1 = nodes[0].ip6().to_string();
    for name in ["shut6-s1", "shut6-s2"] {
        refused_through(&bridge_ns, &s1, np_of[name]).await;
    }
    let route = nodes[0]
        .run(
            "ip",
            &[
                "-6",
                "route",
                "replace",
                &format!("{}/128", nodes[1].ip6()),
                "dev",
                "eth0",
                "mtu",
                "lock",
                "1400",
            ],
        )
        .unwrap();
    assert!(route.status.success(), "{route:?}");
    let big = SocketAddr::new(IpAddr::V6(nodes[0].ip6()), np_of["big6-s2"]);
    wait_for(
        "the IPv6 NodePort to s2 answering",
        Duration::from_secs(30),
        async || {
            udp_answers_from(&bridge, kernlet_tests::simnode::BRIDGE_IP6.into(), big, 1)
                .iter()
                .any(|(who, _)| who == "s2")
                .then_some(())
        },
    )
    .await;
    let out = std::process::Command::new("nsenter")
        .args([
            bridge_ns.as_str(),
            "python3",
            "-c",
            PMTU6_PROBE,
            &s1,
            &np_of["big6-s2"].to_string(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1400",
        "the path MTU the client learned through the NodePort: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The external IP and a load-balancer IP, routed to s2.
    let ip = |args: &[&str]| {
        let st = std::process::Command::new("ip")
            .args(["-n", lab.bridge_netns(), "-6"])
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "ip {args:?}");
    };
    let via_s2 = nodes[1].ip6().to_string();
    ip(&["route", "add", "fd00:203::10/128", "via", &via_s2]);
    let seen = answers_from(&bridge, "[fd00:203::10]:80".parse().unwrap(), 24);
    assert!(seen.iter().any(|(w, _)| w == "s1"), "{seen:?}");
    assert!(seen.iter().any(|(w, _)| w == "s2"), "{seen:?}");
    let lb: SocketAddr = "[fd00:192::20]:80".parse().unwrap();
    route_lb_ip(
        &services,
        "web6",
        lab.bridge_netns(),
        lb,
        nodes[1].ip6().into(),
    )
    .await;
    // Ranges without the client: shut out (an IPv4 range does not let it in either).
    let ranges = ["fd00:beef::/32", "198.18.0.0/24"];
    set_source_ranges(&services, "web6", &ranges, &bridge, lb, false).await;
    assert!(
        ask_from(&bridge, lb).is_none(),
        "a client outside the ranges got in"
    );

    // A dual-stack Service: each ClusterIP reaches the backends of its family (s1's
    // server by its IPv4 address, s2's by its IPv6 one).
    let dual: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "dual"},
        "spec": {"ipFamilyPolicy": "RequireDualStack", "ports": ports}}))
    .unwrap();
    let dual = services
        .create(&PostParams::default(), &dual)
        .await
        .unwrap();
    let ips: Vec<IpAddr> = dual
        .spec
        .unwrap()
        .cluster_ips
        .unwrap()
        .iter()
        .map(|i| i.parse().unwrap())
        .collect();
    assert!(
        ips.len() == 2 && ips[0].is_ipv4() && ips[1].is_ipv6(),
        "{ips:?}"
    );
    slices
        .create(
            &PostParams::default(),
            &slice(
                "dual-4",
                "dual",
                "IPv4",
                &[(nodes[0].address.to_string(), "s1")],
            ),
        )
        .await
        .unwrap();
    slices
        .create(
            &PostParams::default(),
            &slice(
                "dual-6",
                "dual",
                "IPv6",
                &[(nodes[1].ip6().to_string(), "s2")],
            ),
        )
        .await
        .unwrap();
    let cg = nodes[0].cgroup().join("client");
    let netns = PathBuf::from(format!("/run/netns/{}", nodes[0].netns));
    let IpAddr::V6(dual6) = ips[1] else {
        unreachable!()
    };
    let IpAddr::V4(dual4) = ips[0] else {
        unreachable!()
    };
    let out6 = client6_answered(
        "the dual-stack Service's IPv6 ClusterIP",
        &nodes[0],
        dual6,
        4,
    )
    .await;
    assert!(
        out6["tcp"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v.as_str().unwrap().starts_with("s2 ")),
        "{out6}"
    );
    let out4 = client(&cg, &netns, dual4, 4);
    assert!(out4["error"].is_null(), "{out4}");
    assert!(
        out4["tcp"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v.as_str().unwrap().starts_with("s1 ")),
        "{out4}"
    );
    assert!(
        out4["udp"].as_array().unwrap().iter().all(|v| v == "s1"),
        "{out4}"
    );

    // A pinned map of another layout (as an older kernlet left it): s1's agent, started
    // again, replaces it and serves the IPv6 ClusterIP.
    nodes[0].stop_kernlet(Duration::from_secs(5)).unwrap();
    let lb_dir = nodes[0].dir("bpf").join("lb");
    std::fs::rename(lb_dir.join("KL_SOCK_REVNAT"), lb_dir.join("KL_SERVICES")).unwrap();
    restart_proxy_node(&mut nodes[0], &["--node-ip", &node_flags[0]]).await;
    assert!(
        nodes[0]
            .kernlet_log()
            .contains("pinned maps of an older layout replaced"),
        "{}",
        nodes[0].kernlet_log()
    );
    let out = client6_answered(
        "the IPv6 ClusterIP after the map was replaced",
        &nodes[0],
        cluster_ip,
        4,
    )
    .await;
    assert_eq!(out["tcp"].as_array().unwrap().len(), 4, "{out}");
}

/// The termination barrier (`--termination-barrier`): a deleted pod that a Service's
/// EndpointSlice lists as ready keeps running — no preStop, no SIGTERM — until the
/// node's datapath was programmed with the slice showing it terminating; the wait is
/// bounded by the flag and never runs past the pod's grace period, a shortened grace
/// ends it, and a pod no slice lists is not held at all.
#[tokio::test(flavor = "multi_thread")]
async fn the_termination_barrier_holds_sigterm_until_the_endpoint_left() {
    use kube::api::DeleteParams;
    use serde_json::json;
    let lab = ProxyLab::start("svcb", &["b1"], &["--termination-barrier", "30"]).await;
    let (cluster, node, pods) = (&lab.cluster, &lab.nodes[0], &lab.pods);
    // Exits at once on SIGTERM (as pid 1 it needs a handler for it).
    let spec = |grace: i64| {
        json!({"terminationGracePeriodSeconds": grace, "containers": [{"name": "c",
            "image": "busybox:1.36",
            "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]}]})
    };
    for (name, app, grace) in [
        ("held", "bar", 60),
        ("late", "bar", 3),
        ("forced", "bar", 60),
        ("plain", "other", 60),
    ] {
        let labels = json!({"app": app, "pod": name});
        let (ip, netns) = ready_pod(cluster, pods, node, name, labels, spec(grace)).await;
        serve_in(ip, &netns, name);
    }
    let svc = create_service(
        cluster,
        json!({"metadata": {"name": "bar"}, "spec": {"selector": {"app": "bar"}, "ports": [
            {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
            {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}]}}),
    )
    .await;
    wait_for(
        "the Service programmed with its three backends",
        Duration::from_secs(30),
        async || reached_from(node, svc, 30).ok().filter(|s| s.len() == 3),
    )
    .await;
    let gone_within = async |name: &str, within: Duration| {
        wait_for(&format!("{name} gone"), within, async || {
            pods.get_opt(name).await.unwrap().is_none().then_some(())
        })
        .await;
    };
    let running = async |name: &str| {
        let Some(p) = pods.get_opt(name).await.unwrap() else {
            return false;
        };
        p.status
            .and_then(|s| s.container_statuses)
            .and_then(|c| c.first().cloned())
            .and_then(|c| c.state)
            .is_some_and(|s| s.running.is_some())
    };
    let holding = |name: &str| {
        node.kernlet_log()
            .lines()
            .any(|l| l.contains("holding the pod's stop") && l.contains(&format!("default/{name}")))
    };

    // Not behind a Service: stopped at once.
    pods.delete("plain", &DeleteParams::default())
        .await
        .unwrap();
    gone_within("plain", Duration::from_secs(10)).await;
    assert!(!holding("plain"), "a pod no slice lists was held");

    // Listed as ready: held while the slice says so, released by the slice's change.
    pods.delete("held", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        running("held").await,
        "the pod was stopped while its slice still listed it ready"
    );
    assert!(holding("held"));
    cluster.sync_endpointslice("default", "bar").await.unwrap();
    // Far less than the barrier's 30 s: released by the slice, not by the clock.
    gone_within("held", Duration::from_secs(12)).await;
    assert!(
        node.kernlet_log()
            .contains("the pod's endpoints left the load-balancer after"),
        "{}",
        node.kernlet_log()
    );

    // Its slice never updated: held no longer than its grace period (3 s).
    pods.delete("late", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(running("late").await, "stopped before the barrier's wait");
    gone_within("late", Duration::from_secs(12)).await;
    assert!(
        node.kernlet_log()
            .contains("the pod is still a ready endpoint after"),
        "{}",
        node.kernlet_log()
    );

    // Deleted again with a shorter grace: the wait ends.
    cluster.sync_endpointslice("default", "bar").await.unwrap();
    let forced_listed = async || {
        let admin = cluster.admin().await.unwrap();
        let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
            Api::namespaced(admin, "default");
        let s = slices.get("bar-kltest").await.unwrap();
        s.endpoints.iter().flatten().any(|e| {
            e.target_ref.as_ref().and_then(|t| t.name.as_deref()) == Some("forced")
                && e.conditions.as_ref().and_then(|c| c.ready) == Some(true)
        })
    };
    assert!(forced_listed().await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    pods.delete("forced", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(running("forced").await);
    pods.delete("forced", &DeleteParams::default().grace_period(1))
        .await
        .unwrap();
    gone_within("forced", Duration::from_secs(10)).await;
    assert!(
        node.kernlet_log()
            .contains("the grace period was shortened; stopping the pod after"),
        "{}",
        node.kernlet_log()
    );
}

/// Holds `n` TCP streams to `ip:port` (an echo service), each answered once; says
/// "ready", waits for a line on stdin, then sends on every stream again and reports
/// which broke or got another backend's answer.
const HELD_FLOWS: &str = r#"
import json, socket, sys, time
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# Until the NodePort is programmed (at most 30 s).
end = time.time() + 30
while True:
    try:
        s = socket.create_connection((ip, port), timeout=1)
        s.sendall(b"hello")
        if s.recv(100):
            s.close()
            break
    except OSError:
        if time.time() > end:
            raise
        time.sleep(0.2)
streams = []
for _ in range(n):
    s = socket.create_connection((ip, port), timeout=3)
    s.sendall(b"hello")
    streams.append((s, s.recv(100).decode().split(":")[0]))
print("ready", flush=True)
sys.stdin.readline()
errors = []
for i, (s, name) in enumerate(streams):
    try:
        s.sendall(b"x")
        got = s.recv(100).decode()
        if got != name + ":x":
            errors.append("stream %d: %r from %s" % (i, got, name))
    except OSError as e:
        errors.append("stream %d: %s" % (i, e))
print(json.dumps({"backends": sorted(set(n for _, n in streams)), "errors": errors}), flush=True)
"#;

/// Sends `count` TCP SYNs to `ip:port` from made-up sources (198.18.0.200–249, random
/// ports) through a raw socket: a flood of new flows that never complete.
const SYN_FLOOD: &str = r#"
import random, socket, struct, sys
dst, dport, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
def csum(b):
    if len(b) % 2:
        b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xffff)
    t += t >> 16
    return ~t & 0xffff
d = socket.inet_aton(dst)
sent = 0
for i in range(count):
    src = socket.inet_aton("198.18.0.%d" % (200 + i % 50))
    sport = random.randint(1024, 65535)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, random.getrandbits(32), 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = src + d + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, i & 0xffff, 0, 64, 6, 0, src, d)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    raw.sendto(ip + tcp, (dst, 0))
    sent += 1
print(sent)
"#;

/// 100 established TCP flows through a NodePort keep their backends while a flood of
/// new flows — 100,000 spoofed SYNs, about a hundred times the established-flow table
/// (`--service-nat-flows 1024`) and four hundred times the new-flow one — hits the
/// node: the flood evicts only flows that never completed their handshake, none of the
/// 100 is reset or moved. (With one table for both, as before, about half of them were
/// reset: their next packet went to a backend chosen afresh.)
#[tokio::test(flavor = "multi_thread")]
async fn established_flows_outlive_a_syn_flood() {
    use std::io::{BufRead as _, Write as _};
    let lab = ProxyLab::start("svcf", &["f1"], &["--service-nat-flows", "1024"]).await;
    let (cluster, node, pods) = (&lab.cluster, &lab.nodes[0], &lab.pods);
    echo_backend(cluster, pods, node, "echo-a").await;
    echo_backend(cluster, pods, node, "echo-b").await;
    create_service(
        cluster,
        serde_json::json!({"metadata": {"name": "echo"}, "spec": {"type": "NodePort",
            "selector": {"app": "echo"},
            "ports": [{"port": 7, "targetPort": 7000, "nodePort": 30007, "protocol": "TCP"}]}}),
    )
    .await;
    let bridge = lab.outside();
    let address = node.address.to_string();
    let mut held = std::process::Command::new("nsenter")
        .args([
            &bridge, "python3", "-c", HELD_FLOWS, &address, "30007", "100",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(held.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        "ready",
        "the 100 flows did not open\n{}",
        node.kernlet_log()
    );
    let flood = std::process::Command::new("nsenter")
        .args([
            &bridge, "python3", "-c", SYN_FLOOD, &address, "30007", "100000",
        ])
        .output()
        .unwrap();
    assert!(
        flood.status.success(),
        "{}",
        String::from_utf8_lossy(&flood.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&flood.stdout).trim(), "100000");
    // The flood reached the NAT: the new-flow table is full, the 100 flows (and the
    // script's first probe) are in the established one.
    let [(established, est_size), (new, new_size)] =
        kernlet::sys::lb::nat_flow_counts(&node.dir("bpf").join("lb")).unwrap();
    assert_eq!((est_size, new_size), (1024, 256));
    assert!(new > 100, "the flood left {new} new flows");
    assert!(established >= 100, "{established} established flows");
    held.stdin.take().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    held.wait().unwrap();
    let report: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(
        report["backends"],
        serde_json::json!(["echo-a", "echo-b"]),
        "{report}"
    );
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
}

/// Sends 16 UDP datagrams of the size given (4,000 bytes: three IPv4 fragments), each
/// from a new connected socket, to the address and port given and reports who answered and
/// whether every answer came back whole from that address.
const BIG_DATAGRAMS: &str = r#"
import json, os, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
seen, errors = [], []
for i in range(16):
    # Connected: the kernel takes an ICMP error for it only when the error quotes a
    # packet to the address and port it is connected to.
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(3)
    u.connect((host, port))
    data = os.urandom(int(sys.argv[3]) // 2).hex().encode()
    try:
        u.send(data)
        got, frm = u.recvfrom(65535)
        name, _, echoed = got.partition(b":")
        seen.append(name.decode())
        if echoed != data:
            errors.append("%d: %d bytes echoed, not %d" % (i, len(echoed), len(data)))
        if frm != (host, port):
            errors.append("%d: answered from %s" % (i, frm))
    except OSError as e:
        errors.append("%d: %s" % (i, e))
    u.close()
print(json.dumps({"seen": sorted(set(seen)), "errors": errors}))
"#;

/// Sends a 1,458-byte datagram with DF set to the address and port given from a new
/// connected socket, a few times, and prints what the "fragmentation needed" errors
/// about it that the client's namespace received quote (`address:port mtu`, sorted,
/// deduplicated).
const PMTU_PROBE: &str = r#"
import select, socket, struct, sys, time
host, port = sys.argv[1], int(sys.argv[2])
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
seen = set()
for _ in range(3):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # IP_MTU_DISCOVER = IP_PMTUDISC_PROBE: DF set, whatever path MTU the kernel
    # learned already (from the probe before).
    u.setsockopt(socket.IPPROTO_IP, 10, 3)
    u.connect((host, port))
    mine = u.getsockname()[1]
    try:
        u.send(b"x" * 1430)
    except OSError:
        pass
    end = time.time() + 1.5
    while time.time() < end:
        if not select.select([raw], [], [], 0.1)[0]:
            continue
        pkt = raw.recv(2048)
        ihl = (pkt[0] & 15) * 4
        kind, code, _, _, mtu = struct.unpack("!BBHHH", pkt[ihl:ihl + 8])
        if kind != 3 or code != 4:
            continue
        inner = pkt[ihl + 8:]
        iihl = (inner[0] & 15) * 4
        dst = socket.inet_ntoa(inner[16:20])
        sport, dport = struct.unpack("!HH", inner[iihl:iihl + 4])
        if inner[9] == 17 and sport == mine:
            seen.add("%s:%d %d" % (dst, dport, mtu))
    u.close()
print(" ".join(sorted(seen)))
"#;

/// A connected UDP socket to `argv[1]:argv[2]` (IPv4 or IPv6) sends a datagram (up to
/// 5 tries, 1 s each) and says what came back: "refused" (the ICMP port unreachable
/// matched the socket), "timeout", or the answer; and the source of the ICMP error it
/// saw on a raw socket ("-" for none).
const REFUSED_PROBE: &str = r#"
import select, socket, struct, sys
host, port = sys.argv[1], int(sys.argv[2])
v6 = ":" in host
if v6:
    raw = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
else:
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
u = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
u.connect((host, port))
u.settimeout(1)
said, source = "timeout", "-"
for _ in range(5):
    try:
        u.send(b"x")
        said = u.recv(100).decode()
        break
    except ConnectionRefusedError:
        said = "refused"
        break
    except socket.timeout:
        pass
while select.select([raw], [], [], 0.2)[0]:
    pkt, peer = raw.recvfrom(2048)
    if v6:
        if pkt[0] == 1 and pkt[1] == 4:
            source = peer[0]
        continue
    ihl = (pkt[0] & 15) * 4
    if pkt[ihl] == 3 and pkt[ihl + 1] == 3:
        source = socket.inet_ntoa(pkt[12:16])
print(said, source)
"#;

/// A connected IPv6 UDP socket to `[argv[1]]:argv[2]` sends a 1,430-byte datagram
/// (1,478 bytes on the wire) three times and prints the path MTU its kernel then knows
/// for the destination (from an ICMPv6 "packet too big" that matched the socket).
const PMTU6_PROBE: &str = r#"
import socket, sys, time
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
# IPV6_MTU_DISCOVER = IPV6_PMTUDISC_PROBE: sent whatever path MTU is known.
u.setsockopt(socket.IPPROTO_IPV6, 23, 3)
u.connect((sys.argv[1], int(sys.argv[2])))
for _ in range(3):
    try:
        u.send(b"x" * 1430)
    except OSError:
        pass
    time.sleep(0.3)
# IPV6_MTU
print(u.getsockopt(socket.IPPROTO_IPV6, 24))
"#;

/// Probes `port` of `address` from `netns` with [`REFUSED_PROBE`] until the client's
/// packet is refused by `address` (at most 30 s).
async fn refused_through(netns: &str, address: &str, port: u16) {
    let started = std::time::Instant::now();
    loop {
        let out = std::process::Command::new("nsenter")
            .args([
                netns,
                "python3",
                "-c",
                REFUSED_PROBE,
                address,
                &port.to_string(),
            ])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if said == format!("refused {address}") {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "through :{port} the client got {said:?}, not its packet refused by {address}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Fragmented UDP datagrams through a NodePort, both ways and both kinds of backend:
/// the fragments after the first carry no ports and are translated as their first
/// was — to the local backend (its client's address kept), and SNAT'd over the overlay
/// to the backend on the other node, whose fragmented answers come back as the
/// NodePort's. ICMP errors about a client's packets come back as about its packets to
/// the NodePort, from either kind of backend.
#[tokio::test(flavor = "multi_thread")]
async fn fragments_and_icmp_errors_cross_a_nodeport() {
    let lab = ProxyLab::start("svcg", &["g1", "g2"], &[]).await;
    let (cluster, nodes, pods) = (&lab.cluster, &lab.nodes, &lab.pods);
    for (node, name) in nodes.iter().zip(["frag-a", "frag-b"]) {
        let labels = serde_json::json!({"app": "frag", "pod": name});
        let (ip, netns) = sleeping_ready(cluster, pods, node, name, labels).await;
        let udp = in_netns(&netns, move || {
            std::net::UdpSocket::bind((ip, 9000)).unwrap()
        })
        .unwrap();
        let prefix = format!("{name}:");
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, peer)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&[prefix.as_bytes(), &buf[..n]].concat(), peer);
            }
        });
    }
    // One Service over both, one over each (30010: the local backend, 30011: the one
    // on the other node); 30012 and 30013 the same to a port nothing listens on.
    for (name, (label, value), port, target) in [
        ("frag", ("app", "frag"), 30009, 9000),
        ("frag-local", ("pod", "frag-a"), 30010, 9000),
        ("frag-remote", ("pod", "frag-b"), 30011, 9000),
        ("shut-local", ("pod", "frag-a"), 30012, 9001),
        ("shut-remote", ("pod", "frag-b"), 30013, 9001),
    ] {
        create_service(
            cluster,
            serde_json::json!({"metadata": {"name": name}, "spec": {"type": "NodePort",
                "selector": {label: value},
                "ports": [{"port": 9, "targetPort": target, "nodePort": port, "protocol": "UDP"}]}}),
        )
        .await;
    }
    let bridge = lab.outside();
    let address = nodes[0].address.to_string();
    let ask_size = |size: usize| {
        let out = std::process::Command::new("nsenter")
            .args([
                &bridge,
                "python3",
                "-c",
                BIG_DATAGRAMS,
                &address,
                "30009",
                &size.to_string(),
            ])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
    };
    // Small datagrams first: until both backends are programmed.
    let started = std::time::Instant::now();
    loop {
        let r = ask_size(1000);
        if r["seen"] == serde_json::json!(["frag-a", "frag-b"]) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the NodePort not answered by both backends: {r}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Path MTU discovery through a NodePort: a 1,458-byte datagram with DF fits the
    // client's path but not the 1,450-byte links beyond the node. To the local backend
    // the node's kernel answers "fragmentation needed" as it forwards to the pod,
    // quoting the packet as translated (to the pod); the egress program shows the
    // quote as the client's packet to the NodePort. To the remote one the program
    // sends the packet on itself (SNAT'd, redirected), which the kernel neither
    // fragments nor answers for, so the program answers as a router would. Either way
    // the client's kernel can match the error to its socket. (Without the first the
    // client gets an error about the pod's address; without the second, none.)
    for port in ["30010", "30011"] {
        let out = std::process::Command::new("nsenter")
            .args([&bridge, "python3", "-c", PMTU_PROBE, &address, port])
            .output()
            .unwrap();
        let quoted = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(
            quoted,
            format!("{address}:{port} 1450"),
            "the errors the client got through :{port}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A backend that refuses: its port unreachable reaches the client's socket (a
    // connected UDP socket gets ECONNREFUSED) as from the NodePort. The local
    // backend's error leaves through the egress program; the remote one's comes back
    // to the SNAT address and is sent on by the ingress program. (Untranslated, the
    // first is about the pod's address, the second ends at the node.)
    for port in [30012, 30013] {
        refused_through(&bridge, &address, port).await;
    }

    let ask = || ask_size(4000);
    // The client's path to the node carries 1,400 bytes: its fragments fit the
    // overlay (1,450) the remote backend is reached through. (Bigger ones would need
    // the node to fragment them again, which a packet the program sends on itself does
    // not get: left to the path MTU, see the README.)
    let route = std::process::Command::new("ip")
        .args([
            "-n",
            lab.lab.bridge_netns(),
            "route",
            "replace",
            &format!("{address}/32"),
            "dev",
            "br0",
            "mtu",
            "1400",
        ])
        .status()
        .unwrap();
    assert!(route.success());
    // Until both backends are programmed and answer whole.
    let started = std::time::Instant::now();
    loop {
        let r = ask();
        let whole = r["errors"] == serde_json::json!([]);
        if whole && r["seen"] == serde_json::json!(["frag-a", "frag-b"]) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "fragmented datagrams not answered whole by both backends: {r}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // And again: every round whole, not only one.
    let again = ask();
    assert_eq!(again["errors"], serde_json::json!([]), "{again}");
}

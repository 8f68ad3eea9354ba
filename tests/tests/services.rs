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

/// A backend pod labelled app=web on `node`; in its namespace a TCP server on :8080 and
/// a UDP echo on :5353 that answer with `name`.
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
    let tcp = in_netns(&netns, move || {
        std::net::TcpListener::bind((ip, 8080)).unwrap()
    })
    .unwrap();
    let udp = in_netns(&netns, move || {
        std::net::UdpSocket::bind((ip, 5353)).unwrap()
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
        let mut buf = [0u8; 512];
        while let Ok((_, peer)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(who.as_bytes(), peer);
        }
    });
    (ip, netns)
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
    let out = node
        .command(kernlet_tests::simnode::kernlet_bin().unwrap())
        .args(["explain", target, "-o", if json { "json" } else { "table" }])
        .arg("--kubeconfig")
        .arg(node.dir("state").join("node.kubeconfig"))
        .arg("--state-dir")
        .arg(node.dir("state"))
        .arg("--run-dir")
        .arg(node.dir("run"))
        .arg("--bpffs-dir")
        .arg(node.dir("bpf"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A UDP client that connects to the service until it lands on web-b, says so, then
/// on a line of input sends once more and says what happened.
const UDP_CLIENT: &str = r#"
import socket, sys
ip = sys.argv[1]
for _ in range(40):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(3)
    u.connect((ip, 53))
    u.send(b"hi")
    if u.recv(100).decode() == "web-b":
        break
    u.close()
print("on web-b", flush=True)
sys.stdin.readline()
try:
    u.send(b"hi")
    print("answer " + u.recv(100).decode(), flush=True)
except OSError as e:
    print("error %d" % e.errno, flush=True)
"#;

/// Runs the client in the network namespace `netns`, as a process of `cgroup` (the
/// load-balancer translates the socket calls of processes below the cgroup it is
/// attached to).
fn client(cgroup: &Path, netns: &Path, ip: Ipv4Addr, n: usize) -> serde_json::Value {
    std::fs::create_dir_all(cgroup).unwrap();
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec nsenter --net={} python3 -c '{}' {ip} {n}",
        cgroup.display(),
        netns.display(),
        CLIENT
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "client: {}{}",
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
    let mut nodes: Vec<SimNode> = ["s1", "s2"]
        .iter()
        .map(|n| lab.add_node(n).unwrap())
        .collect();
    for (i, n) in nodes.iter_mut().enumerate() {
        n.import_busybox().unwrap();
        let cg = n.cgroup().display().to_string();
        start_overlay_node(
            &cluster,
            &fwd.url,
            n,
            i as u8 + 1,
            &[
                "--service-proxy",
                "--service-cgroup",
                &cg,
                "--service-resync",
                "1",
            ],
        )
        .await
        .unwrap();
    }
    let admin = cluster.admin().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let (a_ip, _) = backend(&cluster, &pods, &nodes[0], "web-a").await;
    let (b_ip, _) = backend(&cluster, &pods, &nodes[1], "web-b").await;
    let (_, client_ns) = sleeping_pod(&cluster, &pods, &nodes[0], "client")
        .await
        .unwrap();

    let services: Api<Service> = Api::namespaced(admin.clone(), "default");
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [
            {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
            {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"},
        ]},
    }))
    .unwrap();
    let svc = services.create(&PostParams::default(), &svc).await.unwrap();
    let cluster_ip: Ipv4Addr = svc.spec.unwrap().cluster_ip.unwrap().parse().unwrap();
    cluster.sync_endpointslice("default", "web").await.unwrap();

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
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"selector": {"app": "web"}, "trafficDistribution": distribution,
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
        }))
        .unwrap();
        let svc = services.create(&PostParams::default(), &svc).await.unwrap();
        let ip: Ipv4Addr = svc.spec.unwrap().cluster_ip.unwrap().parse().unwrap();
        cluster.sync_endpointslice("default", name).await.unwrap();
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
    let mut udp_client = std::process::Command::new("bash")
        .args([
            "-c",
            &format!(
                "echo $$ > {}/cgroup.procs && exec nsenter --net={} python3 -c '{}' {cluster_ip}",
                cg.display(),
                client_ns.display(),
                UDP_CLIENT
            ),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut udp_out = std::io::BufReader::new(udp_client.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut udp_out, &mut line).unwrap();
    assert_eq!(line.trim(), "on web-b");

    // web-b not ready: only web-a is chosen.
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(admin.clone(), "default");
    let mut slice = slices.get("web-kltest").await.unwrap();
    for ep in slice.endpoints.iter_mut().flatten() {
        if ep.target_ref.as_ref().and_then(|t| t.name.as_deref()) == Some("web-b") {
            let c = ep.conditions.get_or_insert_with(Default::default);
            c.ready = Some(false);
            c.serving = Some(false);
        }
    }
    slices
        .replace("web-kltest", &PostParams::default(), &slice)
        .await
        .unwrap();
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
    udp_client.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut udp_out, &mut line).unwrap();
    // ECONNABORTED, or EDESTADDRREQ once the aborted socket is disconnected.
    assert!(
        ["error 103", "error 89"].contains(&line.trim()),
        "{line}\n{}",
        nodes[0].kernlet_log()
    );
    let _ = udp_client.wait();

    // kernlet status: the services programmed and how fresh the daemon's last sync is.
    let status = |node: &SimNode| -> serde_json::Value {
        let out = node
            .command(kernlet_tests::simnode::kernlet_bin().unwrap())
            .args(["status", "-o", "json", "--kubeconfig"])
            .arg(node.dir("state").join("node.kubeconfig"))
            .args(["--state-dir"])
            .arg(node.dir("state"))
            .args(["--run-dir"])
            .arg(node.dir("run"))
            .args(["--bpffs-dir"])
            .arg(node.dir("bpf"))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
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
    let links: Vec<String> = std::fs::read_dir(nodes[0].dir("bpf").join("lb/links"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(links.len(), 4, "{links:?}");
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
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [
            {"name": "c", "image": "busybox:1.36", "command": ["sleep", "3600"]}]},
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
    let mut node = lab.add_node("k1").unwrap();
    node.import_busybox().unwrap();
    let cg = node.cgroup().display().to_string();
    let flags = [
        "--service-proxy",
        "--service-cgroup",
        &cg,
        "--service-resync",
        "1",
    ];
    start_overlay_node(&cluster, &fwd.url, &mut node, 1, &flags)
        .await
        .unwrap();
    let admin = cluster.admin().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    echo_backend(&cluster, &pods, &node, "echo-a").await;
    echo_backend(&cluster, &pods, &node, "echo-b").await;
    let (_, client_ns) = sleeping_pod(&cluster, &pods, &node, "client")
        .await
        .unwrap();
    let services: Api<Service> = Api::namespaced(admin.clone(), "default");
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "echo"},
        "spec": {"selector": {"app": "echo"}, "ports": [
            {"name": "tcp", "port": 7, "targetPort": 7000, "protocol": "TCP"},
            {"name": "udp", "port": 7, "targetPort": 7000, "protocol": "UDP"},
        ]},
    }))
    .unwrap();
    let svc = services.create(&PostParams::default(), &svc).await.unwrap();
    let ip: Ipv4Addr = svc.spec.unwrap().cluster_ip.unwrap().parse().unwrap();
    cluster.sync_endpointslice("default", "echo").await.unwrap();
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
    let kc = node
        .dir("state")
        .join("node.kubeconfig")
        .display()
        .to_string();
    let mut args = vec!["run", "--kubeconfig", &kc, "--node-name", "k1"];
    args.extend([
        "--node-lease-renew-interval-ms",
        "1000",
        "--cluster-cidr",
        kernlet_tests::overlay::CLUSTER_CIDR,
        "--overlay-resync",
        "1",
    ]);
    args.extend(flags);
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
    drop(fwd);
}

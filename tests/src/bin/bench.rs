//! `cargo xtask bench [names...]`: named benchmarks, each run several times; prints
//! median, min and max, and writes `target/bench/<name>.json`.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, PodSpec};
use kernlet_tests::cluster::Cluster;
use kube::api::{Api, ListParams, PostParams, WatchParams};
use serde_json::json;

type BenchFn = fn() -> anyhow::Result<Duration>;

const BENCHES: &[(&str, &str, BenchFn)] = &[
    (
        "qos-fixture-pods",
        "QoS class of the fixture pods, 10k times",
        qos_fixture_pods,
    ),
    (
        "apiserver-create-list",
        "create 500 ConfigMaps, then list them (kube-rs, in-memory apiserver)",
        apiserver_create_list,
    ),
    (
        "apiserver-watch-fanout",
        "10 watchers each receive 200 changes",
        apiserver_watch_fanout,
    ),
    (
        "simnodes-up",
        "bring up a lab with three SimNodes and tear it down (root)",
        simnodes_up,
    ),
];

/// Benchmarks with their own reporting (percentiles rather than repeated runs).
type ReportFn = fn() -> anyhow::Result<serde_json::Value>;

const REPORTS: &[(&str, &str, ReportFn)] = &[
    (
        "pods",
        "pod manager through an apiserver (real with KUBEBUILDER_ASSETS, else the kit's): pod created -> the apiserver shows its container running, 20 sequential pods and a 110-pod burst (from the burst's start); agent and shim CPU and RSS with 0 and 110 idle pods (root)",
        kernlet_tests::bench_pods::run,
    ),
    (
        "rollout",
        "requests failed during a rolling update of a 10-replica Deployment under load, with and without the termination barrier (a stock control plane: KUBEBUILDER_ASSETS; root)",
        kernlet_tests::bench_rollout::run,
    ),
    (
        "runtime",
        "pod start latency, sandbox to the container's first output: 50 sequential pods and a 110-pod burst, against a floor of bare unshare + cgroup + exec (root)",
        runtime_latency,
    ),
    (
        "overlay",
        "pod-to-pod across two kernlet nodes over flannel.1 (VXLAN) against the same two pod namespaces joined by a plain veth pair: iperf3 throughput and 1-byte TCP request/response rate (root)",
        overlay_vs_direct,
    ),
    (
        "services",
        "Service datapath: cold sync of 10,000 services x 2 endpoints until the datapath answers, add/remove of one service with 1k and 10k present — each beside the same services as a kube-proxy-shaped nftables ruleset applied with nft -f — and with 50k present (kernlet alone, with KERNLET_BENCH_50K=1); and connect+request rate through a ClusterIP vs to the pod IP (root)",
        services_bench,
    ),
];

const RUNS: usize = 5;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn qos_fixture_pods() -> anyhow::Result<Duration> {
    let specs: Vec<PodSpec> = [
        "objects/pod-web-589c74b5fc-cscnw.json",
        "objects/pod-hostnet.json",
    ]
    .iter()
    .map(|p| serde_json::from_value(kernlet_tests::fixtures::json(p)["spec"].clone()))
    .collect::<Result<_, _>>()?;
    let start = Instant::now();
    for i in 0..10_000 {
        std::hint::black_box(kernlet::model::qos::qos_class(&specs[i % specs.len()])?);
    }
    Ok(start.elapsed())
}

fn apiserver_create_list() -> anyhow::Result<Duration> {
    runtime()?.block_on(async {
        let cluster = Cluster::start(&[]).await?;
        let api: Api<ConfigMap> = Api::namespaced(cluster.admin().await?, "default");
        let start = Instant::now();
        for i in 0..500 {
            let cm: ConfigMap = serde_json::from_value(
                json!({"metadata": {"name": format!("b{i}")}, "data": {"k": "v"}}),
            )?;
            api.create(&PostParams::default(), &cm).await?;
        }
        let n = api.list(&ListParams::default()).await?.items.len();
        anyhow::ensure!(n == 501, "listed {n}");
        Ok(start.elapsed())
    })
}

fn apiserver_watch_fanout() -> anyhow::Result<Duration> {
    use futures::StreamExt;
    runtime()?.block_on(async {
        let cluster = Cluster::start(&[]).await?;
        let api: Api<ConfigMap> = Api::namespaced(cluster.admin().await?, "default");
        let rv = api
            .list(&ListParams::default())
            .await?
            .metadata
            .resource_version
            .unwrap_or_default();
        let mut watchers = Vec::new();
        for _ in 0..10 {
            let stream = api.watch(&WatchParams::default().timeout(60), &rv).await?;
            watchers.push(tokio::spawn(async move { stream.take(200).count().await }));
        }
        let start = Instant::now();
        for i in 0..200 {
            let cm: ConfigMap =
                serde_json::from_value(json!({"metadata": {"name": format!("w{i}")}}))?;
            api.create(&PostParams::default(), &cm).await?;
        }
        for w in watchers {
            anyhow::ensure!(w.await? == 200, "a watcher missed events");
        }
        Ok(start.elapsed())
    })
}

fn simnodes_up() -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut lab = kernlet_tests::simnode::Lab::new("bench")?;
    let nodes: Vec<_> = ["b1", "b2", "b3"]
        .iter()
        .map(|n| lab.add_node(n))
        .collect::<Result<_, _>>()?;
    drop(nodes);
    drop(lab);
    Ok(start.elapsed())
}

/// A runtime with its own directories and cgroup root, removed on drop.
struct BenchRuntime {
    rt: kernlet::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Drop for BenchRuntime {
    fn drop(&mut self) {
        let _ = kernlet_tests::hygiene::remove_cgroup_tree(&self.rt.cgroup_root);
        kernlet_tests::hygiene::unmount_under(self._dir.path());
    }
}

fn bench_runtime() -> anyhow::Result<BenchRuntime> {
    kernlet_tests::hygiene::sweep_once();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{}-bench-", kernlet_tests::hygiene::run_prefix()))
        .tempdir()?;
    let exe = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/kernlet");
    anyhow::ensure!(
        exe.exists(),
        "{} is missing: `cargo xtask bench` builds it",
        exe.display()
    );
    let rt = kernlet::runtime::Runtime::open(kernlet::runtime::RuntimeConfig {
        state_dir: dir.path().join("state"),
        run_dir: dir.path().join("run"),
        log_dir: dir.path().join("logs"),
        image_dir: dir.path().join("images"),
        cgroup_root: format!("{}-bench", kernlet_tests::hygiene::run_prefix()).into(),
        exe,
        rotation: Default::default(),
        registries: Default::default(),
        pod_pids_limit: None,
        seccomp_default: false,
        dns: Default::default(),
        resolv_conf: "/etc/resolv.conf".into(),
        node_allocatable: None,
        memory_policy: Default::default(),
    })?;
    let layout = kernlet_tests::oci::busybox_layout(&dir.path().join("build"), "1.36")?;
    kernlet::runtime::image::layout::import(&rt.images, &layout, Some("busybox"))?;
    Ok(BenchRuntime { rt, _dir: dir })
}

/// Starts one pod and returns the time from the sandbox request to the container's
/// first output (the shim's timestamp of its first log line); removes it again.
fn one_pod(rt: &kernlet::runtime::Runtime, n: usize) -> anyhow::Result<Duration> {
    let uid = format!("00000000-0000-0000-0000-{n:012}");
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": format!("b{n}"), "namespace": "bench", "uid": uid},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "command": ["echo", "up"]}]},
    }))?;
    let t0 = k8s_openapi::jiff::Timestamp::now();
    let sb = rt.run_sandbox(&pod, &uid, "127.0.0.1")?;
    let c = &pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default()[0];
    let image = rt.ensure_image(c, &[])?;
    let record = rt.start_container(&sb, &pod, c, 0, &image)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let text = std::fs::read_to_string(&record.log_path).unwrap_or_default();
        if let Some(r) = text
            .lines()
            .next()
            .and_then(kernlet::runtime::logs::parse_line)
        {
            break r.time.parse::<k8s_openapi::jiff::Timestamp>()?;
        }
        anyhow::ensure!(Instant::now() < deadline, "pod {n} wrote nothing");
        std::thread::sleep(Duration::from_millis(2));
    };
    let latency = Duration::try_from(first.duration_since(t0)).unwrap_or_default();
    rt.stop_container(&record.id, Duration::from_secs(5))?;
    rt.remove_container(&record.id)?;
    rt.remove_sandbox(&uid)?;
    Ok(latency)
}

/// The floor: the same namespaces with `unshare`, a cgroup, and an exec of busybox.
fn floor_once(cgroup_root: &std::path::Path, n: usize) -> anyhow::Result<Duration> {
    let cg = cgroup_root.join(format!("floor{n}"));
    let start = Instant::now();
    std::fs::create_dir(&cg)?;
    let status = std::process::Command::new("unshare")
        .args([
            "--net",
            "--ipc",
            "--uts",
            "--mount",
            "--pid",
            "--fork",
            "/bin/busybox",
            "true",
        ])
        .status()?;
    let elapsed = start.elapsed();
    std::fs::remove_dir(&cg)?;
    anyhow::ensure!(status.success(), "unshare failed");
    Ok(elapsed)
}

fn runtime_latency() -> anyhow::Result<serde_json::Value> {
    let b = bench_runtime()?;
    let mut seq: Vec<Duration> = (0..50)
        .map(|n| one_pod(&b.rt, n))
        .collect::<Result<_, _>>()?;
    seq.sort();
    let workers = 10;
    let burst: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let rt = &b.rt;
                s.spawn(move || {
                    (0..110)
                        .filter(|n| n % workers == w)
                        .map(|n| one_pod(rt, 1000 + n))
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a burst worker panicked"))?
            })
            .collect::<anyhow::Result<Vec<Vec<_>>>>()
            .map(|v| v.into_iter().flatten().collect())
    })?;
    let mut burst = burst;
    burst.sort();
    let mut floor: Vec<Duration> = (0..50)
        .map(|n| floor_once(&b.rt.cgroup_root, n))
        .collect::<Result<_, _>>()?;
    floor.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (s50, s99, b50, b99, f50) = (
        kernlet_tests::percentile(&seq, 50),
        kernlet_tests::percentile(&seq, 99),
        kernlet_tests::percentile(&burst, 50),
        kernlet_tests::percentile(&burst, 99),
        kernlet_tests::percentile(&floor, 50),
    );
    println!(
        "runtime                  sequential p50 {s50:>9.3?} p99 {s99:>9.3?} | burst of 110 (10 at a time) p50 {b50:>9.3?} p99 {b99:>9.3?} | floor p50 {f50:>9.3?} | p50 ratio {:.1}x",
        s50.as_secs_f64() / f50.as_secs_f64()
    );
    Ok(json!({
        "sequential": {"pods": seq.len(), "p50_ms": ms(s50), "p99_ms": ms(s99)},
        "burst": {"pods": burst.len(), "concurrency": workers, "p50_ms": ms(b50), "p99_ms": ms(b99)},
        "floor": {"runs": floor.len(), "p50_ms": ms(f50), "what": "unshare --net --ipc --uts --mount --pid --fork busybox true, plus a cgroup mkdir/rmdir"},
        "ratio_p50": s50.as_secs_f64() / f50.as_secs_f64(),
    }))
}

/// iperf3 from `client` to `server_ip` served in `server`, 5 s: received bits per second.
fn iperf3(
    client: &std::path::Path,
    server: &std::path::Path,
    server_ip: std::net::Ipv4Addr,
) -> anyhow::Result<f64> {
    use std::process::{Command, Stdio};
    anyhow::ensure!(
        std::path::Path::new("/usr/bin/iperf3").exists(),
        "iperf3 is not installed: run cargo xtask setup (Debian package iperf3)"
    );
    let mut srv = Command::new("nsenter")
        .arg(format!("--net={}", server.display()))
        .args(["iperf3", "-s", "-1", "-p", "5201", "-B"])
        .arg(server_ip.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new("nsenter")
        .arg(format!("--net={}", client.display()))
        .args(["iperf3", "-J", "-t", "5", "-p", "5201", "-c"])
        .arg(server_ip.to_string())
        .output()?;
    let _ = srv.kill();
    let _ = srv.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v.pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| anyhow::anyhow!("iperf3 gave no result: {v}"))
}

/// 1-byte TCP request/response round trips per second for 3 s, from `client` to
/// `server_ip:7300` echoed in `server`.
fn request_response(
    client: &std::path::Path,
    server: &std::path::Path,
    server_ip: std::net::Ipv4Addr,
) -> anyhow::Result<f64> {
    use kernlet_tests::overlay::in_netns;
    use std::io::{Read as _, Write as _};
    let listener = in_netns(server, move || {
        std::net::TcpListener::bind((server_ip, 7300))
    })??;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        while s.read(&mut b)? == 1 {
            s.write_all(&b)?;
        }
        Ok(())
    });
    let mut conn = kernlet::sys::ns::connect_in(
        Some(client),
        (server_ip, 7300).into(),
        Duration::from_secs(5),
    )?;
    conn.set_nodelay(true)?;
    let start = Instant::now();
    let mut n = 0u64;
    let mut b = [0u8; 1];
    // Bounded in time and count.
    while start.elapsed() < Duration::from_secs(3) && n < 10_000_000 {
        conn.write_all(b"x")?;
        conn.read_exact(&mut b)?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(conn);
    let _ = echo.join();
    Ok(rate)
}

fn overlay_vs_direct() -> anyhow::Result<serde_json::Value> {
    use k8s_openapi::api::core::v1::Pod;
    use kernlet_tests::overlay::{apply_node_rbac, sleeping_pod, start_overlay_node};
    use kernlet_tests::simnode::{BRIDGE_IP, Lab};
    runtime()?.block_on(async {
        let cluster = Cluster::start(&[BRIDGE_IP.into()]).await?;
        let mut lab = Lab::new("bovl")?;
        let fwd = lab.forward(0, cluster.addr())?;
        apply_node_rbac(&cluster)?;
        let mut a = lab.add_node("ba")?;
        let mut b = lab.add_node("bb")?;
        for (i, n) in [&mut a, &mut b].into_iter().enumerate() {
            n.import_busybox()?;
            start_overlay_node(&cluster, &fwd.url, n, i as u8 + 1, &[]).await?;
        }
        let pods: Api<Pod> = Api::namespaced(cluster.admin().await?, "default");
        let (_, ns_a) = sleeping_pod(&cluster, &pods, &a, "bench-a").await?;
        let (ip_b, ns_b) = sleeping_pod(&cluster, &pods, &b, "bench-b").await?;
        // The overlay entries for the other node are programmed within a resync.
        let start = Instant::now();
        while kernlet::sys::ns::connect_in(Some(&ns_a), (ip_b, 9).into(), Duration::from_millis(300))
            .err()
            .is_some_and(|e| e.kind() != std::io::ErrorKind::ConnectionRefused)
        {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(30), "pod bench-b never became reachable over the overlay");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The direct path: a veth pair between the same two pod namespaces, no
        // encapsulation, MTU 1500. The pins are bound under /run/netns for ip(8).
        let prefix = kernlet_tests::hygiene::run_prefix();
        let names = [format!("{prefix}-bench-pa"), format!("{prefix}-bench-pb")];
        for (name, pin) in names.iter().zip([&ns_a, &ns_b]) {
            let path = std::path::Path::new("/run/netns").join(name);
            std::fs::write(&path, b"")?;
            nix::mount::mount(Some(pin.as_path()), &path, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)?;
        }
        let ip = kernlet_tests::hygiene::ip;
        ip(&["-n", &names[0], "link", "add", "kbench0", "type", "veth", "peer", "name", "kbench1", "netns", &names[1]])?;
        ip(&["-n", &names[0], "addr", "add", "192.168.77.1/30", "dev", "kbench0"])?;
        ip(&["-n", &names[1], "addr", "add", "192.168.77.2/30", "dev", "kbench1"])?;
        ip(&["-n", &names[0], "link", "set", "kbench0", "up"])?;
        ip(&["-n", &names[1], "link", "set", "kbench1", "up"])?;
        let direct_ip = std::net::Ipv4Addr::new(192, 168, 77, 2);
        let result = (|| -> anyhow::Result<serde_json::Value> {
            let overlay_bps = iperf3(&ns_a, &ns_b, ip_b)?;
            let direct_bps = iperf3(&ns_a, &ns_b, direct_ip)?;
            let overlay_rr = request_response(&ns_a, &ns_b, ip_b)?;
            let direct_rr = request_response(&ns_a, &ns_b, direct_ip)?;
            println!(
                "overlay: {:.2} Gbit/s, {:.0} req/s   direct: {:.2} Gbit/s, {:.0} req/s   ratio: throughput {:.2}, request/response {:.2}",
                overlay_bps / 1e9, overlay_rr, direct_bps / 1e9, direct_rr,
                overlay_bps / direct_bps, overlay_rr / direct_rr
            );
            Ok(json!({
                "overlay": {"throughput_gbps": overlay_bps / 1e9, "request_response_per_s": overlay_rr},
                "direct": {"throughput_gbps": direct_bps / 1e9, "request_response_per_s": direct_rr},
                "ratio": {"throughput": overlay_bps / direct_bps, "request_response": overlay_rr / direct_rr},
            }))
        })();
        for name in &names {
            let _ = ip(&["netns", "delete", name]);
        }
        drop((a, b, fwd));
        result
    })
}

/// Runs python `code` with `args` as a process of `cgroup` (so the socket
/// load-balancer translates it) inside the network namespace `netns`; its stdout.
fn py_in(
    cgroup: &std::path::Path,
    netns: &std::path::Path,
    code: &str,
    args: &[String],
) -> anyhow::Result<String> {
    let out = kernlet_tests::python_in(cgroup, netns, code)?
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Waits until a TCP connect to `ip:80` from the node's cgroup is answered (or, with
/// `gone`, refused); the elapsed time. Bounded at 120 s.
const PROBE: &str = r#"
import socket, sys, time
ip, gone = sys.argv[1], sys.argv[2] == "1"
start = time.time()
while time.time() - start < 120:
    try:
        s = socket.create_connection((ip, 80), timeout=0.5)
        ok = True
        s.close()
    except OSError:
        ok = False
    if ok != gone:
        print(time.time() - start)
        sys.exit(0)
    time.sleep(0.005)
sys.exit(1)
"#;

/// New TCP connections per second for 3 s (connect, 1-byte request, 1-byte answer,
/// close) to `ip:port`.
const CONNECT_RATE: &str = r#"
import socket, sys, time
ip, port = sys.argv[1], int(sys.argv[2])
start, n = time.time(), 0
while time.time() - start < 3 and n < 1000000:
    s = socket.create_connection((ip, port), timeout=3)
    s.sendall(b"x")
    s.recv(1)
    s.close()
    n += 1
print(n / (time.time() - start))
"#;

/// kube-proxy's nftables mode for `services` (ClusterIP, port 80/TCP, two endpoints
/// each): a verdict map from address . protocol . port to a chain per service, which
/// picks an endpoint chain with `numgen random`, which DNATs.
fn nft_ruleset(services: &[(std::net::Ipv4Addr, [std::net::Ipv4Addr; 2])]) -> String {
    let mut out = String::from("table ip kube-proxy-bench {\n");
    out.push_str("  chain mark-for-masquerade { mark set mark or 0x4000 ; }\n");
    for (i, (_, eps)) in services.iter().enumerate() {
        for (j, ep) in eps.iter().enumerate() {
            out.push_str(&format!(
                "  chain ep-{i}-{j} {{ ip saddr {ep} jump mark-for-masquerade ; meta l4proto tcp dnat to {ep}:8080 ; }}\n"
            ));
        }
        out.push_str(&format!(
            "  chain svc-{i} {{ numgen random mod 2 vmap {{ 0 : goto ep-{i}-0 , 1 : goto ep-{i}-1 }} ; }}\n"
        ));
    }
    out.push_str("  map service-ips {\n    type ipv4_addr . inet_proto . inet_service : verdict\n");
    if !services.is_empty() {
        out.push_str("    elements = {\n");
        let lines: Vec<String> = services
            .iter()
            .enumerate()
            .map(|(i, (ip, _))| format!("      {ip} . tcp . 80 : goto svc-{i}"))
            .collect();
        out.push_str(&lines.join(",\n"));
        out.push_str("\n    }\n");
    }
    out.push_str("  }\n");
    out.push_str("  chain services { ip daddr . meta l4proto . th dport vmap @service-ips ; }\n");
    out.push_str("  chain nat-output { type nat hook output priority -100; policy accept; jump services ; }\n");
    out.push_str("  chain nat-prerouting { type nat hook prerouting priority -100; policy accept; jump services ; }\n");
    out.push_str("}\n");
    out
}

/// Applies `rules` with `nft -f` in the network namespace `netns`; the time it took.
fn nft_apply(netns: &std::path::Path, rules: &str) -> anyhow::Result<Duration> {
    let file = std::env::temp_dir().join(format!("kernlet-bench-{}.nft", std::process::id()));
    std::fs::write(&file, rules)?;
    let start = Instant::now();
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["nft", "-f"])
        .arg(&file)
        .output()?;
    let took = start.elapsed();
    let _ = std::fs::remove_file(&file);
    anyhow::ensure!(
        out.status.success(),
        "nft -f: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

fn services_bench() -> anyhow::Result<serde_json::Value> {
    use futures::StreamExt as _;
    use k8s_openapi::api::core::v1::{Pod, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kernlet_tests::overlay::{apply_node_rbac, in_netns, sleeping_pod, start_overlay_node};
    use kernlet_tests::simnode::{BRIDGE_IP, Lab};
    anyhow::ensure!(
        std::path::Path::new("/usr/sbin/nft").exists(),
        "nft is not installed: run cargo xtask setup (Debian package nftables)"
    );
    runtime()?.block_on(async {
        let cluster = Cluster::start(&[BRIDGE_IP.into()]).await?;
        let mut lab = Lab::new("bsvc")?;
        let fwd = lab.forward(0, cluster.addr())?;
        apply_node_rbac(&cluster)?;
        let mut node = lab.add_node("bs")?;
        node.import_busybox()?;
        let cg = node.cgroup().display().to_string();
        let flags = ["--service-proxy", "--service-cgroup", &cg, "--service-resync", "30"];
        start_overlay_node(&cluster, &fwd.url, &mut node, 1, &flags).await?;
        let admin = cluster.admin().await?;
        let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
        // Two backends answering one byte per connection on :8080.
        let mut eps = Vec::new();
        for name in ["bench-a", "bench-b"] {
            let (ip, netns) = sleeping_pod(&cluster, &pods, &node, name).await?;
            let listener = in_netns(&netns, move || std::net::TcpListener::bind((ip, 8080)))??;
            std::thread::spawn(move || {
                use std::io::{Read as _, Write as _};
                for s in listener.incoming() {
                    let Ok(mut s) = s else { return };
                    let mut b = [0u8; 1];
                    if s.read_exact(&mut b).is_ok() {
                        let _ = s.write_all(&b);
                    }
                }
            });
            eps.push(ip);
        }
        let eps = [eps[0], eps[1]];
        let client_cg = node.cgroup().join("bench-client");
        let node_ns = std::path::PathBuf::from(format!("/run/netns/{}", node.netns));
        let services: Api<Service> = Api::namespaced(admin.clone(), "default");
        let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), "default");
        let create = |i: usize| {
            let (services, slices) = (services.clone(), slices.clone());
            async move {
                let name = format!("bench-{i}");
                let svc: Service = serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
                }))?;
                let svc = services.create(&PostParams::default(), &svc).await?;
                let ip: std::net::Ipv4Addr = svc.spec.and_then(|s| s.cluster_ip).unwrap_or_default().parse()?;
                let slice: EndpointSlice = serde_json::from_value(json!({
                    "metadata": {"name": format!("{name}-x"), "labels": {"kubernetes.io/service-name": name}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                    "endpoints": [{"addresses": [eps[0].to_string()]}, {"addresses": [eps[1].to_string()]}],
                }))?;
                slices.create(&PostParams::default(), &slice).await?;
                anyhow::Ok(ip)
            }
        };
        let create_many = |range: std::ops::Range<usize>| {
            futures::stream::iter(range.map(create))
                .buffer_unordered(16)
                .collect::<Vec<_>>()
        };
        let probe = |ip: std::net::Ipv4Addr, gone: bool| -> anyhow::Result<f64> {
            Ok(py_in(&client_cg, &node_ns, PROBE, &[ip.to_string(), if gone { "1" } else { "0" }.into()])?.parse()?)
        };
        let pin_dir = node.dir("bpf").join("lb");
        let frontends = |pin_dir: &std::path::Path| {
            kernlet::sys::lb::read_pinned(pin_dir).map(|(s, _)| s.len()).unwrap_or(0)
        };
        // One service added and removed `reps` times with `present` services there:
        // seconds until it answers, and until connects to it are refused.
        let add_remove = |present: usize, next: &mut usize| -> anyhow::Result<serde_json::Value> {
            let (mut adds, mut removes) = (Vec::new(), Vec::new());
            for _ in 0..5 {
                let i = *next;
                *next += 1;
                let rt = tokio::runtime::Handle::current();
                let start = Instant::now();
                let ip = tokio::task::block_in_place(|| rt.block_on(create(i)))?;
                probe(ip, false)?;
                adds.push(start.elapsed().as_secs_f64());
                let start = Instant::now();
                let name = format!("bench-{i}");
                tokio::task::block_in_place(|| rt.block_on(async {
                    services.delete(&name, &Default::default()).await?;
                    slices.delete(&format!("{name}-x"), &Default::default()).await?;
                    anyhow::Ok(())
                }))?;
                probe(ip, true)?;
                removes.push(start.elapsed().as_secs_f64());
            }
            let median = |v: &mut Vec<f64>| { v.sort_by(f64::total_cmp); v[v.len() / 2] };
            Ok(json!({"present": present, "add_s": median(&mut adds), "remove_s": median(&mut removes)}))
        };
        let nft_delta = |present: usize| -> anyhow::Result<(f64, f64)> {
            // The same change as nft would make it: one service's chains and element.
            let i = present;
            let ip = std::net::Ipv4Addr::new(10, 111, (i / 256) as u8, (i % 256) as u8);
            let add = format!(
                "add chain ip kube-proxy-bench ep-{i}-0 {{ ip saddr {a} jump mark-for-masquerade ; meta l4proto tcp dnat to {a}:8080 ; }}\nadd chain ip kube-proxy-bench ep-{i}-1 {{ ip saddr {b} jump mark-for-masquerade ; meta l4proto tcp dnat to {b}:8080 ; }}\nadd chain ip kube-proxy-bench svc-{i} {{ numgen random mod 2 vmap {{ 0 : goto ep-{i}-0 , 1 : goto ep-{i}-1 }} ; }}\nadd element ip kube-proxy-bench service-ips {{ {ip} . tcp . 80 : goto svc-{i} }}\n",
                a = eps[0], b = eps[1]
            );
            let remove = format!(
                "delete element ip kube-proxy-bench service-ips {{ {ip} . tcp . 80 }}\ndelete chain ip kube-proxy-bench svc-{i}\ndelete chain ip kube-proxy-bench ep-{i}-0\ndelete chain ip kube-proxy-bench ep-{i}-1\n"
            );
            Ok((nft_apply(&node_ns, &add)?.as_secs_f64(), nft_apply(&node_ns, &remove)?.as_secs_f64()))
        };
        let nft_services = |n: usize| -> Vec<(std::net::Ipv4Addr, [std::net::Ipv4Addr; 2])> {
            (0..n).map(|i| (std::net::Ipv4Addr::new(10, 110, (i / 256) as u8, (i % 256) as u8), eps)).collect()
        };
        let nft_cold = |n: usize| -> anyhow::Result<f64> {
            let _ = nft_apply(&node_ns, "delete table ip kube-proxy-bench\n");
            Ok(nft_apply(&node_ns, &nft_ruleset(&nft_services(n)))?.as_secs_f64())
        };
        let mut next = 100_000;
        // 1k present.
        for r in create_many(0..1000).await { r?; }
        let wait_count = |want: usize| -> anyhow::Result<()> {
            let start = Instant::now();
            while frontends(&pin_dir) < want {
                anyhow::ensure!(start.elapsed() < Duration::from_secs(300), "the maps never held {want} frontends");
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        };
        wait_count(1000)?;
        let k1 = add_remove(1000, &mut next)?;
        nft_cold(1000)?;
        let (nft_add_1k, nft_remove_1k) = nft_delta(1000)?;
        // 10k present.
        for r in create_many(1000..10_000).await { r?; }
        wait_count(10_000)?;
        let k10 = add_remove(10_000, &mut next)?;
        let nft_cold_10k = nft_cold(10_000)?;
        let (nft_add_10k, nft_remove_10k) = nft_delta(10_000)?;
        let _ = nft_apply(&node_ns, "delete table ip kube-proxy-bench\n");
        // Cold sync: a second node joins with the 10,000 services there; from its
        // kernlet's start until its maps hold every frontend and the last service
        // answers from it (the backends are on the first node, over the overlay).
        let last_ip: std::net::Ipv4Addr = services.get("bench-9999").await?.spec.and_then(|s| s.cluster_ip).unwrap_or_default().parse()?;
        let mut cold_node = lab.add_node("bt")?;
        let cold_cg = cold_node.cgroup().display().to_string();
        let cold_flags = ["--service-proxy", "--service-cgroup", &cold_cg, "--service-resync", "30"];
        let start = Instant::now();
        start_overlay_node(&cluster, &fwd.url, &mut cold_node, 2, &cold_flags).await?;
        let cold_pins = cold_node.dir("bpf").join("lb");
        let since = Instant::now();
        while frontends(&cold_pins) < 10_000 {
            anyhow::ensure!(since.elapsed() < Duration::from_secs(300), "the new node's maps never held 10,000 frontends");
            std::thread::sleep(Duration::from_millis(50));
        }
        let cold_ns = std::path::PathBuf::from(format!("/run/netns/{}", cold_node.netns));
        py_in(&cold_node.cgroup().join("bench-client"), &cold_ns, PROBE, &[last_ip.to_string(), "0".into()])?;
        let cold = start.elapsed().as_secs_f64();
        drop(cold_node);
        // Connect + request rate through a ClusterIP and straight to the pod.
        let via_service: f64 = py_in(&client_cg, &node_ns, CONNECT_RATE, &[last_ip.to_string(), "80".into()])?.parse()?;
        let direct: f64 = py_in(&client_cg, &node_ns, CONNECT_RATE, &[eps[0].to_string(), "8080".into()])?.parse()?;
        println!("cold sync of 10,000 services: kernlet {cold:.2} s (from process start), nft -f {nft_cold_10k:.2} s (ratio {:.2})", cold / nft_cold_10k);
        for (k, (na, nr)) in [(&k1, (nft_add_1k, nft_remove_1k)), (&k10, (nft_add_10k, nft_remove_10k))] {
            let (ka, kr) = (k["add_s"].as_f64().unwrap_or(0.0), k["remove_s"].as_f64().unwrap_or(0.0));
            println!(
                "one service with {} present: add kernlet {:.3} s (apiserver to answering) vs nft -f {:.3} s (ratio {:.2}); remove {:.3} s vs {:.3} s (ratio {:.2})",
                k["present"], ka, na, ka / na, kr, nr, kr / nr
            );
        }
        println!("connect+request: {via_service:.0}/s through the ClusterIP, {direct:.0}/s to the pod (ratio {:.2})", via_service / direct);
        // 50k present, kernlet alone (an nft ruleset that size takes minutes to load):
        // the cost of one change should not grow with what is there. Opt-in: the test
        // kit's apiserver creates a Service in time that grows with the Services there
        // (about 10 a second past 15k), so getting to 50k takes most of an hour.
        let k50 = if std::env::var_os("KERNLET_BENCH_50K").is_some() {
            for r in create_many(10_000..50_000).await { r?; }
            wait_count(50_000)?;
            let k50 = add_remove(50_000, &mut next)?;
            let k1_add = k1["add_s"].as_f64().unwrap_or(f64::NAN);
            let k50_add = k50["add_s"].as_f64().unwrap_or(f64::NAN);
            println!(
                "one service with 50000 present: add kernlet {k50_add:.3} s ({:.2}x the 1k figure); remove {:.3} s",
                k50_add / k1_add,
                k50["remove_s"].as_f64().unwrap_or(f64::NAN)
            );
            k50
        } else {
            println!("one service with 50000 present: not run (set KERNLET_BENCH_50K=1)");
            serde_json::Value::Null
        };
        drop((node, fwd));
        Ok(json!({
            "cold_sync_10k": {"kernlet_s": cold, "nft_s": nft_cold_10k, "ratio": cold / nft_cold_10k},
            "one_service": [
                {"present": 1000, "kernlet": k1, "nft": {"add_s": nft_add_1k, "remove_s": nft_remove_1k}},
                {"present": 10000, "kernlet": k10, "nft": {"add_s": nft_add_10k, "remove_s": nft_remove_10k}},
                {"present": 50000, "kernlet": k50},
            ],
            "connect_request_per_s": {"cluster_ip": via_service, "pod_ip": direct, "ratio": via_service / direct},
        }))
    })
}

fn main() -> anyhow::Result<()> {
    kernlet_tests::apiserver::install_crypto_provider();
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    if let Some(unknown) = wanted.iter().find(|w| {
        !BENCHES.iter().any(|(n, _, _)| n == *w) && !REPORTS.iter().any(|(n, _, _)| n == *w)
    }) {
        let names: Vec<&str> = BENCHES
            .iter()
            .map(|(n, _, _)| *n)
            .chain(REPORTS.iter().map(|(n, _, _)| *n))
            .collect();
        anyhow::bail!("unknown benchmark {unknown:?}; known: {}", names.join(", "));
    }
    let out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out_dir)?;
    for (name, what, f) in BENCHES
        .iter()
        .filter(|(n, _, _)| wanted.is_empty() || wanted.iter().any(|w| w == n))
    {
        let mut samples = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            samples.push(f()?);
        }
        samples.sort();
        let (min, median, max) = (samples[0], samples[RUNS / 2], samples[RUNS - 1]);
        println!("{name:<24} median {median:>10.3?}  min {min:>10.3?}  max {max:>10.3?}  ({what})");
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let record = json!({"name": name, "description": what, "runs": RUNS, "median_ms": ms(median), "min_ms": ms(min), "max_ms": ms(max),
                            "samples_ms": samples.iter().map(|d| ms(*d)).collect::<Vec<_>>()});
        std::fs::write(
            out_dir.join(format!("{name}.json")),
            serde_json::to_string_pretty(&record)?,
        )?;
    }
    for (name, what, f) in REPORTS
        .iter()
        .filter(|(n, _, _)| wanted.is_empty() || wanted.iter().any(|w| w == n))
    {
        let mut record = f()?;
        record["name"] = json!(name);
        record["description"] = json!(what);
        std::fs::write(
            out_dir.join(format!("{name}.json")),
            serde_json::to_string_pretty(&record)?,
        )?;
    }
    Ok(())
}

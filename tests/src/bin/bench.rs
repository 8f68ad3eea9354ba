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
        "Service datapath: one service added and removed with 1k and 10k present (50k with KERNLET_BENCH_50K=1; other counts with KERNLET_BENCH_SERVICES=n,m), from the apiserver's write until the datapath answers, for kernlet and — with a kube-proxy in KUBEBUILDER_ASSETS — a stock kube-proxy in nftables and iptables modes in the same node namespace, with cold starts; the change alone with nft -f of a kube-proxy-shaped ruleset; connect+request rate through a ClusterIP vs to the pod IP (root)",
        kernlet_tests::bench_services::run,
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
        userns_pool: None,
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

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

const REPORTS: &[(&str, &str, ReportFn)] = &[(
    "runtime",
    "pod start latency, sandbox to the container's first output: 50 sequential pods and a 110-pod burst, against a floor of bare unshare + cgroup + exec (root)",
    runtime_latency,
)];

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

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let i = (sorted.len() * p).div_ceil(100).saturating_sub(1);
    sorted[i.min(sorted.len() - 1)]
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
        percentile(&seq, 50),
        percentile(&seq, 99),
        percentile(&burst, 50),
        percentile(&burst, 99),
        percentile(&floor, 50),
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

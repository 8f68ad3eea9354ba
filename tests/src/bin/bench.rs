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

fn main() -> anyhow::Result<()> {
    kernlet_tests::apiserver::install_crypto_provider();
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    if let Some(unknown) = wanted
        .iter()
        .find(|w| !BENCHES.iter().any(|(n, _, _)| n == w))
    {
        let names: Vec<&str> = BENCHES.iter().map(|(n, _, _)| *n).collect();
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
    Ok(())
}

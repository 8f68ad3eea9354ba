//! `cargo xtask bench pods`: the pod manager through an apiserver (a real one when
//! `KUBEBUILDER_ASSETS` is set, the kit's otherwise) and one kernlet node: start latency
//! of 20 sequential pods and of a 110-pod burst (pod created and bound → the apiserver
//! shows every container running), and the agent's and shims' CPU and memory with 0,
//! 110 and 250 idle pods, and with 110 pods each probed every 10 s (an exec liveness
//! probe and an HTTP readiness probe).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

use crate::one_node::{Network, OneNode};

const LABEL: &str = "kernlet-bench=pods";
/// How long CPU use is sampled for an idle figure.
const IDLE_WINDOW: Duration = Duration::from_secs(20);
/// How long pods that just started are left to settle (their last status writes,
/// first volume refreshes) before an idle figure is sampled.
const SETTLE: Duration = Duration::from_secs(15);

/// When each pod was first seen in the watch, and first seen with every container
/// running.
#[derive(Clone, Copy, Debug)]
struct Times {
    first: Instant,
    running: Option<Instant>,
}

type Seen = Arc<Mutex<HashMap<String, Times>>>;

fn all_running(p: &Pod) -> bool {
    let Some(status) = p.status.as_ref() else {
        return false;
    };
    let statuses = status.container_statuses.as_deref().unwrap_or_default();
    let want = p.spec.as_ref().map_or(0, |s| s.containers.len());
    status.phase.as_deref() == Some("Running")
        && statuses.len() == want
        && statuses
            .iter()
            .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
}

/// Watches the bench's pods, recording when each first runs.
fn watch_running(pods: Api<Pod>) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen: Seen = Arc::default();
    let s = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        let mut stream = watcher(pods, watcher::Config::default().labels(LABEL)).boxed();
        while let Some(e) = stream.next().await {
            let (watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = (match e {
                Ok(e) => e,
                Err(_) => continue,
            }) else {
                continue;
            };
            let now = Instant::now();
            if let (Some(name), Ok(mut m)) = (p.metadata.name.clone(), s.lock()) {
                let t = m.entry(name).or_insert(Times {
                    first: now,
                    running: None,
                });
                if t.running.is_none() && all_running(&p) {
                    t.running = Some(now);
                }
            }
        }
    });
    (seen, task)
}

fn pod(name: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kernlet-bench": "pods"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": "busybox:1.36", "imagePullPolicy": "Never",
                            "command": ["sleep", "3600"]}],
        },
    }))?)
}

/// A pod serving HTTP on 8080 (busybox httpd), with an exec liveness probe and an HTTP
/// readiness probe every 10 s.
fn probed_pod(name: &str) -> anyhow::Result<Pod> {
    let mut p = pod(name)?;
    let every_10s = json!({"periodSeconds": 10, "timeoutSeconds": 2});
    let c = json!({
        "name": "c", "image": "busybox:1.36", "imagePullPolicy": "Never",
        "command": ["sh", "-c",
                    "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"],
        "livenessProbe": merge(json!({"exec": {"command": ["true"]}}), &every_10s),
        "readinessProbe": merge(json!({"httpGet": {"path": "/", "port": 8080}}), &every_10s),
    });
    if let Some(spec) = p.spec.as_mut() {
        spec.containers = vec![serde_json::from_value(c)?];
    }
    Ok(p)
}

/// `a` with the fields of object `b` added.
fn merge(mut a: Value, b: &Value) -> Value {
    if let (Some(a), Some(b)) = (a.as_object_mut(), b.as_object()) {
        a.extend(b.clone());
    }
    a
}

/// The apiserver's request counts by `verb resource/subresource` (its
/// `apiserver_request_total`); empty where the apiserver has no such metric (the kit's).
async fn api_requests(client: &kube::Client) -> HashMap<String, f64> {
    let Ok(req) = http::Request::get("/metrics").body(Vec::new()) else {
        return HashMap::new();
    };
    let text = client.request_text(req).await.unwrap_or_default();
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let key = format!(
            "{} {}{}",
            label("verb"),
            label("resource"),
            match label("subresource").as_str() {
                "" => String::new(),
                s => format!("/{s}"),
            }
        );
        *out.entry(key).or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    out
}

/// Requests per pod between two readings of [`api_requests`], the larger first.
fn per_pod(before: &HashMap<String, f64>, after: &HashMap<String, f64>, pods: f64) -> Value {
    let mut rows: Vec<(String, f64)> = after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (v - before.get(k).copied().unwrap_or(0.0)) / pods,
            )
        })
        .filter(|(_, v)| *v >= 0.05)
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = rows.iter().map(|r| r.1).sum();
    json!({"total": (total * 100.0).round() / 100.0,
           "by_request": rows.into_iter().map(|(k, v)| json!([k, (v * 100.0).round() / 100.0])).collect::<Vec<_>>()})
}

/// What a burst measured: per pod, its first watch event → every container running
/// (the and kubelet's pod start latency), and the burst's start → that pod
/// running (which adds the time the client takes to create the pods).
struct Burst {
    per_pod: Vec<Duration>,
    since_start: Vec<Duration>,
}

/// Creates and binds pods `prefix-{range}` made by `make`, and waits until each runs.
async fn burst(
    one: &OneNode,
    seen: &Seen,
    prefix: &str,
    range: std::ops::Range<usize>,
    make: fn(&str) -> anyhow::Result<Pod>,
) -> anyhow::Result<Burst> {
    let t0 = Instant::now();
    let creates =
        range.map(|i| async move { one.create_bound(&make(&format!("{prefix}-{i}"))?).await });
    let names: Vec<String> = futures::future::try_join_all(creates).await?;
    let mut out = Burst {
        per_pod: Vec::new(),
        since_start: Vec::new(),
    };
    for name in &names {
        let t = wait_running(seen, name, Duration::from_secs(300)).await?;
        let running = t.running.unwrap_or(t.first);
        out.per_pod.push(running.duration_since(t.first));
        out.since_start.push(running.duration_since(t0));
    }
    out.per_pod.sort();
    out.since_start.sort();
    Ok(out)
}

async fn wait_running(seen: &Seen, name: &str, within: Duration) -> anyhow::Result<Times> {
    let start = Instant::now();
    loop {
        if let Some(t) = seen
            .lock()
            .ok()
            .and_then(|m| m.get(name).copied())
            .filter(|t| t.running.is_some())
        {
            return Ok(t);
        }
        anyhow::ensure!(
            start.elapsed() < within,
            "pod {name} did not run within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Deletes the bench's pods and waits until the node has removed them.
async fn delete_all(pods: &Api<Pod>) -> anyhow::Result<()> {
    // One delete per pod: the kit's apiserver has no deletecollection.
    let listed = pods.list(&ListParams::default().labels(LABEL)).await?;
    let deletes = listed
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .map(|name| {
            let pods = pods.clone();
            async move {
                pods.delete(&name, &DeleteParams::default().grace_period(0))
                    .await
                    .map(|_| ())
            }
        });
    futures::future::try_join_all(deletes).await?;
    let start = Instant::now();
    while !pods
        .list(&ListParams::default().labels(LABEL))
        .await?
        .items
        .is_empty()
    {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(300),
            "the bench's pods were not removed within 300 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// A process's proportional and private memory in KiB (`smaps_rollup`): what it costs
/// beyond the pages it shares with the others running the same binary.
fn pss_private(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Some((
        field("Pss:"),
        field("Private_Clean:") + field("Private_Dirty:"),
    ))
}

/// CPU ticks (user + system) and RSS in KiB of a process.
fn usage(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())?;
    Some((ticks, rss))
}

/// The pids of the node's live shims, from their containers' `state.json`.
fn shims(state_dir: &std::path::Path) -> Vec<u32> {
    std::fs::read_dir(state_dir.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.path().join("exit.json").exists())
        .filter_map(|e| {
            let state: Value =
                serde_json::from_slice(&std::fs::read(e.path().join("state.json")).ok()?).ok()?;
            let pid = u32::try_from(state["shimPid"].as_u64()?).ok()?;
            std::path::Path::new(&format!("/proc/{pid}"))
                .exists()
                .then_some(pid)
        })
        .collect()
}

/// A process's read calls and bytes read so far (`/proc/<pid>/io`).
fn reads(pid: u32) -> Option<(u64, u64)> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some((field("syscr:")?, field("rchar:")?))
}

/// The agent's and its shims' CPU (% of one core) over [`IDLE_WINDOW`], and memory.
async fn idle(agent: u32, state_dir: &std::path::Path) -> anyhow::Result<Value> {
    let hz = 100.0; // USER_HZ on Linux
    let procs = |pids: &[u32]| -> (u64, u64) {
        pids.iter()
            .filter_map(|p| usage(*p))
            .fold((0, 0), |(t, r), (t2, r2)| (t + t2, r + r2))
    };
    let shim_pids = shims(state_dir);
    let (a0, _) = usage(agent).ok_or_else(|| anyhow::anyhow!("agent {agent} is gone"))?;
    let (s0, _) = procs(&shim_pids);
    let r0 = reads(agent).unwrap_or_default();
    tokio::time::sleep(IDLE_WINDOW).await;
    let r1 = reads(agent).unwrap_or_default();
    let (a1, agent_rss) = usage(agent).ok_or_else(|| anyhow::anyhow!("agent {agent} is gone"))?;
    let (s1, shims_rss) = procs(&shim_pids);
    let pct = |ticks: u64| ticks as f64 / hz / IDLE_WINDOW.as_secs_f64() * 100.0;
    let n = shim_pids.len().max(1) as f64;
    let per_shim = shims_rss as f64 / n / 1024.0;
    let (pss, private) = shim_pids
        .iter()
        .filter_map(|p| pss_private(*p))
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
    let on_disk = |d: &str| {
        std::fs::read_dir(state_dir.join(d))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    Ok(json!({
        "pods_on_disk": on_disk("pods"),
        "containers_on_disk": on_disk("containers"),
        "agent_cpu_percent": pct(a1 - a0),
        "agent_read_calls_per_s": (r1.0.saturating_sub(r0.0)) as f64 / IDLE_WINDOW.as_secs_f64(),
        "agent_read_kib_per_s": (r1.1.saturating_sub(r0.1)) as f64 / 1024.0 / IDLE_WINDOW.as_secs_f64(),
        "shims_cpu_percent": pct(s1.saturating_sub(s0)),
        "agent_rss_mib": agent_rss as f64 / 1024.0,
        "shims": shim_pids.len(),
        "rss_per_shim_mib": per_shim,
        "pss_per_shim_mib": pss as f64 / n / 1024.0,
        "private_per_shim_mib": private as f64 / n / 1024.0,
    }))
}

/// The `p`th percentile of sorted latencies, in milliseconds.
fn ms_at(sorted: &[Duration], p: usize) -> f64 {
    crate::percentile(sorted, p).as_secs_f64() * 1000.0
}

/// Runs the benchmark; prints a summary and returns the figures.
pub fn run() -> anyhow::Result<Value> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(measure())
}

async fn measure() -> anyhow::Result<Value> {
    let one = OneNode::start("bench", "b1", Network::Loopback(&["--max-pods", "260"])).await?;
    let control_plane = if one.cluster.in_memory().is_some() {
        "in-memory (kit)"
    } else {
        "real (KUBEBUILDER_ASSETS)"
    };
    let node = &one.node;
    let agent = node
        .kernlet_pid()
        .ok_or_else(|| anyhow::anyhow!("the node's kernlet is not running"))?;
    let pods = one.pods.clone();
    let (seen, watch) = watch_running(pods.clone());
    let idle_0 = idle(agent, &node.dir("state")).await?;

    let mut sequential = Vec::new();
    for i in 0..20 {
        let name = format!("seq-{i}");
        let t0 = Instant::now();
        one.create_bound(&pod(&name)?).await?;
        let t = wait_running(&seen, &name, Duration::from_secs(60)).await?;
        let running = t.running.unwrap_or(t.first);
        sequential.push((running.duration_since(t.first), running.duration_since(t0)));
    }
    delete_all(&pods).await?;
    sequential.sort();
    let created: Vec<Duration> = {
        let mut v: Vec<Duration> = sequential.iter().map(|s| s.1).collect();
        v.sort();
        v
    };
    let sequential: Vec<Duration> = sequential.iter().map(|s| s.0).collect();

    let admin = one.pods.clone().into_client();
    let before = api_requests(&admin).await;
    let burst_110 = burst(&one, &seen, "burst", 0..110, pod).await?;
    let requests = per_pod(&before, &api_requests(&admin).await, 110.0);
    let mut out = json!({
        "control_plane": control_plane,
        "sequential_20": {"p50_ms": ms_at(&sequential, 50), "p90_ms": ms_at(&sequential, 90),
                          "max_ms": ms_at(&sequential, 100),
                          "from_create_call_p50_ms": ms_at(&created, 50)},
        "burst_110": {"p50_ms": ms_at(&burst_110.per_pod, 50),
                      "p99_ms": ms_at(&burst_110.per_pod, 99),
                      "since_burst_start_p50_ms": ms_at(&burst_110.since_start, 50),
                      "since_burst_start_p99_ms": ms_at(&burst_110.since_start, 99),
                      "all_running_ms": ms_at(&burst_110.since_start, 100),
                      "apiserver_requests_per_pod": requests},
        "idle_0_pods": idle_0,
    });
    // `KERNLET_BENCH_PODS_QUICK=1`: start latencies only (for profiling a burst).
    if std::env::var_os("KERNLET_BENCH_PODS_QUICK").is_some() {
        delete_all(&pods).await?;
        watch.abort();
        println!(
            "pods ({control_plane}): {}",
            serde_json::to_string_pretty(&out)?
        );
        return Ok(out);
    }
    tokio::time::sleep(SETTLE).await;
    out["idle_110_pods"] = idle(agent, &node.dir("state")).await?;
    burst(&one, &seen, "burst", 110..250, pod).await?;
    tokio::time::sleep(SETTLE).await;
    out["idle_250_pods"] = idle(agent, &node.dir("state")).await?;
    delete_all(&pods).await?;
    burst(&one, &seen, "probed", 0..110, probed_pod).await?;
    // Every probe has run at least once before the sampling.
    tokio::time::sleep(Duration::from_secs(15)).await;
    out["probed_110_pods"] = idle(agent, &node.dir("state")).await?;
    delete_all(&pods).await?;
    watch.abort();

    println!(
        "pods ({control_plane}): {}",
        serde_json::to_string_pretty(&out)?
    );
    Ok(out)
}

//! Memory-pressure eviction with real cgroup v2 memory accounting: a second kernlet,
//! joined to the test kit's in-memory control plane inside the VM, runs a Guaranteed
//! pod, a Burstable pod over its request and a BestEffort pod that fills a memory-
//! backed emptyDir past `memory.available`; the BestEffort pod is evicted as kubelet
//! evicts it, the others run on, and MemoryPressure clears after the transition period.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kernlet_tests::cluster::Cluster;
use kube::api::{Api, PostParams};

const MI: u64 = 1 << 20;

/// `memory.available` as kubelet computes it, from /proc/meminfo.
fn memory_available() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = kernlet::sys::stats::parse_meminfo(&text);
    kernlet::sys::stats::memory_available(&mem).0
}

/// Ends the kernlet it holds when dropped.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(kubeconfig: &Path, threshold_mib: u64) -> Result<Agent, String> {
    let log = std::fs::File::create("/var/log/kernlet-api.log").map_err(|e| e.to_string())?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    let hard = format!("memory.available<{threshold_mib}Mi");
    Command::new("/bin/kernlet")
        .arg("run")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "--node-name",
            "vm",
            "--node-ip",
            "127.0.0.1",
            "--state-dir",
            "/var/lib/kernlet-api",
            "--run-dir",
            "/run/kernlet-api",
            "--log-dir",
            "/var/log/pods-api",
            "--image-dir",
            "/images",
            "--cgroup-root",
            "kernlet-api",
            "--bpffs-dir",
            "/sys/fs/bpf/kernlet-api",
            "--port",
            "10260",
            "--healthz-port",
            "0",
            "--eviction-hard",
            &hard,
            "--eviction-monitoring-period-seconds",
            "1",
            "--eviction-pressure-transition-period",
            "5s",
            "--node-status-update-frequency",
            "1",
            // The images are the standalone kernlet's too: never collected here.
            "--image-gc-high-threshold",
            "100",
            "--image-gc-low-threshold",
            "99",
        ])
        .stdout(log)
        .stderr(err)
        .spawn()
        .map(Agent)
        .map_err(|e| format!("starting the joined kernlet: {e}"))
}

fn pod(name: &str, qos: serde_json::Value, command: &str, volume_mib: u64) -> Pod {
    let mut c = serde_json::json!({"name": name, "image": "busybox:1.36",
        "command": ["sh", "-c", command]});
    if !qos.is_null() {
        c["resources"] = qos;
    }
    let mut spec = serde_json::json!({
        "nodeName": "vm", "hostNetwork": true, "terminationGracePeriodSeconds": 1,
        "containers": [c],
    });
    if volume_mib > 0 {
        spec["volumes"] = serde_json::json!([{"name": "mem",
            "emptyDir": {"medium": "Memory", "sizeLimit": format!("{volume_mib}Mi")}}]);
        spec["containers"][0]["volumeMounts"] =
            serde_json::json!([{"name": "mem", "mountPath": "/mem"}]);
    }
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec}))
        .unwrap_or_default()
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

async fn wait<T>(
    what: &str,
    within: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> Result<T, String> {
    let start = std::time::Instant::now();
    while start.elapsed() < within {
        if let Some(v) = f().await {
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!("{what}: not within {within:?}"))
}

async fn pressure(nodes: &Api<Node>, want: &str) -> Option<()> {
    let n = nodes.get("vm").await.ok()?;
    n.status?
        .conditions?
        .iter()
        .any(|c| c.type_ == "MemoryPressure" && c.status == want)
        .then_some(())
}

async fn check() -> Result<(), String> {
    let e = |e: anyhow::Error| e.to_string();
    let cluster = Cluster::start(&[]).await.map_err(e)?;
    let kubeconfig = Path::new("/var/lib/kernlet-api.kubeconfig");
    cluster
        .kubeconfig_at(
            &cluster.url(),
            "system:node:vm",
            &["system:nodes"],
            kubeconfig,
        )
        .map_err(e)?;
    // 250 MiB below what is free now: the node's own processes and the quiet pods stay
    // above it, the hog's 400 MiB goes far below.
    let threshold_mib = (memory_available() / MI).saturating_sub(250);
    println!("KLTEST INFO eviction: memory.available threshold {threshold_mib} MiB");
    let _agent = start_agent(kubeconfig, threshold_mib)?;
    let admin = cluster.admin().await.map_err(e)?;
    let nodes: Api<Node> = Api::all(admin.clone());
    wait("the node registered", Duration::from_secs(60), async || {
        nodes.get_opt("vm").await.ok()?
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(admin, "default");
    let quiet = [
        pod(
            "guaranteed",
            serde_json::json!({"requests": {"cpu": "50m", "memory": "32Mi"},
                               "limits": {"cpu": "50m", "memory": "32Mi"}}),
            "sleep 3600",
            0,
        ),
        pod(
            "burstable",
            serde_json::json!({"requests": {"memory": "10Mi"}}),
            "dd if=/dev/zero of=/mem/f bs=1M count=40; sleep 3600",
            64,
        ),
    ];
    for p in &quiet {
        pods.create(&PostParams::default(), p)
            .await
            .map_err(|e| e.to_string())?;
    }
    for name in ["guaranteed", "burstable"] {
        wait(name, Duration::from_secs(90), async || {
            pods.get(name).await.ok().filter(|p| phase(p) == "Running")
        })
        .await?;
    }
    let hog = pod(
        "hog",
        serde_json::Value::Null,
        "dd if=/dev/zero of=/mem/f bs=1M count=400; sleep 3600",
        512,
    );
    pods.create(&PostParams::default(), &hog)
        .await
        .map_err(|e| e.to_string())?;
    wait("MemoryPressure True", Duration::from_secs(90), async || {
        pressure(&nodes, "True").await
    })
    .await?;
    let evicted = wait("the hog evicted", Duration::from_secs(90), async || {
        pods.get("hog").await.ok().filter(|p| phase(p) == "Failed")
    })
    .await?;
    let s = evicted.status.clone().unwrap_or_default();
    let message = s.message.clone().unwrap_or_default();
    let prefix = format!(
        "The node was low on resource: memory. Threshold quantity: {threshold_mib}Mi, available: "
    );
    if s.reason.as_deref() != Some("Evicted")
        || !message.starts_with(&prefix)
        || !message.contains("Container hog was using ")
        || !message.ends_with(", request is 0, has larger consumption of memory. ")
    {
        return Err(format!("the hog's status: {s:?}"));
    }
    let disruption = s.conditions.iter().flatten().any(|c| {
        c.type_ == "DisruptionTarget" && c.reason.as_deref() == Some("TerminationByKubelet")
    });
    if !disruption {
        return Err(format!("no DisruptionTarget condition: {s:?}"));
    }
    println!("KLTEST INFO eviction: {message}");
    // Its memory freed (processes gone, its memory-backed volume unmounted), the node
    // recovers; the others were never touched.
    wait(
        "MemoryPressure False",
        Duration::from_secs(60),
        async || pressure(&nodes, "False").await,
    )
    .await?;
    for name in ["guaranteed", "burstable"] {
        let p = pods.get(name).await.map_err(|e| e.to_string())?;
        if phase(&p) != "Running" {
            return Err(format!("{name} is {}: {:?}", phase(&p), p.status));
        }
    }
    Ok(())
}

/// The check, on a runtime of its own.
pub fn memory_pressure_evicts_the_besteffort_hog() -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let out = rt.block_on(check());
    if out.is_err() {
        for line in std::fs::read_to_string("/var/log/kernlet-api.log")
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.contains("kernlet::eviction"))
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            println!("KLTEST LOG api: {line}");
        }
    }
    out
}

//! `cargo xtask bench rollout`: requests failed during a rolling update under load,
//! with kernlet's termination barrier and without it. A stock control plane
//! (`KUBEBUILDER_ASSETS`: its scheduler and its Deployment and EndpointSlice
//! controllers) rolls a 10-replica Deployment of HTTP servers that exit at once on
//! SIGTERM, each on its own kernlet node (one `--termination-barrier 0`, one with the
//! default), while a client on the node sends requests through the Service's ClusterIP
//! on fresh connections. Without `KUBEBUILDER_ASSETS` (the kit has no Deployment
//! controller) the report says it was skipped.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::overlay::{apply_node_rbac, start_overlay_node};
use crate::simnode::{BRIDGE_IP, Lab, SimNode};

const REPLICAS: i32 = 10;
/// The longest a rollout may take before the bench gives up.
const ROLLOUT_LIMIT: Duration = Duration::from_secs(240);

/// HTTP requests on fresh connections from 2 threads, each a request every 2 ms or so,
/// until the stop file appears (at most `seconds`); counts and the kinds of failure.
const LOAD: &str = r#"
import json, os, socket, sys, threading, time
ip, seconds, stop = sys.argv[1], float(sys.argv[2]), sys.argv[3]
end = time.time() + seconds
lock = threading.Lock()
res = {"ok": 0, "failed": 0, "errors": {}}
def one():
    try:
        s = socket.create_connection((ip, 80), timeout=2)
        s.settimeout(2)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            d = s.recv(4096)
            if not d:
                break
            data += d
        s.close()
        line = data.split(b"\r\n", 1)[0]
        return None if b" 200 " in line + b" " else "status " + line.decode(errors="replace")[:40]
    except OSError as e:
        return type(e).__name__
def worker():
    while time.time() < end and not os.path.exists(stop):
        err = one()
        with lock:
            if err is None:
                res["ok"] += 1
            else:
                res["failed"] += 1
                res["errors"][err] = res["errors"].get(err, 0) + 1
        time.sleep(0.002)
ts = [threading.Thread(target=worker) for _ in range(2)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(res), flush=True)
"#;

/// The report: the figures of both runs, or why none ran.
pub fn run() -> anyhow::Result<Value> {
    if std::env::var_os("KUBEBUILDER_ASSETS").is_none() {
        let why = "skipped: needs a stock control plane (KUBEBUILDER_ASSETS with etcd, \
                   kube-apiserver, kube-controller-manager, kube-scheduler) for its \
                   Deployment and EndpointSlice controllers";
        println!("rollout: {why}");
        return Ok(json!({"skipped": why}));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(rollouts())
}

async fn rollouts() -> anyhow::Result<Value> {
    let cluster = Cluster::start_scheduled(&[BRIDGE_IP.into()]).await?;
    let mut lab = Lab::new("brol")?;
    let fwd = lab.forward(0, cluster.addr())?;
    apply_node_rbac(&cluster)?;
    let mut results = serde_json::Map::new();
    for (i, (name, barrier)) in [("without-barrier", "0"), ("with-barrier", "5")]
        .into_iter()
        .enumerate()
    {
        let mut node = lab.add_node(&format!("r{i}"))?;
        node.import_busybox()?;
        let cg = node.cgroup().display().to_string();
        let flags = [
            "--service-proxy",
            "--service-cgroup",
            &cg,
            "--termination-barrier",
            barrier,
        ];
        start_overlay_node(&cluster, &fwd.url, &mut node, i as u8 + 1, &flags).await?;
        let r = rollout(&cluster, &node, &format!("roll{i}")).await?;
        println!("rollout {name}: {r}");
        results.insert(name.to_string(), r);
    }
    Ok(Value::Object(results))
}

/// Runs a Deployment `app` on `node`, rolls it under load and reports the load's figures.
async fn rollout(cluster: &Cluster, node: &SimNode, app: &str) -> anyhow::Result<Value> {
    let admin = cluster.admin().await?;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "default");
    let services: Api<Service> = Api::namespaced(admin.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    deployments
        .create(&PostParams::default(), &deployment(app, &node.name)?)
        .await?;
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": app},
        "spec": {"selector": {"app": app}, "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    }))?;
    let ip = services
        .create(&PostParams::default(), &svc)
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap_or_default();
    rolled_out(&deployments, &pods, app).await?;
    let netns = std::path::PathBuf::from(format!("/run/netns/{}", node.netns));
    let cgroup = node.cgroup().join("bench-client");
    let stop = std::env::temp_dir().join(format!("kltest-{}-{app}.stop", std::process::id()));
    let _ = std::fs::remove_file(&stop);
    let load = crate::python_in(&cgroup, &netns, LOAD)?
        .args([ip.as_str(), &ROLLOUT_LIMIT.as_secs().to_string()])
        .arg(&stop)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    // A steady state first, then the rollout (kubectl rollout restart's patch).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    deployments
        .patch(
            app,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
                "kubectl.kubernetes.io/restartedAt": now}}}}})),
        )
        .await?;
    let done = rolled_out(&deployments, &pods, app).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::write(&stop, b"")?;
    let out = load.wait_with_output()?;
    let _ = std::fs::remove_file(&stop);
    done?;
    let mut figures: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| anyhow::anyhow!("the load client's report: {e}"))?;
    figures["rollout_s"] = json!(took.as_secs_f64());
    deployments.delete(app, &Default::default()).await?;
    Ok(figures)
}

/// The Deployment: `REPLICAS` busybox HTTP servers on `node` that exit at once on
/// SIGTERM, ready once they answer.
fn deployment(app: &str, node: &str) -> anyhow::Result<Deployment> {
    let script = "mkdir -p /www && hostname > /www/index.html && \
                  httpd -f -p 8080 -h /www & pid=$!; trap 'kill $pid; exit 0' TERM; wait";
    Ok(serde_json::from_value(json!({
        "metadata": {"name": app},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": {"app": app}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": "web", "image": "busybox:1.36", "imagePullPolicy": "Never",
                        "command": ["sh", "-c", script],
                        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                    }],
                },
            },
        },
    }))?)
}

/// Waits until the Deployment's newest template runs `REPLICAS` available pods and
/// nothing else of it is left (old pods gone, not only terminating).
async fn rolled_out(
    deployments: &Api<Deployment>,
    pods: &Api<Pod>,
    app: &str,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let d = deployments.get(app).await?;
        let generation = d.metadata.generation.unwrap_or(0);
        let s = d.status.unwrap_or_default();
        let listed = pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await?
            .items
            .len();
        if s.observed_generation.unwrap_or(0) >= generation
            && s.updated_replicas == Some(REPLICAS)
            && s.available_replicas == Some(REPLICAS)
            && s.replicas == Some(REPLICAS)
            && listed == REPLICAS as usize
        {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < ROLLOUT_LIMIT,
            "the Deployment {app} did not roll out within {ROLLOUT_LIMIT:?}: {s:?}, {listed} pods"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

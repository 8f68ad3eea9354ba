//! Overlay labs: kernlet nodes started with `--cluster-cidr`, their pod CIDRs assigned
//! as the controller-manager's node IPAM would (`10.244.<n>.0/24`), and pods on them
//! whose network namespaces a test or benchmark can enter.

use std::net::Ipv4Addr;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::cluster::Cluster;
use crate::simnode::SimNode;

/// The cluster CIDR of overlay labs.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// Runs `f` on a thread inside the network namespace at `netns`; what it creates
/// (sockets) stays in that namespace.
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let ns = std::fs::File::open(netns).with_context(|| format!("open {}", netns.display()))?;
    std::thread::spawn(move || -> anyhow::Result<T> {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread in the namespace panicked"))?
}

/// Applies `deploy/rbac.yaml` with kubectl (nodes may then watch all Nodes).
pub fn apply_node_rbac(cluster: &Cluster) -> anyhow::Result<()> {
    let rbac = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rbac.yaml");
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster.admin_kubeconfig()?)
        .args(["apply", "-f"])
        .arg(&rbac)
        .output()?;
    if !out.status.success() {
        bail!("kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Starts kernlet on `node` with the overlay (`--cluster-cidr`, resync every second)
/// against the control plane at `url`, waits for its Node and gives it pod CIDR
/// `10.244.<index>.0/24`.
pub async fn start_overlay_node(
    cluster: &Cluster,
    url: &str,
    node: &mut SimNode,
    index: u8,
    extra: &[&str],
) -> anyhow::Result<()> {
    let mut args = vec![
        "--node-lease-renew-interval-ms",
        "1000",
        "--cluster-cidr",
        CLUSTER_CIDR,
        "--overlay-resync",
        "1",
    ];
    args.extend_from_slice(extra);
    node.start_agent(cluster, url, &args)?;
    let name = node.name.clone();
    let api: Api<Node> = Api::all(cluster.admin().await?);
    let start = Instant::now();
    while api.get_opt(&name).await?.is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("node {name} never registered\n{}", node.kernlet_log());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cidr = format!("10.244.{index}.0/24");
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})),
    )
    .await?;
    Ok(())
}

/// A busybox pod that only sleeps, bound to `node`, once running: its IP and the pin of
/// its network namespace.
pub async fn sleeping_pod(
    cluster: &Cluster,
    pods: &Api<Pod>,
    node: &SimNode,
    name: &str,
) -> anyhow::Result<(Ipv4Addr, PathBuf)> {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [
            {"name": "c", "image": "busybox:1.36", "command": ["sleep", "3600"]}]},
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    cluster.bind_pod("default", name, &node.name).await?;
    let start = Instant::now();
    loop {
        let p = pods.get(name).await?;
        let status = p.status.clone().unwrap_or_default();
        if status.phase.as_deref() == Some("Running")
            && let Some(ip) = status.pod_ip.as_deref()
        {
            let uid = p.metadata.uid.clone().unwrap_or_default();
            let netns = node.dir("run").join("pods").join(uid).join("ns/net");
            return Ok((ip.parse()?, netns));
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "pod {name} never ran with an IP: {status:?}\n{}",
                node.kernlet_log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

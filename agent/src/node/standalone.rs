//! `kernlet run --standalone`: the pods of a manifest directory, without an apiserver.

use std::net::IpAddr;
use std::path::PathBuf;

use super::args::NodeArgs;
use super::prepare::runtime_config;

/// Runs the pods of `manifests` (default `/etc/kernlet/manifests`) until SIGTERM.
pub fn run_standalone(manifests: Option<PathBuf>, node: &NodeArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let manifests = manifests.unwrap_or_else(|| PathBuf::from("/etc/kernlet/manifests"));
    let plans = crate::podworker::plan(&manifests)?;
    let rt = crate::runtime::Runtime::open(runtime_config(node)?)?;
    let rt_for_gc = rt.clone();
    let rt_for_cri = rt.clone();
    let cri_socket = super::prepare::cri_socket(node)?;
    let exe = crate::runtime::sealed_exe::path(&node.dirs.state_dir);
    let node_ip = node
        .node_ip
        .as_ref()
        .map(|ips| ips.0[0])
        .or_else(|| crate::sys::machine::default_route_ipv4().map(IpAddr::V4))
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    if let Some(cidr) = node.pod_cidr {
        let net = crate::runtime::network::PodNetwork {
            cidr,
            bridge: node.bridge.clone(),
            mtu: crate::runtime::network::mtu_of(node_ip).unwrap_or(1500),
        };
        rt.set_network(crate::runtime::network::NetworkState::Ready(net))?;
    }
    tracing::info!(
        manifests = %manifests.display(),
        pods = plans.len(),
        cgroup = %rt.cgroup_root.display(),
        "kernlet standalone: running the pods of the manifest directory"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let runner = crate::podworker::Runner::new(
        rt,
        crate::podworker::Source::Manifests(manifests.clone()),
        node_ip.to_string(),
        Default::default(),
    );
    let flag = Arc::clone(&stop);
    let worker = std::thread::spawn(move || runner.run(&flag));
    let (gc_policy, gc_period) = super::prepare::image_gc(node)?;
    let (gc_rt, gc_stop) = (rt_for_gc, Arc::clone(&stop));
    let collector = Arc::new(std::sync::Mutex::new(
        crate::runtime::image_gc::ImageGc::new(gc_policy),
    ));
    std::thread::spawn(move || {
        crate::runtime::image_gc::run(gc_rt, collector, gc_period, &gc_stop)
    });
    let run_dir = node.dirs.run_dir.clone();
    super::tokio_runtime()?.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        super::run::spawn_cri(cri_socket, rt_for_cri, Vec::new(), exe, stop_rx.clone());
        let node = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "standalone".into());
        let socket = tokio::spawn(async move {
            if let Err(e) = crate::daemon::serve(run_dir.clone(), node, stop_rx).await {
                tracing::warn!(
                    "the CLI socket {} is not served: {e}",
                    crate::daemon::socket_path(&run_dir).display()
                );
            }
        });
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping; pods keep running"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping; pods keep running"),
        }
        let _ = stop_tx.send(true);
        let _ = socket.await;
        anyhow::Ok(())
    })?;
    stop.store(true, Ordering::Relaxed);
    let _ = worker.join();
    crate::runtime::sealed_exe::remove(&node.dirs.state_dir);
    tracing::info!("kernlet stopped");
    Ok(())
}

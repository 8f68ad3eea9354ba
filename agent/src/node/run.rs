//! A node's wiring: the pod manager, the node's status and Lease, the kubelet API, the
//! overlay and the Service datapath, started from a prepared node and stopped on
//! SIGTERM (pods keep running).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use super::prepare::{PreparedNode, apply_cluster_settings, kubeconfig_ca};
use crate::controllers::node::NodeController;
use crate::model::node::{self, Readiness};

pub async fn run_node(kubeconfig: PathBuf, node: PreparedNode) -> anyhow::Result<()> {
    // Not Ready until the pod runtime is open and running the node's pods.
    let readiness = Readiness {
        ready: false,
        reason: "KubeletNotReady".into(),
        message: "container runtime is starting".into(),
    };
    let text = std::fs::read_to_string(&kubeconfig)
        .with_context(|| format!("cannot read --kubeconfig {}", kubeconfig.display()))?;
    let client = crate::client::from_kubeconfig_text(&text)
        .await
        .map_err(|e| anyhow::anyhow!("--kubeconfig {} is not usable: {e}", kubeconfig.display()))?;
    let apiserver_minor =
        match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
            Ok(Ok(v)) => v.minor.trim_end_matches('+').parse::<u32>().ok(),
            _ => None,
        };
    let client = crate::client::SharedClient::new(client);
    let PreparedNode {
        mut cfg,
        state_dir,
        timing,
        runtime,
        pod_timing,
        static_pods,
        overlay,
        mut api,
        client_ca_file,
        services,
        overrides,
        image_gc,
        eviction,
        shutdown,
        cri_socket,
        kubelet_dir,
    } = node;
    let mut runtime = runtime;
    apply_cluster_settings(&state_dir, &overrides, &mut runtime, &mut api);
    cfg.apiserver_minor = apiserver_minor;
    api.client_ca_pem = match &client_ca_file {
        Some(f) => std::fs::read(f)
            .with_context(|| format!("cannot read --client-ca-file {}", f.display()))?,
        None => kubeconfig_ca(&text, &kubeconfig).with_context(|| {
            format!(
                "the kubeconfig {} names no cluster CA for the kubelet API's client certificates; pass --client-ca-file",
                kubeconfig.display()
            )
        })?,
    };
    tracing::info!(node = %cfg.name, ip = %cfg.internal_ip, "kernlet starting");
    let access_client = client.get();
    tokio::spawn(async move {
        use crate::controllers::permissions;
        match permissions::missing(access_client).await {
            Ok(missing) if missing.is_empty() => {
                tracing::info!(
                    "permissions for the overlay and Service load-balancing are in place"
                )
            }
            Ok(missing) => tracing::warn!("{}", permissions::advice(&missing)),
            Err(e) => tracing::warn!(
                "cannot check this node's permissions (SelfSubjectAccessReview): {e}"
            ),
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // The node's readiness, combined from the subsystems' below.
    let (readiness_tx, readiness_rx) = tokio::sync::watch::channel(readiness);

    // The pods bound to this node: a watch feeds the pod worker (a thread of its own;
    // the runtime's operations block), which writes status back through a task.
    let runtime_run_dir = runtime.run_dir.clone();
    let runtime_state_dir = runtime.state_dir.clone();
    let mut rt =
        tokio::task::spawn_blocking(move || crate::runtime::Runtime::open(runtime)).await??;
    // kubelet's root directory is a shared mount, so that a CSI node plugin's mounts
    // (Bidirectional) reach the node.
    if let Err(e) = std::fs::create_dir_all(&kubelet_dir)
        .and_then(|()| crate::sys::mount::make_rshared(&kubelet_dir))
        .inspect(|&made| {
            if made {
                tracing::info!(dir = %kubelet_dir.display(), "made the kubelet directory a shared mount");
            }
        })
    {
        tracing::warn!(dir = %kubelet_dir.display(), "cannot make the kubelet directory a shared mount (Bidirectional volume mounts below it will be refused): {e}");
    }
    // CSI: drivers register through the plugin watcher; their volumes are published
    // by the pod workers and torn down with their pods.
    let csi = crate::csi::Csi {
        drivers: crate::csi::Drivers::default(),
        kubelet_dir: kubelet_dir.clone(),
        state_dir: state_dir.clone(),
        node: cfg.name.clone(),
        client: client.clone(),
        handle: tokio::runtime::Handle::current(),
        teardowns: Default::default(),
    };
    rt.driver_volumes = Some(std::sync::Arc::new(csi.clone()));
    tokio::spawn(crate::csi::stats::collect(
        csi.clone(),
        Duration::from_secs(10),
        stop_rx.clone(),
    ));
    tokio::spawn(crate::csi::registry::watch(
        csi.drivers.clone(),
        client.clone(),
        cfg.name.clone(),
        kubelet_dir,
        stop_rx.clone(),
    ));
    let overlay_rt = rt.clone();
    let node_images = rt.images.clone();
    let gc_rt = rt.clone();
    spawn_cri(
        cri_socket,
        rt.clone(),
        cfg.runtime_handlers.clone(),
        api.exe.clone(),
        stop_rx.clone(),
    );
    let eviction_rt = rt.clone();
    let pressure = crate::model::eviction::SharedPressure::default();
    let node_labels = crate::model::admission::NodeLabels::new(
        node::registration(&cfg).metadata.labels.unwrap_or_default(),
    );
    tokio::spawn(crate::controllers::node_labels::keep(
        client.clone(),
        cfg.name.clone(),
        node_labels.clone(),
        stop_rx.clone(),
    ));
    let evictions = crate::podworker::Evictions::default();
    let shutting_down = crate::model::admission::ShuttingDown::default();
    let image_collector: crate::runtime::image_gc::SharedImageGc = std::sync::Arc::new(
        std::sync::Mutex::new(crate::runtime::image_gc::ImageGc::new(image_gc.0)),
    );
    let (recorder, events_rx) = crate::controllers::events::Recorder::new();
    let node_side = crate::eviction::node::RealNode {
        rt: eviction_rt,
        image_gc: std::sync::Arc::clone(&image_collector),
        evictions: evictions.clone(),
        events: Some((recorder.clone(), cfg.name.clone())),
    };
    let snapshot: crate::controllers::pods::Snapshot = Default::default();
    let changes = crate::controllers::pods::Changes::default();
    let deleted: crate::controllers::pods::Deleted = Default::default();
    let (updates_tx, updates_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(crate::controllers::pods::watch_pods(
        client.clone(),
        cfg.name.clone(),
        (std::sync::Arc::clone(&snapshot), changes.clone()),
        std::sync::Arc::clone(&deleted),
        stop_rx.clone(),
    ));
    tokio::spawn(crate::controllers::pods::write_back(
        client.clone(),
        updates_rx,
        stop_rx.clone(),
    ));
    let service_links = crate::controllers::service_links::ServiceLinks::default();
    tokio::spawn(crate::controllers::service_links::watch_services(
        client.clone(),
        service_links.clone(),
        stop_rx.clone(),
    ));
    let runtime_classes = crate::controllers::runtime_classes::RuntimeClasses::default();
    tokio::spawn(crate::controllers::runtime_classes::watch_runtime_classes(
        client.clone(),
        runtime_classes.clone(),
        stop_rx.clone(),
    ));
    tokio::spawn(crate::controllers::events::run(
        client.clone(),
        cfg.name.clone(),
        events_rx,
        stop_rx.clone(),
    ));
    // The termination barrier between the Service datapath and the pod workers.
    let barrier = services
        .as_ref()
        .filter(|s| !s.termination_barrier.is_zero())
        .map(|s| {
            (
                crate::controllers::endpoint_barrier::EndpointBarrier::default(),
                s.termination_barrier,
            )
        });
    let worker_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let runner = crate::podworker::Runner::new(
            rt,
            crate::podworker::Source::Api {
                snapshot,
                changes,
                deleted,
                updates: updates_tx,
                client: client.clone(),
                handle: tokio::runtime::Handle::current(),
                services: service_links,
                runtime_classes,
                csi,
            },
            cfg.internal_ip.to_string(),
            pod_timing,
        )
        .with_events(recorder)
        .with_evictions(evictions.clone())
        .with_termination_barrier_opt(barrier.clone())
        .with_static_pods_opt(static_pods, cfg.name.clone())
        .with_node_fit({
            let facts = crate::sys::machine::read(&state_dir);
            let (cpu, mem) = node::allocatable_cpu_memory(&facts, cfg.reserved, &cfg.eviction_hard);
            crate::model::admission::NodeFit {
                name: cfg.name.clone(),
                allocatable_cpu_milli: cpu,
                allocatable_memory: mem,
                max_pods: u64::from(cfg.max_pods),
                runtime_handlers: cfg.runtime_handlers.clone(),
                lsm: crate::sys::lsm::support(),
                user_namespaces: cfg.user_namespaces,
                labels: node_labels.clone(),
                pressure: pressure.clone(),
                shutting_down: shutting_down.clone(),
            }
        });
        let flag = std::sync::Arc::clone(&worker_stop);
        let gc_stop = std::sync::Arc::clone(&worker_stop);
        let collector = std::sync::Arc::clone(&image_collector);
        std::thread::spawn(move || {
            crate::runtime::image_gc::run(gc_rt, collector, image_gc.1, &gc_stop)
        });
        let (thresholds, transition, settings) = eviction;
        let manager = crate::eviction::Manager::new(
            node_side.clone(),
            crate::model::eviction::decide::Decider::new(thresholds, transition),
            settings,
            pressure.clone(),
        );
        let eviction_stop = std::sync::Arc::clone(&worker_stop);
        std::thread::Builder::new()
            .name("eviction".into())
            .spawn(move || manager.run(&eviction_stop))
            .context("starting the eviction manager")?;
        std::thread::spawn(move || runner.run(&flag))
    };
    // The node is Ready when the runtime (open by now) and every subsystem that runs —
    // the pod network, the Service datapath — report ready; the first that is not
    // gives the reason.
    let mut parts = Vec::new();
    // Not ready once the node shuts down.
    let (shutdown_ready, rx) = tokio::sync::watch::channel(Readiness {
        ready: true,
        reason: "KubeletReady".into(),
        message: String::new(),
    });
    parts.push(rx);
    if let Some(overlay) = overlay {
        let (tx, rx) = tokio::sync::watch::channel(Readiness {
            ready: false,
            reason: "KubeletNotReady".into(),
            message: "the pod network is starting".into(),
        });
        parts.push(rx);
        tokio::spawn(crate::controllers::overlay::run(
            client.clone(),
            overlay,
            overlay_rt,
            tx,
            stop_rx.clone(),
        ));
    }
    {
        let (run_dir, node, stop) = (runtime_run_dir.clone(), cfg.name.clone(), stop_rx.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::daemon::serve(run_dir.clone(), node, stop).await {
                tracing::warn!(
                    "the CLI socket {} is not served: {e}",
                    crate::daemon::socket_path(&run_dir).display()
                );
            }
        });
    }
    if let Some(services) = services {
        let (tx, rx) = tokio::sync::watch::channel(Readiness {
            ready: false,
            reason: "KubeletNotReady".into(),
            message: "the Service datapath is starting".into(),
        });
        parts.push(rx);
        tokio::spawn(crate::controllers::services::run(
            client.clone(),
            services,
            tx,
            barrier.map(|b| b.0),
            stop_rx.clone(),
        ));
    }
    tokio::spawn(async move {
        loop {
            let not_ready = parts.iter().map(|p| p.borrow().clone()).find(|r| !r.ready);
            readiness_tx.send_replace(not_ready.unwrap_or(Readiness {
                ready: true,
                reason: "KubeletReady".into(),
                message: "kubelet is posting ready status".into(),
            }));
            if parts.is_empty() {
                return;
            }
            let changed =
                futures::future::select_all(parts.iter_mut().map(|p| Box::pin(p.changed())));
            if changed.await.0.is_err() {
                return;
            }
        }
    });
    {
        let client = client.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::api::serve(api, client, stop).await {
                tracing::error!("the kubelet API is not served: {e}");
            }
        });
    }
    let rotation = crate::controllers::client_cert::ClientRotation {
        client: client.clone(),
        kubeconfig: kubeconfig.clone(),
        node: cfg.name.clone(),
        state_dir: state_dir.clone(),
    };
    tokio::spawn(rotation.run(stop_rx.clone()));
    let serving = crate::controllers::serving_cert::ServingCert {
        client: client.clone(),
        node: cfg.name.clone(),
        ips: cfg.node_ips(),
        state_dir: state_dir.clone(),
    };
    tokio::spawn(serving.run(stop_rx.clone()));
    let (access, cfg_name) = (client.clone(), cfg.name.clone());
    // The machine's own shutdown, through logind, when a grace period is set.
    let (groups, on_sigterm, logind) = shutdown;
    if !groups.is_empty() {
        tokio::spawn(super::logind::watch(
            logind,
            super::logind::Shutdown {
                client: client.clone(),
                node: cfg.name.clone(),
                side: node_side.clone(),
                groups: groups.clone(),
                shutting_down: shutting_down.clone(),
                readiness: shutdown_ready.clone(),
            },
            stop_rx.clone(),
        ));
    }
    let controller = tokio::spawn(
        NodeController::new(client, cfg, state_dir, readiness_rx, timing)
            .with_images(node_images)
            .with_pressure(pressure)
            .run(stop_rx),
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
    }
    let shut_down = on_sigterm && !groups.is_empty();
    if shut_down {
        super::shutdown::shut_down(
            &access,
            &cfg_name,
            node_side,
            groups,
            &shutting_down,
            &shutdown_ready,
        )
        .await;
    }
    let _ = stop_tx.send(true);
    worker_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = controller.await;
    let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    crate::runtime::sealed_exe::remove(&runtime_state_dir);
    if shut_down {
        tracing::info!("kernlet stopped; the node's pods were ended (graceful node shutdown)");
    } else {
        tracing::info!("kernlet stopped; its pods keep running");
    }
    Ok(())
}

/// Serves the CRI socket beside the node; the node runs on without it when it cannot.
pub fn spawn_cri(
    socket: PathBuf,
    rt: crate::runtime::Runtime,
    runtime_handlers: Vec<String>,
    exe: PathBuf,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        if let Err(e) = crate::cri::serve(&socket, rt, runtime_handlers, exe, stop).await {
            tracing::warn!("the CRI socket is not served (crictl will not reach this node): {e}");
        }
    });
}

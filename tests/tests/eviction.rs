//! Node-pressure eviction as kubelet's, on a SimNode whose state and image directories
//! share one small tmpfs (a node without a dedicated image filesystem): a pod over its
//! emptyDir `sizeLimit` is evicted on its own; a pod filling the disk past
//! `nodefs.available` first makes the node collect its unused image, then — that not
//! being enough — is evicted (the other pods untouched) with kubelet's status, message,
//! condition and event (the node's EvictionThresholdMet first); its emptyDir goes, and DiskPressure clears after the transition
//! period.

#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot go on should stop loudly"
)]

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kernlet_tests::cluster::Cluster;
use kernlet_tests::simnode::{BRIDGE_IP, Lab, SimNode, kernlet_bin};
use kernlet_tests::wait_for;
use kube::api::{Api, PostParams};

const MI: u64 = 1 << 20;

/// Mounts a tmpfs of `size` on `<node>/disk` and binds its `state` and `images`
/// directories on the node's: one filesystem for both (unmounted by the SimNode's
/// drop, and by the sweep if this process dies).
fn shared_disk(node: &SimNode, size: &str) {
    use nix::mount::{MsFlags, mount};
    let disk = node.dir("disk");
    std::fs::create_dir_all(&disk).unwrap();
    mount(
        Some("tmpfs"),
        &disk,
        Some("tmpfs"),
        MsFlags::empty(),
        Some(format!("size={size}").as_str()),
    )
    .unwrap();
    for d in ["state", "images"] {
        std::fs::create_dir_all(disk.join(d)).unwrap();
        std::fs::create_dir_all(node.dir(d)).unwrap();
        mount(
            Some(&disk.join(d)),
            &node.dir(d),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
    }
}

fn available(node: &SimNode) -> u64 {
    let s = nix::sys::statvfs::statvfs(&node.dir("state")).unwrap();
    s.blocks_available() * s.fragment_size()
}

fn images(node: &SimNode) -> Vec<String> {
    let out = Command::new(kernlet_bin().unwrap())
        .args(["image", "ls", "-o", "json", "--image-dir"])
        .arg(node.dir("images"))
        .output()
        .unwrap();
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.iter().map(|i| i.to_string()).collect()
}

fn pod(json: serde_json::Value) -> Pod {
    serde_json::from_value(json).unwrap()
}

fn condition(p: &Pod, t: &str) -> Option<k8s_openapi::api::core::v1::PodCondition> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == t)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_pressure_collects_images_then_evicts_the_largest_user() {
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("evict").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    let mut node = lab.add_node("e1").unwrap();
    shared_disk(&node, "160m");
    node.import_busybox().unwrap();
    // An image no pod uses, 24 MiB.
    let layout = node.dir("unused-layout");
    let big: Vec<u8> = (0..24 * MI).map(|i| (i % 251) as u8).collect();
    kernlet_tests::oci::write_layout(
        &layout,
        "1",
        &[kernlet_tests::oci::RawTar::new().file("big", &big).finish()],
        &["sh"],
    )
    .unwrap();
    node.import_layout(&layout, "example.com/unused:1").unwrap();
    drop(big);
    std::fs::remove_dir_all(&layout).ok();
    assert_eq!(images(&node).len(), 2);
    let before = available(&node);
    let unused_size = 24 * MI;
    // The threshold 40 MiB below what is free now; the writer fills past it by more
    // than the unused image frees.
    let threshold = (before - 40 * MI) / MI * MI;
    let write_mib = (40 * MI + unused_size + 24 * MI) / MI;
    assert!(write_mib * MI < before, "{before} bytes free");
    let hard = format!("nodefs.available<{}Mi", threshold / MI);
    start_agent(&cluster, &fwd.url, &mut node, &hard);
    let admin = cluster.admin().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let create = async |p: Pod| {
        let name = p.metadata.name.clone().unwrap();
        pods.create(&PostParams::default(), &p).await.unwrap();
        cluster.bind_pod("default", &name, "e1").await.unwrap();
    };
    create(pod(serde_json::json!({
        "metadata": {"name": "keeper"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c",
            "image": "busybox:1.36", "command": ["sleep", "3600"],
            "resources": {"requests": {"memory": "10Mi", "ephemeral-storage": "10Mi"}}}]},
    })))
    .await;
    // Over its emptyDir's sizeLimit: evicted on its own, without node pressure.
    create(pod(serde_json::json!({
        "metadata": {"name": "capped"},
        "spec": {"terminationGracePeriodSeconds": 30,
            "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "2Mi"}}],
            "containers": [{"name": "c", "image": "busybox:1.36",
                "command": ["sh", "-c", "dd if=/dev/zero of=/scratch/f bs=1M count=4; sleep 3600"],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}]},
    })))
    .await;
    let failed = async |name: &str| -> Option<Pod> {
        let p = pods.get(name).await.ok()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Failed")).then_some(p)
    };
    let capped = wait_for("capped evicted", Duration::from_secs(60), async || {
        failed("capped").await
    })
    .await;
    let s = capped.status.clone().unwrap();
    assert_eq!(s.reason.as_deref(), Some("Evicted"), "{s:#?}");
    assert_eq!(
        s.message.as_deref(),
        Some("Usage of EmptyDir volume \"scratch\" exceeds the limit \"2Mi\". ")
    );
    assert!(
        condition(&capped, "DisruptionTarget").is_none(),
        "a pod's own limit is no node disruption"
    );
    // The node fills: the writer goes, the keeper stays.
    create(pod(serde_json::json!({
        "metadata": {"name": "writer"},
        "spec": {"terminationGracePeriodSeconds": 30,
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{"name": "w", "image": "busybox:1.36",
                "command": ["sh", "-c", format!("dd if=/dev/zero of=/data/f bs=1M count={write_mib}; sleep 3600")],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]},
    })))
    .await;
    let writer = wait_for("writer evicted", Duration::from_secs(90), async || {
        failed("writer").await
    })
    .await;
    let s = writer.status.clone().unwrap();
    assert_eq!(s.reason.as_deref(), Some("Evicted"), "{s:#?}");
    let message = s.message.clone().unwrap();
    let prefix = format!(
        "The node was low on resource: ephemeral-storage. Threshold quantity: {}Mi, available: ",
        threshold / MI
    );
    assert!(message.starts_with(&prefix), "{message}");
    assert!(
        message.contains(". Container w was using ")
            && message.ends_with(", request is 0, has larger consumption of ephemeral-storage. "),
        "{message}"
    );
    let c = condition(&writer, "DisruptionTarget").expect("DisruptionTarget");
    assert_eq!(
        (c.status.as_str(), c.reason.as_deref(), c.message.as_deref()),
        ("True", Some("TerminationByKubelet"), Some(message.as_str()))
    );
    // The unused image went first; the one in use stays.
    let left = images(&node);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].contains("busybox"), "{left:?}");
    assert!(node.kernlet_log().contains("image garbage-collected"));
    // The keeper runs on.
    let keeper = pods.get("keeper").await.unwrap();
    assert_eq!(
        keeper.status.and_then(|s| s.phase).as_deref(),
        Some("Running")
    );
    let events: Api<Event> = Api::namespaced(admin.clone(), "default");
    wait_for("the Evicted event", Duration::from_secs(20), async || {
        let list = events.list(&Default::default()).await.ok()?.items;
        list.iter()
            .any(|e| {
                e.involved_object.name.as_deref() == Some("writer")
                    && e.reason.as_deref() == Some("Evicted")
                    && e.type_.as_deref() == Some("Warning")
                    && e.message.as_deref() == Some(message.as_str())
            })
            .then_some(())
    })
    .await;
    // And the node's own: kubelet's EvictionThresholdMet about the Node.
    let list = events.list(&Default::default()).await.unwrap().items;
    assert!(
        list.iter().any(|e| {
            e.involved_object.kind.as_deref() == Some("Node")
                && e.reason.as_deref() == Some("EvictionThresholdMet")
                && e.message.as_deref() == Some("Attempting to reclaim ephemeral-storage")
        }),
        "{list:?}"
    );
    // The writer's emptyDir went with it: the disk is free again, and DiskPressure
    // clears once the transition period (5 s) is over.
    let nodes: Api<Node> = Api::all(admin.clone());
    let disk = async |want: &str| {
        let n = nodes.get("e1").await.ok()?;
        n.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "DiskPressure" && c.status == want)
    };
    wait_for("DiskPressure False", Duration::from_secs(60), async || {
        disk("False").await
    })
    .await;
    assert!(available(&node) > threshold, "{}", available(&node));
    assert!(node.kernlet_running(), "{}", node.kernlet_log());
    if let Some(refused) = cluster.node_refusals() {
        assert!(refused.is_empty(), "{refused:#?}");
    }
}

/// `text` without its terminal colour sequences.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn start_agent(cluster: &Cluster, url: &str, node: &mut SimNode, hard: &str) -> u32 {
    node.start_agent(
        cluster,
        url,
        &[
            "--node-lease-renew-interval-ms",
            "300",
            "--node-status-update-frequency",
            "1",
            "--eviction-hard",
            hard,
            "--eviction-pressure-transition-period",
            "5s",
            "--eviction-monitoring-period-seconds",
            "1",
            "--image-minimum-gc-age",
            "0s",
        ],
    )
    .unwrap()
}

/// Graceful node shutdown on SIGTERM (`--shutdown-on-sigterm`): the node turns
/// NotReady ("node is shutting down"), the ordinary pod ends within its group's 12 s
/// before the node-critical one gets its 8 s, both `Failed`/`Terminated` with kubelet's
/// message and the DisruptionTarget condition, and kernlet exits once their statuses
/// are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_the_nodes_pods_down_lowest_priority_first() {
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("shutdown").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    let mut node = lab.add_node("s1").unwrap();
    node.import_busybox().unwrap();
    node.start_agent(
        &cluster,
        &fwd.url,
        &[
            "--node-lease-renew-interval-ms",
            "300",
            "--node-status-update-frequency",
            "1",
            "--shutdown-grace-period",
            "20s",
            "--shutdown-grace-period-critical-pods",
            "8s",
            "--shutdown-on-sigterm",
            // Never the machine's logind configuration.
            "--logind-conf-dir",
            node.dir("logind.conf.d").to_str().unwrap(),
        ],
    )
    .unwrap();
    let admin = cluster.admin().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    // Each takes 2 s to end after its SIGTERM.
    let command = "trap 'sleep 2; exit 0' TERM; while :; do sleep 1; done";
    for (name, class) in [("web", None), ("critical", Some("system-node-critical"))] {
        let mut spec = serde_json::json!({"terminationGracePeriodSeconds": 60,
            "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sh", "-c", command]}]});
        if let Some(c) = class {
            spec["priorityClassName"] = c.into();
        }
        pods.create(
            &PostParams::default(),
            &pod(serde_json::json!({"metadata": {"name": name}, "spec": spec})),
        )
        .await
        .unwrap();
        cluster.bind_pod("default", name, "s1").await.unwrap();
    }
    for name in ["web", "critical"] {
        wait_for(name, Duration::from_secs(60), async || {
            let p = pods.get(name).await.ok()?;
            (p.status?.phase.as_deref() == Some("Running")).then_some(())
        })
        .await;
    }
    let status = tokio::task::spawn_blocking(move || {
        let s = node.stop_kernlet(Duration::from_secs(60)).unwrap();
        (s, node)
    })
    .await
    .unwrap();
    let (exit, node) = status;
    assert!(exit.success(), "{exit:?}\n{}", node.kernlet_log());
    let finished = |p: &Pod| {
        p.status.as_ref()?.container_statuses.as_ref()?[0]
            .state
            .as_ref()?
            .terminated
            .as_ref()?
            .finished_at
            .clone()
    };
    let mut ends = Vec::new();
    for name in ["web", "critical"] {
        let p = pods.get(name).await.unwrap();
        let s = p.status.clone().unwrap();
        assert_eq!(
            (
                s.phase.as_deref(),
                s.reason.as_deref(),
                s.message.as_deref()
            ),
            (
                Some("Failed"),
                Some("Terminated"),
                Some("Pod was terminated in response to imminent node shutdown.")
            ),
            "{name}: {s:#?}"
        );
        let c = condition(&p, "DisruptionTarget").expect("DisruptionTarget");
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            ("True", Some("TerminationByKubelet"))
        );
        ends.push(finished(&p).expect("a terminated container"));
    }
    assert!(
        ends[0].0 < ends[1].0,
        "the ordinary pod ended before the critical one was stopped: {ends:?}"
    );
    let log = plain(&node.kernlet_log());
    let (low, high) = (
        log.find("priority=0").unwrap_or(usize::MAX),
        log.find("priority=2000000000").unwrap_or(0),
    );
    assert!(low < high, "{log}");
    // The node said why it went.
    let n = Api::<Node>::all(admin).get("s1").await.unwrap();
    let ready = n
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.message.as_deref()),
        ("False", Some("node is shutting down"))
    );
    drop(fwd);
}

/// Graceful node shutdown through systemd-logind (a stand-in on a private bus): the
/// node holds a `delay` inhibitor lock on shutdown; when logind announces the machine's
/// shutdown, the pods end (`Failed`/`Terminated`), the node turns NotReady, and the lock
/// is released so the shutdown goes on; a cancelled shutdown makes the node ready again
/// and takes a new lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loginds_shutdown_ends_the_pods_then_releases_the_lock() {
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("logind").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    let mut node = lab.add_node("g1").unwrap();
    node.import_busybox().unwrap();
    std::fs::create_dir_all(node.dir("bus")).unwrap();
    // logind delays a shutdown 5 s at most: less than the 10 s asked for.
    let logind = kernlet_tests::logind::FakeLogind::start(&node.dir("bus"), Duration::from_secs(5))
        .await
        .unwrap();
    node.start_agent(
        &cluster,
        &fwd.url,
        &[
            "--node-lease-renew-interval-ms",
            "300",
            "--node-status-update-frequency",
            "1",
            "--shutdown-grace-period",
            "10s",
            "--shutdown-grace-period-critical-pods",
            "4s",
            "--system-bus-address",
            logind.address(),
            "--logind-conf-dir",
            logind.conf_dir().to_str().unwrap(),
        ],
    )
    .unwrap();
    wait_for("the inhibitor lock", Duration::from_secs(30), async || {
        (logind.held() == 1).then_some(())
    })
    .await;
    // As kubelet: the drop-in raising InhibitDelayMaxSec, and logind reloaded.
    let drop_in = std::fs::read_to_string(logind.conf_dir().join("99-kernlet.conf")).unwrap();
    assert!(
        drop_in.contains("[Login]\nInhibitDelayMaxSec=10\n"),
        "{drop_in}"
    );
    assert_eq!(
        logind.kills(),
        [("systemd-logind.service".to_string(), "all".to_string(), 1)]
    );
    assert_eq!(logind.delay_max(), Duration::from_secs(10));
    let (what, who, _, mode) = logind.locks()[0].clone();
    assert_eq!(
        (what.as_str(), who.as_str(), mode.as_str()),
        ("shutdown", "kernlet", "delay")
    );
    let admin = cluster.admin().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    pods.create(
        &PostParams::default(),
        &pod(serde_json::json!({"metadata": {"name": "web"}, "spec": {
            "terminationGracePeriodSeconds": 30,
            "containers": [{"name": "c", "image": "busybox:1.36",
                "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]}]}})),
    )
    .await
    .unwrap();
    cluster.bind_pod("default", "web", "g1").await.unwrap();
    wait_for("web running", Duration::from_secs(60), async || {
        let p = pods.get("web").await.ok()?;
        (p.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
    let nodes: Api<Node> = Api::all(admin.clone());
    let ready = async || {
        let n = nodes.get("g1").await.ok()?;
        n.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| (c.status, c.message.unwrap_or_default()))
    };
    logind.prepare_for_shutdown(true).await.unwrap();
    let web = wait_for("web terminated", Duration::from_secs(30), async || {
        let p = pods.get("web").await.ok()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Failed")).then_some(p)
    })
    .await;
    assert_eq!(web.status.unwrap().reason.as_deref(), Some("Terminated"));
    wait_for("the lock released", Duration::from_secs(20), async || {
        (logind.held() == 0).then_some(())
    })
    .await;
    wait_for("NotReady", Duration::from_secs(20), async || {
        ready()
            .await
            .filter(|(s, m)| s == "False" && m == "node is shutting down")
    })
    .await;
    assert!(node.kernlet_running(), "{}", node.kernlet_log());
    // The shutdown is called off: ready again, with a new lock.
    logind.prepare_for_shutdown(false).await.unwrap();
    wait_for("a new lock", Duration::from_secs(20), async || {
        (logind.held() == 1 && logind.locks().len() == 2).then_some(())
    })
    .await;
    wait_for("Ready again", Duration::from_secs(20), async || {
        ready().await.filter(|(s, _)| s == "True")
    })
    .await;
    drop(fwd);
}

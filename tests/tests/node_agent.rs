//! kernlet as a node agent on SimNodes (root): it registers its Node with the control
//! plane over the lab underlay, renews its Lease, stops cleanly on SIGTERM, and a
//! `kill -9` leaves its Lease to expire.

#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot go on should stop loudly"
)]

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kernlet_tests::cluster::Cluster;
use kernlet_tests::simnode::{BRIDGE_IP, Lab, SimNode};
use kube::api::Api;

use kernlet_tests::wait_for;

/// Mounts a 64 MiB tmpfs on the node's state directory (unmounted by the SimNode's
/// drop, and by the sweep if this process dies); the directory.
fn state_on_tmpfs(node: &SimNode) -> std::path::PathBuf {
    use nix::mount::{MsFlags, mount};
    let state = node.dir("state");
    mount(
        Some("tmpfs"),
        &state,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=64m"),
    )
    .unwrap();
    state
}

/// Starts kernlet on `node` against the cluster at `url` (leases every 300 ms unless
/// `extra` says otherwise); its pid.
fn start_agent(cluster: &Cluster, url: &str, node: &mut SimNode, extra: &[&str]) -> u32 {
    let mut args = Vec::new();
    if !extra.contains(&"--node-lease-renew-interval-ms") {
        args.extend(["--node-lease-renew-interval-ms", "300"]);
    }
    args.extend_from_slice(extra);
    node.start_agent(cluster, url, &args).unwrap()
}

async fn renew_time(leases: &Api<Lease>, name: &str) -> Option<k8s_openapi::jiff::Timestamp> {
    leases
        .get_opt(name)
        .await
        .ok()??
        .spec?
        .renew_time
        .map(|t| t.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_register_renew_leases_stop_and_die() {
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("agent").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    let mut nodes: Vec<SimNode> = ["a1", "a2", "a3"]
        .iter()
        .map(|n| lab.add_node(n).unwrap())
        .collect();
    for n in nodes.iter_mut() {
        start_agent(
            &cluster,
            &fwd.url,
            n,
            &[
                "--node-labels",
                "topology.kubernetes.io/zone=lab",
                "--kube-reserved",
                "cpu=500m",
            ],
        );
    }
    let admin = cluster.admin().await.unwrap();
    let api: Api<Node> = Api::all(admin.clone());
    for n in &nodes {
        let node = wait_for(
            &format!("node {}", n.name),
            Duration::from_secs(20),
            async || {
                // Reported, and Ready once its pod runtime is open.
                api.get_opt(&n.name).await.ok().flatten().filter(|x| {
                    x.status.as_ref().is_some_and(|s| {
                        s.node_info.is_some()
                            && s.conditions
                                .iter()
                                .flatten()
                                .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
                })
            },
        )
        .await;
        let status = node.status.unwrap();
        let internal = status
            .addresses
            .unwrap()
            .into_iter()
            .find(|a| a.type_ == "InternalIP")
            .unwrap()
            .address;
        assert_eq!(
            internal,
            n.address.to_string(),
            "InternalIP from the node's default-route interface\n{}",
            n.kernlet_log()
        );
        let labels = node.metadata.labels.unwrap();
        assert_eq!(labels.get("kubernetes.io/hostname"), Some(&n.name));
        assert_eq!(
            labels
                .get("topology.kubernetes.io/zone")
                .map(String::as_str),
            Some("lab")
        );
        let cpus = std::thread::available_parallelism().unwrap().get();
        let cpu = &status.allocatable.as_ref().unwrap()["cpu"].0;
        assert_eq!(
            cpu,
            &format!("{}m", cpus * 1000 - 500),
            "--kube-reserved comes out of allocatable"
        );
        let ready = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_deref(),
                ready.message.as_deref()
            ),
            (
                "True",
                Some("KubeletReady"),
                Some("kubelet is posting ready status")
            ),
        );
        // Registered with the not-ready taint, as kubelet does; removing it is the node
        // lifecycle controller's job (the in-memory control plane has none; a real
        // controller-manager takes it off the Ready node).
        let taints = node.spec.unwrap().taints.unwrap_or_default();
        let not_ready = taints
            .iter()
            .any(|t| t.key == "node.kubernetes.io/not-ready" && t.effect == "NoSchedule");
        if cluster.in_memory().is_some() {
            assert!(not_ready, "{taints:?}");
        }
    }

    // kubectl shows them with their columns filled.
    let kubeconfig = cluster.admin_kubeconfig().unwrap();
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "nodes", "-o", "wide"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    for n in &nodes {
        let row = table
            .lines()
            .find(|l| l.starts_with(&n.name))
            .unwrap_or_else(|| panic!("{table}"));
        assert!(
            row.contains(&n.address.to_string())
                && row.contains(" Ready")
                && !row.contains("NotReady")
                && row.contains("+kernlet."),
            "{row}"
        );
    }

    // Leases are renewed.
    let leases: Api<Lease> = Api::namespaced(admin, "kube-node-lease");
    for n in &nodes {
        let first = wait_for("a lease", Duration::from_secs(10), async || {
            renew_time(&leases, &n.name).await
        })
        .await;
        wait_for("a renewal", Duration::from_secs(10), async || {
            renew_time(&leases, &n.name).await.filter(|t| *t > first)
        })
        .await;
        let lease = leases.get(&n.name).await.unwrap();
        assert_eq!(
            lease.spec.as_ref().unwrap().lease_duration_seconds,
            Some(40)
        );
        assert_eq!(lease.metadata.owner_references.unwrap()[0].kind, "Node");
    }

    // SIGTERM: a clean, quick stop.
    let status = nodes[0].stop_kernlet(Duration::from_secs(5)).unwrap();
    assert!(
        status.success(),
        "kernlet exits 0 on SIGTERM: {status:?}\n{}",
        nodes[0].kernlet_log()
    );
    assert!(nodes[0].kernlet_log().contains("kernlet stopped"));

    // kill -9: the lease stops moving while a live node's keeps moving.
    nodes[1].kill9_kernlet().unwrap();
    let dead = renew_time(&leases, "a2").await.unwrap();
    let live = renew_time(&leases, "a3").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        renew_time(&leases, "a2").await.unwrap(),
        dead,
        "a killed node renews nothing"
    );
    assert!(renew_time(&leases, "a3").await.unwrap() > live);
    assert!(nodes[2].kernlet_running());

    // Restarted, the killed node adopts its Node and lease again.
    start_agent(&cluster, &fwd.url, &mut nodes[1], &[]);
    wait_for(
        "renewal after restart",
        Duration::from_secs(10),
        async || renew_time(&leases, "a2").await.filter(|t| *t > dead),
    )
    .await;
    // Nothing the three agents did was outside what Node authorization and
    // NodeRestriction allow a node.
    if let Some(refused) = cluster.node_refusals() {
        assert!(refused.is_empty(), "{refused:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_labels_are_refused_at_start_with_the_reason() {
    let mut lab = Lab::new("label").unwrap();
    let node = lab.add_node("l1").unwrap();
    let kubeconfig = node.dir("state").join("none.kubeconfig");
    std::fs::write(&kubeconfig, "{}").unwrap();
    let kc = kubeconfig.display().to_string();
    let mut cmd = node.command(kernlet_tests::simnode::kernlet_bin().unwrap());
    cmd.args([
        "run",
        "--kubeconfig",
        &kc,
        "--node-labels",
        "node-role.kubernetes.io/worker=",
    ])
    .args(node.kernlet_dir_flags());
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node-role.kubernetes.io/worker") && err.contains("NodeRestriction"),
        "{err}"
    );
}

/// At kubelet's own intervals (10 s renewals, 40 s leases): three lease periods without
/// an apiserver, then back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_survives_the_control_plane_going_away() {
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("gone").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    let (url, port) = (fwd.url.clone(), fwd.port());
    let mut node = lab.add_node("g1").unwrap();
    start_agent(
        &cluster,
        &url,
        &mut node,
        &["--node-lease-renew-interval-ms", "10000"],
    );
    let leases: Api<Lease> = Api::namespaced(cluster.admin().await.unwrap(), "kube-node-lease");
    let before = wait_for("a lease", Duration::from_secs(20), async || {
        renew_time(&leases, "g1").await
    })
    .await;

    // The control plane vanishes from the node's view for 3 × 40 s: the port closes and
    // open connections are cut. kernlet keeps running and says why it cannot renew.
    drop(fwd);
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(120) {
        assert!(
            node.kernlet_running(),
            "kernlet must not exit when the apiserver is away\n{}",
            node.kernlet_log()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let stalled = renew_time(&leases, "g1").await.unwrap();
    assert!(stalled >= before);
    let log = node.kernlet_log();
    let complaints = log.matches("lease not renewed").count();
    assert!(
        log.contains("is the apiserver reachable?") && complaints > 0,
        "{log}"
    );
    // One line per backoff step (200 ms doubling to 7 s): about 22 in two minutes.
    assert!(
        complaints <= 40,
        "{complaints} complaints in 120 s is a flood:\n{log}"
    );

    // Back again: renewed within one lease period, without a restart.
    let _fwd = lab.forward(port, cluster.addr()).unwrap();
    let back = Instant::now();
    wait_for(
        "renewal after the apiserver returns",
        Duration::from_secs(40),
        async || renew_time(&leases, "g1").await.filter(|t| *t > stalled),
    )
    .await;
    assert!(back.elapsed() < Duration::from_secs(40));
    assert!(node.kernlet_running());
}

/// Status is recomputed every 10 s and sent only when it changed (or every 5 min): the
/// state directory sits on a tmpfs the test resizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_recomputed_and_sent_only_when_it_changes() {
    use nix::mount::{MsFlags, mount};
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("recompute").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    let mut node = lab.add_node("r1").unwrap();
    let state = state_on_tmpfs(&node);
    start_agent(&cluster, &fwd.url, &mut node, &[]);
    let nodes: Api<Node> = Api::all(cluster.admin().await.unwrap());
    let storage = async |want: &str| {
        let n = nodes.get_opt("r1").await.ok()??;
        let status = n.status?;
        // Compared as amounts: a real apiserver stores quantities in canonical form
        // (65536Ki comes back as 64Mi).
        let cap = status.capacity?.get("ephemeral-storage")?.0.clone();
        let amount = |q: &str| {
            kernlet::model::quantity::Quantity::parse(q)
                .ok()
                .map(|q| q.value())
        };
        let heartbeat = status
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "Ready")?
            .last_heartbeat_time?;
        (amount(&cap) == amount(want)).then_some(heartbeat)
    };
    let first = wait_for("64 MiB of storage", Duration::from_secs(20), async || {
        storage("65536Ki").await
    })
    .await;
    // Two update periods with nothing changed: nothing sent.
    tokio::time::sleep(Duration::from_secs(21)).await;
    assert_eq!(storage("65536Ki").await, Some(first.clone()));
    mount(
        None::<&str>,
        &state,
        None::<&str>,
        MsFlags::MS_REMOUNT,
        Some("size=128m"),
    )
    .unwrap();
    let second = wait_for(
        "128 MiB within one update period",
        Duration::from_secs(15),
        async || storage("131072Ki").await,
    )
    .await;
    assert!(second.0 > first.0);
    assert!(node.kernlet_running(), "{}", node.kernlet_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_cluster_permissions_are_named_until_deploy_rbac_is_applied() {
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("rbac").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    let mut node = lab.add_node("r1").unwrap();
    start_agent(&cluster, &fwd.url, &mut node, &[]);
    let log = wait_for(
        "the permission check",
        Duration::from_secs(20),
        async || {
            Some(node.kernlet_log()).filter(|l| l.contains("may not") || l.contains("are in place"))
        },
    )
    .await;
    assert!(
        log.contains("may not list nodes, watch nodes")
            && log.contains("kubectl apply -f deploy/rbac.yaml"),
        "{log}"
    );
    assert!(
        !log.contains("list services"),
        "services are readable by nodes already: {log}"
    );
    assert!(node.kernlet_running(), "the node part keeps working");

    let rbac = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rbac.yaml");
    kernlet_tests::succeeded(
        std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(cluster.admin_kubeconfig().unwrap())
            .args(["apply", "-f"])
            .arg(&rbac),
    );
    node.stop_kernlet(Duration::from_secs(5)).unwrap();
    start_agent(&cluster, &fwd.url, &mut node, &[]);
    let log = wait_for(
        "the permission check after the grant",
        Duration::from_secs(20),
        async || {
            Some(node.kernlet_log()).filter(|l| l.contains("may not") || l.contains("are in place"))
        },
    )
    .await;
    assert!(
        log.contains("permissions for the overlay and Service load-balancing are in place"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_csr_is_impossible_to_miss_and_its_certificate_is_saved() {
    use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
    use k8s_openapi::api::core::v1::Event;
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("serve").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    let mut node = lab.add_node("s1").unwrap();
    // Certificates live 40 s here, so the serving certificate's renewal is seen.
    if let Some(s) = cluster.in_memory() {
        s.set_signing_duration(Duration::from_secs(40));
    }
    start_agent(&cluster, &fwd.url, &mut node, &[]);
    let admin = cluster.admin().await.unwrap();
    let csrs: Api<CertificateSigningRequest> = Api::all(admin.clone());
    let csr = wait_for("the serving CSR", Duration::from_secs(20), async || {
        csrs.list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|c| c.spec.signer_name == "kubernetes.io/kubelet-serving")
    })
    .await;
    let name = csr.metadata.name.unwrap();
    assert_eq!(csr.spec.username.as_deref(), Some("system:node:s1"));
    assert_eq!(
        csr.spec.usages.unwrap(),
        ["digital signature", "server auth"]
    );
    // Pending: the exact approve command in the log and in a Warning Event on the Node.
    let approve = format!("kubectl certificate approve {name}");
    wait_for(
        "the pending log line",
        Duration::from_secs(10),
        async || Some(()).filter(|_| node.kernlet_log().contains(&approve)),
    )
    .await;
    let events: Api<Event> = Api::namespaced(admin, "default");
    let event = wait_for("the pending event", Duration::from_secs(10), async || {
        events
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| e.involved_object.name.as_deref() == Some("s1"))
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(event.message.unwrap().contains(&approve));
    let crt = node.dir("state").join("pki/kubelet-server.crt");
    assert!(!crt.exists());
    // `kernlet doctor` says so too, with the command; and that the node's identity
    // lacks what the overlay and Services need (this cluster has no grant for it).
    let doctor = |node: &SimNode| -> serde_json::Value {
        let out = node
            .command(kernlet_tests::simnode::kernlet_bin().unwrap())
            .args(["doctor", "-o", "json", "--kubeconfig"])
            .arg(node.dir("state").join("node.kubeconfig"))
            .args(node.kernlet_dir_flags())
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let check = |report: &serde_json::Value, name: &str| -> serde_json::Value {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap()
    };
    let report = tokio::task::block_in_place(|| doctor(&node));
    let serving = check(&report, "serving certificate");
    assert_eq!(serving["verdict"], "warn", "{serving}");
    assert_eq!(serving["fix"], approve, "{serving}");
    let rbac = check(&report, "cluster permissions");
    assert_eq!(rbac["verdict"], "warn", "{rbac}");
    assert!(
        rbac["detail"].as_str().unwrap().contains("list nodes")
            && rbac["fix"].as_str().unwrap().contains("deploy/rbac.yaml"),
        "{rbac}"
    );

    cluster.approve_csr(&name).await.unwrap();
    wait_for(
        "the serving certificate on disk",
        Duration::from_secs(20),
        async || Some(()).filter(|_| crt.exists()),
    )
    .await;
    let report = tokio::task::block_in_place(|| doctor(&node));
    let serving = check(&report, "serving certificate");
    assert_eq!(serving["verdict"], "ok", "{serving}");
    assert!(
        serving["detail"]
            .as_str()
            .unwrap()
            .starts_with("issued, valid for"),
        "{serving}"
    );
    let pem = std::fs::read_to_string(&crt).unwrap();
    let der = rustls::pki_types::CertificateDer::from(
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents,
    );
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let sans = format!(
        "{:?}",
        cert.subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
    );
    assert!(
        sans.contains("\"s1\"") && sans.contains(&format!("{:?}", node.address.octets())),
        "SANs are the node name and its address: {sans}"
    );

    // Restarted, kernlet keeps the good certificate and asks for nothing new.
    node.stop_kernlet(Duration::from_secs(5)).unwrap();
    start_agent(&cluster, &fwd.url, &mut node, &[]);
    wait_for(
        "the restart to settle",
        Duration::from_secs(10),
        async || {
            Some(()).filter(|_| {
                node.kernlet_log()
                    .contains("serving certificate present and valid")
            })
        },
    )
    .await;
    let serving = csrs
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|c| c.spec.signer_name == "kubernetes.io/kubelet-serving")
        .count();
    assert_eq!(serving, 1);
    if cluster.in_memory().is_none() {
        return;
    }
    // At 70–90 % of its 40 s the certificate is renewed through a new CSR; once that is
    // approved, the new certificate replaces the old on disk.
    let renewal = wait_for("the renewal CSR", Duration::from_secs(45), async || {
        csrs.list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|c| {
                c.spec.signer_name == "kubernetes.io/kubelet-serving"
                    && c.metadata.name.as_deref() != Some(name.as_str())
            })
    })
    .await;
    cluster
        .approve_csr(renewal.metadata.name.as_deref().unwrap())
        .await
        .unwrap();
    wait_for(
        "the renewed certificate",
        Duration::from_secs(20),
        async || Some(()).filter(|_| std::fs::read_to_string(&crt).is_ok_and(|p| p != pem)),
    )
    .await;
}

/// The kubelet part: a pod the scheduler binds here runs, its status is written as
/// kubelet writes it, the Node is Ready, and a deleted pod is stopped and removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_bound_to_the_node_run_report_status_and_go_when_deleted() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{DeleteParams, PostParams};
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("pods").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    let mut node = lab.add_node("w1").unwrap();
    node.import_busybox().unwrap();
    start_agent(&cluster, &fwd.url, &mut node, &[]);
    let admin = cluster.admin().await.unwrap();
    let nodes: Api<Node> = Api::all(admin.clone());
    wait_for("the node Ready", Duration::from_secs(30), async || {
        let n = nodes.get_opt("w1").await.ok()??;
        let ready = n
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        (ready.status == "True" && ready.reason.as_deref() == Some("KubeletReady")).then_some(())
    })
    .await;

    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "hello"},
        "spec": {"hostNetwork": true, "terminationGracePeriodSeconds": 2, "containers": [
            {"name": "c", "image": "busybox:1.36", "command": ["sh", "-c",
             "cd /var/run/secrets/kubernetes.io/serviceaccount; echo ns=$(cat namespace) token=$(cat token | wc -c) ca=$(grep -c CERTIFICATE ca.crt); exec sleep 600"]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    cluster.bind_pod("default", "hello", "w1").await.unwrap();
    let started = Instant::now();
    let running = loop {
        let p = pods.get("hello").await.unwrap();
        let status = p.status.clone().unwrap_or_default();
        let running = status.phase.as_deref() == Some("Running")
            && status
                .container_statuses
                .iter()
                .flatten()
                .any(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()));
        if running {
            break p;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "pod hello never ran: {status:?}\n{}",
            node.kernlet_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let status = running.status.unwrap();
    let address = node.address.to_string();
    assert_eq!(status.host_ip.as_deref(), Some(address.as_str()));
    assert_eq!(
        status.pod_ip.as_deref(),
        Some(address.as_str()),
        "hostNetwork"
    );
    assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));
    let c = &status.container_statuses.unwrap()[0];
    assert!(
        c.ready
            && c.container_id
                .as_deref()
                .unwrap_or("")
                .starts_with("kernlet://")
    );
    assert_eq!(c.image, "docker.io/library/busybox:1.36");
    // The injected kube-api-access volume: a token bound to the pod, the cluster CA,
    // the namespace.
    let uid = running.metadata.uid.clone().unwrap();
    let log = kernlet::runtime::logs::container_log(
        &kernlet::runtime::logs::pod_dir(&node.dir("logs"), "default", "hello", &uid),
        "c",
        0,
    );
    let line = wait_for(
        "the container's output",
        Duration::from_secs(10),
        async || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains("ns="))
        },
    )
    .await;
    let text = kernlet::runtime::logs::parse_line(line.lines().next().unwrap())
        .unwrap()
        .text;
    let fields: std::collections::BTreeMap<&str, &str> = text
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    assert_eq!(fields["ns"], "default", "{text}");
    assert!(fields["token"].parse::<u32>().unwrap() > 100, "{text}");
    assert_eq!(fields["ca"], "2", "{text}");
    let conditions = status.conditions.unwrap();
    for ty in ["Ready", "ContainersReady", "Initialized", "PodScheduled"] {
        let cond = conditions.iter().find(|c| c.type_ == ty).unwrap();
        assert_eq!(cond.status, "True", "{ty}");
    }

    // Deleted: stopped (SIGTERM, then SIGKILL after its 2 s), then removed for good.
    pods.delete("hello", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("pod hello gone", Duration::from_secs(60), async || {
        pods.get_opt("hello").await.ok()?.is_none().then_some(())
    })
    .await;
    let left = std::fs::read_dir(node.dir("state").join("pods"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "the sandbox is gone");

    // A pod deleted while kernlet was down, before anything of it ran: removed at once
    // when kernlet comes back.
    node.stop_kernlet(Duration::from_secs(5)).unwrap();
    let mut early = pod.clone();
    early.metadata.name = Some("early".into());
    pods.create(&PostParams::default(), &early).await.unwrap();
    cluster.bind_pod("default", "early", "w1").await.unwrap();
    pods.delete("early", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        pods.get_opt("early").await.unwrap().is_some(),
        "graceful: waits for the node"
    );
    start_agent(&cluster, &fwd.url, &mut node, &[]);
    wait_for("pod early gone", Duration::from_secs(30), async || {
        pods.get_opt("early").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(
        !node.kernlet_log().contains("container started"),
        "{}",
        node.kernlet_log()
    );
    assert!(node.kernlet_running());
    if let Some(refused) = cluster.node_refusals() {
        assert!(refused.is_empty(), "{refused:#?}");
    }
}

/// A pod's `imagePullSecrets` (a `kubernetes.io/dockerconfigjson` secret) carry the
/// credentials to a registry that takes only bearer tokens (the Docker Hub flow: 401
/// with a `Bearer` challenge, a token fetched from the realm with basic credentials).
/// Without the secret, or with a wrong password in it, the pull fails with the cause
/// named, and the next pull waits (ErrImagePull, then ImagePullBackOff).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pull_secrets_reach_a_token_auth_registry() {
    use k8s_openapi::api::core::v1::{Pod, Secret};
    use kernlet_tests::registry::{Registry, TokenServer};
    use kube::api::PostParams;
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("pullsec").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    let reg_node = lab.add_node("r1").unwrap();
    let mut node = lab.add_node("w1").unwrap();
    let tokens = TokenServer::start(&lab, "kltest", "t0ken-pw").unwrap();
    let reg = Registry::start_with_tokens(&reg_node, &tokens).unwrap();
    let work = node.dir("image-build");
    std::fs::create_dir_all(&work).unwrap();
    let layout = kernlet_tests::oci::busybox_layout(&work, "1.36").unwrap();
    reg.push(&reg_node, &layout, "1.36", "private/bb").unwrap();
    start_agent(
        &cluster,
        &fwd.url,
        &mut node,
        &["--insecure-registry", &reg.addr],
    );

    let admin = cluster.admin().await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "default");
    for (name, pass) in [("regcred", "t0ken-pw"), ("badcred", "wrong-pw")] {
        let auth = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("kltest:{pass}"),
        );
        let config = serde_json::json!({"auths": {reg.addr.clone(): {"auth": auth}}}).to_string();
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": config},
        }))
        .unwrap();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let image = format!("{}/private/bb:1.36", reg.addr);
    for (name, secret) in [
        ("with-secret", Some("regcred")),
        ("anonymous", None),
        ("wrong-password", Some("badcred")),
    ] {
        let pull_secrets: Vec<_> = secret
            .iter()
            .map(|s| serde_json::json!({"name": s}))
            .collect();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"hostNetwork": true, "terminationGracePeriodSeconds": 1,
                     "imagePullSecrets": pull_secrets,
                     "containers": [{"name": "c", "image": image, "command": ["sleep", "600"]}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        cluster.bind_pod("default", name, "w1").await.unwrap();
    }

    let waiting = async |name: &str| -> Option<(String, String)> {
        let p = pods.get(name).await.ok()?;
        let w = p
            .status?
            .container_statuses?
            .into_iter()
            .next()?
            .state?
            .waiting?;
        Some((w.reason?, w.message.unwrap_or_default()))
    };
    let started = Instant::now();
    loop {
        let p = pods.get("with-secret").await.unwrap();
        let c = p
            .status
            .clone()
            .and_then(|s| s.container_statuses?.into_iter().next());
        if c.as_ref()
            .and_then(|c| c.state.as_ref()?.running.as_ref())
            .is_some()
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "pod with-secret never ran: {c:?}\n{}\n{:#?}\n{}",
            node.kernlet_log(),
            tokens.requests(),
            reg.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let granted = tokens.requests();
    assert!(
        granted
            .iter()
            .any(|r| r.starts_with("kltest 200 ") && r.contains("repository:private/bb:pull")),
        "the pull went through the token flow with the secret's user: {granted:#?}"
    );
    for name in ["anonymous", "wrong-password"] {
        let mut seen = Vec::new();
        wait_for(
            &format!("{name}: ErrImagePull, then ImagePullBackOff"),
            Duration::from_secs(40),
            async || {
                let (reason, message) = waiting(name).await?;
                if seen.last() != Some(&reason) {
                    eprintln!("{name}: {reason}: {message}");
                    seen.push(reason.clone());
                }
                if reason != "ContainerCreating" {
                    assert!(
                        message.contains(&reg.addr) && message.contains("imagePullSecrets"),
                        "{name}: {reason}: {message}"
                    );
                }
                (seen.contains(&"ErrImagePull".to_string()) && reason == "ImagePullBackOff")
                    .then_some(())
            },
        )
        .await;
    }
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(admin.clone(), "default");
    let list = events.list(&Default::default()).await.unwrap().items;
    let about = |pod: &str, reason: &str, words: &str| {
        list.iter().any(|e| {
            e.involved_object.name.as_deref() == Some(pod)
                && e.reason.as_deref() == Some(reason)
                && e.message.as_deref().unwrap_or("").contains(words)
        })
    };
    assert!(
        about("with-secret", "Pulling", "Pulling image"),
        "{list:#?}"
    );
    assert!(
        about("with-secret", "Pulled", "Successfully pulled image"),
        "{list:#?}"
    );
    assert!(
        about("anonymous", "Failed", "Error: ErrImagePull"),
        "{list:#?}"
    );
    assert!(
        about("anonymous", "BackOff", "Back-off pulling image"),
        "{list:#?}"
    );
    let requests = tokens.requests();
    assert!(
        requests.iter().any(|r| r.starts_with("kltest 401")),
        "the wrong password reached the token server: {requests:#?}"
    );
    assert!(
        requests.iter().any(|r| r.starts_with("- 200")),
        "the anonymous pull asked for an anonymous token: {requests:#?}"
    );
    // The image is on the node now, pulled with regcred: another pod holding the
    // same secret uses it without a pull (IfNotPresent), while the two without it
    // stay refused.
    let before = tokens.requests().len();
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "second"},
        "spec": {"hostNetwork": true, "terminationGracePeriodSeconds": 1,
                 "imagePullSecrets": [{"name": "regcred"}],
                 "containers": [{"name": "c", "image": image, "command": ["sleep", "600"]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    cluster.bind_pod("default", "second", "w1").await.unwrap();
    wait_for("pod second running", Duration::from_secs(30), async || {
        let p = pods.get("second").await.ok()?;
        let c = p.status?.container_statuses?.into_iter().next()?;
        c.state?.running.map(|_| ())
    })
    .await;
    let after: Vec<String> = tokens.requests()[before..]
        .iter()
        .filter(|r| r.starts_with("kltest 200"))
        .cloned()
        .collect();
    assert!(after.is_empty(), "no new pull with regcred: {after:#?}");
    for name in ["anonymous", "wrong-password"] {
        let p = pods.get(name).await.unwrap();
        let c = &p.status.unwrap().container_statuses.unwrap()[0];
        assert!(
            c.state.as_ref().unwrap().running.is_none(),
            "{name} never runs without the credentials"
        );
    }
    assert!(node.kernlet_running());
    if let Some(refused) = cluster.node_refusals() {
        assert!(refused.is_empty(), "{refused:#?}");
    }
}

/// The fixture Deployment's pod, run through the apiserver: init container, then the
/// sidecar, then httpd behind its startup, readiness and liveness probes; its
/// environment from the configMap, the secret, its own fields and its limits; its
/// configMap, secret, memory emptyDir, downwardAPI and projected token volumes; its
/// security context; and on deletion its preStop sleep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixture_deployments_pod_runs_like_kubelet_runs_it() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{DeleteParams, PostParams};
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("fixture").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    let mut node = lab.add_node("w1").unwrap();
    node.import_busybox().unwrap();
    start_agent(&cluster, &fwd.url, &mut node, &[]);
    let admin = cluster.admin().await.unwrap();
    let manifests = kernlet_tests::fixtures::workload_manifests();
    let find = |kind: &str| {
        manifests
            .iter()
            .find(|m| m["kind"] == kind)
            .cloned()
            .unwrap()
    };
    let dynamic = |kind: &str, plural: &str, group: &str, version: &str| kube::api::ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    };
    let ns_api: Api<kube::api::DynamicObject> =
        Api::all_with(admin.clone(), &dynamic("Namespace", "namespaces", "", "v1"));
    ns_api
        .create(
            &PostParams::default(),
            &serde_json::from_value(find("Namespace")).unwrap(),
        )
        .await
        .unwrap();
    for (kind, plural) in [("ConfigMap", "configmaps"), ("Secret", "secrets")] {
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(admin.clone(), "demo", &dynamic(kind, plural, "", "v1"));
        api.create(
            &PostParams::default(),
            &serde_json::from_value(find(kind)).unwrap(),
        )
        .await
        .unwrap();
    }
    let template = find("Deployment")["spec"]["template"].clone();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "demo");
    let mut spec = template["spec"].clone();
    // httpd as PID 1 ignores SIGTERM: the deletion waits out the grace period.
    spec["terminationGracePeriodSeconds"] = serde_json::json!(3);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-1", "labels": template["metadata"]["labels"]},
        "spec": spec,
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    cluster.bind_pod("demo", "web-1", "w1").await.unwrap();

    let started = Instant::now();
    let running = loop {
        let p = pods.get("web-1").await.unwrap();
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        if ready {
            break p;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "web-1 never became Ready: {:#?}\n{}",
            p.status,
            node.kernlet_log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let status = running.status.clone().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(status.qos_class.as_deref(), Some("Burstable"));
    let init = status.init_container_statuses.clone().unwrap();
    assert_eq!(init[0].name, "init");
    let done = init[0].state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(
        (done.exit_code, done.reason.as_deref()),
        (0, Some("Completed"))
    );
    assert!(init[0].ready, "a completed init container is ready");
    assert_eq!(init[1].name, "sidecar");
    let side = init[1].state.as_ref().unwrap().running.as_ref().unwrap();
    assert_eq!(init[1].started, Some(true));
    let main = &status.container_statuses.clone().unwrap()[0];
    assert!(main.ready && main.started == Some(true) && main.restart_count == 0);
    let httpd = main.state.as_ref().unwrap().running.as_ref().unwrap();
    assert!(
        side.started_at.as_ref().unwrap().0 <= httpd.started_at.as_ref().unwrap().0,
        "the sidecar starts before the main container"
    );
    for c in [
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
        "PodScheduled",
    ] {
        assert!(
            status
                .conditions
                .iter()
                .flatten()
                .any(|x| x.type_ == c && x.status == "True"),
            "{c}"
        );
    }

    // Inside httpd, through `kernlet exec`.
    let exec_argv = |argv: &[&str]| -> String {
        let out = std::process::Command::new(kernlet_tests::simnode::kernlet_bin().unwrap())
            .args(["exec", "demo/web-1", "-c", "httpd", "--state-dir"])
            .arg(node.dir("state"))
            .arg("--")
            .args(argv)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{argv:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let exec = |script: &str| exec_argv(&["sh", "-c", script]);
    // The environment as the runtime gives it (`env` run directly: a shell would
    // drop `index.html`, which is no shell identifier).
    let env = tokio::task::block_in_place(|| exec_argv(&["env"]));
    let vars: std::collections::BTreeMap<&str, &str> =
        env.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(vars.get("GREETING"), Some(&"hello"), "{env}");
    assert_eq!(vars.get("PASSWORD"), Some(&"s3cret"), "{env}");
    assert_eq!(vars.get("MEM_LIMIT"), Some(&"67108864"), "{env}");
    assert!(vars.contains_key("POD_IP"), "{env}");
    assert!(
        vars.contains_key("index.html"),
        "envFrom brings every key: {env}"
    );
    assert!(vars.contains_key("KUBERNETES_SERVICE_HOST"), "{env}");
    assert_eq!(vars.get("KUBERNETES_SERVICE_PORT"), Some(&"443"), "{env}");
    let facts = tokio::task::block_in_place(|| {
        exec(
            "echo uid=$(id -u); cat /www/index.html; echo secret=$(stat -L -c %a /etc/secret/password); \
             cat /etc/podinfo/labels; echo; grep ' /scratch ' /proc/mounts; \
             echo token=$(wc -c < /var/run/secrets/kubernetes.io/serviceaccount/token); \
             touch /rootfs-write 2>/dev/null && echo root=writable || echo root=readonly; \
             grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status",
        )
    });
    for want in [
        "uid=65534",
        "hello from a configmap",
        "secret=400",
        "app=\"web\"",
        "root=readonly",
    ] {
        assert!(facts.contains(want), "{want} in {facts}");
    }
    let scratch = facts.lines().find(|l| l.contains(" /scratch ")).unwrap();
    assert!(
        scratch.starts_with("tmpfs") && scratch.contains("size=16384k"),
        "{scratch}"
    );
    let token: usize = facts
        .lines()
        .find_map(|l| l.strip_prefix("token="))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(token > 100, "{facts}");
    let field = |k: &str| {
        facts
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2");

    // Deleted: preStop (sleep 1), then the containers stop and the pod goes.
    pods.delete("web-1", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("web-1 gone", Duration::from_secs(60), async || {
        pods.get_opt("web-1").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(node.kernlet_log().contains("preStop hook done"));

    // kubelet's events for the pod, per container, from kubelet on w1.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(admin.clone(), "demo");
    let seen = wait_for("the Killing event", Duration::from_secs(10), async || {
        let list = events.list(&Default::default()).await.ok()?.items;
        list.iter()
            .any(|e| e.reason.as_deref() == Some("Killing"))
            .then_some(list)
    })
    .await;
    let has = |reason: &str, path: &str, words: &str| {
        seen.iter().any(|e| {
            e.reason.as_deref() == Some(reason)
                && e.involved_object.name.as_deref() == Some("web-1")
                && e.involved_object.field_path.as_deref().unwrap_or("") == path
                && e.message.as_deref().unwrap_or("").contains(words)
                && e.source.as_ref().and_then(|s| s.host.as_deref()) == Some("w1")
                && e.reporting_component.as_deref() == Some("kubelet")
        })
    };
    for path in [
        "spec.initContainers{init}",
        "spec.initContainers{sidecar}",
        "spec.containers{httpd}",
    ] {
        assert!(
            has("Pulled", path, "already present on machine"),
            "{path}: {seen:#?}"
        );
        assert!(has("Created", path, "Container created"), "{path}");
        assert!(has("Started", path, "Container started"), "{path}");
    }
    assert!(
        has(
            "Killing",
            "spec.containers{httpd}",
            "Stopping container httpd"
        ),
        "{seen:#?}"
    );
    if let Some(refused) = cluster.node_refusals() {
        assert!(refused.is_empty(), "{refused:#?}");
    }
}

/// kubelet's admission and deadlines: a pod that does not fit the node's allocatable
/// CPU, one whose nodeSelector the node does not match and one that wants a host port
/// another pod holds are failed with kubelet's reasons and never started; a pod past
/// its activeDeadlineSeconds is stopped and failed with DeadlineExceeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_refusals_and_active_deadlines() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::PostParams;
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("admit").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    let mut node = lab.add_node("w1").unwrap();
    node.import_busybox().unwrap();
    start_agent(&cluster, &fwd.url, &mut node, &[]);
    let admin = cluster.admin().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let create = async |name: &str, spec: serde_json::Value| {
        let pod: Pod =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec}))
                .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        cluster.bind_pod("default", name, "w1").await.unwrap();
    };
    let sleeper = |extra: serde_json::Value| {
        let mut c =
            serde_json::json!({"name": "c", "image": "busybox:1.36", "command": ["sleep", "600"]});
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        c
    };
    create("holder", serde_json::json!({"terminationGracePeriodSeconds": 1,
        "containers": [sleeper(serde_json::json!({"ports": [{"containerPort": 8080, "hostPort": 18080}]}))]})).await;
    let phase_of = async |name: &str| -> Option<(String, String, String)> {
        let s = pods.get(name).await.ok()?.status?;
        Some((
            s.phase.unwrap_or_default(),
            s.reason.unwrap_or_default(),
            s.message.unwrap_or_default(),
        ))
    };
    wait_for("holder running", Duration::from_secs(30), async || {
        phase_of("holder").await.filter(|p| p.0 == "Running")
    })
    .await;
    create("greedy", serde_json::json!({"containers": [sleeper(serde_json::json!({"resources": {"requests": {"cpu": "1000"}}}))]})).await;
    create("elsewhere", serde_json::json!({"nodeSelector": {"zone": "mars"}, "containers": [sleeper(serde_json::json!({}))]})).await;
    create("clash", serde_json::json!({"containers": [sleeper(serde_json::json!({"ports": [{"containerPort": 80, "hostPort": 18080}]}))]})).await;
    create(
        "deadline",
        serde_json::json!({"activeDeadlineSeconds": 3, "terminationGracePeriodSeconds": 1,
        "containers": [sleeper(serde_json::json!({}))]}),
    )
    .await;
    for (name, reason, words) in [
        (
            "greedy",
            "OutOfcpu",
            "Node didn't have enough resource: cpu, requested: 1000000",
        ),
        (
            "elsewhere",
            "NodeAffinity",
            "didn't match Pod's node affinity/selector",
        ),
        ("clash", "NodePorts", "TCP 0.0.0.0:18080"),
    ] {
        let (phase, r, message) = wait_for(name, Duration::from_secs(30), async || {
            phase_of(name).await.filter(|p| p.0 == "Failed")
        })
        .await;
        assert_eq!(
            (phase.as_str(), r.as_str()),
            ("Failed", reason),
            "{name}: {message}"
        );
        assert!(
            message.starts_with("Pod was rejected: ") && message.contains(words),
            "{name}: {message}"
        );
        let p = pods.get(name).await.unwrap();
        assert!(
            p.status.unwrap().container_statuses.is_none(),
            "{name} never ran"
        );
    }
    let (_, reason, message) = wait_for("deadline failed", Duration::from_secs(30), async || {
        phase_of("deadline").await.filter(|p| p.0 == "Failed")
    })
    .await;
    assert_eq!(reason, "DeadlineExceeded");
    assert_eq!(
        message,
        "Pod was active on the node longer than the specified deadline"
    );
    wait_for(
        "the deadline pod's container stopped",
        Duration::from_secs(30),
        async || {
            let p = pods.get("deadline").await.ok()?;
            let c = p.status?.container_statuses?.into_iter().next()?;
            c.state?.terminated.map(|_| ())
        },
    )
    .await;
    // The holder is untouched.
    assert_eq!(phase_of("holder").await.unwrap().0, "Running");
    let log = node.kernlet_log();
    assert!(
        !log.contains("container started pod=default/greedy"),
        "{log}"
    );
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(admin.clone(), "default");
    let list = events.list(&Default::default()).await.unwrap().items;
    assert!(
        list.iter()
            .any(|e| e.involved_object.name.as_deref() == Some("greedy")
                && e.reason.as_deref() == Some("OutOfcpu")
                && e.type_.as_deref() == Some("Warning")),
        "{list:#?}"
    );
    if let Some(refused) = cluster.node_refusals() {
        assert!(refused.is_empty(), "{refused:#?}");
    }
}

/// Volumes stay current while the pod runs: a configMap change reaches the mounted
/// files within one sync period (swapped whole through `..data`), and the service
/// account token is replaced before it expires (tokens live 20 s in the in-memory
/// cluster; with a real one only the configMap part runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_maps_and_tokens_are_refreshed_in_running_pods() {
    use base64::Engine as _;
    use k8s_openapi::api::core::v1::{ConfigMap, Pod};
    use kube::api::{Patch, PatchParams, PostParams};
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    if let Some(s) = cluster.in_memory() {
        s.set_token_lifetime(Duration::from_secs(20));
    }
    let mut lab = Lab::new("refresh").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    let mut node = lab.add_node("w1").unwrap();
    node.import_busybox().unwrap();
    start_agent(&cluster, &fwd.url, &mut node, &["--sync-frequency", "2"]);
    let admin = cluster.admin().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), "default");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(
            serde_json::json!({"metadata": {"name": "live"}, "data": {"greeting": "v1"}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "reader"},
        "spec": {"terminationGracePeriodSeconds": 1,
                 "volumes": [{"name": "cfg", "configMap": {"name": "live"}}],
                 "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "600"],
                                 "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    cluster.bind_pod("default", "reader", "w1").await.unwrap();
    wait_for("reader running", Duration::from_secs(30), async || {
        let p = pods.get("reader").await.ok()?;
        p.status?
            .container_statuses?
            .into_iter()
            .next()?
            .state?
            .running
            .map(|_| ())
    })
    .await;
    let read = |path: &str| -> String {
        let t0 = Instant::now();
        let out = std::process::Command::new(kernlet_tests::simnode::kernlet_bin().unwrap())
            .args(["exec", "default/reader", "--state-dir"])
            .arg(node.dir("state"))
            .args(["--", "cat", path])
            .output()
            .unwrap();
        assert!(
            out.status.success() && t0.elapsed() < Duration::from_secs(10),
            "kernlet exec cat {path}: {} after {:?}: {}",
            out.status,
            t0.elapsed(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let token_path = "/var/run/secrets/kubernetes.io/serviceaccount/token";
    assert_eq!(tokio::task::block_in_place(|| read("/cfg/greeting")), "v1");
    let first = tokio::task::block_in_place(|| read(token_path));
    let exp = {
        let body = first.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(body)
                .unwrap(),
        )
        .unwrap();
        claims["exp"].as_i64().unwrap()
    };
    cms.patch(
        "live",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"greeting": "v2"}})),
    )
    .await
    .unwrap();
    let changed = Instant::now();
    while tokio::task::block_in_place(|| read("/cfg/greeting")) != "v2" {
        assert!(
            changed.elapsed() < Duration::from_secs(15),
            "the new greeting never reached the volume\n{}",
            node.kernlet_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        changed.elapsed() < Duration::from_secs(10),
        "within a sync period (2 s here), with room for a loaded machine: {:?}\n{}",
        changed.elapsed(),
        node.kernlet_log()
    );
    // Token renewal needs tokens that live seconds, which only the in-memory control
    // plane issues (a real one never goes below an hour).
    if cluster.in_memory().is_none() {
        return;
    }
    let waiting = Instant::now();
    loop {
        let now = tokio::task::block_in_place(|| read(token_path));
        if !now.is_empty() && now != first {
            break;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(30),
            "the token was never replaced: still {:?}\n{}",
            now.get(..40),
            node.kernlet_log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        k8s_openapi::jiff::Timestamp::now().as_second() < exp,
        "the token is replaced before it expires"
    );
    if let Some(refused) = cluster.node_refusals() {
        assert!(refused.is_empty(), "{refused:#?}");
    }
}

/// One status, reduced to what kubelet's sequence is compared on: phase, the
/// Initialized/Ready/ContainersReady conditions with their reasons, and per container
/// its state and last state (kind and reason), exit code, restart count, ready,
/// started and message (the pod's uid taken out).
fn lifecycle_summary(status: &serde_json::Value, uid: &str) -> Option<String> {
    let conditions = status["conditions"].as_array()?;
    // Not yet written by a node (the apiserver's own, with PodScheduled only).
    if !conditions.iter().any(|c| c["type"] == "Initialized") {
        return None;
    }
    let mut out = vec![status["phase"].as_str().unwrap_or("").to_string()];
    for c in conditions {
        let t = c["type"].as_str().unwrap_or("");
        if matches!(t, "Initialized" | "Ready" | "ContainersReady") {
            out.push(format!(
                "{t}={}/{}",
                c["status"].as_str().unwrap_or(""),
                c["reason"].as_str().unwrap_or("")
            ));
        }
    }
    for list in ["initContainerStatuses", "containerStatuses"] {
        for c in status[list].as_array().into_iter().flatten() {
            let kind = |s: &serde_json::Value| {
                s.as_object()
                    .and_then(|m| m.iter().next())
                    .map(|(k, v)| {
                        format!(
                            "{k}/{}/{}/{}",
                            v["reason"].as_str().unwrap_or(""),
                            v["exitCode"]
                                .as_i64()
                                .map(|c| c.to_string())
                                .unwrap_or_default(),
                            v["message"].as_str().unwrap_or("").replace(uid, "UID")
                        )
                    })
                    .unwrap_or_default()
            };
            out.push(format!(
                "{}:{} last={} rc={} ready={} started={}",
                c["name"].as_str().unwrap_or(""),
                kind(&c["state"]),
                kind(&c["lastState"]),
                c["restartCount"],
                c["ready"],
                c["started"]
            ));
        }
    }
    Some(out.join(" | "))
}

/// The six pods of `kubelet/lifecycle-pods.yaml` (exit 0, exit 3 with
/// FallbackToLogsOnError, a crash loop, a failing readiness probe, a liveness restart,
/// a failing init container), run by kernlet: every status it writes is one the real
/// kubelet wrote for that pod (`kubelet/watch-lifecycle.jsonl`), in the same order, and
/// each pod reaches the states that matter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_statuses_follow_kubelets_sequence() {
    use futures::StreamExt as _;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::PostParams;
    use std::collections::BTreeMap;
    // What the real kubelet wrote, per pod, until the pod was deleted.
    let mut kubelet: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let text = std::fs::read_to_string(
        kernlet_tests::fixtures::dir().join("kubelet/watch-lifecycle.jsonl"),
    )
    .unwrap();
    for line in text.lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        let o = &e["object"];
        if o["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        let uid = o["metadata"]["uid"].as_str().unwrap();
        if let Some(s) = lifecycle_summary(&o["status"], uid) {
            let seq = kubelet
                .entry(o["metadata"]["name"].as_str().unwrap().to_string())
                .or_default();
            if seq.last() != Some(&s) {
                seq.push(s);
            }
        }
    }
    assert_eq!(kubelet.len(), 6);

    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("life").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    let mut node = lab.add_node("w1").unwrap();
    node.import_busybox().unwrap();
    start_agent(&cluster, &fwd.url, &mut node, &[]);
    let admin = cluster.admin().await.unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(
        &std::fs::read_to_string(
            kernlet_tests::fixtures::dir().join("kubelet/lifecycle-pods.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    let ns_api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(admin.clone());
    ns_api
        .create(
            &PostParams::default(),
            &serde_json::from_value(docs[0].clone()).unwrap(),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "life");
    // Every status kernlet writes, in order.
    let ours = std::sync::Arc::new(std::sync::Mutex::new(
        Vec::<(String, serde_json::Value)>::new(),
    ));
    let recorder = {
        let (ours, pods) = (ours.clone(), pods.clone());
        tokio::spawn(async move {
            let mut stream = kube::runtime::watcher(pods, Default::default()).boxed();
            while let Some(Ok(e)) = stream.next().await {
                if let kube::runtime::watcher::Event::Apply(p) = e {
                    let v = serde_json::to_value(&p).unwrap();
                    ours.lock()
                        .unwrap()
                        .push((p.metadata.name.unwrap_or_default(), v));
                }
            }
        })
    };
    for doc in &docs[1..] {
        let mut pod = doc.clone();
        let name = pod["metadata"]["name"].as_str().unwrap().to_string();
        pod["spec"].as_object_mut().unwrap().remove("nodeName");
        // The same image, from this node's store; short grace periods so the liveness
        // restart comes quickly (neither shows in a status).
        pod["spec"]["terminationGracePeriodSeconds"] = serde_json::json!(2);
        for list in ["containers", "initContainers"] {
            for c in pod["spec"][list].as_array_mut().into_iter().flatten() {
                c["image"] = serde_json::json!("busybox:1.36");
            }
        }
        pods.create(
            &PostParams::default(),
            &serde_json::from_value(pod).unwrap(),
        )
        .await
        .unwrap();
        cluster.bind_pod("life", &name, "w1").await.unwrap();
    }
    // Until every pod reached its telling state (the crash loop's second back-off
    // takes longest), within the restart counts kubelet's recording covers.
    let milestones: [(&str, &str); 8] = [
        ("exit0", "Succeeded | Initialized=True/PodCompleted"),
        // The states kubelet reports on their own: the first status, before the
        // sandbox; a container's exit, before its restart.
        (
            "exit0",
            "Pending | Initialized=True/ | Ready=False/ContainersNotReady | ContainersReady=False/ContainersNotReady | c:waiting/ContainerCreating//",
        ),
        ("crash", "c:terminated/Error/1/ last= rc=0"),
        ("exit3", "c:terminated/Error/3/failing\n"),
        ("crash", "c:waiting/CrashLoopBackOff//back-off 20s"),
        (
            "notready",
            "c:running/// last= rc=0 ready=false started=true",
        ),
        ("liveness", "c:running/// last=terminated/Error"),
        ("initfail", "init:waiting/CrashLoopBackOff//back-off 20s"),
    ];
    let summarize = |all: &[(String, serde_json::Value)]| {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, p) in all {
            let uid = p["metadata"]["uid"].as_str().unwrap_or("");
            if let Some(s) = lifecycle_summary(&p["status"], uid) {
                let seq = m.entry(name.clone()).or_default();
                if seq.last() != Some(&s) {
                    seq.push(s);
                }
            }
        }
        m
    };
    let started = Instant::now();
    let seen = loop {
        let seen = summarize(&ours.lock().unwrap());
        let missing: Vec<&str> = milestones
            .iter()
            .filter(|(pod, words)| {
                !seen
                    .get(*pod)
                    .is_some_and(|seq| seq.iter().any(|s| s.contains(words)))
            })
            .map(|(pod, _)| *pod)
            .collect();
        if missing.is_empty() {
            break seen;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "never reached: {missing:?}\n{seen:#?}\n{}",
            node.kernlet_log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for (pod, seq) in &seen {
        let theirs = &kubelet[pod];
        let mut at = 0;
        for s in seq {
            // Past kubelet's recording (more restarts than it saw): not compared.
            if s.contains("rc=4") || s.contains("rc=5") {
                break;
            }
            let found = theirs[at..].iter().position(|t| t == s);
            assert!(
                found.is_some(),
                "{pod}: kernlet wrote\n  {s}\nwhich kubelet never wrote at this point; kubelet's sequence from here:\n  {}\nkernlet's:\n  {}",
                theirs[at..].join("\n  "),
                seq.join("\n  ")
            );
            at += found.unwrap_or(0);
        }
    }

    // Deleted: each pod's last status before its object goes is the one kubelet wrote
    // last (terminal phase, terminated states, conditions) for the pods its recording
    // saw deleted.
    let mut kubelet_last: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        let o = &e["object"];
        if o["metadata"]["deletionTimestamp"].is_string() {
            kubelet_last.insert(
                o["metadata"]["name"].as_str().unwrap().to_string(),
                terminal_summary(&o["status"]),
            );
        }
    }
    let deleted_by_kubelet = ["exit0", "exit3", "crash", "notready", "initfail"];
    for name in deleted_by_kubelet {
        pods.delete(name, &Default::default()).await.unwrap();
    }
    wait_for(
        "the deleted pods gone",
        Duration::from_secs(60),
        async || {
            let left = pods.list(&Default::default()).await.ok()?.items;
            left.iter()
                .all(|p| p.metadata.name.as_deref() == Some("liveness"))
                .then_some(())
        },
    )
    .await;
    recorder.abort();
    let ours = ours.lock().unwrap().clone();
    for name in deleted_by_kubelet {
        let last = ours
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, p)| terminal_summary(&p["status"]));
        assert_eq!(
            last.as_deref(),
            Some(kubelet_last[name].as_str()),
            "{name}: the last status before the pod went\n{}",
            node.kernlet_log()
        );
    }
    if let Some(refused) = cluster.node_refusals() {
        assert!(refused.is_empty(), "{refused:#?}");
    }
}

/// The parts of a pod's status that tell how it ended: phase, kubelet's conditions,
/// each container's state (kind, reason, exit code).
fn terminal_summary(status: &serde_json::Value) -> String {
    let mut out = vec![status["phase"].as_str().unwrap_or("").to_string()];
    for c in status["conditions"].as_array().into_iter().flatten() {
        let t = c["type"].as_str().unwrap_or("");
        if t != "PodScheduled" {
            out.push(format!(
                "{t}={}/{}",
                c["status"].as_str().unwrap_or(""),
                c["reason"].as_str().unwrap_or("")
            ));
        }
    }
    for list in ["initContainerStatuses", "containerStatuses"] {
        for c in status[list].as_array().into_iter().flatten() {
            let (kind, v) = c["state"]
                .as_object()
                .and_then(|m| m.iter().next())
                .map(|(k, v)| (k.clone(), v.clone()))
                .unwrap_or_default();
            out.push(format!(
                "{}:{kind}/{}/{}",
                c["name"].as_str().unwrap_or(""),
                v["reason"].as_str().unwrap_or(""),
                v["exitCode"]
            ));
        }
    }
    out.join(" | ")
}

/// Static pods next to the apiserver's (`--manifests` with `--kubeconfig`): run as
/// `<name>-<node>`, each with a mirror pod owned by the Node and carrying the status;
/// a mirror deleted by someone comes back without the pod restarting; a removed
/// manifest stops the pod and takes its mirror away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_pods_get_mirror_pods() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::DeleteParams;
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("mirror").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    let mut node = lab.add_node("w1").unwrap();
    node.import_busybox().unwrap();
    let dir = node.dir("static");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("web.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: kube-system, labels: {tier: control}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {name: c, image: busybox:1.36, command: [sleep, '600']}\n",
    )
    .unwrap();
    let d = dir.display().to_string();
    start_agent(&cluster, &fwd.url, &mut node, &["--manifests", &d]);
    let admin = cluster.admin().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "kube-system");
    let running = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.state.as_ref()?.running.as_ref())
            .is_some()
    };
    let mirror = wait_for(
        "the mirror pod with the status",
        Duration::from_secs(30),
        async || pods.get_opt("web-w1").await.ok()?.filter(|p| running(p)),
    )
    .await;
    let a = mirror.metadata.annotations.clone().unwrap();
    assert_eq!(
        a.get("kubernetes.io/config.source").map(String::as_str),
        Some("file")
    );
    assert!(a.contains_key("kubernetes.io/config.mirror"));
    assert_eq!(
        mirror.spec.as_ref().unwrap().node_name.as_deref(),
        Some("w1")
    );
    let owner = &mirror.metadata.owner_references.clone().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Node", "w1"));
    let first_id = mirror.status.clone().unwrap().container_statuses.unwrap()[0]
        .container_id
        .clone();
    // Deleted by someone: back again, and the pod kept running.
    pods.delete("web-w1", &DeleteParams::default())
        .await
        .unwrap();
    let old_uid = mirror.metadata.uid.clone();
    let again = wait_for(
        "the mirror pod again",
        Duration::from_secs(30),
        async || {
            pods.get_opt("web-w1")
                .await
                .ok()?
                .filter(|p| p.metadata.uid != old_uid && running(p))
        },
    )
    .await;
    assert_eq!(
        again.status.unwrap().container_statuses.unwrap()[0].container_id,
        first_id,
        "the same container, not restarted"
    );
    // The manifest goes: the pod stops and the mirror goes.
    std::fs::remove_file(dir.join("web.yaml")).unwrap();
    wait_for("the mirror pod gone", Duration::from_secs(30), async || {
        pods.get_opt("web-w1").await.ok()?.is_none().then_some(())
    })
    .await;
    wait_for(
        "the static pod stopped",
        Duration::from_secs(30),
        async || {
            (std::fs::read_dir(node.dir("state").join("pods"))
                .map(|d| d.count())
                .unwrap_or(0)
                == 0)
                .then_some(())
        },
    )
    .await;
    if let Some(refused) = cluster.node_refusals() {
        assert!(refused.is_empty(), "{refused:#?}");
    }
}

/// The names of kernlet's pod worker threads (`pod-<uid prefix>`).
fn pod_workers(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|c| c.trim().to_string())
                .filter(|c| c.starts_with("pod-"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A worker per pod: a pod whose volume waits on a stalled apiserver read holds up no
/// other pod, and each pod's worker ends with the pod. (In-memory control plane only:
/// it stalls one path of the apiserver.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_stuck_on_its_volumes_holds_up_no_other_pod() {
    use k8s_openapi::api::core::v1::{ConfigMap, Pod};
    use kube::api::{DeleteParams, PostParams};
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let Some(server) = cluster.in_memory() else {
        eprintln!("a real apiserver cannot be stalled: skipped");
        return;
    };
    let mut lab = Lab::new("workers").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    let mut node = lab.add_node("w1").unwrap();
    node.import_busybox().unwrap();
    let pid = start_agent(&cluster, &fwd.url, &mut node, &["--sync-frequency", "2"]);
    let admin = cluster.admin().await.unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "slow"}})).unwrap(),
        )
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), "slow");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(
            serde_json::json!({"metadata": {"name": "cfg"}, "data": {"k": "v"}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    // Reads of configMaps in "slow" take 30 s from now on.
    server.set_stall(Some((
        "/api/v1/namespaces/slow/configmaps",
        Duration::from_secs(30),
    )));
    let slow: Api<Pod> = Api::namespaced(admin.clone(), "slow");
    let stuck: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "stuck"},
        "spec": {"terminationGracePeriodSeconds": 1,
                 "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}],
                 "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "3600"],
                                 "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}]},
    }))
    .unwrap();
    slow.create(&PostParams::default(), &stuck).await.unwrap();
    cluster.bind_pod("slow", "stuck", "w1").await.unwrap();
    wait_for(
        "the stuck pod's worker",
        Duration::from_secs(20),
        async || (pod_workers(pid).len() == 1).then_some(()),
    )
    .await;
    // Its worker now waits on the read; another pod starts meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let started = std::time::Instant::now();
    let free: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "free"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [
            {"name": "c", "image": "busybox:1.36", "command": ["sleep", "3600"]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &free).await.unwrap();
    cluster.bind_pod("default", "free", "w1").await.unwrap();
    wait_for(
        "the free pod running",
        Duration::from_secs(20),
        async || {
            let p = pods.get("free").await.ok()?;
            (p.status?.phase.as_deref() == Some("Running")).then_some(())
        },
    )
    .await;
    // Behind the stuck read it would have waited 28 s or more.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the free pod waited {:?} behind the stuck one",
        started.elapsed()
    );
    let phase = slow
        .get("stuck")
        .await
        .unwrap()
        .status
        .and_then(|s| s.phase);
    assert_ne!(
        phase.as_deref(),
        Some("Running"),
        "the stuck pod's volume cannot have been read"
    );
    assert_eq!(pod_workers(pid).len(), 2, "one worker per pod");
    // The stall ends: the stuck pod runs. The free pod goes: so does its worker.
    server.set_stall(None);
    pods.delete("free", &DeleteParams::default()).await.unwrap();
    wait_for(
        "the stuck pod running",
        Duration::from_secs(90),
        async || {
            let p = slow.get("stuck").await.ok()?;
            (p.status?.phase.as_deref() == Some("Running")).then_some(())
        },
    )
    .await;
    wait_for(
        "the free pod's worker gone",
        Duration::from_secs(30),
        async || (pod_workers(pid).len() == 1).then_some(()),
    )
    .await;
    drop(fwd);
}

/// DiskPressure from a real reading: the state directory's filesystem (a 64 MiB tmpfs)
/// filled past `nodefs.available<10%` sets the condition with kubelet's reason, and
/// freeing it clears it (after the transition period, here 0s); meanwhile a new pod is
/// rejected (Evicted, kubelet's message); the hard thresholds also leave allocatable
/// storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_pressure_follows_the_nodes_filesystem() {
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("pressure").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    let mut node = lab.add_node("p1").unwrap();
    let state = state_on_tmpfs(&node);
    start_agent(
        &cluster,
        &fwd.url,
        &mut node,
        &[
            "--node-status-update-frequency",
            "1",
            "--eviction-pressure-transition-period",
            "0s",
            "--eviction-hard",
            "memory.available<1Mi,nodefs.available<10%",
        ],
    );
    let nodes: Api<Node> = Api::all(cluster.admin().await.unwrap());
    let disk = async || {
        let n = nodes.get_opt("p1").await.ok()??;
        let status = n.status?;
        let c = status
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "DiskPressure")?;
        let allocatable = status.allocatable?.get("ephemeral-storage")?.0.clone();
        Some((c.status, c.reason.unwrap_or_default(), allocatable))
    };
    let (status, reason, allocatable) =
        wait_for("DiskPressure False", Duration::from_secs(20), async || {
            disk().await.filter(|d| d.0 == "False")
        })
        .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "KubeletHasNoDiskPressure")
    );
    let amount = |q: &str| {
        kernlet::model::quantity::Quantity::parse(q)
            .unwrap()
            .value()
    };
    assert_eq!(amount(&allocatable), amount("64Mi") - amount("64Mi") / 10);
    // 60 of 64 MiB used: below 10 % available.
    std::fs::write(state.join("filler"), vec![0u8; 60 << 20]).unwrap();
    let (_, reason, _) = wait_for("DiskPressure True", Duration::from_secs(20), async || {
        disk().await.filter(|d| d.0 == "True")
    })
    .await;
    assert_eq!(reason, "KubeletHasDiskPressure");
    // `kernlet status` shows the readings beside the thresholds.
    let st = node.status_json().unwrap();
    let nodefs = st["eviction"]["signals"]
        .as_array()
        .unwrap_or_else(|| panic!("{st:#}"))
        .iter()
        .find(|s| s["signal"] == "nodefs.available")
        .unwrap()
        .clone();
    assert_eq!(nodefs["crossed"], true, "{nodefs}");
    assert_eq!(nodefs["threshold"], (64u64 << 20) / 10, "{nodefs}");
    assert_eq!(st["eviction"]["conditions"][0], "DiskPressure", "{st:#}");
    // Under disk pressure a pod bound to the node is rejected as kubelet's eviction
    // admission rejects it.
    let admin = cluster.admin().await.unwrap();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(admin, "default");
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "late"},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "command": ["true"]}]},
    }))
    .unwrap();
    pods.create(&Default::default(), &pod).await.unwrap();
    cluster.bind_pod("default", "late", "p1").await.unwrap();
    let rejected = wait_for("the pod rejected", Duration::from_secs(20), async || {
        let s = pods.get("late").await.ok()?.status?;
        (s.phase.as_deref() == Some("Failed")).then_some(s)
    })
    .await;
    assert_eq!(rejected.reason.as_deref(), Some("Evicted"));
    assert_eq!(
        rejected.message.as_deref(),
        Some("Pod was rejected: The node had condition: [DiskPressure]. ")
    );
    std::fs::remove_file(state.join("filler")).unwrap();
    wait_for(
        "DiskPressure False again",
        Duration::from_secs(20),
        async || disk().await.filter(|d| d.0 == "False"),
    )
    .await;
    assert!(node.kernlet_log().contains("eviction thresholds crossed"));
    assert!(node.kernlet_running(), "{}", node.kernlet_log());
}

/// The Lease is renewed with one request, from the object the last renewal returned,
/// as kubelet renews it (a GET only to start or after a failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_renewed_with_one_request() {
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("leaseput").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    let mut node = lab.add_node("l1").unwrap();
    start_agent(&cluster, &fwd.url, &mut node, &[]);
    let leases: Api<Lease> = Api::namespaced(cluster.admin().await.unwrap(), "kube-node-lease");
    let first = wait_for("the lease", Duration::from_secs(20), async || {
        renew_time(&leases, "l1").await
    })
    .await;
    let path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/l1";
    let start = (
        cluster.requests_to("GET", path),
        cluster.requests_to("PUT", path),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Counted before this test's own GET below.
    let end = (
        cluster.requests_to("GET", path),
        cluster.requests_to("PUT", path),
    );
    let later = renew_time(&leases, "l1").await.unwrap();
    assert!(later > first, "renewed every 300 ms");
    if let ((Some(g0), Some(p0)), (Some(g1), Some(p1))) = (start, end) {
        assert!(p1 - p0 >= 5, "PUTs {p0} → {p1}");
        assert_eq!(g1, g0, "no GET while renewals succeed");
    }
    assert!(node.kernlet_running(), "{}", node.kernlet_log());
}

/// `--config` reads a KubeletConfiguration as kubelet does: its maxPods and
/// registerWithTaints reach the Node, a flag given beside it wins, and a field kernlet
/// does not implement is named at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_configuration_file_configures_the_node() {
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("kconfig").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    let mut node = lab.add_node("c1").unwrap();
    let file = node.dir("state").join("kubelet-config.yaml");
    std::fs::write(
        &file,
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nmaxPods: 7\n\
         nodeStatusUpdateFrequency: 1s\ncgroupDriver: systemd\n\
         registerWithTaints:\n- {key: example.com/dedicated, value: tests, effect: NoSchedule}\n\
         kubeReserved: {cpu: 100m}\n",
    )
    .unwrap();
    let f = file.display().to_string();
    start_agent(
        &cluster,
        &fwd.url,
        &mut node,
        &["--config", &f, "--kube-reserved", "cpu=500m"],
    );
    let nodes: Api<Node> = Api::all(cluster.admin().await.unwrap());
    let n = wait_for(
        "the node with its allocatable",
        Duration::from_secs(20),
        async || {
            let n = nodes.get_opt("c1").await.ok()??;
            n.status.as_ref()?.allocatable.as_ref()?;
            Some(n)
        },
    )
    .await;
    let allocatable = n.status.unwrap().allocatable.unwrap();
    assert_eq!(allocatable["pods"].0, "7");
    let cpus = std::thread::available_parallelism().unwrap().get() as i128;
    let cpu = kernlet::model::quantity::Quantity::parse(&allocatable["cpu"].0)
        .unwrap()
        .milli();
    assert_eq!(
        cpu,
        cpus * 1000 - 500,
        "the flag's 500m, not the file's 100m"
    );
    let taints = n.spec.unwrap().taints.unwrap_or_default();
    assert!(
        taints
            .iter()
            .any(|t| t.key == "example.com/dedicated" && t.value.as_deref() == Some("tests")),
        "{taints:?}"
    );
    assert!(
        node.kernlet_log()
            .contains("does not implement cgroupDriver"),
        "{}",
        node.kernlet_log()
    );
}

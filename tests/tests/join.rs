//! `kernlet join` on a SimNode (root): kubeadm token discovery and TLS bootstrap against
//! the control plane over the lab underlay, then the node runs with its new identity;
//! wrong tokens, pins and addresses are refused with the cause and nothing is written.

#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot go on should stop loudly"
)]

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Node;
use kernlet_tests::cluster::Cluster;
use kernlet_tests::simnode::{BRIDGE_IP, Lab, kernlet_bin};
use kube::api::{Api, ListParams};

/// The CA pin computed the way the kubeadm docs show, with openssl.
fn openssl_pin(ca_pem: &str) -> String {
    let mut child = Command::new("sh")
        .args([
            "-c",
            "openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ca_pem.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "sha256:{}",
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_bootstraps_credentials_then_runs_the_node() {
    // Client certificates live 40 s here, so rotation (at 70–90 % of that) is seen;
    // watches end every 8–16 s, so the node watches again after each expiry. In real
    // mode: the controller-manager's signing duration, the apiserver's minimum request
    // timeout.
    let lifetimes = kernlet_tests::real::Lifetimes {
        certificates: Some(Duration::from_secs(40)),
        watches: Some(Duration::from_secs(8)),
    };
    let cluster = Cluster::start_short_lived(&[BRIDGE_IP.into()], lifetimes)
        .await
        .unwrap();
    let mut lab = Lab::new("join").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    let mut node = lab.add_node("j1").unwrap();
    node.import_busybox().unwrap();
    // The cluster's KubeletConfiguration sets maxPods: the joined node runs with it.
    let admin = cluster.admin().await.unwrap();
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(admin.clone(), "kube-system");
    let mut cm = cms.get("kubelet-config").await.unwrap();
    let data = cm.data.get_or_insert_with(Default::default);
    let kubelet = data.get("kubelet").cloned().unwrap_or_default();
    data.insert(
        "kubelet".into(),
        format!("{}\nmaxPods: 42\n", kubelet.trim_end()),
    );
    cms.replace("kubelet-config", &Default::default(), &cm)
        .await
        .unwrap();
    let endpoint = format!("{BRIDGE_IP}:{}", fwd.port());
    let pin = openssl_pin(cluster.ca_pem());
    node.start_kernlet(&[
        "join",
        &endpoint,
        "--token",
        cluster.bootstrap_token(),
        "--discovery-token-ca-cert-hash",
        &pin,
        "--node-name",
        "j1",
        "--node-lease-renew-interval-ms",
        "300",
    ])
    .unwrap();

    let nodes: Api<Node> = Api::all(admin.clone());
    let start = Instant::now();
    while nodes.get_opt("j1").await.unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "j1 never registered:\n{}",
            node.kernlet_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let state = node.dir("state");
    for (file, mode) in [
        ("kubelet.kubeconfig", 0o600),
        ("pki/kubelet-client.key", 0o600),
    ] {
        let meta = std::fs::metadata(state.join(file)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
    }
    let csrs: Api<CertificateSigningRequest> = Api::all(admin);
    let list = csrs.list(&ListParams::default()).await.unwrap();
    let csr = list
        .items
        .iter()
        .find(|c| c.spec.username.as_deref() == Some("system:bootstrap:abcdef"))
        .expect("a CSR from the bootstrap token");
    assert_eq!(
        csr.spec.signer_name,
        "kubernetes.io/kube-apiserver-client-kubelet"
    );
    assert!(
        csr.status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Approved")
    );
    // The node registered with its own identity (NodeRestriction only lets
    // system:node:j1 create Node j1), and keeps running.
    assert!(node.kernlet_running());
    assert!(
        node.kernlet_log()
            .contains("joined: node credentials written")
    );
    // The cluster's kubelet settings (from kube-system/kubelet-config) are kept.
    let settings: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("cluster-settings.json")).unwrap())
            .unwrap();
    assert_eq!(settings["clusterDNS"], serde_json::json!(["10.96.0.10"]));
    assert_eq!(settings["clusterDomain"], "cluster.local");
    // ...and the whole KubeletConfiguration, as kubeadm's config.yaml, with the CA the
    // join wrote; the node runs with it (maxPods 42).
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("config.yaml")).unwrap()).unwrap();
    assert_eq!(
        config["authentication"]["x509"]["clientCAFile"],
        state.join("pki/ca.crt").display().to_string()
    );
    assert_eq!(config["maxPods"], 42);
    let pods_capacity = async || {
        let n = nodes.get("j1").await.ok()?;
        Some(n.status?.capacity?.get("pods")?.0.clone())
    };
    let start = Instant::now();
    while pods_capacity().await.as_deref() != Some("42") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "capacity pods {:?}\n{}",
            pods_capacity().await,
            node.kernlet_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...and in effect on this very first run: a ClusterFirst pod resolves through the
    // cluster DNS (the settings are saved during the join, after the node's flags were
    // read).
    cluster_first_dns_on_the_first_run(&cluster, &node).await;

    client_certificate_rotation(&cluster, &node, &csrs).await;
    if let Some(refused) = cluster.node_refusals() {
        assert!(refused.is_empty(), "{refused:#?}");
    }
    assert!(node.stop_kernlet(Duration::from_secs(5)).unwrap().success());
}

/// A pod with the default dnsPolicy (ClusterFirst) on `node` gets the cluster's DNS.
async fn cluster_first_dns_on_the_first_run(
    cluster: &Cluster,
    node: &kernlet_tests::simnode::SimNode,
) {
    use k8s_openapi::api::core::v1::Pod;
    let pods: Api<Pod> = Api::namespaced(cluster.admin().await.unwrap(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "dns-first-run"},
        "spec": {"nodeName": "j1", "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "600"]}]},
    }))
    .unwrap();
    pods.create(&Default::default(), &pod).await.unwrap();
    let start = Instant::now();
    let resolv = loop {
        let out = Command::new(kernlet_bin().unwrap())
            .args(["exec", "default/dns-first-run", "--state-dir"])
            .arg(node.dir("state"))
            .args(["--", "cat", "/etc/resolv.conf"])
            .output()
            .unwrap();
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the pod never ran: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            node.kernlet_log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    pods.delete("dns-first-run", &Default::default())
        .await
        .unwrap();
}

fn kubeconfig_cert(node: &kernlet_tests::simnode::SimNode) -> Vec<u8> {
    let path = node.dir("state").join("kubelet.kubeconfig");
    let kc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    kernlet::controllers::client_cert::client_certificate(&kc, &node.dir("state")).unwrap()
}

/// Before the 40 s certificate expires, kernlet gets a new one through a CSR sent with
/// its own identity (auto-approved as `selfnodeclient`), swaps it in, and keeps renewing
/// its lease after the first certificate is dead.
async fn client_certificate_rotation(
    cluster: &Cluster,
    node: &kernlet_tests::simnode::SimNode,
    csrs: &Api<CertificateSigningRequest>,
) {
    use k8s_openapi::api::coordination::v1::Lease;
    let first = kubeconfig_cert(node);
    let (_, first_expiry) = kernlet::model::csr::validity(&first).unwrap();
    let start = Instant::now();
    let second = loop {
        let now = kubeconfig_cert(node);
        if now != first {
            break now;
        }
        assert!(
            start.elapsed() < Duration::from_secs(45),
            "the client certificate was not rotated:\n{}",
            node.kernlet_log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (from, to) = kernlet::model::csr::validity(&second).unwrap();
    assert!(to > first_expiry && to > from, "{from}..{to}");
    // Not before 70 % of the first certificate's life on this node.
    assert!(
        start.elapsed() >= Duration::from_secs(20),
        "rotated too early"
    );
    let list = csrs.list(&ListParams::default()).await.unwrap();
    let rotation = list
        .items
        .iter()
        .find(|c| {
            c.spec.username.as_deref() == Some("system:node:j1")
                && c.spec.signer_name == "kubernetes.io/kube-apiserver-client-kubelet"
        })
        .expect("a rotation CSR sent with the node's own certificate");
    assert!(
        rotation
            .status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .any(|c| c.type_ == "Approved" && c.reason.as_deref() == Some("AutoApproved"))
    );
    assert!(node.kernlet_log().contains("client certificate rotated"));
    // Past the first certificate's end, the lease is still renewed (new client in use).
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    tokio::time::sleep(Duration::from_secs(
        u64::try_from(first_expiry - now + 2).unwrap_or(0),
    ))
    .await;
    let leases: Api<Lease> = Api::namespaced(cluster.admin().await.unwrap(), "kube-node-lease");
    let after = k8s_openapi::jiff::Timestamp::now();
    let start = Instant::now();
    loop {
        let renewed = leases
            .get("j1")
            .await
            .unwrap()
            .spec
            .and_then(|s| s.renew_time)
            .is_some_and(|t| t.0 > after);
        if renewed {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no renewal after the first certificate expired:\n{}",
            node.kernlet_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The watches moved to the new credentials: a pod made now (the first certificate
    // dead, every watch since renewed) starts; and so after the second rotation.
    pod_starts(cluster, node, "after-first-rotation").await;
    let (_, second_expiry) = kernlet::model::csr::validity(&second).unwrap();
    let start = Instant::now();
    while kubeconfig_cert(node) == second {
        assert!(
            start.elapsed() < Duration::from_secs(45),
            "no second rotation:\n{}",
            node.kernlet_log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    tokio::time::sleep(Duration::from_secs(
        u64::try_from(second_expiry - now + 9).unwrap_or(0),
    ))
    .await;
    pod_starts(cluster, node, "after-second-rotation").await;
    assert!(
        !node.kernlet_log().contains("Unauthorized"),
        "a request went out with an expired certificate:\n{}",
        node.kernlet_log()
    );
}

/// A pod bound to `node` now runs within 60 s.
async fn pod_starts(cluster: &Cluster, node: &kernlet_tests::simnode::SimNode, name: &str) {
    use k8s_openapi::api::core::v1::Pod;
    let pods: Api<Pod> = Api::namespaced(cluster.admin().await.unwrap(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"nodeName": "j1", "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "600"]}]},
    }))
    .unwrap();
    pods.create(&Default::default(), &pod).await.unwrap();
    let start = Instant::now();
    loop {
        let phase = pods
            .get(name)
            .await
            .unwrap()
            .status
            .and_then(|s| s.phase)
            .unwrap_or_default();
        if phase == "Running" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{name} never ran ({phase}):\n{}",
            node.kernlet_log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    pods.delete(name, &Default::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_refuses_bad_tokens_pins_and_addresses_and_writes_nothing() {
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let mut lab = Lab::new("nojoin").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    let node = lab.add_node("x1").unwrap();
    let endpoint = format!("{BRIDGE_IP}:{}", fwd.port());
    let pin = openssl_pin(cluster.ca_pem());
    let wrong_pin = format!("sha256:{}", "0".repeat(64));
    let cases: [(&str, &str, &str, &str); 5] = [
        (
            endpoint.as_str(),
            "abcdef.0123456789abcdee",
            pin.as_str(),
            "wrong --token secret",
        ),
        (
            endpoint.as_str(),
            "zzzzzz.0123456789abcdef",
            pin.as_str(),
            "unknown to the cluster",
        ),
        (
            endpoint.as_str(),
            cluster.bootstrap_token(),
            wrong_pin.as_str(),
            "matches no --discovery-token-ca-cert-hash",
        ),
        (
            "198.18.0.1:1",
            cluster.bootstrap_token(),
            pin.as_str(),
            "cannot reach the apiserver at https://198.18.0.1:1",
        ),
        (
            endpoint.as_str(),
            "not-a-token",
            pin.as_str(),
            "is not a bootstrap token",
        ),
    ];
    for (server, token, hash, want) in cases {
        let out = tokio::task::block_in_place(|| {
            node.command(kernlet_bin().unwrap())
                .args([
                    "join",
                    server,
                    "--token",
                    token,
                    "--discovery-token-ca-cert-hash",
                    hash,
                    "--node-name",
                    "x1",
                ])
                .args(node.kernlet_dir_flags())
                .output()
                .unwrap()
        });
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{want}: {err}");
        assert!(err.contains(want), "expected {want:?} in:\n{err}");
        assert!(
            !node.dir("state").join("kubelet.kubeconfig").exists()
                && !node.dir("state").join("pki").exists(),
            "nothing written after: {want}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_never_issued_or_denied_stops_join_with_what_to_do() {
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let Some(mem) = cluster.in_memory() else {
        return;
    };
    mem.set_csr_auto_approve(false);
    let mut lab = Lab::new("csr").unwrap();
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    let node = lab.add_node("c1").unwrap();
    let endpoint = format!("{BRIDGE_IP}:{}", fwd.port());
    let pin = openssl_pin(cluster.ca_pem());
    let join = |timeout: &str| {
        node.command(kernlet_bin().unwrap())
            .args([
                "join",
                &endpoint,
                "--token",
                cluster.bootstrap_token(),
                "--discovery-token-ca-cert-hash",
                &pin,
                "--node-name",
                "c1",
                "--csr-timeout",
                timeout,
            ])
            .args(node.kernlet_dir_flags())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    let out = tokio::task::block_in_place(|| join("1").wait_with_output().unwrap());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("was not issued within")
            && err.contains("kubectl certificate approve node-csr-"),
        "{err}"
    );

    // An admin denies the next request: join says so and why.
    let csrs: Api<CertificateSigningRequest> = Api::all(cluster.admin().await.unwrap());
    let earlier: Vec<String> = csrs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    let child = join("30");
    let start = Instant::now();
    let pending = loop {
        let list = csrs.list(&ListParams::default()).await.unwrap();
        if let Some(c) = list
            .items
            .into_iter()
            .find(|c| !earlier.contains(c.metadata.name.as_ref().unwrap()))
        {
            break c.metadata.name.unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no pending CSR");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    cluster
        .deny_csr(&pending, "this machine is not in the inventory")
        .await
        .unwrap();
    let out = tokio::task::block_in_place(|| child.wait_with_output().unwrap());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "certificate request {pending} was denied: this machine is not in the inventory"
        )),
        "{err}"
    );
    assert!(!node.dir("state").join("kubelet.kubeconfig").exists());
}

//! A cluster of kernlet nodes to run the upstream end-to-end suite against: the control
//! plane (stock binaries from `KUBEBUILDER_ASSETS`, else the in-memory one), a lab of
//! simulated nodes each running `kernlet run` with the pod network, the overlay and the
//! Service proxy, a registry in the lab holding the images given, and a cluster DNS
//! (`kernlet_tests::dns`). Writes a
//! kubeconfig for use inside the lab's bridge namespace and an e2e registry list, prints
//! how to run `tests/conformance/run-e2e.sh` there, and tears everything down on
//! Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use kernlet_tests::cluster::Cluster;
use kernlet_tests::dns::{CLUSTER_DNS_IP, ClusterDns};
use kernlet_tests::registry::Registry;
use kernlet_tests::simnode::{BRIDGE_IP, Lab};

#[derive(Parser)]
#[command(name = "kernlet-lab", about = "a cluster of simulated kernlet nodes")]
struct Args {
    /// How many kernlet nodes.
    #[arg(long, default_value_t = 2)]
    nodes: u8,
    /// An OCI layout to push to the lab registry, as `LAYOUT=REPOSITORY:TAG`
    /// (repeatable).
    #[arg(long = "image")]
    images: Vec<String>,
    /// The static busybox binary e2e's busybox image is made of. Debian's (1.35) `sh`
    /// drops environment variables whose names are not shell identifiers, which
    /// upstream busybox keeps and some conformance specs rely on: give an upstream
    /// build to run those.
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// Where to write the kubeconfig, the registry list and the node logs' paths.
    #[arg(long, default_value = "target/kernlet-lab")]
    out: PathBuf,
}

/// Approves every pending `kubernetes.io/kubelet-serving` CSR, waiting until each of
/// the `nodes` has one approved.
async fn approve_serving_csrs(cluster: &Cluster, nodes: usize) -> anyhow::Result<()> {
    use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
    let csrs: kube::Api<CertificateSigningRequest> = kube::Api::all(cluster.admin().await?);
    let start = std::time::Instant::now();
    loop {
        let list = csrs.list(&Default::default()).await?;
        let serving: Vec<_> = list
            .items
            .iter()
            .filter(|c| c.spec.signer_name == "kubernetes.io/kubelet-serving")
            .collect();
        let mut pending = 0;
        for c in &serving {
            let decided = c
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| !c.is_empty());
            if !decided {
                pending += 1;
                cluster
                    .approve_csr(c.metadata.name.as_deref().unwrap_or_default())
                    .await?;
            }
        }
        if serving.len() >= nodes && pending == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "the nodes sent no kubelet-serving CSR within 60 s"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// e2e's busybox, pushed from `--busybox` (Debian's busybox-static by default).
const E2E_BUSYBOX: &str = "e2e-test-images/busybox:1.37.0-1";

/// The users and groups of Docker Hub's busybox image, which e2e's is built on.
const E2E_BUSYBOX_PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\nbin:x:2:2:bin:/bin:/bin/false\nsys:x:3:3:sys:/dev:/bin/false\nsync:x:4:100:sync:/bin:/bin/sync\nmail:x:8:8:mail:/var/spool/mail:/bin/false\nwww-data:x:33:33:www-data:/var/www:/bin/false\noperator:x:37:37:Operator:/var:/bin/false\nnobody:x:65534:65534:nobody:/home:/bin/false\n";
const E2E_BUSYBOX_GROUP: &str = "root:x:0:\ndaemon:x:1:\nbin:x:2:\nsys:x:3:\nadm:x:4:\ntty:x:5:\ndisk:x:6:\nlp:x:7:\nmail:x:8:\nkmem:x:9:\nwheel:x:10:root\ncdrom:x:11:\ndialout:x:18:\nfloppy:x:19:\nvideo:x:28:\naudio:x:29:\ntape:x:32:\nwww-data:x:33:\noperator:x:37:\nutmp:x:43:\nplugdev:x:46:\nstaff:x:50:\nlock:x:54:\nnetdev:x:82:\nusers:x:100:\nnogroup:x:65534:\n";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let out = std::fs::canonicalize(&args.out)?;
    let cluster = Cluster::start_scheduled(&[BRIDGE_IP.into()]).await?;
    let mut lab = Lab::new("lab")?;
    // The same port on the bridge as on loopback: the `kubernetes` Service's endpoint
    // (the bridge address, the apiserver's port) reaches it from pods.
    let fwd = lab.forward(cluster.addr().port(), cluster.addr())?;
    let registry_node = lab.add_node("registry")?;
    let registry = Registry::start(&registry_node, None)?;
    let work = registry_node.dir("images");
    std::fs::create_dir_all(&work)?;
    // With the users and groups of the image on Docker Hub (`whoami`, `id -n` of specs).
    let file = |path: &str, content: &str| kernlet_tests::oci::ExtraFile {
        path: path.into(),
        content: content.as_bytes().to_vec(),
        mode: 0o644,
    };
    let busybox = kernlet_tests::oci::busybox_layout_with(
        &work.join("busybox"),
        "1.37.0-1",
        &args.busybox,
        &[
            file("/etc/passwd", E2E_BUSYBOX_PASSWD),
            file("/etc/group", E2E_BUSYBOX_GROUP),
        ],
    )?;
    let (repo, tag) = E2E_BUSYBOX
        .split_once(':')
        .unwrap_or((E2E_BUSYBOX, "latest"));
    registry.push(&registry_node, &busybox, tag, repo)?;
    for image in &args.images {
        let (layout, reference) = image
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--image {image}: expected LAYOUT=REPOSITORY:TAG"))?;
        let (repo, tag) = reference
            .rsplit_once(':')
            .ok_or_else(|| anyhow::anyhow!("--image {image}: the reference has no tag"))?;
        registry.push(&registry_node, std::path::Path::new(layout), tag, repo)?;
    }
    // The cluster DNS pods are given (kube-system/kube-dns at 10.96.0.10).
    let admin = cluster.admin().await?;
    let _dns = ClusterDns::start(&lab, admin.clone(), "cluster.local")?;
    ClusterDns::publish(&admin).await?;
    kernlet_tests::overlay::apply_node_rbac(&cluster)?;
    let mut nodes = Vec::new();
    for i in 1..=args.nodes {
        let mut node = lab.add_node(&format!("n{i}"))?;
        let cgroup = node.cgroup().display().to_string();
        let flags = [
            "--service-proxy",
            "--service-cgroup",
            &cgroup,
            "--insecure-registry",
            &registry.addr,
            "--cluster-dns",
            CLUSTER_DNS_IP,
        ];
        kernlet_tests::overlay::start_overlay_node(&cluster, &fwd.url, &mut node, i, &flags)
            .await?;
        // The control plane (and e2e.test, run in the bridge namespace) reach pods as a
        // control-plane node of a cluster would: a route per node's pod CIDR.
        kernlet_tests::hygiene::ip(&[
            "-n",
            lab.bridge_netns(),
            "route",
            "replace",
            &format!("10.244.{i}.0/24"),
            "via",
            &node.ip().to_string(),
        ])?;
        nodes.push(node);
    }
    // The admin's part on a kubeadm cluster: approving the nodes' serving certificates,
    // without which the apiserver cannot verify kubelets (logs, exec, port-forward).
    approve_serving_csrs(&cluster, usize::from(args.nodes)).await?;
    let kubeconfig = out.join("admin.kubeconfig");
    cluster.kubeconfig_at(
        &fwd.url,
        "kubernetes-admin",
        &["system:masters"],
        &kubeconfig,
    )?;
    let repo_list = out.join("repo-list.yaml");
    std::fs::write(
        &repo_list,
        format!(
            "promoterE2eRegistry: {r}/e2e-test-images\ngcRegistry: {r}\ngcEtcdRegistry: {r}\n\
             dockerLibraryRegistry: {r}/library\nbuildImageRegistry: {r}/build-image\n\
             sigStorageRegistry: {r}/sig-storage\n",
            r = registry.addr
        ),
    )?;
    println!("control plane: {}", cluster.url());
    println!(
        "nodes: {}",
        nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for n in &nodes {
        println!(
            "  {} log: {}",
            n.name,
            n.dir("logs").join("kernlet.log").display()
        );
    }
    println!(
        "registry: {} (images: {E2E_BUSYBOX}, {})",
        registry.addr,
        args.images.join(", ")
    );
    println!("kubeconfig (inside the lab): {}", kubeconfig.display());
    println!(
        "run e2e: KUBE_TEST_REPO_LIST={} nsenter --net=/run/netns/{} tests/conformance/run-e2e.sh E2E_TEST {}",
        repo_list.display(),
        lab.bridge_netns(),
        kubeconfig.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    for mut n in nodes {
        let _ = n.stop_kernlet(Duration::from_secs(10));
    }
    drop(registry);
    Ok(())
}

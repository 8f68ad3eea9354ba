//! The `kernlet` binary: parses flags and hands over to the library.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgGroup, Parser, Subcommand};
use kernlet::config::NodeDirs;
use kernlet::controllers::node::{NodeController, Timing};
use kernlet::model::node::{self, NodeConfig, Readiness};

#[derive(Parser, Debug)]
#[command(
    name = "kernlet",
    version,
    about = "kubelet, kube-proxy and flannel in one daemon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node agent: against an apiserver (--kubeconfig) or standalone.
    Run(RunArgs),
    /// Join a cluster with a kubeadm bootstrap token, then run.
    Join(JoinCmd),
    /// List the pods of this node (from its state directory; works without the daemon).
    Pods {
        #[command(flatten)]
        output: OutputArgs,
        /// The node's state directory.
        #[arg(long, default_value = "/var/lib/kernlet", env = "KERNLET_STATE_DIR")]
        state_dir: PathBuf,
        /// The node's run directory (where the daemon's socket is).
        #[arg(long, default_value = "/run/kernlet", env = "KERNLET_RUN_DIR")]
        run_dir: PathBuf,
    },
    /// Manage the node's image store.
    #[command(subcommand)]
    Image(ImageCmd),
    /// List the containers of the node's pods, running and exited (crictl ps -a; from
    /// the state directory, works without the daemon).
    Ps {
        #[command(flatten)]
        output: OutputArgs,
        /// The node's state directory.
        #[arg(long, default_value = "/var/lib/kernlet", env = "KERNLET_STATE_DIR")]
        state_dir: PathBuf,
        /// The node's run directory (where the daemon's socket is).
        #[arg(long, default_value = "/run/kernlet", env = "KERNLET_RUN_DIR")]
        run_dir: PathBuf,
    },
    /// Show one pod (`[namespace/]name`) or container (ID or a unique prefix): spec,
    /// state, sandbox, process, cgroup and its limits, namespaces, mounts (from the
    /// state directory and the kernel; works without the daemon).
    Inspect {
        /// The pod or container.
        what: String,
        #[command(flatten)]
        output: OutputArgs,
        /// The node's state directory.
        #[arg(long, default_value = "/var/lib/kernlet", env = "KERNLET_STATE_DIR")]
        state_dir: PathBuf,
        /// The node's run directory (where the daemon's socket is).
        #[arg(long, default_value = "/run/kernlet", env = "KERNLET_RUN_DIR")]
        run_dir: PathBuf,
        /// kernlet's cgroup subtree, relative to the cgroup2 mount.
        #[arg(long, default_value = "kernlet", env = "KERNLET_CGROUP_ROOT")]
        cgroup_root: PathBuf,
    },
    /// Print a container's log (from its CRI log files, rotated ones included; works
    /// without the daemon).
    Logs {
        /// The pod, `[namespace/]name`.
        pod: String,
        /// The container (default: the pod's first).
        #[arg(short = 'c', long)]
        container: Option<String>,
        /// The run before the current one.
        #[arg(short = 'p', long)]
        previous: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
        /// Each line with its time.
        #[arg(long)]
        timestamps: bool,
        /// The node's state directory.
        #[arg(long, default_value = "/var/lib/kernlet", env = "KERNLET_STATE_DIR")]
        state_dir: PathBuf,
    },
    /// Run a command in a running container of a pod (from the state directory; works
    /// without the daemon) and print its output; exits with the command's status.
    Exec {
        /// The pod, `[namespace/]name`.
        pod: String,
        /// The container (default: the pod's first).
        #[arg(short = 'c', long)]
        container: Option<String>,
        /// Seconds before the command is killed (not with -i: it runs until it ends).
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Pass this terminal's input to the command and show its output as it comes
        /// (crictl exec -i); with -t the command gets this terminal (crictl exec -it).
        #[arg(short = 'i', long)]
        stdin: bool,
        #[arg(short = 't', long)]
        tty: bool,
        /// The node's state directory.
        #[arg(long, default_value = "/var/lib/kernlet", env = "KERNLET_STATE_DIR")]
        state_dir: PathBuf,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// The whole path to a pod, a Service (namespace/name or ip:port) or an address:
    /// frontends, backends, and where each lives (local pod, or overlay peer).
    Explain {
        target: String,
        #[command(flatten)]
        output: OutputArgs,
        /// Kubeconfig (default: the one `kernlet join` wrote): Services by name, peers.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        #[command(flatten)]
        dirs: ViewDirs,
    },
    /// The Service load-balancing table from the pinned maps: frontend → backends.
    Services {
        /// Show only frontends whose service name or address contains this.
        filter: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
        /// Kubeconfig to name the frontends with (default: the one `kernlet join` wrote).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        #[command(flatten)]
        dirs: ViewDirs,
    },
    /// The node at a glance: conditions, lease, apiserver, pods by phase, overlay peers,
    /// certificates.
    Status {
        #[command(flatten)]
        output: OutputArgs,
        /// Kubeconfig of the node (default: the one `kernlet join` wrote, when present).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// The node (default: from the kubeconfig's client certificate, else the hostname).
        #[arg(long)]
        node_name: Option<String>,
        #[command(flatten)]
        dirs: ViewDirs,
    },
    /// The overlay's peers: pod CIDR, VTEP MAC, public IP, whether their route,
    /// neighbour and FDB entries on flannel.1 match the Nodes, and the last probe.
    Overlay {
        #[command(flatten)]
        output: OutputArgs,
        /// Kubeconfig to read the Nodes with (default: the one `kernlet join` wrote,
        /// when present); without one, or when the apiserver is unreachable, the peers
        /// of the daemon's last probe are used.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        #[arg(long, default_value = "/var/lib/kernlet", env = "KERNLET_STATE_DIR")]
        state_dir: PathBuf,
        #[arg(long, default_value = "/run/kernlet", env = "KERNLET_RUN_DIR")]
        run_dir: PathBuf,
    },
    /// Check what this node needs (kernel, cgroups, bpffs, sysctls, clock, disks, the
    /// serving certificate, cluster permissions), with a fix for each problem. Exits 1
    /// when a check fails.
    Doctor {
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        dirs: NodeDirs,
        /// The node's kubeconfig, for the checks that ask the apiserver (default: the
        /// one `kernlet join` wrote under the state directory, when it exists).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum ImageCmd {
    /// Import images from an OCI image layout directory or an oci-archive tar.
    Import {
        /// The layout directory or archive.
        source: PathBuf,
        /// Reference to record the image under, when the layout names it only by tag
        /// (e.g. `--name example.com/app`; the layout's tag is kept).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Pull an image from its registry into the store.
    Pull {
        /// Image reference, e.g. `registry.example.com:5000/app:1.2`.
        image: String,
        #[command(flatten)]
        registries: RegistryArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List stored images.
    Ls {
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove an image reference (or an image ID with all its references); layers and
    /// blobs no other image uses are deleted.
    Rm {
        /// Image reference or image ID (`sha256:...`).
        image: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(clap::Args, Debug)]
struct StoreArgs {
    /// Content-addressed image store.
    #[arg(
        long,
        default_value = "/var/lib/kernlet/images",
        env = "KERNLET_IMAGE_DIR"
    )]
    image_dir: PathBuf,
}

/// Where the node's views are read from: state, run and bpffs directories.
#[derive(clap::Args, Debug)]
struct ViewDirs {
    #[arg(long, default_value = "/var/lib/kernlet", env = "KERNLET_STATE_DIR")]
    state_dir: PathBuf,
    #[arg(long, default_value = "/run/kernlet", env = "KERNLET_RUN_DIR")]
    run_dir: PathBuf,
    #[arg(long, default_value = "/sys/fs/bpf/kernlet", env = "KERNLET_BPFFS_DIR")]
    bpffs_dir: PathBuf,
}

#[derive(clap::Args, Debug)]
struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

#[derive(clap::Args, Debug)]
#[command(group(ArgGroup::new("mode").required(true).args(["standalone", "kubeconfig"])))]
struct RunArgs {
    /// Run the pods of manifest files, without an apiserver.
    #[arg(long)]
    standalone: bool,
    /// Directory of Pod manifests (*.yaml, *.yml, *.json): the pods of --standalone
    /// (default /etc/kernlet/manifests), or with --kubeconfig static pods run next to
    /// the apiserver's, each with a mirror pod (kubelet's staticPodPath).
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// Kubeconfig with this node's credentials (CN=system:node:<name>, O=system:nodes).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(clap::Args, Debug)]
struct JoinCmd {
    /// The apiserver endpoint, host:port (as in `kubeadm join`).
    server: String,
    /// Bootstrap token `<id>.<secret>`.
    #[arg(long)]
    token: String,
    /// `sha256:<hex>` of the cluster CA's public key; repeatable.
    #[arg(long = "discovery-token-ca-cert-hash", required = true)]
    ca_cert_hashes: Vec<String>,
    /// How long to wait for the client certificate to be issued, in seconds.
    #[arg(long, default_value_t = 300)]
    csr_timeout: u64,
    #[command(flatten)]
    node: NodeArgs,
}

/// `--node-ip`: one address or a dual-stack pair.
#[derive(Clone, Debug)]
struct NodeIps(Vec<IpAddr>);

fn node_ips_arg(s: &str) -> Result<NodeIps, String> {
    node::parse_node_ips(s).map(NodeIps)
}

#[derive(clap::Args, Debug)]
struct NodeArgs {
    /// Node name (default: the hostname, lowercase).
    #[arg(long)]
    node_name: Option<String>,
    /// InternalIP to report (default: the address of the default-route interface); a
    /// dual-stack node gives an IPv4 and an IPv6 address, `v4,v6` (the first is the
    /// primary). NodePorts are served on each.
    #[arg(long, value_parser = node_ips_arg)]
    node_ip: Option<NodeIps>,
    /// Labels to register the node with, `key=value,...` (only those a node may set).
    #[arg(long, default_value = "")]
    node_labels: String,
    /// Taints to register the node with, `key[=value]:Effect,...`.
    #[arg(long, default_value = "")]
    register_with_taints: String,
    /// Maximum pods on this node.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// Resources reserved for the system, `cpu=100m,memory=256Mi,ephemeral-storage=1Gi`.
    #[arg(long, default_value = "")]
    system_reserved: String,
    /// Resources reserved for kernlet itself, same form as --system-reserved.
    #[arg(long, default_value = "")]
    kube_reserved: String,
    /// How often node status is recomputed and reported if it changed, in seconds.
    #[arg(long, default_value_t = 10)]
    node_status_update_frequency: u64,
    /// How often node status is reported when nothing changed, in seconds.
    #[arg(long, default_value_t = 300)]
    node_status_report_frequency: u64,
    /// Lease renewal interval in milliseconds (kubelet: 10000; tests shorten it).
    #[arg(long, default_value_t = 10_000, hide = true)]
    node_lease_renew_interval_ms: u64,
    /// Maximum processes in one pod (pids.max of its cgroup); -1: unlimited.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pod_max_pids: i64,
    /// Run containers that ask for no seccomp profile with RuntimeDefault (as kubelet's
    /// seccompDefault); privileged containers stay unconfined.
    #[arg(long)]
    seccomp_default: bool,
    /// DNS servers of the cluster for ClusterFirst pods, `ip,...` (default: the
    /// clusterDNS `kernlet join` saved from kube-system/kubelet-config).
    #[arg(long, value_delimiter = ',')]
    cluster_dns: Vec<String>,
    /// The cluster's DNS domain (default: the saved clusterDomain, else cluster.local).
    #[arg(long)]
    cluster_domain: Option<String>,
    /// The node's resolver configuration, for pods with dnsPolicy Default and the
    /// search domains of the others.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// How often the contents of configMap, secret, downwardAPI and projected volumes
    /// are read again, in seconds (kubelet's --sync-frequency).
    #[arg(long, default_value_t = 60)]
    sync_frequency: u64,
    /// The cluster's pod network (flannel's `Network`, e.g. 10.244.0.0/16). With it,
    /// kernlet runs the pod network and the flannel-compatible VXLAN overlay from the
    /// Node's spec.podCIDR; without it pods have only loopback.
    #[arg(long)]
    cluster_cidr: Option<kernlet::model::cidr::Ipv4Net>,
    /// Standalone mode: this node's pod CIDR (kubelet's --pod-cidr); pods get addresses
    /// from it on the bridge.
    #[arg(long)]
    pod_cidr: Option<kernlet::model::cidr::Ipv4Net>,
    /// The overlay's underlay interface (default: the one holding the node address).
    #[arg(long)]
    iface: Option<String>,
    /// The bridge pods are attached to.
    #[arg(long, default_value = "cni0")]
    bridge: String,
    /// Replace kube-proxy on this node: Services and EndpointSlices programmed into the
    /// eBPF socket load-balancer (maps pinned under --bpffs-dir).
    #[arg(long)]
    service_proxy: bool,
    /// The cgroup whose processes reach Services through the load-balancer (default: the
    /// whole cgroup2 tree, i.e. every process of the node).
    #[arg(long)]
    service_cgroup: Option<PathBuf>,
    /// How often the load-balancer maps are compared with the Services, in seconds.
    #[arg(long, default_value_t = 30)]
    service_resync: u64,
    /// How a backend is picked for a flow from outside the node: `random`, or `maglev`
    /// (consistent hashing of the flow: every node sends it to the same backend).
    #[arg(long, value_enum, default_value = "random")]
    service_lb_algorithm: LbAlgorithm,
    /// Where the Service proxy answers `/healthz` and `/livez` as kube-proxy does (its
    /// --healthz-bind-address); port 0 turns it off.
    #[arg(long, default_value = "0.0.0.0:10256")]
    proxy_healthz_bind_address: std::net::SocketAddr,
    /// Address the kubelet API listens on.
    #[arg(long, default_value = "0.0.0.0")]
    address: IpAddr,
    /// Port of the kubelet API (HTTPS); reported in the Node's daemonEndpoints.
    #[arg(long, default_value_t = 10250)]
    port: u16,
    /// Port of the plain healthz endpoint; 0 turns it off.
    #[arg(long, default_value_t = 10248)]
    healthz_port: u16,
    /// Address of the healthz endpoint.
    #[arg(long, default_value = "127.0.0.1")]
    healthz_bind_address: IpAddr,
    /// PEM of the CA that signs the client certificates the API accepts (the
    /// apiserver's --kubelet-client-certificate); default: the kubeconfig's cluster CA.
    #[arg(long)]
    client_ca_file: Option<PathBuf>,
    /// Serve API requests without credentials as system:anonymous (still authorized);
    /// default: the cluster's kubelet-config saved by `kernlet join`, else false.
    #[arg(long, action = clap::ArgAction::Set)]
    anonymous_auth: Option<bool>,
    /// How often the overlay's routes, neighbour and FDB entries are compared with the
    /// Nodes and repaired, in seconds.
    #[arg(long, default_value_t = 10)]
    overlay_resync: u64,
    #[command(flatten)]
    registries: RegistryArgs,
    #[command(flatten)]
    dirs: NodeDirs,
}

#[derive(clap::Args, Debug, Clone, Default)]
struct RegistryArgs {
    /// A registry (`host:port`) reached over plain HTTP; repeatable.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// A CA certificate (PEM file) to trust for registries; repeatable.
    #[arg(long = "registry-ca")]
    registry_cas: Vec<PathBuf>,
    /// Registry credentials of this node: a dockerconfigjson file (as `docker login`
    /// writes `~/.docker/config.json`).
    #[arg(long)]
    image_credentials: Option<PathBuf>,
}

impl RegistryArgs {
    fn config(&self) -> anyhow::Result<kernlet::runtime::image::pull::RegistryConfig> {
        use kernlet::runtime::image::pull::{DockerConfig, RegistryConfig};
        let mut ca_pems = Vec::new();
        for f in &self.registry_cas {
            ca_pems.push(
                std::fs::read(f)
                    .with_context(|| format!("cannot read --registry-ca {}", f.display()))?,
            );
        }
        let credentials = match &self.image_credentials {
            Some(f) => DockerConfig::parse(
                &std::fs::read(f)
                    .with_context(|| format!("cannot read --image-credentials {}", f.display()))?,
            )
            .map_err(|e| anyhow::anyhow!("--image-credentials {}: {e}", f.display()))?,
            None => DockerConfig::default(),
        };
        Ok(RegistryConfig {
            insecure: self.insecure_registries.clone(),
            ca_pems,
            credentials,
        })
    }
}

/// kernlet's helper processes: single-threaded, started by kernlet itself.
/// `kernlet internal shim <bundle>`, `kernlet internal exec <bundle> <timeout-ms>
/// <command...>` and
/// `kernlet internal sandbox <dir> <hostname> <host-network:0|1> <host-ipc:0|1>
/// <pod cgroup for a pause process, or "">`.
fn internal(args: &[String]) -> ExitCode {
    match args {
        [cmd, bundle, timeout_ms, command @ ..] if cmd == "exec" => {
            let timeout = std::time::Duration::from_millis(timeout_ms.parse().unwrap_or(1000));
            ExitCode::from(kernlet::runtime::exec::helper_main(
                std::path::Path::new(bundle),
                timeout,
                command,
            ) as u8)
        }
        [cmd, bundle, mode, command @ ..] if cmd == "exec-stream" => {
            ExitCode::from(kernlet::runtime::exec::stream_helper_main(
                std::path::Path::new(bundle),
                kernlet::runtime::exec::StreamMode::parse(mode),
                command,
            ) as u8)
        }
        [cmd, bundle] if cmd == "shim" => {
            ExitCode::from(kernlet::runtime::shim::main(std::path::Path::new(bundle)) as u8)
        }
        [cmd, dir, hostname, host_net, host_ipc, pause_cgroup] if cmd == "sandbox" => {
            match kernlet::sys::ns::create_here(
                std::path::Path::new(dir),
                hostname,
                host_net == "1",
                host_ipc == "1",
            ) {
                Ok(()) => {}
                Err(e) => {
                    eprintln!("creating the pod namespaces in {dir}: {e}");
                    return ExitCode::FAILURE;
                }
            }
            // A shared PID namespace needs a process to hold it: the pause process.
            if !pause_cgroup.is_empty() {
                match kernlet::sys::ns::start_pause(
                    &std::path::Path::new(pause_cgroup).join("cgroup.procs"),
                ) {
                    Ok(pid) => println!("{pid}"),
                    Err(e) => {
                        eprintln!("starting the pause process of {dir}: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("kernlet internal: not for direct use");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("internal") {
        return internal(&args[2..]);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kernlet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // One TLS crypto provider for every client of the process (apiserver, registries).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match cli.command {
        Command::Run(args) => {
            args.node.dirs.validate()?;
            if args.standalone {
                return run_standalone(&args);
            }
            let kubeconfig = args
                .kubeconfig
                .clone()
                .context("--kubeconfig is required without --standalone")?;
            let mut node = prepare_node(&args.node)?;
            node.static_pods = args.manifests.clone();
            runtime()?.block_on(run_node(kubeconfig, node))
        }
        Command::Image(cmd) => image(cmd),
        Command::Pods {
            output,
            state_dir,
            run_dir,
        } => {
            pods(&state_dir, &run_dir, output.output);
            Ok(())
        }
        Command::Inspect {
            what,
            output,
            state_dir,
            run_dir,
            cgroup_root,
        } => {
            let root = kernlet::sys::cgroup::cgroup2_mount()
                .ok()
                .map(|m| m.join(&cgroup_root));
            let mut v = kernlet::inspect::inspect(&state_dir, root.as_deref(), &what)
                .map_err(|e| anyhow::anyhow!(e))?;
            let daemon = pods_daemon(&run_dir);
            if output.output == Output::Json {
                v["daemon"] = daemon;
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!("{}", kernlet::daemon::line(&daemon));
                // The table leaves the pod's spec and status to -o json.
                if let Some(m) = v.as_object_mut() {
                    m.remove("spec");
                    m.remove("status");
                }
                let mut out = Vec::new();
                kernlet::inspect::lines(&v, "", &mut out);
                println!("{}", out.join("\n"));
            }
            Ok(())
        }
        Command::Ps {
            output,
            state_dir,
            run_dir,
        } => {
            ps(&state_dir, &run_dir, output.output);
            Ok(())
        }
        Command::Logs {
            pod,
            container,
            previous,
            tail,
            timestamps,
            state_dir,
        } => logs(
            &state_dir,
            &pod,
            container.as_deref(),
            previous,
            tail,
            timestamps,
        ),
        Command::Exec {
            pod,
            container,
            timeout,
            stdin,
            tty,
            state_dir,
            command,
        } => {
            let (ns, name, p) = recorded_pod(&state_dir, &pod)?;
            let (ns, name, p) = (ns.as_str(), name.as_str(), &p);
            let statuses: Vec<&serde_json::Value> =
                kernlet::model::pod_status::container_statuses(p).collect();
            let wanted = container.clone().or_else(|| {
                p["spec"]["containers"][0]["name"]
                    .as_str()
                    .map(str::to_string)
            });
            let status = statuses
                .iter()
                .find(|c| Some(c["name"].as_str().unwrap_or("")) == wanted.as_deref())
                .with_context(|| {
                    format!(
                        "pod {ns}/{name} has no container {:?}",
                        wanted.unwrap_or_default()
                    )
                })?;
            let id = status["containerID"]
                .as_str()
                .and_then(|c| c.strip_prefix("kernlet://"))
                .filter(|_| status["state"]["running"].is_object())
                .with_context(|| {
                    format!(
                        "container {} of pod {ns}/{name} is not running",
                        status["name"]
                    )
                })?;
            let exe = std::env::current_exe().context("finding the kernlet binary")?;
            if stdin || tty {
                // Interactive: the helper gets this process's own stdin, stdout and
                // stderr (with -t this terminal becomes the command's).
                let status = std::process::Command::new(&exe)
                    .arg("internal")
                    .arg("exec-stream")
                    .arg(state_dir.join("containers").join(id))
                    .arg(if tty { "1" } else { "0" })
                    .args(&command)
                    .status()
                    .with_context(|| format!("starting the exec helper {}", exe.display()))?;
                std::process::exit(status.code().unwrap_or(1));
            }
            let r = kernlet::runtime::exec::via_helper(
                &exe,
                &state_dir.join("containers").join(id),
                &command,
                Duration::from_secs(timeout),
            )
            .map_err(|e| anyhow::anyhow!("exec in {ns}/{name}: {e}"))?;
            print!("{}", r.output);
            if r.timed_out {
                eprintln!("kernlet exec: killed after {timeout} s");
            }
            std::process::exit(r.exit_code.clamp(0, 255));
        }
        Command::Explain {
            target,
            output,
            kubeconfig,
            dirs:
                ViewDirs {
                    state_dir,
                    run_dir,
                    bpffs_dir,
                },
        } => {
            let kubeconfig = joined_kubeconfig(kubeconfig, &state_dir);
            let src = kernlet::explain::Sources {
                state_dir: &state_dir,
                run_dir: &run_dir,
                bpffs_dir: &bpffs_dir,
                kubeconfig: kubeconfig.as_deref(),
            };
            let v = runtime()?
                .block_on(kernlet::explain::explain(&target, &src))
                .map_err(|e| anyhow::anyhow!(e))?;
            print_view(output.output, &v, kernlet::explain::text);
            Ok(())
        }
        Command::Services {
            filter,
            output,
            kubeconfig,
            dirs:
                ViewDirs {
                    state_dir,
                    run_dir,
                    bpffs_dir,
                },
        } => {
            let kubeconfig = joined_kubeconfig(kubeconfig, &state_dir);
            let v = runtime()?
                .block_on(kernlet::services_view::gather(
                    &bpffs_dir.join("lb"),
                    &run_dir,
                    kubeconfig.as_deref(),
                    filter.as_deref(),
                ))
                .map_err(|e| anyhow::anyhow!(e))?;
            print_view(output.output, &v, kernlet::services_view::table);
            Ok(())
        }
        Command::Status {
            output,
            kubeconfig,
            node_name,
            dirs:
                ViewDirs {
                    state_dir,
                    run_dir,
                    bpffs_dir,
                },
        } => {
            let kubeconfig = joined_kubeconfig(kubeconfig, &state_dir);
            let v = runtime()?.block_on(kernlet::status::gather(
                kubeconfig.as_deref(),
                node_name,
                &state_dir,
                &run_dir,
                &bpffs_dir,
            ));
            print_view(output.output, &v, kernlet::status::text);
            Ok(())
        }
        Command::Overlay {
            output,
            kubeconfig,
            state_dir,
            run_dir,
        } => {
            let kubeconfig = joined_kubeconfig(kubeconfig, &state_dir);
            let view = runtime()?
                .block_on(kernlet::overlay_view::gather(
                    kubeconfig.as_deref(),
                    &run_dir,
                ))
                .map_err(|e| anyhow::anyhow!(e))?;
            print_view(output.output, &view, kernlet::overlay_view::table);
            Ok(())
        }
        Command::Doctor {
            output,
            dirs,
            kubeconfig,
        } => {
            dirs.validate()?;
            let kubeconfig = joined_kubeconfig(kubeconfig, &dirs.state_dir);
            let facts = kernlet::doctor::gather(&dirs, kubeconfig.is_some());
            let cluster =
                runtime()?.block_on(kernlet::doctor::cluster_facts(kubeconfig.as_deref()));
            let checks = kernlet::doctor::judge(&facts, &cluster);
            let worst = checks
                .iter()
                .map(|c| c.verdict)
                .max()
                .unwrap_or(kernlet::doctor::Verdict::Ok);
            match output.output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"verdict": worst, "checks": checks})
                ),
                Output::Table => print!("{}", kernlet::doctor::table(&checks)),
            }
            if worst == kernlet::doctor::Verdict::Fail {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Join(args) => {
            args.node.dirs.validate()?;
            // Everything about the node is checked before credentials are asked for.
            let node = prepare_node(&args.node)?;
            let join = kernlet::bootstrap::JoinArgs {
                server: args.server.clone(),
                token: args.token.clone(),
                ca_pins: args.ca_cert_hashes.clone(),
                node_name: node.cfg.name.clone(),
                state_dir: args.node.dirs.state_dir.clone(),
                csr_timeout: Duration::from_secs(args.csr_timeout),
            };
            let rt = runtime()?;
            let kubeconfig = rt.block_on(kernlet::bootstrap::join(&join))?;
            rt.block_on(run_node(kubeconfig, node))
        }
    }
}

/// The node flags that override what the cluster's kubelet-config says.
fn overrides(args: &NodeArgs) -> kernlet::model::kubelet_config::Overrides {
    kernlet::model::kubelet_config::Overrides {
        cluster_dns: args.cluster_dns.clone(),
        cluster_domain: args.cluster_domain.clone(),
        anonymous_auth: args.anonymous_auth,
    }
}

/// The runtime's configuration from the node flags.
fn runtime_config(args: &NodeArgs) -> anyhow::Result<kernlet::runtime::RuntimeConfig> {
    let dirs = &args.dirs;
    Ok(kernlet::runtime::RuntimeConfig {
        state_dir: dirs.state_dir.clone(),
        run_dir: dirs.run_dir.clone(),
        log_dir: dirs.log_dir.clone(),
        image_dir: dirs.image_dir.clone(),
        cgroup_root: dirs.cgroup_root.clone(),
        exe: std::env::current_exe().context("cannot find the kernlet binary to run shims")?,
        rotation: Default::default(),
        registries: args.registries.config()?,
        pod_pids_limit: u64::try_from(args.pod_max_pids).ok(),
        seccomp_default: args.seccomp_default,
        dns: {
            use kernlet::model::kubelet_config as kc;
            let saved = kc::load(&kernlet::bootstrap::cluster_settings_path(&dirs.state_dir));
            let e = kc::effective(&overrides(args), saved.as_ref());
            kernlet::model::dns::ClusterDns {
                servers: e.cluster_dns,
                domain: e.cluster_domain,
            }
        },
        resolv_conf: args.resolv_conf.clone(),
    })
}

fn run_standalone(args: &RunArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let manifests = args
        .manifests
        .clone()
        .unwrap_or_else(|| PathBuf::from("/etc/kernlet/manifests"));
    let plans = kernlet::podworker::plan(&manifests)?;
    let rt = kernlet::runtime::Runtime::open(runtime_config(&args.node)?)?;
    let node_ip = args
        .node
        .node_ip
        .as_ref()
        .map(|ips| ips.0[0])
        .or_else(|| kernlet::sys::machine::default_route_ipv4().map(IpAddr::V4))
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    if let Some(cidr) = args.node.pod_cidr {
        let net = kernlet::runtime::network::PodNetwork {
            cidr,
            bridge: args.node.bridge.clone(),
            mtu: kernlet::runtime::network::mtu_of(node_ip).unwrap_or(1500),
        };
        rt.set_network(kernlet::runtime::network::NetworkState::Ready(net))?;
    }
    tracing::info!(
        manifests = %manifests.display(),
        pods = plans.len(),
        cgroup = %rt.cgroup_root.display(),
        "kernlet standalone: running the pods of the manifest directory"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let runner = kernlet::podworker::Runner::new(
        rt,
        kernlet::podworker::Source::Manifests(manifests.clone()),
        node_ip.to_string(),
        Default::default(),
    );
    let flag = Arc::clone(&stop);
    let worker = std::thread::spawn(move || runner.run(&flag));
    let run_dir = args.node.dirs.run_dir.clone();
    runtime()?.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let node = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "standalone".into());
        let socket = tokio::spawn(async move {
            if let Err(e) = kernlet::daemon::serve(run_dir.clone(), node, stop_rx).await {
                tracing::warn!(
                    "the CLI socket {} is not served: {e}",
                    kernlet::daemon::socket_path(&run_dir).display()
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
    tracing::info!("kernlet stopped");
    Ok(())
}

/// The recorded pod `[namespace/]name` (default namespace: `default`), with its
/// namespace and name; an error naming it when the node has no such pod.
fn recorded_pod(
    state_dir: &std::path::Path,
    pod: &str,
) -> anyhow::Result<(String, String, serde_json::Value)> {
    let (ns, name) = pod.split_once('/').unwrap_or(("default", pod));
    kernlet::podworker::recorded_pods(state_dir)
        .into_iter()
        .find(|p| p["metadata"]["namespace"] == ns && p["metadata"]["name"] == name)
        .map(|p| (ns.to_string(), name.to_string(), p))
        .with_context(|| {
            format!(
                "no pod {ns}/{name} on this node (see kernlet pods --state-dir {})",
                state_dir.display()
            )
        })
}

/// `kernlet ps`: every recorded container with its pod and state.
/// What the daemon says of its pods, or that the answer comes from the state directory.
fn pods_daemon(run_dir: &std::path::Path) -> serde_json::Value {
    kernlet::daemon::view_of(
        run_dir,
        "pods",
        "pods and containers are read from the state directory and the kernel",
    )
}

fn ps(state_dir: &std::path::Path, run_dir: &std::path::Path, output: Output) {
    use kernlet::runtime::container::{ContainerState, records_in, state_in};
    let pods = kernlet::podworker::recorded_pods(state_dir);
    let pod_of = |uid: &str| {
        pods.iter()
            .find(|p| p["metadata"]["uid"] == uid)
            .map(|p| {
                (
                    p["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                )
            })
            .unwrap_or_default()
    };
    let items: Vec<serde_json::Value> = records_in(state_dir)
        .into_iter()
        .map(|r| {
            let (ns, name) = pod_of(&r.pod_uid);
            let mut item = serde_json::json!({
                "id": r.id, "container": r.name, "attempt": r.restart,
                "pod": {"namespace": ns, "name": name, "uid": r.pod_uid},
                "image": r.image_ref, "imageID": r.image_id, "createdAt": r.created_at,
                "cgroup": r.cgroup, "log": r.log_path,
            });
            match state_in(&state_dir.join("containers").join(&r.id)) {
                ContainerState::Created => item["state"] = "created".into(),
                ContainerState::Running { pid, started_at } => {
                    item["state"] = "running".into();
                    item["pid"] = pid.into();
                    item["startedAt"] = started_at.into();
                }
                ContainerState::Exited { exit, started_at } => {
                    item["state"] = "exited".into();
                    item["exitCode"] = exit.exit_code.into();
                    item["reason"] = exit.reason().into();
                    item["startedAt"] = started_at.unwrap_or_default().into();
                    item["finishedAt"] = exit.finished_at.into();
                }
                ContainerState::Failed(why) => {
                    item["state"] = "failed".into();
                    item["reason"] = why.trim().into();
                }
            }
            item
        })
        .collect();
    let daemon = pods_daemon(run_dir);
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"items": items, "daemon": daemon}))
                .unwrap_or_default()
        );
        return;
    }
    println!("{}", kernlet::daemon::line(&daemon));
    println!(
        "{:<13}  {:<32}  {:<20}  {:<8}  {:<16}  {:<7}  POD",
        "CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT"
    );
    for i in &items {
        let s = |k: &str| i[k].as_str().unwrap_or("").to_string();
        let state = match i["exitCode"].as_i64() {
            Some(code) => format!("{} ({code})", s("state")),
            None => s("state"),
        };
        println!(
            "{:<13}  {:<32}  {:<20}  {:<8}  {:<16}  {:<7}  {}/{}",
            s("id").chars().take(13).collect::<String>(),
            s("image"),
            s("createdAt"),
            state,
            s("container"),
            i["attempt"],
            i["pod"]["namespace"].as_str().unwrap_or(""),
            i["pod"]["name"].as_str().unwrap_or("")
        );
    }
}

/// `kernlet logs`: a container's CRI log as the container wrote it.
fn logs(
    state_dir: &std::path::Path,
    pod: &str,
    container: Option<&str>,
    previous: bool,
    tail: Option<usize>,
    timestamps: bool,
) -> anyhow::Result<()> {
    let (ns, name, p) = recorded_pod(state_dir, pod)?;
    let (ns, name, p) = (ns.as_str(), name.as_str(), &p);
    let uid = p["metadata"]["uid"].as_str().unwrap_or("");
    let wanted = container
        .map(str::to_string)
        .or_else(|| {
            p["spec"]["containers"][0]["name"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_default();
    let runs: Vec<_> = kernlet::runtime::container::records_in(state_dir)
        .into_iter()
        .filter(|r| r.pod_uid == uid && r.name == wanted)
        .collect();
    let run = if previous {
        runs.iter().rev().nth(1)
    } else {
        runs.last()
    }
    .with_context(|| {
        if previous {
            format!("container {wanted:?} of pod {ns}/{name} has no previous run")
        } else {
            format!("pod {ns}/{name} has no container {wanted:?} that ran")
        }
    })?;
    let lines = kernlet::runtime::logs::read_lines(
        &run.log_path,
        &kernlet::runtime::logs::ReadOptions {
            tail,
            timestamps,
            ..Default::default()
        },
    );
    let mut out = std::io::stdout().lock();
    for l in &lines {
        if std::io::Write::write_all(&mut out, l.as_bytes()).is_err() {
            break;
        }
    }
    Ok(())
}

fn pods(state_dir: &std::path::Path, run_dir: &std::path::Path, output: Output) {
    let pods = kernlet::podworker::recorded_pods(state_dir);
    let daemon = pods_daemon(run_dir);
    if output == Output::Json {
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": pods, "daemon": daemon});
        println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
        return;
    }
    println!("{}", kernlet::daemon::line(&daemon));
    println!(
        "{:<16} {:<32} {:<6} {:<18} {:<9} {:<16}",
        "NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "IP"
    );
    for p in &pods {
        let s = |ptr: &str| {
            p.pointer(ptr)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let statuses = p
            .pointer("/status/containerStatuses")
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default();
        let ready = statuses.iter().filter(|c| c["ready"] == true).count();
        let restarts: u64 = statuses
            .iter()
            .filter_map(|c| c["restartCount"].as_u64())
            .sum();
        // kubectl's STATUS: a waiting or terminated reason wins over the phase.
        let reason = statuses
            .iter()
            .find_map(|c| {
                c.pointer("/state/waiting/reason")
                    .or_else(|| c.pointer("/state/terminated/reason"))
                    .and_then(|r| r.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| s("/status/phase"));
        println!(
            "{:<16} {:<32} {:<6} {:<18} {:<9} {:<16}",
            s("/metadata/namespace"),
            s("/metadata/name"),
            format!("{ready}/{}", statuses.len()),
            reason,
            restarts,
            s("/status/podIP"),
        );
    }
}

fn image(cmd: ImageCmd) -> anyhow::Result<()> {
    use kernlet::runtime::image::{ImageStore, layout};
    let open = |store: &StoreArgs| {
        anyhow::ensure!(
            store.image_dir.is_absolute(),
            "--image-dir must be an absolute path, got {:?}",
            store.image_dir
        );
        let s = ImageStore::open(&store.image_dir)?;
        s.clean_tmp();
        Ok(s)
    };
    match cmd {
        ImageCmd::Import {
            source,
            name,
            store,
        } => {
            let store = open(&store)?;
            for i in layout::import(&store, &source, name.as_deref())? {
                println!("imported {} {}", i.reference, i.image.id);
            }
        }
        ImageCmd::Pull {
            image,
            registries,
            store,
        } => {
            let store = open(&store)?;
            let reference = kernlet::model::image_ref::ImageRef::parse(&image)?;
            let puller = kernlet::runtime::image::pull::Puller::new(store, registries.config()?);
            let record = runtime()?.block_on(puller.pull(&reference, &[]))?;
            println!("pulled {reference} {}", record.id);
        }
        ImageCmd::Ls { output, store } => {
            let list = open(&store)?.list()?;
            match output.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                Output::Table => {
                    println!("{:<60} {:<19} {:>10}", "IMAGE", "IMAGE ID", "SIZE");
                    for l in &list {
                        let id = l.image.id.trim_start_matches("sha256:");
                        let names = if l.references.is_empty() {
                            vec!["<none>".to_string()]
                        } else {
                            l.references.clone()
                        };
                        for n in names {
                            println!(
                                "{:<60} {:<19} {:>10}",
                                n,
                                &id[..id.len().min(13)],
                                human_bytes(l.image.size)
                            );
                        }
                    }
                }
            }
        }
        ImageCmd::Rm { image, store } => {
            let removed = open(&store)?.remove(&image)?;
            for r in &removed.references {
                println!("untagged {r}");
            }
            for i in &removed.images {
                println!("deleted {i}");
            }
            println!(
                "freed {} layers and {} blobs",
                removed.layers, removed.blobs
            );
        }
    }
    Ok(())
}

/// A byte count as `kubectl` and `crictl` show sizes (`1.1MB`).
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// A node's configuration, checked, and the facts it reports.
struct PreparedNode {
    cfg: NodeConfig,
    state_dir: PathBuf,
    timing: Timing,
    runtime: kernlet::runtime::RuntimeConfig,
    pod_timing: kernlet::podworker::Timing,
    /// A static pod directory next to the apiserver's pods.
    static_pods: Option<PathBuf>,
    /// The pod network and overlay (`--cluster-cidr`).
    overlay: Option<kernlet::controllers::overlay::OverlayConfig>,
    /// The Service datapath (`--service-proxy`).
    services: Option<kernlet::controllers::services::ServiceProxyConfig>,
    /// The kubelet API, completed with the client CA once the kubeconfig is read.
    api: kernlet::api::ApiConfig,
    client_ca_file: Option<PathBuf>,
    /// Flags over the cluster's kubelet-config, applied when the node runs: `kernlet
    /// join` saves that config only after the node was prepared.
    overrides: kernlet::model::kubelet_config::Overrides,
}

fn prepare_node(args: &NodeArgs) -> anyhow::Result<PreparedNode> {
    let labels = node::parse_labels(&args.node_labels)?;
    let taints = node::parse_taints(&args.register_with_taints)?;
    std::fs::create_dir_all(&args.dirs.state_dir).with_context(|| {
        format!(
            "cannot create --state-dir {}",
            args.dirs.state_dir.display()
        )
    })?;
    let facts = kernlet::sys::machine::read(&args.dirs.state_dir);
    let name = args
        .node_name
        .clone()
        .unwrap_or_else(|| facts.hostname.clone());
    anyhow::ensure!(
        !name.is_empty(),
        "cannot tell the node name from the hostname; pass --node-name"
    );
    let secondary_ip = args.node_ip.as_ref().and_then(|ips| ips.0.get(1).copied());
    let internal_ip = match &args.node_ip {
        Some(ips) => ips.0[0],
        None => IpAddr::V4(
            kernlet::sys::machine::default_route_ipv4()
                .context("no IPv4 default route to take the node address from; pass --node-ip")?,
        ),
    };
    let reserved = node::parse_reserved("system-reserved", &args.system_reserved)?
        + node::parse_reserved("kube-reserved", &args.kube_reserved)?;
    let cfg = NodeConfig {
        name,
        internal_ip,
        secondary_ip,
        labels,
        taints,
        max_pods: args.max_pods,
        kubelet_port: args.port,
        apiserver_minor: None,
        reserved,
    };
    let timing = Timing {
        lease_renew: Duration::from_millis(args.node_lease_renew_interval_ms.max(100)),
        status_update: Duration::from_secs(args.node_status_update_frequency.max(1)),
        status_report: Duration::from_secs(args.node_status_report_frequency.max(1)),
    };
    let overlay_node = cfg.name.clone();
    let node_ips = cfg.node_ips();
    let api = kernlet::api::ApiConfig {
        address: std::net::SocketAddr::new(args.address, args.port),
        healthz: (args.healthz_port != 0)
            .then(|| std::net::SocketAddr::new(args.healthz_bind_address, args.healthz_port)),
        node: cfg.name.clone(),
        node_ips: cfg.node_ips(),
        state_dir: args.dirs.state_dir.clone(),
        client_ca_pem: Vec::new(),
        anonymous: args.anonymous_auth.unwrap_or(false),
        webhook_authentication: true,
        authorization: kernlet::model::kubelet_config::Authorization::Webhook,
        configz: configz(args),
        run_dir: args.dirs.run_dir.clone(),
        exe: std::env::current_exe().context("cannot find the kernlet binary for exec")?,
        stats: kernlet::api::stats::StatsSources {
            node: cfg.name.clone(),
            state_dir: args.dirs.state_dir.clone(),
            run_dir: args.dirs.run_dir.clone(),
            log_dir: args.dirs.log_dir.clone(),
            image_dir: args.dirs.image_dir.clone(),
            cgroup_root: kernlet::sys::cgroup::cgroup2_mount()
                .map(|m| m.join(&args.dirs.cgroup_root))
                .unwrap_or_default(),
        },
    };
    Ok(PreparedNode {
        cfg,
        state_dir: args.dirs.state_dir.clone(),
        timing,
        runtime: runtime_config(args)?,
        pod_timing: kernlet::podworker::Timing {
            sync_frequency: Duration::from_secs(args.sync_frequency.max(1)),
            ..Default::default()
        },
        static_pods: None,
        api,
        services: match args.service_proxy {
            false => None,
            true => Some(kernlet::controllers::services::ServiceProxyConfig {
                node: overlay_node.clone(),
                node_ips: node_ips.clone(),
                pin_dir: args.dirs.bpffs_dir.join("lb"),
                cgroup: match &args.service_cgroup {
                    Some(c) => c.clone(),
                    None => kernlet::sys::cgroup::cgroup2_mount()
                        .context("--service-proxy needs the cgroup2 mount to attach to")?,
                },
                resync: Duration::from_secs(args.service_resync.max(1)),
                maglev: args.service_lb_algorithm == LbAlgorithm::Maglev,
                iface: args.iface.clone(),
                run_dir: args.dirs.run_dir.clone(),
                healthz: (args.proxy_healthz_bind_address.port() != 0)
                    .then_some(args.proxy_healthz_bind_address),
            }),
        },
        client_ca_file: args.client_ca_file.clone(),
        overrides: overrides(args),
        overlay: match args.cluster_cidr {
            None => None,
            Some(cluster_cidr) => Some(kernlet::controllers::overlay::OverlayConfig {
                node: overlay_node,
                public_ip: match node_ips.iter().find(|ip| ip.is_ipv4()) {
                    Some(IpAddr::V4(ip)) => *ip,
                    _ => anyhow::bail!(
                        "the overlay needs an IPv4 node address; pass --node-ip with an IPv4 address"
                    ),
                },
                iface: args.iface.clone(),
                cluster_cidr,
                bridge: args.bridge.clone(),
                state_dir: args.dirs.state_dir.clone(),
                run_dir: args.dirs.run_dir.clone(),
                resync: Duration::from_secs(args.overlay_resync.max(1)),
            }),
        },
    })
}

/// What the cluster's kubelet-config (saved by `kernlet join`, possibly moments ago)
/// says, under the node's flags: cluster DNS and domain for the pods, the kubelet API's
/// authentication and authorization, and `/configz` telling them.
fn apply_cluster_settings(
    state_dir: &std::path::Path,
    overrides: &kernlet::model::kubelet_config::Overrides,
    runtime: &mut kernlet::runtime::RuntimeConfig,
    api: &mut kernlet::api::ApiConfig,
) {
    use kernlet::model::kubelet_config as kc;
    let saved = kc::load(&kernlet::bootstrap::cluster_settings_path(state_dir));
    let e = kc::effective(overrides, saved.as_ref());
    runtime.dns = kernlet::model::dns::ClusterDns {
        servers: e.cluster_dns.clone(),
        domain: e.cluster_domain.clone(),
    };
    api.anonymous = e.anonymous_auth;
    api.webhook_authentication = e.webhook_authentication;
    api.authorization = e.authorization;
    let k = &mut api.configz["kubeletconfig"];
    k["clusterDNS"] = serde_json::json!(e.cluster_dns);
    k["clusterDomain"] = serde_json::json!(e.cluster_domain);
    k["authentication"]["anonymous"]["enabled"] = serde_json::json!(e.anonymous_auth);
    k["authentication"]["webhook"]["enabled"] = serde_json::json!(e.webhook_authentication);
    k["authorization"]["mode"] = serde_json::json!(match e.authorization {
        kc::Authorization::AlwaysAllow => "AlwaysAllow",
        kc::Authorization::Webhook => "Webhook",
    });
    tracing::info!(
        cluster_dns = ?e.cluster_dns,
        cluster_domain = %e.cluster_domain,
        anonymous = e.anonymous_auth,
        authorization = ?e.authorization,
        "kubelet settings in effect (flags over the cluster's kubelet-config)"
    );
}

/// The cluster CA (PEM) of a kubeconfig's current context, inline or by file.
fn kubeconfig_ca(text: &str, path: &std::path::Path) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let kc: serde_json::Value = serde_saphyr::from_str(text).ok()?;
    let ctx_name = kc.get("current-context")?.as_str()?;
    let ctx = kc
        .get("contexts")?
        .as_array()?
        .iter()
        .find(|c| c["name"] == ctx_name)?;
    let cluster_name = ctx.pointer("/context/cluster")?.as_str()?;
    let cluster = kc
        .get("clusters")?
        .as_array()?
        .iter()
        .find(|c| c["name"] == cluster_name)?
        .get("cluster")?;
    if let Some(data) = cluster
        .get("certificate-authority-data")
        .and_then(|d| d.as_str())
    {
        return base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .ok();
    }
    let file = cluster.get("certificate-authority")?.as_str()?;
    std::fs::read(
        path.parent()
            .unwrap_or(std::path::Path::new("."))
            .join(file),
    )
    .ok()
}

/// A duration as Go prints it (`1m0s`, `10s`, `4h0m0s`), as kubelet's /configz shows.
fn go_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// `/configz`: kernlet's settings under kubelet's names.
fn configz(args: &NodeArgs) -> serde_json::Value {
    serde_json::json!({"kubeletconfig": {
        "kind": "KubeletConfiguration",
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "enableServer": true,
        "podLogsDir": args.dirs.log_dir,
        "syncFrequency": go_duration(args.sync_frequency),
        "address": args.address.to_string(),
        "port": args.port,
        "authentication": {
            "x509": {"clientCAFile": args.client_ca_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default()},
            "webhook": {"enabled": true, "cacheTTL": "2m0s"},
            "anonymous": {"enabled": args.anonymous_auth.unwrap_or(false)},
        },
        "authorization": {"mode": "Webhook", "webhook": {"cacheAuthorizedTTL": "5m0s", "cacheUnauthorizedTTL": "30s"}},
        "clusterDomain": args.cluster_domain.clone().unwrap_or_else(|| "cluster.local".into()),
        "clusterDNS": args.cluster_dns,
        "healthzPort": args.healthz_port,
        "healthzBindAddress": args.healthz_bind_address.to_string(),
        "nodeStatusUpdateFrequency": go_duration(args.node_status_update_frequency),
        "nodeStatusReportFrequency": go_duration(args.node_status_report_frequency),
        "maxPods": args.max_pods,
        "podPidsLimit": args.pod_max_pids,
        "seccompDefault": args.seccomp_default,
        "resolvConf": args.resolv_conf,
    }})
}

/// `--kubeconfig`, else the one `kernlet join` wrote when there is one.
fn joined_kubeconfig(flag: Option<PathBuf>, state_dir: &std::path::Path) -> Option<PathBuf> {
    flag.or_else(|| Some(kernlet::bootstrap::kubeconfig_path(state_dir)).filter(|p| p.exists()))
}

/// A view as pretty JSON or through its table printer.
fn print_view(output: Output, v: &serde_json::Value, table: fn(&serde_json::Value) -> String) {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        Output::Table => print!("{}", table(v)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

async fn run_node(kubeconfig: PathBuf, node: PreparedNode) -> anyhow::Result<()> {
    // Not Ready until the pod runtime is open and running the node's pods.
    let readiness = Readiness {
        ready: false,
        reason: "KubeletNotReady".into(),
        message: "container runtime is starting".into(),
    };
    let text = std::fs::read_to_string(&kubeconfig)
        .with_context(|| format!("cannot read --kubeconfig {}", kubeconfig.display()))?;
    let client = kernlet::client::from_kubeconfig_text(&text)
        .await
        .map_err(|e| anyhow::anyhow!("--kubeconfig {} is not usable: {e}", kubeconfig.display()))?;
    let apiserver_minor =
        match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
            Ok(Ok(v)) => v.minor.trim_end_matches('+').parse::<u32>().ok(),
            _ => None,
        };
    let client = kernlet::client::SharedClient::new(client);
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
        use kernlet::controllers::permissions;
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
    let rt =
        tokio::task::spawn_blocking(move || kernlet::runtime::Runtime::open(runtime)).await??;
    let overlay_rt = rt.clone();
    let snapshot: kernlet::controllers::pods::Snapshot = Default::default();
    let deleted: kernlet::controllers::pods::Deleted = Default::default();
    let (updates_tx, updates_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(kernlet::controllers::pods::watch_pods(
        client.clone(),
        cfg.name.clone(),
        std::sync::Arc::clone(&snapshot),
        std::sync::Arc::clone(&deleted),
        stop_rx.clone(),
    ));
    tokio::spawn(kernlet::controllers::pods::write_back(
        client.clone(),
        updates_rx,
        stop_rx.clone(),
    ));
    let (recorder, events_rx) = kernlet::controllers::events::Recorder::new();
    tokio::spawn(kernlet::controllers::events::run(
        client.clone(),
        cfg.name.clone(),
        events_rx,
        stop_rx.clone(),
    ));
    let worker_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let runner = kernlet::podworker::Runner::new(
            rt,
            kernlet::podworker::Source::Api {
                snapshot,
                deleted,
                updates: updates_tx,
                client: client.clone(),
                handle: tokio::runtime::Handle::current(),
            },
            cfg.internal_ip.to_string(),
            pod_timing,
        )
        .with_events(recorder)
        .with_static_pods_opt(static_pods, cfg.name.clone())
        .with_node_fit({
            let facts = kernlet::sys::machine::read(&state_dir);
            let (cpu, mem) = node::allocatable_cpu_memory(&facts, cfg.reserved);
            kernlet::model::admission::NodeFit {
                name: cfg.name.clone(),
                allocatable_cpu_milli: cpu,
                allocatable_memory: mem,
                max_pods: u64::from(cfg.max_pods),
                labels: node::registration(&cfg).metadata.labels.unwrap_or_default(),
            }
        });
        let flag = std::sync::Arc::clone(&worker_stop);
        std::thread::spawn(move || runner.run(&flag))
    };
    // The node is Ready when the runtime (open by now) and every subsystem that runs —
    // the pod network, the Service datapath — report ready; the first that is not
    // gives the reason.
    let mut parts = Vec::new();
    if let Some(overlay) = overlay {
        let (tx, rx) = tokio::sync::watch::channel(Readiness {
            ready: false,
            reason: "KubeletNotReady".into(),
            message: "the pod network is starting".into(),
        });
        parts.push(rx);
        tokio::spawn(kernlet::controllers::overlay::run(
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
            if let Err(e) = kernlet::daemon::serve(run_dir.clone(), node, stop).await {
                tracing::warn!(
                    "the CLI socket {} is not served: {e}",
                    kernlet::daemon::socket_path(&run_dir).display()
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
        tokio::spawn(kernlet::controllers::services::run(
            client.clone(),
            services,
            tx,
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
            if let Err(e) = kernlet::api::serve(api, client, stop).await {
                tracing::error!("the kubelet API is not served: {e}");
            }
        });
    }
    let rotation = kernlet::controllers::client_cert::ClientRotation {
        client: client.clone(),
        kubeconfig: kubeconfig.clone(),
        node: cfg.name.clone(),
        state_dir: state_dir.clone(),
    };
    tokio::spawn(rotation.run(stop_rx.clone()));
    let serving = kernlet::controllers::serving_cert::ServingCert {
        client: client.clone(),
        node: cfg.name.clone(),
        ips: vec![cfg.internal_ip],
        state_dir: state_dir.clone(),
    };
    tokio::spawn(serving.run(stop_rx.clone()));
    let controller = tokio::spawn(
        NodeController::new(client, cfg, state_dir, readiness_rx, timing).run(stop_rx),
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
    }
    let _ = stop_tx.send(true);
    worker_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = controller.await;
    let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    tracing::info!("kernlet stopped; its pods keep running");
    Ok(())
}

/// `--service-lb-algorithm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LbAlgorithm {
    Random,
    Maglev,
}

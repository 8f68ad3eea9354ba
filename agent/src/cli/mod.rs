//! The `kernlet` command line: its flags and the node views it prints.

pub mod doctor;
pub mod exec;
pub mod image;
pub mod internal;
pub mod views;

use std::path::PathBuf;

use clap::{ArgGroup, Parser, Subcommand};
use kernlet::config::NodeDirs;
use kernlet::node::{NodeArgs, RegistryArgs};

#[derive(Parser, Debug)]
#[command(
    name = "kernlet",
    version,
    about = "kubelet, kube-proxy and flannel in one daemon"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
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
    /// The node's pods (or containers) by CPU and memory from their cgroups, busiest
    /// first, refreshed every interval (`kubectl top` without metrics-server; from the
    /// state directory and the kernel, works without the daemon).
    Top {
        /// One line per running container instead of per pod.
        #[arg(long)]
        containers: bool,
        /// Seconds between readings (CPU is the rate over it).
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
        /// Print one measurement and exit (what `-o json` prints).
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        output: OutputArgs,
        /// The node's state directory.
        #[arg(long, default_value = "/var/lib/kernlet", env = "KERNLET_STATE_DIR")]
        state_dir: PathBuf,
        /// kernlet's cgroup subtree, relative to the cgroup2 mount.
        #[arg(long, default_value = "kernlet", env = "KERNLET_CGROUP_ROOT")]
        cgroup_root: PathBuf,
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
    /// Remove every trace of kernlet's Service datapath and pod network from this node
    /// (as `kube-proxy --cleanup`): pinned programs and maps, the nftables table, pod
    /// veths, the bridge, flannel.1 (with its routes, neighbours and FDB entries), the
    /// address and overlay records. Refused while the daemon runs. Exits 1 when
    /// something could not be removed.
    Cleanup {
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        dirs: ViewDirs,
        /// The bridge pods were attached to (as given to `kernlet run`).
        #[arg(long, default_value = "cni0")]
        bridge: String,
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
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
pub struct StoreArgs {
    /// Content-addressed image store.
    #[arg(
        long,
        default_value = "/var/lib/kernlet/images",
        env = "KERNLET_IMAGE_DIR"
    )]
    pub image_dir: PathBuf,
}

/// Where the node's views are read from: state, run and bpffs directories.
#[derive(clap::Args, Debug)]
pub struct ViewDirs {
    #[arg(long, default_value = "/var/lib/kernlet", env = "KERNLET_STATE_DIR")]
    pub state_dir: PathBuf,
    #[arg(long, default_value = "/run/kernlet", env = "KERNLET_RUN_DIR")]
    pub run_dir: PathBuf,
    #[arg(long, default_value = "/sys/fs/bpf/kernlet", env = "KERNLET_BPFFS_DIR")]
    pub bpffs_dir: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(clap::Args, Debug)]
#[command(group(ArgGroup::new("mode").required(true).args(["standalone", "kubeconfig"])))]
pub struct RunArgs {
    /// Run the pods of manifest files, without an apiserver.
    #[arg(long)]
    pub standalone: bool,
    /// Directory of Pod manifests (*.yaml, *.yml, *.json): the pods of --standalone
    /// (default /etc/kernlet/manifests), or with --kubeconfig static pods run next to
    /// the apiserver's, each with a mirror pod (kubelet's staticPodPath).
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// Kubeconfig with this node's credentials (CN=system:node:<name>, O=system:nodes).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub node: NodeArgs,
}

#[derive(clap::Args, Debug)]
pub struct JoinCmd {
    /// The apiserver endpoint, host:port (as in `kubeadm join`).
    pub server: String,
    /// Bootstrap token `<id>.<secret>`.
    #[arg(long)]
    pub token: String,
    /// `sha256:<hex>` of the cluster CA's public key; repeatable.
    #[arg(long = "discovery-token-ca-cert-hash", required = true)]
    pub ca_cert_hashes: Vec<String>,
    /// How long to wait for the client certificate to be issued, in seconds.
    #[arg(long, default_value_t = 300)]
    pub csr_timeout: u64,
    #[command(flatten)]
    pub node: NodeArgs,
}

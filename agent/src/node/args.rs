//! The flags of a node (`kernlet run` and `kernlet join` share them).

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::config::NodeDirs;
use crate::model::node;

/// `--node-ip`: one address or a dual-stack pair.
#[derive(Clone, Debug)]
pub struct NodeIps(pub Vec<IpAddr>);

/// Seconds of the termination barrier: a finite number from 0 to an hour.
fn barrier_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds from 0 to 3600 (0 turns the barrier off)"
        )),
    }
}

fn node_ips_arg(s: &str) -> Result<NodeIps, String> {
    node::parse_node_ips(s).map(NodeIps)
}

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// A KubeletConfiguration file (kubelet.config.k8s.io/v1beta1, kubeadm's
    /// /var/lib/kubelet/config.yaml): the fields kernlet implements become the flags of
    /// the same meaning, flags given here winning; the others are named at start.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Node name (default: the hostname, lowercase).
    #[arg(long)]
    pub node_name: Option<String>,
    /// InternalIP to report (default: the address of the default-route interface); a
    /// dual-stack node gives an IPv4 and an IPv6 address, `v4,v6` (the first is the
    /// primary). NodePorts are served on each.
    #[arg(long, value_parser = node_ips_arg)]
    pub node_ip: Option<NodeIps>,
    /// Labels to register the node with, `key=value,...` (only those a node may set).
    #[arg(long, default_value = "")]
    pub node_labels: String,
    /// Taints to register the node with, `key[=value]:Effect,...`.
    #[arg(long, default_value = "")]
    pub register_with_taints: String,
    /// Maximum pods on this node.
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// Runtime handler names this node runs pods for, besides the default (empty) one:
    /// a RuntimeClass whose `handler` is one of them runs here, any other fails the
    /// pod's sandbox as on a containerd node without that runtime. `runc` by default,
    /// so RuntimeClasses written for containerd's default runtime work.
    #[arg(long, default_value = "runc", value_delimiter = ',')]
    pub runtime_handlers: Vec<String>,
    /// Resources reserved for the system, `cpu=100m,memory=256Mi,ephemeral-storage=1Gi`.
    #[arg(long, default_value = "")]
    pub system_reserved: String,
    /// Resources reserved for kernlet itself, same form as --system-reserved.
    #[arg(long, default_value = "")]
    pub kube_reserved: String,
    /// Hard eviction thresholds, kubelet's form: `signal<amount` (a quantity or a
    /// percentage of the signal's capacity), comma-separated. They set the node's
    /// MemoryPressure, DiskPressure and PIDPressure conditions and are kept out of
    /// allocatable memory and ephemeral storage.
    #[arg(long, default_value = crate::model::eviction::DEFAULT_HARD)]
    pub eviction_hard: String,
    /// Soft eviction thresholds, same form: a pod is evicted once one has been crossed
    /// for its grace period (--eviction-soft-grace-period).
    #[arg(long, default_value = "")]
    pub eviction_soft: String,
    /// The grace period of each soft threshold: `signal=duration` (`memory.available=1m30s`).
    #[arg(long, default_value = "")]
    pub eviction_soft_grace_period: String,
    /// How much past its threshold a signal must be before eviction stops:
    /// `signal=quantity or percent` (`nodefs.available=500Mi`).
    #[arg(long, default_value = "")]
    pub eviction_minimum_reclaim: String,
    /// The longest grace period a pod evicted for a soft threshold gets, in seconds
    /// (hard thresholds give 1 s).
    #[arg(long, default_value_t = 0)]
    pub eviction_max_pod_grace_period: u64,
    /// Seconds between the eviction manager's readings (kubelet: 10).
    #[arg(long, default_value_t = 10, hide = true)]
    pub eviction_monitoring_period_seconds: u64,
    /// Graceful node shutdown: how long the node's shutdown may be delayed for its pods
    /// to end (kubelet's `shutdownGracePeriod`; `0s`: off).
    #[arg(long, default_value = "0s")]
    pub shutdown_grace_period: String,
    /// ... of which the last part is kept for critical pods
    /// (`shutdownGracePeriodCriticalPods`).
    #[arg(long, default_value = "0s")]
    pub shutdown_grace_period_critical_pods: String,
    /// Groups by pod priority instead: `priority=seconds,...` (kubelet's
    /// `shutdownGracePeriodByPodPriority`).
    #[arg(long, default_value = "")]
    pub shutdown_grace_period_by_pod_priority: String,
    /// The D-Bus system bus where systemd-logind is asked for the shutdown inhibitor
    /// lock (default: $DBUS_SYSTEM_BUS_ADDRESS, else /run/dbus/system_bus_socket).
    #[arg(long, hide = true)]
    pub system_bus_address: Option<String>,
    /// Where kernlet raises logind's `InhibitDelayMaxSec` to the shutdown grace period
    /// (a `99-kernlet.conf` drop-in, then logind reloaded), as kubelet does.
    #[arg(long, hide = true, default_value = "/etc/systemd/logind.conf.d")]
    pub logind_conf_dir: std::path::PathBuf,
    /// On SIGTERM, shut the node's pods down gracefully (as for the machine's shutdown)
    /// before exiting, instead of leaving them running.
    #[arg(long)]
    pub shutdown_on_sigterm: bool,
    /// Memory QoS (kubelet's `MemoryQoS` feature, cgroup v2): containers get
    /// `memory.high` between their request and limit, throttling before the OOM killer.
    #[arg(long)]
    pub memory_qos: bool,
    /// Where between request and limit `memory.high` sits (`memoryThrottlingFactor`).
    #[arg(long, default_value_t = 0.9)]
    pub memory_throttling_factor: f64,
    /// `None`, or `TieredReservation`: with --memory-qos, Guaranteed containers get
    /// `memory.min` and Burstable ones `memory.low` of their request
    /// (`memoryReservationPolicy`).
    #[arg(long, default_value = "None")]
    pub memory_reservation_policy: String,
    /// `NoSwap` (`memory.swap.max` 0 for every container) or `LimitedSwap` (Burstable
    /// containers get swap in proportion to their memory request) — kubelet's
    /// `memorySwap.swapBehavior`.
    #[arg(long, default_value = "NoSwap")]
    pub memory_swap_behavior: String,
    /// How long a pressure condition stays true after its signal last crossed a
    /// threshold (kubelet's duration form, `5m0s`).
    #[arg(long, default_value = "5m0s")]
    pub eviction_pressure_transition_period: String,
    /// A container's log is rotated when it reaches this size (kubelet's
    /// `containerLogMaxSize`, a quantity).
    #[arg(long, default_value = "10Mi")]
    pub container_log_max_size: String,
    /// Log files kept per container, the current one included (`containerLogMaxFiles`,
    /// at least 2).
    #[arg(long, default_value_t = 5)]
    pub container_log_max_files: usize,
    /// Image garbage collection starts when the image filesystem is this full (%);
    /// 100 turns it off (images then go only by --image-maximum-gc-age or eviction).
    #[arg(long, default_value_t = 85)]
    pub image_gc_high_threshold: u8,
    /// ... and frees unused images, least recently used first, down to this (%).
    #[arg(long, default_value_t = 80)]
    pub image_gc_low_threshold: u8,
    /// An image is not collected before kernlet has known it this long (`2m0s`).
    #[arg(long, default_value = "2m0s")]
    pub image_minimum_gc_age: String,
    /// An image unused this long is collected whatever the disk (`0s`: never).
    #[arg(long, default_value = "0s")]
    pub image_maximum_gc_age: String,
    /// Seconds between image garbage collection passes (kubelet: 300).
    #[arg(long, default_value_t = 300, hide = true)]
    pub image_gc_period_seconds: u64,
    /// How often node status is recomputed and reported if it changed, in seconds.
    #[arg(long, default_value_t = 10)]
    pub node_status_update_frequency: u64,
    /// How often node status is reported when nothing changed, in seconds.
    #[arg(long, default_value_t = 300)]
    pub node_status_report_frequency: u64,
    /// Lease renewal interval in milliseconds (kubelet: 10000; tests shorten it).
    #[arg(long, default_value_t = 10_000, hide = true)]
    pub node_lease_renew_interval_ms: u64,
    /// Maximum processes in one pod (pids.max of its cgroup); -1: unlimited.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub pod_max_pids: i64,
    /// Run containers that ask for no seccomp profile with RuntimeDefault (as kubelet's
    /// seccompDefault); privileged containers stay unconfined.
    #[arg(long)]
    pub seccomp_default: bool,
    /// DNS servers of the cluster for ClusterFirst pods, `ip,...` (default: the
    /// clusterDNS `kernlet join` saved from kube-system/kubelet-config).
    #[arg(long, value_delimiter = ',')]
    pub cluster_dns: Vec<String>,
    /// The cluster's DNS domain (default: the saved clusterDomain, else cluster.local).
    #[arg(long)]
    pub cluster_domain: Option<String>,
    /// The node's resolver configuration, for pods with dnsPolicy Default and the
    /// search domains of the others.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// How often the contents of configMap, secret, downwardAPI and projected volumes
    /// are read again, in seconds (kubelet's --sync-frequency).
    #[arg(long, default_value_t = 60)]
    pub sync_frequency: u64,
    /// The cluster's pod network (flannel's `Network`, e.g. 10.244.0.0/16). With it,
    /// kernlet runs the pod network and the flannel-compatible VXLAN overlay from the
    /// Node's spec.podCIDR; without it pods have only loopback.
    #[arg(long)]
    pub cluster_cidr: Option<crate::model::cidr::Ipv4Net>,
    /// Standalone mode: this node's pod CIDR (kubelet's --pod-cidr); pods get addresses
    /// from it on the bridge.
    #[arg(long)]
    pub pod_cidr: Option<crate::model::cidr::Ipv4Net>,
    /// The overlay's underlay interface (default: the one holding the node address).
    #[arg(long)]
    pub iface: Option<String>,
    /// The bridge pods are attached to.
    #[arg(long, default_value = "cni0")]
    pub bridge: String,
    /// Replace kube-proxy on this node: Services and EndpointSlices programmed into the
    /// eBPF socket load-balancer (maps pinned under --bpffs-dir).
    #[arg(long)]
    pub service_proxy: bool,
    /// The cgroup whose processes reach Services through the load-balancer (default: the
    /// whole cgroup2 tree, i.e. every process of the node).
    #[arg(long)]
    pub service_cgroup: Option<PathBuf>,
    /// How often the load-balancer maps are compared with the Services, in seconds.
    #[arg(long, default_value_t = 30)]
    pub service_resync: u64,
    /// How many established flows from outside the node (NodePorts, external and
    /// load-balancer IPs) the NAT tables hold; flows not established yet (a TCP
    /// handshake not completed, a UDP flow not answered) get a quarter of it in tables
    /// of their own, so a flood of new flows never evicts established ones.
    #[arg(long, default_value_t = kernlet_ebpf_common::MAX_FLOWS,
          value_parser = clap::value_parser!(u32).range(256..=16_777_216))]
    pub service_nat_flows: u32,
    /// The termination barrier: a deleted pod's preStop hooks and SIGTERM wait until
    /// the node's Service datapath no longer sends it new connections (its
    /// EndpointSlices show it not ready), at most this many seconds and never past its
    /// grace period; 0 turns it off. Needs --service-proxy.
    #[arg(long, default_value_t = 5.0, value_parser = barrier_seconds)]
    pub termination_barrier: f64,
    /// How a backend is picked for a flow from outside the node: `random`, or `maglev`
    /// (consistent hashing of the flow: every node sends it to the same backend).
    #[arg(long, value_enum, default_value = "random")]
    pub service_lb_algorithm: LbAlgorithm,
    /// Where the Service proxy answers `/healthz` and `/livez` as kube-proxy does (its
    /// --healthz-bind-address); port 0 turns it off.
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub proxy_healthz_bind_address: std::net::SocketAddr,
    /// Where the Service proxy serves kube-proxy's metrics (`/metrics`, its
    /// --metrics-bind-address); port 0 turns it off.
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub proxy_metrics_bind_address: std::net::SocketAddr,
    /// The CRI socket crictl and other node tools talk to (`unix:///path` or a path;
    /// default `<run-dir>/cri.sock`, `/run/kernlet/cri.sock` on a node).
    #[arg(long)]
    pub container_runtime_endpoint: Option<String>,
    /// Address the kubelet API listens on.
    #[arg(long, default_value = "0.0.0.0")]
    pub address: IpAddr,
    /// Port of the kubelet API (HTTPS); reported in the Node's daemonEndpoints.
    #[arg(long, default_value_t = 10250)]
    pub port: u16,
    /// Port of the plain healthz endpoint; 0 turns it off.
    #[arg(long, default_value_t = 10248)]
    pub healthz_port: u16,
    /// Address of the healthz endpoint.
    #[arg(long, default_value = "127.0.0.1")]
    pub healthz_bind_address: IpAddr,
    /// PEM of the CA that signs the client certificates the API accepts (the
    /// apiserver's --kubelet-client-certificate); default: the kubeconfig's cluster CA.
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
    /// Serve API requests without credentials as system:anonymous (still authorized);
    /// default: the cluster's kubelet-config saved by `kernlet join`, else false.
    #[arg(long, action = clap::ArgAction::Set)]
    pub anonymous_auth: Option<bool>,
    /// How often the overlay's routes, neighbour and FDB entries are compared with the
    /// Nodes and repaired, in seconds.
    #[arg(long, default_value_t = 10)]
    pub overlay_resync: u64,
    #[command(flatten)]
    pub registries: RegistryArgs,
    #[command(flatten)]
    pub dirs: NodeDirs,
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct RegistryArgs {
    /// A registry (`host:port`) reached over plain HTTP; repeatable.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// A CA certificate (PEM file) to trust for registries; repeatable.
    #[arg(long = "registry-ca")]
    pub registry_cas: Vec<PathBuf>,
    /// Registry credentials of this node: a dockerconfigjson file (as `docker login`
    /// writes `~/.docker/config.json`).
    #[arg(long)]
    pub image_credentials: Option<PathBuf>,
}

impl RegistryArgs {
    pub fn config(&self) -> anyhow::Result<crate::runtime::image::pull::RegistryConfig> {
        use crate::runtime::image::pull::{DockerConfig, RegistryConfig};
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

/// `--service-lb-algorithm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LbAlgorithm {
    Random,
    Maglev,
}

//! A node's flags checked and turned into the configuration of its parts, and the
//! cluster's saved kubelet-config applied over them.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use super::args::{LbAlgorithm, NodeArgs};
use crate::controllers::node::Timing;
use crate::model::node::{self, NodeConfig};

/// A node's configuration, checked, and the facts it reports.
pub struct PreparedNode {
    pub cfg: NodeConfig,
    pub state_dir: PathBuf,
    pub timing: Timing,
    pub runtime: crate::runtime::RuntimeConfig,
    pub pod_timing: crate::podworker::Timing,
    /// A static pod directory next to the apiserver's pods.
    pub static_pods: Option<PathBuf>,
    /// The pod network and overlay (`--cluster-cidr`).
    pub overlay: Option<crate::controllers::overlay::OverlayConfig>,
    /// The Service datapath (`--service-proxy`).
    pub services: Option<crate::controllers::services::ServiceProxyConfig>,
    /// The kubelet API, completed with the client CA once the kubeconfig is read.
    pub api: crate::api::ApiConfig,
    pub client_ca_file: Option<PathBuf>,
    /// Flags over the cluster's kubelet-config, applied when the node runs: `kernlet
    /// join` saves that config only after the node was prepared.
    pub overrides: crate::model::kubelet_config::Overrides,
    /// The image garbage collector's policy and period.
    pub image_gc: (crate::runtime::image_gc::ImageGcPolicy, Duration),
    /// Graceful node shutdown: the priority groups (none: off), whether SIGTERM
    /// starts it, and the system bus where logind is asked.
    pub shutdown: (
        Vec<crate::model::shutdown::Group>,
        bool,
        super::logind::Logind,
    ),
    /// The eviction manager's thresholds, pressure transition period and settings.
    pub eviction: (
        Vec<crate::model::eviction::Threshold>,
        Duration,
        crate::eviction::Settings,
    ),
    /// The CRI socket (`--container-runtime-endpoint`).
    pub cri_socket: PathBuf,
    /// kubelet's directory as CSI drivers know it (`--kubelet-dir`).
    pub kubelet_dir: PathBuf,
}

/// The CRI socket of `--container-runtime-endpoint`, or `<run-dir>/cri.sock`.
pub fn cri_socket(args: &NodeArgs) -> anyhow::Result<PathBuf> {
    match &args.container_runtime_endpoint {
        Some(e) => Ok(crate::cri::socket_path(e)?),
        None => Ok(args.dirs.run_dir.join("cri.sock")),
    }
}

pub fn prepare_node(args: &NodeArgs) -> anyhow::Result<PreparedNode> {
    let labels = node::parse_labels(&args.node_labels)?;
    let taints = node::parse_taints(&args.register_with_taints)?;
    std::fs::create_dir_all(&args.dirs.state_dir).with_context(|| {
        format!(
            "cannot create --state-dir {}",
            args.dirs.state_dir.display()
        )
    })?;
    let facts = crate::sys::machine::read(&args.dirs.state_dir);
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
            crate::sys::machine::default_route_ipv4()
                .context("no IPv4 default route to take the node address from; pass --node-ip")?,
        ),
    };
    let reserved = node::parse_reserved("system-reserved", &args.system_reserved)?
        + node::parse_reserved("kube-reserved", &args.kube_reserved)?;
    let runtime = runtime_config(args)?;
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
        runtime_handlers: args.runtime_handlers.clone(),
        user_namespaces: runtime.userns_pool.is_some(),
        eviction_hard: {
            crate::model::eviction::parse_thresholds(&args.eviction_hard)?;
            args.eviction_hard.clone()
        },
    };
    let timing = Timing {
        lease_renew: Duration::from_millis(args.node_lease_renew_interval_ms.max(100)),
        status_update: Duration::from_secs(args.node_status_update_frequency.max(1)),
        status_report: Duration::from_secs(args.node_status_report_frequency.max(1)),
    };
    let eviction = (
        crate::model::eviction::thresholds(&crate::model::eviction::Flags {
            hard: args.eviction_hard.clone(),
            soft: args.eviction_soft.clone(),
            soft_grace: args.eviction_soft_grace_period.clone(),
            min_reclaim: args.eviction_minimum_reclaim.clone(),
        })?,
        crate::model::eviction::parse_duration(&args.eviction_pressure_transition_period)
            .context("--eviction-pressure-transition-period")?,
        crate::eviction::Settings {
            period: Duration::from_secs(args.eviction_monitoring_period_seconds.max(1)),
            max_pod_grace: Duration::from_secs(args.eviction_max_pod_grace_period),
        },
    );
    let overlay_node = cfg.name.clone();
    let node_ips = cfg.node_ips();
    let api = crate::api::ApiConfig {
        address: std::net::SocketAddr::new(args.address, args.port),
        healthz: (args.healthz_port != 0)
            .then(|| std::net::SocketAddr::new(args.healthz_bind_address, args.healthz_port)),
        node: cfg.name.clone(),
        node_ips: cfg.node_ips(),
        state_dir: args.dirs.state_dir.clone(),
        client_ca_pem: Vec::new(),
        anonymous: args.anonymous_auth.unwrap_or(false),
        webhook_authentication: true,
        authorization: crate::model::kubelet_config::Authorization::Webhook,
        configz: configz(args),
        run_dir: args.dirs.run_dir.clone(),
        // Mounted read-only there when the runtime opens (`runtime::sealed_exe`).
        exe: crate::runtime::sealed_exe::path(&args.dirs.state_dir),
        stats: crate::api::stats::StatsSources {
            node: cfg.name.clone(),
            state_dir: args.dirs.state_dir.clone(),
            run_dir: args.dirs.run_dir.clone(),
            log_dir: args.dirs.log_dir.clone(),
            image_dir: args.dirs.image_dir.clone(),
            cgroup_root: crate::sys::cgroup::cgroup2_mount()
                .map(|m| m.join(&args.dirs.cgroup_root))
                .unwrap_or_default(),
        },
    };
    let image_gc = image_gc(args)?;
    let parse = |flag: &str, v: &str| {
        crate::model::eviction::parse_duration(v).with_context(|| flag.to_string())
    };
    let shutdown = (
        crate::model::shutdown::groups(
            parse("--shutdown-grace-period", &args.shutdown_grace_period)?,
            parse(
                "--shutdown-grace-period-critical-pods",
                &args.shutdown_grace_period_critical_pods,
            )?,
            &args.shutdown_grace_period_by_pod_priority,
        )?,
        args.shutdown_on_sigterm,
        super::logind::Logind {
            bus: args.system_bus_address.clone(),
            conf_dir: args.logind_conf_dir.clone(),
        },
    );
    Ok(PreparedNode {
        cri_socket: cri_socket(args)?,
        kubelet_dir: args.dirs.kubelet_dir.clone(),
        image_gc,
        eviction,
        shutdown,
        cfg,
        state_dir: args.dirs.state_dir.clone(),
        timing,
        runtime,
        pod_timing: crate::podworker::Timing {
            sync_frequency: Duration::from_secs(args.sync_frequency.max(1)),
            ..Default::default()
        },
        static_pods: None,
        api,
        services: match args.service_proxy {
            false => None,
            true => Some(crate::controllers::services::ServiceProxyConfig {
                node: overlay_node.clone(),
                node_ips: node_ips.clone(),
                pin_dir: args.dirs.bpffs_dir.join("lb"),
                cgroup: match &args.service_cgroup {
                    Some(c) => c.clone(),
                    None => crate::sys::cgroup::cgroup2_mount()
                        .context("--service-proxy needs the cgroup2 mount to attach to")?,
                },
                resync: Duration::from_secs(args.service_resync.max(1)),
                termination_barrier: Duration::from_secs_f64(args.termination_barrier),
                nat_flows: args.service_nat_flows,
                maglev: args.service_lb_algorithm == LbAlgorithm::Maglev,
                iface: args.iface.clone(),
                run_dir: args.dirs.run_dir.clone(),
                healthz: (args.proxy_healthz_bind_address.port() != 0)
                    .then_some(args.proxy_healthz_bind_address),
                metrics: (args.proxy_metrics_bind_address.port() != 0)
                    .then_some(args.proxy_metrics_bind_address),
            }),
        },
        client_ca_file: args.client_ca_file.clone(),
        overrides: overrides(args),
        overlay: match args.cluster_cidr {
            None => None,
            Some(cluster_cidr) => Some(crate::controllers::overlay::OverlayConfig {
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
pub fn apply_cluster_settings(
    state_dir: &std::path::Path,
    overrides: &crate::model::kubelet_config::Overrides,
    runtime: &mut crate::runtime::RuntimeConfig,
    api: &mut crate::api::ApiConfig,
) {
    use crate::model::kubelet_config as kc;
    let saved = kc::load(&crate::bootstrap::cluster_settings_path(state_dir));
    let e = kc::effective(overrides, saved.as_ref());
    runtime.dns = crate::model::dns::ClusterDns {
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
pub fn kubeconfig_ca(text: &str, path: &std::path::Path) -> Option<Vec<u8>> {
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
        "evictionHard": crate::model::eviction::parse_thresholds(&args.eviction_hard)
            .unwrap_or_default()
            .iter()
            .map(|t| (t.signal.name().to_string(), match t.below {
                crate::model::eviction::Amount::Absolute(n) => n.to_string(),
                crate::model::eviction::Amount::Percent(p) => format!("{p}%"),
            }))
            .collect::<std::collections::BTreeMap<_, _>>(),
        "evictionSoft": pairs_of(&args.eviction_soft, '<'),
        "evictionSoftGracePeriod": pairs_of(&args.eviction_soft_grace_period, '='),
        "evictionMinimumReclaim": pairs_of(&args.eviction_minimum_reclaim, '='),
        "evictionMaxPodGracePeriod": args.eviction_max_pod_grace_period,
        "evictionPressureTransitionPeriod": args.eviction_pressure_transition_period,
        "shutdownGracePeriod": args.shutdown_grace_period,
        "shutdownGracePeriodCriticalPods": args.shutdown_grace_period_critical_pods,
        "featureGates": {"MemoryQoS": args.memory_qos},
        "memoryThrottlingFactor": args.memory_throttling_factor,
        "memoryReservationPolicy": args.memory_reservation_policy,
        "memorySwap": {"swapBehavior": args.memory_swap_behavior},
        "containerLogMaxSize": args.container_log_max_size,
        "containerLogMaxFiles": args.container_log_max_files,
        "imageGCHighThresholdPercent": args.image_gc_high_threshold,
        "imageGCLowThresholdPercent": args.image_gc_low_threshold,
        "imageMinimumGCAge": args.image_minimum_gc_age,
        "imageMaximumGCAge": args.image_maximum_gc_age,
    }})
}

/// `a<b,c<d` (or `a=b,...`) as a map, for `/configz`.
fn pairs_of(text: &str, sep: char) -> std::collections::BTreeMap<String, String> {
    text.split(',')
        .filter_map(|i| i.split_once(sep))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The image garbage collector's policy and period from the node flags.
pub fn image_gc(
    args: &NodeArgs,
) -> anyhow::Result<(crate::runtime::image_gc::ImageGcPolicy, Duration)> {
    use crate::model::eviction::parse_duration;
    let (high, low) = (args.image_gc_high_threshold, args.image_gc_low_threshold);
    if high > 100 || low >= high {
        anyhow::bail!(
            "--image-gc-low-threshold ({low}) must be less than --image-gc-high-threshold ({high}), both percentages"
        );
    }
    let max_age = parse_duration(&args.image_maximum_gc_age).context("--image-maximum-gc-age")?;
    Ok((
        crate::runtime::image_gc::ImageGcPolicy {
            high_percent: high,
            low_percent: low,
            min_age: parse_duration(&args.image_minimum_gc_age)
                .context("--image-minimum-gc-age")?,
            max_age: (!max_age.is_zero()).then_some(max_age),
        },
        Duration::from_secs(args.image_gc_period_seconds.max(1)),
    ))
}

/// The node flags that override what the cluster's kubelet-config says.
pub fn overrides(args: &NodeArgs) -> crate::model::kubelet_config::Overrides {
    crate::model::kubelet_config::Overrides {
        cluster_dns: args.cluster_dns.clone(),
        cluster_domain: args.cluster_domain.clone(),
        anonymous_auth: args.anonymous_auth,
    }
}

/// The runtime's configuration from the node flags.
pub fn runtime_config(args: &NodeArgs) -> anyhow::Result<crate::runtime::RuntimeConfig> {
    let dirs = &args.dirs;
    Ok(crate::runtime::RuntimeConfig {
        state_dir: dirs.state_dir.clone(),
        run_dir: dirs.run_dir.clone(),
        log_dir: dirs.log_dir.clone(),
        image_dir: dirs.image_dir.clone(),
        cgroup_root: dirs.cgroup_root.clone(),
        exe: std::env::current_exe().context("cannot find the kernlet binary to run shims")?,
        rotation: {
            let size = crate::model::quantity::Quantity::parse(&args.container_log_max_size)
                .ok()
                .and_then(|q| u64::try_from(q.value()).ok())
                .filter(|b| *b > 0)
                .with_context(|| {
                    format!(
                        "--container-log-max-size {:?}: give a positive quantity such as 10Mi",
                        args.container_log_max_size
                    )
                })?;
            if args.container_log_max_files < 2 {
                anyhow::bail!(
                    "--container-log-max-files {}: must be at least 2 (the current file and one rotated), as kubelet requires",
                    args.container_log_max_files
                );
            }
            kernlet_shim::cri::Rotation {
                max_bytes: size,
                max_files: args.container_log_max_files,
            }
        },
        registries: args.registries.config()?,
        pod_pids_limit: u64::try_from(args.pod_max_pids).ok(),
        seccomp_default: args.seccomp_default,
        dns: {
            use crate::model::kubelet_config as kc;
            let saved = kc::load(&crate::bootstrap::cluster_settings_path(&dirs.state_dir));
            let e = kc::effective(&overrides(args), saved.as_ref());
            crate::model::dns::ClusterDns {
                servers: e.cluster_dns,
                domain: e.cluster_domain,
            }
        },
        resolv_conf: args.resolv_conf.clone(),
        node_allocatable: Some(node_allocatable(args)?),
        memory_policy: memory_policy(args)?,
        userns_pool: userns_pool(args)?,
    })
}

/// The ID ranges of `hostUsers: false` pods: the `kubelet` user's subordinate IDs
/// when `/etc/subuid` and `/etc/subgid` give it some, else kubelet's default.
fn userns_pool(args: &NodeArgs) -> anyhow::Result<Option<crate::model::userns::Pool>> {
    if !crate::sys::userns::supported() {
        return Ok(None);
    }
    let read = |f: &str| std::fs::read_to_string(f).unwrap_or_default();
    crate::model::userns::Pool::from_subids(
        &read("/etc/subuid"),
        &read("/etc/subgid"),
        u64::from(args.max_pods),
    )
    .map(Some)
    .context("the node IDs for pods with hostUsers: false")
}

/// What the pods may use together, `(memory bytes, CPU millicores)`.
fn node_allocatable(args: &NodeArgs) -> anyhow::Result<(u64, u64)> {
    let reserved = node::parse_reserved("system-reserved", &args.system_reserved)?
        + node::parse_reserved("kube-reserved", &args.kube_reserved)?;
    let facts = crate::sys::machine::read(&args.dirs.state_dir);
    Ok((
        facts.memory_bytes.saturating_sub(reserved.memory_bytes),
        (facts.cpus * 1000).saturating_sub(reserved.cpu_millis),
    ))
}

/// Memory QoS and swap from the flags and the machine.
fn memory_policy(args: &NodeArgs) -> anyhow::Result<crate::model::memory_qos::MemoryPolicy> {
    let mem = std::fs::read_to_string("/proc/meminfo")
        .map(|t| crate::sys::stats::parse_meminfo(&t))
        .unwrap_or_default();
    let policy = crate::model::memory_qos::MemoryPolicy {
        qos: args.memory_qos,
        node_memory: mem.get("MemTotal").copied().unwrap_or(0),
        node_swap: mem.get("SwapTotal").copied().unwrap_or(0),
        allocatable_memory: node_allocatable(args)?.0,
        ..Default::default()
    };
    Ok(policy.checked(
        &args.memory_swap_behavior,
        &args.memory_reservation_policy,
        args.memory_throttling_factor,
    )?)
}

//! A stock control plane from `KUBEBUILDER_ASSETS` (etcd, kube-apiserver, and optionally
//! kube-controller-manager and kube-scheduler), started with the flag set recorded in
//! `shared/k8s-fixtures/control-plane.md` and generated certificates.
//!
//! Its `cluster` egress (the apiserver's connections to kubelets) goes through the
//! kit's CONNECT proxy into the lab (see [`crate::egress`]).

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::apiserver::{kubeconfig_yaml, pki};

/// Processes of a running control plane, killed (by pid) when dropped.
pub struct RealControlPlane {
    pub url: String,
    pub ca: pki::Ca,
    dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
    _egress: crate::egress::EgressProxy,
}

impl Drop for RealControlPlane {
    fn drop(&mut self) {
        for (_, child) in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Lifetimes shorter than a real cluster's, for tests of what happens as they pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lifetimes {
    /// Of the certificates the controller-manager signs (`--cluster-signing-duration`).
    pub certificates: Option<Duration>,
    /// Of watches: the apiserver's `--min-request-timeout` (a watch ends after 1–2×).
    pub watches: Option<Duration>,
}

impl RealControlPlane {
    /// Starts the components found in `assets`. With `full`, kube-scheduler and the
    /// controller-manager's EndpointSlice controllers run too; without, tests bind their
    /// pods and write EndpointSlices themselves, as with the in-memory control plane
    /// (a scheduler or a slice controller would race them).
    pub fn start(assets: &Path, extra_ips: &[IpAddr], full: bool) -> anyhow::Result<Self> {
        Self::start_with(assets, extra_ips, full, Lifetimes::default())
    }

    /// As [`RealControlPlane::start`], with `lifetimes` shorter than a cluster's.
    pub fn start_with(
        assets: &Path,
        extra_ips: &[IpAddr],
        full: bool,
        lifetimes: Lifetimes,
    ) -> anyhow::Result<Self> {
        let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
        // The address the `kubernetes` Service's endpoints name: the first routable
        // address a test gives (the lab bridge's, where a forward may serve the same
        // port), else loopback — for which the apiserver writes no endpoints.
        let advertise = extra_ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() && !ip.is_loopback())
            .unwrap_or(local);
        for bin in ["etcd", "kube-apiserver"] {
            if !assets.join(bin).is_file() {
                bail!(
                    "KUBEBUILDER_ASSETS={} has no {bin}; it must hold etcd and kube-apiserver",
                    assets.display()
                );
            }
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-realcp-", crate::hygiene::run_prefix()))
            .tempdir()?;
        let d = dir.path().to_path_buf();
        let d = d.as_path();
        let ca = pki::Ca::new()?;
        let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let p = d.join(name);
            std::fs::write(&p, text).with_context(|| format!("write {}", p.display()))?;
            Ok(p)
        };
        write("ca.crt", &ca.cert_pem)?;
        write("ca.key", &ca.key_pem)?;
        let port = free_port()?;
        let url = format!("https://{local}:{port}");
        let serving = ca.apiserver_serving(
            &[
                &[local, advertise, IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1))][..],
                extra_ips,
            ]
            .concat(),
        )?;
        write("apiserver.crt", &serving.cert_pem)?;
        write("apiserver.key", &serving.key_pem)?;
        let kubelet_client = ca.client("kube-apiserver-kubelet-client", &["system:masters"])?;
        write("apiserver-kubelet-client.crt", &kubelet_client.cert_pem)?;
        write("apiserver-kubelet-client.key", &kubelet_client.key_pem)?;
        let sa = rcgen::KeyPair::generate()?;
        write("sa.key", &sa.serialize_pem())?;
        write("sa.pub", &sa.public_key_pem())?;
        let admin = ca.client("kubernetes-admin", &["system:masters"])?;
        write(
            "admin.kubeconfig",
            &kubeconfig_yaml(&url, &ca.cert_pem, "kubernetes-admin", Some(&admin), None),
        )?;

        let egress_socket = d.join("egress.sock");
        let egress = crate::egress::EgressProxy::start(&egress_socket)?;
        write(
            "egress-selector.yaml",
            &crate::egress::selector_config(&egress_socket),
        )?;
        let mut this = Self {
            url: url.clone(),
            ca,
            dir,
            children: Vec::new(),
            _egress: egress,
        };
        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        this.spawn(
            "etcd",
            Command::new(assets.join("etcd")).args([
                "--data-dir",
                &d.join("etcd").display().to_string(),
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer_port}"),
            ]),
        )?;
        let p = |n: &str| d.join(n).display().to_string();
        this.spawn(
            "kube-apiserver",
            Command::new(assets.join("kube-apiserver"))
                .args([
                    format!("--etcd-servers={etcd_url}"),
                    format!("--advertise-address={advertise}"),
                    "--bind-address=127.0.0.1".into(),
                    format!("--secure-port={port}"),
                    // Dual-stack, as the in-memory control plane allocates.
                    "--service-cluster-ip-range=10.96.0.0/12,fd00:10:96::/112".into(),
                    "--service-node-port-range=30000-32767".into(),
                    format!("--client-ca-file={}", p("ca.crt")),
                    format!("--tls-cert-file={}", p("apiserver.crt")),
                    format!("--tls-private-key-file={}", p("apiserver.key")),
                    format!(
                        "--kubelet-client-certificate={}",
                        p("apiserver-kubelet-client.crt")
                    ),
                    format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
                    format!("--kubelet-certificate-authority={}", p("ca.crt")),
                    "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                    format!("--service-account-key-file={}", p("sa.pub")),
                    format!("--service-account-signing-key-file={}", p("sa.key")),
                    "--authorization-mode=Node,RBAC".into(),
                    "--enable-admission-plugins=NodeRestriction".into(),
                    "--enable-bootstrap-token-auth=true".into(),
                    "--allow-privileged=true".into(),
                    // Kubelets of simulated nodes are reached through the kit's proxy.
                    format!(
                        "--egress-selector-config-file={}",
                        p("egress-selector.yaml")
                    ),
                ])
                .args(
                    lifetimes
                        .watches
                        .map(|w| format!("--min-request-timeout={}", w.as_secs().max(1))),
                ),
        )?;
        this.wait_ready(Duration::from_secs(60))?;
        if assets.join("kube-controller-manager").is_file() {
            let kcm = this.ca.client("system:kube-controller-manager", &[])?;
            let kc = write(
                "kcm.kubeconfig",
                &kubeconfig_yaml(
                    &url,
                    &this.ca.cert_pem,
                    "system:kube-controller-manager",
                    Some(&kcm),
                    None,
                ),
            )?;
            let kc = kc.display().to_string();
            this.spawn(
                "kube-controller-manager",
                Command::new(assets.join("kube-controller-manager")).args([
                    format!("--kubeconfig={kc}"),
                    format!("--authentication-kubeconfig={kc}"),
                    format!("--authorization-kubeconfig={kc}"),
                    format!("--cluster-signing-cert-file={}", p("ca.crt")),
                    format!("--cluster-signing-key-file={}", p("ca.key")),
                    format!("--root-ca-file={}", p("ca.crt")),
                    format!("--service-account-private-key-file={}", p("sa.key")),
                    "--use-service-account-credentials=true".into(),
                    if full {
                        "--controllers=*,bootstrapsigner,tokencleaner".into()
                    } else {
                        "--controllers=*,bootstrapsigner,tokencleaner,-endpointslice-controller,-endpointslice-mirroring-controller,-endpoints-controller".into()
                    },
                    // The tests hand out pod CIDRs themselves (10.244.<n>.0/24 per
                    // node, as they do with the in-memory control plane), so the
                    // controller-manager must not: a node's podCIDR is set only once.
                    "--allocate-node-cidrs=false".into(),
                    "--cluster-cidr=10.244.0.0/16".into(),
                    "--node-cidr-mask-size=24".into(),
                    "--service-cluster-ip-range=10.96.0.0/12,fd00:10:96::/112".into(),
                    "--leader-elect=false".into(),
                    format!("--secure-port={}", free_port()?),
                ])
                .args(
                    lifetimes
                        .certificates
                        .map(|c| format!("--cluster-signing-duration={}s", c.as_secs())),
                ),
            )?;
        }
        if full && assets.join("kube-scheduler").is_file() {
            let sched = this.ca.client("system:kube-scheduler", &[])?;
            let kc = write(
                "scheduler.kubeconfig",
                &kubeconfig_yaml(
                    &url,
                    &this.ca.cert_pem,
                    "system:kube-scheduler",
                    Some(&sched),
                    None,
                ),
            )?;
            let kc = kc.display().to_string();
            this.spawn(
                "kube-scheduler",
                Command::new(assets.join("kube-scheduler")).args([
                    format!("--kubeconfig={kc}"),
                    format!("--authentication-kubeconfig={kc}"),
                    format!("--authorization-kubeconfig={kc}"),
                    "--leader-elect=false".into(),
                    format!("--secure-port={}", free_port()?),
                ]),
            )?;
        }
        Ok(this)
    }

    fn spawn(&mut self, name: &str, cmd: &mut Command) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log")))?;
        let child = cmd
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("start {name}"))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        let admin = self.dir.path().join("admin.kubeconfig");
        while start.elapsed() < within {
            for (name, child) in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "{name} exited ({status}); see {}",
                        self.dir.path().join(format!("{name}.log")).display()
                    );
                }
            }
            let ok = Command::new("kubectl")
                .args([
                    "--kubeconfig",
                    &admin.display().to_string(),
                    "get",
                    "--raw",
                    "/readyz",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!(
            "kube-apiserver not ready after {within:?}; logs in {}",
            self.dir.path().display()
        )
    }

    /// The directory with certificates, kubeconfigs and component logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

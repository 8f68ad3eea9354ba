//! A stock kube-proxy run by hand for comparisons: started inside a simulated node's
//! network namespace (never the machine's), ended by its pid and its rules removed
//! when dropped. The binary is `kube-proxy` in `KUBEBUILDER_ASSETS` (built by the
//! user from Kubernetes' source; never part of kernlet).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context as _;

/// The kube-proxy binary of `KUBEBUILDER_ASSETS`, when there is one.
pub fn binary() -> Option<PathBuf> {
    let assets = std::env::var_os("KUBEBUILDER_ASSETS")?;
    let bin = Path::new(&assets).join("kube-proxy");
    bin.is_file().then_some(bin)
}

/// kube-proxy's datapath modes compared with kernlet's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Nftables,
    Iptables,
}

impl Mode {
    pub fn flag(self) -> &'static str {
        match self {
            Self::Nftables => "nftables",
            Self::Iptables => "iptables",
        }
    }
}

/// A running kube-proxy in a network namespace.
pub struct KubeProxy {
    child: Child,
    bin: PathBuf,
    netns: PathBuf,
    pub log: PathBuf,
}

impl KubeProxy {
    /// Starts `bin` in `mode` inside `netns` as the proxy of node `node`, reading the
    /// cluster through `kubeconfig`; its log goes to `log`. It binds its health and
    /// metrics ports on the namespace's loopback only (a kernlet there holds 10256) and
    /// leaves the machine-wide conntrack table size alone.
    pub fn start(
        bin: &Path,
        mode: Mode,
        netns: &Path,
        kubeconfig: &Path,
        node: &str,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let out =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .arg(bin)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--proxy-mode={}", mode.flag()))
            .arg(format!("--hostname-override={node}"))
            .args([
                "--healthz-bind-address=127.0.0.1:10356",
                "--metrics-bind-address=127.0.0.1:10349",
                "--conntrack-max-per-core=0",
                "--conntrack-tcp-timeout-established=0",
                "--conntrack-tcp-timeout-close-wait=0",
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        Ok(Self {
            child,
            bin: bin.to_path_buf(),
            netns: netns.to_path_buf(),
            log: log.to_path_buf(),
        })
    }

    /// The last lines of its log, for an error message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // kube-proxy's own cleanup of every mode's rules, in the same namespace.
        let _ = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg(&self.bin)
            .arg("--cleanup")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

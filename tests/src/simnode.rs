//! Simulated nodes: each a network namespace with its own address on a shared underlay
//! bridge (the bridge in a namespace of its own, underlay 198.18.0.0/24), its own
//! state/log/run/image directories, its own cgroup subtree, and a handle to start, stop
//! and `kill -9` a kernlet process inside it.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::hygiene::{self, ip};

/// The lab bridge's own address; the control plane listens here.
pub const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The bridge's IPv6 address: the underlay is dual-stack, nodes at
/// fd00:198:18::<10+n>/64 beside 198.18.0.<10+n>/24.
pub const BRIDGE_IP6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, 1);

/// The underlay: a bridge in its own namespace that nodes attach to.
pub struct Lab {
    name: String,
    bridge_ns: String,
    next: u8,
}

impl Lab {
    /// Creates the bridge namespace `kltest-<pid>-<name>-br` with bridge `br0` at
    /// 198.18.0.1/24 and fd00:198:18::1/64. Sweeps leftovers of killed runs first.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        hygiene::sweep_once();
        let bridge_ns = format!("{}-{name}-br", hygiene::run_prefix());
        ip(&["netns", "add", &bridge_ns])?;
        let lab = Self {
            name: name.into(),
            bridge_ns,
            next: 10,
        };
        ip(&["-n", &lab.bridge_ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &lab.bridge_ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &lab.bridge_ns,
            "addr",
            "add",
            "198.18.0.1/24",
            "dev",
            "br0",
        ])?;
        // nodad: usable at once, no duplicate detection to wait for.
        ip(&[
            "-n",
            &lab.bridge_ns,
            "addr",
            "add",
            &format!("{BRIDGE_IP6}/64"),
            "dev",
            "br0",
            "nodad",
        ])?;
        ip(&["-n", &lab.bridge_ns, "link", "set", "br0", "up"])?;
        // A real apiserver reaches this lab's nodes through the kit's egress proxy.
        crate::egress::set_lab_network(Some(format!("/run/netns/{}", lab.bridge_ns).into()));
        Ok(lab)
    }

    /// The bridge's namespace name.
    pub fn bridge_netns(&self) -> &str {
        &self.bridge_ns
    }

    /// Binds a TCP listener inside the bridge namespace, so a server in this process
    /// (the control plane) is reachable from every node at 198.18.0.1.
    pub fn listen_on_bridge(&self, port: u16) -> anyhow::Result<std::net::TcpListener> {
        self.in_bridge(move || {
            let l = std::net::TcpListener::bind((BRIDGE_IP, port))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
    }

    /// Binds a UDP socket at 198.18.0.1:`port` inside the bridge namespace.
    pub fn udp_on_bridge(&self, port: u16) -> anyhow::Result<std::net::UdpSocket> {
        self.in_bridge(move || {
            let s = std::net::UdpSocket::bind((BRIDGE_IP, port))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
    }

    /// Binds a TCP listener at 198.18.0.1:`port` inside the bridge namespace.
    pub fn tcp_on_bridge(&self, port: u16) -> anyhow::Result<std::net::TcpListener> {
        self.in_bridge(move || {
            let s = std::net::TcpListener::bind((BRIDGE_IP, port))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
    }

    /// Runs `make` (which opens a socket) inside the bridge namespace.
    fn in_bridge<T: Send + 'static>(
        &self,
        make: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = format!("/run/netns/{}", self.bridge_ns);
        // setns changes only the calling thread; a scratch thread keeps ours untouched.
        std::thread::spawn(move || -> anyhow::Result<T> {
            let ns = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .context("setns into the lab bridge")?;
            Ok(make()?)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the bridge namespace thread panicked"))?
    }

    /// Forwards TCP connections to `bridge_port` on 198.18.0.1 (inside the lab; 0 picks
    /// a port) to `target` (the control plane on loopback in the test's namespace).
    /// Dropping the returned handle closes the port and every forwarded connection; a
    /// new forward on the same port brings the control plane back.
    pub fn forward(
        &self,
        bridge_port: u16,
        target: std::net::SocketAddr,
    ) -> anyhow::Result<Forward> {
        let listener = tokio::net::TcpListener::from_std(self.listen_on_bridge(bridge_port)?)?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            // Connections live in this set: stopping the forward cuts them all, so
            // clients see the control plane vanish, not just new connects fail.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { break };
                        connections.spawn(async move {
                            if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                        });
                    }
                    Some(_) = connections.join_next() => {}
                }
            }
        });
        Ok(Forward {
            task,
            url: format!("https://{BRIDGE_IP}:{port}"),
        })
    }

    /// Adds a node: namespace, veth into the bridge, addresses 198.18.0.<10+n>/24 and
    /// fd00:198:18::<10+n>/64, its directories and cgroup.
    pub fn add_node(&mut self, label: &str) -> anyhow::Result<SimNode> {
        let ns = format!("{}-{}-{label}", hygiene::run_prefix(), self.name);
        let address = Ipv4Addr::new(198, 18, 0, self.next);
        self.next += 1;
        let root = tempfile::Builder::new()
            .prefix(&format!("{}-{label}-", hygiene::run_prefix()))
            .tempdir()?;
        let cgroup = hygiene::cgroup_base()?
            .join(hygiene::run_prefix())
            .join(format!("{}-{label}", self.name));
        let node = SimNode {
            name: label.to_string(),
            netns: ns.clone(),
            address,
            root,
            cgroup,
            kernlet: None,
        };
        ip(&["netns", "add", &ns])?;
        let host_side = format!("v{}", self.next - 1);
        ip(&[
            "-n",
            &self.bridge_ns,
            "link",
            "add",
            &host_side,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ])?;
        ip(&[
            "-n",
            &self.bridge_ns,
            "link",
            "set",
            &host_side,
            "master",
            "br0",
            "up",
        ])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/64", node.ip6()),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "route", "add", "default", "via", "198.18.0.1"])?;
        ip(&[
            "-n",
            &ns,
            "-6",
            "route",
            "add",
            "default",
            "via",
            &BRIDGE_IP6.to_string(),
        ])?;
        for d in ["state", "run", "logs", "images"] {
            std::fs::create_dir_all(node.root.path().join(d))?;
        }
        std::fs::create_dir_all(&node.cgroup)
            .with_context(|| format!("create cgroup {}", node.cgroup.display()))?;
        Ok(node)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if crate::egress::lab_network().is_some_and(|n| n.ends_with(&self.bridge_ns)) {
            crate::egress::set_lab_network(None);
        }
        let _ = ip(&["netns", "delete", &self.bridge_ns]);
        // The per-run cgroup parent goes once its node cgroups are gone.
        if let Ok(base) = hygiene::cgroup_base() {
            let _ = std::fs::remove_dir(base.join(hygiene::run_prefix()));
        }
    }
}

/// A running forward from the lab bridge; stops when dropped.
pub struct Forward {
    task: tokio::task::JoinHandle<()>,
    /// `https://198.18.0.1:<port>`: the control plane as nodes reach it.
    pub url: String,
}

impl Forward {
    /// The bridge port this forward listens on.
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The path of the `kernlet` binary the tests run: `$KERNLET_BIN`, or next to the test
/// executable's `deps/` directory (`cargo xtask test` builds it first).
pub fn kernlet_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("KERNLET_BIN") {
        return Ok(PathBuf::from(p));
    }
    // Test binaries live in target/<profile>/deps, tools (the benchmark) in
    // target/<profile>: kernlet is next to the tool, or one level up from a test.
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no target dir")?;
    let candidate = [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join("kernlet"))
        .find(|c| c.is_file())
        .unwrap_or_else(|| dir.join("kernlet"));
    if !candidate.is_file() {
        bail!(
            "{} not found; build it first (cargo build -p kernlet) or set KERNLET_BIN",
            candidate.display()
        );
    }
    Ok(candidate)
}

/// A simulated node.
pub struct SimNode {
    pub name: String,
    pub netns: String,
    pub address: Ipv4Addr,
    root: tempfile::TempDir,
    cgroup: PathBuf,
    kernlet: Option<Child>,
}

impl SimNode {
    /// Root of the node's directories (`state`, `run`, `logs`, `images`).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    pub fn dir(&self, which: &str) -> PathBuf {
        self.root.path().join(which)
    }

    /// The node's cgroup (cgroup v2, below the machine's cgroup2 mount).
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    pub fn ip(&self) -> IpAddr {
        IpAddr::V4(self.address)
    }

    /// The node's IPv6 underlay address: fd00:198:18::<last byte of the IPv4 one>.
    pub fn ip6(&self) -> std::net::Ipv6Addr {
        std::net::Ipv6Addr::new(
            0xfd00,
            0x198,
            0x18,
            0,
            0,
            0,
            0,
            u16::from(self.address.octets()[3]),
        )
    }

    /// A command that runs "on the node": inside its network namespace and cgroup.
    /// `nsenter` without `--fork` execs in place, and the shell moves itself into the
    /// cgroup before exec, so the pid is the command's and children stay in the cgroup.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .arg("sh")
            .arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(self.cgroup.join("cgroup.procs"))
            .arg(program.as_ref());
        cmd
    }

    /// Runs a command on the node and returns its output.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .with_context(|| format!("run {program} on {}", self.name))?;
        Ok(out)
    }

    /// The flags that give a kernlet its own directories, cgroup root and bpffs dir.
    pub fn kernlet_dir_flags(&self) -> Vec<String> {
        let cg_rel = self
            .cgroup
            .strip_prefix(hygiene::cgroup_base().unwrap_or_default())
            .map(|p| p.join("kernlet"))
            .unwrap_or_default();
        vec![
            "--state-dir".into(),
            self.dir("state").display().to_string(),
            "--run-dir".into(),
            self.dir("run").display().to_string(),
            "--log-dir".into(),
            self.dir("logs").display().to_string(),
            "--image-dir".into(),
            self.dir("images").display().to_string(),
            "--cgroup-root".into(),
            cg_rel.display().to_string(),
            "--bpffs-dir".into(),
            self.dir("bpf").display().to_string(),
            "--kubelet-dir".into(),
            self.dir("kubelet").display().to_string(),
        ]
    }

    /// Starts `kernlet <args> <dir flags>` on the node; output goes to `logs/kernlet.log`.
    pub fn start_kernlet(&mut self, args: &[&str]) -> anyhow::Result<u32> {
        if self.kernlet.is_some() {
            bail!("kernlet already runs on {}", self.name);
        }
        let log = std::fs::File::create(self.dir("logs").join("kernlet.log"))?;
        // A simulated node shares the machine's disk with everything else on it (a CI
        // run once saw it fall under 1 % free for minutes): how full that disk is is
        // not the node's to judge, so it watches no disk signal and collects images by
        // age only, unless a test sets thresholds itself.
        let mut loose: Vec<&str> = Vec::new();
        if matches!(args.first(), Some(&"run" | &"join")) {
            if !args.contains(&"--eviction-hard") {
                loose.extend(["--eviction-hard", "memory.available<100Mi"]);
            }
            if !args.contains(&"--image-gc-high-threshold") {
                loose.extend([
                    "--image-gc-high-threshold",
                    "100",
                    "--image-gc-low-threshold",
                    "99",
                ]);
            }
        }
        let child = self
            .command(kernlet_bin()?)
            .args(args)
            .args(&loose)
            .args(self.kernlet_dir_flags())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        let pid = child.id();
        self.kernlet = Some(child);
        Ok(pid)
    }

    /// The pid of the node's running kernlet, if one runs.
    pub fn kernlet_pid(&self) -> Option<u32> {
        self.kernlet.as_ref().map(std::process::Child::id)
    }

    /// Starts `kernlet run` on the node as `system:node:<name>` of `cluster`, reached
    /// at `url` (its kubeconfig written to `state/node.kubeconfig`), with `extra` flags.
    pub fn start_agent(
        &mut self,
        cluster: &crate::cluster::Cluster,
        url: &str,
        extra: &[&str],
    ) -> anyhow::Result<u32> {
        let kubeconfig = self.dir("state").join("node.kubeconfig");
        cluster.kubeconfig_at(
            url,
            &format!("system:node:{}", self.name),
            &["system:nodes"],
            &kubeconfig,
        )?;
        let kc = kubeconfig.display().to_string();
        let name = self.name.clone();
        let mut args = vec!["run", "--kubeconfig", &kc, "--node-name", &name];
        args.extend_from_slice(extra);
        self.start_kernlet(&args)
    }

    /// Imports the OCI layout `layout` into this node's image store as `name`
    /// (`kernlet image import`).
    pub fn import_layout(&self, layout: &Path, name: &str) -> anyhow::Result<()> {
        let out = Command::new(kernlet_bin()?)
            .args(["image", "import"])
            .arg(layout)
            .args(["--name", name, "--image-dir"])
            .arg(self.dir("images"))
            .output()?;
        anyhow::ensure!(out.status.success(), "importing {name}: {out:?}");
        Ok(())
    }

    /// Imports the busybox image (built with umoci) into this node's image store as
    /// `busybox:1.36`.
    pub fn import_busybox(&self) -> anyhow::Result<()> {
        let work = self.dir("image-build");
        std::fs::create_dir_all(&work)?;
        let layout = crate::oci::busybox_layout(&work, "1.36")?;
        let out = Command::new(kernlet_bin()?)
            .args(["image", "import"])
            .arg(&layout)
            .args(["--name", "busybox", "--image-dir"])
            .arg(self.dir("images"))
            .output()?;
        if !out.status.success() {
            bail!(
                "kernlet image import: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The pods `kernlet pods -o json` lists from the node's state directory.
    pub fn recorded_pods(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = Command::new(kernlet_bin()?)
            .args(["pods", "-o", "json", "--state-dir"])
            .arg(self.dir("state"))
            .output()?;
        if !out.status.success() {
            bail!(
                "kernlet pods failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// The recorded pod named `name`, if any.
    pub fn recorded_pod(&self, name: &str) -> anyhow::Result<Option<serde_json::Value>> {
        Ok(self
            .recorded_pods()?
            .into_iter()
            .find(|p| p["metadata"]["name"] == name))
    }

    /// `kernlet status -o json` of this node (its kubeconfig, directories and pins).
    pub fn status_json(&self) -> anyhow::Result<serde_json::Value> {
        let out = self
            .command(kernlet_bin()?)
            .args(["status", "-o", "json", "--kubeconfig"])
            .arg(self.dir("state").join("node.kubeconfig"))
            .args(["--state-dir"])
            .arg(self.dir("state"))
            .args(["--run-dir"])
            .arg(self.dir("run"))
            .args(["--bpffs-dir"])
            .arg(self.dir("bpf"))
            .output()?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The kernlet log so far.
    pub fn kernlet_log(&self) -> String {
        std::fs::read_to_string(self.dir("logs").join("kernlet.log")).unwrap_or_default()
    }

    /// Stops kernlet with SIGTERM and waits up to `grace` before SIGKILL; returns the exit status.
    pub fn stop_kernlet(&mut self, grace: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.kernlet.take().context("kernlet is not running")?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Some(s) = child.try_wait()? {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill()?;
        Ok(child.wait()?)
    }

    /// `kill -9` of the kernlet process (its children stay, as after a crash).
    pub fn kill9_kernlet(&mut self) -> anyhow::Result<()> {
        let mut child = self.kernlet.take().context("kernlet is not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Whether the kernlet process still runs.
    pub fn kernlet_running(&mut self) -> bool {
        self.kernlet
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.kernlet.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = hygiene::remove_cgroup_tree(&self.cgroup);
        hygiene::unmount_under(self.root.path());
        let _ = ip(&["netns", "delete", &self.netns]);
        let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/{}", self.netns));
    }
}

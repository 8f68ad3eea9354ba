//! `cargo xtask run`: one kernlet node, as on a cluster, inside the network namespace
//! `kernlet-demo` (so trying it never changes the host's network): the test kit's
//! in-memory control plane on the namespace's loopback, a node joined to it with the pod
//! network (overlay) and the Service proxy, the pods and Service of `examples/demo.yaml`,
//! and the Service's EndpointSlice (the in-memory control plane has no slice
//! controller). It shows a page fetched from the web pod's address and through the
//! Service's ClusterIP from the tools pod, prints how to look further, and removes
//! everything when it ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{cargo, nix_is_root, output_of, run};

const NETNS: &str = "kernlet-demo";
const NODE: &str = "kernlet-demo";
/// The node's address: a veth pair inside the namespace is its underlay.
const NODE_IP: &str = "192.168.77.2";
const POD_CIDR: &str = "10.244.1.0/24";

/// The demo's directories, under the system temp dir.
fn base() -> PathBuf {
    std::env::temp_dir().join("kernlet-demo")
}

fn dir(name: &str) -> String {
    base().join(name).display().to_string()
}

fn netns_flag() -> String {
    format!("--net=/run/netns/{NETNS}")
}

/// The cgroup2 mount, from this process's mountinfo.
fn cgroup2() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if !right.starts_with("cgroup2 ") {
            return None;
        }
        left.split(' ').nth(4).map(PathBuf::from)
    })
}

/// What the demo started, stopped in reverse however the demo ends: the processes it
/// started (by their pids), the bpffs it mounted, its cgroup tree, the namespace.
#[derive(Default)]
struct Demo {
    children: Vec<Child>,
}

impl Demo {
    /// Stops the processes the demo started (SIGTERM, by pid), last started first.
    fn stop_processes(&mut self) {
        while let Some(mut c) = self.children.pop() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.stop_processes();
        let _ = Command::new("umount").arg(base().join("bpf/lb")).status();
        if let Some(root) = cgroup2().map(|c| c.join("kernlet-demo"))
            && root.is_dir()
        {
            let _ = Command::new("find")
                .arg(&root)
                .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
                .status();
        }
        let _ = Command::new("ip").args(["netns", "delete", NETNS]).status();
    }
}

/// A command run inside the demo's namespace.
fn in_ns(program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(netns_flag()).arg(program);
    c
}

/// kubectl against the demo's control plane; its output.
fn kubectl(args: &[&str]) -> Option<String> {
    let out = in_ns("kubectl")
        .arg("--kubeconfig")
        .arg(dir("admin.kubeconfig"))
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// kubectl with `json` on its stdin (`apply -f -`).
fn kubectl_apply(json: &serde_json::Value) -> Result<()> {
    use std::io::Write as _;
    let mut child = in_ns("kubectl")
        .arg("--kubeconfig")
        .arg(dir("admin.kubeconfig"))
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    child
        .stdin
        .take()
        .context("kubectl's stdin")?
        .write_all(json.to_string().as_bytes())?;
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "kubectl apply of {json} failed");
    Ok(())
}

/// Polls `f` until it gives a value, for at most `within`.
fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > within {
            bail!(
                "{what} did not happen within {} s; see {}",
                within.as_secs(),
                base().join("kernlet.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The recorded pods of the demo's state directory, as `kernlet pods -o json` lists them.
fn recorded_pods() -> String {
    output_of(
        "target/debug/kernlet",
        &["pods", "-o", "json", "--state-dir", &dir("state")],
    )
    .unwrap_or_default()
}

/// kernlet on the node, with the demo's directories and `args`.
fn kernlet(args: &[&str]) -> Command {
    let mut cmd = in_ns("target/debug/kernlet");
    cmd.args(args)
        .args(["--state-dir", &dir("state"), "--run-dir", &dir("run")])
        .args(["--log-dir", &dir("logs"), "--image-dir", &dir("images")])
        .args(["--cgroup-root", "kernlet-demo", "--bpffs-dir", &dir("bpf")])
        .args(["--kubelet-dir", &dir("kubelet")]);
    cmd
}

/// Pods an interrupted demo left: a standalone kernlet with no manifests removes them.
fn clear_leftovers() -> Result<()> {
    if !recorded_pods().contains("\"Pod\"") {
        return Ok(());
    }
    let empty = base().join("empty");
    std::fs::create_dir_all(&empty)?;
    let m = empty.display().to_string();
    let mut child = kernlet(&["run", "--standalone", "--manifests", &m])
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let _ = wait_for("removing the pods left", Duration::from_secs(60), || {
        (!recorded_pods().contains("\"Pod\"")).then_some(())
    });
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    child.wait()?;
    Ok(())
}

/// The namespace with loopback and the node's underlay (a veth pair).
fn network() -> Result<()> {
    if !Path::new(&format!("/run/netns/{NETNS}")).exists() {
        run(Command::new("ip").args(["netns", "add", NETNS]))?;
    }
    let ip = |args: &[&str]| run(in_ns("ip").args(args));
    ip(&["link", "set", "lo", "up"])?;
    if output_of(
        "nsenter",
        &[&netns_flag(), "ip", "link", "show", "kl-demo0"],
    )
    .is_none()
    {
        ip(&[
            "link", "add", "kl-demo0", "type", "veth", "peer", "name", "kl-demo1",
        ])?;
        ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "kl-demo0"])?;
    }
    ip(&["link", "set", "kl-demo0", "up"])?;
    ip(&["link", "set", "kl-demo1", "up"])
}

pub fn demo() -> Result<()> {
    run(cargo().args(["build", "--quiet", "--bins"]))?;
    if !nix_is_root() {
        bail!("kernlet needs root (namespaces, cgroups, BPF); run `cargo xtask run` as root");
    }
    let mut demo = Demo::default();
    network()?;
    clear_leftovers()?;
    // The image, built from Debian's busybox-static and imported: no registry needed.
    super::import_busybox(&base().join("images"), &base().join("build"))?;
    let kubeconfig = base().join("admin.kubeconfig");
    let _ = std::fs::remove_file(&kubeconfig);
    demo.children.push(
        in_ns("target/debug/kernlet-apiserver")
            .args(["--listen", "127.0.0.1:6443", "--allow-all", "--kubeconfig"])
            .arg(&kubeconfig)
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("starting the in-memory control plane")?,
    );
    wait_for("the control plane", Duration::from_secs(30), || {
        kubectl(&["get", "--raw", "/version"])
    })?;
    start_node(&mut demo)?;
    let (web_ip, cluster_ip) = run_pods()?;
    show(&web_ip, &cluster_ip);
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        println!("\npress Enter to stop the demo and remove its pods");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }
    // The pods leave through the apiserver, as on a cluster; then the node stops.
    let _ = kubectl(&["delete", "pod", "--all", "-n", "demo", "--wait=false"]);
    let _ = wait_for("the pods' removal", Duration::from_secs(60), || {
        (!recorded_pods().contains("\"Pod\"")).then_some(())
    });
    demo.stop_processes();
    // What did not go in time (or a failed start left) goes with a standalone kernlet.
    clear_leftovers()?;
    drop(demo);
    eprintln!(
        "demo stopped: pods removed, control plane stopped, network namespace {NETNS} deleted"
    );
    Ok(())
}

/// Starts the node (pod network, Service proxy for the demo's cgroup) and gives its
/// Node a pod CIDR, as the controller-manager would.
fn start_node(demo: &mut Demo) -> Result<()> {
    let cg = cgroup2()
        .context("no cgroup2 mount in /proc/self/mountinfo")?
        .join("kernlet-demo");
    std::fs::create_dir_all(&cg).with_context(|| format!("creating {}", cg.display()))?;
    let log = std::fs::File::create(base().join("kernlet.log"))?;
    let cg = cg.display().to_string();
    let kubeconfig = dir("admin.kubeconfig");
    demo.children.push(
        kernlet(&[
            "run",
            "--kubeconfig",
            &kubeconfig,
            "--node-name",
            NODE,
            "--node-ip",
            NODE_IP,
            "--cluster-cidr",
            "10.244.0.0/16",
            "--service-proxy",
            // Only the demo's pods (and commands run in them) reach Services.
            "--service-cgroup",
            &cg,
            "--service-resync",
            "1",
            // The demo's node shares the machine's disk, whose fill is not the demo's
            // to judge: no disk signal, images collected by age only (as the test
            // kit's nodes).
            "--eviction-hard",
            "memory.available<100Mi",
            "--image-gc-high-threshold",
            "100",
            "--image-gc-low-threshold",
            "99",
        ])
        .stderr(std::process::Stdio::from(log))
        .spawn()
        .context("starting kernlet")?,
    );
    eprintln!(
        "kernlet runs in network namespace {NETNS} (log: {})",
        base().join("kernlet.log").display()
    );
    wait_for("the node's registration", Duration::from_secs(60), || {
        kubectl(&["get", "node", NODE])
    })?;
    let patch = serde_json::json!({"spec": {"podCIDR": POD_CIDR, "podCIDRs": [POD_CIDR]}});
    kubectl(&["patch", "node", NODE, "-p", &patch.to_string()])
        .context("giving the Node its pod CIDR")?;
    Ok(())
}

/// Applies `examples/demo.yaml`, waits for the web pod, writes the Service's
/// EndpointSlice; the web pod's address and the Service's ClusterIP.
fn run_pods() -> Result<(String, String)> {
    kubectl(&["apply", "-f", "examples/demo.yaml"])
        .context("kubectl apply -f examples/demo.yaml")?;
    let web_ip = wait_for("the web pod running", Duration::from_secs(90), || {
        let pod: serde_json::Value = serde_json::from_str(&kubectl(&[
            "get", "pod", "web", "-n", "demo", "-o", "json",
        ])?)
        .ok()?;
        (pod["status"]["phase"] == "Running")
            .then(|| pod["status"]["podIP"].as_str().map(str::to_string))
            .flatten()
    })?;
    let svc: serde_json::Value = serde_json::from_str(
        &kubectl(&["get", "service", "web", "-n", "demo", "-o", "json"])
            .context("the web Service")?,
    )?;
    let cluster_ip = svc["spec"]["clusterIP"]
        .as_str()
        .context("the web Service has no clusterIP")?
        .to_string();
    kubectl_apply(&serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "demo",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [web_ip], "conditions": {"ready": true}, "nodeName": NODE}],
    }))?;
    wait_for("the tools pod running", Duration::from_secs(90), || {
        let pod: serde_json::Value = serde_json::from_str(&kubectl(&[
            "get", "pod", "tools", "-n", "demo", "-o", "json",
        ])?)
        .ok()?;
        (pod["status"]["phase"] == "Running").then_some(())
    })?;
    Ok((web_ip, cluster_ip))
}

/// Fetches the page from the pod's address and through the Service, and prints how to
/// look further.
fn show(web_ip: &str, cluster_ip: &str) {
    let state = dir("state");
    let direct = output_of(
        "nsenter",
        &[
            &netns_flag(),
            "/bin/busybox",
            "wget",
            "-qO-",
            &format!("http://{web_ip}:8080/"),
        ],
    );
    println!(
        "\nthe web pod ({web_ip} on the pod network {POD_CIDR}) answers: {}",
        direct.as_deref().map_or("no answer", str::trim)
    );
    let url = format!("http://{cluster_ip}/");
    // The Service's frontend is programmed within a resync (1 s) of the slice.
    let through = wait_for(
        "an answer through the Service",
        Duration::from_secs(20),
        || {
            output_of(
                "target/debug/kernlet",
                &[
                    "exec",
                    "demo/tools",
                    "--state-dir",
                    &state,
                    "--",
                    "wget",
                    "-qO-",
                    &url,
                ],
            )
        },
    );
    println!(
        "through the Service web ({cluster_ip}:80) from the tools pod: {}",
        through.as_deref().map_or("no answer", str::trim)
    );
    let ns = format!("nsenter --net=/run/netns/{NETNS}");
    let kc = dir("admin.kubeconfig");
    println!("\nlook further:");
    println!("  {ns} kubectl --kubeconfig {kc} get nodes,pods,services -A -o wide");
    println!("  target/debug/kernlet exec demo/tools --state-dir {state} -- wget -qO- {url}");
    println!(
        "  target/debug/kernlet services --bpffs-dir {} --kubeconfig {kc}",
        dir("bpf")
    );
    println!(
        "  crictl --runtime-endpoint unix://{}/cri.sock ps   (pods, logs, exec, stats, images)",
        dir("run")
    );
    println!(
        "  target/debug/kernlet pods --state-dir {state} --run-dir {}",
        dir("run")
    );
    let _ = Command::new("target/debug/kernlet")
        .args(["pods", "--state-dir", &state, "--run-dir", &dir("run")])
        .status();
}

//! `cargo xtask bench services`: the Service datapath's programming cost. One kernlet
//! node in a lab namespace with two backend pods; Services of one port and two
//! endpoints each are created through the apiserver (a real one with
//! `KUBEBUILDER_ASSETS`, the kit's otherwise). Measured: one Service added and removed
//! with 1k and 10k (and with `KERNLET_BENCH_50K=1`, 50k) present, from the apiserver's
//! write until the datapath answers (or stops answering); a cold start with 10k present;
//! new connections per second through a ClusterIP against straight to the pod. Beside
//! each figure, the same for a stock kube-proxy (nftables and iptables modes) run in
//! the same node namespace when `KUBEBUILDER_ASSETS` holds a `kube-proxy`, and for the
//! change alone applied with `nft -f` as a kube-proxy-shaped ruleset.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::kube_proxy::{self, KubeProxy, Mode};
use crate::overlay::{apply_node_rbac, in_netns, sleeping_pod, start_overlay_node};
use crate::simnode::{BRIDGE_IP, Forward, Lab, SimNode};

/// Waits until a TCP connect to `ip:80` is answered (or, with `gone`, fails); prints
/// the wall-clock time (seconds since the epoch) at which the attempt that first saw it
/// began. Connects wait 10 ms and follow each other 2 ms apart, so the time is late by
/// at most that. Bounded at 300 s (kube-proxy's nftables mode can take minutes a sync
/// at 10k Services here).
const PROBE: &str = r#"
import socket, sys, time
ip, gone = sys.argv[1], sys.argv[2] == "1"
start = time.time()
while time.time() - start < 300:
    began = time.time()
    try:
        s = socket.create_connection((ip, 80), timeout=0.01)
        ok = True
        s.close()
    except OSError:
        ok = False
    if ok != gone:
        print(repr(began))
        sys.exit(0)
    time.sleep(0.002)
sys.exit(1)
"#;

/// New TCP connections per second for 3 s (connect, 1-byte request, 1-byte answer,
/// close) to `ip:port`.
const CONNECT_RATE: &str = r#"
import socket, sys, time
ip, port = sys.argv[1], int(sys.argv[2])
start, n = time.time(), 0
while time.time() - start < 3 and n < 1000000:
    s = socket.create_connection((ip, port), timeout=3)
    s.sendall(b"x")
    s.recv(1)
    s.close()
    n += 1
print(n / (time.time() - start))
"#;

/// Who answers a probe: kernlet's socket load-balancer (a process of the node's
/// cgroup) or whatever translates for the rest of the namespace (kube-proxy's rules).
#[derive(Clone, Copy)]
enum Client {
    Kernlet,
    Namespace,
}

pub fn run() -> anyhow::Result<Value> {
    anyhow::ensure!(
        Path::new("/usr/sbin/nft").exists(),
        "nft is not installed: run cargo xtask setup (Debian package nftables)"
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(async { Bench::start().await?.measure().await })
}

/// Fields drop in order: the node before the lab (whose cgroup parent goes only once
/// empty), the control plane last.
struct Bench {
    node: SimNode,
    fwd: Forward,
    lab: Lab,
    cluster: Cluster,
    eps: [Ipv4Addr; 2],
    services: Api<Service>,
    slices: Api<EndpointSlice>,
    node_ns: PathBuf,
    next: usize,
    kube_proxy: Option<PathBuf>,
}

impl Bench {
    async fn start() -> anyhow::Result<Self> {
        let cluster = Cluster::start(&[BRIDGE_IP.into()]).await?;
        let mut lab = Lab::new("bsvc")?;
        let fwd = lab.forward(0, cluster.addr())?;
        apply_node_rbac(&cluster)?;
        let mut node = lab.add_node("bs")?;
        node.import_busybox()?;
        start_proxy_node(&cluster, &fwd, &mut node, 1).await?;
        let admin = cluster.admin().await?;
        let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
        let mut eps = Vec::new();
        for name in ["bench-a", "bench-b"] {
            let (ip, netns) = sleeping_pod(&cluster, &pods, &node, name).await?;
            serve_one_byte(&netns, ip)?;
            eps.push(ip);
        }
        let node_ns = PathBuf::from(format!("/run/netns/{}", node.netns));
        Ok(Self {
            services: Api::namespaced(admin.clone(), "default"),
            slices: Api::namespaced(admin, "default"),
            cluster,
            lab,
            fwd,
            node,
            eps: [eps[0], eps[1]],
            node_ns,
            next: 100_000,
            kube_proxy: kube_proxy::binary(),
        })
    }

    async fn measure(mut self) -> anyhow::Result<Value> {
        let sizes = sizes()?;
        // Where the cold starts are measured: 10k, or the largest size below it.
        let cold_at = sizes
            .iter()
            .copied()
            .filter(|n| *n <= 10_000)
            .max()
            .unwrap_or(sizes[0]);
        let (mut rows, mut at_cold) = (Vec::new(), json!(null));
        let mut from = 0;
        for &present in &sizes {
            self.create_many(from..present).await?;
            from = present;
            self.wait_frontends(present)?;
            let row = self.row(present).map_err(|e| {
                let log = self.node.kernlet_log();
                let lines: Vec<&str> = log.lines().collect();
                e.context(format!(
                    "kernlet's log ends:\n{}",
                    lines[lines.len().saturating_sub(30)..].join("\n")
                ))
            })?;
            print_row(&row);
            rows.push(row);
            if present == cold_at {
                at_cold = self.cold_and_rate(present).await?;
            }
        }
        let kernlet = |row: &Value, what: &str| row["kernlet"][what].as_f64().unwrap_or(f64::NAN);
        for row in &rows[1..] {
            println!(
                "kernlet add with {} present: {:.2}x the figure with {} ({:.2}x after the write)",
                row["present"],
                kernlet(row, "add_s") / kernlet(&rows[0], "add_s"),
                sizes[0],
                kernlet(row, "add_after_write_s") / kernlet(&rows[0], "add_after_write_s"),
            );
        }
        let _ = (&self.lab, &self.fwd);
        Ok(json!({"one_service": rows, "cold_start": at_cold}))
    }

    /// One Service added and removed with `present` there: kernlet, kube-proxy's two
    /// modes with their cold starts (up to 10k, where the goals compare: past it a sync
    /// takes kube-proxy minutes here — nftables did not answer a change at 10k within
    /// the probe's 300 s), and the change alone with `nft -f`.
    fn row(&mut self, present: usize) -> anyhow::Result<Value> {
        let kernlet = self.add_remove(Client::Kernlet, 5)?;
        let nft_cold = nft_cold(&self.node_ns, &nft_services(present, self.eps))?;
        let mut nft = nft_delta(&self.node_ns, present, self.eps)?;
        nft["cold_s"] = json!(nft_cold);
        let _ = nft_apply(&self.node_ns, "delete table ip kube-proxy-bench\n");
        let mut row = json!({"present": present, "kernlet": kernlet, "nft": nft});
        print_row(&row);
        for mode in [Mode::Nftables, Mode::Iptables] {
            if present > 10_000 {
                continue;
            }
            if let Some(figures) = self.kube_proxy_at(mode, present)? {
                row[format!("kube_proxy_{}", mode.flag())] = figures;
            }
        }
        Ok(row)
    }

    /// kernlet's cold start with `present` Services (a second node joining) and new
    /// connections per second through a ClusterIP against straight to the pod.
    async fn cold_and_rate(&mut self, present: usize) -> anyhow::Result<Value> {
        let last_ip = self.cluster_ip(&format!("bench-{}", present - 1)).await?;
        let cold = self.kernlet_cold_start(last_ip, present)?;
        println!(
            "cold start with {present} services: kernlet {cold:.2} s (kube-proxy's and nft's in the row above)"
        );
        let client_cg = self.node.cgroup().join("bench-client");
        let rate = |ip: Ipv4Addr, port: &str| -> anyhow::Result<f64> {
            Ok(py(
                Some(&client_cg),
                &self.node_ns,
                CONNECT_RATE,
                &[ip.to_string(), port.into()],
            )?
            .parse()?)
        };
        let (via_service, direct) = (rate(last_ip, "80")?, rate(self.eps[0], "8080")?);
        println!(
            "connect+request: {via_service:.0}/s through the ClusterIP, {direct:.0}/s to the pod (ratio {:.2})",
            via_service / direct
        );
        Ok(json!({
            "present": present,
            "kernlet_s": cold,
            "connect_request_per_s": {"cluster_ip": via_service, "pod_ip": direct, "ratio": via_service / direct},
        }))
    }

    /// Service `bench-<i>` (at `ip` when given) with its slice of the two backends.
    async fn create(&self, i: usize, ip: Option<Ipv4Addr>) -> anyhow::Result<Ipv4Addr> {
        let name = format!("bench-{i}");
        let mut svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
        }))?;
        if let (Some(spec), Some(ip)) = (svc.spec.as_mut(), ip) {
            spec.cluster_ip = Some(ip.to_string());
        }
        let svc = self.services.create(&PostParams::default(), &svc).await?;
        let ip = svc
            .spec
            .and_then(|s| s.cluster_ip)
            .unwrap_or_default()
            .parse()?;
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-x"), "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [self.eps[0].to_string()]}, {"addresses": [self.eps[1].to_string()]}],
        }))?;
        self.slices.create(&PostParams::default(), &slice).await?;
        Ok(ip)
    }

    async fn create_many(&self, range: std::ops::Range<usize>) -> anyhow::Result<()> {
        let results: Vec<_> = futures::stream::iter(range.map(|i| self.create(i, None)))
            .buffer_unordered(16)
            .collect()
            .await;
        for r in results {
            r?;
        }
        Ok(())
    }

    async fn cluster_ip(&self, name: &str) -> anyhow::Result<Ipv4Addr> {
        let svc = self.services.get(name).await?;
        Ok(svc
            .spec
            .and_then(|s| s.cluster_ip)
            .unwrap_or_default()
            .parse()?)
    }

    fn wait_frontends(&self, want: usize) -> anyhow::Result<()> {
        let pins = self.node.dir("bpf").join("lb");
        let start = Instant::now();
        while frontends(&pins) < want {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(300),
                "the maps never held {want} frontends"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// [`timed_in`] the node's namespace, probing as `client`.
    fn timed(
        &self,
        client: Client,
        ip: Ipv4Addr,
        gone: bool,
        change: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<Timed> {
        let cg = match client {
            Client::Kernlet => Some(self.node.cgroup().join("bench-client")),
            Client::Namespace => None,
        };
        timed_in(cg.as_deref(), &self.node_ns, ip, gone, change)
    }

    /// One Service added and removed `reps` times with `present` there: the medians of the
    /// seconds from the first request (the Service's create, then the slice's; the
    /// Service's delete) until it answers, and until it no longer does; and the same
    /// from the apiserver's answer to the last request (the writes done: what the proxy
    /// alone takes, the apiserver's own time with `present` objects left out).
    /// Its ClusterIP is chosen (from the low band the allocator leaves to such choices)
    /// so the probe can wait for it before it exists.
    fn add_remove(&mut self, client: Client, reps: usize) -> anyhow::Result<Value> {
        let (mut adds, mut removes) = (Vec::new(), Vec::new());
        let rt = tokio::runtime::Handle::current();
        for _ in 0..reps {
            let i = self.next;
            self.next += 1;
            let ip = Ipv4Addr::new(10, 96, 0, 100 + (i % 150) as u8);
            let name = format!("bench-{i}");
            // Apart from the last change by more than a proxy's minimum sync interval
            // (kube-proxy's is 1 s), so each change is measured alone.
            std::thread::sleep(Duration::from_millis(1200));
            adds.push(self.timed(client, ip, false, || {
                tokio::task::block_in_place(|| rt.block_on(self.create(i, Some(ip))))?;
                Ok(())
            })?);
            std::thread::sleep(Duration::from_millis(1200));
            // The Service's delete alone takes it out of every proxy: its slice goes
            // after the measure.
            removes.push(self.timed(client, ip, true, || {
                tokio::task::block_in_place(|| {
                    rt.block_on(self.services.delete(&name, &Default::default()))
                })?;
                Ok(())
            })?);
            tokio::task::block_in_place(|| {
                rt.block_on(
                    self.slices
                        .delete(&format!("{name}-x"), &Default::default()),
                )
            })?;
        }
        let pick =
            |v: &[Timed], f: fn(&Timed) -> f64| median(&mut v.iter().map(f).collect::<Vec<_>>());
        Ok(json!({
            "add_s": pick(&adds, |t| t.from_request),
            "remove_s": pick(&removes, |t| t.from_request),
            "add_after_write_s": pick(&adds, |t| t.from_write),
            "remove_after_write_s": pick(&removes, |t| t.from_write),
        }))
    }

    /// A stock kube-proxy in `mode` started in the node's namespace with `present`
    /// Services there: seconds from its start until the last of them answers, then one
    /// Service added and removed 3 times (5 for kernlet: a change can take kube-proxy minutes
    /// at 10k here). `None` without a kube-proxy binary.
    fn kube_proxy_at(&mut self, mode: Mode, present: usize) -> anyhow::Result<Option<Value>> {
        let Some(bin) = self.kube_proxy.clone() else {
            return Ok(None);
        };
        let rt = tokio::runtime::Handle::current();
        let last = format!("bench-{}", present - 1);
        let last_ip = tokio::task::block_in_place(|| rt.block_on(self.cluster_ip(&last)))?;
        let kubeconfig = self.node.dir("run").join("kube-proxy.kubeconfig");
        self.cluster.kubeconfig_at(
            &self.fwd.url,
            "kube-proxy-bench",
            &["system:masters"],
            &kubeconfig,
        )?;
        let log = self
            .node
            .dir("logs")
            .join(format!("kube-proxy-{}-{present}.log", mode.flag()));
        let mut proxy = None;
        let cold = self.timed(Client::Namespace, last_ip, false, || {
            proxy = Some(KubeProxy::start(
                &bin,
                mode,
                &self.node_ns,
                &kubeconfig,
                &self.node.name,
                &log,
            )?);
            Ok(())
        });
        // A kube-proxy that does not answer in the probe's time is a figure too: it is
        // recorded as failed (with its log's end on stderr) and the bench goes on.
        let failed = |what: &str, e: anyhow::Error, proxy: &Option<KubeProxy>| {
            let tail = proxy.as_ref().map(|p| p.log_tail()).unwrap_or_default();
            eprintln!(
                "kube-proxy ({}) with {present} present: {what}: {e:#}\n{tail}",
                mode.flag()
            );
            format!("{what}: {e:#}")
        };
        let cold = match cold {
            Ok(cold) => cold.from_request,
            Err(e) => {
                return Ok(Some(
                    json!({"failed": failed(&format!("never served {last}"), e, &proxy)}),
                ));
            }
        };
        let change = match self.add_remove(Client::Namespace, 3) {
            Ok(mut change) => {
                change["cold_s"] = json!(cold);
                change
            }
            Err(e) => json!({"cold_s": cold, "failed": failed("a change", e, &proxy)}),
        };
        drop(proxy);
        Ok(Some(change))
    }

    /// A second node joins with the Services there: from its kernlet's start until
    /// `last_ip` answers from it (the backends are on the first node, over the overlay).
    fn kernlet_cold_start(&mut self, last_ip: Ipv4Addr, present: usize) -> anyhow::Result<f64> {
        let mut cold_node = self.lab.add_node("bt")?;
        let ns = PathBuf::from(format!("/run/netns/{}", cold_node.netns));
        let client = cold_node.cgroup().join("bench-client");
        let rt = tokio::runtime::Handle::current();
        let (cluster, fwd) = (&self.cluster, &self.fwd);
        let cold = timed_in(Some(&client), &ns, last_ip, false, || {
            tokio::task::block_in_place(|| {
                rt.block_on(start_proxy_node(cluster, fwd, &mut cold_node, 2))
            })
        })?;
        let cold = cold.from_request;
        let held = frontends(&cold_node.dir("bpf").join("lb"));
        anyhow::ensure!(
            held >= present,
            "the new node answered with {held} of {present} frontends in its maps"
        );
        Ok(cold)
    }
}

/// Starts kernlet on `node` with the Service proxy translating for the node's cgroup
/// (resync 30 s), joined to the overlay as node `index`.
async fn start_proxy_node(
    cluster: &Cluster,
    fwd: &Forward,
    node: &mut SimNode,
    index: u8,
) -> anyhow::Result<()> {
    let cg = node.cgroup().display().to_string();
    let flags = [
        "--service-proxy",
        "--service-cgroup",
        &cg,
        "--service-resync",
        "30",
    ];
    start_overlay_node(cluster, &fwd.url, node, index, &flags).await
}

/// When a probe first saw a change, in seconds.
#[derive(Clone, Copy, Debug)]
struct Timed {
    /// From the start of the change (the first request to the apiserver).
    from_request: f64,
    /// From its end (the apiserver's answer to the last request: the write is done).
    from_write: f64,
}

/// Starts a probe (in `netns`, of `cgroup` when given) waiting for `ip` to answer (or,
/// with `gone`, not), lets it begin, runs `change`, and gives the time from the start
/// and from the end of `change` until the first attempt that saw it began.
fn timed_in(
    cgroup: Option<&Path>,
    netns: &Path,
    ip: Ipv4Addr,
    gone: bool,
    change: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Timed> {
    let args = [ip.to_string(), if gone { "1" } else { "0" }.into()];
    let probe = python(cgroup, netns, PROBE)?
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let t0 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let mut probe = probe;
    if let Err(e) = change() {
        let _ = probe.kill();
        let _ = probe.wait();
        return Err(e.context(format!("the change the probe of {ip} waited for")));
    }
    let t1 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let out = probe.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "the probe of {ip} (gone: {gone}) never saw it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let began: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    Ok(Timed {
        from_request: began - t0.as_secs_f64(),
        from_write: began - t1.as_secs_f64(),
    })
}

/// The numbers of Services the figures are taken at: `KERNLET_BENCH_SERVICES` (a
/// comma-separated list), else 1k and 10k, and 50k with `KERNLET_BENCH_50K=1` (opt-in:
/// apiservers create Services ever slower as they accumulate — the kit's about 10 a
/// second past 15k, the stock 1.36.2 one on this 2-core machine about 40 a second at
/// first and 12 past 30k — so getting there takes most of an hour).
fn sizes() -> anyhow::Result<Vec<usize>> {
    let mut sizes = match std::env::var("KERNLET_BENCH_SERVICES") {
        Ok(list) => list
            .split(',')
            .map(|n| n.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                anyhow::anyhow!(
                    "KERNLET_BENCH_SERVICES={list:?}: {e} (give counts like 1000,10000)"
                )
            })?,
        Err(_) => vec![1000, 10_000],
    };
    if std::env::var_os("KERNLET_BENCH_50K").is_some() {
        sizes.push(50_000);
    }
    sizes.sort_unstable();
    sizes.dedup();
    anyhow::ensure!(
        sizes.first().is_some_and(|n| *n > 0),
        "KERNLET_BENCH_SERVICES needs at least one count above 0"
    );
    Ok(sizes)
}

/// A listener on `ip:8080` in `netns` that answers each connection's byte.
fn serve_one_byte(netns: &Path, ip: Ipv4Addr) -> anyhow::Result<()> {
    let listener = in_netns(netns, move || std::net::TcpListener::bind((ip, 8080)))??;
    std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(&b);
            }
        }
    });
    Ok(())
}

fn frontends(pins: &Path) -> usize {
    kernlet::sys::lb::read_pinned(pins)
        .map(|(s, _)| s.len())
        .unwrap_or(0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn print_row(row: &Value) {
    let f = |v: &Value| {
        v.as_f64()
            .map(|x| format!("{x:.3} s"))
            .unwrap_or_else(|| "-".into())
    };
    let mut line = format!("one service with {} present:", row["present"]);
    for who in [
        "kernlet",
        "kube_proxy_nftables",
        "kube_proxy_iptables",
        "nft",
    ] {
        let r = &row[who];
        if r.is_null() {
            continue;
        }
        line += &format!(" {who} add {} remove {}", f(&r["add_s"]), f(&r["remove_s"]));
        if !r["add_after_write_s"].is_null() {
            line += &format!(
                " (after the write: {} / {})",
                f(&r["add_after_write_s"]),
                f(&r["remove_after_write_s"])
            );
        }
        if !r["cold_s"].is_null() {
            line += &format!(" cold start {}", f(&r["cold_s"]));
        }
        if !r["failed"].is_null() {
            line += " (failed, see above)";
        }
        line += ";";
    }
    println!("{line}");
}

/// `python3 -c code` in the network namespace `netns`, as a process of `cgroup` when
/// given (so the socket load-balancer attached there translates it).
fn python(
    cgroup: Option<&Path>,
    netns: &Path,
    code: &str,
) -> std::io::Result<std::process::Command> {
    match cgroup {
        Some(cg) => crate::python_in(cg, netns, code),
        None => {
            let mut c = std::process::Command::new("nsenter");
            c.arg(format!("--net={}", netns.display()))
                .args(["python3", "-c", code]);
            Ok(c)
        }
    }
}

/// Runs python `code` with `args` as [`python`] does; its stdout.
fn py(cgroup: Option<&Path>, netns: &Path, code: &str, args: &[String]) -> anyhow::Result<String> {
    let out = python(cgroup, netns, code)?.args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// kube-proxy's nftables mode for `services` (ClusterIP, port 80/TCP, two endpoints
/// each): a verdict map from address . protocol . port to a chain per service, which
/// picks an endpoint chain with `numgen random`, which DNATs.
fn nft_ruleset(services: &[(Ipv4Addr, [Ipv4Addr; 2])]) -> String {
    let mut out = String::from("table ip kube-proxy-bench {\n");
    out.push_str("  chain mark-for-masquerade { mark set mark or 0x4000 ; }\n");
    for (i, (_, eps)) in services.iter().enumerate() {
        for (j, ep) in eps.iter().enumerate() {
            out.push_str(&format!(
                "  chain ep-{i}-{j} {{ ip saddr {ep} jump mark-for-masquerade ; meta l4proto tcp dnat to {ep}:8080 ; }}\n"
            ));
        }
        out.push_str(&format!(
            "  chain svc-{i} {{ numgen random mod 2 vmap {{ 0 : goto ep-{i}-0 , 1 : goto ep-{i}-1 }} ; }}\n"
        ));
    }
    out.push_str("  map service-ips {\n    type ipv4_addr . inet_proto . inet_service : verdict\n");
    if !services.is_empty() {
        out.push_str("    elements = {\n");
        let lines: Vec<String> = services
            .iter()
            .enumerate()
            .map(|(i, (ip, _))| format!("      {ip} . tcp . 80 : goto svc-{i}"))
            .collect();
        out.push_str(&lines.join(",\n"));
        out.push_str("\n    }\n");
    }
    out.push_str("  }\n");
    out.push_str("  chain services { ip daddr . meta l4proto . th dport vmap @service-ips ; }\n");
    out.push_str("  chain nat-output { type nat hook output priority -100; policy accept; jump services ; }\n");
    out.push_str("  chain nat-prerouting { type nat hook prerouting priority -100; policy accept; jump services ; }\n");
    out.push_str("}\n");
    out
}

fn nft_services(n: usize, eps: [Ipv4Addr; 2]) -> Vec<(Ipv4Addr, [Ipv4Addr; 2])> {
    (0..n)
        .map(|i| {
            (
                Ipv4Addr::new(10, 110, (i / 256) as u8, (i % 256) as u8),
                eps,
            )
        })
        .collect()
}

/// The whole ruleset loaded into an empty table: seconds.
fn nft_cold(netns: &Path, services: &[(Ipv4Addr, [Ipv4Addr; 2])]) -> anyhow::Result<f64> {
    let _ = nft_apply(netns, "delete table ip kube-proxy-bench\n");
    Ok(nft_apply(netns, &nft_ruleset(services))?.as_secs_f64())
}

/// One service's chains and element added to, then removed from, the loaded ruleset, as
/// nft would make the change: seconds for each.
fn nft_delta(netns: &Path, present: usize, eps: [Ipv4Addr; 2]) -> anyhow::Result<Value> {
    let i = present;
    let ip = Ipv4Addr::new(10, 111, (i / 256) as u8, (i % 256) as u8);
    let add = format!(
        "add chain ip kube-proxy-bench ep-{i}-0 {{ ip saddr {a} jump mark-for-masquerade ; meta l4proto tcp dnat to {a}:8080 ; }}\nadd chain ip kube-proxy-bench ep-{i}-1 {{ ip saddr {b} jump mark-for-masquerade ; meta l4proto tcp dnat to {b}:8080 ; }}\nadd chain ip kube-proxy-bench svc-{i} {{ numgen random mod 2 vmap {{ 0 : goto ep-{i}-0 , 1 : goto ep-{i}-1 }} ; }}\nadd element ip kube-proxy-bench service-ips {{ {ip} . tcp . 80 : goto svc-{i} }}\n",
        a = eps[0],
        b = eps[1]
    );
    let remove = format!(
        "delete element ip kube-proxy-bench service-ips {{ {ip} . tcp . 80 }}\ndelete chain ip kube-proxy-bench svc-{i}\ndelete chain ip kube-proxy-bench ep-{i}-0\ndelete chain ip kube-proxy-bench ep-{i}-1\n"
    );
    Ok(json!({
        "add_s": nft_apply(netns, &add)?.as_secs_f64(),
        "remove_s": nft_apply(netns, &remove)?.as_secs_f64(),
    }))
}

/// Applies `rules` with `nft -f` in the network namespace `netns`; the time it took.
fn nft_apply(netns: &Path, rules: &str) -> anyhow::Result<Duration> {
    let file = std::env::temp_dir().join(format!("kernlet-bench-{}.nft", std::process::id()));
    std::fs::write(&file, rules)?;
    let start = Instant::now();
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["nft", "-f"])
        .arg(&file)
        .output()?;
    let took = start.elapsed();
    let _ = std::fs::remove_file(&file);
    anyhow::ensure!(
        out.status.success(),
        "nft -f: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

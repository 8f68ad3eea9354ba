//! `cargo xtask`: the project's commands (setup, run, test, bench, apiserver).
//!
//! Everything a user or CI runs goes through here so the README stays two commands long.

mod vm;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and the tests need, when missing (idempotent).
    Setup,
    /// Run kernlet standalone with examples/ inside the `kernlet-demo` network namespace.
    Run,
    /// Format check, clippy -D warnings, unit tests, then the root end-to-end tests.
    Test {
        /// Extra arguments for the end-to-end test run (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        filter: Vec<String>,
    },
    /// Run named benchmarks (all when none named); JSON results go to target/bench/.
    Bench { names: Vec<String> },
    /// cgroup v2 limit enforcement, in a qemu VM with Debian's cloud kernel.
    VmTest,
    /// Start the test kit's in-memory control plane and print its kubeconfig path.
    Apiserver {
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

/// Debian packages the tests use, with a binary each provides to check for.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    // The build: libcontainer's seccomp support links libseccomp, found with pkg-config.
    ("libseccomp-dev", "/usr/include/seccomp.h"),
    ("pkg-config", "/usr/bin/pkg-config"),
    ("iproute2", "/usr/sbin/ip"),
    ("util-linux", "/usr/bin/nsenter"),
    ("iputils-ping", "/usr/bin/ping"),
    ("procps", "/usr/bin/ps"),
    ("openssl", "/usr/bin/openssl"),
    // Images for the runtime tests: built with umoci from busybox-static, converted and
    // archived with skopeo.
    ("umoci", "/usr/bin/umoci"),
    ("skopeo", "/usr/bin/skopeo"),
    ("busybox-static", "/usr/share/doc/busybox-static"),
    // A real registry for the pull tests, and its htpasswd file.
    ("docker-registry", "/usr/bin/docker-registry"),
    ("apache2-utils", "/usr/bin/htpasswd"),
    // The overlay benchmark's throughput measure.
    ("iperf3", "/usr/bin/iperf3"),
    // The services benchmark's comparison: kube-proxy's nftables mode applied with nft.
    ("nftables", "/usr/sbin/nft"),
    // A private D-Bus bus for the graceful-shutdown test's stand-in systemd-logind.
    ("dbus-daemon", "/usr/bin/dbus-daemon"),
    // The VM of `cargo xtask vm-test` (its kernel is downloaded and unpacked, not installed).
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
];

const BPF_LINKER_VERSION: &str = "0.9.15";

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    std::env::set_current_dir(&root).with_context(|| format!("cd {}", root.display()))?;
    match cli.command {
        Cmd::Setup => setup(),
        Cmd::Run => {
            setup()?;
            demo()
        }
        Cmd::Test { filter } => {
            setup()?;
            test(&filter)
        }
        Cmd::Bench { names } => bench(&names),
        Cmd::VmTest => {
            setup()?;
            vm::vm_test()
        }
        Cmd::Apiserver { args } => {
            let mut cmd = cargo();
            cmd.args([
                "run",
                "--quiet",
                "-p",
                "kernlet-tests",
                "--bin",
                "kernlet-apiserver",
                "--",
            ]);
            cmd.args(args);
            run(&mut cmd)
        }
    }
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", show(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", show(cmd));
    }
    Ok(())
}

fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn output_of(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn setup() -> Result<()> {
    let mut did = Vec::new();

    let installed = output_of("rustup", &["component", "list", "--toolchain", "nightly", "--installed"])
        .context("rustup has no nightly toolchain; the eBPF build needs one (rustup toolchain install nightly)")?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
        did.push("added rust-src to the nightly toolchain");
    }

    let linker_ok = output_of("bpf-linker", &["--version"]).is_some();
    if !linker_ok {
        run(cargo().args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
        ]))?;
        did.push("installed bpf-linker");
    }

    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(_, bin)| !Path::new(bin).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if !missing.is_empty() {
        run(Command::new("apt-get").arg("update"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        did.push("installed Debian packages");
    }

    if did.is_empty() {
        eprintln!("setup: nothing to do (rust-src, bpf-linker and test packages present)");
    } else {
        eprintln!("setup: {}", did.join("; "));
    }
    Ok(())
}

fn test(filter: &[String]) -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // Unit tests: pure logic, no root needed.
    run(cargo().args(["test", "--lib", "--bins"]))?;
    // End-to-end tests: root, network namespaces, cgroups, BPF. Each test binary runs its
    // tests one after another: they share kernel resources and a 2-core machine.
    if !nix_is_root() {
        bail!("the end-to-end tests need root (network namespaces, cgroups, BPF); run as root");
    }
    // The end-to-end tests start the kernlet binary itself. Every cargo call here
    // selects the whole workspace, so dependencies are built with one feature set (and
    // the nested eBPF build runs once), not once per package selection.
    run(cargo().args(["build", "--bins"]))?;
    // First against the test kit's in-memory control plane, then, where
    // KUBEBUILDER_ASSETS names stock binaries, the same tests against those.
    let assets = std::env::var_os("KUBEBUILDER_ASSETS").filter(|a| !a.is_empty());
    let e2e = || {
        let mut c = cargo();
        c.args(["test", "--test", "*", "--", "--test-threads=1"]);
        c.args(filter);
        c
    };
    eprintln!("end-to-end tests against the in-memory control plane");
    run(e2e().env_remove("KUBEBUILDER_ASSETS"))?;
    match &assets {
        Some(dir) => {
            check_assets(Path::new(dir))?;
            eprintln!(
                "end-to-end tests again against the stock control plane in KUBEBUILDER_ASSETS={}",
                Path::new(dir).display()
            );
            run(e2e().env("KUBEBUILDER_ASSETS", dir))?;
        }
        None => eprintln!(
            "real-mode pass skipped: KUBEBUILDER_ASSETS is not set. Point it at a directory \
             holding etcd and kube-apiserver (and kube-controller-manager, kube-scheduler) \
             to run the end-to-end tests against a stock control plane too."
        ),
    }
    // Limits this host cannot enforce (cgroup v1 controllers), in a VM; skipped when a
    // filter selects other tests.
    if filter.is_empty() {
        vm::vm_test()?;
    }
    Ok(())
}

/// The stock binaries the real mode needs, named when missing.
fn check_assets(dir: &Path) -> Result<()> {
    for bin in ["etcd", "kube-apiserver"] {
        if !dir.join(bin).is_file() {
            bail!(
                "KUBEBUILDER_ASSETS={} has no {bin}; it must hold etcd and kube-apiserver (kube-controller-manager and kube-scheduler too for the tests that need them)",
                dir.display()
            );
        }
    }
    for bin in ["kube-controller-manager", "kube-scheduler"] {
        if !dir.join(bin).is_file() {
            eprintln!("KUBEBUILDER_ASSETS has no {bin}: tests that need it will fail in real mode");
        }
    }
    Ok(())
}

fn nix_is_root() -> bool {
    output_of("id", &["-u"]).is_some_and(|s| s.trim() == "0")
}

fn bench(names: &[String]) -> Result<()> {
    // The runtime benchmark runs containers through the release kernlet binary.
    run(cargo().args(["build", "--release", "--quiet", "--bins"]))?;
    let mut cmd = Command::new("target/release/kernlet-bench");
    cmd.args(names);
    run(&mut cmd)
}

const DEMO_NETNS: &str = "kernlet-demo";

/// Removes the demo namespace when the demo ends, however it ends.
struct DemoNetns;

impl Drop for DemoNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", DEMO_NETNS])
            .status();
    }
}

/// Builds the busybox image (umoci, Debian's busybox-static) under `build` and imports
/// it as `busybox:1.36` into the store at `images`, unless it is there already.
fn import_busybox(images: &Path, build: &Path) -> Result<()> {
    if images.join("images.json").exists() {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(build);
    let out = Command::new("target/debug/kernlet-busybox-layout")
        .arg(build)
        .arg("1.36")
        .output()?;
    if !out.status.success() {
        bail!(
            "building the busybox image: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let layout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    run(Command::new("target/debug/kernlet")
        .args([
            "image",
            "import",
            &layout,
            "--name",
            "busybox",
            "--image-dir",
        ])
        .arg(images))?;
    let _ = std::fs::remove_dir_all(build);
    Ok(())
}

/// The demo's directories, under the system temp dir.
fn demo_base() -> std::path::PathBuf {
    std::env::temp_dir().join("kernlet-demo")
}

fn demo_kernlet(netns: &str, manifests: &Path) -> Command {
    let base = demo_base();
    let dir = |name: &str| base.join(name).display().to_string();
    let mut cmd = Command::new("nsenter");
    cmd.arg(netns)
        .arg("target/debug/kernlet")
        .args(["run", "--standalone", "--manifests"])
        .arg(manifests)
        .args(["--state-dir", &dir("state"), "--run-dir", &dir("run")])
        .args(["--log-dir", &dir("logs"), "--image-dir", &dir("images")])
        .args([
            "--cgroup-root",
            "kernlet-demo",
            "--bpffs-dir",
            "/sys/fs/bpf/kernlet-demo",
            "--pod-cidr",
            DEMO_POD_CIDR,
        ]);
    cmd
}

/// The demo's pod network: a bridge in its network namespace.
const DEMO_POD_CIDR: &str = "10.88.0.0/24";

/// The pod IP of the demo's pod `name`, from `kernlet pods -o json`.
fn demo_pod_ip(name: &str) -> Option<String> {
    let pods: serde_json::Value = serde_json::from_str(&demo_pods()).ok()?;
    pods["items"]
        .as_array()?
        .iter()
        .find(|p| p["metadata"]["name"] == name)?["status"]["podIP"]
        .as_str()
        .filter(|ip| !ip.is_empty())
        .map(str::to_string)
}

fn demo_pods() -> String {
    let state = demo_base().join("state");
    output_of(
        "target/debug/kernlet",
        &[
            "pods",
            "-o",
            "json",
            "--state-dir",
            &state.display().to_string(),
        ],
    )
    .unwrap_or_default()
}

/// Runs kernlet with no manifests until it has removed every pod of the demo.
fn demo_clear(netns: &str) -> Result<()> {
    let empty = demo_base().join("empty");
    std::fs::create_dir_all(&empty)?;
    let mut child = demo_kernlet(netns, &empty)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let start = std::time::Instant::now();
    while demo_pods().contains("\"Pod\"") && start.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    child.wait()?;
    Ok(())
}

fn demo() -> Result<()> {
    run(cargo().args(["build", "--quiet", "--bins"]))?;
    if !nix_is_root() {
        bail!("kernlet needs root (namespaces, cgroups, BPF); run `cargo xtask run` as root");
    }
    let base = demo_base();
    let netns = format!("--net=/run/netns/{DEMO_NETNS}");
    if !Path::new(&format!("/run/netns/{DEMO_NETNS}")).exists() {
        run(Command::new("ip").args(["netns", "add", DEMO_NETNS]))?;
    }
    let _guard = DemoNetns;
    run(Command::new("nsenter").args([&netns, "ip", "link", "set", "lo", "up"]))?;
    // Pods of an interrupted demo go first (kernlet removes what is not in its manifests).
    if demo_pods().contains("\"Pod\"") {
        demo_clear(&netns)?;
    }
    // The image, built from Debian's busybox-static and imported: no registry needed.
    import_busybox(&base.join("images"), &base.join("build"))?;
    let manifests = base.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    std::fs::copy("examples/demo.yaml", manifests.join("demo.yaml"))?;
    let log = std::fs::File::create(base.join("kernlet.log"))?;
    let mut child = demo_kernlet(&netns, &manifests)
        .stderr(std::process::Stdio::from(log))
        .spawn()?;
    eprintln!(
        "kernlet runs in network namespace {DEMO_NETNS} (log: {})",
        base.join("kernlet.log").display()
    );
    let start = std::time::Instant::now();
    let page = loop {
        if let Some(p) = output_of(
            "nsenter",
            &[
                &netns,
                "/bin/busybox",
                "wget",
                "-qO-",
                "http://127.0.0.1:8080/",
            ],
        ) {
            break p;
        }
        if start.elapsed() > std::time::Duration::from_secs(60) {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            bail!(
                "the web pod did not answer within 60 s; see {}",
                base.join("kernlet.log").display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    let state = base.join("state").display().to_string();
    let run_dir = base.join("run").display().to_string();
    println!("\nthe web pod answers on its hostPort: {}", page.trim());
    println!("reach it:   nsenter --net=/run/netns/{DEMO_NETNS} wget -qO- http://127.0.0.1:8080/");
    if let Some(ip) = demo_pod_ip("web") {
        let url = format!("http://{ip}:8080/");
        let direct = output_of("nsenter", &[&netns, "/bin/busybox", "wget", "-qO-", &url]);
        println!(
            "on the pod network ({DEMO_POD_CIDR}) the web pod is {ip}: {}",
            direct.as_deref().map_or("no answer", str::trim)
        );
        let from_pod = output_of(
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
        );
        println!(
            "from the tools pod:   target/debug/kernlet exec demo/tools --state-dir {state} -- wget -qO- {url}\n  -> {}",
            from_pod.as_deref().map_or("no answer", str::trim)
        );
    }
    println!(
        "list pods:  target/debug/kernlet pods --state-dir {state} --run-dir {run_dir}   (add -o json)"
    );
    println!(
        "with crictl: crictl --runtime-endpoint unix://{run_dir}/cri.sock ps   (pods, logs, exec, stats, images)"
    );
    let _ = Command::new("target/debug/kernlet")
        .args(["pods", "--state-dir", &state, "--run-dir", &run_dir])
        .status();
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        println!("\npress Enter to stop the demo and remove its pods");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    child.wait()?;
    demo_clear(&netns)?;
    // The demo's (now empty) cgroup tree: directories only, deepest first.
    if let Some(cg) = output_of(
        "sh",
        &[
            "-c",
            "awk '/ - cgroup2 / {print $5; exit}' /proc/self/mountinfo",
        ],
    ) {
        let root = Path::new(cg.trim()).join("kernlet-demo");
        if root.is_dir() {
            let _ = Command::new("find")
                .arg(&root)
                .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
                .status();
        }
    }
    eprintln!("demo stopped: pods removed, network namespace {DEMO_NETNS} deleted");
    Ok(())
}

/// `-sys` crates of the lockfile and what they need from the machine: a Debian package
/// with the system library they link, or nothing (their C is built from bundled
/// source, they bind the kernel's ABI, or they are for other platforms).
#[cfg(test)]
const SYS_CRATES: &[(&str, Option<&str>)] = &[
    ("libseccomp-sys", Some("libseccomp-dev")),
    ("aws-lc-sys", None),
    ("linux-raw-sys", None),
    ("netlink-sys", None),
    ("core-foundation-sys", None),
    ("security-framework-sys", None),
    ("jni-sys", None),
    ("js-sys", None),
    ("web-sys", None),
    ("windows-sys", None),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `-sys` crate the build pulls in is accounted for, and the system library
    /// each links comes from a package `setup` installs: on a new machine the build
    /// once stopped at `-lseccomp` because libseccomp-dev was only ever installed by
    /// hand.
    #[test]
    fn setup_installs_every_system_library_the_build_links() {
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
            .expect("Cargo.lock");
        let sys: std::collections::BTreeSet<&str> = lock
            .lines()
            .filter_map(|l| l.strip_prefix("name = \""))
            .filter_map(|l| l.strip_suffix('"'))
            .filter(|n| n.ends_with("-sys"))
            .collect();
        for name in sys {
            let Some((_, package)) = SYS_CRATES.iter().find(|(c, _)| *c == name) else {
                panic!(
                    "{name} is new: add it to SYS_CRATES with the Debian package of the library it links, if any"
                );
            };
            if let Some(package) = package {
                assert!(
                    DEBIAN_PACKAGES.iter().any(|(p, _)| p == package),
                    "{name} links a library from {package}, which `cargo xtask setup` does not install"
                );
            }
        }
        assert!(DEBIAN_PACKAGES.iter().any(|(p, _)| *p == "pkg-config"));
    }
}

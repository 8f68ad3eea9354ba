//! `cargo xtask`: the project's commands (setup, run, test, bench, apiserver).
//!
//! Everything a user or CI runs goes through here so the README stays two commands long.

mod demo;
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
    /// Run a kernlet node with the pods and Service of examples/demo.yaml against the
    /// kit's in-memory control plane, inside the `kernlet-demo` network namespace.
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
            demo::demo()
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

//! Builds what the agent embeds:
//! - the eBPF programs (`ebpf/programs`), with the nightly toolchain for
//!   bpfel-unknown-none, into OUT_DIR, where `sys::bpf` embeds the object;
//! - the container reaper (`shim/`, the `kernlet-shim` binary) as a small static
//!   executable, into OUT_DIR, where `runtime::reaper` embeds it;
//! - the CRI `runtime.v1` services (`proto/runtime/v1/api.proto`, upstream's), CSI's
//!   Identity and Node services (`proto/csi/v1/csi.proto`) and kubelet's plugin
//!   registration (`proto/pluginregistration/v1/registration.proto`), compiled in Rust
//!   (protox, no protoc needed) into OUT_DIR, where `cri::proto` and `csi::proto`
//!   include them.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    build_cri()?;
    build_ebpf()?;
    build_reaper()
}

fn build_cri() -> anyhow::Result<()> {
    for proto in [
        "proto/runtime/v1/api.proto",
        "proto/csi/v1/csi.proto",
        "proto/pluginregistration/v1/registration.proto",
    ] {
        println!("cargo:rerun-if-changed={proto}");
        let descriptors = protox::compile([proto], ["proto"])
            .map_err(|e| anyhow::anyhow!("compiling {proto}: {e}"))?;
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(true)
            .compile_fds(descriptors)
            .with_context(|| format!("generating the gRPC services of {proto}"))?;
    }
    Ok(())
}

fn build_ebpf() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir).join("../ebpf/programs");
    let root = root
        .canonicalize()
        .with_context(|| format!("eBPF crate not found at {}", root.display()))?;
    let root_dir = root.to_str().context("eBPF crate path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "kernlet-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup` to install rust-src for \
         nightly and bpf-linker",
    )
}

/// `kernlet-shim`, release, statically linked (crt-static), optimized for size with
/// LTO, aborting on panic and stripped: it runs once per container, so what it maps is
/// what each container costs the node (1.4 MiB RSS, almost all of it the binary's pages,
/// shared by every reaper).
fn build_reaper() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir).join("..");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
    let target = std::env::var("TARGET").context("TARGET")?;
    println!("cargo:rerun-if-changed={}", root.join("shim/src").display());
    println!(
        "cargo:rerun-if-changed={}",
        root.join("shim/Cargo.toml").display()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Its own target directory: the outer build holds the lock of the workspace's.
    let target_dir = out.join("reaper-target");
    let status = std::process::Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--package",
            "kernlet-shim",
            "--bin",
            "kernlet-shim",
            "--target",
            &target,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                "-Ctarget-feature=+crt-static",
                "-Cstrip=symbols",
                "-Copt-level=s",
            ]
            .join("\x1f"),
        )
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .status()
        .context("running cargo to build kernlet-shim")?;
    anyhow::ensure!(status.success(), "building kernlet-shim failed ({status})");
    let built = target_dir.join(&target).join("release/kernlet-shim");
    std::fs::copy(&built, out.join("kernlet-shim"))
        .with_context(|| format!("copying {}", built.display()))?;
    Ok(())
}

//! Builds the eBPF programs (`ebpf/programs`) with the nightly toolchain for
//! bpfel-unknown-none and leaves the object in OUT_DIR, where `sys::bpf` embeds it.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
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

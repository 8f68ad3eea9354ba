//! `kernlet-busybox-layout DIR TAG`: builds the busybox OCI layout the tests and the
//! demo use (umoci, Debian's busybox-static) under DIR and prints its path.

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, tag] = args.as_slice() else {
        anyhow::bail!("usage: kernlet-busybox-layout DIR TAG");
    };
    let dir = std::path::Path::new(dir);
    std::fs::create_dir_all(dir)?;
    let layout = kernlet_tests::oci::busybox_layout(dir, tag)?;
    println!("{}", layout.display());
    Ok(())
}

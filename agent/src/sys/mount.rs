//! Mounts a container's helper process makes in its own mount namespace: they vanish
//! with it, so nothing is left mounted on the node when a container ends.

use std::io;
use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

fn io_err(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Moves the calling (single-threaded) process into a private copy of the mount
/// namespace: later mounts neither propagate to the node nor back.
pub fn private_namespace() -> io::Result<()> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(io_err)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(io_err)
}

/// Bind-mounts `source` on `target`.
pub fn bind(source: &Path, target: &Path) -> io::Result<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(io_err)
}

/// Mounts an overlayfs at `target`. `lower` (top first) are names relative to
/// `layers_dir`, which becomes the working directory so the option string stays short
/// (the kernel takes one page of options).
pub fn overlay(
    target: &Path,
    layers_dir: &Path,
    lower: &[String],
    upper: &Path,
    work: &Path,
) -> io::Result<()> {
    std::env::set_current_dir(layers_dir)?;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    if opts.len() >= 4096 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} layers do not fit one overlay mount's options",
                lower.len()
            ),
        ));
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(io_err)
}

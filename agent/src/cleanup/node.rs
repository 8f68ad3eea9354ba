//! The node's kernel and directories as [`NodeTraces`]: pins under the instance's
//! bpffs directory, the nftables table, devices over rtnetlink, records in the state
//! and run directories — all in the calling process's network namespace.

use std::path::{Path, PathBuf};

use super::{CleanupError, NodeTraces, Trace};
use crate::sys::netlink::{Link, Netlink};

/// One kernlet instance's traces, found by its directories and bridge name.
#[derive(Clone, Debug)]
pub struct KernelTraces {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    /// The load-balancer's pin directory (`<bpffs-dir>/lb`).
    pub pin_dir: PathBuf,
    pub bridge: String,
}

fn failed(what: impl std::fmt::Display) -> impl FnOnce(String) -> CleanupError {
    let what = what.to_string();
    move |detail| CleanupError::Failed { what, detail }
}

/// The pins (files) of `dir` whose names `ours` takes, sorted; none when it is absent.
/// A bpffs mount's own entries (`maps.debug`, `progs.debug`) are the kernel's.
fn pins_in(dir: &Path, ours: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .filter(|e| ours(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// A pod's host-side veth as kernlet names it (`veth` and 8 hex digits).
fn is_pod_veth(l: &Link) -> bool {
    l.kind.as_deref() == Some("veth")
        && l.name.len() == 12
        && l.name.starts_with("veth")
        && l.name[4..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The devices kernlet made, in removal order: pod veths on the bridge, the bridge,
/// the VXLAN device. A device of the same name but another kind is not kernlet's.
pub fn devices(links: &[Link], bridge: &str) -> Vec<Trace> {
    let dev = |l: &Link| Trace::Device {
        name: l.name.clone(),
        index: l.index,
    };
    let br = links
        .iter()
        .find(|l| l.name == bridge && l.kind.as_deref() == Some("bridge"));
    let mut out: Vec<Trace> = links
        .iter()
        .filter(|l| is_pod_veth(l) && br.is_some_and(|b| l.controller == Some(b.index)))
        .map(dev)
        .collect();
    out.extend(br.map(dev));
    out.extend(
        links
            .iter()
            .filter(|l| {
                l.name == crate::model::overlay::DEVICE && l.kind.as_deref() == Some("vxlan")
            })
            .map(dev),
    );
    out
}

impl NodeTraces for KernelTraces {
    fn daemon(&self) -> Option<PathBuf> {
        let socket = crate::daemon::socket_path(&self.run_dir);
        std::os::unix::net::UnixStream::connect(&socket)
            .is_ok()
            .then_some(socket)
    }

    fn find(&mut self) -> Result<Vec<Trace>, CleanupError> {
        let mut out: Vec<Trace> = pins_in(&self.pin_dir.join("links"), |_| true)
            .into_iter()
            .map(|pin| Trace::ProgramLink { pin })
            .collect();
        // Every map kernlet pins is named KL_….
        out.extend(
            pins_in(&self.pin_dir, |n| n.starts_with("KL_"))
                .into_iter()
                .map(|pin| Trace::Map { pin }),
        );
        out.push(Trace::NftTable {
            family: "ip".into(),
            name: crate::controllers::overlay::TABLE.into(),
        });
        let mut nl = Netlink::open().map_err(|e| failed("listing devices")(e.to_string()))?;
        let links = nl
            .links()
            .map_err(|e| failed("listing devices")(e.to_string()))?;
        out.extend(devices(&links, &self.bridge));
        for dir in [
            self.state_dir.join("ipam"),
            self.state_dir.join("overlay"),
            self.run_dir.join("overlay"),
        ] {
            if dir.is_dir() {
                out.push(Trace::Records { dir });
            }
        }
        if self.pin_dir.is_dir() {
            use crate::sys::bpf::on_bpffs;
            let parent = self.pin_dir.parent().unwrap_or(Path::new("/"));
            out.push(Trace::PinDir {
                dir: self.pin_dir.clone(),
                mount: on_bpffs(&self.pin_dir) && !on_bpffs(parent),
            });
        }
        Ok(out)
    }

    fn remove(&mut self, trace: &Trace) -> Result<bool, CleanupError> {
        let fail = failed(trace);
        match trace {
            Trace::ProgramLink { pin } => {
                crate::sys::lb::remove_pin(pin, true).map_err(|e| fail(e.to_string()))
            }
            Trace::Map { pin } => {
                crate::sys::lb::remove_pin(pin, false).map_err(|e| fail(e.to_string()))
            }
            Trace::NftTable { name, .. } => {
                crate::sys::nftables::delete_table_if_present(name).map_err(|e| fail(e.to_string()))
            }
            Trace::Device { name, index } => {
                let mut nl = Netlink::open().map_err(|e| failed(trace)(e.to_string()))?;
                // The index is checked against the name again: a device recreated since
                // under another index is left alone.
                match nl.link(name).map_err(|e| failed(trace)(e.to_string()))? {
                    Some(l) if l.index == *index => nl
                        .delete_link(*index)
                        .map(|()| true)
                        .map_err(|e| fail(e.to_string())),
                    _ => Ok(false),
                }
            }
            Trace::Records { dir } => match std::fs::remove_dir_all(dir) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(fail(e.to_string())),
            },
            Trace::PinDir { dir, mount } => {
                if *mount {
                    nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH)
                        .map_err(|e| failed(trace)(format!("unmounting: {e}")))?;
                }
                let _ = std::fs::remove_dir(dir.join("links"));
                // Left when something else is still in it: it is named, not forced.
                std::fs::remove_dir(dir)
                    .map(|()| true)
                    .map_err(|e| fail(e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, kind: Option<&str>, controller: Option<u32>) -> Link {
        Link {
            index,
            name: name.into(),
            kind: kind.map(String::from),
            controller,
            ..Link::default()
        }
    }

    #[test]
    fn only_kernlets_devices_are_found_ports_first() {
        let links = [
            link(1, "lo", None, None),
            link(2, "eth0", None, None),
            link(3, "flannel.1", Some("vxlan"), None),
            link(4, "cni0", Some("bridge"), None),
            link(5, "veth0011aabb", Some("veth"), Some(4)),
            // Not on the bridge, not kernlet's name, not a veth: left alone.
            link(6, "veth00112233", Some("veth"), None),
            link(7, "vethmine", Some("veth"), Some(4)),
            link(8, "veth0011aacc", Some("dummy"), Some(4)),
            link(9, "docker0", Some("bridge"), None),
        ];
        let names: Vec<String> = devices(&links, "cni0")
            .into_iter()
            .map(|t| t.to_string())
            .collect();
        assert_eq!(
            names,
            ["device veth0011aabb", "device cni0", "device flannel.1"]
        );
        // Another --bridge; a flannel.1 that is no VXLAN device is someone else's.
        let other = [link(3, "flannel.1", Some("dummy"), None)];
        assert!(devices(&other, "br-pods").is_empty());
    }
}

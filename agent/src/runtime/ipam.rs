//! Pod address allocation, one file per address held:
//!
//! ```text
//! <state-dir>/ipam/<network>_<prefix>/<ip>       the uid of the pod holding <ip>
//! <state-dir>/ipam/<network>_<prefix>/last       the last address handed out
//! ```
//!
//! An address is taken by hard-linking a fully written temporary file to its name:
//! `link` fails when the name exists, so no address is handed out twice even by two
//! processes, and a crash leaves either a complete record or none. Addresses of pods
//! that no longer exist are released by [`Ipam::retain`] at start.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::model::cidr::Ipv4Net;

/// The allocator of one pod CIDR.
#[derive(Clone, Debug)]
pub struct Ipam {
    dir: PathBuf,
    net: Ipv4Net,
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("no free address left in pod CIDR {0} (every address is held by a pod)")]
    Exhausted(Ipv4Net),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> IpamError {
    let what = what.into();
    move |source| IpamError::Io { what, source }
}

impl Ipam {
    pub fn open(state_dir: &std::path::Path, net: Ipv4Net) -> Result<Self, IpamError> {
        let dir = state_dir
            .join("ipam")
            .join(format!("{}_{}", net.network(), net.prefix()));
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        Ok(Self { dir, net })
    }

    pub fn network(&self) -> Ipv4Net {
        self.net
    }

    /// Every address held, with the uid holding it.
    pub fn held(&self) -> Result<Vec<(Ipv4Addr, String)>, IpamError> {
        let mut out = Vec::new();
        let entries =
            std::fs::read_dir(&self.dir).map_err(io(format!("reading {}", self.dir.display())))?;
        for e in entries.flatten() {
            let Ok(ip) = e.file_name().to_string_lossy().parse::<Ipv4Addr>() else {
                continue;
            };
            let uid = std::fs::read_to_string(e.path()).unwrap_or_default();
            out.push((ip, uid.trim().to_string()));
        }
        out.sort();
        Ok(out)
    }

    /// The address `uid` holds, if any.
    pub fn of(&self, uid: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        Ok(self
            .held()?
            .into_iter()
            .find_map(|(ip, u)| (u == uid).then_some(ip)))
    }

    /// An address for `uid`: the one it holds, else the next free one after the last
    /// handed out (so a released address is not reused at once).
    pub fn allocate(&self, uid: &str) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = self.of(uid)? {
            return Ok(ip);
        }
        let last: Option<Ipv4Addr> = std::fs::read_to_string(self.dir.join("last"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let all: Vec<Ipv4Addr> = self.net.pod_addresses().collect();
        let start = last
            .and_then(|l| all.iter().position(|a| *a == l))
            .map_or(0, |i| i + 1);
        let tmp = self.dir.join(format!(".tmp-{uid}"));
        crate::state::write_atomic(&tmp, uid.as_bytes(), 0o644)
            .map_err(|e| io(format!("writing {}", tmp.display()))(std::io::Error::other(e)))?;
        let mut taken = None;
        for i in 0..all.len() {
            let ip = all[(start + i) % all.len()];
            match std::fs::hard_link(&tmp, self.dir.join(ip.to_string())) {
                Ok(()) => {
                    taken = Some(ip);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(io(format!("recording {ip} in {}", self.dir.display()))(e));
                }
            }
        }
        let _ = std::fs::remove_file(&tmp);
        let ip = taken.ok_or(IpamError::Exhausted(self.net))?;
        crate::state::write_atomic(&self.dir.join("last"), ip.to_string().as_bytes(), 0o644)
            .map_err(|e| io("recording the last address")(std::io::Error::other(e)))?;
        Ok(ip)
    }

    /// Releases what `uid` holds.
    pub fn release(&self, uid: &str) -> Result<(), IpamError> {
        for (ip, u) in self.held()? {
            if u == uid {
                let p = self.dir.join(ip.to_string());
                match std::fs::remove_file(&p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io(format!("removing {}", p.display()))(e));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Releases every address whose pod `exists` says is gone; returns those released.
    pub fn retain(
        &self,
        exists: impl Fn(&str) -> bool,
    ) -> Result<Vec<(Ipv4Addr, String)>, IpamError> {
        let mut released = Vec::new();
        for (ip, uid) in self.held()? {
            if !exists(&uid) {
                self.release(&uid)?;
                released.push((ip, uid));
            }
        }
        Ok(released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_unique_sticky_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), "10.244.1.0/29".parse().unwrap()).unwrap();
        // A /29 has .2 to .6 for pods (.0 network, .1 gateway, .7 broadcast).
        let a = ipam.allocate("a").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(ipam.allocate("a").unwrap(), a, "a pod keeps its address");
        let others: Vec<_> = ["b", "c", "d", "e"]
            .iter()
            .map(|u| ipam.allocate(u).unwrap())
            .collect();
        assert_eq!(others.last(), Some(&Ipv4Addr::new(10, 244, 1, 6)));
        assert!(matches!(ipam.allocate("f"), Err(IpamError::Exhausted(_))));
        ipam.release("b").unwrap();
        assert_eq!(ipam.allocate("f").unwrap(), Ipv4Addr::new(10, 244, 1, 3));
        // Restart: only pods that still exist keep their addresses.
        let reopened = Ipam::open(dir.path(), ipam.network()).unwrap();
        let released = reopened.retain(|u| u != "c" && u != "d").unwrap();
        assert_eq!(released.len(), 2);
        assert_eq!(reopened.held().unwrap().len(), 3);
        assert_eq!(reopened.of("a").unwrap(), Some(a));
        let leftovers: Vec<_> = std::fs::read_dir(&reopened.dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }
}

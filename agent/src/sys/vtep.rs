//! The entries of the overlay's VXLAN device — routes through it, its permanent
//! neighbours, its FDB — behind one small trait: the real table over rtnetlink, and an
//! in-memory one that can be told to fail chosen operations (for tests of convergence).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use netlink_packet_route::route::RouteProtocol;

use super::netlink::{Netlink, NetlinkError, Route4};
use crate::model::cidr::Ipv4Net;
use crate::model::overlay::{Change, Programmed};

/// What the overlay controller reads from and changes on its device.
pub trait VtepTable {
    /// The device's routes, permanent neighbours and FDB entries with a remote.
    fn read(&mut self) -> Result<Programmed, NetlinkError>;
    /// Makes one change.
    fn apply(&mut self, change: &Change) -> Result<(), NetlinkError>;
}

/// The real table of device `index`, over rtnetlink.
#[derive(Debug)]
pub struct NetlinkVtep {
    pub nl: Netlink,
    pub index: u32,
}

impl VtepTable for NetlinkVtep {
    fn read(&mut self) -> Result<Programmed, NetlinkError> {
        let mut p = Programmed::default();
        for r in self.nl.routes()? {
            if r.oif == Some(self.index)
                && r.protocol != RouteProtocol::Kernel
                && let Ok(dst) = Ipv4Net::new(r.dst, r.prefix)
            {
                p.routes.insert(dst, r.gateway);
            }
        }
        for n in self.nl.neighbours(self.index)? {
            if n.permanent {
                p.neighbours.insert(n.ip, n.mac);
            }
        }
        for f in self.nl.fdb(self.index)? {
            if let Some(dst) = f.dst {
                p.fdb.insert(f.mac, dst);
            }
        }
        Ok(p)
    }

    fn apply(&mut self, change: &Change) -> Result<(), NetlinkError> {
        let index = self.index;
        let route = |dst: Ipv4Net, via: Option<Ipv4Addr>| Route4 {
            dst: dst.network(),
            prefix: dst.prefix(),
            gateway: via,
            oif: Some(index),
            onlink: true,
            protocol: RouteProtocol::Boot,
        };
        let nl = &mut self.nl;
        match change {
            Change::SetRoute { dst, via } => nl.replace_route(&route(*dst, Some(*via))),
            Change::DeleteRoute { dst, via } => nl.delete_route(&route(*dst, *via)),
            Change::SetNeighbour { ip, mac } => nl.replace_neighbour(index, *ip, mac),
            Change::DeleteNeighbour { ip } => nl.delete_neighbour(index, *ip),
            Change::SetFdb { mac, dst } => nl.replace_fdb(index, mac, *dst),
            Change::DeleteFdb { mac, dst } => nl.delete_fdb(index, mac, *dst),
        }
    }
}

/// An in-memory table. Operations whose ordinal (counting every `apply` from 1) is in
/// `fail` fail with EBUSY instead of taking effect.
#[derive(Clone, Debug, Default)]
pub struct FakeVtep {
    pub entries: Programmed,
    pub fail: BTreeSet<usize>,
    pub applied: usize,
}

impl VtepTable for FakeVtep {
    fn read(&mut self) -> Result<Programmed, NetlinkError> {
        Ok(self.entries.clone())
    }

    fn apply(&mut self, change: &Change) -> Result<(), NetlinkError> {
        self.applied += 1;
        if self.fail.contains(&self.applied) {
            return Err(NetlinkError {
                what: format!("applying {change:?}"),
                source: std::io::Error::from_raw_os_error(libc::EBUSY),
            });
        }
        let e = &mut self.entries;
        match change {
            Change::SetRoute { dst, via } => {
                e.routes.insert(*dst, Some(*via));
            }
            Change::DeleteRoute { dst, .. } => {
                e.routes.remove(dst);
            }
            Change::SetNeighbour { ip, mac } => {
                e.neighbours.insert(*ip, mac.to_vec());
            }
            Change::DeleteNeighbour { ip } => {
                e.neighbours.remove(ip);
            }
            Change::SetFdb { mac, dst } => {
                e.fdb.insert(mac.to_vec(), *dst);
            }
            Change::DeleteFdb { mac, .. } => {
                e.fdb.remove(mac);
            }
        }
        Ok(())
    }
}

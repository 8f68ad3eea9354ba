//! IPv4 networks in CIDR notation (pod CIDRs, the cluster CIDR).

use std::net::Ipv4Addr;

/// An IPv4 network: its address (host bits cleared) and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// The network holding `addr` with `prefix` bits (host bits are cleared).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, String> {
        if prefix > 32 {
            return Err(format!("prefix length {prefix} is larger than 32"));
        }
        Ok(Self {
            addr: Ipv4Addr::from(u32::from(addr) & Self::mask_bits(prefix)),
            prefix,
        })
    }

    fn mask_bits(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The last address (broadcast).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !Self::mask_bits(self.prefix))
    }

    /// The first host address: the pod network's gateway on the node's bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + 1)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask_bits(self.prefix) == u32::from(self.addr)
    }

    /// Whether the two networks share an address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// The addresses pods may get: all but the network, the gateway and the broadcast
    /// address.
    pub fn pod_addresses(&self) -> impl Iterator<Item = Ipv4Addr> + use<> {
        let first = u32::from(self.addr) + 2;
        let last = u32::from(self.broadcast());
        (first..last).map(Ipv4Addr::from)
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Ipv4Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("'{s}' is not a CIDR (address/prefix)"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("'{s}': '{a}' is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| format!("'{s}': '{p}' is not a prefix length"))?;
        let net = Self::new(addr, prefix).map_err(|e| format!("'{s}': {e}"))?;
        if net.addr != addr {
            return Err(format!("'{s}' has host bits set; the network is {net}"));
        }
        Ok(net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidrs_parse_and_give_their_addresses() {
        let n: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(n.broadcast(), Ipv4Addr::new(10, 244, 1, 255));
        let hosts: Vec<_> = n.pod_addresses().collect();
        assert_eq!(hosts.len(), 253);
        assert_eq!(hosts[0], Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(hosts[252], Ipv4Addr::new(10, 244, 1, 254));
        let cluster: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        assert!(cluster.contains(Ipv4Addr::new(10, 244, 9, 9)));
        assert!(cluster.overlaps(&n) && n.overlaps(&cluster));
        assert!(!cluster.contains(Ipv4Addr::new(10, 245, 0, 1)));
    }

    #[test]
    fn bad_cidrs_say_why() {
        assert!(
            "10.244.1.5/24"
                .parse::<Ipv4Net>()
                .unwrap_err()
                .contains("10.244.1.0/24")
        );
        assert!("10.244.1.0".parse::<Ipv4Net>().is_err());
        assert!("10.244.1.0/33".parse::<Ipv4Net>().is_err());
        assert!("fd00::/64".parse::<Ipv4Net>().is_err());
    }
}

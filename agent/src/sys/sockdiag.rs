//! Closing the UDP sockets connected to a given address, through the sock_diag netlink
//! interface (`SOCK_DESTROY`, CONFIG_INET_DIAG_DESTROY): the socket's next send or
//! receive fails with ECONNABORTED, so a client whose backend went away reconnects
//! (and is balanced again) instead of sending into the void.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd as _;
use std::path::Path;

use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_UDP: u8 = 17;
/// `struct inet_diag_sockid`.
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_msg` up to and including the socket id.
const MSG_ID_END: usize = 4 + SOCKID_LEN;

fn request(ty: u16, flags: u16, seq: u32, family: u8, sockid: &[u8; SOCKID_LEN]) -> Vec<u8> {
    // nlmsghdr (16) + inet_diag_req_v2 (8 + sockid)
    let len = 16 + 8 + SOCKID_LEN;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&[family, IPPROTO_UDP, 0, 0]);
    b.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    b.extend_from_slice(sockid);
    b
}

/// Whether the socket id of a socket of `family` has destination `dst`: an IPv6
/// socket's may be `dst` IPv4-mapped (a dual-stack socket sending to an IPv4 address).
pub fn id_matches(family: u8, sockid: &[u8], dst: SocketAddr) -> bool {
    if sockid.len() < SOCKID_LEN || sockid[2..4] != dst.port().to_be_bytes() {
        return false;
    }
    match (family, dst.ip()) {
        (AF_INET, IpAddr::V4(ip)) => sockid[20..24] == ip.octets(),
        (AF_INET6, IpAddr::V4(ip)) => sockid[20..36] == ip.to_ipv6_mapped().octets(),
        (AF_INET6, IpAddr::V6(ip)) => sockid[20..36] == ip.octets(),
        _ => false,
    }
}

fn destroy_here(dst: &[SocketAddr]) -> io::Result<usize> {
    let mut destroyed = destroy_family(AF_INET6, dst)?;
    if dst.iter().any(SocketAddr::is_ipv4) {
        destroyed += destroy_family(AF_INET, dst)?;
    }
    Ok(destroyed)
}

fn destroy_family(family: u8, dst: &[SocketAddr]) -> io::Result<usize> {
    let mut s = Socket::new(NETLINK_SOCK_DIAG)?;
    s.bind_auto()?;
    s.send(
        &request(SOCK_DIAG_BY_FAMILY, NLM_F_DUMP, 1, family, &[0; SOCKID_LEN]),
        0,
    )?;
    let mut victims: Vec<[u8; SOCKID_LEN]> = Vec::new();
    'dump: loop {
        let (bytes, _) = s.recv_from_full()?;
        let mut off = 0;
        while off + 16 <= bytes.len() {
            let len =
                u32::from_ne_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]])
                    as usize;
            let ty = u16::from_ne_bytes([bytes[off + 4], bytes[off + 5]]);
            if len < 16 || off + len > bytes.len() {
                break 'dump;
            }
            match ty {
                NLMSG_DONE => break 'dump,
                NLMSG_ERROR => {
                    let code = i32::from_ne_bytes([
                        bytes[off + 16],
                        bytes[off + 17],
                        bytes[off + 18],
                        bytes[off + 19],
                    ]);
                    return Err(io::Error::from_raw_os_error(-code));
                }
                SOCK_DIAG_BY_FAMILY if len >= 16 + MSG_ID_END => {
                    let id = &bytes[off + 16 + 4..off + 16 + MSG_ID_END];
                    if dst.iter().any(|d| id_matches(family, id, *d)) {
                        let mut v = [0u8; SOCKID_LEN];
                        v.copy_from_slice(id);
                        victims.push(v);
                    }
                }
                _ => {}
            }
            off += (len + 3) & !3;
        }
    }
    let mut destroyed = 0;
    for (i, id) in victims.iter().enumerate() {
        s.send(
            &request(SOCK_DESTROY, NLM_F_ACK, 2 + i as u32, family, id),
            0,
        )?;
        let (bytes, _) = s.recv_from_full()?;
        if bytes.len() >= 20
            && u16::from_ne_bytes([bytes[4], bytes[5]]) == NLMSG_ERROR
            && i32::from_ne_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]) == 0
        {
            destroyed += 1;
        }
    }
    Ok(destroyed)
}

/// Closes the UDP sockets connected to any of `dst` in the network namespace pinned at
/// `netns` (the caller's own when `None`); returns how many.
pub fn destroy_udp_to(netns: Option<&Path>, dst: &[SocketAddr]) -> io::Result<usize> {
    if dst.is_empty() {
        return Ok(0);
    }
    let Some(netns) = netns else {
        return destroy_here(dst);
    };
    let ns = std::fs::File::open(netns)?;
    let dst = dst.to_vec();
    std::thread::spawn(move || {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        destroy_here(&dst)
    })
    .join()
    .map_err(|_| io::Error::other("the sock_diag thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_ids_are_laid_out_as_the_kernel_reads_them() {
        let r = request(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_DUMP,
            7,
            AF_INET,
            &[0; SOCKID_LEN],
        );
        assert_eq!(r.len(), 72);
        assert_eq!(u32::from_ne_bytes([r[0], r[1], r[2], r[3]]), 72);
        assert_eq!(&r[16..20], &[AF_INET, IPPROTO_UDP, 0, 0]);
        let mut id = [0u8; SOCKID_LEN];
        id[2..4].copy_from_slice(&5353u16.to_be_bytes());
        id[20..24].copy_from_slice(&[10, 244, 2, 5]);
        assert!(id_matches(AF_INET, &id, "10.244.2.5:5353".parse().unwrap()));
        assert!(!id_matches(AF_INET, &id, "10.244.2.5:53".parse().unwrap()));
        // An IPv6 socket: its own address, or an IPv4 one mapped.
        let v6: std::net::Ipv6Addr = "fd00:10:96::a".parse().unwrap();
        id[20..36].copy_from_slice(&v6.octets());
        assert!(id_matches(
            AF_INET6,
            &id,
            "[fd00:10:96::a]:5353".parse().unwrap()
        ));
        assert!(!id_matches(
            AF_INET,
            &id,
            "[fd00:10:96::a]:5353".parse().unwrap()
        ));
        let mapped = std::net::Ipv4Addr::new(10, 244, 2, 5).to_ipv6_mapped();
        id[20..36].copy_from_slice(&mapped.octets());
        assert!(id_matches(
            AF_INET6,
            &id,
            "10.244.2.5:5353".parse().unwrap()
        ));
    }
}

//! ICMP echo over a raw socket (needs CAP_NET_RAW): the overlay's peer probe, with the
//! don't-fragment bit when it checks a path MTU.

#![allow(unsafe_code, reason = "IP_MTU_DISCOVER has no safe wrapper in nix")]

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, recvfrom, sendto,
    setsockopt, socket, sockopt,
};

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo request with identifier `id`, sequence `seq` and `payload` zero bytes.
pub fn echo_request(id: u16, seq: u16, payload: usize) -> Vec<u8> {
    let mut p = vec![8, 0, 0, 0];
    p.extend(id.to_be_bytes());
    p.extend(seq.to_be_bytes());
    p.extend(std::iter::repeat_n(0u8, payload));
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// Whether `packet` (an IPv4 packet as a raw socket receives it) is the echo reply
/// from `from` to the request `id`/`seq`.
pub fn is_reply(packet: &[u8], from: Ipv4Addr, id: u16, seq: u16) -> bool {
    let Some(&first) = packet.first() else {
        return false;
    };
    let ihl = usize::from(first & 0x0f) * 4;
    if packet.len() < ihl + 8 || packet.len() < 20 {
        return false;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let icmp = &packet[ihl..];
    src == from
        && icmp[0] == 0
        && u16::from_be_bytes([icmp[4], icmp[5]]) == id
        && u16::from_be_bytes([icmp[6], icmp[7]]) == seq
}

/// Sends one echo request of `size` bytes in total (IPv4 header included) to `dst` and
/// waits up to `timeout` for the reply; returns the round-trip time. With
/// `dont_fragment` the packet carries DF and is never fragmented on the way, so it
/// passes only where every link carries `size` bytes.
pub fn echo(
    dst: Ipv4Addr,
    size: usize,
    dont_fragment: bool,
    timeout: Duration,
) -> io::Result<Duration> {
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Icmp,
    )
    .map_err(io::Error::from)?;
    if dont_fragment {
        let value: libc::c_int = libc::IP_PMTUDISC_PROBE;
        // SAFETY: `fd` is an open socket owned above; the option value points to a c_int
        // that lives across the call, and its size is passed exactly.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&raw const value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    static SEQ: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = (std::process::id() & 0xffff) as u16;
    let request = echo_request(id, seq, size.saturating_sub(28));
    let to = SockaddrIn::from(std::net::SocketAddrV4::new(dst, 0));
    let start = Instant::now();
    sendto(fd.as_raw_fd(), &request, &to, MsgFlags::empty()).map_err(io::Error::from)?;
    let mut buf = vec![0u8; size.max(64) + 64];
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no echo reply from {dst} within {timeout:?}"),
            ));
        }
        setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::from(libc::timeval {
                tv_sec: left.as_secs() as libc::time_t,
                tv_usec: left.subsec_micros().max(1) as libc::suseconds_t,
            }),
        )
        .map_err(io::Error::from)?;
        match recvfrom::<SockaddrIn>(fd.as_raw_fd(), &mut buf) {
            Ok((n, _)) if is_reply(&buf[..n], dst, id, seq) => return Ok(start.elapsed()),
            Ok(_) => {}
            Err(nix::errno::Errno::EAGAIN) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_a_valid_checksum_and_replies_are_matched() {
        let req = echo_request(0x1234, 7, 20);
        assert_eq!(req.len(), 28);
        assert_eq!(checksum(&req), 0, "a packet with its checksum sums to zero");
        let mut reply = vec![
            0x45, 0, 0, 48, 0, 0, 0, 0, 64, 1, 0, 0, 10, 244, 2, 0, 10, 244, 1, 0,
        ];
        let mut icmp = req.clone();
        icmp[0] = 0;
        reply.extend(icmp);
        assert!(is_reply(&reply, Ipv4Addr::new(10, 244, 2, 0), 0x1234, 7));
        assert!(!is_reply(&reply, Ipv4Addr::new(10, 244, 3, 0), 0x1234, 7));
        assert!(!is_reply(&reply, Ipv4Addr::new(10, 244, 2, 0), 0x1234, 8));
        assert!(!is_reply(
            &reply[..10],
            Ipv4Addr::new(10, 244, 2, 0),
            0x1234,
            7
        ));
    }
}

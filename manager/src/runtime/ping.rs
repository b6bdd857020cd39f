//! Reference IP (参考IP) checks: one ICMP echo over a raw socket (the daemon runs as root; no
//! `ping` binary needed). IPv4 and IPv6 (an IPv4-mapped IPv6 address is pinged over IPv4;
//! link-local IPv6 addresses, which need a scope, are not supported).
//!
//! A reply counts only if it comes from the target and carries this probe's identifier,
//! sequence number and random payload, so replies to other probes (a raw socket sees every
//! ICMP packet of the host) do not count.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout_at};

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
const PAYLOAD: &[u8; 8] = b"tandem-p";

/// The Internet checksum (RFC 1071) of `bytes`: the one's complement of the one's complement
/// sum of its 16-bit big-endian words, an odd last byte padded with zero.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut words = bytes.chunks_exact(2);
    for word in &mut words {
        sum += u32::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(u16::from_be_bytes([*last, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo message: type, code 0, checksum (IPv4 only: the kernel fills in ICMPv6's),
/// identifier, sequence, then the payload.
fn echo(kind: u8, identifier: u16, sequence: u16, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![kind, 0, 0, 0];
    packet.extend_from_slice(&identifier.to_be_bytes());
    packet.extend_from_slice(&sequence.to_be_bytes());
    packet.extend_from_slice(payload);
    if kind == ECHO_REQUEST_V4 {
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// One probe: what its reply must look like.
struct Probe {
    target: IpAddr,
    identifier: u16,
    sequence: u16,
    payload: Vec<u8>,
}

impl Probe {
    /// Whether `datagram` from `from` (with the IPv4 header, as a raw IPv4 socket delivers
    /// it; without one for IPv6) is the reply to this probe.
    fn is_reply(&self, datagram: &[u8], from: IpAddr) -> bool {
        if from != self.target {
            return false;
        }
        let (message, reply) = match self.target {
            IpAddr::V4(_) => {
                let header = usize::from(datagram.first().map_or(0, |b| b & 0x0f)) * 4;
                if header < 20 || datagram.len() < header || checksum(&datagram[header..]) != 0 {
                    return false;
                }
                (&datagram[header..], ECHO_REPLY_V4)
            }
            IpAddr::V6(_) => (datagram, ECHO_REPLY_V6),
        };
        message.len() == 8 + self.payload.len()
            && message[0] == reply
            && message[1] == 0
            && message[4..6] == self.identifier.to_be_bytes()
            && message[6..8] == self.sequence.to_be_bytes()
            && message[8..] == self.payload[..]
    }
}

/// Whether `target` answers an ICMP echo within `timeout`. `Ok(false)` also when there is
/// no route to it; `Err` only if the ICMP socket cannot be made (not root, no IPv6).
pub async fn reachable(target: IpAddr, timeout: Duration) -> Result<bool, String> {
    let deadline = Instant::now() + timeout;
    let target = target.to_canonical();
    let (family, protocol) = match target {
        IpAddr::V4(_) => (AddressFamily::Inet, SockProtocol::Icmp),
        IpAddr::V6(_) => (AddressFamily::Inet6, SockProtocol::IcmpV6),
    };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = socket(family, SockType::Raw, flags, protocol)
        .map_err(|e| format!("cannot open an ICMP socket to ping {target}: {e}"))?;
    // The raw socket behind tokio's datagram socket type: its send_to and recv_from are the
    // plain sendto and recvfrom a raw socket needs (a raw socket ignores the port of the
    // address it sends to and reports 0 in the one it receives from).
    let socket = UdpSocket::from_std(std::net::UdpSocket::from(fd))
        .map_err(|e| format!("cannot register the ICMP socket to ping {target}: {e}"))?;
    let random = engine::runtime::os_random_u64().to_le_bytes();
    let mut payload = PAYLOAD.to_vec();
    payload.extend_from_slice(&random);
    let probe = Probe {
        target,
        identifier: u16::from_le_bytes([random[0], random[1]]),
        sequence: u16::from_le_bytes([random[2], random[3]]),
        payload,
    };
    let request = match target {
        IpAddr::V4(_) => ECHO_REQUEST_V4,
        IpAddr::V6(_) => ECHO_REQUEST_V6,
    };
    let packet = echo(request, probe.identifier, probe.sequence, &probe.payload);
    let to = SocketAddr::new(target, 0);
    match timeout_at(deadline, socket.send_to(&packet, to)).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            // No route, unreachable network: not reachable.
            tracing::debug!("ping {target}: {error}");
            return Ok(false);
        }
        Err(_) => return Ok(false),
    }
    let mut buffer = [0u8; 1500];
    loop {
        let Ok(received) = timeout_at(deadline, socket.recv_from(&mut buffer)).await else {
            return Ok(false);
        };
        match received {
            Ok((bytes, from)) if probe.is_reply(&buffer[..bytes], from.ip()) => return Ok(true),
            Ok(_) => {}
            Err(error) => {
                tracing::debug!("ping {target}: receive: {error}");
                // Not a busy loop on a persistent error; the deadline still bounds it.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_matches_rfc_1071() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2, so the checksum is 220d.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
        // An odd length pads with a zero byte.
        assert_eq!(checksum(&[0x01]), !0x0100);
        assert_eq!(checksum(&[]), 0xffff);
    }

    #[test]
    fn an_echo_request_checks_out_and_its_reply_is_recognised() {
        let payload = b"tandem-p12345678".to_vec();
        let request = echo(ECHO_REQUEST_V4, 0x1234, 0x0001, &payload);
        assert_eq!(checksum(&request), 0);
        // The well-known echo request of Windows' ping with identifier 1 and sequence 1,
        // payload "abcdefghijklmnopqrstuvwabcdefghi": its checksum is 0x4d5a.
        let classic = echo(ECHO_REQUEST_V4, 1, 1, b"abcdefghijklmnopqrstuvwabcdefghi");
        assert_eq!(u16::from_be_bytes([classic[2], classic[3]]), 0x4d5a);
        let target = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        let probe = Probe {
            target,
            identifier: 0x1234,
            sequence: 1,
            payload: payload.clone(),
        };
        let mut datagram = vec![0x45];
        datagram.resize(20, 0);
        datagram.extend_from_slice(&echo(ECHO_REQUEST_V4, 0x1234, 1, &payload));
        // The request itself (which a raw socket also sees on loopback) is not a reply.
        assert!(!probe.is_reply(&datagram, target));
        datagram[20] = ECHO_REPLY_V4;
        datagram[22..24].copy_from_slice(&[0, 0]);
        let sum = checksum(&datagram[20..]);
        datagram[22..24].copy_from_slice(&sum.to_be_bytes());
        assert!(probe.is_reply(&datagram, target));
        assert!(!probe.is_reply(&datagram, IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1))));
        let mut other = datagram.clone();
        other[25] ^= 1;
        assert!(
            !probe.is_reply(&other, target),
            "another sequence, checksum broken"
        );
        for length in 0..datagram.len() {
            assert!(!probe.is_reply(&datagram[..length], target));
        }
    }
}

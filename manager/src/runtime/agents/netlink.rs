//! Just enough rtnetlink (a NETLINK_ROUTE socket) for kind `ip`: list links, list, add and
//! delete addresses.
//!
//! Wire format (native byte order, every part padded to 4 bytes): a message is `nlmsghdr`
//! (length u32, type u16, flags u16, sequence u32, port u32), then a fixed body (`ifaddrmsg`:
//! family u8, prefix length u8, flags u8, scope u8, interface index u32; `ifinfomsg`: family
//! u8, pad u8, device type u16, index i32, flags u32, change u32), then attributes (`rtattr`:
//! length u16 including its 4-byte header, type u16, data). The kernel answers a request with
//! `NLMSG_ERROR` (an i32 errno, 0 for an acknowledgement) and a dump with messages ended by
//! `NLMSG_DONE`.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, sendto,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

/// `nlmsghdr` size.
const HEADER_BYTES: usize = 16;
/// `ifaddrmsg` size.
const IFADDRMSG_BYTES: usize = 8;
/// `ifinfomsg` size.
const IFINFOMSG_BYTES: usize = 16;
/// `rtattr` header size.
const ATTRIBUTE_HEADER_BYTES: usize = 4;

/// `NLMSG_ERROR`.
const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`.
const NLMSG_DONE: u16 = 3;
/// `RTM_NEWLINK` (a dump's answers).
const RTM_NEWLINK: u16 = 16;
/// `RTM_GETLINK`.
const RTM_GETLINK: u16 = 18;
/// `RTM_NEWADDR`.
pub(super) const RTM_NEWADDR: u16 = 20;
/// `RTM_DELADDR`.
pub(super) const RTM_DELADDR: u16 = 21;
/// `RTM_GETADDR`.
const RTM_GETADDR: u16 = 22;

/// `NLM_F_REQUEST`.
const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_ACK`.
const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_DUMP` (`NLM_F_ROOT | NLM_F_MATCH`).
const NLM_F_DUMP: u16 = 0x300;
/// `NLM_F_EXCL`.
const NLM_F_EXCL: u16 = 0x200;
/// `NLM_F_CREATE`.
const NLM_F_CREATE: u16 = 0x400;

/// `IFA_ADDRESS`.
const IFA_ADDRESS: u16 = 1;
/// `IFA_LOCAL`.
const IFA_LOCAL: u16 = 2;
/// `IFA_BROADCAST`.
const IFA_BROADCAST: u16 = 4;
/// `IFA_F_NODAD`: an IPv6 address usable at once, without duplicate address detection.
const IFA_F_NODAD: u8 = 0x02;

/// `IFLA_ADDRESS`: the hardware address.
const IFLA_ADDRESS: u16 = 1;
/// `IFLA_IFNAME`.
const IFLA_IFNAME: u16 = 3;

/// `AF_INET` and `AF_INET6` as netlink bodies spell them.
const FAMILY_INET: u8 = 2;
/// See [`FAMILY_INET`].
const FAMILY_INET6: u8 = 10;

/// `ARPHRD_ETHER`.
pub(super) const ARPHRD_ETHER: u16 = 1;
/// `IFF_LOOPBACK`.
pub(super) const IFF_LOOPBACK: u32 = 0x8;
/// `IFF_NOARP`.
pub(super) const IFF_NOARP: u32 = 0x80;

/// How long the kernel may take to answer.
const ANSWER_TIMEOUT_SECONDS: i64 = 5;

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Link {
    /// Its index.
    pub(super) index: u32,
    /// Its name.
    pub(super) name: String,
    /// Its device type (`ARPHRD_*`).
    pub(super) device_type: u16,
    /// Its `IFF_*` flags.
    pub(super) flags: u32,
    /// Its hardware address, if it is six bytes.
    pub(super) hardware: Option<[u8; 6]>,
}

/// An address on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Address {
    /// The interface's index.
    pub(super) index: u32,
    /// The prefix length.
    pub(super) prefix: u8,
    /// The address.
    pub(super) address: IpAddr,
}

fn family_of(address: IpAddr) -> u8 {
    if address.is_ipv4() {
        FAMILY_INET
    } else {
        FAMILY_INET6
    }
}

fn octets(address: IpAddr) -> Vec<u8> {
    match address {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn align(length: usize) -> usize {
    (length + 3) & !3
}

/// A request: header, `body`, `attributes`, each padded.
pub(super) fn message(
    kind: u16,
    flags: u16,
    sequence: u32,
    body: &[u8],
    attributes: &[(u16, &[u8])],
) -> Vec<u8> {
    let mut buffer = vec![0u8; HEADER_BYTES];
    buffer.extend_from_slice(body);
    buffer.resize(align(buffer.len()), 0);
    for (kind, data) in attributes {
        let length = u16::try_from(ATTRIBUTE_HEADER_BYTES + data.len()).unwrap_or(u16::MAX);
        buffer.extend_from_slice(&length.to_ne_bytes());
        buffer.extend_from_slice(&kind.to_ne_bytes());
        buffer.extend_from_slice(data);
        buffer.resize(align(buffer.len()), 0);
    }
    let length = u32::try_from(buffer.len()).unwrap_or(u32::MAX);
    buffer[0..4].copy_from_slice(&length.to_ne_bytes());
    buffer[4..6].copy_from_slice(&kind.to_ne_bytes());
    buffer[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
    buffer[8..12].copy_from_slice(&sequence.to_ne_bytes());
    buffer
}

/// `RTM_NEWADDR` (create, exclusive) or `RTM_DELADDR` for `address/prefix` on interface
/// `index`, acknowledged. IPv4 gets the subnet's broadcast address (as `ip addr add … brd +`);
/// IPv6 is added without duplicate address detection.
pub(super) fn address_request(
    kind: u16,
    sequence: u32,
    index: u32,
    address: IpAddr,
    prefix: u8,
) -> Vec<u8> {
    let flags = if kind == RTM_NEWADDR {
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    } else {
        NLM_F_ACK
    };
    let ifa_flags = if address.is_ipv6() { IFA_F_NODAD } else { 0 };
    let mut body = vec![family_of(address), prefix, ifa_flags, 0];
    body.extend_from_slice(&index.to_ne_bytes());
    let bytes = octets(address);
    let mut attributes: Vec<(u16, &[u8])> = vec![(IFA_LOCAL, &bytes), (IFA_ADDRESS, &bytes)];
    let broadcast = match address {
        IpAddr::V4(v4) if kind == RTM_NEWADDR && prefix <= 30 => {
            let host_bits = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
            Some((u32::from(v4) | host_bits).to_be_bytes())
        }
        _ => None,
    };
    if let Some(broadcast) = &broadcast {
        attributes.push((IFA_BROADCAST, broadcast));
    }
    message(kind, flags, sequence, &body, &attributes)
}

/// A dump request of `kind` with a zeroed body of `body_bytes` for `family`.
fn dump_request(kind: u16, sequence: u32, family: u8, body_bytes: usize) -> Vec<u8> {
    let mut body = vec![0u8; body_bytes];
    body[0] = family;
    message(kind, NLM_F_DUMP, sequence, &body, &[])
}

/// One received message.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Received<'a> {
    /// Its type.
    pub(super) kind: u16,
    /// Its sequence number.
    pub(super) sequence: u32,
    /// What follows the header.
    pub(super) payload: &'a [u8],
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// The messages in one datagram; parsing stops at the first malformed one.
pub(super) fn messages(buffer: &[u8]) -> Vec<Received<'_>> {
    let mut out = Vec::new();
    let mut at = 0;
    while let (Some(length), Some(kind), Some(sequence)) = (
        u32_at(buffer, at),
        u16_at(buffer, at + 4),
        u32_at(buffer, at + 8),
    ) {
        let length = length as usize;
        if length < HEADER_BYTES {
            break;
        }
        let Some(payload) = buffer.get(at + HEADER_BYTES..at + length) else {
            break;
        };
        out.push(Received {
            kind,
            sequence,
            payload,
        });
        at += align(length);
    }
    out
}

/// The attributes in `bytes`; parsing stops at the first malformed one.
pub(super) fn attributes(bytes: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while let (Some(length), Some(kind)) = (u16_at(bytes, at), u16_at(bytes, at + 2)) {
        let length = usize::from(length);
        if length < ATTRIBUTE_HEADER_BYTES {
            break;
        }
        let Some(data) = bytes.get(at + ATTRIBUTE_HEADER_BYTES..at + length) else {
            break;
        };
        out.push((kind, data));
        at += align(length);
    }
    out
}

/// An `RTM_NEWLINK` payload.
pub(super) fn parse_link(payload: &[u8]) -> Option<Link> {
    let device_type = u16_at(payload, 2)?;
    let index = u32_at(payload, 4)?;
    let flags = u32_at(payload, 8)?;
    let mut link = Link {
        index,
        name: String::new(),
        device_type,
        flags,
        hardware: None,
    };
    for (kind, data) in attributes(payload.get(IFINFOMSG_BYTES..)?) {
        match kind {
            IFLA_IFNAME => {
                let name = data.split(|&b| b == 0).next().unwrap_or_default();
                link.name = String::from_utf8_lossy(name).into_owned();
            }
            IFLA_ADDRESS => link.hardware = data.try_into().ok(),
            _ => {}
        }
    }
    Some(link)
}

/// An `RTM_NEWADDR` payload: the local address (`IFA_LOCAL`, else `IFA_ADDRESS`).
pub(super) fn parse_address(payload: &[u8]) -> Option<Address> {
    let family = *payload.first()?;
    let prefix = *payload.get(1)?;
    let index = u32_at(payload, 4)?;
    let found = attributes(payload.get(IFADDRMSG_BYTES..)?);
    let pick = |wanted: u16| found.iter().find(|(kind, _)| *kind == wanted);
    let (_, data) = pick(IFA_LOCAL).or_else(|| pick(IFA_ADDRESS))?;
    let address = match family {
        FAMILY_INET => IpAddr::from(<[u8; 4]>::try_from(*data).ok()?),
        FAMILY_INET6 => IpAddr::from(<[u8; 16]>::try_from(*data).ok()?),
        _ => return None,
    };
    Some(Address {
        index,
        prefix,
        address,
    })
}

/// The errno of an `NLMSG_ERROR` payload (0: acknowledged).
fn error_code(payload: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(payload.get(0..4)?.try_into().ok()?))
}

/// A NETLINK_ROUTE socket of this thread's network namespace.
#[derive(Debug)]
pub(super) struct Route {
    socket: OwnedFd,
    sequence: u32,
}

impl Route {
    /// Opens one.
    pub(super) fn open() -> Result<Self, String> {
        let problem = |e: Errno| format!("netlink: {e}");
        let socket = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(problem)?;
        bind(socket.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(problem)?;
        setsockopt(
            &socket,
            sockopt::ReceiveTimeout,
            &TimeVal::new(ANSWER_TIMEOUT_SECONDS, 0),
        )
        .map_err(problem)?;
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    fn next_sequence(&mut self) -> u32 {
        self.sequence = self.sequence.wrapping_add(1);
        self.sequence
    }

    fn send(&self, request: &[u8]) -> Result<(), String> {
        sendto(
            self.socket.as_raw_fd(),
            request,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map(drop)
        .map_err(|e| format!("netlink send: {e}"))
    }

    /// Receives datagrams and hands each message of `sequence` to `each` until it returns
    /// `Some`.
    fn receive<T>(
        &self,
        sequence: u32,
        mut each: impl FnMut(&Received<'_>) -> Option<Result<T, String>>,
    ) -> Result<T, String> {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let length = recv(self.socket.as_raw_fd(), &mut buffer, MsgFlags::empty()).map_err(
                |e| match e {
                    Errno::EAGAIN => "netlink: the kernel did not answer".to_string(),
                    e => format!("netlink receive: {e}"),
                },
            )?;
            for received in messages(&buffer[..length]) {
                if received.sequence != sequence {
                    continue;
                }
                if let Some(result) = each(&received) {
                    return result;
                }
            }
        }
    }

    /// Sends `request` and waits for the kernel's answer: `Ok(Ok(()))` when it acknowledged,
    /// `Ok(Err(errno))` when it refused.
    fn acknowledged(
        &mut self,
        request: impl FnOnce(u32) -> Vec<u8>,
    ) -> Result<Result<(), Errno>, String> {
        let sequence = self.next_sequence();
        self.send(&request(sequence))?;
        self.receive(sequence, |received| {
            (received.kind == NLMSG_ERROR).then(|| match error_code(received.payload) {
                Some(0) => Ok(Ok(())),
                Some(code) => Ok(Err(Errno::from_raw(-code))),
                None => Err("netlink: a truncated error message".to_string()),
            })
        })
    }

    /// Dumps `kind` and returns the payloads of the answers of type `answer`.
    fn dump(
        &mut self,
        kind: u16,
        answer: u16,
        family: u8,
        body_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, String> {
        let sequence = self.next_sequence();
        self.send(&dump_request(kind, sequence, family, body_bytes))?;
        let mut payloads = Vec::new();
        self.receive(sequence, |received| match received.kind {
            NLMSG_DONE => Some(Ok(())),
            NLMSG_ERROR => Some(Err(format!(
                "netlink dump: {}",
                error_code(received.payload).map_or(Errno::EINVAL, |c| Errno::from_raw(-c))
            ))),
            kind if kind == answer => {
                payloads.push(received.payload.to_vec());
                None
            }
            _ => None,
        })?;
        Ok(payloads)
    }

    /// The interface called `name`.
    pub(super) fn link(&mut self, name: &str) -> Result<Option<Link>, String> {
        let payloads = self.dump(RTM_GETLINK, RTM_NEWLINK, 0, IFINFOMSG_BYTES)?;
        Ok(payloads
            .iter()
            .filter_map(|payload| parse_link(payload))
            .find(|link| link.name == name))
    }

    /// The addresses of `address`'s family.
    pub(super) fn addresses(&mut self, address: IpAddr) -> Result<Vec<Address>, String> {
        let payloads = self.dump(
            RTM_GETADDR,
            RTM_NEWADDR,
            family_of(address),
            IFADDRMSG_BYTES,
        )?;
        Ok(payloads
            .iter()
            .filter_map(|payload| parse_address(payload))
            .collect())
    }

    /// Adds `address/prefix` to interface `index`: Ok(false) when it is there already.
    pub(super) fn add_address(
        &mut self,
        index: u32,
        address: IpAddr,
        prefix: u8,
    ) -> Result<bool, String> {
        let answer = self.acknowledged(|sequence| {
            address_request(RTM_NEWADDR, sequence, index, address, prefix)
        })?;
        match answer {
            Ok(()) => Ok(true),
            Err(Errno::EEXIST) => Ok(false),
            Err(e) => Err(format!("cannot add {address}/{prefix}: {e}")),
        }
    }

    /// Deletes `address/prefix` from interface `index`: Ok(false) when it was not there.
    pub(super) fn delete_address(
        &mut self,
        index: u32,
        address: IpAddr,
        prefix: u8,
    ) -> Result<bool, String> {
        let answer = self.acknowledged(|sequence| {
            address_request(RTM_DELADDR, sequence, index, address, prefix)
        })?;
        match answer {
            Ok(()) => Ok(true),
            Err(Errno::EADDRNOTAVAIL) => Ok(false),
            Err(e) => Err(format!("cannot delete {address}/{prefix}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn add_request_layout() {
        let address = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100));
        let request = address_request(RTM_NEWADDR, 7, 3, address, 24);
        // Header, ifaddrmsg, three 8-byte attributes.
        assert_eq!(request.len(), 16 + 8 + 3 * 8);
        assert_eq!(u32_at(&request, 0), Some(48));
        assert_eq!(u16_at(&request, 4), Some(RTM_NEWADDR));
        assert_eq!(
            u16_at(&request, 6),
            Some(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
        );
        assert_eq!(u32_at(&request, 8), Some(7));
        assert_eq!(&request[16..20], &[FAMILY_INET, 24, 0, 0]);
        assert_eq!(u32_at(&request, 20), Some(3));
        let found = attributes(&request[24..]);
        assert_eq!(
            found,
            vec![
                (IFA_LOCAL, &[10, 0, 0, 100][..]),
                (IFA_ADDRESS, &[10, 0, 0, 100][..]),
                (IFA_BROADCAST, &[10, 0, 0, 255][..]),
            ]
        );
        let parsed = messages(&request);
        assert_eq!(parsed.len(), 1);
        assert_eq!(
            parse_address(parsed[0].payload),
            Some(Address {
                index: 3,
                prefix: 24,
                address,
            })
        );
    }

    #[test]
    fn ipv6_and_delete_requests() {
        let address = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100));
        let request = address_request(RTM_NEWADDR, 1, 9, address, 64);
        assert_eq!(&request[16..20], &[FAMILY_INET6, 64, IFA_F_NODAD, 0]);
        assert_eq!(attributes(&request[24..]).len(), 2);
        let delete = address_request(RTM_DELADDR, 2, 9, address, 64);
        assert_eq!(u16_at(&delete, 6), Some(NLM_F_REQUEST | NLM_F_ACK));
        let v4 = address_request(
            RTM_DELADDR,
            2,
            9,
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            32,
        );
        assert_eq!(attributes(&v4[24..]).len(), 2, "no broadcast on delete");
    }

    #[test]
    fn link_messages_parse() {
        let mut body = vec![0u8; IFINFOMSG_BYTES];
        body[2..4].copy_from_slice(&ARPHRD_ETHER.to_ne_bytes());
        body[4..8].copy_from_slice(&5u32.to_ne_bytes());
        body[8..12].copy_from_slice(&0x1043u32.to_ne_bytes());
        let mac = [2, 0, 0, 0, 0, 9];
        let bytes = message(
            RTM_NEWLINK,
            0,
            1,
            &body,
            &[(IFLA_IFNAME, b"veth0\0"), (IFLA_ADDRESS, &mac)],
        );
        let parsed = messages(&bytes);
        assert_eq!(
            parse_link(parsed[0].payload),
            Some(Link {
                index: 5,
                name: "veth0".into(),
                device_type: ARPHRD_ETHER,
                flags: 0x1043,
                hardware: Some(mac),
            })
        );
    }

    #[test]
    fn malformed_input_is_cut_short_not_a_panic() {
        assert!(messages(&[1, 2, 3]).is_empty());
        let mut bogus = message(RTM_NEWADDR, 0, 1, &[0; 8], &[]);
        bogus[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(messages(&bogus).is_empty());
        bogus[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(messages(&bogus).is_empty());
        assert!(attributes(&[2, 0, 1, 0]).is_empty());
        assert!(attributes(&[200, 0, 1, 0, 9]).is_empty());
        assert_eq!(parse_address(&[2, 24]), None);
        assert_eq!(parse_link(&[0; 4]), None);
    }

    #[test]
    fn dump_requests_carry_the_family() {
        let request = dump_request(RTM_GETADDR, 4, FAMILY_INET6, IFADDRMSG_BYTES);
        assert_eq!(request.len(), 24);
        assert_eq!(u16_at(&request, 6), Some(NLM_F_REQUEST | NLM_F_DUMP));
        assert_eq!(request[16], FAMILY_INET6);
    }

    #[test]
    fn the_loopback_interface_is_listed() {
        let mut route = Route::open().expect("netlink");
        let lo = route.link("lo").expect("dump").expect("lo exists");
        assert_ne!(lo.flags & IFF_LOOPBACK, 0);
    }
}

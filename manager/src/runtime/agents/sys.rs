//! The two things agents need that have no safe interface: starting a child in a session of its
//! own (setsid between fork and exec) and sending a link-layer frame (an AF_PACKET address).

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// Makes `command`'s child call setsid(2) before exec: a session and process group of its own
/// (its pid is their id), no controlling terminal, and out of reach of signals sent to the
/// daemon's group.
#[allow(unsafe_code)]
pub(super) fn new_session(command: &mut tokio::process::Command) {
    let setsid = || {
        nix::unistd::setsid()
            .map(drop)
            .map_err(std::io::Error::from)
    };
    // SAFETY: the closure runs in the forked child before exec; it only calls setsid(2), which
    // is async-signal-safe, and turns its errno into an io::Error without allocating.
    unsafe {
        command.pre_exec(setsid);
    }
}

/// An AF_PACKET datagram socket: the kernel adds the link-layer header.
pub(super) fn packet_socket() -> Result<OwnedFd, Errno> {
    socket(
        AddressFamily::Packet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}

/// Sends `payload` as link-layer protocol `protocol` (host order, e.g. 0x0806 for ARP) to
/// `destination` on interface `interface_index` through `socket` from [`packet_socket`].
#[allow(unsafe_code)]
pub(super) fn send_frame(
    socket: &OwnedFd,
    interface_index: i32,
    protocol: u16,
    destination: [u8; 6],
    payload: &[u8],
) -> Result<(), Errno> {
    let mut hardware = [0u8; 8];
    hardware[..6].copy_from_slice(&destination);
    let address = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: protocol.to_be(),
        sll_ifindex: interface_index,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr: hardware,
    };
    let length = libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>()).unwrap_or(0);
    // SAFETY: `payload` is a live slice and its pointer and length describe it; `address` is a
    // fully initialised sockaddr_ll that outlives the call and `length` is its size; the
    // descriptor is an open socket owned by `socket` for the whole call.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            payload.as_ptr().cast(),
            payload.len(),
            0,
            std::ptr::from_ref(&address).cast(),
            length,
        )
    };
    if sent < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

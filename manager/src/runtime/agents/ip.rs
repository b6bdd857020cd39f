//! Kind `ip`: a virtual address (参考IP) `address = "10.0.0.100/24"` on `interface`.
//!
//! Start adds it through rtnetlink (an address already there is fine) and then, for IPv4,
//! announces it with gratuitous ARP: an ARP request whose sender and target are the address,
//! broadcast [`ANNOUNCEMENTS`] times [`ANNOUNCE_INTERVAL`] apart, so that neighbours and
//! switches learn its new place at once (skipped on interfaces without ARP). IPv6 addresses are
//! added without duplicate address detection; no unsolicited neighbour advertisement is sent.
//! A start whose announcement cannot be sent fails (the address stays until the stop).
//!
//! Stop deletes it (an absent address, or interface, is fine). Monitor: the address with its
//! prefix is on the interface → running, else stopped; a missing interface is failed.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::netlink::{self, ARPHRD_ETHER, IFF_LOOPBACK, IFF_NOARP, Link, Route};
use super::{AgentContext, Health, required, sys};
use crate::cluster::group::ResourceSection;

/// How many gratuitous ARP requests a start sends.
pub(super) const ANNOUNCEMENTS: usize = 3;

/// The pause between two of them.
pub(super) const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(200);

/// The ARP ethertype.
const ETHERTYPE_ARP: u16 = 0x0806;

/// The broadcast hardware address.
const BROADCAST: [u8; 6] = [0xff; 6];

/// A gratuitous ARP request for `address` from `hardware`: sender and target protocol
/// address are both `address`, the target hardware address is zero (RFC 5227 §3).
pub(super) fn gratuitous_arp(hardware: [u8; 6], address: Ipv4Addr) -> [u8; 28] {
    let mut packet = [0u8; 28];
    packet[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    packet[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    packet[4] = 6;
    packet[5] = 4;
    packet[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    packet[8..14].copy_from_slice(&hardware);
    packet[14..18].copy_from_slice(&address.octets());
    packet[24..28].copy_from_slice(&address.octets());
    packet
}

/// Parses `10.0.0.100/24`.
pub(super) fn parse_address(text: &str) -> Option<(IpAddr, u8)> {
    let (address, prefix) = text.split_once('/')?;
    let address: IpAddr = address.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let bits = if address.is_ipv4() { 32 } else { 128 };
    (prefix <= bits).then_some((address, prefix))
}

/// The hardware address to announce from, if `link` speaks ARP.
fn arp_hardware(link: &Link) -> Option<[u8; 6]> {
    let speaks_arp =
        link.device_type == ARPHRD_ETHER && link.flags & (IFF_NOARP | IFF_LOOPBACK) == 0;
    link.hardware.filter(|_| speaks_arp)
}

/// Kind `ip`.
#[derive(Debug)]
pub struct Ip {
    context: AgentContext,
    address: IpAddr,
    prefix: u8,
    interface: String,
}

impl Ip {
    pub(super) fn new(section: &ResourceSection, context: AgentContext) -> Result<Self, String> {
        let text = required(&context, "ip", "address", section.address.as_ref())?;
        let (address, prefix) = parse_address(text).ok_or_else(|| {
            context.error(format!(
                "address {text:?} is not an IP address with a prefix (10.0.0.100/24)"
            ))
        })?;
        let interface = required(&context, "ip", "interface", section.interface.as_ref())?;
        if interface.is_empty() || interface.len() > 15 || interface.contains(['/', '\0', ' ']) {
            return Err(context.error(format!("interface {interface:?} is not an interface name")));
        }
        Ok(Self {
            address,
            prefix,
            interface: interface.clone(),
            context,
        })
    }

    fn describe(&self) -> String {
        format!("{}/{} on {}", self.address, self.prefix, self.interface)
    }

    fn link(&self, route: &mut Route) -> Result<Option<Link>, String> {
        route
            .link(&self.interface)
            .map_err(|e| self.context.error(e))
    }

    pub(super) async fn start(&self) -> Result<(), String> {
        let context = &self.context;
        let mut route = Route::open().map_err(|e| context.error(e))?;
        let link = self
            .link(&mut route)?
            .ok_or_else(|| context.error(format!("no interface {}", self.interface)))?;
        let added = route
            .add_address(link.index, self.address, self.prefix)
            .map_err(|e| context.error(format!("{} ({})", e, self.interface)))?;
        drop(route);
        if let IpAddr::V4(address) = self.address
            && let Some(hardware) = arp_hardware(&link)
        {
            self.announce(link.index, hardware, address).await?;
        }
        tracing::info!(
            group = %context.group,
            resource = %context.resource,
            "{} {}",
            if added { "added" } else { "kept" },
            self.describe()
        );
        Ok(())
    }

    /// Sends the gratuitous ARP requests.
    async fn announce(
        &self,
        index: u32,
        hardware: [u8; 6],
        address: Ipv4Addr,
    ) -> Result<(), String> {
        let failed = |e: nix::errno::Errno| {
            self.context.error(format!(
                "gratuitous ARP for {address} on {} failed: {e}",
                self.interface
            ))
        };
        let socket = sys::packet_socket().map_err(failed)?;
        let index = i32::try_from(index).map_err(|_| failed(nix::errno::Errno::EINVAL))?;
        let packet = gratuitous_arp(hardware, address);
        for round in 0..ANNOUNCEMENTS {
            if round > 0 {
                tokio::time::sleep(ANNOUNCE_INTERVAL).await;
            }
            sys::send_frame(&socket, index, ETHERTYPE_ARP, BROADCAST, &packet).map_err(failed)?;
        }
        Ok(())
    }

    pub(super) async fn stop(&self) -> Result<(), String> {
        let context = &self.context;
        let mut route = Route::open().map_err(|e| context.error(e))?;
        let Some(link) = self.link(&mut route)? else {
            return Ok(());
        };
        let removed = route
            .delete_address(link.index, self.address, self.prefix)
            .map_err(|e| context.error(format!("{} ({})", e, self.interface)))?;
        if removed {
            tracing::info!(
                group = %context.group,
                resource = %context.resource,
                "removed {}",
                self.describe()
            );
        }
        Ok(())
    }

    pub(super) async fn monitor(&self) -> Health {
        match self.present() {
            Ok(true) => Health::Running,
            Ok(false) => Health::Stopped,
            Err(error) => Health::Failed(error),
        }
    }

    fn present(&self) -> Result<bool, String> {
        let mut route = Route::open().map_err(|e| self.context.error(e))?;
        let link = self.link(&mut route)?.ok_or_else(|| {
            self.context
                .error(format!("no interface {}", self.interface))
        })?;
        let addresses = route
            .addresses(self.address)
            .map_err(|e| self.context.error(e))?;
        Ok(addresses.iter().any(|found| {
            *found
                == netlink::Address {
                    index: link.index,
                    prefix: self.prefix,
                    address: self.address,
                }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratuitous_arp_layout() {
        let packet = gratuitous_arp([2, 0, 0, 0, 0, 1], Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(
            packet,
            [
                0, 1, 8, 0, 6, 4, 0, 1, // Ethernet, IPv4, sizes, request
                2, 0, 0, 0, 0, 1, 10, 0, 0, 100, // sender
                0, 0, 0, 0, 0, 0, 10, 0, 0, 100, // target
            ]
        );
    }

    #[test]
    fn addresses_with_prefixes() {
        assert_eq!(
            parse_address("10.0.0.100/24"),
            Some((IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100)), 24))
        );
        assert!(parse_address("fd00::1/64").is_some());
        for bad in [
            "10.0.0.100",
            "10.0.0.100/33",
            "fd00::1/129",
            "x/24",
            "10.0.0.1/-1",
        ] {
            assert_eq!(parse_address(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_ethernet_links_with_arp_announce() {
        let mut link = Link {
            index: 2,
            name: "eth0".into(),
            device_type: ARPHRD_ETHER,
            flags: 0x1043,
            hardware: Some([2, 0, 0, 0, 0, 1]),
        };
        assert_eq!(arp_hardware(&link), Some([2, 0, 0, 0, 0, 1]));
        link.flags |= IFF_NOARP;
        assert_eq!(arp_hardware(&link), None);
        link.flags = IFF_LOOPBACK;
        assert_eq!(arp_hardware(&link), None);
        link.flags = 0;
        link.hardware = None;
        assert_eq!(arp_hardware(&link), None);
    }
}

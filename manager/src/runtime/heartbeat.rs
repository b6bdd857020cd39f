//! Heartbeat sockets: UDP beats on every link ([`crate::cluster::heartbeat`] decides what they
//! mean; the cluster task in [`super::cluster`] drives both), and the view of the peer and its
//! links that status shows.
//!
//! One socket per link, bound to this node's address of that link; beats go to the peer's
//! address of the same link. A datagram that is not an authentic beat of this cluster is
//! dropped (its reason logged once per kind), and a beat that arrives on a link other than the
//! one it was sent on is ignored: it proves nothing about that link.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::cluster::advert::Advert;
use crate::cluster::beat::{BeatKey, PACKET_BYTES_MAX, Sender};
use crate::cluster::heartbeat::{Beat, HeartbeatEvent, LinkHealth};
use crate::config::Config;
use crate::status::{ArbitrationReport, GroupReport};

/// One link as status shows it.
#[derive(Clone, Debug)]
pub struct LinkState {
    /// This node's address on the link.
    pub local: IpAddr,
    /// The peer's address on the link.
    pub peer: IpAddr,
    /// Its health.
    pub health: LinkHealth,
    /// Why it has no socket, if it has none.
    pub error: Option<String>,
}

/// The peer as the heartbeats see it, and the cluster core's state, for status.
#[derive(Clone, Debug, Default)]
pub struct PeerView {
    /// Some link is not down.
    pub alive: bool,
    /// Each link, in the configured order.
    pub links: Vec<LinkState>,
    /// The groups.
    pub groups: Vec<GroupReport>,
    /// Arbitration.
    pub arbitration: Option<ArbitrationReport>,
}

/// The shared view, updated by the task.
pub type SharedView = Arc<Mutex<PeerView>>;

/// The sockets of every link, and the keys to sign and check beats.
#[derive(Debug)]
pub struct Links {
    sockets: Vec<Option<(Arc<UdpSocket>, SocketAddr)>>,
    /// Datagrams as they arrive, with their link.
    pub arrived: mpsc::Receiver<(usize, Vec<u8>)>,
    key: BeatKey,
    node: u8,
    peer_node: u8,
    refused: std::collections::BTreeSet<String>,
}

/// Binds every link of node `index`; returns the links and the view status shows.
pub async fn bind(config: &Config, index: usize, key: &[u8; 32]) -> (Links, SharedView) {
    let port = config.heartbeat.port;
    let peer_index = 1 - index;
    let (arrivals, arrived) = mpsc::channel::<(usize, Vec<u8>)>(256);
    let mut sockets = Vec::new();
    let mut states = Vec::new();
    for (link, pair) in config.heartbeat_links().iter().enumerate() {
        let (local, peer) = (pair[index].0, pair[peer_index].1);
        let error = match UdpSocket::bind(SocketAddr::new(local, port)).await {
            Ok(socket) => {
                let socket = Arc::new(socket);
                tokio::spawn(receive(link, Arc::clone(&socket), arrivals.clone()));
                sockets.push(Some((socket, SocketAddr::new(peer, port))));
                None
            }
            Err(e) => {
                let reason = format!("cannot bind {local}:{port}: {e}");
                tracing::error!("heartbeat link {link}: {reason}");
                sockets.push(None);
                Some(reason)
            }
        };
        states.push(LinkState {
            local,
            peer,
            health: LinkHealth::Down,
            error,
        });
    }
    let view = Arc::new(Mutex::new(PeerView {
        alive: false,
        links: states,
        ..PeerView::default()
    }));
    let links = Links {
        sockets,
        arrived,
        key: BeatKey::new(key, &config.cluster.name),
        node: u8::try_from(index).expect("two nodes"),
        peer_node: u8::try_from(peer_index).expect("two nodes"),
        refused: std::collections::BTreeSet::new(),
    };
    (links, view)
}

impl Links {
    /// The number of links.
    pub fn count(&self) -> usize {
        self.sockets.len()
    }

    /// Sends `beat` with `advert` on every link.
    pub async fn send(&self, beat: Beat, advert: &Advert) {
        for (link, socket) in self.sockets.iter().enumerate() {
            if let Some((socket, to)) = socket {
                let sender = Sender {
                    node: self.node,
                    link: u8::try_from(link).unwrap_or(u8::MAX),
                };
                // A send error (no route while a link is down) is what the peer's silence
                // will show; nothing to do here.
                let _ = socket
                    .send_to(&self.key.encode(sender, beat, advert), *to)
                    .await;
            }
        }
    }

    /// The peer's beat and advert in a datagram from `link`, if it is one, sent on that
    /// link; anything else is dropped, its reason logged once per kind.
    pub fn decode(&mut self, link: usize, packet: &[u8]) -> Option<(Beat, Advert)> {
        match self.key.decode(packet) {
            Ok((
                Sender {
                    node,
                    link: sent_on,
                },
                beat,
                advert,
            )) if node == self.peer_node && usize::from(sent_on) == link => Some((beat, advert)),
            Ok(_) => None,
            Err(error) => {
                if self.refused.insert(error.to_string()) {
                    tracing::warn!("heartbeat link {link}: dropped a datagram: {error}");
                }
                None
            }
        }
    }
}

/// Logs a heartbeat event.
pub fn log_event(names: &[String; 2], view: &SharedView, event: HeartbeatEvent) {
    let [this, peer] = names;
    match event {
        HeartbeatEvent::Link { link, from, to } => {
            let view = view.lock().unwrap_or_else(PoisonError::into_inner);
            let state = &view.links[link];
            tracing::info!(
                "heartbeat link {link} ({} -> {}) {} -> {}",
                state.local,
                state.peer,
                from.name(),
                to.name()
            );
        }
        HeartbeatEvent::PeerFound => tracing::info!("{this}: peer {peer} is alive"),
        HeartbeatEvent::PeerLost => {
            tracing::warn!("{this}: peer {peer} lost: no heartbeat on any link");
        }
    }
}

/// Forwards every datagram of one link's socket to the heartbeat task.
async fn receive(link: usize, socket: Arc<UdpSocket>, arrivals: mpsc::Sender<(usize, Vec<u8>)>) {
    let mut buffer = [0u8; PACKET_BYTES_MAX + 1];
    loop {
        match socket.recv_from(&mut buffer).await {
            Ok((bytes, _)) => {
                // A longer datagram arrives cut to one byte over the largest beat, which
                // decoding refuses.
                let packet = buffer[..bytes].to_vec();
                if arrivals.send((link, packet)).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                tracing::debug!("heartbeat link {link}: receive: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

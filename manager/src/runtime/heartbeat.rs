//! The heartbeat task: UDP beats on every link ([`crate::cluster::heartbeat`] decides what
//! they mean), and the view of the peer and its links that status shows.
//!
//! One socket per link, bound to this node's address of that link; beats go to the peer's
//! address of the same link. A datagram that is not an authentic beat of this cluster is
//! dropped (its reason logged once per kind), and a beat that arrives on a link other than the
//! one it was sent on is ignored: it proves nothing about that link.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::cluster::beat::{BeatKey, PACKET_BYTES, Sender};
use crate::cluster::heartbeat::{HeartbeatEvent, HeartbeatTiming, Heartbeats, LinkHealth};
use crate::config::Config;

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

/// The peer as the heartbeats see it.
#[derive(Clone, Debug, Default)]
pub struct PeerView {
    /// Some link is not down.
    pub alive: bool,
    /// Each link, in the configured order.
    pub links: Vec<LinkState>,
}

/// The shared view, updated by the task.
pub type SharedView = Arc<Mutex<PeerView>>;

/// Starts the heartbeat task of node `index`; returns the view it keeps up to date.
pub async fn start(config: &Config, index: usize, key: &[u8; 32]) -> SharedView {
    let section = config.heartbeat;
    let timing = HeartbeatTiming {
        interval_ms: section.interval_ms,
        warn_after: section.warn_after,
        dead_after: section.dead_after,
    };
    let peer_index = 1 - index;
    let addresses = config.heartbeat_links();
    let mut links = Vec::new();
    let (arrivals, mut arrived) = mpsc::channel::<(usize, Vec<u8>)>(256);
    let mut sockets = Vec::new();
    for (link, pair) in addresses.iter().enumerate() {
        let (local, peer) = (pair[index].0, pair[peer_index].1);
        let bound = UdpSocket::bind(SocketAddr::new(local, section.port)).await;
        let error = match bound {
            Ok(socket) => {
                let socket = Arc::new(socket);
                tokio::spawn(receive(link, Arc::clone(&socket), arrivals.clone()));
                sockets.push(Some((socket, SocketAddr::new(peer, section.port))));
                None
            }
            Err(e) => {
                let reason = format!("cannot bind {local}:{}: {e}", section.port);
                tracing::error!("heartbeat link {link}: {reason}");
                sockets.push(None);
                Some(reason)
            }
        };
        links.push(LinkState {
            local,
            peer,
            health: LinkHealth::Down,
            error,
        });
    }
    let view = Arc::new(Mutex::new(PeerView {
        alive: false,
        links,
    }));
    let beats = BeatKey::new(key, &config.cluster.name);
    let shared = Arc::clone(&view);
    let node = u8::try_from(index).expect("two nodes");
    let peer_node = u8::try_from(peer_index).expect("two nodes");
    let names = [
        config.nodes[index].name.clone(),
        config.nodes[peer_index].name.clone(),
    ];
    tokio::spawn(async move {
        let started = Instant::now();
        let now_ms = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let seed = engine::runtime::os_random_u64();
        let mut core = Heartbeats::new(timing, sockets.len(), seed, now_ms());
        let mut refused = std::collections::BTreeSet::new();
        loop {
            let wait = core.next_deadline().saturating_sub(now_ms());
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_millis(wait)) => {}
                Some((link, packet)) = arrived.recv() => {
                    match beats.decode(&packet) {
                        Ok((Sender { node, link: sent_on }, beat))
                            if node == peer_node && usize::from(sent_on) == link =>
                        {
                            let _ = core.received(link, beat, now_ms());
                        }
                        Ok(_) => {}
                        Err(error) => {
                            if refused.insert(error.to_string()) {
                                tracing::warn!("heartbeat link {link}: dropped a datagram: {error}");
                            }
                        }
                    }
                }
            }
            if let Some(beat) = core.poll_send(now_ms()) {
                for (link, socket) in sockets.iter().enumerate() {
                    if let Some((socket, to)) = socket {
                        let sender = Sender {
                            node,
                            link: u8::try_from(link).unwrap_or(u8::MAX),
                        };
                        // A send error (no route while a link is down) is what the peer's
                        // silence will show; nothing to do here.
                        let _ = socket.send_to(&beats.encode(sender, beat), *to).await;
                    }
                }
            }
            for event in core.tick(now_ms()) {
                log_event(&names, &shared, event);
            }
            let mut view = shared.lock().unwrap_or_else(PoisonError::into_inner);
            view.alive = core.peer_alive();
            for (state, health) in view.links.iter_mut().zip(core.health()) {
                state.health = health;
            }
        }
    });
    view
}

fn log_event(names: &[String; 2], view: &SharedView, event: HeartbeatEvent) {
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
    let mut buffer = [0u8; 512];
    loop {
        match socket.recv_from(&mut buffer).await {
            Ok((bytes, _)) => {
                // Only beat-sized datagrams can be beats; anything else is dropped here.
                let packet = buffer[..bytes.min(PACKET_BYTES + 1)].to_vec();
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

//! A simulated link between two nodes, with the semantics of one TCP connection at a time.
//!
//! Messages in one direction arrive in the order they were sent, each after a random delay
//! (slow links stretch it). A connection ends by a close from either side, a fault, or a
//! partition; the other side hears of it after a delay, and messages still in flight on the
//! old connection are lost. While partitioned, no new connection forms. A node that crashed
//! sends nothing; whether its peer hears of it at once (the kernel reset the socket) or only
//! through silence (the machine is gone) is chosen per crash.

use std::collections::BTreeMap;

use crate::prng::Prng;
use crate::protocol::messages::PeerMessage;

/// What the network delivers to a node.
#[derive(Clone, Debug)]
pub enum Delivery {
    /// A connection is up.
    Connected,
    /// A message from the peer.
    Message(PeerMessage),
    /// The connection is gone.
    Disconnected(String),
}

#[derive(Clone, Debug)]
struct InFlight {
    connection: u64,
    to: usize,
    delivery: Delivery,
}

/// Delay settings.
#[derive(Clone, Copy, Debug)]
pub struct NetworkTiming {
    /// Shortest one-way delay.
    pub delay_min_nanos: u64,
    /// Longest one-way delay.
    pub delay_max_nanos: u64,
    /// Time to set up a connection.
    pub connect_nanos: u64,
}

/// The simulated network between node 0 and node 1.
#[derive(Debug)]
pub struct SimNetwork {
    timing: NetworkTiming,
    prng: Prng,
    /// The current connection's id, if one is up.
    connection: Option<u64>,
    next_connection: u64,
    in_flight: BTreeMap<(u64, u64), InFlight>,
    next_sequence: u64,
    /// Per direction, the time of the last scheduled delivery (FIFO).
    last_delivery: [u64; 2],
    partitioned_until: u64,
    /// A slow link multiplies delays by this factor until `slow_until`.
    slow_factor: u64,
    slow_until: u64,
    /// When a connection attempt completes, if one is under way.
    connecting_at: Option<u64>,
    /// Messages delivered.
    pub delivered: u64,
    /// Data bytes carried by delivered messages.
    pub data_bytes: u64,
}

impl SimNetwork {
    /// A network with no connection.
    pub fn new(timing: NetworkTiming, prng: Prng) -> Self {
        Self {
            timing,
            prng,
            connection: None,
            next_connection: 1,
            in_flight: BTreeMap::new(),
            next_sequence: 0,
            last_delivery: [0; 2],
            partitioned_until: 0,
            slow_factor: 1,
            slow_until: 0,
            connecting_at: None,
            delivered: 0,
            data_bytes: 0,
        }
    }

    /// Whether a connection is up.
    pub fn is_connected(&self) -> bool {
        self.connection.is_some()
    }

    /// Starts a connection attempt if none is up or under way and the nodes are not
    /// partitioned. Both nodes must want it; the harness checks that.
    pub fn try_connect(&mut self, now: u64) {
        if self.connection.is_none()
            && self.connecting_at.is_none()
            && now >= self.partitioned_until
        {
            self.connecting_at = Some(now + self.timing.connect_nanos);
        }
    }

    /// When the next delivery or connection is due.
    pub fn next_due(&self) -> Option<u64> {
        let delivery = self.in_flight.keys().next().map(|(at, _)| *at);
        [delivery, self.connecting_at].into_iter().flatten().min()
    }

    /// The next event due at or before `now`: (node, delivery).
    pub fn deliver_next(&mut self, now: u64) -> Option<(usize, Delivery)> {
        if let Some(at) = self.connecting_at
            && at <= now
            && self
                .in_flight
                .keys()
                .next()
                .is_none_or(|(first, _)| *first >= at)
        {
            self.connecting_at = None;
            if now < self.partitioned_until || self.connection.is_some() {
                return None;
            }
            let id = self.next_connection;
            self.next_connection += 1;
            self.connection = Some(id);
            self.last_delivery = [now; 2];
            self.schedule(id, 1, Delivery::Connected, now);
            return Some((0, Delivery::Connected));
        }
        let (&key, _) = self.in_flight.iter().next()?;
        if key.0 > now {
            return None;
        }
        let packet = self.in_flight.remove(&key).expect("present");
        let current = self.connection == Some(packet.connection);
        match packet.delivery {
            Delivery::Message(message) if current => {
                self.delivered += 1;
                self.data_bytes += message.data_bytes();
                Some((packet.to, Delivery::Message(message)))
            }
            Delivery::Message(_) => None, // Sent on a connection that is gone.
            delivery @ (Delivery::Connected | Delivery::Disconnected(_)) => {
                Some((packet.to, delivery))
            }
        }
    }

    /// Node `from` sends `message` on the current connection (dropped if there is none).
    pub fn send(&mut self, from: usize, message: PeerMessage, now: u64) {
        let Some(connection) = self.connection else {
            return;
        };
        self.schedule(connection, 1 - from, Delivery::Message(message), now);
    }

    /// Node `from` closes the connection; the other node hears of it.
    pub fn close(&mut self, from: usize, reason: &str, now: u64) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        let reason = format!("the peer closed the connection: {reason}");
        self.schedule(connection, 1 - from, Delivery::Disconnected(reason), now);
    }

    /// The connection breaks: both nodes hear of it.
    pub fn fault(&mut self, reason: &str, now: u64) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        for node in 0..2 {
            self.schedule(
                connection,
                node,
                Delivery::Disconnected(reason.to_string()),
                now,
            );
        }
    }

    /// Node `node` crashed. With `reset`, its peer hears of it at once; otherwise only through
    /// silence.
    pub fn crash(&mut self, node: usize, reset: bool, now: u64) {
        self.in_flight.retain(|_, packet| packet.to != node);
        let Some(connection) = self.connection.take() else {
            return;
        };
        if reset {
            let reason = "connection reset by peer".to_string();
            self.schedule(connection, 1 - node, Delivery::Disconnected(reason), now);
        }
        // Without a reset nothing arrives: the peer's ping timeout notices.
        if !reset {
            self.in_flight
                .retain(|_, packet| packet.connection != connection);
        }
    }

    /// No connection until `until`; the current one breaks.
    pub fn partition(&mut self, until: u64, now: u64) {
        self.partitioned_until = self.partitioned_until.max(until);
        self.connecting_at = None;
        self.fault("network partition", now);
    }

    /// Delays grow by `factor` until `until`.
    pub fn slow_down(&mut self, factor: u64, until: u64) {
        self.slow_factor = factor.max(1);
        self.slow_until = until;
    }

    /// Ends partitions and slowness.
    pub fn heal(&mut self, now: u64) {
        self.partitioned_until = now;
        self.slow_until = now;
    }

    fn schedule(&mut self, connection: u64, to: usize, delivery: Delivery, now: u64) {
        let span = self.timing.delay_max_nanos - self.timing.delay_min_nanos;
        let mut delay = self.timing.delay_min_nanos + self.prng.below(span + 1);
        if now < self.slow_until {
            delay *= self.slow_factor;
        }
        // One direction is a FIFO: never deliver before an earlier message.
        let at = (now + delay).max(self.last_delivery[to]);
        self.last_delivery[to] = at;
        self.next_sequence += 1;
        self.in_flight.insert(
            (at, self.next_sequence),
            InFlight {
                connection,
                to,
                delivery,
            },
        );
    }
}

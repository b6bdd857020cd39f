//! Heartbeats over every configured link: which links carry the peer's beats, and whether the
//! peer is alive (it is lost only when every link is down). Sans-IO: the caller sends the beats
//! [`Heartbeats::poll_send`] returns on every link, feeds back what arrives with
//! [`Heartbeats::received`], and calls [`Heartbeats::tick`] at [`Heartbeats::next_deadline`].
//! Times are milliseconds of a monotonic clock.
//!
//! Freshness without synchronized clocks: every beat carries a new random nonce and echoes the
//! newest nonce heard from the peer. A beat counts as a sign of life only if its echo is one of
//! the nonces this node sent within the dead time, and its sequence number is newer than any
//! seen from the same peer boot: a recorded beat replayed later proves nothing. (The beats are
//! authenticated with the cluster key by [`super::beat`].)

use std::collections::VecDeque;

use engine::prng::Prng;

/// Heartbeat timing (DESIGN §5 defaults: 1000 ms, suspect after 2 missed, dead after 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatTiming {
    /// The heartbeat interval: link health and the dead time count in it. Beats go out twice
    /// per interval.
    pub interval_ms: u64,
    /// Intervals without a beat before a link is `suspect`.
    pub warn_after: u32,
    /// Intervals without a beat before a link is `down`.
    pub dead_after: u32,
}

impl Default for HeartbeatTiming {
    fn default() -> Self {
        Self {
            interval_ms: 1000,
            warn_after: 2,
            dead_after: 3,
        }
    }
}

impl HeartbeatTiming {
    /// Milliseconds after which a silent link is down (and, all links down, the peer lost).
    pub fn dead_ms(&self) -> u64 {
        self.interval_ms * u64::from(self.dead_after)
    }
}

/// The health of one link, as status spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkHealth {
    /// A fresh beat arrived within `warn_after` intervals.
    Up,
    /// Silent for `warn_after` intervals, not yet `dead_after`.
    Suspect,
    /// Silent for `dead_after` intervals, or never heard.
    Down,
}

impl LinkHealth {
    /// The status spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Suspect => "suspect",
            Self::Down => "down",
        }
    }
}

/// What one beat says (the authenticated payload of a heartbeat packet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Beat {
    /// Random per daemon start: sequence numbers restart with it.
    pub boot: u64,
    /// Increases with every beat of this boot (the same on every link).
    pub seq: u64,
    /// Fresh random value, to be echoed.
    pub nonce: u64,
    /// The newest nonce heard from the peer (0: none yet).
    pub echo: u64,
}

/// A change worth a log line and a reaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatEvent {
    /// Link `link` changed health.
    Link {
        /// Index in the configured order.
        link: usize,
        /// Before.
        from: LinkHealth,
        /// Now.
        to: LinkHealth,
    },
    /// A link came up after every link was down.
    PeerFound,
    /// Every link is down.
    PeerLost,
}

/// Why a beat was not taken as a sign of life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stale {
    /// It echoes no nonce this node sent within the dead time (a replay, or the peer has not
    /// heard this node yet).
    Echo,
    /// Its sequence number is not newer than one already taken from that boot.
    Sequence,
    /// No such link.
    Link,
}

#[derive(Clone, Copy, Debug)]
struct Link {
    health: LinkHealth,
    last_fresh_ms: Option<u64>,
}

/// The heartbeat state of one node towards its peer. See the module documentation.
#[derive(Debug)]
pub struct Heartbeats {
    timing: HeartbeatTiming,
    links: Vec<Link>,
    prng: Prng,
    boot: u64,
    seq: u64,
    next_send_ms: u64,
    /// Nonces sent, newest last, with when.
    sent: VecDeque<(u64, u64)>,
    /// The newest nonce heard from the peer, to echo.
    echo: u64,
    /// See [`Heartbeats::echo_sent_ms`].
    echo_sent_ms: Option<u64>,
    /// The peer's boot and the newest sequence number taken from it.
    peer: Option<(u64, u64)>,
    alive: bool,
}

impl Heartbeats {
    /// `links` links, all down; the first beat is due at once.
    pub fn new(timing: HeartbeatTiming, links: usize, seed: u64, now_ms: u64) -> Self {
        let mut prng = Prng::from_seed(seed);
        let boot = prng.next_u64();
        Self {
            timing,
            links: vec![
                Link {
                    health: LinkHealth::Down,
                    last_fresh_ms: None,
                };
                links
            ],
            prng,
            boot,
            seq: 0,
            next_send_ms: now_ms,
            sent: VecDeque::new(),
            echo: 0,
            echo_sent_ms: None,
            peer: None,
            alive: false,
        }
    }

    /// The beat to send on every link now, if one is due.
    pub fn poll_send(&mut self, now_ms: u64) -> Option<Beat> {
        if now_ms < self.next_send_ms {
            return None;
        }
        // Twice per interval: the peer's echo of a beat then arrives within about half an
        // interval, which keeps the cluster core's peer vote (this node's send time of the
        // newest echoed beat plus the dead time, less the fence time) from lapsing between
        // beats while the peer is fine. Link health still counts whole intervals.
        self.next_send_ms = now_ms + (self.timing.interval_ms / 2).max(1);
        self.seq += 1;
        let nonce = self.prng.next_u64() | 1;
        self.sent.push_back((nonce, now_ms));
        let horizon = now_ms.saturating_sub(self.timing.dead_ms());
        while self.sent.front().is_some_and(|&(_, at)| at < horizon) {
            self.sent.pop_front();
        }
        Some(Beat {
            boot: self.boot,
            seq: self.seq,
            nonce,
            echo: self.echo,
        })
    }

    /// A beat arrived on `link` (already authenticated). Its nonce is echoed from now on even
    /// if it is not fresh: that is how two nodes that just started get to fresh beats.
    pub fn received(&mut self, link: usize, beat: Beat, now_ms: u64) -> Result<(), Stale> {
        if link >= self.links.len() {
            return Err(Stale::Link);
        }
        let newer = match self.peer {
            Some((boot, seq)) if boot == beat.boot => beat.seq > seq,
            _ => true,
        };
        // The same beat travels every link: a repeat of the newest sequence number is
        // fresh on the other links.
        let repeat = self.peer == Some((beat.boot, beat.seq));
        if !newer && !repeat {
            return Err(Stale::Sequence);
        }
        let Some(&(_, sent_ms)) = self.sent.iter().find(|&&(nonce, _)| nonce == beat.echo) else {
            // While the peer is alive only fresh beats are echoed, so an echo proves that the
            // peer took one of this node's beats as a sign of life (what the cluster core's
            // peer vote relies on); while it is not, any beat is, to get to fresh ones.
            if !self.alive {
                self.echo = beat.nonce;
            }
            return Err(Stale::Echo);
        };
        self.echo = beat.nonce;
        self.echo_sent_ms = self.echo_sent_ms.max(Some(sent_ms));
        self.peer = Some((beat.boot, beat.seq));
        self.links[link].last_fresh_ms = Some(now_ms);
        Ok(())
    }

    /// When this node sent the newest of its beats that the peer has echoed in a fresh beat:
    /// the peer took that beat as a sign of life, so it will not find this node dead before
    /// this time plus the dead time.
    pub fn echo_sent_ms(&self) -> Option<u64> {
        self.echo_sent_ms
    }

    /// Makes the next beat due now (the advert changed and should travel at once).
    pub fn send_soon(&mut self, now_ms: u64) {
        self.next_send_ms = self.next_send_ms.min(now_ms);
    }

    /// Updates the links' health; returns what changed.
    pub fn tick(&mut self, now_ms: u64) -> Vec<HeartbeatEvent> {
        let mut events = Vec::new();
        let warn_ms = self.timing.interval_ms * u64::from(self.timing.warn_after);
        for (index, link) in self.links.iter_mut().enumerate() {
            let health = match link.last_fresh_ms.map(|at| now_ms.saturating_sub(at)) {
                Some(silent) if silent < warn_ms => LinkHealth::Up,
                Some(silent) if silent < self.timing.dead_ms() => LinkHealth::Suspect,
                _ => LinkHealth::Down,
            };
            if health != link.health {
                events.push(HeartbeatEvent::Link {
                    link: index,
                    from: link.health,
                    to: health,
                });
                link.health = health;
            }
        }
        let alive = self.links.iter().any(|l| l.health != LinkHealth::Down);
        if alive != self.alive {
            self.alive = alive;
            events.push(if alive {
                HeartbeatEvent::PeerFound
            } else {
                HeartbeatEvent::PeerLost
            });
        }
        events
    }

    /// When `poll_send` or `tick` next has something to do.
    pub fn next_deadline(&self) -> u64 {
        let warn_ms = self.timing.interval_ms * u64::from(self.timing.warn_after);
        let changes = self.links.iter().filter_map(|link| {
            let at = link.last_fresh_ms?;
            match link.health {
                LinkHealth::Up => Some(at + warn_ms),
                LinkHealth::Suspect => Some(at + self.timing.dead_ms()),
                LinkHealth::Down => None,
            }
        });
        changes.fold(self.next_send_ms, u64::min)
    }

    /// Each link's health, in the configured order.
    pub fn health(&self) -> Vec<LinkHealth> {
        self.links.iter().map(|l| l.health).collect()
    }

    /// Whether the peer is alive: some link is not down.
    pub fn peer_alive(&self) -> bool {
        self.alive
    }

    /// Milliseconds since the last fresh beat on `link`, if any.
    pub fn silent_ms(&self, link: usize, now_ms: u64) -> Option<u64> {
        let at = self.links.get(link)?.last_fresh_ms?;
        Some(now_ms.saturating_sub(at))
    }
}

#[cfg(test)]
mod tests;

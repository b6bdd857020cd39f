use super::*;

const TIMING: HeartbeatTiming = HeartbeatTiming {
    interval_ms: 1000,
    warn_after: 2,
    dead_after: 3,
};

/// Two nodes with `links` links; `deliver[i]` says whether link i carries beats (both ways).
struct Pair {
    nodes: [Heartbeats; 2],
    now: u64,
    deliver: Vec<bool>,
    events: [Vec<HeartbeatEvent>; 2],
}

impl Pair {
    fn new(links: usize) -> Self {
        Self {
            nodes: [
                Heartbeats::new(TIMING, links, 1, 0),
                Heartbeats::new(TIMING, links, 2, 0),
            ],
            now: 0,
            deliver: vec![true; links],
            events: [Vec::new(), Vec::new()],
        }
    }

    /// Runs in 100 ms steps for `ms`.
    fn run(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            for from in 0..2 {
                if let Some(beat) = self.nodes[from].poll_send(self.now) {
                    for (link, &up) in self.deliver.iter().enumerate() {
                        if up {
                            let _ = self.nodes[1 - from].received(link, beat, self.now);
                        }
                    }
                }
            }
            for node in 0..2 {
                let events = self.nodes[node].tick(self.now);
                self.events[node].extend(events);
            }
            self.now += 100;
        }
    }
}

#[test]
fn two_nodes_see_each_other_within_two_intervals() {
    let mut pair = Pair::new(2);
    pair.run(2500);
    for node in &pair.nodes {
        assert!(node.peer_alive());
        assert_eq!(node.health(), vec![LinkHealth::Up, LinkHealth::Up]);
    }
    assert!(pair.events[0].contains(&HeartbeatEvent::PeerFound));
}

#[test]
fn one_link_down_is_reported_and_the_peer_stays_alive() {
    let mut pair = Pair::new(2);
    pair.run(3000);
    pair.events = [Vec::new(), Vec::new()];
    // Beats go out every 500 ms: the last one crossed at 2500 ms; the link is suspect from
    // 4500 ms, down from 5500 ms.
    pair.deliver[1] = false;
    pair.run(1600);
    assert_eq!(
        pair.nodes[0].health(),
        vec![LinkHealth::Up, LinkHealth::Suspect]
    );
    pair.run(1000);
    assert_eq!(
        pair.nodes[0].health(),
        vec![LinkHealth::Up, LinkHealth::Down]
    );
    assert!(pair.nodes[0].peer_alive());
    assert!(!pair.events[0].contains(&HeartbeatEvent::PeerLost));
    assert!(pair.events[0].contains(&HeartbeatEvent::Link {
        link: 1,
        from: LinkHealth::Suspect,
        to: LinkHealth::Down
    }));
    // The link heals.
    pair.deliver[1] = true;
    pair.run(1500);
    assert_eq!(pair.nodes[0].health(), vec![LinkHealth::Up, LinkHealth::Up]);
}

#[test]
fn the_peer_is_lost_only_when_every_link_is_down_and_within_the_dead_time() {
    let mut pair = Pair::new(2);
    pair.run(3000);
    pair.deliver = vec![false, false];
    let cut = pair.now;
    while pair.nodes[0].peer_alive() {
        pair.run(100);
        assert!(pair.now - cut <= TIMING.dead_ms() + 1000, "lost in time");
    }
    assert!(pair.now - cut >= TIMING.dead_ms() - 1000, "not lost early");
    assert!(pair.events[0].contains(&HeartbeatEvent::PeerLost));
    assert_eq!(
        pair.nodes[0].health(),
        vec![LinkHealth::Down, LinkHealth::Down]
    );
}

#[test]
fn a_replayed_beat_is_no_sign_of_life() {
    let mut pair = Pair::new(1);
    pair.run(3000);
    // Record one of beta's beats, then silence beta.
    let recorded = loop {
        if let Some(beat) = pair.nodes[1].poll_send(pair.now) {
            break beat;
        }
        pair.now += 100;
    };
    assert_eq!(pair.nodes[0].received(0, recorded, pair.now), Ok(()));
    pair.deliver = vec![false];
    pair.run(5000);
    assert!(!pair.nodes[0].peer_alive());
    // Replayed as it was: its echo is of a nonce long expired.
    assert_eq!(
        pair.nodes[0].received(0, recorded, pair.now),
        Err(Stale::Echo)
    );
    // An older beat of the same boot: refused by its sequence number.
    let older = Beat {
        seq: recorded.seq - 1,
        ..recorded
    };
    assert_eq!(
        pair.nodes[0].received(0, older, pair.now),
        Err(Stale::Sequence)
    );
    // Even with a newer sequence number (a field the MAC would not let anyone change), the
    // echo gives it away.
    let renumbered = Beat {
        seq: recorded.seq + 100,
        ..recorded
    };
    assert_eq!(
        pair.nodes[0].received(0, renumbered, pair.now),
        Err(Stale::Echo)
    );
    let _ = pair.nodes[0].tick(pair.now);
    assert!(!pair.nodes[0].peer_alive());
}

#[test]
fn a_restarted_peer_is_taken_again_with_a_new_boot() {
    let mut pair = Pair::new(1);
    pair.run(3000);
    pair.nodes[1] = Heartbeats::new(TIMING, 1, 3, pair.now);
    pair.run(2500);
    assert!(pair.nodes[0].peer_alive());
    assert_eq!(pair.nodes[0].health(), vec![LinkHealth::Up]);
}

#[test]
fn the_deadline_covers_the_next_beat_and_the_next_health_change() {
    let mut pair = Pair::new(1);
    pair.run(3000);
    let node = &pair.nodes[0];
    let deadline = node.next_deadline();
    assert!(deadline > pair.now - 100 && deadline <= pair.now + TIMING.interval_ms);
}

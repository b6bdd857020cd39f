use super::*;

const LEASE_MS: u64 = 3000;

/// The shared device: two slots.
#[derive(Default)]
struct Disk {
    slots: [Option<Vec<u8>>; 2],
}

impl Disk {
    fn read(&self, node: usize) -> Option<Slot> {
        let block = self.slots[node].as_ref()?;
        Slot::decode(block).expect("a valid slot")
    }
}

fn claims(generation: u64) -> Claims {
    Claims {
        generation,
        ..Claims::default()
    }
}

/// A whole acquire by `node` at `now_ms`, with nothing of the peer's in between.
fn acquire(
    disk: &mut Disk,
    side: &mut QuorumDisk,
    node: usize,
    claims: Claims,
    now: u64,
) -> Verdict {
    side.observe(disk.read(1 - node), now)
        .expect("the peer's slot");
    match side.acquire(claims, now) {
        Step::Answer(verdict) => verdict,
        Step::Claim(block) => {
            disk.slots[node] = Some(block);
            side.observe(disk.read(1 - node), now)
                .expect("the peer's slot");
            finish(disk, side, node, claims, now)
        }
        Step::Write(..) => panic!("acquire never withdraws"),
    }
}

fn finish(
    disk: &mut Disk,
    side: &mut QuorumDisk,
    node: usize,
    claims: Claims,
    now: u64,
) -> Verdict {
    match side.after_claim(claims, now) {
        Step::Answer(verdict) => verdict,
        Step::Write(block, verdict) => {
            disk.slots[node] = Some(block);
            verdict
        }
        Step::Claim(_) => panic!("after a claim, no second claim"),
    }
}

fn pair(now: u64) -> [QuorumDisk; 2] {
    [
        QuorumDisk::new("demo", 0, LEASE_MS, None, now),
        QuorumDisk::new("demo", 1, LEASE_MS, None, now),
    ]
}

#[test]
fn one_holder_renews_and_the_other_gets_the_lease_only_after_it_stops() {
    let mut disk = Disk::default();
    let [mut alpha, mut beta] = pair(0);
    assert_eq!(
        acquire(&mut disk, &mut alpha, 0, claims(1), 0),
        Verdict::Granted
    );
    // beta started at the same time: it has watched nothing yet.
    assert!(matches!(
        acquire(&mut disk, &mut beta, 1, claims(1), 100),
        Verdict::Watching { .. }
    ));
    for now in (1000..=10_000).step_by(1000) {
        assert_eq!(
            acquire(&mut disk, &mut alpha, 0, claims(1), now),
            Verdict::Granted
        );
        let verdict = acquire(&mut disk, &mut beta, 1, claims(1), now + 500);
        if now + 500 < LEASE_MS {
            assert!(matches!(verdict, Verdict::Watching { .. }), "{verdict:?}");
        } else {
            assert_eq!(verdict, Verdict::Refused);
        }
    }
    // alpha stops writing at 10 000: its claim is live until 3 s after beta first saw it.
    assert_eq!(
        acquire(&mut disk, &mut beta, 1, claims(1), 12_000),
        Verdict::Refused
    );
    assert_eq!(
        acquire(&mut disk, &mut beta, 1, claims(1), 13_400),
        Verdict::Refused
    );
    assert_eq!(
        acquire(&mut disk, &mut beta, 1, claims(1), 13_600),
        Verdict::Granted
    );
    // And alpha, back, is refused while beta renews.
    assert_eq!(
        acquire(&mut disk, &mut alpha, 0, claims(1), 14_000),
        Verdict::Refused
    );
}

#[test]
fn a_release_frees_the_lease_at_once() {
    let mut disk = Disk::default();
    let [mut alpha, mut beta] = pair(0);
    assert_eq!(
        acquire(&mut disk, &mut alpha, 0, claims(1), 0),
        Verdict::Granted
    );
    disk.slots[0] = Some(alpha.release(claims(1)));
    assert_eq!(
        acquire(&mut disk, &mut beta, 1, claims(1), 100),
        Verdict::Granted
    );
}

#[test]
fn two_claims_at_once_never_both_hold_and_node_0_wins_the_next_round() {
    let mut disk = Disk::default();
    let [mut alpha, mut beta] = pair(0);
    let now = 5000;
    // Both read the peer's (empty) slot and write their claims before either reads again.
    alpha.observe(disk.read(1), now).unwrap();
    beta.observe(disk.read(0), now).unwrap();
    let Step::Claim(a) = alpha.acquire(claims(1), now) else {
        panic!("alpha claims")
    };
    let Step::Claim(b) = beta.acquire(claims(1), now) else {
        panic!("beta claims")
    };
    disk.slots[0] = Some(a);
    disk.slots[1] = Some(b);
    alpha.observe(disk.read(1), now).unwrap();
    beta.observe(disk.read(0), now).unwrap();
    let verdicts = [
        finish(&mut disk, &mut alpha, 0, claims(1), now),
        finish(&mut disk, &mut beta, 1, claims(1), now),
    ];
    assert_eq!(verdicts, [Verdict::Refused, Verdict::Refused]);
    // Withdrawn on the disk too.
    assert!(!disk.read(0).unwrap().holds && !disk.read(1).unwrap().holds);
    // Next round, at the same moment again: beta keeps out, alpha gets it.
    assert_eq!(
        acquire(&mut disk, &mut beta, 1, claims(1), now + 500),
        Verdict::Refused
    );
    assert_eq!(
        acquire(&mut disk, &mut alpha, 0, claims(1), now + 500),
        Verdict::Granted
    );
    assert_eq!(
        acquire(&mut disk, &mut beta, 1, claims(1), now + 2000),
        Verdict::Refused
    );
}

#[test]
fn of_two_interleaved_claims_at_most_one_holds() {
    // Every order of the six steps (read, write, read again per node) that keeps each node's
    // own order: never two grants.
    let steps = ["r0", "w0", "c0", "r1", "w1", "c1"];
    let mut orders = Vec::new();
    permute(&mut steps.to_vec(), 0, &mut orders);
    let mut checked = 0;
    for order in orders {
        let position = |s: &str| order.iter().position(|x| *x == s).unwrap();
        let in_order = |node: &str| {
            position(&format!("r{node}")) < position(&format!("w{node}"))
                && position(&format!("w{node}")) < position(&format!("c{node}"))
        };
        if !(in_order("0") && in_order("1")) {
            continue;
        }
        checked += 1;
        let mut disk = Disk::default();
        let mut sides = pair(0);
        let now = 10_000;
        let mut verdicts: [Option<Verdict>; 2] = [None, None];
        let mut pending: [Option<Vec<u8>>; 2] = [None, None];
        for step in &order {
            let node = usize::from(step.as_bytes()[1] - b'0');
            match &step[..1] {
                "r" => {
                    sides[node].observe(disk.read(1 - node), now).unwrap();
                    match sides[node].acquire(claims(1), now) {
                        Step::Claim(block) => pending[node] = Some(block),
                        Step::Answer(verdict) => verdicts[node] = Some(verdict),
                        Step::Write(..) => unreachable!(),
                    }
                }
                "w" => {
                    if let Some(block) = pending[node].take() {
                        disk.slots[node] = Some(block);
                    }
                }
                _ => {
                    if verdicts[node].is_none() {
                        sides[node].observe(disk.read(1 - node), now).unwrap();
                        verdicts[node] =
                            Some(finish(&mut disk, &mut sides[node], node, claims(1), now));
                    }
                }
            }
        }
        assert_ne!(
            verdicts,
            [Some(Verdict::Granted), Some(Verdict::Granted)],
            "{order:?}"
        );
    }
    assert_eq!(checked, 20);
}

fn permute<'a>(items: &mut Vec<&'a str>, at: usize, out: &mut Vec<Vec<&'a str>>) {
    if at == items.len() {
        out.push(items.clone());
        return;
    }
    for i in at..items.len() {
        items.swap(at, i);
        permute(items, at + 1, out);
        items.swap(at, i);
    }
}

#[test]
fn a_node_that_missed_writes_is_refused_until_it_has_the_generation() {
    let mut disk = Disk::default();
    let [mut alpha, mut beta] = pair(0);
    let behind = Claims {
        peer_behind: true,
        generation: 2,
        ..Claims::default()
    };
    assert_eq!(
        acquire(&mut disk, &mut alpha, 0, behind, 0),
        Verdict::Granted
    );
    disk.slots[0] = Some(alpha.release(behind));
    // alpha is gone; beta, still at generation 1, may not take over.
    assert_eq!(
        acquire(&mut disk, &mut beta, 1, claims(1), 10_000),
        Verdict::Outdated
    );
    // Unless forced; or once a resync gave it generation 2.
    let forced = Claims {
        force: true,
        generation: 1,
        ..Claims::default()
    };
    assert_eq!(
        acquire(&mut disk, &mut beta, 1, claims(2), 10_500),
        Verdict::Granted
    );
    let mut disk2 = Disk::default();
    disk2.slots[0] = disk.slots[0].clone();
    let mut gamma = QuorumDisk::new("demo", 1, LEASE_MS, None, 0);
    assert_eq!(
        acquire(&mut disk2, &mut gamma, 1, forced, 10_000),
        Verdict::Granted
    );
    // The forced node's data is now the current one: its slot says so.
    assert!(disk2.read(1).unwrap().peer_behind);
}

#[test]
fn a_node_that_took_over_with_the_current_data_is_not_outdated_by_its_own_writes() {
    let mut disk = Disk::default();
    let [mut alpha, mut beta] = pair(0);
    let behind = Claims {
        peer_behind: true,
        generation: 2,
        ..Claims::default()
    };
    // alpha ran alone (generation 2), resynced beta (beta now has 2) and died holding.
    assert_eq!(
        acquire(&mut disk, &mut alpha, 0, behind, 0),
        Verdict::Granted
    );
    assert_eq!(
        acquire(&mut disk, &mut beta, 1, claims(2), 4000),
        Verdict::Refused
    );
    assert_eq!(
        acquire(&mut disk, &mut beta, 1, claims(2), 7100),
        Verdict::Granted
    );
    // beta writes alone: a new generation; alpha's old mark does not refuse it.
    let beta_alone = Claims {
        peer_behind: true,
        generation: 3,
        ..Claims::default()
    };
    assert_eq!(
        acquire(&mut disk, &mut beta, 1, beta_alone, 8000),
        Verdict::Granted
    );
    // Also after beta's daemon restarts (it reads what it had from its own slot; it watches
    // alpha's stale claim for a lease first).
    let mut beta = QuorumDisk::new("demo", 1, LEASE_MS, disk.read(1), 9000);
    assert!(matches!(
        acquire(&mut disk, &mut beta, 1, beta_alone, 9500),
        Verdict::Watching { .. }
    ));
    assert_eq!(
        acquire(&mut disk, &mut beta, 1, beta_alone, 12_600),
        Verdict::Granted
    );
    // And alpha, back with generation 2, is outdated by beta's mark.
    assert_eq!(
        acquire(&mut disk, &mut alpha, 0, claims(2), 20_000),
        Verdict::Outdated
    );
}

#[test]
fn slots_are_checked() {
    let slot = Slot {
        cluster: 7,
        node: 1,
        seq: 9,
        holds: true,
        peer_behind: false,
        generation: 0xabcd,
        had: 3,
    };
    let block = slot.encode();
    assert_eq!(block.len(), SLOT_BYTES);
    assert_eq!(Slot::decode(&block), Ok(Some(slot)));
    assert_eq!(Slot::decode(&vec![0; SLOT_BYTES]), Ok(None));
    for index in 0..USED_BYTES {
        let mut bad = block.clone();
        bad[index] ^= 0x10;
        assert!(Slot::decode(&bad).is_err(), "byte {index}");
    }
    assert!(Slot::decode(&block[..10]).is_err());
    let mut side = QuorumDisk::new("other", 0, LEASE_MS, None, 0);
    assert!(
        side.observe(Some(slot), 0).is_err(),
        "another cluster's slot"
    );
}

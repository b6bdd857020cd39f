//! The S2 checker: is an image one the primary's history could have shown at some moment?
//!
//! A replica that follows the primary in write order (the peer under protocol A, a secondary
//! that lost its link, a node promoted after a failover under A) must hold a crash-consistent
//! state of the primary: there is a moment `T` such that every sector holds the newest content
//! completed before `T`, or the content of a write that was in flight at `T`. The history keeps,
//! per sector, every write since the replicas last matched (flushes do not prune it: the peer
//! may lag behind what the primary has made durable), and the check intersects, over all
//! sectors, the moments each sector's content allows. An empty intersection is a violation.
//!
//! Times are the model's logical clock: a write is submitted at `s` and completed at `c`. A
//! sector's content from write `w` is possible at `T` when `s < T` and either `w` was still in
//! flight (`T <= c`) or it was the newest completed one (no later write completed before `T`).

use std::collections::{BTreeSet, HashMap};

use super::model::{SectorContent, decode_sector};
use crate::types::SECTOR_BYTES;

/// An inclusive range of moments.
type Moments = (u64, u64);

#[derive(Clone, Debug)]
struct Span {
    write: u64,
    content: SectorContent,
    submitted: u64,
    completed: Option<u64>,
}

#[derive(Clone, Debug)]
struct SectorHistory {
    /// What the sector held when the history last matched a replica.
    base: SectorContent,
    /// Writes since, in submission order.
    spans: Vec<Span>,
}

/// Per-sector write history since the replicas last matched.
#[derive(Clone, Debug)]
pub struct History {
    sectors: Vec<SectorHistory>,
    /// Sectors with writes since they last matched.
    active: BTreeSet<usize>,
    writes: HashMap<u64, (usize, usize)>,
    /// Where the next check samples sectors without writes (they must hold their base).
    cursor: usize,
}

/// Sectors without writes that each check samples.
const QUIET_SAMPLE: usize = 256;

impl History {
    /// A history of `sector_count` sectors of zeros.
    pub fn new(sector_count: usize) -> Self {
        let sector = SectorHistory {
            base: SectorContent::Zero,
            spans: Vec::new(),
        };
        Self {
            sectors: vec![sector; sector_count],
            active: BTreeSet::new(),
            writes: HashMap::new(),
            cursor: 0,
        }
    }

    /// Write `id` covering `sectors` was submitted at `at`.
    pub fn submit(
        &mut self,
        id: u64,
        sectors: std::ops::Range<usize>,
        content: SectorContent,
        at: u64,
    ) {
        for sector in sectors.clone() {
            self.sectors[sector].spans.push(Span {
                write: id,
                content,
                submitted: at,
                completed: None,
            });
            self.active.insert(sector);
        }
        self.writes.insert(id, (sectors.start, sectors.end));
    }

    /// Write `id` completed at `at`.
    pub fn complete(&mut self, id: u64, at: u64) {
        let Some((start, end)) = self.writes.remove(&id) else {
            return;
        };
        for sector in start..end {
            for span in &mut self.sectors[sector].spans {
                if span.write == id {
                    span.completed = Some(at);
                }
            }
        }
    }

    /// The replica `image` is now the reference: every sector starts again from what it holds
    /// (a crash may have changed sectors without writes since). Writes still in flight stay
    /// possible.
    pub fn rebase(&mut self, image: &[u8]) {
        self.active.clear();
        for sector in 0..self.sectors.len() {
            let found = decode(image, sector);
            let state = &mut self.sectors[sector];
            state.base = found;
            state.spans.retain(|span| span.completed.is_none());
            if !state.spans.is_empty() {
                self.active.insert(sector);
            }
        }
    }

    /// Checks that `image` is a state of the history at one moment (S2): every sector with
    /// writes since the last rebase, and a rotating sample of the others. `who` names the image
    /// in the error.
    pub fn check_prefix(&mut self, image: &[u8], who: &str) -> Result<(), String> {
        let count = self.sectors.len();
        let quiet = (0..QUIET_SAMPLE.min(count)).map(|i| (self.cursor + i) % count);
        let sample: BTreeSet<usize> = self.active.iter().copied().chain(quiet).collect();
        self.cursor = (self.cursor + QUIET_SAMPLE) % count.max(1);
        let mut feasible: Vec<Moments> = vec![(0, u64::MAX)];
        for sector in sample {
            let found = decode(image, sector);
            let allowed = self.allowed(sector, found);
            let narrowed = intersect(&feasible, &allowed);
            if narrowed.is_empty() {
                return Err(format!(
                    "S2: {who} is not a prefix of the primary's history: sector {sector} holds \
                     {found:?}, possible at moments {allowed:?}, but the sectors before it need \
                     a moment in {feasible:?} (writes there: {})",
                    self.describe(sector)
                ));
            }
            feasible = narrowed;
        }
        Ok(())
    }

    /// The moments at which `sector` may hold `found`.
    fn allowed(&self, sector: usize, found: SectorContent) -> Vec<Moments> {
        let state = &self.sectors[sector];
        let spans = &state.spans;
        // The earliest completion among spans from `index` on: when they supersede older ones.
        let superseded_from = |index: usize| {
            spans[index..]
                .iter()
                .filter_map(|s| s.completed)
                .min()
                .unwrap_or(u64::MAX)
        };
        let mut allowed = Vec::new();
        if found == state.base {
            allowed.push((0, superseded_from(0)));
        }
        for (index, span) in spans.iter().enumerate() {
            if span.content != found {
                continue;
            }
            let until = span
                .completed
                .unwrap_or(u64::MAX)
                .max(superseded_from(index + 1));
            if span.submitted < until {
                allowed.push((span.submitted + 1, until));
            }
        }
        normalize(allowed)
    }

    fn describe(&self, sector: usize) -> String {
        let state = &self.sectors[sector];
        let spans: Vec<String> = state
            .spans
            .iter()
            .map(|s| format!("{:?} {}..{:?}", s.content, s.submitted, s.completed))
            .collect();
        format!("base {:?}, {}", state.base, spans.join(", "))
    }
}

fn decode(image: &[u8], sector: usize) -> SectorContent {
    let start = sector * SECTOR_BYTES as usize;
    decode_sector(&image[start..start + SECTOR_BYTES as usize], sector as u64)
}

/// Sorted, merged ranges.
fn normalize(mut ranges: Vec<Moments>) -> Vec<Moments> {
    ranges.sort_unstable();
    let mut merged: Vec<Moments> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged
}

/// The moments in both sorted, merged sets.
fn intersect(a: &[Moments], b: &[Moments]) -> Vec<Moments> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let lo = a[i].0.max(b[j].0);
        let hi = a[i].1.min(b[j].1);
        if lo <= hi {
            out.push((lo, hi));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::model::stamp_sector;

    fn image(contents: &[u64]) -> Vec<u8> {
        let mut bytes = vec![0u8; contents.len() * SECTOR_BYTES as usize];
        for (sector, &id) in contents.iter().enumerate() {
            if id != 0 {
                let start = sector * SECTOR_BYTES as usize;
                stamp_sector(
                    &mut bytes[start..start + SECTOR_BYTES as usize],
                    id,
                    sector as u64,
                );
            }
        }
        bytes
    }

    /// Write 1 to sector 0 completes, then write 2 to sector 1 is submitted and completes.
    fn ordered() -> History {
        let mut history = History::new(2);
        history.submit(1, 0..1, SectorContent::Write(1), 1);
        history.complete(1, 2);
        history.submit(2, 1..2, SectorContent::Write(2), 3);
        history.complete(2, 4);
        history
    }

    #[test]
    fn a_later_write_without_an_earlier_completed_one_is_not_a_prefix() {
        let mut history = ordered();
        assert!(history.check_prefix(&image(&[0, 0]), "peer").is_ok());
        assert!(history.check_prefix(&image(&[1, 0]), "peer").is_ok());
        assert!(history.check_prefix(&image(&[1, 2]), "peer").is_ok());
        let error = history.check_prefix(&image(&[0, 2]), "peer").unwrap_err();
        assert!(error.contains("S2"), "{error}");
    }

    #[test]
    fn concurrent_writes_may_land_in_either_order() {
        let mut history = History::new(2);
        history.submit(1, 0..1, SectorContent::Write(1), 1);
        history.submit(2, 1..2, SectorContent::Write(2), 2);
        history.complete(2, 3);
        history.complete(1, 4);
        for contents in [[0, 0], [1, 0], [0, 2], [1, 2]] {
            assert!(
                history.check_prefix(&image(&contents), "peer").is_ok(),
                "{contents:?}"
            );
        }
    }

    #[test]
    fn an_overwritten_sector_cannot_go_back() {
        let mut history = History::new(2);
        history.submit(1, 0..2, SectorContent::Write(1), 1);
        history.complete(1, 2);
        history.submit(2, 0..1, SectorContent::Write(2), 3);
        history.complete(2, 4);
        history.submit(3, 1..2, SectorContent::Write(3), 5);
        history.complete(3, 6);
        assert!(history.check_prefix(&image(&[2, 1]), "peer").is_ok());
        assert!(history.check_prefix(&image(&[2, 3]), "peer").is_ok());
        assert!(history.check_prefix(&image(&[1, 3]), "peer").is_err());
    }

    #[test]
    fn rebase_forgets_what_the_image_has() {
        let mut history = ordered();
        history.rebase(&image(&[1, 2]));
        assert!(history.check_prefix(&image(&[1, 2]), "peer").is_ok());
        assert!(history.check_prefix(&image(&[0, 2]), "peer").is_err());
    }
}

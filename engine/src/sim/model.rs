//! The reference model the simulator checks the replica against.
//!
//! Every client write stamps each 512-byte sector it covers with its write id, so any sector read
//! back names the write that produced it (zero for never written, trimmed or zeroed). Per sector
//! the model keeps the content known durable and the writes since, with logical submission and
//! completion times. From that it knows which contents a read may return and which contents may
//! survive a crash:
//!
//! - a read may return the newest content completed before it was submitted, or the content of
//!   any write that was in flight at some point while the read was;
//! - after a crash a sector may hold its durable content or the content of any later write, but
//!   never an older one (S3: a completed flush or FUA write survives).

use std::collections::HashMap;

use crate::types::SECTOR_BYTES;

/// What a sector's content says about its origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SectorContent {
    /// All zeros: never written, trimmed or zeroed.
    Zero,
    /// Written by write `id`.
    Write(u64),
    /// Neither: the bytes were damaged or mixed within a sector.
    Garbage,
}

/// Fills a sector with the stamp of write `id` at absolute sector `sector`.
pub fn stamp_sector(buffer: &mut [u8], id: u64, sector: u64) {
    assert_eq!(buffer.len() as u64, SECTOR_BYTES);
    let word = id.rotate_left(17) ^ sector.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    buffer[..8].copy_from_slice(&id.to_le_bytes());
    buffer[8..16].copy_from_slice(&sector.to_le_bytes());
    for chunk in buffer[16..].chunks_mut(8) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
}

/// Reads the stamp of a sector found at absolute sector `sector`.
pub fn decode_sector(buffer: &[u8], sector: u64) -> SectorContent {
    if buffer.iter().all(|&b| b == 0) {
        return SectorContent::Zero;
    }
    let id = u64::from_le_bytes(buffer[..8].try_into().expect("8 bytes"));
    let at = u64::from_le_bytes(buffer[8..16].try_into().expect("8 bytes"));
    let word = id.rotate_left(17) ^ sector.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let body_ok = buffer[16..].chunks(8).all(|c| c == word.to_le_bytes());
    if id != 0 && at == sector && body_ok {
        SectorContent::Write(id)
    } else {
        SectorContent::Garbage
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    write: u64,
    content: SectorContent,

    completed: Option<u64>,
    failed: bool,
}

#[derive(Clone, Debug)]
struct Sector {
    durable: SectorContent,
    entries: Vec<Entry>,
}

/// A client write as the model knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelWrite {
    /// First byte.
    pub offset: u64,
    /// Bytes.
    pub length: u64,
    /// What its sectors hold.
    pub content: SectorContent,
    /// FUA.
    pub fua: bool,
}

/// The model of the volume's contents.
#[derive(Clone, Debug)]
pub struct Model {
    sectors: Vec<Sector>,
    clock: u64,
    writes: HashMap<u64, ModelWrite>,
    /// Write ids in submission order, with their completion status.
    submission_order: Vec<u64>,
    flushes: HashMap<u64, u64>,
}

impl Model {
    /// A model of `data_bytes` of zeros.
    pub fn new(data_bytes: u64) -> Self {
        let sector = Sector {
            durable: SectorContent::Zero,
            entries: Vec::new(),
        };
        Self {
            sectors: vec![sector; (data_bytes / SECTOR_BYTES) as usize],
            clock: 0,
            writes: HashMap::new(),
            submission_order: Vec::new(),
            flushes: HashMap::new(),
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The current logical time.
    pub fn now(&self) -> u64 {
        self.clock
    }

    /// A write was submitted.
    pub fn submit_write(&mut self, id: u64, write: ModelWrite) {
        self.tick();
        self.watch(
            write.offset,
            write.length,
            &format!("submit write {id} {:?} fua {}", write.content, write.fua),
        );
        self.writes.insert(id, write);
        self.submission_order.push(id);
        for sector in self.sector_range(write.offset, write.length) {
            self.sectors[sector].entries.push(Entry {
                write: id,
                content: write.content,
                completed: None,
                failed: false,
            });
        }
    }

    /// A write completed, successfully or not.
    pub fn complete_write(&mut self, id: u64, ok: bool) {
        let now = self.tick();
        let write = self.writes[&id];
        self.watch(
            write.offset,
            write.length,
            &format!("complete write {id} ok {ok}"),
        );
        for sector in self.sector_range(write.offset, write.length) {
            let state = &mut self.sectors[sector];
            // A trim completes when all its chunks have, so a later write to a chunk that had
            // already completed may have become durable and superseded the trim's entry here.
            let Some(index) = state.entries.iter().position(|e| e.write == id) else {
                continue;
            };
            state.entries[index].completed = Some(now);
            state.entries[index].failed = !ok;
            if ok && write.fua && state.entries[..index].iter().all(|e| !e.failed) {
                state.durable = write.content;
                state.entries.drain(..=index);
            }
        }
    }

    /// A flush was submitted.
    pub fn submit_flush(&mut self, tag: u64) {
        let now = self.tick();
        self.flushes.insert(tag, now);
    }

    /// A flush completed successfully: every write completed before it was submitted is durable.
    pub fn complete_flush(&mut self, tag: u64) {
        let submitted = self.flushes.remove(&tag).expect("flush submitted");
        self.tick();
        if let Some(sector) = watched_sector() {
            eprintln!("[model] sector {sector}: flush {tag} completes (submitted at {submitted})");
        }
        for state in &mut self.sectors {
            let last = state
                .entries
                .iter()
                .rposition(|e| e.completed.is_some_and(|c| c < submitted));
            let Some(last) = last else { continue };
            if state.entries[..=last].iter().any(|e| e.failed) {
                continue; // A failed write leaves the sector uncertain until the next crash.
            }
            state.durable = state.entries[last].content;
            state.entries.drain(..=last);
        }
    }

    /// A flush failed.
    pub fn fail_flush(&mut self, tag: u64) {
        self.flushes.remove(&tag);
    }

    /// Checks one sector of a read submitted at `submitted`, completed now.
    pub fn check_read(
        &self,
        sector: usize,
        submitted: u64,
        found: SectorContent,
    ) -> Result<(), String> {
        let state = &self.sectors[sector];
        let base = state
            .entries
            .iter()
            .rev()
            .find(|e| e.completed.is_some_and(|c| c <= submitted))
            .map_or(state.durable, |e| e.content);
        let concurrent = |e: &&Entry| e.completed.is_none_or(|c| c > submitted) || e.failed;
        if found == base
            || state
                .entries
                .iter()
                .filter(concurrent)
                .any(|e| e.content == found)
        {
            return Ok(());
        }
        Err(format!(
            "read of sector {sector} returned {found:?}; expected {base:?} or a concurrent write \
             ({:?})",
            state
                .entries
                .iter()
                .filter(concurrent)
                .map(|e| e.content)
                .collect::<Vec<_>>()
        ))
    }

    /// Checks a sector after a crash: its durable content or any later write's.
    pub fn check_after_crash(&self, sector: usize, found: SectorContent) -> Result<(), String> {
        let state = &self.sectors[sector];
        if found == state.durable || state.entries.iter().any(|e| e.content == found) {
            return Ok(());
        }
        Err(format!(
            "after the crash sector {sector} holds {found:?}; durable was {:?}, later writes {:?} \
             (S3: a completed flush or FUA write was lost)",
            state.durable,
            state.entries.iter().map(|e| e.content).collect::<Vec<_>>()
        ))
    }

    /// Checks a sector on a new primary after a failover (it did not crash): it holds the newest
    /// completed content or a write that was still in flight (S1: no completed write is lost).
    pub fn check_failover(&self, sector: usize, found: SectorContent) -> Result<(), String> {
        let state = &self.sectors[sector];
        let base = state
            .entries
            .iter()
            .rev()
            .find(|e| e.completed.is_some() && !e.failed)
            .map_or(state.durable, |e| e.content);
        let in_flight = |e: &&Entry| e.completed.is_none() || e.failed;
        if found == base
            || state
                .entries
                .iter()
                .filter(in_flight)
                .any(|e| e.content == found)
        {
            return Ok(());
        }
        Err(format!(
            "after the failover sector {sector} holds {found:?}; the newest completed write was \
             {base:?} (S1: a completed write was lost)"
        ))
    }

    /// After a failover or read check: what was found is the newest content, not yet known
    /// durable. Every write since the durable point stays a possible outcome of a later crash.
    pub fn settle_volatile(&mut self, sector: usize, found: SectorContent) {
        let now = self.tick();
        if watched_sector() == Some(sector) {
            eprintln!("[model] sector {sector}: settle (volatile) {found:?}");
        }
        let state = &mut self.sectors[sector];
        state.entries.retain(|e| e.completed.is_some());
        state.entries.push(Entry {
            write: 0,
            content: found,
            completed: Some(now),
            failed: false,
        });
    }

    /// After a crash has been checked: what was found is now the durable content.
    pub fn settle(&mut self, sector: usize, found: SectorContent) {
        if watched_sector() == Some(sector) {
            eprintln!("[model] sector {sector}: settle (durable) {found:?}");
        }
        let state = &mut self.sectors[sector];
        state.durable = found;
        state.entries.clear();
    }

    /// Whether any write is still in flight.
    pub fn writes_in_flight(&self) -> bool {
        self.sectors
            .iter()
            .any(|s| s.entries.iter().any(|e| e.completed.is_none()))
    }

    /// Number of sectors.
    pub fn sector_count(&self) -> usize {
        self.sectors.len()
    }

    /// The write with id `id`.
    pub fn write(&self, id: u64) -> Option<&ModelWrite> {
        self.writes.get(&id)
    }

    /// Write ids in submission order.
    pub fn submission_order(&self) -> &[u64] {
        &self.submission_order
    }

    fn watch(&self, offset: u64, length: u64, what: &str) {
        if let Some(sector) = watched_sector()
            && self.sector_range(offset, length).contains(&sector)
        {
            eprintln!("[model] sector {sector} at {}: {what}", self.clock);
        }
    }

    fn sector_range(&self, offset: u64, length: u64) -> std::ops::Range<usize> {
        (offset / SECTOR_BYTES) as usize..((offset + length) / SECTOR_BYTES) as usize
    }
}

/// A sector to trace on stderr while debugging a seed (`TANDEM_SIM_WATCH_SECTOR=N`).
fn watched_sector() -> Option<usize> {
    std::env::var("TANDEM_SIM_WATCH_SECTOR")
        .ok()
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_decode_and_mixed_sectors_are_garbage() {
        let mut sector = vec![0u8; 512];
        assert_eq!(decode_sector(&sector, 9), SectorContent::Zero);
        stamp_sector(&mut sector, 42, 9);
        assert_eq!(decode_sector(&sector, 9), SectorContent::Write(42));
        assert_eq!(
            decode_sector(&sector, 10),
            SectorContent::Garbage,
            "misdirected"
        );
        sector[300] ^= 1;
        assert_eq!(decode_sector(&sector, 9), SectorContent::Garbage);
    }

    #[test]
    fn flush_makes_earlier_completed_writes_durable() {
        let mut model = Model::new(4096);
        let write = |content| ModelWrite {
            offset: 0,
            length: 512,
            content,
            fua: false,
        };
        model.submit_write(1, write(SectorContent::Write(1)));
        model.complete_write(1, true);
        model.submit_flush(100);
        model.submit_write(2, write(SectorContent::Write(2)));
        model.complete_write(2, true);
        model.complete_flush(100);
        assert!(model.check_after_crash(0, SectorContent::Write(1)).is_ok());
        assert!(model.check_after_crash(0, SectorContent::Write(2)).is_ok());
        assert!(
            model.check_after_crash(0, SectorContent::Zero).is_err(),
            "write 1 was flushed"
        );
    }
}

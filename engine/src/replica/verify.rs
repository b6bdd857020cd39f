//! Online verify (`tandem volume verify`): compares both replicas while the volume is in use.
//!
//! The node that runs it walks the volume in chunks: it reads a chunk, sends the digests of its
//! granules, and the peer answers which granules differ (see `digest` for why a block written
//! meanwhile is never reported). Mismatching granules are collected, reported as ranges, and on
//! request (`mark`) set in this node's bitmap so that `tandem volume resync` repairs them from
//! this node. A lost connection aborts the verify; the report keeps what was found.

use std::collections::BTreeMap;

use roaring::RoaringTreemap;
use serde::Serialize;

use super::digest::{bit, granule_digests};
use super::resync::reads_overlap;
use super::split_brain::granule_ranges;
use super::{Event, OpPurpose, Refusal, Replica, StorageOp};
use crate::buffer::IoBuf;
use crate::protocol::messages::{DigestPurpose, PeerMessage};
use crate::state::{ConnState, ReplState, Role};
use crate::types::{ByteRange, Errno};

/// Mismatching ranges kept in a report (the counts cover all of them).
const REPORTED_RANGES_MAX: usize = 1000;

/// A verify in progress.
#[derive(Debug)]
pub(super) struct Verify {
    mark: bool,
    cursor: u64,
    /// Reads in flight: offset → length. Client writes there wait.
    reading: BTreeMap<u64, u64>,
    /// Digests sent, not yet answered: offset → length.
    sent: BTreeMap<u64, u64>,
    in_flight_bytes: u64,
    checked_bytes: u64,
    mismatched: RoaringTreemap,
    started_unix_millis: u64,
}

/// What a verify found, for status (`verify` in `tandem status --json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VerifyReport {
    /// "running", "finished" or "aborted".
    pub state: &'static str,
    /// Why it was aborted.
    pub reason: Option<String>,
    /// Share of the volume compared.
    pub percent: f64,
    /// Bytes compared.
    pub checked_bytes: u64,
    /// Bytes found different (whole granules).
    pub mismatched_bytes: u64,
    /// Mismatching ranges, merged, in order: `[offset, length]` in bytes (the first
    /// [`REPORTED_RANGES_MAX`]).
    pub mismatched_ranges: Vec<[u64; 2]>,
    /// Whether every mismatching range is listed.
    pub ranges_complete: bool,
    /// The mismatches were marked out of sync here.
    pub marked: bool,
    /// When it started.
    pub started_unix_millis: u64,
    /// When it ended.
    pub finished_unix_millis: Option<u64>,
}

impl Replica {
    /// `tandem volume verify`.
    pub(super) fn admin_verify(&mut self, mark: bool) -> Result<(), Refusal> {
        if self.peer.conn != ConnState::Connected {
            return Err(Refusal::NotConnected(self.peer.conn));
        }
        if self.peer.repl != ReplState::Established || self.peer.resync.is_some() {
            return Err(Refusal::ResyncRunning(self.peer.repl));
        }
        if self.peer.verify.is_some() {
            return Err(Refusal::Nothing("a verify is already running"));
        }
        if self.role != Role::Primary
            && self
                .peer
                .remote
                .as_ref()
                .is_some_and(|remote| remote.role == Role::Primary)
        {
            // Only the primary can order its reads against its own writes.
            return Err(Refusal::Nothing("the peer is primary: run verify there"));
        }
        self.peer.verify = Some(Verify {
            mark,
            cursor: 0,
            reading: BTreeMap::new(),
            sent: BTreeMap::new(),
            in_flight_bytes: 0,
            checked_bytes: 0,
            mismatched: RoaringTreemap::new(),
            started_unix_millis: self.now.unix_millis,
        });
        self.peer.last_verify = None;
        self.emit(Event::Verify {
            message: "verify started".to_string(),
        });
        Ok(())
    }

    /// Issues verify reads within the window; finishes the verify.
    pub(super) fn advance_verify(&mut self) -> bool {
        let Some(volume) = self.volume.as_ref() else {
            return false;
        };
        let data_bytes = volume.layout.data_bytes;
        let chunk = self.config.resync_chunk_bytes;
        let window = if self.requests.client_writes() > 0 {
            chunk
        } else {
            self.config.resync_window_bytes
        };
        let mut progress = false;
        loop {
            let Some(verify) = &self.peer.verify else {
                return progress;
            };
            if verify.cursor >= data_bytes || verify.in_flight_bytes >= window {
                break;
            }
            let range = ByteRange::new(verify.cursor, chunk.min(data_bytes - verify.cursor));
            if self.requests.issued_overlaps(range) {
                break; // A write is in flight there: come back when it is done.
            }
            let verify = self.peer.verify.as_mut().expect("checked");
            verify.cursor = range.end();
            verify.reading.insert(range.offset, range.length);
            verify.in_flight_bytes += range.length;
            let op = StorageOp::Read {
                offset: range.offset,
                length: range.length,
            };
            self.submit(
                op,
                OpPurpose::VerifyRead {
                    offset: range.offset,
                },
            );
            progress = true;
        }
        let verify = self.peer.verify.as_ref().expect("checked");
        if verify.cursor >= data_bytes && verify.reading.is_empty() && verify.sent.is_empty() {
            self.finish_verify(None);
            return true;
        }
        progress
    }

    /// Whether a verify read in flight overlaps `range` (client writes there wait).
    pub(super) fn verify_reading_overlaps(&self, range: ByteRange) -> bool {
        self.peer
            .verify
            .as_ref()
            .is_some_and(|verify| reads_overlap(&verify.reading, range))
    }

    pub(super) fn verify_read_completion(
        &mut self,
        offset: u64,
        result: Result<Option<IoBuf>, Errno>,
    ) {
        let Some(data) = self.read_data(result, "reading for a verify") else {
            return;
        };
        let Some(verify) = &mut self.peer.verify else {
            return;
        };
        let Some(length) = verify.reading.remove(&offset) else {
            return;
        };
        verify.sent.insert(offset, length);
        let granule = self
            .volume
            .as_ref()
            .expect("attached")
            .bitmap
            .granule_bytes();
        self.send(PeerMessage::Digests {
            purpose: DigestPurpose::Verify,
            offset,
            length: u32::try_from(length).expect("bounded by the chunk size"),
            digests: granule_digests(data.as_slice(), granule),
        });
    }

    /// The peer compared a chunk.
    pub(super) fn verify_compared(
        &mut self,
        offset: u64,
        length: u32,
        differing: &[u8],
    ) -> Result<(), String> {
        let granule = self
            .volume
            .as_ref()
            .expect("attached")
            .bitmap
            .granule_bytes();
        let Some(verify) = &mut self.peer.verify else {
            return Err("a verify reply outside a verify".to_string());
        };
        if verify.sent.remove(&offset) != Some(u64::from(length)) {
            return Err(format!("a verify reply for digests never sent at {offset}"));
        }
        verify.in_flight_bytes -= u64::from(length);
        verify.checked_bytes += u64::from(length);
        let first = offset / granule;
        for index in 0..u64::from(length).div_ceil(granule) {
            if bit(differing, index) {
                verify.mismatched.insert(first + index);
            }
        }
        Ok(())
    }

    /// Ends the verify: finished (`None`) or aborted with a reason.
    fn finish_verify(&mut self, aborted: Option<&str>) {
        let Some(verify) = self.peer.verify.take() else {
            return;
        };
        let volume = self.volume.as_mut().expect("attached");
        let marked = verify.mark && aborted.is_none() && !verify.mismatched.is_empty();
        if marked {
            for granule in &verify.mismatched {
                volume.bitmap.set(granule..granule + 1);
            }
        }
        let mut report = self.verify_report(&verify);
        report.state = if aborted.is_some() {
            "aborted"
        } else {
            "finished"
        };
        report.reason = aborted.map(str::to_string);
        report.marked = marked;
        report.finished_unix_millis = Some(self.now.unix_millis);
        let mut message = format!(
            "verify {}: {} bytes compared, {} bytes in {} ranges differ",
            report.state,
            report.checked_bytes,
            report.mismatched_bytes,
            report.mismatched_ranges.len(),
        );
        if let Some(reason) = aborted {
            message.push_str(&format!(" ({reason})"));
        }
        for [offset, length] in report.mismatched_ranges.iter().take(20) {
            message.push_str(&format!("; differs: [{offset}, {})", offset + length));
        }
        if marked {
            message.push_str("; marked out of sync: run `tandem volume resync` to repair");
        }
        self.emit(Event::Verify { message });
        self.peer.last_verify = Some(report);
    }

    /// The connection is gone: a running verify is aborted.
    pub(super) fn verify_lose_peer(&mut self) {
        self.finish_verify(Some("connection lost"));
    }

    fn verify_report(&self, verify: &Verify) -> VerifyReport {
        let volume = self.volume.as_ref().expect("attached");
        let granule = volume.bitmap.granule_bytes();
        let data_bytes = volume.layout.data_bytes;
        let (ranges, mismatched_bytes, complete) =
            granule_ranges(&verify.mismatched, granule, data_bytes, REPORTED_RANGES_MAX);
        VerifyReport {
            state: "running",
            reason: None,
            percent: 100.0 * verify.checked_bytes as f64 / data_bytes.max(1) as f64,
            checked_bytes: verify.checked_bytes,
            mismatched_bytes,
            mismatched_ranges: ranges,
            ranges_complete: complete,
            marked: false,
            started_unix_millis: verify.started_unix_millis,
            finished_unix_millis: None,
        }
    }

    /// The running verify, or the last one, for status.
    pub(super) fn verify_status(&self) -> Option<VerifyReport> {
        match &self.peer.verify {
            Some(verify) => Some(self.verify_report(verify)),
            None => self.peer.last_verify.clone(),
        }
    }
}

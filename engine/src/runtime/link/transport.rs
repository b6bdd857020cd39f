//! The two halves of an established link: records over the TCP stream.
//!
//! A record is `[u32 LE sealed length][sealed frame]` (see `crate::protocol::seal` and
//! `crate::protocol::frame`). Sending compresses the payload into a reused buffer behind room
//! for the prefix and the frame header, seals it in place and writes it with one call; receiving
//! reads one record into a buffer, opens it in place and hands the buffer over as the payload
//! when it was not compressed. The only copy of an uncompressed payload on each side is the one
//! into (sender) or within (receiver, to drop the header) that buffer.

use std::fmt;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::protocol::compress::{Compression, Compressor, Decompressor};
use crate::protocol::frame::{self, FRAME_HEADER_BYTES};
use crate::protocol::seal::{Opener, RECORD_PREFIX_BYTES, Sealer, TAG_BYTES};
use crate::runtime::link::error::LinkError;

/// Bytes of the receive buffer in front of the socket; larger reads bypass it.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Traffic of one link, shared by its two halves and readable from anywhere.
#[derive(Debug, Default)]
pub struct LinkCounters {
    frames_sent: AtomicU64,
    payload_bytes_sent: AtomicU64,
    wire_bytes_sent: AtomicU64,
    frames_received: AtomicU64,
    payload_bytes_received: AtomicU64,
    wire_bytes_received: AtomicU64,
}

impl LinkCounters {
    /// The counts so far.
    pub fn snapshot(&self) -> LinkTraffic {
        LinkTraffic {
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            payload_bytes_sent: self.payload_bytes_sent.load(Ordering::Relaxed),
            wire_bytes_sent: self.wire_bytes_sent.load(Ordering::Relaxed),
            frames_received: self.frames_received.load(Ordering::Relaxed),
            payload_bytes_received: self.payload_bytes_received.load(Ordering::Relaxed),
            wire_bytes_received: self.wire_bytes_received.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of [`LinkCounters`]. Payload bytes are counted before compression (as handed to
/// `send`, as returned by `recv`); wire bytes are whole records (prefix, frame header, payload
/// as sent, tag) after the handshake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkTraffic {
    /// Frames sent.
    pub frames_sent: u64,
    /// Payload bytes sent, before compression.
    pub payload_bytes_sent: u64,
    /// Bytes of records written to the socket.
    pub wire_bytes_sent: u64,
    /// Frames received.
    pub frames_received: u64,
    /// Payload bytes received, after decompression.
    pub payload_bytes_received: u64,
    /// Bytes of records read from the socket.
    pub wire_bytes_received: u64,
}

/// Wire bytes a record adds to its (possibly compressed) payload.
pub const RECORD_OVERHEAD_BYTES: usize = RECORD_PREFIX_BYTES + FRAME_HEADER_BYTES + TAG_BYTES;

/// The sending half of a link.
///
/// After any error, or when a `send` future is dropped before it completed, the half refuses
/// every later call with [`LinkError::Broken`]; drop both halves to close the connection.
pub struct LinkSender {
    writer: OwnedWriteHalf,
    sealer: Sealer,
    compressor: Compressor,
    compression: Compression,
    buffer: Vec<u8>,
    payload_bytes_max: u32,
    counters: Arc<LinkCounters>,
    failure: Option<String>,
}

impl LinkSender {
    pub(super) fn new(
        writer: OwnedWriteHalf,
        sealer: Sealer,
        compression: Compression,
        payload_bytes_max: u32,
        counters: Arc<LinkCounters>,
    ) -> Self {
        Self {
            writer,
            sealer,
            compressor: Compressor::new(),
            compression,
            buffer: Vec::new(),
            payload_bytes_max,
            counters,
            failure: None,
        }
    }

    /// Sends one message: compresses the payload (if that shrinks it), frames, seals and writes
    /// it.
    ///
    /// A payload above [`Self::payload_bytes_max`] is refused with
    /// [`LinkError::PayloadTooLarge`] and the link stays usable. Compression runs on the calling
    /// task: a 32 MiB zstd payload takes tens of milliseconds.
    pub async fn send(&mut self, kind: u16, payload: &[u8]) -> Result<(), LinkError> {
        if let Some(failure) = &self.failure {
            return Err(LinkError::Broken(failure.clone()));
        }
        if payload.len() > self.payload_bytes_max as usize {
            return Err(LinkError::PayloadTooLarge {
                bytes: payload.len(),
                max: self.payload_bytes_max,
            });
        }
        self.buffer.clear();
        self.buffer.resize(RECORD_PREFIX_BYTES, 0);
        frame::encode(
            kind,
            payload,
            self.compression,
            &mut self.compressor,
            &mut self.buffer,
        )?;
        let sealed = self.sealer.seal(&mut self.buffer, RECORD_PREFIX_BYTES);
        let sealed = sealed.expect("frames are far below 4 GiB");
        self.buffer[..RECORD_PREFIX_BYTES].copy_from_slice(&sealed.to_le_bytes());

        // The record is sealed: if it is not written whole, the stream is out of step for good.
        self.failure = Some("a send was cancelled before it completed".to_owned());
        if let Err(error) = self.writer.write_all(&self.buffer).await {
            let error = LinkError::io("send", error);
            self.failure = Some(error.to_string());
            return Err(error);
        }
        self.failure = None;
        let counters = &self.counters;
        counters.frames_sent.fetch_add(1, Ordering::Relaxed);
        counters
            .payload_bytes_sent
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        counters
            .wire_bytes_sent
            .fetch_add(self.buffer.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Closes our direction cleanly: the peer's receiver then reports [`LinkError::Closed`].
    pub async fn close(mut self) -> Result<(), LinkError> {
        self.writer
            .shutdown()
            .await
            .map_err(|error| LinkError::io("close", error))
    }

    /// The largest payload `send` accepts: the smaller of our limit and the peer's.
    pub fn payload_bytes_max(&self) -> u32 {
        self.payload_bytes_max
    }

    /// The link's traffic counters (shared with the receiver).
    pub fn counters(&self) -> Arc<LinkCounters> {
        Arc::clone(&self.counters)
    }

    /// How many times our sending key was replaced.
    #[cfg(test)]
    pub(super) fn key_generation(&self) -> u64 {
        self.sealer.generation()
    }
}

/// The receiving half of a link.
///
/// `recv` is cancel-safe: dropping its future (in a `select!`, say) loses nothing, and the next
/// call continues with the same record. After an error the connection is shut down in both
/// directions, so the peer notices at once, and every later call fails with
/// [`LinkError::Broken`].
pub struct LinkReceiver {
    reader: BufReader<OwnedReadHalf>,
    opener: Opener,
    decompressor: Decompressor,
    payload_bytes_max: u32,
    prefix: [u8; RECORD_PREFIX_BYTES],
    prefix_filled: usize,
    body: Vec<u8>,
    spare: Vec<u8>,
    counters: Arc<LinkCounters>,
    failure: Option<String>,
}

impl LinkReceiver {
    pub(super) fn new(
        reader: OwnedReadHalf,
        opener: Opener,
        payload_bytes_max: u32,
        counters: Arc<LinkCounters>,
    ) -> Self {
        Self {
            reader: BufReader::with_capacity(READ_BUFFER_BYTES, reader),
            opener,
            decompressor: Decompressor::new(),
            payload_bytes_max,
            prefix: [0; RECORD_PREFIX_BYTES],
            prefix_filled: 0,
            body: Vec::new(),
            spare: Vec::new(),
            counters,
            failure: None,
        }
    }

    /// Receives the next message: its kind and payload.
    ///
    /// An uncompressed payload is returned in the buffer the record was read into; hand it
    /// back with [`Self::recycle`] once done with it to spare the next record a fresh
    /// allocation (which costs page faults: about half the throughput for 1 MiB frames).
    pub async fn recv(&mut self) -> Result<(u16, Vec<u8>), LinkError> {
        if let Some(failure) = &self.failure {
            return Err(LinkError::Broken(failure.clone()));
        }
        match self.recv_record().await {
            Ok(message) => Ok(message),
            Err(error) => {
                self.failure = Some(error.to_string());
                // Both directions: the peer sees the link end now, and our sender's next write
                // fails. The descriptor stays open until both halves are dropped.
                let fd = self.reader.get_ref().as_ref().as_raw_fd();
                let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
                Err(error)
            }
        }
    }

    /// Gives a payload buffer back for the next records to be read into. The receiver keeps
    /// the largest one it is given.
    pub fn recycle(&mut self, mut buffer: Vec<u8>) {
        if buffer.capacity() > self.spare.capacity() {
            buffer.clear();
            self.spare = buffer;
        }
    }

    /// The largest payload we accept.
    pub fn payload_bytes_max(&self) -> u32 {
        self.payload_bytes_max
    }

    /// The link's traffic counters (shared with the sender).
    pub fn counters(&self) -> Arc<LinkCounters> {
        Arc::clone(&self.counters)
    }

    /// How many times the peer's sending key was replaced.
    #[cfg(test)]
    pub(super) fn key_generation(&self) -> u64 {
        self.opener.generation()
    }

    async fn recv_record(&mut self) -> Result<(u16, Vec<u8>), LinkError> {
        // Every await below reads into `self`, so a cancelled call loses no bytes.
        while self.prefix_filled < RECORD_PREFIX_BYTES {
            let read = self
                .reader
                .read(&mut self.prefix[self.prefix_filled..])
                .await
                .map_err(|error| LinkError::io("receive", error))?;
            if read == 0 {
                return Err(if self.prefix_filled == 0 {
                    LinkError::Closed
                } else {
                    LinkError::Truncated
                });
            }
            self.prefix_filled += read;
        }
        let sealed_bytes = u32::from_le_bytes(self.prefix);
        let min = (FRAME_HEADER_BYTES + TAG_BYTES) as u32;
        let max = min + self.payload_bytes_max;
        if !(min..=max).contains(&sealed_bytes) {
            return Err(LinkError::RecordLength {
                bytes: sealed_bytes,
                min,
                max,
            });
        }
        let sealed_bytes = sealed_bytes as usize;
        if self.body.is_empty()
            && self.body.capacity() < sealed_bytes
            && self.spare.capacity() >= sealed_bytes
        {
            std::mem::swap(&mut self.body, &mut self.spare);
        }
        if self.body.capacity() < sealed_bytes {
            self.body.reserve_exact(sealed_bytes - self.body.len());
        }
        while self.body.len() < sealed_bytes {
            let wanted = (sealed_bytes - self.body.len()) as u64;
            let read = (&mut self.reader)
                .take(wanted)
                .read_buf(&mut self.body)
                .await
                .map_err(|error| LinkError::io("receive", error))?;
            if read == 0 {
                return Err(LinkError::Truncated);
            }
        }
        self.prefix_filled = 0;

        // Lengths were checked above, so every failure here is a failed tag.
        self.opener
            .open(&mut self.body)
            .map_err(|_| LinkError::Authentication)?;
        let frame = frame::decode_vec(
            &mut self.body,
            self.payload_bytes_max,
            &mut self.decompressor,
        );
        // A compressed payload left the record in `body`; empty it for the next record (an
        // uncompressed one took the buffer along).
        self.body.clear();
        let frame = frame?;
        let counters = &self.counters;
        counters.frames_received.fetch_add(1, Ordering::Relaxed);
        counters
            .payload_bytes_received
            .fetch_add(frame.payload.len() as u64, Ordering::Relaxed);
        counters.wire_bytes_received.fetch_add(
            (RECORD_PREFIX_BYTES + sealed_bytes) as u64,
            Ordering::Relaxed,
        );
        Ok((frame.kind, frame.payload))
    }
}

// By hand, so that buffers holding payloads are never printed.
impl fmt::Debug for LinkSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkSender")
            .field("sealer", &self.sealer)
            .field("compression", &self.compression)
            .field("payload_bytes_max", &self.payload_bytes_max)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for LinkReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkReceiver")
            .field("opener", &self.opener)
            .field("payload_bytes_max", &self.payload_bytes_max)
            .field("record_bytes_buffered", &self.body.len())
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

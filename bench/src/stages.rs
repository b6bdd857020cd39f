//! Per-core throughput of the stages a replicated write goes through in user space, on 1 MiB
//! blocks, one thread: memory copy, CRC-32 (the frame checksum), AES-256-GCM seal and open
//! (the link's [`Sealer`] and [`Opener`]), lz4 and zstd, and the link's whole send and receive
//! paths without the socket (message encoding, framing, compression, sealing; and opening,
//! unframing, decompression, message decoding), as `LinkSender::send` and
//! `LinkReceiver::recv` plus the session's decode do them.
//!
//! A rate of R MB/s costs 1073.7 / R core-seconds per GiB replicated.

use std::time::{Duration, Instant};

use engine::protocol::compress::{Compression, Compressor, Decompressor};
use engine::protocol::frame::{self, FRAME_PAYLOAD_BYTES_MAX};
use engine::protocol::messages::PeerMessage;
use engine::protocol::seal::{KEY_BYTES, Opener, RECORD_PREFIX_BYTES, RekeyPolicy, Sealer};
use engine::runtime::os_random_u64;
use serde::Serialize;

use crate::data::{DataKind, DataSet};
use crate::linkonly;

/// Bytes in a GiB, for costs per GiB.
const GIB: f64 = (1u64 << 30) as f64;

/// The throughput of one stage on one core.
#[derive(Clone, Debug, Serialize)]
pub struct StageRate {
    /// What was measured.
    pub stage: String,
    /// The data it was measured on.
    pub data: DataKind,
    /// Input bytes per second, in MB (10^6).
    pub megabytes_per_second: f64,
    /// Output bytes per input byte, for the stages that transform sizes.
    pub output_ratio: Option<f64>,
}

impl StageRate {
    /// Seconds of one core per GiB of input.
    pub fn core_seconds_per_gib(&self) -> f64 {
        GIB / (self.megabytes_per_second * 1e6)
    }
}

/// Measures every stage, each for at least `min_time`: the data-independent ones on the first
/// set, the compression-dependent ones on every set.
pub fn measure(sets: &[&DataSet], min_time: Duration) -> anyhow::Result<Vec<StageRate>> {
    let mut rates = Vec::new();
    if let Some(first) = sets.first() {
        rates.push(copy(first, min_time));
        rates.push(crc32(first, min_time));
        rates.push(seal(first, min_time)?);
        rates.push(open(first, min_time)?);
    }
    for set in sets {
        for codec in [Compression::Lz4, Compression::Zstd] {
            rates.push(compress(set, codec, min_time));
            if let Some(rate) = decompress(set, codec, min_time)? {
                rates.push(rate);
            }
        }
        for codec in Compression::ALL {
            rates.push(send_path(set, codec, min_time)?);
            rates.push(receive_path(set, codec, min_time)?);
        }
    }
    Ok(rates)
}

/// Calls `step` with block indexes until `min_time` has passed; returns (input bytes, output
/// bytes, seconds) of the timed calls. `step` returns the output bytes of one call.
fn time_blocks(
    set: &DataSet,
    min_time: Duration,
    mut step: impl FnMut(usize) -> anyhow::Result<usize>,
) -> anyhow::Result<(u64, u64, f64)> {
    let started = Instant::now();
    let (mut input, mut output, mut index) = (0u64, 0u64, 0usize);
    while started.elapsed() < min_time {
        output += step(index)? as u64;
        input += set.block_bytes() as u64;
        index += 1;
    }
    Ok((input, output, started.elapsed().as_secs_f64()))
}

fn rate(stage: impl Into<String>, set: &DataSet, measured: (u64, u64, f64)) -> StageRate {
    let (input, output, seconds) = measured;
    StageRate {
        stage: stage.into(),
        data: set.kind(),
        megabytes_per_second: input as f64 / seconds / 1e6,
        output_ratio: (output > 0).then(|| output as f64 / input as f64),
    }
}

fn block(set: &DataSet, index: usize) -> &[u8] {
    set.block(index as u64).as_slice()
}

fn copy(set: &DataSet, min_time: Duration) -> StageRate {
    let mut out = vec![0u8; set.block_bytes()];
    let measured = time_blocks(set, min_time, |index| {
        out.copy_from_slice(block(set, index));
        std::hint::black_box(&out);
        Ok(0)
    });
    rate("memory copy", set, measured.unwrap_or_default())
}

fn crc32(set: &DataSet, min_time: Duration) -> StageRate {
    let measured = time_blocks(set, min_time, |index| {
        std::hint::black_box(crc32fast::hash(block(set, index)));
        Ok(0)
    });
    rate("crc-32 (frame checksum)", set, measured.unwrap_or_default())
}

fn random_key() -> [u8; KEY_BYTES] {
    let mut key = [0u8; KEY_BYTES];
    for chunk in key.chunks_mut(8) {
        chunk.copy_from_slice(&os_random_u64().to_le_bytes());
    }
    key
}

/// Seals a copy of each block in place, as the sender does with its record buffer.
fn seal(set: &DataSet, min_time: Duration) -> anyhow::Result<StageRate> {
    let mut sealer = Sealer::new(random_key(), RekeyPolicy::DEFAULT);
    let mut buffer = Vec::with_capacity(set.block_bytes() + 64);
    let mut spent = Duration::ZERO;
    let (mut input, mut index) = (0u64, 0usize);
    while spent < min_time {
        buffer.clear();
        buffer.extend_from_slice(block(set, index));
        let started = Instant::now();
        sealer
            .seal(&mut buffer, 0)
            .map_err(|e| anyhow::anyhow!("seal: {e}"))?;
        spent += started.elapsed();
        input += set.block_bytes() as u64;
        index += 1;
    }
    Ok(rate(
        "aes-256-gcm seal",
        set,
        (input, 0, spent.as_secs_f64()),
    ))
}

/// Opens records sealed beforehand (not timed), in order, as the receiver does.
fn open(set: &DataSet, min_time: Duration) -> anyhow::Result<StageRate> {
    let mut spent = Duration::ZERO;
    let mut input = 0u64;
    while spent < min_time {
        let key = random_key();
        let mut sealer = Sealer::new(key, RekeyPolicy::DEFAULT);
        let mut records = Vec::with_capacity(set.blocks().len());
        for data in set.blocks() {
            let mut record = data.as_slice().to_vec();
            sealer
                .seal(&mut record, 0)
                .map_err(|e| anyhow::anyhow!("seal: {e}"))?;
            records.push(record);
        }
        let mut opener = Opener::new(key, RekeyPolicy::DEFAULT);
        let started = Instant::now();
        for record in &mut records {
            opener
                .open(record)
                .map_err(|e| anyhow::anyhow!("open: {e}"))?;
            input += record.len() as u64;
        }
        spent += started.elapsed();
    }
    Ok(rate(
        "aes-256-gcm open",
        set,
        (input, 0, spent.as_secs_f64()),
    ))
}

fn codec_name(codec: Compression) -> &'static str {
    match codec {
        Compression::None => "none",
        Compression::Lz4 => "lz4",
        Compression::Zstd => "zstd-1",
    }
}

/// Compresses each block as the link does (kept only if smaller, else copied as-is).
fn compress(set: &DataSet, codec: Compression, min_time: Duration) -> StageRate {
    let mut compressor = Compressor::new();
    let mut out = Vec::with_capacity(set.block_bytes() + 64);
    let measured = time_blocks(set, min_time, |index| {
        out.clear();
        compressor.compress_into(codec, block(set, index), &mut out);
        Ok(out.len())
    });
    let name = format!("{} compress", codec_name(codec));
    rate(name, set, measured.unwrap_or_default())
}

/// Decompresses each block's compressed form; `None` when the data does not compress (the
/// link then sends it as-is and never decompresses).
fn decompress(
    set: &DataSet,
    codec: Compression,
    min_time: Duration,
) -> anyhow::Result<Option<StageRate>> {
    let mut compressor = Compressor::new();
    let mut compressed = Vec::with_capacity(set.blocks().len());
    for data in set.blocks() {
        let mut out = Vec::new();
        if compressor.compress_into(codec, data.as_slice(), &mut out) != codec {
            return Ok(None);
        }
        compressed.push(out);
    }
    let mut decompressor = Decompressor::new();
    let limit = set.block_bytes();
    let measured = time_blocks(set, min_time, |index| {
        let bytes = &compressed[index % compressed.len()];
        let out = decompressor.decompress(codec, bytes, limit)?;
        Ok(std::hint::black_box(out).len())
    })?;
    let name = format!("{} decompress", codec_name(codec));
    Ok(Some(rate(name, set, measured)))
}

/// The replicated-write message the primary sends for the `index`-th block.
fn write_message(set: &DataSet, index: usize) -> PeerMessage {
    let offset = index as u64 * set.block_bytes() as u64;
    linkonly::write_message(index as u64 + 1, offset, set.block(index as u64).clone())
}

/// What `LinkSender::send` does to a message, after the session encoded it: returns the
/// record's body (frame, sealed) without the length prefix.
struct SendPath {
    sealer: Sealer,
    compressor: Compressor,
    codec: Compression,
    buffer: Vec<u8>,
}

impl SendPath {
    fn new(key: [u8; KEY_BYTES], codec: Compression) -> Self {
        Self {
            sealer: Sealer::new(key, RekeyPolicy::DEFAULT),
            compressor: Compressor::new(),
            codec,
            buffer: Vec::new(),
        }
    }

    /// Encodes, frames, compresses and seals `message` into the reused buffer; returns the
    /// wire bytes of the record.
    fn send(&mut self, message: &PeerMessage) -> anyhow::Result<usize> {
        let payload = message.encode();
        self.buffer.clear();
        self.buffer.resize(RECORD_PREFIX_BYTES, 0);
        frame::encode(
            message.kind(),
            &payload,
            self.codec,
            &mut self.compressor,
            &mut self.buffer,
        )?;
        let sealed = self
            .sealer
            .seal(&mut self.buffer, RECORD_PREFIX_BYTES)
            .map_err(|e| anyhow::anyhow!("seal: {e}"))?;
        self.buffer[..RECORD_PREFIX_BYTES].copy_from_slice(&sealed.to_le_bytes());
        Ok(self.buffer.len())
    }
}

fn send_path(set: &DataSet, codec: Compression, min_time: Duration) -> anyhow::Result<StageRate> {
    let mut path = SendPath::new(random_key(), codec);
    let measured = time_blocks(set, min_time, |index| path.send(&write_message(set, index)))?;
    let name = format!("link send path ({})", codec_name(codec));
    Ok(rate(name, set, measured))
}

/// Records prepared by the send path (not timed), then opened, unframed, decompressed and
/// decoded into messages (timed), as the receiver and the session do.
fn receive_path(
    set: &DataSet,
    codec: Compression,
    min_time: Duration,
) -> anyhow::Result<StageRate> {
    let mut spent = Duration::ZERO;
    let (mut input, mut index) = (0u64, 0usize);
    let mut decompressor = Decompressor::new();
    while spent < min_time {
        let key = random_key();
        let mut path = SendPath::new(key, codec);
        let mut records = Vec::with_capacity(set.blocks().len());
        for _ in set.blocks() {
            path.send(&write_message(set, index))?;
            records.push(path.buffer[RECORD_PREFIX_BYTES..].to_vec());
            index += 1;
        }
        // The receiver recycles record buffers; freeing them is not part of its path.
        let mut recycled = Vec::with_capacity(records.len());
        let mut opener = Opener::new(key, RekeyPolicy::DEFAULT);
        let started = Instant::now();
        for mut record in records {
            opener
                .open(&mut record)
                .map_err(|e| anyhow::anyhow!("open: {e}"))?;
            let frame = frame::decode_vec(&mut record, FRAME_PAYLOAD_BYTES_MAX, &mut decompressor)?;
            let message = PeerMessage::decode(frame.kind, &frame.payload)?;
            std::hint::black_box(message);
            recycled.push((record, frame.payload));
            input += set.block_bytes() as u64;
        }
        spent += started.elapsed();
        drop(recycled);
    }
    let name = format!("link receive path ({})", codec_name(codec));
    Ok(rate(name, set, (input, 0, spent.as_secs_f64())))
}

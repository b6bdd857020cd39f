//! Target `frame`: the replication link's frame decoder (`engine::protocol::frame`).
//!
//! Input: one control byte, then either a frame to decode or a payload to encode. With control
//! bit 7 set, a frame's length field (and for an uncompressed frame its checksum) is made right
//! first, so that mutations reach the checks behind them.
//!
//! - Decoding (control bit 2 clear): `decode` and `decode_vec` never panic and agree; a decoded
//!   payload respects the limit; `decode_vec` leaves the buffer as it was on an error; an
//!   uncompressed frame re-encodes to exactly the input; a compressed one re-encodes to a frame
//!   that decodes to the same kind and payload.
//! - Encoding (bit 2 set): what `encode` writes decodes back to the payload, under any limit at
//!   least the payload's size, and is refused under a smaller one.

use std::cell::RefCell;

use engine::protocol::compress::{Compression, Compressor, Decompressor};
use engine::protocol::frame::{self, FRAME_HEADER_BYTES, FRAME_PAYLOAD_BYTES_MAX, Frame};

use crate::input::Input;

thread_local! {
    // Kept between inputs, as a link keeps them between frames.
    static CODEC: RefCell<(Compressor, Decompressor)> =
        RefCell::new((Compressor::new(), Decompressor::new()));
}

/// The target body.
pub fn frame(data: &[u8]) {
    let mut input = Input::new(data);
    let control = input.u8();
    let limit = match control & 3 {
        0 => FRAME_PAYLOAD_BYTES_MAX,
        1 => 4096,
        2 => 64,
        _ => u32::from(input.u8()),
    };
    CODEC.with(|codec| {
        let (compressor, decompressor) = &mut *codec.borrow_mut();
        if control & 4 == 0 {
            let mut bytes = input.rest().to_vec();
            if control & 0x80 != 0 {
                fix_up(&mut bytes);
            }
            decode_side(&bytes, limit, compressor, decompressor);
        } else {
            let codec = Compression::ALL[usize::from(control >> 3) % 3];
            let kind = input.u16();
            encode_side(kind, codec, input.rest(), limit, compressor, decompressor);
        }
    });
}

/// Makes a mutated frame's length field right, and for an uncompressed one its checksum too,
/// so that mutations reach the checks behind them.
fn fix_up(bytes: &mut [u8]) {
    let Some((header, payload)) = bytes.split_first_chunk_mut::<FRAME_HEADER_BYTES>() else {
        return;
    };
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    header[8..12].copy_from_slice(&length.to_le_bytes());
    if header[5] == Compression::None.id() {
        let checksum = engine::codec::checksum(&[&header[..12], &payload[..]].concat());
        header[12..16].copy_from_slice(&checksum.to_le_bytes());
    }
}

fn decode_side(
    bytes: &[u8],
    limit: u32,
    compressor: &mut Compressor,
    decompressor: &mut Decompressor,
) {
    let decoded = frame::decode(bytes, limit, decompressor);
    let mut buffer = bytes.to_vec();
    let decoded_in_place = frame::decode_vec(&mut buffer, limit, decompressor);
    assert_eq!(decoded, decoded_in_place, "decode and decode_vec disagree");
    let frame = match decoded {
        Ok(frame) => frame,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            assert_eq!(
                buffer, bytes,
                "decode_vec changed the buffer of a bad frame"
            );
            return;
        }
    };
    assert!(frame.payload.len() <= limit.min(FRAME_PAYLOAD_BYTES_MAX) as usize);
    let header = frame::decode_header(bytes, limit).expect("the header of a decoded frame");
    assert_eq!(
        (header.kind, header.compression),
        (frame.kind, frame.compression)
    );

    let mut encoded = Vec::new();
    let used = frame::encode(
        frame.kind,
        &frame.payload,
        frame.compression,
        compressor,
        &mut encoded,
    )
    .expect("a decoded payload encodes");
    if frame.compression == Compression::None {
        assert_eq!(
            encoded, bytes,
            "an uncompressed frame re-encodes to other bytes"
        );
    }
    let again = frame::decode(&encoded, FRAME_PAYLOAD_BYTES_MAX, decompressor)
        .expect("a re-encoded frame decodes");
    assert_eq!((again.kind, again.compression), (frame.kind, used));
    assert_eq!(again.payload, frame.payload);
}

fn encode_side(
    kind: u16,
    codec: Compression,
    payload: &[u8],
    limit: u32,
    compressor: &mut Compressor,
    decompressor: &mut Decompressor,
) {
    let mut encoded = vec![0xA5; payload.len() % 3];
    let prefix = encoded.len();
    let used = frame::encode(kind, payload, codec, compressor, &mut encoded)
        .expect("payloads under the maximum encode");
    assert!(used == codec || used == Compression::None);
    let expected = Frame {
        kind,
        compression: used,
        payload: payload.to_vec(),
    };
    let bytes = &encoded[prefix..];
    let decoded = frame::decode(bytes, FRAME_PAYLOAD_BYTES_MAX, decompressor);
    assert_eq!(decoded.as_ref(), Ok(&expected));
    let mut buffer = bytes.to_vec();
    let decoded_in_place = frame::decode_vec(&mut buffer, FRAME_PAYLOAD_BYTES_MAX, decompressor);
    assert_eq!(decoded_in_place, Ok(expected));
    let fits = payload.len() <= limit as usize;
    let limited = frame::decode(bytes, limit, decompressor);
    assert_eq!(
        limited.is_ok(),
        fits,
        "a {} byte payload under a limit of {limit}: {limited:?}",
        payload.len()
    );
}

/// Seeds: frames of every codec, and payloads to encode.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut compressor = Compressor::new();
    let repetitive: Vec<u8> = (0..600u32).map(|i| (i % 7) as u8).collect();
    let mut seeds = Vec::new();
    for (index, codec) in Compression::ALL.into_iter().enumerate() {
        for payload in [&b""[..], b"hello, frame", &repetitive] {
            let mut seed = vec![0];
            frame::encode(0x10, payload, codec, &mut compressor, &mut seed).expect("encodes");
            seeds.push(seed);
            let mut seed = vec![4 | (index as u8) << 3, 0x10, 0x00];
            seed.extend_from_slice(payload);
            seeds.push(seed);
        }
    }
    seeds
}

use engine::prng::Prng;

use super::*;

const MIB: u32 = 1 << 20;

fn geometry() -> ExportGeometry {
    ExportGeometry {
        size_bytes: 64 << 20,
        payload_bytes_max: 32 * MIB,
    }
}

fn header(command: u16, flags: u16, offset: u64, length: u32) -> RequestHeader {
    RequestHeader {
        flags,
        command,
        cookie: 0x0102_0304_0506_0708,
        offset,
        length,
    }
}

fn option_header_bytes(magic: u64, option: u32, length: u32) -> [u8; OPTION_HEADER_BYTES] {
    let mut bytes = [0u8; OPTION_HEADER_BYTES];
    bytes[0..8].copy_from_slice(&magic.to_be_bytes());
    bytes[8..12].copy_from_slice(&option.to_be_bytes());
    bytes[12..16].copy_from_slice(&length.to_be_bytes());
    bytes
}

#[test]
fn greeting_is_nbdmagic_ihaveopt_and_both_handshake_flags() {
    let greeting = greeting();
    assert_eq!(&greeting[0..8], b"NBDMAGIC");
    assert_eq!(&greeting[8..16], b"IHAVEOPT");
    assert_eq!(&greeting[16..18], &[0, 0b11]);
}

#[test]
fn client_flags_accept_the_advertised_flags_only() {
    let parse = |flags: u32| ClientFlags::parse(flags.to_be_bytes());
    assert_eq!(
        parse(0),
        Ok(ClientFlags {
            fixed_newstyle: false,
            no_zeroes: false
        })
    );
    assert_eq!(
        parse(3),
        Ok(ClientFlags {
            fixed_newstyle: true,
            no_zeroes: true
        })
    );
    assert_eq!(parse(4), Err(ProtocolViolation::UnknownClientFlags(4)));
    assert_eq!(
        parse(0x8000_0001),
        Err(ProtocolViolation::UnknownClientFlags(0x8000_0001))
    );
}

#[test]
fn option_headers_need_the_magic_and_bounded_lengths() {
    let parsed = OptionHeader::parse(&option_header_bytes(OPTION_MAGIC, OPT_GO, 17));
    assert_eq!(
        parsed,
        Ok(OptionHeader {
            option: OPT_GO,
            length: 17
        })
    );
    assert_eq!(
        OptionHeader::parse(&option_header_bytes(NBD_MAGIC, OPT_GO, 0)),
        Err(ProtocolViolation::BadOptionMagic(NBD_MAGIC))
    );
    let plan = |option, length| OptionHeader { option, length }.data_plan();
    assert_eq!(
        plan(OPT_GO, OPTION_DATA_BYTES_MAX),
        Ok(OptionDataPlan::Read)
    );
    assert_eq!(
        plan(OPT_GO, OPTION_DATA_BYTES_MAX + 1),
        Ok(OptionDataPlan::SkipAndRefuse)
    );
    assert_eq!(
        plan(OPT_STRUCTURED_REPLY, OPTION_DATA_SKIP_BYTES_MAX),
        Ok(OptionDataPlan::SkipAndRefuse)
    );
    assert!(plan(OPT_GO, OPTION_DATA_SKIP_BYTES_MAX + 1).is_err());
    assert!(plan(OPT_GO, u32::MAX).is_err());
    // NBD_OPT_EXPORT_NAME has no error reply, so an oversized one cannot be refused politely.
    assert!(plan(OPT_EXPORT_NAME, OPTION_DATA_BYTES_MAX + 1).is_err());
    assert_eq!(
        plan(OPT_EXPORT_NAME, OPTION_DATA_BYTES_MAX),
        Ok(OptionDataPlan::Read)
    );
}

#[test]
fn export_requests_parse_and_reject_inconsistent_lengths() {
    let mut data = Vec::new();
    data.extend_from_slice(&2u32.to_be_bytes());
    data.extend_from_slice(b"r0");
    data.extend_from_slice(&2u16.to_be_bytes());
    data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    data.extend_from_slice(&INFO_NAME.to_be_bytes());
    let request = ExportRequest::parse(&data).unwrap();
    assert_eq!(request.name, b"r0");
    assert_eq!(request.info_requests, vec![INFO_BLOCK_SIZE, INFO_NAME]);
    assert_eq!(request.encode(), data);

    let empty = ExportRequest::parse(&[0, 0, 0, 0, 0, 0]).unwrap();
    assert!(empty.name.is_empty() && empty.info_requests.is_empty());

    for cut in 0..data.len() {
        assert_eq!(
            ExportRequest::parse(&data[..cut]),
            Err(OptionDataError::Truncated)
        );
    }
    let mut trailing = data.clone();
    trailing.push(0);
    assert_eq!(
        ExportRequest::parse(&trailing),
        Err(OptionDataError::TrailingBytes(1))
    );
    let mut huge_name = vec![0xff, 0xff, 0xff, 0xff];
    huge_name.extend_from_slice(&[0; 6]);
    assert_eq!(
        ExportRequest::parse(&huge_name),
        Err(OptionDataError::NameTooLong(0xffff_ffff))
    );
}

#[test]
fn option_replies_have_the_documented_layout() {
    let reply = option_reply(OPT_LIST, REP_SERVER, &server_entry("r0"));
    let mut expected = Vec::new();
    expected.extend_from_slice(&[0, 0, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9][1..]);
    expected.extend_from_slice(&[0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 6, 0, 0, 0, 2]);
    expected.extend_from_slice(b"r0");
    assert_eq!(reply, expected);

    let ack = option_reply(OPT_ABORT, REP_ACK, &[]);
    assert_eq!(ack.len(), 20);
    assert_eq!(&ack[8..20], &[0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0]);

    let error = option_error_reply(OPT_GO, REP_ERR_UNKNOWN, "no export named \"x\"");
    assert_eq!(&error[12..16], &[0x80, 0, 0, 6]);
    assert_eq!(&error[16..20], &19u32.to_be_bytes());
    assert_eq!(&error[20..], b"no export named \"x\"");
}

#[test]
fn long_messages_are_cut_at_a_character_boundary() {
    let message = "é".repeat(3000); // 6000 bytes, 2 per character
    let reply = option_error_reply(OPT_GO, REP_ERR_UNKNOWN, &message);
    let text = std::str::from_utf8(&reply[20..]).unwrap();
    assert_eq!(text.len(), STRING_BYTES_MAX);
    assert_eq!(&reply[16..20], &4096u32.to_be_bytes());
    let odd = format!("x{message}");
    assert_eq!(truncate_string(&odd).len(), STRING_BYTES_MAX - 1);
    assert_eq!(truncate_string("short"), "short");
}

#[test]
fn information_items_have_the_documented_layout() {
    let export = info_export(0x0102_0304_0506_0708, TRANSMISSION_FLAGS);
    assert_eq!(
        export,
        [0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0x01, 0b0110_1101],
        "type 0, size, flags HAS_FLAGS|FLUSH|FUA|TRIM|WRITE_ZEROES|MULTI_CONN"
    );
    let sizes = BlockSizes::for_payload_max(32 * MIB).encode();
    assert_eq!(
        sizes,
        [0, 3, 0, 0, 2, 0, 0, 0, 0x10, 0, 0x02, 0, 0, 0],
        "type 3, 512, 4096, 32 MiB"
    );
    assert_eq!(BlockSizes::for_payload_max(100).payload_max, 4096);
    assert_eq!(info_name("r0"), vec![0, 1, b'r', b'0']);
}

#[test]
fn export_name_reply_pads_unless_no_zeroes() {
    let padded = export_name_reply(1 << 30, TRANSMISSION_FLAGS, false);
    assert_eq!(padded.len(), 134);
    assert_eq!(&padded[0..8], &(1u64 << 30).to_be_bytes());
    assert_eq!(&padded[8..10], &TRANSMISSION_FLAGS.to_be_bytes());
    assert!(padded[10..].iter().all(|&b| b == 0));
    assert_eq!(
        export_name_reply(1 << 30, TRANSMISSION_FLAGS, true).len(),
        10
    );
}

#[test]
fn request_headers_round_trip_and_need_the_magic() {
    let original = header(CMD_WRITE, CMD_FLAG_FUA, 4096, 512);
    let bytes = original.encode();
    assert_eq!(&bytes[0..4], &[0x25, 0x60, 0x95, 0x13]);
    assert_eq!(&bytes[4..8], &[0, 1, 0, 1]);
    assert_eq!(RequestHeader::parse(&bytes), Ok(original));
    let mut bad = bytes;
    bad[0] = 0;
    assert_eq!(
        RequestHeader::parse(&bad),
        Err(ProtocolViolation::BadRequestMagic(0x0060_9513))
    );
}

#[test]
fn simple_reply_header_layout() {
    let ok = simple_reply_header(None, 0xaabb);
    assert_eq!(
        ok,
        [
            0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xaa, 0xbb
        ]
    );
    let failed = simple_reply_header(Some(ErrorCode::NoSpace), 1);
    assert_eq!(&failed[4..8], &28u32.to_be_bytes());
}

#[test]
fn valid_requests_become_commands() {
    let g = geometry();
    let execute = |h: RequestHeader| decide(&h, &g);
    assert_eq!(
        execute(header(CMD_READ, 0, 0, MIB)),
        Decision::Execute(Command::Read {
            offset: 0,
            length: MIB
        })
    );
    assert_eq!(
        execute(header(CMD_WRITE, CMD_FLAG_FUA, 63 << 20, MIB)),
        Decision::Execute(Command::Write {
            offset: 63 << 20,
            length: MIB,
            fua: true
        })
    );
    assert_eq!(
        execute(header(CMD_FLUSH, 0, 0, 0)),
        Decision::Execute(Command::Flush)
    );
    assert_eq!(
        execute(header(CMD_FLUSH, CMD_FLAG_FUA, 7, 9)),
        Decision::Execute(Command::Flush),
        "a flush's offset and length are reserved, and FUA is valid on every command"
    );
    assert_eq!(
        execute(header(CMD_TRIM, 0, 512, 64 << 20 >> 1)),
        Decision::Execute(Command::Trim {
            offset: 512,
            length: 32 * MIB,
            fua: false
        })
    );
    // Payload-free commands may exceed the payload maximum.
    assert_eq!(
        execute(header(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 0, 64 * MIB)),
        Decision::Execute(Command::WriteZeroes {
            offset: 0,
            length: 64 * MIB,
            fua: false
        })
    );
    assert_eq!(
        execute(header(CMD_WRITE_ZEROES, CMD_FLAG_FUA, 0, 512)),
        Decision::Execute(Command::WriteZeroes {
            offset: 0,
            length: 512,
            fua: true
        })
    );
    assert_eq!(
        execute(header(CMD_DISC, 0xffff, 1, 1)),
        Decision::Disconnect
    );
}

#[test]
fn bad_requests_are_refused_with_the_specified_errors() {
    let g = geometry();
    let refused = |h: RequestHeader, error, discard_bytes| {
        assert_eq!(
            decide(&h, &g),
            Decision::Refuse {
                error,
                discard_bytes
            },
            "{h:?}"
        );
    };
    let end = g.size_bytes;
    // Past the end: ENOSPC for writes, EINVAL for reads and trims.
    refused(header(CMD_WRITE, 0, end, 512), ErrorCode::NoSpace, 512);
    refused(
        header(CMD_WRITE_ZEROES, 0, end - 512, 1024),
        ErrorCode::NoSpace,
        0,
    );
    refused(header(CMD_READ, 0, end, 512), ErrorCode::Invalid, 0);
    refused(
        header(CMD_TRIM, 0, u64::MAX - 511, 1024),
        ErrorCode::Invalid,
        0,
    );
    refused(
        header(CMD_WRITE, 0, u64::MAX - 511, 1024),
        ErrorCode::NoSpace,
        1024,
    );
    // Misaligned.
    refused(header(CMD_READ, 0, 1, 512), ErrorCode::Invalid, 0);
    refused(header(CMD_WRITE, 0, 0, 100), ErrorCode::Invalid, 100);
    // Payload too large.
    refused(
        header(CMD_READ, 0, 0, 32 * MIB + 512),
        ErrorCode::Invalid,
        0,
    );
    // Unknown or unadvertised commands and flags.
    refused(header(CMD_CACHE, 0, 0, 512), ErrorCode::Invalid, 0);
    refused(header(CMD_BLOCK_STATUS, 0, 0, 512), ErrorCode::Invalid, 0);
    refused(header(99, 0, 0, 512), ErrorCode::Invalid, 0);
    refused(
        header(CMD_WRITE, CMD_FLAG_NO_HOLE, 0, 512),
        ErrorCode::Invalid,
        512,
    );
    refused(header(CMD_READ, CMD_FLAG_DF, 0, 512), ErrorCode::Invalid, 0);
    refused(
        header(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 0, 512),
        ErrorCode::Invalid,
        0,
    );
    refused(header(CMD_TRIM, 1 << 15, 0, 512), ErrorCode::Invalid, 0);
}

#[test]
fn zero_length_requests_are_acknowledged_without_the_backend() {
    let g = geometry();
    for command in [CMD_READ, CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES] {
        assert_eq!(
            decide(&header(command, 0, 4096, 0), &g),
            Decision::Acknowledge { discard_bytes: 0 }
        );
    }
}

#[test]
fn write_payloads_too_large_to_discard_close_the_connection() {
    let g = geometry();
    assert_eq!(
        decide(&header(CMD_WRITE, 0, 0, 32 * MIB + 512), &g),
        Decision::Close(ProtocolViolation::WritePayloadTooLarge {
            length: 32 * MIB + 512
        })
    );
    assert_eq!(
        decide(&header(CMD_WRITE, 0, 0, u32::MAX), &g),
        Decision::Close(ProtocolViolation::WritePayloadTooLarge { length: u32::MAX })
    );
    let small = ExportGeometry {
        size_bytes: 1 << 30,
        payload_bytes_max: MIB,
    };
    assert_eq!(small.payload_discard_bytes_max(), 32 * MIB);
    assert_eq!(
        decide(&header(CMD_WRITE, 0, 0, 32 * MIB), &small),
        Decision::Refuse {
            error: ErrorCode::Invalid,
            discard_bytes: 32 * MIB
        },
        "above the payload maximum but within what the spec calls no attack: discarded"
    );
    assert!(matches!(
        decide(&header(CMD_WRITE, 0, 0, 32 * MIB + 512), &small),
        Decision::Close(_)
    ));
}

#[test]
fn engine_errnos_map_to_nbd_errors() {
    let cases = [
        (Errno::EPERM, 1),
        (Errno::EIO, 5),
        (Errno(12), 12),
        (Errno::EINVAL, 22),
        (Errno::ENOSPC, 28),
        (Errno(75), 75),
        (Errno::EOPNOTSUPP, 95),
        (Errno(108), 108),
        (Errno::EROFS, 1),
        (Errno(27), 28),
        (Errno(122), 28),
        (Errno::EAGAIN, 5),
        (Errno(0), 5),
        (Errno(-3), 5),
        (Errno(9999), 5),
    ];
    for (errno, expected) in cases {
        assert_eq!(ErrorCode::from_errno(errno).value(), expected, "{errno:?}");
    }
}

/// Random bytes, biased towards the values the parsers branch on.
fn random_request_bytes(prng: &mut Prng) -> [u8; REQUEST_HEADER_BYTES] {
    let mut bytes = [0u8; REQUEST_HEADER_BYTES];
    bytes
        .iter_mut()
        .for_each(|b| *b = (prng.next_u64() & 0xff) as u8);
    if prng.chance(3, 4) {
        bytes[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    }
    if prng.chance(3, 4) {
        let flags = if prng.chance(1, 4) {
            prng.below(32)
        } else {
            prng.below(4)
        };
        bytes[4..6].copy_from_slice(&(flags as u16).to_be_bytes());
        bytes[6..8].copy_from_slice(&(prng.below(9) as u16).to_be_bytes());
    }
    if prng.chance(1, 2) {
        let offset = prng.below(80 << 20) & !prng.below(2).wrapping_mul(511);
        bytes[16..24].copy_from_slice(&offset.to_be_bytes());
        let length = (prng.below(u64::from(40 * MIB)) as u32) & !(prng.below(2) as u32 * 511);
        bytes[24..28].copy_from_slice(&length.to_be_bytes());
    }
    bytes
}

#[test]
fn random_request_headers_never_panic_and_commands_stay_in_bounds() {
    let mut prng = Prng::from_seed(0x6e62_6421);
    let mut executed = 0;
    for _ in 0..200_000 {
        let bytes = random_request_bytes(&mut prng);
        let g = ExportGeometry {
            size_bytes: prng.below(128 << 20),
            payload_bytes_max: prng.range_inclusive(4096, u64::from(32 * MIB)) as u32,
        };
        let Ok(header) = RequestHeader::parse(&bytes) else {
            assert_ne!(&bytes[0..4], &REQUEST_MAGIC.to_be_bytes());
            continue;
        };
        assert_eq!(header.encode(), bytes);
        match decide(&header, &g) {
            Decision::Execute(Command::Flush) => assert_eq!(header.command, CMD_FLUSH),
            Decision::Execute(command) => {
                executed += 1;
                let (offset, length) = match command {
                    Command::Read { offset, length } | Command::Write { offset, length, .. } => {
                        assert!(length <= g.payload_bytes_max);
                        (offset, length)
                    }
                    Command::Trim { offset, length, .. }
                    | Command::WriteZeroes { offset, length, .. } => (offset, length),
                    Command::Flush => unreachable!(),
                };
                assert!(length > 0 && length % 512 == 0 && offset % 512 == 0);
                assert!(offset + u64::from(length) <= g.size_bytes);
            }
            Decision::Refuse { discard_bytes, .. } | Decision::Acknowledge { discard_bytes } => {
                let expected = if header.command == CMD_WRITE {
                    header.length
                } else {
                    0
                };
                assert_eq!(discard_bytes, expected);
                assert!(discard_bytes <= g.payload_discard_bytes_max());
            }
            Decision::Disconnect => assert_eq!(header.command, CMD_DISC),
            Decision::Close(_) => {
                assert_eq!(header.command, CMD_WRITE);
                assert!(header.length > g.payload_discard_bytes_max());
            }
        }
    }
    assert!(executed > 1000, "the generator must reach the valid paths");
}

#[test]
fn random_option_bytes_never_panic_and_parsed_requests_round_trip() {
    let mut prng = Prng::from_seed(0x6f70_7473);
    let mut parsed = 0;
    for _ in 0..200_000 {
        let length = prng.below(64) as usize;
        let mut data: Vec<u8> = (0..length)
            .map(|_| (prng.next_u64() & 0xff) as u8)
            .collect();
        if length >= 6 && prng.chance(1, 2) {
            // A plausible name length, so that parsing gets past it.
            let name_length = prng.below(length as u64 - 5) as u32;
            data[0..4].copy_from_slice(&name_length.to_be_bytes());
            let count_at = 4 + name_length as usize;
            if count_at + 2 <= length && prng.chance(1, 2) {
                let count = ((length - count_at - 2) / 2) as u16;
                data[count_at..count_at + 2].copy_from_slice(&count.to_be_bytes());
                data.truncate(count_at + 2 + 2 * usize::from(count));
            }
        }
        if let Ok(request) = ExportRequest::parse(&data) {
            parsed += 1;
            assert_eq!(request.encode(), data);
        }

        let mut header = [0u8; OPTION_HEADER_BYTES];
        header
            .iter_mut()
            .for_each(|b| *b = (prng.next_u64() & 0xff) as u8);
        if prng.chance(1, 2) {
            header[0..8].copy_from_slice(&OPTION_MAGIC.to_be_bytes());
        }
        if let Ok(option) = OptionHeader::parse(&header) {
            let plan = option.data_plan();
            assert_eq!(
                plan.is_err(),
                option.length > OPTION_DATA_SKIP_BYTES_MAX
                    || (option.option == OPT_EXPORT_NAME && option.length > OPTION_DATA_BYTES_MAX)
            );
        }
        let flags = [header[0], header[1], header[2], header[3]];
        let _ = ClientFlags::parse(flags);
    }
    assert!(parsed > 1000, "the generator must reach the valid paths");
}

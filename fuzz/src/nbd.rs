//! Target `nbd`: tandem's NBD server (`ublk_target::nbd`) fed an arbitrary client byte stream.
//!
//! The input is everything a client sends, from its flags after the greeting to the end; the
//! server runs over in-memory streams against a backend that checks the frontend contract
//! (offsets and lengths multiples of 512, inside the volume, payloads as long as announced).
//! The server must end the connection without panicking, after sending its greeting. The pure
//! parsers of `nbd::wire` run on the same bytes: request headers and `NBD_OPT_GO` data
//! round-trip through their encoders, option headers and client flags parse or refuse, and
//! `decide` only executes requests the backend contract allows.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use engine::buffer::IoBuf;
use engine::replica::ClientOp;
use engine::runtime::Completion;
use ublk_target::BlockBackend;
use ublk_target::nbd::wire::{
    self, ClientFlags, Command, Decision, ExportGeometry, ExportRequest, OptionHeader,
    RequestHeader,
};
use ublk_target::nbd::{ExportRegistry, ExportState, NbdLimits, serve_stream};

/// Bytes of the served export: not a multiple of 512, so the server must round it down.
const EXPORT_BYTES: u64 = (1 << 20) + 100;
/// The largest read or write the server accepts here (small, so inputs stay cheap).
const REQUEST_BYTES_MAX: u32 = 64 << 10;

/// A volume of zeros that checks every request against the frontend contract.
struct CheckedZeros;

impl BlockBackend for CheckedZeros {
    fn size_bytes(&self) -> u64 {
        EXPORT_BYTES
    }

    fn submit(&self, op: ClientOp, completion: Completion) {
        let check = |offset: u64, length: u64| {
            assert!(
                offset.is_multiple_of(512) && length.is_multiple_of(512),
                "unaligned request {offset}+{length} reached the backend"
            );
            assert!(
                offset
                    .checked_add(length)
                    .is_some_and(|end| end <= EXPORT_BYTES),
                "request {offset}+{length} past the end reached the backend"
            );
        };
        match op {
            ClientOp::Read { offset, length } => {
                check(offset, length);
                assert!(length <= u64::from(REQUEST_BYTES_MAX));
                let length = usize::try_from(length).expect("bounded");
                completion(Ok(Some(IoBuf::zeroed(length))));
            }
            ClientOp::Write { offset, data, .. } => {
                check(offset, data.len() as u64);
                assert!(data.len() <= REQUEST_BYTES_MAX as usize);
                completion(Ok(None));
            }
            ClientOp::Trim { offset, length, .. }
            | ClientOp::WriteZeroes { offset, length, .. } => {
                check(offset, length);
                completion(Ok(None));
            }
            _ => completion(Ok(None)),
        }
    }
}

/// Keeps the first bytes the server sends and counts the rest.
#[derive(Default)]
struct Recorder {
    head: Vec<u8>,
    total: usize,
}

impl tokio::io::AsyncWrite for Recorder {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let keep = bytes.len().min(64usize.saturating_sub(self.head.len()));
        self.head.extend_from_slice(&bytes[..keep]);
        self.total += bytes.len();
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

struct Server {
    runtime: tokio::runtime::Runtime,
    registry: ExportRegistry,
}

thread_local! {
    static SERVER: RefCell<Server> = RefCell::new(Server {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime"),
        registry: {
            let registry = ExportRegistry::new();
            registry.set("r0", ExportState::Serving(Arc::new(CheckedZeros)));
            registry.set("r9", ExportState::Unavailable("r9 is secondary here".to_string()));
            registry
        },
    });
}

/// The target body.
pub fn nbd(data: &[u8]) {
    check_parsers(data);
    let limits = NbdLimits {
        connections_max: 1,
        requests_in_flight_per_connection: 8,
        request_bytes_max: REQUEST_BYTES_MAX,
        payload_bytes_in_flight_per_connection: 4 * u64::from(REQUEST_BYTES_MAX),
        handshake_timeout: Duration::from_secs(30),
    };
    SERVER.with(|server| {
        let server = server.borrow();
        let mut sent = Recorder::default();
        let (reason, export) =
            server
                .runtime
                .block_on(serve_stream(data, &mut sent, &server.registry, limits));
        assert!(!reason.is_empty());
        assert!(
            sent.head.starts_with(&wire::greeting()),
            "the server did not greet"
        );
        if let Some(export) = export {
            assert_eq!(
                export, "r0",
                "a connection used an export that cannot serve"
            );
        }
    });
}

fn check_parsers(data: &[u8]) {
    if let Some(bytes) = data.first_chunk::<4>() {
        let _ = ClientFlags::parse(*bytes);
    }
    if let Some(bytes) = data.first_chunk::<{ wire::OPTION_HEADER_BYTES }>()
        && let Ok(header) = OptionHeader::parse(bytes)
    {
        let _ = header.data_plan();
    }
    if let Ok(request) = ExportRequest::parse(data) {
        assert_eq!(
            request.encode(),
            data,
            "NBD_OPT_GO data re-encodes to other bytes"
        );
    }
    let Some(bytes) = data.first_chunk::<{ wire::REQUEST_HEADER_BYTES }>() else {
        return;
    };
    let Ok(header) = RequestHeader::parse(bytes) else {
        return;
    };
    assert_eq!(
        &header.encode(),
        bytes,
        "a request header re-encodes to other bytes"
    );
    let rest = &data[wire::REQUEST_HEADER_BYTES..];
    let geometry = ExportGeometry {
        size_bytes: u64::from_le_bytes(rest.first_chunk::<8>().copied().unwrap_or_default()) & !511,
        payload_bytes_max: REQUEST_BYTES_MAX,
    };
    match wire::decide(&header, &geometry) {
        Decision::Execute(command) => {
            let (offset, length) = match command {
                Command::Read { offset, length } | Command::Write { offset, length, .. } => {
                    assert!(length <= geometry.payload_bytes_max);
                    (offset, length)
                }
                Command::Trim { offset, length, .. }
                | Command::WriteZeroes { offset, length, .. } => (offset, length),
                Command::Flush => (0, 0),
            };
            assert!(offset.is_multiple_of(512) && length.is_multiple_of(512));
            assert!(
                offset
                    .checked_add(u64::from(length))
                    .is_some_and(|end| end <= geometry.size_bytes)
            );
            assert_eq!(
                command.request_payload_bytes(),
                if header.command == wire::CMD_WRITE {
                    header.length
                } else {
                    0
                }
            );
        }
        Decision::Acknowledge { discard_bytes } | Decision::Refuse { discard_bytes, .. } => {
            let expected = if header.command == wire::CMD_WRITE {
                header.length
            } else {
                0
            };
            assert_eq!(discard_bytes, expected, "a refusal would lose framing");
        }
        Decision::Disconnect => assert_eq!(header.command, wire::CMD_DISC),
        Decision::Close(_) => assert_eq!(header.command, wire::CMD_WRITE),
    }
}

/// Seeds: whole client sessions (`NBD_OPT_GO` then I/O, `NBD_OPT_EXPORT_NAME`, `LIST`,
/// `INFO`, `ABORT`, unknown options, refused exports) and a bare request header.
pub fn seeds() -> Vec<Vec<u8>> {
    let option = |option: u32, data: &[u8]| {
        let mut bytes = wire::OPTION_MAGIC.to_be_bytes().to_vec();
        bytes.extend_from_slice(&option.to_be_bytes());
        bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
        bytes.extend_from_slice(data);
        bytes
    };
    let go = |name: &str| {
        ExportRequest {
            name: name.as_bytes().to_vec(),
            info_requests: vec![wire::INFO_NAME, wire::INFO_BLOCK_SIZE],
        }
        .encode()
    };
    let request = |command: u16, flags: u16, offset: u64, length: u32| {
        RequestHeader {
            flags,
            command,
            cookie: 0x0102_0304_0506_0708 + u64::from(command),
            offset,
            length,
        }
        .encode()
        .to_vec()
    };
    let flags = 3u32.to_be_bytes().to_vec();
    let mut io = Vec::new();
    io.extend(request(wire::CMD_WRITE, wire::CMD_FLAG_FUA, 4096, 1024));
    io.extend(vec![0x5A; 1024]);
    io.extend(request(wire::CMD_READ, 0, 0, 4096));
    io.extend(request(wire::CMD_FLUSH, 0, 0, 0));
    io.extend(request(wire::CMD_TRIM, 0, 8192, 4096));
    io.extend(request(
        wire::CMD_WRITE_ZEROES,
        wire::CMD_FLAG_NO_HOLE,
        0,
        512,
    ));
    io.extend(request(wire::CMD_READ, 0, EXPORT_BYTES & !511, 512));
    io.extend(request(wire::CMD_BLOCK_STATUS, 0, 0, 512));
    io.extend(request(wire::CMD_DISC, 0, 0, 0));

    let mut session = flags.clone();
    session.extend(option(wire::OPT_LIST, &[]));
    session.extend(option(wire::OPT_INFO, &go("r9")));
    session.extend(option(wire::OPT_STRUCTURED_REPLY, &[]));
    session.extend(option(wire::OPT_GO, &go("r0")));
    session.extend(&io);

    let mut export_name = 1u32.to_be_bytes().to_vec();
    export_name.extend(option(wire::OPT_EXPORT_NAME, b"r0"));
    export_name.extend(&io);

    let mut abort = flags.clone();
    abort.extend(option(wire::OPT_INFO, &go("r0")));
    abort.extend(option(wire::OPT_ABORT, &[]));

    let mut refused = flags;
    refused.extend(option(wire::OPT_GO, &go("nope")));
    refused.extend(option(wire::OPT_EXPORT_NAME, b"r9"));

    vec![
        session,
        export_name,
        abort,
        refused,
        request(wire::CMD_WRITE, 0, 512, 512),
        go("r0"),
    ]
}

//! The NBD wire format: constants, parsing of what clients send, encoding of what the server
//! sends. Pure functions over bytes, with no I/O, so that every client input can be tested and
//! fuzzed on its own.
//!
//! All integers on the wire are big-endian. Only the fixed newstyle handshake and simple replies
//! are spoken (no structured replies, no extended headers, no TLS).
//!
//! # Handshake (server first)
//!
//! ```text
//! S: greeting       | 0..8 "NBDMAGIC" | 8..16 "IHAVEOPT" | 16..18 handshake flags |
//! C: client flags   | 0..4 flags |
//! C: option header  | 0..8 "IHAVEOPT" | 8..12 option | 12..16 data length N | then N data bytes
//! S: option reply   | 0..8 0x3e889045565a9 | 8..12 option | 12..16 reply type | 16..20 length N |
//!                   | then N data bytes |
//! ```
//!
//! # Transmission
//!
//! ```text
//! C: request        | 0..4 0x25609513 | 4..6 command flags | 6..8 command | 8..16 cookie |
//!                   | 16..24 offset | 24..28 length | then `length` bytes for NBD_CMD_WRITE |
//! S: simple reply   | 0..4 0x67446698 | 4..8 error | 8..16 cookie |
//!                   | then `length` bytes for a successful NBD_CMD_READ |
//! ```

use engine::types::Errno;

/// `NBDMAGIC`, the first eight bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the second word of the greeting and the first word of every client option.
pub const OPTION_MAGIC: u64 = 0x4948_4156_454f_5054;
/// The first word of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// The first word of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// The first word of every simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flag: the server speaks fixed newstyle.
pub const HANDSHAKE_FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server can omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const HANDSHAKE_FLAG_NO_ZEROES: u16 = 1 << 1;
/// The handshake flags this server sends.
pub const HANDSHAKE_FLAGS: u16 = HANDSHAKE_FLAG_FIXED_NEWSTYLE | HANDSHAKE_FLAG_NO_ZEROES;

/// Client flag: the client speaks fixed newstyle.
pub const CLIENT_FLAG_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const CLIENT_FLAG_NO_ZEROES: u32 = 1 << 1;

/// Transmission flag: always set.
pub const TRANSMISSION_FLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: the export is read-only.
pub const TRANSMISSION_FLAG_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: `NBD_CMD_FLUSH` is supported.
pub const TRANSMISSION_FLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: `NBD_CMD_FLAG_FUA` is supported.
pub const TRANSMISSION_FLAG_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: `NBD_CMD_TRIM` is supported.
pub const TRANSMISSION_FLAG_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: `NBD_CMD_WRITE_ZEROES` and `NBD_CMD_FLAG_NO_HOLE` are supported.
pub const TRANSMISSION_FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag: flushes and FUA are visible across all connections to the export.
pub const TRANSMISSION_FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// The transmission flags of every export this server serves.
pub const TRANSMISSION_FLAGS: u16 = TRANSMISSION_FLAG_HAS_FLAGS
    | TRANSMISSION_FLAG_SEND_FLUSH
    | TRANSMISSION_FLAG_SEND_FUA
    | TRANSMISSION_FLAG_SEND_TRIM
    | TRANSMISSION_FLAG_SEND_WRITE_ZEROES
    | TRANSMISSION_FLAG_CAN_MULTI_CONN;

/// Option: choose an export and enter transmission (no error reply possible).
pub const OPT_EXPORT_NAME: u32 = 1;
/// Option: end the session.
pub const OPT_ABORT: u32 = 2;
/// Option: list the exports.
pub const OPT_LIST: u32 = 3;
/// Option: upgrade to TLS (not supported).
pub const OPT_STARTTLS: u32 = 5;
/// Option: describe an export.
pub const OPT_INFO: u32 = 6;
/// Option: describe an export and enter transmission.
pub const OPT_GO: u32 = 7;
/// Option: use structured replies (not supported).
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// Option: list metadata contexts (not supported).
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Option: select metadata contexts (not supported).
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// Option: use extended headers (not supported).
pub const OPT_EXTENDED_HEADERS: u32 = 11;

/// Option reply: success, or the end of a list.
pub const REP_ACK: u32 = 1;
/// Option reply: one export of an `NBD_OPT_LIST`.
pub const REP_SERVER: u32 = 2;
/// Option reply: one item of information about an export.
pub const REP_INFO: u32 = 3;
/// Bit 31 marks option error replies.
pub const REP_ERROR_BIT: u32 = 1 << 31;
/// Option error: the option is not supported.
pub const REP_ERR_UNSUP: u32 = REP_ERROR_BIT | 1;
/// Option error: forbidden by policy.
pub const REP_ERR_POLICY: u32 = REP_ERROR_BIT | 2;
/// Option error: the option's data is malformed.
pub const REP_ERR_INVALID: u32 = REP_ERROR_BIT | 3;
/// Option error: the export does not exist or is not available.
pub const REP_ERR_UNKNOWN: u32 = REP_ERROR_BIT | 6;
/// Option error: the server is shutting down.
pub const REP_ERR_SHUTDOWN: u32 = REP_ERROR_BIT | 7;
/// Option error: the request (or its reply) is too large.
pub const REP_ERR_TOO_BIG: u32 = REP_ERROR_BIT | 9;

/// Information type: export size and transmission flags.
pub const INFO_EXPORT: u16 = 0;
/// Information type: the export's canonical name.
pub const INFO_NAME: u16 = 1;
/// Information type: a human-readable description.
pub const INFO_DESCRIPTION: u16 = 2;
/// Information type: block size constraints.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Command: read.
pub const CMD_READ: u16 = 0;
/// Command: write (a payload follows the header).
pub const CMD_WRITE: u16 = 1;
/// Command: disconnect after the requests in flight.
pub const CMD_DISC: u16 = 2;
/// Command: make every completed write durable.
pub const CMD_FLUSH: u16 = 3;
/// Command: discard a range.
pub const CMD_TRIM: u16 = 4;
/// Command: prefetch a range (not advertised, refused).
pub const CMD_CACHE: u16 = 5;
/// Command: zero a range.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// Command: block status (needs structured replies, refused).
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Command flag: force unit access.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Command flag: `NBD_CMD_WRITE_ZEROES` must not punch a hole.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Command flag: do not fragment a structured read reply (not advertised).
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// Command flag: one extent per block-status reply (not advertised).
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// Command flag: fail write-zeroes fast when it is slow (not advertised).
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// The longest string (export name, error message) the protocol allows.
pub const STRING_BYTES_MAX: usize = 4096;
/// The largest option data read into memory: a `NBD_OPT_GO` with a name of the longest length
/// and a generous list of information requests fits.
pub const OPTION_DATA_BYTES_MAX: u32 = 8192;
/// Larger option data up to this length is skipped and refused with `NBD_REP_ERR_TOO_BIG`;
/// anything longer closes the connection.
pub const OPTION_DATA_SKIP_BYTES_MAX: u32 = 1 << 20;
/// Write payloads up to this length are always discarded rather than treated as an attack, as
/// the specification asks, even if larger than the advertised maximum.
pub const PAYLOAD_DISCARD_BYTES_MIN: u32 = 1 << 25;

/// The minimum block size advertised: the engine addresses 512-byte sectors.
pub const BLOCK_BYTES_MIN: u32 = 512;
/// The preferred block size advertised.
pub const BLOCK_BYTES_PREFERRED: u32 = 4096;

/// Bytes of the server greeting.
pub const GREETING_BYTES: usize = 18;
/// Bytes of an option header.
pub const OPTION_HEADER_BYTES: usize = 16;
/// Bytes of a request header.
pub const REQUEST_HEADER_BYTES: usize = 28;
/// Bytes of a simple reply header.
pub const SIMPLE_REPLY_BYTES: usize = 16;
/// Zero bytes that follow the `NBD_OPT_EXPORT_NAME` reply unless `NO_ZEROES` was negotiated.
pub const EXPORT_NAME_ZEROES_BYTES: usize = 124;

/// A client message that breaks framing: the connection cannot continue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolViolation {
    /// The client set flags this server does not know or did not advertise.
    #[error("unknown client flags {0:#x}")]
    UnknownClientFlags(u32),
    /// An option header did not start with `IHAVEOPT`.
    #[error("bad option magic {0:#018x}")]
    BadOptionMagic(u64),
    /// An option's data length is beyond any reasonable option.
    #[error("option {option} has an absurd data length of {length} bytes")]
    OptionTooLong {
        /// The option.
        option: u32,
        /// Its claimed data length.
        length: u32,
    },
    /// A request header did not start with the request magic.
    #[error("bad request magic {0:#010x}")]
    BadRequestMagic(u32),
    /// A write's payload is too large even to discard.
    #[error("write payload of {length} bytes is beyond any acceptable request")]
    WritePayloadTooLarge {
        /// The claimed payload length.
        length: u32,
    },
}

/// The flags a client sent after the greeting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientFlags {
    /// The client speaks fixed newstyle.
    pub fixed_newstyle: bool,
    /// The client asked for no zero padding after `NBD_OPT_EXPORT_NAME`.
    pub no_zeroes: bool,
}

impl ClientFlags {
    /// Parses the 32-bit client flags; any flag other than the two advertised is a violation.
    pub fn parse(bytes: [u8; 4]) -> Result<Self, ProtocolViolation> {
        let flags = u32::from_be_bytes(bytes);
        if flags & !(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES) != 0 {
            return Err(ProtocolViolation::UnknownClientFlags(flags));
        }
        Ok(Self {
            fixed_newstyle: flags & CLIENT_FLAG_FIXED_NEWSTYLE != 0,
            no_zeroes: flags & CLIENT_FLAG_NO_ZEROES != 0,
        })
    }
}

/// The server greeting: `| 0..8 NBDMAGIC | 8..16 IHAVEOPT | 16..18 handshake flags |`.
pub fn greeting() -> [u8; GREETING_BYTES] {
    let mut bytes = [0u8; GREETING_BYTES];
    bytes[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    bytes[8..16].copy_from_slice(&OPTION_MAGIC.to_be_bytes());
    bytes[16..18].copy_from_slice(&HANDSHAKE_FLAGS.to_be_bytes());
    bytes
}

/// An option header: `| 0..8 IHAVEOPT | 8..12 option | 12..16 data length |`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option (`OPT_*`).
    pub option: u32,
    /// Bytes of option data that follow.
    pub length: u32,
}

/// What to do with an option's data, by its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionDataPlan {
    /// Read it into memory and act on the option.
    Read,
    /// Skip it without storing it and answer `NBD_REP_ERR_TOO_BIG`.
    SkipAndRefuse,
}

impl OptionHeader {
    /// Parses an option header; a wrong magic is a violation.
    pub fn parse(bytes: &[u8; OPTION_HEADER_BYTES]) -> Result<Self, ProtocolViolation> {
        let magic = be_u64(&bytes[0..8]);
        if magic != OPTION_MAGIC {
            return Err(ProtocolViolation::BadOptionMagic(magic));
        }
        Ok(Self {
            option: be_u32(&bytes[8..12]),
            length: be_u32(&bytes[12..16]),
        })
    }

    /// How the option's data is handled: read, skipped and refused, or (when absurdly long, or
    /// too long for `NBD_OPT_EXPORT_NAME`, which cannot be refused) a reason to close.
    pub fn data_plan(&self) -> Result<OptionDataPlan, ProtocolViolation> {
        let too_long = ProtocolViolation::OptionTooLong {
            option: self.option,
            length: self.length,
        };
        if self.length <= OPTION_DATA_BYTES_MAX {
            Ok(OptionDataPlan::Read)
        } else if self.length <= OPTION_DATA_SKIP_BYTES_MAX && self.option != OPT_EXPORT_NAME {
            Ok(OptionDataPlan::SkipAndRefuse)
        } else {
            Err(too_long)
        }
    }
}

/// The data of `NBD_OPT_INFO` and `NBD_OPT_GO`:
/// `| 0..4 name length N | 4..4+N name | 2 bytes count C | C × 2 bytes information types |`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportRequest {
    /// The export name, as sent (not necessarily UTF-8).
    pub name: Vec<u8>,
    /// The information types asked for.
    pub info_requests: Vec<u16>,
}

/// Why an option's data could not be parsed (answered with `NBD_REP_ERR_INVALID`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionDataError {
    /// The data ends before the fields it announces.
    #[error("option data is truncated")]
    Truncated,
    /// Bytes remain after the announced fields.
    #[error("option data has {0} trailing bytes")]
    TrailingBytes(usize),
    /// The export name is longer than the protocol allows.
    #[error("export name is {0} bytes long, more than 4096")]
    NameTooLong(usize),
}

impl ExportRequest {
    /// Parses `NBD_OPT_INFO` / `NBD_OPT_GO` data.
    pub fn parse(data: &[u8]) -> Result<Self, OptionDataError> {
        let (length_bytes, rest) = split_checked(data, 4)?;
        let name_length = usize::try_from(be_u32(length_bytes)).unwrap_or(usize::MAX);
        if name_length > STRING_BYTES_MAX {
            return Err(OptionDataError::NameTooLong(name_length));
        }
        let (name, rest) = split_checked(rest, name_length)?;
        let (count_bytes, rest) = split_checked(rest, 2)?;
        let count = usize::from(be_u16(count_bytes));
        let (list, rest) = split_checked(rest, count * 2)?;
        if !rest.is_empty() {
            return Err(OptionDataError::TrailingBytes(rest.len()));
        }
        Ok(Self {
            name: name.to_vec(),
            info_requests: list.chunks_exact(2).map(be_u16).collect(),
        })
    }

    /// The inverse of [`ExportRequest::parse`] (what a client sends), for tests and tools.
    pub fn encode(&self) -> Vec<u8> {
        let mut data = Vec::with_capacity(6 + self.name.len() + 2 * self.info_requests.len());
        data.extend_from_slice(&length_u32(self.name.len()).to_be_bytes());
        data.extend_from_slice(&self.name);
        let count = u16::try_from(self.info_requests.len()).unwrap_or(u16::MAX);
        data.extend_from_slice(&count.to_be_bytes());
        for info in self.info_requests.iter().take(usize::from(count)) {
            data.extend_from_slice(&info.to_be_bytes());
        }
        data
    }
}

/// An option reply: `| 0..8 reply magic | 8..12 option | 12..16 reply type | 16..20 length N |
/// N data bytes |`.
pub fn option_reply(option: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(20 + data.len());
    bytes.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    bytes.extend_from_slice(&option.to_be_bytes());
    bytes.extend_from_slice(&reply_type.to_be_bytes());
    bytes.extend_from_slice(&length_u32(data.len()).to_be_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// An option error reply whose data is `message`, cut to the protocol's 4096-byte limit at a
/// character boundary.
pub fn option_error_reply(option: u32, reply_type: u32, message: &str) -> Vec<u8> {
    option_reply(option, reply_type, truncate_string(message).as_bytes())
}

/// `NBD_REP_SERVER` data: `| 0..4 name length N | 4..4+N name |`.
pub fn server_entry(name: &str) -> Vec<u8> {
    let name = truncate_string(name);
    let mut data = Vec::with_capacity(4 + name.len());
    data.extend_from_slice(&length_u32(name.len()).to_be_bytes());
    data.extend_from_slice(name.as_bytes());
    data
}

/// `NBD_INFO_EXPORT` data: `| 0..2 type 0 | 2..10 size | 10..12 transmission flags |`.
pub fn info_export(size_bytes: u64, transmission_flags: u16) -> [u8; 12] {
    let mut data = [0u8; 12];
    data[0..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
    data[2..10].copy_from_slice(&size_bytes.to_be_bytes());
    data[10..12].copy_from_slice(&transmission_flags.to_be_bytes());
    data
}

/// `NBD_INFO_NAME` data: `| 0..2 type 1 | name |`.
pub fn info_name(name: &str) -> Vec<u8> {
    let name = truncate_string(name);
    let mut data = Vec::with_capacity(2 + name.len());
    data.extend_from_slice(&INFO_NAME.to_be_bytes());
    data.extend_from_slice(name.as_bytes());
    data
}

/// Block size constraints, as advertised in `NBD_INFO_BLOCK_SIZE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSizes {
    /// Every offset and length must be a multiple of this.
    pub minimum: u32,
    /// Requests aligned to this are efficient.
    pub preferred: u32,
    /// The largest read or write payload.
    pub payload_max: u32,
}

impl BlockSizes {
    /// The constraints of this server for a maximum payload of `payload_max` bytes (raised to
    /// the preferred block size if smaller, as the protocol requires).
    pub fn for_payload_max(payload_max: u32) -> Self {
        Self {
            minimum: BLOCK_BYTES_MIN,
            preferred: BLOCK_BYTES_PREFERRED,
            payload_max: payload_max.max(BLOCK_BYTES_PREFERRED),
        }
    }

    /// `NBD_INFO_BLOCK_SIZE` data: `| 0..2 type 3 | 2..6 minimum | 6..10 preferred |
    /// 10..14 maximum payload |`.
    pub fn encode(&self) -> [u8; 14] {
        let mut data = [0u8; 14];
        data[0..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        data[2..6].copy_from_slice(&self.minimum.to_be_bytes());
        data[6..10].copy_from_slice(&self.preferred.to_be_bytes());
        data[10..14].copy_from_slice(&self.payload_max.to_be_bytes());
        data
    }
}

/// The reply to `NBD_OPT_EXPORT_NAME`: `| 0..8 size | 8..10 transmission flags |`, then 124
/// zero bytes unless the client negotiated `NO_ZEROES`.
pub fn export_name_reply(size_bytes: u64, transmission_flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(10 + EXPORT_NAME_ZEROES_BYTES);
    bytes.extend_from_slice(&size_bytes.to_be_bytes());
    bytes.extend_from_slice(&transmission_flags.to_be_bytes());
    if !no_zeroes {
        bytes.resize(10 + EXPORT_NAME_ZEROES_BYTES, 0);
    }
    bytes
}

/// A request header, 28 bytes: `| 0..4 magic 0x25609513 | 4..6 command flags | 6..8 command |
/// 8..16 cookie | 16..24 offset | 24..28 length |`, followed by `length` payload bytes for
/// `NBD_CMD_WRITE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    /// Command flags (`CMD_FLAG_*`).
    pub flags: u16,
    /// The command (`CMD_*`).
    pub command: u16,
    /// Opaque; echoed in the reply.
    pub cookie: u64,
    /// First byte.
    pub offset: u64,
    /// Bytes.
    pub length: u32,
}

impl RequestHeader {
    /// Parses a request header; a wrong magic is a violation.
    pub fn parse(bytes: &[u8; REQUEST_HEADER_BYTES]) -> Result<Self, ProtocolViolation> {
        let magic = be_u32(&bytes[0..4]);
        if magic != REQUEST_MAGIC {
            return Err(ProtocolViolation::BadRequestMagic(magic));
        }
        Ok(Self {
            flags: be_u16(&bytes[4..6]),
            command: be_u16(&bytes[6..8]),
            cookie: be_u64(&bytes[8..16]),
            offset: be_u64(&bytes[16..24]),
            length: be_u32(&bytes[24..28]),
        })
    }

    /// The inverse of [`RequestHeader::parse`] (what a client sends), for tests and tools.
    pub fn encode(&self) -> [u8; REQUEST_HEADER_BYTES] {
        let mut bytes = [0u8; REQUEST_HEADER_BYTES];
        bytes[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        bytes[4..6].copy_from_slice(&self.flags.to_be_bytes());
        bytes[6..8].copy_from_slice(&self.command.to_be_bytes());
        bytes[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        bytes[16..24].copy_from_slice(&self.offset.to_be_bytes());
        bytes[24..28].copy_from_slice(&self.length.to_be_bytes());
        bytes
    }
}

/// NBD error values (the `error` field of a reply); they match Linux errno numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// `NBD_EPERM` (1): operation not permitted.
    NotPermitted,
    /// `NBD_EIO` (5): input/output error.
    Io,
    /// `NBD_ENOMEM` (12): cannot allocate memory.
    OutOfMemory,
    /// `NBD_EINVAL` (22): invalid argument.
    Invalid,
    /// `NBD_ENOSPC` (28): no space left on device.
    NoSpace,
    /// `NBD_EOVERFLOW` (75): value too large.
    Overflow,
    /// `NBD_ENOTSUP` (95): operation not supported.
    NotSupported,
    /// `NBD_ESHUTDOWN` (108): server shutting down.
    Shutdown,
}

/// Linux errno values the mapping needs that `engine::types::Errno` has no constant for.
mod linux_errno {
    pub(super) const ENOMEM: i32 = 12;
    pub(super) const EFBIG: i32 = 27;
    pub(super) const EOVERFLOW: i32 = 75;
    pub(super) const ESHUTDOWN: i32 = 108;
    pub(super) const EDQUOT: i32 = 122;
}

impl ErrorCode {
    /// The value sent on the wire.
    pub fn value(self) -> u32 {
        match self {
            Self::NotPermitted => 1,
            Self::Io => 5,
            Self::OutOfMemory => 12,
            Self::Invalid => 22,
            Self::NoSpace => 28,
            Self::Overflow => 75,
            Self::NotSupported => 95,
            Self::Shutdown => 108,
        }
    }

    /// The NBD error for an engine errno. Besides the values NBD defines, `EROFS` becomes
    /// `NBD_EPERM` and `EFBIG`/`EDQUOT` become `NBD_ENOSPC`, as the specification asks; anything
    /// else (`EAGAIN` included) becomes `NBD_EIO`.
    pub fn from_errno(errno: Errno) -> Self {
        match errno {
            Errno::EPERM | Errno::EROFS => Self::NotPermitted,
            Errno::EINVAL => Self::Invalid,
            Errno::ENOSPC => Self::NoSpace,
            Errno::EOPNOTSUPP => Self::NotSupported,
            Errno(linux_errno::ENOMEM) => Self::OutOfMemory,
            Errno(linux_errno::EFBIG | linux_errno::EDQUOT) => Self::NoSpace,
            Errno(linux_errno::EOVERFLOW) => Self::Overflow,
            Errno(linux_errno::ESHUTDOWN) => Self::Shutdown,
            _ => Self::Io,
        }
    }
}

/// A simple reply header: `| 0..4 0x67446698 | 4..8 error | 8..16 cookie |`.
pub fn simple_reply_header(error: Option<ErrorCode>, cookie: u64) -> [u8; SIMPLE_REPLY_BYTES] {
    let mut bytes = [0u8; SIMPLE_REPLY_BYTES];
    bytes[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    bytes[4..8].copy_from_slice(&error.map_or(0, ErrorCode::value).to_be_bytes());
    bytes[8..16].copy_from_slice(&cookie.to_be_bytes());
    bytes
}

/// What the server knows about the export when it checks a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportGeometry {
    /// The size advertised to the client.
    pub size_bytes: u64,
    /// The largest read or write payload.
    pub payload_bytes_max: u32,
}

impl ExportGeometry {
    /// Write payloads up to this length are discarded when refused; longer ones close the
    /// connection.
    pub fn payload_discard_bytes_max(&self) -> u32 {
        self.payload_bytes_max.max(PAYLOAD_DISCARD_BYTES_MIN)
    }
}

/// A request that passed every check, ready for the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Read `length` bytes.
    Read {
        /// First byte.
        offset: u64,
        /// Bytes (at most the payload maximum).
        length: u32,
    },
    /// Write the `length` payload bytes that follow the header.
    Write {
        /// First byte.
        offset: u64,
        /// Bytes (at most the payload maximum).
        length: u32,
        /// Force unit access.
        fua: bool,
    },
    /// Flush.
    Flush,
    /// Discard.
    Trim {
        /// First byte.
        offset: u64,
        /// Bytes.
        length: u32,
        /// Force unit access.
        fua: bool,
    },
    /// Zero a range (`NO_HOLE` or not, the backend zeroes it).
    WriteZeroes {
        /// First byte.
        offset: u64,
        /// Bytes.
        length: u32,
        /// Force unit access.
        fua: bool,
    },
}

impl Command {
    /// Bytes of reply payload a successful reply carries (the length of a read).
    pub fn reply_payload_bytes(&self) -> u32 {
        match self {
            Self::Read { length, .. } => *length,
            _ => 0,
        }
    }

    /// Bytes of request payload that follow the header (the length of a write).
    pub fn request_payload_bytes(&self) -> u32 {
        match self {
            Self::Write { length, .. } => *length,
            _ => 0,
        }
    }
}

/// What to do with a well-framed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Hand the command to the backend.
    Execute(Command),
    /// Reply success at once without touching the backend (zero-length requests).
    Acknowledge {
        /// Payload bytes to read and drop first.
        discard_bytes: u32,
    },
    /// Reply with `error` after reading and dropping `discard_bytes` of payload.
    Refuse {
        /// The error to reply with.
        error: ErrorCode,
        /// Payload bytes to read and drop first.
        discard_bytes: u32,
    },
    /// `NBD_CMD_DISC`: finish the requests in flight, then close.
    Disconnect,
    /// The request cannot be answered without losing framing: close the connection.
    Close(ProtocolViolation),
}

/// Decides what to do with a request for an export of `geometry`. Pure; every request header
/// leads to exactly one decision, and only the ones listed in [`Decision::Close`] end the
/// connection.
pub fn decide(header: &RequestHeader, geometry: &ExportGeometry) -> Decision {
    let discard_bytes = if header.command == CMD_WRITE {
        if header.length > geometry.payload_discard_bytes_max() {
            return Decision::Close(ProtocolViolation::WritePayloadTooLarge {
                length: header.length,
            });
        }
        header.length
    } else {
        0
    };
    let refuse = |error| Decision::Refuse {
        error,
        discard_bytes,
    };
    let allowed_flags = match header.command {
        CMD_DISC => return Decision::Disconnect,
        CMD_READ | CMD_WRITE | CMD_FLUSH | CMD_TRIM => CMD_FLAG_FUA,
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        _ => return refuse(ErrorCode::Invalid),
    };
    if header.flags & !allowed_flags != 0 {
        return refuse(ErrorCode::Invalid);
    }
    if header.command == CMD_FLUSH {
        // Offset and length are reserved for a flush; they are not checked.
        return Decision::Execute(Command::Flush);
    }
    match check_range(header, geometry) {
        Err(error) => refuse(error),
        Ok(()) if header.length == 0 => Decision::Acknowledge { discard_bytes },
        Ok(()) => Decision::Execute(command_for(header)),
    }
}

/// Checks alignment, size and bounds of a read, write, trim or write-zeroes request.
fn check_range(header: &RequestHeader, geometry: &ExportGeometry) -> Result<(), ErrorCode> {
    let block = u64::from(BLOCK_BYTES_MIN);
    let length = u64::from(header.length);
    if !header.offset.is_multiple_of(block) || !length.is_multiple_of(block) {
        return Err(ErrorCode::Invalid);
    }
    let carries_payload = matches!(header.command, CMD_READ | CMD_WRITE);
    if carries_payload && header.length > geometry.payload_bytes_max {
        return Err(ErrorCode::Invalid);
    }
    let writes = matches!(header.command, CMD_WRITE | CMD_WRITE_ZEROES);
    match header.offset.checked_add(length) {
        Some(end) if end <= geometry.size_bytes => Ok(()),
        _ if writes => Err(ErrorCode::NoSpace),
        _ => Err(ErrorCode::Invalid),
    }
}

/// The command of a header that passed [`check_range`].
fn command_for(header: &RequestHeader) -> Command {
    let (offset, length) = (header.offset, header.length);
    let fua = header.flags & CMD_FLAG_FUA != 0;
    match header.command {
        CMD_READ => Command::Read { offset, length },
        CMD_WRITE => Command::Write {
            offset,
            length,
            fua,
        },
        CMD_TRIM => Command::Trim {
            offset,
            length,
            fua,
        },
        _ => Command::WriteZeroes {
            offset,
            length,
            fua,
        },
    }
}

/// `message` cut to at most [`STRING_BYTES_MAX`] bytes at a character boundary.
pub fn truncate_string(message: &str) -> &str {
    if message.len() <= STRING_BYTES_MAX {
        return message;
    }
    let mut end = STRING_BYTES_MAX;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// `data` split after `count` bytes, or `Truncated` when shorter.
fn split_checked(data: &[u8], count: usize) -> Result<(&[u8], &[u8]), OptionDataError> {
    if data.len() < count {
        return Err(OptionDataError::Truncated);
    }
    Ok(data.split_at(count))
}

/// A length that the caller bounded by a protocol limit, as the wire's 32-bit field.
fn length_u32(length: usize) -> u32 {
    u32::try_from(length).unwrap_or(u32::MAX)
}

fn be_u16(bytes: &[u8]) -> u16 {
    let mut array = [0u8; 2];
    array.copy_from_slice(bytes);
    u16::from_be_bytes(array)
}

fn be_u32(bytes: &[u8]) -> u32 {
    let mut array = [0u8; 4];
    array.copy_from_slice(bytes);
    u32::from_be_bytes(array)
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(bytes);
    u64::from_be_bytes(array)
}

#[cfg(test)]
mod tests;

//! Option haggling: from the greeting to the transmission phase (or to the end of the
//! connection). The decision for each option is made by [`answer_option`], which does no I/O.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::server::CloseReason;
use super::wire::{
    self, BlockSizes, ClientFlags, ExportGeometry, ExportRequest, OptionDataPlan, OptionHeader,
};
use super::{BlockBackend, ExportRegistry, ExportState, NbdLimits};

/// A negotiated export, ready for the transmission phase.
pub(super) struct Session {
    /// The export's name.
    pub(super) export_name: String,
    /// What serves it.
    pub(super) backend: Arc<dyn BlockBackend>,
    /// Its advertised size and payload limit.
    pub(super) geometry: ExportGeometry,
}

/// What to do after an option.
enum Step {
    /// Send these bytes and wait for the next option.
    Reply(Vec<u8>),
    /// Send these bytes and enter the transmission phase.
    Enter(Vec<u8>, Session),
    /// Send these bytes (if any; failures do not matter) and close.
    Close(Vec<u8>, CloseReason),
}

/// Runs the handshake: greeting, client flags, options until one enters transmission or the
/// connection must end.
pub(super) async fn negotiate<R, W>(
    reader: &mut R,
    writer: &mut W,
    registry: &ExportRegistry,
    limits: &NbdLimits,
) -> Result<Session, CloseReason>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    send(writer, &wire::greeting()).await?;
    let mut flags = [0u8; 4];
    if !read_exact_or_eof(reader, &mut flags).await? {
        return Err(CloseReason::ClientClosed);
    }
    let client = ClientFlags::parse(flags)?;
    loop {
        let step = receive_option(reader, client, registry, limits).await?;
        match step {
            Step::Reply(bytes) => send(writer, &bytes).await?,
            Step::Enter(bytes, session) => {
                send(writer, &bytes).await?;
                return Ok(session);
            }
            Step::Close(bytes, reason) => {
                // The client may already be gone (it need not wait for the ACK of an abort).
                let _ = send(writer, &bytes).await;
                return Err(reason);
            }
        }
    }
}

/// Reads the next option and decides the answer.
async fn receive_option<R: AsyncRead + Unpin>(
    reader: &mut R,
    client: ClientFlags,
    registry: &ExportRegistry,
    limits: &NbdLimits,
) -> Result<Step, CloseReason> {
    let mut header_bytes = [0u8; wire::OPTION_HEADER_BYTES];
    if !read_exact_or_eof(reader, &mut header_bytes).await? {
        return Err(CloseReason::ClientClosed);
    }
    let header = OptionHeader::parse(&header_bytes)?;
    match header.data_plan()? {
        OptionDataPlan::Read => {
            let data = read_option_data(reader, header.length).await?;
            Ok(answer_option(
                header.option,
                &data,
                client,
                registry,
                limits,
            ))
        }
        OptionDataPlan::SkipAndRefuse => {
            skip(reader, u64::from(header.length)).await?;
            let message = format!("option data of {} bytes is too large", header.length);
            Ok(Step::Reply(wire::option_error_reply(
                header.option,
                wire::REP_ERR_TOO_BIG,
                &message,
            )))
        }
    }
}

/// Decides the answer to one option whose data is `data`.
fn answer_option(
    option: u32,
    data: &[u8],
    client: ClientFlags,
    registry: &ExportRegistry,
    limits: &NbdLimits,
) -> Step {
    match option {
        wire::OPT_EXPORT_NAME => answer_export_name(data, client, registry, limits),
        wire::OPT_INFO | wire::OPT_GO => answer_info_or_go(option, data, registry, limits),
        wire::OPT_LIST => Step::Reply(answer_list(data, registry)),
        wire::OPT_ABORT => Step::Close(
            wire::option_reply(option, wire::REP_ACK, &[]),
            CloseReason::Aborted,
        ),
        _ => {
            let message = format!("{} is not supported by this server", option_name(option));
            Step::Reply(wire::option_error_reply(
                option,
                wire::REP_ERR_UNSUP,
                &message,
            ))
        }
    }
}

/// `NBD_OPT_EXPORT_NAME`: the reply has no error form, so a refusal closes the connection.
fn answer_export_name(
    data: &[u8],
    client: ClientFlags,
    registry: &ExportRegistry,
    limits: &NbdLimits,
) -> Step {
    match find_export(registry, data, limits) {
        Ok(session) => {
            let geometry = session.geometry;
            let reply = wire::export_name_reply(
                geometry.size_bytes,
                wire::TRANSMISSION_FLAGS,
                client.no_zeroes,
            );
            Step::Enter(reply, session)
        }
        Err(message) => Step::Close(Vec::new(), CloseReason::ExportRefused(message)),
    }
}

/// `NBD_OPT_INFO` and `NBD_OPT_GO`: information replies then `NBD_REP_ACK`, or an error whose
/// message says why (clients show it).
fn answer_info_or_go(
    option: u32,
    data: &[u8],
    registry: &ExportRegistry,
    limits: &NbdLimits,
) -> Step {
    let request = match ExportRequest::parse(data) {
        Ok(request) => request,
        Err(error) => {
            let message = format!("malformed {}: {error}", option_name(option));
            return Step::Reply(wire::option_error_reply(
                option,
                wire::REP_ERR_INVALID,
                &message,
            ));
        }
    };
    let session = match find_export(registry, &request.name, limits) {
        Ok(session) => session,
        Err(message) => {
            return Step::Reply(wire::option_error_reply(
                option,
                wire::REP_ERR_UNKNOWN,
                &message,
            ));
        }
    };
    let geometry = session.geometry;
    let mut reply = wire::option_reply(
        option,
        wire::REP_INFO,
        &wire::info_export(geometry.size_bytes, wire::TRANSMISSION_FLAGS),
    );
    // Sent whether asked for or not: the constraints hold either way.
    let block_sizes = BlockSizes::for_payload_max(geometry.payload_bytes_max);
    reply.extend(wire::option_reply(
        option,
        wire::REP_INFO,
        &block_sizes.encode(),
    ));
    if request.info_requests.contains(&wire::INFO_NAME) {
        let name = wire::info_name(&session.export_name);
        reply.extend(wire::option_reply(option, wire::REP_INFO, &name));
    }
    reply.extend(wire::option_reply(option, wire::REP_ACK, &[]));
    if option == wire::OPT_GO {
        Step::Enter(reply, session)
    } else {
        Step::Reply(reply)
    }
}

/// `NBD_OPT_LIST`: one `NBD_REP_SERVER` per serving export, then `NBD_REP_ACK`. Unavailable
/// exports are left out: clients list exports to use them (`nbdinfo --list` fails as a whole
/// when one listed export refuses `NBD_OPT_GO`), and on this node they cannot be used.
fn answer_list(data: &[u8], registry: &ExportRegistry) -> Vec<u8> {
    if !data.is_empty() {
        return wire::option_error_reply(
            wire::OPT_LIST,
            wire::REP_ERR_INVALID,
            "NBD_OPT_LIST takes no data",
        );
    }
    let mut reply = Vec::new();
    for name in registry.serving_names() {
        let entry = wire::server_entry(&name);
        reply.extend(wire::option_reply(wire::OPT_LIST, wire::REP_SERVER, &entry));
    }
    reply.extend(wire::option_reply(wire::OPT_LIST, wire::REP_ACK, &[]));
    reply
}

/// The export named by the client's bytes `name`, or the message that says why it cannot be
/// used.
fn find_export(
    registry: &ExportRegistry,
    name: &[u8],
    limits: &NbdLimits,
) -> Result<Session, String> {
    let unknown = || format!("no export named {}", quoted(name));
    let export_name = std::str::from_utf8(name).map_err(|_| unknown())?;
    match registry.get(export_name).ok_or_else(unknown)? {
        ExportState::Unavailable(reason) => Err(reason),
        ExportState::Serving(backend) => {
            let block = u64::from(wire::BLOCK_BYTES_MIN);
            let size_bytes = backend.size_bytes() / block * block;
            Ok(Session {
                export_name: export_name.to_string(),
                backend,
                geometry: ExportGeometry {
                    size_bytes,
                    payload_bytes_max: limits.request_bytes_max,
                },
            })
        }
    }
}

/// A client-supplied name, quoted, with control characters escaped, for messages and logs.
fn quoted(name: &[u8]) -> String {
    format!("\"{}\"", String::from_utf8_lossy(name).escape_debug())
}

/// The protocol's name for an option, for messages.
fn option_name(option: u32) -> String {
    let name = match option {
        wire::OPT_EXPORT_NAME => "NBD_OPT_EXPORT_NAME",
        wire::OPT_ABORT => "NBD_OPT_ABORT",
        wire::OPT_LIST => "NBD_OPT_LIST",
        wire::OPT_STARTTLS => "NBD_OPT_STARTTLS",
        wire::OPT_INFO => "NBD_OPT_INFO",
        wire::OPT_GO => "NBD_OPT_GO",
        wire::OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
        wire::OPT_LIST_META_CONTEXT => "NBD_OPT_LIST_META_CONTEXT",
        wire::OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
        wire::OPT_EXTENDED_HEADERS => "NBD_OPT_EXTENDED_HEADERS",
        _ => return format!("option {option}"),
    };
    name.to_string()
}

async fn send<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> Result<(), CloseReason> {
    writer.write_all(bytes).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads option data whose length [`OptionHeader::data_plan`] bounded.
async fn read_option_data<R: AsyncRead + Unpin>(
    reader: &mut R,
    length: u32,
) -> Result<Vec<u8>, CloseReason> {
    let mut data = vec![0u8; length as usize];
    reader.read_exact(&mut data).await?;
    Ok(data)
}

/// Reads and drops `count` bytes.
pub(super) async fn skip<R: AsyncRead + Unpin>(
    reader: &mut R,
    count: u64,
) -> Result<(), CloseReason> {
    let skipped = tokio::io::copy(&mut reader.take(count), &mut tokio::io::sink()).await?;
    if skipped == count {
        Ok(())
    } else {
        Err(CloseReason::Truncated)
    }
}

/// Fills `buffer`; `Ok(false)` when the stream ends before its first byte (a clean end between
/// messages), an `UnexpectedEof` error when it ends later.
pub(super) async fn read_exact_or_eof<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut [u8],
) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buffer.len() {
        let count = reader.read(&mut buffer[filled..]).await?;
        if count == 0 {
            if filled == 0 {
                return Ok(false);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += count;
    }
    Ok(true)
}

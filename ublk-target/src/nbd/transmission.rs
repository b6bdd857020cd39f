//! The transmission phase: requests are read one after another and handed to the backend;
//! replies go out as the backend completes them, in any order, through one writer fed by a
//! channel.
//!
//! Every request holds an [`InFlight`] permit from when it is accepted until its reply is
//! written: one of `requests_in_flight_per_connection` request slots, plus (for reads and
//! writes) as many payload-byte permits as its payload. The reader waits for permits before
//! reading a request's payload, so a client that sends faster than the server answers (or never
//! reads its replies) is slowed by TCP back-pressure instead of growing the server's memory.

use std::sync::Arc;

use engine::buffer::{IoBuf, IoBufMut};
use engine::replica::ClientOp;
use engine::runtime::Completion;
use engine::types::Errno;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::NbdLimits;
use super::handshake::{Session, read_exact_or_eof, skip};
use super::server::CloseReason;
use super::wire::{self, Command, Decision, ErrorCode, RequestHeader};

/// Bytes of the buffer in front of the socket for replies.
const WRITE_BUFFER_BYTES: usize = 64 << 10;

/// A reply waiting to be written, with the permits of its request.
struct Reply {
    cookie: u64,
    outcome: Outcome,
    _in_flight: InFlight,
}

/// What a reply says.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Success without payload.
    Done,
    /// Success of a read: the data follows the header.
    Data(IoBuf),
    /// Failure.
    Failed(ErrorCode),
}

/// The permits a request holds until its reply is written.
struct InFlight {
    _request: OwnedSemaphorePermit,
    _payload: Option<OwnedSemaphorePermit>,
}

/// The per-connection budget of requests and payload bytes in flight.
struct Budget {
    requests: Arc<Semaphore>,
    payload_bytes: Arc<Semaphore>,
}

impl Budget {
    fn new(limits: &NbdLimits) -> Self {
        let payload_bytes = usize::try_from(limits.payload_bytes_in_flight_per_connection)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Self {
            requests: Arc::new(Semaphore::new(
                limits
                    .requests_in_flight_per_connection
                    .min(Semaphore::MAX_PERMITS),
            )),
            payload_bytes: Arc::new(Semaphore::new(payload_bytes)),
        }
    }

    /// Waits for a request slot and `payload_bytes` payload permits (never more than the whole
    /// budget, which is at least the largest payload).
    async fn acquire(&self, payload_bytes: u32) -> Result<InFlight, CloseReason> {
        let closed = |_| CloseReason::Io(std::io::Error::other("the in-flight budget is closed"));
        let request = Arc::clone(&self.requests)
            .acquire_owned()
            .await
            .map_err(closed)?;
        let payload = if payload_bytes == 0 {
            None
        } else {
            let permits = Arc::clone(&self.payload_bytes).acquire_many_owned(payload_bytes);
            Some(permits.await.map_err(closed)?)
        };
        Ok(InFlight {
            _request: request,
            _payload: payload,
        })
    }
}

/// How the reading side ended.
enum ReadEnd {
    /// The client is done: answer what is in flight, then close.
    Orderly(CloseReason),
    /// Close at once.
    Abrupt(CloseReason),
}

/// Serves requests for `session` until the connection ends; returns why it ended. `limits` must
/// be [`NbdLimits::effective`].
pub(super) async fn serve_requests<R, W>(
    reader: R,
    writer: W,
    session: &Session,
    limits: &NbdLimits,
) -> CloseReason
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (replies, queue) = unbounded_channel();
    let budget = Budget::new(limits);
    let reading = read_requests(reader, replies, session, &budget);
    let writing = write_replies(writer, queue);
    tokio::pin!(writing);
    tokio::select! {
        end = reading => match end {
            // Every sender is gone once the requests in flight are answered; the writer then
            // ends.
            ReadEnd::Orderly(reason) => match writing.await {
                Ok(()) => reason,
                Err(error) => CloseReason::from(error),
            },
            ReadEnd::Abrupt(reason) => reason,
        },
        written = &mut writing => match written {
            Err(error) => CloseReason::from(error),
            Ok(()) => CloseReason::ClientClosed,
        },
    }
}

/// Reads requests and hands them out until the client disconnects or breaks framing.
async fn read_requests<R: AsyncRead + Unpin>(
    mut reader: R,
    replies: UnboundedSender<Reply>,
    session: &Session,
    budget: &Budget,
) -> ReadEnd {
    loop {
        let mut header_bytes = [0u8; wire::REQUEST_HEADER_BYTES];
        match read_exact_or_eof(&mut reader, &mut header_bytes).await {
            Ok(true) => {}
            Ok(false) => return ReadEnd::Orderly(CloseReason::ClientClosed),
            Err(error) => return ReadEnd::Abrupt(error.into()),
        }
        let header = match RequestHeader::parse(&header_bytes) {
            Ok(header) => header,
            Err(violation) => return ReadEnd::Abrupt(violation.into()),
        };
        let result = match wire::decide(&header, &session.geometry) {
            Decision::Disconnect => return ReadEnd::Orderly(CloseReason::Disconnected),
            Decision::Close(violation) => return ReadEnd::Abrupt(violation.into()),
            Decision::Execute(command) => {
                execute(&mut reader, &replies, &header, command, session, budget).await
            }
            Decision::Acknowledge { discard_bytes } => {
                answer_at_once(&mut reader, &replies, &header, discard_bytes, None, budget).await
            }
            Decision::Refuse {
                error,
                discard_bytes,
            } => {
                let error = Some(error);
                answer_at_once(&mut reader, &replies, &header, discard_bytes, error, budget).await
            }
        };
        if let Err(reason) = result {
            return ReadEnd::Abrupt(reason);
        }
    }
}

/// Replies to a request without the backend, after dropping its payload.
async fn answer_at_once<R: AsyncRead + Unpin>(
    reader: &mut R,
    replies: &UnboundedSender<Reply>,
    header: &RequestHeader,
    discard_bytes: u32,
    error: Option<ErrorCode>,
    budget: &Budget,
) -> Result<(), CloseReason> {
    if error.is_some() {
        tracing::debug!(?header, ?error, "NBD request refused");
    }
    let in_flight = budget.acquire(0).await?;
    skip(reader, u64::from(discard_bytes)).await?;
    let outcome = error.map_or(Outcome::Done, Outcome::Failed);
    send_reply(replies, header.cookie, outcome, in_flight);
    Ok(())
}

/// Reads the payload of a write, if any, and submits the command to the backend.
async fn execute<R: AsyncRead + Unpin>(
    reader: &mut R,
    replies: &UnboundedSender<Reply>,
    header: &RequestHeader,
    command: Command,
    session: &Session,
    budget: &Budget,
) -> Result<(), CloseReason> {
    let payload_bytes = command.reply_payload_bytes() + command.request_payload_bytes();
    let in_flight = budget.acquire(payload_bytes).await?;
    let op = client_op(reader, command).await?;
    let read_length = command.reply_payload_bytes();
    let replies = replies.clone();
    let cookie = header.cookie;
    let completion: Completion = Box::new(move |result| {
        let outcome = outcome_of(read_length, result);
        send_reply(&replies, cookie, outcome, in_flight);
    });
    session.backend.submit(op, completion);
    Ok(())
}

/// The engine operation for `command`, with the payload of a write read into an aligned buffer.
async fn client_op<R: AsyncRead + Unpin>(
    reader: &mut R,
    command: Command,
) -> Result<ClientOp, CloseReason> {
    let op = match command {
        Command::Read { offset, length } => ClientOp::Read {
            offset,
            length: u64::from(length),
        },
        Command::Write {
            offset,
            length,
            fua,
        } => ClientOp::Write {
            offset,
            data: read_payload(reader, length).await?,
            fua,
        },
        Command::Flush => ClientOp::Flush,
        Command::Trim {
            offset,
            length,
            fua,
        } => ClientOp::Trim {
            offset,
            length: u64::from(length),
            fua,
        },
        Command::WriteZeroes {
            offset,
            length,
            fua,
        } => ClientOp::WriteZeroes {
            offset,
            length: u64::from(length),
            fua,
        },
    };
    Ok(op)
}

/// Reads a write payload into an aligned buffer.
async fn read_payload<R: AsyncRead + Unpin>(
    reader: &mut R,
    length: u32,
) -> Result<IoBuf, CloseReason> {
    let mut buffer = IoBufMut::zeroed(length as usize);
    reader.read_exact(buffer.as_mut_slice()).await?;
    Ok(buffer.freeze())
}

/// The reply for a backend result; `read_length` is the length of a read (0 for other
/// commands). A read that completes with the wrong number of bytes fails with `NBD_EIO` rather
/// than breaking framing.
fn outcome_of(read_length: u32, result: Result<Option<IoBuf>, Errno>) -> Outcome {
    match result {
        Err(errno) => Outcome::Failed(ErrorCode::from_errno(errno)),
        Ok(_) if read_length == 0 => Outcome::Done,
        Ok(Some(data)) if u32::try_from(data.len()) == Ok(read_length) => Outcome::Data(data),
        Ok(data) => {
            let length = data.as_ref().map(IoBuf::len);
            tracing::error!(
                read_length,
                ?length,
                "backend read returned the wrong length"
            );
            Outcome::Failed(ErrorCode::Io)
        }
    }
}

fn send_reply(replies: &UnboundedSender<Reply>, cookie: u64, outcome: Outcome, permit: InFlight) {
    let reply = Reply {
        cookie,
        outcome,
        _in_flight: permit,
    };
    // A send fails only when the connection is already closed; the reply has nowhere to go.
    let _ = replies.send(reply);
}

/// Writes replies as they come, flushing whenever no more are waiting; ends when every sender
/// is gone (after shutting down the write side) or when writing fails.
async fn write_replies<W: AsyncWrite + Unpin>(
    writer: W,
    mut queue: UnboundedReceiver<Reply>,
) -> std::io::Result<()> {
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, writer);
    while let Some(reply) = queue.recv().await {
        write_reply(&mut writer, reply).await?;
        while let Ok(reply) = queue.try_recv() {
            write_reply(&mut writer, reply).await?;
        }
        writer.flush().await?;
    }
    writer.shutdown().await
}

async fn write_reply<W: AsyncWrite + Unpin>(
    writer: &mut BufWriter<W>,
    reply: Reply,
) -> std::io::Result<()> {
    let error = match &reply.outcome {
        Outcome::Failed(error) => Some(*error),
        Outcome::Done | Outcome::Data(_) => None,
    };
    writer
        .write_all(&wire::simple_reply_header(error, reply.cookie))
        .await?;
    if let Outcome::Data(data) = &reply.outcome {
        writer.write_all(data.as_slice()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_the_backend_result_and_guard_read_lengths() {
        let data = IoBuf::copy_from(&[7u8; 1024]);
        assert_eq!(outcome_of(0, Ok(None)), Outcome::Done);
        assert_eq!(outcome_of(0, Ok(Some(data.clone()))), Outcome::Done);
        assert_eq!(
            outcome_of(1024, Ok(Some(data.clone()))),
            Outcome::Data(data.clone())
        );
        assert_eq!(
            outcome_of(512, Ok(Some(data))),
            Outcome::Failed(ErrorCode::Io)
        );
        assert_eq!(outcome_of(512, Ok(None)), Outcome::Failed(ErrorCode::Io));
        assert_eq!(
            outcome_of(512, Err(Errno::EPERM)),
            Outcome::Failed(ErrorCode::NotPermitted)
        );
        assert_eq!(
            outcome_of(0, Err(Errno::EAGAIN)),
            Outcome::Failed(ErrorCode::Io)
        );
    }
}

//! One connected session of a volume's link: messages from the peer go to the replica, and the
//! replica's messages go to the peer, in order, until either direction fails or the owner stops
//! the session. The daemon (`manager/src/runtime/link.rs`) and the benchmark both run it.
//!
//! Each direction is its own task: a long burst of incoming writes (a catch-up backlog) must not
//! hold back the acks and pings going out, or the peer would count this node as silent and drop
//! the link. Frames already buffered never wait on the socket, so the reading loop also yields
//! to the scheduler between messages.

use std::ops::DerefMut;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::oneshot;

use super::PeerOutput;
use super::VolumeHandle;
use super::link::{LinkReceiver, LinkSender};
use crate::protocol::messages::PeerMessage;
use crate::replica::Input;

/// Runs the session; returns why it ended, after telling the replica.
///
/// `outputs` is the replica's peer channel ([`VolumeHandle::peer_channel`], or a guard over
/// it); messages left in it from an earlier session are dropped first. Sending a reason on
/// `stop`'s other end ends the session with that reason.
pub async fn run<O>(
    handle: VolumeHandle,
    mut sender: LinkSender,
    mut receiver: LinkReceiver,
    mut outputs: O,
    stop: oneshot::Receiver<String>,
) -> String
where
    O: DerefMut<Target = UnboundedReceiver<PeerOutput>> + Send + 'static,
{
    while outputs.try_recv().is_ok() {}
    handle.peer_input(Input::PeerConnected);
    let mut writing = tokio::spawn(async move {
        loop {
            match outputs.recv().await {
                Some(PeerOutput::Send(message)) => {
                    if let Err(error) = sender.send(message.kind(), &message.encode()).await {
                        return error.to_string();
                    }
                }
                Some(PeerOutput::Close(reason)) => return reason,
                None => return "the volume stopped".to_string(),
            }
        }
    });
    let reading = async {
        loop {
            let (kind, payload) = match receiver.recv().await {
                Ok(frame) => frame,
                Err(error) => return error.to_string(),
            };
            let message = match PeerMessage::decode(kind, &payload) {
                Ok(message) => message,
                Err(error) => return format!("protocol error: {error}"),
            };
            receiver.recycle(payload);
            handle.peer_input(Input::PeerMessage(message));
            tokio::task::consume_budget().await;
        }
    };
    let (reason, writer_running) = tokio::select! {
        reason = reading => (reason, true),
        written = &mut writing => (
            written.unwrap_or_else(|error| format!("the link writer failed: {error}")),
            false,
        ),
        stopped = stop => (
            stopped.unwrap_or_else(|_| "the link task stopped".to_string()),
            true,
        ),
    };
    // The writer holds the outputs and the socket: both are free once it has stopped.
    if writer_running {
        writing.abort();
        let _ = writing.await;
    }
    handle.peer_input(Input::PeerDisconnected {
        reason: reason.clone(),
    });
    reason
}

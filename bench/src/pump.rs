//! Moves messages between a volume and its link, exactly as the daemon does
//! (`manager/src/runtime/link.rs`, `session`): one task per node reads frames from the peer
//! and feeds them to the replica with [`VolumeHandle::peer_input`] on the async worker, and
//! sends what the replica queued on its peer channel, in order. The benchmark has exactly one
//! session per link, so there is no reconnect loop around it.

use engine::protocol::messages::PeerMessage;
use engine::replica::Input;
use engine::runtime::link::{LinkReceiver, LinkSender};
use engine::runtime::{PeerOutput, VolumeHandle};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::oneshot;

/// One connected session; returns why it ended (after telling the replica).
///
/// `outputs` must come from [`VolumeHandle::peer_channel`] on `handle`, installed before the
/// replica hears that the link is up.
pub async fn session(
    handle: VolumeHandle,
    mut sender: LinkSender,
    mut receiver: LinkReceiver,
    mut outputs: UnboundedReceiver<PeerOutput>,
    stopped: oneshot::Receiver<()>,
) -> String {
    // Messages left from an earlier session belong to a link that is gone.
    while outputs.try_recv().is_ok() {}
    handle.peer_input(Input::PeerConnected);
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
        }
    };
    let writing = async {
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
    };
    let reason = tokio::select! {
        reason = reading => reason,
        reason = writing => reason,
        _ = stopped => "stopped by the benchmark".to_string(),
    };
    handle.peer_input(Input::PeerDisconnected {
        reason: reason.clone(),
    });
    reason
}

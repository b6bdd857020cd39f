//! A one-connection TCP relay that shapes each direction: the stand-in for `tc netem delay
//! ... rate ...`, which this machine's kernel lacks (CONFIG_NET_SCH_NETEM is not set). Every
//! chunk read from one side is written to the other in order, `delay` after it has crossed an
//! emulated link of `rate` bytes per second (a chunk waits for the ones before it to cross).
//! The relay runs on the given runtime and ends with the connection.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Chunks (of at most 256 KiB) the relay holds per direction before it stops reading.
const QUEUED_CHUNKS_MAX: usize = 64;

/// How the relay shapes each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shaping {
    /// Added to each direction (half the added round trip).
    pub delay: Duration,
    /// The emulated link's bandwidth in each direction; `None`: unlimited.
    pub rate_bytes_per_second: Option<u64>,
}

impl Shaping {
    /// Whether the relay would change anything.
    pub fn is_none(&self) -> bool {
        self.delay.is_zero() && self.rate_bytes_per_second.is_none()
    }
}

/// Starts a relay to `target` on `runtime`; returns the address to connect to instead.
pub fn start(
    runtime: &Runtime,
    target: SocketAddr,
    shaping: Shaping,
) -> anyhow::Result<SocketAddr> {
    let listener = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .context("listening for the delay relay")?;
    let address = listener.local_addr().context("the relay's address")?;
    runtime.spawn(async move {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        let Ok(server) = TcpStream::connect(target).await else {
            return;
        };
        for stream in [&client, &server] {
            let _ = stream.set_nodelay(true);
        }
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        tokio::spawn(one_way(client_read, server_write, shaping));
        tokio::spawn(one_way(server_read, client_write, shaping));
    });
    Ok(address)
}

/// When a chunk of `bytes` arriving at `arrived` reaches the other side, given when the
/// emulated link is free; returns that and when the link is free again.
fn due(shaping: Shaping, arrived: Instant, link_free: Instant, bytes: usize) -> (Instant, Instant) {
    let Some(rate) = shaping.rate_bytes_per_second else {
        return (arrived + shaping.delay, link_free);
    };
    let crossing = Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64);
    let free = arrived.max(link_free) + crossing;
    (free + shaping.delay, free)
}

/// Copies `from` to `to`, each chunk when [`due`] says, until either side closes.
async fn one_way(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, shaping: Shaping) {
    // A bounded queue: once it is full the relay stops reading, the sender's socket fills and
    // it feels the slow link, as behind a real one (netem's default limit is 1000 packets).
    let (chunks, mut queued) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUED_CHUNKS_MAX);
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = queued.recv().await {
            // The emulated propagation delay of the link, not a wait for a condition.
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buffer = vec![0u8; 256 << 10];
    let mut link_free = Instant::now();
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(count) => {
                let (at, free) = due(shaping, Instant::now(), link_free, count);
                link_free = free;
                if chunks.send((at, buffer[..count].to_vec())).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(chunks);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_queues_chunks_behind_each_other_then_adds_the_delay() {
        let now = Instant::now();
        let shaping = Shaping {
            delay: Duration::from_millis(5),
            rate_bytes_per_second: Some(1_000_000),
        };
        // 1000 bytes take 1 ms to cross.
        let (first, free) = due(shaping, now, now, 1000);
        assert_eq!(first, now + Duration::from_millis(6));
        // Arriving at once, the second waits for the first to cross.
        let (second, free) = due(shaping, now, free, 1000);
        assert_eq!(second, now + Duration::from_millis(7));
        // Arriving after the link is free, it does not wait.
        let later = now + Duration::from_millis(10);
        assert_eq!(
            due(shaping, later, free, 1000).0,
            later + Duration::from_millis(6)
        );
        let unlimited = Shaping {
            delay: Duration::from_millis(5),
            rate_bytes_per_second: None,
        };
        assert_eq!(
            due(unlimited, now, now, 1 << 20).0,
            now + Duration::from_millis(5)
        );
    }
}

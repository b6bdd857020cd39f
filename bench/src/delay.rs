//! A one-connection TCP relay that delays each direction: the stand-in for `tc netem delay`,
//! which this machine's kernel lacks (CONFIG_NET_SCH_NETEM is not set). Every chunk read from
//! one side is written to the other `delay` after it arrived, in order; bandwidth is not
//! limited. The relay runs on the given runtime and ends with the connection.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Starts a relay to `target` on `runtime`; returns the address to connect to instead.
pub fn start(runtime: &Runtime, target: SocketAddr, delay: Duration) -> anyhow::Result<SocketAddr> {
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
        tokio::spawn(one_way(client_read, server_write, delay));
        tokio::spawn(one_way(server_read, client_write, delay));
    });
    Ok(address)
}

/// Copies `from` to `to`, each chunk `delay` after it arrived, until either side closes.
async fn one_way(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (chunks, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = due.recv().await {
            // The emulated propagation delay of the link, not a wait for a condition.
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buffer = vec![0u8; 256 << 10];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(count) => {
                if chunks
                    .send((Instant::now() + delay, buffer[..count].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(chunks);
    let _ = writer.await;
}

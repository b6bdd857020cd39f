//! A TCP relay between two nodes that adds a fixed one-way delay and can cut the link.
//!
//! It stands in for `tc netem delay`, which this kernel lacks (CONFIG_NET_SCH_NETEM is not
//! set): every chunk read from one side is written to the other `delay` after it arrived, in
//! order. `cut` closes the connections and refuses new ones until `restore`, like a network
//! outage seen by both nodes. Everything stops when the relay is dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The relay. See the module documentation.
pub struct DelayRelay {
    listen: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    cut: AtomicBool,
    stopping: AtomicBool,
    /// Both sockets of every live connection, to close them on `cut`.
    live: Mutex<Vec<TcpStream>>,
    /// Connections relayed so far.
    connections: std::sync::atomic::AtomicU64,
}

impl DelayRelay {
    /// Listens on `listen` and relays each connection to `target` with `delay` each way.
    pub fn start(listen: SocketAddr, target: SocketAddr, delay: Duration) -> Self {
        let listener = TcpListener::bind(listen).expect("relay listens");
        let shared = Arc::new(Shared {
            cut: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            live: Mutex::new(Vec::new()),
            connections: std::sync::atomic::AtomicU64::new(0),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || accept_loop(&listener, target, delay, &shared))
        };
        Self {
            listen,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        for stream in self.shared.live.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Connections relayed so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the acceptor, which then sees `stopping`.
        let _ = TcpStream::connect_timeout(&self.listen, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, target: SocketAddr, delay: Duration, shared: &Arc<Shared>) {
    for incoming in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = incoming else { continue };
        if shared.cut.load(Ordering::SeqCst) {
            continue; // Dropped: the outage refuses it.
        }
        let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let mut live = shared.live.lock().unwrap();
        for stream in [&client, &server] {
            if let Ok(clone) = stream.try_clone() {
                live.push(clone);
            }
        }
        drop(live);
        for (from, to) in [(&client, &server), (&server, &client)] {
            let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                continue;
            };
            std::thread::spawn(move || relay_one_way(from, to, delay));
        }
    }
}

/// Copies `from` to `to`, each chunk `delay` after it arrived, until either side closes.
fn relay_one_way(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (sender, receiver) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        for (due, chunk) in receiver {
            // The emulated propagation delay: this is the link's latency, not a wait for a
            // condition.
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
    let mut buffer = vec![0u8; 256 << 10];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(count) => {
                if sender
                    .send((Instant::now() + delay, buffer[..count].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(sender);
    let _ = from.shutdown(Shutdown::Both);
    let _ = writer.join();
}

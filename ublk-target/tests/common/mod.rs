//! Test support shared by the NBD integration tests: an in-memory backend, a server running in
//! its own runtime, a hand-driven NBD client over a plain socket, and bounded runs of external
//! clients.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use engine::buffer::IoBuf;
use engine::replica::ClientOp;
use engine::runtime::Completion;
use engine::types::Errno;
use ublk_target::nbd::{self, BlockBackend, ExportRegistry, ExportState, NbdLimits};

/// How long any single wait of a test may take before it counts as a hang.
pub const TEST_DEADLINE: Duration = Duration::from_secs(30);

/// Counts of what a backend was asked to do.
#[derive(Debug, Default)]
pub struct OpCounts {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub fua: AtomicU64,
    pub flushes: AtomicU64,
    pub trims: AtomicU64,
    pub write_zeroes: AtomicU64,
}

impl OpCounts {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }
}

/// A volume in memory. Requests complete on the submitting thread, or (with
/// `complete_on_other_thread`) on a thread of their own, as the engine's I/O pool does.
pub struct MemoryBackend {
    pub data: Mutex<Vec<u8>>,
    pub counts: OpCounts,
    complete_on_other_thread: bool,
}

impl MemoryBackend {
    /// A backend of `size` bytes, all `fill`.
    pub fn new(size: usize, fill: u8) -> Arc<Self> {
        Arc::new(Self {
            data: Mutex::new(vec![fill; size]),
            counts: OpCounts::default(),
            complete_on_other_thread: false,
        })
    }

    /// Like [`MemoryBackend::new`], completing every request on another thread.
    pub fn completing_elsewhere(size: usize, fill: u8) -> Arc<Self> {
        Arc::new(Self {
            data: Mutex::new(vec![fill; size]),
            counts: OpCounts::default(),
            complete_on_other_thread: true,
        })
    }

    /// A copy of `length` bytes at `offset`.
    pub fn bytes(&self, offset: usize, length: usize) -> Vec<u8> {
        self.data.lock().unwrap()[offset..offset + length].to_vec()
    }

    /// Whether every byte of the range is `value`.
    pub fn range_is(&self, offset: usize, length: usize, value: u8) -> bool {
        self.bytes(offset, length).iter().all(|&b| b == value)
    }

    fn execute(&self, op: ClientOp) -> Result<Option<IoBuf>, Errno> {
        let mut data = self.data.lock().unwrap();
        let range = |offset: u64, length: u64| -> Result<std::ops::Range<usize>, Errno> {
            let start = usize::try_from(offset).map_err(|_| Errno::EINVAL)?;
            let end = start
                .checked_add(usize::try_from(length).map_err(|_| Errno::EINVAL)?)
                .ok_or(Errno::EINVAL)?;
            if end > data.len() || start % 512 != 0 || end % 512 != 0 {
                return Err(Errno::EINVAL);
            }
            Ok(start..end)
        };
        match op {
            ClientOp::Read { offset, length } => {
                self.counts.reads.fetch_add(1, Ordering::SeqCst);
                let range = range(offset, length)?;
                Ok(Some(IoBuf::copy_from(&data[range])))
            }
            ClientOp::Write {
                offset,
                data: bytes,
                fua,
            } => {
                self.counts.writes.fetch_add(1, Ordering::SeqCst);
                self.counts.fua.fetch_add(u64::from(fua), Ordering::SeqCst);
                assert!(bytes.is_aligned_to(4096), "write payloads are aligned");
                let range = range(offset, bytes.len() as u64)?;
                data[range].copy_from_slice(bytes.as_slice());
                Ok(None)
            }
            ClientOp::Flush => {
                self.counts.flushes.fetch_add(1, Ordering::SeqCst);
                Ok(None)
            }
            ClientOp::Trim {
                offset,
                length,
                fua,
            } => {
                self.counts.trims.fetch_add(1, Ordering::SeqCst);
                self.counts.fua.fetch_add(u64::from(fua), Ordering::SeqCst);
                let range = range(offset, length)?;
                data[range].fill(0);
                Ok(None)
            }
            ClientOp::WriteZeroes {
                offset,
                length,
                fua,
            } => {
                self.counts.write_zeroes.fetch_add(1, Ordering::SeqCst);
                self.counts.fua.fetch_add(u64::from(fua), Ordering::SeqCst);
                let range = range(offset, length)?;
                data[range].fill(0);
                Ok(None)
            }
        }
    }
}

impl BlockBackend for MemoryBackend {
    fn size_bytes(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }

    fn submit(&self, op: ClientOp, completion: Completion) {
        let result = self.execute(op);
        if self.complete_on_other_thread {
            std::thread::spawn(move || completion(result));
        } else {
            completion(result);
        }
    }
}

/// A backend that holds every request until the test releases it, recording how many were
/// held at once.
#[derive(Default)]
pub struct HoldingBackend {
    held: Mutex<Vec<Completion>>,
    changed: Condvar,
    pub submitted: AtomicUsize,
    pub held_max: AtomicUsize,
}

impl HoldingBackend {
    /// Waits until at least `count` requests are held; returns how many are.
    pub fn wait_held(&self, count: usize) -> usize {
        let deadline = Instant::now() + TEST_DEADLINE;
        let mut held = self.held.lock().unwrap();
        while held.len() < count {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("{} requests held, waited for {count}", held.len()));
            held = self.changed.wait_timeout(held, left).unwrap().0;
        }
        held.len()
    }

    /// Completes the oldest held request successfully (with zeros for a read of `length`).
    pub fn release_one(&self, read_length: usize) {
        let completion = self.held.lock().unwrap().remove(0);
        completion(Ok(Some(IoBuf::zeroed(read_length))));
    }

    pub fn held_now(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}

impl BlockBackend for HoldingBackend {
    fn size_bytes(&self) -> u64 {
        1 << 20
    }

    fn submit(&self, _op: ClientOp, completion: Completion) {
        let mut held = self.held.lock().unwrap();
        held.push(completion);
        self.submitted.fetch_add(1, Ordering::SeqCst);
        self.held_max.fetch_max(held.len(), Ordering::SeqCst);
        self.changed.notify_all();
    }
}

/// A server listening on 127.0.0.1 in a runtime of its own; dropping it stops everything.
pub struct TestServer {
    pub port: u16,
    pub registry: Arc<ExportRegistry>,
    task: tokio::task::JoinHandle<()>,
    runtime: tokio::runtime::Runtime,
}

impl TestServer {
    pub fn start(limits: NbdLimits) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let registry = Arc::new(ExportRegistry::new());
        let task = runtime.spawn(nbd::serve(listener, Arc::clone(&registry), limits));
        Self {
            port,
            registry,
            task,
            runtime,
        }
    }

    pub fn serve(&self, name: &str, backend: Arc<dyn BlockBackend>) {
        self.registry.set(name, ExportState::Serving(backend));
    }

    pub fn uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }

    /// Aborts the server task (as a daemon drops the `serve` future) and waits for it to end.
    pub fn stop(&mut self) {
        self.task.abort();
        let task = &mut self.task;
        let ended = self
            .runtime
            .block_on(async { tokio::time::timeout(TEST_DEADLINE, task).await });
        assert!(ended.is_ok(), "the server task did not end");
    }

    /// Whether the accept loop is still running.
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }
}

/// Runs an external client, killed after [`TEST_DEADLINE`] (through coreutils `timeout`).
/// Panics with installation advice when the program is missing.
pub fn run_client(program: &str, args: &[&str]) -> Output {
    run_client_with_env(program, args, &[])
}

/// Like [`run_client`], with environment variables set for the client.
pub fn run_client_with_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    require_program(program);
    let output = Command::new("timeout")
        .args([
            "--kill-after=5",
            &TEST_DEADLINE.as_secs().to_string(),
            program,
        ])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("running coreutils `timeout`");
    assert_ne!(
        output.status.code(),
        Some(124),
        "{program} {args:?} timed out; stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Starts an external client in the background, killed after [`TEST_DEADLINE`].
pub fn spawn_client(program: &str, args: &[&str]) -> std::process::Child {
    require_program(program);
    Command::new("timeout")
        .args([
            "--kill-after=5",
            &TEST_DEADLINE.as_secs().to_string(),
            program,
        ])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running coreutils `timeout`")
}

fn require_program(program: &str) {
    let package = match program {
        "nbdinfo" | "nbdsh" | "nbdcopy" => "libnbd-bin",
        "qemu-io" | "qemu-img" => "qemu-utils",
        _ => "the package that provides it",
    };
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|directory| directory.join(program).is_file())
    });
    assert!(
        found,
        "`{program}` is not installed: these tests drive real NBD clients; install {package} \
         (apt-get install -y {package}; scripts/test.sh does it)"
    );
}

/// Asserts that a client run succeeded, showing its output otherwise.
pub fn assert_success(output: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A hand-driven NBD client over a blocking socket, every read bounded by [`TEST_DEADLINE`].
/// Messages are built here byte by byte from the protocol document, independently of the
/// server's encoder.
pub struct RawClient {
    pub stream: TcpStream,
}

pub const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1;
pub const NBD_FLAG_C_NO_ZEROES: u32 = 2;
pub const NBD_OPT_EXPORT_NAME: u32 = 1;
pub const NBD_OPT_GO: u32 = 7;
pub const NBD_REP_ACK: u32 = 1;
pub const NBD_REP_INFO: u32 = 3;
pub const NBD_CMD_READ: u16 = 0;
pub const NBD_CMD_WRITE: u16 = 1;
pub const NBD_CMD_DISC: u16 = 2;
pub const NBD_CMD_FLUSH: u16 = 3;

/// One option reply: type and data.
#[derive(Debug)]
pub struct OptionReply {
    pub option: u32,
    pub reply_type: u32,
    pub data: Vec<u8>,
}

impl RawClient {
    /// Connects and checks the greeting.
    pub fn connect(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(TEST_DEADLINE)).unwrap();
        stream.set_write_timeout(Some(TEST_DEADLINE)).unwrap();
        let mut client = Self { stream };
        let greeting = client.read_bytes(18);
        assert_eq!(&greeting[0..16], b"NBDMAGICIHAVEOPT");
        assert_eq!(&greeting[16..18], &[0, 3], "FIXED_NEWSTYLE | NO_ZEROES");
        client
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn send_client_flags(&mut self, flags: u32) {
        self.send(&flags.to_be_bytes());
    }

    pub fn send_option(&mut self, option: u32, data: &[u8]) {
        let mut bytes = b"IHAVEOPT".to_vec();
        bytes.extend_from_slice(&option.to_be_bytes());
        bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
        bytes.extend_from_slice(data);
        self.send(&bytes);
    }

    pub fn read_bytes(&mut self, count: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; count];
        self.stream.read_exact(&mut bytes).unwrap();
        bytes
    }

    pub fn read_option_reply(&mut self) -> OptionReply {
        let header = self.read_bytes(20);
        assert_eq!(&header[0..8], &0x0003_e889_0455_65a9u64.to_be_bytes());
        let option = u32::from_be_bytes(header[8..12].try_into().unwrap());
        let reply_type = u32::from_be_bytes(header[12..16].try_into().unwrap());
        let length = u32::from_be_bytes(header[16..20].try_into().unwrap());
        let data = self.read_bytes(length as usize);
        OptionReply {
            option,
            reply_type,
            data,
        }
    }

    /// `NBD_OPT_GO` for `name` asking for the block sizes; returns the information replies by
    /// type, or the error reply.
    pub fn go(&mut self, name: &str) -> Result<HashMap<u16, Vec<u8>>, OptionReply> {
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&1u16.to_be_bytes());
        data.extend_from_slice(&3u16.to_be_bytes()); // NBD_INFO_BLOCK_SIZE
        self.send_option(NBD_OPT_GO, &data);
        let mut information = HashMap::new();
        loop {
            let reply = self.read_option_reply();
            assert_eq!(reply.option, NBD_OPT_GO);
            match reply.reply_type {
                NBD_REP_INFO => {
                    let info_type = u16::from_be_bytes([reply.data[0], reply.data[1]]);
                    information.insert(info_type, reply.data[2..].to_vec());
                }
                NBD_REP_ACK => return Ok(information),
                _ => return Err(reply),
            }
        }
    }

    /// Connects, negotiates fixed newstyle with no zeroes and enters transmission with GO.
    pub fn transmission(port: u16, name: &str) -> Self {
        let mut client = Self::connect(port);
        client.send_client_flags(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
        client.go(name).expect("NBD_OPT_GO succeeds");
        client
    }

    pub fn send_request(
        &mut self,
        command: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u32,
    ) {
        let mut bytes = 0x2560_9513u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&flags.to_be_bytes());
        bytes.extend_from_slice(&command.to_be_bytes());
        bytes.extend_from_slice(&cookie.to_be_bytes());
        bytes.extend_from_slice(&offset.to_be_bytes());
        bytes.extend_from_slice(&length.to_be_bytes());
        self.send(&bytes);
    }

    /// Reads a simple reply header; returns (error, cookie).
    pub fn read_simple_reply(&mut self) -> (u32, u64) {
        let header = self.read_bytes(16);
        assert_eq!(&header[0..4], &0x6744_6698u32.to_be_bytes());
        (
            u32::from_be_bytes(header[4..8].try_into().unwrap()),
            u64::from_be_bytes(header[8..16].try_into().unwrap()),
        )
    }

    pub fn write(&mut self, cookie: u64, offset: u64, data: &[u8]) -> u32 {
        self.send_request(NBD_CMD_WRITE, 0, cookie, offset, data.len() as u32);
        self.send(data);
        let (error, replied) = self.read_simple_reply();
        assert_eq!(replied, cookie);
        error
    }

    pub fn read(&mut self, cookie: u64, offset: u64, length: u32) -> Result<Vec<u8>, u32> {
        self.send_request(NBD_CMD_READ, 0, cookie, offset, length);
        let (error, replied) = self.read_simple_reply();
        assert_eq!(replied, cookie);
        if error == 0 {
            Ok(self.read_bytes(length as usize))
        } else {
            Err(error)
        }
    }

    /// Asserts that the server closes the connection (EOF or reset) without sending more.
    pub fn expect_closed(&mut self) {
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => {}
            Ok(_) => panic!("expected the server to close, got data"),
            Err(error) => assert!(
                matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ),
                "expected the server to close, got {error}"
            ),
        }
    }

    pub fn close_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

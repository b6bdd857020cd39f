//! The quorum disk's I/O: the two slots of `[arbitration] quorum_disk`, read and written with
//! `O_DIRECT | O_DSYNC` (so a read sees the other node's write on a shared device, not this
//! host's page cache; a file on a file system without `O_DIRECT` is opened without it), on
//! the blocking pool and bounded in time. The decisions are [`crate::cluster::quorum`].

use std::fs::File;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use engine::buffer::IoBufMut;

use crate::cluster::quorum::{QuorumDisk, SLOT_BYTES, Slot, Step, Verdict};
use crate::cluster::witness::Claims;

/// One node's access to the quorum disk.
#[derive(Debug)]
pub struct QuorumClient {
    path: PathBuf,
    me: usize,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    file: File,
    disk: QuorumDisk,
    started: Instant,
}

impl QuorumClient {
    /// Opens `path` for node `me` (0 or 1) of cluster `cluster`, with leases of `lease_ms`.
    pub fn open(path: &Path, cluster: &str, me: usize, lease_ms: u64) -> Result<Self, String> {
        let open = |direct: bool| {
            let mut options = std::fs::OpenOptions::new();
            options.read(true).write(true);
            let flags = if direct {
                libc::O_DIRECT | libc::O_DSYNC
            } else {
                libc::O_DSYNC
            };
            options.custom_flags(flags).open(path)
        };
        let file = match open(true) {
            Ok(file) => file,
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                open(false).map_err(|e| format!("quorum disk {}: {e}", path.display()))?
            }
            Err(error) => return Err(format!("quorum disk {}: {error}", path.display())),
        };
        let length = file
            .metadata()
            .map_err(|e| format!("quorum disk {}: {e}", path.display()))?
            .len();
        // A block device reports 0 here; a file must hold both slots.
        if file.metadata().is_ok_and(|m| m.is_file()) && length < 2 * SLOT_BYTES as u64 {
            return Err(format!(
                "quorum disk {}: {length} bytes, needs at least {} (two 4 KiB slots)",
                path.display(),
                2 * SLOT_BYTES
            ));
        }
        let own = read_slot(&file, me)?;
        let me_byte = u8::try_from(me).map_err(|_| "node index".to_string())?;
        let disk = QuorumDisk::new(cluster, me_byte, lease_ms, own, 0);
        Ok(Self {
            path: path.to_path_buf(),
            me,
            inner: Arc::new(Mutex::new(Inner {
                file,
                disk,
                started: Instant::now(),
            })),
        })
    }

    /// Asks for (or renews) the lease. `Err`: the disk did not answer within `timeout`, or
    /// holds something that is not this cluster's slots.
    pub async fn acquire(&self, claims: Claims, timeout: Duration) -> Result<Verdict, String> {
        let me = self.me;
        self.blocking(timeout, move |inner| {
            let peer = read_slot(&inner.file, 1 - me)?;
            let now = inner.now_ms();
            inner.disk.observe(peer, now)?;
            match inner.disk.acquire(claims, now) {
                Step::Answer(verdict) => Ok(verdict),
                Step::Write(block, verdict) => {
                    write_slot(&inner.file, me, &block)?;
                    Ok(verdict)
                }
                Step::Claim(block) => {
                    write_slot(&inner.file, me, &block)?;
                    let peer = read_slot(&inner.file, 1 - me)?;
                    let now = inner.now_ms();
                    inner.disk.observe(peer, now)?;
                    match inner.disk.after_claim(claims, now) {
                        Step::Write(block, verdict) => {
                            write_slot(&inner.file, me, &block)?;
                            Ok(verdict)
                        }
                        Step::Answer(verdict) => Ok(verdict),
                        Step::Claim(_) => Err("quorum disk: a second claim".to_string()),
                    }
                }
            }
        })
        .await
    }

    /// Gives the lease back, keeping what `claims` say of this node's data.
    pub async fn release(&self, claims: Claims, timeout: Duration) -> Result<(), String> {
        let me = self.me;
        self.blocking(timeout, move |inner| {
            let block = inner.disk.release(claims);
            write_slot(&inner.file, me, &block)
        })
        .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        timeout: Duration,
        work: impl FnOnce(&mut Inner) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let inner = Arc::clone(&self.inner);
        let task = tokio::task::spawn_blocking(move || {
            let mut inner = inner.lock().unwrap_or_else(PoisonError::into_inner);
            work(&mut inner)
        });
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(error)) => Err(format!("quorum disk: {error}")),
            Err(_) => Err(format!(
                "quorum disk {}: no answer within {} ms",
                self.path.display(),
                timeout.as_millis()
            )),
        }
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

fn read_slot(file: &File, node: usize) -> Result<Option<Slot>, String> {
    let mut buffer = IoBufMut::zeroed(SLOT_BYTES);
    file.read_exact_at(buffer.as_mut_slice(), (node * SLOT_BYTES) as u64)
        .map_err(|e| format!("quorum disk: reading slot {node}: {e}"))?;
    Slot::decode(buffer.as_slice()).map_err(|e| format!("quorum disk slot {node}: {e}"))
}

fn write_slot(file: &File, node: usize, block: &[u8]) -> Result<(), String> {
    let mut buffer = IoBufMut::zeroed(SLOT_BYTES);
    buffer.as_mut_slice().copy_from_slice(block);
    file.write_all_at(buffer.as_slice(), (node * SLOT_BYTES) as u64)
        .map_err(|e| format!("quorum disk: writing slot {node}: {e}"))
}

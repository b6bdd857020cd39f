//! A file or block device as backing store, with positional I/O.
//!
//! Three descriptors on the same file: one with `O_DIRECT` for aligned I/O (when the file system
//! or device supports it), one buffered for I/O that is not aligned to the device's direct-I/O
//! alignment, and one with `O_DSYNC` for FUA writes, which are durable when the call returns
//! without flushing anything else. Linux keeps the page cache coherent between them: direct I/O
//! writes back and invalidates cached pages of its range first.
//!
//! This is the documented alternative to io_uring: a pool of threads doing blocking `pread` and
//! `pwrite`. It needs no unsafe code (the engine has none), and the queue depth is the number of
//! threads. Discard is `fallocate(PUNCH_HOLE)` and write-zeroes `fallocate(ZERO_RANGE)`, both of
//! which work on files and on block devices, with a fallback to writing zeros.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{FallocateFlags, fallocate};

use crate::buffer::{IoBuf, IoBufMut};
use crate::error::{Error, Result};
use crate::replica::StorageOp;
use crate::types::{Errno, SECTOR_BYTES};

const ZERO_CHUNK_BYTES: usize = 1 << 20;

/// An open backing store.
#[derive(Debug)]
pub struct Backing {
    path: PathBuf,
    buffered: File,
    direct: Option<File>,
    durable: File,
    direct_align_bytes: u64,
    size_bytes: u64,
    block_device: bool,
}

impl Backing {
    /// Opens `path` (a regular file or a block device) for reading and writing.
    pub fn open(path: &Path) -> Result<Self> {
        let context = |what: &str| format!("{what} {}", path.display());
        let buffered = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(context("opening"), e))?;
        let metadata = buffered
            .metadata()
            .map_err(|e| Error::io(context("inspecting"), e))?;
        let block_device = metadata.file_type().is_block_device();
        if !metadata.is_file() && !block_device {
            return Err(Error::InvalidConfig(format!(
                "{} is neither a regular file nor a block device",
                path.display()
            )));
        }
        let size_bytes = (&buffered)
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::io(context("sizing"), e))?;
        let direct = open_direct(path, 0);
        let direct_align_bytes = direct
            .as_ref()
            .map_or(0, |file| probe_alignment(file, size_bytes));
        let direct = direct.filter(|_| direct_align_bytes > 0);
        let durable = open_direct(path, libc::O_DSYNC)
            .filter(|_| direct.is_some())
            .map_or_else(
                || {
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .custom_flags(libc::O_DSYNC)
                        .open(path)
                },
                Ok,
            )
            .map_err(|e| Error::io(context("opening (O_DSYNC)"), e))?;
        Ok(Self {
            path: path.to_path_buf(),
            buffered,
            direct,
            durable,
            direct_align_bytes,
            size_bytes,
            block_device,
        })
    }

    /// Size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The alignment direct I/O needs, or `None` if direct I/O is not available.
    pub fn direct_align_bytes(&self) -> Option<u64> {
        self.direct.as_ref().map(|_| self.direct_align_bytes)
    }

    /// Whether this is a block device.
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// Performs one storage operation.
    pub fn execute(&self, op: &StorageOp) -> std::result::Result<Option<IoBuf>, Errno> {
        match op {
            StorageOp::Read { offset, length } => self.read(*offset, *length).map(Some),
            StorageOp::Write { offset, data, fua } => {
                self.write(*offset, data, *fua).map(|()| None)
            }
            StorageOp::Flush => self.buffered.sync_data().map_err(errno).map(|()| None),
            StorageOp::Discard {
                offset,
                length,
                fua,
            } => {
                let flags =
                    FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
                self.zero_range(*offset, *length, flags, *fua)
                    .map(|()| None)
            }
            StorageOp::WriteZeroes {
                offset,
                length,
                fua,
            } => {
                let flags =
                    FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
                self.zero_range(*offset, *length, flags, *fua)
                    .map(|()| None)
            }
        }
    }

    /// Reads `length` bytes at `offset` into a new aligned buffer.
    pub fn read(&self, offset: u64, length: u64) -> std::result::Result<IoBuf, Errno> {
        let mut buffer = IoBufMut::zeroed(usize::try_from(length).map_err(|_| Errno::EINVAL)?);
        let file = self.file_for(offset, length);
        file.read_exact_at(buffer.as_mut_slice(), offset)
            .map_err(errno)?;
        Ok(buffer.freeze())
    }

    fn write(&self, offset: u64, data: &IoBuf, fua: bool) -> std::result::Result<(), Errno> {
        let length = data.len() as u64;
        let aligned = self.is_direct_aligned(offset, length) && data.is_aligned_to(4096);
        let file = match (fua, aligned) {
            (true, true) => &self.durable,
            (true, false) if self.direct.is_none() => &self.durable,
            (true, false) => {
                self.buffered
                    .write_all_at(data.as_slice(), offset)
                    .map_err(errno)?;
                return self.buffered.sync_data().map_err(errno);
            }
            (false, true) => self.direct.as_ref().expect("aligned implies direct"),
            (false, false) => &self.buffered,
        };
        file.write_all_at(data.as_slice(), offset).map_err(errno)
    }

    fn zero_range(
        &self,
        offset: u64,
        length: u64,
        flags: FallocateFlags,
        fua: bool,
    ) -> std::result::Result<(), Errno> {
        let (start, len) = (i64::try_from(offset), i64::try_from(length));
        let (Ok(start), Ok(len)) = (start, len) else {
            return Err(Errno::EINVAL);
        };
        if fallocate(&self.buffered, flags, start, len).is_err() {
            // Not supported here: write the zeros.
            let zeros = IoBuf::zeroed(ZERO_CHUNK_BYTES);
            let mut at = offset;
            while at < offset + length {
                let chunk = (offset + length - at).min(ZERO_CHUNK_BYTES as u64);
                self.write(at, &zeros.slice(0..chunk as usize), false)?;
                at += chunk;
            }
        }
        if fua {
            self.buffered.sync_data().map_err(errno)
        } else {
            Ok(())
        }
    }

    fn is_direct_aligned(&self, offset: u64, length: u64) -> bool {
        let align = self.direct_align_bytes;
        self.direct.is_some() && offset.is_multiple_of(align) && length.is_multiple_of(align)
    }

    fn file_for(&self, offset: u64, length: u64) -> &File {
        match &self.direct {
            Some(direct) if self.is_direct_aligned(offset, length) => direct,
            _ => &self.buffered,
        }
    }

    /// Makes everything written durable.
    pub fn sync(&self) -> Result<()> {
        self.buffered
            .sync_data()
            .map_err(|e| Error::io(format!("syncing {}", self.path.display()), e))
    }
}

fn open_direct(path: &Path, extra_flags: i32) -> Option<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT | extra_flags)
        .open(path)
        .ok()
}

/// The smallest alignment at which a direct read works (512 or 4096), or 0 if none does.
fn probe_alignment(file: &File, size_bytes: u64) -> u64 {
    for align in [SECTOR_BYTES, 4096] {
        if size_bytes < 2 * align {
            continue;
        }
        let mut buffer = IoBufMut::zeroed(align as usize);
        if file.read_exact_at(buffer.as_mut_slice(), align).is_ok() {
            return align;
        }
    }
    0
}

fn errno(error: std::io::Error) -> Errno {
    Errno(error.raw_os_error().unwrap_or(libc::EIO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_writes_and_zeroing_on_a_file() {
        let dir = std::env::temp_dir().join(format!("tandem-backing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("disk.img");
        std::fs::write(&path, vec![0u8; 1 << 20]).expect("create");
        let backing = Backing::open(&path).expect("open");
        assert_eq!(backing.size_bytes(), 1 << 20);
        let data = IoBuf::copy_from(&[7u8; 8192]);
        backing
            .execute(&StorageOp::Write {
                offset: 4096,
                data,
                fua: true,
            })
            .expect("write");
        let unaligned = IoBuf::copy_from(&[9u8; 512]);
        backing
            .execute(&StorageOp::Write {
                offset: 512,
                data: unaligned,
                fua: false,
            })
            .expect("write");
        backing.execute(&StorageOp::Flush).expect("flush");
        let read = backing.read(0, 16_384).expect("read");
        assert!(read.as_slice()[512..1024].iter().all(|&b| b == 9));
        assert!(read.as_slice()[4096..12_288].iter().all(|&b| b == 7));
        backing
            .execute(&StorageOp::Discard {
                offset: 4096,
                length: 4096,
                fua: false,
            })
            .expect("discard");
        backing
            .execute(&StorageOp::WriteZeroes {
                offset: 8192,
                length: 4096,
                fua: true,
            })
            .expect("zeroes");
        let read = backing.read(4096, 8192).expect("read");
        assert!(read.as_slice().iter().all(|&b| b == 0));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}

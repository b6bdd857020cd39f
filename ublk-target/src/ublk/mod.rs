//! The ublk frontend: a volume as `/dev/ublkbN` (Linux 6.0 or later, module `ublk_drv`), served
//! through libublk.
//!
//! [`UblkDevice::start`] adds the device and runs one thread per queue ([`queue`]); each tag of a
//! queue is a task that takes the kernel's request, copies its data with `UBLK_F_USER_COPY`
//! (the engine owns the bytes it compresses, encrypts and journals), submits it to the
//! [`BlockBackend`], and commits the result. Flush, FUA, discard and write-zeroes pass through.
//!
//! Devices are created with `UBLK_F_USER_RECOVERY_REISSUE`: when the daemon dies, the kernel
//! keeps `/dev/ublkbN` (and whatever is mounted on it) and holds new I/O; the requests the dead
//! daemon had not completed are reissued to the next one. A restarted daemon reattaches with
//! [`UblkDevice::start`] and `recover = Some(id)` ([`UblkDevice::recoverable`] tells whether the
//! kernel still holds such a device).

mod queue;

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::UblkDev;
use libublk::{UblkFlags, sys};

use crate::BlockBackend;

/// The control device the kernel module creates.
const CONTROL: &str = "/dev/ublk-control";

/// How long adding (or reattaching) a device may take.
const START_TIMEOUT: Duration = Duration::from_secs(45);

/// How a device is shaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UblkOptions {
    /// Hardware queues, each served by its own thread.
    pub queues: u16,
    /// Requests in flight per queue.
    pub depth: u16,
    /// Logical block size: 512 or 4096.
    pub logical_block_bytes: u32,
    /// The largest request the kernel sends.
    pub request_bytes_max: u32,
}

impl Default for UblkOptions {
    /// min(cores, 4) queues of depth 128, 512-byte blocks, 1 MiB requests.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            queues: u16::try_from(cores.min(4)).unwrap_or(4),
            depth: 128,
            logical_block_bytes: 512,
            request_bytes_max: 1 << 20,
        }
    }
}

/// Whether this kernel can serve ublk devices: the reason in one line if not.
pub fn check_available() -> Result<(), String> {
    if Path::new(CONTROL).exists() {
        Ok(())
    } else {
        Err(format!(
            "{CONTROL} is missing: load the kernel module ublk_drv (`modprobe ublk_drv`; Linux \
             6.0 or later), or set frontend = \"nbd\""
        ))
    }
}

/// A running `/dev/ublkbN`.
#[derive(Debug)]
pub struct UblkDevice {
    id: u32,
    thread: Option<JoinHandle<()>>,
}

impl UblkDevice {
    /// Adds a device serving `backend` (or, with `recover`, reattaches to the device a dead
    /// daemon left) and returns once the kernel has started it.
    pub fn start(
        backend: Arc<dyn BlockBackend>,
        options: UblkOptions,
        recover: Option<u32>,
    ) -> Result<Self, String> {
        check_available()?;
        if ![512, 4096].contains(&options.logical_block_bytes) {
            return Err(format!(
                "logical block size {} is not 512 or 4096",
                options.logical_block_bytes
            ));
        }
        let (started, outcome) = mpsc::channel::<Result<u32, String>>();
        let thread = std::thread::Builder::new()
            .name("tandem-ublk".to_string())
            .spawn(move || run(backend, options, recover, &started))
            .map_err(|e| format!("cannot start the ublk thread: {e}"))?;
        match outcome.recv_timeout(START_TIMEOUT) {
            Ok(Ok(id)) => Ok(Self {
                id,
                thread: Some(thread),
            }),
            Ok(Err(error)) => {
                let _ = thread.join();
                Err(error)
            }
            Err(_) => Err(format!(
                "the ublk device did not start within {} s",
                START_TIMEOUT.as_secs()
            )),
        }
    }

    /// The device number N of `/dev/ublkbN`.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// `/dev/ublkbN`.
    pub fn path(&self) -> String {
        format!("/dev/ublkb{}", self.id)
    }

    /// Whether something holds the block device open exclusively (a mount, for one).
    pub fn in_use(&self) -> bool {
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(self.path());
        matches!(opened, Err(e) if e.raw_os_error() == Some(libc::EBUSY))
    }

    /// Whether the kernel holds device `id`, left by a daemon that died, waiting for a new one.
    pub fn recoverable(id: u32) -> bool {
        let Ok(id) = i32::try_from(id) else {
            return false;
        };
        UblkCtrl::new_simple(id).is_ok_and(|ctrl| {
            let state = u32::from(ctrl.dev_info().state);
            state == sys::UBLK_S_DEV_QUIESCED || state == sys::UBLK_S_DEV_LIVE
        })
    }

    /// Stops and deletes the device: `/dev/ublkbN` goes away.
    pub fn stop(mut self) -> Result<(), String> {
        let id = i32::try_from(self.id).map_err(|_| "device id out of range".to_string())?;
        let ctrl = UblkCtrl::new_simple(id).map_err(|e| format!("ublk device {id}: {e}"))?;
        ctrl.kill_dev()
            .map_err(|e| format!("stopping ublk device {id}: {e}"))?;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // A device added by this daemon is deleted when its thread ends; a reattached one is
        // not, so delete it here (an error means it is gone already).
        let _ = ctrl.del_dev();
        Ok(())
    }

    /// Leaves the device to the kernel (the daemon is going away while the device is in use):
    /// its I/O waits for the next daemon, which reattaches.
    pub fn abandon(mut self) {
        drop(self.thread.take());
    }
}

/// The device thread: adds or recovers the device, runs its queues until it is stopped.
fn run(
    backend: Arc<dyn BlockBackend>,
    options: UblkOptions,
    recover: Option<u32>,
    started: &mpsc::Sender<Result<u32, String>>,
) {
    let ctrl = match control(options, recover) {
        Ok(ctrl) => ctrl,
        Err(error) => {
            let _ = started.send(Err(error));
            return;
        }
    };
    let size_bytes = backend.size_bytes();
    let init = move |dev: &mut UblkDev| {
        set_params(dev, options, size_bytes);
        Ok(())
    };
    let queues = move |qid: u16, dev: &UblkDev| queue::run(qid, dev, &backend);
    let report = started.clone();
    let up = move |ctrl: &UblkCtrl| {
        let _ = report.send(Ok(ctrl.dev_info().dev_id));
    };
    if let Err(error) = ctrl.run_target(init, queues, up) {
        let _ = started.send(Err(format!("ublk device: {error}")));
    }
}

fn control(options: UblkOptions, recover: Option<u32>) -> Result<UblkCtrl, String> {
    let flags = u64::from(sys::UBLK_F_USER_COPY)
        | u64::from(sys::UBLK_F_USER_RECOVERY)
        | u64::from(sys::UBLK_F_USER_RECOVERY_REISSUE);
    let (id, dev_flags) = match recover {
        Some(id) => (
            i32::try_from(id).map_err(|_| format!("ublk device id {id} out of range"))?,
            UblkFlags::UBLK_DEV_F_RECOVER_DEV,
        ),
        None => (-1, UblkFlags::UBLK_DEV_F_ADD_DEV),
    };
    let ctrl = UblkCtrlBuilder::default()
        .name("tandem")
        .id(id)
        .nr_queues(options.queues)
        .depth(options.depth)
        .io_buf_bytes(options.request_bytes_max)
        .ctrl_flags(flags)
        .dev_flags(dev_flags)
        .build()
        .map_err(|e| match recover {
            Some(id) => format!("reattaching ublk device {id}: {e}"),
            None => format!("adding a ublk device: {e}"),
        })?;
    if let Some(id) = recover {
        ctrl.start_user_recover()
            .map_err(|e| format!("reattaching ublk device {id}: {e}"))?;
    }
    Ok(ctrl)
}

/// Size, block sizes, cache and FUA, discard and write-zeroes limits. The rings get room for
/// one data copy per tag besides the tag's command, plus the queue's wake-up poll.
fn set_params(dev: &mut UblkDev, options: UblkOptions, size_bytes: u64) {
    let depth = dev.dev_info.queue_depth;
    dev.tgt.sq_depth = depth.saturating_mul(2).saturating_add(2);
    dev.tgt.cq_depth = depth.saturating_mul(2).saturating_add(2);
    dev.tgt.dev_size = size_bytes;
    let logical_shift = options.logical_block_bytes.trailing_zeros() as u8;
    let max_sectors = dev.dev_info.max_io_buf_bytes >> 9;
    dev.tgt.params = sys::ublk_params {
        types: sys::UBLK_PARAM_TYPE_BASIC | sys::UBLK_PARAM_TYPE_DISCARD,
        basic: sys::ublk_param_basic {
            attrs: sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA,
            logical_bs_shift: logical_shift,
            physical_bs_shift: 12,
            io_opt_shift: 12,
            io_min_shift: logical_shift,
            max_sectors,
            dev_sectors: size_bytes >> 9,
            ..Default::default()
        },
        discard: sys::ublk_param_discard {
            discard_granularity: 4096,
            max_discard_sectors: max_sectors,
            max_write_zeroes_sectors: max_sectors,
            max_discard_segments: 1,
            ..Default::default()
        },
        ..Default::default()
    };
}

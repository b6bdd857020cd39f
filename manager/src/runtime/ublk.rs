//! The ublk frontend of one volume: `/dev/ublkbN` exists while this node is primary, and a daemon
//! restarted after it died (or was stopped while the device was in use) reattaches to the
//! device the kernel kept, so a mounted file system never notices more than a pause.
//!
//! The device number is kept in `<state_dir>/<volume>.ublk` while the device exists. Every
//! change of the device runs under one lock, off the async workers (adding, stopping or
//! reattaching a device waits on the kernel).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use engine::replica::AdminCommand;
use engine::runtime::VolumeHandle;
use engine::state::Role;
use ublk_target::BlockBackend;
use ublk_target::ublk::{self, UblkDevice, UblkOptions};

/// The frontend; see the module documentation.
#[derive(Debug)]
pub struct UblkFrontend {
    volume: String,
    options: UblkOptions,
    id_file: PathBuf,
    slot: Mutex<Slot>,
    /// What status shows (device path, error), published after every change: status never
    /// waits for a change under way, and never sees a half-made one.
    shown: Mutex<(Option<String>, Option<String>)>,
}

#[derive(Debug, Default)]
struct Slot {
    device: Option<UblkDevice>,
    /// A device a previous daemon left, to reattach once this node is primary again.
    reattach: Option<u32>,
    /// Why the device is not there although it should be.
    error: Option<String>,
}

impl UblkFrontend {
    /// The frontend, or the one-line reason this kernel cannot have it. A device the previous
    /// daemon left is noted for reattaching.
    pub fn new(volume: &str, options: UblkOptions, state_dir: PathBuf) -> Result<Self, String> {
        ublk::check_available()?;
        let id_file = state_dir.join(format!("{volume}.ublk"));
        let left = std::fs::read_to_string(&id_file)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok());
        let reattach = left.filter(|&id| UblkDevice::recoverable(id));
        if let Some(id) = reattach {
            tracing::info!(
                volume,
                "/dev/ublkb{id} was left by the previous daemon; reattaching once this node is \
                 primary"
            );
        } else if left.is_some() {
            let _ = std::fs::remove_file(&id_file);
        }
        Ok(Self {
            volume: volume.to_string(),
            options,
            id_file,
            slot: Mutex::new(Slot {
                reattach,
                ..Slot::default()
            }),
            shown: Mutex::new((None, None)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, slot: &Slot) {
        *self.shown.lock().unwrap_or_else(PoisonError::into_inner) = (
            slot.device.as_ref().map(UblkDevice::path),
            slot.error.clone(),
        );
    }

    /// `/dev/ublkbN` while the device exists.
    pub fn device_path(&self) -> Option<String> {
        let shown = self.shown.lock().unwrap_or_else(PoisonError::into_inner);
        shown.0.clone()
    }

    /// Why the device is missing, if it should be there.
    pub fn error(&self) -> Option<String> {
        let shown = self.shown.lock().unwrap_or_else(PoisonError::into_inner);
        shown.1.clone()
    }

    /// Makes the device follow the role (blocking; skipped if another change is under way).
    /// A device left by the previous daemon makes this node primary again first: the kernel
    /// holds the file system's I/O until then.
    pub fn reconcile(&self, handle: &VolumeHandle, backend: &dyn Fn() -> Arc<dyn BlockBackend>) {
        let Ok(mut slot) = self.slot.try_lock() else {
            return;
        };
        if let Some(id) = slot.reattach
            && handle.status().role == Role::Secondary
        {
            if let Err(refusal) = handle.admin(AdminCommand::Promote { force: false }) {
                slot.error = Some(format!(
                    "/dev/ublkb{id} (left by the previous daemon) waits: this node cannot be \
                     primary yet: {refusal}"
                ));
                self.publish(&slot);
                return;
            }
            tracing::info!(volume = %self.volume, "primary again to reattach /dev/ublkb{id}");
        }
        let status = handle.status();
        let serving = status.role == Role::Primary && status.disk.is_consistent();
        let result = self.follow(&mut slot, serving, backend);
        if let Err(error) = &result
            && slot.error.as_ref() != Some(error)
        {
            tracing::error!(volume = %self.volume, "{error}");
        }
        slot.error = result.err();
        self.publish(&slot);
    }

    /// Adds (or reattaches) the device now that this node is primary (blocking). The error
    /// says why there is no device.
    pub fn start(&self, backend: &dyn Fn() -> Arc<dyn BlockBackend>) -> Result<(), String> {
        let mut slot = self.lock();
        let result = self.follow(&mut slot, true, backend);
        slot.error = result.clone().err();
        self.publish(&slot);
        result
    }

    fn follow(
        &self,
        slot: &mut Slot,
        serving: bool,
        backend: &dyn Fn() -> Arc<dyn BlockBackend>,
    ) -> Result<(), String> {
        match (serving, slot.device.is_some()) {
            (true, false) => {
                let recover = slot.reattach;
                let device = UblkDevice::start(backend(), self.options, recover)?;
                let (path, id) = (device.path(), device.id());
                slot.reattach = None;
                slot.error = None;
                slot.device = Some(device);
                tracing::info!(
                    volume = %self.volume,
                    "{} {path}",
                    if recover.is_some() { "reattached" } else { "serving on" },
                );
                std::fs::write(&self.id_file, format!("{id}\n")).map_err(|e| {
                    format!(
                        "{path} serves, but {} cannot be written ({e}): a restarted daemon \
                         would not reattach to it",
                        self.id_file.display()
                    )
                })
            }
            (false, true) => self.stop_device(slot),
            _ => Ok(()),
        }
    }

    fn stop_device(&self, slot: &mut Slot) -> Result<(), String> {
        let Some(device) = slot.device.take() else {
            return Ok(());
        };
        if device.in_use() {
            let path = device.path();
            slot.device = Some(device);
            return Err(format!(
                "{path} is in use (mounted or held open): unmount it first"
            ));
        }
        let path = device.path();
        device.stop()?;
        let _ = std::fs::remove_file(&self.id_file);
        tracing::info!(volume = %self.volume, "{path} removed");
        Ok(())
    }

    /// Stops the device, then runs `demote`; refuses, changing nothing, while the device is in
    /// use (blocking).
    pub fn demote(&self, demote: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
        let mut slot = self.lock();
        let stopped = self.stop_device(&mut slot);
        self.publish(&slot);
        stopped?;
        slot.reattach = None;
        demote()
    }

    /// The daemon is stopping (blocking). A device in use stays with the kernel, which holds
    /// its I/O for the next daemon: returns `true`, and the volume must then not be closed (its
    /// requests in flight are reissued to the next daemon, which recovers the volume as after
    /// a crash). An unused device is removed.
    pub fn shutdown(&self) -> bool {
        let mut slot = self.lock();
        let Some(device) = slot.device.take() else {
            return false;
        };
        if device.in_use() {
            tracing::warn!(
                volume = %self.volume,
                "leaving {} in place: it is in use; the next daemon reattaches to it",
                device.path()
            );
            device.abandon();
            return true;
        }
        slot.device = Some(device);
        if let Err(error) = self.stop_device(&mut slot) {
            tracing::warn!(volume = %self.volume, "{error}");
        }
        false
    }
}

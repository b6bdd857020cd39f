//! Kind `filesystem`: mounts the volume's device on `mount` (`fstype`, default ext4, with
//! `options`), creating the mount point if needed.
//!
//! The device is [`FsDevice::Block`], mounted as it is, or [`FsDevice::Nbd`], attached first
//! through nbdfuse and a loop device (see `nbd.rs`). With `fsck = true`, `fsck -a` runs
//! before the mount: exit code 0 (clean) and 1 (errors corrected) mount; 2 and 3 (corrected,
//! reboot advised — that is about a mounted root) mount with a warning; 4 and above refuse,
//! with the last line of fsck's output.
//!
//! Stop unmounts. When the mount is busy a plain stop fails and names the processes that
//! hold it; a forced stop kills them (SIGKILL: every process whose working directory, root,
//! open files or mapped files are under the mount point) and then unmounts. An NBD attachment
//! is detached after the unmount (its loop device already goes with the mount).
//!
//! Monitor: something is mounted on the mount point → running (failed if it is over NBD and
//! nbdfuse is gone), else stopped.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::command::{self, run_ok};
use super::mountinfo::{self, Mount};
use super::nbd::Attachment;
use super::{AgentContext, FsDevice, Health, holders, required};
use crate::cluster::group::ResourceSection;

/// How long a forced stop keeps killing the holders of a busy mount.
const KILL_LIMIT: Duration = Duration::from_secs(5);

/// How many mounts stacked on the mount point a stop takes off.
const MAX_STACKED: usize = 8;

/// How many times a forced stop kills and unmounts before it gives up.
const FORCED_ATTEMPTS: usize = 3;

/// What an fsck exit code means: Ok(None) to mount, Ok(Some(warning)) to mount with a
/// warning, Err(problem) to refuse.
pub(super) fn fsck_verdict(code: Option<i32>) -> Result<Option<&'static str>, &'static str> {
    match code {
        Some(0 | 1) => Ok(None),
        Some(2 | 3) => Ok(Some("fsck corrected errors and advises a reboot")),
        Some(_) => Err("fsck found errors it did not correct"),
        None => Err("fsck was killed"),
    }
}

/// Kind `filesystem`.
#[derive(Debug)]
pub struct Filesystem {
    context: AgentContext,
    device: FsDevice,
    mount_point: PathBuf,
    fstype: String,
    options: Option<String>,
    fsck: bool,
}

impl Filesystem {
    pub(super) fn new(
        section: &ResourceSection,
        context: AgentContext,
        device: Option<FsDevice>,
    ) -> Result<Self, String> {
        let mount = required(&context, "filesystem", "mount", section.mount.as_ref())?;
        let mount_point = PathBuf::from(mount);
        if !mount_point.is_absolute() || mount.contains('\0') {
            return Err(context.error(format!("mount {mount:?} is not an absolute path")));
        }
        let Some(device) = device else {
            return Err(context.error("kind filesystem needs its volume's device"));
        };
        let fstype = section.fstype.clone().unwrap_or_else(|| "ext4".to_string());
        let bad = |text: &str| text.is_empty() || text.contains(['\0', ' ', '\n']);
        if bad(&fstype) {
            return Err(context.error(format!("fstype {fstype:?} is not a filesystem type")));
        }
        if let Some(options) = &section.options
            && (options.contains('\0') || options.contains('\n'))
        {
            return Err(context.error(format!("options {options:?} are not mount options")));
        }
        Ok(Self {
            context,
            device,
            mount_point,
            fstype,
            options: section.options.clone().filter(|o| !o.is_empty()),
            fsck: section.fsck.unwrap_or(false),
        })
    }

    /// The mount point as mountinfo names it (symbolic links resolved, when it exists).
    fn target(&self) -> PathBuf {
        std::fs::canonicalize(&self.mount_point).unwrap_or_else(|_| self.mount_point.clone())
    }

    /// Whether `mount` is this resource's device.
    fn is_ours(&self, mount: &Mount) -> bool {
        match &self.device {
            FsDevice::Block(path) => {
                let same_device = std::fs::metadata(path).is_ok_and(|meta| {
                    let rdev = meta.rdev();
                    nix::sys::stat::major(rdev) == u64::from(mount.device.0)
                        && nix::sys::stat::minor(rdev) == u64::from(mount.device.1)
                });
                // Filesystems such as btrfs report an anonymous device: compare the source.
                let canonical = |path: &Path| std::fs::canonicalize(path).ok();
                same_device
                    || canonical(path)
                        .is_some_and(|ours| canonical(Path::new(&mount.source)) == Some(ours))
            }
            FsDevice::Nbd { .. } => Attachment::new(&self.context)
                .loop_devices()
                .iter()
                .any(|device| device.device == mount.device),
        }
    }

    pub(super) async fn start(&self) -> Result<(), String> {
        let context = &self.context;
        std::fs::create_dir_all(&self.mount_point).map_err(|e| {
            context.error(format!("cannot create {}: {e}", self.mount_point.display()))
        })?;
        let target = self.target();
        if let Some(mount) = mountinfo::at(&target).map_err(|e| context.error(e))? {
            if self.is_ours(&mount) {
                return Ok(());
            }
            return Err(context.error(format!(
                "{} already has {} mounted",
                target.display(),
                mount.source
            )));
        }
        let device = match &self.device {
            FsDevice::Block(path) => path.clone(),
            FsDevice::Nbd { host, port, export } => Attachment::new(context)
                .attach(*host, *port, export)
                .await
                .map_err(|e| context.error(format!("cannot attach the NBD export: {e}")))?,
        };
        let mounted = self.check_and_mount(&device, &target).await;
        if matches!(self.device, FsDevice::Nbd { .. }) {
            let result = match mounted {
                // The loop device now goes with the mount (the kernel frees it on the last
                // unmount), however the mount ends: a stop, or the end of the mount namespace
                // of a daemon that died, where a later stop cannot see it.
                Ok(()) => Attachment::detach_with_mount(&device).await,
                // Leave nothing attached behind a failed start.
                Err(_) => Attachment::new(context).detach().await,
            };
            if let Err(error) = result {
                tracing::warn!(
                    group = %context.group,
                    resource = %context.resource,
                    "{error}"
                );
            }
        }
        mounted.map_err(|e| context.error(e))
    }

    async fn check_and_mount(&self, device: &Path, target: &Path) -> Result<(), String> {
        if self.fsck {
            let mut fsck = tokio::process::Command::new("fsck");
            fsck.args(["-a", "-t", &self.fstype]).arg(device);
            let finished = command::run(fsck, "fsck").await?;
            match fsck_verdict(finished.code()) {
                Ok(None) => {}
                Ok(Some(warning)) => tracing::warn!(
                    group = %self.context.group,
                    resource = %self.context.resource,
                    device = %device.display(),
                    "{warning}"
                ),
                Err(problem) => {
                    return Err(format!(
                        "{problem} on {}, not mounting ({})",
                        device.display(),
                        finished.describe()
                    ));
                }
            }
        }
        let mut args = vec![OsStr::new("-t"), OsStr::new(&self.fstype)];
        if let Some(options) = &self.options {
            args.extend([OsStr::new("-o"), OsStr::new(options)]);
        }
        args.extend([device.as_os_str(), target.as_os_str()]);
        run_ok("mount", &args).await.map(drop)
    }

    pub(super) async fn stop(&self, force: bool) -> Result<(), String> {
        let context = &self.context;
        let target = self.target();
        for _ in 0..MAX_STACKED {
            if mountinfo::at(&target)
                .map_err(|e| context.error(e))?
                .is_none()
            {
                break;
            }
            self.unmount(&target, force)
                .await
                .map_err(|e| context.error(e))?;
        }
        if mountinfo::at(&target)
            .map_err(|e| context.error(e))?
            .is_some()
        {
            return Err(context.error(format!(
                "{} is still mounted after {MAX_STACKED} unmounts",
                target.display()
            )));
        }
        if matches!(self.device, FsDevice::Nbd { .. }) {
            Attachment::new(context)
                .detach()
                .await
                .map_err(|e| context.error(format!("cannot detach the NBD export: {e}")))?;
        }
        Ok(())
    }

    /// Takes one mount off `target`.
    async fn unmount(&self, target: &Path, force: bool) -> Result<(), String> {
        let args = [target.as_os_str()];
        let umount = || run_ok("umount", &args);
        if !force {
            return match umount().await {
                Ok(_) => Ok(()),
                Err(error) => {
                    let holders = holders::under(target);
                    if holders.is_empty() {
                        Err(error)
                    } else {
                        Err(format!("{error}; held by {}", holders::describe(&holders)))
                    }
                }
            };
        }
        let mut last_error = String::new();
        for _ in 0..FORCED_ATTEMPTS {
            holders::kill_all(target, KILL_LIMIT).await?;
            match umount().await {
                Ok(_) => return Ok(()),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    pub(super) async fn monitor(&self) -> Health {
        match mountinfo::at(&self.target()) {
            Ok(Some(_))
                if matches!(self.device, FsDevice::Nbd { .. })
                    && !Attachment::new(&self.context).nbdfuse_running() =>
            {
                Health::Failed(self.context.error(format!(
                    "{} is mounted but its nbdfuse is not running",
                    self.mount_point.display()
                )))
            }
            Ok(Some(_)) => Health::Running,
            Ok(None) => Health::Stopped,
            Err(error) => Health::Failed(self.context.error(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> AgentContext {
        AgentContext {
            state_dir: PathBuf::from("/nonexistent"),
            node: "alpha".into(),
            group: "g".into(),
            resource: "fs".into(),
        }
    }

    fn section(extra: &str) -> ResourceSection {
        toml::from_str(&format!(
            "name = \"fs\"\nkind = \"filesystem\"\nvolume = \"r0\"\n{extra}"
        ))
        .expect("section")
    }

    #[test]
    fn fsck_codes() {
        assert_eq!(fsck_verdict(Some(0)), Ok(None));
        assert_eq!(fsck_verdict(Some(1)), Ok(None));
        assert!(matches!(fsck_verdict(Some(2)), Ok(Some(_))));
        assert!(fsck_verdict(Some(4)).is_err());
        assert!(fsck_verdict(Some(8)).is_err());
        assert!(fsck_verdict(None).is_err());
    }

    #[test]
    fn needs_an_absolute_mount_point_and_a_device() {
        let device = Some(FsDevice::Block(PathBuf::from("/dev/loop0")));
        let fs = Filesystem::new(&section("mount = \"/srv/data\""), context(), device.clone())
            .expect("valid");
        assert_eq!(fs.fstype, "ext4");
        assert!(!fs.fsck);
        let error = Filesystem::new(&section("mount = \"data\""), context(), device.clone())
            .expect_err("relative");
        assert!(error.contains("absolute"), "{error}");
        let error = Filesystem::new(&section("mount = \"/srv/data\""), context(), None)
            .expect_err("no device");
        assert!(error.contains("device"), "{error}");
        let error = Filesystem::new(&section(""), context(), device).expect_err("no mount");
        assert!(error.contains("needs mount"), "{error}");
    }
}

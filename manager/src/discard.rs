//! Saving a split-brain loser's diverged blocks before the resync overwrites them.
//!
//! When a split brain is resolved, the node whose data is discarded is about to receive a resync
//! from the kept node. Before anything is overwritten, [`save_discarded`] copies the diverged byte
//! ranges out of the backing store into a new folder under the directory the operator chose:
//!
//! ```text
//! <dir>/<volume>-discarded-<node>-<unix_millis>/
//!     image     sparse, exactly volume_bytes long: the saved bytes at their own offsets, holes elsewhere
//!     ranges    one "offset length" line per saved range, decimal bytes
//!     RESTORE   what this is, a summary to check, and the shell command that writes the ranges back
//! ```
//!
//! Everything is written into `<dir>/.<name>.partial` first, every file and the folder are synced,
//! and only then is the folder renamed to its final name (and `dir` synced). A folder with the
//! final name is therefore complete and durable; a failed save removes the partial folder and
//! returns the error, which must abort the resolve.

use std::fmt::Write as _;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Free space demanded on top of the saved bytes.
pub const SPACE_MARGIN: u64 = 1 << 20;

/// The largest single read from the backing store (and write into the image).
const CHUNK: u64 = 1 << 20;

/// What to save: the diverged ranges of one volume on this node.
#[derive(Clone, Copy, Debug)]
pub struct DiscardRequest<'a> {
    /// The volume's name, e.g. `r0`.
    pub volume: &'a str,
    /// The node whose data is discarded (this node).
    pub node: &'a str,
    /// The backing store (file or block device); the volume's data area starts at byte 0.
    pub backing: &'a Path,
    /// The size of the data area in bytes.
    pub volume_bytes: u64,
    /// The `(offset, length)` byte ranges to save: sorted, disjoint, non-empty, within
    /// `volume_bytes`.
    pub ranges: &'a [(u64, u64)],
    /// Milliseconds since the Unix epoch, used in the folder name.
    pub unix_millis: u64,
}

/// A completed, durable save.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedDiscard {
    /// The final folder (`<dir>/<volume>-discarded-<node>-<unix_millis>`).
    pub folder: PathBuf,
    /// How many bytes were saved (the sum of the range lengths).
    pub bytes: u64,
    /// How many ranges were saved.
    pub ranges: usize,
}

/// Why the discarded data could not be saved. Its `Display` is one line naming the path.
#[derive(Debug, thiserror::Error)]
pub enum DiscardError {
    /// The request is inconsistent (bad name, range out of bounds, unsorted or overlapping);
    /// nothing was written.
    #[error("cannot save discarded data of volume {volume:?}: {reason}")]
    Request {
        /// The volume named in the request.
        volume: String,
        /// What is wrong, in one line.
        reason: String,
    },
    /// The destination cannot take the save (not creatable, not a directory, not writable, too
    /// little space, already holds this folder).
    #[error("discard folder {}: {reason}", path.display())]
    Destination {
        /// The path that was refused.
        path: PathBuf,
        /// Why, in one line.
        reason: String,
    },
    /// Reading the backing store or writing the save failed.
    #[error("{what} {}: {error}", path.display())]
    Io {
        /// What was being done, e.g. `cannot write`.
        what: String,
        /// The file or folder concerned.
        path: PathBuf,
        /// The operating system's error.
        error: io::Error,
    },
}

/// Checks, without leaving anything behind, that `dir` exists (or can be created), is a
/// directory, is writable, and has room for `bytes` plus [`SPACE_MARGIN`]: the one-line reason
/// otherwise.
///
/// Writability is tested by creating and removing a probe file (in the nearest existing ancestor
/// when `dir` does not exist yet); the space comes from `statvfs` (blocks available to
/// unprivileged users).
pub fn check_destination(dir: &Path, bytes: u64) -> Result<(), DiscardError> {
    check(dir, bytes, &[])
}

/// Saves the request's ranges from its backing store into a new folder under `dir` (created if
/// needed) and returns it once it is complete and synced to disk.
///
/// On any error nothing that looks complete is left: the partial folder is removed. (The only
/// exception is a failure to sync `dir` after the rename, reported as an error although the
/// folder is complete.)
pub fn save_discarded(dir: &Path, request: &DiscardRequest) -> Result<SavedDiscard, DiscardError> {
    let total = validate(request)?;
    let name = format!(
        "{}-discarded-{}-{}",
        request.volume, request.node, request.unix_millis
    );
    let folder = dir.join(&name);
    let partial = dir.join(format!(".{name}.partial"));

    let mut ranges_text = String::new();
    for (offset, length) in request.ranges {
        let _ = writeln!(ranges_text, "{offset} {length}");
    }
    let shown = std::path::absolute(&folder).unwrap_or_else(|_| folder.clone());
    let restore_text = restore_text(request, total, &shown);
    let needed = total
        .saturating_add(ranges_text.len() as u64)
        .saturating_add(restore_text.len() as u64);
    check(dir, needed, request.ranges)?;

    create_dir_durably(dir)?;
    if fs::symlink_metadata(&folder).is_ok() {
        return Err(destination(
            &folder,
            "already exists; refusing to overwrite it",
        ));
    }
    if fs::symlink_metadata(&partial).is_ok() {
        // A leftover of an interrupted save of this very request: incomplete by construction.
        fs::remove_dir_all(&partial).map_err(|error| io_error("cannot remove", &partial, error))?;
    }
    DirBuilder::new()
        .mode(0o700)
        .create(&partial)
        .map_err(|error| io_error("cannot create", &partial, error))?;

    let written = write_contents(&partial, request, &ranges_text, &restore_text)
        .and_then(|()| sync_dir(&partial))
        .and_then(|()| {
            fs::rename(&partial, &folder).map_err(|error| {
                io_error(
                    &format!("cannot rename to {} from", folder.display()),
                    &partial,
                    error,
                )
            })
        });
    if let Err(error) = written {
        let _ = fs::remove_dir_all(&partial);
        return Err(error);
    }
    sync_dir(dir).map_err(|error| match error {
        DiscardError::Io { path, error, .. } => io_error(
            &format!("saved {} but cannot sync", folder.display()),
            &path,
            error,
        ),
        other => other,
    })?;
    Ok(SavedDiscard {
        folder,
        bytes: total,
        ranges: request.ranges.len(),
    })
}

/// Checks names and ranges; returns the total number of bytes to save.
fn validate(request: &DiscardRequest) -> Result<u64, DiscardError> {
    let refuse = |reason: String| DiscardError::Request {
        volume: request.volume.to_owned(),
        reason,
    };
    for (what, name) in [("volume", request.volume), ("node", request.node)] {
        if name.is_empty()
            || name.starts_with('.')
            || name.chars().any(|c| c == '/' || c.is_control())
        {
            return Err(refuse(format!(
                "{what} name {name:?} cannot be used in a folder name"
            )));
        }
    }
    let mut total = 0u64;
    let mut previous_end = 0u64;
    for (index, &(offset, length)) in request.ranges.iter().enumerate() {
        let end = offset
            .checked_add(length)
            .filter(|&end| end <= request.volume_bytes);
        let Some(end) = end else {
            return Err(refuse(format!(
                "range {offset} {length} ends beyond the volume's {} bytes",
                request.volume_bytes
            )));
        };
        if length == 0 {
            return Err(refuse(format!("range at offset {offset} is empty")));
        }
        if index > 0 && offset < previous_end {
            return Err(refuse(format!(
                "range {offset} {length} overlaps or precedes the range ending at {previous_end}"
            )));
        }
        previous_end = end;
        total += length;
    }
    Ok(total)
}

/// [`check_destination`], with the extra space that partly used file-system blocks of `ranges`
/// take in the sparse image.
fn check(dir: &Path, bytes: u64, ranges: &[(u64, u64)]) -> Result<(), DiscardError> {
    let existing = match fs::metadata(dir) {
        Ok(metadata) if metadata.is_dir() => dir.to_path_buf(),
        Ok(_) => return Err(destination(dir, "is not a directory")),
        Err(error) if missing(&error) => nearest_existing(dir)?,
        Err(error) => return Err(destination(dir, &error.to_string())),
    };
    let probe = existing.join(format!(".tandem-write-probe-{}", std::process::id()));
    let probed = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)
        .and_then(|file| {
            drop(file);
            fs::remove_file(&probe)
        });
    if let Err(error) = probed {
        let _ = fs::remove_file(&probe);
        return Err(if existing == dir {
            destination(dir, &format!("is not writable: {error}"))
        } else {
            destination(
                dir,
                &format!(
                    "cannot be created: {} is not writable: {error}",
                    existing.display()
                ),
            )
        });
    }
    let stats = nix::sys::statvfs::statvfs(existing.as_path())
        .map_err(|errno| destination(dir, &format!("cannot read free space: {errno}")))?;
    #[allow(
        clippy::useless_conversion,
        reason = "c_ulong and fsblkcnt_t are u32 on some 32-bit targets"
    )]
    let (fragment, available) = (
        u64::from(stats.fragment_size()).max(1),
        u64::from(stats.blocks_available()),
    );
    let available = available.saturating_mul(fragment);
    let slack: u64 = ranges
        .iter()
        .map(|&(offset, length)| {
            let start = offset - offset % fragment;
            let end = (offset + length)
                .div_ceil(fragment)
                .saturating_mul(fragment);
            (end - start).saturating_sub(length)
        })
        .fold(0, u64::saturating_add);
    let needed = bytes.saturating_add(slack).saturating_add(SPACE_MARGIN);
    if available < needed {
        return Err(destination(
            dir,
            &format!(
                "not enough space: {needed} bytes needed (the saved data plus a 1 MiB margin), \
                 {available} available"
            ),
        ));
    }
    Ok(())
}

/// The nearest existing ancestor of the missing `dir`, which must be a directory.
fn nearest_existing(dir: &Path) -> Result<PathBuf, DiscardError> {
    for ancestor in dir.ancestors().skip(1) {
        let ancestor = if ancestor.as_os_str().is_empty() {
            Path::new(".")
        } else {
            ancestor
        };
        match fs::metadata(ancestor) {
            Ok(metadata) if metadata.is_dir() => return Ok(ancestor.to_path_buf()),
            Ok(_) => {
                return Err(destination(
                    dir,
                    &format!(
                        "cannot be created: {} is not a directory",
                        ancestor.display()
                    ),
                ));
            }
            Err(error) if missing(&error) => {}
            Err(error) => return Err(destination(dir, &format!("cannot be created: {error}"))),
        }
    }
    Err(destination(dir, "cannot be created: no existing ancestor"))
}

/// Whether a lookup failed because the path (or one of its ancestors) does not exist as a folder.
fn missing(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Creates `dir` and its missing ancestors, syncing each parent that gained an entry.
fn create_dir_durably(dir: &Path) -> Result<(), DiscardError> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .filter(|path| !path.as_os_str().is_empty())
        .take_while(|path| fs::symlink_metadata(path).is_err())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(dir)
        .map_err(|error| destination(dir, &format!("cannot be created: {error}")))?;
    for path in missing.iter().rev() {
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        sync_dir(parent)?;
    }
    Ok(())
}

/// Writes and syncs `image`, `ranges` and `RESTORE` into `partial`.
fn write_contents(
    partial: &Path,
    request: &DiscardRequest,
    ranges_text: &str,
    restore_text: &str,
) -> Result<(), DiscardError> {
    let image_path = partial.join("image");
    let image = create_file(&image_path)?;
    image
        .set_len(request.volume_bytes)
        .map_err(|error| io_error("cannot size", &image_path, error))?;
    let backing = File::open(request.backing)
        .map_err(|error| io_error("cannot open backing store", request.backing, error))?;
    let longest = request.ranges.iter().map(|r| r.1).max().unwrap_or(0);
    let mut buffer = vec![0u8; longest.min(CHUNK) as usize];
    for &(offset, length) in request.ranges {
        let end = offset + length;
        let mut position = offset;
        while position < end {
            let chunk = &mut buffer[..(end - position).min(CHUNK) as usize];
            backing.read_exact_at(chunk, position).map_err(|error| {
                let what = format!("cannot read {} bytes at offset {position} of", chunk.len());
                if error.kind() == io::ErrorKind::UnexpectedEof {
                    let error = io::Error::other("the backing store ends before them");
                    io_error(&what, request.backing, error)
                } else {
                    io_error(&what, request.backing, error)
                }
            })?;
            image
                .write_all_at(chunk, position)
                .map_err(|error| io_error("cannot write", &image_path, error))?;
            position += chunk.len() as u64;
        }
    }
    image
        .sync_all()
        .map_err(|error| io_error("cannot sync", &image_path, error))?;
    write_synced(&partial.join("ranges"), ranges_text)?;
    write_synced(&partial.join("RESTORE"), restore_text)
}

fn create_file(path: &Path) -> Result<File, DiscardError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|error| io_error("cannot create", path, error))
}

fn write_synced(path: &Path, text: &str) -> Result<(), DiscardError> {
    let mut file = create_file(path)?;
    file.write_all(text.as_bytes())
        .map_err(|error| io_error("cannot write", path, error))?;
    file.sync_all()
        .map_err(|error| io_error("cannot sync", path, error))
}

fn sync_dir(path: &Path) -> Result<(), DiscardError> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| io_error("cannot sync folder", path, error))
}

fn destination(path: &Path, reason: &str) -> DiscardError {
    DiscardError::Destination {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    }
}

fn io_error(what: &str, path: &Path, error: io::Error) -> DiscardError {
    DiscardError::Io {
        what: what.to_owned(),
        path: path.to_path_buf(),
        error,
    }
}

/// The shell command, run inside the folder, that writes the saved ranges onto `TARGET`.
pub const RESTORE_COMMAND: &str = r#"while read -r off len; do dd if=image of=TARGET bs=1M skip="$off" seek="$off" count="$len" iflag=skip_bytes,count_bytes oflag=seek_bytes conv=notrunc status=none || { echo "restore failed at offset $off" >&2; break; }; done < ranges; sync"#;

/// The shell command, run inside the folder, that prints nothing when `TARGET` holds the saved
/// ranges.
pub const VERIFY_COMMAND: &str =
    r#"while read -r off len; do cmp -n "$len" -i "$off:$off" image TARGET; done < ranges"#;

fn restore_text(request: &DiscardRequest, total: u64, folder: &Path) -> String {
    let DiscardRequest {
        volume,
        node,
        volume_bytes,
        unix_millis,
        ..
    } = *request;
    let count = request.ranges.len();
    let when = utc(unix_millis);
    let backing = request.backing.display();
    let folder = folder.display();
    format!(
        "\
tandem: discarded data of volume {volume} on node {node}

When the split brain of volume {volume} was resolved, node {node} lost: its diverged blocks
were about to be overwritten by a resync from the kept node. They were saved here first,
byte-exact, from {backing}.

  saved at      {when} ({unix_millis} ms since the Unix epoch)
  folder        {folder}
  volume size   {volume_bytes} bytes
  ranges        {count}
  saved bytes   {total}

Files:
  image     exactly {volume_bytes} bytes, sparse: the saved bytes at their own offsets,
            zeros (holes) everywhere else
  ranges    one line per saved range: offset and length, in decimal bytes
  RESTORE   this text

Check the summary (run inside this folder):
  wc -l < ranges                                  # prints {count}
  awk '{{ s += $2 }} END {{ print s + 0 }}' ranges    # prints {total}

To write the saved ranges back onto a device or file TARGET, run this inside this folder with
TARGET replaced (only the saved ranges are written; everything else on TARGET stays as it is):

  {RESTORE_COMMAND}

Then check TARGET (prints nothing when it holds the saved bytes):

  {VERIFY_COMMAND}

Writing onto the volume's tandem device on the primary replicates the restored bytes; writing
onto a backing store directly bypasses tandem, which then does not know what changed.
"
    )
}

/// `unix_millis` as `YYYY-MM-DD HH:MM:SS.mmm UTC`.
fn utc(unix_millis: u64) -> String {
    let seconds = unix_millis / 1000;
    let days = seconds / 86_400;
    let of_day = seconds % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm, for dates after 1970).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03} UTC",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        unix_millis % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh, unique, empty folder under the temporary directory; removed by `Drop`.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(label: &str) -> Self {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "tandem-discard-{label}-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).expect("temp dir");
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn pattern(length: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..length)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read dir")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    fn request<'a>(
        backing: &'a Path,
        volume_bytes: u64,
        ranges: &'a [(u64, u64)],
    ) -> DiscardRequest<'a> {
        DiscardRequest {
            volume: "r0",
            node: "beta",
            backing,
            volume_bytes,
            ranges,
            unix_millis: 1_700_000_000_123,
        }
    }

    fn bash(folder: &Path, command: &str, target: &Path) -> std::process::Output {
        let command = command.replace("TARGET", &target.display().to_string());
        Command::new("bash")
            .arg("-c")
            .arg(&command)
            .current_dir(folder)
            .output()
            .expect("run bash")
    }

    #[test]
    fn saves_ranges_byte_exact_and_restore_command_writes_them_back() {
        let temp = TempDir::new("save");
        const VOLUME: u64 = (4 << 20) + 123;
        let data = pattern(VOLUME as usize, 0x5eed);
        let backing = temp.0.join("backing");
        fs::write(&backing, &data).expect("backing");
        // Unaligned, one longer than a read chunk, one ending exactly at the end of the volume.
        let ranges = [
            (0, 1),
            (513, 4000),
            (8192, 4096),
            (100_000, (3 << 19) + 7),
            (VOLUME - 77, 77),
        ];
        let dir = temp.0.join("saved/discards");
        let saved = save_discarded(&dir, &request(&backing, VOLUME, &ranges)).expect("save");
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        assert_eq!(saved.bytes, total);
        assert_eq!(saved.ranges, ranges.len());
        assert_eq!(saved.folder, dir.join("r0-discarded-beta-1700000000123"));
        assert_eq!(entries(&dir), ["r0-discarded-beta-1700000000123"]);
        assert_eq!(entries(&saved.folder), ["RESTORE", "image", "ranges"]);

        let image = fs::read(saved.folder.join("image")).expect("image");
        assert_eq!(image.len() as u64, VOLUME);
        let mut expected = vec![0u8; VOLUME as usize];
        for &(offset, length) in &ranges {
            let range = offset as usize..(offset + length) as usize;
            expected[range.clone()].copy_from_slice(&data[range]);
        }
        assert!(image == expected, "image differs from the saved ranges");
        let ranges_text = fs::read_to_string(saved.folder.join("ranges")).expect("ranges");
        let expected_text: String = ranges.iter().map(|(o, l)| format!("{o} {l}\n")).collect();
        assert_eq!(ranges_text, expected_text);
        let restore = fs::read_to_string(saved.folder.join("RESTORE")).expect("RESTORE");
        assert!(restore.contains(RESTORE_COMMAND));
        assert!(restore.contains(&format!("ranges        {}", ranges.len())));
        assert!(restore.contains(&format!("saved bytes   {total}")));
        assert!(restore.contains("2023-11-14 22:13:20.123 UTC"));

        // The exact command from RESTORE, onto a copy filled with another byte.
        let target = temp.0.join("target");
        fs::write(&target, vec![0xEE; VOLUME as usize]).expect("target");
        let line = restore
            .lines()
            .map(str::trim)
            .find(|line| line.starts_with("while read -r off len; do dd"))
            .expect("restore command in RESTORE");
        let output = bash(&saved.folder, line, &target);
        assert!(output.status.success(), "{output:?}");
        let restored = fs::read(&target).expect("restored");
        assert_eq!(restored.len() as u64, VOLUME);
        let mut expected = vec![0xEE; VOLUME as usize];
        for &(offset, length) in &ranges {
            let range = offset as usize..(offset + length) as usize;
            expected[range.clone()].copy_from_slice(&data[range]);
        }
        assert!(
            restored == expected,
            "restore did not write exactly the ranges"
        );
        let output = bash(&saved.folder, VERIFY_COMMAND, &target);
        assert!(
            output.stdout.is_empty() && output.stderr.is_empty(),
            "{output:?}"
        );
        let output = bash(&saved.folder, VERIFY_COMMAND, &backing);
        assert!(
            output.stdout.is_empty() && output.stderr.is_empty(),
            "{output:?}"
        );
        fs::write(&target, vec![0xEE; VOLUME as usize]).expect("target");
        let output = bash(&saved.folder, VERIFY_COMMAND, &target);
        assert!(!output.stdout.is_empty(), "verify missed a difference");

        // The summary commands print what RESTORE says.
        let output = bash(
            &saved.folder,
            "wc -l < ranges; awk '{ s += $2 } END { print s + 0 }' ranges",
            &target,
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!("{}\n{total}\n", ranges.len())
        );

        // The same request again is refused instead of overwriting the first save.
        let error = save_discarded(&dir, &request(&backing, VOLUME, &ranges)).unwrap_err();
        assert!(error.to_string().contains("already exists"), "{error}");
        assert_eq!(entries(&dir), ["r0-discarded-beta-1700000000123"]);
    }

    #[test]
    fn failed_save_leaves_no_folder() {
        let temp = TempDir::new("short");
        let backing = temp.0.join("backing");
        fs::write(&backing, pattern(10_000, 7)).expect("backing");
        let dir = temp.0.join("discards");
        // The backing store is shorter than the volume claims: the second range cannot be read.
        let ranges = [(0, 100), (9_000, 5_000)];
        let error = save_discarded(&dir, &request(&backing, 20_000, &ranges)).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("backing store ends before them"),
            "{message}"
        );
        assert!(
            message.contains(&backing.display().to_string()),
            "{message}"
        );
        assert!(!message.contains('\n'));
        assert!(entries(&dir).is_empty(), "{:?}", entries(&dir));

        // A missing backing store, likewise.
        let missing = temp.0.join("missing");
        let error = save_discarded(&dir, &request(&missing, 20_000, &ranges)).unwrap_err();
        assert!(
            error.to_string().contains("cannot open backing store"),
            "{error}"
        );
        assert!(entries(&dir).is_empty());
    }

    #[test]
    fn bad_ranges_are_refused_before_anything_is_written() {
        let temp = TempDir::new("ranges");
        let backing = temp.0.join("backing");
        fs::write(&backing, vec![1u8; 4096]).expect("backing");
        let dir = temp.0.join("discards");
        let cases: [(&[(u64, u64)], &str); 5] = [
            (&[(4000, 97)], "beyond"),
            (&[(u64::MAX, 2)], "beyond"),
            (&[(0, 100), (50, 100)], "overlaps"),
            (&[(200, 10), (0, 10)], "precedes"),
            (&[(10, 0)], "empty"),
        ];
        for (ranges, reason) in cases {
            let error = save_discarded(&dir, &request(&backing, 4096, ranges)).unwrap_err();
            assert!(matches!(error, DiscardError::Request { .. }), "{error}");
            assert!(error.to_string().contains(reason), "{error}");
            assert!(!dir.exists(), "something was created for {ranges:?}");
        }
        let mut bad_name = request(&backing, 4096, &[]);
        bad_name.node = "../etc";
        let error = save_discarded(&dir, &bad_name).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("cannot be used in a folder name"),
            "{error}"
        );
        assert!(!dir.exists());
    }

    #[test]
    fn destinations_that_cannot_take_the_save_are_refused() {
        let temp = TempDir::new("refuse");
        let backing = temp.0.join("backing");
        fs::write(&backing, vec![1u8; 4096]).expect("backing");
        let ranges = [(0, 4096)];

        // Fine: existing and not yet existing folders, and nothing is left behind by the check.
        check_destination(&temp.0, 4096).expect("existing folder");
        check_destination(&temp.0.join("new/deeper"), 4096).expect("creatable folder");
        assert_eq!(entries(&temp.0), ["backing"]);

        // A regular file, and a folder below one.
        let error = check_destination(&backing, 10).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("discard folder {}: is not a directory", backing.display())
        );
        let error = check_destination(&backing.join("sub"), 10).unwrap_err();
        assert!(error.to_string().contains("cannot be created"), "{error}");
        let error = save_discarded(&backing, &request(&backing, 4096, &ranges)).unwrap_err();
        assert!(error.to_string().contains("is not a directory"), "{error}");

        // Not enough space.
        let error = check_destination(&temp.0, u64::MAX / 2).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("not enough space"), "{message}");
        assert!(message.contains(&temp.0.display().to_string()), "{message}");
        assert!(!message.contains('\n'));

        // Not writable. /proc refuses new files even to root.
        let error = check_destination(Path::new("/proc"), 10).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("discard folder /proc: is not writable"),
            "{error}"
        );
        let error = check_destination(Path::new("/proc/tandem-no-such/discards"), 10).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("cannot be created: /proc is not writable"),
            "{error}"
        );
        let error =
            save_discarded(Path::new("/proc"), &request(&backing, 4096, &ranges)).unwrap_err();
        assert!(error.to_string().contains("is not writable"), "{error}");
        // Permission bits only stop writes for a non-root user (root bypasses them).
        if !nix::unistd::geteuid().is_root() {
            use std::os::unix::fs::PermissionsExt;
            let locked = temp.0.join("locked");
            fs::create_dir(&locked).expect("locked");
            fs::set_permissions(&locked, fs::Permissions::from_mode(0o500)).expect("chmod");
            let error = check_destination(&locked, 10).unwrap_err();
            assert!(error.to_string().contains("is not writable"), "{error}");
            let error = save_discarded(&locked, &request(&backing, 4096, &ranges)).unwrap_err();
            assert!(error.to_string().contains("is not writable"), "{error}");
            fs::set_permissions(&locked, fs::Permissions::from_mode(0o700)).expect("chmod");
        }
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00.000 UTC");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14 22:13:20.123 UTC");
    }
}

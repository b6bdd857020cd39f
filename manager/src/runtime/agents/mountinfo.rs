//! `/proc/self/mountinfo`: what is mounted where.
//!
//! One line per mount: `id parent major:minor root mount-point options [optional…] - fstype
//! source super-options`, with space, tab, newline and backslash in paths written as octal
//! escapes (`\040`).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Mount {
    /// The device numbers of the mounted filesystem (`st_dev` of its files).
    pub(super) device: (u32, u32),
    /// Where it is mounted.
    pub(super) mount_point: PathBuf,
    /// The filesystem type.
    pub(super) fstype: String,
    /// The source (`/dev/loop3`, `nbdfuse`...).
    pub(super) source: String,
}

/// Undoes mountinfo's octal escapes.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|digits| field[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match octal.and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        }) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// Parses one line; None when it is not a mountinfo line.
fn parse_line(line: &[u8]) -> Option<Mount> {
    let fields: Vec<&[u8]> = line
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty())
        .collect();
    let separator = fields.iter().position(|f| *f == b"-")?;
    if separator < 6 {
        return None;
    }
    let device = std::str::from_utf8(fields[2]).ok()?;
    let (major, minor) = device.split_once(':')?;
    let text = |field: &[u8]| String::from_utf8_lossy(&unescape(field)).into_owned();
    Some(Mount {
        device: (major.parse().ok()?, minor.parse().ok()?),
        mount_point: PathBuf::from(OsString::from_vec(unescape(fields[4]))),
        fstype: text(fields.get(separator + 1)?),
        source: text(fields.get(separator + 2)?),
    })
}

/// Parses mountinfo text; lines that do not parse are skipped.
pub(super) fn parse(text: &[u8]) -> Vec<Mount> {
    text.split(|&b| b == b'\n').filter_map(parse_line).collect()
}

/// The mounts of this process's mount namespace.
pub(super) fn read() -> Result<Vec<Mount>, String> {
    std::fs::read("/proc/self/mountinfo")
        .map(|text| parse(&text))
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))
}

/// The topmost mount at `mount_point`, if any.
pub(super) fn at(mount_point: &Path) -> Result<Option<Mount>, String> {
    Ok(read()?
        .into_iter()
        .rev()
        .find(|mount| mount.mount_point == mount_point))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
36 22 0:31 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw
97 22 7:3 / /srv/my\\040data rw,relatime shared:50 - ext4 /dev/loop3 rw
98 22 0:52 / /var/lib/tandem/agents/web.fs.fuse rw,nosuid,nodev - fuse nbdfuse rw,user_id=0
bogus line
";

    #[test]
    fn parses_mounts_with_escapes_and_no_optional_fields() {
        let mounts = parse(SAMPLE);
        assert_eq!(mounts.len(), 4);
        assert_eq!(
            mounts[2],
            Mount {
                device: (7, 3),
                mount_point: PathBuf::from("/srv/my data"),
                fstype: "ext4".into(),
                source: "/dev/loop3".into(),
            }
        );
        assert_eq!(mounts[3].fstype, "fuse");
        assert_eq!(mounts[3].source, "nbdfuse");
        assert_eq!(mounts[1].mount_point, PathBuf::from("/proc"));
    }

    #[test]
    fn unescapes_octal_only() {
        assert_eq!(unescape(b"a\\040b\\134c"), b"a b\\c".to_vec());
        assert_eq!(unescape(b"a\\9x\\04"), b"a\\9x\\04".to_vec());
    }

    #[test]
    fn this_process_sees_its_root_mount() {
        let mounts = read().expect("mountinfo");
        assert!(mounts.iter().any(|m| m.mount_point == Path::new("/")));
    }
}

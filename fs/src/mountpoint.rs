//! Checks on a mount point before mounting, and unmounting.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum MountPointError {
    #[error("mount point {0} does not exist")]
    Missing(PathBuf),
    #[error("mount point {0} is not a directory")]
    NotDir(PathBuf),
    #[error("{0} is already a mount point; unmount it first")]
    AlreadyMounted(PathBuf),
    #[error("{0} is a dead FUSE mount (transport endpoint is not connected); run `pai-mount unmount {0}` first")]
    DeadMount(PathBuf),
    #[error("mount point {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The mount point exists, is a directory, and is not already a mount.
pub fn check(path: &Path) -> Result<PathBuf, MountPointError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(MountPointError::Missing(path.into()))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(MountPointError::DeadMount(path.into()))
        }
        Err(e) => {
            return Err(MountPointError::Io {
                path: path.into(),
                source: e,
            })
        }
    };
    if !meta.is_dir() {
        return Err(MountPointError::NotDir(path.into()));
    }
    let abs = std::fs::canonicalize(path).map_err(|e| MountPointError::Io {
        path: path.into(),
        source: e,
    })?;
    if is_mount_point(&abs) {
        return Err(MountPointError::AlreadyMounted(abs));
    }
    Ok(abs)
}

/// The `major:minor` device of the mount at `path` (absolute), from /proc/self/mountinfo.
/// Reads no file under the mount, so it is safe before the FUSE session serves requests.
pub fn mount_device(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let wanted = path.to_string_lossy();
    info.lines().rev().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        (fields.len() > 4 && unescape(fields[4]) == wanted.as_ref()).then(|| fields[2].to_string())
    })
}

/// Whether `path` (absolute) is listed in /proc/self/mountinfo.
pub fn is_mount_point(path: &Path) -> bool {
    mount_device(path).is_some()
}

/// Sets the kernel readahead of the mount at `path` (absolute) to `kb` KiB, through its
/// backing device in sysfs. The kernel starts FUSE mounts at 128 KiB whatever the filesystem
/// asks for, which splits sequential reads into 128 KiB requests; a larger value lets them
/// arrive as `max_read`-sized requests (8x fewer round trips at 1 MiB). Needs root.
pub fn set_read_ahead_kb(path: &Path, kb: u32) -> io::Result<()> {
    let dev = mount_device(path)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not a mount point"))?;
    std::fs::write(
        format!("/sys/class/bdi/{dev}/read_ahead_kb"),
        kb.to_string(),
    )
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the directory answers `ENOTCONN`: a FUSE mount whose daemon died.
pub fn is_dead_mount(path: &Path) -> bool {
    matches!(std::fs::metadata(path), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN))
}

/// Unmounts `path`. A dead FUSE mount is detached; a busy live one is an error unless `lazy`.
pub fn unmount(path: &Path, lazy: bool) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))?;
    let flags = if lazy || is_dead_mount(path) {
        libc::MNT_DETACH
    } else {
        0
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::umount2(c.as_ptr(), flags) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EPERM) {
        // Not root: the setuid helper does it for the user who mounted.
        let arg = if flags != 0 { "-uz" } else { "-u" };
        let status = std::process::Command::new("fusermount3")
            .arg(arg)
            .arg(path)
            .status()
            .or_else(|_| {
                std::process::Command::new("fusermount")
                    .arg(arg)
                    .arg(path)
                    .status()
            })?;
        return if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "fusermount {arg} {} failed",
                path.display()
            )))
        };
    }
    Err(err)
}

//! POSIX attributes kept with objects: mode, owner, group and symlink targets.
//!
//! ## In the bucket
//! The same user metadata s3fs and ossfs 1 write, so buckets shared with them look the same
//! through either tool:
//!
//! | metadata (`x-amz-meta-` / `x-oss-meta-`) | value |
//! |---|---|
//! | `mode` | the full `st_mode` in decimal: file type and permission bits (`33261` = `0o100755`) |
//! | `uid`, `gid` | decimal ids |
//! | `mtime` | seconds since the epoch, optionally with a fraction (`1700000000.123`) |
//! | `atime` | the same, written only once `utimens` set an access time (reads never change it) |
//!
//! A symlink is an object whose mode has the type `S_IFLNK` and whose body is the link's
//! target, as s3fs stores it. A directory's attributes live on its marker object `dir/`.
//! Objects without this metadata get the mount's defaults (`uid`, `gid`, `file_mode`,
//! `dir_mode` options).
//!
//! ## In the manifest
//! Version 2 of the manifest format carries [`Attrs`] per entry (see [`crate::manifest`]),
//! so `stat` and `readlink` never need the network.

/// The file-type bits of a mode.
pub const S_IFMT: u32 = 0o170_000;
pub const S_IFREG: u32 = 0o100_000;
pub const S_IFDIR: u32 = 0o040_000;
pub const S_IFLNK: u32 = 0o120_000;
/// Permission bits, including set-id and sticky.
pub const PERM_BITS: u32 = 0o7777;
/// Longest symlink target kept (Linux's `PATH_MAX`).
pub const MAX_TARGET: usize = 4096;

/// User-metadata names, without the `x-amz-meta-` prefix.
pub const MODE: &str = "mode";
pub const UID: &str = "uid";
pub const GID: &str = "gid";
pub const MTIME: &str = "mtime";
pub const ATIME: &str = "atime";

/// Attributes beyond size and mtime. Every field is optional: what is absent takes the
/// mount's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Attrs {
    /// The full `st_mode`: file type and permission bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// A symlink's target (only when `mode` says symlink).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Box<[u8]>>,
    /// The access time `utimens` set, in ms since the epoch (absent: the mtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atime_ms: Option<i64>,
}

impl Attrs {
    pub fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.target.is_none()
            && self.atime_ms.is_none()
    }

    /// A symlink to `target`, owned by `uid`:`gid`.
    pub fn symlink(target: &[u8], uid: u32, gid: u32) -> Self {
        Self {
            mode: Some(S_IFLNK | 0o777),
            uid: Some(uid),
            gid: Some(gid),
            target: Some(target.into()),
            atime_ms: None,
        }
    }

    pub fn is_symlink(&self) -> bool {
        self.mode.is_some_and(|m| m & S_IFMT == S_IFLNK)
    }

    /// The permission bits, if stored.
    pub fn perm(&self) -> Option<u16> {
        self.mode.map(|m| (m & PERM_BITS) as u16)
    }

    /// Sets the permission bits, keeping the file type (`kind` when none is stored yet).
    pub fn set_perm(&mut self, perm: u32, kind: u32) {
        let kind = self.mode.map_or(kind, |m| m & S_IFMT);
        self.mode = Some(kind | (perm & PERM_BITS));
    }

    /// The user metadata an upload carries: the attributes, and the mtime when given.
    pub fn to_metadata(&self, mtime_ms: Option<i64>) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(4);
        if let Some(m) = self.mode {
            out.push((MODE, m.to_string()));
        }
        if let Some(u) = self.uid {
            out.push((UID, u.to_string()));
        }
        if let Some(g) = self.gid {
            out.push((GID, g.to_string()));
        }
        if let Some(ms) = mtime_ms {
            out.push((MTIME, format_mtime(ms)));
        }
        if let Some(ms) = self.atime_ms {
            out.push((ATIME, format_mtime(ms)));
        }
        out
    }

    /// Reads the attributes (the access time among them) and the mtime from user metadata (`get` looks a name up).
    /// Values that do not parse are ignored, as s3fs does.
    pub fn from_metadata<'a>(get: impl Fn(&str) -> Option<&'a str>) -> (Self, Option<i64>) {
        let num = |name| get(name).and_then(|v: &str| v.trim().parse::<u32>().ok());
        let mode = num(MODE).filter(|m| {
            matches!(m & S_IFMT, 0 | S_IFREG | S_IFDIR | S_IFLNK) && *m <= S_IFMT | PERM_BITS
        });
        let attrs = Self {
            // s3fs writes permission bits alone for some objects: a regular file then.
            mode: mode.map(|m| if m & S_IFMT == 0 { m | S_IFREG } else { m }),
            uid: num(UID),
            gid: num(GID),
            target: None,
            atime_ms: get(ATIME).and_then(parse_mtime),
        };
        (attrs, get(MTIME).and_then(parse_mtime))
    }
}

/// A time as ms since the epoch (negative before it).
pub fn ms_since_epoch(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// The time `ms` milliseconds from the epoch (negative: before it); the inverse of
/// [`ms_since_epoch`].
pub fn time_from_ms(ms: i64) -> std::time::SystemTime {
    let d = std::time::Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        std::time::UNIX_EPOCH + d
    } else {
        std::time::UNIX_EPOCH - d
    }
}

/// An mtime in ms as metadata: seconds with three decimals.
pub fn format_mtime(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let abs = ms.unsigned_abs();
    format!("{sign}{}.{:03}", abs / 1000, abs % 1000)
}

/// Parses `seconds[.fraction]` (s3fs writes whole seconds, rclone nanoseconds) into ms.
pub fn parse_mtime(s: &str) -> Option<i64> {
    let s = s.trim();
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = sec.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut ms = 0i64;
    for (i, b) in frac.bytes().take(3).enumerate() {
        ms += i64::from(b - b'0') * 10i64.pow(2 - i as u32);
    }
    let signed = if s.starts_with('-') { -ms } else { ms };
    sec.checked_mul(1000)?.checked_add(signed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_reads_what_s3fs_writes() {
        let a = Attrs {
            mode: Some(S_IFREG | 0o755),
            uid: Some(1000),
            gid: Some(100),
            target: None,
            atime_ms: Some(1_600_000_000_500),
        };
        let meta = a.to_metadata(Some(1_700_000_000_123));
        let get = |n: &str| meta.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(get(MODE), Some("33261"));
        assert_eq!(get(ATIME), Some("1600000000.500"));
        assert_eq!(Attrs::from_metadata(get), (a, Some(1_700_000_000_123)));
        // s3fs: whole seconds; bare permission bits; junk ignored.
        let s3fs = [("mode", "420"), ("uid", "x"), ("mtime", "1700000000")];
        let get = |n: &str| s3fs.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
        let (attrs, mtime) = Attrs::from_metadata(get);
        assert_eq!(attrs.mode, Some(S_IFREG | 0o644));
        assert_eq!(attrs.uid, None);
        assert_eq!(mtime, Some(1_700_000_000_000));
        // A mode with an unknown file type (a socket) is not taken.
        let odd = [("mode", "49581")];
        let get = |n: &str| odd.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
        assert_eq!(Attrs::from_metadata(get).0.mode, None);
    }

    #[test]
    fn mtimes_parse_with_any_fraction() {
        assert_eq!(parse_mtime("1.5"), Some(1500));
        assert_eq!(parse_mtime("1700000000.123456789"), Some(1_700_000_000_123));
        assert_eq!(parse_mtime("-1.250"), Some(-1250));
        assert_eq!(parse_mtime(&format_mtime(-1)), Some(-1));
        assert_eq!(parse_mtime("1.x"), None);
        for ms in [0, 1_700_000_000_123, -1_250] {
            assert_eq!(ms_since_epoch(time_from_ms(ms)), ms);
        }
        assert_eq!(parse_mtime(""), None);
    }

    #[test]
    fn symlinks_and_permissions() {
        let mut l = Attrs::symlink(b"../lib", 0, 0);
        assert!(l.is_symlink());
        assert_eq!(l.perm(), Some(0o777));
        l.set_perm(0o700, S_IFREG);
        assert!(l.is_symlink(), "chmod keeps the type");
        let mut f = Attrs::default();
        f.set_perm(0o4755, S_IFREG);
        assert_eq!(f.mode, Some(S_IFREG | 0o4755));
    }
}

//! The manifest: a versioned, checksummed, compact binary index of a prefix.
//!
//! One entry per object: key (relative to the prefix), size, ETag and last-modified time.
//! It lives in the bucket at [`MANIFEST_KEY`] under the prefix; the mount hides the whole
//! [`RESERVED_DIR`] directory.
//!
//! ## Format, version 1 (all integers little-endian)
//! ```text
//! magic     8 bytes  "PAIMNFST"
//! version   u32      1
//! hdr_len   u32      length of the JSON header
//! header    JSON     Header: source, build time, counts, builder
//! entries   object_count times:
//!             varint shared     bytes shared with the previous key (front coding)
//!             varint suffix_len, suffix bytes
//!             varint size
//!             zigzag varint     mtime in ms since the epoch
//!             u8 etag kind      0 none, 1 md5 (16 bytes), 2 multipart md5 (16 bytes + varint parts),
//!                               3 other (varint len + bytes, quotes stripped)
//!             (version 2 only)  u8 attribute flags, then each attribute flagged, in this order:
//!                               1 mode (varint st_mode), 2 uid (varint), 4 gid (varint),
//!                               8 symlink target (varint len + bytes),
//!                               16 atime (zigzag varint, ms since the epoch)
//! crc32     u32      CRC-32 (IEEE) of every byte before it
//! trailer   8 bytes  "PAIMNEND"
//! ```
//! Version 2 adds POSIX attributes ([`crate::attrs`]); a manifest without any is written as
//! version 1, so readers that predate version 2 still load dataset manifests. Both load.
//! A directory's attributes ride on its marker entry (`dir/`). In version 2 an entry's mtime is
//! the file's mtime (the `mtime` metadata when the object has it), not the upload time.
//! Entries are sorted in *tree order* ([`tree_cmp`]): bytewise, with `/` sorting before every
//! other byte, so that a directory's children come out in name order and a depth-first tree
//! can be built in one pass. A reader rejects an unknown version, a bad checksum, a truncated
//! file and out-of-order entries with a [`ManifestError`] that says which.

mod build;
mod listing;

use std::cmp::Ordering;

use crate::attrs::Attrs;

pub use build::{
    build, build_and_store, load_or_list, AttrScan, BuildOptions, BuildProgress, Origin,
    AUTO_SCAN_WITHOUT, AUTO_SCAN_WITH_MANIFEST,
};

/// The directory under the prefix that pai-mount owns. Hidden from the mount.
pub const RESERVED_DIR: &str = ".pai-mount";
/// Where the manifest is stored, relative to the prefix.
pub const MANIFEST_KEY: &str = ".pai-mount/manifest.v1";

const MAGIC: &[u8; 8] = b"PAIMNFST";
const TRAILER: &[u8; 8] = b"PAIMNEND";
/// The newest format this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;
/// The format of manifests without attributes.
const PLAIN_VERSION: u32 = 1;
const ATTR_MODE: u8 = 1;
const ATTR_UID: u8 = 2;
const ATTR_GID: u8 = 4;
const ATTR_TARGET: u8 = 8;
const ATTR_ATIME: u8 = 16;

/// An object's ETag, stored compactly when it is the usual MD5 form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Etag {
    None,
    /// `"<32 hex>"`: a single-part upload.
    Md5([u8; 16]),
    /// `"<32 hex>-N"`: a multipart upload of N parts.
    Multipart([u8; 16], u32),
    /// Any other form, without its quotes.
    Other(Box<str>),
}

impl Etag {
    /// Parses an ETag as a store sends it (quotes optional).
    pub fn parse(raw: Option<&str>) -> Self {
        let Some(raw) = raw else { return Etag::None };
        let s = raw.trim_matches('"');
        let md5 = |h: &str| -> Option<[u8; 16]> {
            let mut out = [0u8; 16];
            (h.len() == 32
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then(|| hex::decode_to_slice(h, &mut out).ok())
            .flatten()
            .map(|_| out)
        };
        if let Some(m) = md5(s) {
            return Etag::Md5(m);
        }
        if let Some((h, n)) = s.split_once('-') {
            if let (Some(m), Ok(n)) = (md5(h), n.parse::<u32>()) {
                if n > 0 && n.to_string() == n.to_string().trim_start_matches('0') {
                    return Etag::Multipart(m, n);
                }
            }
        }
        if s.is_empty() {
            return Etag::None;
        }
        Etag::Other(s.into())
    }

    /// The ETag as a quoted HTTP value, or `None`.
    pub fn to_header(&self) -> Option<String> {
        match self {
            Etag::None => None,
            Etag::Md5(m) => Some(format!("\"{}\"", hex::encode(m))),
            Etag::Multipart(m, n) => Some(format!("\"{}-{n}\"", hex::encode(m))),
            Etag::Other(s) => Some(format!("\"{s}\"")),
        }
    }
}

/// One object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key relative to the prefix, as raw bytes.
    pub key: Box<[u8]>,
    pub size: u64,
    pub mtime_ms: i64,
    pub etag: Etag,
    /// Mode, owner, group and symlink target, where known.
    pub attrs: Attrs,
}

/// The manifest's JSON header.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Header {
    /// The source it indexes, as `oss://bucket/prefix`.
    pub source: String,
    /// When the listing finished, in ms since the epoch.
    pub built_at_ms: i64,
    pub object_count: u64,
    pub total_bytes: u64,
    /// Listing requests the build made.
    pub list_requests: u64,
    /// What wrote it, for support.
    pub builder: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not a pai-mount manifest (bad magic)")]
    BadMagic,
    #[error("manifest format version {0} is not supported (this build reads version {FORMAT_VERSION}); rebuild it with `pai-mount manifest build`")]
    UnsupportedVersion(u32),
    #[error("manifest is truncated")]
    Truncated,
    #[error("manifest end marker is damaged: the file is corrupt; rebuild it with `pai-mount manifest build`")]
    DamagedTrailer,
    #[error("manifest checksum mismatch (stored {stored:08x}, computed {computed:08x}): the file is corrupt; rebuild it with `pai-mount manifest build`")]
    Checksum { stored: u32, computed: u32 },
    #[error("manifest header is invalid: {0}")]
    BadHeader(String),
    #[error("manifest entry {index} is invalid: {why}")]
    BadEntry { index: u64, why: String },
}

/// Tree order: bytewise, with `/` before every other byte.
pub fn tree_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let map = |c: u8| if c == b'/' { 0u16 } else { u16::from(c) + 1 };
    for (x, y) in a.iter().zip(b) {
        match map(*x).cmp(&map(*y)) {
            Ordering::Equal => {}
            other => return other,
        }
    }
    a.len().cmp(&b.len())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Encodes a manifest. `entries` must be in [`tree_cmp`] order without duplicates.
pub fn encode(header: &Header, entries: &[Entry]) -> Vec<u8> {
    debug_assert!(entries
        .windows(2)
        .all(|w| tree_cmp(&w[0].key, &w[1].key).is_lt()));
    let header_json = serde_json::to_vec(header).expect("header serializes");
    let mut out = Vec::with_capacity(64 + header_json.len() + entries.len() * 40);
    let with_attrs = entries.iter().any(|e| !e.attrs.is_empty());
    let version = if with_attrs {
        FORMAT_VERSION
    } else {
        PLAIN_VERSION
    };
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(header_json.len() as u32).to_le_bytes());
    out.extend_from_slice(&header_json);
    let mut prev: &[u8] = &[];
    for e in entries {
        let shared = prev
            .iter()
            .zip(e.key.iter())
            .take_while(|(a, b)| a == b)
            .count();
        put_varint(&mut out, shared as u64);
        put_varint(&mut out, (e.key.len() - shared) as u64);
        out.extend_from_slice(&e.key[shared..]);
        put_varint(&mut out, e.size);
        put_varint(&mut out, zigzag(e.mtime_ms));
        match &e.etag {
            Etag::None => out.push(0),
            Etag::Md5(m) => {
                out.push(1);
                out.extend_from_slice(m);
            }
            Etag::Multipart(m, n) => {
                out.push(2);
                out.extend_from_slice(m);
                put_varint(&mut out, u64::from(*n));
            }
            Etag::Other(s) => {
                out.push(3);
                put_varint(&mut out, s.len() as u64);
                out.extend_from_slice(s.as_bytes());
            }
        }
        if with_attrs {
            put_attrs(&mut out, &e.attrs);
        }
        prev = &e.key;
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(TRAILER);
    out
}

fn put_attrs(out: &mut Vec<u8>, a: &Attrs) {
    // A symlink always carries a target (empty if unknown), so the pair always decodes.
    let target = a
        .is_symlink()
        .then(|| a.target.as_deref().unwrap_or_default());
    let flag = |present: bool, bit: u8| if present { bit } else { 0 };
    let flags = flag(a.mode.is_some(), ATTR_MODE)
        | flag(a.uid.is_some(), ATTR_UID)
        | flag(a.gid.is_some(), ATTR_GID)
        | flag(target.is_some(), ATTR_TARGET)
        | flag(a.atime_ms.is_some(), ATTR_ATIME);
    out.push(flags);
    for v in [a.mode, a.uid, a.gid].into_iter().flatten() {
        put_varint(out, u64::from(v));
    }
    if let Some(t) = target {
        put_varint(out, t.len() as u64);
        out.extend_from_slice(t);
    }
    if let Some(ms) = a.atime_ms {
        put_varint(out, zigzag(ms));
    }
}

/// A validated manifest, read lazily: [`Manifest::entries`] decodes one entry at a time.
#[derive(Debug)]
pub struct Manifest<'a> {
    pub header: Header,
    /// The format version it was written in.
    pub version: u32,
    body: &'a [u8],
}

impl<'a> Manifest<'a> {
    /// Checks magic, version, checksum and header. Entries are checked as they are decoded.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ManifestError> {
        if bytes.len() < 8 || &bytes[..8] != MAGIC {
            return Err(ManifestError::BadMagic);
        }
        if bytes.len() < 16 {
            return Err(ManifestError::Truncated);
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
        if !(PLAIN_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(ManifestError::UnsupportedVersion(version));
        }
        if bytes.len() < 16 + 12 {
            return Err(ManifestError::Truncated);
        }
        let tail = &bytes[bytes.len() - 8..];
        if tail != TRAILER {
            // A file cut short ends in arbitrary bytes; a damaged one in an end marker with a
            // byte or two changed.
            let same = tail
                .iter()
                .zip(TRAILER.iter())
                .filter(|(a, b)| a == b)
                .count();
            return Err(if same >= 6 {
                ManifestError::DamagedTrailer
            } else {
                ManifestError::Truncated
            });
        }
        let crc_at = bytes.len() - 12;
        let stored = u32::from_le_bytes(bytes[crc_at..crc_at + 4].try_into().unwrap());
        let computed = crc32fast::hash(&bytes[..crc_at]);
        if stored != computed {
            return Err(ManifestError::Checksum { stored, computed });
        }
        let hdr_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        let body_start = 16usize
            .checked_add(hdr_len)
            .filter(|&e| e <= crc_at)
            .ok_or(ManifestError::Truncated)?;
        let header: Header = serde_json::from_slice(&bytes[16..body_start])
            .map_err(|e| ManifestError::BadHeader(e.to_string()))?;
        Ok(Self {
            header,
            version,
            body: &bytes[body_start..crc_at],
        })
    }

    /// Decodes the entries in order. Each item borrows a key buffer that the next item reuses.
    pub fn for_each(
        &self,
        mut f: impl FnMut(&[u8], u64, i64, Etag, Attrs),
    ) -> Result<(), ManifestError> {
        let mut pos = 0usize;
        let with_attrs = self.version >= 2;
        let body = self.body;
        let mut key: Vec<u8> = Vec::with_capacity(256);
        for index in 0..self.header.object_count {
            let bad = |why: &str| ManifestError::BadEntry {
                index,
                why: why.to_string(),
            };
            let varint = |pos: &mut usize| -> Result<u64, ManifestError> {
                let mut v = 0u64;
                for shift in (0..64).step_by(7) {
                    let b = *body.get(*pos).ok_or_else(|| bad("truncated varint"))?;
                    *pos += 1;
                    v |= u64::from(b & 0x7f) << shift;
                    if b & 0x80 == 0 {
                        return Ok(v);
                    }
                }
                Err(bad("varint too long"))
            };
            let shared = varint(&mut pos)? as usize;
            let suffix = varint(&mut pos)? as usize;
            if shared > key.len() {
                return Err(bad("shared prefix longer than the previous key"));
            }
            let end = pos.checked_add(suffix).filter(|&e| e <= body.len());
            let end = end.ok_or_else(|| bad("key runs past the end"))?;
            let suffix_bytes = &body[pos..end];
            // prev = P + a and key = P + b share P, so their order is the order of a and b.
            if index > 0 && !tree_cmp(&key[shared..], suffix_bytes).is_lt() {
                return Err(bad("entries are out of order"));
            }
            key.truncate(shared);
            key.extend_from_slice(suffix_bytes);
            pos = end;
            let size = varint(&mut pos)?;
            let mtime = unzigzag(varint(&mut pos)?);
            let kind = *body.get(pos).ok_or_else(|| bad("truncated etag"))?;
            pos += 1;
            let md5 = |pos: &mut usize| -> Result<[u8; 16], ManifestError> {
                let s = body
                    .get(*pos..*pos + 16)
                    .ok_or_else(|| bad("truncated etag"))?;
                *pos += 16;
                Ok(s.try_into().unwrap())
            };
            let etag = match kind {
                0 => Etag::None,
                1 => Etag::Md5(md5(&mut pos)?),
                2 => {
                    let m = md5(&mut pos)?;
                    Etag::Multipart(m, varint(&mut pos)? as u32)
                }
                3 => {
                    let len = varint(&mut pos)? as usize;
                    let s = pos
                        .checked_add(len)
                        .and_then(|end| body.get(pos..end))
                        .ok_or_else(|| bad("truncated etag"))?;
                    pos += len;
                    let s = std::str::from_utf8(s).map_err(|_| bad("etag is not UTF-8"))?;
                    Etag::Other(s.into())
                }
                _ => return Err(bad("unknown etag kind")),
            };
            let mut attrs = Attrs::default();
            if with_attrs {
                let flags = *body.get(pos).ok_or_else(|| bad("truncated attributes"))?;
                pos += 1;
                if flags & !(ATTR_MODE | ATTR_UID | ATTR_GID | ATTR_TARGET | ATTR_ATIME) != 0 {
                    return Err(bad("unknown attribute flags"));
                }
                let small = |flag: u8, pos: &mut usize| -> Result<Option<u32>, ManifestError> {
                    if flags & flag == 0 {
                        return Ok(None);
                    }
                    let v = varint(pos)?;
                    u32::try_from(v)
                        .map(Some)
                        .map_err(|_| bad("attribute out of range"))
                };
                attrs.mode = small(ATTR_MODE, &mut pos)?;
                attrs.uid = small(ATTR_UID, &mut pos)?;
                attrs.gid = small(ATTR_GID, &mut pos)?;
                if flags & ATTR_TARGET != 0 {
                    let len = varint(&mut pos)? as usize;
                    if len > crate::attrs::MAX_TARGET {
                        return Err(bad("symlink target too long"));
                    }
                    let t = body
                        .get(pos..pos + len)
                        .ok_or_else(|| bad("truncated symlink target"))?;
                    pos += len;
                    attrs.target = Some(t.into());
                }
                if flags & ATTR_ATIME != 0 {
                    attrs.atime_ms = Some(unzigzag(varint(&mut pos)?));
                }
                if attrs.target.is_some() != attrs.is_symlink() {
                    return Err(bad(
                        "a symlink target without a symlink mode, or the reverse",
                    ));
                }
            }
            f(&key, size, mtime, etag, attrs);
        }
        if pos != body.len() {
            return Err(ManifestError::BadEntry {
                index: self.header.object_count,
                why: "trailing bytes after the last entry".into(),
            });
        }
        Ok(())
    }

    /// Decodes every entry into memory.
    pub fn entries(&self) -> Result<Vec<Entry>, ManifestError> {
        let mut out = Vec::with_capacity(self.header.object_count as usize);
        self.for_each(|key, size, mtime_ms, etag, attrs| {
            out.push(Entry {
                key: key.into(),
                size,
                mtime_ms,
                etag,
                attrs,
            })
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests;

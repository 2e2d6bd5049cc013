//! The write-back journal: one small, versioned, checksummed record per staged file that was
//! closed (or fsynced) and is not yet in the bucket.
//!
//! A record says "the bytes of staging file `id` belong at `key`". It is written before
//! `close()` returns (after the staging file itself is fsynced), and removed only after the
//! upload of that exact version completed. At the next mount every record is uploaded again,
//! so an acknowledged write survives a crash of the daemon.
//!
//! ## Format (version 1)
//! A JSON body framed by [`crate::framing`] with the magic `PAIJRNL1` (magic, version, length,
//! body, CRC-32). A record that fails any check is never trusted: it is renamed aside to
//! `<id>.rec.damaged` (with its staging file kept) and reported by `pai-mount status`.
//!
//! ## Invariants
//! - A record replaces its predecessor atomically (temporary file, fsync, rename, fsync of the
//!   directory), so a crash leaves the old record or the new one, never a mix.
//! - Records are only ever removed after the version they name is in the bucket, or after
//!   the file was unlinked.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"PAIJRNL1";
pub const FORMAT_VERSION: u32 = 1;

/// Where a pending file stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordState {
    /// Waiting for (or in) its upload.
    Pending,
    /// Its upload failed permanently in this mount; retried at the next mount.
    Failed,
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The staging file's id.
    pub id: u64,
    /// The source the file belongs to (`oss://bucket/prefix/`).
    pub source: String,
    /// The key relative to the source's prefix.
    pub key: String,
    /// Size when the record was written.
    pub size: u64,
    pub mtime_ms: i64,
    pub state: RecordState,
    /// The last upload error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Upload attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// Mode, owner, group and symlink target the object is uploaded with (absent in records
    /// written before attributes were kept: the defaults then).
    #[serde(default, skip_serializing_if = "pai_store::attrs::Attrs::is_empty")]
    pub attrs: pai_store::attrs::Attrs,
}

/// Why a record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Frame(#[from] crate::framing::FrameError),
    #[error("bad record body: {0}")]
    Body(String),
}

pub fn encode(r: &Record) -> Vec<u8> {
    let body = serde_json::to_vec(r).expect("records serialize");
    crate::framing::encode(MAGIC, FORMAT_VERSION, &body)
}

pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
    let body = crate::framing::decode(MAGIC, FORMAT_VERSION, bytes)?;
    serde_json::from_slice(body).map_err(|e| RecordError::Body(e.to_string()))
}

/// The journal directory.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
}

/// What [`Journal::scan`] found.
#[derive(Debug, Default)]
pub struct Scan {
    pub records: Vec<Record>,
    /// Records that failed their checks, renamed aside, with the reason.
    pub damaged: Vec<(PathBuf, String)>,
}

impl Journal {
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        super::create_private_dir(&dir)?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}.rec"))
    }

    /// Writes (or replaces) the record of `r.id` durably.
    pub fn put(&self, r: &Record) -> io::Result<()> {
        let tmp = self.dir.join(format!("{:016x}.rec.tmp", r.id));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&encode(r))?;
        f.sync_data()?;
        drop(f);
        fs::rename(&tmp, self.path(r.id))?;
        self.sync_dir()
    }

    /// Removes the record of `id` durably; a missing record is not an error.
    pub fn remove(&self, id: u64) -> io::Result<()> {
        match fs::remove_file(self.path(id)) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    /// Reads every record. Damaged ones are renamed aside and listed; temporary files of an
    /// interrupted `put` are removed (the record they were replacing is still in place).
    pub fn scan(&self) -> io::Result<Scan> {
        let mut scan = Scan::default();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".rec.tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            if name.ends_with(".rec.damaged") {
                scan.damaged
                    .push((path.clone(), "damaged in an earlier mount".into()));
                continue;
            }
            if !name.ends_with(".rec") {
                continue;
            }
            let bytes = fs::read(&path)?;
            match decode(&bytes) {
                Ok(r) => scan.records.push(r),
                Err(e) => {
                    let aside = path.with_extension("rec.damaged");
                    fs::rename(&path, &aside)?;
                    tracing::error!(
                        record = %aside.display(),
                        "journal record is damaged ({e}); set aside, its staging file is kept"
                    );
                    scan.damaged.push((aside, e.to_string()));
                }
            }
        }
        scan.records.sort_by_key(|r| r.id);
        Ok(scan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64) -> Record {
        Record {
            id,
            source: "s3://b/p/".into(),
            key: "dir/file.bin".into(),
            size: 12345,
            mtime_ms: 1_700_000_000_123,
            state: RecordState::Pending,
            error: None,
            attempts: 0,
            attrs: Default::default(),
        }
    }

    #[test]
    fn records_round_trip_and_damage_is_detected() {
        let r = record(7);
        let bytes = encode(&r);
        assert_eq!(decode(&bytes).unwrap(), r);
        for cut in [0, 5, 15, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        use crate::framing::FrameError;
        assert!(matches!(
            decode(&flipped),
            Err(RecordError::Frame(FrameError::Checksum))
        ));
        let mut newer = bytes.clone();
        newer[8] = 9;
        assert!(matches!(
            decode(&newer),
            Err(RecordError::Frame(FrameError::Version { found: 9, .. }))
        ));
        assert!(matches!(
            decode(b"hello world, not a record"),
            Err(RecordError::Frame(FrameError::BadMagic))
        ));
    }

    #[test]
    fn put_replace_remove_and_scan() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path().join("journal")).unwrap();
        j.put(&record(1)).unwrap();
        let mut r2 = record(2);
        j.put(&r2).unwrap();
        r2.state = RecordState::Failed;
        r2.error = Some("503".into());
        j.put(&r2).unwrap();
        std::fs::write(j.dir().join("0000000000000003.rec"), b"PAIJRNL1garbage").unwrap();
        std::fs::write(j.dir().join("0000000000000004.rec.tmp"), b"half").unwrap();
        let scan = j.scan().unwrap();
        assert_eq!(scan.records, vec![record(1), r2]);
        assert_eq!(scan.damaged.len(), 1);
        assert!(scan.damaged[0]
            .0
            .to_string_lossy()
            .ends_with(".rec.damaged"));
        j.remove(1).unwrap();
        j.remove(1).unwrap();
        let scan = j.scan().unwrap();
        assert_eq!(scan.records.len(), 1);
        assert_eq!(scan.damaged.len(), 1, "damaged records stay reported");
        assert!(!j.dir().join("0000000000000004.rec.tmp").exists());
    }
}

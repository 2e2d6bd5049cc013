//! Copying a prefix to local disk, fast and resumable: what `pai-mount cp` and
//! `pai_mount.copy` run.
//!
//! - Objects come from the manifest (a listing only when there is none); nothing is listed per
//!   directory. Keys relative to the prefix become paths under the directory.
//! - Every GET is a ranged GET pinned to the object's ETag (and size), so a file is one version
//!   of its object or an error. Objects larger than `part_size` go as parallel ranges. A
//!   whole-object MD5 ETag is also checked against the bytes for objects of one part.
//! - A file is written as `<name>.part`, given the object's mtime and its ETag in the
//!   `user.pai-mount.etag` extended attribute, then renamed: a name without `.part` is always
//!   complete. With `fsync`, one `syncfs` at the end makes everything durable before success is
//!   reported. A rerun skips files whose size and ETag match (size and mtime where the
//!   filesystem has no user xattrs) and finishes the rest.
//! - A full disk stops new copies (the rest are counted as not started); other failures are
//!   counted per object, and the copy goes on.
//! - Memory: the namespace (about 72 bytes per object) plus at most `jobs` requests, each
//!   streaming its body through a 4-chunk channel.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use futures::StreamExt;
use pai_store::manifest::{self, BuildOptions, Etag};
use pai_store::metrics::Metrics;
use pai_store::object::checksum::FullChecksum;
use pai_store::object::{ObjectSource, PinnedObject, ReadError};
use tokio::sync::Semaphore;

use crate::LoadError;

const ETAG_XATTR: &str = "user.pai-mount.etag";
/// Fetches of an object again after its bytes failed the store's checksum.
const CHECKSUM_RETRIES: u32 = 3;

/// How to copy.
#[derive(Debug, Clone, Copy)]
pub struct CopyOptions {
    /// Requests in flight (objects, and parts of large objects).
    pub jobs: usize,
    /// Objects larger than this are fetched as parallel ranges of this size.
    pub part_size: u64,
    /// Check the MD5 of single-part objects against their ETag, and the CRCs of objects copied
    /// in several ranges against the full-object checksum the store states.
    pub verify: bool,
    /// One `syncfs` at the end: success means every byte is on disk.
    pub fsync: bool,
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self {
            jobs: 32,
            part_size: 8 << 20,
            verify: true,
            fsync: false,
        }
    }
}

/// What a copy did: exact counts.
#[derive(Debug, Clone, Default)]
pub struct CopyReport {
    /// Objects in the source (that can be file names).
    pub objects: u64,
    pub copied: u64,
    /// Already complete at the destination.
    pub skipped: u64,
    /// Failed (including `not_started`).
    pub failed: u64,
    /// Not started because the disk filled.
    pub not_started: u64,
    /// Keys that cannot be file names, not copied (docs/SEMANTICS.md).
    pub unnamable_keys: u64,
    pub bytes_fetched: u64,
    pub seconds: f64,
    /// The first failures, one line each (at most 100).
    pub errors: Vec<String>,
}

/// Told about progress as objects finish.
pub trait CopyProgress: Send + Sync {
    fn start(&self, _objects: u64, _bytes: u64) {}
    fn finish_one(&self, _bytes: u64, _ok: bool) {}
}

/// Reports nothing.
pub struct NoProgress;
impl CopyProgress for NoProgress {}

/// Why one object was not copied.
#[derive(Debug)]
enum CopyError {
    /// The local disk is full: stop starting new copies.
    DiskFull(std::io::Error),
    /// The bytes did not match the object's checksum (retried).
    Corrupt(String),
    Other(String),
}

impl From<std::io::Error> for CopyError {
    fn from(e: std::io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            CopyError::DiskFull(e)
        } else {
            CopyError::Other(e.to_string())
        }
    }
}

/// Copies every object under `source` to `dest` (created if missing). Fails as a whole only
/// when it cannot start (no objects, an unwritable destination, an unreachable source);
/// per-object failures are in the report.
pub async fn copy_prefix(
    source: &ObjectSource,
    url: &str,
    dest: &Path,
    options: &CopyOptions,
    progress: &dyn CopyProgress,
) -> Result<CopyReport, LoadError> {
    let local = |what: &str, e: std::io::Error| LoadError::Invalid {
        why: format!("{what} {}: {e}", dest.display()),
    };
    std::fs::create_dir_all(dest).map_err(|e| local("creating", e))?;
    let probe = dest.join(format!(".pai-mount-cp-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| local("cannot write to", e))?;
    let _ = std::fs::remove_file(probe);
    // Logs (at warn) when there is no manifest and the prefix is listed instead.
    let (ns, _) = manifest::load_or_list(source, &BuildOptions::default())
        .await
        .map_err(|e| LoadError::from_source(url, e))?;
    if ns.file_count() == 0 {
        return Err(LoadError::NotFound {
            url: url.to_string(),
            key: None,
            why: format!("no objects under {}", source.source().display_root()),
        });
    }
    let started = Instant::now();
    let fetched_before = source.metrics().get_bytes.load(Ordering::Relaxed);
    progress.start(ns.file_count(), ns.total_bytes());
    let requests = Arc::new(Semaphore::new(options.jobs.max(1)));
    let disk_full = Arc::new(AtomicBool::new(false));
    let (copied, skipped, failed, not_started) = (
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    );
    let errors = Mutex::new(Vec::new());
    let note = |line: String| {
        let mut e = errors.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() < 100 {
            e.push(line);
        }
    };
    let part = options.part_size.max(1 << 20);
    let objects = ns
        .files()
        .filter_map(|id| Some((ns.pin(id)?, ns.info(id)?.mtime_ms)));
    futures::stream::iter(objects)
        .for_each_concurrent(options.jobs.max(1), |(o, mtime_ms)| {
            let (requests, disk_full) = (requests.clone(), disk_full.clone());
            let (copied, skipped, failed, not_started, note) =
                (&copied, &skipped, &failed, &not_started, &note);
            async move {
                let size = o.size;
                if disk_full.load(Ordering::Acquire) {
                    not_started.fetch_add(1, Ordering::Relaxed);
                    failed.fetch_add(1, Ordering::Relaxed);
                    progress.finish_one(size, false);
                    return;
                }
                let path = dest.join(&*o.key);
                match copy_one(source, &o, mtime_ms, &path, part, &requests, options.verify).await {
                    Ok(true) => {
                        copied.fetch_add(1, Ordering::Relaxed);
                        progress.finish_one(size, true);
                    }
                    Ok(false) => {
                        skipped.fetch_add(1, Ordering::Relaxed);
                        progress.finish_one(size, true);
                    }
                    Err(CopyError::DiskFull(e)) => {
                        if !disk_full.swap(true, Ordering::AcqRel) {
                            note(format!(
                                "{}: the disk is full ({e}); stopping",
                                path.display()
                            ));
                        }
                        not_started.fetch_add(1, Ordering::Relaxed);
                        failed.fetch_add(1, Ordering::Relaxed);
                        progress.finish_one(size, false);
                    }
                    Err(CopyError::Other(e) | CopyError::Corrupt(e)) => {
                        note(format!("{}: {e}", o.key));
                        failed.fetch_add(1, Ordering::Relaxed);
                        progress.finish_one(size, false);
                    }
                }
            }
        })
        .await;
    // With fsync, one syncfs instead of an fsync per file: when the copy reports success,
    // every copied byte is on disk. Without it (like cp, rclone and ossutil), a kill loses
    // nothing (the page cache stays), and after a power loss a rerun recopies any file whose
    // size does not match.
    if options.fsync {
        let d = dest.to_path_buf();
        let synced = tokio::task::spawn_blocking(move || syncfs(&d))
            .await
            .expect("syncfs panicked");
        if let Err(e) = synced {
            note(format!("{}: flushing to disk failed: {e}", dest.display()));
            failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(CopyReport {
        objects: ns.file_count(),
        copied: copied.into_inner(),
        skipped: skipped.into_inner(),
        failed: failed.into_inner(),
        not_started: not_started.into_inner(),
        unnamable_keys: ns.skipped().total(),
        bytes_fetched: source.metrics().get_bytes.load(Ordering::Relaxed) - fetched_before,
        seconds: started.elapsed().as_secs_f64(),
        errors: errors.into_inner().unwrap_or_else(|p| p.into_inner()),
    })
}

/// Copies one object unless a complete copy is there. `Ok(false)`: skipped.
async fn copy_one(
    source: &ObjectSource,
    o: &PinnedObject,
    mtime: i64,
    path: &Path,
    part: u64,
    requests: &Arc<Semaphore>,
    verify: bool,
) -> Result<bool, CopyError> {
    let etag = o.etag.as_deref().map(str::to_string);
    if is_complete(path, o.size, etag.as_deref()) {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = part_path(path);
    let file = Arc::new(
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?,
    );
    let ranges: Vec<_> = (0..o.size.div_ceil(part))
        .map(|i| i * part..o.size.min((i + 1) * part))
        .collect();
    // The MD5 of a single-part ETag can be checked while the one range streams in.
    let md5 = match Etag::parse(o.etag.as_deref()) {
        Etag::Md5(m) if verify && ranges.len() <= 1 => Some(m),
        _ => None,
    };
    // An object of several ranges: the CRCs of its ranges must combine to the full-object
    // checksum the store states (asked with one HEAD), else it is fetched again, whole.
    let full = if verify && ranges.len() > 1 {
        source
            .full_checksum(&o.key, o.etag.as_deref())
            .await
            .map_err(|e| CopyError::Other(e.to_string()))?
    } else {
        None
    };
    let mut attempt = 0;
    let result = loop {
        attempt += 1;
        let r = fetch_ranges(source, o, &file, &ranges, md5, full, requests).await;
        match r {
            Err(CopyError::Corrupt(why)) if attempt <= CHECKSUM_RETRIES => {
                tracing::warn!(key = %o.key, attempt, "{why}; fetching it again");
            }
            Err(CopyError::Corrupt(why)) => break Err(CopyError::Other(why)),
            other => break other,
        }
    };
    if let Err(e) = result {
        drop(file);
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let (path, size, etag) = (path.to_path_buf(), o.size, etag);
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        file.set_len(size)?;
        if let Some(e) = &etag {
            set_etag(&tmp, e);
        }
        file.set_modified(UNIX_EPOCH + Duration::from_millis(mtime.max(0) as u64))?;
        drop(file);
        std::fs::rename(&tmp, &path)
    })
    .await
    .expect("finishing a copy panicked")?;
    Ok(true)
}

/// Fetches `ranges` of `o` into `file` in parallel. With `full`, each range's CRC is computed
/// as it is written, and together they must make the object's checksum.
async fn fetch_ranges(
    source: &ObjectSource,
    o: &PinnedObject,
    file: &Arc<std::fs::File>,
    ranges: &[std::ops::Range<u64>],
    md5: Option<[u8; 16]>,
    full: Option<FullChecksum>,
    requests: &Arc<Semaphore>,
) -> Result<(), CopyError> {
    let mut results = futures::stream::iter(ranges.iter().cloned())
        .map(|r| {
            let (requests, file) = (requests.clone(), file.clone());
            async move {
                let _permit = requests.acquire_owned().await.expect("never closed");
                let start = r.start;
                let len = r.end - r.start;
                fetch_range(source, o, file, r, md5, full)
                    .await
                    .map(|crc| (start, crc, len))
            }
        })
        .buffer_unordered(16);
    let mut crcs = Vec::with_capacity(ranges.len());
    while let Some(r) = results.next().await {
        crcs.push(r?);
    }
    drop(results);
    if let Some(full) = full {
        crcs.sort_unstable_by_key(|(start, _, _)| *start);
        let parts: Vec<(u64, u64)> = crcs.iter().map(|&(_, c, l)| (c.unwrap_or(0), l)).collect();
        if let Err((stated, computed)) = full.check_ranges(&parts) {
            Metrics::add(&source.metrics().checksum_mismatches, 1);
            return Err(CopyError::Corrupt(format!(
                "{}: the bytes received do not match the object's checksum ({stated}; received {computed})",
                o.key
            )));
        }
    }
    Ok(())
}

/// Streams one range into the file at its offset: the body goes chunk by chunk through a
/// 4-chunk channel to a blocking writer, so a request holds a few chunks of memory
/// however large its range. With `md5`, the chunks are hashed as they are written.
async fn fetch_range(
    source: &ObjectSource,
    o: &PinnedObject,
    file: Arc<std::fs::File>,
    r: std::ops::Range<u64>,
    md5: Option<[u8; 16]>,
    full: Option<FullChecksum>,
) -> Result<Option<u64>, CopyError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, bytes::Bytes)>(4);
    let key = o.key.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<Option<u64>, CopyError> {
        use md5::Digest;
        let mut hasher = md5.map(|_| md5::Md5::new());
        let mut crc = full.map(FullChecksum::range_hasher);
        while let Some((off, chunk)) = rx.blocking_recv() {
            if let Some(h) = hasher.as_mut() {
                h.update(&chunk);
            }
            if let Some(c) = crc.as_mut() {
                c.update(&chunk);
            }
            file.write_all_at(&chunk, off)?;
        }
        if let (Some(want), Some(h)) = (md5, hasher) {
            let got: [u8; 16] = h.finalize().into();
            if got != want {
                return Err(CopyError::Other(format!(
                    "{}: content does not match its MD5 ETag",
                    key
                )));
            }
        }
        Ok(crc.map(|c| c.finalize()))
    });
    let fetched = source
        .get_range_chunks(&o.key, r, o.etag.as_deref(), o.size, |off, chunk| {
            let tx = tx.clone();
            async move {
                tx.send((off, chunk)).await.map_err(|_| ReadError::Store {
                    key: o.key.to_string(),
                    source: "the local write stopped".into(),
                })
            }
        })
        .await;
    drop(tx);
    // A local failure (a full disk) explains a stopped transfer: report it first.
    let crc = writer.await.expect("writer panicked")?;
    fetched.map(|()| crc).map_err(|e| match e {
        ReadError::Corrupt { .. } => CopyError::Corrupt(e.to_string()),
        e => CopyError::Other(e.to_string()),
    })
}

fn syncfs(dir: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(dir)?;
    // SAFETY: syncfs on a descriptor we own; no memory is involved.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn part_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

/// Whether `path` is a finished copy of this version of the object.
fn is_complete(path: &Path, size: u64, etag: Option<&str>) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if !meta.is_file() || meta.len() != size {
        return false;
    }
    match (etag, get_etag(path)) {
        (Some(want), Some(got)) => want == got,
        (None, _) => true,
        // No xattr (a filesystem without user xattrs): the size matched, and the rename
        // happened only after the whole file was written.
        (Some(_), None) => !xattrs_supported(path),
    }
}

fn cpath(p: &Path) -> Option<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_bytes()).ok()
}

fn set_etag(path: &Path, etag: &str) {
    let (Some(p), Ok(name)) = (cpath(path), std::ffi::CString::new(ETAG_XATTR)) else {
        return;
    };
    // SAFETY: both strings are NUL-terminated and outlive the call; the value pointer and
    // length describe `etag`'s bytes.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            name.as_ptr(),
            etag.as_ptr().cast(),
            etag.len(),
            0,
        )
    };
    if rc != 0 {
        tracing::debug!(path = %path.display(), "cannot record the etag: {}", std::io::Error::last_os_error());
    }
}

fn get_etag(path: &Path) -> Option<String> {
    let p = cpath(path)?;
    let name = std::ffi::CString::new(ETAG_XATTR).ok()?;
    let mut buf = [0u8; 256];
    // SAFETY: the strings are NUL-terminated; `buf` is writable for its whole length.
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| String::from_utf8_lossy(&buf[..n as usize]).to_string())
}

fn xattrs_supported(path: &Path) -> bool {
    let Some(p) = cpath(path) else { return false };
    let name = std::ffi::CString::new(ETAG_XATTR).expect("no NUL");
    // SAFETY: a size query (null buffer, length 0) of a NUL-terminated path and name.
    let n = unsafe { libc::getxattr(p.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    n >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOTSUP)
}

//! The local-disk block cache: 1 MiB blocks of objects, persistent across mounts.
//!
//! ## Layout
//! ```text
//! <dir>/            mode 0700
//!   lock            flock'ed by the daemon that uses the directory (holds its pid)
//!   blocks/ab/abcdef...   one file per block, named by SHA-256 of the block's identity
//! ```
//! A block's identity is (source root, key, ETag, block index): a new version of an object has
//! a new ETag, so it never reads an old version's blocks.
//!
//! ## Block file format, version 2
//! ```text
//! magic "PAIBLOCK" | version u32 | payload_len u32 | crc32(identity ++ payload) u32
//! | identity_len u32 | identity bytes | zeros up to a multiple of 4 KiB
//! | payload | zeros up to a multiple of 4 KiB
//! ```
//! The payload starts and the file ends on a 4 KiB boundary, so blocks are written with
//! `O_DIRECT`: filling the cache during a cold read leaves no dirty page cache behind (a 1 GiB
//! read used to leave 1 GB of dirty pages to write back, competing with the reader for memory).
//! Filesystems that refuse `O_DIRECT` get buffered writes (logged once). Blocks are read
//! buffered, which lets the kernel's readahead work; version 1 files (the same header,
//! unpadded) are still read.
//!
//! A file with a bad magic, unknown version, wrong length, wrong identity, non-zero padding or
//! wrong checksum is a miss: it is deleted and counted in `cache.disk_corrupt`. Wrong bytes are
//! never served.
//!
//! ## Bounds
//! - `max_bytes`: least-recently-used blocks are deleted to stay under it (an `lru` index in
//!   memory, rebuilt at startup from the files, oldest modification first).
//! - `min_free_bytes`: when the filesystem has less free space, the cache stops filling (reads go
//!   on from the network) and checks again every [`FULL_RECHECK`]. A write that fails with
//!   `ENOSPC` does the same. Writes go to a temporary file renamed into place, so a crash or a
//!   full disk never leaves a partial block under a block's name.

pub mod engine;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};

pub use engine::{open_engine, EngineKind, IoEngine};

use crate::buf::{align_up, AlignedBuf, BufPool, ALIGN};
use crate::metrics::Metrics;

/// Bytes per cache block. Large enough that a block is one efficient GET and one file, small
/// enough that a random 4 KiB read does not fetch much more than it needs.
pub const BLOCK_SIZE: u64 = 1 << 20;
const MAGIC: &[u8; 8] = b"PAIBLOCK";
const VERSION: u32 = 2;
const FIXED_HEADER: usize = 8 + 4 + 4 + 4 + 4;
/// Idle read buffers kept for reuse (64 MiB at most).
const READ_POOL_BUFFERS: usize = 64;
/// How long a full cache waits before checking free space again.
pub const FULL_RECHECK: Duration = Duration::from_secs(5);

/// Where and how big.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    /// Keep at least this much free on the cache's filesystem.
    pub min_free_bytes: u64,
    pub engine: EngineKind,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "cache directory {dir} is in use by another pai-mount ({holder}); use another --cache-dir"
    )]
    Locked { dir: PathBuf, holder: String },
    #[error("cache directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Which block of which object version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockId {
    pub root: Arc<str>,
    pub key: Arc<str>,
    pub etag: Arc<str>,
    pub index: u64,
}

impl BlockId {
    fn identity(&self) -> Vec<u8> {
        format!("{}\n{}\n{}\n{}", self.root, self.key, self.etag, self.index).into_bytes()
    }

    fn name(identity: &[u8]) -> [u8; 16] {
        let d = Sha256::digest(identity);
        d[..16].try_into().unwrap()
    }
}

/// The disk tier.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    config: CacheConfig,
    engine: Arc<dyn IoEngine>,
    /// Block name -> file size, least recently used first.
    index: Mutex<lru::LruCache<[u8; 16], u64>>,
    used: AtomicU64,
    full: AtomicBool,
    full_since: Mutex<Option<Instant>>,
    _lock: File,
    metrics: Arc<Metrics>,
    tmp_seq: AtomicU64,
    /// Whether block files are written with `O_DIRECT` (until the filesystem refuses it).
    direct: AtomicBool,
    /// Buffers for whole block files (a 1 MiB payload behind a 4 KiB header).
    read_pool: Arc<BufPool>,
    /// Blocks forgotten recently, with the forget epoch: a write of one that started before
    /// its forget must not land (it may carry the bytes that were found damaged).
    forgotten: Mutex<HashMap<[u8; 16], (u64, Instant)>>,
    forget_epoch: AtomicU64,
}

/// How long a forgotten block's tombstone is kept: longer than any block write takes.
const FORGET_TOMBSTONE: Duration = Duration::from_secs(120);

fn io_err(dir: &Path) -> impl Fn(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        dir: dir.to_path_buf(),
        source,
    }
}

impl DiskCache {
    /// Opens (creating with mode 0700) and locks the directory, and indexes existing blocks.
    pub fn open(config: CacheConfig, metrics: Arc<Metrics>) -> Result<Self, CacheError> {
        let dir = config.dir.clone();
        let err = io_err(&dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("blocks"))
            .map_err(&err)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(&err)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join("lock"))
            .map_err(&err)?;
        if !crate::dirlock::lock_exclusive(&lock) {
            let holder = std::fs::read_to_string(dir.join("lock"))
                .ok()
                .map(|s| format!("pid {}", s.trim()))
                .filter(|s| s != "pid ")
                .unwrap_or_else(|| "unknown pid".into());
            return Err(CacheError::Locked {
                dir: dir.clone(),
                holder,
            });
        }
        lock.set_len(0).map_err(&err)?;
        std::os::unix::fs::FileExt::write_all_at(
            &lock,
            std::process::id().to_string().as_bytes(),
            0,
        )
        .map_err(&err)?;
        let engine = open_engine(config.engine).map_err(&err)?;
        let cache = Self {
            dir: dir.clone(),
            config,
            engine,
            index: Mutex::new(lru::LruCache::unbounded()),
            used: AtomicU64::new(0),
            full: AtomicBool::new(false),
            full_since: Mutex::new(None),
            _lock: lock,
            metrics,
            tmp_seq: AtomicU64::new(0),
            direct: AtomicBool::new(true),
            read_pool: BufPool::new(BLOCK_SIZE as usize + ALIGN, READ_POOL_BUFFERS),
            forgotten: Mutex::new(HashMap::new()),
            forget_epoch: AtomicU64::new(0),
        };
        cache.scan().map_err(&err)?;
        tracing::info!(
            dir = %dir.display(),
            blocks = cache.index.lock().unwrap().len(),
            bytes = cache.used.load(Ordering::Relaxed),
            engine = cache.engine.name(),
            "disk cache ready"
        );
        Ok(cache)
    }

    fn scan(&self) -> io::Result<()> {
        let mut found = Vec::new();
        for sub in std::fs::read_dir(self.dir.join("blocks"))? {
            let sub = sub?;
            if !sub.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(sub.path())? {
                let f = f?;
                let name = f.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("tmp-") {
                    let _ = std::fs::remove_file(f.path()); // left by a crash
                    continue;
                }
                let Some(id) = hex::decode(name.as_bytes())
                    .ok()
                    .and_then(|v| <[u8; 16]>::try_from(v).ok())
                else {
                    continue;
                };
                let meta = f.metadata()?;
                found.push((meta.modified().ok(), id, meta.len()));
            }
        }
        found.sort_by_key(|(t, _, _)| *t);
        let mut index = self.index.lock().unwrap();
        for (_, id, len) in found {
            index.put(id, len);
            self.used.fetch_add(len, Ordering::Relaxed);
        }
        drop(index);
        self.evict(0);
        Ok(())
    }

    fn path(&self, name: &[u8; 16]) -> PathBuf {
        let hex = hex::encode(name);
        self.dir.join("blocks").join(&hex[..2]).join(hex)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    /// Bytes of block files held.
    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The block, if cached and intact.
    pub async fn get(&self, id: &BlockId) -> Option<Bytes> {
        let identity = id.identity();
        let name = BlockId::name(&identity);
        if self.index.lock().unwrap().get(&name).is_none() {
            Metrics::add(&self.metrics.disk_misses, 1);
            return None;
        }
        let path = self.path(&name);
        let verdict = match self.read_file(&path).await {
            Ok(buf) => decode(buf, &identity),
            Err(e) => Err(format!("read failed: {e}")),
        };
        match verdict {
            Ok(payload) => {
                Metrics::add(&self.metrics.disk_hits, 1);
                Some(payload)
            }
            Err(why) => {
                tracing::warn!(path = %path.display(), "discarding a damaged cache block: {why}");
                Metrics::add(&self.metrics.disk_corrupt, 1);
                Metrics::add(&self.metrics.disk_misses, 1);
                self.remove(&name);
                None
            }
        }
    }

    /// Opens a block file for writing with `O_DIRECT` while the filesystem accepts it, else
    /// buffered.
    fn open_block(&self, path: &Path, options: &mut std::fs::OpenOptions) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        if self.direct.load(Ordering::Relaxed) {
            match options.clone().custom_flags(libc::O_DIRECT).open(path) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.no_direct(&e),
                other => return other,
            }
        }
        options.open(path)
    }

    fn no_direct(&self, e: &io::Error) {
        if self.direct.swap(false, Ordering::Relaxed) {
            tracing::info!(dir = %self.dir.display(), "the cache's filesystem refuses O_DIRECT ({e}); block files are written buffered");
        }
    }

    /// The whole block file at `path`.
    async fn read_file(&self, path: &Path) -> io::Result<Bytes> {
        // Buffered: whole-file reads get the kernel's readahead, measured 15-30% faster than
        // O_DIRECT reads of the same files here, and clean pages cost little to reclaim.
        let f = std::fs::File::open(path)?;
        let len = f.metadata()?.len() as usize;
        let buf = self.read_pool.take(len);
        self.engine.read_at(Arc::new(f), 0, len, buf).await
    }

    /// Deletes the block `id`, if cached (its bytes failed a check further up).
    /// Deletes a block, and keeps any write of it already under way from landing.
    pub fn forget(&self, id: &BlockId) {
        let name = BlockId::name(&id.identity());
        let epoch = self.forget_epoch.fetch_add(1, Ordering::AcqRel) + 1;
        {
            let mut f = self.forgotten.lock().unwrap();
            f.retain(|_, (_, at)| at.elapsed() < FORGET_TOMBSTONE);
            f.insert(name, (epoch, Instant::now()));
        }
        self.remove(&name);
    }

    /// Whether block `name` was forgotten after epoch `since`.
    fn forgotten_since(&self, name: &[u8; 16], since: u64) -> bool {
        self.forgotten
            .lock()
            .unwrap()
            .get(name)
            .is_some_and(|(e, _)| *e > since)
    }

    fn remove(&self, name: &[u8; 16]) {
        if let Some(len) = self.index.lock().unwrap().pop(name) {
            self.used.fetch_sub(len, Ordering::Relaxed);
        }
        let _ = std::fs::remove_file(self.path(name));
    }

    /// Deletes least-recently-used blocks until `incoming` more bytes fit.
    fn evict(&self, incoming: u64) {
        let mut index = self.index.lock().unwrap();
        while self.used.load(Ordering::Relaxed) + incoming > self.config.max_bytes {
            let Some((name, len)) = index.pop_lru() else {
                break;
            };
            self.used.fetch_sub(len, Ordering::Relaxed);
            let _ = std::fs::remove_file(self.path(&name));
            Metrics::add(&self.metrics.disk_evictions, 1);
        }
    }

    fn free_bytes(&self) -> Option<u64> {
        free_space(&self.dir)
    }

    /// Why the cache is not filling, in words for a log line or a command's error.
    pub fn skip_reason(&self, free: Option<u64>) -> String {
        match free {
            Some(0) => format!("the cache's filesystem ({}) is full", self.dir.display()),
            Some(free) => format!(
                "the cache's filesystem ({}) has {free} bytes free, less than the {} bytes \
                 --cache-min-free keeps free",
                self.dir.display(),
                self.config.min_free_bytes
            ),
            None => format!("the cache ({}) cannot be written", self.dir.display()),
        }
    }

    /// Whether the cache has stopped filling for lack of space, and why.
    pub fn not_filling(&self) -> Option<String> {
        self.full
            .load(Ordering::Relaxed)
            .then(|| self.skip_reason(self.free_bytes()))
    }

    /// Whether the cache may take `len` more bytes: not while the disk is (recently) full.
    fn has_room(&self, len: u64) -> bool {
        if self.full.load(Ordering::Relaxed) {
            let mut since = self.full_since.lock().unwrap();
            if since.is_some_and(|t| t.elapsed() < FULL_RECHECK) {
                return false;
            }
            *since = Some(Instant::now());
        }
        let free = self.free_bytes();
        let ok = free.is_none_or(|free| free >= len + self.config.min_free_bytes);
        self.set_full(!ok, free);
        ok
    }

    fn set_full(&self, full: bool, free: Option<u64>) {
        let was = self.full.swap(full, Ordering::Relaxed);
        if full && !was {
            *self.full_since.lock().unwrap() = Some(Instant::now());
            tracing::warn!(
                dir = %self.dir.display(),
                free_bytes = free.unwrap_or(0),
                min_free_bytes = self.config.min_free_bytes,
                "{}; reads continue from the network without caching",
                self.skip_reason(free)
            );
        } else if !full && was {
            tracing::info!(dir = %self.dir.display(), "cache disk has room again");
        }
    }

    /// Stores a block, best effort: a full disk or an I/O error skips it (counted).
    pub async fn put(&self, id: &BlockId, payload: Bytes) {
        let identity = id.identity();
        let name = BlockId::name(&identity);
        let started = self.forget_epoch.load(Ordering::Acquire);
        if self.index.lock().unwrap().contains(&name) {
            return;
        }
        let file_len = encoded_len(identity.len(), payload.len()) as u64;
        if file_len > self.config.max_bytes || !self.has_room(file_len) {
            Metrics::add(&self.metrics.disk_skipped, 1);
            return;
        }
        self.evict(file_len);
        let path = self.path(&name);
        let tmp = path.with_file_name(format!(
            "tmp-{}-{}",
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let result = async {
            if let Some(parent) = path.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)?;
            }
            let encoded = encode(&identity, &payload);
            let direct = self.direct.load(Ordering::Relaxed);
            let f = Arc::new(self.open_block(
                &tmp,
                std::fs::OpenOptions::new().create_new(true).write(true),
            )?);
            match self.engine.write_at(f, 0, encoded.clone()).await {
                // Opened, but the aligned write was refused (a device with larger sectors, some
                // network filesystems): write it buffered, from now on too.
                Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                    self.no_direct(&e);
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .truncate(true)
                        .open(&tmp)?;
                    self.engine.write_at(Arc::new(f), 0, encoded).await?;
                }
                other => other?,
            }
            std::fs::rename(&tmp, &path)
        }
        .await;
        match result {
            Ok(()) => {
                let mut index = self.index.lock().unwrap();
                if self.forgotten_since(&name, started) {
                    // Forgotten while it was being written: it must not be served.
                    drop(index);
                    let _ = std::fs::remove_file(&path);
                    Metrics::add(&self.metrics.disk_skipped, 1);
                    return;
                }
                if index.put(name, file_len).is_none() {
                    self.used.fetch_add(file_len, Ordering::Relaxed);
                }
                Metrics::add(&self.metrics.disk_writes, 1);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Metrics::add(&self.metrics.disk_skipped, 1);
                if e.raw_os_error() == Some(libc::ENOSPC) {
                    self.set_full(true, Some(0));
                } else {
                    tracing::warn!(path = %path.display(), "cache write failed: {e}");
                }
            }
        }
    }
}

/// Where the payload starts in a version 2 file.
fn payload_offset(identity_len: usize) -> usize {
    align_up(FIXED_HEADER + identity_len)
}

/// The length of a version 2 block file.
fn encoded_len(identity_len: usize, payload_len: usize) -> usize {
    payload_offset(identity_len) + align_up(payload_len)
}

/// A version 2 block file: header, padding, payload, padding, in one aligned buffer.
/// A block file holding `payload`, for the object block `identity`.
pub fn encode(identity: &[u8], payload: &[u8]) -> Bytes {
    let mut crc = crc32fast::Hasher::new();
    crc.update(identity);
    crc.update(payload);
    let start = payload_offset(identity.len());
    let mut out = AlignedBuf::with_capacity(encoded_len(identity.len(), payload.len()));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&(identity.len() as u32).to_le_bytes());
    out.extend_from_slice(identity);
    out.zero_fill(start - out.len());
    out.extend_from_slice(payload);
    out.zero_fill(out.capacity() - out.len());
    out.freeze()
}

/// The payload of a block file, checked against `identity`; a slice of `buf`, not a copy.
pub fn decode(buf: Bytes, identity: &[u8]) -> Result<Bytes, String> {
    if buf.len() < FIXED_HEADER || &buf[..8] != MAGIC {
        return Err("bad magic or truncated header".into());
    }
    let word = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().unwrap());
    let version = word(8);
    let (payload_len, crc, id_len) = (word(12) as usize, word(16), word(20) as usize);
    let id_end = FIXED_HEADER + id_len;
    let (start, expected_len) = match version {
        1 => (id_end, id_end + payload_len),
        2 => (payload_offset(id_len), encoded_len(id_len, payload_len)),
        v => return Err(format!("unknown block format version {v}")),
    };
    if buf.len() != expected_len {
        return Err(format!(
            "length {} does not match the header (version {version}: {expected_len} for {id_len} + {payload_len})",
            buf.len(),
        ));
    }
    if &buf[FIXED_HEADER..id_end] != identity {
        return Err("belongs to another block (name collision)".into());
    }
    let end = start + payload_len;
    let padding_is_zero =
        buf[id_end..start].iter().all(|&b| b == 0) && buf[end..].iter().all(|&b| b == 0);
    if !padding_is_zero {
        return Err("non-zero padding".into());
    }
    let mut h = crc32fast::Hasher::new();
    h.update(identity);
    h.update(&buf[start..end]);
    if h.finalize() != crc {
        return Err("checksum mismatch".into());
    }
    Ok(buf.slice(start..end))
}

/// Bytes available to unprivileged users on the filesystem holding `dir`.
pub fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we pass; `c` is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    (rc == 0).then(|| s.f_bavail as u64 * s.f_frsize as u64)
}

#[cfg(test)]
mod tests;

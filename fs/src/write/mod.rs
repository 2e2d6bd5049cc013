//! Write-back: staging files on local disk, the journal, and the background uploader.
//!
//! A file that is written gets a [`FileNode`] with a staging file under `<dir>/data/`. Writes
//! go to the staging file. `close()` ([`WriteBack::flush_locked`]) fsyncs it and writes a
//! journal record; when the last descriptor is closed ([`WriteBack::flush`]) the file is queued
//! for upload. Neither waits for the network.
//! The uploader sends the file as one PUT, or as a multipart upload with parallel parts, and
//! removes the record once that version is in the bucket. `fsync()` ([`WriteBack::fsync`])
//! waits for that. At the next mount, every record left over is uploaded again.
//!
//! ## Invariants
//! - A journal record exists for every version whose `close()` returned until that version
//!   (or a later one) is in the bucket, or the file was unlinked.
//! - Writers bump a node's `version` *before* they touch the staging file, and the uploader
//!   checks under the node's commit lock that the version it read is still current before it
//!   makes an object visible. So a visible object is always one whole version of the file:
//!   a torn mix of two versions is abandoned (its multipart upload aborted) and never completed.
//! - Unlink, rename and commit of a node are serialized by the node's commit lock, so an
//!   upload can never resurrect a deleted or renamed file.
//! - Queues and memory are bounded: at most `queue_len` files wait in memory (more wait in
//!   `close()`), at most `upload_files` upload at once, and at most `upload_parts` parts
//!   (of `part_size` bytes) are in memory.

pub mod dirty;
pub mod journal;
mod kept;
mod patch;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify, Semaphore};

use crate::metrics::Metrics;
use crate::object::{ObjectSource, ReadError, UploadMeta, WriteError};
use journal::{Journal, Record, RecordState};

/// Most parts a multipart upload may have (S3 and OSS both allow 10,000).
pub const MAX_PARTS: u64 = 10_000;
/// Staging files are handed to the kernel's writeback in regions of this size as they fill.
const WRITEBACK_CHUNK: u64 = 8 << 20;
/// Bytes of uploaded staging files kept as local copies, by default.
pub const DEFAULT_KEEP_STAGED: u64 = 2 << 30;
/// Parts of one file in flight while it is still being written (`early_upload`).
const EARLY_PARTS: usize = 2;

/// How write-back behaves.
#[derive(Debug, Clone)]
pub struct WriteConfig {
    /// The staging directory: data files, the journal and the lock (created with mode 0700).
    pub dir: PathBuf,
    /// Part size of multipart uploads; files up to this size go in one PUT.
    pub part_size: u64,
    /// Files uploading at once.
    pub upload_files: usize,
    /// Parts in memory and in flight for the whole mount.
    pub upload_parts: usize,
    /// Files queued in memory; `close()` waits when the queue is full.
    pub queue_len: usize,
    /// Attempts of one upload before it is marked failed (retried again at the next mount).
    pub max_attempts: u32,
    /// Delay before the first retry; doubled for each further one, capped at 30 s.
    pub retry_delay: Duration,
    /// Renaming a directory copies each object; above this many it is refused with `EXDEV`.
    pub rename_dir_limit: usize,
    /// Send the completed parts of a sequentially written file before it is closed.
    pub early_upload: bool,
    /// Bytes of staging files kept after their upload as local copies of the objects, so a
    /// reopen to append needs no download (0: drop them at once).
    pub keep_staged: u64,
}

impl WriteConfig {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            part_size: 16 << 20,
            upload_files: 8,
            upload_parts: 16,
            queue_len: 4096,
            max_attempts: 5,
            retry_delay: Duration::from_secs(1),
            rename_dir_limit: 10_000,
            early_upload: false,
            keep_staged: DEFAULT_KEEP_STAGED,
        }
    }
}

/// Errors of the write path.
#[derive(Debug, thiserror::Error)]
pub enum WriteBackError {
    /// A local I/O error of the staging directory (callers add which file and what for).
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Store(#[from] WriteError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("upload of {key} failed: {why}")]
    UploadFailed { key: String, why: String },
    #[error("the staging directory {dir} is in use by another pai-mount process (one mount per staging directory: pass --staging-dir, or --read-only)")]
    Locked { dir: PathBuf },
}

/// Creates `dir` (and parents) with mode 0700, or checks an existing one is a directory.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// A staging file: the local content of a file being written.
#[derive(Debug)]
pub struct Staged {
    pub id: u64,
    file: File,
    path: PathBuf,
}

impl std::os::fd::AsFd for Staged {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Staged {
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Writes `data` at `offset`. When the write completes a `WRITEBACK_CHUNK` region, the
    /// kernel is asked to start writing that region to disk, so the fsync at `close()` finds
    /// little left to do (writeback overlaps the writer instead of following it).
    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        let end = offset + data.len() as u64;
        if end / WRITEBACK_CHUNK > offset / WRITEBACK_CHUNK {
            let start = (end / WRITEBACK_CHUNK - 1) * WRITEBACK_CHUNK;
            use std::os::fd::AsRawFd;
            // SAFETY: sync_file_range only starts writeback of this file's pages; it touches
            // no memory of ours. Failure is harmless: the fsync at close covers everything.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    start as libc::off64_t,
                    WRITEBACK_CHUNK as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
        }
        Ok(())
    }

    pub fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    /// Reserves `offset..offset + len` in the staging file (`fallocate` mode 0, or
    /// `FALLOC_FL_KEEP_SIZE` with `keep_size`). A filesystem without `fallocate` gets the size
    /// change alone (mode 0), which is what a reader can tell.
    pub fn allocate(&self, offset: u64, len: u64, keep_size: bool) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let mode = if keep_size {
            libc::FALLOC_FL_KEEP_SIZE
        } else {
            0
        };
        // SAFETY: fallocate on a descriptor this struct owns; it touches no memory of ours.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) if keep_size => Ok(()),
            Some(libc::EOPNOTSUPP) => {
                let end = offset + len;
                if self.len()? < end {
                    self.file.set_len(end)?;
                }
                Ok(())
            }
            _ => Err(e),
        }
    }

    pub fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    pub fn metadata(&self) -> io::Result<std::fs::Metadata> {
        self.file.metadata()
    }

    pub fn set_modified(&self, t: std::time::SystemTime) -> io::Result<()> {
        self.file.set_modified(t)
    }

    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Removes the file's name; open handles keep reading it until they drop it.
    fn remove(&self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), "removing a staging file: {e}");
            }
        }
    }
}

/// The object a node's key has in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub size: u64,
    pub etag: Option<String>,
}

/// The mutable state of one file that was written, renamed or touched in this mount.
#[derive(Debug)]
pub struct FileState {
    /// Key relative to the prefix.
    pub key: String,
    pub size: u64,
    pub mtime_ms: i64,
    /// The object now under `key` in the bucket, if known.
    pub remote: Option<Remote>,
    /// Local content; when `None` the content is `remote`.
    pub staged: Option<Arc<Staged>>,
    /// Bumped by every change of content, before the staging file changes.
    pub version: u64,
    /// The last version made durable locally (journaled) and queued.
    pub flushed: u64,
    /// The last version known to be in the bucket.
    pub uploaded: u64,
    /// Why the upload of `flushed` failed for good in this mount.
    pub failed: Option<String>,
    /// In the upload queue or uploading.
    pub queued: bool,
    pub unlinked: bool,
    /// Open handles that may write.
    pub writers: u32,
    /// Open handles of any kind.
    pub handles: u32,
    /// Open handles the kernel serves straight from the staging file (FUSE passthrough): the
    /// staging file is neither dropped nor replaced while there are any.
    pub passthrough: u32,
    /// Those of them that write (the daemon does not see their writes).
    pub passthrough_writers: u32,
    /// Size and mtime sentinel of the staging file when passthrough writes were last taken in
    /// (`fs::io_mode::take_in_writes`).
    pub passthrough_mark: Option<(u64, Option<std::time::SystemTime>)>,
    /// `Some(end)` while the staging file was written only sequentially from empty, up to
    /// `end`: its completed parts may then be uploaded before `close()`.
    pub seq_end: Option<u64>,
    /// Parts of this file already on their way, while it is still being written.
    pub stream: Option<Stream>,
    /// Mode, owner, group and symlink target (uploaded as user metadata).
    pub attrs: crate::attrs::Attrs,
    /// What changed since `remote` (the base an upload may copy unchanged ranges from).
    pub dirty: dirty::Dirty,
    /// What changed since the uploader last read the state (see [`FileState::changed`]).
    pub changed_since_read: dirty::Dirty,
    /// No object of this file is under `key` in the bucket, as far as this mount knows (a file
    /// made here and not uploaded yet): unlink and rename need not delete anything there.
    pub absent: bool,
}

impl FileState {
    /// Records that `r` of the content changed: since the base (for patch uploads), and since
    /// the uploader read the state (an upload under way stays valid if nothing below its size
    /// changed, as with appends).
    pub fn changed(&mut self, r: std::ops::Range<u64>) {
        self.dirty.add(r.clone());
        self.changed_since_read.add(r);
    }

    /// Whether the bytes of `version` (of `size` bytes), read by the uploader, are no longer
    /// the file's: it changed since, other than only past `size` (appends). Once true it stays
    /// true until the uploader reads the state again, so a sender that stops early on it and
    /// the commit that follows agree.
    pub fn stale_for(&self, version: u64, size: u64) -> bool {
        let appended_only = self
            .changed_since_read
            .ranges()
            .is_some_and(|r| r.iter().all(|r| r.start >= size));
        self.version != version && !appended_only
    }

    /// Records that anything may have changed.
    pub fn changed_all(&mut self) {
        self.dirty.mark_all();
        self.changed_since_read.mark_all();
    }

    /// Takes in what passthrough writes did to a node's staging file since it was last marked:
    /// its size and mtime, and a new version. Returns whether it had changed.
    ///
    /// The daemon does not see passthrough writes, so it marks the staging file: it remembers its
    /// size and sets its mtime to a sentinel just below the real one. Any later write moves the mtime
    /// off the sentinel (the kernel stamps the current time, which is never below the real mtime it
    /// stamped before), so a change is never missed even within one timestamp tick. On a filesystem
    /// that cannot store the sentinel exactly, every call counts as a change.
    pub fn take_in_writes(&mut self) -> bool {
        if self.passthrough_writers == 0 {
            return false; // every write came through the daemon
        }
        let Some(staged) = self.staged.clone() else {
            return false;
        };
        let Ok(meta) = staged.metadata() else {
            self.version += 1;
            self.changed_all();
            return true;
        };
        let modified = meta.modified().ok();
        if self.passthrough_mark.is_some() && self.passthrough_mark == Some((meta.len(), modified))
        {
            return false;
        }
        self.size = meta.len();
        if let Some(Ok(d)) = modified.map(|m| m.duration_since(std::time::UNIX_EPOCH)) {
            self.mtime_ms = d.as_millis() as i64;
        }
        // The daemon did not see these writes: everything counts as changed.
        self.changed_all();
        self.version += 1;
        self.mark(&staged, modified);
        true
    }

    /// Marks the staging file of a node that gets a passthrough writer (see
    /// [`Self::take_in_writes`]). With writers already marking it, this is a take-in: setting
    /// a new sentinel must not erase the trace of their writes.
    pub fn mark_staging(&mut self) {
        if self.passthrough_mark.is_some() {
            self.take_in_writes();
            return;
        }
        let Some(staged) = self.staged.clone() else {
            return;
        };
        match staged.metadata() {
            Ok(meta) => self.mark(&staged, meta.modified().ok()),
            Err(_) => self.passthrough_mark = None,
        }
    }

    /// Sets the sentinel below `modified` (the real mtime just read). Setting an mtime takes the
    /// file's inode lock, so a write in progress finishes first; the size is read after that,
    /// and a write that slipped in meanwhile (mtime off the sentinel again) leaves no mark, so
    /// the next check counts as a change.
    fn mark(&mut self, staged: &Staged, modified: Option<std::time::SystemTime>) {
        self.passthrough_mark = None;
        let Some(sentinel) =
            modified.and_then(|m| m.checked_sub(std::time::Duration::from_nanos(1)))
        else {
            return;
        };
        if staged.set_modified(sentinel).is_err() {
            return;
        }
        let Ok(meta) = staged.metadata() else {
            return;
        };
        self.size = meta.len();
        if meta.modified().ok() == Some(sentinel) {
            self.passthrough_mark = Some((meta.len(), Some(sentinel)));
        }
    }
}

/// A multipart upload started while a file is written sequentially. Parts are scheduled as
/// the writer passes part boundaries; the bytes of a scheduled part never change afterwards
/// (a write below `scheduled_end` kills the stream), so the upload at `close()` continues it.
pub struct Stream {
    key: String,
    staged_id: u64,
    part: u64,
    scheduled_end: u64,
    tx: mpsc::Sender<std::ops::Range<u64>>,
    /// Limits parts in flight while the file is written; lifted when the stream finishes.
    early: Arc<Semaphore>,
    task: tokio::task::JoinHandle<Result<StreamParts, WriteBackError>>,
}

type StreamParts = (
    Option<crate::object::MultipartWriter>,
    Vec<tokio::task::JoinHandle<Result<(), WriteError>>>,
);

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("key", &self.key)
            .field("scheduled_end", &self.scheduled_end)
            .finish_non_exhaustive()
    }
}

impl Stream {
    /// Stops scheduling; parts scheduled but not started go at full width (the mount's part
    /// limit still applies), and the parts sent are collected.
    async fn finish(self) -> Result<StreamParts, WriteBackError> {
        drop(self.tx);
        self.early.add_permits(MAX_PARTS as usize);
        self.task.await.expect("stream task panicked")
    }

    /// Abandons the stream in the background: nothing it sent becomes visible.
    fn kill(self) {
        tokio::spawn(async move {
            if let Ok((Some(mp), parts)) = self.finish().await {
                for p in parts {
                    let _ = p.await;
                }
                mp.abort().await;
            }
        });
    }
}

impl FileState {
    /// Whether the content differs from what the bucket has (or will have once queued work ends).
    pub fn pending(&self) -> bool {
        !self.unlinked && self.flushed > self.uploaded
    }
}

/// A file that was written, renamed or touched in this mount.
#[derive(Debug)]
pub struct FileNode {
    pub ino: u64,
    state: Mutex<FileState>,
    /// Serializes staging and commits with unlink and rename (held across a commit's
    /// requests).
    commit: tokio::sync::Mutex<()>,
    /// Serializes the node's journal record writes and removals (never held across a
    /// request), so `close()` does not wait for an upload's network round trips. Lock order:
    /// `commit`, then `journal`, then the state.
    journal: Mutex<()>,
    changed: Notify,
}

impl FileNode {
    pub fn new(ino: u64, key: String, mtime_ms: i64, remote: Option<Remote>) -> Arc<Self> {
        Arc::new(Self {
            ino,
            state: Mutex::new(FileState {
                key,
                size: remote.as_ref().map_or(0, |r| r.size),
                mtime_ms,
                remote,
                staged: None,
                version: 0,
                flushed: 0,
                uploaded: 0,
                failed: None,
                queued: false,
                unlinked: false,
                writers: 0,
                handles: 0,
                passthrough: 0,
                passthrough_writers: 0,
                passthrough_mark: None,
                seq_end: None,
                stream: None,
                attrs: Default::default(),
                dirty: Default::default(),
                changed_since_read: Default::default(),
                absent: false,
            }),
            commit: tokio::sync::Mutex::new(()),
            journal: Mutex::new(()),
            changed: Notify::new(),
        })
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, FileState> {
        self.state.lock().unwrap()
    }

    /// Takes the commit lock (for rename and unlink, which must not overlap a commit).
    pub async fn lock_commit(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.commit.lock().await
    }
}

/// What a mount's staging directory held at start.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Files re-queued for upload (their nodes are in the overlay).
    pub nodes: Vec<Arc<FileNode>>,
    /// Records that belong to another source and stay untouched.
    pub foreign: Vec<Record>,
    /// Records that failed their checks.
    pub damaged: usize,
    /// Staging files without a record (never closed): removed.
    pub orphans: usize,
    /// The previous mount of this source changed the bucket and did not save its manifest.
    pub unsaved_namespace: bool,
}

/// A summary for `pai-mount status`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct WriteStatus {
    pub pending_files: u64,
    pub pending_bytes: u64,
    pub uploading: u64,
    pub failed: Vec<FailedUpload>,
    pub uploaded_files: u64,
    pub uploaded_bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FailedUpload {
    pub key: String,
    pub size: u64,
    pub error: String,
}

/// The write-back engine of one mount.
pub struct WriteBack {
    config: WriteConfig,
    source: ObjectSource,
    metrics: Arc<Metrics>,
    journal: Journal,
    data_dir: PathBuf,
    _lock: File,
    next_id: AtomicU64,
    queue: mpsc::Sender<Arc<FileNode>>,
    parts: Arc<Semaphore>,
    /// Nodes with a journal record, by staging id.
    journaled: Mutex<HashMap<u64, Weak<FileNode>>>,
    dirty_marked: AtomicBool,
    uploading: AtomicU64,
    stopping: AtomicBool,
    /// Staging files kept after their upload (see `kept`).
    kept: Mutex<kept::Kept>,
}

impl std::fmt::Debug for WriteBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBack")
            .field("dir", &self.config.dir)
            .finish_non_exhaustive()
    }
}

impl WriteBack {
    /// Opens (creating) the staging directory, takes its lock, reads the journal and starts the
    /// uploader on the current tokio runtime. Recovered files are queued for upload.
    pub fn open(
        config: WriteConfig,
        source: ObjectSource,
        metrics: Arc<Metrics>,
        mut new_ino: impl FnMut() -> u64,
    ) -> Result<(Arc<Self>, Recovery), WriteBackError> {
        create_private_dir(&config.dir)?;
        let lock = lock_dir(&config.dir)?;
        let journal = Journal::open(config.dir.join("journal"))?;
        let data_dir = config.dir.join("data");
        create_private_dir(&data_dir)?;
        let scan = journal.scan()?;
        let me = source.source().display_root();
        let dirty = std::fs::read_to_string(config.dir.join("dirty")).unwrap_or_default();
        let mut recovery = Recovery {
            damaged: scan.damaged.len(),
            unsaved_namespace: dirty.lines().any(|l| l == me),
            ..Default::default()
        };
        let mut keep: Vec<u64> = scan.damaged.iter().filter_map(|(p, _)| id_of(p)).collect();
        let mut max_id = 0;
        for r in scan.records {
            max_id = max_id.max(r.id);
            keep.push(r.id);
            if r.source != me {
                recovery.foreign.push(r);
                continue;
            }
            let path = data_dir.join(format!("{:016x}", r.id));
            let file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(key = %r.key, path = %path.display(), "the staging file of a pending upload is missing ({e}); its record is set aside");
                    let _ = std::fs::rename(
                        journal.dir().join(format!("{:016x}.rec", r.id)),
                        journal.dir().join(format!("{:016x}.rec.damaged", r.id)),
                    );
                    recovery.damaged += 1;
                    continue;
                }
            };
            let size = file.metadata()?.len();
            let node = FileNode::new(new_ino(), r.key.clone(), r.mtime_ms, None);
            {
                let mut st = node.state();
                st.size = size;
                st.staged = Some(Arc::new(Staged {
                    id: r.id,
                    file,
                    path,
                }));
                st.version = 1;
                st.flushed = 1;
                st.attrs = r.attrs.clone();
            }
            recovery.nodes.push(node);
        }
        for entry in std::fs::read_dir(&data_dir)? {
            let path = entry?.path();
            match id_of(&path) {
                Some(id) if keep.contains(&id) => {}
                Some(id) => {
                    max_id = max_id.max(id);
                    let _ = std::fs::remove_file(&path);
                    recovery.orphans += 1;
                }
                None => {}
            }
        }
        let (tx, rx) = mpsc::channel(config.queue_len.max(1));
        let wb = Arc::new(Self {
            parts: Arc::new(Semaphore::new(config.upload_parts.max(1))),
            config,
            source,
            metrics,
            journal,
            data_dir,
            _lock: lock,
            next_id: AtomicU64::new(max_id + 1),
            queue: tx,
            journaled: Mutex::new(HashMap::new()),
            dirty_marked: AtomicBool::new(recovery.unsaved_namespace),
            uploading: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            kept: kept::Kept::new(),
        });
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..wb.config.upload_files.max(1) {
            let (wb, rx) = (Arc::downgrade(&wb), rx.clone());
            tokio::spawn(async move {
                loop {
                    let next = rx.lock().await.recv().await;
                    let (Some(node), Some(wb)) = (next, wb.upgrade()) else {
                        return;
                    };
                    wb.upload(node).await;
                }
            });
        }
        {
            let mut j = wb.journaled.lock().unwrap();
            for n in &recovery.nodes {
                let id = n.state().staged.as_ref().unwrap().id;
                j.insert(id, Arc::downgrade(n));
                n.state().queued = true;
            }
        }
        let queued: Vec<_> = recovery.nodes.clone();
        let tx = wb.queue.clone();
        tokio::spawn(async move {
            for n in queued {
                if tx.send(n).await.is_err() {
                    return;
                }
            }
        });
        Ok((wb, recovery))
    }

    pub fn config(&self) -> &WriteConfig {
        &self.config
    }

    pub fn source(&self) -> &ObjectSource {
        &self.source
    }

    /// Free bytes on the staging filesystem.
    pub fn free_bytes(&self) -> u64 {
        crate::cache::free_space(&self.config.dir).unwrap_or(0)
    }

    /// Records that this mount changed the bucket, so a mount after a crash re-lists instead
    /// of trusting the stored manifest. Durable before the first change is acknowledged.
    pub fn mark_dirty(&self) -> io::Result<()> {
        if self.dirty_marked.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let path = self.config.dir.join("dirty");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        std::io::Write::write_all(
            &mut f,
            format!("{}\n", self.source.source().display_root()).as_bytes(),
        )?;
        f.sync_all()?;
        File::open(&self.config.dir)?.sync_all()
    }

    /// Whether this mount (or a dead one before it) changed the bucket's namespace.
    pub fn is_dirty(&self) -> bool {
        self.dirty_marked.load(Ordering::Acquire)
    }

    /// The namespace was saved: a later mount may trust the stored manifest again.
    pub fn clear_dirty(&self) -> io::Result<()> {
        match std::fs::remove_file(self.config.dir.join("dirty")) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.dirty_marked.store(false, Ordering::Release);
        Ok(())
    }

    fn new_staged(&self) -> io::Result<Arc<Staged>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let path = self.data_dir.join(format!("{id:016x}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok(Arc::new(Staged { id, file, path }))
    }

    /// Makes sure `node` has a staging file, downloading its current object unless `empty`.
    pub async fn stage(&self, node: &FileNode, empty: bool) -> Result<Arc<Staged>, WriteBackError> {
        let _g = node.commit.lock().await;
        let (key, remote) = {
            let st = node.state();
            if let Some(s) = &st.staged {
                return Ok(s.clone());
            }
            (st.key.clone(), st.remote.clone())
        };
        let staged = self.new_staged()?;
        let mut size = 0;
        if let (Some(remote), false) = (remote, empty) {
            if let Err(e) = self.download(&key, &remote, &staged).await {
                staged.remove();
                return Err(e);
            }
            size = remote.size;
        }
        let mut st = node.state();
        st.staged = Some(staged.clone());
        if empty {
            st.version += 1;
            st.seq_end = Some(0);
            st.changed_all();
        } else {
            st.dirty.clear();
        }
        st.size = size;
        Ok(staged)
    }

    /// Called under the node's state lock before a write of `offset..end` touches the staging
    /// file: a write into bytes already scheduled for upload kills the stream.
    pub fn before_write(&self, st: &mut FileState, offset: u64, end: u64) {
        st.changed(offset..end);
        if st.stream.as_ref().is_some_and(|s| offset < s.scheduled_end) {
            if let Some(s) = st.stream.take() {
                s.kill();
            }
        }
        st.seq_end = match st.seq_end {
            Some(e) if e == offset => Some(end),
            _ => None,
        };
    }

    /// Called under the state lock when the content changes other than by a write (truncate,
    /// rename, unlink): the stream is abandoned.
    pub fn reset_stream(&self, st: &mut FileState, empty: bool) {
        if let Some(s) = st.stream.take() {
            s.kill();
        }
        st.seq_end = empty.then_some(0);
    }

    /// After a write: schedules the upload of every part a sequential writer has completed.
    pub fn after_write(&self, node: &FileNode) {
        if !self.config.early_upload {
            return;
        }
        let part = self.config.part_size.max(1);
        let mut st = node.state();
        if st.seq_end != Some(st.size) || st.unlinked {
            return;
        }
        let Some(staged) = st.staged.clone() else {
            return;
        };
        let mut next = st.stream.as_ref().map_or(0, |s| s.scheduled_end);
        while st.size >= next + part {
            if next / part >= MAX_PARTS - 1 {
                return; // the rest goes at close, in the same upload
            }
            if st.stream.is_none() {
                st.stream = Some(self.start_stream(
                    st.key.clone(),
                    UploadMeta {
                        mtime_ms: Some(st.mtime_ms),
                        attrs: st.attrs.clone(),
                    },
                    staged.clone(),
                    part,
                ));
            }
            let s = st.stream.as_mut().expect("just made");
            if s.tx.try_send(next..next + part).is_err() {
                if let Some(s) = st.stream.take() {
                    s.kill();
                }
                return;
            }
            next += part;
            s.scheduled_end = next;
        }
    }

    fn start_stream(
        &self,
        key: String,
        meta: UploadMeta,
        staged: Arc<Staged>,
        part: u64,
    ) -> Stream {
        let (tx, mut rx) = mpsc::channel::<std::ops::Range<u64>>(MAX_PARTS as usize);
        let (source, parts_sem, k) = (self.source.clone(), self.parts.clone(), key.clone());
        let staged_id = staged.id;
        // While the file is still being written, a few parts at a time: the writer keeps
        // most of the machine. The rest go at full width after close.
        let early = Arc::new(Semaphore::new(EARLY_PARTS));
        let limit = early.clone();
        let task = tokio::spawn(async move {
            let mut mp = None;
            let mut sent = Vec::new();
            while let Some(range) = rx.recv().await {
                let early_permit = limit.clone().acquire_owned().await.expect("never closed");
                let permit = parts_sem
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed");
                if mp.is_none() {
                    mp = Some(source.start_multipart(&k, &meta).await?);
                }
                let bytes = read_part(&staged, range).await?;
                let send = mp.as_mut().expect("started").put_part(bytes);
                sent.push(tokio::spawn(async move {
                    let r = send.await;
                    drop((permit, early_permit));
                    r
                }));
            }
            Ok((mp, sent))
        });
        Stream {
            key,
            staged_id,
            part,
            scheduled_end: 0,
            tx,
            early,
            task,
        }
    }

    /// Copies an object into a staging file with parallel ranged GETs pinned to its ETag.
    async fn download(
        &self,
        key: &str,
        remote: &Remote,
        staged: &Arc<Staged>,
    ) -> Result<(), WriteBackError> {
        use futures::StreamExt;
        let part = self.config.part_size.max(1 << 20);
        let ranges: Vec<_> = (0..remote.size.div_ceil(part))
            .map(|i| i * part..remote.size.min((i + 1) * part))
            .collect();
        let mut results = futures::stream::iter(ranges)
            .map(|r| {
                let source = self.source.clone();
                let staged = staged.clone();
                let (key, etag, size) = (key.to_string(), remote.etag.clone(), remote.size);
                let parts = self.parts.clone();
                async move {
                    let _permit = parts.acquire_owned().await.expect("never closed");
                    let bytes = source
                        .get_range(&key, r.clone(), etag.as_deref(), size)
                        .await?;
                    tokio::task::spawn_blocking(move || staged.write_at(&bytes, r.start))
                        .await
                        .expect("staging write panicked")?;
                    Ok::<_, WriteBackError>(r.end - r.start)
                }
            })
            .buffer_unordered(self.config.upload_parts.max(1));
        while let Some(r) = results.next().await {
            Metrics::add(&self.metrics.staged_fetch_bytes, r?);
        }
        Ok(())
    }

    /// `close()`: if `node` changed since it was last flushed, makes its staging file and a
    /// journal record durable and queues it for upload. Returns after the local fsyncs.
    pub async fn flush(&self, node: &Arc<FileNode>) -> Result<(), WriteBackError> {
        self.flush_locked(node)?;
        self.enqueue(node).await
    }

    /// The durable part of [`Self::flush`], under the node's journal lock (callers may hold its
    /// commit lock too).
    pub fn flush_locked(&self, node: &FileNode) -> Result<(), WriteBackError> {
        let _j = node.journal.lock().unwrap();
        let (staged, record, version) = {
            let mut st = node.state();
            // What passthrough handles wrote, the daemon learns here.
            st.take_in_writes();
            if st.unlinked || st.version == st.flushed || st.uploaded >= st.version {
                return Ok(());
            }
            let Some(staged) = st.staged.clone() else {
                return Ok(());
            };
            let record = self.record(&st, staged.id, None, 0);
            (staged, record, st.version)
        };
        staged.sync()?;
        self.mark_dirty()?;
        self.journal.put(&record)?;
        let mut st = node.state();
        st.flushed = st.flushed.max(version);
        st.failed = None;
        Ok(())
    }

    /// The journal record of a node's current state: pending, or failed with `error`.
    fn record(&self, st: &FileState, id: u64, error: Option<String>, attempts: u32) -> Record {
        Record {
            id,
            source: self.source.source().display_root(),
            key: st.key.clone(),
            size: st.size,
            mtime_ms: st.mtime_ms,
            state: if error.is_some() {
                RecordState::Failed
            } else {
                RecordState::Pending
            },
            error,
            attempts,
            attrs: st.attrs.clone(),
        }
    }

    /// Queues `node` for upload if it has flushed content not yet in the bucket.
    pub async fn enqueue(&self, node: &Arc<FileNode>) -> Result<(), WriteBackError> {
        let enqueue = {
            let mut st = node.state();
            if let Some(s) = &st.staged {
                if st.pending() {
                    self.journaled
                        .lock()
                        .unwrap()
                        .insert(s.id, Arc::downgrade(node));
                }
            }
            st.pending() && st.failed.is_none() && !std::mem::replace(&mut st.queued, true)
        };
        if enqueue && self.queue.send(node.clone()).await.is_err() {
            return Err(WriteBackError::UploadFailed {
                key: node.state().key.clone(),
                why: "the uploader has stopped".into(),
            });
        }
        Ok(())
    }

    /// After the last handle of a node whose content is in the bucket: its staging file is
    /// kept as a local copy (see `kept`) if the budget allows, else dropped (reads then go to
    /// the object).
    pub fn release_staging(&self, node: &Arc<FileNode>) {
        let (staged, victims) = {
            let mut st = node.state();
            if st.writers > 0
                || st.passthrough > 0
                || st.pending()
                || st.version != st.uploaded
                || st.remote.is_none()
            {
                return;
            }
            let Some(s) = st.staged.clone() else {
                return;
            };
            match self.keep_staged(node, s.id, st.size) {
                Some(victims) => (None, Some(victims)),
                None => (st.staged.take(), None),
            }
        };
        if let Some(s) = staged {
            s.remove();
        }
        if let Some(v) = victims {
            self.drop_kept(v);
        }
    }

    /// `fsync()`: flushes, then waits until the file's content is in the bucket.
    pub async fn fsync(&self, node: &Arc<FileNode>) -> Result<(), WriteBackError> {
        loop {
            let notified = node.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.flush(node).await?;
            {
                let st = node.state();
                if st.unlinked || st.uploaded >= st.flushed {
                    return Ok(());
                }
                if let Some(why) = &st.failed {
                    return Err(WriteBackError::UploadFailed {
                        key: st.key.clone(),
                        why: why.clone(),
                    });
                }
            }
            notified.await;
        }
    }

    /// Forgets an unlinked node's staging file and record (call with its commit lock held).
    ///
    /// The staging file loses its name but stays open: handles that have the file open keep
    /// reading (and writing) it, as POSIX wants for an unlinked open file; its space is freed
    /// when the last handle closes.
    pub fn discard(&self, node: &FileNode) -> io::Result<()> {
        let staged = {
            let mut st = node.state();
            st.unlinked = true;
            st.version += 1;
            self.reset_stream(&mut st, false);
            // Open handles keep the staging file (unlink after open works); otherwise its
            // space is given back now, not when the node goes.
            if st.handles == 0 && st.passthrough == 0 {
                st.staged.take()
            } else {
                st.staged.clone()
            }
        };
        node.changed.notify_waiters();
        if let Some(s) = staged {
            self.journaled.lock().unwrap().remove(&s.id);
            self.unkeep(s.id);
            {
                let _j = node.journal.lock().unwrap();
                self.journal.remove(s.id)?;
            }
            s.remove();
        }
        Ok(())
    }

    /// Uploads `node` until its flushed version is in the bucket, it fails for good, or it
    /// is superseded (a newer close will queue it again).
    async fn upload(&self, node: Arc<FileNode>) {
        let mut attempts = 0u32;
        // The version being sent and when its first attempt started (for `upload_seconds`).
        let mut first_try: Option<(u64, std::time::Instant)> = None;
        loop {
            if self.stopping.load(Ordering::Acquire) {
                node.state().queued = false;
                return;
            }
            let snapshot = {
                let mut st = node.state();
                let staged = st.staged.clone();
                match staged {
                    Some(s) if st.pending() && st.version == st.flushed => {
                        st.changed_since_read.clear();
                        Some(Version {
                            key: st.key.clone(),
                            staged: s,
                            version: st.version,
                            size: st.size,
                            meta: UploadMeta {
                                mtime_ms: Some(st.mtime_ms),
                                attrs: st.attrs.clone(),
                            },
                            base: st
                                .remote
                                .as_ref()
                                .and_then(|r| Some((r.size, r.etag.clone()?))),
                            dirty: st.dirty.ranges().map(<[_]>::to_vec),
                        })
                    }
                    _ => {
                        // Nothing to send, or a writer is mid-way: its close queues it again.
                        st.queued = false;
                        None
                    }
                }
            };
            let Some(v) = snapshot else {
                node.changed.notify_waiters();
                return;
            };
            let (key, staged, size) = (v.key.clone(), v.staged.clone(), v.size);
            if first_try.is_none_or(|(version, _)| version != v.version) {
                first_try = Some((v.version, std::time::Instant::now()));
            }
            self.uploading.fetch_add(1, Ordering::Relaxed);
            let result = self.upload_version(&node, &v).await;
            self.uploading.fetch_sub(1, Ordering::Relaxed);
            match result {
                Ok(true) => {
                    if let Some((_, started)) = first_try.take() {
                        self.metrics.upload_seconds.observe(started.elapsed());
                    }
                    Metrics::add(&self.metrics.uploads_done, 1);
                    Metrics::add(&self.metrics.uploaded_bytes, size);
                    tracing::debug!(key = %key, size, "uploaded");
                    continue; // loops once more to clear `queued` or send a newer version
                }
                Ok(false) => {
                    Metrics::add(&self.metrics.uploads_superseded, 1);
                    continue;
                }
                Err(e) => {
                    attempts += 1;
                    let why = format!("{e}");
                    if attempts >= self.config.max_attempts {
                        Metrics::add(&self.metrics.uploads_failed, 1);
                        tracing::error!(key = %key, attempts, "upload failed for good; kept in the journal and retried at the next mount: {why}");
                        let _g = node.commit.lock().await;
                        let record = {
                            let mut st = node.state();
                            st.failed = Some(why.clone());
                            st.queued = false;
                            self.record(&st, staged.id, Some(why), attempts)
                        };
                        let _j = node.journal.lock().unwrap();
                        if !node.state().unlinked {
                            if let Err(e) = self.journal.put(&record) {
                                tracing::error!(key = %key, "recording the failure in the journal: {e}");
                            }
                        }
                        node.changed.notify_waiters();
                        return;
                    }
                    Metrics::add(&self.metrics.upload_retries, 1);
                    let delay = self
                        .config
                        .retry_delay
                        .saturating_mul(1 << (attempts - 1).min(5))
                        .min(Duration::from_secs(30));
                    tracing::warn!(key = %key, attempts, ?delay, "upload failed, retrying: {why}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Sends one version. `Ok(true)`: it is in the bucket. `Ok(false)`: the file changed, was
    /// renamed or was unlinked meanwhile, and nothing was made visible.
    async fn upload_version(
        &self,
        node: &Arc<FileNode>,
        v: &Version,
    ) -> Result<bool, WriteBackError> {
        let (key, staged, size) = (v.key.as_str(), &v.staged, v.size);
        // Parts sent while the file was written, if they belong to this version's bytes.
        let stream = {
            let mut st = node.state();
            match &st.stream {
                Some(s) if s.key == key && s.staged_id == staged.id && s.scheduled_end <= size => {
                    st.stream.take()
                }
                _ => None,
            }
        };
        if let Some(s) = stream {
            let (part, start) = (s.part, s.scheduled_end);
            match s.finish().await {
                Ok((Some(mut mp), sent)) => {
                    let mut failed = None;
                    for t in sent {
                        if let Err(e) = t.await.expect("part upload panicked") {
                            failed = Some(e);
                        }
                    }
                    match failed {
                        None => {
                            let r = self.send_parts(node, v, &mut mp, start..size, part).await;
                            return match r {
                                Ok(()) => self.commit(node, v, Prepared::Multipart(mp)).await,
                                Err(e) => {
                                    mp.abort().await;
                                    Err(e)
                                }
                            };
                        }
                        Some(e) => {
                            tracing::debug!(
                                key,
                                "a part sent early failed; sending the file again: {e}"
                            );
                            mp.abort().await;
                        }
                    }
                }
                Ok((None, _)) => {}
                Err(e) => tracing::debug!(
                    key,
                    "sending parts early failed; sending the file again: {e}"
                ),
            }
        }
        if let Some(p) = self.send_patch(node, v).await {
            return self.commit(node, v, Prepared::Patch(p)).await;
        }
        let part = self.config.part_size.max(size.div_ceil(MAX_PARTS)).max(1);
        let prepared = if size <= part {
            let (permit, bytes) = self.held_part(staged, 0..size).await?;
            Prepared::Single(bytes, permit)
        } else {
            let mut mp = self.source.start_multipart(key, &v.meta).await?;
            if let Err(e) = self.send_parts(node, v, &mut mp, 0..size, part).await {
                mp.abort().await;
                return Err(e);
            }
            Prepared::Multipart(mp)
        };
        self.commit(node, v, prepared).await
    }

    /// Reads `range` of a staging file into memory under one of the mount's part permits, which
    /// bound the part buffers in memory: keep the permit until the part is sent.
    async fn held_part(
        &self,
        staged: &Arc<Staged>,
        range: std::ops::Range<u64>,
    ) -> io::Result<(tokio::sync::OwnedSemaphorePermit, Bytes)> {
        let permit = self
            .parts
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        Ok((permit, read_part(staged, range).await?))
    }

    /// Sends `range` of the staging file as parts of `part` bytes, in parallel under the
    /// mount's part limit. Stops early (successfully) when the version becomes stale
    /// ([`FileState::stale_for`]): the commit then finds it stale too.
    async fn send_parts(
        &self,
        node: &FileNode,
        v: &Version,
        mp: &mut crate::object::MultipartWriter,
        range: std::ops::Range<u64>,
        part: u64,
    ) -> Result<(), WriteBackError> {
        let mut tasks = Vec::new();
        let mut failed: Option<WriteBackError> = None;
        for start in range.clone().step_by(part as usize) {
            if node.state().stale_for(v.version, v.size) {
                break;
            }
            let (permit, bytes) = match self
                .held_part(&v.staged, start..range.end.min(start + part))
                .await
            {
                Ok(held) => held,
                Err(e) => {
                    failed = Some(e.into());
                    break;
                }
            };
            let send = mp.put_part(bytes);
            tasks.push(tokio::spawn(async move {
                let r = send.await;
                drop(permit);
                r
            }));
        }
        for t in tasks {
            match t.await.expect("part upload panicked") {
                Ok(()) => {}
                Err(e) if failed.is_none() => failed = Some(e.into()),
                Err(_) => {}
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Makes `prepared` visible if `v` is still the file's content under its key.
    async fn commit(
        &self,
        node: &Arc<FileNode>,
        v: &Version,
        prepared: Prepared,
    ) -> Result<bool, WriteBackError> {
        let (key, staged, version, size) = (v.key.as_str(), &v.staged, v.version, v.size);
        let _g = node.commit.lock().await;
        let current = {
            let mut st = node.state();
            // Writes the kernel made straight to the staging file since it was marked make
            // this version stale (and the bytes just sent possibly torn).
            st.take_in_writes();
            // A newer version whose changes all lie past this one's end (appends) leaves the
            // bytes sent exactly this version's: it can still be made visible, and the newer
            // one follows. Anything else makes it stale.
            !st.unlinked && st.key == key && !st.stale_for(version, size)
        };
        if !current {
            match prepared {
                Prepared::Multipart(mp) => mp.abort().await,
                Prepared::Patch(p) => p.abort().await,
                Prepared::Single(..) => {}
            }
            return Ok(false);
        }
        let etag = match prepared {
            Prepared::Single(bytes, _permit) => self.source.put_object(key, bytes, &v.meta).await?,
            Prepared::Multipart(mp) => mp.complete_exact(size).await?,
            Prepared::Patch(p) => {
                let etag = p.complete(size).await?;
                Metrics::add(&self.metrics.patch_uploads, 1);
                etag
            }
        };
        Metrics::add(&self.metrics.namespace_changes, 1);
        // The record stays while a newer acknowledged version waits for its upload (checked
        // under the journal lock: a close that journals a newer version waits for this).
        {
            let _j = node.journal.lock().unwrap();
            if node.state().flushed <= version {
                self.journaled.lock().unwrap().remove(&staged.id);
                self.journal.remove(staged.id)?;
            }
        }
        let mut victims = None;
        let dropped = {
            // One critical section: a writer either bumped the version before this check
            // (and the staging file stays), or finds no staging file and stages again.
            let mut st = node.state();
            st.uploaded = version;
            st.remote = Some(Remote { size, etag });
            st.absent = false;
            st.failed = None;
            // The new object is the base now: what changed since is what changed since this
            // version was read.
            st.dirty = st.changed_since_read.clone();
            if st.writers == 0 && st.passthrough == 0 && st.version == version {
                victims = self.keep_staged(node, staged.id, size);
                if victims.is_some() {
                    None
                } else {
                    st.staged.take()
                }
            } else {
                None
            }
        };
        if let Some(s) = dropped {
            s.remove();
        }
        if let Some(v) = victims {
            self.drop_kept(v);
        }
        node.changed.notify_waiters();
        Ok(true)
    }

    /// Pending and failed uploads.
    pub fn status(&self) -> WriteStatus {
        let nodes: Vec<Arc<FileNode>> = self
            .journaled
            .lock()
            .unwrap()
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        let mut s = WriteStatus {
            uploading: self.uploading.load(Ordering::Relaxed),
            uploaded_files: self.metrics.uploads_done.load(Ordering::Relaxed),
            uploaded_bytes: self.metrics.uploaded_bytes.load(Ordering::Relaxed),
            ..Default::default()
        };
        for n in nodes {
            let st = n.state();
            if !st.pending() {
                continue;
            }
            match &st.failed {
                Some(why) => s.failed.push(FailedUpload {
                    key: st.key.clone(),
                    size: st.size,
                    error: why.clone(),
                }),
                None => {
                    s.pending_files += 1;
                    s.pending_bytes += st.size;
                }
            }
        }
        s
    }

    /// Waits until no upload is pending (failed ones do not count), calling `progress` about
    /// every 200 ms.
    pub async fn drain(&self, mut progress: impl FnMut(&WriteStatus)) -> WriteStatus {
        loop {
            let s = self.status();
            progress(&s);
            if s.pending_files == 0 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops starting new uploads; what is pending stays in the journal.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }
}

/// The version of a file an upload sends: what the uploader read from the node's state.
struct Version {
    key: String,
    staged: Arc<Staged>,
    version: u64,
    size: u64,
    meta: UploadMeta,
    /// The object now under the key (size, ETag), which unchanged ranges may be copied from.
    base: Option<(u64, String)>,
    /// What changed since `base`; `None`: everything.
    dirty: Option<Vec<std::ops::Range<u64>>>,
}

enum Prepared {
    Single(Bytes, tokio::sync::OwnedSemaphorePermit),
    Multipart(crate::object::MultipartWriter),
    Patch(crate::object::patch::PatchUpload),
}

async fn read_part(staged: &Arc<Staged>, range: std::ops::Range<u64>) -> io::Result<Bytes> {
    let staged = staged.clone();
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        let n = staged.read_at(&mut buf, range.start)?;
        if n != buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "staging file {} is shorter than expected",
                    staged.path.display()
                ),
            ));
        }
        Ok(Bytes::from(buf))
    })
    .await
    .expect("staging read panicked")
}

fn id_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    u64::from_str_radix(name.get(..16)?, 16).ok()
}

fn lock_dir(dir: &Path) -> Result<File, WriteBackError> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.join("lock"))?;
    if !crate::dirlock::lock_exclusive(&f) {
        return Err(WriteBackError::Locked {
            dir: dir.to_path_buf(),
        });
    }
    Ok(f)
}

#[cfg(test)]
mod tests;

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

//!
//! ## Code map
//! - `node`: [`FileNode`], one file's state and the transitions callers may make on it.
//! - `change`: changes of content and metadata made by the filesystem (write, truncate,
//!   `fallocate`, chmod/chown/utimens, rename, symlink bodies).
//! - `staging`: staging files, and downloading an object into one.
//! - `early`: parts uploaded while a file is still written sequentially.
//! - `uploader`: the upload tasks, their retries, and the commit.
//! - `recovery`: what a previous mount left in the journal.
//! - `status`: pending and failed uploads.
//! - `journal`, `dirty`, `kept`, `patch`: the journal's records, changed ranges, staging
//!   files kept after upload, and uploads that copy unchanged ranges.

mod change;
pub mod dirty;
mod early;
pub mod journal;
mod kept;
mod node;
mod patch;
mod recovery;
mod staging;
mod status;
mod uploader;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};

use crate::ids::InodeNo;
use crate::metrics::Metrics;
use crate::object::{ObjectSource, ReadError, WriteError};
pub use change::{MetaChange, MetaDone};
use journal::{Journal, Record, RecordState};
use node::FileState;
pub use node::{Content, NodeStat};
pub use node::{FileNode, Remote};
pub use recovery::Recovery;
pub(crate) use staging::create_private_dir;
pub use staging::Staged;
pub use status::{FailedUpload, WriteStatus};

/// Most parts a multipart upload may have (S3 and OSS both allow 10,000).
pub const MAX_PARTS: u64 = 10_000;
/// Staging files are handed to the kernel's writeback in regions of this size as they fill.
const WRITEBACK_CHUNK: u64 = 8 << 20;
/// Bytes of uploaded staging files kept as local copies, by default.
pub const DEFAULT_KEEP_STAGED: u64 = 2 << 30;
/// Parts of one file in flight while it is still being written (`early_upload`).
const EARLY_PARTS: usize = 2;
/// Uploaded files up to this size are copied into the disk cache, when the mount has one.
/// Larger ones (checkpoints) would push out the dataset blocks the cache is for.
pub const CACHE_WRITTEN_MAX: u64 = 16 << 20;

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
    /// The mount's disk cache: files up to [`CACHE_WRITTEN_MAX`] go into it once uploaded,
    /// under their new ETag, so reads after a remount are local.
    pub cache: Option<Arc<crate::cache::DiskCache>>,
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
            cache: None,
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
        mut new_ino: impl FnMut() -> InodeNo,
    ) -> Result<(Arc<Self>, Recovery), WriteBackError> {
        create_private_dir(&config.dir)?;
        let lock = recovery::lock_dir(&config.dir)?;
        let journal = Journal::open(config.dir.join("journal"))?;
        let data_dir = config.dir.join("data");
        create_private_dir(&data_dir)?;
        let me = source.source().display_root();
        let (recovery, max_id) =
            recovery::recover(&config.dir, &journal, &data_dir, &me, &mut new_ino)?;
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
        uploader::spawn(&wb, rx);
        {
            let mut j = wb.journaled.lock().unwrap();
            for n in &recovery.nodes {
                let id = n.mark_queued();
                j.insert(id, Arc::downgrade(n));
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
            st.reset_stream(false);
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

    /// Stops starting new uploads; what is pending stays in the journal.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests;

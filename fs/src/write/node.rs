//! The state of one file written, renamed or touched in this mount, and the transitions the
//! write-back protocol allows on it.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::early::Stream;
use super::journal::Record;
use super::{dirty, Staged};
use crate::attrs::Attrs;
use crate::ids::InodeNo;

/// The object a node's key has in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub size: u64,
    pub etag: Option<String>,
}

/// The mutable state of one file that was written, renamed or touched in this mount.
#[derive(Debug)]
pub(super) struct FileState {
    /// Key relative to the prefix.
    pub(super) key: String,
    pub(super) size: u64,
    pub(super) mtime_ms: i64,
    /// The object now under `key` in the bucket, if known.
    pub(super) remote: Option<Remote>,
    /// Local content; when `None` the content is `remote`.
    pub(super) staged: Option<Arc<Staged>>,
    /// Bumped by every change of content, before the staging file changes.
    pub(super) version: u64,
    /// The last version made durable locally (journaled) and queued.
    pub(super) flushed: u64,
    /// The last version known to be in the bucket.
    pub(super) uploaded: u64,
    /// Why the upload of `flushed` failed for good in this mount.
    pub(super) failed: Option<String>,
    /// In the upload queue or uploading.
    pub(super) queued: bool,
    pub(super) unlinked: bool,
    /// Open handles that may write.
    pub(super) writers: u32,
    /// Open handles of any kind.
    pub(super) handles: u32,
    /// Open handles the kernel serves straight from the staging file (FUSE passthrough): the
    /// staging file is neither dropped nor replaced while there are any.
    pub(super) passthrough: u32,
    /// Those of them that write (the daemon does not see their writes).
    pub(super) passthrough_writers: u32,
    /// Size and mtime sentinel of the staging file when passthrough writes were last taken in
    /// (`fs::io_mode::take_in_writes`).
    pub(super) passthrough_mark: Option<(u64, Option<std::time::SystemTime>)>,
    /// `Some(end)` while the staging file was written only sequentially from empty, up to
    /// `end`: its completed parts may then be uploaded before `close()`.
    pub(super) seq_end: Option<u64>,
    /// Parts of this file already on their way, while it is still being written.
    pub(super) stream: Option<Stream>,
    /// Mode, owner, group and symlink target (uploaded as user metadata).
    pub(super) attrs: Attrs,
    /// What changed since `remote` (the base an upload may copy unchanged ranges from).
    pub(super) dirty: dirty::Dirty,
    /// What changed since the uploader last read the state (see [`FileState::changed`]).
    pub(super) changed_since_read: dirty::Dirty,
    /// No object of this file is under `key` in the bucket, as far as this mount knows (a file
    /// made here and not uploaded yet): unlink and rename need not delete anything there.
    pub(super) absent: bool,
}

impl FileState {
    fn new(key: String, mtime_ms: i64, remote: Option<Remote>) -> Self {
        Self {
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
        }
    }

    /// Records that `r` of the content changed: since the base (for patch uploads), and since
    /// the uploader read the state (an upload under way stays valid if nothing below its size
    /// changed, as with appends).
    pub(super) fn changed(&mut self, r: std::ops::Range<u64>) {
        self.dirty.add(r.clone());
        self.changed_since_read.add(r);
    }

    /// Whether the bytes of `version` (of `size` bytes), read by the uploader, are no longer
    /// the file's: it changed since, other than only past `size` (appends). Once true it stays
    /// true until the uploader reads the state again, so a sender that stops early on it and
    /// the commit that follows agree.
    pub(super) fn stale_for(&self, version: u64, size: u64) -> bool {
        let appended_only = self
            .changed_since_read
            .ranges()
            .is_some_and(|r| r.iter().all(|r| r.start >= size));
        self.version != version && !appended_only
    }

    /// Records that anything may have changed.
    pub(super) fn changed_all(&mut self) {
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
    pub(super) fn take_in_writes(&mut self) -> bool {
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
    pub(super) fn mark_staging(&mut self) {
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

impl FileState {
    /// Whether the content differs from what the bucket has (or will have once queued work ends).
    pub(super) fn pending(&self) -> bool {
        !self.unlinked && self.flushed > self.uploaded
    }
}

/// A file that was written, renamed or touched in this mount.
#[derive(Debug)]
pub struct FileNode {
    pub ino: InodeNo,
    state: Mutex<FileState>,
    /// Serializes staging and commits with unlink and rename (held across a commit's
    /// requests).
    pub(super) commit: tokio::sync::Mutex<()>,
    /// Serializes the node's journal record writes and removals (never held across a
    /// request), so `close()` does not wait for an upload's network round trips. Lock order:
    /// `commit`, then `journal`, then the state.
    pub(super) journal: Mutex<()>,
    pub(super) changed: Notify,
}

impl FileNode {
    /// A node for an object of the bucket with the attributes its metadata gave.
    pub fn for_object(
        ino: InodeNo,
        key: String,
        mtime_ms: i64,
        remote: Remote,
        attrs: Attrs,
    ) -> Arc<Self> {
        let mut st = FileState::new(key, mtime_ms, Some(remote));
        st.attrs = attrs;
        Self::with_state(ino, st)
    }

    /// A file made in this mount: nothing is under its key in the bucket as far as the mount
    /// knows, so unlink and rename need not delete anything there until it is uploaded.
    pub fn new_local(ino: InodeNo, key: String, mtime_ms: i64, attrs: Attrs) -> Arc<Self> {
        let mut st = FileState::new(key, mtime_ms, None);
        st.attrs = attrs;
        st.absent = true;
        Self::with_state(ino, st)
    }

    /// A node for a journal record left by an earlier mount: version 1, flushed, to upload.
    pub(super) fn recovered(ino: InodeNo, r: &Record, staged: Arc<Staged>, size: u64) -> Arc<Self> {
        let mut st = FileState::new(r.key.clone(), r.mtime_ms, None);
        st.size = size;
        st.staged = Some(staged);
        st.version = 1;
        st.flushed = 1;
        st.attrs = r.attrs.clone();
        Self::with_state(ino, st)
    }

    fn with_state(ino: InodeNo, state: FileState) -> Arc<Self> {
        Arc::new(Self {
            ino,
            state: Mutex::new(state),
            commit: tokio::sync::Mutex::new(()),
            journal: Mutex::new(()),
            changed: Notify::new(),
        })
    }

    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, FileState> {
        self.state.lock().unwrap()
    }

    /// Takes the commit lock (for rename and unlink, which must not overlap a commit).
    pub async fn lock_commit(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.commit.lock().await
    }

    /// Marks a recovered node as queued; returns its staging id.
    pub(super) fn mark_queued(&self) -> u64 {
        let mut st = self.state();
        st.queued = true;
        st.staged.as_ref().expect("recovered nodes are staged").id
    }

    /// The key, relative to the prefix.
    pub fn key(&self) -> String {
        self.state().key.clone()
    }

    /// Sets what the bucket has under the key (a recovered file whose key a listing found).
    pub fn set_remote(&self, remote: Option<Remote>) {
        self.state().remote = remote;
    }

    /// Mode, owner, group and symlink target.
    pub fn attrs(&self) -> Attrs {
        self.state().attrs.clone()
    }

    /// Size, mtime and attributes now, with what passthrough writers did taken in.
    pub fn stat(&self) -> NodeStat {
        let mut st = self.state();
        st.take_in_writes();
        NodeStat {
            size: st.size,
            mtime_ms: st.mtime_ms,
            attrs: st.attrs.clone(),
        }
    }

    /// Where a read finds the content: the staging file, else the object.
    pub fn content(&self) -> Content {
        let st = self.state();
        Content {
            staged: st.staged.clone(),
            size: st.size,
            key: st.key.clone(),
            remote: st.remote.clone(),
        }
    }

    /// A handle was opened on the node (`write`: one that may write).
    pub fn opened(&self, write: bool) {
        let mut st = self.state();
        st.handles += 1;
        if write {
            st.writers += 1;
        }
    }

    /// A writing handle is being released (before its last flush: a change made meanwhile by
    /// another operation either sees no writer and flushes itself, or is taken in by that
    /// flush).
    pub fn writer_closed(&self) {
        self.state().writers -= 1;
    }

    /// A handle was released.
    pub fn handle_closed(&self) {
        self.state().handles -= 1;
    }

    /// Whether a handle that may write is open.
    pub fn has_writers(&self) -> bool {
        self.state().writers > 0
    }

    /// Whether nothing of this file is in the bucket (see [`Self::new_local`]).
    pub fn is_absent(&self) -> bool {
        self.state().absent
    }

    /// What choosing a handle's I/O mode needs: the staging file (none once unlinked), and
    /// whether the file is large enough for its uploads to copy unchanged ranges from the
    /// object (a writer must then write through the daemon, which sees what changes).
    pub fn io_view(&self) -> (Option<Arc<Staged>>, bool) {
        let st = self.state();
        (
            st.staged.clone().filter(|_| !st.unlinked),
            st.size >= crate::object::patch::MIN_PART,
        )
    }

    /// A handle served by the kernel from the staging file (FUSE passthrough) was opened. A
    /// writing one makes the node mark its staging file (see [`FileState::take_in_writes`]).
    pub fn passthrough_opened(&self, writes: bool) {
        let mut st = self.state();
        st.passthrough += 1;
        if writes {
            st.passthrough_writers += 1;
            // An upload in flight is checked against this mark before it commits.
            st.mark_staging();
        }
    }

    /// A passthrough handle was released; the last writes of a writing one are taken in.
    pub fn passthrough_closed(&self, writes: bool) {
        let mut st = self.state();
        if writes {
            st.take_in_writes();
            st.passthrough_writers -= 1;
            if st.passthrough_writers == 0 {
                st.passthrough_mark = None;
            }
        }
        st.passthrough -= 1;
    }

    /// The manifest entry of the node at `path`, when its content is in the bucket.
    pub fn manifest_entry(&self, path: &str) -> Option<crate::manifest::Entry> {
        let st = self.state();
        if st.unlinked {
            return None;
        }
        let r = st.remote.as_ref()?;
        Some(crate::manifest::Entry {
            key: path.as_bytes().to_vec().into(),
            size: r.size,
            mtime_ms: st.mtime_ms,
            etag: crate::manifest::Etag::parse(r.etag.as_deref()),
            attrs: st.attrs.clone(),
        })
    }
}

/// A node's size, mtime and attributes (see [`FileNode::stat`]).
#[derive(Debug, Clone)]
pub struct NodeStat {
    pub size: u64,
    pub mtime_ms: i64,
    pub attrs: Attrs,
}

/// Where a node's content is (see [`FileNode::content`]).
#[derive(Debug, Clone)]
pub struct Content {
    /// The local content, if any: it is the file's content then.
    pub staged: Option<Arc<Staged>>,
    pub size: u64,
    pub key: String,
    /// The object under the key, read when there is no staging file.
    pub remote: Option<Remote>,
}

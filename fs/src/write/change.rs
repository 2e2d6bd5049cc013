//! Changes the filesystem makes to a file: writes, `fallocate`, truncation, new metadata,
//! symlink bodies and renames. Each bumps the node's version before the staging file changes
//! (the invariant the uploader's commit relies on) and says what changed, so an upload can
//! copy the rest from the object.

use std::sync::Arc;

use super::node::FileState;
use super::{FileNode, Remote, Staged, WriteBack, WriteBackError};
use crate::attrs::{S_IFLNK, S_IFREG};
use crate::now_ms;
use crate::object::UploadMeta;

/// A change of metadata (`chmod`, `chown`, `utimens`): `None` leaves a field as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetaChange {
    pub mtime_ms: Option<i64>,
    pub atime_ms: Option<i64>,
    /// Permission bits (the file type is kept).
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// What [`WriteBack::change_meta`] left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaDone {
    /// The content is local and no writer is open: flush the node (its upload carries the
    /// new metadata).
    Flush,
    /// A writer is open: its release flushes.
    AtRelease,
    /// The content is in the bucket: [`WriteBack::replace_metadata`] sets it there.
    Replace,
}

impl WriteBack {
    /// The node's staging file (staging the object first if needed), with `change` applied to
    /// its state in the same critical section: the uploader drops a staging file only when no
    /// version bump happened since its upload.
    async fn stage_for(
        &self,
        node: &Arc<FileNode>,
        mut change: impl FnMut(&mut FileState),
    ) -> Result<Arc<Staged>, WriteBackError> {
        loop {
            {
                let mut st = node.state();
                if let Some(s) = st.staged.clone() {
                    change(&mut st);
                    return Ok(s);
                }
            }
            self.stage(node, false).await?;
        }
    }

    /// After a local write to the staging file failed: the size is what the file holds, and
    /// an early upload of the stream restarts.
    fn failed_write(node: &FileNode, staged: &Staged, e: std::io::Error) -> WriteBackError {
        let mut st = node.state();
        if let Ok(len) = staged.len() {
            st.size = len;
        }
        st.reset_stream(false);
        WriteBackError::Io(e)
    }

    /// Writes `data` at `offset` of the node's content. The first write to an existing object
    /// stages it (downloads it) first.
    pub async fn write(
        &self,
        node: &Arc<FileNode>,
        offset: u64,
        data: &[u8],
    ) -> Result<(), WriteBackError> {
        let end = offset + data.len() as u64;
        let staged = self
            .stage_for(node, |st| {
                st.version += 1;
                st.mtime_ms = now_ms();
                st.size = st.size.max(end);
                st.before_write(offset, end);
            })
            .await?;
        if let Err(e) = staged.write_at(data, offset) {
            return Err(Self::failed_write(node, &staged, e));
        }
        self.after_write(node);
        Ok(())
    }

    /// `fallocate`: mode 0 reserves the range and extends the file to its end (with zeros),
    /// `keep_size` only reserves.
    pub async fn allocate(
        &self,
        node: &Arc<FileNode>,
        offset: u64,
        len: u64,
        keep_size: bool,
    ) -> Result<(), WriteBackError> {
        let end = offset.saturating_add(len);
        let staged = self
            .stage_for(node, |st| {
                if !keep_size && end > st.size {
                    // Like a write of zeros at the end: a new version, a new size.
                    st.version += 1;
                    st.mtime_ms = now_ms();
                    let from = st.size;
                    st.changed(from..end);
                    st.size = end;
                    st.before_write(from, end);
                }
            })
            .await?;
        if let Err(e) = staged.allocate(offset, len, keep_size) {
            return Err(Self::failed_write(node, &staged, e));
        }
        if !keep_size {
            self.after_write(node);
        }
        Ok(())
    }

    /// Sets the size of the node's content (nothing is downloaded to empty it).
    pub async fn truncate(&self, node: &Arc<FileNode>, size: u64) -> Result<(), WriteBackError> {
        let staged = loop {
            {
                let mut st = node.state();
                if let Some(s) = st.staged.clone() {
                    st.version += 1;
                    let old = st.size;
                    st.changed(old.min(size)..old.max(size));
                    st.size = size;
                    st.mtime_ms = now_ms();
                    st.reset_stream(size == 0);
                    break s;
                }
            }
            self.stage(node, size == 0).await?;
        };
        staged.set_len(size)?;
        Ok(())
    }

    /// Applies a change of metadata to the node, and says what is left to do to store it.
    /// Content not yet in the bucket gets a new version, so an upload already under way
    /// starts again with the new metadata; the decision is made in the same critical section
    /// as the bump, so a writer's release racing it flushes either way.
    pub fn change_meta(&self, node: &FileNode, c: MetaChange) -> MetaDone {
        let mut st = node.state();
        if let Some(t) = c.mtime_ms {
            st.mtime_ms = t;
        }
        st.attrs.atime_ms = c.atime_ms.or(st.attrs.atime_ms);
        if let Some(m) = c.perm {
            st.attrs.set_perm(m, S_IFREG);
        }
        st.attrs.uid = c.uid.or(st.attrs.uid);
        st.attrs.gid = c.gid.or(st.attrs.gid);
        let local = st.staged.is_some() && (st.writers > 0 || st.version > st.uploaded);
        if !local {
            return MetaDone::Replace;
        }
        st.version += 1;
        st.reset_stream(false);
        if st.writers == 0 {
            MetaDone::Flush
        } else {
            MetaDone::AtRelease
        }
    }

    /// Stores the metadata of a node whose content is in the bucket: a copy of the object onto
    /// itself (no re-upload). Returns when the bucket has it.
    pub async fn replace_metadata(&self, node: &Arc<FileNode>) -> Result<(), WriteBackError> {
        let _commit = node.lock_commit().await;
        let (key, meta) = {
            let st = node.state();
            if st.unlinked || st.remote.is_none() {
                return Ok(());
            }
            let meta = UploadMeta {
                mtime_ms: Some(st.mtime_ms),
                attrs: st.attrs.clone(),
            };
            (st.key.clone(), meta)
        };
        let etag = self.source().set_meta(&key, &meta).await?;
        let mut st = node.state();
        if let (Some(r), Some(e)) = (st.remote.as_mut(), etag) {
            r.etag = Some(e);
        }
        Ok(())
    }

    /// Makes a new node's content the symlink target `target` (the s3fs encoding: the body is
    /// the target, the mode says `S_IFLNK`). The caller flushes it.
    pub async fn write_symlink(
        &self,
        node: &Arc<FileNode>,
        target: &[u8],
    ) -> Result<(), WriteBackError> {
        let staged = self.stage(node, true).await?;
        staged.write_at(target, 0)?;
        let mut st = node.state();
        debug_assert_eq!(
            st.attrs.mode.map(|m| m & crate::attrs::S_IFMT),
            Some(S_IFLNK)
        );
        st.size = target.len() as u64;
        st.version += 1;
        Ok(())
    }

    /// Moves the node's content from `spath` to `dpath` in the bucket and queues what must be
    /// uploaded. Content that is the object is copied on the server, unless a local copy of a
    /// file small enough for one PUT is at hand: sending it again under the new key (in the
    /// background) costs less than a copy, a HEAD and a delete in a row, for the many small
    /// renames of package installs and atomic writes.
    pub async fn rename(
        &self,
        node: &Arc<FileNode>,
        spath: &str,
        dpath: &str,
    ) -> Result<(), WriteBackError> {
        {
            let _g = node.lock_commit().await;
            let copy_on_server = {
                let st = node.state();
                let small_local = st.staged.is_some() && st.size <= self.config.part_size;
                st.remote.is_some() && st.version == st.uploaded && !small_local
            };
            if copy_on_server {
                let source = self.source();
                source.copy(spath, dpath).await?;
                let head = source.head(dpath).await?;
                source.delete(spath).await?;
                let mut st = node.state();
                st.key = dpath.to_string();
                st.remote = head.map(|(size, etag)| Remote { size, etag });
            } else {
                // Local content: re-key it, journal it under the new key, upload it there.
                let absent = {
                    let mut st = node.state();
                    st.key = dpath.to_string();
                    st.remote = None;
                    st.version += 1;
                    let seq = st.seq_end;
                    st.reset_stream(false);
                    st.seq_end = seq;
                    // What the new key holds in the bucket is not known here.
                    std::mem::replace(&mut st.absent, false)
                };
                self.flush_locked(node)?;
                // Whatever the bucket has under the old key goes: an earlier upload of this
                // file, or an object this file replaced before its own upload completed. A
                // file made here and never uploaded left nothing there.
                if !absent {
                    self.source().delete(spath).await?;
                }
            }
        }
        self.enqueue(node).await
    }
}

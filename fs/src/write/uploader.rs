//! The uploader: sends a flushed version of a file, and makes it visible only if it is still
//! the file's content (see the invariants in the module above).

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::staging::read_part;
use super::{FileNode, Remote, Staged, WriteBack, WriteBackError, MAX_PARTS};
use crate::metrics::Metrics;
use crate::object::UploadMeta;

/// Starts the mount's `upload_files` upload tasks on the queue `rx`. They end with the queue
/// or with the write-back engine.
pub(super) fn spawn(wb: &Arc<WriteBack>, rx: mpsc::Receiver<Arc<FileNode>>) {
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    for _ in 0..wb.config.upload_files.max(1) {
        let (wb, rx) = (Arc::downgrade(wb), rx.clone());
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
}

impl WriteBack {
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
    pub(super) async fn held_part(
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
        if let (Some(cache), Some(e)) = (&self.config.cache, &etag) {
            if size <= super::CACHE_WRITTEN_MAX {
                self.copy_to_cache(cache, node, v, e).await;
            }
        }
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
}

impl WriteBack {
    /// Copies version `v` of a file just uploaded as the object with ETag `etag` into the disk
    /// cache, block by block, as a reader would have fetched it. A block goes in only if the
    /// file is still at that version after the block was read: writers bump the version before
    /// they touch the staging file, so the bytes cached are always the object's. Best effort:
    /// an error or a change stops the copy.
    async fn copy_to_cache(
        &self,
        cache: &crate::cache::DiskCache,
        node: &FileNode,
        v: &Version,
        etag: &str,
    ) {
        use crate::cache::{BlockId, BLOCK_SIZE};
        let Some(etag) = crate::manifest::Etag::parse(Some(etag)).to_header() else {
            return;
        };
        let root: Arc<str> = self.source.source().display_root().into();
        let key: Arc<str> = v.key.as_str().into();
        let etag: Arc<str> = etag.into();
        for index in 0..v.size.div_ceil(BLOCK_SIZE) {
            let range = index * BLOCK_SIZE..v.size.min((index + 1) * BLOCK_SIZE);
            let len = range.end - range.start;
            let Ok(bytes) = read_part(&v.staged, range).await else {
                return;
            };
            {
                let mut st = node.state();
                st.take_in_writes();
                if st.version != v.version || st.unlinked {
                    return;
                }
            }
            let id = BlockId {
                root: root.clone(),
                key: key.clone(),
                etag: etag.clone(),
                index,
            };
            cache.put(&id, bytes).await;
            Metrics::add(&self.metrics.cached_bytes, len);
        }
    }
}

/// The version of a file an upload sends: what the uploader read from the node's state.
pub(super) struct Version {
    pub(super) key: String,
    pub(super) staged: Arc<Staged>,
    pub(super) version: u64,
    pub(super) size: u64,
    pub(super) meta: UploadMeta,
    /// The object now under the key (size, ETag), which unchanged ranges may be copied from.
    pub(super) base: Option<(u64, String)>,
    /// What changed since `base`; `None`: everything.
    pub(super) dirty: Option<Vec<std::ops::Range<u64>>>,
}

enum Prepared {
    Single(Bytes, tokio::sync::OwnedSemaphorePermit),
    Multipart(crate::object::MultipartWriter),
    Patch(crate::object::patch::PatchUpload),
}

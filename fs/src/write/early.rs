//! Early upload: parts of a file written sequentially go out while it is still being written.

use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

use super::node::FileState;
use super::staging::read_part;
use super::{FileNode, Staged, WriteBack, WriteBackError, EARLY_PARTS, MAX_PARTS};
use crate::object::{UploadMeta, WriteError};

/// A multipart upload started while a file is written sequentially. Parts are scheduled as
/// the writer passes part boundaries; the bytes of a scheduled part never change afterwards
/// (a write below `scheduled_end` kills the stream), so the upload at `close()` continues it.
pub(super) struct Stream {
    pub(super) key: String,
    pub(super) staged_id: u64,
    pub(super) part: u64,
    pub(super) scheduled_end: u64,
    tx: mpsc::Sender<std::ops::Range<u64>>,
    /// Limits parts in flight while the file is written; lifted when the stream finishes.
    early: Arc<Semaphore>,
    task: tokio::task::JoinHandle<Result<StreamParts, WriteBackError>>,
}

pub(super) type StreamParts = (
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
    pub(super) async fn finish(self) -> Result<StreamParts, WriteBackError> {
        drop(self.tx);
        self.early.add_permits(MAX_PARTS as usize);
        self.task.await.expect("stream task panicked")
    }

    /// Abandons the stream in the background: nothing it sent becomes visible.
    pub(super) fn kill(self) {
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
    /// Called under the node's state lock before a write of `offset..end` touches the staging
    /// file: a write into bytes already scheduled for upload kills the stream.
    pub(super) fn before_write(&mut self, offset: u64, end: u64) {
        self.changed(offset..end);
        if self
            .stream
            .as_ref()
            .is_some_and(|s| offset < s.scheduled_end)
        {
            if let Some(s) = self.stream.take() {
                s.kill();
            }
        }
        self.seq_end = match self.seq_end {
            Some(e) if e == offset => Some(end),
            _ => None,
        };
    }

    /// Called under the state lock when the content changes other than by a write (truncate,
    /// rename, unlink): the stream is abandoned.
    pub(super) fn reset_stream(&mut self, empty: bool) {
        if let Some(s) = self.stream.take() {
            s.kill();
        }
        self.seq_end = empty.then_some(0);
    }
}

impl WriteBack {
    /// After a write: schedules the upload of every part a sequential writer has completed.
    pub(super) fn after_write(&self, node: &FileNode) {
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
}

//! Uploads that send only what changed: a multipart upload whose unchanged ranges are
//! server-side copies of the object the file was staged from ([`crate::object::patch`]).
//!
//! Tried before a whole upload when the file's base object is known and at least one
//! minimum part of it is unchanged. Any failure (a store without UploadPartCopy, a base that
//! changed under us, a part that failed) abandons the patch and the file is sent whole in the
//! same attempt, so a patch never makes an upload fail that would otherwise succeed.

use std::sync::Arc;

use crate::object::patch::{plan, PatchUpload, Piece};

use super::uploader::Version;
use super::{FileNode, WriteBack, MAX_PARTS};

impl WriteBack {
    /// Sends `v` as a patch of its base; `None` when it cannot or should not be.
    pub(super) async fn send_patch(&self, node: &FileNode, v: &Version) -> Option<PatchUpload> {
        let (base_len, base_etag) = v.base.clone()?;
        let dirty = v.dirty.as_deref()?;
        let part = self.config.part_size.max(v.size.div_ceil(MAX_PARTS));
        let pieces = plan(base_len, v.size, dirty, part)?;
        let upload = match self.source.start_patch(&v.key, &base_etag, &v.meta).await {
            Ok(Some(u)) => Arc::new(u),
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!(key = %v.key, "patch upload refused, sending the file whole: {e}");
                return None;
            }
        };
        let mut tasks = Vec::new();
        let mut failed = None;
        for (i, piece) in pieces.into_iter().enumerate() {
            if node.state().stale_for(v.version, v.size) {
                break; // stale: the commit finds it stale too and aborts
            }
            let n = i as u32 + 1;
            let up = upload.clone();
            match piece {
                Piece::Copy(r) => tasks.push(tokio::spawn(async move { up.copy_part(n, r).await })),
                Piece::Send(r) => {
                    let (permit, bytes) = match self.held_part(&v.staged, r).await {
                        Ok(held) => held,
                        Err(e) => {
                            failed = Some(e.to_string());
                            break;
                        }
                    };
                    tasks.push(tokio::spawn(async move {
                        let r = up.put_part(n, bytes).await;
                        drop(permit);
                        r
                    }));
                }
            }
        }
        for t in tasks {
            if let Err(e) = t.await.expect("part task panicked") {
                failed.get_or_insert(e.to_string());
            }
        }
        let upload = Arc::into_inner(upload).expect("every part task ended");
        if let Some(why) = failed {
            tracing::debug!(key = %v.key, "patch upload failed, sending the file whole: {why}");
            upload.abort().await;
            return None;
        }
        Some(upload)
    }
}

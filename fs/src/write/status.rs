//! What is pending and what failed, for `pai-mount status` and the drain at unmount.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{FileNode, WriteBack};

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

impl WriteBack {
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
}

//! Staging files kept after their upload, as a local copy of the object.
//!
//! A file that was written and uploaded keeps its staging file (now equal to the object), so
//! reopening it to append or patch needs no download, and reads are local. The copies are
//! bounded by [`super::WriteConfig::keep_staged`] bytes, least recently uploaded dropped first;
//! a copy is only dropped while nobody writes the file and its content is the uploaded one.
//! They are not journaled: the next mount removes them.

use std::sync::{Arc, Mutex, Weak};

use super::{FileNode, WriteBack};

/// Kept copies pushed out of the budget: staging id and node.
pub(super) type Victims = Vec<(u64, Weak<FileNode>)>;

/// Kept copies, least recently uploaded first: staging id -> node and bytes.
#[derive(Debug)]
pub(super) struct Kept {
    lru: lru::LruCache<u64, (Weak<FileNode>, u64)>,
    bytes: u64,
}

impl Kept {
    pub(super) fn new() -> Mutex<Self> {
        Mutex::new(Self {
            lru: lru::LruCache::unbounded(),
            bytes: 0,
        })
    }
}

impl WriteBack {
    /// Keeps `node`'s staging file `id` (of `size` bytes) after its upload if the budget
    /// allows. Returns `None` if it is not kept (the caller drops it), else the oldest kept
    /// copies now beyond the budget, for [`Self::drop_kept`] once the caller holds no node's
    /// state lock (it takes theirs).
    pub(super) fn keep_staged(&self, node: &Arc<FileNode>, id: u64, size: u64) -> Option<Victims> {
        let limit = self.config.keep_staged;
        if size > limit {
            return None;
        }
        let victims = {
            let mut k = self.kept.lock().unwrap();
            if let Some((_, old)) = k.lru.put(id, (Arc::downgrade(node), size)) {
                k.bytes -= old;
            }
            k.bytes += size;
            let mut victims = Vec::new();
            while k.bytes > limit {
                let Some((vid, (weak, len))) = k.lru.pop_lru() else {
                    break;
                };
                k.bytes -= len;
                victims.push((vid, weak));
            }
            victims
        };
        Some(victims)
    }

    /// Drops the kept copies [`Self::keep_staged`] pushed out, unless they are in use again.
    pub(super) fn drop_kept(&self, victims: Victims) {
        for (vid, weak) in victims {
            let Some(n) = weak.upgrade() else { continue };
            let dropped = {
                let mut st = n.state();
                let clean = st.staged.as_ref().is_some_and(|s| s.id == vid)
                    && st.writers == 0
                    && st.passthrough == 0
                    && st.version == st.uploaded;
                if clean {
                    st.staged.take()
                } else {
                    None // written again: its next upload keeps it anew
                }
            };
            if let Some(s) = dropped {
                s.remove();
            }
        }
    }

    /// Forgets a kept copy that is going away (unlink) or changing hands.
    pub(super) fn unkeep(&self, id: u64) {
        let mut k = self.kept.lock().unwrap();
        if let Some((_, len)) = k.lru.pop(&id) {
            k.bytes -= len;
        }
    }

    /// Bytes of kept copies.
    pub fn kept_bytes(&self) -> u64 {
        self.kept.lock().unwrap().bytes
    }
}

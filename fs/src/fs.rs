//! The filesystem core: metadata operations on inode numbers, reads on handles.
//!
//! Metadata is served from memory by the current [`Snapshot`]; only reads touch the network.
//! Nothing here knows FUSE, so tests drive it directly.
//!
//! ## Inode numbers and snapshots
//! A snapshot's node `n` has inode `(generation << 32) | (n + 1)`; the root is always inode 1.
//! A refresh installs a new snapshot with the next generation. The kernel may still hold
//! inodes of the old one: those keep answering from the old snapshot while it is retained.
//! Each snapshot counts the lookups the kernel holds on its inodes (every entry reply adds
//! one, `forget` subtracts); a retired snapshot is dropped when that count reaches zero, or
//! when more than [`MAX_RETIRED`] are retired, after which its inodes answer `ESTALE`.
//!
//! ## Invariants
//! - Reads return only bytes of the object version pinned at `open` (see [`crate::object`]).
//! - Every handle holds its own pinned copy of key, size and ETag; a refresh never changes
//!   what an open handle reads.
//! - The mount is read-only: every mutating operation is `EROFS`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::error::FsError;
use crate::metrics::Metrics;
use crate::namespace::{Namespace, NodeKind};
use crate::reader::{ObjectReader, ReaderFactory};

pub const ROOT_INO: u64 = 1;
/// Retired snapshots kept alive for inodes the kernel still holds.
pub const MAX_RETIRED: usize = 2;
/// Default entry and attribute TTL. The manifest is a snapshot, so attributes cannot change
/// under the kernel unless a refresh is configured (then the refresh interval caps the TTL).
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Ownership, modes and caching of the mount.
#[derive(Debug, Clone)]
pub struct FsConfig {
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    /// Entry and attribute TTL given to the kernel.
    pub ttl: Duration,
}

impl Default for FsConfig {
    fn default() -> Self {
        // SAFETY: getuid and getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Self {
            uid,
            gid,
            file_mode: 0o644,
            dir_mode: 0o755,
            ttl: DEFAULT_TTL,
        }
    }
}

/// One namespace generation.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub namespace: Namespace,
    /// Lookups the kernel holds on inodes of this snapshot.
    lookups: AtomicU64,
}

impl Snapshot {
    fn ino(&self, node: u32) -> u64 {
        if node == Namespace::ROOT {
            ROOT_INO
        } else {
            (self.generation << 32) | (u64::from(node) + 1)
        }
    }
}

/// Attributes of an inode, independent of FUSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: NodeKind,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
}

/// One directory entry for readdir.
#[derive(Debug, Clone)]
pub struct DirEntry<'a> {
    /// Offset of the *next* entry, as readdir wants it.
    pub next_offset: u64,
    pub name: &'a str,
    pub attr: Attr,
}

/// Totals for statfs.
#[derive(Debug, Clone, Copy)]
pub struct FsStats {
    pub files: u64,
    pub bytes: u64,
}

struct OpenFile {
    reader: Box<dyn ObjectReader>,
    key: Arc<str>,
}

#[derive(Debug)]
struct Snapshots {
    current: Arc<Snapshot>,
    retired: VecDeque<Arc<Snapshot>>,
}

/// The filesystem.
pub struct Fs {
    snapshots: RwLock<Snapshots>,
    handles: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next_fh: AtomicU64,
    readers: Arc<dyn ReaderFactory>,
    config: FsConfig,
    metrics: Arc<Metrics>,
}

impl Fs {
    pub fn new(
        namespace: Namespace,
        readers: Arc<dyn ReaderFactory>,
        config: FsConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            snapshots: RwLock::new(Snapshots {
                current: Arc::new(Snapshot {
                    generation: 0,
                    namespace,
                    lookups: AtomicU64::new(0),
                }),
                retired: VecDeque::new(),
            }),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            readers,
            config,
            metrics,
        }
    }

    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The snapshot new lookups see.
    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshots.read().unwrap().current.clone()
    }

    /// Installs a new namespace; lookups see it at once, open handles are unaffected.
    pub fn swap(&self, namespace: Namespace) -> u64 {
        let mut s = self.snapshots.write().unwrap();
        let generation = s.current.generation + 1;
        let old = std::mem::replace(
            &mut s.current,
            Arc::new(Snapshot {
                generation,
                namespace,
                lookups: AtomicU64::new(0),
            }),
        );
        if old.lookups.load(Ordering::Acquire) > 0 {
            s.retired.push_back(old);
        }
        while s.retired.len() > MAX_RETIRED {
            let dropped = s.retired.pop_front().unwrap();
            tracing::info!(
                generation = dropped.generation,
                "dropping a retired namespace snapshot; its remaining inodes answer ESTALE"
            );
        }
        generation
    }

    /// Finds the snapshot and node of an inode.
    fn resolve(&self, ino: u64) -> Result<(Arc<Snapshot>, u32), FsError> {
        let s = self.snapshots.read().unwrap();
        if ino == ROOT_INO {
            return Ok((s.current.clone(), Namespace::ROOT));
        }
        let generation = ino >> 32;
        let node = ((ino & 0xffff_ffff) as u32)
            .checked_sub(1)
            .ok_or(FsError::StaleInode(ino))?;
        let snap = if s.current.generation == generation {
            s.current.clone()
        } else {
            s.retired
                .iter()
                .find(|r| r.generation == generation)
                .cloned()
                .ok_or(FsError::StaleInode(ino))?
        };
        if snap.namespace.info(node).is_none() {
            return Err(FsError::StaleInode(ino));
        }
        Ok((snap, node))
    }

    fn attr(&self, snap: &Snapshot, node: u32) -> Attr {
        let info = snap.namespace.info(node).expect("resolved nodes exist");
        let mtime = UNIX_EPOCH + Duration::from_millis(info.mtime_ms.max(0) as u64);
        let (perm, nlink) = match info.kind {
            NodeKind::Dir => (self.config.dir_mode, 2),
            NodeKind::File => (self.config.file_mode, 1),
        };
        Attr {
            ino: snap.ino(node),
            kind: info.kind,
            size: info.size,
            mtime,
            perm,
            nlink,
            uid: self.config.uid,
            gid: self.config.gid,
        }
    }

    /// Looks up `name` in `parent`. On success the kernel holds one more lookup on the result.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, FsError> {
        Metrics::add(&self.metrics.lookups, 1);
        if name.len() > crate::namespace::NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        let (snap, dir) = self.resolve(parent)?;
        if snap.namespace.info(dir).map(|i| i.kind) != Some(NodeKind::Dir) {
            return Err(FsError::NotDir);
        }
        let node = snap.namespace.lookup(dir, name).ok_or(FsError::NotFound)?;
        snap.lookups.fetch_add(1, Ordering::AcqRel);
        Ok(self.attr(&snap, node))
    }

    /// The kernel dropped `n` lookups on `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut s = self.snapshots.write().unwrap();
        let generation = ino >> 32;
        let release = |snap: &Snapshot| {
            let _ = snap
                .lookups
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                    Some(v.saturating_sub(n))
                });
        };
        if s.current.generation == generation {
            release(&s.current);
            return;
        }
        if let Some(pos) = s.retired.iter().position(|r| r.generation == generation) {
            release(&s.retired[pos]);
            if s.retired[pos].lookups.load(Ordering::Acquire) == 0 {
                s.retired.remove(pos);
            }
        }
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        let (snap, node) = self.resolve(ino)?;
        Ok(self.attr(&snap, node))
    }

    /// Lists a directory from `offset` (0 = start; entries 0 and 1 are `.` and `..`).
    /// `add` returns `true` when the reply buffer is full. With `plus`, every entry other than
    /// `.` and `..` that `add` accepts counts as a lookup.
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
        plus: bool,
        mut add: impl FnMut(DirEntry<'_>) -> bool,
    ) -> Result<(), FsError> {
        let (snap, dir) = self.resolve(ino)?;
        let ns = &snap.namespace;
        if ns.info(dir).map(|i| i.kind) != Some(NodeKind::Dir) {
            return Err(FsError::NotDir);
        }
        let kids = ns.children(dir);
        let parent_ino = if dir == Namespace::ROOT {
            ROOT_INO
        } else {
            snap.ino(ns.parent(dir))
        };
        let total = kids.len() as u64 + 2;
        for i in offset..total {
            let (name, attr) = match i {
                0 => (".", self.attr(&snap, dir)),
                1 => {
                    let mut a = self.attr(&snap, ns.parent(dir));
                    a.ino = parent_ino;
                    ("..", a)
                }
                _ => {
                    let node = kids[(i - 2) as usize];
                    (ns.name_of(node), self.attr(&snap, node))
                }
            };
            let full = add(DirEntry {
                next_offset: i + 1,
                name,
                attr,
            });
            if full {
                break;
            }
            if plus && i >= 2 {
                snap.lookups.fetch_add(1, Ordering::AcqRel);
            }
        }
        Ok(())
    }

    /// Opens a file for reading and pins its key, size and ETag.
    pub fn open(&self, ino: u64, write: bool) -> Result<u64, FsError> {
        let (snap, node) = self.resolve(ino)?;
        let info = snap.namespace.info(node).expect("resolved");
        if info.kind == NodeKind::Dir {
            return Err(FsError::IsDir);
        }
        if write {
            return Err(FsError::ReadOnly);
        }
        let object = snap.namespace.pin(node).expect("a resolved file");
        let key = object.key.clone();
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let open = Arc::new(OpenFile {
            reader: self.readers.open(object),
            key,
        });
        self.handles.lock().unwrap().insert(fh, open);
        Ok(fh)
    }

    /// Reads from an open handle. Short only at EOF.
    pub async fn read(&self, fh: u64, offset: u64, len: u32) -> Result<Bytes, FsError> {
        let open = self
            .handles
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle(fh))?;
        match open.reader.read(offset, len).await {
            Ok(b) => {
                Metrics::add(&self.metrics.read_bytes, b.len() as u64);
                Metrics::add(&self.metrics.reads, 1);
                Ok(b)
            }
            Err(e) => {
                if matches!(
                    e,
                    crate::object::ReadError::Changed { .. }
                        | crate::object::ReadError::Gone { .. }
                ) {
                    Metrics::add(&self.metrics.stale_reads, 1);
                }
                tracing::debug!(key = %open.key, "read failed: {e}");
                Err(e.into())
            }
        }
    }

    pub fn release(&self, fh: u64) {
        self.handles.lock().unwrap().remove(&fh);
    }

    pub fn open_handles(&self) -> usize {
        self.handles.lock().unwrap().len()
    }

    pub fn stats(&self) -> FsStats {
        let s = self.current();
        FsStats {
            files: s.namespace.file_count(),
            bytes: s.namespace.total_bytes(),
        }
    }
}

#[cfg(test)]
mod tests;

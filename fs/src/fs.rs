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
//! ## Writes
//! Changes live in the [`overlay`] on top of the snapshot; file content lives in
//! [`crate::write`] nodes (staging files and the uploader). Write operations are in
//! [`write_ops`]. Without a [`WriteBack`] the mount is read-only and every change is `EROFS`.
//!
//! ## Invariants
//! - Reads of an unchanged file return only bytes of the object version pinned at `open`
//!   (see [`crate::object`]); reads of a changed file return its staged bytes, or the object
//!   version this mount uploaded.
//! - Every read-only handle of an unchanged file holds its own pinned copy of key, size and
//!   ETag; a refresh never changes what it reads.
//! - An inode number never changes meaning: entries moved by `rename` keep theirs.
//! - Locks: the overlay lock and a node's state lock are never held across an `await`; a
//!   node's commit lock may be, and is always taken before the overlay lock.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::error::FsError;
pub use crate::ids::{Fh, InodeNo};
use crate::metrics::Metrics;
use crate::namespace::{Namespace, NodeKind};
use crate::now_ms;
use crate::reader::{ObjectReader, PinnedObject, ReaderFactory};
use crate::write::{FileNode, WriteBack};

mod io_mode;
pub mod overlay;
mod write_ops;

pub use io_mode::{Access, IoMode};

pub use write_ops::{Owner, SetAttr};

use overlay::{Entry, Overlay};

pub const ROOT_INO: InodeNo = InodeNo::ROOT;
/// Inodes of entries made by this mount have this bit set (snapshot inodes never do).
pub const OVERLAY_INO: u64 = 1 << 62;
/// Retired snapshots kept alive for inodes the kernel still holds.
pub const MAX_RETIRED: usize = 2;
/// Default entry and attribute TTL. The manifest is a snapshot, so attributes cannot change
/// under the kernel unless a refresh is configured (then the refresh interval caps the TTL).
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest a read through the mount waits for the store before it fails with `EIO`. A
/// minute outlasts a throttling episode and the request-level retries of a stalled
/// connection (each bounded in seconds), and is short enough that a training job or a shell
/// sees the failure instead of hanging.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Ownership, modes and caching of the mount.
#[derive(Debug, Clone)]
pub struct FsConfig {
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    /// Entry and attribute TTL given to the kernel.
    pub ttl: Duration,
    /// Bound of one read that needs the store ([`DEFAULT_READ_TIMEOUT`]).
    pub read_timeout: Duration,
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
            read_timeout: DEFAULT_READ_TIMEOUT,
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
    fn ino(&self, node: u32) -> InodeNo {
        if node == Namespace::ROOT {
            ROOT_INO
        } else {
            InodeNo((self.generation << 32) | (u64::from(node) + 1))
        }
    }
}

/// Attributes of an inode, independent of FUSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: InodeNo,
    pub kind: NodeKind,
    pub size: u64,
    pub mtime: SystemTime,
    /// The mtime, unless `utimens` set another (see [`Fs::set_atime`]).
    pub atime: SystemTime,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Attr {
    /// The attributes of a negative lookup reply (nothing there).
    pub fn negative() -> Self {
        Self {
            ino: InodeNo(0),
            kind: NodeKind::File,
            size: 0,
            mtime: UNIX_EPOCH,
            atime: UNIX_EPOCH,
            perm: 0,
            nlink: 0,
            uid: 0,
            gid: 0,
        }
    }
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
    /// Bytes that may still be written (free space of the staging disk; 0 when read-only).
    pub free: u64,
}

/// What an inode is.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// An entry of a snapshot.
    Base { snap: Arc<Snapshot>, node: u32 },
    /// A file with a node (written, renamed or touched in this mount).
    File(Arc<FileNode>),
    /// A directory made or moved in this mount.
    Dir { ino: InodeNo, mtime_ms: i64 },
}

/// A handle's reader of a node's object, with the ETag it is pinned to.
type NodeReader = Mutex<Option<(Option<String>, Arc<dyn ObjectReader>)>>;

enum OpenFile {
    /// An unchanged file of a snapshot, pinned at open.
    Base {
        ino: InodeNo,
        reader: Box<dyn ObjectReader>,
        key: Arc<str>,
    },
    /// A file with a node: reads its staged bytes, or its current object.
    Node {
        node: Arc<FileNode>,
        write: bool,
        reader: NodeReader,
    },
}

#[derive(Debug)]
struct Snapshots {
    current: Arc<Snapshot>,
    retired: VecDeque<Arc<Snapshot>>,
}

/// The filesystem.
pub struct Fs {
    snapshots: RwLock<Snapshots>,
    handles: Mutex<HashMap<Fh, Arc<OpenFile>>>,
    next_fh: AtomicU64,
    readers: Arc<dyn ReaderFactory>,
    config: FsConfig,
    metrics: Arc<Metrics>,
    overlay: RwLock<Overlay>,
    write: Option<Arc<WriteBack>>,
    next_ino: AtomicU64,
    io: Mutex<io_mode::IoModes>,
    /// Whether new handles may use FUSE passthrough (see `io_mode`).
    passthrough: std::sync::atomic::AtomicBool,
    /// Access times set by `utimens`, by inode (see [`Fs::set_atime`]); `any_atime` once any is.
    atimes: Mutex<HashMap<InodeNo, SystemTime>>,
    any_atime: std::sync::atomic::AtomicBool,
    /// Directory modes, owners and mtimes set in this mount, by inode (see
    /// [`Fs::set_dir_attrs`]).
    dir_attrs: Mutex<HashMap<InodeNo, DirAttrs>>,
}

/// What `chmod`, `chown` and `utimens` set on a directory.
#[derive(Debug, Clone, Copy, Default)]
struct DirAttrs {
    perm: Option<u16>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Option<SystemTime>,
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
            overlay: RwLock::new(Overlay::default()),
            write: None,
            next_ino: AtomicU64::new(OVERLAY_INO + 1),
            io: Mutex::default(),
            passthrough: std::sync::atomic::AtomicBool::new(false),
            atimes: Mutex::default(),
            any_atime: std::sync::atomic::AtomicBool::new(false),
            dir_attrs: Mutex::new(HashMap::new()),
        }
    }

    /// Makes the mount writable through `write`. Files it recovered from an earlier mount
    /// (`recovered`) appear at their keys at once.
    pub fn with_write_back(mut self, write: Arc<WriteBack>, recovered: Vec<Arc<FileNode>>) -> Self {
        if let Some(max) = recovered.iter().map(|n| n.ino).max() {
            self.next_ino.fetch_max(max.0 + 1, Ordering::Relaxed);
        }
        {
            let snap = self.current();
            let mut ov = self.overlay.write().unwrap();
            for node in recovered {
                let key = node.key();
                if let Some(id) = base_lookup_path(&snap.namespace, &key) {
                    let info = snap.namespace.info(id).expect("exists");
                    if info.kind == NodeKind::File {
                        node.set_remote(Some(crate::write::Remote {
                            size: info.size,
                            etag: snap.namespace.etag_of(id),
                        }));
                    }
                }
                // Recovered files need directories to be reachable.
                let mut dir = overlay::parent_of(&key).to_string();
                while !dir.is_empty() && base_lookup_path(&snap.namespace, &dir).is_none() {
                    if ov.get(&dir).is_none() {
                        let ino = self.new_ino();
                        ov.put(
                            dir.clone(),
                            Entry::Dir {
                                ino,
                                mtime_ms: now_ms(),
                            },
                        );
                    }
                    dir = overlay::parent_of(&dir).to_string();
                }
                ov.put(key, Entry::File(node));
            }
        }
        self.write = Some(write);
        self
    }

    /// A fresh file handle.
    pub(crate) fn new_fh(&self) -> Fh {
        Fh(self.next_fh.fetch_add(1, Ordering::Relaxed))
    }

    /// A fresh overlay inode number.
    pub(crate) fn new_ino(&self) -> InodeNo {
        InodeNo(self.next_ino.fetch_add(1, Ordering::Relaxed))
    }

    pub fn write_back(&self) -> Option<&Arc<WriteBack>> {
        self.write.as_ref()
    }

    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Files and directories in the current namespace snapshot.
    pub fn namespace_len(&self) -> usize {
        self.current().namespace.len()
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

    /// Finds what an inode is, and its path.
    pub(crate) fn resolve(&self, ino: InodeNo) -> Result<(Target, String), FsError> {
        {
            let ov = self.overlay.read().unwrap();
            if !ov.is_empty() {
                if let Some(path) = ov.path_of(ino) {
                    match ov.get(path) {
                        Some(Entry::File(n)) => {
                            return Ok((Target::File(n.clone()), path.to_string()))
                        }
                        Some(Entry::Dir { ino, mtime_ms }) => {
                            return Ok((
                                Target::Dir {
                                    ino: *ino,
                                    mtime_ms: *mtime_ms,
                                },
                                path.to_string(),
                            ))
                        }
                        _ => {}
                    }
                }
            }
        }
        if ino.0 & OVERLAY_INO != 0 {
            return Err(FsError::StaleInode(ino));
        }
        let (snap, node) = self.resolve_base(ino)?;
        let path = if self.overlay.read().unwrap().is_empty() {
            String::new()
        } else {
            snap.namespace.key_of(node)
        };
        Ok((Target::Base { snap, node }, path))
    }

    /// Finds the snapshot and node of a snapshot inode.
    fn resolve_base(&self, ino: InodeNo) -> Result<(Arc<Snapshot>, u32), FsError> {
        let s = self.snapshots.read().unwrap();
        if ino == ROOT_INO {
            return Ok((s.current.clone(), Namespace::ROOT));
        }
        let generation = ino.0 >> 32;
        let node = ((ino.0 & 0xffff_ffff) as u32)
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
        let nlink = match info.kind {
            NodeKind::Dir => self.dir_nlink(Some((&snap.namespace, node)), || {
                snap.namespace.key_of(node)
            }),
            NodeKind::File | NodeKind::Symlink => 1,
        };
        let ino = snap.ino(node);
        let attrs = snap.namespace.attrs(node);
        let attr = Attr {
            ino,
            kind: info.kind,
            size: info.size,
            mtime,
            atime: self.atime(ino, attrs).unwrap_or(mtime),
            perm: self.perm_of(info.kind, attrs),
            nlink,
            uid: attrs.and_then(|a| a.uid).unwrap_or(self.config.uid),
            gid: attrs.and_then(|a| a.gid).unwrap_or(self.config.gid),
        };
        if info.kind == NodeKind::Dir {
            self.with_dir_attrs(attr)
        } else {
            attr
        }
    }

    /// Permission bits: stored ones, else the mount's default for the kind.
    fn perm_of(&self, kind: NodeKind, attrs: Option<&crate::attrs::Attrs>) -> u16 {
        match (kind, attrs.and_then(|a| a.perm())) {
            (_, Some(p)) => p,
            (NodeKind::Dir, None) => self.config.dir_mode,
            (NodeKind::File, None) => self.config.file_mode,
            (NodeKind::Symlink, None) => 0o777,
        }
    }

    /// A directory's link count: 2 plus its subdirectories, through the overlay (directories
    /// made, removed or replaced in this mount count as they are now). `base`: the directory's
    /// snapshot node, if the snapshot has it; `path`: its path.
    fn dir_nlink(&self, base: Option<(&Namespace, u32)>, path: impl FnOnce() -> String) -> u32 {
        if self.overlay.read().unwrap().is_empty() {
            return 2 + base.map_or(0, |(ns, node)| ns.subdirs(node));
        }
        // `path` may read the overlay itself: no guard is held across it (a second read lock
        // on one thread can deadlock behind a waiting writer).
        let path = path();
        let path = path.as_str();
        let ov = self.overlay.read().unwrap();
        let base = base.filter(|_| !ov.hides_below(path));
        let mut n = i64::from(base.map_or(0, |(ns, node)| ns.subdirs(node)));
        for (name, e) in ov.children(path) {
            let base_dir = base
                .and_then(|(ns, node)| ns.info(ns.lookup(node, name.as_bytes())?))
                .is_some_and(|i| i.kind == NodeKind::Dir);
            match (e, base_dir) {
                (Entry::Dir { .. }, false) => n += 1,
                (Entry::Whiteout | Entry::File(_), true) => n -= 1,
                _ => {}
            }
        }
        2 + n.max(0) as u32
    }

    /// Records an access time set by `utimens`. Reads do not change it (as with `noatime`).
    /// `setattr` also stores it with the object (the `atime` metadata) and in the manifest.
    pub fn set_atime(&self, ino: InodeNo, t: SystemTime) {
        self.atimes.lock().unwrap().insert(ino, t);
        self.any_atime.store(true, Ordering::Relaxed);
    }

    /// Records a directory's new mode, owner or mtime. Kept in memory for the mount's life:
    /// directory markers do not carry them yet.
    pub(crate) fn set_dir_attrs(&self, ino: InodeNo, a: &SetAttr) {
        let mut all = self.dir_attrs.lock().unwrap();
        let d = all.entry(ino).or_default();
        if let Some(m) = a.mode {
            d.perm = Some((m & crate::attrs::PERM_BITS) as u16);
        }
        d.uid = a.uid.or(d.uid);
        d.gid = a.gid.or(d.gid);
        d.mtime = a.mtime.or(d.mtime);
    }

    /// A directory's entries changed (create, unlink, rename, mkdir, rmdir, symlink): its mtime
    /// is now (in memory, like other directory times).
    pub(crate) fn touch_dir(&self, ino: InodeNo) {
        self.dir_attrs.lock().unwrap().entry(ino).or_default().mtime = Some(SystemTime::now());
    }

    /// A directory's attributes for the manifest: `base` (from the snapshot) with what this
    /// mount set on inode `ino`, and its mtime if set.
    pub(crate) fn dir_manifest_attrs(
        &self,
        ino: InodeNo,
        base: Option<&crate::attrs::Attrs>,
    ) -> (crate::attrs::Attrs, Option<i64>) {
        let mut attrs = base.cloned().unwrap_or_default();
        attrs.atime_ms = self.atime(ino, base).map(crate::attrs::ms_since_epoch);
        let Some(d) = self.dir_attrs.lock().unwrap().get(&ino).copied() else {
            return (attrs, None);
        };
        if let Some(p) = d.perm {
            attrs.mode = Some(crate::attrs::S_IFDIR | u32::from(p));
        }
        attrs.uid = d.uid.filter(|&u| u != self.config.uid).or(attrs.uid);
        attrs.gid = d.gid.filter(|&g| g != self.config.gid).or(attrs.gid);
        let mtime = d
            .mtime
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64);
        (attrs, mtime)
    }

    /// Applies what [`Self::set_dir_attrs`] recorded for `attr`'s inode.
    fn with_dir_attrs(&self, mut attr: Attr) -> Attr {
        if let Some(d) = self.dir_attrs.lock().unwrap().get(&attr.ino) {
            attr.perm = d.perm.unwrap_or(attr.perm);
            attr.uid = d.uid.unwrap_or(attr.uid);
            attr.gid = d.gid.unwrap_or(attr.gid);
            attr.mtime = d.mtime.unwrap_or(attr.mtime);
        }
        attr
    }

    /// The access time `utimens` set: in this mount, else the one stored with the object
    /// (`attrs`).
    pub(crate) fn atime(
        &self,
        ino: InodeNo,
        attrs: Option<&crate::attrs::Attrs>,
    ) -> Option<SystemTime> {
        let set_here = if self.any_atime.load(Ordering::Relaxed) {
            self.atimes.lock().unwrap().get(&ino).copied()
        } else {
            None
        };
        set_here.or_else(|| Some(crate::attrs::time_from_ms(attrs?.atime_ms?)))
    }

    pub(crate) fn target_attr(&self, t: &Target) -> Attr {
        match t {
            Target::Base { snap, node } => self.attr(snap, *node),
            Target::File(n) => {
                let st = n.stat();
                let kind = if st.attrs.is_symlink() {
                    NodeKind::Symlink
                } else {
                    NodeKind::File
                };
                Attr {
                    ino: n.ino,
                    kind,
                    size: st.size,
                    mtime: UNIX_EPOCH + Duration::from_millis(st.mtime_ms.max(0) as u64),
                    atime: self
                        .atime(n.ino, Some(&st.attrs))
                        .unwrap_or(UNIX_EPOCH + Duration::from_millis(st.mtime_ms.max(0) as u64)),
                    perm: self.perm_of(kind, Some(&st.attrs)),
                    nlink: 1,
                    uid: st.attrs.uid.unwrap_or(self.config.uid),
                    gid: st.attrs.gid.unwrap_or(self.config.gid),
                }
            }
            Target::Dir { ino, mtime_ms } => self.with_dir_attrs(Attr {
                ino: *ino,
                kind: NodeKind::Dir,
                size: 0,
                mtime: UNIX_EPOCH + Duration::from_millis((*mtime_ms).max(0) as u64),
                atime: self
                    .atime(*ino, None)
                    .unwrap_or(UNIX_EPOCH + Duration::from_millis((*mtime_ms).max(0) as u64)),
                perm: self.config.dir_mode,
                // Its children are the overlay's alone (as `list_dir` lists them).
                nlink: self.dir_nlink(None, || {
                    let ov = self.overlay.read().unwrap();
                    ov.path_of(*ino).unwrap_or_default().to_string()
                }),
                uid: self.config.uid,
                gid: self.config.gid,
            }),
        }
    }

    /// Finds `name` in the directory `parent` (at `parent_path`), through the overlay.
    pub(crate) fn child(
        &self,
        parent: &Target,
        parent_path: &str,
        name: &str,
    ) -> Result<(Target, String), FsError> {
        let path = overlay::join(parent_path, name);
        let ov = self.overlay.read().unwrap();
        match ov.get(&path) {
            Some(Entry::File(n)) => return Ok((Target::File(n.clone()), path)),
            Some(Entry::Dir { ino, mtime_ms }) => {
                return Ok((
                    Target::Dir {
                        ino: *ino,
                        mtime_ms: *mtime_ms,
                    },
                    path,
                ))
            }
            Some(Entry::Whiteout) => return Err(FsError::NotFound),
            None => {}
        }
        match parent {
            Target::File(_) => Err(FsError::NotDir),
            Target::Dir { .. } => Err(FsError::NotFound),
            Target::Base { snap, node } => {
                if snap.namespace.info(*node).map(|i| i.kind) != Some(NodeKind::Dir) {
                    return Err(FsError::NotDir);
                }
                if ov.hides_below(parent_path) {
                    return Err(FsError::NotFound);
                }
                let child = snap
                    .namespace
                    .lookup(*node, name.as_bytes())
                    .ok_or(FsError::NotFound)?;
                Ok((
                    Target::Base {
                        snap: snap.clone(),
                        node: child,
                    },
                    path,
                ))
            }
        }
    }

    /// Looks up `name` in `parent`. On success the kernel holds one more lookup on the result.
    pub fn lookup(&self, parent: InodeNo, name: &[u8]) -> Result<Attr, FsError> {
        Metrics::add(&self.metrics.lookups, 1);
        if name.len() > crate::namespace::NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        let (dir, dir_path) = self.resolve(parent)?;
        let name = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
        let (t, _) = self.child(&dir, &dir_path, name)?;
        if let Target::Base { snap, .. } = &t {
            snap.lookups.fetch_add(1, Ordering::AcqRel);
        }
        Ok(self.target_attr(&t))
    }

    /// The kernel dropped `n` lookups on `ino`.
    pub fn forget(&self, ino: InodeNo, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut s = self.snapshots.write().unwrap();
        let generation = ino.0 >> 32;
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

    pub fn getattr(&self, ino: InodeNo) -> Result<Attr, FsError> {
        let (t, _) = self.resolve(ino)?;
        Ok(self.target_attr(&t))
    }

    /// `getattr` through an open handle (`fstat`): a file unlinked while open still answers,
    /// from its node, with `nlink` 0, as POSIX wants for unlink-after-open temporary files.
    pub fn getattr_open(&self, ino: InodeNo, fh: Option<Fh>) -> Result<Attr, FsError> {
        let resolved = self.resolve(ino);
        let open = fh.and_then(|fh| self.handles.lock().unwrap().get(&fh).cloned());
        if let Some(OpenFile::Node { node, .. }) = open.as_deref() {
            if node.ino == ino {
                let linked = matches!(&resolved, Ok((Target::File(n), _)) if Arc::ptr_eq(n, node));
                let mut attr = self.target_attr(&Target::File(node.clone()));
                if !linked {
                    attr.nlink = 0;
                }
                return Ok(attr);
            }
        }
        let (t, _) = resolved?;
        Ok(self.target_attr(&t))
    }

    /// Lists a directory from `offset` (0 = start; entries 0 and 1 are `.` and `..`).
    /// `add` returns `true` when the reply buffer is full. With `plus`, every entry other than
    /// `.` and `..` that `add` accepts counts as a lookup.
    pub fn readdir(
        &self,
        ino: InodeNo,
        offset: u64,
        plus: bool,
        mut add: impl FnMut(DirEntry<'_>) -> bool,
    ) -> Result<(), FsError> {
        let (target, path) = self.resolve(ino)?;
        let (snap, dir) = match &target {
            Target::Base { snap, node } if !self.overlay.read().unwrap().touches(&path) => {
                (snap.clone(), *node)
            }
            Target::File(_) => return Err(FsError::NotDir),
            _ => return self.readdir_merged(&target, &path, offset, plus, add),
        };
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

    /// A merged listing: snapshot children not hidden by the overlay, then overlay entries.
    fn readdir_merged(
        &self,
        target: &Target,
        path: &str,
        offset: u64,
        plus: bool,
        mut add: impl FnMut(DirEntry<'_>) -> bool,
    ) -> Result<(), FsError> {
        let list = self.list_dir(target, path)?;
        let dot = self.target_attr(target);
        let total = list.len() as u64 + 2;
        for i in offset..total {
            let (name, attr, base_snap) = match i {
                0 => (".", dot, None),
                1 => (
                    "..",
                    Attr {
                        ino: ROOT_INO,
                        ..dot
                    },
                    None,
                ),
                _ => {
                    let (name, t) = &list[(i - 2) as usize];
                    let snap = match t {
                        Target::Base { snap, .. } => Some(snap),
                        _ => None,
                    };
                    (name.as_str(), self.target_attr(t), snap)
                }
            };
            if add(DirEntry {
                next_offset: i + 1,
                name,
                attr,
            }) {
                break;
            }
            if let (true, Some(snap)) = (plus, base_snap) {
                snap.lookups.fetch_add(1, Ordering::AcqRel);
            }
        }
        Ok(())
    }

    /// The children of a directory through the overlay: snapshot children in name order (less
    /// what the overlay hides or replaces), then entries only the overlay has, in name order.
    pub(crate) fn list_dir(
        &self,
        target: &Target,
        path: &str,
    ) -> Result<Vec<(String, Target)>, FsError> {
        let ov = self.overlay.read().unwrap();
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        match target {
            Target::File(_) => return Err(FsError::NotDir),
            Target::Base { snap, node } => {
                if snap.namespace.info(*node).map(|i| i.kind) != Some(NodeKind::Dir) {
                    return Err(FsError::NotDir);
                }
                if !ov.hides_below(path) {
                    for &kid in snap.namespace.children(*node) {
                        let name = snap.namespace.name_of(kid);
                        seen.insert(name.to_string());
                        let t = match ov.get(&overlay::join(path, name)) {
                            Some(Entry::Whiteout) => continue,
                            Some(Entry::File(n)) => Target::File(n.clone()),
                            Some(Entry::Dir { ino, mtime_ms }) => Target::Dir {
                                ino: *ino,
                                mtime_ms: *mtime_ms,
                            },
                            None => Target::Base {
                                snap: snap.clone(),
                                node: kid,
                            },
                        };
                        out.push((name.to_string(), t));
                    }
                }
            }
            Target::Dir { .. } => {}
        }
        for (name, e) in ov.children(path) {
            if seen.contains(name) {
                continue;
            }
            let t = match e {
                Entry::Whiteout => continue,
                Entry::File(n) => Target::File(n.clone()),
                Entry::Dir { ino, mtime_ms } => Target::Dir {
                    ino: *ino,
                    mtime_ms: *mtime_ms,
                },
            };
            out.push((name.to_string(), t));
        }
        Ok(out)
    }

    /// Opens a file. Write access needs write-back; opening a snapshot file for writing gives
    /// it a node (its content is staged on the first write).
    pub fn open(&self, ino: InodeNo, write: bool) -> Result<Fh, FsError> {
        let (target, path) = self.resolve(ino)?;
        let open = match target {
            Target::Dir { .. } => return Err(FsError::IsDir),
            Target::Base { snap, node } => {
                let info = snap.namespace.info(node).expect("resolved");
                if info.kind == NodeKind::Dir {
                    return Err(FsError::IsDir);
                }
                if write {
                    let path = if path.is_empty() {
                        snap.namespace.key_of(node)
                    } else {
                        path
                    };
                    let node = self.node_for_base(&snap, node, path)?;
                    self.open_node(node, true)
                } else {
                    let object = snap.namespace.pin(node).expect("a resolved file");
                    let key = object.key.clone();
                    OpenFile::Base {
                        ino,
                        reader: self.readers.open(object),
                        key,
                    }
                }
            }
            Target::File(node) => {
                if write && self.write.is_none() {
                    return Err(FsError::ReadOnly);
                }
                self.open_node(node, write)
            }
        };
        let fh = self.new_fh();
        self.handles.lock().unwrap().insert(fh, Arc::new(open));
        Ok(fh)
    }

    fn open_node(&self, node: Arc<FileNode>, write: bool) -> OpenFile {
        node.opened(write);
        OpenFile::Node {
            node,
            write,
            reader: Mutex::new(None),
        }
    }

    fn handle(&self, fh: Fh) -> Result<Arc<OpenFile>, FsError> {
        self.handles
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle(fh))
    }

    /// Reads from an open handle. Short only at EOF.
    pub async fn read(&self, fh: Fh, offset: u64, len: u32) -> Result<Bytes, FsError> {
        let open = self.handle(fh)?;
        let (reader, key, ino) = match &*open {
            OpenFile::Base {
                reader, key, ino, ..
            } => (reader.as_ref(), key.clone(), *ino),
            OpenFile::Node { node, reader, .. } => {
                return self.read_node(node, reader, offset, len).await;
            }
        };
        match self.bounded(&key, reader.read(offset, len)).await {
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
                if matches!(e, crate::object::ReadError::Corrupt { .. }) {
                    self.mark_damaged(ino);
                }
                // The adapter logs the failure once, with this message (key and cause).
                tracing::debug!(key = %key, "read failed: {e}");
                Err(e.into())
            }
        }
    }

    /// `read`, failed with [`ReadError::TimedOut`](crate::object::ReadError::TimedOut) after
    /// the configured read bound.
    async fn bounded(
        &self,
        key: &str,
        read: impl std::future::Future<Output = Result<Bytes, crate::object::ReadError>>,
    ) -> Result<Bytes, crate::object::ReadError> {
        let after = self.config.read_timeout;
        tokio::time::timeout(after, read).await.unwrap_or_else(|_| {
            Err(crate::object::ReadError::TimedOut {
                key: key.to_string(),
                after,
            })
        })
    }

    /// Reads a file with a node: its staged bytes, else its current object.
    async fn read_node(
        &self,
        node: &Arc<FileNode>,
        cached: &NodeReader,
        offset: u64,
        len: u32,
    ) -> Result<Bytes, FsError> {
        let crate::write::Content {
            staged,
            size,
            key,
            remote,
        } = node.content();
        let bytes = if let Some(staged) = staged {
            if offset >= size {
                return Ok(Bytes::new());
            }
            let n = (size - offset).min(u64::from(len)) as usize;
            let mut buf = vec![0u8; n];
            let got = staged.read_at(&mut buf, offset).map_err(FsError::Io)?;
            buf.truncate(got);
            Bytes::from(buf)
        } else {
            let Some(remote) = remote else {
                return Ok(Bytes::new());
            };
            let reader = {
                let mut c = cached.lock().unwrap();
                match &*c {
                    Some((etag, r)) if *etag == remote.etag => r.clone(),
                    _ => {
                        let r: Arc<dyn ObjectReader> = Arc::from(self.readers.open(PinnedObject {
                            key: key.as_str().into(),
                            size: remote.size,
                            etag: remote.etag.clone().map(Into::into),
                        }));
                        *c = Some((remote.etag.clone(), r.clone()));
                        r
                    }
                }
            };
            self.bounded(&key, reader.read(offset, len)).await?
        };
        Metrics::add(&self.metrics.read_bytes, bytes.len() as u64);
        Metrics::add(&self.metrics.reads, 1);
        Ok(bytes)
    }

    /// Closes a handle. A handle that wrote is flushed again first (writes through a shared
    /// mapping can arrive after the last `flush`).
    pub async fn release(&self, fh: Fh) -> Result<(), FsError> {
        self.forget_mode(fh);
        let open = self.handles.lock().unwrap().remove(&fh);
        if let Some(open) = open {
            if let OpenFile::Node { node, write, .. } = &*open {
                // A writer leaves before its last flush: a change made meanwhile by another
                // operation (a chmod racing this release) either sees no writer and flushes
                // itself, or happened before this flush, which takes it in.
                let r = if *write {
                    node.writer_closed();
                    self.flush_node(node).await
                } else {
                    Ok(())
                };
                node.handle_closed();
                // A reader served from the staging file (passthrough) may have been what kept
                // an uploaded file's staging file.
                if let Some(wb) = &self.write {
                    wb.release_staging(node);
                }
                return r;
            }
        }
        Ok(())
    }

    /// Waits, at most `limit`, until readers' background work (disk-cache writes of fetched
    /// blocks) is done: call after the kernel unmount, before the runtime stops.
    pub async fn settle(&self, limit: Duration) {
        let until = std::time::Instant::now() + limit;
        while self.readers.busy() && std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn open_handles(&self) -> usize {
        self.handles.lock().unwrap().len()
    }

    pub fn stats(&self) -> FsStats {
        let s = self.current();
        FsStats {
            files: s.namespace.file_count(),
            bytes: s.namespace.total_bytes(),
            free: self.write.as_ref().map_or(0, |w| w.free_bytes()),
        }
    }
}

/// Finds a path in a snapshot, ignoring the overlay.
pub(crate) fn base_lookup_path(ns: &Namespace, path: &str) -> Option<u32> {
    let mut node = Namespace::ROOT;
    if path.is_empty() {
        return Some(node);
    }
    for seg in path.split('/') {
        node = ns.lookup(node, seg.as_bytes())?;
    }
    Some(node)
}

#[cfg(test)]
mod tests;

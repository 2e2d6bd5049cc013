//! Operations that change the mount: create, write, flush, fsync, setattr, mkdir, unlink,
//! rmdir, rename, and saving the namespace as a manifest.
//!
//! File content goes through [`crate::write`]; namespace changes are made in the bucket
//! first (a PUT, COPY or DELETE) and then in the overlay, so an error leaves the mount as the
//! bucket is. None of them is atomic in the bucket: a directory rename is one copy and one
//! delete per object (docs/SEMANTICS.md).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::overlay::{self, Entry};
use super::{base_lookup_path, now_ms, Access, Attr, Fs, OpenFile, Target, ROOT_INO};
use crate::attrs::{ms_since_epoch, Attrs, PERM_BITS, S_IFDIR, S_IFLNK, S_IFREG};
use crate::error::FsError;
use crate::ids::{Fh, InodeNo};
use crate::manifest::{self, Etag};
use crate::metrics::Metrics;
use crate::namespace::{NodeKind, NAME_MAX};
use crate::write::{FileNode, MetaChange, MetaDone, Remote, WriteBack};

/// What `setattr` asks to change.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub mtime: Option<SystemTime>,
    /// Kept in memory for the mount's life (see [`Fs::set_atime`]).
    pub atime: Option<SystemTime>,
    /// The handle, when the change comes through an open file (`ftruncate`).
    pub fh: Option<Fh>,
}

/// Who creates an entry, and with which mode: what the object's metadata keeps. The default
/// (no mode, no ids) keeps nothing, and the mount's defaults apply.
#[derive(Debug, Clone, Copy, Default)]
pub struct Owner {
    /// Permission bits, after the umask.
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Owner {
    /// What differs from the mount's defaults: only that is stored, so files written by the
    /// mount's own user with the default mode stay plain objects, and a later mount's
    /// `uid`/`gid`/`file_mode` options still apply to them.
    fn attrs(self, kind: u32, config: &super::FsConfig) -> Attrs {
        let default_perm = if kind == crate::attrs::S_IFDIR {
            config.dir_mode
        } else {
            config.file_mode
        };
        Attrs {
            mode: self
                .perm
                .map(|p| p & PERM_BITS)
                .filter(|&p| p != u32::from(default_perm))
                .map(|p| kind | p),
            uid: self.uid.filter(|&u| u != config.uid),
            gid: self.gid.filter(|&g| g != config.gid),
            ..Default::default()
        }
    }
}

/// Checks a new name: it must become a key that a later listing maps back to this name.
fn check_name(name: &[u8], at_root: bool) -> Result<&str, FsError> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    let name = std::str::from_utf8(name).map_err(|_| FsError::Invalid("name is not UTF-8"))?;
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(FsError::Invalid("not a file name"));
    }
    if name.chars().any(char::is_control) {
        return Err(FsError::Invalid("name has control characters"));
    }
    if at_root && name == manifest::RESERVED_DIR {
        return Err(FsError::NotPermitted("reserved for the manifest"));
    }
    Ok(name)
}

/// A node for a snapshot file or symlink: its object, attributes and snapshot inode.
fn base_node(snap: &super::Snapshot, node: u32, path: String) -> Arc<FileNode> {
    let info = snap.namespace.info(node).expect("resolved");
    FileNode::for_object(
        snap.ino(node),
        path,
        info.mtime_ms,
        Remote {
            size: info.size,
            etag: snap.namespace.etag_of(node),
        },
        snap.namespace.attrs(node).cloned().unwrap_or_default(),
    )
}

fn is_dir(t: &Target) -> bool {
    match t {
        Target::Dir { .. } => true,
        Target::File(_) => false,
        Target::Base { snap, node } => {
            snap.namespace.info(*node).map(|i| i.kind) == Some(NodeKind::Dir)
        }
    }
}

impl Fs {
    fn wb(&self) -> Result<&Arc<WriteBack>, FsError> {
        self.write.as_ref().ok_or(FsError::ReadOnly)
    }

    /// Like `resolve`, but always with the path (snapshot paths are computed lazily there).
    fn resolve_path(&self, ino: InodeNo) -> Result<(Target, String), FsError> {
        let (t, path) = self.resolve(ino)?;
        let path = match &t {
            Target::Base { snap, node } if path.is_empty() && ino != ROOT_INO => {
                snap.namespace.key_of(*node)
            }
            _ => path,
        };
        Ok((t, path))
    }

    fn has_base(&self, path: &str) -> bool {
        base_lookup_path(&self.current().namespace, path).is_some()
    }

    /// The node of a snapshot file, made on first need; it keeps the snapshot inode.
    pub(crate) fn node_for_base(
        &self,
        snap: &Arc<super::Snapshot>,
        node: u32,
        path: String,
    ) -> Result<Arc<FileNode>, FsError> {
        self.wb()?;
        let mut ov = self.overlay.write().unwrap();
        match ov.get(&path) {
            Some(Entry::File(n)) => return Ok(n.clone()),
            Some(_) => return Err(FsError::StaleInode(snap.ino(node))),
            None if ov.hides_below(overlay::parent_of(&path)) => {
                return Err(FsError::StaleInode(snap.ino(node)))
            }
            None => {}
        }
        let n = base_node(snap, node, path.clone());
        ov.put(path, Entry::File(n.clone()));
        Ok(n)
    }

    fn node_of(&self, t: Target, path: String) -> Result<Arc<FileNode>, FsError> {
        match t {
            Target::File(n) => Ok(n),
            Target::Base { snap, node } => self.node_for_base(&snap, node, path),
            Target::Dir { .. } => Err(FsError::IsDir),
        }
    }

    /// Fails with `ENAMETOOLONG` when the object of `path` would have a key longer than the
    /// store allows (a directory's marker key ends in `/`), instead of accepting a file whose
    /// upload can never succeed.
    fn check_key_len(&self, path: &str, dir: bool) -> Result<(), FsError> {
        let len = self.wb()?.source().full_key(path).len() + usize::from(dir);
        if len > crate::object::MAX_KEY_LEN {
            return Err(FsError::NameTooLong);
        }
        Ok(())
    }

    /// The path of a new entry `name` in `parent`: a valid name, in a directory, not taken,
    /// with a key the store accepts.
    fn new_path(&self, parent: InodeNo, name: &[u8], is_new_dir: bool) -> Result<String, FsError> {
        let name = check_name(name, parent == ROOT_INO)?;
        let (dir, dir_path) = self.resolve_path(parent)?;
        if !is_dir(&dir) {
            return Err(FsError::NotDir);
        }
        match self.child(&dir, &dir_path, name) {
            Ok(_) => Err(FsError::Exists),
            Err(FsError::NotFound) => {
                let path = overlay::join(&dir_path, name);
                self.check_key_len(&path, is_new_dir)?;
                Ok(path)
            }
            Err(e) => Err(e),
        }
    }

    /// Creates and opens a new, empty file. Returns its attributes and handle.
    pub async fn create(&self, parent: InodeNo, name: &[u8]) -> Result<(Attr, Fh), FsError> {
        self.create_as(parent, name, Owner::default()).await
    }

    /// [`Self::create`] with the creator's mode and ids, which the object keeps.
    pub async fn create_as(
        &self,
        parent: InodeNo,
        name: &[u8],
        owner: Owner,
    ) -> Result<(Attr, Fh), FsError> {
        let wb = self.wb()?;
        let path = self.new_path(parent, name, false)?;
        let node = FileNode::new_local(
            self.new_ino(),
            path.clone(),
            now_ms(),
            owner.attrs(S_IFREG, &self.config),
        );
        wb.stage(&node, true).await?;
        self.overlay
            .write()
            .unwrap()
            .put(path, Entry::File(node.clone()));
        self.touch_dir(parent);
        let attr = self.target_attr(&Target::File(node.clone()));
        let open = self.open_node(node, true);
        let fh = self.new_fh();
        self.handles.lock().unwrap().insert(fh, Arc::new(open));
        Ok((attr, fh))
    }

    /// The node of a handle opened for writing.
    fn writing_node(&self, fh: Fh) -> Result<Arc<FileNode>, FsError> {
        match &*self.handle(fh)? {
            OpenFile::Node {
                node, write: true, ..
            } => Ok(node.clone()),
            _ => Err(FsError::BadHandle(fh)),
        }
    }

    /// Writes through a handle opened for writing. The first write to an existing object
    /// stages it (downloads it) first.
    pub async fn write(&self, fh: Fh, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        let node = self.writing_node(fh)?;
        self.wb()?.write(&node, offset, data).await?;
        Metrics::add(&self.metrics.write_bytes, data.len() as u64);
        Ok(data.len() as u32)
    }

    /// `fallocate` on a handle that writes: mode 0 reserves the range in the staging file and
    /// extends the file to its end (with zeros), `FALLOC_FL_KEEP_SIZE` only reserves. Other
    /// modes (punching holes, zeroing, collapsing) are `EOPNOTSUPP`.
    pub async fn fallocate(&self, fh: Fh, offset: u64, len: u64, mode: i32) -> Result<(), FsError> {
        let node = self.writing_node(fh)?;
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return Err(FsError::Unsupported);
        }
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        if offset.checked_add(len).is_none() {
            return Err(FsError::Invalid("range past 2^64"));
        }
        Ok(self.wb()?.allocate(&node, offset, len, keep_size).await?)
    }

    /// `close()` of a descriptor: a handle that wrote makes the file durable locally (staging
    /// file and journal record fsynced). The upload is queued when the handle is released
    /// (the last descriptor of the open file is closed), so a close of a duplicate descriptor
    /// (`dup2` and close, as `dd` does) does not upload a version the writer is still writing.
    pub async fn flush(&self, fh: Fh) -> Result<(), FsError> {
        let open = self.handle(fh)?;
        match (&*open, &self.write) {
            (
                OpenFile::Node {
                    node, write: true, ..
                },
                Some(wb),
            ) => Ok(wb.flush_locked(node)?),
            _ => Ok(()),
        }
    }

    pub(crate) async fn flush_node(&self, node: &Arc<FileNode>) -> Result<(), FsError> {
        match &self.write {
            Some(wb) => Ok(wb.flush(node).await?),
            None => Ok(()),
        }
    }

    /// `fsync()`: waits until the file's content is in the bucket.
    pub async fn fsync(&self, fh: Fh) -> Result<(), FsError> {
        let open = self.handle(fh)?;
        match (&*open, &self.write) {
            (OpenFile::Node { node, .. }, Some(wb)) => Ok(wb.fsync(node).await?),
            _ => Ok(()),
        }
    }

    /// Opens `ino` for `access`, emptying it first when `truncate` (`O_TRUNC`, when the kernel
    /// passes it with the open instead of a separate truncate).
    pub async fn open_as(
        &self,
        ino: InodeNo,
        access: Access,
        truncate: bool,
    ) -> Result<Fh, FsError> {
        let fh = self.open(ino, access.writes() || truncate)?;
        if truncate {
            let node = match &*self.handle(fh)? {
                OpenFile::Node { node, .. } => node.clone(),
                OpenFile::Base { .. } => unreachable!("a handle that may write has a node"),
            };
            if let Err(e) = self.wb()?.truncate(&node, 0).await {
                let _ = self.release(fh).await;
                return Err(e.into());
            }
        }
        Ok(fh)
    }

    /// Changes size, mtime, atime, mode and ownership (see docs/SEMANTICS.md, "Modes, owners
    /// and symlinks").
    pub async fn setattr(&self, ino: InodeNo, a: SetAttr) -> Result<Attr, FsError> {
        let (target, path) = self.resolve_path(ino)?;
        let current = self.target_attr(&target);
        // Stored with the object when the mount can write; otherwise kept in memory only.
        let atime_changes = a.atime.is_some_and(|t| t != current.atime) && self.wb().is_ok();
        if let Some(t) = a.atime {
            self.set_atime(ino, t);
        }
        let perm_changes = a
            .mode
            .is_some_and(|m| (m & PERM_BITS) as u16 != current.perm);
        let owner_changes =
            a.uid.is_some_and(|u| u != current.uid) || a.gid.is_some_and(|g| g != current.gid);
        if a.size.is_none()
            && a.mtime.is_none()
            && !perm_changes
            && !owner_changes
            && !atime_changes
        {
            return Ok(self.target_attr(&target));
        }
        if is_dir(&target) {
            if a.size.is_some() {
                return Err(FsError::IsDir);
            }
            // Kept in memory, on the directory's marker object, and in the saved manifest.
            self.set_dir_attrs(ino, &a);
            let attr = self.target_attr(&target);
            let base_attrs = match &target {
                Target::Base { snap, node } => snap.namespace.attrs(*node).cloned(),
                _ => None,
            };
            if let (Ok(wb), false) = (self.wb(), path.is_empty()) {
                wb.mark_dirty()?;
                let meta = crate::object::UploadMeta {
                    mtime_ms: Some(ms_since_epoch(attr.mtime)),
                    attrs: Attrs {
                        mode: Some(S_IFDIR | u32::from(attr.perm)),
                        uid: Some(attr.uid).filter(|&u| u != self.config.uid),
                        gid: Some(attr.gid).filter(|&g| g != self.config.gid),
                        target: None,
                        atime_ms: self.atime(ino, base_attrs.as_ref()).map(ms_since_epoch),
                    },
                };
                wb.source().marker_with_meta(&path, &meta).await?;
                Metrics::add(&self.metrics.namespace_changes, 1);
            }
            return Ok(attr);
        }
        let wb = self.wb()?.clone();
        let node = self.node_of(target, path)?;
        if let Some(size) = a.size {
            wb.truncate(&node, size).await?;
            if a.fh.is_none() && !node.has_writers() {
                self.flush_node(&node).await?;
            }
        }
        if a.mtime.is_some() || perm_changes || owner_changes || atime_changes {
            wb.mark_dirty()?;
            let change = MetaChange {
                mtime_ms: a.mtime.map(ms_since_epoch),
                atime_ms: a.atime.filter(|_| atime_changes).map(ms_since_epoch),
                perm: a.mode.filter(|_| perm_changes),
                uid: a.uid.filter(|_| owner_changes),
                gid: a.gid.filter(|_| owner_changes),
            };
            match wb.change_meta(&node, change) {
                MetaDone::Flush => self.flush_node(&node).await?,
                MetaDone::AtRelease => {}
                MetaDone::Replace => wb.replace_metadata(&node).await?,
            }
            Metrics::add(&self.metrics.namespace_changes, 1);
        }
        Ok(self.target_attr(&Target::File(node)))
    }

    /// Makes a symlink `name` in `parent` pointing at `target`: an object whose body is the
    /// target, with a symlink mode (the s3fs encoding), uploaded as a file is.
    pub async fn symlink(
        &self,
        parent: InodeNo,
        name: &[u8],
        target: &[u8],
        owner: Owner,
    ) -> Result<Attr, FsError> {
        if target.is_empty() {
            return Err(FsError::Invalid("an empty symlink target"));
        }
        if target.len() > crate::attrs::MAX_TARGET {
            return Err(FsError::NameTooLong);
        }
        let wb = self.wb()?;
        let path = self.new_path(parent, name, false)?;
        let attrs = Attrs {
            mode: Some(S_IFLNK | 0o777),
            target: Some(target.into()),
            ..owner.attrs(S_IFLNK, &self.config)
        };
        let node = FileNode::new_local(self.new_ino(), path.clone(), now_ms(), attrs);
        wb.write_symlink(&node, target).await?;
        self.overlay
            .write()
            .unwrap()
            .put(path, Entry::File(node.clone()));
        self.touch_dir(parent);
        self.flush_node(&node).await?;
        Metrics::add(&self.metrics.namespace_changes, 1);
        Ok(self.target_attr(&Target::File(node)))
    }

    /// A symlink's target, from the manifest or the node: no request.
    pub fn readlink(&self, ino: InodeNo) -> Result<Vec<u8>, FsError> {
        let (target, _) = self.resolve(ino)?;
        match target {
            Target::Base { snap, node } => snap
                .namespace
                .link_target(node)
                .map(<[u8]>::to_vec)
                .ok_or(FsError::Invalid("not a symlink")),
            Target::File(n) => {
                let attrs = n.attrs();
                match (&attrs.target, attrs.mode) {
                    (Some(t), Some(m)) if m & crate::attrs::S_IFMT == S_IFLNK => Ok(t.to_vec()),
                    _ => Err(FsError::Invalid("not a symlink")),
                }
            }
            Target::Dir { .. } => Err(FsError::Invalid("not a symlink")),
        }
    }

    /// Makes a directory: an empty marker object `name/`.
    pub async fn mkdir(&self, parent: InodeNo, name: &[u8]) -> Result<Attr, FsError> {
        self.mkdir_as(parent, name, Owner::default()).await
    }

    /// [`Self::mkdir`] with the creator's mode and ids: its marker object carries what differs
    /// from the mount's defaults.
    pub async fn mkdir_as(
        &self,
        parent: InodeNo,
        name: &[u8],
        owner: Owner,
    ) -> Result<Attr, FsError> {
        let wb = self.wb()?;
        let path = self.new_path(parent, name, true)?;
        wb.mark_dirty()?;
        let attrs = owner.attrs(S_IFDIR, &self.config);
        if attrs.is_empty() {
            wb.source().marker(&path, true).await?;
        } else {
            let meta = crate::object::UploadMeta {
                mtime_ms: None,
                attrs: attrs.clone(),
            };
            wb.source().marker_with_meta(&path, &meta).await?;
        }
        let t = Target::Dir {
            ino: self.new_ino(),
            mtime_ms: now_ms(),
        };
        let Target::Dir { ino, mtime_ms } = t else {
            unreachable!()
        };
        if !attrs.is_empty() {
            self.set_dir_attrs(
                ino,
                &SetAttr {
                    mode: attrs.mode,
                    uid: attrs.uid,
                    gid: attrs.gid,
                    ..Default::default()
                },
            );
        }
        self.overlay
            .write()
            .unwrap()
            .put(path, Entry::Dir { ino, mtime_ms });
        self.touch_dir(parent);
        Metrics::add(&self.metrics.namespace_changes, 1);
        Ok(self.target_attr(&t))
    }

    /// Removes a file: its object, and any upload of it that is pending.
    pub async fn unlink(&self, parent: InodeNo, name: &[u8]) -> Result<(), FsError> {
        let wb = self.wb()?;
        let (dir, dir_path) = self.resolve_path(parent)?;
        let name = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
        let (t, path) = self.child(&dir, &dir_path, name)?;
        if is_dir(&t) {
            return Err(FsError::IsDir);
        }
        wb.mark_dirty()?;
        match t {
            Target::File(node) => {
                let _g = node.lock_commit().await;
                // A file made here and never uploaded has nothing in the bucket to delete.
                if !node.is_absent() {
                    wb.source().delete(&path).await?;
                }
                wb.discard(&node)?;
            }
            _ => wb.source().delete(&path).await?,
        }
        let whiteout = self.has_base(&path);
        self.overlay.write().unwrap().remove(&path, whiteout, false);
        self.touch_dir(parent);
        Metrics::add(&self.metrics.namespace_changes, 1);
        Ok(())
    }

    /// Removes an empty directory and its marker.
    pub async fn rmdir(&self, parent: InodeNo, name: &[u8]) -> Result<(), FsError> {
        let wb = self.wb()?;
        let (dir, dir_path) = self.resolve_path(parent)?;
        let name = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
        let (t, path) = self.child(&dir, &dir_path, name)?;
        if !is_dir(&t) {
            return Err(FsError::NotDir);
        }
        if !self.list_dir(&t, &path)?.is_empty() {
            return Err(FsError::NotEmpty);
        }
        wb.mark_dirty()?;
        wb.source().marker(&path, false).await?;
        let whiteout = self.has_base(&path);
        self.overlay.write().unwrap().remove(&path, whiteout, true);
        self.touch_dir(parent);
        Metrics::add(&self.metrics.namespace_changes, 1);
        Ok(())
    }

    /// Renames a file (copy, then delete) or a directory (the same for every object below
    /// it, up to the configured limit, else `EXDEV`). Not atomic.
    pub async fn rename(
        &self,
        parent: InodeNo,
        name: &[u8],
        new_parent: InodeNo,
        new_name: &[u8],
        no_replace: bool,
    ) -> Result<(), FsError> {
        let wb = self.wb()?.clone();
        let new_name = check_name(new_name, new_parent == ROOT_INO)?;
        let name = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
        let (sdir, sdir_path) = self.resolve_path(parent)?;
        let (src, spath) = self.child(&sdir, &sdir_path, name)?;
        let (ddir, ddir_path) = self.resolve_path(new_parent)?;
        if !is_dir(&ddir) {
            return Err(FsError::NotDir);
        }
        let dpath = overlay::join(&ddir_path, new_name);
        if spath == dpath {
            return Ok(());
        }
        let dst = match self.child(&ddir, &ddir_path, new_name) {
            Ok((t, _)) => Some(t),
            Err(FsError::NotFound) => None,
            Err(e) => return Err(e),
        };
        let src_dir = is_dir(&src);
        self.check_key_len(&dpath, src_dir)?;
        if let Some(d) = &dst {
            if no_replace {
                return Err(FsError::Exists);
            }
            match (src_dir, is_dir(d)) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if !self.list_dir(d, &dpath)?.is_empty() => {
                    return Err(FsError::NotEmpty)
                }
                _ => {}
            }
        }
        if src_dir && dpath.starts_with(&format!("{spath}/")) {
            return Err(FsError::Invalid("a directory cannot move into itself"));
        }
        wb.mark_dirty()?;
        Metrics::add(&self.metrics.namespace_changes, 1);
        self.touch_dir(parent);
        self.touch_dir(new_parent);
        if src_dir {
            self.rename_dir(&wb, src, &spath, dst, &dpath).await
        } else {
            if let Some(Target::File(d)) = &dst {
                let _g = d.lock_commit().await;
                wb.discard(d)?;
            }
            self.rename_file(&wb, src, &spath, &dpath).await
        }
    }

    async fn rename_file(
        &self,
        wb: &Arc<WriteBack>,
        src: Target,
        spath: &str,
        dpath: &str,
    ) -> Result<(), FsError> {
        let node = match src {
            Target::File(n) => n,
            Target::Base { snap, node } => base_node(&snap, node, spath.to_string()),
            Target::Dir { .. } => return Err(FsError::IsDir),
        };
        wb.rename(&node, spath, dpath).await?;
        let whiteout = self.has_base(spath);
        let mut ov = self.overlay.write().unwrap();
        ov.remove(spath, whiteout, false);
        ov.put(dpath.to_string(), Entry::File(node));
        Ok(())
    }

    async fn rename_dir(
        &self,
        wb: &Arc<WriteBack>,
        src: Target,
        spath: &str,
        dst: Option<Target>,
        dpath: &str,
    ) -> Result<(), FsError> {
        // Everything below the source, depth first.
        let mut files = Vec::new();
        let mut dirs = vec![(String::new(), src)];
        let mut i = 0;
        while i < dirs.len() {
            let (rel, t) = dirs[i].clone();
            let full = overlay::join(spath, &rel);
            let full = if rel.is_empty() {
                spath.to_string()
            } else {
                full
            };
            for (name, child) in self.list_dir(&t, &full)? {
                let child_rel = overlay::join(&rel, &name);
                if is_dir(&child) {
                    dirs.push((child_rel, child));
                } else {
                    files.push((child_rel, child));
                }
            }
            i += 1;
            let limit = wb.config().rename_dir_limit;
            if files.len() + dirs.len() > limit {
                return Err(FsError::CrossDevice { limit });
            }
        }
        let source = wb.source();
        if dst.is_some() {
            source.marker(dpath, false).await?;
            let whiteout = self.has_base(dpath);
            self.overlay.write().unwrap().remove(dpath, whiteout, true);
        }
        let under = |base: &str, rel: &str| {
            if rel.is_empty() {
                base.to_string()
            } else {
                format!("{base}/{rel}")
            }
        };
        for (rel, _) in &dirs {
            source.marker(&under(dpath, rel), true).await?;
        }
        for (rel, t) in files {
            self.rename_file(wb, t, &under(spath, &rel), &under(dpath, &rel))
                .await?;
        }
        for (rel, _) in &dirs {
            source.marker(&under(spath, rel), false).await?;
        }
        let whiteout = self.has_base(spath);
        let mut ov = self.overlay.write().unwrap();
        // Files were moved one by one; what is left below the source are whiteouts.
        ov.remove(spath, whiteout, true);
        for (rel, t) in dirs {
            let (ino, mtime_ms) = match t {
                Target::Dir { ino, mtime_ms } => (ino, mtime_ms),
                Target::Base { snap, node } => (
                    snap.ino(node),
                    snap.namespace.info(node).map_or(0, |i| i.mtime_ms),
                ),
                Target::File(_) => unreachable!("only directories"),
            };
            ov.put(under(dpath, &rel), Entry::Dir { ino, mtime_ms });
        }
        Ok(())
    }

    /// The namespace as the bucket has it now: the snapshot, less what this mount removed,
    /// plus what it uploaded. Files whose upload is still pending are left out (the journal
    /// has them), or appear as the object the bucket still holds under their key.
    pub fn merged_entries(&self) -> Vec<manifest::Entry> {
        let snap = self.current();
        let ns = &snap.namespace;
        let ov = self.overlay.read().unwrap();
        let mut out = Vec::new();
        for id in 1..ns.len() as u32 {
            let Some(info) = ns.info(id) else { continue };
            let path = ns.key_of(id);
            if ov.get(&path).is_some() || ov.hides_below(overlay::parent_of(&path)) {
                continue;
            }
            let (attrs, dir_mtime) = if info.kind == NodeKind::Dir {
                self.dir_manifest_attrs(snap.ino(id), ns.attrs(id))
            } else {
                (ns.attrs(id).cloned().unwrap_or_default(), None)
            };
            match info.kind {
                NodeKind::File | NodeKind::Symlink => out.push(manifest::Entry {
                    key: path.into_bytes().into(),
                    size: info.size,
                    mtime_ms: info.mtime_ms,
                    etag: Etag::parse(ns.etag_of(id).as_deref()),
                    attrs,
                }),
                NodeKind::Dir if ns.children(id).is_empty() || !attrs.is_empty() => {
                    out.push(manifest::Entry {
                        key: format!("{path}/").into_bytes().into(),
                        size: 0,
                        mtime_ms: dir_mtime.unwrap_or(info.mtime_ms),
                        etag: Etag::None,
                        attrs,
                    })
                }
                NodeKind::Dir => {}
            }
        }
        for (path, e) in ov.entries() {
            if ov.whiteout_above(path) {
                continue;
            }
            match e {
                Entry::Whiteout => {}
                Entry::Dir { ino, mtime_ms } => {
                    let (attrs, dir_mtime) = self.dir_manifest_attrs(*ino, None);
                    out.push(manifest::Entry {
                        key: format!("{path}/").into_bytes().into(),
                        size: 0,
                        mtime_ms: dir_mtime.unwrap_or(*mtime_ms),
                        etag: Etag::None,
                        attrs,
                    })
                }
                Entry::File(n) => out.extend(n.manifest_entry(path)),
            }
        }
        out.sort_by(|a, b| manifest::tree_cmp(&a.key, &b.key));
        out
    }

    /// Stores the merged namespace as the prefix's manifest.
    pub async fn save_manifest(&self) -> Result<usize, FsError> {
        let wb = self.wb()?;
        let entries = self.merged_entries();
        let header = manifest::Header {
            source: wb.source().source().display_root(),
            built_at_ms: now_ms(),
            object_count: entries.len() as u64,
            total_bytes: entries.iter().map(|e| e.size).sum(),
            list_requests: 0,
            builder: format!("pai-mount {} (mount)", env!("CARGO_PKG_VERSION")),
        };
        let bytes = Bytes::from(manifest::encode(&header, &entries));
        let len = bytes.len();
        wb.source().put(manifest::MANIFEST_KEY, bytes).await?;
        Ok(len)
    }
}

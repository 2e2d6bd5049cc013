//! The fuser adapter: converts, calls the core, replies. The only module that knows fuser.
//!
//! Metadata callbacks answer inline (the core serves them from memory). Reads and `fsync` are
//! spawned on the tokio runtime and reply from there, so a slow GET or upload never holds a
//! FUSE worker thread. Other changes (`write`, `create`, `rename`, ...) run on the worker
//! thread with `block_on`: they touch local disk or make one request per object, and `write`
//! avoids copying its data.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use fuser::{
    BackingId, Config, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::error::FsError;
use crate::fs::{Access, Attr, Fs, IoMode, Owner, SetAttr};
use crate::ids::{Fh, InodeNo};
use crate::metrics::FuseOp;
use crate::namespace::NodeKind;
use crate::write::Staged;

/// The kernel may read this much ahead of a sequential reader (bytes).
const MAX_READAHEAD: u32 = 1 << 20;
/// Requests the kernel may queue in the background (reads included).
const MAX_BACKGROUND: u16 = 64;

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Let users other than the mounting one access the mount.
    pub allow_other: bool,
    /// FUSE worker threads.
    pub threads: usize,
    /// Shown as the mount's source in /proc/mounts.
    pub fs_name: String,
    /// Mount read-only (`ro` in /proc/mounts); the core refuses changes either way when it has
    /// no write-back.
    pub read_only: bool,
    /// Let the kernel read and write staging files directly (FUSE passthrough) when it can.
    pub passthrough: bool,
    /// Readdirplus in the kernel's "auto" mode: attributes with a listing's first batch and
    /// when entries are being stat'ed (`ls -l`), plain names otherwise, which makes `ls -f`
    /// cheaper in the kernel but costs a lookup round trip per entry for a `stat` after a
    /// plain listing (`os.listdir`, then `os.stat` of each name). Off (the default): every
    /// listing carries attributes.
    pub readdirplus_auto: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            allow_other: false,
            threads: 16,
            passthrough: true,
            fs_name: "pai-mount".into(),
            read_only: true,
            readdirplus_auto: false,
        }
    }
}

/// The fuser `Filesystem` over our core.
pub struct FuseAdapter {
    fs: Arc<Fs>,
    rt: Handle,
    passthrough: bool,
    readdirplus_auto: bool,
    backing: Mutex<Backing>,
}

/// Staging files registered with the kernel for passthrough: one registration per inode, shared
/// by all its passthrough handles (the kernel refuses a second file for the same inode), and
/// dropped with the last of them.
#[derive(Default)]
struct Backing {
    by_ino: HashMap<InodeNo, (BackingId, u32)>,
    by_fh: HashMap<Fh, InodeNo>,
}

impl FuseAdapter {
    /// `passthrough`: offer the kernel staging files to read and write itself, if it can.
    /// `readdirplus_auto`: see [`MountOptions::readdirplus_auto`].
    pub fn new(fs: Arc<Fs>, rt: Handle, passthrough: bool, readdirplus_auto: bool) -> Self {
        Self {
            fs,
            rt,
            passthrough,
            readdirplus_auto,
            backing: Mutex::default(),
        }
    }

    /// Chooses the I/O mode of a new handle and, for passthrough, the kernel's registration of
    /// its staging file (made with `register`, the reply's own ioctl).
    fn open_mode(
        &self,
        fh: Fh,
        access: Access,
        register: impl FnOnce(&Staged) -> std::io::Result<BackingId>,
    ) -> Result<Opened<'_>, FsError> {
        let no_flush = no_flush(access);
        match self.fs.io_mode(fh, access)? {
            IoMode::Cached { keep_cache } => Ok(Opened::Flags(
                no_flush
                    | if keep_cache {
                        // The content of an unchanged file's inode never changes (a changed
                        // object gets a new inode at the next refresh), so the kernel may keep
                        // its page cache across opens. Files written in this mount are re-read
                        // on open.
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    },
            )),
            IoMode::Direct => Ok(Opened::Flags(no_flush | FopenFlags::FOPEN_DIRECT_IO)),
            IoMode::Passthrough { staged, ino } => {
                let mut backing = self.backing.lock().unwrap();
                if let std::collections::hash_map::Entry::Vacant(slot) = backing.by_ino.entry(ino) {
                    match register(&staged) {
                        Ok(id) => {
                            slot.insert((id, 0));
                        }
                        Err(e) => {
                            drop(backing);
                            tracing::warn!("the kernel refused a staging file for passthrough ({e}); files written in this mount go through the daemon");
                            self.fs.passthrough_refused(fh);
                            return Ok(Opened::Flags(FopenFlags::empty()));
                        }
                    }
                }
                backing.by_ino.get_mut(&ino).expect("registered").1 += 1;
                backing.by_fh.insert(fh, ino);
                Ok(Opened::Passthrough(backing, ino))
            }
        }
    }

    /// Drops a released handle's share of its inode's passthrough registration.
    /// Runs `fut` on the runtime (it may wait on the network) and replies with its result; the
    /// operation is timed until the reply.
    fn spawn_empty(
        &self,
        op: FuseOp,
        ino: InodeNo,
        reply: ReplyEmpty,
        fut: impl std::future::Future<Output = Result<(), FsError>> + Send + 'static,
    ) {
        let timer = self.fs.metrics().time(op);
        self.rt.spawn(async move {
            let r = fut.await;
            reply_empty(reply, op.name(), ino, r);
            drop(timer);
        });
    }

    fn drop_backing(&self, fh: Fh) {
        let mut backing = self.backing.lock().unwrap();
        let Some(ino) = backing.by_fh.remove(&fh) else {
            return;
        };
        if let Some((_, n)) = backing.by_ino.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                backing.by_ino.remove(&ino);
            }
        }
    }
}

/// How to answer an open: plain flags, or passthrough with the inode's registration (held
/// under its lock until the reply is sent, so a release cannot drop it first).
enum Opened<'a> {
    Flags(FopenFlags),
    Passthrough(std::sync::MutexGuard<'a, Backing>, InodeNo),
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn log_failure(op: &str, ino: InodeNo, e: &FsError) {
    if !e.is_quiet() {
        tracing::warn!(op, ino = ino.0, "{e}");
    }
}

/// Replies to an operation that returns nothing: ok, or its errno (the failure logged).
fn reply_empty(reply: ReplyEmpty, op: &str, ino: InodeNo, r: Result<(), FsError>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => {
            log_failure(op, ino, &e);
            reply.error(errno(&e))
        }
    }
}

fn time_or_now(t: TimeOrNow) -> std::time::SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => std::time::SystemTime::now(),
    }
}

fn to_fuse(a: &Attr) -> FileAttr {
    let kind = file_type(a.kind);
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind,
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn file_type(k: NodeKind) -> FileType {
    match k {
        NodeKind::Dir => FileType::Directory,
        NodeKind::File => FileType::RegularFile,
        NodeKind::Symlink => FileType::Symlink,
    }
}

impl fuser::Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Parallel lookups in one directory; listings carry attributes (readdirplus), in
        // "auto" mode only if asked (see `MountOptions::readdirplus_auto`).
        let mut flags = vec![
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_CACHE_SYMLINKS,
        ];
        if self.readdirplus_auto {
            flags.push(InitFlags::FUSE_READDIRPLUS_AUTO);
        }
        for flag in flags {
            if config.add_capabilities(flag).is_err() {
                tracing::info!(?flag, "kernel does not offer this FUSE capability");
            }
        }
        let _ = config.set_max_readahead(MAX_READAHEAD);
        let _ = config.set_max_background(MAX_BACKGROUND);
        // O_TRUNC with the open: an overwritten file is emptied before the reply, so its handle
        // can be a passthrough one.
        if config
            .add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC)
            .is_err()
        {
            tracing::info!("kernel does not offer FUSE_ATOMIC_O_TRUNC");
        }
        // Passthrough (Linux 6.9+): the kernel reads and writes staging files itself. Stack
        // depth 2 lets staging files live on overlayfs (a container's root).
        if self.passthrough {
            let granted = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(2).is_ok();
            if granted {
                self.fs.enable_passthrough(true);
                tracing::debug!(
                    enabled = self.fs.passthrough_enabled(),
                    "FUSE passthrough offered by the kernel"
                );
            } else {
                tracing::info!(
                    "kernel does not offer FUSE passthrough; written files go through the daemon"
                );
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _timer = self.fs.metrics().time(FuseOp::Lookup);
        match self.fs.lookup(InodeNo(parent.0), name.as_bytes()) {
            Ok(a) => reply.entry(&self.fs.config().ttl, &to_fuse(&a), Generation(0)),
            // A negative entry (node id 0) that the kernel keeps as long as a positive one:
            // Python's imports, shells' PATH searches and git probe many names that do not
            // exist. Names made through this mount replace it at once; the tree changes
            // otherwise only at a refresh, which caps the TTL.
            Err(FsError::NotFound) => {
                let mut none = to_fuse(&Attr::negative());
                none.ino = INodeNo(0);
                reply.entry(&self.fs.config().ttl, &none, Generation(0))
            }
            Err(e) => {
                log_failure("lookup", InodeNo(parent.0), &e);
                reply.error(errno(&e))
            }
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(InodeNo(ino.0), nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _timer = self.fs.metrics().time(FuseOp::Getattr);
        match self.fs.getattr_open(InodeNo(ino.0), fh.map(|f| Fh(f.0))) {
            Ok(a) => reply.attr(&self.fs.config().ttl, &to_fuse(&a)),
            Err(e) => {
                log_failure("getattr", InodeNo(ino.0), &e);
                reply.error(errno(&e))
            }
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _timer = self.fs.metrics().time(FuseOp::Open);
        let access = Access::from_flags(flags.0);
        // O_TRUNC arrives here only with FUSE_ATOMIC_O_TRUNC; otherwise as a setattr after.
        let truncate = flags.0 & libc::O_TRUNC != 0;
        let opened = match self
            .rt
            .block_on(self.fs.open_as(InodeNo(ino.0), access, truncate))
        {
            Ok(fh) => fh,
            Err(e) => {
                log_failure("open", InodeNo(ino.0), &e);
                return reply.error(errno(&e));
            }
        };
        match self.open_mode(opened, access, |s| reply.open_backing(s)) {
            Ok(Opened::Flags(f)) => reply.opened(FileHandle(opened.0), f),
            Ok(Opened::Passthrough(b, ino)) => {
                reply.opened_passthrough(FileHandle(opened.0), no_flush(access), &b.by_ino[&ino].0)
            }
            Err(e) => {
                log_failure("open", InodeNo(ino.0), &e);
                reply.error(errno(&e))
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        let timer = self.fs.metrics().time(FuseOp::Read);
        let mut read = Box::pin(async move {
            let _timer = timer;
            match fs.read(Fh(fh.0), offset, size).await {
                Ok(bytes) => reply.data(&bytes),
                Err(e) => {
                    tracing::error!(ino = ino.0, offset, size, "read failed: {e}");
                    reply.error(errno(&e))
                }
            }
        });
        // Most sequential reads find their blocks already fetched: answer those on this
        // thread, and hand only the ones that must wait to the runtime (a thread hop and two
        // wakeups less per request). A future may be polled with one waker and then another;
        // the runtime's first poll registers its own.
        let _rt = self.rt.enter();
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        if std::future::Future::poll(read.as_mut(), &mut cx).is_pending() {
            self.rt.spawn(read);
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.drop_backing(Fh(fh.0));
        let fs = self.fs.clone();
        self.spawn_empty(FuseOp::Release, InodeNo(ino.0), reply, async move {
            fs.release(Fh(fh.0)).await
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _timer = self.fs.metrics().time(FuseOp::Flush);
        reply_empty(
            reply,
            "flush",
            InodeNo(ino.0),
            self.rt.block_on(self.fs.flush(Fh(fh.0))),
        );
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.spawn_empty(FuseOp::Fsync, InodeNo(ino.0), reply, async move {
            fs.fsync(Fh(fh.0)).await
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.spawn_empty(FuseOp::Fallocate, InodeNo(ino.0), reply, async move {
            fs.fallocate(Fh(fh.0), offset, length, mode).await
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _timer = self.fs.metrics().time(FuseOp::Write);
        match self.rt.block_on(self.fs.write(Fh(fh.0), offset, data)) {
            Ok(n) => reply.written(n),
            Err(e) => {
                log_failure("write", InodeNo(ino.0), &e);
                reply.error(errno(&e))
            }
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _timer = self.fs.metrics().time(FuseOp::Opendir);
        // Listings come from memory; a writable mount lets the kernel cache them only until
        // the directory changes (the kernel drops the cache on create, unlink and rename).
        match self.fs.getattr(InodeNo(ino.0)) {
            Ok(a) if a.kind == NodeKind::Dir => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _timer = self.fs.metrics().time(FuseOp::Readdir);
        let r = self.fs.readdir(InodeNo(ino.0), offset, false, |e| {
            reply.add(
                INodeNo(e.attr.ino.0),
                e.next_offset,
                file_type(e.attr.kind),
                e.name,
            )
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _timer = self.fs.metrics().time(FuseOp::Readdir);
        let ttl = self.fs.config().ttl;
        let r = self.fs.readdir(InodeNo(ino.0), offset, true, |e| {
            reply.add(
                INodeNo(e.attr.ino.0),
                e.next_offset,
                e.name,
                &ttl,
                &to_fuse(&e.attr),
                Generation(0),
            )
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _timer = self.fs.metrics().time(FuseOp::Statfs);
        let s = self.fs.stats();
        let free = s.free / 4096;
        let blocks = s.bytes.div_ceil(4096) + free;
        reply.statfs(blocks, free, free, s.files, 0, 4096, 255, 4096);
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _timer = self.fs.metrics().time(FuseOp::Setattr);
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            mtime: mtime.map(time_or_now),
            atime: atime.map(time_or_now),
            fh: fh.map(|f| Fh(f.0)),
        };
        match self.rt.block_on(self.fs.setattr(InodeNo(ino.0), change)) {
            Ok(a) => reply.attr(&self.fs.config().ttl, &to_fuse(&a)),
            Err(e) => {
                log_failure("setattr", InodeNo(ino.0), &e);
                reply.error(errno(&e))
            }
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _timer = self.fs.metrics().time(FuseOp::Mkdir);
        let owner = Owner {
            perm: Some(mode & !umask),
            uid: Some(req.uid()),
            gid: Some(req.gid()),
        };
        match self
            .rt
            .block_on(self.fs.mkdir_as(InodeNo(parent.0), name.as_bytes(), owner))
        {
            Ok(a) => reply.entry(&self.fs.config().ttl, &to_fuse(&a), Generation(0)),
            Err(e) => {
                log_failure("mkdir", InodeNo(parent.0), &e);
                reply.error(errno(&e))
            }
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _timer = self.fs.metrics().time(FuseOp::Unlink);
        let r = self
            .rt
            .block_on(self.fs.unlink(InodeNo(parent.0), name.as_bytes()));
        reply_empty(reply, "unlink", InodeNo(parent.0), r);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _timer = self.fs.metrics().time(FuseOp::Rmdir);
        let r = self
            .rt
            .block_on(self.fs.rmdir(InodeNo(parent.0), name.as_bytes()));
        reply_empty(reply, "rmdir", InodeNo(parent.0), r);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _timer = self.fs.metrics().time(FuseOp::Symlink);
        let owner = Owner {
            perm: None,
            uid: Some(req.uid()),
            gid: Some(req.gid()),
        };
        let made = self.rt.block_on(self.fs.symlink(
            InodeNo(parent.0),
            link_name.as_bytes(),
            target.as_os_str().as_bytes(),
            owner,
        ));
        match made {
            Ok(a) => reply.entry(&self.fs.config().ttl, &to_fuse(&a), Generation(0)),
            Err(e) => {
                log_failure("symlink", InodeNo(parent.0), &e);
                reply.error(errno(&e))
            }
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: fuser::ReplyData) {
        let _timer = self.fs.metrics().time(FuseOp::Readlink);
        match self.fs.readlink(InodeNo(ino.0)) {
            Ok(t) => reply.data(&t),
            Err(e) => {
                log_failure("readlink", InodeNo(ino.0), &e);
                reply.error(errno(&e))
            }
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _timer = self.fs.metrics().time(FuseOp::Rename);
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let r = self.rt.block_on(self.fs.rename(
            InodeNo(parent.0),
            name.as_bytes(),
            InodeNo(newparent.0),
            newname.as_bytes(),
            no_replace,
        ));
        reply_empty(reply, "rename", InodeNo(parent.0), r);
    }

    // No ioctls: ENOTTY, as a regular file answers `isatty` (Python's `open` asks each time),
    // without a log line.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(errno(&FsError::NoIoctl));
    }

    // No extended attributes: ENOSYS tells the kernel once, and it stops asking.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        let _timer = self.fs.metrics().time(FuseOp::Create);
        let owner = Owner {
            perm: Some(mode & !umask),
            uid: Some(req.uid()),
            gid: Some(req.gid()),
        };
        let created =
            self.rt
                .block_on(self.fs.create_as(InodeNo(parent.0), name.as_bytes(), owner));
        let (a, fh) = match created {
            Ok(created) => created,
            Err(e) => {
                log_failure("create", InodeNo(parent.0), &e);
                return reply.error(errno(&e));
            }
        };
        let ttl = self.fs.config().ttl;
        let attr = to_fuse(&a);
        match self.open_mode(fh, Access::from_flags(flags), |s| reply.open_backing(s)) {
            Ok(Opened::Flags(f)) => reply.created(&ttl, &attr, Generation(0), FileHandle(fh.0), f),
            Ok(Opened::Passthrough(b, ino)) => reply.created_passthrough(
                &ttl,
                &attr,
                Generation(0),
                FileHandle(fh.0),
                FopenFlags::empty(),
                &b.by_ino[&ino].0,
            ),
            Err(e) => {
                log_failure("create", InodeNo(parent.0), &e);
                reply.error(errno(&e))
            }
        }
    }
}

/// `close()` of a handle that cannot write has nothing to flush: the kernel need not ask (one
/// round trip less per file a reader opens, and an `import` opens hundreds).
fn no_flush(access: Access) -> FopenFlags {
    if access.writes() {
        FopenFlags::empty()
    } else {
        FopenFlags::FOPEN_NOFLUSH
    }
}

/// Mounts `fs` at `mountpoint` and returns the session, not yet running.
pub fn mount(
    fs: Arc<Fs>,
    rt: Handle,
    mountpoint: &Path,
    options: &MountOptions,
) -> std::io::Result<fuser::Session<FuseAdapter>> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(options.fs_name.clone()),
        MountOption::Subtype("pai-mount".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
        MountOption::DefaultPermissions,
    ];
    if options.read_only {
        config.mount_options.push(MountOption::RO);
    }
    config.acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = true;
    let adapter = FuseAdapter::new(fs, rt, options.passthrough, options.readdirplus_auto);
    let session = fuser::Session::new(adapter, mountpoint, &config)?;
    // The kernel caps a FUSE mount's readahead at 128 KiB regardless of `max_readahead`;
    // raise it so sequential reads arrive as 1 MiB requests.
    let abs = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    match crate::mountpoint::set_read_ahead_kb(&abs, MAX_READAHEAD / 1024) {
        Ok(()) => tracing::debug!(kb = MAX_READAHEAD / 1024, "set the mount's kernel readahead"),
        Err(e) => tracing::info!(
            "kept the kernel's 128 KiB readahead for the mount ({e}); sequential reads arrive in 128 KiB requests"
        ),
    }
    Ok(session)
}

/// Runs a mounted session until it is unmounted (by `umount`, or by the returned unmounter).
pub fn run(session: fuser::Session<FuseAdapter>) -> std::io::Result<()> {
    session.run()
}

pub use fuser::SessionUnmounter;

/// A mounted session over [`FuseAdapter`].
pub type Session = fuser::Session<FuseAdapter>;

/// A handle that unmounts the session from another thread (signal handling).
pub fn unmounter(session: &mut fuser::Session<FuseAdapter>) -> SessionUnmounter {
    session.unmount_callable()
}

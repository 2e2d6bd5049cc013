//! How the kernel does I/O on each open handle: through its page cache and the daemon
//! (cached), straight on the staging file (passthrough), or through the daemon without the page
//! cache (direct).
//!
//! ## Passthrough
//! A file written in this mount has its whole content in a local staging file. The kernel can
//! read and write that file itself (FUSE passthrough, Linux 6.9+), so a checkpoint written
//! through the mount costs what a local write costs: no request per 1 MiB, no copy through the
//! daemon. The daemon then does not see those writes, so:
//! - when a handle that writes through passthrough opens, the staging file is marked (size, and
//!   an mtime sentinel, see `FileState::take_in_writes`); at `getattr`, flush, fsync, release, and before
//!   an upload commits, a staging file that moved off its mark is taken in: size and mtime read
//!   back, a new version (so an upload that read older bytes is never committed);
//! - only write-only handles (`O_WRONLY`) write through passthrough. A shared writable mapping
//!   needs a readable descriptor, and a mapping of a passthrough file maps the staging file itself
//!   and can outlive the release the daemon sees; with write-only handles no mapping can change
//!   the staging file behind the daemon's back;
//! - the staging file is neither dropped nor replaced while any passthrough handle is open;
//! - a file of at least 5 MiB that is opened for writing without being emptied (an append to a
//!   log, a small overwrite in place) is written through the daemon, not through passthrough,
//!   so that the daemon sees which ranges change and its upload sends only those (a patch of
//!   the object). New and truncated files, where everything changes anyway, are written
//!   through passthrough.
//!
//! ## The kernel's rule
//! An inode is in one mode at a time: while a passthrough handle is open, the kernel refuses
//! (with `EIO` to the caller) an open in cached mode, and the other way round. Direct handles
//! are allowed in either. So while an inode has passthrough handles, new read-only and
//! write-only handles are passthrough too (same staging file, same content) and read-write ones
//! are direct; while it has cached handles, new handles are cached. Counts are kept per inode;
//! they lag the kernel's (which drops a handle before the daemon sees its release), which only
//! ever makes the daemon choose cached mode when passthrough would have been allowed.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Fs, OpenFile};
use crate::error::FsError;
use crate::ids::{Fh, InodeNo};
use crate::write::{FileNode, Staged};

/// How an open file may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

impl Access {
    /// From `open(2)` flags.
    pub fn from_flags(flags: i32) -> Self {
        match flags & libc::O_ACCMODE {
            libc::O_RDONLY => Self::Read,
            libc::O_WRONLY => Self::Write,
            _ => Self::ReadWrite,
        }
    }

    pub fn writes(self) -> bool {
        self != Self::Read
    }
}

/// The I/O mode chosen for a handle.
#[derive(Debug)]
pub enum IoMode {
    /// Through the page cache and the daemon; `keep_cache` when the content under the inode
    /// cannot have changed since the kernel cached it.
    Cached { keep_cache: bool },
    /// The kernel reads and writes this staging file directly; all passthrough handles of inode
    /// `ino` share it.
    Passthrough { staged: Arc<Staged>, ino: InodeNo },
    /// Through the daemon, bypassing the page cache (a read-write handle of an inode in
    /// passthrough mode).
    Direct,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Cached,
    Passthrough,
    Direct,
}

#[derive(Default, Debug)]
struct Counts {
    cached: u32,
    passthrough: u32,
}

/// Handles' modes and the per-inode counts, under one lock.
#[derive(Default, Debug)]
pub(super) struct IoModes {
    /// fh -> (ino, kind, writes through passthrough).
    handles: HashMap<Fh, (InodeNo, Kind, bool)>,
    inodes: HashMap<InodeNo, Counts>,
    /// Inodes whose page cache may hold bytes that failed a checksum: their next open drops it.
    damaged: std::collections::HashSet<InodeNo>,
}

impl Fs {
    /// Allows passthrough handles (the FUSE adapter calls this once the kernel granted the
    /// capability). Ignored without write-back, and with `early_upload`, which must see every
    /// write.
    pub fn enable_passthrough(&self, on: bool) {
        let usable = self
            .write
            .as_ref()
            .is_some_and(|wb| !wb.config().early_upload);
        self.passthrough.store(on && usable, Ordering::Relaxed);
    }

    /// Records that a read of inode `ino` failed a checksum after some of its bytes reached the
    /// page cache.
    pub(super) fn mark_damaged(&self, ino: InodeNo) {
        self.io.lock().unwrap().damaged.insert(ino);
    }

    pub fn passthrough_enabled(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    /// Chooses the I/O mode of handle `fh` (just opened or created with `access`) and records
    /// it. Call once per handle, before replying to the kernel.
    pub fn io_mode(&self, fh: Fh, access: Access) -> Result<IoMode, FsError> {
        let open = self.handle(fh)?;
        let (ino, node): (InodeNo, Option<&Arc<FileNode>>) = match &*open {
            OpenFile::Base { ino, .. } => (*ino, None),
            OpenFile::Node { node, .. } => (node.ino, Some(node)),
        };
        let mut io = self.io.lock().unwrap();
        let counts = io.inodes.entry(ino).or_default();
        // Lock order: io modes, then the node's state.
        // `patchable`: large enough for its uploads to reuse the object, and not just emptied
        // (a new file, or `O_TRUNC` as a checkpoint save rewrites one): writes through the
        // daemon keep track of what changes from here on.
        let (staged, patchable) = node.map_or((None, false), |n| n.io_view());
        // A writer of a file that can still be uploaded as a patch (see the module docs)
        // writes through the daemon, which sees what it changes.
        let daemon_writes = access.writes() && patchable;
        let kind = if counts.passthrough > 0 {
            if access == Access::ReadWrite || daemon_writes {
                Kind::Direct
            } else {
                Kind::Passthrough
            }
        } else if counts.cached == 0
            && access != Access::ReadWrite
            && !daemon_writes
            && staged.is_some()
            && self.passthrough_enabled()
        {
            Kind::Passthrough
        } else {
            Kind::Cached
        };
        match kind {
            Kind::Cached => counts.cached += 1,
            Kind::Passthrough => counts.passthrough += 1,
            Kind::Direct => {}
        }
        let pt_writer = kind == Kind::Passthrough && access.writes();
        if kind == Kind::Passthrough {
            crate::metrics::Metrics::add(&self.metrics.passthrough_opens, 1);
        }
        io.handles.insert(fh, (ino, kind, pt_writer));
        let damaged = io.damaged.remove(&ino);
        drop(io);
        Ok(match kind {
            // Only unchanged files keep the kernel's page cache across opens: their content
            // cannot change under an inode.
            // A file whose bytes failed a check drops its pages at the next open, so a reread
            // asks the daemon, which fetches it afresh.
            Kind::Cached => IoMode::Cached {
                keep_cache: matches!(&*open, OpenFile::Base { .. }) && !damaged,
            },
            Kind::Direct => IoMode::Direct,
            Kind::Passthrough => {
                let node = node.expect("passthrough handles have a node");
                let staged = staged.expect("passthrough needs the staging file");
                node.passthrough_opened(pt_writer);
                IoMode::Passthrough { staged, ino }
            }
        })
    }

    /// The kernel could not take the staging file of `fh` (its first passthrough handle): the
    /// handle falls back to cached mode, and passthrough is switched off for the mount.
    pub fn passthrough_refused(&self, fh: Fh) {
        self.passthrough.store(false, Ordering::Relaxed);
        self.metrics
            .passthrough_opens
            .fetch_sub(1, Ordering::Relaxed);
        let Some(node) = self.forget_mode(fh) else {
            return;
        };
        let mut io = self.io.lock().unwrap();
        let ino = node.ino;
        io.inodes.entry(ino).or_default().cached += 1;
        io.handles.insert(fh, (ino, Kind::Cached, false));
    }

    /// Forgets the mode of a handle being released (call before it is removed), taking in the
    /// last writes of a passthrough writer; returns its node if it was a passthrough handle
    /// (whose counts on the node are dropped here too).
    pub(super) fn forget_mode(&self, fh: Fh) -> Option<Arc<FileNode>> {
        let (ino, kind, pt_writer) = {
            let mut io = self.io.lock().unwrap();
            let (ino, kind, pt_writer) = io.handles.remove(&fh)?;
            if let Some(c) = io.inodes.get_mut(&ino) {
                match kind {
                    Kind::Cached => c.cached -= 1,
                    Kind::Passthrough => c.passthrough -= 1,
                    Kind::Direct => {}
                }
                if c.cached == 0 && c.passthrough == 0 {
                    io.inodes.remove(&ino);
                }
            }
            (ino, kind, pt_writer)
        };
        if kind != Kind::Passthrough {
            return None;
        }
        let open = self.handles.lock().unwrap().get(&fh).cloned()?;
        let OpenFile::Node { node, .. } = &*open else {
            return None;
        };
        debug_assert_eq!(node.ino, ino);
        // The last writes of a writer went straight to the staging file.
        node.passthrough_closed(pt_writer);
        Some(node.clone())
    }
}

//! pai-mount's filesystem: the core, prefetch, the disk cache, write-back and the FUSE adapter.
//!
//! Built on [`pai_store`], the portable core it shares with the loader; its modules are
//! re-exported here under the same names ([`object`], [`manifest`], [`namespace`],
//! [`framing`], [`metrics`]).
//!
//! - [`fs`]: the filesystem core, synchronous metadata operations and async reads on inode
//!   numbers and handles, testable without FUSE.
//! - [`reader`]: the per-handle reader interface, and the plain ranged-GET reader.
//! - [`prefetch`]: the prefetching reader: sequential detection, window growth, parallel part
//!   fetches under one global memory budget, backed by the disk cache.
//! - [`write`]: write-back: staging files, the journal, and the background uploader.
//! - [`buf`]: aligned block buffers and the bounded pool that recycles them.
//! - [`cache`]: the persistent, checksummed local-disk block cache and its I/O engines.
//! - [`fuse`]: the `fuser` adapter, the only module that knows fuser types.
//! - [`mount`]: a mount's life, start to finish: staging journal, namespace, FUSE session,
//!   refresh, periodic manifest saves, and the shutdown order (settle, drain, save).
//! - [`ids`]: the inode-number and file-handle newtypes.
//! - [`error`]: the filesystem errors and their errno mapping (the only place errno appears).
//! - `dirlock`: one daemon per cache or staging directory (a briefly retried `flock`).

pub mod buf;
pub mod cache;
mod dirlock;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod ids;
pub mod mount;
pub mod mountpoint;
pub mod prefetch;
pub mod reader;
pub mod write;

pub use pai_store::{attrs, framing, manifest, metrics, namespace, object};

/// Milliseconds since the epoch, now.
pub(crate) fn now_ms() -> i64 {
    attrs::ms_since_epoch(std::time::SystemTime::now())
}

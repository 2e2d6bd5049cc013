//! pai-mount's filesystem core.
//!
//! - [`object`]: the object-store seam. Source URLs (`oss://`, `s3://`, `file://`), credentials,
//!   ranged reads with a pinned ETag, and raw listings. The only module that knows `object_store`.
//! - [`manifest`]: the versioned, checksummed on-disk index of keys, sizes, ETags and mtimes, and
//!   its parallel builder.
//! - [`namespace`]: the in-memory directory tree built from a manifest, compact enough for
//!   tens of millions of objects.
//! - [`fs`]: the filesystem core, synchronous metadata operations and async reads on inode
//!   numbers and handles, testable without FUSE.
//! - [`reader`]: the per-handle reader interface, and the plain ranged-GET reader.
//! - [`prefetch`]: the prefetching reader: sequential detection, window growth, parallel part
//!   fetches under one global memory budget, backed by the disk cache.
//! - [`write`]: write-back: staging files, the journal, and the background uploader.
//! - [`buf`]: aligned block buffers and the bounded pool that recycles them.
//! - [`cache`]: the persistent, checksummed local-disk block cache and its I/O engines.
//! - [`fuse`]: the `fuser` adapter, the only module that knows fuser types.
//! - [`error`]: the filesystem errors and their errno mapping (the only place errno appears).
//! - [`framing`]: the versioned, checksummed framing of small JSON documents (journal records,
//!   the loader's tar index).
//! - [`metrics`]: every metric name and counter.
//! - `dirlock`: one daemon per cache or staging directory (a briefly retried `flock`).

pub mod buf;
pub mod cache;
mod dirlock;
pub mod error;
pub mod framing;
pub mod fs;
pub mod fuse;
pub mod manifest;
pub mod metrics;
pub mod mountpoint;
pub mod namespace;
pub mod object;
pub mod prefetch;
pub mod reader;
pub mod write;

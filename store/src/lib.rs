//! pai-store: the portable core that the mount, `cp` and the loader share.
//!
//! It depends on neither FUSE nor io_uring, so the loader and its Python extension build
//! anywhere a Rust HTTP client builds.
//!
//! - [`object`]: the object-store seam. Source URLs (`oss://`, `s3://`, `file://`), credentials,
//!   ranged reads with a pinned ETag, raw listings, and writes. The only module that knows
//!   `object_store`.
//! - [`manifest`]: the versioned, checksummed on-disk index of keys, sizes, ETags and mtimes, and
//!   its parallel builder.
//! - [`namespace`]: the in-memory directory tree built from a manifest, compact enough for
//!   tens of millions of objects.
//! - [`attrs`]: modes, owners and symlink targets, and how objects' user metadata and the
//!   manifest keep them.
//! - [`framing`]: the versioned, checksummed framing of small JSON documents (journal records,
//!   the loader's tar index).
//! - [`metrics`]: every metric name and counter.

pub mod attrs;
pub mod framing;
pub mod manifest;
pub mod metrics;
pub mod namespace;
pub mod object;

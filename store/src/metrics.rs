//! Metrics: every name is a constant here, every counter a field of [`Metrics`].
//!
//! Counters are plain atomics, cheap enough for hot paths. They are logged through `tracing`
//! at unmount and read directly by tests and benchmarks. An HTTP endpoint comes later.

use std::sync::atomic::{AtomicU64, Ordering};

pub const LIST_REQUESTS: &str = "object.list_requests";
pub const GET_REQUESTS: &str = "object.get_requests";
pub const PUT_REQUESTS: &str = "object.put_requests";
pub const DELETE_REQUESTS: &str = "object.delete_requests";
pub const COPY_REQUESTS: &str = "object.copy_requests";
pub const HEAD_REQUESTS: &str = "object.head_requests";
pub const UPLOADS_DONE: &str = "write.uploads_done";
pub const UPLOADS_FAILED: &str = "write.uploads_failed";
pub const UPLOADS_RETRIED: &str = "write.upload_retries";
pub const UPLOADS_SUPERSEDED: &str = "write.uploads_superseded";
pub const UPLOADED_BYTES: &str = "write.uploaded_bytes";
pub const WRITE_BYTES: &str = "fs.write_bytes";
pub const PASSTHROUGH_OPENS: &str = "fs.passthrough_opens";
pub const NAMESPACE_CHANGES: &str = "fs.namespace_changes";
pub const STAGED_FETCH_BYTES: &str = "write.staged_fetch_bytes";
pub const GET_BYTES: &str = "object.get_bytes";
pub const GET_ERRORS: &str = "object.get_errors";
pub const FIRST_BYTE_MICROS: &str = "object.get_first_byte_micros_total";
pub const READ_BYTES: &str = "fs.read_bytes";
pub const READS: &str = "fs.reads";
pub const LOOKUPS: &str = "fs.lookups";
pub const STALE_READS: &str = "fs.stale_reads";
pub const MEMORY_HITS: &str = "cache.memory_hits";
pub const DISK_HITS: &str = "cache.disk_hits";
pub const DISK_MISSES: &str = "cache.disk_misses";
pub const DISK_CORRUPT: &str = "cache.disk_corrupt";
pub const DISK_EVICTIONS: &str = "cache.disk_evictions";
pub const DISK_WRITES: &str = "cache.disk_writes";
pub const DISK_SKIPPED: &str = "cache.disk_skipped";
pub const PREFETCH_BYTES: &str = "prefetch.bytes_requested";
pub const BUDGET_HELD: &str = "prefetch.budget_held_bytes";
pub const BUDGET_PEAK: &str = "prefetch.budget_peak_bytes";
pub const PARTS_LIVE: &str = "prefetch.part_bytes_live";
pub const PARTS_PEAK: &str = "prefetch.part_bytes_peak";
pub const REQUESTS_THROTTLED: &str = "object.requests_throttled";
pub const REQUEST_TIMEOUTS: &str = "object.request_timeouts";
pub const CHECKSUM_MISMATCHES: &str = "object.checksum_mismatches";
pub const FILES_VERIFIED: &str = "read.files_verified";
pub const FILES_UNVERIFIED: &str = "read.files_unverified";

/// Process-wide counters, shared through an `Arc`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub list_requests: AtomicU64,
    pub get_requests: AtomicU64,
    pub put_requests: AtomicU64,
    pub delete_requests: AtomicU64,
    pub copy_requests: AtomicU64,
    pub head_requests: AtomicU64,
    /// Files whose upload completed, failed for good, was retried, or was overtaken by a newer
    /// version of the file before it completed.
    pub uploads_done: AtomicU64,
    pub uploads_failed: AtomicU64,
    pub upload_retries: AtomicU64,
    pub uploads_superseded: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    /// Bytes written through the mount.
    pub write_bytes: AtomicU64,
    pub passthrough_opens: AtomicU64,
    /// Changes of the bucket's namespace: uploads done, mkdir, rmdir, unlink, rename, mtimes.
    pub namespace_changes: AtomicU64,
    /// Bytes downloaded to stage an existing object for a partial write.
    pub staged_fetch_bytes: AtomicU64,
    pub get_bytes: AtomicU64,
    pub get_errors: AtomicU64,
    /// Sum of first-byte latencies of GETs, in microseconds (divide by `get_requests`).
    pub first_byte_micros: AtomicU64,
    pub read_bytes: AtomicU64,
    /// Read requests served (bytes / reads is the kernel's request size).
    pub reads: AtomicU64,
    pub lookups: AtomicU64,
    pub stale_reads: AtomicU64,
    /// Read blocks already in a handle's prefetched or recent blocks.
    pub memory_hits: AtomicU64,
    pub disk_hits: AtomicU64,
    pub disk_misses: AtomicU64,
    /// Damaged block files found (and deleted).
    pub disk_corrupt: AtomicU64,
    pub disk_evictions: AtomicU64,
    pub disk_writes: AtomicU64,
    /// Blocks not cached because the disk was full or a write failed.
    pub disk_skipped: AtomicU64,
    /// Bytes requested ahead of readers.
    pub prefetch_bytes: AtomicU64,
    /// Prefetched bytes currently held against the memory budget (a gauge), and its peak.
    pub budget_held: AtomicU64,
    pub budget_peak: AtomicU64,
    /// Bytes of fetched parts (demand and prefetch) alive now, and the most ever.
    pub parts_live: AtomicU64,
    pub parts_peak: AtomicU64,
    /// Answers that asked us to slow down (503, 429, `x-oss-qos-delay-time`); each is retried.
    pub requests_throttled: AtomicU64,
    /// Requests abandoned for a connect, first-byte or idle-body timeout; each is retried.
    pub request_timeouts: AtomicU64,
    /// Bytes that did not match the store's full-object checksum (downloads and uploads);
    /// each was retried, never delivered.
    pub checksum_mismatches: AtomicU64,
    /// Files read front to back in ranges whose blocks' CRCs combined to the store's checksum.
    pub files_verified: AtomicU64,
    /// Files read front to back in ranges that could not be checked (no checksum stated).
    pub files_unverified: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A snapshot of every counter with its name.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            (LIST_REQUESTS, g(&self.list_requests)),
            (GET_REQUESTS, g(&self.get_requests)),
            (PUT_REQUESTS, g(&self.put_requests)),
            (DELETE_REQUESTS, g(&self.delete_requests)),
            (COPY_REQUESTS, g(&self.copy_requests)),
            (HEAD_REQUESTS, g(&self.head_requests)),
            (UPLOADS_DONE, g(&self.uploads_done)),
            (UPLOADS_FAILED, g(&self.uploads_failed)),
            (UPLOADS_RETRIED, g(&self.upload_retries)),
            (UPLOADS_SUPERSEDED, g(&self.uploads_superseded)),
            (UPLOADED_BYTES, g(&self.uploaded_bytes)),
            (WRITE_BYTES, g(&self.write_bytes)),
            (PASSTHROUGH_OPENS, g(&self.passthrough_opens)),
            (NAMESPACE_CHANGES, g(&self.namespace_changes)),
            (STAGED_FETCH_BYTES, g(&self.staged_fetch_bytes)),
            (GET_BYTES, g(&self.get_bytes)),
            (GET_ERRORS, g(&self.get_errors)),
            (FIRST_BYTE_MICROS, g(&self.first_byte_micros)),
            (READ_BYTES, g(&self.read_bytes)),
            (READS, g(&self.reads)),
            (LOOKUPS, g(&self.lookups)),
            (STALE_READS, g(&self.stale_reads)),
            (MEMORY_HITS, g(&self.memory_hits)),
            (DISK_HITS, g(&self.disk_hits)),
            (DISK_MISSES, g(&self.disk_misses)),
            (DISK_CORRUPT, g(&self.disk_corrupt)),
            (DISK_EVICTIONS, g(&self.disk_evictions)),
            (DISK_WRITES, g(&self.disk_writes)),
            (DISK_SKIPPED, g(&self.disk_skipped)),
            (PREFETCH_BYTES, g(&self.prefetch_bytes)),
            (BUDGET_HELD, g(&self.budget_held)),
            (BUDGET_PEAK, g(&self.budget_peak)),
            (PARTS_LIVE, g(&self.parts_live)),
            (PARTS_PEAK, g(&self.parts_peak)),
            (REQUESTS_THROTTLED, g(&self.requests_throttled)),
            (REQUEST_TIMEOUTS, g(&self.request_timeouts)),
            (CHECKSUM_MISMATCHES, g(&self.checksum_mismatches)),
            (FILES_VERIFIED, g(&self.files_verified)),
            (FILES_UNVERIFIED, g(&self.files_unverified)),
        ]
    }

    pub fn log(&self) {
        for (name, value) in self.snapshot() {
            tracing::info!(metric = name, value, "metric");
        }
    }
}

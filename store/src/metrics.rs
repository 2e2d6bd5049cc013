//! Metrics: each one declared once, in the [`metrics!`] table below, with its field, its name,
//! its kind and its help text. Everything else (the struct, snapshots, the log at unmount, the
//! Prometheus endpoint and docs/METRICS.md's table) derives from that table.
//!
//! Values are plain atomics, cheap enough for hot paths; tests and benchmarks read the fields.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Whether a metric only grows, goes up and down, or counts observations in buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Upper bounds of the latency histograms' buckets, in seconds: 100 µs to 105 s, each twice
/// the one before (and `+Inf` after the last).
pub const LATENCY_BUCKETS: [f64; 21] = {
    let mut b = [0.0; 21];
    let mut i = 0;
    let mut v = 0.0001;
    while i < 21 {
        b[i] = v;
        v *= 2.0;
        i += 1;
    }
    b
};

/// A latency histogram over [`LATENCY_BUCKETS`]: lock-free, one atomic add per bucket hit.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per-bucket counts; the last one is `+Inf`.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Sum of the observations in seconds, count, and `(upper bound, count in that bucket)`.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|b| b.1).sum();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, count, buckets)
    }
}

/// A metric's current value.
pub enum Value<'a> {
    Number(u64),
    Histogram(&'a Histogram),
}

/// How a field of [`Metrics`] is read, and added to another's.
trait Field {
    fn value(&self) -> Value<'_>;
    fn absorb(&self, other: &Self);
}

impl Field for AtomicU64 {
    fn value(&self) -> Value<'_> {
        Value::Number(self.load(Ordering::Relaxed))
    }
    fn absorb(&self, other: &Self) {
        self.fetch_add(other.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

impl Field for Histogram {
    fn value(&self) -> Value<'_> {
        Value::Histogram(self)
    }
    fn absorb(&self, other: &Self) {
        for (mine, theirs) in self.counts.iter().zip(&other.counts) {
            mine.fetch_add(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(other.sum_micros.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// One metric's declaration.
#[derive(Debug, Clone, Copy)]
pub struct Descriptor {
    /// Dotted name, as logged: `object.get_requests`.
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

impl Descriptor {
    /// The Prometheus name: `pai_mount_` and the dotted name with `_` (counters get `_total`
    /// from the exposition format).
    pub fn prometheus_name(&self) -> String {
        format!("pai_mount_{}", self.name.replace('.', "_"))
    }
}

/// The type of a field of [`Metrics`] for each [`Kind`].
macro_rules! field_type {
    (Counter) => {
        AtomicU64
    };
    (Gauge) => {
        AtomicU64
    };
    (Histogram) => {
        Histogram
    };
}

macro_rules! metrics {
    ($( $(#[doc = $doc:literal])+ $field:ident: $kind:ident = $name:literal, )+) => {
        /// Process-wide metrics, shared through an `Arc`.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $( $(#[doc = $doc])+ pub $field: field_type!($kind), )+
            /// Latency of FUSE operations, by [`FuseOp`].
            pub fuse_ops: FuseOpHistograms,
        }

        /// Every metric but the per-operation FUSE histograms, in the order of
        /// [`Metrics::values`].
        pub const ALL: &[Descriptor] = &[
            $( Descriptor { name: $name, kind: Kind::$kind, help: concat!($($doc),+) }, )+
        ];

        impl Metrics {
            /// Every metric's value, in the order of [`ALL`].
            pub fn values(&self) -> Vec<Value<'_>> {
                vec![ $( Field::value(&self.$field), )+ ]
            }

            /// Adds every value of `other` to this one's (gauges too: a sum over processes or
            /// datasets).
            pub fn absorb(&self, other: &Self) {
                $( Field::absorb(&self.$field, &other.$field); )+
                for op in FuseOp::ALL {
                    Field::absorb(self.fuse_ops.of(op), other.fuse_ops.of(op));
                }
            }
        }
    };
}

metrics! {
    /// ListObjectsV2 requests (0 after mount unless --refresh).
    list_requests: Counter = "object.list_requests",
    /// GET requests, ranged or whole.
    get_requests: Counter = "object.get_requests",
    /// PUT requests: single PUTs, multipart start, parts and completes, directory markers,
    /// manifests.
    put_requests: Counter = "object.put_requests",
    /// DELETE requests (unlink, rmdir, rename).
    delete_requests: Counter = "object.delete_requests",
    /// Server-side copies (rename).
    copy_requests: Counter = "object.copy_requests",
    /// HEAD requests.
    head_requests: Counter = "object.head_requests",
    /// File versions whose upload completed.
    uploads_done: Counter = "write.uploads_done",
    /// Uploads that failed for good in this process (kept in the journal for the next mount).
    uploads_failed: Counter = "write.uploads_failed",
    /// Upload attempts that failed and were retried.
    upload_retries: Counter = "write.upload_retries",
    /// Uploads abandoned because the file changed, moved or was removed meanwhile.
    uploads_superseded: Counter = "write.uploads_superseded",
    /// Bytes of completed uploads.
    uploaded_bytes: Counter = "write.uploaded_bytes",
    /// Bytes sent in upload bodies (PUTs and parts, including attempts that were retried or
    /// abandoned).
    sent_bytes: Counter = "write.sent_bytes",
    /// Uploads that reused unchanged ranges of the object with server-side copies.
    patch_uploads: Counter = "write.patch_uploads",
    /// Bytes those uploads copied on the server instead of sending.
    copied_bytes: Counter = "write.copied_bytes",
    /// Bytes of uploaded files offered to the disk cache (which may decline them when its disk
    /// is full), so that later reads, in this mount or the next, need no request.
    cached_bytes: Counter = "write.cached_bytes",
    /// Bytes written through the daemon (writes through passthrough handles are not seen).
    write_bytes: Counter = "fs.write_bytes",
    /// Handles the kernel served straight from a staging file (FUSE passthrough).
    passthrough_opens: Counter = "fs.passthrough_opens",
    /// Changes of the bucket's namespace: uploads done, mkdir, rmdir, unlink, rename, mtimes.
    namespace_changes: Counter = "fs.namespace_changes",
    /// Bytes downloaded to stage existing objects for partial writes.
    staged_fetch_bytes: Counter = "write.staged_fetch_bytes",
    /// Bytes received in GET bodies.
    get_bytes: Counter = "object.get_bytes",
    /// Failed GETs (after the HTTP layer's retries) and retried bodies.
    get_errors: Counter = "object.get_errors",
    /// Bytes returned to readers.
    read_bytes: Counter = "fs.read_bytes",
    /// Read requests served (read_bytes / reads is the kernel's request size).
    reads: Counter = "fs.reads",
    /// Lookups served (from memory).
    lookups: Counter = "fs.lookups",
    /// Reads refused because the object changed or vanished.
    stale_reads: Counter = "fs.stale_reads",
    /// Read blocks already held by the handle (prefetched or recent).
    memory_hits: Counter = "cache.memory_hits",
    /// Disk cache lookups that found the block.
    disk_hits: Counter = "cache.disk_hits",
    /// Disk cache lookups that did not.
    disk_misses: Counter = "cache.disk_misses",
    /// Damaged block files found (deleted and fetched again).
    disk_corrupt: Counter = "cache.disk_corrupt",
    /// Blocks deleted to stay under --cache-size.
    disk_evictions: Counter = "cache.disk_evictions",
    /// Blocks written to the disk cache.
    disk_writes: Counter = "cache.disk_writes",
    /// Blocks not cached: disk full, below --cache-min-free, or a write failed.
    disk_skipped: Counter = "cache.disk_skipped",
    /// Bytes requested ahead of readers.
    prefetch_bytes: Counter = "prefetch.bytes_requested",
    /// Prefetched bytes held against the memory budget now.
    budget_held: Gauge = "prefetch.budget_held_bytes",
    /// The most prefetched bytes ever held against the budget.
    budget_peak: Gauge = "prefetch.budget_peak_bytes",
    /// Bytes of fetched parts (demand and prefetch) alive now.
    parts_live: Gauge = "prefetch.part_bytes_live",
    /// The most bytes of fetched parts ever alive.
    parts_peak: Gauge = "prefetch.part_bytes_peak",
    /// Answers that asked us to slow down (503, 429, x-oss-qos-delay-time); each was retried.
    requests_throttled: Counter = "object.requests_throttled",
    /// Requests abandoned at the connect, first-byte or idle-body bound; each was retried.
    request_timeouts: Counter = "object.request_timeouts",
    /// Seconds from sending a GET to its answer's headers.
    get_first_byte_seconds: Histogram = "object.get_first_byte_seconds",
    /// Seconds from sending a GET to the end of its body (each resumed piece on its own).
    get_seconds: Histogram = "object.get_seconds",
    /// Seconds an upload of one file version took, from its start to its completion
    /// (retries included).
    upload_seconds: Histogram = "write.upload_seconds",
    /// Bytes that did not match the store's full-object checksum: whole-object reads (retried,
    /// never delivered), files read front to back through the mount (the read at the end
    /// failed with EIO), OSS uploads (retried).
    checksum_mismatches: Counter = "object.checksum_mismatches",
    /// Files of more than 1 MiB read front to back through the mount whose blocks' CRCs
    /// combined to the store's checksum.
    files_verified: Counter = "read.files_verified",
    /// Files read front to back through the mount that could not be checked (the store stated
    /// no checksum, or asking for it failed).
    files_unverified: Counter = "read.files_unverified",
}

/// FUSE operations whose latency is measured, one histogram each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuseOp {
    Lookup,
    Getattr,
    Setattr,
    Open,
    Read,
    Write,
    Flush,
    Fsync,
    Release,
    Create,
    Mkdir,
    Unlink,
    Rmdir,
    Rename,
    Opendir,
    Readdir,
    Statfs,
    Fallocate,
    Symlink,
    Readlink,
}

impl FuseOp {
    /// Every operation, in the order of their histograms.
    pub const ALL: [FuseOp; 20] = [
        Self::Lookup,
        Self::Getattr,
        Self::Setattr,
        Self::Open,
        Self::Read,
        Self::Write,
        Self::Flush,
        Self::Fsync,
        Self::Release,
        Self::Create,
        Self::Mkdir,
        Self::Unlink,
        Self::Rmdir,
        Self::Rename,
        Self::Opendir,
        Self::Readdir,
        Self::Statfs,
        Self::Fallocate,
        Self::Symlink,
        Self::Readlink,
    ];

    /// The `op` label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Lookup => "lookup",
            Self::Getattr => "getattr",
            Self::Setattr => "setattr",
            Self::Open => "open",
            Self::Read => "read",
            Self::Write => "write",
            Self::Flush => "flush",
            Self::Fsync => "fsync",
            Self::Release => "release",
            Self::Create => "create",
            Self::Mkdir => "mkdir",
            Self::Unlink => "unlink",
            Self::Rmdir => "rmdir",
            Self::Rename => "rename",
            Self::Opendir => "opendir",
            Self::Readdir => "readdir",
            Self::Statfs => "statfs",
            Self::Fallocate => "fallocate",
            Self::Symlink => "symlink",
            Self::Readlink => "readlink",
        }
    }
}

/// One latency histogram per [`FuseOp`].
#[derive(Debug, Default)]
pub struct FuseOpHistograms([Histogram; FuseOp::ALL.len()]);

impl FuseOpHistograms {
    pub fn of(&self, op: FuseOp) -> &Histogram {
        &self.0[op as usize]
    }
}

/// The FUSE operation latency family: one histogram per operation, labelled `op`.
pub const FUSE_OP_SECONDS: Descriptor = Descriptor {
    name: "fuse.op_seconds",
    kind: Kind::Histogram,
    help: "Seconds from a FUSE request's arrival to its reply, by operation (label op).",
};

/// Gauges read from the live mount at each scrape rather than kept here, in the order a
/// sampler returns them (see the daemon's metrics endpoint).
pub const SAMPLED: &[Descriptor] = &[
    Descriptor {
        name: "write.queue_files",
        kind: Kind::Gauge,
        help: "Files written through the mount whose upload has not completed (the upload queue).",
    },
    Descriptor {
        name: "write.queue_bytes",
        kind: Kind::Gauge,
        help: "Bytes of those files.",
    },
    Descriptor {
        name: "cache.disk_bytes",
        kind: Kind::Gauge,
        help: "Bytes held by the disk cache.",
    },
    Descriptor {
        name: "fs.namespace_objects",
        kind: Kind::Gauge,
        help: "Files and directories in the namespace the mount serves.",
    },
    Descriptor {
        name: "fs.open_handles",
        kind: Kind::Gauge,
        help: "Open file handles.",
    },
];

/// Times one FUSE operation; records it when dropped.
pub struct OpTimer {
    metrics: Arc<Metrics>,
    op: FuseOp,
    start: Instant,
}

impl Drop for OpTimer {
    fn drop(&mut self) {
        self.metrics
            .fuse_ops
            .of(self.op)
            .observe(self.start.elapsed());
    }
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Starts timing FUSE operation `op`.
    pub fn time(self: &Arc<Self>, op: FuseOp) -> OpTimer {
        OpTimer {
            metrics: self.clone(),
            op,
            start: Instant::now(),
        }
    }

    /// Every metric with its name (a histogram by its count).
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        ALL.iter()
            .map(|d| d.name)
            .zip(self.values().into_iter().map(|v| match v {
                Value::Number(n) => n,
                Value::Histogram(h) => h.count(),
            }))
            .collect()
    }

    pub fn log(&self) {
        for (name, value) in self.snapshot() {
            tracing::info!(metric = name, value, "metric");
        }
    }
}

/// docs/METRICS.md's table of every metric.
pub fn markdown_table() -> String {
    let mut out = String::from("| name | kind | meaning |\n|---|---|---|\n");
    for d in ALL.iter().chain([&FUSE_OP_SECONDS]).chain(SAMPLED) {
        let help: Vec<&str> = d.help.split_whitespace().collect();
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            d.name,
            match d.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            },
            help.join(" ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_the_snapshot_follows_the_table() {
        let mut names: Vec<&str> = ALL.iter().map(|d| d.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        let m = Metrics::default();
        Metrics::add(&m.head_requests, 3);
        let snap = m.snapshot();
        assert_eq!(snap.len(), ALL.len());
        assert!(snap.contains(&("object.head_requests", 3)));
    }

    /// docs/METRICS.md lists every metric as the table here declares it.
    #[test]
    fn the_docs_table_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/METRICS.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let table = markdown_table();
        assert!(
            doc.contains(&table),
            "docs/METRICS.md is out of date; its table should be:\n{table}"
        );
    }
}

//! Building a manifest by listing a prefix once.
//!
//! The listing walks the tree breadth-first with delimited ListObjectsV2 requests: each page's
//! common prefixes become new listings, so up to `concurrency` directories are listed at once.
//! Only compact [`Entry`] values are kept; pages are dropped as soon as they are folded in.
//! A single flat directory is listed page by page (continuation tokens are sequential).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::task::JoinSet;

use super::{tree_cmp, Entry, Etag, Header, RESERVED_DIR};
use crate::object::{ListPage, ObjectSource, SourceError};

/// Listings in flight by default. ListObjectsV2 pages cost 50-300 ms on OSS; 16 in flight keep
/// a bucket with many directories listing at thousands of keys per second without throttling.
pub const DEFAULT_LIST_CONCURRENCY: usize = 16;

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub concurrency: usize,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            concurrency: DEFAULT_LIST_CONCURRENCY,
        }
    }
}

/// Live counters, for a progress display.
#[derive(Debug, Default)]
pub struct BuildProgress {
    pub objects: AtomicU64,
    pub requests: AtomicU64,
}

/// Lists the source's prefix and returns the manifest's header and its entries in tree order.
pub async fn build(
    source: &ObjectSource,
    options: &BuildOptions,
    progress: &BuildProgress,
) -> Result<(Header, Vec<Entry>), SourceError> {
    let root = source.source().prefix.as_bytes().to_vec();
    let mut queue: VecDeque<(Vec<u8>, Option<String>)> = VecDeque::from([(root.clone(), None)]);
    let mut tasks: JoinSet<Result<(Vec<u8>, ListPage), SourceError>> = JoinSet::new();
    let mut entries = Vec::new();
    let mut total_bytes = 0u64;
    let mut requests = 0u64;
    let reserved = format!("{RESERVED_DIR}/").into_bytes();
    loop {
        while tasks.len() < options.concurrency.max(1) {
            let Some((prefix, token)) = queue.pop_front() else {
                break;
            };
            let s = source.clone();
            tasks.spawn(async move {
                let page = s.list_page(&prefix, true, token).await?;
                Ok((prefix, page))
            });
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        let (prefix, page) = done.map_err(|e| SourceError::Other {
            what: "listing".into(),
            why: e.to_string(),
        })??;
        requests += 1;
        progress.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(next) = page.next {
            queue.push_back((prefix, Some(next)));
        }
        for p in page.prefixes {
            if p.len() > root.len() && p.starts_with(&root) && p[root.len()..] != reserved[..] {
                queue.push_back((p, None));
            }
        }
        for o in page.objects {
            let Some(rel) = o.key.strip_prefix(root.as_slice()) else {
                continue;
            };
            if rel.is_empty() || rel.starts_with(&reserved) {
                continue;
            }
            total_bytes += o.size;
            progress.objects.fetch_add(1, Ordering::Relaxed);
            entries.push(Entry {
                key: rel.into(),
                size: o.size,
                mtime_ms: o.mtime_ms,
                etag: Etag::parse(o.etag.as_deref()),
            });
        }
    }
    entries.sort_unstable_by(|a, b| tree_cmp(&a.key, &b.key));
    entries.dedup_by(|a, b| a.key == b.key);
    let header = Header {
        source: source.source().display_root(),
        built_at_ms: chrono::Utc::now().timestamp_millis(),
        object_count: entries.len() as u64,
        total_bytes,
        list_requests: requests,
        builder: format!("pai-mount {}", env!("CARGO_PKG_VERSION")),
    };
    Ok((header, entries))
}

/// Where a mount's namespace came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The manifest stored in the bucket.
    Stored(Header),
    /// A fresh listing, because no usable manifest was stored (the reason is given).
    Listed { header: Header, why: String },
}

/// Loads the stored manifest under the source's prefix, or lists the prefix when there is none
/// or it is unusable. Logs which, and why.
pub async fn load_or_list(
    source: &ObjectSource,
    options: &BuildOptions,
) -> Result<(crate::namespace::Namespace, Origin), SourceError> {
    let why = match source.get_all(super::MANIFEST_KEY).await? {
        Some(bytes) => match super::Manifest::parse(&bytes) {
            Ok(m) => match crate::namespace::Namespace::from_manifest(&m) {
                Ok(ns) => {
                    tracing::info!(
                        objects = m.header.object_count,
                        built_at_ms = m.header.built_at_ms,
                        "loaded the stored manifest"
                    );
                    return Ok((ns, Origin::Stored(m.header)));
                }
                Err(e) => format!("the stored manifest is unusable: {e}"),
            },
            Err(e) => format!("the stored manifest is unusable: {e}"),
        },
        None => format!(
            "no manifest at {}/{}",
            source.source().display_root(),
            super::MANIFEST_KEY
        ),
    };
    tracing::warn!(
        "{why}; listing the prefix instead (run `pai-mount manifest build` to skip this)"
    );
    let (header, entries) = build(source, options, &BuildProgress::default()).await?;
    let ns = crate::namespace::Namespace::from_entries(&entries, header.built_at_ms);
    Ok((ns, Origin::Listed { header, why }))
}

/// Lists the prefix and stores the manifest in the bucket. Returns its header and size.
pub async fn build_and_store(
    source: &ObjectSource,
    options: &BuildOptions,
    progress: &BuildProgress,
) -> Result<(Header, usize), SourceError> {
    let (header, entries) = build(source, options, progress).await?;
    let bytes = super::encode(&header, &entries);
    let len = bytes.len();
    source.put(super::MANIFEST_KEY, bytes.into()).await?;
    Ok((header, len))
}

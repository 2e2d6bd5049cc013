//! Building a manifest by listing a prefix once.
//!
//! The listing (`listing`) walks the tree breadth-first with delimited ListObjectsV2 requests,
//! up to `concurrency` at once: every directory at once, and large directories in several key
//! ranges at once. Only compact [`Entry`] values are kept; pages are dropped as soon as they
//! are folded in.
//!
//! ## Attributes
//! A listing carries no user metadata, so modes, owners and symlinks ([`crate::attrs`]) come
//! from two places after it:
//! 1. the manifest stored under the prefix: an entry listed with the same key and ETag takes
//!    that manifest's attributes and mtime (no request);
//! 2. a HEAD of each object it does not cover, per [`AttrScan`] (and a GET of each symlink's
//!    target). Directory markers are not HEADed: their attributes come from the manifest.

use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;

use super::{tree_cmp, Entry, Header};
use crate::object::{ObjectSource, SourceError};

/// Listings in flight by default. ListObjectsV2 pages cost 50-300 ms on OSS; 16 in flight keep
/// a bucket with many directories listing at thousands of keys per second without throttling.
pub const DEFAULT_LIST_CONCURRENCY: usize = 16;

/// Which listed objects a build HEADs for their attributes (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrScan {
    /// None: objects the stored manifest does not cover get the mount's defaults.
    Off,
    /// Those the stored manifest does not cover, when there are few: at most
    /// [`AUTO_SCAN_WITH_MANIFEST`] under a prefix that has a manifest (a workspace the mount
    /// wrote), at most [`AUTO_SCAN_WITHOUT`] otherwise (a dataset listed for the first time
    /// is not HEADed object by object).
    Auto,
    /// Every object the stored manifest does not cover.
    All,
}

/// [`AttrScan::Auto`]'s bound under a prefix with a stored manifest.
pub const AUTO_SCAN_WITH_MANIFEST: usize = 100_000;
/// [`AttrScan::Auto`]'s bound under a prefix without one.
pub const AUTO_SCAN_WITHOUT: usize = 1_000;
/// HEADs in flight during a scan.
const SCAN_CONCURRENCY: usize = 32;

#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Listing requests in flight.
    pub concurrency: usize,
    pub attrs: AttrScan,
    /// List large directories in several key ranges at once (see `listing`); off, a
    /// directory is listed page by page.
    pub split_ranges: bool,
}

/// The default reads no attributes: `cp`, `warm` and the loader read bytes only. The mount
/// and `manifest build` ask for [`AttrScan::Auto`].
impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            concurrency: DEFAULT_LIST_CONCURRENCY,
            attrs: AttrScan::Off,
            split_ranges: true,
        }
    }
}

/// Live counters, for a progress display.
#[derive(Debug, Default)]
pub struct BuildProgress {
    pub objects: AtomicU64,
    pub requests: AtomicU64,
    /// Objects HEADed for their attributes.
    pub heads: AtomicU64,
}

/// Lists the source's prefix and returns the manifest's header and its entries in tree order.
pub async fn build(
    source: &ObjectSource,
    options: &BuildOptions,
    progress: &BuildProgress,
) -> Result<(Header, Vec<Entry>), SourceError> {
    build_knowing(source, options, progress, None).await
}

/// [`build`], given the stored manifest's entries when the caller already read them
/// (`Some(None)`: there is none, or it is unusable).
async fn build_knowing(
    source: &ObjectSource,
    options: &BuildOptions,
    progress: &BuildProgress,
    stored: Option<Option<Vec<Entry>>>,
) -> Result<(Header, Vec<Entry>), SourceError> {
    let super::listing::Listed {
        mut entries,
        total_bytes,
        requests,
    } = super::listing::list(source, options, progress).await?;
    entries.sort_unstable_by(|a, b| tree_cmp(&a.key, &b.key));
    entries.dedup_by(|a, b| a.key == b.key);
    if options.attrs != AttrScan::Off {
        let stored = match stored {
            Some(known) => known,
            None => stored_entries(source).await,
        };
        add_attrs(source, &mut entries, stored, options.attrs, progress).await;
    }
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

/// The stored manifest's entries, if it exists and is usable.
async fn stored_entries(source: &ObjectSource) -> Option<Vec<Entry>> {
    match source.get_all(super::MANIFEST_KEY).await {
        Ok(Some(bytes)) => super::Manifest::parse(&bytes)
            .and_then(|m| m.entries())
            .map_err(|e| tracing::info!("the stored manifest gives no attributes: {e}"))
            .ok(),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("reading the stored manifest for attributes: {e}");
            None
        }
    }
}

/// Fills in attributes after a listing: from the stored manifest, then by HEADs. Best
/// effort: what cannot be read keeps the mount's defaults (and is logged).
async fn add_attrs(
    source: &ObjectSource,
    entries: &mut [Entry],
    stored: Option<Vec<Entry>>,
    scan: AttrScan,
    progress: &BuildProgress,
) {
    let had_manifest = stored.is_some();
    let mut unknown = Vec::new();
    let mut old = stored.unwrap_or_default().into_iter().peekable();
    for (i, e) in entries.iter_mut().enumerate() {
        // Both are in tree order: walk them side by side.
        while old.peek().is_some_and(|o| tree_cmp(&o.key, &e.key).is_lt()) {
            old.next();
        }
        match old.peek() {
            Some(o) if o.key == e.key && (o.etag == e.etag || e.key.ends_with(b"/")) => {
                e.attrs = o.attrs.clone();
                if !o.attrs.is_empty() {
                    e.mtime_ms = o.mtime_ms;
                }
            }
            _ if !e.key.ends_with(b"/") => unknown.push(i),
            _ => {}
        }
    }
    let limit = match scan {
        AttrScan::Off => 0,
        AttrScan::Auto if had_manifest => AUTO_SCAN_WITH_MANIFEST,
        AttrScan::Auto => AUTO_SCAN_WITHOUT,
        AttrScan::All => usize::MAX,
    };
    if unknown.is_empty() || scan == AttrScan::Off {
        return;
    }
    if unknown.len() > limit {
        tracing::warn!(
            objects = unknown.len(),
            limit,
            "not reading the modes, owners and symlinks of objects the stored manifest does not cover (too many to HEAD each); \
             `pai-mount manifest build --attrs all` reads them"
        );
        return;
    }
    let rels: Vec<(usize, String)> = unknown
        .iter()
        .filter_map(|&i| Some((i, String::from_utf8(entries[i].key.to_vec()).ok()?)))
        .collect();
    let failed = AtomicU64::new(0);
    let found: Vec<(usize, Option<Found>)> = futures::stream::iter(rels)
        .map(|(i, rel)| {
            let failed = &failed;
            async move {
                progress.heads.fetch_add(1, Ordering::Relaxed);
                match head_attrs(source, &rel).await {
                    Ok(got) => (i, got),
                    Err(e) => {
                        // One object's attributes are not worth failing the build for.
                        if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                            tracing::warn!("reading the attributes of {rel}: {e}");
                        }
                        (i, None)
                    }
                }
            }
        })
        .buffer_unordered(SCAN_CONCURRENCY)
        .collect()
        .await;
    let failed = failed.into_inner();
    if failed > 0 {
        tracing::warn!(
            objects = failed,
            "objects keep the mount's default attributes: their HEAD failed"
        );
    }
    for (i, got) in found {
        if let Some((attrs, mtime)) = got {
            entries[i].attrs = attrs;
            if let Some(ms) = mtime {
                entries[i].mtime_ms = ms;
            }
        }
    }
}

/// What a HEAD found: attributes and the `mtime` metadata.
type Found = (crate::attrs::Attrs, Option<i64>);

/// One object's attributes and mtime metadata (a HEAD, and a GET of a symlink's target);
/// `None` if it was deleted since the listing.
async fn head_attrs(source: &ObjectSource, rel: &str) -> Result<Option<Found>, String> {
    let Some(h) = source.head_meta(rel).await.map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let mut attrs = h.attrs;
    if attrs.is_symlink() {
        if h.size as usize > crate::attrs::MAX_TARGET {
            return Err(format!("a symlink target of {} bytes", h.size));
        }
        let body = source.get_all(rel).await.map_err(|e| e.to_string())?;
        attrs.target = Some(body.unwrap_or_default().to_vec().into());
    }
    Ok(Some((attrs, h.mtime_ms)))
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
    let (header, entries) =
        build_knowing(source, options, &BuildProgress::default(), Some(None)).await?;
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

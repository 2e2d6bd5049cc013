//! The object-store seam: the only module that knows `object_store`.
//!
//! A [`Source`] names a bucket and prefix (`oss://`, `s3://` or `file://`); [`ObjectSource`]
//! connects to it and offers the three things the rest of the crate needs:
//! - ranged reads pinned to an ETag ([`ObjectSource::get_range`]), which never return bytes of
//!   another version of the object;
//! - raw listings ([`ObjectSource::list_page`]), which keep every key as the store spelled it,
//!   including keys that are not valid paths, so the namespace can count and skip them;
//! - whole-object get and put for the manifest.
//!
//! Listing goes through our own ListObjectsV2 client ([`list`]) rather than `object_store`'s,
//! because `object_store` rejects a whole listing page when one key has an empty segment or a
//! `.`/`..` segment, and it folds `dir/` markers into `dir`.

pub mod checksum;
pub mod credentials;
pub mod faulty;
pub mod list;
pub mod patch;
mod source;
pub mod transport;

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, GetOptions, GetRange, MultipartUpload, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload,
};

pub use list::{ListPage, Lister, RawObject, PAGE_SIZE};
pub use source::{Source, SourceKind, StoreOptions, MAX_RETRIES, RETRY_TIMEOUT};
pub use transport::Deadlines;

use crate::metrics::Metrics;

/// An object pinned at the moment it was chosen (a handle's open, a dataset's load): every read
/// of it is checked against this size and ETag.
#[derive(Debug, Clone)]
pub struct PinnedObject {
    /// Key relative to the source prefix.
    pub key: Arc<str>,
    pub size: u64,
    /// Quoted ETag from the manifest; every request carries it as `If-Match`.
    pub etag: Option<Arc<str>>,
}

/// Why a read of object bytes failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("object {key} changed since the manifest was built (pinned etag {pinned})")]
    Changed { key: String, pinned: String },
    #[error("object {key} was deleted since the manifest was built")]
    Gone { key: String },
    #[error("short read of {key}: wanted {wanted} bytes, got {got}")]
    Short { key: String, wanted: u64, got: u64 },
    #[error("reading {key}: the bytes received do not match the object's checksum ({stated}; received {computed}), several times")]
    Corrupt {
        key: String,
        stated: String,
        computed: String,
    },
    #[error("reading {key}: no answer within the read bound of {} s (the store is unreachable, stalled or throttling)", after.as_secs_f64())]
    TimedOut {
        key: String,
        after: std::time::Duration,
    },
    #[error("reading {key}: {source}")]
    Store {
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Why a write, copy, delete or head request failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} {key}: {source}")]
pub struct WriteError {
    pub op: &'static str,
    pub key: String,
    pub kind: WriteErrorKind,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// The class of a [`WriteError`], for the caller's decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteErrorKind {
    NotFound,
    Denied,
    /// Anything else: after `object_store`'s own retries, possibly transient.
    Other,
}

/// The longest key S3 and OSS accept, in bytes of UTF-8.
pub const MAX_KEY_LEN: usize = 1024;

/// What a HEAD tells of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadMeta {
    pub size: u64,
    pub etag: Option<String>,
    pub attrs: crate::attrs::Attrs,
    /// The `mtime` metadata, if set.
    pub mtime_ms: Option<i64>,
}

/// What an upload records in the object's user metadata besides its bytes (see
/// [`crate::attrs`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadMeta {
    pub mtime_ms: Option<i64>,
    pub attrs: crate::attrs::Attrs,
}

impl UploadMeta {
    /// Only an mtime.
    pub fn mtime(ms: i64) -> Self {
        Self {
            mtime_ms: Some(ms),
            attrs: Default::default(),
        }
    }
}

/// A multipart upload in progress. Parts are sent in the order `put_part` is called; their
/// futures may run concurrently.
pub struct MultipartWriter {
    inner: Box<dyn MultipartUpload>,
    key: String,
    metrics: Arc<Metrics>,
    /// Bytes handed to `put_part` so far.
    queued: u64,
}

impl MultipartWriter {
    /// Starts sending the next part; the returned future owns everything it needs.
    pub fn put_part(
        &mut self,
        bytes: Bytes,
    ) -> impl std::future::Future<Output = Result<(), WriteError>> + Send + 'static {
        Metrics::add(&self.metrics.put_requests, 1);
        Metrics::add(&self.metrics.sent_bytes, bytes.len() as u64);
        self.queued += bytes.len() as u64;
        let fut = self.inner.put_part(PutPayload::from_bytes(bytes));
        let key = self.key.clone();
        async move {
            fut.await
                .map_err(|e| write_error("upload part of", &key, e))
        }
    }

    /// Completes the upload if its parts hold exactly `len` bytes (else aborts it: a part
    /// missing would make a shorter object visible). Returns the ETag.
    pub async fn complete_exact(self, len: u64) -> Result<Option<String>, WriteError> {
        if self.queued != len {
            let why = format!("parts hold {} bytes, the file {len}", self.queued);
            let key = self.key.clone();
            self.abort().await;
            return Err(WriteError {
                op: "complete upload of",
                key,
                kind: WriteErrorKind::Other,
                source: why.into(),
            });
        }
        self.complete().await
    }

    /// Completes the upload; the object becomes visible under its key. Returns its ETag.
    pub async fn complete(mut self) -> Result<Option<String>, WriteError> {
        Metrics::add(&self.metrics.put_requests, 1);
        let r = self
            .inner
            .complete()
            .await
            .map_err(|e| write_error("complete upload of", &self.key, e))?;
        Ok(r.e_tag)
    }

    /// Abandons the upload; nothing becomes visible.
    pub async fn abort(mut self) {
        if let Err(e) = self.inner.abort().await {
            tracing::debug!(key = %self.key, "aborting a multipart upload failed: {e}");
        }
    }
}

fn write_error(op: &'static str, key: &str, e: object_store::Error) -> WriteError {
    let kind = match e {
        object_store::Error::NotFound { .. } => WriteErrorKind::NotFound,
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => WriteErrorKind::Denied,
        _ => WriteErrorKind::Other,
    };
    WriteError {
        op,
        key: key.to_string(),
        kind,
        source: Box::new(e),
    }
}

/// Errors that stop a source from being used at all.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("bad source URL {url:?}: {why}")]
    BadUrl { url: String, why: String },
    #[error("bad option: {0}")]
    BadOption(String),
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialError),
    #[error("cannot reach {what}: {why}")]
    Unreachable { what: String, why: String },
    #[error("access denied to {what}: {why}")]
    Denied { what: String, why: String },
    #[error("bucket {bucket} does not exist")]
    NoBucket { bucket: String },
    #[error("{what}: {why}")]
    Other { what: String, why: String },
}

/// How many times a read whose body failed half-way is retried from the start of its range.
/// `object_store` already retries failed requests; this covers bodies cut mid-transfer.
const BODY_RETRIES: u32 = 3;

/// A connected source: an object store, a lister, and where the prefix is.
#[derive(Debug, Clone)]
pub struct ObjectSource {
    source: Source,
    store: Arc<dyn ObjectStore>,
    lister: Arc<dyn Lister>,
    metrics: Arc<Metrics>,
    /// The kind of full-object checksum the store last stated (see [`Self::checksum_kind`]).
    checksum_seen: Arc<std::sync::Mutex<Option<checksum::FullChecksum>>>,
}

impl ObjectSource {
    /// Connects to `source`: resolves credentials and builds clients. Makes no request.
    pub async fn connect(
        source: Source,
        options: &StoreOptions,
        env: &dyn credentials::Env,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SourceError> {
        let (store, lister) = source::build(&source, options, env, metrics.clone()).await?;
        Ok(Self {
            source,
            store,
            lister,
            metrics,
            checksum_seen: Arc::default(),
        })
    }

    /// A source over any store, listed through `object_store` itself (tests and in-memory use).
    pub fn from_store(source: Source, store: Arc<dyn ObjectStore>, metrics: Arc<Metrics>) -> Self {
        let lister = Arc::new(list::StoreLister::new(store.clone()));
        Self {
            source,
            store,
            lister,
            metrics,
            checksum_seen: Arc::default(),
        }
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The kind of full-object checksum this store states, for CRCs computed before its answer:
    /// the kind it last sent, or before any, the one its protocol uses (OSS's CRC-64/XZ, S3's
    /// CRC-64/NVME). The value is 0.
    pub fn checksum_kind(&self) -> checksum::FullChecksum {
        let seen = *self.checksum_seen.lock().unwrap();
        seen.unwrap_or(match self.source.kind {
            SourceKind::Oss => checksum::FullChecksum::Crc64Xz(0),
            SourceKind::S3 | SourceKind::File => checksum::FullChecksum::Crc64Nvme(0),
        })
        .with_value(0)
    }

    fn saw_checksum(&self, c: Option<checksum::FullChecksum>) -> Option<checksum::FullChecksum> {
        if let Some(c) = c {
            *self.checksum_seen.lock().unwrap() = Some(c);
        }
        c
    }

    /// The full key of `rel`, a key relative to the prefix.
    pub fn full_key(&self, rel: &str) -> String {
        format!("{}{}", self.source.prefix, rel)
    }

    fn path(&self, rel: &str) -> Result<Path, ReadError> {
        let key = self.full_key(rel);
        Path::parse(&key).map_err(|e| ReadError::Store {
            key,
            source: Box::new(e),
        })
    }

    /// Reads `range` of the object `rel`, pinned to `etag` and the expected total `size`.
    ///
    /// The request carries `If-Match` when an etag is known; the response's etag and total size
    /// are checked as well, for servers that ignore `If-Match`. A mismatch is
    /// [`ReadError::Changed`]; a missing object is [`ReadError::Gone`]. Never returns bytes of
    /// another version, and never fewer bytes than asked for within the object.
    pub async fn get_range(
        &self,
        rel: &str,
        range: Range<u64>,
        etag: Option<&str>,
        size: u64,
    ) -> Result<Bytes, ReadError> {
        let wanted = (range.end - range.start) as usize;
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            chunks.clear();
            let r = self
                .get_range_chunks(rel, range.clone(), etag, size, |_, chunk| {
                    chunks.push(chunk);
                    std::future::ready(Ok(()))
                })
                .await;
            match r {
                // Damaged on the way: fetch it again, a few times.
                Err(ReadError::Corrupt { .. }) if attempt <= BODY_RETRIES => {
                    tracing::warn!(key = %self.full_key(rel), attempt, "an object's bytes did not match its checksum; fetching it again");
                }
                r => break r?,
            }
        }
        Ok(match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.pop().expect("one chunk"),
            _ => {
                let mut all = Vec::with_capacity(wanted);
                for c in chunks {
                    all.extend_from_slice(&c);
                }
                all.into()
            }
        })
    }

    /// Like [`Self::get_range`], but hands the body to `sink` chunk by chunk (with each chunk's
    /// offset) instead of collecting it, so a caller can write large ranges with little memory.
    /// A body cut mid-transfer is resumed from where it stopped, up to `BODY_RETRIES` times.
    /// The same pinning applies: `If-Match`, and the response's ETag and total size checked.
    pub async fn get_range_chunks<F, Fut>(
        &self,
        rel: &str,
        range: Range<u64>,
        etag: Option<&str>,
        size: u64,
        mut sink: F,
    ) -> Result<(), ReadError>
    where
        F: FnMut(u64, Bytes) -> Fut,
        Fut: std::future::Future<Output = Result<(), ReadError>>,
    {
        use futures::StreamExt;
        let path = self.path(rel)?;
        let mut pos = range.start;
        let mut attempt = 0;
        // A read of the whole object is checked against the store's checksum, if it sent one.
        let whole = range.start == 0 && range.end == size && size > 0;
        let mut hasher: Option<checksum::Hasher> = None;
        while pos < range.end {
            attempt += 1;
            let options = GetOptions {
                if_match: etag.map(str::to_string),
                range: Some(GetRange::Bounded(pos..range.end)),
                ..Default::default()
            };
            Metrics::add(&self.metrics.get_requests, 1);
            let started = Instant::now();
            let result = match self.store.get_opts(&path, options).await {
                Ok(r) => r,
                Err(e) => {
                    Metrics::add(&self.metrics.get_errors, 1);
                    return Err(self.map_error(rel, etag, e));
                }
            };
            self.metrics
                .get_first_byte_seconds
                .observe(started.elapsed());
            let changed = match (etag, result.meta.e_tag.as_deref()) {
                (Some(pinned), Some(got)) => pinned != got,
                _ => false,
            };
            if changed || result.meta.size != size {
                return Err(ReadError::Changed {
                    key: self.full_key(rel),
                    pinned: etag.unwrap_or("(size only)").to_string(),
                });
            }
            if whole && pos == 0 {
                hasher = self
                    .saw_checksum(result.extensions.get::<checksum::FullChecksum>().copied())
                    .map(|c| c.hasher());
            }
            let mut body = result.into_stream();
            let mut cut = None;
            while let Some(chunk) = body.next().await {
                match chunk {
                    Ok(c) => {
                        let n = c.len() as u64;
                        if pos + n > range.end {
                            return Err(ReadError::Short {
                                key: self.full_key(rel),
                                wanted: range.end - range.start,
                                got: pos + n - range.start,
                            });
                        }
                        if let Some(h) = &mut hasher {
                            h.update(&c);
                        }
                        sink(pos, c).await?;
                        pos += n;
                        Metrics::add(&self.metrics.get_bytes, n);
                    }
                    Err(e) => {
                        cut = Some(e);
                        break;
                    }
                }
            }
            self.metrics.get_seconds.observe(started.elapsed());
            if pos >= range.end {
                break;
            }
            Metrics::add(&self.metrics.get_errors, 1);
            if attempt > BODY_RETRIES {
                return Err(match cut {
                    Some(e) => self.map_error(rel, etag, e),
                    None => ReadError::Short {
                        key: self.full_key(rel),
                        wanted: range.end - range.start,
                        got: pos - range.start,
                    },
                });
            }
            tracing::warn!(key = %self.full_key(rel), attempt, at = pos, "body of ranged GET stopped early, resuming");
            tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
        }
        if let Some(Err((stated, computed))) = hasher.map(|h| h.verify()) {
            Metrics::add(&self.metrics.checksum_mismatches, 1);
            return Err(ReadError::Corrupt {
                key: self.full_key(rel),
                stated: stated.to_string(),
                computed: computed.to_string(),
            });
        }
        Ok(())
    }

    fn map_error(&self, rel: &str, etag: Option<&str>, e: object_store::Error) -> ReadError {
        let key = self.full_key(rel);
        match e {
            object_store::Error::Precondition { .. } => ReadError::Changed {
                key,
                pinned: etag.unwrap_or_default().to_string(),
            },
            object_store::Error::NotFound { ref source, .. } => {
                tracing::debug!("not found: {source}");
                ReadError::Gone { key }
            }
            other => ReadError::Store {
                key,
                source: Box::new(other),
            },
        }
    }

    /// Reads a whole object by its key relative to the prefix; `None` if it does not exist.
    pub async fn get_all(&self, rel: &str) -> Result<Option<Bytes>, SourceError> {
        let path = Path::parse(self.full_key(rel)).map_err(|e| self.other(rel, e))?;
        Metrics::add(&self.metrics.get_requests, 1);
        match self.store.get(&path).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| self.classify(rel, e))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.classify(rel, e)),
        }
    }

    /// Writes a whole object by its key relative to the prefix.
    pub async fn put(&self, rel: &str, bytes: Bytes) -> Result<(), SourceError> {
        let path = Path::parse(self.full_key(rel)).map_err(|e| self.other(rel, e))?;
        Metrics::add(&self.metrics.put_requests, 1);
        self.store
            .put(&path, PutPayload::from_bytes(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.classify(rel, e))
    }

    fn write_path(&self, op: &'static str, rel: &str) -> Result<Path, WriteError> {
        let key = self.full_key(rel);
        Path::parse(&key).map_err(|e| WriteError {
            op,
            key,
            kind: WriteErrorKind::Other,
            source: Box::new(e),
        })
    }

    fn attributes(&self, meta: &UploadMeta) -> Attributes {
        let mut a = Attributes::new();
        // A local directory cannot keep user metadata.
        if self.source.kind == SourceKind::File {
            return a;
        }
        for (name, value) in meta.attrs.to_metadata(meta.mtime_ms) {
            a.insert(
                Attribute::Metadata(name.into()),
                AttributeValue::from(value),
            );
        }
        a
    }

    /// Writes a whole object in one request, with `meta` in user metadata. Returns the ETag.
    pub async fn put_object(
        &self,
        rel: &str,
        bytes: Bytes,
        meta: &UploadMeta,
    ) -> Result<Option<String>, WriteError> {
        let path = self.write_path("put", rel)?;
        Metrics::add(&self.metrics.put_requests, 1);
        Metrics::add(&self.metrics.sent_bytes, bytes.len() as u64);
        let options = PutOptions {
            attributes: self.attributes(meta),
            ..Default::default()
        };
        let r = self
            .store
            .put_opts(&path, PutPayload::from_bytes(bytes), options)
            .await
            .map_err(|e| write_error("put", &self.full_key(rel), e))?;
        Ok(r.e_tag)
    }

    /// Starts a multipart upload of `rel`, with `meta` in user metadata.
    pub async fn start_multipart(
        &self,
        rel: &str,
        meta: &UploadMeta,
    ) -> Result<MultipartWriter, WriteError> {
        let path = self.write_path("start upload of", rel)?;
        Metrics::add(&self.metrics.put_requests, 1);
        let options = PutMultipartOptions {
            attributes: self.attributes(meta),
            ..Default::default()
        };
        let inner = self
            .store
            .put_multipart_opts(&path, options)
            .await
            .map_err(|e| write_error("start upload of", &self.full_key(rel), e))?;
        Ok(MultipartWriter {
            queued: 0,
            inner,
            key: self.full_key(rel),
            metrics: self.metrics.clone(),
        })
    }

    /// Deletes `rel`; a missing object is not an error.
    pub async fn delete(&self, rel: &str) -> Result<(), WriteError> {
        let path = self.write_path("delete", rel)?;
        Metrics::add(&self.metrics.delete_requests, 1);
        let key = self.full_key(rel);
        match self.lister.delete(key.as_bytes()).await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => {
                return Err(WriteError {
                    op: "delete",
                    kind: match e {
                        SourceError::Denied { .. } => WriteErrorKind::Denied,
                        _ => WriteErrorKind::Other,
                    },
                    key,
                    source: Box::new(e),
                })
            }
        }
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(write_error("delete", &self.full_key(rel), e)),
        }
    }

    /// Copies `from` to `to` on the server (both relative to the prefix).
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), WriteError> {
        let src = self.write_path("copy", from)?;
        let dst = self.write_path("copy to", to)?;
        Metrics::add(&self.metrics.copy_requests, 1);
        self.store
            .copy(&src, &dst)
            .await
            .map_err(|e| write_error("copy", &self.full_key(from), e))
    }

    /// One HEAD of `rel` (pinned to `etag` if given): its size, ETag, and the full-object
    /// checksum the store states, if any. A missing object is [`ReadError::Gone`].
    async fn head_stating(
        &self,
        rel: &str,
        etag: Option<&str>,
    ) -> Result<(u64, Option<String>, Option<checksum::FullChecksum>), ReadError> {
        let path = self.path(rel)?;
        Metrics::add(&self.metrics.head_requests, 1);
        let options = GetOptions {
            if_match: etag.map(str::to_string),
            head: true,
            ..Default::default()
        };
        let r = self
            .store
            .get_opts(&path, options)
            .await
            .map_err(|e| self.map_error(rel, etag, e))?;
        let sum = self.saw_checksum(r.extensions.get::<checksum::FullChecksum>().copied());
        Ok((r.meta.size, r.meta.e_tag, sum))
    }

    /// The full-object checksum the store states for `rel` (one HEAD, pinned to `etag`), if
    /// it states one.
    pub async fn full_checksum(
        &self,
        rel: &str,
        etag: Option<&str>,
    ) -> Result<Option<checksum::FullChecksum>, ReadError> {
        Ok(self.head_stating(rel, etag).await?.2)
    }

    /// Size, ETag and the full-object checksum the store states for `rel` (one HEAD), or
    /// `None` if it does not exist.
    pub async fn head_with_checksum(
        &self,
        rel: &str,
    ) -> Result<Option<(u64, Option<String>, Option<checksum::FullChecksum>)>, ReadError> {
        match self.head_stating(rel, None).await {
            Ok(head) => Ok(Some(head)),
            Err(ReadError::Gone { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Size, ETag, attributes and mtime metadata of `rel` (one HEAD), or `None` if it does not
    /// exist.
    pub async fn head_meta(&self, rel: &str) -> Result<Option<HeadMeta>, ReadError> {
        let path = self.path(rel)?;
        Metrics::add(&self.metrics.head_requests, 1);
        let options = GetOptions {
            head: true,
            ..Default::default()
        };
        let r = match self.store.get_opts(&path, options).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.map_error(rel, None, e)),
        };
        let (attrs, mtime_ms) = crate::attrs::Attrs::from_metadata(|name| {
            r.attributes
                .get(&Attribute::Metadata(name.to_string().into()))
                .map(|v| v.as_ref())
        });
        Ok(Some(HeadMeta {
            size: r.meta.size,
            etag: r.meta.e_tag.clone(),
            attrs,
            mtime_ms,
        }))
    }

    /// Replaces the metadata of the existing object `rel` with `meta`: a server-side copy onto
    /// itself, not a re-upload. Where the store's client cannot send such a copy (tests'
    /// in-memory stores), the object is read and written back. Returns the new ETag, if known.
    pub async fn set_meta(
        &self,
        rel: &str,
        meta: &UploadMeta,
    ) -> Result<Option<String>, WriteError> {
        let key = self.full_key(rel);
        Metrics::add(&self.metrics.copy_requests, 1);
        let pairs = meta.attrs.to_metadata(meta.mtime_ms);
        let other = |e: SourceError| WriteError {
            op: "set metadata of",
            key: key.clone(),
            kind: match e {
                SourceError::Denied { .. } => WriteErrorKind::Denied,
                _ => WriteErrorKind::Other,
            },
            source: Box::new(e),
        };
        match self
            .lister
            .replace_metadata(key.as_bytes(), &pairs, false)
            .await
        {
            Ok(Some(etag)) => return Ok(etag),
            Ok(None) => {}
            Err(e) => return Err(other(e)),
        }
        let bytes = self.get_all(rel).await.map_err(other)?.ok_or_else(|| {
            other(SourceError::Other {
                what: key.clone(),
                why: "the object is gone".into(),
            })
        })?;
        self.put_object(rel, bytes, meta).await
    }

    /// Creates the directory marker of `rel_dir` carrying `meta` (a directory's mode, owner
    /// and times), or replaces the metadata of the existing one.
    pub async fn marker_with_meta(
        &self,
        rel_dir: &str,
        meta: &UploadMeta,
    ) -> Result<(), SourceError> {
        let key = format!("{}/", self.full_key(rel_dir));
        Metrics::add(&self.metrics.put_requests, 1);
        let pairs = meta.attrs.to_metadata(meta.mtime_ms);
        match self
            .lister
            .replace_metadata(key.as_bytes(), &pairs, true)
            .await?
        {
            Some(_) => Ok(()),
            None => self.lister.marker(key.as_bytes(), true).await,
        }
    }

    /// Size and ETag of `rel`, or `None` if it does not exist.
    pub async fn head(&self, rel: &str) -> Result<Option<(u64, Option<String>)>, WriteError> {
        let path = self.write_path("head", rel)?;
        Metrics::add(&self.metrics.head_requests, 1);
        match self.store.head(&path).await {
            Ok(m) => Ok(Some((m.size, m.e_tag))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(write_error("head", &self.full_key(rel), e)),
        }
    }

    /// One page of a listing under `prefix` (a full key prefix, not relative).
    pub async fn list_page(
        &self,
        prefix: &[u8],
        delimited: bool,
        token: Option<String>,
    ) -> Result<ListPage, SourceError> {
        Metrics::add(&self.metrics.list_requests, 1);
        self.lister.list(prefix, delimited, token).await
    }

    /// The first page of the keys under `prefix` after `after` (exclusive): a listing that
    /// starts in the middle of a prefix, for listing one prefix in several ranges at once.
    pub async fn list_page_after(
        &self,
        prefix: &[u8],
        delimited: bool,
        after: &[u8],
    ) -> Result<ListPage, SourceError> {
        Metrics::add(&self.metrics.list_requests, 1);
        self.lister.list_after(prefix, delimited, after).await
    }

    /// Creates or deletes the directory marker of `rel_dir` (a key relative to the prefix,
    /// without the trailing slash).
    pub async fn marker(&self, rel_dir: &str, create: bool) -> Result<(), SourceError> {
        let key = format!("{}/", self.full_key(rel_dir));
        Metrics::add(
            if create {
                &self.metrics.put_requests
            } else {
                &self.metrics.delete_requests
            },
            1,
        );
        self.lister.marker(key.as_bytes(), create).await
    }

    /// Checks that the bucket answers and the credentials are accepted, with one small listing.
    pub async fn probe(&self) -> Result<(), SourceError> {
        let prefix = self.source.prefix.as_bytes().to_vec();
        self.lister.probe(&prefix).await
    }

    fn other(&self, rel: &str, e: impl std::fmt::Display) -> SourceError {
        SourceError::Other {
            what: self.full_key(rel),
            why: e.to_string(),
        }
    }

    fn classify(&self, rel: &str, e: object_store::Error) -> SourceError {
        let what = format!("{}/{}", self.source.display_root(), rel);
        let why = e.to_string();
        match e {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => SourceError::Denied { what, why },
            _ => SourceError::Other { what, why },
        }
    }
}

//! Raw listings: every key exactly as the store has it.
//!
//! [`S3Lister`] speaks ListObjectsV2 itself (signed with `object_store`'s SigV4 signer) and asks
//! for `encoding-type=url`, so keys with control characters or odd segments survive intact.
//! [`LocalLister`] walks a directory and keeps file names as raw bytes, invalid UTF-8 included.
//! [`StoreLister`] lists through any `ObjectStore`, for in-memory tests.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AwsAuthorizer, AwsCredentialProvider};
use object_store::path::Path;
use object_store::ObjectStore;

use super::SourceError;

/// Keys per listing page; the S3 maximum.
pub const PAGE_SIZE: usize = 1000;

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawObject {
    /// The full key, as bytes.
    pub key: Vec<u8>,
    pub size: u64,
    /// As the store sent it, quotes included.
    pub etag: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub mtime_ms: i64,
}

/// One page of a listing.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<RawObject>,
    /// Common prefixes (with a delimited listing), full keys ending in `/`.
    pub prefixes: Vec<Vec<u8>>,
    pub next: Option<String>,
}

/// Lists keys. `prefix` is a full key prefix; `delimited` groups by `/`.
#[async_trait::async_trait]
pub trait Lister: std::fmt::Debug + Send + Sync {
    async fn list(
        &self,
        prefix: &[u8],
        delimited: bool,
        token: Option<String>,
    ) -> Result<ListPage, SourceError>;

    /// The first page of the keys after `after` (exclusive), as ListObjectsV2's `start-after`
    /// gives it; later pages follow with the page's token as usual. The default lists from the
    /// start and drops what is not after `after`: correct, not faster.
    async fn list_after(
        &self,
        prefix: &[u8],
        delimited: bool,
        after: &[u8],
    ) -> Result<ListPage, SourceError> {
        let mut page = self.list(prefix, delimited, None).await?;
        page.objects.retain(|o| o.key.as_slice() > after);
        // A common prefix may still hold keys after `after` if it sorts after it or contains it.
        page.prefixes
            .retain(|p| p.as_slice() > after || after.starts_with(p));
        Ok(page)
    }

    /// Checks that the bucket answers: one listing of at most one key.
    async fn probe(&self, prefix: &[u8]) -> Result<(), SourceError> {
        self.list(prefix, true, None).await.map(|_| ())
    }

    /// Creates (`create`) or deletes a directory marker, the empty object `key` ending in `/`
    /// (`object_store` cannot name such keys). A missing marker is not an error on delete.
    async fn marker(&self, key: &[u8], create: bool) -> Result<(), SourceError>;

    /// Deletes one object with a plain DELETE, if this lister speaks HTTP itself (`object_store`
    /// deletes through the multi-object API, which not every S3-compatible server offers).
    /// `Ok(false)`: not handled here.
    async fn delete(&self, _key: &[u8]) -> Result<bool, SourceError> {
        Ok(false)
    }

    /// The S3 client itself, for requests `object_store` cannot make (multipart uploads with
    /// server-side copies of ranges); `None` for other listers.
    fn s3(&self) -> Option<&S3Lister> {
        None
    }

    /// Replaces the user metadata of object `key` (`x-amz-meta-` names without the prefix) by
    /// copying it onto itself, if this lister speaks HTTP itself; `Ok(None)`: not handled here.
    /// `marker` says `key` is a directory marker, which may not exist yet (it is created).
    /// Returns the object's new ETag, if the store sent one.
    async fn replace_metadata(
        &self,
        _key: &[u8],
        _meta: &[(&'static str, String)],
        _marker: bool,
    ) -> Result<Option<Option<String>>, SourceError> {
        Ok(None)
    }
}

/// Path encoding of a key: everything but unreserved characters and `/`.
const KEY_PATH: &percent_encoding::AsciiSet = &QUERY.remove(b'/');

/// Everything [`S3Lister`] needs.
#[derive(Debug, Clone)]
pub struct S3ListerConfig {
    /// The bucket endpoint: `https://bucket.host` or `http://host/bucket`.
    pub endpoint: String,
    pub region: String,
    /// Requests go through the same transport as `object_store`'s (deadlines, throttling,
    /// the endpoint's adaptive limit).
    pub transport: super::transport::Transport,
    /// `None` sends unsigned requests.
    pub credentials: Option<AwsCredentialProvider>,
    pub bucket: String,
}

/// ListObjectsV2 over HTTP.
#[derive(Debug)]
pub struct S3Lister {
    config: S3ListerConfig,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListBucketResult {
    #[serde(default)]
    contents: Vec<Contents>,
    #[serde(default)]
    common_prefixes: Vec<CommonPrefix>,
    #[serde(default)]
    is_truncated: bool,
    next_continuation_token: Option<String>,
    encoding_type: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Contents {
    key: String,
    size: u64,
    #[serde(rename = "ETag")]
    e_tag: Option<String>,
    last_modified: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CommonPrefix {
    prefix: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody {
    code: Option<String>,
    message: Option<String>,
}

/// Query-string encoding as SigV4 wants it: everything but unreserved characters.
const QUERY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn enc(bytes: &[u8]) -> String {
    percent_encoding::percent_encode(bytes, QUERY).to_string()
}

fn dec(s: &str, url: bool) -> Vec<u8> {
    if url {
        percent_encoding::percent_decode_str(s).collect()
    } else {
        s.as_bytes().to_vec()
    }
}

impl S3Lister {
    pub fn new(config: S3ListerConfig) -> Self {
        Self { config }
    }

    /// Builds the request for `method` `url` and signs it (SigV4, unless unsigned).
    async fn signed(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(String, String)],
        body: &Bytes,
        what: &(dyn Fn() -> String + Sync),
    ) -> Result<object_store::client::HttpRequest, SourceError> {
        let mut builder = http::Request::builder().method(method.clone()).uri(url);
        if method != http::Method::GET {
            builder = builder.header(http::header::CONTENT_LENGTH, body.len().to_string());
        }
        for (name, value) in headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let mut request: object_store::client::HttpRequest = builder
            .body(object_store::client::HttpRequestBody::from(body.clone()))
            .map_err(|e| SourceError::Other {
                what: what(),
                why: format!("building a request: {e}"),
            })?;
        if let Some(provider) = &self.config.credentials {
            let credential = provider
                .get_credential()
                .await
                .map_err(|e| SourceError::Denied {
                    what: what(),
                    why: e.to_string(),
                })?;
            AwsAuthorizer::new(&credential, "s3", &self.config.region)
                .try_authorize(&mut request, None)
                .map_err(|e| SourceError::Other {
                    what: what(),
                    why: format!("signing: {e}"),
                })?;
        }
        Ok(request)
    }

    /// Sends a bodiless request, retrying transport errors, timeouts, 5xx and throttling
    /// answers with backoff; returns the final status and the whole body.
    async fn send(
        &self,
        method: http::Method,
        url: &str,
        what: &(dyn Fn() -> String + Sync),
    ) -> Result<(http::StatusCode, Bytes), SourceError> {
        self.send_with(method, url, &[], what).await
    }

    /// [`Self::send`] with extra (signed) headers.
    async fn send_with(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(String, String)],
        what: &(dyn Fn() -> String + Sync),
    ) -> Result<(http::StatusCode, Bytes), SourceError> {
        let (status, _, body) = self
            .exchange(method, url, headers, Bytes::new(), what)
            .await?;
        Ok((status, body))
    }

    /// One request with signed headers and a body, retried as [`Self::send`] is; returns the
    /// final status, headers and whole body.
    pub(crate) async fn exchange(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(String, String)],
        body: Bytes,
        what: &(dyn Fn() -> String + Sync),
    ) -> Result<(http::StatusCode, http::HeaderMap, Bytes), SourceError> {
        let mut delay = std::time::Duration::from_millis(100);
        let attempts = super::MAX_RETRIES as u32 + 1;
        for attempt in 1..=attempts {
            let request = self
                .signed(method.clone(), url, headers, &body, what)
                .await?;
            let failure = match self.config.transport.send(request).await {
                Ok(r) => {
                    let status = r.status();
                    let retryable = status.is_server_error() || status.as_u16() == 429;
                    if retryable && attempt < attempts {
                        format!("HTTP {status}")
                    } else {
                        let response_headers = r.headers().clone();
                        match r.into_body().bytes().await {
                            Ok(body) => return Ok((status, response_headers, body)),
                            Err(e) => e.to_string(),
                        }
                    }
                }
                Err(e) => {
                    // The transport already retried what a retry can fix of these.
                    if matches!(
                        e.kind(),
                        object_store::client::HttpErrorKind::Unknown
                            | object_store::client::HttpErrorKind::Decode
                    ) {
                        return Err(SourceError::Unreachable {
                            what: what(),
                            why: e.to_string(),
                        });
                    }
                    e.to_string()
                }
            };
            if attempt == attempts {
                return Err(SourceError::Unreachable {
                    what: what(),
                    why: format!("{failure} (after {attempts} attempts)"),
                });
            }
            tracing::warn!(
                attempt,
                "request for {} failed, retrying: {failure}",
                what()
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(super::source::MAX_BACKOFF);
        }
        unreachable!("the last attempt returns")
    }

    async fn request(
        &self,
        prefix: &[u8],
        delimited: bool,
        token: Option<&str>,
        start_after: Option<&[u8]>,
        max_keys: usize,
    ) -> Result<ListPage, SourceError> {
        let what = || format!("bucket {} at {}", self.config.bucket, self.config.endpoint);
        // Parameters in sorted order, as the canonical request wants them.
        let mut query = String::new();
        if let Some(t) = token {
            query.push_str(&format!("continuation-token={}&", enc(t.as_bytes())));
        }
        if delimited {
            query.push_str("delimiter=%2F&");
        }
        query.push_str("encoding-type=url&list-type=2");
        query.push_str(&format!("&max-keys={max_keys}"));
        query.push_str(&format!("&prefix={}", enc(prefix)));
        if let Some(a) = start_after {
            query.push_str(&format!("&start-after={}", enc(a)));
        }
        let url = format!("{}/?{query}", self.config.endpoint.trim_end_matches('/'));
        let (status, body) = self.send(http::Method::GET, &url, &what).await?;
        if !status.is_success() {
            let err: Option<ErrorBody> = quick_xml::de::from_reader(body.as_ref()).ok();
            let code = err
                .as_ref()
                .and_then(|e| e.code.clone())
                .unwrap_or_default();
            let message = err.and_then(|e| e.message).unwrap_or_default();
            let why = format!("HTTP {status} {code} {message}").trim().to_string();
            return Err(match (status.as_u16(), code.as_str()) {
                (404, "NoSuchBucket") => SourceError::NoBucket {
                    bucket: self.config.bucket.clone(),
                },
                (401 | 403, _) => SourceError::Denied { what: what(), why },
                _ => SourceError::Other { what: what(), why },
            });
        }
        parse_list_page(&body).map_err(|why| SourceError::Other { what: what(), why })
    }
}

/// One ListObjectsV2 answer body: its objects (keys decoded when the answer says they are
/// URL-encoded), common prefixes, and the continuation token when it is truncated.
pub fn parse_list_page(body: &[u8]) -> Result<ListPage, String> {
    let parsed: ListBucketResult =
        quick_xml::de::from_reader(body).map_err(|e| format!("unparseable listing: {e}"))?;
    let url_encoded = parsed.encoding_type.as_deref() == Some("url");
    let objects = parsed
        .contents
        .into_iter()
        .map(|c| RawObject {
            key: dec(&c.key, url_encoded),
            size: c.size,
            etag: c.e_tag.filter(|e| !e.is_empty()),
            mtime_ms: c
                .last_modified
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                .map_or(0, |t| t.timestamp_millis()),
        })
        .collect();
    let prefixes = parsed
        .common_prefixes
        .into_iter()
        .map(|p| dec(&p.prefix, url_encoded))
        .collect();
    Ok(ListPage {
        objects,
        prefixes,
        next: parsed
            .is_truncated
            .then_some(parsed.next_continuation_token)
            .flatten(),
    })
}

impl S3Lister {
    /// The URL of `key` (a full key) with `query` (already encoded, may be empty).
    pub(crate) fn object_url(&self, key: &[u8], query: &str) -> String {
        let base = format!(
            "{}/{}",
            self.config.endpoint.trim_end_matches('/'),
            percent_encoding::percent_encode(key, KEY_PATH)
        );
        if query.is_empty() {
            base
        } else {
            format!("{base}?{query}")
        }
    }

    /// `x-amz-copy-source` for `key` of this bucket.
    pub(crate) fn copy_source(&self, key: &[u8]) -> String {
        format!(
            "/{}/{}",
            self.config.bucket,
            percent_encoding::percent_encode(key, KEY_PATH)
        )
    }
}

/// User metadata as request headers (`x-amz-meta-NAME`).
pub(crate) fn meta_headers(meta: &[(&'static str, String)]) -> Vec<(String, String)> {
    meta.iter()
        .map(|(k, v)| (format!("x-amz-meta-{k}"), v.clone()))
        .collect()
}

/// The `Code` of an S3 error body, if it is one.
pub(crate) fn error_code(body: &[u8]) -> Option<String> {
    if !body.windows(7).any(|w| w == b"<Error>") {
        return None;
    }
    let err: Option<ErrorBody> = quick_xml::de::from_reader(body).ok();
    Some(err.and_then(|e| e.code).unwrap_or_default())
}

/// A CopyObject answer: S3 may send 200 with an `<Error>` body when the copy failed late.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CopyResult {
    #[serde(rename = "ETag")]
    e_tag: Option<String>,
}

impl S3Lister {
    /// Sets the user metadata of `key`: a copy onto itself with `REPLACE`, or for a directory
    /// marker, a PUT of the empty marker with the metadata (the same bytes either way).
    async fn metadata_request(
        &self,
        key: &[u8],
        meta: &[(&'static str, String)],
        marker: bool,
    ) -> Result<Option<String>, SourceError> {
        let what = || {
            format!(
                "metadata of {} in bucket {}",
                String::from_utf8_lossy(key),
                self.config.bucket
            )
        };
        let url = self.object_url(key, "");
        let mut headers = meta_headers(meta);
        if !marker {
            headers.push(("x-amz-copy-source".into(), self.copy_source(key)));
            headers.push(("x-amz-metadata-directive".into(), "REPLACE".into()));
        }
        let (status, body) = self
            .send_with(http::Method::PUT, &url, &headers, &what)
            .await?;
        let failed = |why: String| match status.as_u16() {
            401 | 403 => SourceError::Denied { what: what(), why },
            404 => SourceError::Other {
                what: what(),
                why: format!("{why}: the object is gone"),
            },
            _ => SourceError::Other { what: what(), why },
        };
        let code = error_code(&body);
        if !status.is_success() {
            let code = code.unwrap_or_default();
            return Err(failed(format!("HTTP {status} {code}").trim().to_string()));
        }
        if marker || body.is_empty() {
            return Ok(None);
        }
        if let Some(code) = code {
            return Err(failed(format!("copy failed: {code}")));
        }
        let result: Option<CopyResult> = quick_xml::de::from_reader(body.as_ref()).ok();
        Ok(result.and_then(|r| r.e_tag))
    }

    async fn marker_request(&self, key: &[u8], create: bool) -> Result<(), SourceError> {
        let what = || {
            format!(
                "marker {} in bucket {}",
                String::from_utf8_lossy(key),
                self.config.bucket
            )
        };
        let url = self.object_url(key, "");
        let method = if create {
            http::Method::PUT
        } else {
            http::Method::DELETE
        };
        let (status, _) = self.send(method, &url, &what).await?;
        if status.is_success() || (!create && status.as_u16() == 404) {
            return Ok(());
        }
        let why = format!("HTTP {status}");
        Err(match status.as_u16() {
            401 | 403 => SourceError::Denied { what: what(), why },
            _ => SourceError::Other { what: what(), why },
        })
    }
}

#[async_trait::async_trait]
impl Lister for S3Lister {
    async fn list(
        &self,
        prefix: &[u8],
        delimited: bool,
        token: Option<String>,
    ) -> Result<ListPage, SourceError> {
        self.request(prefix, delimited, token.as_deref(), None, PAGE_SIZE)
            .await
    }

    async fn list_after(
        &self,
        prefix: &[u8],
        delimited: bool,
        after: &[u8],
    ) -> Result<ListPage, SourceError> {
        self.request(prefix, delimited, None, Some(after), PAGE_SIZE)
            .await
    }

    async fn probe(&self, prefix: &[u8]) -> Result<(), SourceError> {
        self.request(prefix, true, None, None, 1).await.map(|_| ())
    }

    async fn marker(&self, key: &[u8], create: bool) -> Result<(), SourceError> {
        self.marker_request(key, create).await
    }

    async fn replace_metadata(
        &self,
        key: &[u8],
        meta: &[(&'static str, String)],
        marker: bool,
    ) -> Result<Option<Option<String>>, SourceError> {
        self.metadata_request(key, meta, marker).await.map(Some)
    }

    fn s3(&self) -> Option<&S3Lister> {
        Some(self)
    }

    async fn delete(&self, key: &[u8]) -> Result<bool, SourceError> {
        self.marker_request(key, false).await.map(|()| true)
    }
}

/// Lists a local directory. Pages are whole directories: the token is the next directory to
/// read, so a delimited listing is one `read_dir` per call.
#[derive(Debug)]
pub struct LocalLister {
    root: PathBuf,
}

impl LocalLister {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }
}

fn etag_of(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    // The same scheme object_store's LocalFileSystem uses, so If-Match works against it.
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default()
        .as_micros();
    format!("\"{:x}-{:x}-{:x}\"", meta.ino(), mtime, meta.len())
}

#[async_trait::async_trait]
impl Lister for LocalLister {
    async fn list(
        &self,
        prefix: &[u8],
        delimited: bool,
        token: Option<String>,
    ) -> Result<ListPage, SourceError> {
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let root = self.root.clone();
        let prefix = prefix.to_vec();
        let work = move || -> Result<ListPage, SourceError> {
            // The directory part of the prefix, and a name filter for the rest.
            let split = prefix.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
            let (dir_part, name_part) = prefix.split_at(split);
            let mut page = ListPage::default();
            let mut stack = vec![dir_part.to_vec()];
            let _ = token; // whole listings fit in one page
            while let Some(dir) = stack.pop() {
                let path = root.join(std::ffi::OsStr::from_bytes(&dir));
                let entries = match std::fs::read_dir(&path) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        return Err(SourceError::Other {
                            what: path.display().to_string(),
                            why: e.to_string(),
                        })
                    }
                };
                for entry in entries {
                    let entry = entry.map_err(|e| SourceError::Other {
                        what: path.display().to_string(),
                        why: e.to_string(),
                    })?;
                    let name = entry.file_name().into_vec();
                    if dir == dir_part && !name.starts_with(name_part) {
                        continue;
                    }
                    let mut key = dir.clone();
                    key.extend_from_slice(&name);
                    let Ok(meta) = std::fs::metadata(entry.path()) else {
                        continue; // vanished, or a dangling link
                    };
                    if meta.is_dir() {
                        key.push(b'/');
                        if delimited {
                            page.prefixes.push(key);
                        } else {
                            stack.push(key);
                        }
                    } else if meta.is_file() {
                        let mtime_ms = meta
                            .modified()
                            .ok()
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map_or(0, |d| d.as_millis() as i64);
                        page.objects.push(RawObject {
                            key,
                            size: meta.len(),
                            etag: Some(etag_of(&meta)),
                            mtime_ms,
                        });
                    }
                }
            }
            page.objects.sort_by(|a, b| a.key.cmp(&b.key));
            page.prefixes.sort();
            Ok(page)
        };
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| SourceError::Other {
                what: "listing".into(),
                why: e.to_string(),
            })?
    }

    /// A local directory cannot keep user metadata: attributes live in the manifest only.
    async fn replace_metadata(
        &self,
        _key: &[u8],
        _meta: &[(&'static str, String)],
        _marker: bool,
    ) -> Result<Option<Option<String>>, SourceError> {
        Ok(Some(None))
    }

    /// A marker is a directory here.
    async fn marker(&self, key: &[u8], create: bool) -> Result<(), SourceError> {
        use std::os::unix::ffi::OsStrExt;
        let path = self.root.join(std::ffi::OsStr::from_bytes(key));
        let r = if create {
            std::fs::create_dir_all(&path)
        } else {
            match std::fs::remove_dir(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            }
        };
        r.map_err(|e| SourceError::Other {
            what: path.display().to_string(),
            why: e.to_string(),
        })
    }
}

/// Lists through an `ObjectStore` (keys must be valid paths there). For tests.
#[derive(Debug)]
pub struct StoreLister {
    store: Arc<dyn ObjectStore>,
}

impl StoreLister {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }
}

#[async_trait::async_trait]
impl Lister for StoreLister {
    async fn list(
        &self,
        prefix: &[u8],
        delimited: bool,
        _token: Option<String>,
    ) -> Result<ListPage, SourceError> {
        let other = |e: object_store::Error| SourceError::Other {
            what: "listing".into(),
            why: e.to_string(),
        };
        let p = std::str::from_utf8(prefix).map_err(|e| SourceError::Other {
            what: "listing".into(),
            why: e.to_string(),
        })?;
        let dir = p.rsplit_once('/').map_or("", |(d, _)| d);
        let path = (!dir.is_empty()).then(|| Path::from(dir));
        let to_raw = |m: object_store::ObjectMeta| RawObject {
            key: m.location.as_ref().as_bytes().to_vec(),
            size: m.size,
            etag: m.e_tag,
            mtime_ms: m.last_modified.timestamp_millis(),
        };
        let mut page = ListPage::default();
        if delimited {
            let r = self
                .store
                .list_with_delimiter(path.as_ref())
                .await
                .map_err(other)?;
            page.objects = r.objects.into_iter().map(to_raw).collect();
            page.prefixes = r
                .common_prefixes
                .into_iter()
                .map(|p| format!("{}/", p.as_ref()).into_bytes())
                .collect();
        } else {
            let all: Vec<_> = self
                .store
                .list(path.as_ref())
                .try_collect()
                .await
                .map_err(other)?;
            page.objects = all.into_iter().map(to_raw).collect();
        }
        page.objects.retain(|o| o.key.starts_with(prefix));
        page.prefixes.retain(|k| k.starts_with(prefix));
        page.objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(page)
    }

    /// `object_store` paths cannot end in `/`: markers are not kept (directories made through
    /// such a source exist until the mount ends).
    async fn marker(&self, key: &[u8], _create: bool) -> Result<(), SourceError> {
        tracing::debug!(key = %String::from_utf8_lossy(key), "directory markers are not kept by this store");
        Ok(())
    }
}

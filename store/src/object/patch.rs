//! Patch uploads: a new version of an object made mostly of the current version's bytes.
//!
//! A multipart upload whose parts are either server-side copies of ranges of the current
//! object (UploadPartCopy, pinned to its ETag with `x-amz-copy-source-if-match`) or new bytes.
//! An append to a large log, or a small overwrite inside a large file, then sends only what
//! changed, plus one round trip per copied part. S3 and OSS (through its S3 API) offer it;
//! `object_store` has no call for it, so the requests are our own, through the same signed,
//! retrying transport as the listings.
//!
//! Every part but the last must have at least [`MIN_PART`] bytes, and a copied part at most
//! [`MAX_COPY_PART`]; [`plan`] lays parts out within those limits.

use std::ops::Range;

use bytes::Bytes;

use super::list::{error_code, meta_headers, S3Lister};
use super::{ObjectSource, SourceError, UploadMeta, WriteError, WriteErrorKind};
use crate::metrics::Metrics;

/// The smallest part a multipart upload may have, but for its last.
pub const MIN_PART: u64 = 5 << 20;
/// The largest range one UploadPartCopy may copy.
pub const MAX_COPY_PART: u64 = 5 << 30;

/// Where one part's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// This range of the current object.
    Copy(Range<u64>),
    /// This range of the new content, sent.
    Send(Range<u64>),
}

impl Piece {
    pub fn range(&self) -> &Range<u64> {
        match self {
            Piece::Copy(r) | Piece::Send(r) => r,
        }
    }
}

/// Lays out a new version of `new_len` bytes over an object of `old_len` bytes whose bytes
/// outside `dirty` (sorted, disjoint ranges of the new content) are unchanged. Parts are
/// `part` bytes (at least [`MIN_PART`]), after one leading copy of the longest clean prefix
/// when it has at least [`MIN_PART`].
/// `None` when copying would save less than one minimum part: send the file whole then.
pub fn plan(old_len: u64, new_len: u64, dirty: &[Range<u64>], part: u64) -> Option<Vec<Piece>> {
    let part = part.max(MIN_PART);
    let first_dirty = dirty.first().map_or(new_len, |r| r.start);
    let prefix = first_dirty.min(old_len).min(new_len);
    let mut pieces = Vec::new();
    let mut at = 0;
    if prefix >= MIN_PART {
        // The clean prefix, in as few copies as the copy limit allows (each over 2.5 GiB
        // when there are several).
        let copies = prefix.div_ceil(MAX_COPY_PART);
        let each = prefix.div_ceil(copies);
        while at < prefix {
            let end = (at + each).min(prefix);
            pieces.push(Piece::Copy(at..end));
            at = end;
        }
    }
    let clean = |r: &Range<u64>| {
        r.end <= old_len && dirty.iter().all(|d| d.end <= r.start || d.start >= r.end)
    };
    while at < new_len {
        let end = (at + part).min(new_len);
        let r = at..end;
        pieces.push(if clean(&r) {
            Piece::Copy(r)
        } else {
            Piece::Send(r)
        });
        at = end;
    }
    let copied: u64 = pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Copy(r) => Some(r.end - r.start),
            Piece::Send(_) => None,
        })
        .sum();
    (copied >= MIN_PART).then_some(pieces)
}

/// A patch upload in progress. Parts may be added concurrently.
pub struct PatchUpload {
    source: ObjectSource,
    key: String,
    upload_id: String,
    /// The object the copies read, pinned.
    base_etag: String,
    /// Part number, ETag and length of each part added.
    parts: std::sync::Mutex<Vec<(u32, String, u64)>>,
}

impl std::fmt::Debug for PatchUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatchUpload")
            .field("key", &self.key)
            .field("upload_id", &self.upload_id)
            .finish_non_exhaustive()
    }
}

fn source_error(op: &'static str, key: &str, e: SourceError) -> WriteError {
    WriteError {
        op,
        key: key.to_string(),
        kind: match e {
            SourceError::Denied { .. } => WriteErrorKind::Denied,
            _ => WriteErrorKind::Other,
        },
        source: Box::new(e),
    }
}

fn refused(op: &'static str, key: &str, why: String) -> WriteError {
    // A changed base (412) or a store without UploadPartCopy: the caller sends the file whole.
    WriteError {
        op,
        key: key.to_string(),
        kind: WriteErrorKind::Other,
        source: why.into(),
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Initiated {
    upload_id: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Copied {
    #[serde(rename = "ETag")]
    e_tag: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Completed {
    #[serde(rename = "ETag")]
    e_tag: Option<String>,
}

impl ObjectSource {
    fn s3_lister(&self) -> Option<&S3Lister> {
        self.lister.s3()
    }

    /// Starts a patch upload of `rel` over its current object (ETag `base_etag`), with `meta`
    /// in user metadata. `Ok(None)`: this store cannot (not S3-compatible HTTP).
    pub async fn start_patch(
        &self,
        rel: &str,
        base_etag: &str,
        meta: &UploadMeta,
    ) -> Result<Option<PatchUpload>, WriteError> {
        let Some(s3) = self.s3_lister() else {
            return Ok(None);
        };
        let key = self.full_key(rel);
        Metrics::add(&self.metrics.put_requests, 1);
        let headers = meta_headers(&meta.attrs.to_metadata(meta.mtime_ms));
        let url = s3.object_url(key.as_bytes(), "uploads=");
        let what = || format!("start upload of {key}");
        let (status, _, body) = s3
            .exchange(http::Method::POST, &url, &headers, Bytes::new(), &what)
            .await
            .map_err(|e| source_error("start upload of", &key, e))?;
        if !status.is_success() {
            let code = error_code(&body).unwrap_or_default();
            return Err(refused(
                "start upload of",
                &key,
                format!("HTTP {status} {code}"),
            ));
        }
        let init: Initiated = quick_xml::de::from_reader(body.as_ref())
            .map_err(|e| refused("start upload of", &key, format!("unparseable answer: {e}")))?;
        Ok(Some(PatchUpload {
            source: self.clone(),
            key,
            upload_id: init.upload_id,
            base_etag: base_etag.to_string(),
            parts: Default::default(),
        }))
    }
}

impl PatchUpload {
    fn s3(&self) -> &S3Lister {
        self.source.s3_lister().expect("started on an S3 lister")
    }

    /// The upload's URL, or one of its parts'.
    fn upload_url(&self, part: Option<u32>) -> String {
        let id = percent_encoding::utf8_percent_encode(
            &self.upload_id,
            percent_encoding::NON_ALPHANUMERIC,
        );
        let query = match part {
            Some(n) => format!("partNumber={n}&uploadId={id}"),
            None => format!("uploadId={id}"),
        };
        self.s3().object_url(self.key.as_bytes(), &query)
    }

    /// Part `n` (from 1) is `range` of the current object, copied on the server.
    pub async fn copy_part(&self, n: u32, range: Range<u64>) -> Result<(), WriteError> {
        let s3 = self.s3();
        Metrics::add(&self.source.metrics.copy_requests, 1);
        Metrics::add(&self.source.metrics.copied_bytes, range.end - range.start);
        let headers = vec![
            (
                "x-amz-copy-source".to_string(),
                s3.copy_source(self.key.as_bytes()),
            ),
            (
                "x-amz-copy-source-range".to_string(),
                format!("bytes={}-{}", range.start, range.end - 1),
            ),
            (
                "x-amz-copy-source-if-match".to_string(),
                format!("\"{}\"", self.base_etag.trim_matches('"')),
            ),
        ];
        let what = || format!("copy a range of {}", self.key);
        let (status, _, body) = s3
            .exchange(
                http::Method::PUT,
                &self.upload_url(Some(n)),
                &headers,
                Bytes::new(),
                &what,
            )
            .await
            .map_err(|e| source_error("copy a part of", &self.key, e))?;
        let code = error_code(&body);
        if !status.is_success() || code.is_some() {
            let why = format!("HTTP {status} {}", code.unwrap_or_default());
            return Err(refused("copy a part of", &self.key, why.trim().to_string()));
        }
        let copied: Copied = quick_xml::de::from_reader(body.as_ref()).map_err(|e| {
            refused(
                "copy a part of",
                &self.key,
                format!("unparseable answer: {e}"),
            )
        })?;
        self.parts
            .lock()
            .unwrap()
            .push((n, copied.e_tag, range.end - range.start));
        Ok(())
    }

    /// Part `n` (from 1) is `bytes`, sent. A checksum the store states for the part is
    /// compared with the bytes.
    pub async fn put_part(&self, n: u32, bytes: Bytes) -> Result<(), WriteError> {
        let s3 = self.s3();
        Metrics::add(&self.source.metrics.put_requests, 1);
        Metrics::add(&self.source.metrics.sent_bytes, bytes.len() as u64);
        let what = || format!("upload a part of {}", self.key);
        let (status, headers, body) = s3
            .exchange(
                http::Method::PUT,
                &self.upload_url(Some(n)),
                &[],
                bytes.clone(),
                &what,
            )
            .await
            .map_err(|e| source_error("upload a part of", &self.key, e))?;
        if !status.is_success() {
            let code = error_code(&body).unwrap_or_default();
            return Err(refused(
                "upload a part of",
                &self.key,
                format!("HTTP {status} {code}"),
            ));
        }
        if let Some(stated) = super::checksum::FullChecksum::from_headers(&headers) {
            let computed = stated.of(&bytes);
            if computed != stated {
                return Err(refused(
                    "upload a part of",
                    &self.key,
                    format!("the store received other bytes ({stated:?}, sent {computed:?})"),
                ));
            }
        }
        let etag = headers
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                refused(
                    "upload a part of",
                    &self.key,
                    "no ETag in the answer".into(),
                )
            })?
            .to_string();
        self.parts
            .lock()
            .unwrap()
            .push((n, etag, bytes.len() as u64));
        Ok(())
    }

    /// Makes the new version visible if its parts, numbered 1, 2, ... without a gap, hold
    /// exactly `len` bytes (else aborts: a missing part would make a shorter object visible).
    /// Returns its ETag.
    pub async fn complete(self, len: u64) -> Result<Option<String>, WriteError> {
        let mut parts = std::mem::take(&mut *self.parts.lock().unwrap());
        parts.sort_by_key(|(n, ..)| *n);
        let held: u64 = parts.iter().map(|(.., l)| l).sum();
        let numbered = parts
            .iter()
            .enumerate()
            .all(|(i, (n, ..))| *n == i as u32 + 1);
        if held != len || !numbered {
            self.abort_now().await;
            return Err(refused(
                "complete the upload of",
                &self.key,
                format!(
                    "parts hold {held} bytes (numbered without gaps: {numbered}), the file {len}"
                ),
            ));
        }
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (n, etag, _) in &parts {
            xml.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag></Part>",
                quick_xml::escape::escape(etag.as_str())
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let url = self.upload_url(None);
        let what = || format!("complete the upload of {}", self.key);
        let result = self
            .s3()
            .exchange(http::Method::POST, &url, &[], Bytes::from(xml), &what)
            .await;
        let (status, _, body) = match result {
            Ok(r) => r,
            Err(e) => {
                self.abort_now().await;
                return Err(source_error("complete the upload of", &self.key, e));
            }
        };
        let code = error_code(&body);
        if !status.is_success() || code.is_some() {
            let why = format!("HTTP {status} {}", code.unwrap_or_default());
            self.abort_now().await;
            return Err(refused(
                "complete the upload of",
                &self.key,
                why.trim().to_string(),
            ));
        }
        let done: Option<Completed> = quick_xml::de::from_reader(body.as_ref()).ok();
        Ok(done.and_then(|d| d.e_tag))
    }

    /// Abandons the upload: nothing of it becomes visible.
    pub async fn abort(self) {
        self.abort_now().await;
    }

    async fn abort_now(&self) {
        let url = self.upload_url(None);
        let what = || format!("abort the upload of {}", self.key);
        if let Err(e) = self
            .s3()
            .exchange(http::Method::DELETE, &url, &[], Bytes::new(), &what)
            .await
        {
            tracing::debug!("aborting an upload of {}: {e}", self.key);
        }
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // one changed range is the common case
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn sent(p: &[Piece]) -> u64 {
        p.iter()
            .filter_map(|p| match p {
                Piece::Send(r) => Some(r.end - r.start),
                Piece::Copy(_) => None,
            })
            .sum()
    }

    fn covers(p: &[Piece], len: u64) {
        let mut at = 0;
        for (i, piece) in p.iter().enumerate() {
            let r = piece.range();
            assert_eq!(r.start, at, "{p:?}");
            assert!(r.end > r.start);
            if i + 1 < p.len() {
                assert!(r.end - r.start >= MIN_PART, "{p:?}");
            }
            if let Piece::Copy(r) = piece {
                assert!(r.end - r.start <= MAX_COPY_PART);
            }
            at = r.end;
        }
        assert_eq!(at, len);
    }

    #[test]
    fn an_append_copies_the_old_object_and_sends_the_tail() {
        let p = plan(
            10 * MIB,
            10 * MIB + 100_000,
            &[10 * MIB..10 * MIB + 100_000],
            16 * MIB,
        )
        .unwrap();
        assert_eq!(
            p,
            [
                Piece::Copy(0..10 * MIB),
                Piece::Send(10 * MIB..10 * MIB + 100_000)
            ]
        );
        covers(&p, 10 * MIB + 100_000);
    }

    #[test]
    fn an_overwrite_inside_sends_about_one_part() {
        let len = 64 * MIB;
        let p = plan(len, len, &[40 * MIB..40 * MIB + 4096], 8 * MIB).unwrap();
        covers(&p, len);
        assert_eq!(sent(&p), 8 * MIB);
    }

    #[test]
    fn small_objects_or_changes_near_the_start_are_sent_whole() {
        assert_eq!(plan(4 * MIB, 5 * MIB, &[4 * MIB..5 * MIB], 8 * MIB), None);
        assert_eq!(
            plan(64 * MIB, 64 * MIB, &[0..1], 8 * MIB).map(|p| sent(&p)),
            Some(8 * MIB)
        );
        assert_eq!(plan(64 * MIB, 64 * MIB, &[0..60 * MIB], 8 * MIB), None);
    }

    #[test]
    fn huge_prefixes_split_within_the_copy_limit_and_truncation_copies() {
        let len = 12 * (1 << 30);
        let p = plan(len, len + 10, &[len..len + 10], 16 * MIB).unwrap();
        covers(&p, len + 10);
        assert_eq!(sent(&p), 10);
        let p = plan(64 * MIB, 20 * MIB, &[], 8 * MIB).unwrap();
        assert_eq!(p, [Piece::Copy(0..20 * MIB)]);
    }
}

//! The in-memory storage behind the test server, and its [`s3s::S3`] implementation.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use md5::{Digest, Md5};
use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result, S3};

/// Body chunk size for GET responses. Large slices of one `Bytes` keep the server far above the
/// throughput of any client under test (stock s3s-fs streams 4 KiB reads).
const BODY_CHUNK: usize = 1 << 20;
/// The smallest part a multipart upload may have, but for its last (S3's and OSS's limit).
pub const MIN_PART: usize = 5 << 20;

/// One stored object.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub data: Bytes,
    /// Without quotes: hex MD5 for a single PUT, `hex-N` for a multipart upload.
    pub etag: String,
    pub last_modified: SystemTime,
    pub metadata: HashMap<String, String>,
}

/// Requests served, by operation.
#[derive(Debug, Default)]
pub struct OpCounters {
    pub get: AtomicU64,
    pub head: AtomicU64,
    pub put: AtomicU64,
    pub list: AtomicU64,
    pub delete: AtomicU64,
    pub copy: AtomicU64,
    pub multipart: AtomicU64,
    /// UploadPartCopy requests.
    pub part_copy: AtomicU64,
    /// Bytes sent in GET bodies.
    pub bytes_out: AtomicU64,
    /// Bytes received in PUT and UploadPart bodies.
    pub bytes_in: AtomicU64,
    /// Bytes copied on the server by UploadPartCopy.
    pub bytes_copied: AtomicU64,
}

impl OpCounters {
    pub fn get(&self) -> u64 {
        self.get.load(Ordering::Relaxed)
    }
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Relaxed)
    }
    pub fn list(&self) -> u64 {
        self.list.load(Ordering::Relaxed)
    }
    pub fn put(&self) -> u64 {
        self.put.load(Ordering::Relaxed)
    }
}

/// Faults to inject. Each counter is consumed one request at a time.
#[derive(Debug, Default)]
pub struct Faults {
    /// The next N requests of any kind answer `503 SlowDown`.
    pub unavailable: AtomicU32,
    /// The next N GET bodies are cut (the connection is dropped) after `cut_after` bytes.
    pub cut_gets: AtomicU32,
    pub cut_after: AtomicU64,
    /// The next N PUT requests (single PUTs and upload parts) lose their connection before
    /// any answer, as a reset would.
    pub reset_puts: AtomicU32,
    /// The next N requests of any kind are read and then never answered: the connection
    /// stays open and silent, as behind a stalled proxy.
    pub stall_requests: AtomicU32,
    /// While set, every request stalls like that (a server that accepts but never answers).
    pub stall_all: std::sync::atomic::AtomicBool,
    /// The next N GET bodies stop after `stall_after` bytes and stay silent, the connection
    /// open.
    pub stall_gets: AtomicU32,
    pub stall_after: AtomicU64,
    /// When more than this many requests are in progress at once, the extra ones answer
    /// `503 SlowDown` at once (0: no limit), as a store throttling a client does.
    pub throttle_above: AtomicU32,
    /// Requests in progress (for `throttle_above`), and how many were throttled so far.
    pub in_progress: AtomicU32,
    pub throttled: AtomicU64,
    /// The next N GET bodies have one bit flipped in their middle; length and headers stay.
    pub corrupt_gets: AtomicU32,
    /// The next N uploaded bodies (PUTs and parts) arrive with a bit flipped.
    pub corrupt_puts: AtomicU32,
}

impl Faults {
    pub fn fail_next(&self, n: u32) {
        self.unavailable.store(n, Ordering::SeqCst);
    }
    pub fn cut_next_gets(&self, n: u32, after_bytes: u64) {
        self.cut_after.store(after_bytes, Ordering::SeqCst);
        self.cut_gets.store(n, Ordering::SeqCst);
    }
    pub fn reset_next_puts(&self, n: u32) {
        self.reset_puts.store(n, Ordering::SeqCst);
    }
    pub fn stall_next(&self, n: u32) {
        self.stall_requests.store(n, Ordering::SeqCst);
    }
    pub fn stall_everything(&self, on: bool) {
        self.stall_all.store(on, Ordering::SeqCst);
    }
    pub fn stall_next_gets(&self, n: u32, after_bytes: u64) {
        self.stall_after.store(after_bytes, Ordering::SeqCst);
        self.stall_gets.store(n, Ordering::SeqCst);
    }
    pub fn corrupt_next_gets(&self, n: u32) {
        self.corrupt_gets.store(n, Ordering::SeqCst);
    }
    pub fn corrupt_next_puts(&self, n: u32) {
        self.corrupt_puts.store(n, Ordering::SeqCst);
    }
    /// Answers 503 to requests beyond `k` in progress at once; 0 turns it off.
    pub fn throttle_above(&self, k: u32) {
        self.throttle_above.store(k, Ordering::SeqCst);
    }
    pub(crate) fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

#[derive(Debug)]
struct Upload {
    bucket: String,
    key: String,
    parts: BTreeMap<i32, Bytes>,
    metadata: HashMap<String, String>,
}

/// Which full-object checksums the server states, as stores do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChecksumStyle {
    /// None at all.
    None,
    /// S3: `x-amz-checksum-crc64nvme` on GETs that ask with `x-amz-checksum-mode: ENABLED`.
    #[default]
    S3,
    /// OSS: `x-oss-hash-crc64ecma` on every GET, HEAD, PUT and part upload.
    Oss,
}

/// All buckets of one server.
#[derive(Debug)]
pub struct Memory {
    /// The checksum headers this server sends ([`ChecksumStyle`]).
    pub checksum_style: Mutex<ChecksumStyle>,
    /// `(x-oss-hash-crc64ecma, x-amz-checksum-crc64nvme)` of every object and part, by ETag.
    checksums: Mutex<HashMap<String, (String, String)>>,
    latency: Duration,
    buckets: RwLock<BTreeMap<String, BTreeMap<String, StoredObject>>>,
    uploads: Mutex<HashMap<String, Upload>>,
    next_upload: AtomicU64,
    pub counters: OpCounters,
    pub faults: Faults,
}

impl Memory {
    pub fn new(latency: Duration) -> Self {
        Self {
            checksum_style: Mutex::default(),
            checksums: Mutex::default(),
            latency,
            buckets: RwLock::default(),
            uploads: Mutex::default(),
            next_upload: AtomicU64::new(1),
            counters: OpCounters::default(),
            faults: Faults::default(),
        }
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.buckets
            .write()
            .unwrap()
            .entry(bucket.to_string())
            .or_default();
    }

    /// Stores an object directly, as a single PUT would, and returns its ETag (unquoted).
    pub fn put(&self, bucket: &str, key: &str, data: impl Into<Bytes>) -> String {
        let data = data.into();
        let etag = hex::encode(Md5::digest(&data));
        self.insert(bucket, key, data, etag.clone(), HashMap::new());
        etag
    }

    /// Stores an object with user metadata (names without `x-amz-meta-`), as another client
    /// (s3fs, ossfs) would have written it. Returns its ETag (unquoted).
    pub fn put_with(
        &self,
        bucket: &str,
        key: &str,
        data: impl Into<Bytes>,
        metadata: &[(&str, &str)],
    ) -> String {
        let data = data.into();
        let etag = hex::encode(Md5::digest(&data));
        let metadata = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.insert(bucket, key, data, etag.clone(), metadata);
        etag
    }

    pub fn get(&self, bucket: &str, key: &str) -> Option<StoredObject> {
        self.buckets.read().unwrap().get(bucket)?.get(key).cloned()
    }

    pub fn delete(&self, bucket: &str, key: &str) -> bool {
        let mut buckets = self.buckets.write().unwrap();
        buckets
            .get_mut(bucket)
            .is_some_and(|b| b.remove(key).is_some())
    }

    /// Every key of a bucket, in order.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        self.buckets
            .read()
            .unwrap()
            .get(bucket)
            .map(|b| b.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn insert(
        &self,
        bucket: &str,
        key: &str,
        data: Bytes,
        etag: String,
        metadata: HashMap<String, String>,
    ) {
        self.remember_checksums(&etag, &data);
        let mut buckets = self.buckets.write().unwrap();
        buckets.entry(bucket.to_string()).or_default().insert(
            key.to_string(),
            StoredObject {
                data,
                etag,
                last_modified: SystemTime::now(),
                metadata,
            },
        );
    }

    async fn enter(&self, counter: &AtomicU64) -> S3Result<()> {
        counter.fetch_add(1, Ordering::Relaxed);
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        if Faults::take(&self.faults.unavailable) {
            return Err(s3_error!(SlowDown, "injected fault"));
        }
        Ok(())
    }

    /// An uploaded body as it arrived (with the `corrupt_puts` fault applied, as damage on
    /// the way would), checked against the CRC-64/NVME the client sent, as S3 does (OSS
    /// style: not checked; the answer states the CRC of what arrived instead).
    fn received(&self, data: Bytes, crc64nvme: Option<&str>) -> S3Result<Bytes> {
        self.counters
            .bytes_in
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let data = if !data.is_empty() && Faults::take(&self.faults.corrupt_puts) {
            let mut v = data.to_vec();
            let mid = v.len() / 2;
            v[mid] ^= 0x08;
            Bytes::from(v)
        } else {
            data
        };
        let s3 = *self.checksum_style.lock().unwrap() == ChecksumStyle::S3;
        if let (Some(want), true) = (crc64nvme, s3) {
            if checksum_headers(&data).1 != want {
                return Err(s3_error!(
                    BadDigest,
                    "the CRC-64/NVME you specified did not match the calculated checksum"
                ));
            }
        }
        Ok(data)
    }

    fn remember_checksums(&self, etag: &str, data: &[u8]) {
        let mut sums = self.checksums.lock().unwrap();
        if !sums.contains_key(etag) {
            sums.insert(etag.to_string(), checksum_headers(data));
        }
    }

    /// The checksum headers of the object or part with this ETag (quoted or not).
    pub fn checksums_of(&self, etag: &str) -> Option<(String, String)> {
        self.checksums
            .lock()
            .unwrap()
            .get(etag.trim_matches('"'))
            .cloned()
    }

    fn object(&self, bucket: &str, key: &str) -> S3Result<StoredObject> {
        let buckets = self.buckets.read().unwrap();
        let b = buckets.get(bucket).ok_or_else(|| s3_error!(NoSuchBucket))?;
        b.get(key).cloned().ok_or_else(|| s3_error!(NoSuchKey))
    }
}

fn quoted(etag: &str) -> ETag {
    ETag::Strong(etag.to_string())
}

fn check_if_match(cond: Option<&ETagCondition>, obj: &StoredObject) -> S3Result<()> {
    match cond {
        None | Some(ETagCondition::Any) => Ok(()),
        Some(ETagCondition::ETag(tag)) if tag.value() == obj.etag => Ok(()),
        Some(_) => Err(s3_error!(PreconditionFailed)),
    }
}

async fn collect(body: Option<StreamingBlob>) -> S3Result<Bytes> {
    use futures::TryStreamExt;
    let Some(body) = body else {
        return Ok(Bytes::new());
    };
    let chunks: Vec<Bytes> = body
        .try_collect()
        .await
        .map_err(|e| s3_error!(IncompleteBody, "{e}"))?;
    if chunks.len() == 1 {
        return Ok(chunks.into_iter().next().unwrap());
    }
    let mut all = Vec::with_capacity(chunks.iter().map(Bytes::len).sum());
    for c in chunks {
        all.extend_from_slice(&c);
    }
    Ok(all.into())
}

#[derive(Debug)]
struct Cut;
impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected connection cut")
    }
}
impl std::error::Error for Cut {}

/// The `S3` implementation: a cheap handle on [`Memory`].
#[derive(Debug, Clone)]
pub(crate) struct Service(pub(crate) Arc<Memory>);

impl From<Arc<Memory>> for Service {
    fn from(m: Arc<Memory>) -> Self {
        Self(m)
    }
}

fn url_encode(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

#[async_trait::async_trait]
impl S3 for Service {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.0.create_bucket(&req.input.bucket);
        Ok(S3Response::new(CreateBucketOutput::default()))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.0.enter(&self.0.counters.head).await?;
        if !self
            .0
            .buckets
            .read()
            .unwrap()
            .contains_key(&req.input.bucket)
        {
            return Err(s3_error!(NoSuchBucket));
        }
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let m = &self.0;
        m.enter(&m.counters.get).await?;
        let input = req.input;
        let obj = m.object(&input.bucket, &input.key)?;
        check_if_match(input.if_match.as_ref(), &obj)?;
        let total = obj.data.len() as u64;
        let (range, content_range) = match input.range {
            None => (0..total, None),
            Some(r) => {
                let range = r.check(total).map_err(|_| s3_error!(InvalidRange))?;
                let cr = format!("bytes {}-{}/{}", range.start, range.end - 1, total);
                (range, Some(cr))
            }
        };
        let mut body = obj.data.slice(range.start as usize..range.end as usize);
        if !body.is_empty() && Faults::take(&m.faults.corrupt_gets) {
            let mut v = body.to_vec();
            let mid = v.len() / 2;
            v[mid] ^= 0x04;
            body = v.into();
        }
        m.counters
            .bytes_out
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        let len = body.len();
        let cut =
            Faults::take(&m.faults.cut_gets).then(|| m.faults.cut_after.load(Ordering::SeqCst));
        let stall =
            Faults::take(&m.faults.stall_gets).then(|| m.faults.stall_after.load(Ordering::SeqCst));
        let mut chunks: Vec<Result<Bytes, Cut>> = Vec::new();
        let limit = cut.or(stall).map_or(len, |c| (c as usize).min(len));
        let mut off = 0;
        while off < limit {
            let end = (off + BODY_CHUNK).min(limit);
            chunks.push(Ok(body.slice(off..end)));
            off = end;
        }
        if cut.is_some() {
            chunks.push(Err(Cut));
        }
        let stream = futures::stream::iter(chunks);
        let body = if stall.is_some() {
            // The body stops and the connection stays open, silent.
            StreamingBlob::wrap(futures::StreamExt::chain(
                stream,
                futures::stream::pending(),
            ))
        } else {
            StreamingBlob::wrap(stream)
        };
        let output = GetObjectOutput {
            body: Some(body),
            content_length: Some(len as i64),
            content_range,
            e_tag: Some(quoted(&obj.etag)),
            last_modified: Some(obj.last_modified.into()),
            accept_ranges: Some("bytes".into()),
            metadata: (!obj.metadata.is_empty()).then(|| obj.metadata.clone()),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let m = &self.0;
        m.enter(&m.counters.head).await?;
        let obj = m.object(&req.input.bucket, &req.input.key)?;
        check_if_match(req.input.if_match.as_ref(), &obj)?;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(obj.data.len() as i64),
            e_tag: Some(quoted(&obj.etag)),
            last_modified: Some(obj.last_modified.into()),
            metadata: (!obj.metadata.is_empty()).then(|| obj.metadata.clone()),
            ..Default::default()
        }))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let m = &self.0;
        m.enter(&m.counters.put).await?;
        let input = req.input;
        if !m.buckets.read().unwrap().contains_key(&input.bucket) {
            return Err(s3_error!(NoSuchBucket));
        }
        if let Some(ETagCondition::Any) = input.if_none_match {
            if m.get(&input.bucket, &input.key).is_some() {
                return Err(s3_error!(PreconditionFailed));
            }
        }
        let data = m.received(
            collect(input.body).await?,
            input.checksum_crc64nvme.as_deref(),
        )?;
        let etag = hex::encode(Md5::digest(&data));
        m.insert(
            &input.bucket,
            &input.key,
            data,
            etag.clone(),
            input.metadata.unwrap_or_default(),
        );
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(quoted(&etag)),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let m = &self.0;
        m.enter(&m.counters.delete).await?;
        m.delete(&req.input.bucket, &req.input.key);
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let m = &self.0;
        m.enter(&m.counters.copy).await?;
        let input = req.input;
        let CopySource::Bucket { bucket, key, .. } = &input.copy_source else {
            return Err(s3_error!(NotImplemented, "access point copy sources"));
        };
        let src = m.object(bucket, key)?;
        let metadata = match input.metadata_directive.as_ref().map(|d| d.as_str()) {
            Some("REPLACE") => input.metadata.unwrap_or_default(),
            _ => src.metadata.clone(),
        };
        m.insert(
            &input.bucket,
            &input.key,
            src.data.clone(),
            src.etag.clone(),
            metadata,
        );
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(quoted(&src.etag)),
                last_modified: Some(SystemTime::now().into()),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let m = &self.0;
        m.enter(&m.counters.list).await?;
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let max_keys = input.max_keys.unwrap_or(1000).clamp(1, 1000) as usize;
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == EncodingType::URL);
        let after = input
            .continuation_token
            .clone()
            .or(input.start_after.clone())
            .unwrap_or_default();
        let buckets = m.buckets.read().unwrap();
        let bucket = buckets
            .get(&input.bucket)
            .ok_or_else(|| s3_error!(NoSuchBucket))?;
        let mut contents = Vec::new();
        let mut prefixes: Vec<String> = Vec::new();
        let mut last = None;
        let mut truncated = false;
        let range = bucket.range::<String, _>((
            std::ops::Bound::Excluded(after.clone()),
            std::ops::Bound::Unbounded,
        ));
        let start_inclusive = after.is_empty().then(|| bucket.get_key_value(""));
        let iter = start_inclusive.flatten().into_iter().chain(range);
        for (key, obj) in iter {
            if !key.starts_with(&prefix) {
                if key.as_str() > prefix.as_str() {
                    break;
                }
                continue;
            }
            if contents.len() + prefixes.len() >= max_keys {
                truncated = true;
                break;
            }
            if let Some(d) = &delimiter {
                if let Some(pos) = key[prefix.len()..].find(d.as_str()) {
                    let cp = &key[..prefix.len() + pos + d.len()];
                    if prefixes.last().map(String::as_str) != Some(cp) {
                        prefixes.push(cp.to_string());
                    }
                    last = Some(key.clone());
                    continue;
                }
            }
            contents.push(Object {
                key: Some(if url { url_encode(key) } else { key.clone() }),
                size: Some(obj.data.len() as i64),
                e_tag: Some(quoted(&obj.etag)),
                last_modified: Some(obj.last_modified.into()),
                ..Default::default()
            });
            last = Some(key.clone());
        }
        // A continuation token must skip the whole common prefix it ended in.
        let next = if truncated {
            last.map(|k| match &delimiter {
                Some(d) => match k[prefix.len()..].find(d.as_str()) {
                    Some(pos) => format!("{}\u{10FFFF}", &k[..prefix.len() + pos + d.len()]),
                    None => k,
                },
                None => k,
            })
        } else {
            None
        };
        let key_count = (contents.len() + prefixes.len()) as i32;
        let common_prefixes = prefixes
            .into_iter()
            .map(|p| CommonPrefix {
                prefix: Some(if url { url_encode(&p) } else { p }),
            })
            .collect();
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(if url { url_encode(&prefix) } else { prefix }),
            delimiter,
            max_keys: Some(max_keys as i32),
            key_count: Some(key_count),
            is_truncated: Some(truncated),
            continuation_token: input.continuation_token,
            next_continuation_token: next,
            contents: Some(contents),
            common_prefixes: Some(common_prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let m = &self.0;
        m.enter(&m.counters.multipart).await?;
        let input = req.input;
        let id = format!("upload-{}", m.next_upload.fetch_add(1, Ordering::Relaxed));
        m.uploads.lock().unwrap().insert(
            id.clone(),
            Upload {
                bucket: input.bucket.clone(),
                key: input.key.clone(),
                parts: BTreeMap::new(),
                metadata: input.metadata.unwrap_or_default(),
            },
        );
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let m = &self.0;
        m.enter(&m.counters.multipart).await?;
        let input = req.input;
        let data = m.received(
            collect(input.body).await?,
            input.checksum_crc64nvme.as_deref(),
        )?;
        let etag = hex::encode(Md5::digest(&data));
        m.remember_checksums(&etag, &data);
        let mut uploads = m.uploads.lock().unwrap();
        let upload = uploads
            .get_mut(&input.upload_id)
            .ok_or_else(|| s3_error!(NoSuchUpload))?;
        upload.parts.insert(input.part_number, data);
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(quoted(&etag)),
            ..Default::default()
        }))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let m = &self.0;
        m.enter(&m.counters.part_copy).await?;
        let input = req.input;
        let CopySource::Bucket { bucket, key, .. } = &input.copy_source else {
            return Err(s3_error!(NotImplemented, "access point copy sources"));
        };
        let src = m.object(bucket, key)?;
        check_if_match(input.copy_source_if_match.as_ref(), &src)?;
        let len = src.data.len() as u64;
        let (start, end) = match input.copy_source_range.as_deref() {
            None => (0, len),
            Some(r) => {
                let (a, b) = r
                    .strip_prefix("bytes=")
                    .and_then(|r| r.split_once('-'))
                    .ok_or_else(|| s3_error!(InvalidArgument, "bad copy source range {r}"))?;
                let a: u64 = a.parse().map_err(|_| s3_error!(InvalidArgument))?;
                let b: u64 = b.parse().map_err(|_| s3_error!(InvalidArgument))?;
                if a > b || b >= len {
                    return Err(s3_error!(InvalidRange));
                }
                (a, b + 1)
            }
        };
        let data = src.data.slice(start as usize..end as usize);
        m.counters
            .bytes_copied
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let etag = hex::encode(Md5::digest(&data));
        m.remember_checksums(&etag, &data);
        let mut uploads = m.uploads.lock().unwrap();
        let upload = uploads
            .get_mut(&input.upload_id)
            .ok_or_else(|| s3_error!(NoSuchUpload))?;
        upload.parts.insert(input.part_number, data);
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(quoted(&etag)),
                last_modified: Some(SystemTime::now().into()),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let m = &self.0;
        m.enter(&m.counters.multipart).await?;
        let input = req.input;
        let upload = m
            .uploads
            .lock()
            .unwrap()
            .remove(&input.upload_id)
            .ok_or_else(|| s3_error!(NoSuchUpload))?;
        let wanted: Vec<i32> = input
            .multipart_upload
            .and_then(|u| u.parts)
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p.part_number)
            .collect();
        let mut data = Vec::new();
        let mut md5s = Vec::new();
        for (i, n) in wanted.iter().enumerate() {
            let part = upload.parts.get(n).ok_or_else(|| s3_error!(InvalidPart))?;
            // As S3 and OSS: every part but the last has at least 5 MiB.
            if i + 1 < wanted.len() && part.len() < MIN_PART {
                return Err(s3_error!(EntityTooSmall));
            }
            md5s.extend_from_slice(&Md5::digest(part));
            data.extend_from_slice(part);
        }
        let etag = format!("{}-{}", hex::encode(Md5::digest(&md5s)), wanted.len());
        m.insert(
            &upload.bucket,
            &upload.key,
            data.into(),
            etag.clone(),
            upload.metadata,
        );
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(upload.bucket),
            key: Some(upload.key),
            e_tag: Some(quoted(&etag)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let m = &self.0;
        m.enter(&m.counters.multipart).await?;
        m.uploads.lock().unwrap().remove(&req.input.upload_id);
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }
}

/// `(x-oss-hash-crc64ecma, x-amz-checksum-crc64nvme)` values of `data`.
fn checksum_headers(data: &[u8]) -> (String, String) {
    use base64::Engine as _;
    let xz = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Xz, data);
    let nvme = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, data);
    (
        xz.to_string(),
        base64::engine::general_purpose::STANDARD.encode(nvme.to_be_bytes()),
    )
}

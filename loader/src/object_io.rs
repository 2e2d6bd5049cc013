//! Single objects as streams: a seekable reader with read-ahead, pinned to one ETag, and a
//! writer that streams a multipart upload. What `torch.save`/`torch.load` through
//! `pai_mount.open` run on.
//!
//! ## Reading
//! [`ObjectReader`] pins the object's size and ETag with one HEAD at open; every ranged GET
//! carries `If-Match`, so a reader never mixes bytes of two versions (a change is
//! [`LoadError::Changed`]). Sequential reads keep up to `ahead` chunks of `chunk` bytes in
//! flight in front of the position. A read that does not continue the previous one (a seek)
//! fetches only what it needs, at least [`RANDOM_MIN`]; read-ahead resumes once reads are
//! sequential again, so the central-directory seeks of a zip (`torch.load`) do not start
//! 32 MiB of prefetch each. Memory: at most `ahead × chunk` bytes per reader.
//!
//! The bytes a reader returns from the first one on, in order, are hashed as they go; when they
//! reach the end of the object, the hash is compared with the full-object checksum the store
//! stated at open, and a mismatch fails that read with [`LoadError::Corrupt`] (so a reader that
//! reads a whole object never gets a clean end after wrong bytes). Reads after a seek past the
//! hashed prefix are not checked.
//!
//! ## Writing
//! [`ObjectWriter`] buffers up to `part_size` bytes. An object that ends within the first part
//! is sent with one PUT at `finish`. Otherwise the first full part starts a multipart upload,
//! and at most `parts_in_flight` parts are sent at once (a writer that gets ahead waits for
//! the oldest part): memory is bounded by `(parts_in_flight + 1) × part_size`. `finish`
//! sends the last part and completes the upload; only then is the object visible. `abort`
//! (or dropping an unfinished writer) abandons the upload: nothing becomes visible.

use std::collections::VecDeque;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use pai_store::metrics::Metrics;
use pai_store::object::checksum::{FullChecksum, Hasher};
use pai_store::object::{MultipartWriter, ObjectSource, ReadError, Source, UploadMeta, WriteError};
use tokio::task::JoinHandle;

use crate::LoadError;

/// Reads that do not continue the previous read fetch at least this much.
pub const RANDOM_MIN: u64 = 1 << 20;

/// How an [`ObjectReader`] reads ahead.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions {
    /// Bytes per ranged GET when reading sequentially.
    pub chunk: u64,
    /// Chunks in flight ahead of the position.
    pub ahead: usize,
}

impl Default for ReadOptions {
    fn default() -> Self {
        // 8 MiB GETs are past the size where a 20-30 ms first byte stops mattering at a few
        // hundred MB/s per stream; 8 in flight fill a fast link from one reader.
        Self {
            chunk: 8 << 20,
            ahead: 8,
        }
    }
}

/// How an [`ObjectWriter`] uploads.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    /// Bytes per part (at least 5 MiB, the S3 and OSS minimum for every part but the last).
    pub part_size: usize,
    /// Parts being sent at once.
    pub parts_in_flight: usize,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            part_size: 16 << 20,
            parts_in_flight: 4,
        }
    }
}

/// Splits `oss://bucket/dir/name` into a source for `oss://bucket/dir` and the key `name`.
pub fn split_object_url(url: &str) -> Result<(Source, String), LoadError> {
    let invalid = |why: &str| LoadError::Invalid {
        why: format!("bad object URL {url:?}: {why}"),
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid("expected oss://bucket/key, s3://bucket/key or file:///path"))?;
    let (parent, name) = match rest.rsplit_once('/') {
        Some((p, n)) if !n.is_empty() && (scheme == "file" || p.contains(|c| c != '/')) => (p, n),
        _ => {
            return Err(invalid(
                "it names no object (a key is needed after the bucket)",
            ))
        }
    };
    let parent_url = if scheme == "file" && parent.is_empty() {
        "file:///".to_string()
    } else {
        format!("{scheme}://{parent}")
    };
    let source = Source::parse(&parent_url).map_err(|e| LoadError::from_source(url, e))?;
    Ok((source, name.to_string()))
}

struct Chunk {
    range: Range<u64>,
    task: JoinHandle<Result<Bytes, ReadError>>,
}

/// A seekable reader of one object, pinned to the size and ETag it had at open.
pub struct ObjectReader {
    source: ObjectSource,
    url: String,
    key: String,
    size: u64,
    etag: Option<String>,
    options: ReadOptions,
    pos: u64,
    /// Where the last read ended: a read starting here is sequential.
    last_end: Option<u64>,
    /// Contiguous chunks, the first one holding `pos` (when not empty).
    window: VecDeque<Chunk>,
    /// The chunk being consumed, once fetched.
    current: Option<(u64, Bytes)>,
    /// The hash of bytes `0..hashed` as returned, while the store stated a checksum and the
    /// reads have been in order; `None` once checked or given up.
    hasher: Option<Hasher>,
    hashed: u64,
    /// Set once the bytes failed the checksum: every later read fails too.
    corrupt: Option<String>,
}

impl ObjectReader {
    /// Opens `key` of `source` (one HEAD). A missing object is [`LoadError::NotFound`].
    pub async fn open(
        source: ObjectSource,
        url: &str,
        key: &str,
        options: ReadOptions,
    ) -> Result<Self, LoadError> {
        let head = source
            .head_with_checksum(key)
            .await
            .map_err(|e| LoadError::Unavailable {
                url: url.to_string(),
                key: Some(key.to_string()),
                why: e.to_string(),
            })?;
        let (size, etag, stated) = head.ok_or_else(|| LoadError::NotFound {
            url: url.to_string(),
            key: Some(key.to_string()),
            why: format!("no object at {url}"),
        })?;
        Ok(Self {
            source,
            url: url.to_string(),
            key: key.to_string(),
            size,
            etag,
            options: ReadOptions {
                chunk: options.chunk.max(64 << 10),
                ahead: options.ahead.max(1),
            },
            pos: 0,
            last_end: Some(0),
            window: VecDeque::new(),
            current: None,
            hasher: stated.filter(|_| size > 0).map(FullChecksum::hasher),
            hashed: 0,
            corrupt: None,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn etag(&self) -> Option<&str> {
        self.etag.as_deref()
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Moves the position (past the end is allowed: reads there return nothing).
    pub fn seek(&mut self, pos: u64) {
        self.pos = pos;
    }

    fn spawn(&self, range: Range<u64>) -> Chunk {
        let (source, key, etag, size) = (
            self.source.clone(),
            self.key.clone(),
            self.etag.clone(),
            self.size,
        );
        let r = range.clone();
        Chunk {
            range,
            task: tokio::spawn(
                async move { source.get_range(&key, r, etag.as_deref(), size).await },
            ),
        }
    }

    /// Makes the window's first chunk hold the position: drops chunks before it (all of them
    /// after a seek), and when reads are sequential keeps `ahead` chunks in flight.
    fn plan(&mut self, len: u64) {
        let pos = self.pos;
        while self.window.front().is_some_and(|c| !c.range.contains(&pos)) {
            let c = self.window.pop_front().expect("front exists");
            c.task.abort();
        }
        let sequential = self.last_end == Some(pos);
        if self.window.is_empty() {
            let want = if sequential {
                self.options.chunk
            } else {
                len.max(RANDOM_MIN)
            };
            let end = self.size.min(pos + want);
            let c = self.spawn(pos..end);
            self.window.push_back(c);
        }
        if sequential {
            while self.window.len() < self.options.ahead {
                let start = self.window.back().expect("not empty").range.end;
                if start >= self.size {
                    break;
                }
                let end = self.size.min(start + self.options.chunk);
                let c = self.spawn(start..end);
                self.window.push_back(c);
            }
        }
    }

    /// Reads up to `len` bytes at the position into `out` (appended); fewer only at the end
    /// of the object. Returns the count.
    pub async fn read_into(&mut self, len: u64, out: &mut Vec<u8>) -> Result<u64, LoadError> {
        if let Some(why) = &self.corrupt {
            return Err(LoadError::Corrupt {
                url: self.url.clone(),
                key: self.key.clone(),
                why: why.clone(),
            });
        }
        let end = self.size.min(self.pos.saturating_add(len));
        let mut done = 0;
        while self.pos < end {
            let bytes = self.bytes_at_pos(end - self.pos).await?;
            let n = (bytes.len() as u64).min(end - self.pos);
            out.extend_from_slice(&bytes[..n as usize]);
            self.check_in_order(self.pos, &bytes[..n as usize])?;
            self.pos += n;
            self.last_end = Some(self.pos);
            done += n;
        }
        Ok(done)
    }

    /// Hashes `data`, returned from offset `at`, if it continues the hashed prefix; at the end
    /// of the object compares with the stated checksum (see the module docs).
    fn check_in_order(&mut self, at: u64, data: &[u8]) -> Result<(), LoadError> {
        let Some(h) = &mut self.hasher else {
            return Ok(());
        };
        let end = at + data.len() as u64;
        if at > self.hashed || end <= self.hashed {
            return Ok(()); // a gap (not checkable), or bytes already hashed
        }
        h.update(&data[(self.hashed - at) as usize..]);
        self.hashed = end;
        if self.hashed < self.size {
            return Ok(());
        }
        let h = self.hasher.take().expect("checked above");
        match h.verify() {
            Ok(()) => Ok(()),
            Err((stated, computed)) => {
                Metrics::add(&self.source.metrics().checksum_mismatches, 1);
                let why = format!(
                    "the bytes read did not match the object's checksum (stated {stated}, computed {computed}); open it again"
                );
                self.corrupt = Some(why.clone());
                Err(LoadError::Corrupt {
                    url: self.url.clone(),
                    key: self.key.clone(),
                    why,
                })
            }
        }
    }

    /// The fetched bytes from the position to the end of the chunk that holds it.
    async fn bytes_at_pos(&mut self, len: u64) -> Result<Bytes, LoadError> {
        if let Some((start, b)) = &self.current {
            if (*start..*start + b.len() as u64).contains(&self.pos) {
                return Ok(b.slice((self.pos - start) as usize..));
            }
            self.current = None;
        }
        self.plan(len);
        let c = self.window.pop_front().expect("planned");
        let start = c.range.start;
        let bytes = match c.task.await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                return Err(LoadError::from_read(
                    &self.url,
                    &self.key,
                    &format!("reading {}", self.url),
                    e,
                ))
            }
            Err(e) => {
                return Err(LoadError::Unavailable {
                    url: self.url.clone(),
                    key: Some(self.key.clone()),
                    why: format!("a read task failed: {e}"),
                })
            }
        };
        self.current = Some((start, bytes.clone()));
        Ok(bytes.slice((self.pos - start) as usize..))
    }
}

impl Drop for ObjectReader {
    fn drop(&mut self) {
        for c in self.window.drain(..) {
            c.task.abort();
        }
    }
}

/// A writer that streams one object as a multipart upload.
pub struct ObjectWriter {
    source: ObjectSource,
    url: String,
    key: String,
    options: WriteOptions,
    buf: BytesMut,
    upload: Option<MultipartWriter>,
    parts: VecDeque<JoinHandle<Result<(), WriteError>>>,
    written: u64,
    finished: bool,
}

impl ObjectWriter {
    pub fn new(source: ObjectSource, url: &str, key: &str, options: WriteOptions) -> Self {
        let options = WriteOptions {
            part_size: options.part_size.max(5 << 20),
            parts_in_flight: options.parts_in_flight.max(1),
        };
        Self {
            source,
            url: url.to_string(),
            key: key.to_string(),
            options,
            buf: BytesMut::new(),
            upload: None,
            parts: VecDeque::new(),
            written: 0,
            finished: false,
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn error(&self, e: impl std::fmt::Display) -> LoadError {
        LoadError::Unavailable {
            url: self.url.clone(),
            key: Some(self.key.clone()),
            why: format!("uploading {}: {e}", self.url),
        }
    }

    /// Buffers `data`, sending every full part (waiting when `parts_in_flight` are out).
    pub async fn write(&mut self, data: &[u8]) -> Result<(), LoadError> {
        if self.finished {
            return Err(LoadError::Invalid {
                why: format!("{} is closed", self.url),
            });
        }
        let mut data = data;
        let part = self.options.part_size;
        while !data.is_empty() {
            let room = part - self.buf.len();
            let n = room.min(data.len());
            if self.buf.capacity() < part {
                self.buf.reserve(part - self.buf.len());
            }
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.written += n as u64;
            if self.buf.len() == part {
                let bytes = self.buf.split().freeze();
                self.send_part(bytes).await?;
            }
        }
        Ok(())
    }

    async fn send_part(&mut self, bytes: Bytes) -> Result<(), LoadError> {
        if self.upload.is_none() {
            let up = self
                .source
                .start_multipart(&self.key, &UploadMeta::mtime(now_ms()))
                .await
                .map_err(|e| self.error(e))?;
            self.upload = Some(up);
        }
        while self.parts.len() >= self.options.parts_in_flight {
            self.wait_oldest().await?;
        }
        let fut = self.upload.as_mut().expect("started").put_part(bytes);
        self.parts.push_back(tokio::spawn(fut));
        Ok(())
    }

    async fn wait_oldest(&mut self) -> Result<(), LoadError> {
        if let Some(t) = self.parts.pop_front() {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(self.error(e)),
                Err(e) => return Err(self.error(e)),
            }
        }
        Ok(())
    }

    /// Sends what is left and makes the object visible. Returns its ETag. On error nothing
    /// becomes visible (the upload is aborted).
    pub async fn finish(mut self) -> Result<Option<String>, LoadError> {
        self.finished = true;
        let rest = self.buf.split().freeze();
        if self.upload.is_none() {
            return self
                .source
                .put_object(&self.key, rest, &UploadMeta::mtime(now_ms()))
                .await
                .map_err(|e| self.error(e));
        }
        let result = async {
            if !rest.is_empty() {
                self.send_part(rest).await?;
            }
            while !self.parts.is_empty() {
                self.wait_oldest().await?;
            }
            Ok::<_, LoadError>(())
        }
        .await;
        let upload = self.upload.take().expect("started");
        match result {
            Ok(()) => upload.complete().await.map_err(|e| self.error(e)),
            Err(e) => {
                upload.abort().await;
                Err(e)
            }
        }
    }

    /// Abandons the upload: nothing becomes visible.
    pub async fn abort(mut self) {
        self.finished = true;
        for t in self.parts.drain(..) {
            t.abort();
        }
        if let Some(up) = self.upload.take() {
            up.abort().await;
        }
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        for t in self.parts.drain(..) {
            t.abort();
        }
        if let Some(up) = self.upload.take() {
            // Dropped unfinished: abandon the upload in the background (best effort; an
            // abandoned upload is never visible, only billed until the bucket's lifecycle
            // rule removes it).
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(up.abort());
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::split_object_url;

    #[test]
    fn object_urls_split_into_a_directory_source_and_a_name() {
        let (s, k) = split_object_url("oss://bkt/ckpt/step-100.pt").unwrap();
        assert_eq!(
            (s.bucket.as_str(), s.prefix.as_str(), k.as_str()),
            ("bkt", "ckpt/", "step-100.pt")
        );
        let (s, k) = split_object_url("s3://bkt/x.bin").unwrap();
        assert_eq!((s.prefix.as_str(), k.as_str()), ("", "x.bin"));
        let (s, k) = split_object_url("file:///tmp/a/b.pt").unwrap();
        assert_eq!((s.bucket.as_str(), k.as_str()), ("/tmp/a", "b.pt"));
        for bad in [
            "oss://bkt",
            "oss://bkt/",
            "oss://bkt/dir/",
            "nothing",
            "oss:///x",
        ] {
            assert!(split_object_url(bad).is_err(), "{bad}");
        }
    }
}

//! A fault-injecting wrapper around any [`ObjectStore`], so core tests of prefetch, write-back,
//! `cp` and the loader can meet failures without a server (as Mountpoint's `FailureClient`
//! does for its client trait).
//!
//! [`FaultyStore`] passes every call to the store it wraps unless a [`Rule`] matches the
//! call's [`Op`] and key. A rule applies a [`Fault`] a number of times (or always), to every
//! key or to keys containing a substring:
//! - `Fail`: the call fails with a transient store error (what is left after retries);
//! - `Gone`: the call fails with `NotFound`;
//! - `Throttle`: the call fails as a `503 SlowDown` answer would after the retries;
//! - `Delay(d)`: the call waits `d`, then proceeds;
//! - `Stall`: the call never completes (callers must bound it);
//! - `Cut { after }`: a GET body ends with an error after `after` bytes;
//! - `Corrupt { at }`: a GET body has the byte at offset `at` of the object flipped (length
//!   and headers unchanged).
//!
//! With [`FaultyStore::state_checksums`] it also states a full-object checksum as S3 does: with
//! HEAD answers and GETs of the whole object, computed from the stored bytes (never from a
//! corrupted body), and not with ranged GETs.
//!
//! Every method of the trait is implemented (no defaults), so nothing bypasses the rules.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use super::checksum::FullChecksum;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, UploadPart,
};

/// The kind of call a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    Head,
    Put,
    /// Starting a multipart upload.
    CreateUpload,
    UploadPart,
    CompleteUpload,
    List,
    Delete,
    Copy,
}

/// What happens to a matched call. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Fail,
    Gone,
    Throttle,
    Delay(Duration),
    Stall,
    Cut { after: u64 },
    Corrupt { at: u64 },
}

/// One injected fault.
#[derive(Debug, Clone)]
pub struct Rule {
    pub op: Op,
    /// Only keys containing this; `None` for every key.
    pub key: Option<String>,
    pub fault: Fault,
    /// How many more calls it applies to; `None` for every call.
    pub times: Option<u32>,
}

/// A store with injected faults.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    rules: Arc<Rules>,
}

/// The rules, shared with uploads and delete streams that outlive a call.
#[derive(Debug, Default)]
struct Rules {
    list: Mutex<Vec<Rule>>,
    /// Calls that met a fault.
    injected: AtomicU64,
    /// The kind of full-object checksum HEAD and whole GET answers state, if any.
    checksums: Mutex<Option<FullChecksum>>,
}

impl std::fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            rules: Arc::default(),
        })
    }

    /// From now on, HEAD answers and GETs of a whole object state its checksum of `kind`.
    pub fn state_checksums(&self, kind: FullChecksum) {
        *self.rules.checksums.lock().unwrap() = Some(kind);
    }

    /// Applies `fault` to the next `times` calls of `op` (every call with `None`).
    pub fn inject(&self, op: Op, fault: Fault, times: Option<u32>) {
        self.add(Rule {
            op,
            key: None,
            fault,
            times,
        });
    }

    /// Like [`Self::inject`], for keys containing `key` only.
    pub fn inject_for(&self, op: Op, key: &str, fault: Fault, times: Option<u32>) {
        self.add(Rule {
            op,
            key: Some(key.to_string()),
            fault,
            times,
        });
    }

    pub fn add(&self, rule: Rule) {
        self.rules.list.lock().unwrap().push(rule);
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.rules.list.lock().unwrap().clear();
    }

    /// How many calls met a fault so far.
    pub fn injected(&self) -> u64 {
        self.rules.injected.load(Ordering::Relaxed)
    }

    fn take(&self, op: Op, key: &str) -> Option<Fault> {
        self.rules.take(op, key)
    }

    async fn before(&self, op: Op, key: &str) -> object_store::Result<Option<Fault>> {
        self.rules.before(op, key).await
    }
}

impl Rules {
    /// The fault for this call, if a rule matches (consuming one of its times).
    fn take(&self, op: Op, key: &str) -> Option<Fault> {
        let mut rules = self.list.lock().unwrap();
        let i = rules.iter().position(|r| {
            r.op == op && r.key.as_deref().is_none_or(|k| key.contains(k)) && r.times != Some(0)
        })?;
        let rule = &mut rules[i];
        if let Some(t) = &mut rule.times {
            *t -= 1;
        }
        let fault = rule.fault;
        if rule.times == Some(0) {
            rules.remove(i);
        }
        self.injected.fetch_add(1, Ordering::Relaxed);
        Some(fault)
    }

    /// Applies a fault that acts before the call: an error, a delay or a stall. Body faults
    /// are returned for the caller to apply.
    async fn before(&self, op: Op, key: &str) -> object_store::Result<Option<Fault>> {
        match self.take(op, key) {
            None => Ok(None),
            Some(Fault::Fail) => Err(generic(key, "injected failure")),
            Some(Fault::Throttle) => Err(generic(key, "503 SlowDown (injected)")),
            Some(Fault::Gone) => Err(object_store::Error::NotFound {
                path: key.to_string(),
                source: "injected: gone".into(),
            }),
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                Ok(None)
            }
            Some(Fault::Stall) => std::future::pending().await,
            Some(f @ (Fault::Cut { .. } | Fault::Corrupt { .. })) => Ok(Some(f)),
        }
    }
}

fn generic(key: &str, why: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "faulty",
        source: format!("{key}: {why}").into(),
    }
}

/// Applies a body fault to a GET result whose bytes start at object offset `start`.
fn body_fault(r: GetResult, fault: Fault, key: String) -> GetResult {
    let start = r.range.start;
    let stream = match r.payload {
        GetResultPayload::Stream(s) => s,
        GetResultPayload::File(..) => {
            // Local files are read through the same stream interface.
            return r;
        }
    };
    let stream: BoxStream<'static, object_store::Result<Bytes>> = match fault {
        Fault::Cut { after } => {
            // Chunks up to `after` bytes of this body, then an error in place of the rest.
            let mut left = after;
            let mut cut = false;
            stream
                .filter_map(move |chunk| {
                    let out = match chunk {
                        _ if cut => None,
                        Err(e) => Some(Err(e)),
                        Ok(c) if (c.len() as u64) <= left => {
                            left -= c.len() as u64;
                            Some(Ok(c))
                        }
                        Ok(_) => {
                            cut = true;
                            Some(Err(generic(&key, "connection cut (injected)")))
                        }
                    };
                    futures::future::ready(out)
                })
                .boxed()
        }
        Fault::Corrupt { at } => {
            let mut pos = start;
            stream
                .map_ok(move |chunk| {
                    let end = pos + chunk.len() as u64;
                    let out = if (pos..end).contains(&at) {
                        let mut v = chunk.to_vec();
                        v[(at - pos) as usize] ^= 0x01;
                        Bytes::from(v)
                    } else {
                        chunk
                    };
                    pos = end;
                    out
                })
                .boxed()
        }
        _ => stream,
    };
    GetResult {
        payload: GetResultPayload::Stream(stream),
        ..r
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.before(Op::Put, location.as_ref()).await?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.before(Op::CreateUpload, location.as_ref()).await?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultyUpload {
            inner,
            key: location.to_string(),
            rules: self.rules.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let op = if options.head { Op::Head } else { Op::Get };
        let body = self.before(op, location.as_ref()).await?;
        let whole = options.head || options.range.is_none();
        let mut r = self.inner.get_opts(location, options).await?;
        let kind = *self.rules.checksums.lock().unwrap();
        if let (Some(kind), true) = (kind, whole) {
            let stored = object_store::ObjectStoreExt::get(&self.inner, location)
                .await?
                .bytes()
                .await?;
            r.extensions.insert(kind.of(&stored));
        }
        Ok(match body {
            Some(f) => body_fault(r, f, location.to_string()),
            None => r,
        })
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.before(Op::Get, location.as_ref()).await?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let rules = self.rules.clone();
        let inner = self.inner.clone();
        locations
            .then(move |p| {
                let rules = rules.clone();
                let inner = inner.clone();
                async move {
                    let p = p?;
                    rules.before(Op::Delete, p.as_ref()).await?;
                    object_store::ObjectStoreExt::delete(&inner, &p)
                        .await
                        .map(|()| p)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let key = prefix.map(|p| p.to_string()).unwrap_or_default();
        match self.take(Op::List, &key) {
            None | Some(Fault::Delay(_) | Fault::Cut { .. } | Fault::Corrupt { .. }) => {
                self.inner.list(prefix)
            }
            Some(Fault::Stall) => futures::stream::pending().boxed(),
            Some(_) => futures::stream::once(async move { Err(generic(&key, "injected")) }).boxed(),
        }
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let key = prefix.map(|p| p.to_string()).unwrap_or_default();
        match self.take(Op::List, &key) {
            None | Some(Fault::Delay(_) | Fault::Cut { .. } | Fault::Corrupt { .. }) => {
                self.inner.list_with_offset(prefix, offset)
            }
            Some(Fault::Stall) => futures::stream::pending().boxed(),
            Some(_) => futures::stream::once(async move { Err(generic(&key, "injected")) }).boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let key = prefix.map(|p| p.to_string()).unwrap_or_default();
        self.before(Op::List, &key).await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.before(Op::Copy, from.as_ref()).await?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.before(Op::Copy, from.as_ref()).await?;
        self.inner.rename_opts(from, to, options).await
    }
}

#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    key: String,
    rules: Arc<Rules>,
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let part = self.inner.put_part(data);
        let (rules, key) = (self.rules.clone(), self.key.clone());
        Box::pin(async move {
            rules.before(Op::UploadPart, &key).await?;
            part.await
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.rules.before(Op::CompleteUpload, &self.key).await?;
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

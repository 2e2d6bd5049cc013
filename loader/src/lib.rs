//! pai-loader: samples for training, straight from a pai-mount manifest.
//!
//! - [`Dataset`]: the objects under a prefix (optionally only some suffixes), from the stored
//!   manifest; it never lists a bucket that has one. `len()` and random access `get(i)`.
//! - [`sampler`]: which samples a (rank, worker) reads in which order; a pure function of
//!   (seed, epoch, dataset, layout), resumable in O(1).
//! - [`Loader`]: an iterator of samples in that order, with many ranged GETs in flight under a
//!   request cap and a byte budget, retries, and errors that name the key.
//!
//! Built for a Python binding: plain data in and out, a state of three integers, and no
//! global runtime: each dataset owns its runtime and rebuilds it (and its connections) when it
//! finds itself in a new process after `fork()`.

pub mod sampler;
pub mod tar_index;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use pai_store::manifest::{self, BuildOptions};
use pai_store::metrics::Metrics;
use pai_store::namespace::Namespace;
use pai_store::object::credentials::ProcessEnv;
use pai_store::object::{ObjectSource, ReadError, Source, StoreOptions};
use tokio::sync::Semaphore;

pub use sampler::{Layout, Order, Sampler, Shuffle};

pub mod copy;
pub mod error;
pub mod object_io;

pub use error::{ErrorKind, LoadError};

/// How to open a dataset.
#[derive(Debug, Clone, Default)]
pub struct DatasetOptions {
    pub store: StoreOptions,
    /// Keep only keys ending with one of these (for example `.jpg`); empty keeps everything.
    /// With `tar_shards`, it selects the shards (default `.tar`).
    pub suffixes: Vec<String>,
    /// Keep only keys (relative to the prefix) matching this glob: `*` is any run of
    /// characters within a path segment, `**` any run across segments, `?` one character.
    pub glob: Option<String>,
    /// The objects are WebDataset tar shards: samples come from the tar index stored next to
    /// the manifest (`pai-mount manifest tar-index` builds it), one ranged GET each.
    pub tar_shards: bool,
}

/// One sample: its dataset index, key (relative to the prefix; for tar shards the basename)
/// and bytes. For tar shards, `members` maps each member's extension to its bytes in `data`.
#[derive(Debug, Clone)]
pub struct Sample {
    pub index: u64,
    pub key: String,
    pub data: Bytes,
    pub members: Vec<(String, std::ops::Range<usize>)>,
}

impl Sample {
    /// The bytes of member `ext` (tar shards).
    pub fn member(&self, ext: &str) -> Option<Bytes> {
        self.members
            .iter()
            .find(|(e, _)| e == ext)
            .map(|(_, r)| self.data.slice(r.clone()))
    }
}

/// Where a sample's bytes are.
#[derive(Debug)]
struct SampleRef {
    /// Index into the dataset's objects.
    object: u32,
    /// A byte span of the object (tar shards), or the whole object.
    span: Option<(u64, u64)>,
    /// Tar shards: the sample's basename and members (extension, offset, length).
    name: Option<Box<str>>,
    members: Box<[(Box<str>, u64, u64)]>,
}

/// The runtime and connections of one process. Never used by another process: a forked
/// child that finds its parent's `Conn` builds its own and leaves the parent's alone.
struct Conn {
    pid: u32,
    url: String,
    rt: std::mem::ManuallyDrop<tokio::runtime::Runtime>,
    source: ObjectSource,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.pid == std::process::id() {
            // SAFETY: `rt` is not used again: this is the end of `self`.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.rt) }
        }
        // In a forked child the parent's runtime threads do not exist, and shutting it down
        // would wait for them: its memory is left as it is.
    }
}

/// The objects under a prefix.
pub struct Dataset {
    url: String,
    options: DatasetOptions,
    objects: Arc<Vec<pai_store::object::PinnedObject>>,
    samples: Arc<Vec<SampleRef>>,
    /// This process's runtime and connections, built on first use. Locked only to clone the
    /// `Arc`, never across I/O, so a `fork()` cannot inherit it locked in practice (and
    /// [`Dataset::for_this_process`] never locks it at all).
    conn: Mutex<Option<Arc<Conn>>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("url", &self.url)
            .field("len", &self.samples.len())
            .finish_non_exhaustive()
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("pai-loader")
        .enable_all()
        .build()
}

impl Dataset {
    /// Loads the manifest of `url` (lists the prefix only when there is none), and with
    /// `tar_shards` the tar index.
    pub fn open(url: &str, options: DatasetOptions) -> Result<Self, LoadError> {
        let metrics = Arc::new(Metrics::default());
        let conn = Self::connect(url, &options, &metrics)?;
        Self::open_conn(url, options, conn, metrics)
    }

    /// Like [`Dataset::open`], over a source already connected (a store of any kind, such as
    /// a fault-injecting wrapper in tests). A forked child connects to `url` afresh, as with
    /// `open`.
    pub fn open_on(
        url: &str,
        source: ObjectSource,
        options: DatasetOptions,
    ) -> Result<Self, LoadError> {
        let rt = runtime().map_err(|e| LoadError::Unavailable {
            url: url.to_string(),
            key: None,
            why: format!("starting a runtime: {e}"),
        })?;
        let metrics = source.metrics().clone();
        let conn = Conn {
            pid: std::process::id(),
            url: url.to_string(),
            rt: std::mem::ManuallyDrop::new(rt),
            source,
        };
        Self::open_conn(url, options, conn, metrics)
    }

    fn open_conn(
        url: &str,
        options: DatasetOptions,
        conn: Conn,
        metrics: Arc<Metrics>,
    ) -> Result<Self, LoadError> {
        let ns = Self::namespace(&conn)?;
        let suffixes = Self::suffixes(&options);
        let objects: Vec<_> = ns
            .files()
            .filter(|&id| {
                let name = ns.name_of(id);
                suffixes.is_empty() || suffixes.iter().any(|s| name.ends_with(s.as_str()))
            })
            .map(|id| ns.pin(id).expect("a file"))
            .filter(|o| {
                options
                    .glob
                    .as_deref()
                    .is_none_or(|g| glob_match(g, &o.key))
            })
            .collect();
        let samples = if options.tar_shards {
            Self::tar_samples(url, &conn, &objects)?
        } else {
            (0..objects.len())
                .map(|i| SampleRef {
                    object: i as u32,
                    span: None,
                    name: None,
                    members: Box::new([]),
                })
                .collect()
        };
        Ok(Self {
            url: url.to_string(),
            options,
            objects: Arc::new(objects),
            samples: Arc::new(samples),
            conn: Mutex::new(Some(Arc::new(conn))),
            metrics,
        })
    }

    /// The same dataset (sharing its sample table) with no runtime or connection yet: what a
    /// forked child uses instead of its parent's, without touching the parent's lock.
    pub fn for_this_process(&self) -> Self {
        Self {
            url: self.url.clone(),
            options: self.options.clone(),
            objects: self.objects.clone(),
            samples: self.samples.clone(),
            conn: Mutex::new(None),
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// The URL the dataset was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn suffixes(options: &DatasetOptions) -> Vec<String> {
        if options.suffixes.is_empty() && options.tar_shards {
            vec![".tar".into()]
        } else {
            options.suffixes.clone()
        }
    }

    fn namespace(conn: &Conn) -> Result<Namespace, LoadError> {
        conn.rt
            .block_on(manifest::load_or_list(
                &conn.source,
                &BuildOptions::default(),
            ))
            .map(|(ns, _)| ns)
            .map_err(|e| LoadError::from_source(&conn.url, e))
    }

    /// The samples of the tar index, checked against the manifest's shards.
    fn tar_samples(
        url: &str,
        conn: &Conn,
        objects: &[pai_store::object::PinnedObject],
    ) -> Result<Vec<SampleRef>, LoadError> {
        let bytes = conn
            .rt
            .block_on(conn.source.get_all(tar_index::INDEX_KEY))
            .map_err(|e| LoadError::from_source(url, e))?
            .ok_or_else(|| LoadError::NotFound {
                url: url.to_string(),
                key: Some(tar_index::INDEX_KEY.to_string()),
                why: format!(
                    "no tar index at {}/{}; build it with `pai-mount manifest tar-index {url}`",
                    conn.source.source().display_root(),
                    tar_index::INDEX_KEY
                ),
            })?;
        let index = tar_index::TarIndex::decode(&bytes).map_err(|e| LoadError::Corrupt {
            url: url.to_string(),
            key: tar_index::INDEX_KEY.to_string(),
            why: format!(
                "the tar index is unusable: {e}; rebuild it with `pai-mount manifest tar-index {url}`"
            ),
        })?;
        let by_key: std::collections::HashMap<&str, usize> = objects
            .iter()
            .enumerate()
            .map(|(i, o)| (&*o.key, i))
            .collect();
        let mut samples = Vec::new();
        for shard in &index.shards {
            let Some(&i) = by_key.get(shard.key.as_str()) else {
                continue; // not selected
            };
            if objects[i].etag.as_deref() != shard.etag.as_deref() || objects[i].size != shard.size
            {
                return Err(LoadError::Corrupt {
                    url: url.to_string(),
                    key: shard.key.clone(),
                    why: format!(
                        "the tar index is stale for shard {} (it changed since it was indexed); rebuild it with `pai-mount manifest tar-index {url}`",
                        shard.key
                    ),
                });
            }
            for t in &shard.samples {
                samples.push(SampleRef {
                    object: i as u32,
                    span: Some((t.start, t.end)),
                    name: Some(t.name.clone().into()),
                    members: t
                        .members
                        .iter()
                        .map(|(e, o, l)| (e.clone().into_boxed_str(), *o, *l))
                        .collect(),
                });
            }
        }
        Ok(samples)
    }

    /// Reads every tar shard under `url` once (`concurrency` at a time), indexes its samples
    /// and stores the index next to the manifest. Returns (shards, samples).
    pub fn build_tar_index(
        url: &str,
        options: &DatasetOptions,
        concurrency: usize,
    ) -> Result<(usize, usize), LoadError> {
        let metrics = Arc::new(Metrics::default());
        let conn = Self::connect(url, options, &metrics)?;
        let ns = Self::namespace(&conn)?;
        let suffixes = Self::suffixes(&DatasetOptions {
            tar_shards: true,
            ..options.clone()
        });
        let shards: Vec<_> = ns
            .files()
            .filter(|&id| {
                suffixes
                    .iter()
                    .any(|s| ns.name_of(id).ends_with(s.as_str()))
            })
            .map(|id| ns.pin(id).expect("a file"))
            .collect();
        let source = conn.source.clone();
        let index = conn.rt.block_on(async {
            let results: Vec<Result<tar_index::ShardIndex, LoadError>> =
                futures::stream::iter(shards)
                    .map(|o| {
                        let source = source.clone();
                        async move {
                            let bytes = source
                                .get_range(&o.key, 0..o.size, o.etag.as_deref(), o.size)
                                .await
                                .map_err(|e| {
                                    LoadError::from_read(url, &o.key, "reading a tar shard", e)
                                })?;
                            let (key, etag, size) = (
                                o.key.to_string(),
                                o.etag.as_deref().map(str::to_string),
                                o.size,
                            );
                            tokio::task::spawn_blocking(move || {
                                tar_index::index_shard(&key, etag, size, &bytes[..])
                            })
                            .await
                            .expect("indexing panicked")
                            .map_err(|e| LoadError::Corrupt {
                                url: url.to_string(),
                                key: o.key.to_string(),
                                why: format!("indexing tar shard {}: {e}", o.key),
                            })
                        }
                    })
                    .buffered(concurrency.max(1))
                    .collect()
                    .await;
            results.into_iter().collect::<Result<Vec<_>, _>>()
        })?;
        let samples = index.iter().map(|s| s.samples.len()).sum();
        let shards = index.len();
        let bytes = tar_index::TarIndex { shards: index }.encode();
        conn.rt
            .block_on(conn.source.put(tar_index::INDEX_KEY, bytes.into()))
            .map_err(|e| LoadError::from_source(url, e))?;
        Ok((shards, samples))
    }

    fn connect(
        url: &str,
        options: &DatasetOptions,
        metrics: &Arc<Metrics>,
    ) -> Result<Conn, LoadError> {
        let rt = runtime().map_err(|e| LoadError::Unavailable {
            url: url.to_string(),
            key: None,
            why: format!("starting a runtime: {e}"),
        })?;
        let source = Source::parse(url).map_err(|e| LoadError::from_source(url, e))?;
        let source = rt
            .block_on(ObjectSource::connect(
                source,
                &options.store,
                &ProcessEnv,
                metrics.clone(),
            ))
            .map_err(|e| LoadError::from_source(url, e))?;
        Ok(Conn {
            pid: std::process::id(),
            url: url.to_string(),
            rt: std::mem::ManuallyDrop::new(rt),
            source,
        })
    }

    /// Runs `f` with this process's runtime and source, rebuilding them after a `fork()`.
    fn conn(&self) -> Result<Arc<Conn>, LoadError> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_some_and(|c| c.pid != std::process::id()) {
            *guard = None; // the parent's (`Conn::drop` leaves its runtime alone)
        }
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        drop(guard);
        // Connect without the lock (it makes no request, but builds a runtime).
        let fresh = Arc::new(Self::connect(&self.url, &self.options, &self.metrics)?);
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        Ok(guard.get_or_insert(fresh).clone())
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&tokio::runtime::Runtime, &ObjectSource) -> T,
    ) -> Result<T, LoadError> {
        let c = self.conn()?;
        Ok(f(&c.rt, &c.source))
    }

    pub fn len(&self) -> u64 {
        self.samples.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The key of sample `index` (relative to the prefix; a basename for tar shards).
    pub fn key(&self, index: u64) -> Option<String> {
        let s = self.samples.get(index as usize)?;
        Some(match &s.name {
            Some(n) => n.to_string(),
            None => self.objects[s.object as usize].key.to_string(),
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Reads sample `index`.
    pub fn get(&self, index: u64) -> Result<Sample, LoadError> {
        let fetch = self.fetcher(3)?;
        self.with_conn(|rt, source| rt.block_on(fetch.fetch(source.clone(), index)))?
    }

    fn fetcher(&self, attempts: u32) -> Result<Fetcher, LoadError> {
        Ok(Fetcher {
            url: self.url.as_str().into(),
            objects: self.objects.clone(),
            samples: self.samples.clone(),
            attempts,
        })
    }
}

/// Whether `key` matches `pattern` (`*` within a segment, `**` across segments, `?` one
/// character other than `/`).
pub fn glob_match(pattern: &str, key: &str) -> bool {
    fn go(p: &[u8], k: &[u8]) -> bool {
        match p.first() {
            None => k.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => {
                let rest = &p[2..];
                // `**/` may also match nothing at all.
                let rest_no_slash = rest.strip_prefix(b"/").unwrap_or(rest);
                (0..=k.len()).any(|i| go(rest, &k[i..]) || go(rest_no_slash, &k[i..]))
            }
            Some(b'*') => {
                let rest = &p[1..];
                let mut i = 0;
                loop {
                    if go(rest, &k[i..]) {
                        return true;
                    }
                    if i == k.len() || k[i] == b'/' {
                        return false;
                    }
                    i += 1;
                }
            }
            Some(b'?') => !k.is_empty() && k[0] != b'/' && go(&p[1..], &k[1..]),
            Some(&c) => k.first() == Some(&c) && go(&p[1..], &k[1..]),
        }
    }
    go(pattern.as_bytes(), key.as_bytes())
}

/// What the async side needs to read samples: the pinned objects, shared.
#[derive(Clone)]
struct Fetcher {
    url: Arc<str>,
    objects: Arc<Vec<pai_store::object::PinnedObject>>,
    samples: Arc<Vec<SampleRef>>,
    attempts: u32,
}

impl Fetcher {
    /// Bytes sample `index` occupies.
    fn size_of(&self, index: u64) -> u64 {
        self.samples
            .get(index as usize)
            .map_or(0, |s| match s.span {
                Some((a, b)) => b - a,
                None => self.objects[s.object as usize].size,
            })
    }

    async fn fetch(&self, source: ObjectSource, index: u64) -> Result<Sample, LoadError> {
        let s = self
            .samples
            .get(index as usize)
            .ok_or(LoadError::OutOfRange {
                index,
                len: self.samples.len() as u64,
            })?;
        let o = &self.objects[s.object as usize];
        let range = s.span.map_or(0..o.size, |(a, b)| a..b);
        let key = match &s.name {
            Some(n) => format!("{}#{n}", o.key),
            None => o.key.to_string(),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match source
                .get_range(&o.key, range.clone(), o.etag.as_deref(), o.size)
                .await
            {
                Ok(data) => {
                    return Ok(Sample {
                        index,
                        key: s
                            .name
                            .as_deref()
                            .map_or_else(|| o.key.to_string(), str::to_string),
                        data,
                        members: s
                            .members
                            .iter()
                            .map(|(e, off, len)| {
                                (e.to_string(), *off as usize..(*off + *len) as usize)
                            })
                            .collect(),
                    })
                }
                // A changed or deleted object will not come back by retrying.
                Err(e @ (ReadError::Changed { .. } | ReadError::Gone { .. })) => {
                    return Err(LoadError::from_read(
                        &self.url,
                        &key,
                        &format!("sample {index} ({key})"),
                        e,
                    ))
                }
                Err(e) if attempt >= self.attempts => {
                    return Err(LoadError::from_read(
                        &self.url,
                        &key,
                        &format!("sample {index} ({key}) failed after {attempt} attempts"),
                        e,
                    ))
                }
                Err(e) => {
                    tracing::warn!(key = %key, attempt, "sample read failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
                }
            }
        }
    }
}

/// How a loader reads.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Requests in flight.
    pub in_flight: usize,
    /// Bytes of samples fetched ahead of the consumer.
    pub max_bytes: u64,
    /// Attempts per sample (after the HTTP layer's own retries).
    pub attempts: u32,
    /// Skip (and count) samples that keep failing instead of returning the error.
    pub skip_errors: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            in_flight: 64,
            max_bytes: 256 << 20,
            attempts: 3,
            skip_errors: false,
        }
    }
}

/// Where a reader stands: restart from it with [`Loader::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct State {
    pub seed: u64,
    pub epoch: u64,
    /// Samples the rank's consumer has received this epoch (not those prefetched).
    pub consumed: u64,
}

/// The samples of one worker for one epoch, in order, read ahead.
pub struct Loader {
    /// The process that started the task.
    pid: u32,
    /// Keeps the runtime the task runs on alive as long as the loader.
    #[allow(dead_code)]
    conn: Arc<Conn>,
    rx: tokio::sync::mpsc::Receiver<(
        u64,
        Result<Sample, LoadError>,
        Option<tokio::sync::OwnedSemaphorePermit>,
    )>,
    task: Option<tokio::task::JoinHandle<()>>,
    sampler: Sampler,
    state: State,
    /// This worker's position in its own stream.
    next: u64,
    skip_errors: bool,
    skipped: u64,
}

impl Loader {
    /// Starts reading `dataset` for `layout` and `order` from `state` (its seed replaces the
    /// order's). `state.consumed` counts the rank's samples: each worker starts at its share.
    pub fn new(
        dataset: &Arc<Dataset>,
        layout: Layout,
        order: Order,
        state: State,
        options: LoadOptions,
    ) -> Result<Self, LoadError> {
        layout.check().map_err(|why| LoadError::Invalid { why })?;
        let order = Order {
            seed: state.seed,
            ..order
        };
        let sampler = Sampler::new(dataset.len(), layout, order);
        let start = sampler.worker_start(state.consumed);
        let mut loader = Self::at_position(dataset, layout, order, state.epoch, 0, start, options)?;
        loader.state = state;
        Ok(loader)
    }

    /// Starts reading this worker's stream of `epoch`, with runs dealt from the rank-level
    /// position `base` (see [`Sampler::starting_at`]), at the worker's `position`-th sample
    /// of that stream. `base` is what a consumer that counts the rank's samples resumes
    /// from, with any worker count; `position` is a worker-level resume point, as a
    /// per-worker checkpoint records it.
    pub fn at_position(
        dataset: &Arc<Dataset>,
        layout: Layout,
        order: Order,
        epoch: u64,
        base: u64,
        position: u64,
        options: LoadOptions,
    ) -> Result<Self, LoadError> {
        layout.check().map_err(|why| LoadError::Invalid { why })?;
        let sampler = Sampler::new(dataset.len(), layout, order).starting_at(base);
        let end = sampler.worker_len();
        let start = position.min(end);
        let state = State {
            seed: order.seed,
            epoch,
            consumed: 0,
        };
        let fetch = dataset.fetcher(options.attempts.max(1))?;
        let budget_kib = (options.max_bytes / 1024).clamp(1, u64::from(u32::MAX)) as u32;
        let budget = Arc::new(Semaphore::new(budget_kib as usize));
        let in_flight = options.in_flight.max(1);
        let (tx, rx) = tokio::sync::mpsc::channel(in_flight);
        let conn = dataset.conn()?;
        let source = conn.source.clone();
        let task = conn.rt.spawn(async move {
            let mut results = futures::stream::iter(start..end)
                .map(|j| {
                    let (fetch, source, budget) = (fetch.clone(), source.clone(), budget.clone());
                    async move {
                        let index = sampler.index(epoch, j);
                        let size = fetch.size_of(index);
                        let kib = (size / 1024).clamp(1, u64::from(budget_kib)) as u32;
                        let permit = budget.acquire_many_owned(kib).await.ok();
                        (j, fetch.fetch(source, index).await, permit)
                    }
                })
                .buffered(in_flight);
            while let Some(item) = results.next().await {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            pid: std::process::id(),
            conn,
            rx,
            task: Some(task),
            sampler,
            state,
            next: start,
            skip_errors: options.skip_errors,
            skipped: 0,
        })
    }

    /// Samples this worker yields per epoch.
    pub fn len(&self) -> u64 {
        self.sampler.worker_len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The state to resume from. With one worker per rank this is exact; with several, the
    /// consumer that interleaves them counts the rank's samples itself.
    pub fn state(&self) -> State {
        self.state
    }

    /// This worker's position in its own stream: the next sample it hands out (what
    /// [`Loader::at_position`] resumes from).
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Samples skipped because they kept failing (only with `skip_errors`).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

impl Iterator for Loader {
    type Item = Result<Sample, LoadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (j, result, _permit) = self.rx.blocking_recv()?;
            self.next = j + 1;
            match result {
                Err(e) if self.skip_errors => {
                    tracing::warn!("skipping a sample: {e}");
                    self.skipped += 1;
                    continue;
                }
                Ok(sample) => {
                    self.state.consumed += 1;
                    return Some(Ok(sample));
                }
                // An error is not a consumed sample: resuming reads it again.
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        match self.task.take() {
            Some(t) if self.pid == std::process::id() => t.abort(),
            // A forked child's copy: the task belongs to the parent's runtime.
            Some(t) => std::mem::forget(t),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs_match_within_and_across_segments() {
        assert!(glob_match("train/*.jpg", "train/a.jpg"));
        assert!(!glob_match("train/*.jpg", "train/x/a.jpg"));
        assert!(glob_match("train/**/*.jpg", "train/x/y/a.jpg"));
        assert!(glob_match("train/**/*.jpg", "train/a.jpg"));
        assert!(glob_match("**", "anything/at/all"));
        assert!(glob_match("s?/0.cls", "s1/0.cls"));
        assert!(!glob_match("s?/0.cls", "s12/0.cls"));
        assert!(!glob_match("*.jpg", "a.jpeg"));
    }
}

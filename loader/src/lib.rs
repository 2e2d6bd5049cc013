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

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use pai_mount_fs::manifest::{self, BuildOptions};
use pai_mount_fs::metrics::Metrics;
use pai_mount_fs::namespace::Namespace;
use pai_mount_fs::object::credentials::ProcessEnv;
use pai_mount_fs::object::{ObjectSource, ReadError, Source, StoreOptions};
use tokio::sync::Semaphore;

pub use sampler::{Layout, Order, Sampler, Shuffle};

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Source(String),
    #[error("sample {index} ({key}) failed after {attempts} attempts: {source}")]
    Object {
        index: u64,
        key: String,
        attempts: u32,
        #[source]
        source: ReadError,
    },
    #[error("index {index} is out of range (the dataset has {len} samples)")]
    OutOfRange { index: u64, len: u64 },
    #[error("bad layout: {0}")]
    Layout(String),
}

/// How to open a dataset.
#[derive(Debug, Clone, Default)]
pub struct DatasetOptions {
    pub store: StoreOptions,
    /// Keep only keys ending with one of these (for example `.jpg`); empty keeps everything.
    pub suffixes: Vec<String>,
}

/// One sample: its dataset index, key (relative to the prefix) and bytes.
#[derive(Debug, Clone)]
pub struct Sample {
    pub index: u64,
    pub key: String,
    pub data: Bytes,
}

/// The runtime and connection of one process.
struct Conn {
    pid: u32,
    rt: tokio::runtime::Runtime,
    source: ObjectSource,
}

/// The objects under a prefix.
pub struct Dataset {
    url: String,
    options: DatasetOptions,
    ns: Namespace,
    /// Namespace file ids of the samples, in manifest order.
    ids: Vec<u32>,
    conn: Mutex<Option<Conn>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("url", &self.url)
            .field("len", &self.ids.len())
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
    /// Loads the manifest of `url` (lists the prefix only when there is none).
    pub fn open(url: &str, options: DatasetOptions) -> Result<Self, LoadError> {
        let metrics = Arc::new(Metrics::default());
        let conn = Self::connect(url, &options, &metrics)?;
        let (ns, _) = conn
            .rt
            .block_on(manifest::load_or_list(
                &conn.source,
                &BuildOptions::default(),
            ))
            .map_err(|e| LoadError::Source(e.to_string()))?;
        let ids = ns
            .files()
            .filter(|&id| {
                options.suffixes.is_empty() || {
                    let name = ns.name_of(id);
                    options.suffixes.iter().any(|s| name.ends_with(s.as_str()))
                }
            })
            .collect();
        Ok(Self {
            url: url.to_string(),
            options,
            ns,
            ids,
            conn: Mutex::new(Some(conn)),
            metrics,
        })
    }

    fn connect(
        url: &str,
        options: &DatasetOptions,
        metrics: &Arc<Metrics>,
    ) -> Result<Conn, LoadError> {
        let rt = runtime().map_err(|e| LoadError::Source(format!("starting a runtime: {e}")))?;
        let source = Source::parse(url).map_err(|e| LoadError::Source(e.to_string()))?;
        let source = rt
            .block_on(ObjectSource::connect(
                source,
                &options.store,
                &ProcessEnv,
                metrics.clone(),
            ))
            .map_err(|e| LoadError::Source(e.to_string()))?;
        Ok(Conn {
            pid: std::process::id(),
            rt,
            source,
        })
    }

    /// Runs `f` with this process's runtime and source, rebuilding them after a `fork()`.
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&tokio::runtime::Runtime, &ObjectSource) -> T,
    ) -> Result<T, LoadError> {
        let mut guard = self.conn.lock().unwrap();
        if guard.as_ref().is_some_and(|c| c.pid != std::process::id()) {
            // The parent's runtime threads do not exist here; dropping it could wait for them.
            std::mem::forget(guard.take());
        }
        if guard.is_none() {
            *guard = Some(Self::connect(&self.url, &self.options, &self.metrics)?);
        }
        let c = guard.as_ref().expect("just set");
        Ok(f(&c.rt, &c.source))
    }

    pub fn len(&self) -> u64 {
        self.ids.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The key of sample `index` (relative to the prefix).
    pub fn key(&self, index: u64) -> Option<String> {
        self.ids.get(index as usize).map(|&id| self.ns.key_of(id))
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
            objects: Arc::new(
                self.ids
                    .iter()
                    .map(|&id| self.ns.pin(id).expect("a file"))
                    .collect(),
            ),
            attempts,
        })
    }
}

/// What the async side needs to read samples: the pinned objects, shared.
#[derive(Clone)]
struct Fetcher {
    objects: Arc<Vec<pai_mount_fs::reader::PinnedObject>>,
    attempts: u32,
}

impl Fetcher {
    async fn fetch(&self, source: ObjectSource, index: u64) -> Result<Sample, LoadError> {
        let o = self
            .objects
            .get(index as usize)
            .ok_or(LoadError::OutOfRange {
                index,
                len: self.objects.len() as u64,
            })?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match source
                .get_range(&o.key, 0..o.size, o.etag.as_deref(), o.size)
                .await
            {
                Ok(data) => {
                    return Ok(Sample {
                        index,
                        key: o.key.to_string(),
                        data,
                    })
                }
                // A changed or deleted object will not come back by retrying.
                Err(e @ (ReadError::Changed { .. } | ReadError::Gone { .. })) => {
                    return Err(LoadError::Object {
                        index,
                        key: o.key.to_string(),
                        attempts: attempt,
                        source: e,
                    })
                }
                Err(e) if attempt >= self.attempts => {
                    return Err(LoadError::Object {
                        index,
                        key: o.key.to_string(),
                        attempts: attempt,
                        source: e,
                    })
                }
                Err(e) => {
                    tracing::warn!(key = %o.key, attempt, "sample read failed, retrying: {e}");
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
        layout.check().map_err(LoadError::Layout)?;
        let order = Order {
            seed: state.seed,
            ..order
        };
        let sampler = Sampler::new(dataset.len(), layout, order);
        let start = sampler.worker_start(state.consumed);
        let end = sampler.worker_len();
        let fetch = dataset.fetcher(options.attempts.max(1))?;
        let budget_kib = (options.max_bytes / 1024).clamp(1, u64::from(u32::MAX)) as u32;
        let budget = Arc::new(Semaphore::new(budget_kib as usize));
        let in_flight = options.in_flight.max(1);
        let (tx, rx) = tokio::sync::mpsc::channel(in_flight);
        let epoch = state.epoch;
        let task = dataset.with_conn(|rt, source| {
            let source = source.clone();
            rt.spawn(async move {
                let mut results = futures::stream::iter(start..end)
                    .map(|j| {
                        let (fetch, source, budget) =
                            (fetch.clone(), source.clone(), budget.clone());
                        async move {
                            let index = sampler.index(epoch, j);
                            let size = fetch.objects.get(index as usize).map_or(0, |o| o.size);
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
            })
        })?;
        Ok(Self {
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
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

//! The prefetching reader: one per open handle, sharing one global memory budget.
//!
//! ## Design
//! Objects are read in [`BLOCK_SIZE`] blocks, the unit of the disk cache. A read needs the
//! blocks it overlaps ("demand" blocks); a handle that reads sequentially also keeps a
//! *window* of blocks ahead of it in flight ("prefetch" blocks).
//!
//! - **Sequential detection.** A read is sequential when it starts within
//!   [`PrefetchConfig::seek_back`] before or [`PrefetchConfig::seek_forward`] after where the
//!   previous read ended, or inside a block the handle already holds. Small seeks, and the
//!   out-of-order reads the kernel's async readahead produces, keep the window.
//! - **Window growth.** The first read fetches only its own blocks (1 MiB, so `head` is cheap;
//!   an object under 1 MiB is fetched whole). Each sequential read doubles the window, up to
//!   [`PrefetchConfig::max_window`] and the handle's fair share of the budget.
//! - **Parts.** Missing window blocks are fetched as ranged GETs of up to
//!   [`PrefetchConfig::part_size`], all in flight at once. Each GET carries the pinned ETag.
//! - **Random access.** A read that is not sequential drops the window (releasing its budget)
//!   and fetches only its own range, rounded out to [`PrefetchConfig::random_granule`]
//!   (or serves it from the disk cache when its block is there).
//! - **Disk tier.** Before a GET, each block is looked up in the disk cache (all blocks of a
//!   part at once, each delivered as soon as it and the blocks before it are read); only the
//!   missing runs are fetched. Fetched blocks are written to it after readers have them.
//!
//! ## Request cap
//! Every GET, demand or prefetch, first takes one of [`PrefetchConfig::max_requests`] permits
//! (waiting for it): a request in flight needs only the network to finish, so waiting on this
//! cap cannot deadlock.
//!
//! ## Memory budget
//! Prefetch blocks hold permits of one global semaphore (one permit per block), taken with
//! `try_acquire`: when the budget is exhausted a handle prefetches fewer blocks, or none, and
//! never waits, so a handle can never deadlock against idle handles holding the budget. A part's
//! permits are released when its blocks are consumed or dropped, and its cache writes are done.
//! Demand blocks are not budgeted: at most one read per FUSE request is in flight, so they are
//! bounded by `max_background` (64) × `max_read` (1 MiB) = 64 MiB plus one recent block per
//! open handle. Peak memory is therefore budget + 64 MiB + open handles × 1 MiB.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::buf::BufPool;
use crate::cache::{BlockId, DiskCache, BLOCK_SIZE};
use crate::metrics::Metrics;
use crate::object::checksum::FullChecksum;
use crate::object::SourceKind;
use crate::object::{ObjectSource, ReadError};
use crate::reader::{ObjectReader, PinnedObject, ReaderFactory};

mod verify;
use verify::{Chain, Verdict};

/// Idle block buffers kept for reuse (64 MiB at most).
const POOL_BLOCKS: usize = 64;

/// Tuning of the prefetcher. Every default is safe on a 16 GiB machine.
#[derive(Debug, Clone)]
pub struct PrefetchConfig {
    /// Bytes per ranged GET of a prefetch part. 8 MiB amortizes 10-30 ms of first-byte latency
    /// at 50-100 MB/s per connection.
    pub part_size: u64,
    /// Largest window a handle keeps in flight. 64 MiB is 8 parts: enough concurrency to fill
    /// a 10 Gbit/s link at 30 ms latency from one reader.
    pub max_window: u64,
    /// Prefetched bytes all handles together may hold. 1 GiB leaves a 16 GiB machine's memory
    /// to the training job.
    pub budget: u64,
    /// How far forward of the last read a read still counts as sequential.
    pub seek_forward: u64,
    /// How far back of the last read a read still counts as sequential.
    pub seek_back: u64,
    /// A random read fetches its own range rounded out to this alignment, not a whole block:
    /// 64 KiB keeps a 4 KiB random read's amplification near what the kernel asks for anyway.
    /// Random reads are served from the disk cache when their block is there, but do not fill
    /// it (a partial block cannot be cached); sequential reads and `warm` do.
    pub random_granule: u64,
    /// GET requests in flight for the whole mount. Each request costs connection and body
    /// buffers beyond its bytes, so this cap, not only the byte budget, bounds memory; 32 parts
    /// of 8 MiB in flight already keep 25 Gbit/s busy at 20 ms of first-byte latency.
    pub max_requests: usize,
    /// Check files read front to back against the store's full-object checksum by combining
    /// their blocks' CRCs (see [`verify`]); costs one HEAD per file of more than one block.
    pub verify: bool,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        Self {
            part_size: 8 << 20,
            max_window: 64 << 20,
            budget: 1 << 30,
            seek_forward: 16 << 20,
            seek_back: 2 << 20,
            random_granule: 64 << 10,
            max_requests: 32,
            verify: true,
        }
    }
}

// ---- Pure block and window math, property-tested. ----

/// The blocks `[first, last]` that bytes `range` of an object overlap.
pub fn blocks_of(range: &Range<u64>) -> Range<u64> {
    if range.is_empty() {
        return 0..0;
    }
    range.start / BLOCK_SIZE..(range.end - 1) / BLOCK_SIZE + 1
}

/// The byte range of block `index` in an object of `size` bytes.
pub fn block_range(index: u64, size: u64) -> Range<u64> {
    let start = (index * BLOCK_SIZE).min(size);
    start..(start + BLOCK_SIZE).min(size)
}

/// The next window after a read: doubled when sequential, reset to one block otherwise,
/// capped at `cap` and never below one block.
pub fn next_window(window: u64, sequential: bool, cap: u64) -> u64 {
    let w = if sequential {
        window.saturating_mul(2)
    } else {
        BLOCK_SIZE
    };
    w.min(cap.max(BLOCK_SIZE)).max(BLOCK_SIZE)
}

/// The block after the last one a handle should hold once a read has ended at `read_end`:
/// `window` bytes ahead, within an object of `size` bytes.
///
/// Once the window is at least a part (`part_size`), its end is rounded up to a whole part
/// (aligned from block 0). Without that, a reader advancing one block
/// would extend the window by one block and start a 1 MiB GET per read: each pays the full
/// first-byte latency, and a handle's parts in flight carry an eighth of the bytes they could.
/// With it, the window end stays put until the reader crosses a part boundary and then moves by
/// a whole part, so steady-state prefetch is part-sized GETs.
pub fn window_end(read_end: u64, window: u64, size: u64, part_size: u64) -> u64 {
    let part_blocks = (part_size / BLOCK_SIZE).max(1);
    let total = size.div_ceil(BLOCK_SIZE);
    let end = blocks_of(&(0..(read_end.saturating_add(window)).min(size))).end;
    let end = if window >= part_size && part_blocks > 1 {
        end.div_ceil(part_blocks).saturating_mul(part_blocks)
    } else {
        end
    };
    end.min(total)
}

/// Splits the block indexes `wanted` (sorted) into runs of consecutive blocks of at most
/// `max_blocks` each.
pub fn runs(wanted: &[u64], max_blocks: u64) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for &b in wanted {
        match out.last_mut() {
            Some(r) if r.end == b && r.end - r.start < max_blocks.max(1) => r.end += 1,
            _ => out.push(b..b + 1),
        }
    }
    out
}

// ---- The budget. ----

/// The global budget for prefetched bytes.
#[derive(Debug)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    total_blocks: usize,
    metrics: Arc<Metrics>,
}

/// Blocks held against the budget; released on drop.
#[derive(Debug)]
struct Held {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
    metrics: Arc<Metrics>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.metrics
            .budget_held
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl MemoryBudget {
    pub fn new(bytes: u64, metrics: Arc<Metrics>) -> Self {
        let total_blocks = (bytes / BLOCK_SIZE).max(1) as usize;
        Self {
            permits: Arc::new(Semaphore::new(total_blocks)),
            total_blocks,
            metrics,
        }
    }

    /// Takes up to `blocks` permits without waiting; `None` when none are free.
    fn try_take(&self, blocks: u64) -> Option<(Held, u64)> {
        let mut n = blocks.min(self.total_blocks as u64);
        while n > 0 {
            if let Ok(p) = self.permits.clone().try_acquire_many_owned(n as u32) {
                let bytes = n * BLOCK_SIZE;
                let now = self.metrics.budget_held.fetch_add(bytes, Ordering::Relaxed) + bytes;
                self.metrics.budget_peak.fetch_max(now, Ordering::Relaxed);
                return Some((
                    Held {
                        _permit: p,
                        bytes,
                        metrics: self.metrics.clone(),
                    },
                    n,
                ));
            }
            n /= 2;
        }
        None
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_blocks as u64 * BLOCK_SIZE
    }
}

// ---- Parts: one fetch of consecutive blocks. ----

/// What a part has delivered so far: its first blocks, in order, as they arrive; and the
/// error that ended it, if one did (blocks delivered before it stay good).
#[derive(Default)]
struct Progress {
    blocks: Vec<Block>,
    error: Option<Arc<ReadError>>,
}

/// One block of a part, with its CRC when its reader verifies (see [`verify`]).
#[derive(Clone)]
struct Block {
    bytes: Bytes,
    crc: Option<u64>,
}

/// Parts in flight or held by any handle, by (object identity, block): handles of the same
/// object find each other's parts here instead of fetching the same bytes again. Weak
/// references, so the registry never keeps a part (or its budget) alive.
type Registry = std::sync::Mutex<std::collections::HashMap<(Arc<str>, u64), std::sync::Weak<Part>>>;

struct Part {
    blocks: Range<u64>,
    /// Where this part is registered, to unregister on drop.
    registry: Arc<Registry>,
    ident: Arc<str>,
    /// Bytes of the blocks delivered so far (for the live-bytes gauge).
    live: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    /// Blocks are readable as soon as each one has arrived, not when the whole part has.
    progress: tokio::sync::watch::Receiver<Progress>,
    /// Set once the fetch ended (every block delivered, or an error), before cache writes.
    fetched: Arc<AtomicBool>,
    abort: tokio::task::AbortHandle,
    _held: Option<Arc<Held>>,
}

impl Part {
    /// Whether the fetch ended with an error (such a part is never reused).
    fn failed(&self) -> bool {
        self.progress.borrow().error.is_some()
    }

    /// Whether block `b` of this part has arrived.
    fn delivered(&self, b: u64) -> bool {
        self.progress.borrow().blocks.len() > (b - self.blocks.start) as usize
    }

    /// Block `b` of this part, waiting until it has arrived.
    async fn block(&self, b: u64) -> Result<Block, Arc<ReadError>> {
        let i = (b - self.blocks.start) as usize;
        let mut rx = self.progress.clone();
        let outcome = match rx
            .wait_for(|p| p.blocks.len() > i || p.error.is_some())
            .await
        {
            Ok(p) => match p.blocks.get(i) {
                Some(block) => Ok(block.clone()),
                None => Err(p.error.clone().expect("waited for a block or an error")),
            },
            // The fetch task ended without a word: it was cancelled or panicked.
            Err(_) => Err(Arc::new(ReadError::Store {
                key: String::new(),
                source: "fetch was cancelled".into(),
            })),
        };
        outcome
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        // Lock order: a handle's state, then the registry. Parts are never dropped while the
        // registry lock is held (see `plan`), so this cannot deadlock.
        if let Ok(mut reg) = self.registry.lock() {
            for b in self.blocks.clone() {
                let key = (self.ident.clone(), b);
                if reg.get(&key).is_some_and(|w| w.strong_count() == 0) {
                    reg.remove(&key);
                }
            }
        }
        self.metrics
            .parts_live
            .fetch_sub(self.live.swap(0, Ordering::AcqRel), Ordering::Relaxed);
        // An unconsumed fetch that is still running is wasted work: stop it. One that delivered
        // every block may still be finishing its request or writing to the disk cache; let it
        // finish (a reader can take the last block and close the file before the task notices
        // its request ended, and aborting then lost the part's cache writes).
        let total = (self.blocks.end - self.blocks.start) as usize;
        let all_delivered = self.progress.borrow().blocks.len() == total;
        if !all_delivered && !self.fetched.load(Ordering::Acquire) {
            self.abort.abort();
        }
    }
}

/// Makes prefetching readers. One per mount.
pub struct Prefetcher {
    source: ObjectSource,
    /// Part tasks running (fetching, or writing fetched blocks to the disk cache).
    tasks: Arc<AtomicUsize>,
    pool: Arc<BufPool>,
    requests: Arc<Semaphore>,
    registry: Arc<Registry>,
    cache: Option<Arc<DiskCache>>,
    budget: Arc<MemoryBudget>,
    config: PrefetchConfig,
    open_readers: Arc<AtomicUsize>,
    root: Arc<str>,
}

impl Prefetcher {
    pub fn new(
        source: ObjectSource,
        cache: Option<Arc<DiskCache>>,
        config: PrefetchConfig,
    ) -> Self {
        let budget = Arc::new(MemoryBudget::new(config.budget, source.metrics().clone()));
        let root = source.source().display_root().into();
        Self {
            requests: Arc::new(Semaphore::new(config.max_requests.max(1))),
            // Enough idle buffers to cover the parts that finish while their readers catch up.
            pool: BufPool::new(BLOCK_SIZE as usize, POOL_BLOCKS),
            tasks: Arc::default(),
            registry: Arc::default(),
            source,
            cache,
            budget,
            config,
            open_readers: Arc::new(AtomicUsize::new(0)),
            root,
        }
    }

    /// The disk cache, if the mount has one.
    pub fn cache(&self) -> Option<&Arc<DiskCache>> {
        self.cache.as_ref()
    }

    pub fn budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    /// Fills the disk cache with every block of `object` (for `warm`). Returns bytes fetched.
    pub async fn warm(&self, object: PinnedObject) -> Result<u64, ReadError> {
        let reader = self.reader(object.clone());
        let blocks: Vec<u64> = (0..object.size.div_ceil(BLOCK_SIZE)).collect();
        let mut fetched = 0;
        for run in runs(&blocks, self.config.part_size / BLOCK_SIZE) {
            let part = reader.spawn_part(run.clone(), None);
            for b in run {
                fetched += part
                    .block(b)
                    .await
                    .map_err(|e| clone_error(&e))?
                    .bytes
                    .len() as u64;
            }
            // Wait for the cache writes too: the fetch task sets `fetched` before writing, so
            // poll the task's completion through its abort handle.
            while !part.abort.is_finished() {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        Ok(fetched)
    }

    fn reader(&self, object: PinnedObject) -> PrefetchReader {
        self.open_readers.fetch_add(1, Ordering::Relaxed);
        let ident: Arc<str> = format!(
            "{}\u{0}{}",
            object.key,
            object.etag.as_deref().unwrap_or("")
        )
        .into();
        // Files of one block are read whole and checked as they arrive; unpinned ones could
        // be compared with another version's checksum.
        let chain = (self.config.verify
            && object.size > BLOCK_SIZE
            && object.etag.is_some()
            && self.source.source().kind != SourceKind::File)
            .then(|| Chain::new(self.source.checksum_kind(), object.size));
        PrefetchReader {
            crc_kind: chain.as_ref().map(Chain::kind),
            stated: Arc::default(),
            object,
            tasks: self.tasks.clone(),
            pool: self.pool.clone(),
            ident,
            registry: self.registry.clone(),
            requests: self.requests.clone(),
            source: self.source.clone(),
            cache: self.cache.clone(),
            budget: self.budget.clone(),
            config: self.config.clone(),
            open_readers: self.open_readers.clone(),
            root: self.root.clone(),
            state: std::sync::Mutex::new(State {
                next: 0,
                window: BLOCK_SIZE,
                parts: BTreeMap::new(),
                started: false,
                chain,
                asked: false,
            }),
        }
    }
}

impl ReaderFactory for Prefetcher {
    fn open(&self, object: PinnedObject) -> Box<dyn ObjectReader> {
        Box::new(self.reader(object))
    }

    fn busy(&self) -> bool {
        self.tasks.load(Ordering::Acquire) > 0
    }
}

/// Counts a running part task; dropped when the task ends or is aborted.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn start(tasks: &Arc<AtomicUsize>) -> Self {
        tasks.fetch_add(1, Ordering::AcqRel);
        Self(tasks.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct State {
    /// Where the last read ended.
    next: u64,
    window: u64,
    /// Block index -> the part that holds it.
    parts: BTreeMap<u64, Arc<Part>>,
    started: bool,
    /// The running CRC of the blocks read so far, when this handle verifies.
    chain: Option<Chain>,
    /// Whether the store's checksum has been asked for.
    asked: bool,
}

/// The reader of one open handle.
pub struct PrefetchReader {
    object: PinnedObject,
    tasks: Arc<AtomicUsize>,
    pool: Arc<BufPool>,
    /// Key and ETag: handles with the same identity share parts.
    ident: Arc<str>,
    registry: Arc<Registry>,
    requests: Arc<Semaphore>,
    source: ObjectSource,
    cache: Option<Arc<DiskCache>>,
    budget: Arc<MemoryBudget>,
    config: PrefetchConfig,
    open_readers: Arc<AtomicUsize>,
    root: Arc<str>,
    state: std::sync::Mutex<State>,
    /// The kind of CRC each block gets, when this handle verifies.
    crc_kind: Option<FullChecksum>,
    /// The full-object checksum the store states (one HEAD, shared by whoever needs it first).
    stated: Arc<tokio::sync::OnceCell<Option<FullChecksum>>>,
}

impl Drop for PrefetchReader {
    fn drop(&mut self) {
        self.open_readers.fetch_sub(1, Ordering::Relaxed);
    }
}

fn clone_error(e: &ReadError) -> ReadError {
    match e {
        ReadError::Changed { key, pinned } => ReadError::Changed {
            key: key.clone(),
            pinned: pinned.clone(),
        },
        ReadError::Gone { key } => ReadError::Gone { key: key.clone() },
        ReadError::Short { key, wanted, got } => ReadError::Short {
            key: key.clone(),
            wanted: *wanted,
            got: *got,
        },
        ReadError::Corrupt {
            key,
            stated,
            computed,
        } => ReadError::Corrupt {
            key: key.clone(),
            stated: stated.clone(),
            computed: computed.clone(),
        },
        ReadError::TimedOut { key, after } => ReadError::TimedOut {
            key: key.clone(),
            after: *after,
        },
        ReadError::Store { key, source } => ReadError::Store {
            key: key.clone(),
            source: source.to_string().into(),
        },
    }
}

impl PrefetchReader {
    fn block_id(&self, index: u64) -> Option<BlockId> {
        Some(BlockId {
            root: self.root.clone(),
            key: self.object.key.clone(),
            etag: self.object.etag.clone()?,
            index,
        })
    }

    /// Starts fetching `blocks`: disk cache first, then one ranged GET per run of missing
    /// blocks; fetched blocks go to the disk cache afterwards.
    fn spawn_part(&self, blocks: Range<u64>, held: Option<Held>) -> Arc<Part> {
        let (tx, rx) = tokio::sync::watch::channel(Progress::default());
        let fetched = Arc::new(AtomicBool::new(false));
        let live = Arc::new(AtomicU64::new(0));
        let held = held.map(Arc::new);
        let task = {
            let source = self.source.clone();
            let cache = self.cache.clone();
            let object = self.object.clone();
            let ids: Vec<Option<BlockId>> = blocks.clone().map(|b| self.block_id(b)).collect();
            let blocks = blocks.clone();
            let fetched = fetched.clone();
            let held = held.clone();
            let live = live.clone();
            let metrics = self.source.metrics().clone();
            let requests = self.requests.clone();
            let pool = self.pool.clone();
            let kind = self.crc_kind;
            let running = Running::start(&self.tasks);
            async move {
                let _running = running;
                // Delivers the blocks of `out` that are now there in order: a reader waiting
                // for block i needs blocks up to i, not the whole part.
                let deliver = |out: &[Option<Block>]| {
                    tx.send_modify(|p| {
                        while let Some(Some(block)) = out.get(p.blocks.len()) {
                            let n = block.bytes.len() as u64;
                            live.fetch_add(n, Ordering::AcqRel);
                            let now = metrics.parts_live.fetch_add(n, Ordering::Relaxed) + n;
                            metrics.parts_peak.fetch_max(now, Ordering::Relaxed);
                            p.blocks.push(block.clone());
                        }
                    })
                };
                let mut out: Vec<Option<Block>> = vec![None; ids.len()];
                if let Some(cache) = &cache {
                    // All blocks of the part at once: the engine overlaps their disk reads, and
                    // each block is delivered as soon as it and the ones before it are read.
                    let mut reads: futures::stream::FuturesUnordered<_> = ids
                        .iter()
                        .enumerate()
                        .filter_map(|(i, id)| id.as_ref().map(|id| (i, id)))
                        .map(|(i, id)| async move { (i, cache.get(id).await) })
                        .collect();
                    while let Some((i, block)) = futures::StreamExt::next(&mut reads).await {
                        if let Some(bytes) = block {
                            let crc = kind.map(|k| k.of(&bytes).value());
                            out[i] = Some(Block { bytes, crc });
                            deliver(&out);
                        }
                    }
                }
                let missing: Vec<u64> = blocks
                    .clone()
                    .zip(&out)
                    .filter(|(_, b)| b.is_none())
                    .map(|(i, _)| i)
                    .collect();
                let mut new_blocks = Vec::new();
                for run in runs(&missing, u64::MAX) {
                    let range = block_range(run.start, object.size).start
                        ..block_range(run.end - 1, object.size).end;
                    let _request = requests.acquire().await.expect("never closed");
                    let mut next = run.start;
                    let fetch = fetch_blocks(&source, &object, range, &pool, kind, |block| {
                        new_blocks.push((next, block.bytes.clone()));
                        out[(next - blocks.start) as usize] = Some(block);
                        next += 1;
                        deliver(&out);
                    })
                    .await;
                    if let Err(e) = fetch {
                        tx.send_modify(|p| p.error = Some(Arc::new(e)));
                        break;
                    }
                }
                fetched.store(true, Ordering::Release);
                if let Some(cache) = &cache {
                    for (b, bytes) in new_blocks {
                        if let Some(id) = &ids[(b - blocks.start) as usize] {
                            cache.put(id, bytes).await;
                        }
                    }
                }
                drop(held);
            }
        };
        let handle = tokio::spawn(task);
        Arc::new(Part {
            blocks,
            registry: self.registry.clone(),
            ident: self.ident.clone(),
            live,
            metrics: self.source.metrics().clone(),
            progress: rx,
            fetched,
            abort: handle.abort_handle(),
            _held: held,
        })
    }

    /// Decides what to fetch for a read of `range`, under the state lock.
    fn plan(&self, range: &Range<u64>) -> Plan {
        let size = self.object.size;
        let demand = blocks_of(range);
        let mut st = self.state.lock().unwrap();
        // A part that failed (a prefetch during an outage, say) is fetched again when needed.
        st.parts.retain(|_, p| !p.failed());
        let holds_first = st.parts.contains_key(&demand.start);
        let sequential = st.started
            && (holds_first
                || (range.start + self.config.seek_back >= st.next
                    && range.start <= st.next + self.config.seek_forward));
        if !sequential {
            st.parts.clear();
        }
        // The first read of a handle at offset 0 starts a stream; any other non-sequential
        // read is random.
        let starts_stream = !st.started && range.start == 0;
        if !sequential && !starts_stream {
            st.started = true;
            st.window = BLOCK_SIZE;
            st.next = range.end;
            return Plan::Direct;
        }
        let readers = self.open_readers.load(Ordering::Relaxed).max(1) as u64;
        let share = (self.budget.total_bytes() / readers).max(BLOCK_SIZE);
        let cap = self.config.max_window.min(share);
        // The first read of a handle is not "sequential" but starts a stream at block 0.
        st.window = if !st.started && range.start == 0 {
            BLOCK_SIZE
        } else if range.end > st.next || !sequential {
            next_window(st.window, sequential, cap)
        } else {
            st.window.min(cap)
        };
        st.started = true;
        st.next = st.next.max(range.end);
        if !sequential {
            st.next = range.end;
        }
        // Parts found in the registry whose fetch failed; dropped after the lock is released.
        let mut discard: Vec<Arc<Part>> = Vec::new();
        let mut reg = self.registry.lock().unwrap();
        // Demand blocks: held by this handle, shared by another, or one new part per run.
        let missing: Vec<u64> = demand
            .clone()
            .filter(|&b| !self.adopt(&reg, &mut st, b, &mut discard))
            .collect();
        for run in runs(&missing, u64::MAX) {
            let part = self.spawn_part(run.clone(), None);
            self.register(&mut reg, &mut st, &part, &mut discard);
        }
        let wanted: Vec<Arc<Part>> = demand.clone().map(|b| st.parts[&b].clone()).collect();
        // Prefetch: blocks after the demand, up to the window, that nobody holds yet.
        if sequential || range.start == 0 {
            let part_blocks = (self.config.part_size / BLOCK_SIZE).max(1);
            let end_block = window_end(range.end, st.window, size, self.config.part_size);
            let ahead: Vec<u64> = (demand.end..end_block)
                .filter(|&b| !self.adopt(&reg, &mut st, b, &mut discard))
                .collect();
            'parts: for run in runs(&ahead, part_blocks) {
                let mut start = run.start;
                while start < run.end {
                    let Some((held, n)) = self.budget.try_take(run.end - start) else {
                        break 'parts; // budget exhausted: prefetch less, never wait
                    };
                    let blocks = start..start + n;
                    let bytes =
                        block_range(blocks.end - 1, size).end - block_range(start, size).start;
                    Metrics::add(&self.source.metrics().prefetch_bytes, bytes);
                    let part = self.spawn_part(blocks, Some(held));
                    self.register(&mut reg, &mut st, &part, &mut discard);
                    start += n;
                }
            }
        }
        drop(reg);
        drop(discard);
        // Forget blocks more than one block behind this read.
        let keep_from = demand.start.saturating_sub(1);
        st.parts = st.parts.split_off(&keep_from);
        Plan::Parts(wanted)
    }

    /// Whether block `b` is held now: by this handle already, or adopted from another handle's
    /// live part. Failed parts go to `discard`, to be dropped after the registry lock.
    fn adopt(
        &self,
        reg: &std::collections::HashMap<(Arc<str>, u64), std::sync::Weak<Part>>,
        st: &mut State,
        b: u64,
        discard: &mut Vec<Arc<Part>>,
    ) -> bool {
        if st.parts.contains_key(&b) {
            return true;
        }
        match reg
            .get(&(self.ident.clone(), b))
            .and_then(std::sync::Weak::upgrade)
        {
            Some(p) if !p.failed() => {
                st.parts.insert(b, p);
                true
            }
            Some(p) => {
                discard.push(p);
                false
            }
            None => false,
        }
    }

    /// Records a new part as this handle's, and in the registry for others. A part it
    /// replaces goes to `discard` (never dropped under the registry lock).
    fn register(
        &self,
        reg: &mut std::collections::HashMap<(Arc<str>, u64), std::sync::Weak<Part>>,
        st: &mut State,
        part: &Arc<Part>,
        discard: &mut Vec<Arc<Part>>,
    ) {
        for b in part.blocks.clone() {
            discard.extend(st.parts.insert(b, part.clone()));
            reg.insert((self.ident.clone(), b), Arc::downgrade(part));
        }
    }

    /// Drops `part` from this handle's blocks (after it failed).
    fn forget(&self, part: &Arc<Part>) {
        let mut st = self.state.lock().unwrap();
        st.parts.retain(|_, p| !Arc::ptr_eq(p, part));
    }

    /// A random read: the disk cache if it has the block, else one GET of the range rounded
    /// out to the random granule.
    async fn read_direct(&self, range: Range<u64>) -> Result<Bytes, ReadError> {
        let size = self.object.size;
        let demand = blocks_of(&range);
        if let (Some(cache), 1) = (&self.cache, demand.end - demand.start) {
            if let Some(id) = self.block_id(demand.start) {
                if let Some(block) = cache.get(&id).await {
                    let br = block_range(demand.start, size);
                    if block.len() as u64 == br.end - br.start {
                        return Ok(block.slice(
                            (range.start - br.start) as usize..(range.end - br.start) as usize,
                        ));
                    }
                }
            }
        }
        let g = self.config.random_granule.max(1);
        let aligned = range.start / g * g..(range.end.div_ceil(g) * g).min(size);
        let _request = self.requests.acquire().await.expect("never closed");
        let bytes = self
            .source
            .get_range(
                &self.object.key,
                aligned.clone(),
                self.object.etag.as_deref(),
                size,
            )
            .await?;
        Ok(bytes
            .slice((range.start - aligned.start) as usize..(range.end - aligned.start) as usize))
    }
}

/// One ranged GET of `range` (block-aligned within `object`), copied straight into one pooled
/// buffer per block as the body arrives; each block goes to `on_block` once complete. A fetch of
/// the whole object is checked against the store's full-object checksum at its end, so its
/// blocks are handed on only then: a damaged body never reaches a reader. With `kind`, each
/// block's CRC of that kind is computed as its bytes are copied in (while they are in cache).
async fn fetch_blocks(
    source: &ObjectSource,
    object: &PinnedObject,
    range: Range<u64>,
    pool: &Arc<BufPool>,
    kind: Option<FullChecksum>,
    mut on_block: impl FnMut(Block),
) -> Result<(), ReadError> {
    let size = object.size;
    let mut current: Option<crate::buf::AlignedBuf> = None;
    let mut digest = kind.map(FullChecksum::range_hasher);
    let mut block = range.start / BLOCK_SIZE;
    let whole = range.start == 0 && range.end == size;
    let mut held: Vec<Block> = Vec::new();
    source
        .get_range_chunks(
            &object.key,
            range.clone(),
            object.etag.as_deref(),
            size,
            |_, mut chunk: Bytes| {
                while !chunk.is_empty() {
                    let r = block_range(block, size);
                    let buf = current.get_or_insert_with(|| pool.take((r.end - r.start) as usize));
                    let n = ((r.end - r.start) as usize - buf.len()).min(chunk.len());
                    let piece = chunk.split_to(n);
                    buf.extend_from_slice(&piece);
                    if let Some(d) = &mut digest {
                        d.update(&piece);
                    }
                    if buf.len() as u64 == r.end - r.start {
                        let crc = digest.as_mut().map(|d| {
                            let crc = d.finalize();
                            d.reset();
                            crc
                        });
                        let done = Block {
                            bytes: current.take().expect("just filled").freeze(),
                            crc,
                        };
                        if whole {
                            held.push(done);
                        } else {
                            on_block(done);
                        }
                        block += 1;
                    }
                }
                std::future::ready(Ok(()))
            },
        )
        .await?;
    // `get_range_chunks` returns only once all of `range` arrived (and matched the object's
    // checksum), so every block is complete and verified.
    debug_assert!(current.is_none());
    held.into_iter().for_each(on_block);
    Ok(())
}

/// What a read needs.
enum Plan {
    /// The parts holding each demand block, in order.
    Parts(Vec<Arc<Part>>),
    /// A random read, fetched on its own.
    Direct,
}

#[async_trait::async_trait]
impl ObjectReader for PrefetchReader {
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, ReadError> {
        match self.read_once(offset, len).await {
            // The failure may come from a part fetched earlier (a prefetch during an outage that
            // is over now); failed parts are forgotten, so one more try fetches afresh. A changed
            // or deleted object is final.
            // A body that failed the object's checksum is fetched afresh as well.
            Err(ReadError::Store { .. } | ReadError::Corrupt { .. }) => {
                self.read_once(offset, len).await
            }
            other => other,
        }
    }
}

impl PrefetchReader {
    async fn read_once(&self, offset: u64, len: u32) -> Result<Bytes, ReadError> {
        let size = self.object.size;
        if offset >= size || len == 0 {
            return Ok(Bytes::new());
        }
        let range = offset..size.min(offset + u64::from(len));
        self.failed_verification()?;
        let parts = match self.plan(&range) {
            Plan::Parts(parts) => parts,
            Plan::Direct => return self.read_direct(range).await,
        };
        let demand = blocks_of(&range);
        let mut out: Option<BytesMut> = None;
        let mut single: Option<Bytes> = None;
        let mut prev: Option<usize> = None;
        for (b, part) in demand.clone().zip(&parts) {
            if part.delivered(b) && prev != Some(Arc::as_ptr(part) as usize) {
                Metrics::add(&self.source.metrics().memory_hits, 1);
            }
            prev = Some(Arc::as_ptr(part) as usize);
            let Block { bytes: block, crc } = match part.block(b).await {
                Ok(block) => block,
                Err(e) => {
                    // A failed fetch must not stick: forget it so the next read fetches again.
                    self.forget(part);
                    return Err(clone_error(&e));
                }
            };
            if let Some(crc) = crc {
                self.chain_add(b, crc);
            }
            let br = block_range(b, size);
            let from = range.start.max(br.start) - br.start;
            let to = range.end.min(br.end) - br.start;
            if block.len() as u64 != br.end - br.start {
                return Err(ReadError::Short {
                    key: self.object.key.to_string(),
                    wanted: br.end - br.start,
                    got: block.len() as u64,
                });
            }
            let piece = block.slice(from as usize..to as usize);
            if demand.end - demand.start == 1 {
                single = Some(piece);
            } else {
                out.get_or_insert_with(|| {
                    BytesMut::with_capacity((range.end - range.start) as usize)
                })
                .extend_from_slice(&piece);
            }
        }
        if range.end == size {
            // The last block's bytes go out only once the file has been checked.
            self.finish_chain().await?;
        }
        Ok(single.unwrap_or_else(|| out.map(BytesMut::freeze).unwrap_or_default()))
    }

    /// Adds block `b`'s CRC to the handle's chain; once the handle reads past its first block,
    /// asks the store for its checksum in the background.
    fn chain_add(&self, b: u64, crc: u64) {
        let mut st = self.state.lock().unwrap();
        let Some(chain) = &mut st.chain else {
            return;
        };
        chain.add(b, crc);
        if b >= 1 && !st.asked {
            st.asked = true;
            tokio::spawn(self.stated_checksum());
        }
    }

    /// The checksum the store states for the pinned object (one HEAD per handle, whoever asks
    /// first); `None` if it states none or the HEAD failed.
    fn stated_checksum(&self) -> impl std::future::Future<Output = Option<FullChecksum>> {
        let cell = self.stated.clone();
        let source = self.source.clone();
        let key = self.object.key.clone();
        let etag = self.object.etag.clone();
        async move {
            *cell
                .get_or_init(|| async {
                    match source.full_checksum(&key, etag.as_deref()).await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::debug!(%key, "no checksum to verify a sequential read with: {e}");
                            None
                        }
                    }
                })
                .await
        }
    }

    /// Completes the chain after a read that reached the end of the file: the CRCs of blocks the
    /// handle still holds but has not combined (out-of-order reads), then the comparison.
    async fn finish_chain(&self) -> Result<(), ReadError> {
        let gaps: Vec<(u64, Arc<Part>)> = {
            let st = self.state.lock().unwrap();
            match &st.chain {
                Some(chain) if chain.verdict() == Verdict::Open => (chain.next()..chain.last())
                    .filter(|b| chain.wants(*b))
                    .filter_map(|b| st.parts.get(&b).map(|p| (b, p.clone())))
                    .collect(),
                // Decided already (a failure is repeated below), or not verifying.
                _ => Vec::new(),
            }
        };
        for (b, part) in gaps {
            if let Ok(Block { crc: Some(crc), .. }) = part.block(b).await {
                self.chain_add(b, crc);
            }
        }
        let open_and_complete = {
            let st = self.state.lock().unwrap();
            st.chain
                .as_ref()
                .is_some_and(|c| c.verdict() == Verdict::Open && c.complete())
        };
        if !open_and_complete {
            return self.failed_verification();
        }
        let stated = self.stated_checksum().await;
        let verdict = {
            let mut st = self.state.lock().unwrap();
            let Some(chain) = &mut st.chain else {
                return Ok(());
            };
            if chain.verdict() != Verdict::Open {
                // Another read of the handle decided meanwhile.
                Verdict::Open
            } else {
                chain.finish(stated)
            }
        };
        let metrics = self.source.metrics();
        match verdict {
            Verdict::Open => return self.failed_verification(),
            Verdict::Verified => Metrics::add(&metrics.files_verified, 1),
            Verdict::Unverified => Metrics::add(&metrics.files_unverified, 1),
            Verdict::Failed(stated, computed) => {
                Metrics::add(&metrics.checksum_mismatches, 1);
                tracing::error!(
                    key = %self.source.full_key(&self.object.key),
                    %stated,
                    %computed,
                    "a file read front to back did not match the store's checksum; its reads fail with EIO and its cached blocks are dropped"
                );
                self.drop_blocks();
                return self.failed_verification();
            }
        }
        Ok(())
    }

    /// `Err(Corrupt)` once this handle's chain failed: every later read fails too.
    fn failed_verification(&self) -> Result<(), ReadError> {
        let st = self.state.lock().unwrap();
        match st.chain.as_ref().map(Chain::verdict) {
            Some(Verdict::Failed(stated, computed)) => Err(ReadError::Corrupt {
                key: self.source.full_key(&self.object.key),
                stated: stated.to_string(),
                computed: computed.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Forgets every block of the object this handle holds, and deletes them from the disk
    /// cache, so that the next open fetches the object afresh.
    fn drop_blocks(&self) {
        let parts = std::mem::take(&mut self.state.lock().unwrap().parts);
        drop(parts);
        if let Some(cache) = &self.cache {
            for b in 0..self.object.size.div_ceil(BLOCK_SIZE) {
                if let Some(id) = self.block_id(b) {
                    cache.forget(&id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

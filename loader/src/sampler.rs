//! Which sample each worker reads, in which order: a pure function of (seed, epoch, dataset
//! size, world layout). Nothing is materialized: any position of any epoch is computed in
//! O(1), which is what makes resuming mid-epoch O(1).
//!
//! ## The epoch order
//! 1. A permutation `p` of `0..n` for the epoch (see [`Shuffle`]).
//! 2. Padding: every rank gets `per_rank` positions. Without `drop_last`, `per_rank =
//!    ceil(n / world)` and the epoch order is extended by repeating it from its start
//!    (position `j >= n` is `p(j - n)`), so at most `world - 1` samples are seen twice. With
//!    `drop_last`, `per_rank = floor(n / world)` and the last `n % world` positions are not
//!    read this epoch (a different set each epoch when shuffling).
//! 3. Rank `r` takes the contiguous positions `r * per_rank .. (r + 1) * per_rank` (contiguous,
//!    so block shuffling keeps a rank's reads inside few shards).
//! 4. Within a rank, positions go to workers in runs of `interleave` (the batch size a
//!    PyTorch DataLoader collects from one worker): run `i` belongs to worker `i % workers`.
//!    The rank's consumer sees the runs in that order, so "samples consumed by the rank" maps
//!    to a position in every worker's own stream in O(1).
//! 5. A sampler may start at a rank-level `base` (a resume point): the runs are then dealt
//!    round robin from `base`, first run to worker 0. A consumer that takes one run from each
//!    worker in turn, starting with worker 0 (what a PyTorch DataLoader does), then sees the
//!    rank's positions `base..` in order, whatever the number of workers: a resume may use
//!    another worker count than the run it continues.

/// How an epoch is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shuffle {
    /// Dataset order (manifest order), every epoch. Memory: none.
    None,
    /// A uniform-looking permutation of the whole dataset, new each epoch. Memory: none (a
    /// keyed bijection is evaluated per position). Reads are spread over the whole dataset, so
    /// a cache helps only if it holds the dataset.
    Global,
    /// Blocks of `block` consecutive samples (for example the samples of one shard) are
    /// visited in a shuffled order, and samples inside a block in a shuffled order. A reader
    /// touches one block at a time per worker, so a cache of `workers x block` samples (one
    /// shard per worker) is enough for locality. Memory: none.
    Block { block: u64 },
}

/// The processes that share a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub world_size: u64,
    pub rank: u64,
    pub workers: u64,
    pub worker: u64,
}

impl Layout {
    pub fn single() -> Self {
        Self {
            world_size: 1,
            rank: 0,
            workers: 1,
            worker: 0,
        }
    }

    /// `RANK` and `WORLD_SIZE` from the environment (as torchrun sets them), default 0 and 1;
    /// explicit values override them. `LOCAL_RANK`/`LOCAL_WORLD_SIZE` only describe the node
    /// and do not change the split.
    pub fn from_env(
        rank: Option<u64>,
        world_size: Option<u64>,
        workers: u64,
        worker: u64,
    ) -> Result<Self, String> {
        let env = |k: &str| -> Result<Option<u64>, String> {
            match std::env::var(k) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("{k}={v:?} is not a number")),
                Err(_) => Ok(None),
            }
        };
        let l = Self {
            world_size: world_size.or(env("WORLD_SIZE")?).unwrap_or(1),
            rank: rank.or(env("RANK")?).unwrap_or(0),
            workers,
            worker,
        };
        l.check()?;
        Ok(l)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.world_size == 0 || self.rank >= self.world_size {
            return Err(format!(
                "rank {} is not in a world of {}",
                self.rank, self.world_size
            ));
        }
        if self.workers == 0 || self.worker >= self.workers {
            return Err(format!(
                "worker {} is not one of {} workers",
                self.worker, self.workers
            ));
        }
        Ok(())
    }
}

/// How to order and split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order {
    pub seed: u64,
    pub shuffle: Shuffle,
    pub drop_last: bool,
    /// Consecutive samples a worker contributes in a row (the DataLoader batch size).
    pub interleave: u64,
}

impl Default for Order {
    fn default() -> Self {
        Self {
            seed: 0,
            shuffle: Shuffle::None,
            drop_last: false,
            interleave: 1,
        }
    }
}

/// The order of one dataset for one layout.
#[derive(Debug, Clone, Copy)]
pub struct Sampler {
    n: u64,
    layout: Layout,
    order: Order,
    /// The rank-level position the runs are dealt from.
    base: u64,
}

impl Sampler {
    pub fn new(n: u64, layout: Layout, order: Order) -> Self {
        Self {
            n,
            layout,
            order: Order {
                interleave: order.interleave.max(1),
                ..order
            },
            base: 0,
        }
    }

    /// The same order, with runs dealt to workers from rank-level position `base` on (at
    /// most `per_rank()`): worker streams then cover `base..per_rank()` only.
    pub fn starting_at(self, base: u64) -> Self {
        Self {
            base: base.min(self.per_rank()),
            ..self
        }
    }

    /// Positions every rank reads per epoch.
    pub fn per_rank(&self) -> u64 {
        let w = self.layout.world_size;
        if self.order.drop_last {
            self.n / w
        } else {
            self.n.div_ceil(w)
        }
    }

    /// Samples this worker reads per epoch.
    pub fn worker_len(&self) -> u64 {
        self.worker_start(self.per_rank() - self.base)
    }

    /// How many of the rank's first `consumed` positions (counted from `base`) belong to this
    /// worker: where the worker resumes after the rank consumed `consumed` samples.
    pub fn worker_start(&self, consumed: u64) -> u64 {
        let (b, w) = (self.order.interleave, self.layout.workers);
        let round = b * w;
        let full = consumed / round;
        let rem = consumed % round;
        let mine = rem.saturating_sub(self.layout.worker * b).min(b);
        full * b + mine
    }

    /// The rank-level position of this worker's `j`-th sample.
    fn rank_position(&self, j: u64) -> u64 {
        let (b, w) = (self.order.interleave, self.layout.workers);
        let run = j / b;
        (run * w + self.layout.worker) * b + j % b
    }

    /// The dataset index of this worker's `j`-th sample of `epoch` (`j < worker_len()`).
    pub fn index(&self, epoch: u64, j: u64) -> u64 {
        let pos = self.layout.rank * self.per_rank() + self.base + self.rank_position(j);
        self.epoch_order(epoch, pos % self.n)
    }

    /// The dataset index at `pos` of an epoch's order (`pos < n`).
    pub fn epoch_order(&self, epoch: u64, pos: u64) -> u64 {
        let key = mix(self.order.seed ^ mix(epoch.wrapping_add(0x9e37_79b9_7f4a_7c15)));
        match self.order.shuffle {
            Shuffle::None => pos,
            Shuffle::Global => permute(pos, self.n, key),
            Shuffle::Block { block } => {
                let block = block.max(1);
                let blocks = self.n.div_ceil(block);
                // The last block may be short: shuffle whole blocks, then positions inside
                // the block that lands at each slot. Positions map slot by slot, so the
                // visiting order's block sizes follow the shuffled blocks.
                let (slot, offset) = block_slot(pos, self.n, block, blocks, key);
                let len = block_len(slot, self.n, block);
                slot * block + permute(offset, len, mix(key ^ slot))
            }
        }
    }
}

/// Where position `pos` of the epoch falls: the dataset block and the offset inside it, with
/// blocks visited in a shuffled order.
fn block_slot(pos: u64, n: u64, block: u64, blocks: u64, key: u64) -> (u64, u64) {
    // Walk the shuffled block order by cumulative length. Blocks are full except the last, so
    // the cumulative length before the k-th visited block is k * block, minus the short
    // block's shortfall if it was visited earlier.
    let short = n % block;
    let last = blocks - 1;
    let last_at = if short == 0 {
        u64::MAX
    } else {
        inverse_permute(last, blocks, key)
    };
    let full_before = |k: u64| k * block;
    let start_of = |k: u64| {
        if short != 0 && k > last_at {
            full_before(k) - (block - short)
        } else {
            full_before(k)
        }
    };
    let mut k = pos / block;
    while k > 0 && start_of(k) > pos {
        k -= 1;
    }
    while k + 1 < blocks && start_of(k + 1) <= pos {
        k += 1;
    }
    (permute(k, blocks, key), pos - start_of(k))
}

fn block_len(slot: u64, n: u64, block: u64) -> u64 {
    (n - slot * block).min(block)
}

/// splitmix64's finalizer: a fast, well-mixing bijection on u64.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A keyed bijection of `0..n`: a balanced Feistel network on the next power of four, with
/// cycle walking back into range. O(1) expected per call, no memory.
pub fn permute(x: u64, n: u64, key: u64) -> u64 {
    if n <= 1 {
        return 0;
    }
    let bits = (64 - (n - 1).leading_zeros()).div_ceil(2) as u64;
    let mut y = x;
    loop {
        y = feistel(y, bits, key);
        if y < n {
            return y;
        }
    }
}

/// The inverse of [`permute`].
pub fn inverse_permute(y: u64, n: u64, key: u64) -> u64 {
    if n <= 1 {
        return 0;
    }
    let bits = (64 - (n - 1).leading_zeros()).div_ceil(2) as u64;
    let mut x = y;
    loop {
        x = feistel_inv(x, bits, key);
        if x < n {
            return x;
        }
    }
}

const ROUNDS: u64 = 4;

fn round_fn(r: u64, half: u64, key: u64, i: u64) -> u64 {
    mix(r ^ mix(key.wrapping_add(i))) & ((1 << half) - 1)
}

fn feistel(x: u64, half: u64, key: u64) -> u64 {
    let mask = (1u64 << half) - 1;
    let (mut l, mut r) = (x >> half, x & mask);
    for i in 0..ROUNDS {
        let t = l ^ round_fn(r, half, key, i);
        l = r;
        r = t;
    }
    (l << half) | r
}

fn feistel_inv(y: u64, half: u64, key: u64) -> u64 {
    let mask = (1u64 << half) - 1;
    let (mut l, mut r) = (y >> half, y & mask);
    for i in (0..ROUNDS).rev() {
        let t = r ^ round_fn(l, half, key, i);
        r = l;
        l = t;
    }
    (l << half) | r
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shuffle() -> impl Strategy<Value = Shuffle> {
        prop_oneof![
            Just(Shuffle::None),
            Just(Shuffle::Global),
            (1..50u64).prop_map(|block| Shuffle::Block { block }),
        ]
    }

    /// Every sample every worker of every rank reads in an epoch, with its reader.
    fn epoch(n: u64, world: u64, workers: u64, order: Order, epoch: u64) -> Vec<(u64, u64, u64)> {
        let mut out = Vec::new();
        for rank in 0..world {
            for worker in 0..workers {
                let s = Sampler::new(
                    n,
                    Layout {
                        world_size: world,
                        rank,
                        workers,
                        worker,
                    },
                    order,
                );
                for j in 0..s.worker_len() {
                    out.push((s.index(epoch, j), rank, worker));
                }
            }
        }
        out
    }

    proptest! {
        #[test]
        fn permutations_are_bijections(n in 1..3000u64, key in any::<u64>()) {
            let mut seen = vec![false; n as usize];
            for x in 0..n {
                let y = permute(x, n, key);
                prop_assert!(y < n);
                prop_assert!(!seen[y as usize]);
                seen[y as usize] = true;
                prop_assert_eq!(inverse_permute(y, n, key), x);
            }
        }

        #[test]
        fn an_epoch_reads_every_sample_once_up_to_the_documented_padding(
            n in 1..2000u64,
            world in 1..9u64,
            workers in 1..5u64,
            interleave in 1..9u64,
            drop_last in any::<bool>(),
            shuffle in shuffle(),
            seed in any::<u64>(),
            ep in 0..3u64,
        ) {
            prop_assume!(!drop_last || n >= world);
            let order = Order { seed, shuffle, drop_last, interleave };
            let reads = epoch(n, world, workers, order, ep);
            let mut per_rank_count = vec![0u64; world as usize];
            let mut count = vec![0u64; n as usize];
            for (i, rank, _) in &reads {
                prop_assert!(*i < n);
                count[*i as usize] += 1;
                per_rank_count[*rank as usize] += 1;
            }
            let expect = if drop_last { n / world } else { n.div_ceil(world) };
            prop_assert!(per_rank_count.iter().all(|&c| c == expect), "every rank reads the same number");
            let total = expect * world;
            if drop_last {
                prop_assert!(count.iter().all(|&c| c <= 1), "no duplicates with drop_last");
                prop_assert_eq!(count.iter().filter(|&&c| c == 0).count() as u64, n - total);
            } else {
                prop_assert!(count.iter().all(|&c| c >= 1), "nothing lost");
                let extra: u64 = count.iter().map(|&c| c - 1).sum();
                prop_assert_eq!(extra, total - n, "only the padding repeats");
                prop_assert!(extra < world);
            }
        }

        #[test]
        fn resuming_from_a_count_continues_the_same_stream(
            n in 1..1500u64,
            workers in 1..5u64,
            interleave in 1..9u64,
            shuffle in shuffle(),
            seed in any::<u64>(),
            consumed_frac in 0.0..1.0f64,
        ) {
            let order = Order { seed, shuffle, drop_last: false, interleave };
            let layout = |worker| Layout { world_size: 2, rank: 1, workers, worker };
            let per_rank = Sampler::new(n, layout(0), order).per_rank();
            // The rank's consumer sees worker runs round robin; rebuild that stream.
            let rank_stream = |from: u64| -> Vec<u64> {
                let mut cursors: Vec<u64> = (0..workers)
                    .map(|w| Sampler::new(n, layout(w), order).worker_start(from))
                    .collect();
                let mut out = Vec::new();
                let mut pos = from;
                while pos < per_rank {
                    let w = (pos / interleave) % workers;
                    let s = Sampler::new(n, layout(w), order);
                    out.push(s.index(7, cursors[w as usize]));
                    cursors[w as usize] += 1;
                    pos += 1;
                }
                out
            };
            let whole = rank_stream(0);
            let k = (consumed_frac * per_rank as f64) as u64;
            let resumed = rank_stream(k);
            prop_assert_eq!(&whole[k as usize..], &resumed[..]);
        }

        #[test]
        fn a_resume_point_gives_the_same_stream_with_any_worker_count(
            n in 1..1500u64,
            workers in 1..5u64,
            resumed_workers in 1..5u64,
            interleave in 1..9u64,
            shuffle in shuffle(),
            seed in any::<u64>(),
            base_frac in 0.0..1.0f64,
        ) {
            let order = Order { seed, shuffle, drop_last: false, interleave };
            let per_rank = Sampler::new(n, Layout { world_size: 3, rank: 2, workers: 1, worker: 0 }, order).per_rank();
            // A DataLoader: one run from each worker in turn, from worker 0, skipping
            // exhausted workers.
            let delivered = |base: u64, workers: u64| -> Vec<u64> {
                let streams: Vec<Vec<u64>> = (0..workers)
                    .map(|w| {
                        let s = Sampler::new(n, Layout { world_size: 3, rank: 2, workers, worker: w }, order)
                            .starting_at(base);
                        (0..s.worker_len()).map(|j| s.index(4, j)).collect()
                    })
                    .collect();
                let mut cursors = vec![0usize; workers as usize];
                let mut out = Vec::new();
                loop {
                    let mut any = false;
                    for w in 0..workers as usize {
                        let run = &streams[w][cursors[w]..(cursors[w] + interleave as usize).min(streams[w].len())];
                        cursors[w] += run.len();
                        any |= !run.is_empty();
                        out.extend_from_slice(run);
                    }
                    if !any {
                        return out;
                    }
                }
            };
            let whole = delivered(0, workers);
            prop_assert_eq!(whole.len() as u64, per_rank);
            // Resume points are batch boundaries (or the end).
            let base = (((base_frac * per_rank as f64) as u64) / interleave * interleave).min(per_rank);
            let resumed = delivered(base, resumed_workers);
            prop_assert_eq!(&whole[base as usize..], &resumed[..]);
        }

        #[test]
        fn the_order_is_a_pure_function_of_its_inputs(n in 1..500u64, seed in any::<u64>(), ep in 0..5u64) {
            let order = Order { seed, shuffle: Shuffle::Global, ..Order::default() };
            let a = epoch(n, 3, 2, order, ep);
            let b = epoch(n, 3, 2, order, ep);
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn epochs_and_seeds_change_the_order_and_blocks_stay_together() {
        let n = 1000;
        let order = |seed, shuffle| Order {
            seed,
            shuffle,
            ..Order::default()
        };
        let s = Sampler::new(n, Layout::single(), order(1, Shuffle::Global));
        let e0: Vec<u64> = (0..n).map(|j| s.index(0, j)).collect();
        let e1: Vec<u64> = (0..n).map(|j| s.index(1, j)).collect();
        assert_ne!(e0, e1);
        let s2 = Sampler::new(n, Layout::single(), order(2, Shuffle::Global));
        assert_ne!(e0, (0..n).map(|j| s2.index(0, j)).collect::<Vec<_>>());
        // Block shuffle: the first 100 reads come from one block of 100.
        let b = Sampler::new(n, Layout::single(), order(1, Shuffle::Block { block: 100 }));
        let first: Vec<u64> = (0..100).map(|j| b.index(0, j)).collect();
        let block = first[0] / 100;
        assert!(first.iter().all(|i| i / 100 == block));
    }
}

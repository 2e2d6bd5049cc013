use std::sync::atomic::Ordering;

use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use proptest::prelude::*;

use super::*;
use crate::cache::{CacheConfig, EngineKind};
use crate::object::Source;

fn data(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 31 % 251) as u8).collect()
}

async fn setup(
    size: usize,
    config: PrefetchConfig,
    cache: Option<Arc<DiskCache>>,
) -> (Prefetcher, PinnedObject, Vec<u8>, Arc<Metrics>) {
    let store = Arc::new(InMemory::new());
    let bytes = data(size);
    let put = store
        .put(&Path::from("obj"), bytes.clone().into())
        .await
        .unwrap();
    let metrics = Arc::new(Metrics::default());
    let source = ObjectSource::from_store(
        Source::parse("s3://bkt").unwrap(),
        store as Arc<dyn ObjectStore>,
        metrics.clone(),
    );
    let object = PinnedObject {
        key: "obj".into(),
        size: size as u64,
        etag: put.e_tag.map(Into::into),
    };
    (
        Prefetcher::new(source, cache, config),
        object,
        bytes,
        metrics,
    )
}

/// Reads the whole object front to back in `chunk`-sized reads, checking every byte.
async fn read_through(r: &dyn ObjectReader, bytes: &[u8], chunk: u32) {
    let mut off = 0;
    while off < bytes.len() as u64 {
        let got = r.read(off, chunk).await.unwrap();
        assert_eq!(&got[..], &bytes[off as usize..off as usize + got.len()]);
        off += got.len() as u64;
    }
}

fn small_config() -> PrefetchConfig {
    PrefetchConfig {
        part_size: 2 * BLOCK_SIZE,
        max_window: 4 * BLOCK_SIZE,
        budget: 3 * BLOCK_SIZE,
        seek_forward: 2 * BLOCK_SIZE,
        seek_back: BLOCK_SIZE,
        random_granule: 64 * 1024,
        max_requests: 3,
        verify: true,
    }
}

const MIB: u64 = BLOCK_SIZE;

proptest! {
    #[test]
    fn block_math_covers_exactly(start in 0u64..50 * MIB, len in 1u64..10 * MIB, size in 1u64..60 * MIB) {
        let r = start..start + len;
        let b = blocks_of(&r);
        prop_assert!(b.start * MIB <= r.start);
        prop_assert!(b.end * MIB >= r.end);
        prop_assert!((b.end - 1) * MIB < r.end);
        let blocks = size.div_ceil(MIB);
        let total: u64 = (0..blocks).map(|i| { let x = block_range(i, size); x.end - x.start }).sum();
        prop_assert_eq!(total, size);
    }

    #[test]
    fn window_grows_doubling_up_to_the_cap_and_resets(w in 1u64..200, cap in 0u64..200) {
        let (w, cap) = (w * MIB, cap * MIB);
        let grown = next_window(w, true, cap);
        prop_assert!(grown >= MIB && grown <= cap.max(MIB));
        prop_assert!(grown == (2 * w).min(cap.max(MIB)));
        prop_assert_eq!(next_window(w, false, cap), MIB);
    }

    #[test]
    fn the_window_end_covers_the_window_and_moves_by_whole_parts(
        read_end in 0u64..100 * MIB, window in 1u64..40 * MIB, size in 1u64..120 * MIB,
        part_blocks in 1u64..10,
    ) {
        let part_size = part_blocks * BLOCK_SIZE;
        let read_end = read_end.min(size);
        let end = window_end(read_end, window, size, part_size);
        let total = size.div_ceil(BLOCK_SIZE);
        let plain = blocks_of(&(0..(read_end + window).min(size))).end;
        prop_assert!(end <= total);
        prop_assert!(end >= plain, "the window is covered");
        if window >= part_size && end < total {
            prop_assert_eq!(end % part_blocks, 0, "ends on a part boundary");
            prop_assert!(end - plain < part_blocks, "by less than one part");
        }
        if window < part_size {
            prop_assert_eq!(end, plain, "no rounding while the window ramps up");
        }
    }

    #[test]
    fn runs_partition_their_input(mut v in proptest::collection::btree_set(0u64..100, 0..50), max in 1u64..6) {
        let wanted: Vec<u64> = std::mem::take(&mut v).into_iter().collect();
        let rs = runs(&wanted, max);
        let flat: Vec<u64> = rs.iter().flat_map(|r| r.clone()).collect();
        prop_assert_eq!(flat, wanted);
        prop_assert!(rs.iter().all(|r| r.end - r.start <= max));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn reads_return_exactly_the_objects_bytes_for_any_pattern(
        size in 1usize..(6 * MIB as usize),
        reads in proptest::collection::vec((0u64..7 * MIB, 1u32..(3 * MIB as u32)), 1..25),
        sequential_prefix in 0usize..12,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let (p, obj, bytes, metrics) = setup(size, small_config(), None).await;
            let reader = p.open(obj);
            // Some sequential reads first (to grow a window), then arbitrary ones.
            let mut pattern: Vec<(u64, u32)> = (0..sequential_prefix as u64).map(|i| (i * 256 * 1024, 256 * 1024)).collect();
            pattern.extend(reads);
            for (off, len) in pattern {
                let got = reader.read(off, len).await.unwrap();
                let s = (off as usize).min(size);
                let e = (off as usize + len as usize).min(size);
                assert_eq!(&got[..], &bytes[s..e], "read at {off} len {len} of {size}");
            }
            assert!(metrics.budget_peak.load(Ordering::Relaxed) <= 3 * MIB);
        });
    }
}

#[tokio::test]
async fn a_small_object_is_fetched_whole_on_first_read() {
    let (p, obj, bytes, m) = setup(300_000, PrefetchConfig::default(), None).await;
    let r = p.open(obj);
    assert_eq!(&r.read(0, 4096).await.unwrap()[..], &bytes[..4096]);
    assert_eq!(m.get_bytes.load(Ordering::Relaxed), 300_000);
    assert_eq!(
        &r.read(100_000, 200_000).await.unwrap()[..],
        &bytes[100_000..300_000]
    );
    assert_eq!(m.get_requests.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn random_access_fetches_only_its_granule_and_no_window() {
    let (p, obj, bytes, m) = setup(100 * MIB as usize, PrefetchConfig::default(), None).await;
    let r = p.open(obj);
    for off in [50 * MIB + 10, 10 * MIB + 5, 80 * MIB, 33 * MIB] {
        let got = r.read(off, 4096).await.unwrap();
        assert_eq!(&got[..], &bytes[off as usize..off as usize + 4096]);
    }
    let granule = 64 * 1024;
    assert_eq!(
        m.get_bytes.load(Ordering::Relaxed),
        4 * granule,
        "one granule per random read"
    );
    assert_eq!(m.prefetch_bytes.load(Ordering::Relaxed), 0);
    // A read straddling a granule boundary fetches both granules, and is exact.
    let off = 70 * MIB + 7 * granule - 100;
    let got = r.read(off, 4096).await.unwrap();
    assert_eq!(&got[..], &bytes[off as usize..off as usize + 4096]);
    assert_eq!(m.get_bytes.load(Ordering::Relaxed), 6 * granule);
}

#[tokio::test]
async fn sequential_reads_grow_a_window_of_parallel_parts() {
    let (p, obj, bytes, m) = setup(64 * MIB as usize, PrefetchConfig::default(), None).await;
    read_through(&*p.open(obj), &bytes, 128 * 1024).await;
    let gets = m.get_requests.load(Ordering::Relaxed);
    assert!(
        gets <= 16,
        "64 MiB in {gets} GETs: parts, not per-read requests"
    );
    assert!(m.prefetch_bytes.load(Ordering::Relaxed) >= 48 * MIB);
    assert!(m.memory_hits.load(Ordering::Relaxed) > 0);
    assert_eq!(
        m.get_bytes.load(Ordering::Relaxed),
        64 * MIB,
        "nothing fetched twice"
    );
}

#[tokio::test]
async fn a_sliding_window_fetches_whole_parts_not_one_block_per_read() {
    // The window (8 MiB) is much smaller than the object (64 MiB): after the ramp, each read
    // moves the window by one block, which must not turn into a 1 MiB GET per read.
    let config = PrefetchConfig {
        part_size: 4 * MIB,
        max_window: 8 * MIB,
        ..PrefetchConfig::default()
    };
    let (p, obj, bytes, m) = setup(64 * MIB as usize, config, None).await;
    read_through(&*p.open(obj), &bytes, MIB as u32).await;
    let gets = m.get_requests.load(Ordering::Relaxed);
    // 16 parts of 4 MiB, plus the ramp (1, 1, 2, 4 MiB) and one catch-up part.
    assert!(
        gets <= 22,
        "64 MiB in {gets} GETs: expected whole 4 MiB parts"
    );
    assert_eq!(m.get_bytes.load(Ordering::Relaxed), 64 * MIB);
}

#[tokio::test]
async fn many_readers_share_the_budget_without_exceeding_it() {
    let config = PrefetchConfig {
        budget: 16 * MIB,
        ..PrefetchConfig::default()
    };
    let (p, obj, bytes, m) = setup(40 * MIB as usize, config, None).await;
    let p = Arc::new(p);
    let bytes = Arc::new(bytes);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (p, obj, bytes) = (p.clone(), obj.clone(), bytes.clone());
        tasks.push(tokio::spawn(async move {
            let r = p.open(obj);
            let mut off = 0u64;
            while off < 40 * MIB {
                let got = r.read(off, 1 << 20).await.unwrap();
                assert_eq!(&got[..], &bytes[off as usize..off as usize + got.len()]);
                off += got.len() as u64;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(m.budget_peak.load(Ordering::Relaxed) <= 16 * MIB, "{m:?}");
    assert!(m.prefetch_bytes.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn a_second_pass_reads_from_the_disk_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open_cache(tmp.path());
    let (p, obj, bytes, m) = setup(
        5 * MIB as usize + 123,
        PrefetchConfig::default(),
        Some(cache),
    )
    .await;
    let warmed = p.warm(obj.clone()).await.unwrap();
    assert_eq!(warmed, 5 * MIB + 123);
    let gets = m.get_requests.load(Ordering::Relaxed);
    let r = p.open(obj);
    let mut off = 0u64;
    while off < bytes.len() as u64 {
        let got = r.read(off, 1 << 20).await.unwrap();
        assert_eq!(&got[..], &bytes[off as usize..off as usize + got.len()]);
        off += got.len() as u64;
    }
    assert_eq!(
        m.get_requests.load(Ordering::Relaxed),
        gets,
        "no GET on the second pass"
    );
}

#[tokio::test]
async fn a_part_with_some_blocks_cached_reads_them_and_fetches_only_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open_cache(tmp.path());
    let (p, obj, bytes, m) = setup(
        6 * MIB as usize + 77,
        PrefetchConfig::default(),
        Some(cache),
    )
    .await;
    p.warm(obj.clone()).await.unwrap();
    // Lose two block files (every other one of the first four, as eviction might).
    let mut files: Vec<_> = walkdir(&tmp.path().join("blocks"));
    files.sort_by_key(|f| std::fs::metadata(f).unwrap().modified().unwrap());
    std::fs::remove_file(&files[0]).unwrap();
    std::fs::remove_file(&files[2]).unwrap();
    let gets = m.get_requests.load(Ordering::Relaxed);
    let r = p.open(obj);
    read_through(r.as_ref(), &bytes, 1 << 20).await;
    let more = m.get_requests.load(Ordering::Relaxed) - gets;
    assert!(
        (1..=2).contains(&more),
        "only the lost blocks are fetched ({more} GETs)"
    );
}

/// A 1 GiB disk cache in `dir`, io_uring when available.
fn open_cache(dir: &std::path::Path) -> Arc<DiskCache> {
    let config = CacheConfig {
        dir: dir.into(),
        max_bytes: 1 << 30,
        min_free_bytes: 0,
        engine: EngineKind::Auto,
    };
    Arc::new(DiskCache::open(config, Arc::new(Metrics::default())).unwrap())
}

fn walkdir(d: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn a_changed_object_fails_the_read() {
    let (p, obj, _, _) = setup(3 * MIB as usize, PrefetchConfig::default(), None).await;
    let stale = PinnedObject {
        etag: Some("\"not-the-etag\"".into()),
        ..obj
    };
    let err = p.open(stale).read(0, 10).await.unwrap_err();
    assert!(matches!(err, ReadError::Changed { .. }), "{err}");
}

#[tokio::test]
async fn handles_of_the_same_object_share_fetched_blocks() {
    let (p, obj, bytes, m) = setup(24 * MIB as usize, PrefetchConfig::default(), None).await;
    let p = Arc::new(p);
    let bytes = Arc::new(bytes);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (p, obj, bytes) = (p.clone(), obj.clone(), bytes.clone());
        tasks.push(tokio::spawn(async move {
            let r = p.open(obj);
            let mut off = 0u64;
            while off < 24 * MIB {
                let got = r.read(off, 1 << 20).await.unwrap();
                assert_eq!(&got[..], &bytes[off as usize..off as usize + got.len()]);
                off += got.len() as u64;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let fetched = m.get_bytes.load(Ordering::Relaxed);
    // Four readers in step fetch each block about once, not four times.
    assert!(
        fetched < 2 * 24 * MIB,
        "fetched {fetched} bytes for four readers of 24 MiB"
    );
}

/// The prefetcher over a store with injected faults (no server).
async fn faulty_setup(
    size: usize,
) -> (
    Prefetcher,
    PinnedObject,
    Vec<u8>,
    Arc<crate::object::faulty::FaultyStore>,
) {
    faulty_setup_with(size, None).await
}

/// [`faulty_setup`] with a disk cache.
async fn faulty_setup_with(
    size: usize,
    cache: Option<Arc<DiskCache>>,
) -> (
    Prefetcher,
    PinnedObject,
    Vec<u8>,
    Arc<crate::object::faulty::FaultyStore>,
) {
    let store = Arc::new(InMemory::new());
    let bytes = data(size);
    let put = store
        .put(&Path::from("obj"), bytes.clone().into())
        .await
        .unwrap();
    let faulty = crate::object::faulty::FaultyStore::new(store);
    let source = ObjectSource::from_store(
        Source::parse("s3://bkt").unwrap(),
        faulty.clone() as Arc<dyn ObjectStore>,
        Arc::new(Metrics::default()),
    );
    let object = PinnedObject {
        key: "obj".into(),
        size: size as u64,
        etag: put.e_tag.map(Into::into),
    };
    (
        Prefetcher::new(source, cache, PrefetchConfig::default()),
        object,
        bytes,
        faulty,
    )
}

#[tokio::test]
async fn cut_bodies_are_resumed_byte_exact_by_sequential_readers() {
    use crate::object::faulty::{Fault, Op};
    let (p, obj, bytes, faulty) = faulty_setup(40 * MIB as usize).await;
    faulty.inject(Op::Get, Fault::Cut { after: 777_777 }, Some(3));
    read_through(p.open(obj).as_ref(), &bytes, 1 << 20).await;
    assert_eq!(faulty.injected(), 3);
}

#[tokio::test]
async fn a_failed_fetch_is_an_error_and_the_next_read_fetches_again() {
    use crate::object::faulty::{Fault, Op};
    let (p, obj, bytes, faulty) = faulty_setup(3 * MIB as usize).await;
    faulty.inject(Op::Get, Fault::Fail, Some(4));
    let r = p.open(obj);
    assert!(
        r.read(0, 4096).await.is_err(),
        "the failure reaches the reader"
    );
    faulty.clear();
    let got = r.read(0, 4096).await.unwrap();
    assert_eq!(&got[..], &bytes[..4096]);
}

#[tokio::test]
async fn a_stalled_fetch_is_cut_off_by_the_callers_bound_and_later_reads_work() {
    use crate::object::faulty::{Fault, Op};
    let (p, obj, bytes, faulty) = faulty_setup(3 * MIB as usize).await;
    faulty.inject(Op::Get, Fault::Stall, Some(1));
    let r = p.open(obj);
    let stalled =
        tokio::time::timeout(std::time::Duration::from_millis(300), r.read(0, 4096)).await;
    assert!(
        stalled.is_err(),
        "a stalled store blocks until the caller's bound"
    );
    let got = r.read(2 * MIB, 4096).await.unwrap();
    assert_eq!(&got[..], &bytes[2 * MIB as usize..2 * MIB as usize + 4096]);
}

/// Reads the whole object front to back in 128 KiB reads, as `cat` through the kernel does;
/// the first error ends it.
async fn read_all(r: &dyn ObjectReader, size: u64) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        out.extend_from_slice(&r.read(out.len() as u64, 128 << 10).await?);
    }
    Ok(out)
}

#[tokio::test]
async fn a_file_read_front_to_back_is_checked_against_the_stores_checksum() {
    use crate::object::checksum::FullChecksum;
    let size = 10 * MIB + 12_345;
    let (p, obj, bytes, faulty) = faulty_setup(size as usize).await;
    faulty.state_checksums(FullChecksum::Crc64Nvme(0));
    let m = p.source.metrics().clone();
    let got = read_all(p.open(obj.clone()).as_ref(), size).await.unwrap();
    assert_eq!(got, bytes);
    assert_eq!(m.files_verified.load(Ordering::Relaxed), 1);
    assert_eq!(
        m.head_requests.load(Ordering::Relaxed),
        1,
        "one HEAD per file"
    );

    // A store that states no checksum: read, counted as unverified.
    let (p, obj, bytes, _faulty) = faulty_setup(size as usize).await;
    let m = p.source.metrics().clone();
    assert_eq!(read_all(p.open(obj).as_ref(), size).await.unwrap(), bytes);
    assert_eq!(m.files_unverified.load(Ordering::Relaxed), 1);
    assert_eq!(m.files_verified.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_damaged_block_fails_the_read_at_the_end_and_a_reopen_reads_it_afresh() {
    use crate::object::checksum::FullChecksum;
    use crate::object::faulty::{Fault, Op};
    let dir = tempfile::tempdir().unwrap();
    let cache = open_cache(dir.path());
    let size = 6 * MIB + 999;
    let (p, obj, bytes, faulty) = faulty_setup_with(size as usize, Some(cache.clone())).await;
    faulty.state_checksums(FullChecksum::Crc64Nvme(0));
    let m = p.source.metrics().clone();
    // One bit flipped in the middle of the file, on its way; length and headers intact.
    faulty.inject(Op::Get, Fault::Corrupt { at: 3 * MIB + 17 }, None);
    let r = p.open(obj.clone());
    match read_all(r.as_ref(), size).await {
        Err(ReadError::Corrupt { .. }) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("damaged bytes read to the end without an error"),
    }
    faulty.clear();
    assert_eq!(m.checksum_mismatches.load(Ordering::Relaxed), 1);
    assert!(
        r.read(0, 4096).await.is_err(),
        "every later read of the handle fails"
    );
    // The damaged blocks left the disk cache: a new handle reads the right bytes.
    let gets = m.get_requests.load(Ordering::Relaxed);
    assert_eq!(read_all(p.open(obj).as_ref(), size).await.unwrap(), bytes);
    assert!(
        m.get_requests.load(Ordering::Relaxed) > gets,
        "fetched again"
    );
    assert_eq!(m.files_verified.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn blocks_read_from_the_disk_cache_are_checked_too() {
    use crate::object::checksum::FullChecksum;
    let dir = tempfile::tempdir().unwrap();
    let cache = open_cache(dir.path());
    let size = 4 * MIB + 1;
    let (p, obj, bytes, faulty) = faulty_setup_with(size as usize, Some(cache)).await;
    faulty.state_checksums(FullChecksum::Crc64Nvme(0));
    let m = p.source.metrics().clone();
    assert_eq!(
        read_all(p.open(obj.clone()).as_ref(), size).await.unwrap(),
        bytes
    );
    while p.busy() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let gets = m.get_requests.load(Ordering::Relaxed);
    assert_eq!(read_all(p.open(obj).as_ref(), size).await.unwrap(), bytes);
    assert_eq!(
        m.get_requests.load(Ordering::Relaxed),
        gets,
        "all from the disk cache"
    );
    assert_eq!(m.files_verified.load(Ordering::Relaxed), 2);
}

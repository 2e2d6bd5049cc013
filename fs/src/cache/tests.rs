use std::os::unix::fs::PermissionsExt;

use super::*;

fn id(key: &str, index: u64) -> BlockId {
    BlockId {
        root: "s3://bkt".into(),
        key: key.into(),
        etag: "\"e1\"".into(),
        index,
    }
}

fn open(dir: &Path, max_bytes: u64, engine: EngineKind) -> (DiskCache, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let c = DiskCache::open(
        CacheConfig {
            dir: dir.into(),
            max_bytes,
            min_free_bytes: 0,
            engine,
        },
        metrics.clone(),
    )
    .unwrap();
    (c, metrics)
}

fn block_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(dir.join("blocks")).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out
}

/// One body, run against every engine.
async fn round_trip_reopen_and_damage(engine: EngineKind) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let data = Bytes::from(vec![42u8; 100_000]);
    {
        let (c, m) = open(&dir, 1 << 30, engine);
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700,
            "cache directory is private"
        );
        assert!(c.get(&id("k", 0)).await.is_none());
        c.put(&id("k", 0), data.clone()).await;
        assert_eq!(c.get(&id("k", 0)).await.unwrap(), data);
        assert!(c.get(&id("k", 1)).await.is_none(), "other block");
        let other_version = BlockId {
            etag: "\"e2\"".into(),
            ..id("k", 0)
        };
        assert!(c.get(&other_version).await.is_none(), "other version");
        assert_eq!(m.disk_hits.load(Ordering::Relaxed), 1);
    }
    // Survives a remount.
    let (c, m) = open(&dir, 1 << 30, engine);
    assert_eq!(c.get(&id("k", 0)).await.unwrap(), data);
    // A flipped byte is a miss, counted, and the file is gone.
    let files = block_files(&dir);
    assert_eq!(files.len(), 1);
    let mut raw = std::fs::read(&files[0]).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 1;
    std::fs::write(&files[0], &raw).unwrap();
    assert!(c.get(&id("k", 0)).await.is_none());
    assert_eq!(m.disk_corrupt.load(Ordering::Relaxed), 1);
    assert!(!files[0].exists());
    // Truncated, and garbage.
    c.put(&id("k", 0), data.clone()).await;
    let f = &block_files(&dir)[0];
    std::fs::write(f, &std::fs::read(f).unwrap()[..50]).unwrap();
    assert!(c.get(&id("k", 0)).await.is_none());
    c.put(&id("k", 0), data.clone()).await;
    std::fs::write(&block_files(&dir)[0], b"not a block").unwrap();
    assert!(c.get(&id("k", 0)).await.is_none());
    assert_eq!(m.disk_corrupt.load(Ordering::Relaxed), 3);
}

/// Version 1 files (written before payloads were aligned) still read; damage to version 2
/// padding is damage like any other.
async fn older_format_and_padding(engine: EngineKind) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let data = Bytes::from((0..70_000u32).map(|i| i as u8).collect::<Vec<_>>());
    let (c, m) = open(&dir, 1 << 30, engine);
    c.put(&id("k", 0), data.clone()).await;
    let path = block_files(&dir).remove(0);
    let v2 = std::fs::read(&path).unwrap();
    assert_eq!(
        v2.len() % 4096,
        0,
        "version 2 files end on a 4 KiB boundary"
    );
    let identity = id("k", 0).identity();
    let start = payload_offset(identity.len());
    assert_eq!(
        &v2[start..start + data.len()],
        &data[..],
        "payload starts on 4 KiB"
    );
    // The same block as a version 1 file: header, identity, payload, no padding.
    let mut v1 = v2[..FIXED_HEADER].to_vec();
    v1[8..12].copy_from_slice(&1u32.to_le_bytes());
    v1.extend_from_slice(&identity);
    v1.extend_from_slice(&data);
    std::fs::write(&path, &v1).unwrap();
    drop(c);
    let (c, m2) = open(&dir, 1 << 30, engine);
    assert_eq!(c.get(&id("k", 0)).await.unwrap(), data, "version 1 reads");
    assert_eq!(m2.disk_corrupt.load(Ordering::Relaxed), 0);
    // A flipped bit in the header padding of a version 2 file is a miss.
    let mut bad = v2.clone();
    bad[FIXED_HEADER + identity.len()] ^= 0x10;
    std::fs::write(&path, &bad).unwrap();
    assert!(c.get(&id("k", 0)).await.is_none());
    assert_eq!(m2.disk_corrupt.load(Ordering::Relaxed), 1);
    assert_eq!(m.disk_corrupt.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn pread_cache_reads_version_1_files_and_checks_padding() {
    older_format_and_padding(EngineKind::Pread).await;
}

#[tokio::test]
async fn uring_cache_reads_version_1_files_and_checks_padding() {
    older_format_and_padding(EngineKind::Auto).await;
}

#[tokio::test]
async fn pread_cache_round_trips_survives_reopen_and_discards_damage() {
    round_trip_reopen_and_damage(EngineKind::Pread).await;
}

#[tokio::test]
async fn uring_cache_round_trips_survives_reopen_and_discards_damage() {
    round_trip_reopen_and_damage(EngineKind::Auto).await;
}

#[tokio::test]
async fn a_second_daemon_cannot_use_the_same_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let (_c, _) = open(tmp.path(), 1 << 20, EngineKind::Pread);
    let err = DiskCache::open(
        CacheConfig {
            dir: tmp.path().into(),
            max_bytes: 1 << 20,
            min_free_bytes: 0,
            engine: EngineKind::Pread,
        },
        Arc::new(Metrics::default()),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("in use by another pai-mount"), "{err}");
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
}

#[tokio::test]
async fn least_recently_used_blocks_are_evicted_to_stay_in_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    let block = Bytes::from(vec![1u8; 10_000]);
    let file_len = encode(&id("k", 0).identity(), &block).len() as u64;
    let max = file_len * 7 / 2;
    let (c, m) = open(tmp.path(), max, EngineKind::Pread);
    for i in 0..3 {
        c.put(&id("k", i), block.clone()).await;
    }
    assert!(c.get(&id("k", 0)).await.is_some()); // 0 is now most recent
    c.put(&id("k", 3), block.clone()).await;
    assert!(c.used_bytes() <= max);
    assert!(
        c.get(&id("k", 1)).await.is_none(),
        "least recently used went first"
    );
    assert!(c.get(&id("k", 0)).await.is_some());
    assert!(m.disk_evictions.load(Ordering::Relaxed) >= 1);
}

#[tokio::test]
async fn a_full_disk_stops_filling_without_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("small");
    std::fs::create_dir(&dir).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&dir)
        .status();
    let mounted = status.is_ok_and(|s| s.success());
    let metrics = Arc::new(Metrics::default());
    let c = DiskCache::open(
        CacheConfig {
            dir: dir.join("cache"),
            max_bytes: 1 << 30,
            // Without a tmpfs (not root), simulate a full disk with a huge free-space floor.
            min_free_bytes: if mounted { 0 } else { u64::MAX / 2 },
            engine: EngineKind::Auto,
        },
        metrics.clone(),
    )
    .unwrap();
    let block = Bytes::from(vec![9u8; 600_000]);
    for i in 0..6 {
        c.put(&id("k", i), block.clone()).await;
    }
    assert!(
        metrics.disk_skipped.load(Ordering::Relaxed) >= 3,
        "{metrics:?}"
    );
    // What was stored still reads back intact; nothing partial is visible.
    for i in 0..6 {
        if let Some(b) = c.get(&id("k", i)).await {
            assert_eq!(b, block);
        }
    }
    assert_eq!(metrics.disk_corrupt.load(Ordering::Relaxed), 0);
    drop(c);
    if mounted {
        let _ = std::process::Command::new("umount").arg(&dir).status();
    }
}

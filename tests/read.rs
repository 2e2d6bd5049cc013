//! End-to-end read path: prefetching and the disk cache through real FUSE mounts of the
//! S3 test server.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;

fn big(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn reads_through_the_cache_are_exact_and_survive_a_remount_without_gets() {
    let s = server();
    let files: Vec<(String, Vec<u8>)> = vec![
        ("large.bin".into(), big(1, 20 * 1024 * 1024 + 12_345)),
        ("d/small.bin".into(), big(2, 70_000)),
        ("d/mid.bin".into(), big(3, 3 * 1024 * 1024)),
    ];
    for (k, v) in &files {
        s.backend().put("bkt", k, v.clone());
    }
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().join("c");
    // The machine's free space must not decide whether the cache fills.
    let args = [
        "--cache-dir",
        cache_dir.to_str().unwrap(),
        "--cache-min-free",
        "0",
    ];
    {
        let m = mount(&s, "s3://bkt", &args);
        for (k, v) in &files {
            assert_eq!(
                sha(&std::fs::read(m.path().join(k)).unwrap()),
                sha(v),
                "{k}"
            );
        }
        assert_eq!(
            std::fs::metadata(&cache_dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // One daemon per cache directory.
        let other = tempfile::tempdir().unwrap();
        let err = fails(
            cmd(
                &s,
                &[
                    "mount",
                    "s3://bkt",
                    other.path().to_str().unwrap(),
                    "--cache-dir",
                    cache_dir.to_str().unwrap(),
                    "--cache-min-free",
                    "0",
                ],
            )
            .output()
            .unwrap(),
        );
        assert!(err.contains("in use by another pai-mount"), "{err}");
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let gets = s.backend().counters.get();
    let m = mount(&s, "s3://bkt", &args);
    for (k, v) in &files {
        assert_eq!(
            sha(&std::fs::read(m.path().join(k)).unwrap()),
            sha(v),
            "{k}"
        );
    }
    // One GET is the mount's look for a stored manifest; no data is fetched.
    assert_eq!(
        s.backend().counters.get(),
        gets + 1,
        "second mount reads only from the disk cache"
    );
}

#[test]
fn warm_fills_the_cache_for_a_later_mount_and_warms_paths_in_a_mount() {
    let s = server();
    for i in 0..20u8 {
        s.backend()
            .put("bkt", &format!("ds/f{i}.bin"), big(i, 200_000 + i as usize));
    }
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("c");
    // A cache that cannot take the blocks makes the warm fail, saying why.
    let err = fails(
        cmd(
            &s,
            &[
                "warm",
                "s3://bkt/ds",
                "--cache-dir",
                dir.to_str().unwrap(),
                "--cache-min-free",
                "1000000T",
            ],
        )
        .output()
        .unwrap(),
    );
    assert!(
        err.contains("not stored in the cache") && err.contains("--cache-min-free"),
        "{err}"
    );
    let out = ok(cmd(
        &s,
        &[
            "warm",
            "s3://bkt/ds",
            "--cache-dir",
            dir.to_str().unwrap(),
            "--cache-min-free",
            "0",
            "--jobs",
            "4",
        ],
    )
    .output()
    .unwrap());
    assert!(out.contains("warmed 20 of 20 objects"), "{out}");
    let gets = s.backend().counters.get();
    let m = mount(
        &s,
        "s3://bkt/ds",
        &[
            "--cache-dir",
            dir.to_str().unwrap(),
            "--cache-min-free",
            "0",
        ],
    );
    for i in 0..20u8 {
        let got = std::fs::read(m.path().join(format!("f{i}.bin"))).unwrap();
        assert_eq!(got, big(i, 200_000 + i as usize));
    }
    // One GET is the mount's look for a stored manifest; no data is fetched.
    assert_eq!(
        s.backend().counters.get(),
        gets + 1,
        "all reads from the warmed cache"
    );
    let out = ok(Command::new(BIN)
        .args(["warm", m.path().to_str().unwrap(), "-j", "4"])
        .output()
        .unwrap());
    assert!(out.contains("read 20 of 20 files"), "{out}");
    let err = fails(cmd(&s, &["warm", "s3://bkt/ds"]).output().unwrap());
    assert!(err.contains("--cache-dir"), "{err}");
}

#[test]
fn parallel_sequential_readers_get_exact_bytes_under_a_small_budget() {
    let s = server();
    let data: Vec<Vec<u8>> = (0..4u8)
        .map(|i| big(i, 12 * 1024 * 1024 + i as usize))
        .collect();
    for (i, d) in data.iter().enumerate() {
        s.backend().put("bkt", &format!("f{i}"), d.clone());
    }
    let m = mount(
        &s,
        "s3://bkt",
        &["--prefetch-budget", "8M", "--part-size", "2M"],
    );
    std::thread::scope(|sc| {
        for (i, d) in data.iter().enumerate() {
            let p = m.path().join(format!("f{i}"));
            sc.spawn(move || assert_eq!(sha(&std::fs::read(p).unwrap()), sha(d)));
        }
    });
}

#[test]
fn the_loader_reads_through_a_mount_and_its_second_epoch_is_local() {
    use pai_loader::{Dataset, DatasetOptions, Layout, LoadOptions, Loader, Order, Shuffle, State};
    let s = server();
    let files: Vec<Vec<u8>> = (0..30).map(|i| big(i as u8, 200_000)).collect();
    for (i, f) in files.iter().enumerate() {
        s.backend()
            .put("bkt", &format!("imgs/{i:03}.jpg"), f.clone());
    }
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().join("c");
    let m = mount(
        &s,
        "s3://bkt",
        &[
            "--read-only",
            "--cache-dir",
            cache_dir.to_str().unwrap(),
            "--cache-min-free",
            "0",
        ],
    );
    let url = format!("file://{}/imgs", m.path().display());
    let ds = std::sync::Arc::new(Dataset::open(&url, DatasetOptions::default()).unwrap());
    assert_eq!(ds.len(), 30);
    let order = Order {
        seed: 5,
        shuffle: Shuffle::Global,
        ..Order::default()
    };
    let epoch = |e| {
        let state = State {
            seed: 5,
            epoch: e,
            consumed: 0,
        };
        for sample in
            Loader::new(&ds, Layout::single(), order, state, LoadOptions::default()).unwrap()
        {
            let sample = sample.unwrap();
            let i: usize = sample.key.trim_end_matches(".jpg").parse().unwrap();
            assert_eq!(sha(&sample.data), sha(&files[i]), "{}", sample.key);
        }
    };
    epoch(0);
    let gets = s.backend().counters.get();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    epoch(1);
    assert_eq!(
        s.backend().counters.get(),
        gets,
        "the second epoch comes from the mount's caches"
    );
}

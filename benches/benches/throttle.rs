//! Throughput against a store that throttles: the test server answers `503 SlowDown` to every
//! request beyond K in progress at once (K = 8, `PAI_BENCH_K`). The baseline, in the same run,
//! is exactly K GETs in flight over the same objects, which the server never throttles. Rows:
//! `pai-mount cp`, the loader, and whole-file reads through a mount (16 readers); each reports
//! its ratio to the baseline, its failed reads (the target is zero), and the 503s the server
//! sent (each one a retry).
//!
//! ```sh
//! cargo build --release -p pai-mount
//! cargo bench -p pai-mount-benches --bench throttle   # PAI_BENCH_LATENCY_MS=20 PAI_BENCH_K=8 PAI_BENCH_OBJECTS=2000
//! ```

use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use pai_loader::{Dataset, DatasetOptions, Layout, LoadOptions, Loader, Order, State};
use pai_mount_fs::metrics::Metrics;
use pai_mount_fs::object::{credentials::ProcessEnv, ObjectSource, Source};
use pai_test_s3::{DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY};

const SIZE: usize = 256 << 10;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let setup = pai_mount_benches::setup();
    let k = env_num("PAI_BENCH_K", 8);
    let n = env_num("PAI_BENCH_OBJECTS", 2000);
    let (rt, server) =
        pai_mount_benches::start_server(std::time::Duration::from_millis(setup.latency_ms));
    for i in 0..n {
        let body: Vec<u8> = (0..SIZE).map(|j| (j * 7 + i) as u8).collect();
        server
            .backend()
            .put("bench", &format!("throttle/{:02}/{i:06}.bin", i % 50), body);
    }
    let total = (n * SIZE) as f64;
    let throttled = || server.backend().faults.throttled.load(Relaxed);
    println!(
        "throttling benchmark; first-byte latency {} ms; 503 SlowDown above {k} requests in progress; {n} objects of 256 KiB; 2 cores",
        setup.latency_ms
    );

    // Baseline: exactly K GETs in flight, never throttled.
    let source = rt.block_on(async {
        ObjectSource::connect(
            Source::parse("s3://bench/throttle").unwrap(),
            &pai_mount_benches::store_options(&server),
            &ProcessEnv,
            Arc::new(Metrics::default()),
        )
        .await
        .unwrap()
    });
    let keys: Vec<String> = (0..n)
        .map(|i| format!("{:02}/{i:06}.bin", i % 50))
        .collect();
    server.backend().faults.throttle_above(k as u32);
    let before = throttled();
    let t = Instant::now();
    let got: usize = rt.block_on(async {
        futures::stream::iter(keys.iter())
            .map(|key| {
                let s = source.clone();
                async move {
                    s.get_range(key, 0..SIZE as u64, None, SIZE as u64)
                        .await
                        .unwrap()
                        .len()
                }
            })
            .buffer_unordered(k)
            .fold(0, |a, b| async move { a + b })
            .await
    });
    let base = t.elapsed().as_secs_f64();
    assert_eq!(got as f64, total);
    println!(
        "baseline, exactly {k} GETs in flight: {:.0} MB/s, {:.0} objects/s, {} throttled",
        total / base / 1e6,
        n as f64 / base,
        throttled() - before
    );
    let row = |name: &str, secs: f64, failed: usize, sent: u64| {
        println!(
            "{name}: {:.0} MB/s, ratio to the baseline {:.2} (target >= 0.8), failed reads {failed}, 503s answered and retried {sent}",
            total / secs / 1e6,
            base / secs
        );
    };

    // The manifest, built under throttling too.
    let endpoint = server.endpoint();
    let cli = |args: &[&str]| {
        let mut c = Command::new(&setup.bin);
        c.args(args)
            .args(["--endpoint", &endpoint, "--path-style"])
            .env("AWS_ACCESS_KEY_ID", DEFAULT_ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", DEFAULT_SECRET_KEY)
            .env("PAI_MOUNT_LOG", "error");
        c
    };
    let out = cli(&["manifest", "build", "s3://bench/throttle"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // cp, with its default 32 jobs.
    let dest = setup.scratch.path().join("cp");
    let before = throttled();
    let t = Instant::now();
    let out = cli(&["cp", "s3://bench/throttle", dest.to_str().unwrap()])
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    let copied = walk_count(&dest);
    row(
        "pai-mount cp (32 jobs)",
        secs,
        n - copied + usize::from(!out.status.success()),
        throttled() - before,
    );
    if !out.status.success() {
        println!("  cp said: {}", text.trim());
    }
    std::fs::remove_dir_all(&dest).unwrap();

    // The loader, 64 samples in flight.
    let ds = Arc::new(
        Dataset::open(
            "s3://bench/throttle",
            DatasetOptions {
                store: pai_mount_benches::store_options(&server),
                suffixes: vec![],
                tar_shards: false,
                glob: None,
            },
        )
        .unwrap(),
    );
    let before = throttled();
    let t = Instant::now();
    let loader = Loader::new(
        &ds,
        Layout::single(),
        Order::default(),
        State::default(),
        LoadOptions::default(),
    )
    .unwrap();
    let (mut bytes, mut failed) = (0usize, 0usize);
    for s in loader {
        match s {
            Ok(s) => bytes += s.data.len(),
            Err(_) => failed += 1,
        }
    }
    let secs = t.elapsed().as_secs_f64();
    assert!(failed > 0 || bytes as f64 == total);
    row("loader (64 in flight)", secs, failed, throttled() - before);

    // Whole-file reads through a mount, 16 readers.
    let daemon = pai_mount_benches::Daemon::start(
        &setup.bin,
        &endpoint,
        "s3://bench/throttle",
        &["--read-only"],
        &[],
    );
    let files: Vec<std::path::PathBuf> = keys.iter().map(|k| daemon.dir.join(k)).collect();
    let before = throttled();
    let t = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Relaxed);
                let Some(f) = files.get(i) else { break };
                match std::fs::read(f) {
                    Ok(b) if b.len() == SIZE => {}
                    _ => {
                        failed.fetch_add(1, Relaxed);
                    }
                }
            });
        }
    });
    let secs = t.elapsed().as_secs_f64();
    row(
        "mount, 16 readers of whole files",
        secs,
        failed.load(Relaxed),
        throttled() - before,
    );
    daemon.stop();
    server.backend().faults.throttle_above(0);
}

fn walk_count(dir: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| {
            if e.file_type().unwrap().is_dir() {
                walk_count(&e.path())
            } else {
                usize::from(e.metadata().unwrap().len() == SIZE as u64)
            }
        })
        .sum()
}

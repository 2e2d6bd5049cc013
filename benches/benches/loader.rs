//! Loader throughput against raw parallel GETs of the same objects, in the same run.
//!
//! ```sh
//! cargo bench -p pai-mount-benches --bench loader     # PAI_BENCH_LATENCY_MS=20, PAI_BENCH_SAMPLES=20000
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pai_loader::{Dataset, DatasetOptions, Layout, LoadOptions, Loader, Order, Shuffle, State};
use pai_mount_fs::metrics::Metrics;
use pai_mount_fs::object::{credentials::ProcessEnv, ObjectSource, Source};

fn main() {
    let latency_ms: u64 = std::env::var("PAI_BENCH_LATENCY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let n: usize = std::env::var("PAI_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let (rt, server) = pai_mount_benches::start_server(Duration::from_millis(latency_ms));
    let body: bytes::Bytes = (0..100 * 1024)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    for i in 0..n {
        server.backend().put(
            "bench",
            &format!("loader/shard{:03}/{i:06}.jpg", i % 200),
            body.clone(),
        );
    }
    let total = (n * body.len()) as f64;
    println!(
        "pai-loader benchmark; first-byte latency {latency_ms} ms; 2 cores; {n} samples of 100 KiB"
    );

    // Raw: the same objects, 64 GETs in flight, in a fixed order.
    let source = rt.block_on(async {
        ObjectSource::connect(
            Source::parse("s3://bench/loader").unwrap(),
            &pai_mount_benches::store_options(&server),
            &ProcessEnv,
            Arc::new(Metrics::default()),
        )
        .await
        .unwrap()
    });
    let keys: Vec<String> = (0..n)
        .map(|i| format!("shard{:03}/{i:06}.jpg", i % 200))
        .collect();
    let t = Instant::now();
    let got: usize = rt.block_on(async {
        futures::stream::iter(keys.iter())
            .map(|k| {
                let s = source.clone();
                let size = body.len() as u64;
                async move { s.get_range(k, 0..size, None, size).await.unwrap().len() }
            })
            .buffered(64)
            .fold(0, |a, b| async move { a + b })
            .await
    });
    let raw = t.elapsed().as_secs_f64();
    assert_eq!(got as f64, total);
    println!(
        "raw GETs, 64 in flight: {:.0} samples/s, {:.0} MB/s",
        n as f64 / raw,
        total / raw / 1e6
    );

    let options = DatasetOptions {
        store: pai_mount_benches::store_options(&server),
        suffixes: vec![],
        tar_shards: false,
        glob: None,
    };
    let rss0 = pai_mount_benches::rss();
    let ds = Arc::new(Dataset::open("s3://bench/loader", options).unwrap());
    for (name, shuffle) in [
        ("global shuffle", Shuffle::Global),
        ("block shuffle (block 100)", Shuffle::Block { block: 100 }),
    ] {
        let order = Order {
            seed: 1,
            shuffle,
            ..Order::default()
        };
        let t = Instant::now();
        let loader = Loader::new(
            &ds,
            Layout::single(),
            order,
            State {
                seed: 1,
                ..State::default()
            },
            LoadOptions::default(),
        )
        .unwrap();
        let mut bytes = 0usize;
        for s in loader {
            bytes += s.unwrap().data.len();
        }
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(bytes as f64, total);
        println!(
            "loader, {name}, 64 in flight: {:.0} samples/s, {:.0} MB/s, ratio to raw {:.2} (target >= 0.8)",
            n as f64 / secs,
            total / secs / 1e6,
            raw / secs
        );
    }
    let before_objects_end = pai_mount_benches::rss();
    // The same samples as 100 MiB WebDataset shards of 1,000 samples (two members each).
    let per_shard = 1000;
    for k in 0..n.div_ceil(per_shard) {
        let mut b = tar::Builder::new(Vec::new());
        for i in k * per_shard..((k + 1) * per_shard).min(n) {
            for (ext, data) in [("jpg", &body[..]), ("cls", &b"1"[..])] {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, format!("s/{i:06}.{ext}"), data)
                    .unwrap();
            }
        }
        server.backend().put(
            "bench",
            &format!("shards/{k:04}.tar"),
            b.into_inner().unwrap(),
        );
    }
    let tar_options = DatasetOptions {
        store: pai_mount_benches::store_options(&server),
        suffixes: vec![],
        tar_shards: true,
        glob: None,
    };
    let t = Instant::now();
    let (shards, samples) = Dataset::build_tar_index("s3://bench/shards", &tar_options, 4).unwrap();
    println!(
        "tar index: {shards} shards, {samples} samples, built in {:.1} s (reads every shard once)",
        t.elapsed().as_secs_f64()
    );
    let before_tar = pai_mount_benches::rss();
    let tds = Arc::new(Dataset::open("s3://bench/shards", tar_options).unwrap());
    let order = Order {
        seed: 1,
        shuffle: Shuffle::Block {
            block: per_shard as u64,
        },
        ..Order::default()
    };
    let t = Instant::now();
    let mut bytes = 0usize;
    for s in Loader::new(
        &tds,
        Layout::single(),
        order,
        State {
            seed: 1,
            ..State::default()
        },
        LoadOptions::default(),
    )
    .unwrap()
    {
        bytes += s.unwrap().member("jpg").unwrap().len();
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(bytes as f64, total);
    println!(
        "loader, tar shards, block shuffle (one shard per block), 64 in flight: {:.0} samples/s, {:.0} MB/s, ratio to raw {:.2} (target >= 0.8)",
        n as f64 / secs,
        total / secs / 1e6,
        raw / secs
    );
    println!(
        "memory: the loader grew the process by {:.0} MiB over the object runs and {:.0} MiB over the tar run (the in-process server holds the data: bench peak RSS {:.0} MiB)",
        (before_objects_end.saturating_sub(rss0)) as f64 / (1 << 20) as f64,
        (pai_mount_benches::rss().saturating_sub(before_tar)) as f64 / (1 << 20) as f64,
        pai_mount_benches::peak_rss() as f64 / (1 << 20) as f64
    );
}

//! Namespace benchmark: manifest build and load, memory per object, `ls -f` and `stat` through
//! the mount, and cold reads of small files next to raw GETs of the same objects.
//!
//! `cargo bench -p pai-mount-benches --bench namespace` (add `-- --quick` for 100k objects only).
//! The S3 server runs in-process with `PAI_BENCH_LATENCY_MS` (default 20) of first-byte latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::ObjectStoreExt;
use pai_mount_benches::{imagenet_keys, peak_rss, rss};
use pai_mount_fs::manifest::{self, BuildOptions, BuildProgress, Entry, Etag, Header, Manifest};
use pai_mount_fs::metrics::Metrics;
use pai_mount_fs::mount::{Drain, Mount, MountConfig};
use pai_mount_fs::namespace::Namespace;
use pai_mount_fs::object::credentials::ProcessEnv;
use pai_mount_fs::object::{ObjectSource, Source, StoreOptions};
use pai_mount_fs::prefetch::{PrefetchConfig, Prefetcher};
use pai_test_s3::TestServer;

fn header(n: usize) -> Header {
    Header {
        source: "s3://bench/imagenet".into(),
        built_at_ms: 0,
        object_count: n as u64,
        total_bytes: 0,
        list_requests: 0,
        builder: "bench".into(),
    }
}

fn manifest_bench(n: usize) {
    let mut entries: Vec<Entry> = imagenet_keys(n)
        .into_iter()
        .enumerate()
        .map(|(i, k)| Entry {
            key: k.into_bytes().into(),
            size: 100_000 + i as u64,
            mtime_ms: 1_700_000_000_000 + i as i64,
            etag: Etag::Md5([(i % 251) as u8; 16]),
            attrs: Default::default(),
        })
        .collect();
    entries.sort_by(|a, b| manifest::tree_cmp(&a.key, &b.key));
    let t = Instant::now();
    let bytes = manifest::encode(&header(n), &entries);
    let encode = t.elapsed();
    drop(entries);
    let before = rss();
    let t = Instant::now();
    let m = Manifest::parse(&bytes).unwrap();
    let ns = Namespace::from_manifest(&m).unwrap();
    let load = t.elapsed();
    let heap = ns.heap_bytes();
    println!(
        "manifest {n:>8} objects: encode {:>7.1} ms, file {:>6.1} MB ({:.1} B/object), load {:>7.1} ms, namespace {:.1} B/object (heap), RSS growth {:.1} B/object",
        encode.as_secs_f64() * 1e3,
        bytes.len() as f64 / 1e6,
        bytes.len() as f64 / n as f64,
        load.as_secs_f64() * 1e3,
        heap as f64 / n as f64,
        rss().saturating_sub(before) as f64 / n as f64,
    );
    drop(ns);
}

struct Env {
    rt: tokio::runtime::Runtime,
    server: TestServer,
    options: StoreOptions,
}

impl Env {
    fn source(&self, url: &str, metrics: Arc<Metrics>) -> ObjectSource {
        self.rt
            .block_on(ObjectSource::connect(
                Source::parse(url).unwrap(),
                &self.options,
                &ProcessEnv,
                metrics,
            ))
            .unwrap()
    }
}

fn env(latency: Duration) -> Env {
    let (rt, server) = pai_mount_benches::start_server(latency);
    let options = pai_mount_benches::store_options(&server);
    Env {
        rt,
        server,
        options,
    }
}

fn list_build_bench(e: &Env, n: usize) {
    for k in imagenet_keys(n) {
        e.server
            .backend()
            .put("bench", &format!("imagenet/{k}"), bytes::Bytes::new());
    }
    let source = e.source("s3://bench/imagenet", Arc::new(Metrics::default()));
    let t = Instant::now();
    let (h, _) =
        e.rt.block_on(manifest::build(
            &source,
            &BuildOptions::default(),
            &BuildProgress::default(),
        ))
        .unwrap();
    println!(
        "build by listing {n} objects in 1000 directories: {:.2} s, {} LIST requests, 16 in flight",
        t.elapsed().as_secs_f64(),
        h.list_requests
    );
}

/// One flat directory of `n` objects, listed page by page and in key ranges, in the same run.
fn flat_list_bench(e: &Env, n: usize, hashed: bool) {
    let dir = if hashed {
        "flat-hashed"
    } else {
        "flat-numbered"
    };
    for i in 0..n as u64 {
        let name = if hashed {
            // Uniform names, as content-addressed datasets have.
            let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            format!("{:016x}.jpg", z ^ (z >> 31))
        } else {
            format!("img_{i:08}.jpg")
        };
        e.server
            .backend()
            .put("bench", &format!("{dir}/{name}"), bytes::Bytes::new());
    }
    let source = e.source(&format!("s3://bench/{dir}"), Arc::new(Metrics::default()));
    let mut secs = Vec::new();
    for split_ranges in [false, true] {
        let options = BuildOptions {
            split_ranges,
            ..BuildOptions::default()
        };
        let t = Instant::now();
        let (h, entries) =
            e.rt.block_on(manifest::build(
                &source,
                &options,
                &BuildProgress::default(),
            ))
            .unwrap();
        assert_eq!(entries.len(), n);
        let s = t.elapsed().as_secs_f64();
        println!(
            "build of one flat directory of {n} {} names, {}: {s:.2} s, {} LIST requests",
            if hashed { "hashed" } else { "numbered" },
            if split_ranges {
                "in key ranges, 16 requests in flight"
            } else {
                "page by page"
            },
            h.list_requests
        );
        secs.push(s);
    }
    println!("  key ranges: {:.1}x faster", secs[0] / secs[1]);
}

/// Mounts `url` in-process and runs `f` on the mount point.
fn with_mount<T>(
    e: &Env,
    url: &str,
    metrics: Arc<Metrics>,
    f: impl FnOnce(&std::path::Path) -> T,
) -> T {
    with_mount_opts(e, url, metrics, false, f)
}

/// [`with_mount`], with the kernel's readdirplus in "auto" mode or not.
fn with_mount_opts<T>(
    e: &Env,
    url: &str,
    metrics: Arc<Metrics>,
    readdirplus_auto: bool,
    f: impl FnOnce(&std::path::Path) -> T,
) -> T {
    let source = e.source(url, metrics.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut config = MountConfig::new(dir.path().to_path_buf());
    config.fuse.readdirplus_auto = readdirplus_auto;
    let readers = Arc::new(Prefetcher::new(
        source.clone(),
        None,
        PrefetchConfig::default(),
    ));
    let mount = Mount::start(&e.rt, source, readers, metrics, config).unwrap();
    let (out, ended) = mount.serve_while(&e.rt, Drain::default(), || f(dir.path()));
    ended.unwrap();
    out
}

fn time_cmd(args: &[&str]) -> Duration {
    let t = Instant::now();
    let st = std::process::Command::new(args[0])
        .args(&args[1..])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    t.elapsed()
}

fn ls_bench(e: &Env) {
    let n = 10_000;
    for i in 0..n {
        e.server
            .backend()
            .put("bench", &format!("flat/dir/f{i:05}.bin"), vec![0u8; 16]);
    }
    let local = tempfile::tempdir().unwrap();
    for i in 0..n {
        std::fs::write(
            local.path().join(format!("f{i:05}.bin")),
            b"0123456789abcdef",
        )
        .unwrap();
    }
    let source = e.source("s3://bench/flat", Arc::new(Metrics::default()));
    e.rt.block_on(manifest::build_and_store(
        &source,
        &BuildOptions::default(),
        &BuildProgress::default(),
    ))
    .unwrap();
    let stat_all = |d: &str| {
        let t = Instant::now();
        for entry in std::fs::read_dir(d).unwrap() {
            std::fs::metadata(entry.unwrap().path()).unwrap();
        }
        t.elapsed()
    };
    let local_ls = time_cmd(&["ls", "-f", local.path().to_str().unwrap()]);
    let local_long = time_cmd(&["ls", "-l", local.path().to_str().unwrap()]);
    // `os.listdir`, then `os.stat` of each name: the whole listing first.
    let listdir_then_stat = |d: &str| {
        let t = Instant::now();
        let names: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        for p in names {
            std::fs::metadata(p).unwrap();
        }
        t.elapsed()
    };
    let local_stat = listdir_then_stat(local.path().to_str().unwrap());
    // The same run with the kernel's readdirplus in "auto" mode (the earlier default) and
    // with attributes in every listing (the default now).
    for auto in [true, false] {
        let mode = if auto {
            "readdirplus auto"
        } else {
            "readdirplus always"
        };
        let metrics = Arc::new(Metrics::default());
        let (cold, warm, stat, requests) =
            with_mount_opts(e, "s3://bench/flat", metrics.clone(), auto, |mp| {
                let d = mp.join("dir");
                let d = d.to_str().unwrap();
                let before = e.server.backend().counters.list()
                    + e.server.backend().counters.head()
                    + e.server.backend().counters.get();
                let cold = time_cmd(&["ls", "-f", d]);
                let warm = time_cmd(&["ls", "-f", d]);
                let stat = stat_all(d);
                let after = e.server.backend().counters.list()
                    + e.server.backend().counters.head()
                    + e.server.backend().counters.get();
                (cold, warm, stat, after - before)
            });
        // A plain listing, then a stat of each name (`os.listdir` + `os.stat`) on a fresh
        // mount.
        let listdir_stat = with_mount_opts(
            e,
            "s3://bench/flat",
            Arc::new(Metrics::default()),
            auto,
            |mp| listdir_then_stat(mp.join("dir").to_str().unwrap()),
        );
        // `ls -l` on a fresh mount: listing and stat interleaved.
        let long = with_mount_opts(
            e,
            "s3://bench/flat",
            Arc::new(Metrics::default()),
            auto,
            |mp| time_cmd(&["ls", "-l", mp.join("dir").to_str().unwrap()]),
        );
        println!(
            "[{mode}] ls -f of {n} entries: mount cold {:.1} ms, warm {:.1} ms; local dir {:.1} ms (ratio cold/local {:.2})",
            cold.as_secs_f64() * 1e3,
            warm.as_secs_f64() * 1e3,
            local_ls.as_secs_f64() * 1e3,
            cold.as_secs_f64() / local_ls.as_secs_f64()
        );
        println!(
            "[{mode}] stat of all {n} entries after ls -f: {:.1} ms; requests to the server while listing and stat'ing: {requests}",
            stat.as_secs_f64() * 1e3,
        );
        println!(
            "[{mode}] listdir, then stat of each of {n} names, fresh mount: {:.1} ms; local dir {:.1} ms (ratio {:.2})",
            listdir_stat.as_secs_f64() * 1e3,
            local_stat.as_secs_f64() * 1e3,
            listdir_stat.as_secs_f64() / local_stat.as_secs_f64()
        );
        println!(
            "[{mode}] ls -l of {n} entries on a fresh mount: {:.1} ms; local dir {:.1} ms",
            long.as_secs_f64() * 1e3,
            local_long.as_secs_f64() * 1e3
        );
    }
}

fn cold_read_bench(e: &Env, threads: usize) {
    let n = 1000;
    let size = 128 * 1024;
    for i in 0..n {
        e.server.backend().put(
            "bench",
            &format!("small/f{i:04}.bin"),
            vec![(i % 256) as u8; size],
        );
    }
    let source = e.source("s3://bench/small", Arc::new(Metrics::default()));
    e.rt.block_on(manifest::build_and_store(
        &source,
        &BuildOptions::default(),
        &BuildProgress::default(),
    ))
    .unwrap();
    // Baseline: raw GETs of the same objects with the same concurrency.
    let store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("bench")
        .with_region("us-east-1")
        .with_endpoint(e.server.endpoint())
        .with_allow_http(true)
        .with_access_key_id(pai_test_s3::DEFAULT_ACCESS_KEY)
        .with_secret_access_key(pai_test_s3::DEFAULT_SECRET_KEY)
        .build()
        .unwrap();
    let store = Arc::new(store);
    let t = Instant::now();
    e.rt.block_on(async {
        futures::stream::iter(0..n)
            .map(|i| {
                let s = store.clone();
                async move {
                    let p = object_store::path::Path::from(format!("small/f{i:04}.bin"));
                    s.get(&p).await.unwrap().bytes().await.unwrap().len()
                }
            })
            .buffer_unordered(threads)
            .collect::<Vec<_>>()
            .await
    });
    let raw = t.elapsed();
    let metrics = Arc::new(Metrics::default());
    let mount = with_mount(e, "s3://bench/small", metrics.clone(), |mp| {
        let t = Instant::now();
        std::thread::scope(|s| {
            for w in 0..threads {
                s.spawn(move || {
                    for i in (w..n).step_by(threads) {
                        let d = std::fs::read(mp.join(format!("f{i:04}.bin"))).unwrap();
                        assert_eq!(d.len(), size);
                    }
                });
            }
        });
        t.elapsed()
    });
    let fps = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "cold read of {n} x 128 KiB, {threads} threads: mount {:.0} files/s, raw GETs {:.0} files/s, ratio {:.2}; {} GETs",
        fps(mount),
        fps(raw),
        fps(mount) / fps(raw),
        metrics.get_requests.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// Resident memory of the real daemon holding a namespace of `n` objects, minus an empty one.
fn daemon_rss_bench(e: &Env, n: usize) {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/pai-mount");
    if !bin.exists() {
        println!("daemon RSS: skipped, build the binary first: cargo build --release -p pai-mount");
        return;
    }
    for k in imagenet_keys(n) {
        e.server
            .backend()
            .put("bench", &format!("big/{k}"), bytes::Bytes::new());
    }
    e.server
        .backend()
        .put("bench", "empty/x", bytes::Bytes::new());
    for prefix in ["big", "empty"] {
        let source = e.source(
            &format!("s3://bench/{prefix}"),
            Arc::new(Metrics::default()),
        );
        e.rt.block_on(manifest::build_and_store(
            &source,
            &BuildOptions::default(),
            &BuildProgress::default(),
        ))
        .unwrap();
    }
    let rss_of = |prefix: &str| -> (u64, Duration) {
        let dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let mut child = std::process::Command::new(&bin)
            .args([
                "mount",
                &format!("s3://bench/{prefix}"),
                dir.path().to_str().unwrap(),
            ])
            .args([
                "--endpoint",
                &e.server.endpoint(),
                "--path-style",
                "--foreground",
            ])
            .env("AWS_ACCESS_KEY_ID", pai_test_s3::DEFAULT_ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", pai_test_s3::DEFAULT_SECRET_KEY)
            .env("PAI_MOUNT_LOG", "warn")
            .spawn()
            .unwrap();
        let mp = std::fs::canonicalize(dir.path()).unwrap();
        while !pai_mount_fs::mountpoint::is_mount_point(&mp) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let ready = t.elapsed();
        // Touch the tree the way a user would before measuring.
        let _ = std::fs::read_dir(&mp).unwrap().count();
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
        let rss = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024;
        let _ = std::process::Command::new("kill")
            .arg(child.id().to_string())
            .status();
        let _ = child.wait();
        (rss, ready)
    };
    let (empty, _) = rss_of("empty");
    let (big, ready) = rss_of("big");
    println!(
        "daemon with {n} objects: RSS {:.1} MiB, empty-mount baseline {:.1} MiB, {:.1} B/object; mount ready in {:.2} s",
        big as f64 / (1 << 20) as f64,
        empty as f64 / (1 << 20) as f64,
        big.saturating_sub(empty) as f64 / n as f64,
        ready.as_secs_f64()
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let latency_ms: u64 = std::env::var("PAI_BENCH_LATENCY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    println!("pai-mount namespace benchmark; first-byte latency {latency_ms} ms");
    // PAI_BENCH_ONLY=manifest,flat,build,ls,mount picks parts.
    if pai_mount_benches::enabled("manifest") {
        manifest_bench(100_000);
        if !quick {
            manifest_bench(1_000_000);
        }
    }
    let e = env(Duration::from_millis(latency_ms));
    if pai_mount_benches::enabled("flat") {
        let n = if quick { 100_000 } else { 1_000_000 };
        flat_list_bench(&e, n, false);
        flat_list_bench(&e, n, true);
    }
    if pai_mount_benches::enabled("build") {
        list_build_bench(&e, 100_000);
    }
    if pai_mount_benches::enabled("ls") {
        ls_bench(&e);
    }
    if pai_mount_benches::enabled("mount") {
        daemon_rss_bench(&e, if quick { 100_000 } else { 1_000_000 });
        cold_read_bench(&e, 1);
        cold_read_bench(&e, 8);
    }
    println!(
        "peak RSS of the benchmark process (server, mount and data): {:.0} MiB",
        peak_rss() as f64 / (1 << 20) as f64
    );
}

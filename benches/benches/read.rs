//! Read-path benchmark: prefetch and the disk cache through the real daemon, each workload next
//! to a baseline measured in the same run, and the same workloads through
//! `rclone mount --vfs-cache-mode full` when rclone is installed.
//!
//! ```sh
//! cargo build --release -p pai-mount
//! cargo bench -p pai-mount-benches --bench read            # PAI_BENCH_LATENCY_MS=20 by default
//! ```
//! Needs root (FUSE, and dropping the page cache for the cold and disk-cache rows).
//! `PAI_BENCH_ONLY` (comma-separated) runs some sections only: seq, verify, parallel, sixteen,
//! disk, small, random, rclone.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::{GetOptions, GetRange, ObjectStore};
use pai_mount_benches::{drop_caches, peak_rss, wait_mounted, Daemon};
use pai_test_s3::{TestServer, DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

struct Bench {
    rt: tokio::runtime::Runtime,
    server: TestServer,
    bin: PathBuf,
    scratch: tempfile::TempDir,
}

impl Bench {
    fn mount(&self, prefix: &str, extra: &[&str]) -> Daemon {
        Daemon::start(
            &self.bin,
            &self.server.endpoint(),
            &format!("s3://bench/{prefix}"),
            &["--read-only"],
            extra,
        )
    }

    fn rclone(&self, prefix: &str) -> Option<Daemon> {
        if Command::new("rclone")
            .arg("version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let cache = self
            .scratch
            .path()
            .join(format!("rclone-cache-{}", rand_suffix()));
        let child = Command::new("rclone")
            .args([
                "mount",
                &format!("pais3:bench/{prefix}"),
                dir.to_str().unwrap(),
            ])
            .args([
                "--vfs-cache-mode",
                "full",
                "--cache-dir",
                cache.to_str().unwrap(),
            ])
            .args(["--read-only", "--dir-cache-time", "1h"])
            .env("RCLONE_CONFIG_PAIS3_TYPE", "s3")
            .env("RCLONE_CONFIG_PAIS3_PROVIDER", "Other")
            .env("RCLONE_CONFIG_PAIS3_ENDPOINT", self.server.endpoint())
            .env("RCLONE_CONFIG_PAIS3_ACCESS_KEY_ID", DEFAULT_ACCESS_KEY)
            .env("RCLONE_CONFIG_PAIS3_SECRET_ACCESS_KEY", DEFAULT_SECRET_KEY)
            .env("RCLONE_CONFIG_PAIS3_FORCE_PATH_STYLE", "true")
            .env("RCLONE_CONFIG_PAIS3_LIST_VERSION", "2")
            // Debian's rclone 1.60 cannot load a custom CA bundle with its HTTP transport.
            .env_remove("AWS_CA_BUNDLE")
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        wait_mounted(&dir);
        Some(Daemon::from_child(child, dir, tmp))
    }

    /// Raw ranged GETs of `keys` in `part`-sized pieces with `concurrency` in flight: MB/s.
    fn raw_get_mbps(&self, keys: &[String], size: u64, part: u64, concurrency: usize) -> f64 {
        let store = Arc::new(
            object_store::aws::AmazonS3Builder::new()
                .with_bucket_name("bench")
                .with_region("us-east-1")
                .with_endpoint(self.server.endpoint())
                .with_allow_http(true)
                .with_access_key_id(DEFAULT_ACCESS_KEY)
                .with_secret_access_key(DEFAULT_SECRET_KEY)
                .build()
                .unwrap(),
        );
        let ranges: Vec<(String, u64)> = keys
            .iter()
            .flat_map(|k| (0..size.div_ceil(part)).map(move |i| (k.clone(), i * part)))
            .collect();
        let t = Instant::now();
        let total: u64 = self.rt.block_on(async {
            futures::stream::iter(ranges)
                .map(|(k, off)| {
                    let s = store.clone();
                    async move {
                        let opts = GetOptions {
                            range: Some(GetRange::Bounded(off..(off + part).min(size))),
                            ..Default::default()
                        };
                        let r = s
                            .get_opts(&object_store::path::Path::from(k), opts)
                            .await
                            .unwrap();
                        r.bytes().await.unwrap().len() as u64
                    }
                })
                .buffer_unordered(concurrency)
                .fold(0u64, |a, b| async move { a + b })
                .await
        });
        total as f64 / t.elapsed().as_secs_f64() / 1e6
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// `dd if=path of=/dev/null bs=1M`: MB/s.
fn dd(path: &Path) -> f64 {
    let len = std::fs::metadata(path).unwrap().len();
    let t = Instant::now();
    let st = Command::new("dd")
        .arg(format!("if={}", path.display()))
        .args(["of=/dev/null", "bs=1M", "status=none"])
        .status()
        .unwrap();
    assert!(st.success());
    len as f64 / t.elapsed().as_secs_f64() / 1e6
}

fn dd_parallel(paths: &[PathBuf]) -> f64 {
    let total: u64 = paths
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let t = Instant::now();
    std::thread::scope(|s| {
        for p in paths {
            s.spawn(move || dd(p));
        }
    });
    total as f64 / t.elapsed().as_secs_f64() / 1e6
}

/// Reads every file under `dir` (recursively) whole with `threads` threads, as the disk cache
/// reads its block files (buffered): MB/s.
fn read_tree_mbps(dir: &Path, threads: usize) -> f64 {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    files.sort();
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..threads {
            let files = &files;
            s.spawn(move || {
                for f in files.iter().skip(w).step_by(threads) {
                    std::fs::read(f).unwrap();
                }
            });
        }
    });
    total as f64 / t.elapsed().as_secs_f64() / 1e6
}

/// Reads `files` with `threads` threads: files/s.
fn read_files(dir: &Path, files: &[String], threads: usize) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..threads {
            s.spawn(move || {
                for f in files.iter().skip(w).step_by(threads) {
                    std::fs::read(dir.join(f)).unwrap();
                }
            });
        }
    });
    files.len() as f64 / t.elapsed().as_secs_f64()
}

/// 1,000 random 4 KiB preads: (p50 ms, p99 ms).
fn random_reads(path: &Path, size: u64) -> (f64, f64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut lat = Vec::with_capacity(1000);
    let mut buf = vec![0u8; 4096];
    for _ in 0..1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x % (size / 4096)) * 4096;
        let t = Instant::now();
        f.read_exact_at(&mut buf, off).unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (lat[499], lat[989])
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn mib(b: u64) -> f64 {
    b as f64 / MIB as f64
}

fn main() {
    let pai_mount_benches::Setup {
        latency_ms,
        bin,
        scratch,
    } = pai_mount_benches::setup();
    let (rt, server) = pai_mount_benches::start_server(Duration::from_millis(latency_ms));
    let b = Bench {
        rt,
        server,
        bin,
        scratch,
    };
    println!("pai-mount read benchmark; first-byte latency {latency_ms} ms; 2 cores");

    // Data: sixteen 1 GiB objects (one buffer shared by all: the server stores `Bytes`), and
    // 2,000 of 128 KiB.
    let big: Vec<u8> = (0..GIB).map(|i| (i % 251) as u8).collect();
    let big = bytes::Bytes::from(big);
    for i in 0..16 {
        b.server
            .backend()
            .put("bench", &format!("big/f{i}"), big.clone());
    }
    // 256 of 4 MiB (one shared buffer), for the cost of checking files read in ranges.
    let mid = bytes::Bytes::from((0..4 * MIB).map(|i| (i % 239) as u8).collect::<Vec<u8>>());
    let mid_names: Vec<String> = (0..256).map(|i| format!("m{i:03}.bin")).collect();
    for n in &mid_names {
        b.server
            .backend()
            .put("bench", &format!("mid/{n}"), mid.clone());
    }
    let small_names: Vec<String> = (0..2000).map(|i| format!("s{i:04}.bin")).collect();
    for (i, n) in small_names.iter().enumerate() {
        b.server.backend().put(
            "bench",
            &format!("small/{n}"),
            vec![(i % 256) as u8; 128 * 1024],
        );
    }
    let dropped = drop_caches();
    if !dropped {
        println!("note: cannot drop the page cache (not root); cold and disk rows include page-cache effects");
    }

    // Local-disk baselines: the same bytes in a plain file.
    let local = b.scratch.path().join("local-1g");
    std::fs::write(&local, &big).unwrap();

    // 1. Cold sequential, one file; then re-reads from the page cache in the same mount.
    if pai_mount_benches::enabled("seq") {
        drop_caches();
        let raw1 = b.raw_get_mbps(&["big/f0".into()], GIB, 8 * MIB, 8);
        let m = b.mount("big", &[]);
        let one = dd(&m.dir.join("f0"));
        // Best of 3, as for the local file (the first pass over cached pages still clears the
        // kernel's readahead marks).
        let passes: Vec<f64> = (0..3).map(|_| dd(&m.dir.join("f0"))).collect();
        let again = passes.iter().copied().fold(0.0, f64::max);
        println!("  re-read passes: {passes:.0?} MB/s");
        let hwm1 = m.stop();
        let local_hot = (0..3).map(|_| dd(&local)).fold(0.0, f64::max);
        println!("cold sequential 1 GiB (dd bs=1M): mount {one:.0} MB/s, raw 8x8 MiB ranged GETs {raw1:.0} MB/s, ratio {:.2}; daemon peak RSS {:.0} MiB", one / raw1, mib(hwm1));
        println!("warm re-read of 1 GiB in the same mount (page cache): {again:.0} MB/s; local file from page cache {local_hot:.0} MB/s, ratio {:.2}", again / local_hot);
    }

    // What checking files read front to back costs (`--no-verify-reads` turns it off): the
    // CRC of every block, and one HEAD per file. Alternating runs, medians of 3.
    if pai_mount_benches::enabled("verify") {
        let heads = || {
            b.server
                .backend()
                .counters
                .head
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let (mut big_on, mut big_off, mut mid_on, mut mid_off) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut heads_on, mut heads_off) = (0, 0);
        for _ in 0..3 {
            for verify in [true, false] {
                let args: &[&str] = if verify { &[] } else { &["--no-verify-reads"] };
                drop_caches();
                let m = b.mount("big", args);
                let one = dd(&m.dir.join("f0"));
                m.stop();
                drop_caches();
                let m = b.mount("mid", args);
                let h = heads();
                let files = read_files(&m.dir, &mid_names, 8);
                let h = heads() - h;
                m.stop();
                if verify {
                    big_on.push(one);
                    mid_on.push(files);
                    heads_on = h;
                } else {
                    big_off.push(one);
                    mid_off.push(files);
                    heads_off = h;
                }
            }
        }
        println!("  runs: 1 GiB checked {big_on:.0?} / unchecked {big_off:.0?} MB/s; 4 MiB files checked {mid_on:.0?} / unchecked {mid_off:.0?} files/s");
        let (bon, boff) = (median(&mut big_on), median(&mut big_off));
        let (mon, moff) = (median(&mut mid_on), median(&mut mid_off));
        println!("front-to-back checks (medians of 3): cold sequential 1 GiB {bon:.0} MB/s checked, {boff:.0} unchecked, ratio {:.2}; 256 x 4 MiB files, 8 threads: {mon:.0} files/s checked ({heads_on} HEADs), {moff:.0} unchecked ({heads_off} HEADs), ratio {:.2}", bon / boff, mon / moff);
    }

    // Four files in parallel. The machine's speed drifts between runs, so the mount and the raw
    // baseline alternate three times (page cache dropped before each) and the medians are
    // compared.
    if pai_mount_benches::enabled("parallel") {
        let keys4: Vec<String> = (0..4).map(|i| format!("big/f{i}")).collect();
        let (mut mount4, mut raw4, mut hwm4) = (Vec::new(), Vec::new(), 0);
        for _ in 0..3 {
            drop_caches();
            raw4.push(b.raw_get_mbps(&keys4, GIB, 8 * MIB, 32));
            drop_caches();
            let m = b.mount("big", &[]);
            mount4.push(dd_parallel(
                &(0..4)
                    .map(|i| m.dir.join(format!("f{i}")))
                    .collect::<Vec<_>>(),
            ));
            hwm4 = hwm4.max(m.stop());
        }
        println!("  mount runs {mount4:.0?} MB/s, raw runs {raw4:.0?} MB/s");
        let (four, raw4) = (median(&mut mount4), median(&mut raw4));
        println!("cold sequential 4 x 1 GiB in parallel (medians of 3): mount {four:.0} MB/s, raw 32x8 MiB ranged GETs {raw4:.0} MB/s, ratio {:.2}; daemon peak RSS {:.0} MiB (budget 1024 MiB)", four / raw4, mib(hwm4));
    }

    // 16 files read at once, at two budgets: peak RSS minus the budget is the constant the
    // budget does not cover.
    if pai_mount_benches::enabled("sixteen") {
        for budget in [256u64, 1024] {
            drop_caches();
            let m = b.mount("big", &["--prefetch-budget", &format!("{budget}M")]);
            let paths: Vec<PathBuf> = (0..16).map(|i| m.dir.join(format!("f{i}"))).collect();
            let sixteen = dd_parallel(&paths);
            let hwm = m.stop();
            println!(
                "16 x 1 GiB files read in parallel, budget {budget} MiB: {sixteen:.0} MB/s; daemon peak RSS {:.0} MiB = budget + {:.0} MiB",
                mib(hwm),
                mib(hwm) - budget as f64
            );
        }
    }

    // 2. Warm sequential from the disk cache (page cache dropped for both).
    if pai_mount_benches::enabled("disk") {
        let cache_dir = b.scratch.path().join("cache");
        let cache_args = ["--cache-dir", cache_dir.to_str().unwrap()];
        let m = b.mount("big", &cache_args);
        dd(&m.dir.join("f0"));
        m.stop();
        // The virtual disk's speed varies from run to run (0.8-3.6 GB/s for the same local
        // file): alternate the reads and report the medians of five.
        let (mut warm, mut cold, mut blocks, mut hwm) = (Vec::new(), Vec::new(), Vec::new(), 0);
        for _ in 0..5 {
            drop_caches();
            let m = b.mount("big", &cache_args);
            warm.push(dd(&m.dir.join("f0")));
            hwm = hwm.max(m.stop());
            drop_caches();
            cold.push(dd(&local));
            // What this disk gives for the cache's access pattern: its 1 MiB block files, read
            // whole by 8 threads, without the mount.
            drop_caches();
            blocks.push(read_tree_mbps(&cache_dir.join("blocks"), 8));
        }
        println!("  disk-cache runs {warm:.0?} MB/s, local file runs {cold:.0?} MB/s, block files read directly {blocks:.0?} MB/s");
        let (warm, local_cold, blocks) =
            (median(&mut warm), median(&mut cold), median(&mut blocks));
        println!("warm sequential 1 GiB from the disk cache: {warm:.0} MB/s; local file, page cache dropped: {local_cold:.0} MB/s, ratio {:.2}; the cache's block files read directly (8 threads): {blocks:.0} MB/s, ratio {:.2}; daemon peak RSS {:.0} MiB", warm / local_cold, warm / blocks, mib(hwm));
    }

    // 3. Small files.
    for threads in [1, 8] {
        if !pai_mount_benches::enabled("small") {
            break;
        }
        drop_caches();
        let m = b.mount("small", &[]);
        let cold = read_files(&m.dir, &small_names, threads);
        m.stop();
        let keys: Vec<String> = small_names.iter().map(|n| format!("small/{n}")).collect();
        let raw = b.raw_get_mbps(&keys, 128 * 1024, 128 * 1024, threads) * 1e6 / (128.0 * 1024.0);
        let sc = b.scratch.path().join(format!("cache-small-{threads}"));
        let args = ["--cache-dir", sc.to_str().unwrap()];
        let m = b.mount("small", &args);
        read_files(&m.dir, &small_names, 8);
        m.stop();
        drop_caches();
        let m = b.mount("small", &args);
        let warm = read_files(&m.dir, &small_names, threads);
        m.stop();
        println!("small files 2,000 x 128 KiB, {threads} thread(s): cold {cold:.0} files/s (raw GETs {raw:.0} files/s, ratio {:.2}), warm from disk cache {warm:.0} files/s", cold / raw);
    }

    // 4. Random 4 KiB reads, cold.
    let out_bytes = || {
        b.server
            .backend()
            .counters
            .bytes_out
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    if pai_mount_benches::enabled("random") {
        drop_caches();
        let before = out_bytes();
        let m = b.mount("big", &[]);
        let (p50, p99) = random_reads(&m.dir.join("f1"), GIB);
        m.stop();
        let fetched = out_bytes() - before;
        println!("random 4 KiB preads x1000 in 1 GiB, cold: p50 {p50:.1} ms, p99 {p99:.1} ms, read amplification {:.0}x ({:.0} MiB fetched for 3.9 MiB asked)", fetched as f64 / (1000.0 * 4096.0), mib(fetched));
    }

    // 5. rclone mount --vfs-cache-mode full, same server, same workloads.
    if pai_mount_benches::enabled("rclone") {
        drop_caches();
        if let Some(r) = b.rclone("big") {
            let one = dd(&r.dir.join("f2"));
            let before = out_bytes();
            let (p50, p99) = random_reads(&r.dir.join("f3"), GIB);
            let fetched = out_bytes() - before;
            let hwm = r.stop();
            drop_caches();
            let r = b.rclone("small").unwrap();
            let small8 = read_files(&r.dir, &small_names, 8);
            r.stop();
            println!("rclone (vfs-cache-mode full): cold sequential 1 GiB {one:.0} MB/s (peak RSS {:.0} MiB); small files 8 threads {small8:.0} files/s; random 4 KiB p50 {p50:.1} ms p99 {p99:.1} ms, amplification {:.0}x", mib(hwm), fetched as f64 / (1000.0 * 4096.0));
        } else {
            println!("rclone: not installed (apt-get install rclone) - peer column skipped");
        }
    }
    println!(
        "peak RSS of the benchmark process (server, objects, baselines): {:.0} MiB",
        mib(peak_rss())
    );
}

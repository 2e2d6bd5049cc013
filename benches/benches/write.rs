//! Write-path benchmark: write-back through the real daemon, each workload next to a baseline
//! measured in the same run.
//!
//! ```sh
//! cargo build --release -p pai-mount
//! cargo bench -p pai-mount-benches --bench write           # PAI_BENCH_LATENCY_MS=20 by default
//! ```
//! Rows: `PAI_BENCH_ONLY=checkpoint,small,append` (default: all). `PAI_BENCH_SCRATCH` sets
//! the directory of the local baseline file and the staging directory (default /var/tmp).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pai_mount_benches::{peak_rss, Daemon};
use pai_mount_fs::metrics::Metrics;
use pai_mount_fs::object::{credentials::ProcessEnv, ObjectSource, Source};
use pai_test_s3::TestServer;

const MIB: usize = 1 << 20;

fn mib(b: u64) -> f64 {
    b as f64 / MIB as f64
}

/// Writes `data` in 1 MiB writes to `path` and closes it: seconds.
fn write_file(path: &Path, data: &[u8], fsync: bool) -> f64 {
    let t = Instant::now();
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in data.chunks(MIB) {
        f.write_all(chunk).unwrap();
    }
    if fsync {
        f.sync_all().unwrap();
    }
    drop(f);
    t.elapsed().as_secs_f64()
}

/// Waits until `fsync` of `path` returns (the object is in the bucket): seconds it waited.
fn wait_durable(path: &Path) -> f64 {
    let t = Instant::now();
    std::fs::File::open(path).unwrap().sync_all().unwrap();
    t.elapsed().as_secs_f64()
}

struct Bench {
    rt: tokio::runtime::Runtime,
    server: TestServer,
    bin: PathBuf,
    scratch: tempfile::TempDir,
}

impl Bench {
    fn mount(&self, prefix: &str, extra: &[&str]) -> (Daemon, PathBuf) {
        let staging = self.scratch.path().join(format!("staging-{prefix}"));
        let d = Daemon::start(
            &self.bin,
            &self.server.endpoint(),
            &format!("s3://bench/{prefix}"),
            &["--staging-dir", staging.to_str().unwrap()],
            extra,
        );
        (d, staging)
    }

    /// A raw multipart upload of `data` (parts of `part` bytes, `parallel` in flight): seconds.
    fn raw_multipart(&self, key: &str, data: &bytes::Bytes, part: usize, parallel: usize) -> f64 {
        let source = self.rt.block_on(async {
            ObjectSource::connect(
                Source::parse("s3://bench").unwrap(),
                &pai_mount_benches::store_options(&self.server),
                &ProcessEnv,
                Arc::new(Metrics::default()),
            )
            .await
            .unwrap()
        });
        let t = Instant::now();
        self.rt.block_on(async {
            let mut mp = source
                .start_multipart(key, &Default::default())
                .await
                .unwrap();
            let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
            let mut tasks = Vec::new();
            for start in (0..data.len()).step_by(part) {
                let permit = sem.clone().acquire_owned().await.unwrap();
                let send = mp.put_part(data.slice(start..data.len().min(start + part)));
                tasks.push(tokio::spawn(async move {
                    send.await.unwrap();
                    drop(permit);
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            mp.complete().await.unwrap();
        });
        t.elapsed().as_secs_f64()
    }
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
    println!("pai-mount write benchmark; first-byte latency {latency_ms} ms; 2 cores");

    if pai_mount_benches::enabled("checkpoint") {
        // 1 GiB, written in 1 MiB writes, the way torch.save streams a checkpoint.
        let gib: Vec<u8> = (0..1usize << 30)
            .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 20) as u8)
            .collect();
        let local = b.scratch.path().join("local-1g");
        let data = bytes::Bytes::from(gib);
        // Each variant is measured next to its own local and raw baselines, and every object is
        // deleted afterwards: the in-memory server's growing footprint and the virtual disk's
        // drift otherwise penalize whichever variant runs last.
        for (name, prefix, extra) in [
            ("passthrough, upload at close (default)", "ckpt", &[][..]),
            (
                "through the daemon (--no-passthrough)",
                "ckpt-daemon",
                &["--no-passthrough"][..],
            ),
            (
                "through the daemon, parts sent while writing (--early-upload)",
                "ckpt-early",
                &["--early-upload"][..],
            ),
        ] {
            let local_s = write_file(&local, &data, true);
            std::fs::remove_file(&local).unwrap();
            let raw_s = b.raw_multipart("raw/model.pt", &data, 16 * MIB, 16);
            b.server.backend().delete("bench", "raw/model.pt");
            let (m, _) = b.mount(prefix, extra);
            let close_s = write_file(&m.dir.join("model.pt"), &data, false);
            let durable_s = close_s + wait_durable(&m.dir.join("model.pt"));
            let hwm = m.stop();
            let key = format!("{prefix}/model.pt");
            let stored = b.server.backend().get("bench", &key).unwrap().data;
            assert!(stored == data, "{key}: the bucket holds other bytes");
            drop(stored);
            b.server.backend().delete("bench", &key);
            println!(
                "checkpoint 1 GiB, {name}: close() after {close_s:.2} s, local write+fsync {local_s:.2} s, ratio {:.2} (target <= 1.5); in the bucket after {durable_s:.2} s, raw multipart upload (16 x 16 MiB in flight) {raw_s:.2} s, ratio {:.2} (target <= 1.3); daemon peak RSS {:.0} MiB",
                close_s / local_s,
                durable_s / raw_s,
                mib(hwm)
            );
        }
    }

    if pai_mount_benches::enabled("small") {
        let (m, staging) = b.mount("small", &[]);
        let body = vec![7u8; 64 * 1024];
        let t = Instant::now();
        for i in 0..1000 {
            let mut f = std::fs::File::create(m.dir.join(format!("f{i:04}.bin"))).unwrap();
            f.write_all(&body).unwrap();
        }
        let closed = t.elapsed().as_secs_f64();
        // Durable: every journal record gone.
        while std::fs::read_dir(staging.join("journal")).unwrap().count() > 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        let durable = t.elapsed().as_secs_f64();
        let hwm = m.stop();
        let local = b.scratch.path().join("small-local");
        std::fs::create_dir_all(&local).unwrap();
        let t = Instant::now();
        for i in 0..1000 {
            let mut f = std::fs::File::create(local.join(format!("f{i:04}.bin"))).unwrap();
            f.write_all(&body).unwrap();
            f.sync_all().unwrap();
        }
        let local_s = t.elapsed().as_secs_f64();
        println!(
            "small files 1,000 x 64 KiB: {:.0} files/s closed, {:.0} files/s in the bucket; local write+fsync {:.0} files/s; daemon peak RSS {:.0} MiB",
            1000.0 / closed,
            1000.0 / durable,
            1000.0 / local_s,
            mib(hwm)
        );
    }

    if pai_mount_benches::enabled("append") {
        let (m, _) = b.mount("logs", &[]);
        let chunk = vec![b'x'; 100_000];
        // A writer that keeps its log open.
        let t = Instant::now();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.dir.join("open.log"))
            .unwrap();
        for _ in 0..100 {
            f.write_all(&chunk).unwrap();
        }
        drop(f);
        let held = t.elapsed().as_secs_f64();
        let held_durable = held + wait_durable(&m.dir.join("open.log"));
        // A writer that opens, appends and closes each time (shell `>>`).
        let before = b.server.backend().counters.put();
        let t = Instant::now();
        for _ in 0..100 {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(m.dir.join("reopen.log"))
                .unwrap();
            f.write_all(&chunk).unwrap();
        }
        let reopen = t.elapsed().as_secs_f64();
        let reopen_durable = reopen + wait_durable(&m.dir.join("reopen.log"));
        let puts = b.server.backend().counters.put() - before;
        let hwm = m.stop();
        assert_eq!(
            b.server
                .backend()
                .get("bench", "logs/reopen.log")
                .unwrap()
                .data
                .len(),
            10_000_000
        );
        println!(
            "append 10 MB in 100 KB writes: one open handle {:.3} s ({:.0} MB/s), in the bucket after {held_durable:.2} s; open-append-close each time {:.3} s, in the bucket after {reopen_durable:.2} s with {puts} PUTs (later closes supersede earlier uploads); daemon peak RSS {:.0} MiB",
            held,
            10.0 / held,
            reopen,
            mib(hwm)
        );
    }
    println!("bench process peak RSS {:.0} MiB", mib(peak_rss()));
}

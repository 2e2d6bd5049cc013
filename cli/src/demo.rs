//! `pai-mount demo`: the whole path on an embedded S3 server, with nothing to set up.
//!
//! Starts an S3-protocol server in this process (SigV4, with first-byte latency like a real
//! object store), writes a sample dataset, builds its manifest, mounts it through FUSE, lists,
//! stats and reads every file (checking sha256 against what was written), saves a checkpoint
//! through the mount (write-back: close at local-disk speed, fsync when it is in the bucket),
//! and unmounts.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pai_mount_fs::manifest::{self, BuildOptions, BuildProgress};
use pai_mount_fs::metrics::Metrics;
use pai_mount_fs::mount::{Drain, Mount, MountConfig};
use pai_mount_fs::mountpoint;
use pai_mount_fs::object::credentials::{CredentialFlags, ProcessEnv};
use pai_mount_fs::object::{ObjectSource, Source, StoreOptions};
use pai_mount_fs::prefetch::{PrefetchConfig, Prefetcher};
use pai_mount_fs::write::WriteConfig;
use pai_test_s3::{ServerConfig, TestServer};
use sha2::{Digest, Sha256};

use crate::args::DemoArgs;

/// Deterministic sample bytes (xorshift), so runs are reproducible.
fn sample(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    crate::init_logging("warn");
    let rt = crate::runtime()?;
    let server = rt.block_on(TestServer::start(ServerConfig {
        latency: Duration::from_millis(a.latency_ms),
        ..ServerConfig::default()
    }))?;
    let bucket = "demo-bucket";
    server.backend().create_bucket(bucket);
    println!(
        "1. started an embedded S3 server at {} with {} ms first-byte latency",
        server.endpoint(),
        a.latency_ms
    );

    let mut expected = BTreeMap::new();
    for i in 0..a.objects {
        let key = format!(
            "imagenet/train/n{:08}/img_{i:05}.JPEG",
            1_440_764 + (i % 10)
        );
        let data = sample(i as u64, 4096 + (i * 7919) % 60_000);
        expected.insert(
            key.trim_start_matches("imagenet/").to_string(),
            hex::encode(Sha256::digest(&data)),
        );
        server.backend().put(bucket, &key, data);
    }
    server
        .backend()
        .put(bucket, "imagenet/README.txt", "a sample dataset\n");
    expected.insert(
        "README.txt".into(),
        hex::encode(Sha256::digest(b"a sample dataset\n")),
    );
    println!(
        "2. wrote {} objects under s3://{bucket}/imagenet",
        expected.len()
    );

    let metrics = Arc::new(Metrics::default());
    let options = StoreOptions {
        endpoint: Some(server.endpoint()),
        path_style: true,
        credentials: CredentialFlags {
            access_key_id: Some(pai_test_s3::DEFAULT_ACCESS_KEY.into()),
            secret_access_key: Some(pai_test_s3::DEFAULT_SECRET_KEY.into()),
            session_token: None,
        },
        ..Default::default()
    };
    let source = Source::parse(&format!("s3://{bucket}/imagenet"))?;
    let source = rt.block_on(ObjectSource::connect(
        source,
        &options,
        &ProcessEnv,
        metrics.clone(),
    ))?;
    let t = Instant::now();
    let (header, size) = rt.block_on(manifest::build_and_store(
        &source,
        &BuildOptions::default(),
        &BuildProgress::default(),
    ))?;
    println!(
        "3. built the manifest: {} objects in {} list requests, {size} bytes, {:.0} ms",
        header.object_count,
        header.list_requests,
        t.elapsed().as_secs_f64() * 1e3
    );

    let tmp;
    let mp = match &a.mountpoint {
        Some(m) => m.clone(),
        None => {
            tmp = std::env::temp_dir().join(format!("pai-mount-demo-{}", std::process::id()));
            std::fs::create_dir_all(&tmp)?;
            tmp
        }
    };
    let mp = mountpoint::check(&mp)?;
    let t = Instant::now();
    let staging = tempfile::tempdir().context("creating a staging directory")?;
    let config = MountConfig {
        write: Some(WriteConfig::new(staging.path().join("staging"))),
        ..MountConfig::new(mp.clone())
    };
    let readers = Arc::new(Prefetcher::new(
        source.clone(),
        None,
        PrefetchConfig::default(),
    ));
    let mount = Mount::start(&rt, source, readers, metrics.clone(), config).with_context(|| {
        format!(
            "mounting at {} (needs /dev/fuse; run as root or install fuse3)",
            mp.display()
        )
    })?;
    println!(
        "4. mounted at {} in {:.0} ms",
        mp.display(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let (outcome, ended) = mount.serve_while(&rt, Drain::default(), || {
        exercise(&mp, &expected, &metrics, &server).and_then(|()| checkpoint(&mp, &server))
    });
    let ended = ended.context("serving the mount")?;
    if a.mountpoint.is_none() {
        let _ = std::fs::remove_dir(&mp);
    }
    outcome?;
    println!(
        "8. unmounted: {}. Demo OK.",
        ended.outcome.as_deref().unwrap_or("read-only")
    );
    Ok(())
}

/// Saves a 64 MiB checkpoint through the mount and checks the object in the bucket.
fn checkpoint(mp: &std::path::Path, server: &TestServer) -> anyhow::Result<()> {
    use std::io::Write;
    let data = sample(99, 64 << 20);
    std::fs::create_dir_all(mp.join("checkpoints"))?;
    let path = mp.join("checkpoints/model.pt");
    let t = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    for chunk in data.chunks(1 << 20) {
        f.write_all(chunk)?;
    }
    drop(f);
    let closed = t.elapsed();
    std::fs::File::open(&path)?.sync_all()?;
    let durable = t.elapsed();
    let stored = server
        .backend()
        .get("demo-bucket", "imagenet/checkpoints/model.pt")
        .context("the checkpoint is not in the bucket")?;
    if Sha256::digest(&stored.data) != Sha256::digest(&data) {
        bail!("the uploaded checkpoint differs from what was written");
    }
    println!(
        "7. saved a 64 MiB checkpoint through the mount: close() returned after {:.0} ms, fsync() (in the bucket) after {:.0} ms; sha256 of the object matches",
        closed.as_secs_f64() * 1e3,
        durable.as_secs_f64() * 1e3
    );
    Ok(())
}

fn exercise(
    mp: &std::path::Path,
    expected: &BTreeMap<String, String>,
    metrics: &Metrics,
    server: &TestServer,
) -> anyhow::Result<()> {
    let lists_before = server.backend().counters.list();
    let heads_before = server.backend().counters.head();
    let t = Instant::now();
    let dir = mp.join("train/n01440764");
    let names: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
    let ls = t.elapsed();
    let t = Instant::now();
    let mut stat_bytes = 0;
    for e in &names {
        stat_bytes += std::fs::metadata(e.path())?.len();
    }
    println!(
        "5. listed {} ({} entries) in {:.2} ms and stat'ed every entry in {:.2} ms ({stat_bytes} bytes): {} LIST and {} HEAD requests",
        dir.display(),
        names.len(),
        ls.as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64() * 1e3,
        server.backend().counters.list() - lists_before,
        server.backend().counters.head() - heads_before,
    );
    // Read and verify every file with 8 threads, as a data loader would.
    const READERS: usize = 8;
    let t = Instant::now();
    let items: Vec<(&String, &String)> = expected.iter().collect();
    let results: Vec<anyhow::Result<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..READERS)
            .map(|w| {
                let items = &items;
                s.spawn(move || -> anyhow::Result<u64> {
                    let mut bytes = 0;
                    for (key, want) in items.iter().skip(w).step_by(READERS) {
                        let data = std::fs::read(mp.join(key))
                            .with_context(|| format!("reading {key}"))?;
                        if hex::encode(Sha256::digest(&data)) != **want {
                            bail!("{key}: sha256 mismatch");
                        }
                        bytes += data.len() as u64;
                    }
                    Ok(bytes)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("reader thread"))
            .collect()
    });
    let mut bytes = 0;
    for r in results {
        bytes += r?;
    }
    let checked = items.len();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "6. read {checked} files ({:.1} MB) with {READERS} threads in {:.2} s, {:.0} files/s; sha256 of every file matches; {} GETs, 0 LISTs since mount: {}",
        bytes as f64 / 1e6,
        secs,
        checked as f64 / secs,
        metrics.get_requests.load(Ordering::Relaxed),
        server.backend().counters.list() == lists_before
    );
    Ok(())
}

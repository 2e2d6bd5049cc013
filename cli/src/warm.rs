//! `pai-mount warm`: fill the disk cache ahead of training.
//!
//! - `warm oss://bucket/prefix --cache-dir DIR`: fetches every object of the manifest into DIR
//!   (no daemon may be using DIR; mount with the same `--cache-dir` afterwards).
//! - `warm /mnt/data/train`: reads every file under a path of a live mount, which fills that
//!   mount's own cache.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use futures::StreamExt;
use pai_mount_fs::manifest::{self, BuildOptions};
use pai_mount_fs::metrics::Metrics;

use crate::args::WarmArgs;
use crate::progress::{report_failures, Progress};

pub fn run(a: WarmArgs) -> anyhow::Result<()> {
    crate::init_logging("warn");
    if a.store.source.contains("://") {
        warm_source(&a)
    } else {
        warm_path(Path::new(&a.store.source), a.jobs.max(1))
    }
}

fn warm_source(a: &WarmArgs) -> anyhow::Result<()> {
    if a.cache.cache_dir.is_none() {
        bail!("warming a source needs --cache-dir (the directory the mount will use)");
    }
    let rt = crate::runtime()?;
    let metrics = Arc::new(Metrics::default());
    pai_exporter::start_for_command(&rt, a.metrics_addr, &metrics, &a.store.source, "warm")?;
    rt.block_on(async {
        let source = crate::store::connect(&a.store, metrics.clone()).await?;
        let prefetcher = Arc::new(crate::store::prefetcher(&source, &a.cache, metrics.clone())?);
        let (ns, _) = manifest::load_or_list(&source, &BuildOptions::default()).await?;
        let objects: Vec<_> = ns.files().filter_map(|id| ns.pin(id)).collect();
        let total: u64 = objects.iter().map(|o| o.size).sum();
        let progress = Arc::new(Progress::new(objects.len() as u64, total));
        let errors = Arc::new(Mutex::new(Vec::new()));
        futures::stream::iter(objects)
            .for_each_concurrent(a.jobs.max(1), |o| {
                let (p, progress, errors) = (prefetcher.clone(), progress.clone(), errors.clone());
                async move {
                    let size = o.size;
                    let key = o.key.clone();
                    match p.warm(o).await {
                        Ok(_) => progress.finish_one(size, true),
                        Err(e) => {
                            errors.lock().unwrap().push(format!("{key}: {e}"));
                            progress.finish_one(size, false);
                        }
                    }
                }
            })
            .await;
        let (done, failed, secs) = progress.finish();
        let fetched = metrics.get_bytes.load(Ordering::Relaxed);
        let cached_before = metrics.disk_hits.load(Ordering::Relaxed);
        println!(
            "warmed {} of {done} objects ({total} bytes) in {secs:.1} s, {:.1} MB/s: {fetched} bytes fetched, {cached_before} blocks already cached, {failed} failed",
            done - failed,
            total as f64 / secs / 1e6
        );
        let errors = errors.lock().unwrap().clone();
        report_failures(&errors, failed, "objects could not be warmed")?;
        // A block the cache declined (no room, or a write error) would be fetched again by
        // the mount: the warm did not do its job.
        let skipped = metrics.disk_skipped.load(Ordering::Relaxed);
        if skipped > 0 {
            let why = prefetcher
                .cache()
                .and_then(|c| c.not_filling())
                .unwrap_or_else(|| "a cache write failed (see the log above)".into());
            bail!(
                "{skipped} blocks were fetched but not stored in the cache: {why}; \
                 free space, or lower --cache-min-free, and warm again"
            );
        }
        Ok(())
    })
}

fn collect(dir: &Path, out: &mut Vec<(PathBuf, u64)>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            collect(&e.path(), out)?;
        } else if ft.is_file() {
            out.push((e.path(), e.metadata()?.len()));
        }
    }
    Ok(())
}

fn warm_path(path: &Path, jobs: usize) -> anyhow::Result<()> {
    let mut files = Vec::new();
    if path.is_dir() {
        collect(path, &mut files)?;
    } else {
        let len = std::fs::metadata(path)
            .with_context(|| format!("{}", path.display()))?
            .len();
        files.push((path.to_path_buf(), len));
    }
    let total: u64 = files.iter().map(|f| f.1).sum();
    let progress = Progress::new(files.len() as u64, total);
    let queue = Mutex::new(files.into_iter());
    let errors = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let Some((p, len)) = queue.lock().unwrap().next() else {
                        return;
                    };
                    let r = (|| -> std::io::Result<()> {
                        use std::io::Read;
                        let mut f = std::fs::File::open(&p)?;
                        while f.read(&mut buf)? > 0 {}
                        Ok(())
                    })();
                    if let Err(e) = &r {
                        errors.lock().unwrap().push(format!("{}: {e}", p.display()));
                    }
                    progress.finish_one(len, r.is_ok());
                }
            });
        }
    });
    let (done, failed, secs) = progress.finish();
    println!(
        "read {} of {done} files ({total} bytes) in {secs:.1} s, {:.1} MB/s, {failed} failed",
        done - failed,
        total as f64 / secs / 1e6
    );
    let errors = errors.into_inner().unwrap();
    report_failures(&errors, failed, "files could not be read")
}

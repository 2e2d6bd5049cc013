//! `pai-mount manifest build|show`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pai_mount_fs::manifest::{self, BuildOptions, BuildProgress, Manifest, MANIFEST_KEY};
use pai_mount_fs::metrics::Metrics;
use pai_mount_fs::namespace::Namespace;

use crate::args::ManifestCommand;

pub fn run(cmd: ManifestCommand) -> anyhow::Result<()> {
    crate::init_logging("warn");
    let rt = crate::runtime()?;
    match cmd {
        ManifestCommand::TarIndex { store, concurrency } => tar_index(&store, concurrency),
        ManifestCommand::Build {
            store,
            output,
            list_concurrency,
            attrs,
        } => rt.block_on(async {
            let source = crate::store::connect(&store, Arc::new(Metrics::default())).await?;
            let progress = Arc::new(BuildProgress::default());
            let started = Instant::now();
            let p = progress.clone();
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    eprintln!(
                        "  listed {} objects in {} requests",
                        p.objects.load(Ordering::Relaxed),
                        p.requests.load(Ordering::Relaxed)
                    );
                }
            });
            let options = BuildOptions {
                concurrency: list_concurrency,
                attrs: attrs.into(),
                ..BuildOptions::default()
            };
            let (header, size, place) = match &output {
                Some(path) => {
                    let (header, entries) = manifest::build(&source, &options, &progress).await?;
                    let bytes = manifest::encode(&header, &entries);
                    std::fs::write(path, &bytes)
                        .with_context(|| format!("writing {}", path.display()))?;
                    (header, bytes.len(), path.display().to_string())
                }
                None => {
                    let (header, size) =
                        manifest::build_and_store(&source, &options, &progress).await?;
                    (header, size, format!("{}/{MANIFEST_KEY}", source.source()))
                }
            };
            ticker.abort();
            println!(
                "built manifest of {}: {} objects, {} bytes, {} list requests, {:.2}s; wrote {} bytes to {}",
                header.source,
                header.object_count,
                header.total_bytes,
                header.list_requests,
                started.elapsed().as_secs_f64(),
                size,
                place
            );
            Ok(())
        }),
        ManifestCommand::Show { store, file } => {
            let bytes = match &file {
                Some(path) => {
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
                }
                None => rt.block_on(async {
                    let source =
                        crate::store::connect(&store, Arc::new(Metrics::default())).await?;
                    source.get_all(MANIFEST_KEY).await?.map(|b| b.to_vec()).with_context(|| {
                        format!(
                            "no manifest at {}/{MANIFEST_KEY}; create one with `pai-mount manifest build`",
                            source.source()
                        )
                    })
                })?,
            };
            let m = Manifest::parse(&bytes)?;
            let started = Instant::now();
            let ns = Namespace::from_manifest(&m)?;
            let load = started.elapsed();
            let h = &m.header;
            let built = chrono_like(h.built_at_ms);
            println!("manifest      {}", file.as_ref().map_or_else(|| store.source.clone(), |f| f.display().to_string()));
            println!("format        version {}", m.version);
            println!("source        {}", h.source);
            println!("built at      {built} by {}", h.builder);
            println!("objects       {}", h.object_count);
            println!("bytes         {}", h.total_bytes);
            println!("files         {}", ns.file_count());
            println!("directories   {}", ns.dir_count());
            println!("with attrs    {} (modes, owners or symlinks)", ns.attrs_count());
            println!("skipped keys  {} {:?}", ns.skipped().total(), ns.skipped());
            println!("list requests {}", h.list_requests);
            println!("file size     {} bytes", bytes.len());
            println!("load time     {:.1} ms, {} bytes in memory", load.as_secs_f64() * 1e3, ns.heap_bytes());
            Ok(())
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` without a date crate.
fn chrono_like(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Builds the tar index with the loader's own runtime (not inside another runtime).
fn tar_index(store: &crate::args::StoreArgs, concurrency: usize) -> anyhow::Result<()> {
    let options = pai_loader::DatasetOptions {
        store: crate::store::options(store),
        ..Default::default()
    };
    let started = Instant::now();
    let (shards, samples) =
        pai_loader::Dataset::build_tar_index(&store.source, &options, concurrency)?;
    println!(
        "indexed {shards} tar shards, {samples} samples, in {:.1} s; stored at {}/{}",
        started.elapsed().as_secs_f64(),
        store.source.trim_end_matches('/'),
        pai_loader::tar_index::INDEX_KEY
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_epoch_and_a_known_date() {
        assert_eq!(super::chrono_like(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            super::chrono_like(1_795_478_400_000),
            "2026-11-24 00:00:00 UTC"
        );
    }
}

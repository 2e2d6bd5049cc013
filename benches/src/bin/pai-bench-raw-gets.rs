//! The raw-GET ceiling for benchmarks in other languages: GETs of `PREFIX000000.bin`...
//! (as the test server's `fill` command names them), `--concurrency` in flight, through the
//! same object seam the loader uses, nothing else. Prints one JSON line.
//!
//! `pai-bench-raw-gets --endpoint URL --bucket B --prefix P --count N --concurrency C`
//! (credentials from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`; path-style addressing).

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use pai_mount_fs::metrics::Metrics;
use pai_mount_fs::object::credentials::ProcessEnv;
use pai_mount_fs::object::{ObjectSource, Source, StoreOptions};

fn main() -> anyhow::Result<()> {
    let mut endpoint = None;
    let (mut bucket, mut prefix) = (String::from("bench"), String::new());
    let (mut count, mut concurrency) = (1000usize, 64usize);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--endpoint" => endpoint = Some(value()?),
            "--bucket" => bucket = value()?,
            "--prefix" => prefix = value()?,
            "--count" => count = value()?.parse()?,
            "--concurrency" => concurrency = value()?.parse()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let options = StoreOptions {
        endpoint,
        path_style: true,
        ..Default::default()
    };
    let source = rt.block_on(ObjectSource::connect(
        Source::parse(&format!("s3://{bucket}"))?,
        &options,
        &ProcessEnv,
        Arc::new(Metrics::default()),
    ))?;
    let keys: Vec<String> = (0..count).map(|i| format!("{prefix}{i:06}.bin")).collect();
    let t = Instant::now();
    let bytes: u64 = rt.block_on(async {
        futures::stream::iter(keys.iter())
            .map(|k| {
                let s = source.clone();
                async move {
                    // One GET of the whole object, as a loader reads a sample.
                    s.get_all(k).await.map(|b| b.map_or(0, |b| b.len() as u64))
                }
            })
            .buffer_unordered(concurrency.max(1))
            .fold(Ok(0u64), |a: anyhow::Result<u64>, b| async move {
                Ok(a? + b.map_err(|e| anyhow::anyhow!("{e}"))?)
            })
            .await
    })?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{{\"samples\": {count}, \"bytes\": {bytes}, \"seconds\": {secs:.4}, \"samples_per_s\": {:.1}, \"mb_per_s\": {:.1}}}",
        count as f64 / secs,
        bytes as f64 / secs / 1e6
    );
    Ok(())
}

//! Turning store arguments into a connected source.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pai_mount_fs::metrics::Metrics;
use pai_mount_fs::object::credentials::{CredentialFlags, ProcessEnv};
use pai_mount_fs::object::{ObjectSource, Source, StoreOptions};

use crate::args::StoreArgs;

pub fn options(a: &StoreArgs) -> StoreOptions {
    StoreOptions {
        region: a.region.clone(),
        endpoint: a.endpoint.clone(),
        internal: a.internal,
        path_style: a.path_style,
        anonymous: a.no_sign_request,
        credentials: CredentialFlags {
            access_key_id: a.access_key_id.clone(),
            secret_access_key: a.secret_access_key.clone(),
            session_token: a.session_token.clone(),
        },
        resolve: a.resolve.clone(),
        deadlines: a.deadlines(),
        max_concurrency: a.max_concurrency,
    }
}

/// The longest the check that a store answers may take, credentials included: long enough
/// for a few timed-out requests to be retried, short enough that a mount against a dead or
/// silent endpoint fails while someone is still watching.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a check that is still waiting says so.
const CHECK_NOTICE_EVERY: Duration = Duration::from_secs(5);

/// Parses the URL, resolves credentials and checks that the bucket answers, telling on
/// stderr what it waits for when that takes long.
pub async fn connect(a: &StoreArgs, metrics: Arc<Metrics>) -> anyhow::Result<ObjectSource> {
    connect_with(a, metrics, &|line| eprintln!("{line}")).await
}

/// [`connect`], with the waiting notices sent to `notify`.
pub async fn connect_with(
    a: &StoreArgs,
    metrics: Arc<Metrics>,
    notify: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<ObjectSource> {
    let source = Source::parse(&a.source)?;
    let options = options(a);
    let endpoint = a.endpoint.clone().unwrap_or_else(|| match &a.region {
        Some(r) => format!("the {r} endpoint"),
        None => "the default endpoint".into(),
    });
    let stage = std::sync::Mutex::new("resolving credentials");
    let work = async {
        let s = ObjectSource::connect(source.clone(), &options, &ProcessEnv, metrics).await?;
        *stage.lock().unwrap() = "listing one key (the bucket check)";
        s.probe()
            .await
            .with_context(|| format!("checking {}", s.source()))?;
        anyhow::Ok(s)
    };
    tokio::pin!(work);
    let started = tokio::time::Instant::now();
    let mut notices = tokio::time::interval_at(started + CHECK_NOTICE_EVERY, CHECK_NOTICE_EVERY);
    let deadline = tokio::time::sleep(CHECK_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            r = &mut work => return r,
            _ = notices.tick() => notify(&format!(
                "still waiting for {source} at {endpoint}: {} ({} s)",
                stage.lock().unwrap(),
                started.elapsed().as_secs()
            )),
            _ = &mut deadline => anyhow::bail!(
                "{source}: no answer from {endpoint} within {} s while {}; check --endpoint, \
                 --region and --internal, and that this machine can reach the store",
                CHECK_TIMEOUT.as_secs(),
                stage.lock().unwrap()
            ),
        }
    }
}

/// The reader factory for a mount or a warm-up: prefetching, with the disk cache if asked.
pub fn prefetcher(
    source: &ObjectSource,
    cache: &crate::args::CacheArgs,
    metrics: Arc<Metrics>,
) -> anyhow::Result<pai_mount_fs::prefetch::Prefetcher> {
    use pai_mount_fs::cache::{CacheConfig, DiskCache, EngineKind};
    let disk = match &cache.cache_dir {
        Some(dir) => {
            let engine = match cache.io_engine.as_str() {
                "uring" => EngineKind::Uring,
                "pread" => EngineKind::Pread,
                _ => EngineKind::Auto,
            };
            Some(Arc::new(DiskCache::open(
                CacheConfig {
                    dir: dir.clone(),
                    max_bytes: cache.cache_size,
                    min_free_bytes: cache.cache_min_free,
                    engine,
                },
                metrics,
            )?))
        }
        None => None,
    };
    Ok(pai_mount_fs::prefetch::Prefetcher::new(
        source.clone(),
        disk,
        pai_mount_fs::prefetch::PrefetchConfig {
            part_size: cache.part_size,
            max_window: cache.max_window,
            budget: cache.prefetch_budget,
            max_requests: cache.max_requests,
            verify: !cache.no_verify_reads,
            ..Default::default()
        },
    ))
}

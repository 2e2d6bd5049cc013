//! Turning store arguments into a connected source.

use std::sync::Arc;

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
        request_timeout: None,
    }
}

/// Parses the URL, resolves credentials and checks that the bucket answers.
pub async fn connect(a: &StoreArgs, metrics: Arc<Metrics>) -> anyhow::Result<ObjectSource> {
    let source = Source::parse(&a.source)?;
    let s = ObjectSource::connect(source, &options(a), &ProcessEnv, metrics).await?;
    s.probe()
        .await
        .with_context(|| format!("checking {}", s.source()))?;
    Ok(s)
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
            ..Default::default()
        },
    ))
}

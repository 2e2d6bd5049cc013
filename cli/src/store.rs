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

//! Source URLs and the construction of clients for them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use super::credentials::{self, Env};
use super::list::{LocalLister, S3Lister, S3ListerConfig};
use super::transport::{AdaptiveLimit, Deadlines, Transport, DEFAULT_MAX_CONCURRENCY};
use super::{Lister, SourceError};
use crate::metrics::Metrics;

/// Attempts of one request after its first (`object_store`'s retry loop, and the lister's).
/// Ten, with backoff from 100 ms doubling (with jitter) to [`MAX_BACKOFF`], ride out a
/// throttling episode while the adaptive limit finds the store's ceiling, and give up on a
/// dead store in well under a minute.
pub const MAX_RETRIES: usize = 10;
/// The longest pause between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// No request is retried after this long since its first attempt.
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(120);

/// What kind of store a source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// Alibaba Cloud OSS through its S3-compatible API.
    Oss,
    /// Any S3-compatible endpoint.
    S3,
    /// A local directory treated as a bucket.
    File,
}

/// A parsed source URL: `oss://bucket[/prefix]`, `s3://bucket[/prefix]` or `file:///dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub kind: SourceKind,
    /// The bucket name; for `file://`, the directory.
    pub bucket: String,
    /// The key prefix: empty, or ending in `/`.
    pub prefix: String,
}

impl Source {
    pub fn parse(url: &str) -> Result<Self, SourceError> {
        let bad = |why: &str| SourceError::BadUrl {
            url: url.to_string(),
            why: why.to_string(),
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            bad("expected oss://bucket/prefix, s3://bucket/prefix or file:///dir")
        })?;
        let kind = match scheme {
            "oss" => SourceKind::Oss,
            "s3" => SourceKind::S3,
            "file" => SourceKind::File,
            other => {
                return Err(bad(&format!(
                    "unknown scheme {other:?}; expected oss, s3 or file"
                )))
            }
        };
        if kind == SourceKind::File {
            if !rest.starts_with('/') {
                return Err(bad("a file URL needs an absolute path: file:///dir"));
            }
            let dir = rest.trim_end_matches('/');
            return Ok(Self {
                kind,
                bucket: if dir.is_empty() {
                    "/".into()
                } else {
                    dir.into()
                },
                prefix: String::new(),
            });
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        validate_bucket(bucket).map_err(|why| bad(&why))?;
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|s| s == "." || s == "..") || prefix.contains("//") {
            return Err(bad("the prefix has an empty, '.' or '..' segment"));
        }
        Ok(Self {
            kind,
            bucket: bucket.to_string(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        })
    }

    /// `oss://bucket/prefix` (without a trailing slash), for messages.
    pub fn display_root(&self) -> String {
        let scheme = match self.kind {
            SourceKind::Oss => "oss",
            SourceKind::S3 => "s3",
            SourceKind::File => "file",
        };
        let prefix = self.prefix.trim_end_matches('/');
        match (self.kind, prefix.is_empty()) {
            (SourceKind::File, _) => format!("file://{}", self.bucket),
            (_, true) => format!("{scheme}://{}", self.bucket),
            (_, false) => format!("{scheme}://{}/{prefix}", self.bucket),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display_root())
    }
}

fn validate_bucket(bucket: &str) -> Result<(), String> {
    if bucket.is_empty() {
        return Err("the bucket name is empty".into());
    }
    if bucket.len() < 3 || bucket.len() > 63 {
        return Err(format!(
            "bucket name {bucket:?} must be 3 to 63 characters long"
        ));
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        || bucket.starts_with(['-', '.'])
        || bucket.ends_with(['-', '.'])
    {
        return Err(format!(
            "bucket name {bucket:?} may only hold lowercase letters, digits, '-' and '.', and must start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// How to reach a store, beyond its URL. Everything has a default.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// OSS region id (`cn-hangzhou`) or S3 region.
    pub region: Option<String>,
    /// Endpoint URL. For virtual-hosted style it is the service endpoint without the bucket;
    /// the bucket is added as a subdomain.
    pub endpoint: Option<String>,
    /// OSS only: use the `-internal` (VPC) endpoint.
    pub internal: bool,
    /// S3 only: path-style addressing. OSS rejects path style.
    pub path_style: bool,
    /// Send unsigned requests (public buckets).
    pub anonymous: bool,
    pub credentials: credentials::CredentialFlags,
    /// Host-to-address overrides, like curl's `--resolve`.
    pub resolve: Vec<(String, SocketAddr)>,
    /// Connect, first-byte and idle-body bounds of every request.
    pub deadlines: Deadlines,
    /// Ceiling of the per-endpoint adaptive concurrency limit (default
    /// [`super::transport::DEFAULT_MAX_CONCURRENCY`]).
    pub max_concurrency: Option<usize>,
}

/// The HTTP client shared by object_store and the lister: reqwest with the `--resolve`
/// overrides, behind the [`Transport`] (deadlines, throttling, the endpoint's adaptive limit).
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    client: reqwest::Client,
    transport: Transport,
}

impl Connector {
    fn new(
        options: &StoreOptions,
        endpoint: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SourceError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(options.deadlines.connect)
            .pool_idle_timeout(Duration::from_secs(50))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .http1_only();
        for (host, addr) in &options.resolve {
            builder = builder.resolve(host, *addr);
        }
        let client = builder
            .build()
            .map_err(|e| SourceError::BadOption(format!("building the HTTP client: {e}")))?;
        let authority = endpoint
            .split_once("://")
            .map_or(endpoint, |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap_or_default();
        let limit = AdaptiveLimit::for_endpoint(
            authority,
            options.max_concurrency.unwrap_or(DEFAULT_MAX_CONCURRENCY),
        );
        let transport = Transport::new(client.clone(), options.deadlines, limit, metrics);
        Ok(Self { client, transport })
    }

    /// The plain client, for requests outside the store (instance metadata, STS).
    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

impl object_store::client::HttpConnector for Connector {
    fn connect(
        &self,
        _options: &ClientOptions,
    ) -> object_store::Result<object_store::client::HttpClient> {
        Ok(object_store::client::HttpClient::new(
            self.transport.clone(),
        ))
    }
}

/// The endpoint that requests for `bucket` go to, and whether it already names the bucket.
fn bucket_endpoint(source: &Source, options: &StoreOptions) -> Result<String, SourceError> {
    let virtual_hosted = source.kind == SourceKind::Oss || !options.path_style;
    let base = match (&options.endpoint, source.kind) {
        (Some(e), _) => e.trim_end_matches('/').to_string(),
        (None, SourceKind::Oss) => {
            let region = options.region.as_deref().ok_or_else(|| {
                SourceError::BadOption(
                    "oss:// needs --region (for example cn-hangzhou) or --endpoint".into(),
                )
            })?;
            let internal = if options.internal { "-internal" } else { "" };
            format!("https://s3.oss-{region}{internal}.aliyuncs.com")
        }
        (None, _) => {
            let region = options.region.as_deref().unwrap_or("us-east-1");
            format!("https://s3.{region}.amazonaws.com")
        }
    };
    let (scheme, host) = base.split_once("://").ok_or_else(|| {
        SourceError::BadOption(format!(
            "endpoint {base:?} must start with http:// or https://"
        ))
    })?;
    if scheme != "http" && scheme != "https" {
        return Err(SourceError::BadOption(format!(
            "endpoint {base:?} must start with http:// or https://"
        )));
    }
    if host.contains('/') {
        return Err(SourceError::BadOption(format!(
            "endpoint {base:?} must not have a path"
        )));
    }
    Ok(if virtual_hosted {
        format!("{scheme}://{}.{host}", source.bucket)
    } else {
        format!("{scheme}://{host}/{}", source.bucket)
    })
}

pub(super) async fn build(
    source: &Source,
    options: &StoreOptions,
    env: &dyn Env,
    metrics: Arc<Metrics>,
) -> Result<(Arc<dyn ObjectStore>, Arc<dyn Lister>), SourceError> {
    if source.kind == SourceKind::File {
        let root = PathBuf::from(&source.bucket);
        if !root.is_dir() {
            return Err(SourceError::NoBucket {
                bucket: source.bucket.clone(),
            });
        }
        let store = LocalFileSystem::new_with_prefix(&root).map_err(|e| SourceError::Other {
            what: source.bucket.clone(),
            why: e.to_string(),
        })?;
        return Ok((Arc::new(store), Arc::new(LocalLister::new(root))));
    }
    if source.kind == SourceKind::Oss && options.path_style {
        return Err(SourceError::BadOption(
            "OSS rejects path-style requests; drop --path-style for oss://".into(),
        ));
    }
    let region = options.region.clone().unwrap_or_else(|| match source.kind {
        SourceKind::Oss => "cn-hangzhou".into(),
        _ => "us-east-1".into(),
    });
    let endpoint = bucket_endpoint(source, options)?;
    // object_store appends the bucket itself in path style.
    let store_endpoint = if source.kind == SourceKind::Oss || !options.path_style {
        endpoint.clone()
    } else {
        endpoint
            .strip_suffix(&format!("/{}", source.bucket))
            .unwrap_or(&endpoint)
            .to_string()
    };
    let connector = Connector::new(options, &endpoint, metrics)?;
    let provider = if options.anonymous {
        None
    } else {
        Some(credentials::resolve(source, &options.credentials, env, connector.client()).await?)
    };
    // S3 sends an object's checksums only when asked (OSS always does).
    let connector = match (&provider, source.kind) {
        (Some(p), SourceKind::S3) => Connector {
            transport: connector
                .transport
                .clone()
                .with_checksum_mode(p.clone(), region.clone()),
            client: connector.client,
        },
        _ => connector,
    };
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&source.bucket)
        .with_region(&region)
        .with_endpoint(&store_endpoint)
        .with_virtual_hosted_style_request(source.kind == SourceKind::Oss || !options.path_style)
        .with_allow_http(endpoint.starts_with("http://"))
        .with_http_connector(connector.clone())
        .with_retry(RetryConfig {
            max_retries: MAX_RETRIES,
            retry_timeout: RETRY_TIMEOUT,
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: MAX_BACKOFF,
                base: 2.0,
            },
        })
        .with_skip_signature(options.anonymous);
    if let Some(p) = &provider {
        builder = builder.with_credentials(p.clone());
    }
    if source.kind == SourceKind::S3 {
        // Every PUT and part carries its CRC-64/NVME; S3 refuses bytes that do not match,
        // and keeps a full-object CRC-64/NVME that reads then verify. (OSS states its own
        // CRC-64 in answers instead, which the transport compares with what it sent.)
        builder = builder.with_checksum_algorithm(object_store::aws::Checksum::CRC64NVME);
    }
    if source.kind == SourceKind::Oss {
        // OSS's S3 API has no conditional put, bulk delete or S3 tagging headers.
        builder = builder
            .with_conditional_put(S3ConditionalPut::Disabled)
            .with_disable_bulk_delete(true)
            .with_disable_tagging(true);
    }
    let store = builder.build().map_err(|e| SourceError::Other {
        what: source.display_root(),
        why: e.to_string(),
    })?;
    let lister = S3Lister::new(S3ListerConfig {
        endpoint,
        region,
        transport: connector.transport.clone(),
        credentials: provider,
        bucket: source.bucket.clone(),
    });
    Ok((Arc::new(store), Arc::new(lister)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oss_url_with_prefix() {
        let s = Source::parse("oss://my-bucket/datasets/imagenet/").unwrap();
        assert_eq!(s.kind, SourceKind::Oss);
        assert_eq!(s.bucket, "my-bucket");
        assert_eq!(s.prefix, "datasets/imagenet/");
        assert_eq!(s.display_root(), "oss://my-bucket/datasets/imagenet");
    }

    #[test]
    fn parses_bucket_without_prefix_and_file_urls() {
        assert_eq!(Source::parse("s3://bkt").unwrap().prefix, "");
        let f = Source::parse("file:///srv/data/").unwrap();
        assert_eq!((f.kind, f.bucket.as_str()), (SourceKind::File, "/srv/data"));
    }

    #[test]
    fn rejects_bad_urls_with_reasons() {
        for (url, needle) in [
            ("bucket/prefix", "expected oss://"),
            ("gs://bucket", "unknown scheme"),
            ("oss://", "empty"),
            ("oss://UPPER", "lowercase"),
            ("s3://ab", "3 to 63"),
            ("oss://bucket/a/../b", "'..'"),
            ("file://relative", "absolute"),
        ] {
            let err = Source::parse(url).unwrap_err().to_string();
            assert!(err.contains(needle), "{url}: {err}");
        }
    }

    #[test]
    fn oss_endpoint_is_virtual_hosted_and_internal_on_request() {
        let s = Source::parse("oss://bkt/p").unwrap();
        let mut o = StoreOptions {
            region: Some("cn-hangzhou".into()),
            ..Default::default()
        };
        assert_eq!(
            bucket_endpoint(&s, &o).unwrap(),
            "https://bkt.s3.oss-cn-hangzhou.aliyuncs.com"
        );
        o.internal = true;
        assert_eq!(
            bucket_endpoint(&s, &o).unwrap(),
            "https://bkt.s3.oss-cn-hangzhou-internal.aliyuncs.com"
        );
        o.region = None;
        assert!(bucket_endpoint(&s, &o)
            .unwrap_err()
            .to_string()
            .contains("--region"));
    }

    #[test]
    fn s3_endpoint_path_style() {
        let s = Source::parse("s3://bkt").unwrap();
        let o = StoreOptions {
            endpoint: Some("http://127.0.0.1:9000/".into()),
            path_style: true,
            ..Default::default()
        };
        assert_eq!(
            bucket_endpoint(&s, &o).unwrap(),
            "http://127.0.0.1:9000/bkt"
        );
    }
}

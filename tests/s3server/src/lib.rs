//! An in-memory S3-protocol server for tests and benchmarks.
//!
//! Built on the `s3s` crate, so requests are parsed and SigV4-verified by a real protocol
//! implementation, while the storage backend is ours. That backend avoids the quirks of stock
//! `s3s-fs` that distort tests and benchmarks: GET bodies are served as large zero-copy slices,
//! listings carry ETags, a missing key is always `404 NoSuchKey`, `If-Match` is honoured with
//! `412`, any byte string is a valid key, and `TCP_NODELAY` is set on every connection.
//!
//! Two knobs make it useful beyond protocol conformance:
//! - **latency**: every request waits `latency` before its response starts, which models the
//!   10-30 ms first-byte latency of production object stores;
//! - **faults**: the next N requests of a kind answer `503 SlowDown`, or GET bodies are cut
//!   after a number of bytes, which models a connection reset mid-transfer; requests or GET
//!   bodies stall (the connection open and silent); requests beyond K in progress at once are
//!   throttled with `503 SlowDown`.
//!
//! [`proxy::DelayProxy`] puts a real round trip (a delay each way) in front of it.
//!
//! Virtual-hosted addressing: a `Host` of `<bucket>.<domain>` (domain `s3.test` by default)
//! selects the bucket; any other host is path-style.

mod backend;
pub mod proxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use backend::{ChecksumStyle, Faults, Memory, OpCounters, StoredObject};
use hyper_util::rt::{TokioExecutor, TokioIo};
use s3s::auth::SimpleAuth;
use s3s::host::{S3Host, VirtualHost};
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The access key every test server accepts unless configured otherwise.
pub const DEFAULT_ACCESS_KEY: &str = "pai-test-access-key";
/// The secret key every test server accepts unless configured otherwise.
pub const DEFAULT_SECRET_KEY: &str = "pai-test-secret-key";
/// The base domain for virtual-hosted-style requests.
pub const DEFAULT_DOMAIN: &str = "s3.test";

/// How to run a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    pub access_key: String,
    pub secret_key: String,
    pub domain: String,
    /// Added before every response starts (first-byte latency).
    pub latency: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            access_key: DEFAULT_ACCESS_KEY.into(),
            secret_key: DEFAULT_SECRET_KEY.into(),
            domain: DEFAULT_DOMAIN.into(),
            latency: Duration::ZERO,
        }
    }
}

/// The S3 service with connection-level faults in front of it.
#[derive(Clone)]
struct Faulty {
    inner: s3s::service::S3Service,
    backend: Arc<Memory>,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for Faulty {
    type Response = <s3s::service::S3Service as hyper::service::Service<
        http::Request<hyper::body::Incoming>,
    >>::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        use std::sync::atomic::Ordering::SeqCst;
        let faults = &self.backend.faults;
        if req.method() == http::Method::PUT && backend::Faults::take(&faults.reset_puts) {
            // An error from the service makes hyper drop the connection without an answer.
            return Box::pin(async { Err("injected connection reset".into()) });
        }
        if faults.stall_all.load(SeqCst) || backend::Faults::take(&faults.stall_requests) {
            // Read, never answered; the connection stays open until the client gives up.
            return Box::pin(async move {
                let _req = req;
                std::future::pending().await
            });
        }
        let k = faults.throttle_above.load(SeqCst);
        let now = faults.in_progress.fetch_add(1, SeqCst) + 1;
        let guard = InProgress(self.backend.clone());
        if k > 0 && now > k {
            faults.throttled.fetch_add(1, SeqCst);
            drop(guard);
            return Box::pin(async move {
                let _req = req;
                Ok(slow_down())
            });
        }
        let method = req.method().clone();
        let asked = req
            .headers()
            .get("x-amz-checksum-mode")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"enabled"));
        let backend = self.backend.clone();
        let fut = hyper::service::Service::call(&self.inner, req);
        Box::pin(async move {
            let r = fut.await.map_err(Into::into);
            drop(guard);
            r.map(|mut resp| {
                add_checksums(&backend, &method, asked, &mut resp);
                resp
            })
        })
    }
}

/// Adds the checksum headers a store of the configured style would send.
fn add_checksums(
    backend: &Memory,
    method: &http::Method,
    asked: bool,
    resp: &mut http::Response<s3s::Body>,
) {
    let style = *backend.checksum_style.lock().unwrap();
    if style == ChecksumStyle::None || !resp.status().is_success() {
        return;
    }
    let Some(etag) = resp
        .headers()
        .get(http::header::ETAG)
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    let Some((xz, nvme)) = backend.checksums_of(etag) else {
        return;
    };
    // A whole object, or a range that covers all of it (`bytes 0-(n-1)/n`).
    let whole = match resp
        .headers()
        .get(http::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
    {
        None => true,
        Some(cr) => cr
            .strip_prefix("bytes 0-")
            .and_then(|r| r.split_once('/'))
            .and_then(|(last, total)| {
                Some(last.parse::<u64>().ok()? + 1 == total.parse::<u64>().ok()?)
            })
            .unwrap_or(false),
    };
    let h = resp.headers_mut();
    match style {
        ChecksumStyle::Oss => {
            h.insert("x-oss-hash-crc64ecma", xz.parse().expect("digits"));
        }
        ChecksumStyle::S3
            if asked && whole && (method == http::Method::GET || method == http::Method::HEAD) =>
        {
            h.insert("x-amz-checksum-crc64nvme", nvme.parse().expect("base64"));
        }
        _ => {}
    }
}

/// Counts a request as in progress until dropped.
struct InProgress(Arc<Memory>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0
            .faults
            .in_progress
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The answer of a store that throttles: `503 SlowDown`, as S3 and OSS send it.
fn slow_down() -> http::Response<s3s::Body> {
    let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
               <Message>Please reduce your request rate.</Message></Error>";
    http::Response::builder()
        .status(http::StatusCode::SERVICE_UNAVAILABLE)
        .header(http::header::CONTENT_TYPE, "application/xml")
        .body(s3s::Body::from(xml.to_string()))
        .expect("a static response")
}

/// A running server. Dropping it stops accepting connections.
pub struct TestServer {
    addr: SocketAddr,
    config: ServerConfig,
    backend: Arc<Memory>,
    stop: watch::Sender<bool>,
}

impl TestServer {
    /// Starts a server on the current tokio runtime.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Self> {
        let backend = Arc::new(Memory::new(config.latency));
        let listener = TcpListener::bind(config.bind).await?;
        let addr = listener.local_addr()?;
        let mut builder = S3ServiceBuilder::new(backend::Service::from(backend.clone()));
        builder.set_auth(SimpleAuth::from_single(
            config.access_key.clone(),
            config.secret_key.clone(),
        ));
        builder.set_host(Host {
            domain: config.domain.clone(),
        });
        let service = builder.build();
        let faults_of = backend.clone();
        let (stop, mut stopped) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!("accept failed: {e}");
                            continue;
                        }
                    },
                    _ = stopped.changed() => return,
                };
                let _ = stream.set_nodelay(true);
                let service = Faulty {
                    inner: service.clone(),
                    backend: faults_of.clone(),
                };
                tokio::spawn(async move {
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            config,
            backend,
            stop,
        })
    }

    /// Starts a server on a runtime of its own, for synchronous tests and benchmarks.
    pub fn start_background(config: ServerConfig) -> anyhow::Result<BackgroundServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3-test-server")
            .enable_all()
            .build()?;
        let server = runtime.block_on(Self::start(config))?;
        Ok(BackgroundServer {
            server: Some(server),
            runtime: Some(runtime),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for path-style clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The storage behind the server: put objects, read them back, count requests, inject faults.
    pub fn backend(&self) -> &Arc<Memory> {
        &self.backend
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A [`TestServer`] with its own runtime.
pub struct BackgroundServer {
    server: Option<TestServer>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::ops::Deref for BackgroundServer {
    type Target = TestServer;
    fn deref(&self) -> &TestServer {
        self.server.as_ref().expect("server is alive until drop")
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        drop(self.server.take());
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// Virtual-hosted style for `<bucket>.<domain>[:port]`, path style for everything else.
#[derive(Debug)]
struct Host {
    domain: String,
}

impl S3Host for Host {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> s3s::S3Result<VirtualHost<'a>> {
        let name = host.rsplit_once(':').map_or(host, |(h, _port)| h);
        if let Some(bucket) = name
            .strip_suffix(self.domain.as_str())
            .and_then(|h| h.strip_suffix('.'))
        {
            if !bucket.is_empty() {
                return Ok(VirtualHost::new(host).with_bucket(bucket));
            }
        }
        Ok(VirtualHost::new(host))
    }
}

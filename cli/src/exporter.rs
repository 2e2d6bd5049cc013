//! The Prometheus endpoint of a mount: `GET /metrics` on `--metrics-addr`, in the OpenMetrics
//! text format, with every metric of `pai_mount_fs::metrics::ALL` and the labels `source` and
//! `mountpoint` on each (one endpoint per mount).
//!
//! Bounded: at most [`MAX_CONNECTIONS`] connections are served at once (more wait in the
//! kernel's accept queue), and a client gets [`HEADER_TIMEOUT`] to send its request headers.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use pai_mount_fs::metrics::{Kind, Metrics, ALL};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Connections served at once.
const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Reads [`Metrics`] at each scrape.
#[derive(Debug)]
struct Collected(Arc<Metrics>);

impl Collector for Collected {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (d, value) in ALL.iter().zip(self.0.values()) {
            let name = d.prometheus_name();
            let help = d.help.split_whitespace().collect::<Vec<_>>().join(" ");
            match d.kind {
                Kind::Counter => {
                    let c = ConstCounter::new(value);
                    c.encode(encoder.encode_descriptor(&name, &help, None, c.metric_type())?)?;
                }
                Kind::Gauge => {
                    let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
                    g.encode(encoder.encode_descriptor(&name, &help, None, g.metric_type())?)?;
                }
            }
        }
        Ok(())
    }
}

/// The registry of one mount's metrics.
pub fn registry(metrics: Arc<Metrics>, source: &str, mountpoint: &str) -> Registry {
    let labels = [
        (Cow::Borrowed("source"), Cow::Owned(source.to_string())),
        (
            Cow::Borrowed("mountpoint"),
            Cow::Owned(mountpoint.to_string()),
        ),
    ];
    let mut registry = Registry::with_labels(labels.into_iter());
    registry.register_collector(Box::new(Collected(metrics)));
    registry
}

/// The text a scrape returns.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

/// Binds `addr` (an error names it) and serves `/metrics` on `rt` until the runtime ends.
/// Returns the address bound (the port, when 0 was asked for).
pub fn start(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    registry: Registry,
) -> anyhow::Result<SocketAddr> {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(addr))
        .with_context(|| format!("serving metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    let registry = Arc::new(registry);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    rt.spawn(async move {
        loop {
            let slot = slots.clone().acquire_owned().await.expect("never closed");
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("metrics endpoint: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let service = hyper::service::service_fn(move |req| {
                    let registry = registry.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(&req, &registry)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

fn answer<B>(req: &Request<B>, registry: &Registry) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    let mut r = Response::new(Full::new(Bytes::from(render(registry))));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed_with_its_kind_help_and_labels() {
        let m = Arc::new(Metrics::default());
        Metrics::add(&m.get_requests, 7);
        Metrics::add(&m.budget_held, 1 << 20);
        let text = render(&registry(m, "s3://bkt/p", "/mnt/data"));
        assert!(
            text.contains("# TYPE pai_mount_object_get_requests counter"),
            "{text}"
        );
        assert!(text.contains(
            "pai_mount_object_get_requests_total{source=\"s3://bkt/p\",mountpoint=\"/mnt/data\"} 7"
        ));
        assert!(text.contains("# TYPE pai_mount_prefetch_budget_held_bytes gauge"));
        assert!(
            text.contains("# HELP pai_mount_object_get_requests GET requests, ranged or whole.")
        );
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(text.matches("# TYPE").count(), ALL.len());
    }
}

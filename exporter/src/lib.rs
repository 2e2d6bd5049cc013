//! The Prometheus endpoint of pai-mount's processes (the mount daemon, `cp`, `warm`, and the
//! Python loader): `GET /metrics` in the OpenMetrics text format, with every metric of
//! `pai_store::metrics::ALL` (counters, gauges, latency histograms), the FUSE operation latency
//! histograms labelled `op`, and, for a mount, the gauges sampled from it (`SAMPLED`). The
//! labels given to [`registry`] go on every sample. Values come from one [`Metrics`] or, for a
//! process with several datasets, the sum of all of them ([`Source`]).
//!
//! Bounded: at most [`MAX_CONNECTIONS`] connections are served at once (more wait in the
//! kernel's accept queue), and a client gets [`HEADER_TIMEOUT`] to send its request headers.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use pai_store::metrics::{
    Descriptor, FuseOp, Histogram, Kind, Metrics, Value, ALL, FUSE_OP_SECONDS, SAMPLED,
};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Connections served at once.
const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Values of [`SAMPLED`], in its order, read from the live mount at each scrape (`None` before
/// the mount exists).
pub type Sampler = Box<dyn Fn() -> Option<Vec<u64>> + Send + Sync>;

/// Where the values come from at each scrape.
pub enum Source {
    One(Arc<Metrics>),
    /// Summed over all of them.
    Many(Box<dyn Fn() -> Vec<Arc<Metrics>> + Send + Sync>),
}

/// Reads the metrics and the sampler at each scrape.
struct Collected {
    source: Source,
    sampled: Sampler,
}

impl std::fmt::Debug for Collected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collected").finish_non_exhaustive()
    }
}

fn help(d: &Descriptor) -> String {
    d.help.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A histogram's buckets, sum and count, as the encoder wants them.
fn encode_histogram(h: &Histogram, mut e: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
    let (sum, count, buckets) = h.snapshot();
    e.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

fn encode_number(
    d: &Descriptor,
    value: u64,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let name = d.prometheus_name();
    if d.kind == Kind::Counter {
        let c = ConstCounter::new(value);
        c.encode(encoder.encode_descriptor(&name, &help(d), None, c.metric_type())?)
    } else {
        let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
        g.encode(encoder.encode_descriptor(&name, &help(d), None, g.metric_type())?)
    }
}

impl Collector for Collected {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let metrics = match &self.source {
            Source::One(m) => m.clone(),
            Source::Many(all) => {
                let total = Arc::new(Metrics::default());
                for m in all() {
                    total.absorb(&m);
                }
                total
            }
        };
        for (d, value) in ALL.iter().zip(metrics.values()) {
            match value {
                Value::Number(n) => encode_number(d, n, &mut encoder)?,
                Value::Histogram(h) => encode_histogram(
                    h,
                    encoder.encode_descriptor(
                        &d.prometheus_name(),
                        &help(d),
                        None,
                        MetricType::Histogram,
                    )?,
                )?,
            }
        }
        let d = &FUSE_OP_SECONDS;
        let name = d.prometheus_name();
        let mut family = encoder.encode_descriptor(&name, &help(d), None, MetricType::Histogram)?;
        for op in FuseOp::ALL {
            let labels = [("op", op.name())];
            encode_histogram(metrics.fuse_ops.of(op), family.encode_family(&labels)?)?;
        }
        if let Some(values) = (self.sampled)() {
            for (d, v) in SAMPLED.iter().zip(values) {
                encode_number(d, v, &mut encoder)?;
            }
        }
        Ok(())
    }
}

/// The registry of one process's metrics, with `labels` on every sample (`source`, and
/// `mountpoint` for a mount or `command` for `cp` and `warm`).
pub fn registry(source: Source, sampled: Sampler, labels: &[(&str, &str)]) -> Registry {
    let labels: Vec<(Cow<'static, str>, Cow<'static, str>)> = labels
        .iter()
        .map(|(k, v)| (Cow::Owned(k.to_string()), Cow::Owned(v.to_string())))
        .collect();
    let mut registry = Registry::with_labels(labels.into_iter());
    registry.register_collector(Box::new(Collected { source, sampled }));
    registry
}

/// The text a scrape returns.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

/// For `cp` and `warm`: serves `metrics` on `addr`, if given, with `source` and `command`
/// labels (no sampled gauges: there is no mount).
pub fn start_for_command(
    rt: &tokio::runtime::Runtime,
    addr: Option<SocketAddr>,
    metrics: &Arc<Metrics>,
    source: &str,
    command: &str,
) -> std::io::Result<()> {
    if let Some(addr) = addr {
        let registry = registry(
            Source::One(metrics.clone()),
            Box::new(|| None),
            &[("source", source), ("command", command)],
        );
        let bound = start(rt, addr, registry)?;
        eprintln!("metrics at http://{bound}/metrics");
    }
    Ok(())
}

/// Binds `addr` (an error names it) and serves `/metrics` on `rt` until the runtime ends.
/// Returns the address bound (the port, when 0 was asked for).
pub fn start(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    registry: Registry,
) -> std::io::Result<SocketAddr> {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(addr))
        .map_err(|e| std::io::Error::new(e.kind(), format!("serving metrics on {addr}: {e}")))?;
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
        m.get_first_byte_seconds
            .observe(std::time::Duration::from_millis(21));
        drop(m.time(FuseOp::Lookup));
        let sampled: Sampler = Box::new(|| Some(vec![3, 4096, 0, 10, 1]));
        let text = render(&registry(
            Source::One(m),
            sampled,
            &[("source", "s3://bkt/p"), ("mountpoint", "/mnt/data")],
        ));
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
        assert_eq!(
            text.matches("# TYPE").count(),
            ALL.len() + 1 + SAMPLED.len()
        );
        // A 21 ms first byte lands in the 25.6 ms bucket and every one above it.
        assert!(text.contains(
            "pai_mount_object_get_first_byte_seconds_bucket{source=\"s3://bkt/p\",mountpoint=\"/mnt/data\",le=\"0.0256\"} 1"
        ), "{text}");
        assert!(text.contains("pai_mount_fuse_op_seconds_count{source=\"s3://bkt/p\",mountpoint=\"/mnt/data\",op=\"lookup\"} 1"), "{text}");
        assert!(text.contains(
            "pai_mount_write_queue_files{source=\"s3://bkt/p\",mountpoint=\"/mnt/data\"} 3"
        ));
    }
}

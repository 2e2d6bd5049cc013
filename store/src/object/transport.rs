//! The HTTP transport: every request this process sends to a store passes through
//! [`Transport`], whether `object_store` sends it (reads, uploads, HEAD, copy) or our own
//! lister does. It owns three things no single request can do for itself.
//!
//! **Time bounds.** A request that gets no answer is abandoned, not waited on:
//! - *connect* ([`Deadlines::connect`]): the TCP and TLS handshake;
//! - *first byte* ([`Deadlines::first_byte`]): from sending the request to the response
//!   headers. A request with a body gets one more second per MiB it sends
//!   ([`UPLOAD_FLOOR_BYTES_PER_SEC`]), and a CompleteMultipartUpload or server-side copy, which
//!   real stores answer only when the work is done, gets [`SLOW_OPERATION_FIRST_BYTE`];
//! - *idle body* ([`Deadlines::idle`]): the longest the body may stay silent while we wait for
//!   it. Time in which nobody polls the body does not count, so a slow consumer is not a
//!   stalled server.
//!
//! A timed-out request is an error of kind `Timeout` to `object_store`, which retries it on
//! a new connection; a body cut by the idle bound is resumed at the byte where it stopped
//! (`object_store`'s get stream and [`super::ObjectSource::get_range_chunks`] both resume).
//!
//! **Throttling.** A 503 or 429 answer, or an OSS `x-oss-qos-delay-time` header, means the
//! store wants fewer requests. The answer is handed back to the caller's retry loop after
//! waiting what the store asked for (`Retry-After`, `x-oss-qos-delay-time`, at most
//! [`MAX_HONOURED_DELAY`]), and the endpoint's [`AdaptiveLimit`] shrinks.
//!
//! **An adaptive concurrency limit per endpoint** ([`AdaptiveLimit`]), shared by every client of
//! the process that talks to the same host (the mount's reads and uploads, `cp`, the loader, the
//! lister): AIMD with a slow start, like TCP's congestion window, counted in requests.
//! - A request holds a slot from sending until its body ends, fails or is dropped, so a slow
//!   body counts as in flight (as it does for the server).
//! - A throttled answer divides the limit by [`DECREASE`], once per window: only a request sent
//!   after the last decrease can cause the next, so one burst of 503s is one decrease.
//! - Each success adds 1 below the slow-start threshold and `1/limit` above it, so the limit
//!   climbs back by about one request per round trip once it has found the server's ceiling.
//! - The limit never falls below 1, and never passes the ceiling the caller configures.
//!
//! Why it cannot deadlock: a slot is released when its body ends or fails, and no request of
//! this crate waits for another request while holding an unfinished body, so the holders of
//! all slots always make progress or time out.

use std::collections::HashMap;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use object_store::aws::{AwsAuthorizer, AwsCredentialProvider};
use object_store::client::{
    HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpResponseBody, HttpService,
};
use tokio::sync::Notify;

use super::checksum::FullChecksum;

use crate::metrics::Metrics;

/// TCP and TLS handshake bound. A store on the same continent answers in well under a second;
/// five seconds survive a lost SYN (the first retransmission is at 1 s, the second at 3 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Request-to-headers bound. Object stores answer a GET or HEAD in tens of milliseconds, and
/// in a few hundred under load; ten seconds of silence is a stall, not load.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence inside a body. A healthy transfer delivers a TCP segment every few
/// milliseconds; ten seconds without one is a stalled connection.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request that sends a body gets one more second of first-byte time per this many bytes:
/// the upload itself happens before the answer, and 1 MiB/s is a floor no working link is
/// below.
pub const UPLOAD_FLOOR_BYTES_PER_SEC: u64 = 1 << 20;
/// First-byte bound of CompleteMultipartUpload and CopyObject: the store answers when it has
/// assembled or copied the object, which takes seconds for large ones.
pub const SLOW_OPERATION_FIRST_BYTE: Duration = Duration::from_secs(120);
/// The longest wait a store's `Retry-After` or `x-oss-qos-delay-time` is honoured for;
/// longer asks are cut to this, so a misconfigured proxy cannot park a read for minutes.
pub const MAX_HONOURED_DELAY: Duration = Duration::from_secs(5);
/// Default ceiling of the per-endpoint limit: more requests than any one process of ours
/// keeps in flight, so unthrottled it never binds.
pub const DEFAULT_MAX_CONCURRENCY: usize = 1024;
/// Where the limit starts: above what a single reader uses (64 GETs in flight for small
/// samples), and reached again quickly by slow start when more is needed.
pub const INITIAL_CONCURRENCY: f64 = 64.0;
/// Attempts to connect before a request fails for good (100, 200, 400 ms apart). A refused
/// connection is an endpoint that is wrong or down, which retrying for long does not fix.
pub const CONNECT_ATTEMPTS: u32 = 4;
/// The multiplicative decrease on throttling. 0.7 rather than TCP's 0.5: the signal is exact
/// (the store said so), and a deep cut would leave the store idle for many round trips.
pub const DECREASE: f64 = 0.7;

/// The time bounds of every request. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            connect: DEFAULT_CONNECT_TIMEOUT,
            first_byte: DEFAULT_FIRST_BYTE_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// An AIMD concurrency limit for one endpoint. See the module docs.
#[derive(Debug)]
pub struct AdaptiveLimit {
    state: Mutex<LimitState>,
    freed: Notify,
    ceiling: usize,
}

#[derive(Debug)]
struct LimitState {
    limit: f64,
    slow_start_until: f64,
    in_flight: usize,
    /// Bumped at each decrease; a slot remembers the epoch it was taken in.
    epoch: u64,
    throttled: u64,
}

/// A request's slot in an [`AdaptiveLimit`]; released on drop.
#[derive(Debug)]
pub struct Slot {
    limit: Arc<AdaptiveLimit>,
    epoch: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limit.state.lock().unwrap().in_flight -= 1;
        self.limit.freed.notify_one();
    }
}

impl AdaptiveLimit {
    pub fn new(ceiling: usize) -> Arc<Self> {
        let ceiling = ceiling.max(1);
        Arc::new(Self {
            state: Mutex::new(LimitState {
                limit: INITIAL_CONCURRENCY.min(ceiling as f64),
                slow_start_until: ceiling as f64,
                in_flight: 0,
                epoch: 0,
                throttled: 0,
            }),
            freed: Notify::new(),
            ceiling,
        })
    }

    /// The limit shared by every client of this process that talks to `authority`
    /// (`host:port`). The first caller's ceiling is the one kept.
    pub fn for_endpoint(authority: &str, ceiling: usize) -> Arc<Self> {
        static LIMITS: OnceLock<Mutex<HashMap<String, Arc<AdaptiveLimit>>>> = OnceLock::new();
        LIMITS
            .get_or_init(Default::default)
            .lock()
            .unwrap()
            .entry(authority.to_string())
            .or_insert_with(|| Self::new(ceiling))
            .clone()
    }

    /// Waits for a slot.
    pub async fn acquire(self: &Arc<Self>) -> Slot {
        loop {
            let freed = self.freed.notified();
            {
                let mut s = self.state.lock().unwrap();
                if (s.in_flight as f64) < s.limit.floor().max(1.0) {
                    s.in_flight += 1;
                    return Slot {
                        limit: self.clone(),
                        epoch: s.epoch,
                    };
                }
            }
            freed.await;
        }
    }

    /// A request of `slot` succeeded: grow the limit.
    fn on_success(&self, slot: &Slot) {
        let mut s = self.state.lock().unwrap();
        // Only grow a limit that is in use: an idle process must not build up a limit it has
        // never tested against the store.
        if (s.in_flight as f64) + 1.0 < s.limit * 0.5 {
            return;
        }
        let _ = slot;
        let step = if s.limit < s.slow_start_until {
            1.0
        } else {
            1.0 / s.limit
        };
        s.limit = (s.limit + step).min(self.ceiling as f64);
        drop(s);
        self.freed.notify_one();
    }

    /// A request of `slot` was throttled: shrink the limit, once per window.
    fn on_throttle(&self, slot: &Slot) {
        let mut s = self.state.lock().unwrap();
        s.throttled += 1;
        if slot.epoch == s.epoch {
            s.limit = (s.limit * DECREASE).max(1.0);
            s.slow_start_until = s.limit;
            s.epoch += 1;
        }
    }

    /// The current limit (rounded down) and how many requests hold a slot.
    pub fn current(&self) -> (usize, usize) {
        let s = self.state.lock().unwrap();
        (s.limit.floor().max(1.0) as usize, s.in_flight)
    }
}

/// The `object_store` HTTP service: reqwest with deadlines, throttling and the adaptive
/// limit. The lister sends through it too.
#[derive(Debug, Clone)]
pub struct Transport {
    client: reqwest::Client,
    deadlines: Deadlines,
    limit: Arc<AdaptiveLimit>,
    metrics: Arc<Metrics>,
    /// S3: GETs ask for the object's checksums (`x-amz-checksum-mode`), signed again with
    /// these credentials since the header must be signed.
    checksum_mode: Option<(AwsCredentialProvider, String)>,
}

impl Transport {
    pub fn new(
        client: reqwest::Client,
        deadlines: Deadlines,
        limit: Arc<AdaptiveLimit>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            deadlines,
            limit,
            metrics,
            checksum_mode: None,
        }
    }

    /// Makes S3 GETs ask for full-object checksums ([`super::checksum`]), re-signing them with
    /// `credentials` for `region`.
    pub fn with_checksum_mode(
        mut self,
        credentials: AwsCredentialProvider,
        region: String,
    ) -> Self {
        self.checksum_mode = Some((credentials, region));
        self
    }

    /// Adds `x-amz-checksum-mode: ENABLED` to a GET or HEAD and signs it again.
    async fn ask_for_checksums(&self, req: &mut HttpRequest) -> Result<(), HttpError> {
        let Some((credentials, region)) = &self.checksum_mode else {
            return Ok(());
        };
        if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
            return Ok(());
        }
        let credential = credentials
            .get_credential()
            .await
            .map_err(|e| HttpError::new(HttpErrorKind::Unknown, e))?;
        let h = req.headers_mut();
        for name in [
            "authorization",
            "x-amz-date",
            "x-amz-content-sha256",
            "x-amz-security-token",
        ] {
            h.remove(name);
        }
        h.insert(
            super::checksum::S3_CHECKSUM_MODE,
            http::HeaderValue::from_static("ENABLED"),
        );
        AwsAuthorizer::new(&credential, "s3", region)
            .try_authorize(req, None)
            .map_err(|e| HttpError::new(HttpErrorKind::Unknown, e))
    }

    pub fn limit(&self) -> &Arc<AdaptiveLimit> {
        &self.limit
    }

    fn first_byte_bound(&self, req: &HttpRequest) -> Duration {
        let query = req.uri().query().unwrap_or("");
        let completes = req.method() == http::Method::POST && query.contains("uploadId=");
        let copies =
            req.headers().contains_key("x-amz-copy-source") && !query.contains("partNumber=");
        if completes || copies {
            return SLOW_OPERATION_FIRST_BYTE.max(self.deadlines.first_byte);
        }
        let sent = http_body::Body::size_hint(req.body()).lower();
        self.deadlines.first_byte + Duration::from_secs(sent / UPLOAD_FLOOR_BYTES_PER_SEC)
    }

    /// Sends `req` and returns the answer; see the module docs for what happens on the way.
    ///
    /// A refused or failed connection is tried [`CONNECT_ATTEMPTS`] times here, quickly, and
    /// then reported as an error the callers' retry loops do not retry: a wrong or dead
    /// endpoint fails in about a second instead of after every backoff of a throttling retry.
    pub async fn send(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=CONNECT_ATTEMPTS {
            match self.send_once(req.clone()).await {
                Err(e) if e.kind() == HttpErrorKind::Connect => {
                    if attempt == CONNECT_ATTEMPTS {
                        return Err(HttpError::new(
                            HttpErrorKind::Unknown,
                            Failure(format!(
                                "cannot connect after {CONNECT_ATTEMPTS} attempts: {e}"
                            )),
                        ));
                    }
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                r => return r,
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn send_once(&self, mut req: HttpRequest) -> Result<HttpResponse, HttpError> {
        self.ask_for_checksums(&mut req).await?;
        // What an upload sent, to compare with the CRC an OSS answer states.
        // (`content_length`, not `is_empty`: the latter is inverted for multi-chunk payloads
        // in object_store 0.14.)
        let sent = (req.method() == http::Method::PUT && req.body().content_length() > 0)
            .then(|| req.body().clone());
        let slot = self.limit.acquire().await;
        let bound = self.first_byte_bound(&req);
        let what = format!("{} {}", req.method(), req.uri().path());
        let answer = match tokio::time::timeout(bound, HttpService::call(&self.client, req)).await {
            Ok(r) => r?,
            Err(_) => {
                Metrics::add(&self.metrics.request_timeouts, 1);
                tracing::debug!(request = %what, "no answer within {bound:?}; retrying on a new connection");
                return Err(HttpError::new(
                    HttpErrorKind::Timeout,
                    Failure(format!("no answer within {} s", bound.as_secs_f64())),
                ));
            }
        };
        let status = answer.status().as_u16();
        let asked = requested_delay(answer.headers());
        if status == 503 || status == 429 || asked.is_some() {
            Metrics::add(&self.metrics.requests_throttled, 1);
            self.limit.on_throttle(&slot);
            if status == 503 || status == 429 {
                drop(slot);
                if let Some(d) = asked {
                    tokio::time::sleep(d.min(MAX_HONOURED_DELAY)).await;
                }
                return Ok(answer);
            }
        } else if answer.status().is_success() {
            self.limit.on_success(&slot);
        }
        let (mut parts, body) = answer.into_parts();
        if let Some(sent) = sent {
            check_upload(&parts.headers, sent, &self.metrics, &what).await?;
        } else if let Some(sum) = FullChecksum::from_headers(&parts.headers) {
            // Handed on to the reader in `GetResult::extensions`.
            parts.extensions.insert(sum);
        }
        let body = TimedBody {
            inner: body,
            idle: self.deadlines.idle,
            timer: None,
            slot: Some(slot),
            metrics: self.metrics.clone(),
        };
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}

#[async_trait::async_trait]
impl HttpService for Transport {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        self.send(req).await
    }
}

/// Compares the CRC an OSS answer to an upload states with the bytes sent; a mismatch is an
/// error the retry loops retry (the bytes were damaged on the way).
async fn check_upload(
    headers: &http::HeaderMap,
    mut sent: object_store::client::HttpRequestBody,
    metrics: &Metrics,
    what: &str,
) -> Result<(), HttpError> {
    let Some(FullChecksum::Crc64Xz(stated)) = FullChecksum::from_headers(headers) else {
        return Ok(());
    };
    let mut hasher = FullChecksum::Crc64Xz(stated).hasher();
    while let Some(frame) = futures::future::poll_fn(|cx| Pin::new(&mut sent).poll_frame(cx)).await
    {
        if let Ok(data) = frame
            .map_err(|e| HttpError::new(HttpErrorKind::Unknown, e))?
            .into_data()
        {
            hasher.update(&data);
        }
    }
    if let Err((stated, computed)) = hasher.verify() {
        Metrics::add(&metrics.checksum_mismatches, 1);
        tracing::warn!(request = %what, "the store stored other bytes than were sent ({stated}, sent {computed}); retrying");
        return Err(HttpError::new(
            HttpErrorKind::Request,
            Failure(format!(
                "upload checksum mismatch: the store has {stated}, we sent {computed}"
            )),
        ));
    }
    Ok(())
}

/// What a throttled answer asks us to wait: `Retry-After` in seconds, or OSS's
/// `x-oss-qos-delay-time` in milliseconds.
fn requested_delay(headers: &http::HeaderMap) -> Option<Duration> {
    let num = |name: &str| -> Option<f64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
    if let Some(ms) = num("x-oss-qos-delay-time") {
        return Some(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
    }
    num("retry-after").map(|s| Duration::from_secs_f64(s.max(0.0)))
}

#[derive(Debug)]
struct Failure(String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

/// A response body with an idle bound, holding its request's slot until it ends.
struct TimedBody {
    inner: HttpResponseBody,
    idle: Duration,
    /// Armed when the inner body first says "not yet" after data, disarmed by data.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    slot: Option<Slot>,
    metrics: Arc<Metrics>,
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                this.timer = None;
                if !matches!(r, Some(Ok(_))) {
                    // Ended or failed: the slot is free for the retry.
                    this.slot = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.timer = None;
                        this.slot = None;
                        Metrics::add(&this.metrics.request_timeouts, 1);
                        Poll::Ready(Some(Err(HttpError::new(
                            HttpErrorKind::Timeout,
                            Failure(format!("the body stalled for {} s", idle.as_secs_f64())),
                        ))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot_epoch(l: &Arc<AdaptiveLimit>) -> Slot {
        let mut s = l.state.lock().unwrap();
        s.in_flight += 1;
        Slot {
            limit: l.clone(),
            epoch: s.epoch,
        }
    }

    #[test]
    fn one_burst_of_throttles_is_one_decrease() {
        let l = AdaptiveLimit::new(1024);
        let slots: Vec<Slot> = (0..40).map(|_| slot_epoch(&l)).collect();
        for s in &slots {
            l.on_throttle(s);
        }
        assert_eq!(l.current().0, (INITIAL_CONCURRENCY * DECREASE) as usize);
        // A request sent after the decrease may cause the next one.
        let late = slot_epoch(&l);
        l.on_throttle(&late);
        assert_eq!(
            l.current().0,
            (INITIAL_CONCURRENCY * DECREASE * DECREASE) as usize
        );
    }

    #[test]
    fn the_limit_grows_fast_below_the_threshold_and_slowly_above_and_stays_in_bounds() {
        let l = AdaptiveLimit::new(100);
        let busy: Vec<Slot> = (0..64).map(|_| slot_epoch(&l)).collect();
        for s in &busy {
            l.on_success(s);
        }
        assert_eq!(l.current().0, 100, "slow start, capped at the ceiling");
        let s = slot_epoch(&l);
        l.on_throttle(&s);
        let after = l.current().0;
        assert_eq!(after, 70);
        for s in busy.iter().take(10) {
            l.on_success(s);
        }
        assert_eq!(l.current().0, after, "congestion avoidance adds 1/limit");
        for _ in 0..20 {
            let s = slot_epoch(&l);
            l.on_throttle(&s);
        }
        assert_eq!(l.current().0, 1, "never below one");
    }

    #[test]
    fn an_idle_limit_does_not_grow() {
        let l = AdaptiveLimit::new(1024);
        let s = slot_epoch(&l);
        for _ in 0..100 {
            l.on_success(&s);
        }
        assert_eq!(l.current().0, INITIAL_CONCURRENCY as usize);
    }

    #[test]
    fn throttling_headers_are_read_in_their_units() {
        let mut h = http::HeaderMap::new();
        assert_eq!(requested_delay(&h), None);
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(requested_delay(&h), Some(Duration::from_secs(2)));
        h.insert("x-oss-qos-delay-time", "250".parse().unwrap());
        assert_eq!(requested_delay(&h), Some(Duration::from_millis(250)));
    }

    #[tokio::test]
    async fn a_full_limit_makes_the_next_request_wait_for_a_slot() {
        let l = AdaptiveLimit::new(1);
        let first = l.acquire().await;
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.acquire().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(first);
        let _second = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}

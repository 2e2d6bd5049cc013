//! Stalled connections and throttling against the real S3-protocol test server on loopback:
//! every outcome is bounded in time, and reads are byte-exact or errors.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pai_store::metrics::Metrics;
use pai_store::object::credentials::{CredentialFlags, EmptyEnv};
use pai_store::object::{Deadlines, ObjectSource, Source, StoreOptions};
use pai_test_s3::{ServerConfig, TestServer, DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY};

const SECOND: Duration = Duration::from_secs(1);

async fn connect(server: &TestServer, deadlines: Deadlines) -> (ObjectSource, Arc<Metrics>) {
    let options = StoreOptions {
        credentials: CredentialFlags {
            access_key_id: Some(DEFAULT_ACCESS_KEY.into()),
            secret_access_key: Some(DEFAULT_SECRET_KEY.into()),
            session_token: None,
        },
        path_style: true,
        endpoint: Some(server.endpoint()),
        deadlines,
        ..Default::default()
    };
    let metrics = Arc::new(Metrics::default());
    let s = ObjectSource::connect(
        Source::parse("s3://bkt").unwrap(),
        &options,
        &EmptyEnv,
        metrics.clone(),
    )
    .await
    .unwrap();
    (s, metrics)
}

fn short() -> Deadlines {
    Deadlines {
        connect: SECOND,
        first_byte: SECOND,
        idle: SECOND,
    }
}

async fn server_with(data: &[u8]) -> (TestServer, String) {
    let server = TestServer::start(ServerConfig::default()).await.unwrap();
    server.backend().create_bucket("bkt");
    let etag = format!("\"{}\"", server.backend().put("bkt", "obj", data.to_vec()));
    (server, etag)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 253) as u8).collect()
}

#[tokio::test]
async fn a_request_that_is_never_answered_is_retried_within_the_first_byte_bound() {
    let data = pattern(200_000);
    let (server, etag) = server_with(&data).await;
    let (s, metrics) = connect(&server, short()).await;
    server.backend().faults.stall_next(1);
    let t = Instant::now();
    let got = s
        .get_range("obj", 0..200_000, Some(&etag), 200_000)
        .await
        .unwrap();
    assert_eq!(&got[..], &data[..]);
    let took = t.elapsed();
    assert!(took >= SECOND && took < 4 * SECOND, "{took:?}");
    assert_eq!(metrics.request_timeouts.load(Relaxed), 1);
}

#[tokio::test]
async fn a_body_that_stalls_is_resumed_on_a_new_connection_byte_exact() {
    let data = pattern(3_000_000);
    let (server, etag) = server_with(&data).await;
    let (s, metrics) = connect(&server, short()).await;
    server.backend().faults.stall_next_gets(1, 1_234_567);
    let t = Instant::now();
    let got = s
        .get_range("obj", 0..3_000_000, Some(&etag), 3_000_000)
        .await
        .unwrap();
    assert!(got == data, "the resumed read is byte-exact");
    assert!(t.elapsed() < 4 * SECOND, "{:?}", t.elapsed());
    assert_eq!(metrics.request_timeouts.load(Relaxed), 1);
    // The resumed request asked only for the rest.
    assert!(server.backend().counters.bytes_out.load(Relaxed) < 3_000_000 + 2_000_000);
}

#[tokio::test]
async fn a_slow_consumer_is_not_a_stalled_body() {
    let data = pattern(4_000_000);
    let (server, etag) = server_with(&data).await;
    let (s, metrics) = connect(&server, short()).await;
    let mut got = Vec::new();
    s.get_range_chunks("obj", 0..4_000_000, Some(&etag), 4_000_000, |_, chunk| {
        let first = got.is_empty();
        got.extend_from_slice(&chunk);
        // Longer than the idle bound, without polling the body.
        async move {
            if first {
                tokio::time::sleep(Duration::from_millis(1_500)).await;
            }
            Ok(())
        }
    })
    .await
    .unwrap();
    assert!(got == data);
    assert_eq!(metrics.request_timeouts.load(Relaxed), 0);
}

#[tokio::test]
async fn a_server_that_never_answers_fails_reads_in_bounded_time() {
    let (server, etag) = server_with(&pattern(1000)).await;
    let (s, _) = connect(&server, short()).await;
    server.backend().faults.stall_everything(true);
    let t = Instant::now();
    let e = s
        .get_range("obj", 0..1000, Some(&etag), 1000)
        .await
        .unwrap_err();
    let took = t.elapsed();
    assert!(e.to_string().contains("no answer within"), "{e}");
    // Every attempt waits one first-byte bound, plus backoff between them.
    assert!(took < Duration::from_secs(90), "{took:?}");
    // The lister's retries are bounded the same way; the CLI's pre-mount check (30 s) is
    // tested end to end in tests/mount.rs.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_throttles_above_k_requests_is_read_without_failures() {
    let server = TestServer::start(ServerConfig {
        latency: Duration::from_millis(5),
        ..Default::default()
    })
    .await
    .unwrap();
    server.backend().create_bucket("bkt");
    let mut etags = Vec::new();
    for i in 0..400 {
        let data = vec![i as u8; 10_000];
        etags.push(format!(
            "\"{}\"",
            server.backend().put("bkt", &format!("o{i}"), data)
        ));
    }
    server.backend().faults.throttle_above(8);
    let (s, metrics) = connect(&server, Deadlines::default()).await;
    let reads = futures::future::join_all(etags.iter().enumerate().map(|(i, etag)| {
        let s = s.clone();
        async move {
            let got = s
                .get_range(&format!("o{i}"), 0..10_000, Some(etag), 10_000)
                .await?;
            assert!(got.iter().all(|b| *b == i as u8));
            Ok::<_, pai_store::object::ReadError>(())
        }
    }))
    .await;
    let failed = reads.iter().filter(|r| r.is_err()).count();
    assert_eq!(failed, 0, "{:?}", reads.iter().find(|r| r.is_err()));
    let throttled = metrics.requests_throttled.load(Relaxed);
    assert!(throttled > 0, "the server throttled");
    assert_eq!(
        throttled,
        server.backend().faults.throttled.load(Relaxed),
        "every throttled answer was seen and retried"
    );
}

#[tokio::test]
async fn whole_object_reads_are_checked_against_the_stores_checksum_in_both_styles() {
    use pai_test_s3::ChecksumStyle;
    let data = pattern(2_000_000);
    let (server, etag) = server_with(&data).await;
    for style in [ChecksumStyle::S3, ChecksumStyle::Oss] {
        *server.backend().checksum_style.lock().unwrap() = style;
        let (s, metrics) = connect(&server, Deadlines::default()).await;
        // One damaged body: caught, fetched again, the right bytes delivered.
        server.backend().faults.corrupt_next_gets(1);
        let got = s
            .get_range("obj", 0..2_000_000, Some(&etag), 2_000_000)
            .await
            .unwrap();
        assert!(got == data, "{style:?}");
        assert_eq!(metrics.checksum_mismatches.load(Relaxed), 1, "{style:?}");
        // Damaged every time: an error naming the key, never the bytes.
        server.backend().faults.corrupt_next_gets(100);
        let e = s
            .get_range("obj", 0..2_000_000, Some(&etag), 2_000_000)
            .await
            .unwrap_err();
        assert!(
            matches!(e, pai_store::object::ReadError::Corrupt { .. }),
            "{style:?}: {e}"
        );
        assert!(
            e.to_string().contains("obj") && e.to_string().contains("checksum"),
            "{e}"
        );
        server.backend().faults.corrupt_next_gets(0);
    }
    // A ranged read is not covered by a full-object checksum (documented): the server's
    // damage reaches it.
    *server.backend().checksum_style.lock().unwrap() = ChecksumStyle::S3;
    let (s, _) = connect(&server, Deadlines::default()).await;
    server.backend().faults.corrupt_next_gets(1);
    let got = s
        .get_range("obj", 0..1_000_000, Some(&etag), 2_000_000)
        .await
        .unwrap();
    assert!(got != data[..1_000_000]);
}

#[tokio::test]
async fn uploads_damaged_on_the_way_are_refused_or_caught_and_sent_again() {
    use pai_test_s3::ChecksumStyle;
    let (server, _) = server_with(b"x").await;
    for style in [ChecksumStyle::S3, ChecksumStyle::Oss] {
        *server.backend().checksum_style.lock().unwrap() = style;
        let (s, metrics) = connect(&server, Deadlines::default()).await;
        let data = pattern(300_000);
        // S3 refuses the damaged body (BadDigest): the PUT fails and says why; OSS stores it
        // and states its CRC, which the transport compares, then sends the body again.
        server.backend().faults.corrupt_next_puts(1);
        let r = s.put(&format!("up-{style:?}"), data.clone().into()).await;
        match style {
            ChecksumStyle::S3 => {
                let e = r.unwrap_err().to_string();
                assert!(e.contains("BadDigest") || e.contains("CRC-64"), "{e}");
                s.put(&format!("up-{style:?}"), data.clone().into())
                    .await
                    .unwrap();
            }
            _ => {
                r.unwrap();
                assert_eq!(metrics.checksum_mismatches.load(Relaxed), 1);
            }
        }
        let stored = server
            .backend()
            .get("bkt", &format!("up-{style:?}"))
            .unwrap();
        assert!(
            stored.data == data,
            "{style:?}: the stored bytes are the ones sent"
        );
    }
}

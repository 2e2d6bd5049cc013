//! The object seam against the real S3-protocol test server on loopback (SigV4 over HTTP).

use std::sync::Arc;

use pai_store::metrics::Metrics;
use pai_store::object::credentials::{CredentialFlags, EmptyEnv};
use pai_store::object::{ObjectSource, ReadError, Source, SourceError, StoreOptions};
use pai_test_s3::{ServerConfig, TestServer, DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY};

fn creds() -> CredentialFlags {
    CredentialFlags {
        access_key_id: Some(DEFAULT_ACCESS_KEY.into()),
        secret_access_key: Some(DEFAULT_SECRET_KEY.into()),
        session_token: None,
    }
}

async fn connect(server: &TestServer, url: &str, path_style: bool) -> ObjectSource {
    let mut options = StoreOptions {
        credentials: creds(),
        path_style,
        ..Default::default()
    };
    if path_style {
        options.endpoint = Some(server.endpoint());
    } else {
        options.endpoint = Some(format!("http://s3.test:{}", server.addr().port()));
        let bucket = Source::parse(url).unwrap().bucket;
        options.resolve = vec![(format!("{bucket}.s3.test"), server.addr())];
    }
    ObjectSource::connect(
        Source::parse(url).unwrap(),
        &options,
        &EmptyEnv,
        Arc::new(Metrics::default()),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn ranged_reads_return_exact_bytes_path_and_virtual_hosted() {
    let server = TestServer::start(ServerConfig::default()).await.unwrap();
    server.backend().create_bucket("bkt");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let etag = format!(
        "\"{}\"",
        server.backend().put("bkt", "p/x/file.bin", data.clone())
    );
    for path_style in [true, false] {
        let s = connect(&server, "s3://bkt/p", path_style).await;
        s.probe().await.unwrap();
        let got = s
            .get_range("x/file.bin", 10..5000, Some(&etag), 100_000)
            .await
            .unwrap();
        assert_eq!(&got[..], &data[10..5000]);
        let got = s
            .get_range("x/file.bin", 99_990..100_000, Some(&etag), 100_000)
            .await
            .unwrap();
        assert_eq!(&got[..], &data[99_990..]);
    }
}

#[tokio::test]
async fn changed_and_deleted_objects_are_errors_not_bytes() {
    let server = TestServer::start(ServerConfig::default()).await.unwrap();
    server.backend().create_bucket("bkt");
    let old = format!("\"{}\"", server.backend().put("bkt", "a", vec![1u8; 1000]));
    server.backend().put("bkt", "a", vec![2u8; 1000]);
    let s = connect(&server, "s3://bkt", true).await;
    let err = s.get_range("a", 0..10, Some(&old), 1000).await.unwrap_err();
    assert!(matches!(err, ReadError::Changed { .. }), "{err}");
    // Same etag pinned but a different size than the manifest says: also a change.
    let new = format!("\"{}\"", server.backend().get("bkt", "a").unwrap().etag);
    let err = s.get_range("a", 0..10, Some(&new), 999).await.unwrap_err();
    assert!(matches!(err, ReadError::Changed { .. }), "{err}");
    server.backend().delete("bkt", "a");
    let err = s.get_range("a", 0..10, Some(&new), 1000).await.unwrap_err();
    assert!(matches!(err, ReadError::Gone { .. }), "{err}");
}

#[tokio::test]
async fn transient_503s_and_cut_bodies_are_retried() {
    let server = TestServer::start(ServerConfig::default()).await.unwrap();
    server.backend().create_bucket("bkt");
    let data = vec![7u8; 300_000];
    let etag = format!("\"{}\"", server.backend().put("bkt", "k", data.clone()));
    let s = connect(&server, "s3://bkt", true).await;
    server.backend().faults.fail_next(2);
    let got = s
        .get_range("k", 0..300_000, Some(&etag), 300_000)
        .await
        .unwrap();
    assert_eq!(got.len(), 300_000);
    server.backend().faults.cut_next_gets(1, 1000);
    let got = s
        .get_range("k", 0..300_000, Some(&etag), 300_000)
        .await
        .unwrap();
    assert_eq!(&got[..], &data[..]);
}

#[tokio::test]
async fn wrong_secret_and_missing_bucket_are_clear_errors() {
    let server = TestServer::start(ServerConfig::default()).await.unwrap();
    server.backend().create_bucket("bkt");
    let mut options = StoreOptions {
        credentials: creds(),
        path_style: true,
        endpoint: Some(server.endpoint()),
        ..Default::default()
    };
    options.credentials.secret_access_key = Some("wrong".into());
    let s = ObjectSource::connect(
        Source::parse("s3://bkt").unwrap(),
        &options,
        &EmptyEnv,
        Arc::new(Metrics::default()),
    )
    .await
    .unwrap();
    let err = s.probe().await.unwrap_err();
    assert!(matches!(err, SourceError::Denied { .. }), "{err}");
    options.credentials = creds();
    let s = ObjectSource::connect(
        Source::parse("s3://nope").unwrap(),
        &options,
        &EmptyEnv,
        Arc::new(Metrics::default()),
    )
    .await
    .unwrap();
    let err = s.probe().await.unwrap_err();
    assert!(matches!(err, SourceError::NoBucket { .. }), "{err}");
    // Nothing listens on this port.
    options.endpoint = Some("http://127.0.0.1:9".into());
    let s = ObjectSource::connect(
        Source::parse("s3://bkt").unwrap(),
        &options,
        &EmptyEnv,
        Arc::new(Metrics::default()),
    )
    .await
    .unwrap();
    let err = s.probe().await.unwrap_err();
    assert!(matches!(err, SourceError::Unreachable { .. }), "{err}");
}

#[tokio::test]
async fn missing_credentials_name_everything_tried() {
    let options = StoreOptions::default();
    let err = ObjectSource::connect(
        Source::parse("s3://bkt").unwrap(),
        &options,
        &EmptyEnv,
        Arc::new(Metrics::default()),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("no credentials for s3://bkt"), "{err}");
    assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
}

#[tokio::test]
async fn writes_copies_deletes_and_markers_against_the_server() {
    let server = TestServer::start(ServerConfig::default()).await.unwrap();
    server.backend().create_bucket("bkt");
    for path_style in [true, false] {
        let s = connect(&server, "s3://bkt/pre", path_style).await;
        let etag = s
            .put_object(
                "a b/x.txt",
                bytes::Bytes::from_static(b"hello"),
                &pai_store::object::UploadMeta::mtime(1_700_000_000_123),
            )
            .await
            .unwrap();
        assert!(etag.is_some());
        let stored = server.backend().get("bkt", "pre/a b/x.txt").unwrap();
        assert_eq!(
            stored.metadata.get("mtime").map(String::as_str),
            Some("1700000000.123")
        );
        s.copy("a b/x.txt", "y.txt").await.unwrap();
        assert_eq!(s.head("y.txt").await.unwrap().unwrap().0, 5);
        s.delete("a b/x.txt").await.unwrap();
        s.delete("a b/x.txt").await.unwrap();
        assert!(s.head("a b/x.txt").await.unwrap().is_none());
        s.marker("empty dir", true).await.unwrap();
        assert!(server.backend().get("bkt", "pre/empty dir/").is_some());
        s.marker("empty dir", false).await.unwrap();
        s.marker("empty dir", false).await.unwrap();
        assert!(server.backend().get("bkt", "pre/empty dir/").is_none());
        let mut mp = s
            .start_multipart("big", &pai_store::object::UploadMeta::mtime(0))
            .await
            .unwrap();
        let parts = [vec![1u8; 5 << 20], vec![2u8; 1000]];
        let sends: Vec<_> = parts
            .iter()
            .map(|p| mp.put_part(p.clone().into()))
            .collect();
        for f in sends {
            f.await.unwrap();
        }
        mp.complete().await.unwrap();
        assert_eq!(
            server.backend().get("bkt", "pre/big").unwrap().data.len(),
            (5 << 20) + 1000
        );
        s.delete("big").await.unwrap();
        s.delete("y.txt").await.unwrap();
    }
}

#[tokio::test]
#[allow(clippy::single_range_in_vec_init)]
async fn patch_uploads_copy_unchanged_ranges_on_the_server_and_send_the_rest() {
    use pai_store::attrs::Attrs;
    use pai_store::object::patch::{plan, Piece, MIN_PART};
    use pai_store::object::UploadMeta;
    use std::sync::atomic::Ordering::Relaxed;
    for path_style in [true, false] {
        let s = TestServer::start(ServerConfig::default()).await.unwrap();
        s.backend().create_bucket("bkt");
        let old: Vec<u8> = (0..12 << 20).map(|i: u32| (i % 251) as u8).collect();
        let etag = s.backend().put("bkt", "p/log", old.clone());
        let src = connect(&s, "s3://bkt/p", path_style).await;
        // An append of 100 KB to a 12 MiB object.
        let tail = vec![7u8; 100_000];
        let new_len = old.len() as u64 + tail.len() as u64;
        let pieces = plan(
            old.len() as u64,
            new_len,
            &[old.len() as u64..new_len],
            16 << 20,
        )
        .unwrap();
        let meta = UploadMeta {
            mtime_ms: Some(1_700_000_000_000),
            attrs: Attrs {
                mode: Some(0o100_600),
                ..Attrs::default()
            },
        };
        let up = src.start_patch("log", &etag, &meta).await.unwrap().unwrap();
        let sent_before = s.backend().counters.bytes_in.load(Relaxed);
        for (i, p) in pieces.iter().enumerate() {
            match p {
                Piece::Copy(r) => up.copy_part(i as u32 + 1, r.clone()).await.unwrap(),
                Piece::Send(r) => {
                    let start = (r.start - old.len() as u64) as usize;
                    let end = (r.end - old.len() as u64) as usize;
                    up.put_part(i as u32 + 1, tail[start..end].to_vec().into())
                        .await
                        .unwrap()
                }
            }
        }
        up.complete(new_len).await.unwrap();
        let got = s.backend().get("bkt", "p/log").unwrap();
        let mut want = old.clone();
        want.extend_from_slice(&tail);
        assert!(
            got.data[..] == want[..],
            "the new version is the old bytes plus the tail"
        );
        assert_eq!(got.metadata["mode"], "33152");
        assert_eq!(
            s.backend().counters.bytes_in.load(Relaxed) - sent_before,
            tail.len() as u64,
            "only the tail was sent"
        );
        assert!(s.backend().counters.bytes_copied.load(Relaxed) >= old.len() as u64);
        // A base that changed meanwhile: the copy is refused (412), nothing becomes visible.
        let up = src.start_patch("log", &etag, &meta).await.unwrap().unwrap();
        let err = up.copy_part(1, 0..MIN_PART).await.unwrap_err();
        assert!(err.to_string().contains("412"), "{err}");
        up.abort().await;
        assert!(s.backend().get("bkt", "p/log").unwrap().data[..] == want[..]);
        // Parts that do not add up to the file are never completed.
        let current = s.backend().get("bkt", "p/log").unwrap().etag;
        let up = src
            .start_patch("log", &current, &meta)
            .await
            .unwrap()
            .unwrap();
        up.copy_part(1, 0..MIN_PART).await.unwrap();
        let err = up.complete(new_len).await.unwrap_err();
        assert!(err.to_string().contains("parts hold"), "{err}");
        assert!(s.backend().get("bkt", "p/log").unwrap().data[..] == want[..]);
    }
}

/// A large flat directory listed in key ranges gives exactly what a page-by-page listing
/// gives, whatever the names look like, with subdirectories between its files.
#[tokio::test]
async fn key_range_listing_matches_a_page_by_page_listing() {
    use pai_store::manifest::{build, BuildOptions, BuildProgress};
    let server = TestServer::start(ServerConfig::default()).await.unwrap();
    server.backend().create_bucket("bkt");
    let mut rng = 7u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..4_500u64 {
        // Numbered names, random names, names that only differ far to the right, and bytes
        // past ASCII.
        let name = match i % 4 {
            0 => format!("img_{i:08}.jpg"),
            1 => format!("{:016x}", next()),
            2 => format!("same-long-prefix-{}-{i:05}", "x".repeat(40)),
            _ => format!("é{:04}", next() % 10_000),
        };
        server
            .backend()
            .put("bkt", &format!("flat/{name}"), vec![1]);
    }
    for d in ["a", "m", "img_00000500.jpg.d", "zz"] {
        for j in 0..3 {
            server
                .backend()
                .put("bkt", &format!("flat/{d}/f{j}"), vec![2]);
        }
    }
    let s = connect(&server, "s3://bkt/flat", true).await;
    let run = |split_ranges: bool, concurrency: usize| {
        let s = s.clone();
        async move {
            let options = BuildOptions {
                split_ranges,
                concurrency,
                ..BuildOptions::default()
            };
            build(&s, &options, &BuildProgress::default())
                .await
                .unwrap()
        }
    };
    let (seq_header, seq) = run(false, 16).await;
    assert!(seq_header.list_requests >= 5, "several pages");
    for concurrency in [2, 16] {
        let (header, ranged) = run(true, concurrency).await;
        let have: std::collections::HashSet<_> = ranged.iter().map(|e| e.key.clone()).collect();
        let missing: Vec<_> = seq
            .iter()
            .filter(|e| !have.contains(&e.key))
            .map(|e| String::from_utf8_lossy(&e.key).to_string())
            .collect();
        assert!(
            missing.is_empty(),
            "{concurrency}: {} missing, first {:?}, last {:?}",
            missing.len(),
            &missing[..missing.len().min(5)],
            missing.last()
        );
        assert_eq!(ranged.len(), seq.len());
        assert!(ranged == seq, "the same entries, in the same order");
        assert_eq!(header.total_bytes, seq_header.total_bytes);
    }
}

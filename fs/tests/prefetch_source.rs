//! The prefetching reader over the object seam, against the real S3-protocol test server.

use std::sync::Arc;

use pai_mount_fs::metrics::Metrics;
use pai_mount_fs::object::credentials::{CredentialFlags, EmptyEnv};
use pai_mount_fs::object::{ObjectSource, Source, StoreOptions};
use pai_mount_fs::prefetch::{PrefetchConfig, Prefetcher};
use pai_mount_fs::reader::{PinnedObject, ReaderFactory};
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
async fn a_read_that_failed_after_retries_is_fetched_again_by_the_next_read() {
    let server = TestServer::start(ServerConfig::default()).await.unwrap();
    server.backend().create_bucket("bkt");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 249) as u8).collect();
    let etag = format!("\"{}\"", server.backend().put("bkt", "k", data.clone()));
    let s = connect(&server, "s3://bkt", true).await;
    let p = Prefetcher::new(s, None, PrefetchConfig::default());
    let r = p.open(PinnedObject {
        key: "k".into(),
        size: data.len() as u64,
        etag: Some(etag.into()),
    });
    // More 503s than the HTTP layer retries: the read fails, with a clear error.
    server.backend().faults.fail_next(50);
    let err = r.read(0, 4096).await.unwrap_err();
    assert!(err.to_string().contains("reading k"), "{err}");
    // The server recovers: the same read now succeeds instead of repeating the failure.
    server.backend().faults.fail_next(0);
    let got = r.read(0, 4096).await.unwrap();
    assert_eq!(&got[..], &data[..4096]);
    let got = r.read(4096, 2_000_000).await.unwrap();
    assert_eq!(&got[..], &data[4096..2_004_096]);
}

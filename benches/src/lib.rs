//! Shared helpers for the benchmarks in `benches/`.

/// Peak resident set size of this process, in bytes (VmHWM).
pub fn peak_rss() -> u64 {
    status_field("VmHWM:")
}

/// Current resident set size, in bytes (VmRSS).
pub fn rss() -> u64 {
    status_field("VmRSS:")
}

fn status_field(name: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// ImageNet-like relative keys: 1000 class directories of `per_class` files.
pub fn imagenet_keys(n: usize) -> Vec<String> {
    let classes = 1000.min(n.max(1));
    (0..n)
        .map(|i| {
            let class = 1_440_764 + (i % classes) * 7;
            format!(
                "train/n{class:08}/n{class:08}_{:05}.JPEG",
                i / classes + 10_000
            )
        })
        .collect()
}

/// A runtime and an S3 test server with `latency` of first-byte latency and a `bench` bucket.
pub fn start_server(
    latency: std::time::Duration,
) -> (tokio::runtime::Runtime, pai_test_s3::TestServer) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = rt
        .block_on(pai_test_s3::TestServer::start(pai_test_s3::ServerConfig {
            latency,
            ..pai_test_s3::ServerConfig::default()
        }))
        .expect("test server");
    server.backend().create_bucket("bench");
    (rt, server)
}

/// Store options that reach `server` path-style with its credentials.
pub fn store_options(server: &pai_test_s3::TestServer) -> pai_mount_fs::object::StoreOptions {
    pai_mount_fs::object::StoreOptions {
        endpoint: Some(server.endpoint()),
        path_style: true,
        credentials: pai_mount_fs::object::credentials::CredentialFlags {
            access_key_id: Some(pai_test_s3::DEFAULT_ACCESS_KEY.into()),
            secret_access_key: Some(pai_test_s3::DEFAULT_SECRET_KEY.into()),
            session_token: None,
        },
        ..Default::default()
    }
}

//! Shared helpers for the benchmarks in `benches/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

/// A mount by the real daemon; unmounted (and its peak RSS read) on `stop`.
pub struct Daemon {
    pub child: Child,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Daemon {
    /// Starts `bin mount <url> <tmpdir> --foreground` against `endpoint` and waits for the mount.
    pub fn start(bin: &Path, endpoint: &str, url: &str, base: &[&str], extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let child = Command::new(bin)
            .args(["mount", url, dir.to_str().unwrap()])
            .args(["--endpoint", endpoint, "--path-style", "--foreground"])
            .args(base)
            .args(extra)
            .env("AWS_ACCESS_KEY_ID", pai_test_s3::DEFAULT_ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", pai_test_s3::DEFAULT_SECRET_KEY)
            .env(
                "PAI_MOUNT_LOG",
                std::env::var("PAI_BENCH_DAEMON_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .spawn()
            .unwrap();
        wait_mounted(&dir);
        Self::from_child(child, dir, tmp)
    }

    pub fn from_child(child: Child, dir: PathBuf, tmp: tempfile::TempDir) -> Self {
        Self {
            child,
            dir,
            _tmp: Some(tmp),
        }
    }

    /// Peak RSS so far.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    }

    /// Stops the daemon (SIGTERM: it unmounts, and finishes pending uploads unless told
    /// otherwise) and returns its peak RSS.
    pub fn stop(mut self) -> u64 {
        let hwm = self.peak_rss();
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let _ = Command::new("umount")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
        hwm
    }
}

/// Drops the page cache (needs root); `false` if it could not.
pub fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Waits until `dir` is a mount point.
pub fn wait_mounted(dir: &Path) {
    let dir = std::fs::canonicalize(dir).unwrap();
    for _ in 0..500 {
        if pai_mount_fs::mountpoint::is_mount_point(&dir) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{} did not mount", dir.display());
}

/// What every daemon benchmark starts from: the first-byte latency (`PAI_BENCH_LATENCY_MS`,
/// default 20), the release binary, and a scratch directory (`PAI_BENCH_SCRATCH`, default
/// /var/tmp) for local baselines and staging.
pub struct Setup {
    pub latency_ms: u64,
    pub bin: PathBuf,
    pub scratch: tempfile::TempDir,
}

pub fn setup() -> Setup {
    let latency_ms = std::env::var("PAI_BENCH_LATENCY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/pai-mount");
    assert!(
        bin.exists(),
        "build the daemon first: cargo build --release -p pai-mount"
    );
    let scratch = tempfile::tempdir_in(
        std::env::var("PAI_BENCH_SCRATCH").unwrap_or_else(|_| "/var/tmp".into()),
    )
    .expect("a scratch directory");
    Setup {
        latency_ms,
        bin,
        scratch,
    }
}

/// Whether row `name` runs: all rows, or those listed in `PAI_BENCH_ONLY` (comma-separated).
pub fn enabled(name: &str) -> bool {
    std::env::var("PAI_BENCH_ONLY").map_or(true, |v| v.split(',').any(|s| s.trim() == name))
}

/// FUSE requests served so far by a daemon started with `--metrics-addr addr`, by operation
/// (read from its Prometheus endpoint).
pub fn fuse_ops(addr: &str) -> std::collections::BTreeMap<String, u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("metrics endpoint");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("pai_mount_fuse_op_seconds_count{")?;
            let op = rest.split("op=\"").nth(1)?.split('"').next()?;
            let n = l.rsplit(' ').next()?.parse::<f64>().ok()?;
            Some((op.to_string(), n as u64))
        })
        .collect()
}

/// What happened between two [`fuse_ops`] readings, divided by `runs`: "open 301, read 2, ...".
pub fn fuse_ops_delta(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    runs: u64,
) -> String {
    let mut out: Vec<String> = after
        .iter()
        .filter_map(|(op, n)| {
            let d = n - before.get(op).copied().unwrap_or(0);
            (d > 0).then(|| format!("{op} {:.0}", d as f64 / runs as f64))
        })
        .collect();
    out.sort();
    out.join(", ")
}

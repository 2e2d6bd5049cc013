//! Helpers shared by the end-to-end tests: a test server, the binary, mounts that clean up.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use pai_test_s3::{
    BackgroundServer, ServerConfig, TestServer, DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_pai-mount");

pub fn server() -> BackgroundServer {
    slow_server(0)
}

/// A test server whose every request waits `latency_ms` first (as a distant store's first
/// byte does), with the bucket `bkt`.
pub fn slow_server(latency_ms: u64) -> BackgroundServer {
    let s = TestServer::start_background(ServerConfig {
        latency: Duration::from_millis(latency_ms),
        ..ServerConfig::default()
    })
    .unwrap();
    s.backend().create_bucket("bkt");
    s
}

pub fn cmd(server: &TestServer, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("AWS_ACCESS_KEY_ID", DEFAULT_ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", DEFAULT_SECRET_KEY)
        .env(
            "XDG_STATE_HOME",
            std::env::temp_dir().join("pai-mount-test-state"),
        )
        .env(
            "XDG_CACHE_HOME",
            std::env::temp_dir().join("pai-mount-test-cache"),
        )
        .env_remove("PAI_MOUNT_LOG");
    if !args.contains(&"--endpoint") && args.iter().any(|a| a.starts_with("s3://")) {
        c.args(["--endpoint", &server.endpoint(), "--path-style"]);
    }
    c
}

pub fn ok(o: Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "command failed: {text}");
    text
}

pub fn fails(o: Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "command succeeded unexpectedly: {err}");
    err
}

/// A mounted source; unmounts on drop.
pub struct Mounted {
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl Mounted {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new(BIN)
            .arg("unmount")
            .arg(self.dir.path())
            .output();
    }
}

pub fn mount(server: &TestServer, url: &str, extra: &[&str]) -> Mounted {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().with_extension("log");
    let mut args = vec![
        "mount",
        url,
        dir.path().to_str().unwrap(),
        "--log-file",
        log.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    // Every mount gets a staging directory of its own unless the test chose one.
    let staging = dir.path().with_extension("staging");
    if !extra
        .iter()
        .any(|a| *a == "--staging-dir" || *a == "--cache-dir" || *a == "--read-only")
    {
        args.extend_from_slice(&["--staging-dir", staging.to_str().unwrap()]);
    }
    ok(cmd(server, &args).output().unwrap());
    Mounted { dir, log }
}

pub fn is_mounted(p: &Path) -> bool {
    pai_mount_fs::mountpoint::is_mount_point(&std::fs::canonicalize(p).unwrap_or(p.into()))
}

pub fn wait_until(f: impl Fn() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out");
}

pub fn daemon_pid(mp: &Path) -> String {
    let out = Command::new("pgrep")
        .args(["-f", &format!("pai-mount mount .* {}", mp.display())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .expect("daemon running")
        .to_string()
}

/// Hex sha256 of `b`.
pub fn sha(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(b))
}

/// Every file under `dir`: its path relative to `dir` and the sha256 of its bytes. Checks that
/// each file's size in `stat` matches the bytes read.
pub fn tree_sha(dir: &Path) -> std::collections::BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(root, &e.path(), out);
            } else {
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .to_string();
                let data = std::fs::read(e.path()).unwrap();
                assert_eq!(
                    std::fs::metadata(e.path()).unwrap().len(),
                    data.len() as u64,
                    "{rel}: stat size and bytes read differ"
                );
                out.insert(rel, sha(&data));
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

//! Workspace benchmark: the mount as a place to work (logs that grow by appends, many small
//! files, a git checkout, a Python environment), each next to the same work on local disk in
//! the same run, and every row both with a first-byte delay in the server and through a
//! delaying TCP proxy (a real round trip on every request).
//!
//! ```sh
//! cargo build --release -p pai-mount
//! cargo bench -p pai-mount-benches --bench workspace     # PAI_BENCH_LATENCY_MS=20 by default
//! ```
//! Rows: `PAI_BENCH_ONLY=append,create,git,venv` (default: all). `PAI_BENCH_PROXY_MS`: one-way
//! delay of the proxy runs (default 15; 0 skips them). `PAI_BENCH_FILES`: files of the create
//! and git rows (default 10,000).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use pai_mount_benches::Daemon;
use pai_test_s3::proxy::{DelayProxy, ProxyConfig};
use pai_test_s3::TestServer;

struct Bench {
    server: TestServer,
    /// The endpoint the daemon talks to: the server, or the proxy in front of it.
    endpoint: String,
    bin: PathBuf,
    scratch: PathBuf,
    label: String,
}

impl Bench {
    fn mount(&self, prefix: &str) -> Daemon {
        self.mount_with(prefix, &[])
    }

    fn mount_with(&self, prefix: &str, extra: &[&str]) -> Daemon {
        let staging = self.scratch.join(format!("staging-{prefix}"));
        Daemon::start(
            &self.bin,
            &self.endpoint,
            &format!("s3://bench/{prefix}"),
            &["--staging-dir", staging.to_str().unwrap()],
            extra,
        )
    }

    fn bytes_in(&self) -> u64 {
        self.server.backend().counters.bytes_in.load(Relaxed)
    }

    fn bytes_out(&self) -> u64 {
        self.server.backend().counters.bytes_out.load(Relaxed)
    }
}

fn run(dir: &Path, program: &str, args: &[&str]) -> f64 {
    let t = Instant::now();
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed().as_secs_f64()
}

/// 100 times: open for append, write 100 KB, close, then 50 ms of other work. Returns the
/// seconds spent in open, write and close, and what `mark` said once the log passed 6 MB.
fn append_loop(path: &Path, mark: &dyn Fn() -> u64) -> (f64, u64) {
    let chunk = vec![b'x'; 100_000];
    let mut spent = 0.0;
    let mut marked = 0;
    for i in 0..100 {
        if i == 60 {
            marked = mark();
        }
        let t = Instant::now();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(&chunk).unwrap();
        drop(f);
        spent += t.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(50));
    }
    (spent, marked)
}

fn create_files(dir: &Path, n: usize) -> f64 {
    std::fs::create_dir_all(dir).unwrap();
    let t = Instant::now();
    for i in 0..n {
        let sub = dir.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&sub).unwrap();
        }
        std::fs::write(sub.join(format!("f{i:05}.txt")), format!("file {i}\n")).unwrap();
    }
    t.elapsed().as_secs_f64()
}

/// A repository of `n` small files in a local directory.
fn make_repo(dir: &Path, n: usize) {
    create_files(&dir.join("src"), n);
    run(dir, "git", &["init", "-q", "-b", "main"]);
    run(dir, "git", &["add", "."]);
    run(
        dir,
        "git",
        &[
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@b",
            "commit",
            "-qm",
            "files",
        ],
    );
}

/// A wheel with `modules` small modules, built by hand.
fn make_wheel(dir: &Path, modules: usize) -> PathBuf {
    let wheel = dir.join("benchpkg-0.1-py3-none-any.whl");
    let script = r#"
import base64, hashlib, sys, zipfile
n = int(sys.argv[2])
files = {f"benchpkg/m{i:03}.py": f"VALUE = {i}\ndef f(x):\n    return x + {i}\n" for i in range(n)}
files["benchpkg/__init__.py"] = "".join(f"from . import m{i:03}\n" for i in range(n))
files["benchpkg-0.1.dist-info/METADATA"] = "Metadata-Version: 2.1\nName: benchpkg\nVersion: 0.1\n"
files["benchpkg-0.1.dist-info/WHEEL"] = "Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
record = []
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for name, text in files.items():
        data = text.encode()
        z.writestr(name, data)
        h = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={h},{len(data)}")
    record.append("benchpkg-0.1.dist-info/RECORD,,")
    z.writestr("benchpkg-0.1.dist-info/RECORD", "\n".join(record) + "\n")
"#;
    run(
        dir,
        "python3",
        &["-c", script, wheel.to_str().unwrap(), &modules.to_string()],
    );
    wheel
}

fn make_venv(dir: &Path, wheel: &Path) -> f64 {
    let t = Instant::now();
    run(dir, "python3", &["-m", "venv", "venv"]);
    run(
        dir,
        "venv/bin/python",
        &[
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--disable-pip-version-check",
            wheel.to_str().unwrap(),
        ],
    );
    t.elapsed().as_secs_f64()
}

fn import(dir: &Path) -> f64 {
    run(
        dir,
        "venv/bin/python",
        &["-c", "import benchpkg; assert benchpkg.m042.f(1) == 43"],
    )
}

/// The median of 5 imports right after one another.
fn warm_import(dir: &Path) -> f64 {
    let mut t: Vec<f64> = (0..5).map(|_| import(dir)).collect();
    t.sort_by(f64::total_cmp);
    t[2]
}

fn rows(b: &Bench, files: usize) {
    let tag = &b.label;
    if pai_mount_benches::enabled("append") {
        let local = b.scratch.join("local.log");
        let (local_s, _) = append_loop(&local, &|| 0);
        std::fs::remove_file(&local).unwrap();
        let m = b.mount("logs");
        let (sent0, out0) = (b.bytes_in(), b.bytes_out());
        let (spent, at_6mb) = append_loop(&m.dir.join("train.log"), &|| b.bytes_in());
        let hwm = m.stop();
        let sent = b.bytes_in() - sent0;
        // The manifest saved at unmount is a few hundred bytes.
        let sent_after = b.bytes_in() - at_6mb;
        let fetched = b.bytes_out() - out0;
        let obj = b.server.backend().get("bench", "logs/train.log").unwrap();
        assert_eq!(obj.data.len(), 10_000_000);
        b.server.backend().delete("bench", "logs/train.log");
        println!(
            "[{tag}] append 100 x 100 KB with 50 ms pauses (10 MB log): {spent:.3} s in open/write/close (local {local_s:.3} s); sent {:.1} MB in all, {:.2} MB for the last 4.0 MB appended ({:.2}x); fetched {:.1} MB; daemon peak RSS {:.0} MiB",
            sent as f64 / 1e6,
            sent_after as f64 / 1e6,
            sent_after as f64 / 4e6,
            fetched as f64 / 1e6,
            hwm as f64 / (1 << 20) as f64
        );
    }
    if pai_mount_benches::enabled("create") {
        let local = b.scratch.join("local-create");
        let local_s = create_files(&local, files);
        let _ = std::fs::remove_dir_all(&local);
        let m = b.mount("create");
        let mount_s = create_files(&m.dir.join("many"), files);
        let t = Instant::now();
        let hwm = m.stop();
        let drained = t.elapsed().as_secs_f64();
        println!(
            "[{tag}] create {files} small files: {mount_s:.2} s ({:.0} files/s; local {:.0} files/s, ratio {:.1}); all in the bucket {drained:.1} s after the last close; daemon peak RSS {:.0} MiB",
            files as f64 / mount_s,
            files as f64 / local_s,
            mount_s / local_s,
            hwm as f64 / (1 << 20) as f64
        );
    }
    if pai_mount_benches::enabled("git") {
        let repo = b.scratch.join("repo");
        if !repo.exists() {
            std::fs::create_dir_all(&repo).unwrap();
            make_repo(&repo, files);
        }
        let local = b.scratch.join("local-clone");
        let _ = std::fs::remove_dir_all(&local);
        run(
            &b.scratch,
            "git",
            &[
                "clone",
                "-q",
                repo.to_str().unwrap(),
                local.to_str().unwrap(),
            ],
        );
        let local_status: Vec<f64> = (0..2)
            .map(|_| run(&local, "git", &["status", "--porcelain"]))
            .collect();
        for cached in [false, true] {
            // With a disk cache, uploaded files go into it: the next mount reads them locally.
            let cache = b.scratch.join("cache-git");
            let _ = std::fs::remove_dir_all(&cache);
            let cache_args = [
                "--cache-dir",
                cache.to_str().unwrap(),
                "--cache-min-free",
                "0",
            ];
            let (prefix, extra, with): (&str, &[&str], &str) = if cached {
                ("git-cached", &cache_args, " with --cache-dir")
            } else {
                ("git", &[], "")
            };
            let m = b.mount_with(prefix, extra);
            let clone_s = run(
                &m.dir,
                "git",
                &["clone", "-q", repo.to_str().unwrap(), "clone"],
            );
            m.stop();
            let m = b.mount_with(prefix, extra);
            pai_mount_benches::drop_caches();
            let out0 = b.bytes_out();
            let clone = m.dir.join("clone");
            let status: Vec<f64> = (0..3)
                .map(|_| run(&clone, "git", &["status", "--porcelain"]))
                .collect();
            let fetched = b.bytes_out() - out0;
            m.stop();
            println!(
                "[{tag}] git checkout of {files} files{with}: clone onto the mount {clone_s:.1} s; git status after a remount {:.2} s (first: git re-hashes the checkout), {:.2} s, {:.2} s (warm; local {:.2} s, ratio {:.1}); fetched {:.1} MB",
                status[0],
                status[1],
                status[2],
                local_status[1],
                status[2] / local_status[1],
                fetched as f64 / 1e6
            );
        }
    }
    if pai_mount_benches::enabled("venv") {
        let wheels = b.scratch.join("wheels");
        std::fs::create_dir_all(&wheels).unwrap();
        let wheel = make_wheel(&wheels, 300);
        let local = b.scratch.join("local-env");
        let _ = std::fs::remove_dir_all(&local);
        std::fs::create_dir_all(&local).unwrap();
        let local_make = make_venv(&local, &wheel);
        pai_mount_benches::drop_caches();
        let local_cold = import(&local);
        let local_warm = warm_import(&local);
        let metrics = "127.0.0.1:19464";
        for cached in [false, true] {
            let cache = b.scratch.join("cache-envs");
            let _ = std::fs::remove_dir_all(&cache);
            let mut extra = vec!["--metrics-addr", metrics];
            let (prefix, with) = if cached {
                extra.extend([
                    "--cache-dir",
                    cache.to_str().unwrap(),
                    "--cache-min-free",
                    "0",
                ]);
                ("envs-cached", " with --cache-dir")
            } else {
                ("envs", "")
            };
            let m = b.mount_with(prefix, &extra);
            let make = make_venv(&m.dir, &wheel);
            m.stop();
            let m = b.mount_with(prefix, &extra);
            pai_mount_benches::drop_caches();
            let out0 = b.bytes_out();
            let cold = import(&m.dir);
            let fetched = b.bytes_out() - out0;
            let before = pai_mount_benches::fuse_ops(metrics);
            let warm = warm_import(&m.dir);
            let ops = pai_mount_benches::fuse_ops_delta(
                &before,
                &pai_mount_benches::fuse_ops(metrics),
                5,
            );
            m.stop();
            println!(
                "[{tag}] venv with a 300-module package{with}: create+install {make:.1} s (local {local_make:.1} s); import cold {cold:.2} s (local {local_cold:.2} s, ratio {:.1}; fetched {:.1} MB), warm {warm:.3} s (local {local_warm:.3} s, ratio {:.1}); FUSE requests per warm import: {ops}",
                cold / local_cold,
                fetched as f64 / 1e6,
                warm / local_warm
            );
        }
    }
}

fn main() {
    let pai_mount_benches::Setup {
        latency_ms,
        bin,
        scratch,
    } = pai_mount_benches::setup();
    let files: usize = std::env::var("PAI_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let proxy_ms: u64 = std::env::var("PAI_BENCH_PROXY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    println!("pai-mount workspace benchmark; 2 cores");
    let (rt, server) = pai_mount_benches::start_server(Duration::from_millis(latency_ms));
    let b = Bench {
        endpoint: server.endpoint(),
        server,
        bin: bin.clone(),
        scratch: scratch.path().to_path_buf(),
        label: format!("{latency_ms} ms first byte"),
    };
    rows(&b, files);
    drop(b);
    if proxy_ms > 0 {
        let (rt2, server) = pai_mount_benches::start_server(Duration::ZERO);
        let proxy = rt2
            .block_on(DelayProxy::start(
                server.addr(),
                ProxyConfig {
                    one_way: Duration::from_millis(proxy_ms),
                    ..ProxyConfig::default()
                },
            ))
            .unwrap();
        let b = Bench {
            endpoint: proxy.endpoint(),
            server,
            bin,
            scratch: scratch.path().to_path_buf(),
            label: format!("{} ms round trip (proxy)", 2 * proxy_ms),
        };
        rows(&b, files);
        drop(rt2);
    }
    drop(rt);
}

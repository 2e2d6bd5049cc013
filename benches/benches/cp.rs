//! `pai-mount cp` against `rclone copy --transfers 32` on the same server in the same run.
//!
//! ```sh
//! cargo build --release -p pai-mount
//! cargo bench -p pai-mount-benches --bench cp     # PAI_BENCH_LATENCY_MS=20, PAI_BENCH_SMALL=10000, PAI_BENCH_LARGE=4
//! ```
//! Data: `PAI_BENCH_SMALL` objects of 1 MiB and `PAI_BENCH_LARGE` objects of 1 GiB. Both tools
//! write to the same local disk (`PAI_BENCH_SCRATCH`, default /var/tmp); each run's peak RSS is
//! its own VmHWM, polled every 20 ms.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use pai_test_s3::{DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `cmd` to completion: (seconds, peak RSS in bytes, success).
// The child is reaped by wait4, which std's `Child` does not know about.
#[allow(clippy::zombie_processes)]
fn run(cmd: &mut Command) -> (f64, u64, bool) {
    let t = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    // ru_maxrss counts the forked bench process before exec; VmHWM is the program's own.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut hwm = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if let Some(kb) = s
                        .lines()
                        .find(|l| l.starts_with("VmHWM:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        hwm = hwm.max(kb * 1024);
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            hwm
        })
    };
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for the child we spawned and reaps it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `status` and `usage` are valid for writes.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let hwm = watcher.join().unwrap();
    let _ = usage;
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if !ok {
        let mut err = String::new();
        use std::io::Read;
        let _ = child.stderr.unwrap().read_to_string(&mut err);
        eprintln!("{err}");
    }
    (t.elapsed().as_secs_f64(), hwm, ok)
}

fn du(dir: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                files += 1;
                bytes += m.len();
            }
        }
    }
    (files, bytes)
}

fn main() {
    let latency_ms = env_num("PAI_BENCH_LATENCY_MS", 20);
    let small = env_num("PAI_BENCH_SMALL", 10_000);
    let large = env_num("PAI_BENCH_LARGE", 4);
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/pai-mount");
    assert!(
        bin.exists(),
        "build the daemon first: cargo build --release -p pai-mount"
    );
    let (_rt, server) =
        pai_mount_benches::start_server(std::time::Duration::from_millis(latency_ms));
    let scratch = tempfile::tempdir_in(
        std::env::var("PAI_BENCH_SCRATCH").unwrap_or_else(|_| "/var/tmp".into()),
    )
    .unwrap();
    println!("pai-mount cp benchmark; first-byte latency {latency_ms} ms; 2 cores; {small} x 1 MiB + {large} x 1 GiB");
    let mib: bytes::Bytes = (0..1usize << 20)
        .map(|i| (i % 253) as u8)
        .collect::<Vec<_>>()
        .into();
    for i in 0..small {
        server.backend().put(
            "bench",
            &format!("cp/small/{:02}/{i:06}.bin", i % 100),
            mib.clone(),
        );
    }
    if large > 0 {
        let gib: bytes::Bytes = (0..1usize << 30)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        for i in 0..large {
            server
                .backend()
                .put("bench", &format!("cp/large/{i}.bin"), gib.clone());
        }
    }
    let total = small * (1 << 20) + large * (1 << 30);
    let objects = small + large;
    let endpoint = server.endpoint();
    let base = |c: &mut Command| {
        c.args(["--endpoint", &endpoint, "--path-style"])
            .env("AWS_ACCESS_KEY_ID", DEFAULT_ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", DEFAULT_SECRET_KEY)
            .env("PAI_MOUNT_LOG", "error");
    };
    let mut build = Command::new(&bin);
    build.args(["manifest", "build", "s3://bench/cp"]);
    base(&mut build);
    assert!(run(&mut build).2, "manifest build");

    let ours = scratch.path().join("pai");
    let mut c = Command::new(&bin);
    c.args(["cp", "s3://bench/cp", ours.to_str().unwrap()]);
    if let Ok(extra) = std::env::var("PAI_BENCH_CP_ARGS") {
        c.args(extra.split_whitespace());
    }
    base(&mut c);
    let (secs, rss, ok) = run(&mut c);
    assert!(ok, "pai-mount cp failed");
    assert_eq!(du(&ours), (objects, total));
    let _ = Command::new("sync").status();
    println!(
        "pai-mount cp (--jobs 32): {secs:.1} s, {:.0} MB/s, {:.0} objects/s; peak RSS {:.0} MiB",
        total as f64 / secs / 1e6,
        objects as f64 / secs,
        rss as f64 / (1u64 << 20) as f64
    );
    std::fs::remove_dir_all(&ours).unwrap();
    let _ = Command::new("sync").status();

    if Command::new("rclone")
        .arg("version")
        .stdout(Stdio::null())
        .status()
        .is_ok()
    {
        let theirs = scratch.path().join("rclone");
        let mut c = Command::new("rclone");
        c.args([
            "copy",
            "pais3:bench/cp",
            theirs.to_str().unwrap(),
            "--transfers",
            "32",
        ])
        .env("RCLONE_CONFIG_PAIS3_TYPE", "s3")
        .env("RCLONE_CONFIG_PAIS3_PROVIDER", "Other")
        .env("RCLONE_CONFIG_PAIS3_ENDPOINT", &endpoint)
        .env("RCLONE_CONFIG_PAIS3_ACCESS_KEY_ID", DEFAULT_ACCESS_KEY)
        .env("RCLONE_CONFIG_PAIS3_SECRET_ACCESS_KEY", DEFAULT_SECRET_KEY)
        .env("RCLONE_CONFIG_PAIS3_FORCE_PATH_STYLE", "true")
        .env("RCLONE_CONFIG_PAIS3_LIST_VERSION", "2")
        .env_remove("AWS_CA_BUNDLE");
        let (rsecs, rrss, rok) = run(&mut c);
        let (files, bytes) = du(&theirs);
        println!(
            "rclone copy --transfers 32: {rsecs:.1} s, {:.0} MB/s, {:.0} objects/s; peak RSS {:.0} MiB; {files} files, {bytes} bytes{}",
            total as f64 / rsecs / 1e6,
            objects as f64 / rsecs,
            rrss as f64 / (1u64 << 20) as f64,
            if rok { "" } else { " (rclone failed)" }
        );
        println!(
            "ratio pai-mount / rclone: speed {:.2}x, peak RSS {:.2}x",
            rsecs / secs,
            rss as f64 / rrss.max(1) as f64
        );
        std::fs::remove_dir_all(&theirs).unwrap();
    } else {
        println!("rclone is not installed (apt install rclone); no peer row");
    }
}

//! What admins set up: fstab lines through the real mount(8) and umount(8).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// mount(8) runs helpers with no PATH (the shell's default then applies), so the binary is
/// linked where an installed one would be for as long as the test runs.
struct Installed(&'static str);

impl Installed {
    fn link() -> Self {
        let at = "/usr/local/sbin/pai-mount";
        match std::fs::symlink_metadata(at) {
            Ok(m) if !m.file_type().is_symlink() => {
                panic!("{at} is an installed pai-mount; the test would shadow it")
            }
            Ok(_) => std::fs::remove_file(at).unwrap(),
            Err(_) => {}
        }
        std::os::unix::fs::symlink(BIN, at).unwrap();
        Self(at)
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// mount(8) or umount(8), with the test server's keys in the environment.
fn mount8(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", pai_test_s3::DEFAULT_ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", pai_test_s3::DEFAULT_SECRET_KEY)
        .env(
            "XDG_STATE_HOME",
            std::env::temp_dir().join("pai-mount-test-state"),
        )
        .output()
        .unwrap();
    ok(out)
}

/// Whether a daemon serving `mp` is still running.
fn daemon_running(mp: &Path) -> bool {
    Command::new("pgrep")
        .args(["-f", &format!("pai-mount mount .* {}", mp.display())])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn fstab_lines_mount_through_mount8_and_go_away_with_umount() {
    let _installed = Installed::link();
    let s = server();
    s.backend().put("bkt", "data/a.txt", b"hello".to_vec());
    let dir = tempfile::tempdir().unwrap();
    let (m1, m2) = (dir.path().join("m1"), dir.path().join("m2"));
    std::fs::create_dir_all(&m1).unwrap();
    std::fs::create_dir_all(&m2).unwrap();
    let cache = dir.path().join("cache");
    let ep = s.endpoint();
    let fstab = dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# pai-mount test table\n\
             s3://bkt/data {m1} fuse.pai-mount noauto,_netdev,nofail,endpoint={ep},path_style,region=us-east-1,cache_dir={cache},x-systemd.automount,x-systemd.idle-timeout=10min 0 0\n\
             s3://bkt/data {m2} fuse.pai-mount ro,_netdev,endpoint={ep},path_style,metadata_ttl=1s 0 0\n",
            m1 = m1.display(),
            m2 = m2.display(),
            cache = cache.display(),
        ),
    )
    .unwrap();
    let fstab = fstab.to_str().unwrap();

    // One line, by its mount point.
    mount8("mount", &["-T", fstab, m1.to_str().unwrap()]);
    assert!(is_mounted(&m1));
    assert!(
        daemon_running(&m1),
        "the daemon runs as `pai-mount mount SOURCE MOUNTPOINT ...`"
    );
    assert_eq!(std::fs::read(m1.join("a.txt")).unwrap(), b"hello");
    std::fs::write(m1.join("b.txt"), b"written").unwrap();
    assert!(cache.is_dir(), "cache_dir= reached the daemon");

    // Every line without noauto.
    mount8("mount", &["-a", "-T", fstab]);
    assert!(is_mounted(&m2));
    assert_eq!(std::fs::read(m2.join("a.txt")).unwrap(), b"hello");
    let err = std::fs::write(m2.join("c.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "ro is read-only");

    // umount(8): the daemons finish (uploads included) and exit.
    for m in [&m1, &m2] {
        mount8("umount", &[m.to_str().unwrap()]);
        assert!(!is_mounted(m));
        wait_until(|| !daemon_running(m));
    }
    assert_eq!(
        s.backend()
            .get("bkt", "data/b.txt")
            .map(|o| o.data.to_vec()),
        Some(b"written".to_vec()),
        "the write made before umount was uploaded"
    );
}

/// One HTTP/1.1 GET of `path`; the whole answer.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn a_mount_serves_its_metrics_to_prometheus() {
    let s = server();
    s.backend().put("bkt", "metrics/a.bin", vec![3u8; 300_000]);
    // A free port: bound, then let go for the daemon.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let m = mount(
        &s,
        "s3://bkt/metrics",
        &["--read-only", "--metrics-addr", &addr],
    );
    assert_eq!(
        std::fs::read(m.path().join("a.bin")).unwrap().len(),
        300_000
    );
    let answer = http_get(&addr, "/metrics");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("application/openmetrics-text"), "{answer}");
    let line = answer
        .lines()
        .find(|l| l.starts_with("pai_mount_object_get_requests_total{"))
        .expect("the GET counter");
    assert!(line.contains("source=\"s3://bkt/metrics\""), "{line}");
    let gets: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(gets >= 1, "{line}");
    assert!(answer.contains("# TYPE pai_mount_prefetch_budget_held_bytes gauge"));
    assert!(http_get(&addr, "/other").starts_with("HTTP/1.1 404"));

    // A port that is taken fails the mount with a message that names it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let err = fails(
        cmd(
            &s,
            &[
                "mount",
                "s3://bkt/metrics",
                dir.path().to_str().unwrap(),
                "--read-only",
                "--metrics-addr",
                &port,
            ],
        )
        .output()
        .unwrap(),
    );
    assert!(err.contains(&format!("serving metrics on {port}")), "{err}");
}

#[test]
fn a_named_mount_from_a_config_file_mounts_and_unmounts_by_name() {
    let s = server();
    s.backend()
        .put("bkt", "named/a.txt", b"from config".to_vec());
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mp");
    std::fs::create_dir(&mp).unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[defaults]\nendpoint = \"{ep}\"\npath_style = true\nregion = \"us-east-1\"\n\n\
             [mount.data]\nsource = \"s3://bkt/named\"\nmountpoint = \"{mp}\"\nprofile = \"notebook\"\nread_only = true\n",
            ep = s.endpoint(),
            mp = mp.display()
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    ok(cmd(&s, &["--config", cfg, "mount", "data"])
        .output()
        .unwrap());
    assert!(is_mounted(&mp));
    assert_eq!(std::fs::read(mp.join("a.txt")).unwrap(), b"from config");
    let err = std::fs::write(mp.join("b.txt"), b"x").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EROFS),
        "read_only from the file"
    );
    ok(cmd(&s, &["--config", cfg, "unmount", "data"])
        .output()
        .unwrap());
    assert!(!is_mounted(&mp));

    // A mistake names the file, the line and the key, before anything starts.
    std::fs::write(dir.path().join("bad.toml"), "[defaults]\nregoin = \"x\"\n").unwrap();
    let bad = dir.path().join("bad.toml");
    let out = cmd(&s, &["--config", bad.to_str().unwrap(), "mount", "data"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:2", bad.display())) && err.contains("regoin"),
        "{err}"
    );
}

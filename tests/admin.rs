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

/// The value of the first sample line starting with `prefix`.
fn sample(text: &str, prefix: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// `promtool check metrics` on `text`: scripts/test.sh puts promtool (Debian's prometheus
/// package, unpacked) in PAI_PROMTOOL.
fn promtool_check(text: &str) {
    let cached = std::env::var("HOME")
        .map(|h| format!("{h}/.cache/pai-mount/tools/x/usr/bin/promtool"))
        .unwrap_or_default();
    let tool = std::env::var("PAI_PROMTOOL").unwrap_or_else(|_| {
        if std::path::Path::new(&cached).exists() {
            cached
        } else {
            "promtool".into()
        }
    });
    let mut child = match Command::new(&tool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("{tool}: {e} (run scripts/test.sh, which fetches promtool)"),
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Lint findings (naming advice) print too; only a failed parse is an error.
    assert!(
        out.status.success() || !said.contains("error while linting"),
        "{said}"
    );
    assert!(!said.contains("text format parsing error"), "{said}");
}

/// A free loopback address: bound, then let go for the process under test.
fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

#[test]
fn a_mount_serves_its_metrics_to_prometheus() {
    let s = server();
    s.backend().put("bkt", "metrics/a.bin", vec![3u8; 300_000]);
    let addr = free_port();
    let m = mount(&s, "s3://bkt/metrics", &["--metrics-addr", &addr]);
    let before = http_get(&addr, "/metrics");
    assert!(before.starts_with("HTTP/1.1 200"), "{before}");
    assert!(before.contains("application/openmetrics-text"), "{before}");

    // A read and a write move the counters and fill the histograms.
    assert_eq!(
        std::fs::read(m.path().join("a.bin")).unwrap().len(),
        300_000
    );
    let f = std::fs::File::create(m.path().join("b.bin")).unwrap();
    use std::io::Write;
    (&f).write_all(&[7u8; 100_000]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let answer = http_get(&addr, "/metrics");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let gets = "pai_mount_object_get_requests_total{source=\"s3://bkt/metrics\"";
    assert!(sample(body, gets) > sample(&before, gets));
    assert!(sample(body, "pai_mount_write_uploads_done_total{") >= 1.0);
    assert!(sample(body, "pai_mount_object_get_first_byte_seconds_count{") >= 1.0);
    assert!(sample(body, "pai_mount_write_upload_seconds_count{") >= 1.0);
    let reads = format!(
        "pai_mount_fuse_op_seconds_count{{source=\"s3://bkt/metrics\",mountpoint=\"{}\",op=\"read\"}}",
        std::fs::canonicalize(m.path()).unwrap().display()
    );
    assert!(sample(body, &reads) >= 1.0, "{body}");
    assert!(sample(body, "pai_mount_fs_namespace_objects{") >= 2.0);
    assert!(body.contains("# TYPE pai_mount_prefetch_budget_held_bytes gauge"));
    promtool_check(body);
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

/// The shipped unit, checked by systemd's own verifier with its ExecStart pointing at the
/// binary under test.
#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../dist/systemd/pai-mount@.service"
    ))
    .unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("%i"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pai-mount@data.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/pai-mount", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", path.to_str().unwrap()])
        .output()
        .expect("systemd-analyze (Debian's systemd package) is installed by scripts/test.sh");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

/// What systemd sees from a `Type=notify` service: READY=1 once the mount is live, STATUS=
/// lines, STOPPING=1 at SIGTERM, and an exit after the uploads finished.
#[test]
fn the_daemon_notifies_systemd_and_stops_cleanly_on_sigterm() {
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mp");
    std::fs::create_dir(&mp).unwrap();
    let sock_path = dir.path().join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let staging = dir.path().join("staging");
    let mut child = cmd(
        &s,
        &[
            "mount",
            "s3://bkt/unit",
            mp.to_str().unwrap(),
            "--foreground",
            "--drain-timeout",
            "30s",
            "--staging-dir",
            staging.to_str().unwrap(),
        ],
    )
    .env("NOTIFY_SOCKET", &sock_path)
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let mut buf = [0u8; 1024];
    let mut recv = || {
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = recv();
    assert!(
        first.starts_with("READY=1\nSTATUS=mounted s3://bkt/unit"),
        "{first}"
    );
    assert!(is_mounted(&mp), "READY=1 comes once the mount is live");
    std::fs::write(mp.join("f.txt"), b"kept").unwrap();
    let status = recv();
    assert!(status.starts_with("STATUS=mounted; "), "{status}");
    // systemctl stop: SIGTERM.
    // SAFETY: kill(2) with a pid we spawned and still own.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let stopping = loop {
        let m = recv();
        if m.starts_with("STOPPING=1") {
            break m;
        }
    };
    assert!(stopping.contains("finishing uploads"), "{stopping}");
    let code = child.wait().unwrap();
    assert!(code.success(), "{code}");
    assert!(!is_mounted(&mp));
    assert_eq!(
        s.backend()
            .get("bkt", "unit/f.txt")
            .map(|o| o.data.to_vec()),
        Some(b"kept".to_vec())
    );
}

#[test]
fn logs_are_json_lines_when_asked_and_never_hold_secrets() {
    let s = server();
    s.backend().put("bkt", "logs/a.txt", b"hello".to_vec());
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mp");
    std::fs::create_dir(&mp).unwrap();
    let log = dir.path().join("daemon.log");
    let secret = pai_test_s3::DEFAULT_SECRET_KEY;
    ok(cmd(
        &s,
        &[
            "mount",
            "s3://bkt/logs",
            mp.to_str().unwrap(),
            "--access-key-id",
            pai_test_s3::DEFAULT_ACCESS_KEY,
            "--secret-access-key",
            secret,
            "--staging-dir",
            dir.path().join("staging").to_str().unwrap(),
            "--log-file",
            log.to_str().unwrap(),
            "--log-format",
            "json",
        ],
    )
    .env("PAI_MOUNT_LOG", "debug,fuser=info")
    .output()
    .unwrap());
    assert_eq!(std::fs::read(mp.join("a.txt")).unwrap(), b"hello");
    std::fs::write(mp.join("b.txt"), b"world").unwrap();
    ok(cmd(&s, &["unmount", mp.to_str().unwrap()])
        .output()
        .unwrap());
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("fields").is_some(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines > 10, "debug logging wrote {lines} lines");
    assert!(!text.contains(secret), "the secret key is in the log");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// The package's contents (`dpkg-deb -c`), built from the binary under test.
#[test]
fn the_debian_package_holds_the_binary_man_pages_completions_unit_and_sample_config() {
    let out = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/deb/build.sh");
    let built = ok(Command::new(script)
        .args([
            "--binary",
            BIN,
            "--out",
            out.path().to_str().unwrap(),
            "--compress",
            "none",
        ])
        .output()
        .unwrap());
    let deb = built.lines().last().unwrap().trim().to_string();
    let listing = ok(Command::new("dpkg-deb")
        .args(["-c", &deb])
        .output()
        .unwrap());
    for path in [
        "./usr/bin/pai-mount",
        "./usr/share/man/man1/pai-mount.1.gz",
        "./usr/share/man/man1/pai-mount-mount.1.gz",
        "./usr/share/bash-completion/completions/pai-mount",
        "./usr/share/zsh/vendor-completions/_pai-mount",
        "./usr/share/fish/vendor_completions.d/pai-mount.fish",
        "./lib/systemd/system/pai-mount@.service",
        "./usr/share/doc/pai-mount/examples/config.toml",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(path)),
            "{path} missing:\n{listing}"
        );
    }
    let info = ok(Command::new("dpkg-deb")
        .args(["-I", &deb])
        .output()
        .unwrap());
    assert!(info.contains("Package: pai-mount") && info.contains("Depends: fuse3"));
    let dir = out.path().join("x");
    ok(Command::new("dpkg-deb")
        .args(["-x", &deb, dir.to_str().unwrap()])
        .output()
        .unwrap());
    let text = std::fs::read_to_string(dir.join("lib/systemd/system/pai-mount@.service")).unwrap();
    assert!(
        text.contains("ExecStart=/usr/bin/pai-mount mount"),
        "{text}"
    );
}

#[test]
fn cp_and_warm_take_a_metrics_endpoint_too() {
    let s = server();
    s.backend().put("bkt", "cpm/a.bin", vec![1u8; 1000]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let dest = tempfile::tempdir().unwrap();
    for args in [
        vec!["cp", "s3://bkt/cpm", dest.path().to_str().unwrap()],
        vec![
            "warm",
            "s3://bkt/cpm",
            "--cache-dir",
            dest.path().to_str().unwrap(),
        ],
    ] {
        let mut args = args.clone();
        args.extend(["--metrics-addr", &port]);
        let err = fails(cmd(&s, &args).output().unwrap());
        assert!(err.contains(&format!("serving metrics on {port}")), "{err}");
    }
    drop(taken);
    let free = free_port();
    let out = ok(cmd(
        &s,
        &[
            "cp",
            "s3://bkt/cpm",
            dest.path().to_str().unwrap(),
            "--metrics-addr",
            &free,
        ],
    )
    .output()
    .unwrap());
    assert!(
        out.contains(&format!("metrics at http://{free}/metrics")),
        "{out}"
    );
    assert_eq!(
        std::fs::read(dest.path().join("a.bin")).unwrap().len(),
        1000
    );
}

//! End-to-end: the `pai-mount` binary against the S3-protocol test server on loopback (SigV4
//! over HTTP), mounted through real FUSE.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::*;
use pai_test_s3::TestServer;
use sha2::{Digest, Sha256};

fn dataset(server: &TestServer) -> BTreeMap<String, String> {
    let mut want = BTreeMap::new();
    for i in 0..40u32 {
        let key = format!("train/class{}/img_{i:03}.jpg", i % 4);
        let data: Vec<u8> = (0..(1000 + i * 3001)).map(|b| (b * 7 + i) as u8).collect();
        want.insert(key.clone(), hex::encode(Sha256::digest(&data)));
        server.backend().put("bkt", &format!("data/{key}"), data);
    }
    server.backend().put("bkt", "data/empty-dir/", Vec::new());
    server.backend().put("bkt", "data/zero.bin", Vec::new());
    want.insert("zero.bin".into(), hex::encode(Sha256::digest(b"")));
    want
}

#[test]
fn mount_serves_listing_stat_and_exact_bytes_from_the_manifest() {
    let s = server();
    let want = dataset(&s);
    let out = ok(cmd(&s, &["manifest", "build", "s3://bkt/data"])
        .output()
        .unwrap());
    assert!(out.contains("42 objects"), "{out}");
    let show = ok(cmd(&s, &["manifest", "show", "s3://bkt/data"])
        .output()
        .unwrap());
    assert!(
        show.contains("version 1") && show.contains("files         41"),
        "{show}"
    );

    let m = mount(&s, "s3://bkt/data", &["--read-only"]);
    let lists = s.backend().counters.list();
    let heads = s.backend().counters.head();
    let got = tree_sha(m.path());
    assert_eq!(got, want, "every file byte for byte");
    assert!(m.path().join("empty-dir").is_dir());
    assert!(
        !m.path().join(".pai-mount").exists(),
        "reserved directory hidden"
    );
    assert_eq!(
        s.backend().counters.list(),
        lists,
        "no LIST after the mount is up"
    );
    assert_eq!(
        s.backend().counters.head(),
        heads,
        "no HEAD: attributes come from the manifest"
    );
    assert!(
        m.log().contains("loaded the stored manifest"),
        "{}",
        m.log()
    );

    // Read-only, as asked.
    let err = std::fs::write(m.path().join("new.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(m.path().join("zero.bin"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let out = ok(Command::new(BIN)
        .arg("unmount")
        .arg(m.path())
        .output()
        .unwrap());
    assert!(out.contains("unmounted"));
}

#[test]
fn virtual_hosted_addressing_end_to_end() {
    let s = server();
    let want = dataset(&s);
    let endpoint = format!("http://s3.test:{}", s.addr().port());
    let resolve = format!("bkt.s3.test:{}", s.addr());
    let m = mount(
        &s,
        "s3://bkt/data",
        &["--endpoint", &endpoint, "--resolve", &resolve],
    );
    let got = tree_sha(m.path());
    assert_eq!(got, want);
    assert!(
        m.log().contains("no manifest at"),
        "listing is logged: {}",
        m.log()
    );
}

#[test]
fn odd_keys_are_skipped_counted_and_logged() {
    let s = server();
    s.backend().put("bkt", "ok.txt", b"fine".to_vec());
    s.backend().put("bkt", "a/../escape", b"x".to_vec());
    s.backend().put("bkt", "a//b", b"x".to_vec());
    s.backend()
        .put("bkt", &format!("long/{}", "n".repeat(300)), b"x".to_vec());
    s.backend().put("bkt", "both", b"file".to_vec());
    s.backend().put("bkt", "both/inner", b"inner".to_vec());
    let m = mount(&s, "s3://bkt", &[]);
    let mut names: Vec<String> = std::fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    // A skipped key contributes nothing, not even its parent directories.
    assert_eq!(names, ["both", "ok.txt"]);
    assert!(m.path().join("both").is_dir(), "the directory wins");
    assert_eq!(
        std::fs::read(m.path().join("both/inner")).unwrap(),
        b"inner"
    );
    let log = m.log();
    assert!(log.contains("skipped 4 keys"), "{log}");
}

#[test]
fn an_object_changed_after_the_manifest_gives_estale_not_new_bytes() {
    let s = server();
    s.backend().put("bkt", "f.bin", vec![1u8; 5000]);
    ok(cmd(&s, &["manifest", "build", "s3://bkt"])
        .output()
        .unwrap());
    let m = mount(&s, "s3://bkt", &[]);
    s.backend().put("bkt", "f.bin", vec![2u8; 5000]);
    let err = std::fs::read(m.path().join("f.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "{err}");
}

#[test]
fn a_corrupt_manifest_is_reported_and_the_prefix_listed_instead() {
    let s = server();
    s.backend().put("bkt", "f.txt", b"hello".to_vec());
    s.backend().put(
        "bkt",
        ".pai-mount/manifest.v1",
        b"PAIMNFST garbage".to_vec(),
    );
    let m = mount(&s, "s3://bkt", &[]);
    assert_eq!(std::fs::read(m.path().join("f.txt")).unwrap(), b"hello");
    assert!(
        m.log().contains("stored manifest is unusable"),
        "{}",
        m.log()
    );
}

#[test]
fn sigterm_unmounts_cleanly_and_a_killed_daemon_leaves_no_dead_mount_after_unmount() {
    let s = server();
    s.backend().put("bkt", "f.txt", b"hello".to_vec());
    for signal in ["TERM", "KILL"] {
        let m = mount(&s, "s3://bkt", &[]);
        let pid = daemon_pid(m.path());
        Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        if signal == "TERM" {
            wait_until(|| !is_mounted(m.path()));
        } else {
            wait_until(|| pai_mount_fs::mountpoint::is_dead_mount(m.path()));
            ok(Command::new(BIN)
                .arg("unmount")
                .arg(m.path())
                .output()
                .unwrap());
            assert!(!is_mounted(m.path()));
            assert!(m.path().is_dir(), "the mount point is usable again");
        }
    }
}

#[test]
fn bad_input_gives_one_clear_error_and_nonzero_exit() {
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().to_str().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["mount", "bkt/data", mp], "expected oss://"),
        (
            vec!["mount", "s3://bkt", "/nonexistent-mp"],
            "does not exist",
        ),
        (
            vec!["mount", "s3://bkt", file.to_str().unwrap()],
            "not a directory",
        ),
        (
            vec!["mount", "s3://nobucket", mp],
            "nobucket does not exist",
        ),
        (vec!["mount", "oss://bkt", mp], "--region"),
        (
            vec!["mount", "s3://bkt", mp, "-o", "bogus"],
            "unknown mount option",
        ),
        (
            vec!["mount", "s3://bkt", mp, "--upload-part-size", "1M"],
            "5M to 5G",
        ),
        (
            vec!["mount", "s3://bkt", mp, "--upload-part-size", "0"],
            "5M to 5G",
        ),
        (
            vec!["mount", "s3://bkt", mp, "--threads", "0"],
            "at least 1",
        ),
        (
            vec!["mount", "s3://bkt", mp, "--max-requests", "0"],
            "at least 1",
        ),
        (
            vec!["mount", "s3://bkt", mp, "--part-size", "0"],
            "more than 0",
        ),
        (
            vec!["mount", "s3://bkt", mp, "--max-window", "0"],
            "more than 0",
        ),
        (
            vec!["mount", "s3://bkt", mp, "--prefetch-budget", "0"],
            "more than 0",
        ),
        (
            vec!["mount", "s3://bkt", mp, "--first-byte-timeout", "0"],
            "more than 0",
        ),
    ];
    for (args, needle) in cases {
        let err = fails(cmd(&s, &args).output().unwrap());
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let err = fails(
        cmd(&s, &["mount", "s3://bkt", mp])
            .env("AWS_SECRET_ACCESS_KEY", "wrong")
            .output()
            .unwrap(),
    );
    assert!(err.contains("access denied"), "{err}");
    let err = fails(
        cmd(&s, &["mount", "s3://bkt", mp])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .output()
            .unwrap(),
    );
    assert!(err.contains("no credentials for s3://bkt: tried"), "{err}");
    // Already mounted.
    let m = mount(&s, "s3://bkt", &[]);
    let err = fails(
        cmd(&s, &["mount", "s3://bkt", m.path().to_str().unwrap()])
            .output()
            .unwrap(),
    );
    assert!(err.contains("already a mount point"), "{err}");
    let err = fails(Command::new(BIN).args(["unmount", mp]).output().unwrap());
    assert!(err.contains("not a mount point"), "{err}");
}

#[test]
fn file_sources_mount_local_directories() {
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("x/y")).unwrap();
    std::fs::write(src.path().join("x/y/z.txt"), b"local").unwrap();
    let s = server();
    let m = mount(&s, &format!("file://{}", src.path().display()), &[]);
    assert_eq!(std::fs::read(m.path().join("x/y/z.txt")).unwrap(), b"local");
}

#[test]
fn refresh_swaps_in_new_objects_and_open_files_keep_their_version() {
    use std::io::Read;
    let s = server();
    s.backend().put("bkt", "old.txt", b"old".to_vec());
    let m = mount(&s, "s3://bkt", &["--refresh", "1s"]);
    let mut f = std::fs::File::open(m.path().join("old.txt")).unwrap();
    s.backend().put("bkt", "new.txt", b"new".to_vec());
    wait_until(|| m.path().join("new.txt").exists());
    assert_eq!(std::fs::read(m.path().join("new.txt")).unwrap(), b"new");
    let mut buf = String::new();
    f.read_to_string(&mut buf).unwrap();
    assert_eq!(buf, "old");
    assert!(m.log().contains("refreshed the namespace"), "{}", m.log());
}

#[test]
fn ownership_and_mode_options_apply_and_allow_other_is_off_unless_asked() {
    use std::os::unix::fs::MetadataExt;
    let s = server();
    s.backend().put("bkt", "d/f.txt", b"x".to_vec());
    let m = mount(&s, "s3://bkt", &[]);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mountinfo
        .lines()
        .find(|l| l.contains(m.path().to_str().unwrap()))
        .unwrap()
        .to_string();
    assert!(!line.contains("allow_other"), "{line}");
    drop(m);
    let m = mount(
        &s,
        "s3://bkt",
        &[
            "-o",
            "allow_other,uid=1234,gid=4321,file_mode=0600,dir_mode=0700",
        ],
    );
    let f = std::fs::metadata(m.path().join("d/f.txt")).unwrap();
    assert_eq!((f.uid(), f.gid(), f.mode() & 0o7777), (1234, 4321, 0o600));
    let d = std::fs::metadata(m.path().join("d")).unwrap();
    assert_eq!(d.mode() & 0o7777, 0o700);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mountinfo
        .lines()
        .find(|l| l.contains(m.path().to_str().unwrap()))
        .unwrap();
    assert!(line.contains("allow_other"), "{line}");
}

#[test]
fn transient_503s_and_cut_connections_do_not_reach_readers() {
    let s = server();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
    s.backend().put("bkt", "f.bin", data.clone());
    let m = mount(&s, "s3://bkt", &[]);
    s.backend().faults.fail_next(3);
    assert_eq!(std::fs::read(m.path().join("f.bin")).unwrap(), data);
    drop(m);
    let m = mount(&s, "s3://bkt", &[]);
    s.backend().faults.cut_next_gets(2, 10_000);
    assert_eq!(std::fs::read(m.path().join("f.bin")).unwrap(), data);
    // A larger file is read in ranges, which no checksum covers one by one; read front to back,
    // the ranges' CRCs combine to the object's. One damaged range fails the read that reaches
    // the end with EIO (the damaged bytes are in the reader's buffer, never behind a clean end
    // of file), and a reread fetches the file afresh, past the kernel's page cache.
    drop(m);
    let m = mount(&s, "s3://bkt", &[]);
    s.backend().faults.corrupt_next_gets(1);
    let err = std::fs::read(m.path().join("f.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(std::fs::read(m.path().join("f.bin")).unwrap() == data);
    // A small file's body damaged on the way (a bit flipped, length and headers kept) fails
    // the object's checksum and is fetched again: the reader gets the right bytes.
    drop(m);
    let small: Vec<u8> = (0..600_000u32).map(|i| (i % 233) as u8).collect();
    s.backend().put("bkt", "small.bin", small.clone());
    let m = mount(&s, "s3://bkt", &[]);
    s.backend().faults.corrupt_next_gets(1);
    assert!(std::fs::read(m.path().join("small.bin")).unwrap() == small);
    assert_eq!(
        s.backend()
            .faults
            .corrupt_gets
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the damaged body was served, and caught"
    );
    // An outage longer than the retries is EIO for that read, and reads work again after it.
    drop(m);
    let m = mount(&s, "s3://bkt", &[]);
    s.backend().faults.fail_next(1000);
    let err = std::fs::read(m.path().join("f.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    s.backend().faults.fail_next(0);
    assert_eq!(std::fs::read(m.path().join("f.bin")).unwrap(), data);
}

#[test]
fn a_stalled_store_fails_reads_within_the_read_bound_and_a_silent_one_fails_the_mount() {
    let s = server();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 239) as u8).collect();
    s.backend().put("bkt", "stalled/f.bin", data.clone());
    s.backend().put("bkt", "stalled/g.bin", data.clone());
    let m = mount(
        &s,
        "s3://bkt/stalled",
        &[
            "--read-timeout",
            "4s",
            "--first-byte-timeout",
            "1s",
            "--idle-timeout",
            "1s",
        ],
    );
    // One stalled request costs one first-byte bound, not minutes.
    s.backend().faults.stall_next(1);
    let t = std::time::Instant::now();
    assert_eq!(std::fs::read(m.path().join("f.bin")).unwrap(), data);
    assert!(t.elapsed().as_secs_f64() < 3.5, "{:?}", t.elapsed());
    // Every request stalls: the read of a file not read before fails with EIO at the bound,
    // and the log names the key.
    s.backend().faults.stall_everything(true);
    let t = std::time::Instant::now();
    let err = std::fs::read(m.path().join("g.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(t.elapsed().as_secs_f64() < 10.0, "{:?}", t.elapsed());
    let log = m.log();
    assert!(
        log.contains("reading g.bin: no answer within the read bound of 4 s"),
        "{log}"
    );
    // Reads work again as soon as the store does.
    s.backend().faults.stall_everything(false);
    assert_eq!(std::fs::read(m.path().join("g.bin")).unwrap(), data);
    drop(m);
    // A store that accepts connections and never answers: the mount says what it waits for
    // and gives up after 30 s.
    s.backend().faults.stall_everything(true);
    let dir = tempfile::tempdir().unwrap();
    let t = std::time::Instant::now();
    let err = fails(
        cmd(
            &s,
            &["mount", "s3://bkt/stalled", dir.path().to_str().unwrap()],
        )
        .output()
        .unwrap(),
    );
    let took = t.elapsed().as_secs();
    assert!((29..45).contains(&took), "{took} s: {err}");
    assert!(err.contains("still waiting for s3://bkt/stalled"), "{err}");
    assert!(err.contains("no answer from"), "{err}");
    assert!(err.contains("within 30 s"), "{err}");
    s.backend().faults.stall_everything(false);
}

#[test]
fn unmount_returns_while_a_supervisor_has_not_reaped_the_exited_daemon() {
    let s = server();
    s.backend().put("bkt", "z/f.txt", b"hi".to_vec());
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().with_extension("log");
    // A supervisor runs the daemon in the foreground as its child and reaps it only later.
    let mut child = cmd(
        &s,
        &[
            "mount",
            "s3://bkt/z",
            dir.path().to_str().unwrap(),
            "--foreground",
            "--read-only",
            "--log-file",
            log.to_str().unwrap(),
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    wait_until(|| is_mounted(dir.path()));
    let (tx, rx) = std::sync::mpsc::channel();
    let mp = dir.path().to_path_buf();
    std::thread::spawn(move || {
        let out = Command::new(BIN).arg("unmount").arg(&mp).output().unwrap();
        let _ = tx.send(out);
    });
    let out = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("unmount returned while the daemon was a zombie");
    ok(out);
    assert!(child.wait().unwrap().success());
}

#[test]
fn pythons_open_and_an_unmount_leave_no_warnings_in_the_log() {
    let s = server();
    s.backend().put("bkt", "quiet/a.txt", b"hello".to_vec());
    let m = mount(&s, "s3://bkt/quiet", &["--read-only"]);
    // Python's open() asks isatty (an ioctl) of every file it opens.
    let out = Command::new("python3")
        .arg("-c")
        .arg("import sys; print(open(sys.argv[1]).read())")
        .arg(m.path().join("a.txt"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");
    let log_path = m.log.clone();
    drop(m);
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(!log.contains("Not Implemented"), "{log}");
    assert!(!log.contains("Failed to umount"), "{log}");
}

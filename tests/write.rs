//! End-to-end write-back: real FUSE mounts of the S3 test server, the real daemon, and the
//! bucket checked byte for byte (sha256).

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use pai_test_s3::TestServer;

fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8)
        .collect()
}

fn object(s: &TestServer, key: &str) -> Option<Vec<u8>> {
    s.backend().get("bkt", key).map(|o| o.data.to_vec())
}

fn unmount(m: &Mounted, extra: &[&str]) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.arg("unmount").arg(m.path()).args(extra);
    c.env(
        "XDG_STATE_HOME",
        std::env::temp_dir().join("pai-mount-test-state"),
    );
    c.output().unwrap()
}

fn status(s: &TestServer, m: &Mounted) -> String {
    ok(cmd(s, &["status", m.path().to_str().unwrap()])
        .output()
        .unwrap())
}

#[test]
fn written_files_are_readable_at_once_uploaded_and_kept_across_a_remount() {
    let s = server();
    let orig = data(1, 3 << 20);
    s.backend().put("bkt", "data/existing.bin", orig.clone());
    s.backend().put("bkt", "data/log.txt", b"line 1\n".to_vec());
    let staging = tempfile::tempdir().unwrap();
    let st = staging.path().join("s");
    let args = [
        "--staging-dir",
        st.to_str().unwrap(),
        "--upload-part-size",
        "5M",
    ];
    let m = mount(&s, "s3://bkt/data", &args);
    let p = m.path();

    // A checkpoint-like file in a new directory: multipart (5 MiB parts).
    std::fs::create_dir(p.join("ckpt")).unwrap();
    let big = data(2, 23 << 20);
    std::fs::write(p.join("ckpt/model.pt"), &big).unwrap();
    assert_eq!(
        sha(&std::fs::read(p.join("ckpt/model.pt")).unwrap()),
        sha(&big)
    );
    // fsync() is the durability point: the object is in the bucket when it returns.
    let mut f = std::fs::File::create(p.join("ckpt/small.json")).unwrap();
    f.write_all(b"{\"step\": 1}").unwrap();
    f.sync_all().unwrap();
    assert_eq!(
        object(&s, "data/ckpt/small.json").unwrap(),
        b"{\"step\": 1}"
    );
    drop(f);
    // A partial overwrite of an existing object, and an append.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(p.join("existing.bin"))
        .unwrap();
    f.seek(SeekFrom::Start(1_000_000)).unwrap();
    f.write_all(b"PATCHED").unwrap();
    drop(f);
    let mut want = orig.clone();
    want[1_000_000..1_000_007].copy_from_slice(b"PATCHED");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(p.join("log.txt"))
        .unwrap();
    f.write_all(b"line 2\n").unwrap();
    drop(f);
    assert_eq!(
        std::fs::read(p.join("log.txt")).unwrap(),
        b"line 1\nline 2\n"
    );
    assert_eq!(
        sha(&std::fs::read(p.join("existing.bin")).unwrap()),
        sha(&want)
    );
    // truncate(2) by path, and O_TRUNC.
    std::fs::write(p.join("trunc.bin"), data(3, 100_000)).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(p.join("trunc.bin"))
        .unwrap()
        .set_len(10)
        .unwrap();
    std::fs::write(p.join("log.txt"), b"rewritten\n").unwrap();
    assert_eq!(std::fs::metadata(p.join("trunc.bin")).unwrap().len(), 10);

    let out = unmount(&m, &[]);
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("all uploads finished"), "{text}");
    assert_eq!(sha(&object(&s, "data/ckpt/model.pt").unwrap()), sha(&big));
    assert_eq!(sha(&object(&s, "data/existing.bin").unwrap()), sha(&want));
    assert_eq!(object(&s, "data/log.txt").unwrap(), b"rewritten\n");
    assert_eq!(
        object(&s, "data/trunc.bin").unwrap(),
        data(3, 100_000)[..10]
    );
    assert!(object(&s, "data/ckpt/").is_some(), "mkdir made a marker");
    let meta = s
        .backend()
        .get("bkt", "data/ckpt/model.pt")
        .unwrap()
        .metadata;
    assert!(meta.contains_key("mtime"), "{meta:?}");
    assert!(
        object(&s, "data/.pai-mount/manifest.v1").is_some(),
        "manifest saved"
    );
    assert_eq!(
        std::fs::read_dir(st.join("journal")).unwrap().count(),
        0,
        "nothing left in the journal"
    );

    // A new mount sees everything, from the saved manifest (no listing).
    let lists = s.backend().counters.list();
    let m = mount(&s, "s3://bkt/data", &args);
    assert!(
        m.log().contains("loaded the stored manifest"),
        "{}",
        m.log()
    );
    assert_eq!(
        s.backend().counters.list(),
        lists + 1,
        "only the probe lists"
    );
    assert_eq!(
        sha(&std::fs::read(m.path().join("ckpt/model.pt")).unwrap()),
        sha(&big)
    );
    assert_eq!(
        std::fs::read(m.path().join("log.txt")).unwrap(),
        b"rewritten\n"
    );
    assert_eq!(std::fs::read(m.path().join("trunc.bin")).unwrap().len(), 10);
}

#[test]
fn namespace_operations_reach_the_bucket() {
    let s = server();
    for k in ["a/1.txt", "a/sub/2.txt", "b.txt", "keep/x"] {
        s.backend().put("bkt", k, k.as_bytes().to_vec());
    }
    let m = mount(&s, "s3://bkt", &["--manifest-interval", "1s"]);
    let p = m.path();
    std::fs::rename(p.join("b.txt"), p.join("keep/b2.txt")).unwrap();
    std::fs::rename(p.join("a"), p.join("moved")).unwrap();
    assert_eq!(
        std::fs::read(p.join("moved/sub/2.txt")).unwrap(),
        b"a/sub/2.txt"
    );
    assert!(!p.join("a").exists());
    std::fs::create_dir(p.join("empty")).unwrap();
    assert_eq!(
        std::fs::remove_dir(p.join("moved"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    std::fs::remove_dir(p.join("empty")).unwrap();
    std::fs::remove_file(p.join("moved/1.txt")).unwrap();
    std::fs::write(p.join("new.txt"), b"new").unwrap();
    std::fs::rename(p.join("new.txt"), p.join("keep/x")).unwrap();
    // What cannot be stored is refused, not pretended.
    let e = std::fs::hard_link(p.join("keep/x"), p.join("keep/hard")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    assert_eq!(
        std::fs::write(p.join(".pai-mount"), b"x")
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EPERM)
    );
    // Listings follow at once.
    let mut names: Vec<String> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["keep", "moved"]);
    // The manifest is saved while the mount is up, not only at unmount.
    wait_until(|| object(&s, ".pai-mount/manifest.v1").is_some());
    let out = unmount(&m, &[]);
    assert!(out.status.success());
    let mut keys = s.backend().keys("bkt");
    keys.retain(|k| !k.starts_with(".pai-mount"));
    assert_eq!(
        keys,
        [
            "keep/b2.txt",
            "keep/x",
            "moved/",
            "moved/sub/",
            "moved/sub/2.txt"
        ]
    );
    assert_eq!(object(&s, "keep/x").unwrap(), b"new");
    assert_eq!(object(&s, "keep/b2.txt").unwrap(), b"b.txt");
}

#[test]
fn a_killed_daemon_loses_no_closed_file() {
    // Slow enough that uploads are still running when the daemon dies.
    let s = slow_server(30);
    let staging = tempfile::tempdir().unwrap();
    let st = staging.path().join("s");
    let args = [
        "--staging-dir",
        st.to_str().unwrap(),
        "--upload-part-size",
        "5M",
        "--upload-files",
        "2",
        "--upload-parts",
        "2",
    ];
    let m = mount(&s, "s3://bkt/out", &args);
    let mut written = Vec::new();
    for i in 0..8u8 {
        let body = data(i, if i == 0 { 24 << 20 } else { (i as usize) << 19 });
        std::fs::write(m.path().join(format!("f{i}.bin")), &body).unwrap();
        written.push((format!("out/f{i}.bin"), body));
    }
    let pid = daemon_pid(m.path());
    assert!(Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap()
        .success());
    // Whatever reached the bucket is whole: never half a file under its key.
    let mut early = 0;
    for (k, body) in &written {
        if let Some(got) = object(&s, k) {
            assert_eq!(sha(&got), sha(body), "{k} is a whole version");
            early += 1;
        }
    }
    assert!(
        early < written.len(),
        "uploads were still pending at the kill"
    );
    let out = unmount(&m, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(m);
    let m = mount(&s, "s3://bkt/out", &args);
    assert!(
        m.log().contains("resuming uploads") && m.log().contains("listing the prefix"),
        "{}",
        m.log()
    );
    for (k, body) in &written {
        let name = k.strip_prefix("out/").unwrap();
        assert_eq!(sha(&std::fs::read(m.path().join(name)).unwrap()), sha(body));
    }
    let out = unmount(&m, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (k, body) in &written {
        assert_eq!(sha(&object(&s, k).expect(k)), sha(body), "{k}");
    }
}

#[test]
fn uploads_ride_out_503s_and_resets_and_a_long_outage_is_kept_for_later() {
    let s = server();
    let staging = tempfile::tempdir().unwrap();
    let st = staging.path().join("s");
    let args = [
        "--staging-dir",
        st.to_str().unwrap(),
        "--upload-part-size",
        "5M",
        "--upload-attempts",
        "3",
        "--upload-retry-delay",
        "100ms",
    ];
    let m = mount(&s, "s3://bkt", &args);
    let big = data(9, 12 << 20);
    s.backend().faults.fail_next(6);
    s.backend().faults.reset_next_puts(3);
    let mut f = std::fs::File::create(m.path().join("big.bin")).unwrap();
    f.write_all(&big).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(sha(&object(&s, "big.bin").unwrap()), sha(&big));

    // An outage longer than every retry: fsync fails, status reports it, nothing is lost.
    s.backend().faults.fail_next(100_000);
    let mut f = std::fs::File::create(m.path().join("late.bin")).unwrap();
    f.write_all(b"written during an outage").unwrap();
    let e = f.sync_all().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    drop(f);
    // The daemon refreshes its status file every second.
    let mut st_text = String::new();
    for _ in 0..50 {
        st_text = status(&s, &m);
        if st_text.contains("failed:   1") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        st_text.contains("failed:   1") && st_text.contains("late.bin"),
        "{st_text}"
    );
    assert_eq!(
        std::fs::read(m.path().join("late.bin")).unwrap(),
        b"written during an outage",
        "still readable from staging"
    );
    s.backend().faults.fail_next(0);
    let out = unmount(&m, &[]);
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "a failed upload is an error: {text}");
    assert!(text.contains("failed"), "{text}");
    assert!(object(&s, "late.bin").is_none());
    drop(m);
    // The next mount retries it.
    let m = mount(&s, "s3://bkt", &args);
    let out = unmount(&m, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(object(&s, "late.bin").unwrap(), b"written during an outage");
}

#[test]
fn unmount_lazy_leaves_uploads_to_the_next_mount() {
    let s = slow_server(40);
    let staging = tempfile::tempdir().unwrap();
    let st = staging.path().join("s");
    let args = [
        "--staging-dir",
        st.to_str().unwrap(),
        "--upload-part-size",
        "5M",
        "--upload-parts",
        "1",
    ];
    let m = mount(&s, "s3://bkt", &args);
    let body = data(4, 30 << 20);
    std::fs::write(m.path().join("slow.bin"), &body).unwrap();
    let out = unmount(&m, &["--lazy"]);
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("left 1 uploads"), "{text}");
    assert!(object(&s, "slow.bin").is_none());
    drop(m);
    let m = mount(&s, "s3://bkt", &args);
    let started = Instant::now();
    let out = unmount(&m, &[]);
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(text.contains("all uploads finished"), "{text}");
    assert_eq!(sha(&object(&s, "slow.bin").unwrap()), sha(&body));
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// A small tmpfs; unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn new(size: &str) -> Self {
        let d = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(d.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs");
        Self(d)
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_staging_disk_is_enospc_and_corrupts_nothing() {
    let s = server();
    s.backend().put("bkt", "keep.bin", data(5, 1 << 20));
    let disk = Tmpfs::new("4m");
    let st = disk.path().join("s");
    let m = mount(&s, "s3://bkt", &["--staging-dir", st.to_str().unwrap()]);
    let e = std::fs::write(m.path().join("huge.bin"), data(6, 8 << 20)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    std::fs::remove_file(m.path().join("huge.bin")).unwrap();
    // The space comes back once nothing holds the unlinked staging file: an upload of what
    // did fit may still be sending it, and lets go when it finds the file gone.
    let t = std::time::Instant::now();
    while let Err(e) = std::fs::write(m.path().join("fits.bin"), b"small") {
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the space never came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        sha(&std::fs::read(m.path().join("keep.bin")).unwrap()),
        sha(&data(5, 1 << 20))
    );
    let out = unmount(&m, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(object(&s, "fits.bin").unwrap(), b"small");
    assert!(object(&s, "huge.bin").is_none());
    assert_eq!(
        sha(&object(&s, "keep.bin").unwrap()),
        sha(&data(5, 1 << 20))
    );
}

#[test]
fn one_mount_per_staging_directory_with_a_clear_error() {
    let s = server();
    let staging = tempfile::tempdir().unwrap();
    let st = staging.path().join("s");
    let args = ["--staging-dir", st.to_str().unwrap()];
    let _m = mount(&s, "s3://bkt", &args);
    let other = tempfile::tempdir().unwrap();
    let mut a = vec!["mount", "s3://bkt", other.path().to_str().unwrap()];
    a.extend_from_slice(&args);
    let err = fails(cmd(&s, &a).output().unwrap());
    assert!(
        err.contains("is in use by another pai-mount process"),
        "{err}"
    );
    assert!(err.contains("--staging-dir"), "{err}");
    let mode = std::fs::metadata(&st).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

/// Counts the PUT requests the server has seen after `f` returns and uploads settle.
fn puts(s: &TestServer) -> u64 {
    s.backend().counters.put()
}

#[test]
fn passthrough_writers_readers_and_read_write_handles_agree_and_every_version_lands() {
    let s = slow_server(30);
    let m = mount(&s, "s3://bkt", &[]);
    let p = m.path().join("ck.pt");

    // A new file written through a write-only handle: the kernel writes the staging file
    // itself; fsync still means "in the bucket".
    let v1 = data(1, 6 << 20);
    let mut w = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    w.write_all(&v1).unwrap();
    // A reader while the writer is open sees what was written (and its size).
    assert_eq!(std::fs::metadata(&p).unwrap().len(), v1.len() as u64);
    assert!(std::fs::read(&p).unwrap() == v1);
    w.sync_all().unwrap();
    assert!(object(&s, "ck.pt").unwrap() == v1);
    let after_fsync = puts(&s);
    drop(w);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        puts(&s),
        after_fsync,
        "closing without new writes uploads nothing"
    );

    // A read-write handle while a write-only one is open (served by the daemon, on the same
    // staging file): both handles' writes land, in order.
    let mut w = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    let mut rw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    w.seek(SeekFrom::Start(1 << 20)).unwrap();
    w.write_all(&[7u8; 4096]).unwrap();
    rw.seek(SeekFrom::Start(2 << 20)).unwrap();
    rw.write_all(&[9u8; 4096]).unwrap();
    let mut expect = v1.clone();
    expect[1 << 20..(1 << 20) + 4096].fill(7);
    expect[2 << 20..(2 << 20) + 4096].fill(9);
    let mut got = Vec::new();
    rw.seek(SeekFrom::Start(0)).unwrap();
    std::io::Read::read_to_end(&mut rw, &mut got).unwrap();
    assert!(got == expect, "the read-write handle sees both writes");
    drop(rw);
    drop(w);
    std::fs::File::open(&p).unwrap().sync_all().unwrap();
    assert!(object(&s, "ck.pt").unwrap() == expect);

    // Overwrites in quick succession, each while the previous upload may be in flight: only
    // whole versions become visible, and the last one stays.
    let mut last = Vec::new();
    for seed in 2..6u8 {
        last = data(seed, (3 << 20) + seed as usize * 4097);
        std::fs::write(&p, &last).unwrap();
    }
    std::fs::File::open(&p).unwrap().sync_all().unwrap();
    assert!(object(&s, "ck.pt").unwrap() == last);

    // Overwriting an object that exists only in the bucket (O_TRUNC with the open).
    let remote = data(9, 1 << 20);
    s.backend().put("bkt", "remote.bin", remote.clone());
    let fresh = data(10, 2 << 20);
    let q = m.path().join("remote.bin");
    std::fs::write(&q, &fresh).unwrap();
    assert!(std::fs::read(&q).unwrap() == fresh);
    std::fs::File::open(&q).unwrap().sync_all().unwrap();
    assert!(object(&s, "remote.bin").unwrap() == fresh);

    let out = unmount(&m, &[]);
    assert!(out.status.success());
    let log = m.log();
    // The value is the last run of digits of the metric's line (the log may be colored).
    let opens: u64 = log
        .lines()
        .find(|l| l.contains("fs.passthrough_opens"))
        .map(|l| {
            let digits: String = l.chars().rev().take_while(char::is_ascii_digit).collect();
            digits.chars().rev().collect::<String>()
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if log.contains("does not offer FUSE passthrough") {
        eprintln!("this kernel has no FUSE passthrough: the daemon path was tested instead");
    } else {
        let tail: Vec<&str> = log.lines().rev().take(12).collect();
        assert!(
            opens > 0,
            "passthrough was used: {opens}; log ends {tail:#?}"
        );
    }
}

#[test]
fn fallocate_through_the_mount_extends_the_file_and_the_object() {
    use std::os::fd::AsRawFd;
    let s = server();
    let m = mount(&s, "s3://bkt/falloc", &[]);
    let path = m.path().join("pre.bin");
    let f = std::fs::File::create(&path).unwrap();
    // SAFETY: fallocate on a descriptor we own; no memory is involved.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 1 << 20) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    drop(f);
    ok(unmount(&m, &[]));
    let obj = s.backend().get("bkt", "falloc/pre.bin").unwrap();
    assert!(obj.data.len() == 1 << 20 && obj.data.iter().all(|b| *b == 0));
}

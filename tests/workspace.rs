//! The mount as a place to work: symlinks, modes, owners and times, through real FUSE mounts
//! of the S3 test server, with git, tar, cp -a and Python virtual environments.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use common::*;
use pai_test_s3::TestServer;

fn unmount(m: &Mounted) -> String {
    let out = Command::new(BIN)
        .arg("unmount")
        .arg(m.path())
        .env(
            "XDG_STATE_HOME",
            std::env::temp_dir().join("pai-mount-test-state"),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{text}");
    text
}

fn meta(s: &TestServer, key: &str) -> std::collections::HashMap<String, String> {
    s.backend().get("bkt", key).expect(key).metadata
}

fn run(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn symlinks_modes_owners_and_times_reach_the_bucket_and_survive_remounts() {
    let s = server();
    let staging = tempfile::tempdir().unwrap();
    let st = staging.path().join("s");
    let args = ["--staging-dir", st.to_str().unwrap()];
    let m = mount(&s, "s3://bkt/ws", &args);
    let p = m.path();
    std::fs::create_dir(p.join("bin")).unwrap();
    let made = std::fs::metadata(p.join("bin"))
        .unwrap()
        .modified()
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(p.join("bin/run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    let touched = std::fs::metadata(p.join("bin"))
        .unwrap()
        .modified()
        .unwrap();
    assert!(touched > made, "a create changes its directory's mtime");
    // Directory modes: at mkdir, and by chmod.
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(p.join("private"))
        .unwrap();
    std::fs::set_permissions(p.join("bin"), PermissionsExt::from_mode(0o750)).unwrap();
    std::fs::set_permissions(p.join("bin/run.sh"), PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("run.sh", p.join("bin/rel")).unwrap();
    std::os::unix::fs::symlink("/usr/bin/env", p.join("bin/abs")).unwrap();
    std::fs::write(p.join("notes.txt"), "n").unwrap();
    std::os::unix::fs::chown(p.join("notes.txt"), Some(4321), Some(765)).unwrap();
    let when = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    std::fs::File::options()
        .write(true)
        .open(p.join("notes.txt"))
        .unwrap()
        .set_modified(when)
        .unwrap();
    // Access times: set by utimens on a file and a directory, kept as `atime` metadata.
    let accessed = UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    std::fs::File::open(p.join("notes.txt"))
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_accessed(accessed))
        .unwrap();
    run(p, "touch", &["-a", "-d", "@1400000000", "private"]);
    let dir_accessed = UNIX_EPOCH + Duration::from_secs(1_400_000_000);
    let check = |p: &Path| {
        let md = std::fs::symlink_metadata(p.join("bin/rel")).unwrap();
        assert!(md.file_type().is_symlink());
        assert_eq!(md.len(), 6);
        assert_eq!(
            std::fs::read_link(p.join("bin/rel")).unwrap(),
            Path::new("run.sh")
        );
        assert_eq!(
            std::fs::read_link(p.join("bin/abs")).unwrap(),
            Path::new("/usr/bin/env")
        );
        // The kernel follows the link: reading it reads the script.
        assert_eq!(
            std::fs::read_to_string(p.join("bin/rel")).unwrap(),
            "#!/bin/sh\necho ran\n"
        );
        let mode = std::fs::metadata(p.join("bin/run.sh")).unwrap().mode();
        assert_eq!(mode & 0o7777, 0o755);
        assert_eq!(run(p, "bin/run.sh", &[]), "ran\n");
        let notes = std::fs::metadata(p.join("notes.txt")).unwrap();
        assert_eq!((notes.uid(), notes.gid()), (4321, 765));
        assert_eq!(notes.modified().unwrap(), when);
        assert_eq!(notes.accessed().unwrap(), accessed);
        assert_eq!(
            std::fs::metadata(p.join("private"))
                .unwrap()
                .accessed()
                .unwrap(),
            dir_accessed
        );
        assert_eq!(notes.mode() & 0o7777, 0o644, "the default mode");
        let dir_mode = |d: &str| std::fs::metadata(p.join(d)).unwrap().mode() & 0o7777;
        assert_eq!((dir_mode("private"), dir_mode("bin")), (0o700, 0o750));
    };
    check(p);
    let text = unmount(&m);
    assert!(text.contains("all uploads finished"), "{text}");
    // The bucket has the s3fs encoding.
    let link = s.backend().get("bkt", "ws/bin/rel").unwrap();
    assert_eq!(&link.data[..], b"run.sh");
    assert_eq!(link.metadata["mode"], (0o120_777u32).to_string());
    assert_eq!(
        meta(&s, "ws/bin/run.sh")["mode"],
        (0o100_755u32).to_string()
    );
    assert_eq!(meta(&s, "ws/notes.txt")["uid"], "4321");
    assert_eq!(meta(&s, "ws/notes.txt")["mtime"], "1600000000.000");
    assert_eq!(meta(&s, "ws/notes.txt")["atime"], "1500000000.000");
    assert_eq!(meta(&s, "ws/private/")["atime"], "1400000000.000");
    assert_eq!(meta(&s, "ws/private/")["mode"], (0o040_700u32).to_string());
    assert_eq!(meta(&s, "ws/bin/")["mode"], (0o040_750u32).to_string());

    // From the saved manifest: no HEAD, no data read for stat or readlink.
    let m = mount(&s, "s3://bkt/ws", &args);
    assert!(
        m.log().contains("loaded the stored manifest"),
        "{}",
        m.log()
    );
    let heads = s.backend().counters.head();
    let gets = s.backend().counters.get();
    let md = std::fs::symlink_metadata(m.path().join("bin/abs")).unwrap();
    assert!(md.file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(m.path().join("bin/abs")).unwrap(),
        Path::new("/usr/bin/env")
    );
    assert_eq!(
        (s.backend().counters.head(), s.backend().counters.get()),
        (heads, gets)
    );
    check(m.path());

    // A mode change of an uploaded file is a copy onto itself, not an upload.
    let (puts, copies) = (
        s.backend().counters.put(),
        s.backend()
            .counters
            .copy
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    std::fs::set_permissions(m.path().join("notes.txt"), PermissionsExt::from_mode(0o600)).unwrap();
    assert_eq!(meta(&s, "ws/notes.txt")["mode"], (0o100_600u32).to_string());
    assert_eq!(
        s.backend()
            .counters
            .copy
            .load(std::sync::atomic::Ordering::Relaxed),
        copies + 1
    );
    assert_eq!(s.backend().counters.put(), puts, "no upload");
    assert_eq!(meta(&s, "ws/notes.txt")["uid"], "4321", "the rest is kept");
    unmount(&m);

    // Without a manifest, a listing and HEADs of the few objects find the same.
    assert!(s.backend().delete("bkt", "ws/.pai-mount/manifest.v1"));
    let m = mount(&s, "s3://bkt/ws", &args);
    assert!(m.log().contains("listing the prefix"), "{}", m.log());
    let p = m.path();
    assert_eq!(
        std::fs::read_link(p.join("bin/rel")).unwrap(),
        Path::new("run.sh")
    );
    assert_eq!(
        std::fs::metadata(p.join("notes.txt")).unwrap().mode() & 0o7777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(p.join("notes.txt"))
            .unwrap()
            .accessed()
            .unwrap(),
        accessed,
        "the access time survives the metadata copy and comes back from a HEAD"
    );
    assert_eq!(run(p, "bin/run.sh", &[]), "ran\n");
    // A symlink's rename keeps it a symlink; unlink removes the object.
    std::fs::rename(p.join("bin/abs"), p.join("abs2")).unwrap();
    assert_eq!(
        std::fs::read_link(p.join("abs2")).unwrap(),
        Path::new("/usr/bin/env")
    );
    std::fs::remove_file(p.join("bin/rel")).unwrap();
    unmount(&m);
    assert!(s.backend().get("bkt", "ws/bin/rel").is_none());
    assert_eq!(
        &s.backend().get("bkt", "ws/abs2").unwrap().data[..],
        b"/usr/bin/env"
    );
}

#[test]
fn objects_written_by_s3fs_look_the_same_through_the_mount() {
    let s = server();
    s.backend().put_with(
        "bkt",
        "fs/link",
        b"target/file".to_vec(),
        &[("mode", "41471"), ("uid", "0"), ("gid", "0")],
    );
    s.backend().put_with(
        "bkt",
        "fs/tool",
        b"#!/bin/sh\n".to_vec(),
        &[("mode", "33261"), ("mtime", "1500000000")],
    );
    s.backend().put("bkt", "fs/plain", b"x".to_vec());
    // The first listing of a small prefix HEADs its objects; `--attrs off` does not.
    let m = mount(&s, "s3://bkt/fs", &["--read-only"]);
    let p = m.path();
    assert_eq!(
        std::fs::read_link(p.join("link")).unwrap(),
        Path::new("target/file")
    );
    let tool = std::fs::metadata(p.join("tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o755);
    assert_eq!(
        tool.modified().unwrap(),
        UNIX_EPOCH + Duration::from_secs(1_500_000_000)
    );
    assert_eq!(
        std::fs::metadata(p.join("plain")).unwrap().mode() & 0o7777,
        0o644
    );
    drop(m);
    let m = mount(&s, "s3://bkt/fs", &["--read-only", "--attrs", "off"]);
    assert!(!std::fs::symlink_metadata(m.path().join("link"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn git_tar_and_cp_a_round_trip_through_a_remount() {
    let s = server();
    let staging = tempfile::tempdir().unwrap();
    let st = staging.path().join("s");
    let args = ["--staging-dir", st.to_str().unwrap()];
    // A repository with an executable script and a symlink, on local disk.
    let src = tempfile::tempdir().unwrap();
    let repo = src.path().join("repo");
    std::fs::create_dir_all(repo.join("tools")).unwrap();
    std::fs::write(repo.join("tools/build.sh"), "#!/bin/sh\necho built\n").unwrap();
    std::fs::set_permissions(
        repo.join("tools/build.sh"),
        PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("tools/build.sh", repo.join("build")).unwrap();
    std::fs::write(repo.join("README"), "hello\n").unwrap();
    run(&repo, "git", &["init", "-q", "-b", "main"]);
    run(&repo, "git", &["add", "."]);
    run(
        &repo,
        "git",
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@e",
            "commit",
            "-qm",
            "init",
        ],
    );
    let tarball = src.path().join("repo.tar");
    run(
        src.path(),
        "tar",
        &[
            "cf",
            tarball.to_str().unwrap(),
            "-C",
            repo.to_str().unwrap(),
            "tools",
            "build",
            "README",
        ],
    );

    let m = mount(&s, "s3://bkt/home", &args);
    let p = m.path();
    run(p, "git", &["clone", "-q", repo.to_str().unwrap(), "clone"]);
    std::fs::create_dir(p.join("x")).unwrap();
    run(&p.join("x"), "tar", &["xf", tarball.to_str().unwrap()]);
    run(
        p,
        "cp",
        &["-a", repo.join("tools").to_str().unwrap(), "copied"],
    );
    unmount(&m);

    let m = mount(&s, "s3://bkt/home", &args);
    let p = m.path();
    let clone = p.join("clone");
    assert_eq!(run(&clone, "git", &["status", "--porcelain"]), "", "clean");
    assert_eq!(run(&clone, "./build", &[]), "built\n");
    assert!(std::fs::symlink_metadata(clone.join("build"))
        .unwrap()
        .file_type()
        .is_symlink());
    run(
        &p.join("x"),
        "tar",
        &["--compare", "-f", tarball.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::metadata(p.join("copied/build.sh")).unwrap().mode() & 0o7777,
        0o755
    );
}

/// A wheel of one module, built by hand (a zip with its metadata), so that installing it
/// needs no network and no build backend.
fn write_wheel(dir: &Path) -> std::path::PathBuf {
    let wheel = dir.join("hello_ws-0.1-py3-none-any.whl");
    let script = r#"
import base64, hashlib, sys, zipfile
files = {
    "hello_ws/__init__.py": "def greet():\n    return 'hi from the mount'\n",
    "hello_ws-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: hello-ws\nVersion: 0.1\n",
    "hello_ws-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for name, text in files.items():
        data = text.encode()
        z.writestr(name, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("hello_ws-0.1.dist-info/RECORD,,")
    z.writestr("hello_ws-0.1.dist-info/RECORD", "\n".join(record) + "\n")
"#;
    let out = Command::new("python3")
        .args(["-c", script, wheel.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wheel
}

#[test]
fn a_python_venv_on_the_mount_installs_imports_and_survives_a_remount() {
    let s = server();
    let staging = tempfile::tempdir().unwrap();
    let st = staging.path().join("s");
    let args = ["--staging-dir", st.to_str().unwrap()];
    let wheels = tempfile::tempdir().unwrap();
    let wheel = write_wheel(wheels.path());
    let m = mount(&s, "s3://bkt/envs", &args);
    let p = m.path();
    run(p, "python3", &["-m", "venv", "venv"]);
    run(
        p,
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
    let greet = ["-c", "import hello_ws; print(hello_ws.greet())"];
    assert_eq!(run(p, "venv/bin/python", &greet), "hi from the mount\n");
    unmount(&m);
    let m = mount(&s, "s3://bkt/envs", &args);
    let p = m.path();
    assert!(std::fs::symlink_metadata(p.join("venv/bin/python"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(run(p, "venv/bin/python", &greet), "hi from the mount\n");
    // pip's own entry point is an executable script (its `#!` names the first mount's path,
    // as a venv moved on local disk would, so it is run through the interpreter here).
    let pip = std::fs::metadata(p.join("venv/bin/pip")).unwrap();
    assert_eq!(pip.mode() & 0o111, 0o111);
    run(p, "venv/bin/python", &["venv/bin/pip", "--version"]);
}

/// Bytes the server received in PUT and part bodies.
fn bytes_in(s: &TestServer) -> u64 {
    s.backend()
        .counters
        .bytes_in
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn appends_and_partial_overwrites_send_what_changed() {
    use std::io::{Seek, SeekFrom, Write};
    let s = slow_server(20);
    let staging = tempfile::tempdir().unwrap();
    let st = staging.path().join("s");
    let args = [
        "--staging-dir",
        st.to_str().unwrap(),
        "--upload-part-size",
        "8M",
    ];
    let big: Vec<u8> = (0..64u32 << 20).map(|i| (i % 253) as u8).collect();
    s.backend().put("bkt", "logs/big.bin", big.clone());
    let m = mount(&s, "s3://bkt/logs", &args);
    let log = m.path().join("train.log");
    // A training loop's log: open, append 100 KB, close, other work, 100 times.
    let chunk = vec![b'x'; 100_000];
    let mut sent_from = None;
    let mut written = 0u64;
    for i in 0..100 {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log)
            .unwrap();
        f.write_all(&chunk).unwrap();
        drop(f);
        written += chunk.len() as u64;
        if sent_from.is_none() && written >= 6 << 20 {
            // From here on the object is past the minimum part: appends are patches.
            std::thread::sleep(Duration::from_millis(300));
            sent_from = Some((bytes_in(&s), i));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = unmount(&m);
    assert!(text.contains("all uploads finished"), "{text}");
    let daemon_log = m.log();
    let obj = s.backend().get("bkt", "logs/train.log").unwrap();
    assert_eq!(obj.data.len() as u64, written);
    assert!(obj.data.iter().all(|&b| b == b'x'));
    let (before, at) = sent_from.unwrap();
    let appended_after = (99 - at) as u64 * chunk.len() as u64;
    let sent_after = bytes_in(&s) - before;
    assert!(
        sent_after <= 2 * appended_after + (1 << 20),
        "sent {sent_after} bytes for {appended_after} appended (the manifest included)\n{daemon_log}"
    );

    // A 4 KiB overwrite inside a 64 MiB object sends about one part, not the object.
    let m = mount(&s, "s3://bkt/logs", &args);
    let before = bytes_in(&s);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.path().join("big.bin"))
        .unwrap();
    f.seek(SeekFrom::Start(40 << 20)).unwrap();
    f.write_all(&[0xEE; 4096]).unwrap();
    drop(f);
    unmount(&m);
    let sent = bytes_in(&s) - before;
    assert!(
        sent <= (9 << 20) + (1 << 20),
        "sent {sent} bytes for a 4 KiB change"
    );
    let got = s.backend().get("bkt", "logs/big.bin").unwrap();
    let mut want = big;
    want[40 << 20..(40 << 20) + 4096].fill(0xEE);
    assert!(got.data[..] == want[..], "the new version is exact");
}

/// With a disk cache, what the mount uploads goes into it under the new ETag: after a remount,
/// reading those files (a `git status` re-hashing a checkout, a cold `import`) needs no GET.
#[test]
fn written_files_are_read_from_the_disk_cache_after_a_remount() {
    let s = server();
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().join("c");
    let args = [
        "--cache-dir",
        cache_dir.to_str().unwrap(),
        "--cache-min-free",
        "0",
    ];
    let mut files: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| {
            (
                format!("src/m{i}.py"),
                format!("x = {i}\n").repeat(i + 1).into_bytes(),
            )
        })
        .collect();
    // Two cache blocks and a bit.
    files.push((
        "big.bin".into(),
        (0..9_000_000u32).map(|i| (i % 251) as u8).collect(),
    ));
    let m = mount(&s, "s3://bkt/ws", &args);
    std::fs::create_dir(m.path().join("src")).unwrap();
    for (k, v) in &files {
        std::fs::write(m.path().join(k), v).unwrap();
    }
    // One file is rewritten after its first upload: only its last version may be read back.
    std::fs::File::open(m.path().join("src/m0.py"))
        .unwrap()
        .sync_all()
        .unwrap();
    std::fs::write(m.path().join("src/m0.py"), b"x = 'second'\n").unwrap();
    files[0].1 = b"x = 'second'\n".to_vec();
    unmount(&m);

    let m = mount(&s, "s3://bkt/ws", &args);
    let gets = s.backend().counters.get();
    for (k, v) in &files {
        assert!(std::fs::read(m.path().join(k)).unwrap() == *v, "{k}");
    }
    assert_eq!(
        s.backend().counters.get(),
        gets,
        "every read came from the disk cache"
    );
    unmount(&m);
}

//! `pai-mount cp` against the S3 test server: exact copies, resume after a kill, bad targets.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use pai_test_s3::{ServerConfig, TestServer};

fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect()
}

fn put_dataset(s: &TestServer) -> BTreeMap<String, String> {
    let mut want = BTreeMap::new();
    for i in 0..60u8 {
        let key = format!("x/{}/{i}.jpg", i % 7);
        let body = data(i, 10_000 + i as usize * 997);
        want.insert(key.clone(), sha(&body));
        s.backend().put("bkt", &format!("data/{key}"), body);
    }
    let big = data(200, (5 << 20) + 4321);
    want.insert("big.bin".into(), sha(&big));
    s.backend().put("bkt", "data/big.bin", big);
    s.backend().put("bkt", "other/not-copied", b"x".to_vec());
    want
}

#[test]
fn copies_exactly_and_a_rerun_skips_what_is_complete() {
    let s = server();
    let want = put_dataset(&s);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("ssd/data");
    let d = dest.to_str().unwrap();
    // 503s and connections cut mid-body are retried, invisibly.
    s.backend().faults.fail_next(5);
    s.backend().faults.cut_next_gets(3, 1000);
    let out = ok(cmd(&s, &["cp", "s3://bkt/data", d, "--part-size", "1M"])
        .output()
        .unwrap());
    assert!(out.contains("copied 61 objects, skipped 0"), "{out}");
    assert_eq!(tree_sha(&dest), want);
    let gets = s.backend().counters.get();
    let out = ok(cmd(&s, &["cp", "s3://bkt/data", d]).output().unwrap());
    assert!(out.contains("copied 0 objects, skipped 61"), "{out}");
    assert!(
        s.backend().counters.get() - gets <= 1,
        "no object GETs on a rerun"
    );
    // A changed object (new ETag) and a truncated local file are copied again.
    s.backend()
        .put("bkt", "data/x/0/0.jpg", b"new version".to_vec());
    std::fs::OpenOptions::new()
        .write(true)
        .open(dest.join("x/1/1.jpg"))
        .unwrap()
        .set_len(10)
        .unwrap();
    let out = ok(cmd(&s, &["cp", "s3://bkt/data", d]).output().unwrap());
    assert!(out.contains("copied 2 objects, skipped 59"), "{out}");
    assert_eq!(
        std::fs::read(dest.join("x/0/0.jpg")).unwrap(),
        b"new version"
    );
    assert_eq!(
        sha(&std::fs::read(dest.join("x/1/1.jpg")).unwrap()),
        want["x/1/1.jpg"]
    );
}

#[test]
fn a_killed_copy_resumes_and_ends_byte_for_byte() {
    let s = TestServer::start_background(ServerConfig {
        latency: Duration::from_millis(40),
        ..ServerConfig::default()
    })
    .unwrap();
    s.backend().create_bucket("bkt");
    let want = put_dataset(&s);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    let d = dest.to_str().unwrap();
    let mut child = cmd(
        &s,
        &["cp", "s3://bkt/data", d, "--jobs", "2", "--part-size", "1M"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(900));
    let _ = Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let partial = tree_sha(&dest);
    let complete: Vec<_> = partial.keys().filter(|k| !k.ends_with(".part")).collect();
    assert!(
        !complete.is_empty() && complete.len() < want.len(),
        "killed half-way: {}",
        complete.len()
    );
    for k in &complete {
        assert_eq!(
            partial[*k], want[*k],
            "{k}: a file without .part is complete"
        );
    }
    let out = ok(cmd(&s, &["cp", "s3://bkt/data", d, "--part-size", "1M"])
        .output()
        .unwrap());
    assert!(
        out.contains(&format!("skipped {}", complete.len())),
        "{out}"
    );
    assert_eq!(tree_sha(&dest), want, "every file, and no .part left");
}

#[test]
fn bad_targets_and_missing_prefixes_are_clear_errors() {
    let s = server();
    put_dataset(&s);
    let err = fails(
        cmd(&s, &["cp", "s3://bkt/nothing-here", "/tmp/pai-cp-unused"])
            .output()
            .unwrap(),
    );
    assert!(
        err.contains("no objects under s3://bkt/nothing-here"),
        "{err}"
    );
    // A read-only filesystem (root ignores modes, so a read-only tmpfs).
    let ro = tempfile::tempdir().unwrap();
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
        .arg(ro.path())
        .status()
        .unwrap()
        .success());
    let err = fails(
        cmd(&s, &["cp", "s3://bkt/data", ro.path().to_str().unwrap()])
            .output()
            .unwrap(),
    );
    let _ = Command::new("umount").arg(ro.path()).status();
    assert!(err.contains("cannot write to"), "{err}");
    // A full disk: what fits stays, the rest is reported, the exit code says so.
    let small = tempfile::tempdir().unwrap();
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(small.path())
        .status()
        .unwrap()
        .success());
    let out = cmd(
        &s,
        &[
            "cp",
            "s3://bkt/data/x",
            small.path().to_str().unwrap(),
            "--jobs",
            "1",
        ],
    )
    .output()
    .unwrap();
    let copied = tree_sha(small.path());
    let _ = Command::new("umount").arg(small.path()).status();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(err.contains("disk is full"), "{err}");
    assert!(
        !copied.is_empty(),
        "files copied before the disk filled stay"
    );
    assert!(
        copied.keys().all(|k| !k.ends_with(".part")),
        "no partial file is left"
    );
}

#[test]
fn manifest_tar_index_indexes_the_shards_for_the_loader() {
    let s = server();
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..3 {
        for ext in ["jpg", "cls"] {
            let data = format!("{i}.{ext}");
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, format!("{i:04}.{ext}"), data.as_bytes())
                .unwrap();
        }
    }
    s.backend()
        .put("bkt", "wds/shard-0000.tar", b.into_inner().unwrap());
    let out = ok(cmd(&s, &["manifest", "tar-index", "s3://bkt/wds"])
        .output()
        .unwrap());
    assert!(out.contains("indexed 1 tar shards, 3 samples"), "{out}");
    assert!(s
        .backend()
        .get("bkt", "wds/.pai-mount/tar-index.v1")
        .is_some());
}

#[test]
fn damaged_bodies_are_caught_by_the_objects_checksum_and_fetched_again() {
    use pai_test_s3::ChecksumStyle;
    let s = server();
    for (i, style) in [ChecksumStyle::S3, ChecksumStyle::Oss]
        .into_iter()
        .enumerate()
    {
        *s.backend().checksum_style.lock().unwrap() = style;
        let small = data(1, 300_000);
        let big = data(2, (3 << 20) + 777);
        s.backend()
            .put("bkt", &format!("sum{i}/small.bin"), small.clone());
        s.backend()
            .put("bkt", &format!("sum{i}/big.bin"), big.clone());
        ok(cmd(&s, &["manifest", "build", &format!("s3://bkt/sum{i}")])
            .output()
            .unwrap());
        let dir = tempfile::tempdir().unwrap();
        // Bits flipped in the first two bodies served: ranges of the big object (copied in
        // 1 MiB ranges, one at a time), checked by combining the ranges' CRCs.
        s.backend().faults.corrupt_next_gets(2);
        let out = ok(cmd(
            &s,
            &[
                "cp",
                &format!("s3://bkt/sum{i}"),
                dir.path().to_str().unwrap(),
                "--part-size",
                "1M",
                "--jobs",
                "1",
            ],
        )
        .output()
        .unwrap());
        assert_eq!(
            s.backend()
                .faults
                .corrupt_gets
                .load(std::sync::atomic::Ordering::SeqCst),
            0,
            "{style:?}: both damaged bodies were served: {out}"
        );
        assert!(
            std::fs::read(dir.path().join("small.bin")).unwrap() == small,
            "{style:?}"
        );
        assert!(
            std::fs::read(dir.path().join("big.bin")).unwrap() == big,
            "{style:?}"
        );
    }
}

//! Core tests of write-back through the filesystem, without FUSE, over an in-memory store.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};
use proptest::prelude::*;

use super::*;
use crate::error::FsError;
use crate::fs::{Fs, FsConfig, SetAttr, ROOT_INO};
use crate::ids::{Fh, InodeNo};
use crate::manifest::{self, BuildOptions};
use crate::namespace::NodeKind;
use crate::object::Source;
use crate::reader::RangeReaderFactory;

struct Rig {
    fs: Arc<Fs>,
    store: Arc<InMemory>,
    source: ObjectSource,
    dir: std::path::PathBuf,
}

fn config(dir: &Path) -> WriteConfig {
    let mut c = WriteConfig::new(dir.join("staging"));
    c.part_size = 64 << 10; // small parts, so multipart uploads are exercised
    c.retry_delay = Duration::from_millis(5);
    c.early_upload = true; // exercised here; off by default (docs/benchmarks.md)
    c
}

async fn mount(store: Arc<InMemory>, dir: &Path, stop_uploads: bool) -> Rig {
    mount_with(store, dir, stop_uploads, config(dir)).await
}

async fn mount_with(
    store: Arc<InMemory>,
    dir: &Path,
    stop_uploads: bool,
    config: WriteConfig,
) -> Rig {
    let seam = store.clone() as Arc<dyn ObjectStore>;
    mount_over(store, seam, dir, stop_uploads, config).await
}

/// A mount whose requests go through `seam` (the store itself, or a fault-injecting wrapper
/// of it); `store` is what tests inspect.
async fn mount_over(
    store: Arc<InMemory>,
    seam: Arc<dyn ObjectStore>,
    dir: &Path,
    stop_uploads: bool,
    config: WriteConfig,
) -> Rig {
    let metrics = Arc::new(Metrics::default());
    let source =
        ObjectSource::from_store(Source::parse("s3://bkt").unwrap(), seam, metrics.clone());
    let (ns, _) = manifest::load_or_list(&source, &BuildOptions::default())
        .await
        .unwrap();
    let fs = Fs::new(
        ns,
        Arc::new(RangeReaderFactory::new(source.clone())),
        FsConfig::default(),
        metrics.clone(),
    );
    let (wb, recovery) = WriteBack::open(config, source.clone(), metrics, || fs.new_ino()).unwrap();
    if stop_uploads {
        wb.stop();
    }
    let fs = Arc::new(fs.with_write_back(wb, recovery.nodes));
    Rig {
        fs,
        store,
        source,
        dir: dir.to_path_buf(),
    }
}

async fn setup(files: &[(&str, Vec<u8>)], dir: &Path) -> Rig {
    let store = Arc::new(InMemory::new());
    for (k, v) in files {
        store
            .put(&StorePath::from(*k), v.clone().into())
            .await
            .unwrap();
    }
    mount(store, dir, false).await
}

async fn object(store: &InMemory, key: &str) -> Option<Vec<u8>> {
    match store.get(&StorePath::from(key)).await {
        Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("{e}"),
    }
}

impl Rig {
    fn ino(&self, path: &str) -> Result<InodeNo, FsError> {
        let mut ino = ROOT_INO;
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            ino = self.fs.lookup(ino, seg.as_bytes())?.ino;
        }
        Ok(ino)
    }

    fn split<'a>(&self, path: &'a str) -> (InodeNo, &'a str) {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        (self.ino(dir).unwrap(), name)
    }

    async fn read_all(&self, path: &str) -> Result<Vec<u8>, FsError> {
        let fh = self.fs.open(self.ino(path)?, false)?;
        let mut out = Vec::new();
        loop {
            let b = self.fs.read(fh, out.len() as u64, 100_000).await?;
            if b.is_empty() {
                break;
            }
            out.extend_from_slice(&b);
        }
        self.fs.release(fh).await?;
        Ok(out)
    }

    async fn write_file(&self, path: &str, data: &[u8]) -> Fh {
        let (dir, name) = self.split(path);
        let fh = match self.fs.create(dir, name.as_bytes()).await {
            Ok((_, fh)) => fh,
            Err(FsError::Exists) => {
                let ino = self.ino(path).unwrap();
                let fh = self.fs.open(ino, true).unwrap();
                self.fs
                    .setattr(
                        ino,
                        SetAttr {
                            size: Some(0),
                            fh: Some(fh),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                fh
            }
            Err(e) => panic!("{e}"),
        };
        for (i, chunk) in data.chunks(50_000).enumerate() {
            self.fs.write(fh, (i * 50_000) as u64, chunk).await.unwrap();
        }
        fh
    }

    async fn close(&self, fh: Fh) {
        self.fs.flush(fh).await.unwrap();
        self.fs.release(fh).await.unwrap();
    }

    fn wb(&self) -> &Arc<WriteBack> {
        self.fs.write_back().unwrap()
    }
}

/// Panics with a short message (not the whole content) when `got` and `want` differ.
#[track_caller]
fn same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: {} bytes, want {}; first difference at {first:?}",
            got.len(),
            want.len()
        );
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn new_files_are_readable_at_once_and_uploaded_after_close() {
    let tmp = tempfile::tempdir().unwrap();
    let rig = setup(&[("d/old.txt", b"old".to_vec())], tmp.path()).await;
    let big = pattern(300_000, 1); // five 64 KiB parts
    let fh = rig.write_file("d/big.bin", &big).await;
    assert_eq!(
        rig.read_all("d/big.bin").await.unwrap(),
        big,
        "read your writes"
    );
    rig.fs.fsync(fh).await.unwrap();
    assert_eq!(object(&rig.store, "d/big.bin").await.unwrap(), big);
    rig.close(fh).await;
    let fh = rig.write_file("d/small.txt", b"hello").await;
    rig.close(fh).await;
    let empty = rig.write_file("empty", b"").await;
    rig.close(empty).await;
    rig.wb().drain(|_| {}).await;
    assert_eq!(object(&rig.store, "d/small.txt").await.unwrap(), b"hello");
    assert_eq!(object(&rig.store, "empty").await.unwrap(), b"");
    assert_eq!(
        rig.read_all("d/big.bin").await.unwrap(),
        big,
        "read from the kept copy once uploaded"
    );
    let mut names = Vec::new();
    rig.fs
        .readdir(rig.ino("d").unwrap(), 0, false, |e| {
            names.push(e.name.to_string());
            false
        })
        .unwrap();
    assert_eq!(names, [".", "..", "old.txt", "big.bin", "small.txt"]);
    let journal = std::fs::read_dir(rig.dir.join("staging/journal"))
        .unwrap()
        .count();
    assert_eq!(journal, 0, "records are removed after upload");
    let data = std::fs::read_dir(rig.dir.join("staging/data"))
        .unwrap()
        .count();
    assert_eq!(
        data, 3,
        "staging files are kept as local copies after upload"
    );
    assert_eq!(rig.wb().kept_bytes(), 300_000 + 5);
    let m = rig.fs.metrics();
    assert_eq!(m.uploads_done.load(std::sync::atomic::Ordering::Relaxed), 3);
}

#[tokio::test]
async fn partial_overwrites_truncates_and_appends_of_existing_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let orig = pattern(200_000, 7);
    let rig = setup(
        &[("f.bin", orig.clone()), ("log", b"line1\n".to_vec())],
        tmp.path(),
    )
    .await;
    let ino = rig.ino("f.bin").unwrap();
    let fh = rig.fs.open(ino, true).unwrap();
    rig.fs.write(fh, 100_000, b"PATCH").await.unwrap();
    rig.fs.fsync(fh).await.unwrap();
    let mut want = orig.clone();
    want[100_000..100_005].copy_from_slice(b"PATCH");
    assert_eq!(object(&rig.store, "f.bin").await.unwrap(), want);
    rig.fs
        .setattr(
            ino,
            SetAttr {
                size: Some(1000),
                fh: Some(fh),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    rig.close(fh).await;
    rig.wb().drain(|_| {}).await;
    assert_eq!(object(&rig.store, "f.bin").await.unwrap(), want[..1000]);
    // An append, as a log writer does it.
    let log = rig.ino("log").unwrap();
    let fh = rig.fs.open(log, true).unwrap();
    let size = rig.fs.getattr(log).unwrap().size;
    rig.fs.write(fh, size, b"line2\n").await.unwrap();
    rig.close(fh).await;
    // truncate(2) by path, with no handle open, is a change of its own.
    rig.fs
        .setattr(
            rig.ino("f.bin").unwrap(),
            SetAttr {
                size: Some(10),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    rig.wb().drain(|_| {}).await;
    assert_eq!(object(&rig.store, "log").await.unwrap(), b"line1\nline2\n");
    assert_eq!(object(&rig.store, "f.bin").await.unwrap(), want[..10]);
    let fetched = rig
        .fs
        .metrics()
        .staged_fetch_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    // f.bin once and log once: the staging file of f.bin was kept after its upload, so the
    // truncate did not fetch it again.
    assert_eq!(fetched, 200_000 + 6);
}

#[tokio::test]
async fn directory_link_counts_follow_mkdir_rmdir_and_rename() {
    let tmp = tempfile::tempdir().unwrap();
    let rig = setup(
        &[
            ("a/x", b"1".to_vec()),
            ("a/b/y", b"2".to_vec()),
            ("f", b"3".to_vec()),
        ],
        tmp.path(),
    )
    .await;
    let nlink = |path: &str| rig.fs.getattr(rig.ino(path).unwrap()).unwrap().nlink;
    assert_eq!((nlink(""), nlink("a"), nlink("a/b")), (3, 3, 2));
    let a = rig.ino("a").unwrap();
    rig.fs.mkdir(a, b"n").await.unwrap();
    rig.fs.mkdir(ROOT_INO, b"m").await.unwrap();
    assert_eq!(
        (nlink(""), nlink("a"), nlink("a/n"), nlink("m")),
        (4, 4, 2, 2)
    );
    rig.fs.mkdir(rig.ino("m").unwrap(), b"k").await.unwrap();
    assert_eq!(nlink("m"), 3, "a directory made here counts its own");
    // Files deep below do not count, nor does a file made beside the directories.
    let (_, fh) = rig
        .fs
        .create(rig.ino("a/n").unwrap(), b"deep")
        .await
        .unwrap();
    rig.close(fh).await;
    rig.write_file("a/z", b"z").await;
    assert_eq!(nlink("a"), 4);
    rig.fs.rmdir(a, b"n").await.unwrap_err(); // not empty
    rig.fs
        .unlink(rig.ino("a/n").unwrap(), b"deep")
        .await
        .unwrap();
    rig.fs.rmdir(a, b"n").await.unwrap();
    assert_eq!(nlink("a"), 3);
    rig.fs.rename(a, b"b", ROOT_INO, b"c", false).await.unwrap();
    assert_eq!((nlink(""), nlink("a"), nlink("c")), (5, 2, 2));
}

#[tokio::test]
async fn unlink_rename_mkdir_rmdir() {
    let tmp = tempfile::tempdir().unwrap();
    let rig = setup(
        &[
            ("a/x", b"x".to_vec()),
            ("a/sub/y", b"y".to_vec()),
            ("b", b"b".to_vec()),
        ],
        tmp.path(),
    )
    .await;
    // Rename of a file of the bucket: copy, then delete.
    let x_ino = rig.ino("a/x").unwrap();
    rig.fs
        .rename(rig.ino("a").unwrap(), b"x", ROOT_INO, b"x2", false)
        .await
        .unwrap();
    assert_eq!(object(&rig.store, "a/x").await, None);
    assert_eq!(object(&rig.store, "x2").await.unwrap(), b"x");
    assert_eq!(
        rig.ino("x2").unwrap(),
        x_ino,
        "a moved file keeps its inode"
    );
    assert!(matches!(rig.ino("a/x"), Err(FsError::NotFound)));
    // Rename of a file still pending upload: it goes to the new key only.
    let fh = rig.write_file("new", b"fresh").await;
    rig.fs.flush(fh).await.unwrap();
    rig.fs
        .rename(ROOT_INO, b"new", ROOT_INO, b"b", false)
        .await
        .unwrap();
    rig.fs.release(fh).await.unwrap();
    rig.wb().drain(|_| {}).await;
    assert_eq!(object(&rig.store, "new").await, None);
    assert_eq!(object(&rig.store, "b").await.unwrap(), b"fresh");
    // Directories.
    assert!(matches!(
        rig.fs.rmdir(ROOT_INO, b"a").await,
        Err(FsError::NotEmpty)
    ));
    rig.fs.mkdir(ROOT_INO, b"empty").await.unwrap();
    assert!(matches!(
        rig.fs.mkdir(ROOT_INO, b"empty").await,
        Err(FsError::Exists)
    ));
    rig.fs
        .rename(ROOT_INO, b"a", ROOT_INO, b"c", false)
        .await
        .unwrap();
    assert_eq!(object(&rig.store, "c/sub/y").await.unwrap(), b"y");
    assert_eq!(object(&rig.store, "a/sub/y").await, None);
    assert_eq!(rig.read_all("c/sub/y").await.unwrap(), b"y");
    assert!(matches!(rig.ino("a"), Err(FsError::NotFound)));
    rig.fs
        .unlink(rig.ino("c/sub").unwrap(), b"y")
        .await
        .unwrap();
    rig.fs.rmdir(rig.ino("c").unwrap(), b"sub").await.unwrap();
    rig.fs.rmdir(ROOT_INO, b"c").await.unwrap();
    rig.fs.rmdir(ROOT_INO, b"empty").await.unwrap();
    assert!(matches!(
        rig.fs.unlink(ROOT_INO, b"nope").await,
        Err(FsError::NotFound)
    ));
    // Unlink of a file while its upload is pending: nothing reaches the bucket, and a handle
    // that has it open still reads it.
    let fh = rig.write_file("gone", &pattern(100_000, 3)).await;
    rig.fs.flush(fh).await.unwrap();
    let reader = rig.fs.open(rig.ino("gone").unwrap(), false).unwrap();
    rig.fs.unlink(ROOT_INO, b"gone").await.unwrap();
    rig.fs.release(fh).await.unwrap();
    same(
        &rig.fs.read(reader, 0, 200_000).await.unwrap(),
        &pattern(100_000, 3),
        "an unlinked open file",
    );
    rig.fs.release(reader).await.unwrap();
    rig.wb().drain(|_| {}).await;
    assert_eq!(object(&rig.store, "gone").await, None);
    let mut keys: Vec<String> = rig
        .store
        .list(None)
        .map(|m| m.unwrap().location.to_string())
        .collect::<Vec<_>>()
        .await;
    keys.sort();
    assert_eq!(keys, ["b", "x2"]);
    // The merged namespace is what a manifest of the bucket now says.
    let entries = rig.fs.merged_entries();
    let names: Vec<String> = entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.key).to_string())
        .collect();
    assert_eq!(names, ["b", "x2"]);
    // A mode change of an uploaded file goes to the object's metadata (here by a rewrite: the
    // in-memory store has no copy-onto-itself; the S3 tests check the copy).
    let b = rig.ino("b").unwrap();
    let a = rig
        .fs
        .setattr(
            b,
            SetAttr {
                mode: Some(0o100_600),
                uid: Some(4242),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((a.perm, a.uid), (0o600, 4242));
    let head = rig
        .fs
        .write_back()
        .unwrap()
        .source()
        .head_meta("b")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head.attrs.mode, Some(0o100_600));
    assert_eq!(head.attrs.uid, Some(4242));
    let entries = rig.fs.merged_entries();
    assert_eq!(entries[0].attrs.mode, Some(0o100_600));
    for bad in [&b".."[..], b"a\nb", b"", &[0xff, 0xfe]] {
        assert!(rig.fs.create(ROOT_INO, bad).await.is_err(), "{bad:?}");
    }
    assert_eq!(
        rig.fs
            .create(ROOT_INO, b".pai-mount")
            .await
            .unwrap_err()
            .errno(),
        libc::EPERM
    );
}

use futures::StreamExt;

#[tokio::test]
async fn closing_a_duplicate_descriptor_uploads_nothing_until_the_file_is_released() {
    let tmp = tempfile::tempdir().unwrap();
    let rig = setup(&[], tmp.path()).await;
    let (_, fh) = rig.fs.create(ROOT_INO, b"dd.out").await.unwrap();
    // dd opens the file, dup2s it onto stdout and closes the original descriptor.
    rig.fs.flush(fh).await.unwrap();
    rig.fs.write(fh, 0, &pattern(70_000, 1)).await.unwrap();
    rig.close(fh).await;
    rig.wb().drain(|_| {}).await;
    same(
        &object(&rig.store, "dd.out").await.unwrap(),
        &pattern(70_000, 1),
        "dd.out",
    );
    let done = rig
        .fs
        .metrics()
        .uploads_done
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(done, 1, "the empty first version was never uploaded");
}

#[tokio::test]
async fn paths_whose_keys_pass_the_stores_limit_are_enametoolong_at_create_mkdir_and_rename() {
    let tmp = tempfile::tempdir().unwrap();
    let rig = setup(&[], tmp.path()).await;
    let mut dir = ROOT_INO;
    for c in [b'a', b'b', b'c', b'd'] {
        dir = rig.fs.mkdir(dir, &[c; 250]).await.unwrap().ino;
    }
    // The directory is 4 x 250 + 3 = 1003 bytes; its marker key 1004.
    let fits = vec![b'f'; 1024 - 1004];
    let (_, fh) = rig.fs.create(dir, &fits).await.unwrap();
    rig.close(fh).await;
    let long = vec![b'g'; 1024 - 1004 + 1];
    fn errno<T>(r: Result<T, FsError>) -> i32 {
        r.map(|_| ()).unwrap_err().errno()
    }
    assert_eq!(errno(rig.fs.create(dir, &long).await), libc::ENAMETOOLONG);
    // A directory needs one byte more: its marker ends in '/'.
    let dir_name = vec![b'h'; fits.len()];
    assert_eq!(
        errno(rig.fs.mkdir(dir, &dir_name).await),
        libc::ENAMETOOLONG
    );
    rig.fs.mkdir(dir, &dir_name[1..]).await.unwrap();
    assert_eq!(
        errno(rig.fs.rename(dir, &fits, dir, &long, false).await),
        libc::ENAMETOOLONG
    );
    rig.wb().drain(|_| {}).await;
    assert_eq!(
        rig.wb().status().failed.len(),
        0,
        "nothing unuploadable was accepted"
    );
}

#[tokio::test]
async fn uploads_that_meet_failed_parts_and_completes_are_retried_and_land_whole() {
    use crate::object::faulty::{Fault, FaultyStore, Op};
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    let faulty = FaultyStore::new(store.clone());
    let mut c = config(tmp.path());
    c.part_size = 5 << 20;
    let rig = mount_over(store, faulty.clone(), tmp.path(), false, c).await;
    faulty.inject(Op::UploadPart, Fault::Fail, Some(2));
    faulty.inject(Op::CompleteUpload, Fault::Throttle, Some(1));
    faulty.inject(Op::Put, Fault::Fail, Some(1));
    let big = pattern(12 << 20, 3);
    let fh = rig.write_file("big.bin", &big).await;
    rig.close(fh).await;
    let fh = rig.write_file("small.txt", b"hello").await;
    rig.close(fh).await;
    rig.wb().drain(|_| {}).await;
    same(
        &object(&rig.store, "big.bin").await.unwrap(),
        &big,
        "big.bin",
    );
    assert_eq!(object(&rig.store, "small.txt").await.unwrap(), b"hello");
    assert_eq!(faulty.injected(), 4);
    assert!(
        rig.fs
            .metrics()
            .upload_retries
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
    assert_eq!(rig.wb().status().failed.len(), 0);
}

#[tokio::test]
async fn fallocate_extends_with_zeros_or_only_reserves_and_the_upload_has_the_size() {
    let tmp = tempfile::tempdir().unwrap();
    let rig = setup(&[], tmp.path()).await;
    let (attr, fh) = rig.fs.create(ROOT_INO, b"prealloc.bin").await.unwrap();
    rig.fs.write(fh, 0, b"head").await.unwrap();
    rig.fs.fallocate(fh, 0, 1 << 20, 0).await.unwrap();
    assert_eq!(rig.fs.getattr(attr.ino).unwrap().size, 1 << 20);
    rig.fs
        .fallocate(fh, 0, 4 << 20, libc::FALLOC_FL_KEEP_SIZE)
        .await
        .unwrap();
    assert_eq!(rig.fs.getattr(attr.ino).unwrap().size, 1 << 20, "KEEP_SIZE");
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    assert_eq!(
        rig.fs
            .fallocate(fh, 0, 10, punch)
            .await
            .unwrap_err()
            .errno(),
        libc::EOPNOTSUPP
    );
    rig.close(fh).await;
    rig.wb().drain(|_| {}).await;
    let mut want = vec![0u8; 1 << 20];
    want[..4].copy_from_slice(b"head");
    same(
        &object(&rig.store, "prealloc.bin").await.unwrap(),
        &want,
        "prealloc.bin",
    );
}

#[tokio::test]
async fn fstat_of_a_file_unlinked_while_open_answers_with_nlink_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let rig = setup(&[], tmp.path()).await;
    let (attr, fh) = rig.fs.create(ROOT_INO, b"tmp.XXXX").await.unwrap();
    rig.fs.write(fh, 0, &pattern(5_000, 2)).await.unwrap();
    assert_eq!(rig.fs.getattr_open(attr.ino, Some(fh)).unwrap().nlink, 1);
    rig.fs.unlink(ROOT_INO, b"tmp.XXXX").await.unwrap();
    let after = rig.fs.getattr_open(attr.ino, Some(fh)).unwrap();
    assert_eq!((after.nlink, after.size), (0, 5_000));
    // Reads and writes through the handle keep working; nothing reaches the bucket.
    rig.fs.write(fh, 5_000, b"more").await.unwrap();
    assert_eq!(rig.fs.read(fh, 4_998, 10).await.unwrap().len(), 6);
    rig.close(fh).await;
    rig.wb().drain(|_| {}).await;
    assert!(object(&rig.store, "tmp.XXXX").await.is_none());
}

#[tokio::test]
async fn passthrough_handles_follow_the_kernels_mode_rules_and_writes_behind_the_daemon_land() {
    use crate::fs::{Access, IoMode};
    use std::sync::atomic::Ordering::Relaxed;
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    store
        .put(&StorePath::from("remote.bin"), b"remote".to_vec().into())
        .await
        .unwrap();
    // Passthrough is off with early uploads, which must see every write.
    let mut c = config(tmp.path());
    c.early_upload = false;
    c.keep_staged = 0; // what is checked here is that handles release their staging files
    let rig = mount_with(store, tmp.path(), false, c).await;
    rig.fs.enable_passthrough(true);
    assert!(rig.fs.passthrough_enabled());
    let (_, w) = rig.fs.create(ROOT_INO, b"ck.pt").await.unwrap();
    let IoMode::Passthrough { staged, .. } = rig.fs.io_mode(w, Access::Write).unwrap() else {
        panic!("a new write-only file goes straight to its staging file");
    };
    // The kernel's writes, which the daemon never sees.
    let v1 = pattern(200_000, 3);
    staged.write_at(&v1, 0).unwrap();
    let ino = rig.ino("ck.pt").unwrap();
    assert_eq!(rig.fs.getattr(ino).unwrap().size, 200_000, "size read back");
    // While the inode is in passthrough mode: readers and writers join it, read-write
    // handles go through the daemon without the page cache.
    let r = rig.fs.open(ino, false).unwrap();
    assert!(matches!(
        rig.fs.io_mode(r, Access::Read).unwrap(),
        IoMode::Passthrough { .. }
    ));
    let rw = rig.fs.open(ino, true).unwrap();
    assert!(matches!(
        rig.fs.io_mode(rw, Access::ReadWrite).unwrap(),
        IoMode::Direct
    ));
    rig.fs.write(rw, 0, b"HEAD").await.unwrap();
    rig.close(rw).await;
    rig.close(w).await;
    rig.wb().drain(|_| {}).await;
    let mut want = v1.clone();
    want[..4].copy_from_slice(b"HEAD");
    same(&object(&rig.store, "ck.pt").await.unwrap(), &want, "ck.pt");
    let done = rig.fs.metrics().uploads_done.load(Relaxed);

    // A writer that writes nothing uploads nothing; two writes within one timestamp tick are
    // both seen (the mtime sentinel), and the last one lands.
    let w = rig.fs.open(ino, true).unwrap();
    assert!(matches!(
        rig.fs.io_mode(w, Access::Write).unwrap(),
        IoMode::Passthrough { .. }
    ));
    rig.close(w).await;
    rig.wb().drain(|_| {}).await;
    assert_eq!(rig.fs.metrics().uploads_done.load(Relaxed), done);
    let w = rig.fs.open(ino, true).unwrap();
    let IoMode::Passthrough { staged, .. } = rig.fs.io_mode(w, Access::Write).unwrap() else {
        panic!("the reader keeps the inode in passthrough mode");
    };
    staged.write_at(b"1", 10).unwrap();
    rig.fs.flush(w).await.unwrap();
    staged.write_at(b"2", 11).unwrap();
    rig.close(w).await;
    rig.wb().drain(|_| {}).await;
    want[10..12].copy_from_slice(b"12");
    same(&object(&rig.store, "ck.pt").await.unwrap(), &want, "ck.pt");
    let staging_files = || {
        std::fs::read_dir(rig.dir.join("staging/data"))
            .unwrap()
            .count()
    };
    assert_eq!(staging_files(), 1, "kept while a passthrough reader has it");
    rig.fs.release(r).await.unwrap();
    assert_eq!(
        staging_files(),
        0,
        "dropped with the last passthrough handle"
    );

    // A cached handle keeps the inode in cached mode: later handles are cached too.
    let remote = rig.ino("remote.bin").unwrap();
    let c = rig.fs.open(remote, false).unwrap();
    assert!(matches!(
        rig.fs.io_mode(c, Access::Read).unwrap(),
        IoMode::Cached { keep_cache: true }
    ));
    let w = rig.fs.open_as(remote, Access::Write, true).await.unwrap();
    assert!(matches!(
        rig.fs.io_mode(w, Access::Write).unwrap(),
        IoMode::Cached { keep_cache: false }
    ));
    rig.fs.write(w, 0, b"new").await.unwrap();
    rig.close(w).await;
    rig.fs.release(c).await.unwrap();
    rig.wb().drain(|_| {}).await;
    assert_eq!(object(&rig.store, "remote.bin").await.unwrap(), b"new");

    // A kernel (or a daemon without CAP_SYS_ADMIN) that refuses the staging file: the handle
    // falls back to the page cache, passthrough is off for the mount, and the file still lands.
    let (_, w) = rig.fs.create(ROOT_INO, b"fallback.bin").await.unwrap();
    assert!(matches!(
        rig.fs.io_mode(w, Access::Write).unwrap(),
        IoMode::Passthrough { .. }
    ));
    rig.fs.passthrough_refused(w);
    assert!(!rig.fs.passthrough_enabled());
    rig.fs.write(w, 0, b"through the daemon").await.unwrap();
    let ino = rig.ino("fallback.bin").unwrap();
    let r = rig.fs.open(ino, false).unwrap();
    assert!(matches!(
        rig.fs.io_mode(r, Access::Read).unwrap(),
        IoMode::Cached { .. }
    ));
    rig.close(w).await;
    rig.fs.release(r).await.unwrap();
    rig.wb().drain(|_| {}).await;
    assert_eq!(
        object(&rig.store, "fallback.bin").await.unwrap(),
        b"through the daemon"
    );
    assert_eq!(
        staging_files(),
        0,
        "no staging file outlives its handles once uploaded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_writers_send_parts_before_close_and_rewrites_fall_back() {
    let tmp = tempfile::tempdir().unwrap();
    let rig = setup(&[], tmp.path()).await;
    let body = pattern(1_000_000, 4); // 15 full 64 KiB parts and a tail
    let (_, fh) = rig.fs.create(ROOT_INO, b"stream.bin").await.unwrap();
    for (i, c) in body.chunks(10_000).enumerate() {
        rig.fs.write(fh, (i * 10_000) as u64, c).await.unwrap();
    }
    // Parts went out while the file was open.
    for _ in 0..200 {
        if rig
            .fs
            .metrics()
            .put_requests
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 10
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        rig.fs
            .metrics()
            .put_requests
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 10
    );
    assert_eq!(
        object(&rig.store, "stream.bin").await,
        None,
        "nothing visible before close"
    );
    rig.fs.fsync(fh).await.unwrap();
    same(
        &object(&rig.store, "stream.bin").await.unwrap(),
        &body,
        "streamed upload",
    );
    rig.close(fh).await;

    // A rewrite of the start after parts were sent: the early parts are abandoned.
    let (_, fh) = rig.fs.create(ROOT_INO, b"rewritten.bin").await.unwrap();
    let mut want = body.clone();
    for (i, c) in body.chunks(10_000).enumerate() {
        rig.fs.write(fh, (i * 10_000) as u64, c).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    rig.fs.write(fh, 5, b"HEADER").await.unwrap();
    want[5..11].copy_from_slice(b"HEADER");
    rig.close(fh).await;
    rig.wb().drain(|_| {}).await;
    same(
        &object(&rig.store, "rewritten.bin").await.unwrap(),
        &want,
        "rewritten",
    );
}

#[tokio::test]
async fn a_new_mount_uploads_what_a_dead_one_left_in_the_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    let data = pattern(150_000, 9);
    {
        // Uploads stopped: closed files stay in the journal, as after a kill -9.
        let rig = mount(store.clone(), tmp.path(), true).await;
        rig.fs.mkdir(ROOT_INO, b"ckpt").await.unwrap();
        let fh = rig.write_file("ckpt/step1.pt", &data).await;
        rig.close(fh).await;
        let fh = rig.write_file("ckpt/half.pt", b"never closed").await;
        let _ = fh; // never closed
        let s = rig.wb().status();
        assert_eq!((s.pending_files, s.pending_bytes), (1, 150_000));
    }
    assert_eq!(object(&store, "ckpt/step1.pt").await, None);
    let rig = mount(store.clone(), tmp.path(), false).await;
    assert_eq!(
        rig.read_all("ckpt/step1.pt").await.unwrap(),
        data,
        "recovered files are visible before they are uploaded"
    );
    rig.wb().drain(|_| {}).await;
    assert_eq!(object(&store, "ckpt/step1.pt").await.unwrap(), data);
    assert_eq!(
        object(&store, "ckpt/half.pt").await,
        None,
        "never acknowledged"
    );
    assert_eq!(
        std::fs::read_dir(tmp.path().join("staging/data"))
            .unwrap()
            .count(),
        1,
        "the never-closed file's staging is gone; the uploaded one is kept as a local copy"
    );
}

#[tokio::test]
async fn a_second_daemon_cannot_take_the_staging_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let rig = setup(&[], tmp.path()).await;
    let r = WriteBack::open(
        config(tmp.path()),
        rig.source.clone(),
        Arc::new(Metrics::default()),
        || InodeNo(1),
    );
    assert!(matches!(r, Err(WriteBackError::Locked { .. })));
    use std::os::unix::fs::PermissionsExt;
    for d in ["staging", "staging/data", "staging/journal"] {
        let mode = std::fs::metadata(tmp.path().join(d))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{d}");
    }
}

// The reference model: random operations on the filesystem and on a map of names to bytes.

#[derive(Debug, Clone)]
enum Op {
    Create(usize),
    Write(usize, u32, u16, u8),
    /// A write at the current end (sequential writers send parts before close).
    Append(usize, u16, u8),
    Truncate(usize, u32),
    Close(usize),
    Unlink(usize),
    Rename(usize, usize),
    Read(usize),
    /// New permission bits.
    Chmod(usize, u16),
    /// A new mtime, in seconds.
    Utimens(usize, u32),
    /// A symlink at the first name pointing at the second.
    Symlink(usize, usize),
}

const NAMES: [&str; 4] = ["a", "b", "c", "d/e"];

fn op() -> impl Strategy<Value = Op> {
    let n = 0..NAMES.len();
    prop_oneof![
        n.clone().prop_map(Op::Create),
        (n.clone(), 0..200_000u32, 1..40_000u16, any::<u8>())
            .prop_map(|(f, o, l, b)| Op::Write(f, o, l, b)),
        (n.clone(), 1..40_000u16, any::<u8>()).prop_map(|(f, l, b)| Op::Append(f, l, b)),
        (n.clone(), 1..40_000u16, any::<u8>()).prop_map(|(f, l, b)| Op::Append(f, l, b)),
        (n.clone(), 0..200_000u32).prop_map(|(f, s)| Op::Truncate(f, s)),
        n.clone().prop_map(Op::Close),
        n.clone().prop_map(Op::Unlink),
        (n.clone(), n.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
        n.clone().prop_map(Op::Read),
        (n.clone(), 0..0o7777u16).prop_map(|(f, m)| Op::Chmod(f, m)),
        (n.clone(), any::<u32>()).prop_map(|(f, t)| Op::Utimens(f, t)),
        (n.clone(), n).prop_map(|(a, b)| Op::Symlink(a, b)),
    ]
}

async fn run_model(ops: Vec<Op>) {
    let tmp = tempfile::tempdir().unwrap();
    let rig = setup(
        &[("a", b"initial a".to_vec()), ("d/keep", b"k".to_vec())],
        tmp.path(),
    )
    .await;
    let mut model: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    model.insert("a", b"initial a".to_vec());
    // Attributes beside the content: permission bits set, mtimes set, which names are links
    // (a link's content is its target, which is also its object's body).
    let mut perms: BTreeMap<&str, u32> = BTreeMap::new();
    let mut mtimes: BTreeMap<&str, u32> = BTreeMap::new();
    let mut links: BTreeSet<&str> = BTreeSet::new();
    let mut open: BTreeMap<&str, Fh> = BTreeMap::new();
    for op in ops {
        // Content operations skip links (the kernel would follow them).
        let on_link = match &op {
            Op::Write(f, ..) | Op::Append(f, ..) | Op::Truncate(f, _) | Op::Read(f) => {
                links.contains(NAMES[*f])
            }
            _ => false,
        };
        if on_link {
            continue;
        }
        match op {
            Op::Chmod(f, perm) => {
                let name = NAMES[f];
                let Ok(ino) = rig.ino(name) else {
                    assert!(!model.contains_key(name));
                    continue;
                };
                let change = SetAttr {
                    mode: Some(u32::from(perm)),
                    ..Default::default()
                };
                let a = rig.fs.setattr(ino, change).await.unwrap();
                if links.contains(name) {
                    assert_eq!(a.kind, NodeKind::Symlink);
                }
                assert_eq!(a.perm, perm);
                perms.insert(name, u32::from(perm));
            }
            Op::Utimens(f, secs) => {
                let name = NAMES[f];
                let Ok(ino) = rig.ino(name) else {
                    assert!(!model.contains_key(name));
                    continue;
                };
                let when = UNIX_EPOCH + Duration::from_secs(u64::from(secs));
                let change = SetAttr {
                    mtime: Some(when),
                    atime: Some(UNIX_EPOCH + Duration::from_secs(u64::from(secs / 2))),
                    ..Default::default()
                };
                let a = rig.fs.setattr(ino, change).await.unwrap();
                assert_eq!(a.mtime, when);
                mtimes.insert(name, secs);
            }
            Op::Symlink(f, t) => {
                let (name, target) = (NAMES[f], NAMES[t]);
                let (dir, leaf) = rig.split(name);
                let made = rig
                    .fs
                    .symlink(dir, leaf.as_bytes(), target.as_bytes(), Default::default())
                    .await;
                match made {
                    Ok(a) => {
                        assert!(!model.contains_key(name), "linked over an existing {name}");
                        assert_eq!(a.kind, NodeKind::Symlink);
                        model.insert(name, target.as_bytes().to_vec());
                        links.insert(name);
                        perms.remove(name);
                        mtimes.remove(name);
                    }
                    Err(FsError::Exists) => assert!(model.contains_key(name)),
                    Err(e) => panic!("symlink {name}: {e}"),
                }
            }
            Op::Create(f) => {
                let name = NAMES[f];
                let (dir, leaf) = rig.split(name);
                match rig.fs.create(dir, leaf.as_bytes()).await {
                    Ok((_, fh)) => {
                        assert!(!model.contains_key(name), "created an existing {name}");
                        model.insert(name, Vec::new());
                        perms.remove(name);
                        mtimes.remove(name);
                        if let Some(old) = open.insert(name, fh) {
                            rig.close(old).await;
                        }
                    }
                    Err(FsError::Exists) => assert!(model.contains_key(name)),
                    Err(e) => panic!("create {name}: {e}"),
                }
            }
            Op::Append(f, len, byte) => {
                let name = NAMES[f];
                let Some(content) = model.get_mut(name) else {
                    continue;
                };
                let fh = *open
                    .entry(name)
                    .or_insert_with(|| rig.fs.open(rig.ino(name).unwrap(), true).unwrap());
                let data = vec![byte; len as usize];
                rig.fs.write(fh, content.len() as u64, &data).await.unwrap();
                mtimes.remove(name);
                content.extend_from_slice(&data);
            }
            Op::Write(f, off, len, byte) => {
                let name = NAMES[f];
                let Some(content) = model.get_mut(name) else {
                    continue;
                };
                let fh = *open
                    .entry(name)
                    .or_insert_with(|| rig.fs.open(rig.ino(name).unwrap(), true).unwrap());
                let data = vec![byte; len as usize];
                rig.fs.write(fh, u64::from(off), &data).await.unwrap();
                mtimes.remove(name);
                let end = off as usize + data.len();
                if content.len() < end {
                    content.resize(end, 0);
                }
                content[off as usize..end].copy_from_slice(&data);
            }
            Op::Truncate(f, size) => {
                let name = NAMES[f];
                let Some(content) = model.get_mut(name) else {
                    continue;
                };
                let change = SetAttr {
                    size: Some(u64::from(size)),
                    fh: open.get(name).copied(),
                    ..Default::default()
                };
                rig.fs
                    .setattr(rig.ino(name).unwrap(), change)
                    .await
                    .unwrap();
                content.resize(size as usize, 0);
                mtimes.remove(name);
            }
            Op::Close(f) => {
                if let Some(fh) = open.remove(NAMES[f]) {
                    rig.close(fh).await;
                }
            }
            Op::Unlink(f) => {
                let name = NAMES[f];
                if let Some(fh) = open.remove(name) {
                    rig.close(fh).await;
                }
                let (dir, leaf) = rig.split(name);
                match rig.fs.unlink(dir, leaf.as_bytes()).await {
                    Ok(()) => {
                        assert!(model.remove(name).is_some());
                        perms.remove(name);
                        mtimes.remove(name);
                        links.remove(name);
                    }
                    Err(FsError::NotFound) => assert!(!model.contains_key(name)),
                    Err(e) => panic!("unlink {name}: {e}"),
                }
            }
            Op::Rename(a, b) => {
                let (from, to) = (NAMES[a], NAMES[b]);
                for n in [from, to] {
                    if let Some(fh) = open.remove(n) {
                        rig.close(fh).await;
                    }
                }
                let (fd, fl) = rig.split(from);
                let (td, tl) = rig.split(to);
                match rig
                    .fs
                    .rename(fd, fl.as_bytes(), td, tl.as_bytes(), false)
                    .await
                {
                    Ok(()) => {
                        if from != to {
                            let content = model.remove(from).expect("renamed a missing file");
                            model.insert(to, content);
                            for attrs in [&mut perms, &mut mtimes] {
                                match attrs.remove(from) {
                                    Some(v) => attrs.insert(to, v),
                                    None => attrs.remove(to),
                                };
                            }
                            if links.remove(from) {
                                links.insert(to);
                            } else {
                                links.remove(to);
                            }
                        }
                    }
                    Err(FsError::NotFound) => assert!(!model.contains_key(from)),
                    Err(e) => panic!("rename {from} {to}: {e}"),
                }
            }
            Op::Read(f) => {
                let name = NAMES[f];
                match rig.read_all(name).await {
                    Ok(got) => same(&got, model.get(name).expect("exists in the model"), name),
                    Err(FsError::NotFound) => assert!(!model.contains_key(name)),
                    Err(e) => panic!("read {name}: {e}"),
                }
            }
        }
        let mut listed = Vec::new();
        rig.fs
            .readdir(ROOT_INO, 2, false, |e| {
                listed.push(e.name.to_string());
                false
            })
            .unwrap();
        let mut expect: Vec<String> = model
            .keys()
            .filter(|k| !k.contains('/'))
            .map(|k| k.to_string())
            .collect();
        expect.push("d".into());
        expect.sort();
        listed.sort();
        assert_eq!(listed, expect, "root listing");
    }
    for (_, fh) in std::mem::take(&mut open) {
        rig.close(fh).await;
    }
    for (name, content) in &model {
        let a = rig.fs.getattr(rig.ino(name).unwrap()).unwrap();
        if links.contains(name) {
            assert_eq!(a.kind, NodeKind::Symlink, "{name}");
            assert_eq!(rig.fs.readlink(a.ino).unwrap(), *content, "{name}");
        } else {
            same(&rig.read_all(name).await.unwrap(), content, name);
        }
        if let Some(&p) = perms.get(name) {
            assert_eq!(u32::from(a.perm), p, "{name}");
        }
        if let Some(&t) = mtimes.get(name) {
            assert_eq!(
                a.mtime,
                UNIX_EPOCH + Duration::from_secs(u64::from(t)),
                "{name}"
            );
            assert_eq!(
                a.atime,
                UNIX_EPOCH + Duration::from_secs(u64::from(t / 2)),
                "{name}"
            );
        }
    }
    let s = rig.wb().drain(|_| {}).await;
    assert!(s.failed.is_empty());
    let mut bucket: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let metas: Vec<_> = rig.store.list(None).collect::<Vec<_>>().await;
    for m in metas {
        let key = m.unwrap().location.to_string();
        let bytes = object(&rig.store, &key).await.unwrap();
        bucket.insert(key, bytes);
    }
    let mut want: BTreeMap<String, Vec<u8>> =
        model.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    want.insert("d/keep".into(), b"k".to_vec());
    assert_eq!(
        bucket.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    assert!(bucket == want, "bucket content differs from the model");
    // The objects carry the attributes.
    let source = rig.wb().source().clone();
    for name in want.keys().filter(|k| *k != "d/keep") {
        let head = source.head_meta(name).await.unwrap().unwrap();
        let name = name.as_str();
        assert_eq!(head.attrs.is_symlink(), links.contains(name), "{name}");
        if let Some(&p) = perms.get(name) {
            // The default mode is not stored.
            let stored = head.attrs.perm().unwrap_or(0o644);
            assert_eq!(u32::from(stored), p, "{name}");
        }
        if let Some(&t) = mtimes.get(name) {
            assert_eq!(head.mtime_ms, Some(i64::from(t) * 1000), "{name}");
            assert_eq!(head.attrs.atime_ms, Some(i64::from(t / 2) * 1000), "{name}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_filesystem_and_the_bucket_match_a_reference_model(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run_model(ops));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_regression_1() {
    use Op::*;
    run_model(vec![
        Create(3),
        Close(3),
        Rename(3, 1),
        Truncate(1, 48544),
        Write(1, 4204, 8586, 13),
        Create(3),
        Read(1),
        Rename(0, 2),
        Truncate(3, 168406),
        Write(3, 37132, 22985, 140),
    ])
    .await;
}

//! Core tests: the filesystem without FUSE, over an in-memory object store.

use std::sync::Arc;

use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use super::*;
use crate::manifest::{self, BuildOptions, BuildProgress};
use crate::object::{ObjectSource, Source};
use crate::reader::RangeReaderFactory;

async fn setup(files: &[(&str, Vec<u8>)]) -> (Arc<Fs>, Arc<InMemory>, ObjectSource) {
    let store = Arc::new(InMemory::new());
    for (k, v) in files {
        store.put(&Path::from(*k), v.clone().into()).await.unwrap();
    }
    let metrics = Arc::new(Metrics::default());
    let source = ObjectSource::from_store(
        Source::parse("s3://bkt").unwrap(),
        store.clone() as Arc<dyn ObjectStore>,
        metrics.clone(),
    );
    let (ns, _) = manifest::load_or_list(&source, &BuildOptions::default())
        .await
        .unwrap();
    let fs = Fs::new(
        ns,
        Arc::new(RangeReaderFactory::new(source.clone())),
        FsConfig::default(),
        metrics,
    );
    (Arc::new(fs), store, source)
}

fn names(fs: &Fs, ino: crate::ids::InodeNo, offset: u64) -> Vec<String> {
    let mut out = Vec::new();
    fs.readdir(ino, offset, false, |e| {
        out.push(e.name.to_string());
        false
    })
    .unwrap();
    out
}

#[tokio::test]
async fn lookup_getattr_readdir_from_memory() {
    let (fs, _, _) = setup(&[("d/a.txt", b"hello".to_vec()), ("d/b.txt", vec![0; 10])]).await;
    let d = fs.lookup(ROOT_INO, b"d").unwrap();
    assert_eq!(d.kind, NodeKind::Dir);
    let a = fs.lookup(d.ino, b"a.txt").unwrap();
    assert_eq!((a.kind, a.size), (NodeKind::File, 5));
    assert_eq!(fs.getattr(a.ino).unwrap(), a);
    assert_eq!(names(&fs, d.ino, 0), [".", "..", "a.txt", "b.txt"]);
    assert_eq!(names(&fs, d.ino, 3), ["b.txt"], "offsets resume listings");
    assert!(matches!(fs.lookup(d.ino, b"nope"), Err(FsError::NotFound)));
    assert!(matches!(fs.lookup(a.ino, b"x"), Err(FsError::NotDir)));
    assert!(matches!(
        fs.lookup(ROOT_INO, &[b'x'; 300]),
        Err(FsError::NameTooLong)
    ));
}

#[tokio::test]
async fn reads_return_exact_bytes_and_posix_eof() {
    let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    let (fs, _, _) = setup(&[("f.bin", data.clone())]).await;
    let f = fs.lookup(ROOT_INO, b"f.bin").unwrap();
    let fh = fs.open(f.ino, false).unwrap();
    assert_eq!(&fs.read(fh, 100, 50).await.unwrap()[..], &data[100..150]);
    assert_eq!(
        &fs.read(fh, 9_990, 100).await.unwrap()[..],
        &data[9_990..],
        "short at EOF"
    );
    assert!(
        fs.read(fh, 10_000, 100).await.unwrap().is_empty(),
        "empty at EOF"
    );
    assert!(
        fs.read(fh, 50_000, 100).await.unwrap().is_empty(),
        "empty past EOF"
    );
    fs.release(fh).await.unwrap();
    assert!(matches!(
        fs.read(fh, 0, 1).await,
        Err(FsError::BadHandle(_))
    ));
}

#[tokio::test]
async fn the_mount_is_read_only_and_directories_do_not_open() {
    let (fs, _, _) = setup(&[("d/f", b"x".to_vec())]).await;
    let d = fs.lookup(ROOT_INO, b"d").unwrap();
    let f = fs.lookup(d.ino, b"f").unwrap();
    assert_eq!(fs.open(f.ino, true).unwrap_err().errno(), libc::EROFS);
    assert_eq!(fs.open(d.ino, false).unwrap_err().errno(), libc::EISDIR);
}

#[tokio::test]
async fn a_changed_object_gives_estale_never_new_bytes() {
    let (fs, store, _) = setup(&[("f", vec![1; 100])]).await;
    let f = fs.lookup(ROOT_INO, b"f").unwrap();
    let fh = fs.open(f.ino, false).unwrap();
    store
        .put(&Path::from("f"), vec![2; 100].into())
        .await
        .unwrap();
    let err = fs.read(fh, 0, 10).await.unwrap_err();
    assert_eq!(err.errno(), libc::ESTALE, "{err}");
    store.delete(&Path::from("f")).await.unwrap();
    assert_eq!(fs.read(fh, 0, 10).await.unwrap_err().errno(), libc::ESTALE);
}

#[tokio::test]
async fn swap_shows_new_tree_while_open_handles_stay_pinned() {
    let (fs, store, source) = setup(&[("old", vec![1; 10])]).await;
    let old = fs.lookup(ROOT_INO, b"old").unwrap();
    let fh = fs.open(old.ino, false).unwrap();
    store
        .put(&Path::from("new"), vec![3; 5].into())
        .await
        .unwrap();
    let (header, entries) =
        manifest::build(&source, &BuildOptions::default(), &BuildProgress::default())
            .await
            .unwrap();
    fs.swap(Namespace::from_entries(&entries, header.built_at_ms));
    assert!(
        fs.lookup(ROOT_INO, b"new").is_ok(),
        "lookups see the new tree"
    );
    // The kernel still holds the old inode: it resolves in the retired snapshot.
    assert_eq!(fs.getattr(old.ino).unwrap().size, 10);
    assert_eq!(&fs.read(fh, 0, 10).await.unwrap()[..], &[1; 10]);
    // Once the kernel forgets it, the retired snapshot goes and the inode is stale.
    fs.forget(old.ino, 1);
    assert_eq!(fs.getattr(old.ino).unwrap_err().errno(), libc::ESTALE);
}

#[tokio::test]
async fn retired_snapshots_are_bounded() {
    let (fs, _, _) = setup(&[("f", vec![1; 10])]).await;
    let first = fs.lookup(ROOT_INO, b"f").unwrap();
    for _ in 0..(MAX_RETIRED + 2) {
        let again = fs.lookup(ROOT_INO, b"f").unwrap();
        let _ = again;
        fs.swap(Namespace::from_entries(
            &[crate::manifest::Entry {
                key: (*b"f").into(),
                size: 10,
                mtime_ms: 0,
                etag: crate::manifest::Etag::None,
                attrs: Default::default(),
            }],
            0,
        ));
    }
    assert_eq!(fs.getattr(first.ino).unwrap_err().errno(), libc::ESTALE);
    assert!(fs.lookup(ROOT_INO, b"f").is_ok());
}

#[tokio::test]
async fn a_directorys_link_count_is_two_plus_its_subdirectories() {
    let (fs, _, _) = setup(&[
        ("a/x", vec![1]),
        ("a/b/y", vec![2]),
        ("a/c/z", vec![3]),
        ("d", vec![4]),
    ])
    .await;
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 3, "root: a");
    let a = fs.lookup(ROOT_INO, b"a").unwrap();
    assert_eq!(a.nlink, 4, "a: b and c");
    let b = fs.lookup(a.ino, b"b").unwrap();
    assert_eq!(b.nlink, 2);
    assert_eq!(fs.lookup(ROOT_INO, b"d").unwrap().nlink, 1);
}

#[tokio::test]
async fn an_access_time_set_by_utimens_is_kept_and_reads_leave_it() {
    let (fs, _, _) = setup(&[("d/a.txt", b"hello".to_vec())]).await;
    let d = fs.lookup(ROOT_INO, b"d").unwrap();
    let a = fs.lookup(d.ino, b"a.txt").unwrap();
    assert_eq!(a.atime, a.mtime, "the mtime until one is set");
    let t = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let set = SetAttr {
        atime: Some(t),
        ..Default::default()
    };
    assert_eq!(fs.setattr(a.ino, set.clone()).await.unwrap().atime, t);
    assert_eq!(fs.setattr(d.ino, set).await.unwrap().atime, t);
    let fh = fs.open(a.ino, false).unwrap();
    fs.read(fh, 0, 5).await.unwrap();
    let after = fs.getattr(a.ino).unwrap();
    assert_eq!((after.atime, after.mtime), (t, a.mtime));
    assert_eq!(fs.lookup(ROOT_INO, b"d").unwrap().atime, t);
}

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::attrs::Attrs;
use crate::manifest::Entry;

fn ns(keys: &[&[u8]]) -> Namespace {
    let entries: Vec<Entry> = keys
        .iter()
        .map(|k| Entry {
            key: (*k).into(),
            size: k.len() as u64,
            mtime_ms: 0,
            etag: Etag::None,
            attrs: Attrs::default(),
        })
        .collect();
    Namespace::from_entries(&entries, 0)
}

#[test]
fn symlinks_and_attributes_come_from_entries() {
    use crate::attrs::{S_IFDIR, S_IFREG};
    let entry = |k: &[u8], attrs: Attrs| Entry {
        key: k.into(),
        size: 3,
        mtime_ms: 7,
        etag: Etag::None,
        attrs,
    };
    let exec = Attrs {
        mode: Some(S_IFREG | 0o755),
        ..Attrs::default()
    };
    let private = Attrs {
        mode: Some(S_IFDIR | 0o700),
        uid: Some(42),
        ..Attrs::default()
    };
    let n = Namespace::from_entries(
        &[
            entry(b"venv/", private.clone()),
            entry(
                b"venv/bin/python",
                Attrs::symlink(b"/usr/bin/python3", 0, 0),
            ),
            entry(b"venv/bin/run", exec.clone()),
            entry(b"venv/lib64", Attrs::symlink(b"lib", 0, 0)),
            entry(b"venv/lib/x", Attrs::default()),
        ],
        0,
    );
    let venv = find(&n, "venv").unwrap();
    assert_eq!(n.attrs(venv), Some(&private));
    let py = find(&n, "venv/bin/python").unwrap();
    let info = n.info(py).unwrap();
    assert_eq!(info.kind, NodeKind::Symlink);
    assert_eq!(info.size, 16, "a symlink's size is its target's length");
    assert_eq!(n.link_target(py), Some(&b"/usr/bin/python3"[..]));
    assert_eq!(n.attrs(find(&n, "venv/bin/run").unwrap()), Some(&exec));
    assert_eq!(n.attrs(find(&n, "venv/lib/x").unwrap()), None);
    assert_eq!(n.file_count(), 2, "symlinks are not data files");
    assert!(n
        .files()
        .all(|id| n.info(id).unwrap().kind == NodeKind::File));
}

fn find(ns: &Namespace, path: &str) -> Option<u32> {
    let mut cur = Namespace::ROOT;
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        cur = ns.lookup(cur, seg.as_bytes())?;
    }
    Some(cur)
}

#[test]
fn implicit_directories_and_markers() {
    let n = ns(&[b"a/b/c.txt", b"a/d.txt", b"empty/", b"top.txt"]);
    assert_eq!(
        n.info(find(&n, "a/b").unwrap()).unwrap().kind,
        NodeKind::Dir
    );
    assert_eq!(
        n.info(find(&n, "empty").unwrap()).unwrap().kind,
        NodeKind::Dir
    );
    assert!(n.children(find(&n, "empty").unwrap()).is_empty());
    assert_eq!(n.info(find(&n, "a/b/c.txt").unwrap()).unwrap().size, 9);
    assert_eq!(n.key_of(find(&n, "a/b/c.txt").unwrap()), "a/b/c.txt");
    assert_eq!(n.file_count(), 3);
}

#[test]
fn odd_keys_are_skipped_and_counted() {
    let long = vec![b'x'; 256];
    let mut long_key = b"d/".to_vec();
    long_key.extend_from_slice(&long);
    let n = ns(&[
        b"ok.txt",
        b"a/../etc/passwd",
        b"./x",
        b"a//b",
        b"/abs",
        &long_key,
        b"bad\xff.bin",
        b"ctl\x01.bin",
        b".pai-mount/manifest.v1",
    ]);
    let s = n.skipped();
    assert_eq!(s.dot_segment, 2);
    assert_eq!(s.empty_segment, 2);
    assert_eq!(s.name_too_long, 1);
    assert_eq!(s.invalid_utf8, 1);
    assert_eq!(s.control_char, 1);
    assert_eq!(n.file_count(), 1);
    assert!(
        find(&n, ".pai-mount").is_none(),
        "the reserved directory is hidden"
    );
    // A 255-byte name is fine.
    let ok = vec![b'y'; 255];
    assert_eq!(ns(&[&ok]).file_count(), 1);
}

#[test]
fn a_key_that_is_file_and_prefix_becomes_a_directory() {
    let n = ns(&[b"a", b"a/b", b"a-c"]);
    let a = find(&n, "a").unwrap();
    assert_eq!(n.info(a).unwrap().kind, NodeKind::Dir);
    assert!(find(&n, "a/b").is_some());
    assert!(find(&n, "a-c").is_some());
    assert_eq!(n.skipped().shadowed, 1);
    assert_eq!(n.file_count(), 2);
}

/// The reference model: the set of files and directories a key set should produce.
fn model(keys: &BTreeSet<Vec<u8>>) -> (BTreeMap<String, u64>, BTreeSet<String>) {
    let valid = |seg: &[u8]| {
        !seg.is_empty()
            && seg != b"."
            && seg != b".."
            && seg.len() <= NAME_MAX
            && std::str::from_utf8(seg).is_ok()
            && !seg.iter().any(|b| b.is_ascii_control())
    };
    let mut files = BTreeMap::new();
    let mut dirs = BTreeSet::new();
    for k in keys {
        let marker = k.ends_with(b"/");
        let body = if marker { &k[..k.len() - 1] } else { &k[..] };
        if body.is_empty() {
            continue;
        }
        let segs: Vec<&[u8]> = body.split(|&b| b == b'/').collect();
        if !segs.iter().all(|s| valid(s)) || segs[0] == b".pai-mount" {
            continue;
        }
        let path = |n: usize| {
            segs[..n]
                .iter()
                .map(|s| std::str::from_utf8(s).unwrap())
                .collect::<Vec<_>>()
                .join("/")
        };
        let ndirs = if marker { segs.len() } else { segs.len() - 1 };
        for i in 1..=ndirs {
            dirs.insert(path(i));
        }
        if !marker {
            files.insert(path(segs.len()), k.len() as u64);
        }
    }
    files.retain(|f, _| !dirs.contains(f));
    (files, dirs)
}

fn walk(
    n: &Namespace,
    id: u32,
    prefix: &str,
    files: &mut BTreeMap<String, u64>,
    dirs: &mut BTreeSet<String>,
) {
    let kids = n.children(id);
    let names: Vec<&str> = kids.iter().map(|&k| n.name_of(k)).collect();
    assert!(
        names.windows(2).all(|w| w[0] < w[1]),
        "children sorted and unique: {names:?}"
    );
    for &k in kids {
        let p = if prefix.is_empty() {
            n.name_of(k).to_string()
        } else {
            format!("{prefix}/{}", n.name_of(k))
        };
        assert_eq!(n.lookup(id, n.name_of(k).as_bytes()), Some(k));
        let info = n.info(k).unwrap();
        match info.kind {
            NodeKind::Dir => {
                dirs.insert(p.clone());
                walk(n, k, &p, files, dirs);
            }
            NodeKind::File | NodeKind::Symlink => {
                files.insert(p, info.size);
            }
        }
    }
}

proptest! {
    #[test]
    fn tree_matches_reference_model(
        keys in proptest::collection::btree_set(
            proptest::collection::vec(
                prop_oneof![Just(b'a'), Just(b'b'), Just(b'/'), Just(b'.'), Just(b'-'), Just(0xffu8), Just(1u8)],
                1..8,
            ),
            0..60,
        )
    ) {
        let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
        let n = ns(&refs);
        let (want_files, want_dirs) = model(&keys);
        let mut files = BTreeMap::new();
        let mut dirs = BTreeSet::new();
        walk(&n, Namespace::ROOT, "", &mut files, &mut dirs);
        prop_assert_eq!(files, want_files);
        prop_assert_eq!(dirs, want_dirs);
    }
}

//! The overlay: what this mount changed on top of the manifest snapshot, keyed by path.
//!
//! The snapshot is immutable and compact; the overlay is small and mutable. Paths are keys
//! relative to the prefix, without a trailing slash (`a/b.txt`); the root is `""`.
//!
//! - `File`: a file written, renamed or touched here; its [`FileNode`] has the content.
//! - `Dir`: a directory made (or moved) here. It is *opaque*: no snapshot entry below it shows.
//! - `Whiteout`: the snapshot's entry at this path (and everything below it) is gone.
//!
//! Overlay entries keep the inode number they were given, and a moved entry keeps its inode,
//! so dentries the kernel holds stay valid across renames. A file of the snapshot that gets
//! a node reuses its snapshot inode for the same reason.
//!
//! Entries stay for the life of the mount (they are small), so a refresh of the snapshot
//! cannot undo a change made here.

use crate::ids::InodeNo;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::write::FileNode;

#[derive(Debug, Clone)]
pub enum Entry {
    File(Arc<FileNode>),
    Dir { ino: InodeNo, mtime_ms: i64 },
    Whiteout,
}

#[derive(Debug, Default)]
pub struct Overlay {
    entries: BTreeMap<String, Entry>,
    /// Inode number to path, for `File` and `Dir` entries.
    inos: HashMap<InodeNo, String>,
}

/// `parent/name`, or `name` at the root.
pub fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

/// The parent path of `path` (`""` for a top-level name).
pub fn parent_of(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

impl Overlay {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    pub fn path_of(&self, ino: InodeNo) -> Option<&str> {
        self.inos.get(&ino).map(String::as_str)
    }

    /// Whether the snapshot's content at `path` (as a directory: its children) is hidden,
    /// because `path` or one of its ancestors is a whiteout or an overlay directory.
    pub fn hides_below(&self, path: &str) -> bool {
        if self.entries.is_empty() {
            return false;
        }
        let mut p = path;
        loop {
            if !p.is_empty()
                && matches!(
                    self.entries.get(p),
                    Some(Entry::Whiteout | Entry::Dir { .. })
                )
            {
                return true;
            }
            if p.is_empty() {
                return false;
            }
            p = parent_of(p);
        }
    }

    /// Whether a strict ancestor of `path` is a whiteout (then `path` is gone, overlay or not).
    pub fn whiteout_above(&self, path: &str) -> bool {
        let mut p = parent_of(path);
        while !p.is_empty() {
            if matches!(self.entries.get(p), Some(Entry::Whiteout)) {
                return true;
            }
            p = parent_of(p);
        }
        false
    }

    /// Whether anything in the overlay is at or below `dir` (a directory path).
    pub fn touches(&self, dir: &str) -> bool {
        if self.entries.is_empty() {
            return false;
        }
        if dir.is_empty() {
            return true;
        }
        let prefix = format!("{dir}/");
        self.entries.contains_key(dir)
            || self
                .entries
                .range(prefix.clone()..)
                .next()
                .is_some_and(|(k, _)| k.starts_with(&prefix))
    }

    /// The direct children of `dir` in the overlay, in name order. Entries deeper down are
    /// skipped a subtree at a time (one range lookup per child with entries below it), so the
    /// cost follows the number of children, not the size of the tree below.
    pub fn children<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a str, &'a Entry)> + 'a {
        use std::ops::Bound;
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let skip = prefix_len(dir);
        let mut from: Bound<String> = Bound::Included(prefix.clone());
        std::iter::from_fn(move || loop {
            let (k, e) = self
                .entries
                .range::<String, _>((from.clone(), Bound::Unbounded))
                .next()?;
            if !k.starts_with(&prefix) {
                return None;
            }
            let rest = &k[skip..];
            match rest.find('/') {
                None => {
                    from = Bound::Excluded(k.clone());
                    return Some((rest, e));
                }
                // Below the child `rest[..i]`: everything under it sorts before `child0`
                // ('0' follows '/'), and siblings that sort between were already seen.
                Some(i) => from = Bound::Included(format!("{}{}0", prefix, &rest[..i])),
            }
        })
    }

    /// Every entry strictly below `dir`, with its path.
    pub fn below(&self, dir: &str) -> Vec<(String, Entry)> {
        let prefix = format!("{dir}/");
        self.entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    pub fn put(&mut self, path: String, entry: Entry) {
        match &entry {
            Entry::File(n) => {
                self.inos.insert(n.ino, path.clone());
            }
            Entry::Dir { ino, .. } => {
                self.inos.insert(*ino, path.clone());
            }
            Entry::Whiteout => {}
        }
        if let Some(old) = self.entries.insert(path.clone(), entry) {
            self.forget_ino(&old, &path);
        }
    }

    /// Removes `path` (and, with `subtree`, everything below it). With `whiteout`, leaves a
    /// whiteout so the snapshot's entry stays hidden.
    pub fn remove(&mut self, path: &str, whiteout: bool, subtree: bool) {
        if subtree {
            for (p, e) in self.below(path) {
                self.entries.remove(&p);
                self.forget_ino(&e, &p);
            }
        }
        if let Some(old) = self.entries.remove(path) {
            self.forget_ino(&old, path);
        }
        if whiteout {
            self.entries.insert(path.to_string(), Entry::Whiteout);
        }
    }

    fn forget_ino(&mut self, old: &Entry, path: &str) {
        let ino = match old {
            Entry::File(n) => n.ino,
            Entry::Dir { ino, .. } => *ino,
            Entry::Whiteout => return,
        };
        if self.inos.get(&ino).is_some_and(|p| p == path) {
            self.inos.remove(&ino);
        }
    }

    /// Every file node, for status and the manifest.
    pub fn files(&self) -> impl Iterator<Item = &Arc<FileNode>> {
        self.entries.values().filter_map(|e| match e {
            Entry::File(n) => Some(n),
            _ => None,
        })
    }

    pub fn entries(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }
}

fn prefix_len(dir: &str) -> usize {
    if dir.is_empty() {
        0
    } else {
        dir.len() + 1
    }
}
